//! Flat tarballs pinned as tree + recipe (DESIGN.md I-31), end to end with
//! the real-tarball corpus on a loopback upstream: `sources pin` keeps each
//! whose recipe pays as a path-info whose one large blob is the recipe, and
//! with upstream gone `sources get`, the hashed mirror (twice: the second
//! from the cache of rebuilt tarballs) and stock Nix's `nix copy` of the
//! content-addressed path all get the exact bytes back; GC keeps the tree
//! while the list is pinned and frees it after `sources unpin`.

use ipnix_bridge::PathInfo;
use ipnix_tests::cli::{assert_success, Daemon, Ipnix};
use ipnix_tests::corpus::{self, CorpusFile};
use ipnix_tests::nix::{stderr_of, NixLab};
use ipnix_tests::upstream::{http_request, Upstream, UpstreamOptions};
use serde_json::{json, Value};

const DAG_CBOR: u64 = 0x71;

fn rel(file: &CorpusFile) -> String {
    format!("{}/{}", file.registry.as_str(), file.file_name)
}

fn pathinfo(ipnix: &Ipnix, cid: &str) -> PathInfo {
    PathInfo::decode(&ipnix.ok_bytes(&["block", "get", cid])).expect("a path-info")
}

#[test]
fn flat_tarballs_are_kept_as_tree_and_recipe_and_served_exactly() {
    const TEST: &str = "flat_tarballs_are_kept_as_tree_and_recipe_and_served_exactly";
    let Some(corpus) = corpus::load_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = ipnix_tests::upstream::unusable() {
        ipnix_tests::peers::skip(TEST, &reason);
        return;
    }
    let upstream = Upstream::start(UpstreamOptions::new(&corpus.dir)).expect("upstream starts");
    let tarballs: Vec<&CorpusFile> = corpus
        .files
        .iter()
        .filter(|f| !f.file_name.ends_with(".zip"))
        .collect();
    let sources: Vec<Value> = tarballs
        .iter()
        .map(|file| {
            json!({
                "type": "url", "urls": [upstream.http_url(&format!("/f/{}", rel(file)))],
                "integrity": file.sha256.to_sri(), "outputHashMode": "flat",
            })
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let list_path = dir.path().join("sources.json");
    let list = json!({"version": 1, "revision": "feedc0de", "sources": sources});
    std::fs::write(&list_path, serde_json::to_vec(&list).expect("json")).expect("write");
    let ipnix = Ipnix::new();
    let list_arg = list_path.to_str().expect("utf-8");
    let summary: Value =
        serde_json::from_str(&ipnix.ok(&["sources", "pin", list_arg, "--json"])).expect("JSON");
    assert_eq!(summary["ok"], tarballs.len(), "{summary}");
    drop(upstream);

    let entries: Vec<Value> = ipnix
        .ok(&["sources", "ls", "nixpkgs-feedc0de", "--json"])
        .lines()
        .map(|line| serde_json::from_str(line).expect("an ls JSON line"))
        .collect();
    let mut as_trees = Vec::new();
    println!("{:<40} {:>10}  stored as", "tarball", "bytes");
    for file in &tarballs {
        let entry = entries
            .iter()
            .find(|e| e["hash"] == file.sha256.to_sri().as_str())
            .unwrap_or_else(|| panic!("{} listed", file.file_name));
        let info = pathinfo(&ipnix, entry["cid"].as_str().expect("a path-info CID"));
        let recipe = info
            .blobs
            .iter()
            .find(|b| b.git == info.root.cid && b.unixfs.codec() == DAG_CBOR);
        println!(
            "{:<40} {:>10}  {}",
            file.file_name,
            file.size,
            if recipe.is_some() {
                "tree + recipe"
            } else {
                "bytes"
            }
        );
        if recipe.is_some() {
            as_trees.push(*file);
        }
    }
    // Recipes of PyPI's, npm's and crates' gzip streams are small: most of
    // the corpus must take the tree + recipe form (a few tiny files need not).
    assert!(
        as_trees.len() * 2 >= tarballs.len(),
        "only {} of {} tarballs were kept as tree + recipe",
        as_trees.len(),
        tarballs.len()
    );

    // GC keeps what the list pins; `sources get` rebuilds exactly.
    ipnix.ok(&["gc"]);
    for file in &as_trees {
        let out = dir.path().join(format!("get-{}", file.file_name));
        let hex = hex::encode(file.sha256.digest());
        ipnix.ok(&["sources", "get", &hex, "-o", out.to_str().expect("utf-8")]);
        assert_eq!(
            std::fs::read(&out).expect("read"),
            file.read().expect("corpus"),
            "{}",
            file.file_name
        );
    }

    // The hashed mirror rebuilds once and serves twice, ranges included.
    let daemon = Daemon::start(&ipnix, &[]);
    let url = daemon.url.clone();
    for file in &as_trees {
        let want = file.read().expect("corpus");
        let mirror = format!("{url}/sha256/{}", hex::encode(file.sha256.digest()));
        for round in ["first", "second"] {
            let got = http_request(&mirror, "GET", &[]).expect("mirror answers");
            assert_eq!(got.status, 200, "{} ({round})", file.file_name);
            assert!(
                got.body == want,
                "{} ({round}): other bytes",
                file.file_name
            );
        }
        let ranged = http_request(&mirror, "GET", &[("Range", "bytes=5-104")]).expect("range");
        assert_eq!(ranged.status, 206);
        assert_eq!(ranged.body, want[5..105], "{}", file.file_name);
    }

    // Stock Nix substitutes a recipe-backed fixed-output path (CA narinfo,
    // no signature) and its NAR verifies.
    if let Some(lab) = NixLab::new(TEST) {
        let file = as_trees[0];
        let entry = entries
            .iter()
            .find(|e| e["hash"] == file.sha256.to_sri().as_str())
            .expect("listed");
        let path = entry["store_path"]
            .as_str()
            .expect("a store path")
            .to_owned();
        let to = lab.path("other-store");
        let out = lab.copy_from(&url, &to, &path, &[]);
        assert_success(&out, &["nix copy --from", &url, &path]);
        let copied = to.join(path.trim_start_matches('/'));
        assert_eq!(
            std::fs::read(&copied).unwrap_or_else(|e| panic!("{}: {e}", copied.display())),
            file.read().expect("corpus"),
            "{}: {}",
            file.file_name,
            stderr_of(&out)
        );
    }
    drop(daemon);

    // Unpinned, the trees and recipes go with the next GC.
    let before: Value =
        serde_json::from_str(&ipnix.ok(&["repo", "stat", "--json"])).expect("stat JSON");
    ipnix.ok(&["sources", "unpin", "nixpkgs-feedc0de"]);
    ipnix.ok(&["gc"]);
    let after: Value =
        serde_json::from_str(&ipnix.ok(&["repo", "stat", "--json"])).expect("stat JSON");
    println!("repo before unpin: {before}\nrepo after unpin + gc: {after}");
    let blocks = |v: &Value| v["blocks"].as_u64().expect("repo stat has blocks");
    let (b, a) = (blocks(&before), blocks(&after));
    assert!(a < b / 10, "GC frees trees and recipes: {b} -> {a} blocks");
}
