//! Handler tests for membership changes: exact commands, as elsewhere in the engine.

use super::super::tests::*;
use super::super::*;

fn learner(id: NodeId) -> Member {
    Member {
        id,
        voter: false,
        peer_address: format!("n{id}:7000"),
        client_address: format!("n{id}:9000"),
    }
}

fn change(request_id: u64, change: MembershipChange) -> Event {
    Event::ChangeMembership { request_id, change }
}

fn refused(request_id: u64, why: ChangeRefusal) -> Command {
    Command::AppendResult {
        request_id,
        result: Err(AppendError::MembershipChange(why)),
    }
}

/// The configuration entry a leader of `term` appends at `index` for `membership`.
fn config_entry(index: Index, term: Term, membership: &Membership) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Config,
        payload: membership.encode(),
    }
}

fn known(index: Index, term: Term, committed: bool, membership: Membership) -> KnownConfig {
    KnownConfig {
        index,
        term,
        committed,
        membership,
    }
}

/// Member 1 leading [1, 2, 3] in term 2 with its no-op (index 2) committed.
fn ready_leader() -> Engine {
    let mut e = leader(&[1]);
    e.step(msg(2, 1, 2, success(2)));
    e.take_commands();
    assert_eq!(e.commit_index(), 2);
    e
}

fn with_learner_4() -> Membership {
    Membership::of_voters(&[1, 2, 3])
        .changed(&MembershipChange::AddLearner(learner(4)))
        .expect("4 is new")
}

#[test]
fn adding_a_learner_saves_before_appending_and_commits_without_it() {
    let mut e = ready_leader();
    e.step(change(7, MembershipChange::AddLearner(learner(4))));
    let next = with_learner_4();
    let entry = config_entry(3, 2, &next);
    let bootstrap = KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3]));
    let out = e.take_commands();
    assert_eq!(
        &out[..3],
        &[
            Command::SaveMembership {
                op: 3,
                configs: vec![bootstrap, known(3, 2, false, next.clone())],
            },
            Command::MembershipChanged {
                membership: next.clone()
            },
            Command::AppendLog {
                op: 4,
                entries: vec![entry.clone()],
            },
        ]
    );
    // The learner is sent the log like any follower (from the entry, to probe).
    assert!(
        out.iter()
            .any(|c| matches!(c, Command::Send { msg, .. } if msg.to == 4)),
        "{out:?}"
    );
    assert_eq!(e.membership(), &next);
    // Voters 1 and 2 are a majority of the three voters: the learner is not counted.
    e.step(Event::Durable { op: 4 });
    e.step(msg(2, 1, 2, success(3)));
    let out = e.take_commands();
    assert!(out.contains(&Command::Commit { index: 3 }), "{out:?}");
    assert!(out.contains(&Command::AppendResult {
        request_id: 7,
        result: Ok(AppendOk {
            first_index: 3,
            last_index: 3
        }),
    }));
    assert!(out.contains(&Command::SaveMembership {
        op: 5,
        configs: vec![known(3, 2, true, next)],
    }));
    // A learner that has not answered yet is not promoted; once it holds the log,
    // it is.
    e.step(change(8, MembershipChange::Promote(4)));
    assert_eq!(
        e.take_commands(),
        vec![refused(8, ChangeRefusal::NotCaughtUp(4))]
    );
    e.step(msg(4, 1, 2, success(3)));
    e.take_commands();
    e.step(change(9, MembershipChange::Promote(4)));
    let out = e.take_commands();
    assert!(
        matches!(out[0], Command::SaveMembership { op: 6, .. }),
        "{out:?}"
    );
    assert_eq!(e.membership().quorum(), 3);
}

#[test]
fn one_change_at_a_time_and_only_after_the_leaders_first_commit() {
    let mut e = leader(&[1]);
    e.step(change(1, MembershipChange::Remove(3)));
    assert_eq!(
        e.take_commands(),
        vec![refused(1, ChangeRefusal::LeaderNotReady)]
    );
    e.step(msg(2, 1, 2, success(2)));
    e.take_commands();
    e.step(change(2, MembershipChange::AddLearner(learner(4))));
    e.take_commands();
    e.step(change(3, MembershipChange::Promote(4)));
    assert_eq!(
        e.take_commands(),
        vec![refused(3, ChangeRefusal::ChangeInProgress)]
    );
    e.step(change(4, MembershipChange::Remove(9)));
    assert_eq!(
        e.take_commands(),
        vec![refused(4, ChangeRefusal::ChangeInProgress)]
    );
}

#[test]
fn invalid_changes_are_refused_without_appending() {
    let mut e = ready_leader();
    for (id, c, why) in [
        (1, MembershipChange::Remove(9), ChangeRefusal::NotMember(9)),
        (
            2,
            MembershipChange::Promote(2),
            ChangeRefusal::AlreadyVoter(2),
        ),
        (
            3,
            MembershipChange::AddLearner(learner(3)),
            ChangeRefusal::AlreadyMember(3),
        ),
    ] {
        e.step(change(id, c));
        assert_eq!(e.take_commands(), vec![refused(id, why)]);
    }
    assert_eq!(e.log().last_index(), 2);
}

#[test]
fn a_follower_uses_a_configuration_at_once_and_drops_it_when_truncated() {
    let mut f = follower(2, &[1, 2, 3], 2, &[1]);
    let next = with_learner_4();
    f.step(msg(
        1,
        2,
        2,
        entries_msg(1, 1, vec![config_entry(2, 2, &next)], 1),
    ));
    let out = f.take_commands();
    assert_eq!(
        &out[..3],
        &[
            Command::SaveMembership {
                op: 1,
                configs: vec![
                    KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3])),
                    known(2, 2, false, next.clone()),
                ],
            },
            Command::MembershipChanged {
                membership: next.clone()
            },
            Command::AppendLog {
                op: 2,
                entries: vec![config_entry(2, 2, &next)],
            },
        ]
    );
    assert_eq!(f.membership(), &next);
    // A leader of term 3 replaces index 2: the configuration before is back, and
    // saved only after the truncation (the saved list never lacks one in the log).
    f.step(msg(3, 2, 3, append_entries(1, 1, &[(2, 3)], 1)));
    let out = f.take_commands();
    let at = |c: &Command| {
        out.iter()
            .position(|o| o == c)
            .unwrap_or_else(|| panic!("{c:?} not in {out:?}"))
    };
    let truncate = at(&Command::TruncateLog { op: 4, from: 2 });
    let save = at(&Command::SaveMembership {
        op: 5,
        configs: vec![KnownConfig::bootstrap(Membership::of_voters(&[1, 2, 3]))],
    });
    assert!(truncate < save, "{out:?}");
    assert_eq!(f.membership(), &Membership::of_voters(&[1, 2, 3]));
}

#[test]
fn a_removed_leader_steps_down_once_its_removal_commits_and_hands_over() {
    let mut e = ready_leader();
    e.step(client_append(5, &["a"]));
    e.step(change(6, MembershipChange::Remove(1)));
    e.take_commands();
    // Until the change commits, the leader replicates but does not count itself:
    // member 2 alone is not a majority of [2, 3].
    e.step(Event::Durable { op: 4 });
    e.step(msg(2, 1, 2, success(4)));
    let out = e.take_commands();
    assert!(
        !out.iter()
            .any(|c| matches!(c, Command::Commit { index: 4 }))
    );
    assert_eq!(e.role(), Role::Leader);
    e.step(msg(3, 1, 2, success(4)));
    let out = e.take_commands();
    assert!(out.contains(&Command::Commit { index: 4 }), "{out:?}");
    assert!(
        out.contains(&send(1, 2, 2, MessageBody::TimeoutNow, None)),
        "{out:?}"
    );
    assert_eq!((e.role(), e.leader()), (Role::Follower, None));
    // It never campaigns again.
    tick_n(&mut e, 200);
    assert_eq!(e.role(), Role::Follower);
}

#[test]
fn a_leader_deposed_before_its_removal_commits_gives_up_its_appends() {
    let mut e = ready_leader();
    e.step(change(5, MembershipChange::Remove(1)));
    e.step(client_append(6, &["a"]));
    e.take_commands();
    // A newer leader takes over before the removal commits: if it commits the
    // removal, this member will never hear of indexes 3 and 4 again.
    e.step(msg(
        2,
        1,
        3,
        MessageBody::Heartbeat {
            leader_commit: 2,
            seq: 1,
        },
    ));
    let out = e.take_commands();
    for request_id in [5, 6] {
        let unknown = Command::AppendResult {
            request_id,
            result: Err(AppendError::Unknown),
        };
        assert!(out.contains(&unknown), "{request_id}: {out:?}");
    }
    assert_eq!((e.role(), e.leader()), (Role::Follower, Some(2)));
}

#[test]
fn a_leader_deposed_before_its_removal_commits_may_win_again_and_finish_it() {
    // Leader 1 appends its removal (index 3) and loses its leadership before the
    // removal commits: its log may be the only complete one, so it campaigns,
    // asking (and counting) only the voters that remain.
    let mut e = ready_leader();
    e.step(change(5, MembershipChange::Remove(1)));
    e.step(Event::Durable { op: 4 });
    e.step(msg(2, 1, 3, append_entries(2, 2, &[], 2)));
    e.take_commands();
    assert_eq!((e.role(), e.leader()), (Role::Follower, Some(2)));
    tick_until_role(&mut e, Role::PreCandidate);
    let asked: Vec<NodeId> = e
        .take_commands()
        .iter()
        .filter_map(|c| match c {
            Command::Send { msg, .. } if msg.body == pre_vote(3, 2) => Some(msg.to),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![2, 3]);
    // Its own yes is no vote in [2, 3]: it needs both of theirs.
    e.step(msg(2, 1, 4, MessageBody::PreVoteResponse { granted: true }));
    assert_eq!(e.role(), Role::PreCandidate);
    e.step(msg(3, 1, 4, MessageBody::PreVoteResponse { granted: true }));
    assert_eq!(e.role(), Role::Candidate);
    e.step(msg(
        2,
        1,
        4,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    e.step(msg(
        3,
        1,
        4,
        MessageBody::RequestVoteResponse { granted: true },
    ));
    assert_eq!(e.role(), Role::Leader);
    // Its no-op (index 4) commits the removal with it, and it steps down for good.
    e.take_commands();
    e.step(msg(2, 1, 4, success(4)));
    e.step(msg(3, 1, 4, success(4)));
    assert!(e.take_commands().contains(&Command::Commit { index: 4 }));
    assert_eq!(e.role(), Role::Follower);
    tick_n(&mut e, 200);
    assert_eq!(e.role(), Role::Follower);
}

#[test]
fn learners_never_campaign_and_their_votes_do_not_count() {
    let mut f = follower(4, &[1, 2, 3], 2, &[1]);
    f.step(msg(
        1,
        4,
        2,
        entries_msg(1, 1, vec![config_entry(2, 2, &with_learner_4())], 2),
    ));
    f.take_commands();
    tick_n(&mut f, 200);
    assert_eq!(f.role(), Role::Follower);
    assert!(!f.take_commands().iter().any(|c| matches!(
        c,
        Command::Send { msg, .. } if matches!(msg.body, MessageBody::PreVote { .. })
    )));
    // A candidate of [1, 2, 3] plus learner 4: the learner's yes is not a vote.
    let mut c = follower(1, &[1, 2, 3], 2, &[1]);
    c.step(msg(
        2,
        1,
        2,
        entries_msg(1, 1, vec![config_entry(2, 2, &with_learner_4())], 2),
    ));
    c.step(Event::Durable { op: 2 });
    tick_until_role(&mut c, Role::PreCandidate);
    let out = c.take_commands();
    let asked: Vec<NodeId> = out
        .iter()
        .filter_map(|o| match o {
            Command::Send { msg, .. } if matches!(msg.body, MessageBody::PreVote { .. }) => {
                Some(msg.to)
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![2, 3], "a learner is not asked");
    c.step(msg(4, 1, 3, MessageBody::PreVoteResponse { granted: true }));
    assert_eq!(
        c.role(),
        Role::PreCandidate,
        "the learner's yes does not count"
    );
}

#[test]
fn a_joining_member_learns_the_membership_from_the_leader() {
    let recovered = Recovered::empty();
    let mut j = Engine::new(4, &Membership::default(), Config::default(), 1, recovered)
        .expect("a joining member starts with no membership");
    tick_n(&mut j, 200);
    assert_eq!(j.role(), Role::Follower, "it is nobody's voter");
    j.take_commands();
    let next = with_learner_4();
    let entries = vec![record(1, 1), config_entry(2, 2, &next)];
    j.step(msg(1, 4, 2, entries_msg(0, 0, entries, 2)));
    assert_eq!(j.membership(), &next);
    assert_eq!(j.leader(), Some(1));
}

#[test]
fn a_restart_keeps_saved_configurations_whose_entries_the_log_still_holds() {
    let old = Membership::of_voters(&[1, 2, 3]);
    let next = with_learner_4();
    let saved = vec![
        known(2, 1, true, old.clone()),
        known(3, 2, false, next.clone()),
    ];
    let hard = HardState {
        term: 3,
        voted_for: None,
    };
    // The entry at 3 is still there, of term 2: the configuration is in force.
    let entries = vec![record(1, 1), record(2, 1), config_entry(3, 2, &next)];
    let mut recovered = Recovered::from_entries(hard, 1, 0, entries);
    recovered.configs = saved.clone();
    let e = Engine::new(2, &old, Config::default(), 1, recovered).unwrap();
    assert_eq!(e.membership(), &next);
    // Index 3 now holds an entry of term 3 (truncated and replaced before the
    // crash, the save after it lost): the saved configuration is not in force.
    let entries = vec![record(1, 1), record(2, 1), record(3, 3)];
    let mut recovered = Recovered::from_entries(hard, 1, 0, entries);
    recovered.configs = saved.clone();
    let e = Engine::new(2, &old, Config::default(), 1, recovered).unwrap();
    assert_eq!(e.membership(), &old);
    // A committed one stays in force even when retention removed its entry.
    let mut recovered = Recovered::from_entries(hard, 5, 3, vec![record(5, 3)]);
    recovered.configs = vec![known(3, 2, true, next.clone())];
    let e = Engine::new(2, &old, Config::default(), 1, recovered).unwrap();
    assert_eq!(e.membership(), &next);
}

#[test]
fn a_log_reset_takes_the_leaders_committed_configuration_and_saves_it_first() {
    let mut f = follower(3, &[1, 2, 3], 2, &[]);
    let next = with_learner_4();
    let reset = MessageBody::LogStart {
        start_index: 10,
        prev_term: 2,
        leader_commit: 12,
        config: known(5, 2, true, next.clone()),
    };
    f.step(msg(1, 3, 2, reset));
    let out = f.take_commands();
    assert_eq!(
        &out[..3],
        &[
            Command::SaveMembership {
                op: 1,
                configs: vec![known(5, 2, true, next.clone())],
            },
            Command::ResetLog {
                op: 2,
                start: 10,
                prev_term: 2
            },
            Command::MembershipChanged {
                membership: next.clone()
            },
        ]
    );
    assert_eq!(f.membership(), &next);
}

/// A crash between the reset's two saves leaves either log on disk; the first save
/// covers both, keeping the old log's uncommitted configuration beside the leader's.
#[test]
fn a_log_reset_drops_an_uncommitted_configuration_only_after_the_reset() {
    let mut f = follower(3, &[1, 2, 3], 2, &[1]);
    let pending = with_learner_4();
    f.step(msg(
        1,
        3,
        2,
        entries_msg(1, 1, vec![config_entry(2, 2, &pending)], 1),
    ));
    f.take_commands();
    let leaders = Membership::of_voters(&[1, 2, 3])
        .changed(&MembershipChange::AddLearner(learner(5)))
        .expect("5 is new");
    let reset = MessageBody::LogStart {
        start_index: 10,
        prev_term: 2,
        leader_commit: 12,
        config: known(1, 1, true, leaders.clone()),
    };
    f.step(msg(1, 3, 2, reset));
    let out = f.take_commands();
    let covering = vec![
        known(1, 1, true, leaders.clone()),
        known(2, 2, false, pending),
    ];
    assert_eq!(
        &out[..4],
        &[
            Command::SaveMembership {
                op: 3,
                configs: covering,
            },
            Command::ResetLog {
                op: 4,
                start: 10,
                prev_term: 2
            },
            Command::SaveMembership {
                op: 5,
                configs: vec![known(1, 1, true, leaders.clone())],
            },
            Command::MembershipChanged {
                membership: leaders.clone()
            },
        ]
    );
    assert_eq!(f.membership(), &leaders);
}

#[test]
fn malformed_configurations_from_a_leader_are_refused() {
    let mut f = follower(2, &[1, 2, 3], 2, &[1]);
    let mut bad = config_entry(2, 2, &with_learner_4());
    bad.payload = Bytes::from_static(b"nonsense");
    f.step(msg(1, 2, 2, entries_msg(1, 1, vec![bad], 1)));
    assert_eq!(
        f.take_commands(),
        vec![Command::RefusePeer {
            from: 1,
            fault: PeerFault::MalformedConfig
        }]
    );
    let nobody = config_entry(2, 2, &Membership::default());
    f.step(msg(1, 2, 2, entries_msg(1, 1, vec![nobody], 1)));
    assert_eq!(
        f.take_commands(),
        vec![Command::RefusePeer {
            from: 1,
            fault: PeerFault::MalformedConfig
        }]
    );
    let beyond_commit = MessageBody::LogStart {
        start_index: 10,
        prev_term: 2,
        leader_commit: 4,
        config: known(5, 2, true, with_learner_4()),
    };
    f.step(msg(1, 2, 2, beyond_commit));
    assert_eq!(
        f.take_commands(),
        vec![Command::RefusePeer {
            from: 1,
            fault: PeerFault::MalformedConfig
        }]
    );
    assert_eq!(f.membership(), &Membership::of_voters(&[1, 2, 3]));
}
