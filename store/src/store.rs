//! The redb block store: block index, inline small blocks, pack files for
//! large ones, pins, temporary pins, write sessions and generic indexes.
//! GC lives in `gc.rs` (with the argument for why it is safe next to
//! imports), the pack format in `pack.rs`, the whole-repo audit in
//! `verify.rs`.
//!
//! Layout of a repo directory:
//! * `repo.lock`: held exclusively (fs2) by the one process using the repo;
//! * `index.redb`: the database (made as `index.redb.new` and renamed into
//!   place once complete, so a crash on first use never tears it), tables
//!   `blocks_v1` (CIDv1 bytes -> tagged value: the block itself when <=
//!   [`INLINE_LIMIT`], else its pack location), `pins_v1`, `index_v1`
//!   (namespaced key -> value), `counters_v1` and `packs_v1` (running totals
//!   for [`Store::stat`] and GC);
//! * `packs/NNNNNNNN.pack`: append-only files of larger blocks.
//!
//! Durability order: pack bytes are written and fdatasync'd before the redb
//! commit that first names them, so after a crash every index entry has its
//! data; the worst a crash leaves is unreferenced pack bytes, which GC
//! reclaims.

use crate::block::{self, BlockError, IDENTITY, RAW};
use crate::blocks::{BlockRead, BlockWrite};
use crate::links::{self, DagLinks, LinksError};
use crate::pack::{record_len, PackLoc, Packs, ReadFailure};
use crate::pins::{self, Pin, PinMode, TempPins};
use bytes::Bytes;
use cid::{Cid, Version};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};

/// Everything that can go wrong in the block store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Links(#[from] LinksError),
    #[error("block {0} is not in the store")]
    Missing(Cid),
    #[error("database error: {0}")]
    Db(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("repo {dir} is in use by another ipnix process (a running daemon?)")]
    Locked { dir: String },
    #[error("block {cid} is corrupt on disk: {detail} (delete it and fetch it again)")]
    Corrupt { cid: Cid, detail: String },
    #[error("block {0} is pinned; unpin it before deleting it")]
    Pinned(Cid),
}

macro_rules! redb_errors {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
redb_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Blocks up to this size live inline in redb by default; larger ones in
/// pack files ([`StoreOptions::inline_limit`]). Low because inline values
/// cost redb 2-4x their size on disk and write 2-5x slower than packed
/// records from 1 KiB up (`store_bench`, DESIGN.md "Measured decisions").
pub const INLINE_LIMIT: usize = 256;
/// A session commits once its buffered blocks and entries reach this size.
const SESSION_BUFFER_BYTES: usize = 32 << 20;
/// Rough per-entry memory cost of a buffered entry besides key and value.
const ENTRY_OVERHEAD: usize = 64;
const DB_FILE: &str = "index.redb";
/// Where a new database is made before it is renamed to [`DB_FILE`].
const DB_NEW_FILE: &str = "index.redb.new";
const LOCK_FILE: &str = "repo.lock";
const PACK_DIR: &str = "packs";
/// How often a reader looks a block up again after GC moved it away.
const MOVED_RETRIES: u32 = 3;

pub(crate) const BLOCKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks_v1");
pub(crate) const PINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pins_v1");
pub(crate) const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index_v1");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters_v1");
/// Pack id -> (live records, live record bytes including headers).
pub(crate) const PACKS: TableDefinition<u32, (u64, u64)> = TableDefinition::new("packs_v1");

/// What a session knows about a block it put that has no links.
static NO_LINKS: DagLinks = DagLinks {
    children: Vec::new(),
    covered: Vec::new(),
};

const TAG_INLINE: u8 = 0;
const TAG_PACKED: u8 = 1;
const PACKED_VALUE_LEN: usize = 1 + 4 + 8 + 4;

/// A `blocks_v1` value, decoded without copying.
pub(crate) enum StoredRef<'a> {
    Inline(&'a [u8]),
    Packed(PackLoc),
}

impl StoredRef<'_> {
    fn size(&self) -> u64 {
        match self {
            StoredRef::Inline(data) => data.len() as u64,
            StoredRef::Packed(loc) => u64::from(loc.len),
        }
    }
}

/// A `blocks_v1` value, owned (outlives the read transaction).
enum Stored {
    Inline(Bytes),
    Packed(PackLoc),
}

fn encode_inline(data: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(1 + data.len());
    value.push(TAG_INLINE);
    value.extend_from_slice(data);
    value
}

pub(crate) fn encode_packed(loc: PackLoc) -> Vec<u8> {
    let mut value = Vec::with_capacity(PACKED_VALUE_LEN);
    value.push(TAG_PACKED);
    value.extend_from_slice(&loc.pack.to_le_bytes());
    value.extend_from_slice(&loc.offset.to_le_bytes());
    value.extend_from_slice(&loc.len.to_le_bytes());
    value
}

pub(crate) fn decode_stored(value: &[u8]) -> Result<StoredRef<'_>, StoreError> {
    match value.split_first() {
        Some((&TAG_INLINE, data)) => Ok(StoredRef::Inline(data)),
        Some((&TAG_PACKED, rest)) if rest.len() == PACKED_VALUE_LEN - 1 => {
            let (pack, rest) = rest.split_at(4);
            let (offset, len) = rest.split_at(8);
            Ok(StoredRef::Packed(PackLoc {
                pack: u32::from_le_bytes(pack.try_into().expect("4 bytes")),
                offset: u64::from_le_bytes(offset.try_into().expect("8 bytes")),
                len: u32::from_le_bytes(len.try_into().expect("4 bytes")),
            }))
        }
        _ => Err(StoreError::Db("malformed entry in blocks_v1".into())),
    }
}

/// CIDv0 names the same block as the CIDv1 dag-pb with the same hash; the
/// store keys everything by CIDv1.
pub(crate) fn normalize(cid: Cid) -> Cid {
    if cid.version() == Version::V0 {
        Cid::new_v1(cid.codec(), *cid.hash())
    } else {
        cid
    }
}

/// The normalized CID if the store could ever hold it, else `None`.
fn storable(cid: &Cid) -> Option<Cid> {
    let cid = normalize(*cid);
    block::check_cid(&cid).ok().map(|()| cid)
}

fn is_identity(cid: &Cid) -> bool {
    cid.hash().code() == IDENTITY
}

/// Changes to the running totals made by one transaction, applied in it.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    blocks: i64,
    block_bytes: i64,
    inline_blocks: i64,
    inline_bytes: i64,
    /// Pack id -> (records, record bytes) delta.
    packs: HashMap<u32, (i64, i64)>,
}

pub(crate) const COUNTER_BLOCKS: &str = "blocks";
pub(crate) const COUNTER_BLOCK_BYTES: &str = "block_bytes";
pub(crate) const COUNTER_INLINE_BLOCKS: &str = "inline_blocks";
pub(crate) const COUNTER_INLINE_BYTES: &str = "inline_bytes";

impl Tally {
    /// Counts a block entry as added (`sign` = 1) or removed (-1).
    pub(crate) fn count(&mut self, key_len: usize, stored: &StoredRef<'_>, sign: i64) {
        let size = stored.size() as i64;
        self.blocks += sign;
        self.block_bytes += sign * size;
        match stored {
            StoredRef::Inline(_) => {
                self.inline_blocks += sign;
                self.inline_bytes += sign * size;
            }
            StoredRef::Packed(loc) => {
                let entry = self.packs.entry(loc.pack).or_default();
                entry.0 += sign;
                entry.1 += sign * record_len(key_len, loc.len as usize) as i64;
            }
        }
    }

    pub(crate) fn apply(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut counters = txn.open_table(COUNTERS)?;
        for (name, delta) in [
            (COUNTER_BLOCKS, self.blocks),
            (COUNTER_BLOCK_BYTES, self.block_bytes),
            (COUNTER_INLINE_BLOCKS, self.inline_blocks),
            (COUNTER_INLINE_BYTES, self.inline_bytes),
        ] {
            if delta != 0 {
                let current = counters.get(name)?.map(|g| g.value()).unwrap_or(0);
                counters.insert(name, add_delta(current, delta))?;
            }
        }
        let mut packs = txn.open_table(PACKS)?;
        for (&id, &(records, bytes)) in &self.packs {
            let (r, b) = packs.get(id)?.map(|g| g.value()).unwrap_or((0, 0));
            let (r, b) = (add_delta(r, records), add_delta(b, bytes));
            if r == 0 {
                packs.remove(id)?;
            } else {
                packs.insert(id, (r, b))?;
            }
        }
        Ok(())
    }
}

fn add_delta(value: u64, delta: i64) -> u64 {
    u64::try_from(i128::from(value) + i128::from(delta)).unwrap_or(0)
}

type BlocksTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// Inserts a block entry unless one exists; returns whether it inserted.
pub(crate) fn insert_block(
    blocks: &mut BlocksTable<'_>,
    tally: &mut Tally,
    key: &[u8],
    value: &[u8],
) -> Result<bool, StoreError> {
    if blocks.get(key)?.is_some() {
        return Ok(false);
    }
    blocks.insert(key, value)?;
    tally.count(key.len(), &decode_stored(value)?, 1);
    Ok(true)
}

/// Removes a block entry; returns the size of the block it named.
pub(crate) fn remove_block(
    blocks: &mut BlocksTable<'_>,
    tally: &mut Tally,
    key: &[u8],
) -> Result<Option<u64>, StoreError> {
    let Some(old) = blocks.remove(key)? else {
        return Ok(None);
    };
    let stored = decode_stored(old.value())?;
    tally.count(key.len(), &stored, -1);
    Ok(Some(stored.size()))
}

/// One (key, value) of an index namespace.
pub type IndexEntry = (Vec<u8>, Vec<u8>);

/// Key of `index_v1`: namespace length (u32 BE), namespace, key.
fn index_key(namespace: &str, key: &[u8]) -> Vec<u8> {
    let mut out = index_prefix(namespace);
    out.extend_from_slice(key);
    out
}

pub(crate) fn index_prefix(namespace: &str) -> Vec<u8> {
    let len = u32::try_from(namespace.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + namespace.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(namespace.as_bytes());
    out
}

/// Sizes and counts of a repo, for `ipnix repo stat` and the benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RepoStat {
    /// Blocks in the index, and the sum of their sizes.
    pub blocks: u64,
    pub block_bytes: u64,
    /// Blocks stored inside the database (<= [`INLINE_LIMIT`]).
    pub inline_blocks: u64,
    pub inline_bytes: u64,
    /// Blocks stored in pack files.
    pub packed_blocks: u64,
    pub packed_bytes: u64,
    pub pack_files: u64,
    /// Size of all pack files, split into bytes of live records (headers
    /// included) and the rest (deleted or never-committed records), which
    /// GC reclaims.
    pub pack_bytes: u64,
    pub pack_live_bytes: u64,
    pub pack_dead_bytes: u64,
    /// Size of the database file.
    pub db_bytes: u64,
    /// Database plus pack files.
    pub disk_bytes: u64,
    pub pins: u64,
    pub recursive_pins: u64,
    pub direct_pins: u64,
    /// CIDs held by live write sessions.
    pub temp_pins: u64,
}

/// Tuning of a [`Store`]; `Default` is what ipnix uses.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreOptions {
    /// A pack file is sealed (and a new one started) before it would grow
    /// past this. Smaller packs make GC rewrite less at a time.
    pub pack_target_bytes: u64,
    /// Memory redb may use to cache database pages.
    pub cache_bytes: usize,
    /// Blocks up to this size are stored inside the database, larger ones
    /// in packs. Only affects where new blocks go.
    pub inline_limit: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            pack_target_bytes: crate::pack::PACK_TARGET_BYTES,
            cache_bytes: 64 << 20,
            inline_limit: INLINE_LIMIT,
        }
    }
}

impl StoreOptions {
    pub fn pack_target_bytes(mut self, bytes: u64) -> Self {
        self.pack_target_bytes = bytes;
        self
    }
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }
    pub fn inline_limit(mut self, bytes: usize) -> Self {
        self.inline_limit = bytes;
        self
    }
}

/// The block store of one repo. `Send + Sync`: share it as `Arc<Store>`.
pub struct Store {
    pub(crate) dir: PathBuf,
    pub(crate) db: Database,
    pub(crate) packs: Packs,
    pub(crate) temp_pins: TempPins,
    /// The GC fence (see [`crate::gc`] for why it makes GC safe): session
    /// puts, temp pins and pin checks hold it shared; mark+sweep exclusive.
    pub(crate) gc_fence: RwLock<()>,
    /// One GC at a time (its pack rewriting runs outside the fence).
    pub(crate) gc_running: Mutex<()>,
    inline_limit: usize,
    /// Declared last so it is released after the database is closed.
    _lock: File,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Store {
    /// Opens the repo in `dir`, creating it if missing. Only one `Store`
    /// (in any process) may have a repo open at a time.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// [`Store::open`] with tuning options.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let locked = || StoreError::Locked {
            dir: dir.display().to_string(),
        };
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(&lock_path, e))?;
        if let Err(e) = fs2::FileExt::try_lock_exclusive(&lock) {
            if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() {
                return Err(locked());
            }
            return Err(io_err(&lock_path, e));
        }
        // A new database is made under a temporary name and renamed into
        // place once its tables are committed: a crash while a repo is first
        // used must not leave a torn `index.redb` that never opens again
        // (found by the kill -9 campaign; crash_consistency.rs tests it).
        let db_path = dir.join(DB_FILE);
        let creating = !db_path.try_exists().map_err(|e| io_err(&db_path, e))?;
        let open_path = if creating {
            let fresh = dir.join(DB_NEW_FILE);
            match fs::remove_file(&fresh) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&fresh, e)),
            }
            fresh
        } else {
            db_path.clone()
        };
        let db = match redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(&open_path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(locked()),
            Err(e) => return Err(e.into()),
        };
        let txn = db.begin_write()?;
        txn.open_table(BLOCKS)?;
        txn.open_table(PINS)?;
        txn.open_table(INDEX)?;
        txn.open_table(COUNTERS)?;
        txn.open_table(PACKS)?;
        txn.commit()?;
        if creating {
            fs::rename(&open_path, &db_path).map_err(|e| io_err(&db_path, e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(dir, e))?;
        }
        let packs = Packs::open(dir.join(PACK_DIR), options.pack_target_bytes)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            db,
            packs,
            temp_pins: TempPins::default(),
            gc_fence: RwLock::new(()),
            gc_running: Mutex::new(()),
            inline_limit: options.inline_limit,
            _lock: lock,
        })
    }

    /// The repo directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn fence_read(&self) -> RwLockReadGuard<'_, ()> {
        self.gc_fence.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores one block durably (one commit per call: batch with
    /// [`Store::session`]). Unpinned: GC may collect it. Returns whether it
    /// was new.
    pub fn put(&self, cid: &Cid, data: &[u8]) -> Result<bool, StoreError> {
        let mut session = self.session();
        let new = session.put(*cid, data)?;
        session.finish(None)?;
        Ok(new)
    }

    /// The block's bytes, verified against its CID. A block whose bytes on
    /// disk do not match is reported as [`StoreError::Corrupt`].
    pub fn get(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read(cid, true)
    }

    /// The block's bytes as stored, not re-hashed (they were verified when
    /// written; the pack record header is still checked). For readers whose
    /// consumer verifies the content anyway: see
    /// [`BlockRead::read_block_unverified`] and DESIGN.md I-21.
    pub fn get_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.read(cid, false)
    }

    fn read(&self, cid: &Cid, verify: bool) -> Result<Option<Bytes>, StoreError> {
        let Some(cid) = storable(cid) else {
            return Ok(None);
        };
        if is_identity(&cid) {
            return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
        }
        let key = cid.to_bytes();
        let mut retries = 0;
        loop {
            let stored = {
                let txn = self.db.begin_read()?;
                let blocks = txn.open_table(BLOCKS)?;
                let Some(value) = blocks.get(key.as_slice())? else {
                    return Ok(None);
                };
                match decode_stored(value.value())? {
                    StoredRef::Inline(data) => Stored::Inline(Bytes::copy_from_slice(data)),
                    StoredRef::Packed(loc) => Stored::Packed(loc),
                }
            };
            let data = match stored {
                Stored::Inline(data) => data,
                Stored::Packed(loc) => match self.packs.read(loc, &key) {
                    Ok(data) => data,
                    // GC moved the block and deleted the pack after our
                    // lookup: the index now names the new place.
                    Err(ReadFailure::PackGone) if retries < MOVED_RETRIES => {
                        retries += 1;
                        continue;
                    }
                    Err(failure) => return Err(self.read_failure(&cid, loc, failure)),
                },
            };
            if !verify {
                return Ok(Some(data));
            }
            return checked(&cid, data).map(Some);
        }
    }

    fn read_failure(&self, cid: &Cid, loc: PackLoc, failure: ReadFailure) -> StoreError {
        match failure {
            ReadFailure::PackGone => StoreError::Corrupt {
                cid: *cid,
                detail: format!(
                    "its pack file {} is missing",
                    self.packs.path(loc.pack).display()
                ),
            },
            ReadFailure::Corrupt(detail) => StoreError::Corrupt { cid: *cid, detail },
            ReadFailure::Io(source) => io_err(&self.packs.path(loc.pack), source),
        }
    }

    /// Reads a block through an open table (of a read or write transaction),
    /// verified. No retry: inside one transaction the locations are stable.
    pub(crate) fn read_in<T>(&self, table: &T, cid: &Cid) -> Result<Option<Bytes>, StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let Some(cid) = storable(cid) else {
            return Ok(None);
        };
        if is_identity(&cid) {
            return Ok(Some(Bytes::copy_from_slice(cid.hash().digest())));
        }
        let key = cid.to_bytes();
        let Some(value) = table.get(key.as_slice())? else {
            return Ok(None);
        };
        let data = match decode_stored(value.value())? {
            StoredRef::Inline(data) => Bytes::copy_from_slice(data),
            StoredRef::Packed(loc) => self
                .packs
                .read(loc, &key)
                .map_err(|f| self.read_failure(&cid, loc, f))?,
        };
        checked(&cid, data).map(Some)
    }

    fn present_in<T>(table: &T, cid: &Cid) -> Result<bool, StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let Some(cid) = storable(cid) else {
            return Ok(false);
        };
        if is_identity(&cid) {
            return Ok(true);
        }
        Ok(table.get(cid.to_bytes().as_slice())?.is_some())
    }

    fn contains_key(&self, key: &[u8]) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let present = blocks.get(key)?.is_some();
        Ok(present)
    }

    pub fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        Self::present_in(&blocks, cid)
    }

    pub fn block_size(&self, cid: &Cid) -> Result<Option<u64>, StoreError> {
        let Some(cid) = storable(cid) else {
            return Ok(None);
        };
        if is_identity(&cid) {
            return Ok(Some(cid.hash().digest().len() as u64));
        }
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let size = match blocks.get(cid.to_bytes().as_slice())? {
            Some(value) => Some(decode_stored(value.value())?.size()),
            None => None,
        };
        Ok(size)
    }

    /// Removes a block now. Refused for a block that is itself pinned;
    /// removing a block inside a pinned DAG is allowed (that is how a
    /// corrupt block is dropped so it can be fetched again).
    pub fn delete(&self, cid: &Cid) -> Result<bool, StoreError> {
        let Some(cid) = storable(cid) else {
            return Ok(false);
        };
        if is_identity(&cid) {
            return Ok(false);
        }
        let key = cid.to_bytes();
        let txn = self.db.begin_write()?;
        let mut tally = Tally::default();
        let removed = {
            if txn.open_table(PINS)?.get(key.as_slice())?.is_some() {
                return Err(StoreError::Pinned(cid));
            }
            let mut blocks = txn.open_table(BLOCKS)?;
            remove_block(&mut blocks, &mut tally, &key)?.is_some()
        };
        tally.apply(&txn)?;
        txn.commit()?;
        Ok(removed)
    }

    /// Every stored CID (CIDv1), in key order.
    pub fn cids(&self) -> Result<Vec<Cid>, StoreError> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let mut out = Vec::with_capacity(usize::try_from(blocks.len()?).unwrap_or(0));
        for entry in blocks.iter()? {
            let (key, _) = entry?;
            let cid = Cid::try_from(key.value())
                .map_err(|e| StoreError::Db(format!("blocks_v1 key is not a CID: {e}")))?;
            out.push(cid);
        }
        Ok(out)
    }

    /// A batched writer; see [`Session`].
    pub fn session(&self) -> Session<'_> {
        Session {
            store: self,
            held: HashMap::new(),
            known_links: HashMap::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            pack_holds: BTreeSet::new(),
            staged_index: Vec::new(),
        }
    }

    /// Pins a block (replacing an existing pin's mode and name). A recursive
    /// pin is refused with [`StoreError::Missing`] unless the whole DAG is
    /// present; a direct pin needs the block itself.
    pub fn pin(&self, cid: &Cid, mode: PinMode, name: Option<&str>) -> Result<(), StoreError> {
        let cid = normalize(*cid);
        block::check_cid(&cid)?;
        let _fence = self.fence_read();
        let txn = self.db.begin_write()?;
        {
            let blocks = txn.open_table(BLOCKS)?;
            self.check_pinnable(&blocks, &cid, mode)?;
            let mut pins = txn.open_table(PINS)?;
            pins.insert(
                cid.to_bytes().as_slice(),
                pins::encode_pin(mode, name).as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Checks through `blocks` that what `mode` would keep is all present.
    pub(crate) fn check_pinnable<T>(
        &self,
        blocks: &T,
        cid: &Cid,
        mode: PinMode,
    ) -> Result<(), StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        self.check_pinnable_knowing(blocks, cid, mode, |_| None)
    }

    /// [`Store::check_pinnable`], taking the links of blocks for which
    /// `known` has them from there (a session that just put them) instead
    /// of reading and re-hashing the block; their presence is still checked.
    fn check_pinnable_knowing<'k, T>(
        &self,
        blocks: &T,
        cid: &Cid,
        mode: PinMode,
        known: impl Fn(&Cid) -> Option<&'k DagLinks>,
    ) -> Result<(), StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        if mode == PinMode::Direct {
            if !Self::present_in(blocks, cid)? {
                return Err(StoreError::Missing(*cid));
            }
            return Ok(());
        }
        let mut visited = HashSet::new();
        pins::walk([*cid], &mut visited, |cid| {
            let known = if cid.codec() == RAW {
                Some(DagLinks::default())
            } else {
                known(cid).cloned()
            };
            if let Some(links) = known {
                return match Self::present_in(blocks, cid)? {
                    true => Ok(links),
                    false => Err(StoreError::Missing(*cid)),
                };
            }
            let data = self
                .read_in(blocks, cid)?
                .ok_or(StoreError::Missing(*cid))?;
            Ok(links::dag_links(cid, &data)?)
        })
    }

    /// Removes a pin; returns whether there was one.
    pub fn unpin(&self, cid: &Cid) -> Result<bool, StoreError> {
        let key = normalize(*cid).to_bytes();
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(PINS)?.remove(key.as_slice())?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    pub fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PINS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(pins::decode_pin(key.value(), value.value())?);
        }
        Ok(out)
    }

    pub fn stat(&self) -> Result<RepoStat, StoreError> {
        let txn = self.db.begin_read()?;
        let counters = txn.open_table(COUNTERS)?;
        let counter = |name: &str| -> Result<u64, StoreError> {
            Ok(counters.get(name)?.map(|g| g.value()).unwrap_or(0))
        };
        let blocks = counter(COUNTER_BLOCKS)?;
        let block_bytes = counter(COUNTER_BLOCK_BYTES)?;
        let inline_blocks = counter(COUNTER_INLINE_BLOCKS)?;
        let inline_bytes = counter(COUNTER_INLINE_BYTES)?;
        let mut pack_live_bytes = 0;
        for entry in txn.open_table(PACKS)?.iter()? {
            pack_live_bytes += entry?.1.value().1;
        }
        let (mut recursive_pins, mut direct_pins) = (0, 0);
        for entry in txn.open_table(PINS)?.iter()? {
            let (key, value) = entry?;
            match pins::decode_pin(key.value(), value.value())?.mode {
                PinMode::Recursive => recursive_pins += 1,
                PinMode::Direct => direct_pins += 1,
            }
        }
        drop(counters);
        drop(txn);
        let files = self.packs.list()?;
        let pack_bytes: u64 = files.iter().map(|(_, size)| size).sum();
        let headers = files.len() as u64 * crate::pack::FILE_MAGIC.len() as u64;
        let db_path = self.dir.join(DB_FILE);
        let db_bytes = fs::metadata(&db_path)
            .map_err(|e| io_err(&db_path, e))?
            .len();
        Ok(RepoStat {
            blocks,
            block_bytes,
            inline_blocks,
            inline_bytes,
            packed_blocks: blocks.saturating_sub(inline_blocks),
            packed_bytes: block_bytes.saturating_sub(inline_bytes),
            pack_files: files.len() as u64,
            pack_bytes,
            pack_live_bytes,
            pack_dead_bytes: pack_bytes.saturating_sub(pack_live_bytes + headers),
            db_bytes,
            disk_bytes: db_bytes + pack_bytes,
            pins: recursive_pins + direct_pins,
            recursive_pins,
            direct_pins,
            temp_pins: self.temp_pins.len() as u64,
        })
    }

    /// Sets `key` to `value` in `namespace` (committed durably).
    pub fn index_put(&self, namespace: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(INDEX)?
            .insert(index_key(namespace, key).as_slice(), value)?;
        txn.commit()?;
        Ok(())
    }

    pub fn index_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INDEX)?;
        let value = table
            .get(index_key(namespace, key).as_slice())?
            .map(|g| g.value().to_vec());
        Ok(value)
    }

    pub fn index_remove(&self, namespace: &str, key: &[u8]) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = txn
            .open_table(INDEX)?
            .remove(index_key(namespace, key).as_slice())?
            .is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Every (key, value) of `namespace`, in key order.
    pub fn index_scan(&self, namespace: &str) -> Result<Vec<IndexEntry>, StoreError> {
        let prefix = index_prefix(namespace);
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INDEX)?;
        let mut out = Vec::new();
        for entry in table.range::<&[u8]>(prefix.as_slice()..)? {
            let (key, value) = entry?;
            let Some(key) = key.value().strip_prefix(prefix.as_slice()) else {
                break;
            };
            out.push((key.to_vec(), value.value().to_vec()));
        }
        Ok(out)
    }
}

fn checked(cid: &Cid, data: Bytes) -> Result<Bytes, StoreError> {
    block::verify(cid, &data).map_err(|e| StoreError::Corrupt {
        cid: *cid,
        detail: e.to_string(),
    })?;
    Ok(data)
}

impl BlockRead for Store {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.get(cid)
    }
    fn read_block_unverified(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        self.get_unverified(cid)
    }
}

/// A batched writer. Every block it puts (new or already present) and every
/// CID given to [`Session::temp_pin`] is temp-pinned until the session ends,
/// so GC never collects what an import is about to pin. Small blocks and
/// index entries are buffered (up to ~32 MiB, then committed); large blocks
/// go to the active pack file as they come. [`Session::finish`] commits the
/// rest, the staged index entries and an optional pin in one transaction.
/// Dropped without `finish`: what was already committed stays, unpinned.
///
/// Temp pins cost about 100 bytes of memory per distinct CID the session
/// touched, so use one session per import unit (a store path, a CAR file).
pub struct Session<'a> {
    store: &'a Store,
    /// CIDs this session temp-pinned; `true` once the block is known to be
    /// stored or buffered here (a repeated put is then free).
    held: HashMap<Cid, bool>,
    /// Links of the blocks this session put, so the pin check in
    /// [`Session::finish`] need not read and re-hash them: `None` for a
    /// block without links (most of a big file), absent when unknown.
    known_links: HashMap<Cid, Option<DagLinks>>,
    /// Buffered `blocks_v1` entries not yet committed.
    pending: Vec<(Vec<u8>, Vec<u8>)>,
    pending_bytes: usize,
    /// Packs holding this session's uncommitted records.
    pack_holds: BTreeSet<u32>,
    staged_index: Vec<IndexEntry>,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("held", &self.held.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Session<'_> {
    /// Verifies and stores a block (buffered); returns whether it was new.
    pub fn put(&mut self, cid: Cid, data: &[u8]) -> Result<bool, StoreError> {
        let cid = normalize(cid);
        block::verify(&cid, data)?;
        self.put_verified(cid, data, false)
    }

    /// [`Session::put`] for a block whose `cid` the caller computed from
    /// exactly these `data` bytes, in this process, just now (an importer
    /// naming what it built), or has just checked them against (the Bitswap
    /// client verifies every block it hands out): checks codec, hash function
    /// and size but does not hash `data` again, so a wrong CID would be stored
    /// under that wrong name. Never use it for a CID that arrived with the
    /// bytes unchecked (CAR, `block put`, any file or user input): that is
    /// what [`Session::put`] is for. Debug builds still verify, to catch
    /// misuse in tests.
    pub fn put_hashed(&mut self, cid: Cid, data: &[u8]) -> Result<bool, StoreError> {
        let cid = normalize(cid);
        if is_identity(&cid) {
            block::verify(&cid, data)?;
        } else {
            block::check_cid_and_size(&cid, data)?;
        }
        debug_assert!(
            block::verify(&cid, data).is_ok(),
            "put_hashed: {cid} was not computed from these bytes"
        );
        self.put_verified(cid, data, true)
    }

    /// Stores a block whose bytes are known to match `cid` (normalized);
    /// `remember` keeps its links for the pin check (imports, which pin at
    /// the end; not worth the memory for blocks fetched from peers).
    fn put_verified(&mut self, cid: Cid, data: &[u8], remember: bool) -> Result<bool, StoreError> {
        if is_identity(&cid) || self.held.get(&cid) == Some(&true) {
            return Ok(false);
        }
        if remember {
            self.remember_links(&cid, data);
        }
        let key = cid.to_bytes();
        {
            // Temp pin and presence check under the fence: see crate::gc.
            let _fence = self.store.fence_read();
            if !self.held.contains_key(&cid) {
                self.store.temp_pins.add(cid);
                self.held.insert(cid, false);
            }
            if self.store.contains_key(&key)? {
                self.held.insert(cid, true);
                return Ok(false);
            }
        }
        let value = if data.len() <= self.store.inline_limit {
            encode_inline(data)
        } else {
            encode_packed(self.store.packs.append(&key, data, &mut self.pack_holds)?)
        };
        self.pending_bytes += key.len() + value.len() + ENTRY_OVERHEAD;
        self.pending.push((key, value));
        self.held.insert(cid, true);
        if self.pending_bytes >= SESSION_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(true)
    }

    /// Notes the links of a block this session puts, for the pin check. A
    /// block whose links cannot be read stays unknown: the pin check then
    /// reads it and reports the problem itself.
    fn remember_links(&mut self, cid: &Cid, data: &[u8]) {
        if cid.codec() == RAW {
            return;
        }
        if let Ok(found) = links::dag_links(cid, data) {
            let found = (!found.children.is_empty() || !found.covered.is_empty()).then_some(found);
            self.known_links.insert(*cid, found);
        }
    }

    /// Keeps an existing block (and, for GC, everything it links to) safe
    /// from GC while the session lives. To reuse a block without putting
    /// it: temp-pin first, then check [`Store::has`].
    pub fn temp_pin(&mut self, cid: Cid) {
        let cid = normalize(cid);
        if self.held.contains_key(&cid) {
            return;
        }
        let _fence = self.store.fence_read();
        self.store.temp_pins.add(cid);
        self.held.insert(cid, false);
    }

    /// Commits the buffered blocks now (pack fsync, then redb commit).
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.commit(Vec::new(), None)
    }

    /// Stages an index entry; it is committed by [`Session::finish`].
    pub fn index_put(&mut self, namespace: &str, key: &[u8], value: &[u8]) {
        self.staged_index
            .push((index_key(namespace, key), value.to_vec()));
    }

    /// Commits the remaining blocks, the staged index entries and `pin` in
    /// one transaction, then releases the temp pins. A recursive pin is
    /// checked for completeness first ([`StoreError::Missing`]); on error
    /// nothing of this last transaction is committed.
    pub fn finish(mut self, pin: Option<(Cid, PinMode, Option<String>)>) -> Result<(), StoreError> {
        let pin = match pin {
            Some((cid, mode, name)) => {
                let cid = normalize(cid);
                block::check_cid(&cid)?;
                Some((cid, mode, name))
            }
            None => None,
        };
        let index = std::mem::take(&mut self.staged_index);
        self.commit(index, pin)
    }

    fn commit(
        &mut self,
        index: Vec<IndexEntry>,
        pin: Option<(Cid, PinMode, Option<String>)>,
    ) -> Result<(), StoreError> {
        if self.pending.is_empty() && index.is_empty() && pin.is_none() {
            return Ok(());
        }
        let store = self.store;
        // A pin check and the pin commit must not interleave with a GC
        // mark/sweep: blocks of the DAG that this session did not put are
        // protected only by the pin itself.
        let _fence = pin.as_ref().map(|_| store.fence_read());
        if !self.pack_holds.is_empty() {
            store.packs.sync(&self.pack_holds)?;
        }
        let txn = store.db.begin_write()?;
        let mut tally = Tally::default();
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            for (key, value) in &self.pending {
                insert_block(&mut blocks, &mut tally, key, value)?;
            }
            if !index.is_empty() {
                let mut table = txn.open_table(INDEX)?;
                for (key, value) in &index {
                    table.insert(key.as_slice(), value.as_slice())?;
                }
            }
            if let Some((cid, mode, name)) = &pin {
                let known = &self.known_links;
                store.check_pinnable_knowing(&blocks, cid, *mode, |cid| match known.get(cid) {
                    Some(Some(links)) => Some(links),
                    Some(None) => Some(&NO_LINKS),
                    None => None,
                })?;
                txn.open_table(PINS)?.insert(
                    cid.to_bytes().as_slice(),
                    pins::encode_pin(*mode, name.as_deref()).as_slice(),
                )?;
            }
        }
        tally.apply(&txn)?;
        txn.commit()?;
        self.pending.clear();
        self.pending_bytes = 0;
        store.packs.release(&mut self.pack_holds);
        Ok(())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.store.packs.release(&mut self.pack_holds);
        self.store.temp_pins.release(self.held.keys());
    }
}

impl BlockWrite for Session<'_> {
    fn write_block(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        self.put(cid, data).map(|_| ())
    }
    fn write_block_hashed_here(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        self.put_hashed(cid, data).map(|_| ())
    }
}
