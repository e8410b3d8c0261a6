//! Fuzz target `mirror_path`: the body and what it checks are
//! [`ipnix_fuzz::mirror_path`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::mirror_path(data));
