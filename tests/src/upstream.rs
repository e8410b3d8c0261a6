//! A loopback "upstream" for the sources tests: starts
//! `tests/upstream/upstream.py` (Python stdlib + the `openssl` CLI) serving a
//! directory over HTTP and HTTPS on 127.0.0.1, waits for its ready line and
//! exposes its base URLs, its test CA and its request counters. The process
//! is killed when the handle drops (and exits by itself when our end of its
//! stdin closes, so a test that aborts leaves nothing running).
//!
//! The paths it answers (see the script's header for all of them):
//! `/f/NAME` the file (Range, HEAD), `/404/…`, `/status/CODE/…`,
//! `/flaky/K/NAME`, `/redirect/N/NAME`, `/redirect-loop/NAME`,
//! `/to-http/NAME` (https -> http), `/to-https/NAME`, `/stall/NAME`,
//! `/stall-once/NAME`, `/hang/NAME`, `/cut/NAME`, `/mutate/NAME`,
//! `/slow/NAME`, `/_stats`, `/_reset`, `/_die`.
//!
//! ```no_run
//! use ipnix_tests::upstream::{Upstream, UpstreamOptions};
//! # fn t() -> anyhow::Result<()> {
//! if let Some(reason) = ipnix_tests::upstream::unusable() {
//!     ipnix_tests::peers::skip("my_test", &reason);
//!     return Ok(());
//! }
//! let up = Upstream::start(UpstreamOptions::new("/path/to/dir"))?;
//! let url = up.https_url("/f/hello-2.10.tar.gz"); // trust up.ca_path()
//! let before = up.requests("/f/hello-2.10.tar.gz")?;
//! # Ok(()) }
//! ```
//!
//! It binds 127.0.0.1 only and dials nothing, so it may run outside the
//! sandbox too.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

/// How long the server may take to make its certificates and print `ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Read/write timeout of the harness's own small HTTP requests.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body [`http_get`] reads.
pub const MAX_CLIENT_BODY: u64 = 256 << 20;

/// `tests/upstream/upstream.py`.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("upstream/upstream.py")
}

/// Why the upstream cannot run here (`python3` or `openssl` missing), or `None`.
pub fn unusable() -> Option<String> {
    for (tool, arg) in [("python3", "--version"), ("openssl", "version")] {
        match Command::new(tool).arg(arg).output() {
            Ok(out) if out.status.success() => {}
            _ => {
                return Some(format!(
                    "`{tool}` is not installed (the loopback upstream needs it)"
                ))
            }
        }
    }
    None
}

/// How to start the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    pub root: PathBuf,
    /// 0: the kernel chooses.
    pub http_port: u16,
    pub https_port: u16,
    /// How long `/stall/` and `/hang/` keep silent.
    pub stall: Duration,
    /// `/slow/` rate in bytes per second.
    pub slow_rate: u64,
}

impl UpstreamOptions {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        UpstreamOptions {
            root: root.into(),
            http_port: 0,
            https_port: 0,
            stall: Duration::from_secs(600),
            slow_rate: 1 << 20,
        }
    }

    pub fn with_ports(mut self, http: u16, https: u16) -> Self {
        self.http_port = http;
        self.https_port = https;
        self
    }

    pub fn with_stall(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    pub fn with_slow_rate(mut self, bytes_per_second: u64) -> Self {
        self.slow_rate = bytes_per_second;
        self
    }
}

/// A running upstream; killed on drop.
pub struct Upstream {
    child: Child,
    /// Held open: the server exits when it closes.
    _stdin: ChildStdin,
    http_port: u16,
    https_port: u16,
    ca: PathBuf,
    root: PathBuf,
    /// Keeps the CA and certificates until the server is gone.
    _state: tempfile::TempDir,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("pid", &self.child.id())
            .field("http_port", &self.http_port)
            .field("https_port", &self.https_port)
            .field("root", &self.root)
            .finish()
    }
}

impl Upstream {
    /// Starts the server and waits for its ready line.
    pub fn start(options: UpstreamOptions) -> Result<Upstream> {
        let state = tempfile::Builder::new()
            .prefix("ipnix-upstream-")
            .tempdir()
            .context("creating the upstream's state dir")?;
        let mut child = Command::new("python3")
            .arg(script_path())
            .arg("--root")
            .arg(&options.root)
            .args(["--http-port", &options.http_port.to_string()])
            .args(["--https-port", &options.https_port.to_string()])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--stall-seconds", &options.stall.as_secs_f64().to_string()])
            .args(["--slow-rate", &options.slow_rate.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", script_path().display()))?;
        let stdin = child.stdin.take().context("upstream stdin")?;
        let stdout = child.stdout.take().context("upstream stdout")?;

        // Read the ready line on a thread so a silent server cannot hang us.
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            Ok(Ok(_)) | Err(RecvTimeoutError::Disconnected) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("upstream exited before its ready line (status {status:?})");
            }
            Ok(Err(err)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err).context("reading the upstream's ready line");
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("upstream printed no ready line within {READY_TIMEOUT:?}");
            }
        };
        let ready: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("upstream ready line {line:?}"))?;
        let port = |key: &str| -> Result<u16> {
            ready[key]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| anyhow!("ready line has no {key}: {line}"))
        };
        let http_port = port("http_port")?;
        let https_port = port("https_port")?;
        let ca = PathBuf::from(
            ready["ca"]
                .as_str()
                .ok_or_else(|| anyhow!("ready line has no ca: {line}"))?,
        );
        Ok(Upstream {
            child,
            _stdin: stdin,
            http_port,
            https_port,
            ca,
            root: options.root,
            _state: state,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `https://127.0.0.1:<port>` (the certificate also names `localhost`).
    pub fn https_base(&self) -> String {
        format!("https://127.0.0.1:{}", self.https_port)
    }

    /// `path` (starting with `/`) on the plain HTTP listener.
    pub fn http_url(&self, path: &str) -> String {
        format!("{}{path}", self.http_base())
    }

    /// `path` (starting with `/`) on the HTTPS listener.
    pub fn https_url(&self, path: &str) -> String {
        format!("{}{path}", self.https_base())
    }

    /// The test CA's certificate (PEM) that signed the HTTPS certificate.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// The directory being served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Request counts per path since start (or the last [`reset_stats`](Self::reset_stats)),
    /// every method, both listeners.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        let (status, body) = http_get(&self.http_url("/_stats"))?;
        if status != 200 {
            bail!("/_stats answered {status}");
        }
        let stats: Value = serde_json::from_slice(&body).context("/_stats JSON")?;
        let requests = stats["requests"]
            .as_object()
            .ok_or_else(|| anyhow!("/_stats has no requests map"))?;
        Ok(requests
            .iter()
            .map(|(path, n)| (path.clone(), n.as_u64().unwrap_or(0)))
            .collect())
    }

    /// How many requests `path` (no query string) has had.
    pub fn requests(&self, path: &str) -> Result<u64> {
        Ok(self.stats()?.get(path).copied().unwrap_or(0))
    }

    /// Sets every count back to 0.
    pub fn reset_stats(&self) -> Result<()> {
        let (status, _) = http_get(&self.http_url("/_reset"))?;
        if status != 200 {
            bail!("/_reset answered {status}");
        }
        Ok(())
    }

    /// Kills the server (SIGKILL) and waits for it: every URL now refuses
    /// connections. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET over plain TCP (`http://127.0.0.1:PORT/...` only):
/// status and body (by Content-Length, else to end of stream). No proxy, no
/// redirects: for the harness's own calls and for self-tests.
pub fn http_get(url: &str) -> Result<(u16, Vec<u8>)> {
    let response = http_request(url, "GET", &[])?;
    Ok((response.status, response.body))
}

/// What [`http_request`] got.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One plain-HTTP request with extra headers; reads the whole answer (see [`http_get`]).
pub fn http_request(url: &str, method: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let mut stream =
        TcpStream::connect(authority).with_context(|| format!("connecting to {authority}"))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?} from {url}"))?;
    let mut response_headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            bail!("{url}: connection closed inside the headers");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            response_headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let length = response_headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<u64>().ok());
    let mut body = Vec::new();
    if method != "HEAD" {
        match length {
            Some(n) => {
                if n > MAX_CLIENT_BODY {
                    bail!("{url}: body of {n} bytes is over {MAX_CLIENT_BODY}");
                }
                reader.take(n).read_to_end(&mut body)?;
            }
            None => {
                reader.take(MAX_CLIENT_BODY).read_to_end(&mut body)?;
            }
        }
    }
    Ok(Response {
        status,
        headers: response_headers,
        body,
    })
}
