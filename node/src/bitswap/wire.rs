//! The Bitswap wire format: the protobuf `Message` of bitswap 1.0.0-1.2.0
//! (wantlist, 1.0.0 `blocks`, 1.1+ `payload` with CID prefixes, 1.2
//! `blockPresences`, `pendingBytes`), its hand-written encoder and a decoder
//! that never panics and slices block data out of the received frame without
//! copying, plus CID prefixes and unsigned-varint length-prefixed framing.
//!
//! The decoder is written here rather than with quick-protobuf because
//! quick-protobuf's nested-length handling trusts inner lengths against the
//! whole buffer instead of the enclosing message, which hostile input can abuse.

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use ipnix_store::block::{self, BlockError};

/// Largest frame (message bytes after the length prefix) read or written.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// What a wantlist entry asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WantType {
    /// Send the block.
    Block,
    /// Say whether you have the block (1.2.0).
    Have,
}

/// A block-presence answer (1.2.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Presence {
    Have,
    DontHave,
}

/// One wantlist entry as sent on the wire; `cid` is the raw CID bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireEntry {
    pub cid: Bytes,
    pub priority: i32,
    pub cancel: bool,
    pub want_type: WantType,
    pub send_dont_have: bool,
}

/// A 1.1+ block: the CID prefix (version, codec, hash code, digest length) and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireBlock {
    pub prefix: Bytes,
    pub data: Bytes,
}

/// A 1.2.0 block presence; `cid` is the raw CID bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WirePresence {
    pub cid: Bytes,
    pub presence: Presence,
}

/// A whole Bitswap message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireMessage {
    pub entries: Vec<WireEntry>,
    /// The wantlist replaces the previous one instead of updating it.
    pub full: bool,
    /// 1.0.0 blocks: data only, named by its CIDv0.
    pub blocks: Vec<Bytes>,
    /// 1.1+ blocks.
    pub payload: Vec<WireBlock>,
    pub presences: Vec<WirePresence>,
    pub pending_bytes: i32,
}

/// Why bytes are not a Bitswap message or frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("malformed varint")]
    Varint,
    #[error("unsupported protobuf wire type {0}")]
    WireType(u8),
    #[error("field {field} has wire type {wire_type}, expected {expected}")]
    FieldType {
        field: u32,
        wire_type: u8,
        expected: u8,
    },
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge { len: u64, max: usize },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a received block's CID could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    #[error("malformed CID prefix")]
    Malformed,
    #[error("CIDv0 prefix must be dag-pb/sha2-256/32")]
    BadV0,
    #[error("unsupported CID version {0}")]
    Version(u64),
    #[error("digest length {len} is not the full length of hash 0x{code:x}")]
    DigestLength { code: u64, len: u64 },
    #[error(transparent)]
    Block(#[from] BlockError),
}

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

// Message field numbers.
const MSG_WANTLIST: u32 = 1;
const MSG_BLOCKS: u32 = 2;
const MSG_PAYLOAD: u32 = 3;
const MSG_PRESENCES: u32 = 4;
const MSG_PENDING_BYTES: u32 = 5;
const WANTLIST_ENTRIES: u32 = 1;
const WANTLIST_FULL: u32 = 2;
const ENTRY_BLOCK: u32 = 1;
const ENTRY_PRIORITY: u32 = 2;
const ENTRY_CANCEL: u32 = 3;
const ENTRY_WANT_TYPE: u32 = 4;
const ENTRY_SEND_DONT_HAVE: u32 = 5;
const BLOCK_PREFIX: u32 = 1;
const BLOCK_DATA: u32 = 2;
const PRESENCE_CID: u32 = 1;
const PRESENCE_TYPE: u32 = 2;

/// A bounds-checked protobuf reader over one (sub)message of a shared frame.
struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

enum Value {
    Varint(u64),
    Len(usize, usize),
    Skipped,
}

impl<'a> Reader<'a> {
    fn new(frame: &'a Bytes, start: usize, end: usize) -> Self {
        Self {
            frame,
            pos: start,
            end,
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            if self.pos >= self.end {
                return Err(WireError::Truncated);
            }
            let byte = self.frame[self.pos];
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(WireError::Varint);
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Varint)
    }

    /// The next field number and its value, or `None` at the end of the message.
    fn field(&mut self) -> Result<Option<(u32, Value)>, WireError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| WireError::Varint)?;
        let wire_type = (key & 7) as u8;
        let value = match wire_type {
            WIRE_VARINT => Value::Varint(self.varint()?),
            WIRE_LEN => {
                let len = self.varint()?;
                let remaining = (self.end - self.pos) as u64;
                if len > remaining {
                    return Err(WireError::Truncated);
                }
                let start = self.pos;
                self.pos += len as usize;
                Value::Len(start, self.pos)
            }
            WIRE_I64 | WIRE_I32 => {
                let width = if wire_type == WIRE_I64 { 8 } else { 4 };
                if self.end - self.pos < width {
                    return Err(WireError::Truncated);
                }
                self.pos += width;
                Value::Skipped
            }
            other => return Err(WireError::WireType(other)),
        };
        Ok(Some((field, value)))
    }
}

fn expect_varint(field: u32, value: &Value) -> Result<u64, WireError> {
    match value {
        Value::Varint(v) => Ok(*v),
        _ => Err(WireError::FieldType {
            field,
            wire_type: wire_type_of(value),
            expected: WIRE_VARINT,
        }),
    }
}

fn expect_len(field: u32, value: &Value) -> Result<(usize, usize), WireError> {
    match value {
        Value::Len(start, end) => Ok((*start, *end)),
        _ => Err(WireError::FieldType {
            field,
            wire_type: wire_type_of(value),
            expected: WIRE_LEN,
        }),
    }
}

fn wire_type_of(value: &Value) -> u8 {
    match value {
        Value::Varint(_) => WIRE_VARINT,
        Value::Len(..) => WIRE_LEN,
        Value::Skipped => WIRE_I64,
    }
}

impl WireMessage {
    /// Decodes one message; data fields are zero-copy slices of `frame`.
    /// Unknown fields are skipped, as protobuf requires.
    pub fn decode(frame: &Bytes) -> Result<Self, WireError> {
        let mut message = WireMessage::default();
        let mut reader = Reader::new(frame, 0, frame.len());
        while let Some((field, value)) = reader.field()? {
            match field {
                MSG_WANTLIST => {
                    let (start, end) = expect_len(field, &value)?;
                    message.decode_wantlist(frame, start, end)?;
                }
                MSG_BLOCKS => {
                    let (start, end) = expect_len(field, &value)?;
                    message.blocks.push(frame.slice(start..end));
                }
                MSG_PAYLOAD => {
                    let (start, end) = expect_len(field, &value)?;
                    message.payload.push(decode_block(frame, start, end)?);
                }
                MSG_PRESENCES => {
                    let (start, end) = expect_len(field, &value)?;
                    message.presences.push(decode_presence(frame, start, end)?);
                }
                MSG_PENDING_BYTES => {
                    message.pending_bytes = expect_varint(field, &value)? as i32;
                }
                _ => {}
            }
        }
        Ok(message)
    }

    fn decode_wantlist(
        &mut self,
        frame: &Bytes,
        start: usize,
        end: usize,
    ) -> Result<(), WireError> {
        let mut reader = Reader::new(frame, start, end);
        while let Some((field, value)) = reader.field()? {
            match field {
                WANTLIST_ENTRIES => {
                    let (start, end) = expect_len(field, &value)?;
                    self.entries.push(decode_entry(frame, start, end)?);
                }
                WANTLIST_FULL => self.full = expect_varint(field, &value)? != 0,
                _ => {}
            }
        }
        Ok(())
    }

    /// Exact encoded size in bytes (without the frame's length prefix).
    pub fn encoded_len(&self) -> usize {
        let mut len = 0;
        if !self.entries.is_empty() || self.full {
            len += len_field_size(MSG_WANTLIST, self.wantlist_len());
        }
        for data in &self.blocks {
            len += len_field_size(MSG_BLOCKS, data.len());
        }
        for block in &self.payload {
            len += len_field_size(MSG_PAYLOAD, block_len(block));
        }
        for presence in &self.presences {
            len += len_field_size(MSG_PRESENCES, presence_len(presence));
        }
        if self.pending_bytes != 0 {
            len += varint_field_size(MSG_PENDING_BYTES, int32_as_u64(self.pending_bytes));
        }
        len
    }

    fn wantlist_len(&self) -> usize {
        let mut len = 0;
        for entry in &self.entries {
            len += len_field_size(WANTLIST_ENTRIES, entry_len(entry));
        }
        if self.full {
            len += varint_field_size(WANTLIST_FULL, 1);
        }
        len
    }

    /// Appends the message (without a length prefix) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        if !self.entries.is_empty() || self.full {
            put_key(out, MSG_WANTLIST, WIRE_LEN);
            put_varint(out, self.wantlist_len() as u64);
            for entry in &self.entries {
                put_key(out, WANTLIST_ENTRIES, WIRE_LEN);
                put_varint(out, entry_len(entry) as u64);
                put_bytes_field(out, ENTRY_BLOCK, &entry.cid);
                if entry.priority != 0 {
                    put_varint_field(out, ENTRY_PRIORITY, int32_as_u64(entry.priority));
                }
                if entry.cancel {
                    put_varint_field(out, ENTRY_CANCEL, 1);
                }
                if entry.want_type == WantType::Have {
                    put_varint_field(out, ENTRY_WANT_TYPE, 1);
                }
                if entry.send_dont_have {
                    put_varint_field(out, ENTRY_SEND_DONT_HAVE, 1);
                }
            }
            if self.full {
                put_varint_field(out, WANTLIST_FULL, 1);
            }
        }
        for data in &self.blocks {
            put_bytes_field(out, MSG_BLOCKS, data);
        }
        for block in &self.payload {
            put_key(out, MSG_PAYLOAD, WIRE_LEN);
            put_varint(out, block_len(block) as u64);
            put_bytes_field(out, BLOCK_PREFIX, &block.prefix);
            put_bytes_field(out, BLOCK_DATA, &block.data);
        }
        for presence in &self.presences {
            put_key(out, MSG_PRESENCES, WIRE_LEN);
            put_varint(out, presence_len(presence) as u64);
            put_bytes_field(out, PRESENCE_CID, &presence.cid);
            if presence.presence == Presence::DontHave {
                put_varint_field(out, PRESENCE_TYPE, 1);
            }
        }
        if self.pending_bytes != 0 {
            put_varint_field(out, MSG_PENDING_BYTES, int32_as_u64(self.pending_bytes));
        }
    }

    /// The message as one frame: unsigned-varint length prefix, then the message.
    pub fn to_frame(&self) -> Bytes {
        let len = self.encoded_len();
        let mut out = BytesMut::with_capacity(len + 5);
        put_varint(&mut out, len as u64);
        self.encode(&mut out);
        out.freeze()
    }
}

fn decode_entry(frame: &Bytes, start: usize, end: usize) -> Result<WireEntry, WireError> {
    let mut entry = WireEntry {
        cid: Bytes::new(),
        priority: 0,
        cancel: false,
        want_type: WantType::Block,
        send_dont_have: false,
    };
    let mut reader = Reader::new(frame, start, end);
    while let Some((field, value)) = reader.field()? {
        match field {
            ENTRY_BLOCK => {
                let (start, end) = expect_len(field, &value)?;
                entry.cid = frame.slice(start..end);
            }
            ENTRY_PRIORITY => entry.priority = expect_varint(field, &value)? as i32,
            ENTRY_CANCEL => entry.cancel = expect_varint(field, &value)? != 0,
            ENTRY_WANT_TYPE => {
                // Unknown enum values fall back to the default (Block), as proto3 does.
                entry.want_type = if expect_varint(field, &value)? == 1 {
                    WantType::Have
                } else {
                    WantType::Block
                };
            }
            ENTRY_SEND_DONT_HAVE => entry.send_dont_have = expect_varint(field, &value)? != 0,
            _ => {}
        }
    }
    Ok(entry)
}

fn decode_block(frame: &Bytes, start: usize, end: usize) -> Result<WireBlock, WireError> {
    let mut block = WireBlock {
        prefix: Bytes::new(),
        data: Bytes::new(),
    };
    let mut reader = Reader::new(frame, start, end);
    while let Some((field, value)) = reader.field()? {
        match field {
            BLOCK_PREFIX => {
                let (start, end) = expect_len(field, &value)?;
                block.prefix = frame.slice(start..end);
            }
            BLOCK_DATA => {
                let (start, end) = expect_len(field, &value)?;
                block.data = frame.slice(start..end);
            }
            _ => {}
        }
    }
    Ok(block)
}

fn decode_presence(frame: &Bytes, start: usize, end: usize) -> Result<WirePresence, WireError> {
    let mut presence = WirePresence {
        cid: Bytes::new(),
        presence: Presence::Have,
    };
    let mut reader = Reader::new(frame, start, end);
    while let Some((field, value)) = reader.field()? {
        match field {
            PRESENCE_CID => {
                let (start, end) = expect_len(field, &value)?;
                presence.cid = frame.slice(start..end);
            }
            PRESENCE_TYPE => {
                presence.presence = if expect_varint(field, &value)? == 1 {
                    Presence::DontHave
                } else {
                    Presence::Have
                };
            }
            _ => {}
        }
    }
    Ok(presence)
}

/// Protobuf int32 is sign-extended to 64 bits on the wire.
fn int32_as_u64(v: i32) -> u64 {
    i64::from(v) as u64
}

fn varint_size(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key_size(field: u32) -> usize {
    varint_size(u64::from(field) << 3)
}

fn len_field_size(field: u32, len: usize) -> usize {
    key_size(field) + varint_size(len as u64) + len
}

fn varint_field_size(field: u32, v: u64) -> usize {
    key_size(field) + varint_size(v)
}

fn entry_len(entry: &WireEntry) -> usize {
    let mut len = len_field_size(ENTRY_BLOCK, entry.cid.len());
    if entry.priority != 0 {
        len += varint_field_size(ENTRY_PRIORITY, int32_as_u64(entry.priority));
    }
    if entry.cancel {
        len += varint_field_size(ENTRY_CANCEL, 1);
    }
    if entry.want_type == WantType::Have {
        len += varint_field_size(ENTRY_WANT_TYPE, 1);
    }
    if entry.send_dont_have {
        len += varint_field_size(ENTRY_SEND_DONT_HAVE, 1);
    }
    len
}

fn block_len(block: &WireBlock) -> usize {
    len_field_size(BLOCK_PREFIX, block.prefix.len()) + len_field_size(BLOCK_DATA, block.data.len())
}

fn presence_len(presence: &WirePresence) -> usize {
    let mut len = len_field_size(PRESENCE_CID, presence.cid.len());
    if presence.presence == Presence::DontHave {
        len += varint_field_size(PRESENCE_TYPE, 1);
    }
    len
}

fn put_varint(out: &mut BytesMut, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.put_slice(unsigned_varint::encode::u64(v, &mut buf));
}

fn put_key(out: &mut BytesMut, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_varint_field(out: &mut BytesMut, field: u32, v: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, v);
}

fn put_bytes_field(out: &mut BytesMut, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// The CID prefix a 1.1+ payload carries: version, codec, hash code, digest length.
pub fn prefix_of(cid: &Cid) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    put_varint(&mut out, u64::from(cid.version()));
    put_varint(&mut out, cid.codec());
    put_varint(&mut out, cid.hash().code());
    put_varint(&mut out, u64::from(cid.hash().size()));
    out.freeze()
}

/// Computes the CID of received block data from its prefix. The CID is built
/// from the data's own digest and then checked with the store's rules
/// ([`block::check_cid`], [`block::MAX_BLOCK_SIZE`]): together that is exactly
/// what [`block::verify`] checks, without hashing the data twice.
pub fn cid_from_prefix(prefix: &[u8], data: &[u8]) -> Result<Cid, PrefixError> {
    let mut rest = prefix;
    let mut next = || -> Result<u64, PrefixError> {
        let (v, tail) = unsigned_varint::decode::u64(rest).map_err(|_| PrefixError::Malformed)?;
        rest = tail;
        Ok(v)
    };
    let version = next()?;
    let codec = next()?;
    let code = next()?;
    let len = next()?;
    if !rest.is_empty() {
        return Err(PrefixError::Malformed);
    }
    if data.len() > block::MAX_BLOCK_SIZE {
        return Err(BlockError::TooLarge {
            size: data.len(),
            max: block::MAX_BLOCK_SIZE,
        }
        .into());
    }
    let cid = match version {
        0 => {
            if codec != block::DAG_PB || code != block::SHA2_256 || len != 32 {
                return Err(PrefixError::BadV0);
            }
            let hash = block::digest(code, data).ok_or(PrefixError::BadV0)?;
            Cid::new_v0(hash).map_err(|_| PrefixError::BadV0)?
        }
        1 => {
            // Check codec and hash before spending time hashing.
            let probe =
                multihash::Multihash::<64>::wrap(code, &[]).map_err(|_| PrefixError::Malformed)?;
            block::check_cid(&Cid::new_v1(codec, probe))?;
            let hash = block::digest(code, data)
                .ok_or(BlockError::UnsupportedHash { codec, hash: code })?;
            if u64::from(hash.size()) != len {
                return Err(PrefixError::DigestLength { code, len });
            }
            Cid::new_v1(codec, hash)
        }
        other => return Err(PrefixError::Version(other)),
    };
    block::check_cid(&cid)?;
    Ok(cid)
}

/// The CIDv0 of a 1.0.0 `blocks` entry.
pub fn cid_v0_of(data: &[u8]) -> Result<Cid, PrefixError> {
    cid_from_prefix(&[0x00, 0x70, 0x12, 0x20], data)
}

/// Parses CID bytes from a wantlist entry or presence: at most
/// [`block::MAX_CID_BYTES`], no trailing bytes.
pub fn parse_cid(bytes: &[u8]) -> Option<Cid> {
    if bytes.is_empty() || bytes.len() > block::MAX_CID_BYTES {
        return None;
    }
    let cid = Cid::read_bytes(bytes).ok()?;
    // Not just the length: the multihash crate takes a hash code varint
    // that overflows 64 bits, which re-encodes differently.
    (cid.to_bytes() == bytes).then_some(cid)
}

/// Reads one length-prefixed frame. `Ok(None)` is a clean end of stream
/// before a frame started. A length over `max` fails before its body is read.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<Bytes>, WireError> {
    match read_frame_len(stream, max).await? {
        Some(len) => read_frame_body(stream, len).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's length prefix; `Ok(None)` at a clean end of stream.
pub async fn read_frame_len<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> Result<Option<usize>, WireError> {
    let mut len: u64 = 0;
    let mut byte = [0u8; 1];
    for i in 0..10 {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            if i == 0 {
                return Ok(None);
            }
            return Err(WireError::Truncated);
        }
        len |= u64::from(byte[0] & 0x7f) << (7 * i);
        if len > max as u64 {
            return Err(WireError::FrameTooLarge { len, max });
        }
        if byte[0] & 0x80 == 0 {
            return Ok(Some(len as usize));
        }
    }
    Err(WireError::Varint)
}

/// Reads a frame body of `len` bytes (at most the frame limit, checked by
/// [`read_frame_len`]) into one buffer of that size. The handler only calls
/// this while holding read budget for `len`, which bounds what lying length
/// prefixes can make a connection allocate.
pub async fn read_frame_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    len: usize,
) -> Result<Bytes, WireError> {
    // Growing the buffer as bytes arrive cost a copy and a zero-fill per
    // doubling (measured, DESIGN.md).
    let mut body = vec![0u8; len];
    match stream.read_exact(&mut body).await {
        Ok(()) => Ok(Bytes::from(body)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Writes one prepared frame (see [`WireMessage::to_frame`]) and flushes it.
pub async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    frame: &[u8],
) -> std::io::Result<()> {
    stream.write_all(frame).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnix_store::block::{cid_for, RAW};
    use proptest::prelude::*;

    fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn arb_message() -> impl Strategy<Value = WireMessage> {
        let entry = (
            arb_bytes(48),
            any::<i32>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(cid, priority, cancel, have, send_dont_have)| WireEntry {
                cid,
                priority,
                cancel,
                want_type: if have {
                    WantType::Have
                } else {
                    WantType::Block
                },
                send_dont_have,
            });
        let block =
            (arb_bytes(8), arb_bytes(300)).prop_map(|(prefix, data)| WireBlock { prefix, data });
        let presence = (arb_bytes(48), any::<bool>()).prop_map(|(cid, dont)| WirePresence {
            cid,
            presence: if dont {
                Presence::DontHave
            } else {
                Presence::Have
            },
        });
        (
            proptest::collection::vec(entry, 0..8),
            any::<bool>(),
            proptest::collection::vec(arb_bytes(100), 0..3),
            proptest::collection::vec(block, 0..3),
            proptest::collection::vec(presence, 0..5),
            any::<i32>(),
        )
            .prop_map(
                |(entries, full, blocks, payload, presences, pending_bytes)| WireMessage {
                    entries,
                    full,
                    blocks,
                    payload,
                    presences,
                    pending_bytes,
                },
            )
    }

    proptest! {
        #[test]
        fn message_round_trips(message in arb_message()) {
            let mut out = BytesMut::new();
            message.encode(&mut out);
            prop_assert_eq!(out.len(), message.encoded_len());
            let decoded = WireMessage::decode(&out.freeze()).expect("own encoding decodes");
            prop_assert_eq!(decoded, message);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = WireMessage::decode(&Bytes::from(bytes));
        }

        #[test]
        fn mutated_messages_never_panic(message in arb_message(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
            let mut bytes = BytesMut::new();
            message.encode(&mut bytes);
            let mut bytes = bytes.to_vec();
            if !bytes.is_empty() {
                for (at, value) in flips {
                    let len = bytes.len();
                    bytes[at % len] = value;
                }
            }
            let _ = WireMessage::decode(&Bytes::from(bytes));
        }

        #[test]
        fn cid_and_prefix_parsing_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_cid(&bytes);
            let _ = cid_from_prefix(&bytes, b"data");
        }

        #[test]
        fn prefix_round_trips_for_raw_blocks(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let cid = cid_for(RAW, &data);
            let prefix = prefix_of(&cid);
            prop_assert_eq!(cid_from_prefix(&prefix, &data).expect("valid prefix"), cid);
        }
    }

    #[test]
    fn nested_length_cannot_escape_its_message() {
        // wantlist { entry { block: len 10 } } where the entry claims 2 bytes but
        // the cid field inside claims 10: the inner length must be checked
        // against the entry, not the frame.
        let mut bytes = vec![0x0a, 0x04, 0x0a, 0x02, 0x0a, 0x0a];
        bytes.extend_from_slice(&[0u8; 16]);
        assert!(WireMessage::decode(&Bytes::from(bytes)).is_err());
    }

    #[test]
    fn cid_v0_payload_and_blocks_field() {
        let data = b"\x0a\x02\x08\x01".to_vec();
        let cid = cid_v0_of(&data).expect("v0");
        assert_eq!(cid.version(), cid::Version::V0);
        assert_eq!(prefix_of(&cid).as_ref(), &[0x00, 0x70, 0x12, 0x20]);
        assert_eq!(
            cid_from_prefix(&prefix_of(&cid), &data).expect("v0 prefix"),
            cid
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        // sha1 outside git-raw
        assert!(cid_from_prefix(&[0x01, 0x55, 0x11, 0x14], b"x").is_err());
        // truncated sha2-256
        assert!(cid_from_prefix(&[0x01, 0x55, 0x12, 0x10], b"x").is_err());
        // unknown codec
        assert!(cid_from_prefix(&[0x01, 0x99, 0x01, 0x12, 0x20], b"x").is_err());
        // trailing bytes
        assert!(cid_from_prefix(&[0x01, 0x55, 0x12, 0x20, 0x00], b"x").is_err());
        // version 2
        assert!(cid_from_prefix(&[0x02, 0x55, 0x12, 0x20], b"x").is_err());
        // oversized block
        let big = vec![0u8; block::MAX_BLOCK_SIZE + 1];
        assert!(cid_from_prefix(&[0x01, 0x55, 0x12, 0x20], &big).is_err());
    }

    #[test]
    fn parse_cid_refuses_long_and_trailing() {
        let cid = cid_for(RAW, b"abc");
        let mut bytes = cid.to_bytes();
        assert_eq!(parse_cid(&bytes), Some(cid));
        bytes.push(0);
        assert_eq!(parse_cid(&bytes), None);
        assert_eq!(parse_cid(&[1u8; 200]), None);
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_frames_fail_early() {
        let message = WireMessage {
            pending_bytes: 7,
            ..WireMessage::default()
        };
        let frame = message.to_frame();
        let mut reader = futures::io::Cursor::new(frame.to_vec());
        let body = read_frame(&mut reader, 100)
            .await
            .expect("read")
            .expect("frame");
        assert_eq!(WireMessage::decode(&body).expect("decode"), message);
        assert!(read_frame(&mut reader, 100).await.expect("eof").is_none());

        let mut huge = BytesMut::new();
        put_varint(&mut huge, (MAX_FRAME_BYTES + 1) as u64);
        let mut reader = futures::io::Cursor::new(huge.to_vec());
        assert!(matches!(
            read_frame(&mut reader, MAX_FRAME_BYTES).await,
            Err(WireError::FrameTooLarge { .. })
        ));
    }
}
