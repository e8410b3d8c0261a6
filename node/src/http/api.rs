//! The control API: how a CLI invocation runs a command inside the daemon that
//! holds the repo. The CLI sends its argument vector; the daemon parses and
//! runs it with the very same command code it would run offline (so there is
//! one implementation of every command), streaming stdin in and stdout, stderr
//! and the exit code back as frames.
//!
//! Who may call it ([`Access`], checked before any route runs): a loopback
//! client, naming a loopback host (`Host`), from no foreign web origin
//! (`Origin`, `Sec-Fetch-Site`), holding the token the daemon wrote to
//! `REPO/api.token` (mode 0600) at start. The host and origin checks stop a
//! web page, even after DNS rebinding; the token stops every other local user
//! and process that cannot read the repo's owner's files.
//!
//! Wire format: `POST /api/v0/run` with headers `authorization: Bearer TOKEN`
//! and `x-ipnix-command: base64(json(CommandRequest))`, and the command's
//! stdin as the body. The response body is a sequence of frames
//! `[kind u8][len u32 BE][payload]` (see [`FrameKind`]), ending with one
//! `Exit` frame holding an i32 BE.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// The header carrying the command.
pub const COMMAND_HEADER: &str = "x-ipnix-command";
/// The path of the run endpoint.
pub const RUN_PATH: &str = "/api/v0/run";
/// Every control API route lives under this prefix; the listener a LAN can
/// reach serves none of them.
pub const API_PREFIX: &str = "/api/";
/// The `authorization` scheme the CLI presents its token with.
pub const TOKEN_SCHEME: &str = "Bearer";

/// Frames of the response stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Stdout = 1,
    Stderr = 2,
    Exit = 3,
}

impl FrameKind {
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Stdout),
            2 => Some(Self::Stderr),
            3 => Some(Self::Exit),
            _ => None,
        }
    }
}

/// Largest frame payload either side produces or accepts.
pub const MAX_FRAME: usize = 256 * 1024;

/// One CLI invocation forwarded to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The arguments after the program name, global flags included.
    pub args: Vec<String>,
    /// The caller's working directory, for relative paths.
    pub cwd: PathBuf,
}

/// Where a command reads and writes when it runs in the daemon.
pub struct CommandIo {
    pub stdin: Box<dyn Read + Send>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

/// Runs CLI commands inside the daemon; implemented by the `ipnix` binary.
pub trait CommandRunner: Send + Sync + 'static {
    /// Runs one command to completion on a blocking thread; returns its exit code.
    fn run(&self, request: CommandRequest, io: CommandIo) -> i32;
}

/// Why a request to the control API was refused (answered 403).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    #[error("the control API only serves loopback clients, not {0}")]
    NotLoopbackClient(std::net::IpAddr),
    #[error("the control API needs a Host header naming a loopback address")]
    NoHost,
    #[error(
        "the control API only answers requests for localhost, 127.0.0.0/8 or [::1], not Host {0:?}"
    )]
    ForeignHost(String),
    #[error("the control API does not answer web pages (Origin {0:?})")]
    ForeignOrigin(String),
    #[error("the control API does not answer web pages (Sec-Fetch-Site {0:?})")]
    CrossSite(String),
    #[error("the control API needs the token of REPO/api.token (authorization: Bearer TOKEN); only the repo's owner can read it")]
    NoToken,
    #[error("wrong control API token: not the one in REPO/api.token of the running daemon")]
    WrongToken,
}

/// Who may use the control API: the token the daemon wrote to its repo, and
/// the port the API listens on (its own web origin).
#[derive(Clone)]
pub struct Access {
    token: Arc<str>,
    port: u16,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("Access").field("port", &self.port).finish()
    }
}

impl Access {
    /// `token` is what clients must present; `port` the API listener's port.
    pub fn new(token: &str, port: u16) -> Self {
        Self {
            token: Arc::from(token),
            port,
        }
    }

    /// A fresh token: 32 bytes from the operating system's CSPRNG, as hex.
    pub fn generate_token() -> String {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// Checks one request; `authority` is the request URI's (HTTP/2 sends no Host).
    pub fn check(
        &self,
        client: SocketAddr,
        headers: &HeaderMap,
        authority: Option<&str>,
    ) -> Result<(), Refused> {
        check_local_request(client, headers, authority, self.port)?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(TOKEN_SCHEME))
            .map(|(_, token)| token.trim())
            .ok_or(Refused::NoToken)?;
        if !constant_time_eq(presented.as_bytes(), self.token.as_bytes()) {
            return Err(Refused::WrongToken);
        }
        Ok(())
    }
}

/// The checks of [`Access::check`] that need no token: a loopback client,
/// naming a loopback host (`Host`, else the URI's `authority`), from no
/// foreign web origin (`Origin`, `Sec-Fetch-Site`). `port` is the listener's
/// own port: `http://` + a loopback host + that port is the only origin
/// allowed, a page the listener served itself. The Kubo RPC listener
/// (`http::rpc`), which like Kubo's takes no token, uses this alone.
pub fn check_local_request(
    client: SocketAddr,
    headers: &HeaderMap,
    authority: Option<&str>,
    port: u16,
) -> Result<(), Refused> {
    if !client.ip().is_loopback() {
        return Err(Refused::NotLoopbackClient(client.ip()));
    }
    let host = match headers.get(header::HOST) {
        Some(value) => value.to_str().unwrap_or_default().to_string(),
        None => authority.ok_or(Refused::NoHost)?.to_string(),
    };
    // A page after DNS rebinding reaches 127.0.0.1 but names its own host.
    if split_loopback_authority(&host).is_none() {
        return Err(Refused::ForeignHost(host));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let own = origin
            .strip_prefix("http://")
            .and_then(split_loopback_authority)
            .is_some_and(|origin_port| origin_port.unwrap_or(80) == port);
        if !own {
            return Err(Refused::ForeignOrigin(origin.to_string()));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default();
        // "none": typed by the user; "same-origin": the listener's own origin.
        if !matches!(site, "none" | "same-origin") {
            return Err(Refused::CrossSite(site.to_string()));
        }
    }
    Ok(())
}

/// `Some(port)` when `authority` is `localhost`, an address in 127.0.0.0/8 or
/// `[::1]`, with an optional port; `None` for any other host.
fn split_loopback_authority(authority: &str) -> Option<Option<u16>> {
    let (host_is_loopback, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        let ip = inside.parse::<Ipv6Addr>().ok()?;
        (ip.is_loopback(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback());
        (loopback, port)
    };
    if !host_is_loopback {
        return None;
    }
    match port {
        None => Some(None),
        Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(Some(digits.parse().ok()?))
        }
        Some(_) => None,
    }
}

/// Compares without stopping at the first differing byte, so the time taken
/// says nothing about how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The control API routes, each behind [`Access`]. Routes added under
/// [`API_PREFIX`] later must be added here, so they get the same guard.
pub fn router(runner: Arc<dyn CommandRunner>, access: Access) -> Router {
    Router::new()
        .route(RUN_PATH, post(run))
        .with_state(runner)
        .route_layer(axum::middleware::from_fn_with_state(access, guard))
}

async fn guard(
    State(access): State<Access>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    match access.check(client, request.headers(), authority.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tracing::warn!(%client, "control API request refused: {refused}");
            (StatusCode::FORBIDDEN, format!("{refused}\n")).into_response()
        }
    }
}

async fn run(
    State(runner): State<Arc<dyn CommandRunner>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request = match decode_request(&headers) {
        Ok(request) => request,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    // Few frames in flight: a slow client slows the command instead of growing a queue.
    let (frames, frames_out) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let stdin = SyncIoBridge::new(StreamReader::new(
        body.into_data_stream().map_err(std::io::Error::other),
    ));
    let io = CommandIo {
        stdin: Box::new(stdin),
        stdout: Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            FrameWriter::new(FrameKind::Stdout, frames.clone()),
        )),
        stderr: Box::new(FrameWriter::new(FrameKind::Stderr, frames.clone())),
    };
    tokio::task::spawn_blocking(move || {
        let code = runner.run(request, io);
        // The client may be gone; then nobody needs the exit code.
        let _ = frames.blocking_send(Ok(frame(FrameKind::Exit, &code.to_be_bytes())));
    });
    let stream = futures::stream::unfold(frames_out, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Response::builder()
        .header("content-type", "application/x-ipnix-frames")
        .body(Body::from_stream(stream))
        .expect("static headers are valid")
}

fn decode_request(headers: &HeaderMap) -> Result<CommandRequest, String> {
    let value = headers
        .get(COMMAND_HEADER)
        .ok_or_else(|| format!("missing {COMMAND_HEADER} header\n"))?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .map_err(|e| format!("{COMMAND_HEADER} is not base64: {e}\n"))?;
    serde_json::from_slice(&json).map_err(|e| format!("{COMMAND_HEADER} is not a command: {e}\n"))
}

/// Encodes a command for [`COMMAND_HEADER`].
pub fn encode_request(request: &CommandRequest) -> String {
    let json = serde_json::to_vec(request).expect("command requests always serialise");
    base64::engine::general_purpose::STANDARD.encode(json)
}

fn frame(kind: FrameKind, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Reads the frames of a response; used by the CLI side.
pub fn read_frame(reader: &mut impl Read) -> std::io::Result<Option<(FrameKind, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let kind = FrameKind::from_byte(header[0]).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "unknown frame kind from daemon",
        )
    })?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "oversized frame from daemon",
        ));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Ok(Some((kind, payload)))
}

struct FrameWriter {
    kind: FrameKind,
    frames: mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl FrameWriter {
    fn new(kind: FrameKind, frames: mpsc::Sender<Result<Bytes, std::io::Error>>) -> Self {
        Self { kind, frames }
    }
}

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(MAX_FRAME);
        self.frames
            .blocking_send(Ok(frame(self.kind, &buf[..n])))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the CLI client went away")
            })?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn local() -> SocketAddr {
        "127.0.0.1:50000".parse().expect("addr")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    fn bearer() -> String {
        format!("Bearer {TOKEN}")
    }

    #[test]
    fn the_cli_request_passes() {
        let access = Access::new(TOKEN, 4880);
        let auth = bearer();
        for host in [
            "127.0.0.1:4880",
            "localhost:4880",
            "LOCALHOST",
            "[::1]:4880",
            "127.8.9.10",
        ] {
            let h = headers(&[("host", host), ("authorization", &auth)]);
            assert_eq!(access.check(local(), &h, None), Ok(()), "{host}");
        }
        let h = headers(&[
            ("host", "127.0.0.1:4880"),
            ("origin", "http://localhost:4880"),
            ("sec-fetch-site", "same-origin"),
            ("authorization", &auth),
        ]);
        assert_eq!(access.check(local(), &h, None), Ok(()));
        // HTTP/2: the authority instead of Host.
        let h = headers(&[("authorization", &auth)]);
        assert_eq!(access.check(local(), &h, Some("127.0.0.1:4880")), Ok(()));
    }

    #[test]
    fn a_rebinding_page_is_refused() {
        let access = Access::new(TOKEN, 4880);
        let auth = bearer();
        let h = headers(&[
            ("host", "evil.example:4880"),
            ("origin", "http://evil.example:4880"),
            ("authorization", &auth),
        ]);
        assert!(matches!(
            access.check(local(), &h, None),
            Err(Refused::ForeignHost(_))
        ));
        for host in [
            "evil.example",
            "127.0.0.1.evil.example:4880",
            "localhost.evil.example",
            "127.1:4880",
            "0.0.0.0:4880",
            "[::2]:4880",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:48a0",
            "localhost:99999",
            "",
        ] {
            let h = headers(&[("host", host), ("authorization", &auth)]);
            assert!(
                matches!(
                    access.check(local(), &h, None),
                    Err(Refused::ForeignHost(_))
                ),
                "{host:?} passed"
            );
        }
        assert_eq!(
            access.check(local(), &headers(&[("authorization", &auth)]), None),
            Err(Refused::NoHost)
        );
    }

    #[test]
    fn foreign_origins_and_cross_site_fetches_are_refused() {
        let access = Access::new(TOKEN, 4880);
        let auth = bearer();
        for origin in [
            "http://evil.example:4880",
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://127.0.0.1:4880",
            "null",
            "",
        ] {
            let h = headers(&[
                ("host", "127.0.0.1:4880"),
                ("origin", origin),
                ("authorization", &auth),
            ]);
            assert!(
                matches!(
                    access.check(local(), &h, None),
                    Err(Refused::ForeignOrigin(_))
                ),
                "{origin:?} passed"
            );
        }
        for site in ["cross-site", "same-site"] {
            let h = headers(&[
                ("host", "127.0.0.1:4880"),
                ("sec-fetch-site", site),
                ("authorization", &auth),
            ]);
            assert!(matches!(
                access.check(local(), &h, None),
                Err(Refused::CrossSite(_))
            ));
        }
    }

    #[test]
    fn the_token_is_required_and_compared_whole() {
        let access = Access::new(TOKEN, 4880);
        let h = headers(&[("host", "127.0.0.1:4880")]);
        assert_eq!(access.check(local(), &h, None), Err(Refused::NoToken));
        let mut wrong = TOKEN.to_string();
        wrong.replace_range(63.., "0");
        for value in [
            format!("Bearer {wrong}"),
            format!("Bearer {}", &TOKEN[..63]),
            format!("Bearer {TOKEN}0"),
            "Bearer ".to_string(),
        ] {
            let h = headers(&[("host", "127.0.0.1:4880"), ("authorization", &value)]);
            assert_eq!(
                access.check(local(), &h, None),
                Err(Refused::WrongToken),
                "{value}"
            );
        }
        let h = headers(&[("host", "127.0.0.1:4880"), ("authorization", TOKEN)]);
        assert_eq!(access.check(local(), &h, None), Err(Refused::NoToken));
        let h = headers(&[("host", "127.0.0.1:4880"), ("authorization", &bearer())]);
        let lan: SocketAddr = "192.168.1.7:50000".parse().expect("addr");
        assert!(matches!(
            access.check(lan, &h, None),
            Err(Refused::NotLoopbackClient(_))
        ));
    }

    #[test]
    fn tokens_are_fresh() {
        let a = Access::generate_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, Access::generate_token());
        assert!(!format!("{:?}", Access::new(&a, 1)).contains(&a));
    }
}
