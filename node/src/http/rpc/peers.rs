//! `id`, `version`, `swarm/peers`, `swarm/connect` and `routing/findprovs`:
//! the node itself and its peers, in Kubo's JSON shapes.

use super::{json, parse_cid, streamed, Args, Output, RpcError, RpcState};
use crate::net::{Multiaddr, NodeHandle, PeerId};
use axum::response::Response;
use base64::Engine;
use serde_json::{json as value, Value};
use std::sync::Arc;
use std::time::Duration;

/// How long `routing/findprovs` searches at most.
const FINDPROVS_TIMEOUT: Duration = Duration::from_secs(30);
/// Kubo's routing event type for a provider record.
const EVENT_PROVIDER: u8 = 4;

/// The protocols this node speaks (what identify announces).
const PROTOCOLS: &[&str] = &[
    "/ipfs/bitswap",
    "/ipfs/bitswap/1.0.0",
    "/ipfs/bitswap/1.1.0",
    "/ipfs/bitswap/1.2.0",
    "/ipfs/id/1.0.0",
    "/ipfs/lan/kad/1.0.0",
    "/ipfs/ping/1.0.0",
    "/ipnix/pathinfo/1.0.0",
    "/ipnix/source/1.0.0",
];

fn agent() -> String {
    format!("ipnix/{}", env!("CARGO_PKG_VERSION"))
}

fn node(state: &RpcState) -> Result<&NodeHandle, RpcError> {
    state
        .node
        .as_ref()
        .ok_or_else(|| RpcError::failed("this command must be run in online mode"))
}

/// The libp2p public key (protobuf, base64) a peer id carries inline:
/// Ed25519 ids do (identity multihash); RSA ids only hash it (empty).
fn public_key(peer: &PeerId) -> String {
    let multihash = peer.as_ref();
    if multihash.code() == 0 {
        base64::engine::general_purpose::STANDARD.encode(multihash.digest())
    } else {
        String::new()
    }
}

pub(super) async fn id(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let node = node(&state)?;
    let me = node.peer_id();
    let asked = match args.positional().first() {
        Some(text) => Some(
            text.parse::<PeerId>()
                .map_err(|e| RpcError::failed(format!("invalid peer id {text:?}: {e}")))?,
        ),
        None => None,
    };
    if let Some(peer) = asked.filter(|peer| *peer != me) {
        let peers = node.peers().await?;
        let info = peers
            .into_iter()
            .find(|p| p.peer_id == peer)
            .ok_or_else(|| {
                RpcError::failed(format!(
                    "{peer} is not connected (ipnix answers id for connected peers only)"
                ))
            })?;
        return Ok(json(&value!({
            "ID": peer.to_string(),
            "PublicKey": public_key(&peer),
            "Addresses": info.addrs.iter().map(|a| format!("{a}/p2p/{peer}")).collect::<Vec<_>>(),
            "AgentVersion": info.agent.unwrap_or_default(),
            "ProtocolVersion": "ipfs/0.1.0",
            "Protocols": info.protocols,
        })));
    }
    let addrs: Vec<String> = node
        .listen_addrs()
        .await?
        .iter()
        .map(Multiaddr::to_string)
        .collect();
    Ok(json(&value!({
        "ID": me.to_string(),
        "PublicKey": public_key(&me),
        "Addresses": addrs,
        "AgentVersion": agent(),
        "ProtocolVersion": "ipfs/0.1.0",
        "Protocols": PROTOCOLS,
    })))
}

pub(super) fn version(args: Args) -> Result<Response, RpcError> {
    args.bool(&["all"], false)?;
    Ok(json(&value!({
        "Version": env!("CARGO_PKG_VERSION"),
        "Commit": "",
        "Repo": "ipnix",
        "System": format!("{}/{}", std::env::consts::ARCH, std::env::consts::OS),
        "Golang": "",
        "Implementation": "ipnix",
    })))
}

pub(super) async fn swarm_peers(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    args.bool(&["verbose", "v"], false)?;
    let peers = node(&state)?.peers().await?;
    let entries: Vec<Value> = peers
        .iter()
        .flat_map(|p| {
            p.addrs
                .iter()
                .map(move |addr| value!({"Addr": addr.to_string(), "Peer": p.peer_id.to_string()}))
        })
        .collect();
    // Kubo answers null, not [], when no peer is connected.
    let entries = if entries.is_empty() {
        Value::Null
    } else {
        Value::Array(entries)
    };
    Ok(json(&value!({"Peers": entries})))
}

pub(super) async fn swarm_connect(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let addrs = args.positional();
    if addrs.is_empty() {
        return Err(RpcError::bad("argument \"address\" is required"));
    }
    let node = node(&state)?;
    let mut lines = Vec::new();
    for text in addrs {
        let addr: Multiaddr = text
            .parse()
            .map_err(|e| RpcError::failed(format!("invalid multiaddr {text:?}: {e}")))?;
        let named = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        match node.connect(addr).await {
            Ok(peer) => lines.push(format!("connect {peer} success")),
            Err(e) => {
                let who = named
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| text.to_string());
                return Err(RpcError::failed(format!("connect {who} failure: {e}")));
            }
        }
    }
    Ok(json(&value!({"Strings": lines})))
}

pub(super) async fn findprovs(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let cid = parse_cid(args.required("key")?)?;
    let limit = match args.int(&["num-providers", "n"])? {
        None => 20,
        Some(n) if n > 0 => n as usize,
        Some(_) => return Err(RpcError::bad("number of providers must be greater than 0")),
    };
    args.bool(&["verbose", "v"], false)?;
    let node = node(&state)?.clone();
    let providers = node.find_providers(cid, limit, FINDPROVS_TIMEOUT).await?;
    let connected = node.peers().await.unwrap_or_default();
    streamed(Output::Ndjson, move |sink| {
        for peer in providers {
            let addrs: Vec<String> = connected
                .iter()
                .filter(|p| p.peer_id == peer)
                .flat_map(|p| p.addrs.iter().map(Multiaddr::to_string))
                .collect();
            sink.line(&value!({
                "Extra": "",
                "ID": "",
                "Responses": [{"Addrs": addrs, "ID": peer.to_string()}],
                "Type": EVENT_PROVIDER,
            }))?;
        }
        Ok(())
    })
    .await
}
