//! Fuzz target `block_links`: the body and what it checks are
//! [`ipnix_fuzz::block_links`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::block_links(data));
