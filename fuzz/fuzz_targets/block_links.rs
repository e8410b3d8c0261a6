//! Fuzzes link extraction for every codec (blocks arrive from peers and CAR
//! files before any walk reads them): never panic, whatever the bytes.
#![no_main]

use ipnix_store::block::{cid_for, DAG_CBOR, DAG_PB, GIT_RAW, RAW};
use ipnix_store::links::{dag_links, links};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for codec in [RAW, DAG_PB, DAG_CBOR, GIT_RAW] {
        let cid = cid_for(codec, data);
        let _ = links(&cid, data);
        let _ = dag_links(&cid, data);
    }
});
