//! The pinner: takes a parsed sources list, gets every entry (the local
//! index, the local Nix store, else its URLs), checks the declared hash
//! while the bytes stream, stores it as a fixed-output store path (a
//! path-info whose `ca` is the declared hash, so Nix substitutes it with no
//! signature), indexes it, and finally pins the list object under the
//! list's name.
//!
//! Crash safety (DESIGN.md I-22, I-23): every source is committed on its own
//! (blocks, then its index entries, in one transaction) but not pinned; a
//! holding session keeps finished sources from GC until the list pin
//! commits. A crash leaves indexed, unpinned sources, which a re-run finds
//! and does not fetch again, and never a pin of anything half-written.

use crate::fetch::{FetchConfig, FetchError, Fetcher, Sink};
use crate::index::{self, SourceRecord, StoredPath};
use crate::list::{self, EntryStatus, MAX_URLS_KEPT};
use crate::model::{EntryKind, SourcesFile, UrlSource};
use crate::unpack::{self, UnpackLimits};
use cid::Cid;
use ipnix_bridge::hash::DEFAULT_STORE_DIR;
use ipnix_bridge::{import_nar, ContentAddress, FileIngestion, HashAlgo, NixHash, PathMeta};
use ipnix_store::{PinMode, Session, Store, StoreError};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of the pin name of a list (`sources:<name>`).
pub const PIN_PREFIX: &str = "sources:";
/// Default concurrent entries.
pub const DEFAULT_JOBS: usize = 8;
/// Default per-source size cap.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;

/// Why a whole run failed (a failing entry is an outcome, not an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    List(#[from] list::ListError),
    #[error(transparent)]
    Index(#[from] index::IndexError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("work directory {path}: {source}")]
    WorkDir { path: PathBuf, source: io::Error },
    #[error("list name {0:?} is not usable: use letters, digits and -._+")]
    BadName(String),
    #[error(transparent)]
    Swh(#[from] crate::swh::SwhError),
}

/// How a run works.
#[derive(Debug, Clone)]
pub struct PinConfig {
    /// Entries worked on at once.
    pub jobs: usize,
    /// Take entries whose fixed-output path is in the local Nix store from there first.
    pub from_store: bool,
    /// The Nix store directory (for `--from-store` and store paths).
    pub store_dir: String,
    /// Downloads and unpacked trees go here (same filesystem as the repo).
    pub work_dir: PathBuf,
    pub fetch: FetchConfig,
    pub unpack: UnpackLimits,
    /// A file on disk that plays every entry's download (`sources add --file`).
    pub local_file: Option<PathBuf>,
    /// Software Heritage, tried when every URL failed (`None`: `--no-swh`).
    pub swh: Option<crate::swh::SwhConfig>,
    /// Keep flat tarballs as tree + recipe when the recipe pays (I-35).
    pub tarballs_as_trees: bool,
}

impl PinConfig {
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        PinConfig {
            jobs: DEFAULT_JOBS,
            from_store: false,
            store_dir: DEFAULT_STORE_DIR.to_owned(),
            work_dir: work_dir.into(),
            fetch: FetchConfig::default(),
            unpack: UnpackLimits::default(),
            local_file: None,
            swh: None,
            tarballs_as_trees: true,
        }
    }

    /// Whether flat tarballs are kept as tree + recipe (default) or as bytes.
    pub fn with_tarballs_as_trees(mut self, as_trees: bool) -> Self {
        self.tarballs_as_trees = as_trees;
        self
    }

    /// Tries Software Heritage when every URL of an entry failed.
    pub fn with_swh(mut self, swh: Option<crate::swh::SwhConfig>) -> Self {
        self.swh = swh;
        self
    }

    pub fn with_local_file(mut self, path: PathBuf) -> Self {
        self.local_file = Some(path);
        self
    }

    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    pub fn with_from_store(mut self, from_store: bool) -> Self {
        self.from_store = from_store;
        self
    }

    pub fn with_fetch(mut self, fetch: FetchConfig) -> Self {
        self.fetch = fetch;
        self
    }
}

/// What a run tells its caller as it goes (a progress bar, a log).
pub trait Progress: Sync {
    /// An entry finished (ok, failed or skipped).
    fn entry(&self, _status: &EntryStatus) {}
    /// Bytes arrived from upstream.
    fn bytes(&self, _n: u64) {}
}

/// No progress reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct PinReport {
    pub name: String,
    /// The pinned list root.
    pub list: Cid,
    pub entries: Vec<EntryStatus>,
    /// Entries fetched over the network in this run.
    pub fetched: u64,
    /// Bytes that came from upstream in this run.
    pub fetched_bytes: u64,
}

impl PinReport {
    pub fn ok(&self) -> usize {
        self.entries.iter().filter(|e| e.is_ok()).count()
    }
    pub fn failed(&self) -> usize {
        self.entries.iter().filter(|e| e.status == "failed").count()
    }
    pub fn skipped(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.status == "skipped")
            .count()
    }
}

/// Checks a list name (it becomes part of a pin name and a file name).
pub fn check_list_name(name: &str) -> Result<(), PinError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(PinError::BadName(name.to_owned()))
    }
}

/// The default name of a list: `nixpkgs-<revision>`, else `sources`.
pub fn default_name(file: &SourcesFile) -> String {
    match &file.revision {
        Some(rev) if check_list_name(rev).is_ok() => format!("nixpkgs-{rev}"),
        _ => "sources".to_owned(),
    }
}

/// One entry's outcome within a run.
struct Done {
    status: EntryStatus,
    fetched_bytes: u64,
}

/// Pins every entry of `file` under `name`; `keep` are entries of an
/// earlier list kept as they are (for `sources add`).
pub fn pin_list(
    store: &Store,
    file: &SourcesFile,
    name: &str,
    keep: Vec<EntryStatus>,
    config: &PinConfig,
    progress: &dyn Progress,
) -> Result<PinReport, PinError> {
    check_list_name(name)?;
    std::fs::create_dir_all(&config.work_dir).map_err(|source| PinError::WorkDir {
        path: config.work_dir.clone(),
        source,
    })?;
    let fetcher = Fetcher::new(config.fetch.clone())?;
    let swh = match &config.swh {
        Some(swh) => Some(crate::swh::SwhClient::new(swh.clone())?),
        None => None,
    };
    let swh = swh.as_ref();
    let holder = Mutex::new(store.session());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Done>>> =
        Mutex::new((0..file.entries.len()).map(|_| None).collect());
    let jobs = config.jobs.clamp(1, 64).min(file.entries.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(entry) = file.entries.get(i) else {
                    break;
                };
                let done = match &entry.kind {
                    EntryKind::Skipped(skip) => Done {
                        status: EntryStatus {
                            index: entry.index as u64,
                            status: "skipped".into(),
                            reason: Some(skip.reason.as_str().to_owned()),
                            detail: Some(skip.detail.clone()),
                            mode: String::new(),
                            hash: None,
                            got: None,
                            size: None,
                            urls: Vec::new(),
                            store_path: None,
                            source: None,
                            aliases: Vec::new(),
                            attempted: now(),
                        },
                        fetched_bytes: 0,
                    },
                    EntryKind::Url(source) => pin_one(
                        store,
                        &fetcher,
                        swh,
                        config,
                        source,
                        entry.index,
                        &holder,
                        progress,
                    ),
                };
                progress.entry(&done.status);
                results.lock().expect("results lock is never poisoned")[i] = Some(done);
            });
        }
    });
    let done: Vec<Done> = results
        .into_inner()
        .expect("results lock is never poisoned")
        .into_iter()
        .flatten()
        .collect();
    let fetched = done.iter().filter(|d| d.fetched_bytes > 0).count() as u64;
    let fetched_bytes = done.iter().map(|d| d.fetched_bytes).sum();
    let mut entries = keep;
    entries.extend(done.into_iter().map(|d| d.status));
    let holder = holder.into_inner().expect("holder lock is never poisoned");
    let list = commit_list(store, holder, name, file.revision.as_deref(), &entries)?;
    Ok(PinReport {
        name: name.to_owned(),
        list,
        entries,
        fetched,
        fetched_bytes,
    })
}

/// Writes the list blocks and pins the root under `sources:<name>` in one
/// transaction, then drops the pin of the list it replaces.
fn commit_list(
    store: &Store,
    mut holder: Session<'_>,
    name: &str,
    revision: Option<&str>,
    entries: &[EntryStatus],
) -> Result<Cid, PinError> {
    let blocks = list::build(name, revision, entries, now())?;
    let root = blocks.last().expect("a list always has a root").0;
    for (cid, bytes) in &blocks {
        holder.put_hashed(*cid, bytes)?;
    }
    let pin_name = format!("{PIN_PREFIX}{name}");
    holder.finish(Some((root, PinMode::Recursive, Some(pin_name.clone()))))?;
    for pin in store.pins()? {
        if pin.name.as_deref() == Some(pin_name.as_str()) && pin.cid != root {
            store.unpin(&pin.cid)?;
        }
    }
    Ok(root)
}

/// The root of the list pinned as `name`, if any.
pub fn find_list(store: &Store, name: &str) -> Result<Option<Cid>, PinError> {
    let pin_name = format!("{PIN_PREFIX}{name}");
    Ok(store
        .pins()?
        .into_iter()
        .find(|p| p.name.as_deref() == Some(pin_name.as_str()))
        .map(|p| p.cid))
}

/// Every pinned list: (name, root).
pub fn lists(store: &Store) -> Result<Vec<(String, Cid)>, PinError> {
    let mut out: Vec<(String, Cid)> = store
        .pins()?
        .into_iter()
        .filter_map(|p| {
            let name = p.name?.strip_prefix(PIN_PREFIX)?.to_owned();
            Some((name, p.cid))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Removes the pin of list `name`; returns whether there was one. What it
/// kept is freed by the next GC unless something else pins it.
pub fn unpin_list(store: &Store, name: &str) -> Result<bool, PinError> {
    match find_list(store, name)? {
        Some(cid) => Ok(store.unpin(&cid)?),
        None => Ok(false),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why one entry failed: the reason word `status` shows, and the words.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    detail: String,
    got: Option<NixHash>,
}

impl Failure {
    fn new(reason: &'static str, detail: impl ToString) -> Self {
        Failure {
            reason,
            detail: detail.to_string(),
            got: None,
        }
    }
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Self {
        Failure::new(e.kind().as_str(), &e)
    }
}

#[allow(clippy::too_many_arguments)]
fn pin_one(
    store: &Store,
    fetcher: &Fetcher,
    swh: Option<&crate::swh::SwhClient>,
    config: &PinConfig,
    source: &UrlSource,
    index: usize,
    holder: &Mutex<Session<'_>>,
    progress: &dyn Progress,
) -> Done {
    let mut status = EntryStatus {
        index: index as u64,
        status: "ok".into(),
        reason: None,
        detail: None,
        mode: index::mode_name(source.mode).to_owned(),
        hash: Some(source.hash.to_sri()),
        got: None,
        size: None,
        urls: source.urls.iter().take(MAX_URLS_KEPT).cloned().collect(),
        store_path: None,
        source: None,
        aliases: Vec::new(),
        attempted: now(),
    };
    let mut fetched_bytes = 0;
    let mut from_swh = None;
    let fetchers = Fetchers {
        urls: Some(fetcher),
        swh,
    };
    match store_source(
        store,
        &fetchers,
        config,
        source,
        progress,
        &mut fetched_bytes,
        &mut from_swh,
    ) {
        Ok(record) => {
            if let Some(swhid) = from_swh {
                // Stored, but from Software Heritage: every URL had failed.
                status.reason = Some("swh".into());
                status.detail = Some(format!("recovered from Software Heritage ({swhid})"));
            }
            let mut cids = record
                .paths
                .iter()
                .filter_map(|p| Cid::try_from(p.pathinfo.as_str()).ok());
            let cid = cids.next();
            status.aliases = cids.collect();
            {
                let mut holder = holder.lock().expect("holder lock is never poisoned");
                for held in cid.iter().chain(&status.aliases) {
                    holder.temp_pin(*held);
                }
            }
            status.size = Some(record.size);
            status.source = cid;
            status.store_path = record.paths.first().map(|p| p.store_path.clone());
        }
        Err(failure) => {
            status.status = "failed".into();
            status.reason = Some(failure.reason.to_owned());
            status.detail = Some(failure.detail);
            status.got = failure.got.map(|h| h.to_sri());
            status.store_path = source.store_path.clone();
        }
    }
    Done {
        status,
        fetched_bytes,
    }
}

/// Where an entry's bytes may come from: its URLs, then Software Heritage.
struct Fetchers<'a> {
    /// `None`: the URLs are not tried (the daemon's SWH miss path).
    urls: Option<&'a Fetcher>,
    swh: Option<&'a crate::swh::SwhClient>,
}

/// Stores one source from Software Heritage alone (its URLs only name its
/// store paths; they are not tried), with the same checks and commit as a
/// list entry (I-22, I-23); unpinned, like what peers give. For the
/// daemon's miss paths (hashed mirror, fixed-output narinfos); call on a
/// thread that may block. Err: `(reason, detail)`.
pub fn store_from_swh(
    store: &Store,
    swh: &crate::swh::SwhClient,
    config: &PinConfig,
    source: &UrlSource,
) -> Result<SourceRecord, (String, String)> {
    let fetchers = Fetchers {
        urls: None,
        swh: Some(swh),
    };
    let (mut bytes, mut from_swh) = (0, None);
    store_source(
        store,
        &fetchers,
        config,
        source,
        &NoProgress,
        &mut bytes,
        &mut from_swh,
    )
    .map_err(|f| (f.reason.to_owned(), f.detail))
}

/// Gets one source into the store and the index; reuses what is there.
/// `from_swh` is set to the SWHID (or `content`) when Software Heritage
/// gave it.
fn store_source(
    store: &Store,
    fetchers: &Fetchers<'_>,
    config: &PinConfig,
    source: &UrlSource,
    progress: &dyn Progress,
    fetched_bytes: &mut u64,
    from_swh: &mut Option<String>,
) -> Result<SourceRecord, Failure> {
    let store_err = |e: &dyn std::fmt::Display| Failure::new("io", e);
    if source.hash.algo() == HashAlgo::Md5 {
        return Err(Failure::new(
            "unsupported",
            "md5 hashes are not checked here (Nix itself no longer accepts them for new paths)",
        ));
    }
    if let Some(record) = index::get(store, source.mode, &source.hash).map_err(|e| store_err(&e))? {
        if is_present(store, &record).map_err(|e| store_err(&e))? {
            return Ok(record);
        }
    }
    let work = tempfile::Builder::new()
        .prefix("source-")
        .tempdir_in(&config.work_dir)
        .map_err(|e| Failure::new("io", format!("work directory: {e}")))?;
    let ca = source.content_address();
    let local = if config.from_store {
        local_store_path(config, source, &ca)
    } else {
        None
    };
    let copy_local = |path: &Path| -> Result<Input, Failure> {
        let download = work.path().join("download");
        let mut sink = HashingFile::create(&download, source.hash.algo())
            .map_err(|e| Failure::new("io", e))?;
        let mut file = std::fs::File::open(path).map_err(|e| Failure::new("io", e))?;
        io::copy(&mut file, &mut sink).map_err(|e| Failure::new("io", e))?;
        Ok(Input::File(
            download,
            sink.finish().map_err(|e| Failure::new("io", e))?,
        ))
    };
    let input = match (&config.local_file, &local, source.mode) {
        (Some(file), _, _) => copy_local(file)?,
        (None, Some(path), FileIngestion::Recursive) => Input::Tree(path.clone()),
        (None, Some(path), FileIngestion::Flat) => copy_local(path)?,
        (None, None, _) => {
            let download = work.path().join("download");
            let mut sink = HashingFile::create(&download, source.hash.algo())
                .map_err(|e| Failure::new("io", e))?;
            let mut counted = Counting {
                inner: &mut sink,
                progress,
            };
            let fetched = match fetchers.urls {
                Some(fetcher) => fetcher.fetch(&source.urls, &mut counted),
                None => Err(FetchError::NoUrls),
            };
            match fetched {
                Ok(fetched) => {
                    *fetched_bytes = fetched.bytes;
                    Input::File(download, sink.finish().map_err(|e| Failure::new("io", e))?)
                }
                Err(failed) => {
                    let Some(swh) = fetchers.swh else {
                        return Err(failed.into());
                    };
                    let url_failure = Failure::from(failed);
                    let recovered =
                        swh_fallback(store, swh, config, source, &mut sink, url_failure)?;
                    match recovered {
                        crate::swh::Recovered::File { swhid } => {
                            *from_swh = Some(swhid.unwrap_or_else(|| "content".into()));
                            let hashes = sink.finish().map_err(|e| Failure::new("io", e))?;
                            *fetched_bytes = hashes.size;
                            Input::File(download, hashes)
                        }
                        crate::swh::Recovered::Tree { swhid, root, work } => {
                            *from_swh = Some(swhid);
                            Input::SwhTree(root, work)
                        }
                        crate::swh::Recovered::ArchivedUnpacked { swhid } => {
                            return Err(Failure::new(
                                "archived-unpacked",
                                format!(
                                    "every URL failed; Software Heritage holds it only unpacked, as {swhid} (recoverable as a tree, not as these bytes: no recipe here rebuilds the tarball)"
                                ),
                            ))
                        }
                    }
                }
            }
        }
    };
    let post_fetch_note = || {
        if source.post_fetch {
            " (the entry has a postFetch, which changes the bytes Nix hashes)"
        } else {
            ""
        }
    };
    let mismatch = |got: NixHash| Failure {
        reason: if source.post_fetch {
            "unsupported"
        } else {
            "hash-mismatch"
        },
        detail: format!(
            "expected {}, got {}{}",
            source.hash.to_sri(),
            got.to_sri(),
            post_fetch_note()
        ),
        got: Some(got),
    };
    let names = source.names();
    let paths: Vec<String> = names
        .iter()
        .filter_map(|name| ca.fixed_output_path(&config.store_dir, name).ok().flatten())
        .collect();
    let Some(first_path) = paths.first().cloned() else {
        return Err(Failure::new(
            "unsupported",
            "no usable store path name (the URL's file name is not a valid store name)",
        ));
    };
    let mut swh_work: Option<tempfile::TempDir> = None;
    let (tree, sha256, size) = match (input, source.mode) {
        (Input::File(file, hashes), FileIngestion::Flat) => {
            if hashes.declared != source.hash {
                return Err(mismatch(hashes.declared));
            }
            (file, Some(hashes.sha256), hashes.size)
        }
        (Input::File(file, _), FileIngestion::Recursive) => {
            let dest = work.path().join("tree");
            let unpacked = unpack::unpack(&file, &dest, &config.unpack)
                .map_err(|e| Failure::new(e.reason(), &e))?;
            (unpacked.root, None, 0)
        }
        (Input::Tree(path), _) => (path, None, 0),
        (Input::SwhTree(path, work), _) => {
            // Kept until the import below has read the tree.
            swh_work = Some(work);
            (path, None, 0)
        }
    };
    // A flat tarball whose recipe pays is kept as tree + recipe (I-35).
    let as_tree = if source.mode == FileIngestion::Flat && config.tarballs_as_trees {
        crate::tarball::store_as_tree(store, &tree, &first_path, &ca.to_string())
            .map_err(|e| Failure::new("io", e))?
    } else {
        None
    };
    let mut session = store.session();
    let (imported, nar_hash) = match as_tree {
        Some(kept) => {
            let (cid, bytes) = kept
                .pathinfo
                .to_block()
                .map_err(|e| Failure::new("io", format!("path-info for {first_path}: {e}")))?;
            session.put_hashed(cid, &bytes).map_err(|e| store_err(&e))?;
            let nar_hash = kept.pathinfo.nar_hash.clone();
            let imported = ipnix_bridge::Imported {
                pathinfo_cid: cid,
                root_cid: kept.pathinfo.root.cid,
                nar_hash: nar_hash.clone(),
                nar_size: kept.pathinfo.nar_size,
                pathinfo: kept.pathinfo,
            };
            (imported, nar_hash)
        }
        None => {
            let meta = PathMeta {
                ca: Some(ca.to_string()),
                ..PathMeta::new(first_path.clone())
            };
            import_path(&mut session, &tree, meta, source.hash.algo())?
        }
    };
    drop(swh_work);
    let size = if source.mode == FileIngestion::Recursive {
        if nar_hash != source.hash {
            // Nothing commits: the session is dropped unfinished (I-22).
            let mut failure = mismatch(nar_hash);
            if let Some(swhid) = from_swh.take() {
                failure.detail = format!(
                    "the tree Software Heritage cooked for {swhid}: {}",
                    failure.detail
                );
            }
            return Err(failure);
        }
        imported.nar_size
    } else {
        size
    };
    let mut stored = vec![StoredPath {
        store_path: first_path.clone(),
        pathinfo: imported.pathinfo_cid.to_string(),
    }];
    ipnix_bridge::path_index::stage(
        &mut session,
        imported.pathinfo.store_path().hash_part(),
        &imported.pathinfo_cid,
    );
    for path in paths.iter().skip(1) {
        let mut info = imported.pathinfo.clone();
        info.store_path = path.clone();
        let (cid, bytes) = info
            .to_block()
            .map_err(|e| Failure::new("io", format!("path-info for {path}: {e}")))?;
        session.put_hashed(cid, &bytes).map_err(|e| store_err(&e))?;
        ipnix_bridge::path_index::stage(&mut session, info.store_path().hash_part(), &cid);
        stored.push(StoredPath {
            store_path: path.clone(),
            pathinfo: cid.to_string(),
        });
    }
    let record = SourceRecord {
        mode: index::mode_name(source.mode).to_owned(),
        hash: source.hash.to_sri(),
        size,
        paths: stored,
        sha256: sha256.map(|h| h.to_sri()),
        urls: source.urls.clone(),
    };
    index::stage(&mut session, &source.hash, &record);
    session.finish(None).map_err(|e| store_err(&e))?;
    Ok(record)
}

/// Whether an indexed source's path-infos and roots are still stored.
fn is_present(store: &Store, record: &SourceRecord) -> Result<bool, StoreError> {
    let Some(cid) = record.pathinfo_cid() else {
        return Ok(false);
    };
    let Some(bytes) = store.get(&cid)? else {
        return Ok(false);
    };
    match ipnix_bridge::PathInfo::decode(&bytes) {
        // A large root file has no git-raw block: its bytes are the UnixFS file.
        Ok(info) => match info.large_blob(&info.root.cid) {
            Some(large) => store.has(&large.unixfs),
            None => store.has(&info.root.cid),
        },
        Err(_) => Ok(false),
    }
}

/// The entry's fixed-output path in the local Nix store, if it is there.
fn local_store_path(
    config: &PinConfig,
    source: &UrlSource,
    ca: &ContentAddress,
) -> Option<PathBuf> {
    let mut candidates: Vec<String> = source.store_path.iter().cloned().collect();
    for name in source.names() {
        if let Ok(Some(path)) = ca.fixed_output_path(&config.store_dir, &name) {
            candidates.push(path);
        }
    }
    candidates
        .into_iter()
        .map(PathBuf::from)
        .find(|p| std::fs::symlink_metadata(p).is_ok())
}

/// Where the bytes of an entry are before import.
enum Input {
    /// A downloaded (or copied) file and its hashes.
    File(PathBuf, FileHashes),
    /// A tree already on disk (a recursive source in the local Nix store).
    Tree(PathBuf),
    /// A tree Software Heritage's vault cooked, in its work directory.
    SwhTree(PathBuf, tempfile::TempDir),
}

/// Every URL failed (`url_failure`): asks Software Heritage. A source it
/// does not have keeps the URLs' failure, noted.
fn swh_fallback(
    store: &Store,
    swh: &crate::swh::SwhClient,
    config: &PinConfig,
    source: &UrlSource,
    sink: &mut HashingFile,
    url_failure: Failure,
) -> Result<crate::swh::Recovered, Failure> {
    match swh.recover(store, source.mode, &source.hash, &config.work_dir, sink) {
        Ok(recovered) => Ok(recovered),
        Err(crate::swh::SwhError::NotFound(_)) => Err(Failure {
            detail: format!("{}; not in Software Heritage either", url_failure.detail),
            ..url_failure
        }),
        Err(e) => Err(Failure::new(
            e.reason(),
            format!("{}; Software Heritage: {e}", url_failure.detail),
        )),
    }
}

/// Imports the tree at `path` into `session` as a git-tree DAG (its root
/// CID is its git tree id), under a placeholder store path: the blocks a
/// recipe links (Software Heritage's cooked directory of a flat tarball).
pub(crate) fn import_tree(session: &mut Session<'_>, path: &Path) -> Result<(), String> {
    let meta = PathMeta::new(format!(
        "{DEFAULT_STORE_DIR}/00000000000000000000000000000000-swh-tree"
    ));
    import_path(session, path, meta, HashAlgo::Sha256)
        .map(|_| ())
        .map_err(|f| f.detail)
}

/// The NAR hash in `algo` of the file or tree at `path` (stores nothing).
pub fn nar_hash_of(path: &Path, algo: HashAlgo) -> Result<NixHash, String> {
    let mut hashing = HashingWriter::new(io::sink(), algo);
    ipnix_bridge::dump::dump_path(path, &mut hashing).map_err(|e| e.to_string())?;
    Ok(hashing.finish())
}

/// Imports the file or tree at `path` as a store path; returns the import
/// and the NAR's hash in `algo` (the recursive hash to check).
fn import_path(
    session: &mut Session<'_>,
    path: &Path,
    meta: PathMeta,
    algo: HashAlgo,
) -> Result<(ipnix_bridge::Imported, NixHash), Failure> {
    let (reader, writer) = io::pipe().map_err(|e| Failure::new("io", e))?;
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut hashing = HashingWriter::new(writer, algo);
            ipnix_bridge::dump::dump_path(path, &mut hashing)
                .map(|_| hashing.finish())
                .map_err(|e| e.to_string())
        });
        let imported = import_nar(session, reader, meta);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err("the NAR writer panicked".to_owned()));
        match (imported, produced) {
            (Ok(imported), Ok(hash)) => Ok((imported, hash)),
            (_, Err(e)) => Err(Failure::new(
                "io",
                format!("serialising {}: {e}", path.display()),
            )),
            (Err(e), Ok(_)) => Err(Failure::new("io", format!("import: {e}"))),
        }
    })
}

/// Hashes in one algorithm while writing through.
enum Hasher {
    Md5Unsupported,
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Hasher::Md5Unsupported,
            HashAlgo::Sha1 => Hasher::Sha1(Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5Unsupported => {}
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> NixHash {
        let (algo, digest): (HashAlgo, Vec<u8>) = match self {
            Hasher::Md5Unsupported => (HashAlgo::Md5, vec![0; 16]),
            Hasher::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            Hasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        NixHash::new(algo, &digest).expect("digest sizes match their algorithms")
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W, algo: HashAlgo) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(algo),
        }
    }
    fn finish(self) -> NixHash {
        self.hasher.finish()
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The hashes of a downloaded file.
#[derive(Debug, Clone)]
pub struct FileHashes {
    /// In the declared algorithm.
    pub declared: NixHash,
    /// SHA-256 (the mirror's key), the same as `declared` for sha256.
    pub sha256: NixHash,
    pub size: u64,
}

/// A download target: a file, hashed in the declared algorithm and in
/// SHA-256 while it is written; restartable for a server that ignores Range.
pub struct HashingFile {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    algo: HashAlgo,
    declared: Hasher,
    sha256: Option<Sha256>,
    written: u64,
}

impl HashingFile {
    pub fn create(path: &Path, algo: HashAlgo) -> io::Result<Self> {
        Ok(HashingFile {
            path: path.to_path_buf(),
            file: std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(path)?),
            algo,
            declared: Hasher::new(algo),
            sha256: (algo != HashAlgo::Sha256).then(Sha256::new),
            written: 0,
        })
    }

    pub fn finish(mut self) -> io::Result<FileHashes> {
        self.file.flush()?;
        let declared = self.declared.finish();
        let sha256 = match self.sha256 {
            Some(h) => NixHash::sha256(h.finalize().into()),
            None => declared.clone(),
        };
        Ok(FileHashes {
            declared,
            sha256,
            size: self.written,
        })
    }
}

impl Write for HashingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.declared.update(&buf[..n]);
        if let Some(h) = &mut self.sha256 {
            h.update(&buf[..n]);
        }
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Sink for HashingFile {
    fn reset(&mut self) -> io::Result<()> {
        self.file =
            std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&self.path)?);
        self.declared = Hasher::new(self.algo);
        self.sha256 = (self.algo != HashAlgo::Sha256).then(Sha256::new);
        self.written = 0;
        Ok(())
    }
    fn written(&self) -> u64 {
        self.written
    }
}

/// Tells the progress reporter about bytes as they arrive.
struct Counting<'a> {
    inner: &'a mut HashingFile,
    progress: &'a dyn Progress,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Sink for Counting<'_> {
    fn reset(&mut self) -> io::Result<()> {
        self.inner.reset()
    }
    fn written(&self) -> u64 {
        self.inner.written()
    }
}

/// Reads a stored flat source's bytes: the path-info's root file (a git
/// blob, or the UnixFS file of a large one). Verifies as it reads (every
/// block against its CID); the caller checks the file hash.
pub fn open_flat<R: ipnix_store::BlockRead + Clone + Send + 'static>(
    blocks: R,
    pathinfo: &Cid,
) -> Result<(u64, Box<dyn ReadSeek + Send>), String> {
    let info = ipnix_bridge::load_pathinfo(&blocks, pathinfo).map_err(|e| e.to_string())?;
    if info.root.kind != ipnix_bridge::pathinfo::RootKind::Regular {
        return Err(format!("{} is not a single file", info.store_path));
    }
    if let Some(large) = info.large_blob(&info.root.cid) {
        if large.unixfs.codec() == ipnix_store::block::DAG_CBOR {
            let (size, file) =
                crate::tarball::open_rebuilt(&blocks, &large.unixfs).map_err(|e| e.to_string())?;
            if size != large.size {
                return Err(format!(
                    "{}: rebuilt {size} bytes, the path-info records {}",
                    info.store_path, large.size
                ));
            }
            return Ok((size, Box::new(file)));
        }
        let reader = ipnix_store::unixfs::cat(blocks, &large.unixfs).map_err(|e| e.to_string())?;
        return Ok((reader.len(), Box::new(reader)));
    }
    let object = blocks
        .read_block(&info.root.cid)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("block {} is missing", info.root.cid))?;
    let data = ipnix_bridge::git::parse_blob(&object)
        .map_err(|e| e.to_string())?
        .to_vec();
    Ok((data.len() as u64, Box::new(io::Cursor::new(data))))
}

/// A readable, seekable byte source (for Range requests).
pub trait ReadSeek: Read + io::Seek {}
impl<T: Read + io::Seek> ReadSeek for T {}
