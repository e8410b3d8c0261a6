//! NAR -> import -> export gives the identical NAR: over generated trees
//! (proptest), across the 1 MiB block threshold, and against real
//! `nix-store --dump` of paths added with `nix-store --add`.

mod common;

use common::*;
use ipnix_bridge::pathinfo::RootKind;
use ipnix_bridge::{export_dir, export_nar, import_nar, NixHash, PathMeta};
use ipnix_store::MemoryBlocks;
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

const STORE_PATH: &str = "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-test";

fn round_trip(nar: &[u8]) -> (MemoryBlocks, ipnix_bridge::Imported) {
    let mut blocks = MemoryBlocks::new();
    let mut meta = PathMeta::new(STORE_PATH);
    meta.expected_nar_hash = Some(NixHash::sha256(Sha256::digest(nar).into()));
    meta.expected_nar_size = Some(nar.len() as u64);
    let imported = import_nar(&mut blocks, nar, meta).expect("import");
    let mut out = Vec::new();
    let summary = export_nar(&blocks, &imported.pathinfo_cid, &mut out).expect("export");
    assert_eq!(summary.size, nar.len() as u64);
    assert!(
        out == nar,
        "exported NAR differs ({} vs {} bytes)",
        out.len(),
        nar.len()
    );
    (blocks, imported)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn generated_trees_round_trip(tree in tree_strategy(false)) {
        let nar = to_nar(&tree);
        round_trip(&nar);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn trees_with_big_files_round_trip_and_materialise(tree in tree_strategy(true)) {
        let nar = to_nar(&tree);
        let (blocks, imported) = round_trip(&nar);
        let dir = tempfile::tempdir().expect("tmp");
        let dest = dir.path().join("out");
        let summary = export_dir(&blocks, &imported.pathinfo_cid, &dest).expect("export_dir");
        prop_assert_eq!(summary.size, nar.len() as u64);
        // Re-reading the materialised tree gives the same NAR again.
        prop_assert!(disk_nar(&dest) == nar);
    }
}

/// NAR of a path on disk, rendered by our writer from the file system.
fn disk_nar(path: &Path) -> Vec<u8> {
    fn node(path: &Path) -> Node {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).expect("lstat");
        if meta.file_type().is_symlink() {
            Node::Symlink(
                std::fs::read_link(path)
                    .expect("readlink")
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if meta.is_dir() {
            let mut entries = BTreeMap::new();
            for e in std::fs::read_dir(path).expect("readdir") {
                let e = e.expect("entry");
                entries.insert(e.file_name().as_bytes().to_vec(), node(&e.path()));
            }
            Node::Dir(entries)
        } else {
            Node::File {
                executable: meta.permissions().mode() & 0o100 != 0,
                data: Data::Bytes(std::fs::read(path).expect("read")),
            }
        }
    }
    to_nar(&node(path))
}

#[test]
fn threshold_sizes_pick_the_right_representation() {
    let header = 13; // "blob 1048563\0"
    for (len, large) in [
        (0, false),
        (1_048_576 - header, false),
        (1_048_576 - header + 1, true),
        (3 * 1_048_576 + 7, true),
    ] {
        let tree = Node::File {
            executable: len % 2 == 1,
            data: Data::Pattern { seed: 7, len },
        };
        let nar = to_nar(&tree);
        let (_, imported) = round_trip(&nar);
        assert_eq!(
            imported.pathinfo.blobs.len(),
            usize::from(large),
            "len {len}"
        );
        let expected_kind = if len % 2 == 1 {
            RootKind::Executable
        } else {
            RootKind::Regular
        };
        assert_eq!(imported.pathinfo.root.kind, expected_kind);
    }
}

#[test]
fn wrong_expected_hash_is_refused_before_the_pathinfo_is_written() {
    let nar = to_nar(&Node::File {
        executable: false,
        data: Data::Bytes(b"hello".to_vec()),
    });
    let mut blocks = MemoryBlocks::new();
    let mut meta = PathMeta::new(STORE_PATH);
    meta.expected_nar_hash = Some(NixHash::sha256([0u8; 32]));
    let err = import_nar(&mut blocks, nar.as_slice(), meta).expect_err("mismatch");
    assert!(
        matches!(err, ipnix_bridge::ImportError::HashMismatch { .. }),
        "{err}"
    );
    assert!(blocks
        .iter()
        .all(|(cid, _)| cid.codec() != ipnix_store::block::DAG_CBOR));
}

/// Nix-side fixtures: directory tree, flat file, symlink root.
fn nix_fixture_tree() -> Node {
    let file = |executable, bytes: &[u8]| Node::File {
        executable,
        data: Data::Bytes(bytes.to_vec()),
    };
    Node::Dir(BTreeMap::from([
        (b"a.b".to_vec(), file(false, b"dot\n")),
        (
            b"a".to_vec(),
            Node::Dir(BTreeMap::from([(
                b"x".to_vec(),
                file(true, b"#!/bin/sh\n"),
            )])),
        ),
        (b"a0".to_vec(), file(false, b"")),
        (
            "h\u{e9}llo w\u{f6}rld \u{1f600}".as_bytes().to_vec(),
            file(false, b"unicode\n"),
        ),
        (b"empty-dir".to_vec(), Node::Dir(BTreeMap::new())),
        (b"link".to_vec(), Node::Symlink(b"a/x".to_vec())),
        (
            b"abs-link".to_vec(),
            Node::Symlink(b"/etc/hostname".to_vec()),
        ),
        (
            b"big".to_vec(),
            Node::File {
                executable: false,
                data: Data::Pattern {
                    seed: 3,
                    len: 2_500_000,
                },
            },
        ),
        (
            b"edge".to_vec(),
            Node::File {
                executable: true,
                data: Data::Pattern {
                    seed: 4,
                    len: 1_048_563,
                },
            },
        ),
        (
            b"deep".to_vec(),
            (0..30).fold(file(false, b"bottom\n"), |n, i| {
                Node::Dir(BTreeMap::from([(format!("level{i}").into_bytes(), n)]))
            }),
        ),
    ]))
}

#[test]
fn real_nix_dump_round_trips() {
    if !have("nix-store", "real_nix_dump_round_trips") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("ipnix-roundtrip-tree", nix_fixture_tree()),
        (
            "ipnix-roundtrip-flat",
            Node::File {
                executable: false,
                data: Data::Bytes(b"flat file\n".to_vec()),
            },
        ),
        (
            "ipnix-roundtrip-exec",
            Node::File {
                executable: true,
                data: Data::Pattern {
                    seed: 9,
                    len: 1_500_000,
                },
            },
        ),
        (
            "ipnix-roundtrip-link",
            Node::Symlink(b"/nix/store/some-target".to_vec()),
        ),
    ];
    for (name, tree) in cases {
        let src = dir.path().join(name);
        write_to_disk(&tree, &src);
        let store_path = nix_add(&src);
        let dump = nix_dump(Path::new(&store_path));
        // Our NAR writer renders the same bytes Nix does for the same tree.
        assert!(
            to_nar(&tree) == dump,
            "{name}: our NAR differs from nix-store --dump"
        );
        let (blocks, imported) = round_trip(&dump);
        let info = ipnix_bridge::nixstore::path_info(std::slice::from_ref(&store_path), false)
            .expect("path-info");
        assert_eq!(imported.nar_hash, info[0].nar_hash, "{name}");
        assert_eq!(imported.nar_size, info[0].nar_size, "{name}");
        // Materialise and let Nix hash the result.
        let out = dir.path().join(format!("{name}-out"));
        export_dir(&blocks, &imported.pathinfo_cid, &out).expect("export_dir");
        assert!(
            nix_dump(&out) == dump,
            "{name}: materialised tree dumps differently"
        );
    }
}

#[test]
fn real_closure_imports_in_dependency_order() {
    if !have("nix-build", "real_closure_imports_in_dependency_order") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (a, b, dep) = tiny_closure(dir.path(), "roundtrip");
    let mut blocks = MemoryBlocks::new();
    let items =
        ipnix_bridge::nixstore::import_closure(&mut blocks, std::slice::from_ref(&b), |_| None)
            .expect("closure");
    let paths: Vec<&str> = items.iter().map(|i| i.path.as_str()).collect();
    assert_eq!(paths.len(), 3);
    assert_eq!(paths[2], b, "b comes after its dependencies");
    assert!(paths.contains(&a.as_str()) && paths.contains(&dep.as_str()));
    let b_item = items.last().expect("b");
    let info = &b_item.imported.as_ref().expect("imported").pathinfo;
    assert!(info.self_reference, "b writes its own path into a file");
    let refs: Vec<&str> = info.references.iter().map(|r| r.path.as_str()).collect();
    let mut expected = vec![a.as_str(), dep.as_str()];
    expected.sort();
    assert_eq!(refs, expected);
    for r in &info.references {
        let item = items
            .iter()
            .find(|i| i.path == r.path)
            .expect("reference imported");
        assert_eq!(r.info, item.pathinfo_cid);
    }
    for item in &items {
        let mut out = Vec::new();
        export_nar(&blocks, &item.pathinfo_cid, &mut out).expect("export");
        assert!(out == nix_dump(Path::new(&item.path)), "{}", item.path);
    }
    // Skipping known paths reuses their CIDs.
    let known: std::collections::HashMap<String, _> = items
        .iter()
        .map(|i| (i.path.clone(), i.pathinfo_cid))
        .collect();
    let again =
        ipnix_bridge::nixstore::import_closure(&mut blocks, std::slice::from_ref(&b), |p| {
            (p != b).then(|| known[p])
        })
        .expect("closure again");
    assert_eq!(again.last().expect("b").pathinfo_cid, b_item.pathinfo_cid);
    assert_eq!(again.iter().filter(|i| i.imported.is_some()).count(), 1);
}
