//! Test hosts in network namespaces: a LAN of `n` hosts joined by one Linux
//! bridge, and `ipnix daemon`s running inside those hosts.
//!
//! Layout of a [`Lan`] (all names made unique from the pid, an atomic counter
//! and a random nonce, so parallel tests and stale namespaces never collide):
//!
//! ```text
//!   netns ipx<tag>-sw:  br0 (bridge, multicast snooping off so mDNS floods)
//!                        |-- p0 ==veth== eth0 in netns ipx<tag>-h0  10.X.Y.1/24
//!                        |-- p1 ==veth== eth0 in netns ipx<tag>-h1  10.X.Y.2/24
//!                        ...
//! ```
//!
//! Every interface is created directly inside its namespace, so interface
//! names (`br0`, `pN`, `eth0`) never clash with another LAN's. Each host has
//! its own loopback, so daemons may keep their default ports (swarm 4801,
//! HTTP 127.0.0.1:4880). Nothing can leave a LAN: the bridge has no uplink.
//! Dropping the [`Lan`] kills whatever still runs in its namespaces and
//! deletes them (also while unwinding from a panic).
//!
//! Needs root and iproute2; [`Lan::why_not_runnable`] says why not, so a test
//! prints `SKIP: <test>: <reason>` ([`skip_unless_runnable`]).
//!
//! [`HostDaemon::http_get`] runs `curl` inside the host (curl is installed
//! wherever the suite runs; without it `http_get` returns an error).

use crate::cli::Ipnix;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// LANs created by this process so far: part of every name and subnet.
static LANS: AtomicU32 = AtomicU32::new(0);
/// How long a daemon may take to print "daemon is ready".
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Stderr lines kept from the start of a daemon's life, and from its end.
const STDERR_HEAD_LINES: usize = 100;
const STDERR_TAIL_LINES: usize = 200;

/// One host of a [`Lan`]: a network namespace with `lo` and `eth0`.
#[derive(Debug, Clone)]
pub struct Host {
    /// The namespace name (`ip netns exec NAME ...`).
    pub name: String,
    /// The host's address on the LAN.
    pub addr: Ipv4Addr,
}

/// `n` hosts on one bridge; deleted on drop.
#[derive(Debug)]
pub struct Lan {
    pub hosts: Vec<Host>,
    switch: String,
    /// `10.X.Y`: the LAN's /24.
    prefix: [u8; 3],
}

/// Prints `SKIP: <test>: <reason>` and returns false when LAN tests cannot
/// run here; returns true when they can.
pub fn skip_unless_runnable(test: &str) -> bool {
    match Lan::why_not_runnable() {
        Some(reason) => {
            eprintln!("SKIP: {test}: {reason}");
            false
        }
        None => true,
    }
}

impl Lan {
    /// Why namespaces cannot be made here (not root, no `ip`, `ip netns add`
    /// refused), or None when they can.
    pub fn why_not_runnable() -> Option<String> {
        if !is_root() {
            return Some("network namespaces need root".into());
        }
        if Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some("no `ip` command (iproute2)".into());
        }
        let probe = format!("ipx{}-probe{}", std::process::id(), rand::random::<u32>());
        match ip(&["netns", "add", &probe]) {
            Ok(()) => {
                let _ = ip(&["netns", "del", &probe]);
                None
            }
            Err(e) => Some(format!("`ip netns add` fails: {e}")),
        }
    }

    /// Creates `n_hosts` hosts (1..=250) on one bridge.
    pub fn create(n_hosts: usize) -> Result<Lan> {
        if !(1..=250).contains(&n_hosts) {
            bail!("a LAN has 1 to 250 hosts, not {n_hosts}");
        }
        let counter = LANS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Subnets only need to differ for readability of logs: every LAN is
        // its own bridge with no uplink.
        let id = pid.wrapping_mul(64).wrapping_add(counter);
        let prefix = [10, (id >> 8) as u8, id as u8];
        let tag = format!("{pid}-{counter}-{:04x}", rand::random::<u16>());
        let switch = format!("ipx{tag}-sw");
        // Each namespace is registered before its `ip netns add`, so a failure
        // half-way still deletes what exists (Drop ignores missing ones).
        let mut lan = Lan {
            hosts: Vec::new(),
            switch: switch.clone(),
            prefix,
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &switch,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..n_hosts {
            let name = format!("ipx{tag}-h{i}");
            let addr = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], (i + 1) as u8);
            lan.hosts.push(Host {
                name: name.clone(),
                addr,
            });
            ip(&["netns", "add", &name])?;
            let port = format!("p{i}");
            ip(&[
                "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &name,
            ])?;
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &switch, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// The LAN's subnet, `10.X.Y.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.prefix;
        format!("{a}.{b}.{c}.0/24")
    }

    /// Whether a multiaddr (or plain address text) names an IPv4 address in
    /// this LAN's subnet: `/ip4/10.X.Y.N/...`.
    pub fn in_subnet(&self, addr: &str) -> bool {
        let [a, b, c] = self.prefix;
        let ip_text = addr
            .strip_prefix("/ip4/")
            .map(|rest| rest.split('/').next().unwrap_or_default())
            .unwrap_or(addr);
        ip_text
            .parse::<Ipv4Addr>()
            .is_ok_and(|ip| ip.octets()[..3] == [a, b, c])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let names = self
            .hosts
            .iter()
            .map(|h| h.name.clone())
            .chain(std::iter::once(self.switch.clone()));
        for name in names {
            // Whatever still runs in the namespace was started by this test.
            kill_all_in(&name);
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Host {
    /// `ip netns exec NAME program`: a command that runs inside this host.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Starts `ipnix --repo R daemon ARGS` inside this host and waits for
    /// "daemon is ready". Stdout and stderr are drained for the daemon's
    /// whole life; stderr is kept (bounded) for [`HostDaemon::stderr`].
    pub fn start_daemon(&self, ipnix: &Ipnix, args: &[&str]) -> Result<HostDaemon> {
        let mut child = self
            .command(&ipnix.bin)
            .arg("--repo")
            .arg(ipnix.repo_path())
            .arg("daemon")
            .args(args)
            .env_remove("IPNIX_REPO")
            .env("IPNIX_NO_SWH", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start `ip netns exec ... ipnix daemon`")?;
        let stderr = Arc::new(Mutex::new(StderrLog::default()));
        let pipe = child.stderr.take().expect("stderr piped");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                log.lock().expect("stderr log").push(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::sync_channel::<Option<String>>(64);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let mut daemon = HostDaemon {
            child,
            host: self.clone(),
            bin: ipnix.bin.clone(),
            repo: ipnix.repo_path().to_path_buf(),
            banner: Vec::new(),
            stderr,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    let ready = line.contains("daemon is ready");
                    daemon.banner.push(line);
                    if ready {
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    daemon.kill();
                    // Let the stderr reader catch the last lines.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!(
                        "ipnix daemon on {} did not become ready; stdout: {:?}; stderr: {:?}",
                        self.name,
                        daemon.banner,
                        daemon.stderr()
                    );
                }
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || while let Ok(Some(_)) = rx.recv() {});
        Ok(daemon)
    }
}

/// The first and the last lines a daemon wrote on stderr.
#[derive(Default)]
struct StderrLog {
    head: Vec<String>,
    tail: VecDeque<String>,
    dropped: usize,
}

impl StderrLog {
    fn push(&mut self, line: String) {
        if self.head.len() < STDERR_HEAD_LINES {
            self.head.push(line);
            return;
        }
        if self.tail.len() == STDERR_TAIL_LINES {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back(line);
    }
}

/// An `ipnix daemon` running inside a [`Host`]; SIGKILLed on drop.
pub struct HostDaemon {
    child: Child,
    pub host: Host,
    bin: PathBuf,
    repo: PathBuf,
    /// Lines printed on stdout up to "daemon is ready".
    pub banner: Vec<String>,
    stderr: Arc<Mutex<StderrLog>>,
}

impl HostDaemon {
    /// The daemon's peer id, from its "peer identity: ..." line.
    pub fn peer_id(&self) -> String {
        self.banner
            .iter()
            .find_map(|l| l.strip_prefix("peer identity: "))
            .expect("the daemon prints its peer identity before it is ready")
            .trim()
            .to_string()
    }

    /// The HTTP port on 127.0.0.1 inside the host (from the repo's api file).
    pub fn http_port(&self) -> u16 {
        let url = std::fs::read_to_string(self.repo.join("api")).expect("daemon wrote REPO/api");
        url.trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("api file holds no port: {url:?}"))
    }

    /// Its swarm addresses from the banner ("swarm listening on ...").
    pub fn listen_addrs(&self) -> Vec<String> {
        self.banner
            .iter()
            .filter_map(|l| l.strip_prefix("swarm listening on "))
            .map(|a| a.trim().to_string())
            .collect()
    }

    /// What the daemon wrote on stderr so far (the first 100 lines, then the
    /// last 200, with a marker if lines were dropped in between).
    pub fn stderr(&self) -> Vec<String> {
        let log = self.stderr.lock().expect("stderr log");
        let mut lines = log.head.clone();
        if log.dropped > 0 {
            lines.push(format!("[... {} lines dropped ...]", log.dropped));
        }
        lines.extend(log.tail.iter().cloned());
        lines
    }

    /// `ipnix --repo R ARGS` inside the same host (through the daemon's
    /// control API), with stdin empty.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cli(args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec ipnix runs")
    }

    /// Like [`run`](Self::run) with `stdin` fed to the command.
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        crate::cli::output_with_stdin(self.cli(args), stdin)
    }

    /// The `ipnix --repo R ARGS` command inside the host, to spawn yourself.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = self.host.command(&self.bin);
        cmd.arg("--repo")
            .arg(&self.repo)
            .args(args)
            .env_remove("IPNIX_REPO")
            .env("IPNIX_NO_SWH", "1");
        cmd
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        crate::cli::assert_success(&out, args);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// `ipnix add -Q -` of `data`; returns the CID.
    pub fn add_bytes(&self, data: &[u8]) -> String {
        let args = ["add", "-Q", "-"];
        let out = self.run_with_stdin(&args, data);
        crate::cli::assert_success(&out, &args);
        String::from_utf8(out.stdout)
            .expect("utf-8 CID")
            .trim()
            .to_string()
    }

    /// The connected peers as `ipnix peers --json` reports them (each
    /// `{"peer_id", "addrs", "agent"}`).
    pub fn peers_json(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.run(&["peers", "--json"]);
        if !out.status.success() {
            bail!(
                "ipnix peers --json on {} failed: {}",
                self.host.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let value: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("ipnix peers --json is not JSON")?;
        value["peers"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("ipnix peers --json has no peers list: {value}"))
    }

    /// The peer ids of the connected peers.
    pub fn peers(&self) -> Vec<String> {
        self.peers_json()
            .expect("ipnix peers --json")
            .iter()
            .filter_map(|p| p["peer_id"].as_str().map(str::to_string))
            .collect()
    }

    /// Polls `ipnix peers` until `peer_id` is connected; returns its entry.
    pub fn wait_for_peer(&self, peer_id: &str, timeout: Duration) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let peers = self.peers_json()?;
            if let Some(p) = peers.iter().find(|p| p["peer_id"] == peer_id) {
                return Ok(p.clone());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not connect to {peer_id} within {timeout:?}; its peers: {peers:?}",
                    self.host.name
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET http://127.0.0.1:PORT{path}` from inside the host, with curl.
    /// Returns the status code and the body.
    pub fn http_get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let body = tempfile::NamedTempFile::new()?;
        let url = format!("http://127.0.0.1:{}{path}", self.http_port());
        let out = self
            .host
            .command("curl")
            .args(["-s", "-o"])
            .arg(body.path())
            .args(["-w", "%{http_code}", &url])
            .stdin(Stdio::null())
            .output()
            .context("cannot run curl inside the host (is curl installed?)")?;
        if !out.status.success() {
            bail!(
                "curl {url} in {} failed ({}): {}",
                self.host.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("curl printed no status code")?;
        Ok((status, std::fs::read(body.path())?))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits (SIGKILL after 20 s); returns whether it exited 0.
    pub fn stop(mut self) -> bool {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    self.kill();
                    return false;
                }
            }
        }
    }

    /// SIGKILL and reap: the host's daemon dies on the spot (its `api` file
    /// stays behind, as after a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HostDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Runs `ip ARGS`; an error carries ip's stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip`")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs every process in the namespace (`ip netns pids`).
fn kill_all_in(namespace: &str) {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", namespace])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        signal(pid, "KILL");
    }
}

fn is_root() -> bool {
    // Uid: real effective saved fs
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}
