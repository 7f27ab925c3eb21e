//! Chaining the segments in creation order: a segment that resets the log or starts
//! at or before its start supersedes every live segment, one that starts inside them
//! supersedes those it overlaps, and one that starts after a gap cuts the log (or is
//! corruption). Superseded and cut-off segments, and files left over, are obsolete.

use super::{Recovery, RecoveryReport, SPARE_FILE_NAME};
use crate::wal::config::WalConfig;
use crate::wal::error::{WalError, WalResult};
use crate::wal::scan::{Stop, is_clean_end};
use crate::wal::segment::{Segment, parse_summary_file_name, segment_file_name, summary_file_name};
use std::collections::HashMap;

/// Whether the log goes on after a segment is chained.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Linked {
    Continues,
    /// Entries are missing before it: the log ends at the damage.
    Cut,
}

/// The live segments chained so far, in creation order, and what chaining found.
pub(super) struct Chain<F> {
    pub(super) rec: Recovery<F>,
    /// Segments superseded or cut off, oldest first.
    dead: Vec<String>,
    /// Where each live segment's scan stopped, to name the spot when a gap shows up.
    stops: HashMap<String, Option<Stop>>,
}

impl<F> Chain<F> {
    pub(super) fn new(recycle_present: bool) -> Chain<F> {
        Chain {
            rec: Recovery {
                segments: Vec::new(),
                obsolete: Vec::new(),
                log_start: 1,
                start_prev_term: 0,
                flush_seq_max: 0,
                segment_seq_max: 0,
                reports: Vec::new(),
                recycle_present,
            },
            dead: Vec::new(),
            stops: HashMap::new(),
        }
    }

    /// Chains `seg` after the live segments (`this_and_later` names it and every
    /// later segment). A segment that starts at or before the log start, or resets
    /// the log, supersedes them all; one that starts inside them supersedes those
    /// from its first index on; one that starts after a gap cuts the log.
    pub(super) fn link(
        &mut self,
        seg: Segment<F>,
        stop: Option<Stop>,
        this_and_later: impl Iterator<Item = String>,
        config: &WalConfig,
    ) -> WalResult<Linked> {
        let info = seg.info;
        let supersedes_all =
            self.rec.segments.is_empty() || info.reset || info.first_index <= self.rec.log_start;
        if supersedes_all {
            self.dead
                .extend(self.rec.segments.drain(..).map(|s| s.name));
            self.rec.log_start = info.first_index;
            self.rec.start_prev_term = info.prev_term;
        } else {
            let prev = self.rec.segments.last().expect("not empty");
            if info.first_index > prev.last_index() + 1 {
                self.cut_at_gap(&seg, config)?;
                // This and every later segment depend on the missing entries: they
                // are dead, and the log ends at the damage.
                self.dead.extend(this_and_later);
                return Ok(Linked::Cut);
            }
            self.continue_from(&seg)?;
        }
        self.stops.insert(seg.name.clone(), stop);
        self.rec.segments.push(seg);
        Ok(Linked::Continues)
    }

    /// Segment `seg` starts after the last live entry plus one: the entries between
    /// are missing. That is corruption, reported where the previous segment's scan
    /// stopped; with `truncate_corrupt_tail` the log ends there instead.
    fn cut_at_gap(&mut self, seg: &Segment<F>, config: &WalConfig) -> WalResult<()> {
        let prev = self.rec.segments.last_mut().expect("not empty");
        let (offset, index, reason) = match self.stops.get(&prev.name).cloned().flatten() {
            Some(s) => (s.offset, s.index, s.reason.to_string()),
            None => (
                prev.end_pos,
                prev.last_index() + 1,
                "entries missing before the next segment".to_string(),
            ),
        };
        if !config.truncate_corrupt_tail {
            return Err(WalError::Corrupt {
                file: prev.name.clone(),
                offset,
                index,
                reason: format!(
                    "{reason}; next segment {} starts at {}",
                    seg.name, seg.info.first_index
                ),
            });
        }
        self.rec.reports.push(RecoveryReport::TruncatedCorruption {
            file: prev.name.clone(),
            offset,
            index,
        });
        prev.sealed = true;
        Ok(())
    }

    /// Segment `seg` continues the log from inside the live segments: those starting
    /// at or after its first index are superseded, and the one before it is cut there
    /// and sealed.
    fn continue_from(&mut self, seg: &Segment<F>) -> WalResult<()> {
        let info = &seg.info;
        while self
            .rec
            .segments
            .last()
            .is_some_and(|s| s.info.first_index >= info.first_index)
        {
            self.dead
                .push(self.rec.segments.pop().expect("checked").name);
        }
        let prev = self
            .rec
            .segments
            .last_mut()
            .expect("a segment starts below");
        // An older segment is sealed: damage where its scan stopped lies beyond its
        // live entries now that this segment continues the log from there.
        if let Some(stop) = self.stops.get(&prev.name).cloned().flatten()
            && !is_clean_end(stop.reason)
        {
            self.rec.reports.push(RecoveryReport::IgnoredDamage {
                file: prev.name.clone(),
                offset: stop.offset,
            });
        }
        prev.truncate(info.first_index);
        prev.sealed = true;
        let expected_term = prev.term_at(info.first_index - 1);
        if expected_term != Some(info.prev_term) {
            return Err(WalError::Corrupt {
                file: seg.name.clone(),
                offset: 0,
                index: info.first_index,
                reason: "segment's previous term does not match the preceding segment".to_string(),
            });
        }
        Ok(())
    }

    /// The recovery, with the files to delete among `names`.
    pub(super) fn finish(mut self, names: &[String]) -> Recovery<F> {
        let rec = &mut self.rec;
        self.dead.reverse();
        // A dead segment's summary goes right after it; summaries without a live
        // segment (their segment's removal completed, theirs did not) and unfinished
        // summary files go too.
        for name in self.dead {
            let summary = summary_file_name(&name);
            rec.obsolete.push(name);
            if names.contains(&summary) {
                rec.obsolete.push(summary);
            }
        }
        for name in names {
            let orphan = parse_summary_file_name(name).is_some_and(|(first, seq)| {
                !rec.segments
                    .iter()
                    .any(|s| s.name == segment_file_name(first, seq))
            });
            if (orphan || name.ends_with(".sum.tmp") || name == SPARE_FILE_NAME)
                && !rec.obsolete.contains(name)
            {
                rec.obsolete.push(name.clone());
            }
        }
        self.rec
    }
}
