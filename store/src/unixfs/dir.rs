//! Adding a path: a file, a symlink, or a directory tree walked without
//! recursion. Directories become UnixFS Directory nodes with links sorted by
//! name, or HAMT shards once their entries reach Kubo's sharding threshold;
//! symlinks become UnixFS Symlink nodes (never followed, also at the root).
//! Hidden files are included, like Kubo's `AddFile` does for a path.

use super::file::add_file;
use super::hamt::{self, Entry};
use super::pb::{encode_node, DataType, UnixfsData};
use super::{check_entry_name, dag_pb_cid, Added, Params, UnixfsError};
use crate::BlockWrite;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Kubo 0.22's `Internal.UnixFSShardingSizeThreshold` (256 KiB): a directory
/// whose entries' `len(name) + len(cid bytes)` add up to at least this many
/// bytes is written as a HAMT shard instead of one Directory node.
pub const HAMT_SHARDING_THRESHOLD: usize = 256 * 1024;

/// A directory being walked: its remaining entries and the finished ones.
struct Frame {
    /// Name in the parent directory (unused for the root).
    name: String,
    dir: PathBuf,
    /// Entry names not yet added, sorted in reverse so `pop` yields them in order.
    pending: Vec<String>,
    done: Vec<Entry>,
    size: u64,
}

impl Frame {
    fn open(dir: PathBuf, name: String) -> Result<Self, UnixfsError> {
        let mut pending = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| UnixfsError::io(&dir, e))? {
            let entry = entry.map_err(|e| UnixfsError::io(&dir, e))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| UnixfsError::NonUtf8Name(entry.path()))?;
            check_entry_name(&name)?;
            pending.push(name);
        }
        pending.sort_unstable_by(|a, b| b.cmp(a));
        Ok(Frame {
            name,
            dir,
            pending,
            done: Vec::new(),
            size: 0,
        })
    }
}

/// Adds a file, a symlink or a whole directory tree at `path`.
pub fn add_path<W: BlockWrite>(
    w: &mut W,
    path: &Path,
    params: &Params,
) -> Result<Added, UnixfsError> {
    params.check()?;
    let meta = fs::symlink_metadata(path).map_err(|e| UnixfsError::io(path, e))?;
    if !meta.is_dir() {
        return add_non_dir(w, path, &meta, params);
    }
    let mut stack = vec![Frame::open(path.to_path_buf(), String::new())?];
    loop {
        let top = stack
            .last_mut()
            .expect("the walk ends when the root frame is popped");
        if let Some(name) = top.pending.pop() {
            let child = top.dir.join(&name);
            let meta = fs::symlink_metadata(&child).map_err(|e| UnixfsError::io(&child, e))?;
            if meta.is_dir() {
                stack.push(Frame::open(child, name)?);
            } else {
                let added = add_non_dir(w, &child, &meta, params)?;
                top.size += added.size;
                top.done.push(Entry {
                    name,
                    cid: added.cid,
                    tsize: added.tsize,
                });
            }
            continue;
        }
        let frame = stack.pop().expect("top exists");
        let added = write_directory(w, frame.done, frame.size, params)?;
        match stack.last_mut() {
            None => return Ok(added),
            Some(parent) => {
                parent.size += added.size;
                parent.done.push(Entry {
                    name: frame.name,
                    cid: added.cid,
                    tsize: added.tsize,
                });
            }
        }
    }
}

fn add_non_dir<W: BlockWrite>(
    w: &mut W,
    path: &Path,
    meta: &fs::Metadata,
    params: &Params,
) -> Result<Added, UnixfsError> {
    if meta.is_file() {
        let file = File::open(path).map_err(|e| UnixfsError::io(path, e))?;
        return add_file(w, std::io::BufReader::with_capacity(1 << 16, file), params);
    }
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).map_err(|e| UnixfsError::io(path, e))?;
        return add_symlink(w, target.as_os_str().as_bytes(), params);
    }
    Err(UnixfsError::UnsupportedFileType(path.to_path_buf()))
}

/// A UnixFS Symlink node holding `target` (Kubo writes no filesize for it).
pub fn add_symlink<W: BlockWrite>(
    w: &mut W,
    target: &[u8],
    params: &Params,
) -> Result<Added, UnixfsError> {
    let mut data = UnixfsData::new(DataType::Symlink);
    data.data = target.to_vec();
    let block = encode_node([], &data.encode());
    let cid = dag_pb_cid(params.cid_version, &block);
    w.write_block_hashed_here(cid, &block)?;
    Ok(Added {
        cid,
        size: target.len() as u64,
        tsize: block.len() as u64,
    })
}

/// Writes a directory from its finished entries (in name order): one
/// Directory node, or a HAMT shard past [`HAMT_SHARDING_THRESHOLD`]; `size`
/// is the sum of its files' lengths. Importers that build a tree from
/// something other than a local path (the Kubo RPC `add`) use this.
pub fn write_directory<W: BlockWrite>(
    w: &mut W,
    entries: Vec<Entry>,
    size: u64,
    params: &Params,
) -> Result<Added, UnixfsError> {
    let estimate: usize = entries
        .iter()
        .map(|e| e.name.len() + e.cid.encoded_len())
        .sum();
    if estimate >= HAMT_SHARDING_THRESHOLD {
        let (cid, tsize) = hamt::build(w, entries, params.cid_version)?;
        return Ok(Added { cid, size, tsize });
    }
    let data = UnixfsData::new(DataType::Directory).encode();
    let block = encode_node(
        entries.iter().map(|e| (&e.cid, e.name.as_str(), e.tsize)),
        &data,
    );
    let cid = dag_pb_cid(params.cid_version, &block);
    w.write_block_hashed_here(cid, &block)?;
    Ok(Added {
        cid,
        size,
        tsize: block.len() as u64 + entries.iter().map(|e| e.tsize).sum::<u64>(),
    })
}
