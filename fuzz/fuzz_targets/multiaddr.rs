//! Fuzz target `multiaddr`: the body and what it checks are
//! [`ipnix_fuzz::multiaddr`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::multiaddr(data));
