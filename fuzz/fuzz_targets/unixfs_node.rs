//! Fuzz target `unixfs_node`: the body and what it checks are
//! [`ipnix_fuzz::unixfs_node`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::unixfs_node(data));
