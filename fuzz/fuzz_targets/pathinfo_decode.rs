//! Fuzz target `pathinfo_decode`: the body and what it checks are
//! [`ipnix_fuzz::pathinfo_decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::pathinfo_decode(data));
