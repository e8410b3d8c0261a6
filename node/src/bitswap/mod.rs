//! Bitswap 1.2.0 (speaking 1.1.0 and 1.0.0 to peers that need it) as a
//! rust-libp2p `NetworkBehaviour`: [`Behaviour`], [`Config`], [`Event`].
//!
//! * Client: [`Behaviour::want`] keeps many wants in flight. Each want goes as
//!   want-block (with send-dont-have) to the one peer most likely to have it
//!   and as want-have to the other connected peers; a HAVE turns into a
//!   want-block when nobody is fetching it yet, DONT_HAVE or a timeout moves it
//!   to the next peer. A want-block its peer leaves unanswered is asked of
//!   the same peer again (a cancel, then the want) after 2 s, backing off;
//!   a block delivered moments ago answers a new want for it at once.
//!   Wants are sent to peers that connect later. Received
//!   blocks are checked against their CID before [`Event::Block`]; blocks we
//!   no longer want are dropped and counted, blocks we never asked the sender
//!   for are dropped and the sender penalised.
//! * Server: per-peer wantlists (capped, full/partial, cancel), answered by a
//!   round-robin scheduler that reads blocks from a [`BlockSource`] on the
//!   blocking pool and keeps at most [`Config::max_queued_bytes_per_peer`]
//!   queued for any peer.
//!
//! Modules: `wire` (protobuf and framing), `handler` (streams of one
//! connection), `client` (wants), `server` (ledgers and scheduler),
//! `behaviour` (glue), `source` (block access), `stats` (counters).

mod behaviour;
mod client;
mod handler;
mod server;
mod source;
mod stats;
pub mod wire;

pub use behaviour::Behaviour;
pub use source::{BlockSource, MemoryBlockSource, ReadBlocks};
pub use stats::{Direction, StatsHandle, StatsSnapshot, Transfer, TRANSFERS_KEPT};
pub use wire::{Presence, WantType};

use bytes::Bytes;
use cid::Cid;
use libp2p::{PeerId, StreamProtocol};
use std::time::Duration;

/// The protocol versions, newest first (the order offered outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V1_0_0,
    V1_1_0,
    V1_2_0,
}

/// Every protocol id we accept inbound and offer outbound, in preference order.
/// The bare `/ipfs/bitswap` is the pre-1.0.0 name for the 1.0.0 format.
pub const PROTOCOLS: [(StreamProtocol, Version); 4] = [
    (StreamProtocol::new("/ipfs/bitswap/1.2.0"), Version::V1_2_0),
    (StreamProtocol::new("/ipfs/bitswap/1.1.0"), Version::V1_1_0),
    (StreamProtocol::new("/ipfs/bitswap/1.0.0"), Version::V1_0_0),
    (StreamProtocol::new("/ipfs/bitswap"), Version::V1_0_0),
];

impl Version {
    /// The version a negotiated protocol id speaks.
    pub fn from_protocol(protocol: &StreamProtocol) -> Option<Version> {
        PROTOCOLS
            .iter()
            .find(|(candidate, _)| candidate == protocol)
            .map(|(_, version)| *version)
    }
}

/// Limits and timeouts. The defaults follow the Bitswap spec and Kubo.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest frame read or written; a bigger inbound frame resets the
    /// stream and penalises the peer. Default 4 MiB.
    pub max_frame_bytes: usize,
    /// Wantlist entries kept per peer (server); more are ignored. Default 1024.
    pub max_wantlist_entries: usize,
    /// Wants this node keeps in flight in total (client). Default 4096.
    pub max_wants: usize,
    /// Wantlist entries this node keeps at any one peer; further wants wait
    /// for a slot. Default 1024 (what Kubo keeps for us).
    pub max_wants_per_peer: usize,
    /// Bytes handed to a peer's connection and not yet written before the
    /// server stops preparing more for it. Default 4 MiB.
    pub max_queued_bytes_per_peer: usize,
    /// Block bytes packed into one server message (one block may overshoot).
    /// Default 1 MiB.
    pub target_message_bytes: usize,
    /// Block-store reads running at once on the blocking pool. Default 4.
    pub max_concurrent_lookups: usize,
    /// Wantlist entries one lookup job answers at most. Default 128.
    pub lookup_batch: usize,
    /// A want-have for a block of at most this size is answered with the
    /// block. Default 1024 (as Kubo).
    pub max_have_replace_bytes: usize,
    /// Inbound Bitswap streams open at once per connection (more are reset).
    /// Whatever their number, a connection's streams together buffer at most
    /// two frames (8 MiB). Default 32.
    pub max_inbound_streams: usize,
    /// An inbound stream with no complete frame for this long is closed.
    pub inbound_idle_timeout: Duration,
    /// Writing one message may take this long before the stream is reset.
    pub send_timeout: Duration,
    /// Our outbound stream is closed after this long without messages.
    pub outbound_idle_timeout: Duration,
    /// Opening and negotiating an outbound stream may take this long.
    pub open_timeout: Duration,
    /// A want-have unanswered for this long counts as DONT_HAVE.
    pub have_timeout: Duration,
    /// A want-block unanswered for this long moves to another peer.
    pub block_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_bytes: wire::MAX_FRAME_BYTES,
            max_wantlist_entries: 1024,
            max_wants: 4096,
            max_wants_per_peer: 1024,
            max_queued_bytes_per_peer: 4 * 1024 * 1024,
            target_message_bytes: 1024 * 1024,
            max_concurrent_lookups: 4,
            lookup_batch: 128,
            max_have_replace_bytes: 1024,
            max_inbound_streams: 32,
            inbound_idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            // Below Helia's 10 s: it aborts an inbound stream 10 s after its
            // last message, and a message we write just then is lost
            // without an error on our side.
            outbound_idle_timeout: Duration::from_secs(5),
            open_timeout: Duration::from_secs(10),
            have_timeout: Duration::from_secs(10),
            block_timeout: Duration::from_secs(30),
        }
    }
}

/// How to ask for one block.
#[derive(Debug, Clone)]
pub struct WantOptions {
    /// Ask only these peers (when connected); empty asks every connected
    /// Bitswap peer, including ones that connect later.
    pub peers: Vec<PeerId>,
    /// Ask peers to say DONT_HAVE instead of staying silent.
    pub send_dont_have: bool,
    /// Someone waits for this very block (a path-info, the next block of a
    /// stream): peers serve it before the bulk of a DAG walk's wants.
    pub urgent: bool,
    /// Part of a DAG someone waits for now (the store path whose NAR Nix
    /// asked for): served after urgent blocks, before walks run ahead.
    pub prompt: bool,
}

impl Default for WantOptions {
    fn default() -> Self {
        Self {
            peers: Vec::new(),
            send_dont_have: true,
            urgent: false,
            prompt: false,
        }
    }
}

/// Identifies a want; stable for a CID while it is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WantId(pub u64);

/// Why a want could not be registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WantError {
    #[error("too many wants in flight (limit {0})")]
    TooManyWants(usize),
    /// The CID names a codec or hash ipnix cannot verify, or is too long.
    #[error("cannot want this CID: {0}")]
    Unsupported(#[source] Box<ipnix_store::block::BlockError>),
}

/// Why a want has no block yet. The want stays registered (and is sent to
/// peers that connect later) until it is satisfied or [`Behaviour::cancel`]led.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WantFailure {
    /// No connected peer to ask.
    NoPeers,
    /// Every peer asked said DONT_HAVE or did not answer in time.
    NotFound { asked: usize },
}

/// Why a peer was penalised. The behaviour only reports; the swarm owner
/// decides whether to disconnect or ban.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Penalty {
    /// It sent a frame over the size limit (its stream was reset).
    FrameTooLarge { len: u64 },
    /// It sent bytes that are not a Bitswap message (its stream was reset).
    Malformed { reason: String },
    /// It sent blocks we never asked it for; a block whose data does not
    /// match the CID we asked for arrives as exactly this.
    UnsolicitedBlocks { count: usize, first: Cid },
    /// It sent blocks whose CID cannot be computed (bad prefix, unsupported
    /// codec or hash, over 2 MiB).
    InvalidBlocks { count: usize },
    /// It did not read our messages within the send timeout.
    Stalled,
}

/// What the behaviour reports to the swarm owner.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A wanted block, verified against its CID. The want is done.
    Block { cid: Cid, data: Bytes, from: PeerId },
    /// A peer says it has a wanted block.
    Have { cid: Cid, from: PeerId },
    /// A peer says it does not have a wanted block.
    DontHave { cid: Cid, from: PeerId },
    /// A want is stuck for now (see [`WantFailure`]).
    WantFailed { cid: Cid, reason: WantFailure },
    /// A peer broke the protocol.
    PeerPenalised { peer: PeerId, reason: Penalty },
}
