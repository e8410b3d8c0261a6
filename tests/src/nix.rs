//! Real Nix for the bridge tests: a per-test lab (own temp dir, `TMPDIR` and
//! `XDG_CACHE_HOME`, so Nix's narinfo disk cache never leaks between tests),
//! tiny closures built without nixpkgs (builder `/bin/sh`, a random salt so
//! parallel tests never share or delete each other's paths), signing keys,
//! substitution and copies with explicit `--option substituters` (never the
//! default cache), `git write-tree` for SWHID cross-checks, the `ipnix daemon`
//! on loopback, and a tiny HTTP/1.1 client that tells a complete body from a
//! truncated one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why Nix cannot be used here, or `None` when it can.
pub fn nix_missing() -> Option<String> {
    for tool in ["nix-store", "nix-build", "nix"] {
        match Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) if status.success() => {}
            Ok(status) => return Some(format!("`{tool} --version` failed ({status})")),
            Err(e) => {
                return Some(format!(
                    "{tool} is not installed ({e}); run ../shared/peers/setup-nix.sh"
                ))
            }
        }
    }
    let store = Path::new("/nix/store");
    if !store.is_dir() {
        return Some("/nix/store does not exist".into());
    }
    None
}

/// Prints `SKIP: <reason>` on stderr.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP: {test}: {reason}");
}

/// A Nix binary-cache signing key pair.
#[derive(Debug, Clone)]
pub struct NixKey {
    pub name: String,
    pub secret_file: PathBuf,
    /// `name:base64`, as `trusted-public-keys` wants it.
    pub public: String,
}

/// A small closure: `top` references `a`, `dep` (a text file), `big` (a
/// directory with a file over 1 MiB) and itself; it holds a symlink, an
/// executable, an empty file and nested directories.
#[derive(Debug, Clone)]
pub struct Closure {
    pub top: String,
    pub a: String,
    pub dep: String,
    pub big: String,
    /// Every path of the closure, dependencies first.
    pub all: Vec<String>,
}

const TINY_NIX: &str = r#"{ salt }:
let
  dep = builtins.toFile "dep-${salt}.txt" "I am a dependency ${salt}\n";
  a = derivation {
    name = "tiny-a-${salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo hello from a ${salt} > $out" ];
  };
  big = derivation {
    name = "tiny-big-${salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out/data
      yes "big file line ${salt}" | head -c 1500000 > $out/data/big.bin
      echo small > $out/data/small.txt
    '' ];
  };
  top = derivation {
    name = "tiny-top-${salt}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    PATH = "/usr/bin:/bin";
    args = [ "-c" ''
      mkdir -p $out/sub/deeper $out/bin
      echo ${a} > $out/ref-a
      cat ${dep} > $out/copy-of-dep
      echo ${dep} > $out/sub/ref-dep
      echo ${big} > $out/sub/deeper/ref-big
      printf '#!/bin/sh\necho hi\n' > $out/bin/run
      chmod +x $out/bin/run
      echo $out > $out/self
      ln -s ${a} $out/link-to-a
      ln -s ref-a $out/sub/relative-link
      touch $out/empty
    '' ];
  };
in { inherit a big dep top; }
"#;

/// One test's Nix environment. Dropping it removes its files (not the paths
/// it built in /nix/store; `delete` does that).
pub struct NixLab {
    pub dir: tempfile::TempDir,
}

impl NixLab {
    /// `nix-prefetch-url --unpack file://PATH`: the recursive (fetchzip)
    /// hash Nix itself computes for an archive, SHA-256.
    pub fn prefetch_unpack(&self, path: &Path) -> ipnix_bridge::NixHash {
        let url = format!("file://{}", path.display());
        let out = self.ok("nix-prefetch-url", &["--unpack", "--type", "sha256", &url]);
        ipnix_bridge::NixHash::parse(&format!("sha256:{}", out.lines().last().expect("a hash")))
            .expect("nix-prefetch-url prints a hash")
    }

    /// `nix-store --print-fixed-path`: the fixed-output path Nix gives
    /// `name` with this content hash.
    pub fn print_fixed_path(
        &self,
        recursive: bool,
        hash: &ipnix_bridge::NixHash,
        name: &str,
    ) -> String {
        let digest = hash.nix32_digest();
        let algo = hash.algo().to_string();
        let mut args = vec!["--print-fixed-path"];
        if recursive {
            args.push("--recursive");
        }
        args.extend([algo.as_str(), digest.as_str(), name]);
        self.ok("nix-store", &args)
    }

    /// A lab, or `None` after printing `SKIP:` when Nix is missing.
    pub fn new(test: &str) -> Option<NixLab> {
        if let Some(reason) = nix_missing() {
            skip(test, &reason);
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["tmp", "xdg-cache"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        Some(NixLab { dir })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A Nix command in this lab's environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        // No substituter unless a command names one with `--option`, which
        // wins over NIX_CONFIG: whatever nix.conf says, never a public cache.
        cmd.env("NIX_CONFIG", "substituters =\ntrusted-substituters =")
            .env("TMPDIR", self.path("tmp"))
            .env("XDG_CACHE_HOME", self.path("xdg-cache"))
            .env_remove("NIX_REMOTE")
            .stdin(Stdio::null());
        cmd
    }

    /// Forgets what Nix cached about binary caches (narinfo lookups, 404s).
    pub fn forget_cache_lookups(&self) {
        let cache = self.path("xdg-cache");
        let _ = std::fs::remove_dir_all(&cache);
        std::fs::create_dir_all(&cache).expect("mkdir");
    }

    /// Runs and returns the output, whatever the status.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    /// Runs, requires success, returns trimmed stdout.
    pub fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Builds a fresh closure (unique to this call) without nixpkgs.
    pub fn build_closure(&self) -> Closure {
        let salt = format!("t{:016x}", rand::random::<u64>());
        let file = self.path("tiny.nix");
        std::fs::write(&file, TINY_NIX).expect("write tiny.nix");
        let file = file.to_str().expect("utf-8 temp path");
        let build = |attr: &str| {
            self.ok(
                "nix-build",
                &[
                    file,
                    "-A",
                    attr,
                    "--argstr",
                    "salt",
                    &salt,
                    "--no-out-link",
                    "--option",
                    "substituters",
                    "",
                ],
            )
            .lines()
            .last()
            .expect("nix-build prints the out path")
            .to_string()
        };
        let top = build("top");
        let a = build("a");
        let big = build("big");
        let dep = self
            .ok(
                "nix-instantiate",
                &["--eval", "--argstr", "salt", &salt, "-A", "dep", file],
            )
            .trim_matches('"')
            .to_string();
        let all = vec![dep.clone(), a.clone(), big.clone(), top.clone()];
        Closure {
            top,
            a,
            dep,
            big,
            all,
        }
    }

    /// A fresh signing key named `name`.
    pub fn gen_key(&self, name: &str) -> NixKey {
        let secret_file = self.path(&format!("{name}.secret"));
        let public_file = self.path(&format!("{name}.public"));
        self.ok(
            "nix-store",
            &[
                "--generate-binary-cache-key",
                name,
                secret_file.to_str().expect("utf-8"),
                public_file.to_str().expect("utf-8"),
            ],
        );
        let public = std::fs::read_to_string(&public_file)
            .expect("public key")
            .trim()
            .to_string();
        NixKey {
            name: name.to_string(),
            secret_file,
            public,
        }
    }

    /// Signs paths (and their closures) in the local Nix store.
    pub fn sign(&self, key: &NixKey, paths: &[&str]) {
        let mut args = vec![
            "store",
            "sign",
            "-r",
            "--key-file",
            key.secret_file.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(paths);
        self.ok("nix", &args);
    }

    /// `nix path-info --json` of paths (an array).
    pub fn path_info(&self, paths: &[&str]) -> serde_json::Value {
        let mut args = vec!["path-info", "--json"];
        args.extend_from_slice(paths);
        serde_json::from_str(&self.ok("nix", &args)).expect("path-info json")
    }

    /// `nix-store --dump PATH`.
    pub fn dump(&self, path: &str) -> Vec<u8> {
        let out = self.run("nix-store", &["--dump", path]);
        assert!(
            out.status.success(),
            "nix-store --dump {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    pub fn is_valid(&self, path: &str) -> bool {
        self.run("nix-store", &["--check-validity", path])
            .status
            .success()
    }

    /// Deletes paths from /nix/store (all at once, so referrers go first).
    pub fn delete(&self, paths: &[String]) {
        let mut args = vec!["--delete"];
        args.extend(paths.iter().map(String::as_str));
        self.ok("nix-store", &args);
        for path in paths {
            assert!(
                !self.is_valid(path),
                "{path} is still valid after nix-store --delete"
            );
        }
    }

    /// `nix-store --realise PATH` substituting only from `substituter`, trusting only `keys`.
    pub fn realise(&self, path: &str, substituter: &str, keys: &[&str]) -> Output {
        self.forget_cache_lookups();
        let keys = keys.join(" ");
        self.run(
            "nix-store",
            &[
                "--realise",
                path,
                "--option",
                "substituters",
                substituter,
                "--option",
                "trusted-public-keys",
                &keys,
            ],
        )
    }

    /// `nix copy --from URL --to STORE PATH`, trusting only `keys`.
    pub fn copy_from(&self, url: &str, to: &Path, path: &str, keys: &[&str]) -> Output {
        self.forget_cache_lookups();
        let keys = keys.join(" ");
        self.run(
            "nix",
            &[
                "copy",
                "--from",
                url,
                "--to",
                to.to_str().expect("utf-8"),
                path,
                "--option",
                "substituters",
                "",
                "--option",
                "trusted-public-keys",
                &keys,
            ],
        )
    }

    /// `nix store verify -r PATH` in `store` (None: /nix/store), trusting only `keys`.
    pub fn verify(&self, store: Option<&Path>, path: &str, keys: &[&str]) -> Output {
        let keys = keys.join(" ");
        let mut args = vec![
            "store",
            "verify",
            "-r",
            path,
            "--option",
            "trusted-public-keys",
            &keys,
        ];
        if let Some(store) = store {
            args.push("--store");
            args.push(store.to_str().expect("utf-8"));
        }
        self.run("nix", &args)
    }

    /// Writes a signed file:// binary cache of `path`'s closure.
    pub fn copy_to_file_cache(&self, cache: &Path, compression: &str, key: &NixKey, path: &str) {
        let url = format!(
            "file://{}?compression={compression}&secret-key={}",
            cache.display(),
            key.secret_file.display()
        );
        self.ok(
            "nix",
            &["copy", "--to", &url, path, "--option", "substituters", ""],
        );
    }
}

/// Lines of a failed command's stderr that say why.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `git write-tree` of a directory (a scratch git dir, nothing in `dir` changes).
pub fn git_write_tree(dir: &Path) -> String {
    let git_dir = tempfile::tempdir().expect("tempdir");
    let init = Command::new("git")
        .args(["init", "-q", "--bare"])
        .arg(git_dir.path())
        .output()
        .expect("git runs");
    assert!(
        init.status.success(),
        "git init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("--git-dir")
            .arg(git_dir.path())
            .arg("--work-tree")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", git_dir.path())
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    };
    git(&["config", "core.fileMode", "true"]);
    git(&["config", "core.symlinks", "true"]);
    git(&["add", "-A", "-f", "."]);
    git(&["write-tree"])
}

/// `git hash-object --stdin` of some bytes (a blob id, from the real git).
pub fn git_blob_id(data: &[u8]) -> String {
    let mut cmd = Command::new("git");
    cmd.args(["hash-object", "--stdin"]);
    let out = pipe_through(cmd, data.to_vec());
    assert!(
        out.status.success(),
        "git hash-object: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// A running `ipnix daemon` on loopback; SIGTERM on drop.
pub struct Daemon {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    log: PathBuf,
}

impl Daemon {
    /// Starts `ipnix --repo REPO daemon --http 127.0.0.1:0 --listen
    /// /ip4/127.0.0.1/tcp/0 --no-mdns EXTRA...` and waits for REPO/api.
    pub fn start(bin: &Path, repo: &Path, extra: &[&str]) -> Daemon {
        let log = repo.join("daemon.log");
        let log_file = std::fs::File::create(&log).expect("daemon log");
        let child = Command::new(bin)
            .arg("--repo")
            .arg(repo)
            .args([
                "daemon",
                "--http",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
            ])
            .args(extra)
            .env_remove("IPNIX_REPO")
            // Never the public Software Heritage archive in a test.
            .env("IPNIX_NO_SWH", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("ipnix daemon starts");
        let mut daemon = Daemon {
            child,
            url: String::new(),
            log,
        };
        let api = repo.join("api");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&api) {
                let text = text.trim();
                if text.starts_with("http://") {
                    daemon.url = text.trim_end_matches('/').to_string();
                    break;
                }
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "ipnix daemon exited ({status}) before writing {}:\n{}",
                    api.display(),
                    daemon.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ipnix daemon did not write {} in 60 s:\n{}",
                api.display(),
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// What the daemon printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (at most 30 s, then SIGKILL).
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A response read to the end of the connection.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body has as many bytes as Content-Length said (and the connection
    /// closed cleanly); false for a truncated body.
    pub complete: bool,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request (`Connection: close`) to a loopback URL; the body is
/// read until the server closes, so a cut-short response shows as
/// `complete == false` instead of an error.
pub fn http_request(method: &str, url: &str) -> HttpResponse {
    let rest = url.strip_prefix("http://").expect("http:// URL");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream =
        TcpStream::connect(authority).unwrap_or_else(|e| panic!("connect {authority}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut raw = Vec::new();
    let clean_close = stream.read_to_end(&mut raw).is_ok();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a header block");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let mut complete = clean_close;
    if chunked {
        let (decoded, whole) = dechunk(&body);
        body = decoded;
        complete &= whole;
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if method == "HEAD" {
            body.clear();
        } else {
            complete &= body.len() == len;
        }
    }
    HttpResponse {
        status,
        headers,
        body,
        complete,
    }
}

/// Decodes a chunked body; `false` when the terminating chunk never came.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (out, false);
        };
        raw = &raw[line_end + 2..];
        if size == 0 {
            return (out, true);
        }
        if raw.len() < size + 2 {
            out.extend_from_slice(&raw[..raw.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// `python3 -m http.server` on 127.0.0.1 (free port) serving `dir`; killed on drop.
pub struct StaticServer {
    child: Child,
    pub url: String,
}

impl StaticServer {
    /// `None` (after `SKIP:`) when python3 is missing.
    pub fn start(test: &str, dir: &Path) -> Option<StaticServer> {
        let log = dir.with_extension("http.log");
        let child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                skip(test, &format!("python3 is not available: {e}"));
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(port) = text
                .lines()
                .find_map(|l| l.strip_prefix("Serving HTTP on 127.0.0.1 port "))
                .and_then(|rest| rest.split(' ').next())
            {
                return Some(StaticServer {
                    child,
                    url: format!("http://127.0.0.1:{port}"),
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("python3 http.server exited ({status}): {text}");
            }
            assert!(
                Instant::now() < deadline,
                "python3 http.server did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a whole file or panics with its path.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Writes bytes to a child's stdin from a thread and collects its output.
pub fn pipe_through(mut cmd: Command, input: Vec<u8>) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("piped");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    out
}
