//! The file importer: fixed-size chunks arranged in a balanced tree, built
//! while streaming. Memory holds one chunk plus at most `max_links` pending
//! links per tree level, never the file.
//!
//! Shape (identical in Kubo's balanced builder and Helia's reducer): leaves
//! are grouped `max_links` at a time under a parent, parents again, until one
//! node is left. A group is closed the moment it is full, so a level holds
//! fewer than `max_links` links between chunks; at the end every non-top
//! level is closed (a leftover single child still gets its own parent) and
//! a top level with one link is the root.

use super::pb::{encode_node, DataType, UnixfsData};
use super::{dag_pb_cid, raw_cid, Added, Params, UnixfsError};
use crate::BlockWrite;
use cid::Cid;
use std::io::{ErrorKind, Read};

/// A child of a file node: what its parent's link and blocksizes need.
#[derive(Debug, Clone, Copy)]
struct Child {
    cid: Cid,
    /// Content bytes below this child.
    filesize: u64,
    /// Cumulative block bytes below (and including) this child.
    tsize: u64,
}

/// Imports `reader` as a UnixFS file, writing every block to `w`.
pub fn add_file<W: BlockWrite, Rd: Read>(
    w: &mut W,
    mut reader: Rd,
    params: &Params,
) -> Result<Added, UnixfsError> {
    params.check()?;
    let mut builder = Balanced {
        levels: Vec::new(),
        params: *params,
    };
    let mut chunk = vec![0u8; params.chunk_size];
    loop {
        let len = read_full(&mut reader, &mut chunk)?;
        // The empty file is one empty leaf, as Kubo and Helia make it.
        if len > 0 || builder.levels.is_empty() {
            let leaf = write_leaf(w, &chunk[..len], params)?;
            builder.push(w, 0, leaf)?;
        }
        if len < chunk.len() {
            break;
        }
    }
    let root = builder.finish(w)?;
    Ok(Added {
        cid: root.cid,
        size: root.filesize,
        tsize: root.tsize,
    })
}

/// Fills `buf` unless the input ends first; returns how much was read.
fn read_full<Rd: Read>(reader: &mut Rd, buf: &mut [u8]) -> Result<usize, UnixfsError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(UnixfsError::Read(e)),
        }
    }
    Ok(filled)
}

fn write_leaf<W: BlockWrite>(
    w: &mut W,
    chunk: &[u8],
    params: &Params,
) -> Result<Child, UnixfsError> {
    if params.raw_leaves {
        let cid = raw_cid(chunk);
        w.write_block(cid, chunk)?;
        return Ok(Child {
            cid,
            filesize: chunk.len() as u64,
            tsize: chunk.len() as u64,
        });
    }
    let mut data = UnixfsData::new(DataType::File);
    data.data = chunk.to_vec();
    data.filesize = Some(chunk.len() as u64);
    let block = encode_node([], &data.encode());
    let cid = dag_pb_cid(params.cid_version, &block);
    w.write_block(cid, &block)?;
    Ok(Child {
        cid,
        filesize: chunk.len() as u64,
        tsize: block.len() as u64,
    })
}

/// Pending links per tree level; level 0 holds leaves.
struct Balanced {
    levels: Vec<Vec<Child>>,
    params: Params,
}

impl Balanced {
    fn push<W: BlockWrite>(
        &mut self,
        w: &mut W,
        level: usize,
        child: Child,
    ) -> Result<(), UnixfsError> {
        if self.levels.len() <= level {
            self.levels.push(Vec::with_capacity(self.params.max_links));
        }
        self.levels[level].push(child);
        if self.levels[level].len() == self.params.max_links {
            let group = std::mem::take(&mut self.levels[level]);
            let parent = self.parent(w, &group)?;
            self.push(w, level + 1, parent)?;
        }
        Ok(())
    }

    fn finish<W: BlockWrite>(mut self, w: &mut W) -> Result<Child, UnixfsError> {
        let mut carry: Option<Child> = None;
        let top = self.levels.len();
        for level in 0..top {
            let mut group = std::mem::take(&mut self.levels[level]);
            group.extend(carry.take());
            if group.is_empty() {
                continue;
            }
            let is_top = self.levels[level + 1..].iter().all(Vec::is_empty);
            if is_top && group.len() == 1 {
                return Ok(group[0]);
            }
            carry = Some(self.parent(w, &group)?);
        }
        carry.ok_or_else(|| {
            UnixfsError::BadParams("internal: importer finished without a root".into())
        })
    }

    fn parent<W: BlockWrite>(&self, w: &mut W, children: &[Child]) -> Result<Child, UnixfsError> {
        let mut data = UnixfsData::new(DataType::File);
        data.blocksizes = children.iter().map(|c| c.filesize).collect();
        let filesize: u64 = data.blocksizes.iter().sum();
        data.filesize = Some(filesize);
        let block = encode_node(
            children.iter().map(|c| (&c.cid, "", c.tsize)),
            &data.encode(),
        );
        let cid = dag_pb_cid(self.params.cid_version, &block);
        w.write_block(cid, &block)?;
        Ok(Child {
            cid,
            filesize,
            tsize: block.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>(),
        })
    }
}
