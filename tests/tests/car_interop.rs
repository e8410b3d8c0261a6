//! CAR v1 against the real `ipfs-car` CLI (npm, pinned by
//! tests/setup-ipfs-car.sh): what `ipfs-car pack` makes, we import with the
//! root its header names and read back the same bytes; its root equals our
//! CID for the same input under Profile::V1_2025 (ipfs-car 3 packs with
//! CIDv1, raw leaves, 1 MiB chunks, 1024 links); what we export,
//! `ipfs-car unpack` (which verifies every block) turns back into identical
//! files and `ipfs-car blocks` lists in our order.
//!
//! ipfs-car works offline and starts no peer, so these tests need no sandbox.
//! Without the CLI they print `SKIP: <reason>`; install it with
//! `tests/setup-ipfs-car.sh` (idempotent; prints the binary's path).
//! Run: `cargo test -p ipnix-tests --test car_interop`

use anyhow::{bail, Context, Result};
use ipnix_store::car::{export, import, CarReader};
use ipnix_store::unixfs::{add_file, add_path, cat, get_to_path, Profile};
use ipnix_store::{Cid, MemoryBlocks};
use ipnix_tests::peers::{self, pseudo_random_bytes, write_pseudo_random_file};
use ipnix_tests::skip_if;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `$IPFS_CAR`, else where setup-ipfs-car.sh installs it.
fn ipfs_car() -> PathBuf {
    if let Some(bin) = std::env::var_os("IPFS_CAR").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    peers::peers_home().join("ipfs-car/node_modules/.bin/ipfs-car")
}

fn ipfs_car_missing() -> Option<String> {
    let bin = ipfs_car();
    if !bin.exists() {
        return Some(format!(
            "ipfs-car not found at {} (run tests/setup-ipfs-car.sh)",
            bin.display()
        ));
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("node is not installed".into()),
    }
}

fn run_ipfs_car(args: &[&str]) -> Result<String> {
    let out = Command::new(ipfs_car())
        .args(args)
        .output()
        .with_context(|| format!("running ipfs-car {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ipfs-car {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Imports a CAR file; returns the blocks and its single root.
fn import_car(path: &Path) -> Result<(MemoryBlocks, Cid)> {
    let mut blocks = MemoryBlocks::new();
    let file = fs::File::open(path)?;
    let imported = import(&mut blocks, std::io::BufReader::new(file))?;
    let [root] = imported.roots[..] else {
        bail!("expected one root, got {:?}", imported.roots);
    };
    assert_eq!(
        imported.blocks,
        blocks.len() as u64,
        "no duplicate sections"
    );
    Ok((blocks, root))
}

fn block_set(blocks: &MemoryBlocks) -> Vec<Cid> {
    let mut cids: Vec<Cid> = blocks.iter().map(|(c, _)| *c).collect();
    cids.sort();
    cids
}

#[test]
fn files_packed_by_ipfs_car_import_with_our_cids() -> Result<()> {
    skip_if!(
        "files_packed_by_ipfs_car_import_with_our_cids",
        ipfs_car_missing()
    );
    let dir = peers::temp_dir("car-pack-");
    let params = Profile::V1_2025.params();
    let chunk = params.chunk_size as u64;
    for (i, size) in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 5]
        .into_iter()
        .enumerate()
    {
        let file = dir.path().join(format!("f{size}"));
        write_pseudo_random_file(&file, 500 + i as u64, size)?;
        let car = dir.path().join(format!("f{size}.car"));
        run_ipfs_car(&["pack", s(&file), "--no-wrap", "--output", s(&car)])?;
        let (blocks, root) = import_car(&car)?;
        let printed = run_ipfs_car(&["roots", s(&car)])?;
        assert_eq!(printed.trim(), root.to_string());

        let mut ours = MemoryBlocks::new();
        let added = add_file(&mut ours, fs::File::open(&file)?, &params)?;
        eprintln!("{size:>8} bytes: ipfs-car {root} ours {}", added.cid);
        assert_eq!(added.cid, root, "{size} bytes");
        assert_eq!(block_set(&ours), block_set(&blocks));

        let mut back = Vec::new();
        cat(&blocks, &root)?.read_to_end(&mut back)?;
        assert_eq!(back, fs::read(&file)?);
    }
    Ok(())
}

/// Files and non-empty directories only: ipfs-car's file walker skips
/// symlinks and empty directories, so trees with those differ by design.
fn plain_tree(root: &Path) -> Result<()> {
    fs::create_dir_all(root.join("sub/deeper"))?;
    fs::write(root.join("a.txt"), b"hello\n")?;
    fs::write(root.join("B-upper"), b"sorts first\n")?;
    fs::write(root.join("sub/empty"), b"")?;
    fs::write(
        root.join("sub/deeper/two-chunks"),
        pseudo_random_bytes(3, 1_500_000),
    )?;
    Ok(())
}

#[test]
fn directory_packed_by_ipfs_car_matches_ours_and_unpacks() -> Result<()> {
    skip_if!(
        "directory_packed_by_ipfs_car_matches_ours_and_unpacks",
        ipfs_car_missing()
    );
    let dir = peers::temp_dir("car-dir-");
    let tree = dir.path().join("tree");
    plain_tree(&tree)?;
    let car = dir.path().join("tree.car");
    // For a directory argument ipfs-car's root is that directory itself.
    run_ipfs_car(&["pack", s(&tree), "--output", s(&car)])?;
    let (blocks, root) = import_car(&car)?;
    let ours = add_path(&mut MemoryBlocks::new(), &tree, &Profile::V1_2025.params())?;
    eprintln!("tree: ipfs-car {root} ours {}", ours.cid);
    assert_eq!(ours.cid, root);
    let out = dir.path().join("out");
    get_to_path(&blocks, &root, &out)?;
    assert_same_tree(&tree, &out);
    Ok(())
}

#[test]
fn our_exports_unpack_with_ipfs_car() -> Result<()> {
    skip_if!("our_exports_unpack_with_ipfs_car", ipfs_car_missing());
    let dir = peers::temp_dir("car-export-");
    let tree = dir.path().join("tree");
    plain_tree(&tree)?;
    for (name, params) in [
        ("v1", Profile::V1_2025.params()),
        ("v0", Profile::V0_2015.params()),
        ("nix", Profile::NixLargeBlob.params()),
    ] {
        let mut blocks = MemoryBlocks::new();
        let added = add_path(&mut blocks, &tree, &params)?;
        let car = dir.path().join(format!("{name}.car"));
        let stats = export(&blocks, &added.cid, fs::File::create(&car)?)?;
        assert_eq!(stats.blocks, blocks.len() as u64);
        assert_eq!(
            run_ipfs_car(&["roots", s(&car)])?.trim(),
            added.cid.to_string()
        );

        // `blocks` re-reads (and verifies) every section, in our order.
        let listed: Vec<String> = run_ipfs_car(&["blocks", s(&car)])?
            .lines()
            .map(str::to_string)
            .collect();
        let ours: Vec<String> = CarReader::new(fs::File::open(&car)?)?
            .map(|b| b.map(|(cid, _)| cid.to_string()))
            .collect::<Result<_, _>>()?;
        assert_eq!(listed, ours);

        let out = dir.path().join(format!("unpacked-{name}"));
        run_ipfs_car(&["unpack", s(&car), "--output", s(&out)])?;
        assert_same_tree(&tree, &out);
    }

    // A single file exported from its UnixFS root unpacks to the same bytes.
    let file = dir.path().join("file");
    write_pseudo_random_file(&file, 77, 2_500_000)?;
    let mut blocks = MemoryBlocks::new();
    let added = add_file(
        &mut blocks,
        fs::File::open(&file)?,
        &Profile::NixLargeBlob.params(),
    )?;
    let car = dir.path().join("file.car");
    export(&blocks, &added.cid, fs::File::create(&car)?)?;
    let out = dir.path().join("file.out");
    run_ipfs_car(&["unpack", s(&car), "--output", s(&out)])?;
    assert_eq!(fs::read(&out)?, fs::read(&file)?);
    Ok(())
}

fn assert_same_tree(a: &Path, b: &Path) {
    let ma = fs::symlink_metadata(a).expect("a");
    let mb = fs::symlink_metadata(b).expect("b");
    assert_eq!(ma.file_type(), mb.file_type(), "{a:?} vs {b:?}");
    if ma.is_file() {
        assert_eq!(fs::read(a).expect("a"), fs::read(b).expect("b"), "{a:?}");
    } else if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .expect("dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "{a:?}");
        for name in na {
            assert_same_tree(&a.join(&name), &b.join(&name));
        }
    }
}
