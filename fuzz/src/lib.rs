//! The bodies of ipnix's fuzz targets, as plain functions over bytes.
//!
//! Each `fuzz_targets/<name>.rs` is one line calling the function of the
//! same name here, and `tests/tests/fuzz_regressions.rs` in the workspace
//! feeds every file of `fuzz/seeds/<name>/` and `fuzz/regressions/<name>/`
//! through the same function (found in [`TARGETS`]), so a crash the fuzzer
//! once found stays a failing `cargo test` until it is fixed.
//!
//! A body never panics on bad input: it panics (an `assert!`) only when an
//! accepted input breaks a promise of the parser, typically that what it
//! accepts re-encodes to the same bytes or value.

#![deny(unsafe_code)]

use bytes::Bytes;
use ipnix_bridge::ca::ContentAddress;
use ipnix_bridge::git::{parse_blob, parse_tree, split_object, tree_object};
use ipnix_bridge::hash::{HashAlgo, NixHash, StorePath};
use ipnix_bridge::narinfo::NarInfo;
use ipnix_bridge::{export_nar, import_nar, PathInfo, PathMeta};
use ipnix_node::bitswap::wire::{self, WireMessage};
use ipnix_node::http::api::{read_frame, MAX_FRAME};
use ipnix_node::net::{parse_swarm_key, Multiaddr};
use ipnix_sources::list::{self as sources_list, ListRoot, LIST_TYPE};
use ipnix_sources::model::{EntryKind, SourcesFile};
use ipnix_store::block::{cid_for, verify, DAG_CBOR, DAG_PB, GIT_RAW, RAW};
use ipnix_store::car::CarReader;
use ipnix_store::links::{dag_links, git_cid, git_object, links};
use ipnix_store::unixfs::{self, NodeKind};
use ipnix_store::{BlockWrite, Cid, MemoryBlocks};
use std::io::{Read, Seek, SeekFrom};

/// A fuzz target body.
pub type Body = fn(&[u8]);

/// Every target by name (the name of its `fuzz_targets/*.rs` file and of its
/// `seeds/` and `regressions/` directories).
pub const TARGETS: &[(&str, Body)] = &[
    ("api_frame", api_frame),
    ("bitswap_message", bitswap_message),
    ("block_links", block_links),
    ("car_reader", car_reader),
    ("content_address", content_address),
    ("git_object", git_object_links),
    ("git_tree", git_tree),
    ("hash_query", hash_query),
    ("mirror_path", mirror_path),
    ("multiaddr", multiaddr),
    ("nar_reader", nar_reader),
    ("narinfo_parse", narinfo_parse),
    ("pathinfo_decode", pathinfo_decode),
    ("pathinfo_messages", pathinfo_messages),
    ("recipe_decode", recipe_decode),
    ("sources_json", sources_json),
    ("sources_list", sources_list_blocks),
    ("swarm_key", swarm_key),
    ("unixfs_node", unixfs_node),
];

/// The body registered under `name`.
pub fn target(name: &str) -> Option<Body> {
    TARGETS
        .iter()
        .find(|(target, _)| *target == name)
        .map(|(_, body)| *body)
}

/// The control API's response frames (the CLI reads them from its daemon):
/// every frame read is at most [`MAX_FRAME`], the frames read re-encode to
/// exactly the bytes consumed, and a clean end is only reported with less
/// than a frame header left.
pub fn api_frame(data: &[u8]) {
    let mut reader = data;
    let mut encoded = Vec::new();
    loop {
        let before = reader.len();
        match read_frame(&mut reader) {
            Ok(Some((kind, payload))) => {
                assert!(payload.len() <= MAX_FRAME);
                encoded.push(kind as u8);
                encoded.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                encoded.extend_from_slice(&payload);
                assert_eq!(encoded.as_slice(), &data[..data.len() - reader.len()]);
            }
            Ok(None) => {
                assert!(before < 5, "clean end with {before} bytes left");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Bitswap messages and frames from a peer: decoding never panics; a decoded
/// message encodes to exactly `encoded_len()` bytes and decodes back to
/// itself; every CID it names parses back to its own bytes; every block
/// whose prefix is accepted verifies against the CID built from it, and
/// that CID gives back the same prefix.
pub fn bitswap_message(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    if let Ok(message) = WireMessage::decode(&frame) {
        check_bitswap_message(&message);
    }
    // The same bytes as a stream of length-prefixed frames.
    let mut stream = futures::io::Cursor::new(data);
    let frames = futures::executor::block_on(async {
        let mut frames = Vec::new();
        while frames.len() < 16 {
            match wire::read_frame(&mut stream, 64 * 1024).await {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) | Err(_) => break,
            }
        }
        frames
    });
    for frame in frames {
        if let Ok(message) = WireMessage::decode(&frame) {
            check_bitswap_message(&message);
        }
    }
}

fn check_bitswap_message(message: &WireMessage) {
    let mut out = bytes::BytesMut::new();
    message.encode(&mut out);
    assert_eq!(out.len(), message.encoded_len());
    let again = WireMessage::decode(&out.freeze()).expect("an encoded message decodes");
    assert_eq!(&again, message);
    let frame = message.to_frame();
    let mut stream = futures::io::Cursor::new(frame.to_vec());
    let read = futures::executor::block_on(wire::read_frame(&mut stream, usize::MAX))
        .expect("a frame we wrote reads back")
        .expect("one frame");
    assert_eq!(WireMessage::decode(&read).expect("decodes"), *message);
    let cids = message.entries.iter().map(|e| &e.cid);
    for cid_bytes in cids.chain(message.presences.iter().map(|p| &p.cid)) {
        if let Some(cid) = wire::parse_cid(cid_bytes) {
            assert_eq!(cid.to_bytes(), cid_bytes.as_ref());
        }
    }
    for block in &message.payload {
        if let Ok(cid) = wire::cid_from_prefix(&block.prefix, &block.data) {
            assert_eq!(wire::prefix_of(&cid), block.prefix);
            verify(&cid, &block.data).expect("a block named from its prefix verifies");
        }
    }
    for data in &message.blocks {
        if let Ok(cid) = wire::cid_v0_of(data) {
            verify(&cid, data).expect("a CIDv0 block verifies");
        }
    }
}

/// Link extraction for every codec (blocks arrive from peers and CAR files
/// before any walk reads them): never panics, and a walk's children and
/// covered CIDs together are exactly the block's links.
pub fn block_links(data: &[u8]) {
    for codec in [RAW, DAG_PB, DAG_CBOR, GIT_RAW] {
        let cid = cid_for(codec, data);
        let all = links(&cid, data);
        let walk = dag_links(&cid, data);
        match (&all, &walk) {
            (Ok(all), Ok(walk)) => {
                for child in &walk.children {
                    assert!(all.contains(child));
                    assert!(!walk.covered.contains(child));
                }
                for link in all {
                    assert!(walk.children.contains(link) || walk.covered.contains(link));
                }
            }
            (Err(_), Err(_)) => {}
            _ => panic!("links and dag_links disagree on {cid}: {all:?} / {walk:?}"),
        }
    }
}

/// CAR v1/v2 reading (`ipnix dag import`, gateway clients): never panics,
/// never allocates past the section limit, every block returned matches its
/// CID.
pub fn car_reader(data: &[u8]) {
    let Ok(mut reader) = CarReader::new(data) else {
        return;
    };
    while let Ok(Some((cid, block))) = reader.next_block() {
        verify(&cid, &block).expect("CarReader returns verified blocks");
    }
}

/// `CA:` fields (narinfos, path-infos, sources.json): what parses prints
/// back to the same value, and the fixed-output path it gives a name is a
/// store path of that name which the content address `names()`.
pub fn content_address(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (ca_text, name) = text.split_once('\n').unwrap_or((text, "source"));
    let Ok(ca) = ContentAddress::parse(ca_text) else {
        return;
    };
    let again = ContentAddress::parse(&ca.to_string()).expect("a printed CA parses");
    assert_eq!(again, ca);
    if let ContentAddress::Fixed { method, hash } = &ca {
        assert_eq!(ContentAddress::fixed(*method, hash.clone()), ca);
    }
    for store_dir in ["/nix/store", "/nix/store/"] {
        match ca.fixed_output_path(store_dir, name) {
            Ok(Some(path)) => {
                let store_path = StorePath::parse("/nix/store", &path)
                    .expect("a fixed-output path is a store path");
                assert_eq!(store_path.name(), name);
                assert!(ca.names("/nix/store", &store_path));
            }
            Ok(None) => assert!(matches!(ca, ContentAddress::Text { .. })),
            Err(_) => {}
        }
    }
}

/// Git objects as the store walks them (trees, commits and tags from git
/// DAGs and peers): the bridge's strict header check never accepts what
/// the store's walk refuses, an accepted tree's links are exactly its
/// entries, and a commit's or tag's links are exactly the 40-hex-digit ids
/// on its `tree`, `parent` and `object` header lines.
pub fn git_object_links(data: &[u8]) {
    let strict = split_object(data);
    let loose = git_object(data);
    if let Ok(strict) = &strict {
        assert_eq!(loose.as_ref().ok(), Some(strict));
    }
    if let Ok(body) = parse_blob(data) {
        assert_eq!(Ok(("blob", body)), strict);
    }
    let cid = cid_for(GIT_RAW, data);
    let found = links(&cid, data);
    if let Ok(entries) = parse_tree(data) {
        let ids: Vec<Cid> = entries.iter().map(|e| e.cid()).collect();
        assert_eq!(found.as_ref().ok(), Some(&ids));
    }
    let Ok((kind, body)) = loose else {
        assert!(found.is_err());
        return;
    };
    if kind != "commit" && kind != "tag" {
        return;
    }
    let Ok(found) = found else {
        return;
    };
    let text = std::str::from_utf8(body).expect("a walked commit is UTF-8");
    let mut expected = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        let id = line
            .strip_prefix("tree ")
            .or_else(|| line.strip_prefix("parent "))
            .or_else(|| line.strip_prefix("object "));
        if let Some(id) = id {
            assert!(
                id.len() == 40 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "accepted object id {id:?}"
            );
            let bytes: [u8; 20] = hex::decode(id)
                .expect("hex digits")
                .try_into()
                .expect("20 bytes");
            expected.push(git_cid(&bytes));
        }
    }
    assert_eq!(found, expected);
}

/// Git tree objects (Nix paths as git DAGs): an accepted tree re-encodes to
/// the same bytes (validation and encoding agree on order and names).
pub fn git_tree(data: &[u8]) {
    let mut object = format!("tree {}\0", data.len()).into_bytes();
    object.extend_from_slice(data);
    for candidate in [data, object.as_slice()] {
        if let Ok(mut entries) = parse_tree(candidate) {
            let again = tree_object(&mut entries).expect("accepted entries encode");
            assert_eq!(again, candidate);
        }
    }
}

/// Hash queries (`ipnix sources get HASH`, the mirror, the CLI): what
/// parses comes back from every form ipnix prints it in.
pub fn hash_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [
        ipnix_sources::index::parse_query(text).ok(),
        NixHash::parse(text).ok(),
    ]
    .into_iter()
    .flatten()
    {
        check_hash_forms(&parsed);
    }
    for algo in [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
    ] {
        if let Ok(hash) = NixHash::parse_digest(algo, text) {
            assert_eq!(hash.algo(), algo);
            check_hash_forms(&hash);
        }
    }
}

fn check_hash_forms(hash: &NixHash) {
    assert_eq!(hash.digest().len(), hash.algo().size());
    for form in [
        hash.to_sri(),
        hash.to_nix32(),
        hash.to_base16(),
        hash.to_base64(),
    ] {
        assert_eq!(NixHash::parse(&form).as_ref(), Ok(hash), "{form}");
        assert_eq!(
            ipnix_sources::index::parse_query(&form).ok().as_ref(),
            Some(hash),
            "{form}"
        );
    }
    let bare = [hash.nix32_digest(), hex::encode(hash.digest())];
    for digest in bare {
        assert_eq!(
            NixHash::parse_digest(hash.algo(), &digest).as_ref(),
            Ok(hash)
        );
    }
}

/// Hashed mirror paths (`/sha256/<hash>`, `/sha256-<base64>`): an accepted
/// path names a hash that every mirror form of it names again.
pub fn mirror_path(data: &[u8]) {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(Ok(hash)) = ipnix_node::http::mirror::parse_path(path) else {
        return;
    };
    let algo = hash.algo().name();
    for again in [
        format!("/{algo}/{}", hash.nix32_digest()),
        format!("/{algo}/{}", hex::encode(hash.digest())),
        format!("/{}", hash.to_sri()),
    ] {
        let parsed = ipnix_node::http::mirror::parse_path(&again);
        assert_eq!(parsed, Some(Ok(hash.clone())), "{again}");
    }
}

/// Multiaddrs in their binary form, as peers send them (identify, Kademlia):
/// what parses keeps its bytes and prints like the address rebuilt from its
/// components (compared as text: libp2p re-encodes the deprecated
/// `x-parity-wss` path differently); an address parsed from text prints
/// back to text that parses to the same address.
pub fn multiaddr(data: &[u8]) {
    if let Ok(addr) = Multiaddr::try_from(data.to_vec()) {
        assert_eq!(addr.to_vec(), data);
        let rebuilt: Multiaddr = addr.iter().collect();
        assert_eq!(rebuilt.to_string(), addr.to_string());
        let again = Multiaddr::try_from(rebuilt.to_vec()).expect("a rebuilt address parses");
        assert_eq!(again, rebuilt);
        let _ = addr.to_string().parse::<Multiaddr>();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(addr) = text.parse::<Multiaddr>() {
            let again: Multiaddr = addr.to_string().parse().expect("a printed address parses");
            assert_eq!(again, addr);
        }
    }
}

/// The streaming NAR reader and the importer: whatever is accepted exports
/// back to the identical bytes.
pub fn nar_reader(data: &[u8]) {
    if ipnix_bridge::nar::validate(data).is_err() {
        return;
    }
    let mut blocks = MemoryBlocks::new();
    let meta = PathMeta::new("/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-fuzz");
    // Import may still refuse what the bare reader accepts (e.g. huge trees).
    if let Ok(imported) = import_nar(&mut blocks, data, meta) {
        let mut out = Vec::new();
        export_nar(&blocks, &imported.pathinfo_cid, &mut out).expect("an imported NAR exports");
        assert_eq!(out, data, "round trip must be byte-identical");
    }
}

/// Narinfo files from binary caches: render(parse(x)) parses to the same value.
pub fn narinfo_parse(data: &[u8]) {
    if let Ok(info) = NarInfo::parse(data) {
        let again = NarInfo::parse(info.render().as_bytes()).expect("rendered narinfo parses");
        assert_eq!(again, info);
    }
}

/// Path-info blocks (DAG-CBOR from peers): anything accepted is canonical.
pub fn pathinfo_decode(data: &[u8]) {
    if let Ok(info) = PathInfo::decode(data) {
        assert_eq!(info.encode().expect("decoded path-infos encode"), data);
    }
}

/// Tarball recipes (`ipnix-tarball-recipe/1`): an accepted recipe
/// re-encodes to the same bytes, and reassembling it from a store that holds
/// only the recipe fails cleanly or yields exactly the recorded bytes.
pub fn recipe_decode(data: &[u8]) {
    use ipnix_sources::recipe::{self, Recipe};
    if let Ok(r) = Recipe::decode(data) {
        let (_, bytes) = r.to_block().expect("decoded recipes encode");
        assert_eq!(bytes, data);
        let mut blocks = ipnix_store::MemoryBlocks::new();
        let cid = recipe::recipe_cid(data);
        if ipnix_store::BlockWrite::write_block(&mut blocks, cid, data).is_ok() {
            if let Ok(done) = recipe::reassemble(&blocks, &cid, std::io::sink()) {
                assert_eq!(done.bytes, r.size);
                assert_eq!(done.sha256, r.sha256);
            }
        }
    }
}

/// The ask protocols' messages (`/ipnix/pathinfo/1.0.0` and
/// `/ipnix/source/1.0.0`): an accepted request is exactly its wire form, an
/// accepted response a dag-cbor CID that re-encodes to the same bytes.
pub fn pathinfo_messages(data: &[u8]) {
    use ipnix_node::pathinfo::{parse_request, parse_response, Question};
    if let Ok(request) = parse_request(data) {
        assert_eq!(request.hash_part.as_bytes(), data);
        assert_eq!(request.to_wire(), data);
    }
    if let Ok(response) = parse_response(data) {
        match response.pathinfo {
            Some(cid) => assert_eq!(cid.to_bytes(), data),
            None => assert!(data.is_empty()),
        }
    }
    if let Ok(request) = ipnix_node::sourceshare::parse_request(data) {
        assert_eq!(request.key().as_bytes(), data);
        assert_eq!(request.to_wire(), data);
    }
}

/// `sources.json` (nixpkgs-swh's list): what parses keeps the model's
/// promises (indices in order, only http(s) URLs and never none, names that
/// are valid store names and give a fixed-output path).
pub fn sources_json(data: &[u8]) {
    let Ok(file) = SourcesFile::parse(data) else {
        return;
    };
    assert_eq!(file.version, 1);
    for (position, entry) in file.entries.iter().enumerate() {
        assert_eq!(entry.index, position);
        if let EntryKind::Url(source) = &entry.kind {
            assert!(!source.urls.is_empty());
            for url in &source.urls {
                let lower = url.to_ascii_lowercase();
                assert!(lower.starts_with("http://") || lower.starts_with("https://"));
            }
            let ca = source.content_address();
            assert!(matches!(ca, ContentAddress::Fixed { .. }));
            for name in source.names() {
                let path = ca
                    .fixed_output_path("/nix/store", &name)
                    .expect("names() only returns valid store names");
                assert!(path.is_some());
            }
        }
    }
}

/// The pinned sources list (DAG-CBOR from a peer or a CAR), the bytes as a
/// root block and as a chunk: a root that loads rebuilds to a root with the
/// same fields, and a chunk's entries survive `build` and reading back.
pub fn sources_list_blocks(data: &[u8]) {
    let cid = cid_for(DAG_CBOR, data);
    let mut blocks = MemoryBlocks::new();
    blocks
        .write_block(cid, data)
        .expect("memory blocks take any block");
    if let Ok(root) = sources_list::load_root(&blocks, &cid) {
        assert_eq!(root.kind, LIST_TYPE);
        let mut entries = Vec::new();
        let _ = sources_list::for_each_entry(&blocks, &root, |e| entries.push(e));
        let rebuilt = sources_list::build(&root.name, root.revision.as_deref(), &[], root.written)
            .expect("an empty list builds");
        let (rebuilt_cid, rebuilt_bytes) = rebuilt.last().expect("a root");
        let mut again = MemoryBlocks::new();
        again
            .write_block(*rebuilt_cid, rebuilt_bytes)
            .expect("memory");
        let back = sources_list::load_root(&again, rebuilt_cid).expect("a built root loads");
        assert_eq!(
            (&back.name, &back.revision, back.written),
            (&root.name, &root.revision, root.written)
        );
    }
    let root = ListRoot {
        kind: LIST_TYPE.to_owned(),
        version: 1,
        name: "fuzz".to_owned(),
        revision: None,
        written: 0,
        total: 0,
        ok: 0,
        chunks: vec![cid],
    };
    let mut entries = Vec::new();
    if sources_list::for_each_entry(&blocks, &root, |e| entries.push(e)).is_err() {
        return;
    }
    let Ok(built) = sources_list::build("fuzz", None, &entries, 0) else {
        return; // an entry too large for a block: refused, not mangled
    };
    let mut again = MemoryBlocks::new();
    for (cid, bytes) in &built {
        again.write_block(*cid, bytes).expect("memory");
    }
    let (root_cid, _) = built.last().expect("a root");
    let root = sources_list::load_root(&again, root_cid).expect("a built root loads");
    assert_eq!(root.total, entries.len() as u64);
    let mut back = Vec::new();
    sources_list::for_each_entry(&again, &root, |e| back.push(e)).expect("built chunks load");
    assert_eq!(back, entries);
}

/// Kubo's `swarm.key` files: a key that parses prints back to itself.
pub fn swarm_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = parse_swarm_key(text) {
        let again = parse_swarm_key(&key.to_string()).expect("a printed key parses");
        assert_eq!(again, key);
    }
}

/// How many bytes of a file the UnixFS target reads at most: a few KiB of
/// dag-pb can describe an exabyte file by repeating links.
const UNIXFS_READ_CAP: u64 = 1 << 20;

/// dag-pb/UnixFS nodes from peers, with children reachable through identity
/// CIDs: `stat`, `cat` and `ls` never panic; a file reads exactly its stated
/// size and seeking reads the same bytes again; a node the UnixFS reader
/// accepts is one the store's dag-pb walk (GC, pins, CAR export) reads too.
pub fn unixfs_node(data: &[u8]) {
    let cid = cid_for(DAG_PB, data);
    let mut blocks = MemoryBlocks::new();
    blocks
        .write_block(cid, data)
        .expect("memory blocks take any block");
    let Ok(stat) = unixfs::stat(&blocks, &cid) else {
        return;
    };
    match stat.kind {
        NodeKind::File => {
            let size = stat.size.expect("files have a size");
            let Ok(mut reader) = unixfs::cat(&blocks, &cid) else {
                return;
            };
            assert_eq!(reader.len(), size);
            let mut bytes = Vec::new();
            let read = (&mut reader).take(UNIXFS_READ_CAP).read_to_end(&mut bytes);
            if read.is_err() {
                return;
            }
            assert_eq!(bytes.len() as u64, size.min(UNIXFS_READ_CAP));
            let middle = (data.len() as u64) % (bytes.len() as u64 + 1);
            assert_eq!(
                reader
                    .seek(SeekFrom::Start(middle))
                    .expect("seek in a read file"),
                middle
            );
            let mut tail = Vec::new();
            (&mut reader)
                .take(bytes.len() as u64 - middle)
                .read_to_end(&mut tail)
                .expect("bytes read once read again");
            assert_eq!(tail, bytes[middle as usize..]);
        }
        NodeKind::Directory => {
            // Listing follows HAMT shards, so its entries are not the root's
            // links; it only has to stay an answer or an error.
            let _ = unixfs::ls(&blocks, &cid);
        }
        NodeKind::Symlink => {}
    }
    // Whatever the UnixFS reader decodes, the dag-pb walk decodes too.
    links(&cid, data).expect("a node the UnixFS reader accepts has dag-pb links");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_names_are_unique() {
        let mut names: Vec<_> = TARGETS.iter().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TARGETS.len());
    }

    #[test]
    fn empty_input_passes_every_target() {
        for (_, body) in TARGETS {
            body(&[]);
        }
    }
}
