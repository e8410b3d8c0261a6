//! Software Heritage (SWH) as the last place a source comes back from: the
//! Web API client ([`SwhClient`]) and the recovery of one source by its hash
//! ([`SwhClient::recover`]), used when the local store, the peers and every
//! recorded URL failed. The API's shapes are in `../shared/SWH-API.md`.
//!
//! What comes back how:
//! - a flat single file: `GET /api/1/content/sha256:<hex>/raw/` (or, for
//!   another algorithm, the ExtID `checksum-<algo>` naming a `swh:1:cnt:`),
//!   streamed into the caller's hashing sink, which checks the declared hash;
//! - a recursive source: the ExtID `nar-<algo>` names a `swh:1:dir:`; the
//!   vault cooks it (one `POST` per directory at most, then polite `GET`
//!   polls), the bundle (a tar.gz under one `swh:1:dir:<hex>` folder) is
//!   fetched, that folder checked and stripped, the rest unpacked with
//!   [`crate::unpack`]'s safety checks; the caller imports it through the
//!   pinner's import, which checks the NAR hash before anything commits;
//! - a flat tarball: the ExtID `checksum-<algo>` names the unpacked
//!   directory; cooked as above, then the exact tarball is rebuilt from it
//!   by [`rebuild_flat_tarball`] (its recipe), or it is reported as
//!   archived unpacked (a tree, not these bytes).
//!
//! Politeness: every answer's `X-RateLimit-Remaining`/`-Reset` is read and,
//! once nothing remains, requests wait for the reset (a 429 carries no
//! `Retry-After`; one that does is honoured); at most
//! [`DEFAULT_CONCURRENCY`] requests are in flight per client; redirects are
//! followed by hand and the bearer token goes only to the configured
//! origin, never to the host a bundle redirects to.
//!
//! # Threads
//!
//! Blocking (`reqwest::blocking`), like [`crate::fetch`]: create, use and
//! drop a [`SwhClient`] only on threads that may block (plain threads or
//! tokio's `spawn_blocking`), never on an async executor thread.

use crate::fetch::Sink;
use crate::unpack::{self, UnpackLimits};
use ipnix_bridge::{FileIngestion, HashAlgo, NixHash};
use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The public archive's API.
pub const DEFAULT_URL: &str = "https://archive.softwareheritage.org";
/// Most SWHIDs one `POST /api/1/known/` may carry.
pub const KNOWN_BATCH: usize = 1000;
/// Requests in flight per client, by default.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Largest cooked bundle accepted (the vault refuses above 512 MiB anyway).
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 1 << 30;
/// Largest single content accepted, by default.
pub const DEFAULT_MAX_CONTENT_BYTES: u64 = 8 << 30;
/// Longest wait for the rate limit to reset before a request gives up.
pub const DEFAULT_MAX_RATE_WAIT: Duration = Duration::from_secs(15 * 60);
/// Redirect hops followed from one request.
const MAX_REDIRECTS: u32 = 5;
/// 429s retried for one request (each waits for the reset).
const MAX_THROTTLED: u32 = 5;
/// Bytes per read from the network.
const CHUNK: usize = 64 * 1024;
/// Largest JSON answer read.
const MAX_JSON_BYTES: u64 = 64 << 20;

/// Why an SWH request or a recovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwhError {
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("SWH token file {path}: {source}", path = .path.display())]
    TokenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("SWH token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("bad SWH API URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Software Heritage does not have {0}")]
    NotFound(String),
    #[error("{url}: SWH answered {status}: {exception}: {reason}")]
    Api {
        url: String,
        status: u16,
        exception: String,
        reason: String,
    },
    #[error("SWH rate limit: the next request is allowed in {wait_secs} s, longer than the {max_secs} s this waits")]
    RateLimited { wait_secs: u64, max_secs: u64 },
    #[error("SWH vault could not cook {swhid}: {message}")]
    CookFailed { swhid: String, message: String },
    #[error("SWH vault did not finish cooking {swhid} within {secs} s")]
    CookTimeout { swhid: String, secs: u64 },
    #[error("{url}: more than the {max} byte cap")]
    TooLarge { url: String, max: u64 },
    #[error("redirect from {from} refused: {reason}")]
    Redirect { from: String, reason: String },
    #[error("{url}: the body is not the expected JSON: {reason}")]
    Malformed { url: String, reason: String },
    #[error("content sha256:{expected} from SWH hashed to sha256:{got}")]
    ContentMismatch { expected: String, got: String },
    #[error("cooked bundle of {swhid}: {reason}")]
    Bundle { swhid: String, reason: String },
    #[error("unpacking the bundle of {swhid}: {source}")]
    Unpack {
        swhid: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl SwhError {
    /// The entry status reason this failure shows as.
    pub fn reason(&self) -> &'static str {
        match self {
            SwhError::NotFound(_) => "not-found",
            SwhError::RateLimited { .. } => "swh-rate-limited",
            SwhError::CookFailed { .. } | SwhError::CookTimeout { .. } => "swh-cook-failed",
            SwhError::TooLarge { .. } => "too-large",
            SwhError::ContentMismatch { .. } => "hash-mismatch",
            SwhError::Unpack { source, .. } => source.reason(),
            SwhError::Bundle { .. } => "unsafe-archive",
            SwhError::Io { .. } | SwhError::TokenFile { .. } | SwhError::EmptyToken(_) => "io",
            _ => "swh-error",
        }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> SwhError {
        let what = what.into();
        move |source| SwhError::Io { what, source }
    }
}

/// How a [`SwhClient`] talks to the archive. [`SwhConfig::new`] and the
/// `with_*` setters.
#[derive(Clone)]
pub struct SwhConfig {
    base_url: String,
    token: Option<String>,
    concurrency: usize,
    poll_interval: Duration,
    max_poll_interval: Duration,
    cook_timeout: Duration,
    max_bundle_bytes: u64,
    max_content_bytes: u64,
    max_rate_wait: Duration,
    connect_timeout: Duration,
    stall_timeout: Duration,
    unpack: UnpackLimits,
}

impl std::fmt::Debug for SwhConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwhConfig")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("concurrency", &self.concurrency)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Default for SwhConfig {
    fn default() -> Self {
        SwhConfig::new(DEFAULT_URL)
    }
}

impl SwhConfig {
    /// The API at `base_url` (scheme, host and port; a path prefix is kept).
    pub fn new(base_url: impl Into<String>) -> Self {
        SwhConfig {
            base_url: base_url.into(),
            token: None,
            concurrency: DEFAULT_CONCURRENCY,
            poll_interval: Duration::from_secs(5),
            max_poll_interval: Duration::from_secs(60),
            cook_timeout: Duration::from_secs(2 * 3600),
            max_bundle_bytes: DEFAULT_MAX_BUNDLE_BYTES,
            max_content_bytes: DEFAULT_MAX_CONTENT_BYTES,
            max_rate_wait: DEFAULT_MAX_RATE_WAIT,
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(120),
            unpack: UnpackLimits::default(),
        }
    }

    /// Sends `Authorization: Bearer <token>` (to the API origin only).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Reads the bearer token from a file (surrounding whitespace dropped).
    pub fn with_token_file(self, path: &Path) -> Result<Self, SwhError> {
        let text = std::fs::read_to_string(path).map_err(|source| SwhError::TokenFile {
            path: path.to_owned(),
            source,
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(SwhError::EmptyToken(path.to_owned()));
        }
        Ok(self.with_token(token))
    }

    /// Requests in flight at most (0 is taken as 1).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// First wait between cooking polls; it grows by half each poll up to
    /// `max` (defaults 5 s and 60 s: the vault allows 60 GETs a minute).
    pub fn with_poll_interval(mut self, first: Duration, max: Duration) -> Self {
        self.poll_interval = first;
        self.max_poll_interval = max.max(first);
        self
    }

    /// Longest a cooking may take before the recovery gives up.
    pub fn with_cook_timeout(mut self, timeout: Duration) -> Self {
        self.cook_timeout = timeout;
        self
    }

    /// Caps of one bundle and one content.
    pub fn with_max_bytes(mut self, bundle: u64, content: u64) -> Self {
        self.max_bundle_bytes = bundle;
        self.max_content_bytes = content;
        self
    }

    /// Longest wait for a rate-limit reset before failing the request.
    pub fn with_max_rate_wait(mut self, wait: Duration) -> Self {
        self.max_rate_wait = wait;
        self
    }

    /// Limits for unpacking bundles.
    pub fn with_unpack_limits(mut self, limits: UnpackLimits) -> Self {
        self.unpack = limits;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// What the rate-limit headers said last.
#[derive(Debug, Default)]
struct RateState {
    remaining: Option<u64>,
    reset: u64,
}

/// A counting semaphore for requests in flight.
#[derive(Debug)]
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

/// A response with the request slot it holds while its body is read.
struct Held<'a> {
    response: Response,
    url: Url,
    _slot: Slot<'a>,
}

/// The Software Heritage Web API client. Cheap to clone; clones share the
/// connection pool, the request slots, the rate-limit state and the
/// per-directory cooking locks. See the module docs for threads.
#[derive(Clone)]
pub struct SwhClient {
    client: Client,
    base: Url,
    config: Arc<SwhConfig>,
    slots: Arc<Slots>,
    rate: Arc<Mutex<RateState>>,
    /// One cooking at a time per directory (its lock is held while it cooks).
    cooking: Arc<Mutex<HashMap<String, Arc<Mutex<()>>>>>,
}

impl std::fmt::Debug for SwhClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwhClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a recovery got.
#[derive(Debug)]
#[non_exhaustive]
pub enum Recovered {
    /// A flat source's bytes are in the sink; the SWHID they came from
    /// (`None` when asked by SHA-256, which names the content itself).
    File { swhid: Option<String> },
    /// A recursive source's tree (to import and check); keep `_work` alive.
    Tree {
        swhid: String,
        root: PathBuf,
        work: tempfile::TempDir,
    },
    /// A flat tarball SWH holds only unpacked, and no recipe here rebuilds it.
    ArchivedUnpacked { swhid: String },
}

impl SwhClient {
    /// Builds the client. Call only where blocking is allowed.
    pub fn new(config: SwhConfig) -> Result<Self, SwhError> {
        let mut base = Url::parse(&config.base_url).map_err(|e| SwhError::BadUrl {
            url: config.base_url.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(SwhError::BadUrl {
                url: config.base_url.clone(),
                reason: "an http(s) URL with a host".into(),
            });
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let client = Client::builder()
            .use_rustls_tls()
            .tls_built_in_webpki_certs(true)
            .tls_built_in_native_certs(true)
            .user_agent(concat!("ipnix/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .connect_timeout(config.connect_timeout)
            .timeout(config.stall_timeout)
            .pool_max_idle_per_host(config.concurrency)
            .build()
            .map_err(SwhError::Client)?;
        Ok(SwhClient {
            client,
            base,
            slots: Arc::new(Slots {
                free: Mutex::new(config.concurrency.max(1)),
                freed: Condvar::new(),
            }),
            config: Arc::new(config),
            rate: Arc::default(),
            cooking: Arc::default(),
        })
    }

    pub fn config(&self) -> &SwhConfig {
        &self.config
    }

    fn api_url(&self, rest: &str) -> Result<Url, SwhError> {
        self.base
            .join(&format!("api/1/{rest}"))
            .map_err(|e| SwhError::BadUrl {
                url: rest.to_owned(),
                reason: e.to_string(),
            })
    }

    fn same_origin(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// Waits while the last answer said nothing remains until the reset.
    fn wait_for_rate(&self) -> Result<(), SwhError> {
        let wait = {
            let rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
            match rate.remaining {
                Some(0) => rate.reset.saturating_sub(unix_now()),
                _ => 0,
            }
        };
        if wait == 0 {
            return Ok(());
        }
        self.sleep_for_rate(Duration::from_secs(wait))
    }

    fn sleep_for_rate(&self, wait: Duration) -> Result<(), SwhError> {
        if wait > self.config.max_rate_wait {
            return Err(SwhError::RateLimited {
                wait_secs: wait.as_secs(),
                max_secs: self.config.max_rate_wait.as_secs(),
            });
        }
        tracing::info!("SWH rate limit reached: waiting {wait:?} for the reset");
        std::thread::sleep(wait);
        let mut rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
        if rate.reset <= unix_now() {
            rate.remaining = None;
        }
        Ok(())
    }

    fn note_rate(&self, headers: &HeaderMap) {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(remaining) = number("x-ratelimit-remaining") {
            let mut rate = self.rate.lock().unwrap_or_else(PoisonError::into_inner);
            rate.remaining = Some(remaining);
            rate.reset = number("x-ratelimit-reset").unwrap_or_else(|| unix_now() + 1);
        }
    }

    /// Sends one request, follows redirects by hand (the token only to the
    /// API's origin), waits out the rate limit, and returns a success or
    /// 404 answer (anything else is an error).
    fn send(&self, method: Method, start: Url, body: Option<&[u8]>) -> Result<Held<'_>, SwhError> {
        let mut url = start;
        let mut hops = 0u32;
        let mut throttled = 0u32;
        loop {
            self.wait_for_rate()?;
            let slot = self.slots.acquire();
            let mut request = self.client.request(method.clone(), url.clone());
            if let Some(token) = self
                .config
                .token
                .as_deref()
                .filter(|_| self.same_origin(&url))
            {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            if let Some(body) = body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec());
            }
            let response = request.send().map_err(|source| SwhError::Request {
                url: url.to_string(),
                source,
            })?;
            if self.same_origin(&url) {
                self.note_rate(response.headers());
            }
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS {
                drop(slot);
                throttled += 1;
                let retry_after = response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let reset = self
                    .rate
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .reset;
                let wait = retry_after
                    .unwrap_or_else(|| reset.saturating_sub(unix_now()))
                    .max(1);
                if throttled > MAX_THROTTLED {
                    return Err(api_error(&url, response));
                }
                self.sleep_for_rate(Duration::from_secs(wait))?;
                continue;
            }
            if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                let location = response
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                drop(response);
                drop(slot);
                let refuse = |reason: String| SwhError::Redirect {
                    from: url.to_string(),
                    reason,
                };
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(refuse(format!("more than {MAX_REDIRECTS} redirects")));
                }
                if method == Method::POST && !matches!(status.as_u16(), 307 | 308) {
                    return Err(refuse(format!(
                        "{status} would turn the POST into a GET (is the trailing slash missing?)"
                    )));
                }
                let location = location.ok_or_else(|| refuse("no Location".into()))?;
                let next = url
                    .join(&location)
                    .map_err(|e| refuse(format!("bad Location {location:?}: {e}")))?;
                match (url.scheme(), next.scheme()) {
                    ("https", "http") => return Err(refuse("https to plain http".into())),
                    (_, "http" | "https") => {}
                    (_, other) => return Err(refuse(format!("scheme {other:?}"))),
                }
                url = next;
                continue;
            }
            if status.is_success() || status == StatusCode::NOT_FOUND {
                return Ok(Held {
                    response,
                    url,
                    _slot: slot,
                });
            }
            return Err(api_error(&url, response));
        }
    }

    /// GET or POST with a JSON answer; `Ok(None)` on 404.
    fn json(
        &self,
        method: Method,
        url: Url,
        body: Option<&[u8]>,
    ) -> Result<Option<serde_json::Value>, SwhError> {
        let held = self.send(method, url, body)?;
        if held.response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let url = held.url.to_string();
        let mut bytes = Vec::new();
        held.response
            .take(MAX_JSON_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(SwhError::io(format!("reading {url}")))?;
        if bytes.len() as u64 > MAX_JSON_BYTES {
            return Err(SwhError::TooLarge {
                url,
                max: MAX_JSON_BYTES,
            });
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| SwhError::Malformed {
                url,
                reason: e.to_string(),
            })
    }

    /// Streams a body into `sink` with a cap; bytes written.
    fn download(&self, url: Url, sink: &mut dyn Write, max: u64) -> Result<Option<u64>, SwhError> {
        let held = self.send(Method::GET, url, None)?;
        let url = held.url.to_string();
        if held.response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if held.response.content_length().is_some_and(|n| n > max) {
            return Err(SwhError::TooLarge { url, max });
        }
        let mut response = held.response;
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = match response.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(SwhError::io(format!("reading {url}"))(e)),
            };
            total += n as u64;
            if total > max {
                return Err(SwhError::TooLarge { url, max });
            }
            sink.write_all(&buf[..n])
                .map_err(SwhError::io("writing the download"))?;
        }
        Ok(Some(total))
    }

    /// A content's bytes by its SHA-256, checked against it, into `sink`.
    /// `Ok(None)`: SWH does not have it.
    pub fn content_by_sha256(
        &self,
        sha256: &[u8],
        sink: &mut dyn Write,
    ) -> Result<Option<u64>, SwhError> {
        let hex = hex::encode(sha256);
        let url = self.api_url(&format!("content/sha256:{hex}/raw/"))?;
        let mut hashing = Sha256Writer {
            inner: sink,
            hasher: Sha256::new(),
        };
        let Some(n) = self.download(url, &mut hashing, self.config.max_content_bytes)? else {
            return Ok(None);
        };
        let got = hex::encode(hashing.hasher.finalize());
        if got != hex {
            return Err(SwhError::ContentMismatch { expected: hex, got });
        }
        Ok(Some(n))
    }

    /// A content's bytes by its `swh:1:cnt:` (its git blob id) into `sink`;
    /// the caller checks them against the hash it wants.
    pub fn content_by_swhid(
        &self,
        swhid: &str,
        sink: &mut dyn Write,
    ) -> Result<Option<u64>, SwhError> {
        let id = swhid_id(swhid, "cnt")?;
        let url = self.api_url(&format!("content/sha1_git:{id}/raw/"))?;
        self.download(url, sink, self.config.max_content_bytes)
    }

    /// The SWHID an ExtID (`checksum-sha256`, `nar-sha256`, ...; version 1)
    /// names, if any.
    pub fn extid(&self, extid_type: &str, digest: &[u8]) -> Result<Option<String>, SwhError> {
        let url = self.api_url(&format!(
            "extid/{extid_type}/hex:{}/?extid_version=1",
            hex::encode(digest)
        ))?;
        let Some(answer) = self.json(Method::GET, url.clone(), None)? else {
            return Ok(None);
        };
        let target = answer
            .get("target")
            .and_then(|t| t.as_str())
            .filter(|t| parse_core_swhid(t).is_some())
            .ok_or_else(|| SwhError::Malformed {
                url: url.to_string(),
                reason: "no valid `target` SWHID".into(),
            })?;
        Ok(Some(target.to_owned()))
    }

    /// Which of `swhids` the archive has, asked in batches of at most
    /// [`KNOWN_BATCH`]; `requests` counts the batches sent.
    pub fn known(&self, swhids: &[String]) -> Result<HashMap<String, bool>, SwhError> {
        let mut out = HashMap::with_capacity(swhids.len());
        for batch in swhids.chunks(KNOWN_BATCH) {
            let url = self.api_url("known/")?;
            let body = serde_json::to_vec(batch).expect("strings encode as JSON");
            let answer = self
                .json(Method::POST, url.clone(), Some(&body))?
                .ok_or_else(|| SwhError::NotFound("the known endpoint".into()))?;
            let map = answer.as_object().ok_or_else(|| SwhError::Malformed {
                url: url.to_string(),
                reason: "not an object".into(),
            })?;
            for swhid in batch {
                let known = map
                    .get(swhid)
                    .and_then(|v| v.get("known"))
                    .and_then(|k| k.as_bool())
                    .unwrap_or(false);
                out.insert(swhid.clone(), known);
            }
        }
        Ok(out)
    }

    /// Has the vault cook directory `swhid` (at most one `POST`, and only
    /// one cooking per directory across this client's threads), polls
    /// politely until it is done, and writes the bundle to `dest`.
    pub fn cook_directory(&self, swhid: &str, dest: &Path) -> Result<u64, SwhError> {
        swhid_id(swhid, "dir")?;
        let lock = {
            let mut cooking = self.cooking.lock().unwrap_or_else(PoisonError::into_inner);
            cooking.entry(swhid.to_owned()).or_default().clone()
        };
        let result = {
            let _cooking = lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.cook_locked(swhid, dest)
        };
        let mut cooking = self.cooking.lock().unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&lock) <= 2 {
            cooking.remove(swhid);
        }
        result
    }

    fn cook_locked(&self, swhid: &str, dest: &Path) -> Result<u64, SwhError> {
        let url = self.api_url(&format!("vault/flat/{swhid}/"))?;
        let started = std::time::Instant::now();
        let mut posted = false;
        let mut interval = self.config.poll_interval;
        let mut answer = self.json(Method::GET, url.clone(), None)?;
        loop {
            let status = answer
                .as_ref()
                .and_then(|a| a.get("status"))
                .and_then(|s| s.as_str())
                .map(str::to_owned);
            match status.as_deref() {
                None | Some("failed") if !posted => {
                    posted = true;
                    answer = self.json(Method::POST, url.clone(), None)?;
                    if answer.is_none() {
                        return Err(SwhError::NotFound(swhid.to_owned()));
                    }
                    continue;
                }
                None => return Err(SwhError::NotFound(swhid.to_owned())),
                Some("done") => break,
                Some("failed") => {
                    let message = answer
                        .as_ref()
                        .and_then(|a| a.get("progress_message"))
                        .and_then(|m| m.as_str())
                        .unwrap_or("no message")
                        .to_owned();
                    return Err(SwhError::CookFailed {
                        swhid: swhid.to_owned(),
                        message,
                    });
                }
                Some(_) => {}
            }
            if started.elapsed() > self.config.cook_timeout {
                return Err(SwhError::CookTimeout {
                    swhid: swhid.to_owned(),
                    secs: self.config.cook_timeout.as_secs(),
                });
            }
            std::thread::sleep(interval);
            interval = interval.mul_f64(1.5).min(self.config.max_poll_interval);
            answer = self.json(Method::GET, url.clone(), None)?;
        }
        let fetch_url = answer
            .as_ref()
            .and_then(|a| a.get("fetch_url"))
            .and_then(|u| u.as_str())
            .map(|u| url.join(u))
            .transpose()
            .map_err(|e| SwhError::Malformed {
                url: url.to_string(),
                reason: format!("fetch_url: {e}"),
            })?
            .unwrap_or(self.api_url(&format!("vault/flat/{swhid}/raw/"))?);
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(dest).map_err(SwhError::io(format!("{}", dest.display())))?,
        );
        let n = self
            .download(fetch_url, &mut file, self.config.max_bundle_bytes)?
            .ok_or_else(|| SwhError::NotFound(format!("the cooked bundle of {swhid}")))?;
        file.flush()
            .map_err(SwhError::io(format!("{}", dest.display())))?;
        Ok(n)
    }

    /// Cooks directory `swhid`, unpacks its bundle under `work` with the
    /// unpacker's safety checks, and returns the directory itself (the
    /// bundle's `swh:1:dir:<hex>` folder, checked by name and stripped).
    pub fn fetch_directory(&self, swhid: &str, work: &Path) -> Result<PathBuf, SwhError> {
        let bundle = work.join("bundle.tar.gz");
        self.cook_directory(swhid, &bundle)?;
        let dest = work.join("bundle");
        let unpacked = unpack::unpack(&bundle, &dest, &self.config.unpack).map_err(|source| {
            SwhError::Unpack {
                swhid: swhid.to_owned(),
                source,
            }
        })?;
        let _ = std::fs::remove_file(&bundle);
        let top = unpacked.root.file_name().and_then(|n| n.to_str());
        if unpacked.root == dest || top != Some(swhid) {
            return Err(SwhError::Bundle {
                swhid: swhid.to_owned(),
                reason: format!(
                    "its entries are not all under one `{swhid}` folder (found {:?})",
                    top.unwrap_or("several")
                ),
            });
        }
        Ok(unpacked.root)
    }

    /// Gets a source back by its declared hash: a flat file's bytes into
    /// `sink` (the caller checks the declared hash), a recursive source's
    /// tree under a fresh directory in `work_dir` (the caller imports it and
    /// checks the NAR hash before anything commits). A flat tarball SWH
    /// holds only unpacked is rebuilt by [`rebuild_flat_tarball`] when its
    /// recipe is known in `store`, else reported as archived unpacked.
    pub fn recover(
        &self,
        store: &ipnix_store::Store,
        mode: FileIngestion,
        hash: &NixHash,
        work_dir: &Path,
        sink: &mut dyn Sink,
    ) -> Result<Recovered, SwhError> {
        match mode {
            FileIngestion::Flat => self.recover_flat(store, hash, work_dir, sink),
            FileIngestion::Recursive => self.recover_tree(hash, work_dir),
        }
    }

    fn recover_flat(
        &self,
        store: &ipnix_store::Store,
        hash: &NixHash,
        work_dir: &Path,
        sink: &mut dyn Sink,
    ) -> Result<Recovered, SwhError> {
        if hash.algo() == HashAlgo::Sha256 {
            if sink.written() > 0 {
                sink.reset()
                    .map_err(SwhError::io("resetting the download"))?;
            }
            if self.content_by_sha256(hash.digest(), sink)?.is_some() {
                return Ok(Recovered::File { swhid: None });
            }
        }
        let extid_type = format!("checksum-{}", hash.algo().name());
        let target = self
            .extid(&extid_type, hash.digest())?
            .ok_or_else(|| SwhError::NotFound(hash.to_sri()))?;
        if target.starts_with("swh:1:cnt:") {
            if sink.written() > 0 {
                sink.reset()
                    .map_err(SwhError::io("resetting the download"))?;
            }
            self.content_by_swhid(&target, sink)?
                .ok_or_else(|| SwhError::NotFound(target.clone()))?;
            return Ok(Recovered::File {
                swhid: Some(target),
            });
        }
        if !target.starts_with("swh:1:dir:") {
            return Err(SwhError::NotFound(format!(
                "{} (its ExtID names {target}, not a content or directory)",
                hash.to_sri()
            )));
        }
        if !has_recipe(store, hash) {
            return Ok(Recovered::ArchivedUnpacked { swhid: target });
        }
        let work = tempdir_in(work_dir)?;
        let tree = self.fetch_directory(&target, work.path())?;
        if sink.written() > 0 {
            sink.reset()
                .map_err(SwhError::io("resetting the download"))?;
        }
        match rebuild_flat_tarball(store, hash, &tree, sink) {
            Ok(true) => Ok(Recovered::File {
                swhid: Some(target),
            }),
            Ok(false) => Ok(Recovered::ArchivedUnpacked { swhid: target }),
            Err(reason) => Err(SwhError::Bundle {
                swhid: target,
                reason: format!("rebuilding the tarball from its recipe: {reason}"),
            }),
        }
    }

    fn recover_tree(&self, hash: &NixHash, work_dir: &Path) -> Result<Recovered, SwhError> {
        let extid_type = format!("nar-{}", hash.algo().name());
        let target = self
            .extid(&extid_type, hash.digest())?
            .ok_or_else(|| SwhError::NotFound(hash.to_sri()))?;
        if !target.starts_with("swh:1:dir:") {
            return Err(SwhError::NotFound(format!(
                "{} (its ExtID names {target}, not a directory)",
                hash.to_sri()
            )));
        }
        let work = tempdir_in(work_dir)?;
        let dir = self.fetch_directory(&target, work.path())?;
        let root = nar_root(&dir, hash);
        Ok(Recovered::Tree {
            swhid: target,
            root,
            work,
        })
    }
}

/// Which tree a `nar-*` ExtID's directory stands for: itself when its NAR
/// hash is `hash`, else its single top-level folder (Nix strips one, SWH
/// keeps it); the caller's import checks the hash either way.
fn nar_root(dir: &Path, hash: &NixHash) -> PathBuf {
    if crate::pin::nar_hash_of(dir, hash.algo()).is_ok_and(|got| &got == hash) {
        return dir.to_owned();
    }
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(_) => return dir.to_owned(),
    };
    match (entries.next(), entries.next()) {
        (Some(Ok(only)), None) if only.file_type().is_ok_and(|t| t.is_dir()) => only.path(),
        _ => dir.to_owned(),
    }
}

/// Whether a recipe to rebuild the flat tarball `hash` from its unpacked
/// tree is known in `store` ([`crate::recipe::lookup`], by flat hash).
pub fn has_recipe(store: &ipnix_store::Store, hash: &NixHash) -> bool {
    matches!(crate::recipe::lookup(store, hash), Ok(Some(_)))
}

/// Rebuilds the exact flat tarball `hash` from its unpacked tree `tree`
/// (the cooked directory, its top-level folder kept, as the recipe's tree
/// is) with the recipe stored for `hash`, writing the bytes into `sink`;
/// the caller checks the hash too. The tree is imported first (unpinned:
/// the same git ids give the same CIDs the recipe links), so the recipe
/// finds its files. `Ok(false)`: no recipe is known.
pub fn rebuild_flat_tarball(
    store: &ipnix_store::Store,
    hash: &NixHash,
    tree: &Path,
    sink: &mut dyn Write,
) -> Result<bool, String> {
    let Some(recipe) = crate::recipe::lookup(store, hash).map_err(|e| e.to_string())? else {
        return Ok(false);
    };
    let mut session = store.session();
    crate::pin::import_tree(&mut session, tree)?;
    session.finish(None).map_err(|e| e.to_string())?;
    crate::recipe::reassemble(store, &recipe, sink).map_err(|e| e.to_string())?;
    Ok(true)
}

fn tempdir_in(dir: &Path) -> Result<tempfile::TempDir, SwhError> {
    std::fs::create_dir_all(dir).map_err(SwhError::io(format!("{}", dir.display())))?;
    tempfile::Builder::new()
        .prefix("swh-")
        .tempdir_in(dir)
        .map_err(SwhError::io(format!("work directory in {}", dir.display())))
}

/// `(kind, hex id)` of a core SWHID (`swh:1:<cnt|dir|rev|rel|snp>:<40 hex>`).
pub fn parse_core_swhid(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("swh:1:")?;
    let (kind, id) = rest.split_once(':')?;
    let ok = matches!(kind, "cnt" | "dir" | "rev" | "rel" | "snp")
        && id.len() == 40
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some((kind, id))
}

fn swhid_id<'a>(swhid: &'a str, kind: &str) -> Result<&'a str, SwhError> {
    match parse_core_swhid(swhid) {
        Some((k, id)) if k == kind => Ok(id),
        _ => Err(SwhError::BadUrl {
            url: swhid.to_owned(),
            reason: format!("not a swh:1:{kind}: SWHID"),
        }),
    }
}

fn api_error(url: &Url, response: Response) -> SwhError {
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    let _ = response.take(64 * 1024).read_to_end(&mut bytes);
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    SwhError::Api {
        url: url.to_string(),
        status,
        exception: field("exception").unwrap_or_else(|| "HTTP error".into()),
        reason: field("reason").unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().into()),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Sha256Writer<'a> {
    inner: &'a mut dyn Write,
    hasher: Sha256,
}

impl Write for Sha256Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_swhids_parse_strictly() {
        let id = "94a9ed024d3859793618152ea559a168bbcbb5e2";
        assert_eq!(
            parse_core_swhid(&format!("swh:1:cnt:{id}")),
            Some(("cnt", id))
        );
        assert!(parse_core_swhid(&format!("swh:1:dir:{}", id.to_uppercase())).is_none());
        assert!(parse_core_swhid(&format!("swh:2:dir:{id}")).is_none());
        assert!(parse_core_swhid("swh:1:dir:abc").is_none());
        assert!(parse_core_swhid(&format!("swh:1:ori:{id}")).is_none());
    }

    #[test]
    fn the_token_is_for_the_api_origin_only() {
        let client =
            SwhClient::new(SwhConfig::new("http://127.0.0.1:9/").with_token("t")).expect("client");
        assert!(client.same_origin(&Url::parse("http://127.0.0.1:9/api/1/x/").expect("url")));
        assert!(!client.same_origin(&Url::parse("http://127.0.0.2:9/b").expect("url")));
        assert!(!client.same_origin(&Url::parse("http://localhost:9/b").expect("url")));
        assert!(!client.same_origin(&Url::parse("https://127.0.0.1:9/b").expect("url")));
    }
}
