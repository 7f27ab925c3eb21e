//! Leadership transfers, client side: [`Client::transfer_leader`].
//!
//! A transfer to a named node is safe to repeat: once that node leads, asking
//! again answers at once (a leader asked to hand over to itself says it leads),
//! so it is routed and retried like a read.
//!
//! A transfer to any other node (`to: None`) is not: asked again after leadership
//! moved, the new leader would hand it on once more. So the client never repeats
//! `to: None` anywhere but at its *origin*, the node it asked when an attempt may
//! have been acted on without the client hearing the outcome (a lost connection
//! or a timeout after sending, an Unavailable or Timeout answer). From then on:
//! - the origin alone is asked `to: None` again: if it still leads, the first
//!   hand-over did not happen and handing over is still what was asked; if it
//!   does not, it names the leader;
//! - any other node named leader is asked to hand over to itself, which it
//!   answers at once without moving anything (or names the leader, if it does not
//!   lead): leadership has left the origin, which is what was asked;
//! - when the origin cannot be reached, another node's metadata names the leader,
//!   which is then asked as above.
//!
//! Nodes are told apart by their client addresses as the nodes advertise them, so
//! bootstrap addresses should be spelled the same way (a node reached under
//! another spelling is taken for another node: it is asked to keep its own
//! leadership, which can report a transfer that did not happen but never makes a
//! second one). Before any attempt may have been acted on, `to: None` follows
//! redirects like any request: a NotLeader answer promises nothing was done.

use super::retry::{self, Next, Outcome};
use super::{Budget, Client, ClientError, mismatch};
use crate::engine::NodeId;
use crate::transport::client_msg::{
    ClientRequest, ClientResponse, Metadata, ServerError, TransferOk, TransferRequest,
};

/// The next attempt of a transfer to any other node.
enum Step {
    /// Ask `addr` to hand its leadership to `to`.
    Ask { addr: String, to: Option<NodeId> },
    /// Ask `addr` who leads the partition: the origin could not be reached.
    Lookup { addr: String },
}

impl Client {
    /// Asks the leader of `partition` to hand its leadership to `to`, or, when `to`
    /// is None, to its most up-to-date follower; answers once another node leads
    /// (or `to` already did). NotLeader redirects are followed and Unavailable
    /// (the hand-over did not finish in time) is retried within the client's
    /// limits; a retry never moves leadership twice (see the module
    /// documentation). An unknown `to`, or a cluster of one, is an InvalidRequest
    /// error.
    pub async fn transfer_leader(
        &self,
        partition: u32,
        to: Option<NodeId>,
    ) -> Result<TransferOk, ClientError> {
        if to.is_none() {
            return self.transfer_away(partition).await;
        }
        let request = ClientRequest::Transfer(TransferRequest { partition, to });
        match self.execute(&request).await? {
            (_, ClientResponse::Transfer(ok)) => Ok(ok),
            (addr, other) => Err(mismatch(addr, &other)),
        }
    }

    /// `transfer_leader(partition, None)`: moves leadership away from the node
    /// that leads, once.
    async fn transfer_away(&self, partition: u32) -> Result<TransferOk, ClientError> {
        let mut budget = Budget::new(&self.config, Some(partition));
        let mut origin: Option<String> = None;
        let mut redirects = 0u32;
        let mut step = Step::Ask {
            addr: self.leader_or_bootstrap(Some(partition))?,
            to: None,
        };
        loop {
            let (addr, to) = match step {
                Step::Ask { addr, to } => (addr, to),
                Step::Lookup { addr } => {
                    step = match self.lookup_leader(&addr, partition).await {
                        Ok(Some((id, leader))) => aim(origin.as_deref(), Some(id), leader),
                        Ok(None) => {
                            let failure = no_leader(&addr);
                            budget.back_off(self, failure).await?;
                            self.back_to(origin.as_deref())?
                        }
                        Err(failure) => {
                            budget.back_off(self, failure).await?;
                            self.back_to(origin.as_deref())?
                        }
                    };
                    continue;
                }
            };
            let request = ClientRequest::Transfer(TransferRequest { partition, to });
            let result = self.attempt(&addr, &request).await;
            if to.is_none() && origin.is_none() && retry::may_have_acted(&result) {
                origin = Some(addr.clone());
            }
            let (failure, next) = match retry::classify(&addr, false, result) {
                Outcome::Done(ClientResponse::Transfer(ok)) => return Ok(ok),
                Outcome::Done(other) => return Err(mismatch(addr, &other)),
                Outcome::Fail(error) => return Err(error),
                Outcome::Redirect {
                    leader, leader_id, ..
                } if redirects < self.config.redirects_max => {
                    redirects += 1;
                    self.leaders.borrow_mut().insert(partition, leader.clone());
                    step = aim(origin.as_deref(), leader_id, leader);
                    continue;
                }
                Outcome::Redirect { failure, .. } => (failure, NEXT_NODE),
                Outcome::Retry { failure, next } => (failure, next),
            };
            if next == NEXT_NODE {
                self.forget_leader(Some(partition));
            }
            budget.back_off(self, failure).await?;
            step = match origin.as_deref() {
                // Nothing may have been done yet: retry as any request would.
                None => Step::Ask {
                    addr: match next {
                        Next::SameNode => addr,
                        Next::NextNode { .. } => self.leader_or_bootstrap(None)?,
                    },
                    to: None,
                },
                Some(o) if o == addr && next != Next::SameNode => Step::Lookup {
                    addr: self.leader_or_bootstrap(None)?,
                },
                Some(o) => Step::Ask {
                    addr: o.to_string(),
                    to: None,
                },
            };
        }
    }

    /// Back to the origin after a failed lookup; with no origin, to the next
    /// bootstrap node (a lookup only happens once there is an origin).
    fn back_to(&self, origin: Option<&str>) -> Result<Step, ClientError> {
        let addr = match origin {
            Some(o) => o.to_string(),
            None => self.leader_or_bootstrap(None)?,
        };
        Ok(Step::Ask { addr, to: None })
    }

    /// The leader of `partition` (id and client address) as the node at `addr`
    /// knows it, if it knows one.
    async fn lookup_leader(
        &self,
        addr: &str,
        partition: u32,
    ) -> Result<Option<(NodeId, String)>, ClientError> {
        let meta: Metadata = match self.call(addr, &ClientRequest::Metadata).await? {
            Ok(ClientResponse::Metadata(m)) => m,
            Ok(other) => return Err(mismatch(addr.to_string(), &other)),
            Err(source) => {
                let addr = addr.to_string();
                return Err(ClientError::Server { addr, source });
            }
        };
        let leader = meta
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .and_then(|p| p.leader);
        Ok(leader.and_then(|id| {
            let node = meta.nodes.iter().find(|n| n.node_id == id)?;
            Some((id, node.client_addr.clone()))
        }))
    }
}

const NEXT_NODE: Next = Next::NextNode {
    forget_leader: true,
};

/// The attempt that follows learning that `leader_id` at `leader` leads: with no
/// origin yet, the same request there; otherwise the origin is asked to hand over
/// again and any other leader to keep its leadership (see the module
/// documentation).
fn aim(origin: Option<&str>, leader_id: Option<NodeId>, leader: String) -> Step {
    match (origin, leader_id) {
        (Some(o), Some(id)) if o != leader => Step::Ask {
            addr: leader,
            to: Some(id),
        },
        // Without the leader's id it cannot be asked about itself: the origin
        // names it again, until a node names it whole.
        (Some(o), None) => Step::Ask {
            addr: o.to_string(),
            to: None,
        },
        _ => Step::Ask {
            addr: leader,
            to: None,
        },
    }
}

fn no_leader(addr: &str) -> ClientError {
    ClientError::Server {
        addr: addr.to_string(),
        source: ServerError::NotLeader {
            leader: None,
            leader_addr: None,
        },
    }
}
