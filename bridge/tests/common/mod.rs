//! Shared test helpers: an in-memory file tree model with a proptest
//! strategy, NAR rendering of the model, writing it to disk, and running the
//! real `nix`/`git` tools (with `SKIP:` when they are missing).
#![allow(dead_code)]

use ipnix_bridge::nar::NarWriter;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// File contents: literal bytes, or a deterministic pattern (cheap big files).
#[derive(Debug, Clone)]
pub enum Data {
    Bytes(Vec<u8>),
    Pattern { seed: u8, len: usize },
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Bytes(b) => b.clone(),
            Data::Pattern { seed, len } => (0..*len)
                .map(|i| {
                    (i as u32)
                        .wrapping_mul(2654435761)
                        .rotate_left(u32::from(*seed) % 31) as u8
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Node {
    File { executable: bool, data: Data },
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

/// Renders the model as a NAR (BTreeMap iterates in NAR byte order).
pub fn to_nar(node: &Node) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).expect("vec sink");
    write_node(&mut w, node);
    w.finish().expect("complete").0
}

fn write_node(w: &mut NarWriter<Vec<u8>>, node: &Node) {
    match node {
        Node::File { executable, data } => {
            let bytes = data.bytes();
            w.file(*executable, bytes.len() as u64).expect("file");
            if !bytes.is_empty() {
                w.file_data(&bytes).expect("data");
            }
        }
        Node::Symlink(target) => w.symlink(target).expect("symlink"),
        Node::Dir(entries) => {
            w.start_directory().expect("dir");
            for (name, child) in entries {
                w.entry(name).expect("entry");
                write_node(w, child);
            }
            w.end_directory().expect("end");
        }
    }
}

/// Writes the model at `path` (which must not exist).
pub fn write_to_disk(node: &Node, path: &Path) {
    match node {
        Node::File { executable, data } => {
            std::fs::write(path, data.bytes()).expect("write file");
            let mode = if *executable { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        Node::Symlink(target) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).expect("symlink")
        }
        Node::Dir(entries) => {
            std::fs::create_dir(path).expect("mkdir");
            for (name, child) in entries {
                write_to_disk(child, &path.join(OsStr::from_bytes(name)));
            }
        }
    }
}

/// Names: plain, unicode, odd bytes (anything but `/` and NUL), dotfiles.
pub fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z0-9._-]{1,12}".prop_map(String::into_bytes),
        "\\PC{1,6}".prop_map(String::into_bytes),
        proptest::collection::vec(1u8..=255, 1..20),
        Just(b"a.b".to_vec()),
        Just(b"a".to_vec()),
        Just(b"a0".to_vec()),
        Just(b".hidden".to_vec()),
        Just(b"...".to_vec()),
    ]
    .prop_filter("valid entry name", |n| {
        ipnix_bridge::nar::check_name(n).is_ok()
    })
}

fn small_data() -> impl Strategy<Value = Data> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(Data::Bytes),
        1 => Just(Data::Bytes(Vec::new())),
        1 => (any::<u8>(), 1000usize..70_000).prop_map(|(seed, len)| Data::Pattern { seed, len }),
    ]
}

fn big_data() -> impl Strategy<Value = Data> {
    // Around the 1 MiB git-object threshold (header "blob 1048563\0" is 13 bytes).
    (
        any::<u8>(),
        prop_oneof![
            Just(1_048_563usize),
            Just(1_048_564usize),
            1_048_000usize..1_049_200,
            2_000_000usize..2_200_000
        ],
    )
        .prop_map(|(seed, len)| Data::Pattern { seed, len })
}

fn leaf(big: bool) -> BoxedStrategy<Node> {
    let data = if big {
        big_data().boxed()
    } else {
        small_data().boxed()
    };
    prop_oneof![
        6 => (any::<bool>(), data).prop_map(|(executable, data)| Node::File { executable, data }),
        2 => prop_oneof![
            "[a-z./]{1,30}".prop_map(String::into_bytes),
            Just(b"/etc/passwd".to_vec()),
            Just(b"../../outside".to_vec()),
            proptest::collection::vec(1u8..=255, 1..40),
        ].prop_map(Node::Symlink),
        1 => Just(Node::Dir(BTreeMap::new())),
    ]
    .boxed()
}

/// Trees of up to ~depth 6; `big` adds files across the 1 MiB threshold.
pub fn tree_strategy(big: bool) -> impl Strategy<Value = Node> {
    leaf(big).prop_recursive(6, 40, 6, |inner| {
        prop_oneof![
            proptest::collection::btree_map(name_strategy(), inner.clone(), 0..6)
                .prop_map(Node::Dir),
            // a deep chain
            inner.prop_map(|child| {
                let mut node = child;
                for i in 0..12u8 {
                    node = Node::Dir(BTreeMap::from([(vec![b'd', b'0' + (i % 10)], node)]));
                }
                node
            }),
        ]
    })
}

/// True if `tool --version` runs; otherwise prints `SKIP: reason` to stderr.
pub fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP: {test}: `{tool}` is not installed");
    }
    ok
}

/// Runs a command, panicking with its stderr on failure; returns stdout.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stderr(Stdio::piped()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

pub fn run_text(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd))
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// `nix-store --dump PATH`.
pub fn nix_dump(path: &Path) -> Vec<u8> {
    run(Command::new("nix-store").arg("--dump").arg(path))
}

/// `nix-store --add PATH` -> store path.
pub fn nix_add(path: &Path) -> String {
    run_text(Command::new("nix-store").arg("--add").arg(path))
}

/// Builds the tiny derivations of demo-cache.sh (no nixpkgs): returns (a, b, dep)
/// where b references a and dep, and a symlink in b points into a.
pub fn tiny_closure(dir: &Path, salt: &str) -> (String, String, String) {
    let nix = format!(
        r#"let
  dep = builtins.toFile "dep-{salt}.txt" "I am a dependency {salt}\n";
  a = derivation {{
    name = "tiny-a-{salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo hello from a > $out" ];
  }};
  b = derivation {{
    name = "tiny-b-{salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out/sub
      echo ${{a}} > $out/ref-a
      cat ${{dep}} > $out/copy-of-dep
      echo ${{dep}} > $out/ref-dep
      echo $out > $out/self
      ln -s ${{a}} $out/link-to-a
      printf '#!/bin/sh\necho hi\n' > $out/sub/run.sh
      chmod +x $out/sub/run.sh
    '' ];
  }};
in {{ inherit a b dep; }}
"#
    );
    let file = dir.join("tiny.nix");
    std::fs::write(&file, nix).expect("write tiny.nix");
    let build = |attr: &str| {
        run_text(
            Command::new("nix-build")
                .arg(&file)
                .args(["-A", attr, "--no-out-link"])
                .args(["--option", "substituters", ""]),
        )
    };
    let a = build("a");
    let b = build("b");
    let dep = run_text(
        Command::new("nix-instantiate")
            .args(["--eval", "-E"])
            .arg(format!("(import {}).dep", file.display())),
    )
    .trim_matches('"')
    .to_owned();
    (a, b, dep)
}
