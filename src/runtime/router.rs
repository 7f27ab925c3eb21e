//! The node's front doors: the client listener's request handler and the peer
//! acceptor's message handler. Both run on shard 0's executor and route by
//! partition (= shard) to that shard's inbox, so clients never see cores.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::inbox::{ShardInput, reply_channel};
use super::oneshot;
use crate::engine::{Message, NodeId};
use crate::metrics::RouterMetrics;
use crate::metrics::handles::Op;
use crate::transport::peer::PeerHandler;
use crate::transport::server::RequestHandler;
use crate::transport::{ClientRequest, ClientResponse, Hello, Metadata, NodeInfo, ServerError};

/// How long the node waits for a shard's answer beyond what the request itself asks
/// to wait; past it the client gets Timeout (the outcome of an append is then open).
const ANSWER_TIMEOUT_MS: u64 = 10_000;

pub struct ClientRouter {
    pub cluster_id: u64,
    pub nodes: Vec<NodeInfo>,
    pub shards: Vec<flume::Sender<ShardInput>>,
    pub metrics: Rc<RouterMetrics>,
}

impl ClientRouter {
    fn shard(&self, partition: u32) -> Result<&flume::Sender<ShardInput>, ServerError> {
        self.shards
            .get(partition as usize)
            .ok_or_else(|| ServerError::InvalidRequest {
                reason: format!(
                    "no partition {partition}: this cluster has partitions 0..{}",
                    self.shards.len()
                ),
            })
    }

    /// Hands `input` to a shard and waits for its answer on `answer`.
    async fn ask<T>(
        &self,
        partition: u32,
        input: ShardInput,
        answer: oneshot::Receiver<Result<T, ServerError>>,
        extra_wait_ms: u64,
    ) -> Result<T, ServerError> {
        match self.shard(partition)?.try_send(input) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => return Err(ServerError::Overloaded),
            Err(flume::TrySendError::Disconnected(_)) => return Err(shutting_down()),
        }
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

    async fn metadata(&self) -> Result<Metadata, ServerError> {
        let mut partitions = Vec::with_capacity(self.shards.len());
        for partition in 0..self.shards.len() as u32 {
            let (reply, answer) = reply_channel();
            let input = ShardInput::Info { reply };
            match self.shard(partition)?.try_send(input) {
                Ok(()) => {}
                Err(flume::TrySendError::Full(_)) => return Err(ServerError::Overloaded),
                Err(flume::TrySendError::Disconnected(_)) => return Err(shutting_down()),
            }
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

fn shutting_down() -> ServerError {
    ServerError::Unavailable {
        reason: "node shutting down".into(),
    }
}

impl RequestHandler for ClientRouter {
    async fn handle(&self, request: ClientRequest) -> Result<ClientResponse, ServerError> {
        let arrived = Instant::now();
        match request {
            ClientRequest::Append(append) => {
                let (partition, records) = (append.partition, append.records.len() as u64);
                let bytes: u64 = append.records.iter().map(|r| r.len() as u64).sum();
                let (reply, answer) = reply_channel();
                let input = ShardInput::Append {
                    records: append.records,
                    reply,
                };
                let result = self.ask(partition, input, answer, 0).await;
                let elapsed = arrived.elapsed();
                self.metrics
                    .request(Op::Append, result.as_ref().err(), elapsed);
                if result.is_ok() {
                    self.metrics.appended(partition, records, bytes, elapsed);
                }
                result.map(ClientResponse::Append)
            }
            ClientRequest::Read(read) => {
                let (reply, answer) = reply_channel();
                let wait = read.wait_timeout_ms as u64;
                let input = ShardInput::Read {
                    request: read,
                    reply,
                };
                let result = self.ask(read.partition, input, answer, wait).await;
                self.metrics
                    .request(Op::Read, result.as_ref().err(), arrived.elapsed());
                result.map(ClientResponse::Read)
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

pub struct PeerRouter {
    pub shards: Vec<flume::Sender<ShardInput>>,
    /// The other members: links from any other node id are refused.
    pub peers: Vec<NodeId>,
    pub metrics: Rc<RouterMetrics>,
}

impl PeerHandler for PeerRouter {
    fn accept(&self, hello: &Hello) -> Result<(), String> {
        if !self.peers.contains(&hello.node_id) {
            return Err(format!(
                "node {} is not a member of this cluster (members here: {:?})",
                hello.node_id, self.peers
            ));
        }
        if (hello.shard_id as usize) < self.shards.len() {
            Ok(())
        } else {
            Err(format!(
                "no shard {} here: this node runs {} shards (all nodes of a cluster need the same shard count)",
                hello.shard_id,
                self.shards.len()
            ))
        }
    }

    fn deliver(&self, shard_id: u32, message: Message) {
        // A full inbox drops the message: Raft retransmits what matters.
        if let Some(shard) = self.shards.get(shard_id as usize) {
            let _ = shard.try_send(ShardInput::Peer(message));
        }
    }

    fn received_bytes(&self, shard_id: u32, from: NodeId, bytes: u64) {
        self.metrics.peer_received(shard_id, from, bytes);
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
