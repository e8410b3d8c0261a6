//! A store path with files over the block threshold, in the real store: its
//! path-info pins recursively (the large git blobs are covered by the
//! path-info's blob map, DESIGN.md I-11), survives GC, exports the same NAR
//! and travels through a CAR into a second store.

use ipnix_bridge::export::export_nar;
use ipnix_bridge::import::{import_nar, PathMeta};
use ipnix_bridge::nar::NarWriter;
use ipnix_store::test_util::pseudo_random;
use ipnix_store::{car, PinMode, Store};

fn nar_with_large_files() -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new()).expect("writer");
    w.start_directory().expect("dir");
    for (name, data, exec) in [
        (&b"big.bin"[..], pseudo_random(1, 3_300_000), false),
        (&b"run"[..], pseudo_random(2, 1_200_000), true),
        (&b"small"[..], b"tiny\n".to_vec(), false),
    ] {
        w.entry(name).expect("entry");
        w.file(exec, data.len() as u64).expect("file");
        w.file_data(&data).expect("data");
    }
    w.end_directory().expect("end");
    w.finish().expect("finish").0
}

#[test]
fn large_blobs_pin_gc_export_and_car() {
    let nar = nar_with_large_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("a")).expect("open");
    let mut session = store.session();
    let meta = PathMeta::new("/nix/store/00000000000000000000000000000000-large");
    let imported = import_nar(&mut session, &nar[..], meta).expect("import");
    assert!(
        !imported.pathinfo.blobs.is_empty(),
        "large files went to UnixFS"
    );
    session
        .finish(Some((imported.pathinfo_cid, PinMode::Recursive, None)))
        .expect("a recursive pin on a path with large blobs");
    store.gc().expect("gc");
    let mut out = Vec::new();
    export_nar(&store, &imported.pathinfo_cid, &mut out).expect("export");
    assert_eq!(out, nar, "same NAR after GC");

    let mut car_bytes = Vec::new();
    car::export(&store, &imported.pathinfo_cid, &mut car_bytes).expect("car export");
    let other = Store::open(&dir.path().join("b")).expect("open b");
    let mut session = other.session();
    let got = car::import(&mut session, &car_bytes[..]).expect("car import");
    assert_eq!(got.roots, vec![imported.pathinfo_cid]);
    session
        .finish(Some((imported.pathinfo_cid, PinMode::Recursive, None)))
        .expect("pin in b");
    let mut again = Vec::new();
    export_nar(&other, &imported.pathinfo_cid, &mut again).expect("export b");
    assert_eq!(again, nar);
}

/// DESIGN.md I-21: rendering a path-info's NAR reads stored blocks without
/// re-hashing them, so a damaged pack byte is caught by the NAR hash (and a
/// verifying reader still reports the block itself as corrupt).
#[test]
fn a_damaged_block_fails_the_nar_hash_check_of_an_unverified_render() {
    use ipnix_bridge::export::{export_dir, ExportError};
    use ipnix_store::test_util::{flip_byte, packs};
    use ipnix_store::{BlockRead, Bytes, Cid, StoreError};

    /// Only `read_block`: every read goes through the verifying path.
    struct Verifying<'a>(&'a Store);
    impl BlockRead for Verifying<'_> {
        fn read_block(&self, cid: &Cid) -> Result<Option<Bytes>, StoreError> {
            self.0.get(cid)
        }
    }

    let nar = nar_with_large_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let store = Store::open(&repo).expect("open");
    let mut session = store.session();
    let meta = PathMeta::new("/nix/store/00000000000000000000000000000000-large");
    let imported = import_nar(&mut session, &nar[..], meta).expect("import");
    session
        .finish(Some((imported.pathinfo_cid, PinMode::Recursive, None)))
        .expect("pin");
    drop(store);

    // The first pack record is the first 1 MiB chunk of big.bin (trees and
    // tiny blobs are inline): flip a byte well inside its data.
    let first = packs(&repo).expect("packs").remove(0);
    flip_byte(&first, 100_000).expect("damage the pack");

    let store = Store::open(&repo).expect("reopen");
    let mut out = Vec::new();
    let err = export_nar(&store, &imported.pathinfo_cid, &mut out).expect_err("damaged");
    assert!(
        matches!(err, ExportError::HashMismatch { .. }),
        "unverified render: {err}"
    );
    let err = export_nar(&Verifying(&store), &imported.pathinfo_cid, std::io::sink())
        .expect_err("damaged");
    assert!(
        err.to_string().contains("do not match"),
        "verified render: {err}"
    );
    let dest = dir.path().join("out");
    let err = export_dir(&store, &imported.pathinfo_cid, &dest).expect_err("damaged");
    assert!(
        err.to_string().contains("do not match"),
        "export_dir: {err}"
    );
}
