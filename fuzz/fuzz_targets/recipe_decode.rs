//! Fuzz target `recipe_decode`: the body and what it checks are
//! [`ipnix_fuzz::recipe_decode`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::recipe_decode(data));
