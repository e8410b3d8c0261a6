//! Who the daemon's `--sign-key` vouches for (DESIGN.md I-26), with the real
//! Nix 2.8 as the judge. Two daemons on loopback, A and B, B connected to A:
//!
//! - A forged path (a narinfo for `/nix/store/aaaa…-hello-2.12.1` whose NAR
//!   is a script, no signature) imported on A with `--from-cache` and shared
//!   with B: B serves it without its signature, and `nix copy` trusting only
//!   B's key refuses it (the attack of issue 17, item 1).
//! - A path signed upstream, imported on A from a binary cache: B adds its
//!   own signature beside the upstream one only when that key is in B's
//!   `--trusted-public-keys` (flag or file); Nix trusting only B's key
//!   accepts it then, and refuses it otherwise.
//! - A path `ipnix nix import` read from the node's own Nix store is signed,
//!   also when an earlier `--from-cache` import of it was not.
//! - Content-addressed paths (`nix-store --add-fixed`, flat and recursive)
//!   substitute with no trusted key at all; B signs the recursive SHA-256 one
//!   (its NAR hash is its content address), not the flat one.
//! - A daemon without `--share-paths` (and no swarm key) tells peers nothing.
//!
//! Nix runs with `substituters` empty and only the loopback daemons named.
//! Run under ../shared/peers/sandbox; without Nix it SKIPs.

use ipnix_bridge::hash::NixHash;
use ipnix_tests::cli::Ipnix;
use ipnix_tests::nix::{http_request, stderr_of, Daemon, NixKey, NixLab};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

/// The store path of the attack as measured in issue 17.
const FORGED_PATH: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello-2.12.1";

fn hash_part(path: &str) -> &str {
    &path[11..43]
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(out)
    );
}

/// `ipnix daemon` on `repo`, loopback only, with `extra` flags.
fn daemon(repo: &Ipnix, extra: &[&str]) -> Daemon {
    Daemon::start(&repo.bin, repo.repo_path(), extra)
}

/// B dials A's loopback TCP address (through B's daemon).
fn connect(b: &Ipnix, a: &Ipnix) {
    let id: serde_json::Value = serde_json::from_str(&a.ok(&["id", "--json"])).expect("id json");
    let addr = id["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.contains("/tcp/") && a.contains("127.0.0.1"))
        .expect("a loopback tcp address")
        .to_string();
    b.ok(&["connect", &addr]);
}

/// The narinfo the daemon at `url` serves for `path`: (status, text).
fn narinfo(url: &str, path: &str) -> (u16, String) {
    let response = http_request("GET", &format!("{url}/{}.narinfo", hash_part(path)));
    (response.status, response.text())
}

/// Names of the keys that signed a narinfo (`Sig: name:...`), sorted.
fn signers(narinfo: &str) -> Vec<String> {
    let mut names: Vec<String> = narinfo
        .lines()
        .filter_map(|l| l.strip_prefix("Sig: "))
        .filter_map(|sig| sig.split_once(':').map(|(name, _)| name.to_string()))
        .collect();
    names.sort();
    names
}

/// The NAR of `path` in the chroot store `store`, as Nix dumps it.
fn dump_in(lab: &NixLab, store: &Path, path: &str) -> Vec<u8> {
    let out = lab.run(
        "nix",
        &[
            "store",
            "dump-path",
            "--store",
            store.to_str().expect("utf-8"),
            path,
        ],
    );
    assert_ok(&out, &format!("nix store dump-path {path}"));
    out.stdout
}

/// A `file://` binary cache holding one forged narinfo: `FORGED_PATH`,
/// whose NAR is an executable script, with no signature.
fn forged_cache(lab: &NixLab) -> String {
    let cache = lab.path("forged-cache");
    std::fs::create_dir_all(cache.join("nar")).expect("mkdir");
    let script = lab.path("hello");
    std::fs::write(&script, "#!/bin/sh\necho owned\n").expect("write script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let nar = lab.dump(script.to_str().expect("utf-8"));
    std::fs::write(cache.join("nar/forged.nar"), &nar).expect("write NAR");
    let nar_hash = NixHash::sha256(Sha256::digest(&nar).into());
    std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\n").expect("write");
    std::fs::write(
        cache.join(format!("{}.narinfo", hash_part(FORGED_PATH))),
        format!(
            "StorePath: {FORGED_PATH}\nURL: nar/forged.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \n",
            nar_hash.to_nix32(),
            nar.len()
        ),
    )
    .expect("write narinfo");
    format!("file://{}", cache.display())
}

/// A `file://` binary cache of `path`'s closure, signed by `key` if given.
fn file_cache(lab: &NixLab, name: &str, path: &str, key: Option<&NixKey>) -> String {
    let dir = lab.path(name);
    let mut url = format!("file://{}?compression=none", dir.display());
    if let Some(key) = key {
        url.push_str(&format!("&secret-key={}", key.secret_file.display()));
    }
    lab.ok(
        "nix",
        &["copy", "--to", &url, path, "--option", "substituters", ""],
    );
    format!("file://{}", dir.display())
}

#[test]
fn a_forged_path_from_a_peer_is_not_signed_and_nix_refuses_it() {
    let Some(lab) = NixLab::new("a_forged_path_from_a_peer_is_not_signed_and_nix_refuses_it")
    else {
        return;
    };
    let cache = forged_cache(&lab);
    let (a, b) = (Ipnix::new(), Ipnix::new());
    a.ok(&["nix", "import", "--from-cache", &cache, FORGED_PATH]);
    let key_a = lab.gen_key("node-a-1");
    let key_b = lab.gen_key("node-b-1");
    let key_a_file = key_a.secret_file.to_str().expect("utf-8").to_string();
    let key_b_file = key_b.secret_file.to_str().expect("utf-8").to_string();
    let daemon_a = daemon(&a, &["--share-paths", "--sign-key", &key_a_file]);
    let daemon_b = daemon(&b, &["--sign-key", &key_b_file]);
    connect(&b, &a);

    // A itself does not vouch for what a cache handed it.
    let (status, text) = narinfo(&daemon_a.url, FORGED_PATH);
    assert_eq!(status, 200, "{text}");
    assert!(signers(&text).is_empty(), "A signed a cache's path: {text}");
    // B serves the peer's path (so the refusal below is about trust, not
    // about a missing path), without its signature.
    let (status, text) = narinfo(&daemon_b.url, FORGED_PATH);
    assert_eq!(
        status,
        200,
        "B learns the path from A: {text}\n{}",
        daemon_b.log()
    );
    assert!(
        text.contains(&format!("StorePath: {FORGED_PATH}")),
        "{text}"
    );
    assert!(signers(&text).is_empty(), "B signed a peer's path: {text}");

    let store = lab.path("store-victim");
    let refused = lab.copy_from(&daemon_b.url, &store, FORGED_PATH, &[&key_b.public]);
    assert!(
        !refused.status.success(),
        "Nix trusting only B's key accepted a peer's forged path"
    );
    assert!(
        stderr_of(&refused).contains("lacks a valid signature"),
        "{}",
        stderr_of(&refused)
    );
    assert!(!store.join("nix/store").join(&FORGED_PATH[11..]).exists());
    // Trusting A's key does not help either.
    let refused = lab.copy_from(&daemon_b.url, &store, FORGED_PATH, &[&key_a.public]);
    assert!(!refused.status.success());
}

#[test]
fn an_upstream_signed_path_gets_the_nodes_signature_only_under_a_trusted_key() {
    const TEST: &str = "an_upstream_signed_path_gets_the_nodes_signature_only_under_a_trusted_key";
    let Some(lab) = NixLab::new(TEST) else { return };
    let closure = lab.build_closure();
    let upstream = lab.gen_key("upstream-1");
    let unrelated = lab.gen_key("unrelated-1");
    let key_b = lab.gen_key("node-b-1");
    let key_b_file = key_b.secret_file.to_str().expect("utf-8").to_string();
    let cache = file_cache(&lab, "signed-cache", &closure.top, Some(&upstream));
    let (a, b) = (Ipnix::new(), Ipnix::new());
    a.ok(&[
        "nix",
        "import",
        "--from-cache",
        &cache,
        "--closure",
        &closure.top,
    ]);
    let daemon_a = daemon(&a, &["--share-paths"]);

    // B trusts the upstream key: both signatures, and Nix trusting only B's
    // key takes the whole closure.
    let mut daemon_b = daemon(
        &b,
        &[
            "--sign-key",
            &key_b_file,
            "--trusted-public-keys",
            &format!("{} {}", unrelated.public, upstream.public),
        ],
    );
    connect(&b, &a);
    for path in &closure.all {
        let (status, text) = narinfo(&daemon_b.url, path);
        assert_eq!(status, 200, "{path}: {text}\n{}", daemon_b.log());
        assert_eq!(
            signers(&text),
            vec![key_b.name.clone(), upstream.name.clone()],
            "{path}: upstream signature kept, node's added: {text}"
        );
    }
    let store = lab.path("store-trusting-b");
    let copied = lab.copy_from(&daemon_b.url, &store, &closure.top, &[&key_b.public]);
    assert_ok(&copied, "nix copy trusting only B's key");
    for path in &closure.all {
        assert!(
            dump_in(&lab, &store, path) == lab.dump(path),
            "NAR of {path} differs"
        );
    }
    assert_ok(
        &lab.verify(Some(&store), &closure.top, &[&key_b.public]),
        "nix store verify",
    );

    // B trusts only an unrelated key (from a file): the upstream signature
    // passes through, B's is not added, and Nix trusting only B refuses.
    daemon_b.stop();
    let keys_file = lab.path("trusted-keys");
    std::fs::write(
        &keys_file,
        format!("# keys this node vouches for\n{}\n", unrelated.public),
    )
    .expect("write keys file");
    let daemon_b = daemon(
        &b,
        &[
            "--sign-key",
            &key_b_file,
            "--trusted-public-keys-file",
            keys_file.to_str().expect("utf-8"),
        ],
    );
    connect(&b, &a);
    let (status, text) = narinfo(&daemon_b.url, &closure.top);
    assert_eq!(status, 200, "{text}");
    assert_eq!(signers(&text), vec![upstream.name.clone()], "{text}");
    let refused = lab.copy_from(
        &daemon_b.url,
        &lab.path("store-refused"),
        &closure.top,
        &[&key_b.public],
    );
    assert!(!refused.status.success(), "B vouched without a trusted key");
    assert!(
        stderr_of(&refused).contains("lacks a valid signature"),
        "{}",
        stderr_of(&refused)
    );
    // Nix trusting the upstream key itself still takes it from B.
    let copied = lab.copy_from(
        &daemon_b.url,
        &lab.path("store-upstream"),
        &closure.top,
        &[&upstream.public],
    );
    assert_ok(&copied, "nix copy trusting the upstream key");
    drop(daemon_a);
}

#[test]
fn a_path_from_the_nodes_own_nix_store_is_signed() {
    let Some(lab) = NixLab::new("a_path_from_the_nodes_own_nix_store_is_signed") else {
        return;
    };
    let closure = lab.build_closure();
    let key = lab.gen_key("node-1");
    let key_file = key.secret_file.to_str().expect("utf-8").to_string();
    // The same closure, unsigned, in a binary cache: imported from there
    // first, nothing vouches for it.
    let cache = file_cache(&lab, "unsigned-cache", &closure.top, None);
    let ipnix = Ipnix::new();
    ipnix.ok(&[
        "nix",
        "import",
        "--from-cache",
        &cache,
        "--closure",
        &closure.top,
    ]);
    let node = daemon(&ipnix, &["--sign-key", &key_file]);
    for path in &closure.all {
        let (status, text) = narinfo(&node.url, path);
        assert_eq!(status, 200, "{text}");
        assert!(signers(&text).is_empty(), "{path}: {text}");
    }
    let refused = lab.copy_from(
        &node.url,
        &lab.path("store-before"),
        &closure.top,
        &[&key.public],
    );
    assert!(
        !refused.status.success(),
        "a cache's unsigned path was signed"
    );

    // Imported from the local Nix store (through the daemon): the same
    // path-infos are now the node's own to sign.
    let out = ipnix.ok(&["nix", "import", "--closure", &closure.top]);
    assert!(out.contains(&closure.top), "{out}");
    for path in &closure.all {
        let (status, text) = narinfo(&node.url, path);
        assert_eq!(status, 200, "{text}");
        assert_eq!(signers(&text), vec![key.name.clone()], "{path}: {text}");
    }
    let store = lab.path("store-after");
    let copied = lab.copy_from(&node.url, &store, &closure.top, &[&key.public]);
    assert_ok(&copied, "nix copy trusting the node's key");
    assert!(dump_in(&lab, &store, &closure.top) == lab.dump(&closure.top));

    // A fresh repo importing straight from the Nix store: signed as well.
    let direct = Ipnix::new();
    direct.ok(&["nix", "import", "--closure", &closure.a]);
    let direct_node = daemon(&direct, &["--sign-key", &key_file]);
    let (status, text) = narinfo(&direct_node.url, &closure.a);
    assert_eq!(status, 200, "{text}");
    assert_eq!(signers(&text), vec![key.name.clone()], "{text}");
}

#[test]
fn content_addressed_paths_substitute_without_trusted_keys() {
    let Some(lab) = NixLab::new("content_addressed_paths_substitute_without_trusted_keys") else {
        return;
    };
    let salt = format!("{:016x}", rand::random::<u64>());
    let file = lab.path(&format!("ca-flat-{salt}.txt"));
    std::fs::write(&file, format!("a fixed-output file {salt}\n")).expect("write");
    let flat = lab.ok(
        "nix-store",
        &["--add-fixed", "sha256", file.to_str().expect("utf-8")],
    );
    let dir = lab.path(&format!("ca-tree-{salt}"));
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(
        dir.join("sub/data"),
        format!("a fixed-output tree {salt}\n"),
    )
    .expect("write");
    let recursive = lab.ok(
        "nix-store",
        &[
            "--add-fixed",
            "--recursive",
            "sha256",
            dir.to_str().expect("utf-8"),
        ],
    );
    let key_b = lab.gen_key("node-b-1");
    let key_b_file = key_b.secret_file.to_str().expect("utf-8").to_string();
    let (a, b) = (Ipnix::new(), Ipnix::new());
    a.ok(&["nix", "import", &flat, &recursive]);
    let _daemon_a = daemon(&a, &["--share-paths"]);
    let daemon_b = daemon(&b, &["--sign-key", &key_b_file]);
    connect(&b, &a);

    let (status, text) = narinfo(&daemon_b.url, &recursive);
    assert_eq!(status, 200, "{text}\n{}", daemon_b.log());
    assert!(text.contains("CA: fixed:r:sha256:"), "{text}");
    assert_eq!(
        signers(&text),
        vec![key_b.name.clone()],
        "a recursive SHA-256 path whose NAR hash is its CA is vouched for: {text}"
    );
    let (status, text) = narinfo(&daemon_b.url, &flat);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("CA: fixed:sha256:"), "{text}");
    assert!(
        signers(&text).is_empty(),
        "a flat path is not hashed again, so not signed: {text}"
    );

    // No trusted key at all: Nix checks the content addresses itself.
    let store = lab.path("store-ca");
    for path in [&flat, &recursive] {
        let copied = lab.copy_from(&daemon_b.url, &store, path, &[]);
        assert_ok(&copied, &format!("nix copy of {path} with no trusted key"));
        assert!(dump_in(&lab, &store, path) == lab.dump(path), "{path}");
    }
}

#[test]
fn without_share_paths_peers_are_told_nothing() {
    let Some(lab) = NixLab::new("without_share_paths_peers_are_told_nothing") else {
        return;
    };
    let salt = format!("{:016x}", rand::random::<u64>());
    let file = lab.path(&format!("shared-{salt}.txt"));
    std::fs::write(&file, format!("shared or not {salt}\n")).expect("write");
    let path = lab.ok(
        "nix-store",
        &["--add-fixed", "sha256", file.to_str().expect("utf-8")],
    );
    let (a, b) = (Ipnix::new(), Ipnix::new());
    a.ok(&["nix", "import", &path]);

    let mut daemon_a = daemon(&a, &[]);
    let mut daemon_b = daemon(&b, &[]);
    connect(&b, &a);
    assert_eq!(
        narinfo(&daemon_a.url, &path).0,
        200,
        "A serves its own cache"
    );
    let (status, text) = narinfo(&daemon_b.url, &path);
    assert_eq!(
        status, 404,
        "A answered a peer without --share-paths: {text}"
    );
    daemon_a.stop();
    daemon_b.stop();

    // The same two with --share-paths on A (B restarted: it remembers misses).
    let _daemon_a = daemon(&a, &["--share-paths"]);
    let daemon_b = daemon(&b, &[]);
    connect(&b, &a);
    let (status, text) = narinfo(&daemon_b.url, &path);
    assert_eq!(status, 200, "{text}\n{}", daemon_b.log());
    let copied = lab.copy_from(&daemon_b.url, &lab.path("store-shared"), &path, &[]);
    assert_ok(&copied, "nix copy of a shared CA path");
}
