//! `ipnix swh coverage` and `ipnix swh export` on a 1,000-entry list (and
//! 1,500 entries over two lists) against the loopback SWH API: the
//! `known` endpoint is asked in batches of at most 1,000 SWHIDs (requests
//! counted from the server's log), the counts and the missing list match
//! what the server archives, every SWHID ipnix computes equals the one the
//! real `swh.model` computed for the same file, and the export is a
//! sources.json (version 1) that ipnix itself pins again.

use ipnix_tests::cli::Ipnix;
use ipnix_tests::nix::stderr_of;
use ipnix_tests::swh::{SwhOptions, SwhServer};
use ipnix_tests::upstream::{Upstream, UpstreamOptions};
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `n` distinct small files under `dir/name-<i>.txt`; their SHA-256s (hex).
fn make_files(dir: &Path, name: &str, n: usize) -> Vec<(PathBuf, String)> {
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{name}-{i}.txt"));
            let text = format!("{name} source file number {i}\n").repeat(1 + i % 7);
            std::fs::write(&path, &text).expect("write");
            (path, hex::encode(sha2::Sha256::digest(text.as_bytes())))
        })
        .collect()
}

fn list_for(upstream: &Upstream, files: &[(PathBuf, String)]) -> Value {
    let sources: Vec<Value> = files
        .iter()
        .map(|(path, sha)| {
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            json!({"type": "url", "urls": [upstream.http_url(&format!("/f/{name}"))],
                   "outputHash": sha, "outputHashAlgo": "sha256", "outputHashMode": "flat"})
        })
        .collect();
    json!({"version": 1, "revision": "c0ffee", "sources": sources})
}

fn known_posts(swh: &SwhServer) -> usize {
    swh.log()
        .expect("log")
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/1/known/")
        .count()
}

#[test]
fn coverage_and_export_of_a_thousand_entries_in_batches() {
    const TEST: &str = "coverage_and_export_of_a_thousand_entries_in_batches";
    if let Some(reason) = ipnix_tests::swh::unusable().or_else(ipnix_tests::upstream::unusable) {
        ipnix_tests::peers::skip(TEST, &reason);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let files = make_files(dir.path(), "a", 1000);
    let more = make_files(dir.path(), "b", 500);
    // SWH archives 600 of the first list and 100 of the second.
    let archived: Vec<&PathBuf> = files
        .iter()
        .take(600)
        .chain(more.iter().take(100))
        .map(|(p, _)| p)
        .collect();
    let contents_list = dir.path().join("archived.txt");
    std::fs::write(
        &contents_list,
        archived
            .iter()
            .map(|p| p.to_str().expect("utf-8"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .expect("write");
    let swh = SwhServer::start(&SwhOptions {
        contents_list: Some(contents_list),
        cook_polls: 1,
        ..SwhOptions::default()
    })
    .expect("SWH server");
    let upstream = Upstream::start(UpstreamOptions::new(dir.path())).expect("upstream");
    let ipnix = Ipnix::new();
    for (name, set) in [("thousand", &files), ("more", &more)] {
        let list = dir.path().join(format!("{name}.json"));
        std::fs::write(&list, list_for(&upstream, set).to_string()).expect("write");
        let out = ipnix.run(&[
            "sources",
            "pin",
            list.to_str().expect("utf-8"),
            "--name",
            name,
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr_of(&out));
    }

    // Every SWHID ipnix shows equals swh.model's for the same file.
    let by_sha: HashMap<&str, &Path> = files
        .iter()
        .chain(&more)
        .map(|(p, s)| (s.as_str(), p.as_path()))
        .collect();
    let mut checked = 0;
    for line in ipnix.ok(&["sources", "ls", "thousand", "--json"]).lines() {
        let e: Value = serde_json::from_str(line).expect("json");
        let sri = e["hash"].as_str().expect("hash");
        let hash = ipnix_bridge::NixHash::parse(sri).expect("sri");
        let path = by_sha[hex::encode(hash.digest()).as_str()];
        if let Some(object) = swh.objects.get(path.to_str().expect("utf-8")) {
            assert_eq!(e["swhid"], object["swhid"], "{}", path.display());
            checked += 1;
        }
    }
    assert_eq!(checked, 600);

    // One list of 1,000: one request of 1,000 SWHIDs.
    swh.control(json!({"reset": true})).expect("reset");
    let out = ipnix.ok(&[
        "swh",
        "coverage",
        "thousand",
        "--json",
        "--swh-url",
        &swh.url,
    ]);
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["entries"], 1000, "{report}");
    assert_eq!(report["archived"], 600, "{report}");
    assert_eq!(report["missing"], 400, "{report}");
    assert_eq!(report["tree_only"], 0, "{report}");
    assert_eq!(report["asked"], 1000);
    assert_eq!(report["requests"], 1);
    assert_eq!(known_posts(&swh), 1);
    assert_eq!(
        report["missing_entries"].as_array().map(Vec::len),
        Some(400)
    );

    // Both lists, 1,500 SWHIDs: two requests (1,000 + 500); 413 is never hit.
    swh.control(json!({"reset": true})).expect("reset");
    let out = ipnix.ok(&["swh", "coverage", "--json", "--swh-url", &swh.url]);
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["entries"], 1500, "{report}");
    assert_eq!(report["archived"], 700, "{report}");
    assert_eq!(report["missing"], 800, "{report}");
    assert_eq!(report["requests"], 2);
    assert_eq!(known_posts(&swh), 2);
    let text = ipnix.ok(&["swh", "coverage", "more", "--swh-url", &swh.url]);
    assert!(text.contains("100 archived"), "{text}");

    // Export: the missing entries as a sources.json ipnix pins again.
    let exported = dir.path().join("missing.json");
    ipnix.ok(&[
        "swh",
        "export",
        "thousand",
        "-o",
        exported.to_str().expect("utf-8"),
        "--swh-url",
        &swh.url,
    ]);
    let file: Value =
        serde_json::from_slice(&std::fs::read(&exported).expect("read")).expect("json");
    assert_eq!(file["version"], 1);
    assert_eq!(file["revision"], "c0ffee");
    let sources = file["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 400);
    for s in sources {
        assert_eq!(s["type"], "url");
        assert_eq!(s["outputHashMode"], "flat");
        assert!(
            s["integrity"]
                .as_str()
                .is_some_and(|i| i.starts_with("sha256-")),
            "{s}"
        );
        assert!(s["urls"].as_array().is_some_and(|u| !u.is_empty()), "{s}");
    }
    let again = Ipnix::new();
    let out = again.run(&[
        "sources",
        "pin",
        exported.to_str().expect("utf-8"),
        "--name",
        "again",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["ok"], 400, "{summary}");
}
