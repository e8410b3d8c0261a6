//! A one-process ipnix peer driven like the shared Kubo/Helia peer scripts,
//! for the Bitswap benchmark and manual interop checks:
//!
//! ```text
//! ipnix_peer --repo DIR [--tcp-port N] [--quic-port N] [--profile unixfs-v1-2025|unixfs-v0-2015]
//!            [--connect MADDR]... [--mdns]
//! ```
//! stdout: JSON lines, first `{"event":"ready","peer_id":..,"addrs":[..]}`.
//! stdin: `id | peers | connect MADDR | add PATH | fetch CID [OUT] | quit`.
//! `fetch` fetches the whole DAG into the repo (pinned), then writes the file
//! to OUT when given; its `seconds` cover both, like the peer scripts'.

use anyhow::Context;
use clap::Parser;
use ipnix_node::fetch::{fetch_dag, FetchOptions};
use ipnix_node::net::{Keypair, Multiaddr, NetConfig, Node, NodeHandle};
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::{PinMode, Store};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncBufReadExt;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    repo: PathBuf,
    #[arg(long, default_value_t = 0)]
    tcp_port: u16,
    /// UDP port for QUIC; omitted: no QUIC listener.
    #[arg(long)]
    quic_port: Option<u16>,
    #[arg(long, default_value = "unixfs-v1-2025")]
    profile: String,
    #[arg(long)]
    connect: Vec<Multiaddr>,
    /// Find peers by mDNS (only inside a test's own network namespace).
    #[arg(long)]
    mdns: bool,
}

fn emit(value: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

async fn add(
    store: &Arc<Store>,
    node: &NodeHandle,
    path: PathBuf,
    profile: Profile,
) -> anyhow::Result<serde_json::Value> {
    let started = Instant::now();
    let store2 = store.clone();
    let added = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let file =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let mut session = store2.session();
        let added = unixfs::add_file(
            &mut session,
            std::io::BufReader::with_capacity(1 << 20, file),
            &profile.params(),
        )?;
        session.finish(Some((added.cid, PinMode::Recursive, None)))?;
        Ok(added)
    })
    .await??;
    node.provide(added.cid).await?;
    Ok(
        json!({"event": "added", "cid": added.cid.to_string(), "bytes": added.size,
              "seconds": started.elapsed().as_secs_f64()}),
    )
}

async fn fetch(
    store: &Arc<Store>,
    node: &NodeHandle,
    cid: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<serde_json::Value> {
    let cid: cid::Cid = cid.parse()?;
    let started = Instant::now();
    let opts = FetchOptions {
        pin: Some((PinMode::Recursive, None)),
        ..FetchOptions::default()
    };
    let summary = fetch_dag(node, store.clone(), cid, opts).await?;
    let fetched_s = started.elapsed().as_secs_f64();
    let mut bytes = summary.fetched_bytes;
    if let Some(out) = out {
        let store = store.clone();
        bytes = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
            let mut reader = unixfs::cat(store, &cid)?;
            let mut file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&out)?);
            let n = std::io::copy(&mut reader, &mut file)?;
            file.flush()?;
            Ok(n)
        })
        .await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(
        json!({"event": "fetched", "cid": cid.to_string(), "rc": 0, "bytes": bytes,
              "blocks": summary.fetched_blocks, "fetch_seconds": fetched_s, "seconds": seconds,
              "MiB_per_s": bytes as f64 / 1048576.0 / seconds}),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let profile: Profile = args.profile.parse()?;
    std::fs::create_dir_all(&args.repo)?;
    let store = Arc::new(Store::open(&args.repo.join("store"))?);
    let mut config = NetConfig::loopback(Keypair::generate_ed25519());
    config.listen = vec![format!("/ip4/127.0.0.1/tcp/{}", args.tcp_port).parse()?];
    if let Some(port) = args.quic_port {
        config
            .listen
            .push(format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse()?);
    }
    if args.mdns {
        config.listen = vec!["/ip4/0.0.0.0/tcp/0".parse()?];
        config.mdns = true;
    }
    let node = Node::start(config, store.clone()).await?;
    let handle = node.handle();
    let addrs: Vec<String> = handle
        .listen_addrs()
        .await?
        .iter()
        .map(|a| a.to_string())
        .collect();
    emit(
        json!({"event": "ready", "impl": "ipnix", "peer_id": handle.peer_id().to_string(),
                "addrs": addrs, "pid": std::process::id()}),
    );
    for addr in args.connect {
        let rc = handle.connect(addr.clone()).await;
        emit(
            json!({"event": "connected", "addr": addr.to_string(), "ok": rc.is_ok(),
                    "error": rc.err().map(|e| e.to_string())}),
        );
    }

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let Some((&command, rest)) = parts.split_first() else {
            continue;
        };
        let result: anyhow::Result<serde_json::Value> = async {
            match command {
                "quit" => Ok(json!({"event": "quit"})),
                "id" => Ok(json!({"event": "id", "peer_id": handle.peer_id().to_string(),
                    "addrs": handle.listen_addrs().await?.iter().map(|a| a.to_string()).collect::<Vec<_>>()})),
                "peers" => Ok(json!({"event": "peers", "peers": handle.peers().await?.iter()
                    .map(|p| json!({"peer_id": p.peer_id.to_string(), "agent": p.agent,
                                    "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()}))
                    .collect::<Vec<_>>()})),
                "connect" => {
                    let addr: Multiaddr = rest.first().context("connect MADDR")?.parse()?;
                    let peer = handle.connect(addr.clone()).await;
                    Ok(json!({"event": "connected", "addr": addr.to_string(), "ok": peer.is_ok(),
                              "error": peer.err().map(|e| e.to_string())}))
                }
                "add" => add(&store, &handle, PathBuf::from(rest.first().context("add PATH")?), profile).await,
                "fetch" => fetch(&store, &handle, rest.first().context("fetch CID [OUT]")?,
                                 rest.get(1).map(PathBuf::from)).await,
                other => anyhow::bail!("unknown command {other}"),
            }
        }
        .await;
        match result {
            Ok(value) => emit(value),
            Err(e) => {
                emit(json!({"event": "error", "command": command, "error": format!("{e:#}")}))
            }
        }
        if command == "quit" {
            break;
        }
    }
    node.shutdown().await;
    emit(json!({"event": "stopped"}));
    Ok(())
}
