//! mDNS probe for `tests/tests/mdns_netns.rs`: starts a node with mDNS on,
//! listening on all interfaces of its (test-made) network namespace, prints
//! `{"event":"ready","peer_id":..}`, then waits until it is connected to a
//! peer it was never told about and prints `{"event":"found","peer":..,
//! "agent":..}` (exit 0), or gives up after `--timeout` seconds (exit 1).
//!
//! ```text
//! mdns_probe --repo DIR [--timeout SECS]
//! ```

use ipnix_node::net::{Keypair, NetConfig, Node};
use ipnix_store::Store;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let mut repo = None;
    let mut timeout = Duration::from_secs(30);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--repo" => repo = args.next().map(PathBuf::from),
            "--timeout" => {
                timeout = Duration::from_secs(args.next().unwrap_or_default().parse()?);
            }
            other => anyhow::bail!(
                "unknown argument {other}; usage: mdns_probe --repo DIR [--timeout SECS]"
            ),
        }
    }
    let repo = repo.ok_or_else(|| anyhow::anyhow!("--repo DIR is required"))?;
    std::fs::create_dir_all(&repo)?;
    let store = Arc::new(Store::open(&repo)?);
    let mut config = NetConfig::new(Keypair::generate_ed25519());
    config.listen = vec![
        "/ip4/0.0.0.0/tcp/0".parse()?,
        "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
    ];
    config.mdns = true;
    let node = Node::start(config, store).await?;
    let handle = node.handle();
    let addrs: Vec<String> = handle
        .listen_addrs()
        .await?
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!(
        "{}",
        json!({"event": "ready", "peer_id": handle.peer_id().to_string(), "addrs": addrs})
    );

    let started = Instant::now();
    let mut found = None;
    while started.elapsed() < timeout {
        // Wait for identify too, so the report shows the peer really is ipnix.
        if let Some(peer) = handle
            .peers()
            .await?
            .into_iter()
            .find(|p| p.agent.is_some())
        {
            found = Some(peer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let code = match &found {
        Some(peer) => {
            println!(
                "{}",
                json!({"event": "found", "peer": peer.peer_id.to_string(), "agent": peer.agent,
                       "addrs": peer.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                       "seconds": started.elapsed().as_secs_f64()})
            );
            0
        }
        None => {
            println!(
                "{}",
                json!({"event": "timeout", "seconds": timeout.as_secs()})
            );
            1
        }
    };
    // Stay up a little so the other probe can finish identifying us.
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.shutdown().await;
    std::process::exit(code);
}
