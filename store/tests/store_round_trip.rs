//! Round trips through the redb store: inline and packed blocks around the
//! inline limit (256 B), the 2 MiB limit, refusals, reopen, delete, pins, the
//! generic index, sessions, and readers running during a write session.

use anyhow::Result;
use ipld_core::ipld::Ipld;
use ipnix_store::block::{cid_for, BlockError, DAG_CBOR, DAG_PB, IDENTITY, MAX_BLOCK_SIZE, RAW};
use ipnix_store::test_util::pseudo_random;
use ipnix_store::{Cid, PinMode, Store, StoreError, StoreOptions, INLINE_LIMIT};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn raw(seed: u64, len: usize) -> (Cid, Vec<u8>) {
    let data = pseudo_random(seed, len);
    (cid_for(RAW, &data), data)
}

fn cbor_node(links: &[Cid], tag: u64) -> (Cid, Vec<u8>) {
    let mut map = BTreeMap::new();
    map.insert(
        "links".to_string(),
        Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    map.insert("tag".to_string(), Ipld::Integer(tag.into()));
    let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encode");
    (cid_for(DAG_CBOR, &data), data)
}

#[test]
fn blocks_round_trip_inline_packed_and_at_the_boundary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let sizes = [
        0,
        1,
        100,
        INLINE_LIMIT - 1,
        256,
        257,
        1000,
        16384,
        100_000,
        MAX_BLOCK_SIZE,
    ];
    assert_eq!(INLINE_LIMIT, 256);
    let blocks: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| raw(i as u64, len))
        .collect();
    for (cid, data) in &blocks {
        assert!(
            store.put(cid, data)?,
            "first put of {} bytes is new",
            data.len()
        );
        assert!(!store.put(cid, data)?, "second put is a duplicate");
    }
    for (cid, data) in &blocks {
        assert_eq!(store.get(cid)?.as_deref(), Some(data.as_slice()));
        assert!(store.has(cid)?);
        assert_eq!(store.block_size(cid)?, Some(data.len() as u64));
    }
    let stat = store.stat()?;
    assert_eq!(stat.blocks, sizes.len() as u64);
    assert_eq!(
        stat.inline_blocks, 5,
        "0, 1, 100, 255 and 256 bytes are inline"
    );
    assert_eq!(stat.packed_blocks, 5, "257 bytes and up are packed");
    assert_eq!(
        stat.block_bytes,
        sizes.iter().map(|&s| s as u64).sum::<u64>()
    );
    assert_eq!(stat.pack_files, 1);
    assert_eq!(stat.pack_dead_bytes, 0);
    assert_eq!(stat.disk_bytes, stat.db_bytes + stat.pack_bytes);

    let mut cids = store.cids()?;
    cids.sort();
    let mut expected: Vec<_> = blocks.iter().map(|(c, _)| *c).collect();
    expected.sort();
    assert_eq!(cids, expected);

    let (absent, _) = raw(999, 10);
    assert_eq!(store.get(&absent)?, None);
    assert!(!store.has(&absent)?);
    assert_eq!(store.block_size(&absent)?, None);
    Ok(())
}

#[test]
fn oversized_and_mismatched_blocks_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let (big_cid, big) = raw(1, MAX_BLOCK_SIZE + 1);
    let err = store.put(&big_cid, &big).expect_err("over the limit");
    assert!(
        matches!(err, StoreError::Block(BlockError::TooLarge { .. })),
        "{err}"
    );
    let (cid, _) = raw(2, 100);
    let other = pseudo_random(3, 100);
    let err = store.put(&cid, &other).expect_err("wrong bytes");
    assert!(
        matches!(err, StoreError::Block(BlockError::HashMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("do not match"), "{err}");
    let (packed_cid, _) = raw(4, 50_000);
    let err = store
        .put(&packed_cid, &pseudo_random(5, 50_000))
        .expect_err("wrong packed bytes");
    assert!(matches!(
        err,
        StoreError::Block(BlockError::HashMismatch { .. })
    ));
    assert!(!store.has(&cid)? && !store.has(&big_cid)? && !store.has(&packed_cid)?);
    assert_eq!(store.stat()?.blocks, 0);
    assert_eq!(store.stat()?.pack_files, 0, "nothing reached a pack");
    Ok(())
}

#[test]
fn cid_versions_and_identity_cids() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let node = ipld_dagpb::PbNode {
        links: vec![],
        data: Some(pseudo_random(7, 40).into()),
    }
    .into_bytes();
    let v1 = cid_for(DAG_PB, &node);
    let v0 = Cid::new_v0(*v1.hash())?;
    assert!(store.put(&v0, &node)?);
    assert_eq!(store.get(&v1)?.as_deref(), Some(node.as_slice()));
    assert!(!store.put(&v1, &node)?, "v0 and v1 name the same block");
    assert_eq!(store.cids()?, vec![v1]);

    let identity = Cid::new_v1(RAW, multihash::Multihash::wrap(IDENTITY, b"tiny")?);
    assert!(store.has(&identity)?);
    assert_eq!(store.get(&identity)?.as_deref(), Some(&b"tiny"[..]));
    assert!(
        !store.put(&identity, b"tiny")?,
        "identity blocks are never stored"
    );
    Ok(())
}

#[test]
fn reopen_persists_blocks_pins_and_indexes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let leaves: Vec<_> = (0..6).map(|i| raw(i, 10_000 * i as usize + 10)).collect();
    let (root, root_data) = cbor_node(&leaves.iter().map(|l| l.0).collect::<Vec<_>>(), 1);
    let before = {
        let store = Store::open(dir.path())?;
        let mut session = store.session();
        for (cid, data) in &leaves {
            session.put(*cid, data)?;
        }
        session.put(root, &root_data)?;
        session.index_put("paths", b"abc", b"info-1");
        session.finish(Some((root, PinMode::Recursive, Some("my root".into()))))?;
        store.index_put("sources", b"sha256-x", b"cid-x")?;
        store.stat()?
    };
    let store = Store::open(dir.path())?;
    for (cid, data) in leaves.iter().chain([&(root, root_data.clone())]) {
        assert_eq!(store.get(cid)?.as_deref(), Some(data.as_slice()));
    }
    let pins = store.pins()?;
    assert_eq!(pins.len(), 1);
    assert_eq!(pins[0].cid, root);
    assert_eq!(pins[0].mode, PinMode::Recursive);
    assert_eq!(pins[0].name.as_deref(), Some("my root"));
    assert_eq!(
        store.index_get("paths", b"abc")?.as_deref(),
        Some(&b"info-1"[..])
    );
    assert_eq!(
        store.index_get("sources", b"sha256-x")?.as_deref(),
        Some(&b"cid-x"[..])
    );
    let after = store.stat()?;
    assert_eq!(after.blocks, before.blocks);
    assert_eq!(after.block_bytes, before.block_bytes);
    assert_eq!(after.pack_live_bytes, before.pack_live_bytes);
    Ok(())
}

#[test]
fn a_second_opener_is_refused_while_the_repo_is_in_use() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let err = Store::open(dir.path()).expect_err("already open");
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("is in use by another ipnix process (a running daemon?)"),
        "{message}"
    );
    drop(store);
    Store::open(dir.path())?;
    Ok(())
}

#[test]
fn delete_removes_blocks_but_not_pinned_roots() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let (small, small_data) = raw(1, 100);
    let (large, large_data) = raw(2, 100_000);
    store.put(&small, &small_data)?;
    store.put(&large, &large_data)?;
    assert!(store.delete(&large)?);
    assert!(!store.delete(&large)?);
    assert_eq!(store.get(&large)?, None);
    let stat = store.stat()?;
    assert_eq!((stat.blocks, stat.packed_blocks), (1, 0));
    assert!(stat.pack_dead_bytes >= 100_000, "the record is dead now");

    store.pin(&small, PinMode::Direct, None)?;
    let err = store.delete(&small).expect_err("pinned");
    assert!(matches!(err, StoreError::Pinned(c) if c == small), "{err}");
    assert!(store.unpin(&small)?);
    assert!(!store.unpin(&small)?);
    assert!(store.delete(&small)?);
    assert_eq!(store.stat()?.blocks, 0);

    // Deleted blocks can come back.
    assert!(store.put(&large, &large_data)?);
    assert_eq!(store.get(&large)?.as_deref(), Some(large_data.as_slice()));
    Ok(())
}

#[test]
fn pins_check_completeness_and_replace_each_other() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let (leaf_a, data_a) = raw(1, 20_000);
    let (leaf_b, data_b) = raw(2, 30);
    let (inner, inner_data) = cbor_node(&[leaf_b], 1);
    let (root, root_data) = cbor_node(&[leaf_a, inner], 2);
    store.put(&root, &root_data)?;
    store.put(&leaf_a, &data_a)?;
    store.put(&inner, &inner_data)?;
    let err = store
        .pin(&root, PinMode::Recursive, None)
        .expect_err("leaf b is missing");
    assert!(
        matches!(err, StoreError::Missing(c) if c == leaf_b),
        "{err}"
    );
    assert!(store.pins()?.is_empty());
    store.pin(&root, PinMode::Direct, Some("just the root"))?;
    let err = store
        .pin(&leaf_b, PinMode::Direct, None)
        .expect_err("absent");
    assert!(matches!(err, StoreError::Missing(_)));

    store.put(&leaf_b, &data_b)?;
    store.pin(&root, PinMode::Recursive, None)?;
    let pins = store.pins()?;
    assert_eq!(pins.len(), 1, "pinning again replaces the pin");
    assert_eq!(pins[0].mode, PinMode::Recursive);
    assert_eq!(pins[0].name, None);
    assert_eq!(store.stat()?.recursive_pins, 1);
    Ok(())
}

#[test]
fn index_namespaces_round_trip_and_stay_apart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    store.index_put("a", b"k1", b"v1")?;
    store.index_put("a", b"k0", b"v0")?;
    store.index_put("ab", b"k1", b"other")?;
    store.index_put("", b"", b"empty")?;
    store.index_put("a", b"k1", b"v1b")?;
    assert_eq!(store.index_get("a", b"k1")?.as_deref(), Some(&b"v1b"[..]));
    assert_eq!(
        store.index_get("ab", b"k1")?.as_deref(),
        Some(&b"other"[..])
    );
    assert_eq!(store.index_get("a", b"k2")?, None);
    assert_eq!(store.index_get("", b"")?.as_deref(), Some(&b"empty"[..]));
    assert_eq!(
        store.index_scan("a")?,
        vec![
            (b"k0".to_vec(), b"v0".to_vec()),
            (b"k1".to_vec(), b"v1b".to_vec())
        ]
    );
    assert_eq!(store.index_scan("ab")?.len(), 1);
    assert!(store.index_scan("b")?.is_empty());
    assert!(store.index_remove("a", b"k0")?);
    assert!(!store.index_remove("a", b"k0")?);
    assert_eq!(store.index_scan("a")?.len(), 1);

    let mut session = store.session();
    session.index_put("paths", b"h1", b"p1");
    assert_eq!(
        store.index_get("paths", b"h1")?,
        None,
        "staged until finish"
    );
    session.finish(None)?;
    assert_eq!(
        store.index_get("paths", b"h1")?.as_deref(),
        Some(&b"p1"[..])
    );

    let mut dropped = store.session();
    dropped.index_put("paths", b"h2", b"p2");
    drop(dropped);
    assert_eq!(store.index_get("paths", b"h2")?, None);
    Ok(())
}

#[test]
fn sessions_dedupe_flush_and_drop() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let (existing, existing_data) = raw(1, 50_000);
    store.put(&existing, &existing_data)?;

    let mut session = store.session();
    assert!(!session.put(existing, &existing_data)?, "already stored");
    let (a, a_data) = raw(2, 100);
    let (b, b_data) = raw(3, 60_000);
    assert!(session.put(a, &a_data)?);
    assert!(!session.put(a, &a_data)?, "buffered in this session");
    assert!(session.put(b, &b_data)?);
    assert!(!store.has(&a)?, "buffered, not committed");
    assert_eq!(store.stat()?.temp_pins, 3);
    session.flush()?;
    assert!(store.has(&a)? && store.has(&b)?);
    let (c, c_data) = raw(4, 70_000);
    session.put(c, &c_data)?;
    drop(session);
    assert!(!store.has(&c)?, "dropped before it was committed");
    assert!(store.has(&b)?, "flushed blocks stay");
    assert_eq!(store.stat()?.temp_pins, 0);
    assert!(store.pins()?.is_empty(), "nothing pinned");

    // A failed pin at finish commits nothing of that transaction.
    let (missing, _) = raw(5, 10);
    let (root, root_data) = cbor_node(&[missing], 1);
    let mut session = store.session();
    session.put(root, &root_data)?;
    session.index_put("ns", b"k", b"v");
    let err = session
        .finish(Some((root, PinMode::Recursive, None)))
        .expect_err("incomplete DAG");
    assert!(
        matches!(err, StoreError::Missing(c) if c == missing),
        "{err}"
    );
    assert!(!store.has(&root)?);
    assert_eq!(store.index_get("ns", b"k")?, None);
    assert!(store.pins()?.is_empty());
    Ok(())
}

#[test]
fn session_buffers_are_bounded_by_flushing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Blocks of 16,000 bytes kept inline, so the buffer fills quickly.
    let store = Store::open_with(dir.path(), &StoreOptions::default().inline_limit(16 * 1024))?;
    let mut session = store.session();
    // 40 MiB of inline blocks: more than the session buffers.
    let blocks: Vec<_> = (0..2600).map(|i| raw(i, 16_000)).collect();
    for (cid, data) in &blocks {
        session.put(*cid, data)?;
    }
    assert!(
        store.stat()?.blocks > 0,
        "the session committed on its own before finish"
    );
    session.finish(None)?;
    assert_eq!(store.stat()?.blocks, blocks.len() as u64);
    Ok(())
}

#[test]
fn readers_run_while_a_session_writes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(dir.path())?);
    let existing: Vec<_> = (0..40)
        .map(|i| raw(i, (i as usize % 4) * 20_000 + 100))
        .collect();
    let mut session = store.session();
    for (cid, data) in &existing {
        session.put(*cid, data)?;
    }
    session.finish(None)?;
    let existing = Arc::new(existing);
    let writing = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, existing, writing) = (store.clone(), existing.clone(), writing.clone());
            std::thread::spawn(move || -> Result<u64> {
                let mut reads = 0;
                while writing.load(Ordering::Relaxed) || reads < 100 {
                    for (cid, data) in existing.iter() {
                        let got = store.get(cid)?.expect("present");
                        assert_eq!(&got[..], data.as_slice());
                        reads += 1;
                    }
                }
                Ok(reads)
            })
        })
        .collect();
    let mut session = store.session();
    let new: Vec<_> = (1000..1200)
        .map(|i| raw(i, (i as usize % 3) * 30_000 + 50))
        .collect();
    for (n, (cid, data)) in new.iter().enumerate() {
        session.put(*cid, data)?;
        if n % 50 == 49 {
            session.flush()?;
        }
    }
    session.finish(None)?;
    writing.store(false, Ordering::Relaxed);
    for reader in readers {
        let reads = reader.join().expect("reader thread")?;
        assert!(reads >= 100);
    }
    for (cid, data) in &new {
        assert_eq!(store.get(cid)?.as_deref(), Some(data.as_slice()));
    }
    Ok(())
}
