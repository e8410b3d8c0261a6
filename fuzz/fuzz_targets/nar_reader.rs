//! Fuzz target `nar_reader`: the body and what it checks are
//! [`ipnix_fuzz::nar_reader`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::nar_reader(data));
