//! Shared harness for the Bitswap swarm tests: in-process nodes (TCP on
//! 127.0.0.1, Noise, Yamux) each driven by its own task, commanded through a
//! bounded channel and reporting events through another.

#![allow(dead_code)] // each test binary uses a different part of the harness

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use cid::Cid;
use futures::StreamExt;
use ipnix_node::bitswap::{self, MemoryBlockSource};
use ipnix_store::block::{cid_for, RAW};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub type BitswapSwarm = Swarm<bitswap::Behaviour>;
type Command = Box<dyn FnOnce(&mut BitswapSwarm) + Send>;

/// What a node's task reports.
#[derive(Debug)]
pub enum NodeEvent {
    Bitswap(bitswap::Event),
    Connected(PeerId),
    Disconnected(PeerId),
}

/// A Bitswap node serving blocks from its in-memory source.
pub struct Node {
    pub peer_id: PeerId,
    pub addr: Multiaddr,
    pub source: Arc<MemoryBlockSource>,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<NodeEvent>,
}

/// A swarm over TCP on loopback with Noise and Yamux.
pub fn build_swarm<B: NetworkBehaviour>(
    behaviour: impl FnOnce(&libp2p::identity::Keypair) -> B,
) -> Result<Swarm<B>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| behaviour(key))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Listens on 127.0.0.1 and returns the address.
pub async fn listen<B: NetworkBehaviour>(swarm: &mut Swarm<B>) -> Result<Multiaddr> {
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return Ok(address);
        }
    }
}

impl Node {
    pub async fn start(config: bitswap::Config) -> Result<Node> {
        let source = Arc::new(MemoryBlockSource::new());
        let blocks: Arc<dyn bitswap::BlockSource> = source.clone();
        let mut swarm = build_swarm(|_| bitswap::Behaviour::new(config, blocks))?;
        let addr = listen(&mut swarm).await?;
        let peer_id = *swarm.local_peer_id();
        let (command_tx, mut command_rx) = mpsc::channel::<Command>(64);
        let (event_tx, event_rx) = mpsc::channel(16 * 1024);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    command = command_rx.recv() => match command {
                        Some(command) => command(&mut swarm),
                        None => break,
                    },
                    event = swarm.select_next_some() => {
                        let event = match event {
                            SwarmEvent::Behaviour(event) => NodeEvent::Bitswap(event),
                            SwarmEvent::ConnectionEstablished { peer_id, .. } => NodeEvent::Connected(peer_id),
                            SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => NodeEvent::Disconnected(peer_id),
                            _ => continue,
                        };
                        if event_tx.send(event).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(Node {
            peer_id,
            addr,
            source,
            commands: command_tx,
            events: event_rx,
        })
    }

    /// Runs `f` on the swarm inside its task and returns the result.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut BitswapSwarm) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Box::new(move |swarm| {
                let _ = tx.send(f(swarm));
            }))
            .await
            .map_err(|_| anyhow!("node task ended"))?;
        rx.await.context("node task dropped the command")
    }

    pub async fn want(&self, cid: Cid, options: bitswap::WantOptions) -> Result<bitswap::WantId> {
        Ok(self
            .call(move |swarm| swarm.behaviour_mut().want(cid, options))
            .await??)
    }

    pub async fn stats(&self) -> Result<bitswap::StatsSnapshot> {
        self.call(|swarm| swarm.behaviour().stats()).await
    }

    /// Dials `other` and waits until this node sees the connection.
    pub async fn connect(&mut self, other: &Node) -> Result<()> {
        let addr = other.addr.clone();
        self.call(move |swarm| swarm.dial(addr)).await??;
        let peer = other.peer_id;
        self.wait_for(10, |event| {
            matches!(event, NodeEvent::Connected(p) if *p == peer).then_some(())
        })
        .await
    }

    pub async fn disconnect(&mut self, peer: PeerId) -> Result<()> {
        self.call(move |swarm| swarm.disconnect_peer_id(peer))
            .await?
            .map_err(|()| anyhow!("not connected"))?;
        self.wait_for(10, |event| {
            matches!(event, NodeEvent::Disconnected(p) if *p == peer).then_some(())
        })
        .await
    }

    /// The next event within `secs` seconds.
    pub async fn next_event(&mut self, secs: u64) -> Result<NodeEvent> {
        tokio::time::timeout(Duration::from_secs(secs), self.events.recv())
            .await
            .context("timed out waiting for an event")?
            .context("node task ended")
    }

    /// Skips events until `f` picks one, for at most `secs` seconds.
    pub async fn wait_for<T>(
        &mut self,
        secs: u64,
        mut f: impl FnMut(&NodeEvent) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = tokio::time::timeout(remaining, self.events.recv())
                .await
                .context("timed out waiting for an event")?
                .context("node task ended")?;
            if let Some(found) = f(&event) {
                return Ok(found);
            }
        }
    }

    /// Events that arrive within `secs` seconds.
    pub async fn collect_for(&mut self, millis: u64) -> Vec<NodeEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(millis);
        let mut events = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            events.push(event);
        }
        events
    }

    /// Waits for the block of `cid`, checking its bytes.
    pub async fn expect_block(&mut self, cid: Cid, data: &[u8], secs: u64) -> Result<PeerId> {
        let from = self
            .wait_for(secs, |event| match event {
                NodeEvent::Bitswap(bitswap::Event::Block {
                    cid: got,
                    data: got_data,
                    from,
                }) if *got == cid => Some((got_data.clone(), *from)),
                _ => None,
            })
            .await?;
        anyhow::ensure!(
            from.0.as_ref() == data,
            "block {cid} arrived with other bytes"
        );
        Ok(from.1)
    }

    /// Adds a raw block to this node's source and returns its CID.
    pub fn add_raw(&self, data: &[u8]) -> Cid {
        let cid = cid_for(RAW, data);
        self.source
            .insert(cid, Bytes::copy_from_slice(data))
            .expect("a block made by cid_for verifies");
        cid
    }
}

pub use ipnix_store::test_util::pseudo_random;

/// A config with short timeouts so tests that wait on them finish quickly.
pub fn quick_config() -> bitswap::Config {
    bitswap::Config {
        have_timeout: Duration::from_secs(2),
        block_timeout: Duration::from_secs(3),
        ..bitswap::Config::default()
    }
}
