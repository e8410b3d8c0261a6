//! Test helpers, only with the `test-util` feature: deterministic data, and
//! damaging a repo on purpose for tests that check what reads, exports and
//! transfers do with bad bytes on disk.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The pack files of the repo at `repo`, in id order (the oldest first).
pub fn packs(repo: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = std::fs::read_dir(repo.join("packs"))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    out.sort();
    Ok(out)
}

/// Flips one bit of the byte at `offset` in `path`, in place.
pub fn flip_byte(path: &Path, offset: u64) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset)
}

/// Deterministic pseudo-random bytes (xorshift64), so tests need no RNG
/// state: the same `seed` and `len` always give the same bytes.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
