//! `ipnix add`, `cat` and `get`: UnixFS files and directories.

use super::progress::{bar, ReadProgress, WriteProgress};
use super::{parse_cid, print_json, Ctx, Io};
use crate::AddArgs;
use anyhow::Context as _;
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::PinMode;
use std::path::Path;

pub fn add(ctx: &Ctx, args: AddArgs, io: &mut Io<'_>) -> anyhow::Result<()> {
    let profile: Profile = args.profile.parse().map_err(|e| {
        anyhow::anyhow!(
            "--profile {}: {e} (use unixfs-v1-2025 or unixfs-v0-2015)",
            args.profile
        )
    })?;
    let params = profile.params();
    let mut session = ctx.store.session();
    let from_stdin = args.path == Path::new("-");
    let path = ctx.path(&args.path);
    let (added, name) = if from_stdin {
        let progress = bar(ctx.progress, None, "adding stdin");
        let reader = ReadProgress {
            inner: &mut *io.stdin,
            bar: progress.clone(),
        };
        let added = unixfs::add_file(&mut session, reader, &params)?;
        progress.finish_and_clear();
        (added, String::new())
    } else {
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if meta.is_dir() {
            if !args.recursive {
                anyhow::bail!("{} is a directory: add it with -r", path.display());
            }
            let progress = bar(ctx.progress, None, "adding directory");
            let added = unixfs::add_path(&mut session, &path, &params)?;
            progress.finish_and_clear();
            (added, name)
        } else {
            let file = std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let progress = bar(ctx.progress, Some(meta.len()), "adding");
            // No BufReader: the importer reads whole chunks, which a buffer
            // would only copy once more.
            let reader = ReadProgress {
                inner: file,
                bar: progress.clone(),
            };
            let added = unixfs::add_file(&mut session, reader, &params)?;
            progress.finish_and_clear();
            (added, name)
        }
    };
    let pin = args.pin.then_some((added.cid, PinMode::Recursive, None));
    session
        .finish(pin)
        .context("cannot commit the added blocks")?;
    if ctx.json {
        print_json(
            io.stdout,
            &serde_json::json!({"cid": added.cid.to_string(), "name": name, "size": added.size}),
        )
    } else if args.quieter {
        writeln!(io.stdout, "{}", added.cid)?;
        Ok(())
    } else {
        writeln!(io.stdout, "added {} {}", added.cid, name)?;
        Ok(())
    }
}

pub fn cat(ctx: &Ctx, cid: &str, io: &mut Io<'_>) -> anyhow::Result<()> {
    let cid = parse_cid(cid)?;
    let blocks = ctx.blocks();
    let mut reader = unixfs::cat(&blocks, &cid)?;
    let mut out = WriteProgress {
        inner: &mut *io.stdout,
        bar: bar(ctx.progress, None, "cat"),
    };
    std::io::copy(&mut reader, &mut out).with_context(|| format!("cannot read {cid}"))?;
    out.bar.finish_and_clear();
    Ok(())
}

pub fn get(ctx: &Ctx, cid: &str, output: &Path, io: &mut Io<'_>) -> anyhow::Result<()> {
    let cid = parse_cid(cid)?;
    let output = ctx.path(output);
    let blocks = ctx.blocks();
    unixfs::get_to_path(&blocks, &cid, &output)?;
    if ctx.json {
        print_json(
            io.stdout,
            &serde_json::json!({"cid": cid.to_string(), "path": output}),
        )
    } else {
        writeln!(io.stdout, "saved {cid} to {}", output.display())?;
        Ok(())
    }
}
