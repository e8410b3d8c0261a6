//! Fuzz target `git_object`: the body and what it checks are
//! [`ipnix_fuzz::git_object_links`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ipnix_fuzz::git_object_links(data));
