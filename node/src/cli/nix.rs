//! `ipnix nix import|export|info|ls`: Nix store paths as git-tree DAGs with a
//! path-info. Import reads the local Nix (`nix path-info --json`, `nix-store
//! --dump`) or an existing binary cache, dependencies first, checking every
//! NAR hash; each path commits in one store transaction together with its
//! recursive pin (`nix:<store path>`) and its store-path index entry, so a
//! failed import leaves nothing pinned or indexed. A path read from the local
//! Nix also gets its provenance entry (`nix-trusted`) in that transaction:
//! the one thing, besides trusted upstream signatures and checked content
//! addresses, that lets the daemon sign it (DESIGN.md I-26); a `--from-cache`
//! import never does. Export renders a NAR or materialises the tree; info
//! names the path-info, root, SWHID and metadata.

use super::progress::{bar, ReadProgress, WriteProgress};
use super::{parse_cid, print_json, Ctx, Io};
use crate::NixCommand;
use anyhow::Context as _;
use cid::Cid;
use ipnix_bridge::cache_client::{CacheClient, CacheError};
use ipnix_bridge::export::{load_pathinfo, ExportError};
use ipnix_bridge::hash::{check_hash_part, StorePath, DEFAULT_STORE_DIR};
use ipnix_bridge::import::{import_nar, Imported};
use ipnix_bridge::narinfo::NarInfo;
use ipnix_bridge::nixstore::{self, Dump, NixPathInfo, NixStoreError};
use ipnix_bridge::pathinfo::split_store_path;
use ipnix_bridge::PathInfo;
use ipnix_node::http::nixcache::{
    indexed_pathinfo, is_from_local_nix, record_local_nix, stage_local_nix, PATH_INDEX, PIN_PREFIX,
};
use ipnix_store::block::{DAG_CBOR, GIT_RAW};
use ipnix_store::PinMode;
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Most paths one `--from-cache --closure` walk visits (bounds the narinfos held).
const MAX_CACHE_CLOSURE: usize = 100_000;

pub fn run(ctx: &Ctx, cmd: NixCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match cmd {
        NixCommand::Import {
            closure,
            from_cache: None,
            paths,
        } => import_local(ctx, closure, &paths, io),
        NixCommand::Import {
            closure,
            from_cache: Some(url),
            paths,
        } => import_from_cache(ctx, &url, closure, &paths, io),
        NixCommand::Export { path, nar, dir } => {
            export(ctx, &path, nar.as_deref(), dir.as_deref(), io)
        }
        NixCommand::Info { path } => info(ctx, &path, io),
        NixCommand::Ls => ls(ctx, io),
    }
}

/// `ipnix nix ls`: every indexed store path with its status, as the status
/// page counts them (`ipnix_node::summary`).
fn ls(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    use ipnix_node::summary;
    let mut sources = std::collections::HashSet::new();
    summary::sources_lists(&ctx.store, None, Some(&mut sources))?;
    for path in summary::nix_paths(&ctx.store, &sources)? {
        let store_path = summary::store_path_of(&ctx.store, &path.pathinfo);
        let origin = if path.local_nix { "local-nix" } else { "other" };
        if ctx.json {
            print_json(
                io.stdout,
                &serde_json::json!({
                    "path": store_path, "hashPart": path.hash_part,
                    "pathinfo": path.pathinfo.to_string(),
                    "status": path.status.as_str(), "origin": origin,
                }),
            )?;
        } else {
            writeln!(
                io.stdout,
                "{}\t{}\t{}\t{origin}",
                store_path.as_deref().unwrap_or(&path.hash_part),
                path.status.as_str(),
                path.pathinfo,
            )?;
        }
    }
    Ok(())
}

/// A store path argument: `/nix/store/<hash>-<name>` (a path inside it, or a
/// symlink into the store such as `./result`, names its store path).
fn local_store_path(ctx: &Ctx, arg: &str) -> anyhow::Result<String> {
    let store_prefix = format!("{DEFAULT_STORE_DIR}/");
    let candidate = if arg.starts_with(&store_prefix) {
        arg.to_owned()
    } else {
        let path = ctx.path(Path::new(arg));
        let resolved = std::fs::canonicalize(&path).with_context(|| {
            format!("{arg} is not a store path (expected {DEFAULT_STORE_DIR}/<hash>-<name>)")
        })?;
        resolved.to_string_lossy().into_owned()
    };
    let rest = candidate.strip_prefix(&store_prefix).ok_or_else(|| {
        anyhow::anyhow!("{arg} is not a store path: it is not in {DEFAULT_STORE_DIR}")
    })?;
    let base = rest.split('/').next().unwrap_or_default();
    let parsed = StorePath::from_base_name(base)
        .map_err(|e| anyhow::anyhow!("{arg} is not a store path: {e}"))?;
    Ok(parsed.to_default_path())
}

/// One line for a failed Nix command or a bad answer from Nix.
fn nix_error(e: NixStoreError) -> anyhow::Error {
    match e {
        NixStoreError::Spawn { command, source }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            anyhow::anyhow!("cannot run Nix ({command}): {source}; is Nix installed and on PATH?")
        }
        NixStoreError::Failed {
            command,
            status,
            stderr,
        } => {
            let program = command
                .split_whitespace()
                .next()
                .unwrap_or("nix")
                .trim_matches('"')
                .to_owned();
            let why = stderr
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.contains("Internet access"))
                .collect::<Vec<_>>()
                .join("; ");
            anyhow::anyhow!("{program} failed ({status}): {why}")
        }
        other => anyhow::Error::new(other),
    }
}

/// The path-info CID of a store path already imported (index entry and the
/// path-info block both present and consistent).
fn already_imported(ctx: &Ctx, store_path: &str) -> anyhow::Result<Option<Cid>> {
    let (_, parsed) = split_store_path(store_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let Some(cid) = indexed_pathinfo(&ctx.store, parsed.hash_part())? else {
        return Ok(None);
    };
    match load_pathinfo(&*ctx.store, &cid) {
        Ok(info) if info.store_path == store_path => Ok(Some(cid)),
        Ok(_) | Err(ExportError::Missing(_)) => Ok(None),
        Err(e) => {
            Err(e).with_context(|| format!("the path-info {cid} of {store_path} is unreadable"))
        }
    }
}

/// Orders paths dependencies first; references outside the set are left to
/// the caller (already imported, or an error).
fn import_order(infos: Vec<NixPathInfo>) -> anyhow::Result<Vec<NixPathInfo>> {
    nixstore::order_within(infos).map_err(nix_error)
}

/// The path-info CIDs of `references` (not `path` itself): imported in this
/// run, or earlier.
fn reference_cids(
    ctx: &Ctx,
    path: &str,
    references: &[String],
    known: &mut HashMap<String, Cid>,
    closure_hint: bool,
) -> anyhow::Result<()> {
    for reference in references {
        if reference == path || known.contains_key(reference) {
            continue;
        }
        match already_imported(ctx, reference)? {
            Some(cid) => {
                known.insert(reference.clone(), cid);
            }
            None if closure_hint => {
                anyhow::bail!("{path} references {reference}, which is not imported: add --closure to import it too")
            }
            None => anyhow::bail!("{path} references {reference}, which was not imported"),
        }
    }
    Ok(())
}

/// Where an imported path's bytes and metadata came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// This machine's Nix store: recorded, so the daemon may sign it.
    LocalNix,
    /// A binary cache: only its upstream signatures vouch for it.
    Cache,
}

/// Commits one imported path: its blocks, its pin, its index entry and, for
/// the local Nix store, its provenance entry in one transaction.
fn commit(
    session: ipnix_store::Session<'_>,
    imported: &Imported,
    source: Source,
) -> anyhow::Result<()> {
    let mut session = session;
    let path = &imported.pathinfo.store_path;
    let hash_part = imported.pathinfo.store_path().hash_part().to_owned();
    session.index_put(
        PATH_INDEX,
        hash_part.as_bytes(),
        &imported.pathinfo_cid.to_bytes(),
    );
    if source == Source::LocalNix {
        stage_local_nix(&mut session, &imported.pathinfo_cid, path);
    }
    session
        .finish(Some((
            imported.pathinfo_cid,
            PinMode::Recursive,
            Some(format!("{PIN_PREFIX}{path}")),
        )))
        .with_context(|| format!("cannot commit the import of {path}"))
}

fn report(
    ctx: &Ctx,
    io: &mut Io<'_>,
    path: &str,
    cid: &Cid,
    imported: Option<&Imported>,
) -> anyhow::Result<()> {
    if ctx.json {
        let mut value = serde_json::json!({
            "path": path,
            "pathinfo": cid.to_string(),
            "status": if imported.is_some() { "imported" } else { "already-imported" },
        });
        if let Some(imported) = imported {
            value["root"] = imported.root_cid.to_string().into();
            value["narHash"] = imported.nar_hash.to_nix32().into();
            value["narSize"] = imported.nar_size.into();
        }
        print_json(io.stdout, &value)
    } else {
        writeln!(io.stdout, "{path} {cid}")?;
        Ok(())
    }
}

fn import_local(ctx: &Ctx, closure: bool, args: &[String], io: &mut Io<'_>) -> anyhow::Result<()> {
    let paths = args
        .iter()
        .map(|arg| local_store_path(ctx, arg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let infos = nixstore::path_info(&paths, closure).map_err(nix_error)?;
    let mut known: HashMap<String, Cid> = HashMap::new();
    for info in import_order(infos)? {
        if let Some(cid) = already_imported(ctx, &info.path)? {
            vouch_for_earlier_import(ctx, &info, &cid)?;
            known.insert(info.path.clone(), cid);
            report(ctx, io, &info.path, &cid, None)?;
            continue;
        }
        reference_cids(ctx, &info.path, &info.references, &mut known, !closure)?;
        let meta = info.to_meta(&known).map_err(nix_error)?;
        let mut session = ctx.store.session();
        let progress = bar(
            ctx.progress,
            Some(info.nar_size),
            &format!("importing {}", info.path),
        );
        let mut dump = Dump::start(&info.path).map_err(nix_error)?;
        let imported = import_nar(
            &mut session,
            ReadProgress {
                inner: &mut dump,
                bar: progress.clone(),
            },
            meta,
        );
        progress.finish_and_clear();
        // A failed dump explains a failed import better than the NAR error it causes.
        let dumped = dump.finish().map_err(nix_error);
        let imported = match (imported, dumped) {
            (Ok(imported), Ok(())) => imported,
            (_, Err(e)) => return Err(e.context(format!("cannot import {}", info.path))),
            (Err(e), Ok(())) => {
                return Err(anyhow::Error::new(e).context(format!("cannot import {}", info.path)))
            }
        };
        commit(session, &imported, Source::LocalNix)?;
        known.insert(info.path.clone(), imported.pathinfo_cid);
        report(ctx, io, &info.path, &imported.pathinfo_cid, Some(&imported))?;
    }
    Ok(())
}

/// A path imported earlier (say from a binary cache) and now imported from
/// the local Nix store: its path-info earns the local provenance entry only
/// if it says what the local Nix says of every field the node's signature
/// covers (NAR hash, NAR size, references). A different build of the same
/// store path keeps the earlier path-info, unvouched, and says so.
fn vouch_for_earlier_import(ctx: &Ctx, local: &NixPathInfo, cid: &Cid) -> anyhow::Result<()> {
    if is_from_local_nix(&ctx.store, cid)? {
        return Ok(());
    }
    let earlier = load_pathinfo(&*ctx.store, cid)
        .with_context(|| format!("the path-info {cid} of {} is unreadable", local.path))?;
    let mut local_references = local.references.clone();
    local_references.sort();
    local_references.dedup();
    if earlier.nar_hash == local.nar_hash
        && earlier.nar_size == local.nar_size
        && earlier.reference_paths() == local_references
    {
        record_local_nix(&ctx.store, cid, &local.path)
            .with_context(|| format!("cannot record where {} came from", local.path))?;
    } else {
        tracing::warn!(
            "{} was imported earlier with another NAR hash or references than the local Nix store has; keeping that import, which the daemon does not sign",
            local.path
        );
    }
    Ok(())
}

fn cache_error(url: &str, e: CacheError) -> anyhow::Error {
    anyhow::Error::new(e).context(format!("binary cache {url}"))
}

/// A cache argument: a full store path, or a hash part (resolved by the narinfo).
fn cache_narinfo(client: &CacheClient, url: &str, arg: &str) -> anyhow::Result<NarInfo> {
    let (hash_part, full_path) = if check_hash_part(arg).is_ok() {
        (arg.to_owned(), None)
    } else {
        let base = arg.strip_prefix(&format!("{DEFAULT_STORE_DIR}/")).ok_or_else(|| {
            anyhow::anyhow!("{arg} is not a store path (expected {DEFAULT_STORE_DIR}/<hash>-<name> or a hash part)")
        })?;
        let parsed = StorePath::from_base_name(base.split('/').next().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("{arg} is not a store path: {e}"))?;
        (
            parsed.hash_part().to_owned(),
            Some(parsed.to_default_path()),
        )
    };
    let info = client
        .narinfo(&hash_part)
        .map_err(|e| cache_error(url, e))?
        .ok_or_else(|| anyhow::anyhow!("{arg} is not in the binary cache {url}"))?;
    if let Some(full_path) = full_path {
        if info.store_path != full_path {
            anyhow::bail!(
                "the binary cache {url} describes {} under the hash of {full_path}",
                info.store_path
            );
        }
    }
    Ok(info)
}

fn import_from_cache(
    ctx: &Ctx,
    url: &str,
    closure: bool,
    args: &[String],
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let client = CacheClient::new(url).map_err(|e| cache_error(url, e))?;
    let cache_info = client.cache_info().map_err(|e| cache_error(url, e))?;
    if cache_info.store_dir != DEFAULT_STORE_DIR {
        anyhow::bail!(
            "the binary cache {url} holds paths for {}, not {DEFAULT_STORE_DIR}",
            cache_info.store_dir
        );
    }
    // Gather the narinfos to import: the paths asked for and, with --closure,
    // everything they reference that is not imported yet.
    let mut narinfos: HashMap<String, NarInfo> = HashMap::new();
    let mut requested: Vec<String> = Vec::new();
    let mut queue: VecDeque<NarInfo> = VecDeque::new();
    for arg in args {
        let info = cache_narinfo(&client, url, arg)?;
        requested.push(info.store_path.clone());
        queue.push_back(info);
    }
    let mut present: HashMap<String, Cid> = HashMap::new();
    while let Some(info) = queue.pop_front() {
        if narinfos.contains_key(&info.store_path) || present.contains_key(&info.store_path) {
            continue;
        }
        if let Some(cid) = already_imported(ctx, &info.store_path)? {
            present.insert(info.store_path.clone(), cid);
            continue;
        }
        if narinfos.len() >= MAX_CACHE_CLOSURE {
            anyhow::bail!("the closure has more than {MAX_CACHE_CLOSURE} paths");
        }
        if closure {
            for reference in info.reference_paths() {
                if reference != info.store_path
                    && !narinfos.contains_key(&reference)
                    && !present.contains_key(&reference)
                {
                    let next = cache_narinfo(&client, url, &reference)?;
                    queue.push_back(next);
                }
            }
        }
        narinfos.insert(info.store_path.clone(), info);
    }
    let as_nix: Vec<NixPathInfo> = narinfos.values().map(NixPathInfo::from).collect();
    let mut known = present.clone();
    for path in &requested {
        if let Some(cid) = present.get(path) {
            report(ctx, io, path, cid, None)?;
        }
    }
    for entry in import_order(as_nix)? {
        let info = &narinfos[&entry.path];
        reference_cids(
            ctx,
            &info.store_path,
            &info.reference_paths(),
            &mut known,
            !closure,
        )?;
        let mut session = ctx.store.session();
        let progress = bar(
            ctx.progress,
            None,
            &format!("importing {}", info.store_path),
        );
        let imported = client.import(&mut session, info, &known);
        progress.finish_and_clear();
        let imported = imported.map_err(|e| cache_error(url, e))?;
        commit(session, &imported, Source::Cache)?;
        known.insert(info.store_path.clone(), imported.pathinfo_cid);
        report(
            ctx,
            io,
            &info.store_path,
            &imported.pathinfo_cid,
            Some(&imported),
        )?;
    }
    Ok(())
}

/// What an export/info argument names.
struct Target {
    cid: Cid,
    /// `None` for a bare git object.
    info: Option<PathInfo>,
}

/// A store path, a store-path hash part, a base name, or a CID (path-info,
/// or for export also a git tree or blob).
fn resolve(ctx: &Ctx, arg: &str) -> anyhow::Result<Target> {
    let hash_part = if let Some(rest) = arg.strip_prefix(&format!("{DEFAULT_STORE_DIR}/")) {
        let base = rest.split('/').next().unwrap_or_default();
        Some(
            StorePath::from_base_name(base)
                .map_err(|e| anyhow::anyhow!("{arg} is not a store path: {e}"))?
                .hash_part()
                .to_owned(),
        )
    } else if arg.starts_with('/') {
        anyhow::bail!("{arg} is not in {DEFAULT_STORE_DIR}")
    } else if check_hash_part(arg).is_ok() {
        Some(arg.to_owned())
    } else if let Ok(parsed) = StorePath::from_base_name(arg) {
        Some(parsed.hash_part().to_owned())
    } else {
        None
    };
    let blocks = ctx.blocks();
    let cid = match hash_part {
        Some(hash_part) => indexed_pathinfo(&ctx.store, &hash_part)?.ok_or_else(|| {
            anyhow::anyhow!("{arg} is not imported; run `ipnix nix import {arg}`")
        })?,
        None => {
            let cid = parse_cid(arg).map_err(|_| {
                anyhow::anyhow!("{arg:?} is neither a store path, a store-path hash nor a CID")
            })?;
            if cid.codec() != DAG_CBOR && cid.codec() != GIT_RAW {
                anyhow::bail!("{cid} is neither a path-info (dag-cbor) nor a git object (git-raw)");
            }
            cid
        }
    };
    if cid.codec() == GIT_RAW {
        return Ok(Target { cid, info: None });
    }
    let info = load_pathinfo(&blocks, &cid).map_err(|e| match e {
        ExportError::Missing(_) => {
            anyhow::anyhow!("the path-info {cid} of {arg} is not in the store")
        }
        other => anyhow::Error::new(other).context(format!("{arg}: path-info {cid}")),
    })?;
    Ok(Target {
        cid,
        info: Some(info),
    })
}

fn export(
    ctx: &Ctx,
    arg: &str,
    nar: Option<&Path>,
    dir: Option<&Path>,
    io: &mut Io<'_>,
) -> anyhow::Result<()> {
    let target = resolve(ctx, arg)?;
    let blocks = ctx.blocks();
    let total = target.info.as_ref().map(|i| i.nar_size);
    let what = target
        .info
        .as_ref()
        .map_or_else(|| target.cid.to_string(), |i| i.store_path.clone());
    match (nar, dir) {
        (Some(file), None) if file == Path::new("-") => {
            let mut out = WriteProgress {
                inner: &mut *io.stdout,
                bar: bar(ctx.progress, total, "exporting"),
            };
            let summary = ipnix_bridge::export_nar_with(
                &blocks,
                &target.cid,
                &mut out,
                &ipnix_sources::tarball::RecipeRebuilder::new(&blocks),
            )
            .with_context(|| {
                format!("cannot export {what}; the NAR written to stdout is incomplete or wrong")
            })?;
            out.bar.finish_and_clear();
            out.flush()?;
            tracing::debug!("exported {} NAR bytes of {what}", summary.size);
            Ok(())
        }
        (Some(file), None) => {
            let file = ctx.path(file);
            let summary = write_nar_file(ctx, &*blocks, &target.cid, &file, total)
                .with_context(|| format!("cannot export {what} to {}", file.display()))?;
            if ctx.json {
                print_json(
                    io.stdout,
                    &serde_json::json!({"path": what, "nar": file, "narSize": summary.size}),
                )
            } else {
                writeln!(
                    io.stdout,
                    "wrote {} ({} bytes)",
                    file.display(),
                    summary.size
                )?;
                Ok(())
            }
        }
        (None, Some(dest)) => {
            let dest = ctx.path(dest);
            let progress = bar(ctx.progress, None, "materialising");
            let summary = ipnix_bridge::export_dir_with(
                &blocks,
                &target.cid,
                &dest,
                &ipnix_sources::tarball::RecipeRebuilder::new(&blocks),
            );
            progress.finish_and_clear();
            let summary =
                summary.with_context(|| format!("cannot export {what} to {}", dest.display()))?;
            if ctx.json {
                print_json(
                    io.stdout,
                    &serde_json::json!({"path": what, "dir": dest, "narSize": summary.size}),
                )
            } else {
                writeln!(io.stdout, "wrote {what} to {}", dest.display())?;
                Ok(())
            }
        }
        (None, None) => {
            anyhow::bail!("say where to export: --nar FILE (`-` for stdout) or --dir DIR")
        }
        (Some(_), Some(_)) => anyhow::bail!("--nar and --dir cannot be combined"),
    }
}

/// Writes the NAR next to `file` and renames it into place only once the
/// render (and its NAR hash check) succeeded.
fn write_nar_file(
    ctx: &Ctx,
    blocks: &dyn ipnix_store::BlockRead,
    cid: &Cid,
    file: &Path,
    total: Option<u64>,
) -> anyhow::Result<ipnix_bridge::NarSummary> {
    let name = file
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} is not a file name", file.display()))?;
    let mut partial_name = name.to_os_string();
    partial_name.push(format!(".ipnix-partial-{}", std::process::id()));
    let partial: PathBuf = file.with_file_name(partial_name);
    let result = (|| {
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        let mut out = WriteProgress {
            inner: std::io::BufWriter::with_capacity(1 << 20, out),
            bar: bar(ctx.progress, total, "exporting"),
        };
        let summary = ipnix_bridge::export_nar_with(
            &blocks,
            cid,
            &mut out,
            &ipnix_sources::tarball::RecipeRebuilder::new(&blocks),
        )?;
        out.bar.finish_and_clear();
        let out = out.inner.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        std::fs::rename(&partial, file)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

fn info(ctx: &Ctx, arg: &str, io: &mut Io<'_>) -> anyhow::Result<()> {
    let target = resolve(ctx, arg)?;
    let Some(info) = target.info else {
        anyhow::bail!(
            "{} is a git object, not a path-info: `ipnix nix info` needs an imported store path",
            target.cid
        );
    };
    let swhid = ipnix_bridge::swhid::of_pathinfo(&info)
        .context("the path-info's root is not a git object")?;
    let references = info.reference_paths();
    if ctx.json {
        let refs: Vec<serde_json::Value> = info
            .references
            .iter()
            .map(|r| serde_json::json!({"path": r.path, "pathinfo": r.info.to_string()}))
            .collect();
        print_json(
            io.stdout,
            &serde_json::json!({
                "path": info.store_path,
                "pathinfo": target.cid.to_string(),
                "root": info.root.cid.to_string(),
                "rootKind": info.root.kind.name(),
                "swhid": swhid,
                "narHash": info.nar_hash.to_nix32(),
                "narSize": info.nar_size,
                "references": references,
                "referenceInfos": refs,
                "selfReference": info.self_reference,
                "deriver": info.deriver,
                "signatures": info.signatures,
                "ca": info.ca,
                "largeBlobs": info.blobs.len(),
            }),
        )
    } else {
        let out = &mut *io.stdout;
        writeln!(out, "path:       {}", info.store_path)?;
        writeln!(out, "path-info:  {}", target.cid)?;
        writeln!(
            out,
            "root:       {} ({})",
            info.root.cid,
            info.root.kind.name()
        )?;
        writeln!(out, "swhid:      {swhid}")?;
        writeln!(out, "nar hash:   {}", info.nar_hash.to_nix32())?;
        writeln!(out, "nar size:   {}", info.nar_size)?;
        if let Some(deriver) = &info.deriver {
            writeln!(out, "deriver:    {deriver}")?;
        }
        if let Some(ca) = &info.ca {
            writeln!(out, "ca:         {ca}")?;
        }
        writeln!(out, "references:")?;
        for reference in &references {
            writeln!(out, "  {reference}")?;
        }
        writeln!(out, "signatures:")?;
        for sig in &info.signatures {
            writeln!(out, "  {sig}")?;
        }
        Ok(())
    }
}
