//! Each shard's front doors: the client and peer services that serve the
//! connections placed on its executor, and, on shard 0, the listeners that accept
//! them and the metrics server. A connection is accepted on shard 0 and handed to
//! the shard that owns it ([`crate::transport::placement`]); from then on its bytes
//! are read, checked and answered on that shard's core, and only requests for other
//! partitions (a connection may use several) cross to their shard's inbox.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use super::inbox::{LaneSender, ShardInput};
use super::local_inbox::LocalInbox;
use super::node::{NodeError, Observe};
use super::router::{ClientRouter, PeerRouter, node_infos};
use crate::engine::{Message, NodeId};
use crate::metrics::RouterMetrics;
use crate::metrics::http::MetricsServer;
use crate::transport::peer::{AcceptorStats, CloseRequests, PeerAcceptor, PeerConfig, PeerService};
use crate::transport::placement::{DoorQueue, Doors};
use crate::transport::server::{ClientListener, ClientService, ListenerStats, ServerConfig};

/// What every shard's doors share: the node's identity, the shards' inboxes, the
/// hand-off queues and every shard's service counters.
#[derive(Clone)]
pub struct NodeDoors {
    pub cluster_id: u64,
    pub node_id: NodeId,
    /// (node id, client address) of every member.
    pub members: Vec<(NodeId, String)>,
    pub client_lanes: Vec<LaneSender<ShardInput>>,
    pub peer_lanes: Vec<LaneSender<Message>>,
    pub client_doors: Doors,
    pub peer_doors: Doors,
    pub client_stats: Vec<Arc<ListenerStats>>,
    pub peer_stats: Vec<Arc<AcceptorStats>>,
    pub client_limits: ServerConfig,
    /// TLS on every port, when the node has `[tls]`.
    pub tls: Option<Arc<crate::tls::TlsContext>>,
    pub observe: Observe,
}

/// The addresses shard 0 listens on.
pub struct Listen {
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub metrics: SocketAddr,
}

/// One shard's doors, built on its executor (the services hold `Rc`s).
pub struct ShardDoors {
    pub shard: u32,
    pub node: NodeDoors,
    pub client_queue: DoorQueue,
    pub peer_queue: DoorQueue,
    /// The shard's requests to close the links of peers that broke the rules.
    pub close_requests: CloseRequests,
    /// Shard 0's listeners; None on the others.
    pub listen: Option<Listen>,
}

impl ShardDoors {
    /// Starts the shard's services (and, on shard 0, the listeners and metrics).
    /// Appends to this shard's partition on its connections go to `local_inbox`.
    pub fn open(self, local_inbox: Rc<LocalInbox>) -> Result<(), NodeError> {
        let node = &self.node;
        let shard = self.shard as usize;
        let peers: Vec<NodeId> = node
            .members
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| *id != node.node_id)
            .collect();
        let shards = node.client_lanes.len() as u32;
        let router_metrics = Rc::new(RouterMetrics::new(&node.observe.metrics, shards, &peers));
        let client_router = ClientRouter {
            cluster_id: node.cluster_id,
            nodes: node_infos(&node.members),
            shards: node.client_lanes.clone(),
            local: Some((self.shard, local_inbox)),
            metrics: router_metrics.clone(),
        };
        let peer_router = PeerRouter {
            local: self.shard,
            shards: node.peer_lanes.clone(),
            node_id: node.node_id,
            metrics: router_metrics.clone(),
        };
        let clients = ClientService::with_stats(
            node.client_limits.clone(),
            Rc::new(client_router),
            node.client_stats[shard].clone(),
        );
        let peer_config = Rc::new(PeerConfig {
            // One peer lane per shard: the count every peer must run too.
            shard_count: node.peer_lanes.len() as u32,
            tls: node.tls.clone(),
            ..PeerConfig::new(node.cluster_id, node.node_id)
        });
        let peers = PeerService::with_stats(
            peer_config,
            Rc::new(peer_router),
            node.peer_stats[shard].clone(),
        );
        peers.closing_on(self.close_requests);
        glommio::spawn_local(clients.clone().serve_handed_in(self.client_queue)).detach();
        glommio::spawn_local(peers.clone().serve_handed_in(self.peer_queue)).detach();
        match self.listen {
            Some(listen) => open_listeners(&self.node, listen, clients, peers, router_metrics),
            None => Ok(()),
        }
    }
}

/// Binds the client, peer and metrics ports on this executor (shard 0's) and
/// starts accepting.
fn open_listeners(
    node: &NodeDoors,
    listen: Listen,
    clients: Rc<ClientService<ClientRouter>>,
    peers: Rc<PeerService<PeerRouter>>,
    router_metrics: Rc<RouterMetrics>,
) -> Result<(), NodeError> {
    let listen_error = |what, address| {
        move |e: std::io::Error| NodeError::Listen {
            what,
            address,
            reason: e.to_string(),
        }
    };
    let client_listener = ClientListener::bind_service(listen.client, clients)
        .map_err(listen_error("client", listen.client))?
        .placing(
            node.client_doors.clone(),
            node.client_stats
                .iter()
                .map(|s| s.connections.clone())
                .collect(),
        );
    let peer_acceptor = PeerAcceptor::bind_service(listen.peer, peers)
        .map_err(listen_error("peer", listen.peer))?
        .placing(
            node.peer_doors.clone(),
            node.peer_stats
                .iter()
                .map(|s| s.connections.clone())
                .collect(),
        );
    let (client_stats, peer_stats) = (node.client_stats.clone(), node.peer_stats.clone());
    let tls = node.tls.clone();
    let collect =
        Rc::new(move || router_metrics.collect(&client_stats, &peer_stats, tls.as_deref()));
    let scrapes = MetricsServer::bind(
        listen.metrics,
        node.observe.metrics.clone(),
        node.observe.health.clone(),
        collect,
    )
    .map_err(listen_error("metrics", listen.metrics))?
    .with_tls(node.tls.clone());
    glommio::spawn_local(client_listener.run()).detach();
    glommio::spawn_local(peer_acceptor.run()).detach();
    glommio::spawn_local(scrapes.run()).detach();
    let (scheme, tls) = match node.tls {
        Some(_) => ("https", "TLS on every port"),
        None => ("http", "plaintext"),
    };
    log::info!(
        "serving clients on {}, peers on {} and metrics on {scheme}://{}/metrics ({tls}); each connection is served by the shard it uses",
        listen.client,
        listen.peer,
        listen.metrics
    );
    Ok(())
}
