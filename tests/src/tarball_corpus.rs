//! The tarball-recipe corpus (issue 16): `tests/tarball-corpus.json` (Debian
//! orig tarballs and extra PyPI sdists, which `tests/setup-tarball-corpus.sh`
//! keeps in `${IPNIX_TARBALL_CORPUS:-$HOME/.cache/ipnix-tarball-corpus}/<origin>/<file>`)
//! together with every file of the sources corpus ([`crate::corpus`]) it
//! includes. A test calls [`load_or_skip`]: on a machine that never ran the
//! setup script it prints `SKIP: <reason>`.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `tests/tarball-corpus.json`.
pub fn manifest_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tarball-corpus.json")
}

/// `$IPNIX_TARBALL_CORPUS`, else `~/.cache/ipnix-tarball-corpus`.
pub fn corpus_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("IPNIX_TARBALL_CORPUS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/ipnix-tarball-corpus")
}

#[derive(Debug, Deserialize)]
struct Manifest {
    version: u64,
    #[serde(default)]
    include: Vec<String>,
    files: Vec<ManifestFile>,
}

#[derive(Debug, Deserialize)]
struct ManifestFile {
    origin: String,
    name: String,
    version: String,
    file: String,
    format: String,
    made_by: String,
    size: u64,
    sha256: String,
}

/// One real tarball (or zip) of the corpus.
#[derive(Debug, Clone)]
pub struct TarballFile {
    /// `debian`, `pypi`, `npm` or `crates.io`.
    pub origin: String,
    pub name: String,
    pub version: String,
    /// The file's name as its registry serves it.
    pub file_name: String,
    /// `tar.gz`, `tar.xz`, `tar.bz2`, `zip`.
    pub format: String,
    /// Who rolled it (`gnu`, `github-archive`, `npm-pack`, ...).
    pub made_by: String,
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// Where it is on this machine.
    pub path: PathBuf,
}

impl TarballFile {
    pub fn read(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))
    }

    /// `sha256:<hex>`, the form `sources reassemble` takes.
    pub fn hash_arg(&self) -> String {
        format!("sha256:{}", self.sha256)
    }
}

/// SHA-256 of `bytes` in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The format of a sources-corpus file, from its name.
fn format_of(file_name: &str) -> &'static str {
    if file_name.ends_with(".zip") {
        "zip"
    } else if file_name.ends_with(".tar.xz") {
        "tar.xz"
    } else if file_name.ends_with(".tar.bz2") {
        "tar.bz2"
    } else {
        // .tar.gz, .tgz (npm), .crate
        "tar.gz"
    }
}

/// The whole corpus, every file present with its recorded size.
#[derive(Debug, Clone)]
pub struct TarballCorpus {
    pub files: Vec<TarballFile>,
}

impl TarballCorpus {
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn file(&self, file_name: &str) -> Option<&TarballFile> {
        self.files.iter().find(|f| f.file_name == file_name)
    }
}

/// Reads both manifests and checks that every file is present with its
/// recorded size. `Err` says what is missing.
pub fn load() -> Result<TarballCorpus> {
    let text = std::fs::read(manifest_path())
        .with_context(|| format!("reading {}", manifest_path().display()))?;
    let manifest: Manifest =
        serde_json::from_slice(&text).context("parsing tarball-corpus.json")?;
    if manifest.version != 1 {
        bail!(
            "tarball-corpus.json version {} is unknown",
            manifest.version
        );
    }
    let dir = corpus_dir();
    let mut files = Vec::new();
    for entry in manifest.files {
        let path = dir.join(&entry.origin).join(&entry.file);
        let size = std::fs::metadata(&path)
            .map_err(|e| {
                anyhow!(
                    "{} is missing ({e}); run tests/setup-tarball-corpus.sh",
                    path.display()
                )
            })?
            .len();
        if size != entry.size {
            bail!(
                "{} is {size} bytes, the manifest says {}; run tests/setup-tarball-corpus.sh",
                path.display(),
                entry.size
            );
        }
        files.push(TarballFile {
            origin: entry.origin,
            name: entry.name,
            version: entry.version,
            file_name: entry.file,
            format: entry.format,
            made_by: entry.made_by,
            size: entry.size,
            sha256: entry.sha256,
            path,
        });
    }
    for include in &manifest.include {
        if include != "sources-corpus.json" {
            bail!("tarball-corpus.json includes {include:?}, which this loader does not know");
        }
        let sources = crate::corpus::load()?;
        for file in sources.files {
            let registry = file.registry.as_str();
            files.push(TarballFile {
                origin: registry.to_owned(),
                format: format_of(&file.file_name).to_owned(),
                made_by: match registry {
                    "pypi" => "setuptools",
                    "npm" => "npm-pack",
                    _ => "cargo-package",
                }
                .to_owned(),
                sha256: hex::encode(file.sha256.digest()),
                name: file.name,
                version: file.version,
                file_name: file.file_name,
                size: file.size,
                path: file.path,
            });
        }
    }
    Ok(TarballCorpus { files })
}

/// The corpus, or `None` after printing `SKIP: <test>: <why>`.
pub fn load_or_skip(test: &str) -> Option<TarballCorpus> {
    match load() {
        Ok(corpus) => Some(corpus),
        Err(err) => {
            crate::peers::skip(test, &format!("tarball corpus unavailable: {err:#}"));
            None
        }
    }
}
