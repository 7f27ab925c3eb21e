//! What one attempt's result means for the request: done, follow a redirect, give
//! up, or retry after a backoff (and where). The rules are the module's retry
//! rules (see the client module), chosen so that a retried append is never applied
//! twice.

use super::ClientError;
use super::conn::CallError;
use crate::engine::NodeId;
use crate::transport::client_msg::{ClientResponse, ServerError};

/// The next step after one attempt at `addr`.
pub(super) enum Outcome {
    Done(ClientResponse),
    /// The node named the partition's leader: try it at once (or, once redirects
    /// run out, retry as for `failure` at the next node, forgetting the leader).
    Redirect {
        leader: String,
        /// The leader's node id, when the node named it.
        leader_id: Option<NodeId>,
        failure: ClientError,
    },
    /// Final: retrying could apply an append twice, or cannot help.
    Fail(ClientError),
    /// Retry after a backoff, where `next` says.
    Retry {
        failure: ClientError,
        next: Next,
    },
}

/// Where a retry goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// The same node (it is alive, only busy or slow).
    SameNode,
    /// The next bootstrap node; `forget_leader` when the partition's known leader
    /// is known to be wrong.
    NextNode { forget_leader: bool },
}

/// Classifies the result of one attempt at `addr`; `is_append` requests are not
/// retried once they may have been applied.
pub(super) fn classify(
    addr: &str,
    is_append: bool,
    result: Result<Result<ClientResponse, ServerError>, CallError>,
) -> Outcome {
    match result {
        Ok(Ok(response)) => Outcome::Done(response),
        Ok(Err(e)) => server_error(addr, is_append, e),
        Err(e) => call_error(addr, is_append, e),
    }
}

fn server_error(addr: &str, is_append: bool, error: ServerError) -> Outcome {
    let failure = |source| ClientError::Server {
        addr: addr.to_string(),
        source,
    };
    match error {
        ServerError::NotLeader {
            leader: leader_id,
            leader_addr: Some(ref leader),
        } => Outcome::Redirect {
            leader: leader.clone(),
            leader_id,
            failure: failure(error),
        },
        e @ ServerError::NotLeader { .. } => Outcome::Retry {
            failure: failure(e),
            next: Next::NextNode {
                forget_leader: true,
            },
        },
        e @ (ServerError::Overloaded | ServerError::Unavailable { .. }) => Outcome::Retry {
            failure: failure(e),
            next: Next::SameNode,
        },
        ServerError::Timeout if is_append => Outcome::Fail(ClientError::AppendAmbiguous {
            addr: addr.to_string(),
            reason: "server timed out waiting for the commit".into(),
        }),
        e @ ServerError::Timeout => Outcome::Retry {
            failure: failure(e),
            next: Next::SameNode,
        },
        e => Outcome::Fail(failure(e)),
    }
}

fn call_error(addr: &str, is_append: bool, error: CallError) -> Outcome {
    let addr = addr.to_string();
    let elsewhere = |failure, forget_leader| Outcome::Retry {
        failure,
        next: Next::NextNode { forget_leader },
    };
    match error {
        CallError::Connect(source) => elsewhere(ClientError::Connect { addr, source }, true),
        // Every node shows a certificate of the same CA, and this client the same
        // certificate to each: another node would refuse the same way.
        CallError::Tls(reason) => Outcome::Fail(ClientError::Tls { addr, reason }),
        CallError::NotSent(reason) => elsewhere(ClientError::ConnectionLost { addr, reason }, true),
        CallError::Lost(reason) if is_append => {
            Outcome::Fail(ClientError::AppendAmbiguous { addr, reason })
        }
        CallError::Timeout(timeout_ms) if is_append => {
            Outcome::Fail(ClientError::AppendAmbiguous {
                addr,
                reason: format!("no answer within {timeout_ms} ms"),
            })
        }
        CallError::Lost(reason) => elsewhere(ClientError::ConnectionLost { addr, reason }, false),
        CallError::Timeout(timeout_ms) => {
            elsewhere(ClientError::Timeout { addr, timeout_ms }, false)
        }
    }
}

/// Whether an attempt's result leaves open that the node acted on the request
/// without the client hearing how it went: a lost connection or a timeout after
/// sending, or an Unavailable or Timeout answer (for a transfer, Unavailable may
/// mean the hand-over outlived its deadline, and its election can still finish).
/// Everything else either promises nothing was done or says what was.
pub(super) fn may_have_acted(
    result: &Result<Result<ClientResponse, ServerError>, CallError>,
) -> bool {
    matches!(
        result,
        Ok(Err(ServerError::Unavailable { .. } | ServerError::Timeout))
            | Err(CallError::Lost(_) | CallError::Timeout(_))
    )
}
