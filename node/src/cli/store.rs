//! `ipnix block`, `pin`, `gc`, `repo stat|verify` and `dag export|import`: the block
//! store and CAR files.

use super::progress::{bar, ReadProgress, WriteProgress};
use super::{parse_cid, print_json, Ctx, Io};
use crate::{BlockCommand, DagCommand, PinCommand, RepoCommand};
use anyhow::Context as _;
use ipnix_store::block::{self, MAX_BLOCK_SIZE};
use ipnix_store::{car, BlockRead, PinMode, VerifyConfig};
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

pub fn block(ctx: &Ctx, command: BlockCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        BlockCommand::Put { file, codec } => {
            let codec = match codec.as_str() {
                "raw" => block::RAW,
                "dag-pb" => block::DAG_PB,
                "dag-cbor" => block::DAG_CBOR,
                "git-raw" => block::GIT_RAW,
                other => anyhow::bail!(
                    "--cid-codec {other}: unknown (use raw, dag-pb, dag-cbor or git-raw)"
                ),
            };
            let mut data = Vec::new();
            let limit = MAX_BLOCK_SIZE as u64 + 1;
            match file.as_deref().filter(|f| *f != Path::new("-")) {
                Some(file) => {
                    let path = ctx.path(file);
                    std::fs::File::open(&path)
                        .with_context(|| format!("cannot open {}", path.display()))?
                        .take(limit)
                        .read_to_end(&mut data)?
                }
                None => (&mut *io.stdin).take(limit).read_to_end(&mut data)?,
            };
            if data.len() > MAX_BLOCK_SIZE {
                anyhow::bail!(
                    "a block is at most {MAX_BLOCK_SIZE} bytes; use `ipnix add` for larger data"
                );
            }
            let cid = block::cid_for(codec, &data);
            ctx.store.put(&cid, &data)?;
            if ctx.json {
                print_json(
                    io.stdout,
                    &serde_json::json!({"cid": cid.to_string(), "size": data.len()}),
                )
            } else {
                writeln!(io.stdout, "{cid}")?;
                Ok(())
            }
        }
        BlockCommand::Get { cid } => {
            let cid = parse_cid(&cid)?;
            let data = ctx
                .blocks()
                .read_block(&cid)?
                .ok_or_else(|| missing(ctx, &cid))?;
            io.stdout.write_all(&data)?;
            Ok(())
        }
        BlockCommand::Stat { cid } => {
            let cid = parse_cid(&cid)?;
            let size = match ctx.store.block_size(&cid)? {
                Some(size) => size,
                None => ctx
                    .blocks()
                    .read_block(&cid)?
                    .ok_or_else(|| missing(ctx, &cid))?
                    .len() as u64,
            };
            if ctx.json {
                print_json(
                    io.stdout,
                    &serde_json::json!({"cid": cid.to_string(), "size": size}),
                )
            } else {
                writeln!(io.stdout, "Key: {cid}\nSize: {size}")?;
                Ok(())
            }
        }
        BlockCommand::Rm { cids } => {
            let cids = cids
                .iter()
                .map(|c| parse_cid(c))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let pinned = pinned_blocks(ctx)?;
            for cid in cids {
                if pinned.contains(&cid) {
                    anyhow::bail!("{cid} is pinned (or inside a pinned DAG): unpin it first with `ipnix pin rm`");
                }
                if !ctx.store.delete(&cid)? {
                    anyhow::bail!("{cid} is not in the store");
                }
                if ctx.json {
                    print_json(io.stdout, &serde_json::json!({"removed": cid.to_string()}))?;
                } else {
                    writeln!(io.stdout, "removed {cid}")?;
                }
            }
            Ok(())
        }
    }
}

fn missing(ctx: &Ctx, cid: &cid::Cid) -> anyhow::Error {
    if ctx.node.is_some() {
        anyhow::anyhow!("block {cid} is not in the store and no peer provided it")
    } else {
        anyhow::anyhow!(
            "block {cid} is not in the store (start `ipnix daemon` to fetch it from peers)"
        )
    }
}

/// Every block kept by a pin: direct pins and everything under recursive ones.
fn pinned_blocks(ctx: &Ctx) -> anyhow::Result<HashSet<cid::Cid>> {
    let mut seen = HashSet::new();
    let mut stack = Vec::new();
    for pin in ctx.store.pins()? {
        seen.insert(pin.cid);
        if pin.mode == PinMode::Recursive {
            stack.push(pin.cid);
        }
    }
    while let Some(cid) = stack.pop() {
        if let Some(data) = ctx.store.get(&cid)? {
            let dag = ipnix_store::links::dag_links(&cid, &data)?;
            seen.extend(dag.covered);
            for link in dag.children {
                if seen.insert(link) {
                    stack.push(link);
                }
            }
        }
    }
    Ok(seen)
}

pub fn pin(ctx: &Ctx, command: PinCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        PinCommand::Add {
            cid,
            recursive,
            name,
        } => {
            let cid = parse_cid(&cid)?;
            let mode = if recursive {
                PinMode::Recursive
            } else {
                PinMode::Direct
            };
            match (&ctx.node, &ctx.runtime) {
                // Inside the daemon a recursive pin fetches what is missing, as
                // Kubo does, and pins in the same transaction as the last blocks.
                (Some(node), Some(runtime)) if recursive => {
                    let opts = ipnix_node::fetch::FetchOptions {
                        pin: Some((mode, name.clone())),
                        ..Default::default()
                    };
                    runtime.block_on(ipnix_node::fetch::fetch_dag(
                        node,
                        ctx.store.clone(),
                        cid,
                        opts,
                    ))?;
                }
                _ => {
                    if !recursive {
                        ctx.blocks()
                            .read_block(&cid)?
                            .ok_or_else(|| missing(ctx, &cid))?;
                    }
                    ctx.store.pin(&cid, mode, name.as_deref())?;
                }
            }
            let kind = if recursive { "recursive" } else { "direct" };
            if ctx.json {
                print_json(
                    io.stdout,
                    &serde_json::json!({"pinned": cid.to_string(), "type": kind, "name": name}),
                )
            } else {
                writeln!(io.stdout, "pinned {cid} {kind}")?;
                Ok(())
            }
        }
        PinCommand::Rm { cid } => {
            let cid = parse_cid(&cid)?;
            if !ctx.store.unpin(&cid)? {
                anyhow::bail!("{cid} is not pinned");
            }
            if ctx.json {
                print_json(io.stdout, &serde_json::json!({"unpinned": cid.to_string()}))
            } else {
                writeln!(io.stdout, "unpinned {cid}")?;
                Ok(())
            }
        }
        PinCommand::Ls => {
            for pin in ctx.store.pins()? {
                let kind = match pin.mode {
                    PinMode::Recursive => "recursive",
                    PinMode::Direct => "direct",
                };
                if ctx.json {
                    print_json(
                        io.stdout,
                        &serde_json::json!({"cid": pin.cid.to_string(), "type": kind, "name": pin.name}),
                    )?;
                } else {
                    match &pin.name {
                        Some(name) => writeln!(io.stdout, "{} {kind} {name}", pin.cid)?,
                        None => writeln!(io.stdout, "{} {kind}", pin.cid)?,
                    }
                }
            }
            Ok(())
        }
    }
}

pub fn gc(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    let progress = bar(ctx.progress, None, "collecting garbage");
    let stats = ctx.store.gc()?;
    progress.finish_and_clear();
    if ctx.json {
        print_json(io.stdout, &serde_json::to_value(&stats)?)
    } else {
        writeln!(
            io.stdout,
            "removed {} blocks ({} bytes); reclaimed {} bytes of pack files",
            stats.blocks_removed, stats.bytes_removed, stats.pack_bytes_reclaimed
        )?;
        Ok(())
    }
}

pub fn repo(ctx: &Ctx, command: RepoCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        RepoCommand::Stat => {
            let stat = ctx.store.stat()?;
            let value = serde_json::to_value(&stat)?;
            if ctx.json {
                return print_json(io.stdout, &value);
            }
            writeln!(io.stdout, "repo: {}", ctx.repo.root().display())?;
            if let serde_json::Value::Object(fields) = value {
                for (key, value) in fields {
                    writeln!(io.stdout, "{key}: {value}")?;
                }
            }
            Ok(())
        }
        RepoCommand::Verify => verify(ctx, io),
    }
}

/// `ipnix repo verify`: the store's audit, with the nix-path index as a CID
/// index; lists every finding and fails if any is a problem.
fn verify(ctx: &Ctx, io: &mut Io<'_>) -> anyhow::Result<()> {
    let config = VerifyConfig::default().with_cid_namespace(ipnix_bridge::path_index::NAMESPACE);
    let report = ctx.store.verify(&config)?;
    if ctx.json {
        print_json(io.stdout, &serde_json::to_value(&report)?)?;
    } else {
        let out = &mut *io.stdout;
        writeln!(out, "repo: {}", ctx.repo.root().display())?;
        writeln!(
            out,
            "blocks: {} ({} inline, {} packed; {} bytes), every one re-hashed",
            report.blocks, report.inline_blocks, report.packed_blocks, report.block_bytes
        )?;
        writeln!(
            out,
            "pins: {} keeping {} blocks; {} blocks unpinned",
            report.pins, report.pinned_blocks, report.unpinned_blocks
        )?;
        writeln!(
            out,
            "packs: {} files, {} dead bytes (GC reclaims them)",
            report.pack_files, report.pack_dead_bytes
        )?;
        writeln!(out, "nix-path index entries: {}", report.index_entries)?;
        for problem in &report.problems {
            writeln!(
                out,
                "problem: {} {}: {}",
                problem.kind, problem.subject, problem.detail
            )?;
        }
        for note in &report.notes {
            writeln!(out, "note: {} {}: {}", note.kind, note.subject, note.detail)?;
        }
        let unlisted = (report.problem_count + report.note_count)
            .saturating_sub((report.problems.len() + report.notes.len()) as u64);
        if unlisted > 0 {
            writeln!(out, "({unlisted} more findings not listed)")?;
        }
        if report.is_clean() {
            writeln!(out, "repo is consistent ({} notes)", report.note_count)?;
        }
    }
    if !report.is_clean() {
        anyhow::bail!(
            "repo verify found {} inconsistencies in {}",
            report.problem_count,
            ctx.repo.root().display()
        );
    }
    Ok(())
}

pub fn dag(ctx: &Ctx, command: DagCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        DagCommand::Export { cid } => {
            let cid = parse_cid(&cid)?;
            let blocks = ctx.blocks();
            let progress = bar(ctx.progress, None, "exporting");
            let mut out = WriteProgress {
                inner: &mut *io.stdout,
                bar: progress.clone(),
            };
            car::export(&blocks, &cid, &mut out)?;
            progress.finish_and_clear();
            Ok(())
        }
        DagCommand::Import { file, pin_roots } => {
            let mut session = ctx.store.session();
            let imported = if file == Path::new("-") {
                let progress = bar(ctx.progress, None, "importing");
                let imported = car::import(
                    &mut session,
                    ReadProgress {
                        inner: &mut *io.stdin,
                        bar: progress.clone(),
                    },
                )?;
                progress.finish_and_clear();
                imported
            } else {
                let path = ctx.path(&file);
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                let size = f.metadata().map(|m| m.len()).ok();
                let progress = bar(ctx.progress, size, "importing");
                let reader = ReadProgress {
                    inner: std::io::BufReader::with_capacity(1 << 20, f),
                    bar: progress.clone(),
                };
                let imported = car::import(&mut session, reader)?;
                progress.finish_and_clear();
                imported
            };
            let roots = imported.roots.clone();
            if pin_roots {
                // A root pin needs its whole DAG: check before anything is pinned.
                for root in &roots {
                    if !session_complete(ctx, &mut session, root)? {
                        anyhow::bail!(
                            "the CAR does not hold the whole DAG of root {root}; nothing was pinned (use --pin-roots=false)"
                        );
                    }
                }
            }
            let mut rest = roots.iter();
            let first = if pin_roots {
                rest.next().map(|r| (*r, PinMode::Recursive, None))
            } else {
                None
            };
            session.finish(first)?;
            if pin_roots {
                for root in rest {
                    ctx.store.pin(root, PinMode::Recursive, None)?;
                }
            }
            for root in &roots {
                if ctx.json {
                    print_json(
                        io.stdout,
                        &serde_json::json!({"root": root.to_string(), "pinned": pin_roots, "blocks": imported.blocks}),
                    )?;
                } else {
                    let state = if pin_roots { "pinned" } else { "imported" };
                    writeln!(
                        io.stdout,
                        "{state} root {root} ({} blocks)",
                        imported.blocks
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// Whether every block under `root` is in the store (after flushing the session).
fn session_complete(
    ctx: &Ctx,
    session: &mut ipnix_store::Session<'_>,
    root: &cid::Cid,
) -> anyhow::Result<bool> {
    session.flush()?;
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        let Some(data) = ctx.store.get(&cid)? else {
            return Ok(false);
        };
        let dag = ipnix_store::links::dag_links(&cid, &data)?;
        seen.extend(dag.covered);
        for link in dag.children {
            if seen.insert(link) {
                stack.push(link);
            }
        }
    }
    Ok(true)
}
