//! Fuzz target `pathinfo_messages`: the body and what it checks are
//! [`ipnix_fuzz::pathinfo_messages`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::pathinfo_messages(data));
