//! The status page (`GET /` on the daemon's HTTP listener) in a real
//! browser: Debian's headless Chromium (tests/setup-chromium.sh) loads it
//! from a daemon that holds a file, a sources list pinned from the loopback
//! upstream (one entry ok, one not found, one with a wrong hash, one skipped)
//! and a connected peer it fetched a file from; the test saves a screenshot
//! and checks that the DOM shows exactly the numbers the CLI prints (`id`,
//! `peers`, `repo stat`, `sources status`, `nix ls`, `stats`). Also: `/`
//! leaves the binary cache and the hashed mirror alone, and sends no script.

use ipnix_bridge::{HashAlgo, NixHash};
use ipnix_tests::cli::{Daemon, Ipnix};
use ipnix_tests::upstream::{http_request, Upstream, UpstreamOptions};
use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;

const TEST: &str = "status_page";

/// Chromium's binary, if installed.
fn chromium() -> Option<PathBuf> {
    for name in ["chromium", "chromium-browser"] {
        if let Ok(out) = Command::new("which").arg(name).output() {
            if out.status.success() {
                let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if !path.is_empty() {
                    return Some(PathBuf::from(path));
                }
            }
        }
    }
    None
}

/// Runs headless Chromium on `url` with a fresh profile, nothing but
/// loopback to talk to; `mode` is `--dump-dom` or `--screenshot=FILE`.
fn run_chromium(bin: &Path, url: &str, mode: &str) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--no-proxy-server",
            "--hide-scrollbars",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY")
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {mode} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 DOM")
}

/// Text of the first element whose opening tag carries `attr` (e.g.
/// `id="repo-blocks"`), up to its first child tag.
fn text_of(dom: &str, attr: &str) -> String {
    let at = dom
        .find(attr)
        .unwrap_or_else(|| panic!("the page has no element with {attr}"));
    let rest = &dom[at..];
    let start = rest.find('>').expect("tag closes") + 1;
    let end = rest[start..].find('<').expect("text ends");
    html_unescape(&rest[start..start + end])
}

/// Texts of every element whose opening tag carries `attr`.
fn texts_of(dom: &str, attr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(attr) {
        rest = &rest[at..];
        let start = rest.find('>').expect("tag closes") + 1;
        let end = rest[start..].find('<').expect("text ends");
        out.push(html_unescape(&rest[start..start + end]));
        rest = &rest[start + end..];
    }
    out
}

fn number(dom: &str, attr: &str) -> u64 {
    let text = text_of(dom, attr);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{attr}: {text:?} is not a number"))
}

fn html_unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The table row of a sources list (`<tr class="list" data-list="NAME">…</tr>`).
fn list_row<'a>(dom: &'a str, name: &str) -> &'a str {
    let marker = format!("data-list=\"{name}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for list {name}"));
    let rest = &dom[at..];
    &rest[..rest.find("</tr>").expect("row ends")]
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn tcp_addr(ipnix: &Ipnix) -> String {
    let id: Value = serde_json::from_str(&ipnix.ok(&["id", "--json"])).expect("id json");
    id["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.contains("/tcp/") && a.contains("127.0.0.1"))
        .expect("a loopback tcp address")
        .to_string()
}

#[test]
fn status_page_shows_what_the_cli_shows() {
    let Some(browser) = chromium() else {
        ipnix_tests::peers::skip(
            TEST,
            "chromium is not installed (run tests/setup-chromium.sh as root)",
        );
        return;
    };
    if let Some(reason) = ipnix_tests::upstream::unusable() {
        ipnix_tests::peers::skip(TEST, &reason);
        return;
    }
    // A source the upstream serves, and the list that names it.
    let served = tempfile::tempdir().expect("upstream root");
    let tarball = ipnix_store::test_util::pseudo_random(7, 300_000);
    std::fs::write(served.path().join("hello-1.0.tar.gz"), &tarball).expect("write");
    let upstream = Upstream::start(UpstreamOptions::new(served.path())).expect("upstream starts");
    let sri = |bytes: &[u8]| {
        NixHash::new(HashAlgo::Sha256, &sha2::Sha256::digest(bytes))
            .expect("hash")
            .to_sri()
    };
    let list = json!({"version": 1, "revision": "feedbeef", "sources": [
        {"type": "url", "urls": [upstream.http_url("/f/hello-1.0.tar.gz")], "integrity": sri(&tarball)},
        {"type": "url", "urls": [upstream.http_url("/404/gone-1.0.tar.gz")], "integrity": sri(b"gone")},
        {"type": "url", "urls": [upstream.http_url("/f/hello-1.0.tar.gz")], "integrity": sri(b"other")},
        {"type": "git", "git_url": "https://example.invalid/x.git", "git_ref": "v1", "integrity": sri(b"git")},
    ]});
    let work = tempfile::tempdir().expect("work dir");
    let list_path = work.path().join("sources.json");
    std::fs::write(&list_path, serde_json::to_vec(&list).expect("json")).expect("write");

    let a = Ipnix::new();
    let b = Ipnix::new();
    let _da = Daemon::start(&a, &[]);
    let db = Daemon::start(&b, &[]);
    // B adds a file, pins the list, connects to A and fetches A's file.
    b.run_with_stdin(&["add", "-Q", "-"], b"on the status page\n");
    let pinned = b.run(&["sources", "pin", list_path.to_str().expect("utf-8")]);
    assert_eq!(
        pinned.status.code(),
        Some(1),
        "a list with failures exits 1: {}",
        String::from_utf8_lossy(&pinned.stderr)
    );
    let remote_file = work.path().join("remote");
    std::fs::write(
        &remote_file,
        ipnix_store::test_util::pseudo_random(8, 3_000_000),
    )
    .expect("write");
    let remote = a
        .ok(&["add", "-Q", remote_file.to_str().expect("utf-8")])
        .trim()
        .to_string();
    b.ok(&["connect", &tcp_addr(&a)]);
    assert_eq!(b.ok_bytes(&["cat", &remote]).len(), 3_000_000);

    // `/` is the page; the cache and the mirror answer as before.
    let page = http_request(&format!("{}/", db.url), "GET", &[]).expect("GET /");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let body = String::from_utf8_lossy(&page.body);
    assert!(!body.contains("<script"), "no script on the page");
    assert!(
        !body.contains("http://") || !body.contains("src="),
        "no external asset"
    );
    let info = http_request(&format!("{}/nix-cache-info", db.url), "GET", &[]).expect("GET");
    assert_eq!(info.status, 200);
    assert!(String::from_utf8_lossy(&info.body).contains("StoreDir: /nix/store"));
    let narinfo = http_request(
        &format!("{}/{}.narinfo", db.url, "0".repeat(32)),
        "GET",
        &[],
    )
    .expect("GET");
    assert_eq!(narinfo.status, 404, "an unknown narinfo is still a 404");
    let head = http_request(&format!("{}/", db.url), "HEAD", &[]).expect("HEAD /");
    assert_eq!(head.status, 200);

    // The page in the browser.
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &browser,
        &format!("{}/", db.url),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
    eprintln!("status page screenshot: {}", shot.display());
    let dom = run_chromium(&browser, &format!("{}/", db.url), "--dump-dom");

    // Identity: `ipnix id`.
    let id: Value = serde_json::from_str(&b.ok(&["id", "--json"])).expect("id json");
    assert_eq!(
        text_of(&dom, "id=\"peer-id\""),
        id["peer_id"].as_str().expect("id")
    );
    let mut listen = texts_of(&dom, "class=\"listen-addr\"");
    let mut cli_listen: Vec<String> = id["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .map(|a| a.as_str().expect("addr").to_string())
        .collect();
    listen.sort();
    cli_listen.sort();
    assert_eq!(listen, cli_listen);

    // Peers: `ipnix peers`, line for line.
    let mut peers: Vec<String> = b.ok(&["peers"]).lines().map(str::to_string).collect();
    let mut shown = texts_of(&dom, "peer-addr\"");
    peers.sort();
    shown.sort();
    assert_eq!(shown, peers);
    assert_eq!(number(&dom, "id=\"peers-count\""), peers.len() as u64);
    assert_eq!(peers.len(), 1);

    // Repo: `ipnix repo stat`.
    let stat: Value = serde_json::from_str(&b.ok(&["repo", "stat", "--json"])).expect("stat");
    for (id, field) in [
        ("repo-blocks", "blocks"),
        ("repo-block-bytes", "block_bytes"),
        ("repo-disk-bytes", "disk_bytes"),
        ("repo-reclaimable-bytes", "pack_dead_bytes"),
        ("repo-pins", "pins"),
        ("repo-recursive-pins", "recursive_pins"),
        ("repo-direct-pins", "direct_pins"),
    ] {
        assert_eq!(
            number(&dom, &format!("id=\"{id}\"")),
            stat[field].as_u64().expect("a number"),
            "{id} vs repo stat {field}"
        );
    }

    // Sources lists: `ipnix sources status`.
    let lists = json_lines(&b.ok(&["sources", "status", "--json"]));
    assert_eq!(lists.len(), 1);
    assert_eq!(number(&dom, "id=\"sources-count\""), 1);
    let status = &lists[0];
    let name = status["name"].as_str().expect("name");
    assert_eq!(name, "nixpkgs-feedbeef");
    let row = list_row(&dom, name);
    for field in ["total", "ok", "bytes", "failed", "skipped"] {
        assert_eq!(
            number(row, &format!("n {field}\"")),
            status[field].as_u64().expect("a number"),
            "list {field}"
        );
    }
    assert_eq!(status["ok"], 1, "{status}");
    assert_eq!(status["failures"]["not-found"], 1, "{status}");
    assert_eq!(status["failures"]["hash-mismatch"], 1, "{status}");
    for (reason, n) in status["failures"].as_object().expect("failures") {
        let marker = format!("data-kind=\"failed\" data-reason=\"{reason}\"");
        let at = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no row for failure {reason}"));
        assert_eq!(
            number(&dom[at..], "class=\"n count\""),
            n.as_u64().expect("count")
        );
    }
    assert_eq!(
        number(row, "class=\"last-attempt\""),
        status["last_attempt"].as_u64().expect("time")
    );

    // Nix paths: `ipnix nix ls` (the pinned source is a fixed-output path).
    let paths = json_lines(&b.ok(&["nix", "ls", "--json"]));
    assert_eq!(number(&dom, "id=\"nix-total\""), paths.len() as u64);
    for status in ["pinned", "source", "unpinned", "missing"] {
        let n = paths.iter().filter(|p| p["status"] == status).count() as u64;
        assert_eq!(number(&dom, &format!("id=\"nix-{status}\"")), n, "{status}");
    }
    assert!(
        paths.iter().any(|p| p["status"] == "source"),
        "the list's source is an indexed path: {paths:?}"
    );

    // Bandwidth and transfers: `ipnix stats`.
    let stats: Value = serde_json::from_str(&b.ok(&["stats", "--json"])).expect("stats");
    for (id, field) in [
        ("bw-in-bytes", "bytes_in"),
        ("bw-in-blocks", "blocks_in"),
        ("bw-out-bytes", "bytes_out"),
        ("bw-out-blocks", "blocks_out"),
    ] {
        assert_eq!(
            number(&dom, &format!("id=\"{id}\"")),
            stats[field].as_u64().expect("a number"),
            "{id} vs stats {field}"
        );
    }
    assert!(
        stats["bytes_in"].as_u64().expect("bytes") >= 3_000_000,
        "{stats}"
    );
    let transfers = stats["transfers"].as_array().expect("transfers");
    assert!(
        transfers
            .iter()
            .any(|t| t["direction"] == "in" && t["bytes"].as_u64() >= Some(3_000_000)),
        "{stats}"
    );
    assert_eq!(
        dom.matches("class=\"transfer\"").count(),
        transfers.len(),
        "one row per transfer"
    );
}
