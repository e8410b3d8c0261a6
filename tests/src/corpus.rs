//! The real registry tarballs the sources tests use: `tests/sources-corpus.json`
//! (what each file is and the hash its registry publishes) and the files
//! themselves, which `tests/setup-sources-corpus.sh` downloads into
//! `${IPNIX_CORPUS:-$HOME/.cache/ipnix-corpus}/<registry>/<file>`.
//!
//! A test that needs them calls [`load_or_skip`]: under a bare `cargo test`
//! on a machine that never ran the setup script it prints `SKIP: <reason>`.

use anyhow::{anyhow, bail, Context, Result};
use ipnix_bridge::{HashAlgo, NixHash};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Files over this size are chunked differently by the store (more than one
/// 1 MiB UnixFS leaf): the corpus holds some.
pub const ONE_MIB: u64 = 1 << 20;

/// `tests/sources-corpus.json`.
pub fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sources-corpus.json")
}

/// `$IPNIX_CORPUS`, else `~/.cache/ipnix-corpus`.
pub fn corpus_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IPNIX_CORPUS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/ipnix-corpus")
}

#[derive(Debug, Deserialize)]
struct Manifest {
    version: u64,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, Deserialize)]
struct ManifestFile {
    registry: String,
    name: String,
    version: String,
    file: String,
    size: u64,
    published_hash: String,
    sha256: String,
}

/// Which registry a file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Registry {
    PyPi,
    Npm,
    CratesIo,
}

impl Registry {
    fn from_manifest(name: &str) -> Result<Self> {
        match name {
            "pypi" => Ok(Registry::PyPi),
            "npm" => Ok(Registry::Npm),
            "crates.io" => Ok(Registry::CratesIo),
            other => bail!("unknown registry {other:?} in the corpus manifest"),
        }
    }

    /// The directory name under the corpus dir (and the manifest's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Registry::PyPi => "pypi",
            Registry::Npm => "npm",
            Registry::CratesIo => "crates.io",
        }
    }
}

/// One real tarball.
#[derive(Debug, Clone)]
pub struct CorpusFile {
    pub registry: Registry,
    pub name: String,
    pub version: String,
    /// The file's name as the registry serves it (`six-1.16.0.tar.gz`).
    pub file_name: String,
    pub size: u64,
    /// The hash exactly as the registry publishes it: sha256 hex (PyPI,
    /// Cargo.lock) or the SRI `dist.integrity` (npm, sha512).
    pub published_hash_text: String,
    /// [`published_hash_text`](Self::published_hash_text) parsed.
    pub published_hash: NixHash,
    /// The file's SHA-256 (for npm computed, not published).
    pub sha256: NixHash,
    /// Where the file is on this machine.
    pub path: PathBuf,
}

impl CorpusFile {
    pub fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))
    }

    /// Whether the store keeps it as more than one leaf.
    pub fn is_over_one_mib(&self) -> bool {
        self.size > ONE_MIB
    }
}

/// The whole corpus, every file present with its recorded size.
#[derive(Debug, Clone)]
pub struct Corpus {
    pub dir: PathBuf,
    pub files: Vec<CorpusFile>,
}

impl Corpus {
    /// The files of one registry.
    pub fn from_registry(&self, registry: Registry) -> impl Iterator<Item = &CorpusFile> {
        self.files.iter().filter(move |f| f.registry == registry)
    }

    /// The file called `file_name`.
    pub fn file(&self, file_name: &str) -> Option<&CorpusFile> {
        self.files.iter().find(|f| f.file_name == file_name)
    }

    /// Total bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Re-hashes every file against the manifest (the setup script already
    /// did; this is for tests that want to be sure the bytes they serve are
    /// the registry's).
    pub fn verify(&self) -> Result<()> {
        for file in &self.files {
            let bytes = file.read()?;
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            if NixHash::sha256(digest) != file.sha256 {
                bail!(
                    "{} does not match the manifest's sha256",
                    file.path.display()
                );
            }
        }
        Ok(())
    }
}

fn parse_published(text: &str) -> Result<NixHash> {
    let hash = if text.contains('-') {
        NixHash::parse(text)
    } else {
        NixHash::parse_digest(HashAlgo::Sha256, text)
    };
    hash.map_err(|e| anyhow!("published hash {text:?}: {e}"))
}

/// Reads the manifest and checks that every file is in [`corpus_dir`] with
/// its recorded size. `Err` says what is missing.
pub fn load() -> Result<Corpus> {
    let manifest_text = std::fs::read(manifest_path())
        .with_context(|| format!("reading {}", manifest_path().display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_text).context("parsing sources-corpus.json")?;
    if manifest.version != 1 {
        bail!(
            "sources-corpus.json version {} is unknown",
            manifest.version
        );
    }
    let dir = corpus_dir();
    let mut files = Vec::with_capacity(manifest.files.len());
    for entry in manifest.files {
        let registry = Registry::from_manifest(&entry.registry)?;
        let path = dir.join(registry.as_str()).join(&entry.file);
        let size = std::fs::metadata(&path)
            .map_err(|e| {
                anyhow!(
                    "{} is missing ({e}); run tests/setup-sources-corpus.sh",
                    path.display()
                )
            })?
            .len();
        if size != entry.size {
            bail!(
                "{} is {size} bytes, the manifest says {}; run tests/setup-sources-corpus.sh",
                path.display(),
                entry.size
            );
        }
        files.push(CorpusFile {
            registry,
            published_hash: parse_published(&entry.published_hash)?,
            sha256: NixHash::parse_digest(HashAlgo::Sha256, &entry.sha256)
                .map_err(|e| anyhow!("manifest sha256 of {}: {e}", entry.file))?,
            name: entry.name,
            version: entry.version,
            file_name: entry.file,
            size: entry.size,
            published_hash_text: entry.published_hash,
            path,
        });
    }
    Ok(Corpus { dir, files })
}

/// The corpus, or `None` after printing `SKIP: <test>: <why>`.
pub fn load_or_skip(test: &str) -> Option<Corpus> {
    match load() {
        Ok(corpus) => Some(corpus),
        Err(err) => {
            crate::peers::skip(test, &format!("source corpus unavailable: {err:#}"));
            None
        }
    }
}
