//! Link extraction for every codec the store knows (raw, dag-pb, dag-cbor,
//! git-raw). GC marking, DAG walks, CAR export and Bitswap sessions all ask
//! this one module which blocks a block points to.

use crate::block::{DAG_CBOR, DAG_PB, GIT_RAW, RAW, SHA1};
use cid::Cid;
use ipld_core::ipld::Ipld;
use multihash::Multihash;

/// Why a block's links could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinksError {
    #[error("dag-pb block {cid} is malformed: {reason}")]
    DagPb { cid: Cid, reason: String },
    #[error("dag-cbor block {cid} is malformed: {reason}")]
    DagCbor { cid: Cid, reason: String },
    #[error("git object {cid} is malformed: {reason}")]
    Git { cid: Cid, reason: String },
    #[error("codec 0x{0:x} has no known link format")]
    UnknownCodec(u64),
}

/// Every CID `data` (the block named `cid`) links to, in the order they appear.
pub fn links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>, LinksError> {
    let mut out = Vec::new();
    match cid.codec() {
        RAW => {}
        DAG_PB => ipld_dagpb::links(data, &mut out).map_err(|e| LinksError::DagPb {
            cid: *cid,
            reason: e.to_string(),
        })?,
        DAG_CBOR => {
            let ipld: Ipld =
                serde_ipld_dagcbor::from_slice(data).map_err(|e| LinksError::DagCbor {
                    cid: *cid,
                    reason: e.to_string(),
                })?;
            ipld.references(&mut out);
        }
        GIT_RAW => {
            git_links(data, &mut out).map_err(|reason| LinksError::Git { cid: *cid, reason })?
        }
        other => return Err(LinksError::UnknownCodec(other)),
    }
    Ok(out)
}

/// What a DAG walk does with one block: visit `children`; treat `covered` as
/// present without looking for blocks. A Nix path-info (dag-cbor) covers the
/// git-raw CIDs of its large blobs: git trees name those by SHA-1, but their
/// bytes live in the UnixFS file the path-info's `blobs` map links to, and no
/// git-raw block of that name exists (DESIGN.md, I-11).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DagLinks {
    pub children: Vec<Cid>,
    pub covered: Vec<Cid>,
}

/// [`links`] and the CIDs the block covers; every DAG walk uses this.
pub fn dag_links(cid: &Cid, data: &[u8]) -> Result<DagLinks, LinksError> {
    let mut covered = Vec::new();
    if cid.codec() == DAG_CBOR {
        let ipld: Ipld = serde_ipld_dagcbor::from_slice(data).map_err(|e| LinksError::DagCbor {
            cid: *cid,
            reason: e.to_string(),
        })?;
        if let Ok(Some(Ipld::List(blobs))) = ipld.get("blobs") {
            for blob in blobs {
                if let Ok(Some(Ipld::Link(git))) = blob.get("git") {
                    if git.codec() == GIT_RAW {
                        covered.push(*git);
                    }
                }
            }
        }
    }
    let children = links(cid, data)?
        .into_iter()
        .filter(|c| !covered.contains(c))
        .collect();
    Ok(DagLinks { children, covered })
}

/// The git-raw CID of a 20-byte SHA-1 object id.
pub fn git_cid(sha1: &[u8; 20]) -> Cid {
    Cid::new_v1(
        GIT_RAW,
        Multihash::wrap(SHA1, sha1).expect("20 bytes fit a multihash"),
    )
}

/// Splits a git object into its type and body, checking the declared length.
pub fn git_object(data: &[u8]) -> Result<(&str, &[u8]), String> {
    let nul = data
        .iter()
        .position(|&b| b == 0)
        .ok_or("no NUL after the object header")?;
    let header = std::str::from_utf8(&data[..nul]).map_err(|_| "object header is not UTF-8")?;
    let (kind, len) = header
        .split_once(' ')
        .ok_or("object header has no length")?;
    let len: usize = len
        .parse()
        .map_err(|_| format!("bad object length {len:?}"))?;
    let body = &data[nul + 1..];
    if body.len() != len {
        return Err(format!("header says {len} bytes, body has {}", body.len()));
    }
    Ok((kind, body))
}

fn git_links(data: &[u8], out: &mut Vec<Cid>) -> Result<(), String> {
    let (kind, body) = git_object(data)?;
    match kind {
        "blob" => Ok(()),
        "tree" => {
            let mut rest = body;
            while !rest.is_empty() {
                let sp = rest
                    .iter()
                    .position(|&b| b == b' ')
                    .ok_or("tree entry without mode")?;
                let mode = &rest[..sp];
                let nul = rest[sp..]
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or("tree entry without name end")?
                    + sp;
                let id_end = nul + 1 + 20;
                if rest.len() < id_end {
                    return Err("tree entry truncated".into());
                }
                let mut id = [0u8; 20];
                id.copy_from_slice(&rest[nul + 1..id_end]);
                // Submodules (160000) name commits in another repository: not ours to fetch.
                if mode != b"160000" {
                    out.push(git_cid(&id));
                }
                rest = &rest[id_end..];
            }
            Ok(())
        }
        "commit" | "tag" => {
            let text = std::str::from_utf8(body).map_err(|_| "commit/tag is not UTF-8")?;
            for line in text.lines() {
                if line.is_empty() {
                    break; // headers end at the first blank line
                }
                let hex = line
                    .strip_prefix("tree ")
                    .or_else(|| line.strip_prefix("parent "))
                    .or_else(|| line.strip_prefix("object "));
                if let Some(hex) = hex {
                    let bytes = hex_to_id(hex).ok_or_else(|| format!("bad object id {hex:?}"))?;
                    out.push(git_cid(&bytes));
                }
            }
            Ok(())
        }
        other => Err(format!("unknown git object type {other:?}")),
    }
}

fn hex_to_id(hex: &str) -> Option<[u8; 20]> {
    // `from_str_radix` alone would also take a sign ("+f").
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 20];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::cid_for;

    #[test]
    fn git_tree_links_skip_submodules() {
        let mut body = Vec::new();
        body.extend_from_slice(b"100644 a\0");
        body.extend_from_slice(&[1u8; 20]);
        body.extend_from_slice(b"160000 sub\0");
        body.extend_from_slice(&[2u8; 20]);
        let mut obj = format!("tree {}\0", body.len()).into_bytes();
        obj.extend_from_slice(&body);
        let cid = cid_for(GIT_RAW, &obj);
        assert_eq!(links(&cid, &obj).expect("valid"), vec![git_cid(&[1u8; 20])]);
    }

    #[test]
    fn path_info_blobs_are_covered_not_children() {
        let git = git_cid(&[7u8; 20]);
        let unixfs = cid_for(RAW, b"contents");
        let mut blob = std::collections::BTreeMap::new();
        blob.insert("git".to_string(), Ipld::Link(git));
        blob.insert("unixfs".to_string(), Ipld::Link(unixfs));
        let mut map = std::collections::BTreeMap::new();
        map.insert("blobs".to_string(), Ipld::List(vec![Ipld::Map(blob)]));
        let data = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encode");
        let cid = cid_for(DAG_CBOR, &data);
        let dag = dag_links(&cid, &data).expect("links");
        assert_eq!(dag.covered, vec![git]);
        assert_eq!(dag.children, vec![unixfs]);
    }

    #[test]
    fn commit_ids_are_hex_digits_only() {
        // Found by fuzzing (fuzz/regressions/git_object): "+f" parsed as 0x0f.
        let body = format!("tree {}\n\nmsg\n", "+f".repeat(20));
        let obj = format!("commit {}\0{body}", body.len()).into_bytes();
        assert!(links(&cid_for(GIT_RAW, &obj), &obj).is_err());
    }

    #[test]
    fn truncated_git_tree_is_an_error() {
        let obj = b"tree 12\x00100644 a\x00abc".to_vec();
        let cid = cid_for(GIT_RAW, &obj);
        assert!(links(&cid, &obj).is_err());
    }
}
