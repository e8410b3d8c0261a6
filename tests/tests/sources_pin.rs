//! `ipnix sources` end to end, with real registry tarballs served by a
//! loopback upstream and real Nix: a sources.json mixing flat and
//! recursive entries, hash forms, mirrors whose first URL is dead, HTTPS
//! with a test CA, redirects and bad entries; every hash and store path
//! checked against Nix's own tools; re-runs that fetch nothing again; and
//! the user story: stock Nix gets the sources back through the daemon
//! (hashed mirror for builtin fetchurl, content-addressed narinfos for
//! `nix copy`) while their URLs answer nothing, trusting no key.

use ipnix_bridge::{HashAlgo, NixHash};
use ipnix_tests::cli::{assert_success, Daemon, Ipnix};
use ipnix_tests::corpus::{self, CorpusFile, Registry};
use ipnix_tests::nix::{stderr_of, NixLab};
use ipnix_tests::upstream::{http_request, Upstream, UpstreamOptions};
use serde_json::{json, Value};

/// The URL path of a corpus file under the upstream's root.
fn rel(file: &CorpusFile) -> String {
    format!("{}/{}", file.registry.as_str(), file.file_name)
}

fn ls(ipnix: &Ipnix, name: &str) -> Vec<Value> {
    ipnix
        .ok(&["sources", "ls", name, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("ls prints JSON lines"))
        .collect()
}

#[test]
fn sources_pin_serves_real_tarballs_to_stock_nix() {
    const TEST: &str = "sources_pin_serves_real_tarballs_to_stock_nix";
    let Some(corpus) = corpus::load_or_skip(TEST) else {
        return;
    };
    let Some(lab) = NixLab::new(TEST) else {
        return;
    };
    if let Some(reason) = ipnix_tests::upstream::unusable() {
        ipnix_tests::peers::skip(TEST, &reason);
        return;
    }
    let upstream = Upstream::start(UpstreamOptions::new(&corpus.dir)).expect("upstream starts");
    let mut pypi: Vec<&CorpusFile> = corpus.from_registry(Registry::PyPi).collect();
    // Kept out of the good entries: a source already held is never fetched
    // again, so a changed upstream shows only for one not held yet.
    let changed = pypi.pop().expect("a PyPI file");
    let npm: Vec<&CorpusFile> = corpus.from_registry(Registry::Npm).collect();
    let crates: Vec<&CorpusFile> = corpus.from_registry(Registry::CratesIo).collect();
    assert!(
        pypi.len() >= 3 && npm.len() >= 2 && crates.len() >= 2,
        "corpus too small"
    );

    let mut sources = Vec::new();
    // PyPI sdists, flat, the older outputHash form in hex; the first has a
    // dead first mirror, the second comes over HTTPS with the test CA.
    for (i, file) in pypi.iter().enumerate() {
        let good = match i {
            1 => upstream.https_url(&format!("/f/{}", rel(file))),
            _ => upstream.http_url(&format!("/f/{}", rel(file))),
        };
        let mut urls = vec![good];
        if i == 0 {
            urls.insert(0, upstream.http_url(&format!("/404/{}", rel(file))));
        }
        sources.push(json!({
            "type": "url", "urls": urls,
            "outputHash": file.published_hash_text, "outputHashAlgo": "sha256",
            "outputHashMode": "flat", "inferredFetcher": "fetchurl",
        }));
    }
    // npm tarballs, flat, SRI sha512 as npm publishes it.
    for file in &npm {
        sources.push(json!({
            "type": "url", "urls": [upstream.http_url(&format!("/f/{}", rel(file)))],
            "integrity": file.published_hash_text, "outputHashMode": "",
        }));
    }
    // crates, flat, SRI sha256, behind two redirects.
    for file in &crates {
        sources.push(json!({
            "type": "url", "urls": [upstream.http_url(&format!("/redirect/2/{}", rel(file)))],
            "integrity": file.sha256.to_sri(), "outputHashAlgo": "sha256",
        }));
    }
    // Recursive (fetchzip) entries: a crate and an npm tarball, their hash
    // from nix-prefetch-url --unpack.
    let mut recursive = vec![crates[0], npm[0]];
    recursive.extend(corpus.files.iter().find(|f| f.file_name.ends_with(".zip")));
    let mut recursive_hashes = Vec::new();
    for file in recursive {
        let hash = lab.prefetch_unpack(&file.path);
        sources.push(json!({
            "type": "url", "urls": [upstream.http_url(&format!("/f/{}", rel(file)))],
            "integrity": hash.to_sri(), "outputHashMode": "recursive",
            "postFetch": "",
        }));
        recursive_hashes.push(hash);
    }
    let ok_count = sources.len();
    // Bad entries: upstream changed the tarball, a dead URL, a git source.
    sources.push(json!({
        "type": "url", "urls": [upstream.http_url(&format!("/mutate/{}", rel(changed)))],
        "integrity": changed.sha256.to_sri(),
    }));
    sources.push(json!({
        "type": "url", "urls": [upstream.http_url("/404/gone-1.0.tar.gz")],
        "integrity": NixHash::new(HashAlgo::Sha256, &[9; 32]).expect("hash").to_sri(),
    }));
    sources.push(json!({
        "type": "git", "git_url": "https://example.invalid/x.git", "git_ref": "v1",
        "integrity": NixHash::new(HashAlgo::Sha256, &[8; 32]).expect("hash").to_sri(),
    }));
    let list = json!({"version": 1, "revision": "0123abcd", "sources": sources});
    let list_path = lab.path("sources.json");
    std::fs::write(&list_path, serde_json::to_vec_pretty(&list).expect("json")).expect("write");

    let ipnix = Ipnix::new();
    let ca = upstream.ca_path().to_str().expect("utf-8").to_owned();
    let list_arg = list_path.to_str().expect("utf-8").to_owned();
    let pin_args = ["sources", "pin", &list_arg, "--json", "--cacert", &ca];
    let out = ipnix.run(&pin_args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a list with failed entries exits 1: {}",
        stderr_of(&out)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert_eq!(summary["name"], "nixpkgs-0123abcd", "{summary}");
    assert_eq!(summary["ok"], ok_count, "{summary}");
    assert_eq!(summary["failed"], 2, "{summary}");
    assert_eq!(summary["skipped"], 1, "{summary}");
    assert_eq!(summary["failures"]["hash-mismatch"], 1, "{summary}");
    assert_eq!(summary["failures"]["not-found"], 1, "{summary}");

    // Every stored path is the one Nix computes for the entry.
    let entries = ls(&ipnix, "nixpkgs-0123abcd");
    assert_eq!(entries.len(), ok_count + 3);
    for file in pypi.iter().chain(&npm).chain(&crates) {
        let hash = file.published_hash.clone();
        let sri = if file.registry == Registry::CratesIo {
            file.sha256.to_sri()
        } else {
            hash.to_sri()
        };
        let entry = entries
            .iter()
            .find(|e| e["hash"] == sri.as_str() && e["mode"] == "flat")
            .unwrap_or_else(|| panic!("{} listed", file.file_name));
        assert_eq!(entry["status"], "ok", "{entry}");
        let want =
            lab.print_fixed_path(false, &NixHash::parse(&sri).expect("sri"), &file.file_name);
        assert_eq!(entry["store_path"], want.as_str(), "{}", file.file_name);
        assert_eq!(entry["size"], file.size, "{}", file.file_name);
        let blob = ipnix_tests::nix::git_blob_id(&file.read().expect("corpus"));
        assert_eq!(
            entry["swhid"],
            format!("swh:1:cnt:{blob}").as_str(),
            "{}",
            file.file_name
        );
    }
    for hash in &recursive_hashes {
        let entry = entries
            .iter()
            .find(|e| e["hash"] == hash.to_sri().as_str())
            .expect("recursive entry listed");
        assert_eq!(entry["status"], "ok", "{entry}");
        assert_eq!(
            entry["store_path"],
            lab.print_fixed_path(true, hash, "source").as_str()
        );
    }
    let mismatch = entries
        .iter()
        .find(|e| e["reason"] == "hash-mismatch")
        .expect("mismatch listed");
    assert!(
        mismatch["got"]
            .as_str()
            .is_some_and(|g| g.starts_with("sha256-")),
        "{mismatch}"
    );
    assert_ne!(mismatch["got"], mismatch["hash"]);
    let skipped = entries
        .iter()
        .find(|e| e["status"] == "skipped")
        .expect("git entry skipped");
    assert_eq!(skipped["reason"], "unsupported", "{skipped}");

    let status: Value =
        serde_json::from_str(&ipnix.ok(&["sources", "status", "nixpkgs-0123abcd", "--json"]))
            .expect("status JSON");
    assert_eq!(status["ok"], ok_count, "{status}");
    assert_eq!(status["failures"]["not-found"], 1, "{status}");

    // A re-run fetches nothing it already has.
    upstream.reset_stats().expect("reset");
    let again = ipnix.run(&pin_args);
    assert_eq!(again.status.code(), Some(1), "{}", stderr_of(&again));
    for file in pypi.iter().chain(&npm) {
        let fetched = upstream
            .requests(&format!("/f/{}", rel(file)))
            .expect("stats");
        assert_eq!(fetched, 0, "{} fetched again", file.file_name);
    }

    // `sources get` writes verified bytes by any hash form.
    let small = pypi[0];
    let got = lab.path("got.tar.gz");
    let hex = hex::encode(small.sha256.digest());
    ipnix.ok(&["sources", "get", &hex, "-o", got.to_str().expect("utf-8")]);
    assert_eq!(
        std::fs::read(&got).expect("read"),
        small.read().expect("corpus")
    );
    let exists = ipnix.fails(&["sources", "get", &hex, "-o", got.to_str().expect("utf-8")]);
    assert!(exists.contains("exists"), "{exists}");

    // The daemon serves them; upstream is gone from here on.
    drop(upstream);
    let daemon = Daemon::start(&ipnix, &[]);
    let url = daemon.url.clone();
    for file in pypi.iter().chain(&npm).chain(&crates) {
        let body = http_request(
            &format!("{url}/sha256/{}", hex::encode(file.sha256.digest())),
            "GET",
            &[],
        )
        .expect("mirror answers");
        assert_eq!(body.status, 200, "{}", file.file_name);
        assert_eq!(
            body.body,
            file.read().expect("corpus"),
            "{}",
            file.file_name
        );
    }
    let npm_sri = npm[0].published_hash.to_sri();
    let sri = http_request(&format!("{url}/{npm_sri}"), "HEAD", &[]).expect("head");
    assert_eq!(sri.status, 200);
    assert_eq!(
        sri.header("content-length"),
        Some(npm[0].size.to_string().as_str())
    );
    let ranged = http_request(
        &format!("{url}//{npm_sri}"),
        "GET",
        &[("Range", "bytes=10-19")],
    )
    .expect("range");
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, npm[0].read().expect("corpus")[10..20]);
    let unknown =
        http_request(&format!("{url}/sha256/{}", "0".repeat(64)), "GET", &[]).expect("miss");
    assert_eq!(unknown.status, 404);

    // Nix's builtin fetchurl, URL dead, through the hashed mirror.
    let flat_path = lab.print_fixed_path(false, &small.sha256, &small.file_name);
    lab.delete(std::slice::from_ref(&flat_path));
    let expr = format!(
        "import <nix/fetchurl.nix> {{ url = \"http://127.0.0.1:1/dead/{}\"; sha256 = \"{}\"; }}",
        small.file_name,
        small.sha256.nix32_digest()
    );
    let built = lab.run(
        "nix-build",
        &[
            "--no-out-link",
            "-E",
            &expr,
            "--option",
            "hashed-mirrors",
            &url,
            "--option",
            "substituters",
            "",
        ],
    );
    assert!(
        built.status.success(),
        "builtin fetchurl through the hashed mirror: {}",
        stderr_of(&built)
    );
    assert_eq!(String::from_utf8_lossy(&built.stdout).trim(), flat_path);
    assert_eq!(
        std::fs::read(&flat_path).expect("built"),
        small.read().expect("corpus")
    );

    // Content-addressed narinfos: nix copy with no trusted key at all.
    let to = lab.path("other-store");
    for (hash, name, recursive) in [
        (&recursive_hashes[0], "source", true),
        (&npm[1].published_hash, npm[1].file_name.as_str(), false),
    ] {
        let path = lab.print_fixed_path(recursive, hash, name);
        let out = lab.copy_from(&url, &to, &path, &[]);
        assert_success(&out, &["nix copy --from", &url, &path]);
    }
}

#[test]
fn a_malformed_list_is_one_clear_error_and_pins_nothing() {
    let ipnix = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("bad.json");
    let good = json!({"type": "url", "urls": ["http://127.0.0.1:1/a.tar.gz"],
        "integrity": NixHash::new(HashAlgo::Sha256, &[1; 32]).expect("hash").to_sri()});
    let bad =
        json!({"type": "url", "urls": ["http://127.0.0.1:1/b.tar.gz"], "integrity": "sha256-nope"});
    std::fs::write(
        &list,
        json!({"version": 1, "sources": [good, bad]}).to_string(),
    )
    .expect("write");
    let err = ipnix.fails(&["sources", "pin", list.to_str().expect("utf-8")]);
    assert!(err.contains('1'), "names the entry index: {err}");
    assert!(ipnix.ok(&["sources", "status"]).trim().is_empty());
    assert!(ipnix.ok(&["pin", "ls"]).trim().is_empty());
}

#[test]
fn from_store_takes_fixed_output_paths_nix_already_has() {
    const TEST: &str = "from_store_takes_fixed_output_paths_nix_already_has";
    let Some(lab) = NixLab::new(TEST) else {
        return;
    };
    let salt = rand::random::<u64>();
    let file = lab.path(&format!("local-{salt:016x}.tar.gz"));
    let data = format!("a source only the local Nix store has {salt}\n").repeat(1000);
    std::fs::write(&file, &data).expect("write");
    let file_arg = file.to_str().expect("utf-8");
    let hash = NixHash::parse(&format!(
        "sha256:{}",
        lab.ok(
            "nix-hash",
            &["--type", "sha256", "--flat", "--base32", file_arg]
        )
    ))
    .expect("hash");
    let store_path = lab.ok("nix-store", &["--add-fixed", "sha256", file_arg]);
    let list = lab.path("sources.json");
    let name = file.file_name().and_then(|n| n.to_str()).expect("name");
    std::fs::write(
        &list,
        json!({"version": 1, "sources": [{
            "type": "url", "urls": [format!("http://127.0.0.1:1/dead/{name}")],
            "integrity": hash.to_sri(), "nixStorePath": store_path,
        }]})
        .to_string(),
    )
    .expect("write");
    let ipnix = Ipnix::new();
    let list_arg = list.to_str().expect("utf-8");
    // Without --from-store the dead URL fails the entry.
    let out = ipnix.run(&["sources", "pin", list_arg, "--name", "local", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let out = ipnix.run(&[
        "sources",
        "pin",
        list_arg,
        "--name",
        "local",
        "--from-store",
        "--json",
    ]);
    assert_success(&out, &["sources pin --from-store"]);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["ok"], 1, "{summary}");
    assert_eq!(summary["fetched"], 0, "{summary}");
    let entries = ls(&ipnix, "local");
    assert_eq!(entries[0]["store_path"], store_path.as_str());
    lab.delete(std::slice::from_ref(&store_path));
}

/// Kills `sources pin` with SIGKILL at seeded random moments; after each
/// kill the repo verifies clean and no list is pinned half-done; a last run
/// finishes without fetching again what earlier runs stored (DESIGN.md I-24).
#[test]
fn kill_9_mid_pin_resumes_and_leaves_a_consistent_repo() {
    const TEST: &str = "kill_9_mid_pin_resumes_and_leaves_a_consistent_repo";
    let Some(corpus) = corpus::load_or_skip(TEST) else {
        return;
    };
    if let Some(reason) = ipnix_tests::upstream::unusable() {
        ipnix_tests::peers::skip(TEST, &reason);
        return;
    }
    let seed: u64 = std::env::var("SOURCES_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let kills: usize = std::env::var("SOURCES_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    println!("{TEST}: seed {seed} (SOURCES_KILL_SEED), {kills} kills (SOURCES_KILLS)");
    // Slow enough that a run spans a few seconds, so kills land mid-transfer.
    let upstream = Upstream::start(UpstreamOptions::new(&corpus.dir).with_slow_rate(4 << 20))
        .expect("upstream starts");
    let sources: Vec<Value> = corpus
        .files
        .iter()
        .map(|file| {
            json!({"type": "url", "urls": [upstream.http_url(&format!("/slow/{}", rel(file)))],
                   "integrity": file.sha256.to_sri()})
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("sources.json");
    std::fs::write(&list, json!({"version": 1, "sources": sources}).to_string()).expect("write");
    let list_arg = list.to_str().expect("utf-8");
    let ipnix = Ipnix::new();
    let mut rng = seed;
    let mut next = move || {
        // xorshift64*: reproducible from the printed seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for kill in 0..kills {
        let mut child = ipnix
            .command()
            .args([
                "sources", "pin", list_arg, "--name", "killed", "--jobs", "4",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pin starts");
        let delay = 50 + next() % 1500;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let finished = child.try_wait().expect("wait").is_some();
        let _ = child.kill();
        let _ = child.wait();
        let verify = ipnix.run(&["repo", "verify"]);
        assert_success(
            &verify,
            &["repo verify", &format!("after kill {kill} at {delay} ms")],
        );
        let pins = ipnix.ok(&["pin", "ls"]);
        if !finished {
            // Either no list pin yet, or the whole list (a run that committed
            // just before the kill); never a partial one: the status agrees.
            if let Some(status) = ipnix
                .run(&["sources", "status", "killed", "--json"])
                .status
                .success()
                .then(|| ipnix.ok(&["sources", "status", "killed", "--json"]))
            {
                let status: Value = serde_json::from_str(&status).expect("json");
                assert_eq!(status["total"], corpus.files.len(), "{status}");
            } else {
                assert!(!pins.contains("sources:killed"), "{pins}");
            }
        }
    }
    upstream.reset_stats().expect("reset");
    let out = ipnix.run(&["sources", "pin", list_arg, "--name", "killed", "--json"]);
    assert_success(&out, &["sources pin after kills"]);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(summary["ok"], corpus.files.len(), "{summary}");
    let fetched = summary["fetched"].as_u64().expect("fetched") as usize;
    assert!(
        fetched < corpus.files.len() || kills == 0,
        "the last run fetched only what earlier runs had not stored: {summary}"
    );
    assert_success(
        &ipnix.run(&["repo", "verify"]),
        &["repo verify", "at the end"],
    );
    for file in &corpus.files {
        let got = dir.path().join(format!("got-{}", file.file_name));
        ipnix.ok(&[
            "sources",
            "get",
            &file.sha256.to_sri(),
            "-o",
            got.to_str().expect("utf-8"),
        ]);
        assert_eq!(
            std::fs::read(&got).expect("read"),
            file.read().expect("corpus")
        );
    }
}
