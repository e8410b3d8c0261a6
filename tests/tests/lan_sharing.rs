//! LAN sharing end to end: hosts in their own network namespaces on one
//! bridge (tests/src/netns.rs), each running `ipnix daemon` with mDNS and
//! nothing else for discovery. A closure built and signed by Nix is imported
//! on host A; on host B, Nix with its own store (`--store DIR`) substitutes it
//! through B's own ipnix (`nix copy --from http://127.0.0.1:PORT`), which
//! found A by itself. Then host A dies mid-transfer: B's request fails
//! cleanly, and a later request succeeds from host C, which has the closure
//! too. NARs are compared byte for byte with `nix-store --dump`.
//! Run under ../shared/peers/sandbox as root; without Nix or root it SKIPs.

use ipnix_tests::cli::Ipnix;
use ipnix_tests::netns::{skip_unless_runnable, Host, HostDaemon, Lan};
use ipnix_tests::nix::{stderr_of, NixKey, NixLab};
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon waits for a block before the read fails (the default,
/// 60 s, would only make the failure test slow).
const FETCH_TIMEOUT_SECS: &str = "5";
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// A store path of one random file, big enough that a transfer takes a while
/// over a rate-limited link.
const BLOB_NIX: &str = r#"{ salt, size }:
derivation {
  name = "lan-blob-${salt}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  args = [ "-c" "mkdir $out && head -c ${size} /dev/urandom > $out/blob && echo ${salt} > $out/salt" ];
}
"#;

fn build_blob(lab: &NixLab, size: usize) -> String {
    let file = lab.path("blob.nix");
    std::fs::write(&file, BLOB_NIX).expect("write blob.nix");
    let salt = format!("b{:016x}", rand::random::<u64>());
    lab.ok(
        "nix-build",
        &[
            file.to_str().expect("utf-8"),
            "--argstr",
            "salt",
            &salt,
            "--argstr",
            "size",
            &size.to_string(),
            "--no-out-link",
            "--option",
            "substituters",
            "",
        ],
    )
    .lines()
    .last()
    .expect("nix-build prints the out path")
    .to_string()
}

/// `nix ARGS` inside `host`, in the lab's environment.
fn nix_on(lab: &NixLab, host: &Host, args: &[&str]) -> std::process::Command {
    let mut cmd = lab.command("ip");
    cmd.args(["netns", "exec", &host.name, "nix"]).args(args);
    cmd
}

/// `nix copy --from` B's own ipnix into a fresh store, trusting only `key`.
fn copy_args<'a>(url: &'a str, to: &'a str, path: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "copy",
        "--from",
        url,
        "--to",
        to,
        path,
        "--option",
        "substituters",
        "",
        "--option",
        "trusted-public-keys",
        key,
        // One try: a failure must show, not be retried for minutes.
        "--option",
        "download-attempts",
        "1",
    ]
}

fn copy_through(
    lab: &NixLab,
    host: &Host,
    daemon: &HostDaemon,
    to: &Path,
    path: &str,
    key: &NixKey,
) -> Output {
    lab.forget_cache_lookups();
    let url = format!("http://127.0.0.1:{}", daemon.http_port());
    let to = to.to_str().expect("utf-8");
    nix_on(lab, host, &copy_args(&url, to, path, &key.public))
        .output()
        .expect("nix copy runs")
}

/// The NAR of `path` in the chroot store `store`, as Nix itself dumps it.
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
    assert!(
        out.status.success(),
        "dump-path {path}: {}",
        stderr_of(&out)
    );
    out.stdout
}

fn assert_same_nars(lab: &NixLab, store: &Path, paths: &[String]) {
    for path in paths {
        let theirs = dump_in(lab, store, path);
        let ours = lab.dump(path);
        assert!(theirs == ours, "NAR of {path} differs after substitution");
    }
}

/// Every host shares its store paths with the others (`--share-paths`:
/// off by default outside a private network).
fn start(ipnix: &Ipnix, host: &Host) -> HostDaemon {
    host.start_daemon(
        ipnix,
        &["--fetch-timeout", FETCH_TIMEOUT_SECS, "--share-paths"],
    )
    .unwrap_or_else(|e| panic!("daemon on {}: {e:#}", host.name))
}

fn import_closure(daemon: &HostDaemon, paths: &[&str]) {
    let mut args = vec!["nix", "import", "--closure"];
    args.extend_from_slice(paths);
    daemon.ok(&args);
}

fn wait_for_each_other(x: &HostDaemon, y: &HostDaemon) {
    x.wait_for_peer(&y.peer_id(), DISCOVERY_TIMEOUT)
        .unwrap_or_else(|e| panic!("mDNS discovery: {e:#}\n{}", x.stderr().join("\n")));
}

#[test]
fn a_closure_built_on_a_is_substituted_on_b_through_its_own_ipnix() {
    const TEST: &str = "a_closure_built_on_a_is_substituted_on_b_through_its_own_ipnix";
    let Some(lab) = NixLab::new(TEST) else { return };
    if !skip_unless_runnable(TEST) {
        return;
    }
    let lan = Lan::create(2).expect("LAN");
    let (host_a, host_b) = (&lan.hosts[0], &lan.hosts[1]);
    let closure = lab.build_closure();
    let key = lab.gen_key("builder-a-1");
    lab.sign(&key, &[&closure.top]);

    let (repo_a, repo_b) = (Ipnix::new(), Ipnix::new());
    let a = start(&repo_a, host_a);
    let b = start(&repo_b, host_b);
    import_closure(&a, &[&closure.top]);
    wait_for_each_other(&b, &a);

    let store_b = lab.path("store-b");
    let out = copy_through(&lab, host_b, &b, &store_b, &closure.top, &key);
    assert!(
        out.status.success(),
        "nix copy on B through B's ipnix: {}\nB's daemon: {}",
        stderr_of(&out),
        b.stderr().join("\n")
    );
    assert_same_nars(&lab, &store_b, &closure.all);
    let verify = lab.verify(Some(&store_b), &closure.top, &[&key.public]);
    assert!(
        verify.status.success(),
        "nix store verify: {}",
        stderr_of(&verify)
    );

    // A path nobody has: a plain 404 for Nix, quickly.
    let started = Instant::now();
    let (status, _) = b
        .http_get("/2aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.narinfo")
        .expect("narinfo miss");
    assert_eq!(status, 404);
    eprintln!("narinfo miss on B answered in {:?}", started.elapsed());
}

/// Waits until `b` has received at least `bytes` over Bitswap.
fn wait_for_received(b: &HostDaemon, bytes: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = b
            .http_get("/metrics")
            .ok()
            .and_then(|(_, body)| {
                String::from_utf8_lossy(&body).lines().find_map(|line| {
                    let rest = line.strip_prefix("ipnix_bitswap_block_bytes_received_total ")?;
                    rest.trim().parse::<f64>().ok()
                })
            })
            .unwrap_or(0.0);
        if received >= bytes as f64 {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nix copy ended ({status}) before the transfer could be interrupted");
        }
        assert!(
            Instant::now() < deadline,
            "B received {received} bytes only"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_host_dying_mid_transfer_fails_cleanly_and_another_host_serves_later() {
    const TEST: &str = "a_host_dying_mid_transfer_fails_cleanly_and_another_host_serves_later";
    let Some(lab) = NixLab::new(TEST) else { return };
    if !skip_unless_runnable(TEST) {
        return;
    }
    let lan = Lan::create(3).expect("LAN");
    let (host_a, host_b, host_c) = (&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]);
    let blob = build_blob(&lab, 24 * 1024 * 1024);
    let key = lab.gen_key("builder-ac-1");
    lab.sign(&key, &[&blob]);

    let (repo_a, repo_b, repo_c) = (Ipnix::new(), Ipnix::new(), Ipnix::new());
    let mut a = start(&repo_a, host_a);
    let b = start(&repo_b, host_b);
    let c = start(&repo_c, host_c);
    import_closure(&a, &[&blob]);
    wait_for_each_other(&b, &a);
    wait_for_each_other(&b, &c);

    // A slow link out of A, so the transfer is still going when A dies.
    let tc = host_a
        .command("tc")
        .args([
            "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "40mbit",
        ])
        .args(["burst", "64kb", "latency", "400ms"])
        .output()
        .expect("tc runs");
    assert!(tc.status.success(), "tc: {}", stderr_of(&tc));

    let url = format!("http://127.0.0.1:{}", b.http_port());
    let first_store = lab.path("store-b-first");
    lab.forget_cache_lookups();
    let mut copy = nix_on(
        &lab,
        host_b,
        &copy_args(
            &url,
            first_store.to_str().expect("utf-8"),
            &blob,
            &key.public,
        ),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("nix copy starts");
    wait_for_received(&b, 2 * 1024 * 1024, &mut copy);
    a.kill();
    let started = Instant::now();
    let out = copy.wait_with_output().expect("nix copy ends");
    assert!(
        !out.status.success(),
        "the copy cannot succeed once A is gone and nobody else has the path"
    );
    eprintln!(
        "B's request failed {:?} after A died: {}",
        started.elapsed(),
        stderr_of(&out).lines().last().unwrap_or_default()
    );
    let valid = lab.run(
        "nix",
        &[
            "path-info",
            "--store",
            first_store.to_str().expect("utf-8"),
            &blob,
        ],
    );
    assert!(
        !valid.status.success(),
        "nothing half-transferred is valid in B's Nix store"
    );
    let (status, _) = b.http_get("/nix-cache-info").expect("B still serves");
    assert_eq!(status, 200, "B's daemon survived the failed transfer");

    // C gets the same closure; B, which found C by itself, now gets it from C.
    import_closure(&c, &[&blob]);
    // A later request succeeds. A's connection to B may outlive A (QUIC
    // waits for its idle timeout): B's want-blocks leave a peer that has
    // gone silent for one that said HAVE (bitswap::client, SILENT_PEER).
    let second_store = lab.path("store-b-later");
    let out = copy_through(&lab, host_b, &b, &second_store, &blob, &key);
    assert!(
        out.status.success(),
        "nix copy from C through B: {}\nB's daemon: {}\nC's daemon: {}",
        stderr_of(&out),
        b.stderr().join("\n"),
        c.stderr().join("\n")
    );
    assert_same_nars(&lab, &second_store, std::slice::from_ref(&blob));
    let verify = lab.verify(Some(&second_store), &blob, &[&key.public]);
    assert!(
        verify.status.success(),
        "nix store verify: {}",
        stderr_of(&verify)
    );
}
