//! Telling a group the rules leave leaderless from a liveness bug.
//!
//! A member whose log lost its tail to a corruption abstains from elections until
//! a leader has caught it up (docs/engine.md): until then its group has one
//! failure less to spare. Together with a membership change in flight, that can
//! leave no member able to win: for example a candidate counting a promoted learner
//! whose log ends in a later term (from a leader that then lost its own tail) while
//! another voter abstains. Nothing in the rules can end that wait, so the
//! simulation does not call it a liveness failure, but only when it can show that
//! no live member could collect a quorum of votes; the tests bound how often it
//! happens.

use crate::engine::Engine;

use super::Sim;

impl Sim {
    /// Whether some live member abstains and no live member could be elected:
    /// none that may campaign finds a quorum of its voters that would grant it
    /// their vote.
    pub(super) fn stuck_by_abstention(&self) -> bool {
        let live: Vec<&Engine> = self
            .nodes
            .iter()
            .filter_map(|n| n.engine.as_ref())
            .collect();
        live.iter().any(|e| e.is_abstaining()) && !live.iter().any(|c| electable(c, &live))
    }
}

/// Whether `candidate` could win with the votes of the `live` members.
fn electable(candidate: &Engine, live: &[&Engine]) -> bool {
    if candidate.is_abstaining() || !candidate.may_campaign() {
        return false;
    }
    let membership = candidate.membership();
    let (last_index, last_term) = (candidate.log().last_index(), candidate.log().last_term());
    let grants = |voter: &Engine| {
        voter.id() == candidate.id()
            || (!voter.is_abstaining() && voter.log_is_behind(last_index, last_term))
    };
    let votes = live
        .iter()
        .filter(|v| membership.is_voter(v.id()) && grants(v))
        .count();
    votes >= membership.quorum()
}
