//! The recipe object (`ipnix-tarball-recipe/1`, DAG-CBOR): what it holds,
//! its canonical encoding, and the strict decoding of untrusted bytes.
//!
//! A recipe links to the unpacked tree (a git tree, so `swh:1:dir:`), to the
//! large blobs of that tree (the same `blobs` list a path-info has, so GC,
//! CAR export and pin checks treat their git ids as covered), to blobs of
//! members the tree does not hold, and to the side streams that are too big
//! to sit inline. Everything needed to rebuild the tarball byte for byte is
//! either in this block or reachable from it: `ipnix dag export RECIPE`
//! carries recipe and tree in one CAR.
//!
//! Decoding refuses anything the reassembler could be lied to with: wrong
//! kinds of links, lengths that do not add up, parameters out of range,
//! non-canonical bytes.

use cid::Cid;
use ipld_core::ipld::Ipld;
use ipnix_bridge::pathinfo::LargeBlob;
use ipnix_store::block::{cid_for, DAG_CBOR, DAG_PB, GIT_RAW, MAX_BLOCK_SIZE, RAW, SHA1};
use std::collections::BTreeMap;

/// The `type` field of every recipe this code writes and reads.
pub const RECIPE_TYPE: &str = "ipnix-tarball-recipe/1";
/// Largest side stream kept inside the recipe block; bigger ones are UnixFS files.
pub const MAX_INLINE_STREAM: usize = 256 * 1024;
/// Largest tarball (and largest tar stream inside it) a recipe may describe.
pub const MAX_TARBALL_BYTES: u64 = 64 << 30;
/// Most gzip members / compressed streams in one tarball.
pub const MAX_MEMBERS: usize = 1 << 16;
/// Most DEFLATE chunks over all gzip members (about 256 KiB of gzip each).
pub const MAX_CHUNKS: usize = 1 << 20;

/// Layer names as `fallbacks` lists them.
pub const LAYER_COMPRESSION: &str = "compression";

/// Why a recipe block is not one this code accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    #[error("recipe is not DAG-CBOR: {0}")]
    Cbor(String),
    #[error("recipe block is {0} bytes, over the block size limit")]
    TooLarge(usize),
    #[error("recipe bytes are not canonical DAG-CBOR")]
    NonCanonical,
    #[error("recipe field {field}: {why}")]
    Field { field: String, why: String },
}

fn bad(field: &str, why: impl Into<String>) -> ObjectError {
    ObjectError::Field {
        field: field.to_owned(),
        why: why.into(),
    }
}

/// Bytes the recipe carries: inline, or a UnixFS file (raw leaves) it links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stream {
    Inline(Vec<u8>),
    File { cid: Cid, size: u64 },
}

impl Stream {
    pub fn len(&self) -> u64 {
        match self {
            Stream::Inline(bytes) => bytes.len() as u64,
            Stream::File { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes this stream adds to the recipe outside the recipe block.
    pub fn linked_bytes(&self) -> u64 {
        match self {
            Stream::Inline(_) => 0,
            Stream::File { size, .. } => *size,
        }
    }
}

/// One DEFLATE chunk of a gzip member: this many plain bytes, rebuilt with
/// this many bytes of preflate corrections (taken in order from the
/// `corrections` stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateChunk {
    pub plain: u64,
    pub corrections: u64,
}

/// One gzip member: its header bytes verbatim (mtime, xfl, os, name,
/// comment, extra, header CRC), its DEFLATE chunks, its 8-byte trailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipMember {
    pub header: Vec<u8>,
    pub chunks: Vec<DeflateChunk>,
    pub trailer: [u8; 8],
}

/// How the tar stream becomes the tarball's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip members rebuilt by preflate.
    Gzip {
        members: Vec<GzipMember>,
        corrections: Stream,
    },
    /// bzip2 streams (one, or pbzip2's many), each `plain` bytes of tar.
    Bzip2 { level: u32, streams: Vec<u64> },
    /// xz streams with liblzma's preset (and `extreme`), check type, and for
    /// the multi-threaded encoder its block size.
    Xz {
        preset: u32,
        extreme: bool,
        check: u32,
        block_size: Option<u64>,
        streams: Vec<u64>,
    },
    /// zstd frames at a level, with the frame header flags.
    Zstd {
        level: i32,
        checksum: bool,
        content_size: bool,
        streams: Vec<u64>,
    },
    /// Fallback: no parameters reproduced the bytes; the whole file is kept.
    Raw { data: Stream },
}

impl Compression {
    pub fn kind(&self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip { .. } => "gzip",
            Compression::Bzip2 { .. } => "bzip2",
            Compression::Xz { .. } => "xz",
            Compression::Zstd { .. } => "zstd",
            Compression::Raw { .. } => "raw",
        }
    }
}

/// The tar layer: the member records (header differences, names, order;
/// zstd-compressed) and the extra bytes the tree cannot give (raw member
/// data, non-zero padding, the end of the archive; zstd-compressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// Length of the tar stream.
    pub tar_bytes: u64,
    /// Number of member records.
    pub members: u64,
    pub records: Stream,
    pub extra: Stream,
}

/// A decoded, validated recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// `tar`, `tar.gz`, `tar.bz2`, `tar.xz`, `tar.zst`.
    pub format: String,
    /// The tarball's length and hashes.
    pub size: u64,
    pub sha256: [u8; 32],
    pub sha512: [u8; 64],
    pub sha1: [u8; 20],
    /// The unpacked tree (git tree, top-level folder kept).
    pub tree: Cid,
    /// Large blobs of the tree and of the extra blobs, sorted by git CID bytes.
    pub blobs: Vec<LargeBlob>,
    /// Blobs of members the tree does not hold (overwritten duplicates).
    pub extra_blobs: Vec<Cid>,
    pub compression: Compression,
    /// Bytes after the last compressed stream.
    pub trailing: Stream,
    pub archive: Archive,
    /// Layers that could not be regenerated and are kept as bytes.
    pub fallbacks: Vec<String>,
}

fn stream_ipld(stream: &Stream) -> Ipld {
    match stream {
        Stream::Inline(bytes) => Ipld::Bytes(bytes.clone()),
        Stream::File { cid, size } => Ipld::Map(BTreeMap::from([
            ("file".to_owned(), Ipld::Link(*cid)),
            ("size".to_owned(), Ipld::Integer((*size).into())),
        ])),
    }
}

fn int(v: u64) -> Ipld {
    Ipld::Integer(v.into())
}

fn streams_ipld(streams: &[u64]) -> Ipld {
    Ipld::List(streams.iter().map(|&n| int(n)).collect())
}

impl Recipe {
    fn to_ipld(&self) -> Ipld {
        let mut map: BTreeMap<String, Ipld> = BTreeMap::new();
        let s = |v: &str| Ipld::String(v.to_owned());
        map.insert("type".into(), s(RECIPE_TYPE));
        map.insert("format".into(), s(&self.format));
        map.insert("size".into(), int(self.size));
        map.insert("sha256".into(), Ipld::Bytes(self.sha256.to_vec()));
        map.insert("sha512".into(), Ipld::Bytes(self.sha512.to_vec()));
        map.insert("sha1".into(), Ipld::Bytes(self.sha1.to_vec()));
        map.insert("tree".into(), Ipld::Link(self.tree));
        map.insert(
            "blobs".into(),
            Ipld::List(
                self.blobs
                    .iter()
                    .map(|b| {
                        Ipld::Map(BTreeMap::from([
                            ("git".to_owned(), Ipld::Link(b.git)),
                            ("unixfs".to_owned(), Ipld::Link(b.unixfs)),
                            ("size".to_owned(), int(b.size)),
                        ]))
                    })
                    .collect(),
            ),
        );
        map.insert(
            "extraBlobs".into(),
            Ipld::List(self.extra_blobs.iter().map(|c| Ipld::Link(*c)).collect()),
        );
        let mut c: BTreeMap<String, Ipld> = BTreeMap::new();
        c.insert("kind".into(), s(self.compression.kind()));
        match &self.compression {
            Compression::None => {}
            Compression::Gzip {
                members,
                corrections,
            } => {
                c.insert("corrections".into(), stream_ipld(corrections));
                c.insert(
                    "members".into(),
                    Ipld::List(
                        members
                            .iter()
                            .map(|m| {
                                Ipld::Map(BTreeMap::from([
                                    ("header".to_owned(), Ipld::Bytes(m.header.clone())),
                                    ("trailer".to_owned(), Ipld::Bytes(m.trailer.to_vec())),
                                    (
                                        "chunks".to_owned(),
                                        Ipld::List(
                                            m.chunks
                                                .iter()
                                                .map(|k| {
                                                    Ipld::List(vec![
                                                        int(k.plain),
                                                        int(k.corrections),
                                                    ])
                                                })
                                                .collect(),
                                        ),
                                    ),
                                ]))
                            })
                            .collect(),
                    ),
                );
            }
            Compression::Bzip2 { level, streams } => {
                c.insert("level".into(), int((*level).into()));
                c.insert("streams".into(), streams_ipld(streams));
            }
            Compression::Xz {
                preset,
                extreme,
                check,
                block_size,
                streams,
            } => {
                c.insert("preset".into(), int((*preset).into()));
                c.insert("extreme".into(), Ipld::Bool(*extreme));
                c.insert("check".into(), int((*check).into()));
                if let Some(block_size) = block_size {
                    c.insert("blockSize".into(), int(*block_size));
                }
                c.insert("streams".into(), streams_ipld(streams));
            }
            Compression::Zstd {
                level,
                checksum,
                content_size,
                streams,
            } => {
                c.insert("level".into(), Ipld::Integer((*level).into()));
                c.insert("checksum".into(), Ipld::Bool(*checksum));
                c.insert("contentSize".into(), Ipld::Bool(*content_size));
                c.insert("streams".into(), streams_ipld(streams));
            }
            Compression::Raw { data } => {
                c.insert("data".into(), stream_ipld(data));
            }
        }
        map.insert("compression".into(), Ipld::Map(c));
        map.insert("trailing".into(), stream_ipld(&self.trailing));
        map.insert(
            "archive".into(),
            Ipld::Map(BTreeMap::from([
                ("kind".to_owned(), s("tar")),
                ("tarBytes".to_owned(), int(self.archive.tar_bytes)),
                ("members".to_owned(), int(self.archive.members)),
                ("records".to_owned(), stream_ipld(&self.archive.records)),
                ("extra".to_owned(), stream_ipld(&self.archive.extra)),
            ])),
        );
        map.insert(
            "fallbacks".into(),
            Ipld::List(self.fallbacks.iter().map(|f| s(f)).collect()),
        );
        Ipld::Map(map)
    }

    /// Canonical DAG-CBOR bytes and their CID; validates first.
    pub fn to_block(&self) -> Result<(Cid, Vec<u8>), ObjectError> {
        self.validate()?;
        let bytes = serde_ipld_dagcbor::to_vec(&self.to_ipld())
            .map_err(|e| ObjectError::Cbor(e.to_string()))?;
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(ObjectError::TooLarge(bytes.len()));
        }
        Ok((cid_for(DAG_CBOR, &bytes), bytes))
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Recipe, ObjectError> {
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(ObjectError::TooLarge(bytes.len()));
        }
        let ipld: Ipld =
            serde_ipld_dagcbor::from_slice(bytes).map_err(|e| ObjectError::Cbor(e.to_string()))?;
        let recipe = from_ipld(ipld)?;
        recipe.validate()?;
        let again = serde_ipld_dagcbor::to_vec(&recipe.to_ipld())
            .map_err(|e| ObjectError::Cbor(e.to_string()))?;
        if again != bytes {
            return Err(ObjectError::NonCanonical);
        }
        Ok(recipe)
    }

    /// Bytes the recipe costs beyond the tree: the block itself is counted
    /// by the caller; this is the linked side streams and extra blobs.
    pub fn linked_bytes(&self) -> u64 {
        let compression = match &self.compression {
            Compression::Gzip { corrections, .. } => corrections.linked_bytes(),
            Compression::Raw { data } => data.linked_bytes(),
            _ => 0,
        };
        compression
            + self.trailing.linked_bytes()
            + self.archive.records.linked_bytes()
            + self.archive.extra.linked_bytes()
    }

    /// The plain tar bytes each compressed stream holds, in order.
    fn stream_plains(&self) -> Option<Vec<u64>> {
        match &self.compression {
            Compression::Gzip { members, .. } => Some(
                members
                    .iter()
                    .map(|m| m.chunks.iter().map(|c| c.plain).sum())
                    .collect(),
            ),
            Compression::Bzip2 { streams, .. }
            | Compression::Xz { streams, .. }
            | Compression::Zstd { streams, .. } => Some(streams.clone()),
            Compression::None | Compression::Raw { .. } => None,
        }
    }

    /// Every rule a reassembler relies on.
    pub fn validate(&self) -> Result<(), ObjectError> {
        let expected_format = match &self.compression {
            Compression::None => Some("tar"),
            Compression::Gzip { .. } => Some("tar.gz"),
            Compression::Bzip2 { .. } => Some("tar.bz2"),
            Compression::Xz { .. } => Some("tar.xz"),
            Compression::Zstd { .. } => Some("tar.zst"),
            Compression::Raw { .. } => None,
        };
        if !["tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst"].contains(&self.format.as_str()) {
            return Err(bad("format", format!("unknown format {:?}", self.format)));
        }
        if let Some(expected) = expected_format {
            if self.format != expected {
                return Err(bad(
                    "format",
                    format!("{:?} with {} compression", self.format, expected),
                ));
            }
        }
        if self.size > MAX_TARBALL_BYTES {
            return Err(bad("size", "over the tarball size limit"));
        }
        check_git(&self.tree, "tree")?;
        let mut previous: Option<Vec<u8>> = None;
        for blob in &self.blobs {
            check_git(&blob.git, "blobs.git")?;
            check_unixfs(&blob.unixfs, "blobs.unixfs")?;
            if blob.size > MAX_TARBALL_BYTES {
                return Err(bad("blobs.size", "over the size limit"));
            }
            let key = blob.git.to_bytes();
            if previous.as_ref().is_some_and(|p| *p >= key) {
                return Err(bad("blobs", "not sorted by git CID, or a duplicate"));
            }
            previous = Some(key);
        }
        for blob in &self.extra_blobs {
            check_git(blob, "extraBlobs")?;
        }
        check_stream(&self.trailing, "trailing")?;
        check_stream(&self.archive.records, "archive.records")?;
        check_stream(&self.archive.extra, "archive.extra")?;
        if self.archive.tar_bytes > MAX_TARBALL_BYTES {
            return Err(bad("archive.tarBytes", "over the size limit"));
        }
        if self.archive.members > self.archive.tar_bytes / 512 + 1 {
            return Err(bad(
                "archive.members",
                "more members than the tar has blocks",
            ));
        }
        match &self.compression {
            Compression::None => {
                if self.archive.tar_bytes + self.trailing.len() != self.size {
                    return Err(bad("size", "tar bytes and trailing bytes do not add up"));
                }
            }
            Compression::Gzip {
                members,
                corrections,
            } => {
                check_stream(corrections, "compression.corrections")?;
                if members.is_empty() || members.len() > MAX_MEMBERS {
                    return Err(bad("compression.members", "none, or too many"));
                }
                let mut chunks = 0usize;
                let mut correction_bytes = 0u64;
                for m in members {
                    if m.header.len() < 10
                        || m.header.len() > MAX_INLINE_STREAM
                        || m.header[..3] != [0x1f, 0x8b, 8]
                    {
                        return Err(bad("compression.members.header", "not a gzip header"));
                    }
                    chunks += m.chunks.len();
                    for c in &m.chunks {
                        correction_bytes = correction_bytes.saturating_add(c.corrections);
                    }
                }
                if chunks > MAX_CHUNKS {
                    return Err(bad("compression.members.chunks", "too many chunks"));
                }
                if correction_bytes != corrections.len() {
                    return Err(bad(
                        "compression.corrections",
                        "length differs from the chunks' total",
                    ));
                }
            }
            Compression::Bzip2 { level, .. } => {
                if !(1..=9).contains(level) {
                    return Err(bad("compression.level", "bzip2 levels are 1-9"));
                }
            }
            Compression::Xz {
                preset,
                check,
                block_size,
                ..
            } => {
                if *preset > 9 {
                    return Err(bad("compression.preset", "xz presets are 0-9"));
                }
                if ![0, 1, 4, 10].contains(check) {
                    return Err(bad("compression.check", "not an xz check type"));
                }
                if block_size.is_some_and(|b| b == 0 || b > MAX_TARBALL_BYTES) {
                    return Err(bad("compression.blockSize", "out of range"));
                }
            }
            Compression::Zstd { level, .. } => {
                if !(1..=22).contains(level) {
                    return Err(bad("compression.level", "zstd levels are 1-22"));
                }
            }
            Compression::Raw { data } => {
                check_stream(data, "compression.data")?;
                if data.len() + self.trailing.len() != self.size {
                    return Err(bad("compression.data", "length differs from the tarball's"));
                }
                if !self.fallbacks.iter().any(|f| f == LAYER_COMPRESSION) {
                    return Err(bad("fallbacks", "raw compression not listed as a fallback"));
                }
            }
        }
        if let Some(plains) = self.stream_plains() {
            if plains.is_empty() || plains.len() > MAX_MEMBERS {
                return Err(bad("compression.streams", "none, or too many"));
            }
            let total = plains.iter().try_fold(0u64, |a, &b| a.checked_add(b));
            if total != Some(self.archive.tar_bytes) {
                return Err(bad(
                    "compression",
                    "streams' plain lengths do not add up to the tar's",
                ));
            }
        }
        for f in &self.fallbacks {
            if f != LAYER_COMPRESSION {
                return Err(bad("fallbacks", format!("unknown layer {f:?}")));
            }
        }
        Ok(())
    }
}

fn check_git(cid: &Cid, field: &str) -> Result<(), ObjectError> {
    if cid.codec() != GIT_RAW || cid.hash().code() != SHA1 || cid.hash().size() != 20 {
        return Err(bad(field, format!("{cid} is not a git-raw SHA-1 CID")));
    }
    Ok(())
}

fn check_unixfs(cid: &Cid, field: &str) -> Result<(), ObjectError> {
    if cid.codec() != RAW && cid.codec() != DAG_PB {
        return Err(bad(
            field,
            format!("{cid} is not a UnixFS file (raw or dag-pb)"),
        ));
    }
    Ok(())
}

fn check_stream(stream: &Stream, field: &str) -> Result<(), ObjectError> {
    match stream {
        Stream::Inline(bytes) if bytes.len() > MAX_INLINE_STREAM => {
            Err(bad(field, "inline stream over the inline limit"))
        }
        Stream::Inline(_) => Ok(()),
        Stream::File { cid, size } => {
            check_unixfs(cid, field)?;
            if *size > MAX_TARBALL_BYTES {
                return Err(bad(field, "stream over the size limit"));
            }
            Ok(())
        }
    }
}

type Map = BTreeMap<String, Ipld>;

fn take(map: &mut Map, field: &str) -> Result<Ipld, ObjectError> {
    map.remove(field).ok_or_else(|| bad(field, "missing"))
}

fn as_u64(v: Ipld, field: &str) -> Result<u64, ObjectError> {
    match v {
        Ipld::Integer(i) => u64::try_from(i).map_err(|_| bad(field, "not a u64")),
        _ => Err(bad(field, "not an integer")),
    }
}

fn as_u32(v: Ipld, field: &str) -> Result<u32, ObjectError> {
    u32::try_from(as_u64(v, field)?).map_err(|_| bad(field, "out of range"))
}

fn as_bool(v: Ipld, field: &str) -> Result<bool, ObjectError> {
    match v {
        Ipld::Bool(b) => Ok(b),
        _ => Err(bad(field, "not a boolean")),
    }
}

fn as_bytes(v: Ipld, field: &str) -> Result<Vec<u8>, ObjectError> {
    match v {
        Ipld::Bytes(b) => Ok(b),
        _ => Err(bad(field, "not bytes")),
    }
}

fn as_array<const N: usize>(v: Ipld, field: &str) -> Result<[u8; N], ObjectError> {
    as_bytes(v, field)?
        .try_into()
        .map_err(|_| bad(field, format!("not {N} bytes")))
}

fn as_link(v: Ipld, field: &str) -> Result<Cid, ObjectError> {
    match v {
        Ipld::Link(c) => Ok(c),
        _ => Err(bad(field, "not a link")),
    }
}

fn as_string(v: Ipld, field: &str) -> Result<String, ObjectError> {
    match v {
        Ipld::String(s) => Ok(s),
        _ => Err(bad(field, "not a string")),
    }
}

fn as_list(v: Ipld, field: &str) -> Result<Vec<Ipld>, ObjectError> {
    match v {
        Ipld::List(l) => Ok(l),
        _ => Err(bad(field, "not a list")),
    }
}

fn as_map(v: Ipld, field: &str) -> Result<Map, ObjectError> {
    match v {
        Ipld::Map(m) => Ok(m),
        _ => Err(bad(field, "not a map")),
    }
}

fn no_more(map: Map, field: &str) -> Result<(), ObjectError> {
    match map.keys().next() {
        Some(key) => Err(bad(field, format!("unknown field {key:?}"))),
        None => Ok(()),
    }
}

fn as_stream(v: Ipld, field: &str) -> Result<Stream, ObjectError> {
    match v {
        Ipld::Bytes(b) => Ok(Stream::Inline(b)),
        Ipld::Map(mut m) => {
            let cid = as_link(take(&mut m, "file")?, field)?;
            let size = as_u64(take(&mut m, "size")?, field)?;
            no_more(m, field)?;
            Ok(Stream::File { cid, size })
        }
        _ => Err(bad(field, "not bytes or a file link")),
    }
}

fn as_streams(v: Ipld, field: &str) -> Result<Vec<u64>, ObjectError> {
    as_list(v, field)?
        .into_iter()
        .map(|n| as_u64(n, field))
        .collect()
}

fn from_ipld(ipld: Ipld) -> Result<Recipe, ObjectError> {
    let mut map = as_map(ipld, "recipe")?;
    let kind = as_string(take(&mut map, "type")?, "type")?;
    if kind != RECIPE_TYPE {
        return Err(bad("type", format!("{kind:?} is not {RECIPE_TYPE:?}")));
    }
    let format = as_string(take(&mut map, "format")?, "format")?;
    let size = as_u64(take(&mut map, "size")?, "size")?;
    let sha256 = as_array(take(&mut map, "sha256")?, "sha256")?;
    let sha512 = as_array(take(&mut map, "sha512")?, "sha512")?;
    let sha1 = as_array(take(&mut map, "sha1")?, "sha1")?;
    let tree = as_link(take(&mut map, "tree")?, "tree")?;
    let mut blobs = Vec::new();
    for item in as_list(take(&mut map, "blobs")?, "blobs")? {
        let mut m = as_map(item, "blobs")?;
        blobs.push(LargeBlob {
            git: as_link(take(&mut m, "git")?, "blobs.git")?,
            unixfs: as_link(take(&mut m, "unixfs")?, "blobs.unixfs")?,
            size: as_u64(take(&mut m, "size")?, "blobs.size")?,
        });
        no_more(m, "blobs")?;
    }
    let extra_blobs = as_list(take(&mut map, "extraBlobs")?, "extraBlobs")?
        .into_iter()
        .map(|v| as_link(v, "extraBlobs"))
        .collect::<Result<_, _>>()?;
    let mut c = as_map(take(&mut map, "compression")?, "compression")?;
    let ckind = as_string(take(&mut c, "kind")?, "compression.kind")?;
    let compression = match ckind.as_str() {
        "none" => Compression::None,
        "gzip" => {
            let corrections = as_stream(take(&mut c, "corrections")?, "compression.corrections")?;
            let mut members = Vec::new();
            for item in as_list(take(&mut c, "members")?, "compression.members")? {
                let mut m = as_map(item, "compression.members")?;
                let header = as_bytes(take(&mut m, "header")?, "compression.members.header")?;
                let trailer = as_array(take(&mut m, "trailer")?, "compression.members.trailer")?;
                let mut chunks = Vec::new();
                for chunk in as_list(take(&mut m, "chunks")?, "compression.members.chunks")? {
                    let pair = as_list(chunk, "compression.members.chunks")?;
                    let [plain, corrections]: [Ipld; 2] = pair
                        .try_into()
                        .map_err(|_| bad("compression.members.chunks", "not a pair"))?;
                    chunks.push(DeflateChunk {
                        plain: as_u64(plain, "compression.members.chunks")?,
                        corrections: as_u64(corrections, "compression.members.chunks")?,
                    });
                }
                no_more(m, "compression.members")?;
                members.push(GzipMember {
                    header,
                    chunks,
                    trailer,
                });
            }
            Compression::Gzip {
                members,
                corrections,
            }
        }
        "bzip2" => Compression::Bzip2 {
            level: as_u32(take(&mut c, "level")?, "compression.level")?,
            streams: as_streams(take(&mut c, "streams")?, "compression.streams")?,
        },
        "xz" => Compression::Xz {
            preset: as_u32(take(&mut c, "preset")?, "compression.preset")?,
            extreme: as_bool(take(&mut c, "extreme")?, "compression.extreme")?,
            check: as_u32(take(&mut c, "check")?, "compression.check")?,
            block_size: c
                .remove("blockSize")
                .map(|v| as_u64(v, "compression.blockSize"))
                .transpose()?,
            streams: as_streams(take(&mut c, "streams")?, "compression.streams")?,
        },
        "zstd" => Compression::Zstd {
            level: match take(&mut c, "level")? {
                Ipld::Integer(i) => {
                    i32::try_from(i).map_err(|_| bad("compression.level", "out of range"))?
                }
                _ => return Err(bad("compression.level", "not an integer")),
            },
            checksum: as_bool(take(&mut c, "checksum")?, "compression.checksum")?,
            content_size: as_bool(take(&mut c, "contentSize")?, "compression.contentSize")?,
            streams: as_streams(take(&mut c, "streams")?, "compression.streams")?,
        },
        "raw" => Compression::Raw {
            data: as_stream(take(&mut c, "data")?, "compression.data")?,
        },
        other => return Err(bad("compression.kind", format!("unknown kind {other:?}"))),
    };
    no_more(c, "compression")?;
    let trailing = as_stream(take(&mut map, "trailing")?, "trailing")?;
    let mut a = as_map(take(&mut map, "archive")?, "archive")?;
    let akind = as_string(take(&mut a, "kind")?, "archive.kind")?;
    if akind != "tar" {
        return Err(bad("archive.kind", format!("unknown kind {akind:?}")));
    }
    let archive = Archive {
        tar_bytes: as_u64(take(&mut a, "tarBytes")?, "archive.tarBytes")?,
        members: as_u64(take(&mut a, "members")?, "archive.members")?,
        records: as_stream(take(&mut a, "records")?, "archive.records")?,
        extra: as_stream(take(&mut a, "extra")?, "archive.extra")?,
    };
    no_more(a, "archive")?;
    let fallbacks = as_list(take(&mut map, "fallbacks")?, "fallbacks")?
        .into_iter()
        .map(|v| as_string(v, "fallbacks"))
        .collect::<Result<_, _>>()?;
    no_more(map, "recipe")?;
    Ok(Recipe {
        format,
        size,
        sha256,
        sha512,
        sha1,
        tree,
        blobs,
        extra_blobs,
        compression,
        trailing,
        archive,
        fallbacks,
    })
}
