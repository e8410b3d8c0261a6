//! An in-process ipnix node for the interop tests (`interop_kubo.rs`,
//! `interop_helia.rs`): a temp store, a loopback `Node`, adding files and
//! fetching DAGs, and streaming SHA-256 comparisons so 100 MiB files are
//! never held in memory.

#![allow(dead_code)] // each test file uses a different subset

use anyhow::{Context, Result};
use ipnix_node::fetch::{fetch_dag, FetchOptions, FetchSummary};
use ipnix_node::net::{Multiaddr, NetConfig, Node, NodeHandle};
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::{Cid, PinMode, Store};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MIB: u64 = 1024 * 1024;

pub struct IpnixNode {
    pub node: Node,
    pub store: Arc<Store>,
    _dir: tempfile::TempDir,
}

impl IpnixNode {
    pub async fn start() -> Result<Self> {
        Self::start_with(ipnix_node::net::Keypair::generate_ed25519()).await
    }

    pub async fn start_with(keypair: ipnix_node::net::Keypair) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ipnix-node-").tempdir()?;
        let store = Arc::new(Store::open(dir.path())?);
        let node = Node::start(NetConfig::loopback(keypair), store.clone()).await?;
        Ok(Self {
            node,
            store,
            _dir: dir,
        })
    }

    pub fn handle(&self) -> NodeHandle {
        self.node.handle()
    }

    pub async fn addr(&self, quic: bool) -> Result<Multiaddr> {
        self.handle()
            .listen_addrs()
            .await?
            .into_iter()
            .find(|a| a.to_string().contains("/quic-v1") == quic)
            .context("no listen address of that transport")
    }

    /// Imports `path` as UnixFS with `profile`, pinned.
    pub async fn add(&self, path: &Path, profile: Profile) -> Result<Cid> {
        let store = self.store.clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<Cid> {
            let file = std::fs::File::open(&path)?;
            let mut session = store.session();
            let added = unixfs::add_file(
                &mut session,
                std::io::BufReader::with_capacity(1 << 20, file),
                &profile.params(),
            )?;
            session.finish(Some((added.cid, PinMode::Recursive, None)))?;
            Ok(added.cid)
        })
        .await?
    }

    /// Fetches the DAG under `cid` from peers, pinned.
    pub async fn fetch(&self, cid: Cid) -> Result<FetchSummary> {
        let opts = FetchOptions {
            pin: Some((PinMode::Recursive, None)),
            block_timeout: Duration::from_secs(60),
            ..FetchOptions::default()
        };
        Ok(fetch_dag(&self.handle(), self.store.clone(), cid, opts).await?)
    }

    /// SHA-256 (hex) of the file `cid` names, read from the store.
    pub async fn file_sha256(&self, cid: Cid) -> Result<String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || sha256_reader(unixfs::cat(store, &cid)?)).await?
    }
}

pub fn sha256_reader(mut reader: impl Read) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    sha256_reader(std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?)
}

/// Polls `check` every 250 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs blocking harness calls (peer scripts) without stalling the runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}
