//! Damaged pack files: a flipped byte, a damaged record header, a truncated
//! or missing pack. Reads report `StoreError::Corrupt` (never wrong bytes),
//! the rest of the store keeps working, and GC refuses to guess links of a
//! pinned block it cannot read. `get_unverified` (DESIGN.md I-21) skips only
//! the hash: a damaged header, truncation or missing pack is still an error.

use anyhow::Result;
use ipld_core::ipld::Ipld;
use ipnix_store::block::{cid_for, DAG_CBOR, RAW};
use ipnix_store::test_util::{flip_byte, packs};
use ipnix_store::{Cid, PinMode, Store, StoreError};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

fn raw(seed: u8, len: usize) -> (Cid, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    (cid_for(RAW, &data), data)
}

fn expect_corrupt(store: &Store, cid: &Cid, needle: &str) {
    match store.get(cid) {
        Err(err @ StoreError::Corrupt { .. }) => {
            let message = err.to_string();
            assert!(message.contains(&cid.to_string()), "{message}");
            assert!(
                message.contains(needle),
                "{message} should mention {needle:?}"
            );
        }
        other => panic!("expected a Corrupt error for {cid}, got {other:?}"),
    }
}

/// One store session per pack: every open starts a new pack file.
fn put_in_own_pack(dir: &Path, blocks: &[&(Cid, Vec<u8>)]) -> Result<PathBuf> {
    let before = packs(dir).unwrap_or_default();
    let store = Store::open(dir)?;
    for (cid, data) in blocks {
        store.put(cid, data)?;
    }
    drop(store);
    let after = packs(dir)?;
    let new: Vec<_> = after.into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 1);
    Ok(new[0].clone())
}

#[test]
fn a_flipped_data_byte_is_reported_and_the_rest_still_works() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let victim = raw(1, 100_000);
    let neighbour = raw(2, 50_000);
    let small = raw(3, 500);
    let pack = put_in_own_pack(dir.path(), &[&victim, &neighbour, &small])?;
    // The victim's record is first: file magic, record header, CID, data.
    flip_byte(&pack, 8 + 9 + victim.0.encoded_len() as u64 + 4000)?;

    let store = Store::open(dir.path())?;
    expect_corrupt(&store, &victim.0, "do not match");
    assert!(store.has(&victim.0)?, "the index entry is still there");
    assert_eq!(
        store.get(&neighbour.0)?.as_deref(),
        Some(neighbour.1.as_slice())
    );
    assert_eq!(store.get(&small.0)?.as_deref(), Some(small.1.as_slice()));

    // New writes work, and deleting the damaged block lets it be stored again.
    let fresh = raw(4, 70_000);
    assert!(store.put(&fresh.0, &fresh.1)?);
    assert!(store.delete(&victim.0)?);
    assert!(store.put(&victim.0, &victim.1)?);
    assert_eq!(store.get(&victim.0)?.as_deref(), Some(victim.1.as_slice()));
    Ok(())
}

#[test]
fn an_unverified_read_returns_the_stored_bytes_without_hashing_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let victim = raw(9, 100_000);
    let intact = raw(10, 300);
    let pack = put_in_own_pack(dir.path(), &[&victim, &intact])?;
    let store = Store::open(dir.path())?;
    assert_eq!(
        store.get_unverified(&victim.0)?.as_deref(),
        Some(victim.1.as_slice())
    );
    assert_eq!(store.get_unverified(&raw(11, 10).0)?, None);
    drop(store);

    flip_byte(&pack, 8 + 9 + victim.0.encoded_len() as u64 + 4000)?;
    let store = Store::open(dir.path())?;
    expect_corrupt(&store, &victim.0, "do not match");
    // What the caller's own check (a NAR hash, the receiving peer) must catch.
    let unchecked = store.get_unverified(&victim.0)?.expect("still indexed");
    assert_eq!(unchecked.len(), victim.1.len());
    assert_ne!(unchecked.as_ref(), victim.1.as_slice());
    assert_eq!(
        store.get_unverified(&intact.0)?.as_deref(),
        Some(intact.1.as_slice())
    );
    Ok(())
}

#[test]
fn a_damaged_record_header_is_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let victim = raw(5, 40_000);
    let pack = put_in_own_pack(dir.path(), &[&victim])?;
    flip_byte(&pack, 8)?; // record magic
    let store = Store::open(dir.path())?;
    expect_corrupt(&store, &victim.0, "no record header");
    assert!(matches!(
        store.get_unverified(&victim.0),
        Err(StoreError::Corrupt { .. })
    ));
    Ok(())
}

#[test]
fn a_truncated_pack_is_reported_and_earlier_records_still_read() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first = raw(6, 30_000);
    let second = raw(7, 60_000);
    let pack = put_in_own_pack(dir.path(), &[&first, &second])?;
    let len = std::fs::metadata(&pack)?.len();
    OpenOptions::new()
        .write(true)
        .open(&pack)?
        .set_len(len - 1000)?;
    let store = Store::open(dir.path())?;
    assert_eq!(store.get(&first.0)?.as_deref(), Some(first.1.as_slice()));
    expect_corrupt(&store, &second.0, "truncated");
    // GC (nothing pinned) drops both index entries and the damaged pack.
    let stats = store.gc()?;
    assert_eq!(stats.blocks_removed, 2);
    assert_eq!(store.stat()?.pack_files, 0);
    Ok(())
}

#[test]
fn a_missing_pack_is_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let victim = raw(8, 20_000);
    let pack = put_in_own_pack(dir.path(), &[&victim])?;
    std::fs::remove_file(&pack)?;
    let store = Store::open(dir.path())?;
    expect_corrupt(&store, &victim.0, "is missing");
    assert!(matches!(
        store.get_unverified(&victim.0),
        Err(StoreError::Corrupt { .. })
    ));
    Ok(())
}

#[test]
fn gc_refuses_to_guess_the_links_of_a_corrupt_pinned_block() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let leaf = raw(9, 100);
    // A dag-cbor node large enough to be packed.
    let mut map = BTreeMap::new();
    map.insert("leaf".to_string(), Ipld::Link(leaf.0));
    map.insert("pad".to_string(), Ipld::Bytes(vec![7u8; 30_000]));
    let node_data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map))?;
    let node = (cid_for(DAG_CBOR, &node_data), node_data);
    let pack = {
        let store = Store::open(dir.path())?;
        store.put(&leaf.0, &leaf.1)?;
        store.put(&node.0, &node.1)?;
        store.pin(&node.0, PinMode::Recursive, None)?;
        drop(store);
        packs(dir.path())?.pop().expect("one pack")
    };
    let size = std::fs::metadata(&pack)?.len();
    flip_byte(&pack, size - 10)?;
    let store = Store::open(dir.path())?;
    let err = store.gc().expect_err("cannot mark through a corrupt block");
    assert!(
        matches!(err, StoreError::Corrupt { cid, .. } if cid == node.0),
        "{err}"
    );
    assert!(store.has(&leaf.0)?, "nothing was swept");
    assert_eq!(store.get(&leaf.0)?.as_deref(), Some(leaf.1.as_slice()));
    Ok(())
}
