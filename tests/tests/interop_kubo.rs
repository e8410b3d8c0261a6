//! ipnix's network layer (library-level `Node`, `fetch_dag`, the LAN DHT)
//! against a real Kubo 0.22: files of 3 MiB and 100 MiB in both directions,
//! CIDv0 (Kubo's default) and CIDv1, TCP and QUIC, Ed25519 and RSA peer ids,
//! and providers found through Kubo's LAN DHT (`/ipfs/lan/kad/1.0.0`).
//! Run under `../shared/peers/sandbox` (otherwise: SKIP).

mod net_common;

use anyhow::{Context, Result};
use ipnix_node::net::Multiaddr;
use ipnix_store::unixfs::Profile;
use ipnix_store::Cid;
use ipnix_tests::peers::{self, KuboKey, KuboOptions, KuboPeer};
use net_common::{blocking, eventually, sha256_file, IpnixNode, MIB};
use std::path::Path;
use std::time::Duration;

const BIG_FETCH: Duration = Duration::from_secs(600);

fn skip_reason() -> Option<String> {
    peers::kubo_unusable()
}

fn kubo_addr(kubo: &KuboPeer, quic: bool) -> Result<Multiaddr> {
    let addr = kubo
        .dial_addrs()
        .into_iter()
        .find(|a| a.contains("/quic-v1") == quic && (quic || a.contains("/tcp/")))
        .context("Kubo has no address of that transport")?;
    Ok(addr.parse()?)
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

/// Kubo adds (CIDv0, 256 KiB dag-pb leaves); ipnix fetches over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubo_to_ipnix_3_and_100_mib_over_tcp() -> Result<()> {
    ipnix_tests::skip_if!("kubo_to_ipnix_3_and_100_mib_over_tcp", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let small = dir.path().join("small");
    let big = dir.path().join("big");
    peers::write_pseudo_random_file(&small, 1, 3 * MIB)?;
    peers::write_pseudo_random_file(&big, 2, 100 * MIB)?;
    let mut kubo = blocking(|| KuboPeer::start(KuboOptions::default()))?;
    let small_cid = blocking(|| kubo.add(&small))?;
    let big_cid = blocking(|| kubo.add(&big))?;
    assert!(
        small_cid.starts_with("Qm"),
        "Kubo 0.22 adds CIDv0: {small_cid}"
    );

    let ipnix = IpnixNode::start().await?;
    // Same bytes, same profile, same CID: ipnix's importer matches Kubo's.
    assert_eq!(
        ipnix.add(&small, Profile::V0_2015).await?.to_string(),
        small_cid
    );
    ipnix.store.unpin(&small_cid.parse()?)?;
    ipnix.store.gc()?;

    let peer = ipnix.handle().connect(kubo_addr(&kubo, false)?).await?;
    assert_eq!(peer.to_string(), kubo.peer_id());
    fetch_and_check(&ipnix, &small_cid, &small).await?;
    fetch_and_check(&ipnix, &big_cid, &big).await?;

    let info = ipnix
        .handle()
        .peers()
        .await?
        .into_iter()
        .find(|p| p.peer_id == peer)
        .context("Kubo is connected")?;
    let agent = info.agent.unwrap_or_default();
    assert!(agent.starts_with("kubo/"), "identify agent: {agent}");
    ipnix.node.shutdown().await;
    Ok(())
}

/// ipnix adds (CIDv0 3 MiB; CIDv1 raw-leaves 100 MiB); Kubo fetches over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipnix_to_kubo_cidv0_and_cidv1_over_tcp() -> Result<()> {
    ipnix_tests::skip_if!("ipnix_to_kubo_cidv0_and_cidv1_over_tcp", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let small = dir.path().join("small");
    let big = dir.path().join("big");
    peers::write_pseudo_random_file(&small, 3, 3 * MIB)?;
    peers::write_pseudo_random_file(&big, 4, 100 * MIB)?;
    let ipnix = IpnixNode::start().await?;
    let small_cid = ipnix.add(&small, Profile::V0_2015).await?;
    let big_cid = ipnix.add(&big, Profile::V1_2025).await?;
    assert_eq!(small_cid.version(), cid::Version::V0);
    assert_eq!(big_cid.version(), cid::Version::V1);

    let ipnix_addr = ipnix.addr(false).await?.to_string();
    let mut kubo = blocking(|| KuboPeer::start(KuboOptions::default()))?;
    blocking(|| kubo.connect(&ipnix_addr))?;
    for (cid, source) in [(small_cid, &small), (big_cid, &big)] {
        let out = dir.path().join(format!("out-{cid}"));
        let fetched = blocking(|| kubo.fetch(&cid.to_string(), &out, BIG_FETCH))?;
        assert_eq!(
            sha256_file(&out)?,
            sha256_file(source)?,
            "Kubo got {cid}: {fetched}"
        );
    }
    let stats = ipnix.handle().stats().await?;
    assert!(stats.bitswap.blocks_sent >= 100, "{stats:?}");
    ipnix.node.shutdown().await;
    Ok(())
}

/// An RSA-identity Kubo over QUIC, both directions on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_kubo_over_quic_both_ways() -> Result<()> {
    ipnix_tests::skip_if!("rsa_kubo_over_quic_both_ways", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let theirs = dir.path().join("theirs");
    let ours = dir.path().join("ours");
    peers::write_pseudo_random_file(&theirs, 5, 3 * MIB)?;
    peers::write_pseudo_random_file(&ours, 6, 3 * MIB + 4321)?;
    let mut kubo = blocking(|| {
        KuboPeer::start(KuboOptions {
            quic: true,
            key: KuboKey::Rsa,
            ..KuboOptions::default()
        })
    })?;
    assert!(
        kubo.peer_id().starts_with("Qm"),
        "RSA peer ids are sha256 multihashes"
    );
    let their_cid = blocking(|| kubo.add(&theirs))?;

    let ipnix = IpnixNode::start().await?;
    let our_cid = ipnix.add(&ours, Profile::V1_2025).await?;
    let peer = ipnix.handle().connect(kubo_addr(&kubo, true)?).await?;
    assert_eq!(peer.to_string(), kubo.peer_id());
    let connection = ipnix.handle().peers().await?;
    assert!(
        connection.iter().any(
            |p| p.peer_id == peer && p.addrs.iter().any(|a| a.to_string().contains("/quic-v1"))
        ),
        "connected over QUIC: {connection:?}"
    );
    fetch_and_check(&ipnix, &their_cid, &theirs).await?;

    // Kubo fetches from us on the connection we opened.
    let out = dir.path().join("out");
    blocking(|| kubo.fetch(&our_cid.to_string(), &out, BIG_FETCH))?;
    assert_eq!(sha256_file(&out)?, sha256_file(&ours)?);
    ipnix.node.shutdown().await;
    Ok(())
}

/// Kubo announces what it adds on its LAN DHT; ipnix's DHT lookup finds it,
/// and a second ipnix node that only knows the first fetches the file from
/// Kubo through the providers it finds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipnix_finds_kubo_as_provider_on_the_lan_dht() -> Result<()> {
    ipnix_tests::skip_if!("ipnix_finds_kubo_as_provider_on_the_lan_dht", skip_reason());
    let dir = peers::temp_dir("ipnix-interop-");
    let file = dir.path().join("file");
    peers::write_pseudo_random_file(&file, 7, MIB / 2)?;
    let ipnix = IpnixNode::start().await?;
    let ipnix_addr = ipnix.addr(false).await?.to_string();
    let mut kubo = blocking(|| {
        KuboPeer::start(KuboOptions {
            extra_args: vec!["--connect".into(), ipnix_addr],
            ..KuboOptions::default()
        })
    })?;
    let handle = ipnix.handle();
    eventually(
        "Kubo in ipnix's LAN DHT table",
        Duration::from_secs(20),
        || {
            let handle = handle.clone();
            async move { Ok(handle.stats().await?.lan_dht_peers >= 1) }
        },
    )
    .await?;
    let cid: Cid = blocking(|| kubo.add(&file))?.parse()?;
    let kubo_id = kubo.peer_id();
    eventually(
        "ipnix finds Kubo as provider",
        Duration::from_secs(60),
        || {
            let handle = handle.clone();
            let kubo_id = kubo_id.clone();
            async move {
                let found = handle
                    .find_providers(cid, 5, Duration::from_secs(10))
                    .await?;
                Ok(found.iter().any(|p| p.to_string() == kubo_id))
            }
        },
    )
    .await?;

    let other = IpnixNode::start().await?;
    other.handle().connect(ipnix.addr(false).await?).await?;
    eventually(
        "the first node in the second's table",
        Duration::from_secs(20),
        || {
            let handle = other.handle();
            async move { Ok(handle.stats().await?.lan_dht_peers >= 1) }
        },
    )
    .await?;
    fetch_and_check(&other, &cid.to_string(), &file).await?;
    assert!(
        other
            .handle()
            .peers()
            .await?
            .iter()
            .any(|p| p.peer_id.to_string() == kubo.peer_id()),
        "the second node connected to Kubo, found through the DHT"
    );
    other.node.shutdown().await;
    ipnix.node.shutdown().await;
    Ok(())
}
