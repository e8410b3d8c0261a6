//! Fuzzes git tree parsing: never panic; an accepted tree re-encodes to the
//! same bytes (so validation and encoding agree on order and names).
#![no_main]

use ipnix_bridge::git::{parse_tree, tree_object};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut object = format!("tree {}\0", data.len()).into_bytes();
    object.extend_from_slice(data);
    for candidate in [data, object.as_slice()] {
        if let Ok(mut entries) = parse_tree(candidate) {
            let again = tree_object(&mut entries).expect("accepted entries encode");
            assert_eq!(again, candidate);
        }
    }
});
