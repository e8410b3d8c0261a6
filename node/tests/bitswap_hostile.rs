//! A hostile peer speaking raw Bitswap streams (libp2p-stream) against a node
//! that a well-behaved Bitswap peer keeps fetching from throughout: blocks not
//! matching the CID asked for, a frame over 4 MiB, malformed protobuf, a
//! 10,000-entry wantlist, unsolicited blocks, and a peer that wants many
//! large blocks and never reads. Run under /work/shared/peers/sandbox.

mod bitswap_support;

use anyhow::{Context as _, Result};
use bitswap_support::{build_swarm, pseudo_random, Node, NodeEvent};
use bytes::Bytes;
use cid::Cid;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use ipnix_node::bitswap::wire::{
    self, WantType, WireBlock, WireEntry, WireMessage, MAX_FRAME_BYTES,
};
use ipnix_node::bitswap::{self, Event, Penalty, Presence, WantOptions};
use ipnix_store::block::{cid_for, MAX_BLOCK_SIZE, RAW};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, StreamProtocol};
use std::time::Duration;
use tokio::sync::mpsc;

const BITSWAP_120: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");

/// What the hostile peer does with the streams the node opens to it.
enum Inbound {
    /// Decode every message and hand it to the test.
    Read(mpsc::Sender<WireMessage>),
    /// Accept the streams and never read a byte.
    Hold,
}

struct Hostile {
    peer_id: PeerId,
    control: libp2p_stream::Control,
    protocol: StreamProtocol,
}

impl Hostile {
    async fn connect(target: &Node, inbound: Inbound) -> Result<Hostile> {
        Self::connect_speaking(target, inbound, BITSWAP_120).await
    }

    /// A peer that only knows `protocol`, in both directions.
    async fn connect_speaking(
        target: &Node,
        inbound: Inbound,
        protocol: StreamProtocol,
    ) -> Result<Hostile> {
        let mut swarm = build_swarm(|_| libp2p_stream::Behaviour::new())?;
        let peer_id = *swarm.local_peer_id();
        let mut control = swarm.behaviour().new_control();
        let mut incoming = control.accept(protocol.clone())?;
        swarm.dial(target.addr.clone())?;
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    anyhow::bail!("dial failed: {error}")
                }
                _ => {}
            }
        }
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, mut stream)) = incoming.next().await {
                match &inbound {
                    Inbound::Hold => held.push(stream),
                    Inbound::Read(tx) => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            while let Ok(Some(frame)) =
                                wire::read_frame(&mut stream, MAX_FRAME_BYTES).await
                            {
                                let Ok(message) = WireMessage::decode(&frame) else {
                                    break;
                                };
                                if tx.send(message).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                }
            }
        });
        Ok(Hostile {
            peer_id,
            control,
            protocol,
        })
    }

    async fn open(&mut self, to: PeerId) -> Result<libp2p::Stream> {
        self.control
            .open_stream(to, self.protocol.clone())
            .await
            .map_err(|e| anyhow::anyhow!("open stream: {e}"))
    }

    /// Sends raw bytes on a new stream and closes it, as Kubo sends messages.
    async fn send_raw(&mut self, to: PeerId, bytes: &[u8]) -> Result<()> {
        let mut stream = self.open(to).await?;
        stream.write_all(bytes).await?;
        stream.close().await?;
        Ok(())
    }

    async fn send(&mut self, to: PeerId, message: &WireMessage) -> Result<()> {
        self.send_raw(to, &message.to_frame()).await
    }
}

/// The node under test and a well-behaved peer fetching from it.
struct Scene {
    node: Node,
    good: Node,
    served: u64,
}

impl Scene {
    async fn new(config: bitswap::Config) -> Result<Scene> {
        let node = Node::start(config).await?;
        let mut good = Node::start(bitswap::Config::default()).await?;
        good.connect(&node).await?;
        let mut scene = Scene {
            node,
            good,
            served: 0,
        };
        scene.good_peer_is_served().await?;
        Ok(scene)
    }

    /// A fresh block added to the node reaches the well-behaved peer.
    async fn good_peer_is_served(&mut self) -> Result<()> {
        self.served += 1;
        let data = pseudo_random(7_000 + self.served, 10_000);
        let cid = self.node.add_raw(&data);
        self.good.want(cid, WantOptions::default()).await?;
        self.good
            .expect_block(cid, &data, 15)
            .await
            .context("the well-behaved peer was not served")?;
        Ok(())
    }

    async fn penalty_for(&mut self, peer: PeerId, secs: u64) -> Result<Penalty> {
        self.node
            .wait_for(secs, |event| match event {
                NodeEvent::Bitswap(Event::PeerPenalised { peer: p, reason }) if *p == peer => {
                    Some(reason.clone())
                }
                _ => None,
            })
            .await
    }
}

fn raw_cid(i: u64) -> Cid {
    cid_for(RAW, &i.to_le_bytes())
}

#[tokio::test]
async fn a_block_not_matching_the_cid_asked_for_is_dropped_and_penalised() -> Result<()> {
    let mut scene = Scene::new(bitswap::Config::default()).await?;
    let (tx, mut from_node) = mpsc::channel(64);
    let mut hostile = Hostile::connect(&scene.node, Inbound::Read(tx)).await?;

    let wanted = cid_for(RAW, b"the real block");
    scene
        .node
        .want(
            wanted,
            WantOptions {
                peers: vec![hostile.peer_id],
                ..WantOptions::default()
            },
        )
        .await?;
    // The node asks the hostile peer for the block...
    let asked = tokio::time::timeout(Duration::from_secs(10), from_node.recv())
        .await?
        .context("node closed")?;
    let entry = asked.entries.first().context("a wantlist entry")?;
    assert_eq!(entry.cid.as_ref(), wanted.to_bytes().as_slice());
    assert_eq!(entry.want_type, WantType::Block);
    // ...which answers under the right prefix with the wrong bytes.
    let forged = WireMessage {
        payload: vec![WireBlock {
            prefix: wire::prefix_of(&wanted),
            data: Bytes::from_static(b"not the real block"),
        }],
        ..WireMessage::default()
    };
    hostile.send(scene.node.peer_id, &forged).await?;
    let penalty = scene.penalty_for(hostile.peer_id, 10).await?;
    assert!(
        matches!(penalty, Penalty::UnsolicitedBlocks { count: 1, .. }),
        "{penalty:?}"
    );

    let node_wants = scene
        .node
        .call(move |s| s.behaviour().is_wanted(&wanted))
        .await?;
    assert!(node_wants, "the forged block did not satisfy the want");
    let stats = scene.node.stats().await?;
    assert_eq!(stats.blocks_received, 0);
    assert_eq!(stats.unwanted_blocks, 1);
    scene.good_peer_is_served().await?;
    Ok(())
}

#[tokio::test]
async fn a_frame_over_4_mib_resets_the_stream() -> Result<()> {
    let mut scene = Scene::new(bitswap::Config::default()).await?;
    let mut hostile = Hostile::connect(&scene.node, Inbound::Hold).await?;
    let mut stream = hostile.open(scene.node.peer_id).await?;
    let mut prefix = unsigned_varint::encode::u64_buffer();
    let prefix = unsigned_varint::encode::u64((MAX_FRAME_BYTES + 1) as u64, &mut prefix);
    stream.write_all(prefix).await?;
    stream.write_all(&[0u8; 4096]).await?;
    stream.flush().await?;

    let penalty = scene.penalty_for(hostile.peer_id, 10).await?;
    assert_eq!(
        penalty,
        Penalty::FrameTooLarge {
            len: (MAX_FRAME_BYTES + 1) as u64
        }
    );
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await?;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the stream was reset: {read:?}"
    );
    assert_eq!(scene.node.stats().await?.frames_too_large, 1);

    // Garbage that is not protobuf is refused the same way.
    hostile
        .send_raw(scene.node.peer_id, &[0x03, 0xff, 0xff, 0xff])
        .await?;
    let penalty = scene.penalty_for(hostile.peer_id, 10).await?;
    assert!(matches!(penalty, Penalty::Malformed { .. }), "{penalty:?}");
    scene.good_peer_is_served().await?;
    Ok(())
}

#[tokio::test]
async fn a_10000_entry_wantlist_is_capped_at_1024() -> Result<()> {
    let mut scene = Scene::new(bitswap::Config::default()).await?;
    let (tx, mut from_node) = mpsc::channel(1024);
    let mut hostile = Hostile::connect(&scene.node, Inbound::Read(tx)).await?;
    let entries = (0..10_000u64)
        .map(|i| WireEntry {
            cid: Bytes::from(raw_cid(i).to_bytes()),
            priority: 1,
            cancel: false,
            want_type: WantType::Have,
            send_dont_have: true,
        })
        .collect();
    let message = WireMessage {
        entries,
        ..WireMessage::default()
    };
    let before = scene.node.stats().await?;
    hostile.send(scene.node.peer_id, &message).await?;

    // One DONT_HAVE per kept entry, and no more.
    let mut dont_haves = 0;
    while dont_haves < 1024 {
        let message = tokio::time::timeout(Duration::from_secs(15), from_node.recv())
            .await
            .context("waiting for DONT_HAVEs")?
            .context("node closed")?;
        dont_haves += message
            .presences
            .iter()
            .filter(|p| p.presence == Presence::DontHave)
            .count();
    }
    assert_eq!(dont_haves, 1024);
    let stats = scene.node.stats().await?;
    assert_eq!(
        stats.wantlist_entries_received - before.wantlist_entries_received,
        10_000
    );
    assert_eq!(stats.wantlist_entries_over_limit, 10_000 - 1024);
    assert_eq!(
        stats.peer_wantlist_entries, 1024,
        "DONT_HAVE entries stay parked"
    );
    scene.good_peer_is_served().await?;

    // A full wantlist replaces all of it.
    let full = WireMessage {
        entries: vec![WireEntry {
            cid: Bytes::from(raw_cid(1).to_bytes()),
            priority: 1,
            cancel: false,
            want_type: WantType::Block,
            send_dont_have: false,
        }],
        full: true,
        ..WireMessage::default()
    };
    hostile.send(scene.node.peer_id, &full).await?;
    let mut entries = 0;
    for _ in 0..50 {
        entries = scene.node.stats().await?.peer_wantlist_entries;
        if entries == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(entries, 1);
    scene.good_peer_is_served().await?;
    Ok(())
}

#[tokio::test]
async fn unsolicited_blocks_are_dropped() -> Result<()> {
    let mut scene = Scene::new(bitswap::Config::default()).await?;
    let mut hostile = Hostile::connect(&scene.node, Inbound::Hold).await?;
    let blocks: Vec<WireBlock> = (0..3u64)
        .map(|i| {
            let data = Bytes::from(pseudo_random(i, 1000));
            WireBlock {
                prefix: wire::prefix_of(&cid_for(RAW, &data)),
                data,
            }
        })
        .collect();
    let message = WireMessage {
        payload: blocks,
        // 1.0.0-style blocks too
        blocks: vec![Bytes::from_static(b"\x0a\x02\x08\x01")],
        ..WireMessage::default()
    };
    hostile.send(scene.node.peer_id, &message).await?;
    let penalty = scene.penalty_for(hostile.peer_id, 10).await?;
    assert!(
        matches!(penalty, Penalty::UnsolicitedBlocks { count: 4, .. }),
        "{penalty:?}"
    );
    let stats = scene.node.stats().await?;
    assert_eq!(stats.unwanted_blocks, 4);
    assert_eq!(stats.blocks_received, 0);

    // Blocks whose CID cannot even be computed (sha1 outside git-raw).
    let invalid = WireMessage {
        payload: vec![WireBlock {
            prefix: Bytes::from_static(&[0x01, 0x55, 0x11, 0x14]),
            data: Bytes::from_static(b"x"),
        }],
        ..WireMessage::default()
    };
    hostile.send(scene.node.peer_id, &invalid).await?;
    let penalty = scene.penalty_for(hostile.peer_id, 10).await?;
    assert_eq!(penalty, Penalty::InvalidBlocks { count: 1 });
    scene.good_peer_is_served().await?;
    Ok(())
}

#[tokio::test]
async fn a_peer_that_never_reads_costs_bounded_memory() -> Result<()> {
    let config = bitswap::Config::default();
    let budget = config.max_queued_bytes_per_peer as u64;
    let mut scene = Scene::new(config).await?;
    let mut hostile = Hostile::connect(&scene.node, Inbound::Hold).await?;
    // 24 blocks of 1 MiB: six times the per-peer budget.
    let mut entries = Vec::new();
    for i in 0..24u64 {
        let cid = scene.node.add_raw(&pseudo_random(50_000 + i, 1024 * 1024));
        entries.push(WireEntry {
            cid: Bytes::from(cid.to_bytes()),
            priority: 1,
            cancel: false,
            want_type: WantType::Block,
            send_dont_have: true,
        });
    }
    let total = 24 * 1024 * 1024u64;
    hostile
        .send(
            scene.node.peer_id,
            &WireMessage {
                entries,
                ..WireMessage::default()
            },
        )
        .await?;

    // The well-behaved peer is served while the hostile one is stuck.
    for _ in 0..10 {
        scene.good_peer_is_served().await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let early = scene.node.stats().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = scene.node.stats().await?;
    eprintln!(
        "never-reading peer: {} of {total} bytes handed out, max queued for one peer {}, queued now {}",
        late.block_bytes_sent, late.max_peer_queued_bytes, late.queued_bytes
    );
    assert_eq!(
        early.block_bytes_sent, late.block_bytes_sent,
        "nothing more is prepared"
    );
    assert!(
        late.max_peer_queued_bytes <= budget + MAX_BLOCK_SIZE as u64,
        "queued bytes stay within the budget: {}",
        late.max_peer_queued_bytes
    );
    assert!(
        late.block_bytes_sent < total / 2,
        "most of what it asked for was never prepared: {}",
        late.block_bytes_sent
    );
    scene.good_peer_is_served().await?;
    Ok(())
}

#[tokio::test]
async fn older_protocol_versions_get_their_own_message_format() -> Result<()> {
    let scene = Scene::new(bitswap::Config::default()).await?;
    let v0_data = b"\x0a\x02\x08\x01".to_vec();
    let v0 = wire::cid_v0_of(&v0_data)?;
    scene.node.source.insert(v0, Bytes::from(v0_data.clone()))?;
    let v1_data = b"a raw block".to_vec();
    let v1 = scene.node.add_raw(&v1_data);
    let missing = raw_cid(424_242);
    let entry = |cid: Cid, want_type| WireEntry {
        cid: Bytes::from(cid.to_bytes()),
        priority: 1,
        cancel: false,
        want_type,
        send_dont_have: true,
    };
    for protocol in ["/ipfs/bitswap/1.0.0", "/ipfs/bitswap/1.1.0"] {
        let (tx, mut from_node) = mpsc::channel(64);
        let mut old = Hostile::connect_speaking(
            &scene.node,
            Inbound::Read(tx),
            StreamProtocol::new(protocol),
        )
        .await?;
        let wants = WireMessage {
            entries: vec![
                entry(v0, WantType::Block),
                entry(v1, WantType::Block),
                entry(missing, WantType::Block),
            ],
            ..WireMessage::default()
        };
        old.send(scene.node.peer_id, &wants).await?;
        let mut received = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(2), from_node.recv()).await
        {
            received.push(message);
        }
        assert!(
            received.iter().all(|m| m.presences.is_empty()),
            "{protocol}: no presences"
        );
        let blocks: Vec<Bytes> = received.iter().flat_map(|m| m.blocks.clone()).collect();
        let payload: Vec<WireBlock> = received.iter().flat_map(|m| m.payload.clone()).collect();
        if protocol.ends_with("1.0.0") {
            assert_eq!(
                blocks,
                vec![Bytes::from(v0_data.clone())],
                "1.0.0: CIDv0 blocks only, in `blocks`"
            );
            assert!(payload.is_empty());
        } else {
            assert!(blocks.is_empty(), "1.1.0 uses `payload`");
            let mut got: Vec<Cid> = payload
                .iter()
                .map(|b| wire::cid_from_prefix(&b.prefix, &b.data))
                .collect::<Result<_, _>>()?;
            got.sort_by_key(|c| c.to_bytes());
            let mut want = vec![v0, v1];
            want.sort_by_key(|c| c.to_bytes());
            assert_eq!(got, want);
        }
    }
    Ok(())
}
