//! The Nix binary cache inside the daemon: `GET|HEAD /nix-cache-info`,
//! `/<hash>.narinfo` (looked up in the store-path index that `ipnix nix
//! import` writes) and `/nar/<path-info CID>.nar`, rendered from blocks as it
//! streams and checked against the path-info's NAR hash and size: a mismatch
//! cuts the response short, so a client never receives a complete wrong NAR.
//! Blocks missing locally are read through the network when a node runs.
//!
//! A narinfo this node lacks is asked of peers (`/ipnix/pathinfo/1.0.0`,
//! connected peers and DHT providers) for at most [`DEFAULT_PEER_TIMEOUT`];
//! the path-info a peer names is fetched over Bitswap (verified against its
//! CID) and must be the path-info of the store path asked for before it is
//! served. Misses are remembered for [`MISS_TTL`]. When Nix then asks for the
//! NAR, the path's DAG is fetched with many wants in flight while the NAR
//! streams, every block verified and stored, the NAR hash checked as it goes.
//!
//! The NAR URL names the path-info CID rather than the NAR hash: the CID
//! pins down the path-info (and with it the expected NAR hash and size), so
//! serving a NAR needs no second index and works for path-infos that are
//! only available from peers.

use crate::fetch::{fetch_dag, FetchOptions, NetworkBlocks};
use crate::net::NodeHandle;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cid::Cid;
use ipnix_bridge::export::{export_nar, load_pathinfo, ExportError};
use ipnix_bridge::hash::{check_hash_part, DEFAULT_STORE_DIR};
use ipnix_bridge::narinfo::{NarInfo, SecretKey};
use ipnix_bridge::PathInfo;
use ipnix_store::block::DAG_CBOR;
use ipnix_store::{BlockRead, Store, StoreError};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, Semaphore};

pub use crate::pathinfo::PATH_INDEX;
/// Prefix of the pin names `ipnix nix import` gives path-infos.
pub const PIN_PREFIX: &str = "nix:";
/// What `/nix-cache-info` says. Priority 30: ahead of cache.nixos.org (40),
/// as a local cache should be.
const CACHE_INFO: &str = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n";
/// Bytes per body chunk of a NAR, and chunks queued ahead of the client.
const NAR_CHUNK: usize = 256 * 1024;
const NAR_CHUNKS_AHEAD: usize = 8;
/// How long a narinfo miss waits for peers to say they have the path.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(100);
/// How long "no peer has it" is remembered.
pub const MISS_TTL: Duration = Duration::from_secs(10);
/// Store paths whose answer from peers is remembered.
const LEARNED_CAPACITY: usize = 4096;
/// Store-path DAGs fetched from peers at once.
const BACKGROUND_FETCHES: usize = 4;
/// Store-path DAGs fetched at once for NARs Nix is waiting for, besides
/// the background ones.
const PROMPT_FETCHES: usize = 4;
/// Path fetches started or queued at once; past this a narinfo answered
/// from peers no longer starts one ahead of the NAR request.
const MAX_PENDING_FETCHES: usize = 64;
/// How long the path-info block a peer named may take to arrive.
const PATHINFO_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What peers said about store-path hash parts: a path-info CID, or nobody
/// had it (with when). Bounded; the oldest entry goes first.
#[derive(Default)]
struct Learned {
    answers: HashMap<String, (Option<Cid>, Instant)>,
    order: VecDeque<String>,
}

impl Learned {
    /// `Some(answer)` while the answer is fresh (misses expire).
    fn get(&self, hash_part: &str) -> Option<Option<Cid>> {
        let (answer, at) = self.answers.get(hash_part)?;
        if answer.is_none() && at.elapsed() >= MISS_TTL {
            return None;
        }
        Some(*answer)
    }

    fn insert(&mut self, hash_part: &str, answer: Option<Cid>) {
        if self
            .answers
            .insert(hash_part.to_owned(), (answer, Instant::now()))
            .is_none()
        {
            self.order.push_back(hash_part.to_owned());
            while self.order.len() > LEARNED_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.answers.remove(&old);
                }
            }
        }
    }
}

/// The path-info CID the index holds for a store-path hash part.
pub fn indexed_pathinfo(store: &Store, hash_part: &str) -> Result<Option<Cid>, StoreError> {
    let Some(bytes) = store.index_get(PATH_INDEX, hash_part.as_bytes())? else {
        return Ok(None);
    };
    match Cid::try_from(bytes.as_slice()) {
        Ok(cid) => Ok(Some(cid)),
        Err(e) => {
            tracing::warn!(
                "nix cache: index entry for {hash_part} is not a CID ({e}); ignoring it"
            );
            Ok(None)
        }
    }
}

/// The path-info for a hash part, if indexed and readable: `Ok(None)` when
/// unknown or when its blocks are gone.
pub fn find_pathinfo<R: BlockRead>(
    store: &Store,
    blocks: &R,
    hash_part: &str,
) -> Result<Option<(Cid, PathInfo)>, ExportError> {
    let Some(cid) = indexed_pathinfo(store, hash_part)? else {
        return Ok(None);
    };
    match load_pathinfo(blocks, &cid) {
        Ok(info) if info.store_path().hash_part() == hash_part => Ok(Some((cid, info))),
        Ok(info) => {
            tracing::warn!(
                "nix cache: index maps {hash_part} to {cid}, the path-info of {}",
                info.store_path
            );
            Ok(None)
        }
        Err(ExportError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the binary cache reads from and signs with.
#[derive(Clone)]
pub struct NixCacheState {
    store: Arc<Store>,
    node: Option<NodeHandle>,
    sign_key: Option<Arc<SecretKey>>,
    /// How long to wait for a block from peers.
    fetch_timeout: Duration,
    /// How long a narinfo miss waits for peers' answers.
    peer_timeout: Duration,
    learned: Arc<Mutex<Learned>>,
    background_fetches: Arc<Semaphore>,
    prompt_fetches: Arc<Semaphore>,
    /// Path fetches started and not yet finished, by path-info CID: a NAR
    /// request joins the fetch its narinfo request started.
    fetches: Arc<Mutex<HashMap<Cid, PathFetch>>>,
}

/// `None` while a path fetch runs, then its outcome.
type FetchDone = tokio::sync::watch::Receiver<Option<Result<(), String>>>;

/// A path fetch in the registry: its outcome, and how to tell it that Nix
/// now waits for it.
#[derive(Clone)]
struct PathFetch {
    done: FetchDone,
    prompt: Arc<AtomicBool>,
    /// Lets a fetch still queued for a permit start at once.
    start_now: Arc<Notify>,
}

impl PathFetch {
    /// Nix asked for this NAR: the rest of the fetch goes ahead of fetches
    /// started for narinfos only (Nix asks every narinfo of a closure
    /// first, then the NARs one by one, in its own order).
    fn make_prompt(&self) {
        if !self.prompt.swap(true, Ordering::Relaxed) {
            self.start_now.notify_one();
        }
    }
}

impl std::fmt::Debug for NixCacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NixCacheState")
            .field("online", &self.node.is_some())
            .field(
                "sign_key",
                &self.sign_key.as_ref().map(|k| k.name().to_owned()),
            )
            .field("fetch_timeout", &self.fetch_timeout)
            .field("peer_timeout", &self.peer_timeout)
            .finish_non_exhaustive()
    }
}

impl NixCacheState {
    /// `node: None` serves local blocks only; `sign_key` adds the node's own
    /// `Sig:` to every narinfo (upstream signatures are always kept).
    pub fn new(
        store: Arc<Store>,
        node: Option<NodeHandle>,
        sign_key: Option<Arc<SecretKey>>,
    ) -> Self {
        Self {
            store,
            node,
            sign_key,
            fetch_timeout: Duration::from_secs(60),
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            learned: Arc::default(),
            background_fetches: Arc::new(Semaphore::new(BACKGROUND_FETCHES)),
            prompt_fetches: Arc::new(Semaphore::new(PROMPT_FETCHES)),
            fetches: Arc::default(),
        }
    }

    /// How long one block may take from peers before a NAR fails.
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// How long a narinfo this node lacks waits for peers.
    pub fn with_peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Learned> {
        self.learned.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The path-info of `hash_part` from peers: asks them (unless a fresh
    /// answer is remembered), fetches the block they name and checks that it
    /// is the path-info of this store path. `Ok(None)`: nobody has it.
    async fn pathinfo_from_peers(
        &self,
        node: &NodeHandle,
        hash_part: &str,
    ) -> Result<Option<(Cid, PathInfo)>, String> {
        let remembered = self.learned().get(hash_part);
        let cid = match remembered {
            Some(None) => return Ok(None),
            Some(Some(cid)) => cid,
            None => match node.find_pathinfo(hash_part, self.peer_timeout).await {
                Ok(Some((peer, cid))) => {
                    tracing::debug!("nix cache: {peer} has {hash_part} as {cid}");
                    cid
                }
                Ok(None) => {
                    self.learned().insert(hash_part, None);
                    return Ok(None);
                }
                Err(e) => return Err(e.to_string()),
            },
        };
        let blocks = NetworkBlocks::new(
            self.store.clone(),
            Some(node.clone()),
            PATHINFO_FETCH_TIMEOUT,
        );
        let loaded = tokio::task::spawn_blocking(move || load_pathinfo(&blocks, &cid))
            .await
            .map_err(|e| e.to_string())?;
        match loaded {
            Ok(info) if info.store_path().hash_part() == hash_part => {
                self.learned().insert(hash_part, Some(cid));
                // Nix asks for the NAR next (`nix copy` asks every narinfo of
                // a closure first): fetching now overlaps the paths' transfers.
                let _ = self.start_fetch(cid, &info, true);
                Ok(Some((cid, info)))
            }
            Ok(info) => {
                tracing::warn!(
                    "nix cache: a peer named {cid} for {hash_part}, but it is the path-info of {}",
                    info.store_path
                );
                self.learned().insert(hash_part, None);
                Ok(None)
            }
            Err(e) => {
                tracing::info!("nix cache: path-info {cid} for {hash_part} from peers: {e}");
                self.learned().insert(hash_part, None);
                Ok(None)
            }
        }
    }

    /// Starts fetching a store path's own DAG (not its references, which
    /// Nix asks for separately) from peers with many wants in flight, into
    /// one store session: every block verified, written in batches. Joins the
    /// fetch already running for `cid`, if any. At most [`BACKGROUND_FETCHES`]
    /// run at once; the others wait their turn. `None` when offline, or when
    /// `ahead` (nobody waits for it yet) and too many fetches are pending.
    fn start_fetch(&self, cid: Cid, info: &PathInfo, ahead: bool) -> Option<FetchDone> {
        let node = self.node.clone()?;
        let mut fetches = self.fetches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fetch) = fetches.get(&cid) {
            if !ahead {
                fetch.make_prompt();
            }
            return Some(fetch.done.clone());
        }
        if ahead && fetches.len() >= MAX_PENDING_FETCHES {
            return None;
        }
        let (tx, done) = tokio::sync::watch::channel(None);
        let fetch = PathFetch {
            done: done.clone(),
            prompt: Arc::new(AtomicBool::new(!ahead)),
            start_now: Arc::new(Notify::new()),
        };
        fetches.insert(cid, fetch.clone());
        drop(fetches);
        let opts = FetchOptions {
            block_timeout: self.fetch_timeout,
            skip: info.references.iter().map(|r| r.info).collect(),
            prompt: Some(fetch.prompt.clone()),
            ..FetchOptions::default()
        };
        let store = self.store.clone();
        let store_path = info.store_path.clone();
        let permits = self.background_fetches.clone();
        let prompt_permits = self.prompt_fetches.clone();
        let registry = self.fetches.clone();
        tokio::spawn(async move {
            // A fetch Nix waits for does not queue behind ones run ahead.
            let permit = if fetch.prompt.load(Ordering::Relaxed) {
                prompt_permits.acquire_owned().await
            } else {
                tokio::select! {
                    permit = permits.acquire_owned() => permit,
                    () = fetch.start_now.notified() => prompt_permits.acquire_owned().await,
                }
            };
            let outcome = match permit {
                Ok(_permit) => match fetch_dag(&node, store, cid, opts).await {
                    Ok(summary) => {
                        tracing::info!(
                            "nix cache: fetched {store_path}: {} blocks, {} bytes from peers in {:?}",
                            summary.fetched_blocks,
                            summary.fetched_bytes,
                            summary.elapsed
                        );
                        Ok(())
                    }
                    Err(e) => Err(format!("fetching {store_path} from peers: {e}")),
                },
                Err(_) => Err("the cache is shutting down".to_string()),
            };
            registry
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&cid);
            let _ = tx.send(Some(outcome));
        });
        Some(done)
    }

    /// Blocks as the cache reads them (store first, then peers). Must be
    /// called inside the tokio runtime.
    fn blocks(&self) -> NetworkBlocks {
        NetworkBlocks::new(self.store.clone(), self.node.clone(), self.fetch_timeout)
    }
}

/// `GET|HEAD /nix-cache-info`, `/{hash}.narinfo`, `/nar/{cid}.nar`.
pub fn router(state: NixCacheState) -> Router {
    Router::new()
        .route("/nix-cache-info", get(cache_info))
        .route("/{file}", get(narinfo))
        .route("/nar/{file}", get(nar))
        .with_state(state)
}

fn text(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn cache_info() -> Response {
    let mut response = CACHE_INFO.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-nix-cache-info"),
    );
    response
}

/// The narinfo the cache serves for a path-info.
pub fn render_narinfo(cid: &Cid, info: &PathInfo, sign_key: Option<&SecretKey>) -> String {
    let mut narinfo = NarInfo::from_pathinfo(
        info,
        nar_url(cid),
        "none",
        Some(info.nar_hash.clone()),
        Some(info.nar_size),
    );
    if let Some(key) = sign_key {
        // Added beside, never instead of, upstream signatures (even one by a
        // key of the same name).
        let sig = key.sign(&narinfo.fingerprint());
        if !narinfo.sigs.contains(&sig) {
            narinfo.sigs.push(sig);
            narinfo.sigs.sort();
        }
    }
    narinfo.render()
}

/// Where a path-info's NAR is, relative to the cache root.
pub fn nar_url(cid: &Cid) -> String {
    format!("nar/{cid}.nar")
}

async fn narinfo(State(state): State<NixCacheState>, Path(file): Path<String>) -> Response {
    let Some(hash_part) = file.strip_suffix(".narinfo") else {
        return text(StatusCode::NOT_FOUND, format!("/{file} is not served here"));
    };
    if check_hash_part(hash_part).is_err() {
        return text(
            StatusCode::NOT_FOUND,
            format!("{hash_part:?} is not a store path hash"),
        );
    }
    let hash_part = hash_part.to_owned();
    let blocks = state.blocks();
    let store = state.store.clone();
    let lookup = {
        let hash_part = hash_part.clone();
        tokio::task::spawn_blocking(move || find_pathinfo(&store, &blocks, &hash_part)).await
    };
    let local = match lookup {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            tracing::warn!("nix cache: narinfo {hash_part}: {e}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let found = match (local, &state.node) {
        (Some(found), _) => Some(found),
        (None, Some(node)) => match state.pathinfo_from_peers(node, &hash_part).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!("nix cache: asking peers for {hash_part}: {e}");
                None
            }
        },
        (None, None) => None,
    };
    let Some((cid, info)) = found else {
        return text(
            StatusCode::NOT_FOUND,
            format!("{hash_part} is not in this cache"),
        );
    };
    if info.store_dir() != DEFAULT_STORE_DIR {
        return text(
            StatusCode::NOT_FOUND,
            format!("{} is not in {DEFAULT_STORE_DIR}", info.store_path),
        );
    }
    let body = render_narinfo(&cid, &info, state.sign_key.as_deref());
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/x-nix-narinfo"),
    );
    response
}

async fn nar(
    State(state): State<NixCacheState>,
    Path(file): Path<String>,
    method: Method,
) -> Response {
    let Some(cid_text) = file.strip_suffix(".nar") else {
        return text(
            StatusCode::NOT_FOUND,
            format!("/nar/{file}: only uncompressed NARs (.nar) are served"),
        );
    };
    let cid = match Cid::try_from(cid_text) {
        Ok(cid) if cid.codec() == DAG_CBOR => cid,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!("/nar/{file}: NARs are named by path-info CID (dag-cbor)"),
            )
        }
    };
    let blocks = state.blocks();
    let loaded = {
        let blocks = blocks.clone();
        tokio::task::spawn_blocking(move || load_pathinfo(&blocks, &cid)).await
    };
    let info = match loaded {
        Ok(Ok(info)) => info,
        Ok(Err(ExportError::Missing(_))) => {
            return text(StatusCode::NOT_FOUND, format!("{cid} is not available"))
        }
        Ok(Err(e @ ExportError::PathInfo(_))) => {
            return text(StatusCode::NOT_FOUND, format!("{cid}: {e}"))
        }
        Ok(Err(e)) => {
            tracing::warn!("nix cache: NAR {cid}: {e}");
            return text(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let mut response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        // A path learned from peers may be partly here (an earlier transfer
        // broke off): the walk skips what is stored and fetches the rest.
        // Fetching first and rendering from the store after costs the time
        // to first byte, but writes every block once, in batches, and asks
        // the network once per block (DESIGN.md, measured decisions).
        let from_peers = state.learned().get(info.store_path().hash_part()) == Some(Some(cid));
        let fetch = if from_peers || !matches!(state.store.has(&info.root.cid), Ok(true)) {
            state.start_fetch(cid, &info, false)
        } else {
            None
        };
        Response::new(nar_stream(blocks, cid, info.store_path.clone(), fetch))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.nar_size));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=29030400, immutable"),
    );
    response
}

type Chunk = Result<Bytes, std::io::Error>;

/// Sends NAR bytes in chunks but always holds the latest full chunk back:
/// only once the render (and its NAR hash check) succeeded is the rest
/// released, so a mismatch leaves the client with a truncated body.
struct HeldBackWriter {
    buf: Vec<u8>,
    held: Option<Bytes>,
    tx: mpsc::Sender<Chunk>,
}

impl HeldBackWriter {
    fn send(&self, chunk: Bytes) -> std::io::Result<()> {
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }

    /// The render succeeded: send what was held back.
    fn release(mut self) -> std::io::Result<()> {
        if let Some(held) = self.held.take() {
            self.send(held)?;
        }
        if !self.buf.is_empty() {
            let rest = Bytes::from(std::mem::take(&mut self.buf));
            self.send(rest)?;
        }
        Ok(())
    }
}

impl Write for HeldBackWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= NAR_CHUNK {
            let full = Bytes::from(std::mem::replace(
                &mut self.buf,
                Vec::with_capacity(NAR_CHUNK),
            ));
            if let Some(previous) = self.held.replace(full) {
                self.send(previous)?;
            }
        }
        Ok(data.len())
    }

    /// Deliberately nothing: releasing is [`HeldBackWriter::release`]'s job.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders the NAR on a blocking thread into a bounded channel feeding the body.
fn nar_stream(
    blocks: NetworkBlocks,
    cid: Cid,
    store_path: String,
    fetch_first: Option<FetchDone>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Chunk>(NAR_CHUNKS_AHEAD);
    tokio::spawn(async move {
        if let Some(mut done) = fetch_first {
            let outcome = match done.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
                Err(_) => Err("the path fetch stopped".to_string()),
            };
            if let Err(e) = outcome {
                tracing::warn!("nix cache: NAR of {store_path} ({cid}) not served: {e}");
                let _ = tx.send(Err(std::io::Error::other(e))).await;
                return;
            }
        }
        render_nar(blocks, cid, store_path, tx).await;
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Renders the NAR on a blocking thread into the body's bounded channel.
async fn render_nar(blocks: NetworkBlocks, cid: Cid, store_path: String, tx: mpsc::Sender<Chunk>) {
    let rendered = tokio::task::spawn_blocking(move || {
        let mut writer = HeldBackWriter {
            buf: Vec::with_capacity(NAR_CHUNK),
            held: None,
            tx: tx.clone(),
        };
        let started = Instant::now();
        let outcome = match export_nar(&blocks, &cid, &mut writer) {
            Ok(_) => writer.release().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        tracing::debug!(
            "nix cache: NAR of {store_path} rendered in {:?}",
            started.elapsed()
        );
        if let Err(e) = outcome {
            tracing::warn!("nix cache: NAR of {store_path} ({cid}) cut short: {e}");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    if let Err(e) = rendered.await {
        tracing::warn!("nix cache: NAR render task failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(mut rx: mpsc::Receiver<Chunk>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            out.extend_from_slice(&item.expect("chunk"));
        }
        out
    }

    #[test]
    fn held_back_writer_keeps_the_tail_until_released() {
        let (tx, rx) = mpsc::channel(64);
        let mut writer = HeldBackWriter {
            buf: Vec::new(),
            held: None,
            tx,
        };
        let data: Vec<u8> = (0..(3 * NAR_CHUNK + 17)).map(|i| i as u8).collect();
        for piece in data.chunks(1000) {
            writer.write_all(piece).expect("write");
        }
        writer.flush().expect("flush");
        let (tx2, rx2) = mpsc::channel(64);
        let sent_before = drain(rx);
        assert!(
            sent_before.len() < data.len() - NAR_CHUNK,
            "at least a chunk is held back, sent {}",
            sent_before.len()
        );
        assert_eq!(sent_before, data[..sent_before.len()]);
        writer.tx = tx2;
        writer.release().expect("release");
        let mut all = sent_before;
        all.extend(drain(rx2));
        assert_eq!(all, data);
    }

    #[test]
    fn narinfo_keeps_upstream_sigs_and_adds_ours() {
        use ipnix_bridge::hash::NixHash;
        use ipnix_bridge::pathinfo::{Root, RootKind};
        use ipnix_store::block::{cid_for, GIT_RAW};
        let upstream = SecretKey::from_seed("upstream-1", [7; 32]);
        let ours = SecretKey::from_seed("ipnix-1", [9; 32]);
        let mut info = PathInfo {
            store_path: "/nix/store/00000000000000000000000000000000-x".into(),
            root: Root {
                kind: RootKind::Regular,
                cid: cid_for(GIT_RAW, b"blob 0\0"),
            },
            nar_hash: NixHash::sha256([1; 32]),
            nar_size: 120,
            references: Vec::new(),
            self_reference: true,
            signatures: Vec::new(),
            deriver: None,
            ca: None,
            blobs: Vec::new(),
        };
        let fp = ipnix_bridge::narinfo::fingerprint(
            &info.store_path,
            &info.nar_hash,
            info.nar_size,
            &info.reference_paths(),
        );
        info.signatures = vec![upstream.sign(&fp)];
        let (cid, _) = info.to_block().expect("encode");
        let text = render_narinfo(&cid, &info, Some(&ours));
        let parsed = NarInfo::parse(text.as_bytes()).expect("parse");
        assert_eq!(parsed.url, format!("nar/{cid}.nar"));
        assert_eq!(parsed.compression, "none");
        assert_eq!(
            parsed.references,
            vec!["00000000000000000000000000000000-x".to_string()]
        );
        let keys = [upstream.public_key(), ours.public_key()];
        let mut verified = parsed.verified_by(&keys);
        verified.sort();
        assert_eq!(
            verified,
            vec!["ipnix-1".to_string(), "upstream-1".to_string()]
        );
        assert_eq!(parsed.sigs.len(), 2);
    }
}
