//! The path-info object: one DAG-CBOR block per Nix store path carrying the
//! Nix metadata (store path, NAR hash and size, references as links to the
//! referenced path-infos, signatures, deriver, CA) plus the root of the git
//! tree DAG and the large-blob map. Field-by-field description: DESIGN.md, "The path-info object".
//! Encoding and decoding share one validation, and decoding also requires the
//! canonical encoding, so one path-info has exactly one CID.

use crate::hash::{HashAlgo, NixHash, StorePath};
use cid::Cid;
use ipld_core::ipld::Ipld;
use ipnix_store::block::{cid_for, DAG_CBOR, DAG_PB, GIT_RAW, MAX_BLOCK_SIZE, RAW, SHA1, SHA2_256};
use std::collections::BTreeMap;

/// The path-info format version this code writes and reads.
pub const PATHINFO_VERSION: u64 = 1;

/// Why a path-info cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathInfoError {
    #[error("path-info is not DAG-CBOR: {0}")]
    Cbor(String),
    #[error("path-info is not a map")]
    NotAMap,
    #[error(
        "path-info version {0} is not supported (this build reads version {PATHINFO_VERSION})"
    )]
    Version(i128),
    #[error("path-info field {field:?}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("path-info has an unknown field {0:?}")]
    UnknownField(String),
    #[error("path-info is not in canonical DAG-CBOR form")]
    NonCanonical,
    #[error("path-info block of {0} bytes is over the block size limit")]
    TooLarge(usize),
}

/// What the root of the store path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RootKind {
    Directory,
    Regular,
    Executable,
    Symlink,
}

impl RootKind {
    pub fn name(self) -> &'static str {
        match self {
            RootKind::Directory => "directory",
            RootKind::Regular => "regular",
            RootKind::Executable => "executable",
            RootKind::Symlink => "symlink",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "directory" => Some(RootKind::Directory),
            "regular" => Some(RootKind::Regular),
            "executable" => Some(RootKind::Executable),
            "symlink" => Some(RootKind::Symlink),
            _ => None,
        }
    }
}

/// The root node: its kind and git-raw CID (a tree for directories, else a blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Root {
    pub kind: RootKind,
    pub cid: Cid,
}

/// A reference to another store path, and the CID of that path's path-info.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// Full store path, e.g. `/nix/store/<hash>-<name>`.
    pub path: String,
    pub info: Cid,
}

/// A file too big for one git-raw block: its git blob CID, the UnixFS file
/// holding its contents (or, for a flat source tarball, the dag-cbor recipe
/// that rebuilds them from a tree: DESIGN.md I-27), and its size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LargeBlob {
    pub git: Cid,
    pub unixfs: Cid,
    pub size: u64,
}

/// One store path's metadata and DAG root (see DESIGN.md, "The path-info object").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    /// Full store path.
    pub store_path: String,
    pub root: Root,
    /// Always SHA-256.
    pub nar_hash: NixHash,
    pub nar_size: u64,
    /// Sorted by path, without the path itself.
    pub references: Vec<Reference>,
    pub self_reference: bool,
    /// `keyname:base64(signature)`, sorted, distinct.
    pub signatures: Vec<String>,
    /// Full store path of the `.drv`.
    pub deriver: Option<String>,
    /// Content address as Nix renders it (`fixed:r:sha256:...`, `text:sha256:...`).
    pub ca: Option<String>,
    /// Sorted by git CID bytes, distinct.
    pub blobs: Vec<LargeBlob>,
}

fn field(field: &'static str, reason: impl Into<String>) -> PathInfoError {
    PathInfoError::Field {
        field,
        reason: reason.into(),
    }
}

/// Splits a full store path into its directory and parsed base name.
pub fn split_store_path(path: &str) -> Result<(&str, StorePath), String> {
    let (dir, base) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("{path:?} is not an absolute path"))?;
    if !dir.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    let parsed = StorePath::from_base_name(base).map_err(|e| e.to_string())?;
    Ok((dir, parsed))
}

impl PathInfo {
    /// The store path, parsed.
    pub fn store_path(&self) -> StorePath {
        split_store_path(&self.store_path)
            .expect("validated when built or decoded")
            .1
    }

    /// The store directory the path lives in.
    pub fn store_dir(&self) -> &str {
        self.store_path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }

    /// All references as full paths, including the path itself when it refers
    /// to itself, sorted (the order Nix signs them in).
    pub fn reference_paths(&self) -> Vec<String> {
        let mut all: Vec<String> = self.references.iter().map(|r| r.path.clone()).collect();
        if self.self_reference {
            all.push(self.store_path.clone());
        }
        all.sort();
        all
    }

    /// Looks up the UnixFS root for a large blob.
    pub fn large_blob(&self, git: &Cid) -> Option<&LargeBlob> {
        self.blobs
            .binary_search_by(|b| b.git.to_bytes().cmp(&git.to_bytes()))
            .ok()
            .map(|i| &self.blobs[i])
    }

    /// Checks every field (the same rules decoding applies).
    pub fn validate(&self) -> Result<(), PathInfoError> {
        let (dir, _) = split_store_path(&self.store_path).map_err(|e| field("storePath", e))?;
        check_git_cid(&self.root.cid).map_err(|e| field("root", e))?;
        if self.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(field("narHash", "NAR hashes are SHA-256"));
        }
        if self.nar_size < 8 || !self.nar_size.is_multiple_of(8) {
            return Err(field(
                "narSize",
                format!("{} is not a possible NAR size", self.nar_size),
            ));
        }
        let mut previous: Option<&str> = None;
        for reference in &self.references {
            let (ref_dir, _) =
                split_store_path(&reference.path).map_err(|e| field("references", e))?;
            if ref_dir != dir {
                return Err(field(
                    "references",
                    format!("{} is not in {dir}", reference.path),
                ));
            }
            if reference.path == self.store_path {
                return Err(field(
                    "references",
                    "a self-reference is the selfReference flag, not a link",
                ));
            }
            if previous.is_some_and(|p| p >= reference.path.as_str()) {
                return Err(field("references", "not sorted by path or duplicated"));
            }
            previous = Some(&reference.path);
            if reference.info.codec() != DAG_CBOR || reference.info.hash().code() != SHA2_256 {
                return Err(field(
                    "references",
                    format!("{} is not a dag-cbor sha2-256 CID", reference.info),
                ));
            }
        }
        for pair in self.signatures.windows(2) {
            if pair[0] >= pair[1] {
                return Err(field("signatures", "not sorted or duplicated"));
            }
        }
        for sig in &self.signatures {
            match sig.split_once(':') {
                Some((name, value)) if !name.is_empty() && !value.is_empty() => {}
                _ => {
                    return Err(field(
                        "signatures",
                        format!("{sig:?} is not `keyname:signature`"),
                    ))
                }
            }
        }
        if let Some(deriver) = &self.deriver {
            let (drv_dir, parsed) = split_store_path(deriver).map_err(|e| field("deriver", e))?;
            if drv_dir != dir || !parsed.name().ends_with(".drv") {
                return Err(field(
                    "deriver",
                    format!("{deriver:?} is not a .drv in {dir}"),
                ));
            }
        }
        if let Some(ca) = &self.ca {
            if !(ca.starts_with("fixed:") || ca.starts_with("text:")) || ca.len() > 1024 {
                return Err(field(
                    "ca",
                    format!("{ca:?} is not a `fixed:` or `text:` content address"),
                ));
            }
        }
        for pair in self.blobs.windows(2) {
            if pair[0].git.to_bytes() >= pair[1].git.to_bytes() {
                return Err(field("blobs", "not sorted by git CID or duplicated"));
            }
        }
        for blob in &self.blobs {
            check_git_cid(&blob.git).map_err(|e| field("blobs", e))?;
            let codec = blob.unixfs.codec();
            // dag-cbor: a tarball recipe that rebuilds the bytes (DESIGN.md I-27).
            if !(codec == DAG_PB || codec == RAW || codec == DAG_CBOR)
                || blob.unixfs.hash().code() != SHA2_256
            {
                return Err(field(
                    "blobs",
                    format!(
                        "{} is not a UnixFS (dag-pb or raw) or recipe (dag-cbor) sha2-256 CID",
                        blob.unixfs
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Encodes as canonical DAG-CBOR.
    pub fn encode(&self) -> Result<Vec<u8>, PathInfoError> {
        self.validate()?;
        let bytes = serde_ipld_dagcbor::to_vec(&self.to_ipld())
            .map_err(|e| PathInfoError::Cbor(e.to_string()))?;
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(PathInfoError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Encodes and returns the block with its CID (dag-cbor, sha2-256).
    pub fn to_block(&self) -> Result<(Cid, Vec<u8>), PathInfoError> {
        let bytes = self.encode()?;
        Ok((cid_for(DAG_CBOR, &bytes), bytes))
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, PathInfoError> {
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(PathInfoError::TooLarge(bytes.len()));
        }
        let ipld: Ipld = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| PathInfoError::Cbor(e.to_string()))?;
        let info = Self::from_ipld(ipld)?;
        info.validate()?;
        let again = serde_ipld_dagcbor::to_vec(&info.to_ipld())
            .map_err(|e| PathInfoError::Cbor(e.to_string()))?;
        if again != bytes {
            return Err(PathInfoError::NonCanonical);
        }
        Ok(info)
    }

    fn to_ipld(&self) -> Ipld {
        let mut map = BTreeMap::new();
        let s = |v: &str| Ipld::String(v.to_owned());
        map.insert("version".into(), Ipld::Integer(PATHINFO_VERSION.into()));
        map.insert("storePath".into(), s(&self.store_path));
        map.insert(
            "root".into(),
            Ipld::Map(BTreeMap::from([
                ("kind".to_owned(), s(self.root.kind.name())),
                ("cid".to_owned(), Ipld::Link(self.root.cid)),
            ])),
        );
        map.insert(
            "narHash".into(),
            Ipld::Map(BTreeMap::from([
                ("algo".to_owned(), s(self.nar_hash.algo().name())),
                (
                    "digest".to_owned(),
                    Ipld::Bytes(self.nar_hash.digest().to_vec()),
                ),
            ])),
        );
        map.insert("narSize".into(), Ipld::Integer(self.nar_size.into()));
        map.insert(
            "references".into(),
            Ipld::List(
                self.references
                    .iter()
                    .map(|r| {
                        Ipld::Map(BTreeMap::from([
                            ("path".to_owned(), s(&r.path)),
                            ("info".to_owned(), Ipld::Link(r.info)),
                        ]))
                    })
                    .collect(),
            ),
        );
        map.insert("selfReference".into(), Ipld::Bool(self.self_reference));
        map.insert(
            "signatures".into(),
            Ipld::List(self.signatures.iter().map(|v| s(v)).collect()),
        );
        if let Some(deriver) = &self.deriver {
            map.insert("deriver".into(), s(deriver));
        }
        if let Some(ca) = &self.ca {
            map.insert("ca".into(), s(ca));
        }
        map.insert(
            "blobs".into(),
            Ipld::List(
                self.blobs
                    .iter()
                    .map(|b| {
                        Ipld::Map(BTreeMap::from([
                            ("git".to_owned(), Ipld::Link(b.git)),
                            ("unixfs".to_owned(), Ipld::Link(b.unixfs)),
                            ("size".to_owned(), Ipld::Integer(b.size.into())),
                        ]))
                    })
                    .collect(),
            ),
        );
        Ipld::Map(map)
    }

    fn from_ipld(ipld: Ipld) -> Result<Self, PathInfoError> {
        let Ipld::Map(mut map) = ipld else {
            return Err(PathInfoError::NotAMap);
        };
        let version = match map.remove("version") {
            Some(Ipld::Integer(v)) => v,
            Some(_) => return Err(field("version", "not an integer")),
            None => return Err(field("version", "missing")),
        };
        if version != i128::from(PATHINFO_VERSION) {
            return Err(PathInfoError::Version(version));
        }
        let store_path = take_string(&mut map, "storePath")?;
        let mut root_map = take_map(&mut map, "root")?;
        let kind_name = take_string(&mut root_map, "kind")
            .map_err(|_| field("root", "kind must be a string"))?;
        let kind = RootKind::from_name(&kind_name)
            .ok_or_else(|| field("root", format!("unknown kind {kind_name:?}")))?;
        let root_cid =
            take_link(&mut root_map, "cid").map_err(|_| field("root", "cid must be a link"))?;
        no_extra(&root_map, "root")?;
        let mut hash_map = take_map(&mut map, "narHash")?;
        let algo = take_string(&mut hash_map, "algo")
            .map_err(|_| field("narHash", "algo must be a string"))?;
        let algo = HashAlgo::from_name(&algo).map_err(|e| field("narHash", e.to_string()))?;
        let digest = match hash_map.remove("digest") {
            Some(Ipld::Bytes(b)) => b,
            _ => return Err(field("narHash", "digest must be bytes")),
        };
        no_extra(&hash_map, "narHash")?;
        let nar_hash = NixHash::new(algo, &digest).ok_or_else(|| {
            field(
                "narHash",
                format!("{} bytes is not a {algo} digest", digest.len()),
            )
        })?;
        let nar_size = take_u64(&mut map, "narSize")?;
        let references = take_list(&mut map, "references")?
            .into_iter()
            .map(|item| {
                let Ipld::Map(mut m) = item else {
                    return Err(field("references", "entry is not a map"));
                };
                let path = take_string(&mut m, "path")
                    .map_err(|_| field("references", "path must be a string"))?;
                let info = take_link(&mut m, "info")
                    .map_err(|_| field("references", "info must be a link"))?;
                no_extra(&m, "references")?;
                Ok(Reference { path, info })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let self_reference = match map.remove("selfReference") {
            Some(Ipld::Bool(b)) => b,
            _ => return Err(field("selfReference", "must be a boolean")),
        };
        let signatures = take_list(&mut map, "signatures")?
            .into_iter()
            .map(|item| match item {
                Ipld::String(s) => Ok(s),
                _ => Err(field("signatures", "entry is not a string")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let deriver = take_optional_string(&mut map, "deriver")?;
        let ca = take_optional_string(&mut map, "ca")?;
        let blobs = take_list(&mut map, "blobs")?
            .into_iter()
            .map(|item| {
                let Ipld::Map(mut m) = item else {
                    return Err(field("blobs", "entry is not a map"));
                };
                let git =
                    take_link(&mut m, "git").map_err(|_| field("blobs", "git must be a link"))?;
                let unixfs = take_link(&mut m, "unixfs")
                    .map_err(|_| field("blobs", "unixfs must be a link"))?;
                let size = take_u64(&mut m, "size")
                    .map_err(|_| field("blobs", "size must be an unsigned integer"))?;
                no_extra(&m, "blobs")?;
                Ok(LargeBlob { git, unixfs, size })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(extra) = map.keys().next() {
            return Err(PathInfoError::UnknownField(extra.clone()));
        }
        Ok(PathInfo {
            store_path,
            root: Root {
                kind,
                cid: root_cid,
            },
            nar_hash,
            nar_size,
            references,
            self_reference,
            signatures,
            deriver,
            ca,
            blobs,
        })
    }
}

fn check_git_cid(cid: &Cid) -> Result<(), String> {
    if cid.codec() == GIT_RAW && cid.hash().code() == SHA1 && cid.hash().size() == 20 {
        Ok(())
    } else {
        Err(format!("{cid} is not a git-raw SHA-1 CID"))
    }
}

type IpldMap = BTreeMap<String, Ipld>;

fn take_string(map: &mut IpldMap, name: &'static str) -> Result<String, PathInfoError> {
    match map.remove(name) {
        Some(Ipld::String(s)) => Ok(s),
        Some(_) => Err(field(name, "must be a string")),
        None => Err(field(name, "missing")),
    }
}

fn take_optional_string(
    map: &mut IpldMap,
    name: &'static str,
) -> Result<Option<String>, PathInfoError> {
    match map.remove(name) {
        Some(Ipld::String(s)) => Ok(Some(s)),
        Some(_) => Err(field(name, "must be a string when present")),
        None => Ok(None),
    }
}

fn take_u64(map: &mut IpldMap, name: &'static str) -> Result<u64, PathInfoError> {
    match map.remove(name) {
        Some(Ipld::Integer(v)) => u64::try_from(v)
            .map_err(|_| field(name, format!("{v} is not an unsigned 64-bit integer"))),
        Some(_) => Err(field(name, "must be an integer")),
        None => Err(field(name, "missing")),
    }
}

fn take_link(map: &mut IpldMap, name: &'static str) -> Result<Cid, PathInfoError> {
    match map.remove(name) {
        Some(Ipld::Link(cid)) => Ok(cid),
        Some(_) => Err(field(name, "must be a link")),
        None => Err(field(name, "missing")),
    }
}

fn take_map(map: &mut IpldMap, name: &'static str) -> Result<IpldMap, PathInfoError> {
    match map.remove(name) {
        Some(Ipld::Map(m)) => Ok(m),
        Some(_) => Err(field(name, "must be a map")),
        None => Err(field(name, "missing")),
    }
}

fn take_list(map: &mut IpldMap, name: &'static str) -> Result<Vec<Ipld>, PathInfoError> {
    match map.remove(name) {
        Some(Ipld::List(l)) => Ok(l),
        Some(_) => Err(field(name, "must be a list")),
        None => Err(field(name, "missing")),
    }
}

fn no_extra(map: &IpldMap, name: &'static str) -> Result<(), PathInfoError> {
    match map.keys().next() {
        Some(extra) => Err(field(name, format!("unknown key {extra:?}"))),
        None => Ok(()),
    }
}
