//! `add`, `cat` and `get`: UnixFS in and out, with Kubo's options and CIDs.
//!
//! `add` reads the multipart body as Kubo's go-ipfs-files does (a part per
//! file, `application/x-directory` parts for directories, the percent-encoded
//! path in `filename`), streams every file straight into the importer (a
//! bounded channel between the body and the importing thread: memory holds
//! a few chunks, never a file), builds the directories once every file is
//! in, and commits and pins in the same session's last transaction, so a
//! failed or cut-off upload leaves nothing pinned. Each top-level entry is
//! its own root (pinned separately, as Kubo adds them) unless
//! `wrap-with-directory` puts them all in one.

use super::{multipart, multipart_error, streamed, Args, Output, RpcError, RpcState, Sink};
use axum::body::Bytes;
use axum::extract::Request;
use axum::response::Response;
use cid::Cid;
use ipnix_store::unixfs::{self, Added, DirLink, NodeKind, Params};
use ipnix_store::{BlockRead, BlockWrite, NullBlocks, PinMode, Session, StoreError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Kubo's default chunker: `size-262144`.
const DEFAULT_CHUNK: usize = 256 * 1024;
/// The largest chunk Kubo's chunker accepts.
const MAX_CHUNK: usize = 1024 * 1024;
/// Kubo's links per file node.
const DEFAULT_FILE_LINKS: usize = 174;
/// Path components a part name may have; deeper trees are refused.
const MAX_PATH_DEPTH: usize = 256;
/// A symlink part's target, at most.
const MAX_SYMLINK: usize = 4096;
/// Parts of the body in flight to the importer.
const INPUT_DEPTH: usize = 8;
/// A progress event at least this often, in bytes read.
const PROGRESS_STEP: u64 = 256 * 1024;

/// `add`'s options, as Kubo names and defaults them.
#[derive(Debug, Clone)]
struct AddOptions {
    params: Params,
    pin: bool,
    pin_name: Option<String>,
    progress: bool,
    only_hash: bool,
    wrap: bool,
}

impl AddOptions {
    fn parse(args: &Args) -> Result<Self, RpcError> {
        let cid_version = match args.int(&["cid-version"])? {
            None | Some(0) => 0u8,
            Some(1) => 1,
            Some(other) => {
                return Err(RpcError::bad(format!(
                    "unknown CID version {other} (0 or 1)"
                )))
            }
        };
        // Kubo: --cid-version=1 implies --raw-leaves unless it is given.
        let raw_leaves = args.bool_opt(&["raw-leaves"])?.unwrap_or(cid_version == 1);
        let chunk_size = match args.get(&["chunker", "s"]) {
            None | Some("") | Some("default") => DEFAULT_CHUNK,
            Some(spec) => parse_chunker(spec)?,
        };
        let max_links = match args.int(&["max-file-links"])? {
            None => DEFAULT_FILE_LINKS,
            Some(n) if (2..=8192).contains(&n) => n as usize,
            Some(n) => return Err(RpcError::bad(format!("max-file-links {n}: 2..=8192"))),
        };
        if let Some(hash) = args.get(&["hash"]) {
            if hash != "sha2-256" {
                return Err(RpcError::bad(format!(
                    "hash {hash:?}: ipnix adds with sha2-256 only"
                )));
            }
        }
        for (names, what) in [
            (&["trickle", "t"][..], "the trickle layout"),
            (&["inline"][..], "inline CIDs"),
            (&["nocopy"][..], "the filestore (nocopy)"),
            (&["fscache"][..], "the filestore (fscache)"),
            (&["preserve-mode"][..], "preserve-mode"),
            (&["preserve-mtime"][..], "preserve-mtime"),
        ] {
            if args.bool(names, false)? {
                return Err(RpcError::bad(format!(
                    "{} ({what}) is not supported by ipnix",
                    names[0]
                )));
            }
        }
        if args.get(&["to-files"]).is_some_and(|v| !v.is_empty()) {
            return Err(RpcError::bad("to-files (MFS) is not supported by ipnix"));
        }
        let params = Params {
            cid_version,
            raw_leaves,
            chunk_size,
            max_links,
        };
        params.check().map_err(|e| RpcError::bad(e.to_string()))?;
        // quiet, quieter, silent and hidden only change what Kubo's own CLI
        // prints; over HTTP Kubo sends every event, and so does this.
        for flag in ["quiet", "q", "quieter", "Q", "silent", "hidden", "H"] {
            args.bool(&[flag], false)?;
        }
        Ok(AddOptions {
            params,
            pin: args.bool(&["pin"], true)?,
            pin_name: args.get(&["pin-name"]).map(str::to_string),
            progress: args.bool(&["progress", "p"], false)?,
            only_hash: args.bool(&["only-hash", "n"], false)?,
            wrap: args.bool(&["wrap-with-directory", "w"], false)?,
        })
    }
}

/// `size-N`, the only chunker ipnix has.
fn parse_chunker(spec: &str) -> Result<usize, RpcError> {
    let Some(size) = spec.strip_prefix("size-") else {
        return Err(RpcError::bad(format!(
            "chunker {spec:?}: ipnix has the fixed-size chunker only (size-N)"
        )));
    };
    match size.parse::<usize>() {
        Ok(0) | Err(_) => Err(RpcError::bad(format!("chunker {spec:?}: bad size"))),
        Ok(n) if n > MAX_CHUNK => Err(RpcError::bad(format!(
            "chunker parameters may not exceed the maximum chunk size of {MAX_CHUNK}"
        ))),
        Ok(n) => Ok(n),
    }
}

/// One event of `add`'s output, Kubo's `AddEvent`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct AddEvent {
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hash: String,
    #[serde(skip_serializing_if = "is_zero")]
    bytes: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    size: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl AddEvent {
    fn added(name: &str, added: &Added) -> Self {
        AddEvent {
            // Kubo names a nameless add (piped, or a part without filename) by its CID.
            name: if name.is_empty() {
                added.cid.to_string()
            } else {
                name.to_string()
            },
            hash: added.cid.to_string(),
            bytes: 0,
            size: added.tsize.to_string(),
        }
    }
}

/// What the body reader hands the importer.
enum Input {
    File(String),
    Dir(String),
    Symlink(String, Vec<u8>),
    Chunk(Bytes),
    EndFile,
    Failed(RpcError),
}

pub(super) async fn add(
    state: Arc<RpcState>,
    args: Args,
    request: Request,
) -> Result<Response, RpcError> {
    let options = AddOptions::parse(&args)?;
    let body = multipart(&state, request).await?;
    let (inputs, received) = mpsc::channel(INPUT_DEPTH);
    tokio::spawn(read_parts(state.clone(), body, inputs));
    streamed(Output::Ndjson, move |sink| {
        import(&state, &options, received, sink)
    })
    .await
}

/// Turns the multipart body into [`Input`]s; stops when the importer does.
async fn read_parts(
    state: Arc<RpcState>,
    mut body: axum::extract::Multipart,
    inputs: mpsc::Sender<Input>,
) {
    loop {
        let mut field = match body.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => return,
            Err(e) => {
                let _ = inputs.send(Input::Failed(multipart_error(&state, e))).await;
                return;
            }
        };
        let path = match part_path(field.file_name().or(field.name()).unwrap_or_default()) {
            Ok(path) => path,
            Err(e) => {
                let _ = inputs.send(Input::Failed(e)).await;
                return;
            }
        };
        let content_type = field.content_type().unwrap_or_default().to_string();
        let first = match content_type.as_str() {
            "application/x-directory" => Input::Dir(path),
            "application/symlink" => {
                let mut target = Vec::new();
                loop {
                    match field.chunk().await {
                        Ok(Some(chunk)) => {
                            target.extend_from_slice(&chunk);
                            if target.len() > MAX_SYMLINK {
                                let _ = inputs
                                    .send(Input::Failed(RpcError::bad(format!(
                                        "symlink {path:?}: target longer than {MAX_SYMLINK} bytes"
                                    ))))
                                    .await;
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            let _ = inputs.send(Input::Failed(multipart_error(&state, e))).await;
                            return;
                        }
                    }
                }
                Input::Symlink(path, target)
            }
            _ => Input::File(path),
        };
        let is_file = matches!(first, Input::File(_));
        if inputs.send(first).await.is_err() {
            return;
        }
        if !is_file {
            continue;
        }
        loop {
            let next = match field.chunk().await {
                Ok(Some(chunk)) => Input::Chunk(chunk),
                Ok(None) => Input::EndFile,
                Err(e) => Input::Failed(multipart_error(&state, e)),
            };
            let stop = !matches!(next, Input::Chunk(_));
            let failed = matches!(next, Input::Failed(_));
            if inputs.send(next).await.is_err() || failed {
                return;
            }
            if stop {
                break;
            }
        }
    }
}

/// A part's path: percent-decoded (kubo-rpc-client encodes it), split on
/// `/`, every component a valid UnixFS name. Empty: a nameless file.
fn part_path(raw: &str) -> Result<String, RpcError> {
    let decoded = percent_decode(raw).ok_or_else(|| {
        RpcError::bad(format!(
            "part name {raw:?} is not valid percent-encoded UTF-8"
        ))
    })?;
    let components: Vec<&str> = decoded
        .trim_start_matches('/')
        .trim_end_matches('/')
        .split('/')
        .filter(|c| !c.is_empty())
        .collect();
    if components.len() > MAX_PATH_DEPTH {
        return Err(RpcError::bad(format!(
            "part name {raw:?}: deeper than {MAX_PATH_DEPTH} directories"
        )));
    }
    for component in &components {
        unixfs::check_entry_name(component)
            .map_err(|e| RpcError::bad(format!("part name {raw:?}: {e}")))?;
    }
    Ok(components.join("/"))
}

/// `%XX` decoding (no `+` for space: kubo-rpc-client and Go's
/// `url.PathUnescape` agree on that); `None` for a bad escape or non-UTF-8.
pub(super) fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where imported blocks go: the store, or nowhere (`only-hash`).
enum Blocks<'s> {
    Store(Session<'s>),
    Nowhere(NullBlocks),
}

impl BlockWrite for Blocks<'_> {
    fn write_block(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        match self {
            Blocks::Store(session) => session.write_block(cid, data),
            Blocks::Nowhere(null) => null.write_block(cid, data),
        }
    }
    fn write_block_hashed_here(&mut self, cid: Cid, data: &[u8]) -> Result<(), StoreError> {
        match self {
            Blocks::Store(session) => session.write_block_hashed_here(cid, data),
            Blocks::Nowhere(null) => null.write_block_hashed_here(cid, data),
        }
    }
}

/// A directory being assembled from the parts.
#[derive(Default)]
struct Dir {
    /// By name: `BTreeMap` order is byte order, dag-pb's link order.
    children: BTreeMap<String, Node>,
}

enum Node {
    Done(Added),
    Dir(Dir),
}

/// The tree of one add: named top-level entries (in the order they came)
/// and nameless files.
#[derive(Default)]
struct Tree {
    root: Dir,
    order: Vec<String>,
    nameless: Vec<Added>,
}

impl Tree {
    /// The directory that holds `path`'s last component, made as needed.
    fn parent_of<'t>(&'t mut self, path: &str) -> Result<(&'t mut Dir, String), RpcError> {
        let mut components: Vec<&str> = path.split('/').collect();
        let name = components.pop().unwrap_or_default().to_string();
        if let Some(top) = components.first().copied().or(Some(name.as_str())) {
            if !self.order.iter().any(|t| t == top) {
                self.order.push(top.to_string());
            }
        }
        let mut dir = &mut self.root;
        for component in components {
            let node = dir
                .children
                .entry(component.to_string())
                .or_insert_with(|| Node::Dir(Dir::default()));
            dir = match node {
                Node::Dir(sub) => sub,
                Node::Done(_) => {
                    return Err(RpcError::bad(format!(
                        "{path:?}: {component:?} is a file, not a directory"
                    )))
                }
            };
        }
        Ok((dir, name))
    }

    fn insert(&mut self, path: &str, added: Added) -> Result<(), RpcError> {
        if path.is_empty() {
            self.nameless.push(added);
            return Ok(());
        }
        let (dir, name) = self.parent_of(path)?;
        if dir.children.contains_key(&name) {
            return Err(RpcError::bad(format!(
                "{path:?} appears twice in the request"
            )));
        }
        dir.children.insert(name, Node::Done(added));
        Ok(())
    }

    fn mkdir(&mut self, path: &str) -> Result<(), RpcError> {
        if path.is_empty() {
            return Ok(());
        }
        let (dir, name) = self.parent_of(path)?;
        match dir.children.entry(name) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Node::Dir(Dir::default()));
                Ok(())
            }
            std::collections::btree_map::Entry::Occupied(slot) => match slot.get() {
                Node::Dir(_) => Ok(()),
                Node::Done(_) => Err(RpcError::bad(format!(
                    "{path:?} is both a file and a directory in the request"
                ))),
            },
        }
    }
}

/// Reads one file's bytes from the inputs, sending progress events.
struct PartReader<'a> {
    inputs: &'a mut mpsc::Receiver<Input>,
    current: Bytes,
    done: bool,
    /// Set when the body failed; the importer reports this, not the I/O error.
    failure: Option<RpcError>,
    progress: Option<(&'a mut Sink, String)>,
    read: u64,
    reported: u64,
}

impl PartReader<'_> {
    fn report(&mut self) -> std::io::Result<()> {
        if let Some((sink, name)) = &mut self.progress {
            if self.read > self.reported {
                self.reported = self.read;
                sink.line(&AddEvent {
                    name: name.clone(),
                    hash: String::new(),
                    bytes: self.read,
                    size: String::new(),
                })
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))?;
            }
        }
        Ok(())
    }
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.inputs.blocking_recv() {
                Some(Input::Chunk(chunk)) => self.current = chunk,
                Some(Input::EndFile) => {
                    self.done = true;
                    self.report()?;
                    return Ok(0);
                }
                Some(Input::Failed(e)) => {
                    let text = e.to_string();
                    self.failure = Some(e);
                    return Err(std::io::Error::other(text));
                }
                Some(_) | None => {
                    let e = RpcError::bad("the request body ended in the middle of a file");
                    let text = e.to_string();
                    self.failure = Some(e);
                    return Err(std::io::Error::other(text));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.read += n as u64;
        if self.read - self.reported >= PROGRESS_STEP {
            self.report()?;
        }
        Ok(n)
    }
}

fn import(
    state: &RpcState,
    options: &AddOptions,
    mut inputs: mpsc::Receiver<Input>,
    sink: &mut Sink,
) -> Result<(), RpcError> {
    let params = &options.params;
    let mut blocks = if options.only_hash {
        Blocks::Nowhere(NullBlocks)
    } else {
        Blocks::Store(state.store.session())
    };
    let mut tree = Tree::default();
    let mut any = false;
    while let Some(input) = inputs.blocking_recv() {
        any = true;
        match input {
            Input::File(path) => {
                let mut reader = PartReader {
                    inputs: &mut inputs,
                    current: Bytes::new(),
                    done: false,
                    failure: None,
                    progress: options.progress.then(|| (&mut *sink, path.clone())),
                    read: 0,
                    reported: 0,
                };
                let result = unixfs::add_file(&mut blocks, &mut reader, params);
                let (done, failure) = (reader.done, reader.failure.take());
                let added = match (result, failure) {
                    (_, Some(failure)) => return Err(failure),
                    (Err(e), None) => return Err(e.into()),
                    (Ok(added), None) => added,
                };
                if !done {
                    // The importer stops at end of input, so this is unreachable
                    // unless a reader bug left bytes behind.
                    return Err(RpcError::failed(
                        "internal: a file part was not read to its end",
                    ));
                }
                sink.line(&AddEvent::added(&path, &added))?;
                tree.insert(&path, added)?;
            }
            Input::Dir(path) => tree.mkdir(&path)?,
            Input::Symlink(path, target) => {
                let added = unixfs::add_symlink(&mut blocks, &target, params)?;
                sink.line(&AddEvent::added(&path, &added))?;
                tree.insert(&path, added)?;
            }
            Input::Failed(e) => return Err(e),
            Input::Chunk(_) | Input::EndFile => {
                return Err(RpcError::failed("internal: file bytes outside a file part"))
            }
        }
    }
    if !any {
        return Err(RpcError::bad(
            "no file in the request body (a multipart part per file)",
        ));
    }
    let mut roots: Vec<Cid> = Vec::new();
    if options.wrap {
        if !tree.nameless.is_empty() {
            return Err(RpcError::bad(
                "wrap-with-directory needs a file name for every part",
            ));
        }
        let root = std::mem::take(&mut tree.root);
        let added = finish_dir(&mut blocks, root, "", params, sink)?;
        roots.push(added.cid);
    } else {
        roots.extend(tree.nameless.iter().map(|a| a.cid));
        let mut root = std::mem::take(&mut tree.root);
        for top in &tree.order {
            let Some(node) = root.children.remove(top) else {
                continue;
            };
            match node {
                Node::Done(added) => roots.push(added.cid),
                Node::Dir(dir) => roots.push(finish_dir(&mut blocks, dir, top, params, sink)?.cid),
            }
        }
    }
    let Blocks::Store(session) = blocks else {
        return Ok(());
    };
    let mut pins = roots.iter();
    let first = match options.pin {
        true => pins
            .next()
            .map(|cid| (*cid, PinMode::Recursive, options.pin_name.clone())),
        false => None,
    };
    session.finish(first)?;
    if options.pin {
        for cid in pins {
            state
                .store
                .pin(cid, PinMode::Recursive, options.pin_name.as_deref())?;
        }
        for cid in &roots {
            super::pins::remember_form(&state.store, cid)?;
        }
        if let Some(node) = &state.node {
            node.reprovide();
        }
    }
    Ok(())
}

/// Writes a directory and, first, the directories inside it (Kubo's order:
/// children before parents, by name), emitting an event for each.
fn finish_dir(
    blocks: &mut Blocks<'_>,
    dir: Dir,
    path: &str,
    params: &Params,
    sink: &mut Sink,
) -> Result<Added, RpcError> {
    let mut links = Vec::with_capacity(dir.children.len());
    let mut size = 0u64;
    for (name, node) in dir.children {
        let added = match node {
            Node::Done(added) => added,
            Node::Dir(sub) => {
                let sub_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                finish_dir(blocks, sub, &sub_path, params, sink)?
            }
        };
        size += added.size;
        links.push(DirLink {
            name,
            cid: added.cid,
            tsize: added.tsize,
        });
    }
    let added = unixfs::write_directory(blocks, links, size, params)?;
    let mut event = AddEvent::added(path, &added);
    if path.is_empty() {
        // The wrapping directory keeps the empty name, as in Kubo.
        event.name = String::new();
    }
    sink.line(&event)?;
    Ok(added)
}

/// A path argument: `/ipfs/CID[/name...]` or `CID[/name...]`, resolved
/// through UnixFS directories; returns the target and its last name.
pub(super) fn resolve(blocks: &dyn BlockRead, path: &str) -> Result<(Cid, String), RpcError> {
    if path.starts_with("/ipns/") {
        return Err(RpcError::failed(format!(
            "{path}: IPNS names are not supported by ipnix"
        )));
    }
    let trimmed = path.strip_prefix("/ipfs/").unwrap_or(path);
    let mut components = trimmed.split('/').filter(|c| !c.is_empty());
    let first = components
        .next()
        .ok_or_else(|| RpcError::failed(format!("invalid path {path:?}")))?;
    let mut cid = Cid::try_from(first)
        .map_err(|e| RpcError::failed(format!("invalid path {path:?}: {e}")))?;
    let mut name = first.to_string();
    for component in components {
        let mut found = None;
        unixfs::for_each_entry(&blocks, &cid, |entry| {
            if found.is_none() && entry.name == component {
                found = Some(entry.cid);
            }
            Ok(())
        })?;
        cid = found
            .ok_or_else(|| RpcError::failed(format!("no link named {component:?} under {cid}")))?;
        name = component.to_string();
    }
    Ok((cid, name))
}

/// Blocks from the store, and from peers when the daemon runs. Call on a
/// blocking thread of the runtime.
pub(super) fn network_blocks(state: &RpcState) -> crate::fetch::NetworkBlocks {
    crate::fetch::NetworkBlocks::new(state.store.clone(), state.node.clone(), state.fetch_timeout)
}

pub(super) async fn cat(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let path = args.required("ipfs-path")?.to_string();
    let offset = args.int(&["offset", "o"])?.unwrap_or(0);
    let length = args.int(&["length", "l"])?;
    if offset < 0 || length.is_some_and(|l| l < 0) {
        return Err(RpcError::bad("offset and length must not be negative"));
    }
    streamed(Output::Raw("text/plain"), move |sink| {
        let blocks = network_blocks(&state);
        let (cid, _) = resolve(&blocks, &path)?;
        let mut reader = unixfs::cat(&blocks, &cid)?;
        let offset = (offset as u64).min(reader.len());
        reader.seek(SeekFrom::Start(offset))?;
        match length {
            Some(length) => std::io::copy(&mut reader.take(length as u64), sink)?,
            None => std::io::copy(&mut reader, sink)?,
        };
        Ok(())
    })
    .await
}

pub(super) async fn get(state: Arc<RpcState>, args: Args) -> Result<Response, RpcError> {
    let path = args.required("ipfs-path")?.to_string();
    if args.bool(&["compress", "C"], false)? {
        return Err(RpcError::bad(
            "compress: ipnix sends an uncompressed tar only",
        ));
    }
    args.bool(&["archive", "a"], false)?;
    streamed(Output::Raw("application/x-tar"), move |sink| {
        let blocks = network_blocks(&state);
        let (cid, name) = resolve(&blocks, &path)?;
        let mut tar = tar::Builder::new(sink);
        write_tar(&blocks, &mut tar, cid, &name)?;
        tar.into_inner()?;
        Ok(())
    })
    .await
}

/// Kubo's tar of a UnixFS node: directories 0777, files 0644, symlinks as
/// links, the root named by the last path component (the CID for a bare CID).
fn write_tar<W: std::io::Write>(
    blocks: &dyn BlockRead,
    tar: &mut tar::Builder<W>,
    root: Cid,
    root_name: &str,
) -> Result<(), RpcError> {
    let mut stack = vec![(root, root_name.to_string())];
    while let Some((cid, path)) = stack.pop() {
        let stat = unixfs::stat(&blocks, &cid)?;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        match stat.kind {
            NodeKind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_data(&mut header, &path, std::io::empty())?;
                let mut children = Vec::new();
                unixfs::for_each_entry(&blocks, &cid, |entry| {
                    unixfs::check_entry_name(&entry.name)?;
                    children.push((entry.cid, format!("{path}/{}", entry.name)));
                    Ok(())
                })?;
                // Popped in name order.
                children.sort_by(|a, b| b.1.cmp(&a.1));
                stack.extend(children);
            }
            NodeKind::Symlink => {
                let mut target = Vec::new();
                unixfs::cat(&blocks, &cid)?.read_to_end(&mut target)?;
                let target = String::from_utf8(target).map_err(|_| {
                    RpcError::failed(format!("symlink {path}: target is not UTF-8"))
                })?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, &path, &target)?;
            }
            _ => {
                let reader = unixfs::cat(&blocks, &cid)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.set_size(reader.len());
                tar.append_data(&mut header, &path, reader)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names_decode_and_refuse_escapes() {
        assert_eq!(part_path("dir%2Fa%20b.txt").expect("ok"), "dir/a b.txt");
        assert_eq!(part_path("/lead/trail/").expect("ok"), "lead/trail");
        assert_eq!(part_path("").expect("nameless"), "");
        for bad in ["a/../b", "..", "a/./b", "%zz", "%c3", "a%00b"] {
            assert!(part_path(bad).is_err(), "{bad:?} passed");
        }
        assert!(part_path(&"d/".repeat(MAX_PATH_DEPTH + 1)).is_err());
    }

    #[test]
    fn chunker_and_cid_version_as_kubo() {
        let args = Args::parse(Some("cid-version=1")).expect("args");
        let options = AddOptions::parse(&args).expect("options");
        assert!(
            options.params.raw_leaves,
            "cid-version=1 implies raw leaves"
        );
        assert_eq!(options.params.chunk_size, DEFAULT_CHUNK);
        let args =
            Args::parse(Some("cid-version=1&raw-leaves=false&chunker=size-1000")).expect("args");
        let options = AddOptions::parse(&args).expect("options");
        assert!(!options.params.raw_leaves);
        assert_eq!(options.params.chunk_size, 1000);
        for bad in [
            "chunker=rabin",
            "chunker=size-0",
            "chunker=size-2000000",
            "cid-version=2",
            "trickle=true",
            "hash=blake3",
        ] {
            let args = Args::parse(Some(bad)).expect("args");
            assert!(AddOptions::parse(&args).is_err(), "{bad} passed");
        }
    }
}
