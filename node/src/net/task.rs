//! The swarm task: owns the `Swarm`, serves [`Command`]s from handles, turns
//! swarm events into replies, feeds identify and mDNS results into Kademlia,
//! expires block requests, and reprovides pinned roots.

use super::behaviour::{Behaviour, BehaviourEvent};
use super::handle::{Command, NodeStats, PeerInfo, Reply};
use super::transport::{self, is_quic};
use super::{NetConfig, NetError, AMINO_KAD_PROTOCOL, LAN_KAD_PROTOCOL};
use crate::{bitswap, pathinfo, sourceshare};
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use ipnix_store::Store;
use libp2p::core::transport::ListenerId;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, mdns, Multiaddr, PeerId, Swarm};
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU8;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Callers that may wait for blocks at once (all CIDs together).
const MAX_BLOCK_WAITERS: usize = 16 * 1024;
/// How long a want goes to connected peers only before the DHT is asked.
const DISCOVERY_GRACE: Duration = Duration::from_millis(1500);
/// DHT lookups for wanted blocks running at once.
const MAX_DISCOVERY_LOOKUPS: usize = 8;
/// Providers connected per discovery lookup.
const DISCOVERY_PROVIDERS: usize = 8;
/// Provider lookups (user and discovery) running at once.
const MAX_PROVIDER_LOOKUPS: usize = 64;
/// Reprovide announcements running at once.
const MAX_REPROVIDES: usize = 8;
/// How often expired requests are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(200);
/// A dial that has not finished by then is reported as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bitswap violations after which a peer is disconnected.
const MAX_PENALTIES: u32 = 8;
/// Listen addresses kept per identified peer for the DHT.
const MAX_ADDRS_PER_PEER: usize = 16;
/// Questions to peers (path-infos and sources) running at once, and peers
/// asked per question.
const MAX_PEER_ASKS: usize = 256;
const MAX_PEERS_PER_ASK: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dht {
    Lan,
    Public,
}

struct BlockWaiter {
    deadline: Instant,
    timeout: Duration,
    reply: Reply<Bytes>,
}

struct Want {
    waiters: Vec<BlockWaiter>,
    /// When to look the CID up in the DHT (None: never, or already done).
    discover_at: Option<Instant>,
}

struct ProviderLookup {
    found: Vec<PeerId>,
    limit: usize,
    deadline: Instant,
    connect: bool,
    queries: Vec<(Dht, QueryId)>,
    reply: Option<Reply<Vec<PeerId>>>,
    /// A discovery lookup started for a wanted block (counts against its own cap).
    discovery: bool,
}

/// One question ("which path-info has hash H?", "which holds source S?")
/// sent to several peers; the first positive answer wins.
struct PeerAsk {
    outstanding: usize,
    deadline: Instant,
    reply: Reply<Option<(PeerId, Cid)>>,
}

/// A question for peers, with the protocol that carries it.
enum PeerQuestion {
    PathInfo(pathinfo::Request),
    Source(sourceshare::Request),
}

impl PeerQuestion {
    fn protocol(&self) -> libp2p::StreamProtocol {
        match self {
            PeerQuestion::PathInfo(_) => pathinfo::PROTOCOL,
            PeerQuestion::Source(_) => sourceshare::PROTOCOL,
        }
    }
}

/// Which ask protocol a request went out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AskProtocol {
    PathInfo,
    Source,
}

struct PendingDial {
    addr: Multiaddr,
    deadline: Instant,
    replies: Vec<Reply<PeerId>>,
}

#[derive(Default)]
struct PeerState {
    connections: Vec<(ConnectionId, Multiaddr)>,
    agent: Option<String>,
    protocols: Vec<String>,
    /// Bitswap protocol violations seen from this peer.
    penalties: u32,
}

pub(crate) struct SwarmTask {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    store: Arc<Store>,
    listen: Vec<Multiaddr>,
    bootstrap: Vec<Multiaddr>,
    public_dht: bool,
    /// Answer `/ipnix/pathinfo/1.0.0` and announce store paths
    /// ([`NetConfig::share_paths`], or a private network).
    share_paths: bool,
    reprovide_interval: Duration,
    listeners: HashMap<ListenerId, (Multiaddr, bool)>,
    ready: Option<oneshot::Sender<Result<(), NetError>>>,
    peers: HashMap<PeerId, PeerState>,
    dials: HashMap<ConnectionId, PendingDial>,
    wants: HashMap<Cid, Want>,
    waiter_count: usize,
    lookups: HashMap<u64, ProviderLookup>,
    lookup_of_query: HashMap<(Dht, QueryId), u64>,
    next_lookup: u64,
    provides: HashMap<(Dht, QueryId), u64>,
    provide_waits: HashMap<u64, (usize, Option<Reply<()>>)>,
    next_provide: u64,
    reprovide_queue: VecDeque<Cid>,
    reprovide_running: usize,
    /// Whether the last reprovide reached a DHT peer; if not, the first peer
    /// that joins a routing table triggers another.
    reprovided_to_peers: bool,
    pins_tx: mpsc::Sender<Vec<Cid>>,
    pins_rx: mpsc::Receiver<Vec<Cid>>,
    peer_asks: HashMap<u64, PeerAsk>,
    /// Request ids count per protocol, so they are kept with theirs.
    ask_of_request: HashMap<(AskProtocol, OutboundRequestId), u64>,
    next_ask: u64,
}

impl SwarmTask {
    pub(crate) fn new(
        config: NetConfig,
        store: Arc<Store>,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Self, NetError> {
        let (transport, transports) =
            transport::build(&config.keypair, config.swarm_key, config.public_dht)?;
        let behaviour = Behaviour::new(&config, store.clone())?;
        let peer_id = config.keypair.public().to_peer_id();
        let swarm = Swarm::new(
            transport,
            behaviour,
            peer_id,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(config.idle_timeout),
        );
        let listen = config
            .listen
            .into_iter()
            .filter(|addr| {
                let quic = is_quic(addr);
                if quic && !transports.quic {
                    tracing::info!("not listening on {addr}: QUIC is off in a private network");
                }
                !quic || transports.quic
            })
            .collect();
        let (pins_tx, pins_rx) = mpsc::channel(1);
        Ok(Self {
            swarm,
            commands,
            store,
            listen,
            bootstrap: config.bootstrap,
            public_dht: config.public_dht,
            share_paths: config.share_paths || config.swarm_key.is_some(),
            reprovide_interval: config.reprovide_interval,
            listeners: HashMap::new(),
            ready: None,
            peers: HashMap::new(),
            dials: HashMap::new(),
            wants: HashMap::new(),
            waiter_count: 0,
            lookups: HashMap::new(),
            lookup_of_query: HashMap::new(),
            next_lookup: 0,
            provides: HashMap::new(),
            provide_waits: HashMap::new(),
            next_provide: 0,
            reprovide_queue: VecDeque::new(),
            reprovide_running: 0,
            reprovided_to_peers: false,
            pins_tx,
            pins_rx,
            peer_asks: HashMap::new(),
            ask_of_request: HashMap::new(),
            next_ask: 0,
        })
    }

    pub(crate) async fn run(mut self, ready: oneshot::Sender<Result<(), NetError>>) {
        for addr in std::mem::take(&mut self.listen) {
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    self.listeners.insert(id, (addr, false));
                }
                Err(e) => {
                    let _ = ready.send(Err(NetError::Listen {
                        addr,
                        reason: e.to_string(),
                    }));
                    return;
                }
            }
        }
        self.ready = Some(ready);
        self.check_ready();
        self.start_bootstrap();

        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first reprovide already ran in start_bootstrap.
        let mut reprovide = tokio::time::interval_at(
            tokio::time::Instant::now() + self.reprovide_interval,
            self.reprovide_interval,
        );
        reprovide.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown_ack = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(ack)) => break Some(ack),
                    Some(command) => self.on_command(command),
                    None => break None,
                },
                _ = sweep.tick() => self.sweep(),
                _ = reprovide.tick() => self.load_pins(),
                Some(pins) = self.pins_rx.recv() => self.reprovide(pins),
            }
        };
        self.fail_everything();
        // Dropping the swarm closes every connection and listener.
        drop(self.swarm);
        if let Some(ack) = shutdown_ack {
            let _ = ack.send(());
        }
        tracing::debug!("swarm task stopped");
    }

    fn local_peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    // ------------------------------------------------------------ start-up

    fn check_ready(&mut self) {
        if self.listeners.values().all(|(_, has_addr)| *has_addr) {
            if let Some(ready) = self.ready.take() {
                let _ = ready.send(Ok(()));
            }
        }
    }

    fn start_bootstrap(&mut self) {
        let mut peers = self.bootstrap.clone();
        if self.public_dht {
            for addr in amino_bootstrap_peers() {
                if let Some(peer) = peer_of(&addr) {
                    if let Some(kad) = self.swarm.behaviour_mut().public_kad.as_mut() {
                        kad.add_address(&peer, strip_p2p(&addr));
                    }
                }
            }
            if let Some(kad) = self.swarm.behaviour_mut().public_kad.as_mut() {
                if let Err(e) = kad.bootstrap() {
                    tracing::warn!("public DHT bootstrap: {e}");
                }
            }
        }
        for addr in peers.drain(..) {
            if let Some(peer) = peer_of(&addr) {
                if let Some(kad) = self.swarm.behaviour_mut().lan_kad.as_mut() {
                    kad.add_address(&peer, strip_p2p(&addr));
                }
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::warn!("bootstrap peer {addr}: {e}");
            }
        }
        self.load_pins();
    }

    // ------------------------------------------------------------ commands

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ListenAddrs(reply) => {
                let _ = reply.send(self.listen_addrs());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_infos());
            }
            Command::Connect(addr, reply) => self.connect(addr, reply),
            Command::Disconnect(peer, reply) => {
                let _ = reply.send(self.swarm.disconnect_peer_id(peer).is_ok());
            }
            Command::Provide(cid, reply) => self.provide(cid, Some(reply)),
            Command::FindProviders {
                cid,
                limit,
                deadline,
                connect,
                reply,
            } => {
                if self.lookups.len() >= MAX_PROVIDER_LOOKUPS {
                    let _ = reply.send(Err(NetError::Busy(self.lookups.len())));
                } else {
                    self.start_lookup(cid, limit, deadline, connect, Some(reply), false);
                }
            }
            Command::GetBlock {
                cid,
                deadline,
                discover,
                prompt,
                reply,
            } => self.want_block(cid, deadline, discover, prompt, reply),
            Command::AskPathInfo {
                hash_part,
                peers,
                deadline,
                reply,
            } => self.ask_peers(
                PeerQuestion::PathInfo(pathinfo::Request { hash_part }),
                peers,
                &[],
                deadline,
                reply,
            ),
            Command::AskSource {
                request,
                peers,
                exclude,
                deadline,
                reply,
            } => self.ask_peers(
                PeerQuestion::Source(request),
                peers,
                &exclude,
                deadline,
                reply,
            ),
            Command::Reprovide => self.load_pins(),
            Command::NewBlocks(cids) => {
                self.swarm.behaviour_mut().bitswap.notify_new_blocks(&cids);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.stats());
            }
            // The run loop stops on Shutdown before dispatching here.
            Command::Shutdown(ack) => {
                let _ = ack.send(());
            }
        }
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        let me = self.local_peer_id();
        self.swarm
            .listeners()
            .map(|addr| addr.clone().with(Protocol::P2p(me)))
            .collect()
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(peer, state)| PeerInfo {
                peer_id: *peer,
                addrs: state.connections.iter().map(|(_, a)| a.clone()).collect(),
                agent: state.agent.clone(),
                protocols: state.protocols.clone(),
            })
            .collect()
    }

    fn connect(&mut self, addr: Multiaddr, reply: Reply<PeerId>) {
        let peer = peer_of(&addr);
        if let Some(peer) = peer {
            if peer == self.local_peer_id() {
                let _ = reply.send(Err(NetError::Dial {
                    addr,
                    reason: "that is this node".into(),
                }));
                return;
            }
            if self.swarm.is_connected(&peer) {
                let _ = reply.send(Ok(peer));
                return;
            }
        }
        let opts = match peer {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![strip_p2p(&addr)])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(
                    id,
                    PendingDial {
                        addr,
                        deadline: Instant::now() + DIAL_TIMEOUT,
                        replies: vec![reply],
                    },
                );
            }
            Err(e) => {
                let _ = reply.send(Err(NetError::Dial {
                    addr,
                    reason: e.to_string(),
                }));
            }
        }
    }

    // ------------------------------------------------------------ blocks

    fn want_block(
        &mut self,
        cid: Cid,
        deadline: Instant,
        discover: bool,
        prompt: bool,
        reply: Reply<Bytes>,
    ) {
        if cid.hash().code() == ipnix_store::block::IDENTITY {
            // The data is the CID itself; nobody needs to be asked.
            let _ = reply.send(Ok(Bytes::copy_from_slice(cid.hash().digest())));
            return;
        }
        if let Err(e) = ipnix_store::block::check_cid(&cid) {
            let _ = reply.send(Err(NetError::BadWant {
                cid,
                reason: e.to_string(),
            }));
            return;
        }
        if self.waiter_count >= MAX_BLOCK_WAITERS {
            let _ = reply.send(Err(NetError::Busy(self.waiter_count)));
            return;
        }
        let now = Instant::now();
        let waiter = BlockWaiter {
            deadline,
            timeout: deadline.saturating_duration_since(now),
            reply,
        };
        let discover_at = discover.then(|| {
            if self.peers.is_empty() {
                now
            } else {
                now + DISCOVERY_GRACE
            }
        });
        self.waiter_count += 1;
        match self.wants.get_mut(&cid) {
            Some(want) => {
                want.waiters.push(waiter);
                if want.discover_at.is_none() {
                    want.discover_at = discover_at;
                }
                // Fresh interest: peers that declined before are asked again.
                let _ = self.swarm.behaviour_mut().bitswap.want(
                    cid,
                    bitswap::WantOptions {
                        prompt,
                        ..bitswap::WantOptions::default()
                    },
                );
            }
            None => {
                // `discover` marks single-block reads (roots, path-infos,
                // streaming reads) that someone waits on right now.
                let wanted = self.swarm.behaviour_mut().bitswap.want(
                    cid,
                    bitswap::WantOptions {
                        urgent: discover,
                        prompt,
                        ..bitswap::WantOptions::default()
                    },
                );
                if let Err(e) = wanted {
                    self.waiter_count -= 1;
                    let error = match e {
                        bitswap::WantError::TooManyWants(n) => NetError::Busy(n),
                        other => NetError::BadWant {
                            cid,
                            reason: other.to_string(),
                        },
                    };
                    let _ = waiter.reply.send(Err(error));
                    return;
                }
                self.wants.insert(
                    cid,
                    Want {
                        waiters: vec![waiter],
                        discover_at,
                    },
                );
            }
        }
    }

    fn on_block(&mut self, cid: Cid, data: Bytes) {
        if let Some(want) = self.wants.remove(&cid) {
            self.waiter_count -= want.waiters.len();
            for waiter in want.waiters {
                let _ = waiter.reply.send(Ok(data.clone()));
            }
        }
    }

    fn sweep(&mut self) {
        let now = Instant::now();
        let mut cancelled = Vec::new();
        let mut discover = Vec::new();
        for (cid, want) in self.wants.iter_mut() {
            let before = want.waiters.len();
            let mut kept = Vec::with_capacity(before);
            for waiter in want.waiters.drain(..) {
                if waiter.reply.is_closed() {
                    continue;
                }
                if waiter.deadline <= now {
                    let _ = waiter.reply.send(Err(NetError::BlockTimeout {
                        cid: *cid,
                        timeout: waiter.timeout,
                    }));
                    continue;
                }
                kept.push(waiter);
            }
            self.waiter_count -= before - kept.len();
            want.waiters = kept;
            if want.waiters.is_empty() {
                cancelled.push(*cid);
            } else if want.discover_at.is_some_and(|at| at <= now) {
                want.discover_at = None;
                let deadline = want.waiters.iter().map(|w| w.deadline).max().unwrap_or(now);
                discover.push((*cid, deadline));
            }
        }
        for cid in cancelled {
            self.wants.remove(&cid);
            self.swarm.behaviour_mut().bitswap.cancel(&cid);
        }
        for (cid, deadline) in discover {
            let running = self.lookups.values().filter(|l| l.discovery).count();
            if running < MAX_DISCOVERY_LOOKUPS && self.lookups.len() < MAX_PROVIDER_LOOKUPS {
                self.start_lookup(cid, DISCOVERY_PROVIDERS, deadline, true, None, true);
            }
        }

        let expired: Vec<u64> = self
            .peer_asks
            .iter()
            .filter(|(_, a)| a.deadline <= now || a.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(ask) = self.peer_asks.remove(&id) {
                let _ = ask.reply.send(Ok(None));
            }
        }
        self.ask_of_request
            .retain(|_, id| self.peer_asks.contains_key(id));

        let expired: Vec<u64> = self
            .lookups
            .iter()
            .filter(|(_, l)| l.deadline <= now || l.reply.as_ref().is_some_and(|r| r.is_closed()))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.finish_lookup(id);
        }

        let stale: Vec<ConnectionId> = self
            .dials
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(dial) = self.dials.remove(&id) {
                for reply in dial.replies {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: dial.addr.clone(),
                        reason: format!("no connection within {DIAL_TIMEOUT:?}"),
                    }));
                }
            }
        }
    }

    // ------------------------------------------------------------ DHT

    fn kad_mut(&mut self, dht: Dht) -> Option<&mut kad::Behaviour<kad::store::MemoryStore>> {
        let behaviour = self.swarm.behaviour_mut();
        match dht {
            Dht::Lan => behaviour.lan_kad.as_mut(),
            Dht::Public => behaviour.public_kad.as_mut(),
        }
    }

    fn start_lookup(
        &mut self,
        cid: Cid,
        limit: usize,
        deadline: Instant,
        connect: bool,
        reply: Option<Reply<Vec<PeerId>>>,
        discovery: bool,
    ) {
        let key = provider_key(&cid);
        let id = self.next_lookup;
        self.next_lookup += 1;
        let mut queries = Vec::new();
        for dht in [Dht::Lan, Dht::Public] {
            if let Some(kad) = self.kad_mut(dht) {
                let query = kad.get_providers(key.clone());
                queries.push((dht, query));
            }
        }
        if queries.is_empty() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(NetError::Dht("no DHT is enabled".into())));
            }
            return;
        }
        for q in &queries {
            self.lookup_of_query.insert(*q, id);
        }
        self.lookups.insert(
            id,
            ProviderLookup {
                found: Vec::new(),
                limit: limit.max(1),
                deadline,
                connect,
                queries,
                reply,
                discovery,
            },
        );
    }

    fn on_providers(&mut self, dht: Dht, query: QueryId, key: &RecordKey, providers: Vec<PeerId>) {
        let Some(&id) = self.lookup_of_query.get(&(dht, query)) else {
            return;
        };
        let me = self.local_peer_id();
        let mut to_dial = Vec::new();
        let done = {
            let Some(lookup) = self.lookups.get_mut(&id) else {
                return;
            };
            for peer in providers {
                if lookup.found.len() >= lookup.limit {
                    break;
                }
                if !lookup.found.contains(&peer) {
                    lookup.found.push(peer);
                    if lookup.connect && peer != me {
                        to_dial.push(peer);
                    }
                }
            }
            lookup.found.len() >= lookup.limit
        };
        for peer in to_dial {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            // The query (still running) knows the provider's addresses; a record
            // from our own store carries them too.
            let addrs: Vec<Multiaddr> = self
                .kad_mut(dht)
                .map(|kad| {
                    use libp2p::kad::store::RecordStore;
                    kad.store_mut()
                        .providers(key)
                        .into_iter()
                        .filter(|r| r.provider == peer)
                        .flat_map(|r| r.addresses)
                        .collect()
                })
                .unwrap_or_default();
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .extend_addresses_through_behaviour()
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!("dialling provider {peer}: {e}");
            }
        }
        if done {
            self.finish_lookup(id);
        }
    }

    fn on_lookup_query_done(&mut self, dht: Dht, query: QueryId) {
        let Some(id) = self.lookup_of_query.remove(&(dht, query)) else {
            return;
        };
        let all_done = self.lookups.get_mut(&id).is_some_and(|lookup| {
            lookup.queries.retain(|q| *q != (dht, query));
            lookup.queries.is_empty()
        });
        if all_done {
            self.finish_lookup(id);
        }
    }

    fn finish_lookup(&mut self, id: u64) {
        let Some(lookup) = self.lookups.remove(&id) else {
            return;
        };
        for (dht, query) in lookup.queries {
            self.lookup_of_query.remove(&(dht, query));
            if let Some(mut q) = self.kad_mut(dht).and_then(|kad| kad.query_mut(&query)) {
                q.finish();
            }
        }
        if let Some(reply) = lookup.reply {
            let _ = reply.send(Ok(lookup.found));
        }
    }

    fn provide(&mut self, cid: Cid, reply: Option<Reply<()>>) {
        let key = provider_key(&cid);
        let id = self.next_provide;
        self.next_provide += 1;
        let mut started = 0;
        let mut error = None;
        for dht in [Dht::Lan, Dht::Public] {
            let Some(kad) = self.kad_mut(dht) else {
                continue;
            };
            match kad.start_providing(key.clone()) {
                Ok(query) => {
                    self.provides.insert((dht, query), id);
                    started += 1;
                }
                Err(e) => error = Some(NetError::Dht(format!("cannot provide {cid}: {e}"))),
            }
        }
        match (started, error) {
            (0, error) => {
                let error = error.unwrap_or_else(|| NetError::Dht("no DHT is enabled".into()));
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Err(error));
                    }
                    None => {
                        tracing::warn!("reprovide: {error}");
                        self.reprovide_done(true);
                    }
                }
            }
            (n, _) => {
                self.provide_waits.insert(id, (n, reply));
            }
        }
    }

    fn on_provided(&mut self, dht: Dht, query: QueryId, result: kad::AddProviderResult) {
        let Some(id) = self.provides.remove(&(dht, query)) else {
            return;
        };
        if let Err(e) = &result {
            // Not fatal: the record is stored locally and answered from here;
            // the next reprovide pushes it out again.
            tracing::debug!("provider announcement on {dht:?}: {e}");
        }
        let finished = match self.provide_waits.get_mut(&id) {
            Some((remaining, _)) => {
                *remaining -= 1;
                *remaining == 0
            }
            None => false,
        };
        if finished {
            if let Some((_, reply)) = self.provide_waits.remove(&id) {
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                    None => self.reprovide_done(true),
                }
            }
        }
    }

    /// Reads the pinned roots off the runtime (the store is blocking I/O).
    fn load_pins(&mut self) {
        if self.swarm.behaviour().lan_kad.is_enabled()
            || self.swarm.behaviour().public_kad.is_enabled()
        {
            let store = self.store.clone();
            let tx = self.pins_tx.clone();
            let share_paths = self.share_paths;
            tokio::task::spawn_blocking(move || {
                let pins = match store.pins() {
                    Ok(pins) => pins,
                    Err(e) => return tracing::warn!("reprovide: cannot list pins: {e}"),
                };
                let mut keys: Vec<Cid> = pins.into_iter().map(|p| p.cid).collect();
                // Holders of a store path's path-info announce it under a key
                // derived from its hash part, for peers beyond the LAN hop
                // (only when they answer for them).
                if share_paths {
                    match store.index_scan(pathinfo::PATH_INDEX) {
                        Ok(paths) => keys.extend(paths.iter().filter_map(|(hash, _)| {
                            std::str::from_utf8(hash).ok().map(pathinfo::provider_cid)
                        })),
                        Err(e) => tracing::warn!("reprovide: cannot list store paths: {e}"),
                    }
                }
                // Sources are public tarballs: always announced (sourceshare).
                keys.extend(sourceshare::provider_keys(&store));
                let _ = tx.blocking_send(keys);
            });
        }
    }

    /// Announces `roots` (all pinned roots) and withdraws keys no longer pinned.
    fn reprovide(&mut self, roots: Vec<Cid>) {
        let wanted: HashSet<RecordKey> = roots.iter().map(provider_key).collect();
        for dht in [Dht::Lan, Dht::Public] {
            if let Some(kad) = self.kad_mut(dht) {
                let stale: Vec<RecordKey> = {
                    use libp2p::kad::store::RecordStore;
                    kad.store_mut()
                        .provided()
                        .filter(|r| !wanted.contains(&r.key))
                        .map(|r| r.key.clone())
                        .collect()
                };
                for key in stale {
                    kad.stop_providing(&key);
                }
            }
        }
        tracing::debug!("reproviding {} pinned roots", roots.len());
        self.reprovided_to_peers = self.dht_peers() > 0;
        self.reprovide_queue = roots.into();
        self.reprovide_running = 0;
        self.reprovide_done(false);
    }

    /// Starts queued announcements up to the concurrency cap; `finished`:
    /// one reprovide announcement just ended.
    fn reprovide_done(&mut self, finished: bool) {
        if finished {
            self.reprovide_running = self.reprovide_running.saturating_sub(1);
        }
        while self.reprovide_running < MAX_REPROVIDES {
            let Some(cid) = self.reprovide_queue.pop_front() else {
                break;
            };
            self.reprovide_running += 1;
            self.provide(cid, None);
        }
    }

    // ------------------------------------------------------------ events

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!("listening on {address}");
                if let Some((_, has_addr)) = self.listeners.get_mut(&listener_id) {
                    *has_addr = true;
                }
                self.check_ready();
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::warn!("listener {listener_id:?}: {error}");
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((addr, has_addr)) = self.listeners.remove(&listener_id) {
                    if !has_addr {
                        if let Some(ready) = self.ready.take() {
                            let reason = match reason {
                                Ok(()) => "closed".to_string(),
                                Err(e) => e.to_string(),
                            };
                            let _ = ready.send(Err(NetError::Listen { addr, reason }));
                        }
                    }
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(
                    "connected to {peer_id} at {}",
                    endpoint.get_remote_address()
                );
                self.peers
                    .entry(peer_id)
                    .or_default()
                    .connections
                    .push((connection_id, endpoint.get_remote_address().clone()));
                if let Some(dial) = self.dials.remove(&connection_id) {
                    for reply in dial.replies {
                        let _ = reply.send(Ok(peer_id));
                    }
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!("connection to {peer_id} closed: {cause:?}");
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.connections.retain(|(id, _)| *id != connection_id);
                    if num_established == 0 {
                        self.peers.remove(&peer_id);
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(dial) = self.dials.remove(&connection_id) {
                    for reply in dial.replies {
                        let _ = reply.send(Err(NetError::Dial {
                            addr: dial.addr.clone(),
                            reason: error.to_string(),
                        }));
                    }
                }
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info)
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => self.on_mdns(found),
            BehaviourEvent::LanKad(event) => self.on_kad_event(Dht::Lan, event),
            BehaviourEvent::PublicKad(event) => self.on_kad_event(Dht::Public, event),
            BehaviourEvent::Bitswap(event) => self.on_bitswap_event(event),
            BehaviourEvent::Pathinfo(event) => self.on_pathinfo_event(event),
            BehaviourEvent::Source(event) => self.on_source_event(event),
            _ => {}
        }
    }

    fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let lan = info.protocols.contains(&LAN_KAD_PROTOCOL);
        let public = info.protocols.contains(&AMINO_KAD_PROTOCOL);
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .filter(|a| dialable(a))
            .take(MAX_ADDRS_PER_PEER)
            .cloned()
            .collect();
        if lan {
            if let Some(kad) = self.swarm.behaviour_mut().lan_kad.as_mut() {
                for addr in &addrs {
                    kad.add_address(&peer, addr.clone());
                }
            }
        }
        if public {
            if let Some(kad) = self.swarm.behaviour_mut().public_kad.as_mut() {
                for addr in addrs.iter().filter(|a| is_global(a)) {
                    kad.add_address(&peer, addr.clone());
                }
            }
        }
        if let Some(state) = self.peers.get_mut(&peer) {
            state.agent = Some(info.agent_version);
            state.protocols = info.protocols.iter().map(|p| p.to_string()).collect();
        }
    }

    fn on_mdns(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in found {
            if peer != self.local_peer_id() {
                by_peer.entry(peer).or_default().push(addr);
            }
        }
        for (peer, addrs) in by_peer {
            tracing::info!("mDNS: found {peer} at {addrs:?}");
            if let Some(kad) = self.swarm.behaviour_mut().lan_kad.as_mut() {
                for addr in &addrs {
                    kad.add_address(&peer, addr.clone());
                }
            }
            if !self.swarm.is_connected(&peer) {
                // One address at a time, TCP first: QUIC's shorter handshake
                // would win a concurrent dial, but TCP moves blocks with less
                // CPU (DESIGN.md, measured decisions); QUIC stays the fallback.
                let mut addrs = addrs;
                addrs.sort_by_key(is_quic);
                let opts = DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .override_dial_concurrency_factor(NonZeroU8::MIN)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!("dialling mDNS peer {peer}: {e}");
                }
            }
        }
    }

    // ------------------------------------------------------------ path-infos

    /// Sends the question to `peers` (default: every connected peer that did
    /// not say it lacks the protocol), never to `exclude`; the reply is the
    /// first positive answer, or `None` once all answered or the deadline
    /// passed.
    fn ask_peers(
        &mut self,
        question: PeerQuestion,
        peers: Option<Vec<PeerId>>,
        exclude: &[PeerId],
        deadline: Instant,
        reply: Reply<Option<(PeerId, Cid)>>,
    ) {
        if self.peer_asks.len() >= MAX_PEER_ASKS {
            let _ = reply.send(Err(NetError::Busy(self.peer_asks.len())));
            return;
        }
        let me = self.local_peer_id();
        let protocol = question.protocol();
        let targets: Vec<PeerId> = match peers {
            Some(peers) => peers.into_iter().filter(|p| *p != me).collect(),
            None => self
                .peers
                .iter()
                .filter(|(_, state)| {
                    // Not yet identified peers are asked too: identify may lag.
                    state.protocols.is_empty()
                        || state.protocols.iter().any(|p| p == protocol.as_ref())
                })
                .map(|(peer, _)| *peer)
                .collect(),
        };
        let targets: Vec<PeerId> = targets
            .into_iter()
            .filter(|p| !exclude.contains(p))
            .take(MAX_PEERS_PER_ASK)
            .collect();
        if targets.is_empty() {
            let _ = reply.send(Ok(None));
            return;
        }
        let id = self.next_ask;
        self.next_ask += 1;
        let mut outstanding = 0;
        for peer in targets {
            let behaviour = self.swarm.behaviour_mut();
            let request_id = match &question {
                PeerQuestion::PathInfo(request) => (
                    AskProtocol::PathInfo,
                    behaviour.pathinfo.send_request(&peer, request.clone()),
                ),
                PeerQuestion::Source(request) => (
                    AskProtocol::Source,
                    behaviour.source.send_request(&peer, request.clone()),
                ),
            };
            self.ask_of_request.insert(request_id, id);
            outstanding += 1;
        }
        self.peer_asks.insert(
            id,
            PeerAsk {
                outstanding,
                deadline,
                reply,
            },
        );
    }

    /// One peer's answer (or failure) to an ask.
    fn on_ask_answer(
        &mut self,
        protocol: AskProtocol,
        request: OutboundRequestId,
        found: Option<(PeerId, Cid)>,
    ) {
        let Some(id) = self.ask_of_request.remove(&(protocol, request)) else {
            return;
        };
        let Some(ask) = self.peer_asks.get_mut(&id) else {
            return;
        };
        ask.outstanding = ask.outstanding.saturating_sub(1);
        if found.is_some() || ask.outstanding == 0 {
            if let Some(ask) = self.peer_asks.remove(&id) {
                let _ = ask.reply.send(Ok(found));
            }
        }
    }

    /// Answers from the store index: only a path-info whose block is here.
    fn local_pathinfo(&self, hash_part: &str) -> Option<Cid> {
        let cid = ipnix_bridge::path_index::get(&self.store, hash_part)
            .map_err(|e| tracing::warn!("path-info lookup {hash_part}: {e}"))
            .ok()??;
        matches!(self.store.has(&cid), Ok(true)).then_some(cid)
    }

    fn on_pathinfo_event(&mut self, event: pathinfo::Event) {
        let Some((peer, request, channel)) = self.on_ask_event(AskProtocol::PathInfo, event) else {
            return;
        };
        // Not sharing: "not here", as for a path this node lacks.
        let found = if self.share_paths {
            self.local_pathinfo(&request.hash_part)
        } else {
            None
        };
        tracing::debug!("path-info {} asked by {peer}: {found:?}", request.hash_part);
        let response = pathinfo::Response { pathinfo: found };
        if self
            .swarm
            .behaviour_mut()
            .pathinfo
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("path-info answer to {peer}: the stream closed");
        }
    }

    // ------------------------------------------------------------ sources

    /// Answers `/ipnix/source/1.0.0` from the `source` index (always on:
    /// see [`sourceshare`]) and routes answers to our own questions.
    fn on_source_event(&mut self, event: sourceshare::Event) {
        let Some((peer, request, channel)) = self.on_ask_event(AskProtocol::Source, event) else {
            return;
        };
        let found = sourceshare::local_answer(&self.store, &request);
        tracing::debug!("source {} asked by {peer}: {found:?}", request.key());
        let response = pathinfo::Response { pathinfo: found };
        if self
            .swarm
            .behaviour_mut()
            .source
            .send_response(channel, response)
            .is_err()
        {
            tracing::debug!("source answer to {peer}: the stream closed");
        }
    }

    /// The part both ask protocols share: answers and failures of our own
    /// questions go to [`Self::on_ask_answer`]; a question from a peer is
    /// returned for the protocol's own handler to answer.
    fn on_ask_event<Q>(
        &mut self,
        protocol: AskProtocol,
        event: request_response::Event<Q, pathinfo::Response>,
    ) -> Option<(
        PeerId,
        Q,
        request_response::ResponseChannel<pathinfo::Response>,
    )> {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => return Some((peer, request, channel)),
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                let found = response.pathinfo.map(|cid| (peer, cid));
                self.on_ask_answer(protocol, request_id, found);
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!("{protocol:?} question to {peer} failed: {error}");
                self.on_ask_answer(protocol, request_id, None);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!("{protocol:?} question from {peer} failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
        None
    }

    fn dht_peers(&mut self) -> usize {
        let behaviour = self.swarm.behaviour_mut();
        let mut count = 0;
        for kad in [behaviour.lan_kad.as_mut(), behaviour.public_kad.as_mut()]
            .into_iter()
            .flatten()
        {
            count += kad.kbuckets().map(|b| b.num_entries()).sum::<usize>();
        }
        count
    }

    fn on_kad_event(&mut self, dht: Dht, event: kad::Event) {
        if let kad::Event::RoutingUpdated {
            is_new_peer: true, ..
        } = event
        {
            if !self.reprovided_to_peers {
                // Pinned roots announced at start reached nobody: now they can.
                self.reprovided_to_peers = true;
                self.load_pins();
            }
            return;
        }
        let kad::Event::OutboundQueryProgressed {
            id, result, step, ..
        } = event
        else {
            return;
        };
        match result {
            QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders { key, providers })) => {
                self.on_providers(dht, id, &key, providers.into_iter().collect());
            }
            QueryResult::StartProviding(result) => self.on_provided(dht, id, result),
            _ => {}
        }
        if step.last {
            // A lookup whose final step carried providers is done as well.
            self.on_lookup_query_done(dht, id);
        }
    }

    fn on_bitswap_event(&mut self, event: bitswap::Event) {
        match event {
            bitswap::Event::Block { cid, data, .. } => self.on_block(cid, data),
            bitswap::Event::WantFailed { cid, reason } => {
                // Nobody connected has it: look in the DHT now rather than
                // after the grace period (only for wants that asked for it).
                tracing::debug!("want {cid} stuck: {reason:?}");
                if let Some(want) = self.wants.get_mut(&cid) {
                    if want.discover_at.is_some() {
                        want.discover_at = Some(Instant::now());
                    }
                }
            }
            bitswap::Event::PeerPenalised { peer, reason } => {
                let penalties = self.peers.get_mut(&peer).map(|state| {
                    state.penalties += 1;
                    state.penalties
                });
                tracing::info!("bitswap: peer {peer} misbehaved: {reason:?}");
                if penalties.is_some_and(|n| n >= MAX_PENALTIES) {
                    tracing::warn!("disconnecting {peer}: {MAX_PENALTIES} Bitswap violations");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
            _ => {}
        }
    }

    fn stats(&mut self) -> NodeStats {
        let behaviour = self.swarm.behaviour_mut();
        let bitswap = behaviour.bitswap.stats();
        let lan_dht_peers = behaviour
            .lan_kad
            .as_mut()
            .map(|k| k.kbuckets().map(|b| b.num_entries()).sum())
            .unwrap_or(0);
        let public_dht_peers = behaviour
            .public_kad
            .as_mut()
            .map(|k| k.kbuckets().map(|b| b.num_entries()).sum())
            .unwrap_or(0);
        let provided_keys = behaviour
            .lan_kad
            .as_mut()
            .map(|k| {
                use libp2p::kad::store::RecordStore;
                k.store_mut().provided().count()
            })
            .unwrap_or(0);
        NodeStats {
            peers: self.peers.len(),
            connections: self.peers.values().map(|p| p.connections.len()).sum(),
            block_waiters: self.waiter_count,
            lan_dht_peers,
            public_dht_peers,
            provided_keys,
            bitswap,
            transfers: behaviour.bitswap.stats_handle().recent_transfers(),
        }
    }

    /// On shutdown every waiting caller learns why.
    fn fail_everything(&mut self) {
        for (_, want) in self.wants.drain() {
            for waiter in want.waiters {
                let _ = waiter.reply.send(Err(NetError::Shutdown));
            }
        }
        self.waiter_count = 0;
        for (_, dial) in self.dials.drain() {
            for reply in dial.replies {
                let _ = reply.send(Err(NetError::Shutdown));
            }
        }
        for (_, lookup) in self.lookups.drain() {
            if let Some(reply) = lookup.reply {
                let _ = reply.send(Err(NetError::Shutdown));
            }
        }
        for (_, ask) in self.peer_asks.drain() {
            let _ = ask.reply.send(Err(NetError::Shutdown));
        }
        for (_, (_, reply)) in self.provide_waits.drain() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(NetError::Shutdown));
            }
        }
    }
}

/// DHT provider records are keyed by the multihash, not the whole CID, so
/// CIDv0 and CIDv1 (and any codec) of the same bytes meet.
pub(crate) fn provider_key(cid: &Cid) -> RecordKey {
    RecordKey::new(&cid.hash().to_bytes())
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Addresses worth dialling: not unspecified, no relay circuits.
fn dialable(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_unspecified(),
        Protocol::P2pCircuit => false,
        _ => true,
    })
}

/// Public-DHT addresses must be publicly routable: no loopback, private,
/// link-local or unspecified IPs (the Amino DHT ignores them too).
fn is_global(addr: &Multiaddr) -> bool {
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => {
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
        }
        Protocol::Ip6(ip) => {
            let s = ip.segments();
            !(ip.is_loopback()
                || ip.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
        _ => true,
    })
}

/// The public Amino DHT's bootstrap peers (Kubo's defaults). Only read when
/// the public DHT is switched on (`--public`); tests never do.
fn amino_bootstrap_peers() -> Vec<Multiaddr> {
    [
        "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
        "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
        "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
        "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
        "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
        "/ip4/104.131.131.82/udp/4001/quic-v1/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_filter_drops_local_addresses() {
        let local = [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.77.0.1/tcp/1",
            "/ip4/192.168.1.2/udp/1/quic-v1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
        ];
        for a in local {
            assert!(!is_global(&a.parse().expect("addr")), "{a}");
        }
        assert!(is_global(
            &"/ip4/104.131.131.82/tcp/4001".parse().expect("addr")
        ));
        assert!(!dialable(&"/ip4/0.0.0.0/tcp/1".parse().expect("addr")));
    }

    #[test]
    fn cidv0_and_cidv1_share_a_provider_key() {
        let v0: Cid = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
            .parse()
            .expect("cid");
        let v1 = Cid::new_v1(0x70, *v0.hash());
        assert_eq!(provider_key(&v0), provider_key(&v1));
    }
}
