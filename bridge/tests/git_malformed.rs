//! Hostile git trees are refused on export (to a NAR and to disk), and no
//! tree can make `export_dir` write outside its destination: symlinks are
//! created but never followed.

mod common;

use cid::Cid;
use common::*;
use ipnix_bridge::git::{blob_object, GitError};
use ipnix_bridge::nar::NameError;
use ipnix_bridge::{export_dir, export_nar, import_nar, ExportError, PathMeta};
use ipnix_store::block::{cid_for, GIT_RAW};
use ipnix_store::{BlockWrite, MemoryBlocks};
use std::collections::BTreeMap;
use std::path::Path;

fn put(blocks: &mut MemoryBlocks, object: &[u8]) -> Cid {
    let cid = cid_for(GIT_RAW, object);
    blocks.write_block(cid, object).expect("valid block");
    cid
}

fn id(cid: &Cid) -> [u8; 20] {
    cid.hash().digest().try_into().expect("sha1")
}

/// Mode, name, target of one hand-written tree entry.
type RawEntry<'a> = (&'a [u8], &'a [u8], Cid);
/// Checks that an error is the one a case expects.
type IsExpected = fn(&GitError) -> bool;

/// A tree object written exactly as given: no sorting, no checks.
fn raw_tree(blocks: &mut MemoryBlocks, entries: &[RawEntry]) -> Cid {
    let mut body = Vec::new();
    for (mode, name, cid) in entries {
        body.extend_from_slice(mode);
        body.push(b' ');
        body.extend_from_slice(name);
        body.push(0);
        body.extend_from_slice(&id(cid));
    }
    let mut object = format!("tree {}\0", body.len()).into_bytes();
    object.extend_from_slice(&body);
    put(blocks, &object)
}

struct Fixture {
    blocks: MemoryBlocks,
    file: Cid,
    _dir: tempfile::TempDir,
    outside: std::path::PathBuf,
    dest: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let mut blocks = MemoryBlocks::new();
    let file = put(&mut blocks, &blob_object(b"pwned\n"));
    let dir = tempfile::tempdir().expect("tmp");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    let dest = dir.path().join("dest");
    Fixture {
        blocks,
        file,
        outside,
        dest,
        _dir: dir,
    }
}

fn assert_empty(dir: &Path) {
    let entries: Vec<_> = std::fs::read_dir(dir).expect("readdir").collect();
    assert!(
        entries.is_empty(),
        "something was written to {}",
        dir.display()
    );
}

/// Both exports refuse the tree; the destination is gone and `outside` untouched.
fn refused(fx: &Fixture, root: &Cid) -> (ExportError, ExportError) {
    let nar_err =
        export_nar(&fx.blocks, root, std::io::sink()).expect_err("export_nar must refuse");
    let dir_err = export_dir(&fx.blocks, root, &fx.dest).expect_err("export_dir must refuse");
    assert!(
        std::fs::symlink_metadata(&fx.dest).is_err(),
        "partial export left behind"
    );
    assert_empty(&fx.outside);
    (nar_err, dir_err)
}

fn git_err(e: &ExportError) -> &GitError {
    match e {
        ExportError::Git { source, .. } => source,
        other => panic!("expected a git error, got {other}"),
    }
}

#[test]
fn bad_names_are_refused() {
    let mut fx = fixture();
    let file = fx.file;
    for (name, reason) in [
        (&b".."[..], NameError::DotDot),
        (b".", NameError::Dot),
        (b"", NameError::Empty),
        (b"a/b", NameError::Slash),
        (b"/", NameError::Slash),
    ] {
        let root = raw_tree(&mut fx.blocks, &[(b"100644", name, file)]);
        let (a, b) = refused(&fx, &root);
        for e in [&a, &b] {
            assert!(
                matches!(git_err(e), GitError::BadName { reason: r, .. } if *r == reason),
                "{name:?}: {e}"
            );
        }
    }
}

#[test]
fn nul_in_a_name_cannot_be_smuggled() {
    // The tree format ends a name at the first NUL, so "a\0b" splits the entry
    // and the rest does not parse as an entry.
    let mut fx = fixture();
    let file = fx.file;
    let root = raw_tree(&mut fx.blocks, &[(b"100644", b"a\0b", file)]);
    let (a, _) = refused(&fx, &root);
    assert!(
        matches!(
            git_err(&a),
            GitError::Truncated { .. } | GitError::BadMode { .. }
        ),
        "{a}"
    );
}

#[test]
fn duplicates_submodules_modes_and_order_are_refused() {
    let mut fx = fixture();
    let file = fx.file;
    let empty = raw_tree(&mut fx.blocks, &[]);
    let cases: Vec<(Vec<RawEntry>, IsExpected)> = vec![
        (
            vec![(b"100644", b"x", file), (b"100644", b"x", file)],
            |e| matches!(e, GitError::Duplicate { .. }),
        ),
        // "x" (file) sorts before "x-" before "x/" (tree): same name twice, not adjacent.
        (
            vec![
                (b"100644", b"x", file),
                (b"100644", b"x-", file),
                (b"40000", b"x", empty),
            ],
            |e| matches!(e, GitError::Duplicate { .. }),
        ),
        (vec![(b"160000", b"sub", file)], |e| {
            matches!(e, GitError::Submodule { .. })
        }),
        (vec![(b"100664", b"x", file)], |e| {
            matches!(e, GitError::BadMode { .. })
        }),
        (vec![(b"040000", b"x", empty)], |e| {
            matches!(e, GitError::BadMode { .. })
        }),
        (
            vec![(b"100644", b"b", file), (b"100644", b"a", file)],
            |e| matches!(e, GitError::Unsorted { .. }),
        ),
        // NAR order would put "a" before "a.b"; git order puts tree "a" after it.
        (
            vec![(b"40000", b"a", empty), (b"100644", b"a.b", file)],
            |e| matches!(e, GitError::Unsorted { .. }),
        ),
    ];
    for (entries, expected) in cases {
        let root = raw_tree(&mut fx.blocks, &entries);
        let (a, b) = refused(&fx, &root);
        assert!(expected(git_err(&a)) && expected(git_err(&b)), "{a} / {b}");
    }
}

#[test]
fn symlink_then_directory_of_the_same_name_cannot_escape() {
    let mut fx = fixture();
    let file = fx.file;
    let target = fx.outside.to_str().expect("utf-8").as_bytes().to_vec();
    let link = put(&mut fx.blocks, &blob_object(&target));
    let inner = raw_tree(&mut fx.blocks, &[(b"100644", b"passwd", file)]);
    // `x -> outside` followed by a directory `x/` holding `passwd`.
    let root = raw_tree(
        &mut fx.blocks,
        &[(b"120000", b"x", link), (b"40000", b"x", inner)],
    );
    let (a, b) = refused(&fx, &root);
    assert!(matches!(git_err(&a), GitError::Duplicate { .. }), "{a}");
    assert!(matches!(git_err(&b), GitError::Duplicate { .. }), "{b}");
    // Same via a name with a slash.
    let root = raw_tree(
        &mut fx.blocks,
        &[(b"120000", b"x", link), (b"100644", b"x/passwd", file)],
    );
    refused(&fx, &root);
    // And one level down: `d/x -> outside`, `d/x/passwd`.
    let sub = raw_tree(
        &mut fx.blocks,
        &[(b"120000", b"x", link), (b"40000", b"x", inner)],
    );
    let root = raw_tree(&mut fx.blocks, &[(b"40000", b"d", sub)]);
    refused(&fx, &root);
}

#[test]
fn valid_symlinks_are_created_not_followed() {
    let mut fx = fixture();
    let file = fx.file;
    let target = fx.outside.to_str().expect("utf-8").as_bytes().to_vec();
    let link = put(&mut fx.blocks, &blob_object(&target));
    let root = raw_tree(
        &mut fx.blocks,
        &[(b"100644", b"a", file), (b"120000", b"x", link)],
    );
    export_dir(&fx.blocks, &root, &fx.dest).expect("valid tree");
    let meta = std::fs::symlink_metadata(fx.dest.join("x")).expect("lstat");
    assert!(meta.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(fx.dest.join("x")).expect("readlink"),
        fx.outside
    );
    assert_empty(&fx.outside);
}

#[test]
fn existing_destination_is_refused_even_as_a_symlink() {
    let fx = fixture();
    std::os::unix::fs::symlink(&fx.outside, &fx.dest).expect("symlink");
    let nar = to_nar(&Node::Dir(BTreeMap::from([(
        b"f".to_vec(),
        Node::File {
            executable: false,
            data: Data::Bytes(b"x".to_vec()),
        },
    )])));
    let mut blocks = MemoryBlocks::new();
    let imported = import_nar(
        &mut blocks,
        nar.as_slice(),
        PathMeta::new("/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-x"),
    )
    .expect("import");
    let e = export_dir(&blocks, &imported.pathinfo_cid, &fx.dest).expect_err("exists");
    assert!(matches!(e, ExportError::Exists(_)), "{e}");
    assert_empty(&fx.outside);
}

#[test]
fn tampered_pathinfo_is_refused_and_cleaned_up() {
    let fx = fixture();
    let nar = to_nar(&Node::Dir(BTreeMap::from([(
        b"f".to_vec(),
        Node::File {
            executable: false,
            data: Data::Bytes(b"x".to_vec()),
        },
    )])));
    let mut blocks = MemoryBlocks::new();
    let imported = import_nar(
        &mut blocks,
        nar.as_slice(),
        PathMeta::new("/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-x"),
    )
    .expect("import");
    let mut info = imported.pathinfo.clone();
    info.nar_hash = ipnix_bridge::NixHash::sha256([9u8; 32]);
    let (bad_cid, bytes) = info.to_block().expect("encode");
    blocks.write_block(bad_cid, &bytes).expect("store");
    let e = export_nar(&blocks, &bad_cid, std::io::sink()).expect_err("hash");
    assert!(matches!(e, ExportError::HashMismatch { .. }), "{e}");
    let e = export_dir(&blocks, &bad_cid, &fx.dest).expect_err("hash");
    assert!(matches!(e, ExportError::HashMismatch { .. }), "{e}");
    assert!(std::fs::symlink_metadata(&fx.dest).is_err());
    // A NAR size far below the content: rendering stops early.
    let mut info = imported.pathinfo.clone();
    info.nar_size = 64;
    let (small_cid, bytes) = info.to_block().expect("encode");
    blocks.write_block(small_cid, &bytes).expect("store");
    let mut sink = Vec::new();
    let e = export_nar(&blocks, &small_cid, &mut sink).expect_err("size");
    assert!(matches!(e, ExportError::TooLong { expected: 64 }), "{e}");
    assert!(
        sink.len() < 64 + 200,
        "rendering stopped near the recorded size"
    );
}

#[test]
fn missing_blocks_are_reported() {
    let mut fx = fixture();
    let absent = cid_for(GIT_RAW, &blob_object(b"not stored"));
    let root = raw_tree(&mut fx.blocks, &[(b"100644", b"f", absent)]);
    let (a, _) = refused(&fx, &root);
    assert!(matches!(a, ExportError::Missing(c) if c == absent), "{a}");
}
