//! Nix `.narinfo` files (parse and render in Nix's own field order), the
//! signature fingerprint `1;<path>;<narhash>;<narsize>;<refs>`, and ed25519
//! signing and verification with Nix's key formats (`name:base64(secret)`,
//! `name:base64(public)`).

use crate::hash::{HashAlgo, NixHash, StorePath};
use crate::pathinfo::{split_store_path, PathInfo};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use std::fmt::Write as _;

/// Largest narinfo accepted (real ones are a few KiB).
pub const MAX_NARINFO_LEN: usize = 1024 * 1024;

/// Why a narinfo or a key could not be read, or a signature not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NarInfoError {
    #[error("narinfo of {0} bytes is over the {MAX_NARINFO_LEN}-byte limit")]
    TooLarge(usize),
    #[error("narinfo is not UTF-8")]
    NotUtf8,
    #[error("narinfo line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("narinfo has no {0} field")]
    Missing(&'static str),
    #[error("narinfo field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("bad key: {0}")]
    Key(String),
}

/// A parsed `.narinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// Full store path.
    pub store_path: String,
    /// Where the (compressed) NAR is, relative to the cache root.
    pub url: String,
    /// `none`, `xz`, `bzip2`, `zstd`, ... (`bzip2` when the field is absent, as in Nix).
    pub compression: String,
    pub file_hash: Option<NixHash>,
    pub file_size: Option<u64>,
    pub nar_hash: NixHash,
    pub nar_size: u64,
    /// Base names (`<hash>-<name>`), as the file has them.
    pub references: Vec<String>,
    /// Base name of the deriver.
    pub deriver: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

/// The string Nix signs: `1;<store path>;<sha256:nix32 NAR hash>;<NAR size>;<full reference paths, comma-separated, sorted>`.
pub fn fingerprint(
    store_path: &str,
    nar_hash: &NixHash,
    nar_size: u64,
    reference_paths: &[String],
) -> String {
    let mut refs = reference_paths.to_vec();
    refs.sort();
    refs.dedup();
    format!(
        "1;{store_path};{};{nar_size};{}",
        nar_hash.to_nix32(),
        refs.join(",")
    )
}

impl From<&NarInfo> for crate::nixstore::NixPathInfo {
    /// What ordering and importing need of a narinfo.
    fn from(narinfo: &NarInfo) -> Self {
        Self {
            path: narinfo.store_path.clone(),
            nar_hash: narinfo.nar_hash.clone(),
            nar_size: narinfo.nar_size,
            references: narinfo.reference_paths(),
            deriver: None,
            signatures: Vec::new(),
            ca: None,
        }
    }
}

impl NarInfo {
    /// Parses an untrusted narinfo.
    pub fn parse(text: &[u8]) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_LEN {
            return Err(NarInfoError::TooLarge(text.len()));
        }
        let text = std::str::from_utf8(text).map_err(|_| NarInfoError::NotUtf8)?;
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = None;
        let mut deriver = None;
        let mut sigs = Vec::new();
        let mut ca = None;
        let mut seen = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            if line.is_empty() {
                continue;
            }
            let bad = |reason: String| NarInfoError::Line {
                line: line_no,
                reason,
            };
            // Nix never writes control characters; refusing them keeps
            // parse(render(x)) == x (a stray `\r` would not survive).
            if line.chars().any(char::is_control) {
                return Err(bad("control character in line".into()));
            }
            let (key, value) = line
                .split_once(": ")
                .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
                .ok_or_else(|| bad(format!("{line:?} is not `Key: value`")))?;
            if key != "Sig" && !seen.insert(key) {
                return Err(bad(format!("{key} given twice")));
            }
            match key {
                "StorePath" => {
                    split_store_path(value).map_err(bad)?;
                    store_path = Some(value.to_owned());
                }
                "URL" => {
                    if value.is_empty() || value.contains("..") || value.starts_with('/') {
                        return Err(bad(format!("unsafe or empty URL {value:?}")));
                    }
                    url = Some(value.to_owned());
                }
                "Compression" => {
                    compression = Some(value.to_owned());
                }
                "FileHash" => {
                    file_hash = Some(NixHash::parse(value).map_err(|e| bad(e.to_string()))?);
                }
                "FileSize" => {
                    file_size = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| bad(format!("bad size {value:?}")))?,
                    );
                }
                "NarHash" => {
                    let hash = NixHash::parse(value).map_err(|e| bad(e.to_string()))?;
                    if hash.algo() != HashAlgo::Sha256 {
                        return Err(bad("NarHash must be SHA-256".into()));
                    }
                    nar_hash = Some(hash);
                }
                "NarSize" => {
                    nar_size = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| bad(format!("bad size {value:?}")))?,
                    );
                }
                "References" => {
                    let refs = value
                        .split(' ')
                        .filter(|r| !r.is_empty())
                        .map(|r| {
                            StorePath::from_base_name(r)
                                .map(|_| r.to_owned())
                                .map_err(|e| bad(e.to_string()))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    references = Some(refs);
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => {
                    StorePath::from_base_name(value).map_err(|e| bad(e.to_string()))?;
                    deriver = Some(value.to_owned());
                }
                "Sig" => {
                    if !value.contains(':') {
                        return Err(bad(format!("signature {value:?} is not `key:signature`")));
                    }
                    sigs.push(value.to_owned());
                }
                "CA" => {
                    ca = Some(value.to_owned());
                }
                // Nix ignores fields it does not know (System:, ...); so do we.
                _ => {}
            }
        }
        let nar_size = nar_size.ok_or(NarInfoError::Missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::Field {
                field: "NarSize",
                reason: "zero".into(),
            });
        }
        Ok(NarInfo {
            store_path: store_path.ok_or(NarInfoError::Missing("StorePath"))?,
            url: url.ok_or(NarInfoError::Missing("URL"))?,
            compression: compression.unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash: nar_hash.ok_or(NarInfoError::Missing("NarHash"))?,
            nar_size,
            references: references.unwrap_or_default(),
            deriver,
            sigs,
            ca,
        })
    }

    /// Renders in Nix's field order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "StorePath: {}", self.store_path);
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(hash) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {}", hash.to_nix32());
        }
        if let Some(size) = self.file_size {
            let _ = writeln!(out, "FileSize: {size}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash.to_nix32());
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        let _ = writeln!(out, "References: {}", self.references.join(" "));
        if let Some(deriver) = &self.deriver {
            let _ = writeln!(out, "Deriver: {deriver}");
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// The store directory of `store_path`.
    pub fn store_dir(&self) -> &str {
        self.store_path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }

    /// References as full paths.
    pub fn reference_paths(&self) -> Vec<String> {
        let dir = self.store_dir();
        self.references
            .iter()
            .map(|r| format!("{dir}/{r}"))
            .collect()
    }

    /// Deriver as a full path.
    pub fn deriver_path(&self) -> Option<String> {
        self.deriver
            .as_ref()
            .map(|d| format!("{}/{d}", self.store_dir()))
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.reference_paths(),
        )
    }

    /// Adds a signature by `key` (replacing an earlier one by the same key name).
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(&self.fingerprint());
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|s| !s.starts_with(&prefix));
        self.sigs.push(sig);
        self.sigs.sort();
    }

    /// Names of the keys in `trusted` whose signature on this narinfo verifies.
    pub fn verified_by(&self, trusted: &[PublicKey]) -> Vec<String> {
        let fp = self.fingerprint();
        trusted
            .iter()
            .filter(|k| self.sigs.iter().any(|s| k.verify(&fp, s)))
            .map(|k| k.name().to_owned())
            .collect()
    }

    /// A narinfo for a path-info: `url`, compression and file fields describe
    /// how the NAR is served.
    pub fn from_pathinfo(
        info: &PathInfo,
        url: String,
        compression: &str,
        file_hash: Option<NixHash>,
        file_size: Option<u64>,
    ) -> Self {
        let base = |p: &str| p.rsplit_once('/').map_or(p, |(_, b)| b).to_owned();
        NarInfo {
            store_path: info.store_path.clone(),
            url,
            compression: compression.to_owned(),
            file_hash,
            file_size,
            nar_hash: info.nar_hash.clone(),
            nar_size: info.nar_size,
            references: info.reference_paths().iter().map(|p| base(p)).collect(),
            deriver: info.deriver.as_deref().map(base),
            sigs: info.signatures.clone(),
            ca: info.ca.clone(),
        }
    }
}

/// An ed25519 secret key in Nix's format `name:base64(64 bytes: seed ‖ public)`.
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

fn split_key(text: &str) -> Result<(&str, Vec<u8>), NarInfoError> {
    let text = text.trim();
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| NarInfoError::Key("expected `name:base64`".into()))?;
    if name.is_empty() {
        return Err(NarInfoError::Key("empty key name".into()));
    }
    let bytes = BASE64
        .decode(value)
        .map_err(|_| NarInfoError::Key(format!("key {name:?} is not base64")))?;
    Ok((name, bytes))
}

impl SecretKey {
    /// Parses the contents of a Nix secret key file.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let (name, bytes) = split_key(text)?;
        let bytes: [u8; 64] = bytes
            .try_into()
            .map_err(|_| NarInfoError::Key(format!("secret key {name:?} is not 64 bytes")))?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            NarInfoError::Key(format!(
                "secret key {name:?}: public half does not match the seed"
            ))
        })?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    /// Makes a key from a 32-byte seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Renders as Nix's secret key file contents.
    pub fn to_nix_string(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(self.key.to_keypair_bytes())
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name:base64(signature)` over `message` (deterministic).
    pub fn sign(&self, message: &str) -> String {
        let sig = self.key.sign(message.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
}

/// An ed25519 public key in Nix's format `name:base64(32 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        let (name, bytes) = split_key(text)?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| NarInfoError::Key(format!("public key {name:?} is not 32 bytes")))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
            NarInfoError::Key(format!("public key {name:?} is not a valid ed25519 point"))
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` (`name:base64`) is this key's valid signature on `message`.
    pub fn verify(&self, message: &str, sig: &str) -> bool {
        let Some((name, value)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(value) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        self.key
            .verify(message.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// Parses a list of public keys as Nix's `trusted-public-keys` setting holds
/// them: `name:base64` separated by whitespace. A `#` starts a comment that
/// runs to the end of its line (for key files). Duplicates are dropped.
pub fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, NarInfoError> {
    let mut keys: Vec<PublicKey> = Vec::new();
    for line in text.lines() {
        let line = line.split_once('#').map_or(line, |(keys, _)| keys);
        for word in line.split_whitespace() {
            let key = PublicKey::parse(word)?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_lists_read_like_trusted_public_keys() {
        let a = SecretKey::from_seed("a-1", [1; 32]).public_key();
        let b = SecretKey::from_seed("b-1", [2; 32]).public_key();
        let text = format!("# our builders\n{a}  {b}\n\n{a} # again\n");
        assert_eq!(parse_public_keys(&text).expect("parses"), vec![a, b]);
        assert_eq!(parse_public_keys(" \n# nothing\n").expect("empty"), vec![]);
        assert!(matches!(
            parse_public_keys("a-1:not-base64!"),
            Err(NarInfoError::Key(_))
        ));
    }
}
