//! Block identity: which multihash each codec uses, computing CIDs for bytes,
//! and checking that bytes really are what a CID names. Every block that enters
//! or leaves the store passes through [`verify`].

use cid::Cid;
use multihash::Multihash;
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Multicodec: raw bytes.
pub const RAW: u64 = 0x55;
/// Multicodec: DAG-PB (UnixFS).
pub const DAG_PB: u64 = 0x70;
/// Multicodec: DAG-CBOR (path-info objects).
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec: a whole git object, header included, hashed with SHA-1.
pub const GIT_RAW: u64 = 0x78;

/// Multihash: identity (inline data, used by some peers for tiny blocks).
pub const IDENTITY: u64 = 0x00;
/// Multihash: SHA-1 (git-raw only).
pub const SHA1: u64 = 0x11;
/// Multihash: SHA2-256.
pub const SHA2_256: u64 = 0x12;

/// Largest block the store accepts and Bitswap exchanges (DESIGN.md).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;
/// Longest CID accepted from anyone (Bitswap wantlists, gateway paths).
pub const MAX_CID_BYTES: usize = 168;

/// Why bytes are not the block a CID names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    #[error("unsupported codec 0x{0:x} (known: raw, dag-pb, dag-cbor, git-raw)")]
    UnsupportedCodec(u64),
    #[error("unsupported multihash 0x{hash:x} for codec 0x{codec:x} (sha2-256 for all; sha1 only for git-raw)")]
    UnsupportedHash { codec: u64, hash: u64 },
    #[error("block of {size} bytes is larger than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("CID is {0} bytes long, over the {MAX_CID_BYTES}-byte limit")]
    CidTooLong(usize),
    #[error("bytes do not match {cid}: they hash to {actual}")]
    HashMismatch { cid: Cid, actual: String },
}

/// Hash `data` with the multihash `code` (sha2-256, sha1, identity).
pub fn digest(code: u64, data: &[u8]) -> Option<Multihash<64>> {
    match code {
        SHA2_256 => Multihash::wrap(SHA2_256, &Sha256::digest(data)).ok(),
        SHA1 => Multihash::wrap(SHA1, &Sha1::digest(data)).ok(),
        IDENTITY if data.len() <= 64 => Multihash::wrap(IDENTITY, data).ok(),
        _ => None,
    }
}

/// The multihash a codec's blocks are named with when ipnix makes them.
pub fn default_hash(codec: u64) -> u64 {
    if codec == GIT_RAW {
        SHA1
    } else {
        SHA2_256
    }
}

/// CIDv1 for `data` under `codec`, hashed the way ipnix hashes that codec.
pub fn cid_for(codec: u64, data: &[u8]) -> Cid {
    let mh = digest(default_hash(codec), data)
        .expect("sha1 and sha2-256 digests always fit in 64 bytes");
    Cid::new_v1(codec, mh)
}

/// Checks codec, hash function, size and content of a block against its CID.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
    check_cid_and_size(cid, data)?;
    let code = cid.hash().code();
    let actual = digest(code, data).ok_or(BlockError::UnsupportedHash {
        codec: cid.codec(),
        hash: code,
    })?;
    if actual.digest() != cid.hash().digest() {
        return Err(BlockError::HashMismatch {
            cid: *cid,
            actual: hex_string(actual.digest()),
        });
    }
    Ok(())
}

/// Everything [`verify`] checks except the hash: codec, hash function, CID
/// length and block size. Enough only for bytes the caller itself hashed.
pub fn check_cid_and_size(cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
    check_cid(cid)?;
    if data.len() > MAX_BLOCK_SIZE {
        return Err(BlockError::TooLarge {
            size: data.len(),
            max: MAX_BLOCK_SIZE,
        });
    }
    Ok(())
}

/// Checks that a CID is one ipnix can store and serve, without looking at data.
pub fn check_cid(cid: &Cid) -> Result<(), BlockError> {
    let len = cid.encoded_len();
    if len > MAX_CID_BYTES {
        return Err(BlockError::CidTooLong(len));
    }
    let codec = cid.codec();
    if !matches!(codec, RAW | DAG_PB | DAG_CBOR | GIT_RAW) {
        return Err(BlockError::UnsupportedCodec(codec));
    }
    let hash = cid.hash().code();
    let ok = match hash {
        SHA2_256 | IDENTITY => true,
        SHA1 => codec == GIT_RAW,
        _ => false,
    };
    if !ok {
        return Err(BlockError::UnsupportedHash { codec, hash });
    }
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_cid_is_sha1_of_the_object() {
        // `printf 'hello\n' | git hash-object --stdin` = ce013625030ba8dba906f756967f9e9ca394464a
        let cid = cid_for(GIT_RAW, b"blob 6\0hello\n");
        assert_eq!(
            hex_string(cid.hash().digest()),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        verify(&cid, b"blob 6\0hello\n").expect("matches");
        assert!(matches!(
            verify(&cid, b"blob 6\0hellO\n"),
            Err(BlockError::HashMismatch { .. })
        ));
    }

    #[test]
    fn sha1_is_refused_outside_git_raw() {
        let mh = digest(SHA1, b"x").expect("sha1");
        let cid = Cid::new_v1(RAW, mh);
        assert!(matches!(
            verify(&cid, b"x"),
            Err(BlockError::UnsupportedHash { .. })
        ));
    }

    #[test]
    fn raw_block_round_trip_and_size_limit() {
        let data = vec![7u8; 100];
        let cid = cid_for(RAW, &data);
        verify(&cid, &data).expect("ok");
        let big = vec![0u8; MAX_BLOCK_SIZE + 1];
        let cid = cid_for(RAW, &big);
        assert!(matches!(
            verify(&cid, &big),
            Err(BlockError::TooLarge { .. })
        ));
    }
}
