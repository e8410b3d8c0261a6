//! Content addresses: the `CA:` field of narinfos and path-infos
//! (`fixed:[r:]<algo>:<hash>`, `text:sha256:<hash>`) and the store paths Nix
//! derives from them, so ipnix can check that a store path really is the
//! fixed-output path of its content (`nix-store --print-fixed-path`).
//!
//! Nix's rules (`makeFixedOutputPath`, `makeStorePath`): a recursive SHA-256
//! hash names the path directly (`source:sha256:<hex>:<store dir>:<name>`);
//! every other fixed hash goes through an inner digest
//! `sha256("fixed:out:[r:]<algo>:<hex>:")`, named as `output:out`. The path's
//! hash part is that string's SHA-256 folded to 20 bytes, in nix32.

use crate::hash::{nix32_encode, HashAlgo, HashError, NixHash, StorePath};
use sha2::{Digest, Sha256};
use std::fmt;

/// Why a content address could not be parsed or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    #[error("content address {0:?} is not `fixed:[r:]<algo>:<hash>` or `text:sha256:<hash>`")]
    Syntax(String),
    #[error("content address {text:?}: {source}")]
    Hash { text: String, source: HashError },
    #[error("store path name {name:?}: {reason}")]
    Name { name: String, reason: String },
}

/// How a fixed-output path's hash covers its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileIngestion {
    /// The hash of the single file's bytes (`fetchurl`).
    Flat,
    /// The hash of the NAR serialisation (`fetchzip`, `fetchFromGitHub`).
    Recursive,
}

/// A parsed content address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    Fixed {
        method: FileIngestion,
        hash: NixHash,
    },
    /// `text:sha256:...` (derivations, `builtins.toFile`); only parsed, paths
    /// of this kind also depend on their references.
    Text { hash: NixHash },
}

impl ContentAddress {
    /// A fixed-output content address.
    pub fn fixed(method: FileIngestion, hash: NixHash) -> Self {
        ContentAddress::Fixed { method, hash }
    }

    /// Parses what Nix writes in `CA:` (the hash in nix32, base16 or base64).
    pub fn parse(text: &str) -> Result<Self, CaError> {
        let syntax = || CaError::Syntax(text.to_owned());
        let hash_err = |source| CaError::Hash {
            text: text.to_owned(),
            source,
        };
        if let Some(rest) = text.strip_prefix("text:") {
            let hash = NixHash::parse(rest).map_err(hash_err)?;
            if hash.algo() != HashAlgo::Sha256 {
                return Err(syntax());
            }
            return Ok(ContentAddress::Text { hash });
        }
        let rest = text.strip_prefix("fixed:").ok_or_else(syntax)?;
        let (method, rest) = match rest.strip_prefix("r:") {
            Some(rest) => (FileIngestion::Recursive, rest),
            None => (FileIngestion::Flat, rest),
        };
        if !rest.contains(':') {
            return Err(syntax());
        }
        let hash = NixHash::parse(rest).map_err(hash_err)?;
        Ok(ContentAddress::Fixed { method, hash })
    }

    /// The fixed-output store path `name` gets in `store_dir` for this
    /// content address (no references). `None` for `text:` addresses, whose
    /// path also depends on references.
    pub fn fixed_output_path(
        &self,
        store_dir: &str,
        name: &str,
    ) -> Result<Option<String>, CaError> {
        crate::hash::check_name(name).map_err(|reason| CaError::Name {
            name: name.to_owned(),
            reason,
        })?;
        let ContentAddress::Fixed { method, hash } = self else {
            return Ok(None);
        };
        let store_dir = store_dir.trim_end_matches('/');
        let description = if *method == FileIngestion::Recursive && hash.algo() == HashAlgo::Sha256
        {
            format!(
                "source:sha256:{}:{store_dir}:{name}",
                hex::encode(hash.digest())
            )
        } else {
            let prefix = match method {
                FileIngestion::Recursive => "r:",
                FileIngestion::Flat => "",
            };
            let inner = Sha256::digest(format!(
                "fixed:out:{prefix}{}:{}:",
                hash.algo(),
                hex::encode(hash.digest())
            ));
            format!(
                "output:out:sha256:{}:{store_dir}:{name}",
                hex::encode(inner)
            )
        };
        let full = Sha256::digest(description.as_bytes());
        let mut folded = [0u8; 20];
        for (i, byte) in full.iter().enumerate() {
            folded[i % 20] ^= byte;
        }
        Ok(Some(format!(
            "{store_dir}/{}-{name}",
            nix32_encode(&folded)
        )))
    }

    /// Whether `store_path` is exactly the path this content address gives
    /// its name (the check Nix makes before trusting a CA path unsigned).
    pub fn names(&self, store_dir: &str, store_path: &StorePath) -> bool {
        matches!(
            self.fixed_output_path(store_dir, store_path.name()),
            Ok(Some(path)) if path == store_path.to_path(store_dir)
        )
    }
}

impl fmt::Display for ContentAddress {
    /// As Nix renders it: `fixed:[r:]<algo>:<nix32>` or `text:sha256:<nix32>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Fixed { method, hash } => {
                let r = match method {
                    FileIngestion::Recursive => "r:",
                    FileIngestion::Flat => "",
                };
                write!(f, "fixed:{r}{}", hash.to_nix32())
            }
            ContentAddress::Text { hash } => write!(f, "text:{}", hash.to_nix32()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixtures from Nix 2.8 on this machine:
    // `nix-store --print-fixed-path sha256 <hash> hello-2.10.tar.gz` and
    // `nix-store --print-fixed-path --recursive sha256 <hash> source`.
    const HELLO_FLAT: &str = "sha256:0ssi1wpaf7plaswqqjwigppsg5fyh99vdlb9kzl7c9lng89ndq1i";

    #[test]
    fn parse_and_render_round_trip() {
        for text in [
            format!("fixed:{HELLO_FLAT}"),
            format!("fixed:r:{HELLO_FLAT}"),
            format!("text:{HELLO_FLAT}"),
        ] {
            let ca = ContentAddress::parse(&text).expect("parses");
            assert_eq!(ca.to_string(), text);
        }
        for bad in [
            "fixed:",
            "fixed:r:",
            "fixed:sha256",
            "nope:sha256:abc",
            "fixed:sha999:00",
            "text:sha1:0000000000000000000000000000000000000000",
        ] {
            assert!(ContentAddress::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_paths_match_nix() {
        let flat = ContentAddress::parse(&format!("fixed:{HELLO_FLAT}")).expect("ca");
        assert_eq!(
            flat.fixed_output_path("/nix/store", "hello-2.10.tar.gz")
                .expect("path")
                .as_deref(),
            Some("/nix/store/3x7dwzq014bblazs7kq20p9hyzz0qh8g-hello-2.10.tar.gz")
        );
        let recursive = ContentAddress::parse(&format!("fixed:r:{HELLO_FLAT}")).expect("ca");
        assert_eq!(
            recursive
                .fixed_output_path("/nix/store", "source")
                .expect("path")
                .as_deref(),
            Some("/nix/store/papfr17cn4bjqakdv0b52xfz4pqzwdcd-source")
        );
        let sha512 =
            ContentAddress::parse(&format!("fixed:sha512:{}", "ab".repeat(64))).expect("ca");
        assert_eq!(
            sha512
                .fixed_output_path("/nix/store", "x.tgz")
                .expect("path")
                .as_deref(),
            Some("/nix/store/v2pgbiq9wr7s3w2asimfa5w004pzmnfj-x.tgz")
        );
        let sha1_r =
            ContentAddress::parse(&format!("fixed:r:sha1:{}", "ab".repeat(20))).expect("ca");
        assert_eq!(
            sha1_r
                .fixed_output_path("/nix/store", "src")
                .expect("path")
                .as_deref(),
            Some("/nix/store/s606y5ifrbn2cglk0wqcxsh3m0f0458s-src")
        );
        let text = ContentAddress::parse(&format!("text:{HELLO_FLAT}")).expect("ca");
        assert_eq!(text.fixed_output_path("/nix/store", "x").expect("ok"), None);
        assert!(flat.fixed_output_path("/nix/store", "a/b").is_err());
    }
}
