//! The per-connection Bitswap handler: accepts any number of inbound streams
//! (bounded per connection) and reads every message on each of them, turns
//! frames into verified [`Inbound`] messages (block CIDs computed from their
//! data, CIDs parsed and size-checked) in the connection task, and writes
//! outgoing messages in order on one outbound stream it opens itself,
//! re-opening it after an error and closing it when idle.
//!
//! Back-pressure: a message is only read from the streams when the previous
//! event has been taken by the swarm, and the behaviour bounds what it queues
//! here (see `behaviour.rs`).

use super::wire::{
    self, Presence, WantType, WireBlock, WireEntry, WireError, WireMessage, WirePresence,
};
use super::Version;
use bytes::Bytes;
use cid::Cid;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, SelectAll};
use futures::{AsyncWriteExt, FutureExt, StreamExt};
use futures_timer::Delay;
use libp2p::core::upgrade::{InboundUpgrade, OutboundUpgrade, UpgradeInfo};
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
    ProtocolsChange,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, Stream, StreamProtocol, StreamUpgradeError,
    SubstreamProtocol,
};
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Frames (of the maximum size) one connection's inbound streams may be
/// reading at the same time; more streams wait for their turn.
const INBOUND_FRAMES_BUFFERED: usize = 2;

/// The limits a handler enforces, copied from [`super::Config`].
#[derive(Debug, Clone)]
pub struct HandlerLimits {
    pub max_frame_bytes: usize,
    pub max_inbound_streams: usize,
    pub inbound_idle_timeout: Duration,
    pub send_timeout: Duration,
    pub outbound_idle_timeout: Duration,
    pub open_timeout: Duration,
}

/// A wantlist entry with its CID parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub cid: Cid,
    pub priority: i32,
    pub cancel: bool,
    pub want_type: WantType,
    pub send_dont_have: bool,
}

/// A received message after parsing and verification.
#[derive(Debug, Default)]
pub struct Inbound {
    pub entries: Vec<Entry>,
    pub full: bool,
    /// Blocks with the CIDs their data hashes to.
    pub blocks: Vec<(Cid, Bytes)>,
    pub presences: Vec<(Cid, Presence)>,
    /// Wantlist or presence CIDs that did not parse or were over 168 bytes.
    pub refused_cids: usize,
    /// Blocks whose CID could not be computed (bad prefix, unsupported
    /// codec/hash, oversized): no CID we ask for can name them.
    pub invalid_blocks: usize,
    pub invalid_bytes: usize,
}

/// Identifies a queued outgoing message to the behaviour's accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub bytes: usize,
    pub server: bool,
}

/// An outgoing message; encoded by the handler for the version it negotiated.
#[derive(Debug, Default)]
pub struct OutMessage {
    pub entries: Vec<Entry>,
    pub full: bool,
    pub blocks: Vec<(Cid, Bytes)>,
    pub presences: Vec<(Cid, Presence)>,
}

impl OutMessage {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.full && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// The wire form for a peer speaking `version`: 1.0.0 carries only CIDv0
    /// blocks (in `blocks`), neither 1.0.0 nor 1.1.0 understands presences.
    fn to_wire(&self, version: Version) -> WireMessage {
        let entries = self
            .entries
            .iter()
            .map(|entry| WireEntry {
                cid: Bytes::from(entry.cid.to_bytes()),
                priority: entry.priority,
                cancel: entry.cancel,
                want_type: entry.want_type,
                send_dont_have: entry.send_dont_have,
            })
            .collect();
        let mut message = WireMessage {
            entries,
            full: self.full,
            ..WireMessage::default()
        };
        for (cid, data) in &self.blocks {
            if version == Version::V1_0_0 {
                if cid.version() == cid::Version::V0 {
                    message.blocks.push(data.clone());
                }
            } else {
                message.payload.push(WireBlock {
                    prefix: wire::prefix_of(cid),
                    data: data.clone(),
                });
            }
        }
        if version == Version::V1_2_0 {
            message.presences = self
                .presences
                .iter()
                .map(|(cid, presence)| WirePresence {
                    cid: Bytes::from(cid.to_bytes()),
                    presence: *presence,
                })
                .collect();
        }
        message
    }
}

/// Behaviour -> handler.
#[derive(Debug)]
pub enum FromBehaviour {
    Send(OutMessage, Ticket),
    /// Whether the behaviour has business with this peer (wants or a ledger).
    KeepAlive(bool),
}

/// A peer broke the protocol on this connection.
#[derive(Debug, Clone)]
pub enum Violation {
    FrameTooLarge(u64),
    Malformed(String),
}

/// Handler -> behaviour.
#[derive(Debug)]
pub enum ToBehaviour {
    Message(Inbound),
    Sent(Ticket),
    SendFailed {
        ticket: Ticket,
        timed_out: bool,
    },
    /// Our outbound stream speaks this version.
    Negotiated(Version),
    /// The remote accepted none of our protocols.
    Unsupported,
    /// What identify says about the remote's Bitswap support.
    RemoteSupport(bool),
    Violation(Violation),
    StreamRefused,
}

/// The protocols we offer: all four inbound, 1.2.0 first outbound.
#[derive(Debug, Clone)]
pub struct Protocols;

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = Vec<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        super::PROTOCOLS
            .iter()
            .map(|(protocol, _)| protocol.clone())
            .collect()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Infallible>>;

    fn upgrade_inbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, protocol)))
    }
}

impl OutboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = futures::future::Ready<Result<Self::Output, Infallible>>;

    fn upgrade_outbound(self, stream: Stream, protocol: StreamProtocol) -> Self::Future {
        futures::future::ready(Ok((stream, protocol)))
    }
}

enum InboundError {
    TooLarge(u64),
    Malformed(String),
}

type InboundItem = Result<Inbound, InboundError>;

enum Outbound {
    None,
    Requested,
    Idle(Stream, Delay),
    Writing(BoxFuture<'static, Result<Stream, bool>>, Ticket),
    Closing(BoxFuture<'static, ()>),
}

pub struct Handler {
    limits: HandlerLimits,
    inbound: SelectAll<BoxStream<'static, InboundItem>>,
    queue: VecDeque<(OutMessage, Ticket)>,
    outbound: Outbound,
    version: Option<Version>,
    unsupported: bool,
    keep_alive: bool,
    remote_bitswap: HashSet<StreamProtocol>,
    reported_support: Option<bool>,
    events: VecDeque<ToBehaviour>,
    /// Bytes of frame bodies all inbound streams may be reading at once.
    read_budget: Arc<Semaphore>,
}

impl Handler {
    pub(crate) fn new(limits: HandlerLimits) -> Self {
        Self {
            inbound: SelectAll::new(),
            queue: VecDeque::new(),
            outbound: Outbound::None,
            version: None,
            unsupported: false,
            keep_alive: false,
            remote_bitswap: HashSet::new(),
            reported_support: None,
            events: VecDeque::new(),
            read_budget: Arc::new(Semaphore::new(
                limits
                    .max_frame_bytes
                    .saturating_mul(INBOUND_FRAMES_BUFFERED)
                    .min(Semaphore::MAX_PERMITS),
            )),
            limits,
        }
    }

    fn fail_queue(&mut self) {
        for (_, ticket) in self.queue.drain(..) {
            self.events.push_back(ToBehaviour::SendFailed {
                ticket,
                timed_out: false,
            });
        }
    }

    fn start_write(&mut self, mut stream: Stream) {
        let Some((message, ticket)) = self.queue.pop_front() else {
            self.outbound = Outbound::Idle(stream, Delay::new(self.limits.outbound_idle_timeout));
            return;
        };
        let frame = message
            .to_wire(self.version.unwrap_or(Version::V1_2_0))
            .to_frame();
        let send_timeout = self.limits.send_timeout;
        let write = async move {
            match tokio::time::timeout(send_timeout, wire::write_frame(&mut stream, &frame)).await {
                Ok(Ok(())) => Ok(stream),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "bitswap: writing a message failed");
                    Err(false)
                }
                Err(_) => Err(true),
            }
        };
        self.outbound = Outbound::Writing(write.boxed(), ticket);
    }

    /// Drives the outbound stream; returns a request to open one if needed.
    fn poll_outbound(&mut self, cx: &mut Context<'_>) -> Option<SubstreamProtocol<Protocols, ()>> {
        loop {
            match std::mem::replace(&mut self.outbound, Outbound::None) {
                Outbound::None => {
                    if !self.queue.is_empty() && !self.unsupported {
                        self.outbound = Outbound::Requested;
                        return Some(
                            SubstreamProtocol::new(Protocols, ())
                                .with_timeout(self.limits.open_timeout),
                        );
                    }
                    return None;
                }
                Outbound::Requested => {
                    self.outbound = Outbound::Requested;
                    return None;
                }
                Outbound::Idle(stream, mut idle) => {
                    if !self.queue.is_empty() {
                        self.start_write(stream);
                        continue;
                    }
                    if idle.poll_unpin(cx).is_ready() {
                        let mut stream = stream;
                        self.outbound = Outbound::Closing(
                            async move {
                                let _ = stream.close().await;
                            }
                            .boxed(),
                        );
                        continue;
                    }
                    self.outbound = Outbound::Idle(stream, idle);
                    return None;
                }
                Outbound::Writing(mut write, ticket) => match write.poll_unpin(cx) {
                    Poll::Ready(Ok(stream)) => {
                        self.events.push_back(ToBehaviour::Sent(ticket));
                        self.start_write(stream);
                        continue;
                    }
                    Poll::Ready(Err(timed_out)) => {
                        // The stream is dropped (reset); the next message opens a new one.
                        self.events
                            .push_back(ToBehaviour::SendFailed { ticket, timed_out });
                        continue;
                    }
                    Poll::Pending => {
                        self.outbound = Outbound::Writing(write, ticket);
                        return None;
                    }
                },
                Outbound::Closing(mut close) => {
                    if close.poll_unpin(cx).is_pending() {
                        self.outbound = Outbound::Closing(close);
                        return None;
                    }
                    continue;
                }
            }
        }
    }

    fn on_remote_protocols(&mut self, change: &ProtocolsChange<'_>) {
        match change {
            ProtocolsChange::Added(added) => {
                for protocol in added.clone() {
                    if Version::from_protocol(protocol).is_some() {
                        self.remote_bitswap.insert(protocol.clone());
                    }
                }
            }
            ProtocolsChange::Removed(removed) => {
                for protocol in removed.clone() {
                    self.remote_bitswap.remove(protocol);
                }
            }
        }
        let supported = !self.remote_bitswap.is_empty();
        if self.reported_support != Some(supported) {
            self.reported_support = Some(supported);
            self.events.push_back(ToBehaviour::RemoteSupport(supported));
        }
    }
}

/// Reads every frame of one inbound stream until it ends, errs or idles out.
/// A frame body is only read while holding `budget` permits for its length,
/// so all streams of a connection together buffer at most the budget.
///
/// The idle timeout covers waiting for a frame to start and reading its body
/// (each stalled for that long ends the stream), never the wait for read
/// budget: a frame whose length was read is not dropped because other
/// streams of the connection were busy (a peer that splits one reply into
/// several frames, as Helia does, keeps them all).
fn read_stream(
    mut stream: Stream,
    limits: &HandlerLimits,
    budget: Arc<Semaphore>,
) -> BoxStream<'static, InboundItem> {
    stream.ignore_for_keep_alive();
    let max_frame = limits.max_frame_bytes;
    let idle = limits.inbound_idle_timeout;
    let read = move |mut stream: Stream, budget: Arc<Semaphore>| async move {
        let len =
            match tokio::time::timeout(idle, wire::read_frame_len(&mut stream, max_frame)).await {
                Ok(Ok(Some(len))) => len,
                Ok(Ok(None)) => return (Ok(None), stream),
                Ok(Err(error)) => return (Err(error), stream),
                Err(_) => {
                    return (
                        Err(WireError::Io(std::io::ErrorKind::TimedOut.into())),
                        stream,
                    )
                }
            };
        let permits = u32::try_from(len).unwrap_or(u32::MAX);
        let Ok(_permit) = budget.acquire_many_owned(permits).await else {
            return (Ok(None), stream);
        };
        let body = match tokio::time::timeout(idle, wire::read_frame_body(&mut stream, len)).await {
            Ok(body) => body.map(Some),
            Err(_) => Err(WireError::Io(std::io::ErrorKind::TimedOut.into())),
        };
        (body, stream)
    };
    futures::stream::unfold(Some(stream), move |state| {
        let budget = Arc::clone(&budget);
        async move {
            let stream = state?;
            match read(stream, budget).await {
                (Ok(Some(frame)), stream) => {
                    tracing::trace!(len = frame.len(), "bitswap: frame read");
                    match WireMessage::decode(&frame) {
                        Ok(message) => Some((Ok(interpret(message)), Some(stream))),
                        Err(error) => Some((Err(InboundError::Malformed(error.to_string())), None)),
                    }
                }
                (Ok(None), mut stream) => {
                    tracing::trace!("bitswap: inbound stream ended");
                    let _ = stream.close().await;
                    None
                }
                (Err(WireError::FrameTooLarge { len, .. }), _) => {
                    Some((Err(InboundError::TooLarge(len)), None))
                }
                (Err(WireError::Io(error)), _) => {
                    tracing::debug!(%error, "bitswap: inbound stream ended by an error");
                    None
                }
                (Err(error), _) => Some((Err(InboundError::Malformed(error.to_string())), None)),
            }
        }
    })
    .boxed()
}

/// Parses CIDs and computes block CIDs: everything after this is typed.
fn interpret(message: WireMessage) -> Inbound {
    let mut inbound = Inbound {
        full: message.full,
        ..Inbound::default()
    };
    for entry in message.entries {
        match wire::parse_cid(&entry.cid) {
            Some(cid) => inbound.entries.push(Entry {
                cid,
                priority: entry.priority,
                cancel: entry.cancel,
                want_type: entry.want_type,
                send_dont_have: entry.send_dont_have,
            }),
            None => inbound.refused_cids += 1,
        }
    }
    for presence in message.presences {
        match wire::parse_cid(&presence.cid) {
            Some(cid) => inbound.presences.push((cid, presence.presence)),
            None => inbound.refused_cids += 1,
        }
    }
    let blocks = message
        .blocks
        .into_iter()
        .map(|data| (wire::cid_v0_of(&data), data))
        .chain(message.payload.into_iter().map(|block| {
            (
                wire::cid_from_prefix(&block.prefix, &block.data),
                block.data,
            )
        }));
    for (cid, data) in blocks {
        match cid {
            Ok(cid) => inbound.blocks.push((cid, data)),
            Err(error) => {
                tracing::debug!(%error, "bitswap: dropping a block whose CID cannot be computed");
                inbound.invalid_blocks += 1;
                inbound.invalid_bytes += data.len();
            }
        }
    }
    inbound
}

impl ConnectionHandler for Handler {
    type FromBehaviour = FromBehaviour;
    type ToBehaviour = ToBehaviour;
    type InboundProtocol = Protocols;
    type OutboundProtocol = Protocols;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        SubstreamProtocol::new(Protocols, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep_alive
            || !self.queue.is_empty()
            || matches!(self.outbound, Outbound::Writing(..) | Outbound::Requested)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>,
    > {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        if let Some(protocol) = self.poll_outbound(cx) {
            return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest { protocol });
        }
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(event));
        }
        // SelectAll is Ready(None) when empty; new streams arrive through
        // on_connection_event, after which the swarm polls us again.
        match self.inbound.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                ToBehaviour::Message(message),
            )),
            Poll::Ready(Some(Err(InboundError::TooLarge(len)))) => {
                Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                    ToBehaviour::Violation(Violation::FrameTooLarge(len)),
                ))
            }
            Poll::Ready(Some(Err(InboundError::Malformed(reason)))) => {
                Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(
                    ToBehaviour::Violation(Violation::Malformed(reason)),
                ))
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            FromBehaviour::Send(message, ticket) => {
                if self.unsupported {
                    self.events.push_back(ToBehaviour::SendFailed {
                        ticket,
                        timed_out: false,
                    });
                } else {
                    self.queue.push_back((message, ticket));
                }
            }
            FromBehaviour::KeepAlive(keep_alive) => self.keep_alive = keep_alive,
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: (stream, protocol),
                ..
            }) => {
                if self.inbound.len() >= self.limits.max_inbound_streams {
                    // Dropping an unclosed stream resets it.
                    drop(stream);
                    self.events.push_back(ToBehaviour::StreamRefused);
                    return;
                }
                tracing::trace!(%protocol, "bitswap: inbound stream");
                self.inbound.push(read_stream(
                    stream,
                    &self.limits,
                    Arc::clone(&self.read_budget),
                ));
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (mut stream, protocol),
                ..
            }) => {
                stream.ignore_for_keep_alive();
                let version = Version::from_protocol(&protocol).unwrap_or(Version::V1_0_0);
                if self.version != Some(version) {
                    self.version = Some(version);
                    self.events.push_back(ToBehaviour::Negotiated(version));
                }
                self.start_write(stream);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.outbound = Outbound::None;
                if matches!(error, StreamUpgradeError::NegotiationFailed) {
                    self.unsupported = true;
                    self.events.push_back(ToBehaviour::Unsupported);
                } else {
                    tracing::debug!(?error, "bitswap: opening a stream failed");
                }
                self.fail_queue();
            }
            ConnectionEvent::RemoteProtocolsChange(change) => self.on_remote_protocols(&change),
            _ => {}
        }
    }
}
