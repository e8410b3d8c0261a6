//! The Kubo RPC API subset (`/api/v0/...` on its own loopback listener,
//! Kubo's port 5001 by default): what kubo-rpc-client, ipfs-cluster's
//! `ipfshttp` connector and scripts written for Kubo call. Owns the
//! dispatch, the request checks, option parsing, Kubo's error shape and the
//! streaming of command output; the commands live in one file per group
//! (`files`: add, cat, get; `blocks`: block, dag, refs; `pins`: pin, repo;
//! `peers`: id, version, swarm, routing).
//!
//! Kubo's conventions, kept here: POST only (405 otherwise); options in the
//! query string (`arg` repeated for positional arguments); JSON with Kubo's
//! field names; NDJSON, one object per line, where Kubo streams; errors as
//! `{"Message":…,"Code":…,"Type":"error"}` with 400/Code 1 for a missing
//! argument or an option Kubo's parser would refuse, 500/Code 0 for a
//! command that fails (a malformed CID included, as in Kubo), 404 for an
//! unknown command. An error after streamed output began is sent as a last
//! NDJSON error object and the `X-Stream-Error` trailer (NDJSON), or by
//! cutting the response short (raw output such as `cat`).
//!
//! Who may call it: like Kubo's API there is no token, so every request
//! passes the control API's token-free checks
//! ([`check_local_request`](crate::http::api::check_local_request)): a
//! loopback client naming a loopback `Host`, no foreign `Origin` or
//! cross-site `Sec-Fetch-Site`. Request bodies stream into the store through
//! bounded channels and are capped at [`RpcState::max_body`] bytes.

mod blocks;
mod files;
mod peers;
mod pins;

use crate::http::api::{check_local_request, Refused};
use crate::net::NodeHandle;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body::Frame;
use http_body_util::StreamBody;
use ipnix_store::Store;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Kubo's API port, the listener's default address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5001";
/// Default cap on one request body (`--rpc-max-body`).
pub const DEFAULT_MAX_BODY: u64 = 32 << 30;
/// Messages of streamed output in flight between a command and its client.
const STREAM_DEPTH: usize = 8;
/// Raw output is sent in pieces of about this size.
const RAW_PIECE: usize = 64 * 1024;

/// Everything the RPC handlers read from.
pub struct RpcState {
    pub store: Arc<Store>,
    pub node: Option<NodeHandle>,
    /// How long one block may take from peers (`--fetch-timeout`).
    pub fetch_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// The listener's port: its own web origin.
    pub port: u16,
}

/// Why a call failed; answered in Kubo's error shape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// What Kubo's argument parser refuses: 400, Code 1.
    #[error("{0}")]
    BadRequest(String),
    /// A command that failed: 500, Code 0.
    #[error("{0}")]
    Failed(String),
    #[error("404 page not found: {0} is not a command of this Kubo RPC API subset")]
    UnknownCommand(String),
    #[error("405 - Method Not Allowed: the Kubo RPC API takes POST only")]
    MethodNotAllowed,
    #[error("{0}")]
    Forbidden(String),
    #[error("request body too large: the Kubo RPC API accepts at most {0} bytes per request (--rpc-max-body)")]
    TooLarge(u64),
}

impl RpcError {
    pub(crate) fn bad(message: impl Into<String>) -> Self {
        RpcError::BadRequest(message.into())
    }

    pub(crate) fn failed(message: impl std::fmt::Display) -> Self {
        RpcError::Failed(message.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            RpcError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RpcError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RpcError::UnknownCommand(_) => StatusCode::NOT_FOUND,
            RpcError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RpcError::Forbidden(_) => StatusCode::FORBIDDEN,
            RpcError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// go-ipfs-cmds' error codes: 0 normal, 1 client, 4 forbidden.
    fn code(&self) -> u8 {
        match self {
            RpcError::BadRequest(_) | RpcError::TooLarge(_) => 1,
            RpcError::Forbidden(_) => 4,
            _ => 0,
        }
    }

    fn body(&self) -> serde_json::Value {
        serde_json::json!({"Message": self.to_string(), "Code": self.code(), "Type": "error"})
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let mut line = self.body().to_string();
        line.push('\n');
        let mut response = (self.status(), line).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, RpcError::MethodNotAllowed) {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}

macro_rules! failed_from {
    ($($ty:ty),*) => {$(
        impl From<$ty> for RpcError {
            fn from(e: $ty) -> Self {
                RpcError::Failed(e.to_string())
            }
        }
    )*};
}
failed_from!(
    ipnix_store::StoreError,
    ipnix_store::unixfs::UnixfsError,
    ipnix_store::car::CarError,
    ipnix_store::links::LinksError,
    crate::fetch::FetchError,
    crate::net::NetError,
    std::io::Error
);

/// The router of the RPC listener: every path goes through [`dispatch`].
pub fn router(state: RpcState) -> Router {
    Router::new().fallback(dispatch).with_state(Arc::new(state))
}

async fn dispatch(
    State(state): State<Arc<RpcState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    if let Err(refused) =
        check_local_request(client, request.headers(), authority.as_deref(), state.port)
    {
        let message = refused_message(&refused);
        tracing::warn!(%client, "Kubo RPC request refused: {message}");
        return RpcError::Forbidden(message).into_response();
    }
    let path = request.uri().path().to_string();
    let Some(command) = path.strip_prefix("/api/v0/") else {
        return RpcError::UnknownCommand(path).into_response();
    };
    let command = command.trim_end_matches('/').to_string();
    if !COMMANDS.contains(&command.as_str()) {
        return RpcError::UnknownCommand(format!("/api/v0/{command}")).into_response();
    }
    if request.method() != Method::POST {
        return RpcError::MethodNotAllowed.into_response();
    }
    let args = match Args::parse(request.uri().query()) {
        Ok(args) => args,
        Err(e) => return e.into_response(),
    };
    let result = match command.as_str() {
        "id" => peers::id(state, args).await,
        "version" => peers::version(args),
        "swarm/peers" => peers::swarm_peers(state, args).await,
        "swarm/connect" => peers::swarm_connect(state, args).await,
        "routing/findprovs" | "dht/findprovs" => peers::findprovs(state, args).await,
        "add" => files::add(state, args, request).await,
        "cat" => files::cat(state, args).await,
        "get" => files::get(state, args).await,
        "block/get" => blocks::block_get(state, args).await,
        "block/put" => blocks::block_put(state, args, request).await,
        "block/stat" => blocks::block_stat(state, args).await,
        "dag/export" => blocks::dag_export(state, args).await,
        "dag/import" => blocks::dag_import(state, args, request).await,
        "refs" => blocks::refs(state, args).await,
        "pin/add" => pins::pin_add(state, args).await,
        "pin/rm" => pins::pin_rm(state, args).await,
        "pin/ls" => pins::pin_ls(state, args).await,
        "repo/stat" => pins::repo_stat(state, args).await,
        "repo/gc" => pins::repo_gc(state, args).await,
        _ => Err(RpcError::UnknownCommand(format!("/api/v0/{command}"))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Every command this listener serves (README "Kubo RPC API" lists them).
pub const COMMANDS: &[&str] = &[
    "id",
    "version",
    "add",
    "cat",
    "get",
    "block/get",
    "block/put",
    "block/stat",
    "dag/export",
    "dag/import",
    "pin/add",
    "pin/rm",
    "pin/ls",
    "refs",
    "swarm/peers",
    "swarm/connect",
    "routing/findprovs",
    "dht/findprovs",
    "repo/stat",
    "repo/gc",
];

/// The control API's refusal, named for this listener.
fn refused_message(refused: &Refused) -> String {
    refused
        .to_string()
        .replace("the control API", "the Kubo RPC API")
}

/// The query string: options by name, positional arguments as `arg`.
pub(crate) struct Args {
    pairs: Vec<(String, String)>,
}

impl Args {
    fn parse(query: Option<&str>) -> Result<Self, RpcError> {
        let pairs = match query {
            None | Some("") => Vec::new(),
            Some(query) => serde_urlencoded_pairs(query)?,
        };
        Ok(Args { pairs })
    }

    /// The first value of the first of `names` (long name, then aliases) present.
    pub(crate) fn get(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|name| {
            self.pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        })
    }

    /// Positional arguments, in order.
    pub(crate) fn positional(&self) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(key, _)| key == "arg")
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The first positional argument; Kubo's message when it is missing.
    pub(crate) fn required(&self, what: &str) -> Result<&str, RpcError> {
        self.positional()
            .first()
            .copied()
            .ok_or_else(|| RpcError::bad(format!("argument {what:?} is required")))
    }

    /// A boolean option as Go's strconv.ParseBool reads it; bare `?flag` is true.
    pub(crate) fn bool(&self, names: &[&str], default: bool) -> Result<bool, RpcError> {
        match self.get(names) {
            None => Ok(default),
            Some(value) => match value {
                "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
                "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
                other => Err(RpcError::bad(format!(
                    "could not parse value {other:?} of option {:?} as a bool",
                    names[0]
                ))),
            },
        }
    }

    /// An explicitly given boolean option, or `None`.
    pub(crate) fn bool_opt(&self, names: &[&str]) -> Result<Option<bool>, RpcError> {
        match self.get(names) {
            None => Ok(None),
            Some(_) => self.bool(names, false).map(Some),
        }
    }

    /// An integer option.
    pub(crate) fn int(&self, names: &[&str]) -> Result<Option<i64>, RpcError> {
        match self.get(names) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| {
                RpcError::bad(format!(
                    "could not parse value {value:?} of option {:?} as an integer",
                    names[0]
                ))
            }),
        }
    }
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, RpcError> {
    let uri: axum::http::Uri = format!("/?{query}")
        .parse()
        .map_err(|e| RpcError::bad(format!("malformed query string: {e}")))?;
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| RpcError::bad(format!("malformed query string: {e}")))
}

/// A CID argument: `CID` or `/ipfs/CID`. Kubo answers a malformed one with
/// 500 (its commands fail, its parser does not), and so does this.
pub(crate) fn parse_cid(text: &str) -> Result<cid::Cid, RpcError> {
    let bare = text.strip_prefix("/ipfs/").unwrap_or(text);
    let bare = bare.trim_end_matches('/');
    if bare.contains('/') {
        return Err(RpcError::failed(format!(
            "{text:?} is a path; this command takes a CID"
        )));
    }
    cid::Cid::try_from(bare).map_err(|e| RpcError::failed(format!("invalid CID {text:?}: {e}")))
}

/// A JSON answer, as Kubo writes it (one object, newline-terminated).
pub(crate) fn json(value: &impl Serialize) -> Response {
    let mut body = serde_json::to_vec(value).expect("RPC answers always serialise");
    body.push(b'\n');
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Runs `work` (store reads and writes) on a blocking thread; answers its JSON.
pub(crate) async fn blocking_json<T, F>(work: F) -> Result<Response, RpcError>
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, RpcError> + Send + 'static,
{
    let value = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RpcError::failed(format!("internal: the command thread failed: {e}")))??;
    Ok(json(&value))
}

/// How streamed output is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// One JSON object per line (`application/json`, `X-Chunked-Output`).
    Ndjson,
    /// Bytes of the given content type (`X-Stream-Output`).
    Raw(&'static str),
}

enum Piece {
    Data(Bytes),
    Failed(RpcError),
}

/// Where a streaming command writes: JSON lines or raw bytes, through a
/// bounded channel, so a slow client slows the command down.
pub(crate) struct Sink {
    pieces: mpsc::Sender<Piece>,
    buffer: Vec<u8>,
}

impl Sink {
    /// Sends one NDJSON line now.
    pub(crate) fn line(&mut self, value: &impl Serialize) -> Result<(), RpcError> {
        self.send_buffer()?;
        let mut line = serde_json::to_vec(value).expect("RPC answers always serialise");
        line.push(b'\n');
        self.send(Bytes::from(line))
    }

    fn send(&mut self, bytes: Bytes) -> Result<(), RpcError> {
        self.pieces
            .blocking_send(Piece::Data(bytes))
            .map_err(|_| RpcError::failed("the client went away"))
    }

    fn send_buffer(&mut self) -> Result<(), RpcError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let bytes = Bytes::from(std::mem::take(&mut self.buffer));
        self.send(bytes)
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= RAW_PIECE {
            self.send_buffer()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffer()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))
    }
}

/// Runs `work` on a blocking thread and streams what it writes. A failure
/// before the first byte is answered as a plain Kubo error (status and
/// JSON); a later one as described in the module doc.
pub(crate) async fn streamed<F>(output: Output, work: F) -> Result<Response, RpcError>
where
    F: FnOnce(&mut Sink) -> Result<(), RpcError> + Send + 'static,
{
    let (pieces, mut received) = mpsc::channel::<Piece>(STREAM_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut sink = Sink {
            pieces: pieces.clone(),
            buffer: Vec::new(),
        };
        if let Err(e) = work(&mut sink).and_then(|()| sink.send_buffer()) {
            // The client may be gone; then nobody needs the error.
            let _ = pieces.blocking_send(Piece::Failed(e));
        }
    });
    let first = match received.recv().await {
        None => None,
        Some(Piece::Failed(e)) => return Err(e),
        Some(Piece::Data(bytes)) => Some(bytes),
    };
    let start = match first {
        Some(bytes) => Streaming::First(bytes, received),
        None => Streaming::Done,
    };
    let frames = futures::stream::unfold(start, move |state| next_frame(state, output));
    let mut response = Response::new(Body::new(StreamBody::new(frames)));
    set_stream_headers(response.headers_mut(), output);
    Ok(response)
}

/// Where a streamed response stands.
enum Streaming {
    First(Bytes, mpsc::Receiver<Piece>),
    Receiving(mpsc::Receiver<Piece>),
    Trailers(HeaderMap),
    Done,
}

type FrameResult = Result<Frame<Bytes>, std::io::Error>;

async fn next_frame(state: Streaming, output: Output) -> Option<(FrameResult, Streaming)> {
    let mut pieces = match state {
        Streaming::Done => return None,
        Streaming::Trailers(trailers) => {
            return Some((Ok(Frame::trailers(trailers)), Streaming::Done))
        }
        Streaming::First(bytes, pieces) => {
            return Some((Ok(Frame::data(bytes)), Streaming::Receiving(pieces)))
        }
        Streaming::Receiving(pieces) => pieces,
    };
    match pieces.recv().await? {
        Piece::Data(bytes) => Some((Ok(Frame::data(bytes)), Streaming::Receiving(pieces))),
        Piece::Failed(e) => {
            tracing::warn!("Kubo RPC: a streamed command failed: {e}");
            match output {
                Output::Ndjson => {
                    let mut line = e.body().to_string();
                    line.push('\n');
                    Some((
                        Ok(Frame::data(Bytes::from(line))),
                        Streaming::Trailers(stream_error_trailer(&e)),
                    ))
                }
                // Cut short: a client cannot take an error line for content.
                Output::Raw(_) => {
                    Some((Err(std::io::Error::other(e.to_string())), Streaming::Done))
                }
            }
        }
    }
}

fn set_stream_headers(headers: &mut HeaderMap, output: Output) {
    match output {
        Output::Ndjson => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert("x-chunked-output", HeaderValue::from_static("1"));
        }
        Output::Raw(content_type) => {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert("x-stream-output", HeaderValue::from_static("1"));
        }
    }
    headers.insert(header::TRAILER, HeaderValue::from_static("X-Stream-Error"));
}

fn stream_error_trailer(e: &RpcError) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    let text: String = e
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&text) {
        trailers.insert("x-stream-error", value);
    }
    trailers
}

/// Opens a multipart body, refusing at once one whose declared length is
/// over the limit (a chunked one is cut when it passes it).
pub(crate) async fn multipart(state: &RpcState, request: Request) -> Result<Multipart, RpcError> {
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > state.max_body {
            return Err(RpcError::TooLarge(state.max_body));
        }
    }
    let limit = usize::try_from(state.max_body).unwrap_or(usize::MAX);
    let (parts, body) = request.into_parts();
    let limited = Body::new(http_body_util::Limited::new(body, limit));
    let request = Request::from_parts(parts, limited);
    Multipart::from_request(request, &()).await.map_err(|e| {
        RpcError::bad(format!(
            "this command takes a multipart/form-data body: {e}"
        ))
    })
}

/// A multipart read error: the size cap, or a malformed body.
pub(crate) fn multipart_error(
    state: &RpcState,
    e: axum::extract::multipart::MultipartError,
) -> RpcError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE || over_limit(&e) {
        RpcError::TooLarge(state.max_body)
    } else {
        RpcError::bad(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// Whether the cause of `e` is the body limit ([`http_body_util::Limited`]):
/// multer wraps it, and axum only maps its own limit to 413.
fn over_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>()
            || error.to_string().contains("length limit exceeded")
        {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_as_kubo_reads_them() {
        let args = Args::parse(Some(
            "arg=a&arg=b&pin=false&progress&cid-version=1&x=%2Fipfs%2Fq",
        ))
        .expect("parses");
        assert_eq!(args.positional(), vec!["a", "b"]);
        assert!(!args.bool(&["pin"], true).expect("bool"));
        assert!(args.bool(&["progress"], false).expect("bare flag"));
        assert_eq!(args.int(&["cid-version"]).expect("int"), Some(1));
        assert_eq!(args.get(&["x"]), Some("/ipfs/q"));
        assert!(args.bool(&["x"], false).is_err());
        assert!(Args::parse(None).expect("empty").required("key").is_err());
    }

    #[test]
    fn errors_have_kubos_shape_and_status() {
        let e = RpcError::bad("argument \"key\" is required");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body(),
            serde_json::json!({"Message": "argument \"key\" is required", "Code": 1, "Type": "error"})
        );
        assert_eq!(
            RpcError::failed("x").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(RpcError::failed("x").code(), 0);
    }

    #[test]
    fn cids_and_paths() {
        let v0 = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH";
        assert_eq!(parse_cid(v0).expect("v0").to_string(), v0);
        assert_eq!(
            parse_cid(&format!("/ipfs/{v0}")).expect("path").to_string(),
            v0
        );
        assert!(parse_cid("notacid").is_err());
        assert!(parse_cid(&format!("/ipfs/{v0}/a")).is_err());
    }
}
