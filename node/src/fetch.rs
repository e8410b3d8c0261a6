//! Fetching from peers into the store: [`fetch_dag`] walks a DAG from its root
//! with many Bitswap wants in flight and writes every verified block through
//! one store session (so nothing is collected mid-fetch, and the pin, if any,
//! lands in the same transaction); [`NetworkBlocks`] is a [`BlockRead`] that
//! falls back to the network for blocks the store lacks (streaming `cat`,
//! the gateway, the Nix cache).

use crate::net::{NetError, NodeHandle};
use bytes::Bytes;
use cid::Cid;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use ipnix_store::block::{IDENTITY, RAW};
use ipnix_store::links::{dag_links, DagLinks, LinksError};
use ipnix_store::{BlockRead, PinMode, Store, StoreError};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Blocks handed to the store writer before the walk waits for it.
const WRITER_QUEUE: usize = 8;
/// CIDs remembered as done, so a DAG that repeats a block asks for it once.
const RECENT_DONE: usize = 1 << 16;
/// Without a new block for this long, the DHT is asked for the root's providers again.
const STALL_REDISCOVER: Duration = Duration::from_secs(5);
/// Block size assumed before any block has arrived: the largest chunk an
/// importer makes (1 MiB), so the first window cannot overshoot the
/// in-flight byte budget; it widens as smaller blocks arrive.
const ASSUMED_BLOCK_SIZE: usize = 1024 * 1024;
/// Children prefetched at once by [`NetworkBlocks`].
const PREFETCH_PERMITS: usize = 64;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("block {cid} could not be fetched: {source}")]
    Block {
        cid: Box<Cid>,
        source: Box<NetError>,
    },
    #[error("block {cid} is malformed: {source}")]
    Links {
        cid: Box<Cid>,
        source: Box<LinksError>,
    },
    #[error(transparent)]
    Store(Box<StoreError>),
    #[error("the store writer stopped unexpectedly")]
    WriterGone,
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        FetchError::Store(Box::new(e))
    }
}

impl FetchError {
    fn block(cid: Cid, source: NetError) -> Self {
        FetchError::Block {
            cid: Box::new(cid),
            source: Box::new(source),
        }
    }

    fn links(cid: Cid, source: LinksError) -> Self {
        FetchError::Links {
            cid: Box::new(cid),
            source: Box::new(source),
        }
    }

    /// The block that could not be fetched or read, if that is the cause.
    pub fn cid(&self) -> Option<&Cid> {
        match self {
            FetchError::Block { cid, .. } | FetchError::Links { cid, .. } => Some(cid),
            _ => None,
        }
    }
}

/// Where a fetch stands; passed to the progress callback after every block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchProgress {
    /// Blocks received from peers and stored.
    pub fetched_blocks: u64,
    pub fetched_bytes: u64,
    /// Blocks that were already in the store.
    pub local_blocks: u64,
    /// Wants outstanding right now.
    pub in_flight: usize,
}

/// Called after every block; keep it cheap.
pub type ProgressFn = Arc<dyn Fn(&FetchProgress) + Send + Sync>;

/// How [`fetch_dag`] runs.
#[derive(Clone)]
pub struct FetchOptions {
    /// Wants in flight at most.
    pub max_in_flight: usize,
    /// Bytes expected in flight at most (estimated from the blocks seen so
    /// far); bounds memory when blocks are large.
    pub max_in_flight_bytes: usize,
    /// How long one block may take once asked for.
    pub block_timeout: Duration,
    /// Pin the root in the same transaction as the last blocks.
    pub pin: Option<(PinMode, Option<String>)>,
    /// CIDs the walk neither fetches nor descends into: a path-info's
    /// references, to fetch one store path rather than its whole closure.
    pub skip: Vec<Cid>,
    pub progress: Option<ProgressFn>,
    /// Once set, the wants still to be made are prompt (someone waits for
    /// this DAG now): peers serve them before walks that run ahead.
    pub prompt: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for FetchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("max_in_flight", &self.max_in_flight)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("block_timeout", &self.block_timeout)
            .field("pin", &self.pin)
            .field("skip", &self.skip.len())
            .finish_non_exhaustive()
    }
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            max_in_flight_bytes: 32 * 1024 * 1024,
            block_timeout: Duration::from_secs(120),
            pin: None,
            skip: Vec::new(),
            progress: None,
            prompt: None,
        }
    }
}

/// What a finished fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchSummary {
    pub fetched_blocks: u64,
    pub fetched_bytes: u64,
    pub local_blocks: u64,
    pub elapsed: Duration,
}

enum WriterMsg {
    Put(Cid, Bytes),
    TempPin(Cid),
    Finish(Option<(Cid, PinMode, Option<String>)>),
}

/// The one thread that writes: store sessions are blocking I/O and keep the
/// temp pins of everything they saw until `finish`.
struct Writer {
    tx: mpsc::Sender<WriterMsg>,
    done: oneshot::Receiver<Result<(), FetchError>>,
}

impl Writer {
    fn spawn(store: Arc<Store>) -> Writer {
        let (tx, mut rx) = mpsc::channel::<WriterMsg>(WRITER_QUEUE);
        let (done_tx, done) = oneshot::channel();
        std::thread::Builder::new()
            .name("ipnix-fetch-writer".into())
            .spawn(move || {
                let result = (|| -> Result<(), FetchError> {
                    let mut session = store.session();
                    while let Some(msg) = rx.blocking_recv() {
                        match msg {
                            WriterMsg::Put(cid, data) => {
                                // The Bitswap client verified it against its CID.
                                session.put_hashed(cid, &data)?;
                            }
                            WriterMsg::TempPin(cid) => session.temp_pin(cid),
                            WriterMsg::Finish(pin) => return Ok(session.finish(pin)?),
                        }
                    }
                    // The walk gave up: dropping the session leaves its blocks unpinned.
                    Ok(())
                })();
                let _ = done_tx.send(result);
            })
            .expect("spawning a thread only fails when the OS is out of resources");
        Writer { tx, done }
    }

    async fn send(&mut self, msg: WriterMsg) -> Result<(), FetchError> {
        if self.tx.send(msg).await.is_ok() {
            return Ok(());
        }
        // The writer hung up: it failed; report its error.
        match (&mut self.done).await {
            Ok(Err(e)) => Err(e),
            _ => Err(FetchError::WriterGone),
        }
    }

    async fn finish(
        mut self,
        pin: Option<(Cid, PinMode, Option<String>)>,
    ) -> Result<(), FetchError> {
        self.send(WriterMsg::Finish(pin)).await?;
        match self.done.await {
            Ok(result) => result,
            Err(_) => Err(FetchError::WriterGone),
        }
    }
}

/// A bounded memory of CIDs already handled in this walk.
struct RecentSet {
    set: HashSet<Cid>,
    order: VecDeque<Cid>,
}

impl RecentSet {
    fn new() -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
    fn contains(&self, cid: &Cid) -> bool {
        self.set.contains(cid)
    }
    fn insert(&mut self, cid: Cid) {
        if self.set.insert(cid) {
            self.order.push_back(cid);
            if self.order.len() > RECENT_DONE {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// What the store says about one CID of the walk.
enum Local {
    Missing,
    /// Present; its links (none for raw blocks, which are not read).
    Present(DagLinks),
}

async fn check_local(store: &Arc<Store>, cid: Cid) -> Result<Local, FetchError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || -> Result<Local, FetchError> {
        if !store.has(&cid)? {
            return Ok(Local::Missing);
        }
        if cid.codec() == RAW {
            return Ok(Local::Present(DagLinks::default()));
        }
        match store.get(&cid)? {
            Some(data) => Ok(Local::Present(
                dag_links(&cid, &data).map_err(|source| FetchError::links(cid, source))?,
            )),
            // Deleted between the two calls (GC): fetch it again.
            None => Ok(Local::Missing),
        }
    })
    .await
    .map_err(|_| FetchError::WriterGone)?
}

/// Fetches the whole DAG under `root` into `store`: blocks already stored are
/// walked (and temp-pinned), missing ones are asked from connected peers,
/// and, when nobody has the root, from providers found in the DHT. With
/// `opts.pin` the root is pinned in the same transaction as the last blocks;
/// without it the blocks stay unpinned once the fetch returns (GC may take
/// them), so callers that keep data pass a pin. Memory stays bounded by the
/// in-flight window whatever the DAG's size.
pub async fn fetch_dag(
    node: &NodeHandle,
    store: Arc<Store>,
    root: Cid,
    opts: FetchOptions,
) -> Result<FetchSummary, FetchError> {
    let started = Instant::now();
    let mut writer = Writer::spawn(store.clone());
    let mut progress = FetchProgress::default();
    let mut pending: Vec<Cid> = vec![root];
    let mut recent = RecentSet::new();
    // Large blobs a path-info covers have no git-raw block of their own
    // (DESIGN.md I-11); the set grows with path-infos walked, not with bytes.
    let mut covered: HashSet<Cid> = opts.skip.iter().copied().collect();
    let mut in_flight = FuturesUnordered::new();
    let mut avg_block = ASSUMED_BLOCK_SIZE;
    let mut last_block = Instant::now();
    let mut last_rediscover = Instant::now();
    let mut stall_check = tokio::time::interval(Duration::from_secs(1));
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        // Fill the window (depth-first: the stack's top is the next block in order).
        let window =
            (opts.max_in_flight_bytes / avg_block.max(1)).clamp(8, opts.max_in_flight.max(1));
        while in_flight.len() < window {
            let Some(cid) = pending.pop() else { break };
            if recent.contains(&cid) || cid.hash().code() == IDENTITY || covered.contains(&cid) {
                continue;
            }
            recent.insert(cid);
            match check_local(&store, cid).await? {
                Local::Present(dag) => {
                    writer.send(WriterMsg::TempPin(cid)).await?;
                    progress.local_blocks += 1;
                    covered.extend(dag.covered);
                    pending.extend(dag.children.into_iter().rev());
                }
                Local::Missing => {
                    let node = node.clone();
                    let timeout = opts.block_timeout;
                    let is_root = cid == root;
                    let prompt = opts
                        .prompt
                        .as_ref()
                        .is_some_and(|p| p.load(Ordering::Relaxed));
                    in_flight.push(async move {
                        let result = if is_root {
                            node.get_block(cid, timeout).await
                        } else {
                            node.want_block(cid, timeout, prompt).await
                        };
                        (cid, result)
                    });
                }
            }
        }
        progress.in_flight = in_flight.len();
        if in_flight.is_empty() {
            if pending.is_empty() {
                break;
            }
            continue;
        }

        tokio::select! {
            Some((cid, result)) = in_flight.next() => {
                let data = result.map_err(|source| FetchError::block(cid, source))?;
                let dag = dag_links(&cid, &data).map_err(|source| FetchError::links(cid, source))?;
                progress.fetched_blocks += 1;
                progress.fetched_bytes += data.len() as u64;
                progress.in_flight = in_flight.len();
                avg_block = (progress.fetched_bytes / progress.fetched_blocks) as usize;
                last_block = Instant::now();
                writer.send(WriterMsg::Put(cid, data)).await?;
                covered.extend(dag.covered);
                pending.extend(dag.children.into_iter().rev());
                if let Some(report) = &opts.progress {
                    report(&progress);
                }
            }
            _ = stall_check.tick() => {
                let now = Instant::now();
                if now.duration_since(last_block) >= STALL_REDISCOVER
                    && now.duration_since(last_rediscover) >= STALL_REDISCOVER * 6
                {
                    last_rediscover = now;
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(e) = node.connect_providers(root, 8, Duration::from_secs(30)).await {
                            tracing::debug!("looking for providers of {root}: {e}");
                        }
                    });
                }
            }
        }
    }

    let pin = opts.pin.map(|(mode, name)| (root, mode, name));
    writer.finish(pin).await?;
    Ok(FetchSummary {
        fetched_blocks: progress.fetched_blocks,
        fetched_bytes: progress.fetched_bytes,
        local_blocks: progress.local_blocks,
        elapsed: started.elapsed(),
    })
}

/// A [`BlockRead`] over the store that asks the network for missing blocks
/// and keeps what it fetched (unpinned: a cache GC may clear). When a block
/// comes from the network, its children are prefetched in the background, so
/// reading a file front to back streams at network speed.
///
/// `read_block` blocks the calling thread: use it from `spawn_blocking` or
/// another non-async thread. Create it inside the tokio runtime.
#[derive(Clone)]
pub struct NetworkBlocks {
    store: Arc<Store>,
    node: Option<NodeHandle>,
    timeout: Duration,
    runtime: tokio::runtime::Handle,
    prefetching: Arc<AtomicUsize>,
}

impl std::fmt::Debug for NetworkBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkBlocks")
            .field("online", &self.node.is_some())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl NetworkBlocks {
    /// `node: None` reads the store only. Panics outside a tokio runtime.
    pub fn new(store: Arc<Store>, node: Option<NodeHandle>, timeout: Duration) -> Self {
        Self {
            store,
            node,
            timeout,
            runtime: tokio::runtime::Handle::current(),
            prefetching: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Fetches one block from the network (no store lookup) and stores it.
    pub fn fetch(&self, cid: &Cid) -> Result<Bytes, FetchError> {
        let node = self
            .node
            .as_ref()
            .ok_or_else(|| FetchError::block(*cid, NetError::Shutdown))?;
        let data = node
            .get_block_blocking(*cid, self.timeout)
            .map_err(|source| FetchError::block(*cid, source))?;
        self.store.put(cid, &data)?;
        if cid.codec() != RAW {
            if let Ok(dag) = dag_links(cid, &data) {
                self.prefetch(node, dag.children);
            }
        }
        Ok(data)
    }

    fn prefetch(&self, node: &NodeHandle, children: Vec<Cid>) {
        for child in children {
            if child.hash().code() == IDENTITY || matches!(self.store.has(&child), Ok(true)) {
                continue;
            }
            if self.prefetching.fetch_add(1, Ordering::AcqRel) >= PREFETCH_PERMITS {
                self.prefetching.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            let node = node.clone();
            let store = self.store.clone();
            let counter = self.prefetching.clone();
            let timeout = self.timeout;
            self.runtime.spawn(async move {
                if let Ok(data) = node.want_block(child, timeout, false).await {
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = store.put(&child, &data) {
                            tracing::warn!("prefetch: storing {child}: {e}");
                        }
                    })
                    .await;
                }
                counter.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}

impl NetworkBlocks {
    /// The stored block (re-hashed or not), else the block from peers
    /// (always verified on arrival).
    fn read(&self, cid: &Cid, verify_stored: bool) -> Result<Option<Bytes>, StoreError> {
        let stored = if verify_stored {
            self.store.get(cid)?
        } else {
            self.store.get_unverified(cid)?
        };
        if let Some(data) = stored {
            return Ok(Some(data));
        }
        if self.node.is_none() {
            return Ok(None);
        }
        match self.fetch(cid) {
            Ok(data) => Ok(Some(data)),
            Err(FetchError::Store(e)) => Err(*e),
            Err(e) => {
                tracing::debug!("{e}");
                Ok(None)
            }
        }
    }
}

impl BlockRead for NetworkBlocks {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read(cid, true)
    }
    fn read_block_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read(cid, false)
    }
}
