//! The `NetworkBehaviour` tying client, server and handlers together: tracks
//! each peer's connections and the bytes and messages queued on them (the
//! server's per-peer budget), routes handler events, issues penalties,
//! times out wants and keeps the stats.

use super::client::{BlockVerdict, Client, ClientLimits};
use super::handler::{
    FromBehaviour, Handler, HandlerLimits, Inbound, Ticket, ToBehaviour, Violation,
};
use super::server::{Reply, Server, ServerLimits};
use super::source::BlockSource;
use super::stats::{Direction, Stats, StatsHandle, StatsSnapshot};
use super::{Config, Event, Penalty, WantError, WantId, WantOptions};
use crate::net::transport::is_quic;
use cid::Cid;
use futures::FutureExt;
use futures_timer::Delay;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_secs(1);
/// Wantlist messages queued on one connection before updates are held back
/// (and coalesced) in the client.
const MAX_CLIENT_MESSAGES_QUEUED: usize = 2;

#[derive(Debug)]
struct Conn {
    id: ConnectionId,
    queued_bytes: usize,
    client_messages: usize,
    quic: bool,
}

#[derive(Debug, Default)]
struct Peer {
    /// Established connections; the first one carries our messages: the
    /// oldest TCP one if any (DESIGN.md, measured: TCP moves blocks with
    /// less CPU than QUIC), else the oldest.
    conns: Vec<Conn>,
    keep_alive: bool,
}

impl Peer {
    fn primary(&self) -> Option<&Conn> {
        self.conns.first()
    }
}

/// The Bitswap behaviour. See the module docs of [`crate::bitswap`].
pub struct Behaviour {
    config: Config,
    stats: Arc<Stats>,
    peers: HashMap<PeerId, Peer>,
    client: Client,
    server: Server,
    events: VecDeque<ToSwarm<Event, FromBehaviour>>,
    tick: Delay,
    waker: Option<Waker>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("bitswap::Behaviour")
            .field("peers", &self.peers.len())
            .field("wants", &self.client.wants())
            .field("server_entries", &self.server.entries())
            .finish()
    }
}

impl Behaviour {
    /// A behaviour serving blocks from `blocks`.
    pub fn new(config: Config, blocks: Arc<dyn BlockSource>) -> Self {
        let stats = Arc::new(Stats::default());
        let client = Client::new(
            ClientLimits {
                max_wants: config.max_wants,
                max_wants_per_peer: config.max_wants_per_peer,
                have_timeout: config.have_timeout,
                block_timeout: config.block_timeout,
            },
            Arc::clone(&stats),
        );
        let server = Server::new(
            blocks,
            ServerLimits {
                max_wantlist_entries: config.max_wantlist_entries,
                max_concurrent_lookups: config.max_concurrent_lookups.max(1),
                lookup_batch: config.lookup_batch.max(1),
                target_message_bytes: config.target_message_bytes,
                max_have_replace_bytes: config.max_have_replace_bytes,
            },
        );
        Self {
            config,
            stats,
            peers: HashMap::new(),
            client,
            server,
            events: VecDeque::new(),
            tick: Delay::new(TICK),
            waker: None,
        }
    }

    /// Asks peers for a block. The block arrives as [`Event::Block`]; wanting
    /// a CID already wanted widens the peer set and returns the same id.
    pub fn want(&mut self, cid: Cid, options: WantOptions) -> Result<WantId, WantError> {
        let id = self.client.want(cid, options)?;
        self.wake();
        Ok(id)
    }

    /// Withdraws a want (peers holding it are told); true if it existed.
    pub fn cancel(&mut self, cid: &Cid) -> bool {
        let existed = self.client.cancel(cid);
        if existed {
            self.wake();
        }
        existed
    }

    /// Whether a block is currently wanted.
    pub fn is_wanted(&self, cid: &Cid) -> bool {
        self.client.is_wanted(cid)
    }

    /// Wants in flight.
    pub fn wants(&self) -> usize {
        self.client.wants()
    }

    /// Tells the server these blocks are now in the block source, so peers
    /// that were told DONT_HAVE (and still want them) get them.
    pub fn notify_new_blocks(&mut self, cids: &[Cid]) {
        self.server.notify_new_blocks(cids);
        self.wake();
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        StatsHandle(Arc::clone(&self.stats)).snapshot()
    }

    /// A cloneable reader of the counters, for `/metrics` in another task.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(Arc::clone(&self.stats))
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn handler(&self) -> Handler {
        Handler::new(HandlerLimits {
            max_frame_bytes: self.config.max_frame_bytes,
            max_inbound_streams: self.config.max_inbound_streams,
            inbound_idle_timeout: self.config.inbound_idle_timeout,
            send_timeout: self.config.send_timeout,
            outbound_idle_timeout: self.config.outbound_idle_timeout,
            open_timeout: self.config.open_timeout,
        })
    }

    fn penalise(&mut self, peer: PeerId, reason: Penalty) {
        tracing::debug!(%peer, ?reason, "bitswap: penalising peer");
        Stats::add(&self.stats.penalties, 1);
        self.events
            .push_back(ToSwarm::GenerateEvent(Event::PeerPenalised {
                peer,
                reason,
            }));
    }

    fn on_message(&mut self, peer: PeerId, message: Inbound) {
        tracing::trace!(
            %peer,
            entries = message.entries.len(),
            blocks = ?message.blocks.iter().map(|(cid, _)| cid.to_string()).collect::<Vec<_>>(),
            presences = message.presences.len(),
            "bitswap: message received"
        );
        Stats::add(&self.stats.messages_received, 1);
        Stats::add(&self.stats.cids_refused, message.refused_cids as u64);
        if !message.entries.is_empty() || message.full {
            Stats::add(
                &self.stats.wantlist_entries_received,
                message.entries.len() as u64,
            );
            let applied = self.server.on_wantlist(peer, message.entries, message.full);
            Stats::add(
                &self.stats.wantlist_entries_over_limit,
                applied.over_limit as u64,
            );
        }
        let mut unsolicited = 0;
        let mut first_unsolicited = None;
        for (cid, data) in message.blocks {
            if self.client.on_block(peer, cid, data) == BlockVerdict::Unsolicited {
                unsolicited += 1;
                first_unsolicited.get_or_insert(cid);
            }
        }
        for (cid, presence) in message.presences {
            self.client.on_presence(peer, cid, presence);
        }
        if let Some(first) = first_unsolicited {
            self.penalise(
                peer,
                Penalty::UnsolicitedBlocks {
                    count: unsolicited,
                    first,
                },
            );
        }
        if message.invalid_blocks > 0 {
            Stats::add(&self.stats.unwanted_blocks, message.invalid_blocks as u64);
            Stats::add(&self.stats.unwanted_bytes, message.invalid_bytes as u64);
            self.penalise(
                peer,
                Penalty::InvalidBlocks {
                    count: message.invalid_blocks,
                },
            );
        }
    }

    fn on_sent(&mut self, peer: PeerId, connection: ConnectionId, ticket: Ticket) {
        let Some(conn) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.conns.iter_mut().find(|c| c.id == connection))
        else {
            return;
        };
        conn.queued_bytes = conn.queued_bytes.saturating_sub(ticket.bytes);
        if !ticket.server {
            conn.client_messages = conn.client_messages.saturating_sub(1);
        }
    }

    /// Hands a message to the peer's primary connection, counting it against
    /// the connection's queue.
    fn send(&mut self, peer_id: PeerId, message: super::handler::OutMessage, server: bool) -> bool {
        let Some(conn) = self
            .peers
            .get_mut(&peer_id)
            .and_then(|p| p.conns.first_mut())
        else {
            return false;
        };
        let bytes = message
            .blocks
            .iter()
            .map(|(_, data)| data.len())
            .sum::<usize>()
            + 48 * (message.entries.len() + message.presences.len());
        conn.queued_bytes += bytes;
        if !server {
            conn.client_messages += 1;
        }
        Stats::raise(&self.stats.max_peer_queued_bytes, conn.queued_bytes as u64);
        Stats::add(&self.stats.messages_sent, 1);
        self.events.push_back(ToSwarm::NotifyHandler {
            peer_id,
            handler: NotifyHandler::One(conn.id),
            event: FromBehaviour::Send(message, Ticket { bytes, server }),
        });
        true
    }

    fn send_reply(&mut self, reply: Reply) {
        let blocks = reply.message.blocks.len() as u64;
        let first = reply.message.blocks.first().map(|(cid, _)| *cid);
        if self.send(reply.peer, reply.message, true) {
            Stats::add(&self.stats.blocks_sent, blocks);
            Stats::add(&self.stats.block_bytes_sent, reply.block_bytes as u64);
            if let Some(first) = first {
                self.stats.transfers.record(
                    Direction::Out,
                    reply.peer,
                    first,
                    blocks,
                    reply.block_bytes as u64,
                );
            }
            Stats::add(&self.stats.haves_sent, reply.haves as u64);
            Stats::add(&self.stats.dont_haves_sent, reply.dont_haves as u64);
        }
    }

    fn flush_wantlists(&mut self) {
        for peer_id in self.client.dirty_peers() {
            let ready = self
                .peers
                .get(&peer_id)
                .and_then(Peer::primary)
                .is_some_and(|conn| conn.client_messages < MAX_CLIENT_MESSAGES_QUEUED);
            if !ready {
                continue;
            }
            if let Some(message) = self.client.take_message(peer_id) {
                tracing::trace!(
                    peer = %peer_id,
                    full = message.full,
                    entries = ?message.entries.iter().map(|e| (e.cid.to_string(), e.want_type, e.cancel)).collect::<Vec<_>>(),
                    "bitswap: sending wantlist"
                );
                self.send(peer_id, message, false);
            }
        }
    }

    fn update_keep_alive(&mut self) {
        for (peer_id, peer) in self.peers.iter_mut() {
            let wanted = self.client.has_asks(peer_id) || self.server.has_entries(peer_id);
            if wanted != peer.keep_alive {
                peer.keep_alive = wanted;
                for conn in &peer.conns {
                    self.events.push_back(ToSwarm::NotifyHandler {
                        peer_id: *peer_id,
                        handler: NotifyHandler::One(conn.id),
                        event: FromBehaviour::KeepAlive(wanted),
                    });
                }
            }
        }
    }

    fn update_gauges(&self) {
        Stats::set(&self.stats.wants, self.client.wants() as u64);
        Stats::set(
            &self.stats.peer_wantlist_entries,
            self.server.entries() as u64,
        );
        let queued: usize = self
            .peers
            .values()
            .flat_map(|p| p.conns.iter())
            .map(|c| c.queued_bytes)
            .sum();
        Stats::set(&self.stats.queued_bytes, queued as u64);
        Stats::set(&self.stats.peers, self.peers.len() as u64);
    }

    fn connection_established(&mut self, peer: PeerId, connection: ConnectionId, quic: bool) {
        let entry = self.peers.entry(peer).or_default();
        let conn = Conn {
            id: connection,
            queued_bytes: 0,
            client_messages: 0,
            quic,
        };
        match entry.conns.iter().position(|c| c.quic && !quic) {
            Some(first_quic) => entry.conns.insert(first_quic, conn),
            None => entry.conns.push(conn),
        }
        // Re-announce keep-alive so the new connection hears it too.
        entry.keep_alive = false;
        if entry.conns.len() == 1 {
            self.client.peer_connected(peer);
        }
        self.wake();
    }

    fn connection_closed(&mut self, peer: PeerId, connection: ConnectionId) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        let was_primary = entry.primary().is_some_and(|c| c.id == connection);
        entry.conns.retain(|c| c.id != connection);
        if entry.conns.is_empty() {
            self.peers.remove(&peer);
            self.client.peer_disconnected(peer);
            self.server.peer_disconnected(&peer);
        } else if was_primary {
            // Whatever was queued on the closed connection is lost.
            self.client.on_send_failed(peer);
            entry.keep_alive = false;
        }
        self.wake();
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _local_addr: &Multiaddr,
        _remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(established) => {
                let quic = is_quic(established.endpoint.get_remote_address());
                self.connection_established(established.peer_id, established.connection_id, quic);
            }
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => self.connection_closed(peer_id, connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            ToBehaviour::Message(message) => self.on_message(peer, message),
            ToBehaviour::Sent(ticket) => self.on_sent(peer, connection, ticket),
            ToBehaviour::SendFailed { ticket, timed_out } => {
                self.on_sent(peer, connection, ticket);
                Stats::add(&self.stats.send_failures, 1);
                self.client.on_send_failed(peer);
                if timed_out {
                    self.penalise(peer, Penalty::Stalled);
                }
            }
            ToBehaviour::Negotiated(version) => self.client.set_version(peer, version),
            ToBehaviour::Unsupported => self.client.set_usable(peer, false),
            ToBehaviour::RemoteSupport(supported) => self.client.set_usable(peer, supported),
            ToBehaviour::Violation(Violation::FrameTooLarge(len)) => {
                Stats::add(&self.stats.frames_too_large, 1);
                self.penalise(peer, Penalty::FrameTooLarge { len });
            }
            ToBehaviour::Violation(Violation::Malformed(reason)) => {
                self.penalise(peer, Penalty::Malformed { reason });
            }
            ToBehaviour::StreamRefused => Stats::add(&self.stats.streams_refused, 1),
        }
        self.wake();
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if self.tick.poll_unpin(cx).is_ready() {
            self.client.tick(Instant::now());
            self.tick.reset(TICK);
            // Register the new deadline.
            let _ = self.tick.poll_unpin(cx);
        }
        loop {
            // Start a job only if its message fits the peer's budget (one
            // block over the target may overshoot it).
            let budget = self
                .config
                .max_queued_bytes_per_peer
                .saturating_sub(self.config.target_message_bytes);
            let peers = &self.peers;
            self.server.schedule(|peer| {
                peers
                    .get(peer)
                    .and_then(Peer::primary)
                    .is_some_and(|conn| conn.queued_bytes <= budget)
            });
            match self.server.poll_reply(cx) {
                Poll::Ready(Some(Some(reply))) => self.send_reply(reply),
                Poll::Ready(Some(None)) => {}
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        self.flush_wantlists();
        self.update_keep_alive();
        while let Some(event) = self.client.pop_event() {
            self.events.push_back(ToSwarm::GenerateEvent(event));
        }
        self.update_gauges();
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(event);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
