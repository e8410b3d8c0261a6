//! The daemon's Software Heritage miss path: when the hashed mirror or the
//! binary cache is asked for a source no local index entry and no peer
//! has, and a pinned list records that source as failed (every URL dead),
//! the source is recovered from SWH ([`ipnix_sources::pin::store_from_swh`]:
//! the same checks and commit as the pinner, I-22/I-23), left unpinned like
//! what peers give, and then served as usual.
//!
//! Only hashes of pinned lists' failed entries are asked: Nix asks the
//! mirror and the cache for every path of every build, and SWH allows 120
//! anonymous requests an hour. A miss is remembered for
//! [`NEGATIVE_TTL`] (at most [`NEGATIVE_ENTRIES`] of them).
//!
//! Threads: the SWH client is blocking, so it lives on plain threads of its
//! own ([`WORKERS`] of them, sharing one client), fed by a bounded queue;
//! nothing here creates, uses or drops it on an async thread.

use cid::Cid;
use ipnix_bridge::hash::{StorePath, DEFAULT_STORE_DIR};
use ipnix_bridge::{FileIngestion, HashAlgo, NixHash};
use ipnix_sources::list;
use ipnix_sources::model::UrlSource;
use ipnix_sources::pin::{self, PinConfig};
use ipnix_sources::swh::{SwhClient, SwhConfig};
use ipnix_store::Store;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Threads working on SWH recoveries (the client's concurrency).
pub const WORKERS: usize = 2;
/// Recoveries waiting for a worker at most; more are misses.
pub const QUEUE: usize = 64;
/// How long a source SWH could not give is not asked again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(600);
/// Misses remembered at most.
pub const NEGATIVE_ENTRIES: usize = 4096;
/// Longest a request waits for a recovery (a vault cooking can be slow).
pub const WAIT: Duration = Duration::from_secs(600);

struct Job {
    source: UrlSource,
    reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// What pinned lists failed to get, by what the miss paths are asked.
#[derive(Default)]
struct Wanted {
    /// Of the list roots it was built from.
    roots: Vec<Cid>,
    /// `<flat|recursive>:<sri>` -> the entry.
    by_hash: HashMap<String, UrlSource>,
    /// Store path hash part -> the entry.
    by_hash_part: HashMap<String, UrlSource>,
}

/// The daemon's SWH fallback; cheap to share (`Arc`).
pub struct SwhFallback {
    store: Arc<Store>,
    jobs: SyncSender<Job>,
    misses: Mutex<HashMap<String, Instant>>,
    wanted: Mutex<Arc<Wanted>>,
}

impl std::fmt::Debug for SwhFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwhFallback").finish_non_exhaustive()
    }
}

impl SwhFallback {
    /// Starts the worker threads (the SWH client is built on them);
    /// recovered trees are unpacked under `work_dir`.
    pub fn start(store: Arc<Store>, config: SwhConfig, work_dir: PathBuf) -> Arc<SwhFallback> {
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let worker_store = store.clone();
        std::thread::Builder::new()
            .name("ipnix-swh".into())
            .spawn(move || run_workers(worker_store, config, work_dir, queue))
            .expect("spawning the SWH thread");
        Arc::new(SwhFallback {
            store,
            jobs,
            misses: Mutex::default(),
            wanted: Mutex::default(),
        })
    }

    /// A flat source by its hash (the hashed mirror): true once it is
    /// stored here.
    pub async fn flat(&self, hash: &NixHash) -> bool {
        let key = format!("flat:{}", hash.to_sri());
        let Some(source) = self
            .wanted()
            .await
            .and_then(|w| w.by_hash.get(&key).cloned())
        else {
            return false;
        };
        self.recover(key, source).await
    }

    /// A fixed-output store path by its hash part (the binary cache): true
    /// once it is stored here.
    pub async fn store_path(&self, hash_part: &str) -> bool {
        let Some(source) = self
            .wanted()
            .await
            .and_then(|w| w.by_hash_part.get(hash_part).cloned())
        else {
            return false;
        };
        let key = format!(
            "{}:{}",
            ipnix_sources::index::mode_name(source.mode),
            source.hash.to_sri()
        );
        self.recover(key, source).await
    }

    async fn recover(&self, key: String, source: UrlSource) -> bool {
        {
            let mut misses = self.misses.lock().unwrap_or_else(PoisonError::into_inner);
            misses.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if misses.contains_key(&key) {
                return false;
            }
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        match self.jobs.try_send(Job { source, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!("swh: {key}: too many recoveries queued; a miss");
                return false;
            }
            Err(TrySendError::Disconnected(_)) => return false,
        }
        let outcome = match tokio::time::timeout(WAIT, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err("the SWH worker stopped".to_owned()),
            Err(_) => Err(format!("not recovered within {WAIT:?}")),
        };
        match outcome {
            Ok(()) => {
                tracing::info!("swh: {key} recovered from Software Heritage");
                true
            }
            Err(e) => {
                tracing::info!("swh: {key}: {e}");
                let mut misses = self.misses.lock().unwrap_or_else(PoisonError::into_inner);
                if misses.len() < NEGATIVE_ENTRIES {
                    misses.insert(key, Instant::now());
                }
                false
            }
        }
    }

    /// The failed entries of the pinned lists, rebuilt when the pins change.
    async fn wanted(&self) -> Option<Arc<Wanted>> {
        let current = self
            .wanted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let store = self.store.clone();
        let rebuilt = tokio::task::spawn_blocking(move || -> Result<Option<Wanted>, String> {
            let roots: Vec<Cid> = pin::lists(&store)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(_, cid)| cid)
                .collect();
            if roots == current.roots {
                return Ok(None);
            }
            let mut wanted = Wanted {
                roots: roots.clone(),
                ..Wanted::default()
            };
            for root in roots {
                let root = list::load_root(&store, &root).map_err(|e| e.to_string())?;
                list::for_each_entry(&store, &root, |e| wanted.add(&e))
                    .map_err(|e| e.to_string())?;
            }
            Ok(Some(wanted))
        })
        .await;
        match rebuilt {
            Ok(Ok(Some(wanted))) => {
                let wanted = Arc::new(wanted);
                *self.wanted.lock().unwrap_or_else(PoisonError::into_inner) = wanted.clone();
                Some(wanted)
            }
            Ok(Ok(None)) => Some(
                self.wanted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            ),
            Ok(Err(e)) => {
                tracing::warn!("swh: reading the pinned lists: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("swh: {e}");
                None
            }
        }
    }
}

impl Wanted {
    fn add(&mut self, entry: &list::EntryStatus) {
        if entry.status != "failed" {
            return;
        }
        let Some(hash) = entry.hash.as_deref().and_then(|h| NixHash::parse(h).ok()) else {
            return;
        };
        if hash.algo() == HashAlgo::Md5 {
            return;
        }
        let mode = if entry.mode == "recursive" {
            FileIngestion::Recursive
        } else {
            FileIngestion::Flat
        };
        let source = UrlSource {
            urls: entry.urls.clone(),
            hash,
            mode,
            store_path: entry.store_path.clone(),
            post_fetch: false,
            submodule: false,
        };
        let ca = source.content_address();
        let mut names = source.names();
        if let Some(name) = entry
            .store_path
            .as_deref()
            .and_then(|p| StorePath::parse_default(p).ok())
        {
            names.push(name.name().to_owned());
        }
        for name in names {
            if let Ok(Some(path)) = ca.fixed_output_path(DEFAULT_STORE_DIR, &name) {
                if let Ok(path) = StorePath::parse_default(&path) {
                    self.by_hash_part
                        .insert(path.hash_part().to_owned(), source.clone());
                }
            }
        }
        let key = format!(
            "{}:{}",
            ipnix_sources::index::mode_name(mode),
            source.hash.to_sri()
        );
        self.by_hash.insert(key, source);
    }
}

/// Owns the SWH client (built, used and dropped on plain threads).
fn run_workers(store: Arc<Store>, config: SwhConfig, work_dir: PathBuf, queue: Receiver<Job>) {
    let client = match SwhClient::new(config) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!("swh: the fallback is off: {e}");
            return;
        }
    };
    let pin_config = PinConfig::new(work_dir.clone());
    let queue = Mutex::new(queue);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let job = {
                    let queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                    queue.recv()
                };
                let Ok(job) = job else { break };
                if let Err(e) = std::fs::create_dir_all(&work_dir) {
                    let _ = job.reply.send(Err(format!("{}: {e}", work_dir.display())));
                    continue;
                }
                let outcome = pin::store_from_swh(&store, &client, &pin_config, &job.source)
                    .map(|_| ())
                    .map_err(|(reason, detail)| format!("{reason}: {detail}"));
                let _ = job.reply.send(outcome);
            });
        }
    });
}
