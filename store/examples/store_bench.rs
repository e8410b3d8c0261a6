//! Block store benchmark: writes blocks of 1 KiB, 256 KiB and 1 MiB through a
//! session (durable commit included), reads them back hot, and reports write
//! and read speed and on-disk bytes per block byte, next to anchors measured in
//! the same run: the same bytes written to one plain file with fdatasync, the
//! same blocks as values of a bare redb table (what the pack files avoid), and
//! SHA-256 over the bytes (every get verifies, so it bounds hot reads).
//! The 1 KiB and 16 KiB sizes also run with `inline_limit=16384` (the old
//! default: those blocks inline in redb) to show what inlining costs.
//!
//! `cargo run --release -p ipnix-store --example store_bench -- [DIR] [--quick]`
//! (DIR defaults to a temporary directory; --quick divides the data by 8.)

use anyhow::{Context, Result};
use ipnix_store::block::{cid_for, RAW};
use ipnix_store::{Cid, Store, StoreOptions};
use redb::{ReadableDatabase, TableDefinition};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

const MIB: usize = 1 << 20;

struct Row {
    label: String,
    blocks: usize,
    write_mbs: f64,
    file_write_mbs: f64,
    redb_write_mbs: f64,
    read_mbs: f64,
    sha_mbs: f64,
    apparent: f64,
    allocated: f64,
    redb_apparent: f64,
    inline: u64,
    packs: u64,
}

fn blocks(size: usize, total: usize, seed: u64) -> Vec<(Cid, Vec<u8>)> {
    let mut state = seed | 1;
    (0..total / size)
        .map(|_| {
            let mut data = vec![0u8; size];
            for chunk in data.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            (cid_for(RAW, &data), data)
        })
        .collect()
}

fn mbs(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / MIB as f64 / seconds
}

/// (apparent, allocated) bytes of every file under `dir`.
fn disk_usage(dir: &Path) -> Result<(u64, u64)> {
    let (mut apparent, mut allocated) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path())?;
            apparent += a;
            allocated += b;
        } else {
            apparent += meta.len();
            allocated += meta.blocks() * 512;
        }
    }
    Ok((apparent, allocated))
}

fn bench(root: &Path, size: usize, total: usize, inline_limit: Option<usize>) -> Result<Row> {
    let data = blocks(size, total, size as u64);
    let bytes: usize = data.iter().map(|(_, d)| d.len()).sum();

    // Anchor 1: the same bytes, one plain file, fdatasync.
    let file_path = root.join(format!("plain-{size}"));
    let started = Instant::now();
    {
        let mut file = std::io::BufWriter::with_capacity(MIB, std::fs::File::create(&file_path)?);
        for (_, block) in &data {
            file.write_all(block)?;
        }
        file.into_inner()?.sync_data()?;
    }
    let file_write_mbs = mbs(bytes, started.elapsed().as_secs_f64());
    std::fs::remove_file(&file_path)?;

    // Anchor 2: every block as a value in a bare redb table.
    let redb_dir = root.join(format!("redb-{size}"));
    std::fs::create_dir_all(&redb_dir)?;
    let table: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blocks");
    let started = Instant::now();
    {
        let db = redb::Database::create(redb_dir.join("db.redb"))?;
        let txn = db.begin_write()?;
        {
            let mut t = txn.open_table(table)?;
            for (cid, block) in &data {
                t.insert(cid.to_bytes().as_slice(), block.as_slice())?;
            }
        }
        txn.commit()?;
        drop(db.begin_read()?);
    }
    let redb_write_mbs = mbs(bytes, started.elapsed().as_secs_f64());
    let (redb_bytes, _) = disk_usage(&redb_dir)?;
    std::fs::remove_dir_all(&redb_dir)?;

    // Anchor 3: SHA-256 over the bytes.
    let started = Instant::now();
    for (_, block) in &data {
        std::hint::black_box(Sha256::digest(block));
    }
    let sha_mbs = mbs(bytes, started.elapsed().as_secs_f64());

    // The store.
    let dir = root.join(format!("store-{size}"));
    let mut options = StoreOptions::default();
    if let Some(limit) = inline_limit {
        options = options.inline_limit(limit);
    }
    let store = Store::open_with(&dir, &options)?;
    let started = Instant::now();
    let mut session = store.session();
    for (cid, block) in &data {
        session.put(*cid, block)?;
    }
    session.finish(None)?;
    let write_mbs = mbs(bytes, started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut read = 0;
    for (cid, _) in &data {
        read += store.get(cid)?.context("block present")?.len();
    }
    let read_mbs = mbs(read, started.elapsed().as_secs_f64());
    let stat = store.stat()?;
    drop(store);
    let (apparent, allocated) = disk_usage(&dir)?;
    std::fs::remove_dir_all(&dir)?;
    let label = match inline_limit {
        Some(limit) => format!("{} KiB, inline_limit={limit}", size / 1024),
        None => format!("{} KiB", size / 1024),
    };
    Ok(Row {
        label,
        blocks: data.len(),
        write_mbs,
        file_write_mbs,
        redb_write_mbs,
        read_mbs,
        sha_mbs,
        apparent: apparent as f64 / bytes as f64,
        allocated: allocated as f64 / bytes as f64,
        redb_apparent: redb_bytes as f64 / bytes as f64,
        inline: stat.inline_blocks,
        packs: stat.pack_files,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick { 8 } else { 1 };
    let temp;
    let root: PathBuf = match args.iter().find(|a| !a.starts_with("--")) {
        Some(dir) => PathBuf::from(dir),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&root)?;
    println!("store_bench in {}", root.display());
    println!(
        "| block | blocks | write MB/s | plain file+fdatasync MB/s (ratio) | bare redb write MB/s | hot read MB/s | sha256 MB/s | on-disk/block bytes (allocated) | bare redb on-disk/block | inline / pack files |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let runs = [
        (1024, 64 * MIB, None),
        (1024, 64 * MIB, Some(16 * 1024)),
        (16 * 1024, 64 * MIB, None),
        (16 * 1024, 64 * MIB, Some(16 * 1024)),
        (256 * 1024, 256 * MIB, None),
        (MIB, 256 * MIB, None),
    ];
    for (size, total, inline_limit) in runs {
        let row = bench(&root, size, total / scale, inline_limit)?;
        println!(
            "| {} | {} | {:.0} | {:.0} ({:.2}) | {:.0} | {:.0} | {:.0} | {:.3} ({:.3}) | {:.3} | {} / {} |",
            row.label,
            row.blocks,
            row.write_mbs,
            row.file_write_mbs,
            row.write_mbs / row.file_write_mbs,
            row.redb_write_mbs,
            row.read_mbs,
            row.sha_mbs,
            row.apparent,
            row.allocated,
            row.redb_apparent,
            row.inline,
            row.packs,
        );
    }
    Ok(())
}
