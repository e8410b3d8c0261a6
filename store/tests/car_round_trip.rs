//! CAR v1 export/import on MemoryBlocks: round trips, depth-first
//! pre-order with each block once, CIDv0 and v1, CAR v2 payloads, and clear
//! errors (never panics) for truncation, bad varints, oversized sections,
//! bad headers and blocks that do not match their CIDs. The live comparison
//! with the `ipfs-car` CLI is tests/tests/car_interop.rs.

use ipnix_store::block::{cid_for, DAG_CBOR, RAW};
use ipnix_store::car::{export, header_bytes, import, CarError, CarReader, MAX_SECTION_SIZE};
use ipnix_store::links::links;
use ipnix_store::unixfs::{add_file, cat, Params, Profile};
use ipnix_store::{BlockRead, BlockWrite, Cid, MemoryBlocks};
use proptest::prelude::*;
use std::collections::HashSet;
use std::io::Read;

fn params(cid_version: u8, raw_leaves: bool) -> Params {
    Params {
        cid_version,
        raw_leaves,
        chunk_size: 16,
        max_links: 3,
    }
}

fn dag(data: &[u8], params: &Params) -> (MemoryBlocks, Cid) {
    let mut blocks = MemoryBlocks::new();
    let root = add_file(&mut blocks, data, params).expect("adds").cid;
    (blocks, root)
}

fn car_of(blocks: &MemoryBlocks, root: &Cid) -> Vec<u8> {
    let mut car = Vec::new();
    export(blocks, root, &mut car).expect("exports");
    car
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// Pre-order, first visit only: what Kubo's `dag export` writes.
fn expected_order(blocks: &MemoryBlocks, root: &Cid) -> Vec<Cid> {
    fn walk(blocks: &MemoryBlocks, cid: &Cid, seen: &mut HashSet<Cid>, out: &mut Vec<Cid>) {
        if !seen.insert(*cid) {
            return;
        }
        out.push(*cid);
        let data = blocks.read_block(cid).expect("read").expect("present");
        for child in links(cid, &data).expect("links") {
            walk(blocks, &child, seen, out);
        }
    }
    let mut out = Vec::new();
    walk(blocks, root, &mut HashSet::new(), &mut out);
    out
}

#[test]
fn export_then_import_round_trips_in_pre_order() {
    let data: Vec<u8> = (0..500u32).map(|i| (i * 7 % 251) as u8).collect();
    for (cid_version, raw_leaves) in [(0, false), (1, true), (1, false), (0, true)] {
        let (blocks, root) = dag(&data, &params(cid_version, raw_leaves));
        let car = car_of(&blocks, &root);
        let mut reader = CarReader::new(&car[..]).expect("header");
        assert_eq!(reader.roots(), &[root]);
        let mut order = Vec::new();
        while let Some((cid, bytes)) = reader.next_block().expect("block") {
            assert_eq!(
                bytes,
                blocks.read_block(&cid).expect("read").expect("present")
            );
            order.push(cid);
        }
        assert_eq!(order, expected_order(&blocks, &root));
        assert_eq!(order.len(), blocks.len());
        assert_eq!(reader.offset(), car.len() as u64);

        let mut copy = MemoryBlocks::new();
        let imported = import(&mut copy, &car[..]).expect("imports");
        assert_eq!(imported.roots, vec![root]);
        assert_eq!(imported.blocks, blocks.len() as u64);
        assert_eq!(imported.bytes, blocks.total_bytes());
        let mut out = Vec::new();
        cat(&copy, &root)
            .expect("opens")
            .read_to_end(&mut out)
            .expect("reads");
        assert_eq!(out, data);
    }
}

#[test]
fn repeated_blocks_are_written_once() {
    // 20 identical chunks: one leaf CID used 20 times.
    let (blocks, root) = dag(&[0u8; 320], &params(1, true));
    let car = car_of(&blocks, &root);
    let cids: Vec<Cid> = CarReader::new(&car[..])
        .expect("header")
        .map(|b| b.expect("block").0)
        .collect();
    let unique: HashSet<_> = cids.iter().collect();
    assert_eq!(unique.len(), cids.len());
    assert_eq!(cids.len(), blocks.len());
    let stats = export(&blocks, &root, std::io::sink()).expect("exports");
    assert_eq!(stats.blocks, blocks.len() as u64);
    assert_eq!(stats.car_bytes, car.len() as u64);
}

#[test]
fn export_of_a_missing_block_names_it() {
    let (full, root) = dag(&[1u8; 100], &params(1, true));
    let mut partial = MemoryBlocks::new();
    let root_bytes = full.read_block(&root).expect("read").expect("present");
    partial.write_block(root, &root_bytes).expect("stored");
    let first_child = links(&root, &root_bytes).expect("links")[0];
    match export(&partial, &root, std::io::sink()) {
        Err(CarError::Missing(cid)) => assert_eq!(cid, first_child),
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn dag_cbor_roots_walk_their_links() {
    let (mut blocks, file) = dag(b"payload", &params(1, true));
    // {"file": CID} in DAG-CBOR.
    let mut cbor = vec![0xa1, 0x64];
    cbor.extend_from_slice(b"file");
    let file_bytes = file.to_bytes();
    cbor.extend_from_slice(&[0xd8, 0x2a, 0x58, file_bytes.len() as u8 + 1, 0x00]);
    cbor.extend_from_slice(&file_bytes);
    let root = cid_for(DAG_CBOR, &cbor);
    blocks.write_block(root, &cbor).expect("stored");
    let car = car_of(&blocks, &root);
    let cids: Vec<Cid> = CarReader::new(&car[..])
        .expect("header")
        .map(|b| b.expect("block").0)
        .collect();
    assert_eq!(cids, [root, file]);
}

#[test]
fn every_truncation_is_an_error_or_a_clean_prefix() {
    let (blocks, root) = dag(&[3u8; 200], &params(0, false));
    let car = car_of(&blocks, &root);
    // Offsets where a section (or the header) ends: cutting there is a valid shorter CAR.
    let mut boundaries = HashSet::new();
    let mut reader = CarReader::new(&car[..]).expect("header");
    boundaries.insert(reader.offset());
    while reader.next_block().expect("block").is_some() {
        boundaries.insert(reader.offset());
    }
    for cut in 0..car.len() {
        let result = import(&mut MemoryBlocks::new(), &car[..cut]);
        if boundaries.contains(&(cut as u64)) {
            assert!(result.is_ok(), "cut at a boundary {cut}: {result:?}");
        } else {
            match result {
                Err(CarError::Truncated(_)) => {}
                // A cut inside the header can leave a too-short header length.
                Err(CarError::BadHeader(_)) if cut < 64 => {}
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn corrupt_input_gets_clear_errors() {
    let data = b"some block data".to_vec();
    let cid = cid_for(RAW, &data);
    let header = header_bytes(&[cid]);
    let section = |cid: &Cid, data: &[u8]| {
        let cid_bytes = cid.to_bytes();
        let mut out = varint((cid_bytes.len() + data.len()) as u64);
        out.extend_from_slice(&cid_bytes);
        out.extend_from_slice(data);
        out
    };
    let good = [header.clone(), section(&cid, &data)].concat();
    import(&mut MemoryBlocks::new(), &good[..]).expect("the good CAR imports");

    let mut tampered = good.clone();
    *tampered.last_mut().expect("non-empty") ^= 1;
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &tampered[..]),
        Err(CarError::BadBlock { .. })
    ));

    let oversized = [header.clone(), varint(MAX_SECTION_SIZE as u64 + 1)].concat();
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &oversized[..]),
        Err(CarError::SectionTooLarge { .. })
    ));

    let endless_varint = [header.clone(), vec![0xff; 12]].concat();
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &endless_varint[..]),
        Err(CarError::BadVarint(_))
    ));

    let garbage_cid = [header.clone(), varint(4), vec![0x01, 0xff, 0xff, 0xff]].concat();
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &garbage_cid[..]),
        Err(CarError::BadCid { .. })
    ));

    assert!(matches!(
        import(&mut MemoryBlocks::new(), &[][..]),
        Err(CarError::Truncated(_))
    ));
    let not_cbor = [varint(3), vec![0xff, 0xff, 0xff]].concat();
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &not_cbor[..]),
        Err(CarError::BadHeader(_))
    ));
    // {"roots": [], "version": 3}
    let mut v3 = vec![0xa2, 0x65];
    v3.extend_from_slice(b"roots");
    v3.push(0x80);
    v3.push(0x67);
    v3.extend_from_slice(b"version");
    v3.push(0x03);
    let v3 = [varint(v3.len() as u64), v3].concat();
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &v3[..]),
        Err(CarError::UnsupportedVersion(3))
    ));
    let huge_header = varint(u64::from(u32::MAX));
    assert!(matches!(
        import(&mut MemoryBlocks::new(), &huge_header[..]),
        Err(CarError::BadHeader(_))
    ));
}

#[test]
fn car_v2_payload_is_read() {
    let (blocks, root) = dag(&[9u8; 100], &params(1, true));
    let v1 = car_of(&blocks, &root);
    let pragma = [
        0x0a, 0xa1, 0x67, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e, 0x02,
    ];
    let data_offset = (pragma.len() + 40 + 5) as u64; // 5 bytes of padding
    let mut v2 = pragma.to_vec();
    v2.extend_from_slice(&[0u8; 16]); // characteristics
    v2.extend_from_slice(&data_offset.to_le_bytes());
    v2.extend_from_slice(&(v1.len() as u64).to_le_bytes());
    v2.extend_from_slice(&0u64.to_le_bytes()); // no index
    v2.extend_from_slice(&[0u8; 5]);
    v2.extend_from_slice(&v1);
    v2.extend_from_slice(b"index bytes that are not sections");
    let mut copy = MemoryBlocks::new();
    let imported = import(&mut copy, &v2[..]).expect("imports");
    assert_eq!(imported.roots, vec![root]);
    assert_eq!(imported.blocks, blocks.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = import(&mut MemoryBlocks::new(), &bytes[..]);
    }

    #[test]
    fn mutated_cars_never_panic_and_only_yield_verified_blocks(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let (blocks, root) = dag(&[5u8; 90], &params(1, false));
        let mut car = car_of(&blocks, &root);
        for (at, value) in flips {
            let i = at.index(car.len());
            car[i] = value;
        }
        if let Ok(reader) = CarReader::new(&car[..]) {
            for item in reader {
                match item {
                    Ok((cid, data)) => prop_assert!(ipnix_store::block::verify(&cid, &data).is_ok()),
                    Err(_) => break,
                }
            }
        }
    }
}

#[test]
fn v0_profile_dag_exports_with_a_cidv0_root() {
    let (blocks, root) = dag(&vec![1u8; 600_000], &Profile::V0_2015.params());
    assert_eq!(root.version(), cid::Version::V0);
    let car = car_of(&blocks, &root);
    let mut copy = MemoryBlocks::new();
    let imported = import(&mut copy, &car[..]).expect("imports");
    assert_eq!(imported.roots, vec![root]);
    assert_eq!(copy.len(), blocks.len());
}
