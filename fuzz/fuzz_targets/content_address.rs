//! Fuzz target `content_address`: the body and what it checks are
//! [`ipnix_fuzz::content_address`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::content_address(data));
