//! Fuzzes the streaming NAR reader and the importer: never panic; whatever
//! is accepted must export back to the identical bytes.
#![no_main]

use ipnix_bridge::{export_nar, import_nar, PathMeta};
use ipnix_store::MemoryBlocks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
