//! Bitswap counters and gauges for `/metrics`: updated by the behaviour, read
//! from any task through a cloneable [`StatsHandle`] as a [`StatsSnapshot`];
//! and a bounded log of recent transfers ([`Transfer`]) for the status page.

use cid::Cid;
use libp2p::PeerId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, shared between the behaviour and readers.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $name: AtomicU64,)*
            /// The last few transfers, for the status page.
            pub(crate) transfers: TransferLog,
        }

        /// A copy of every counter at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl StatsSnapshot {
            /// Every counter as `(name, value)`, for Prometheus exposition.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

stats! {
    /// Blocks sent to peers (server).
    blocks_sent,
    /// Block data bytes sent to peers.
    block_bytes_sent,
    /// HAVE answers sent.
    haves_sent,
    /// DONT_HAVE answers sent.
    dont_haves_sent,
    /// Wanted blocks received and delivered (verified).
    blocks_received,
    /// Bytes of wanted blocks received.
    block_bytes_received,
    /// Blocks we had asked the sender for but no longer wanted (duplicates, late after cancel).
    duplicate_blocks,
    /// Bytes of duplicate blocks.
    duplicate_bytes,
    /// Blocks we never asked the sender for, or whose CID could not be verified: dropped.
    unwanted_blocks,
    /// Bytes of unwanted blocks.
    unwanted_bytes,
    /// HAVE answers received.
    haves_received,
    /// DONT_HAVE answers received.
    dont_haves_received,
    /// Want-blocks asked again of the same peer (a cancel, then the want)
    /// because the peer neither sent the block nor said anything about it.
    wants_reasked,
    /// Wants answered from the blocks delivered moments before (a reader
    /// asking for a block that the fetch before it is still storing).
    blocks_redelivered,
    /// Messages received.
    messages_received,
    /// Messages sent.
    messages_sent,
    /// Messages that could not be sent (stream failure, timeout, disconnect).
    send_failures,
    /// Wantlist entries received from peers.
    wantlist_entries_received,
    /// Entries ignored because the peer's wantlist was full.
    wantlist_entries_over_limit,
    /// CIDs refused (unparsable or over 168 bytes).
    cids_refused,
    /// Frames over the size limit (stream reset).
    frames_too_large,
    /// Inbound streams refused because a connection had too many.
    streams_refused,
    /// Penalties issued to peers.
    penalties,
    /// Gauge: wants this node has in flight (client).
    wants,
    /// Gauge: wantlist entries held for all peers (server).
    peer_wantlist_entries,
    /// Gauge: bytes handed to connections and not yet written (all peers).
    queued_bytes,
    /// Gauge: the largest `queued_bytes` seen for any single peer.
    max_peer_queued_bytes,
    /// Gauge: connected peers speaking Bitswap (or not yet known not to).
    peers,
}

impl StatsSnapshot {
    /// The fields that are gauges; every other field is a monotonic counter.
    pub const GAUGES: [&'static str; 5] = [
        "wants",
        "peer_wantlist_entries",
        "queued_bytes",
        "max_peer_queued_bytes",
        "peers",
    ];
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(gauge: &AtomicU64, value: u64) {
        gauge.store(value, Ordering::Relaxed);
    }

    pub(crate) fn raise(gauge: &AtomicU64, value: u64) {
        gauge.fetch_max(value, Ordering::Relaxed);
    }
}

/// A cloneable reader of the Bitswap counters, usable from any task.
#[derive(Debug, Clone)]
pub struct StatsHandle(pub(crate) Arc<Stats>);

impl StatsHandle {
    pub fn snapshot(&self) -> StatsSnapshot {
        self.0.snapshot()
    }

    /// The recent transfers, newest first.
    pub fn recent_transfers(&self) -> Vec<Transfer> {
        self.0.transfers.recent()
    }
}

/// Transfers the log keeps; older ones are dropped.
pub const TRANSFERS_KEPT: usize = 32;
/// Blocks to or from the same peer less than this apart belong to one transfer.
const TRANSFER_GAP: Duration = Duration::from_secs(5);

/// Which way blocks went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Blocks this node wanted, received from a peer.
    In,
    /// Blocks this node served to a peer.
    Out,
}

/// A run of blocks to or from one peer with no pause of [`TRANSFER_GAP`]
/// between them: what a `cat`, a NAR fetch or a peer's fetch looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub direction: Direction,
    pub peer: PeerId,
    /// The first block of the run (usually the root of what was fetched).
    pub first: Cid,
    pub blocks: u64,
    pub bytes: u64,
    pub started: SystemTime,
    pub last: SystemTime,
}

/// The last [`TRANSFERS_KEPT`] transfers, oldest first.
#[derive(Debug, Default)]
pub(crate) struct TransferLog(Mutex<VecDeque<Transfer>>);

impl TransferLog {
    /// Counts `blocks` blocks of `bytes` bytes to or from `peer`, starting
    /// with `first`: into the peer's current transfer that way, else a new one.
    pub(crate) fn record(
        &self,
        direction: Direction,
        peer: PeerId,
        first: Cid,
        blocks: u64,
        bytes: u64,
    ) {
        let now = SystemTime::now();
        let mut log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let current = log.iter_mut().rev().find(|t| {
            t.peer == peer
                && t.direction == direction
                && now.duration_since(t.last).unwrap_or_default() < TRANSFER_GAP
        });
        if let Some(transfer) = current {
            transfer.blocks += blocks;
            transfer.bytes += bytes;
            transfer.last = now;
            return;
        }
        if log.len() == TRANSFERS_KEPT {
            log.pop_front();
        }
        log.push_back(Transfer {
            direction,
            peer,
            first,
            blocks,
            bytes,
            started: now,
            last: now,
        });
    }

    fn recent(&self) -> Vec<Transfer> {
        let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        log.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_coalesce_per_peer_and_stay_bounded() {
        let log = TransferLog::default();
        let cid = Cid::try_from("bafkqaaa").expect("cid");
        let a = PeerId::random();
        let b = PeerId::random();
        log.record(Direction::In, a, cid, 1, 10);
        log.record(Direction::Out, a, cid, 1, 5);
        log.record(Direction::In, b, cid, 1, 7);
        log.record(Direction::In, a, cid, 2, 20);
        let recent = log.recent();
        assert_eq!(recent.len(), 3);
        let a_in = recent
            .iter()
            .find(|t| t.peer == a && t.direction == Direction::In)
            .expect("a in");
        assert_eq!((a_in.blocks, a_in.bytes), (3, 30));
        for _ in 0..TRANSFERS_KEPT * 2 {
            log.record(Direction::In, PeerId::random(), cid, 1, 1);
        }
        assert_eq!(log.recent().len(), TRANSFERS_KEPT);
    }
}
