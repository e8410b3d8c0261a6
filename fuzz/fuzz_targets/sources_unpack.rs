//! Fuzzes the archive unpacker (every format, found from the magic bytes):
//! never panic; a refused archive leaves no destination; an accepted one
//! leaves nothing beside its destination, only symlinks that stay inside,
//! a tree `dump_path` serialises, and unpacking it again gives the
//! identical NAR.
#![no_main]

use ipnix_bridge::dump::dump_path;
use ipnix_sources::unpack::{unpack_from, UnpackLimits};
use libfuzzer_sys::fuzz_target;
use std::fs;
use std::io::Cursor;
use std::path::Path;

fn nar(root: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    dump_path(root, &mut out).expect("an unpacked tree serialises as a NAR");
    out
}

fn symlinks_stay_inside(dir: &Path) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("lstat");
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("readlink");
            assert!(target.is_relative(), "absolute symlink {target:?} accepted");
        } else if meta.is_dir() {
            symlinks_stay_inside(&path);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let work = std::env::temp_dir().join(format!("ipnix-fuzz-unpack-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir(&work).expect("work dir");
    let limits = UnpackLimits::default()
        .with_max_bytes(8 << 20)
        .with_max_entries(4096);
    let dest = work.join("dest");
    match unpack_from(Cursor::new(data), &dest, &limits) {
        Ok(out) => {
            assert!(out.bytes <= limits.max_bytes);
            assert!(out.root.starts_with(&dest));
            symlinks_stay_inside(&dest);
            let first = nar(&out.root);
            let again = work.join("again");
            let second = unpack_from(Cursor::new(data), &again, &limits)
                .expect("an accepted archive is accepted again");
            assert_eq!(first, nar(&second.root), "unpacking is deterministic");
        }
        Err(_) => assert!(!dest.exists(), "a refused archive leaves no destination"),
    }
    for entry in fs::read_dir(&work).expect("work dir") {
        let name = entry.expect("entry").file_name();
        assert!(
            name == "dest" || name == "again",
            "{name:?} written beside the destination"
        );
    }
    let _ = fs::remove_dir_all(&work);
});
