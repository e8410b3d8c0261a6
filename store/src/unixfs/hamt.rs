//! HAMT-sharded directories as Kubo (boxo `ipld/unixfs/hamt`) builds them:
//! fanout 256, names hashed with murmur3-x64-64 (the first half of
//! murmur3-x64-128, seed 0, big-endian), one hash byte per level from the
//! most significant end. A bucket holding one entry links it as
//! `"%02X" + name`; a bucket holding more links a sub-shard as `"%02X"`.
//! The shard's UnixFS Data carries the occupancy bitfield (big-endian, bit i
//! = bucket i, leading zero bytes dropped), hashType 0x22 and the fanout.

use super::pb::{encode_node, DataType, UnixfsData};
use super::{dag_pb_cid, UnixfsError};
use crate::BlockWrite;
use cid::Cid;

/// Multihash code of murmur3-x64-64, written as the shard's hashType.
pub(crate) const MURMUR3_X64_64: u64 = 0x22;
/// Buckets per shard node.
pub(crate) const FANOUT: usize = 256;
/// The largest fanout accepted when reading (larger ones are a known DoS).
pub(crate) const MAX_READ_FANOUT: u64 = 1024;

/// One directory entry waiting to be placed in a directory node or shard.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub cid: Cid,
    pub tsize: u64,
}

/// Builds the shard tree for `entries`; returns (root CID, cumulative size).
pub(crate) fn build<W: BlockWrite>(
    w: &mut W,
    entries: Vec<Entry>,
    cid_version: u8,
) -> Result<(Cid, u64), UnixfsError> {
    let hashed = entries
        .into_iter()
        .map(|e| (murmur3_x64_64(e.name.as_bytes()).to_be_bytes(), e))
        .collect();
    build_level(w, hashed, 0, cid_version)
}

fn build_level<W: BlockWrite>(
    w: &mut W,
    mut entries: Vec<([u8; 8], Entry)>,
    depth: usize,
    cid_version: u8,
) -> Result<(Cid, u64), UnixfsError> {
    if depth >= 8 {
        let names: Vec<&str> = entries.iter().map(|(_, e)| e.name.as_str()).collect();
        return Err(UnixfsError::BadParams(format!(
            "names {names:?} share all 64 hash bits; a HAMT cannot separate them"
        )));
    }
    // Bucket order; names break ties so equal buckets stay deterministic.
    entries.sort_by(|(ha, ea), (hb, eb)| (ha[depth], &ea.name).cmp(&(hb[depth], &eb.name)));
    let mut bitfield = [0u8; FANOUT / 8];
    let mut links: Vec<(Cid, String, u64)> = Vec::new();
    let mut rest = entries.as_slice();
    while let Some(((hash, _), _)) = rest.split_first() {
        let bucket = hash[depth];
        let run = rest.iter().take_while(|(h, _)| h[depth] == bucket).count();
        let (group, tail) = rest.split_at(run);
        rest = tail;
        bitfield[FANOUT / 8 - 1 - usize::from(bucket / 8)] |= 1 << (bucket % 8);
        if let [(_, entry)] = group {
            links.push((
                entry.cid,
                format!("{bucket:02X}{}", entry.name),
                entry.tsize,
            ));
        } else {
            let (cid, tsize) = build_level(w, group.to_vec(), depth + 1, cid_version)?;
            links.push((cid, format!("{bucket:02X}"), tsize));
        }
    }
    let first_set = bitfield
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bitfield.len());
    let mut data = UnixfsData::new(DataType::HamtShard);
    data.data = bitfield[first_set..].to_vec();
    data.hash_type = Some(MURMUR3_X64_64);
    data.fanout = Some(FANOUT as u64);
    let block = encode_node(
        links
            .iter()
            .map(|(cid, name, tsize)| (cid, name.as_str(), *tsize)),
        &data.encode(),
    );
    let cid = dag_pb_cid(cid_version, &block);
    w.write_block_hashed_here(cid, &block)?;
    let tsize = block.len() as u64 + links.iter().map(|(_, _, t)| t).sum::<u64>();
    Ok((cid, tsize))
}

/// Hex digits of a bucket prefix for `fanout` (2 for 256, as Go's `%0*X` of fanout-1).
pub(crate) fn prefix_len(fanout: u64) -> usize {
    let mut digits = 0;
    let mut max = fanout.saturating_sub(1);
    while max > 0 {
        digits += 1;
        max >>= 4;
    }
    digits.max(1)
}

/// murmur3-x64-128 with seed 0, first 64-bit half (`h1`).
pub(crate) fn murmur3_x64_64(data: &[u8]) -> u64 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mut h1: u64 = 0;
    let mut h2: u64 = 0;
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let k1 = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(block[8..].try_into().expect("8 bytes"));
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let mut k1: u64 = 0;
    let mut k2: u64 = 0;
    for (i, &byte) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(byte) << (8 * i);
        } else {
            k2 |= u64::from(byte) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1.wrapping_add(h2)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_the_reference_implementation() {
        // Vectors from @multiformats/murmur3 (murmur364), the hasher Helia shards with.
        for (input, hex) in [
            ("", "0000000000000000"),
            ("a", "85555565f6597889"),
            ("hello", "cbd8a7b341bd9b02"),
            ("file-000123.txt", "f9e44da2ba43c99d"),
            ("abcdefghijklmnopqrstuvwxyz0123456789", "f2596f5eb4ff5e3a"),
        ] {
            assert_eq!(
                format!("{:016x}", murmur3_x64_64(input.as_bytes())),
                hex,
                "{input:?}"
            );
        }
    }

    #[test]
    fn prefix_lengths() {
        assert_eq!(prefix_len(256), 2);
        assert_eq!(prefix_len(1024), 3);
        assert_eq!(prefix_len(16), 1);
    }
}
