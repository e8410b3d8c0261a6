//! Importing from binary caches that real `nix copy --to file://...` wrote,
//! with every compression Nix 2.8 writes (none, xz, bzip2, zstd), over
//! file:// and over http on 127.0.0.1; signatures are kept, exports equal
//! `nix-store --dump`, and tampered caches are refused.

mod common;

use common::*;
use ipnix_bridge::cache_client::{CacheClient, CacheError};
use ipnix_bridge::export_nar;
use ipnix_bridge::narinfo::{NarInfo, PublicKey};
use ipnix_store::MemoryBlocks;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

struct Fixture {
    dir: tempfile::TempDir,
    top: String,
    public: PublicKey,
}

/// A closure with a large file: tiny-b (refs tiny-a, dep) plus a big tree
/// referencing nothing; `top` is b.
fn fixture(salt: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("tmp");
    let (_, b, _) = tiny_closure(dir.path(), salt);
    let secret = dir.path().join("secret.key");
    let public = dir.path().join("public.key");
    run(Command::new("nix-store")
        .args(["--generate-binary-cache-key", "ipnix-cache-test-1"])
        .arg(&secret)
        .arg(&public));
    let public = PublicKey::parse(&std::fs::read_to_string(&public).expect("key")).expect("parse");
    Fixture {
        dir,
        top: b,
        public,
    }
}

fn big_path(dir: &Path) -> String {
    let src = dir.join("ipnix-cache-big");
    write_to_disk(
        &Node::Dir(BTreeMap::from([
            (
                b"big.bin".to_vec(),
                Node::File {
                    executable: false,
                    data: Data::Pattern {
                        seed: 11,
                        len: 2_300_000,
                    },
                },
            ),
            (
                b"small".to_vec(),
                Node::File {
                    executable: true,
                    data: Data::Bytes(b"#!/bin/sh\n".to_vec()),
                },
            ),
        ])),
        &src,
    );
    nix_add(&src)
}

fn nix_copy(fx: &Fixture, compression: &str, paths: &[&str]) -> PathBuf {
    let cache = fx.dir.path().join(format!("cache-{compression}"));
    run(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
        ])
        .arg(format!(
            "file://{}?compression={compression}&secret-key={}",
            cache.display(),
            fx.dir.path().join("secret.key").display()
        ))
        .args(paths));
    cache
}

fn check_import(client: &CacheClient, fx: &Fixture, path: &str, expected_paths: usize) {
    let mut blocks = MemoryBlocks::new();
    let items = client
        .import_closure(&mut blocks, path, |_| None)
        .expect("import closure");
    assert_eq!(items.len(), expected_paths);
    assert_eq!(items.last().expect("top").path, path);
    for item in &items {
        let info = &item.imported.as_ref().expect("imported").pathinfo;
        // Signatures preserved, and still valid for the key.
        assert_eq!(info.signatures.len(), 1, "{}", item.path);
        let narinfo = NarInfo::from_pathinfo(info, "nar/x".into(), "none", None, None);
        assert_eq!(
            narinfo.verified_by(std::slice::from_ref(&fx.public)).len(),
            1
        );
        let mut out = Vec::new();
        export_nar(&blocks, &item.pathinfo_cid, &mut out).expect("export");
        assert!(
            out == nix_dump(Path::new(&item.path)),
            "{}: export differs from nix-store --dump",
            item.path
        );
    }
}

#[test]
fn file_caches_with_every_compression() {
    if !have("nix", "file_caches_with_every_compression") {
        return;
    }
    let fx = fixture("cache");
    let big = big_path(fx.dir.path());
    for compression in ["none", "xz", "bzip2", "zstd"] {
        let cache = nix_copy(&fx, compression, &[&fx.top, &big]);
        let client = CacheClient::new(&format!("file://{}", cache.display())).expect("client");
        assert_eq!(
            client.cache_info().expect("nix-cache-info").store_dir,
            "/nix/store"
        );
        check_import(&client, &fx, &fx.top, 3);
        check_import(&client, &fx, &big, 1);
        let hash_part = &big["/nix/store/".len()..][..32];
        let info = client.narinfo(hash_part).expect("fetch").expect("present");
        assert_eq!(info.compression, compression);
        // Unknown paths are absent, not errors.
        assert!(client
            .narinfo("00000000000000000000000000000000")
            .expect("fetch")
            .is_none());
    }
}

#[test]
fn tampered_caches_are_refused() {
    if !have("nix", "tampered_caches_are_refused") {
        return;
    }
    let fx = fixture("tamper");
    let big = big_path(fx.dir.path());
    let hash_part = big["/nix/store/".len()..][..32].to_owned();
    for compression in ["none", "xz"] {
        let cache = nix_copy(&fx, compression, &[&big]);
        let client = CacheClient::new(&format!("file://{}", cache.display())).expect("client");
        let narinfo_path = cache.join(format!("{hash_part}.narinfo"));
        let original = std::fs::read_to_string(&narinfo_path).expect("narinfo");
        let info = NarInfo::parse(original.as_bytes()).expect("parse");

        // Wrong NarHash: the importer refuses before writing a path-info.
        let mut bad = info.clone();
        bad.nar_hash = ipnix_bridge::NixHash::sha256([5; 32]);
        let mut blocks = MemoryBlocks::new();
        let e = client
            .import(&mut blocks, &bad, &Default::default())
            .expect_err("hash");
        assert!(
            matches!(
                e,
                CacheError::Import {
                    source: ipnix_bridge::ImportError::HashMismatch { .. },
                    ..
                }
            ),
            "{e}"
        );
        assert!(blocks
            .iter()
            .all(|(c, _)| c.codec() != ipnix_store::block::DAG_CBOR));

        // Wrong FileHash / FileSize.
        let mut bad = info.clone();
        bad.file_hash = Some(ipnix_bridge::NixHash::sha256([6; 32]));
        let e = client
            .import(&mut MemoryBlocks::new(), &bad, &Default::default())
            .expect_err("file hash");
        assert!(matches!(e, CacheError::FileHash { .. }), "{e}");
        let mut bad = info.clone();
        bad.file_size = bad.file_size.map(|s| s + 1);
        let e = client
            .import(&mut MemoryBlocks::new(), &bad, &Default::default())
            .expect_err("file size");
        assert!(matches!(e, CacheError::FileSize { .. }), "{e}");

        // Corrupted NAR file on disk.
        let nar_file = cache.join(&info.url);
        let mut bytes = std::fs::read(&nar_file).expect("nar");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&nar_file, &bytes).expect("write");
        let e = client
            .import(&mut MemoryBlocks::new(), &info, &Default::default())
            .expect_err("corrupt");
        assert!(
            matches!(e, CacheError::Import { .. } | CacheError::FileHash { .. }),
            "{e}"
        );
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// python3 -m http.server on 127.0.0.1, free port; returns (server, port).
fn serve(dir: &Path) -> Option<(Server, u16)> {
    let log = dir.join("http.log");
    let child = Command::new("python3")
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    for _ in 0..100 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = text
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
        {
            return Some((server, port));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

#[test]
fn http_cache_on_loopback() {
    if !have("nix", "http_cache_on_loopback") || !have("python3", "http_cache_on_loopback") {
        return;
    }
    let fx = fixture("http");
    let cache = nix_copy(&fx, "zstd", &[&fx.top]);
    let Some((_server, port)) = serve(cache.parent().expect("parent")) else {
        eprintln!("SKIP: http_cache_on_loopback: python http.server did not start");
        return;
    };
    let url = format!(
        "http://127.0.0.1:{port}/{}",
        cache.file_name().expect("name").to_str().expect("utf-8")
    );
    let client = CacheClient::new(&url).expect("client");
    assert_eq!(
        client.cache_info().expect("cache info").store_dir,
        "/nix/store"
    );
    check_import(&client, &fx, &fx.top, 3);
    assert!(client
        .narinfo("00000000000000000000000000000000")
        .expect("404 is None")
        .is_none());
    assert!(matches!(
        CacheClient::new("https://example.invalid"),
        Err(CacheError::BadUrl(_))
    ));
}
