//! Fuzzes path-info decoding: never panic; anything accepted is canonical.
#![no_main]

use ipnix_bridge::PathInfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = PathInfo::decode(data) {
        assert_eq!(info.encode().expect("decoded path-infos encode"), data);
    }
});
