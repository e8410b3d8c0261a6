//! The composed `NetworkBehaviour`: what each protocol is configured with.

use super::{NetConfig, NetError, AMINO_KAD_PROTOCOL, LAN_KAD_PROTOCOL, MAX_KAD_PACKET};
use crate::{bitswap, pathinfo, sourceshare};
use ipnix_store::Store;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{connection_limits, identify, kad, mdns, ping, PeerId, StreamProtocol};
use std::sync::Arc;
use std::time::Duration;

/// What identify reports as our protocol family (Kubo sends the same).
const PROTOCOL_VERSION: &str = "ipfs/0.1.0";
/// Connections to one peer (a QUIC and a TCP one, plus simultaneous dials).
const MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Keys this node can announce as provider (pinned roots).
const MAX_PROVIDED_KEYS: usize = 1 << 16;

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub lan_kad: Toggle<kad::Behaviour<MemoryStore>>,
    pub public_kad: Toggle<kad::Behaviour<MemoryStore>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub bitswap: bitswap::Behaviour,
    pub pathinfo: pathinfo::Behaviour,
    pub source: sourceshare::Behaviour,
}

/// The agent string identify sends: `ipnix/<crate version>`.
pub(crate) fn agent_version() -> String {
    format!("ipnix/{}", env!("CARGO_PKG_VERSION"))
}

impl Behaviour {
    pub(crate) fn new(config: &NetConfig, store: Arc<Store>) -> Result<Self, NetError> {
        let keypair: &Keypair = &config.keypair;
        let peer_id = keypair.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_pending_incoming(Some(config.max_pending))
            .with_max_pending_outgoing(Some(config.max_pending));
        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.into(), keypair.public())
                .with_agent_version(agent_version())
                .with_push_listen_addr_updates(true),
        );
        let mdns = if config.mdns {
            let mdns_config = mdns::Config {
                query_interval: Duration::from_secs(60),
                ..mdns::Config::default()
            };
            Some(
                mdns::tokio::Behaviour::new(mdns_config, peer_id)
                    .map_err(|e| NetError::Mdns(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            lan_kad: config
                .lan_dht
                .then(|| kademlia(peer_id, LAN_KAD_PROTOCOL))
                .into(),
            public_kad: config
                .public_dht
                .then(|| kademlia(peer_id, AMINO_KAD_PROTOCOL))
                .into(),
            mdns: mdns.into(),
            bitswap: bitswap::Behaviour::new(config.bitswap.clone(), store),
            pathinfo: pathinfo::behaviour(),
            source: sourceshare::behaviour(),
        })
    }
}

/// A Kademlia DHT in server mode speaking `protocol`, with go-libp2p's message
/// size limit. Provider records are republished by the reprovider (pinned
/// roots), not by libp2p's own timer, so unpinned roots stop being announced.
fn kademlia(peer_id: PeerId, protocol: StreamProtocol) -> kad::Behaviour<MemoryStore> {
    let mut config = kad::Config::new(protocol);
    config
        .set_max_packet_size(MAX_KAD_PACKET)
        .set_query_timeout(Duration::from_secs(60))
        .set_provider_publication_interval(None);
    let store = MemoryStore::with_config(
        peer_id,
        MemoryStoreConfig {
            max_provided_keys: MAX_PROVIDED_KEYS,
            ..MemoryStoreConfig::default()
        },
    );
    let mut kad = kad::Behaviour::with_config(peer_id, store, config);
    kad.set_mode(Some(kad::Mode::Server));
    kad
}
