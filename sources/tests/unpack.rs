//! The unpacker against real tools and real archives, and against hostile
//! ones. Each good archive is unpacked by `ipnix_sources::unpack`, dumped
//! with `ipnix_bridge::dump::dump_path`, and the NAR's sha256 compared with
//! `nix-hash` of the same archive unpacked by GNU tar / Info-ZIP unzip and
//! stripped the same way, and with `nix-prefetch-url --unpack file://…`
//! (fetchzip's hash). Hostile archives must fail with the right reason,
//! leave nothing outside the destination and remove the destination
//! (invariant: no write outside the destination).

use ipnix_bridge::dump::dump_path;
use ipnix_bridge::hash::nix32_encode;
use ipnix_sources::unpack::{
    detect, unpack, unpack_from, ArchiveFormat, Limit, UnpackError, UnpackLimits, UnsafeReason,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256, Sha512};
use std::ffi::OsStr;
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NIX_CONFIG: &str = "substituters =\ntrusted-substituters =";

fn tool_works(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn nix_missing() -> Option<&'static str> {
    for tool in ["nix-hash", "nix-prefetch-url", "nix-store"] {
        if !tool_works(tool, "--version") {
            return Some("Nix (nix-hash, nix-prefetch-url) is not installed");
        }
    }
    None
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn nar_sha256(path: &Path) -> String {
    let mut hasher = Sha256Writer(Sha256::new());
    let summary = dump_path(path, &mut hasher).expect("dump");
    let digest: [u8; 32] = hasher.0.finalize().into();
    assert_eq!(digest, summary.sha256);
    nix32_encode(&digest)
}

struct Sha256Writer(Sha256);
impl Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn nix_hash(path: &Path) -> String {
    let out = run(Command::new("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(path)
        .env("NIX_CONFIG", NIX_CONFIG));
    String::from_utf8_lossy(&out).trim().to_owned()
}

/// fetchzip's hash: `nix-prefetch-url --unpack` of a local file, no network.
fn prefetch_unpack(archive: &Path, scratch: &Path) -> String {
    let tmp = scratch.join("nix-tmp");
    let cache = scratch.join("nix-cache");
    fs::create_dir_all(&tmp).expect("tmp");
    fs::create_dir_all(&cache).expect("cache");
    let url = format!("file://{}", archive.display());
    let out = run(Command::new("nix-prefetch-url")
        .args(["--unpack", "--name", "source", &url])
        .env("NIX_CONFIG", NIX_CONFIG)
        .env("TMPDIR", &tmp)
        .env("XDG_CACHE_HOME", &cache)
        .env_remove("NIX_REMOTE"));
    String::from_utf8_lossy(&out).trim().to_owned()
}

/// The directory a real tool unpacked, stripped like fetchzip.
fn strip(dir: &Path) -> PathBuf {
    let entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").path())
        .collect();
    match entries.as_slice() {
        [only] if fs::symlink_metadata(only).expect("lstat").is_dir() => only.clone(),
        _ => dir.to_owned(),
    }
}

fn reference_unpack(archive: &Path, format: ArchiveFormat, into: &Path) -> PathBuf {
    fs::create_dir(into).expect("mkdir");
    match format {
        ArchiveFormat::Zip => run(Command::new("unzip")
            .arg("-q")
            .arg(archive)
            .arg("-d")
            .arg(into)),
        _ => run(Command::new("tar")
            .arg("-xf")
            .arg(archive)
            .arg("-C")
            .arg(into)),
    };
    strip(into)
}

/// Unpacks `archive` with ipnix and with the real tool, and checks the NAR
/// hashes agree with each other, with `nix-hash` and (for archives with one
/// top-level directory, which is what `nix-prefetch-url --unpack` needs)
/// with `nix-prefetch-url --unpack`.
fn check_against_real_tools(archive: &Path, expected: ArchiveFormat, single_top: bool) -> String {
    let scratch = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        detect(archive).expect("detect"),
        expected,
        "{}",
        archive.display()
    );
    let dest = scratch.path().join("ours");
    let unpacked = unpack(archive, &dest, &UnpackLimits::default())
        .unwrap_or_else(|e| panic!("unpack {}: {e}", archive.display()));
    assert_eq!(unpacked.format, expected);
    assert_eq!(unpacked.root != dest, single_top, "{}", archive.display());
    let ours = nar_sha256(&unpacked.root);
    let reference = reference_unpack(archive, expected, &scratch.path().join("theirs"));
    assert_eq!(
        ours,
        nix_hash(&reference),
        "{} vs the real tool",
        archive.display()
    );
    assert_eq!(ours, nix_hash(&unpacked.root));
    if single_top {
        assert_eq!(
            ours,
            prefetch_unpack(archive, scratch.path()),
            "{} vs nix-prefetch-url --unpack",
            archive.display()
        );
    }
    ours
}

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A source tree with what real tarballs hold: executables, an empty file
/// and directory, nesting, relative symlinks, a hardlink, a long name
/// (GNU long name / pax path), non-ASCII names.
fn sample_tree(top: &Path) {
    fs::create_dir_all(top.join("src/deep/er")).expect("dirs");
    fs::create_dir(top.join("empty-dir")).expect("dir");
    write_file(&top.join("README"), b"read me\n", 0o644);
    write_file(&top.join("configure"), b"#!/bin/sh\nexit 0\n", 0o755);
    write_file(&top.join("empty"), b"", 0o644);
    write_file(&top.join("src/main.c"), &[b'c'; 10_000], 0o644);
    write_file(&top.join("src/deep/er/tool"), b"tool", 0o751);
    write_file(&top.join("naïve café.txt"), b"unicode", 0o644);
    symlink("src/main.c", top.join("link-to-main")).expect("symlink");
    symlink("../../README", top.join("src/deep/readme-link")).expect("symlink");
    fs::hard_link(top.join("README"), top.join("README.hard")).expect("hardlink");
    let long_dir = top.join("d".repeat(90));
    fs::create_dir(&long_dir).expect("long dir");
    write_file(&long_dir.join("f".repeat(120)), b"long", 0o644);
}

#[test]
fn gnu_tar_archives_match_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: gnu_tar_archives_match_nix: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("src");
    sample_tree(&src.join("pkg-1.0"));
    let mut hashes = Vec::new();
    let variants: &[(&str, &[&str], ArchiveFormat)] = &[
        ("gnu.tar", &["--format=gnu", "-cf"], ArchiveFormat::Tar),
        ("pax.tar", &["--format=pax", "-cf"], ArchiveFormat::Tar),
        ("t.tar.gz", &["-czf"], ArchiveFormat::TarGz),
        ("t.tar.bz2", &["-cjf"], ArchiveFormat::TarBz2),
        ("t.tar.xz", &["-cJf"], ArchiveFormat::TarXz),
        ("t.tar.zst", &["--zstd", "-cf"], ArchiveFormat::TarZst),
    ];
    for (name, flags, format) in variants {
        if *format == ArchiveFormat::TarZst && !tool_works("zstd", "--version") {
            eprintln!("SKIP: gnu_tar_archives_match_nix (zstd part): zstd is not installed");
            continue;
        }
        let archive = tmp.path().join(name);
        run(Command::new("tar")
            .args(*flags)
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg("pkg-1.0"));
        hashes.push(check_against_real_tools(&archive, *format, true));
    }
    // Every container of the same tree gives the same NAR.
    hashes.dedup();
    assert_eq!(hashes.len(), 1, "{hashes:?}");

    // Several top-level entries: the tree is the destination itself.
    let multi = tmp.path().join("multi.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&multi)
        .arg("-C")
        .arg(src.join("pkg-1.0"))
        .arg("."));
    check_against_real_tools(&multi, ArchiveFormat::TarGz, false);
}

#[test]
fn git_archive_tarballs_match_nix() {
    // What fetchFromGitHub downloads: `git archive` output, which starts
    // with a pax global header holding the commit id.
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: git_archive_tarballs_match_nix: {reason}");
        return;
    }
    if !tool_works("git", "--version") {
        eprintln!("SKIP: git_archive_tarballs_match_nix: git is not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    sample_tree(&repo);
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&repo))
    };
    git(&["init", "-q"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "sample"]);
    let archive = tmp.path().join("repo-abc.tar.gz");
    git(&[
        "archive",
        "--format=tar.gz",
        "--prefix=repo-abc/",
        "-o",
        archive.to_str().expect("utf-8 temp path"),
        "HEAD",
    ]);
    check_against_real_tools(&archive, ArchiveFormat::TarGz, true);
}

#[test]
fn zip_archives_match_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: zip_archives_match_nix: {reason}");
        return;
    }
    if !tool_works("zip", "-v") || !tool_works("unzip", "-v") {
        eprintln!("SKIP: zip_archives_match_nix: zip/unzip are not installed");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("src");
    sample_tree(&src.join("pkg-1.0"));
    let archive = tmp.path().join("t.zip");
    // -y stores symlinks as symlinks (unix mode S_IFLNK); -X keeps it plain.
    run(Command::new("zip")
        .args(["-q", "-r", "-y"])
        .arg(&archive)
        .arg("pkg-1.0")
        .current_dir(&src));
    check_against_real_tools(&archive, ArchiveFormat::Zip, true);
}

#[test]
fn concatenated_gzip_members_are_one_stream() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: concatenated_gzip_members_are_one_stream: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("src");
    sample_tree(&src.join("pkg"));
    let tar = run(Command::new("tar")
        .arg("-cf")
        .arg("-")
        .arg("-C")
        .arg(&src)
        .arg("pkg"));
    // pigz/bgzip style: the tar stream cut in two, each half its own member.
    let mut archive = Vec::new();
    for half in [&tar[..tar.len() / 2], &tar[tar.len() / 2..]] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(half).expect("gzip");
        archive.extend(gz.finish().expect("gzip"));
    }
    let path = tmp.path().join("multi-member.tar.gz");
    fs::write(&path, &archive).expect("write");
    check_against_real_tools(&path, ArchiveFormat::TarGz, true);
}

#[test]
fn cargo_crates_match_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: cargo_crates_match_nix: {reason}");
        return;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut crates: Vec<PathBuf> = home
        .map(|h| h.join("registry/cache"))
        .and_then(|cache| fs::read_dir(cache).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|index| fs::read_dir(index.path()).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension() == Some(OsStr::new("crate")))
        .collect();
    if crates.is_empty() {
        eprintln!("SKIP: cargo_crates_match_nix: no .crate files in the cargo registry cache");
        return;
    }
    crates.sort();
    // The crates this crate unpacks with, plus a spread of others.
    let wanted = ["tar-", "zip-", "flate2-", "libc-", "serde-1", "syn-2"];
    let mut picked: Vec<PathBuf> = crates
        .iter()
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            wanted.iter().any(|w| name.starts_with(w))
        })
        .cloned()
        .collect();
    picked.extend(crates.iter().step_by((crates.len() / 6).max(1)).cloned());
    picked.sort();
    picked.dedup();
    for krate in &picked {
        check_against_real_tools(krate, ArchiveFormat::TarGz, true);
    }
    eprintln!("checked {} .crate files", picked.len());
}

/// A registry download cached under the target dir (the tests run without
/// network in the sandbox; a run with network fills the cache), verified
/// against the registry's published hash before use.
fn registry_archive(
    file: &str,
    fetch: &mut Command,
    check: impl Fn(&[u8]) -> bool,
) -> Result<PathBuf, String> {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("registry-archives");
    fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
    let path = cache.join(file);
    if !path.exists() {
        let out = fetch
            .current_dir(&cache)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {fetch:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{fetch:?} failed (no network?): {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
    }
    let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !check(&bytes) {
        let _ = fs::remove_file(&path);
        return Err(format!("{file} does not match the registry's hash"));
    }
    Ok(path)
}

#[test]
fn pypi_sdist_matches_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: pypi_sdist_matches_nix: {reason}");
        return;
    }
    // sha256 from PyPI's metadata for six-1.16.0.tar.gz.
    let expected = "1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926";
    let archive = registry_archive(
        "six-1.16.0.tar.gz",
        Command::new("pip").args([
            "download",
            "--retries",
            "0",
            "--timeout",
            "10",
            "--no-deps",
            "--no-binary",
            ":all:",
            "six==1.16.0",
            "-d",
            ".",
        ]),
        |bytes| hex::encode(Sha256::digest(bytes)) == expected,
    );
    match archive {
        Ok(archive) => {
            check_against_real_tools(&archive, ArchiveFormat::TarGz, true);
        }
        Err(reason) => eprintln!("SKIP: pypi_sdist_matches_nix: {reason}"),
    }
}

#[test]
fn npm_tarball_matches_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: npm_tarball_matches_nix: {reason}");
        return;
    }
    // `npm view is-number@7.0.0 dist.integrity`.
    let integrity =
        "41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==";
    let archive = registry_archive(
        "is-number-7.0.0.tgz",
        Command::new("npm").args([
            "pack",
            "--fetch-retries=0",
            "--fetch-timeout=10000",
            "is-number@7.0.0",
        ]),
        |bytes| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(Sha512::digest(bytes)) == integrity
        },
    );
    match archive {
        Ok(archive) => {
            check_against_real_tools(&archive, ArchiveFormat::TarGz, true);
        }
        Err(reason) => eprintln!("SKIP: npm_tarball_matches_nix: {reason}"),
    }
}

// ---------------------------------------------------------------------------
// Hostile archives, built by hand with raw header bytes.

/// One tar entry with a name and link name written as raw bytes, so the
/// tar crate's own path checks cannot refuse what an attacker would write.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &[u8],
    link: &[u8],
    mode: u32,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    {
        let gnu = header.as_gnu_mut().expect("gnu header");
        gnu.name[..name.len()].copy_from_slice(name);
        gnu.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    header.set_cksum();
    tar.append(&header, data).expect("append");
}

/// A raw tar entry: type, name, link name, contents.
type RawEntry<'a> = (tar::EntryType, &'a [u8], &'a [u8], &'a [u8]);

fn tar_of(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (kind, name, link, data) in entries {
        raw_entry(&mut tar, *kind, name, link, 0o644, data);
    }
    tar.into_inner().expect("finish")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

/// Unpacks `archive` into `work/dest` and requires failure; afterwards `work`
/// must hold nothing but what it held before (dest removed, nothing
/// written beside it).
fn refused(archive: &[u8], limits: &UnpackLimits) -> UnpackError {
    let work = tempfile::tempdir().expect("tempdir");
    let outside = work.path().join("outside");
    fs::create_dir(&outside).expect("outside");
    let dest = work.path().join("dest");
    let err = unpack_from(Cursor::new(archive), &dest, limits).expect_err("must be refused");
    let left: Vec<_> = fs::read_dir(work.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec![OsStr::new("outside").to_owned()], "after {err}");
    assert_eq!(
        fs::read_dir(&outside).expect("outside").count(),
        0,
        "after {err}"
    );
    err
}

fn assert_unsafe(err: &UnpackError, why: fn(&UnsafeReason) -> bool) {
    assert!(err.is_unsafe(), "{err}");
    assert_eq!(err.reason(), "unsafe-archive");
    match err {
        UnpackError::Unsafe { why: reason, .. } => assert!(why(reason), "{err}"),
        _ => unreachable!(),
    }
}

use tar::EntryType as T;

#[test]
fn invariant_no_write_outside_dest_parent_dir() {
    let err = refused(
        &tar_of(&[(T::Regular, b"../outside/x", b"", b"evil")]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| *r == UnsafeReason::ParentDir);
    let text = err.to_string();
    assert!(
        text.contains("../outside/x") && text.contains("byte 0"),
        "{text}"
    );
    // Deeper and disguised.
    let err = refused(
        &tar_of(&[
            (T::Regular, b"ok", b"", b"fine"),
            (T::Regular, b"a/./../../outside/y", b"", b"evil"),
        ]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| *r == UnsafeReason::ParentDir);
    assert!(err.to_string().contains("byte 1024"), "{err}");
}

#[test]
fn invariant_no_write_outside_dest_absolute() {
    let work = tempfile::tempdir().expect("tempdir");
    let target = work.path().join("abs-target");
    let name = target.as_os_str().as_bytes();
    let err = refused(
        &tar_of(&[(T::Regular, name, b"", b"evil")]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| *r == UnsafeReason::Absolute);
    assert!(!target.exists());
}

#[test]
fn invariant_no_write_through_symlinks() {
    // Absolute target: refused at the symlink itself.
    let err = refused(
        &tar_of(&[
            (T::Symlink, b"ln", b"/etc", b""),
            (T::Regular, b"ln/passwd", b"", b"evil"),
        ]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| matches!(r, UnsafeReason::SymlinkAbsolute(_)));
    // Climbing out of the tree.
    let err = refused(
        &tar_of(&[(T::Symlink, b"a/ln", b"../../outside", b"")]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| matches!(r, UnsafeReason::SymlinkEscapes(_)));
    // `x/..` could climb through a symlink `x`: refused.
    let err = refused(
        &tar_of(&[(T::Symlink, b"a/ln", b"x/../..", b"")]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| matches!(r, UnsafeReason::SymlinkClimbsLate(_)));
    // A symlink inside the tree is fine, but nothing goes through it.
    let err = refused(
        &tar_of(&[
            (T::Directory, b"sub/", b"", b""),
            (T::Symlink, b"ln", b"sub", b""),
            (T::Regular, b"ln/x", b"", b"through"),
        ]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| matches!(r, UnsafeReason::ThroughSymlink(_)));
    // Nor through a regular file.
    let err = refused(
        &tar_of(&[(T::Regular, b"f", b"", b""), (T::Regular, b"f/x", b"", b"")]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| matches!(r, UnsafeReason::ThroughNonDirectory(_)));
}

#[test]
fn hostile_hardlinks_are_refused() {
    for (link, expect) in [
        (&b"/etc/passwd"[..], "not inside the tree: absolute"),
        (b"../outside/x", "not inside the tree: `..`"),
        (b"later", "not extracted"),
        (b"dir", "is a directory"),
    ] {
        let err = refused(
            &tar_of(&[
                (T::Directory, b"dir/", b"", b""),
                (T::Link, b"hl", link, b""),
                (T::Regular, b"later", b"", b"data"),
            ]),
            &UnpackLimits::default(),
        );
        assert_unsafe(&err, |r| {
            matches!(
                r,
                UnsafeReason::HardlinkOutside(..)
                    | UnsafeReason::HardlinkMissing(_)
                    | UnsafeReason::HardlinkToDirectory(_)
            )
        });
        let shown = err.to_string();
        assert!(shown.contains(expect), "{shown}");
    }
}

#[test]
fn devices_and_fifos_are_refused() {
    for kind in [T::Char, T::Block, T::Fifo] {
        let err = refused(
            &tar_of(&[(kind, b"dev", b"", b"")]),
            &UnpackLimits::default(),
        );
        assert_unsafe(&err, |r| matches!(r, UnsafeReason::Special(_)));
    }
}

#[test]
fn gzip_bomb_hits_the_byte_cap() {
    // 20 MiB of zeros in one file: gzip makes it about 1000:1.
    let mut tar = tar::Builder::new(Vec::new());
    let zeros = vec![0u8; 20 << 20];
    raw_entry(&mut tar, T::Regular, b"bomb", b"", 0o644, &zeros);
    let archive = gzip(&tar.into_inner().expect("tar"));
    assert!(
        archive.len() * 900 < zeros.len(),
        "ratio {}",
        zeros.len() / archive.len()
    );
    let err = refused(&archive, &UnpackLimits::default().with_max_bytes(1 << 20));
    assert!(err.is_too_large(), "{err}");
    assert_eq!(err.reason(), "too-large");
    assert!(matches!(
        err,
        UnpackError::TooLarge {
            what: Limit::Bytes,
            ..
        }
    ));

    // The same with the ratio cap instead (past its 64 MiB floor).
    let mut tar = tar::Builder::new(Vec::new());
    let zeros = vec![0u8; 70 << 20];
    raw_entry(&mut tar, T::Regular, b"bomb", b"", 0o644, &zeros);
    let archive = gzip(&tar.into_inner().expect("tar"));
    let err = refused(&archive, &UnpackLimits::default().with_max_ratio(Some(100)));
    assert!(
        matches!(
            err,
            UnpackError::TooLarge {
                what: Limit::Ratio,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn too_many_entries_hit_the_entry_cap() {
    let names: Vec<Vec<u8>> = (0..50).map(|i| format!("f{i}").into_bytes()).collect();
    let entries: Vec<_> = names
        .iter()
        .map(|n| (T::Regular, n.as_slice(), &b""[..], &b""[..]))
        .collect();
    let err = refused(
        &tar_of(&entries),
        &UnpackLimits::default().with_max_entries(10),
    );
    assert!(
        matches!(
            err,
            UnpackError::TooLarge {
                what: Limit::Entries,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("f10"), "{err}");
}

#[test]
fn huge_gnu_long_name_hits_the_header_cap() {
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(
        &mut tar,
        T::GNULongName,
        b"././@LongLink",
        b"",
        0o644,
        &vec![b'a'; 3 << 20],
    );
    raw_entry(&mut tar, T::Regular, b"x", b"", 0o644, b"");
    let err = refused(
        &gzip(&tar.into_inner().expect("tar")),
        &UnpackLimits::default(),
    );
    assert!(
        matches!(
            err,
            UnpackError::TooLarge {
                what: Limit::HeaderBytes,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn hostile_zips_are_refused() {
    use zip::write::SimpleFileOptions;
    type Zip = zip::ZipWriter<Cursor<Vec<u8>>>;
    let build = |f: &dyn Fn(&mut Zip)| {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        f(&mut zip);
        zip.finish().expect("zip").into_inner()
    };
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let err = refused(
        &build(&|z| {
            z.start_file("../outside/evil", opts).expect("start");
            z.write_all(b"evil").expect("write");
        }),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| *r == UnsafeReason::ParentDir);
    assert!(err.to_string().contains("zip entry #0"), "{err}");
    let err = refused(
        &build(&|z| {
            z.add_symlink("ln", "/etc", opts).expect("symlink");
            z.start_file("ln/passwd", opts).expect("start");
            z.write_all(b"evil").expect("write");
        }),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| matches!(r, UnsafeReason::SymlinkAbsolute(_)));
    let err = refused(
        &build(&|z| {
            z.start_file("bomb", SimpleFileOptions::default())
                .expect("start");
            z.write_all(&vec![0u8; 8 << 20]).expect("write");
        }),
        &UnpackLimits::default().with_max_bytes(1 << 20),
    );
    assert!(err.is_too_large(), "{err}");
}

#[test]
fn paths_deeper_than_a_nar_allows_are_refused() {
    let mut tar = tar::Builder::new(Vec::new());
    let deep = format!("{}f", "d/".repeat(300));
    let mut header = tar::Header::new_gnu();
    header.set_size(1);
    header.set_mode(0o644);
    // The tar crate writes a GNU long name for it.
    tar.append_data(&mut header, &deep, &b"x"[..])
        .expect("append");
    let err = refused(&tar.into_inner().expect("tar"), &UnpackLimits::default());
    assert_eq!(err.reason(), "unsupported", "{err}");
}

#[test]
fn garbage_and_truncation_are_unsupported_or_corrupt() {
    let err = refused(b"this is not an archive at all", &UnpackLimits::default());
    assert_eq!(err.reason(), "unsupported", "{err}");
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, T::Regular, b"f", b"", 0o644, &[5u8; 100_000]);
    let archive = gzip(&tar.into_inner().expect("tar"));
    let err = refused(&archive[..archive.len() / 2], &UnpackLimits::default());
    assert_eq!(err.reason(), "corrupt", "{err}");
}

#[test]
fn existing_destination_is_left_alone() {
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("dest");
    fs::create_dir(&dest).expect("dest");
    fs::write(dest.join("keep"), b"mine").expect("keep");
    let archive = tar_of(&[(T::Regular, b"f", b"", b"x")]);
    let err =
        unpack_from(Cursor::new(archive), &dest, &UnpackLimits::default()).expect_err("exists");
    assert!(matches!(err, UnpackError::Exists(_)), "{err}");
    assert_eq!(err.reason(), "io");
    assert_eq!(fs::read(dest.join("keep")).expect("kept"), b"mine");
}

// ---------------------------------------------------------------------------
// Odd but legal archives.

fn unpack_bytes(archive: &[u8]) -> (tempfile::TempDir, ipnix_sources::unpack::Unpacked) {
    let work = tempfile::tempdir().expect("tempdir");
    let dest = work.path().join("dest");
    let unpacked =
        unpack_from(Cursor::new(archive), &dest, &UnpackLimits::default()).expect("unpack");
    (work, unpacked)
}

#[test]
fn duplicates_last_one_wins_like_gnu_tar() {
    let (_work, out) = unpack_bytes(&tar_of(&[
        (T::Regular, b"top/a", b"", b"first"),
        (T::Regular, b"top/a", b"", b"second"),
        (T::Symlink, b"top/s", b"a", b""),
        (T::Regular, b"top/s", b"", b"file now"),
        (T::Regular, b"top/d", b"", b"file first"),
        (T::Directory, b"top/d/", b"", b""),
        (T::Directory, b"top/", b"", b""),
    ]));
    assert_eq!(fs::read(out.root.join("a")).expect("a"), b"second");
    assert_eq!(fs::read(out.root.join("s")).expect("s"), b"file now");
    assert!(fs::symlink_metadata(out.root.join("d"))
        .expect("d")
        .is_dir());
    // A file may not replace a non-empty directory (GNU tar fails too).
    let err = refused(
        &tar_of(&[(T::Regular, b"d/x", b"", b""), (T::Regular, b"d", b"", b"")]),
        &UnpackLimits::default(),
    );
    assert_unsafe(&err, |r| *r == UnsafeReason::ReplacesDirectory);
}

#[test]
fn implied_directories_hardlink_copies_and_modes() {
    let mut tar = tar::Builder::new(Vec::new());
    raw_entry(&mut tar, T::Regular, b"./top/x/y/z", b"", 0o700, b"exec");
    raw_entry(&mut tar, T::Link, b"top/hl", b"top/x/y/z", 0o644, b"");
    raw_entry(&mut tar, T::Regular, b"top/group-x", b"", 0o071, b"g");
    raw_entry(&mut tar, T::Directory, b"top/x/", b"", 0o500, b"");
    let (work, out) = unpack_bytes(&tar.into_inner().expect("tar"));
    assert_eq!(out.root, work.path().join("dest/top"));
    assert_eq!(out.files, 3);
    assert_eq!(out.bytes, 9);
    let mode = |p: &str| {
        fs::symlink_metadata(out.root.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("x/y/z"), 0o755);
    assert_eq!(mode("hl"), 0o755);
    assert_eq!(mode("group-x"), 0o644);
    assert_eq!(mode("x"), 0o755);
    assert_eq!(fs::read(out.root.join("hl")).expect("hl"), b"exec");
    // A copy, not a hardlink: a NAR has none.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(out.root.join("hl")).expect("hl").nlink(), 1);
}

#[test]
fn pax_global_header_is_skipped() {
    // What `git archive` (and so GitHub's tarballs) writes first.
    let mut tar = tar::Builder::new(Vec::new());
    let record = b"52 comment=0123456789abcdef0123456789abcdef01234567\n";
    raw_entry(
        &mut tar,
        T::XGlobalHeader,
        b"pax_global_header",
        b"",
        0o644,
        record,
    );
    raw_entry(&mut tar, T::Directory, b"repo-abc/", b"", 0o755, b"");
    raw_entry(&mut tar, T::Regular, b"repo-abc/f", b"", 0o644, b"f");
    let (work, out) = unpack_bytes(&tar.into_inner().expect("tar"));
    assert_eq!(out.root, work.path().join("dest/repo-abc"));
}

#[test]
fn empty_tar_gives_an_empty_tree() {
    let archive = tar::Builder::new(Vec::new()).into_inner().expect("tar");
    let (work, out) = unpack_bytes(&archive);
    assert_eq!(out.root, work.path().join("dest"));
    assert_eq!(fs::read_dir(&out.root).expect("dir").count(), 0);
}

// ---------------------------------------------------------------------------
// Random safe trees: tar -> unpack -> dump equals dump of the original.

#[derive(Debug, Clone)]
enum Tree {
    File(Vec<u8>, bool),
    Link(String),
    Dir(Vec<(String, Tree)>),
}

fn tree_strategy() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        (
            proptest::collection::vec(any::<u8>(), 0..600),
            any::<bool>()
        )
            .prop_map(|(d, x)| Tree::File(d, x)),
        "[a-z]{1,3}(/[a-z]{1,3})?".prop_map(Tree::Link),
        "(\\.\\./)?[a-z]{1,3}".prop_map(Tree::Link),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        proptest::collection::btree_map("[a-zA-Z0-9_.-]{1,12}", inner, 0..6).prop_map(|m| {
            Tree::Dir(
                m.into_iter()
                    .filter(|(k, _)| k != "." && k != "..")
                    .collect(),
            )
        })
    })
}

fn materialise(tree: &Tree, path: &Path, depth: usize) {
    match tree {
        Tree::File(data, exec) => write_file(path, data, if *exec { 0o755 } else { 0o644 }),
        Tree::Link(target) => {
            // `..` only where the link's directory allows it.
            let target = if depth == 0 {
                target.trim_start_matches("../")
            } else {
                target
            };
            symlink(target, path).expect("symlink");
        }
        Tree::Dir(children) => {
            fs::create_dir(path).expect("mkdir");
            for (name, child) in children {
                materialise(child, &path.join(name), depth + 1);
            }
        }
    }
}

fn nar_bytes(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    dump_path(path, &mut out).expect("dump");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_safe_trees_round_trip(children in proptest::collection::btree_map("[a-z0-9]{1,8}", tree_strategy(), 1..5),
                                     format in 0usize..3) {
        let work = tempfile::tempdir().expect("tempdir");
        let src = work.path().join("src");
        let tree = Tree::Dir(children.into_iter().collect());
        // One top-level directory `top` inside `src`, as real tarballs have.
        fs::create_dir(&src).expect("src");
        materialise(&tree, &src.join("top"), 0);
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all("top", src.join("top")).expect("tar");
        let tar = builder.into_inner().expect("tar");
        let archive = match format {
            0 => tar,
            1 => gzip(&tar),
            _ => {
                let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
                xz.write_all(&tar).expect("xz");
                xz.finish().expect("xz")
            }
        };
        let dest = work.path().join("dest");
        let out = unpack_from(Cursor::new(archive), &dest, &UnpackLimits::default()).expect("unpack");
        prop_assert_eq!(&out.root, &dest.join("top"));
        prop_assert!(nar_bytes(&out.root) == nar_bytes(&src.join("top")), "NARs differ");
    }
}

#[test]
fn detect_reads_magic_not_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let misnamed = tmp.path().join("really-gzip.zip");
    fs::write(&misnamed, gzip(&tar_of(&[(T::Regular, b"f", b"", b"x")]))).expect("write");
    assert_eq!(detect(&misnamed).expect("detect"), ArchiveFormat::TarGz);
    let (_, out) = unpack_bytes(&fs::read(&misnamed).expect("read"));
    assert_eq!(out.format, ArchiveFormat::TarGz);
}

/// Every real registry archive of the test corpus (tests/sources-corpus.json,
/// fetched by tests/setup-sources-corpus.sh before the sandboxed run):
/// unpacked here and by the real tools, the same NAR hash, and the same as
/// `nix-prefetch-url --unpack` (fetchzip's hash).
#[test]
fn corpus_archives_match_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: corpus_archives_match_nix: {reason}");
        return;
    }
    let dir = std::env::var_os("IPNIX_CORPUS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ipnix-corpus")));
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/sources-corpus.json");
    let (Some(dir), Ok(text)) = (dir, fs::read_to_string(&manifest)) else {
        eprintln!("SKIP: corpus_archives_match_nix: no corpus (run tests/setup-sources-corpus.sh)");
        return;
    };
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    let mut checked = 0;
    for file in manifest["files"].as_array().expect("files") {
        let name = file["file"].as_str().expect("file");
        let path = dir
            .join(file["registry"].as_str().expect("registry"))
            .join(name);
        if !path.exists() {
            eprintln!(
                "SKIP: corpus_archives_match_nix: {} is missing",
                path.display()
            );
            return;
        }
        let format = if name.ends_with(".zip") {
            ArchiveFormat::Zip
        } else {
            ArchiveFormat::TarGz
        };
        // Every registry archive holds one top-level directory.
        check_against_real_tools(&path, format, true);
        checked += 1;
    }
    assert!(checked >= 20, "checked {checked} corpus archives");
}
