//! The trustless gateway over real HTTP on 127.0.0.1: raw blocks and CARs
//! (checked by reading them back with the CAR reader), headers, status codes
//! (400, 404, 412, 304, 501, 504), blocks fetched from a peer on demand, and
//! the real `@helia/verified-fetch` client reading a file through it.
//! Run under /work/shared/peers/sandbox (loopback only).

use ipnix_node::http::gateway::{router, GatewayState};
use ipnix_node::net::{Keypair, NetConfig, Node};
use ipnix_store::block::{cid_for, RAW};
use ipnix_store::car::CarReader;
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::{Cid, PinMode, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

struct Gateway {
    url: String,
    store: Arc<Store>,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start_gateway(node: Option<&Node>, fetch_timeout: Duration) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let state = GatewayState {
        store: store.clone(),
        node: node.map(Node::handle),
        fetch_timeout,
    };
    serve(state, store, dir).await
}

async fn serve(state: GatewayState, store: Arc<Store>, dir: tempfile::TempDir) -> Gateway {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router(state);
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Gateway {
        url,
        store,
        _dir: dir,
        server,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One blocking request, run off the async runtime.
async fn request(method: &'static str, url: String, headers: Vec<(&'static str, String)>) -> Reply {
    tokio::task::spawn_blocking(move || {
        let agent = agent();
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in &headers {
            builder = builder.header(*k, v);
        }
        let request = builder.body(()).expect("request");
        let mut response = agent.run(request).expect("HTTP exchange");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .expect("body")
        };
        Reply {
            status,
            headers,
            body,
        }
    })
    .await
    .expect("join")
}

async fn get(url: String, accept: Option<&str>) -> Reply {
    let headers = accept
        .map(|a| vec![("accept", a.to_string())])
        .unwrap_or_default();
    request("GET", url, headers).await
}

fn add_file(store: &Store, data: &[u8], profile: Profile) -> Cid {
    let mut session = store.session();
    let added = unixfs::add_file(&mut session, data, &profile.params()).expect("add");
    session
        .finish(Some((added.cid, PinMode::Recursive, None)))
        .expect("finish");
    added.cid
}

fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_blocks_headers_and_status_codes() {
    let gw = start_gateway(None, Duration::from_secs(1)).await;
    let data = random_bytes(3 * 1024 * 1024 + 7);
    let root = add_file(&gw.store, &data, Profile::V0_2015);
    let root_block = gw.store.get(&root).expect("get").expect("root stored");

    let reply = get(format!("{}/ipfs/{root}?format=raw", gw.url), None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, root_block.to_vec());
    assert_eq!(
        reply.header("content-type"),
        Some("application/vnd.ipld.raw")
    );
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert!(reply
        .header("cache-control")
        .expect("cache-control")
        .contains("immutable"));
    assert_eq!(
        reply.header("content-disposition"),
        Some(format!("attachment; filename=\"{root}.bin\"").as_str())
    );
    let etag = reply.header("etag").expect("etag").to_string();

    // Accept instead of ?format: same bytes, and Content-Location names the format.
    let by_accept = get(
        format!("{}/ipfs/{root}", gw.url),
        Some("application/vnd.ipld.raw"),
    )
    .await;
    assert_eq!(by_accept.status, 200);
    assert_eq!(by_accept.body, root_block.to_vec());
    assert_eq!(
        by_accept.header("content-location"),
        Some(format!("/ipfs/{root}?format=raw").as_str())
    );

    let head = request("HEAD", format!("{}/ipfs/{root}?format=raw", gw.url), vec![]).await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(root_block.len().to_string().as_str())
    );

    let cached = request(
        "GET",
        format!("{}/ipfs/{root}?format=raw", gw.url),
        vec![("if-none-match", etag)],
    )
    .await;
    assert_eq!(cached.status, 304);

    // A leaf, fetched by its CIDv1 name.
    let leaf = *ipnix_store::links::links(&root, &root_block)
        .expect("links")
        .first()
        .expect("a leaf");
    let leaf_v1 = Cid::new_v1(leaf.codec(), *leaf.hash());
    let reply = get(format!("{}/ipfs/{leaf_v1}?format=raw", gw.url), None).await;
    assert_eq!(reply.status, 200);
    ipnix_store::block::verify(&leaf_v1, &reply.body).expect("verifiable");

    // Errors.
    assert_eq!(
        get(format!("{}/ipfs/not-a-cid?format=raw", gw.url), None)
            .await
            .status,
        400
    );
    assert_eq!(
        get(format!("{}/ipfs/{root}", gw.url), None).await.status,
        400,
        "no format"
    );
    assert_eq!(
        get(format!("{}/ipfs/{root}?format=tar", gw.url), None)
            .await
            .status,
        400
    );
    assert_eq!(
        get(format!("{}/ipfs/{root}", gw.url), Some("text/html"))
            .await
            .status,
        400
    );
    let missing = cid_for(RAW, b"not here");
    assert_eq!(
        get(format!("{}/ipfs/{missing}?format=raw", gw.url), None)
            .await
            .status,
        404
    );
    let only_cached = request(
        "GET",
        format!("{}/ipfs/{missing}?format=raw", gw.url),
        vec![("cache-control", "only-if-cached".into())],
    )
    .await;
    assert_eq!(only_cached.status, 412);
    assert_eq!(
        get(format!("{}/ipfs/{root}/some/path?format=car", gw.url), None)
            .await
            .status,
        501
    );
    // The identity probe of the spec.
    let probe = get(format!("{}/ipfs/bafkqaaa?format=raw", gw.url), None).await;
    assert_eq!(probe.status, 200);
    assert!(probe.body.is_empty());
}

fn read_car(bytes: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
    let mut reader = CarReader::new(bytes).expect("CAR header");
    let roots = reader.roots().to_vec();
    let mut blocks = Vec::new();
    while let Some((cid, data)) = reader.next_block().expect("verified block") {
        blocks.push((cid, data.to_vec()));
    }
    (roots, blocks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn car_responses_hold_the_whole_dag() {
    let gw = start_gateway(None, Duration::from_secs(1)).await;
    let data = random_bytes(2 * 1024 * 1024 + 99);
    let root = add_file(&gw.store, &data, Profile::V1_2025);

    let reply = get(format!("{}/ipfs/{root}?format=car", gw.url), None).await;
    assert_eq!(reply.status, 200);
    let content_type = reply.header("content-type").expect("content-type");
    assert!(
        content_type.starts_with("application/vnd.ipld.car"),
        "{content_type}"
    );
    assert!(content_type.contains("version=1"), "{content_type}");
    assert!(content_type.contains("order=dfs") && content_type.contains("dups=n"));
    let (roots, blocks) = read_car(&reply.body);
    assert_eq!(roots, vec![root]);
    assert_eq!(blocks.len(), 4, "root + 3 leaves");
    assert_eq!(blocks[0].0, root, "depth-first: the root comes first");
    let file: Vec<u8> = blocks[1..].iter().flat_map(|(_, d)| d.clone()).collect();
    assert_eq!(file, data);

    let by_accept = get(
        format!("{}/ipfs/{root}", gw.url),
        Some("application/vnd.ipld.car; version=1"),
    )
    .await;
    assert_eq!(by_accept.status, 200);
    assert_eq!(by_accept.body, reply.body);

    let block_only = get(
        format!("{}/ipfs/{root}?format=car&dag-scope=block", gw.url),
        None,
    )
    .await;
    assert_eq!(block_only.status, 200);
    let (_, blocks) = read_car(&block_only.body);
    assert_eq!(blocks.len(), 1);

    let head = request("HEAD", format!("{}/ipfs/{root}?format=car", gw.url), vec![]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        get(
            format!("{}/ipfs/{root}", gw.url),
            Some("application/vnd.ipld.car; version=2")
        )
        .await
        .status,
        400
    );

    // A DAG with a missing leaf: 200 was sent, then the stream is cut.
    let broken = start_gateway(None, Duration::from_secs(1)).await;
    let root_block = gw.store.get(&root).expect("get").expect("root");
    broken.store.put(&root, &root_block).expect("put");
    let url = format!("{}/ipfs/{root}?format=car", broken.url);
    let outcome = tokio::task::spawn_blocking(move || {
        let mut response = agent().get(&url).call().expect("status line");
        let status = response.status().as_u16();
        (status, response.body_mut().read_to_vec().is_err())
    })
    .await
    .expect("join");
    assert_eq!(outcome, (200, true), "truncated stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_blocks_come_from_peers_or_time_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let peer_store = Arc::new(Store::open(dir.path()).expect("store"));
    let peer = Node::start(
        NetConfig::loopback(Keypair::generate_ed25519()),
        peer_store.clone(),
    )
    .await
    .expect("peer");
    let data = random_bytes(1024 * 1024 + 5);
    let root = add_file(&peer_store, &data, Profile::V1_2025);

    let gw_dir = tempfile::tempdir().expect("tempdir");
    let gw_store = Arc::new(Store::open(gw_dir.path()).expect("store"));
    let node = Node::start(
        NetConfig::loopback(Keypair::generate_ed25519()),
        gw_store.clone(),
    )
    .await
    .expect("node");
    let peer_addr = peer.handle().listen_addrs().await.expect("addrs")[0].clone();
    node.handle().connect(peer_addr).await.expect("connect");
    let state = GatewayState {
        store: gw_store.clone(),
        node: Some(node.handle()),
        fetch_timeout: Duration::from_secs(2),
    };
    let gw = serve(state, gw_store, gw_dir).await;

    let car = get(format!("{}/ipfs/{root}?format=car", gw.url), None).await;
    assert_eq!(car.status, 200);
    let (_, blocks) = read_car(&car.body);
    assert_eq!(blocks.len(), 3, "root + 2 leaves, fetched from the peer");
    assert!(gw.store.has(&root).expect("has"), "kept as cache");

    let nowhere = cid_for(RAW, b"nobody has this block");
    assert_eq!(
        get(format!("{}/ipfs/{nowhere}?format=raw", gw.url), None)
            .await
            .status,
        504
    );
    node.shutdown().await;
    peer.shutdown().await;
}

/// Where `@helia/verified-fetch` is installed (npm, --ignore-scripts).
fn verified_fetch_home() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let peers = std::env::var_os("PEERS_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&home).join(".cache/ipnix-peers"));
    peers.join("verified-fetch")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_verified_fetch_reads_a_file_through_the_gateway() {
    let home = verified_fetch_home();
    if !home.join("node_modules/@helia/verified-fetch").exists() {
        eprintln!(
            "SKIP: helia_verified_fetch_reads_a_file_through_the_gateway: @helia/verified-fetch not \
             installed in {} (npm install --ignore-scripts --prefix {} @helia/verified-fetch)",
            home.display(),
            home.display()
        );
        return;
    }
    if std::env::var("IPNIX_SANDBOXED").ok().as_deref() != Some("1")
        && std::env::var("IPNIX_ALLOW_LOOPBACK").ok().as_deref() != Some("1")
    {
        eprintln!(
            "SKIP: helia_verified_fetch_reads_a_file_through_the_gateway: not inside \
             ../shared/peers/sandbox (or set IPNIX_ALLOW_LOOPBACK=1)"
        );
        return;
    }
    let gw = start_gateway(None, Duration::from_secs(1)).await;
    let data = random_bytes(3 * 1024 * 1024 + 11);
    let root = add_file(&gw.store, &data, Profile::V0_2015);
    // ES modules resolve packages next to the script: run a copy inside the install.
    let script = home.join("ipnix-verified-fetch.mjs");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/js/verified-fetch.mjs"),
        &script,
    )
    .expect("copy the client script");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out = out_dir.path().join("file");
    let output = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&gw.url)
        .arg(root.to_string())
        .arg(&out)
        .output()
        .await
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "verified-fetch failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("JSON");
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(std::fs::read(&out).expect("output"), data);
}
