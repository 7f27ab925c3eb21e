//! The log's lifecycle under simulation: client trims through the leader, retention
//! purges, reads served as the runtime serves them, and the checks that account
//! for removed records.
//!
//! - A member removes records (`Command::PurgeLog`) only as far as its own
//!   retention asked or a trim the checker has seen committed names: a trim applied
//!   before it commits (it may still be truncated) fails here.
//! - Once a member's commit index covers a committed trim, it reads nothing below
//!   that trim's `before` (`Engine::read_start`); once everything is on its disk,
//!   its log starts there too (checked at the end, after every disk is flushed).
//! - A read is served the way the runtime serves it: OutOfRange below the member's
//!   read start, which only retention or a committed trim may have moved past a
//!   record; otherwise the committed entry itself, and never a record below the
//!   `before` of a trim acknowledged before the read started.

use crate::engine::{EntryKind, Event, Index, NodeId};

use super::checker::ReadFloor;
use super::{Check, Sim};

impl Sim {
    /// A client asks whoever it believes leads to remove the records before an
    /// index around the commit index, now and then right up to the end of the log
    /// or past it.
    pub(super) fn submit_trim(&mut self, k: usize) -> Check {
        let Some(engine) = self.nodes[k].engine.as_ref() else {
            return Ok(());
        };
        let (commit, last) = (engine.commit_index(), engine.log().last_index());
        // Everything before the trim itself, now and then: its records are the
        // least likely to be on every disk when it commits.
        let before = match self.rng.range(0, 10) {
            0 => last + 2,
            1 | 2 => last + 1,
            _ => self.rng.range(commit.saturating_sub(6).max(1), commit + 4),
        };
        let request_id = self.next_request;
        self.next_request += 1;
        self.checker.invoke_trim(request_id, before);
        self.nodes[k].requests.push(request_id);
        self.step(k, Event::ClientTrim { request_id, before })
    }

    /// Retention on one member: remove the log before an index up to its commit.
    pub(super) fn retention_purge(&mut self, k: usize) -> Check {
        let commit = self.nodes[k].engine.as_ref().expect("live").commit_index();
        let before = self.rng.range(1, commit + 2);
        let node = &mut self.nodes[k];
        node.retention_before = node.retention_before.max(before);
        self.step(k, Event::PurgeLog { before })
    }

    /// Member `k` removes the records before `before`: its retention or a
    /// committed trim must have asked for it.
    pub(super) fn check_purge(&mut self, k: usize, before: Index) -> Check {
        self.purges += 1;
        let retention = self.nodes[k].retention_before;
        let trimmed = self.checker.committed_trim_before();
        if before > retention.max(trimmed) {
            return Err(format!(
                "member {} removed the records before {before}, which neither its retention (before {retention}) nor a committed trim (before {trimmed}) asked for",
                k + 1
            ));
        }
        Ok(())
    }

    /// Member `k` reported its commit index at `index`: it must read nothing below
    /// the committed trims that index covers.
    pub(super) fn check_read_start(&self, k: usize, index: Index) -> Check {
        let engine = self.nodes[k].engine.as_ref().expect("live");
        let trimmed = self.checker.committed_trim_before_through(index);
        if engine.read_start() < trimmed {
            return Err(format!(
                "member {} committed {index} but still reads from {}, below a committed trim's {trimmed}",
                k + 1,
                engine.read_start()
            ));
        }
        Ok(())
    }

    /// Serves a read on member `k` whose barrier came back at `index`, from an
    /// offset around its read start, as the runtime would.
    pub(super) fn serve_read(&mut self, k: usize, index: Index, floor: ReadFloor) -> Check {
        let id = k as NodeId + 1;
        let node = &self.nodes[k];
        let engine = node.engine.as_ref().expect("live");
        let read_start = engine.read_start();
        let low = read_start.saturating_sub(4).max(1);
        if low > index {
            return Ok(());
        }
        let offset = self.rng.range(low, index + 1);
        if offset < read_start {
            let retention = self.nodes.iter().map(|n| n.retention_before).max();
            let removed = retention
                .unwrap_or(0)
                .max(self.checker.committed_trim_before());
            if offset >= removed {
                return Err(format!(
                    "member {id} answered OutOfRange (read start {read_start}, log start {}, commit {}) for {offset}, which no retention or committed trim removed (removed before {removed})",
                    engine.log().start(),
                    engine.commit_index()
                ));
            }
            self.reads_out_of_range += 1;
            return Ok(());
        }
        let entry = engine.log().get(offset).cloned();
        let Some(entry) = entry.or_else(|| node.disk.durable_entry(offset)) else {
            return Err(format!("member {id} lost committed entry {offset}"));
        };
        if self
            .checker
            .committed_entry(offset)
            .is_some_and(|c| *c != entry)
        {
            return Err(format!(
                "member {id} read a changed entry at {offset}: {entry:?}"
            ));
        }
        if entry.kind == EntryKind::Record && offset < floor.trimmed_before {
            return Err(format!(
                "member {id} read the record at {offset}, removed by a trim before {} acknowledged before the read",
                floor.trimmed_before
            ));
        }
        self.records_read += 1;
        Ok(())
    }

    /// At the end, every disk flushed: the log of every member of the final
    /// membership starts at or after the `before` of every committed trim (they
    /// agree on the start those trims imply).
    pub(super) fn check_final_starts(&mut self) -> Check {
        for k in 0..self.nodes.len() {
            if self.nodes[k].engine.is_some() && self.nodes[k].disk.unflushed_len() > 0 {
                let op = self.nodes[k].disk.flush();
                self.step(k, Event::Durable { op })?;
            }
        }
        let trimmed = self.checker.committed_trim_before();
        let leader = self.leader_index().expect("converged");
        for (k, node) in self.nodes.iter().enumerate() {
            // Removed members never hear of the trims committed after they left.
            if !self.is_member_of_leader(leader, k) {
                continue;
            }
            let start = node.engine.as_ref().expect("live").log().start();
            if start < trimmed {
                return Err(format!(
                    "member {} ends with its log at {start}, before the committed trim's {trimmed}",
                    k + 1
                ));
            }
        }
        Ok(())
    }
}
