//! Git objects as ipnix uses them: blobs (`blob <len>\0` + bytes, also for
//! symlink targets) and trees (`<mode> <name>\0<20-byte id>` entries in git's
//! name order), encoding and strict parsing of untrusted trees.

use crate::nar::{check_name, NameError};
use cid::Cid;
use ipnix_store::block::{GIT_RAW, SHA1};
use ipnix_store::links::git_cid;
use sha1::{Digest, Sha1};
use std::cmp::Ordering;
use std::collections::HashSet;

/// The id of the empty tree, which ipnix uses for empty directories.
pub const EMPTY_TREE_ID: &str = "4b825dc642cb6eb9a060e54bf8d69288fbee4904";

/// Why bytes are not a git object ipnix accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GitError {
    #[error("malformed git object header: {0}")]
    Header(String),
    #[error("expected a git {expected}, found a {found}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    #[error("tree entry {index} is truncated")]
    Truncated { index: usize },
    #[error("tree entry {index} has mode {mode:?}, which is not 100644, 100755, 120000 or 40000")]
    BadMode { index: usize, mode: String },
    #[error("tree entry {index} ({name:?}) is a submodule (160000), which ipnix refuses")]
    Submodule { index: usize, name: String },
    #[error("tree entry {index} has a bad name {name:?}: {reason}")]
    BadName {
        index: usize,
        name: String,
        reason: NameError,
    },
    #[error("tree entry {index} ({name:?}) is out of git order")]
    Unsorted { index: usize, name: String },
    #[error("tree has two entries named {name:?}")]
    Duplicate { name: String },
    #[error("CID {0} is not a git-raw SHA-1 CID")]
    NotGitCid(Cid),
}

/// The kinds of tree entry ipnix stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 100644
    File,
    /// 100755
    Executable,
    /// 120000
    Symlink,
    /// 40000
    Tree,
}

impl Mode {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Mode::File => b"100644",
            Mode::Executable => b"100755",
            Mode::Symlink => b"120000",
            Mode::Tree => b"40000",
        }
    }

    fn parse(mode: &[u8]) -> Option<Mode> {
        match mode {
            b"100644" => Some(Mode::File),
            b"100755" => Some(Mode::Executable),
            b"120000" => Some(Mode::Symlink),
            b"40000" => Some(Mode::Tree),
            _ => None,
        }
    }
}

/// One tree entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub mode: Mode,
    pub name: Vec<u8>,
    pub id: [u8; 20],
}

impl TreeEntry {
    /// The git-raw CID this entry names.
    pub fn cid(&self) -> Cid {
        git_cid(&self.id)
    }
}

/// Git's tree order: names compared bytewise as if trees had a trailing `/`.
pub fn git_order(a_name: &[u8], a_is_tree: bool, b_name: &[u8], b_is_tree: bool) -> Ordering {
    let a = a_name.iter().chain(a_is_tree.then_some(&b'/'));
    let b = b_name.iter().chain(b_is_tree.then_some(&b'/'));
    a.cmp(b)
}

/// `blob <len>\0`.
pub fn blob_header(len: u64) -> Vec<u8> {
    format!("blob {len}\0").into_bytes()
}

/// A whole git blob object for `data`.
pub fn blob_object(data: &[u8]) -> Vec<u8> {
    let mut obj = blob_header(data.len() as u64);
    obj.extend_from_slice(data);
    obj
}

/// SHA-1 object id of bytes that already are a whole git object.
pub fn object_id(object: &[u8]) -> [u8; 20] {
    Sha1::digest(object).into()
}

/// Streaming git blob id: feed the contents after declaring the length.
#[derive(Clone)]
pub struct BlobHasher {
    sha: Sha1,
}

impl BlobHasher {
    pub fn new(len: u64) -> Self {
        let mut sha = Sha1::new();
        sha.update(blob_header(len));
        BlobHasher { sha }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha.update(data);
    }

    pub fn finish(self) -> [u8; 20] {
        self.sha.finalize().into()
    }
}

/// Encodes a tree object (header included) from entries in any order.
/// Entries must have valid, distinct names.
pub fn tree_object(entries: &mut [TreeEntry]) -> Result<Vec<u8>, GitError> {
    entries.sort_by(|a, b| git_order(&a.name, a.mode == Mode::Tree, &b.name, b.mode == Mode::Tree));
    let mut seen = HashSet::with_capacity(entries.len());
    let mut body = Vec::with_capacity(entries.iter().map(|e| e.name.len() + 28).sum());
    for (index, entry) in entries.iter().enumerate() {
        check_name(&entry.name).map_err(|reason| GitError::BadName {
            index,
            name: lossy(&entry.name),
            reason,
        })?;
        if !seen.insert(entry.name.as_slice()) {
            return Err(GitError::Duplicate {
                name: lossy(&entry.name),
            });
        }
        body.extend_from_slice(entry.mode.as_bytes());
        body.push(b' ');
        body.extend_from_slice(&entry.name);
        body.push(0);
        body.extend_from_slice(&entry.id);
    }
    let mut obj = format!("tree {}\0", body.len()).into_bytes();
    obj.extend_from_slice(&body);
    Ok(obj)
}

/// Splits a git object into type and body, checking the header strictly
/// (decimal length without leading zeros, matching the body).
pub fn split_object(data: &[u8]) -> Result<(&str, &[u8]), GitError> {
    let nul = data
        .iter()
        .take(32)
        .position(|&b| b == 0)
        .ok_or_else(|| GitError::Header("no NUL within the first 32 bytes".into()))?;
    let header = std::str::from_utf8(&data[..nul])
        .map_err(|_| GitError::Header("header is not ASCII".into()))?;
    let (kind, len) = header
        .split_once(' ')
        .ok_or_else(|| GitError::Header(format!("{header:?} has no length")))?;
    if len.is_empty()
        || !len.bytes().all(|b| b.is_ascii_digit())
        || (len.len() > 1 && len.starts_with('0'))
    {
        return Err(GitError::Header(format!("bad length {len:?}")));
    }
    let declared: usize = len
        .parse()
        .map_err(|_| GitError::Header(format!("bad length {len:?}")))?;
    let body = &data[nul + 1..];
    if body.len() != declared {
        return Err(GitError::Header(format!(
            "header says {declared} bytes, body has {}",
            body.len()
        )));
    }
    Ok((kind, body))
}

/// The contents of a git blob object.
pub fn parse_blob(data: &[u8]) -> Result<&[u8], GitError> {
    match split_object(data)? {
        ("blob", body) => Ok(body),
        (other, _) => Err(GitError::WrongType {
            expected: "blob",
            found: other.to_owned(),
        }),
    }
}

/// Parses and validates an untrusted tree object: modes, names, order, duplicates.
pub fn parse_tree(data: &[u8]) -> Result<Vec<TreeEntry>, GitError> {
    let body = match split_object(data)? {
        ("tree", body) => body,
        (other, _) => {
            return Err(GitError::WrongType {
                expected: "tree",
                found: other.to_owned(),
            })
        }
    };
    let mut entries: Vec<TreeEntry> = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut rest = body;
    while !rest.is_empty() {
        let index = entries.len();
        let sp = rest
            .iter()
            .take(7)
            .position(|&b| b == b' ')
            .ok_or(GitError::Truncated { index })?;
        let mode_bytes = &rest[..sp];
        let nul = rest[sp + 1..]
            .iter()
            .position(|&b| b == 0)
            .ok_or(GitError::Truncated { index })?
            + sp
            + 1;
        let name = &rest[sp + 1..nul];
        let id_end = nul + 1 + 20;
        if rest.len() < id_end {
            return Err(GitError::Truncated { index });
        }
        let mode = match Mode::parse(mode_bytes) {
            Some(mode) => mode,
            None if mode_bytes == b"160000" => {
                return Err(GitError::Submodule {
                    index,
                    name: lossy(name),
                })
            }
            None => {
                return Err(GitError::BadMode {
                    index,
                    mode: lossy(mode_bytes),
                })
            }
        };
        check_name(name).map_err(|reason| GitError::BadName {
            index,
            name: lossy(name),
            reason,
        })?;
        if !seen.insert(name.to_vec()) {
            return Err(GitError::Duplicate { name: lossy(name) });
        }
        if let Some(prev) = entries.last() {
            if git_order(
                &prev.name,
                prev.mode == Mode::Tree,
                name,
                mode == Mode::Tree,
            ) != Ordering::Less
            {
                return Err(GitError::Unsorted {
                    index,
                    name: lossy(name),
                });
            }
        }
        let mut id = [0u8; 20];
        id.copy_from_slice(&rest[nul + 1..id_end]);
        entries.push(TreeEntry {
            mode,
            name: name.to_vec(),
            id,
        });
        rest = &rest[id_end..];
    }
    Ok(entries)
}

/// The 20-byte SHA-1 of a git-raw CID.
pub fn git_id(cid: &Cid) -> Result<[u8; 20], GitError> {
    if cid.codec() != GIT_RAW || cid.hash().code() != SHA1 || cid.hash().size() != 20 {
        return Err(GitError::NotGitCid(*cid));
    }
    let mut id = [0u8; 20];
    id.copy_from_slice(cid.hash().digest());
    Ok(id)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tree_has_gits_id() {
        let obj = tree_object(&mut []).expect("empty");
        assert_eq!(hex::encode(object_id(&obj)), EMPTY_TREE_ID);
    }

    #[test]
    fn trailing_slash_order() {
        let id = [0u8; 20];
        let mut entries = vec![
            TreeEntry {
                mode: Mode::File,
                name: b"a0".to_vec(),
                id,
            },
            TreeEntry {
                mode: Mode::Tree,
                name: b"a".to_vec(),
                id,
            },
            TreeEntry {
                mode: Mode::File,
                name: b"a.b".to_vec(),
                id,
            },
        ];
        let obj = tree_object(&mut entries).expect("valid");
        let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, vec![b"a.b".to_vec(), b"a".to_vec(), b"a0".to_vec()]);
        assert_eq!(parse_tree(&obj).expect("parses"), entries);
    }

    #[test]
    fn streaming_blob_id_matches_whole_object() {
        let mut h = BlobHasher::new(6);
        h.update(b"hel");
        h.update(b"lo\n");
        assert_eq!(
            hex::encode(h.finish()),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }
}
