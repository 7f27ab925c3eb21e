//! A misbehaving member: in some seeds one member (chosen by the seed) sends, besides
//! or instead of its engine's honest messages, well-framed messages that break the
//! protocol's rules, mutating every field a receiver can check, of every kind.
//!
//! Raft is not Byzantine-tolerant: a member that lies in ways a receiver cannot
//! check (two votes in one term, plausible entries as the leader of a new term, a
//! commit index beyond what it replicated) can break safety, and no validation can
//! stop it. So the lies here are only those a receiver detects whatever its state
//! when the message arrives: the message alone shows the fault (ranges, shapes,
//! terms above the message's term), or a leader would refuse it (a success or a
//! rejection beyond any simulated log, a heartbeat round far in the future) and any
//! other member ignores it. The other members' checks must hold, nothing may panic,
//! and an honest member must never be refused (see `Sim::on_refusal`).

use bytes::Bytes;

use crate::engine::rng::Rng;
use crate::engine::validate::{INDEX_MAX, TERM_MAX};
use crate::engine::{AppendResponse, ConflictHint, Entry, EntryKind, Message, MessageBody};

/// An index beyond any simulated log, yet in range: only a leader's state shows
/// that it is a lie, and only a leader acts on the messages carrying it.
const BEYOND_ANY_LOG: u64 = 1 << 40;
/// Largest entry payload the simulated members accept; honest records are far
/// smaller.
pub const ENTRY_PAYLOAD_BYTES_MAX: u64 = 64;
/// Largest sum of entry sizes one simulated AppendEntries may carry; honest
/// leaders send at most 200 bytes, or one entry.
pub const RECEIVED_ENTRIES_BYTES_MAX: u64 = 1024;

/// What the misbehaving member does with one honest message.
pub enum Lie {
    /// Sends it as it is.
    Honest(Message),
    /// Sends a mutated copy instead.
    Instead(Message),
    /// Sends it, and a mutated copy too.
    Besides(Message, Message),
}

/// Decides the fate of one of the misbehaving member's messages.
pub fn lie_about(msg: Message, rng: &mut Rng) -> Lie {
    match rng.range(0, 4) {
        0 => Lie::Instead(mutate(msg, rng)),
        1 => {
            let bad = mutate(msg.clone(), rng);
            Lie::Besides(msg, bad)
        }
        _ => Lie::Honest(msg),
    }
}

/// A copy of `msg` with one field made detectably wrong.
pub fn mutate(mut msg: Message, rng: &mut Rng) -> Message {
    let term = msg.term;
    let above_term = term + rng.range(1, 1000);
    let huge_index = INDEX_MAX + rng.range(1, 1000);
    // One in eight lies is about the term, which every kind carries.
    if rng.chance(1, 8) {
        msg.term = TERM_MAX + rng.range(1, 1000);
        return msg;
    }
    let pick = rng.range(0, 10);
    match &mut msg.body {
        MessageBody::PreVote {
            last_log_index: index,
            last_log_term: log_term,
        }
        | MessageBody::RequestVote {
            last_log_index: index,
            last_log_term: log_term,
            ..
        } => match pick % 2 {
            0 => *index = huge_index,
            _ => *log_term = above_term,
        },
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => match pick {
            0 => *prev_log_index = huge_index,
            1 => *prev_log_term = above_term,
            2 => *leader_commit = huge_index,
            _ => mutate_entries(entries, *prev_log_index, term, pick, rng),
        },
        MessageBody::AppendEntriesResponse { result } => {
            *result = mutate_response(*result, term, pick, rng)
        }
        MessageBody::Heartbeat { leader_commit, .. } => *leader_commit = huge_index,
        MessageBody::HeartbeatResponse {
            seq,
            last_log_index,
        } => match pick % 2 {
            0 => *seq = BEYOND_ANY_LOG + rng.range(0, 1000),
            _ => *last_log_index = huge_index,
        },
        MessageBody::LogStart {
            start_index,
            prev_term,
            leader_commit,
            config,
        } => match pick % 5 {
            0 => *start_index = 0,
            1 => *start_index = huge_index,
            2 => *prev_term = above_term,
            3 => config.index = huge_index,
            _ => *leader_commit = huge_index,
        },
        // Nothing else in these bodies can be checked: only their term.
        MessageBody::PreVoteResponse { .. }
        | MessageBody::RequestVoteResponse { .. }
        | MessageBody::TimeoutNow => msg.term = TERM_MAX + 1,
    }
    msg
}

/// Breaks the entries of an AppendEntries after `prev` in a message of `term`: a
/// gap, a term above the message's, terms that decrease, a payload or a batch too
/// large, a trim whose payload is no 8-byte index or that trims past itself. An
/// AppendEntries without entries gets one with a gap.
fn mutate_entries(entries: &mut Vec<Entry>, prev: u64, term: u64, pick: u64, rng: &mut Rng) {
    let entry = |index, term, payload: Bytes| Entry {
        term,
        index,
        kind: EntryKind::Record,
        payload,
    };
    let small = Bytes::from_static(b"lie");
    match pick {
        3 => entries.push(entry(prev + entries.len() as u64 + 2, term, small)),
        4 => entries.push(entry(prev + entries.len() as u64 + 1, term + 1, small)),
        5 if term > 1 => {
            let next = prev + entries.len() as u64 + 1;
            entries.push(entry(next, term, small.clone()));
            entries.push(entry(next + 1, term - 1, small));
        }
        6 => {
            let big = Bytes::from(vec![b'x'; ENTRY_PAYLOAD_BYTES_MAX as usize + 1]);
            entries.push(entry(prev + entries.len() as u64 + 1, term, big));
        }
        7 => {
            let next = prev + entries.len() as u64 + 1;
            let mut trim = Entry::trim(next, term, next);
            let len = [0, 7, 9][rng.range(0, 3) as usize];
            trim.payload = Bytes::from(vec![1; len]);
            entries.push(trim);
        }
        8 => {
            let next = prev + entries.len() as u64 + 1;
            entries.push(Entry::trim(next, term, next + rng.range(1, 1000)));
        }
        _ => {
            let first = prev + entries.len() as u64 + 1;
            let count = RECEIVED_ENTRIES_BYTES_MAX / 24 + rng.range(1, 10);
            let payload = Bytes::from_static(b"x");
            entries.extend((0..count).map(|k| entry(first + k, term, payload.clone())));
        }
    }
}

/// Breaks an AppendEntries response of `term`.
fn mutate_response(result: AppendResponse, term: u64, pick: u64, rng: &mut Rng) -> AppendResponse {
    let rejected_prev_index = match result {
        AppendResponse::Success { match_index } => match_index,
        AppendResponse::Reject {
            rejected_prev_index,
            ..
        } => rejected_prev_index,
    };
    let reject = |rejected_prev_index, index, conflict_term| AppendResponse::Reject {
        rejected_prev_index,
        hint: ConflictHint {
            index,
            conflict_term,
        },
    };
    match pick % 5 {
        0 => AppendResponse::Success {
            match_index: BEYOND_ANY_LOG + rng.range(0, 1000),
        },
        1 => AppendResponse::Success {
            match_index: INDEX_MAX + 1,
        },
        2 => reject(BEYOND_ANY_LOG, 0, 0),
        3 => reject(rejected_prev_index, rejected_prev_index + 1, 0),
        _ => reject(rejected_prev_index, 0, term + 1),
    }
}
