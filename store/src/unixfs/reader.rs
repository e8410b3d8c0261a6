//! Reading UnixFS back: a streaming, seekable [`FileReader`] over dag-pb
//! File trees and raw blocks, directory listing (plain and HAMT), and
//! [`get_to_path`], which writes a DAG out as files, directories and
//! symlinks without ever following a symlink or leaving the target dir.
//!
//! Sizes in the DAG are checked as it is read: a node's `filesize` must equal
//! its inline data plus its `blocksizes`, and every child must hold exactly
//! the bytes its parent declares, so a reader yields exactly `len()` bytes
//! or an error, never a silently different file.

use super::hamt::{prefix_len, MAX_READ_FANOUT};
use super::pb::{decode_node, DataType, PbLink, UnixfsData};
use super::{check_entry_name, load, UnixfsError};
use crate::block::{DAG_PB, RAW};
use crate::{BlockRead, Bytes};
use cid::Cid;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How deep a file tree or HAMT may nest before it is refused: real files
/// need 2-6 levels, so deeper ones are hostile or broken.
const MAX_DEPTH: usize = 64;

/// What a UnixFS node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Directory,
    Symlink,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::File => "file",
            NodeKind::Directory => "directory",
            NodeKind::Symlink => "symlink",
        })
    }
}

/// Kind and size of a node, from its root block alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: NodeKind,
    /// File length or symlink target length; `None` for directories.
    pub size: Option<u64>,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// As stored (not validated: [`get_to_path`] refuses unsafe names).
    pub name: String,
    pub cid: Cid,
    /// Cumulative size hint from the link (untrusted).
    pub tsize: Option<u64>,
}

/// One piece of a file node's content, in order.
#[derive(Debug, Clone)]
enum Segment {
    Inline(Bytes),
    Child { cid: Cid, size: u64 },
}

/// A decoded UnixFS node.
enum Node {
    File { segments: Vec<Segment>, size: u64 },
    Directory(Vec<PbLink>),
    Hamt { links: Vec<PbLink>, fanout: u64 },
    Symlink(Vec<u8>),
}

fn decode(cid: &Cid, block: Bytes) -> Result<Node, UnixfsError> {
    match cid.codec() {
        RAW => {
            let size = block.len() as u64;
            Ok(Node::File {
                segments: vec![Segment::Inline(block)],
                size,
            })
        }
        DAG_PB => decode_dag_pb(cid, &block),
        codec => Err(UnixfsError::NotUnixfs { cid: *cid, codec }),
    }
}

fn decode_dag_pb(cid: &Cid, block: &[u8]) -> Result<Node, UnixfsError> {
    let bad = |reason: String| UnixfsError::malformed(cid, reason);
    let node = decode_node(block).map_err(bad)?;
    let data = node
        .data
        .as_deref()
        .ok_or_else(|| bad("dag-pb node without UnixFS Data".into()))?;
    let unixfs = UnixfsData::decode(data).map_err(bad)?;
    match unixfs.kind {
        DataType::File | DataType::Raw => {
            if node.links.len() != unixfs.blocksizes.len() {
                return Err(bad(format!(
                    "{} links but {} blocksizes",
                    node.links.len(),
                    unixfs.blocksizes.len()
                )));
            }
            let mut size = unixfs.data.len() as u64;
            let mut segments = Vec::with_capacity(node.links.len() + 1);
            if !unixfs.data.is_empty() {
                segments.push(Segment::Inline(Bytes::from(unixfs.data)));
            }
            for (link, &child_size) in node.links.iter().zip(&unixfs.blocksizes) {
                if link.name.as_deref().is_some_and(|n| !n.is_empty()) {
                    return Err(bad("file chunk link has a name".into()));
                }
                size = size
                    .checked_add(child_size)
                    .ok_or_else(|| bad("blocksizes overflow".into()))?;
                segments.push(Segment::Child {
                    cid: link.hash,
                    size: child_size,
                });
            }
            if let Some(declared) = unixfs.filesize {
                if declared != size {
                    return Err(bad(format!(
                        "filesize {declared} but data and blocksizes add up to {size}"
                    )));
                }
            }
            Ok(Node::File { segments, size })
        }
        DataType::Directory => Ok(Node::Directory(node.links)),
        DataType::HamtShard => {
            let fanout = unixfs.fanout.unwrap_or(0);
            if !fanout.is_power_of_two() || !(8..=MAX_READ_FANOUT).contains(&fanout) {
                return Err(bad(format!("HAMT fanout {fanout}")));
            }
            if unixfs.hash_type != Some(super::hamt::MURMUR3_X64_64) {
                return Err(bad(format!("HAMT hash type {:?}", unixfs.hash_type)));
            }
            Ok(Node::Hamt {
                links: node.links,
                fanout,
            })
        }
        DataType::Symlink => {
            if !node.links.is_empty() {
                return Err(bad("symlink with links".into()));
            }
            Ok(Node::Symlink(unixfs.data))
        }
        DataType::Metadata => Err(bad("UnixFS Metadata nodes are not supported".into())),
    }
}

fn load_node<R: BlockRead>(r: &R, cid: &Cid) -> Result<Node, UnixfsError> {
    decode(cid, load(r, cid)?)
}

/// Kind and size of `cid` from its root block.
pub fn stat<R: BlockRead>(r: &R, cid: &Cid) -> Result<Stat, UnixfsError> {
    Ok(match load_node(r, cid)? {
        Node::File { size, .. } => Stat {
            kind: NodeKind::File,
            size: Some(size),
        },
        Node::Directory(_) | Node::Hamt { .. } => Stat {
            kind: NodeKind::Directory,
            size: None,
        },
        Node::Symlink(target) => Stat {
            kind: NodeKind::Symlink,
            size: Some(target.len() as u64),
        },
    })
}

fn kind_of(node: &Node) -> NodeKind {
    match node {
        Node::File { .. } => NodeKind::File,
        Node::Directory(_) | Node::Hamt { .. } => NodeKind::Directory,
        Node::Symlink(_) => NodeKind::Symlink,
    }
}

/// A file's bytes as a stream; also seekable. Memory: one leaf plus one
/// decoded node per tree level.
pub struct FileReader<R: BlockRead> {
    blocks: R,
    root: Cid,
    size: u64,
    pos: u64,
    /// Path from the root to the current leaf: each node's segments and the index being read.
    stack: Vec<(Vec<Segment>, usize)>,
    current: Bytes,
    offset: usize,
}

impl<R: BlockRead> fmt::Debug for FileReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileReader")
            .field("root", &self.root)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish()
    }
}

/// Opens the file `cid` (a dag-pb File or a raw block) for streaming.
pub fn cat<R: BlockRead>(blocks: R, cid: &Cid) -> Result<FileReader<R>, UnixfsError> {
    let node = load_node(&blocks, cid)?;
    let Node::File { segments, size } = node else {
        return Err(UnixfsError::WrongKind {
            cid: *cid,
            kind: kind_of(&node),
            wanted: "file",
        });
    };
    let mut reader = FileReader {
        blocks,
        root: *cid,
        size,
        pos: 0,
        stack: vec![(segments, 0)],
        current: Bytes::new(),
        offset: 0,
    };
    reader.enter_current()?;
    Ok(reader)
}

impl<R: BlockRead> FileReader<R> {
    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Current read position.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Descends from the segment the top frame points at to its first leaf
    /// bytes, or advances past exhausted frames; leaves `current` empty at EOF.
    fn enter_current(&mut self) -> Result<(), UnixfsError> {
        loop {
            let Some((segments, index)) = self.stack.last_mut() else {
                self.current = Bytes::new();
                self.offset = 0;
                return Ok(());
            };
            let Some(segment) = segments.get(*index).cloned() else {
                self.stack.pop();
                if let Some((_, parent_index)) = self.stack.last_mut() {
                    *parent_index += 1;
                }
                continue;
            };
            match segment {
                Segment::Inline(bytes) => {
                    if bytes.is_empty() {
                        *index += 1;
                        continue;
                    }
                    self.current = bytes;
                    self.offset = 0;
                    return Ok(());
                }
                Segment::Child { cid, size } => {
                    let segments = self.child_segments(&cid, size)?;
                    self.stack.push((segments, 0));
                }
            }
        }
    }

    /// Loads a child and checks it holds exactly the `size` bytes its parent declared.
    fn child_segments(&self, cid: &Cid, size: u64) -> Result<Vec<Segment>, UnixfsError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(UnixfsError::TooDeep {
                cid: self.root,
                limit: MAX_DEPTH,
            });
        }
        match load_node(&self.blocks, cid)? {
            Node::File {
                segments,
                size: actual,
            } if actual == size => Ok(segments),
            Node::File { size: actual, .. } => Err(UnixfsError::malformed(
                cid,
                format!("holds {actual} bytes, its parent says {size}"),
            )),
            other => Err(UnixfsError::malformed(
                cid,
                format!("a {} inside a file", kind_of(&other)),
            )),
        }
    }

    /// Positions the reader at byte `target` by descending from the root.
    fn seek_to(&mut self, target: u64) -> Result<(), UnixfsError> {
        let root = load_node(&self.blocks, &self.root)?;
        let Node::File { segments, .. } = root else {
            return Err(UnixfsError::malformed(&self.root, "root changed kind"));
        };
        self.stack = vec![(segments, 0)];
        self.pos = target.min(self.size);
        let mut remaining = self.pos;
        loop {
            let (segments, index) = self.stack.last_mut().expect("stack has the root");
            let mut found = None;
            while let Some(segment) = segments.get(*index) {
                let len = match segment {
                    Segment::Inline(bytes) => bytes.len() as u64,
                    Segment::Child { size, .. } => *size,
                };
                if remaining < len {
                    found = Some(segment.clone());
                    break;
                }
                remaining -= len;
                *index += 1;
            }
            match found {
                // At the end of the file: every frame is exhausted.
                None => {
                    self.stack.clear();
                    self.current = Bytes::new();
                    self.offset = 0;
                    return Ok(());
                }
                Some(Segment::Inline(bytes)) => {
                    self.current = bytes;
                    self.offset = usize::try_from(remaining).expect("within a block");
                    return Ok(());
                }
                Some(Segment::Child { cid, size }) => {
                    let segments = self.child_segments(&cid, size)?;
                    self.stack.push((segments, 0));
                }
            }
        }
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, UnixfsError> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.offset == self.current.len() {
            if let Some((_, index)) = self.stack.last_mut() {
                if !self.current.is_empty() {
                    *index += 1;
                }
            }
            self.enter_current()?;
            if self.current.is_empty() {
                return Ok(0);
            }
        }
        let available = &self.current[self.offset..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.offset += n;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BlockRead> Read for FileReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf).map_err(io::Error::other)
    }
}

impl<R: BlockRead> Seek for FileReader<R> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target: i128 = match from {
            SeekFrom::Start(n) => i128::from(n),
            SeekFrom::End(d) => i128::from(self.size) + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if target < 0 || target > i128::from(self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                UnixfsError::BadSeek {
                    offset: target,
                    size: self.size,
                },
            ));
        }
        let target = target as u64;
        self.seek_to(target).map_err(io::Error::other)?;
        Ok(target)
    }
}

/// Calls `f` for every entry of the directory `cid` (plain or HAMT-sharded),
/// in stored order for plain directories and bucket order for shards.
pub fn for_each_entry<R, F>(r: &R, cid: &Cid, mut f: F) -> Result<(), UnixfsError>
where
    R: BlockRead,
    F: FnMut(DirEntry) -> Result<(), UnixfsError>,
{
    match load_node(r, cid)? {
        Node::Directory(links) => {
            for link in links {
                f(DirEntry {
                    name: link.name.unwrap_or_default(),
                    cid: link.hash,
                    tsize: link.tsize,
                })?;
            }
            Ok(())
        }
        Node::Hamt { links, fanout } => walk_hamt(r, cid, links, fanout, 0, &mut f),
        other => Err(UnixfsError::WrongKind {
            cid: *cid,
            kind: kind_of(&other),
            wanted: "directory",
        }),
    }
}

fn walk_hamt<R, F>(
    r: &R,
    shard: &Cid,
    links: Vec<PbLink>,
    fanout: u64,
    depth: usize,
    f: &mut F,
) -> Result<(), UnixfsError>
where
    R: BlockRead,
    F: FnMut(DirEntry) -> Result<(), UnixfsError>,
{
    if depth >= MAX_DEPTH {
        return Err(UnixfsError::TooDeep {
            cid: *shard,
            limit: MAX_DEPTH,
        });
    }
    let prefix = prefix_len(fanout);
    for link in links {
        let name = link.name.unwrap_or_default();
        let valid_prefix = name.len() >= prefix
            && name.is_char_boundary(prefix)
            && u64::from_str_radix(&name[..prefix], 16).is_ok_and(|b| b < fanout);
        if !valid_prefix {
            return Err(UnixfsError::malformed(
                shard,
                format!("HAMT link name {name:?} lacks a bucket prefix"),
            ));
        }
        if name.len() == prefix {
            match load_node(r, &link.hash)? {
                Node::Hamt {
                    links,
                    fanout: child_fanout,
                } if child_fanout == fanout => {
                    walk_hamt(r, &link.hash, links, fanout, depth + 1, f)?;
                }
                _ => {
                    return Err(UnixfsError::malformed(
                        &link.hash,
                        "HAMT bucket link does not point to a shard of the same fanout",
                    ))
                }
            }
        } else {
            f(DirEntry {
                name: name[prefix..].to_string(),
                cid: link.hash,
                tsize: link.tsize,
            })?;
        }
    }
    Ok(())
}

/// All entries of the directory `cid`.
pub fn ls<R: BlockRead>(r: &R, cid: &Cid) -> Result<Vec<DirEntry>, UnixfsError> {
    let mut entries = Vec::new();
    for_each_entry(r, cid, |entry| {
        entries.push(entry);
        Ok(())
    })?;
    Ok(entries)
}

/// What [`get_to_path`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GetStats {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Writes the DAG `cid` to `out`, which must not exist yet: a file, a
/// symlink, or a directory tree. Entry names that are empty, `.`, `..` or
/// hold `/` or NUL are refused; every path is created fresh (`create_new`,
/// `create_dir`), so an existing symlink is never followed or replaced.
pub fn get_to_path<R: BlockRead>(r: &R, cid: &Cid, out: &Path) -> Result<GetStats, UnixfsError> {
    let mut stats = GetStats::default();
    let mut work: Vec<(Cid, PathBuf)> = vec![(*cid, out.to_path_buf())];
    while let Some((cid, path)) = work.pop() {
        match load_node(r, &cid)? {
            Node::File { .. } => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| exists_or_io(&path, e))?;
                let mut reader = cat(r, &cid)?;
                // Like `cp` and `ipfs get`, no fsync: the user's file is not
                // the store, and its blocks stay safe in the store anyway.
                let copied = copy_file(&mut reader, &mut file, &path)?;
                stats.files += 1;
                stats.bytes += copied;
            }
            Node::Symlink(target) => {
                write_symlink(&target, &path, &cid)?;
                stats.symlinks += 1;
            }
            Node::Directory(_) | Node::Hamt { .. } => {
                fs::create_dir(&path).map_err(|e| exists_or_io(&path, e))?;
                stats.directories += 1;
                let mut children = Vec::new();
                for_each_entry(r, &cid, |entry| {
                    check_entry_name(&entry.name)?;
                    children.push((entry.cid, path.join(&entry.name)));
                    Ok(())
                })?;
                // Reverse so the stack pops entries in directory order.
                work.extend(children.into_iter().rev());
            }
        }
    }
    Ok(stats)
}

fn copy_file<R: BlockRead>(
    reader: &mut FileReader<R>,
    file: &mut fs::File,
    path: &Path,
) -> Result<u64, UnixfsError> {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read_inner(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        file.write_all(&buf[..n])
            .map_err(|e| UnixfsError::io(path, e))?;
        total += n as u64;
    }
}

fn write_symlink(target: &[u8], path: &Path, cid: &Cid) -> Result<(), UnixfsError> {
    use std::os::unix::ffi::OsStrExt;
    if target.is_empty() || target.contains(&0) {
        return Err(UnixfsError::malformed(
            cid,
            "symlink target is empty or contains NUL",
        ));
    }
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path)
        .map_err(|e| exists_or_io(path, e))
}

fn exists_or_io(path: &Path, e: io::Error) -> UnixfsError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        UnixfsError::Exists(path.to_path_buf())
    } else {
        UnixfsError::io(path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unixfs::pb::encode_node;
    use crate::unixfs::{add_file, dag_pb_cid, Profile};
    use crate::{BlockWrite, MemoryBlocks};

    fn put_dir(blocks: &mut MemoryBlocks, entries: &[(&str, Cid)]) -> Cid {
        let data = UnixfsData::new(DataType::Directory).encode();
        let block = encode_node(entries.iter().map(|(n, c)| (c, *n, 1)), &data);
        let cid = dag_pb_cid(1, &block);
        blocks.write_block(cid, &block).expect("stored");
        cid
    }

    #[test]
    fn get_refuses_unsafe_names_and_writes_nothing_outside() {
        let mut blocks = MemoryBlocks::new();
        let file = add_file(&mut blocks, &b"payload"[..], &Profile::V1_2025.params())
            .expect("added")
            .cid;
        for bad in ["", ".", "..", "a/b", "../escape", "nul\0byte"] {
            let dir = put_dir(&mut blocks, &[("fine", file), (bad, file)]);
            let tmp = tempfile::tempdir().expect("tempdir");
            let out = tmp.path().join("out");
            let err = get_to_path(&blocks, &dir, &out).expect_err(bad);
            assert!(matches!(err, UnixfsError::BadName { .. }), "{bad:?}: {err}");
            assert!(!tmp.path().join("escape").exists());
            assert!(
                !tmp.path().join("out").join("fine").exists(),
                "refused before writing"
            );
        }
    }

    #[test]
    fn get_never_writes_through_an_existing_path() {
        let mut blocks = MemoryBlocks::new();
        let file = add_file(&mut blocks, &b"payload"[..], &Profile::V1_2025.params())
            .expect("added")
            .cid;
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"keep").expect("write");
        let out = tmp.path().join("out");
        std::os::unix::fs::symlink(&victim, &out).expect("symlink");
        let err = get_to_path(&blocks, &file, &out).expect_err("exists");
        assert!(matches!(err, UnixfsError::Exists(_)), "{err}");
        assert_eq!(fs::read(&victim).expect("read"), b"keep");

        // A directory whose symlink entry comes before a same-named file.
        let link = {
            let mut data = UnixfsData::new(DataType::Symlink);
            data.data = victim.as_os_str().as_encoded_bytes().to_vec();
            let block = encode_node([], &data.encode());
            let cid = dag_pb_cid(1, &block);
            blocks.write_block(cid, &block).expect("stored");
            cid
        };
        let dir = put_dir(&mut blocks, &[("x", link), ("x", file)]);
        let out = tmp.path().join("out2");
        let err = get_to_path(&blocks, &dir, &out).expect_err("duplicate");
        assert!(matches!(err, UnixfsError::Exists(_)), "{err}");
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
    }

    #[test]
    fn inconsistent_sizes_are_errors() {
        let mut blocks = MemoryBlocks::new();
        let leaf = crate::block::cid_for(RAW, b"abc");
        blocks.write_block(leaf, b"abc").expect("stored");
        let mut node = |blocksize: u64, filesize: u64| {
            let mut data = UnixfsData::new(DataType::File);
            data.blocksizes = vec![blocksize];
            data.filesize = Some(filesize);
            let block = encode_node([(&leaf, "", 3)], &data.encode());
            let cid = dag_pb_cid(1, &block);
            blocks.write_block(cid, &block).expect("stored");
            cid
        };
        let (lying_parent, bad_filesize, good) = (node(4, 4), node(3, 9), node(3, 3));
        // cat descends to the first leaf right away, so the lie shows at open.
        assert!(matches!(
            cat(&blocks, &lying_parent),
            Err(UnixfsError::Malformed { .. })
        ));
        let mut out = Vec::new();
        assert!(matches!(
            cat(&blocks, &bad_filesize),
            Err(UnixfsError::Malformed { .. })
        ));
        out.clear();
        cat(&blocks, &good)
            .expect("ok")
            .read_to_end(&mut out)
            .expect("reads");
        assert_eq!(out, b"abc");
    }
}
