//! Tree and blob ids produced by the importer equal what `git` itself computes
//! (`git add -A && git write-tree`, `git hash-object`), including symlinks,
//! executables, empty files, nested directories and names that sort
//! differently under git's trailing-slash rule.
//!
//! Empty directories: git cannot store them (its index drops them), but a
//! NAR can hold them, so ipnix stores an empty directory as the empty tree
//! object (4b825dc642cb6eb9a060e54bf8d69288fbee4904) and keeps its entry.
//! The tree id then differs from what `git write-tree` gives for the same
//! checkout (git omits the entry), but it is still a well-formed git tree, so
//! `swh:1:dir:<id>` is its SWHID (Software Heritage also stores empty trees).

mod common;

use common::*;
use ipnix_bridge::git::{tree_object, EMPTY_TREE_ID};
use ipnix_bridge::{import_nar, PathMeta};
use ipnix_store::MemoryBlocks;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

fn import_root(tree: &Node) -> String {
    let mut blocks = MemoryBlocks::new();
    let imported = import_nar(
        &mut blocks,
        to_nar(tree).as_slice(),
        PathMeta::new("/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-git"),
    )
    .expect("import");
    hex::encode(imported.root_cid.hash().digest())
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .args([
            "-c",
            "core.symlinks=true",
            "-c",
            "core.fileMode=true",
            "-c",
            "core.autocrlf=false",
            "-c",
            "core.protectNTFS=false",
            "-c",
            "core.protectHFS=false",
        ]);
    cmd
}

fn git_write_tree(tree: &Node) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    let work = dir.path().join("w");
    write_to_disk(tree, &work);
    run(git(&work).args(["init", "-q"]));
    run(git(&work).args(["add", "-A"]));
    run_text(git(&work).arg("write-tree"))
}

fn file(executable: bool, bytes: &[u8]) -> Node {
    Node::File {
        executable,
        data: Data::Bytes(bytes.to_vec()),
    }
}

/// Git can't check out a tree containing `.git` entries or empty directories;
/// drop them for the comparison.
fn git_representable(node: Node) -> Option<Node> {
    match node {
        Node::Dir(entries) => {
            let kept: BTreeMap<_, _> = entries
                .into_iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case(b".git"))
                .filter_map(|(name, child)| git_representable(child).map(|c| (name, c)))
                .collect();
            (!kept.is_empty()).then_some(Node::Dir(kept))
        }
        other => Some(other),
    }
}

#[test]
fn fixed_tree_matches_git() {
    if !have("git", "fixed_tree_matches_git") {
        return;
    }
    let tree = Node::Dir(BTreeMap::from([
        (b"a.b".to_vec(), file(false, b"dot\n")),
        (
            b"a".to_vec(),
            Node::Dir(BTreeMap::from([(
                b"inner".to_vec(),
                file(true, b"#!/bin/sh\n"),
            )])),
        ),
        (b"a0".to_vec(), file(false, b"")),
        (b"a-".to_vec(), file(false, b"dash\n")),
        (b"link".to_vec(), Node::Symlink(b"a/inner".to_vec())),
        (
            b"dangling".to_vec(),
            Node::Symlink(b"/no/such/target".to_vec()),
        ),
        ("\u{fc}nic\u{f6}de".as_bytes().to_vec(), file(false, b"u\n")),
        (
            b"nested".to_vec(),
            Node::Dir(BTreeMap::from([(
                b"deeper".to_vec(),
                Node::Dir(BTreeMap::from([(b"x".to_vec(), file(true, b""))])),
            )])),
        ),
        (
            b"big".to_vec(),
            Node::File {
                executable: false,
                data: Data::Pattern {
                    seed: 1,
                    len: 1_300_000,
                },
            },
        ),
    ]));
    assert_eq!(import_root(&tree), git_write_tree(&tree));
}

#[test]
fn blob_ids_match_git_hash_object() {
    if !have("git", "blob_ids_match_git_hash_object") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    for (i, data) in [
        Data::Bytes(Vec::new()),
        Data::Bytes(b"hello\n".to_vec()),
        Data::Pattern {
            seed: 2,
            len: 1_048_563,
        },
        Data::Pattern {
            seed: 2,
            len: 1_048_564,
        },
        Data::Pattern {
            seed: 5,
            len: 3_000_001,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let node = Node::File {
            executable: false,
            data: data.clone(),
        };
        let path = dir.path().join(format!("f{i}"));
        write_to_disk(&node, &path);
        let git_id = run_text(git(dir.path()).arg("hash-object").arg(&path));
        assert_eq!(import_root(&node), git_id, "blob {i}");
    }
}

#[test]
fn empty_directories_are_the_empty_tree() {
    let empty = Node::Dir(BTreeMap::new());
    assert_eq!(import_root(&empty), EMPTY_TREE_ID);
    // A directory holding an empty directory names it by the empty tree id.
    let outer = Node::Dir(BTreeMap::from([(
        b"e".to_vec(),
        Node::Dir(BTreeMap::new()),
    )]));
    let mut entries = vec![ipnix_bridge::git::TreeEntry {
        mode: ipnix_bridge::git::Mode::Tree,
        name: b"e".to_vec(),
        id: hex::decode(EMPTY_TREE_ID)
            .expect("hex")
            .try_into()
            .expect("20 bytes"),
    }];
    let expected = ipnix_bridge::git::object_id(&tree_object(&mut entries).expect("tree"));
    assert_eq!(import_root(&outer), hex::encode(expected));
    if have("git", "empty_directories_are_the_empty_tree") {
        let dir = tempfile::tempdir().expect("tmp");
        let id = run_text(git(dir.path()).args(["hash-object", "-t", "tree", "/dev/null"]));
        assert_eq!(id, EMPTY_TREE_ID);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn generated_trees_match_git(tree in tree_strategy(false)) {
        if !have("git", "generated_trees_match_git") {
            return Ok(());
        }
        // Git wants a directory root and cannot hold empty directories or `.git`.
        let Some(tree @ Node::Dir(_)) = git_representable(tree) else {
            return Ok(());
        };
        prop_assert_eq!(import_root(&tree), git_write_tree(&tree));
    }
}
