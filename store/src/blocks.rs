//! The two small traits every block producer and consumer is written against
//! (UnixFS, CAR, the Nix bridge, Bitswap), so they work the same on the redb
//! [`Store`](crate::Store), on one of its write sessions, and on the in-memory
//! [`MemoryBlocks`] used by unit tests and property tests.

use crate::block::{check_cid_and_size, verify};
use crate::StoreError;
use bytes::Bytes;
use cid::Cid;
use std::collections::HashMap;

/// Reads blocks by CID. `Ok(None)` means "not here", never an error.
pub trait BlockRead {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError>;

    /// Like [`BlockRead::read_block`], but a store may skip re-hashing bytes
    /// it verified when it wrote them. Only for callers that check what they
    /// make of the bytes by other means before anyone relies on it (a NAR
    /// render checked against the path-info's NAR hash, a Bitswap peer that
    /// verifies every block it receives). Blocks from outside are still
    /// verified on arrival.
    fn read_block_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read_block(cid)
    }
}

/// Writes blocks. Implementations verify `data` against `cid` before keeping it.
pub trait BlockWrite {
    fn write_block(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError>;

    /// Writes a block whose `cid` the caller computed from exactly these
    /// `data` bytes, in this process, just now (an importer naming what it
    /// built). Implementations may skip re-hashing, so a wrong CID here is
    /// stored under that wrong name: never pass a CID that came with the
    /// bytes from outside (network, CAR file, user input); use
    /// [`BlockWrite::write_block`] for those.
    fn write_block_hashed_here(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        self.write_block(cid, data)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for &T {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        (**self).read_block(cid)
    }
    fn read_block_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        (**self).read_block_unverified(cid)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for std::sync::Arc<T> {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        (**self).read_block(cid)
    }
    fn read_block_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        (**self).read_block_unverified(cid)
    }
}

impl<T: BlockRead + ?Sized> BlockRead for Box<T> {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        (**self).read_block(cid)
    }
    fn read_block_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        (**self).read_block_unverified(cid)
    }
}

impl<T: BlockWrite + ?Sized> BlockWrite for &mut T {
    fn write_block(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_block(cid, data)
    }
    fn write_block_hashed_here(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        (**self).write_block_hashed_here(cid, data)
    }
}

/// Verified blocks in a map: for tests and for computing CIDs without storing.
#[derive(Debug, Default, Clone)]
pub struct MemoryBlocks {
    blocks: HashMap<Cid, Bytes>,
}

impl MemoryBlocks {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.blocks.len()
    }
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
    pub fn total_bytes(&self) -> u64 {
        self.blocks.values().map(|b| b.len() as u64).sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&Cid, &Bytes)> {
        self.blocks.iter()
    }
}

impl BlockRead for MemoryBlocks {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        Ok(self.blocks.get(cid).cloned())
    }
}

impl BlockWrite for MemoryBlocks {
    fn write_block(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        verify(&cid, data)?;
        self.blocks
            .entry(cid)
            .or_insert_with(|| Bytes::copy_from_slice(data));
        Ok(())
    }
}

/// Discards blocks after verifying them: computes CIDs the way `ipnix add -n` does.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullBlocks;

impl BlockWrite for NullBlocks {
    fn write_block(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        verify(&cid, data)?;
        Ok(())
    }
    fn write_block_hashed_here(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        check_cid_and_size(&cid, data)?;
        Ok(())
    }
}
