//! CAR v1 (content-addressable archives): export a DAG as Kubo's
//! `dag export` does (header, then every reachable block once, depth-first
//! pre-order) and import a CAR with bounded memory, verifying every block.
//!
//! Format: `varint(len) dag-cbor{roots: [CID...], version: 1}`, then sections
//! `varint(len(cid) + len(data)) cid data` until the end of the stream.
//! A CAR v2 file (its 11-byte pragma, then a fixed header naming where the
//! v1 payload lies) is read by skipping to that payload.

use crate::block::{self, BlockError, IDENTITY, MAX_BLOCK_SIZE, MAX_CID_BYTES};
use crate::links::{dag_links, DagLinks, LinksError};
use crate::{BlockRead, BlockWrite, Bytes, StoreError};
use cid::Cid;
use ipld_core::ipld::Ipld;
use std::collections::HashSet;
use std::io::{self, ErrorKind, Read, Write};

/// Largest header accepted: real ones are tens of bytes per root.
pub const MAX_HEADER_SIZE: usize = 1 << 20;
/// Largest section: one maximal block and a maximal CID.
pub const MAX_SECTION_SIZE: usize = MAX_BLOCK_SIZE + MAX_CID_BYTES;

/// The 11-byte CAR v2 pragma: varint(10) + dag-cbor {version: 2}.
const V2_PRAGMA: [u8; 11] = [
    0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02,
];
/// CAR v2 fixed header after the pragma: characteristics (16), data offset,
/// data size, index offset (8 each, little-endian).
const V2_HEADER_LEN: usize = 40;

/// Everything CAR reading and writing can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CarError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Links(#[from] LinksError),
    #[error("block {0} is not available")]
    Missing(Cid),
    #[error("bad CAR header: {0}")]
    BadHeader(String),
    #[error("CAR version {0} is not supported (1, or 2 wrapping 1)")]
    UnsupportedVersion(u64),
    #[error("CAR truncated {0}")]
    Truncated(&'static str),
    #[error("bad varint {0}")]
    BadVarint(&'static str),
    #[error("CAR section of {size} bytes at byte {offset} exceeds the {max}-byte limit")]
    SectionTooLarge { size: u64, offset: u64, max: usize },
    #[error("bad CID in the section at byte {offset}: {reason}")]
    BadCid { offset: u64, reason: String },
    #[error("block {cid} at byte {offset} fails verification: {source}")]
    BadBlock {
        cid: Cid,
        offset: u64,
        source: BlockError,
    },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Counts from an export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CarStats {
    pub blocks: u64,
    /// Block data bytes (without CIDs and framing).
    pub block_bytes: u64,
    /// Bytes of CAR written.
    pub car_bytes: u64,
}

/// What an import brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarImport {
    /// The header's roots, in order.
    pub roots: Vec<Cid>,
    pub blocks: u64,
    /// Block data bytes.
    pub bytes: u64,
}

fn put_varint(out: &mut Vec<u8>, value: u64) {
    crate::unixfs::pb::put_varint(out, value);
}

/// The header bytes (length prefix included) for `roots`.
pub fn header_bytes(roots: &[Cid]) -> Vec<u8> {
    // DAG-CBOR map, keys in canonical order (length first): "roots", "version".
    let mut body = vec![0xa2, 0x65];
    body.extend_from_slice(b"roots");
    cbor_head(&mut body, 4, roots.len() as u64);
    for root in roots {
        let bytes = root.to_bytes();
        body.extend_from_slice(&[0xd8, 0x2a]); // tag 42: CID
        cbor_head(&mut body, 2, bytes.len() as u64 + 1);
        body.push(0x00); // multibase identity prefix
        body.extend_from_slice(&bytes);
    }
    body.push(0x67);
    body.extend_from_slice(b"version");
    body.push(0x01);
    let mut out = Vec::with_capacity(body.len() + 2);
    put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

fn cbor_head(out: &mut Vec<u8>, major: u8, len: u64) {
    let major = major << 5;
    match len {
        0..=23 => out.push(major | len as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, len as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// Writes a CAR v1 of every block reachable from `root`, each once, in
/// depth-first pre-order (links in the order the block lists them).
/// Identity-hashed CIDs carry their data inline and are not written.
pub fn export<R: BlockRead, W: Write>(r: &R, root: &Cid, mut w: W) -> Result<CarStats, CarError> {
    let header = header_bytes(std::slice::from_ref(root));
    w.write_all(&header)?;
    let mut stats = CarStats {
        car_bytes: header.len() as u64,
        ..CarStats::default()
    };
    let mut seen: HashSet<Cid> = HashSet::new();
    // Pending links, last = next; each block's links are pushed in reverse.
    let mut pending: Vec<Cid> = vec![*root];
    let mut frame = Vec::with_capacity(64);
    while let Some(cid) = pending.pop() {
        if cid.hash().code() == IDENTITY || !seen.insert(cid) {
            continue;
        }
        let data: Bytes = r.read_block(&cid)?.ok_or(CarError::Missing(cid))?;
        let cid_bytes = cid.to_bytes();
        frame.clear();
        put_varint(&mut frame, (cid_bytes.len() + data.len()) as u64);
        frame.extend_from_slice(&cid_bytes);
        w.write_all(&frame)?;
        w.write_all(&data)?;
        stats.blocks += 1;
        stats.block_bytes += data.len() as u64;
        stats.car_bytes += (frame.len() + data.len()) as u64;
        let DagLinks { children, covered } = dag_links(&cid, &data)?;
        seen.extend(covered);
        pending.extend(children.into_iter().rev());
    }
    w.flush()?;
    Ok(stats)
}

/// Reads a CAR stream block by block; every block is verified against its
/// CID before it is returned. Memory: one section.
#[derive(Debug)]
pub struct CarReader<Rd: Read> {
    input: CountingReader<Rd>,
    roots: Vec<Cid>,
    /// For CAR v2: where the v1 payload ends (absolute offset).
    end: Option<u64>,
}

#[derive(Debug)]
struct CountingReader<Rd> {
    inner: Rd,
    offset: u64,
}

impl<Rd: Read> CountingReader<Rd> {
    /// Fills `buf`; Ok(false) if the stream ended before the first byte.
    fn read_exact_or_eof(&mut self, buf: &mut [u8], what: &'static str) -> Result<bool, CarError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(CarError::Truncated(what)),
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), CarError> {
        if buf.is_empty() || self.read_exact_or_eof(buf, what)? {
            Ok(())
        } else {
            Err(CarError::Truncated(what))
        }
    }

    /// An unsigned varint (at most 9 bytes, minimally encoded); None at a clean end.
    fn varint(&mut self, what: &'static str) -> Result<Option<u64>, CarError> {
        let mut value: u64 = 0;
        for i in 0..9 {
            let mut byte = [0u8; 1];
            if !self.read_exact_or_eof(&mut byte, what)? {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(CarError::Truncated(what))
                };
            }
            let byte = byte[0];
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(CarError::BadVarint("not minimally encoded"));
                }
                return Ok(Some(value));
            }
        }
        Err(CarError::BadVarint("longer than 9 bytes"))
    }

    fn skip(&mut self, mut n: u64) -> Result<(), CarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let step = n.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..step], "in CAR v2 padding")?;
            n -= step as u64;
        }
        Ok(())
    }
}

impl<Rd: Read> CarReader<Rd> {
    /// Reads and checks the header.
    pub fn new(input: Rd) -> Result<Self, CarError> {
        let mut input = CountingReader {
            inner: input,
            offset: 0,
        };
        let header = read_header(&mut input)?;
        if header == V2_PRAGMA[1..] {
            return Self::open_v2(input);
        }
        let roots = parse_v1_header(&header)?;
        Ok(CarReader {
            input,
            roots,
            end: None,
        })
    }

    fn open_v2(mut input: CountingReader<Rd>) -> Result<Self, CarError> {
        let mut fixed = [0u8; V2_HEADER_LEN];
        input.read_exact(&mut fixed, "in the CAR v2 header")?;
        let u64_at = |at: usize| u64::from_le_bytes(fixed[at..at + 8].try_into().expect("8 bytes"));
        let (data_offset, data_size) = (u64_at(16), u64_at(24));
        if data_offset < input.offset {
            return Err(CarError::BadHeader(format!(
                "CAR v2 data offset {data_offset} points into its header"
            )));
        }
        input.skip(data_offset - input.offset)?;
        let end = data_offset
            .checked_add(data_size)
            .ok_or_else(|| CarError::BadHeader("CAR v2 data size overflows".into()))?;
        let header = read_header(&mut input)?;
        let roots = parse_v1_header(&header)?;
        Ok(CarReader {
            input,
            roots,
            end: Some(end),
        })
    }

    /// The roots the header names.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.input.offset
    }

    /// The next verified block, or None at the end of the archive.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Bytes)>, CarError> {
        let start = self.input.offset;
        if self.end.is_some_and(|end| start >= end) {
            return Ok(None);
        }
        let Some(len) = self.input.varint("in a section length")? else {
            return match self.end {
                Some(_) => Err(CarError::Truncated("before the end of the CAR v2 payload")),
                None => Ok(None),
            };
        };
        if len > MAX_SECTION_SIZE as u64 {
            return Err(CarError::SectionTooLarge {
                size: len,
                offset: start,
                max: MAX_SECTION_SIZE,
            });
        }
        if len == 0 {
            return Err(CarError::BadCid {
                offset: start,
                reason: "empty section".into(),
            });
        }
        let mut section = vec![0u8; len as usize];
        self.input
            .read_exact(&mut section, "inside a block section")?;
        if self.end.is_some_and(|end| self.input.offset > end) {
            return Err(CarError::BadHeader(
                "a section runs past the CAR v2 payload".into(),
            ));
        }
        let mut cursor = io::Cursor::new(section.as_slice());
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| CarError::BadCid {
            offset: start,
            reason: e.to_string(),
        })?;
        let cid_len = cursor.position() as usize;
        let data = Bytes::from(section).slice(cid_len..);
        block::verify(&cid, &data).map_err(|source| CarError::BadBlock {
            cid,
            offset: start,
            source,
        })?;
        Ok(Some((cid, data)))
    }
}

impl<Rd: Read> Iterator for CarReader<Rd> {
    type Item = Result<(Cid, Bytes), CarError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_block().transpose()
    }
}

fn read_header<Rd: Read>(input: &mut CountingReader<Rd>) -> Result<Vec<u8>, CarError> {
    let len = input
        .varint("in the header length")?
        .ok_or(CarError::Truncated("before the header (empty input)"))?;
    if len == 0 || len > MAX_HEADER_SIZE as u64 {
        return Err(CarError::BadHeader(format!(
            "header length {len} (1..={MAX_HEADER_SIZE})"
        )));
    }
    let mut header = vec![0u8; len as usize];
    input.read_exact(&mut header, "inside the header")?;
    Ok(header)
}

fn parse_v1_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    let ipld: Ipld = serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|e| CarError::BadHeader(format!("not DAG-CBOR: {e}")))?;
    let Ipld::Map(map) = ipld else {
        return Err(CarError::BadHeader("not a map".into()));
    };
    match map.get("version") {
        Some(Ipld::Integer(1)) => {}
        Some(Ipld::Integer(v)) => {
            return Err(CarError::UnsupportedVersion(
                u64::try_from(*v).unwrap_or(u64::MAX),
            ))
        }
        _ => return Err(CarError::BadHeader("no integer version".into())),
    }
    let Some(Ipld::List(roots)) = map.get("roots") else {
        return Err(CarError::BadHeader("no roots list".into()));
    };
    roots
        .iter()
        .map(|root| match root {
            Ipld::Link(cid) => Ok(*cid),
            _ => Err(CarError::BadHeader("a root is not a CID".into())),
        })
        .collect()
}

/// Imports every block of a CAR into `w`, verifying each; stops at the
/// first error (the caller then must not pin anything).
pub fn import<W: BlockWrite, Rd: Read>(w: &mut W, input: Rd) -> Result<CarImport, CarError> {
    let mut reader = CarReader::new(input)?;
    let mut result = CarImport {
        roots: reader.roots().to_vec(),
        blocks: 0,
        bytes: 0,
    };
    while let Some((cid, data)) = reader.next_block()? {
        w.write_block(cid, &data)?;
        result.blocks += 1;
        result.bytes += data.len() as u64;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_canonical_dag_cbor() {
        let cid = block::cid_for(block::RAW, b"x");
        let header = header_bytes(&[cid]);
        let body = &header[1..];
        assert_eq!(usize::from(header[0]), body.len());
        let ipld: Ipld = serde_ipld_dagcbor::from_slice(body).expect("valid dag-cbor");
        let reencoded = serde_ipld_dagcbor::to_vec(&ipld).expect("encodes");
        assert_eq!(reencoded, body);
        assert_eq!(parse_v1_header(body).expect("parses"), vec![cid]);
    }
}
