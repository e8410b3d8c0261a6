//! The daemon: starts the libp2p node on an open store, serves the HTTP
//! surfaces (trustless gateway, Nix binary cache, /metrics on `--http`; the
//! control API on the same listener when that is loopback, else on a
//! loopback listener of its own; the Kubo RPC API on `--rpc`), writes the control API's token and then
//! its address to the repo (`api.token`, `api`), and shuts everything down
//! in order on SIGINT/SIGTERM, removing both files.

use crate::http::api::{Access, CommandRunner};
use crate::net::{NetConfig, NetError, Node, NodeHandle};
use crate::repo::Repo;
use ipnix_store::Store;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

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
    #[error("--api {0}: the control API listens only on loopback (127.0.0.0/8 or [::1]); the LAN gets --http (gateway, binary cache, metrics)")]
    ApiNotLoopback(SocketAddr),
    #[error("--rpc {0}: the Kubo RPC API is a write API without a token and listens only on loopback (127.0.0.0/8 or [::1])")]
    RpcNotLoopback(SocketAddr),
}

/// The Kubo RPC API listener ([`crate::http::rpc`]).
#[derive(Debug, Clone)]
pub struct RpcListen {
    pub addr: SocketAddr,
    /// Asked for explicitly: a taken address is an error. Otherwise (the
    /// default, Kubo's port) the daemon starts without it and warns.
    pub required: bool,
    /// Largest request body, in bytes.
    pub max_body: u64,
}

/// How the daemon runs.
pub struct DaemonConfig {
    pub repo: Repo,
    pub net: NetConfig,
    /// HTTP address (gateway, binary cache, metrics; the control API too when
    /// it is loopback and `api` is unset).
    pub http: SocketAddr,
    /// The control API's own (loopback) address. Unset: shared with `http`
    /// when that is loopback, else 127.0.0.1 on a free port.
    pub api: Option<SocketAddr>,
    /// Extra signing for narinfos the binary cache serves.
    pub sign_key: Option<ipnix_bridge::narinfo::SecretKey>,
    /// Upstream keys whose signature earns a path `sign_key`'s (I-26).
    pub trusted_keys: Vec<ipnix_bridge::narinfo::PublicKey>,
    /// How long the binary cache waits for peers to answer a narinfo it lacks.
    pub peer_timeout: std::time::Duration,
    /// How long one block may take from peers before a read fails.
    pub fetch_timeout: std::time::Duration,
    /// The Kubo RPC API; `None`: off.
    pub rpc: Option<RpcListen>,
    /// Software Heritage for pinned lists' failed entries; `None`: off.
    pub swh: Option<ipnix_sources::swh::SwhConfig>,
}

/// What a running daemon tells its caller once it is up.
#[derive(Debug, Clone)]
pub struct Ready {
    pub peer_id: libp2p::PeerId,
    pub listen: Vec<libp2p::Multiaddr>,
    /// Gateway, binary cache and metrics.
    pub http: SocketAddr,
    /// The control API: equal to `http` when they share a listener.
    pub api: SocketAddr,
    /// The Kubo RPC API, when it listens.
    pub rpc: Option<SocketAddr>,
}

/// Runs until `shutdown` completes. `make_runner` builds the command runner of
/// the control API once the node exists; `on_ready` is told the addresses.
/// The caller holds the repo's daemon lock ([`Repo::try_lock_daemon`]) for
/// the whole run.
pub async fn run(
    config: DaemonConfig,
    store: Arc<Store>,
    make_runner: impl FnOnce(NodeHandle) -> Arc<dyn CommandRunner>,
    on_ready: impl FnOnce(&Ready),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    if let Some(api) = config.api {
        if !api.ip().is_loopback() {
            return Err(DaemonError::ApiNotLoopback(api));
        }
    }
    // Left by a daemon that was killed: nobody serves them any more (the
    // caller holds the daemon lock), and a CLI must not trust them.
    config.repo.remove_api();
    config.repo.remove_api_token();
    let public_listener = bind(config.http).await?;
    let http = local_addr(&public_listener, config.http)?;
    let shares_listener = match config.api {
        None => http.ip().is_loopback(),
        Some(api) => api == config.http && api.port() != 0,
    };
    let control_listener = if shares_listener {
        None
    } else {
        let addr = config
            .api
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        Some(bind(addr).await?)
    };
    let api = match &control_listener {
        Some(listener) => local_addr(listener, http)?,
        None => http,
    };
    let rpc_listener = match &config.rpc {
        None => None,
        Some(rpc) if !rpc.addr.ip().is_loopback() => {
            return Err(DaemonError::RpcNotLoopback(rpc.addr))
        }
        Some(rpc) => {
            match bind(rpc.addr).await {
                Ok(listener) => Some((local_addr(&listener, rpc.addr)?, listener, rpc.max_body)),
                Err(e) if !rpc.required => {
                    tracing::warn!("Kubo RPC API off: {e} (another IPFS node there? choose one with --rpc ADDR)");
                    None
                }
                Err(e) => return Err(e),
            }
        }
    };
    let node = Node::start(config.net, store.clone()).await?;
    let handle = node.handle();
    let runner = make_runner(handle.clone());
    let token = Access::generate_token();
    let routers = crate::http::routers(
        crate::http::HttpState {
            store: store.clone(),
            node: Some(handle.clone()),
            runner,
            sign_key: config.sign_key.map(Arc::new),
            trusted_keys: config.trusted_keys,
            peer_timeout: config.peer_timeout,
            fetch_timeout: config.fetch_timeout,
            swh: config.swh.map(|swh| {
                crate::http::swh::SwhFallback::start(
                    store.clone(),
                    swh,
                    config.repo.root().join("tmp"),
                )
            }),
        },
        Access::new(&token, api.port()),
    );
    let ready = Ready {
        peer_id: handle.peer_id(),
        listen: handle.listen_addrs().await?,
        http,
        api,
        rpc: rpc_listener.as_ref().map(|(addr, _, _)| *addr),
    };
    let rpc_router = rpc_listener.as_ref().map(|(addr, _, max_body)| {
        crate::http::rpc::router(crate::http::rpc::RpcState {
            store: store.clone(),
            node: Some(handle.clone()),
            fetch_timeout: config.fetch_timeout,
            max_body: *max_body,
            port: addr.port(),
        })
    });
    // Removes both files however this function returns, from here on.
    let published = Published {
        repo: config.repo.clone(),
    };
    // The token first: a CLI that finds the address must find the token too.
    config.repo.write_api_token(&token)?;
    config.repo.write_api(&format!("http://{api}"))?;
    on_ready(&ready);
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let main_served = async {
        match control_listener {
            None => {
                serve(
                    public_listener,
                    routers.public.merge(routers.control),
                    &stop,
                )
                .await
            }
            Some(control_listener) => {
                let (public, control) = tokio::join!(
                    serve(public_listener, routers.public, &stop),
                    serve(control_listener, routers.control, &stop),
                );
                public.and(control)
            }
        }
    };
    let rpc_served = async {
        match (rpc_listener, rpc_router) {
            (Some((_, listener, _)), Some(router)) => serve(listener, router, &stop).await,
            _ => Ok(()),
        }
    };
    let (served, rpc_served) = tokio::join!(main_served, rpc_served);
    let served = served.and(rpc_served);
    drop(published);
    node.shutdown().await;
    served
}

/// The repo's `api` and `api.token` while the daemon serves; removed on drop.
struct Published {
    repo: Repo,
}

impl Drop for Published {
    fn drop(&mut self) {
        // The address first: a CLI that finds it must still find the token.
        self.repo.remove_api();
        self.repo.remove_api_token();
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Http { addr, source })
}

fn local_addr(
    listener: &tokio::net::TcpListener,
    asked: SocketAddr,
) -> Result<SocketAddr, DaemonError> {
    listener.local_addr().map_err(|source| DaemonError::Http {
        addr: asked,
        source,
    })
}

/// Serves one listener until `stop`; an error there stops the other one too.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: &CancellationToken,
) -> Result<(), DaemonError> {
    let addr = local_addr(&listener, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.clone().cancelled_owned())
    .await;
    stop.cancel();
    served.map_err(|source| DaemonError::Http { addr, source })
}

/// A future that resolves on SIGINT or SIGTERM. The handlers are installed
/// now, not when the future is first polled, so a signal sent the moment the
/// daemon says it is ready (or while it starts) stops it cleanly instead of
/// killing it. Call inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
