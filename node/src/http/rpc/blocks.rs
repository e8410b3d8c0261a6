//! `block/get|put|stat`, `dag/export|import` and `refs`: raw blocks, CAR
//! files and DAG walks, with Kubo's output shapes. Uploaded blocks and CARs
//! stream from the multipart body into a store session (CID checked on the
//! way in), never into memory whole.

use super::files::network_blocks;
use super::{multipart, multipart_error, parse_cid, streamed, Args, Output, RpcError, RpcState};
use axum::body::Bytes;
use axum::extract::Request;
use axum::response::Response;
use cid::Cid;
use ipnix_store::block::{self, MAX_BLOCK_SIZE};
use ipnix_store::{car, BlockRead, PinMode};
use serde_json::json;
use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunks of an uploaded file in flight to the importing thread.
const INPUT_DEPTH: usize = 8;
/// Kubo's `refs` default format.
const DEFAULT_REFS_FORMAT: &str = "<dst>";
/// Deepest DAG `refs` walks (each level is a frame on the walk's stack).
const MAX_REFS_DEPTH: usize = 4096;

fn missing(cid: &Cid) -> RpcError {
    RpcError::failed(format!(
        "block {cid} is not in the store and no peer provided it"
    ))
}

pub(super) async fn block_get(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let cid = parse_cid(args.required("cid")?)?;
    streamed(Output::Raw("text/plain"), move |sink| {
        let data = network_blocks(&state)
            .read_block(&cid)?
            .ok_or_else(|| missing(&cid))?;
        std::io::Write::write_all(sink, &data)?;
        Ok(())
    })
    .await
}

pub(super) async fn block_stat(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let cid = parse_cid(args.required("cid")?)?;
    super::blocking_json(move || {
        let size = match state.store.block_size(&cid)? {
            Some(size) => size,
            None => network_blocks(&state)
                .read_block(&cid)?
                .ok_or_else(|| missing(&cid))?
                .len() as u64,
        };
        Ok(json!({"Key": cid.to_string(), "Size": size}))
    })
    .await
}

/// The codec of `block/put`: `cid-codec`, else the deprecated `format`.
fn put_codec(args: &Args) -> Result<(u64, bool), RpcError> {
    if let Some(mhtype) = args.get(&["mhtype"]) {
        if mhtype != "sha2-256" {
            return Err(RpcError::bad(format!(
                "mhtype {mhtype:?}: ipnix hashes blocks with sha2-256 only"
            )));
        }
    }
    if let Some(len) = args.int(&["mhlen"])? {
        if len != -1 && len != 32 {
            return Err(RpcError::bad(format!(
                "mhlen {len}: sha2-256 digests are 32 bytes"
            )));
        }
    }
    let (name, v0) = match (args.get(&["cid-codec"]), args.get(&["format", "f"])) {
        (Some(codec), _) if !codec.is_empty() => (codec, false),
        (_, Some("v0")) => ("dag-pb", true),
        (_, Some("protobuf")) => ("dag-pb", false),
        (_, Some("cbor")) => ("dag-cbor", false),
        (_, Some(format)) if !format.is_empty() => (format, false),
        _ => ("raw", false),
    };
    let codec = match name {
        "raw" => block::RAW,
        "dag-pb" => block::DAG_PB,
        "dag-cbor" => block::DAG_CBOR,
        "git-raw" => block::GIT_RAW,
        other => {
            return Err(RpcError::bad(format!(
                "cid-codec {other:?}: ipnix stores raw, dag-pb, dag-cbor and git-raw blocks"
            )))
        }
    };
    Ok((codec, v0))
}

pub(super) async fn block_put(
    state: Arc<RpcState>,
    args: Args,
    request: Request,
) -> Result<Response, RpcError> {
    let (codec, v0) = put_codec(&args)?;
    let pin = args.bool(&["pin"], false)?;
    let mut body = multipart(&state, request).await?;
    // Blocks are small (MAX_BLOCK_SIZE): each is read whole, and at most
    // BATCH of them are held before they are stored.
    const BATCH: usize = 16;
    let mut pending: Vec<(Cid, Vec<u8>)> = Vec::new();
    let mut stored: Vec<(String, usize)> = Vec::new();
    loop {
        let mut field = match body.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(&state, e)),
        };
        let mut data = Vec::new();
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    data.extend_from_slice(&chunk);
                    if data.len() > MAX_BLOCK_SIZE {
                        return Err(RpcError::failed(format!(
                            "produced block is over {MAX_BLOCK_SIZE} bytes: a block is at most that; use add for larger data"
                        )));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(multipart_error(&state, e)),
            }
        }
        let cid = block::cid_for(codec, &data);
        let cid = if v0 {
            Cid::new_v0(*cid.hash()).map_err(RpcError::failed)?
        } else {
            cid
        };
        pending.push((cid, data));
        if pending.len() >= BATCH {
            stored.extend(store_blocks(&state, std::mem::take(&mut pending), pin).await?);
        }
    }
    stored.extend(store_blocks(&state, pending, pin).await?);
    if stored.is_empty() {
        return Err(RpcError::bad(
            "argument \"data\" is required (a multipart part per block)",
        ));
    }
    // Kubo streams one {"Key","Size"} object per block.
    let mut lines = String::new();
    for (cid, size) in stored {
        lines.push_str(&json!({"Key": cid, "Size": size}).to_string());
        lines.push('\n');
    }
    Ok(ndjson_response(lines))
}

fn ndjson_response(body: String) -> Response {
    use axum::http::{header, HeaderValue};
    use axum::response::IntoResponse;
    let mut response = (axum::http::StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert("x-chunked-output", HeaderValue::from_static("1"));
    response
}

async fn store_blocks(
    state: &Arc<RpcState>,
    blocks: Vec<(Cid, Vec<u8>)>,
    pin: bool,
) -> Result<Vec<(String, usize)>, RpcError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for (cid, data) in blocks {
            let mut session = state.store.session();
            session.put(cid, &data)?;
            let pinned = pin.then_some((cid, PinMode::Direct, None));
            session.finish(pinned)?;
            if pin {
                super::pins::remember_form(&state.store, &cid)?;
            }
            out.push((cid.to_string(), data.len()));
        }
        Ok::<_, RpcError>(out)
    })
    .await
    .map_err(|e| RpcError::failed(format!("internal: {e}")))?
}

pub(super) async fn dag_export(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let cid = parse_cid(args.required("root")?)?;
    args.bool(&["progress", "p"], false)?;
    streamed(Output::Raw("application/vnd.ipld.car"), move |sink| {
        let blocks = network_blocks(&state);
        car::export(&blocks, &cid, sink)?;
        Ok(())
    })
    .await
}

pub(super) async fn dag_import(
    state: Arc<RpcState>,
    args: Args,
    request: Request,
) -> Result<Response, RpcError> {
    let pin_roots = args.bool(&["pin-roots"], true)?;
    let stats = args.bool(&["stats"], false)?;
    args.bool(&["silent"], false)?;
    let mut body = multipart(&state, request).await?;
    let (chunks, received) = mpsc::channel::<Result<Bytes, RpcError>>(INPUT_DEPTH);
    let reader_state = state.clone();
    // The first part is the CAR (Kubo takes each part as a CAR of its own;
    // ipnix imports the first only).
    tokio::spawn(async move {
        let mut field = match body.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return,
            Err(e) => {
                let _ = chunks.send(Err(multipart_error(&reader_state, e))).await;
                return;
            }
        };
        loop {
            let next = match field.chunk().await {
                Ok(Some(chunk)) => Ok(chunk),
                Ok(None) => return,
                Err(e) => Err(multipart_error(&reader_state, e)),
            };
            let failed = next.is_err();
            if chunks.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    streamed(Output::Ndjson, move |sink| {
        let mut reader = ChunkReader {
            chunks: received,
            current: Bytes::new(),
            failure: None,
        };
        let mut session = state.store.session();
        let imported = match car::import(&mut session, &mut reader) {
            Ok(imported) => imported,
            Err(e) => return Err(reader.failure.take().unwrap_or_else(|| e.into())),
        };
        session.finish(None)?;
        let mut failures = 0;
        for root in &imported.roots {
            let message = if pin_roots {
                match state.store.pin(root, PinMode::Recursive, None) {
                    Ok(()) => {
                        super::pins::remember_form(&state.store, root)?;
                        String::new()
                    }
                    Err(e) => {
                        failures += 1;
                        format!("pinning root {root}: {e}")
                    }
                }
            } else {
                String::new()
            };
            sink.line(&json!({"Root": {"Cid": {"/": root.to_string()}, "PinErrorMsg": message}}))?;
        }
        if stats {
            sink.line(&json!({"Stats": {"BlockCount": imported.blocks, "BlockBytesCount": imported.bytes}}))?;
        }
        if pin_roots {
            if let Some(node) = &state.node {
                node.reprovide();
            }
        }
        if failures > 0 {
            return Err(RpcError::failed(format!(
                "unable to pin all roots: {failures} out of {} failed",
                imported.roots.len()
            )));
        }
        Ok(())
    })
    .await
}

/// Reads uploaded bytes from the body reader task.
struct ChunkReader {
    chunks: mpsc::Receiver<Result<Bytes, RpcError>>,
    current: Bytes,
    failure: Option<RpcError>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => {
                    let text = e.to_string();
                    self.failure = Some(e);
                    return Err(std::io::Error::other(text));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// `refs`: the links under each argument, as Kubo prints them.
pub(super) async fn refs(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let roots = args
        .positional()
        .into_iter()
        .map(parse_cid)
        .collect::<Result<Vec<_>, _>>()?;
    if roots.is_empty() {
        return Err(RpcError::bad("argument \"ipfs-path\" is required"));
    }
    let recursive = args.bool(&["recursive", "r"], false)?;
    let unique = args.bool(&["unique", "u"], false)?;
    let edges = args.bool(&["edges", "e"], false)?;
    let format = args.get(&["format"]).map(str::to_string);
    if edges && format.as_deref().is_some_and(|f| f != DEFAULT_REFS_FORMAT) {
        return Err(RpcError::bad(
            "using format argument with edges is not allowed",
        ));
    }
    let format = match (edges, format) {
        (true, _) => "<src> -> <dst>".to_string(),
        (false, Some(format)) => format,
        (false, None) => DEFAULT_REFS_FORMAT.to_string(),
    };
    let max_depth = match args.int(&["max-depth"])? {
        Some(depth) if depth >= 0 => Some(depth as usize),
        _ if recursive => None,
        _ => Some(1),
    };
    streamed(Output::Ndjson, move |sink| {
        let blocks = network_blocks(&state);
        let mut seen = HashSet::new();
        for root in roots {
            walk_refs(&blocks, root, max_depth, unique, &mut seen, |src, dst| {
                let line = format
                    .replace("<src>", &src.to_string())
                    .replace("<dst>", &dst.to_string())
                    .replace("<linkname>", "");
                sink.line(&json!({"Ref": line, "Err": ""}))
            })?;
        }
        Ok(())
    })
    .await
}

/// Depth-first over the links of `root` in link order, as Kubo's refs
/// walks: an edge is reported before the walk descends into it; `unique`
/// skips (and does not descend into) a CID already reported.
fn walk_refs(
    blocks: &dyn BlockRead,
    root: Cid,
    max_depth: Option<usize>,
    unique: bool,
    seen: &mut HashSet<Cid>,
    mut edge: impl FnMut(&Cid, &Cid) -> Result<(), RpcError>,
) -> Result<(), RpcError> {
    let children = |cid: &Cid| -> Result<Vec<Cid>, RpcError> {
        if cid.codec() == block::RAW {
            return Ok(Vec::new());
        }
        let data = blocks.read_block(cid)?.ok_or_else(|| missing(cid))?;
        Ok(ipnix_store::links::dag_links(cid, &data)?.children)
    };
    // Frames: (parent, its remaining children in reverse, depth of the children).
    let mut stack: Vec<(Cid, Vec<Cid>, usize)> = Vec::new();
    let mut first = children(&root)?;
    first.reverse();
    stack.push((root, first, 1));
    while let Some((parent, pending, depth)) = stack.last_mut() {
        let Some(child) = pending.pop() else {
            stack.pop();
            continue;
        };
        let (parent, depth) = (*parent, *depth);
        if unique && !seen.insert(child) {
            continue;
        }
        edge(&parent, &child)?;
        if max_depth.is_some_and(|max| depth >= max) {
            continue;
        }
        if stack.len() >= MAX_REFS_DEPTH {
            return Err(RpcError::failed(format!(
                "DAG under {root} deeper than {MAX_REFS_DEPTH} levels"
            )));
        }
        let mut grandchildren = children(&child)?;
        grandchildren.reverse();
        stack.push((child, grandchildren, depth + 1));
    }
    Ok(())
}
