//! The control API: how a CLI invocation runs a command inside the daemon that
//! holds the repo. The CLI sends its argument vector; the daemon parses and
//! runs it with the very same command code it would run offline (so there is
//! one implementation of every command), streaming stdin in and stdout, stderr
//! and the exit code back as frames. Only loopback clients are served: write
//! operations never leave the machine.
//!
//! Wire format: `POST /api/v0/run` with header `x-ipnix-command:
//! base64(json(CommandRequest))` and the command's stdin as the body. The
//! response body is a sequence of frames `[kind u8][len u32 BE][payload]`
//! (see [`FrameKind`]), ending with one `Exit` frame holding an i32 BE.

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

/// The header carrying the command.
pub const COMMAND_HEADER: &str = "x-ipnix-command";
/// The path of the run endpoint.
pub const RUN_PATH: &str = "/api/v0/run";

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

/// The control API routes.
pub fn router(runner: Arc<dyn CommandRunner>) -> Router {
    Router::new().route(RUN_PATH, post(run)).with_state(runner)
}

async fn run(
    State(runner): State<Arc<dyn CommandRunner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "the control API only serves loopback clients\n",
        )
            .into_response();
    }
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
