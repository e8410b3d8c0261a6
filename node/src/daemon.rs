//! The daemon: opens the store, starts the libp2p node, serves the HTTP
//! surfaces (control API, trustless gateway, Nix binary cache, /metrics) on
//! one address, advertises that address in the repo's `api` file, and shuts
//! everything down in order on SIGINT/SIGTERM.

use crate::http::api::CommandRunner;
use crate::net::{NetConfig, NetError, Node, NodeHandle};
use crate::repo::Repo;
use ipnix_store::Store;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot serve HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Repo(#[from] crate::repo::RepoError),
}

/// How the daemon runs.
pub struct DaemonConfig {
    pub repo: Repo,
    pub net: NetConfig,
    /// HTTP address (API, gateway, binary cache, metrics).
    pub http: SocketAddr,
    /// Extra signing for narinfos the binary cache serves.
    pub sign_key: Option<ipnix_bridge::narinfo::SecretKey>,
    /// How long the binary cache waits for peers to answer a narinfo it lacks.
    pub peer_timeout: std::time::Duration,
    /// How long one block may take from peers before a read fails.
    pub fetch_timeout: std::time::Duration,
}

/// What a running daemon tells its caller once it is up.
#[derive(Debug, Clone)]
pub struct Ready {
    pub peer_id: libp2p::PeerId,
    pub listen: Vec<libp2p::Multiaddr>,
    pub http: SocketAddr,
}

/// Runs until `shutdown` completes. `make_runner` builds the command runner of
/// the control API once the node exists; `on_ready` is told the addresses.
pub async fn run(
    config: DaemonConfig,
    store: Arc<Store>,
    make_runner: impl FnOnce(NodeHandle) -> Arc<dyn CommandRunner>,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| DaemonError::Http {
            addr: config.http,
            source,
        })?;
    let http = listener.local_addr().map_err(|source| DaemonError::Http {
        addr: config.http,
        source,
    })?;
    let node = Node::start(config.net, store.clone()).await?;
    let handle = node.handle();
    let runner = make_runner(handle.clone());
    let app = crate::http::router(crate::http::HttpState {
        store: store.clone(),
        node: Some(handle.clone()),
        runner,
        sign_key: config.sign_key.map(Arc::new),
        peer_timeout: config.peer_timeout,
        fetch_timeout: config.fetch_timeout,
    });
    let ready = Ready {
        peer_id: handle.peer_id(),
        listen: handle.listen_addrs().await?,
        http,
    };
    config.repo.write_api(&format!("http://{http}"))?;
    on_ready(&ready);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    config.repo.remove_api();
    node.shutdown().await;
    served.map_err(|source| DaemonError::Http { addr: http, source })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
