//! Tarballs as trees: a tarball is stored as its unpacked tree (the
//! bridge's git-tree DAG, so its id is a SWHID `swh:1:dir:`) plus a small
//! DAG-CBOR recipe that rebuilds the exact bytes (DESIGN.md I-27..I-30).
//!
//! - [`object`]: the recipe format (`ipnix-tarball-recipe/1`) and its strict decoder.
//! - [`compress`]: the compression layer (gzip through preflate; bzip2, xz,
//!   zstd by parameter search; the whole file kept when nothing reproduces it).
//! - [`tar`]: the archive layer (header differences, names, members the
//!   tree cannot hold).
//!
//! This module ties them together: [`disassemble`] stores tree + recipe,
//! checks that the recipe rebuilds the file (it falls back to keeping the
//! compressed bytes when not), indexes it by the tarball's SHA-256, SHA-512
//! and SHA-1 and pins it as `recipe:<sha256 hex>`; [`reassemble`] streams
//! the bytes into any `Write` and fails unless they have the recorded
//! length and SHA-256; [`reassemble_to_file`] writes a temporary file and
//! renames it only after that check; [`lookup`] finds a recipe by hash.

pub mod compress;
pub mod object;
pub mod tar;

use crate::unpack::{self, ArchiveFormat, UnpackError, UnpackLimits};
use cid::Cid;
use compress::{Codec, Compressor, MultiStream, NotReproduced};
use ipnix_bridge::git::GitError;
use ipnix_bridge::{HashAlgo, NixHash};
use ipnix_store::block::{cid_for, DAG_CBOR};
use ipnix_store::unixfs::{self, Profile, UnixfsError};
use ipnix_store::{BlockRead, BlockWrite, PinMode, Store, StoreError};
pub use object::{Compression, ObjectError, Recipe, Stream, RECIPE_TYPE};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Store index namespace: `<algo>:<hex digest>` of a tarball -> recipe CID (text).
pub const NAMESPACE: &str = "recipe";
/// Spooled bytes kept in memory before they go to a temporary file.
const SPOOL_MEMORY: usize = 1 << 20;
/// zstd window the side-stream decoders accept (16 MiB).
const MAX_ZSTD_WINDOW_LOG: u32 = 24;

/// Why a tarball could not be disassembled or reassembled. Reassembly
/// errors mean the bytes written so far must be discarded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecipeError {
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("recipe {cid}: {source}")]
    Object {
        cid: Cid,
        #[source]
        source: ObjectError,
    },
    #[error(transparent)]
    Encode(#[from] ObjectError),
    #[error("{0} is not a tarball recipe (a DAG-CBOR block is expected)")]
    NotARecipe(Cid),
    #[error("block {0} is not available (neither here nor from peers)")]
    Missing(Cid),
    #[error("the recipe's records are malformed: {0}")]
    BadRecords(String),
    #[error("the tree lacks {0:?}, which the recipe needs")]
    TreeLacks(String),
    #[error("git object {cid}: {source}")]
    Git {
        cid: Cid,
        #[source]
        source: GitError,
    },
    #[error(transparent)]
    Tree(#[from] GitError),
    #[error("directory {0:?} has too many entries for one git tree block")]
    TreeTooLarge(String),
    #[error("UnixFS: {0}")]
    Unixfs(#[from] UnixfsError),
    #[error("large blob {0}: its UnixFS file has another length than recorded")]
    BlobSize(Cid),
    #[error("the rebuilt tar stream is {actual} bytes, the recipe says {expected}")]
    TarSize { expected: u64, actual: u64 },
    #[error("the archive ends early: {0}")]
    Truncated(String),
    #[error("the rebuilt tarball is {actual} bytes, the recipe says {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("the rebuilt tarball hashes to {actual}, the recipe says {expected}")]
    HashMismatch { expected: String, actual: String },
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    #[error("spooling side data: {0}")]
    Spool(#[source] io::Error),
    #[error("writing: {0}")]
    Write(#[source] io::Error),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} already exists; give a new path", .0.display())]
    Exists(PathBuf),
    #[error("index entry {key} is malformed")]
    BadIndex { key: String },
    #[error(
        "a tarball over {} bytes cannot be disassembled",
        object::MAX_TARBALL_BYTES
    )]
    TooLarge,
}

impl RecipeError {
    /// A short reason word, as `sources status` prints them.
    pub fn reason(&self) -> &'static str {
        match self {
            RecipeError::Unpack(e) => e.reason(),
            RecipeError::Unsupported(_) => "unsupported",
            RecipeError::Truncated(_) | RecipeError::Read(_) => "corrupt",
            RecipeError::TooLarge => "too-large",
            _ => "recipe",
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> RecipeError + '_ {
    move |source| RecipeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Bytes kept in memory up to [`SPOOL_MEMORY`], then in an unnamed temporary file.
pub(crate) struct Spool {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
}

impl Spool {
    fn new() -> Spool {
        Spool {
            memory: Vec::new(),
            file: None,
            len: 0,
        }
    }
}

impl Write for Spool {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.file.is_none() && self.memory.len() + data.len() > SPOOL_MEMORY {
            let mut file = tempfile::tempfile()?;
            file.write_all(&self.memory)?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(file) => file.write_all(data)?,
            None => self.memory.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Stores spooled bytes as a recipe stream: inline when small, else a
/// UnixFS file (raw leaves, 1 MiB chunks).
fn store_spool<W: BlockWrite>(w: &mut W, spool: Spool) -> Result<Stream, RecipeError> {
    match spool.file {
        None if spool.memory.len() <= object::MAX_INLINE_STREAM => Ok(Stream::Inline(spool.memory)),
        None => store_reader(w, &spool.memory[..], spool.len),
        Some(mut file) => {
            file.seek(SeekFrom::Start(0)).map_err(RecipeError::Spool)?;
            store_reader(w, BufReader::new(file), spool.len)
        }
    }
}

fn store_reader<W: BlockWrite, R: Read>(
    w: &mut W,
    reader: R,
    len: u64,
) -> Result<Stream, RecipeError> {
    let added = unixfs::add_file(w, reader, &Profile::V1_2025.params())?;
    if added.size != len {
        return Err(RecipeError::Spool(io::Error::other(
            "spooled stream changed length while it was stored",
        )));
    }
    Ok(Stream::File {
        cid: added.cid,
        size: added.size,
    })
}

/// Stores bytes `start..end` of `file` as a stream.
fn store_range<W: BlockWrite>(
    w: &mut W,
    file: &File,
    start: u64,
    end: u64,
) -> Result<Stream, RecipeError> {
    let mut f = file.try_clone().map_err(RecipeError::Read)?;
    f.seek(SeekFrom::Start(start)).map_err(RecipeError::Read)?;
    let len = end - start;
    if len as usize <= object::MAX_INLINE_STREAM {
        let mut bytes = vec![0u8; len as usize];
        f.read_exact(&mut bytes).map_err(RecipeError::Read)?;
        return Ok(Stream::Inline(bytes));
    }
    store_reader(w, BufReader::new(f.take(len)), len)
}

/// A stream's bytes, read from inline data or its UnixFS file.
fn open_stream<'a, R: BlockRead + 'a>(
    blocks: &'a R,
    stream: &Stream,
) -> Result<Box<dyn Read + 'a>, RecipeError> {
    match stream {
        Stream::Inline(bytes) => Ok(Box::new(io::Cursor::new(bytes.clone()))),
        Stream::File { cid, size } => {
            let reader = unixfs::cat(blocks, cid)?;
            Ok(Box::new(ExactLength {
                inner: reader.take(*size),
                left: *size,
                cid: *cid,
            }))
        }
    }
}

/// Fails if a linked stream is shorter than the recipe says.
struct ExactLength<R> {
    inner: R,
    left: u64,
    cid: Cid,
}

impl<R: Read> Read for ExactLength<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::other(format!(
                "stream {} is {} bytes shorter than the recipe says",
                self.cid, self.left
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn zstd_reader<'a>(inner: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>, RecipeError> {
    let mut decoder = zstd::stream::read::Decoder::new(inner).map_err(RecipeError::Read)?;
    decoder
        .window_log_max(MAX_ZSTD_WINDOW_LOG)
        .map_err(RecipeError::Read)?;
    Ok(Box::new(ZstdErrors(decoder)))
}

/// Reports a malformed side stream as such.
struct ZstdErrors<R>(R);

impl<R: Read> Read for ZstdErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::other(format!("side stream is not valid zstd: {e}")))
    }
}

/// The three hashes a recipe records, computed in one pass.
struct Hashes {
    sha256: [u8; 32],
    sha512: [u8; 64],
    sha1: [u8; 20],
}

fn hash_file(file: &File) -> io::Result<(Hashes, u64)> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(0))?;
    let (mut a, mut b, mut c) = (Sha256::new(), Sha512::new(), Sha1::new());
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
        c.update(&buf[..n]);
        len += n as u64;
    }
    Ok((
        Hashes {
            sha256: a.finalize().into(),
            sha512: b.finalize().into(),
            sha1: c.finalize().into(),
        },
        len,
    ))
}

/// How [`disassemble`] treats the archive.
#[derive(Debug, Clone, Default)]
pub struct DisassembleOptions {
    /// Caps on entries and unpacked bytes (the unpacker's).
    pub limits: UnpackLimits,
}

/// What [`disassemble`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disassembled {
    pub recipe: Cid,
    /// The unpacked tree (git tree CID).
    pub tree: Cid,
    /// `swh:1:dir:<tree id>`.
    pub swhid: String,
    pub tarball_bytes: u64,
    /// The recipe block, its linked side streams and the blobs of members
    /// the tree does not hold: what the tarball costs beyond its tree.
    pub recipe_bytes: u64,
    pub sha256: [u8; 32],
    pub format: String,
    /// Layers kept as bytes because nothing reproduced them.
    pub fallbacks: Vec<String>,
    /// Why each fallback was needed.
    pub fallback_reasons: Vec<String>,
    pub members: u64,
}

fn format_of(format: ArchiveFormat) -> Result<(&'static str, Option<Codec>), RecipeError> {
    Ok(match format {
        ArchiveFormat::Tar => ("tar", None),
        ArchiveFormat::TarGz => ("tar.gz", Some(Codec::Gzip)),
        ArchiveFormat::TarBz2 => ("tar.bz2", Some(Codec::Bzip2)),
        ArchiveFormat::TarXz => ("tar.xz", Some(Codec::Xz)),
        ArchiveFormat::TarZst => ("tar.zst", Some(Codec::Zstd)),
        _ => {
            return Err(RecipeError::Unsupported(format!(
                "{format} archives have no recipes yet (tar, tar.gz, tar.bz2, tar.xz, tar.zst)"
            )))
        }
    })
}

/// Counts and hashes what reassembly writes, refusing to go past the size.
struct HashingWrite<W: Write> {
    inner: W,
    sha256: Sha256,
    sha512: Sha512,
    sha1: Sha1,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for HashingWrite<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.written + data.len() as u64 > self.limit {
            return Err(io::Error::other(RecipeError::SizeMismatch {
                expected: self.limit,
                actual: self.written + data.len() as u64,
            }));
        }
        let n = self.inner.write(data)?;
        self.sha256.update(&data[..n]);
        self.sha512.update(&data[..n]);
        self.sha1.update(&data[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Disassembles the tarball at `path` into `store`: tree, recipe, index
/// entries and the pin `recipe:<sha256 hex>`, all in one session whose last
/// commit carries the index and the pin, after the recipe was checked to
/// rebuild the file exactly (I-27).
pub fn disassemble(
    store: &Store,
    path: &Path,
    options: &DisassembleOptions,
) -> Result<Disassembled, RecipeError> {
    let file = File::open(path).map_err(io_error(path))?;
    let (hashes, len) = hash_file(&file).map_err(io_error(path))?;
    if len > object::MAX_TARBALL_BYTES {
        return Err(RecipeError::TooLarge);
    }
    let mut head = vec![0u8; len.min(512) as usize];
    file.read_exact_at_start(&mut head)
        .map_err(io_error(path))?;
    let detected = unpack::detect_bytes(&head).ok_or_else(|| {
        RecipeError::Unsupported("not a tar, tar.gz, tar.bz2, tar.xz or tar.zst archive".into())
    })?;
    let (format, codec) = format_of(detected)?;

    let mut session = store.session();
    let mut corrections = Spool::new();
    let mut reasons = Vec::new();
    // The compression layer: what it is, where its streams end.
    let found: Option<(Compression, u64)> = match codec {
        None => Some((Compression::None, len)),
        Some(Codec::Gzip) => {
            match compress::analyse_gzip(&file, len, &mut corrections).map_err(RecipeError::Read)? {
                Ok(found) => Some((found.compression, found.stream_end)),
                Err(NotReproduced(why)) => {
                    reasons.push(why);
                    None
                }
            }
        }
        Some(codec) => {
            let clone = file.try_clone().map_err(io_error(path))?;
            let mut streams = MultiStream::new(codec, clone, len).map_err(RecipeError::Read)?;
            io::copy(&mut streams, &mut io::sink()).map_err(RecipeError::Read)?;
            let end = streams.end();
            match compress::search(codec, &file, len, &streams.streams)
                .map_err(RecipeError::Read)?
            {
                Ok(compression) => Some((compression, end)),
                Err(NotReproduced(why)) => {
                    reasons.push(why);
                    None
                }
            }
        }
    };

    // The archive layer, from the plain tar stream.
    let plain_end = found.as_ref().map_or(len, |f| f.1);
    let mut plain: Box<dyn Read> = match codec {
        None => {
            let mut f = file.try_clone().map_err(io_error(path))?;
            f.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
            Box::new(BufReader::with_capacity(64 * 1024, f.take(len)))
        }
        Some(codec) => Box::new(
            MultiStream::new(codec, file.try_clone().map_err(io_error(path))?, plain_end)
                .map_err(RecipeError::Read)?,
        ),
    };
    let mut extra =
        zstd::stream::write::Encoder::new(Spool::new(), 9).map_err(RecipeError::Spool)?;
    let tar = tar::disassemble(&mut session, &mut plain, &mut extra, &options.limits)?;
    drop(plain);
    let extra = extra.finish().map_err(RecipeError::Spool)?;
    let extra = store_spool(&mut session, extra)?;
    let mut records =
        zstd::stream::write::Encoder::new(Spool::new(), 19).map_err(RecipeError::Spool)?;
    records
        .write_all(&tar.records)
        .map_err(RecipeError::Spool)?;
    let records = store_spool(&mut session, records.finish().map_err(RecipeError::Spool)?)?;

    let mut fallbacks = Vec::new();
    let (compression, trailing) = match found {
        Some((Compression::Gzip { members, .. }, end)) => {
            let corrections = store_spool(&mut session, corrections)?;
            (
                Compression::Gzip {
                    members,
                    corrections,
                },
                store_range(&mut session, &file, end, len)?,
            )
        }
        Some((compression, end)) if !matches!(compression, Compression::None) => {
            (compression, store_range(&mut session, &file, end, len)?)
        }
        Some((compression, _)) => (compression, Stream::Inline(Vec::new())),
        None => {
            fallbacks.push(object::LAYER_COMPRESSION.to_owned());
            (
                Compression::Raw {
                    data: store_range(&mut session, &file, 0, len)?,
                },
                Stream::Inline(Vec::new()),
            )
        }
    };
    let mut recipe = Recipe {
        format: format.to_owned(),
        size: len,
        sha256: hashes.sha256,
        sha512: hashes.sha512,
        sha1: hashes.sha1,
        tree: tar.tree,
        blobs: tar.blobs,
        extra_blobs: tar.extra_blobs,
        compression,
        trailing,
        archive: object::Archive {
            tar_bytes: tar.tar_bytes,
            members: tar.members,
            records,
            extra,
        },
        fallbacks,
    };
    let mut outcome = store_and_check(&mut session, store, &recipe);
    if outcome.is_err() && recipe.fallbacks.is_empty() {
        // The layers did not rebuild the file: keep its bytes instead (I-27).
        let why = outcome
            .as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        tracing::warn!(path = %path.display(), "recipe did not rebuild the tarball ({why}); keeping the compressed bytes");
        reasons.push(why);
        recipe.fallbacks = vec![object::LAYER_COMPRESSION.to_owned()];
        recipe.compression = Compression::Raw {
            data: store_range(&mut session, &file, 0, len)?,
        };
        recipe.trailing = Stream::Inline(Vec::new());
        outcome = store_and_check(&mut session, store, &recipe);
    }
    let (cid, block_len) = outcome?;
    for (algo, digest) in [
        ("sha256", &hashes.sha256[..]),
        ("sha512", &hashes.sha512[..]),
        ("sha1", &hashes.sha1[..]),
    ] {
        session.index_put(
            NAMESPACE,
            index_key(algo, digest).as_bytes(),
            cid.to_string().as_bytes(),
        );
    }
    let pin_name = format!("recipe:{}", hex::encode(hashes.sha256));
    session.finish(Some((cid, PinMode::Recursive, Some(pin_name))))?;
    let mut extra_bytes = 0u64;
    for blob in &recipe.extra_blobs {
        extra_bytes += match recipe.blobs.iter().find(|b| b.git == *blob) {
            Some(large) => large.size,
            None => store.block_size(blob)?.unwrap_or(0),
        };
    }
    let tree_id = ipnix_bridge::git::git_id(&recipe.tree)?;
    Ok(Disassembled {
        recipe: cid,
        tree: recipe.tree,
        swhid: format!("swh:1:dir:{}", hex::encode(tree_id)),
        tarball_bytes: len,
        recipe_bytes: block_len + recipe.linked_bytes() + extra_bytes,
        sha256: hashes.sha256,
        format: format.to_owned(),
        fallbacks: recipe.fallbacks.clone(),
        fallback_reasons: reasons,
        members: recipe.archive.members,
    })
}

/// Writes the recipe block, commits what the session holds, and rebuilds
/// the tarball from the store into a hashing sink.
fn store_and_check(
    session: &mut ipnix_store::Session<'_>,
    store: &Store,
    recipe: &Recipe,
) -> Result<(Cid, u64), RecipeError> {
    let (cid, bytes) = recipe.to_block()?;
    session.put_hashed(cid, &bytes)?;
    session.flush()?;
    reassemble_recipe(store, recipe, io::sink())?;
    Ok((cid, bytes.len() as u64))
}

trait ReadAtStart {
    fn read_exact_at_start(&self, buf: &mut [u8]) -> io::Result<()>;
}

impl ReadAtStart for File {
    fn read_exact_at_start(&self, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, 0)
    }
}

/// What [`reassemble`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Reads and validates the recipe block `cid`.
pub fn load<R: BlockRead>(blocks: &R, cid: &Cid) -> Result<Recipe, RecipeError> {
    if cid.codec() != DAG_CBOR {
        return Err(RecipeError::NotARecipe(*cid));
    }
    let bytes = blocks.read_block(cid)?.ok_or(RecipeError::Missing(*cid))?;
    Recipe::decode(&bytes).map_err(|source| RecipeError::Object { cid: *cid, source })
}

/// Rebuilds the tarball of recipe `cid` from `blocks` into `out`,
/// streaming in bounded memory. An error means `out` got a prefix or wrong
/// bytes and must be discarded; `Ok` means exactly the recorded length and
/// SHA-256 were written.
pub fn reassemble<R: BlockRead, W: Write>(
    blocks: &R,
    cid: &Cid,
    out: W,
) -> Result<Reassembled, RecipeError> {
    let recipe = load(blocks, cid)?;
    reassemble_recipe(blocks, &recipe, out)
}

/// [`reassemble`] for a recipe already loaded.
pub fn reassemble_recipe<R: BlockRead, W: Write>(
    blocks: &R,
    recipe: &Recipe,
    out: W,
) -> Result<Reassembled, RecipeError> {
    let mut out = HashingWrite {
        inner: out,
        sha256: Sha256::new(),
        sha512: Sha512::new(),
        sha1: Sha1::new(),
        written: 0,
        limit: recipe.size,
    };
    match &recipe.compression {
        Compression::Raw { data } => {
            let mut reader = open_stream(blocks, data)?;
            io::copy(&mut reader, &mut out).map_err(unwrap_io)?;
        }
        compression => {
            let corrections: Box<dyn Read + '_> = match compression {
                Compression::Gzip { corrections, .. } => open_stream(blocks, corrections)?,
                _ => Box::new(io::empty()),
            };
            let mut compressor =
                Compressor::new(compression, corrections, &mut out).map_err(unwrap_io)?;
            let mut records = zstd_reader(open_stream(blocks, &recipe.archive.records)?)?;
            let mut extra = zstd_reader(open_stream(blocks, &recipe.archive.extra)?)?;
            tar::reassemble(blocks, recipe, &mut records, &mut extra, &mut compressor)
                .map_err(flatten)?;
            compressor.finish().map_err(unwrap_io)?;
        }
    }
    let mut trailing = open_stream(blocks, &recipe.trailing)?;
    io::copy(&mut trailing, &mut out).map_err(unwrap_io)?;
    out.flush().map_err(RecipeError::Write)?;
    if out.written != recipe.size {
        return Err(RecipeError::SizeMismatch {
            expected: recipe.size,
            actual: out.written,
        });
    }
    let sha256: [u8; 32] = out.sha256.finalize().into();
    if sha256 != recipe.sha256 {
        return Err(RecipeError::HashMismatch {
            expected: hex::encode(recipe.sha256),
            actual: hex::encode(sha256),
        });
    }
    // The other hashes the recipe is indexed under must hold too.
    let sha512: [u8; 64] = out.sha512.finalize().into();
    let sha1: [u8; 20] = out.sha1.finalize().into();
    if sha512 != recipe.sha512 || sha1 != recipe.sha1 {
        return Err(RecipeError::HashMismatch {
            expected: format!(
                "sha512 {} sha1 {}",
                hex::encode(recipe.sha512),
                hex::encode(recipe.sha1)
            ),
            actual: format!("sha512 {} sha1 {}", hex::encode(sha512), hex::encode(sha1)),
        });
    }
    Ok(Reassembled {
        bytes: out.written,
        sha256,
    })
}

/// An I/O error that carries a recipe error (from a writer in the chain) as that error.
fn unwrap_io(e: io::Error) -> RecipeError {
    match e.get_ref().map(|inner| inner.is::<RecipeError>()) {
        Some(true) => *e
            .into_inner()
            .expect("checked")
            .downcast::<RecipeError>()
            .expect("checked"),
        _ => match e
            .get_ref()
            .map(|inner| inner.is::<compress::RebuildError>())
        {
            Some(true) => RecipeError::BadRecords(e.to_string()),
            _ => RecipeError::Write(e),
        },
    }
}

fn flatten(e: RecipeError) -> RecipeError {
    match e {
        RecipeError::Write(io) => unwrap_io(io),
        other => other,
    }
}

/// [`reassemble`] into a new file at `dest` (which must not exist): a
/// temporary file beside it, renamed into place only after the length and
/// SHA-256 check passed, so a failed rebuild leaves nothing at `dest`.
pub fn reassemble_to_file<R: BlockRead>(
    blocks: &R,
    cid: &Cid,
    dest: &Path,
) -> Result<Reassembled, RecipeError> {
    if dest.symlink_metadata().is_ok() {
        return Err(RecipeError::Exists(dest.to_owned()));
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".ipnix-reassemble-")
        .tempfile_in(&dir)
        .map_err(io_error(&dir))?;
    let mut writer = io::BufWriter::with_capacity(256 * 1024, temp);
    let done = reassemble(blocks, cid, &mut writer)?;
    let temp = writer
        .into_inner()
        .map_err(|e| io_error(dest)(e.into_error()))?;
    temp.as_file().sync_all().map_err(io_error(dest))?;
    temp.persist_noclobber(dest)
        .map_err(|e| io_error(dest)(e.error))?;
    Ok(done)
}

fn index_key(algo: &str, digest: &[u8]) -> String {
    format!("{algo}:{}", hex::encode(digest))
}

/// The recipe indexed under a tarball hash (SHA-256, SHA-512 or SHA-1), if any.
pub fn lookup(store: &Store, hash: &NixHash) -> Result<Option<Cid>, RecipeError> {
    let algo = match hash.algo() {
        HashAlgo::Sha256 => "sha256",
        HashAlgo::Sha512 => "sha512",
        HashAlgo::Sha1 => "sha1",
        _ => return Ok(None),
    };
    let key = index_key(algo, hash.digest());
    let Some(value) = store.index_get(NAMESPACE, key.as_bytes())? else {
        return Ok(None);
    };
    std::str::from_utf8(&value)
        .ok()
        .and_then(|text| Cid::try_from(text).ok())
        .map(Some)
        .ok_or(RecipeError::BadIndex { key })
}

/// The CID of a recipe's bytes (for tests and tools that build recipes).
pub fn recipe_cid(bytes: &[u8]) -> Cid {
    cid_for(DAG_CBOR, bytes)
}
