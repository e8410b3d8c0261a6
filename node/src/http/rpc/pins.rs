//! `pin/add|rm|ls` and `repo/stat|gc`. The store keys everything by CIDv1;
//! Kubo answers with the CID as it was pinned (ipfs-cluster looks its CIDv0
//! pins up by their string), so a pin made here with a CIDv0 is remembered
//! in the store index namespace [`V0_NAMESPACE`] and shown as CIDv0 again.

use super::files::network_blocks;
use super::{blocking_json, parse_cid, streamed, Args, Output, RpcError, RpcState};
use axum::response::Response;
use cid::{Cid, Version};
use ipnix_store::{BlockRead, PinMode, Store};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Index namespace: CIDv1 bytes of pins that were made with a CIDv0.
pub const V0_NAMESPACE: &str = "kubo-rpc/pinned-as-cidv0";
/// How often `pin/add?progress=true` reports.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn v1(cid: &Cid) -> Cid {
    match cid.version() {
        Version::V0 => Cid::new_v1(cid.codec(), *cid.hash()),
        Version::V1 => *cid,
    }
}

/// Notes that `cid` was pinned in the CIDv0 form (nothing for CIDv1).
pub(super) fn remember_form(store: &Store, cid: &Cid) -> Result<(), RpcError> {
    if cid.version() == Version::V0 {
        store.index_put(V0_NAMESPACE, &v1(cid).to_bytes(), b"")?;
    }
    Ok(())
}

/// A stored pin's CID in the form it was pinned with.
fn shown(store: &Store, pinned: &Cid) -> Result<String, RpcError> {
    if store.index_get(V0_NAMESPACE, &pinned.to_bytes())?.is_some() {
        if let Ok(v0) = Cid::new_v0(*pinned.hash()) {
            return Ok(v0.to_string());
        }
    }
    Ok(pinned.to_string())
}

pub(super) async fn pin_add(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let cids = args
        .positional()
        .into_iter()
        .map(parse_cid)
        .collect::<Result<Vec<_>, _>>()?;
    if cids.is_empty() {
        return Err(RpcError::bad("argument \"ipfs-path\" is required"));
    }
    let recursive = args.bool(&["recursive", "r"], true)?;
    let progress = args.bool(&["progress"], false)?;
    let name = args.get(&["name"]).map(str::to_string);
    let mode = if recursive {
        PinMode::Recursive
    } else {
        PinMode::Direct
    };
    let runtime = tokio::runtime::Handle::current();
    let work = move |sink: Option<&mut super::Sink>| -> Result<Value, RpcError> {
        let fetched = Arc::new(AtomicU64::new(0));
        let mut sink = sink;
        for cid in &cids {
            match (&state.node, mode) {
                (Some(node), PinMode::Recursive) => {
                    let counter = fetched.clone();
                    let options = crate::fetch::FetchOptions {
                        pin: Some((mode, name.clone())),
                        progress: Some(Arc::new(move |p: &crate::fetch::FetchProgress| {
                            counter.store(p.fetched_blocks + p.local_blocks, Ordering::Relaxed);
                        })),
                        ..Default::default()
                    };
                    let (done, finished) = std::sync::mpsc::channel();
                    let (node, store, cid) = (node.clone(), state.store.clone(), *cid);
                    runtime.spawn(async move {
                        let _ =
                            done.send(crate::fetch::fetch_dag(&node, store, cid, options).await);
                    });
                    loop {
                        match finished.recv_timeout(PROGRESS_EVERY) {
                            Ok(result) => {
                                result?;
                                break;
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                if let Some(sink) = sink.as_deref_mut() {
                                    sink.line(
                                        &json!({"Progress": fetched.load(Ordering::Relaxed)}),
                                    )?;
                                }
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                                return Err(RpcError::failed("internal: the fetch task stopped"))
                            }
                        }
                    }
                }
                _ => {
                    if mode == PinMode::Direct {
                        network_blocks(&state).read_block(cid)?.ok_or_else(|| {
                            RpcError::failed(format!(
                                "block {cid} is not in the store and no peer provided it"
                            ))
                        })?;
                    }
                    state.store.pin(cid, mode, name.as_deref())?;
                }
            }
            remember_form(&state.store, cid)?;
        }
        if let Some(node) = &state.node {
            node.reprovide();
        }
        let pins: Vec<String> = cids.iter().map(Cid::to_string).collect();
        let mut out = json!({"Pins": pins});
        if progress {
            out["Progress"] = json!(fetched.load(Ordering::Relaxed));
        }
        Ok(out)
    };
    if progress {
        streamed(Output::Ndjson, move |sink| {
            let last = work(Some(&mut *sink))?;
            sink.line(&last)
        })
        .await
    } else {
        blocking_json(move || work(None)).await
    }
}

pub(super) async fn pin_rm(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let cids = args
        .positional()
        .into_iter()
        .map(parse_cid)
        .collect::<Result<Vec<_>, _>>()?;
    if cids.is_empty() {
        return Err(RpcError::bad("argument \"ipfs-path\" is required"));
    }
    let recursive = args.bool(&["recursive", "r"], true)?;
    blocking_json(move || {
        let pins: HashMap<Cid, PinMode> = state
            .store
            .pins()?
            .into_iter()
            .map(|p| (p.cid, p.mode))
            .collect();
        for cid in &cids {
            match pins.get(&v1(cid)) {
                None => {
                    return Err(RpcError::failed(format!(
                        "{cid}: not pinned or pinned indirectly"
                    )))
                }
                Some(PinMode::Recursive) if !recursive => {
                    return Err(RpcError::failed(format!("{cid} is pinned recursively")))
                }
                Some(_) => {}
            }
        }
        for cid in &cids {
            state.store.unpin(cid)?;
            state
                .store
                .index_remove(V0_NAMESPACE, &v1(cid).to_bytes())?;
        }
        let pins: Vec<String> = cids.iter().map(Cid::to_string).collect();
        Ok(json!({"Pins": pins}))
    })
    .await
}

/// Every block under the recursive pins that is not a root itself, with the
/// root it was reached from (local blocks only: a missing one is skipped).
fn indirect(store: &Store, roots: &[Cid]) -> Result<HashMap<Cid, Cid>, RpcError> {
    let mut found: HashMap<Cid, Cid> = HashMap::new();
    let root_set: HashSet<Cid> = roots.iter().copied().collect();
    let mut seen = HashSet::new();
    for root in roots {
        let mut stack = vec![*root];
        while let Some(cid) = stack.pop() {
            if cid.codec() == ipnix_store::block::RAW {
                continue;
            }
            let Some(data) = store.read_block(&cid)? else {
                continue;
            };
            let dag = ipnix_store::links::dag_links(&cid, &data)?;
            for child in dag.children.into_iter().chain(dag.covered) {
                let key = v1(&child);
                if seen.insert(key) {
                    if !root_set.contains(&key) {
                        found.insert(key, *root);
                    }
                    stack.push(key);
                }
            }
        }
    }
    Ok(found)
}

pub(super) async fn pin_ls(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let kind = args.get(&["type", "t"]).unwrap_or("all").to_string();
    if !matches!(kind.as_str(), "all" | "direct" | "indirect" | "recursive") {
        return Err(RpcError::bad(format!(
            "invalid type '{kind}', must be one of {{direct, indirect, recursive, all}}"
        )));
    }
    let wanted = args
        .positional()
        .into_iter()
        .map(parse_cid)
        .collect::<Result<Vec<_>, _>>()?;
    let stream = args.bool(&["stream", "s"], false)?;
    let quiet = args.bool(&["quiet", "q"], false)?;
    let names = args.bool(&["names", "n"], false)?;
    let work = move || -> Result<Vec<(String, String, Option<String>)>, RpcError> {
        let store = &state.store;
        let pins = store.pins()?;
        let by_cid: HashMap<Cid, (PinMode, Option<String>)> = pins
            .iter()
            .map(|p| (p.cid, (p.mode, p.name.clone())))
            .collect();
        let recursive_roots: Vec<Cid> = pins
            .iter()
            .filter(|p| p.mode == PinMode::Recursive)
            .map(|p| p.cid)
            .collect();
        let wants_indirect = matches!(kind.as_str(), "all" | "indirect");
        let mut rows = Vec::new();
        if !wanted.is_empty() {
            let indirect_of = if wants_indirect {
                indirect(store, &recursive_roots)?
            } else {
                HashMap::new()
            };
            for cid in &wanted {
                let row = match by_cid.get(&v1(cid)) {
                    Some((mode, name)) if kind == "all" || kind == mode.as_str() => {
                        Some((mode.as_str().to_string(), name.clone()))
                    }
                    _ => indirect_of.get(&v1(cid)).map(|root| {
                        (
                            format!(
                                "indirect through {}",
                                shown(store, root).unwrap_or_else(|_| root.to_string())
                            ),
                            None,
                        )
                    }),
                };
                let Some((type_, name)) = row else {
                    return Err(RpcError::failed(format!("path '{cid}' is not pinned")));
                };
                rows.push((cid.to_string(), type_, name));
            }
            return Ok(rows);
        }
        for pin in &pins {
            if kind == "all" || kind == pin.mode.as_str() {
                rows.push((
                    shown(store, &pin.cid)?,
                    pin.mode.as_str().to_string(),
                    pin.name.clone(),
                ));
            }
        }
        if wants_indirect {
            let mut indirect: Vec<Cid> = indirect(store, &recursive_roots)?
                .into_keys()
                .filter(|cid| !by_cid.contains_key(cid))
                .collect();
            indirect.sort();
            rows.extend(
                indirect
                    .into_iter()
                    .map(|cid| (cid.to_string(), "indirect".to_string(), None)),
            );
        }
        Ok(rows)
    };
    let row_value = move |type_: String, name: Option<String>| -> Value {
        let mut entry = Map::new();
        if !quiet {
            entry.insert("Type".into(), json!(type_));
        }
        if let Some(name) = name.filter(|n| names && !n.is_empty()) {
            entry.insert("Name".into(), json!(name));
        }
        Value::Object(entry)
    };
    if stream {
        return streamed(Output::Ndjson, move |sink| {
            for (cid, type_, name) in work()? {
                let mut value = row_value(type_, name);
                value["Cid"] = json!(cid);
                sink.line(&value)?;
            }
            Ok(())
        })
        .await;
    }
    blocking_json(move || {
        let mut keys = Map::new();
        for (cid, type_, name) in work()? {
            keys.insert(cid, row_value(type_, name));
        }
        Ok(json!({"Keys": keys}))
    })
    .await
}

pub(super) async fn repo_stat(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let size_only = args.bool(&["size-only"], false)?;
    args.bool(&["human"], false)?;
    blocking_json(move || {
        let stat = state.store.stat()?;
        // No quota of its own: the repo may grow into the free disk space,
        // which is what ipfs-cluster's free-space allocator should see.
        let free = fs2::available_space(state.store.dir()).unwrap_or(0);
        let mut out = json!({"RepoSize": stat.disk_bytes, "StorageMax": stat.disk_bytes + free});
        if !size_only {
            out["NumObjects"] = json!(stat.blocks);
            out["RepoPath"] = json!(state.store.dir().display().to_string());
            out["Version"] = json!(format!("ipnix-store@{}", env!("CARGO_PKG_VERSION")));
        }
        Ok(out)
    })
    .await
}

pub(super) async fn repo_gc(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let quiet = args.bool(&["quiet", "q"], false)?;
    args.bool(&["stream-errors"], false)?;
    args.bool(&["silent"], false)?;
    streamed(Output::Ndjson, move |sink| {
        // The store's GC reports counts; Kubo names every removed block, so
        // the names come from the block lists before and after.
        let before: HashSet<Cid> = if quiet {
            HashSet::new()
        } else {
            state.store.cids()?.into_iter().collect()
        };
        state.store.gc()?;
        if quiet {
            return Ok(());
        }
        let after: HashSet<Cid> = state.store.cids()?.into_iter().collect();
        let mut removed: Vec<&Cid> = before.difference(&after).collect();
        removed.sort();
        for cid in removed {
            sink.line(&json!({"Key": {"/": cid.to_string()}}))?;
        }
        Ok(())
    })
    .await
}
