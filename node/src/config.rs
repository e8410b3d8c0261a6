//! The repo's settings file, `REPO/config` (JSON, as Kubo's): what `ipnix
//! daemon` uses when a flag does not say otherwise. [`Config`] is the whole
//! file with every default filled in; [`KEYS`] names each setting by its
//! dotted key (`Addresses.HTTP`), which `ipnix config show|get|set` take.
//! A setting is checked when it is set (a multiaddr parses, an address is
//! IP:PORT), so the daemon never starts on a value nobody could have meant.
//! The file is written whole, to a temporary name then renamed, so a crash
//! leaves the old file or the new one.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why the settings could not be read, changed or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid ipnix config ({reason}); fix it or move it away")]
    Malformed { path: PathBuf, reason: String },
    #[error("unknown config key {key:?}; the keys are: {known}")]
    UnknownKey { key: String, known: String },
    #[error("{key}: {value:?} is not {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
}

/// The settings, every one with its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Config {
    pub addresses: Addresses,
    /// Peers dialled at start (multiaddrs with `/p2p/`).
    pub bootstrap: Vec<String>,
    pub discovery: Discovery,
    pub routing: Routing,
    pub swarm: Swarm,
    pub nix: Nix,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Addresses {
    /// libp2p listen multiaddrs (`--listen`).
    pub swarm: Vec<String>,
    /// Gateway, binary cache, metrics and status page (`--http`).
    #[serde(rename = "HTTP")]
    pub http: String,
    /// Control API, loopback only (`--api`); unset: beside `HTTP` when that
    /// is loopback, else a free loopback port.
    #[serde(rename = "API")]
    pub api: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Discovery {
    #[serde(rename = "MDNS")]
    pub mdns: Mdns,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Mdns {
    /// Find LAN peers by multicast DNS (`--no-mdns` turns it off).
    pub enabled: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Routing {
    /// Join the public Amino DHT (`--public`).
    pub public: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Swarm {
    /// Private network key file, Kubo's swarm.key format (`--swarm-key`).
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Nix {
    /// Nix secret key file that signs served narinfos (`--sign-key`).
    pub sign_key_file: Option<PathBuf>,
    /// Upstream keys whose signatures earn the node's (`--trusted-public-keys`).
    pub trusted_public_keys: Vec<String>,
    /// Tell peers which store paths this node holds (`--share-paths`).
    pub share_paths: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long a narinfo or mirror miss waits for peers (`--peer-timeout`).
    pub peer_ms: u64,
    /// How long one block may take from peers (`--fetch-timeout`).
    pub fetch_secs: u64,
}

impl Default for Addresses {
    fn default() -> Self {
        Self {
            swarm: vec![
                format!("/ip4/0.0.0.0/tcp/{}", crate::net::DEFAULT_PORT),
                format!("/ip4/0.0.0.0/udp/{}/quic-v1", crate::net::DEFAULT_PORT),
            ],
            http: "127.0.0.1:4880".into(),
            api: None,
        }
    }
}

impl Default for Mdns {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            peer_ms: 100,
            fetch_secs: 60,
        }
    }
}

/// What a key holds, which decides how `config set` reads its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Number,
    /// A string; `null` (or an empty value) unsets an optional one.
    Text,
    OptionalText,
    /// A JSON array of strings, or words separated by spaces.
    List,
}

/// A setting: its dotted key, kind, and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

/// Every setting.
pub const KEYS: &[Key] = &[
    Key {
        name: "Addresses.Swarm",
        kind: Kind::List,
        doc: "libp2p listen multiaddrs (--listen)",
    },
    Key {
        name: "Addresses.HTTP",
        kind: Kind::Text,
        doc: "IP:PORT of the gateway, Nix binary cache, metrics and status page (--http)",
    },
    Key {
        name: "Addresses.API",
        kind: Kind::OptionalText,
        doc: "loopback IP:PORT of the control API (--api)",
    },
    Key {
        name: "Bootstrap",
        kind: Kind::List,
        doc: "peers dialled at start, multiaddrs with /p2p/ (--bootstrap)",
    },
    Key {
        name: "Discovery.MDNS.Enabled",
        kind: Kind::Bool,
        doc: "find LAN peers by multicast DNS (--no-mdns turns it off)",
    },
    Key {
        name: "Routing.Public",
        kind: Kind::Bool,
        doc: "also join the public Amino DHT (--public)",
    },
    Key {
        name: "Swarm.KeyFile",
        kind: Kind::OptionalText,
        doc: "private network key, Kubo's swarm.key format (--swarm-key)",
    },
    Key {
        name: "Nix.SignKeyFile",
        kind: Kind::OptionalText,
        doc: "Nix secret key file signing served narinfos (--sign-key)",
    },
    Key {
        name: "Nix.TrustedPublicKeys",
        kind: Kind::List,
        doc: "upstream keys (name:base64) whose signature earns the node's (--trusted-public-keys)",
    },
    Key {
        name: "Nix.SharePaths",
        kind: Kind::Bool,
        doc: "tell peers which store paths this node holds (--share-paths)",
    },
    Key {
        name: "Timeouts.PeerMs",
        kind: Kind::Number,
        doc: "milliseconds a narinfo or mirror miss waits for peers (--peer-timeout)",
    },
    Key {
        name: "Timeouts.FetchSecs",
        kind: Kind::Number,
        doc: "seconds one block may take from peers (--fetch-timeout)",
    },
];

/// The settings file of the repo at `root`.
pub fn path(root: &Path) -> PathBuf {
    root.join("config")
}

impl Config {
    /// The repo's settings; the defaults when it has no file.
    pub fn load(root: &Path) -> Result<Config, ConfigError> {
        let path = path(root);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let config: Config = serde_json::from_str(&text).map_err(|e| ConfigError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        config.check().map_err(|e| ConfigError::Malformed {
            path,
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// Writes the whole file: a temporary file first, renamed into place.
    pub fn save(&self, root: &Path) -> Result<(), ConfigError> {
        let path = path(root);
        let tmp = root.join("config.tmp");
        let mut text = serde_json::to_string_pretty(self).expect("the config serialises");
        text.push('\n');
        std::fs::write(&tmp, text).map_err(|source| ConfigError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| ConfigError::Io { path, source })
    }

    /// The settings as JSON, as `config show` prints them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("the config serialises")
    }

    /// One setting's value.
    pub fn get(&self, key: &str) -> Result<serde_json::Value, ConfigError> {
        let key = find_key(key)?;
        let mut value = self.to_json();
        for part in key.name.split('.') {
            value = value[part].take();
        }
        Ok(value)
    }

    /// Sets one setting from its text form, checked.
    pub fn set(&mut self, key: &str, text: &str) -> Result<(), ConfigError> {
        let key = find_key(key)?;
        let bad = |expected: &str| ConfigError::BadValue {
            key: key.name.to_owned(),
            value: text.to_owned(),
            expected: expected.to_owned(),
        };
        let value = match key.kind {
            Kind::Bool => match text.trim() {
                "true" => serde_json::Value::Bool(true),
                "false" => serde_json::Value::Bool(false),
                _ => return Err(bad("true or false")),
            },
            Kind::Number => text
                .trim()
                .parse::<u64>()
                .map(serde_json::Value::from)
                .map_err(|_| bad("a whole number"))?,
            Kind::Text => serde_json::Value::String(text.trim().to_owned()),
            Kind::OptionalText => match text.trim() {
                "" | "null" => serde_json::Value::Null,
                other => serde_json::Value::String(other.to_owned()),
            },
            Kind::List => {
                let items: Vec<String> = if text.trim_start().starts_with('[') {
                    serde_json::from_str(text).map_err(|_| bad("a JSON array of strings"))?
                } else {
                    text.split_whitespace().map(str::to_owned).collect()
                };
                serde_json::Value::from(items)
            }
        };
        let mut json = self.to_json();
        let mut slot = &mut json;
        for part in key.name.split('.') {
            slot = &mut slot[part];
        }
        *slot = value;
        let updated: Config = serde_json::from_value(json).map_err(|e| bad(&e.to_string()))?;
        updated.check()?;
        *self = updated;
        Ok(())
    }

    /// Checks what serde cannot: addresses parse, keys are Nix keys.
    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &str, expected: &str| ConfigError::BadValue {
            key: key.to_owned(),
            value: value.to_owned(),
            expected: expected.to_owned(),
        };
        for (key, list) in [
            ("Addresses.Swarm", &self.addresses.swarm),
            ("Bootstrap", &self.bootstrap),
        ] {
            for addr in list {
                addr.parse::<libp2p::Multiaddr>()
                    .map_err(|_| bad(key, addr, "a multiaddr"))?;
            }
        }
        self.addresses
            .http
            .parse::<std::net::SocketAddr>()
            .map_err(|_| bad("Addresses.HTTP", &self.addresses.http, "IP:PORT"))?;
        if let Some(api) = &self.addresses.api {
            let addr: std::net::SocketAddr = api
                .parse()
                .map_err(|_| bad("Addresses.API", api, "IP:PORT"))?;
            if !addr.ip().is_loopback() {
                return Err(bad("Addresses.API", api, "a loopback IP:PORT"));
            }
        }
        ipnix_bridge::narinfo::parse_public_keys(&self.nix.trusted_public_keys.join(" ")).map_err(
            |_| {
                bad(
                    "Nix.TrustedPublicKeys",
                    &self.nix.trusted_public_keys.join(" "),
                    "Nix public keys (name:base64)",
                )
            },
        )?;
        Ok(())
    }
}

fn find_key(name: &str) -> Result<&'static Key, ConfigError> {
    KEYS.iter()
        .find(|k| k.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| ConfigError::UnknownKey {
            key: name.to_owned(),
            known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_reads_back_what_was_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::load(dir.path()).expect("defaults");
        assert_eq!(config, Config::default());
        config
            .set("Addresses.HTTP", "127.0.0.1:9999")
            .expect("http");
        config
            .set("Bootstrap", "/ip4/127.0.0.1/tcp/1 /ip4/127.0.0.1/tcp/2")
            .expect("list");
        config
            .set("addresses.swarm", r#"["/ip4/127.0.0.1/tcp/0"]"#)
            .expect("json list, any case");
        config.set("Discovery.MDNS.Enabled", "false").expect("bool");
        config.set("Timeouts.PeerMs", "250").expect("number");
        config
            .set("Swarm.KeyFile", "/etc/ipnix/swarm.key")
            .expect("path");
        config.save(dir.path()).expect("save");
        let again = Config::load(dir.path()).expect("load");
        assert_eq!(again, config);
        assert_eq!(again.get("Timeouts.PeerMs").expect("get"), 250);
        assert_eq!(again.bootstrap.len(), 2);
        assert!(!again.discovery.mdns.enabled);
        let mut unset = again.clone();
        unset.set("Swarm.KeyFile", "null").expect("unset");
        assert_eq!(unset.swarm.key_file, None);
        assert_eq!(KEYS.len(), 12);
        for key in KEYS {
            again.get(key.name).expect("every key is in the file");
        }
    }

    #[test]
    fn bad_values_and_keys_are_refused_and_change_nothing() {
        let mut config = Config::default();
        for (key, value) in [
            ("Addresses.HTTP", "localhost"),
            ("Addresses.API", "0.0.0.0:5001"),
            ("Addresses.Swarm", "not-a-multiaddr"),
            ("Discovery.MDNS.Enabled", "yes"),
            ("Timeouts.FetchSecs", "-1"),
            ("Nix.TrustedPublicKeys", "garbage"),
            ("No.Such.Key", "1"),
        ] {
            assert!(config.set(key, value).is_err(), "{key} = {value}");
        }
        assert_eq!(config, Config::default());
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(path(dir.path()), r#"{"Adresses": {}}"#).expect("write");
        assert!(matches!(
            Config::load(dir.path()),
            Err(ConfigError::Malformed { .. })
        ));
    }
}
