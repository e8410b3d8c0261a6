//! The daemon's HTTP surfaces, assembled into one axum router: the control
//! API (loopback clients only), the trustless gateway, the Nix binary cache
//! and `/metrics`.

pub mod api;
pub mod gateway;
pub mod nixcache;

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
    /// How long the binary cache waits for peers to answer a narinfo it lacks.
    pub peer_timeout: std::time::Duration,
    /// How long one block may take from peers.
    pub fetch_timeout: std::time::Duration,
}

/// One router for all surfaces.
pub fn router(state: HttpState) -> Router {
    let mut gateway_state = gateway::GatewayState::new(state.store.clone(), state.node.clone());
    gateway_state.fetch_timeout = state.fetch_timeout;
    let gateway = gateway::router(gateway_state);
    let nixcache = nixcache::router(
        nixcache::NixCacheState::new(state.store.clone(), state.node.clone(), state.sign_key)
            .with_peer_timeout(state.peer_timeout)
            .with_fetch_timeout(state.fetch_timeout),
    );
    let metrics = crate::metrics::router(crate::metrics::MetricsState {
        store: state.store,
        node: state.node,
    });
    api::router(state.runner)
        .merge(gateway)
        .merge(nixcache)
        .merge(metrics)
}
