//! Fuzz target `hash_query`: the body and what it checks are
//! [`ipnix_fuzz::hash_query`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::hash_query(data));
