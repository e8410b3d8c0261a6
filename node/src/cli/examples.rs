//! The "Examples:" block of every command's `--help` (and of its manual
//! page): one table here, put on the clap command tree as `after_help`
//! before parsing, so the definitions in main.rs stay about arguments. A
//! command that is not in the table but brings its own `Example: ...`
//! after-help gets it in the same form; `tests/cli_polish.rs` checks that
//! no command is left without one.

use crate::Cli;
use clap::{CommandFactory, FromArgMatches};
use std::ffi::OsString;

/// Command path (subcommand names after `ipnix`, space-separated) -> examples.
const EXAMPLES: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "ipnix daemon &",
            "ipnix add -Q hello.txt",
            "ipnix nix import --closure ./result",
            "ipnix sources pin sources.json",
            "xdg-open http://127.0.0.1:4880/   # the status page",
        ],
    ),
    ("init", &["ipnix init", "ipnix --repo /srv/ipnix init"]),
    (
        "daemon",
        &[
            "ipnix daemon",
            "ipnix daemon --http 0.0.0.0:4880 --swarm-key /etc/ipnix/swarm.key",
            "ipnix daemon --listen /ip4/127.0.0.1/tcp/4801 --no-mdns --sign-key cache.sec",
        ],
    ),
    (
        "add",
        &[
            "ipnix add hello.txt",
            "ipnix add -r ./site",
            "echo hello | ipnix add -Q -",
            "ipnix add --profile unixfs-v0-2015 --pin=false notes.txt",
        ],
    ),
    (
        "cat",
        &["ipnix cat bafkreie...", "ipnix cat /ipfs/QmW2WQi... > file"],
    ),
    ("get", &["ipnix get bafybei... -o ./site"]),
    (
        "block",
        &["ipnix block put data.bin", "ipnix block stat bafkrei..."],
    ),
    (
        "block put",
        &[
            "ipnix block put data.bin",
            "ipnix block put --cid-codec dag-cbor < node.cbor",
        ],
    ),
    ("block get", &["ipnix block get bafkrei... > block.bin"]),
    ("block stat", &["ipnix block stat bafkrei..."]),
    ("block rm", &["ipnix block rm bafkrei... bafkrei..."]),
    ("pin", &["ipnix pin add bafybei...", "ipnix pin ls"]),
    (
        "pin add",
        &[
            "ipnix pin add bafybei... --name website",
            "ipnix pin add --recursive=false bafkrei...",
        ],
    ),
    ("pin rm", &["ipnix pin rm bafybei..."]),
    ("pin ls", &["ipnix pin ls", "ipnix pin ls --json"]),
    ("gc", &["ipnix pin rm bafybei... && ipnix gc"]),
    ("repo", &["ipnix repo stat", "ipnix repo verify"]),
    ("repo stat", &["ipnix repo stat", "ipnix repo stat --json"]),
    ("repo verify", &["ipnix repo verify"]),
    (
        "dag",
        &[
            "ipnix dag export bafybei... > site.car",
            "ipnix dag import site.car",
        ],
    ),
    ("dag export", &["ipnix dag export bafybei... > site.car"]),
    (
        "dag import",
        &[
            "ipnix dag import site.car",
            "ipnix dag import --pin-roots=false - < site.car",
        ],
    ),
    ("id", &["ipnix id", "ipnix id --json"]),
    ("peers", &["ipnix peers", "ipnix peers --json"]),
    ("stats", &["ipnix stats", "ipnix stats --json"]),
    (
        "connect",
        &["ipnix connect /ip4/192.168.1.20/tcp/4801/p2p/12D3KooW..."],
    ),
    ("provide", &["ipnix provide bafybei..."]),
    ("findprovs", &["ipnix findprovs bafybei... -n 5"]),
    (
        "nix",
        &[
            "ipnix nix import --closure /run/current-system",
            "ipnix nix ls",
        ],
    ),
    (
        "nix import",
        &[
            "ipnix nix import --closure ./result",
            "ipnix nix import --from-cache file:///srv/cache /nix/store/...-hello-2.12",
        ],
    ),
    (
        "nix export",
        &[
            "ipnix nix export /nix/store/...-hello-2.12 --nar hello.nar",
            "ipnix nix export bafyrei... --dir ./hello",
        ],
    ),
    (
        "nix info",
        &[
            "ipnix nix info ./result",
            "ipnix nix info --json /nix/store/...-hello-2.12",
        ],
    ),
    ("nix ls", &["ipnix nix ls", "ipnix nix ls --json"]),
    (
        "sources",
        &["ipnix sources pin sources.json", "ipnix sources status"],
    ),
    (
        "sources pin",
        &[
            "ipnix sources pin sources.json --name nixpkgs-unstable --jobs 8",
            "ipnix sources pin https://example.org/sources.json --from-store",
        ],
    ),
    (
        "sources add",
        &[
            "ipnix sources add https://example.org/x-1.0.tar.gz --hash sha256-...",
            "ipnix sources add --file x-1.0.tar.gz --hash sha256-... --name local",
        ],
    ),
    (
        "sources status",
        &[
            "ipnix sources status",
            "ipnix sources status nixpkgs-unstable --json",
        ],
    ),
    (
        "sources ls",
        &[
            "ipnix sources ls nixpkgs-unstable",
            "ipnix sources ls --json | grep -v '\"status\":\"ok\"'",
        ],
    ),
    (
        "sources get",
        &["ipnix sources get sha256-MeBmE3qW... -o hello-2.10.tar.gz"],
    ),
    (
        "sources unpin",
        &["ipnix sources unpin nixpkgs-old && ipnix gc"],
    ),
    ("swh", &["ipnix swh id ./hello-2.10"]),
    (
        "config",
        &[
            "ipnix config show",
            "ipnix config set Addresses.HTTP 0.0.0.0:4880",
        ],
    ),
    ("config show", &["ipnix config show"]),
    ("config get", &["ipnix config get Addresses.HTTP"]),
    (
        "config set",
        &[
            "ipnix config set Addresses.HTTP 0.0.0.0:4880",
            "ipnix config set Bootstrap '[\"/ip4/192.168.1.20/tcp/4801/p2p/12D3KooW...\"]'",
            "ipnix config set Swarm.KeyFile null",
        ],
    ),
    ("config keys", &["ipnix config keys"]),
    (
        "completions",
        &[
            "ipnix completions bash > /etc/bash_completion.d/ipnix",
            "ipnix completions zsh > ~/.zfunc/_ipnix",
            "ipnix completions fish > ~/.config/fish/completions/ipnix.fish",
        ],
    ),
    (
        "man",
        &[
            "ipnix man | man -l -",
            "ipnix man -o /usr/local/share/man/man1",
        ],
    ),
];

/// The clap command of `ipnix`, with every command's examples.
pub fn command() -> clap::Command {
    with_examples(Cli::command(), "")
}

/// Parses the command line as `Cli::try_parse_from` does, with the examples
/// in `--help`.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

fn with_examples(command: clap::Command, path: &str) -> clap::Command {
    let lines: Option<Vec<String>> = match EXAMPLES.iter().find(|(p, _)| *p == path) {
        Some((_, lines)) => Some(lines.iter().map(|l| l.to_string()).collect()),
        // A command's own `Example: ...` lines, in the same form.
        None => command.get_after_help().and_then(|help| {
            let text = help.to_string();
            let lines: Vec<String> = text
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Example:"))
                .map(|l| l.trim().to_string())
                .collect();
            (!lines.is_empty() && !text.contains("Examples:")).then_some(lines)
        }),
    };
    let mut command = match lines {
        Some(lines) => {
            let mut block = String::from("Examples:");
            for line in lines {
                block.push_str("\n  ");
                block.push_str(&line);
            }
            command.after_help(block)
        }
        None => command,
    };
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        command = command.mut_subcommand(&name, |sub| with_examples(sub, &sub_path));
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_names_a_command_that_exists() {
        let root = command();
        for (path, lines) in EXAMPLES {
            let mut command = &root;
            for name in path.split_whitespace() {
                command = command
                    .find_subcommand(name)
                    .unwrap_or_else(|| panic!("examples for a missing command: {path:?}"));
            }
            let help = command
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.starts_with("Examples:"), "{path:?}");
            assert!(!lines.is_empty(), "{path:?}");
        }
    }
}
