//! Bitswap counters and gauges for `/metrics`: updated by the behaviour, read
//! from any task through a cloneable [`StatsHandle`] as a [`StatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters, shared between the behaviour and readers.
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $name: AtomicU64,)*
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
}
