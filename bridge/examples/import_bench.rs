//! Import benchmark: streams `nix-store --dump PATH` into the NAR -> DAG
//! importer, once into `NullBlocks` (hashing and chunking only) and once into
//! a real `Store` in a temporary directory, then exports the NAR back from
//! the store. The anchor, timed in the same run, is
//! `nix-store --dump PATH | sha256sum`; ratios are anchor time / our time
//! (above 1 = faster than the anchor).
//!
//! Usage: cargo run --release -p ipnix-bridge --example import_bench -- PATH [--no-store]
//! The big real tree: `nix-store --add ~/.rustup/toolchains/stable-x86_64-unknown-linux-gnu`.

use anyhow::{bail, Context, Result};
use ipnix_bridge::nixstore::{path_info, Dump};
use ipnix_bridge::pathinfo::Reference;
use ipnix_bridge::{export_nar, import_nar, PathMeta};
use ipnix_store::block::{cid_for, DAG_CBOR};
use ipnix_store::{NullBlocks, PinMode, Store};
use std::process::Command;
use std::time::Instant;

fn meta_for(path: &str) -> Result<PathMeta> {
    let info = path_info(&[path.to_owned()], false)?
        .into_iter()
        .next()
        .context("no path-info")?;
    let mut meta = PathMeta::new(path);
    for reference in &info.references {
        if reference == path {
            meta.self_reference = true;
        } else {
            // A stand-in link: the benchmark imports one path, not its closure.
            meta.references.push(Reference {
                path: reference.clone(),
                info: cid_for(DAG_CBOR, reference.as_bytes()),
            });
        }
    }
    meta.expected_nar_hash = Some(info.nar_hash);
    meta.expected_nar_size = Some(info.nar_size);
    Ok(meta)
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .context("usage: import_bench STORE_PATH [--no-store]")?;
    let use_store = args.next().as_deref() != Some("--no-store");
    let meta = meta_for(&path)?;
    let size = meta.expected_nar_size.context("size")?;
    println!(
        "path: {path}\nNAR size: {size} bytes ({:.1} MB)",
        size as f64 / 1e6
    );

    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("nix-store --dump '{path}' | sha256sum > /dev/null"))
        .status()?;
    if !status.success() {
        bail!("anchor pipeline failed");
    }
    let anchor = start.elapsed().as_secs_f64();
    println!(
        "anchor  nix-store --dump | sha256sum: {anchor:.2} s, {:.0} MB/s",
        mb_s(size, anchor)
    );

    let start = Instant::now();
    let mut dump = Dump::start(&path)?;
    let imported = import_nar(&mut NullBlocks, &mut dump, meta.clone())?;
    dump.finish()?;
    let null = start.elapsed().as_secs_f64();
    println!(
        "import  -> NullBlocks:               {null:.2} s, {:.0} MB/s, ratio {:.2} (large blobs: {})",
        mb_s(size, null),
        anchor / null,
        imported.pathinfo.blobs.len()
    );

    if use_store {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let start = Instant::now();
        let mut session = store.session();
        let mut dump = Dump::start(&path)?;
        let imported = import_nar(&mut session, &mut dump, meta)?;
        dump.finish()?;
        // Direct pin: the store's recursive-pin completeness walk does not
        // yet know that large git blobs live in the path-info's UnixFS map.
        session.finish(Some((
            imported.pathinfo_cid,
            PinMode::Direct,
            Some("bench".into()),
        )))?;
        let stored = start.elapsed().as_secs_f64();
        let stat = store.stat()?;
        println!(
            "import  -> Store (commit included):  {stored:.2} s, {:.0} MB/s, ratio {:.2}",
            mb_s(size, stored),
            anchor / stored
        );
        println!("store: {stat:?}");

        let start = Instant::now();
        let summary = export_nar(&store, &imported.pathinfo_cid, std::io::sink())?;
        let exported = start.elapsed().as_secs_f64();
        println!(
            "export Store -> NAR (hash-checked):  {exported:.2} s, {:.0} MB/s, ratio {:.2} ({} bytes)",
            mb_s(size, exported),
            anchor / exported,
            summary.size
        );
    }
    Ok(())
}
