//! Fuzzes the `/ipnix/pathinfo/1.0.0` request and response parsers: never
//! panic; an accepted request is a valid hash part, an accepted response a
//! dag-cbor CID that re-encodes to the same bytes.
#![no_main]

use ipnix_node::pathinfo::{parse_request, parse_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_request(data) {
        assert_eq!(request.hash_part.as_bytes(), data);
    }
    if let Ok(response) = parse_response(data) {
        if let Some(cid) = response.pathinfo {
            assert_eq!(cid.to_bytes(), data);
        }
    }
});
