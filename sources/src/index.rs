//! The hash -> source index: the one module that reads and writes the
//! store's `source` namespace (and, for fixed-output paths, the bridge's
//! `nix-path` namespace through [`ipnix_bridge::path_index`]).
//!
//! Key: `<mode>:<algo>:<hex digest>`, mode `flat` (the hash of the file's
//! bytes, what fetchurl and the hashed mirror ask) or `recursive` (the NAR
//! hash of the unpacked tree). A flat source declared with another
//! algorithm is also indexed under its SHA-256 (an alias to the same
//! record), so `/sha256/<hash>` finds an npm tarball declared as sha512.
//! Value: a JSON [`SourceRecord`]. Entries are staged in the same session
//! (so the same redb transaction) as the blocks they name (I-23).

use ipnix_bridge::{FileIngestion, HashAlgo, NixHash};
use ipnix_store::{Session, Store, StoreError};
use serde::{Deserialize, Serialize};

/// Store index namespace of this module.
pub const NAMESPACE: &str = "source";

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("index entry {key} is malformed: {source}")]
    Malformed {
        key: String,
        source: serde_json::Error,
    },
    #[error("{0:?} is not a hash: expected SRI (sha256-...), algo:digest, or plain hex")]
    BadQuery(String),
}

/// One fixed-output store path that holds a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPath {
    /// Full store path (`/nix/store/<hash>-<name>`).
    pub store_path: String,
    /// Its path-info CID.
    pub pathinfo: String,
}

/// What the index knows of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// `flat` or `recursive`.
    pub mode: String,
    /// The declared hash, SRI.
    pub hash: String,
    /// Flat: the file's length. Recursive: the NAR's length.
    pub size: u64,
    /// The fixed-output paths that hold it (one per store-path name).
    pub paths: Vec<StoredPath>,
    /// Flat: the SHA-256 of the file, SRI (also the alias key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where it came from, in the order tried.
    #[serde(default)]
    pub urls: Vec<String>,
}

impl SourceRecord {
    /// How the hash covers the content.
    pub fn ingestion(&self) -> FileIngestion {
        if self.mode == "recursive" {
            FileIngestion::Recursive
        } else {
            FileIngestion::Flat
        }
    }

    /// The first path-info CID, if any parses.
    pub fn pathinfo_cid(&self) -> Option<cid::Cid> {
        self.paths
            .iter()
            .find_map(|p| cid::Cid::try_from(p.pathinfo.as_str()).ok())
    }
}

/// The mode word used in keys and records.
pub fn mode_name(mode: FileIngestion) -> &'static str {
    match mode {
        FileIngestion::Flat => "flat",
        FileIngestion::Recursive => "recursive",
    }
}

fn key(mode: FileIngestion, hash: &NixHash) -> String {
    format!(
        "{}:{}:{}",
        mode_name(mode),
        hash.algo(),
        hex::encode(hash.digest())
    )
}

/// Stages `record` under `hash` (and, for a flat source with a SHA-256 that
/// differs from `hash`, under that too) in `session`.
pub fn stage(session: &mut Session<'_>, hash: &NixHash, record: &SourceRecord) {
    let value = serde_json::to_vec(record).expect("source records always serialise");
    let mode = record.ingestion();
    session.index_put(NAMESPACE, key(mode, hash).as_bytes(), &value);
    if let Some(alias) = record
        .sha256
        .as_deref()
        .and_then(|text| NixHash::parse(text).ok())
    {
        if &alias != hash {
            session.index_put(NAMESPACE, key(mode, &alias).as_bytes(), &value);
        }
    }
}

/// The record for a source, if indexed.
pub fn get(
    store: &Store,
    mode: FileIngestion,
    hash: &NixHash,
) -> Result<Option<SourceRecord>, IndexError> {
    let key = key(mode, hash);
    let Some(bytes) = store.index_get(NAMESPACE, key.as_bytes())? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| IndexError::Malformed { key, source })
}

/// A flat source, else a recursive one, by hash.
pub fn find(store: &Store, hash: &NixHash) -> Result<Option<SourceRecord>, IndexError> {
    match get(store, FileIngestion::Flat, hash)? {
        Some(found) => Ok(Some(found)),
        None => get(store, FileIngestion::Recursive, hash),
    }
}

/// Every indexed record (aliases included once per key), for `ls`.
pub fn scan(store: &Store) -> Result<Vec<(String, SourceRecord)>, IndexError> {
    let mut out = Vec::new();
    for (key, value) in store.index_scan(NAMESPACE)? {
        let key = String::from_utf8_lossy(&key).into_owned();
        let record = serde_json::from_slice(&value).map_err(|source| IndexError::Malformed {
            key: key.clone(),
            source,
        })?;
        out.push((key, record));
    }
    Ok(out)
}

/// Parses a hash as users and mirrors write it: SRI (`sha256-<base64>`),
/// `algo:<hex|nix32|base64>`, or plain hex (the algorithm told by length:
/// 32 md5, 40 sha1, 64 sha256, 128 sha512) or plain nix32 SHA-256.
pub fn parse_query(text: &str) -> Result<NixHash, IndexError> {
    let text = text.trim();
    let bad = || IndexError::BadQuery(text.to_owned());
    if text.contains(':') || text.contains('-') {
        return NixHash::parse(text).map_err(|_| bad());
    }
    let algo = match text.len() {
        32 => HashAlgo::Md5,
        40 => HashAlgo::Sha1,
        64 => HashAlgo::Sha256,
        128 => HashAlgo::Sha512,
        52 => HashAlgo::Sha256,
        _ => return Err(bad()),
    };
    NixHash::parse_digest(algo, text).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b";

    #[test]
    fn queries_in_every_form_agree() {
        let hex = parse_query(HEX).expect("hex");
        assert_eq!(hex.algo(), HashAlgo::Sha256);
        for form in [
            hex.to_sri(),
            hex.to_nix32(),
            hex.to_base16(),
            hex.to_base64(),
            hex.nix32_digest(),
        ] {
            assert_eq!(parse_query(&form).expect("parses"), hex, "{form}");
        }
        for bad in ["", "xyz", "sha256:zz", &HEX[..63]] {
            assert!(parse_query(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_round_trip_through_a_store_with_aliases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let sha512 = NixHash::new(HashAlgo::Sha512, &[7u8; 64]).expect("sha512");
        let sha256 = parse_query(HEX).expect("hex");
        let record = SourceRecord {
            mode: "flat".into(),
            hash: sha512.to_sri(),
            size: 3,
            paths: vec![],
            sha256: Some(sha256.to_sri()),
            urls: vec!["http://127.0.0.1/x.tgz".into()],
        };
        let mut session = store.session();
        stage(&mut session, &sha512, &record);
        session.finish(None).expect("commit");
        assert_eq!(find(&store, &sha512).expect("get"), Some(record.clone()));
        assert_eq!(find(&store, &sha256).expect("alias"), Some(record));
        assert_eq!(
            get(&store, FileIngestion::Recursive, &sha256).expect("get"),
            None
        );
        assert_eq!(scan(&store).expect("scan").len(), 2);
    }
}
