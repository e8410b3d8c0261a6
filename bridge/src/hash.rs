//! Nix's hash and store-path notations: Nix's own base32 ("nix32": its
//! alphabet and its reversed bit order), base16, base64, SRI (`sha256-...`),
//! the `algo:digest` form, and store paths `<store dir>/<32 nix32 chars>-<name>`.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use std::fmt;

/// The store directory when nobody says otherwise.
pub const DEFAULT_STORE_DIR: &str = "/nix/store";
/// Longest store path name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;
/// Length of a store path's hash part (20 bytes in nix32).
pub const HASH_PART_LEN: usize = 32;

const NIX32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a hash or store path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    #[error("unknown hash algorithm {0:?} (known: md5, sha1, sha256, sha512)")]
    UnknownAlgo(String),
    #[error("hash {0:?} has no algorithm (expected `sha256:...` or `sha256-...`)")]
    NoAlgo(String),
    #[error("invalid nix32 character {0:?}")]
    BadNix32Char(char),
    #[error("nix32 string {0:?} does not encode a whole number of bytes (high bits set)")]
    Nix32Overflow(String),
    #[error("{algo} digest {text:?} has the wrong length for base16, nix32 or base64")]
    BadLength { algo: HashAlgo, text: String },
    #[error("invalid base16 in {0:?}")]
    BadBase16(String),
    #[error("invalid base64 in {0:?}")]
    BadBase64(String),
    #[error("store path {path:?} is not in the store directory {store_dir:?}")]
    NotInStore { path: String, store_dir: String },
    #[error("store path {0:?} has no `<hash>-<name>` base name")]
    BadBaseName(String),
    #[error("store path {path:?} has an invalid hash part: {reason}")]
    BadHashPart { path: String, reason: String },
    #[error("store path {path:?} has an invalid name: {reason}")]
    BadName { path: String, reason: String },
}

/// Hash algorithms Nix names in its hash strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// Digest length in bytes.
    pub fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// The name Nix uses (`sha256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    pub fn from_name(name: &str) -> Result<Self, HashError> {
        match name {
            "md5" => Ok(HashAlgo::Md5),
            "sha1" => Ok(HashAlgo::Sha1),
            "sha256" => Ok(HashAlgo::Sha256),
            "sha512" => Ok(HashAlgo::Sha512),
            other => Err(HashError::UnknownAlgo(other.to_owned())),
        }
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Length of the nix32 text for `bytes` bytes.
pub fn nix32_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes * 8 - 1) / 5 + 1
    }
}

/// Encodes bytes the way Nix does: last 5-bit group first, LSB-first bit order.
pub fn nix32_encode(bytes: &[u8]) -> String {
    let len = nix32_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        let low = u16::from(bytes[i]) >> j;
        let high = bytes
            .get(i + 1)
            .map_or(0, |&next| u16::from(next) << (8 - j));
        out.push(char::from(NIX32_ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// Decodes nix32 text into `size` bytes; the text must be exactly `nix32_len(size)` long.
pub fn nix32_decode(text: &str, size: usize) -> Result<Vec<u8>, HashError> {
    if text.len() != nix32_len(size) {
        return Err(HashError::Nix32Overflow(text.to_owned()));
    }
    let mut out = vec![0u8; size];
    for (idx, c) in text.bytes().rev().enumerate() {
        let digit = NIX32_ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or(HashError::BadNix32Char(char::from(c)))? as u16;
        let bit = idx * 5;
        let i = bit / 8;
        let j = bit % 8;
        let shifted = digit << j;
        out[i] |= (shifted & 0xff) as u8;
        let carry = (shifted >> 8) as u8;
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => return Err(HashError::Nix32Overflow(text.to_owned())),
            None => {}
        }
    }
    Ok(out)
}

/// A hash as Nix writes it: an algorithm and its digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NixHash {
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixHash({})", self.to_nix32())
    }
}

impl fmt::Display for NixHash {
    /// `sha256:<nix32>`, the form narinfo files and `nix path-info` use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix32())
    }
}

impl NixHash {
    /// A hash from its digest bytes; `None` if the length does not fit the algorithm.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Option<Self> {
        (digest.len() == algo.size()).then(|| NixHash {
            algo,
            digest: digest.to_vec(),
        })
    }

    /// A SHA-256 hash from its 32 bytes.
    pub fn sha256(digest: [u8; 32]) -> Self {
        NixHash {
            algo: HashAlgo::Sha256,
            digest: digest.to_vec(),
        }
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Parses `algo:digest` (digest in nix32, base16 or base64) or SRI `algo-base64`.
    pub fn parse(text: &str) -> Result<Self, HashError> {
        if let Some((algo, digest)) = text.split_once(':') {
            return Self::parse_digest(HashAlgo::from_name(algo)?, digest);
        }
        if let Some((algo, digest)) = text.split_once('-') {
            let algo = HashAlgo::from_name(algo)?;
            return Self::decode_base64(algo, digest);
        }
        Err(HashError::NoAlgo(text.to_owned()))
    }

    /// Parses a digest of a known algorithm in nix32, base16 or base64 (told apart by length).
    pub fn parse_digest(algo: HashAlgo, digest: &str) -> Result<Self, HashError> {
        let size = algo.size();
        let digest_bytes = if digest.len() == size * 2 {
            hex::decode(digest).map_err(|_| HashError::BadBase16(digest.to_owned()))?
        } else if digest.len() == nix32_len(size) {
            nix32_decode(digest, size)?
        } else if digest.len() == size.div_ceil(3) * 4 {
            return Self::decode_base64(algo, digest);
        } else {
            return Err(HashError::BadLength {
                algo,
                text: digest.to_owned(),
            });
        };
        Ok(NixHash {
            algo,
            digest: digest_bytes,
        })
    }

    fn decode_base64(algo: HashAlgo, digest: &str) -> Result<Self, HashError> {
        let bytes = BASE64
            .decode(digest)
            .map_err(|_| HashError::BadBase64(digest.to_owned()))?;
        NixHash::new(algo, &bytes).ok_or_else(|| HashError::BadLength {
            algo,
            text: digest.to_owned(),
        })
    }

    /// `sha256:<nix32>`.
    pub fn to_nix32(&self) -> String {
        format!("{}:{}", self.algo, nix32_encode(&self.digest))
    }

    /// The bare nix32 digest, no algorithm.
    pub fn nix32_digest(&self) -> String {
        nix32_encode(&self.digest)
    }

    /// `sha256:<hex>`.
    pub fn to_base16(&self) -> String {
        format!("{}:{}", self.algo, hex::encode(&self.digest))
    }

    /// `sha256:<base64>`.
    pub fn to_base64(&self) -> String {
        format!("{}:{}", self.algo, BASE64.encode(&self.digest))
    }

    /// SRI: `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, BASE64.encode(&self.digest))
    }
}

/// A store path: hash part and name; printed with a store directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash_part: String,
    name: String,
}

impl StorePath {
    /// Parses a full path `<store_dir>/<hash>-<name>`.
    pub fn parse(store_dir: &str, path: &str) -> Result<Self, HashError> {
        let dir = store_dir.trim_end_matches('/');
        let base = path
            .strip_prefix(dir)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| HashError::NotInStore {
                path: path.to_owned(),
                store_dir: store_dir.to_owned(),
            })?;
        Self::from_base_name(base).map_err(|e| match e {
            HashError::BadBaseName(_) => HashError::BadBaseName(path.to_owned()),
            other => other,
        })
    }

    /// Parses a full path in the default store directory `/nix/store`.
    pub fn parse_default(path: &str) -> Result<Self, HashError> {
        Self::parse(DEFAULT_STORE_DIR, path)
    }

    /// Parses `<hash>-<name>` (what narinfo `References:` and `Deriver:` hold).
    pub fn from_base_name(base: &str) -> Result<Self, HashError> {
        let (hash_part, name) = base
            .split_at_checked(HASH_PART_LEN)
            .ok_or_else(|| HashError::BadBaseName(base.to_owned()))?;
        let name = name
            .strip_prefix('-')
            .ok_or_else(|| HashError::BadBaseName(base.to_owned()))?;
        check_hash_part(hash_part).map_err(|reason| HashError::BadHashPart {
            path: base.to_owned(),
            reason,
        })?;
        check_name(name).map_err(|reason| HashError::BadName {
            path: base.to_owned(),
            reason,
        })?;
        Ok(StorePath {
            hash_part: hash_part.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The 32 nix32 characters.
    pub fn hash_part(&self) -> &str {
        &self.hash_part
    }

    /// The 20 bytes the hash part encodes.
    pub fn hash_bytes(&self) -> [u8; 20] {
        let bytes = nix32_decode(&self.hash_part, 20).expect("hash part validated at parse time");
        let mut out = [0u8; 20];
        out.copy_from_slice(&bytes);
        out
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash_part, self.name)
    }

    /// `<store_dir>/<hash>-<name>`.
    pub fn to_path(&self, store_dir: &str) -> String {
        format!(
            "{}/{}-{}",
            store_dir.trim_end_matches('/'),
            self.hash_part,
            self.name
        )
    }

    /// The full path in `/nix/store`.
    pub fn to_default_path(&self) -> String {
        self.to_path(DEFAULT_STORE_DIR)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part, self.name)
    }
}

/// Checks a store path hash part: exactly 32 nix32 characters.
pub fn check_hash_part(hash_part: &str) -> Result<(), String> {
    if hash_part.len() != HASH_PART_LEN {
        return Err(format!(
            "{} characters, expected {HASH_PART_LEN}",
            hash_part.len()
        ));
    }
    if let Some(bad) = hash_part.bytes().find(|c| !NIX32_ALPHABET.contains(c)) {
        return Err(format!("{:?} is not a nix32 character", char::from(bad)));
    }
    Ok(())
}

/// Checks a store path name the way Nix does (length, characters), and refuses `.`/`..`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{} characters, longer than {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a file name"));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        return Err(format!("illegal character {bad:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // `echo -n hello | nix hash file --base32 --type sha256 /dev/stdin` style fixtures
    // computed with Nix 2.8 on this machine.
    const HELLO_HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const HELLO_NIX32: &str = "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic";

    #[test]
    fn nix32_matches_nix() {
        let bytes = hex::decode(HELLO_HEX).expect("hex");
        assert_eq!(nix32_encode(&bytes), HELLO_NIX32);
        assert_eq!(nix32_decode(HELLO_NIX32, 32).expect("decode"), bytes);
    }

    #[test]
    fn all_forms_parse_to_the_same_hash() {
        let h = NixHash::parse(&format!("sha256:{HELLO_NIX32}")).expect("nix32");
        assert_eq!(NixHash::parse(&h.to_base16()).expect("hex"), h);
        assert_eq!(NixHash::parse(&h.to_base64()).expect("b64"), h);
        assert_eq!(NixHash::parse(&h.to_sri()).expect("sri"), h);
        assert_eq!(
            h.to_sri(),
            "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
    }

    #[test]
    fn nix32_rejects_overflow_and_bad_chars() {
        // 52 chars of 'z' would need more than 256 bits.
        let all_z = "z".repeat(52);
        assert!(matches!(
            nix32_decode(&all_z, 32),
            Err(HashError::Nix32Overflow(_))
        ));
        let with_e = format!("e{}", &HELLO_NIX32[1..]);
        assert!(matches!(
            nix32_decode(&with_e, 32),
            Err(HashError::BadNix32Char('e'))
        ));
    }

    #[test]
    fn store_paths() {
        let p = StorePath::parse_default("/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-hi.txt")
            .expect("valid");
        assert_eq!(p.name(), "hi.txt");
        assert_eq!(p.hash_part(), "qs2vcw1sd6lzsvgvq6gggnw1v31qrm28");
        assert_eq!(
            p.to_path("/tmp/store/"),
            "/tmp/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-hi.txt"
        );
        for bad in [
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28",
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-",
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm2e-x",
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-a/b",
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-..",
            "/nix/storeX/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-x",
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qr-x",
        ] {
            assert!(StorePath::parse_default(bad).is_err(), "{bad}");
        }
        let long = format!(
            "/nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-{}",
            "a".repeat(212)
        );
        assert!(StorePath::parse_default(&long).is_err());
    }
}
