//! Safety checks over everything the simulated cluster does, run after every step.
//!
//! - election safety: at most one leader per term;
//! - log matching: an (index, term) pair names one entry with one predecessor term;
//! - committed prefixes are identical on every member, and commit never moves back;
//! - leader completeness: a new leader holds every entry committed so far;
//! - every acknowledged append is committed exactly where it was acknowledged;
//!   no record is committed twice; a refused append is never committed;
//! - a linearizable read sees every append acknowledged before it started;
//! - trims and retention (`lifecycle.rs`): a member removes records only when a
//!   committed trim or its own retention asked for it, a read returns no record a
//!   trim acknowledged before it removed, and the records it does return are the
//!   committed ones;
//! - membership: every member's configuration in force is the bootstrap, nobody
//!   (a member not added yet) or one a leader appended; a member that the latest
//!   committed configuration does not name never becomes leader; an acknowledged
//!   entry is on the disks of a majority of the voters its leader counted
//!   (`commands.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;

use crate::engine::log::Log;
use crate::engine::{
    AppendError, AppendOk, Entry, EntryKind, Index, Membership, NodeId, ReadError, Role, Term,
};

pub type Check = Result<(), String>;

/// Finds an entry of one member's log, in its memory or on its disk.
pub type Lookup<'a> = dyn Fn(Index) -> Option<Entry> + 'a;

struct Request {
    records: Vec<Bytes>,
    /// Set for a trim (no records): the index it removes records before.
    trim_before: Option<Index>,
}

/// What a read waits on, noted when it is invoked.
#[derive(Clone, Copy)]
pub struct ReadFloor {
    /// The highest index of any append acknowledged before the read started.
    pub acked_index: Index,
    /// The highest `before` of any trim acknowledged before the read started: the
    /// read must not return a record below it.
    pub trimmed_before: Index,
}

#[derive(Default)]
pub struct Checker {
    /// The committed log as observed, by index.
    committed: BTreeMap<Index, Entry>,
    committed_records: BTreeSet<Bytes>,
    /// (index, term) -> (payload, predecessor's term).
    appended: HashMap<(Index, Term), (Bytes, Option<Term>)>,
    leaders: BTreeMap<Term, NodeId>,
    /// Per member: the commit index last seen in its current incarnation.
    commit_seen: BTreeMap<NodeId, Index>,
    requests: BTreeMap<u64, Request>,
    refused_records: BTreeSet<Bytes>,
    /// Requests whose outcome is unknown (client-side timeout or Unknown).
    pub unknown: usize,
    pub acked_records: u64,
    /// The highest index of any acknowledged append so far.
    acked_max_index: Index,
    /// The highest `before` of any acknowledged trim so far.
    acked_trim_before: Index,
    pub trims_acked: u64,
    /// Committed trim entries: index -> before.
    committed_trims: BTreeMap<Index, Index>,
    /// Read request id -> what it must see, noted when it was invoked.
    reads: BTreeMap<u64, ReadFloor>,
    pub reads_ok: u64,
    /// The membership the group started with.
    bootstrap: Membership,
    /// Every membership a leader appended in a configuration entry.
    leader_configs: HashSet<Membership>,
    /// Committed configuration entries: index -> membership.
    committed_configs: BTreeMap<Index, Membership>,
}

impl Checker {
    pub fn new(bootstrap: Membership) -> Checker {
        Checker {
            bootstrap,
            ..Checker::default()
        }
    }

    pub fn invoke_append(&mut self, request_id: u64, records: Vec<Bytes>) {
        let request = Request {
            records,
            trim_before: None,
        };
        self.requests.insert(request_id, request);
    }

    pub fn invoke_trim(&mut self, request_id: u64, before: Index) {
        let request = Request {
            records: Vec::new(),
            trim_before: Some(before),
        };
        self.requests.insert(request_id, request);
    }

    /// The payload of the last entry of an append or trim not yet answered.
    pub fn last_payload_of(&self, request_id: u64) -> Option<Bytes> {
        let request = self.requests.get(&request_id)?;
        match request.trim_before {
            Some(before) => Some(Bytes::copy_from_slice(&before.to_le_bytes())),
            None => request.records.last().cloned(),
        }
    }

    pub fn invoke_read(&mut self, request_id: u64) {
        let floor = ReadFloor {
            acked_index: self.acked_max_index,
            trimmed_before: self.acked_trim_before,
        };
        self.reads.insert(request_id, floor);
    }

    /// The highest `before` of every trim committed so far.
    pub fn committed_trim_before(&self) -> Index {
        self.committed_trims.values().copied().max().unwrap_or(0)
    }

    /// The highest `before` of the committed trims at or below `index`: a member
    /// whose commit index reached `index` must read nothing below it.
    pub fn committed_trim_before_through(&self, index: Index) -> Index {
        let through = self.committed_trims.range(..=index);
        through.map(|(_, &before)| before).max().unwrap_or(0)
    }

    /// The committed entry at `index`, if any member reported it.
    pub fn committed_entry(&self, index: Index) -> Option<&Entry> {
        self.committed.get(&index)
    }

    /// The member holding the request crashed: the client never hears back.
    pub fn abandon(&mut self, request_id: u64) {
        if self.requests.remove(&request_id).is_some() {
            self.unknown += 1;
        }
        self.reads.remove(&request_id);
    }

    pub fn restarted(&mut self, node: NodeId) {
        self.commit_seen.remove(&node);
    }

    pub fn committed_len(&self) -> usize {
        self.committed.len()
    }

    pub fn on_append_log(&mut self, node: NodeId, entries: &[Entry], log: &Log) -> Check {
        // The log is the member's state after its whole batch: the first entry's
        // predecessor is known only while that entry is still there; the others'
        // are the entries before them.
        let first = entries.first().expect("appends carry entries");
        let mut prev_term = (log.term_at(first.index) == Some(first.term))
            .then(|| log.term_at(first.index - 1))
            .flatten();
        for entry in entries {
            if entry.kind == EntryKind::Config && self.leaders.get(&entry.term) == Some(&node) {
                let membership = Membership::decode(&entry.payload).map_err(|e| {
                    format!("leader {node} appended an undecodable configuration: {e}")
                })?;
                self.leader_configs.insert(membership);
            }
            let key = (entry.index, entry.term);
            match self.appended.get(&key) {
                None => {
                    self.appended
                        .insert(key, (entry.payload.clone(), prev_term));
                }
                Some((payload, known_prev)) => {
                    let prev_differs =
                        prev_term.is_some() && known_prev.is_some() && prev_term != *known_prev;
                    if *payload != entry.payload || prev_differs {
                        return Err(format!(
                            "log matching: member {node} appended a different entry at index {} term {}",
                            entry.index, entry.term
                        ));
                    }
                }
            }
            prev_term = Some(entry.term);
        }
        Ok(())
    }

    /// `lookup` finds an entry of the member's log in memory or on its disk.
    pub fn on_commit(
        &mut self,
        node: NodeId,
        index: Index,
        start: Index,
        lookup: &Lookup,
    ) -> Check {
        // `start` is the member's log start when this commit was decided (or after
        // its whole batch, when a reset in it dropped entries): the member holds
        // nothing below it to check.
        let seen = self.commit_seen.get(&node).copied().unwrap_or(0);
        if index < seen {
            return Err(format!(
                "commit went backwards on member {node}: {seen} -> {index}"
            ));
        }
        for i in (seen + 1).max(start)..=index {
            let entry = lookup(i)
                .ok_or_else(|| format!("member {node} committed {i} but has no such entry"))?;
            self.record_committed(node, &entry)?;
        }
        self.commit_seen.insert(node, index);
        Ok(())
    }

    fn record_committed(&mut self, node: NodeId, entry: &Entry) -> Check {
        if let Some(known) = self.committed.get(&entry.index) {
            if known != entry {
                return Err(format!(
                    "committed entries differ at index {}: member {node} has term {} where term {} was committed",
                    entry.index, entry.term, known.term
                ));
            }
            return Ok(());
        }
        if let Some(before) = entry.trim_before() {
            self.committed_trims.insert(entry.index, before);
        }
        if entry.kind == EntryKind::Config {
            let membership = Membership::decode(&entry.payload)
                .map_err(|e| format!("committed configuration {} undecodable: {e}", entry.index))?;
            self.committed_configs.insert(entry.index, membership);
        }
        if entry.kind == EntryKind::Record {
            if !self.committed_records.insert(entry.payload.clone()) {
                return Err(format!(
                    "record {:?} committed twice (index {})",
                    entry.payload, entry.index
                ));
            }
            if self.refused_records.contains(&entry.payload) {
                return Err(format!(
                    "refused record {:?} was committed at {}",
                    entry.payload, entry.index
                ));
            }
        }
        self.committed.insert(entry.index, entry.clone());
        Ok(())
    }

    /// Member `node` took `role` in `term`; `in_force` is its latest configuration,
    /// at `in_force_index`.
    pub fn on_role(
        &mut self,
        node: NodeId,
        role: Role,
        term: Term,
        log: &Log,
        (in_force, in_force_index): (&Membership, Index),
    ) -> Check {
        if role != Role::Leader {
            return Ok(());
        }
        if let Some(&other) = self.leaders.get(&term)
            && other != node
        {
            return Err(format!("two leaders in term {term}: {other} and {node}"));
        }
        self.leaders.insert(term, node);
        let (index, committed) = self.latest_committed_config();
        // A leader deposed before its own removal committed may win again, by
        // the voters that remain, to finish that removal: its latest configuration
        // is then one that leaves it out, no older than the committed one.
        let finishing_removal = !in_force.contains(node) && in_force_index >= index;
        if !committed.contains(node) && !finishing_removal {
            return Err(format!(
                "member {node} became leader of term {term}, but the configuration committed at {index} does not name it: {:?}",
                committed.ids().collect::<Vec<_>>()
            ));
        }
        for (&index, entry) in self.committed.range(log.start()..) {
            if log.term_at(index) != Some(entry.term) {
                return Err(format!(
                    "leader completeness: new leader {node} of term {term} lacks committed index {index}"
                ));
            }
        }
        Ok(())
    }

    pub fn on_append_result(
        &mut self,
        request_id: u64,
        result: Result<AppendOk, AppendError>,
    ) -> Check {
        let Some(request) = self.requests.remove(&request_id) else {
            return Err(format!("append {request_id} answered twice or never asked"));
        };
        if let Some(before) = request.trim_before {
            return self.on_trim_result(request_id, before, result);
        }
        match result {
            Ok(ok) => {
                let count = ok.last_index - ok.first_index + 1;
                if count != request.records.len() as u64 {
                    return Err(format!(
                        "append {request_id} acknowledged {count} indexes for {} records",
                        request.records.len()
                    ));
                }
                for (k, record) in request.records.iter().enumerate() {
                    let index = ok.first_index + k as Index;
                    match self.committed.get(&index) {
                        Some(entry)
                            if entry.payload == *record && entry.kind == EntryKind::Record => {}
                        _ => {
                            return Err(format!(
                                "acknowledged record {record:?} is not committed at {index}"
                            ));
                        }
                    }
                }
                self.acked_records += count;
                self.acked_max_index = self.acked_max_index.max(ok.last_index);
            }
            Err(AppendError::Unknown) => self.unknown += 1,
            Err(_) => {
                for record in request.records {
                    if self.committed_records.contains(&record) {
                        return Err(format!("refused record {record:?} was already committed"));
                    }
                    self.refused_records.insert(record);
                }
            }
        }
        Ok(())
    }

    /// An acknowledged trim is committed where it was acknowledged, with its `before`.
    fn on_trim_result(
        &mut self,
        request_id: u64,
        before: Index,
        result: Result<AppendOk, AppendError>,
    ) -> Check {
        match result {
            Ok(ok) => {
                let committed = self.committed.get(&ok.first_index);
                let trim_ok = committed.and_then(Entry::trim_before) == Some(before);
                if ok.first_index != ok.last_index || !trim_ok {
                    return Err(format!(
                        "trim {request_id} before {before} acknowledged at {ok:?} but committed there: {committed:?}"
                    ));
                }
                self.trims_acked += 1;
                self.acked_trim_before = self.acked_trim_before.max(before);
            }
            Err(AppendError::Unknown) => self.unknown += 1,
            Err(_) => {}
        }
        Ok(())
    }

    /// Checks a read barrier's answer; for a served one, returns what the read must
    /// not return (see [`ReadFloor`]).
    pub fn on_read_result(
        &mut self,
        request_id: u64,
        result: Result<Index, ReadError>,
    ) -> Result<Option<ReadFloor>, String> {
        let Some(floor) = self.reads.remove(&request_id) else {
            return Err(format!("read {request_id} answered twice or never asked"));
        };
        let Ok(index) = result else {
            return Ok(None);
        };
        if index < floor.acked_index {
            return Err(format!(
                "stale read: index {index} misses an append acknowledged at {}",
                floor.acked_index
            ));
        }
        self.reads_ok += 1;
        Ok(Some(floor))
    }

    /// At the end: every member's log agrees with the committed log.
    pub fn check_final(&self, node: NodeId, start: Index, commit: Index, lookup: &Lookup) -> Check {
        for i in start..=commit {
            if self.committed.get(&i) != lookup(i).as_ref() {
                return Err(format!(
                    "member {node} diverges from the committed log at {i}"
                ));
            }
        }
        Ok(())
    }

    /// The latest configuration seen committed (index 0: the bootstrap).
    pub fn latest_committed_config(&self) -> (Index, &Membership) {
        let latest = self.committed_configs.iter().next_back();
        latest.map_or((0, &self.bootstrap), |(&index, m)| (index, m))
    }

    /// Member `node` now uses `membership`: it must be the bootstrap, nobody (a
    /// member not added yet, or wiped) or one some leader appended.
    pub fn on_membership_changed(&self, node: NodeId, membership: &Membership) -> Check {
        let known = *membership == self.bootstrap
            || *membership == Membership::default()
            || self.leader_configs.contains(membership);
        if !known {
            return Err(format!(
                "member {node} uses a configuration no leader appended: {membership:?}"
            ));
        }
        Ok(())
    }

    pub fn outstanding(&self) -> usize {
        self.requests.len() + self.reads.len()
    }
}
