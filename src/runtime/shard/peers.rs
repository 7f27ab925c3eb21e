//! The shard's links follow the membership in force: one outbound link to the same
//! shard on every other member, opened when a member is added and closed when it is
//! removed. Addresses come from the configuration entries themselves (each member's
//! peer address travels in the log), so a node learns where a new member is from
//! the same entry that adds it, and redirects name the new members' client ports.
//!
//! Until a change commits, the members it removes still take part (a removed
//! leader leads until then, and its followers must answer it): links go to the
//! members of every configuration the engine knows, committed or not, and to the
//! leader it follows.
//!
//! A member whose membership in force is empty (a node that is joining and has not
//! received a configuration yet) links to every node of its address book, so that
//! it can answer the leader that is sending it the log.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;

use super::Shard;
use crate::engine::{Membership, NodeId};
use crate::metrics::NodeMetrics;
use crate::transport::peer::{PeerConfig, PeerLink};

/// What a shard needs to open links: where each known node listens for peers.
pub(super) struct PeerBook {
    config: Rc<PeerConfig>,
    node_metrics: Arc<NodeMetrics>,
    /// Peer addresses: the configuration's `[[nodes]]`, then every member learned
    /// from a configuration entry.
    addresses: BTreeMap<NodeId, PeerAddress>,
}

/// An address as configured or as a configuration entry carries it (host:port).
#[derive(Clone, Debug, PartialEq, Eq)]
enum PeerAddress {
    Resolved(SocketAddr),
    Named(String),
}

impl PeerBook {
    pub(super) fn new(
        config: PeerConfig,
        node_metrics: Arc<NodeMetrics>,
        configured: &BTreeMap<NodeId, SocketAddr>,
    ) -> PeerBook {
        PeerBook {
            config: Rc::new(config),
            node_metrics,
            addresses: configured
                .iter()
                .map(|(&id, &addr)| (id, PeerAddress::Resolved(addr)))
                .collect(),
        }
    }

    /// The socket address of `node`, resolving a name the first time it is needed.
    /// Resolution may block on DNS; it happens only when the membership changes.
    fn resolve(&mut self, node: NodeId) -> Option<SocketAddr> {
        let resolved = match self.addresses.get(&node)? {
            PeerAddress::Resolved(addr) => return Some(*addr),
            PeerAddress::Named(name) => name.to_socket_addrs().ok()?.next()?,
        };
        self.addresses.insert(node, PeerAddress::Resolved(resolved));
        Some(resolved)
    }

    /// Takes the addresses of members not known yet. A member's address never
    /// changes: no change edits a member, and a node that moves is added anew under
    /// another id.
    fn learn(&mut self, membership: &Membership) {
        for member in membership.members() {
            if !member.peer_address.is_empty() {
                let address = PeerAddress::Named(member.peer_address.clone());
                self.addresses.entry(member.id).or_insert(address);
            }
        }
    }
}

impl Shard {
    /// Opens and closes links so that there is one to every other member in force,
    /// and keeps the client addresses used in redirects current.
    pub(super) fn follow_membership(&mut self) {
        let me = self.engine.id();
        let memberships: Vec<Membership> = self.engine.memberships().cloned().collect();
        let mut wanted: Vec<NodeId> = Vec::new();
        for membership in &memberships {
            self.peer_book.learn(membership);
            for member in membership.members() {
                wanted.push(member.id);
                if !member.client_address.is_empty() {
                    let address = member.client_address.clone();
                    self.client_addrs.insert(member.id, address);
                }
            }
        }
        if self.engine.membership().members().is_empty() {
            wanted.extend(self.peer_book.addresses.keys().copied());
        }
        wanted.extend(self.engine.leader());
        wanted.sort_unstable();
        wanted.dedup();
        wanted.retain(|&id| id != me);
        // Dropping a link cancels its tasks, which closes its connections.
        self.links.retain(|id, _| wanted.contains(id));
        for &node in &wanted {
            if self.links.contains_key(&node) {
                continue;
            }
            let Some(addr) = self.peer_book.resolve(node) else {
                log::warn!(
                    "shard {}: no usable peer address for member {node}; it gets no messages from here until a configuration names one",
                    self.id
                );
                continue;
            };
            let link = PeerLink::spawn(self.peer_book.config.clone(), self.id, node, addr);
            self.links.insert(node, Rc::new(link));
        }
        let linked: Vec<NodeId> = self.links.keys().copied().collect();
        self.metrics
            .follow_peers(&self.peer_book.node_metrics, self.id, &linked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Member;

    fn member(id: NodeId, peer_address: &str) -> Member {
        Member {
            id,
            voter: true,
            peer_address: peer_address.into(),
            client_address: String::new(),
        }
    }

    #[test]
    fn members_learned_from_entries_are_added_to_the_configured_ones() {
        let configured: BTreeMap<NodeId, SocketAddr> =
            [(2, "127.0.0.1:7002".parse().unwrap())].into();
        let metrics = NodeMetrics::new(1);
        let mut book = PeerBook::new(PeerConfig::new(7, 1), metrics, &configured);
        let same = Membership::new(vec![member(2, "127.0.0.1:7002"), member(3, "")]);
        book.learn(&same);
        assert_eq!(book.resolve(2), Some("127.0.0.1:7002".parse().unwrap()));
        assert_eq!(book.resolve(3), None, "no address, nothing to link to");
        let grown = Membership::new(vec![member(2, "10.9.9.9:1"), member(4, "localhost:7004")]);
        book.learn(&grown);
        assert_eq!(book.resolve(2), Some("127.0.0.1:7002".parse().unwrap()));
        assert_eq!(book.resolve(4).map(|a| a.port()), Some(7004));
    }
}
