//! A loopback Software Heritage API for the SWH tests: starts
//! `tests/swh/swh_server.py` (Python + the real `swh.model`, installed by
//! tests/setup-swh.sh) over given tarballs and files, waits for its ready
//! line and exposes its URL, the SWHIDs it computed, its test knobs
//! (`/_control`) and its request log (`/_log`). It binds 127.0.0.1 (the
//! API) and 127.0.0.2 (the host cooked bundles redirect to) only. The
//! process is killed when the handle drops, and exits by itself when our
//! end of its stdin closes.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

/// Unpacking and hashing the corpus takes a while on a busy machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// `tests/swh/swh_server.py`.
pub fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("swh/swh_server.py")
}

/// Why the server cannot run here (`python3` or `swh.model` missing), or `None`.
pub fn unusable() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import swh.model.from_disk"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        _ => Some(
            "python3 with swh.model is not installed (tests/setup-swh.sh installs swh.model[cli])"
                .into(),
        ),
    }
}

/// What the server archives.
#[derive(Debug, Clone, Default)]
pub struct SwhOptions {
    pub tarballs: Vec<PathBuf>,
    pub contents: Vec<PathBuf>,
    /// More contents, one path per line in this file.
    pub contents_list: Option<PathBuf>,
    /// Status GETs before a cooking is done.
    pub cook_polls: u32,
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    /// `127.0.0.1:PORT` (the API) or `127.0.0.2:PORT` (the bundle host).
    pub host: String,
    pub authorization: Option<String>,
}

pub struct SwhServer {
    child: Child,
    _stdin: ChildStdin,
    pub url: String,
    pub redirect_host: String,
    /// Per input path: `{"kind", "swhid", "nar_sha256", "checksums"}`.
    pub objects: Value,
    _state: tempfile::TempDir,
}

impl std::fmt::Debug for SwhServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwhServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SwhServer {
    pub fn start(options: &SwhOptions) -> Result<SwhServer> {
        let state = tempfile::Builder::new()
            .prefix("ipnix-swh-")
            .tempdir()
            .context("state dir")?;
        let mut cmd = Command::new("python3");
        cmd.arg(script_path())
            .arg("--state-dir")
            .arg(state.path())
            .args(["--cook-polls", &options.cook_polls.max(1).to_string()]);
        for t in &options.tarballs {
            cmd.arg("--tarball").arg(t);
        }
        for c in &options.contents {
            cmd.arg("--content").arg(c);
        }
        if let Some(list) = &options.contents_list {
            cmd.arg("--contents-list").arg(list);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", script_path().display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(read.map(|_| line));
        });
        let line = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            Ok(Err(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e).context("reading the SWH server's ready line");
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let status = child.wait().ok();
                bail!("the SWH server printed no ready line (status {status:?})");
            }
        };
        let ready: Value = serde_json::from_str(line.trim()).context("ready line")?;
        let url = ready["url"]
            .as_str()
            .ok_or_else(|| anyhow!("no url in {line}"))?
            .to_owned();
        let redirect_host = ready["redirect_host"].as_str().unwrap_or("").to_owned();
        Ok(SwhServer {
            child,
            _stdin: stdin,
            url,
            redirect_host,
            objects: ready["objects"].clone(),
            _state: state,
        })
    }

    /// The SWHIDs and ExtIDs the server computed for an input path.
    pub fn object(&self, path: &Path) -> &Value {
        &self.objects[path.to_str().expect("utf-8 path")]
    }

    /// Sets test knobs (see the script's header).
    pub fn control(&self, knobs: Value) -> Result<()> {
        let (status, _) = request(&self.url, "POST", "/_control", &knobs.to_string())?;
        if status != 200 {
            bail!("/_control answered {status}");
        }
        Ok(())
    }

    /// Every request since the start or the last `{"reset": true}`.
    pub fn log(&self) -> Result<Vec<Logged>> {
        let (status, body) = request(&self.url, "GET", "/_log", "")?;
        if status != 200 {
            bail!("/_log answered {status}");
        }
        let value: Value = serde_json::from_slice(&body)?;
        Ok(value["requests"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or(&[])
            .iter()
            .map(|r| Logged {
                method: r["method"].as_str().unwrap_or("").to_owned(),
                path: r["path"].as_str().unwrap_or("").to_owned(),
                host: r["host"].as_str().unwrap_or("").to_owned(),
                authorization: r["authorization"].as_str().map(str::to_owned),
            })
            .collect())
    }
}

impl Drop for SwhServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with a body to `base` (`http://127.0.0.1:PORT`).
fn request(base: &str, method: &str, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
    let authority = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{base}: http only"))?;
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
    Ok((status, raw[split + 4..].to_vec()))
}
