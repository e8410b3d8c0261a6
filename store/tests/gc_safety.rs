//! GC running in a tight loop while import sessions build and pin small DAGs
//! (raw leaves under a dag-pb node under a dag-cbor root), some reusing
//! blocks that already exist unpinned (by put, or by temp pin + has), and
//! while a reader keeps reading permanently pinned DAGs whose packs GC is
//! rewriting and deleting. Every pinned DAG must be complete right after its
//! session finishes; at the end garbage is gone and pack space reclaimed.

use anyhow::{Context, Result};
use ipld_core::ipld::Ipld;
use ipld_dagpb::{PbLink, PbNode};
use ipnix_store::block::{cid_for, DAG_CBOR, DAG_PB, RAW};
use ipnix_store::{Cid, GcStats, PinMode, Store, StoreOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

type Block = (Cid, Vec<u8>);

/// Small packs so that packs seal often and GC rewrites and deletes them
/// while imports and reads run.
fn options() -> StoreOptions {
    StoreOptions::default().pack_target_bytes(512 << 10)
}

const IMPORTERS: u64 = 2;
const ROUNDS: u64 = 30;
const POOL_MAX: usize = 64;

fn random_raw(rng: &mut StdRng) -> Block {
    let len = if rng.gen_bool(0.5) {
        rng.gen_range(1..16_000)
    } else {
        rng.gen_range(16_385..90_000)
    };
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    (cid_for(RAW, &data), data)
}

fn pb_node(children: &[Block]) -> Block {
    let node = PbNode {
        links: children
            .iter()
            .enumerate()
            .map(|(i, (cid, data))| PbLink {
                cid: *cid,
                name: Some(format!("{i:04}")),
                size: Some(data.len() as u64),
            })
            .collect(),
        data: None,
    };
    let data = node.into_bytes();
    (cid_for(DAG_PB, &data), data)
}

fn cbor_node(links: &[Cid], tag: u64) -> Block {
    let mut map = BTreeMap::new();
    map.insert(
        "links".to_string(),
        Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    map.insert("tag".to_string(), Ipld::Integer(tag.into()));
    let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encodable");
    (cid_for(DAG_CBOR, &data), data)
}

/// Every block of the DAG under `root`, or an error naming a missing one.
fn dag(store: &Store, root: Cid) -> Result<HashSet<Cid>> {
    let mut seen = HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(cid) = stack.pop() {
        let data = store
            .get(&cid)?
            .with_context(|| format!("block {cid} under pinned root {root} is gone"))?;
        for link in ipnix_store::links::links(&cid, &data)? {
            if seen.insert(link) {
                stack.push(link);
            }
        }
    }
    Ok(seen)
}

struct Shared {
    store: Store,
    /// Blocks that exist (or existed) unpinned, for imports to reuse.
    pool: Mutex<Vec<Block>>,
    /// Roots that stay pinned until the end, read continuously.
    permanent: Mutex<Vec<Cid>>,
    importing: AtomicBool,
}

fn import_loop(shared: &Shared, seed: u64) -> Result<u64> {
    let store = &shared.store;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut recent: Vec<(Cid, Vec<Block>)> = Vec::new();
    let mut checked = 0;
    for round in 0..ROUNDS {
        let mut session = store.session();
        let mut leaves: Vec<Block> = (0..rng.gen_range(2..6))
            .map(|_| random_raw(&mut rng))
            .collect();
        let reused: Vec<Block> = {
            let pool = shared.pool.lock().expect("pool lock");
            pool.choose_multiple(&mut rng, 3).cloned().collect()
        };
        let mut linked_only = Vec::new();
        for block in reused {
            if rng.gen_bool(0.5) {
                // Reuse by CID: temp pin first, then check presence; put
                // only if GC collected it before the temp pin.
                session.temp_pin(block.0);
                if !store.has(&block.0)? {
                    session.put(block.0, &block.1)?;
                }
                linked_only.push(block);
            } else {
                leaves.push(block);
            }
        }
        leaves.shuffle(&mut rng);
        for (cid, data) in &leaves {
            session.put(*cid, data)?;
            if rng.gen_bool(0.2) {
                session.flush()?;
            }
        }
        leaves.extend(linked_only);
        let middle = pb_node(&leaves);
        let mut root_links = vec![middle.0, leaves[0].0];
        if let Some(&shared_root) = shared.permanent.lock().expect("lock").last() {
            root_links.push(shared_root);
            session.temp_pin(shared_root);
        }
        let root = cbor_node(&root_links, seed.wrapping_mul(1000).wrapping_add(round));
        session.put(root.0, &root.1)?;
        session.put(middle.0, &middle.1)?;
        if rng.gen_bool(0.1) {
            drop(session); // an abandoned import: garbage
            shared.pool.lock().expect("pool lock").extend(leaves);
            continue;
        }
        session.finish(Some((root.0, PinMode::Recursive, None)))?;
        let blocks = dag(store, root.0).context("right after finish")?;
        assert!(blocks.len() >= leaves.len() + 2);
        checked += 1;
        if round % 7 == 0 {
            shared.permanent.lock().expect("lock").push(root.0);
        } else {
            recent.push((root.0, leaves));
        }
        if recent.len() > 2 {
            let (old_root, old_leaves) = recent.remove(0);
            store.unpin(&old_root)?;
            let mut pool = shared.pool.lock().expect("pool lock");
            pool.extend(old_leaves);
            let excess = pool.len().saturating_sub(POOL_MAX);
            pool.drain(..excess);
        }
    }
    for (root, _) in recent {
        store.unpin(&root)?;
    }
    Ok(checked)
}

fn read_loop(shared: &Shared) -> Result<u64> {
    let mut reads = 0;
    while shared.importing.load(Ordering::Relaxed) {
        let roots = shared.permanent.lock().expect("lock").clone();
        for root in roots {
            reads += dag(&shared.store, root)?.len() as u64;
        }
        std::thread::yield_now();
    }
    Ok(reads)
}

fn gc_loop(shared: &Shared) -> Result<(u64, GcStats)> {
    let mut runs = 0;
    let mut total = GcStats::default();
    while shared.importing.load(Ordering::Relaxed) {
        let stats = shared.store.gc()?;
        total.blocks_removed += stats.blocks_removed;
        total.bytes_removed += stats.bytes_removed;
        total.pack_bytes_reclaimed += stats.pack_bytes_reclaimed;
        total.blocks_moved += stats.blocks_moved;
        total.packs_deleted += stats.packs_deleted;
        total.packs_rewritten += stats.packs_rewritten;
        runs += 1;
    }
    Ok((runs, total))
}

/// An older repo with unpinned blocks spread over several packs.
fn seed_repo(dir: &Path, rng: &mut StdRng) -> Result<Vec<Block>> {
    let mut pool = Vec::new();
    for _ in 0..3 {
        let store = Store::open_with(dir, &options())?;
        let mut session = store.session();
        for _ in 0..8 {
            let block = random_raw(rng);
            session.put(block.0, &block.1)?;
            pool.push(block);
        }
        session.finish(None)?;
    }
    Ok(pool)
}

#[test]
fn gc_in_a_tight_loop_never_breaks_a_pinned_import() -> Result<()> {
    let seed: u64 = std::env::var("IPNIX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("gc_safety seed {seed} (set IPNIX_TEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let pool = seed_repo(dir.path(), &mut rng)?;
    let shared = Arc::new(Shared {
        store: Store::open_with(dir.path(), &options())?,
        pool: Mutex::new(pool),
        permanent: Mutex::new(Vec::new()),
        importing: AtomicBool::new(true),
    });

    let gc = {
        let shared = shared.clone();
        std::thread::spawn(move || gc_loop(&shared))
    };
    let reader = {
        let shared = shared.clone();
        std::thread::spawn(move || read_loop(&shared))
    };
    let importers: Vec<_> = (0..IMPORTERS)
        .map(|i| {
            let shared = shared.clone();
            let seed = seed.wrapping_add(i + 1);
            std::thread::spawn(move || import_loop(&shared, seed))
        })
        .collect();
    let results: Vec<_> = importers.into_iter().map(|i| i.join()).collect();
    shared.importing.store(false, Ordering::Relaxed);
    let mut imports = 0;
    let mut failure = None;
    for result in results {
        match result.expect("importer thread") {
            Ok(n) => imports += n,
            Err(e) => failure = Some(e),
        }
    }
    let (runs, during) = gc.join().expect("gc thread")?;
    let reads = reader.join().expect("reader thread")?;
    if let Some(e) = failure {
        return Err(e);
    }
    eprintln!(
        "{imports} pinned imports checked, {runs} GC runs, {reads} blocks read; during: {during:?}"
    );
    assert!(runs >= 5, "GC ran concurrently ({runs} runs)");
    assert!(
        during.blocks_removed > 0 && during.packs_deleted > 0,
        "{during:?}"
    );

    // Only the permanent pins remain: GC leaves exactly their DAGs.
    let store = &shared.store;
    let permanent = shared.permanent.lock().expect("lock").clone();
    assert_eq!(store.pins()?.len(), permanent.len());
    store.gc()?;
    let mut live = HashSet::new();
    for root in &permanent {
        live.extend(dag(store, *root)?);
    }
    let remaining: HashSet<Cid> = store.cids()?.into_iter().collect();
    assert_eq!(remaining, live, "garbage is gone, pinned DAGs stay");

    // After a restart the last active pack is idle too: GC brings dead pack
    // bytes down to at most 10% of the pack bytes.
    drop(shared);
    let store = Store::open_with(dir.path(), &options())?;
    let final_gc = store.gc()?;
    let stat = store.stat()?;
    eprintln!("final {final_gc:?}\n{stat:?}");
    assert!(stat.pack_dead_bytes * 10 <= stat.pack_bytes, "{stat:?}");
    assert_eq!(
        stat.pack_bytes,
        stat.pack_live_bytes + stat.pack_dead_bytes + stat.pack_files * 8
    );
    assert_eq!(stat.blocks, live.len() as u64);
    for root in &permanent {
        dag(&store, *root)?;
    }
    Ok(())
}
