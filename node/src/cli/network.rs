//! `ipnix id`, `peers`, `stats`, `connect`, `provide` and `findprovs`:
//! questions for the libp2p node (all but `id` need the daemon).

use super::{parse_cid, print_json, Ctx, Io};
use std::time::Duration;

pub fn id(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (peer, addrs) = match (&ctx.node, &ctx.runtime) {
        (Some(node), Some(runtime)) => {
            let addrs = runtime.block_on(node.listen_addrs())?;
            (
                node.peer_id(),
                addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            )
        }
        // Offline, as Kubo: the identity is known, the addresses are not.
        _ => (ctx.repo.identity()?.public().to_peer_id(), Vec::new()),
    };
    print_id(io.stdout, ctx.json, &peer, &addrs)
}

/// `id`'s output; also used offline, where `id` runs without opening the store.
pub fn print_id(
    out: &mut dyn std::io::Write,
    json: bool,
    peer: &libp2p::PeerId,
    addrs: &[String],
) -> anyhow::Result<()> {
    if json {
        print_json(
            out,
            &serde_json::json!({"peer_id": peer.to_string(), "addrs": addrs, "agent": agent()}),
        )
    } else {
        writeln!(out, "{peer}")?;
        for addr in addrs {
            writeln!(out, "{addr}")?;
        }
        Ok(())
    }
}

fn agent() -> String {
    format!("ipnix/{}", env!("CARGO_PKG_VERSION"))
}

pub fn peers(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (node, runtime) = ctx.node()?;
    let peers = runtime.block_on(node.peers())?;
    if ctx.json {
        let list: Vec<_> = peers
            .iter()
            .map(|p| {
                serde_json::json!({
                    "peer_id": p.peer_id.to_string(),
                    "addr": ipnix_node::summary::peer_address(p),
                    "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "agent": p.agent,
                })
            })
            .collect();
        return print_json(io.stdout, &serde_json::json!({"peers": list}));
    }
    for p in &peers {
        writeln!(io.stdout, "{}", ipnix_node::summary::peer_address(p))?;
    }
    Ok(())
}

/// `ipnix stats`: Bitswap's blocks and bytes in and out (what the status
/// page calls bandwidth) and the recent transfers, newest first.
pub fn stats(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    use ipnix_node::bitswap::Direction;
    let (node, runtime) = ctx.node()?;
    let stats = runtime.block_on(node.stats())?;
    let b = &stats.bitswap;
    let way = |d: Direction| match d {
        Direction::In => "in",
        Direction::Out => "out",
    };
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    if ctx.json {
        let transfers: Vec<_> = stats
            .transfers
            .iter()
            .map(|t| {
                serde_json::json!({
                    "direction": way(t.direction), "peer": t.peer.to_string(),
                    "first": t.first.to_string(), "blocks": t.blocks, "bytes": t.bytes,
                    "started": unix(t.started), "last": unix(t.last),
                })
            })
            .collect();
        return print_json(
            io.stdout,
            &serde_json::json!({
                "peers": stats.peers, "connections": stats.connections,
                "blocks_in": b.blocks_received, "bytes_in": b.block_bytes_received,
                "blocks_out": b.blocks_sent, "bytes_out": b.block_bytes_sent,
                "transfers": transfers,
            }),
        );
    }
    writeln!(
        io.stdout,
        "peers: {} ({} connections)",
        stats.peers, stats.connections
    )?;
    writeln!(
        io.stdout,
        "in:  {} bytes in {} blocks",
        b.block_bytes_received, b.blocks_received
    )?;
    writeln!(
        io.stdout,
        "out: {} bytes in {} blocks",
        b.block_bytes_sent, b.blocks_sent
    )?;
    for t in &stats.transfers {
        writeln!(
            io.stdout,
            "{}\t{}\t{}\t{}\t{} blocks\t{} bytes",
            unix(t.last),
            way(t.direction),
            t.peer,
            t.first,
            t.blocks,
            t.bytes
        )?;
    }
    Ok(())
}

pub fn connect(ctx: &Ctx, multiaddr: &str, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (node, runtime) = ctx.node()?;
    let addr: libp2p::Multiaddr = multiaddr
        .parse()
        .map_err(|e| anyhow::anyhow!("{multiaddr:?} is not a multiaddr: {e}"))?;
    let peer = runtime.block_on(node.connect(addr))?;
    if ctx.json {
        print_json(
            io.stdout,
            &serde_json::json!({"connected": peer.to_string()}),
        )
    } else {
        writeln!(io.stdout, "connect {peer} success")?;
        Ok(())
    }
}

pub fn provide(ctx: &Ctx, cid: &str, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (node, runtime) = ctx.node()?;
    let cid = parse_cid(cid)?;
    if !ctx.store.has(&cid)? {
        anyhow::bail!("{cid} is not in the store: only local blocks can be provided");
    }
    runtime.block_on(node.provide(cid))?;
    if ctx.json {
        print_json(io.stdout, &serde_json::json!({"provided": cid.to_string()}))
    } else {
        writeln!(io.stdout, "providing {cid}")?;
        Ok(())
    }
}

pub fn findprovs(ctx: &Ctx, cid: &str, num: usize, io: &mut Io<'_>) -> anyhow::Result<()> {
    let (node, runtime) = ctx.node()?;
    let cid = parse_cid(cid)?;
    let providers = runtime.block_on(node.find_providers(cid, num, Duration::from_secs(30)))?;
    if ctx.json {
        let list: Vec<_> = providers.iter().map(|peer| peer.to_string()).collect();
        return print_json(
            io.stdout,
            &serde_json::json!({"cid": cid.to_string(), "providers": list}),
        );
    }
    for peer in providers {
        writeln!(io.stdout, "{peer}")?;
    }
    Ok(())
}
