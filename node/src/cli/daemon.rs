//! `ipnix daemon`: turns the flags into a daemon configuration, takes the
//! repo (its daemon lock, then its store, waiting a bounded time for a CLI
//! command that holds either), runs the daemon on a tokio runtime, and runs
//! forwarded CLI commands inside it.

use super::{error_line, execute, Ctx, Io};
use crate::{Command, DaemonArgs, DagCommand, NixCommand, PinCommand, SourcesCommand};
use anyhow::Context as _;
use ipnix_node::daemon::{self, DaemonConfig, DaemonError, Ready};
use ipnix_node::http::api::{CommandIo, CommandRequest, CommandRunner};
use ipnix_node::net::{read_swarm_key, Multiaddr, NetConfig, NodeHandle};
use ipnix_node::repo::{DaemonLock, Repo, RepoError};
use ipnix_store::{Store, StoreError};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a starting daemon waits for the repo: for a CLI command that
/// holds the store, or another daemon that is stopping.
const REPO_WAIT: Duration = Duration::from_secs(30);
/// CLI commands look at the daemon lock for microseconds; a lock held longer
/// than this is worth saying so.
const QUIET_WAIT: Duration = Duration::from_millis(500);

pub fn run(repo: Repo, args: DaemonArgs) -> anyhow::Result<()> {
    let settings = ipnix_node::config::Config::load(repo.root())?;
    let args = with_settings(args, settings);
    let mut net = NetConfig::new(repo.identity()?);
    net.listen = args
        .listen
        .iter()
        .map(|a| parse_multiaddr(a, "--listen"))
        .collect::<anyhow::Result<_>>()?;
    net.bootstrap = args
        .bootstrap
        .iter()
        .map(|a| parse_multiaddr(a, "--bootstrap"))
        .collect::<anyhow::Result<_>>()?;
    net.mdns = !args.no_mdns;
    net.public_dht = args.public;
    net.share_paths = args.share_paths;
    if let Some(path) = &args.swarm_key {
        let key = read_swarm_key(path)?;
        // The transport logs this through tracing, which the binary does not
        // print; a private network without QUIC must not be a surprise.
        eprintln!(
            "ipnix: private network (swarm key {}): TCP only, QUIC is off because libp2p pnet cannot protect it",
            key.fingerprint()
        );
        net.swarm_key = Some(key);
    }
    let http_text = args.http.clone().unwrap_or_default();
    let http = http_text
        .parse()
        .map_err(|e| anyhow::anyhow!("--http {http_text}: {e} (expected IP:PORT)"))?;
    let api = match &args.api {
        Some(text) => {
            let addr: SocketAddr = text
                .parse()
                .map_err(|e| anyhow::anyhow!("--api {text}: {e} (expected IP:PORT on loopback)"))?;
            if !addr.ip().is_loopback() {
                return Err(DaemonError::ApiNotLoopback(addr).into());
            }
            Some(addr)
        }
        None => None,
    };
    let sign_key = match &args.sign_key {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --sign-key {}", path.display()))?;
            let key = ipnix_bridge::narinfo::SecretKey::parse(text.trim()).with_context(|| {
                format!(
                    "--sign-key {} is not a Nix secret key (name:base64)",
                    path.display()
                )
            })?;
            Some(key)
        }
        None => None,
    };
    let rpc = rpc_listen(&args)?;
    let trusted_keys = trusted_public_keys(&args)?;
    if sign_key.is_none() && !trusted_keys.is_empty() {
        eprintln!("ipnix: --trusted-public-keys only matters with --sign-key; nothing is signed");
    }
    // Held until this function returns: CLI commands see a daemon is alive
    // (starting, serving or stopping) and wait for its API.
    let daemon_lock = lock_daemon(&repo)?;
    let store = Arc::new(open_store(&repo)?);
    let config = DaemonConfig {
        repo: repo.clone(),
        net,
        http,
        api,
        sign_key,
        trusted_keys,
        peer_timeout: std::time::Duration::from_millis(args.peer_timeout.unwrap_or_default()),
        fetch_timeout: std::time::Duration::from_secs(args.fetch_timeout.unwrap_or(1).max(1)),
        rpc,
        swh: super::swh::config_at(&std::env::current_dir()?, &args.swh)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ipnix")
        .build()
        .context("cannot start the async runtime")?;
    let handle = runtime.handle().clone();
    let runner_repo = repo.clone();
    let runner_store = store.clone();
    let fetch_timeout = config.fetch_timeout;
    let make_runner = move |node: NodeHandle| -> Arc<dyn CommandRunner> {
        Arc::new(DaemonRunner {
            repo: runner_repo,
            store: runner_store,
            node,
            runtime: handle,
            fetch_timeout,
        })
    };
    let shutdown = {
        let _entered = runtime.enter();
        daemon::shutdown_signal().context("cannot install the SIGINT/SIGTERM handlers")?
    };
    runtime.block_on(daemon::run(
        config,
        store,
        make_runner,
        print_ready,
        shutdown,
    ))?;
    // Commands still running inside finish before the store and the lock go.
    drop(runtime);
    drop(daemon_lock);
    println!("daemon stopped");
    Ok(())
}

/// The flags, with the repo's settings (`REPO/config`) wherever a flag was
/// not given: a given flag always wins. Switches can only move away from the
/// setting (`--no-mdns` turns mDNS off, `--public` the public DHT on).
fn with_settings(mut args: DaemonArgs, settings: ipnix_node::config::Config) -> DaemonArgs {
    if args.listen.is_empty() {
        args.listen = settings.addresses.swarm;
    }
    args.http.get_or_insert(settings.addresses.http);
    if args.api.is_none() {
        args.api = settings.addresses.api;
    }
    if args.bootstrap.is_empty() {
        args.bootstrap = settings.bootstrap;
    }
    args.no_mdns |= !settings.discovery.mdns.enabled;
    args.public |= settings.routing.public;
    if args.swarm_key.is_none() {
        args.swarm_key = settings.swarm.key_file;
    }
    if args.sign_key.is_none() {
        args.sign_key = settings.nix.sign_key_file;
    }
    if args.trusted_public_keys.is_empty() && args.trusted_public_keys_file.is_none() {
        args.trusted_public_keys = settings.nix.trusted_public_keys;
    }
    args.share_paths |= settings.nix.share_paths;
    args.peer_timeout.get_or_insert(settings.timeouts.peer_ms);
    args.fetch_timeout
        .get_or_insert(settings.timeouts.fetch_secs);
    args
}

/// Takes the repo's daemon lock. Held by a daemon that serves its API: fails
/// at once, naming it. Held otherwise (a daemon stopping, or a CLI command
/// looking): waits, at most [`REPO_WAIT`].
fn lock_daemon(repo: &Repo) -> anyhow::Result<DaemonLock> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let pid = match repo.try_lock_daemon() {
            Ok(lock) => return Ok(lock),
            Err(RepoError::DaemonRunning { pid, .. }) => pid,
            Err(e) => return Err(e.into()),
        };
        let pid_text = pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
        if let Some(url) = repo.read_api().filter(|url| api_answers(url)) {
            anyhow::bail!(
                "an ipnix daemon{pid_text} already runs on repo {} (control API at {url})",
                repo.root().display()
            );
        }
        let waited = started.elapsed();
        if waited >= REPO_WAIT {
            anyhow::bail!(
                "another ipnix daemon{pid_text} kept repo {} for {} s without serving it",
                repo.root().display(),
                REPO_WAIT.as_secs()
            );
        }
        if !said && waited >= QUIET_WAIT {
            eprintln!(
                "ipnix: another ipnix daemon{pid_text} holds repo {}; waiting up to {} s for it to stop",
                repo.root().display(),
                REPO_WAIT.as_secs()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something accepts connections at a control API URL.
fn api_answers(url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Some(authority) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = authority.trim_end_matches('/');
    let Ok(addrs) = authority.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
}

/// Opens the repo's store; while a CLI command holds it, waits (at most
/// [`REPO_WAIT`], saying so once) instead of failing.
fn open_store(repo: &Repo) -> anyhow::Result<Store> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match Store::open(&repo.store_dir()) {
            Ok(store) => return Ok(store),
            Err(StoreError::Locked { .. }) if started.elapsed() < REPO_WAIT => {
                if !said {
                    eprintln!(
                        "ipnix: repo {} is in use by another ipnix command; waiting up to {} s for it to finish",
                        repo.root().display(),
                        REPO_WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot open the store of repo {}",
                    repo.root().display()
                )))
            }
        }
    }
}

/// `--trusted-public-keys` and the keys in `--trusted-public-keys-file`.
fn trusted_public_keys(args: &DaemonArgs) -> anyhow::Result<Vec<ipnix_bridge::narinfo::PublicKey>> {
    use ipnix_bridge::narinfo::parse_public_keys;
    let mut keys = parse_public_keys(&args.trusted_public_keys.join(" "))
        .context("--trusted-public-keys takes Nix public keys (name:base64)")?;
    if let Some(path) = &args.trusted_public_keys_file {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read --trusted-public-keys-file {}", path.display())
        })?;
        let more = parse_public_keys(&text).with_context(|| {
            format!(
                "--trusted-public-keys-file {} holds something that is not a Nix public key (name:base64)",
                path.display()
            )
        })?;
        for key in more {
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// `--rpc`: an address (required to bind), `off`, or Kubo's port by default
/// (skipped with a warning when taken).
fn rpc_listen(args: &DaemonArgs) -> anyhow::Result<Option<ipnix_node::daemon::RpcListen>> {
    use ipnix_node::http::rpc::{DEFAULT_ADDR, DEFAULT_MAX_BODY};
    let max_body = args.rpc_max_body.unwrap_or(DEFAULT_MAX_BODY);
    let (text, required) = match args.rpc.as_deref() {
        Some("off") => return Ok(None),
        Some(text) => (text, true),
        None => (DEFAULT_ADDR, false),
    };
    let addr: SocketAddr = text
        .parse()
        .map_err(|e| anyhow::anyhow!("--rpc {text}: {e} (expected IP:PORT on loopback, or off)"))?;
    if !addr.ip().is_loopback() {
        return Err(DaemonError::RpcNotLoopback(addr).into());
    }
    Ok(Some(ipnix_node::daemon::RpcListen {
        addr,
        required,
        max_body,
    }))
}

fn parse_multiaddr(text: &str, flag: &str) -> anyhow::Result<Multiaddr> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("{flag} {text:?} is not a multiaddr: {e}"))
}

fn print_ready(ready: &Ready) {
    println!("peer identity: {}", ready.peer_id);
    for addr in &ready.listen {
        println!("swarm listening on {addr}");
    }
    if ready.api == ready.http {
        println!(
            "HTTP (API, gateway, Nix binary cache, metrics) on http://{}",
            ready.http
        );
    } else {
        println!(
            "HTTP (gateway, Nix binary cache, metrics) on http://{}",
            ready.http
        );
        println!("control API (loopback only) on http://{}", ready.api);
    }
    if let Some(rpc) = ready.rpc {
        println!("Kubo RPC API (loopback only) on http://{rpc}/api/v0");
    }
    println!("daemon is ready");
    // Scripts wait for this line; make sure it leaves the process now.
    let _ = std::io::stdout().flush();
}

/// Runs forwarded commands with the store and the node of this daemon.
struct DaemonRunner {
    repo: Repo,
    store: Arc<Store>,
    node: NodeHandle,
    runtime: tokio::runtime::Handle,
    fetch_timeout: std::time::Duration,
}

impl CommandRunner for DaemonRunner {
    fn run(&self, request: CommandRequest, io: CommandIo) -> i32 {
        let CommandIo {
            mut stdin,
            mut stdout,
            mut stderr,
        } = io;
        let argv = std::iter::once("ipnix".to_string()).chain(request.args);
        let cli = match super::examples::parse(argv) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = write!(stderr, "{}", e.render());
                return e.exit_code();
            }
        };
        let ctx = Ctx {
            repo: self.repo.clone(),
            store: self.store.clone(),
            node: Some(self.node.clone()),
            runtime: Some(self.runtime.clone()),
            json: cli.json,
            progress: false,
            cwd: request.cwd,
            fetch_timeout: self.fetch_timeout,
        };
        let mut io = Io {
            stdin: &mut stdin,
            stdout: &mut stdout,
        };
        let announces = matches!(
            cli.command,
            Command::Add(_)
                | Command::Pin(PinCommand::Add { .. })
                | Command::Dag(DagCommand::Import { .. })
                | Command::Nix(NixCommand::Import { .. })
        );
        // A sources pin that failed some entries still pinned the others.
        let pins_sources = matches!(
            cli.command,
            Command::Sources(SourcesCommand::Pin { .. } | SourcesCommand::Add { .. })
        );
        let result = execute(&ctx, cli.command, &mut io);
        if (announces && result.is_ok()) || pins_sources {
            // Kubo announces what it adds; so do we, rather than at the next reprovide.
            self.node.reprovide();
        }
        let flushed = stdout.flush();
        match result.and(flushed.map_err(anyhow::Error::from)) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(stderr, "error: {}", error_line(&e));
                1
            }
        }
    }
}
