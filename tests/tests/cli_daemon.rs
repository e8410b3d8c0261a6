//! The CLI while a daemon holds the repo: commands run inside the daemon
//! through the control API, `cat`/`get`/`pin add` fetch from a peer, the
//! daemon stops cleanly on SIGTERM and removes its `api` file.

use ipnix_tests::cli::{assert_success, Daemon, Ipnix};

fn tcp_addr(ipnix: &Ipnix) -> String {
    let id: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["id", "--json"])).expect("id json");
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
fn commands_run_inside_the_daemon_and_it_stops_cleanly() {
    let ipnix = Ipnix::new();
    let daemon = Daemon::start(&ipnix, &[]);
    // The store is held by the daemon; these go through the control API.
    let out = ipnix.run_with_stdin(&["add", "-Q", "-"], b"through the daemon\n");
    assert_success(&out, &["add", "-Q", "-"]);
    let cid = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(ipnix.ok_bytes(&["cat", &cid]), b"through the daemon\n");
    assert!(ipnix.ok(&["pin", "ls"]).contains(&cid));
    let id: serde_json::Value = serde_json::from_str(&ipnix.ok(&["id", "--json"])).expect("json");
    assert!(!id["addrs"].as_array().expect("addrs").is_empty(), "{id}");
    let err = ipnix.fails(&["cat", "nonsense"]);
    assert!(err.contains("not a CID"), "{err}");
    assert!(daemon.stop(), "daemon exits 0 on SIGTERM");
    assert!(!ipnix.repo_path().join("api").exists(), "api file removed");
    // Offline again: the CLI opens the store itself.
    assert_eq!(ipnix.ok_bytes(&["cat", &cid]), b"through the daemon\n");
}

#[test]
fn cat_get_and_pin_fetch_from_a_connected_peer() {
    let a = Ipnix::new();
    let b = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = ipnix_store::test_util::pseudo_random(1, 5_000_000);
    let file = dir.path().join("five-mb");
    std::fs::write(&file, &data).expect("write");
    let _da = Daemon::start(&a, &[]);
    let _db = Daemon::start(&b, &[]);
    let cid = a
        .ok(&["add", "-Q", file.to_str().expect("utf-8")])
        .trim()
        .to_string();
    b.ok(&["connect", &tcp_addr(&a)]);
    assert!(b
        .ok(&["peers"])
        .contains(&a.ok(&["id"]).lines().next().expect("peer id").to_string()));
    assert_eq!(b.ok_bytes(&["cat", &cid]), data);
    let out = dir.path().join("got");
    b.ok(&["get", &cid, "-o", out.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(&out).expect("read"), data);
    b.ok(&["pin", "add", &cid]);
    b.ok(&["gc"]);
    assert!(b.ok(&["pin", "ls"]).contains(&cid));
    let stat: serde_json::Value =
        serde_json::from_str(&b.ok(&["repo", "stat", "--json"])).expect("json");
    // Five 1 MiB leaves and the root survive GC under the pin.
    assert_eq!(stat["blocks"].as_u64(), Some(6), "{stat}");
}

#[test]
fn network_commands_without_a_daemon_say_so() {
    let ipnix = Ipnix::new();
    for args in [
        vec!["peers"],
        vec!["connect", "/ip4/127.0.0.1/tcp/1"],
        vec!["findprovs", "bafkqaaa"],
    ] {
        let err = ipnix.fails(&args);
        assert!(err.contains("ipnix daemon"), "{args:?}: {err}");
    }
}
