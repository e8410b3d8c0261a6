//! Sources between LAN hosts end to end: two hosts in their own network
//! namespaces on one bridge (tests/src/netns.rs), each running `ipnix
//! daemon` with mDNS and default settings (sources are shared without
//! `--share-paths`). Host A pins real registry tarballs (`ipnix sources add
//! --file F --hash ...`); on host B:
//! - Nix's builtin fetchurl, whose URL is dead and with no substituter,
//!   fetches one through B's ipnix as its hashed mirror (B asks A over
//!   `/ipnix/source/1.0.0`, verifies, serves), and Nix checks the hash itself;
//! - `GET /sha256/<hex>` of an npm tarball pinned by its sha512 returns the
//!   exact bytes;
//! - `ipnix sources get HASH -o FILE` writes a third one "from peer";
//! - a hash nobody holds is a 404.
//!
//! Run under ../shared/peers/sandbox as root; without Nix, root or the
//! source corpus (tests/setup-sources-corpus.sh) it SKIPs.

use ipnix_tests::cli::Ipnix;
use ipnix_tests::corpus::{self, CorpusFile, Registry};
use ipnix_tests::netns::{skip_unless_runnable, HostDaemon, Lan};
use ipnix_tests::nix::{stderr_of, NixLab};
use std::time::Duration;

const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Every host's daemon: shorter block timeouts than the default, so a
/// failure shows quickly; a peer timeout with room for a loaded machine
/// (the default 100 ms passes here too, but the machine is shared).
fn start(ipnix: &Ipnix, host: &ipnix_tests::netns::Host) -> HostDaemon {
    host.start_daemon(ipnix, &["--fetch-timeout", "20", "--peer-timeout", "2000"])
        .unwrap_or_else(|e| panic!("daemon on {}: {e:#}", host.name))
}

/// `ipnix sources add --file F --hash H` on `daemon`'s host.
fn add_source(daemon: &HostDaemon, file: &CorpusFile, hash: &str) {
    let path = file.path.to_str().expect("utf-8 path");
    daemon.ok(&[
        "sources", "add", "--file", path, "--hash", hash, "--name", "lan",
    ]);
}

#[test]
fn a_source_pinned_on_a_reaches_nix_on_b_through_bs_hashed_mirror() {
    const TEST: &str = "a_source_pinned_on_a_reaches_nix_on_b_through_bs_hashed_mirror";
    let Some(lab) = NixLab::new(TEST) else { return };
    if !skip_unless_runnable(TEST) {
        return;
    }
    let Some(corpus) = corpus::load_or_skip(TEST) else {
        return;
    };
    // Over one MiB (a UnixFS file of several leaves), a small sdist, and an
    // npm tarball published by sha512.
    let pypi: Vec<&CorpusFile> = corpus.from_registry(Registry::PyPi).collect();
    let big = pypi
        .iter()
        .find(|f| f.is_over_one_mib() && f.file_name.ends_with(".tar.gz"))
        .expect("the corpus has a PyPI sdist over 1 MiB");
    let small = pypi
        .iter()
        .find(|f| !f.is_over_one_mib() && f.file_name != big.file_name)
        .expect("the corpus has a small PyPI sdist");
    let npm = corpus
        .from_registry(Registry::Npm)
        .next()
        .expect("the corpus has an npm tarball");

    let lan = Lan::create(2).expect("LAN");
    let (host_a, host_b) = (&lan.hosts[0], &lan.hosts[1]);
    let (repo_a, repo_b) = (Ipnix::new(), Ipnix::new());
    let a = start(&repo_a, host_a);
    let b = start(&repo_b, host_b);
    for file in [big, small] {
        add_source(&a, file, &file.sha256.to_sri());
    }
    add_source(&a, npm, &npm.published_hash.to_sri());
    b.wait_for_peer(&a.peer_id(), DISCOVERY_TIMEOUT)
        .unwrap_or_else(|e| panic!("mDNS discovery: {e:#}\n{}", b.stderr().join("\n")));

    // Nix on B: builtin fetchurl, the URL dead, no substituter; B's ipnix
    // is the hashed mirror. A unique name keeps the output path fresh.
    let mirror = format!("http://127.0.0.1:{}", b.http_port());
    let name = format!("lan-{:08x}-{}", rand::random::<u32>(), big.file_name);
    let expr = format!(
        "import <nix/fetchurl.nix> {{ url = \"http://127.0.0.1:1/dead/{name}\"; sha256 = \"{}\"; }}",
        big.sha256.nix32_digest()
    );
    let built = lab
        .command("ip")
        .args(["netns", "exec", &host_b.name, "nix-build"])
        .args(["--no-out-link", "-E", &expr])
        .args(["--option", "hashed-mirrors", &mirror])
        .args(["--option", "substituters", ""])
        .output()
        .expect("nix-build runs");
    assert!(
        built.status.success(),
        "nix-build on B through B's hashed mirror: {}\nB's daemon: {}",
        stderr_of(&built),
        b.stderr().join("\n")
    );
    let out_path = String::from_utf8_lossy(&built.stdout).trim().to_string();
    assert!(out_path.ends_with(&name), "{out_path}");
    let fixed = lab.ok(
        "nix-store",
        &[
            "--print-fixed-path",
            "sha256",
            &big.sha256.nix32_digest(),
            &name,
        ],
    );
    assert_eq!(out_path, fixed, "the fixed-output path Nix expects");
    let bytes = big.read().expect("corpus");
    assert!(
        std::fs::read(&out_path).expect("built file") == bytes,
        "Nix got the exact tarball"
    );
    lab.delete(std::slice::from_ref(&out_path));
    // It came from A, verified on B (B's log says so).
    let verified = format!(
        "source flat:sha256:{} from {}: verified and indexed",
        hex::encode(big.sha256.digest()),
        a.peer_id()
    );
    assert!(
        b.stderr().iter().any(|l| l.contains(&verified)),
        "B's daemon: {}",
        b.stderr().join("\n")
    );

    // B now holds it (an unpinned cache) and serves it by itself.
    let (status, body) = b
        .http_get(&format!("/sha256/{}", hex::encode(big.sha256.digest())))
        .expect("GET");
    assert_eq!(status, 200);
    assert!(body == bytes);

    // An npm tarball pinned by sha512, asked by its SHA-256, first time on B.
    let (status, body) = b
        .http_get(&format!("/sha256/{}", hex::encode(npm.sha256.digest())))
        .expect("GET");
    assert_eq!(
        status,
        200,
        "{}\nB's daemon: {}",
        String::from_utf8_lossy(&body),
        b.stderr().join("\n")
    );
    assert!(body == npm.read().expect("corpus"), "the exact npm bytes");

    // `ipnix sources get` on B: neither pinned nor recorded there.
    let output = lab.path("small-from-peer");
    let got = b.ok(&[
        "--json",
        "sources",
        "get",
        &small.sha256.to_sri(),
        "-o",
        output.to_str().expect("utf-8"),
    ]);
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["from"], "peer", "{got}");
    assert!(std::fs::read(&output).expect("written") == small.read().expect("corpus"));

    // A hash nobody holds: 404 (after at most B's --peer-timeout).
    let (status, _) = b
        .http_get(&format!("/sha256/{}", "0".repeat(64)))
        .expect("GET");
    assert_eq!(status, 404);
}
