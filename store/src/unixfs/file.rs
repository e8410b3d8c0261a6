//! The file importer: fixed-size chunks arranged in a balanced tree, built
//! while streaming. Memory holds a few chunks plus at most `max_links`
//! pending links per tree level, never the file.
//!
//! Shape (identical in Kubo's balanced builder and Helia's reducer): leaves
//! are grouped `max_links` at a time under a parent, parents again, until one
//! node is left. A group is closed the moment it is full, so a level holds
//! fewer than `max_links` links between chunks; at the end every non-top
//! level is closed (a leftover single child still gets its own parent) and
//! a top level with one link is the root.
//!
//! A file longer than one chunk is imported as a two-stage pipeline: this
//! thread reads chunks and writes finished leaves, a scoped helper thread
//! encodes and hashes them (SHA-256 is most of the CPU an add costs), with
//! at most [`PIPELINE_DEPTH`] chunks in each direction. Leaves come back in
//! order, so the tree and its CIDs are the same as a sequential import.
//! Every CID here is computed from the bytes written with it, so blocks go
//! through [`BlockWrite::write_block_hashed_here`] (no second hash).

use super::pb::{encode_file_leaf, encode_node, DataType, UnixfsData};
use super::{dag_pb_cid, raw_cid, Added, Params, UnixfsError};
use crate::BlockWrite;
use cid::Cid;
use std::io::{ErrorKind, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Chunks queued to the hashing thread, and leaves queued back: bounds the
/// pipeline's memory to about `2 * PIPELINE_DEPTH + 2` chunks.
const PIPELINE_DEPTH: usize = 2;

/// A child of a file node: what its parent's link and blocksizes need.
#[derive(Debug, Clone, Copy)]
struct Child {
    cid: Cid,
    /// Content bytes below this child.
    filesize: u64,
    /// Cumulative block bytes below (and including) this child.
    tsize: u64,
}

/// A leaf block made from one chunk, not yet written.
struct Leaf {
    child: Child,
    /// The block bytes; for raw leaves this is the chunk buffer itself.
    block: Vec<u8>,
    /// The chunk buffer to reuse when the block is a copy of it.
    spare: Option<Vec<u8>>,
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
    let len = read_full(&mut reader, &mut chunk)?;
    if len < chunk.len() {
        // One chunk (or the empty file, one empty leaf as Kubo and Helia
        // make it): not worth a thread.
        chunk.truncate(len);
        let leaf = make_leaf(chunk, params);
        w.write_block_hashed_here(leaf.child.cid, &leaf.block)?;
        builder.push(w, 0, leaf.child)?;
    } else {
        pipelined(w, reader, chunk, &mut builder, params)?;
    }
    let root = builder.finish(w)?;
    Ok(Added {
        cid: root.cid,
        size: root.filesize,
        tsize: root.tsize,
    })
}

/// Imports the rest of a file whose first chunk `first` is full.
fn pipelined<W: BlockWrite, Rd: Read>(
    w: &mut W,
    mut reader: Rd,
    first: Vec<u8>,
    builder: &mut Balanced,
    params: &Params,
) -> Result<(), UnixfsError> {
    let params = *params;
    std::thread::scope(|scope| {
        // Both channel ends live inside the scope: when this closure returns
        // (also on error) they drop, the helper's send or receive fails and
        // it ends, so the scope's join cannot hang.
        let (to_hasher, chunks) = sync_channel::<Vec<u8>>(PIPELINE_DEPTH);
        let (leaves_out, leaves) = sync_channel::<Leaf>(PIPELINE_DEPTH);
        scope.spawn(move || hash_leaves(&chunks, &leaves_out, &params));
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut in_flight = 0usize;
        let mut next = Some(first);
        let mut input_done = false;
        loop {
            while !input_done && in_flight < PIPELINE_DEPTH {
                let chunk = match next.take() {
                    Some(chunk) => chunk,
                    None => {
                        let mut buf = spare
                            .pop()
                            .unwrap_or_else(|| Vec::with_capacity(params.chunk_size));
                        buf.resize(params.chunk_size, 0);
                        let len = read_full(&mut reader, &mut buf)?;
                        // A file that is a whole number of chunks ends with
                        // an empty read and no empty leaf.
                        if len == 0 {
                            input_done = true;
                            break;
                        }
                        input_done = len < buf.len();
                        buf.truncate(len);
                        buf
                    }
                };
                to_hasher.send(chunk).map_err(|_| hasher_gone())?;
                in_flight += 1;
            }
            if in_flight == 0 {
                return Ok(());
            }
            let leaf = leaves.recv().map_err(|_| hasher_gone())?;
            in_flight -= 1;
            w.write_block_hashed_here(leaf.child.cid, &leaf.block)?;
            builder.push(w, 0, leaf.child)?;
            spare.extend(leaf.spare.or(Some(leaf.block)));
        }
    })
}

fn hasher_gone() -> UnixfsError {
    UnixfsError::BadParams("internal: the hashing thread of the importer stopped".into())
}

/// The helper thread: turns chunks into leaves, in order, until either
/// side of the pipeline is dropped.
fn hash_leaves(chunks: &Receiver<Vec<u8>>, leaves: &SyncSender<Leaf>, params: &Params) {
    while let Ok(chunk) = chunks.recv() {
        if leaves.send(make_leaf(chunk, params)).is_err() {
            return;
        }
    }
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

/// Encodes and hashes the leaf for `chunk` (which holds exactly its bytes).
fn make_leaf(chunk: Vec<u8>, params: &Params) -> Leaf {
    let filesize = chunk.len() as u64;
    if params.raw_leaves {
        return Leaf {
            child: Child {
                cid: raw_cid(&chunk),
                filesize,
                tsize: filesize,
            },
            block: chunk,
            spare: None,
        };
    }
    let block = encode_file_leaf(&chunk);
    Leaf {
        child: Child {
            cid: dag_pb_cid(params.cid_version, &block),
            filesize,
            tsize: block.len() as u64,
        },
        block,
        spare: Some(chunk),
    }
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
        w.write_block_hashed_here(cid, &block)?;
        Ok(Child {
            cid,
            filesize,
            tsize: block.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>(),
        })
    }
}
