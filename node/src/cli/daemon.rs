//! `ipnix daemon`: turns the flags into a daemon configuration, runs it on a
//! tokio runtime, and runs forwarded CLI commands inside it.

use super::{error_line, execute, Ctx, Io};
use crate::{Cli, Command, DaemonArgs, DagCommand, NixCommand, PinCommand};
use anyhow::Context as _;
use clap::Parser;
use ipnix_node::daemon::{self, DaemonConfig, Ready};
use ipnix_node::http::api::{CommandIo, CommandRequest, CommandRunner};
use ipnix_node::net::{read_swarm_key, Multiaddr, NetConfig, NodeHandle};
use ipnix_node::repo::Repo;
use ipnix_store::Store;
use std::io::Write;
use std::sync::Arc;

pub fn run(repo: Repo, args: DaemonArgs) -> anyhow::Result<()> {
    let store = Arc::new(
        Store::open(&repo.store_dir())
            .with_context(|| format!("cannot open the store of repo {}", repo.root().display()))?,
    );
    let mut net = NetConfig::new(repo.identity()?);
    if !args.listen.is_empty() {
        net.listen = args
            .listen
            .iter()
            .map(|a| parse_multiaddr(a, "--listen"))
            .collect::<anyhow::Result<_>>()?;
    }
    net.bootstrap = args
        .bootstrap
        .iter()
        .map(|a| parse_multiaddr(a, "--bootstrap"))
        .collect::<anyhow::Result<_>>()?;
    net.mdns = !args.no_mdns;
    net.public_dht = args.public;
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
    let http = args
        .http
        .parse()
        .map_err(|e| anyhow::anyhow!("--http {}: {e} (expected IP:PORT)", args.http))?;
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
    let config = DaemonConfig {
        repo: repo.clone(),
        net,
        http,
        sign_key,
        peer_timeout: std::time::Duration::from_millis(args.peer_timeout),
        fetch_timeout: std::time::Duration::from_secs(args.fetch_timeout.max(1)),
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
    runtime.block_on(daemon::run(
        config,
        store,
        make_runner,
        print_ready,
        daemon::shutdown_signal(),
    ))?;
    println!("daemon stopped");
    Ok(())
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
    println!(
        "HTTP (API, gateway, Nix binary cache, metrics) on http://{}",
        ready.http
    );
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
        let cli = match Cli::try_parse_from(argv) {
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
        let result = execute(&ctx, cli.command, &mut io);
        if announces && result.is_ok() {
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
