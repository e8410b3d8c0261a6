//! `ipnix swh ...`: SWHIDs of paths on disk, and what Software Heritage
//! archives of the pinned sources lists (`coverage`, `export`); also turns
//! the `--no-swh`/`--swh-url`/`--swh-token-file` flags into the
//! [`SwhConfig`] the pinner, `sources get` and the daemon use.

use super::{print_json, Ctx, Io};
use crate::{SwhArgs, SwhCommand};
use anyhow::Context as _;
use ipnix_sources::list::{self, EntryStatus};
use ipnix_sources::pin;
use ipnix_sources::swh::{SwhClient, SwhConfig, KNOWN_BATCH};
use ipnix_sources::unpack::{self, UnpackLimits};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

/// Set (non-empty) in the environment: SWH is off unless `--swh-url` is
/// given. The test harness sets it so no test reaches the public archive.
pub const NO_SWH_ENV: &str = "IPNIX_NO_SWH";

/// The SWH client settings the flags ask for; `None` when SWH is off.
pub fn config(ctx: &Ctx, args: &SwhArgs) -> anyhow::Result<Option<SwhConfig>> {
    config_at(&ctx.cwd, args)
}

/// [`config`] with relative paths taken from `cwd`.
pub fn config_at(cwd: &Path, args: &SwhArgs) -> anyhow::Result<Option<SwhConfig>> {
    let env_off = std::env::var_os(NO_SWH_ENV).is_some_and(|v| !v.is_empty() && v != "0");
    if args.no_swh || (args.swh_url.is_none() && env_off) {
        return Ok(None);
    }
    let mut config = SwhConfig::new(
        args.swh_url
            .clone()
            .unwrap_or_else(|| ipnix_sources::swh::DEFAULT_URL.to_owned()),
    );
    if let Some(file) = &args.swh_token_file {
        config = config.with_token_file(&cwd.join(file))?;
    }
    if let Some(ms) = args.swh_poll_ms {
        let first = Duration::from_millis(ms);
        config = config.with_poll_interval(first, first.max(Duration::from_secs(60)));
    }
    Ok(Some(config))
}

pub fn run(ctx: &Ctx, command: SwhCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        SwhCommand::Id { paths } => {
            for path in paths {
                // Like `swh identify`, a symlink named on the command line is followed.
                let full = std::fs::canonicalize(ctx.path(&path))
                    .with_context(|| format!("{}", path.display()))?;
                let swhid = ipnix_bridge::swhid::of_path(&full)
                    .with_context(|| format!("{}", path.display()))?;
                if ctx.json {
                    print_json(
                        io.stdout,
                        &serde_json::json!({"path": path, "swhid": swhid}),
                    )?;
                } else {
                    writeln!(io.stdout, "{swhid}\t{}", path.display())?;
                }
            }
            Ok(())
        }
        SwhCommand::Coverage { name, swh } => {
            let coverage = coverage(ctx, name.as_deref(), &swh)?;
            report(ctx, io, &coverage)
        }
        SwhCommand::Export { name, output, swh } => {
            let coverage = coverage(ctx, name.as_deref(), &swh)?;
            let sources: Vec<serde_json::Value> = coverage
                .entries
                .iter()
                .filter(|e| e.class == Class::Missing && !e.entry.urls.is_empty())
                .map(|e| export_entry(&e.entry))
                .collect();
            let revision = match coverage.revisions.as_slice() {
                [one] => one.clone(),
                _ => None,
            };
            let file = serde_json::json!({
                "version": 1,
                "revision": revision,
                "sources": sources,
            });
            let text = serde_json::to_string_pretty(&file)? + "\n";
            match output {
                Some(path) => {
                    let path = ctx.path(&path);
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    if ctx.json {
                        print_json(
                            io.stdout,
                            &serde_json::json!({"output": path, "sources": sources.len()}),
                        )?;
                    } else {
                        writeln!(
                            io.stdout,
                            "wrote {} missing sources to {}",
                            sources.len(),
                            path.display()
                        )?;
                    }
                }
                None => io.stdout.write_all(text.as_bytes())?,
            }
            Ok(())
        }
    }
}

/// Where one pinned entry stands in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Archived, and this node can rebuild the exact source from it.
    Archived,
    /// A flat tarball archived unpacked, with no recipe here.
    TreeOnly,
    /// Not archived: losing it here loses it for good.
    Missing,
    /// Not held here (failed or skipped), so its SWHID is not known.
    NotHeld,
}

impl Class {
    fn as_str(self) -> &'static str {
        match self {
            Class::Archived => "archived",
            Class::TreeOnly => "tree-only",
            Class::Missing => "missing",
            Class::NotHeld => "not-held",
        }
    }
}

struct Covered {
    list: String,
    entry: EntryStatus,
    /// `file`, `tarball` or `tree`.
    kind: &'static str,
    swhid: Option<String>,
    class: Class,
}

struct Coverage {
    entries: Vec<Covered>,
    revisions: Vec<Option<String>>,
    asked: usize,
    requests: usize,
}

fn coverage(ctx: &Ctx, name: Option<&str>, args: &SwhArgs) -> anyhow::Result<Coverage> {
    let config = config(ctx, args)?.ok_or_else(|| {
        anyhow::anyhow!("Software Heritage is off (--no-swh or {NO_SWH_ENV}); give --swh-url")
    })?;
    let lists = match name {
        Some(name) => match pin::find_list(&ctx.store, name)? {
            Some(cid) => vec![(name.to_owned(), cid)],
            None => anyhow::bail!("no sources list named {name:?} is pinned"),
        },
        None => pin::lists(&ctx.store)?,
    };
    let mut entries = Vec::new();
    let mut revisions = Vec::new();
    for (list_name, cid) in lists {
        let root = list::load_root(&ctx.store, &cid)?;
        revisions.push(root.revision.clone());
        let mut held = Vec::new();
        list::for_each_entry(&ctx.store, &root, |e| held.push(e))?;
        for entry in held {
            let (kind, swhid) = match (entry.is_ok(), entry.source) {
                (true, Some(pathinfo)) => identify(ctx, &entry, &pathinfo)
                    .with_context(|| format!("entry #{} of {list_name}", entry.index))?,
                _ => ("", None),
            };
            entries.push(Covered {
                list: list_name.clone(),
                entry,
                kind,
                class: if swhid.is_some() {
                    Class::Missing
                } else {
                    Class::NotHeld
                },
                swhid,
            });
        }
    }
    let mut swhids: Vec<String> = entries.iter().filter_map(|e| e.swhid.clone()).collect();
    swhids.sort();
    swhids.dedup();
    // The client is blocking: built, used and dropped on this thread.
    let client = SwhClient::new(config)?;
    let known = client.known(&swhids)?;
    for covered in &mut entries {
        let Some(swhid) = &covered.swhid else {
            continue;
        };
        if known.get(swhid).copied().unwrap_or(false) {
            let rebuildable = covered.kind != "tarball"
                || covered
                    .entry
                    .hash
                    .as_deref()
                    .and_then(|h| ipnix_bridge::NixHash::parse(h).ok())
                    .is_some_and(|h| ipnix_sources::swh::has_recipe(&ctx.store, &h));
            covered.class = if rebuildable {
                Class::Archived
            } else {
                Class::TreeOnly
            };
        }
    }
    Ok(Coverage {
        entries,
        revisions,
        asked: swhids.len(),
        requests: swhids.len().div_ceil(KNOWN_BATCH),
    })
}

/// The kind of a held entry and the SWHID SWH would archive it under: a
/// recursive tree's `swh:1:dir:`; a flat file's `swh:1:cnt:`; a flat
/// archive's unpacked directory (top-level folder kept, as SWH's tarball
/// loader keeps it).
fn identify(
    ctx: &Ctx,
    entry: &EntryStatus,
    pathinfo: &cid::Cid,
) -> anyhow::Result<(&'static str, Option<String>)> {
    let info = ipnix_bridge::load_pathinfo(&ctx.store, pathinfo)?;
    let swhid = ipnix_bridge::swhid::of_pathinfo(&info)?;
    if entry.mode == "recursive" {
        return Ok(("tree", Some(swhid)));
    }
    let (_, mut reader) =
        pin::open_flat(ctx.store.clone(), pathinfo).map_err(anyhow::Error::msg)?;
    let mut head = [0u8; 512];
    let mut got = 0;
    while got < head.len() {
        match reader.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if unpack::detect_bytes(&head[..got]).is_none() {
        return Ok(("file", Some(swhid)));
    }
    reader.seek(SeekFrom::Start(0))?;
    let work = tempfile::Builder::new()
        .prefix("swh-coverage-")
        .tempdir_in(ensure_tmp(ctx)?)?;
    let dest = work.path().join("tree");
    match unpack::unpack_from(reader, &dest, &UnpackLimits::default()) {
        Ok(_) => Ok((
            "tarball",
            Some(ipnix_bridge::swhid::of_path(&dest).context("SWHID of the unpacked tarball")?),
        )),
        // Not an archive after all (or one this node cannot unpack): the file.
        Err(_) => Ok(("file", Some(swhid))),
    }
}

fn ensure_tmp(ctx: &Ctx) -> anyhow::Result<std::path::PathBuf> {
    let tmp = ctx.repo.root().join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("{}", tmp.display()))?;
    Ok(tmp)
}

fn report(ctx: &Ctx, io: &mut Io<'_>, coverage: &Coverage) -> anyhow::Result<()> {
    let mut counts: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for e in &coverage.entries {
        let kind = if e.kind.is_empty() { "-" } else { e.kind };
        *counts
            .entry(e.class.as_str())
            .or_default()
            .entry(kind)
            .or_default() += 1;
    }
    let total = |class: Class| coverage.entries.iter().filter(|e| e.class == class).count();
    let missing: Vec<&Covered> = coverage
        .entries
        .iter()
        .filter(|e| e.class == Class::Missing)
        .collect();
    if ctx.json {
        return print_json(
            io.stdout,
            &serde_json::json!({
                "entries": coverage.entries.len(),
                "archived": total(Class::Archived),
                "tree_only": total(Class::TreeOnly),
                "missing": total(Class::Missing),
                "not_held": total(Class::NotHeld),
                "by_kind": counts,
                "asked": coverage.asked,
                "requests": coverage.requests,
                "missing_entries": missing.iter().map(|e| serde_json::json!({
                    "list": e.list, "index": e.entry.index, "hash": e.entry.hash,
                    "mode": e.entry.mode, "kind": e.kind, "swhid": e.swhid,
                    "url": e.entry.urls.first(), "store_path": e.entry.store_path,
                })).collect::<Vec<_>>(),
            }),
        );
    }
    writeln!(
        io.stdout,
        "{} entries: {} archived and rebuildable here, {} archived as a tree only, {} missing, {} not held here ({} SWHIDs asked in {} requests)",
        coverage.entries.len(),
        total(Class::Archived),
        total(Class::TreeOnly),
        total(Class::Missing),
        total(Class::NotHeld),
        coverage.asked,
        coverage.requests
    )?;
    for (class, kinds) in &counts {
        for (kind, n) in kinds {
            writeln!(io.stdout, "  {class} {kind}: {n}")?;
        }
    }
    for e in missing {
        writeln!(
            io.stdout,
            "missing\t{}\t{}\t{}\t{}",
            e.entry.hash.as_deref().unwrap_or("-"),
            e.swhid.as_deref().unwrap_or("-"),
            e.entry.urls.first().map(String::as_str).unwrap_or("-"),
            e.list
        )?;
    }
    Ok(())
}

/// One sources.json entry as nixpkgs-swh publishes them (what SWH's
/// nixguix lister reads).
fn export_entry(entry: &EntryStatus) -> serde_json::Value {
    let hash = entry
        .hash
        .as_deref()
        .and_then(|h| ipnix_bridge::NixHash::parse(h).ok());
    let recursive = entry.mode == "recursive";
    serde_json::json!({
        "type": "url",
        "urls": entry.urls,
        "integrity": entry.hash,
        "outputHash": entry.hash,
        "outputHashAlgo": hash.as_ref().map(|h| h.algo().name()),
        "outputHashMode": if recursive { "recursive" } else { "flat" },
        "inferredFetcher": if recursive { "fetchzip" } else { "fetchurl" },
    })
}

/// Fills `output`'s place with a recursive source recovered from SWH:
/// verified (NAR hash) before it is moved into place.
pub fn write_tree(root: &Path, hash: &ipnix_bridge::NixHash, output: &Path) -> anyhow::Result<()> {
    let got = ipnix_sources::pin::nar_hash_of(root, hash.algo()).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        &got == hash,
        "hash mismatch: the tree Software Heritage cooked hashes to {}, expected {}; nothing written",
        got.to_sri(),
        hash.to_sri()
    );
    match std::fs::rename(root, output) {
        Ok(()) => Ok(()),
        Err(_) => {
            copy_tree(root, output).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(output);
            })?;
            Ok(())
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if meta.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        std::fs::copy(from, to)?;
    }
    Ok(())
}
