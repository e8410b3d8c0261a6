//! Where the Bitswap server reads blocks from: the [`BlockSource`] trait, its
//! implementation for the redb [`Store`] (index lookups for `has`/`size`), an
//! adapter for anything implementing [`ipnix_store::BlockRead`], and a
//! thread-safe in-memory source for tests and examples.
//!
//! Reads happen on tokio's blocking pool (see `server.rs`), never on the swarm
//! task, so an implementation may do synchronous disk I/O and hashing.

use bytes::Bytes;
use cid::Cid;
use ipnix_store::block::{self, BlockError};
use ipnix_store::{BlockRead, Store, StoreError};
use std::collections::HashMap;
use std::sync::RwLock;

/// Read access to the blocks this node serves. Errors are the implementation's
/// to log; to Bitswap a block that cannot be read is a block we don't have.
pub trait BlockSource: Send + Sync + 'static {
    /// The block's bytes, if we have it.
    fn get(&self, cid: &Cid) -> Option<Bytes>;
    /// Whether we have the block (answering want-have).
    fn has(&self, cid: &Cid) -> bool {
        self.get(cid).is_some()
    }
    /// The block's size, if we have it (deciding whether to answer a
    /// want-have for a tiny block with the block itself).
    fn size(&self, cid: &Cid) -> Option<usize> {
        self.get(cid).map(|data| data.len())
    }
}

fn found<T>(cid: &Cid, result: Result<Option<T>, StoreError>) -> Option<T> {
    result.unwrap_or_else(|error| {
        tracing::warn!(%cid, %error, "bitswap: reading block failed; answering as missing");
        None
    })
}

/// Served blocks are not re-hashed: the peer verifies every block it
/// receives (DESIGN.md I-21). `has` and `size` are index lookups.
impl BlockSource for Store {
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        found(cid, Store::get_unverified(self, cid))
    }

    fn has(&self, cid: &Cid) -> bool {
        Store::has(self, cid).unwrap_or_else(|error| {
            tracing::warn!(%cid, %error, "bitswap: index lookup failed; answering as missing");
            false
        })
    }

    fn size(&self, cid: &Cid) -> Option<usize> {
        found(cid, self.block_size(cid)).map(|size| size as usize)
    }
}

/// Serves blocks from anything implementing [`BlockRead`] (`has`/`size` read
/// the whole block; sources with an index should implement [`BlockSource`]
/// directly).
#[derive(Debug)]
pub struct ReadBlocks<T>(pub T);

impl<T: BlockRead + Send + Sync + 'static> BlockSource for ReadBlocks<T> {
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        found(cid, self.0.read_block(cid))
    }
}

/// Verified blocks in a map behind a lock: for tests and examples.
#[derive(Debug, Default)]
pub struct MemoryBlockSource {
    blocks: RwLock<HashMap<Cid, Bytes>>,
}

impl MemoryBlockSource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a block after checking it against its CID.
    pub fn insert(&self, cid: Cid, data: Bytes) -> Result<(), BlockError> {
        block::verify(&cid, &data)?;
        self.blocks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(cid, data);
        Ok(())
    }

    /// Removes a block; true if it was there.
    pub fn remove(&self, cid: &Cid) -> bool {
        self.blocks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(cid)
            .is_some()
    }

    pub fn len(&self) -> usize {
        self.blocks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BlockSource for MemoryBlockSource {
    fn get(&self, cid: &Cid) -> Option<Bytes> {
        self.blocks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(cid)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnix_store::block::{cid_for, RAW};
    use ipnix_store::{BlockWrite, MemoryBlocks};

    #[test]
    fn memory_source_verifies_and_serves() {
        let source = MemoryBlockSource::new();
        let cid = cid_for(RAW, b"hello");
        assert!(source.insert(cid, Bytes::from_static(b"hellO")).is_err());
        source
            .insert(cid, Bytes::from_static(b"hello"))
            .expect("valid");
        assert!(source.has(&cid));
        assert_eq!(source.size(&cid), Some(5));
        assert!(source.remove(&cid));
        assert!(!source.has(&cid));
    }

    #[test]
    fn the_store_is_a_block_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open store");
        let data = vec![9u8; 40_000];
        let cid = cid_for(RAW, &data);
        store.put(&cid, &data).expect("put");
        let source: std::sync::Arc<dyn BlockSource> = std::sync::Arc::new(store);
        assert!(source.has(&cid));
        assert_eq!(source.size(&cid), Some(40_000));
        assert_eq!(source.get(&cid).as_deref(), Some(data.as_slice()));
        assert!(!source.has(&cid_for(RAW, b"absent")));
    }

    #[test]
    fn read_blocks_adapter_serves_block_read() {
        let mut blocks = MemoryBlocks::new();
        let cid = cid_for(RAW, b"abc");
        blocks.write_block(cid, b"abc").expect("write");
        let source = ReadBlocks(blocks);
        assert_eq!(source.get(&cid).as_deref(), Some(&b"abc"[..]));
        assert!(!source.has(&cid_for(RAW, b"other")));
    }
}
