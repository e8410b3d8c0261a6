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
//!
//! Signing (DESIGN.md I-26): with `--sign-key`, a narinfo gets the node's own
//! `Sig:` only when the node checked the path by its own policy ([`vouch`]):
//! imported from this machine's Nix store (recorded in [`LOCAL_NIX_INDEX`]
//! at import), signed upstream by a key in `--trusted-public-keys`, or a
//! `fixed:r:sha256` path whose store path, NAR hash and (empty) references
//! are what its content address says. Never because a peer has it. Every
//! other narinfo is served with its upstream signatures only (I-14).

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
use ipnix_bridge::ca::{ContentAddress, FileIngestion};
use ipnix_bridge::export::{load_pathinfo, ExportError};
use ipnix_bridge::hash::{check_hash_part, HashAlgo, DEFAULT_STORE_DIR};
use ipnix_bridge::narinfo::{NarInfo, PublicKey, SecretKey};
use ipnix_bridge::PathInfo;
use ipnix_store::block::DAG_CBOR;
use ipnix_store::{BlockRead, Session, Store, StoreError};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, Semaphore};

pub use crate::pathinfo::PATH_INDEX;
/// Prefix of the pin names `ipnix nix import` gives path-infos.
pub const PIN_PREFIX: &str = "nix:";
/// Store index namespace: path-info CID (bytes) -> its store path, for
/// path-infos that `ipnix nix import` made from this machine's own Nix store
/// (`nix path-info`, `nix-store --dump`), written in the same transaction
/// as the import. Keyed by CID, so it vouches for exactly that metadata and
/// NAR hash, whoever later names the same store path. Never written for
/// `--from-cache` imports or anything from peers (DESIGN.md I-26).
pub const LOCAL_NIX_INDEX: &str = "nix-trusted";
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

/// Stages "this path-info came from the local Nix store" in the session
/// that imports it (DESIGN.md I-26).
pub fn stage_local_nix(session: &mut Session<'_>, pathinfo: &Cid, store_path: &str) {
    session.index_put(LOCAL_NIX_INDEX, &pathinfo.to_bytes(), store_path.as_bytes());
}

/// Records the same for a path-info already in the store, once its NAR hash,
/// size and references were found equal to the local Nix store's.
pub fn record_local_nix(store: &Store, pathinfo: &Cid, store_path: &str) -> Result<(), StoreError> {
    store.index_put(LOCAL_NIX_INDEX, &pathinfo.to_bytes(), store_path.as_bytes())
}

/// Whether `pathinfo` was imported from this machine's Nix store.
pub fn is_from_local_nix(store: &Store, pathinfo: &Cid) -> Result<bool, StoreError> {
    Ok(store
        .index_get(LOCAL_NIX_INDEX, &pathinfo.to_bytes())?
        .is_some())
}

/// Why the node puts its own signature on a path's narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Vouch {
    /// Imported from this machine's Nix store ([`LOCAL_NIX_INDEX`]).
    LocalNixStore,
    /// An upstream signature verifies against this configured key.
    TrustedKey(String),
    /// `fixed:r:sha256:H`: the store path is the one H names, no references,
    /// and H is the NAR hash, which every render checks as it streams.
    ContentAddress,
}

/// The node's signing policy (DESIGN.md I-26): `Some(reason)` when the node
/// may sign `info`, `None` otherwise. `from_local_nix` is what
/// [`is_from_local_nix`] says of the path-info's CID; `trusted_keys` are the
/// operator's (`--trusted-public-keys`). Where the path-info came from (the
/// store index or a peer) plays no part: a peer's word is never a reason.
pub fn vouch(info: &PathInfo, from_local_nix: bool, trusted_keys: &[PublicKey]) -> Option<Vouch> {
    if from_local_nix {
        return Some(Vouch::LocalNixStore);
    }
    if !trusted_keys.is_empty() && !info.signatures.is_empty() {
        let fingerprint = ipnix_bridge::narinfo::fingerprint(
            &info.store_path,
            &info.nar_hash,
            info.nar_size,
            &info.reference_paths(),
        );
        if let Some(key) = trusted_keys.iter().find(|key| {
            info.signatures
                .iter()
                .any(|sig| key.verify(&fingerprint, sig))
        }) {
            return Some(Vouch::TrustedKey(key.name().to_owned()));
        }
    }
    content_address_holds(info).then_some(Vouch::ContentAddress)
}

/// Whether `info` is a content-addressed path this node can check for free:
/// `fixed:r:sha256:H` naming exactly this store path, with no references
/// (not even itself), and H equal to the NAR hash, so the render's NAR hash
/// check (I-12) proves the content. Flat (`fixed:<algo>:H`, a hash of the
/// file's bytes), other algorithms and `text:` would need the content hashed
/// again on every narinfo; they are not signed, and need not be: Nix accepts
/// a valid content-addressed path without any signature.
fn content_address_holds(info: &PathInfo) -> bool {
    let Some(text) = &info.ca else {
        return false;
    };
    let Ok(ca) = ContentAddress::parse(text) else {
        return false;
    };
    let ContentAddress::Fixed {
        method: FileIngestion::Recursive,
        hash,
    } = &ca
    else {
        return false;
    };
    hash.algo() == HashAlgo::Sha256
        && *hash == info.nar_hash
        && info.references.is_empty()
        && !info.self_reference
        && ca.names(info.store_dir(), &info.store_path())
}

/// What the binary cache reads from and signs with.
#[derive(Clone)]
pub struct NixCacheState {
    store: Arc<Store>,
    node: Option<NodeHandle>,
    sign_key: Option<Arc<SecretKey>>,
    /// Upstream keys whose signature earns a path the node's own (I-26).
    trusted_keys: Arc<[PublicKey]>,
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
    /// Last: Software Heritage, for pinned lists' failed fixed-output paths.
    swh: Option<Arc<crate::http::swh::SwhFallback>>,
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
            .field("trusted_keys", &self.trusted_keys.len())
            .field("fetch_timeout", &self.fetch_timeout)
            .field("peer_timeout", &self.peer_timeout)
            .finish_non_exhaustive()
    }
}

impl NixCacheState {
    /// `node: None` serves local blocks only; `sign_key` adds the node's own
    /// `Sig:` to the narinfos of paths its policy vouches for ([`vouch`]);
    /// upstream signatures are always kept.
    pub fn new(
        store: Arc<Store>,
        node: Option<NodeHandle>,
        sign_key: Option<Arc<SecretKey>>,
    ) -> Self {
        Self {
            store,
            node,
            sign_key,
            trusted_keys: Arc::from(Vec::new()),
            fetch_timeout: Duration::from_secs(60),
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            learned: Arc::default(),
            background_fetches: Arc::new(Semaphore::new(BACKGROUND_FETCHES)),
            prompt_fetches: Arc::new(Semaphore::new(PROMPT_FETCHES)),
            fetches: Arc::default(),
            swh: None,
        }
    }

    /// Asks Software Heritage for a fixed-output path of a pinned list's
    /// failed entry that neither the store nor the peers have.
    pub fn with_swh(mut self, swh: Option<Arc<crate::http::swh::SwhFallback>>) -> Self {
        self.swh = swh;
        self
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

    /// Upstream keys (Nix's `trusted-public-keys`) whose valid signature on a
    /// path earns it the node's own.
    pub fn with_trusted_keys(mut self, keys: Vec<PublicKey>) -> Self {
        self.trusted_keys = Arc::from(keys);
        self
    }

    /// The key to sign `info` with: the node's, when [`vouch`] allows.
    async fn signer_for(&self, cid: &Cid, info: &PathInfo) -> Option<Arc<SecretKey>> {
        let key = self.sign_key.clone()?;
        let store = self.store.clone();
        let cid_owned = *cid;
        let looked_up = tokio::task::spawn_blocking(move || is_from_local_nix(&store, &cid_owned))
            .await
            .map_err(|e| e.to_string())
            .and_then(|found| found.map_err(|e| e.to_string()));
        let from_local_nix = looked_up.unwrap_or_else(|e| {
            tracing::warn!("nix cache: provenance of {cid}: {e}; not signing it");
            false
        });
        match vouch(info, from_local_nix, &self.trusted_keys) {
            Some(reason) => {
                tracing::debug!("nix cache: signing {} ({reason:?})", info.store_path);
                Some(key)
            }
            None => {
                tracing::debug!(
                    "nix cache: not signing {}: not from the local Nix store, no trusted upstream signature, no checked content address",
                    info.store_path
                );
                None
            }
        }
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

/// The narinfo the cache serves for a path-info, signed also by `sign_key`
/// if given: the caller passes the node's key only for paths [`vouch`]
/// allows.
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

async fn narinfo(
    State(state): State<NixCacheState>,
    Path(file): Path<String>,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
) -> Response {
    let Some(hash_part) = file.strip_suffix(".narinfo") else {
        // One path segment is also the hashed mirror's SRI form (`/sha256-...`).
        let mirror = crate::http::mirror::MirrorState {
            store: state.store.clone(),
            node: state.node.clone(),
            peers: crate::sourceshare::FindConfig::new(state.peer_timeout)
                .with_fetch_timeout(state.fetch_timeout),
            swh: state.swh.clone(),
        };
        return crate::http::mirror::serve(&mirror, &method, &format!("/{file}"), &headers).await;
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
    let found = match (found, &state.swh) {
        (None, Some(swh)) if swh.store_path(&hash_part).await => {
            let blocks = state.blocks();
            let store = state.store.clone();
            let hash_part = hash_part.clone();
            tokio::task::spawn_blocking(move || find_pathinfo(&store, &blocks, &hash_part))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        }
        (found, _) => found,
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
    let signer = state.signer_for(&cid, &info).await;
    let body = render_narinfo(&cid, &info, signer.as_deref());
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
        let outcome = match ipnix_bridge::export_nar_with(
            &blocks,
            &cid,
            &mut writer,
            &ipnix_sources::tarball::RecipeRebuilder::new(&blocks),
        ) {
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

    /// A small input-addressed path-info (no references), for the policy tests.
    fn plain_pathinfo(store_path: &str) -> PathInfo {
        use ipnix_bridge::hash::NixHash;
        use ipnix_bridge::pathinfo::{Root, RootKind};
        use ipnix_store::block::{cid_for, GIT_RAW};
        PathInfo {
            store_path: store_path.into(),
            root: Root {
                kind: RootKind::Executable,
                cid: cid_for(GIT_RAW, b"blob 0\0"),
            },
            nar_hash: NixHash::sha256([3; 32]),
            nar_size: 120,
            references: Vec::new(),
            self_reference: false,
            signatures: Vec::new(),
            deriver: None,
            ca: None,
            blobs: Vec::new(),
        }
    }

    fn fingerprint_of(info: &PathInfo) -> String {
        ipnix_bridge::narinfo::fingerprint(
            &info.store_path,
            &info.nar_hash,
            info.nar_size,
            &info.reference_paths(),
        )
    }

    fn sigs_in(narinfo: &str) -> usize {
        narinfo.lines().filter(|l| l.starts_with("Sig: ")).count()
    }

    /// I-26: a path-info a peer (or a `--from-cache` import) handed over,
    /// unsigned, is not signed by the node whatever it claims to be.
    #[test]
    fn i26_a_peers_unsigned_path_is_not_vouched_for() {
        let ours = SecretKey::from_seed("ipnix-1", [9; 32]);
        let forged = plain_pathinfo("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.1");
        assert_eq!(vouch(&forged, false, &[]), None);
        assert_eq!(vouch(&forged, false, &[ours.public_key()]), None);
        // A signature by an untrusted key, or by a trusted key's name over
        // other metadata, is no reason either.
        let mut signed = forged.clone();
        let stranger = SecretKey::from_seed("stranger-1", [4; 32]);
        signed.signatures = vec![stranger.sign(&fingerprint_of(&signed))];
        let trusted = SecretKey::from_seed("upstream-1", [5; 32]);
        assert_eq!(vouch(&signed, false, &[trusted.public_key()]), None);
        let mut other = forged.clone();
        other.nar_size = 128;
        signed.signatures = vec![trusted.sign(&fingerprint_of(&other))];
        assert_eq!(vouch(&signed, false, &[trusted.public_key()]), None);
        // The cache then renders it with no signature of ours.
        let (cid, _) = forged.to_block().expect("encode");
        assert_eq!(sigs_in(&render_narinfo(&cid, &forged, None)), 0);
    }

    #[test]
    fn i26_local_nix_store_and_trusted_upstream_signatures_are_vouched_for() {
        let info = plain_pathinfo("/nix/store/00000000000000000000000000000000-x");
        assert_eq!(vouch(&info, true, &[]), Some(Vouch::LocalNixStore));
        let upstream = SecretKey::from_seed("upstream-1", [5; 32]);
        let unrelated = SecretKey::from_seed("unrelated-1", [6; 32]);
        let mut signed = info.clone();
        signed.signatures = vec![upstream.sign(&fingerprint_of(&signed))];
        assert_eq!(
            vouch(
                &signed,
                false,
                &[unrelated.public_key(), upstream.public_key()]
            ),
            Some(Vouch::TrustedKey("upstream-1".into()))
        );
        assert_eq!(vouch(&signed, false, &[unrelated.public_key()]), None);
        assert_eq!(vouch(&signed, false, &[]), None);
    }

    #[test]
    fn i26_only_a_checked_recursive_sha256_content_address_is_vouched_for() {
        use ipnix_bridge::hash::NixHash;
        let nar_hash = NixHash::sha256([7; 32]);
        let ca = ContentAddress::fixed(FileIngestion::Recursive, nar_hash.clone());
        let path = ca
            .fixed_output_path("/nix/store", "source")
            .expect("valid name")
            .expect("fixed");
        let mut info = plain_pathinfo(&path);
        info.nar_hash = nar_hash.clone();
        info.ca = Some(ca.to_string());
        assert_eq!(vouch(&info, false, &[]), Some(Vouch::ContentAddress));

        // The NAR hash is not the one the CA names.
        let mut wrong_hash = info.clone();
        wrong_hash.nar_hash = NixHash::sha256([8; 32]);
        assert_eq!(vouch(&wrong_hash, false, &[]), None);
        // The store path is not the one the CA names.
        let mut wrong_path = info.clone();
        wrong_path.store_path = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-source".into();
        assert_eq!(vouch(&wrong_path, false, &[]), None);
        // References (even to itself) are outside what ca.rs derives.
        let mut self_ref = info.clone();
        self_ref.self_reference = true;
        assert_eq!(vouch(&self_ref, false, &[]), None);
        let mut with_ref = info.clone();
        with_ref.references = vec![ipnix_bridge::pathinfo::Reference {
            path: "/nix/store/00000000000000000000000000000000-x".into(),
            info: plain_pathinfo("/nix/store/00000000000000000000000000000000-x")
                .to_block()
                .expect("encode")
                .0,
        }];
        assert_eq!(vouch(&with_ref, false, &[]), None);
        // Unparsable CA text.
        let mut garbage = info.clone();
        garbage.ca = Some("fixed:r:sha256:nope".into());
        assert_eq!(vouch(&garbage, false, &[]), None);
        // Flat: the hash is of the file's bytes, which the render does not
        // check; not signed (Nix accepts it unsigned when valid).
        let flat = ContentAddress::fixed(FileIngestion::Flat, nar_hash.clone());
        let flat_path = flat
            .fixed_output_path("/nix/store", "x.tar.gz")
            .expect("valid name")
            .expect("fixed");
        let mut flat_info = plain_pathinfo(&flat_path);
        flat_info.ca = Some(flat.to_string());
        assert_eq!(vouch(&flat_info, false, &[]), None);
        // text: is never signed for its CA.
        let mut text_info = info.clone();
        text_info.ca = Some(format!("text:{}", nar_hash.to_nix32()));
        assert_eq!(vouch(&text_info, false, &[]), None);
    }

    #[test]
    fn i26_local_nix_provenance_is_recorded_by_pathinfo_cid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let info = plain_pathinfo("/nix/store/00000000000000000000000000000000-x");
        let (cid, _) = info.to_block().expect("encode");
        let mut other = info.clone();
        other.nar_size = 128;
        let (other_cid, _) = other.to_block().expect("encode");
        assert!(!is_from_local_nix(&store, &cid).expect("read"));
        let mut session = store.session();
        stage_local_nix(&mut session, &cid, &info.store_path);
        session.finish(None).expect("commit");
        assert!(is_from_local_nix(&store, &cid).expect("read"));
        // Same store path, other metadata: not vouched for.
        assert!(!is_from_local_nix(&store, &other_cid).expect("read"));
        record_local_nix(&store, &other_cid, &other.store_path).expect("record");
        assert!(is_from_local_nix(&store, &other_cid).expect("read"));
        // A session dropped unfinished records nothing.
        let third = plain_pathinfo("/nix/store/11111111111111111111111111111111-y");
        let (third_cid, _) = third.to_block().expect("encode");
        let mut dropped = store.session();
        stage_local_nix(&mut dropped, &third_cid, &third.store_path);
        drop(dropped);
        assert!(!is_from_local_nix(&store, &third_cid).expect("read"));
    }
}
