//! Tarballs as trees: disassemble real tarballs (made by GNU tar, gzip, xz,
//! bzip2 and zstd with odd options, and the registry corpus of
//! tests/setup-sources-corpus.sh), carry recipe + tree alone in a CAR to a
//! fresh store, reassemble there, compare SHA-256. Hostile recipes and
//! archives fail clearly and leave no file.

use anyhow::Context as _;
use ipnix_sources::recipe::{self, DisassembleOptions, Recipe, RecipeError};
use ipnix_store::Store;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn sh(dir: &Path, script: &str) -> anyhow::Result<()> {
    let status = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .status()
        .context("sh")?;
    anyhow::ensure!(status.success(), "script failed: {script}");
    Ok(())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Outcome {
    bytes: u64,
    recipe_bytes: u64,
    fallbacks: Vec<String>,
    disassemble_s: f64,
    reassemble_s: f64,
}

/// Disassembles `tarball`, moves only the recipe's DAG to a fresh store
/// (CAR export/import), reassembles there and compares.
fn round_trip(tarball: &Path) -> anyhow::Result<Outcome> {
    let original = std::fs::read(tarball)?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("a"))?;
    let started = Instant::now();
    let done = recipe::disassemble(&store, tarball, &DisassembleOptions::default())
        .with_context(|| format!("disassemble {}", tarball.display()))?;
    let disassemble_s = started.elapsed().as_secs_f64();
    assert_eq!(done.sha256, <[u8; 32]>::from(Sha256::digest(&original)));
    assert_eq!(
        recipe::lookup(&store, &ipnix_bridge::NixHash::sha256(done.sha256))?,
        Some(done.recipe)
    );
    assert!(store.pins()?.iter().any(|p| p.cid == done.recipe
        && p.name.as_deref() == Some(&format!("recipe:{}", hex::encode(done.sha256)))));
    let mut car = Vec::new();
    ipnix_store::car::export(&store, &done.recipe, &mut car)?;
    let fresh = Store::open(&dir.path().join("b"))?;
    let mut session = fresh.session();
    ipnix_store::car::import(&mut session, &car[..])?;
    session.finish(None)?;
    let out = dir.path().join("out");
    let started = Instant::now();
    let rebuilt = recipe::reassemble_to_file(&fresh, &done.recipe, &out)
        .with_context(|| format!("reassemble {}", tarball.display()))?;
    let reassemble_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::read(&out)?;
    anyhow::ensure!(
        bytes == original,
        "{}: rebuilt bytes differ",
        tarball.display()
    );
    assert_eq!(rebuilt.bytes, original.len() as u64);
    Ok(Outcome {
        bytes: original.len() as u64,
        recipe_bytes: done.recipe_bytes,
        fallbacks: done.fallbacks,
        disassemble_s,
        reassemble_s,
    })
}

/// A source tree with what tarballs hold: nested dirs, an executable, a
/// symlink, an empty dir, a long name, a hardlink, a file over 1 MiB.
fn make_tree(dir: &Path) -> anyhow::Result<()> {
    sh(
        dir,
        r#"
        mkdir -p pkg-1.0/src/deep/er pkg-1.0/empty
        printf 'hello\n' > pkg-1.0/README
        printf '#!/bin/sh\necho hi\n' > pkg-1.0/configure && chmod 755 pkg-1.0/configure
        ln -s README pkg-1.0/README.link
        ln pkg-1.0/README pkg-1.0/README.hard
        n=pkg-1.0/src/deep/er/a-rather-long-file-name-that-goes-on-and-on-and-on-past-one-hundred-bytes-of-path-for-sure.c
        printf 'int main(void){return 0;}\n' > "$n"
        seq 1 300000 > pkg-1.0/src/big.txt
        for i in 1 2 3 4 5 6 7 8; do printf 'file %s\n' $i > pkg-1.0/src/f$i.c; done
        touch -d 2020-01-02T03:04:05 pkg-1.0/README
        "#,
    )
}

#[test]
fn tarballs_made_by_the_real_tools_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    make_tree(dir.path())?;
    let mut scripts = vec![
        ("gnu.tar", "tar -cf gnu.tar pkg-1.0"),
        ("gnu.tar.gz", "tar -czf gnu.tar.gz pkg-1.0"),
        ("pax9n.tar.gz", "tar --format=pax -cf - pkg-1.0 | gzip -9 -n > pax9n.tar.gz"),
        ("ustar1.tar.gz", "tar --format=ustar -cf - pkg-1.0/src pkg-1.0/README | gzip -1 > ustar1.tar.gz"),
        ("sorted.tar.gz", "tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=2021-01-01 -cf - pkg-1.0 | gzip -6 -n > sorted.tar.gz"),
        ("nodirs.tar.gz", "find pkg-1.0 -type f | sort | tar --no-recursion -T - -cf - | gzip > nodirs.tar.gz"),
        ("trailing.tar.gz", "tar -czf trailing.tar.gz pkg-1.0 && printf 'garbage after the stream\\n' >> trailing.tar.gz"),
        ("members.tar.gz", "tar -cf whole.tar pkg-1.0 && head -c 100000 whole.tar | gzip -n > members.tar.gz && tail -c +100001 whole.tar | gzip -9 >> members.tar.gz"),
        ("old.tar.gz", "tar --format=v7 -cf - pkg-1.0/src/f1.c pkg-1.0/configure | gzip > old.tar.gz"),
    ];
    if have("bzip2") {
        scripts.push(("x.tar.bz2", "tar -cf - pkg-1.0 | bzip2 -1 > x.tar.bz2"));
        scripts.push(("y.tar.bz2", "tar -cjf y.tar.bz2 pkg-1.0"));
    } else {
        println!("SKIP: bzip2 not installed");
    }
    if have("xz") {
        scripts.push(("x.tar.xz", "tar -cf - pkg-1.0 | xz -9 -T1 > x.tar.xz"));
        scripts.push((
            "e.tar.xz",
            "tar -cf - pkg-1.0 | xz -6e -T1 --check=crc32 > e.tar.xz",
        ));
        scripts.push(("d.tar.xz", "tar -cJf d.tar.xz pkg-1.0"));
    } else {
        println!("SKIP: xz not installed");
    }
    if have("zstd") {
        scripts.push(("x.tar.zst", "tar -cf - pkg-1.0 | zstd -q -19 > x.tar.zst"));
        scripts.push((
            "d.tar.zst",
            "tar -cf d.tar pkg-1.0 && zstd -q d.tar -o d.tar.zst",
        ));
    } else {
        println!("SKIP: zstd not installed");
    }
    let mut failures = Vec::new();
    for (name, script) in scripts {
        sh(dir.path(), script)?;
        match round_trip(&dir.path().join(name)) {
            Ok(o) => println!(
                "{name:16} {:>9} B -> recipe {:>7} B ({:.2}%) fallbacks {:?} dis {:.2}s re {:.2}s",
                o.bytes,
                o.recipe_bytes,
                100.0 * o.recipe_bytes as f64 / o.bytes as f64,
                o.fallbacks,
                o.disassemble_s,
                o.reassemble_s
            ),
            Err(e) => failures.push(format!("{name}: {e:#}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

fn corpus_files() -> Vec<PathBuf> {
    let root = std::env::var_os("IPNIX_CORPUS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ipnix-corpus")))
        .unwrap_or_default();
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn registry_corpus_round_trips() -> anyhow::Result<()> {
    let files = corpus_files();
    if files.is_empty() {
        println!("SKIP: no corpus; run tests/setup-sources-corpus.sh");
        return Ok(());
    }
    let mut failures = Vec::new();
    let mut sizes = Vec::new();
    let (mut total, mut total_recipe, mut fell_back) = (0u64, 0u64, 0usize);
    for file in &files {
        let head = std::fs::read(file)?;
        if ipnix_sources::unpack::detect_bytes(&head[..head.len().min(512)])
            .is_none_or(|f| f == ipnix_sources::unpack::ArchiveFormat::Zip)
        {
            continue;
        }
        match round_trip(file) {
            Ok(o) => {
                println!(
                    "{:60} {:>9} B -> recipe {:>8} B ({:.2}%) fallbacks {:?} dis {:.2}s re {:.2}s",
                    file.file_name().unwrap_or_default().to_string_lossy(),
                    o.bytes,
                    o.recipe_bytes,
                    100.0 * o.recipe_bytes as f64 / o.bytes as f64,
                    o.fallbacks,
                    o.disassemble_s,
                    o.reassemble_s
                );
                total += o.bytes;
                total_recipe += o.recipe_bytes;
                fell_back += usize::from(!o.fallbacks.is_empty());
                sizes.push(o.recipe_bytes);
            }
            Err(e) => failures.push(format!("{}: {e:#}", file.display())),
        }
    }
    sizes.sort_unstable();
    if !sizes.is_empty() {
        println!(
            "corpus: {} files exact, {} with a fallback, median recipe {} B, total {} B of {} B ({:.2}%)",
            sizes.len(),
            fell_back,
            sizes[sizes.len() / 2],
            total_recipe,
            total,
            100.0 * total_recipe as f64 / total.max(1) as f64
        );
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// A small tar.gz in a store, with its recipe.
fn stored(dir: &Path) -> anyhow::Result<(Store, ipnix_sources::recipe::Disassembled, Vec<u8>)> {
    make_tree(dir)?;
    sh(dir, "tar -czf t.tar.gz pkg-1.0")?;
    let store = Store::open(&dir.join("store"))?;
    let done = recipe::disassemble(
        &store,
        &dir.join("t.tar.gz"),
        &DisassembleOptions::default(),
    )?;
    let bytes = store.get(&done.recipe)?.context("recipe block")?.to_vec();
    Ok((store, done, bytes))
}

fn put_recipe(store: &Store, recipe: &Recipe) -> anyhow::Result<cid::Cid> {
    let (cid, bytes) = recipe.to_block()?;
    store.put(&cid, &bytes)?;
    Ok(cid)
}

#[test]
fn hostile_recipes_fail_clearly_and_leave_no_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (store, done, bytes) = stored(dir.path())?;
    let good = Recipe::decode(&bytes)?;
    let out = dir.path().join("out.tar.gz");

    // Lying size: the rebuilt bytes are shorter than promised.
    let mut lie = good.clone();
    lie.size += 1;
    let cid = put_recipe(&store, &lie)?;
    let e = recipe::reassemble_to_file(&store, &cid, &out).expect_err("size lie");
    assert!(matches!(e, RecipeError::SizeMismatch { .. }), "{e}");
    assert!(!out.exists());

    // Lying hash.
    let mut lie = good.clone();
    lie.sha256[0] ^= 1;
    let cid = put_recipe(&store, &lie)?;
    let e = recipe::reassemble_to_file(&store, &cid, &out).expect_err("hash lie");
    assert!(matches!(e, RecipeError::HashMismatch { .. }), "{e}");
    assert!(!out.exists());

    // Lying tar length (offsets past the end).
    let mut lie = good.clone();
    lie.archive.tar_bytes += 512;
    let e = lie
        .to_block()
        .map(|_| ())
        .expect_err("tar bytes no longer add up");
    println!("tar length lie: {e}");
    let mut lie = good.clone();
    lie.archive.members += 5;
    let cid = put_recipe(&store, &lie)?;
    let e = recipe::reassemble_to_file(&store, &cid, &out).expect_err("member lie");
    println!("member count lie: {e}");
    assert!(!out.exists());

    // Link to the wrong kind of block.
    let mut lie = good.clone();
    lie.tree = lie.blobs.first().map(|b| b.unixfs).unwrap_or(done.recipe);
    assert!(lie.to_block().is_err());
    let e =
        recipe::reassemble_to_file(&store, &lie.blobs[0].unixfs, &out).expect_err("not a recipe");
    assert!(matches!(e, RecipeError::NotARecipe(_)), "{e}");

    // Truncated and garbled recipe blocks.
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(Recipe::decode(&bytes[..cut]).is_err());
    }
    let mut garbled = bytes.clone();
    let mid = garbled.len() / 3;
    garbled[mid] ^= 0x55;
    if let Ok(r) = Recipe::decode(&garbled) {
        // Still well-formed: it must then fail at reassembly, not lie.
        let cid = put_recipe(&store, &r)?;
        if let Err(e) = recipe::reassemble_to_file(&store, &cid, &out) {
            println!("garbled recipe: {e}");
            assert!(!out.exists());
        } else {
            assert_eq!(r, good);
        }
    }

    // A tree that lacks a file: a fresh store with everything but one blob.
    let mut car = Vec::new();
    ipnix_store::car::export(&store, &done.recipe, &mut car)?;
    let fresh = Store::open(&dir.path().join("fresh"))?;
    let mut session = fresh.session();
    let mut reader = ipnix_store::car::CarReader::new(&car[..])?;
    let mut skipped = None;
    while let Some((cid, data)) = reader.next_block()? {
        if skipped.is_none() && cid.codec() == 0x78 && data.starts_with(b"blob ") {
            skipped = Some(cid);
            continue;
        }
        session.put(cid, &data)?;
    }
    session.finish(None)?;
    let e = recipe::reassemble_to_file(&fresh, &done.recipe, &out).expect_err("missing blob");
    assert!(matches!(e, RecipeError::Missing(_)), "{e}");
    assert!(!out.exists());

    // An existing output is never overwritten.
    std::fs::write(&out, b"keep")?;
    assert!(matches!(
        recipe::reassemble_to_file(&store, &done.recipe, &out),
        Err(RecipeError::Exists(_))
    ));
    assert_eq!(std::fs::read(&out)?, b"keep");
    Ok(())
}

#[test]
fn path_escapes_are_refused_as_unsafe() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    sh(
        dir.path(),
        "mkdir a && echo x > a/f && tar -czf dotdot.tar.gz --transform='s,^a,../escape,' a/f \
         && ln -s /etc/passwd a/l && tar -czf abs.tar.gz a/l",
    )?;
    let store = Store::open(&dir.path().join("store"))?;
    for name in ["dotdot.tar.gz", "abs.tar.gz"] {
        let e = recipe::disassemble(
            &store,
            &dir.path().join(name),
            &DisassembleOptions::default(),
        )
        .expect_err(name);
        assert_eq!(e.reason(), "unsafe-archive", "{name}: {e}");
    }
    assert!(store.pins()?.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn tar_header_diffs_round_trip(
        template in proptest::collection::vec(any::<u8>(), 512),
        actual in proptest::collection::vec(any::<u8>(), 512),
        keep in proptest::collection::vec(any::<bool>(), 512),
        name in proptest::collection::vec(1u8..=255, 1..300),
        size in any::<u64>(),
        exec in any::<bool>(),
    ) {
        let template: [u8; 512] = template.try_into().expect("512");
        // Headers that share most bytes with the template, as real ones do.
        let mut mixed = [0u8; 512];
        for i in 0..512 {
            mixed[i] = if keep[i] { template[i] } else { actual[i] };
        }
        prop_assert!(ipnix_sources::recipe::tar::header_round_trip(&template, &mixed, &name, size, exec));
        let fully: [u8; 512] = actual.try_into().expect("512");
        prop_assert!(ipnix_sources::recipe::tar::header_round_trip(&template, &fully, &name, size, exec));
    }
}
