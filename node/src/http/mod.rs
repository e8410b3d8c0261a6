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
}

/// One router for all surfaces.
pub fn router(state: HttpState) -> Router {
    let gateway = gateway::router(gateway::GatewayState::new(
        state.store.clone(),
        state.node.clone(),
    ));
    let nixcache = nixcache::router(nixcache::NixCacheState::new(
        state.store.clone(),
        state.node.clone(),
        state.sign_key,
    ));
    let metrics = crate::metrics::router(crate::metrics::MetricsState {
        store: state.store,
        node: state.node,
    });
    api::router(state.runner)
        .merge(gateway)
        .merge(nixcache)
        .merge(metrics)
}
