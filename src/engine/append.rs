//! Client appends: admission (bounded), then into the log, and out to followers at
//! the end of the same turn (one AppendEntries per follower for the whole turn).
//! Trims (`trim.rs`) are admitted and proposed through the same path.

use bytes::Bytes;

use super::event::AppendError;
use super::types::{Entry, EntryKind};
use super::{Engine, PendingAppend, Role};

impl Engine {
    pub(super) fn on_client_append(&mut self, request_id: u64, records: Vec<Bytes>) {
        if let Err(refusal) = self.admit_append(&records) {
            return self.reply_append(request_id, Err(refusal));
        }
        let first_index = self.log.last_index() + 1;
        let term = self.hard.term;
        let entries: Vec<Entry> = records
            .into_iter()
            .enumerate()
            .map(|(k, payload)| Entry {
                term,
                index: first_index + k as u64,
                kind: EntryKind::Record,
                payload,
            })
            .collect();
        self.propose(request_id, entries);
    }

    /// Appends a client's `entries` (of this leader's term, right after its last
    /// entry) and remembers to answer `request_id` once the last of them commits.
    pub(super) fn propose(&mut self, request_id: u64, entries: Vec<Entry>) {
        let first_index = entries.first().expect("a proposal has entries").index;
        let last_index = first_index + entries.len() as u64 - 1;
        let bytes = entries.iter().map(Entry::size_bytes).sum::<u64>();
        let term = self.hard.term;
        self.append_to_log(entries);
        self.uncommitted_bytes += bytes;
        self.pending_appends.push_back(PendingAppend {
            request_id,
            first_index,
            last_index,
            term,
            bytes,
        });
        // Sent at the end of the turn, together with every other append of it.
        self.replicate_pending = true;
    }

    fn admit_append(&self, records: &[Bytes]) -> Result<(), AppendError> {
        self.admit_role()?;
        if records.is_empty() {
            return Err(AppendError::EmptyBatch);
        }
        let bytes: u64 = records
            .iter()
            .map(|r| r.len() as u64 + super::ENTRY_OVERHEAD_BYTES)
            .sum();
        self.admit_bytes(bytes)
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
}
