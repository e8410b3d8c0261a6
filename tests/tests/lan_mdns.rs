//! Issue 3: two `ipnix daemon`s with mDNS on, each in its own network
//! namespace on one bridge, find each other with no address given, and a
//! file added on one is read on the other over Bitswap.

use ipnix_tests::cli::{assert_success, Ipnix};
use ipnix_tests::netns::{skip_unless_runnable, Lan};
use std::time::Duration;

/// mDNS answers within a second here; the first query goes out at start.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn daemons_find_each_other_by_mdns_and_share_a_file() {
    if !skip_unless_runnable("lan_mdns::daemons_find_each_other_by_mdns_and_share_a_file") {
        return;
    }
    let lan = Lan::create(2).expect("create the LAN");
    let (repo_a, repo_b) = (Ipnix::new(), Ipnix::new());
    // Default flags: mDNS on, no bootstrap, default ports.
    let a = lan.hosts[0].start_daemon(&repo_a, &[]).expect("daemon A");
    let b = lan.hosts[1].start_daemon(&repo_b, &[]).expect("daemon B");

    for (me, other) in [(&a, &b), (&b, &a)] {
        let peer = me
            .wait_for_peer(&other.peer_id(), DISCOVERY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\nstderr: {:?}", me.stderr()));
        let addrs: Vec<&str> = peer["addrs"]
            .as_array()
            .expect("addrs list")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert!(
            addrs.iter().any(|addr| lan.in_subnet(addr)),
            "{} reaches {} only outside {}: {peer}",
            me.host.name,
            other.host.name,
            lan.subnet()
        );
        assert!(
            addrs
                .iter()
                .any(|addr| addr.contains(&other.host.addr.to_string())),
            "{} connected to {} at {addrs:?}, not at its address {}",
            me.host.name,
            other.host.name,
            other.host.addr
        );
        // mDNS dials TCP first (DESIGN.md, measured decisions: it moves
        // blocks with less CPU than QUIC). A DHT dial racing it may still
        // connect over QUIC first on a loaded machine (seen once in seven
        // runs under load 10): reported, not failed, until the node also
        // dials TCP to a peer it reached only over QUIC.
        if !addrs.iter().any(|addr| addr.contains("/tcp/")) {
            println!(
                "NOTE: {} connected to {} only over QUIC ({addrs:?}); TCP is preferred",
                me.host.name, other.host.name
            );
        }
    }
    // identify runs right after the connection; give it a moment.
    for (me, other) in [(&a, &b), (&b, &a)] {
        let agent = poll_agent(me, &other.peer_id());
        assert!(
            agent.starts_with("ipnix/"),
            "{} sees agent {agent:?}",
            me.host.name
        );
    }

    let content = b"found by mDNS, fetched over Bitswap\n".repeat(1000);
    let cid = a.add_bytes(&content);
    let out = b.run(&["cat", &cid]);
    assert_success(&out, &["cat", &cid]);
    assert!(out.stdout == content, "B read other bytes than A added");
    // B's trustless gateway, asked inside B's host, now serves the block
    // (the content is one raw leaf) from B's store.
    let (status, body) = b
        .http_get(&format!("/ipfs/{cid}?format=raw"))
        .expect("GET from B's gateway");
    assert_eq!(status, 200);
    assert!(body == content, "B's gateway served other bytes");
    assert!(a.stop(), "daemon A exits 0 on SIGTERM");
    assert!(b.stop(), "daemon B exits 0 on SIGTERM");
}

fn poll_agent(daemon: &ipnix_tests::netns::HostDaemon, peer_id: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let peers = daemon.peers_json().expect("peers --json");
        let agent = peers
            .iter()
            .find(|p| p["peer_id"] == peer_id)
            .and_then(|p| p["agent"].as_str())
            .map(str::to_string);
        match agent {
            Some(agent) => return agent,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200))
            }
            None => panic!("no identify agent for {peer_id} in {peers:?}"),
        }
    }
}
