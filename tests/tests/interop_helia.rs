//! ipnix's network layer (library-level `Node`, `fetch_dag`, the LAN DHT)
//! against a real Helia 7 (js-libp2p): files of 3 MiB and 100 MiB both ways,
//! CIDv1 (Helia's default) and CIDv0 (`--profile v0`), raw blocks both ways
//! (`put-block` / `get-block`), an RSA peer id, and Helia's `findprovs` over
//! `/ipfs/lan/kad/1.0.0` finding ipnix (and ipnix finding Helia).
//! Helia speaks TCP only. Run under `../shared/peers/sandbox` (otherwise: SKIP).

mod net_common;

use anyhow::{Context, Result};
use ipnix_node::net::{Multiaddr, LAN_KAD_PROTOCOL};
use ipnix_store::block::{cid_for, RAW};
use ipnix_store::unixfs::Profile;
use ipnix_store::Cid;
use ipnix_tests::peers::{self, HeliaOptions, HeliaPeer};
use net_common::{blocking, eventually, sha256_file, IpnixNode, MIB};
use std::path::Path;
use std::time::Duration;

const BIG_FETCH: Duration = Duration::from_secs(600);

fn skip_reason() -> Option<String> {
    peers::helia_unusable()
}

fn start_helia(opts: HeliaOptions) -> Result<HeliaPeer> {
    blocking(|| {
        HeliaPeer::start(HeliaOptions {
            fetch_timeout_secs: Some(600),
            ..opts
        })
    })
}

fn helia_addr(helia: &HeliaPeer) -> Result<Multiaddr> {
    Ok(helia
        .tcp_addr()
        .context("Helia has no TCP address")?
        .parse()?)
}

async fn fetch_and_check(ipnix: &IpnixNode, cid: &str, source: &Path) -> Result<()> {
    let cid: Cid = cid.parse()?;
    let summary = ipnix
        .fetch(cid)
        .await
        .with_context(|| format!("fetching {cid}"))?;
    assert!(summary.fetched_blocks > 0);
    assert_eq!(ipnix.file_sha256(cid).await?, sha256_file(source)?, "{cid}");
    Ok(())
}

/// Helia adds with its defaults (CIDv1, raw leaves, 1 MiB chunks) and, in a
/// second peer, Kubo's classic layout (CIDv0); ipnix fetches all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_to_ipnix_cidv1_and_cidv0() -> Result<()> {
    ipnix_tests::skip_if!("helia_to_ipnix_cidv1_and_cidv0", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let small = dir.path().join("small");
    let big = dir.path().join("big");
    peers::write_pseudo_random_file(&small, 11, 3 * MIB)?;
    peers::write_pseudo_random_file(&big, 12, 100 * MIB)?;
    let mut v1 = start_helia(HeliaOptions::default())?;
    let small_v1 = blocking(|| v1.add(&small))?;
    let big_v1 = blocking(|| v1.add(&big))?;
    assert!(small_v1.starts_with("bafy"), "Helia adds CIDv1: {small_v1}");
    let mut v0 = start_helia(HeliaOptions {
        profile: Some("v0".into()),
        ..HeliaOptions::default()
    })?;
    let small_v0 = blocking(|| v0.add(&small))?;
    assert!(
        small_v0.starts_with("Qm"),
        "--profile v0 adds CIDv0: {small_v0}"
    );

    let ipnix = IpnixNode::start().await?;
    let peer = ipnix.handle().connect(helia_addr(&v1)?).await?;
    assert_eq!(peer.to_string(), v1.peer_id());
    fetch_and_check(&ipnix, &small_v1, &small).await?;
    fetch_and_check(&ipnix, &big_v1, &big).await?;
    ipnix.handle().connect(helia_addr(&v0)?).await?;
    fetch_and_check(&ipnix, &small_v0, &small).await?;
    ipnix.node.shutdown().await;
    Ok(())
}

/// ipnix adds (CIDv1 100 MiB, CIDv0 3 MiB); Helia fetches and reassembles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipnix_to_helia_cidv1_and_cidv0() -> Result<()> {
    ipnix_tests::skip_if!("ipnix_to_helia_cidv1_and_cidv0", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let small = dir.path().join("small");
    let big = dir.path().join("big");
    peers::write_pseudo_random_file(&small, 13, 3 * MIB + 1)?;
    peers::write_pseudo_random_file(&big, 14, 100 * MIB)?;
    let ipnix = IpnixNode::start().await?;
    let small_cid = ipnix.add(&small, Profile::V0_2015).await?;
    let big_cid = ipnix.add(&big, Profile::V1_2025).await?;
    let ipnix_addr = ipnix.addr(false).await?.to_string();
    let mut helia = start_helia(HeliaOptions::default())?;
    blocking(|| helia.connect(&ipnix_addr))?;
    for (cid, source) in [(small_cid, &small), (big_cid, &big)] {
        let out = dir.path().join(format!("out-{cid}"));
        let fetched = blocking(|| helia.fetch(&cid.to_string(), &out, BIG_FETCH))?;
        assert_eq!(
            sha256_file(&out)?,
            sha256_file(source)?,
            "Helia got {cid}: {fetched}"
        );
    }
    ipnix.node.shutdown().await;
    Ok(())
}

/// A raw block each way: Helia `put-block` -> ipnix `get_block`, and a block
/// in ipnix's store -> Helia `get-block` (which checks its SHA-256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_blocks_both_ways() -> Result<()> {
    ipnix_tests::skip_if!("raw_blocks_both_ways", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let theirs = dir.path().join("theirs");
    peers::write_pseudo_random_file(&theirs, 15, 200_000)?;
    let mut helia = start_helia(HeliaOptions::default())?;
    let put = blocking(|| helia.send(&format!("put-block {}", theirs.display())))?;
    let their_cid: Cid = put["cid"].as_str().context("put-block cid")?.parse()?;

    let ipnix = IpnixNode::start().await?;
    ipnix.handle().connect(helia_addr(&helia)?).await?;
    let data = ipnix
        .handle()
        .get_block(their_cid, Duration::from_secs(30))
        .await?;
    assert_eq!(&data[..], &std::fs::read(&theirs)?[..]);

    let ours = peers::pseudo_random_bytes(16, 300_000);
    let our_cid = cid_for(RAW, &ours);
    ipnix.store.put(&our_cid, &ours)?;
    let got = blocking(|| helia.send(&format!("get-block {our_cid}")))?;
    assert_eq!(got["sha256_ok"], true, "{got}");
    assert_eq!(got["bytes"], ours.len(), "{got}");
    ipnix.node.shutdown().await;
    Ok(())
}

/// A Helia with an RSA identity: connect, fetch both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_helia_peer_both_ways() -> Result<()> {
    ipnix_tests::skip_if!("rsa_helia_peer_both_ways", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let theirs = dir.path().join("theirs");
    let ours = dir.path().join("ours");
    peers::write_pseudo_random_file(&theirs, 17, 3 * MIB)?;
    peers::write_pseudo_random_file(&ours, 18, 3 * MIB)?;
    let mut helia = start_helia(HeliaOptions {
        key: Some("rsa".into()),
        ..HeliaOptions::default()
    })?;
    assert!(
        helia.peer_id().starts_with("Qm"),
        "RSA peer id: {}",
        helia.peer_id()
    );
    let their_cid = blocking(|| helia.add(&theirs))?;
    let ipnix = IpnixNode::start().await?;
    let our_cid = ipnix.add(&ours, Profile::V1_2025).await?;
    let peer = ipnix.handle().connect(helia_addr(&helia)?).await?;
    assert_eq!(peer.to_string(), helia.peer_id());
    fetch_and_check(&ipnix, &their_cid, &theirs).await?;
    let out = dir.path().join("out");
    blocking(|| helia.fetch(&our_cid.to_string(), &out, BIG_FETCH))?;
    assert_eq!(sha256_file(&out)?, sha256_file(&ours)?);
    ipnix.node.shutdown().await;
    Ok(())
}

/// Helia's Kademlia on the LAN protocol: `findprovs` finds ipnix for a CID
/// ipnix provides, and ipnix finds Helia for a CID Helia provides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_dht_providers_both_ways() -> Result<()> {
    ipnix_tests::skip_if!("lan_dht_providers_both_ways", skip_reason());
    let ipnix = IpnixNode::start().await?;
    let ipnix_addr = ipnix.addr(false).await?.to_string();
    let mut helia = start_helia(HeliaOptions {
        dht: true,
        dht_protocol: Some(LAN_KAD_PROTOCOL.to_string()),
        ..HeliaOptions::default()
    })?;
    blocking(|| helia.connect(&ipnix_addr))?;
    let handle = ipnix.handle();
    eventually(
        "Helia in ipnix's LAN DHT table",
        Duration::from_secs(20),
        || {
            let handle = handle.clone();
            async move { Ok(handle.stats().await?.lan_dht_peers >= 1) }
        },
    )
    .await?;

    let ours = peers::pseudo_random_bytes(19, 4096);
    let our_cid = cid_for(RAW, &ours);
    ipnix.store.put(&our_cid, &ours)?;
    handle.provide(our_cid).await?;
    let found = blocking(|| helia.send(&format!("findprovs {our_cid}")))?;
    let ids: Vec<&str> = found["providers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        ids.contains(&handle.peer_id().to_string().as_str()),
        "Helia's findprovs should list ipnix: {found}"
    );

    let dir = peers::temp_dir("ipnix-interop-");
    let theirs = dir.path().join("theirs");
    peers::write_pseudo_random_file(&theirs, 20, 5000)?;
    let put = blocking(|| helia.send(&format!("put-block {}", theirs.display())))?;
    let their_cid: Cid = put["cid"].as_str().context("put-block cid")?.parse()?;
    let provided = blocking(|| helia.send(&format!("provide {their_cid}")))?;
    assert_eq!(provided["ok"], true, "{provided}");
    let helia_id = helia.peer_id();
    eventually(
        "ipnix finds Helia as provider",
        Duration::from_secs(30),
        || {
            let handle = handle.clone();
            let helia_id = helia_id.clone();
            async move {
                let found = handle
                    .find_providers(their_cid, 5, Duration::from_secs(10))
                    .await?;
                Ok(found.iter().any(|p| p.to_string() == helia_id))
            }
        },
    )
    .await?;
    ipnix.node.shutdown().await;
    Ok(())
}
