//! The pinned list object: what `ipnix sources pin` keeps of one
//! sources.json, as DAG-CBOR blocks. A root names the list (name, revision,
//! counts) and links to chunks; each chunk holds up to [`CHUNK_ENTRIES`]
//! entries with their outcome. An entry that was stored links to its
//! source's path-info, so one recursive pin on the root keeps every stored
//! source, and the list can travel as one CAR (`ipnix dag export`).
//! Failed and skipped entries are kept too: `sources status` and `ls`
//! read them from here, and a later run retries them.

use cid::Cid;
use ipld_core::ipld::Ipld;
use ipnix_store::block::{cid_for, DAG_CBOR, MAX_BLOCK_SIZE};
use ipnix_store::{BlockRead, StoreError};
use serde::{Deserialize, Serialize};

/// The `type` of a list root.
pub const LIST_TYPE: &str = "ipnix/sources-list";
/// Entries per chunk at most (a chunk that would pass the block limit is
/// split further).
pub const CHUNK_ENTRIES: usize = 512;
/// Largest encoded chunk before it is split.
const MAX_CHUNK_BYTES: usize = MAX_BLOCK_SIZE / 2;
/// URLs kept per entry in the list (the rest are in sources.json).
pub const MAX_URLS_KEPT: usize = 4;

/// Why a list could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("block {cid} is not a sources list: {reason}")]
    Malformed { cid: Cid, reason: String },
    #[error("list block {0} is missing")]
    Missing(Cid),
    #[error("one entry of the list is larger than a block: {0} bytes")]
    EntryTooLarge(usize),
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStatus {
    /// Position in the sources.json `sources` array.
    pub index: u64,
    /// `ok`, `failed` or `skipped`.
    pub status: String,
    /// Why it failed or was skipped (`not-found`, `hash-mismatch`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The error in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `flat` or `recursive` (empty for skipped entries of other types).
    pub mode: String,
    /// The declared hash, SRI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// On `hash-mismatch`: the hash the download had, SRI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub got: Option<String>,
    /// Bytes of the file (flat) or the NAR (recursive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default)]
    pub urls: Vec<String>,
    /// The fixed-output store path Nix asks for.
    #[serde(default, rename = "storePath", skip_serializing_if = "Option::is_none")]
    pub store_path: Option<String>,
    /// The stored source's path-info (only when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Cid>,
    /// Path-infos of the same source under its other store-path names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<Cid>,
    /// Unix seconds of the last attempt.
    pub attempted: u64,
}

impl EntryStatus {
    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    entries: Vec<EntryStatus>,
}

/// The root block of a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRoot {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Unix seconds when the list was written.
    pub written: u64,
    pub total: u64,
    pub ok: u64,
    pub chunks: Vec<Cid>,
}

/// Encodes a value as canonical DAG-CBOR (through the IPLD data model, so
/// map keys are sorted) and names it.
fn encode<T: Serialize>(value: &T) -> (Cid, Vec<u8>) {
    let ipld: Ipld = ipld_core::serde::to_ipld(value).expect("list values map to IPLD");
    let bytes = serde_ipld_dagcbor::to_vec(&ipld).expect("IPLD always encodes as DAG-CBOR");
    (cid_for(DAG_CBOR, &bytes), bytes)
}

/// The blocks of a list: chunks first, the root last (`blocks.last()`).
pub fn build(
    name: &str,
    revision: Option<&str>,
    entries: &[EntryStatus],
    written: u64,
) -> Result<Vec<(Cid, Vec<u8>)>, ListError> {
    let mut blocks = Vec::new();
    let mut chunks = Vec::new();
    let mut rest = entries;
    while !rest.is_empty() {
        let mut take = rest.len().min(CHUNK_ENTRIES);
        loop {
            let (cid, bytes) = encode(&Chunk {
                entries: rest[..take].to_vec(),
            });
            if bytes.len() <= MAX_CHUNK_BYTES || (take == 1 && bytes.len() <= MAX_BLOCK_SIZE) {
                chunks.push(cid);
                blocks.push((cid, bytes));
                break;
            }
            if take == 1 {
                return Err(ListError::EntryTooLarge(bytes.len()));
            }
            take /= 2;
        }
        rest = &rest[take..];
    }
    let root = ListRoot {
        kind: LIST_TYPE.to_owned(),
        version: 1,
        name: name.to_owned(),
        revision: revision.map(str::to_owned),
        written,
        total: entries.len() as u64,
        ok: entries.iter().filter(|e| e.is_ok()).count() as u64,
        chunks,
    };
    blocks.push(encode(&root));
    Ok(blocks)
}

fn decode<T: for<'de> Deserialize<'de>>(cid: &Cid, bytes: &[u8]) -> Result<T, ListError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| ListError::Malformed {
        cid: *cid,
        reason: e.to_string(),
    })
}

/// Reads a list root.
pub fn load_root<R: BlockRead>(blocks: &R, cid: &Cid) -> Result<ListRoot, ListError> {
    let bytes = blocks.read_block(cid)?.ok_or(ListError::Missing(*cid))?;
    let root: ListRoot = decode(cid, &bytes)?;
    if root.kind != LIST_TYPE || root.version != 1 {
        return Err(ListError::Malformed {
            cid: *cid,
            reason: format!("type {:?} version {}", root.kind, root.version),
        });
    }
    Ok(root)
}

/// Calls `f` for every entry of a list, chunk by chunk (memory: one chunk).
pub fn for_each_entry<R: BlockRead>(
    blocks: &R,
    root: &ListRoot,
    mut f: impl FnMut(EntryStatus),
) -> Result<(), ListError> {
    for cid in &root.chunks {
        let bytes = blocks.read_block(cid)?.ok_or(ListError::Missing(*cid))?;
        let chunk: Chunk = decode(cid, &bytes)?;
        chunk.entries.into_iter().for_each(&mut f);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnix_store::{BlockWrite, MemoryBlocks};
    use proptest::prelude::any;

    fn entry(index: u64, ok: bool) -> EntryStatus {
        EntryStatus {
            index,
            status: if ok { "ok" } else { "failed" }.into(),
            reason: (!ok).then(|| "not-found".into()),
            detail: None,
            mode: "flat".into(),
            hash: Some("sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=".into()),
            got: None,
            size: Some(index),
            urls: vec![format!("http://127.0.0.1/{index}.tar.gz")],
            store_path: None,
            source: ok.then(|| cid_for(DAG_CBOR, &index.to_be_bytes())),
            aliases: Vec::new(),
            attempted: 1,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn any_list_round_trips(
            specs in proptest::collection::vec(
                (any::<u64>(), any::<bool>(), proptest::option::of("[a-z-]{1,12}"),
                 proptest::collection::vec("[ -~]{0,40}", 0..4), proptest::option::of(any::<u64>())),
                0..700,
            ),
            name in "[a-z0-9.+_-]{1,20}",
        ) {
            let entries: Vec<EntryStatus> = specs
                .into_iter()
                .map(|(index, ok, reason, urls, size)| EntryStatus {
                    reason,
                    urls,
                    size,
                    ..entry(index, ok)
                })
                .collect();
            let blocks = build(&name, None, &entries, 7).expect("build");
            let mut store = MemoryBlocks::new();
            for (cid, bytes) in &blocks {
                store.write_block(*cid, bytes).expect("write");
            }
            let root = load_root(&store, &blocks.last().expect("root").0).expect("root");
            let mut back = Vec::new();
            for_each_entry(&store, &root, |e| back.push(e)).expect("entries");
            proptest::prop_assert_eq!(back, entries);
            proptest::prop_assert_eq!(root.name, name);
        }
    }

    #[test]
    fn lists_round_trip_across_chunks_and_link_their_sources() {
        let entries: Vec<_> = (0..1300).map(|i| entry(i, i % 3 != 0)).collect();
        let blocks = build("nixpkgs-x", Some("abc"), &entries, 5).expect("build");
        assert_eq!(blocks.len(), 4, "3 chunks and a root");
        let mut store = MemoryBlocks::new();
        for (cid, bytes) in &blocks {
            store.write_block(*cid, bytes).expect("write");
        }
        let (root_cid, root_bytes) = blocks.last().expect("root");
        let root = load_root(&store, root_cid).expect("root");
        assert_eq!((root.total, root.ok), (1300, 866));
        let mut back = Vec::new();
        for_each_entry(&store, &root, |e| back.push(e)).expect("entries");
        assert_eq!(back, entries);
        // A chunk links to the path-infos of its stored entries.
        let links = ipnix_store::links::links(&blocks[0].0, &blocks[0].1).expect("links");
        assert_eq!(links.len(), 341);
        let root_links = ipnix_store::links::links(root_cid, root_bytes).expect("links");
        assert_eq!(root_links.len(), 3);
    }
}
