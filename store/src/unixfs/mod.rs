//! UnixFS: files, directories and symlinks as dag-pb DAGs with the exact CIDs
//! Kubo and Helia make for the same bytes and parameters ([`Profile`]), and
//! reading them back (streaming `cat`, `ls`, `get_to_path`).
//!
//! Everything here is generic over [`BlockRead`](crate::BlockRead) /
//! [`BlockWrite`](crate::BlockWrite), so it runs on the store, on a write
//! session, on [`MemoryBlocks`](crate::MemoryBlocks), on
//! [`NullBlocks`](crate::NullBlocks) (CID only) and on a fetching reader.
//!
//! Layout decisions (checked against Kubo 0.22 and Helia 7 in
//! `tests/tests/unixfs_interop.rs`):
//! * files are cut into fixed-size chunks and arranged as a balanced tree of
//!   at most `max_links` children per node; a file of one chunk (also the
//!   empty file) is that one leaf;
//! * directories with entries whose names plus CIDs add up to
//!   [`HAMT_SHARDING_THRESHOLD`] bytes or more become HAMT shards (fanout
//!   256, murmur3-x64-64), as Kubo does; smaller ones are plain Directory
//!   nodes with links sorted by name.

mod dir;
mod file;
mod hamt;
pub(crate) mod pb;
mod reader;

pub use dir::{add_path, add_symlink, write_directory, HAMT_SHARDING_THRESHOLD};
pub use file::add_file;
pub use hamt::Entry as DirLink;
pub use reader::{
    cat, for_each_entry, get_to_path, ls, stat, DirEntry, FileReader, GetStats, NodeKind, Stat,
};

use crate::block::{digest, IDENTITY, RAW, SHA2_256};
use crate::{BlockRead, Bytes, StoreError};
use cid::Cid;
use std::path::PathBuf;
use std::str::FromStr;

/// How a file is cut and arranged; the CID depends on every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// 0 or 1: the version of the dag-pb CIDs (raw leaves are always CIDv1).
    pub cid_version: u8,
    /// Leaves are raw blocks (codec 0x55) instead of UnixFS File nodes.
    pub raw_leaves: bool,
    /// Bytes per leaf (fixed-size chunker).
    pub chunk_size: usize,
    /// Children per internal node of the balanced layout.
    pub max_links: usize,
}

/// Named parameter sets that reproduce other implementations' CIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `unixfs-v1-2025`: CIDv1, raw leaves, 1 MiB chunks, 1024 links (Helia's defaults).
    V1_2025,
    /// `unixfs-v0-2015`: CIDv0, UnixFS File leaves, 256 KiB chunks, 174 links (Kubo 0.22's defaults).
    V0_2015,
    /// CIDv1, raw leaves, 1 MiB chunks, 174 links: `ipfs add --cid-version 1
    /// --raw-leaves --chunker size-1048576`, how the Nix bridge stores large blobs.
    NixLargeBlob,
}

impl Profile {
    pub fn params(self) -> Params {
        match self {
            Profile::V1_2025 => Params {
                cid_version: 1,
                raw_leaves: true,
                chunk_size: 1 << 20,
                max_links: 1024,
            },
            Profile::V0_2015 => Params {
                cid_version: 0,
                raw_leaves: false,
                chunk_size: 256 << 10,
                max_links: 174,
            },
            Profile::NixLargeBlob => Params {
                cid_version: 1,
                raw_leaves: true,
                chunk_size: 1 << 20,
                max_links: 174,
            },
        }
    }

    /// The name [`FromStr`] accepts.
    pub fn name(self) -> &'static str {
        match self {
            Profile::V1_2025 => "unixfs-v1-2025",
            Profile::V0_2015 => "unixfs-v0-2015",
            Profile::NixLargeBlob => "nix-large-blob",
        }
    }
}

impl FromStr for Profile {
    type Err = UnixfsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unixfs-v1-2025" => Ok(Profile::V1_2025),
            "unixfs-v0-2015" => Ok(Profile::V0_2015),
            "nix-large-blob" => Ok(Profile::NixLargeBlob),
            other => Err(UnixfsError::UnknownProfile(other.to_string())),
        }
    }
}

impl From<Profile> for Params {
    fn from(profile: Profile) -> Self {
        profile.params()
    }
}

impl Default for Params {
    fn default() -> Self {
        Profile::V1_2025.params()
    }
}

impl Params {
    /// Rejects parameter sets that would make blocks over the size limit or never terminate.
    pub fn check(&self) -> Result<(), UnixfsError> {
        // Leaves carry a few bytes of protobuf around the chunk when not raw.
        const LEAF_OVERHEAD: usize = 32;
        if self.cid_version > 1 {
            return Err(UnixfsError::BadParams(format!(
                "cid_version {} (0 or 1)",
                self.cid_version
            )));
        }
        if self.chunk_size == 0 || self.chunk_size + LEAF_OVERHEAD > crate::block::MAX_BLOCK_SIZE {
            return Err(UnixfsError::BadParams(format!(
                "chunk_size {} (1..={})",
                self.chunk_size,
                crate::block::MAX_BLOCK_SIZE - LEAF_OVERHEAD
            )));
        }
        if !(2..=MAX_LINKS_LIMIT).contains(&self.max_links) {
            return Err(UnixfsError::BadParams(format!(
                "max_links {} (2..={MAX_LINKS_LIMIT})",
                self.max_links
            )));
        }
        Ok(())
    }
}

/// Upper bound for `max_links`: keeps every internal node far below the block limit.
const MAX_LINKS_LIMIT: usize = 8192;

/// What an add produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    /// The root.
    pub cid: Cid,
    /// Content bytes: the file's length; for a directory the sum of its files'
    /// lengths; for a symlink the target's length.
    pub size: u64,
    /// Cumulative size: every block of the DAG, as dag-pb `Tsize` counts it.
    pub tsize: u64,
}

/// Everything UnixFS import and export can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixfsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("block {0} is not available")]
    Missing(Cid),
    #[error("{cid} is not valid UnixFS: {reason}")]
    Malformed { cid: Cid, reason: String },
    #[error("{cid} is a {kind}, not a {wanted}")]
    WrongKind {
        cid: Cid,
        kind: NodeKind,
        wanted: &'static str,
    },
    #[error("{cid} has codec 0x{codec:x}; UnixFS is dag-pb or raw")]
    NotUnixfs { cid: Cid, codec: u64 },
    #[error("refusing entry name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("{0}: not UTF-8; UnixFS names are strings")]
    NonUtf8Name(PathBuf),
    #[error("{0}: only regular files, directories and symlinks can be added")]
    UnsupportedFileType(PathBuf),
    #[error("{0} already exists; refusing to write over it")]
    Exists(PathBuf),
    #[error("{cid}: DAG deeper than {limit} levels")]
    TooDeep { cid: Cid, limit: usize },
    #[error("bad UnixFS parameters: {0}")]
    BadParams(String),
    #[error(
        "unknown UnixFS profile {0:?} (known: unixfs-v1-2025, unixfs-v0-2015, nix-large-blob)"
    )]
    UnknownProfile(String),
    #[error("seek to {offset} is outside the file ({size} bytes)")]
    BadSeek { offset: i128, size: u64 },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading input: {0}")]
    Read(std::io::Error),
}

impl UnixfsError {
    fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        UnixfsError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn malformed(cid: &Cid, reason: impl Into<String>) -> Self {
        UnixfsError::Malformed {
            cid: *cid,
            reason: reason.into(),
        }
    }
}

/// The CID of a dag-pb node in the requested CID version.
fn dag_pb_cid(cid_version: u8, block: &[u8]) -> Cid {
    let mh = digest(SHA2_256, block).expect("sha2-256 digests fit a multihash");
    if cid_version == 0 {
        Cid::new_v0(mh).expect("sha2-256 multihash is a valid CIDv0")
    } else {
        Cid::new_v1(crate::block::DAG_PB, mh)
    }
}

/// The CID of a raw leaf (always CIDv1, as Kubo and Helia make them).
fn raw_cid(block: &[u8]) -> Cid {
    crate::block::cid_for(RAW, block)
}

/// A block by CID: identity CIDs carry their bytes inline; anything else must be in `r`.
fn load<R: BlockRead>(r: &R, cid: &Cid) -> Result<Bytes, UnixfsError> {
    if cid.hash().code() == IDENTITY {
        return Ok(Bytes::copy_from_slice(cid.hash().digest()));
    }
    r.read_block(cid)?.ok_or(UnixfsError::Missing(*cid))
}

/// Checks one directory entry name: what a path component must never be.
pub fn check_entry_name(name: &str) -> Result<(), UnixfsError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "a relative path component"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(UnixfsError::BadName {
        name: name.to_string(),
        reason,
    })
}
