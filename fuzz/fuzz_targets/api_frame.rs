//! Fuzz target `api_frame`: the body and what it checks are
//! [`ipnix_fuzz::api_frame`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::api_frame(data));
