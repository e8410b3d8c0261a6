//! Running the real `ipnix` binary in tests: where it is, a throwaway repo,
//! and assertions on exit codes and output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `ipnix` binary: `$IPNIX_BIN`, else the workspace's target directory.
pub fn ipnix_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("IPNIX_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    for profile in ["debug", "release"] {
        let bin = target.join(profile).join("ipnix");
        if bin.exists() {
            return bin;
        }
    }
    panic!("no ipnix binary: run `cargo build -p ipnix-node --bin ipnix` or set IPNIX_BIN")
}

/// A fresh repo in a temporary directory, and the binary run on it.
pub struct Ipnix {
    pub repo: tempfile::TempDir,
    pub bin: PathBuf,
}

impl Default for Ipnix {
    fn default() -> Self {
        Self::new()
    }
}

impl Ipnix {
    pub fn new() -> Self {
        Self {
            repo: tempfile::tempdir().expect("tempdir"),
            bin: ipnix_bin(),
        }
    }

    /// A fresh repo in a temporary directory under `parent` (e.g. a small
    /// tmpfs, to fill the disk on purpose).
    pub fn new_in(parent: &Path) -> Self {
        Self {
            repo: tempfile::tempdir_in(parent).expect("tempdir"),
            bin: ipnix_bin(),
        }
    }

    pub fn repo_path(&self) -> &Path {
        self.repo.path()
    }

    /// The command with `--repo` set, ready for arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--repo").arg(self.repo.path());
        cmd.env_remove("IPNIX_REPO");
        // No test may reach the public Software Heritage archive: SWH is off
        // unless a test passes --swh-url (its loopback server).
        cmd.env("IPNIX_NO_SWH", "1");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ipnix runs")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        output_with_stdin(cmd, stdin)
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs and requires success; returns stdout bytes.
    pub fn ok_bytes(&self, args: &[&str]) -> Vec<u8> {
        let out = self.run(args);
        assert_success(&out, args);
        out.stdout
    }

    /// Runs and requires a clean failure: non-zero exit, no panic, a message
    /// on stderr. Returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_clean_failure(&out, args)
    }
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "ipnix {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn assert_clean_failure(out: &Output, args: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "ipnix {args:?} should have failed; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "ipnix {args:?} panicked: {stderr}"
    );
    assert!(
        !stderr.trim().is_empty(),
        "ipnix {args:?} failed without saying why"
    );
    stderr
}

/// A running `ipnix daemon` on a test repo: loopback only, no mDNS, HTTP on an
/// ephemeral port. Stopped with SIGTERM on drop.
pub struct Daemon {
    child: std::process::Child,
    /// The gateway / binary cache / metrics URL (`http://127.0.0.1:PORT`);
    /// with the default loopback `--http` also the control API's.
    pub url: String,
    /// The control API URL, from the repo's `api` file.
    pub api_url: String,
    /// Lines the daemon printed on stdout up to "daemon is ready".
    pub banner: Vec<String>,
}

impl Daemon {
    /// Starts a daemon on `ipnix`'s repo with extra flags and waits until it is ready.
    pub fn start(ipnix: &Ipnix, extra: &[&str]) -> Daemon {
        Self::start_on(ipnix, "127.0.0.1:0", extra)
    }

    /// [`Daemon::start`] with `--http http` (e.g. `0.0.0.0:0`, which moves the
    /// control API to a loopback listener of its own).
    pub fn start_on(ipnix: &Ipnix, http: &str, extra: &[&str]) -> Daemon {
        use std::io::BufRead;
        let mut cmd = ipnix.command();
        cmd.args([
            "daemon",
            "--http",
            http,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("ipnix daemon starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::sync_channel::<Option<String>>(64);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(Some(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let mut banner = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    let ready = line.contains("daemon is ready");
                    banner.push(line);
                    if ready {
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    panic!("ipnix daemon did not become ready; it printed: {banner:?}");
                }
            }
        }
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || while let Ok(Some(_)) = rx.recv() {});
        let api_url = std::fs::read_to_string(ipnix.repo_path().join("api"))
            .expect("daemon wrote REPO/api")
            .trim()
            .to_string();
        // "HTTP (gateway, ...) on http://ADDR"; an unspecified address is
        // reached through loopback.
        let url = banner
            .iter()
            .find(|l| l.starts_with("HTTP ("))
            .and_then(|l| l.rsplit_once(" on "))
            .map(|(_, url)| {
                url.trim()
                    .replace("http://0.0.0.0:", "http://127.0.0.1:")
                    .replace("http://[::]:", "http://[::1]:")
            })
            .unwrap_or_else(|| api_url.clone());
        Daemon {
            child,
            url,
            api_url,
            banner,
        }
    }

    /// The control API's bearer token (`REPO/api.token`).
    pub fn api_token(ipnix: &Ipnix) -> String {
        std::fs::read_to_string(ipnix.repo_path().join("api.token"))
            .expect("daemon wrote REPO/api.token")
            .trim()
            .to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the daemon with SIGKILL (no clean shutdown: a crash) and waits.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// Runs `cmd` with `stdin` fed to it from another thread (so a command that
/// writes before it has read everything cannot deadlock), and collects its
/// output.
pub fn output_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut pipe = child.stdin.take().expect("stdin piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A command that stops reading early closes the pipe; that is its business.
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("the command finishes");
    writer.join().expect("stdin writer");
    out
}
