//! `ipnix config show|get|set|keys`: the repo's settings file in Kubo's
//! spirit (`ipfs config show`, `ipfs config KEY VALUE`). The work is in
//! `ipnix_node::config`; this prints it. Runs without the store or the
//! daemon: a running daemon reads the file again only when it restarts.

use super::print_json;
use crate::ConfigCommand;
use anyhow::Context as _;
use ipnix_node::config::{Config, Kind, KEYS};
use std::io::Write;
use std::path::Path;

pub fn run(
    root: &Path,
    command: ConfigCommand,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    // Only the directory: the identity and the store are made by the first
    // command that needs them, as the user who runs the daemon (a root
    // shell setting up a service's repo must not own its key).
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the repo directory {}", root.display()))?;
    match command {
        ConfigCommand::Show => {
            let text = serde_json::to_string_pretty(&Config::load(root)?.to_json())?;
            writeln!(out, "{text}")?;
        }
        ConfigCommand::Get { key } => {
            let value = Config::load(root)?.get(&key)?;
            print_json(out, &value)?;
        }
        ConfigCommand::Set { key, value } => {
            let mut config = Config::load(root)?;
            config.set(&key, &value)?;
            config.save(root)?;
            let key = KEYS
                .iter()
                .find(|k| k.name.eq_ignore_ascii_case(&key))
                .map_or(key.as_str(), |k| k.name);
            if json {
                print_json(
                    out,
                    &serde_json::json!({"Key": key, "Value": config.get(key)?}),
                )?;
            } else {
                writeln!(
                    out,
                    "{key} = {} (the daemon reads it when it starts)",
                    config.get(key)?
                )?;
            }
        }
        ConfigCommand::Keys => {
            for key in KEYS {
                let kind = match key.kind {
                    Kind::Bool => "bool",
                    Kind::Number => "number",
                    Kind::Text => "string",
                    Kind::OptionalText => "string or null",
                    Kind::List => "list",
                };
                if json {
                    print_json(
                        out,
                        &serde_json::json!({"Key": key.name, "Type": kind, "Doc": key.doc}),
                    )?;
                } else {
                    writeln!(out, "{:<24} {:<15} {}", key.name, kind, key.doc)?;
                }
            }
        }
    }
    Ok(())
}
