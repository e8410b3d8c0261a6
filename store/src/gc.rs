//! Garbage collection: mark from pins and temp pins, sweep unmarked blocks,
//! then reclaim pack space by rewriting mostly-dead packs and deleting packs
//! with nothing live.
//!
//! # Why GC never removes a block an import is about to pin
//!
//! The store has a *GC fence*, a `RwLock<()>`. GC holds it exclusively for
//! mark + sweep. Holding it shared are: [`Session::put`](crate::Session::put)
//! while it registers the temp pin and checks whether the block is present;
//! [`Session::temp_pin`](crate::Session::temp_pin) while it registers; and a
//! pin (by [`Store::pin`] or by `finish` with a pin) for its completeness check
//! and commit. The cases:
//!
//! * *Block already present, deduplicated.* The put registers the temp pin and
//!   sees the block under the fence. A GC either finished its sweep before
//!   (then the put sees the block absent and writes it again), or starts after
//!   (then the temp pin is in its snapshot and marks the block). It cannot
//!   sweep between the check and the registration.
//! * *Block written after the mark phase.* No put can run during mark+sweep.
//!   A block put earlier but committed later (buffered in a session) is not in
//!   the mark snapshot, and the sweep only deletes blocks that were in that
//!   snapshot and unmarked, so it is untouched; it is also temp-pinned.
//! * *Session finishing while GC marks.* GC snapshots the temp pins first and
//!   reads the pins table after; a session commits its pin before releasing
//!   its temp pins. So GC sees the temp pins, or else the pin.
//! * *Blocks of a pinned DAG that the session never put* (linked by CID
//!   only) are protected by nothing but the pin, so the completeness check and
//!   the pin commit run under the fence: GC sweeps entirely before (the check
//!   then fails with `Missing`) or marks after the pin is committed.
//! * Temp pins are walked recursively, so a temp-pinned root keeps its DAG.
//!
//! Pack reclamation runs after the fence is released. It never touches the
//! active pack or a pack a live session holds uncommitted records in (see
//! [`crate::pack`]). It first deletes the chosen packs that nothing names
//! (that needs no disk space, so GC frees space even on a full disk); of
//! the rest it copies live records to the active pack, fsyncs, then
//! moves each index entry only if it still names the old record, and deletes
//! an old pack only once no entry names it. A reader that looked a block up
//! before the move either still holds the old file open (unlinked files stay
//! readable) or finds it gone and looks the block up again.

use crate::block;
use crate::links;
use crate::pack::{PackLoc, ReadFailure, ScanEnd};
use crate::pins::{self, PinMode};
use crate::store::{
    decode_stored, encode_packed, remove_block, Store, StoreError, StoredRef, Tally, BLOCKS, PACKS,
    PINS,
};
use cid::Cid;
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::PoisonError;

/// Packs smaller than the pack target divided by this are merged into the
/// active pack even when fully live (every open starts a new pack, so small
/// ones accumulate).
const SMALL_PACK_DIVISOR: u64 = 16;
/// GC rewrites packs until dead bytes are at most this share of pack bytes.
const DEAD_PERCENT_KEPT: u64 = 10;

/// What one GC run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct GcStats {
    /// Blocks removed from the index, and their total size.
    pub blocks_removed: u64,
    pub bytes_removed: u64,
    /// Live blocks copied out of packs being reclaimed.
    pub blocks_moved: u64,
    /// Packs whose live records were copied elsewhere.
    pub packs_rewritten: u64,
    /// Pack files deleted.
    pub packs_deleted: u64,
    /// Bytes of pack files deleted, minus bytes written to move live blocks.
    pub pack_bytes_reclaimed: u64,
}

impl Store {
    /// Removes every block not reachable from a pin or a live temp pin, then
    /// reclaims pack space. Fails (removing nothing) if a block it must read
    /// to find links is corrupt.
    pub fn gc(&self) -> Result<GcStats, StoreError> {
        let _single = self
            .gc_running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut stats = GcStats::default();
        {
            let _fence = self
                .gc_fence
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let garbage = self.mark()?;
            self.sweep(garbage, &mut stats)?;
        }
        self.reclaim_packs(&mut stats)?;
        Ok(stats)
    }

    /// Keys of the blocks in the current snapshot that nothing keeps.
    fn mark(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        // Temp pins before pins: see the module comment.
        let mut roots = self.temp_pins.snapshot();
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let mut direct = HashSet::new();
        for entry in txn.open_table(PINS)?.iter()? {
            let (key, value) = entry?;
            let pin = pins::decode_pin(key.value(), value.value())?;
            match pin.mode {
                PinMode::Recursive => roots.push(pin.cid),
                PinMode::Direct => {
                    direct.insert(pin.cid);
                }
            }
        }
        let mut reachable = HashSet::new();
        pins::walk(roots, &mut reachable, |cid| {
            if cid.codec() == block::RAW {
                return Ok(links::DagLinks::default());
            }
            let Some(data) = self.read_in(&blocks, cid)? else {
                return Ok(links::DagLinks::default());
            };
            Ok(links::dag_links(cid, &data).unwrap_or_else(|e| {
                // Hash-correct but malformed: it cannot name anything.
                tracing::warn!(%cid, error = %e, "gc: block has unreadable links; treating it as a leaf");
                links::DagLinks::default()
            }))
        })?;
        let mut garbage = Vec::new();
        for entry in blocks.iter()? {
            let (key, _) = entry?;
            let keep = Cid::try_from(key.value())
                .is_ok_and(|cid| reachable.contains(&cid) || direct.contains(&cid));
            if !keep {
                garbage.push(key.value().to_vec());
            }
        }
        Ok(garbage)
    }

    fn sweep(&self, garbage: Vec<Vec<u8>>, stats: &mut GcStats) -> Result<(), StoreError> {
        if garbage.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        let mut tally = Tally::default();
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            for key in &garbage {
                if let Some(size) = remove_block(&mut blocks, &mut tally, key)? {
                    stats.blocks_removed += 1;
                    stats.bytes_removed += size;
                }
            }
        }
        tally.apply(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Rewrites the idle packs [`Store::choose_packs`] picks and deletes them.
    fn reclaim_packs(&self, stats: &mut GcStats) -> Result<(), StoreError> {
        let live: HashMap<u32, (u64, u64)> = {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(PACKS)?;
            let mut live = HashMap::new();
            for entry in table.iter()? {
                let (id, counts) = entry?;
                live.insert(id.value(), counts.value());
            }
            live
        };
        let candidates = self.choose_packs(&live)?;
        if candidates.is_empty() {
            return Ok(());
        }
        // Packs with nothing live go first: deleting them needs no disk
        // space, and copying live records does. On a full disk (when GC is
        // needed most) the copy would fail before anything was freed.
        let (mut deleted_bytes, rest) = self.delete_dead_packs(&candidates, false, stats)?;
        if rest.is_empty() {
            stats.pack_bytes_reclaimed = deleted_bytes;
            return Ok(());
        }
        let mut holds = BTreeSet::new();
        let moved = self.move_live_records(&rest, &mut holds, stats);
        self.packs.release(&mut holds);
        let appended = moved?;
        deleted_bytes += self.delete_dead_packs(&rest, true, stats)?.0;
        stats.pack_bytes_reclaimed = deleted_bytes.saturating_sub(appended);
        Ok(())
    }

    /// Deletes those of `candidates` (idle when chosen, so they never gain
    /// records again) that no index entry names now; returns the bytes
    /// deleted and the candidates kept. `warn_kept` logs the kept ones
    /// (which should have had their records moved).
    fn delete_dead_packs(
        &self,
        candidates: &[(u32, u64)],
        warn_kept: bool,
        stats: &mut GcStats,
    ) -> Result<(u64, Vec<(u32, u64)>), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PACKS)?;
        let mut deleted_bytes = 0u64;
        let mut kept = Vec::new();
        for &(id, size) in candidates {
            if let Some(counts) = table.get(id)? {
                let (records, _) = counts.value();
                if warn_kept {
                    tracing::warn!(
                        pack = id,
                        records,
                        "gc: keeping pack that still holds live records it could not move"
                    );
                }
                kept.push((id, size));
                continue;
            }
            if self.packs.remove(id)? {
                stats.packs_deleted += 1;
                deleted_bytes += size;
            } else {
                kept.push((id, size));
            }
        }
        Ok((deleted_bytes, kept))
    }

    /// Idle packs to reclaim: every pack with nothing live, under half live,
    /// or small; then the emptiest of the rest until the dead bytes left in
    /// idle packs are at most [`DEAD_PERCENT_KEPT`] of their bytes (copying a
    /// mostly live pack costs more than the space it frees). The active pack
    /// is reclaimed once sealed, so its dead bytes are bounded by the target.
    fn choose_packs(&self, live: &HashMap<u32, (u64, u64)>) -> Result<Vec<(u32, u64)>, StoreError> {
        let small = self.packs.target_bytes() / SMALL_PACK_DIVISOR;
        let header = crate::pack::FILE_MAGIC.len() as u64;
        let mut chosen = Vec::new();
        let mut optional = Vec::new();
        let (mut total, mut dead_left) = (0u64, 0u64);
        for (id, size) in self.packs.list()? {
            let live_bytes = live.get(&id).map_or(0, |&(_, bytes)| bytes);
            let dead = size.saturating_sub(live_bytes + header);
            if !self.packs.is_idle(id) {
                continue;
            }
            // Sized as after this run: a reclaimed pack's dead bytes go away
            // and its live bytes move to the active pack.
            total += size;
            if live_bytes == 0 || live_bytes.saturating_mul(2) < size || size < small {
                chosen.push((id, size));
                total -= dead;
            } else {
                dead_left += dead;
                optional.push((live_bytes as f64 / size as f64, id, size, dead));
            }
        }
        optional.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, id, size, dead) in optional {
            if dead_left.saturating_mul(100) <= total.saturating_mul(DEAD_PERCENT_KEPT) {
                break;
            }
            chosen.push((id, size));
            dead_left -= dead;
            total -= dead;
        }
        Ok(chosen)
    }

    /// Copies every live record of `candidates` to the active pack and
    /// repoints the index; returns the bytes appended.
    fn move_live_records(
        &self,
        candidates: &[(u32, u64)],
        holds: &mut BTreeSet<u32>,
        stats: &mut GcStats,
    ) -> Result<u64, StoreError> {
        let mut moves: Vec<(Vec<u8>, PackLoc, PackLoc)> = Vec::new();
        let mut appended = 0u64;
        {
            let txn = self.db.begin_read()?;
            let blocks = txn.open_table(BLOCKS)?;
            for &(id, _) in candidates {
                let mut rewritten = false;
                let end = self.packs.scan(id, |record| {
                    let Some(value) = blocks.get(record.cid.as_slice())? else {
                        return Ok(());
                    };
                    let StoredRef::Packed(loc) = decode_stored(value.value())? else {
                        return Ok(());
                    };
                    if loc != record.loc {
                        return Ok(());
                    }
                    let cid = Cid::try_from(record.cid.as_slice())
                        .map_err(|e| StoreError::Db(format!("blocks_v1 key is not a CID: {e}")))?;
                    let data = match self.packs.read(loc, &record.cid) {
                        Ok(data) if block::verify(&cid, &data).is_ok() => data,
                        Ok(_) | Err(ReadFailure::Corrupt(_)) | Err(ReadFailure::PackGone) => {
                            tracing::warn!(%cid, pack = id, "gc: leaving a corrupt block in its pack");
                            return Ok(());
                        }
                        Err(ReadFailure::Io(source)) => {
                            return Err(StoreError::Io {
                                path: self.packs.path(id).display().to_string(),
                                source,
                            })
                        }
                    };
                    let new = self.packs.append(&record.cid, &data, holds)?;
                    appended += crate::pack::record_len(record.cid.len(), data.len());
                    moves.push((record.cid, loc, new));
                    rewritten = true;
                    Ok(())
                })?;
                if let ScanEnd::Damaged { at, reason } = end {
                    tracing::warn!(pack = id, at, %reason, "gc: pack scan stopped early");
                }
                if rewritten {
                    stats.packs_rewritten += 1;
                }
            }
        }
        if moves.is_empty() {
            return Ok(appended);
        }
        self.packs.sync(holds)?;
        let txn = self.db.begin_write()?;
        let mut tally = Tally::default();
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            for (key, old, new) in &moves {
                let still_there = match blocks.get(key.as_slice())? {
                    Some(value) => {
                        matches!(decode_stored(value.value())?, StoredRef::Packed(loc) if loc == *old)
                    }
                    None => false,
                };
                if !still_there {
                    continue;
                }
                let new_value = encode_packed(*new);
                blocks.insert(key.as_slice(), new_value.as_slice())?;
                tally.count(key.len(), &StoredRef::Packed(*old), -1);
                tally.count(key.len(), &StoredRef::Packed(*new), 1);
                stats.blocks_moved += 1;
            }
        }
        tally.apply(&txn)?;
        txn.commit()?;
        Ok(appended)
    }
}
