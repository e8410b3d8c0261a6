//! Two (and three) ipnix nodes in one process, over loopback: connect and
//! identify, a block over Bitswap on TCP and on QUIC, a whole DAG with
//! `fetch_dag`, provide + find providers through the LAN DHT, and private
//! networks (same swarm key connects, a different or missing key does not).
//! Run under /work/shared/peers/sandbox (loopback only).

use ipnix_node::fetch::{fetch_dag, FetchOptions, NetworkBlocks};
use ipnix_node::net::{Keypair, NetConfig, NetError, Node, NodeHandle, PreSharedKey};
use ipnix_store::block::{cid_for, RAW};
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::{BlockRead, PinMode, Store};
use std::sync::Arc;
use std::time::Duration;

mod net_support;
use net_support::{random_bytes, wait_for, TestNode};

async fn block_round_trip(quic: bool) {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let peer = b
        .handle()
        .connect(a.addr(quic).await)
        .await
        .expect("connect");
    assert_eq!(peer, a.handle().peer_id());

    // identify: both sides learn the other is ipnix.
    let agent = format!("ipnix/{}", env!("CARGO_PKG_VERSION"));
    wait_for("identify", Duration::from_secs(10), || async {
        let peers = a.handle().peers().await.expect("peers");
        peers.iter().any(|p| {
            p.peer_id == b.handle().peer_id() && p.agent.as_deref() == Some(agent.as_str())
        })
    })
    .await;
    let seen = b.handle().peers().await.expect("peers");
    let info = seen
        .iter()
        .find(|p| p.peer_id == peer)
        .expect("a is a peer of b");
    assert_eq!(
        info.addrs[0].to_string().contains("/quic-v1"),
        quic,
        "connected over the asked transport: {:?}",
        info.addrs
    );

    let data = random_bytes(300_000);
    let cid = cid_for(RAW, &data);
    a.store.put(&cid, &data).expect("put");
    let got = b
        .handle()
        .get_block(cid, Duration::from_secs(10))
        .await
        .expect("block over bitswap");
    assert_eq!(&got[..], &data[..]);

    let stats = b.handle().stats().await.expect("stats");
    assert_eq!(stats.peers, 1);
    assert!(stats.bitswap.blocks_received >= 1);

    // A block nobody has: a clear timeout naming the CID.
    let missing = cid_for(RAW, b"nobody has this");
    match b
        .handle()
        .get_block(missing, Duration::from_millis(500))
        .await
    {
        Err(NetError::BlockTimeout { cid, .. }) => assert_eq!(cid, missing),
        other => panic!("expected a timeout, got {other:?}"),
    }
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_identify_and_bitswap_block() {
    block_round_trip(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connect_identify_and_bitswap_block() {
    block_round_trip(true).await;
}

/// Served blocks are not re-hashed (DESIGN.md I-21): a block damaged on
/// a's disk reaches b, which refuses it and stores nothing under its CID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_damaged_on_the_servers_disk_is_refused_by_the_receiver() {
    use ipnix_store::test_util::{flip_byte, packs};
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let data = random_bytes(300_000);
    let cid = cid_for(RAW, &data);
    a.store.put(&cid, &data).expect("put");
    let pack = packs(a.dir.path()).expect("packs").remove(0);
    flip_byte(&pack, 200_000).expect("damage the pack");

    assert!(b
        .handle()
        .get_block(cid, Duration::from_secs(2))
        .await
        .is_err());
    let stats = b.handle().stats().await.expect("stats");
    // Its bytes hash to a CID nobody asked for.
    assert!(stats.bitswap.unwanted_blocks >= 1, "{stats:?}");
    assert!(!b.store.has(&cid).expect("has"));
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_dag_brings_a_whole_file_and_pins_it() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    // 3 MiB + a bit in 256 KiB CIDv0 leaves: 13 leaves under a dag-pb root.
    let data = random_bytes(3 * 1024 * 1024 + 12345);
    let mut session = a.store.session();
    let added = unixfs::add_file(&mut session, &data[..], &Profile::V0_2015.params()).expect("add");
    session
        .finish(Some((added.cid, PinMode::Recursive, None)))
        .expect("finish");
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");

    let progress_calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = progress_calls.clone();
    let opts = FetchOptions {
        pin: Some((PinMode::Recursive, Some("fetched".into()))),
        progress: Some(Arc::new(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })),
        ..FetchOptions::default()
    };
    let summary = fetch_dag(&b.handle(), b.store.clone(), added.cid, opts)
        .await
        .expect("fetch");
    assert_eq!(summary.fetched_blocks, 14);
    assert_eq!(
        progress_calls.load(std::sync::atomic::Ordering::Relaxed),
        14
    );
    let pins = b.store.pins().expect("pins");
    // The store keeps CIDv1 forms; a CIDv0 root is pinned as its v1 twin.
    assert!(pins
        .iter()
        .any(|p| p.cid.hash() == added.cid.hash() && p.mode == PinMode::Recursive));
    let store = b.store.clone();
    let cid = added.cid;
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        std::io::copy(&mut unixfs::cat(store, &cid).expect("cat"), &mut out).expect("read");
        out
    })
    .await
    .expect("join");
    assert_eq!(read, data);

    // Again: everything is local now, nothing is fetched.
    let again = fetch_dag(
        &b.handle(),
        b.store.clone(),
        added.cid,
        FetchOptions::default(),
    )
    .await
    .expect("refetch");
    assert_eq!(again.fetched_blocks, 0);
    assert_eq!(again.local_blocks, 14);

    // A DAG whose leaves nobody has: the error names the missing block.
    let c = TestNode::start(|_| {}).await;
    let root_only = a.store.get(&added.cid).expect("get").expect("root");
    c.store.put(&added.cid, &root_only).expect("put root");
    c.handle()
        .connect(b.addr(false).await)
        .await
        .expect("connect");
    b.store.unpin(&added.cid).expect("unpin");
    b.store.gc().expect("gc");
    a.store.unpin(&added.cid).expect("unpin");
    a.store.gc().expect("gc");
    let opts = FetchOptions {
        block_timeout: Duration::from_secs(1),
        ..FetchOptions::default()
    };
    let err = fetch_dag(&c.handle(), c.store.clone(), added.cid, opts)
        .await
        .expect_err("leaves are gone");
    let text = err.to_string();
    assert!(text.contains("could not be fetched"), "{text}");
    for node in [a, b, c] {
        node.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_blocks_streams_a_file_from_a_peer() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let data = random_bytes(2 * 1024 * 1024 + 1);
    let mut session = a.store.session();
    let added = unixfs::add_file(&mut session, &data[..], &Profile::V1_2025.params()).expect("add");
    session
        .finish(Some((added.cid, PinMode::Recursive, None)))
        .expect("finish");
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let blocks = NetworkBlocks::new(b.store.clone(), Some(b.handle()), Duration::from_secs(10));
    let cid = added.cid;
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        std::io::copy(&mut unixfs::cat(blocks, &cid).expect("cat"), &mut out).expect("read");
        out
    })
    .await
    .expect("join");
    assert_eq!(read, data);
    assert!(
        b.store.has(&added.cid).expect("has"),
        "fetched blocks are cached"
    );
    let offline = NetworkBlocks::new(b.store.clone(), None, Duration::from_secs(1));
    let unknown = cid_for(RAW, b"not anywhere");
    let found = tokio::task::spawn_blocking(move || {
        offline.read_block(&unknown).map_err(|e| e.to_string())
    })
    .await
    .expect("join")
    .expect("no error");
    assert!(found.is_none());
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provide_and_find_providers_over_the_lan_dht() {
    // a -- b -- c: c only knows b, and finds a as the provider through the DHT.
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let c = TestNode::start(|_| {}).await;
    a.handle().connect(b.addr(false).await).await.expect("a-b");
    c.handle().connect(b.addr(false).await).await.expect("c-b");
    wait_for("b in the DHT tables", Duration::from_secs(10), || async {
        a.handle().stats().await.expect("stats").lan_dht_peers >= 1
            && c.handle().stats().await.expect("stats").lan_dht_peers >= 1
    })
    .await;

    let data = random_bytes(5000);
    let cid = cid_for(RAW, &data);
    a.store.put(&cid, &data).expect("put");
    a.handle().provide(cid).await.expect("provide");
    let providers = c
        .handle()
        .find_providers(cid, 5, Duration::from_secs(10))
        .await
        .expect("find providers");
    assert!(
        providers.contains(&a.handle().peer_id()),
        "a provides {cid}: {providers:?}"
    );
    // get_block falls back to the DHT: c is not connected to a, yet gets the block.
    let got = c
        .handle()
        .get_block(cid, Duration::from_secs(20))
        .await
        .expect("block via DHT providers");
    assert_eq!(&got[..], &data[..]);
    assert!(c
        .handle()
        .peers()
        .await
        .expect("peers")
        .iter()
        .any(|p| p.peer_id == a.handle().peer_id()));
    for node in [a, b, c] {
        node.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_roots_are_reprovided_at_start() {
    let b = TestNode::start(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let data = random_bytes(1000);
    let cid = cid_for(RAW, &data);
    store.put(&cid, &data).expect("put");
    store.pin(&cid, PinMode::Direct, None).expect("pin");
    let mut config = NetConfig::loopback(Keypair::generate_ed25519());
    config.bootstrap = vec![b.addr(false).await];
    let a = Node::start(config, store).await.expect("a starts");
    let providers_of = |node: NodeHandle| async move {
        node.find_providers(cid, 5, Duration::from_secs(5))
            .await
            .expect("find providers")
    };
    let a_id = a.handle().peer_id();
    wait_for(
        "b learns a provides the pinned root",
        Duration::from_secs(20),
        || {
            let b = b.handle();
            async move { providers_of(b).await.contains(&a_id) }
        },
    )
    .await;
    a.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_key_separates_private_networks() {
    let key = PreSharedKey::new([7u8; 32]);
    let other = PreSharedKey::new([8u8; 32]);
    let a = TestNode::start(|c| c.swarm_key = Some(key)).await;
    let b = TestNode::start(|c| c.swarm_key = Some(key)).await;
    let stranger = TestNode::start(|c| c.swarm_key = Some(other)).await;
    let public = TestNode::start(|_| {}).await;

    // Private nodes listen on TCP only.
    let addrs = a.handle().listen_addrs().await.expect("addrs");
    assert!(
        addrs.iter().all(|x| !x.to_string().contains("quic")),
        "{addrs:?}"
    );

    let a_addr = a.addr(false).await;
    b.handle()
        .connect(a_addr.clone())
        .await
        .expect("same key connects");
    let data = random_bytes(1000);
    let cid = cid_for(RAW, &data);
    a.store.put(&cid, &data).expect("put");
    let got = b
        .handle()
        .get_block(cid, Duration::from_secs(10))
        .await
        .expect("block in the private network");
    assert_eq!(&got[..], &data[..]);

    assert!(
        stranger.handle().connect(a_addr.clone()).await.is_err(),
        "other key"
    );
    assert!(
        public.handle().connect(a_addr.clone()).await.is_err(),
        "no key"
    );
    assert!(
        a.handle().connect(public.addr(false).await).await.is_err(),
        "private to public"
    );
    for node in [a, b, stranger, public] {
        node.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_fail_cleanly_after_shutdown() {
    let a = TestNode::start(|_| {}).await;
    let handle = a.handle();
    let pending = {
        let handle = handle.clone();
        tokio::spawn(async move {
            handle
                .get_block(cid_for(RAW, b"never"), Duration::from_secs(60))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.node.shutdown().await;
    assert!(matches!(
        pending.await.expect("join"),
        Err(NetError::Shutdown)
    ));
    assert!(matches!(handle.peers().await, Err(NetError::Shutdown)));
    assert!(handle.is_closed());
}
