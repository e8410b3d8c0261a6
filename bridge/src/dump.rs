//! Path on disk -> NAR: serialises a regular file, symlink or directory tree
//! exactly as `nix-store --dump` does (entries in byte order of their names,
//! `executable` iff the owner-execute bit is set, symlink targets verbatim,
//! symlinks never followed), streaming each file through a fixed buffer so
//! memory stays bounded by one directory listing per open directory.
//! Sockets, FIFOs and devices are refused, as Nix refuses them.

use crate::nar::{check_name, check_target, NameError, NarError, NarSummary, NarWriter, MAX_DEPTH};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The owner-execute bit (`S_IXUSR`): the only permission a NAR keeps.
const OWNER_EXECUTE: u32 = 0o100;
/// Read buffer for file contents.
const COPY_BUFFER: usize = 64 * 1024;

/// Why a path could not be serialised. The sink has received a prefix of
/// the NAR at most; the caller must discard it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is a {kind}; a NAR holds only regular files, symlinks and directories", path.display())]
    UnsupportedType { path: PathBuf, kind: &'static str },
    #[error("{}: name not allowed in a NAR: {reason}", path.display())]
    BadName { path: PathBuf, reason: NameError },
    #[error("{}: symlink target not allowed in a NAR: {reason}", path.display())]
    BadTarget { path: PathBuf, reason: &'static str },
    #[error("{}: directories nested deeper than {MAX_DEPTH}", path.display())]
    TooDeep { path: PathBuf },
    #[error("{} changed while it was being read ({what})", path.display())]
    Changed { path: PathBuf, what: &'static str },
    #[error("writing the NAR: {0}")]
    Nar(#[from] NarError),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DumpError + '_ {
    move |source| DumpError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Serialises `path` (not followed if it is a symlink) as a NAR into `out`
/// and returns the NAR's SHA-256 and size; the same bytes as
/// `nix-store --dump path`.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<NarSummary, DumpError> {
    let mut nar = NarWriter::new(out)?;
    let mut buf = vec![0u8; COPY_BUFFER];
    let meta = fs::symlink_metadata(path).map_err(io_error(path))?;
    dump_node(path, &meta, &mut nar, &mut buf, 0)?;
    let (_, summary) = nar.finish()?;
    Ok(summary)
}

fn dump_node<W: Write>(
    path: &Path,
    meta: &Metadata,
    nar: &mut NarWriter<W>,
    buf: &mut [u8],
    depth: usize,
) -> Result<(), DumpError> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path).map_err(io_error(path))?;
        let target = target.as_os_str().as_bytes();
        check_target(target).map_err(|reason| DumpError::BadTarget {
            path: path.to_owned(),
            reason,
        })?;
        nar.symlink(target)?;
        Ok(())
    } else if kind.is_file() {
        dump_file(path, meta, nar, buf)
    } else if kind.is_dir() {
        if depth >= MAX_DEPTH {
            return Err(DumpError::TooDeep {
                path: path.to_owned(),
            });
        }
        // One directory's names at a time: NAR order needs them sorted.
        let mut names = Vec::new();
        for entry in fs::read_dir(path).map_err(io_error(path))? {
            let entry = entry.map_err(io_error(path))?;
            names.push(entry.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        nar.start_directory()?;
        for name in names {
            let child = path.join(&name);
            check_name(name.as_bytes()).map_err(|reason| DumpError::BadName {
                path: child.clone(),
                reason,
            })?;
            let child_meta = fs::symlink_metadata(&child).map_err(io_error(&child))?;
            nar.entry(name.as_bytes())?;
            dump_node(&child, &child_meta, nar, buf, depth + 1)?;
        }
        nar.end_directory()?;
        Ok(())
    } else {
        Err(DumpError::UnsupportedType {
            path: path.to_owned(),
            kind: type_name(meta),
        })
    }
}

fn dump_file<W: Write>(
    path: &Path,
    meta: &Metadata,
    nar: &mut NarWriter<W>,
    buf: &mut [u8],
) -> Result<(), DumpError> {
    let mut file = File::open(path).map_err(io_error(path))?;
    // The path may have been swapped (for a symlink, say) since it was
    // listed: the opened file must be the one we looked at.
    let opened = file.metadata().map_err(io_error(path))?;
    if opened.dev() != meta.dev() || opened.ino() != meta.ino() || !opened.is_file() {
        return Err(DumpError::Changed {
            path: path.to_owned(),
            what: "replaced by another file",
        });
    }
    let size = opened.len();
    let executable = opened.permissions().mode() & OWNER_EXECUTE != 0;
    nar.file(executable, size)?;
    let mut remaining = size;
    while remaining > 0 {
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(DumpError::Changed {
                    path: path.to_owned(),
                    what: "shrank",
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(path)(e)),
        };
        nar.file_data(&buf[..n])?;
        remaining -= n as u64;
    }
    let mut probe = [0u8; 1];
    match file.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(DumpError::Changed {
            path: path.to_owned(),
            what: "grew",
        }),
        Err(e) => Err(io_error(path)(e)),
    }
}

fn type_name(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_socket() {
        "socket"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else {
        "file of unknown type"
    }
}
