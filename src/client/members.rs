//! Membership, client side: [`Client::members`] and [`Client::change_membership`].
//!
//! Both ask one node about every partition at once; the node answers each
//! partition it leads and names the leader of each other one. The client then asks
//! each of those partitions' leaders about that partition alone, following
//! further redirects and retrying what promises nothing was done (NotLeader,
//! Unavailable: a change still in progress, a leader not ready yet), as
//! [`Client::execute`] does for one request.
//!
//! A change is not safe to repeat blindly: asked again after it committed, a
//! leader refuses it (the node is already a member, or no longer one). So once a
//! change may have been acted on without the client hearing how (a lost
//! connection, a timeout, a server Timeout), that partition's outcome is
//! [`ClientError::ChangeAmbiguous`], never retried; `ringlog members` tells.

use super::conn::CallError;
use super::retry::{self, Next, Outcome};
use super::{Budget, Client, ClientError, mismatch};
use crate::engine::Index;
use crate::transport::{
    ALL_PARTITIONS, ChangeOp, ClientRequest, ClientResponse, MEMBER_ADDRESS_BYTES_MAX,
    MembersRequest, MembershipChangeRequest, PartitionMembers, PartitionOutcome, ServerError,
};

/// One partition's final outcome, as the client library reports it.
#[derive(Debug)]
pub struct PartitionResult<T> {
    pub partition: u32,
    pub result: Result<T, ClientError>,
}

/// What tells the two requests apart for the shared routing.
trait PerPartition: Sized {
    fn request(partition: u32, asked: &Self::Asked) -> ClientRequest;
    fn outcomes(response: ClientResponse) -> Result<Vec<PartitionOutcome<Self>>, ClientResponse>;
    /// Whether repeating the request after it may have been acted on is harmless.
    const REPEATABLE: bool;
    type Asked;
}

impl PerPartition for PartitionMembers {
    type Asked = ();
    const REPEATABLE: bool = true;
    fn request(partition: u32, _: &()) -> ClientRequest {
        ClientRequest::Members(MembersRequest { partition })
    }
    fn outcomes(response: ClientResponse) -> Result<Vec<PartitionOutcome<Self>>, ClientResponse> {
        match response {
            ClientResponse::Members(ok) => Ok(ok.partitions),
            other => Err(other),
        }
    }
}

impl PerPartition for Index {
    type Asked = ChangeOp;
    const REPEATABLE: bool = false;
    fn request(partition: u32, change: &ChangeOp) -> ClientRequest {
        ClientRequest::ChangeMembership(MembershipChangeRequest {
            partition,
            change: change.clone(),
        })
    }
    fn outcomes(response: ClientResponse) -> Result<Vec<PartitionOutcome<Self>>, ClientResponse> {
        match response {
            ClientResponse::ChangeMembership(ok) => Ok(ok.partitions),
            other => Err(other),
        }
    }
}

impl Client {
    /// The members of every partition, each listed by the partition's leader (with
    /// how far behind it each member is).
    pub async fn members(&self) -> Result<Vec<PartitionResult<PartitionMembers>>, ClientError> {
        self.per_partition::<PartitionMembers>(&()).await
    }

    /// Applies `change` to every partition's group: per partition, the index of
    /// the committed configuration entry, or why not. The whole call fails only
    /// when no node answers at all (or the change is malformed).
    pub async fn change_membership(
        &self,
        change: ChangeOp,
    ) -> Result<Vec<PartitionResult<Index>>, ClientError> {
        if let ChangeOp::AddLearner {
            peer_address,
            client_address,
            ..
        } = &change
            && (peer_address.len() > MEMBER_ADDRESS_BYTES_MAX
                || client_address.len() > MEMBER_ADDRESS_BYTES_MAX)
        {
            return Err(ClientError::InvalidArgument(format!(
                "member addresses are at most {MEMBER_ADDRESS_BYTES_MAX} bytes"
            )));
        }
        self.per_partition::<Index>(&change).await
    }

    /// Asks one node about every partition, then each partition it does not lead
    /// at that partition's leader.
    async fn per_partition<T: PerPartition>(
        &self,
        asked: &T::Asked,
    ) -> Result<Vec<PartitionResult<T>>, ClientError> {
        let request = T::request(ALL_PARTITIONS, asked);
        let (addr, response) = match self.execute(&request).await {
            Ok(answer) => answer,
            Err(ClientError::AppendAmbiguous { addr, reason }) => {
                return Err(ClientError::ChangeAmbiguous { addr, reason });
            }
            Err(e) => return Err(e),
        };
        let outcomes = T::outcomes(response).map_err(|other| mismatch(addr.clone(), &other))?;
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            let partition = outcome.partition;
            let result = match outcome.result {
                Ok(ok) => Ok(ok),
                Err(error) => {
                    self.retry_partition::<T>(partition, asked, &addr, error)
                        .await
                }
            };
            results.push(PartitionResult { partition, result });
        }
        Ok(results)
    }

    /// Asks about `partition` alone until it has an outcome, starting from the
    /// error `first` that the node at `addr` answered for it.
    async fn retry_partition<T: PerPartition>(
        &self,
        partition: u32,
        asked: &T::Asked,
        addr: &str,
        first: ServerError,
    ) -> Result<T, ClientError> {
        let request = T::request(partition, asked);
        let mut budget = Budget::new(&self.config, Some(partition));
        let mut redirects = 0u32;
        let mut addr = addr.to_string();
        let mut raw = Ok(Err(first));
        loop {
            let (failure, next) = match retry::classify(&addr, !T::REPEATABLE, raw) {
                Outcome::Done(response) => return Err(mismatch(addr, &response)),
                Outcome::Fail(ClientError::AppendAmbiguous { addr, reason }) => {
                    return Err(ClientError::ChangeAmbiguous { addr, reason });
                }
                Outcome::Fail(error) => return Err(error),
                Outcome::Redirect { leader, .. } if redirects < self.config.redirects_max => {
                    redirects += 1;
                    self.leaders.borrow_mut().insert(partition, leader.clone());
                    addr = leader;
                    raw = match self.attempt_one::<T>(&addr, &request, partition).await {
                        Ok(ok) => return Ok(ok),
                        Err(raw) => raw,
                    };
                    continue;
                }
                Outcome::Redirect { failure, .. } => (failure, FORGET_AND_MOVE),
                Outcome::Retry { failure, next } => (failure, next),
            };
            if next == FORGET_AND_MOVE {
                self.forget_leader(Some(partition));
            }
            budget.back_off(self, failure).await?;
            if next != Next::SameNode {
                addr = self.leader_or_bootstrap(Some(partition))?;
            }
            raw = match self.attempt_one::<T>(&addr, &request, partition).await {
                Ok(ok) => return Ok(ok),
                Err(raw) => raw,
            };
        }
    }

    /// One attempt about `partition` alone: its success, or the attempt's result
    /// for [`retry::classify`], a partition's error standing for the whole
    /// request's (it means the same).
    async fn attempt_one<T: PerPartition>(
        &self,
        addr: &str,
        request: &ClientRequest,
        partition: u32,
    ) -> Result<T, RawResult> {
        let response = match self.attempt(addr, request).await {
            Ok(Ok(response)) => response,
            other => return Err(other),
        };
        let outcomes = T::outcomes(response).map_err(|other| Ok(Ok(other)))?;
        match outcomes.into_iter().find(|o| o.partition == partition) {
            Some(outcome) => outcome.result.map_err(|error| Ok(Err(error))),
            None => Err(Ok(Err(ServerError::InvalidRequest {
                reason: format!("the answer has no outcome for partition {partition}"),
            }))),
        }
    }
}

/// One attempt's result, as [`retry::classify`] takes it.
type RawResult = Result<Result<ClientResponse, ServerError>, CallError>;

const FORGET_AND_MOVE: Next = Next::NextNode {
    forget_leader: true,
};
