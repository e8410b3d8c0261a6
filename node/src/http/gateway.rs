//! Trustless gateway (IPFS trustless gateway spec): `GET|HEAD /ipfs/{cid}`
//! answered with the verifiable raw block (`?format=raw`,
//! `Accept: application/vnd.ipld.raw`) or a CAR v1 of the DAG in depth-first
//! order without duplicates (`?format=car`, `Accept: application/vnd.ipld.car`).
//! Blocks missing locally are fetched from peers when a node is running.
//! Supported: `dag-scope=block|all` (`entity` is served as `all`); not
//! supported: content paths, `entity-bytes`, CAR v2, IPNS records.

use crate::fetch::NetworkBlocks;
use crate::net::{NetError, NodeHandle};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use cid::Cid;
use ipnix_store::block::{check_cid, IDENTITY};
use ipnix_store::{car, Store};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Immutable content: cache for a year (what Kubo's gateway sends for /ipfs/).
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
const RAW_TYPE: &str = "application/vnd.ipld.raw";
const CAR_TYPE: &str = "application/vnd.ipld.car";
/// The CAR we write: depth-first, every block once (see `car::export`).
const CAR_CONTENT_TYPE: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=n";
/// Bytes per body chunk of a CAR stream, and chunks queued ahead of the client.
const CAR_CHUNK: usize = 256 * 1024;
const CAR_CHUNKS_AHEAD: usize = 8;

/// What the gateway reads from: the store, and the node for missing blocks
/// (`None`: serve local blocks only, answer 404 for the rest).
#[derive(Clone)]
pub struct GatewayState {
    pub store: Arc<Store>,
    pub node: Option<NodeHandle>,
    /// How long to wait for a block from peers before answering 504.
    pub fetch_timeout: Duration,
}

impl std::fmt::Debug for GatewayState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayState")
            .field("online", &self.node.is_some())
            .field("fetch_timeout", &self.fetch_timeout)
            .finish_non_exhaustive()
    }
}

impl GatewayState {
    pub fn new(store: Arc<Store>, node: Option<NodeHandle>) -> Self {
        Self {
            store,
            node,
            fetch_timeout: Duration::from_secs(60),
        }
    }
}

/// `GET|HEAD /ipfs/{cid}` and `/ipfs/{cid}/{*path}` (the latter answers 501).
pub fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/ipfs/{cid}", get(serve))
        .route("/ipfs/{cid}/{*path}", get(serve_path))
        .with_state(state)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Block,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Car(Scope),
}

/// An error answer before any body is sent: status and a plain-text reason.
type Refusal = (StatusCode, String);

fn refuse(status: StatusCode, message: impl std::fmt::Display) -> Refusal {
    (status, message.to_string())
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let mut response = (status, format!("{message}\n")).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn serve_path(Path((cid, path)): Path<(String, String)>) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "content paths are not supported by this trustless gateway: \
             request /ipfs/{cid} instead of /ipfs/{cid}/{path}"
        ),
    )
}

/// Picks the response format: `format` wins over `Accept` (spec); a request
/// naming neither gets 400, as a strict trustless gateway answers.
fn negotiate(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(Format, bool), Refusal> {
    let scope = match query.get("dag-scope").map(String::as_str) {
        None | Some("all") | Some("entity") => Scope::All,
        Some("block") => Scope::Block,
        Some(other) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("dag-scope={other} is not one of block, entity, all"),
            ))
        }
    };
    if query.contains_key("entity-bytes") {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "entity-bytes is not supported by this gateway",
        ));
    }
    if let Some(version) = query.get("car-version") {
        if version != "1" {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("car-version={version}: only CAR version 1 is served"),
            ));
        }
    }
    if let Some(format) = query.get("format") {
        return match format.as_str() {
            "raw" => Ok((Format::Raw, true)),
            "car" => Ok((Format::Car(scope), true)),
            other => Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("format={other} is not served here: this trustless gateway answers format=raw or format=car"),
            )),
        };
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    let mut best: Option<(f32, Format)> = None;
    for item in accept {
        let mut parts = item.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let mut q = 1.0f32;
        let mut version_ok = true;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version_ok = v.trim() == "1",
                    _ => {}
                }
            }
        }
        let format = match media.as_str() {
            RAW_TYPE => Format::Raw,
            CAR_TYPE if version_ok => Format::Car(scope),
            _ => continue,
        };
        if q > 0.0 && best.is_none_or(|(best_q, _)| q > best_q) {
            best = Some((q, format));
        }
    }
    match best {
        Some((_, format)) => Ok((format, false)),
        None => Err(refuse(
            StatusCode::BAD_REQUEST,
            "this is a trustless gateway: ask for application/vnd.ipld.raw or \
             application/vnd.ipld.car (Accept header or ?format=raw|car)",
        )),
    }
}

fn common_headers(headers: &mut HeaderMap, cid: &str, etag: &str) {
    let set = |headers: &mut HeaderMap, name, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(headers, header::CACHE_CONTROL, IMMUTABLE);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::ETAG, etag);
    set(headers, header::VARY, "Accept");
    set(headers, header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    set(
        headers,
        HeaderName::from_static("x-ipfs-path"),
        &format!("/ipfs/{cid}"),
    );
    set(headers, HeaderName::from_static("x-ipfs-roots"), cid);
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag == etag || tag.strip_prefix("W/") == Some(etag)
        })
}

/// The root block: local, else from peers. Errors are finished responses.
async fn root_block(
    state: &GatewayState,
    cid: Cid,
    only_if_cached: bool,
) -> Result<Bytes, Refusal> {
    if cid.hash().code() == IDENTITY {
        return Ok(Bytes::copy_from_slice(cid.hash().digest()));
    }
    let store = state.store.clone();
    let local = tokio::task::spawn_blocking(move || store.get(&cid).map_err(|e| e.to_string()))
        .await
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e))?
        .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    if let Some(data) = local {
        return Ok(data);
    }
    if only_if_cached {
        return Err(refuse(
            StatusCode::PRECONDITION_FAILED,
            format!("{cid} is not in the local store (Cache-Control: only-if-cached)"),
        ));
    }
    let Some(node) = &state.node else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            format!("{cid} is not in the local store and the node is offline"),
        ));
    };
    match node.get_block(cid, state.fetch_timeout).await {
        Ok(data) => {
            let store = state.store.clone();
            let keep = data.clone();
            // Cached unpinned: the gateway is a cache, GC may clear it.
            let cached = tokio::task::spawn_blocking(move || {
                if let Err(e) = store.put(&cid, &keep) {
                    tracing::warn!("gateway: caching {cid}: {e}");
                }
            });
            if let Err(e) = cached.await {
                tracing::warn!("gateway: caching {cid}: {e}");
            }
            Ok(data)
        }
        Err(NetError::BlockTimeout { timeout, .. }) => Err(refuse(
            StatusCode::GATEWAY_TIMEOUT,
            format!("no peer sent {cid} within {timeout:?}"),
        )),
        Err(e @ NetError::Busy(_)) => Err(refuse(StatusCode::SERVICE_UNAVAILABLE, e)),
        Err(e) => Err(refuse(StatusCode::BAD_GATEWAY, e)),
    }
}

async fn serve(
    State(state): State<GatewayState>,
    Path(cid_text): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let cid = match Cid::try_from(cid_text.as_str()) {
        Ok(cid) => cid,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{cid_text:?} is not a valid CID: {e}"),
            )
        }
    };
    if let Err(e) = check_cid(&cid) {
        return error(StatusCode::BAD_REQUEST, format!("{cid_text}: {e}"));
    }
    let (format, format_in_query) = match negotiate(&query, &headers) {
        Ok(f) => f,
        Err((status, message)) => return error(status, message),
    };
    let etag = match format {
        Format::Raw => format!("\"{cid_text}.raw\""),
        Format::Car(Scope::Block) => format!("\"{cid_text}.car.dfs.n.block\""),
        Format::Car(Scope::All) => format!("\"{cid_text}.car.dfs.n.all\""),
    };
    let mut response_headers = HeaderMap::new();
    common_headers(&mut response_headers, &cid_text, &etag);
    if !format_in_query {
        let query = match format {
            Format::Raw => "raw",
            Format::Car(_) => "car",
        };
        if let Ok(v) = HeaderValue::from_str(&format!("/ipfs/{cid_text}?format={query}")) {
            response_headers.insert(header::CONTENT_LOCATION, v);
        }
    }
    if etag_matches(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, response_headers).into_response();
    }
    let only_if_cached = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("only-if-cached"));
    let root = match root_block(&state, cid, only_if_cached).await {
        Ok(data) => data,
        Err((status, message)) => return error(status, message),
    };
    let head = method == Method::HEAD;
    match format {
        Format::Raw => {
            let disposition = format!("attachment; filename=\"{cid_text}.bin\"");
            response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(RAW_TYPE));
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                response_headers.insert(header::CONTENT_DISPOSITION, v);
            }
            response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(root.len()));
            let body = if head {
                Body::empty()
            } else {
                Body::from(root)
            };
            (StatusCode::OK, response_headers, body).into_response()
        }
        Format::Car(scope) => {
            let disposition = format!("attachment; filename=\"{cid_text}.car\"");
            response_headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CAR_CONTENT_TYPE),
            );
            if let Ok(v) = HeaderValue::from_str(&disposition) {
                response_headers.insert(header::CONTENT_DISPOSITION, v);
            }
            if head {
                return (StatusCode::OK, response_headers).into_response();
            }
            let body = match scope {
                Scope::Block => Body::from(single_block_car(&cid, &root)),
                Scope::All => car_stream(&state, cid),
            };
            (StatusCode::OK, response_headers, body).into_response()
        }
    }
}

/// A CAR holding only the root block (identity CIDs: only the header).
fn single_block_car(cid: &Cid, data: &[u8]) -> Vec<u8> {
    let mut out = car::header_bytes(std::slice::from_ref(cid));
    if cid.hash().code() != IDENTITY {
        let cid_bytes = cid.to_bytes();
        let mut len = unsigned_varint::encode::u64_buffer();
        out.extend_from_slice(unsigned_varint::encode::u64(
            (cid_bytes.len() + data.len()) as u64,
            &mut len,
        ));
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(data);
    }
    out
}

/// Writes into a bounded channel of body chunks; fails once the client is gone.
/// The first write (the CAR header) goes out at once, so status and headers
/// reach the client before any block is looked for.
struct ChunkWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    sent_any: bool,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CAR_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CAR_CHUNK || !self.sent_any {
            self.sent_any = true;
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Streams the CAR of the DAG under `root`. The status is already 200 when a
/// block turns out to be missing: the stream then ends with an error, so the
/// client sees a truncated response (as the spec prescribes).
fn car_stream(state: &GatewayState, root: Cid) -> Body {
    let (tx, rx) = mpsc::channel(CAR_CHUNKS_AHEAD);
    let blocks = NetworkBlocks::new(state.store.clone(), state.node.clone(), state.fetch_timeout);
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter {
            buf: Vec::with_capacity(CAR_CHUNK),
            tx: tx.clone(),
            sent_any: false,
        };
        if let Err(e) = car::export(&blocks, &root, &mut writer) {
            tracing::warn!("gateway: CAR of {root} cut short: {e}");
            // What was complete goes out first; the error then cuts the
            // stream. hyper drops its unflushed output (the status line
            // too) when the body fails, so wait until the client has taken
            // every chunk before failing.
            if writer.send().is_ok() {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while tx.capacity() < CAR_CHUNKS_AHEAD && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn format_query_wins_over_accept() {
        let q: HashMap<String, String> = [("format".to_string(), "raw".to_string())].into();
        let (f, in_query) = negotiate(&q, &accept(CAR_TYPE)).expect("ok");
        assert_eq!(f, Format::Raw);
        assert!(in_query);
    }

    #[test]
    fn accept_negotiation() {
        let none = HashMap::new();
        assert_eq!(
            negotiate(&none, &accept("application/vnd.ipld.raw"))
                .expect("raw")
                .0,
            Format::Raw
        );
        assert_eq!(
            negotiate(
                &none,
                &accept("application/vnd.ipld.car; version=1; order=dfs")
            )
            .expect("car")
            .0,
            Format::Car(Scope::All)
        );
        assert_eq!(
            negotiate(
                &none,
                &accept("application/vnd.ipld.raw;q=0.5, application/vnd.ipld.car;q=0.9")
            )
            .expect("car")
            .0,
            Format::Car(Scope::All)
        );
        assert!(negotiate(&none, &accept("text/html")).is_err());
        assert!(negotiate(&none, &accept("application/vnd.ipld.car; version=2")).is_err());
        assert!(negotiate(&none, &HeaderMap::new()).is_err());
        let scoped: HashMap<String, String> = [
            ("format".to_string(), "car".to_string()),
            ("dag-scope".to_string(), "block".to_string()),
        ]
        .into();
        assert_eq!(
            negotiate(&scoped, &HeaderMap::new()).expect("car").0,
            Format::Car(Scope::Block)
        );
    }

    #[test]
    fn etags_match_strong_weak_and_star() {
        let mut h = HeaderMap::new();
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"bafy.raw\""),
        );
        assert!(etag_matches(&h, "\"bafy.raw\""));
        assert!(!etag_matches(&h, "\"bafy.car\""));
    }
}
