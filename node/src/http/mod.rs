//! The daemon's HTTP surfaces, assembled into two axum routers: the public
//! one (trustless gateway, Nix binary cache, hashed mirror, `/metrics`, the
//! status page at `/`), which may face a
//! LAN, and the control API (loopback clients holding the repo's token only),
//! which the daemon serves on a loopback listener: the public listener's when
//! that is loopback, its own otherwise. The Kubo RPC API ([`rpc`]) has a
//! loopback listener of its own (Kubo's port 5001 by default).

pub mod api;
pub mod gateway;
pub mod mirror;
pub mod nixcache;
pub mod rpc;
pub mod status;
pub mod swh;

use crate::net::NodeHandle;
use axum::Router;
use ipnix_store::Store;
use std::sync::Arc;

/// Everything the HTTP handlers read from.
pub struct HttpState {
    pub store: Arc<Store>,
    /// The running node, for fetching what the store lacks.
    pub node: Option<NodeHandle>,
    /// Runs CLI commands for the control API.
    pub runner: Arc<dyn api::CommandRunner>,
    /// Extra signature for narinfos the binary cache serves.
    pub sign_key: Option<Arc<ipnix_bridge::narinfo::SecretKey>>,
    /// Upstream keys whose signature earns a path the node's own (I-26).
    pub trusted_keys: Vec<ipnix_bridge::narinfo::PublicKey>,
    /// How long the binary cache waits for peers to answer a narinfo it lacks.
    pub peer_timeout: std::time::Duration,
    /// How long one block may take from peers.
    pub fetch_timeout: std::time::Duration,
    /// Software Heritage for pinned lists' failed entries (`None`: off).
    pub swh: Option<Arc<swh::SwhFallback>>,
}

/// The daemon's routers: what any listener may serve, and the control API.
pub struct Routers {
    /// Gateway, binary cache and metrics; no `/api/` route.
    pub public: Router,
    /// The control API, every route behind [`api::Access`].
    pub control: Router,
}

/// Builds both routers; `access` guards the control API.
pub fn routers(state: HttpState, access: api::Access) -> Routers {
    let mut gateway_state = gateway::GatewayState::new(state.store.clone(), state.node.clone());
    gateway_state.fetch_timeout = state.fetch_timeout;
    let gateway = gateway::router(gateway_state);
    let nixcache = nixcache::router(
        nixcache::NixCacheState::new(state.store.clone(), state.node.clone(), state.sign_key)
            .with_peer_timeout(state.peer_timeout)
            .with_trusted_keys(state.trusted_keys)
            .with_fetch_timeout(state.fetch_timeout)
            .with_swh(state.swh.clone()),
    );
    let mirror = mirror::router(mirror::MirrorState {
        store: state.store.clone(),
        node: state.node.clone(),
        peers: crate::sourceshare::FindConfig::new(state.peer_timeout)
            .with_fetch_timeout(state.fetch_timeout),
        swh: state.swh,
    });
    let status = status::router(status::StatusState {
        store: state.store.clone(),
        node: state.node.clone(),
    });
    let metrics = crate::metrics::router(crate::metrics::MetricsState {
        store: state.store,
        node: state.node,
    });
    Routers {
        public: gateway
            .merge(nixcache)
            .merge(metrics)
            .merge(status)
            .merge(mirror),
        control: api::router(state.runner, access),
    }
}
