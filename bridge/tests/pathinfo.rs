//! Path-info encode/decode round trip (proptest) and refusal of malformed or
//! non-canonical DAG-CBOR.

use cid::Cid;
use ipld_core::ipld::Ipld;
use ipnix_bridge::pathinfo::{LargeBlob, PathInfo, PathInfoError, Reference, Root, RootKind};
use ipnix_bridge::NixHash;
use ipnix_store::block::{cid_for, DAG_CBOR, DAG_PB, GIT_RAW, RAW};
use proptest::prelude::*;
use std::collections::BTreeMap;

const DIR: &str = "/nix/store";

fn hash_part() -> impl Strategy<Value = String> {
    "[0-9a-dfgh-np-sv-z]{32}"
}

fn store_path() -> impl Strategy<Value = String> {
    (hash_part(), "[a-zA-Z0-9+._?=-]{1,40}")
        .prop_filter("not . or ..", |(_, n)| n != "." && n != "..")
        .prop_map(|(h, n)| format!("{DIR}/{h}-{n}"))
}

fn cid(codec: u64) -> impl Strategy<Value = Cid> {
    any::<[u8; 8]>().prop_map(move |seed| cid_for(codec, &seed))
}

fn pathinfo() -> impl Strategy<Value = PathInfo> {
    (
        store_path(),
        prop_oneof![
            Just(RootKind::Directory),
            Just(RootKind::Regular),
            Just(RootKind::Executable),
            Just(RootKind::Symlink)
        ],
        cid(GIT_RAW),
        any::<[u8; 32]>(),
        (1u64..1 << 40).prop_map(|n| n * 8),
        proptest::collection::btree_map(store_path(), cid(DAG_CBOR), 0..6),
        any::<bool>(),
        proptest::collection::btree_set("[a-z0-9.-]{1,20}:[A-Za-z0-9+/]{86}==", 0..3),
        proptest::option::of((hash_part(), "[a-z]{1,10}")),
        proptest::option::of(prop_oneof![
            "fixed:r:sha256:[0-9a-z]{52}",
            "text:sha256:[0-9a-z]{52}",
        ]),
        proptest::collection::vec(
            (
                cid(GIT_RAW),
                prop_oneof![cid(DAG_PB), cid(RAW)],
                any::<u64>(),
            ),
            0..4,
        ),
    )
        .prop_map(
            |(
                store_path,
                kind,
                root,
                digest,
                nar_size,
                refs,
                self_reference,
                sigs,
                deriver,
                ca,
                blobs,
            )| {
                let mut blobs: Vec<LargeBlob> = blobs
                    .into_iter()
                    .map(|(git, unixfs, size)| LargeBlob { git, unixfs, size })
                    .collect();
                blobs.sort_by_key(|b| b.git.to_bytes());
                blobs.dedup_by_key(|b| b.git.to_bytes());
                PathInfo {
                    references: refs
                        .into_iter()
                        .filter(|(p, _)| *p != store_path)
                        .map(|(path, info)| Reference { path, info })
                        .collect(),
                    store_path,
                    root: Root { kind, cid: root },
                    nar_hash: NixHash::sha256(digest),
                    nar_size,
                    self_reference,
                    signatures: sigs.into_iter().collect(),
                    deriver: deriver.map(|(h, n)| format!("{DIR}/{h}-{n}.drv")),
                    ca,
                    blobs,
                }
            },
        )
}

proptest! {
    #[test]
    fn round_trip(info in pathinfo()) {
        let bytes = info.encode().expect("valid");
        let decoded = PathInfo::decode(&bytes).expect("decodes");
        prop_assert_eq!(&decoded, &info);
        prop_assert_eq!(decoded.encode().expect("again"), bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = PathInfo::decode(&bytes);
    }

    #[test]
    fn flipped_bytes_are_refused_or_still_valid(info in pathinfo(), pos in any::<usize>(), bit in 0u8..8) {
        let mut bytes = info.encode().expect("valid");
        let i = pos % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(decoded) = PathInfo::decode(&bytes) {
            // Anything accepted is canonical: it re-encodes to the same bytes.
            prop_assert_eq!(decoded.encode().expect("valid"), bytes);
        }
    }
}

fn sample() -> PathInfo {
    PathInfo {
        store_path: format!("{DIR}/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-hello"),
        root: Root {
            kind: RootKind::Directory,
            cid: cid_for(GIT_RAW, b"tree 0\0"),
        },
        nar_hash: NixHash::sha256([1; 32]),
        nar_size: 112,
        references: vec![Reference {
            path: format!("{DIR}/0s2vcw1sd6lzsvgvq6gggnw1v31qrm28-dep"),
            info: cid_for(DAG_CBOR, b"x"),
        }],
        self_reference: true,
        signatures: vec!["cache.example-1:sig".into()],
        deriver: Some(format!("{DIR}/1s2vcw1sd6lzsvgvq6gggnw1v31qrm28-hello.drv")),
        ca: None,
        blobs: Vec::new(),
    }
}

fn ipld_of(info: &PathInfo) -> BTreeMap<String, Ipld> {
    match serde_ipld_dagcbor::from_slice::<Ipld>(&info.encode().expect("valid")).expect("cbor") {
        Ipld::Map(m) => m,
        _ => unreachable!("path-info is a map"),
    }
}

fn decode_map(map: BTreeMap<String, Ipld>) -> Result<PathInfo, PathInfoError> {
    PathInfo::decode(&serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).expect("encode"))
}

#[test]
fn malformed_fields_are_refused() {
    let base = ipld_of(&sample());
    let with = |key: &str, value: Ipld| {
        let mut m = base.clone();
        m.insert(key.to_owned(), value);
        decode_map(m)
    };
    assert!(matches!(
        with("version", Ipld::Integer(2)),
        Err(PathInfoError::Version(2))
    ));
    assert!(matches!(
        with("extra", Ipld::Null),
        Err(PathInfoError::UnknownField(_))
    ));
    assert!(matches!(
        with("storePath", Ipld::String("/nix/store/short-x".into())),
        Err(PathInfoError::Field {
            field: "storePath",
            ..
        })
    ));
    assert!(matches!(
        with("narSize", Ipld::Integer(-8)),
        Err(PathInfoError::Field {
            field: "narSize",
            ..
        })
    ));
    assert!(matches!(
        with("narSize", Ipld::Integer(13)),
        Err(PathInfoError::Field {
            field: "narSize",
            ..
        })
    ));
    assert!(matches!(
        with("deriver", Ipld::Null),
        Err(PathInfoError::Field {
            field: "deriver",
            ..
        })
    ));
    assert!(matches!(
        with("ca", Ipld::String("bogus".into())),
        Err(PathInfoError::Field { field: "ca", .. })
    ));
    assert!(matches!(
        with(
            "signatures",
            Ipld::List(vec![Ipld::String("nocolon".into())])
        ),
        Err(PathInfoError::Field {
            field: "signatures",
            ..
        })
    ));
    let mut m = base.clone();
    m.remove("narHash");
    assert!(matches!(
        decode_map(m),
        Err(PathInfoError::Field {
            field: "narHash",
            ..
        })
    ));
    // A self-reference must be the flag, not a link.
    let mut info = sample();
    info.references.push(Reference {
        path: info.store_path.clone(),
        info: cid_for(DAG_CBOR, b"y"),
    });
    assert!(matches!(
        info.encode(),
        Err(PathInfoError::Field {
            field: "references",
            ..
        })
    ));
    // Root must be a git-raw CID.
    let mut info = sample();
    info.root.cid = cid_for(RAW, b"x");
    assert!(matches!(
        info.encode(),
        Err(PathInfoError::Field { field: "root", .. })
    ));
    // References in another store dir.
    let mut info = sample();
    info.references[0].path = "/other/store/0s2vcw1sd6lzsvgvq6gggnw1v31qrm28-dep".into();
    assert!(matches!(
        info.encode(),
        Err(PathInfoError::Field {
            field: "references",
            ..
        })
    ));
}

#[test]
fn non_canonical_and_non_cbor_input_is_refused() {
    let bytes = sample().encode().expect("valid");
    // Same map with an indefinite-length prefix is not canonical DAG-CBOR.
    assert!(PathInfo::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(matches!(
        PathInfo::decode(b"\xa0"),
        Err(PathInfoError::Field {
            field: "version",
            ..
        })
    ));
    assert!(matches!(
        PathInfo::decode(b"\x01"),
        Err(PathInfoError::NotAMap)
    ));
    assert!(matches!(
        PathInfo::decode(b"\xff\xff"),
        Err(PathInfoError::Cbor(_))
    ));
    // A non-minimal integer encoding of narSize (0x1b + 8 bytes for 112).
    let mut m = ipld_of(&sample());
    m.insert("narSize".into(), Ipld::Integer(112));
    let canonical = serde_ipld_dagcbor::to_vec(&Ipld::Map(m)).expect("encode");
    let needle = b"narSize\x18\x70";
    let pos = canonical
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("narSize encoded minimally");
    let mut long = canonical[..pos + 7].to_vec();
    long.extend_from_slice(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 0x70]);
    long.extend_from_slice(&canonical[pos + needle.len()..]);
    assert!(PathInfo::decode(&long).is_err());
}
