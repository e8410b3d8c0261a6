//! DAG -> NAR and DAG -> directory: walks a path-info's git tree (trees,
//! blobs, large blobs through the UnixFS map) and renders it as a NAR stream
//! or materialises it on disk, re-validating every untrusted object and
//! hashing the NAR as it goes, so a mismatch with the path-info's NAR hash or
//! size is an error. A NAR checked against a recorded hash reads stored
//! blocks without re-hashing them, since that hash covers every byte
//! (DESIGN.md I-21). On disk nothing is ever written through a symlink.
//!
//! A large blob's contents are a UnixFS file, or (for a flat source tarball
//! kept as tree + recipe, DESIGN.md I-27) a DAG-CBOR object that something
//! above the bridge rebuilds: callers hand a [`BlobRebuilder`] in.

use crate::git::{self, parse_blob, parse_tree, BlobHasher, GitError, Mode};
use crate::hash::NixHash;
use crate::nar::{NarError, NarSummary, NarWriter, MAX_DEPTH};
use crate::pathinfo::{LargeBlob, PathInfo, PathInfoError, RootKind};
use cid::Cid;
use ipnix_store::block::{verify, BlockError, DAG_CBOR, DAG_PB, GIT_RAW, RAW};
use ipnix_store::unixfs::{self, UnixfsError};
use ipnix_store::{BlockRead, Bytes, StoreError};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a DAG could not be exported. A NAR sink has received a prefix at most;
/// the caller must abort it. `export_dir` removes what it created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("block {0} is not available")]
    Missing(Cid),
    #[error("block {cid} is corrupt: {source}")]
    Corrupt {
        cid: Cid,
        #[source]
        source: BlockError,
    },
    #[error("git object {cid}: {source}")]
    Git {
        cid: Cid,
        #[source]
        source: GitError,
    },
    #[error(transparent)]
    PathInfo(#[from] PathInfoError),
    #[error(transparent)]
    Nar(#[from] NarError),
    #[error("reading large blob {cid}: {source}")]
    Unixfs {
        cid: Cid,
        #[source]
        source: UnixfsError,
    },
    #[error("large blob {git}: its UnixFS contents do not hash to the git blob id")]
    LargeBlobMismatch { git: Cid },
    #[error(
        "large blob {git}: UnixFS file has a different length than the {expected} bytes recorded"
    )]
    LargeBlobSize { git: Cid, expected: u64 },
    #[error("symlink {0} is stored as a large blob; symlink targets are small")]
    LargeSymlink(Cid),
    #[error(
        "large blob {git}: its contents {contents} need a rebuilder that this export was not given"
    )]
    NoRebuilder { git: Cid, contents: Cid },
    #[error("large blob {git}: rebuilding {contents}: {source}")]
    Rebuild {
        git: Cid,
        contents: Cid,
        #[source]
        source: io::Error,
    },
    #[error("{0} is neither a path-info (dag-cbor) nor a git object (git-raw)")]
    NotARoot(Cid),
    #[error("trees nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("rendered NAR exceeds the {expected} bytes recorded in the path-info")]
    TooLong { expected: u64 },
    #[error("NAR hash mismatch: path-info says {expected}, content gives {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("NAR size mismatch: path-info says {expected}, content gives {actual}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("{} already exists; export_dir creates its destination", .0.display())]
    Exists(PathBuf),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What to render: the root node, the large blobs, and the expected NAR.
#[derive(Debug, Clone)]
struct Plan {
    kind: RootKind,
    root: Cid,
    blobs: Vec<LargeBlob>,
    expected: Option<(NixHash, u64)>,
}

/// Rebuilds the bytes of a large blob whose contents are not a UnixFS file
/// (a tarball recipe: its codec is dag-cbor). The bridge cannot depend on
/// what rebuilds them (DESIGN.md I-27), so the caller hands one in.
pub trait BlobRebuilder {
    /// Streams the bytes `contents` describes into `out`; `None` when this
    /// rebuilder does not know such objects. The walk checks the length and
    /// the git blob id (or the NAR hash) of what arrives.
    fn rebuild(&self, contents: &Cid, out: &mut dyn Write) -> Option<io::Result<()>>;
}

/// The rebuilder of exports that know UnixFS contents only.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRebuilder;

impl BlobRebuilder for NoRebuilder {
    fn rebuild(&self, _: &Cid, _: &mut dyn Write) -> Option<io::Result<()>> {
        None
    }
}

/// Reads and decodes a path-info block.
pub fn load_pathinfo<R: BlockRead>(r: &R, cid: &Cid) -> Result<PathInfo, ExportError> {
    let data = read_verified(r, cid)?;
    Ok(PathInfo::decode(&data)?)
}

fn read_verified<R: BlockRead>(r: &R, cid: &Cid) -> Result<Bytes, ExportError> {
    let data = r.read_block(cid)?.ok_or(ExportError::Missing(*cid))?;
    verify(cid, &data).map_err(|source| ExportError::Corrupt { cid: *cid, source })?;
    Ok(data)
}

fn plan<R: BlockRead>(r: &R, cid: &Cid) -> Result<Plan, ExportError> {
    match cid.codec() {
        DAG_CBOR => {
            let info = load_pathinfo(r, cid)?;
            Ok(Plan {
                kind: info.root.kind,
                root: info.root.cid,
                expected: Some((info.nar_hash.clone(), info.nar_size)),
                blobs: info.blobs,
            })
        }
        GIT_RAW => {
            let data = read_verified(r, cid)?;
            let (kind, _) = git::split_object(&data)
                .map_err(|source| ExportError::Git { cid: *cid, source })?;
            let kind = match kind {
                "tree" => RootKind::Directory,
                "blob" => RootKind::Regular,
                other => {
                    return Err(ExportError::Git {
                        cid: *cid,
                        source: GitError::WrongType {
                            expected: "tree or blob",
                            found: other.to_owned(),
                        },
                    })
                }
            };
            Ok(Plan {
                kind,
                root: *cid,
                blobs: Vec::new(),
                expected: None,
            })
        }
        _ => Err(ExportError::NotARoot(*cid)),
    }
}

/// Receives the nodes of a walk in NAR order.
trait Sink {
    fn file(&mut self, executable: bool, size: u64) -> Result<(), ExportError>;
    fn file_data(&mut self, data: &[u8]) -> Result<(), ExportError>;
    fn symlink(&mut self, target: &[u8]) -> Result<(), ExportError>;
    fn start_directory(&mut self) -> Result<(), ExportError>;
    fn entry(&mut self, name: &[u8]) -> Result<(), ExportError>;
    fn end_directory(&mut self) -> Result<(), ExportError>;
}

/// A NAR writer that refuses to grow past the recorded size (a hostile DAG
/// can reuse subtrees to describe a huge output).
struct NarSink<W: Write> {
    nar: NarWriter<W>,
    limit: Option<u64>,
}

impl<W: Write> NarSink<W> {
    fn check(&self) -> Result<(), ExportError> {
        match self.limit {
            Some(limit) if self.nar.written() > limit => {
                Err(ExportError::TooLong { expected: limit })
            }
            _ => Ok(()),
        }
    }
}

impl<W: Write> Sink for NarSink<W> {
    fn file(&mut self, executable: bool, size: u64) -> Result<(), ExportError> {
        if let Some(limit) = self.limit {
            if self.nar.written().saturating_add(size) > limit {
                return Err(ExportError::TooLong { expected: limit });
            }
        }
        self.nar.file(executable, size)?;
        self.check()
    }
    fn file_data(&mut self, data: &[u8]) -> Result<(), ExportError> {
        self.nar.file_data(data)?;
        self.check()
    }
    fn symlink(&mut self, target: &[u8]) -> Result<(), ExportError> {
        self.nar.symlink(target)?;
        self.check()
    }
    fn start_directory(&mut self) -> Result<(), ExportError> {
        self.nar.start_directory()?;
        self.check()
    }
    fn entry(&mut self, name: &[u8]) -> Result<(), ExportError> {
        self.nar.entry(name)?;
        self.check()
    }
    fn end_directory(&mut self) -> Result<(), ExportError> {
        self.nar.end_directory()?;
        self.check()
    }
}

struct Walker<'a, R: BlockRead> {
    r: &'a R,
    blobs: &'a [LargeBlob],
    rebuilder: &'a dyn BlobRebuilder,
    /// The output is checked against a recorded NAR hash before it counts:
    /// stored blocks need not be re-hashed, nor large blobs re-checked
    /// against their git ids (DESIGN.md I-21).
    nar_hash_checked: bool,
}

/// The UnixFS reader's view of the blocks: through
/// [`BlockRead::read_block_unverified`] in a walk whose output the NAR hash
/// covers.
struct UnixfsReads<'a, R: BlockRead> {
    r: &'a R,
    verify: bool,
}

impl<R: BlockRead> BlockRead for UnixfsReads<'_, R> {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        if self.verify {
            self.r.read_block(cid)
        } else {
            self.r.read_block_unverified(cid)
        }
    }
}

impl<R: BlockRead> Walker<'_, R> {
    fn large_blob(&self, cid: &Cid) -> Option<&LargeBlob> {
        let key = cid.to_bytes();
        self.blobs
            .binary_search_by(|b| b.git.to_bytes().cmp(&key))
            .ok()
            .map(|i| &self.blobs[i])
    }

    fn node<S: Sink>(
        &self,
        kind: RootKind,
        cid: &Cid,
        sink: &mut S,
        depth: usize,
    ) -> Result<(), ExportError> {
        match kind {
            RootKind::Directory => self.tree(cid, sink, depth),
            RootKind::Regular | RootKind::Executable => {
                let executable = kind == RootKind::Executable;
                if let Some(blob) = self.large_blob(cid) {
                    return self.large_file(blob, executable, sink);
                }
                let data = self.blob(cid)?;
                let contents =
                    parse_blob(&data).map_err(|source| ExportError::Git { cid: *cid, source })?;
                sink.file(executable, contents.len() as u64)?;
                if !contents.is_empty() {
                    sink.file_data(contents)?;
                }
                Ok(())
            }
            RootKind::Symlink => {
                if self.large_blob(cid).is_some() {
                    return Err(ExportError::LargeSymlink(*cid));
                }
                let data = self.blob(cid)?;
                let target =
                    parse_blob(&data).map_err(|source| ExportError::Git { cid: *cid, source })?;
                sink.symlink(target)
            }
        }
    }

    fn blob(&self, cid: &Cid) -> Result<Bytes, ExportError> {
        if self.nar_hash_checked {
            return self
                .r
                .read_block_unverified(cid)?
                .ok_or(ExportError::Missing(*cid));
        }
        read_verified(self.r, cid)
    }

    fn tree<S: Sink>(&self, cid: &Cid, sink: &mut S, depth: usize) -> Result<(), ExportError> {
        if depth >= MAX_DEPTH {
            return Err(ExportError::TooDeep);
        }
        let data = self.blob(cid)?;
        let mut entries =
            parse_tree(&data).map_err(|source| ExportError::Git { cid: *cid, source })?;
        // NAR orders entries by plain bytes, git by name-with-slash-for-trees.
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        sink.start_directory()?;
        for entry in &entries {
            sink.entry(&entry.name)?;
            let kind = match entry.mode {
                Mode::Tree => RootKind::Directory,
                Mode::File => RootKind::Regular,
                Mode::Executable => RootKind::Executable,
                Mode::Symlink => RootKind::Symlink,
            };
            self.node(kind, &entry.cid(), sink, depth + 1)?;
        }
        sink.end_directory()
    }

    fn large_file<S: Sink>(
        &self,
        blob: &LargeBlob,
        executable: bool,
        sink: &mut S,
    ) -> Result<(), ExportError> {
        let codec = blob.unixfs.codec();
        if codec != DAG_PB && codec != RAW {
            return self.rebuilt_file(blob, executable, sink);
        }
        let unixfs_error = |source| ExportError::Unixfs {
            cid: blob.unixfs,
            source,
        };
        let reads = UnixfsReads {
            r: self.r,
            verify: !self.nar_hash_checked,
        };
        let mut reader = unixfs::cat(&reads, &blob.unixfs).map_err(unixfs_error)?;
        sink.file(executable, blob.size)?;
        let mut hasher = (!self.nar_hash_checked).then(|| BlobHasher::new(blob.size));
        let mut remaining = blob.size;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| unixfs_read_error(blob.unixfs, e))?;
            if n == 0 {
                break;
            }
            if n as u64 > remaining {
                return Err(ExportError::LargeBlobSize {
                    git: blob.git,
                    expected: blob.size,
                });
            }
            remaining -= n as u64;
            if let Some(hasher) = &mut hasher {
                hasher.update(&buf[..n]);
            }
            sink.file_data(&buf[..n])?;
        }
        if remaining != 0 {
            return Err(ExportError::LargeBlobSize {
                git: blob.git,
                expected: blob.size,
            });
        }
        let Some(hasher) = hasher else {
            return Ok(());
        };
        let id = git::git_id(&blob.git).map_err(|source| ExportError::Git {
            cid: blob.git,
            source,
        })?;
        if hasher.finish() != id {
            return Err(ExportError::LargeBlobMismatch { git: blob.git });
        }
        Ok(())
    }
}

impl<R: BlockRead> Walker<'_, R> {
    /// A large blob rebuilt by the caller's [`BlobRebuilder`]: its length
    /// and git blob id are checked here whether or not a NAR hash covers it
    /// (a rebuilder runs code over many blocks; trust none of it).
    fn rebuilt_file<S: Sink>(
        &self,
        blob: &LargeBlob,
        executable: bool,
        sink: &mut S,
    ) -> Result<(), ExportError> {
        sink.file(executable, blob.size)?;
        let mut out = BlobSinkWriter {
            sink,
            remaining: blob.size,
            hasher: BlobHasher::new(blob.size),
            failed: None,
        };
        let rebuilt =
            self.rebuilder
                .rebuild(&blob.unixfs, &mut out)
                .ok_or(ExportError::NoRebuilder {
                    git: blob.git,
                    contents: blob.unixfs,
                })?;
        if let Some(failed) = out.failed.take() {
            return Err(failed);
        }
        rebuilt.map_err(|source| ExportError::Rebuild {
            git: blob.git,
            contents: blob.unixfs,
            source,
        })?;
        if out.remaining != 0 {
            return Err(ExportError::LargeBlobSize {
                git: blob.git,
                expected: blob.size,
            });
        }
        let id = git::git_id(&blob.git).map_err(|source| ExportError::Git {
            cid: blob.git,
            source,
        })?;
        if out.hasher.finish() != id {
            return Err(ExportError::LargeBlobMismatch { git: blob.git });
        }
        Ok(())
    }
}

/// Feeds a rebuilder's output to the sink, refusing bytes past the
/// recorded size and hashing them as a git blob.
struct BlobSinkWriter<'s, S: Sink> {
    sink: &'s mut S,
    remaining: u64,
    hasher: BlobHasher,
    /// The sink's own error, kept whole (the rebuilder sees an io::Error).
    failed: Option<ExportError>,
}

impl<S: Sink> Write for BlobSinkWriter<'_, S> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed.is_some() {
            return Err(io::Error::other("the export already failed"));
        }
        if data.len() as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "rebuilt bytes exceed the recorded blob size",
            ));
        }
        self.remaining -= data.len() as u64;
        self.hasher.update(data);
        if let Err(e) = self.sink.file_data(data) {
            let message = e.to_string();
            self.failed = Some(e);
            return Err(io::Error::other(message));
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn unixfs_read_error(cid: Cid, e: io::Error) -> ExportError {
    match e.downcast::<UnixfsError>() {
        Ok(source) => ExportError::Unixfs { cid, source },
        Err(e) => ExportError::Unixfs {
            cid,
            source: UnixfsError::Io {
                path: PathBuf::from(cid.to_string()),
                source: e,
            },
        },
    }
}

fn check_expected(
    expected: &Option<(NixHash, u64)>,
    summary: &NarSummary,
) -> Result<(), ExportError> {
    if let Some((hash, size)) = expected {
        if summary.size != *size {
            return Err(ExportError::SizeMismatch {
                expected: *size,
                actual: summary.size,
            });
        }
        let actual = NixHash::sha256(summary.sha256);
        if actual != *hash {
            return Err(ExportError::HashMismatch {
                expected: hash.to_nix32(),
                actual: actual.to_nix32(),
            });
        }
    }
    Ok(())
}

/// Renders the NAR for `cid` into `w`, streaming. `cid` is a path-info
/// (dag-cbor: the NAR hash and size are checked, an error means the output
/// must be discarded) or a bare git object (git-raw: a tree renders as a
/// directory, a blob as a regular file; nothing to check against).
pub fn export_nar<R: BlockRead, W: Write>(
    r: &R,
    cid: &Cid,
    w: W,
) -> Result<NarSummary, ExportError> {
    export_nar_with(r, cid, w, &NoRebuilder)
}

/// [`export_nar`] for DAGs whose large blobs may need `rebuilder`.
pub fn export_nar_with<R: BlockRead, W: Write>(
    r: &R,
    cid: &Cid,
    w: W,
    rebuilder: &dyn BlobRebuilder,
) -> Result<NarSummary, ExportError> {
    let plan = plan(r, cid)?;
    let mut sink = NarSink {
        nar: NarWriter::new(w)?,
        limit: plan.expected.as_ref().map(|(_, size)| *size),
    };
    Walker {
        r,
        blobs: &plan.blobs,
        rebuilder,
        nar_hash_checked: plan.expected.is_some(),
    }
    .node(plan.kind, &plan.root, &mut sink, 0)?;
    let (_, summary) = sink.nar.finish()?;
    check_expected(&plan.expected, &summary)?;
    Ok(summary)
}

/// Writes the tree to disk while hashing the equivalent NAR.
struct FsSink {
    nar: NarSink<io::Sink>,
    /// Directories we created, innermost last.
    dirs: Vec<PathBuf>,
    /// Where the next node goes.
    next: Option<PathBuf>,
    file: Option<(fs::File, PathBuf)>,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

impl FsSink {
    fn take_path(&mut self) -> Result<PathBuf, ExportError> {
        self.next.take().ok_or(ExportError::Nar(NarError::Misuse(
            "node without a destination",
        )))
    }
}

impl Sink for FsSink {
    fn file(&mut self, executable: bool, size: u64) -> Result<(), ExportError> {
        self.nar.file(executable, size)?;
        let path = self.take_path()?;
        let mode = if executable { 0o755 } else { 0o644 };
        // create_new = O_CREAT|O_EXCL: never opens an existing file or follows a symlink.
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(io_error(&path))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_error(&path))?;
        if size > 0 {
            self.file = Some((file, path));
        }
        Ok(())
    }

    fn file_data(&mut self, data: &[u8]) -> Result<(), ExportError> {
        self.nar.file_data(data)?;
        let (file, path) = self.file.as_mut().ok_or(ExportError::Nar(NarError::Misuse(
            "file data without a file",
        )))?;
        file.write_all(data).map_err(io_error(path))?;
        Ok(())
    }

    fn symlink(&mut self, target: &[u8]) -> Result<(), ExportError> {
        self.nar.symlink(target)?;
        self.file = None;
        let path = self.take_path()?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).map_err(io_error(&path))
    }

    fn start_directory(&mut self) -> Result<(), ExportError> {
        self.nar.start_directory()?;
        self.file = None;
        let path = self.take_path()?;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(io_error(&path))?;
        self.dirs.push(path);
        Ok(())
    }

    fn entry(&mut self, name: &[u8]) -> Result<(), ExportError> {
        // The NAR writer validates the name (no `/`, `.`, `..`, NUL, empty) and the order.
        self.nar.entry(name)?;
        self.file = None;
        let dir = self.dirs.last().ok_or(ExportError::Nar(NarError::Misuse(
            "entry outside a directory",
        )))?;
        self.next = Some(dir.join(OsStr::from_bytes(name)));
        Ok(())
    }

    fn end_directory(&mut self) -> Result<(), ExportError> {
        self.nar.end_directory()?;
        self.file = None;
        self.dirs.pop();
        Ok(())
    }
}

/// Materialises `cid` (path-info or git object, as for [`export_nar`]) at
/// `dest`, which must not exist: a directory tree, or a single file or
/// symlink for such roots. Every file, directory and symlink is created new
/// (O_EXCL, mkdir), so nothing is written through a symlink or over anything.
/// On any error, including a NAR hash or size mismatch, what was created is removed.
pub fn export_dir<R: BlockRead>(r: &R, cid: &Cid, dest: &Path) -> Result<NarSummary, ExportError> {
    export_dir_with(r, cid, dest, &NoRebuilder)
}

/// [`export_dir`] for DAGs whose large blobs may need `rebuilder`.
pub fn export_dir_with<R: BlockRead>(
    r: &R,
    cid: &Cid,
    dest: &Path,
    rebuilder: &dyn BlobRebuilder,
) -> Result<NarSummary, ExportError> {
    match fs::symlink_metadata(dest) {
        Ok(_) => return Err(ExportError::Exists(dest.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(dest)(e)),
    }
    let result = (|| {
        let plan = plan(r, cid)?;
        let mut sink = FsSink {
            nar: NarSink {
                nar: NarWriter::new(io::sink())?,
                limit: plan.expected.as_ref().map(|(_, size)| *size),
            },
            dirs: Vec::new(),
            next: Some(dest.to_owned()),
            file: None,
        };
        // Files land on disk before the NAR hash is known: check every block.
        Walker {
            r,
            blobs: &plan.blobs,
            rebuilder,
            nar_hash_checked: false,
        }
        .node(plan.kind, &plan.root, &mut sink, 0)?;
        drop(sink.file.take());
        let (_, summary) = sink.nar.nar.finish()?;
        check_expected(&plan.expected, &summary)?;
        Ok(summary)
    })();
    if result.is_err() {
        remove_created(dest);
    }
    result
}

fn remove_created(dest: &Path) {
    // symlink_metadata: never follow a symlink we created at the root.
    let outcome = match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(dest),
        Ok(_) => fs::remove_file(dest),
        Err(_) => Ok(()),
    };
    if let Err(e) = outcome {
        tracing::warn!(path = %dest.display(), error = %e, "could not remove a partial export");
    }
}
