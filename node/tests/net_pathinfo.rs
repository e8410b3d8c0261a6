//! Path-info discovery between ipnix nodes over loopback: a connected peer
//! answers `/ipnix/pathinfo/1.0.0`, a peer two hops away is found through its
//! LAN DHT provider record, a miss is answered within the timeout, and the
//! binary cache of a node that lacks a narinfo gets it (and then the NAR,
//! byte for byte) from a peer, while refusing a peer that names the wrong
//! path-info. Run under /work/shared/peers/sandbox (loopback only).

mod net_support;

use ipnix_bridge::import::{import_nar, PathMeta};
use ipnix_bridge::nar::NarWriter;
use ipnix_node::http::nixcache::{self, NixCacheState, PATH_INDEX};
use ipnix_node::pathinfo::provider_cid;
use ipnix_store::PinMode;
use net_support::{random_bytes, wait_for, TestNode};
use std::time::{Duration, Instant};

const HASH_A: &str = "0c0nqwkbm1ng5rf7rvdmcd5pfjq5kvl7";
const HASH_B: &str = "1z9jfkdyccfsyaqhfmjhjn8xqqqmvyh3";
const UNKNOWN: &str = "2aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A NAR of a directory holding one file of `size` random bytes.
fn nar_of_dir(size: usize) -> Vec<u8> {
    let mut writer = NarWriter::new(Vec::new()).expect("nar");
    writer.start_directory().expect("dir");
    writer.entry(b"data").expect("entry");
    writer.file(false, size as u64).expect("file");
    writer.file_data(&random_bytes(size)).expect("data");
    writer.end_directory().expect("end");
    writer.finish().expect("finish").0
}

/// Imports a path the way `ipnix nix import` does: pinned and indexed.
fn import_path(node: &TestNode, hash: &str, size: usize) -> (cid::Cid, Vec<u8>) {
    let nar = nar_of_dir(size);
    let store_path = format!("/nix/store/{hash}-test-{size}");
    let mut session = node.store.session();
    let imported = import_nar(&mut session, &nar[..], PathMeta::new(&store_path)).expect("import");
    let cid = imported.pathinfo_cid;
    session.index_put(PATH_INDEX, hash.as_bytes(), &cid.to_bytes());
    session
        .finish(Some((
            cid,
            PinMode::Recursive,
            Some(format!("nix:{store_path}")),
        )))
        .expect("finish");
    (cid, nar)
}

#[tokio::test]
async fn a_connected_peer_names_its_pathinfo_and_a_miss_is_quick() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let (cid, _) = import_path(&a, HASH_A, 1000);
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");

    let found = b
        .handle()
        .find_pathinfo(HASH_A, Duration::from_secs(5))
        .await
        .expect("ask");
    assert_eq!(found, Some((a.handle().peer_id(), cid)));

    let started = Instant::now();
    let missing = b
        .handle()
        .find_pathinfo(UNKNOWN, Duration::from_millis(100))
        .await
        .expect("ask");
    assert_eq!(missing, None);
    // Not a timing assertion on speed: the timeout bounds how long a miss waits.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the timeout"
    );
}

#[tokio::test]
async fn a_peer_two_hops_away_is_found_through_the_lan_dht() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let c = TestNode::start(|_| {}).await;
    let (cid, _) = import_path(&a, HASH_B, 1000);
    a.handle().connect(b.addr(false).await).await.expect("a-b");
    c.handle().connect(b.addr(false).await).await.expect("c-b");
    // A announces what it holds (as the daemon does after an import).
    let key = provider_cid(HASH_B);
    wait_for(
        "A's provider record to reach B",
        Duration::from_secs(20),
        || {
            let a = a.handle();
            let b = b.handle();
            async move {
                a.reprovide();
                tokio::time::sleep(Duration::from_millis(300)).await;
                b.find_providers(key, 1, Duration::from_secs(2))
                    .await
                    .is_ok_and(|p| !p.is_empty())
            }
        },
    )
    .await;
    let found = c
        .handle()
        .find_pathinfo(HASH_B, Duration::from_secs(10))
        .await
        .expect("ask");
    assert_eq!(found, Some((a.handle().peer_id(), cid)));
}

struct Cache {
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_cache(node: &TestNode) -> Cache {
    let state = NixCacheState::new(node.store.clone(), Some(node.handle()), None)
        .with_fetch_timeout(Duration::from_secs(10));
    let app = nixcache::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Cache { url, server }
}

async fn http_get(url: String) -> (u16, Vec<u8>) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent.get(&url).call().expect("request");
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .unwrap_or_default();
        (status, body)
    })
    .await
    .expect("join")
}

#[tokio::test]
async fn the_binary_cache_serves_a_path_held_by_a_peer() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    // Over the 1 MiB block limit: a large blob the path-info covers.
    let (cid, nar) = import_path(&a, HASH_A, 3 * 1024 * 1024 + 5);
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let cache = serve_cache(&b).await;

    let (status, body) = http_get(format!("{}/{UNKNOWN}.narinfo", cache.url)).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    let (status, body) = http_get(format!("{}/{HASH_A}.narinfo", cache.url)).await;
    let narinfo = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{narinfo}");
    assert!(
        narinfo.contains(&format!("URL: nar/{cid}.nar")),
        "{narinfo}"
    );
    assert!(
        narinfo.contains(&format!("NarSize: {}", nar.len())),
        "{narinfo}"
    );

    let (status, body) = http_get(format!("{}/nar/{cid}.nar", cache.url)).await;
    assert_eq!(status, 200);
    assert!(body == nar, "the NAR from the peer is byte-identical");
    // B keeps what it fetched: the NAR renders again without A.
    drop(a);
    let (status, again) = http_get(format!("{}/nar/{cid}.nar", cache.url)).await;
    assert_eq!(status, 200);
    assert!(again == nar);
}

#[tokio::test]
async fn a_peer_naming_the_wrong_pathinfo_is_not_believed() {
    let liar = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    // The liar's index maps HASH_A to the path-info of another path.
    let (other, _) = import_path(&liar, HASH_B, 100);
    liar.store
        .index_put(PATH_INDEX, HASH_A.as_bytes(), &other.to_bytes())
        .expect("index");
    b.handle()
        .connect(liar.addr(false).await)
        .await
        .expect("connect");
    let found = b
        .handle()
        .find_pathinfo(HASH_A, Duration::from_secs(5))
        .await
        .expect("ask");
    assert_eq!(found.map(|f| f.1), Some(other), "the peer did say it");
    let cache = serve_cache(&b).await;
    let (status, body) = http_get(format!("{}/{HASH_A}.narinfo", cache.url)).await;
    assert_eq!(
        status,
        404,
        "a path-info for another store path is not served: {}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn pinning_a_path_with_large_blobs_over_the_network_fetches_its_whole_closure() {
    use ipnix_bridge::export::export_nar;
    use ipnix_node::fetch::{fetch_dag, FetchOptions};
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let (cid, nar) = import_path(&a, HASH_B, 2 * 1024 * 1024 + 3);
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let opts = FetchOptions {
        pin: Some((PinMode::Recursive, Some("nix:test".into()))),
        block_timeout: Duration::from_secs(10),
        ..FetchOptions::default()
    };
    let summary = fetch_dag(&b.handle(), b.store.clone(), cid, opts)
        .await
        .expect("the covered git blob is not looked for");
    assert!(summary.fetched_bytes >= 2 * 1024 * 1024, "{summary:?}");
    drop(a);
    // Everything is local and pinned: the NAR renders offline, and GC keeps it.
    b.store.gc().expect("gc");
    let mut rendered = Vec::new();
    export_nar(&*b.store, &cid, &mut rendered).expect("export offline");
    assert!(rendered == nar);
}
