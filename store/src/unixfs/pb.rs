//! The two protobuf messages UnixFS is made of, encoded byte for byte the way
//! Kubo (go-merkledag, boxo) and Helia (@ipld/dag-pb, ipfs-unixfs) write them,
//! and decoded defensively (these bytes come from the network).
//!
//! dag-pb `PBNode` = `Links` (field 2, repeated, written first) then `Data`
//! (field 1); `PBLink` = `Hash` (1), `Name` (2, always written, also when
//! empty), `Tsize` (3). UnixFS `Data` = `Type` (1), `Data` (2, written only
//! when non-empty), `filesize` (3), `blocksizes` (4, repeated, unpacked),
//! `hashType` (5), `fanout` (6), `mode` (7), `mtime` (8).

use cid::Cid;

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

/// Appends `value` as a protobuf/multiformats unsigned varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push((field << 3) | wire);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint_field(out: &mut Vec<u8>, field: u8, value: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, value);
}

/// A cursor over untrusted protobuf bytes that never reads out of bounds.
struct Fields<'a> {
    rest: &'a [u8],
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self.rest.split_first().ok_or("truncated varint")?;
            self.rest = rest;
            if i == 9 && byte > 1 {
                return Err("varint overflows 64 bits".into());
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.rest.len() < len {
            return Err(format!(
                "field says {len} bytes, {} remain",
                self.rest.len()
            ));
        }
        let (head, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(head)
    }

    /// The next (field number, value), or None at the end.
    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 {
            return Err("field number 0".into());
        }
        let value = match (key & 7) as u8 {
            WIRE_VARINT => Value::Varint(self.varint()?),
            WIRE_LEN => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length too large")?;
                Value::Bytes(self.take(len)?)
            }
            WIRE_I64 => {
                self.take(8)?;
                Value::Fixed
            }
            WIRE_I32 => {
                self.take(4)?;
                Value::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        Ok(Some((field, value)))
    }
}

/// One dag-pb link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PbLink {
    pub hash: Cid,
    /// `None` when the field is absent (Kubo/Helia always write it).
    pub name: Option<String>,
    pub tsize: Option<u64>,
}

/// A decoded dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct PbNode {
    pub links: Vec<PbLink>,
    pub data: Option<Vec<u8>>,
}

/// Encodes a dag-pb node; links are written in the order given.
pub(crate) fn encode_node<'l>(
    links: impl IntoIterator<Item = (&'l Cid, &'l str, u64)>,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 16);
    let mut link = Vec::with_capacity(64);
    for (cid, name, tsize) in links {
        link.clear();
        put_bytes_field(&mut link, 1, &cid.to_bytes());
        put_bytes_field(&mut link, 2, name.as_bytes());
        put_varint_field(&mut link, 3, tsize);
        put_bytes_field(&mut out, 2, &link);
    }
    put_bytes_field(&mut out, 1, data);
    out
}

/// The dag-pb leaf Kubo writes for a chunk without raw leaves: a node with
/// no links whose Data is a UnixFS File holding `chunk` and its filesize.
/// Byte for byte `encode_node([], &UnixfsData{File, data: chunk, filesize})`,
/// but copies the chunk once instead of three times.
pub(crate) fn encode_file_leaf(chunk: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    put_varint_field(&mut head, 1, DataType::File.code());
    if !chunk.is_empty() {
        put_key(&mut head, 2, WIRE_LEN);
        put_varint(&mut head, chunk.len() as u64);
    }
    let mut tail = Vec::with_capacity(11);
    put_varint_field(&mut tail, 3, chunk.len() as u64);
    let inner_len = head.len() + chunk.len() + tail.len();
    let mut out = Vec::with_capacity(inner_len + 11);
    put_key(&mut out, 1, WIRE_LEN);
    put_varint(&mut out, inner_len as u64);
    out.extend_from_slice(&head);
    out.extend_from_slice(chunk);
    out.extend_from_slice(&tail);
    out
}

fn parse_cid(bytes: &[u8]) -> Result<Cid, String> {
    let mut cursor = std::io::Cursor::new(bytes);
    let cid = Cid::read_bytes(&mut cursor).map_err(|e| format!("bad link CID: {e}"))?;
    if cursor.position() as usize != bytes.len() {
        return Err("trailing bytes after link CID".into());
    }
    Ok(cid)
}

fn decode_link(bytes: &[u8]) -> Result<PbLink, String> {
    let mut fields = Fields::new(bytes);
    let (mut hash, mut name, mut tsize) = (None, None, None);
    let mut last_field = 0;
    while let Some((field, value)) = fields.next_field()? {
        // dag-pb fixes the order (Hash, Name, Tsize), as the link walk's
        // decoder (ipld-dagpb) and Kubo's do: accept nothing they refuse.
        if field <= last_field {
            return Err(format!("PBLink field {field} after field {last_field}"));
        }
        last_field = field;
        match (field, value) {
            (1, Value::Bytes(b)) if hash.is_none() => hash = Some(parse_cid(b)?),
            (2, Value::Bytes(b)) if name.is_none() => {
                name = Some(String::from_utf8(b.to_vec()).map_err(|_| "link name is not UTF-8")?);
            }
            (3, Value::Varint(v)) if tsize.is_none() => tsize = Some(v),
            (f, _) => return Err(format!("unexpected or repeated field {f} in PBLink")),
        }
    }
    Ok(PbLink {
        hash: hash.ok_or("link without Hash")?,
        name,
        tsize,
    })
}

/// Decodes a dag-pb node, rejecting unknown fields and malformed links.
pub(crate) fn decode_node(bytes: &[u8]) -> Result<PbNode, String> {
    let mut fields = Fields::new(bytes);
    let mut node = PbNode::default();
    while let Some((field, value)) = fields.next_field()? {
        match (field, value) {
            // Links come before Data (dag-pb's canonical order, which the
            // link walk's decoder requires too).
            (2, Value::Bytes(_)) if node.data.is_some() => {
                return Err("PBNode link after Data".into())
            }
            (2, Value::Bytes(b)) => node.links.push(decode_link(b)?),
            (1, Value::Bytes(b)) if node.data.is_none() => node.data = Some(b.to_vec()),
            (f, _) => return Err(format!("unexpected or repeated field {f} in PBNode")),
        }
    }
    Ok(node)
}

/// UnixFS `Data.DataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DataType {
    Raw,
    Directory,
    File,
    Metadata,
    Symlink,
    HamtShard,
}

impl DataType {
    fn code(self) -> u64 {
        match self {
            DataType::Raw => 0,
            DataType::Directory => 1,
            DataType::File => 2,
            DataType::Metadata => 3,
            DataType::Symlink => 4,
            DataType::HamtShard => 5,
        }
    }

    fn from_code(code: u64) -> Result<Self, String> {
        Ok(match code {
            0 => DataType::Raw,
            1 => DataType::Directory,
            2 => DataType::File,
            3 => DataType::Metadata,
            4 => DataType::Symlink,
            5 => DataType::HamtShard,
            other => return Err(format!("unknown UnixFS type {other}")),
        })
    }
}

/// The UnixFS message carried in a dag-pb node's Data field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnixfsData {
    pub kind: DataType,
    pub data: Vec<u8>,
    pub filesize: Option<u64>,
    pub blocksizes: Vec<u64>,
    pub hash_type: Option<u64>,
    pub fanout: Option<u64>,
}

impl UnixfsData {
    pub fn new(kind: DataType) -> Self {
        Self {
            kind,
            data: Vec::new(),
            filesize: None,
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + 8 + 4 * self.blocksizes.len());
        put_varint_field(&mut out, 1, self.kind.code());
        if !self.data.is_empty() {
            put_bytes_field(&mut out, 2, &self.data);
        }
        if let Some(size) = self.filesize {
            put_varint_field(&mut out, 3, size);
        }
        for &size in &self.blocksizes {
            put_varint_field(&mut out, 4, size);
        }
        if let Some(hash_type) = self.hash_type {
            put_varint_field(&mut out, 5, hash_type);
        }
        if let Some(fanout) = self.fanout {
            put_varint_field(&mut out, 6, fanout);
        }
        out
    }

    /// Decodes untrusted bytes; mode and mtime (fields 7, 8) are accepted and ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut fields = Fields::new(bytes);
        let mut kind = None;
        let mut out = UnixfsData::new(DataType::Raw);
        while let Some((field, value)) = fields.next_field()? {
            match (field, value) {
                (1, Value::Varint(v)) => kind = Some(DataType::from_code(v)?),
                (2, Value::Bytes(b)) => out.data = b.to_vec(),
                (3, Value::Varint(v)) => out.filesize = Some(v),
                (4, Value::Varint(v)) => out.blocksizes.push(v),
                (4, Value::Bytes(packed)) => {
                    let mut inner = Fields::new(packed);
                    while !inner.rest.is_empty() {
                        out.blocksizes.push(inner.varint()?);
                    }
                }
                (5, Value::Varint(v)) => out.hash_type = Some(v),
                (6, Value::Varint(v)) => out.fanout = Some(v),
                (7, Value::Varint(_)) | (8, Value::Bytes(_)) => {}
                (f, _) => return Err(format!("unexpected field {f} in UnixFS Data")),
            }
        }
        out.kind = kind.ok_or("UnixFS Data without Type")?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Fields::new(&out).varint().expect("decodes"), v);
        }
    }

    #[test]
    fn empty_file_node_is_kubos() {
        let mut data = UnixfsData::new(DataType::File);
        data.filesize = Some(0);
        let node = encode_node([], &data.encode());
        assert_eq!(node, [0x0a, 0x04, 0x08, 0x02, 0x18, 0x00]);
        let back = decode_node(&node).expect("decodes");
        assert_eq!(
            UnixfsData::decode(back.data.as_deref().expect("data")).expect("unixfs"),
            data
        );
    }

    #[test]
    fn file_leaf_encoder_matches_the_generic_one() {
        for len in [0usize, 1, 127, 128, 300, 16384, 256 << 10, 1 << 20] {
            let chunk: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut data = UnixfsData::new(DataType::File);
            data.data = chunk.clone();
            data.filesize = Some(len as u64);
            assert_eq!(
                encode_file_leaf(&chunk),
                encode_node([], &data.encode()),
                "{len}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[0x12u8, 0x05, 0x0a][..],
            &[0xff; 11][..],
            &[0x0b][..],
            &[0x12, 0x02, 0x0a, 0x00][..],
            // A link after Data (fuzz/regressions/unixfs_node), and a
            // link's Name before its Hash: orders ipld-dagpb refuses.
            &[0x0a, 0x00, 0x12, 0x04, 0x0a, 0x02, 0x00, 0x00][..],
            &[0x12, 0x06, 0x12, 0x00, 0x0a, 0x02, 0x00, 0x00][..],
        ] {
            assert!(decode_node(bytes).is_err(), "{bytes:?}");
        }
    }
}
