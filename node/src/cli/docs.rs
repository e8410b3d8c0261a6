//! `ipnix completions SHELL` and `ipnix man`: shell completion scripts and
//! roff manual pages, generated from the same clap definition that parses
//! the command line, so they never fall behind it.

use anyhow::Context as _;
use std::io::Write;
use std::path::Path;

pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut command = super::examples::command();
    clap_complete::generate(shell, &mut command, "ipnix", out);
    Ok(())
}

/// Without `dir`: the top page on `out`. With it: one page per command
/// (`ipnix.1`, `ipnix-add.1`, `ipnix-nix-import.1`, ...), each file named on `out`.
pub fn man(dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<()> {
    let command = super::examples::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(command)
            .render(out)
            .context("cannot write the manual page")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(command, dir, &mut written)?;
    for path in written {
        writeln!(out, "{}", path.display())?;
    }
    Ok(())
}

/// Writes `command`'s page and its subcommands' (hidden ones and `help`
/// left out), each named after its full command path (`ipnix-nix-import.1`),
/// as clap names a built subcommand.
fn write_pages(
    command: clap::Command,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let mut command = command.disable_help_subcommand(true);
    command.build();
    write_page(command, dir, written)
}

fn write_page(
    command: clap::Command,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub.clone(), dir, written)?;
    }
    let path = clap_mangen::Man::new(command)
        .generate_to(dir)
        .with_context(|| format!("cannot write a manual page into {}", dir.display()))?;
    written.push(path);
    Ok(())
}
