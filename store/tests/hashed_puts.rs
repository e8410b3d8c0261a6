//! The importer's fast path: `Session::put_hashed` (no second hash) and the
//! pin check that takes links from what the session put instead of reading
//! blocks back, plus packs sealed and synced in the background in the
//! middle of a session. The fast path must keep every refusal that does not
//! need the hash, and a pin must still find every block of its DAG present.

use anyhow::Result;
use ipnix_store::block::{cid_for, BlockError, DAG_PB, MAX_BLOCK_SIZE, RAW};
use ipnix_store::test_util::pseudo_random;
use ipnix_store::unixfs::{add_file, cat, Params, Profile};
use ipnix_store::{Cid, PinMode, Store, StoreError, StoreOptions};
use std::io::Read;

/// A dag-pb node (no UnixFS data) linking to `children`.
fn pb_node(children: &[Cid]) -> (Cid, Vec<u8>) {
    let mut out = Vec::new();
    for child in children {
        let hash = child.to_bytes();
        let mut link = vec![0x0a, hash.len() as u8];
        link.extend_from_slice(&hash);
        link.extend_from_slice(&[0x12, 0x00]);
        out.push(0x12);
        out.push(link.len() as u8);
        out.extend_from_slice(&link);
    }
    (cid_for(DAG_PB, &out), out)
}

#[test]
fn hashed_puts_store_blocks_and_keep_the_cheap_refusals() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = Store::open(tmp.path())?;
    let small = pseudo_random(1, 100);
    let big = pseudo_random(2, 300_000);
    let (small_cid, big_cid) = (cid_for(RAW, &small), cid_for(RAW, &big));
    let mut session = store.session();
    assert!(session.put_hashed(small_cid, &small)?);
    assert!(session.put_hashed(big_cid, &big)?);
    assert!(!session.put_hashed(big_cid, &big)?, "a repeat is not new");
    let too_big = vec![0u8; MAX_BLOCK_SIZE + 1];
    assert!(matches!(
        session.put_hashed(cid_for(RAW, &too_big), &too_big),
        Err(StoreError::Block(BlockError::TooLarge { .. }))
    ));
    let unknown_codec = Cid::new_v1(0x0129, *small_cid.hash());
    assert!(matches!(
        session.put_hashed(unknown_codec, &small),
        Err(StoreError::Block(BlockError::UnsupportedCodec(0x0129)))
    ));
    session.finish(None)?;
    assert_eq!(store.get(&small_cid)?.as_deref(), Some(&small[..]));
    assert_eq!(store.get(&big_cid)?.as_deref(), Some(&big[..]));
    Ok(())
}

#[test]
fn a_pin_after_hashed_puts_still_needs_every_block() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let store = Store::open(tmp.path())?;
    let leaf = pseudo_random(3, 50_000);
    let leaf_cid = cid_for(RAW, &leaf);
    let (inner_cid, inner) = pb_node(&[leaf_cid]);
    let (root_cid, root) = pb_node(&[inner_cid]);

    // The leaf was never put: the pin is refused, nothing is pinned.
    let mut session = store.session();
    session.put_hashed(inner_cid, &inner)?;
    session.put_hashed(root_cid, &root)?;
    let refused = session.finish(Some((root_cid, PinMode::Recursive, None)));
    assert!(
        matches!(refused, Err(StoreError::Missing(c)) if c == leaf_cid),
        "{refused:?}"
    );
    assert!(store.pins()?.is_empty());

    // Everything put, but an inner block deleted before the pin: the links
    // the session remembered do not stand in for the block itself.
    let mut session = store.session();
    session.put_hashed(leaf_cid, &leaf)?;
    session.put_hashed(inner_cid, &inner)?;
    session.put_hashed(root_cid, &root)?;
    session.flush()?;
    assert!(store.delete(&inner_cid)?);
    let refused = session.finish(Some((root_cid, PinMode::Recursive, None)));
    assert!(
        matches!(refused, Err(StoreError::Missing(c)) if c == inner_cid),
        "{refused:?}"
    );
    assert!(store.pins()?.is_empty());

    // All present: pinned.
    let mut session = store.session();
    session.put_hashed(inner_cid, &inner)?;
    session.put_hashed(root_cid, &root)?;
    session.finish(Some((root_cid, PinMode::Recursive, None)))?;
    assert_eq!(store.pins()?.len(), 1);
    Ok(())
}

#[test]
fn files_spanning_several_packs_import_pin_and_read_back() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // Small packs: the import seals many, syncing each in the background,
    // and syncs the active pack in the background every 25 KiB.
    let options = StoreOptions::default().pack_target_bytes(100 << 10);
    let params = Params {
        chunk_size: 16 << 10,
        max_links: 8,
        ..Profile::V0_2015.params()
    };
    let data = pseudo_random(4, (16 << 10) * 70 + 5);
    let cid = {
        let store = Store::open_with(tmp.path(), &options)?;
        let mut session = store.session();
        let added = add_file(&mut session, &data[..], &params)?;
        session.finish(Some((added.cid, PinMode::Recursive, None)))?;
        assert!(store.stat()?.pack_files > 5);
        added.cid
    };
    let store = Store::open_with(tmp.path(), &options)?;
    let mut back = Vec::new();
    cat(&store, &cid)?.read_to_end(&mut back)?;
    assert!(back == data, "read back differs");
    assert_eq!(store.gc()?.blocks_removed, 0);
    Ok(())
}
