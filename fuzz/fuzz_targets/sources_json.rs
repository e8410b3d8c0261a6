//! Fuzz target `sources_json`: the body and what it checks are
//! [`ipnix_fuzz::sources_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::sources_json(data));
