//! Tarballs as trees (issue 16), through the real `ipnix` binary: every file
//! of the tarball corpus (real Debian orig tarballs in gz, xz and bz2, PyPI
//! sdists, npm tarballs, `.crate` files: `tests/tarball-corpus.json`) is
//! disassembled into tree + recipe, the tarball deleted, and rebuilt
//! byte-identical (sha256) from the repo; every fourth file also by its
//! hash and in a fresh repo that got nothing but `ipnix dag export RECIPE`
//! (the recipe DAG carries its tree). Hostile inputs: archives with path escapes are refused
//! as `sources add --unpack` refuses them and pin nothing; a recipe whose
//! tree lost its root block or a file gives a clear error and no file.
//! Times are never asserted (tests/bench/recipe_bench.py measures them).

use cid::Cid;
use ipnix_tests::cli::{assert_clean_failure, Ipnix};
use ipnix_tests::tarball_corpus::{self, sha256_hex, TarballFile};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `git-raw`: the bridge's codec for git objects (trees and blobs).
const GIT_RAW: u64 = 0x78;

fn json(stdout: &str, args: &[&str]) -> Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("ipnix {args:?} printed no JSON ({e}): {stdout}"))
}

fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    value
        .get(name)
        .unwrap_or_else(|| panic!("no {name:?} in {value}"))
}

fn text(value: &Value, name: &str) -> String {
    field(value, name)
        .as_str()
        .unwrap_or_else(|| panic!("{name:?} is not a string in {value}"))
        .to_owned()
}

fn number(value: &Value, name: &str) -> u64 {
    field(value, name)
        .as_u64()
        .unwrap_or_else(|| panic!("{name:?} is not a number in {value}"))
}

/// What `sources disassemble --json` said about one file.
struct Disassembled {
    recipe: String,
    tree: String,
    swhid: String,
    recipe_bytes: u64,
    format: String,
    fallbacks: Vec<String>,
}

fn disassemble(ipnix: &Ipnix, file: &Path) -> Result<Disassembled, String> {
    let path = file.to_str().expect("utf-8 path");
    let args = ["--json", "sources", "disassemble", path];
    let out = ipnix.run(&args);
    if !out.status.success() {
        return Err(format!(
            "disassemble failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v = json(&String::from_utf8_lossy(&out.stdout), &args);
    let sha256 = text(&v, "sha256");
    let bytes = std::fs::read(file).expect("the tarball is still there");
    if sha256 != sha256_hex(&bytes) {
        return Err(format!(
            "disassemble reports sha256 {sha256}, the file has another"
        ));
    }
    if number(&v, "tarball_bytes") != bytes.len() as u64 {
        return Err(format!("tarball_bytes is {}", number(&v, "tarball_bytes")));
    }
    if field(&v, "exact").as_bool() != Some(true) {
        return Err(format!("not exact: {v}"));
    }
    let swhid = text(&v, "swhid");
    if !swhid.starts_with("swh:1:dir:") {
        return Err(format!("swhid {swhid:?} is not a directory SWHID"));
    }
    let fallbacks = field(&v, "fallbacks")
        .as_array()
        .unwrap_or_else(|| panic!("fallbacks is not an array in {v}"))
        .iter()
        .map(|f| f.as_str().unwrap_or("?").to_owned())
        .collect();
    Ok(Disassembled {
        recipe: text(&v, "recipe"),
        tree: text(&v, "tree"),
        swhid,
        recipe_bytes: number(&v, "recipe_bytes"),
        format: text(&v, "format"),
        fallbacks,
    })
}

/// `sources reassemble WHAT -o out`, checked against `sha256`: the JSON and
/// the bytes on disk.
fn reassemble(ipnix: &Ipnix, what: &str, out: &Path, sha256: &str) -> Result<(), String> {
    let out_str = out.to_str().expect("utf-8 path");
    let args = ["--json", "sources", "reassemble", what, "-o", out_str];
    let run = ipnix.run(&args);
    if !run.status.success() {
        return Err(format!(
            "reassemble {what} failed ({}): {}",
            run.status,
            String::from_utf8_lossy(&run.stderr).trim()
        ));
    }
    let v = json(&String::from_utf8_lossy(&run.stdout), &args);
    let bytes = std::fs::read(out).map_err(|e| format!("reassemble wrote no file: {e}"))?;
    let got = sha256_hex(&bytes);
    if got != sha256 {
        return Err(format!(
            "reassembled {} bytes with sha256 {got}, want {sha256}",
            bytes.len()
        ));
    }
    if text(&v, "sha256") != sha256 || number(&v, "bytes") != bytes.len() as u64 {
        return Err(format!("reassemble's JSON disagrees with the file: {v}"));
    }
    std::fs::remove_file(out).expect("remove the reassembled copy");
    Ok(())
}

/// `dag export RECIPE` from `from`, `dag import` (pinning, so the store
/// checks the DAG is whole) into a fresh repo, and reassembly there.
fn reassemble_in_fresh_repo(
    from: &Ipnix,
    recipe: &str,
    work: &Path,
    file: &TarballFile,
) -> Result<(), String> {
    let car = work.join("recipe.car");
    let export = from.run(&["dag", "export", recipe]);
    if !export.status.success() {
        return Err(format!(
            "dag export {recipe}: {}",
            String::from_utf8_lossy(&export.stderr).trim()
        ));
    }
    std::fs::write(&car, &export.stdout).expect("write the CAR");
    let fresh = Ipnix::new();
    let import = fresh.run(&["dag", "import", car.to_str().expect("utf-8")]);
    if !import.status.success() {
        return Err(format!(
            "dag import of the recipe's CAR into a fresh repo: {}",
            String::from_utf8_lossy(&import.stderr).trim()
        ));
    }
    std::fs::remove_file(&car).expect("remove the CAR");
    reassemble(&fresh, recipe, &work.join("fresh-out"), &file.sha256)
}

struct Row {
    file: TarballFile,
    outcome: Result<Disassembled, String>,
    fresh_repo: bool,
}

/// Every [`THOROUGH_EVERY`]th file is also rebuilt by its hash and in a
/// fresh repo: each rebuild costs as much as the first, and CI's time is
/// bounded (the bench rebuilds every file every way).
const THOROUGH_EVERY: usize = 4;

fn round_trip(
    ipnix: &Ipnix,
    file: &TarballFile,
    work: &Path,
    thorough: bool,
) -> Result<Disassembled, String> {
    // A copy, so deleting "the tarball" never touches the corpus cache.
    let copy = work.join(&file.file_name);
    std::fs::copy(&file.path, &copy).map_err(|e| format!("copy: {e}"))?;
    let made = disassemble(ipnix, &copy)?;
    std::fs::remove_file(&copy).expect("delete the tarball");
    reassemble(ipnix, &made.recipe, &work.join("out"), &file.sha256)?;
    if thorough {
        // By the tarball's hash as well as by the recipe's CID.
        reassemble(ipnix, &file.hash_arg(), &work.join("out"), &file.sha256)?;
    }
    Ok(made)
}

#[test]
fn every_corpus_tarball_reassembles_byte_identical() {
    let test = "every_corpus_tarball_reassembles_byte_identical";
    let Some(corpus) = tarball_corpus::load_or_skip(test) else {
        return;
    };
    assert!(
        corpus.files.len() >= 40,
        "the corpus should hold at least 40 files"
    );
    let ipnix = Ipnix::new();
    let work = tempfile::tempdir().expect("tempdir");
    let mut rows = Vec::new();
    for (i, file) in corpus.files.iter().enumerate() {
        let thorough = i % THOROUGH_EVERY == 0;
        let mut outcome = round_trip(&ipnix, file, work.path(), thorough);
        if let Ok(made) = &outcome {
            if made.format != file.format {
                outcome = Err(format!(
                    "format {:?}, the manifest says {:?}",
                    made.format, file.format
                ));
            }
        }
        let mut fresh_repo = false;
        if let (Ok(made), true) = (&outcome, thorough) {
            if let Err(e) = reassemble_in_fresh_repo(&ipnix, &made.recipe, work.path(), file) {
                outcome = Err(format!("in a fresh repo with only the recipe's CAR: {e}"));
            } else {
                fresh_repo = true;
            }
        }
        rows.push(Row {
            file: file.clone(),
            outcome,
            fresh_repo,
        });
    }

    println!(
        "{:<34} {:<9} {:<14} {:<7} {:>10} {:>8} {:>6}  {:<6} fallbacks / error",
        "file", "origin", "made by", "format", "bytes", "recipe", "%", "fresh"
    );
    let mut failures = Vec::new();
    let (mut total, mut recipe_total, mut exact) = (0u64, 0u64, 0usize);
    let mut recipe_sizes = Vec::new();
    for row in &rows {
        let f = &row.file;
        let head = format!(
            "{:<34} {:<9} {:<14} {:<7} {:>10}",
            f.file_name, f.origin, f.made_by, f.format, f.size
        );
        match &row.outcome {
            Ok(made) => {
                exact += 1;
                total += f.size;
                recipe_total += made.recipe_bytes;
                recipe_sizes.push(made.recipe_bytes);
                let fallbacks = if made.fallbacks.is_empty() {
                    "-".to_owned()
                } else {
                    made.fallbacks.join(",")
                };
                println!(
                    "{head} {:>8} {:>6.2}  {:<6} {fallbacks}  {}",
                    made.recipe_bytes,
                    100.0 * made.recipe_bytes as f64 / f.size as f64,
                    if row.fresh_repo { "yes" } else { "no" },
                    made.swhid,
                );
                assert!(
                    made.tree.parse::<Cid>().is_ok(),
                    "tree {} is a CID",
                    made.tree
                );
            }
            // Zip is the stretch goal: a clean refusal is reported, not failed.
            Err(e) if f.format == "zip" && e.starts_with("disassemble failed") => {
                println!("{head} {:>8} {:>6}  {:<6} refused: {e}", "-", "-", "-");
            }
            Err(e) => {
                println!("{head} {:>8} {:>6}  {:<6} FAILED: {e}", "-", "-", "-");
                failures.push(format!("{}: {e}", f.file_name));
            }
        }
    }
    recipe_sizes.sort_unstable();
    let median = recipe_sizes
        .get(recipe_sizes.len() / 2)
        .copied()
        .unwrap_or(0);
    println!(
        "{exact} of {} files exact; recipes {recipe_total} bytes for {total} bytes of tarballs ({:.2}%), median recipe {median} bytes",
        rows.len(),
        100.0 * recipe_total as f64 / total.max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "{} files did not round-trip:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// --- hostile inputs ---------------------------------------------------------------

/// One ustar header block.
fn tar_header(name: &str, typeflag: u8, size: usize, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mode: &[u8] = if typeflag == b'5' {
        b"0000755\0"
    } else {
        b"0000644\0"
    };
    h[100..108].copy_from_slice(mode);
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14350440000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar member: name, typeflag, contents (a file) or link target.
type Member = (&'static str, u8, &'static str);

/// A tar of `members`.
fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, typeflag, body) in members {
        let is_file = *typeflag == b'0';
        let size = if is_file { body.len() } else { 0 };
        let link = if is_file { "" } else { body };
        out.extend_from_slice(&tar_header(name, *typeflag, size, link));
        if is_file {
            out.extend_from_slice(body.as_bytes());
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(path: &Path) -> PathBuf {
    let status = std::process::Command::new("gzip")
        .args(["-n", "-k", "-f"])
        .arg(path)
        .status()
        .expect("gzip runs");
    assert!(status.success(), "gzip {}", path.display());
    PathBuf::from(format!("{}.gz", path.display()))
}

#[test]
fn archives_with_path_escapes_are_refused_and_pin_nothing() {
    let cases: [(&str, Vec<Member>); 5] = [
        (
            "parent-dir",
            vec![("pkg/", b'5', ""), ("pkg/../../evil", b'0', "escaped\n")],
        ),
        ("absolute", vec![("/tmp/ipnix-evil", b'0', "escaped\n")]),
        (
            "symlink-escape",
            vec![("pkg/", b'5', ""), ("pkg/link", b'2', "../../etc/passwd")],
        ),
        (
            "symlink-absolute",
            vec![("pkg/", b'5', ""), ("pkg/link", b'2', "/etc/passwd")],
        ),
        (
            "write-through-symlink",
            vec![
                ("pkg/", b'5', ""),
                ("pkg/up", b'2', ".."),
                ("pkg/up/evil", b'0', "escaped\n"),
            ],
        ),
    ];
    let work = tempfile::tempdir().expect("tempdir");
    for (label, members) in cases {
        let plain = work.path().join(format!("{label}.tar"));
        std::fs::write(&plain, tar(&members)).expect("write tar");
        for archive in [plain.clone(), gzip(&plain)] {
            let ipnix = Ipnix::new();
            let path = archive.to_str().expect("utf-8");
            let args = ["sources", "disassemble", path];
            let err = ipnix.fails(&args);
            assert!(
                err.to_lowercase().contains("unsafe"),
                "{label}: disassemble should call the archive unsafe, said: {err}"
            );
            let pins = ipnix.ok(&["pin", "ls"]);
            assert!(
                pins.trim().is_empty(),
                "{label}: a refused archive left pins: {pins}"
            );
            // `sources add --unpack` (what `sources pin` does) refuses it for
            // the same reason, which it records in the list it pins.
            let pin_args = [
                "sources",
                "add",
                "--file",
                path,
                "--unpack",
                "--hash",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ];
            ipnix.fails(&pin_args);
            let entry = json(
                &ipnix.ok(&["--json", "sources", "ls", "added"]),
                &["sources", "ls"],
            );
            assert_eq!(text(&entry, "reason"), "unsafe-archive", "{label}: {entry}");
            let detail = text(&entry, "detail");
            assert!(
                err.contains(&detail),
                "{label}: disassemble said {err:?}, sources add said {detail:?}"
            );
            assert!(
                !Path::new("/tmp/ipnix-evil").exists() && !work.path().join("evil").exists(),
                "{label}: something was written outside"
            );
        }
    }
}

/// A small real tarball made by GNU tar from a few files.
fn small_tarball(dir: &Path) -> PathBuf {
    let src = dir.join("src/demo-1.0");
    std::fs::create_dir_all(src.join("doc")).expect("mkdir");
    std::fs::write(src.join("README"), "demo\n".repeat(200)).expect("write");
    std::fs::write(src.join("doc/guide.txt"), "guide text\n".repeat(300)).expect("write");
    std::fs::write(src.join("main.c"), "int main(void) { return 0; }\n").expect("write");
    let tarball = dir.join("demo-1.0.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir.join("src"))
        .arg("demo-1.0")
        .status()
        .expect("tar runs");
    assert!(status.success());
    tarball
}

fn read_varint(data: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = data[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long");
}

fn write_varint(mut value: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The blocks of a CAR v1 (header bytes, then `(cid, data)` in order).
fn car_blocks(car: &[u8]) -> (Vec<u8>, Vec<(Cid, Vec<u8>)>) {
    let mut at = 0;
    let header_len = read_varint(car, &mut at) as usize;
    let header = car[..at + header_len].to_vec();
    at += header_len;
    let mut blocks = Vec::new();
    while at < car.len() {
        let len = read_varint(car, &mut at) as usize;
        let section = &car[at..at + len];
        let mut cursor = std::io::Cursor::new(section);
        let cid = Cid::read_bytes(&mut cursor).expect("CID in CAR");
        let data = section[cursor.position() as usize..].to_vec();
        blocks.push((cid, data));
        at += len;
    }
    (header, blocks)
}

fn car_without(header: &[u8], blocks: &[(Cid, Vec<u8>)], drop: &Cid) -> Vec<u8> {
    let mut out = header.to_vec();
    for (cid, data) in blocks.iter().filter(|(c, _)| c != drop) {
        let cid_bytes = cid.to_bytes();
        write_varint((cid_bytes.len() + data.len()) as u64, &mut out);
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(data);
    }
    out
}

#[test]
fn a_recipe_whose_tree_lost_blocks_gives_a_clear_error_and_no_file() {
    let work = tempfile::tempdir().expect("tempdir");
    let tarball = small_tarball(work.path());
    let sha256 = sha256_hex(&std::fs::read(&tarball).expect("read"));
    let ipnix = Ipnix::new();
    let made = disassemble(&ipnix, &tarball).expect("disassemble a GNU tar.gz");
    let car = ipnix.ok_bytes(&["dag", "export", &made.recipe]);
    let (header, blocks) = car_blocks(&car);
    let tree: Cid = made.tree.parse().expect("tree CID");
    assert!(
        blocks.iter().any(|(c, _)| *c == tree),
        "the recipe's CAR carries its tree"
    );
    // A file of the tree: a git blob object other than the root tree.
    let blob = blocks
        .iter()
        .find(|(c, d)| c.codec() == GIT_RAW && *c != tree && d.starts_with(b"blob "))
        .map(|(c, _)| *c)
        .expect("the CAR holds a git blob");
    let kept: BTreeSet<String> = blocks.iter().map(|(c, _)| c.to_string()).collect();
    assert!(kept.contains(&made.recipe));

    for (label, drop) in [("tree root", tree), ("a file of the tree", blob)] {
        let damaged = car_without(&header, &blocks, &drop);
        let car_path = work.path().join("damaged.car");
        std::fs::write(&car_path, damaged).expect("write CAR");
        let fresh = Ipnix::new();
        let car_arg = car_path.to_str().expect("utf-8");
        // Pinning an incomplete DAG is refused; the blocks go in unpinned.
        fresh.fails(&["dag", "import", car_arg]);
        fresh.ok(&["dag", "import", "--pin-roots=false", car_arg]);
        let out = work.path().join("out.tar.gz");
        let out_arg = out.to_str().expect("utf-8");
        for what in [made.recipe.as_str(), &format!("sha256:{sha256}")] {
            let args = ["sources", "reassemble", what, "-o", out_arg];
            let run = fresh.run(&args);
            let err = assert_clean_failure(&run, &args);
            if what == made.recipe {
                assert!(
                    err.contains(&drop.to_string())
                        || err.to_lowercase().contains("missing")
                        || err.to_lowercase().contains("not found")
                        || err.to_lowercase().contains("not available")
                        || err.to_lowercase().contains("lacks")
                        || err.to_lowercase().contains("not in"),
                    "{label}: the error should say what is missing: {err}"
                );
            }
            assert!(!out.exists(), "{label}: reassemble left {out_arg}");
            let leftovers: Vec<_> = std::fs::read_dir(work.path())
                .expect("read work dir")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("out"))
                .collect();
            assert!(
                leftovers.is_empty(),
                "{label}: temporaries left: {leftovers:?}"
            );
        }
    }

    // The intact recipe in the original repo still works, and an unknown hash is a clear error.
    reassemble(
        &ipnix,
        &made.recipe,
        &work.path().join("out.tar.gz"),
        &sha256,
    )
    .expect("the intact recipe reassembles");
    let out = work.path().join("nothing.tar.gz");
    let unknown = format!("sha256:{}", "ab".repeat(32));
    ipnix.fails(&[
        "sources",
        "reassemble",
        &unknown,
        "-o",
        out.to_str().expect("utf-8"),
    ]);
    assert!(!out.exists());
}

/// A tar bomb by count: 2^17 members (64 MiB of headers, 0.2 MiB gzipped).
/// Either it is refused with a clear error and nothing pinned, or (should
/// the caps grow) it round-trips exactly; never a crash or a half state.
#[test]
fn a_tarball_with_a_flood_of_members_is_refused_or_exact() {
    let work = tempfile::tempdir().expect("tempdir");
    let mut raw = Vec::with_capacity((1 << 17) * 512 + 1024);
    for i in 0..(1u32 << 17) {
        let name = format!("bomb/d{}/f{i}", i / 1000);
        raw.extend_from_slice(&tar_header(&name, b'0', 0, ""));
    }
    raw.resize(raw.len() + 1024, 0);
    let plain = work.path().join("bomb.tar");
    std::fs::write(&plain, &raw).expect("write");
    drop(raw);
    let archive = gzip(&plain);
    std::fs::remove_file(&plain).expect("rm");
    let sha256 = sha256_hex(&std::fs::read(&archive).expect("read"));
    let ipnix = Ipnix::new();
    match disassemble(&ipnix, &archive) {
        Err(e) => {
            println!("refused: {e}");
            assert!(!e.contains("panicked"), "{e}");
            let pins = ipnix.ok(&["pin", "ls"]);
            assert!(
                pins.trim().is_empty(),
                "a refused archive left pins: {pins}"
            );
        }
        Ok(made) => {
            println!("accepted: recipe {} bytes", made.recipe_bytes);
            std::fs::remove_file(&archive).expect("rm");
            reassemble(&ipnix, &made.recipe, &work.path().join("out"), &sha256)
                .expect("an accepted flood round-trips");
        }
    }
}
