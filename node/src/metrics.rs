//! `/metrics` in the Prometheus text format (version 0.0.4): peers and
//! connections, every Bitswap counter (blocks and bytes sent and received,
//! wantlist sizes, ...), DHT table sizes, and the store's size and pins.

use crate::net::{NodeHandle, NodeStats};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use ipnix_store::RepoStat;
use ipnix_store::Store;
use std::fmt::Write;
use std::sync::Arc;

/// Bitswap figures that go up and down (the rest only grow).
const BITSWAP_GAUGES: &[&str] = &[
    "wants",
    "peer_wantlist_entries",
    "queued_bytes",
    "max_peer_queued_bytes",
    "peers",
];

/// What `/metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    pub store: Arc<Store>,
    /// `None` when the daemon runs offline.
    pub node: Option<NodeHandle>,
}

impl std::fmt::Debug for MetricsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsState")
            .field("online", &self.node.is_some())
            .finish_non_exhaustive()
    }
}

/// `GET /metrics`.
pub fn router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn metrics(State(state): State<MetricsState>) -> Response {
    let text = render(&state.store, state.node.as_ref()).await;
    let mut response = (StatusCode::OK, text).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Collects the current figures and renders them.
pub async fn render(store: &Arc<Store>, node: Option<&NodeHandle>) -> String {
    let store = store.clone();
    let stat =
        match tokio::task::spawn_blocking(move || store.stat().map_err(|e| e.to_string())).await {
            Ok(Ok(stat)) => Some(stat),
            Ok(Err(e)) => {
                tracing::warn!("metrics: store stat: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("metrics: store stat: {e}");
                None
            }
        };
    let stats = match node {
        Some(node) => node.stats().await.ok(),
        None => None,
    };
    format_metrics(stat.as_ref(), stats.as_ref())
}

struct Exposition(String);

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            if labels.is_empty() {
                let _ = writeln!(self.0, "{name} {value}");
            } else {
                let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
            }
        }
    }
}

/// The exposition text for what is known (missing parts are left out).
pub fn format_metrics(stat: Option<&RepoStat>, net: Option<&NodeStats>) -> String {
    let mut out = Exposition(String::new());
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    out.metric(
        "ipnix_build_info",
        "gauge",
        "Always 1; the version is a label.",
        &[(&version, 1)],
    );
    out.metric(
        "ipnix_online",
        "gauge",
        "1 when the libp2p node is running.",
        &[("", u64::from(net.is_some()))],
    );
    if let Some(n) = net {
        let g = |v: usize| v as u64;
        out.metric(
            "ipnix_peers",
            "gauge",
            "Connected peers.",
            &[("", g(n.peers))],
        );
        out.metric(
            "ipnix_connections",
            "gauge",
            "Open connections.",
            &[("", g(n.connections))],
        );
        for (name, value) in n.bitswap.fields() {
            if BITSWAP_GAUGES.contains(&name) {
                out.metric(
                    &format!("ipnix_bitswap_{name}"),
                    "gauge",
                    &format!("Bitswap gauge {name}."),
                    &[("", value)],
                );
            } else {
                out.metric(
                    &format!("ipnix_bitswap_{name}_total"),
                    "counter",
                    &format!("Bitswap counter {name}."),
                    &[("", value)],
                );
            }
        }
        out.metric(
            "ipnix_block_requests_waiting",
            "gauge",
            "Local callers waiting for a block from the network.",
            &[("", g(n.block_waiters))],
        );
        out.metric(
            "ipnix_dht_routing_table_peers",
            "gauge",
            "Peers in the DHT routing tables.",
            &[
                ("dht=\"lan\"", g(n.lan_dht_peers)),
                ("dht=\"public\"", g(n.public_dht_peers)),
            ],
        );
        out.metric(
            "ipnix_dht_provided_keys",
            "gauge",
            "Keys (pinned roots) this node announces as provider.",
            &[("", g(n.provided_keys))],
        );
    }
    if let Some(s) = stat {
        out.metric(
            "ipnix_store_blocks",
            "gauge",
            "Blocks in the store.",
            &[("", s.blocks)],
        );
        out.metric(
            "ipnix_store_block_bytes",
            "gauge",
            "Sum of the sizes of all stored blocks.",
            &[("", s.block_bytes)],
        );
        out.metric(
            "ipnix_store_disk_bytes",
            "gauge",
            "Database plus pack files on disk.",
            &[("", s.disk_bytes)],
        );
        out.metric(
            "ipnix_store_reclaimable_bytes",
            "gauge",
            "Pack bytes GC would reclaim.",
            &[("", s.pack_dead_bytes)],
        );
        out.metric(
            "ipnix_store_pins",
            "gauge",
            "Pins by mode.",
            &[
                ("mode=\"recursive\"", s.recursive_pins),
                ("mode=\"direct\"", s.direct_pins),
            ],
        );
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed() {
        let net = NodeStats {
            peers: 2,
            ..NodeStats::default()
        };
        let text = format_metrics(None, Some(&net));
        assert!(text.contains("ipnix_peers 2\n"));
        assert!(text.contains("ipnix_bitswap_block_bytes_received_total 0\n"));
        assert!(text.contains("# TYPE ipnix_bitswap_wants gauge\n"));
        assert!(text.contains("ipnix_dht_routing_table_peers{dht=\"lan\"} 0\n"));
        assert!(text.contains("ipnix_online 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(!name.is_empty());
            value.parse::<u64>().expect("integer sample");
        }
        let offline = format_metrics(None, None);
        assert!(offline.contains("ipnix_online 0\n"));
        assert!(!offline.contains("ipnix_peers"));
    }
}
