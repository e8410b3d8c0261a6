//! Manual Bitswap interop check against Kubo or Helia (run under the sandbox).
//!
//! Fetch:  bitswap_fetch --connect /ip4/127.0.0.1/tcp/4101/p2p/<id> --want <cid> [--out FILE]
//!         connects, wants the block, prints its size and a preview (or writes it).
//! DAG:    add --dag [--inflight N] to --want: follow links (dag-pb, raw, dag-cbor)
//!         and fetch the whole DAG with up to N wants in flight, printing the rate.
//! Serve:  bitswap_fetch --serve FILE [--listen /ip4/127.0.0.1/tcp/4102]
//!         imports FILE as UnixFS (CIDv1, raw leaves, 1 MiB chunks), prints
//!         {"cid":..,"addrs":[..]} and serves it until stdin closes.

use anyhow::{bail, Context as _, Result};
use futures::StreamExt;
use ipnix_node::bitswap::{self, MemoryBlockSource, WantOptions};
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::MemoryBlocks;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, ping, tcp, yamux, Multiaddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

#[derive(NetworkBehaviour)]
struct Peer {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    bitswap: bitswap::Behaviour,
}

/// A breadth-first walk of a DAG being fetched.
#[derive(Default)]
struct DagWalk {
    pending: std::collections::VecDeque<cid::Cid>,
    in_flight: usize,
    blocks: u64,
    bytes: u64,
    started: Option<std::time::Instant>,
}

#[derive(Default)]
struct Args {
    connect: Option<Multiaddr>,
    want: Option<cid::Cid>,
    out: Option<String>,
    serve: Option<String>,
    listen: Option<Multiaddr>,
    dag: bool,
    inflight: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        inflight: 256,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--connect" => args.connect = Some(value()?.parse()?),
            "--want" => args.want = Some(value()?.parse()?),
            "--out" => args.out = Some(value()?),
            "--serve" => args.serve = Some(value()?),
            "--listen" => args.listen = Some(value()?.parse()?),
            "--dag" => args.dag = true,
            "--inflight" => args.inflight = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let source = Arc::new(MemoryBlockSource::new());
    let served = match &args.serve {
        Some(path) => {
            // UnixFS, CIDv1 with raw leaves and 1 MiB chunks (Helia's defaults).
            let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
            let mut blocks = MemoryBlocks::new();
            let added = unixfs::add_file(
                &mut blocks,
                std::io::BufReader::new(file),
                &Profile::V1_2025.params(),
            )?;
            for (cid, data) in blocks.iter() {
                source.insert(*cid, data.clone())?;
            }
            Some(added.cid)
        }
        None => None,
    };
    let blocks: Arc<dyn bitswap::BlockSource> = source.clone();
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| Peer {
            identify: identify::Behaviour::new(
                identify::Config::new("ipfs/0.1.0".into(), key.public())
                    .with_agent_version("ipnix-bitswap-example".into()),
            ),
            ping: ping::Behaviour::new(ping::Config::new()),
            bitswap: bitswap::Behaviour::new(bitswap::Config::default(), blocks),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    let listen = args
        .listen
        .clone()
        .unwrap_or("/ip4/127.0.0.1/tcp/0".parse()?);
    swarm.listen_on(listen)?;
    if let Some(addr) = &args.connect {
        swarm.dial(addr.clone())?;
    }
    let mut dag = DagWalk::default();
    if let Some(cid) = args.want {
        swarm
            .behaviour_mut()
            .bitswap
            .want(cid, WantOptions::default())?;
        dag.in_flight = 1;
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = served.is_some();
    loop {
        tokio::select! {
            line = stdin.next_line(), if stdin_open => {
                if !matches!(line, Ok(Some(_))) {
                    stdin_open = false;
                    if args.want.is_none() {
                        break;
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    if let Some(cid) = served {
                        let full = address.with_p2p(*swarm.local_peer_id()).map_err(|_| anyhow::anyhow!("address"))?;
                        println!("{{\"cid\":\"{cid}\",\"addrs\":[\"{full}\"]}}");
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    eprintln!("connected to {peer_id}");
                    dag.started.get_or_insert_with(std::time::Instant::now);
                }
                SwarmEvent::Behaviour(PeerEvent::Bitswap(event)) => match event {
                    bitswap::Event::Block { cid, data, .. } if args.dag => {
                        dag.blocks += 1;
                        dag.bytes += data.len() as u64;
                        dag.in_flight -= 1;
                        dag.pending.extend(ipnix_store::links::links(&cid, &data)?);
                        while dag.in_flight < args.inflight {
                            let Some(next) = dag.pending.pop_front() else { break };
                            swarm.behaviour_mut().bitswap.want(next, WantOptions::default())?;
                            dag.in_flight += 1;
                        }
                        if dag.in_flight == 0 {
                            let seconds = dag.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                            println!(
                                "{{\"blocks\":{},\"bytes\":{},\"seconds\":{seconds:.3},\"MiB_per_s\":{:.1}}}",
                                dag.blocks,
                                dag.bytes,
                                dag.bytes as f64 / 1048576.0 / seconds
                            );
                            eprintln!("{:?}", swarm.behaviour().bitswap.stats());
                            break;
                        }
                    }
                    bitswap::Event::Block { cid, data, from } => {
                        eprintln!("block {cid} ({} bytes) from {from}", data.len());
                        match &args.out {
                            Some(path) => std::fs::write(path, &data)?,
                            None => println!("{}", String::from_utf8_lossy(&data[..data.len().min(200)])),
                        }
                        eprintln!("{:?}", swarm.behaviour().bitswap.stats());
                        break;
                    }
                    bitswap::Event::Have { .. } | bitswap::Event::DontHave { .. } => {}
                    other => eprintln!("bitswap: {other:?}"),
                },
                SwarmEvent::Behaviour(PeerEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    eprintln!("identify {peer_id}: {} {}", info.agent_version, info.protocols.iter().filter(|p| p.as_ref().contains("bitswap")).map(|p| p.to_string()).collect::<Vec<_>>().join(","));
                }
                _ => {}
            }
        }
    }
    if served.is_some() {
        eprintln!("{:?}", swarm.behaviour().bitswap.stats());
    }
    Ok(())
}
