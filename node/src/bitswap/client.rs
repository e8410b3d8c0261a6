//! The Bitswap client: this node's wants and, per peer, which of them that
//! peer holds (at most `max_wants_per_peer`, the rest wait in a backlog), what
//! it answered, and the wantlist updates still to send to it.
//!
//! Strategy per want: want-block (with send-dont-have) to one peer, chosen
//! among those that recently delivered blocks and then by fewest outstanding
//! want-blocks, and want-have to the other peers; a HAVE becomes a want-block
//! when nobody is fetching the block; DONT_HAVE or a timeout moves the
//! want-block on. Everything here is bounded by the number of wants times
//! the number of connected peers. A want-block left unanswered is asked of
//! the same peer again, cancel first (see `REASK_UNANSWERED`), and the
//! blocks delivered in the last seconds answer repeat wants at once.

use super::handler::{Entry, OutMessage};
use super::stats::{Direction, Stats};
use super::wire::{Presence, WantType};
use super::{Event, Version, WantError, WantFailure, WantId, WantOptions};
use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A peer that delivered a block this recently is preferred for want-blocks.
const RECENT_SUPPLIER: Duration = Duration::from_secs(60);
/// A want nobody had is asked again this often: a peer that said DONT_HAVE
/// may have the block by now (it imported it, or fetched it itself).
const REASK_INTERVAL: Duration = Duration::from_secs(3);
/// A want-block gives way to a peer that said HAVE once the peer holding it
/// has sent nothing at all for this long. A peer that died can stay
/// "connected" until its connection times out (QUIC: 10 s idle), far
/// beyond a LAN fetch's patience; a live one sending other blocks is not
/// silent.
const SILENT_PEER: Duration = Duration::from_secs(2);
/// A want-block that its peer has neither answered nor overtaken (served a
/// later want of no higher priority first) is asked of the same peer again
/// after this long, then after twice as long, up to `REASK_MAX_DOUBLINGS`
/// times doubled, until `block_timeout` moves it to another peer. The
/// re-ask is a cancel followed by the want in the next message: Helia keeps
/// a block it sent as "sent" for 5 s and ignores a plain repeat of the want
/// in that time (DESIGN.md, "Bitswap with Helia").
const REASK_UNANSWERED: Duration = Duration::from_secs(2);
const REASK_MAX_DOUBLINGS: u32 = 3;
/// Blocks delivered this recently answer a new want for them at once: a
/// reader that asks for a block the fetch before it received but has not
/// yet stored gets it without asking peers again.
const DELIVERED_KEEP: Duration = Duration::from_secs(5);
const DELIVERED_MAX_BLOCKS: usize = 64;
const DELIVERED_MAX_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub(crate) struct ClientLimits {
    pub max_wants: usize,
    pub max_wants_per_peer: usize,
    pub have_timeout: Duration,
    pub block_timeout: Duration,
}

#[derive(Debug)]
struct Want {
    id: WantId,
    targets: Vec<PeerId>,
    send_dont_have: bool,
    urgent: bool,
    prompt: bool,
    /// Peers holding an entry for this want.
    asked: Vec<PeerId>,
    /// The peer a want-block is outstanding at.
    block_peer: Option<PeerId>,
    failure_reported: bool,
}

impl Want {
    fn targets(&self, peer: &PeerId) -> bool {
        self.targets.is_empty() || self.targets.contains(peer)
    }

    /// Urgent wants top everything; prompt ones come next, in the upper
    /// half of the range; the rest below. Within a tier, older wants first,
    /// as a DAG walk wants them.
    fn priority(&self) -> i32 {
        const HALF: u64 = 1 << 30;
        let age = (self.id.0 % (HALF - 1)) as i32;
        if self.urgent {
            i32::MAX
        } else if self.prompt {
            i32::MAX - 1 - age
        } else {
            (HALF - 1) as i32 - age
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskState {
    Waiting,
    Have,
    DontHave,
    TimedOut,
}

#[derive(Debug)]
struct Ask {
    want_type: WantType,
    state: AskState,
    /// When the entry was last sent (a re-ask sends it again).
    at: Instant,
    /// When it was first sent as this want type: the timeouts count from here.
    first_at: Instant,
    /// Times it was asked again of this peer.
    reasks: u32,
}

impl Ask {
    fn new(want_type: WantType, now: Instant) -> Self {
        Self {
            want_type,
            state: AskState::Waiting,
            at: now,
            first_at: now,
            reasks: 0,
        }
    }
}

/// A block handed out moments ago, kept for wants that come just after.
#[derive(Debug)]
struct Delivered {
    cid: Cid,
    data: Bytes,
    from: PeerId,
    at: Instant,
}

#[derive(Debug)]
struct ClientPeer {
    /// False once the peer is known not to speak Bitswap.
    usable: bool,
    version: Option<Version>,
    sent: HashMap<Cid, Ask>,
    backlog: VecDeque<Cid>,
    backlogged: HashSet<Cid>,
    /// Entries recently removed from `sent` (answered, cancelled, declined):
    /// blocks for them are late, not unsolicited, and a new want for one is
    /// sent after a cancel.
    recent: VecDeque<Cid>,
    recent_set: HashSet<Cid>,
    pending: HashMap<Cid, Entry>,
    /// Entries in `sent` to cancel in the next message and want again in
    /// the one after (the peer may hold them as already answered).
    reask: HashSet<Cid>,
    /// When the last block this peer delivered was asked for, and at what
    /// priority: a want-block asked earlier at no lower priority and still
    /// waiting was overtaken.
    last_served: Option<(Instant, i32)>,
    send_full: bool,
    block_asks: usize,
    last_block: Option<Instant>,
    /// When the peer last sent a block or presence (or connected).
    last_heard: Instant,
    /// A want-block timed out on its silence; chosen last until it speaks.
    unresponsive: bool,
}

impl ClientPeer {
    fn new() -> Self {
        Self {
            usable: true,
            version: None,
            sent: HashMap::new(),
            backlog: VecDeque::new(),
            backlogged: HashSet::new(),
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            pending: HashMap::new(),
            reask: HashSet::new(),
            last_served: None,
            send_full: false,
            block_asks: 0,
            last_block: None,
            last_heard: Instant::now(),
            unresponsive: false,
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.unresponsive = false;
    }

    fn remember(&mut self, cid: Cid, cap: usize) {
        if self.recent_set.insert(cid) {
            self.recent.push_back(cid);
            while self.recent.len() > cap {
                if let Some(old) = self.recent.pop_front() {
                    self.recent_set.remove(&old);
                }
            }
        }
    }

    /// Removes `cid` from what the peer holds; `cancel` tells the peer.
    fn forget(&mut self, cid: Cid, cancel: bool, cap: usize) {
        if let Some(ask) = self.sent.remove(&cid) {
            self.reask.remove(&cid);
            if ask.want_type == WantType::Block && ask.state == AskState::Waiting {
                self.block_asks = self.block_asks.saturating_sub(1);
            }
            self.remember(cid, cap);
            if cancel {
                self.pending.insert(cid, cancel_entry(cid));
            } else {
                self.pending.remove(&cid);
            }
        }
    }

    fn is_recent_supplier(&self, now: Instant) -> bool {
        self.last_block
            .is_some_and(|at| now.duration_since(at) < RECENT_SUPPLIER)
    }
}

/// How a received block was taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BlockVerdict {
    Delivered,
    Duplicate,
    Unsolicited,
}

pub(crate) struct Client {
    limits: ClientLimits,
    stats: Arc<Stats>,
    wants: HashMap<Cid, Want>,
    peers: HashMap<PeerId, ClientPeer>,
    next_id: u64,
    /// Peers with wantlist updates to send.
    dirty: HashSet<PeerId>,
    events: VecDeque<Event>,
    /// Blocks delivered within `DELIVERED_KEEP`, oldest first; bounded by
    /// `DELIVERED_MAX_BLOCKS` and `DELIVERED_MAX_BYTES`.
    delivered: VecDeque<Delivered>,
    delivered_bytes: usize,
}

impl Client {
    pub(crate) fn new(limits: ClientLimits, stats: Arc<Stats>) -> Self {
        Self {
            limits,
            stats,
            wants: HashMap::new(),
            peers: HashMap::new(),
            next_id: 0,
            dirty: HashSet::new(),
            events: VecDeque::new(),
            delivered: VecDeque::new(),
            delivered_bytes: 0,
        }
    }

    fn keep_delivered(&mut self, cid: Cid, data: Bytes, from: PeerId, now: Instant) {
        if data.len() > DELIVERED_MAX_BYTES {
            return;
        }
        self.delivered_bytes += data.len();
        self.delivered.push_back(Delivered {
            cid,
            data,
            from,
            at: now,
        });
        self.prune_delivered(now);
    }

    fn prune_delivered(&mut self, now: Instant) {
        while let Some(oldest) = self.delivered.front() {
            let expired = now.saturating_duration_since(oldest.at) >= DELIVERED_KEEP;
            let over = self.delivered.len() > DELIVERED_MAX_BLOCKS
                || self.delivered_bytes > DELIVERED_MAX_BYTES;
            if !expired && !over {
                return;
            }
            if let Some(dropped) = self.delivered.pop_front() {
                self.delivered_bytes -= dropped.data.len();
            }
        }
    }

    pub(crate) fn wants(&self) -> usize {
        self.wants.len()
    }

    pub(crate) fn is_wanted(&self, cid: &Cid) -> bool {
        self.wants.contains_key(cid)
    }

    pub(crate) fn pop_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether we have entries at this peer (keeps the connection alive).
    pub(crate) fn has_asks(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| !p.sent.is_empty() || !p.backlog.is_empty())
    }

    pub(crate) fn want(&mut self, cid: Cid, options: WantOptions) -> Result<WantId, WantError> {
        ipnix_store::block::check_cid(&cid)
            .map_err(|error| WantError::Unsupported(Box::new(error)))?;
        if !self.wants.contains_key(&cid) {
            let now = Instant::now();
            self.prune_delivered(now);
            if let Some(kept) = self.delivered.iter().rev().find(|d| d.cid == cid) {
                // Delivered moments ago (the caller's store write may still be
                // under way): asking peers again would fetch it twice, and a
                // peer that just sent it may ignore the repeat (Helia, 5 s).
                let (data, from) = (kept.data.clone(), kept.from);
                tracing::trace!(%cid, "bitswap: want answered from the blocks just delivered");
                Stats::add(&self.stats.blocks_redelivered, 1);
                self.events.push_back(Event::Block { cid, data, from });
                let id = WantId(self.next_id);
                self.next_id += 1;
                return Ok(id);
            }
        }
        if let Some(want) = self.wants.get_mut(&cid) {
            let id = want.id;
            let widened = if want.targets.is_empty() || options.peers.is_empty() {
                let was_narrow = !want.targets.is_empty();
                want.targets.clear();
                was_narrow
            } else {
                let before = want.targets.len();
                for peer in options.peers {
                    if !want.targets.contains(&peer) {
                        want.targets.push(peer);
                    }
                }
                want.targets.len() != before
            };
            want.send_dont_have |= options.send_dont_have;
            let before = want.priority();
            want.urgent |= options.urgent;
            want.prompt |= options.prompt;
            if want.priority() != before {
                self.resend(cid);
            }
            // Asked for again: whoever declined earlier is asked afresh.
            self.reask_declined(cid, Instant::now(), None);
            if widened {
                let peers: Vec<PeerId> = self
                    .usable_peers()
                    .filter(|p| self.wants[&cid].targets(p))
                    .collect();
                for peer in peers {
                    self.ask(cid, peer);
                }
            }
            return Ok(id);
        }
        if self.wants.len() >= self.limits.max_wants {
            return Err(WantError::TooManyWants(self.limits.max_wants));
        }
        let id = WantId(self.next_id);
        self.next_id += 1;
        let want = Want {
            id,
            targets: options.peers,
            send_dont_have: options.send_dont_have,
            urgent: options.urgent,
            prompt: options.prompt,
            asked: Vec::new(),
            block_peer: None,
            failure_reported: false,
        };
        let candidates: Vec<PeerId> = self.usable_peers().filter(|p| want.targets(p)).collect();
        self.wants.insert(cid, want);
        if candidates.is_empty() {
            self.report_failure(cid, WantFailure::NoPeers);
            return Ok(id);
        }
        if let Some(best) = self.best_peer(&candidates) {
            self.ask(cid, best);
        }
        for peer in candidates {
            self.ask(cid, peer);
        }
        Ok(id)
    }

    /// Tells every peer holding the want its new priority.
    fn resend(&mut self, cid: Cid) {
        let Some(want) = self.wants.get(&cid) else {
            return;
        };
        for peer_id in &want.asked {
            if let Some(peer) = self.peers.get_mut(peer_id) {
                if let Some(ask) = peer.sent.get(&cid) {
                    if ask.state == AskState::Waiting || ask.state == AskState::Have {
                        peer.pending
                            .insert(cid, entry_for(cid, want, ask.want_type));
                        self.dirty.insert(*peer_id);
                    }
                }
            }
        }
    }

    /// Asks again the peers that said DONT_HAVE or never answered, if they
    /// were last asked at least `older_than` ago (`None`: whenever).
    fn reask_declined(&mut self, cid: Cid, now: Instant, older_than: Option<Duration>) {
        let Some(want) = self.wants.get(&cid) else {
            return;
        };
        let declined: Vec<PeerId> = want
            .asked
            .iter()
            .filter(|id| {
                self.peers
                    .get(id)
                    .filter(|p| p.usable)
                    .and_then(|p| p.sent.get(&cid))
                    .is_some_and(|ask| {
                        matches!(ask.state, AskState::DontHave | AskState::TimedOut)
                            && older_than.is_none_or(|d| now.duration_since(ask.at) >= d)
                    })
            })
            .copied()
            .collect();
        let cap = self.limits.max_wants_per_peer;
        for peer_id in declined {
            if let Some(peer) = self.peers.get_mut(&peer_id) {
                peer.forget(cid, false, cap);
            }
            self.ask(cid, peer_id);
        }
    }

    /// Withdraws a want; true if it existed.
    pub(crate) fn cancel(&mut self, cid: &Cid) -> bool {
        match self.wants.remove(cid) {
            Some(want) => {
                self.release(*cid, &want, None);
                true
            }
            None => false,
        }
    }

    fn usable_peers(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.peers
            .iter()
            .filter(|(_, p)| p.usable)
            .map(|(id, _)| *id)
    }

    fn best_peer(&self, candidates: &[PeerId]) -> Option<PeerId> {
        let now = Instant::now();
        candidates
            .iter()
            .filter_map(|id| self.peers.get(id).map(|p| (id, p)))
            .min_by_key(|(_, p)| (p.unresponsive, !p.is_recent_supplier(now), p.block_asks))
            .map(|(id, _)| *id)
    }

    fn report_failure(&mut self, cid: Cid, reason: WantFailure) {
        if let Some(want) = self.wants.get_mut(&cid) {
            if !want.failure_reported {
                want.failure_reported = true;
                self.events.push_back(Event::WantFailed { cid, reason });
            }
        }
    }

    /// Puts a want on a peer's wantlist: want-block if nobody is fetching the
    /// block yet, else want-have; into the backlog if the peer's list is full.
    fn ask(&mut self, cid: Cid, peer_id: PeerId) {
        let Some(want) = self.wants.get_mut(&cid) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        if !peer.usable {
            return;
        }
        let fetch_here = want.block_peer.is_none();
        if let Some(ask) = peer.sent.get_mut(&cid) {
            let answered_no = matches!(ask.state, AskState::DontHave | AskState::TimedOut);
            if fetch_here && ask.want_type == WantType::Have && !answered_no {
                *ask = Ask::new(WantType::Block, Instant::now());
                peer.block_asks += 1;
                want.block_peer = Some(peer_id);
                peer.pending
                    .insert(cid, entry_for(cid, want, WantType::Block));
                self.dirty.insert(peer_id);
            }
            return;
        }
        if peer.sent.len() >= self.limits.max_wants_per_peer {
            if peer.backlogged.insert(cid) {
                peer.backlog.push_back(cid);
            }
            return;
        }
        // Peers before 1.2.0 read a want-have as a want-block anyway.
        let old_protocol = peer.version.is_some_and(|v| v < Version::V1_2_0);
        let want_type = if fetch_here || old_protocol {
            WantType::Block
        } else {
            WantType::Have
        };
        peer.sent.insert(cid, Ask::new(want_type, Instant::now()));
        peer.pending.insert(cid, entry_for(cid, want, want_type));
        if peer.recent_set.contains(&cid) {
            // The peer held this want moments ago and may still count it as
            // answered (Helia ignores a repeat for 5 s): cancel it first.
            peer.reask.insert(cid);
        }
        if want_type == WantType::Block {
            peer.block_asks += 1;
        }
        if fetch_here {
            want.block_peer = Some(peer_id);
        }
        if !want.asked.contains(&peer_id) {
            want.asked.push(peer_id);
        }
        want.failure_reported = false;
        self.dirty.insert(peer_id);
    }

    /// Removes a finished or cancelled want from every peer holding it
    /// (telling them, except `except`, which already dropped it), then fills
    /// the freed slots from the backlogs.
    fn release(&mut self, cid: Cid, want: &Want, except: Option<PeerId>) {
        let cap = self.limits.max_wants_per_peer;
        for peer_id in &want.asked {
            if let Some(peer) = self.peers.get_mut(peer_id) {
                peer.forget(cid, Some(*peer_id) != except, cap);
                self.dirty.insert(*peer_id);
            }
        }
        for peer_id in want.asked.clone() {
            self.fill_backlog(peer_id);
        }
    }

    fn fill_backlog(&mut self, peer_id: PeerId) {
        loop {
            let Some(peer) = self.peers.get_mut(&peer_id) else {
                return;
            };
            if peer.sent.len() >= self.limits.max_wants_per_peer {
                return;
            }
            let Some(cid) = peer.backlog.pop_front() else {
                return;
            };
            peer.backlogged.remove(&cid);
            if self.wants.contains_key(&cid) {
                self.ask(cid, peer_id);
            }
        }
    }

    /// Moves a want forward after a peer declined or timed out.
    fn advance(&mut self, cid: Cid) {
        let Some(want) = self.wants.get(&cid) else {
            return;
        };
        if want.block_peer.is_some() {
            return;
        }
        let haves: Vec<PeerId> = want
            .asked
            .iter()
            .filter(|id| {
                self.peers
                    .get(id)
                    .and_then(|p| p.sent.get(&cid))
                    .is_some_and(|ask| ask.state == AskState::Have)
            })
            .copied()
            .collect();
        if let Some(best) = self.best_peer(&haves) {
            self.ask(cid, best);
            return;
        }
        let waiting = want.asked.iter().any(|id| {
            self.peers
                .get(id)
                .and_then(|p| p.sent.get(&cid))
                .is_some_and(|ask| ask.state == AskState::Waiting)
        });
        let backlogged = self.peers.values().any(|p| p.backlogged.contains(&cid));
        if !waiting && !backlogged {
            let asked = want.asked.len();
            let reason = if asked == 0 {
                WantFailure::NoPeers
            } else {
                WantFailure::NotFound { asked }
            };
            self.report_failure(cid, reason);
        }
    }

    /// Takes a verified block from `from`.
    pub(crate) fn on_block(&mut self, from: PeerId, cid: Cid, data: Bytes) -> BlockVerdict {
        let now = Instant::now();
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.heard(now);
            if peer.sent.contains_key(&cid) || self.wants.contains_key(&cid) {
                peer.last_block = Some(now);
            }
            if let (Some(ask), Some(want)) = (peer.sent.get(&cid), self.wants.get(&cid)) {
                peer.last_served = Some((ask.at, want.priority()));
            }
        }
        if let Some(want) = self.wants.remove(&cid) {
            self.release(cid, &want, Some(from));
            self.keep_delivered(cid, data.clone(), from, now);
            Stats::add(&self.stats.blocks_received, 1);
            Stats::add(&self.stats.block_bytes_received, data.len() as u64);
            self.stats
                .transfers
                .record(Direction::In, from, cid, 1, data.len() as u64);
            self.events.push_back(Event::Block { cid, data, from });
            return BlockVerdict::Delivered;
        }
        let known = self
            .peers
            .get(&from)
            .is_some_and(|p| p.sent.contains_key(&cid) || p.recent_set.contains(&cid));
        if known {
            Stats::add(&self.stats.duplicate_blocks, 1);
            Stats::add(&self.stats.duplicate_bytes, data.len() as u64);
            BlockVerdict::Duplicate
        } else {
            Stats::add(&self.stats.unwanted_blocks, 1);
            Stats::add(&self.stats.unwanted_bytes, data.len() as u64);
            BlockVerdict::Unsolicited
        }
    }

    pub(crate) fn on_presence(&mut self, from: PeerId, cid: Cid, presence: Presence) {
        match presence {
            Presence::Have => Stats::add(&self.stats.haves_received, 1),
            Presence::DontHave => Stats::add(&self.stats.dont_haves_received, 1),
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.heard(Instant::now());
        }
        let Some(want) = self.wants.get_mut(&cid) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        let Some(ask) = peer.sent.get_mut(&cid) else {
            return;
        };
        match presence {
            Presence::Have => {
                if ask.state == AskState::Waiting && ask.want_type == WantType::Block {
                    // Still waiting for the block itself.
                } else {
                    ask.state = AskState::Have;
                }
                self.events.push_back(Event::Have { cid, from });
                if want.block_peer.is_none() {
                    self.ask(cid, from);
                }
            }
            Presence::DontHave => {
                if ask.want_type == WantType::Block && ask.state == AskState::Waiting {
                    peer.block_asks = peer.block_asks.saturating_sub(1);
                }
                ask.state = AskState::DontHave;
                if want.block_peer == Some(from) {
                    want.block_peer = None;
                }
                self.events.push_back(Event::DontHave { cid, from });
                self.advance(cid);
            }
        }
    }

    /// Times out unanswered asks (and want-blocks at a silent peer when
    /// another peer said HAVE); call about once a second.
    pub(crate) fn tick(&mut self, now: Instant) {
        let mut expired = Vec::new();
        for (cid, want) in &self.wants {
            let ask_at = |id: &PeerId| self.peers.get(id).and_then(|p| p.sent.get(cid));
            let someone_has = want
                .asked
                .iter()
                .any(|id| ask_at(id).is_some_and(|ask| ask.state == AskState::Have));
            for peer_id in &want.asked {
                let (Some(peer), Some(ask)) = (self.peers.get(peer_id), ask_at(peer_id)) else {
                    continue;
                };
                if ask.state != AskState::Waiting {
                    continue;
                }
                let waited = now.saturating_duration_since(ask.first_at);
                let limit = match ask.want_type {
                    WantType::Block => self.limits.block_timeout,
                    WantType::Have => self.limits.have_timeout,
                };
                let silent = ask.want_type == WantType::Block
                    && someone_has
                    && waited >= SILENT_PEER
                    && now.saturating_duration_since(peer.last_heard) >= SILENT_PEER;
                if waited >= limit || silent {
                    expired.push((*cid, *peer_id, silent));
                }
            }
        }
        let mut moved = Vec::new();
        for (cid, peer_id, silent) in expired {
            let (Some(want), Some(peer)) = (self.wants.get_mut(&cid), self.peers.get_mut(&peer_id))
            else {
                continue;
            };
            let Some(ask) = peer.sent.get_mut(&cid) else {
                continue;
            };
            ask.state = AskState::TimedOut;
            if ask.want_type == WantType::Block {
                peer.block_asks = peer.block_asks.saturating_sub(1);
                if silent && !peer.unresponsive {
                    peer.unresponsive = true;
                    tracing::info!(
                        "bitswap: {peer_id} sent nothing for {SILENT_PEER:?}; \
                         its want-blocks go to peers that have the blocks"
                    );
                }
                if want.block_peer == Some(peer_id) {
                    want.block_peer = None;
                }
            }
            moved.push(cid);
        }
        for cid in moved {
            self.advance(cid);
        }
        let unanswered: Vec<Cid> = self
            .wants
            .iter()
            .filter(|(_, want)| want.failure_reported)
            .map(|(cid, _)| *cid)
            .collect();
        for cid in unanswered {
            self.reask_declined(cid, now, Some(REASK_INTERVAL));
        }
        self.reask_unanswered(now);
        self.prune_delivered(now);
    }

    /// Asks a peer again (cancel, then the want) for want-blocks it has
    /// neither answered nor overtaken, so a want or a reply lost on the way
    /// (or ignored as already answered) costs seconds, not `block_timeout`.
    fn reask_unanswered(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (cid, want) in &self.wants {
            for peer_id in &want.asked {
                let Some(peer) = self.peers.get(peer_id) else {
                    continue;
                };
                let Some(ask) = peer.sent.get(cid) else {
                    continue;
                };
                if ask.state != AskState::Waiting
                    || ask.want_type != WantType::Block
                    || peer.reask.contains(cid)
                {
                    continue;
                }
                let interval = REASK_UNANSWERED * 2u32.pow(ask.reasks.min(REASK_MAX_DOUBLINGS));
                if now.saturating_duration_since(ask.at) < interval {
                    continue;
                }
                // Nothing at all since we asked, or a later want of no higher
                // priority served first: this one was lost or ignored. A peer
                // busy sending older or more urgent blocks is left alone.
                let silent = peer.last_heard <= ask.at;
                let overtaken = peer
                    .last_served
                    .is_some_and(|(at, priority)| at > ask.at && priority <= want.priority());
                if silent || overtaken {
                    due.push((*cid, *peer_id));
                }
            }
        }
        for (cid, peer_id) in due {
            let Some(peer) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            let Some(ask) = peer.sent.get_mut(&cid) else {
                continue;
            };
            ask.at = now;
            ask.reasks += 1;
            tracing::debug!(
                %cid,
                peer = %peer_id,
                reasks = ask.reasks,
                "bitswap: want-block unanswered; asking the peer again"
            );
            peer.reask.insert(cid);
            self.dirty.insert(peer_id);
            Stats::add(&self.stats.wants_reasked, 1);
        }
    }

    /// A connection to a peer we had no connection to: send it our wants.
    pub(crate) fn peer_connected(&mut self, peer_id: PeerId) {
        if self.peers.contains_key(&peer_id) {
            return;
        }
        self.peers.insert(peer_id, ClientPeer::new());
        self.ask_everything(peer_id);
    }

    fn ask_everything(&mut self, peer_id: PeerId) {
        let cids: Vec<Cid> = self
            .wants
            .iter()
            .filter(|(_, want)| want.targets(&peer_id))
            .map(|(cid, _)| *cid)
            .collect();
        for cid in cids {
            self.ask(cid, peer_id);
        }
    }

    /// Identify told us the peer's protocols, or stream negotiation failed.
    pub(crate) fn set_usable(&mut self, peer_id: PeerId, usable: bool) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        if peer.usable == usable {
            return;
        }
        if usable {
            peer.usable = true;
            self.ask_everything(peer_id);
        } else {
            self.drop_peer_state(peer_id);
            let mut fresh = ClientPeer::new();
            fresh.usable = false;
            self.peers.insert(peer_id, fresh);
        }
    }

    pub(crate) fn set_version(&mut self, peer_id: PeerId, version: Version) {
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            peer.version = Some(version);
        }
    }

    /// The last connection to the peer closed.
    pub(crate) fn peer_disconnected(&mut self, peer_id: PeerId) {
        self.drop_peer_state(peer_id);
    }

    fn drop_peer_state(&mut self, peer_id: PeerId) {
        let Some(peer) = self.peers.remove(&peer_id) else {
            return;
        };
        self.dirty.remove(&peer_id);
        let mut affected: Vec<Cid> = peer.sent.keys().copied().collect();
        affected.extend(peer.backlog.iter().copied());
        for cid in affected {
            if let Some(want) = self.wants.get_mut(&cid) {
                want.asked.retain(|id| *id != peer_id);
                if want.block_peer == Some(peer_id) {
                    want.block_peer = None;
                }
                self.advance(cid);
            }
        }
    }

    /// A message to this peer was lost: resend the whole wantlist next.
    pub(crate) fn on_send_failed(&mut self, peer_id: PeerId) {
        if let Some(peer) = self.peers.get_mut(&peer_id) {
            if peer.usable {
                peer.send_full = true;
                self.dirty.insert(peer_id);
            }
        }
    }

    /// Peers with updates to send.
    pub(crate) fn dirty_peers(&self) -> Vec<PeerId> {
        self.dirty.iter().copied().collect()
    }

    /// The wantlist update for a peer, if any.
    pub(crate) fn take_message(&mut self, peer_id: PeerId) -> Option<OutMessage> {
        self.dirty.remove(&peer_id);
        let peer = self.peers.get_mut(&peer_id)?;
        let mut message = OutMessage::default();
        if peer.send_full {
            peer.send_full = false;
            peer.pending.clear();
            message.full = true;
            for (cid, ask) in &peer.sent {
                // Re-asks leave the full list out; their cancel and want follow.
                if peer.reask.contains(cid) {
                    continue;
                }
                if let Some(want) = self.wants.get(cid) {
                    message.entries.push(entry_for(*cid, want, ask.want_type));
                }
            }
            if !peer.reask.is_empty() {
                self.dirty.insert(peer_id);
            }
        } else {
            // A re-ask is a cancel in this message and the want in the next:
            // a peer reading one message at a time forgets the old entry
            // (and whether it answered it) before it sees the new one.
            let reasks: Vec<Cid> = peer.reask.drain().collect();
            for cid in &reasks {
                peer.pending.insert(*cid, cancel_entry(*cid));
            }
            message.entries = peer.pending.drain().map(|(_, entry)| entry).collect();
            for cid in reasks {
                if let (Some(ask), Some(want)) = (peer.sent.get(&cid), self.wants.get(&cid)) {
                    peer.pending
                        .insert(cid, entry_for(cid, want, ask.want_type));
                    self.dirty.insert(peer_id);
                }
            }
        }
        (!message.is_empty()).then_some(message)
    }
}

fn cancel_entry(cid: Cid) -> Entry {
    Entry {
        cid,
        priority: 0,
        cancel: true,
        want_type: WantType::Block,
        send_dont_have: false,
    }
}

fn entry_for(cid: Cid, want: &Want, want_type: WantType) -> Entry {
    Entry {
        cid,
        priority: want.priority(),
        cancel: false,
        want_type,
        send_dont_have: want.send_dont_have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnix_store::block::{cid_for, RAW};

    fn client() -> Client {
        Client::new(
            ClientLimits {
                max_wants: 10,
                max_wants_per_peer: 2,
                have_timeout: Duration::from_secs(5),
                block_timeout: Duration::from_secs(10),
            },
            Arc::new(Stats::default()),
        )
    }

    fn entries(client: &mut Client, peer: PeerId) -> Vec<(Cid, WantType, bool)> {
        let mut out: Vec<_> = client
            .take_message(peer)
            .map(|m| {
                m.entries
                    .into_iter()
                    .map(|e| (e.cid, e.want_type, e.cancel))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|(cid, ..)| cid.to_bytes());
        out
    }

    #[test]
    fn one_want_block_then_haves_then_block_moves_on_dont_have() {
        let mut client = client();
        let (a, b) = (PeerId::random(), PeerId::random());
        client.peer_connected(a);
        client.peer_connected(b);
        let cid = cid_for(RAW, b"x");
        client.want(cid, WantOptions::default()).expect("want");
        let to_a = entries(&mut client, a);
        let to_b = entries(&mut client, b);
        let kinds: Vec<WantType> = to_a.iter().chain(&to_b).map(|(_, kind, _)| *kind).collect();
        assert_eq!(kinds.iter().filter(|k| **k == WantType::Block).count(), 1);
        assert_eq!(kinds.iter().filter(|k| **k == WantType::Have).count(), 1);
        let (block_peer, other) = if to_a[0].1 == WantType::Block {
            (a, b)
        } else {
            (b, a)
        };
        client.on_presence(other, cid, Presence::Have);
        client.on_presence(block_peer, cid, Presence::DontHave);
        assert_eq!(
            entries(&mut client, other),
            vec![(cid, WantType::Block, false)]
        );
        assert_eq!(
            client.on_block(other, cid, Bytes::from_static(b"x")),
            BlockVerdict::Delivered
        );
        // The first peer is told to cancel; a late copy is a duplicate.
        assert_eq!(
            entries(&mut client, block_peer),
            vec![(cid, WantType::Block, true)]
        );
        assert_eq!(
            client.on_block(block_peer, cid, Bytes::from_static(b"x")),
            BlockVerdict::Duplicate
        );
        let stranger = cid_for(RAW, b"never asked");
        assert_eq!(
            client.on_block(block_peer, stranger, Bytes::from_static(b"never asked")),
            BlockVerdict::Unsolicited
        );
    }

    #[test]
    fn all_dont_have_reports_not_found_and_new_peers_get_the_want() {
        let mut client = client();
        let cid = cid_for(RAW, b"y");
        client.want(cid, WantOptions::default()).expect("want");
        assert!(matches!(
            client.pop_event(),
            Some(Event::WantFailed {
                reason: WantFailure::NoPeers,
                ..
            })
        ));
        let a = PeerId::random();
        client.peer_connected(a);
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
        client.on_presence(a, cid, Presence::DontHave);
        assert!(matches!(client.pop_event(), Some(Event::DontHave { .. })));
        assert!(matches!(
            client.pop_event(),
            Some(Event::WantFailed {
                reason: WantFailure::NotFound { asked: 1 },
                ..
            })
        ));
        let b = PeerId::random();
        client.peer_connected(b);
        assert_eq!(entries(&mut client, b), vec![(cid, WantType::Block, false)]);
    }

    #[test]
    fn a_peer_that_declined_is_asked_again_later_and_on_a_new_want() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let cid = cid_for(RAW, b"later");
        client.want(cid, WantOptions::default()).expect("want");
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
        client.on_presence(a, cid, Presence::DontHave);
        client.tick(Instant::now());
        assert_eq!(entries(&mut client, a), vec![], "not at once");
        client.tick(Instant::now() + REASK_INTERVAL);
        // Asked afresh: a cancel first, so the peer answers anew (Helia
        // says DONT_HAVE once per entry), then the want.
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, true)]);
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
        client.on_presence(a, cid, Presence::DontHave);
        client
            .want(cid, WantOptions::default())
            .expect("want again");
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, true)]);
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
    }

    #[test]
    fn per_peer_cap_backlogs_and_fills_on_completion() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let cids: Vec<Cid> = (0..4u8).map(|i| cid_for(RAW, &[i])).collect();
        for cid in &cids {
            client.want(*cid, WantOptions::default()).expect("want");
        }
        assert_eq!(entries(&mut client, a).len(), 2);
        let first = *client.peers[&a].sent.keys().next().expect("one sent");
        let data = Bytes::from(vec![
            cids.iter().position(|c| *c == first).expect("known") as u8
        ]);
        assert_eq!(client.on_block(a, first, data), BlockVerdict::Delivered);
        assert_eq!(client.peers[&a].sent.len(), 2, "backlog refilled the slot");
    }

    #[test]
    fn timeouts_move_the_want_block() {
        let mut client = client();
        let (a, b) = (PeerId::random(), PeerId::random());
        client.peer_connected(a);
        client.peer_connected(b);
        let cid = cid_for(RAW, b"z");
        client.want(cid, WantOptions::default()).expect("want");
        let block_peer = client.wants[&cid].block_peer.expect("someone fetches");
        let other = if block_peer == a { b } else { a };
        client.on_presence(other, cid, Presence::Have);
        client.tick(Instant::now() + Duration::from_secs(11));
        assert_eq!(client.wants[&cid].block_peer, Some(other));
    }

    #[test]
    fn a_silent_peer_gives_the_want_block_to_one_that_has_the_block() {
        let mut client = client();
        let (dead, alive) = (PeerId::random(), PeerId::random());
        client.peer_connected(dead);
        client.peer_connected(alive);
        let cid = cid_for(RAW, b"s");
        client.want(cid, WantOptions::default()).expect("want");
        let block_peer = client.wants[&cid].block_peer.expect("someone fetches");
        let (dead, alive) = if block_peer == dead {
            (dead, alive)
        } else {
            (alive, dead)
        };
        client.on_presence(alive, cid, Presence::Have);
        let now = Instant::now();
        client.tick(now + SILENT_PEER / 2);
        assert_eq!(client.wants[&cid].block_peer, Some(dead), "not at once");
        client.tick(now + SILENT_PEER + Duration::from_millis(100));
        assert_eq!(client.wants[&cid].block_peer, Some(alive));
        assert!(client.peers[&dead].unresponsive);
        // The next want's block goes to the peer that answers.
        let next = cid_for(RAW, b"t");
        client.want(next, WantOptions::default()).expect("want");
        assert_eq!(client.wants[&next].block_peer, Some(alive));
        // Hearing from the silent peer again makes it a candidate again.
        client.on_presence(dead, next, Presence::DontHave);
        assert!(!client.peers[&dead].unresponsive);
    }

    #[test]
    fn a_silent_peer_keeps_the_want_block_when_nobody_else_has_it() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let cid = cid_for(RAW, b"u");
        client.want(cid, WantOptions::default()).expect("want");
        client.tick(Instant::now() + SILENT_PEER * 2);
        assert_eq!(client.wants[&cid].block_peer, Some(a));
    }

    #[test]
    fn urgent_then_prompt_then_background_and_upgrades_are_resent() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let background = cid_for(RAW, b"bg");
        let prompt = cid_for(RAW, b"prompt");
        let urgent = cid_for(RAW, b"urgent");
        client
            .want(background, WantOptions::default())
            .expect("want");
        let prompt_options = WantOptions {
            prompt: true,
            ..WantOptions::default()
        };
        client.want(prompt, prompt_options.clone()).expect("want");
        let urgent_options = WantOptions {
            urgent: true,
            ..WantOptions::default()
        };
        client.want(urgent, urgent_options).expect("want");
        let priority = |client: &Client, cid: &Cid| client.wants[cid].priority();
        assert!(priority(&client, &urgent) > priority(&client, &prompt));
        assert!(priority(&client, &prompt) > priority(&client, &background));
        // A later prompt want still beats an older background one.
        client.cancel(&prompt);
        client.want(prompt, prompt_options.clone()).expect("want");
        assert!(priority(&client, &prompt) > priority(&client, &background));
        // Made prompt later: the peer holding it hears the new priority.
        let _ = client.take_message(a);
        client.want(background, prompt_options).expect("want again");
        let message = client.take_message(a).expect("an update");
        let entry = message
            .entries
            .iter()
            .find(|e| e.cid == background)
            .expect("the upgraded want");
        assert_eq!(entry.priority, priority(&client, &background));
        assert!(!entry.cancel);
    }

    #[test]
    fn an_unanswered_want_block_is_asked_again_cancel_first_then_the_want() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let cid = cid_for(RAW, b"lost");
        client.want(cid, WantOptions::default()).expect("want");
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
        let now = Instant::now();
        client.tick(now + REASK_UNANSWERED / 2);
        assert_eq!(entries(&mut client, a), vec![], "not at once");
        client.tick(now + REASK_UNANSWERED + Duration::from_millis(10));
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, true)]);
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
        // The next re-ask waits twice as long.
        client.tick(now + REASK_UNANSWERED * 2 + Duration::from_millis(20));
        assert_eq!(entries(&mut client, a), vec![]);
        assert_eq!(client.peers[&a].sent[&cid].reasks, 1);
    }

    #[test]
    fn a_block_wanted_again_just_after_delivery_is_handed_out_again() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let cid = cid_for(RAW, b"again");
        client.want(cid, WantOptions::default()).expect("want");
        let _ = entries(&mut client, a);
        assert_eq!(
            client.on_block(a, cid, Bytes::from_static(b"again")),
            BlockVerdict::Delivered
        );
        assert!(matches!(client.pop_event(), Some(Event::Block { .. })));
        client
            .want(cid, WantOptions::default())
            .expect("want again");
        assert!(matches!(client.pop_event(), Some(Event::Block { cid: c, .. }) if c == cid));
        assert_eq!(entries(&mut client, a), vec![], "the peer is not asked");
        // Once forgotten, a new want goes to the peer, after a cancel (it
        // may still count the block as sent).
        client.prune_delivered(Instant::now() + DELIVERED_KEEP);
        client
            .want(cid, WantOptions::default())
            .expect("want later");
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, true)]);
        assert_eq!(entries(&mut client, a), vec![(cid, WantType::Block, false)]);
    }

    #[test]
    fn disconnect_and_cancel_clean_up() {
        let mut client = client();
        let a = PeerId::random();
        client.peer_connected(a);
        let cid = cid_for(RAW, b"w");
        client.want(cid, WantOptions::default()).expect("want");
        client.peer_disconnected(a);
        assert!(client.wants[&cid].asked.is_empty());
        assert!(client.cancel(&cid));
        assert_eq!(client.wants(), 0);
    }
}
