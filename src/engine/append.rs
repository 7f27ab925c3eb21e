//! Client appends: admission (bounded), then into the log, and out to followers at
//! the end of the same turn (one AppendEntries per follower for the whole turn).
//! Trims (`trim.rs`) are admitted and proposed through the same path.

use bytes::Bytes;

use super::event::AppendError;
use super::types::{Entry, EntryKind, Index};
use super::{Engine, PendingAppend, Role};

impl Engine {
    pub(super) fn on_client_append(&mut self, request_id: u64, records: Vec<Bytes>) {
        let bytes = match self.admit_append(&records) {
            Ok(bytes) => bytes,
            Err(refusal) => return self.reply_append(request_id, Err(refusal)),
        };
        let first_index = self.log.last_index() + 1;
        let last_index = first_index + records.len() as u64 - 1;
        let term = self.hard.term;
        // Straight into the turn's AppendLog: one vector and one storage op for a
        // turn's appends, not one per request (records are never configurations or
        // trims, so there is nothing else to note).
        self.open_turn_append_log(bytes);
        let entries = super::storage::last_append_log(&mut self.output);
        for (k, payload) in records.into_iter().enumerate() {
            let entry = Entry {
                term,
                index: first_index + k as u64,
                kind: EntryKind::Record,
                payload,
            };
            entries.push(entry.clone());
            self.log.append(entry);
        }
        self.extend_last_op_to(last_index);
        self.evict_cache();
        self.await_commit(request_id, first_index, last_index, bytes);
    }

    /// Appends a client's `entries` (of this leader's term, right after its last
    /// entry) and remembers to answer `request_id` once the last of them commits.
    pub(super) fn propose(&mut self, request_id: u64, entries: Vec<Entry>) {
        let first_index = entries.first().expect("a proposal has entries").index;
        let last_index = first_index + entries.len() as u64 - 1;
        let bytes = entries.iter().map(Entry::size_bytes).sum::<u64>();
        self.append_to_log(entries);
        self.await_commit(request_id, first_index, last_index, bytes);
    }

    /// Remembers to answer `request_id` once `last_index`, just appended in this
    /// leader's term, commits.
    fn await_commit(&mut self, request_id: u64, first_index: Index, last_index: Index, bytes: u64) {
        self.uncommitted_bytes += bytes;
        self.pending_appends.push_back(PendingAppend {
            request_id,
            first_index,
            last_index,
            term: self.hard.term,
            bytes,
        });
        // Sent at the end of the turn, together with every other append of it.
        self.replicate_pending = true;
    }

    /// Admits `records`, returning what they cost as entries (`Entry::size_bytes`).
    fn admit_append(&self, records: &[Bytes]) -> Result<u64, AppendError> {
        self.admit_role()?;
        if records.is_empty() {
            return Err(AppendError::EmptyBatch);
        }
        let bytes: u64 = records.iter().map(record_size_bytes).sum();
        self.admit_bytes(bytes)?;
        Ok(bytes)
    }

    /// Only a leader that is not handing over its leadership takes proposals.
    pub(super) fn admit_role(&self) -> Result<(), AppendError> {
        if self.role != Role::Leader {
            return Err(AppendError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(AppendError::LeaderTransferring);
        }
        Ok(())
    }

    /// Whether a proposal of `bytes` fits what may wait for its commit.
    pub(super) fn admit_bytes(&self, bytes: u64) -> Result<(), AppendError> {
        // A batch larger than the whole budget is still admitted when nothing waits,
        // or it could never be admitted at all.
        let over_budget = self.uncommitted_bytes > 0
            && self.uncommitted_bytes + bytes > self.config.uncommitted_bytes_max;
        if self.pending_appends.len() >= self.config.pending_appends_max || over_budget {
            return Err(AppendError::Overloaded);
        }
        Ok(())
    }
}

/// What a record costs as an entry (`Entry::size_bytes`).
fn record_size_bytes(record: &Bytes) -> u64 {
    record.len() as u64 + super::ENTRY_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    fn refusal(request_id: u64, error: AppendError) -> Command {
        Command::AppendResult {
            request_id,
            result: Err(error),
        }
    }

    #[test]
    fn follower_refuses_with_a_leader_hint() {
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        e.step(msg(1, 2, 2, heartbeat(0, 1)));
        e.take_commands();
        e.step(client_append(1, &["a"]));
        let error = AppendError::NotLeader { leader: Some(1) };
        assert_eq!(e.take_commands(), vec![refusal(1, error)]);
    }

    #[test]
    fn empty_batches_and_overload_are_refused_without_appending() {
        let mut e = leader(&[1]);
        e.config.pending_appends_max = 1;
        e.step(client_append(1, &[]));
        assert_eq!(e.take_commands(), vec![refusal(1, AppendError::EmptyBatch)]);
        e.step(client_append(2, &["a"]));
        e.take_commands();
        e.step(client_append(3, &["b"]));
        assert_eq!(e.take_commands(), vec![refusal(3, AppendError::Overloaded)]);
        assert_eq!(e.log().last_index(), 3);
    }

    #[test]
    fn uncommitted_bytes_are_bounded() {
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        e.take_commands();
        e.config.uncommitted_bytes_max = 100;
        e.step(client_append(1, &[&"x".repeat(200)]));
        let out = e.take_commands();
        assert!(
            matches!(out[0], Command::AppendLog { .. }),
            "one batch alone is admitted"
        );
        e.step(client_append(2, &["y"]));
        assert_eq!(e.take_commands(), vec![refusal(2, AppendError::Overloaded)]);
    }

    /// The AppendLogs in `out`: (op, indexes of their entries).
    fn append_logs(out: &[Command]) -> Vec<(u64, Vec<Index>)> {
        let logs = out.iter().filter_map(|c| match c {
            Command::AppendLog { op, entries } => {
                Some((*op, entries.iter().map(|e| e.index).collect()))
            }
            _ => None,
        });
        logs.collect()
    }

    #[test]
    fn a_steps_appends_share_one_append_log_as_large_as_a_followers_message() {
        let mut e = leader(&[1]);
        e.config.received_entries_bytes_max = 3 * (1 + ENTRY_OVERHEAD_BYTES);
        let appends = [
            client_append(1, &["a", "b"]),
            client_append(2, &["c"]),
            client_append(3, &["d"]),
        ];
        e.step_batch(appends);
        let out = e.take_commands();
        assert_eq!(append_logs(&out), vec![(3, vec![3, 4, 5]), (4, vec![6])]);
        // A later step never joins an AppendLog the runtime may have carried out.
        e.step(client_append(4, &["e"]));
        assert_eq!(append_logs(&e.take_commands()), vec![(5, vec![7])]);
        // Op 3 on disk means every entry it carried is, and no more.
        e.step(Event::Durable { op: 3 });
        e.step(msg(2, 1, 2, success(7)));
        let answered: Vec<u64> = e
            .take_commands()
            .iter()
            .filter_map(|c| match c {
                Command::AppendResult { request_id, .. } => Some(*request_id),
                _ => None,
            })
            .collect();
        assert_eq!(answered, vec![1, 2]);
        assert_eq!(e.commit_index(), 5);
    }
}
