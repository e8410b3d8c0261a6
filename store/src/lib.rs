//! ipnix-store: content-addressed blocks in an embedded redb database with
//! pack files, pins, temporary pins and GC; UnixFS import/export and CAR v1.
//! No network and no Nix here: those build on this crate.

pub mod block;
pub mod blocks;
pub mod links;
pub mod store;

pub use blocks::{BlockRead, BlockWrite, MemoryBlocks, NullBlocks};
pub use bytes::Bytes;
pub use cid::Cid;
pub use store::StoreError;
