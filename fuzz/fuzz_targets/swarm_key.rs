//! Fuzz target `swarm_key`: the body and what it checks are
//! [`ipnix_fuzz::swarm_key`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::swarm_key(data));
