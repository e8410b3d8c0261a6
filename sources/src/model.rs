//! nixpkgs-swh `sources.json` (version 1) as it is really published: the
//! entries, the expected hash of each in every form Nix writes it, flat or
//! recursive, and the entries ipnix cannot fetch (skipped with a reason).
//!
//! What the published file holds (see `../shared/DESIGN.md`, "Sources, as
//! they are published and fetched"):
//! ```json
//! { "version": 1, "revision": "cc4e04c2…",
//!   "sources": [ { "type": "url", "urls": ["https://…/hello-2.10.tar.gz"],
//!                  "integrity": "sha256-MeBmE3qW…", "outputHashAlgo": "sha256",
//!                  "outputHashMode": "flat", "nixStorePath": "/nix/store/…-hello-2.10.tar.gz" },
//!                { "type": "git", "git_url": "https://…", "git_ref": "…", "integrity": "…" } ] }
//! ```
//!
//! Rules:
//! - The expected hash is `integrity` when present, else `outputHash`. It is
//!   SRI (`sha256-<base64>`), `algo:<digest>`, or a bare digest (hex, nix32 or
//!   base64) whose algorithm is `outputHashAlgo`. When both name an algorithm
//!   they must agree (Nix refuses a hash "of the wrong type" too).
//! - `outputHashMode`: `flat`, absent or `""` is flat; `recursive` is the NAR
//!   hash of the unpacked tree. Anything else is malformed.
//! - Unknown fields are ignored. Entries whose `type` is not `url` (git, hg,
//!   svn, ...) and `url` entries with no `http(s)` URL are [`EntryKind::Skipped`].
//! - Anything else that is wrong (not JSON, not version 1, an entry that is
//!   not an object, a `url` entry whose `urls` are not strings or whose hash
//!   is missing or unreadable) makes the whole file one [`ModelError`]
//!   naming the entry's index: nothing is pinned from a malformed file.
//!
//! Parsing is bounded: files over [`MAX_SOURCES_FILE_BYTES`] and lists over
//! [`MAX_ENTRIES`] are refused, and entries are converted one at a time as
//! the JSON streams past, so only the parsed entries stay in memory.

use ipnix_bridge::hash::{check_name, HashError};
use ipnix_bridge::{ContentAddress, FileIngestion, HashAlgo, NixHash, StorePath};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The only `sources.json` version this model reads.
pub const SOURCES_FILE_VERSION: u64 = 1;
/// Largest `sources.json` accepted (the published unstable list is ~40 MB).
pub const MAX_SOURCES_FILE_BYTES: u64 = 256 << 20;
/// Most entries accepted in one file (the published unstable list has ~37,000).
pub const MAX_ENTRIES: usize = 1_000_000;
/// How many characters of a value an error or a skip detail quotes.
const QUOTE_LIMIT: usize = 120;

/// Why a `sources.json` could not be read. Nothing from such a file is used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error("sources file is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("sources file is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("sources file is a JSON {found}, not an object with `version` and `sources`")]
    NotObject { found: String },
    #[error("sources file has no `version`")]
    MissingVersion,
    #[error("sources file version {found} is not supported (only version {SOURCES_FILE_VERSION})")]
    UnsupportedVersion { found: String },
    #[error("sources file `revision` is not a string")]
    BadRevision,
    #[error("sources file has no `sources` list")]
    MissingSources,
    #[error("sources file `sources` is a JSON {found}, not a list")]
    SourcesNotList { found: String },
    #[error("sources file `{field}` appears twice")]
    DuplicateField { field: &'static str },
    #[error("sources file has more than {max} entries")]
    TooManyEntries { max: usize },
    #[error("sources[{index}]: {reason}")]
    Entry { index: usize, reason: EntryError },
}

impl ModelError {
    /// The index of the entry at fault, when one is.
    pub fn entry_index(&self) -> Option<usize> {
        match self {
            ModelError::Entry { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// What is wrong with one entry of a malformed file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("entry is a JSON {found}, not an object")]
    NotObject { found: &'static str },
    #[error("entry has no `type`")]
    MissingType,
    #[error("`type` is a JSON {found}, not a string")]
    TypeNotString { found: &'static str },
    #[error("`url` entry has no `urls` list")]
    MissingUrls,
    #[error("`urls` is a JSON {found}, not a list")]
    UrlsNotList { found: &'static str },
    #[error("`urls[{position}]` is a JSON {found}, not a string")]
    UrlNotString {
        position: usize,
        found: &'static str,
    },
    #[error("`url` entry has neither `integrity` nor `outputHash`")]
    MissingHash,
    #[error("`{field}` is a JSON {found}, not a string")]
    FieldNotString {
        field: &'static str,
        found: &'static str,
    },
    #[error("`{field}` {text:?} is not a hash: {source}")]
    BadHash {
        field: &'static str,
        text: String,
        source: HashError,
    },
    #[error("`{field}` {text:?} names no algorithm and `outputHashAlgo` is absent")]
    NoAlgo { field: &'static str, text: String },
    #[error("`outputHashAlgo` {text:?} is not a hash algorithm: {source}")]
    BadAlgo { text: String, source: HashError },
    #[error("`{field}` is a {hash_algo} hash but `outputHashAlgo` says {declared}")]
    AlgoConflict {
        field: &'static str,
        hash_algo: HashAlgo,
        declared: HashAlgo,
    },
    #[error("`outputHashMode` {0:?} is not `flat`, `recursive` or empty")]
    BadMode(String),
    #[error("`nixStorePath` {path:?} is not a store path: {reason}")]
    BadStorePath { path: String, reason: String },
}

/// A parsed `sources.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesFile {
    /// Always [`SOURCES_FILE_VERSION`] once parsed.
    pub version: u64,
    /// The nixpkgs commit the list was made from, when the file says.
    pub revision: Option<String>,
    /// Every entry, in file order (skipped ones included).
    pub entries: Vec<Entry>,
}

/// One entry of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the file's `sources` list (0-based).
    pub index: usize,
    pub kind: EntryKind,
}

/// What ipnix can do with an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A download ipnix can fetch and check.
    Url(UrlSource),
    /// An entry ipnix reports and does not fetch.
    Skipped(Skip),
}

/// An entry ipnix does not fetch, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The entry's `type` (`git`, `hg`, `svn`, `url`, ...).
    pub source_type: String,
    pub reason: SkipReason,
    /// Human-readable specifics (the repository, the URLs that were refused).
    pub detail: String,
}

/// Why an entry is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SkipReason {
    /// A `type` other than `url` (git, hg, svn, ...).
    UnsupportedType,
    /// A `url` entry none of whose URLs is `http://` or `https://`.
    UnsupportedScheme,
    /// A `url` entry whose published hash is the empty string (nixpkgs-swh
    /// writes that when it cannot convert a derivation's hash to SRI).
    EmptyHash,
}

impl SkipReason {
    /// The status name `ipnix sources status` reports.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::UnsupportedType | SkipReason::UnsupportedScheme | SkipReason::EmptyHash => {
                "unsupported"
            }
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A source ipnix can fetch: alternative URLs for the same bytes and the hash
/// they must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSource {
    /// The `http://` and `https://` URLs, in file order, duplicates removed;
    /// other schemes are dropped. Never empty.
    pub urls: Vec<String>,
    /// The expected hash (of the file for flat, of the NAR of the unpacked
    /// tree for recursive).
    pub hash: NixHash,
    pub mode: FileIngestion,
    /// `nixStorePath`: the fixed-output path Nix will ask for, when known.
    pub store_path: Option<String>,
    /// The entry has a `postFetch`: the hashed bytes are not the downloaded
    /// ones (fetchpatch, fetchzip), so a flat mismatch is not "upstream changed".
    pub post_fetch: bool,
    /// The entry asks for git submodules (`submodule`).
    pub submodule: bool,
}

impl UrlSource {
    /// The content address Nix gives this source's fixed-output path.
    pub fn content_address(&self) -> ContentAddress {
        ContentAddress::fixed(self.mode, self.hash.clone())
    }

    /// The store-path names Nix would give this source, deduplicated, valid
    /// store names only: the name of `nixStorePath` first when present; then,
    /// for flat, the base name of each URL (nixpkgs' `fetchurl` and
    /// `<nix/fetchurl.nix>` default `name` to `baseNameOf` of the first URL,
    /// which keeps any `?query` — `a.tgz?raw=true` is a valid store name —
    /// and drops one trailing `/`; the list's URLs are already-resolved
    /// mirrors, so each one's base name is a name some derivation may use);
    /// for recursive, `source` (fetchzip / fetchFromGitHub's default).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut push = |name: &str| {
            if check_name(name).is_ok() && !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        };
        if let Some(name) = self.store_path.as_deref().and_then(store_path_name) {
            push(name);
        }
        match self.mode {
            FileIngestion::Flat => {
                for url in &self.urls {
                    push(nix_base_name_of(url));
                }
            }
            FileIngestion::Recursive => push("source"),
        }
        names
    }
}

impl SourcesFile {
    /// Parses a whole `sources.json`. One malformed entry fails the file
    /// with its index; entries ipnix cannot fetch come back as skipped.
    pub fn parse(bytes: &[u8]) -> Result<Self, ModelError> {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > MAX_SOURCES_FILE_BYTES {
            return Err(ModelError::TooLarge {
                size,
                max: MAX_SOURCES_FILE_BYTES,
            });
        }
        let mut outcome = Outcome::default();
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let parsed = FileVisitor {
            outcome: &mut outcome,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end());
        if let Some(err) = outcome.error.take() {
            return Err(err);
        }
        parsed.map_err(ModelError::Json)?;
        let version = match outcome.version {
            None => return Err(ModelError::MissingVersion),
            Some(Value::Number(n)) if n.as_u64() == Some(SOURCES_FILE_VERSION) => {
                SOURCES_FILE_VERSION
            }
            Some(other) => {
                return Err(ModelError::UnsupportedVersion {
                    found: quote(&other.to_string()),
                })
            }
        };
        if let Some(err) = outcome.entry_error {
            return Err(err);
        }
        let entries = outcome.entries.ok_or(ModelError::MissingSources)?;
        Ok(SourcesFile {
            version,
            revision: outcome.revision,
            entries,
        })
    }

    /// The entries ipnix can fetch.
    pub fn url_sources(&self) -> impl Iterator<Item = (usize, &UrlSource)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::Url(source) => Some((e.index, source)),
            EntryKind::Skipped(_) => None,
        })
    }

    /// The entries ipnix skips.
    pub fn skipped(&self) -> impl Iterator<Item = (usize, &Skip)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::Skipped(skip) => Some((e.index, skip)),
            EntryKind::Url(_) => None,
        })
    }
}

/// The name part of `nixStorePath` (any store directory), if it has one.
fn store_path_name(path: &str) -> Option<&str> {
    let base = path.rsplit('/').next()?;
    let (_, name) = base.split_once('-')?;
    Some(name)
}

/// Nix's `baseNameOf` on a string: after the last `/`, ignoring one trailing `/`.
fn nix_base_name_of(text: &str) -> &str {
    if text.is_empty() {
        return "";
    }
    let mut end = text.len();
    if text.ends_with('/') && end > 1 {
        end -= 1;
    }
    let head = &text[..end];
    match head.rfind('/') {
        Some(slash) => &head[slash + 1..],
        None => head,
    }
}

/// `text` cut to [`QUOTE_LIMIT`] characters for messages.
fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

fn is_http_url(url: &str) -> bool {
    let has_scheme = |scheme: &str| {
        url.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
            && url.len() > scheme.len()
    };
    has_scheme("http://") || has_scheme("https://")
}

/// Converts one entry object (already known to be at `index`).
fn convert_entry(value: Value) -> Result<EntryKind, EntryError> {
    let Value::Object(fields) = value else {
        return Err(EntryError::NotObject {
            found: json_type(&value),
        });
    };
    let source_type = match fields.get("type") {
        None => return Err(EntryError::MissingType),
        Some(Value::String(t)) => t.as_str(),
        Some(other) => {
            return Err(EntryError::TypeNotString {
                found: json_type(other),
            })
        }
    };
    if source_type != "url" {
        return Ok(EntryKind::Skipped(skip_other_type(source_type, &fields)));
    }

    let all_urls = match fields.get("urls") {
        None => return Err(EntryError::MissingUrls),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(EntryError::UrlsNotList {
                found: json_type(other),
            })
        }
    };
    let mut urls: Vec<String> = Vec::new();
    for (position, url) in all_urls.iter().enumerate() {
        let Value::String(url) = url else {
            return Err(EntryError::UrlNotString {
                position,
                found: json_type(url),
            });
        };
        if is_http_url(url) && !urls.contains(url) {
            urls.push(url.clone());
        }
    }
    let hash = match expected_hash(&fields) {
        Err(EntryError::MissingHash) if is_empty_string(fields.get("integrity")) => {
            return Ok(EntryKind::Skipped(Skip {
                source_type: source_type.to_owned(),
                reason: SkipReason::EmptyHash,
                detail: "the published hash is empty".to_owned(),
            }));
        }
        other => other?,
    };
    let mode = match optional_string(&fields, "outputHashMode")? {
        None | Some("") | Some("flat") => FileIngestion::Flat,
        Some("recursive") => FileIngestion::Recursive,
        Some(other) => return Err(EntryError::BadMode(quote(other))),
    };
    let store_path = match optional_string(&fields, "nixStorePath")? {
        None | Some("") => None,
        Some(path) => {
            check_store_path(path)?;
            Some(path.to_owned())
        }
    };

    if urls.is_empty() {
        let listed: Vec<String> = all_urls
            .iter()
            .filter_map(Value::as_str)
            .take(3)
            .map(quote)
            .collect();
        let detail = if listed.is_empty() {
            "no URL".to_owned()
        } else {
            format!("no http(s) URL among {}", listed.join(", "))
        };
        return Ok(EntryKind::Skipped(Skip {
            source_type: source_type.to_owned(),
            reason: SkipReason::UnsupportedScheme,
            detail,
        }));
    }

    Ok(EntryKind::Url(UrlSource {
        urls,
        hash,
        mode,
        store_path,
        post_fetch: is_set(fields.get("postFetch")),
        submodule: is_set(fields.get("submodule")),
    }))
}

fn is_empty_string(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::String(s)) if s.is_empty())
}

/// A flag-like field: `true`, or a non-empty string (a `postFetch` script).
fn is_set(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    }
}

fn optional_string<'a>(
    fields: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, EntryError> {
    match fields.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(EntryError::FieldNotString {
            field,
            found: json_type(other),
        }),
    }
}

fn check_store_path(path: &str) -> Result<(), EntryError> {
    let bad = |reason: String| EntryError::BadStorePath {
        path: quote(path),
        reason,
    };
    let (dir, base) = path
        .rsplit_once('/')
        .ok_or_else(|| bad("not an absolute path".into()))?;
    if !dir.starts_with('/') {
        return Err(bad("not an absolute path".into()));
    }
    StorePath::from_base_name(base).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// The expected hash: `integrity`, else `outputHash`, read with `outputHashAlgo`.
fn expected_hash(fields: &Map<String, Value>) -> Result<NixHash, EntryError> {
    let declared = match optional_string(fields, "outputHashAlgo")? {
        None | Some("") => None,
        Some(name) => Some(
            HashAlgo::from_name(name).map_err(|source| EntryError::BadAlgo {
                text: quote(name),
                source,
            })?,
        ),
    };
    let (field, text) = match optional_string(fields, "integrity")? {
        Some(text) if !text.is_empty() => ("integrity", text),
        _ => match optional_string(fields, "outputHash")? {
            Some(text) if !text.is_empty() => ("outputHash", text),
            _ => return Err(EntryError::MissingHash),
        },
    };
    let bad_hash = |source| EntryError::BadHash {
        field,
        text: quote(text),
        source,
    };
    // Base16, nix32 and base64 digests never hold `:` or `-`; SRI and
    // `algo:digest` always do.
    let hash = if text.contains(':') || text.contains('-') {
        let hash = NixHash::parse(text).map_err(bad_hash)?;
        if let Some(declared) = declared.filter(|&d| d != hash.algo()) {
            return Err(EntryError::AlgoConflict {
                field,
                hash_algo: hash.algo(),
                declared,
            });
        }
        hash
    } else {
        let algo = declared.ok_or_else(|| EntryError::NoAlgo {
            field,
            text: quote(text),
        })?;
        NixHash::parse_digest(algo, text).map_err(bad_hash)?
    };
    Ok(hash)
}

fn skip_other_type(source_type: &str, fields: &Map<String, Value>) -> Skip {
    // git entries carry `git_url`/`git_ref`; hg and svn ones similar pairs.
    let prefix = format!("{source_type}_");
    let mut specifics: Vec<String> = fields
        .iter()
        .filter(|(key, _)| key.starts_with(&prefix))
        .filter_map(|(key, value)| value.as_str().map(|v| format!("{key}={}", quote(v))))
        .take(4)
        .collect();
    specifics.sort();
    let detail = if specifics.is_empty() {
        format!("type `{}` is not fetched by ipnix", quote(source_type))
    } else {
        format!(
            "type `{}` is not fetched by ipnix ({})",
            quote(source_type),
            specifics.join(", ")
        )
    };
    Skip {
        source_type: source_type.to_owned(),
        reason: SkipReason::UnsupportedType,
        detail,
    }
}

/// What the streaming parse collected; the first model error stops entry
/// conversion but the JSON is still read to the end, so a wrong `version`
/// anywhere in the object wins over an entry error (a future format's
/// entries are not "malformed version 1 entries").
#[derive(Default)]
struct Outcome {
    version: Option<Value>,
    revision: Option<String>,
    entries: Option<Vec<Entry>>,
    /// A file-level error that ends the parse at once.
    error: Option<ModelError>,
    /// The first malformed entry.
    entry_error: Option<ModelError>,
}

/// Marker serde error: the real error is in [`Outcome::error`].
const ABORTED: &str = "sources file refused";

struct FileVisitor<'o> {
    outcome: &'o mut Outcome,
}

impl<'de> DeserializeSeed<'de> for FileVisitor<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FileVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sources.json object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen_sources = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "version" => {
                    if self.outcome.version.is_some() {
                        return Err(self.abort(ModelError::DuplicateField { field: "version" }));
                    }
                    self.outcome.version = Some(map.next_value::<Value>()?);
                }
                "revision" => match map.next_value::<Value>()? {
                    Value::Null => {}
                    Value::String(revision) => self.outcome.revision = Some(revision),
                    _ => return Err(self.abort(ModelError::BadRevision)),
                },
                "sources" => {
                    if seen_sources {
                        return Err(self.abort(ModelError::DuplicateField { field: "sources" }));
                    }
                    seen_sources = true;
                    map.next_value_seed(EntriesSeed {
                        outcome: &mut *self.outcome,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_object("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_object("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_object("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_object("number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_object("string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.not_object("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.not_object("list"))
    }
}

impl FileVisitor<'_> {
    fn abort<E: de::Error>(self, err: ModelError) -> E {
        self.outcome.error = Some(err);
        E::custom(ABORTED)
    }

    fn not_object<E: de::Error>(self, found: &str) -> E {
        self.abort(ModelError::NotObject {
            found: found.to_owned(),
        })
    }
}

struct EntriesSeed<'o> {
    outcome: &'o mut Outcome,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a `sources` list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut entries = Vec::new();
        let mut index = 0usize;
        loop {
            if index >= MAX_ENTRIES {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                self.outcome.error = Some(ModelError::TooManyEntries { max: MAX_ENTRIES });
                return Err(de::Error::custom(ABORTED));
            }
            if self.outcome.entry_error.is_some() {
                // Read on (cheaply) so a bad `version` later still wins.
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
            } else {
                let Some(value) = seq.next_element::<Value>()? else {
                    break;
                };
                match convert_entry(value) {
                    Ok(kind) => entries.push(Entry { index, kind }),
                    Err(reason) => {
                        self.outcome.entry_error = Some(ModelError::Entry { index, reason });
                    }
                }
            }
            index += 1;
        }
        self.outcome.entries = Some(entries);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.not_list("object"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(self.not_list("boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(self.not_list("number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(self.not_list("number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(self.not_list("number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(self.not_list("string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(self.not_list("null"))
    }
}

impl EntriesSeed<'_> {
    fn not_list<E: de::Error>(self, found: &str) -> E {
        self.outcome.error = Some(ModelError::SourcesNotList {
            found: found.to_owned(),
        });
        E::custom(ABORTED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_name_matches_nix_base_name_of() {
        // `nix-instantiate --eval -E 'baseNameOf "…"'` with Nix 2.8.
        for (url, name) in [
            ("https://x/a.tar.gz?raw=true", "a.tar.gz?raw=true"),
            ("https://x/dir/", "dir"),
            ("https://x/a%20b.tgz", "a%20b.tgz"),
            ("https://example.com", "example.com"),
            ("https://x/a.tgz#frag", "a.tgz#frag"),
            ("", ""),
            ("/", ""),
        ] {
            assert_eq!(nix_base_name_of(url), name, "{url}");
        }
    }

    #[test]
    fn quote_cuts_long_text() {
        let long = "é".repeat(500);
        let quoted = quote(&long);
        assert_eq!(quoted.chars().count(), QUOTE_LIMIT + 1);
        assert_eq!(quote("short"), "short");
    }
}
