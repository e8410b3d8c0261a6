//! `dump_path` against the real `nix-store --dump` and `nix-hash`: byte for
//! byte on varied trees (executables, symlinks, empty files and directories,
//! nested directories, odd but legal names, names that sort differently as
//! bytes and as text), single-file and symlink roots, and the refusals
//! (FIFOs, sockets).

use ipnix_bridge::dump::{dump_path, DumpError};
use ipnix_bridge::hash::nix32_encode;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

fn nix_missing() -> Option<String> {
    for tool in ["nix-store", "nix-hash"] {
        match Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            _ => return Some(format!("{tool} is not installed")),
        }
    }
    None
}

fn nix(program: &str, args: &[&OsStr]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .env("NIX_CONFIG", "substituters =\ntrusted-substituters =")
        .env_remove("NIX_REMOTE")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Dumps with ours and with Nix and requires identical bytes and hashes.
fn assert_same_as_nix(path: &Path) {
    let mut ours = Vec::new();
    let summary = dump_path(path, &mut ours).expect("dump");
    let theirs = nix("nix-store", &["--dump".as_ref(), path.as_os_str()]);
    assert_eq!(summary.size, ours.len() as u64);
    assert!(
        ours == theirs,
        "NAR of {} differs from nix-store --dump ({} vs {} bytes)",
        path.display(),
        ours.len(),
        theirs.len()
    );
    let digest: [u8; 32] = Sha256::digest(&ours).into();
    assert_eq!(summary.sha256, digest);
    let nix_hash = nix(
        "nix-hash",
        &[
            "--type".as_ref(),
            "sha256".as_ref(),
            "--base32".as_ref(),
            path.as_os_str(),
        ],
    );
    assert_eq!(
        nix32_encode(&summary.sha256),
        String::from_utf8_lossy(&nix_hash).trim()
    );
}

fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn varied_tree(root: &Path) {
    fs::create_dir(root).expect("root");
    write(&root.join("plain"), b"hello\n", 0o644);
    write(&root.join("exec"), b"#!/bin/sh\necho hi\n", 0o755);
    // Only the owner-execute bit counts, as in Nix.
    write(&root.join("group-exec-only"), b"g", 0o654);
    write(&root.join("owner-exec-readonly"), b"r", 0o500);
    write(&root.join("empty"), b"", 0o644);
    write(&root.join("eight-bytes"), b"12345678", 0o644);
    fs::create_dir(root.join("empty-dir")).expect("dir");
    let deep = root.join("a/b/c/d");
    fs::create_dir_all(&deep).expect("deep");
    write(&deep.join("leaf"), &[7u8; 70_000], 0o755);
    symlink("plain", root.join("link-rel")).expect("symlink");
    symlink("/etc/passwd", root.join("link-abs")).expect("symlink");
    symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    symlink("a/b", root.join("link-dir")).expect("symlink");
    // Byte order, not text order: upper case before lower, `_` between.
    for name in [
        "B",
        "a_",
        "Z",
        "_",
        "é",
        "-dash",
        "with space",
        "tab\there",
        "new\nline",
        "=eq",
        "a.b.c",
        "~tilde",
        "#hash",
        "quote\"s",
        "back\\slash",
    ] {
        write(&root.join(name), name.as_bytes(), 0o644);
    }
    // Not UTF-8 at all.
    write(
        &root.join(OsStr::from_bytes(b"\xff\xfe-latin")),
        b"x",
        0o644,
    );
    let long = "n".repeat(255);
    write(&root.join(&long), b"long name", 0o644);
}

#[test]
fn varied_tree_matches_nix_store_dump() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: varied_tree_matches_nix_store_dump: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("tree");
    varied_tree(&root);
    assert_same_as_nix(&root);
    assert_same_as_nix(&root.join("a"));
    assert_same_as_nix(&root.join("empty-dir"));
}

#[test]
fn file_and_symlink_roots_match_nix() {
    if let Some(reason) = nix_missing() {
        eprintln!("SKIP: file_and_symlink_roots_match_nix: {reason}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("file");
    write(&file, b"contents", 0o644);
    assert_same_as_nix(&file);
    let exec = tmp.path().join("exec");
    write(&exec, &vec![1u8; 200_001], 0o755);
    assert_same_as_nix(&exec);
    let empty = tmp.path().join("empty");
    write(&empty, b"", 0o755);
    assert_same_as_nix(&empty);
    // A symlink root is dumped as a symlink, never followed.
    let link = tmp.path().join("link");
    symlink("file", &link).expect("symlink");
    assert_same_as_nix(&link);
}

#[test]
fn refuses_fifo_and_socket() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("tree");
    fs::create_dir(&root).expect("root");
    write(&root.join("ok"), b"ok", 0o644);
    let socket = root.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let err = dump_path(&root, std::io::sink()).expect_err("a socket is refused");
    assert!(
        matches!(&err, DumpError::UnsupportedType { kind: "socket", path } if path == &socket),
        "{err}"
    );

    let fifo_root = tmp.path().join("fifo-tree");
    fs::create_dir(&fifo_root).expect("root");
    let status = Command::new("mkfifo").arg(fifo_root.join("pipe")).status();
    match status {
        Ok(s) if s.success() => {
            let err = dump_path(&fifo_root, std::io::sink()).expect_err("a FIFO is refused");
            assert!(
                matches!(err, DumpError::UnsupportedType { kind: "FIFO", .. }),
                "{err}"
            );
        }
        _ => eprintln!("SKIP: refuses_fifo_and_socket (FIFO part): mkfifo is not available"),
    }
}

#[test]
fn missing_path_is_an_io_error_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nothing-here");
    let err = dump_path(&missing, std::io::sink()).expect_err("missing");
    assert!(
        matches!(&err, DumpError::Io { path, .. } if path == &missing),
        "{err}"
    );
}
