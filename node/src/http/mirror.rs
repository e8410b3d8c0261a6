//! The hashed mirror: `GET|HEAD /<algo>/<hash>` (hex, nix32 or base64) and
//! the SRI form `/<algo>-<base64>` (also `//<algo>-<base64>`, what nixpkgs'
//! fetchurl asks when a derivation has an SRI `hash`), answered with the
//! verified bytes of a pinned flat source. This is what `hashed-mirrors` in
//! nix.conf (Nix's builtin fetchurl) and nixpkgs' `hashedMirrors` ask
//! before or after the upstream URL.
//!
//! A hash not indexed here is asked of peers (`/ipnix/source/1.0.0`, see
//! [`crate::sourceshare`]) for at most the daemon's `--peer-timeout`; what a
//! peer names is fetched, verified against the hash and indexed before the
//! first byte is served. A hash held by no one is a 404 within that timeout.
//!
//! Base64 digests may hold `/`, so the path is parsed whole, as the
//! router's fallback (and from the binary cache's one-segment route).

use crate::net::NodeHandle;
use crate::sourceshare::{self, FindConfig, ShareError};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use ipnix_bridge::{FileIngestion, HashAlgo, NixHash};
use ipnix_store::Store;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Bytes per body chunk.
const CHUNK: usize = 256 * 1024;
/// Chunks read ahead of a slow client.
const CHUNKS_AHEAD: usize = 4;

/// What the mirror reads from.
#[derive(Clone)]
pub struct MirrorState {
    pub store: Arc<Store>,
    pub node: Option<NodeHandle>,
    /// How a miss is asked of peers (`--peer-timeout`, `--fetch-timeout`).
    pub peers: FindConfig,
    /// Last: Software Heritage, for pinned lists' failed entries.
    pub swh: Option<Arc<crate::http::swh::SwhFallback>>,
}

impl std::fmt::Debug for MirrorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorState")
            .field("online", &self.node.is_some())
            .field("peers", &self.peers)
            .finish()
    }
}

/// A router whose fallback is the mirror: every path no other route takes.
pub fn router(state: MirrorState) -> Router {
    Router::new().fallback(fallback).with_state(state)
}

async fn fallback(
    State(state): State<MirrorState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    serve(&state, &method, uri.path(), &headers).await
}

/// Parses a mirror path into the hash it asks for; `None` when the path is
/// not a mirror request at all.
pub fn parse_path(path: &str) -> Option<Result<NixHash, String>> {
    let rest = path.trim_start_matches('/');
    let names = ["md5", "sha1", "sha256", "sha512"];
    for name in names {
        let algo = HashAlgo::from_name(name).expect("known names");
        if let Some(digest) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('/')) {
            return Some(
                NixHash::parse_digest(algo, digest).map_err(|e| format!("/{name}/{digest}: {e}")),
            );
        }
        if let Some(digest) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('-')) {
            return Some(
                NixHash::parse(&format!("{name}-{digest}"))
                    .map_err(|e| format!("{name}-{digest}: {e}")),
            );
        }
    }
    None
}

/// Answers a mirror request for `path`, or 404 for anything else.
pub async fn serve(
    state: &MirrorState,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response {
    let hash = match parse_path(path) {
        None => return text(StatusCode::NOT_FOUND, format!("{path} is not served here")),
        Some(Err(e)) => return text(StatusCode::NOT_FOUND, format!("not a hash: {e}")),
        Some(Ok(hash)) => hash,
    };
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD");
    }
    let mut found = open_local(&state.store, &hash).await;
    if let (Ok(Ok(None)), Some(node)) = (&found, &state.node) {
        if from_peers(state, node, &hash).await {
            found = open_local(&state.store, &hash).await;
        }
    }
    if let (Ok(Ok(None)), Some(swh)) = (&found, &state.swh) {
        if swh.flat(&hash).await {
            found = open_local(&state.store, &hash).await;
        }
    }
    let (len, reader) = match found {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("{} is not pinned here", hash.to_sri()),
            )
        }
        Ok(Err(e)) => {
            tracing::warn!("mirror: {}: {e}", hash.to_sri());
            return text(StatusCode::INTERNAL_SERVER_ERROR, e);
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let range = match headers.get(header::RANGE).map(|v| parse_range(v, len)) {
        None => None,
        Some(Ok(range)) => Some(range),
        Some(Err(())) => {
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "bad range");
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return response;
        }
    };
    let (start, end) = range.unwrap_or((0, len));
    let mut response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(stream(reader, start, end - start))
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        response.headers_mut().insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end.saturating_sub(1)))
                .expect("ascii"),
        );
    }
    response
}

/// A stored flat source: its length and a reader.
type Opened = (u64, Box<dyn ipnix_sources::pin::ReadSeek + Send>);

/// The stored bytes of the flat source `hash`, if indexed here with its
/// path-info present (an unpinned one GC cleared counts as a miss).
async fn open_local(
    store: &Arc<Store>,
    hash: &NixHash,
) -> Result<Result<Option<Opened>, String>, tokio::task::JoinError> {
    let store = store.clone();
    let hash = hash.clone();
    tokio::task::spawn_blocking(move || {
        let request = sourceshare::Request::new(FileIngestion::Flat, hash);
        let Some(cid) = sourceshare::local_answer(&store, &request) else {
            return Ok(None);
        };
        ipnix_sources::pin::open_flat(store, &cid).map(Some)
    })
    .await
}

/// Asks peers for a flat source this node lacks; true once one is verified
/// and indexed here.
async fn from_peers(state: &MirrorState, node: &NodeHandle, hash: &NixHash) -> bool {
    let request = sourceshare::Request::new(FileIngestion::Flat, hash.clone());
    match node
        .find_source(state.store.clone(), &request, &state.peers)
        .await
    {
        Ok(Some(found)) => {
            tracing::info!("mirror: {} from {}", hash.to_sri(), found.peer);
            true
        }
        Ok(None) => false,
        Err(ShareError::Unverifiable(_)) => false,
        Err(e) => {
            tracing::warn!("mirror: asking peers for {}: {e}", hash.to_sri());
            false
        }
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range) -> [start, end).
fn parse_range(value: &HeaderValue, len: u64) -> Result<(u64, u64), ()> {
    let spec = value.to_str().map_err(|_| ())?.trim();
    let spec = spec.strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let end: u64 = b.parse().map_err(|_| ())?;
            (a.parse().map_err(|_| ())?, end.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(());
    }
    Ok((start, end))
}

fn stream(mut reader: Box<dyn ipnix_sources::pin::ReadSeek + Send>, start: u64, len: u64) -> Body {
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        if start > 0 {
            if let Err(e) = reader.seek(SeekFrom::Start(start)) {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
        let mut left = len;
        while left > 0 {
            let mut buf = vec![0u8; CHUNK.min(left as usize)];
            match reader.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.blocking_send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stored source ended early",
                    )));
                    return;
                }
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    if tx.blocking_send(Ok(buf.into())).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("mirror: read failed: {e}");
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_paths_in_every_form() {
        let hex = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b";
        let want = NixHash::parse(&format!("sha256:{hex}")).expect("hash");
        for path in [
            format!("/sha256/{hex}"),
            format!("/sha256/{}", want.nix32_digest()),
            format!("/{}", want.to_sri()),
            format!("//{}", want.to_sri()),
            format!("/sha256/{}", want.to_base64().trim_start_matches("sha256:")),
        ] {
            assert_eq!(parse_path(&path), Some(Ok(want.clone())), "{path}");
        }
        assert!(parse_path("/nix-cache-info").is_none());
        assert!(matches!(parse_path("/sha256/xyz"), Some(Err(_))));
    }

    #[test]
    fn ranges() {
        let v = |s: &str| HeaderValue::from_str(s).expect("header");
        assert_eq!(parse_range(&v("bytes=0-9"), 100), Ok((0, 10)));
        assert_eq!(parse_range(&v("bytes=90-"), 100), Ok((90, 100)));
        assert_eq!(parse_range(&v("bytes=-5"), 100), Ok((95, 100)));
        assert_eq!(parse_range(&v("bytes=95-200"), 100), Ok((95, 100)));
        assert!(parse_range(&v("bytes=100-"), 100).is_err());
        assert!(parse_range(&v("bytes=0-1,3-4"), 100).is_err());
    }
}
