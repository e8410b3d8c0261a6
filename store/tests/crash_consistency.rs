//! Crash consistency: a child process (this test binary, re-executed with an
//! environment variable) writes blocks in sessions, pins, unpins, deletes and
//! collects garbage in a loop; the parent SIGKILLs it at random moments. After
//! every kill the repo must open, every indexed block must read back and
//! verify, every pin must name a complete DAG, the running totals must match a
//! recount, `Store::verify` must find nothing, and GC must run clean and
//! leave exactly the pinned blocks.

use anyhow::{bail, Context, Result};
use ipld_core::ipld::Ipld;
use ipnix_store::block::{cid_for, DAG_CBOR, RAW};
use ipnix_store::{Cid, PinMode, Store, VerifyConfig, INLINE_LIMIT};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TEST_NAME: &str = "kill_a_writer_at_random_moments_and_recover";
const CHILD_DIR_ENV: &str = "IPNIX_STORE_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "IPNIX_STORE_CRASH_CHILD_SEED";
const KILLS: usize = 24;

#[test]
fn kill_a_writer_at_random_moments_and_recover() -> Result<()> {
    if let Ok(dir) = std::env::var(CHILD_DIR_ENV) {
        let seed = std::env::var(CHILD_SEED_ENV)?.parse()?;
        return run_writer(Path::new(&dir), seed);
    }
    let seed: u64 = std::env::var("IPNIX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("crash_consistency seed {seed} (set IPNIX_TEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut most_pins = 0;
    for kill in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_SEED_ENV, (seed ^ kill as u64).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("re-executing the test binary as the writer")?;
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..400)));
        if let Some(status) = child.try_wait()? {
            bail!("the writer exited on its own ({status}) before kill {kill}");
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        most_pins = most_pins
            .max(check_recovered(dir.path()).with_context(|| format!("after kill {kill}"))?);
    }
    assert!(most_pins > 0, "the writer never got as far as a pin");
    eprintln!("{KILLS} kills checked in {:?}", started.elapsed());
    Ok(())
}

/// Returns the number of pins found.
fn check_recovered(dir: &Path) -> Result<usize> {
    let store = Store::open(dir)?;
    let report = store.verify(&VerifyConfig::default())?;
    assert!(report.is_clean(), "Store::verify after a crash: {report:?}");
    let mut blocks = 0u64;
    let mut bytes = 0u64;
    let mut inline = 0u64;
    for cid in store.cids()? {
        let data = store
            .get(&cid)?
            .with_context(|| format!("{cid} is indexed but get returns nothing"))?;
        blocks += 1;
        bytes += data.len() as u64;
        inline += u64::from(data.len() <= INLINE_LIMIT);
    }
    let stat = store.stat()?;
    assert_eq!(
        (stat.blocks, stat.block_bytes, stat.inline_blocks),
        (blocks, bytes, inline),
        "running totals match a recount"
    );
    let pins = store.pins()?;
    let reachable = reachable_from_pins(&store)?;
    let gc = store.gc()?;
    let after: HashSet<Cid> = store.cids()?.into_iter().collect();
    assert_eq!(after, reachable, "GC leaves exactly the pinned blocks");
    assert_eq!(
        reachable_from_pins(&store)?,
        reachable,
        "GC removed nothing pinned"
    );
    let stat = store.stat()?;
    eprintln!(
        "recovered: {} pins, {} blocks ({} bytes) kept, GC removed {} and deleted {} packs",
        pins.len(),
        stat.blocks,
        stat.block_bytes,
        gc.blocks_removed,
        gc.packs_deleted
    );
    assert_eq!(
        stat.pack_dead_bytes, 0,
        "GC reclaimed all dead pack bytes: {gc:?} {stat:?}"
    );
    assert_eq!(stat.blocks, after.len() as u64);
    Ok(pins.len())
}

/// Every block under a pin, failing if a pinned DAG is incomplete.
fn reachable_from_pins(store: &Store) -> Result<HashSet<Cid>> {
    let mut seen = HashSet::new();
    let mut stack = Vec::new();
    for pin in store.pins()? {
        if seen.insert(pin.cid) && pin.mode == PinMode::Recursive {
            stack.push(pin.cid);
        }
        if pin.mode == PinMode::Direct && !store.has(&pin.cid)? {
            bail!("direct pin {} has no block", pin.cid);
        }
    }
    while let Some(cid) = stack.pop() {
        let data = store
            .get(&cid)?
            .with_context(|| format!("pinned DAG is missing {cid}"))?;
        for link in ipnix_store::links::links(&cid, &data)? {
            if seen.insert(link) {
                stack.push(link);
            }
        }
    }
    Ok(seen)
}

fn random_block(rng: &mut StdRng) -> (Cid, Vec<u8>) {
    let len = match rng.gen_range(0..10) {
        0..=4 => rng.gen_range(1..=INLINE_LIMIT),
        5..=7 => rng.gen_range(INLINE_LIMIT + 1..300_000),
        8 => INLINE_LIMIT + rng.gen_range(0..2),
        _ => rng.gen_range(1 << 20..=2 << 20),
    };
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    (cid_for(RAW, &data), data)
}

fn node(links: &[Cid], round: u64) -> (Cid, Vec<u8>) {
    let mut map = BTreeMap::new();
    map.insert(
        "links".to_string(),
        Ipld::List(links.iter().map(|c| Ipld::Link(*c)).collect()),
    );
    map.insert("round".to_string(), Ipld::Integer(round.into()));
    let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encodable");
    (cid_for(DAG_CBOR, &data), data)
}

/// The child: writes until it is killed.
fn run_writer(dir: &Path, seed: u64) -> Result<()> {
    let store = Store::open(dir)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut loose: Vec<Cid> = Vec::new();
    for round in 0u64.. {
        let mut session = store.session();
        let mut links = Vec::new();
        for _ in 0..rng.gen_range(1..8) {
            let (cid, data) = random_block(&mut rng);
            session.put(cid, &data)?;
            links.push(cid);
            if rng.gen_bool(0.15) {
                session.flush()?;
            }
        }
        // Reuse a block that may exist unpinned (or may have been collected).
        // Once linked it is never deleted (only unpinned and collected).
        if let Some(old) = loose.pop() {
            if store.has(&old)? {
                session.temp_pin(old);
                if store.has(&old)? {
                    links.push(old);
                }
            }
        }
        let (root, data) = node(&links, round);
        session.put(root, &data)?;
        session.index_put("crash", &root.to_bytes(), &round.to_le_bytes());
        match rng.gen_range(0..10) {
            0..=6 => session.finish(Some((
                root,
                PinMode::Recursive,
                Some(format!("round {round}")),
            )))?,
            7 => session.finish(None)?,
            _ => drop(session),
        }
        let pins = store.pins()?;
        if pins.len() > 3 {
            store.unpin(&pins[rng.gen_range(0..pins.len())].cid)?;
        }
        match rng.gen_range(0..10) {
            0 | 1 => {
                let (cid, data) = random_block(&mut rng);
                store.put(&cid, &data)?;
                loose.push(cid);
            }
            2 => {
                if let Some(cid) = loose.pop() {
                    store.delete(&cid)?;
                }
            }
            3 => {
                store.gc()?;
            }
            _ => {}
        }
    }
    Ok(())
}

const CREATOR_TEST_NAME: &str = "a_repo_killed_while_its_database_is_created_opens";
const CREATOR_DIR_ENV: &str = "IPNIX_STORE_CRASH_CREATOR_DIR";
const CREATOR_KILLS: usize = 12;

/// Bug found by the kill -9 campaign (`tests/tests/crash_campaign.rs`,
/// first use): a kill while `Store::open` created a new repo's database left
/// a torn `index.redb` ("Not a redb database: magic number mismatch") and the
/// repo could never be opened again. A child creates fresh repos in a loop;
/// after every kill, every repo it started must open and verify clean.
#[test]
fn a_repo_killed_while_its_database_is_created_opens() -> Result<()> {
    if let Ok(dir) = std::env::var(CREATOR_DIR_ENV) {
        for i in 0u64.. {
            drop(Store::open(&Path::new(&dir).join(i.to_string()))?);
        }
        return Ok(());
    }
    let seed: u64 = std::env::var("IPNIX_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("{CREATOR_TEST_NAME} seed {seed} (set IPNIX_TEST_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let exe = std::env::current_exe()?;
    let mut repos = 0;
    for kill in 0..CREATOR_KILLS {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                CREATOR_TEST_NAME,
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CREATOR_DIR_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("re-executing the test binary as the creator")?;
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
        if let Some(status) = child.try_wait()? {
            bail!("the creator exited on its own ({status}) before kill {kill}");
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        for entry in std::fs::read_dir(dir.path())? {
            let repo = entry?.path();
            let store = Store::open(&repo)
                .with_context(|| format!("kill {kill}: {} does not open", repo.display()))?;
            let report = store.verify(&VerifyConfig::default())?;
            assert!(report.is_clean(), "kill {kill}: {report:?}");
            repos += 1;
        }
    }
    eprintln!("{CREATOR_KILLS} kills, {repos} repos reopened");
    Ok(())
}
