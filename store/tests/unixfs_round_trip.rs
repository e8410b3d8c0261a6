//! UnixFS round trips on MemoryBlocks (and once on the real Store through a
//! session, with a CAR hop into a second store): add then cat/seek gives the same
//! bytes at every size around chunk and fan-out boundaries; directory trees
//! (with empty files and dirs, symlinks, hidden files, HAMT shards) come
//! back identical through get_to_path; known CIDs that Kubo 0.22 and Helia 7
//! produced for the same bytes (the live comparison is tests/tests/unixfs_interop.rs).

use ipnix_store::test_util::pseudo_random;
use ipnix_store::unixfs::{
    add_file, add_path, cat, get_to_path, ls, stat, NodeKind, Params, Profile, UnixfsError,
    HAMT_SHARDING_THRESHOLD,
};
use ipnix_store::{BlockRead, Bytes, Cid, MemoryBlocks, NullBlocks, StoreError};
use proptest::prelude::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

fn cat_all(blocks: &MemoryBlocks, cid: &Cid) -> Vec<u8> {
    let mut out = Vec::new();
    let mut reader = cat(blocks, cid).expect("opens");
    reader.read_to_end(&mut out).expect("reads");
    assert_eq!(out.len() as u64, reader.len());
    out
}

fn small(cid_version: u8, raw_leaves: bool, chunk_size: usize, max_links: usize) -> Params {
    Params {
        cid_version,
        raw_leaves,
        chunk_size,
        max_links,
    }
}

#[test]
fn known_cids_from_kubo_and_helia() {
    let v0 = Profile::V0_2015.params();
    let v1 = Profile::V1_2025.params();
    let zeros = vec![0u8; 300_000];
    // (content, profile, CID the real peer printed for the same bytes)
    let cases: [(&[u8], Params, &str); 6] = [
        (b"", v0, "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
        (b"x", v0, "QmULKig5Fxrs2sC4qt9nNduucXfb92AFYQ6Hi3YRqDmrYC"),
        (&zeros, v0, "QmXZSW216AmapthUD5r9LAoFg2LmkYY291aSKKi5cWUj6Y"),
        (
            b"",
            v1,
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        ),
        (
            b"x",
            v1,
            "bafkreibnoelefnzgwbcacyt4vh52ymxvzbjq7mmqhtcnwarfq4lzegsiqe",
        ),
        (
            &zeros,
            v1,
            "bafkreieim4k6ibi6qj7u7yqv34yfhlz7qwwq2njnwlectr2ipl3npdx6ga",
        ),
    ];
    for (content, params, expected) in cases {
        let added = add_file(&mut NullBlocks, content, &params).expect("adds");
        assert_eq!(added.cid.to_string(), expected, "{} bytes", content.len());
        assert_eq!(added.size, content.len() as u64);
    }
}

#[test]
fn sizes_around_every_boundary_round_trip() {
    for (chunk, links) in [(7usize, 2usize), (16, 3), (5, 4)] {
        for raw_leaves in [true, false] {
            for cid_version in [0u8, 1] {
                let params = small(cid_version, raw_leaves, chunk, links);
                let mut sizes = vec![0usize, 1];
                for leaves in [1, links, links * links, links * links * links] {
                    let n = leaves * chunk;
                    sizes.extend([n - 1, n, n + 1]);
                }
                for size in sizes {
                    let data = pseudo_random(size as u64, size);
                    let mut blocks = MemoryBlocks::new();
                    let added = add_file(&mut blocks, &data[..], &params).expect("adds");
                    assert_eq!(added.size, size as u64);
                    // Identical chunks are stored once but counted in tsize every time.
                    assert!(added.tsize >= blocks.total_bytes());
                    assert_eq!(cat_all(&blocks, &added.cid), data, "{params:?} size {size}");
                    let st = stat(&blocks, &added.cid).expect("stat");
                    assert_eq!(st.kind, NodeKind::File);
                    assert_eq!(st.size, Some(size as u64));
                    // Streaming through NullBlocks gives the same CID.
                    let null = add_file(&mut NullBlocks, &data[..], &params).expect("adds");
                    assert_eq!(null, added);
                }
            }
        }
    }
}

#[test]
fn tree_shape_is_balanced() {
    // 2 links per node, 1-byte chunks: 5 leaves -> 3 parents -> 2 -> root.
    let params = small(1, true, 1, 2);
    let mut blocks = MemoryBlocks::new();
    let added = add_file(&mut blocks, &b"abcde"[..], &params).expect("adds");
    // Blocks: 5 raw leaves, parents (ab)(cd)(e), ((ab)(cd)), ((e)), root.
    assert_eq!(blocks.len(), 5 + 3 + 2 + 1);
    assert_eq!(cat_all(&blocks, &added.cid), b"abcde");
    // tsize = every block once (no repeated leaves here).
    assert_eq!(added.tsize, blocks.total_bytes());
}

#[test]
fn missing_block_names_the_cid() {
    let params = small(1, true, 4, 2);
    let mut full = MemoryBlocks::new();
    let data = pseudo_random(3, 40);
    let added = add_file(&mut full, &data[..], &params).expect("adds");
    let leaf = ipnix_store::block::cid_for(ipnix_store::block::RAW, &data[36..]);
    let holey = Without {
        inner: &full,
        missing: leaf,
    };
    let mut reader = cat(&holey, &added.cid).expect("root and first leaf are there");
    let err = reader
        .read_to_end(&mut Vec::new())
        .expect_err("leaf missing");
    let text = err.to_string();
    assert!(text.contains(&leaf.to_string()), "{text}");
}

struct Without<'a> {
    inner: &'a MemoryBlocks,
    missing: Cid,
}

impl BlockRead for Without<'_> {
    fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
        if *cid == self.missing {
            return Ok(None);
        }
        self.inner.read_block(cid)
    }
}

#[test]
fn seeking_reads_from_anywhere() {
    let params = small(0, false, 10, 3);
    let data = pseudo_random(9, 1000);
    let mut blocks = MemoryBlocks::new();
    let added = add_file(&mut blocks, &data[..], &params).expect("adds");
    let mut reader = cat(&blocks, &added.cid).expect("opens");
    for offset in [0u64, 1, 9, 10, 11, 299, 300, 301, 999, 1000] {
        reader.seek(SeekFrom::Start(offset)).expect("seeks");
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("reads");
        assert_eq!(out, &data[offset as usize..], "offset {offset}");
    }
    reader.seek(SeekFrom::End(-5)).expect("seeks");
    let mut tail = [0u8; 5];
    reader.read_exact(&mut tail).expect("reads");
    assert_eq!(&tail, &data[995..]);
    assert!(reader.seek(SeekFrom::Start(1001)).is_err());
    assert!(reader.seek(SeekFrom::Current(-2000)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn add_then_cat_is_identity(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        chunk in 1usize..64,
        links in 2usize..6,
        raw_leaves in any::<bool>(),
        cid_version in 0u8..2,
        seek_at in any::<prop::sample::Index>(),
    ) {
        let params = small(cid_version, raw_leaves, chunk, links);
        let mut blocks = MemoryBlocks::new();
        let added = add_file(&mut blocks, &data[..], &params).expect("adds");
        prop_assert_eq!(cat_all(&blocks, &added.cid), data.clone());
        let offset = if data.is_empty() { 0 } else { seek_at.index(data.len()) };
        let mut reader = cat(&blocks, &added.cid).expect("opens");
        reader.seek(SeekFrom::Start(offset as u64)).expect("seeks");
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).expect("reads");
        prop_assert_eq!(&rest[..], &data[offset..]);
    }

    #[test]
    fn short_reads_from_the_source_do_not_change_the_cid(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        step in 1usize..50,
    ) {
        let params = small(1, true, 32, 4);
        let whole = add_file(&mut NullBlocks, &data[..], &params).expect("adds");
        let trickled = add_file(&mut NullBlocks, Trickle { data: &data, step }, &params).expect("adds");
        prop_assert_eq!(whole, trickled);
    }
}

/// A reader that hands out at most `step` bytes per call.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A reader that fails after `good` bytes.
struct FailingReader {
    good: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.good == 0 {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = self.good.min(buf.len());
        buf[..n].fill(7);
        self.good -= n;
        Ok(n)
    }
}

/// A block writer that refuses every block after the first `accept`.
struct FailingWriter {
    accept: usize,
}

impl ipnix_store::BlockWrite for FailingWriter {
    fn write_block(&mut self, cid: Cid, _data: &[u8]) -> Result<(), StoreError> {
        if self.accept == 0 {
            return Err(StoreError::Missing(cid));
        }
        self.accept -= 1;
        Ok(())
    }
}

#[test]
fn errors_in_the_middle_of_a_long_file_end_the_import() {
    // Many chunks, so the hashing pipeline is running when the error comes.
    let params = small(0, false, 64, 4);
    for good in [64, 65, 64 * 5, 64 * 5 + 3, 64 * 40] {
        let err = add_file(&mut NullBlocks, FailingReader { good }, &params)
            .expect_err("a read error is an error");
        assert!(matches!(err, UnixfsError::Read(_)), "{good}: {err}");
    }
    for accept in [0, 1, 3, 10] {
        let err = add_file(
            &mut FailingWriter { accept },
            &pseudo_random(9, 64 * 50)[..],
            &params,
        )
        .expect_err("a write error is an error");
        assert!(matches!(err, UnixfsError::Store(_)), "{accept}: {err}");
    }
}

#[test]
fn bad_params_and_profiles_are_refused() {
    for params in [
        small(2, true, 10, 10),
        small(1, true, 0, 10),
        small(1, true, 10, 1),
        small(1, true, 4 << 20, 10),
    ] {
        assert!(matches!(
            add_file(&mut NullBlocks, &b"x"[..], &params),
            Err(UnixfsError::BadParams(_))
        ));
    }
    assert_eq!(
        "unixfs-v1-2025".parse::<Profile>().expect("known"),
        Profile::V1_2025
    );
    assert_eq!(
        "unixfs-v0-2015".parse::<Profile>().expect("known"),
        Profile::V0_2015
    );
    assert!("unixfs-v2".parse::<Profile>().is_err());
    let nix = Profile::NixLargeBlob.params();
    assert_eq!(
        (
            nix.cid_version,
            nix.raw_leaves,
            nix.chunk_size,
            nix.max_links
        ),
        (1, true, 1 << 20, 174)
    );
}

/// Every file, directory and symlink under `a` and `b`, compared.
fn assert_same_tree(a: &Path, b: &Path) {
    let ma = fs::symlink_metadata(a).expect("a");
    let mb = fs::symlink_metadata(b).expect("b");
    assert_eq!(ma.file_type(), mb.file_type(), "{a:?} vs {b:?}");
    if ma.file_type().is_symlink() {
        assert_eq!(fs::read_link(a).expect("a"), fs::read_link(b).expect("b"));
    } else if ma.is_file() {
        assert_eq!(fs::read(a).expect("a"), fs::read(b).expect("b"), "{a:?}");
    } else {
        let names = |p: &Path| {
            let mut v: Vec<_> = fs::read_dir(p)
                .expect("dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "{a:?}");
        for name in na {
            assert_same_tree(&a.join(&name), &b.join(&name));
        }
    }
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    fs::write(root.join("a.txt"), b"hello\n").expect("write");
    fs::write(root.join(".hidden"), b"dot\n").expect("write");
    fs::write(root.join("sub/empty"), b"").expect("write");
    fs::write(root.join("sub/deeper/big"), pseudo_random(5, 5000)).expect("write");
    std::os::unix::fs::symlink("../a.txt", root.join("sub/link")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).expect("symlink");
}

#[test]
fn directory_tree_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    sample_tree(&src);
    for params in [small(1, true, 100, 3), Profile::V0_2015.params()] {
        let mut blocks = MemoryBlocks::new();
        let added = add_path(&mut blocks, &src, &params).expect("adds");
        assert_eq!(added.size, 6 + 4 + 5000 + 8 + 19);
        let names: Vec<String> = ls(&blocks, &added.cid)
            .expect("ls")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [".hidden", "a.txt", "dangling", "empty-dir", "sub"]);
        let out = tmp.path().join(format!("out-{}", params.cid_version));
        let got = get_to_path(&blocks, &added.cid, &out).expect("gets");
        assert_eq!((got.files, got.directories, got.symlinks), (4, 4, 2));
        assert_same_tree(&src, &out);
        assert!(matches!(
            get_to_path(&blocks, &added.cid, &out),
            Err(UnixfsError::Exists(_))
        ));
        assert!(matches!(
            cat(&blocks, &added.cid),
            Err(UnixfsError::WrongKind { .. })
        ));
    }
}

#[test]
fn a_symlink_path_is_added_as_a_symlink() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink("somewhere/else", &link).expect("symlink");
    let mut blocks = MemoryBlocks::new();
    let added = add_path(&mut blocks, &link, &Profile::V1_2025.params()).expect("adds");
    let st = stat(&blocks, &added.cid).expect("stat");
    assert_eq!((st.kind, st.size), (NodeKind::Symlink, Some(14)));
    let out = tmp.path().join("out");
    get_to_path(&blocks, &added.cid, &out).expect("gets");
    assert_eq!(
        fs::read_link(&out).expect("link"),
        Path::new("somewhere/else")
    );
}

#[test]
fn big_directories_become_hamt_shards_and_read_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("big");
    fs::create_dir(&src).expect("mkdir");
    // Empty files share one 36-byte CIDv1; 60-byte names: 96 bytes per entry.
    let per_entry = 60 + 36;
    let count = HAMT_SHARDING_THRESHOLD.div_ceil(per_entry) + 10;
    for i in 0..count {
        fs::write(src.join(format!("{i:060}")), b"").expect("write");
    }
    fs::write(src.join(format!("{:060}", 7)), b"seven").expect("write");
    let params = Profile::V1_2025.params();
    let mut blocks = MemoryBlocks::new();
    let added = add_path(&mut blocks, &src, &params).expect("adds");
    let entries = ls(&blocks, &added.cid).expect("ls");
    assert_eq!(entries.len(), count);
    let mut names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), count);
    // The root is a shard: its links carry 2-hex-digit bucket prefixes.
    let root = blocks
        .read_block(&added.cid)
        .expect("read")
        .expect("present");
    assert!(root.len() < 256 * 1024);
    let out = tmp.path().join("out");
    get_to_path(&blocks, &added.cid, &out).expect("gets");
    assert_same_tree(&src, &out);

    // One entry fewer than the threshold needs stays a plain directory.
    let plain = tmp.path().join("plain");
    fs::create_dir(&plain).expect("mkdir");
    for i in 0..(HAMT_SHARDING_THRESHOLD / per_entry) - 1 {
        fs::write(plain.join(format!("{i:060}")), b"").expect("write");
    }
    let added = add_path(&mut blocks, &plain, &params).expect("adds");
    let root = blocks
        .read_block(&added.cid)
        .expect("read")
        .expect("present");
    assert!(root.len() > 200 * 1024, "one plain node holds every link");
}

#[test]
fn works_on_the_real_store_through_a_session() {
    use ipnix_store::car::{export, import};
    use ipnix_store::{PinMode, Store};
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    sample_tree(&src);
    let store = Store::open(&tmp.path().join("repo")).expect("opens");
    let mut session = store.session();
    let added = add_path(&mut session, &src, &Profile::V0_2015.params()).expect("adds");
    session
        .finish(Some((added.cid, PinMode::Recursive, None)))
        .expect("commits");
    let out = tmp.path().join("out");
    get_to_path(&store, &added.cid, &out).expect("gets");
    assert_same_tree(&src, &out);

    // The same DAG through a CAR into a second store.
    let mut car = Vec::new();
    export(&store, &added.cid, &mut car).expect("exports");
    let other = Store::open(&tmp.path().join("repo2")).expect("opens");
    let mut session = other.session();
    let imported = import(&mut session, &car[..]).expect("imports");
    session
        .finish(Some((imported.roots[0], PinMode::Recursive, None)))
        .expect("commits");
    let out2 = tmp.path().join("out2");
    get_to_path(&other, &added.cid, &out2).expect("gets");
    assert_same_tree(&src, &out2);
}
