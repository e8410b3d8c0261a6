//! ipnix-store: content-addressed blocks in an embedded redb database with
//! pack files, pins, temporary pins and GC; UnixFS import/export and CAR v1.
//! No network and no Nix here: those build on this crate.

pub mod block;
pub mod blocks;
pub mod car;
mod gc;
pub mod links;
mod pack;
mod pins;
pub mod store;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod unixfs;
pub mod verify;

pub use blocks::{BlockRead, BlockWrite, MemoryBlocks, NullBlocks};
pub use bytes::Bytes;
pub use cid::Cid;
pub use gc::GcStats;
pub use pins::{Pin, PinMode};
pub use store::{IndexEntry, RepoStat, Session, Store, StoreError, StoreOptions, INLINE_LIMIT};
pub use verify::{VerifyConfig, VerifyReport};
