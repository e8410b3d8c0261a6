//! Fuzz target `sources_list`: the body and what it checks are
//! [`ipnix_fuzz::sources_list_blocks`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::sources_list_blocks(data));
