//! `ringlog members`: each partition's members as its leader sees them, and
//! single-member changes applied to every partition.

use std::time::Duration;

use super::{CliError, with_client};
use crate::client::PartitionResult;
use crate::engine::Index;
use crate::transport::{ChangeOp, PartitionMembers};

/// Prints a table of every partition's members: node, voter or learner, whether
/// it leads, and how many entries it is behind the leader.
pub fn members(addr: &str, timeout: Duration) -> Result<(), CliError> {
    with_client(addr, timeout, async |client| {
        let listing = client.members().await?;
        print!("{}", format_members(&listing));
        match listing.iter().filter(|p| p.result.is_err()).count() {
            0 => Ok(()),
            failed => Err(CliError::Usage(format!(
                "{failed} partition(s) could not be listed"
            ))),
        }
    })
}

pub fn format_members(listing: &[PartitionResult<PartitionMembers>]) -> String {
    let mut text = format!(
        "{:<10} {:<6} {:<8} {:<7} {:>8}  {}\n",
        "PARTITION", "NODE", "ROLE", "LEADER", "LAG", "ADDRESSES (client, peer)"
    );
    for p in listing {
        let members = match &p.result {
            Ok(members) => members,
            Err(e) => {
                text += &format!("{:<10} error: {e}\n", p.partition);
                continue;
            }
        };
        for m in &members.members {
            let role = if m.voter { "voter" } else { "learner" };
            let leader = if m.leader { "leader" } else { "-" };
            // A member the leader has not heard from lately may be further behind
            // than its last acknowledgement says.
            let silent = if m.active { "" } else { " (silent)" };
            text += &format!(
                "{:<10} {:<6} {role:<8} {leader:<7} {:>8}  {}, {}{silent}\n",
                p.partition,
                m.node_id,
                members.lag(m),
                m.client_address,
                m.peer_address
            );
        }
    }
    text
}

/// Applies `change` to every partition and prints, per partition, the index of
/// the committed configuration entry or why it did not commit; fails when any
/// partition did not.
pub fn change(addr: &str, change: ChangeOp, timeout: Duration) -> Result<(), CliError> {
    with_client(addr, timeout, async |client| {
        let outcomes = client.change_membership(change).await?;
        print!("{}", format_change(&outcomes));
        match outcomes.iter().filter(|p| p.result.is_err()).count() {
            0 => Ok(()),
            failed => Err(CliError::Usage(format!(
                "the change did not commit on {failed} of {} partition(s)",
                outcomes.len()
            ))),
        }
    })
}

pub fn format_change(outcomes: &[PartitionResult<Index>]) -> String {
    let mut text = String::new();
    for p in outcomes {
        text += &match &p.result {
            Ok(index) => format!("partition {}: committed at index {index}\n", p.partition),
            Err(e) => format!("partition {}: {e}\n", p.partition),
        };
    }
    text
}
