//! The NAR format (Nix ARchive): a pull-based streaming reader that validates
//! every token, name, order, padding and length, hashes the archive (SHA-256)
//! while reading it and never buffers file contents; and a writer that emits
//! the same events back into a NAR, hashing as it writes.

use sha2::{Digest, Sha256};
use std::io::{self, BufReader, Read, Write};

/// NAR magic, the first string of every archive.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";
/// Longest entry name accepted (Linux NAME_MAX).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted (Linux PATH_MAX minus the NUL).
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest directory nesting accepted; real stores stay far below it.
pub const MAX_DEPTH: usize = 256;
/// Longest keyword token (`directory` is the longest real one).
const MAX_TOKEN_LEN: usize = 16;

/// Why an entry name is not acceptable in a NAR or a git tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name is `.`")]
    Dot,
    #[error("name is `..`")]
    DotDot,
    #[error("name contains `/`")]
    Slash,
    #[error("name contains NUL")]
    Nul,
    #[error("name longer than {MAX_NAME_LEN} bytes")]
    TooLong,
}

/// Checks one directory entry name (shared by NAR and git tree validation).
pub fn check_name(name: &[u8]) -> Result<(), NameError> {
    match name {
        [] => Err(NameError::Empty),
        b"." => Err(NameError::Dot),
        b".." => Err(NameError::DotDot),
        _ if name.len() > MAX_NAME_LEN => Err(NameError::TooLong),
        _ if name.contains(&b'/') => Err(NameError::Slash),
        _ if name.contains(&0) => Err(NameError::Nul),
        _ => Ok(()),
    }
}

/// Why a symlink target is not acceptable.
pub fn check_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        Err("empty symlink target")
    } else if target.len() > MAX_TARGET_LEN {
        Err("symlink target longer than 4095 bytes")
    } else if target.contains(&0) {
        Err("symlink target contains NUL")
    } else {
        Ok(())
    }
}

/// Everything that is wrong with a NAR, with the byte offset where it was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NarError {
    #[error("I/O error reading the NAR: {0}")]
    Io(#[source] io::Error),
    #[error("I/O error writing the NAR: {0}")]
    WriteIo(#[source] io::Error),
    #[error("not a NAR: bad magic at offset 0")]
    BadMagic,
    #[error("NAR truncated at offset {offset}: a length runs beyond the input")]
    Truncated { offset: u64 },
    #[error("unexpected token at offset {offset}: expected {expected}, found {found:?}")]
    UnexpectedToken {
        offset: u64,
        expected: &'static str,
        found: String,
    },
    #[error("{what} at offset {offset} is {len} bytes long, over the {max}-byte limit")]
    TooLong {
        offset: u64,
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("non-zero padding at offset {offset}")]
    NonZeroPadding { offset: u64 },
    #[error("bad entry name {name:?} at offset {offset}: {reason}")]
    BadName {
        offset: u64,
        name: String,
        reason: NameError,
    },
    #[error("bad symlink target at offset {offset}: {reason}")]
    BadTarget { offset: u64, reason: &'static str },
    #[error("directory entries not sorted at offset {offset}: {name:?} after {previous:?}")]
    Unsorted {
        offset: u64,
        previous: String,
        name: String,
    },
    #[error("duplicate directory entry {name:?} at offset {offset}")]
    Duplicate { offset: u64, name: String },
    #[error("directories nested deeper than {max} at offset {offset}")]
    TooDeep { offset: u64, max: usize },
    #[error("trailing data after the NAR at offset {offset}")]
    TrailingData { offset: u64 },
    #[error("NAR is not complete yet: {0}")]
    Incomplete(&'static str),
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
    #[error("file declared {declared} bytes but {actual} were written")]
    FileSize { declared: u64, actual: u64 },
}

/// One step of a NAR, in archive order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A regular file; its contents follow via [`NarReader::read_contents`].
    File {
        executable: bool,
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    DirectoryStart,
    /// The name of the next entry; the entry's node events follow.
    Entry {
        name: Vec<u8>,
    },
    DirectoryEnd,
}

/// SHA-256 and length of a whole NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    pub sha256: [u8; 32],
    pub size: u64,
}

struct HashingReader<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Magic,
    Node,
    FileData { remaining: u64, size: u64 },
    NodeDone,
    DirBody,
    Finished,
}

/// Pull-based NAR parser: call [`next`](Self::next) until `Ok(None)`, then
/// [`finish`](Self::finish) for the hash. Memory: one name per open directory.
pub struct NarReader<R: Read> {
    input: BufReader<HashingReader<R>>,
    offset: u64,
    state: ReadState,
    /// Last entry name of each open directory (for the order check).
    dirs: Vec<Option<Vec<u8>>>,
}

impl<R: Read> NarReader<R> {
    pub fn new(inner: R) -> Self {
        NarReader {
            input: BufReader::with_capacity(
                64 * 1024,
                HashingReader {
                    inner,
                    sha: Sha256::new(),
                },
            ),
            offset: 0,
            state: ReadState::Magic,
            dirs: Vec::new(),
        }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Directory depth of the node being read (0 = root).
    pub fn depth(&self) -> usize {
        self.dirs.len()
    }

    /// The next event, or `None` once the archive (and the input) has ended.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<NarEvent>, NarError> {
        loop {
            match self.state {
                ReadState::Magic => {
                    let magic =
                        self.read_string(NAR_MAGIC.len(), "magic")
                            .map_err(|e| match e {
                                NarError::Io(_) => e,
                                _ => NarError::BadMagic,
                            })?;
                    if magic != NAR_MAGIC {
                        return Err(NarError::BadMagic);
                    }
                    self.state = ReadState::Node;
                }
                ReadState::Node => return self.read_node_start().map(Some),
                ReadState::FileData { remaining, size } => {
                    self.skip(remaining)?;
                    self.read_padding(size)?;
                    self.expect(b")", "`)` after file contents")?;
                    self.state = ReadState::NodeDone;
                }
                ReadState::NodeDone => {
                    if self.dirs.is_empty() {
                        self.expect_eof()?;
                        self.state = ReadState::Finished;
                        return Ok(None);
                    }
                    self.expect(b")", "`)` closing a directory entry")?;
                    self.state = ReadState::DirBody;
                }
                ReadState::DirBody => return self.read_dir_body().map(Some),
                ReadState::Finished => return Ok(None),
            }
        }
    }

    /// Reads contents of the current file; `Ok(0)` once all are read.
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarError> {
        let ReadState::FileData { remaining, size } = self.state else {
            return Ok(0);
        };
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let n = self.input.read(&mut buf[..want]).map_err(NarError::Io)?;
        if n == 0 {
            return Err(NarError::Truncated {
                offset: self.offset,
            });
        }
        self.offset += n as u64;
        self.state = ReadState::FileData {
            remaining: remaining - n as u64,
            size,
        };
        Ok(n)
    }

    /// The current file's contents as a `Read` (errors become `io::Error`s
    /// wrapping the [`NarError`]).
    pub fn contents(&mut self) -> Contents<'_, R> {
        Contents { nar: self }
    }

    /// Hash and size of the archive; only after `next` returned `None`.
    pub fn finish(self) -> Result<NarSummary, NarError> {
        if self.state != ReadState::Finished {
            return Err(NarError::Incomplete(
                "the archive has not been read to its end",
            ));
        }
        Ok(NarSummary {
            sha256: self.input.into_inner().sha.finalize().into(),
            size: self.offset,
        })
    }

    fn read_node_start(&mut self) -> Result<NarEvent, NarError> {
        self.expect(b"(", "`(` opening a node")?;
        self.expect(b"type", "`type`")?;
        let at = self.offset;
        let kind = self.read_string(MAX_TOKEN_LEN, "node type")?;
        match kind.as_slice() {
            b"regular" => {
                let at = self.offset;
                let mut token = self.read_string(MAX_TOKEN_LEN, "file token")?;
                let executable = token == b"executable";
                if executable {
                    self.expect(b"", "empty string after `executable`")?;
                } else if token != b"contents" {
                    return Err(unexpected(at, "`executable` or `contents`", &token));
                }
                if executable {
                    token = self.read_string(MAX_TOKEN_LEN, "file token")?;
                    if token != b"contents" {
                        return Err(unexpected(at, "`contents`", &token));
                    }
                }
                let size = self.read_u64()?;
                self.state = ReadState::FileData {
                    remaining: size,
                    size,
                };
                Ok(NarEvent::File { executable, size })
            }
            b"symlink" => {
                self.expect(b"target", "`target`")?;
                let at = self.offset;
                let target = self.read_string(MAX_TARGET_LEN, "symlink target")?;
                check_target(&target)
                    .map_err(|reason| NarError::BadTarget { offset: at, reason })?;
                self.expect(b")", "`)` after symlink target")?;
                self.state = ReadState::NodeDone;
                Ok(NarEvent::Symlink { target })
            }
            b"directory" => {
                if self.dirs.len() >= MAX_DEPTH {
                    return Err(NarError::TooDeep {
                        offset: at,
                        max: MAX_DEPTH,
                    });
                }
                self.dirs.push(None);
                self.state = ReadState::DirBody;
                Ok(NarEvent::DirectoryStart)
            }
            _ => Err(unexpected(at, "`regular`, `symlink` or `directory`", &kind)),
        }
    }

    fn read_dir_body(&mut self) -> Result<NarEvent, NarError> {
        let at = self.offset;
        let token = self.read_string(MAX_TOKEN_LEN, "directory token")?;
        match token.as_slice() {
            b")" => {
                self.dirs.pop();
                self.state = ReadState::NodeDone;
                Ok(NarEvent::DirectoryEnd)
            }
            b"entry" => {
                self.expect(b"(", "`(` opening an entry")?;
                self.expect(b"name", "`name`")?;
                let at = self.offset;
                let name = self.read_string(MAX_NAME_LEN, "entry name")?;
                check_name(&name).map_err(|reason| NarError::BadName {
                    offset: at,
                    name: lossy(&name),
                    reason,
                })?;
                let previous = self
                    .dirs
                    .last_mut()
                    .expect("in a directory body there is an open directory");
                if let Some(prev) = previous.as_ref() {
                    match prev.as_slice().cmp(name.as_slice()) {
                        std::cmp::Ordering::Less => {}
                        std::cmp::Ordering::Equal => {
                            return Err(NarError::Duplicate {
                                offset: at,
                                name: lossy(&name),
                            })
                        }
                        std::cmp::Ordering::Greater => {
                            return Err(NarError::Unsorted {
                                offset: at,
                                previous: lossy(prev),
                                name: lossy(&name),
                            })
                        }
                    }
                }
                *previous = Some(name.clone());
                self.expect(b"node", "`node`")?;
                self.state = ReadState::Node;
                Ok(NarEvent::Entry { name })
            }
            _ => Err(unexpected(at, "`entry` or `)`", &token)),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                NarError::Truncated {
                    offset: self.offset,
                }
            } else {
                NarError::Io(e)
            }
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut buf = [0u8; 8];
        self.read_exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn read_string(&mut self, max: usize, what: &'static str) -> Result<Vec<u8>, NarError> {
        let at = self.offset;
        let len = self.read_u64()?;
        if len > max as u64 {
            return Err(NarError::TooLong {
                offset: at,
                what,
                len,
                max,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf)?;
        self.read_padding(len)?;
        Ok(buf)
    }

    fn read_padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = padding(len);
        if pad > 0 {
            let at = self.offset;
            let mut buf = [0u8; 8];
            self.read_exact(&mut buf[..pad])?;
            if buf.iter().any(|&b| b != 0) {
                return Err(NarError::NonZeroPadding { offset: at });
            }
        }
        Ok(())
    }

    fn expect(&mut self, token: &[u8], expected: &'static str) -> Result<(), NarError> {
        let at = self.offset;
        let found = self.read_string(MAX_TOKEN_LEN, "token")?;
        if found != token {
            return Err(unexpected(at, expected, &found));
        }
        Ok(())
    }

    fn skip(&mut self, mut remaining: u64) -> Result<(), NarError> {
        let mut buf = [0u8; 8192];
        while remaining > 0 {
            let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
            let n = self.input.read(&mut buf[..want]).map_err(NarError::Io)?;
            if n == 0 {
                return Err(NarError::Truncated {
                    offset: self.offset,
                });
            }
            self.offset += n as u64;
            remaining -= n as u64;
        }
        self.state = match self.state {
            ReadState::FileData { size, .. } => ReadState::FileData { remaining: 0, size },
            other => other,
        };
        Ok(())
    }

    fn expect_eof(&mut self) -> Result<(), NarError> {
        let mut byte = [0u8; 1];
        loop {
            match self.input.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(NarError::TrailingData {
                        offset: self.offset,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NarError::Io(e)),
            }
        }
    }
}

/// `Read` over the current file's contents (see [`NarReader::contents`]).
pub struct Contents<'a, R: Read> {
    nar: &'a mut NarReader<R>,
}

impl<R: Read> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.nar.read_contents(buf).map_err(io::Error::other)
    }
}

fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unexpected(offset: u64, expected: &'static str, found: &[u8]) -> NarError {
    NarError::UnexpectedToken {
        offset,
        expected,
        found: lossy(found),
    }
}

struct HashingWriter<W> {
    inner: W,
    sha: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn put(&mut self, data: &[u8]) -> Result<(), NarError> {
        self.inner.write_all(data).map_err(NarError::WriteIo)?;
        self.sha.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    fn put_str(&mut self, s: &[u8]) -> Result<(), NarError> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s)?;
        self.put(&[0u8; 8][..padding(s.len() as u64)])
    }
}

#[derive(Debug)]
enum WriteFrame {
    Dir {
        last: Option<Vec<u8>>,
        in_entry: bool,
    },
}

/// Writes a NAR from events, checking the same rules the reader enforces.
/// Sequence: a node is `file` (+ `file_data` up to its size), `symlink`, or
/// `start_directory`, (`entry` name, node)*, `end_directory`.
pub struct NarWriter<W: Write> {
    out: HashingWriter<W>,
    stack: Vec<WriteFrame>,
    file: Option<(u64, u64)>,
    root_done: bool,
    root_started: bool,
}

impl<W: Write> NarWriter<W> {
    pub fn new(inner: W) -> Result<Self, NarError> {
        let mut out = HashingWriter {
            inner,
            sha: Sha256::new(),
            written: 0,
        };
        out.put_str(NAR_MAGIC)?;
        Ok(NarWriter {
            out,
            stack: Vec::new(),
            file: None,
            root_done: false,
            root_started: false,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.written
    }

    fn begin_node(&mut self) -> Result<(), NarError> {
        if self.file.is_some() {
            return Err(NarError::Misuse("a file's contents are not complete"));
        }
        match self.stack.last() {
            None if self.root_started => Err(NarError::Misuse("the root node is already written")),
            None => {
                self.root_started = true;
                Ok(())
            }
            Some(WriteFrame::Dir { in_entry: true, .. }) => Ok(()),
            Some(WriteFrame::Dir { .. }) => Err(NarError::Misuse(
                "a node inside a directory needs an entry name first",
            )),
        }?;
        self.out.put_str(b"(")?;
        self.out.put_str(b"type")
    }

    fn end_node(&mut self) -> Result<(), NarError> {
        self.out.put_str(b")")?;
        match self.stack.last_mut() {
            None => self.root_done = true,
            Some(WriteFrame::Dir { in_entry, .. }) => {
                *in_entry = false;
                self.out.put_str(b")")?;
            }
        }
        Ok(())
    }

    /// Starts a regular file of `size` bytes; follow with `file_data`.
    pub fn file(&mut self, executable: bool, size: u64) -> Result<(), NarError> {
        self.begin_node()?;
        self.out.put_str(b"regular")?;
        if executable {
            self.out.put_str(b"executable")?;
            self.out.put_str(b"")?;
        }
        self.out.put_str(b"contents")?;
        self.out.put(&size.to_le_bytes())?;
        self.file = Some((size, 0));
        if size == 0 {
            self.complete_file()?;
        }
        Ok(())
    }

    /// Appends contents to the current file.
    pub fn file_data(&mut self, data: &[u8]) -> Result<(), NarError> {
        let (size, written) = self
            .file
            .ok_or(NarError::Misuse("file_data without an open file"))?;
        let actual = written + data.len() as u64;
        if actual > size {
            return Err(NarError::FileSize {
                declared: size,
                actual,
            });
        }
        self.out.put(data)?;
        self.file = Some((size, actual));
        if actual == size {
            self.complete_file()?;
        }
        Ok(())
    }

    fn complete_file(&mut self) -> Result<(), NarError> {
        let (size, _) = self.file.take().expect("called with an open file");
        self.out.put(&[0u8; 8][..padding(size)])?;
        self.end_node()
    }

    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        check_target(target).map_err(|reason| NarError::BadTarget {
            offset: self.out.written,
            reason,
        })?;
        self.begin_node()?;
        self.out.put_str(b"symlink")?;
        self.out.put_str(b"target")?;
        self.out.put_str(target)?;
        self.end_node()
    }

    pub fn start_directory(&mut self) -> Result<(), NarError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(NarError::TooDeep {
                offset: self.out.written,
                max: MAX_DEPTH,
            });
        }
        self.begin_node()?;
        self.out.put_str(b"directory")?;
        self.stack.push(WriteFrame::Dir {
            last: None,
            in_entry: false,
        });
        Ok(())
    }

    /// Names the next node of the open directory (strictly increasing byte order).
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        let offset = self.out.written;
        check_name(name).map_err(|reason| NarError::BadName {
            offset,
            name: lossy(name),
            reason,
        })?;
        if self.file.is_some() {
            return Err(NarError::Misuse("a file's contents are not complete"));
        }
        let Some(WriteFrame::Dir { last, in_entry }) = self.stack.last_mut() else {
            return Err(NarError::Misuse("entry outside a directory"));
        };
        if *in_entry {
            return Err(NarError::Misuse("the previous entry has no node"));
        }
        if let Some(prev) = last.as_ref() {
            if prev.as_slice() == name {
                return Err(NarError::Duplicate {
                    offset,
                    name: lossy(name),
                });
            }
            if prev.as_slice() > name {
                return Err(NarError::Unsorted {
                    offset,
                    previous: lossy(prev),
                    name: lossy(name),
                });
            }
        }
        *last = Some(name.to_vec());
        *in_entry = true;
        self.out.put_str(b"entry")?;
        self.out.put_str(b"(")?;
        self.out.put_str(b"name")?;
        self.out.put_str(name)?;
        self.out.put_str(b"node")
    }

    pub fn end_directory(&mut self) -> Result<(), NarError> {
        match self.stack.last() {
            Some(WriteFrame::Dir {
                in_entry: false, ..
            }) if self.file.is_none() => {}
            _ => {
                return Err(NarError::Misuse(
                    "end_directory with no open directory or an unfinished entry",
                ))
            }
        }
        self.stack.pop();
        self.end_node()
    }

    /// Flushes and returns the sink with the NAR's hash and size.
    pub fn finish(mut self) -> Result<(W, NarSummary), NarError> {
        if !self.root_done {
            return Err(NarError::Incomplete("the root node is not complete"));
        }
        self.out.inner.flush().map_err(NarError::WriteIo)?;
        let summary = NarSummary {
            sha256: self.out.sha.finalize().into(),
            size: self.out.written,
        };
        Ok((self.out.inner, summary))
    }
}

/// Reads a whole NAR, discarding contents, and returns its hash and size
/// (validation only; memory stays bounded).
pub fn validate<R: Read>(input: R) -> Result<NarSummary, NarError> {
    let mut reader = NarReader::new(input);
    while reader.next()?.is_some() {}
    reader.finish()
}

/// Copies a NAR event by event from `reader` to `writer` (round-trip helper).
pub fn copy<R: Read, W: Write>(
    reader: &mut NarReader<R>,
    writer: &mut NarWriter<W>,
) -> Result<(), NarError> {
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(event) = reader.next()? {
        match event {
            NarEvent::File { executable, size } => {
                writer.file(executable, size)?;
                loop {
                    let n = reader.read_contents(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    writer.file_data(&buf[..n])?;
                }
            }
            NarEvent::Symlink { target } => writer.symlink(&target)?,
            NarEvent::DirectoryStart => writer.start_directory()?,
            NarEvent::Entry { name } => writer.entry(&name)?,
            NarEvent::DirectoryEnd => writer.end_directory()?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = NarWriter::new(Vec::new()).expect("vec");
        w.start_directory().expect("dir");
        w.entry(b"a").expect("a");
        w.file(true, 3).expect("file");
        w.file_data(b"abc").expect("data");
        w.entry(b"b").expect("b");
        w.symlink(b"a").expect("link");
        w.entry(b"c").expect("c");
        w.start_directory().expect("dir");
        w.end_directory().expect("end");
        w.end_directory().expect("end");
        let (nar, summary) = w.finish().expect("finish");
        assert_eq!(summary.size, nar.len() as u64);
        nar
    }

    #[test]
    fn write_then_read_then_copy_is_identical() {
        let nar = sample();
        let mut reader = NarReader::new(nar.as_slice());
        let mut writer = NarWriter::new(Vec::new()).expect("vec");
        copy(&mut reader, &mut writer).expect("copy");
        let read_summary = reader.finish().expect("finished");
        let (copy, write_summary) = writer.finish().expect("finish");
        assert_eq!(copy, nar);
        assert_eq!(read_summary, write_summary);
        assert_eq!(read_summary.sha256, <[u8; 32]>::from(Sha256::digest(&nar)));
    }

    #[test]
    fn events_in_order() {
        let nar = sample();
        let mut reader = NarReader::new(nar.as_slice());
        let mut events = Vec::new();
        while let Some(e) = reader.next().expect("valid") {
            events.push(e);
        }
        assert_eq!(
            events,
            vec![
                NarEvent::DirectoryStart,
                NarEvent::Entry {
                    name: b"a".to_vec()
                },
                NarEvent::File {
                    executable: true,
                    size: 3
                },
                NarEvent::Entry {
                    name: b"b".to_vec()
                },
                NarEvent::Symlink {
                    target: b"a".to_vec()
                },
                NarEvent::Entry {
                    name: b"c".to_vec()
                },
                NarEvent::DirectoryStart,
                NarEvent::DirectoryEnd,
                NarEvent::DirectoryEnd,
            ]
        );
    }

    #[test]
    fn writer_refuses_unsorted_entries() {
        let mut w = NarWriter::new(Vec::new()).expect("vec");
        w.start_directory().expect("dir");
        w.entry(b"b").expect("b");
        w.file(false, 0).expect("file");
        assert!(matches!(w.entry(b"a"), Err(NarError::Unsorted { .. })));
    }
}
