//! Fuzz target `git_tree`: the body and what it checks are
//! [`ipnix_fuzz::git_tree`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::git_tree(data));
