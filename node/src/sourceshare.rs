//! `/ipnix/source/1.0.0`: sharing pinned sources (the tarballs behind Nix's
//! fixed-output derivations) between peers by their hash, the DHT keys their
//! holders announce, and [`NodeHandle::find_source`], which gets a source
//! from a peer and verifies it before anything is indexed or served.
//!
//! Wire format: the ask protocols' shape ([`crate::pathinfo`]): one request
//! and one response per stream, each read to the end with a hard cap. The
//! request is the source index key `<flat|recursive>:<algo>:<hex digest>`
//! (at most [`MAX_REQUEST_BYTES`]); the response is the binary CID of the
//! fixed-output path-info that holds the source, or nothing for "not here".
//! A node answers from its `source` index, and only when the path-info block
//! is in its store.
//!
//! Answering is on by default, unlike `/ipnix/pathinfo/1.0.0`: a source is a
//! public tarball named by its hash, so saying "I hold the file with SHA-256
//! H" tells a peer only what it already had to know to ask.
//!
//! DHT keys: a flat SHA-256 source is announced under CIDv1(raw, sha2-256
//! multihash of the file), so any peer that knows a tarball's sha256 can find
//! its holders; every other key under CIDv1(raw, sha2-256 of
//! `/ipnix/source/1.0.0/` + key), like path-info keys.
//!
//! Verification (a CID from a peer is a pointer, not content): the path-info
//! block (checked against its CID by Bitswap) must carry `ca` =
//! `fixed:[r:]<algo>:<hash>` with the requested mode and hash, name no
//! references, and its store path must be the one that content address gives
//! its name. Then its DAG is fetched (capped at the declared size) and the
//! content hashed: a flat file through [`ipnix_sources::pin::open_flat`], a
//! recursive tree as the NAR [`export_nar`] renders. Only when the content
//! hashes to the requested hash is the source indexed (unpinned: a cache
//! that GC may clear), the `source` and `nix-path` entries in one session.
//! A peer whose answer fails any check is not asked again in that lookup.

use crate::fetch::{fetch_dag, FetchError, FetchOptions, ProgressFn};
use crate::net::{NetError, NodeHandle, PeerId};
use crate::pathinfo::{self, Question};
use cid::Cid;
use futures::future::Either;
use ipnix_bridge::{export_nar_with, ContentAddress, FileIngestion, HashAlgo, NixHash, PathInfo};
use ipnix_sources::index::{self, IndexError, SourceRecord, StoredPath};
use ipnix_store::block::{cid_for, RAW, SHA2_256};
use ipnix_store::{Store, StoreError};
use libp2p::StreamProtocol;
use sha2::Digest;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipnix/source/1.0.0");
/// `recursive:sha512:` and 128 hex digits: the longest request.
pub const MAX_REQUEST_BYTES: usize = "recursive:sha512:".len() + 128;
/// What the DHT provider key of a source other than flat SHA-256 is derived from.
const KEY_DOMAIN: &[u8] = b"/ipnix/source/1.0.0/";
/// Peers whose answer is tried per lookup before giving up.
const MAX_ATTEMPTS: usize = 4;
/// How long the path-info block a peer named may take to arrive.
const PATHINFO_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per step while hashing a fetched file.
const HASH_CHUNK: usize = 256 * 1024;

/// What a peer asked or answered.
pub type Behaviour = libp2p::request_response::Behaviour<pathinfo::Codec<Request>>;
pub type Event = libp2p::request_response::Event<Request, pathinfo::Response>;

/// The request-response behaviour for this protocol, asking and answering.
pub fn behaviour() -> Behaviour {
    pathinfo::ask_behaviour(PROTOCOL)
}

/// "Which path-info holds the source with this hash?"
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub mode: FileIngestion,
    pub hash: NixHash,
}

impl Request {
    pub fn new(mode: FileIngestion, hash: NixHash) -> Self {
        Request { mode, hash }
    }

    /// `<flat|recursive>:<algo>:<hex>`: the wire form and the index key.
    pub fn key(&self) -> String {
        format!(
            "{}:{}:{}",
            index::mode_name(self.mode),
            self.hash.algo(),
            hex::encode(self.hash.digest())
        )
    }
}

impl Question for Request {
    const MAX_BYTES: usize = MAX_REQUEST_BYTES;

    fn parse(data: &[u8]) -> Result<Self, String> {
        parse_request(data)
    }

    fn to_wire(&self) -> Vec<u8> {
        self.key().into_bytes()
    }
}

/// Parses a request (or an index key): mode, algorithm, lowercase hex
/// digest of the algorithm's length.
pub fn parse_request(data: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(data).map_err(|_| "source key is not UTF-8".to_string())?;
    let mut parts = text.splitn(3, ':');
    let (Some(mode), Some(algo), Some(digest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{text:?} is not <flat|recursive>:<algo>:<hex>"));
    };
    let mode = match mode {
        "flat" => FileIngestion::Flat,
        "recursive" => FileIngestion::Recursive,
        other => return Err(format!("{other:?} is not flat or recursive")),
    };
    let algo = HashAlgo::from_name(algo).map_err(|e| e.to_string())?;
    let is_hex = digest.len() == algo.size() * 2
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !is_hex {
        return Err(format!("{digest:?} is not a lowercase hex {algo} digest"));
    }
    let bytes = hex::decode(digest).map_err(|e| e.to_string())?;
    let hash = NixHash::new(algo, &bytes).ok_or_else(|| format!("bad {algo} digest"))?;
    Ok(Request { mode, hash })
}

/// The CID whose DHT provider records say "I hold this source": for a flat
/// SHA-256 source the file's own raw CID (its digest), so anyone who knows
/// the tarball's sha256 can look; otherwise a raw CID of SHA-256 over a
/// protocol prefix and the key, which cannot collide with a real block.
pub fn provider_cid(request: &Request) -> Cid {
    if request.mode == FileIngestion::Flat && request.hash.algo() == HashAlgo::Sha256 {
        let digest = multihash::Multihash::<64>::wrap(SHA2_256, request.hash.digest())
            .expect("a SHA-256 digest fits a multihash");
        return Cid::new_v1(RAW, digest);
    }
    let mut preimage = KEY_DOMAIN.to_vec();
    preimage.extend_from_slice(request.key().as_bytes());
    cid_for(RAW, &preimage)
}

/// The answer to `request` from the local `source` index: a path-info CID
/// whose block is in the store, else `None` (also on a store error, logged).
pub fn local_answer(store: &Store, request: &Request) -> Option<Cid> {
    let record = match index::get(store, request.mode, &request.hash) {
        Ok(record) => record?,
        Err(e) => {
            tracing::warn!("source lookup {}: {e}", request.key());
            return None;
        }
    };
    record
        .paths
        .iter()
        .filter_map(|p| Cid::try_from(p.pathinfo.as_str()).ok())
        .find(|cid| matches!(store.has(cid), Ok(true)))
}

/// Every DHT key this node's `source` index asks it to announce.
pub fn provider_keys(store: &Store) -> Vec<Cid> {
    match store.index_scan(index::NAMESPACE) {
        Ok(entries) => entries
            .iter()
            .filter_map(|(key, _)| parse_request(key).ok())
            .map(|request| provider_cid(&request))
            .collect(),
        Err(e) => {
            tracing::warn!("reprovide: cannot list sources: {e}");
            Vec::new()
        }
    }
}

/// Why [`NodeHandle::find_source`] failed. A peer's wrong answer is not an
/// error: it is logged, and the next peer is asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShareError {
    #[error("{0} hashes cannot be checked here, so sources are not taken from peers by them")]
    Unverifiable(HashAlgo),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("a verification task failed: {0}")]
    Task(String),
}

/// Why a peer's answer was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("its path-info block did not arrive: {0}")]
    NoPathInfo(NetError),
    #[error("its path-info block is malformed: {0}")]
    BadPathInfo(String),
    #[error("content address {found:?} is not {expected}")]
    WrongCa {
        found: Option<String>,
        expected: String,
    },
    #[error("{0} is not the store path its content address names")]
    WrongPath(String),
    #[error("{0} has references, which a fixed-output source never has")]
    References(String),
    #[error("a flat source must be a single file, {0} is not")]
    NotAFile(String),
    #[error("it declares {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("fetching its blocks: {0}")]
    Fetch(FetchError),
    #[error("its DAG holds more than the {0} bytes it declares")]
    Oversized(u64),
    #[error("reading it back: {0}")]
    Read(String),
    #[error("its content hashes to {got}, not {expected}")]
    Mismatch { got: String, expected: String },
    /// Not the peer's fault: stop asking.
    #[error(transparent)]
    Local(ShareError),
}

/// How [`NodeHandle::find_source`] asks and fetches.
#[derive(Debug, Clone)]
pub struct FindConfig {
    /// How long to wait for peers to say they hold the source (per attempt).
    pub peer_timeout: Duration,
    /// How long one block may take once asked for.
    pub fetch_timeout: Duration,
    /// The largest source taken from a peer (the pinner's cap).
    pub max_bytes: u64,
}

impl FindConfig {
    /// `peer_timeout` (the daemon's `--peer-timeout`), the daemon's default
    /// fetch timeout, and the pinner's size cap.
    pub fn new(peer_timeout: Duration) -> Self {
        FindConfig {
            peer_timeout,
            fetch_timeout: Duration::from_secs(60),
            max_bytes: ipnix_sources::fetch::DEFAULT_MAX_BYTES,
        }
    }

    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }
}

/// A source taken from a peer, verified and indexed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub peer: PeerId,
    pub pathinfo: Cid,
    /// The record as indexed now (merged with what was indexed before).
    pub record: SourceRecord,
}

impl NodeHandle {
    /// Gets the source `request` names from peers: asks them
    /// ([`ask_source`](Self::ask_source)) within `config.peer_timeout`,
    /// fetches what the first one names over Bitswap, verifies it (module
    /// docs) and indexes it here, unpinned. A peer whose answer fails a check
    /// costs a retry with the next peer (up to [`MAX_ATTEMPTS`]), never bad
    /// data. `Ok(None)`: no peer had it (or every answer was refused).
    pub async fn find_source(
        &self,
        store: Arc<Store>,
        request: &Request,
        config: &FindConfig,
    ) -> Result<Option<Found>, ShareError> {
        if Digester::new(request.hash.algo()).is_none() {
            return Err(ShareError::Unverifiable(request.hash.algo()));
        }
        let mut refused: Vec<PeerId> = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let Some((peer, cid)) = self
                .ask_source(request, &refused, config.peer_timeout)
                .await?
            else {
                return Ok(None);
            };
            match self.fetch_verified(&store, request, cid, config).await {
                Ok(record) => {
                    tracing::info!(
                        "source {} from {peer}: verified and indexed ({cid})",
                        request.key()
                    );
                    return Ok(Some(Found {
                        peer,
                        pathinfo: cid,
                        record,
                    }));
                }
                Err(Refusal::Local(e)) => return Err(e),
                Err(reason) => {
                    tracing::warn!(
                        "source {}: refused {peer}'s answer {cid}: {reason}",
                        request.key()
                    );
                    refused.push(peer);
                }
            }
        }
        Ok(None)
    }

    /// [`find_source`](Self::find_source) for a hash whose mode is unknown
    /// (`ipnix sources get`): flat and recursive are asked at once; the first
    /// verified one wins.
    pub async fn find_source_by_hash(
        &self,
        store: Arc<Store>,
        hash: &NixHash,
        config: &FindConfig,
    ) -> Result<Option<Found>, ShareError> {
        let flat_request = Request::new(FileIngestion::Flat, hash.clone());
        let recursive_request = Request::new(FileIngestion::Recursive, hash.clone());
        let flat = self.find_source(store.clone(), &flat_request, config);
        let recursive = self.find_source(store, &recursive_request, config);
        futures::pin_mut!(flat, recursive);
        match futures::future::select(flat, recursive).await {
            Either::Left((Ok(Some(found)), _)) | Either::Right((Ok(Some(found)), _)) => {
                Ok(Some(found))
            }
            Either::Left((first, other)) => match other.await {
                Ok(None) => first,
                second => second,
            },
            Either::Right((first, other)) => match other.await {
                Ok(None) => first,
                second => second,
            },
        }
    }

    async fn fetch_verified(
        &self,
        store: &Arc<Store>,
        request: &Request,
        cid: Cid,
        config: &FindConfig,
    ) -> Result<SourceRecord, Refusal> {
        let block = self
            .get_block(cid, PATHINFO_FETCH_TIMEOUT.min(config.fetch_timeout))
            .await
            .map_err(Refusal::NoPathInfo)?;
        let info = PathInfo::decode(&block).map_err(|e| Refusal::BadPathInfo(e.to_string()))?;
        let declared = check_claim(request, &info, config.max_bytes)?;
        // The DAG of a file is its bytes plus small UnixFS nodes; anything
        // much larger than declared is not this source. A tarball kept as
        // tree + recipe (I-35) is its unpacked tree: the unpacker's cap.
        let recipe_backed = info
            .blobs
            .iter()
            .any(|b| b.unixfs.codec() == ipnix_store::block::DAG_CBOR);
        let cap = if recipe_backed {
            info.nar_size + ipnix_sources::unpack::DEFAULT_MAX_BYTES
        } else {
            info.nar_size + info.nar_size / 16 + (1 << 20)
        };
        let over = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(Notify::new());
        let progress: ProgressFn = {
            let over = over.clone();
            let stop = stop.clone();
            Arc::new(move |p| {
                if p.fetched_bytes > cap && !over.swap(true, Ordering::Relaxed) {
                    stop.notify_one();
                }
            })
        };
        let opts = FetchOptions {
            block_timeout: config.fetch_timeout,
            progress: Some(progress),
            ..FetchOptions::default()
        };
        tokio::select! {
            fetched = fetch_dag(self, store.clone(), cid, opts) => {
                fetched.map_err(Refusal::Fetch)?;
            }
            // Dropping the walk drops its session: nothing it stored is pinned.
            () = stop.notified() => return Err(Refusal::Oversized(cap)),
        }
        let store = store.clone();
        let request = request.clone();
        tokio::task::spawn_blocking(move || {
            verify_and_index(&store, &request, &declared, cid, &info)
        })
        .await
        .map_err(|e| Refusal::Local(ShareError::Task(e.to_string())))?
    }
}

/// Checks what a path-info claims before anything else is fetched; returns
/// the hash its content address declares (the requested one, or for a flat
/// source asked by another algorithm, the one it was pinned with).
fn check_claim(request: &Request, info: &PathInfo, max_bytes: u64) -> Result<NixHash, Refusal> {
    let wrong_ca = || Refusal::WrongCa {
        found: info.ca.clone(),
        expected: ContentAddress::fixed(request.mode, request.hash.clone()).to_string(),
    };
    let ca = info
        .ca
        .as_deref()
        .and_then(|text| ContentAddress::parse(text).ok())
        .ok_or_else(wrong_ca)?;
    let ContentAddress::Fixed { method, hash } = &ca else {
        return Err(wrong_ca());
    };
    // A flat source pinned as sha512 is also indexed (and asked) by its
    // SHA-256; its content is then checked against both.
    let same_hash = *hash == request.hash;
    let alias = request.mode == FileIngestion::Flat && hash.algo() != request.hash.algo();
    if *method != request.mode || !(same_hash || alias) {
        return Err(wrong_ca());
    }
    if Digester::new(hash.algo()).is_none() {
        return Err(wrong_ca());
    }
    if !ca.names(info.store_dir(), &info.store_path()) {
        return Err(Refusal::WrongPath(info.store_path.clone()));
    }
    if !info.references.is_empty() || info.self_reference {
        return Err(Refusal::References(info.store_path.clone()));
    }
    if request.mode == FileIngestion::Flat
        && info.root.kind != ipnix_bridge::pathinfo::RootKind::Regular
    {
        return Err(Refusal::NotAFile(info.store_path.clone()));
    }
    if info.nar_size > max_bytes {
        return Err(Refusal::TooLarge {
            size: info.nar_size,
            max: max_bytes,
        });
    }
    Ok(hash.clone())
}

/// Hashes the fetched content (held from GC by a session's temp pin) and,
/// when it is what was asked for, indexes it in that same session.
fn verify_and_index(
    store: &Arc<Store>,
    request: &Request,
    declared: &NixHash,
    cid: Cid,
    info: &PathInfo,
) -> Result<SourceRecord, Refusal> {
    let local = |e: StoreError| Refusal::Local(ShareError::Store(e));
    let mut session = store.session();
    session.temp_pin(cid);
    if !store.has(&cid).map_err(local)? {
        return Err(Refusal::Read(format!("path-info {cid} is gone")));
    }
    let mut algos = vec![request.hash.algo(), declared.algo()];
    if request.mode == FileIngestion::Flat {
        algos.push(HashAlgo::Sha256);
    }
    let mut sink = HashSink::new(&algos);
    let size = match request.mode {
        FileIngestion::Flat => {
            let (len, mut reader) =
                ipnix_sources::pin::open_flat(store.clone(), &cid).map_err(Refusal::Read)?;
            let mut buf = vec![0u8; HASH_CHUNK];
            let mut read = 0u64;
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| Refusal::Read(e.to_string()))?;
                if n == 0 {
                    break;
                }
                read += n as u64;
                if read > len {
                    return Err(Refusal::Read(format!("the file runs past its {len} bytes")));
                }
                sink.update(&buf[..n]);
            }
            if read != len {
                return Err(Refusal::Read(format!("{read} of {len} bytes")));
            }
            len
        }
        FileIngestion::Recursive => {
            export_nar_with(
                &**store,
                &cid,
                &mut sink,
                &ipnix_sources::tarball::RecipeRebuilder::new(&**store),
            )
            .map_err(|e| Refusal::Read(e.to_string()))?;
            info.nar_size
        }
    };
    let hashes = sink.finish();
    for expected in [&request.hash, declared] {
        let got = hashes
            .iter()
            .find(|h| h.algo() == expected.algo())
            .expect("every checked algorithm was hashed");
        if got != expected {
            return Err(Refusal::Mismatch {
                got: got.to_sri(),
                expected: expected.to_sri(),
            });
        }
    }
    let sha256 = (request.mode == FileIngestion::Flat).then(|| {
        hashes
            .iter()
            .find(|h| h.algo() == HashAlgo::Sha256)
            .expect("flat sources are hashed in SHA-256")
            .to_sri()
    });
    let ours = StoredPath {
        store_path: info.store_path.clone(),
        pathinfo: cid.to_string(),
    };
    // Keep what the index already knew (URLs, other names), replacing only
    // a path whose path-info is gone.
    let record =
        match index::get(store, request.mode, declared).map_err(|e| Refusal::Local(e.into()))? {
            Some(mut known) => {
                known
                    .paths
                    .retain(|p| p.store_path != ours.store_path || p.pathinfo == ours.pathinfo);
                if !known.paths.contains(&ours) {
                    known.paths.push(ours);
                }
                known.sha256 = known.sha256.or(sha256);
                known
            }
            None => SourceRecord {
                mode: index::mode_name(request.mode).to_owned(),
                hash: declared.to_sri(),
                size,
                paths: vec![ours],
                sha256,
                urls: Vec::new(),
            },
        };
    let hash_part = info.store_path().hash_part().to_owned();
    // A path this node already holds (perhaps pinned) keeps its entry.
    let held = match ipnix_bridge::path_index::get(store, &hash_part).map_err(local)? {
        Some(existing) => store.has(&existing).map_err(local)?,
        None => false,
    };
    if !held {
        ipnix_bridge::path_index::stage(&mut session, &hash_part, &cid);
    }
    index::stage(&mut session, declared, &record);
    session.finish(None).map_err(local)?;
    Ok(record)
}

/// One running hash of a Nix hash algorithm; MD5 is not offered (Nix
/// deprecated it for fixed outputs), so MD5 sources are never taken from peers.
enum Digester {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Digester {
    fn new(algo: HashAlgo) -> Option<Self> {
        match algo {
            HashAlgo::Sha1 => Some(Digester::Sha1(sha1::Sha1::new())),
            HashAlgo::Sha256 => Some(Digester::Sha256(sha2::Sha256::new())),
            HashAlgo::Sha512 => Some(Digester::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha1(h) => h.update(data),
            Digester::Sha256(h) => h.update(data),
            Digester::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> NixHash {
        let (algo, digest) = match self {
            Digester::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            Digester::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Digester::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        NixHash::new(algo, &digest).expect("digest sizes match their algorithms")
    }
}

/// A `Write` that only hashes, in each algorithm once.
struct HashSink {
    digesters: Vec<Digester>,
}

impl HashSink {
    fn new(algos: &[HashAlgo]) -> Self {
        let mut unique: Vec<HashAlgo> = Vec::new();
        for algo in algos {
            if !unique.contains(algo) {
                unique.push(*algo);
            }
        }
        HashSink {
            digesters: unique.into_iter().filter_map(Digester::new).collect(),
        }
    }

    fn update(&mut self, data: &[u8]) {
        for digester in &mut self.digesters {
            digester.update(data);
        }
    }

    fn finish(self) -> Vec<NixHash> {
        self.digesters.into_iter().map(Digester::finish).collect()
    }
}

impl Write for HashSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.update(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec as _;

    const HEX: &str = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b";

    fn flat() -> Request {
        parse_request(format!("flat:sha256:{HEX}").as_bytes()).expect("parses")
    }

    #[tokio::test]
    async fn requests_round_trip_on_the_wire() {
        let mut codec = pathinfo::Codec::<Request>::default();
        let longest = Request::new(
            FileIngestion::Recursive,
            NixHash::new(HashAlgo::Sha512, &[0xab; 64]).expect("sha512"),
        );
        assert_eq!(longest.key().len(), MAX_REQUEST_BYTES);
        for request in [flat(), longest] {
            let mut wire = Vec::new();
            codec
                .write_request(
                    &PROTOCOL,
                    &mut futures::io::Cursor::new(&mut wire),
                    request.clone(),
                )
                .await
                .expect("write");
            let read = codec
                .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&wire))
                .await
                .expect("read");
            assert_eq!(read, request);
        }
    }

    #[tokio::test]
    async fn malformed_and_oversized_requests_are_refused() {
        let mut codec = pathinfo::Codec::<Request>::default();
        let long = vec![b'a'; 4096];
        assert!(codec
            .read_request(&PROTOCOL, &mut futures::io::Cursor::new(&long))
            .await
            .is_err());
        for bad in [
            String::new(),
            format!("flat:sha256:{}", &HEX[..63]),
            format!("flat:sha256:{}", HEX.to_uppercase()),
            format!("tree:sha256:{HEX}"),
            format!("flat:sha3:{HEX}"),
            format!("flat:sha512:{HEX}"),
            format!("flat:sha256:{HEX}:x"),
            "flat:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into(),
        ] {
            assert!(parse_request(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_flat_sha256_source_is_announced_under_its_file_digest() {
        let cid = provider_cid(&flat());
        assert_eq!(cid.codec(), RAW);
        assert_eq!(cid.hash().code(), SHA2_256);
        assert_eq!(hex::encode(cid.hash().digest()), HEX);
        // The same bytes as a recursive hash get a derived key.
        let recursive = Request::new(FileIngestion::Recursive, flat().hash);
        let derived = provider_cid(&recursive);
        assert_ne!(derived, cid);
        assert_eq!(
            derived,
            cid_for(
                RAW,
                format!("/ipnix/source/1.0.0/recursive:sha256:{HEX}").as_bytes()
            )
        );
    }

    #[test]
    fn index_keys_are_requests() {
        // The index writes keys in this very form.
        let hash = NixHash::parse(&format!("sha256:{HEX}")).expect("hash");
        let request = Request::new(FileIngestion::Flat, hash);
        assert_eq!(parse_request(request.key().as_bytes()), Ok(request));
    }

    #[test]
    fn hash_sink_hashes_each_algorithm_once() {
        let mut sink = HashSink::new(&[HashAlgo::Sha256, HashAlgo::Sha256, HashAlgo::Md5]);
        sink.write_all(b"hello").expect("write");
        let hashes = sink.finish();
        assert_eq!(hashes.len(), 1);
        assert_eq!(
            hex::encode(hashes[0].digest()),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
