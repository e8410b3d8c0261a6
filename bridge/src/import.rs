//! NAR -> DAG: streams a NAR once, writes every file as a git blob (a git-raw
//! block, or for objects over 1 MiB a UnixFS file plus a blob-map entry), every
//! directory as a git tree (bottom-up), verifies the NAR hash and size, and
//! only then writes the path-info block. Memory holds one small file or one
//! 1 MiB chunk plus the entries of the directories still open.

use crate::git::{blob_header, tree_object, BlobHasher, Mode, TreeEntry};
use crate::hash::NixHash;
use crate::nar::{NarError, NarEvent, NarReader};
use crate::pathinfo::{LargeBlob, PathInfo, PathInfoError, Reference, Root, RootKind};
use cid::Cid;
use ipnix_store::block::{cid_for, GIT_RAW, MAX_BLOCK_SIZE};
use ipnix_store::links::git_cid;
use ipnix_store::unixfs::{self, Profile, UnixfsError};
use ipnix_store::{BlockWrite, StoreError};
use std::collections::BTreeMap;
use std::io::{self, Read};

/// Largest whole git object (header included) stored as a single git-raw block.
pub const MAX_INLINE_OBJECT: u64 = 1 << 20;

/// Why a NAR could not be imported. Nothing was pinned; written blocks are
/// unreferenced and left to GC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing a large file as UnixFS failed: {0}")]
    Unixfs(#[from] UnixfsError),
    #[error(transparent)]
    PathInfo(#[from] PathInfoError),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error(
        "directory {0:?} has too many entries: its git tree would exceed the block size limit"
    )]
    TreeTooLarge(String),
    #[error("NAR hash mismatch for {store_path}: expected {expected}, got {actual}")]
    HashMismatch {
        store_path: String,
        expected: String,
        actual: String,
    },
    #[error("NAR size mismatch for {store_path}: expected {expected}, got {actual}")]
    SizeMismatch {
        store_path: String,
        expected: u64,
        actual: u64,
    },
    #[error("UnixFS import of a {expected}-byte file reported {actual} bytes")]
    LargeFileSize { expected: u64, actual: u64 },
}

/// The Nix metadata that comes with a NAR (from `nix path-info` or a narinfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathMeta {
    /// Full store path.
    pub store_path: String,
    /// References other than the path itself, each with its path-info CID
    /// (import dependencies first).
    pub references: Vec<Reference>,
    pub self_reference: bool,
    pub signatures: Vec<String>,
    /// Full store path of the deriver.
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// When set, the import fails unless the NAR has this hash.
    pub expected_nar_hash: Option<NixHash>,
    /// When set, the import fails unless the NAR has this size.
    pub expected_nar_size: Option<u64>,
}

impl PathMeta {
    /// Metadata with nothing but the store path.
    pub fn new(store_path: impl Into<String>) -> Self {
        PathMeta {
            store_path: store_path.into(),
            references: Vec::new(),
            self_reference: false,
            signatures: Vec::new(),
            deriver: None,
            ca: None,
            expected_nar_hash: None,
            expected_nar_size: None,
        }
    }
}

/// What an import produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub pathinfo_cid: Cid,
    pub pathinfo: PathInfo,
    pub root_cid: Cid,
    pub nar_hash: NixHash,
    pub nar_size: u64,
}

struct DirFrame {
    name: Option<Vec<u8>>,
    entries: Vec<TreeEntry>,
    body_bytes: usize,
}

/// Imports one store path from its NAR. On success every block of the DAG and
/// the path-info block have been written to `w`.
pub fn import_nar<W: BlockWrite, R: Read>(
    w: &mut W,
    nar: R,
    meta: PathMeta,
) -> Result<Imported, ImportError> {
    let mut reader = NarReader::new(nar);
    let mut stack: Vec<DirFrame> = Vec::new();
    let mut pending_name: Option<Vec<u8>> = None;
    let mut root: Option<Root> = None;
    let mut blobs: BTreeMap<Vec<u8>, LargeBlob> = BTreeMap::new();
    let mut buf = Vec::new();

    while let Some(event) = reader.next()? {
        let (mode, cid) = match event {
            NarEvent::Entry { name } => {
                pending_name = Some(name);
                continue;
            }
            NarEvent::DirectoryStart => {
                stack.push(DirFrame {
                    name: pending_name.take(),
                    entries: Vec::new(),
                    body_bytes: 0,
                });
                continue;
            }
            NarEvent::DirectoryEnd => {
                let mut frame = stack
                    .pop()
                    .expect("the reader pairs directory start and end");
                let object = tree_object(&mut frame.entries)?;
                let cid = cid_for(GIT_RAW, &object);
                w.write_block_hashed_here(cid, &object)?;
                pending_name = frame.name;
                (Mode::Tree, cid)
            }
            NarEvent::Symlink { target } => {
                let object = [blob_header(target.len() as u64), target].concat();
                let cid = cid_for(GIT_RAW, &object);
                w.write_block_hashed_here(cid, &object)?;
                (Mode::Symlink, cid)
            }
            NarEvent::File { executable, size } => {
                let mode = if executable {
                    Mode::Executable
                } else {
                    Mode::File
                };
                let header = blob_header(size);
                let cid = if header.len() as u64 + size <= MAX_INLINE_OBJECT {
                    buf.clear();
                    buf.extend_from_slice(&header);
                    reader
                        .contents()
                        .read_to_end(&mut buf)
                        .map_err(nar_io_error)?;
                    let cid = cid_for(GIT_RAW, &buf);
                    w.write_block_hashed_here(cid, &buf)?;
                    cid
                } else {
                    let blob = import_large_file(w, &mut reader, size)?;
                    let cid = blob.git;
                    blobs.insert(cid.to_bytes(), blob);
                    cid
                };
                (mode, cid)
            }
        };
        match stack.last_mut() {
            Some(parent) => {
                let name = pending_name
                    .take()
                    .expect("the reader names every node inside a directory");
                parent.body_bytes += name.len() + 28;
                if parent.body_bytes > MAX_BLOCK_SIZE - 64 {
                    return Err(ImportError::TreeTooLarge(
                        String::from_utf8_lossy(&name).into_owned(),
                    ));
                }
                let id = crate::git::git_id(&cid)?;
                parent.entries.push(TreeEntry { mode, name, id });
            }
            None => {
                let kind = match mode {
                    Mode::Tree => RootKind::Directory,
                    Mode::File => RootKind::Regular,
                    Mode::Executable => RootKind::Executable,
                    Mode::Symlink => RootKind::Symlink,
                };
                root = Some(Root { kind, cid });
            }
        }
    }
    let summary = reader.finish()?;
    let root = root.ok_or(NarError::Incomplete("the NAR has no root node"))?;
    let nar_hash = NixHash::sha256(summary.sha256);
    if let Some(expected) = &meta.expected_nar_hash {
        if *expected != nar_hash {
            return Err(ImportError::HashMismatch {
                store_path: meta.store_path,
                expected: expected.to_nix32(),
                actual: nar_hash.to_nix32(),
            });
        }
    }
    if let Some(expected) = meta.expected_nar_size {
        if expected != summary.size {
            return Err(ImportError::SizeMismatch {
                store_path: meta.store_path,
                expected,
                actual: summary.size,
            });
        }
    }
    let mut references = meta.references;
    references.sort();
    let mut signatures = meta.signatures;
    signatures.sort();
    signatures.dedup();
    let pathinfo = PathInfo {
        store_path: meta.store_path,
        root,
        nar_hash: nar_hash.clone(),
        nar_size: summary.size,
        references,
        self_reference: meta.self_reference,
        signatures,
        deriver: meta.deriver,
        ca: meta.ca,
        blobs: blobs.into_values().collect(),
    };
    let (pathinfo_cid, bytes) = pathinfo.to_block()?;
    w.write_block(pathinfo_cid, &bytes)?;
    Ok(Imported {
        pathinfo_cid,
        root_cid: root.cid,
        pathinfo,
        nar_hash,
        nar_size: summary.size,
    })
}

/// Feeds a NAR file's contents to the UnixFS importer while hashing the git blob.
struct BlobFeed<'a, R: Read> {
    nar: &'a mut NarReader<R>,
    hasher: BlobHasher,
    error: Option<NarError>,
}

impl<R: Read> Read for BlobFeed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.nar.read_contents(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                let message = e.to_string();
                self.error = Some(e);
                Err(io::Error::other(message))
            }
        }
    }
}

fn import_large_file<W: BlockWrite, R: Read>(
    w: &mut W,
    nar: &mut NarReader<R>,
    size: u64,
) -> Result<LargeBlob, ImportError> {
    let mut feed = BlobFeed {
        nar,
        hasher: BlobHasher::new(size),
        error: None,
    };
    let added = match unixfs::add_file(w, &mut feed, &Profile::NixLargeBlob.params()) {
        Ok(added) => added,
        Err(e) => {
            return Err(feed
                .error
                .take()
                .map_or(ImportError::Unixfs(e), ImportError::Nar))
        }
    };
    if added.size != size {
        return Err(ImportError::LargeFileSize {
            expected: size,
            actual: added.size,
        });
    }
    Ok(LargeBlob {
        git: git_cid(&feed.hasher.finish()),
        unixfs: added.cid,
        size,
    })
}

fn nar_io_error(e: io::Error) -> ImportError {
    match e.downcast::<NarError>() {
        Ok(nar) => ImportError::Nar(nar),
        Err(other) => ImportError::Nar(NarError::Io(other)),
    }
}
