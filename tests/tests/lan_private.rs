//! Issue 5: private swarms. Daemons started with `--swarm-key FILE` (Kubo's
//! `swarm.key` format, libp2p pnet) connect only to peers holding the same
//! key, find them by mDNS, run TCP only and say on stderr that QUIC is off;
//! a bad key file is one line of error and a non-zero exit.

use ipnix_tests::cli::{assert_clean_failure, assert_success, Ipnix};
use ipnix_tests::netns::{skip_unless_runnable, HostDaemon, Lan};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the outsider keeps being watched after the members connected:
/// several mDNS answers and dial attempts happen in it.
const OUTSIDER_WATCH: Duration = Duration::from_secs(5);

/// A fresh key in Kubo's format: `/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits.
fn write_swarm_key(dir: &Path, name: &str) -> PathBuf {
    let key: [u8; 32] = rand::random();
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex::encode(key)),
    )
    .expect("write swarm key");
    path
}

fn wait_for_stderr(daemon: &HostDaemon, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = daemon.stderr();
        if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{} never printed {needle:?} on stderr: {lines:?}",
            daemon.host.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn only_holders_of_the_swarm_key_connect() {
    if !skip_unless_runnable("lan_private::only_holders_of_the_swarm_key_connect") {
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let k1 = write_swarm_key(keys.path(), "k1.key");
    let k2 = write_swarm_key(keys.path(), "k2.key");
    let (k1, k2) = (k1.to_str().expect("utf-8"), k2.to_str().expect("utf-8"));

    let lan = Lan::create(3).expect("create the LAN");
    let (repo_a, repo_b, repo_c) = (Ipnix::new(), Ipnix::new(), Ipnix::new());
    // Default flags otherwise: mDNS on, default listen addresses (which
    // include QUIC unless the swarm key switches it off).
    let a = lan.hosts[0]
        .start_daemon(&repo_a, &["--swarm-key", k1])
        .expect("daemon A");
    let b = lan.hosts[1]
        .start_daemon(&repo_b, &["--swarm-key", k1])
        .expect("daemon B");
    let c = lan.hosts[2]
        .start_daemon(&repo_c, &["--swarm-key", k2, "--fetch-timeout", "2"])
        .expect("daemon C");

    for daemon in [&a, &b, &c] {
        let line = wait_for_stderr(daemon, "QUIC is off");
        assert!(
            line.contains("private network") && line.contains("TCP only"),
            "unclear QUIC message: {line}"
        );
        let listen = daemon.listen_addrs();
        assert!(
            !listen.is_empty() && listen.iter().all(|addr| addr.contains("/tcp/")),
            "a private daemon listens on TCP only: {listen:?}"
        );
    }

    for (me, other) in [(&a, &b), (&b, &a)] {
        let peer = me
            .wait_for_peer(&other.peer_id(), DISCOVERY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\nstderr: {:?}", me.stderr()));
        let addrs = peer["addrs"].to_string();
        assert!(
            lan.in_subnet(peer["addrs"][0].as_str().unwrap_or_default()),
            "{} reaches {} outside {}: {peer}",
            me.host.name,
            other.host.name,
            lan.subnet()
        );
        assert!(!addrs.contains("quic"), "a private swarm used QUIC: {peer}");
    }

    let content = b"only for holders of K1\n".repeat(500);
    let cid = a.add_bytes(&content);
    let out = b.run(&["cat", &cid]);
    assert_success(&out, &["cat", &cid]);
    assert!(out.stdout == content, "B read other bytes than A added");

    // C holds another key: it sees A and B by mDNS, but every connection
    // fails the pnet handshake. Its `cat` waits for a block nobody it can
    // reach has, for its `--fetch-timeout` (2 s, inside the watch window),
    // then fails with one clear line.
    let mut cat_on_c = c
        .cli(&["cat", &cid])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cat on C");
    let watch_until = Instant::now() + OUTSIDER_WATCH;
    while Instant::now() < watch_until {
        assert_eq!(c.peers(), Vec::<String>::new(), "C connected to someone");
        for member in [&a, &b] {
            assert!(
                !member.peers().contains(&c.peer_id()),
                "{} connected to C, which holds another key",
                member.host.name
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let finished = cat_on_c.try_wait().expect("poll cat on C");
    if finished.is_none() {
        let _ = cat_on_c.kill();
    }
    let out = cat_on_c.wait_with_output().expect("cat on C ends");
    assert!(
        out.stdout.is_empty(),
        "C got {} bytes of A's file",
        out.stdout.len()
    );
    assert!(
        finished.is_some(),
        "cat on C still waiting after {OUTSIDER_WATCH:?}, past its 2 s fetch timeout"
    );
    assert_clean_failure(&out, &["cat", &cid]);
    // With its daemon gone, C has nothing and says so at once.
    assert!(c.stop(), "daemon C exits 0 on SIGTERM");
    let err = repo_c.fails(&["cat", &cid]);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(a.stop(), "daemon A exits 0 on SIGTERM");
    assert!(b.stop(), "daemon B exits 0 on SIGTERM");
}

#[test]
fn a_bad_swarm_key_is_one_line_and_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("garbage.key", "not a swarm key\n"),
        ("base64.key", "/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n"),
        ("short.key", "/key/swarm/psk/1.0.0/\n/base16/\n1234\n"),
        ("empty.key", ""),
    ];
    let mut files: Vec<PathBuf> = cases
        .iter()
        .map(|(name, text)| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write key");
            path
        })
        .collect();
    files.push(dir.path().join("missing.key"));
    for file in &files {
        let ipnix = Ipnix::new();
        let file = file.to_str().expect("utf-8");
        // Loopback only and no mDNS, should the key ever be accepted.
        let args = [
            "daemon",
            "--swarm-key",
            file,
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
        ];
        let mut child = ipnix
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ipnix runs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().expect("poll daemon").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("daemon with bad swarm key {file} kept running");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("daemon output");
        let err = assert_clean_failure(&out, &args);
        assert_eq!(err.trim().lines().count(), 1, "one line for {file}: {err}");
        assert!(
            err.contains("swarm key") && err.contains(file),
            "the error names the key file: {err}"
        );
        assert!(
            !ipnix.repo_path().join("api").exists(),
            "a daemon that failed to start left an api file"
        );
    }
}
