//! Validation of messages from peers, before the engine acts on them.
//!
//! Peers are not trusted more than clients: a well-framed message that no honest
//! member could have sent is refused with a [`PeerFault`], and the engine does
//! nothing with it but emit `Command::RefusePeer` (the runtime logs it, counts it
//! and closes the link it came on). Handlers may then assert what these rules
//! guarantee; anything they still assert is a bug of our own.
//!
//! Two kinds of rule: those that look at the message alone (ranges, the shape of
//! the entries, terms that cannot exceed the message's term), checked on every
//! message, stale or not; and those that compare it with this member's state
//! (committed entries, who leads this term, what this leader sent), checked only on
//! messages of a term this member acts on. Stale messages are answered or dropped,
//! never acted on, so an honest old leader's outdated view is not a fault.
//!
//! What cannot be checked is not defended: Raft is not Byzantine-tolerant, and a
//! member that lies consistently (two votes in one term, plausible entries as the
//! leader of a new term, a commit index beyond what this member matched) can break
//! safety. See docs/engine.md, "Hostile peers".

use std::fmt;

use super::types::{AppendResponse, Entry, EntryKind, Index, Message, MessageBody, Term};
use super::{Config, Engine, Role};

/// Indexes and terms above this are refused: no honest log gets near it, and the
/// arithmetic on indexes and terms (`index + 1`, `term + 1`, `prev + len`) then never
/// overflows.
pub const INDEX_MAX: Index = 1 << 62;
pub const TERM_MAX: Term = 1 << 62;

/// Why a peer's message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerFault {
    /// An index field beyond [`INDEX_MAX`].
    IndexOutOfRange,
    /// The message's term beyond [`TERM_MAX`].
    TermOutOfRange,
    /// A LogStart with start index 0 (logs start at 1 or later).
    LogStartAtZero,
    /// A log term the sender claims (its last, its previous, a conflict's) above the
    /// term of the message itself.
    LogTermAboveMessageTerm,
    /// AppendEntries entries that do not follow `prev_log_index` one by one.
    EntriesNotConsecutive,
    /// An entry whose term is above the message's term.
    EntryTermAboveMessageTerm,
    /// Entry terms that decrease (from `prev_log_term` on).
    EntryTermsDecrease,
    /// An entry payload above the largest record this member stores.
    EntryTooLarge,
    /// More entry bytes in one AppendEntries than this member takes at once.
    EntriesTooLarge,
    /// An entry or a predecessor term that contradicts what this member committed.
    ContradictsCommitted,
    /// A leader's message in a term in which another member (or this one) leads.
    SecondLeader,
    /// A success acknowledging entries beyond the leader's log.
    MatchBeyondLog,
    /// A rejection of an index beyond the leader's log.
    RejectBeyondLog,
    /// A rejection whose hint points past the index it rejects.
    RejectHintBeyondIndex,
    /// A heartbeat response for a round this leader never started.
    HeartbeatSeqFromFuture,
    /// A trim entry whose payload is not an 8-byte index, or whose index is above
    /// the entry's own: no leader proposes one (it would remove records that are
    /// not in the log yet, the trim entry itself among them).
    MalformedTrim,
    /// A configuration entry whose payload is not a membership with a voter, or a
    /// LogStart whose committed configuration has no voter or lies beyond the
    /// leader's commit index.
    MalformedConfig,
}

impl PeerFault {
    /// A short, stable name for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            PeerFault::IndexOutOfRange => "index_out_of_range",
            PeerFault::TermOutOfRange => "term_out_of_range",
            PeerFault::LogStartAtZero => "log_start_at_zero",
            PeerFault::LogTermAboveMessageTerm => "log_term_above_message_term",
            PeerFault::EntriesNotConsecutive => "entries_not_consecutive",
            PeerFault::EntryTermAboveMessageTerm => "entry_term_above_message_term",
            PeerFault::EntryTermsDecrease => "entry_terms_decrease",
            PeerFault::EntryTooLarge => "entry_too_large",
            PeerFault::EntriesTooLarge => "entries_too_large",
            PeerFault::ContradictsCommitted => "contradicts_committed",
            PeerFault::SecondLeader => "second_leader",
            PeerFault::MatchBeyondLog => "match_beyond_log",
            PeerFault::RejectBeyondLog => "reject_beyond_log",
            PeerFault::RejectHintBeyondIndex => "reject_hint_beyond_index",
            PeerFault::HeartbeatSeqFromFuture => "heartbeat_seq_from_future",
            PeerFault::MalformedTrim => "malformed_trim",
            PeerFault::MalformedConfig => "malformed_config",
        }
    }

    /// Every fault, for metrics that register one series per reason.
    pub const ALL: [PeerFault; 17] = [
        PeerFault::IndexOutOfRange,
        PeerFault::TermOutOfRange,
        PeerFault::LogStartAtZero,
        PeerFault::LogTermAboveMessageTerm,
        PeerFault::EntriesNotConsecutive,
        PeerFault::EntryTermAboveMessageTerm,
        PeerFault::EntryTermsDecrease,
        PeerFault::EntryTooLarge,
        PeerFault::EntriesTooLarge,
        PeerFault::ContradictsCommitted,
        PeerFault::SecondLeader,
        PeerFault::MatchBeyondLog,
        PeerFault::RejectBeyondLog,
        PeerFault::RejectHintBeyondIndex,
        PeerFault::HeartbeatSeqFromFuture,
        PeerFault::MalformedTrim,
        PeerFault::MalformedConfig,
    ];
}

impl fmt::Display for PeerFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = match self {
            PeerFault::IndexOutOfRange => "an index is beyond any possible log",
            PeerFault::TermOutOfRange => "the term is beyond any possible term",
            PeerFault::LogStartAtZero => "a log start of 0 (logs start at 1)",
            PeerFault::LogTermAboveMessageTerm => "a log term above the message's own term",
            PeerFault::EntriesNotConsecutive => {
                "entries do not follow the previous index one by one"
            }
            PeerFault::EntryTermAboveMessageTerm => "an entry's term is above the message's term",
            PeerFault::EntryTermsDecrease => "entry terms decrease",
            PeerFault::EntryTooLarge => "an entry is larger than the largest record",
            PeerFault::EntriesTooLarge => "more entry bytes than one message may carry",
            PeerFault::ContradictsCommitted => "it contradicts committed entries",
            PeerFault::SecondLeader => "a second leader in one term",
            PeerFault::MatchBeyondLog => "a success for entries the leader does not have",
            PeerFault::RejectBeyondLog => "a rejection of an index the leader never sent",
            PeerFault::RejectHintBeyondIndex => "a rejection hint beyond the rejected index",
            PeerFault::HeartbeatSeqFromFuture => "a response to a heartbeat never sent",
            PeerFault::MalformedTrim => {
                "a trim entry that is not an 8-byte index at or below its own index"
            }
            PeerFault::MalformedConfig => {
                "a configuration that does not decode, has no voter or is not committed"
            }
        };
        f.write_str(words)
    }
}

impl Engine {
    /// Whether `msg` may be acted on; the fault when it may not.
    pub(super) fn validate(&self, msg: &Message) -> Result<(), PeerFault> {
        check_alone(msg, &self.config)?;
        if msg.term >= self.hard.term {
            self.check_leader_message(msg)?;
        }
        if msg.term == self.hard.term && self.role == Role::Leader {
            self.check_response(&msg.body)?;
        }
        Ok(())
    }

    /// A message that makes its sender this term's leader (AppendEntries, Heartbeat,
    /// LogStart) must be the only leader's, and must agree with committed entries:
    /// every leader holds them all (leader completeness).
    fn check_leader_message(&self, msg: &Message) -> Result<(), PeerFault> {
        let is_leader_message = matches!(
            msg.body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::LogStart { .. }
        );
        if !is_leader_message {
            return Ok(());
        }
        let other_leader = self.leader.is_some_and(|leader| leader != msg.from);
        if msg.term == self.hard.term && (self.role == Role::Leader || other_leader) {
            return Err(PeerFault::SecondLeader);
        }
        match &msg.body {
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                ..
            } => {
                self.check_committed_term(*prev_log_index, *prev_log_term)?;
                entries
                    .iter()
                    .try_for_each(|e| self.check_committed_term(e.index, e.term))
            }
            MessageBody::LogStart {
                start_index,
                prev_term,
                ..
            } => self.check_committed_term(start_index - 1, *prev_term),
            _ => Ok(()),
        }
    }

    /// At a committed index whose term this member knows, a leader's term must agree.
    fn check_committed_term(&self, index: Index, term: Term) -> Result<(), PeerFault> {
        let committed = index <= self.commit_index;
        match self.log.term_at(index) {
            Some(known) if committed && known != term => Err(PeerFault::ContradictsCommitted),
            _ => Ok(()),
        }
    }

    /// A response to this leader must be about what this leader sent.
    fn check_response(&self, body: &MessageBody) -> Result<(), PeerFault> {
        let last_index = self.log.last_index();
        match body {
            MessageBody::AppendEntriesResponse {
                result: AppendResponse::Success { match_index },
            } if *match_index > last_index => Err(PeerFault::MatchBeyondLog),
            MessageBody::AppendEntriesResponse {
                result:
                    AppendResponse::Reject {
                        rejected_prev_index,
                        ..
                    },
            } if *rejected_prev_index > last_index => Err(PeerFault::RejectBeyondLog),
            MessageBody::HeartbeatResponse { seq, .. } if *seq > self.heartbeat_seq => {
                Err(PeerFault::HeartbeatSeqFromFuture)
            }
            _ => Ok(()),
        }
    }
}

/// The rules that need nothing but the message (and configured limits).
fn check_alone(msg: &Message, limits: &Config) -> Result<(), PeerFault> {
    if msg.term > TERM_MAX {
        return Err(PeerFault::TermOutOfRange);
    }
    let index_ok = |index: Index| index <= INDEX_MAX;
    let term_ok = |term: Term| term <= msg.term;
    let require = |ok: bool, fault| if ok { Ok(()) } else { Err(fault) };
    match &msg.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        }
        | MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            ..
        } => {
            require(index_ok(*last_log_index), PeerFault::IndexOutOfRange)?;
            require(term_ok(*last_log_term), PeerFault::LogTermAboveMessageTerm)
        }
        MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: commit,
        } => {
            require(
                index_ok(*prev) && index_ok(*commit),
                PeerFault::IndexOutOfRange,
            )?;
            require(term_ok(*prev_term), PeerFault::LogTermAboveMessageTerm)?;
            check_entries(msg.term, *prev, *prev_term, entries, limits)
        }
        MessageBody::AppendEntriesResponse { result } => match *result {
            AppendResponse::Success { match_index } => {
                require(index_ok(match_index), PeerFault::IndexOutOfRange)
            }
            AppendResponse::Reject {
                rejected_prev_index,
                hint,
            } => {
                require(index_ok(rejected_prev_index), PeerFault::IndexOutOfRange)?;
                require(
                    hint.index <= rejected_prev_index,
                    PeerFault::RejectHintBeyondIndex,
                )?;
                require(
                    term_ok(hint.conflict_term),
                    PeerFault::LogTermAboveMessageTerm,
                )
            }
        },
        MessageBody::Heartbeat { leader_commit, .. } => {
            require(index_ok(*leader_commit), PeerFault::IndexOutOfRange)
        }
        MessageBody::HeartbeatResponse { last_log_index, .. } => {
            require(index_ok(*last_log_index), PeerFault::IndexOutOfRange)
        }
        MessageBody::LogStart {
            start_index,
            prev_term,
            leader_commit,
            config,
        } => {
            require(*start_index != 0, PeerFault::LogStartAtZero)?;
            let indexes_ok = index_ok(*start_index) && index_ok(*leader_commit);
            require(indexes_ok, PeerFault::IndexOutOfRange)?;
            require(term_ok(*prev_term), PeerFault::LogTermAboveMessageTerm)?;
            // The leader's committed configuration: at or below its commit index
            // and its term, and with somebody to vote.
            let config_ok = config.index <= *leader_commit
                && term_ok(config.term)
                && config.membership.voter_count() > 0;
            require(config_ok, PeerFault::MalformedConfig)
        }
        MessageBody::PreVoteResponse { .. }
        | MessageBody::RequestVoteResponse { .. }
        | MessageBody::TimeoutNow => Ok(()),
    }
}

/// Entries must follow `prev` one by one, with terms that never decrease from
/// `prev_term` and never pass the message's term, within the size limits; a trim
/// entry must name an index at or below its own.
fn check_entries(
    term: Term,
    prev: Index,
    prev_term: Term,
    entries: &[Entry],
    limits: &Config,
) -> Result<(), PeerFault> {
    let mut last_term = prev_term;
    let mut bytes = 0u64;
    for (expected, entry) in (prev + 1..).zip(entries) {
        if entry.index != expected {
            return Err(PeerFault::EntriesNotConsecutive);
        }
        if entry.term > term {
            return Err(PeerFault::EntryTermAboveMessageTerm);
        }
        if entry.term < last_term {
            return Err(PeerFault::EntryTermsDecrease);
        }
        if entry.payload.len() as u64 > limits.entry_payload_bytes_max {
            return Err(PeerFault::EntryTooLarge);
        }
        let trim_ok = entry.kind != EntryKind::Trim
            || entry
                .trim_before()
                .is_some_and(|before| before <= entry.index);
        if !trim_ok {
            return Err(PeerFault::MalformedTrim);
        }
        let config_ok = super::reconfig::config_of(entry)
            .is_ok_and(|c| c.is_none_or(|c| c.membership.voter_count() > 0));
        if !config_ok {
            return Err(PeerFault::MalformedConfig);
        }
        last_term = entry.term;
        bytes += entry.size_bytes();
    }
    if bytes > limits.received_entries_bytes_max {
        return Err(PeerFault::EntriesTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::super::*;

    type Snapshot = (Role, HardState, Option<NodeId>, Index, Index, Index, Term);

    fn snapshot(e: &Engine) -> Snapshot {
        let log = e.log();
        (
            e.role(),
            e.hard_state(),
            e.leader(),
            e.commit_index(),
            log.start(),
            log.last_index(),
            log.last_term(),
        )
    }

    /// Feeds `body` from `from` in `term` and asserts that the only outcome is the
    /// refusal, with nothing changed.
    fn assert_refused(
        e: &mut Engine,
        from: NodeId,
        term: Term,
        body: MessageBody,
        fault: PeerFault,
    ) {
        let before = snapshot(e);
        let to = e.id();
        e.step(msg(from, to, term, body));
        assert_eq!(e.take_commands(), vec![Command::RefusePeer { from, fault }]);
        assert_eq!(snapshot(e), before, "a refused message changed the member");
    }

    /// Member 2 following leader 1 in term 2, its log of terms 1, 1, 1 committed
    /// through 2.
    fn committed_follower() -> Engine {
        let mut e = follower(2, &[1, 2, 3], 2, &[1, 1, 1]);
        e.step(msg(1, 2, 2, append_entries(3, 1, &[], 2)));
        e.take_commands();
        assert_eq!((e.commit_index(), e.leader()), (2, Some(1)));
        e
    }

    fn log_start(start_index: Index, prev_term: Term) -> MessageBody {
        MessageBody::LogStart {
            start_index,
            prev_term,
            leader_commit: 0,
            config: KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
        }
    }

    #[test]
    fn log_start_at_zero_is_refused() {
        // Old code: `start_index - 1` underflowed in `on_log_start`.
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        assert_refused(&mut e, 1, 2, log_start(0, 0), PeerFault::LogStartAtZero);
        // Even in a stale term: the message alone shows the fault.
        assert_refused(&mut e, 1, 1, log_start(0, 0), PeerFault::LogStartAtZero);
    }

    #[test]
    fn log_start_with_a_predecessor_term_above_its_term_is_refused() {
        // Old code: the reset log's last term (9) passed the member's term.
        let mut e = follower(2, &[1, 2, 3], 2, &[]);
        let fault = PeerFault::LogTermAboveMessageTerm;
        assert_refused(&mut e, 1, 2, log_start(4, 9), fault);
    }

    #[test]
    fn log_start_contradicting_a_committed_entry_is_refused() {
        let mut e = committed_follower();
        let fault = PeerFault::ContradictsCommitted;
        assert_refused(&mut e, 1, 2, log_start(3, 2), fault);
    }

    #[test]
    fn entries_with_a_gap_are_refused() {
        // Old code: `Log::append` asserted a dense log.
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        let gap = append_entries(1, 1, &[(3, 2)], 0);
        assert_refused(&mut e, 1, 2, gap, PeerFault::EntriesNotConsecutive);
        let repeat = append_entries(1, 1, &[(2, 2), (2, 2)], 0);
        assert_refused(&mut e, 1, 2, repeat, PeerFault::EntriesNotConsecutive);
    }

    #[test]
    fn entries_of_a_later_term_than_the_message_are_refused() {
        // Old code: the log's last term passed the member's term (an invariant).
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        let ahead = append_entries(1, 1, &[(2, 3)], 0);
        assert_refused(&mut e, 1, 2, ahead, PeerFault::EntryTermAboveMessageTerm);
    }

    #[test]
    fn decreasing_entry_terms_are_refused() {
        // Old code: `Log::append` asserted that terms never decrease.
        let mut e = follower(2, &[1, 2, 3], 3, &[1, 1]);
        let down = append_entries(1, 1, &[(2, 3), (3, 2)], 0);
        assert_refused(&mut e, 1, 3, down, PeerFault::EntryTermsDecrease);
        let below_prev = append_entries(1, 2, &[(2, 1)], 0);
        assert_refused(&mut e, 1, 3, below_prev, PeerFault::EntryTermsDecrease);
    }

    #[test]
    fn a_previous_term_above_the_message_term_is_refused() {
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        let fault = PeerFault::LogTermAboveMessageTerm;
        assert_refused(&mut e, 1, 2, append_entries(1, 5, &[], 0), fault);
    }

    #[test]
    fn entries_replacing_committed_ones_are_refused() {
        // Old code: `truncate_log` asserted that nothing committed is truncated.
        let mut e = committed_follower();
        let fault = PeerFault::ContradictsCommitted;
        let rewrite = append_entries(1, 1, &[(2, 2)], 2);
        assert_refused(&mut e, 1, 2, rewrite, fault);
        let bad_prev = append_entries(2, 2, &[(3, 2)], 2);
        assert_refused(&mut e, 1, 2, bad_prev, fault);
        // Above the commit index a conflict is ordinary Raft: truncated, replaced.
        e.step(msg(1, 2, 2, append_entries(2, 1, &[(3, 2)], 2)));
        assert_eq!(e.log().last_term(), 2);
    }

    #[test]
    fn oversized_entries_are_refused_before_the_wal_sees_them() {
        // Old code: the runtime handed the record to the WAL, which refused it and
        // stopped the shard.
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        e.config.entry_payload_bytes_max = 4;
        let mut big = record(2, 2);
        big.payload = Bytes::from_static(b"12345");
        let body = MessageBody::AppendEntries {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![big],
            leader_commit: 0,
        };
        assert_refused(&mut e, 1, 2, body, PeerFault::EntryTooLarge);
        e.config.entry_payload_bytes_max = 1 << 20;
        e.config.received_entries_bytes_max = 2 * ENTRY_OVERHEAD_BYTES;
        let many = append_entries(1, 1, &[(2, 2), (3, 2), (4, 2)], 0);
        assert_refused(&mut e, 1, 2, many, PeerFault::EntriesTooLarge);
    }

    #[test]
    fn a_leader_refuses_another_leader_of_its_term() {
        // Old code: `accept_leader` asserted "two leaders".
        let mut e = leader(&[1]);
        let fault = PeerFault::SecondLeader;
        assert_refused(&mut e, 2, 2, heartbeat(0, 1), fault);
        assert_refused(&mut e, 3, 2, append_entries(2, 2, &[], 0), fault);
        assert_refused(&mut e, 2, 2, log_start(2, 1), fault);
    }

    #[test]
    fn a_follower_refuses_a_second_leader_of_its_term() {
        let mut e = committed_follower();
        assert_refused(&mut e, 3, 2, heartbeat(0, 1), PeerFault::SecondLeader);
        // The same message in a later term is a new leader, as usual.
        e.step(msg(3, 2, 3, heartbeat(0, 1)));
        assert_eq!((e.term(), e.leader()), (3, Some(3)));
    }

    #[test]
    fn a_success_beyond_the_leader_log_is_refused() {
        // Old code: `on_append_response` asserted the match was within the log.
        let mut e = leader(&[1]);
        assert_refused(&mut e, 2, 2, success(3), PeerFault::MatchBeyondLog);
    }

    #[test]
    fn a_rejection_beyond_the_leader_log_is_refused() {
        // Old code: a pipelined follower's rejection of 10 set its next index to
        // 10, beyond the log (an invariant of `Progress`).
        let mut e = leader(&[1]);
        e.step(msg(2, 1, 2, success(2)));
        e.take_commands();
        let fault = PeerFault::RejectBeyondLog;
        assert_refused(&mut e, 2, 2, rejection(10, 0, 9), fault);
    }

    #[test]
    fn rejection_hints_must_stay_at_or_below_the_rejected_index() {
        let mut e = leader(&[1]);
        let fault = PeerFault::RejectHintBeyondIndex;
        assert_refused(&mut e, 2, 2, rejection(1, 0, 2), fault);
        let fault = PeerFault::LogTermAboveMessageTerm;
        assert_refused(&mut e, 2, 2, rejection(1, 3, 1), fault);
    }

    #[test]
    fn indexes_beyond_any_log_are_refused() {
        // Old code: `rejected_prev_index + 1` overflowed for a probed follower.
        let mut e = leader(&[1]);
        let fault = PeerFault::IndexOutOfRange;
        assert_refused(&mut e, 3, 2, rejection(u64::MAX, 0, 0), fault);
        let huge_end = heartbeat_response(0, u64::MAX);
        assert_refused(&mut e, 3, 2, huge_end, fault);
    }

    #[test]
    fn terms_beyond_any_election_are_refused() {
        // Old code: the member adopted the term, and its next campaign overflowed.
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        let fault = PeerFault::TermOutOfRange;
        assert_refused(&mut e, 3, u64::MAX, vote_request(1, 1), fault);
    }

    #[test]
    fn candidates_with_a_log_term_above_their_term_are_refused() {
        let mut e = follower(2, &[1, 2, 3], 2, &[1]);
        let fault = PeerFault::LogTermAboveMessageTerm;
        assert_refused(&mut e, 3, 3, vote_request(5, 4), fault);
        assert_refused(&mut e, 3, 3, pre_vote(5, 4), fault);
    }

    #[test]
    fn heartbeat_responses_for_rounds_never_sent_are_refused() {
        // Old code: the answer counted for read rounds not yet started, so a read
        // could be served without confirming leadership.
        let mut e = leader(&[1]);
        let future = heartbeat_response(1, 2);
        assert_refused(&mut e, 2, 2, future, PeerFault::HeartbeatSeqFromFuture);
    }

    #[test]
    fn every_fault_has_a_distinct_label_and_words() {
        let labels: std::collections::BTreeSet<_> =
            PeerFault::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(labels.len(), PeerFault::ALL.len());
        for fault in PeerFault::ALL {
            assert!(!fault.to_string().is_empty());
        }
    }
}
