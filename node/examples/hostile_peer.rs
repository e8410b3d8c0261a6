//! A hostile Bitswap peer for soak tests (loopback only; run under the sandbox).
//!
//!   hostile_peer --connect /ip4/127.0.0.1/tcp/P/p2p/ID [--seconds 120] [--seed 1]
//!                [--want CID]...
//!
//! Until `--seconds` pass it loops, in an order drawn from `--seed`, through:
//! frames whose length prefix is over the 4 MiB limit; 10,000-entry
//! wantlists (random CIDs mixed with real ones); wrong blocks for every CID
//! the target asks it for, plus unsolicited forged blocks; slow reads (it
//! wants the real blocks it learnt of, then reads the answers at a trickle);
//! and connect/disconnect churn, each time with a fresh identity that leaves
//! a wantlist behind. `--want` names real CIDs (a UnixFS root: its links are
//! learnt from the block the target sends). Transport: TCP, Noise, Yamux on
//! 127.0.0.1, the stack the daemon listens with. On exit it prints one JSON
//! object counting what it sent.

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use cid::Cid;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use ipnix_node::bitswap::wire::{self, WantType, WireBlock, WireEntry, WireMessage};
use ipnix_store::block::{cid_for, RAW};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const BITSWAP_120: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
/// Entries in one flood wantlist.
const FLOOD_ENTRIES: usize = 10_000;
/// Real CIDs kept for floods and slow reads (links of the `--want` roots).
const MAX_KNOWN: usize = 2048;
/// How long one send may take before it is given up.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How fast a slow reader reads: this many bytes every 100 ms.
const TRICKLE_BYTES: usize = 512;

#[derive(NetworkBehaviour)]
struct Peer {
    stream: libp2p_stream::Behaviour,
    identify: identify::Behaviour,
}

/// Counts of what was sent and seen, printed at the end.
#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Tally {
    fn add(&self, what: &'static str, n: u64) {
        let mut counts = self.counts.lock().expect("tally lock");
        *counts.entry(what).or_default() += n;
    }
}

/// State shared by the streams the target opens to us.
struct Shared {
    tally: Tally,
    /// Read inbound streams at a trickle instead of answering them.
    slow: AtomicBool,
    /// Real CIDs learnt from the target's blocks.
    known: Mutex<Vec<Cid>>,
    /// Wrong blocks to send back for CIDs the target asked us for.
    asked: mpsc::Sender<(PeerId, Vec<Cid>)>,
}

enum Command {
    Disconnect,
}

/// One connected identity: its stream control and a way to stop it.
struct Session {
    target: PeerId,
    control: libp2p_stream::Control,
    commands: mpsc::Sender<Command>,
    closed: tokio::sync::watch::Receiver<bool>,
}

fn build_swarm() -> Result<Swarm<Peer>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| Peer {
            stream: libp2p_stream::Behaviour::new(),
            identify: identify::Behaviour::new(
                identify::Config::new("ipfs/0.1.0".into(), key.public())
                    .with_agent_version("ipnix-hostile-peer".into()),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// Dials `addr` with a fresh identity and drives the swarm in a task.
async fn connect(addr: &Multiaddr, shared: &Arc<Shared>) -> Result<Session> {
    let mut swarm = build_swarm()?;
    let mut control = swarm.behaviour().stream.new_control();
    let mut incoming = control.accept(BITSWAP_120)?;
    swarm.dial(addr.clone())?;
    let target = loop {
        match tokio::time::timeout(Duration::from_secs(20), swarm.select_next_some())
            .await
            .context("dial timed out")?
        {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => break peer_id,
            SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial failed: {error}"),
            _ => {}
        }
    };
    shared.tally.add("connects", 1);
    let (command_tx, mut command_rx) = mpsc::channel(4);
    let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                command = command_rx.recv() => match command {
                    Some(Command::Disconnect) | None => {
                        let _ = swarm.disconnect_peer_id(target);
                    }
                },
                event = swarm.select_next_some() => {
                    if let SwarmEvent::ConnectionClosed { num_established: 0, .. } = event {
                        let _ = closed_tx.send(true);
                        break;
                    }
                }
            }
        }
    });
    let inbound = shared.clone();
    tokio::spawn(async move {
        while let Some((from, stream)) = incoming.next().await {
            tokio::spawn(read_inbound(from, stream, inbound.clone()));
        }
    });
    Ok(Session {
        target,
        control,
        commands: command_tx,
        closed: closed_rx,
    })
}

/// Reads what the target sends: at a trickle in slow mode, else decoding
/// every message, learning real CIDs from blocks and queueing wrong blocks
/// for whatever it wants.
async fn read_inbound(from: PeerId, mut stream: libp2p::Stream, shared: Arc<Shared>) {
    // Once trickled, the stream's framing is lost: it is dropped when the
    // slow phase ends and the target opens a new one.
    let mut trickled = false;
    loop {
        if shared.slow.load(Ordering::Relaxed) {
            trickled = true;
            let mut buf = [0u8; TRICKLE_BYTES];
            match stream.read(&mut buf).await {
                Ok(n) if n > 0 => shared.tally.add("slow_read_bytes", n as u64),
                _ => return,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        if trickled {
            return;
        }
        let Ok(Some(frame)) = wire::read_frame(&mut stream, wire::MAX_FRAME_BYTES).await else {
            return;
        };
        let Ok(message) = WireMessage::decode(&frame) else {
            return;
        };
        shared.tally.add("messages_received", 1);
        let wanted: Vec<Cid> = message
            .entries
            .iter()
            .filter(|e| !e.cancel)
            .filter_map(|e| wire::parse_cid(&e.cid))
            .collect();
        if !wanted.is_empty() {
            shared.tally.add("wants_received", wanted.len() as u64);
            let _ = shared.asked.try_send((from, wanted));
        }
        for block in &message.payload {
            shared.tally.add("blocks_received", 1);
            let Ok(cid) = wire::cid_from_prefix(&block.prefix, &block.data) else {
                continue;
            };
            let links = ipnix_store::links::links(&cid, &block.data).unwrap_or_default();
            let mut known = shared.known.lock().expect("known lock");
            for link in links {
                if known.len() < MAX_KNOWN && !known.contains(&link) {
                    known.push(link);
                }
            }
        }
    }
}

impl Session {
    /// Sends raw bytes on a new stream and closes it, as Kubo sends
    /// messages; gives up after SEND_TIMEOUT (the target may stop reading).
    async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let target = self.target;
        let control = &mut self.control;
        let send = async move {
            let mut stream = control
                .open_stream(target, BITSWAP_120)
                .await
                .map_err(|e| anyhow::anyhow!("open stream: {e}"))?;
            stream.write_all(bytes).await?;
            stream.close().await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(SEND_TIMEOUT, send)
            .await
            .context("send timed out")?
    }

    async fn send(&mut self, message: &WireMessage) -> Result<()> {
        self.send_raw(&message.to_frame()).await
    }

    async fn disconnect(mut self) {
        let _ = self.commands.send(Command::Disconnect).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.closed.wait_for(|c| *c)).await;
    }
}

fn random_cid(rng: &mut StdRng) -> Cid {
    let mut data = [0u8; 32];
    rng.fill_bytes(&mut data);
    cid_for(RAW, &data)
}

fn want(cid: &Cid, want_type: WantType) -> WireEntry {
    WireEntry {
        cid: Bytes::from(cid.to_bytes()),
        priority: 1,
        cancel: false,
        want_type,
        send_dont_have: true,
    }
}

/// A block claiming to be `cid` whose bytes are not.
fn forged(cid: &Cid, rng: &mut StdRng) -> WireBlock {
    let mut data = vec![0u8; rng.gen_range(1..64 * 1024)];
    rng.fill_bytes(&mut data);
    WireBlock {
        prefix: wire::prefix_of(cid),
        data: Bytes::from(data),
    }
}

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    OversizedFrame,
    WantFlood,
    WrongBlocks,
    SlowRead,
    Churn,
}

impl Behaviour {
    fn round_name(self) -> &'static str {
        match self {
            Behaviour::OversizedFrame => "rounds_oversized_frame",
            Behaviour::WantFlood => "rounds_want_flood",
            Behaviour::WrongBlocks => "rounds_wrong_blocks",
            Behaviour::SlowRead => "rounds_slow_read",
            Behaviour::Churn => "rounds_churn",
        }
    }
}

const BEHAVIOURS: [Behaviour; 5] = [
    Behaviour::OversizedFrame,
    Behaviour::WantFlood,
    Behaviour::WrongBlocks,
    Behaviour::SlowRead,
    Behaviour::Churn,
];

struct Run {
    addr: Multiaddr,
    roots: Vec<Cid>,
    shared: Arc<Shared>,
    asked: mpsc::Receiver<(PeerId, Vec<Cid>)>,
    rng: StdRng,
    deadline: Instant,
}

impl Run {
    fn time_left(&self) -> bool {
        Instant::now() < self.deadline
    }

    async fn session(&self) -> Result<Session> {
        connect(&self.addr, &self.shared).await
    }

    /// The real CIDs to want: the roots and what was learnt from them.
    fn real_cids(&self) -> Vec<Cid> {
        let mut cids = self.roots.clone();
        cids.extend(
            self.shared
                .known
                .lock()
                .expect("known lock")
                .iter()
                .copied(),
        );
        cids
    }

    async fn oversized_frame(&mut self, session: &mut Session) -> Result<()> {
        let len = self
            .rng
            .gen_range(wire::MAX_FRAME_BYTES as u64 + 1..=64 * 1024 * 1024);
        let mut prefix = unsigned_varint::encode::u64_buffer();
        let mut bytes = unsigned_varint::encode::u64(len, &mut prefix).to_vec();
        let mut junk = vec![0u8; 64 * 1024];
        self.rng.fill_bytes(&mut junk);
        bytes.extend_from_slice(&junk);
        // The target resets the stream once it reads the prefix: that is
        // the expected outcome, not a failure of ours.
        let _ = session.send_raw(&bytes).await;
        self.shared.tally.add("oversized_frames", 1);
        Ok(())
    }

    async fn want_flood(&mut self, session: &mut Session) -> Result<()> {
        let real = self.real_cids();
        let mut entries = Vec::with_capacity(FLOOD_ENTRIES);
        for i in 0..FLOOD_ENTRIES {
            let cid = match real.get(i % 8 * real.len() / 8) {
                Some(cid) if i % 97 == 0 => *cid,
                _ => random_cid(&mut self.rng),
            };
            let want_type = if i % 2 == 0 {
                WantType::Have
            } else {
                WantType::Block
            };
            entries.push(want(&cid, want_type));
        }
        let message = WireMessage {
            entries,
            full: self.rng.gen_bool(0.5),
            ..WireMessage::default()
        };
        if session.send(&message).await.is_ok() {
            self.shared.tally.add("flood_messages", 1);
            self.shared.tally.add("flood_entries", FLOOD_ENTRIES as u64);
        }
        // Answers (DONT_HAVE, blocks) are read by read_inbound.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    async fn wrong_blocks(&mut self, session: &mut Session) -> Result<()> {
        // Wrong bytes for everything the target asked us for since the last round.
        let mut answered = 0;
        for _ in 0..4 {
            let Ok((_, cids)) = self.asked.try_recv() else {
                break;
            };
            for chunk in cids.chunks(16).take(8) {
                let payload = chunk.iter().map(|c| forged(c, &mut self.rng)).collect();
                let message = WireMessage {
                    payload,
                    ..WireMessage::default()
                };
                session.send(&message).await?;
                self.shared.tally.add("wrong_blocks", chunk.len() as u64);
                answered += chunk.len();
            }
        }
        // Unsolicited forged blocks, for random and for real CIDs.
        let mut payload = Vec::new();
        let real = self.real_cids();
        for i in 0..8 {
            let cid = match real.get(i) {
                Some(cid) if i % 2 == 0 => *cid,
                _ => random_cid(&mut self.rng),
            };
            payload.push(forged(&cid, &mut self.rng));
        }
        let message = WireMessage {
            payload,
            ..WireMessage::default()
        };
        if session.send(&message).await.is_ok() {
            self.shared.tally.add("unsolicited_blocks", 8);
        }
        if answered == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    /// Wants every real block, then reads the answers at a trickle for a while.
    async fn slow_read(&mut self, session: &mut Session) -> Result<()> {
        let real = self.real_cids();
        if real.is_empty() {
            return Ok(());
        }
        self.shared.slow.store(true, Ordering::Relaxed);
        let entries = real.iter().map(|c| want(c, WantType::Block)).collect();
        let message = WireMessage {
            entries,
            full: true,
            ..WireMessage::default()
        };
        if session.send(&message).await.is_ok() {
            self.shared.tally.add("slow_read_rounds", 1);
            self.shared.tally.add("slow_read_wants", real.len() as u64);
        }
        let hold = Duration::from_secs(self.rng.gen_range(3..10u64));
        tokio::time::sleep(hold.min(self.deadline.saturating_duration_since(Instant::now()))).await;
        self.shared.slow.store(false, Ordering::Relaxed);
        // Cancel everything so the next round starts from an empty wantlist.
        let _ = session
            .send(&WireMessage {
                full: true,
                ..WireMessage::default()
            })
            .await;
        Ok(())
    }

    /// Fresh identities that connect, leave a wantlist and vanish.
    async fn churn(&mut self) -> Result<()> {
        for _ in 0..self.rng.gen_range(5..20) {
            if !self.time_left() {
                break;
            }
            let mut session = match self.session().await {
                Ok(session) => session,
                Err(e) => {
                    self.shared.tally.add("connect_errors", 1);
                    eprintln!("churn: {e:#}");
                    continue;
                }
            };
            let entries = (0..1000)
                .map(|_| want(&random_cid(&mut self.rng), WantType::Block))
                .collect();
            let _ = session
                .send(&WireMessage {
                    entries,
                    ..WireMessage::default()
                })
                .await;
            session.disconnect().await;
            self.shared.tally.add("disconnects", 1);
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<()> {
        let mut session = self.session().await?;
        // Learn the roots' links: ask for the roots and read the answers.
        let roots: Vec<WireEntry> = self
            .roots
            .iter()
            .map(|c| want(c, WantType::Block))
            .collect();
        if !roots.is_empty() {
            session
                .send(&WireMessage {
                    entries: roots,
                    ..WireMessage::default()
                })
                .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        while self.time_left() {
            let behaviour = BEHAVIOURS[self.rng.gen_range(0..BEHAVIOURS.len())];
            self.shared.tally.add("rounds", 1);
            self.shared.tally.add(behaviour.round_name(), 1);
            let round_started = Instant::now();
            let limit = self.deadline.saturating_duration_since(Instant::now()) + SEND_TIMEOUT;
            let round = async {
                match behaviour {
                    Behaviour::OversizedFrame => self.oversized_frame(&mut session).await,
                    Behaviour::WantFlood => self.want_flood(&mut session).await,
                    Behaviour::WrongBlocks => self.wrong_blocks(&mut session).await,
                    Behaviour::SlowRead => self.slow_read(&mut session).await,
                    Behaviour::Churn => self.churn().await,
                }
            };
            let outcome = tokio::time::timeout(limit, round)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("round overran the deadline")));
            let failed = outcome.is_err();
            if let Err(e) = outcome {
                // Mostly the target pushing back (it stops reading a peer
                // that does not read its answers) or closing on us.
                self.shared.tally.add("sends_refused", 1);
                eprintln!("{behaviour:?}: {e:#}");
            }
            eprintln!("{behaviour:?} took {:?}", round_started.elapsed());
            // The target may have closed the connection (a penalty): come back.
            if failed || *session.closed.borrow() {
                self.shared.slow.store(false, Ordering::Relaxed);
                self.shared.tally.add("reconnects", 1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                match self.session().await {
                    Ok(fresh) => std::mem::replace(&mut session, fresh).disconnect().await,
                    Err(e) => {
                        self.shared.tally.add("connect_errors", 1);
                        eprintln!("reconnect: {e:#}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        session.disconnect().await;
        Ok(())
    }
}

struct Args {
    connect: Multiaddr,
    seconds: u64,
    seed: u64,
    want: Vec<Cid>,
}

fn parse_args() -> Result<Args> {
    let mut connect = None;
    let mut seconds = 120;
    let mut seed = 1;
    let mut want = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--connect" => connect = Some(value()?.parse::<Multiaddr>()?),
            "--seconds" => seconds = value()?.parse()?,
            "--seed" => seed = value()?.parse()?,
            "--want" => want.push(value()?.parse()?),
            other => bail!("unknown argument {other}"),
        }
    }
    let connect = connect.context("--connect MULTIADDR is required")?;
    // Loopback only: this program exists to misbehave.
    let loopback = connect.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    });
    if !loopback {
        bail!("--connect must be a loopback address, got {connect}");
    }
    Ok(Args {
        connect,
        seconds,
        seed,
        want,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let (asked_tx, asked_rx) = mpsc::channel(256);
    let shared = Arc::new(Shared {
        tally: Tally::default(),
        slow: AtomicBool::new(false),
        known: Mutex::new(Vec::new()),
        asked: asked_tx,
    });
    let started = Instant::now();
    let mut run = Run {
        addr: args.connect,
        roots: args.want,
        shared: shared.clone(),
        asked: asked_rx,
        rng: StdRng::seed_from_u64(args.seed),
        deadline: started + Duration::from_secs(args.seconds),
    };
    let outcome = run.run().await;
    let mut summary: serde_json::Map<String, serde_json::Value> = shared
        .tally
        .counts
        .lock()
        .expect("tally lock")
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).into()))
        .collect();
    summary.insert("seed".into(), args.seed.into());
    summary.insert(
        "seconds".into(),
        ((started.elapsed().as_millis() as f64) / 1000.0).into(),
    );
    summary.insert(
        "known_cids".into(),
        (shared.known.lock().expect("known lock").len() as u64).into(),
    );
    if let Err(e) = &outcome {
        summary.insert("fatal".into(), format!("{e:#}").into());
    }
    println!("{}", serde_json::Value::Object(summary));
    outcome
}
