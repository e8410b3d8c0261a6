//! A client for existing Nix binary caches (`file://DIR`, `http://HOST:PORT/...`):
//! `nix-cache-info`, `<hash>.narinfo`, and NARs compressed with none, xz,
//! zstd or bzip2, decompressed as a stream, with FileSize/FileHash checked on
//! the compressed bytes and the NAR hash checked by the importer. Imported
//! path-infos keep the narinfo's signatures.

use crate::hash::{check_hash_part, HashAlgo, NixHash};
use crate::import::{import_nar, ImportError, Imported, PathMeta};
use crate::narinfo::{NarInfo, NarInfoError, MAX_NARINFO_LEN};
use crate::nixstore::{order_within, ClosureItem, NixPathInfo, NixStoreError};
use crate::pathinfo::Reference;
use cid::Cid;
use ipnix_store::BlockWrite;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::time::Duration;

/// Most paths one closure import walks (bounds the narinfos held in memory).
pub const MAX_CLOSURE_PATHS: usize = 100_000;

/// Why reading from a binary cache failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    #[error("unsupported cache URL {0:?} (use file://DIR or http://HOST:PORT[/PATH])")]
    BadUrl(String),
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bad nix-cache-info: {0}")]
    CacheInfo(String),
    #[error("cache's StoreDir is {cache}, but the path wanted is in {wanted}")]
    StoreDirMismatch { cache: String, wanted: String },
    #[error("bad narinfo for {hash_part}: {source}")]
    NarInfo {
        hash_part: String,
        #[source]
        source: NarInfoError,
    },
    #[error("narinfo {hash_part} describes {store_path}, another path")]
    WrongPath {
        hash_part: String,
        store_path: String,
    },
    #[error("{0:?} is not a store path hash part")]
    BadHashPart(String),
    #[error("{0} is not in the cache")]
    NotFound(String),
    #[error("unsupported NAR compression {0:?} (supported: none, xz, zstd, bzip2)")]
    Compression(String),
    #[error("unsupported FileHash algorithm {0} (only sha256)")]
    FileHashAlgo(HashAlgo),
    #[error("{url}: compressed file is {actual} bytes, narinfo FileSize says {expected}")]
    FileSize {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error("{url}: compressed file hashes to {actual}, narinfo FileHash says {expected}")]
    FileHash {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("importing {path}: {source}")]
    Import {
        path: String,
        #[source]
        source: ImportError,
    },
    #[error(transparent)]
    Closure(#[from] NixStoreError),
    #[error("closure of {0} has more than {MAX_CLOSURE_PATHS} paths")]
    ClosureTooLarge(String),
}

/// What `nix-cache-info` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    pub store_dir: String,
    pub want_mass_query: bool,
    pub priority: Option<u64>,
}

#[derive(Debug, Clone)]
enum Base {
    File(PathBuf),
    Http(String),
}

/// A binary cache to read from.
#[derive(Debug, Clone)]
pub struct CacheClient {
    base: Base,
    agent: ureq::Agent,
}

type RawStream = Box<dyn Read + Send>;

impl CacheClient {
    /// `file:///abs/dir` or `http://host:port[/prefix]` (plain HTTP only;
    /// redirects are not followed).
    pub fn new(url: &str) -> Result<Self, CacheError> {
        let base = if let Some(dir) = url.strip_prefix("file://") {
            let dir = dir.split('?').next().unwrap_or(dir);
            if !dir.starts_with('/') {
                return Err(CacheError::BadUrl(url.to_owned()));
            }
            Base::File(PathBuf::from(dir))
        } else if url.starts_with("http://") {
            Base::Http(url.trim_end_matches('/').to_owned())
        } else {
            return Err(CacheError::BadUrl(url.to_owned()));
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build();
        Ok(CacheClient {
            base,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// Opens `rel` under the cache root; `None` if it does not exist.
    fn open(&self, rel: &str) -> Result<Option<RawStream>, CacheError> {
        match &self.base {
            Base::File(dir) => {
                let path = dir.join(rel);
                match std::fs::File::open(&path) {
                    Ok(f) => Ok(Some(Box::new(f))),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(CacheError::Io { path, source }),
                }
            }
            Base::Http(base) => {
                let url = format!("{base}/{rel}");
                let response = self.agent.get(&url).call().map_err(|e| CacheError::Http {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                let status = response.status().as_u16();
                match status {
                    200 => Ok(Some(Box::new(response.into_body().into_reader()))),
                    404 | 403 | 410 => Ok(None),
                    other => Err(CacheError::Http {
                        url,
                        reason: format!("HTTP status {other}"),
                    }),
                }
            }
        }
    }

    fn read_small(&self, rel: &str) -> Result<Option<Vec<u8>>, CacheError> {
        let Some(stream) = self.open(rel)? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        stream
            .take(MAX_NARINFO_LEN as u64 + 1)
            .read_to_end(&mut data)
            .map_err(|source| CacheError::Io {
                path: PathBuf::from(rel),
                source,
            })?;
        Ok(Some(data))
    }

    /// Reads `nix-cache-info`.
    pub fn cache_info(&self) -> Result<CacheInfo, CacheError> {
        let data = self
            .read_small("nix-cache-info")?
            .ok_or_else(|| CacheError::NotFound("nix-cache-info".into()))?;
        let text =
            String::from_utf8(data).map_err(|_| CacheError::CacheInfo("not UTF-8".into()))?;
        let mut info = CacheInfo {
            store_dir: String::new(),
            want_mass_query: false,
            priority: None,
        };
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "StoreDir" => info.store_dir = value.to_owned(),
                "WantMassQuery" => info.want_mass_query = value == "1",
                "Priority" => {
                    info.priority =
                        Some(value.parse().map_err(|_| {
                            CacheError::CacheInfo(format!("bad Priority {value:?}"))
                        })?)
                }
                _ => {}
            }
        }
        if !info.store_dir.starts_with('/') {
            return Err(CacheError::CacheInfo("no absolute StoreDir".into()));
        }
        Ok(info)
    }

    /// Fetches `<hash_part>.narinfo`; `None` if the cache does not have it.
    pub fn narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, CacheError> {
        check_hash_part(hash_part).map_err(|_| CacheError::BadHashPart(hash_part.to_owned()))?;
        let Some(data) = self.read_small(&format!("{hash_part}.narinfo"))? else {
            return Ok(None);
        };
        let info = NarInfo::parse(&data).map_err(|source| CacheError::NarInfo {
            hash_part: hash_part.to_owned(),
            source,
        })?;
        let base = info.store_path.rsplit_once('/').map_or("", |(_, b)| b);
        if !base.starts_with(hash_part) || base.as_bytes().get(hash_part.len()) != Some(&b'-') {
            return Err(CacheError::WrongPath {
                hash_part: hash_part.to_owned(),
                store_path: info.store_path,
            });
        }
        Ok(Some(info))
    }

    /// Opens the NAR a narinfo points to, decompressed as it is read.
    pub fn open_nar(&self, info: &NarInfo) -> Result<NarStream, CacheError> {
        if let Some(hash) = &info.file_hash {
            if hash.algo() != HashAlgo::Sha256 {
                return Err(CacheError::FileHashAlgo(hash.algo()));
            }
        }
        let raw = self
            .open(&info.url)?
            .ok_or_else(|| CacheError::NotFound(info.url.clone()))?;
        let checked = CheckedFile {
            inner: raw,
            sha: Sha256::new(),
            count: 0,
        };
        let io_err = |source| CacheError::Io {
            path: PathBuf::from(&info.url),
            source,
        };
        let decoder = match info.compression.as_str() {
            "none" | "" => Decoder::None(checked),
            "xz" => Decoder::Xz(Box::new(xz2::read::XzDecoder::new_multi_decoder(checked))),
            "zstd" => Decoder::Zstd(Box::new(
                zstd::stream::read::Decoder::new(checked).map_err(io_err)?,
            )),
            "bzip2" => Decoder::Bzip2(Box::new(bzip2::read::MultiBzDecoder::new(checked))),
            other => return Err(CacheError::Compression(other.to_owned())),
        };
        Ok(NarStream {
            decoder,
            url: info.url.clone(),
            file_hash: info.file_hash.clone(),
            file_size: info.file_size,
        })
    }

    /// Imports the path a narinfo describes. Its references other than itself
    /// must be in `known` (full path -> path-info CID).
    pub fn import<W: BlockWrite>(
        &self,
        w: &mut W,
        info: &NarInfo,
        known: &HashMap<String, Cid>,
    ) -> Result<Imported, CacheError> {
        let mut meta = PathMeta::new(info.store_path.clone());
        for reference in info.reference_paths() {
            if reference == info.store_path {
                meta.self_reference = true;
                continue;
            }
            let cid = known.get(&reference).ok_or_else(|| {
                CacheError::Closure(NixStoreError::MissingReference {
                    path: info.store_path.clone(),
                    reference: reference.clone(),
                })
            })?;
            meta.references.push(Reference {
                path: reference,
                info: *cid,
            });
        }
        meta.signatures = info.sigs.clone();
        meta.deriver = info.deriver_path();
        meta.ca = info.ca.clone();
        meta.expected_nar_hash = Some(info.nar_hash.clone());
        meta.expected_nar_size = Some(info.nar_size);
        let mut stream = self.open_nar(info)?;
        let imported = import_nar(w, &mut stream, meta).map_err(|source| CacheError::Import {
            path: info.store_path.clone(),
            source,
        })?;
        stream.finish()?;
        Ok(imported)
    }

    /// Imports `store_path` and everything it references, dependencies first.
    /// `known` gives the path-info CID of paths already imported (skipped).
    pub fn import_closure<W: BlockWrite>(
        &self,
        w: &mut W,
        store_path: &str,
        mut known: impl FnMut(&str) -> Option<Cid>,
    ) -> Result<Vec<ClosureItem>, CacheError> {
        let mut narinfos: HashMap<String, NarInfo> = HashMap::new();
        let mut queue = VecDeque::from([store_path.to_owned()]);
        let mut skipped: HashMap<String, Cid> = HashMap::new();
        while let Some(path) = queue.pop_front() {
            if narinfos.contains_key(&path) || skipped.contains_key(&path) {
                continue;
            }
            if narinfos.len() + skipped.len() >= MAX_CLOSURE_PATHS {
                return Err(CacheError::ClosureTooLarge(store_path.to_owned()));
            }
            if let Some(cid) = known(&path) {
                skipped.insert(path, cid);
                continue;
            }
            let (_, parsed) = crate::pathinfo::split_store_path(&path)
                .map_err(|_| CacheError::BadHashPart(path.clone()))?;
            let info = self
                .narinfo(parsed.hash_part())?
                .ok_or_else(|| CacheError::NotFound(path.clone()))?;
            if info.store_path != path {
                return Err(CacheError::WrongPath {
                    hash_part: parsed.hash_part().to_owned(),
                    store_path: info.store_path,
                });
            }
            queue.extend(info.reference_paths());
            narinfos.insert(path, info);
        }
        // Already-known paths are outside the set: satisfied.
        let as_nix: Vec<NixPathInfo> = narinfos.values().map(NixPathInfo::from).collect();
        let order = order_within(as_nix)?;
        let mut cids = skipped.clone();
        let mut items: Vec<ClosureItem> = skipped
            .iter()
            .map(|(path, cid)| ClosureItem {
                path: path.clone(),
                pathinfo_cid: *cid,
                imported: None,
            })
            .collect();
        items.sort_by(|a, b| a.path.cmp(&b.path));
        for entry in order {
            let info = &narinfos[&entry.path];
            let imported = self.import(w, info, &cids)?;
            cids.insert(entry.path.clone(), imported.pathinfo_cid);
            items.push(ClosureItem {
                path: entry.path,
                pathinfo_cid: imported.pathinfo_cid,
                imported: Some(imported),
            });
        }
        Ok(items)
    }
}

/// Counts and hashes the compressed bytes.
struct CheckedFile {
    inner: RawStream,
    sha: Sha256,
    count: u64,
}

impl Read for CheckedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

enum Decoder {
    None(CheckedFile),
    Xz(Box<xz2::read::XzDecoder<CheckedFile>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<CheckedFile>>>),
    Bzip2(Box<bzip2::read::MultiBzDecoder<CheckedFile>>),
}

/// A decompressed NAR stream; call [`finish`](Self::finish) after reading it
/// to check the compressed file's size and hash.
pub struct NarStream {
    decoder: Decoder,
    url: String,
    file_hash: Option<NixHash>,
    file_size: Option<u64>,
}

impl Read for NarStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.decoder {
            Decoder::None(r) => r.read(buf),
            Decoder::Xz(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
            Decoder::Bzip2(r) => r.read(buf),
        }
    }
}

impl NarStream {
    /// Reads what is left of the compressed file and checks FileSize and FileHash.
    pub fn finish(self) -> Result<(), CacheError> {
        let mut raw = match self.decoder {
            Decoder::None(r) => r,
            Decoder::Xz(r) => r.into_inner(),
            Decoder::Zstd(r) => r.finish().into_inner(),
            Decoder::Bzip2(r) => r.into_inner(),
        };
        io::copy(&mut raw, &mut io::sink()).map_err(|source| CacheError::Io {
            path: PathBuf::from(&self.url),
            source,
        })?;
        if let Some(expected) = self.file_size {
            if expected != raw.count {
                return Err(CacheError::FileSize {
                    url: self.url,
                    expected,
                    actual: raw.count,
                });
            }
        }
        if let Some(expected) = self.file_hash {
            let actual = NixHash::sha256(raw.sha.finalize().into());
            if actual != expected {
                return Err(CacheError::FileHash {
                    url: self.url,
                    expected: expected.to_nix32(),
                    actual: actual.to_nix32(),
                });
            }
        }
        Ok(())
    }
}
