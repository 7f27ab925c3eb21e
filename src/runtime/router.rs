//! The routers: the client service's request handler and the peer service's
//! message handler. Every shard has both, for the connections placed on it; they
//! route by partition (= shard) to that shard's inbox. A connection is placed on
//! the shard of its first request, so most requests go to the router's own shard;
//! requests for other partitions on the same connection cross cores, and clients
//! never need to know about cores.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::inbox::{
    LaneError, LaneSender, Reply, ShardInput, message_payload_bytes, reply_channel, shutting_down,
};
use super::local_inbox::{LocalAnswer, LocalAppend, LocalInbox, Refused, append_size};
use super::oneshot;
use crate::engine::{Member, MembershipChange, Message, NodeId};
use crate::metrics::RouterMetrics;
use crate::metrics::handles::Op;
use crate::transport::answer::Answer;
use crate::transport::peer::PeerHandler;
use crate::transport::server::{ANSWER_TIMEOUT_MS, RequestHandler};
use crate::transport::{
    ALL_PARTITIONS, ChangeOp, ClientRequest, ClientResponse, Hello, MembersOk, MembershipChangeOk,
    Metadata, NodeInfo, PartitionOutcome, ServerError,
};

/// How long a membership request waits for every partition's answer: a change
/// commits within a few heartbeats when a quorum answers, and the answer must
/// reach the client before its own timeout (5 s by default) so that it hears
/// which partitions are still open rather than nothing.
pub const MEMBERSHIP_ANSWER_TIMEOUT_MS: u64 = 4_000;

pub struct ClientRouter {
    pub cluster_id: u64,
    pub nodes: Vec<NodeInfo>,
    pub shards: Vec<LaneSender<ShardInput>>,
    /// The shard on this router's executor and its local inbox: appends to its
    /// partition go there, answered without a task of their own.
    pub local: Option<(u32, Rc<LocalInbox>)>,
    pub metrics: Rc<RouterMetrics>,
}

impl ClientRouter {
    fn shard(&self, partition: u32) -> Result<&LaneSender<ShardInput>, ServerError> {
        self.shards
            .get(partition as usize)
            .ok_or_else(|| ServerError::InvalidRequest {
                reason: format!(
                    "no partition {partition}: this cluster has {}",
                    partitions_in_words(self.shards.len())
                ),
            })
    }

    /// Queues `input` in the client lane of `partition`'s shard; a full lane
    /// (in requests or in bytes) is Overloaded.
    fn submit(&self, partition: u32, input: ShardInput) -> Result<(), ServerError> {
        let bytes = input.payload_bytes();
        match self.shard(partition)?.try_send(input, bytes) {
            Ok(()) => Ok(()),
            Err(LaneError::Full(_)) => {
                self.metrics.inbox_refused(partition);
                Err(ServerError::Overloaded)
            }
            Err(LaneError::Disconnected(_)) => Err(shutting_down()),
        }
    }

    /// Hands `input` to a shard and waits for its answer on `answer`. Dropping this
    /// future (its connection closed) drops `answer`, which tells the shard that no
    /// one waits for it any more (`oneshot::Sender::is_closed`).
    async fn ask<T>(
        &self,
        partition: u32,
        input: ShardInput,
        answer: oneshot::Receiver<Result<T, ServerError>>,
        extra_wait_ms: u64,
    ) -> Result<T, ServerError> {
        self.submit(partition, input)?;
        let timeout = Duration::from_millis(ANSWER_TIMEOUT_MS + extra_wait_ms);
        // A shard that drops the reply has stopped mid-request: an append may have
        // been applied, so this is Timeout (outcome open), never a refusal.
        let answer = async { answer.await.unwrap_or(Err(ServerError::Timeout)) };
        let late = async {
            glommio::timer::sleep(timeout).await;
            Err(ServerError::Timeout)
        };
        future::or(answer, late).await
    }

    /// [`Self::ask`] for the input `input` builds around its reply, counted as one
    /// `op` request that arrived at `arrived`.
    async fn ask_for<T>(
        &self,
        op: Op,
        partition: u32,
        extra_wait_ms: u64,
        arrived: Instant,
        input: impl FnOnce(Reply<T>) -> ShardInput,
    ) -> Result<T, ServerError> {
        let (reply, answer) = reply_channel();
        let result = self
            .ask(partition, input(reply), answer, extra_wait_ms)
            .await;
        self.metrics
            .request(op, result.as_ref().err(), arrived.elapsed());
        result
    }

    /// The partitions a membership request names: one, or all of this node's.
    fn partitions_named(&self, partition: u32) -> Result<Vec<u32>, ServerError> {
        if partition == ALL_PARTITIONS {
            return Ok((0..self.shards.len() as u32).collect());
        }
        self.shard(partition)?;
        Ok(vec![partition])
    }

    /// Asks the shard of each of `partitions` at once, `input` building each
    /// input around its reply, and waits for their answers until one deadline.
    /// Each partition gets its own outcome: a shard that does not answer in time,
    /// or stopped with the request, is Timeout (a change's outcome is then open).
    async fn ask_each<T>(
        &self,
        partitions: Vec<u32>,
        mut input: impl FnMut(Reply<T>) -> ShardInput,
    ) -> Vec<PartitionOutcome<T>> {
        let mut waiting = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let (reply, answer) = reply_channel();
            let submitted = self.submit(partition, input(reply));
            waiting.push((partition, submitted.map(|()| answer)));
        }
        let deadline = Instant::now() + Duration::from_millis(MEMBERSHIP_ANSWER_TIMEOUT_MS);
        let mut outcomes = Vec::with_capacity(waiting.len());
        for (partition, answer) in waiting {
            let result = match answer {
                Err(refusal) => Err(refusal),
                Ok(answer) => {
                    let answer = async { answer.await.unwrap_or(Err(ServerError::Timeout)) };
                    let late = async {
                        glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()))
                            .await;
                        Err(ServerError::Timeout)
                    };
                    future::or(answer, late).await
                }
            };
            outcomes.push(PartitionOutcome { partition, result });
        }
        outcomes
    }

    async fn members(&self, partition: u32) -> Result<MembersOk, ServerError> {
        let partitions = self.partitions_named(partition)?;
        let partitions = self
            .ask_each(partitions, |reply| ShardInput::Members { reply })
            .await;
        Ok(MembersOk { partitions })
    }

    async fn change_membership(
        &self,
        partition: u32,
        change: ChangeOp,
    ) -> Result<MembershipChangeOk, ServerError> {
        let partitions = self.partitions_named(partition)?;
        let change = engine_change(change);
        let input = |reply| ShardInput::ChangeMembership {
            change: change.clone(),
            reply,
        };
        let partitions = self.ask_each(partitions, input).await;
        Ok(MembershipChangeOk { partitions })
    }

    async fn metadata(&self) -> Result<Metadata, ServerError> {
        let mut partitions = Vec::with_capacity(self.shards.len());
        for partition in 0..self.shards.len() as u32 {
            let (reply, answer) = reply_channel();
            self.submit(partition, ShardInput::Info { reply })?;
            let wrapped = async { answer.await.map_err(|_| shutting_down()) };
            let late = async {
                glommio::timer::sleep(Duration::from_millis(ANSWER_TIMEOUT_MS)).await;
                Err(ServerError::Timeout)
            };
            partitions.push(future::or(wrapped, late).await?);
        }
        Ok(Metadata {
            cluster_id: self.cluster_id,
            nodes: self.nodes.clone(),
            partitions,
        })
    }
}

impl RequestHandler for ClientRouter {
    fn take(&self, request: ClientRequest, mut answer: Answer) -> Option<(ClientRequest, Answer)> {
        let Some((local, inbox)) = &self.local else {
            return Some((request, answer));
        };
        let local = *local;
        let append = match request {
            ClientRequest::Append(append) if append.partition == local => append,
            other => return Some((other, answer)),
        };
        // The request's latency and deadline count from when its bytes were read.
        answer.time_out_from(answer.received());
        let metrics = self.metrics.clone();
        let answer = LocalAnswer::new(answer, local, &append.records, metrics);
        let queued = inbox.push(LocalAppend {
            records: append.records,
            answer,
        });
        match queued {
            Ok(()) => {}
            Err(Refused::Full(refused)) => {
                self.metrics.inbox_refused(local);
                refused.answer.send(Err(ServerError::Overloaded));
            }
            Err(Refused::Closed(refused)) => refused.answer.send(Err(inbox.refusal())),
        }
        None
    }

    async fn handle(&self, request: ClientRequest) -> Result<ClientResponse, ServerError> {
        let arrived = Instant::now();
        match request {
            ClientRequest::Append(append) => {
                let (partition, size) = (append.partition, append_size(&append.records));
                let (reply, answer) = reply_channel();
                let input = ShardInput::Append {
                    records: append.records,
                    reply,
                };
                let result = self.ask(partition, input, answer, 0).await;
                let error = result.as_ref().err();
                self.metrics
                    .append_answered(partition, size, error, arrived.elapsed());
                result.map(ClientResponse::Append)
            }
            ClientRequest::Read(read) => {
                let (partition, wait) = (read.partition, read.wait_timeout_ms as u64);
                let input = |reply| ShardInput::Read {
                    request: read,
                    reply,
                };
                let result = self.ask_for(Op::Read, partition, wait, arrived, input);
                result.await.map(ClientResponse::Read)
            }
            ClientRequest::Trim(trim) => {
                let before = trim.before;
                let input = |reply| ShardInput::Trim { before, reply };
                let result = self.ask_for(Op::Trim, trim.partition, 0, arrived, input);
                result.await.map(ClientResponse::Trim)
            }
            ClientRequest::Transfer(transfer) => {
                let to = transfer.to;
                let input = |reply| ShardInput::Transfer { to, reply };
                let result = self.ask_for(Op::Transfer, transfer.partition, 0, arrived, input);
                result.await.map(ClientResponse::Transfer)
            }
            ClientRequest::Members(members) => {
                let result = self.members(members.partition).await;
                let error = result
                    .as_ref()
                    .map_or_else(Some, |ok| first_error(&ok.partitions));
                self.metrics.request(Op::Members, error, arrived.elapsed());
                result.map(ClientResponse::Members)
            }
            ClientRequest::ChangeMembership(request) => {
                let result = self
                    .change_membership(request.partition, request.change)
                    .await;
                let error = result
                    .as_ref()
                    .map_or_else(Some, |ok| first_error(&ok.partitions));
                self.metrics
                    .request(Op::Membership, error, arrived.elapsed());
                result.map(ClientResponse::ChangeMembership)
            }
            ClientRequest::Metadata => {
                let result = self.metadata().await;
                self.metrics
                    .request(Op::Metadata, result.as_ref().err(), arrived.elapsed());
                result.map(ClientResponse::Metadata)
            }
        }
    }
}

/// The change as the engine takes it: an added member starts as a learner.
fn engine_change(change: ChangeOp) -> MembershipChange {
    match change {
        ChangeOp::AddLearner {
            node_id,
            peer_address,
            client_address,
        } => MembershipChange::AddLearner(Member {
            id: node_id,
            voter: false,
            peer_address,
            client_address,
        }),
        ChangeOp::Promote { node_id } => MembershipChange::Promote(node_id),
        ChangeOp::Remove { node_id } => MembershipChange::Remove(node_id),
    }
}

/// The error a per-partition answer is counted under: its first partition's.
fn first_error<T>(outcomes: &[PartitionOutcome<T>]) -> Option<&ServerError> {
    outcomes.iter().find_map(|o| o.result.as_ref().err())
}

pub struct PeerRouter {
    /// The shard whose executor this router serves links on: it takes only links
    /// to that shard.
    pub local: u32,
    /// Each shard's peer lane, apart from its client lane.
    pub shards: Vec<LaneSender<Message>>,
    /// This node's id: a link claiming it (or id 0) is refused. Any other node id
    /// of the cluster is taken, members or not: a node being added links in before
    /// every shard here knows it, and the engine decides what its messages are worth
    /// (who authenticates a peer at all is issue 18's TLS, not this check).
    pub node_id: NodeId,
    pub metrics: Rc<RouterMetrics>,
}

impl PeerHandler for PeerRouter {
    fn accept(&self, hello: &Hello) -> Result<(), String> {
        if hello.node_id == 0 || hello.node_id == self.node_id {
            return Err(format!(
                "a peer cannot be node {}: that is {}",
                hello.node_id,
                if hello.node_id == 0 {
                    "not a node id"
                } else {
                    "this node's own id"
                }
            ));
        }
        if hello.shard_id as usize >= self.shards.len() {
            return Err(format!(
                "no shard {} here: this node runs {} shards (all nodes of a cluster need the same shard count)",
                hello.shard_id,
                self.shards.len()
            ));
        }
        // A link is served only by its own shard, so that a reconnect replaces the
        // link it supersedes and a refusal closes it; one that reached another
        // shard (its hello came too late to place, or its shard was too busy to
        // take it) reconnects.
        if hello.shard_id != self.local {
            return Err(format!(
                "this link to shard {} reached shard {} (its hello came late or the shard was busy); reconnect",
                hello.shard_id, self.local
            ));
        }
        Ok(())
    }

    fn deliver(&self, shard_id: u32, message: Message) {
        // A full peer lane drops the message: Raft retransmits what matters. Client
        // requests have a lane of their own, so they cannot be what filled it.
        let Some(shard) = self.shards.get(shard_id as usize) else {
            return;
        };
        let bytes = message_payload_bytes(&message);
        if let Err(LaneError::Full(_)) = shard.try_send(message, bytes) {
            self.metrics.peer_dropped(shard_id);
        }
    }

    fn received_bytes(&self, shard_id: u32, from: NodeId, bytes: u64) {
        self.metrics.peer_received(shard_id, from, bytes);
    }
}

/// The partitions of a cluster of `count` partitions, numbered from 0, for people:
/// "partition 0", "partitions 0 and 1", "partitions 0 to 7".
pub fn partitions_in_words(count: usize) -> String {
    match count {
        0 => "no partitions".to_string(),
        1 => "partition 0".to_string(),
        2 => "partitions 0 and 1".to_string(),
        n => format!("partitions 0 to {}", n - 1),
    }
}

/// Node ids for people: "node 1", "nodes 1 and 2", "nodes 1, 2 and 3".
pub fn nodes_in_words(ids: &[NodeId]) -> String {
    match ids {
        [] => "no nodes".to_string(),
        [id] => format!("node {id}"),
        [rest @ .., last] => {
            let rest: Vec<String> = rest.iter().map(|id| id.to_string()).collect();
            format!("nodes {} and {last}", rest.join(", "))
        }
    }
}

/// The node list clients see in metadata.
pub fn node_infos(members: &[(NodeId, String)]) -> Vec<NodeInfo> {
    members
        .iter()
        .map(|(node_id, client_addr)| NodeInfo {
            node_id: *node_id,
            client_addr: client_addr.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::MessageBody;
    use crate::metrics::NodeMetrics;
    use crate::runtime::inbox::{
        INBOX_BYTES_MAX, INBOX_CAPACITY, LaneReceiver, PEER_INBOX_BYTES_MAX, PEER_INBOX_CAPACITY,
        lane,
    };

    fn heartbeat(seq: u64) -> Message {
        Message {
            from: 2,
            to: 1,
            term: 3,
            body: MessageBody::Heartbeat {
                leader_commit: 0,
                seq,
            },
        }
    }

    /// A node with one shard: its routers and the shard's two inboxes.
    fn routers() -> (
        ClientRouter,
        PeerRouter,
        LaneReceiver<ShardInput>,
        LaneReceiver<Message>,
    ) {
        let node = NodeMetrics::new(1);
        let metrics = Rc::new(RouterMetrics::new(&node, 1, &[2]));
        let (clients, client_inbox) = lane(INBOX_CAPACITY, INBOX_BYTES_MAX);
        let (peers, peer_inbox) = lane(PEER_INBOX_CAPACITY, PEER_INBOX_BYTES_MAX);
        let client_router = ClientRouter {
            cluster_id: 7,
            nodes: Vec::new(),
            shards: vec![clients],
            local: None,
            metrics: metrics.clone(),
        };
        let peer_router = PeerRouter {
            local: 0,
            shards: vec![peers],
            node_id: 1,
            metrics,
        };
        (client_router, peer_router, client_inbox, peer_inbox)
    }

    #[test]
    fn partitions_and_nodes_are_listed_in_words() {
        assert_eq!(partitions_in_words(1), "partition 0");
        assert_eq!(partitions_in_words(2), "partitions 0 and 1");
        assert_eq!(partitions_in_words(3), "partitions 0 to 2");
        assert_eq!(partitions_in_words(8), "partitions 0 to 7");
        assert_eq!(nodes_in_words(&[]), "no nodes");
        assert_eq!(nodes_in_words(&[3]), "node 3");
        assert_eq!(nodes_in_words(&[2, 3]), "nodes 2 and 3");
        assert_eq!(nodes_in_words(&[1, 2, 4]), "nodes 1, 2 and 4");
    }

    #[test]
    fn an_unknown_partition_is_refused_naming_the_partitions_in_words() {
        let (client_router, peer_router, _client_inbox, _peer_inbox) = routers();
        let refusal = client_router.shard(1).err().expect("one partition only");
        let ServerError::InvalidRequest { reason } = refusal else {
            panic!("expected InvalidRequest, got {refusal:?}");
        };
        assert_eq!(reason, "no partition 1: this cluster has partition 0");
        let hello = Hello {
            cluster_id: 7,
            node_id: 9,
            peer_node_id: 1,
            shard_id: 0,
            lane: crate::transport::Lane::Control,
            protocol_version: crate::transport::PROTOCOL_VERSION,
            shard_count: 1,
        };
        // Any other node id may be a member the membership added since.
        assert_eq!(peer_router.accept(&hello), Ok(()));
        let myself = Hello {
            node_id: 1,
            ..hello
        };
        let refused = peer_router.accept(&myself).unwrap_err();
        assert!(refused.ends_with("this node's own id"), "{refused}");
    }

    #[test]
    fn a_link_is_taken_only_by_the_shard_it_names() {
        let node = NodeMetrics::new(1);
        let metrics = Rc::new(RouterMetrics::new(&node, 2, &[2]));
        let lanes = || lane(PEER_INBOX_CAPACITY, PEER_INBOX_BYTES_MAX);
        let ((lane_0, _inbox_0), (lane_1, _inbox_1)) = (lanes(), lanes());
        let router = PeerRouter {
            local: 1,
            shards: vec![lane_0, lane_1],
            node_id: 1,
            metrics,
        };
        let hello = |shard_id| Hello {
            cluster_id: 7,
            node_id: 2,
            peer_node_id: 1,
            shard_id,
            lane: crate::transport::Lane::Bulk,
            protocol_version: crate::transport::PROTOCOL_VERSION,
            shard_count: 2,
        };
        assert_eq!(router.accept(&hello(1)), Ok(()));
        let refused = router.accept(&hello(0)).unwrap_err();
        assert!(refused.contains("reached shard 1"), "{refused}");
        let refused = router.accept(&hello(5)).unwrap_err();
        assert!(refused.starts_with("no shard 5 here"), "{refused}");
    }

    #[test]
    fn peer_messages_arrive_while_clients_fill_the_inbox() {
        let (client_router, peer_router, client_inbox, peer_inbox) = routers();
        let mut answers = Vec::new();
        let refused = loop {
            let (reply, answer) = reply_channel();
            answers.push(answer);
            if let Err(refusal) = client_router.submit(0, ShardInput::Info { reply }) {
                break refusal;
            }
        };
        assert_eq!(refused, ServerError::Overloaded);
        assert_eq!(client_inbox.len(), INBOX_CAPACITY);
        peer_router.deliver(0, heartbeat(1));
        peer_router.deliver(0, heartbeat(2));
        assert_eq!(peer_inbox.try_recv(), Some(heartbeat(1)));
        assert_eq!(peer_inbox.try_recv(), Some(heartbeat(2)));
    }

    #[test]
    fn the_client_inbox_is_bounded_in_append_bytes() {
        let (client_router, _peer_router, client_inbox, _peer_inbox) = routers();
        let record = bytes::Bytes::from(vec![0u8; 1 << 20]);
        let mut answers = Vec::new();
        let refused = loop {
            let (reply, answer) = reply_channel();
            answers.push(answer);
            let input = ShardInput::Append {
                records: vec![record.clone()],
                reply,
            };
            if let Err(refusal) = client_router.submit(0, input) {
                break refusal;
            }
        };
        assert_eq!(refused, ServerError::Overloaded);
        assert_eq!(client_inbox.len(), INBOX_BYTES_MAX >> 20);
        assert_eq!(client_inbox.queued_bytes(), INBOX_BYTES_MAX);
    }
}
