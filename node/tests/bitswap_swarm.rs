//! Bitswap between in-process swarms over TCP on 127.0.0.1 (Noise, Yamux):
//! single and concurrent fetches, content split across two servers,
//! DONT_HAVE, cancel, blocks that arrive at the server later, and reconnects.
//! Run under /work/shared/peers/sandbox.

mod bitswap_support;

use anyhow::Result;
use bitswap_support::{pseudo_random, quick_config, Node, NodeEvent};
use ipnix_node::bitswap::{self, Event, WantFailure, WantOptions};
use ipnix_store::block::{cid_for, RAW};
use std::collections::HashMap;

#[tokio::test]
async fn fetches_a_raw_block() -> Result<()> {
    let server = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(bitswap::Config::default()).await?;
    let data = b"hello from ipnix bitswap".to_vec();
    let cid = server.add_raw(&data);
    client.connect(&server).await?;
    client.want(cid, WantOptions::default()).await?;
    let from = client.expect_block(cid, &data, 10).await?;
    assert_eq!(from, server.peer_id);

    let stats = client.stats().await?;
    assert_eq!(stats.blocks_received, 1);
    assert_eq!(stats.block_bytes_received, data.len() as u64);
    assert_eq!(stats.wants, 0);
    let served = server.stats().await?;
    assert_eq!(served.blocks_sent, 1);
    Ok(())
}

#[tokio::test]
async fn fetches_500_blocks_in_flight_at_once() -> Result<()> {
    let server = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(bitswap::Config::default()).await?;
    let mut expected = HashMap::new();
    for i in 0..500u64 {
        // Sizes from 1 byte to ~64 KiB, so messages pack different counts.
        let data = pseudo_random(i, 1 + (i as usize * 131) % 65_536);
        expected.insert(server.add_raw(&data), data);
    }
    client.connect(&server).await?;
    for cid in expected.keys() {
        client.want(*cid, WantOptions::default()).await?;
    }
    let mut remaining = expected.clone();
    while !remaining.is_empty() {
        if let NodeEvent::Bitswap(Event::Block { cid, data, .. }) = client.next_event(30).await? {
            let want = remaining
                .remove(&cid)
                .expect("each block arrives once, and only wanted ones");
            assert_eq!(data.as_ref(), want.as_slice());
        }
    }
    let stats = client.stats().await?;
    assert_eq!(stats.blocks_received, 500);
    assert_eq!(stats.wants, 0);
    assert_eq!(stats.unwanted_blocks, 0);
    let served = server.stats().await?;
    assert_eq!(served.blocks_sent, 500);
    assert!(
        served.messages_sent < 500,
        "blocks are packed into messages ({} messages)",
        served.messages_sent
    );
    Ok(())
}

#[tokio::test]
async fn fetches_from_two_servers_holding_different_halves() -> Result<()> {
    let even = Node::start(bitswap::Config::default()).await?;
    let odd = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(bitswap::Config::default()).await?;
    let mut expected = HashMap::new();
    for i in 0..200u64 {
        let data = pseudo_random(1000 + i, 2048);
        let holder = if i % 2 == 0 { &even } else { &odd };
        expected.insert(holder.add_raw(&data), (data, holder.peer_id));
    }
    client.connect(&even).await?;
    client.connect(&odd).await?;
    for cid in expected.keys() {
        client.want(*cid, WantOptions::default()).await?;
    }
    let mut remaining = expected.len();
    while remaining > 0 {
        if let NodeEvent::Bitswap(Event::Block { cid, data, from }) = client.next_event(30).await? {
            let (want, holder) = &expected[&cid];
            assert_eq!(data.as_ref(), want.as_slice());
            assert_eq!(from, *holder);
            remaining -= 1;
        }
    }
    assert_eq!(client.stats().await?.blocks_received, 200);
    Ok(())
}

#[tokio::test]
async fn dont_have_when_asked_and_silence_when_not() -> Result<()> {
    let server = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(quick_config()).await?;
    client.connect(&server).await?;

    let missing = cid_for(RAW, b"nobody has this");
    client.want(missing, WantOptions::default()).await?;
    let from = client
        .wait_for(10, |event| match event {
            NodeEvent::Bitswap(Event::DontHave { cid, from }) if *cid == missing => Some(*from),
            _ => None,
        })
        .await?;
    assert_eq!(from, server.peer_id);
    client
        .wait_for(10, |event| {
            matches!(event, NodeEvent::Bitswap(Event::WantFailed { cid, reason: WantFailure::NotFound { asked: 1 } }) if *cid == missing)
                .then_some(())
        })
        .await?;
    assert!(
        client
            .call(move |s| s.behaviour().is_wanted(&missing))
            .await?,
        "the want stays"
    );
    assert_eq!(server.stats().await?.dont_haves_sent, 1);

    // Without send_dont_have the server stays silent; the want times out.
    let silent = cid_for(RAW, b"nobody has this either");
    client
        .want(
            silent,
            WantOptions {
                send_dont_have: false,
                ..WantOptions::default()
            },
        )
        .await?;
    let events = client
        .wait_for(15, |event| match event {
            NodeEvent::Bitswap(Event::DontHave { cid, .. }) if *cid == silent => Some(false),
            NodeEvent::Bitswap(Event::WantFailed { cid, .. }) if *cid == silent => Some(true),
            _ => None,
        })
        .await?;
    assert!(
        events,
        "no DONT_HAVE when not asked for one; the want timed out instead"
    );
    assert_eq!(server.stats().await?.dont_haves_sent, 1);
    Ok(())
}

#[tokio::test]
async fn blocks_that_arrive_later_are_sent_to_peers_still_wanting_them() -> Result<()> {
    let server = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(bitswap::Config::default()).await?;
    client.connect(&server).await?;
    let data = b"late block".to_vec();
    let cid = cid_for(RAW, &data);
    client.want(cid, WantOptions::default()).await?;
    client
        .wait_for(10, |event| {
            matches!(event, NodeEvent::Bitswap(Event::DontHave { .. })).then_some(())
        })
        .await?;
    server.add_raw(&data);
    server
        .call(move |s| s.behaviour_mut().notify_new_blocks(&[cid]))
        .await?;
    client.expect_block(cid, &data, 10).await?;
    Ok(())
}

#[tokio::test]
async fn cancel_removes_the_want_everywhere() -> Result<()> {
    let server = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(bitswap::Config::default()).await?;
    client.connect(&server).await?;
    let data = b"cancelled before it existed".to_vec();
    let cid = cid_for(RAW, &data);
    client.want(cid, WantOptions::default()).await?;
    client
        .wait_for(10, |event| {
            matches!(event, NodeEvent::Bitswap(Event::DontHave { .. })).then_some(())
        })
        .await?;
    assert_eq!(
        server.stats().await?.peer_wantlist_entries,
        1,
        "parked at the server"
    );

    assert!(client.call(move |s| s.behaviour_mut().cancel(&cid)).await?);
    assert!(!client.call(move |s| s.behaviour_mut().cancel(&cid)).await?);
    let mut entries = 1;
    for _ in 0..50 {
        entries = server.stats().await?.peer_wantlist_entries;
        if entries == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(entries, 0, "the cancel reached the server");

    // The block appearing now is not sent: nobody wants it.
    server.add_raw(&data);
    server
        .call(move |s| s.behaviour_mut().notify_new_blocks(&[cid]))
        .await?;
    let events = client.collect_for(1000).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, NodeEvent::Bitswap(Event::Block { .. }))),
        "no block after cancel"
    );
    let stats = client.stats().await?;
    assert_eq!(stats.wants, 0);
    assert_eq!(stats.unwanted_blocks + stats.duplicate_blocks, 0);
    Ok(())
}

#[tokio::test]
async fn wants_survive_disconnects_and_go_to_peers_that_connect() -> Result<()> {
    let server = Node::start(bitswap::Config::default()).await?;
    let mut client = Node::start(bitswap::Config::default()).await?;
    let first = b"wanted before any peer".to_vec();
    let first_cid = server.add_raw(&first);
    client.want(first_cid, WantOptions::default()).await?;
    client
        .wait_for(5, |event| {
            matches!(
                event,
                NodeEvent::Bitswap(Event::WantFailed {
                    reason: WantFailure::NoPeers,
                    ..
                })
            )
            .then_some(())
        })
        .await?;
    client.connect(&server).await?;
    client.expect_block(first_cid, &first, 10).await?;

    // A parked want at the server is dropped with the connection.
    let later = b"arrives after a reconnect".to_vec();
    let later_cid = cid_for(RAW, &later);
    client.want(later_cid, WantOptions::default()).await?;
    client
        .wait_for(10, |event| {
            matches!(event, NodeEvent::Bitswap(Event::DontHave { .. })).then_some(())
        })
        .await?;
    client.disconnect(server.peer_id).await?;
    let mut entries = 1;
    for _ in 0..50 {
        entries = server.stats().await?.peer_wantlist_entries;
        if entries == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(entries, 0, "server state dropped on disconnect");

    server.add_raw(&later);
    client.connect(&server).await?;
    client.expect_block(later_cid, &later, 10).await?;

    // Wants limited to a peer wait for that peer.
    let third = Node::start(bitswap::Config::default()).await?;
    let only_third = b"only from the third node".to_vec();
    let only_cid = third.add_raw(&only_third);
    server.add_raw(&only_third);
    client
        .want(
            only_cid,
            WantOptions {
                peers: vec![third.peer_id],
                ..WantOptions::default()
            },
        )
        .await?;
    client.connect(&third).await?;
    let from = client.expect_block(only_cid, &only_third, 10).await?;
    assert_eq!(from, third.peer_id);
    assert_eq!(
        server.stats().await?.blocks_sent,
        2,
        "the server was not asked for it"
    );
    Ok(())
}
