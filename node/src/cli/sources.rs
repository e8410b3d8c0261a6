//! `ipnix sources ...`: pin nixpkgs' sources.json lists and single sources,
//! report their status, and get a source back by its hash. The work is in
//! `ipnix_sources`; this module turns flags into its calls and its results
//! into lines or JSON.

use super::{print_json, Ctx, Io};
use crate::SourcesCommand;
use anyhow::Context as _;
use ipnix_bridge::{FileIngestion, NixHash};
use ipnix_sources::fetch::{FetchConfig, Fetcher, Sink};
use ipnix_sources::index::{self, parse_query};
use ipnix_sources::list::{self, EntryStatus};
use ipnix_sources::model::SourcesFile;
use ipnix_sources::pin::{self, HashingFile, PinConfig, PinReport, Progress};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How long `sources get` waits for peers to say they hold a source: longer
/// than the mirror's `--peer-timeout`, since a person waits, not a build.
const GET_PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// Largest sources.json read from a URL.
const MAX_LIST_BYTES: u64 = 256 << 20;

pub fn run(ctx: &Ctx, command: SourcesCommand, io: &mut Io<'_>) -> anyhow::Result<()> {
    match command {
        SourcesCommand::Pin {
            file,
            name,
            jobs,
            from_store,
            max_bytes,
            cacert,
            swh,
        } => {
            let bytes = read_list(ctx, &file, cacert.as_deref())?;
            let parsed = SourcesFile::parse(&bytes).with_context(|| file.clone())?;
            let name = name.unwrap_or_else(|| pin::default_name(&parsed));
            let config = pin_config(ctx, jobs, from_store, max_bytes, cacert.as_deref())
                .with_swh(super::swh::config(ctx, &swh)?);
            let report = run_pin(ctx, &parsed, &name, Vec::new(), &config)?;
            summarise(ctx, io, &report)
        }
        SourcesCommand::Add {
            urls,
            file,
            hash,
            unpack,
            name,
            cacert,
        } => {
            let hash = NixHash::parse(&hash)
                .with_context(|| format!("--hash {hash:?} is not an SRI or algo:digest hash"))?;
            let name = name.unwrap_or_else(|| "added".to_owned());
            pin::check_list_name(&name)?;
            let keep = kept_entries(ctx, &name, &hash)?;
            if let Some(path) = &file {
                let path = ctx.path(path);
                anyhow::ensure!(path.is_file(), "{}: no such file", path.display());
                return add_local_file(ctx, io, &path, &hash, unpack, &name, keep);
            }
            anyhow::ensure!(!urls.is_empty(), "give at least one URL, or --file PATH");
            let entry = serde_json::json!({
                "type": "url",
                "urls": urls,
                "integrity": hash.to_sri(),
                "outputHashMode": if unpack { "recursive" } else { "flat" },
            });
            let text = serde_json::json!({"version": 1, "sources": [entry]}).to_string();
            let mut parsed = SourcesFile::parse(text.as_bytes())?;
            for entry in &mut parsed.entries {
                entry.index += keep.len();
            }
            let config = pin_config(ctx, 1, false, None, cacert.as_deref());
            let report = run_pin(ctx, &parsed, &name, keep, &config)?;
            summarise(ctx, io, &report)
        }
        SourcesCommand::Status { name } => status(ctx, io, name.as_deref()),
        SourcesCommand::Ls { name } => ls(ctx, io, name.as_deref()),
        SourcesCommand::Get {
            hash,
            output,
            cacert,
            swh,
        } => {
            let swh = super::swh::config(ctx, &swh)?;
            get(ctx, io, &hash, &ctx.path(&output), cacert.as_deref(), swh)
        }
        SourcesCommand::Disassemble { file } => super::recipe::disassemble(ctx, io, &file),
        SourcesCommand::Reassemble { what, output } => {
            super::recipe::reassemble(ctx, io, &what, &output)
        }
        SourcesCommand::Unpin { name } => {
            if !pin::unpin_list(&ctx.store, &name)? {
                anyhow::bail!(
                    "no sources list named {name:?} is pinned (see `ipnix sources status`)"
                );
            }
            if ctx.json {
                print_json(io.stdout, &serde_json::json!({"unpinned": name}))
            } else {
                writeln!(
                    io.stdout,
                    "unpinned sources list {name}; `ipnix gc` frees what nothing else pins"
                )?;
                Ok(())
            }
        }
    }
}

fn pin_config(
    ctx: &Ctx,
    jobs: usize,
    from_store: bool,
    max_bytes: Option<u64>,
    cacert: Option<&Path>,
) -> PinConfig {
    let mut fetch = FetchConfig::default();
    if let Some(max) = max_bytes {
        fetch = fetch.with_max_bytes(max);
    }
    if let Some(ca) = cacert {
        fetch = fetch.with_extra_root_certs(ctx.path(ca));
    }
    PinConfig::new(ctx.repo.root().join("tmp"))
        .with_jobs(jobs)
        .with_from_store(from_store)
        .with_fetch(fetch)
}

/// A bar of entries with bytes and failures, on a terminal.
struct Bar {
    bar: indicatif::ProgressBar,
    failed: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl Progress for Bar {
    fn entry(&self, status: &EntryStatus) {
        use std::sync::atomic::Ordering;
        if status.status == "failed" {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.bar.inc(1);
        self.bar.set_message(format!(
            "{} MiB, {} failed",
            self.bytes.load(Ordering::Relaxed) >> 20,
            self.failed.load(Ordering::Relaxed)
        ));
    }
    fn bytes(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run_pin(
    ctx: &Ctx,
    parsed: &SourcesFile,
    name: &str,
    keep: Vec<EntryStatus>,
    config: &PinConfig,
) -> anyhow::Result<PinReport> {
    let bar = if ctx.progress {
        let bar = indicatif::ProgressBar::new(parsed.entries.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "sources {wide_bar} {pos}/{len} entries, {msg} eta {eta}",
            )
            .expect("static template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let progress = Bar {
        bar,
        failed: Default::default(),
        bytes: Default::default(),
    };
    let report = pin::pin_list(&ctx.store, parsed, name, keep, config, &progress)?;
    progress.bar.finish_and_clear();
    Ok(report)
}

fn summarise(ctx: &Ctx, io: &mut Io<'_>, report: &PinReport) -> anyhow::Result<()> {
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for entry in report.entries.iter().filter(|e| e.status == "failed") {
        *reasons
            .entry(entry.reason.clone().unwrap_or_default())
            .or_default() += 1;
    }
    if ctx.json {
        print_json(
            io.stdout,
            &serde_json::json!({
                "name": report.name,
                "list": report.list.to_string(),
                "total": report.entries.len(),
                "ok": report.ok(),
                "failed": report.failed(),
                "skipped": report.skipped(),
                "failures": reasons,
                "fetched": report.fetched,
                "fetched_bytes": report.fetched_bytes,
            }),
        )?;
    } else {
        writeln!(
            io.stdout,
            "pinned sources list {} ({}): {} ok, {} failed, {} skipped; fetched {} ({} bytes)",
            report.name,
            report.list,
            report.ok(),
            report.failed(),
            report.skipped(),
            report.fetched,
            report.fetched_bytes
        )?;
        for entry in report.entries.iter().filter(|e| e.status == "failed") {
            writeln!(
                io.stdout,
                "  failed #{} {}: {} ({})",
                entry.index,
                entry.urls.first().map(String::as_str).unwrap_or("-"),
                entry.reason.as_deref().unwrap_or("?"),
                entry.detail.as_deref().unwrap_or("")
            )?;
        }
    }
    io.stdout.flush()?;
    if report.failed() > 0 {
        anyhow::bail!(
            "{} of {} entries failed (see `ipnix sources status {}`)",
            report.failed(),
            report.entries.len(),
            report.name
        );
    }
    Ok(())
}

/// Reads a sources.json from a file, `-` (stdin) or an http(s) URL.
fn read_list(ctx: &Ctx, file: &str, cacert: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if file.starts_with("http://") || file.starts_with("https://") {
        let mut config = FetchConfig::default().with_max_bytes(MAX_LIST_BYTES);
        if let Some(ca) = cacert {
            config = config.with_extra_root_certs(ctx.path(ca));
        }
        let fetcher = Fetcher::new(config)?;
        let mut sink: Vec<u8> = Vec::new();
        fetcher
            .fetch(&[file.to_owned()], &mut sink)
            .with_context(|| format!("cannot download {file}"))?;
        return Ok(sink);
    }
    let path = ctx.path(Path::new(file));
    let meta = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
    anyhow::ensure!(
        meta.len() <= MAX_LIST_BYTES,
        "{}: {} bytes is larger than a sources list can be ({MAX_LIST_BYTES})",
        path.display(),
        meta.len()
    );
    std::fs::read(&path).with_context(|| format!("{}", path.display()))
}

/// Entries of list `name` other than `hash` (what `sources add` keeps).
fn kept_entries(ctx: &Ctx, name: &str, hash: &NixHash) -> anyhow::Result<Vec<EntryStatus>> {
    let Some(root_cid) = pin::find_list(&ctx.store, name)? else {
        return Ok(Vec::new());
    };
    let root = list::load_root(&ctx.store, &root_cid)?;
    let sri = hash.to_sri();
    let mut kept = Vec::new();
    list::for_each_entry(&ctx.store, &root, |e| {
        if e.hash.as_deref() != Some(sri.as_str()) {
            kept.push(e);
        }
    })?;
    for (i, entry) in kept.iter_mut().enumerate() {
        entry.index = i as u64;
    }
    Ok(kept)
}

/// `sources add --file PATH`: the file plays the download; its name (or
/// `source` for `--unpack`) names the fixed-output path.
fn add_local_file(
    ctx: &Ctx,
    io: &mut Io<'_>,
    path: &Path,
    hash: &NixHash,
    unpack: bool,
    name: &str,
    keep: Vec<EntryStatus>,
) -> anyhow::Result<()> {
    let mode = if unpack {
        FileIngestion::Recursive
    } else {
        FileIngestion::Flat
    };
    let store_name = match mode {
        FileIngestion::Recursive => "source".to_owned(),
        FileIngestion::Flat => path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| ipnix_bridge::hash::check_name(n).is_ok())
            .unwrap_or("source")
            .to_owned(),
    };
    let store_path = ipnix_bridge::ContentAddress::fixed(mode, hash.clone())
        .fixed_output_path(ipnix_bridge::hash::DEFAULT_STORE_DIR, &store_name)?;
    let entry = ipnix_sources::model::Entry {
        index: keep.len(),
        kind: ipnix_sources::model::EntryKind::Url(ipnix_sources::model::UrlSource {
            urls: Vec::new(),
            hash: hash.clone(),
            mode,
            store_path,
            post_fetch: false,
            submodule: false,
        }),
    };
    let parsed = SourcesFile {
        version: 1,
        revision: None,
        entries: vec![entry],
    };
    let config = PinConfig::new(ctx.repo.root().join("tmp")).with_local_file(path.to_path_buf());
    let report = run_pin(ctx, &parsed, name, keep, &config)?;
    summarise(ctx, io, &report)
}

/// Every list to report on: `name`, or all pinned lists.
fn selected_lists(ctx: &Ctx, name: Option<&str>) -> anyhow::Result<Vec<(String, cid::Cid)>> {
    match name {
        Some(name) => match pin::find_list(&ctx.store, name)? {
            Some(cid) => Ok(vec![(name.to_owned(), cid)]),
            None => anyhow::bail!("no sources list named {name:?} is pinned"),
        },
        None => Ok(pin::lists(&ctx.store)?),
    }
}

fn status(ctx: &Ctx, io: &mut Io<'_>, name: Option<&str>) -> anyhow::Result<()> {
    // The status page counts with the same function.
    for list in ipnix_node::summary::sources_lists(&ctx.store, name, None)? {
        let (name, cid, last, ok, bytes) =
            (&list.name, list.cid, list.last_attempt, list.ok, list.bytes);
        if ctx.json {
            print_json(
                io.stdout,
                &serde_json::json!({
                    "name": name, "list": cid.to_string(), "revision": list.revision,
                    "total": list.total, "ok": ok,
                    "failed": list.failed(), "failures": list.failures,
                    "skipped": list.skipped(), "skips": list.skips,
                    "bytes": bytes, "last_attempt": last,
                }),
            )?;
        } else {
            writeln!(
                io.stdout,
                "{name} ({cid}): {} entries, {ok} ok ({bytes} bytes), {} failed, {} skipped; last attempt {last} (unix)",
                list.total,
                list.failed(),
                list.skipped()
            )?;
            for (reason, n) in &list.failures {
                writeln!(io.stdout, "  failed {reason}: {n}")?;
            }
            for (reason, n) in &list.skips {
                writeln!(io.stdout, "  skipped {reason}: {n}")?;
            }
        }
    }
    Ok(())
}

fn ls(ctx: &Ctx, io: &mut Io<'_>, name: Option<&str>) -> anyhow::Result<()> {
    for (name, cid) in selected_lists(ctx, name)? {
        let root = list::load_root(&ctx.store, &cid)?;
        let mut result = Ok(());
        list::for_each_entry(&ctx.store, &root, |e| {
            if result.is_err() {
                return;
            }
            result = ls_line(ctx, io, &name, &e);
        })?;
        result?;
    }
    Ok(())
}

fn ls_line(ctx: &Ctx, io: &mut Io<'_>, list: &str, e: &EntryStatus) -> anyhow::Result<()> {
    let status = match (&e.status[..], &e.reason) {
        ("ok", _) => "ok".to_owned(),
        (s, Some(r)) => format!("{s}:{r}"),
        (s, None) => s.to_owned(),
    };
    if ctx.json {
        return print_json(
            io.stdout,
            &serde_json::json!({
                "list": list, "index": e.index, "hash": e.hash, "mode": e.mode,
                "size": e.size, "status": e.status, "reason": e.reason, "detail": e.detail,
                "got": e.got, "url": e.urls.first(), "urls": e.urls,
                "cid": e.source.map(|c| c.to_string()), "store_path": e.store_path,
                "swhid": e.source.as_ref().and_then(|c| source_swhid(ctx, c)),
            }),
        );
    }
    writeln!(
        io.stdout,
        "{}\t{}\t{}\t{}\t{}\t{}",
        e.hash.as_deref().unwrap_or("-"),
        e.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
        status,
        e.urls.first().map(String::as_str).unwrap_or("-"),
        e.source
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        e.store_path.as_deref().unwrap_or("-"),
    )?;
    Ok(())
}

/// `sources get HASH -o FILE`: the local store, else peers (inside the
/// daemon), else the recorded URLs; verified before the file appears.
fn get(
    ctx: &Ctx,
    io: &mut Io<'_>,
    query: &str,
    output: &Path,
    cacert: Option<&Path>,
    swh: Option<ipnix_sources::swh::SwhConfig>,
) -> anyhow::Result<()> {
    let hash = parse_query(query)?;
    let mut mode = None;
    anyhow::ensure!(
        !output.exists(),
        "{} exists; give a new path to -o",
        output.display()
    );
    let mut urls = Vec::new();
    if let Some(record) = index::find(&ctx.store, &hash)? {
        if let Some(cid) = record.pathinfo_cid() {
            // An entry whose blocks GC cleared (an unpinned cache) falls
            // through to peers and URLs; nothing partial stays at `output`.
            match write_stored(ctx, record.ingestion(), &cid, &hash, output) {
                Ok(()) => return report_get(ctx, io, &hash, output, "store"),
                Err(e) => tracing::warn!("{} in the store is unusable: {e:#}", hash.to_sri()),
            }
        }
        mode = Some(record.ingestion());
        if record.ingestion() == FileIngestion::Flat {
            urls = record.urls;
        }
    }
    // Inside the daemon: peers, whose answer is verified and indexed here
    // before it is written like a local source.
    if let (Some(node), Some(runtime)) = (&ctx.node, &ctx.runtime) {
        let config = ipnix_node::sourceshare::FindConfig::new(GET_PEER_TIMEOUT)
            .with_fetch_timeout(ctx.fetch_timeout);
        let found = runtime.block_on(node.find_source_by_hash(ctx.store.clone(), &hash, &config));
        match found {
            Ok(Some(found)) => {
                write_stored(
                    ctx,
                    found.record.ingestion(),
                    &found.pathinfo,
                    &hash,
                    output,
                )?;
                return report_get(ctx, io, &hash, output, "peer");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("asking peers for {}: {e}", hash.to_sri()),
        }
    }
    for url in recorded_urls(ctx, &hash)? {
        if !urls.contains(&url) {
            urls.push(url);
        }
    }
    if mode.is_none() {
        mode = recorded_mode(ctx, &hash)?;
    }
    let from_urls = if urls.is_empty() {
        Err(anyhow::anyhow!(
            "no source with hash {} is known here (not pinned, no URL recorded)",
            hash.to_sri()
        ))
    } else {
        let mut config = FetchConfig::default();
        if let Some(ca) = cacert {
            config = config.with_extra_root_certs(ctx.path(ca));
        }
        let fetcher = Fetcher::new(config)?;
        write_verified(output, &hash, |sink| {
            fetcher.fetch(&urls, sink)?;
            Ok(())
        })
    };
    let failed = match from_urls {
        Ok(()) => return report_get(ctx, io, &hash, output, "upstream"),
        Err(e) => e,
    };
    let Some(swh) = swh else {
        return Err(failed);
    };
    match get_from_swh(ctx, &hash, mode, output, swh) {
        Ok(()) => report_get(ctx, io, &hash, output, "swh"),
        Err(e) => Err(failed.context(format!("Software Heritage: {e:#}"))),
    }
}

/// `sources get` from Software Heritage: a flat file through the hash
/// check, a recursive tree after its NAR hash is checked. Unknown mode:
/// flat first, then recursive.
fn get_from_swh(
    ctx: &Ctx,
    hash: &NixHash,
    mode: Option<FileIngestion>,
    output: &Path,
    config: ipnix_sources::swh::SwhConfig,
) -> anyhow::Result<()> {
    use ipnix_sources::swh::{Recovered, SwhClient, SwhError};
    let client = SwhClient::new(config)?;
    let work = ctx.repo.root().join("tmp");
    let modes = match mode {
        Some(mode) => vec![mode],
        None => vec![FileIngestion::Flat, FileIngestion::Recursive],
    };
    let mut last = None;
    for mode in modes {
        let attempt = match mode {
            FileIngestion::Flat => write_verified(output, hash, |sink| {
                match client.recover(&ctx.store, mode, hash, &work, sink)? {
                    Recovered::File { .. } => Ok(()),
                    Recovered::ArchivedUnpacked { swhid } => anyhow::bail!(
                        "Software Heritage holds it only unpacked, as {swhid}, and no recipe here rebuilds the tarball (archived-unpacked)"
                    ),
                    other => anyhow::bail!("unexpected recovery {other:?}"),
                }
            }),
            FileIngestion::Recursive => {
                let mut unused: Vec<u8> = Vec::new();
                match client.recover(&ctx.store, mode, hash, &work, &mut unused) {
                    Ok(Recovered::Tree { root, work, .. }) => {
                        let written = super::swh::write_tree(&root, hash, output);
                        drop(work);
                        written
                    }
                    Ok(other) => Err(anyhow::anyhow!("unexpected recovery {other:?}")),
                    Err(e) => Err(e.into()),
                }
            }
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => {
                let not_found = matches!(e.downcast_ref::<SwhError>(), Some(SwhError::NotFound(_)));
                last = Some(e);
                if !not_found {
                    break;
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("not archived")))
}

/// The mode a pinned list records for `hash`, if any.
fn recorded_mode(ctx: &Ctx, hash: &NixHash) -> anyhow::Result<Option<FileIngestion>> {
    let sri = hash.to_sri();
    let mut mode = None;
    for (_, cid) in pin::lists(&ctx.store)? {
        let root = list::load_root(&ctx.store, &cid)?;
        list::for_each_entry(&ctx.store, &root, |e| {
            if mode.is_none() && e.hash.as_deref() == Some(sri.as_str()) {
                mode = Some(if e.mode == "recursive" {
                    FileIngestion::Recursive
                } else {
                    FileIngestion::Flat
                });
            }
        })?;
    }
    Ok(mode)
}

/// Writes a source held in the store to `output`: a flat file through a
/// hash check, a recursive tree as `export_dir` checks it (NAR hash).
fn write_stored(
    ctx: &Ctx,
    mode: FileIngestion,
    cid: &cid::Cid,
    hash: &NixHash,
    output: &Path,
) -> anyhow::Result<()> {
    match mode {
        FileIngestion::Flat => write_verified(output, hash, |sink| {
            let (_, mut reader) =
                pin::open_flat(ctx.store.clone(), cid).map_err(anyhow::Error::msg)?;
            std::io::copy(&mut reader, sink)?;
            Ok(())
        }),
        FileIngestion::Recursive => {
            let blocks = ctx.blocks();
            ipnix_bridge::export_dir_with(
                &blocks,
                cid,
                output,
                &ipnix_sources::tarball::RecipeRebuilder::new(&blocks),
            )
            .with_context(|| format!("cannot write {}", output.display()))?;
            Ok(())
        }
    }
}

fn report_get(
    ctx: &Ctx,
    io: &mut Io<'_>,
    hash: &NixHash,
    output: &Path,
    from: &str,
) -> anyhow::Result<()> {
    if ctx.json {
        print_json(
            io.stdout,
            &serde_json::json!({"hash": hash.to_sri(), "output": output, "from": from}),
        )
    } else {
        writeln!(
            io.stdout,
            "{} -> {} (from {from})",
            hash.to_sri(),
            output.display()
        )?;
        Ok(())
    }
}

/// URLs recorded for `hash` in any pinned list.
fn recorded_urls(ctx: &Ctx, hash: &NixHash) -> anyhow::Result<Vec<String>> {
    let sri = hash.to_sri();
    let mut urls = Vec::new();
    for (_, cid) in pin::lists(&ctx.store)? {
        let root = list::load_root(&ctx.store, &cid)?;
        list::for_each_entry(&ctx.store, &root, |e| {
            if e.hash.as_deref() == Some(sri.as_str()) && e.mode == "flat" {
                for url in e.urls {
                    if !urls.contains(&url) {
                        urls.push(url);
                    }
                }
            }
        })?;
    }
    Ok(urls)
}

/// Writes through a hashing temporary next to `output`, renamed into place
/// only when the hash matches.
fn write_verified(
    output: &Path,
    hash: &NixHash,
    fill: impl FnOnce(&mut dyn Sink) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let temp = tempfile::Builder::new()
        .prefix(".ipnix-get-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut sink = HashingFile::create(temp.path(), hash.algo())?;
    fill(&mut sink)?;
    let got = sink.finish()?;
    anyhow::ensure!(
        &got.declared == hash,
        "hash mismatch: expected {}, got {}; nothing written",
        hash.to_sri(),
        got.declared.to_sri()
    );
    temp.persist_noclobber(output)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {}", output.display(), e.error))?;
    Ok(())
}

/// The SWHID of a stored source's content (`swh:1:cnt:` for a file,
/// `swh:1:dir:` for an unpacked tree).
fn source_swhid(ctx: &Ctx, pathinfo: &cid::Cid) -> Option<String> {
    let info = ipnix_bridge::load_pathinfo(&ctx.store, pathinfo).ok()?;
    ipnix_bridge::swhid::of_pathinfo(&info).ok()
}
