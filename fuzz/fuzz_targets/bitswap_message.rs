//! Fuzz target `bitswap_message`: the body and what it checks are
//! [`ipnix_fuzz::bitswap_message`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::bitswap_message(data));
