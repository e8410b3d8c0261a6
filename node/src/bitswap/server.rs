//! The Bitswap server: one ledger (wantlist + task queue) per peer, bounded
//! in entries and dropped on disconnect, and a round-robin scheduler that
//! hands one batch of a peer's tasks at a time to a lookup job on tokio's
//! blocking pool, so block-store reads and re-verification never run on the
//! swarm task. A peer gets a new job only while its queued bytes are under the
//! budget the behaviour checks, so a peer that stops reading stops costing
//! memory.

use super::handler::{Entry, OutMessage};
use super::source::BlockSource;
use super::wire::{Presence, WantType};
use bytes::Bytes;
use cid::Cid;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::PeerId;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll};

#[derive(Debug, Clone)]
pub(crate) struct ServerLimits {
    pub max_wantlist_entries: usize,
    pub max_concurrent_lookups: usize,
    pub lookup_batch: usize,
    pub target_message_bytes: usize,
    pub max_have_replace_bytes: usize,
}

type QueueKey = (Reverse<i32>, u64);

#[derive(Debug)]
struct LedgerEntry {
    want_type: WantType,
    send_dont_have: bool,
    priority: i32,
    /// Where the entry waits in the queue; `None` while a job has it or after
    /// it was answered DONT_HAVE (parked until the block arrives).
    queued: Option<QueueKey>,
    generation: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    wants: HashMap<Cid, LedgerEntry>,
    queue: BTreeMap<QueueKey, Cid>,
    next_seq: u64,
    job_running: bool,
    in_ready: bool,
}

impl Ledger {
    fn enqueue(&mut self, cid: Cid) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(entry) = self.wants.get_mut(&cid) {
            if let Some(old) = entry.queued.take() {
                self.queue.remove(&old);
            }
            let key = (Reverse(entry.priority), seq);
            entry.queued = Some(key);
            self.queue.insert(key, cid);
        }
    }

    fn remove(&mut self, cid: &Cid) -> bool {
        match self.wants.remove(cid) {
            Some(entry) => {
                if let Some(key) = entry.queued {
                    self.queue.remove(&key);
                }
                true
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Task {
    cid: Cid,
    want_type: WantType,
    generation: u64,
    key: QueueKey,
}

#[derive(Debug)]
enum Outcome {
    Block(Bytes),
    Have,
    DontHave,
}

struct JobDone {
    peer: PeerId,
    answered: Vec<(Task, Outcome)>,
    unprocessed: Vec<Task>,
}

/// What applying a wantlist did, for the counters.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WantlistApplied {
    pub over_limit: usize,
}

/// A message ready for a peer, with the counts the stats need.
#[derive(Debug)]
pub(crate) struct Reply {
    pub peer: PeerId,
    pub message: OutMessage,
    pub block_bytes: usize,
    pub haves: usize,
    pub dont_haves: usize,
}

pub(crate) struct Server {
    source: Arc<dyn BlockSource>,
    limits: ServerLimits,
    ledgers: HashMap<PeerId, Ledger>,
    ready: VecDeque<PeerId>,
    jobs: FuturesUnordered<BoxFuture<'static, JobDone>>,
    entries: usize,
}

impl Server {
    pub(crate) fn new(source: Arc<dyn BlockSource>, limits: ServerLimits) -> Self {
        Self {
            source,
            limits,
            ledgers: HashMap::new(),
            ready: VecDeque::new(),
            jobs: FuturesUnordered::new(),
            entries: 0,
        }
    }

    /// Wantlist entries held across all peers.
    pub(crate) fn entries(&self) -> usize {
        self.entries
    }

    pub(crate) fn has_entries(&self, peer: &PeerId) -> bool {
        self.ledgers
            .get(peer)
            .is_some_and(|ledger| !ledger.wants.is_empty())
    }

    /// Applies a received wantlist: `full` replaces the peer's list, otherwise
    /// entries add, upgrade (want-have -> want-block, never down) or cancel.
    /// Entries beyond the per-peer limit are ignored.
    pub(crate) fn on_wantlist(
        &mut self,
        peer: PeerId,
        entries: Vec<Entry>,
        full: bool,
    ) -> WantlistApplied {
        let mut applied = WantlistApplied::default();
        let max = self.limits.max_wantlist_entries;
        let ledger = self.ledgers.entry(peer).or_default();
        if full {
            let keep: std::collections::HashSet<Cid> = entries
                .iter()
                .filter(|entry| !entry.cancel)
                .map(|entry| entry.cid)
                .collect();
            let dropped: Vec<Cid> = ledger
                .wants
                .keys()
                .filter(|cid| !keep.contains(cid))
                .copied()
                .collect();
            for cid in dropped {
                ledger.remove(&cid);
            }
        }
        for entry in entries {
            if entry.cancel {
                ledger.remove(&entry.cid);
                continue;
            }
            match ledger.wants.get_mut(&entry.cid) {
                Some(existing) => {
                    let upgrade =
                        existing.want_type == WantType::Have && entry.want_type == WantType::Block;
                    if upgrade {
                        existing.want_type = WantType::Block;
                    }
                    existing.send_dont_have = entry.send_dont_have;
                    existing.priority = entry.priority;
                    // A repeated entry re-checks a parked one: we may have the block now.
                    if upgrade || existing.queued.is_none() {
                        existing.generation += 1;
                        ledger.enqueue(entry.cid);
                    }
                }
                None => {
                    if ledger.wants.len() >= max {
                        applied.over_limit += 1;
                        continue;
                    }
                    ledger.wants.insert(
                        entry.cid,
                        LedgerEntry {
                            want_type: entry.want_type,
                            send_dont_have: entry.send_dont_have,
                            priority: entry.priority,
                            queued: None,
                            generation: 0,
                        },
                    );
                    ledger.enqueue(entry.cid);
                }
            }
        }
        let mark_ready = !ledger.queue.is_empty() && !ledger.in_ready;
        if mark_ready {
            ledger.in_ready = true;
        }
        if mark_ready {
            self.ready.push_back(peer);
        }
        self.recount();
        applied
    }

    fn recount(&mut self) {
        self.entries = self.ledgers.values().map(|ledger| ledger.wants.len()).sum();
    }

    /// Forgets a peer's ledger (last connection closed).
    pub(crate) fn peer_disconnected(&mut self, peer: &PeerId) {
        if self.ledgers.remove(peer).is_some() {
            self.recount();
        }
    }

    /// Re-checks parked entries for blocks that just arrived in the store.
    pub(crate) fn notify_new_blocks(&mut self, cids: &[Cid]) {
        for (peer, ledger) in self.ledgers.iter_mut() {
            let mut queued = false;
            for cid in cids {
                if let Some(entry) = ledger.wants.get_mut(cid) {
                    if entry.queued.is_none() {
                        entry.generation += 1;
                        ledger.enqueue(*cid);
                        queued = true;
                    }
                }
            }
            if queued && !ledger.in_ready {
                ledger.in_ready = true;
                self.ready.push_back(*peer);
            }
        }
    }

    /// Starts lookup jobs round-robin over peers with queued tasks, one job
    /// per peer at a time, for peers `can_send` allows.
    pub(crate) fn schedule(&mut self, can_send: impl Fn(&PeerId) -> bool) {
        let mut turns = self.ready.len();
        while turns > 0 && self.jobs.len() < self.limits.max_concurrent_lookups {
            turns -= 1;
            let Some(peer) = self.ready.pop_front() else {
                break;
            };
            let Some(ledger) = self.ledgers.get_mut(&peer) else {
                continue;
            };
            if ledger.queue.is_empty() {
                ledger.in_ready = false;
                continue;
            }
            if ledger.job_running || !can_send(&peer) {
                self.ready.push_back(peer);
                continue;
            }
            let mut tasks = Vec::with_capacity(self.limits.lookup_batch.min(ledger.queue.len()));
            while tasks.len() < self.limits.lookup_batch {
                let Some((key, cid)) = ledger.queue.pop_first() else {
                    break;
                };
                let Some(entry) = ledger.wants.get_mut(&cid) else {
                    continue;
                };
                entry.queued = None;
                tasks.push(Task {
                    cid,
                    want_type: entry.want_type,
                    generation: entry.generation,
                    key,
                });
            }
            ledger.job_running = true;
            if ledger.queue.is_empty() {
                ledger.in_ready = false;
            } else {
                self.ready.push_back(peer);
            }
            self.jobs.push(self.spawn_job(peer, tasks));
        }
    }

    fn spawn_job(&self, peer: PeerId, tasks: Vec<Task>) -> BoxFuture<'static, JobDone> {
        let source = Arc::clone(&self.source);
        let target = self.limits.target_message_bytes;
        let replace = self.limits.max_have_replace_bytes;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let backup = tasks.clone();
                let job =
                    runtime.spawn_blocking(move || run_job(&*source, peer, tasks, target, replace));
                async move {
                    job.await.unwrap_or_else(|error| {
                        // A panicking block source answers nothing for this batch.
                        tracing::error!(%error, "bitswap: block lookup job failed");
                        JobDone {
                            peer,
                            answered: backup
                                .into_iter()
                                .map(|task| (task, Outcome::DontHave))
                                .collect(),
                            unprocessed: Vec::new(),
                        }
                    })
                }
                .boxed()
            }
            Err(_) => {
                futures::future::ready(run_job(&*source, peer, tasks, target, replace)).boxed()
            }
        }
    }

    /// The next finished job as a message for its peer (`None` inside when
    /// nothing is left to say). Ready(None) when no job is running.
    pub(crate) fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Option<Option<Reply>>> {
        match self.jobs.poll_next_unpin(cx) {
            Poll::Ready(Some(done)) => Poll::Ready(Some(self.finish(done))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn finish(&mut self, done: JobDone) -> Option<Reply> {
        let ledger = self.ledgers.get_mut(&done.peer)?;
        ledger.job_running = false;
        let mut reply = Reply {
            peer: done.peer,
            message: OutMessage::default(),
            block_bytes: 0,
            haves: 0,
            dont_haves: 0,
        };
        for (task, outcome) in done.answered {
            let Some(entry) = ledger.wants.get(&task.cid) else {
                continue;
            };
            if entry.generation != task.generation {
                // Changed while we looked: the newer version is queued again.
                continue;
            }
            match outcome {
                Outcome::Block(data) => {
                    reply.block_bytes += data.len();
                    reply.message.blocks.push((task.cid, data));
                    ledger.remove(&task.cid);
                }
                Outcome::Have => {
                    reply.haves += 1;
                    reply.message.presences.push((task.cid, Presence::Have));
                    ledger.remove(&task.cid);
                }
                Outcome::DontHave => {
                    // Parked: kept (a later notify_new_blocks may serve it).
                    if entry.send_dont_have {
                        reply.dont_haves += 1;
                        reply.message.presences.push((task.cid, Presence::DontHave));
                    }
                }
            }
        }
        for task in done.unprocessed {
            if let Some(entry) = ledger.wants.get_mut(&task.cid) {
                if entry.generation == task.generation && entry.queued.is_none() {
                    entry.queued = Some(task.key);
                    ledger.queue.insert(task.key, task.cid);
                }
            }
        }
        let requeue = !ledger.queue.is_empty() && !ledger.in_ready;
        if requeue {
            ledger.in_ready = true;
            self.ready.push_back(done.peer);
        }
        self.recount();
        (!reply.message.is_empty()).then_some(reply)
    }
}

/// Answers a batch of tasks from the block source; stops reading blocks once
/// `target` bytes are collected and leaves the rest unprocessed.
fn run_job(
    source: &dyn BlockSource,
    peer: PeerId,
    tasks: Vec<Task>,
    target: usize,
    replace: usize,
) -> JobDone {
    let mut bytes = 0usize;
    let mut answered = Vec::with_capacity(tasks.len());
    let mut unprocessed = Vec::new();
    for task in tasks {
        if bytes >= target {
            unprocessed.push(task);
            continue;
        }
        let outcome = match task.want_type {
            WantType::Block => match source.get(&task.cid) {
                Some(data) => {
                    bytes += data.len();
                    Outcome::Block(data)
                }
                None => Outcome::DontHave,
            },
            WantType::Have => match source.size(&task.cid) {
                Some(size) if size <= replace => match source.get(&task.cid) {
                    Some(data) => {
                        bytes += data.len();
                        Outcome::Block(data)
                    }
                    None => Outcome::DontHave,
                },
                Some(_) => Outcome::Have,
                None => Outcome::DontHave,
            },
        };
        answered.push((task, outcome));
    }
    JobDone {
        peer,
        answered,
        unprocessed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitswap::source::MemoryBlockSource;
    use ipnix_store::block::{cid_for, RAW};

    fn limits() -> ServerLimits {
        ServerLimits {
            max_wantlist_entries: 4,
            max_concurrent_lookups: 2,
            lookup_batch: 8,
            target_message_bytes: 1000,
            max_have_replace_bytes: 4,
        }
    }

    fn entry(cid: Cid, want_type: WantType) -> Entry {
        Entry {
            cid,
            priority: 1,
            cancel: false,
            want_type,
            send_dont_have: true,
        }
    }

    fn drain(server: &mut Server) -> Vec<Reply> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut replies = Vec::new();
        loop {
            server.schedule(|_| true);
            match server.poll_reply(&mut cx) {
                Poll::Ready(Some(reply)) => replies.extend(reply),
                Poll::Ready(None) => break,
                Poll::Pending => {}
            }
        }
        replies
    }

    #[test]
    fn serves_blocks_haves_and_dont_haves_and_caps_wantlists() {
        let source = Arc::new(MemoryBlockSource::new());
        let small = cid_for(RAW, b"ab");
        let big = cid_for(RAW, b"abcdefgh");
        source
            .insert(small, Bytes::from_static(b"ab"))
            .expect("insert");
        source
            .insert(big, Bytes::from_static(b"abcdefgh"))
            .expect("insert");
        let missing = cid_for(RAW, b"missing");
        let mut server = Server::new(source, limits());
        let peer = PeerId::random();
        let mut entries = vec![
            entry(big, WantType::Block),
            entry(small, WantType::Have),
            entry(missing, WantType::Have),
        ];
        entries.extend((0..5).map(|i| entry(cid_for(RAW, &[i]), WantType::Block)));
        let applied = server.on_wantlist(peer, entries, false);
        assert_eq!(applied.over_limit, 4);
        assert_eq!(server.entries(), 4);
        let replies = drain(&mut server);
        let blocks: Vec<Cid> = replies
            .iter()
            .flat_map(|r| r.message.blocks.iter().map(|(c, _)| *c))
            .collect();
        let presences: Vec<(Cid, Presence)> = replies
            .iter()
            .flat_map(|r| r.message.presences.clone())
            .collect();
        assert!(blocks.contains(&big));
        assert!(blocks.contains(&small), "tiny block replaces HAVE");
        assert!(presences.contains(&(missing, Presence::DontHave)));
        // Served entries are gone; DONT_HAVE ones stay parked.
        assert!(server.has_entries(&peer));
        assert_eq!(server.entries(), 2);
        server.peer_disconnected(&peer);
        assert_eq!(server.entries(), 0);
    }

    #[test]
    fn full_wantlist_replaces_and_cancel_removes() {
        let source = Arc::new(MemoryBlockSource::new());
        let mut server = Server::new(source, limits());
        let peer = PeerId::random();
        let a = cid_for(RAW, b"a");
        let b = cid_for(RAW, b"b");
        server.on_wantlist(peer, vec![entry(a, WantType::Block)], false);
        server.on_wantlist(peer, vec![entry(b, WantType::Block)], true);
        assert_eq!(server.entries(), 1);
        let mut cancel = entry(b, WantType::Block);
        cancel.cancel = true;
        server.on_wantlist(peer, vec![cancel], false);
        assert_eq!(server.entries(), 0);
        assert!(drain(&mut server).is_empty());
    }

    #[test]
    fn parked_entries_are_served_when_blocks_arrive() {
        let source = Arc::new(MemoryBlockSource::new());
        let mut server = Server::new(source.clone(), limits());
        let peer = PeerId::random();
        let cid = cid_for(RAW, b"later");
        server.on_wantlist(peer, vec![entry(cid, WantType::Block)], false);
        assert_eq!(drain(&mut server).len(), 1, "DONT_HAVE first");
        source
            .insert(cid, Bytes::from_static(b"later"))
            .expect("insert");
        server.notify_new_blocks(&[cid]);
        let replies = drain(&mut server);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].message.blocks.len(), 1);
    }

    #[test]
    fn messages_are_packed_up_to_the_target() {
        let source = Arc::new(MemoryBlockSource::new());
        let mut entries = Vec::new();
        for i in 0..6u8 {
            let data = Bytes::from(vec![i; 400]);
            let cid = cid_for(RAW, &data);
            source.insert(cid, data).expect("insert");
            entries.push(entry(cid, WantType::Block));
        }
        let mut server = Server::new(
            source,
            ServerLimits {
                max_wantlist_entries: 100,
                ..limits()
            },
        );
        server.on_wantlist(PeerId::random(), entries, false);
        let replies = drain(&mut server);
        assert_eq!(replies.len(), 2);
        assert!(replies.iter().all(|r| r.block_bytes <= 1200));
    }
}
