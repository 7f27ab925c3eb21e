//! Client requests about the group's membership: the listing, served from the
//! leader's view of its followers, and single-member changes, which the engine
//! appends as configuration entries and answers once they commit.

use super::Shard;
use crate::engine::{Event, Index, MembershipChange, Role};
use crate::runtime::inbox::Reply;
use crate::transport::{MemberInfo, PartitionMembers, ServerError};

impl Shard {
    /// The members in force, with what this leader knows of each; NotLeader
    /// elsewhere, since only the leader knows how far each member got.
    pub(super) fn members(&self) -> Result<PartitionMembers, ServerError> {
        if self.role != Role::Leader {
            return Err(self.leader_error(self.leader));
        }
        let me = self.engine.id();
        let last_index = self.engine.log().last_index();
        let progress = self.engine.replication_progress();
        let members = self
            .engine
            .membership()
            .members()
            .iter()
            .map(|m| {
                // A member without a progress slot has not been heard of by this
                // leader yet: nothing is known to be on it.
                let (match_index, active) = if m.id == me {
                    (last_index, true)
                } else {
                    progress
                        .iter()
                        .find(|(id, _)| *id == m.id)
                        .map_or((0, false), |(_, p)| (p.match_index, p.recent_active))
                };
                MemberInfo {
                    node_id: m.id,
                    voter: m.voter,
                    leader: m.id == me,
                    active,
                    match_index,
                    peer_address: m.peer_address.clone(),
                    client_address: m.client_address.clone(),
                }
            })
            .collect();
        Ok(PartitionMembers {
            leader: me,
            term: self.term,
            last_index,
            commit_index: self.commit,
            members,
        })
    }

    /// Hands `change` to the engine, which answers once its entry commits (or
    /// refuses it); a member that does not lead names the leader at once.
    pub(super) fn request_change(
        &mut self,
        change: MembershipChange,
        reply: Reply<Index>,
        events: &mut Vec<Event>,
    ) {
        if self.role != Role::Leader {
            reply.send(Err(self.leader_error(self.leader)));
            return;
        }
        let request_id = self.next_request();
        self.changes.insert(request_id, reply);
        events.push(Event::ChangeMembership { request_id, change });
    }
}
