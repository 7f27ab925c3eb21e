//! Builders shared by the handler tests beside each concern.

use super::*;
pub use bytes::Bytes;

/// A follower `id` in `term` whose log holds entries with `terms`, from index 1.
pub fn follower(id: NodeId, members: &[NodeId], term: Term, terms: &[Term]) -> Engine {
    let entries = log::tests::entries_with_terms(terms);
    let hard_state = HardState {
        term,
        voted_for: None,
    };
    let recovered = Recovered::from_entries(hard_state, 1, 0, entries);
    Engine::new(
        id,
        &Membership::of_voters(members),
        Config::default(),
        42,
        recovered,
    )
    .expect("valid test engine")
}

/// Member 1 as leader of term 2 over [1, 2, 3], with its no-op at index
/// `terms.len() + 1` on disk and every command so far taken.
pub fn leader(terms: &[Term]) -> Engine {
    let mut e = leader_unflushed(1, terms);
    e.step(Event::Durable { op: 2 });
    e.take_commands();
    e
}

/// Member 1 elected in term `term + 1` over [1, 2, 3]; its no-op (op 2) is not
/// on disk yet. Every command so far taken.
pub fn leader_unflushed(term: Term, terms: &[Term]) -> Engine {
    let mut e = follower(1, &[1, 2, 3], term, terms);
    tick_until_role(&mut e, Role::PreCandidate);
    e.step(msg(
        2,
        1,
        term + 1,
        MessageBody::PreVoteResponse { granted: true },
    ));
    e.step(Event::Durable { op: 1 });
    e.step(msg(
        2,
        1,
        term + 1,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    e.take_commands();
    assert_eq!(e.role(), Role::Leader);
    e
}

pub fn tick_until_role(e: &mut Engine, role: Role) -> u32 {
    for ticks in 1..1000 {
        e.step(Event::Tick);
        if e.role() == role {
            return ticks;
        }
    }
    panic!("never became {role:?}");
}

pub fn tick_n(e: &mut Engine, n: u32) {
    for _ in 0..n {
        e.step(Event::Tick);
    }
}

pub fn msg(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Event {
    Event::Message(Message {
        from,
        to,
        term,
        body,
    })
}

pub fn send(
    from: NodeId,
    to: NodeId,
    term: Term,
    body: MessageBody,
    when: Option<Condition>,
) -> Command {
    Command::Send {
        msg: Message {
            from,
            to,
            term,
            body,
        },
        when,
    }
}

pub fn durable(op: u64) -> Option<Condition> {
    Some(Condition::Durable { op })
}

pub fn role_changed(role: Role, term: Term, leader: Option<NodeId>) -> Command {
    Command::RoleChanged { role, term, leader }
}

/// Leader `e` (member 1 of term 2, whose log starts at `start` after an entry
/// of term 1) hears that member 3 lost its whole log: it must send LogStart,
/// which resets member 3's new, empty log. Returns member 3.
pub fn reset_empty_follower_3(e: &mut Engine, start: Index, leader_commit: Index) -> Engine {
    e.step(msg(3, 1, 2, rejection(3, 0, 0)));
    let reset = MessageBody::LogStart {
        start_index: start,
        prev_term: 1,
        leader_commit,
        config: KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
    };
    assert_eq!(e.take_commands(), vec![send(1, 3, 2, reset.clone(), None)]);
    let mut f = follower(3, &[1, 2, 3], 2, &[]);
    f.step(msg(1, 3, 2, reset));
    let reset_log = Command::ResetLog {
        op: 1,
        start,
        prev_term: 1,
    };
    let expected = vec![
        reset_log,
        Command::Commit { index: start - 1 },
        send(3, 1, 2, success(start - 1), durable(1)),
        role_changed(Role::Follower, 2, Some(1)),
    ];
    assert_eq!(f.take_commands(), expected);
    f
}

pub fn pre_vote(last_log_index: Index, last_log_term: Term) -> MessageBody {
    MessageBody::PreVote {
        last_log_index,
        last_log_term,
    }
}

pub fn vote_request(last_log_index: Index, last_log_term: Term) -> MessageBody {
    MessageBody::RequestVote {
        last_log_index,
        last_log_term,
        campaign: Campaign::Election,
    }
}

pub fn heartbeat(leader_commit: Index, seq: u64) -> MessageBody {
    MessageBody::Heartbeat { leader_commit, seq }
}

pub fn heartbeat_response(seq: u64, last_log_index: Index) -> MessageBody {
    MessageBody::HeartbeatResponse {
        seq,
        last_log_index,
    }
}

pub fn record(index: Index, term: Term) -> Entry {
    log::tests::entry(index, term)
}

/// AppendEntries after (`prev`, `prev_term`) with entries given as (index, term).
pub fn append_entries(
    prev: Index,
    prev_term: Term,
    entries: &[(Index, Term)],
    commit: Index,
) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: prev,
        prev_log_term: prev_term,
        entries: entries.iter().map(|&(i, t)| record(i, t)).collect(),
        leader_commit: commit,
    }
}

/// AppendEntries after (`prev`, `prev_term`) carrying `entries` as they are.
pub fn entries_msg(
    prev: Index,
    prev_term: Term,
    entries: Vec<Entry>,
    commit: Index,
) -> MessageBody {
    MessageBody::AppendEntries {
        prev_log_index: prev,
        prev_log_term: prev_term,
        entries,
        leader_commit: commit,
    }
}

pub fn success(match_index: Index) -> MessageBody {
    MessageBody::AppendEntriesResponse {
        result: AppendResponse::Success { match_index },
    }
}

pub fn rejection(rejected_prev_index: Index, conflict_term: Term, index: Index) -> MessageBody {
    MessageBody::AppendEntriesResponse {
        result: AppendResponse::Reject {
            rejected_prev_index,
            hint: ConflictHint {
                index,
                conflict_term,
            },
        },
    }
}

pub fn noop(index: Index, term: Term) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Noop,
        payload: Bytes::new(),
    }
}

pub fn client_append(request_id: u64, records: &[&str]) -> Event {
    let records = records.iter().map(|r| Bytes::from(r.to_string())).collect();
    Event::ClientAppend {
        request_id,
        records,
    }
}
