//! `Store::verify`: a read-only audit of a whole repo, for `ipnix repo
//! verify` and the crash tests. It checks what DESIGN.md I-1 and I-4..I-6
//! promise survives any crash:
//!
//! * every block, inline or packed, hashes to its CID (I-1), and every
//!   packed block's index entry lies inside its pack file and lands on a
//!   record header naming the same CID and length (I-4, I-5);
//! * every pin's DAG is complete, walked with the store's own link rules
//!   ([`crate::links::dag_links`], so a path-info covers its large blobs) (I-6);
//! * the running totals (`counters_v1`, `packs_v1`) equal a recount;
//! * index namespaces whose values are CIDs (the caller names them, e.g.
//!   Nix's `nix-path`) hold CIDs; an entry naming a block that is gone is a
//!   *note*, not a problem: unpinning and GC leave such entries behind and
//!   their readers treat them as unknown.
//!
//! Memory stays bounded by the store's shape, not its bytes: blocks are read
//! one at a time in one read transaction (a consistent snapshot, even beside
//! a daemon's writes); the pin walk keeps the set of CIDs it visited, as GC's
//! mark phase does; findings are listed up to [`MAX_LISTED`] and counted
//! beyond. GC is kept from running meanwhile, so no pack file the snapshot
//! names is deleted under the audit.

use crate::block::{self, RAW};
use crate::links;
use crate::pack::{record_len, PackLoc, ReadFailure, ScanEnd, FILE_MAGIC};
use crate::pins::{self, PinMode};
use crate::store::{
    decode_stored, index_prefix, normalize, Store, StoreError, StoredRef, BLOCKS, COUNTERS,
    COUNTER_BLOCKS, COUNTER_BLOCK_BYTES, COUNTER_INLINE_BLOCKS, COUNTER_INLINE_BYTES, INDEX, PACKS,
    PINS,
};
use bytes::Bytes;
use cid::{Cid, Version};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::PoisonError;

/// Findings listed in a report; more are only counted.
pub const MAX_LISTED: usize = 1000;

/// What [`Store::verify`] checks beyond blocks, pins and counters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyConfig {
    /// Index namespaces whose every value is the bytes of a CID.
    pub cid_namespaces: Vec<String>,
}

impl VerifyConfig {
    /// Also checks that every value of index `namespace` is a CID (and notes
    /// the entries naming a block the store no longer has).
    pub fn with_cid_namespace(mut self, namespace: &str) -> Self {
        self.cid_namespaces.push(namespace.to_string());
        self
    }
}

/// What kind of inconsistency a [`Finding`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ProblemKind {
    /// A database entry that does not decode (key not a CID, bad value).
    MalformedEntry,
    /// A block stored under a CID the store never accepts (CIDv0 key,
    /// unknown codec or hash).
    UnstorableCid,
    /// A block's bytes do not hash to its CID (or break the size limit).
    HashMismatch,
    /// A packed block's pack file does not exist.
    PackMissing,
    /// A packed block's record lies (partly) outside its pack file.
    RecordOutOfBounds,
    /// A packed block's offset holds no record header for this CID/length.
    RecordMismatch,
    /// A block could not be read (I/O error).
    Unreadable,
    /// A block under a pin is not in the store.
    PinIncomplete,
    /// A block under a pin whose links cannot be decoded.
    BadLinks,
    /// A value of a CID index namespace is not a CID.
    IndexNotACid,
    /// A running total differs from a recount.
    CounterMismatch,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::MalformedEntry => "malformed-entry",
            ProblemKind::UnstorableCid => "unstorable-cid",
            ProblemKind::HashMismatch => "hash-mismatch",
            ProblemKind::PackMissing => "pack-missing",
            ProblemKind::RecordOutOfBounds => "record-out-of-bounds",
            ProblemKind::RecordMismatch => "record-mismatch",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::PinIncomplete => "pin-incomplete",
            ProblemKind::BadLinks => "bad-links",
            ProblemKind::IndexNotACid => "index-not-a-cid",
            ProblemKind::CounterMismatch => "counter-mismatch",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of harmless irregularity a note is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum NoteKind {
    /// An index entry names a block that is gone (unpinned, then GC).
    StaleIndexEntry,
    /// A pack ends in bytes that are no record (a write torn by a crash, or
    /// damage; beside a running import also records still being written);
    /// no index entry names them.
    TornPackTail,
}

impl NoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoteKind::StaleIndexEntry => "stale-index-entry",
            NoteKind::TornPackTail => "torn-pack-tail",
        }
    }
}

impl fmt::Display for NoteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: its kind, what it is about (a CID, a pack, an index key or a
/// counter name) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding<K> {
    pub kind: K,
    pub subject: String,
    pub detail: String,
}

/// What [`Store::verify`] found. `problems` empty means consistent.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Blocks checked, inline and packed, and their total size.
    pub blocks: u64,
    pub inline_blocks: u64,
    pub packed_blocks: u64,
    pub block_bytes: u64,
    pub inline_bytes: u64,
    pub packed_bytes: u64,
    pub pins: u64,
    /// Blocks kept by a pin (under a recursive one, or directly pinned).
    pub pinned_blocks: u64,
    /// Blocks nothing pins (garbage for the next GC, or not yet pinned).
    pub unpinned_blocks: u64,
    pub pack_files: u64,
    /// Pack bytes no index entry names (reclaimed by GC).
    pub pack_dead_bytes: u64,
    /// Entries of the CID index namespaces checked.
    pub index_entries: u64,
    /// Inconsistencies, the first [`MAX_LISTED`]; `problem_count` counts all.
    pub problems: Vec<Finding<ProblemKind>>,
    pub problem_count: u64,
    /// Harmless irregularities, the first [`MAX_LISTED`]; `note_count` counts all.
    pub notes: Vec<Finding<NoteKind>>,
    pub note_count: u64,
}

impl VerifyReport {
    /// Whether the repo is consistent (notes do not count).
    pub fn is_clean(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        subject: impl fmt::Display,
        detail: impl Into<String>,
    ) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED {
            self.problems.push(Finding {
                kind,
                subject: subject.to_string(),
                detail: detail.into(),
            });
        }
    }

    fn note(&mut self, kind: NoteKind, subject: impl fmt::Display, detail: impl Into<String>) {
        self.note_count += 1;
        if self.notes.len() < MAX_LISTED {
            self.notes.push(Finding {
                kind,
                subject: subject.to_string(),
                detail: detail.into(),
            });
        }
    }
}

/// Per pack: live records and their bytes (headers included), as counted.
type PackTotals = BTreeMap<u32, (u64, u64)>;

/// A block's place, owned (outlives its table guard).
enum Place {
    Inline(Bytes),
    Packed(PackLoc),
}

impl Store {
    /// Audits the whole repo (see the module doc); read-only. Errors only
    /// when the database itself cannot be read: everything else is a
    /// finding in the report.
    pub fn verify(&self, config: &VerifyConfig) -> Result<VerifyReport, StoreError> {
        // GC is the only thing that deletes pack files; keep it out so every
        // pack the snapshot names stays.
        let _no_gc = self
            .gc_running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_read()?;
        // Listed after the snapshot began: every record it names is already
        // durable in these files (I-5), so the sizes cover them.
        let pack_sizes: HashMap<u32, u64> = self.packs.list()?.into_iter().collect();
        let mut report = VerifyReport {
            pack_files: pack_sizes.len() as u64,
            ..VerifyReport::default()
        };
        let blocks = txn.open_table(BLOCKS)?;
        let pack_totals = self.verify_blocks(&blocks, &pack_sizes, &mut report)?;
        self.verify_counters(&txn, &pack_totals, &mut report)?;
        self.verify_pins(&txn, &blocks, &mut report)?;
        self.verify_pack_files(&pack_sizes, &pack_totals, &mut report)?;
        let index = txn.open_table(INDEX)?;
        for namespace in &config.cid_namespaces {
            verify_cid_namespace(&index, &blocks, namespace, &mut report)?;
        }
        Ok(report)
    }

    /// Reads and re-hashes every block; returns the per-pack recount.
    fn verify_blocks<T>(
        &self,
        blocks: &T,
        pack_sizes: &HashMap<u32, u64>,
        report: &mut VerifyReport,
    ) -> Result<PackTotals, StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let mut totals = PackTotals::new();
        for entry in blocks.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            let Ok(cid) = Cid::try_from(key) else {
                report.problem(
                    ProblemKind::MalformedEntry,
                    hex(key),
                    "blocks_v1 key is not a CID",
                );
                continue;
            };
            let place = match decode_stored(value.value()) {
                Ok(StoredRef::Inline(data)) => Place::Inline(Bytes::copy_from_slice(data)),
                Ok(StoredRef::Packed(loc)) => Place::Packed(loc),
                Err(e) => {
                    report.problem(ProblemKind::MalformedEntry, cid, e.to_string());
                    continue;
                }
            };
            report.blocks += 1;
            if cid.version() == Version::V0 {
                report.problem(
                    ProblemKind::UnstorableCid,
                    cid,
                    "stored under a CIDv0 key (the store keys blocks by CIDv1)",
                );
            }
            let data = match place {
                Place::Inline(data) => {
                    report.inline_blocks += 1;
                    report.inline_bytes += data.len() as u64;
                    report.block_bytes += data.len() as u64;
                    data
                }
                Place::Packed(loc) => {
                    report.packed_blocks += 1;
                    report.packed_bytes += u64::from(loc.len);
                    report.block_bytes += u64::from(loc.len);
                    let counted = totals.entry(loc.pack).or_default();
                    counted.0 += 1;
                    counted.1 += record_len(key.len(), loc.len as usize);
                    match self.read_record(&cid, key, loc, pack_sizes) {
                        Ok(data) => data,
                        Err((kind, detail)) => {
                            report.problem(kind, cid, detail);
                            continue;
                        }
                    }
                }
            };
            if let Err(e) = block::verify(&cid, &data) {
                let kind = match e {
                    block::BlockError::UnsupportedCodec(_)
                    | block::BlockError::UnsupportedHash { .. }
                    | block::BlockError::CidTooLong(_) => ProblemKind::UnstorableCid,
                    _ => ProblemKind::HashMismatch,
                };
                report.problem(kind, cid, e.to_string());
            }
        }
        Ok(totals)
    }

    /// The data of a packed block's record, after checking that the record
    /// lies inside its pack and its header names `key` and `loc.len`.
    fn read_record(
        &self,
        cid: &Cid,
        key: &[u8],
        loc: PackLoc,
        pack_sizes: &HashMap<u32, u64>,
    ) -> Result<Bytes, (ProblemKind, String)> {
        let path = self.packs.path(loc.pack);
        let Some(&size) = pack_sizes.get(&loc.pack) else {
            return Err((
                ProblemKind::PackMissing,
                format!("its pack file {} does not exist", path.display()),
            ));
        };
        let end = loc
            .offset
            .checked_add(record_len(key.len(), loc.len as usize));
        if loc.offset < FILE_MAGIC.len() as u64 || end.is_none_or(|end| end > size) {
            return Err((
                ProblemKind::RecordOutOfBounds,
                format!(
                    "its record (pack {}, offset {}, {} data bytes) does not fit in the {size}-byte pack file",
                    loc.pack, loc.offset, loc.len
                ),
            ));
        }
        self.packs.read(loc, key).map_err(|failure| match failure {
            ReadFailure::PackGone => (
                ProblemKind::PackMissing,
                format!("its pack file {} does not exist", path.display()),
            ),
            ReadFailure::Corrupt(detail) => (ProblemKind::RecordMismatch, detail),
            ReadFailure::Io(e) => (
                ProblemKind::Unreadable,
                format!("reading {} for {cid}: {e}", path.display()),
            ),
        })
    }

    /// Compares `counters_v1` and `packs_v1` with the recount.
    fn verify_counters(
        &self,
        txn: &redb::ReadTransaction,
        pack_totals: &PackTotals,
        report: &mut VerifyReport,
    ) -> Result<(), StoreError> {
        let counters = txn.open_table(COUNTERS)?;
        for (name, counted) in [
            (COUNTER_BLOCKS, report.blocks),
            (COUNTER_BLOCK_BYTES, report.block_bytes),
            (COUNTER_INLINE_BLOCKS, report.inline_blocks),
            (COUNTER_INLINE_BYTES, report.inline_bytes),
        ] {
            let stored = counters.get(name)?.map(|g| g.value()).unwrap_or(0);
            if stored != counted {
                report.problem(
                    ProblemKind::CounterMismatch,
                    name,
                    format!("counters_v1 says {stored}, a recount finds {counted}"),
                );
            }
        }
        let mut stored_packs = PackTotals::new();
        for entry in txn.open_table(PACKS)?.iter()? {
            let (id, counts) = entry?;
            stored_packs.insert(id.value(), counts.value());
        }
        let ids: BTreeSet<u32> = stored_packs
            .keys()
            .chain(pack_totals.keys())
            .copied()
            .collect();
        for id in ids {
            let stored = stored_packs.get(&id).copied().unwrap_or((0, 0));
            let counted = pack_totals.get(&id).copied().unwrap_or((0, 0));
            if stored != counted {
                report.problem(
                    ProblemKind::CounterMismatch,
                    format!("pack {id}"),
                    format!(
                        "packs_v1 says {} records of {} bytes, a recount finds {} of {}",
                        stored.0, stored.1, counted.0, counted.1
                    ),
                );
            }
        }
        Ok(())
    }

    /// Walks every pin's DAG (one visited set for all, as GC marks) and
    /// counts what the pins keep.
    fn verify_pins<T>(
        &self,
        txn: &redb::ReadTransaction,
        blocks: &T,
        report: &mut VerifyReport,
    ) -> Result<(), StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let mut visited = HashSet::new();
        let mut kept = 0u64;
        let mut direct = Vec::new();
        for entry in txn.open_table(PINS)?.iter()? {
            let (key, value) = entry?;
            let pin = match pins::decode_pin(key.value(), value.value()) {
                Ok(pin) => pin,
                Err(e) => {
                    report.problem(ProblemKind::MalformedEntry, hex(key.value()), e.to_string());
                    continue;
                }
            };
            report.pins += 1;
            let root = normalize(pin.cid);
            // Direct pins after the walks: marking one visited first would
            // stop a recursive walk that reaches it from looking below it.
            if pin.mode == PinMode::Direct {
                direct.push(pin);
                continue;
            }
            pins::walk([root], &mut visited, |cid| {
                let Some(place) = self.place_in(blocks, cid)? else {
                    report.problem(
                        ProblemKind::PinIncomplete,
                        cid,
                        format!("missing from the DAG of pin {}", pin_label(&pin)),
                    );
                    return Ok(links::DagLinks::default());
                };
                kept += 1;
                if cid.codec() == RAW {
                    return Ok(links::DagLinks::default());
                }
                let data = match place {
                    Place::Inline(data) => data,
                    // Unreadable records were reported by the block pass.
                    Place::Packed(loc) => match self.packs.read(loc, &cid.to_bytes()) {
                        Ok(data) => data,
                        Err(_) => return Ok(links::DagLinks::default()),
                    },
                };
                // A hash mismatch was reported by the block pass; links of
                // wrong bytes would only add noise.
                if block::verify(cid, &data).is_err() {
                    return Ok(links::DagLinks::default());
                }
                Ok(links::dag_links(cid, &data).unwrap_or_else(|e| {
                    report.problem(
                        ProblemKind::BadLinks,
                        cid,
                        format!("under pin {}: {e}", pin_label(&pin)),
                    );
                    links::DagLinks::default()
                }))
            })?;
        }
        for pin in direct {
            let root = normalize(pin.cid);
            if !visited.insert(root) {
                continue;
            }
            match self.place_in(blocks, &root)? {
                Some(_) => kept += 1,
                None => report.problem(
                    ProblemKind::PinIncomplete,
                    root,
                    format!(
                        "directly pinned ({}), but not in the store",
                        pin_label(&pin)
                    ),
                ),
            }
        }
        report.pinned_blocks = kept;
        report.unpinned_blocks = report.blocks.saturating_sub(kept);
        Ok(())
    }

    /// Where `cid` (normalized) is stored; identity CIDs are their own
    /// inline data. `None` when absent (or not storable at all).
    fn place_in<T>(&self, blocks: &T, cid: &Cid) -> Result<Option<Place>, StoreError>
    where
        T: ReadableTable<&'static [u8], &'static [u8]>,
    {
        let cid = normalize(*cid);
        if block::check_cid(&cid).is_err() {
            return Ok(None);
        }
        if cid.hash().code() == block::IDENTITY {
            return Ok(Some(Place::Inline(Bytes::copy_from_slice(
                cid.hash().digest(),
            ))));
        }
        let Some(value) = blocks.get(cid.to_bytes().as_slice())? else {
            return Ok(None);
        };
        Ok(match decode_stored(value.value()) {
            Ok(StoredRef::Inline(data)) => Some(Place::Inline(Bytes::copy_from_slice(data))),
            Ok(StoredRef::Packed(loc)) => Some(Place::Packed(loc)),
            // Reported by the block pass; present all the same.
            Err(_) => Some(Place::Inline(Bytes::new())),
        })
    }

    /// Scans every pack's record headers: a torn tail is a note; the dead
    /// bytes (records nothing names, headers excluded) are counted.
    fn verify_pack_files(
        &self,
        pack_sizes: &HashMap<u32, u64>,
        pack_totals: &PackTotals,
        report: &mut VerifyReport,
    ) -> Result<(), StoreError> {
        let mut ids: Vec<u32> = pack_sizes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let size = pack_sizes[&id];
            let live = pack_totals.get(&id).map_or(0, |&(_, bytes)| bytes);
            report.pack_dead_bytes += size.saturating_sub(live + FILE_MAGIC.len() as u64);
            if let ScanEnd::Damaged { at, reason } = self.packs.scan(id, |_| Ok(()))? {
                report.note(
                    NoteKind::TornPackTail,
                    format!("pack {id}"),
                    format!(
                        "{}: no record from offset {at} of {size} ({reason}); GC reclaims it",
                        self.packs.path(id).display()
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Checks that every value of `namespace` is a CID, noting those that name
/// a block the store does not have.
fn verify_cid_namespace<I, B>(
    index: &I,
    blocks: &B,
    namespace: &str,
    report: &mut VerifyReport,
) -> Result<(), StoreError>
where
    I: ReadableTable<&'static [u8], &'static [u8]>,
    B: ReadableTable<&'static [u8], &'static [u8]>,
{
    let prefix = index_prefix(namespace);
    for entry in index.range::<&[u8]>(prefix.as_slice()..)? {
        let (key, value) = entry?;
        let Some(key) = key.value().strip_prefix(prefix.as_slice()) else {
            break;
        };
        report.index_entries += 1;
        let subject = format!("{namespace}/{}", String::from_utf8_lossy(key));
        let cid = match Cid::try_from(value.value()) {
            Ok(cid) => normalize(cid),
            Err(e) => {
                report.problem(ProblemKind::IndexNotACid, subject, e.to_string());
                continue;
            }
        };
        let present = block::check_cid(&cid).is_ok()
            && (cid.hash().code() == block::IDENTITY
                || blocks.get(cid.to_bytes().as_slice())?.is_some());
        if !present {
            report.note(
                NoteKind::StaleIndexEntry,
                subject,
                format!("names {cid}, which is not in the store (unpinned and collected?)"),
            );
        }
    }
    Ok(())
}

fn pin_label(pin: &pins::Pin) -> String {
    match &pin.name {
        Some(name) => format!("{} ({name})", pin.cid),
        None => pin.cid.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
