//! The libp2p node: transports (TCP, QUIC v1, optional private network),
//! identify, ping, Kademlia (LAN DHT, opt-in public Amino DHT), mDNS,
//! connection limits and Bitswap, run by one swarm task. Everything else talks
//! to that task through a cloneable [`NodeHandle`] (a bounded command channel
//! with oneshot replies).

mod behaviour;
mod handle;
mod task;
pub(crate) mod transport;

pub use handle::{NodeHandle, NodeStats, PeerInfo};
pub use libp2p::identity::Keypair;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
pub use transport::{parse_swarm_key, read_swarm_key};

use crate::bitswap;
use cid::Cid;
use ipnix_store::Store;
use libp2p::StreamProtocol;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The DHT Kubo runs for peers on the local network (it accepts loopback and
/// private addresses, which the public DHT ignores).
pub const LAN_KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/lan/kad/1.0.0");
/// The public IPFS DHT ("Amino").
pub const AMINO_KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/kad/1.0.0");
/// Default swarm port, TCP and UDP (QUIC); Kubo uses 4001, so ipnix does not.
pub const DEFAULT_PORT: u16 = 4801;
/// Largest Kademlia message accepted: go-libp2p's network.MessageSizeMax (4 MiB).
pub const MAX_KAD_PACKET: usize = 4 * 1024 * 1024;
/// Commands queued for the swarm task before senders wait.
const COMMAND_QUEUE: usize = 1024;

/// Everything that can go wrong in the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("swarm key {path}: {reason}")]
    SwarmKey { path: String, reason: String },
    #[error("transport setup failed: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot connect to {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("no peer sent block {cid} within {timeout:?}")]
    BlockTimeout { cid: Cid, timeout: Duration },
    #[error("block {cid} cannot be requested: {reason}")]
    BadWant { cid: Cid, reason: String },
    #[error("too many outstanding block requests ({0}); try again later")]
    Busy(usize),
    #[error("DHT: {0}")]
    Dht(String),
    #[error("mDNS: {0}")]
    Mdns(String),
    #[error("the network node has shut down")]
    Shutdown,
}

/// How a [`Node`] runs. [`NetConfig::new`] has the daemon's defaults;
/// tests use [`NetConfig::loopback`].
#[derive(Clone)]
pub struct NetConfig {
    /// The node's identity (persistent Ed25519, loaded by the repo).
    pub keypair: Keypair,
    /// Addresses to listen on (`/ip4/../tcp/..`, `/ip4/../udp/../quic-v1`).
    pub listen: Vec<Multiaddr>,
    /// Peers (with `/p2p/`) dialled at start and added to the LAN DHT.
    pub bootstrap: Vec<Multiaddr>,
    /// Find peers on the local network by multicast DNS.
    pub mdns: bool,
    /// Run the LAN DHT (`/ipfs/lan/kad/1.0.0`, server mode).
    pub lan_dht: bool,
    /// Also join the public Amino DHT (`/ipfs/kad/1.0.0`) with its bootstrap peers.
    pub public_dht: bool,
    /// Private network: only peers with the same key can connect (TCP only).
    pub swarm_key: Option<PreSharedKey>,
    /// Tell peers which store paths this node holds: answer
    /// `/ipnix/pathinfo/1.0.0` from the `nix-path` index and announce those
    /// paths' DHT keys. Always on in a private network (`swarm_key`), where
    /// every peer holds the key; else off unless asked for (the daemon's
    /// `--share-paths`), since mDNS finds any host on the link. Off, the node
    /// answers every such question with "not here".
    pub share_paths: bool,
    /// Established connections, in and out together.
    pub max_connections: u32,
    /// Connections in handshake, each direction.
    pub max_pending: u32,
    /// Close connections nobody has used for this long.
    pub idle_timeout: Duration,
    /// Announce pinned roots to the DHT this often (also once at start).
    pub reprovide_interval: Duration,
    /// Bitswap engine settings.
    pub bitswap: bitswap::Config,
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("peer_id", &self.keypair.public().to_peer_id())
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("lan_dht", &self.lan_dht)
            .field("public_dht", &self.public_dht)
            .field(
                "swarm_key",
                &self.swarm_key.map(|k| k.fingerprint().to_string()),
            )
            .field("share_paths", &self.share_paths)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl NetConfig {
    /// The daemon's defaults: all interfaces on port 4801 (TCP and QUIC),
    /// mDNS and the LAN DHT on, the public DHT off.
    pub fn new(keypair: Keypair) -> Self {
        let listen = vec![
            format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}")
                .parse()
                .expect("static multiaddr"),
            format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1")
                .parse()
                .expect("static multiaddr"),
        ];
        Self {
            keypair,
            listen,
            bootstrap: Vec::new(),
            mdns: true,
            lan_dht: true,
            public_dht: false,
            swarm_key: None,
            share_paths: false,
            max_connections: 512,
            max_pending: 64,
            idle_timeout: Duration::from_secs(120),
            reprovide_interval: Duration::from_secs(12 * 3600),
            bitswap: bitswap::Config::default(),
        }
    }

    /// For tests and benchmarks: 127.0.0.1 on ephemeral TCP and QUIC ports,
    /// no mDNS, LAN DHT on, store paths shared with peers.
    pub fn loopback(keypair: Keypair) -> Self {
        Self {
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            mdns: false,
            share_paths: true,
            ..Self::new(keypair)
        }
    }
}

/// A running node: the swarm task and a handle to it.
pub struct Node {
    handle: NodeHandle,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.handle.peer_id())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Builds the swarm, starts listening and returns once every listener has
    /// an address (so [`NodeHandle::listen_addrs`] is complete). Bitswap serves
    /// blocks from `store`; pinned roots in `store` are announced to the DHT.
    /// Must be called inside a tokio runtime.
    pub async fn start(config: NetConfig, store: Arc<Store>) -> Result<Node, NetError> {
        let peer_id = config.keypair.public().to_peer_id();
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = task::SwarmTask::new(config, store, commands_rx)?;
        let join = tokio::spawn(task.run(ready_tx));
        let handle = NodeHandle::new(peer_id, commands_tx);
        match tokio::time::timeout(Duration::from_secs(15), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Node { handle, task: join }),
            Ok(Ok(Err(e))) => {
                join.abort();
                Err(e)
            }
            Ok(Err(_)) => Err(NetError::Shutdown),
            Err(_) => {
                join.abort();
                Err(NetError::Transport(
                    "listeners did not report an address within 15 s".into(),
                ))
            }
        }
    }

    /// A handle for commands; clone it freely.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the swarm (pending requests fail with [`NetError::Shutdown`],
    /// connections close) and waits for the task to end.
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
        if let Err(e) = self.task.await {
            tracing::warn!("swarm task ended abnormally: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The public bootstrap list and DNS resolution exist only behind
    /// `--public`; no default (daemon or test) reaches beyond the LAN.
    #[test]
    fn defaults_never_reach_the_public_network() {
        for config in [
            NetConfig::new(Keypair::generate_ed25519()),
            NetConfig::loopback(Keypair::generate_ed25519()),
        ] {
            assert!(!config.public_dht);
            assert!(config.bootstrap.is_empty());
        }
        // The daemon tells peers nothing about its store paths unless asked to.
        assert!(!NetConfig::new(Keypair::generate_ed25519()).share_paths);
        let loopback = NetConfig::loopback(Keypair::generate_ed25519());
        assert!(!loopback.mdns);
        assert!(loopback
            .listen
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/127.0.0.1/")));
    }
}
