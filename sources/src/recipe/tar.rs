//! The archive layer of a tarball recipe: a tar stream taken apart into the
//! unpacked tree (the bridge's git-tree DAG, top-level folder kept) and a
//! compact record of everything else, and put back together from them.
//!
//! Each member's header is kept as a difference from the header a canonical
//! writer makes from the tree entry (name, size, type, link target, exec
//! bit) over a template: the previous header of the same kind, so fields
//! that repeat (mtime, uid/gid, uname/gname, magic, checksum layout) cost
//! nothing. Names are front-coded against the previous member's. Long-name
//! records (GNU `L`/`K`) are rebuilt from the name when they hold exactly
//! it; pax records (`x`/`g`) are kept verbatim. Members the tree cannot hold
//! (overwritten duplicates: their blobs are linked from the recipe; devices,
//! FIFOs, GNU sparse files: header plus raw data), non-zero padding, and
//! everything from the end-of-archive blocks on go to the `extra` stream.
//!
//! Both directions run the same template and canonical-header code, so a
//! recipe only ever describes headers the reassembler computes the same way.
//! Memory: one block or one small file (<= 1 MiB) at a time, plus about a
//! hundred bytes per member for the records until they are written.

use super::RecipeError;
use crate::unpack::{
    check_symlink, split_name, Limit, Position, UnpackError, UnpackLimits, UnsafeReason,
};
use cid::Cid;
use ipnix_bridge::git::{self, blob_header, tree_object, BlobHasher, Mode, TreeEntry};
use ipnix_bridge::import::MAX_INLINE_OBJECT;
use ipnix_bridge::nar::MAX_DEPTH;
use ipnix_bridge::pathinfo::LargeBlob;
use ipnix_store::block::{cid_for, GIT_RAW, MAX_BLOCK_SIZE};
use ipnix_store::links::git_cid;
use ipnix_store::unixfs::{self, Profile};
use ipnix_store::{BlockRead, BlockWrite};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Longest member name or link target a record may carry.
const MAX_NAME: usize = 64 * 1024;
/// Most metadata records (long names, pax) before one member.
const MAX_METAS: u64 = 64;

const KIND_TREE: u8 = 0;
const KIND_BLOB: u8 = 1;
const KIND_LINK: u8 = 2;
const KIND_OTHER: u8 = 3;
const KIND_DIR: u8 = 4;

const NAME: std::ops::Range<usize> = 0..100;
const MODE: std::ops::Range<usize> = 100..108;
const SIZE: std::ops::Range<usize> = 124..136;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: std::ops::Range<usize> = 157..257;
const MAGIC: std::ops::Range<usize> = 257..263;
const PREFIX: std::ops::Range<usize> = 345..500;

type Header = [u8; BLOCK];

/// The kind of header a template slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    File,
    Exec,
    Dir,
    Symlink,
    Hardlink,
    Other(u8),
    Meta(u8),
}

impl Class {
    fn code(self) -> u8 {
        match self {
            Class::File => 0,
            Class::Exec => 1,
            Class::Symlink => 2,
            _ => 255,
        }
    }

    fn from_code(code: u8) -> Option<Class> {
        match code {
            0 => Some(Class::File),
            1 => Some(Class::Exec),
            2 => Some(Class::Symlink),
            _ => None,
        }
    }
}

fn default_header(typeflag: u8) -> Header {
    let mut h = [0u8; BLOCK];
    h[MODE].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[SIZE].copy_from_slice(b"00000000000\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[CHKSUM].copy_from_slice(b"000000\0 ");
    h[TYPEFLAG] = typeflag;
    h[257..265].copy_from_slice(b"ustar  \0");
    h
}

/// The previous header of each kind: what the next one is expected to look like.
#[derive(Default)]
struct Templates {
    by_class: HashMap<Class, Header>,
    last_member: Option<Header>,
}

impl Templates {
    fn get(&self, class: Class) -> Header {
        if let Some(h) = self.by_class.get(&class) {
            return *h;
        }
        match class {
            Class::Meta(t) => {
                let mut h = default_header(t);
                h[..13].copy_from_slice(b"././@LongLink");
                h
            }
            _ => self.last_member.unwrap_or_else(|| default_header(b'0')),
        }
    }

    fn record(&mut self, class: Class, h: &Header) {
        self.by_class.insert(class, *h);
        if !matches!(class, Class::Meta(_)) {
            self.last_member = Some(*h);
        }
    }
}

/// Width and padding of a numeric field as the template writes it.
fn write_numeric(field: &mut [u8], value: u64) {
    let mut width = 0;
    let mut space_pad = false;
    let mut seen_digit = false;
    for &b in field.iter() {
        match b {
            b'0'..=b'7' => {
                seen_digit = true;
                width += 1;
            }
            b' ' if !seen_digit => {
                space_pad = true;
                width += 1;
            }
            _ => break,
        }
    }
    let text = format!("{value:o}");
    if width == 0 || text.len() > width {
        width = field.len() - 1;
        if text.len() > width {
            return;
        }
        field[width] = 0;
    }
    let pad = width - text.len();
    for b in &mut field[..pad] {
        *b = if space_pad { b' ' } else { b'0' };
    }
    field[pad..width].copy_from_slice(text.as_bytes());
}

/// An octal field (leading spaces, digits, then NUL or space), or GNU's
/// base-256 for large values.
fn parse_numeric(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] != 0x80 {
            return None;
        }
        let mut value = 0u64;
        for &b in &field[1..] {
            value = value.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(value);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Some(0);
    }
    let text = std::str::from_utf8(&text).ok()?;
    u64::from_str_radix(text, 8).ok()
}

fn checksum(h: &Header) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if CHKSUM.contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum()
}

fn checksum_ok(h: &Header) -> bool {
    let Some(recorded) = parse_numeric(&h[CHKSUM]) else {
        return false;
    };
    let signed: i64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if CHKSUM.contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    recorded == checksum(h) || i64::try_from(recorded).ok() == Some(signed)
}

fn field_text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

fn is_posix(h: &Header) -> bool {
    &h[MAGIC] == b"ustar\0"
}

fn set_text(field: &mut [u8], text: &[u8]) {
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text[..n]);
    for b in &mut field[n..] {
        *b = 0;
    }
}

/// Puts a name where a writer would: the name field, else (ustar, no long
/// name record) split into prefix and name at a `/`, else its first 100 bytes.
fn place_name(h: &mut Header, name: &[u8], long_record: bool) {
    let posix = is_posix(h);
    if posix {
        set_text(&mut h[PREFIX], b"");
    }
    if name.len() <= NAME.len() || long_record || !posix {
        set_text(&mut h[NAME], name);
        return;
    }
    let first = name.len().saturating_sub(NAME.len() + 1);
    let split = (first..name.len())
        .find(|&i| name[i] == b'/')
        .filter(|&i| i > 0 && i <= PREFIX.len() && name.len() - i - 1 <= NAME.len());
    match split {
        Some(i) => {
            set_text(&mut h[PREFIX], &name[..i]);
            set_text(&mut h[NAME], &name[i + 1..]);
        }
        None => set_text(&mut h[NAME], name),
    }
}

/// The header a canonical writer makes for a member over `template`.
fn canonical_member(
    template: &Header,
    class: Class,
    name: &[u8],
    long_record: bool,
    size: u64,
    link: &[u8],
) -> Header {
    let mut h = *template;
    place_name(&mut h, name, long_record);
    match class {
        Class::File | Class::Exec => {
            if h[TYPEFLAG] != b'0' && h[TYPEFLAG] != 0 {
                h[TYPEFLAG] = b'0';
            }
            if let Some(mode) = parse_numeric(&h[MODE]) {
                let exec = class == Class::Exec;
                let new = if exec && mode & 0o100 == 0 {
                    mode | ((mode & 0o444) >> 2)
                } else if !exec {
                    mode & !0o111
                } else {
                    mode
                };
                if new != mode {
                    write_numeric(&mut h[MODE], new);
                }
            }
            write_numeric(&mut h[SIZE], size);
            set_text(&mut h[LINKNAME], b"");
        }
        Class::Dir => {
            h[TYPEFLAG] = b'5';
            write_numeric(&mut h[SIZE], 0);
            set_text(&mut h[LINKNAME], b"");
        }
        Class::Symlink | Class::Hardlink => {
            h[TYPEFLAG] = if class == Class::Symlink { b'2' } else { b'1' };
            write_numeric(&mut h[SIZE], 0);
            set_text(&mut h[LINKNAME], link);
        }
        Class::Other(t) | Class::Meta(t) => h[TYPEFLAG] = t,
    }
    h
}

fn canonical_meta(template: &Header, typeflag: u8, size: u64) -> Header {
    let mut h = *template;
    h[TYPEFLAG] = typeflag;
    write_numeric(&mut h[SIZE], size);
    h
}

/// `canonical` with its checksum field as the reassembler computes it for
/// a header whose other bytes are `actual`'s.
fn with_checksum_of(canonical: &Header, template: &Header, actual: &Header) -> Header {
    let mut h = *canonical;
    h[CHKSUM].copy_from_slice(&template[CHKSUM]);
    write_numeric(&mut h[CHKSUM], checksum(actual));
    h
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode_diff(out: &mut Vec<u8>, actual: &Header, canonical: &Header) {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < BLOCK {
        if actual[i] == canonical[i] {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i + 1;
        let mut j = end;
        while j < BLOCK && j - end < 4 {
            if actual[j] != canonical[j] {
                end = j + 1;
            }
            j += 1;
        }
        runs.push((start, end));
        i = end;
    }
    put_varint(out, runs.len() as u64);
    let mut prev = 0;
    for (start, end) in runs {
        put_varint(out, (start - prev) as u64);
        put_varint(out, (end - start) as u64);
        out.extend_from_slice(&actual[start..end]);
        prev = end;
    }
}

/// Reads the records stream.
struct Records<R: Read> {
    inner: R,
}

fn corrupt(why: impl Into<String>) -> RecipeError {
    RecipeError::BadRecords(why.into())
}

impl<R: Read> Records<R> {
    fn byte(&mut self) -> Result<u8, RecipeError> {
        let mut b = [0u8; 1];
        self.inner
            .read_exact(&mut b)
            .map_err(|e| corrupt(format!("records end early: {e}")))?;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, RecipeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("varint too long"))
    }

    fn bytes(&mut self, len: u64, max: u64) -> Result<Vec<u8>, RecipeError> {
        if len > max {
            return Err(corrupt(format!(
                "a {len}-byte field is over the {max}-byte limit"
            )));
        }
        let mut out = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut out)
            .map_err(|e| corrupt(format!("records end early: {e}")))?;
        Ok(out)
    }

    /// Applies a diff to `canonical`: every byte outside the checksum
    /// field, then the checksum the template's way, then the field's own diffs.
    fn apply_diff(&mut self, canonical: &Header, template: &Header) -> Result<Header, RecipeError> {
        let mut h = *canonical;
        let runs = self.varint()?;
        if runs > BLOCK as u64 {
            return Err(corrupt("too many header diff runs"));
        }
        let mut pos = 0u64;
        let mut in_checksum = Vec::new();
        for _ in 0..runs {
            pos += self.varint()?;
            let len = self.varint()?;
            if pos + len > BLOCK as u64 {
                return Err(corrupt("header diff past the 512-byte header"));
            }
            let bytes = self.bytes(len, BLOCK as u64)?;
            for (k, b) in bytes.into_iter().enumerate() {
                let at = pos as usize + k;
                if CHKSUM.contains(&at) {
                    in_checksum.push((at, b));
                } else {
                    h[at] = b;
                }
            }
            pos += len;
        }
        let sum = checksum(&h);
        h[CHKSUM].copy_from_slice(&template[CHKSUM]);
        write_numeric(&mut h[CHKSUM], sum);
        for (at, b) in in_checksum {
            h[at] = b;
        }
        Ok(h)
    }

    fn name(&mut self, prev: &[u8]) -> Result<Vec<u8>, RecipeError> {
        let shared = self.varint()?;
        if shared > prev.len() as u64 {
            return Err(corrupt("name shares more than the previous name has"));
        }
        let suffix_len = self.varint()?;
        let suffix = self.bytes(suffix_len, MAX_NAME as u64)?;
        let mut name = prev[..shared as usize].to_vec();
        name.extend_from_slice(&suffix);
        if name.len() > MAX_NAME {
            return Err(corrupt("name over the length limit"));
        }
        Ok(name)
    }
}

fn put_name(out: &mut Vec<u8>, prev: &[u8], name: &[u8]) {
    let shared = prev.iter().zip(name).take_while(|(a, b)| a == b).count();
    put_varint(out, shared as u64);
    put_varint(out, (name.len() - shared) as u64);
    out.extend_from_slice(&name[shared..]);
}

fn round_up(n: u64) -> u64 {
    n.div_ceil(BLOCK as u64) * BLOCK as u64
}

// ---------------------------------------------------------------------------
// Disassembly.

/// One node of the tree being built.
enum Node {
    Dir(BTreeMap<Vec<u8>, Node>),
    File { exec: bool, id: [u8; 20], size: u64 },
    Symlink { id: [u8; 20], target: Vec<u8> },
}

/// What a member's data is, decided once the whole tree is known.
struct Decide {
    components: Vec<Vec<u8>>,
    class: Class,
    id: [u8; 20],
}

struct Pending {
    /// `Some`: a file or symlink whose record starts with TREE or BLOB.
    decide: Option<Decide>,
    body: Vec<u8>,
}

/// What disassembling a tar stream produced.
pub(crate) struct Disassembled {
    pub tree: Cid,
    /// Large blobs of the tree and of the extra blobs.
    pub blobs: Vec<LargeBlob>,
    pub extra_blobs: Vec<Cid>,
    pub members: u64,
    pub tar_bytes: u64,
    /// The records stream, uncompressed.
    pub records: Vec<u8>,
}

struct Counted<'a> {
    inner: &'a mut dyn Read,
    count: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

struct Builder<'w, W: BlockWrite> {
    w: &'w mut W,
    limits: UnpackLimits,
    root: BTreeMap<Vec<u8>, Node>,
    large: BTreeMap<Vec<u8>, LargeBlob>,
    entries: u64,
    bytes: u64,
}

fn unsafe_at(name: &[u8], offset: u64, why: UnsafeReason) -> RecipeError {
    RecipeError::Unpack(UnpackError::Unsafe {
        entry: String::from_utf8_lossy(name).into_owned(),
        at: Position::Tar { offset },
        why,
    })
}

fn too_large(what: Limit, limit: u64, name: &[u8], offset: u64) -> RecipeError {
    RecipeError::Unpack(UnpackError::TooLarge {
        what,
        limit,
        entry: Some(String::from_utf8_lossy(name).into_owned()),
        at: Some(Position::Tar { offset }),
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl<W: BlockWrite> Builder<'_, W> {
    /// Stores `size` bytes from `data` as a git blob; returns its id.
    fn blob(&mut self, data: &mut dyn Read, size: u64) -> Result<[u8; 20], RecipeError> {
        let header = blob_header(size);
        if header.len() as u64 + size <= MAX_INLINE_OBJECT {
            let mut object = header;
            object.resize(object.len() + size as usize, 0);
            let start = object.len() - size as usize;
            data.read_exact(&mut object[start..])
                .map_err(|e| RecipeError::Truncated(format!("member data: {e}")))?;
            let cid = cid_for(GIT_RAW, &object);
            self.w.write_block_hashed_here(cid, &object)?;
            return Ok(git::object_id(&object));
        }
        struct Feed<'a> {
            inner: io::Take<&'a mut dyn Read>,
            hasher: BlobHasher,
        }
        impl Read for Feed<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.inner.read(buf)?;
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
        }
        let mut feed = Feed {
            inner: data.take(size),
            hasher: BlobHasher::new(size),
        };
        let added = unixfs::add_file(self.w, &mut feed, &Profile::NixLargeBlob.params())?;
        if added.size != size {
            return Err(RecipeError::Truncated("member data ends early".into()));
        }
        let id = feed.hasher.finish();
        let git = git_cid(&id);
        self.large.insert(
            git.to_bytes(),
            LargeBlob {
                git,
                unixfs: added.cid,
                size,
            },
        );
        Ok(id)
    }

    fn count(&mut self, name: &[u8], offset: u64) -> Result<(), RecipeError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(too_large(
                Limit::Entries,
                self.limits.max_entries,
                name,
                offset,
            ));
        }
        Ok(())
    }

    fn charge(&mut self, size: u64, name: &[u8], offset: u64) -> Result<(), RecipeError> {
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_bytes {
            return Err(too_large(Limit::Bytes, self.limits.max_bytes, name, offset));
        }
        Ok(())
    }

    /// The directory that holds `parents`, created as needed.
    fn parent_dir(
        &mut self,
        parents: &[Vec<u8>],
    ) -> Result<&mut BTreeMap<Vec<u8>, Node>, UnsafeReason> {
        let mut dir = &mut self.root;
        for (i, c) in parents.iter().enumerate() {
            let node = dir
                .entry(c.clone())
                .or_insert_with(|| Node::Dir(BTreeMap::new()));
            dir = match node {
                Node::Dir(children) => children,
                Node::Symlink { .. } => {
                    return Err(UnsafeReason::ThroughSymlink(lossy(
                        &parents[..=i].join(&b'/'),
                    )))
                }
                Node::File { .. } => {
                    return Err(UnsafeReason::ThroughNonDirectory(lossy(
                        &parents[..=i].join(&b'/'),
                    )))
                }
            };
        }
        Ok(dir)
    }

    fn insert(&mut self, components: &[Vec<u8>], node: Node) -> Result<(), UnsafeReason> {
        let Some((last, parents)) = components.split_last() else {
            return match node {
                Node::Dir(_) => Ok(()),
                _ => Err(UnsafeReason::NamesRoot),
            };
        };
        let dir = self.parent_dir(parents)?;
        match (dir.get(last), &node) {
            (Some(Node::Dir(_)), Node::Dir(_)) => Ok(()),
            (Some(Node::Dir(children)), _) if !children.is_empty() => {
                Err(UnsafeReason::ReplacesDirectory)
            }
            _ => {
                dir.insert(last.clone(), node);
                Ok(())
            }
        }
    }

    fn find(&self, components: &[Vec<u8>]) -> Option<&Node> {
        let (last, parents) = components.split_last()?;
        let mut dir = &self.root;
        for c in parents {
            match dir.get(c)? {
                Node::Dir(children) => dir = children,
                _ => return None,
            }
        }
        dir.get(last)
    }

    /// A copy of what a hardlink names: an earlier file or symlink reached
    /// through real directories.
    fn hardlink_source(&self, target: &[u8]) -> Result<Node, UnsafeReason> {
        let shown = lossy(target);
        let components = split_name(target)
            .map_err(|why| UnsafeReason::HardlinkOutside(shown.clone(), Box::new(why)))?;
        let Some((last, parents)) = components.split_last() else {
            return Err(UnsafeReason::HardlinkToDirectory(shown));
        };
        let mut dir = &self.root;
        for (i, c) in parents.iter().enumerate() {
            match dir.get(c) {
                Some(Node::Dir(children)) => dir = children,
                Some(Node::Symlink { .. }) => {
                    return Err(UnsafeReason::HardlinkOutside(
                        shown,
                        Box::new(UnsafeReason::ThroughSymlink(lossy(
                            &parents[..=i].join(&b'/'),
                        ))),
                    ))
                }
                _ => return Err(UnsafeReason::HardlinkMissing(shown)),
            }
        }
        match dir.get(last) {
            Some(Node::File { exec, id, size }) => Ok(Node::File {
                exec: *exec,
                id: *id,
                size: *size,
            }),
            Some(Node::Symlink { id, target }) => Ok(Node::Symlink {
                id: *id,
                target: target.clone(),
            }),
            Some(Node::Dir(_)) => Err(UnsafeReason::HardlinkToDirectory(shown)),
            None => Err(UnsafeReason::HardlinkMissing(shown)),
        }
    }

    fn write_dir(
        w: &mut W,
        dir: &BTreeMap<Vec<u8>, Node>,
        path: &[u8],
        depth: usize,
    ) -> Result<[u8; 20], RecipeError> {
        if depth > MAX_DEPTH {
            return Err(RecipeError::Unpack(UnpackError::Unsupported {
                what: format!("path nested deeper than {MAX_DEPTH} directories"),
                entry: Some(lossy(path)),
                at: None,
            }));
        }
        let mut entries = Vec::with_capacity(dir.len());
        let mut body = 0usize;
        for (name, node) in dir {
            let (mode, id) = match node {
                Node::File { exec, id, .. } => {
                    (if *exec { Mode::Executable } else { Mode::File }, *id)
                }
                Node::Symlink { id, .. } => (Mode::Symlink, *id),
                Node::Dir(children) => {
                    let sub = [path, b"/", name].concat();
                    (Mode::Tree, Self::write_dir(w, children, &sub, depth + 1)?)
                }
            };
            body += name.len() + 28;
            if body > MAX_BLOCK_SIZE - 64 {
                return Err(RecipeError::TreeTooLarge(lossy(path)));
            }
            entries.push(TreeEntry {
                mode,
                name: name.clone(),
                id,
            });
        }
        let object = tree_object(&mut entries)?;
        let cid = cid_for(GIT_RAW, &object);
        w.write_block_hashed_here(cid, &object)?;
        Ok(git::object_id(&object))
    }
}

/// A metadata record (long name, long link, pax) seen before a member.
struct Meta {
    typeflag: u8,
    header: Header,
    /// The data blocks, padding included.
    data: Vec<u8>,
    size: u64,
}

/// Takes the tar stream `input` apart: blocks of the tree go to `w`, raw
/// bytes to `extra` (in the order the reassembler reads them).
pub(crate) fn disassemble<W: BlockWrite>(
    w: &mut W,
    input: &mut dyn Read,
    extra: &mut dyn Write,
    limits: &UnpackLimits,
) -> Result<Disassembled, RecipeError> {
    let mut input = Counted {
        inner: input,
        count: 0,
    };
    let mut b = Builder {
        w,
        limits: *limits,
        root: BTreeMap::new(),
        large: BTreeMap::new(),
        entries: 0,
        bytes: 0,
    };
    let mut templates = Templates::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut prev_name: Vec<u8> = Vec::new();
    let mut metas: Vec<Meta> = Vec::new();
    let mut meta_bytes = 0u64;
    let mut tail_len = 0u64;
    let mut pad = vec![0u8; BLOCK];
    loop {
        let offset = input.count;
        let mut block = [0u8; BLOCK];
        let n = read_full(&mut input, &mut block).map_err(RecipeError::Read)?;
        let header_size = (n == BLOCK)
            .then(|| parse_numeric(&block[SIZE]))
            .flatten()
            .filter(|_| block.iter().any(|&x| x != 0) && checksum_ok(&block));
        let Some(size) = header_size else {
            // The end of the archive, and whatever follows it, verbatim.
            for meta in &metas {
                extra.write_all(&meta.header).map_err(RecipeError::Spool)?;
                extra.write_all(&meta.data).map_err(RecipeError::Spool)?;
                tail_len += (BLOCK + meta.data.len()) as u64;
            }
            extra.write_all(&block[..n]).map_err(RecipeError::Spool)?;
            tail_len += n as u64;
            tail_len += io::copy(&mut input, extra).map_err(RecipeError::Read)?;
            break;
        };
        let typeflag = block[TYPEFLAG];
        if matches!(typeflag, b'L' | b'K' | b'x' | b'g' | b'X') {
            let padded = round_up(size);
            meta_bytes += BLOCK as u64 + padded;
            if meta_bytes > crate::unpack::MAX_HEADER_BYTES || metas.len() as u64 >= MAX_METAS {
                return Err(too_large(
                    Limit::HeaderBytes,
                    crate::unpack::MAX_HEADER_BYTES,
                    field_text(&block[NAME]),
                    offset,
                ));
            }
            let mut data = vec![0u8; padded as usize];
            input
                .read_exact(&mut data)
                .map_err(|e| RecipeError::Truncated(format!("tar metadata record: {e}")))?;
            metas.push(Meta {
                typeflag,
                header: block,
                data,
                size,
            });
            continue;
        }

        // A member: its effective name, link and size.
        let mut name = field_text(&block[NAME]).to_vec();
        if is_posix(&block) && block[PREFIX.start] != 0 {
            name = [field_text(&block[PREFIX]), b"/", &name].concat();
        }
        let mut link = field_text(&block[LINKNAME]).to_vec();
        let mut data_size = size;
        for meta in &metas {
            let text = &meta.data[..meta.size as usize];
            match meta.typeflag {
                b'L' => name = field_text(text).to_vec(),
                b'K' => link = field_text(text).to_vec(),
                b'x' => {
                    for (key, value) in pax_records(text) {
                        match key {
                            b"path" => name = value.to_vec(),
                            b"linkpath" => link = value.to_vec(),
                            b"size" => {
                                if let Some(v) = std::str::from_utf8(value)
                                    .ok()
                                    .and_then(|v| v.parse::<u64>().ok())
                                {
                                    data_size = v;
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if name.len() > MAX_NAME || link.len() > MAX_NAME {
            return Err(too_large(
                Limit::HeaderBytes,
                MAX_NAME as u64,
                &name[..name.len().min(100)],
                offset,
            ));
        }
        let components = split_name(&name).map_err(|why| unsafe_at(&name, offset, why))?;
        if components.len() > MAX_DEPTH {
            return Err(RecipeError::Unpack(UnpackError::Unsupported {
                what: format!("path nested deeper than {MAX_DEPTH} directories"),
                entry: Some(lossy(&name)),
                at: Some(Position::Tar { offset }),
            }));
        }
        b.count(&name, offset)?;
        let depth = components.len().saturating_sub(1);
        let unsafe_entry = |why| unsafe_at(&name, offset, why);

        // What the canonical writer is told, and how the record starts.
        let mut body = Vec::new();
        let mut decide = None;
        let mut raw_len = 0u64;
        let mut already_raw = 0u64;
        let (class, canon_size, canon_link): (Class, u64, Vec<u8>) = match typeflag {
            b'0' | 0 | b'7' => {
                let exec = parse_numeric(&block[MODE]).is_some_and(|m| m & 0o100 != 0);
                let class = if exec { Class::Exec } else { Class::File };
                b.charge(data_size, &name, offset)?;
                let id = b.blob(&mut input, data_size)?;
                b.insert(
                    &components,
                    Node::File {
                        exec,
                        id,
                        size: data_size,
                    },
                )
                .map_err(unsafe_entry)?;
                decide = Some(Decide {
                    components: components.clone(),
                    class,
                    id,
                });
                (class, data_size, Vec::new())
            }
            b'2' => {
                check_symlink(&link, depth).map_err(unsafe_entry)?;
                let object = git::blob_object(&link);
                let cid = cid_for(GIT_RAW, &object);
                b.w.write_block_hashed_here(cid, &object)?;
                let id = git::object_id(&object);
                b.insert(
                    &components,
                    Node::Symlink {
                        id,
                        target: link.clone(),
                    },
                )
                .map_err(unsafe_entry)?;
                decide = Some(Decide {
                    components: components.clone(),
                    class: Class::Symlink,
                    id,
                });
                raw_len = round_up(data_size);
                (Class::Symlink, 0, link.clone())
            }
            b'5' => {
                b.insert(&components, Node::Dir(BTreeMap::new()))
                    .map_err(unsafe_entry)?;
                body.push(KIND_DIR);
                raw_len = round_up(data_size);
                (Class::Dir, 0, Vec::new())
            }
            b'1' => {
                let source = b.hardlink_source(&link).map_err(unsafe_entry)?;
                match &source {
                    Node::File { size, .. } => b.charge(*size, &name, offset)?,
                    Node::Symlink { target, .. } => {
                        check_symlink(target, depth).map_err(unsafe_entry)?
                    }
                    Node::Dir(_) => {}
                }
                b.insert(&components, source).map_err(unsafe_entry)?;
                body.push(KIND_LINK);
                put_varint(&mut body, link.len() as u64);
                body.extend_from_slice(&link);
                raw_len = round_up(data_size);
                put_varint(&mut body, raw_len);
                (Class::Hardlink, 0, link.clone())
            }
            t => {
                // Devices, FIFOs, GNU sparse files and unknown types: the
                // tree cannot hold them; header and data stay in the recipe.
                raw_len = round_up(data_size);
                if t == b'S' && block[482] != 0 {
                    already_raw = copy_sparse_extensions(&mut input, extra)?;
                    raw_len += already_raw;
                }
                body.push(KIND_OTHER);
                body.push(t);
                put_varint(&mut body, raw_len);
                (Class::Other(t), 0, Vec::new())
            }
        };

        put_name(&mut body, &prev_name, &name);
        prev_name.clone_from(&name);
        put_varint(&mut body, metas.len() as u64);
        for meta in metas.drain(..) {
            body.push(meta.typeflag);
            let canonical_text: Option<&[u8]> = match meta.typeflag {
                b'L' => Some(&name),
                b'K' => Some(&canon_link),
                _ => None,
            };
            let canonical_data = canonical_text.map(|text| {
                let mut d = text.to_vec();
                d.push(0);
                d.resize(round_up(d.len() as u64) as usize, 0);
                d
            });
            let size = if canonical_data.as_ref() == Some(&meta.data)
                && meta.size == canonical_text.map_or(0, |t| t.len() as u64 + 1)
            {
                body.push(0);
                meta.size
            } else {
                body.push(1);
                put_varint(&mut body, meta.size);
                put_varint(&mut body, meta.data.len() as u64);
                body.extend_from_slice(&meta.data);
                meta.size
            };
            let class = Class::Meta(meta.typeflag);
            let template = templates.get(class);
            let canonical = canonical_meta(&template, meta.typeflag, size);
            let canonical = with_checksum_of(&canonical, &template, &meta.header);
            encode_diff(&mut body, &meta.header, &canonical);
            templates.record(class, &meta.header);
        }
        let long_record = meta_bytes > 0;
        meta_bytes = 0;
        let template = templates.get(class);
        let canonical = canonical_member(
            &template,
            class,
            &name,
            long_record,
            canon_size,
            &canon_link,
        );
        let canonical = with_checksum_of(&canonical, &template, &block);
        encode_diff(&mut body, &block, &canonical);
        templates.record(class, &block);

        // Data: file padding, or raw bytes the tree cannot give.
        if matches!(class, Class::File | Class::Exec) {
            let padding = (round_up(data_size) - data_size) as usize;
            read_exact_or_truncated(&mut input, &mut pad[..padding])?;
            if pad[..padding].iter().all(|&x| x == 0) {
                body.push(0);
            } else {
                body.push(1);
                extra
                    .write_all(&pad[..padding])
                    .map_err(RecipeError::Spool)?;
            }
        } else {
            if matches!(class, Class::Dir | Class::Symlink) {
                put_varint(&mut body, raw_len);
            }
            let expected = raw_len - already_raw;
            let copied =
                io::copy(&mut (&mut input).take(expected), extra).map_err(RecipeError::Read)?;
            if copied != expected {
                return Err(RecipeError::Truncated("tar member data ends early".into()));
            }
        }
        pending.push(Pending { decide, body });
    }

    // The tree, then which members it holds exactly.
    let root = std::mem::take(&mut b.root);
    let tree_id = Builder::write_dir(b.w, &root, b"", 0)?;
    b.root = root;
    let mut extra_index: HashMap<[u8; 20], u64> = HashMap::new();
    let mut extra_blobs = Vec::new();
    let mut records = Vec::new();
    for p in &pending {
        if let Some(d) = &p.decide {
            let in_tree = match (b.find(&d.components), d.class) {
                (Some(Node::File { exec, id, .. }), Class::File | Class::Exec) => {
                    *id == d.id && *exec == (d.class == Class::Exec)
                }
                (Some(Node::Symlink { id, .. }), Class::Symlink) => *id == d.id,
                _ => false,
            };
            if in_tree {
                records.push(KIND_TREE);
            } else {
                records.push(KIND_BLOB);
                records.push(d.class.code());
                let next = extra_index.len() as u64;
                let index = *extra_index.entry(d.id).or_insert_with(|| {
                    extra_blobs.push(git_cid(&d.id));
                    next
                });
                put_varint(&mut records, index);
            }
        }
        records.extend_from_slice(&p.body);
    }
    put_varint(&mut records, tail_len);
    let mut blobs: Vec<LargeBlob> = b.large.into_values().collect();
    blobs.sort_by_key(|x| x.git.to_bytes());
    Ok(Disassembled {
        tree: git_cid(&tree_id),
        blobs,
        extra_blobs,
        members: pending.len() as u64,
        tar_bytes: input.count,
        records,
    })
}

fn read_exact_or_truncated(input: &mut dyn Read, buf: &mut [u8]) -> Result<(), RecipeError> {
    input
        .read_exact(buf)
        .map_err(|e| RecipeError::Truncated(format!("tar member padding: {e}")))
}

/// GNU sparse extension headers after an `S` header: copied to `extra`.
fn copy_sparse_extensions(input: &mut dyn Read, extra: &mut dyn Write) -> Result<u64, RecipeError> {
    let mut total = 0u64;
    loop {
        let mut ext = [0u8; BLOCK];
        read_exact_or_truncated(input, &mut ext)?;
        extra.write_all(&ext).map_err(RecipeError::Spool)?;
        total += BLOCK as u64;
        if ext[504] == 0 || total > crate::unpack::MAX_HEADER_BYTES {
            return Ok(total);
        }
    }
}

/// `key=value` records of a pax header (`<len> <key>=<value>\n`).
fn pax_records(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|&b| b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|t| t.parse::<usize>().ok())
        else {
            break;
        };
        if len <= sp + 1 || len > rest.len() {
            break;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            out.push((&record[..eq], &record[eq + 1..]));
        }
        rest = &rest[len..];
    }
    out
}

// ---------------------------------------------------------------------------
// Reassembly.

/// Finds tree entries by path, keeping the trees along the last path.
struct TreeLookup<'a, R: BlockRead> {
    blocks: &'a R,
    root: Vec<TreeEntry>,
    chain: Vec<(Vec<u8>, Vec<TreeEntry>)>,
}

fn load_tree<R: BlockRead>(blocks: &R, cid: &Cid) -> Result<Vec<TreeEntry>, RecipeError> {
    let data = read_block(blocks, cid)?;
    git::parse_tree(&data).map_err(|source| RecipeError::Git { cid: *cid, source })
}

fn read_block<R: BlockRead>(blocks: &R, cid: &Cid) -> Result<ipnix_store::Bytes, RecipeError> {
    blocks.read_block(cid)?.ok_or(RecipeError::Missing(*cid))
}

fn find_entry<'e>(entries: &'e [TreeEntry], name: &[u8], tree: bool) -> Option<&'e TreeEntry> {
    entries
        .binary_search_by(|e| git::git_order(&e.name, e.mode == Mode::Tree, name, tree))
        .ok()
        .map(|i| &entries[i])
}

impl<R: BlockRead> TreeLookup<'_, R> {
    fn lookup(&mut self, components: &[Vec<u8>]) -> Result<Option<TreeEntry>, RecipeError> {
        let Some((last, parents)) = components.split_last() else {
            return Ok(None);
        };
        let keep = self
            .chain
            .iter()
            .zip(parents)
            .take_while(|((c, _), p)| c == *p)
            .count();
        self.chain.truncate(keep);
        for c in &parents[keep..] {
            let entries = self.chain.last().map_or(&self.root, |(_, e)| e);
            let Some(entry) = find_entry(entries, c, true) else {
                return Ok(None);
            };
            let cid = entry.cid();
            let loaded = load_tree(self.blocks, &cid)?;
            self.chain.push((c.clone(), loaded));
        }
        let entries = self.chain.last().map_or(&self.root, |(_, e)| e);
        Ok(find_entry(entries, last, false).cloned())
    }
}

/// Where a member's contents come from.
enum Source {
    Small(ipnix_store::Bytes),
    Large(LargeBlob),
}

/// Rebuilds the tar stream into `out`; returns its length.
pub(crate) fn reassemble<R: BlockRead>(
    blocks: &R,
    recipe: &super::object::Recipe,
    records: &mut dyn Read,
    extra: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<u64, RecipeError> {
    let mut records = Records { inner: records };
    let mut tree = TreeLookup {
        blocks,
        root: load_tree(blocks, &recipe.tree)?,
        chain: Vec::new(),
    };
    let mut templates = Templates::default();
    let mut prev_name: Vec<u8> = Vec::new();
    let mut written = 0u64;
    let mut out = CountingWrite {
        inner: out,
        count: &mut written,
        limit: recipe.archive.tar_bytes,
    };
    let large = |git: &Cid| -> Option<LargeBlob> {
        let key = git.to_bytes();
        recipe
            .blobs
            .binary_search_by(|b| b.git.to_bytes().cmp(&key))
            .ok()
            .map(|i| recipe.blobs[i])
    };
    let load = |git: Cid| -> Result<Source, RecipeError> {
        match large(&git) {
            Some(blob) => Ok(Source::Large(blob)),
            None => Ok(Source::Small(read_block(blocks, &git)?)),
        }
    };
    for _ in 0..recipe.archive.members {
        let kind = records.byte()?;
        let mut raw_len = 0u64;
        let mut source = None;
        let mut decided_class = None;
        let mut link = Vec::new();
        match kind {
            KIND_TREE => {}
            KIND_BLOB => {
                let class = Class::from_code(records.byte()?)
                    .ok_or_else(|| corrupt("unknown blob member class"))?;
                let index = records.varint()?;
                let git = *recipe
                    .extra_blobs
                    .get(usize::try_from(index).unwrap_or(usize::MAX))
                    .ok_or_else(|| corrupt(format!("extra blob {index} does not exist")))?;
                source = Some(load(git)?);
                decided_class = Some(class);
            }
            KIND_LINK => {
                let len = records.varint()?;
                link = records.bytes(len, MAX_NAME as u64)?;
                raw_len = records.varint()?;
                decided_class = Some(Class::Hardlink);
            }
            KIND_OTHER => {
                let t = records.byte()?;
                raw_len = records.varint()?;
                decided_class = Some(Class::Other(t));
            }
            KIND_DIR => decided_class = Some(Class::Dir),
            other => return Err(corrupt(format!("unknown member kind {other}"))),
        }
        let name = records.name(&prev_name)?;
        prev_name.clone_from(&name);
        let class = match decided_class {
            Some(class) => class,
            None => {
                let components = split_name(&name)
                    .map_err(|why| corrupt(format!("member name {:?}: {why}", lossy(&name))))?;
                let entry = tree
                    .lookup(&components)?
                    .ok_or_else(|| RecipeError::TreeLacks(lossy(&name)))?;
                source = Some(load(entry.cid())?);
                match entry.mode {
                    Mode::File => Class::File,
                    Mode::Executable => Class::Exec,
                    Mode::Symlink => Class::Symlink,
                    Mode::Tree => return Err(RecipeError::TreeLacks(lossy(&name))),
                }
            }
        };
        // Size and link target from the source.
        let (size, small_data): (u64, Option<&[u8]>) = match &source {
            Some(Source::Small(bytes)) => {
                let data = git::parse_blob(bytes).map_err(|e| corrupt(format!("blob: {e}")))?;
                (data.len() as u64, Some(data))
            }
            Some(Source::Large(blob)) => (blob.size, None),
            None => (0, None),
        };
        if class == Class::Symlink {
            link = small_data
                .ok_or_else(|| corrupt("a symlink's target is a large blob"))?
                .to_vec();
        }
        if matches!(class, Class::Symlink | Class::File | Class::Exec) && source.is_none() {
            return Err(corrupt("file member without contents"));
        }

        let metas = records.varint()?;
        if metas > MAX_METAS {
            return Err(corrupt("too many metadata records"));
        }
        for _ in 0..metas {
            let t = records.byte()?;
            let mode = records.byte()?;
            let (size, data) = match mode {
                0 => {
                    let text: &[u8] = match t {
                        b'L' => &name,
                        b'K' => &link,
                        _ => return Err(corrupt("canonical data for a pax record")),
                    };
                    let mut d = text.to_vec();
                    d.push(0);
                    let size = d.len() as u64;
                    d.resize(round_up(size) as usize, 0);
                    (size, d)
                }
                1 => {
                    let size = records.varint()?;
                    let len = records.varint()?;
                    if len != round_up(size) {
                        return Err(corrupt("pax data length is not its size padded"));
                    }
                    (size, records.bytes(len, crate::unpack::MAX_HEADER_BYTES)?)
                }
                _ => return Err(corrupt("unknown metadata data mode")),
            };
            let meta_class = Class::Meta(t);
            let template = templates.get(meta_class);
            let canonical = canonical_meta(&template, t, size);
            let header = records.apply_diff(&canonical, &template)?;
            templates.record(meta_class, &header);
            out.write_all(&header)?;
            out.write_all(&data)?;
        }
        let template = templates.get(class);
        let canonical = canonical_member(&template, class, &name, metas > 0, size, &link);
        let header = records.apply_diff(&canonical, &template)?;
        templates.record(class, &header);
        out.write_all(&header)?;
        match class {
            Class::File | Class::Exec => {
                match &source {
                    Some(Source::Small(_)) => {
                        out.write_all(small_data.expect("small blob has data"))?;
                    }
                    Some(Source::Large(blob)) => {
                        let mut reader = unixfs::cat(blocks, &blob.unixfs)?;
                        let copied = io::copy(&mut (&mut reader).take(blob.size), &mut out)
                            .map_err(RecipeError::Write)?;
                        if copied != blob.size {
                            return Err(RecipeError::BlobSize(blob.git));
                        }
                    }
                    None => {}
                }
                let padding = round_up(size) - size;
                match records.byte()? {
                    0 => out.write_all(&[0u8; BLOCK][..padding as usize])?,
                    1 => copy_extra(extra, &mut out, padding)?,
                    _ => return Err(corrupt("unknown padding flag")),
                }
            }
            Class::Symlink | Class::Dir => {
                let raw_len = records.varint()?;
                copy_extra(extra, &mut out, raw_len)?;
            }
            _ => copy_extra(extra, &mut out, raw_len)?,
        }
    }
    let tail = records.varint()?;
    copy_extra(extra, &mut out, tail)?;
    let mut probe = [0u8; 1];
    if records.inner.read(&mut probe).map_err(RecipeError::Read)? != 0 {
        return Err(corrupt("records continue past the last member"));
    }
    if extra.read(&mut probe).map_err(RecipeError::Read)? != 0 {
        return Err(corrupt("extra bytes left over"));
    }
    if written != recipe.archive.tar_bytes {
        return Err(RecipeError::TarSize {
            expected: recipe.archive.tar_bytes,
            actual: written,
        });
    }
    Ok(written)
}

fn copy_extra(extra: &mut dyn Read, out: &mut dyn Write, len: u64) -> Result<(), RecipeError> {
    let copied = io::copy(&mut extra.take(len), out).map_err(RecipeError::Write)?;
    if copied != len {
        return Err(corrupt("the extra stream ends early"));
    }
    Ok(())
}

/// Refuses to write past the tar length the recipe states.
struct CountingWrite<'a> {
    inner: &'a mut dyn Write,
    count: &'a mut u64,
    limit: u64,
}

impl Write for CountingWrite<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if *self.count + data.len() as u64 > self.limit {
            return Err(io::Error::other(RecipeError::TarSize {
                expected: self.limit,
                actual: *self.count + data.len() as u64,
            }));
        }
        let n = self.inner.write(data)?;
        *self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl From<io::Error> for RecipeError {
    fn from(e: io::Error) -> Self {
        RecipeError::Write(e)
    }
}

/// Encodes `actual` against the canonical header for a member and decodes
/// it back: the property the record format rests on (for proptest).
pub fn header_round_trip(
    template: &[u8; BLOCK],
    actual: &[u8; BLOCK],
    name: &[u8],
    size: u64,
    exec: bool,
) -> bool {
    let class = if exec { Class::Exec } else { Class::File };
    let canonical = canonical_member(template, class, name, false, size, b"");
    let with_sum = with_checksum_of(&canonical, template, actual);
    let mut encoded = Vec::new();
    encode_diff(&mut encoded, actual, &with_sum);
    let mut records = Records {
        inner: &encoded[..],
    };
    match records.apply_diff(&canonical, template) {
        Ok(h) => h == *actual,
        Err(_) => false,
    }
}
