//! Flat source tarballs kept as tree + recipe (DESIGN.md I-35): how the
//! pinner stores them as a fixed-output path-info whose one large blob is
//! the recipe rather than a UnixFS copy of the bytes, how NAR exports
//! rebuild them ([`RecipeRebuilder`]), and the bounded cache of recently
//! rebuilt tarballs that the hashed mirror and `sources get` read from, so
//! a tarball asked for twice is rebuilt once.

use crate::recipe::{self, DisassembleOptions, RecipeError};
use cid::Cid;
use ipnix_bridge::export::BlobRebuilder;
use ipnix_bridge::git::BlobHasher;
use ipnix_bridge::pathinfo::{LargeBlob, Root, RootKind};
use ipnix_bridge::{NarWriter, NixHash, PathInfo};
use ipnix_store::block::DAG_CBOR;
use ipnix_store::links::git_cid;
use ipnix_store::{BlockRead, Store};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// A recipe is worth keeping instead of the bytes when it costs at most
/// this fraction (1/N) of the tarball.
pub const RECIPE_RATIO: u64 = 10;
/// Rebuilt tarballs the cache keeps (files, and bytes in all).
const CACHE_FILES: usize = 16;
const CACHE_BYTES: u64 = 4 << 30;

/// Why a recipe-backed tarball could not be stored or rebuilt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarballError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("path-info for {path}: {reason}")]
    PathInfo { path: String, reason: String },
}

/// Rebuilds large blobs whose contents are tarball recipes, for
/// [`ipnix_bridge::export_nar_with`] and [`ipnix_bridge::export_dir_with`].
pub struct RecipeRebuilder<'a, R: BlockRead> {
    blocks: &'a R,
}

impl<'a, R: BlockRead> RecipeRebuilder<'a, R> {
    pub fn new(blocks: &'a R) -> Self {
        Self { blocks }
    }
}

impl<R: BlockRead> BlobRebuilder for RecipeRebuilder<'_, R> {
    fn rebuild(&self, contents: &Cid, out: &mut dyn Write) -> Option<io::Result<()>> {
        if contents.codec() != DAG_CBOR {
            return None;
        }
        Some(
            recipe::reassemble(self.blocks, contents, out)
                .map(|_| ())
                .map_err(io::Error::other),
        )
    }
}

/// The single-file path-info of a flat tarball stored as tree + recipe.
pub struct StoredAsTree {
    pub pathinfo: PathInfo,
    pub recipe: Cid,
    pub tree: Cid,
    pub recipe_bytes: u64,
}

/// Disassembles the verified flat download `file` and, when the recipe is
/// exact without keeping the compressed bytes and costs at most
/// 1/[`RECIPE_RATIO`] of the file, returns the path-info that stores it as
/// tree + recipe (not yet written: the caller stages it). `None` means:
/// keep the plain bytes (not a tarball, an archive the recipe cannot model,
/// or a recipe too big); what disassembly stored is then left to GC.
pub fn store_as_tree(
    store: &Store,
    file: &Path,
    store_path: &str,
    ca: &str,
) -> Result<Option<StoredAsTree>, TarballError> {
    let size = std::fs::metadata(file)
        .map_err(|source| TarballError::Io {
            path: file.to_owned(),
            source,
        })?
        .len();
    let done = match recipe::disassemble(store, file, &DisassembleOptions::default()) {
        Ok(done) => done,
        Err(e) => {
            tracing::debug!(file = %file.display(), "kept as plain bytes: {e}");
            return Ok(None);
        }
    };
    let recipe_pin = |store: &Store| store.unpin(&done.recipe).map(|_| ());
    if done.tarball_bytes != size
        || !done.fallbacks.is_empty()
        || done.recipe_bytes.saturating_mul(RECIPE_RATIO) > size
    {
        tracing::debug!(
            file = %file.display(),
            recipe_bytes = done.recipe_bytes,
            fallbacks = ?done.fallbacks,
            "kept as plain bytes: the recipe does not pay"
        );
        // The list is the only owner of what a pin stores (I-23).
        let _ = recipe_pin(store);
        return Ok(None);
    }
    let (git, nar_hash, nar_size) = file_identity(file, size)?;
    let pathinfo = PathInfo {
        store_path: store_path.to_owned(),
        root: Root {
            kind: RootKind::Regular,
            cid: git,
        },
        nar_hash,
        nar_size,
        references: Vec::new(),
        self_reference: false,
        signatures: Vec::new(),
        deriver: None,
        ca: Some(ca.to_owned()),
        blobs: vec![LargeBlob {
            git,
            unixfs: done.recipe,
            size,
        }],
    };
    pathinfo.validate().map_err(|e| TarballError::PathInfo {
        path: store_path.to_owned(),
        reason: e.to_string(),
    })?;
    // Kept by the list's pin on the path-info from here (I-23); the
    // `recipe:` pin would outlive an unpin of the list.
    let _ = recipe_pin(store);
    Ok(Some(StoredAsTree {
        pathinfo,
        recipe: done.recipe,
        tree: done.tree,
        recipe_bytes: done.recipe_bytes,
    }))
}

/// The git blob CID, NAR hash and NAR size of a single regular file.
fn file_identity(file: &Path, size: u64) -> Result<(Cid, NixHash, u64), TarballError> {
    let io_err = |source| TarballError::Io {
        path: file.to_owned(),
        source,
    };
    let nar_err = |e: ipnix_bridge::nar::NarError| TarballError::Io {
        path: file.to_owned(),
        source: io::Error::other(e),
    };
    let mut reader = File::open(file).map_err(io_err)?;
    let mut blob = BlobHasher::new(size);
    let mut nar = NarWriter::new(io::sink()).map_err(nar_err)?;
    nar.file(false, size).map_err(nar_err)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut seen = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        seen += n as u64;
        blob.update(&buf[..n]);
        nar.file_data(&buf[..n]).map_err(nar_err)?;
    }
    if seen != size {
        return Err(io_err(io::Error::other(
            "the file changed while it was read",
        )));
    }
    let (_, summary) = nar.finish().map_err(nar_err)?;
    Ok((
        git_cid(&blob.finish()),
        NixHash::sha256(summary.sha256),
        summary.size,
    ))
}

/// Recently rebuilt tarballs, newest last: at most [`CACHE_FILES`] files
/// and [`CACHE_BYTES`] bytes, in a private directory of the process.
struct RebuiltCache {
    dir: tempfile::TempDir,
    entries: VecDeque<(Cid, PathBuf, u64)>,
}

fn cache() -> Result<&'static Mutex<RebuiltCache>, io::Error> {
    static CACHE: OnceLock<Result<Mutex<RebuiltCache>, String>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            tempfile::Builder::new()
                .prefix("ipnix-rebuilt-")
                .tempdir()
                .map(|dir| {
                    Mutex::new(RebuiltCache {
                        dir,
                        entries: VecDeque::new(),
                    })
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| io::Error::other(format!("rebuilt-tarball cache: {e}")))
}

/// The tarball of `recipe`, rebuilt and verified (or taken from the cache of
/// recent rebuilds), open for reading from its start.
pub fn open_rebuilt<R: BlockRead>(blocks: &R, recipe: &Cid) -> Result<(u64, File), TarballError> {
    let cache = cache().map_err(|source| TarballError::Io {
        path: PathBuf::from("rebuilt-tarball cache"),
        source,
    })?;
    let (dir, hit) = {
        let mut cache = cache.lock().expect("cache lock is never poisoned");
        let hit = cache
            .entries
            .iter()
            .position(|(cid, _, _)| cid == recipe)
            .and_then(|i| cache.entries.remove(i));
        if let Some(entry) = &hit {
            cache.entries.push_back(entry.clone());
        }
        (cache.dir.path().to_owned(), hit)
    };
    if let Some((_, path, size)) = hit {
        if let Ok(file) = File::open(&path) {
            return Ok((size, file));
        }
    }
    // Rebuilt outside the lock: two first requests may both rebuild, and
    // the second rename replaces an identical verified file.
    let staging = tempfile::Builder::new()
        .prefix(".rebuild-")
        .tempdir_in(&dir)
        .map_err(|source| TarballError::Io {
            path: dir.clone(),
            source,
        })?;
    let staged = staging.path().join("tarball");
    let done = recipe::reassemble_to_file(blocks, recipe, &staged)?;
    let path = dir.join(recipe.to_string());
    std::fs::rename(&staged, &path).map_err(|source| TarballError::Io {
        path: path.clone(),
        source,
    })?;
    let file = File::open(&path).map_err(|source| TarballError::Io {
        path: path.clone(),
        source,
    })?;
    let mut cache = cache.lock().expect("cache lock is never poisoned");
    cache.entries.retain(|(cid, _, _)| cid != recipe);
    cache.entries.push_back((*recipe, path, done.bytes));
    let mut total: u64 = cache.entries.iter().map(|(_, _, n)| n).sum();
    while cache.entries.len() > CACHE_FILES || (total > CACHE_BYTES && cache.entries.len() > 1) {
        let Some((_, old, n)) = cache.entries.pop_front() else {
            break;
        };
        // Readers that hold the file open keep reading it after the unlink.
        let _ = std::fs::remove_file(old);
        total -= n;
    }
    Ok((done.bytes, file))
}
