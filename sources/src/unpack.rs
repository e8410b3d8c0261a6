//! Archives -> a fresh directory, safely: tar (plain, gzip, bzip2, xz,
//! zstd) and zip, recognised by their magic bytes, decoded by the maintained
//! crates (tar, zip, flate2, bzip2, xz2, zstd) and unpacked entry by entry
//! into a destination that must not exist yet. This module owns the rules
//! that make an untrusted archive harmless:
//!
//! - every entry name is split on `/`; `.` and empty components are dropped,
//!   an absolute name, a `..` component, NUL, or a component Nix refuses
//!   ([`ipnix_bridge::nar::check_name`]) makes the archive `unsafe-archive`;
//! - every node is created fresh (`mkdir`, `O_CREAT|O_EXCL`, `symlink`) and
//!   every parent on the way is checked with `lstat` to be a real directory
//!   inside the destination, so nothing is ever written through a symlink or
//!   outside the destination, even when a later entry names a path under an
//!   earlier symlink (refused);
//! - a symlink is refused when its target is absolute or could leave the
//!   tree: `..` components may only lead the target and may climb no higher
//!   than the symlink's own directory. A `..` after a normal component is
//!   refused too, since that component may itself be a symlink and the
//!   kernel resolves `link/..` from the link's target, not lexically;
//! - a hardlink must name a regular file (or symlink) extracted earlier
//!   inside the tree; it becomes a copy, since a NAR has no hardlinks;
//! - device nodes and FIFOs are refused; unknown tar entry types and
//!   encrypted or unknown zip methods are `unsupported`;
//! - total unpacked bytes, the number of entries, the tar metadata between
//!   two entries (long names, pax records: [`MAX_HEADER_BYTES`]) and
//!   optionally the expansion ratio are capped: `too-large`;
//! - files get mode 0755 when the archive gives the owner-execute bit, else
//!   0644, directories 0755: exactly what a NAR keeps.
//!
//! Duplicates are resolved as GNU tar does: the last entry for a path wins
//! (the earlier file or symlink is removed and the new node created), a
//! directory entry over an existing directory merges with it, and an entry
//! that would replace a non-empty directory is refused (GNU tar fails too).
//! Missing directory entries are implied, and a directory entry may come
//! after its files. pax global headers (`git archive` writes one with the
//! commit id) are skipped, as GNU tar and libarchive do.
//!
//! On any error the destination is removed. When the archive holds exactly
//! one top-level entry and it is a directory, [`Unpacked::root`] is that
//! directory (fetchzip's `stripRoot`), else the destination itself.
//!
//! Limitations: file names are taken as raw bytes (zip names in CP437 are
//! not converted to UTF-8 as Info-ZIP may do); sparse tar members are
//! written out in full; a zstd frame may ask for a window of up to 128 MiB
//! (the library default); a single top-level *file* leaves the root at the
//! destination (fetchzip's behaviour, while `nix-prefetch-url --unpack`
//! would hash the file itself).

use ipnix_bridge::nar::{check_name, check_target, NameError, MAX_DEPTH, MAX_TARGET_LEN};
use std::cell::Cell;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Default cap on the bytes of all unpacked files together.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;
/// Default cap on the number of archive entries.
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Most bytes of tar metadata (headers, GNU long names, pax records) read
/// between two entries; the tar crate holds them in memory.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
/// The expansion ratio is only checked past this many unpacked bytes, so
/// small, highly compressible archives pass.
pub const RATIO_FLOOR: u64 = 64 << 20;
/// Bytes inspected to recognise the format.
const SNIFF_LEN: usize = 512;
/// Copy buffer for file contents.
const COPY_BUFFER: usize = 64 * 1024;
/// The owner-execute bit: the only permission a NAR keeps.
const OWNER_EXECUTE: u32 = 0o100;
const FILE_MODE: u32 = 0o644;
const EXEC_MODE: u32 = 0o755;
const DIR_MODE: u32 = 0o755;

/// Caps against archive bombs. Build with `default()` and the `with_*` setters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Total bytes of unpacked files (hardlink copies included).
    pub max_bytes: u64,
    /// Archive entries of any kind.
    pub max_entries: u64,
    /// Unpacked bytes per archive byte, checked past [`RATIO_FLOOR`];
    /// `None` (the default) leaves only `max_bytes`.
    pub max_ratio: Option<u64>,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_ratio: None,
        }
    }
}

impl UnpackLimits {
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }
    pub fn with_max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }
    pub fn with_max_ratio(mut self, max_ratio: Option<u64>) -> Self {
        self.max_ratio = max_ratio;
        self
    }
}

/// An archive format, as recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArchiveFormat {
    Tar,
    TarGz,
    TarBz2,
    TarXz,
    TarZst,
    Zip,
}

impl ArchiveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ArchiveFormat::Tar => "tar",
            ArchiveFormat::TarGz => "tar.gz",
            ArchiveFormat::TarBz2 => "tar.bz2",
            ArchiveFormat::TarXz => "tar.xz",
            ArchiveFormat::TarZst => "tar.zst",
            ArchiveFormat::Zip => "zip",
        }
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in the archive an entry sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Byte offset of the entry's header in the (decompressed) tar stream.
    Tar { offset: u64 },
    /// Index in the zip central directory and offset of the local header.
    Zip { index: usize, offset: u64 },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Tar { offset } => write!(f, "tar header at byte {offset}"),
            Position::Zip { index, offset } => write!(f, "zip entry #{index} at byte {offset}"),
        }
    }
}

/// Why an entry is unsafe to unpack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnsafeReason {
    #[error("absolute path")]
    Absolute,
    #[error("`..` component")]
    ParentDir,
    #[error("NUL in the name")]
    Nul,
    #[error("bad name component: {0}")]
    BadName(NameError),
    #[error("a non-directory entry names the archive root")]
    NamesRoot,
    #[error("path runs through the symlink {0:?}")]
    ThroughSymlink(String),
    #[error("path runs through the non-directory {0:?}")]
    ThroughNonDirectory(String),
    #[error("would replace the non-empty directory of the same name")]
    ReplacesDirectory,
    #[error("symlink target {0:?} is absolute")]
    SymlinkAbsolute(String),
    #[error("symlink target {0:?} leaves the tree")]
    SymlinkEscapes(String),
    #[error("symlink target {0:?} climbs with `..` after a normal component")]
    SymlinkClimbsLate(String),
    #[error("bad symlink target: {0}")]
    BadTarget(&'static str),
    #[error("hardlink target {0:?} is not inside the tree: {1}")]
    HardlinkOutside(String, Box<UnsafeReason>),
    #[error("hardlink target {0:?} was not extracted before it")]
    HardlinkMissing(String),
    #[error("hardlink target {0:?} is a directory")]
    HardlinkToDirectory(String),
    #[error("{0} entries are not allowed")]
    Special(&'static str),
}

/// Which cap an archive went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    Bytes,
    Entries,
    Ratio,
    HeaderBytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Bytes => "unpacked bytes",
            Limit::Entries => "entries",
            Limit::Ratio => "expansion ratio",
            Limit::HeaderBytes => "tar metadata bytes between two entries",
        })
    }
}

/// Why an archive could not be unpacked. The destination has been removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    #[error("unsafe archive entry {entry:?} ({at}): {why}")]
    Unsafe {
        entry: String,
        at: Position,
        why: UnsafeReason,
    },
    #[error("archive too large: {what} over the limit of {limit}{}", describe(.entry, .at))]
    TooLarge {
        what: Limit,
        limit: u64,
        entry: Option<String>,
        at: Option<Position>,
    },
    #[error("unsupported archive: {what}{}", describe(.entry, .at))]
    Unsupported {
        what: String,
        entry: Option<String>,
        at: Option<Position>,
    },
    #[error("corrupt {format} archive{}: {source}", describe(&None, .at))]
    Corrupt {
        format: ArchiveFormat,
        at: Option<Position>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{} already exists; unpack creates its destination", .0.display())]
    Exists(PathBuf),
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn describe(entry: &Option<String>, at: &Option<Position>) -> String {
    match (entry, at) {
        (Some(entry), Some(at)) => format!(" (entry {entry:?}, {at})"),
        (Some(entry), None) => format!(" (entry {entry:?})"),
        (None, Some(at)) => format!(" ({at})"),
        (None, None) => String::new(),
    }
}

impl UnpackError {
    /// The archive holds an entry that could write outside the tree or is
    /// not a file, directory or symlink.
    pub fn is_unsafe(&self) -> bool {
        matches!(self, UnpackError::Unsafe { .. })
    }

    /// The archive went over one of the [`UnpackLimits`].
    pub fn is_too_large(&self) -> bool {
        matches!(self, UnpackError::TooLarge { .. })
    }

    /// The failure reason as `ipnix sources status` reports it.
    pub fn reason(&self) -> &'static str {
        match self {
            UnpackError::Unsafe { .. } => "unsafe-archive",
            UnpackError::TooLarge { .. } => "too-large",
            UnpackError::Unsupported { .. } => "unsupported",
            UnpackError::Corrupt { .. } => "corrupt",
            UnpackError::Exists(_) | UnpackError::Io { .. } => "io",
        }
    }
}

/// What [`unpack`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    /// The tree to hash: the destination, or its only entry when that is a
    /// directory (fetchzip's `stripRoot`).
    pub root: PathBuf,
    /// Regular files written (hardlink copies included).
    pub files: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    pub format: ArchiveFormat,
}

/// Recognises the archive format of the file at `path` from its first bytes.
pub fn detect(path: &Path) -> Result<ArchiveFormat, UnpackError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let head = read_head(&mut file).map_err(io_error(path))?;
    detect_bytes(&head).ok_or_else(|| unrecognised(&head))
}

/// Recognises an archive format from the first bytes (up to 512) of a file.
pub fn detect_bytes(head: &[u8]) -> Option<ArchiveFormat> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveFormat::TarGz)
    } else if head.starts_with(b"BZh") {
        Some(ArchiveFormat::TarBz2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(ArchiveFormat::TarXz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(ArchiveFormat::TarZst)
    } else if head.starts_with(b"PK\x03\x04")
        || head.starts_with(b"PK\x05\x06")
        || head.starts_with(b"PK\x07\x08")
    {
        Some(ArchiveFormat::Zip)
    } else if looks_like_tar(head) {
        Some(ArchiveFormat::Tar)
    } else {
        None
    }
}

/// A ustar/GNU magic, or an old (v7) header whose checksum is right, or
/// the all-zero end-of-archive block of an empty tar.
fn looks_like_tar(head: &[u8]) -> bool {
    if head.len() < 512 {
        return false;
    }
    let block = &head[..512];
    if &block[257..262] == b"ustar" || block.iter().all(|&b| b == 0) {
        return true;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(text) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(recorded) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == recorded
}

fn unrecognised(head: &[u8]) -> UnpackError {
    let shown: String = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    UnpackError::Unsupported {
        what: format!(
            "not a tar, tar.gz, tar.bz2, tar.xz, tar.zst or zip archive (starts with {shown})"
        ),
        entry: None,
        at: None,
    }
}

fn read_head<R: Read>(input: &mut R) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; SNIFF_LEN];
    let mut filled = 0;
    while filled < head.len() {
        match input.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok(head)
}

/// Unpacks the archive at `archive` into `dest`, which must not exist (its
/// parent must). The format comes from the archive's first bytes, not its name.
pub fn unpack(archive: &Path, dest: &Path, limits: &UnpackLimits) -> Result<Unpacked, UnpackError> {
    let file = File::open(archive).map_err(io_error(archive))?;
    unpack_from(file, dest, limits)
}

/// [`unpack`] from any seekable input (zip needs to seek to its central
/// directory); the input's length feeds the ratio check.
pub fn unpack_from<R: Read + Seek>(
    mut input: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<Unpacked, UnpackError> {
    let input_error = |source| UnpackError::Io {
        path: PathBuf::from("<archive>"),
        source,
    };
    let head = read_head(&mut input).map_err(input_error)?;
    let format = detect_bytes(&head).ok_or_else(|| unrecognised(&head))?;
    let len = input.seek(SeekFrom::End(0)).map_err(input_error)?;
    input.seek(SeekFrom::Start(0)).map_err(input_error)?;
    with_destination(dest, limits, Some(len), format, |ex| match format {
        ArchiveFormat::Zip => unpack_zip(input, ex),
        _ => unpack_tar(decoder(format, input), format, ex),
    })
}

/// Unpacks a tar stream of a known format (not zip, which needs to seek)
/// straight from `input`, say a download, without a temporary file.
pub fn unpack_stream<R: Read>(
    format: ArchiveFormat,
    input: R,
    dest: &Path,
    limits: &UnpackLimits,
) -> Result<Unpacked, UnpackError> {
    if format == ArchiveFormat::Zip {
        return Err(UnpackError::Unsupported {
            what: "zip cannot be unpacked from a stream; use unpack_from".into(),
            entry: None,
            at: None,
        });
    }
    with_destination(dest, limits, None, format, |ex| {
        unpack_tar(decoder(format, input), format, ex)
    })
}

/// The decompressed tar stream for `format`. Each decoder reads
/// concatenated members/streams/frames, as the command-line tools do.
fn decoder<'a, R: Read + 'a>(
    format: ArchiveFormat,
    input: R,
) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let buffered = BufReader::with_capacity(COPY_BUFFER, input);
    Ok(match format {
        ArchiveFormat::Tar | ArchiveFormat::Zip => Box::new(buffered),
        ArchiveFormat::TarGz => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        ArchiveFormat::TarBz2 => Box::new(bzip2::read::MultiBzDecoder::new(buffered)),
        ArchiveFormat::TarXz => Box::new(xz2::read::XzDecoder::new_multi_decoder(buffered)),
        ArchiveFormat::TarZst => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered).map_err(|source| {
                UnpackError::Corrupt {
                    format,
                    at: None,
                    source: Box::new(source),
                }
            })?,
        ),
    })
}

/// Creates `dest`, runs `body`, finds the root; removes `dest` on error.
fn with_destination(
    dest: &Path,
    limits: &UnpackLimits,
    archive_len: Option<u64>,
    format: ArchiveFormat,
    body: impl FnOnce(&mut Extractor<'_>) -> Result<(), UnpackError>,
) -> Result<Unpacked, UnpackError> {
    match fs::symlink_metadata(dest) {
        Ok(_) => return Err(UnpackError::Exists(dest.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(dest)(e)),
    }
    fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(dest)
        .map_err(io_error(dest))?;
    let mut ex = Extractor {
        dest,
        limits,
        archive_len,
        files: 0,
        bytes: 0,
        entries: 0,
        buf: vec![0u8; COPY_BUFFER],
        verified: Vec::new(),
    };
    let result = body(&mut ex).and_then(|()| {
        Ok(Unpacked {
            root: single_top_directory(dest)?,
            files: ex.files,
            bytes: ex.bytes,
            format,
        })
    });
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(dest) {
            tracing::warn!(path = %dest.display(), error = %e, "could not remove a partial unpack");
        }
    }
    result
}

fn single_top_directory(dest: &Path) -> Result<PathBuf, UnpackError> {
    let mut entries = fs::read_dir(dest).map_err(io_error(dest))?;
    let Some(first) = entries.next() else {
        return Ok(dest.to_owned());
    };
    let first = first.map_err(io_error(dest))?;
    if entries.next().is_some() {
        return Ok(dest.to_owned());
    }
    let path = first.path();
    let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
    Ok(if meta.is_dir() { path } else { dest.to_owned() })
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One archive entry, format-neutral.
enum Node {
    Directory,
    File { executable: bool, size: u64 },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
}

/// Writes entries under `dest` and enforces the rules and limits.
struct Extractor<'a> {
    dest: &'a Path,
    limits: &'a UnpackLimits,
    archive_len: Option<u64>,
    files: u64,
    bytes: u64,
    entries: u64,
    buf: Vec<u8>,
    /// Components of the last directory checked to be a chain of real
    /// directories under `dest` (saves `lstat`s for consecutive entries).
    verified: Vec<Vec<u8>>,
}

/// A failure while copying file contents: the archive side is corruption,
/// the disk side is I/O, the limits are `too-large`.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Limit(Limit, u64),
}

impl Extractor<'_> {
    /// Counts an entry against the entry cap.
    fn count_entry(&mut self, name: &[u8], at: Position) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::TooLarge {
                what: Limit::Entries,
                limit: self.limits.max_entries,
                entry: Some(lossy(name)),
                at: Some(at),
            });
        }
        Ok(())
    }

    fn charge(&mut self, n: u64) -> Result<(), CopyError> {
        self.bytes += n;
        if self.bytes > self.limits.max_bytes {
            return Err(CopyError::Limit(Limit::Bytes, self.limits.max_bytes));
        }
        if let (Some(ratio), Some(len)) = (self.limits.max_ratio, self.archive_len) {
            if self.bytes > RATIO_FLOOR && self.bytes > len.max(1).saturating_mul(ratio) {
                return Err(CopyError::Limit(Limit::Ratio, ratio));
            }
        }
        Ok(())
    }

    /// Copies `data` into `out`, charging every byte.
    fn copy(&mut self, data: &mut dyn Read, out: &mut dyn Write) -> Result<(), CopyError> {
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| loop {
            let n = match data.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            self.charge(n as u64)?;
            out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        })();
        self.buf = buf;
        result
    }

    /// Unpacks one entry; `data` holds a file's contents (or a zip symlink's
    /// target, already taken out by the caller).
    fn entry(
        &mut self,
        name: &[u8],
        at: Position,
        format: ArchiveFormat,
        node: Node,
        data: &mut dyn Read,
    ) -> Result<(), UnpackError> {
        let unsafe_entry = |why| UnpackError::Unsafe {
            entry: lossy(name),
            at,
            why,
        };
        let components = split_name(name).map_err(unsafe_entry)?;
        if components.len() > MAX_DEPTH {
            // A NAR (and Nix) cannot hold it; refused before any mkdir.
            return Err(UnpackError::Unsupported {
                what: format!("path nested deeper than {MAX_DEPTH} directories"),
                entry: Some(lossy(name)),
                at: Some(at),
            });
        }
        let Some((last, parents)) = components.split_last() else {
            return match node {
                Node::Directory => Ok(()),
                _ => Err(unsafe_entry(UnsafeReason::NamesRoot)),
            };
        };
        let dir = self.ensure_parents(parents).map_err(unsafe_entry)?;
        let path = dir.join(std::ffi::OsStr::from_bytes(last));

        // A hardlink's source is opened before anything at `path` is
        // replaced, so a link to itself copies the old contents.
        let source = match &node {
            Node::Hardlink(target) => Some(self.hardlink_source(target).map_err(unsafe_entry)?),
            _ => None,
        };
        if let Node::Symlink(target) = &node {
            check_symlink(target, parents.len()).map_err(unsafe_entry)?;
        }

        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path)(e)),
            Ok(meta) if meta.is_dir() => {
                if matches!(node, Node::Directory) {
                    return Ok(());
                }
                match fs::remove_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                        return Err(unsafe_entry(UnsafeReason::ReplacesDirectory))
                    }
                    Err(e) => return Err(io_error(&path)(e)),
                }
                self.verified.clear();
            }
            Ok(_) => {
                // Last entry wins, as in GNU tar.
                fs::remove_file(&path).map_err(io_error(&path))?;
                self.verified.clear();
            }
        }

        match node {
            Node::Directory => fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(&path)
                .map_err(io_error(&path)),
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(io_error(&path))
            }
            Node::File { executable, size } => {
                if self.bytes.saturating_add(size) > self.limits.max_bytes {
                    return Err(UnpackError::TooLarge {
                        what: Limit::Bytes,
                        limit: self.limits.max_bytes,
                        entry: Some(lossy(name)),
                        at: Some(at),
                    });
                }
                let mut file = create_file(&path, executable)?;
                self.files += 1;
                self.copy(data, &mut file)
                    .map_err(|e| copy_error(e, name, &path, at, format))
            }
            Node::Hardlink(_) => match source.expect("a hardlink has a source") {
                LinkSource::File(mut from, executable) => {
                    let mut file = create_file(&path, executable)?;
                    self.files += 1;
                    self.copy(&mut from, &mut file).map_err(|e| match e {
                        // Reading our own earlier file is disk I/O, not corruption.
                        CopyError::Read(source) => UnpackError::Io {
                            path: path.clone(),
                            source,
                        },
                        e => copy_error(e, name, &path, at, format),
                    })
                }
                LinkSource::Symlink(target) => {
                    check_symlink(&target, parents.len()).map_err(unsafe_entry)?;
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                        .map_err(io_error(&path))
                }
            },
        }
    }

    /// Makes sure every directory in `parents` exists as a real directory
    /// (created if missing, never a symlink) and returns its path.
    fn ensure_parents(&mut self, parents: &[Vec<u8>]) -> Result<PathBuf, UnsafeReason> {
        let mut dir = self.dest.to_path_buf();
        let known = self
            .verified
            .iter()
            .zip(parents)
            .take_while(|(a, b)| a == b)
            .count();
        for (i, component) in parents.iter().enumerate() {
            dir.push(std::ffi::OsStr::from_bytes(component));
            if i < known {
                continue;
            }
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(UnsafeReason::ThroughSymlink(lossy(
                        &parents[..=i].join(&b'/'),
                    )))
                }
                Ok(_) => {
                    return Err(UnsafeReason::ThroughNonDirectory(lossy(
                        &parents[..=i].join(&b'/'),
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // mkdir never follows a symlink at the last component.
                    fs::DirBuilder::new()
                        .mode(DIR_MODE)
                        .create(&dir)
                        .map_err(|_| {
                            UnsafeReason::ThroughNonDirectory(lossy(&parents[..=i].join(&b'/')))
                        })?;
                }
                Err(_) => {
                    return Err(UnsafeReason::ThroughNonDirectory(lossy(
                        &parents[..=i].join(&b'/'),
                    )))
                }
            }
        }
        self.verified = parents.to_vec();
        Ok(dir)
    }

    /// Opens what a hardlink entry points at: an earlier regular file or
    /// symlink inside the tree, reached through real directories only.
    fn hardlink_source(&self, target: &[u8]) -> Result<LinkSource, UnsafeReason> {
        let shown = lossy(target);
        let outside = |why| UnsafeReason::HardlinkOutside(shown.clone(), Box::new(why));
        let components = split_name(target).map_err(outside)?;
        if components.is_empty() {
            return Err(UnsafeReason::HardlinkToDirectory(shown));
        }
        let mut path = self.dest.to_path_buf();
        let (last, parents) = components.split_last().expect("not empty");
        for (i, component) in parents.iter().enumerate() {
            path.push(std::ffi::OsStr::from_bytes(component));
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(outside(UnsafeReason::ThroughSymlink(lossy(
                        &parents[..=i].join(&b'/'),
                    ))))
                }
                _ => return Err(UnsafeReason::HardlinkMissing(shown)),
            }
        }
        path.push(std::ffi::OsStr::from_bytes(last));
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(_) => return Err(UnsafeReason::HardlinkMissing(shown)),
        };
        if meta.is_dir() {
            Err(UnsafeReason::HardlinkToDirectory(shown))
        } else if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&path).map_err(|_| UnsafeReason::HardlinkMissing(shown.clone()))?;
            Ok(LinkSource::Symlink(target.as_os_str().as_bytes().to_vec()))
        } else if meta.is_file() {
            let file = fs::OpenOptions::new()
                .read(true)
                .open(&path)
                .map_err(|_| UnsafeReason::HardlinkMissing(shown.clone()))?;
            // The path was checked not to be a symlink; make sure the file
            // opened is the one checked.
            match file.metadata() {
                Ok(opened) if opened.ino() == meta.ino() && opened.dev() == meta.dev() => {}
                _ => return Err(UnsafeReason::HardlinkMissing(shown)),
            }
            Ok(LinkSource::File(file, meta.mode() & OWNER_EXECUTE != 0))
        } else {
            Err(UnsafeReason::HardlinkMissing(shown))
        }
    }
}

fn copy_error(
    e: CopyError,
    name: &[u8],
    path: &Path,
    at: Position,
    format: ArchiveFormat,
) -> UnpackError {
    match e {
        CopyError::Read(source) => UnpackError::Corrupt {
            format,
            at: Some(at),
            source: Box::new(source),
        },
        CopyError::Write(source) => UnpackError::Io {
            path: path.to_owned(),
            source,
        },
        CopyError::Limit(what, limit) => UnpackError::TooLarge {
            what,
            limit,
            entry: Some(lossy(name)),
            at: Some(at),
        },
    }
}

enum LinkSource {
    File(File, bool),
    Symlink(Vec<u8>),
}

fn create_file(path: &Path, executable: bool) -> Result<File, UnpackError> {
    let mode = if executable { EXEC_MODE } else { FILE_MODE };
    // create_new = O_CREAT|O_EXCL: never opens an existing file or follows a symlink.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error(path))?;
    // The umask may have cleared bits of `mode`.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error(path))?;
    Ok(file)
}

/// Splits an archive path into checked components; `.` and empty ones
/// (leading `./`, trailing or doubled `/`) are dropped.
pub(crate) fn split_name(name: &[u8]) -> Result<Vec<Vec<u8>>, UnsafeReason> {
    if name.contains(&0) {
        return Err(UnsafeReason::Nul);
    }
    if name.starts_with(b"/") {
        return Err(UnsafeReason::Absolute);
    }
    let mut components = Vec::new();
    for component in name.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(UnsafeReason::ParentDir),
            _ => {
                check_name(component).map_err(UnsafeReason::BadName)?;
                components.push(component.to_vec());
            }
        }
    }
    Ok(components)
}

/// A symlink at depth `depth` (number of directories between the tree root
/// and the link) may point at `target` if it cannot leave the tree however
/// the components it passes resolve: `..` only at the start, at most
/// `depth` of them.
pub(crate) fn check_symlink(target: &[u8], depth: usize) -> Result<(), UnsafeReason> {
    check_target(target).map_err(UnsafeReason::BadTarget)?;
    let shown = || lossy(target);
    if target.starts_with(b"/") {
        return Err(UnsafeReason::SymlinkAbsolute(shown()));
    }
    let mut climbed = 0usize;
    let mut descended = false;
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." if descended => return Err(UnsafeReason::SymlinkClimbsLate(shown())),
            b".." => {
                climbed += 1;
                if climbed > depth {
                    return Err(UnsafeReason::SymlinkEscapes(shown()));
                }
            }
            _ => descended = true,
        }
    }
    Ok(())
}

/// Shared between the tar reader's input and the entry loop: counts what
/// the tar crate reads between entries (headers, long names, pax records,
/// which it holds in memory) so a hostile header cannot grow unbounded.
#[derive(Debug, Default)]
struct Meter {
    /// The entry loop is copying entry data (counted by the byte cap).
    in_data: Cell<bool>,
    /// Metadata bytes read since the last entry was handed out.
    header_bytes: Cell<u64>,
    tripped: Cell<bool>,
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.meter.in_data.get() && self.meter.header_bytes.get() >= MAX_HEADER_BYTES {
            self.meter.tripped.set(true);
            return Err(io::Error::other("tar metadata over the cap"));
        }
        let n = self.inner.read(buf)?;
        if !self.meter.in_data.get() {
            self.meter
                .header_bytes
                .set(self.meter.header_bytes.get() + n as u64);
        }
        Ok(n)
    }
}

fn unpack_tar(
    input: Result<Box<dyn Read + '_>, UnpackError>,
    format: ArchiveFormat,
    ex: &mut Extractor<'_>,
) -> Result<(), UnpackError> {
    let meter = Rc::new(Meter::default());
    let mut archive = tar::Archive::new(Metered {
        inner: input?,
        meter: Rc::clone(&meter),
    });
    let corrupt = |at: Option<Position>, source: io::Error| {
        if meter.tripped.get() {
            UnpackError::TooLarge {
                what: Limit::HeaderBytes,
                limit: MAX_HEADER_BYTES,
                entry: None,
                at,
            }
        } else {
            UnpackError::Corrupt {
                format,
                at,
                source: Box::new(source),
            }
        }
    };
    let entries = archive.entries().map_err(|e| corrupt(None, e))?;
    let mut last_at = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| corrupt(last_at, e))?;
        meter.header_bytes.set(0);
        let at = Position::Tar {
            offset: entry.raw_header_position(),
        };
        last_at = Some(at);
        let name = entry.path_bytes().into_owned();
        ex.count_entry(&name, at)?;
        let header = entry.header();
        let kind = header.entry_type();
        let unsafe_entry = |why| UnpackError::Unsafe {
            entry: lossy(&name),
            at,
            why,
        };
        let link = || -> Result<Vec<u8>, UnpackError> {
            entry
                .link_name_bytes()
                .map(|l| l.into_owned())
                .ok_or_else(|| unsafe_entry(UnsafeReason::BadTarget("link entry without a target")))
        };
        use tar::EntryType as T;
        let node = match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                let mode = header.mode().map_err(|e| corrupt(Some(at), e))?;
                Node::File {
                    executable: mode & OWNER_EXECUTE != 0,
                    size: entry.size(),
                }
            }
            T::Directory => Node::Directory,
            T::Symlink => Node::Symlink(link()?),
            T::Link => Node::Hardlink(link()?),
            T::Char => return Err(unsafe_entry(UnsafeReason::Special("character device"))),
            T::Block => return Err(unsafe_entry(UnsafeReason::Special("block device"))),
            T::Fifo => return Err(unsafe_entry(UnsafeReason::Special("FIFO"))),
            T::XGlobalHeader => {
                // Global pax records (git archive's commit id) describe no file.
                meter.in_data.set(true);
                let drained = io::copy(&mut (&mut entry).take(MAX_HEADER_BYTES), &mut io::sink());
                meter.in_data.set(false);
                drained.map_err(|e| corrupt(Some(at), e))?;
                if entry.size() > MAX_HEADER_BYTES {
                    return Err(UnpackError::TooLarge {
                        what: Limit::HeaderBytes,
                        limit: MAX_HEADER_BYTES,
                        entry: Some(lossy(&name)),
                        at: Some(at),
                    });
                }
                continue;
            }
            other => {
                return Err(UnpackError::Unsupported {
                    what: format!("tar entry type {:?}", other.as_byte() as char),
                    entry: Some(lossy(&name)),
                    at: Some(at),
                })
            }
        };
        meter.in_data.set(true);
        let is_file = matches!(node, Node::File { .. });
        let result = ex.entry(&name, at, format, node, &mut entry);
        // Whatever data a non-file entry carries still counts, and is read
        // here so the tar crate skips nothing unmetered.
        let drained = if is_file {
            Ok(())
        } else {
            let mut sink = io::sink();
            ex.copy(&mut entry, &mut sink)
                .map_err(|e| copy_error(e, &name, ex.dest, at, format))
        };
        meter.in_data.set(false);
        result?;
        drained?;
    }
    Ok(())
}

fn unpack_zip<R: Read + Seek>(input: R, ex: &mut Extractor<'_>) -> Result<(), UnpackError> {
    let format = ArchiveFormat::Zip;
    let zip_error = |at: Option<Position>, name: Option<&[u8]>, e: zip::result::ZipError| match e {
        zip::result::ZipError::UnsupportedArchive(what) => UnpackError::Unsupported {
            what: what.to_owned(),
            entry: name.map(lossy),
            at,
        },
        e => UnpackError::Corrupt {
            format,
            at,
            source: Box::new(e),
        },
    };
    let mut archive = zip::ZipArchive::new(BufReader::with_capacity(COPY_BUFFER, input))
        .map_err(|e| zip_error(None, None, e))?;
    if archive.len() as u64 > ex.limits.max_entries {
        return Err(UnpackError::TooLarge {
            what: Limit::Entries,
            limit: ex.limits.max_entries,
            entry: None,
            at: None,
        });
    }
    for index in 0..archive.len() {
        let mut file = archive
            .by_index(index)
            .map_err(|e| zip_error(Some(Position::Zip { index, offset: 0 }), None, e))?;
        let at = Position::Zip {
            index,
            offset: file.header_start(),
        };
        let name = file.name_raw().to_vec();
        ex.count_entry(&name, at)?;
        if file.encrypted() {
            return Err(UnpackError::Unsupported {
                what: "encrypted zip entry".into(),
                entry: Some(lossy(&name)),
                at: Some(at),
            });
        }
        let unsafe_entry = |why| UnpackError::Unsafe {
            entry: lossy(&name),
            at,
            why,
        };
        let mode = file.unix_mode().unwrap_or(0);
        let node = match mode & 0o170000 {
            _ if file.is_dir() => Node::Directory,
            0o040000 => Node::Directory,
            0o120000 => {
                let mut target = Vec::new();
                (&mut file)
                    .take(MAX_TARGET_LEN as u64 + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| UnpackError::Corrupt {
                        format,
                        at: Some(at),
                        source: Box::new(e),
                    })?;
                Node::Symlink(target)
            }
            0 | 0o100000 => Node::File {
                executable: mode & OWNER_EXECUTE != 0,
                size: file.size(),
            },
            0o020000 => return Err(unsafe_entry(UnsafeReason::Special("character device"))),
            0o060000 => return Err(unsafe_entry(UnsafeReason::Special("block device"))),
            0o010000 => return Err(unsafe_entry(UnsafeReason::Special("FIFO"))),
            0o140000 => return Err(unsafe_entry(UnsafeReason::Special("socket"))),
            other => {
                return Err(UnpackError::Unsupported {
                    what: format!("zip entry with unix file type {other:o}"),
                    entry: Some(lossy(&name)),
                    at: Some(at),
                })
            }
        };
        let is_file = matches!(node, Node::File { .. });
        ex.entry(&name, at, format, node, &mut file)?;
        if !is_file {
            let mut sink = io::sink();
            ex.copy(&mut file, &mut sink)
                .map_err(|e| copy_error(e, &name, ex.dest, at, format))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_split_and_checked() {
        assert_eq!(
            split_name(b"./a//b/./c/").expect("fine"),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(split_name(b"a/../b"), Err(UnsafeReason::ParentDir));
        assert_eq!(split_name(b"/etc/passwd"), Err(UnsafeReason::Absolute));
        assert_eq!(split_name(b"a\0b"), Err(UnsafeReason::Nul));
        assert!(split_name(b"./").expect("root").is_empty());
    }

    #[test]
    fn symlink_targets_stay_inside() {
        assert!(check_symlink(b"x", 0).is_ok());
        assert!(check_symlink(b"./x/y", 0).is_ok());
        assert!(check_symlink(b"../x", 1).is_ok());
        assert!(check_symlink(b"../../x", 2).is_ok());
        assert!(matches!(
            check_symlink(b"../x", 0),
            Err(UnsafeReason::SymlinkEscapes(_))
        ));
        assert!(matches!(
            check_symlink(b"/etc", 3),
            Err(UnsafeReason::SymlinkAbsolute(_))
        ));
        assert!(matches!(
            check_symlink(b"a/../..", 3),
            Err(UnsafeReason::SymlinkClimbsLate(_))
        ));
        assert!(matches!(
            check_symlink(b"", 3),
            Err(UnsafeReason::BadTarget(_))
        ));
    }

    #[test]
    fn formats_from_magic() {
        assert_eq!(
            detect_bytes(&[0x1f, 0x8b, 8, 0]),
            Some(ArchiveFormat::TarGz)
        );
        assert_eq!(detect_bytes(b"BZh91AY"), Some(ArchiveFormat::TarBz2));
        assert_eq!(detect_bytes(b"PK\x03\x04rest"), Some(ArchiveFormat::Zip));
        assert_eq!(detect_bytes(&[0u8; 512]), Some(ArchiveFormat::Tar));
        assert_eq!(detect_bytes(b"hello world"), None);
    }
}
