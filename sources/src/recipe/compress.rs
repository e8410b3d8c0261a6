//! The compression layer of a tarball recipe: finding how the tar stream was
//! compressed (gzip through preflate's reconstruction data; bzip2, xz and
//! zstd by a parameter search whose every candidate is checked against the
//! original bytes as it is produced, stopping at the first difference), and
//! re-encoding a tar stream with what was found.
//!
//! Memory: gzip is analysed and rebuilt in DEFLATE chunks of about
//! [`GZIP_CHUNK`] compressed bytes, each holding at most
//! [`MAX_CHUNK_PLAIN`] plain bytes plus preflate's 32 KiB dictionary; the
//! other codecs stream through their libraries' fixed buffers (xz's
//! multi-threaded encoder holds one block). Nothing grows with the tarball.

use super::object::{Compression, DeflateChunk, GzipMember, MAX_CHUNKS, MAX_MEMBERS};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// Compressed bytes handed to preflate at once.
pub const GZIP_CHUNK: usize = 256 * 1024;
/// Largest compressed window tried when one DEFLATE block is longer.
const MAX_GZIP_WINDOW: usize = 16 << 20;
/// Most plain bytes one DEFLATE chunk may hold (a recipe saying more is refused).
pub const MAX_CHUNK_PLAIN: u64 = 64 << 20;
/// Most correction bytes one chunk may hold.
pub const MAX_CHUNK_CORRECTIONS: u64 = 64 << 20;
/// Buffer for reading compressed input.
const READ_BUFFER: usize = 64 * 1024;

/// A compression container, as its magic bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Codec {
    fn starts(self, head: &[u8]) -> bool {
        match self {
            Codec::Gzip => head.starts_with(&[0x1f, 0x8b, 8]),
            Codec::Bzip2 => {
                head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3])
            }
            Codec::Xz => head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Codec::Zstd => head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
        }
    }
}

/// Counts the bytes read from the file, to tell where a stream ended.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

type Input = BufReader<Counting<io::Take<File>>>;

enum Current {
    Idle(Input),
    Gzip(flate2::bufread::GzDecoder<Input>),
    Bzip2(bzip2::bufread::BzDecoder<Input>),
    Xz(xz2::bufread::XzDecoder<Input>),
    Zstd(zstd::stream::read::Decoder<'static, Input>),
    Done,
}

/// Consecutive compressed streams of one codec read as one plain stream,
/// noting where each ended and how many plain bytes it gave. Stops at the
/// end of the input or at bytes that do not start another stream.
pub(crate) struct MultiStream {
    codec: Codec,
    current: Current,
    plain_in_stream: u64,
    /// (plain bytes, compressed end offset) per finished stream.
    pub streams: Vec<(u64, u64)>,
}

impl MultiStream {
    /// Streams in the first `end` bytes of `file`.
    pub fn new(codec: Codec, mut file: File, end: u64) -> io::Result<MultiStream> {
        file.seek(SeekFrom::Start(0))?;
        let input = BufReader::with_capacity(
            READ_BUFFER,
            Counting {
                inner: file.take(end),
                count: 0,
            },
        );
        let mut this = MultiStream {
            codec,
            current: Current::Idle(input),
            plain_in_stream: 0,
            streams: Vec::new(),
        };
        this.start_next()?;
        Ok(this)
    }

    fn start_next(&mut self) -> io::Result<()> {
        let Current::Idle(mut input) = std::mem::replace(&mut self.current, Current::Done) else {
            return Ok(());
        };
        let head = input.fill_buf()?;
        if !self.codec.starts(head) || self.streams.len() >= MAX_MEMBERS {
            self.current = Current::Idle(input);
            return Ok(());
        }
        self.plain_in_stream = 0;
        self.current = match self.codec {
            Codec::Gzip => Current::Gzip(flate2::bufread::GzDecoder::new(input)),
            Codec::Bzip2 => Current::Bzip2(bzip2::bufread::BzDecoder::new(input)),
            Codec::Xz => Current::Xz(xz2::bufread::XzDecoder::new(input)),
            Codec::Zstd => {
                Current::Zstd(zstd::stream::read::Decoder::with_buffer(input)?.single_frame())
            }
        };
        Ok(())
    }

    /// Where the last finished stream ended (0 before any).
    pub fn end(&self) -> u64 {
        self.streams.last().map_or(0, |s| s.1)
    }
}

fn consumed(input: &Input) -> u64 {
    input.get_ref().count - input.buffer().len() as u64
}

impl Read for MultiStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = match &mut self.current {
                Current::Idle(_) | Current::Done => return Ok(0),
                Current::Gzip(d) => d.read(buf)?,
                Current::Bzip2(d) => d.read(buf)?,
                Current::Xz(d) => d.read(buf)?,
                Current::Zstd(d) => d.read(buf)?,
            };
            if n > 0 || buf.is_empty() {
                self.plain_in_stream += n as u64;
                return Ok(n);
            }
            let input = match std::mem::replace(&mut self.current, Current::Done) {
                Current::Gzip(d) => d.into_inner(),
                Current::Bzip2(d) => d.into_inner(),
                Current::Xz(d) => d.into_inner(),
                Current::Zstd(d) => d.finish(),
                Current::Idle(_) | Current::Done => unreachable!("handled above"),
            };
            self.streams.push((self.plain_in_stream, consumed(&input)));
            self.current = Current::Idle(input);
            self.start_next()?;
        }
    }
}

/// What the analysis found, with the gzip corrections still to be stored.
#[derive(Debug)]
pub(crate) struct Found {
    pub compression: Compression,
    /// Where the bytes after the compressed streams start.
    pub stream_end: u64,
}

/// A layer that could not be reproduced, and why.
#[derive(Debug)]
pub(crate) struct NotReproduced(pub String);

/// Analyses a gzip file with preflate, writing the corrections to
/// `corrections`. The `Compression::Gzip` returned holds an empty inline
/// stream in place of the corrections.
pub(crate) fn analyse_gzip(
    file: &File,
    len: u64,
    corrections: &mut dyn Write,
) -> Result<Result<Found, NotReproduced>, io::Error> {
    let config = preflate_rs::PreflateConfig {
        max_chain_length: 4096,
        plain_text_limit: MAX_CHUNK_PLAIN as usize,
        verify_compression: true,
    };
    let mut members = Vec::new();
    let mut pos = 0u64;
    let mut chunk_count = 0usize;
    loop {
        let Some(header) = read_gzip_header(file, pos, len)? else {
            return Ok(Err(NotReproduced(format!(
                "gzip header at byte {pos} is not one this code reads"
            ))));
        };
        let mut offset = pos + header.len() as u64;
        let mut processor = preflate_rs::PreflateStreamProcessor::new(&config);
        let mut chunks = Vec::new();
        let mut window = GZIP_CHUNK;
        let mut buf = Vec::new();
        while !processor.is_done() {
            let avail = len - offset;
            let n = (window as u64).min(avail) as usize;
            buf.resize(n, 0);
            file.read_exact_at(&mut buf, offset)?;
            // preflate is a large body of untrusted-input code: a panic on
            // some odd stream is a fallback, not a crash.
            quiet_preflate_panics();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                processor.decompress(&buf)
            }));
            match result {
                Ok(Ok(r)) => {
                    let plain = processor.plain_text().len() as u64;
                    corrections.write_all(&r.corrections)?;
                    chunks.push(DeflateChunk {
                        plain,
                        corrections: r.corrections.len() as u64,
                    });
                    chunk_count += 1;
                    if chunk_count > MAX_CHUNKS {
                        return Ok(Err(NotReproduced("too many DEFLATE chunks".into())));
                    }
                    offset += r.compressed_size as u64;
                    processor.shrink_to_dictionary();
                    window = if r.compressed_size == 0 {
                        window * 2
                    } else {
                        GZIP_CHUNK
                    };
                    if window > MAX_GZIP_WINDOW {
                        return Ok(Err(NotReproduced("DEFLATE block too long".into())));
                    }
                }
                Ok(Err(e))
                    if e.exit_code() == preflate_rs::ExitCode::ShortRead
                        && (n as u64) < avail
                        && window < MAX_GZIP_WINDOW =>
                {
                    window *= 2;
                }
                Ok(Err(e)) => {
                    return Ok(Err(NotReproduced(format!(
                        "preflate: {:?}: {}",
                        e.exit_code(),
                        e.message()
                    ))))
                }
                Err(_) => return Ok(Err(NotReproduced("preflate panicked".into()))),
            }
        }
        if len - offset < 8 {
            return Ok(Err(NotReproduced("gzip member without its trailer".into())));
        }
        let mut trailer = [0u8; 8];
        file.read_exact_at(&mut trailer, offset)?;
        members.push(GzipMember {
            header,
            chunks,
            trailer,
        });
        pos = offset + 8;
        if pos >= len || members.len() >= MAX_MEMBERS {
            break;
        }
        let mut head = [0u8; 3];
        let n = (len - pos).min(3) as usize;
        file.read_exact_at(&mut head[..n], pos)?;
        if !Codec::Gzip.starts(&head[..n]) {
            break;
        }
    }
    Ok(Ok(Found {
        compression: Compression::Gzip {
            members,
            corrections: super::object::Stream::Inline(Vec::new()),
        },
        stream_end: pos,
    }))
}

/// The header of a gzip member at `pos`, verbatim, or `None` if it is not
/// a deflate gzip header that ends inside the file.
fn read_gzip_header(file: &File, pos: u64, len: u64) -> io::Result<Option<Vec<u8>>> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let mut reader = BufReader::with_capacity(
        4096,
        PositionedReader {
            file,
            pos,
            end: len,
        },
    );
    let mut header = vec![0u8; 10];
    if reader.read_exact(&mut header).is_err() || header[..3] != [0x1f, 0x8b, 8] {
        return Ok(None);
    }
    let flags = header[3];
    if flags & 0xe0 != 0 {
        return Ok(None);
    }
    if flags & FEXTRA != 0 {
        let mut xlen = [0u8; 2];
        if reader.read_exact(&mut xlen).is_err() {
            return Ok(None);
        }
        header.extend_from_slice(&xlen);
        let mut extra = vec![0u8; u16::from_le_bytes(xlen) as usize];
        if reader.read_exact(&mut extra).is_err() {
            return Ok(None);
        }
        header.extend_from_slice(&extra);
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let mut text = Vec::new();
            let n = (&mut reader).take(64 * 1024).read_until(0, &mut text)?;
            if n == 0 || text.last() != Some(&0) {
                return Ok(None);
            }
            header.extend_from_slice(&text);
        }
    }
    if flags & FHCRC != 0 {
        let mut crc = [0u8; 2];
        if reader.read_exact(&mut crc).is_err() {
            return Ok(None);
        }
        header.extend_from_slice(&crc);
    }
    Ok(Some(header))
}

struct PositionedReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for PositionedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Fails at the first byte that differs from the original's.
struct CompareWriter<'a> {
    original: PositionedReader<'a>,
    buf: Vec<u8>,
}

impl Write for CompareWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.resize(data.len(), 0);
        let mut filled = 0;
        while filled < data.len() {
            let n = self.original.read(&mut self.buf[filled..])?;
            if n == 0 {
                return Err(io::Error::other("longer than the original"));
            }
            filled += n;
        }
        if self.buf[..] != *data {
            return Err(io::Error::other("differs from the original"));
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Parameters of one bzip2/xz/zstd candidate (streams left empty).
fn candidates(codec: Codec, file: &File, len: u64) -> io::Result<Vec<Compression>> {
    let mut head = vec![0u8; len.min(64) as usize];
    file.read_exact_at(&mut head, 0)?;
    Ok(match codec {
        Codec::Gzip => Vec::new(),
        Codec::Bzip2 => vec![Compression::Bzip2 {
            level: u32::from(head[3] - b'0'),
            streams: Vec::new(),
        }],
        Codec::Xz => {
            let check = u32::from(head.get(7).copied().unwrap_or(0) & 0x0f);
            let (multi, dict) = xz_block_hints(&head);
            let mut presets: Vec<u32> = (0..=9).collect();
            // Presets whose dictionary the block header names go first.
            presets.sort_by_key(|p| (dict.is_some_and(|d| xz_dict(*p) != d), *p != 6, *p != 9));
            let mut out = Vec::new();
            for preset in presets {
                for extreme in [false, true] {
                    for mt in [multi, !multi] {
                        out.push(Compression::Xz {
                            preset,
                            extreme,
                            check,
                            block_size: mt.then_some(0),
                            streams: Vec::new(),
                        });
                    }
                }
            }
            out
        }
        Codec::Zstd => {
            let descriptor = head.get(4).copied().unwrap_or(0);
            let checksum = descriptor & 4 != 0;
            let content_size = descriptor >> 6 != 0 || descriptor & 0x20 != 0;
            let mut levels = vec![3, 19];
            levels.extend((1..=22).filter(|l| *l != 3 && *l != 19));
            levels
                .into_iter()
                .map(|level| Compression::Zstd {
                    level,
                    checksum,
                    content_size,
                    streams: Vec::new(),
                })
                .collect()
        }
    })
}

/// The dictionary size of an xz preset (liblzma's table).
fn xz_dict(preset: u32) -> u64 {
    match preset {
        0 => 256 << 10,
        1 => 1 << 20,
        2 => 2 << 20,
        3 | 4 => 4 << 20,
        5 | 6 => 8 << 20,
        7 => 16 << 20,
        8 => 32 << 20,
        _ => 64 << 20,
    }
}

/// From the first xz block header: whether it records its sizes (as the
/// multi-threaded encoder writes) and the LZMA2 dictionary size.
fn xz_block_hints(head: &[u8]) -> (bool, Option<u64>) {
    let Some(&flags) = head.get(13) else {
        return (false, None);
    };
    let multi = flags & 0xc0 != 0;
    let mut i = 14;
    let skip_varint = |i: &mut usize| {
        while head.get(*i).is_some_and(|b| b & 0x80 != 0) {
            *i += 1;
        }
        *i += 1;
    };
    if flags & 0x40 != 0 {
        skip_varint(&mut i);
    }
    if flags & 0x80 != 0 {
        skip_varint(&mut i);
    }
    // Filter id 0x21 (LZMA2), one property byte.
    let dict = match (head.get(i), head.get(i + 1), head.get(i + 2)) {
        (Some(0x21), Some(1), Some(&prop)) if prop <= 40 => {
            let prop = u64::from(prop);
            Some((2 | (prop & 1)) << (prop / 2 + 11))
        }
        _ => None,
    };
    (multi, dict)
}

/// Searches bzip2/xz/zstd parameters that rebuild every stream of `file`
/// (as `streams` found them: plain bytes and end offset) exactly.
pub(crate) fn search(
    codec: Codec,
    file: &File,
    len: u64,
    streams: &[(u64, u64)],
) -> io::Result<Result<Compression, NotReproduced>> {
    if streams.is_empty() {
        return Ok(Err(NotReproduced("no complete compressed stream".into())));
    }
    let plains: Vec<u64> = streams.iter().map(|s| s.0).collect();
    'candidates: for mut candidate in candidates(codec, file, len)? {
        set_streams(&mut candidate, plains.clone());
        let mut start = 0u64;
        for (i, &(plain, end)) in streams.iter().enumerate() {
            if !reencodes(&candidate, i, file, start, end, plain)? {
                continue 'candidates;
            }
            start = end;
        }
        return Ok(Ok(candidate));
    }
    Ok(Err(NotReproduced(format!(
        "no {codec:?} parameters reproduce the stream"
    ))))
}

fn set_streams(c: &mut Compression, plains: Vec<u64>) {
    match c {
        Compression::Bzip2 { streams, .. }
        | Compression::Xz { streams, .. }
        | Compression::Zstd { streams, .. } => *streams = plains,
        _ => {}
    }
}

/// Whether stream `index` (bytes `start..end` of `file`, `plain` bytes
/// decoded) re-encodes to exactly those bytes with `params`.
fn reencodes(
    params: &Compression,
    index: usize,
    file: &File,
    start: u64,
    end: u64,
    plain: u64,
) -> io::Result<bool> {
    let codec = match params {
        Compression::Bzip2 { .. } => Codec::Bzip2,
        Compression::Xz { .. } => Codec::Xz,
        _ => Codec::Zstd,
    };
    let original = file.try_clone()?;
    let mut decoded = MultiStream::new(codec, original, end)?;
    // Skip to stream `index`: decode (and drop) the streams before it.
    let mut skipped = 0u64;
    let before: u64 = match params {
        Compression::Bzip2 { streams, .. }
        | Compression::Xz { streams, .. }
        | Compression::Zstd { streams, .. } => streams[..index].iter().sum(),
        _ => 0,
    };
    while skipped < before {
        let n = io::copy(&mut (&mut decoded).take(before - skipped), &mut io::sink())?;
        if n == 0 {
            return Ok(false);
        }
        skipped += n;
    }
    let compare = CompareWriter {
        original: PositionedReader {
            file,
            pos: start,
            end,
        },
        buf: Vec::new(),
    };
    let mut encoder = match StreamEncoder::new(params, index, plain, compare) {
        Ok(e) => e,
        Err(_) => return Ok(false),
    };
    let mut buf = vec![0u8; READ_BUFFER];
    let mut left = plain;
    while left > 0 {
        let want = (buf.len() as u64).min(left) as usize;
        let n = decoded.read(&mut buf[..want])?;
        if n == 0 {
            return Ok(false);
        }
        if encoder.write_all(&buf[..n]).is_err() {
            return Ok(false);
        }
        left -= n as u64;
    }
    match encoder.finish() {
        Ok(compare) => Ok(compare.original.pos == end),
        Err(_) => Ok(false),
    }
}

/// One bzip2/xz/zstd stream being encoded into `W`.
enum StreamEncoder<W: Write> {
    Bzip2(bzip2::write::BzEncoder<W>),
    Xz(xz2::write::XzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

fn xz_check(check: u32) -> io::Result<xz2::stream::Check> {
    Ok(match check {
        0 => xz2::stream::Check::None,
        1 => xz2::stream::Check::Crc32,
        4 => xz2::stream::Check::Crc64,
        10 => xz2::stream::Check::Sha256,
        _ => return Err(io::Error::other("unknown xz check")),
    })
}

impl<W: Write> StreamEncoder<W> {
    fn new(params: &Compression, _index: usize, plain: u64, w: W) -> io::Result<Self> {
        Ok(match params {
            Compression::Bzip2 { level, .. } => StreamEncoder::Bzip2(bzip2::write::BzEncoder::new(
                w,
                bzip2::Compression::new(*level),
            )),
            Compression::Xz {
                preset,
                extreme,
                check,
                block_size,
                ..
            } => {
                let preset = preset | if *extreme { 1 << 31 } else { 0 };
                let check = xz_check(*check)?;
                let stream = match block_size {
                    None => xz2::stream::Stream::new_easy_encoder(preset, check),
                    Some(block_size) => xz2::stream::MtStreamBuilder::new()
                        .preset(preset)
                        .check(check)
                        .threads(1)
                        .block_size(*block_size)
                        .encoder(),
                }
                .map_err(io::Error::other)?;
                StreamEncoder::Xz(xz2::write::XzEncoder::new_stream(w, stream))
            }
            Compression::Zstd {
                level,
                checksum,
                content_size,
                ..
            } => {
                let mut e = zstd::stream::write::Encoder::new(w, *level)?;
                e.include_checksum(*checksum)?;
                e.include_contentsize(*content_size)?;
                if *content_size {
                    e.set_pledged_src_size(Some(plain))?;
                }
                StreamEncoder::Zstd(e)
            }
            _ => return Err(io::Error::other("not a stream codec")),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            StreamEncoder::Bzip2(e) => e.finish(),
            StreamEncoder::Xz(e) => e.finish(),
            StreamEncoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for StreamEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            StreamEncoder::Bzip2(e) => e.write(data),
            StreamEncoder::Xz(e) => e.write(data),
            StreamEncoder::Zstd(e) => e.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why re-encoding failed: the recipe does not fit the data it is given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RebuildError {
    #[error("the tar stream is longer than the compression layer describes")]
    TooLong,
    #[error("the tar stream ended before the compression layer's end")]
    TooShort,
    #[error("preflate could not rebuild DEFLATE chunk {chunk} of gzip member {member}: {why}")]
    Preflate {
        member: usize,
        chunk: usize,
        why: String,
    },
    #[error("the gzip corrections stream ended early")]
    CorrectionsShort,
}

fn rebuild_error(e: RebuildError) -> io::Error {
    io::Error::other(e)
}

/// Re-encodes a tar stream written into it as the recipe's compression
/// says, into `out`. `finish` must be called; it checks that every stream
/// and chunk was used.
pub(crate) struct Compressor<'a, W: Write> {
    state: State<'a, W>,
}

#[allow(clippy::large_enum_variant)] // one per reassembly
enum State<'a, W: Write> {
    Plain(W),
    Gzip(Box<GzipRebuild<'a, W>>),
    Streams {
        params: Compression,
        plains: Vec<u64>,
        index: usize,
        left: u64,
        encoder: Option<StreamEncoder<W>>,
        idle: Option<W>,
    },
    Poisoned,
}

struct GzipRebuild<'a, W: Write> {
    out: W,
    members: Vec<GzipMember>,
    corrections: Box<dyn Read + 'a>,
    member: usize,
    chunk: usize,
    started: bool,
    buf: Vec<u8>,
    correction_buf: Vec<u8>,
    recreator: preflate_rs::RecreateStreamProcessor,
}

impl<W: Write> GzipRebuild<'_, W> {
    /// Emits every chunk that is complete (including empty ones), and the
    /// headers and trailers around them.
    fn drain(&mut self, at_end: bool) -> io::Result<()> {
        loop {
            let Some(member) = self.members.get(self.member) else {
                if !self.buf.is_empty() {
                    return Err(rebuild_error(RebuildError::TooLong));
                }
                return Ok(());
            };
            if !self.started {
                self.out.write_all(&member.header)?;
                self.started = true;
            }
            let Some(chunk) = member.chunks.get(self.chunk).copied() else {
                self.out.write_all(&member.trailer)?;
                self.member += 1;
                self.chunk = 0;
                self.started = false;
                self.recreator = preflate_rs::RecreateStreamProcessor::new();
                continue;
            };
            if (self.buf.len() as u64) < chunk.plain {
                if at_end {
                    return Err(rebuild_error(RebuildError::TooShort));
                }
                return Ok(());
            }
            self.correction_buf.resize(chunk.corrections as usize, 0);
            self.corrections
                .read_exact(&mut self.correction_buf)
                .map_err(|_| rebuild_error(RebuildError::CorrectionsShort))?;
            let (member_index, chunk_index) = (self.member, self.chunk);
            let plain = &self.buf[..chunk.plain as usize];
            let corrections = &self.correction_buf;
            let recreator = &mut self.recreator;
            quiet_preflate_panics();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                recreator.recompress(&mut io::Cursor::new(plain), corrections)
            }));
            let deflate = match result {
                Ok(Ok((deflate, _))) => deflate,
                Ok(Err(e)) => {
                    return Err(rebuild_error(RebuildError::Preflate {
                        member: member_index,
                        chunk: chunk_index,
                        why: format!("{:?}: {}", e.exit_code(), e.message()),
                    }))
                }
                Err(_) => {
                    return Err(rebuild_error(RebuildError::Preflate {
                        member: member_index,
                        chunk: chunk_index,
                        why: "preflate panicked".into(),
                    }))
                }
            };
            self.out.write_all(&deflate)?;
            self.buf.drain(..chunk.plain as usize);
            self.chunk += 1;
        }
    }

    fn need(&self) -> u64 {
        self.members
            .get(self.member)
            .and_then(|m| m.chunks.get(self.chunk))
            .map_or(0, |c| c.plain)
    }
}

impl<'a, W: Write> Compressor<'a, W> {
    /// `corrections` reads the gzip corrections stream (unused otherwise).
    pub fn new(
        compression: &Compression,
        corrections: Box<dyn Read + 'a>,
        out: W,
    ) -> io::Result<Compressor<'a, W>> {
        let state = match compression {
            Compression::None | Compression::Raw { .. } => State::Plain(out),
            Compression::Gzip { members, .. } => State::Gzip(Box::new(GzipRebuild {
                out,
                members: members.clone(),
                corrections,
                member: 0,
                chunk: 0,
                started: false,
                buf: Vec::new(),
                correction_buf: Vec::new(),
                recreator: preflate_rs::RecreateStreamProcessor::new(),
            })),
            Compression::Bzip2 { streams, .. }
            | Compression::Xz { streams, .. }
            | Compression::Zstd { streams, .. } => {
                let mut state = State::Streams {
                    params: compression.clone(),
                    plains: streams.clone(),
                    index: 0,
                    left: 0,
                    encoder: None,
                    idle: Some(out),
                };
                advance_streams(&mut state, false)?;
                state
            }
        };
        Ok(Compressor { state })
    }

    /// Ends the last stream and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        match std::mem::replace(&mut self.state, State::Poisoned) {
            State::Plain(w) => Ok(w),
            State::Gzip(mut g) => {
                g.drain(true)?;
                if g.member < g.members.len() {
                    return Err(rebuild_error(RebuildError::TooShort));
                }
                Ok(g.out)
            }
            mut state @ State::Streams { .. } => {
                advance_streams(&mut state, true)?;
                match state {
                    State::Streams {
                        idle: Some(w),
                        index,
                        plains,
                        ..
                    } if index >= plains.len() => Ok(w),
                    _ => Err(rebuild_error(RebuildError::TooShort)),
                }
            }
            State::Poisoned => Err(io::Error::other("compressor used after an error")),
        }
    }
}

/// Finishes a stream whose plain bytes are all in, starts the next, and
/// runs through empty streams.
fn advance_streams<W: Write>(state: &mut State<'_, W>, at_end: bool) -> io::Result<()> {
    let State::Streams {
        params,
        plains,
        index,
        left,
        encoder,
        idle,
    } = state
    else {
        return Ok(());
    };
    loop {
        if let Some(e) = encoder.as_ref() {
            let _ = e;
            if *left > 0 {
                if at_end {
                    return Err(rebuild_error(RebuildError::TooShort));
                }
                return Ok(());
            }
            let w = encoder.take().expect("checked").finish()?;
            *idle = Some(w);
            *index += 1;
        }
        if *index >= plains.len() {
            return Ok(());
        }
        let w = idle.take().expect("an idle writer between streams");
        *left = plains[*index];
        *encoder = Some(StreamEncoder::new(params, *index, *left, w)?);
    }
}

impl<W: Write> Write for Compressor<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match &mut self.state {
            State::Plain(w) => w.write(data),
            State::Gzip(g) => {
                let need = g.need().saturating_sub(g.buf.len() as u64);
                if need == 0 {
                    g.drain(false)?;
                    if g.member >= g.members.len() && !data.is_empty() {
                        return Err(rebuild_error(RebuildError::TooLong));
                    }
                }
                let need = g.need().saturating_sub(g.buf.len() as u64).max(1);
                let take = (data.len() as u64).min(need) as usize;
                g.buf.extend_from_slice(&data[..take]);
                g.drain(false)?;
                Ok(take)
            }
            state @ State::Streams { .. } => {
                let State::Streams { left, encoder, .. } = state else {
                    unreachable!("matched above")
                };
                let Some(e) = encoder.as_mut() else {
                    return Err(rebuild_error(RebuildError::TooLong));
                };
                let take = (data.len() as u64).min(*left) as usize;
                e.write_all(&data[..take])?;
                *left -= take as u64;
                advance_streams(state, false)?;
                Ok(take)
            }
            State::Poisoned => Err(io::Error::other("compressor used after an error")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Panics inside preflate are caught and become a fallback; the default
/// hook would still print each one with a backtrace to the user's terminal.
/// Installed once, it logs those at debug level and hands every other panic
/// to the hook that was there before.
fn quiet_preflate_panics() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_preflate = info
                .location()
                .is_some_and(|l| l.file().contains("preflate"));
            if in_preflate {
                tracing::debug!("preflate panicked (caught, the layer falls back): {info}");
            } else {
                previous(info);
            }
        }));
    });
}
