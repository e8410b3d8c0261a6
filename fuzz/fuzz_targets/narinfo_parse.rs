//! Fuzz target `narinfo_parse`: the body and what it checks are
//! [`ipnix_fuzz::narinfo_parse`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::narinfo_parse(data));
