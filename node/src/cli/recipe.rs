//! `ipnix sources disassemble` and `ipnix sources reassemble`: tarballs as
//! trees. The work is in `ipnix_sources::recipe`; this module resolves the
//! arguments (a recipe CID or a tarball hash) and prints lines or JSON.
//! Reassembly reads blocks through `Ctx::blocks`, so inside the daemon the
//! tree and recipe blocks missing here are fetched from peers.

use super::{print_json, Ctx, Io};
use anyhow::Context as _;
use ipnix_sources::index::parse_query;
use ipnix_sources::recipe::{self, DisassembleOptions};
use std::path::Path;

pub fn disassemble(ctx: &Ctx, io: &mut Io<'_>, file: &Path) -> anyhow::Result<()> {
    let path = ctx.path(file);
    anyhow::ensure!(path.is_file(), "{}: no such file", path.display());
    let started = std::time::Instant::now();
    let done = recipe::disassemble(&ctx.store, &path, &DisassembleOptions::default())
        .with_context(|| format!("disassembling {}", path.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    if ctx.json {
        return print_json(
            io.stdout,
            &serde_json::json!({
                "recipe": done.recipe.to_string(),
                "tree": done.tree.to_string(),
                "swhid": done.swhid,
                "tarball_bytes": done.tarball_bytes,
                "recipe_bytes": done.recipe_bytes,
                "sha256": hex::encode(done.sha256),
                "format": done.format,
                "fallbacks": done.fallbacks,
                "fallback_reasons": done.fallback_reasons,
                "members": done.members,
                "exact": true,
                "seconds": seconds,
            }),
        );
    }
    let percent = 100.0 * done.recipe_bytes as f64 / done.tarball_bytes.max(1) as f64;
    writeln!(io.stdout, "recipe  {}", done.recipe)?;
    writeln!(io.stdout, "tree    {} ({})", done.tree, done.swhid)?;
    writeln!(
        io.stdout,
        "size    {} B recipe for a {} B {} ({percent:.2}%), {} members, checked to rebuild exactly",
        done.recipe_bytes, done.tarball_bytes, done.format, done.members
    )?;
    if done.fallbacks.is_empty() {
        writeln!(io.stdout, "layers  all regenerated")?;
    } else {
        writeln!(
            io.stdout,
            "layers  kept as bytes: {} ({})",
            done.fallbacks.join(", "),
            done.fallback_reasons.join("; ")
        )?;
    }
    writeln!(io.stdout, "pinned  recipe:{}", hex::encode(done.sha256))?;
    Ok(())
}

pub fn reassemble(ctx: &Ctx, io: &mut Io<'_>, what: &str, output: &Path) -> anyhow::Result<()> {
    let output = ctx.path(output);
    anyhow::ensure!(
        output.symlink_metadata().is_err(),
        "{} exists; give a new path to -o",
        output.display()
    );
    let cid = match cid::Cid::try_from(what) {
        Ok(cid) => cid,
        Err(_) => {
            let hash = parse_query(what)
                .with_context(|| format!("{what:?} is neither a recipe CID nor a hash"))?;
            recipe::lookup(&ctx.store, &hash)?.with_context(|| {
                format!(
                    "no recipe for {} is known here (run `ipnix sources disassemble` on the tarball)",
                    hash.to_sri()
                )
            })?
        }
    };
    let blocks = ctx.blocks();
    let done = recipe::reassemble_to_file(&blocks, &cid, &output)
        .with_context(|| format!("reassembling {cid}"))?;
    if ctx.json {
        return print_json(
            io.stdout,
            &serde_json::json!({
                "file": output,
                "bytes": done.bytes,
                "sha256": hex::encode(done.sha256),
                "recipe": cid.to_string(),
            }),
        );
    }
    writeln!(
        io.stdout,
        "{} ({} B, sha256 {}) from recipe {cid}",
        output.display(),
        done.bytes,
        hex::encode(done.sha256)
    )?;
    Ok(())
}
