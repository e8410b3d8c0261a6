//! Pack files: the append-only files that hold blocks larger than the inline
//! limit (redb would give each such value a power-of-two page run, so a 256 KiB
//! block would cost 512 KiB there).
//!
//! A pack is `packs/NNNNNNNN.pack`: an 8-byte file magic, then self-describing
//! records, each `RECORD_MAGIC | cid length (u8) | data length (u32 LE) | CID
//! bytes | data`. The redb index maps a CID to (pack, record offset, data
//! length); the header lets a reader check it landed on the right record and
//! lets GC walk a pack without the index. Exactly one pack is *active*
//! (appended to) at a time; it is never rewritten or deleted by GC, and neither
//! is any pack holding records that a live session has not committed yet
//! (those are *held*, see [`Packs::append`]).

use crate::store::StoreError;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// First bytes of every pack file (format version 1).
pub(crate) const FILE_MAGIC: &[u8; 8] = b"IPNXPK01";
const RECORD_MAGIC: &[u8; 4] = b"IPXB";
/// Magic, CID length byte, data length.
const RECORD_FIXED: usize = 4 + 1 + 4;
/// Default size at which a pack is sealed (appending would take it past).
pub(crate) const PACK_TARGET_BYTES: u64 = 256 << 20;
const WRITE_BUFFER_BYTES: usize = 256 << 10;
/// The active pack starts a background sync whenever this much (or a quarter
/// of the pack target, if less) was appended since the last one started.
const BACKGROUND_SYNC_BYTES: u64 = 64 << 20;

/// Bytes a record for a block takes in a pack, header included.
pub(crate) fn record_len(cid_len: usize, data_len: usize) -> u64 {
    (RECORD_FIXED + cid_len + data_len) as u64
}

/// Where a packed block's record starts, and how long its data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PackLoc {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

/// Why a record could not be read.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The pack file does not exist (GC removed it after moving its blocks).
    PackGone,
    /// The bytes on disk are not the record the index promised.
    Corrupt(String),
    Io(io::Error),
}

/// A record header found by [`Packs::scan`].
#[derive(Debug)]
pub(crate) struct RecordHeader {
    pub cid: Vec<u8>,
    pub loc: PackLoc,
}

/// How a scan of a pack ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ScanEnd {
    /// Every byte of the file belongs to a well-formed record.
    Clean,
    /// The file ends inside a record or holds bytes that are not a record
    /// header (a torn write or damage); records after `at` are unknown.
    Damaged { at: u64, reason: String },
}

struct Active {
    id: u32,
    out: BufWriter<File>,
    len: u64,
    /// Length when a background sync of this pack last started.
    sync_started_len: u64,
}

/// A pack being fdatasync'd by a helper thread: a sealed one, or the active
/// one every [`BACKGROUND_SYNC_BYTES`], so that the writer goes on appending
/// meanwhile and the flush before a commit finds little left to write (the
/// disk flush is a good part of an add's wall time). [`Packs::sync`] waits
/// for it.
struct Sealing {
    id: u32,
    done: JoinHandle<Result<(), StoreError>>,
}

struct Writer {
    active: Option<Active>,
    next_id: u32,
    /// Packs holding records not yet committed to the index, with how many
    /// sessions hold each.
    held: HashMap<u32, usize>,
    /// At most one sealed pack whose sync has not been waited for.
    sealing: Option<Sealing>,
    /// Sealed packs whose sync failed, with why: a commit that names records
    /// in one of them must fail. Forgotten when no session holds it.
    failed: HashMap<u32, String>,
}

/// Pack read handles kept open at most (I-16: the cache must not grow with
/// the store; found by the hostile-peer soak, one fd per pack ever read).
const MAX_OPEN_READERS: usize = 64;

/// All pack files of a repo: the single appender and shared read handles.
pub(crate) struct Packs {
    dir: PathBuf,
    target_bytes: u64,
    writer: Mutex<Writer>,
    /// Open read handles, shared so that a reader keeps a pack it already
    /// opened readable even if GC unlinks the file meanwhile.
    readers: Mutex<HashMap<u32, Arc<File>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn parse_pack_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(".pack")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Packs {
    /// Opens (creating) the pack directory. Appends always go to a new pack:
    /// the tail of the last one may hold a torn record from a crash.
    pub(crate) fn open(dir: PathBuf, target_bytes: u64) -> Result<Packs, StoreError> {
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let packs = Packs {
            dir,
            target_bytes,
            writer: Mutex::new(Writer {
                active: None,
                next_id: 1,
                held: HashMap::new(),
                sealing: None,
                failed: HashMap::new(),
            }),
            readers: Mutex::new(HashMap::new()),
        };
        let max = packs.list()?.iter().map(|(id, _)| *id).max().unwrap_or(0);
        lock(&packs.writer).next_id = max + 1;
        Ok(packs)
    }

    /// Size at which a pack is sealed.
    pub(crate) fn target_bytes(&self) -> u64 {
        self.target_bytes
    }

    pub(crate) fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.pack"))
    }

    /// Every pack file with its size, by id.
    pub(crate) fn list(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(&self.dir, e))?;
            let Some(id) = entry.file_name().to_str().and_then(parse_pack_name) else {
                continue;
            };
            match entry.metadata() {
                Ok(meta) => out.push((id, meta.len())),
                // Removed by GC between listing and stat.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&entry.path(), e)),
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Appends a record (buffered; durable only after [`Packs::sync`]) and
    /// marks its pack as held by `holds` until [`Packs::release`].
    pub(crate) fn append(
        &self,
        cid: &[u8],
        data: &[u8],
        holds: &mut BTreeSet<u32>,
    ) -> Result<PackLoc, StoreError> {
        let cid_len = u8::try_from(cid.len())
            .map_err(|_| StoreError::Db(format!("CID of {} bytes cannot be packed", cid.len())))?;
        let data_len = u32::try_from(data.len())
            .map_err(|_| StoreError::Db(format!("block of {} bytes is too large", data.len())))?;
        let rec_len = record_len(cid.len(), data.len());
        let mut writer = lock(&self.writer);
        let full = writer.active.as_ref().is_some_and(|a| {
            a.len > FILE_MAGIC.len() as u64 && a.len + rec_len > self.target_bytes
        });
        if full {
            let sealed = writer.active.take().expect("checked above");
            self.wait_sealing(&mut writer);
            writer.sealing = self.seal_in_background(&mut writer, sealed);
        }
        if writer.active.is_none() {
            let id = writer.next_id;
            writer.next_id += 1;
            writer.active = Some(self.create(id)?);
        }
        let active = writer.active.as_mut().expect("created above");
        let loc = PackLoc {
            pack: active.id,
            offset: active.len,
            len: data_len,
        };
        let mut header = [0u8; RECORD_FIXED];
        header[..4].copy_from_slice(RECORD_MAGIC);
        header[4] = cid_len;
        header[5..].copy_from_slice(&data_len.to_le_bytes());
        let written = active
            .out
            .write_all(&header)
            .and_then(|()| active.out.write_all(cid))
            .and_then(|()| active.out.write_all(data));
        if let Err(e) = written {
            // The pack may now end in a partial record: never append after it.
            let path = self.path(loc.pack);
            writer.active = None;
            return Err(io_err(&path, e));
        }
        active.len += rec_len;
        if holds.insert(loc.pack) {
            *writer.held.entry(loc.pack).or_insert(0) += 1;
        }
        self.sync_active_in_background(&mut writer);
        Ok(loc)
    }

    fn create(&self, id: u32) -> Result<Active, StoreError> {
        let path = self.path(id);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        out.write_all(FILE_MAGIC).map_err(|e| io_err(&path, e))?;
        // The new name must survive a crash before any index entry names it.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.dir, e))?;
        Ok(Active {
            id,
            out,
            len: FILE_MAGIC.len() as u64,
            sync_started_len: 0,
        })
    }

    /// Starts the fdatasync of a sealed pack on a helper thread; if no
    /// thread can be started, the pack counts as failed (never as synced).
    fn seal_in_background(&self, writer: &mut Writer, sealed: Active) -> Option<Sealing> {
        let id = sealed.id;
        let path = self.path(id);
        match spawn_sync(id, move || sync_file(sealed.out, &path)) {
            Ok(done) => Some(Sealing { id, done }),
            Err(e) => {
                writer
                    .failed
                    .insert(id, format!("cannot start its sync thread: {e}"));
                None
            }
        }
    }

    /// Starts a background sync of the active pack once enough was
    /// appended, unless the previous background sync is still running.
    fn sync_active_in_background(&self, writer: &mut Writer) {
        let every = BACKGROUND_SYNC_BYTES.min(self.target_bytes / 4);
        let due = writer
            .active
            .as_ref()
            .is_some_and(|a| a.len - a.sync_started_len >= every);
        if !due
            || writer
                .sealing
                .as_ref()
                .is_some_and(|s| !s.done.is_finished())
        {
            return;
        }
        self.wait_sealing(writer);
        let Some(active) = writer.active.as_mut() else {
            return;
        };
        let id = active.id;
        let path = self.path(id);
        if let Err(e) = active.out.flush() {
            // The pack may now end in a partial record: never append after
            // it, and never commit what was appended to it.
            writer.active = None;
            writer.failed.insert(id, e.to_string());
            return;
        }
        // Without a second handle the next commit simply syncs it all.
        let Ok(file) = active.out.get_ref().try_clone() else {
            return;
        };
        active.sync_started_len = active.len;
        // Not started: the next commit syncs the active pack itself.
        if let Ok(done) = spawn_sync(id, move || file.sync_data().map_err(|e| io_err(&path, e))) {
            writer.sealing = Some(Sealing { id, done });
        }
    }

    /// Waits for the background sync started last, if any, and records a
    /// failure (retiring the pack if it is the active one).
    fn wait_sealing(&self, writer: &mut Writer) {
        let Some(Sealing { id, done }) = writer.sealing.take() else {
            return;
        };
        let failure = match done.join() {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "its sync thread panicked".to_string(),
        };
        if writer.active.as_ref().is_some_and(|a| a.id == id) {
            writer.active = None;
        }
        writer.failed.insert(id, failure);
    }

    /// Makes every record appended so far durable (write + fdatasync),
    /// waiting for the background sync of a sealed pack. Fails if a pack in
    /// `holds` (the caller's uncommitted records) could not be synced.
    pub(crate) fn sync(&self, holds: &BTreeSet<u32>) -> Result<(), StoreError> {
        let mut writer = lock(&self.writer);
        self.wait_sealing(&mut writer);
        if let Some((id, why)) = holds
            .iter()
            .find_map(|id| writer.failed.get(id).map(|why| (*id, why.clone())))
        {
            return Err(io_err(
                &self.path(id),
                io::Error::other(format!("pack was not made durable: {why}")),
            ));
        }
        let Some(active) = writer.active.as_mut() else {
            return Ok(());
        };
        let path = self.path(active.id);
        let result = active
            .out
            .flush()
            .and_then(|()| active.out.get_ref().sync_data());
        if let Err(e) = result {
            writer.active = None;
            return Err(io_err(&path, e));
        }
        Ok(())
    }

    /// Drops the holds a session or GC took with [`Packs::append`].
    pub(crate) fn release(&self, holds: &mut BTreeSet<u32>) {
        if holds.is_empty() {
            return;
        }
        let mut writer = lock(&self.writer);
        for id in std::mem::take(holds) {
            if let Some(count) = writer.held.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    writer.held.remove(&id);
                    writer.failed.remove(&id);
                }
            }
        }
    }

    /// Whether GC may rewrite or delete pack `id` (not active, not held).
    pub(crate) fn is_idle(&self, id: u32) -> bool {
        let writer = lock(&self.writer);
        writer.active.as_ref().map(|a| a.id) != Some(id) && !writer.held.contains_key(&id)
    }

    /// Deletes an idle pack file. Refuses (returns false) if it became busy.
    pub(crate) fn remove(&self, id: u32) -> Result<bool, StoreError> {
        let writer = lock(&self.writer);
        if writer.active.as_ref().map(|a| a.id) == Some(id) || writer.held.contains_key(&id) {
            return Ok(false);
        }
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, e)),
        }
        drop(writer);
        lock(&self.readers).remove(&id);
        Ok(true)
    }

    fn reader(&self, id: u32) -> Result<Arc<File>, ReadFailure> {
        let mut readers = lock(&self.readers);
        if let Some(file) = readers.get(&id) {
            return Ok(Arc::clone(file));
        }
        let file = match File::open(self.path(id)) {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::PackGone),
            Err(e) => return Err(ReadFailure::Io(e)),
        };
        if readers.len() >= MAX_OPEN_READERS {
            // Any one will do: a reader in use keeps its own handle (Arc),
            // and reopening a pack later costs one open(2).
            if let Some(&evicted) = readers.keys().next() {
                readers.remove(&evicted);
            }
        }
        readers.insert(id, Arc::clone(&file));
        Ok(file)
    }

    /// Reads the data of the record at `loc`, checking that the header names
    /// `cid` and the expected length. The caller verifies the data's hash.
    pub(crate) fn read(&self, loc: PackLoc, cid: &[u8]) -> Result<Bytes, ReadFailure> {
        let file = self.reader(loc.pack)?;
        let header_len = RECORD_FIXED + cid.len();
        let mut buf = vec![0u8; header_len + loc.len as usize];
        if let Err(e) = file.read_exact_at(&mut buf, loc.offset) {
            if e.kind() != io::ErrorKind::UnexpectedEof {
                return Err(ReadFailure::Io(e));
            }
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            return Err(ReadFailure::Corrupt(format!(
                "pack {} is truncated: the record at offset {} needs {} bytes but the file has {size}",
                loc.pack,
                loc.offset,
                buf.len()
            )));
        }
        let expected_len = loc.len.to_le_bytes();
        if &buf[..4] != RECORD_MAGIC
            || usize::from(buf[4]) != cid.len()
            || buf[5..RECORD_FIXED] != expected_len
            || &buf[RECORD_FIXED..header_len] != cid
        {
            return Err(ReadFailure::Corrupt(format!(
                "pack {} has no record header for this block at offset {}",
                loc.pack, loc.offset
            )));
        }
        Ok(Bytes::from(buf).slice(header_len..))
    }

    /// Walks the record headers of pack `id` (not reading block data),
    /// calling `each` for every well-formed record in file order.
    pub(crate) fn scan(
        &self,
        id: u32,
        mut each: impl FnMut(RecordHeader) -> Result<(), StoreError>,
    ) -> Result<ScanEnd, StoreError> {
        let path = self.path(id);
        let file = match self.reader(id) {
            Ok(file) => file,
            Err(ReadFailure::PackGone) => {
                return Ok(ScanEnd::Damaged {
                    at: 0,
                    reason: "the pack file is gone".into(),
                })
            }
            Err(ReadFailure::Io(e)) => return Err(io_err(&path, e)),
            Err(ReadFailure::Corrupt(reason)) => return Ok(ScanEnd::Damaged { at: 0, reason }),
        };
        let size = file.metadata().map_err(|e| io_err(&path, e))?.len();
        let mut magic = [0u8; 8];
        if size < magic.len() as u64 {
            return Ok(ScanEnd::Damaged {
                at: 0,
                reason: "shorter than the file header".into(),
            });
        }
        file.read_exact_at(&mut magic, 0)
            .map_err(|e| io_err(&path, e))?;
        if &magic != FILE_MAGIC {
            return Ok(ScanEnd::Damaged {
                at: 0,
                reason: "not a pack file (bad magic)".into(),
            });
        }
        let mut offset = FILE_MAGIC.len() as u64;
        let mut header = [0u8; RECORD_FIXED + 255];
        while offset < size {
            let damaged = |reason: &str| ScanEnd::Damaged {
                at: offset,
                reason: reason.to_string(),
            };
            if size - offset < RECORD_FIXED as u64 {
                return Ok(damaged("truncated record header"));
            }
            file.read_exact_at(&mut header[..RECORD_FIXED], offset)
                .map_err(|e| io_err(&path, e))?;
            if &header[..4] != RECORD_MAGIC {
                return Ok(damaged("bad record magic"));
            }
            let cid_len = usize::from(header[4]);
            let data_len = u32::from_le_bytes(
                header[5..RECORD_FIXED]
                    .try_into()
                    .expect("slice of four bytes"),
            );
            let rec_len = record_len(cid_len, data_len as usize);
            if cid_len == 0
                || data_len as usize > crate::block::MAX_BLOCK_SIZE
                || size - offset < rec_len
            {
                return Ok(damaged("truncated or malformed record"));
            }
            let cid_bytes = &mut header[RECORD_FIXED..RECORD_FIXED + cid_len];
            file.read_exact_at(cid_bytes, offset + RECORD_FIXED as u64)
                .map_err(|e| io_err(&path, e))?;
            each(RecordHeader {
                cid: cid_bytes.to_vec(),
                loc: PackLoc {
                    pack: id,
                    offset,
                    len: data_len,
                },
            })?;
            offset += rec_len;
        }
        Ok(ScanEnd::Clean)
    }
}

/// Runs one pack sync on its own thread.
fn spawn_sync(
    id: u32,
    sync: impl FnOnce() -> Result<(), StoreError> + Send + 'static,
) -> io::Result<JoinHandle<Result<(), StoreError>>> {
    std::thread::Builder::new()
        .name(format!("ipnix-pack-sync-{id}"))
        .spawn(sync)
}

fn sync_file(mut out: BufWriter<File>, path: &Path) -> Result<(), StoreError> {
    out.flush()
        .and_then(|()| out.get_ref().sync_data())
        .map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_scan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let packs = Packs::open(dir.path().join("packs"), PACK_TARGET_BYTES).expect("open");
        let mut holds = BTreeSet::new();
        let a = packs.append(b"cid-a", &[1u8; 100], &mut holds).expect("a");
        let b = packs.append(b"cid-bb", &[2u8; 50], &mut holds).expect("b");
        assert_eq!(holds.len(), 1);
        assert!(!packs.is_idle(a.pack));
        packs.sync(&holds).expect("sync");
        assert_eq!(&packs.read(a, b"cid-a").expect("read a")[..], &[1u8; 100]);
        assert_eq!(&packs.read(b, b"cid-bb").expect("read b")[..], &[2u8; 50]);
        assert!(matches!(
            packs.read(a, b"cid-x"),
            Err(ReadFailure::Corrupt(_))
        ));
        let mut seen = Vec::new();
        let end = packs
            .scan(a.pack, |h| {
                seen.push((h.cid, h.loc));
                Ok(())
            })
            .expect("scan");
        assert_eq!(end, ScanEnd::Clean);
        assert_eq!(seen, vec![(b"cid-a".to_vec(), a), (b"cid-bb".to_vec(), b)]);
        packs.release(&mut holds);
        assert!(holds.is_empty());
    }

    #[test]
    fn open_read_handles_are_bounded_i16() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Tiny packs: every record seals its pack and starts a new one.
        let packs = Packs::open(dir.path().join("packs"), 64).expect("open");
        let mut locs = Vec::new();
        for i in 0..(MAX_OPEN_READERS * 2) {
            let mut holds = BTreeSet::new();
            let cid = format!("cid-{i}");
            let loc = packs
                .append(cid.as_bytes(), &[i as u8; 100], &mut holds)
                .expect("append");
            packs.sync(&holds).expect("sync");
            packs.release(&mut holds);
            locs.push((cid, loc));
        }
        let last = locs.last().expect("records").1.pack;
        assert!(last as usize > MAX_OPEN_READERS, "only {last} packs");
        for (cid, loc) in &locs {
            packs.read(*loc, cid.as_bytes()).expect("read");
        }
        assert!(lock(&packs.readers).len() <= MAX_OPEN_READERS);
        let (cid, loc) = &locs[0];
        assert_eq!(
            &packs.read(*loc, cid.as_bytes()).expect("reopen")[..],
            &[0u8; 100]
        );
    }

    #[test]
    fn pack_names_are_eight_digits() {
        assert_eq!(parse_pack_name("00000012.pack"), Some(12));
        assert_eq!(parse_pack_name("12.pack"), None);
        assert_eq!(parse_pack_name("0000001a.pack"), None);
        assert_eq!(parse_pack_name("00000012.pack.tmp"), None);
    }
}
