//! Command dispatch: decides where a command runs (this process or the
//! daemon, waiting for a daemon that is starting rather than running beside
//! it), builds the context commands run in, and turns errors into one clear
//! line on stderr and a non-zero exit code.

mod config;
mod daemon;
mod docs;
mod examples;
mod files;
mod network;
mod nix;
mod progress;
mod recipe;
mod remote;
mod sources;
mod store;
mod swh;

use crate::{Cli, Command};
use anyhow::Context as _;
use ipnix_node::repo::Repo;
use ipnix_store::Store;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a command runs against.
pub struct Ctx {
    pub repo: Repo,
    pub store: Arc<Store>,
    /// The libp2p node, when the command runs inside the daemon.
    pub node: Option<ipnix_node::net::NodeHandle>,
    /// The daemon's runtime, for commands that talk to the node.
    pub runtime: Option<tokio::runtime::Handle>,
    pub json: bool,
    /// Progress bars go to stderr (only in-process, when stderr is a terminal).
    pub progress: bool,
    pub cwd: PathBuf,
    /// How long `cat`, `get` and friends wait for a block from peers
    /// (the daemon's `--fetch-timeout`).
    pub fetch_timeout: std::time::Duration,
}

impl Ctx {
    /// A path argument, relative to the caller's working directory.
    pub fn path(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.cwd.join(path)
        }
    }

    /// Blocks as commands read them: the local store, and inside the daemon
    /// also the network, so `cat` and `get` fetch what is missing.
    pub fn blocks(&self) -> Box<dyn ipnix_store::BlockRead + Send + Sync + '_> {
        match (&self.node, &self.runtime) {
            (Some(node), Some(runtime)) => {
                // NetworkBlocks binds to the runtime it is created in.
                let _entered = runtime.enter();
                Box::new(ipnix_node::fetch::NetworkBlocks::new(
                    self.store.clone(),
                    Some(node.clone()),
                    self.fetch_timeout,
                ))
            }
            _ => Box::new(self.store.clone()),
        }
    }

    /// The node, or an error saying the command needs a running daemon.
    pub fn node(&self) -> anyhow::Result<(&ipnix_node::net::NodeHandle, &tokio::runtime::Handle)> {
        match (&self.node, &self.runtime) {
            (Some(node), Some(runtime)) => Ok((node, runtime)),
            _ => anyhow::bail!(
                "this command needs the network: start `ipnix daemon` on repo {}",
                self.repo.root().display()
            ),
        }
    }
}

/// Streams a command reads and writes.
pub struct Io<'a> {
    pub stdin: &'a mut dyn Read,
    pub stdout: &'a mut dyn Write,
}

/// Entry point of the binary; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let cli = match examples::parse(&args) {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout and usage errors to stderr itself.
            let _ = e.print();
            return e.exit_code();
        }
    };
    init_logging(matches!(cli.command, Command::Daemon(_)));
    match run_cli(cli, &args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            1
        }
    }
}

/// Log lines go to stderr, filtered by `RUST_LOG`; by default the daemon
/// says what its own crates do at info level, other commands only warn.
fn init_logging(daemon: bool) {
    let default = if daemon {
        "warn,ipnix_node=info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// One line: the error and its causes.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn run_cli(cli: Cli, args: &[OsString]) -> anyhow::Result<i32> {
    let root = Repo::locate(cli.repo.as_deref())?;
    match cli.command {
        Command::Init => {
            let repo = Repo::init(&root)?;
            let peer = repo.identity()?.public().to_peer_id();
            drop(Store::open(&repo.store_dir())?);
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"repo": root, "peer_id": peer.to_string()})
                );
            } else {
                println!(
                    "initialised ipnix repo at {}\npeer identity: {peer}",
                    root.display()
                );
            }
            return Ok(0);
        }
        Command::Daemon(args) => {
            let repo = Repo::open_or_init(&root)?;
            daemon::run(repo, args)?;
            return Ok(0);
        }
        // These read no store and need no daemon: they run here, always.
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout().lock())?;
            return Ok(0);
        }
        Command::Man { output } => {
            docs::man(output.as_deref(), &mut std::io::stdout().lock())?;
            return Ok(0);
        }
        Command::Config(command) => {
            config::run(&root, command, cli.json, &mut std::io::stdout().lock())?;
            return Ok(0);
        }
        _ => {}
    }
    let repo = Repo::open_or_init(&root)?;
    let forwarded: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let store = match where_to_run(&repo, forwarded, &cli.command)? {
        Place::Ran(code) => return Ok(code),
        Place::Offline(store) => store,
        Place::OfflineWithoutStore => {
            // `id` only reads the identity: no store lock, so it never gets
            // in the way of a daemon starting beside it.
            let peer = repo.identity()?.public().to_peer_id();
            let stdout = std::io::stdout();
            let mut stdout = stdout.lock();
            network::print_id(&mut stdout, cli.json, &peer, &[])?;
            stdout.flush().context("cannot write to stdout")?;
            return Ok(0);
        }
    };
    let ctx = Ctx {
        repo,
        store,
        node: None,
        runtime: None,
        json: cli.json,
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        cwd: std::env::current_dir().context("the current directory is unreadable")?,
        // Out of the daemon nothing is fetched; the value is never used.
        fetch_timeout: std::time::Duration::ZERO,
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut stdin = stdin.lock();
    let mut stdout = std::io::BufWriter::new(stdout.lock());
    let mut io = Io {
        stdin: &mut stdin,
        stdout: &mut stdout,
    };
    execute(&ctx, cli.command, &mut io)?;
    stdout.flush().context("cannot write to stdout")?;
    Ok(0)
}

/// How long a command waits for a daemon that is starting (or stopping) on
/// its repo before it gives up. The daemon itself may wait 30 s for the store.
const DAEMON_WAIT: Duration = Duration::from_secs(60);
/// A wait shorter than this is not worth a line on stderr.
const QUIET_WAIT: Duration = Duration::from_secs(2);

/// Where a command runs.
enum Place {
    /// In the daemon, which returned this exit code.
    Ran(i32),
    /// In this process, on the store it opened.
    Offline(Arc<Store>),
    /// In this process, needing no store (`id`).
    OfflineWithoutStore,
}

/// Runs the command in the repo's daemon if one is alive, waiting for one
/// that is starting to open its control API (instead of running beside it);
/// otherwise opens the store for an offline run.
fn where_to_run(repo: &Repo, forwarded: Vec<String>, command: &Command) -> anyhow::Result<Place> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let api = repo.read_api();
        if let Some(url) = &api {
            if let Some(code) = remote::run(repo, url, forwarded.clone(), command)? {
                return Ok(Place::Ran(code));
            }
        }
        if let Some(daemon) = repo.live_daemon() {
            // Starting (no API yet) or stopping: the store is the daemon's.
            let waited = started.elapsed();
            if waited >= DAEMON_WAIT {
                anyhow::bail!(
                    "{daemon} on repo {} has not opened its control API in {} s; stop it or try again",
                    repo.root().display(),
                    DAEMON_WAIT.as_secs()
                );
            }
            if !said && waited >= QUIET_WAIT {
                eprintln!(
                    "ipnix: waiting for {daemon} on repo {} to open its control API",
                    repo.root().display()
                );
                said = true;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        if api.is_some() {
            // Nobody answered and no daemon is alive: one died without cleaning up.
            repo.remove_api();
            repo.remove_api_token();
        }
        if matches!(command, Command::Id) {
            return Ok(Place::OfflineWithoutStore);
        }
        match Store::open(&repo.store_dir()) {
            Ok(store) => return Ok(Place::Offline(Arc::new(store))),
            // A daemon started between the look and the open: use it.
            Err(ipnix_store::StoreError::Locked { .. }) if repo.live_daemon().is_some() => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot open the store of repo {}",
                    repo.root().display()
                )))
            }
        }
    }
}

/// Runs one parsed command; shared by the in-process path and the daemon.
pub fn execute(ctx: &Ctx, command: Command, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        Command::Init | Command::Daemon(_) => {
            anyhow::bail!("`init` and `daemon` cannot run inside a running daemon")
        }
        Command::Completions { shell } => docs::completions(shell, io.stdout),
        Command::Man { output } => docs::man(output.map(|p| ctx.path(&p)).as_deref(), io.stdout),
        Command::Config(command) => config::run(ctx.repo.root(), command, ctx.json, io.stdout),
        Command::Add(args) => files::add(ctx, args, io),
        Command::Cat { cid } => files::cat(ctx, &cid, io),
        Command::Get { cid, output } => files::get(ctx, &cid, &output, io),
        Command::Block(cmd) => store::block(ctx, cmd, io),
        Command::Pin(cmd) => store::pin(ctx, cmd, io),
        Command::Gc => store::gc(ctx, io),
        Command::Repo(cmd) => store::repo(ctx, cmd, io),
        Command::Dag(cmd) => store::dag(ctx, cmd, io),
        Command::Id => network::id(ctx, io),
        Command::Peers => network::peers(ctx, io),
        Command::Stats => network::stats(ctx, io),
        Command::Connect { multiaddr } => network::connect(ctx, &multiaddr, io),
        Command::Provide { cid } => network::provide(ctx, &cid, io),
        Command::Findprovs { cid, num } => network::findprovs(ctx, &cid, num, io),
        Command::Nix(cmd) => nix::run(ctx, cmd, io),
        Command::Sources(cmd) => sources::run(ctx, cmd, io),
        Command::Swh(cmd) => swh::run(ctx, cmd, io),
    }
}

/// Parses a CID argument with a message that says what to do.
pub fn parse_cid(text: &str) -> anyhow::Result<cid::Cid> {
    let trimmed = text.trim().trim_start_matches("/ipfs/");
    let cid = cid::Cid::try_from(trimmed).map_err(|e| {
        anyhow::anyhow!("{text:?} is not a CID ({e}); expected e.g. bafy... or Qm...")
    })?;
    ipnix_store::block::check_cid(&cid).map_err(|e| anyhow::anyhow!("{text}: {e}"))?;
    Ok(cid)
}

/// Writes one JSON value as a line.
pub fn print_json(out: &mut dyn Write, value: &serde_json::Value) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}
