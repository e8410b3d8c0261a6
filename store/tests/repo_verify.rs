//! `Store::verify` (`ipnix repo verify`): clean on a healthy repo, and each
//! kind of damage it exists to find is reported by kind and CID: a flipped
//! byte, a damaged record header, a truncated or missing pack, a block gone
//! from a pinned DAG, a wrong running total, a malformed CID index entry.
//! A torn pack tail and a stale index entry are notes, not problems.

use anyhow::Result;
use ipld_core::ipld::Ipld;
use ipnix_store::block::{cid_for, DAG_CBOR, RAW};
use ipnix_store::test_util::{flip_byte, packs, pseudo_random};
use ipnix_store::verify::{NoteKind, ProblemKind};
use ipnix_store::{Cid, PinMode, Store, VerifyConfig, VerifyReport};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

const NAMESPACE: &str = "test-cids";

fn raw(seed: u64, len: usize) -> (Cid, Vec<u8>) {
    let data = pseudo_random(seed, len);
    (cid_for(RAW, &data), data)
}

fn node(links: &[Cid]) -> (Cid, Vec<u8>) {
    let mut map = BTreeMap::new();
    map.insert(
        "links".to_string(),
        Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encodable");
    (cid_for(DAG_CBOR, &data), data)
}

/// What [`populate`] stored.
struct Populated {
    root: Cid,
    /// The packed leaf and its bytes.
    big: (Cid, Vec<u8>),
    /// The inline leaf.
    small: Cid,
    /// A block nothing pins.
    loose: Cid,
}

/// A pinned DAG of a packed block, an inline block and a small node; one
/// loose block; an index entry naming the root.
fn populate(dir: &Path) -> Result<Populated> {
    let store = Store::open(dir)?;
    let big = raw(1, 100_000);
    let small = raw(2, 100);
    let (root, root_data) = node(&[big.0, small.0]);
    let mut session = store.session();
    session.put(big.0, &big.1)?;
    session.put(small.0, &small.1)?;
    session.put(root, &root_data)?;
    session.index_put(NAMESPACE, b"root", &root.to_bytes());
    session.finish(Some((root, PinMode::Recursive, Some("test".into()))))?;
    let loose = raw(3, 5_000);
    store.put(&loose.0, &loose.1)?;
    Ok(Populated {
        root,
        big,
        small: small.0,
        loose: loose.0,
    })
}

fn verify(dir: &Path) -> Result<VerifyReport> {
    let store = Store::open(dir)?;
    Ok(store.verify(&VerifyConfig::default().with_cid_namespace(NAMESPACE))?)
}

fn has_problem(report: &VerifyReport, kind: ProblemKind, subject: &str) -> bool {
    report
        .problems
        .iter()
        .any(|p| p.kind == kind && p.subject == subject)
}

#[test]
fn a_healthy_repo_is_clean_and_counted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    populate(dir.path())?;
    let report = verify(dir.path())?;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blocks, 4);
    assert_eq!((report.packed_blocks, report.inline_blocks), (2, 2));
    assert_eq!(report.pins, 1);
    assert_eq!((report.pinned_blocks, report.unpinned_blocks), (3, 1));
    assert_eq!(report.index_entries, 1);
    assert_eq!(report.note_count, 0);
    // GC removes the loose block and the report follows.
    Store::open(dir.path())?.gc()?;
    let report = verify(dir.path())?;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.blocks, report.unpinned_blocks), (3, 0));
    Ok(())
}

#[test]
fn a_flipped_data_byte_is_a_hash_mismatch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Populated { big, .. } = populate(dir.path())?;
    let pack = &packs(dir.path())?[0];
    // File magic, record header (9 bytes), CID, then the data.
    flip_byte(pack, 8 + 9 + big.0.encoded_len() as u64 + 500)?;
    let report = verify(dir.path())?;
    assert_eq!(report.problem_count, 1, "{report:?}");
    assert!(has_problem(
        &report,
        ProblemKind::HashMismatch,
        &big.0.to_string()
    ));
    Ok(())
}

#[test]
fn a_damaged_record_header_is_a_record_mismatch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Populated { big, .. } = populate(dir.path())?;
    let pack = &packs(dir.path())?[0];
    flip_byte(pack, 8 + 9 + 2)?; // inside the record's CID
    let report = verify(dir.path())?;
    assert!(
        has_problem(&report, ProblemKind::RecordMismatch, &big.0.to_string()),
        "{report:?}"
    );
    Ok(())
}

#[test]
fn a_truncated_pack_is_out_of_bounds_and_a_missing_one_is_missing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Populated {
        root, big, loose, ..
    } = populate(dir.path())?;
    let all = packs(dir.path())?;
    let pack = &all[0];
    let len = std::fs::metadata(pack)?.len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(pack)?
        .set_len(len - 10)?;
    let report = verify(dir.path())?;
    // The last record in the pack is cut: the loose block (or the big one,
    // whichever was written last) is out of bounds.
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::RecordOutOfBounds
                && (p.subject == loose.to_string() || p.subject == big.0.to_string())),
        "{report:?}"
    );
    for pack in &all {
        std::fs::remove_file(pack)?;
    }
    let report = verify(dir.path())?;
    assert!(
        has_problem(&report, ProblemKind::PackMissing, &big.0.to_string()),
        "{report:?}"
    );
    assert!(!has_problem(
        &report,
        ProblemKind::PinIncomplete,
        &root.to_string()
    ));
    Ok(())
}

#[test]
fn a_block_gone_from_a_pinned_dag_is_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Populated { small, .. } = populate(dir.path())?;
    // Deleting a block inside a pinned DAG is allowed (to fetch it again).
    assert!(Store::open(dir.path())?.delete(&small)?);
    let report = verify(dir.path())?;
    assert_eq!(report.problem_count, 1, "{report:?}");
    assert!(has_problem(
        &report,
        ProblemKind::PinIncomplete,
        &small.to_string()
    ));
    assert!(report.problems[0].detail.contains("test"), "names the pin");
    Ok(())
}

#[test]
fn a_wrong_running_total_is_a_counter_mismatch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    populate(dir.path())?;
    {
        let db = redb::Database::open(dir.path().join("index.redb"))?;
        let txn = db.begin_write()?;
        {
            let counters: redb::TableDefinition<&str, u64> =
                redb::TableDefinition::new("counters_v1");
            let mut table = txn.open_table(counters)?;
            table.insert("blocks", 99)?;
            let packs: redb::TableDefinition<u32, (u64, u64)> =
                redb::TableDefinition::new("packs_v1");
            txn.open_table(packs)?.insert(77, (1, 10))?;
        }
        txn.commit()?;
    }
    let report = verify(dir.path())?;
    assert!(
        has_problem(&report, ProblemKind::CounterMismatch, "blocks"),
        "{report:?}"
    );
    assert!(has_problem(
        &report,
        ProblemKind::CounterMismatch,
        "pack 77"
    ));
    assert_eq!(report.problem_count, 2);
    Ok(())
}

#[test]
fn cid_index_entries_must_be_cids_and_stale_ones_are_notes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let Populated { loose, .. } = populate(dir.path())?;
    {
        let store = Store::open(dir.path())?;
        store.index_put(NAMESPACE, b"garbage", b"not a cid")?;
        store.index_put(NAMESPACE, b"loose", &loose.to_bytes())?;
        store.index_put("other", b"x", b"not checked")?;
        store.gc()?; // collects the loose block: its entry goes stale
    }
    let report = verify(dir.path())?;
    assert_eq!(report.index_entries, 3);
    assert_eq!(report.problem_count, 1, "{report:?}");
    assert!(has_problem(
        &report,
        ProblemKind::IndexNotACid,
        "test-cids/garbage"
    ));
    assert_eq!(report.note_count, 1);
    assert_eq!(report.notes[0].kind, NoteKind::StaleIndexEntry);
    assert_eq!(report.notes[0].subject, "test-cids/loose");
    Ok(())
}

#[test]
fn a_torn_pack_tail_is_only_a_note() -> Result<()> {
    let dir = tempfile::tempdir()?;
    populate(dir.path())?;
    let pack = &packs(dir.path())?[0];
    // What a crash mid-append leaves: the start of a record, never committed.
    std::fs::OpenOptions::new()
        .append(true)
        .open(pack)?
        .write_all(b"IPXB\x24\x00\x10")?;
    let report = verify(dir.path())?;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.note_count, 1);
    assert_eq!(report.notes[0].kind, NoteKind::TornPackTail);
    assert_eq!(report.pack_dead_bytes, 7);
    Ok(())
}
