//! Sources between ipnix nodes over loopback (`/ipnix/source/1.0.0`): a
//! node finds a peer's flat source by its hash and gets verified bytes, a
//! recursive one too; a peer that names a path-info whose content does not
//! hash to what was asked is refused and nothing is indexed (and with an
//! honest peer also connected the source still arrives); an unknown hash is
//! `None` within the timeout; a peer two hops away is found through the
//! source's DHT key; the hashed mirror serves a peer's source. Run under
//! /work/shared/peers/sandbox (loopback only).

mod net_support;

use ipnix_bridge::import::{import_nar, PathMeta};
use ipnix_bridge::nar::NarWriter;
use ipnix_bridge::{ContentAddress, FileIngestion, HashAlgo, NixHash};
use ipnix_node::http::mirror::{self, MirrorState};
use ipnix_node::sourceshare::{provider_cid, FindConfig, Request};
use ipnix_sources::index::{self, SourceRecord, StoredPath};
use ipnix_sources::model::{Entry, EntryKind, SourcesFile, UrlSource};
use ipnix_sources::pin::{self, NoProgress, PinConfig};
use net_support::{random_bytes, wait_for, TestNode};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::{Duration, Instant};

fn sha256(data: &[u8]) -> NixHash {
    NixHash::sha256(Sha256::digest(data).into())
}

fn config(peer_timeout: Duration) -> FindConfig {
    FindConfig::new(peer_timeout).with_fetch_timeout(Duration::from_secs(20))
}

/// Pins `data` on `node` as `ipnix sources add --file` does (the real
/// pinner, on a blocking thread: its HTTP client has a runtime of its own).
async fn pin_flat(node: &TestNode, name: &str, data: &[u8]) -> NixHash {
    let store = node.store.clone();
    let dir = node.dir.path().to_path_buf();
    let name = name.to_owned();
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || {
        let hash = sha256(&data);
        let file = dir.join(&name);
        std::fs::write(&file, &data).expect("write source");
        let store_path = ContentAddress::fixed(FileIngestion::Flat, hash.clone())
            .fixed_output_path(ipnix_bridge::hash::DEFAULT_STORE_DIR, &name)
            .expect("store path");
        let list = SourcesFile {
            version: 1,
            revision: None,
            entries: vec![Entry {
                index: 0,
                kind: EntryKind::Url(UrlSource {
                    urls: Vec::new(),
                    hash: hash.clone(),
                    mode: FileIngestion::Flat,
                    store_path,
                    post_fetch: false,
                    submodule: false,
                }),
            }],
        };
        let config = PinConfig::new(dir.join("tmp")).with_local_file(file);
        let report =
            pin::pin_list(&store, &list, &name, Vec::new(), &config, &NoProgress).expect("pin");
        assert_eq!(report.ok(), 1, "{:?}", report.entries);
        hash
    })
    .await
    .expect("pin task")
}

/// A NAR holding one regular file.
fn nar_of_file(data: &[u8]) -> Vec<u8> {
    let mut writer = NarWriter::new(Vec::new()).expect("nar");
    writer.file(false, data.len() as u64).expect("file");
    writer.file_data(data).expect("data");
    writer.finish().expect("finish").0
}

/// Indexes `nar` on `node` as the fixed-output path of `ca` named `name`,
/// whatever the NAR holds (a liar does not check its own claims).
fn index_claim(
    node: &TestNode,
    mode: FileIngestion,
    claimed: &NixHash,
    name: &str,
    nar: &[u8],
) -> cid::Cid {
    let ca = ContentAddress::fixed(mode, claimed.clone());
    let store_path = ca
        .fixed_output_path(ipnix_bridge::hash::DEFAULT_STORE_DIR, name)
        .expect("name")
        .expect("fixed");
    let mut session = node.store.session();
    let imported = import_nar(
        &mut session,
        nar,
        PathMeta {
            ca: Some(ca.to_string()),
            ..PathMeta::new(&store_path)
        },
    )
    .expect("import");
    let cid = imported.pathinfo_cid;
    ipnix_bridge::path_index::stage(
        &mut session,
        imported.pathinfo.store_path().hash_part(),
        &cid,
    );
    let record = SourceRecord {
        mode: index::mode_name(mode).to_owned(),
        hash: claimed.to_sri(),
        size: nar.len() as u64,
        paths: vec![StoredPath {
            store_path,
            pathinfo: cid.to_string(),
        }],
        sha256: None,
        urls: Vec::new(),
    };
    index::stage(&mut session, claimed, &record);
    session
        .finish(Some((
            cid,
            ipnix_store::PinMode::Recursive,
            Some(format!("test:{name}")),
        )))
        .expect("finish");
    cid
}

/// The flat source's bytes as the local store holds them.
fn read_local(node: &TestNode, hash: &NixHash) -> Option<Vec<u8>> {
    let record = index::get(&node.store, FileIngestion::Flat, hash).expect("index")?;
    let cid = record.pathinfo_cid()?;
    let (_, mut reader) = pin::open_flat(node.store.clone(), &cid).ok()?;
    let mut data = Vec::new();
    reader.read_to_end(&mut data).expect("read");
    Some(data)
}

#[tokio::test]
async fn a_peer_finds_a_flat_source_by_hash_and_gets_verified_bytes() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    // Over the 1 MiB block limit: a UnixFS file under the path-info.
    let data = random_bytes(3 * 1024 * 1024 + 5);
    let hash = pin_flat(&a, "hello-2.10.tar.gz", &data).await;
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    assert_eq!(read_local(&b, &hash), None);

    let request = Request::new(FileIngestion::Flat, hash.clone());
    let found = b
        .handle()
        .find_source(b.store.clone(), &request, &config(Duration::from_secs(5)))
        .await
        .expect("find")
        .expect("A has it");
    assert_eq!(found.peer, a.handle().peer_id());
    assert_eq!(found.record.hash, hash.to_sri());
    assert_eq!(found.record.size, data.len() as u64);
    assert_eq!(found.record.sha256.as_deref(), Some(hash.to_sri().as_str()));
    let store_path = &found.record.paths[0].store_path;
    assert!(store_path.ends_with("-hello-2.10.tar.gz"), "{store_path}");
    // Indexed here under the hash and the store path, and byte-identical.
    assert!(read_local(&b, &hash) == Some(data.clone()));
    let hash_part = &store_path["/nix/store/".len().."/nix/store/".len() + 32];
    assert_eq!(
        ipnix_bridge::path_index::get(&b.store, hash_part).expect("path index"),
        Some(found.pathinfo)
    );
    // A cache, not a pin: nothing new is pinned on B.
    assert!(b.store.pins().expect("pins").is_empty());
    // Now B answers for it too.
    let c = TestNode::start(|_| {}).await;
    c.handle()
        .connect(b.addr(false).await)
        .await
        .expect("connect");
    drop(a);
    let again = c
        .handle()
        .find_source(c.store.clone(), &request, &config(Duration::from_secs(5)))
        .await
        .expect("find")
        .expect("B has it now");
    assert_eq!(again.peer, b.handle().peer_id());
}

#[tokio::test]
async fn a_recursive_source_is_found_and_its_nar_hash_checked() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let mut writer = NarWriter::new(Vec::new()).expect("nar");
    writer.start_directory().expect("dir");
    writer.entry(b"README").expect("entry");
    let readme = random_bytes(5000);
    writer.file(false, readme.len() as u64).expect("file");
    writer.file_data(&readme).expect("data");
    writer.end_directory().expect("end");
    let nar = writer.finish().expect("finish").0;
    let hash = sha256(&nar);
    let cid = index_claim(&a, FileIngestion::Recursive, &hash, "source", &nar);
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let found = b
        .handle()
        .find_source_by_hash(b.store.clone(), &hash, &config(Duration::from_secs(5)))
        .await
        .expect("find")
        .expect("A has it");
    assert_eq!(found.pathinfo, cid);
    assert_eq!(found.record.mode, "recursive");
    let mut rendered = Vec::new();
    ipnix_bridge::export_nar(&*b.store, &cid, &mut rendered).expect("render");
    assert!(rendered == nar);
}

#[tokio::test]
async fn a_lying_peer_is_refused_and_nothing_is_indexed() {
    let liar = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let real = random_bytes(10_000);
    let hash = sha256(&real);
    // The liar claims `hash` (content address and store path consistent
    // with it) for other bytes.
    let fake = random_bytes(10_000);
    let lie = index_claim(
        &liar,
        FileIngestion::Flat,
        &hash,
        "x.tar.gz",
        &nar_of_file(&fake),
    );
    b.handle()
        .connect(liar.addr(false).await)
        .await
        .expect("connect");
    let request = Request::new(FileIngestion::Flat, hash.clone());
    // The liar does answer...
    let answer = b
        .handle()
        .ask_source(&request, &[], Duration::from_secs(5))
        .await
        .expect("ask");
    assert_eq!(answer, Some((liar.handle().peer_id(), lie)));
    // ...but its answer is refused after hashing, and nothing is indexed.
    let found = b
        .handle()
        .find_source(b.store.clone(), &request, &config(Duration::from_secs(2)))
        .await
        .expect("find");
    assert_eq!(found, None);
    assert_eq!(
        index::find(&b.store, &hash).expect("index"),
        None,
        "nothing indexed"
    );
    assert!(b
        .store
        .index_scan(ipnix_bridge::path_index::NAMESPACE)
        .expect("scan")
        .is_empty());
    assert!(b.store.pins().expect("pins").is_empty());
    // What it fetched is unpinned: GC clears it.
    b.store.gc().expect("gc");
    assert!(!b.store.has(&lie).expect("has"));

    // With an honest peer also connected, the lie costs a retry at most.
    let honest = TestNode::start(|_| {}).await;
    assert_eq!(pin_flat(&honest, "x.tar.gz", &real).await, hash);
    b.handle()
        .connect(honest.addr(false).await)
        .await
        .expect("connect");
    let found = b
        .handle()
        .find_source(b.store.clone(), &request, &config(Duration::from_secs(5)))
        .await
        .expect("find")
        .expect("the honest peer has it");
    assert_eq!(found.peer, honest.handle().peer_id());
    assert!(read_local(&b, &hash) == Some(real));
}

#[tokio::test]
async fn an_unknown_hash_is_none_within_the_timeout() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    pin_flat(&a, "known.tar.gz", b"known").await;
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let unknown = sha256(b"nobody has this");
    let started = Instant::now();
    let found = b
        .handle()
        .find_source(
            b.store.clone(),
            &Request::new(FileIngestion::Flat, unknown),
            &config(Duration::from_millis(200)),
        )
        .await
        .expect("find");
    assert_eq!(found, None);
    // Not a timing assertion on speed: the timeout bounds how long a miss waits.
    assert!(started.elapsed() < Duration::from_secs(5), "bounded");
    // MD5 cannot be verified here, so it is never taken from peers.
    let md5 = NixHash::new(HashAlgo::Md5, &[1; 16]).expect("md5");
    assert!(b
        .handle()
        .find_source(
            b.store.clone(),
            &Request::new(FileIngestion::Flat, md5),
            &config(Duration::from_millis(200)),
        )
        .await
        .is_err());
}

#[tokio::test]
async fn a_peer_two_hops_away_is_found_through_the_dht_key_of_the_file_hash() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let c = TestNode::start(|_| {}).await;
    let data = random_bytes(20_000);
    let hash = pin_flat(&a, "far.tar.gz", &data).await;
    a.handle().connect(b.addr(false).await).await.expect("a-b");
    c.handle().connect(b.addr(false).await).await.expect("c-b");
    let request = Request::new(FileIngestion::Flat, hash.clone());
    let key = provider_cid(&request);
    assert_eq!(key.hash().digest(), hash.digest(), "the file's own digest");
    wait_for(
        "A's source provider record to reach B",
        Duration::from_secs(20),
        || {
            let a = a.handle();
            let b = b.handle();
            async move {
                a.reprovide();
                tokio::time::sleep(Duration::from_millis(300)).await;
                b.find_providers(key, 1, Duration::from_secs(2))
                    .await
                    .is_ok_and(|p| p.contains(&a.peer_id()))
            }
        },
    )
    .await;
    let found = c
        .handle()
        .find_source(c.store.clone(), &request, &config(Duration::from_secs(10)))
        .await
        .expect("find")
        .expect("found through the DHT");
    assert_eq!(found.peer, a.handle().peer_id());
    assert!(read_local(&c, &hash) == Some(data));
}

#[tokio::test]
async fn the_hashed_mirror_serves_a_peers_source_and_404s_the_unknown() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|_| {}).await;
    let data = random_bytes(1024 * 1024 + 17);
    let hash = pin_flat(&a, "mirror.tar.gz", &data).await;
    b.handle()
        .connect(a.addr(false).await)
        .await
        .expect("connect");
    let state = MirrorState {
        store: b.store.clone(),
        node: Some(b.handle()),
        peers: config(Duration::from_secs(5)),
        swh: None,
    };
    let app = mirror::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    let get = |path: String| {
        let url = format!("{url}{path}");
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
    };
    let hex = hex::encode(hash.digest());
    let (status, body) = get(format!("/sha256/{hex}")).await.expect("join");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(body == data, "the exact bytes");
    let unknown = hex::encode(sha256(b"nobody").digest());
    let (status, _) = get(format!("/sha256/{unknown}")).await.expect("join");
    assert_eq!(status, 404);
    server.abort();
}
