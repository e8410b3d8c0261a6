//! The store-path index, the one owner of the store's `nix-path`
//! namespace: store-path hash part (32 nix32 characters, as bytes) -> the
//! path-info CID (bytes). Written in the same transaction as what it names
//! (`ipnix nix import`, the sources pinner), read by the binary cache and
//! by `/ipnix/pathinfo/1.0.0` answers.

use cid::Cid;
use ipnix_store::{Session, Store, StoreError};

/// Store index namespace.
pub const NAMESPACE: &str = "nix-path";

/// Stages `hash_part -> pathinfo` in `session`.
pub fn stage(session: &mut Session<'_>, hash_part: &str, pathinfo: &Cid) {
    session.index_put(NAMESPACE, hash_part.as_bytes(), &pathinfo.to_bytes());
}

/// The path-info CID indexed for `hash_part`; `None` when unknown or when
/// the entry is not a CID (logged: a damaged entry must not stop serving).
pub fn get(store: &Store, hash_part: &str) -> Result<Option<Cid>, StoreError> {
    let Some(bytes) = store.index_get(NAMESPACE, hash_part.as_bytes())? else {
        return Ok(None);
    };
    match Cid::try_from(bytes.as_slice()) {
        Ok(cid) => Ok(Some(cid)),
        Err(e) => {
            tracing::warn!("nix-path index entry for {hash_part} is not a CID ({e}); ignoring it");
            Ok(None)
        }
    }
}
