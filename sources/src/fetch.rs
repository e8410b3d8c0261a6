//! HTTP(S) downloads of one source across its mirror URLs: the [`Fetcher`]
//! owns the HTTP client (rustls, HTTP/1.1 and 2, proxies from the
//! environment), redirects (followed here, one hop at a time, so every hop is
//! checked and counted against its own host), retries with backoff, Range
//! resume, the size cap and the per-host concurrency limit. It streams bytes
//! into a caller's [`Sink`] and knows nothing about hashes or the store: the
//! caller hashes while the sink writes and decides what the bytes are worth.
//!
//! # Threads
//!
//! The API is blocking (`reqwest::blocking`). A [`Fetcher`] runs its own
//! small runtime thread; it must be **created, used and dropped only on
//! threads that may block**: plain threads, or tokio's `spawn_blocking`
//! threads. Never create, call or drop the last clone of one on an async
//! executor thread (a `tokio` worker or inside `block_on`): reqwest's
//! blocking client panics there (debug builds) or stalls the executor.
//! A daemon should build the `Fetcher` inside `spawn_blocking` and move its
//! clones only into `spawn_blocking` closures.

use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Bytes read from the network per step, and the only body buffer a fetch holds.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Default cap on one source's size (8 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;
/// Most times one URL's transfer is resumed after an interruption that made
/// progress (those do not use up `retries`; this bounds a server that keeps
/// cutting the connection after a few bytes).
pub const MAX_RESUMES_PER_URL: u32 = 64;
/// Longest `Retry-After` honoured, whatever the backoff settings say.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How a [`Fetcher`] talks to servers. Build with [`FetchConfig::default`]
/// and the `with_*` setters.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    connect_timeout: Duration,
    stall_timeout: Duration,
    max_redirects: u32,
    retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    per_host: usize,
    max_bytes: u64,
    user_agent: String,
    extra_root_certs: Option<PathBuf>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            max_redirects: 10,
            retries: 3,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            per_host: 2,
            max_bytes: DEFAULT_MAX_BYTES,
            user_agent: concat!("ipnix/", env!("CARGO_PKG_VERSION")).to_owned(),
            extra_root_certs: None,
        }
    }
}

impl FetchConfig {
    /// Longest wait for a TCP (and TLS) connection to open.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Longest wait for the response headers or for the next body byte.
    pub fn with_stall_timeout(mut self, timeout: Duration) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Most redirects followed from one URL (default 10).
    pub fn with_max_redirects(mut self, hops: u32) -> Self {
        self.max_redirects = hops;
        self
    }

    /// Retries of one URL after a transient failure (timeout, reset, 5xx,
    /// 429), before the next URL is tried (default 3).
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Backoff before retry n is `base * 2^n`, at most `max`, then jittered
    /// down to between half and all of it (defaults 500 ms and 30 s).
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// Most requests in flight to one host (host name and port) across all
    /// threads sharing the [`Fetcher`] (default 2; 0 is taken as 1).
    pub fn with_per_host(mut self, per_host: usize) -> Self {
        self.per_host = per_host.max(1);
        self
    }

    /// Size cap of one download (default [`DEFAULT_MAX_BYTES`]).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The `User-Agent` header (default `ipnix/<version>`).
    pub fn with_user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// A PEM file of CA certificates trusted in addition to the webpki roots
    /// and the system's (`SSL_CERT_FILE`, `SSL_CERT_DIR` or the OS store).
    pub fn with_extra_root_certs(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.extra_root_certs = Some(pem_file.into());
        self
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    pub fn max_redirects(&self) -> u32 {
        self.max_redirects
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }

    pub fn per_host(&self) -> usize {
        self.per_host
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn user_agent(&self) -> &str {
        &self.user_agent
    }

    pub fn extra_root_certs(&self) -> Option<&Path> {
        self.extra_root_certs.as_deref()
    }
}

/// Where a download's bytes go. Implementations usually hash as they write,
/// so a resumed transfer continues the same hash state; `reset` must forget
/// every byte written so far (truncate the file, restart the hasher).
pub trait Sink: Write {
    /// Forget everything written: the next write is byte 0 again.
    fn reset(&mut self) -> io::Result<()>;
    /// Bytes written since creation or the last `reset`.
    fn written(&self) -> u64;
}

/// Small in-memory bodies and tests; real callers write to a temporary file.
impl Sink for Vec<u8> {
    fn reset(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }

    fn written(&self) -> u64 {
        self.len() as u64
    }
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The URL (as given, before redirects) whose server delivered the bytes.
    pub url: String,
    /// Bytes in the sink.
    pub bytes: u64,
}

/// Why one URL failed, as the CLI shows it (`FailureKind::as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// 404 or 410.
    NotFound,
    /// Connect timeout, or no byte within the stall timeout.
    Timeout,
    /// TLS handshake or certificate failure.
    Tls,
    /// Larger than the size cap (declared or while streaming).
    TooLarge,
    /// Another HTTP status that is not success.
    Http(u16),
    /// The connection could not be opened (refused, no such host).
    Connect,
    /// Not an http or https URL.
    Unsupported,
    /// A redirect to plain http from https, a loop, or too many hops.
    RedirectRefused,
    /// The transfer broke (reset, truncated, unreadable) or the sink failed.
    Io,
}

impl FailureKind {
    /// The status reason the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NotFound => "not-found",
            FailureKind::Timeout => "timeout",
            FailureKind::Tls => "tls",
            FailureKind::TooLarge => "too-large",
            FailureKind::Http(_) => "http-error",
            FailureKind::Connect => "connect",
            FailureKind::Unsupported => "unsupported",
            FailureKind::RedirectRefused => "redirect",
            FailureKind::Io => "io",
        }
    }

    /// Worth retrying the same URL: timeouts, broken transfers, 5xx, 429.
    pub fn is_transient(self) -> bool {
        match self {
            FailureKind::Timeout | FailureKind::Io => true,
            FailureKind::Http(code) => code == 429 || (500..600).contains(&code),
            _ => false,
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureKind::Http(code) => write!(f, "http-error {code}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What went wrong with one URL, below its [`FailureKind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailureCause {
    #[error("{0}")]
    Request(#[source] reqwest::Error),
    #[error("server answered {0}")]
    Status(StatusCode),
    #[error("reading the body after {at} bytes: {source}")]
    Body {
        at: u64,
        #[source]
        source: io::Error,
    },
    #[error("connection closed after {got} of {expected} bytes")]
    Truncated { got: u64, expected: u64 },
    #[error("{declared} bytes declared, more than the {max} byte cap")]
    DeclaredTooLarge { declared: u64, max: u64 },
    #[error("body grew past the {max} byte cap")]
    GrewTooLarge { max: u64 },
    #[error("bad URL: {0}")]
    BadUrl(String),
    #[error("scheme {0:?} is not fetchable (http and https only)")]
    Scheme(String),
    #[error("redirect from {from} refused: {reason}")]
    Redirect { from: String, reason: String },
    #[error("bad answer to a Range request: {0}")]
    Range(String),
}

/// One URL that failed, after its retries.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {kind}: {cause}")]
pub struct UrlFailure {
    pub url: String,
    pub kind: FailureKind,
    /// Requests made to this URL (redirect hops not counted).
    pub attempts: u32,
    #[source]
    pub cause: FailureCause,
}

/// Why a fetch failed. [`FetchError::kind`] is the status reason to show.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("reading extra CA certificates {path}: {source}", path = .path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("extra CA certificates {path}: {source}", path = .path.display())]
    CaPem {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("extra CA certificates {path}: no certificate in the file", path = .path.display())]
    CaEmpty { path: PathBuf },
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("no URL to fetch from")]
    NoUrls,
    /// Every URL failed; `reported` indexes the most telling failure.
    #[error("{}{}", .failures[*.reported], others(.failures.len()))]
    AllFailed {
        failures: Vec<UrlFailure>,
        reported: usize,
    },
    /// The sink refused bytes (disk full, ...): no other URL is tried.
    #[error("{url}: writing the download: {source}")]
    Sink {
        url: String,
        #[source]
        source: io::Error,
    },
}

fn others(count: usize) -> String {
    match count {
        0 | 1 => String::new(),
        2 => " (and 1 other URL failed)".to_owned(),
        n => format!(" (and {} other URLs failed)", n - 1),
    }
}

impl FetchError {
    /// The status reason: of the most telling URL failure, or `io` for
    /// local problems (CA file, client, sink), `unsupported` when no URL.
    pub fn kind(&self) -> FailureKind {
        match self {
            FetchError::AllFailed {
                failures, reported, ..
            } => failures[*reported].kind,
            FetchError::CaPem { .. } | FetchError::CaEmpty { .. } => FailureKind::Tls,
            FetchError::NoUrls => FailureKind::Unsupported,
            FetchError::CaFile { .. } | FetchError::Client(_) | FetchError::Sink { .. } => {
                FailureKind::Io
            }
        }
    }

    /// The URL the error is about (the most telling failed one), if any.
    pub fn url(&self) -> Option<&str> {
        match self {
            FetchError::AllFailed {
                failures, reported, ..
            } => Some(&failures[*reported].url),
            FetchError::Sink { url, .. } => Some(url),
            _ => None,
        }
    }

    /// Every URL that failed, in the order tried.
    pub fn failures(&self) -> &[UrlFailure] {
        match self {
            FetchError::AllFailed { failures, .. } => failures,
            _ => &[],
        }
    }
}

/// Downloads across mirror URLs. Cheap to clone; clones share the HTTP
/// client (its connection pool) and the per-host limit. See the module docs
/// for the threads it may live on.
#[derive(Clone)]
pub struct Fetcher {
    client: Client,
    config: Arc<FetchConfig>,
    hosts: Arc<HostLimiter>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// Builds the client. Call only where blocking is allowed (module docs).
    pub fn new(config: FetchConfig) -> Result<Self, FetchError> {
        let mut default_headers = HeaderMap::new();
        // Sources are hashed as served: a server must not re-encode them.
        default_headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let mut builder = Client::builder()
            .use_rustls_tls()
            .tls_built_in_webpki_certs(true)
            .tls_built_in_native_certs(true)
            .user_agent(config.user_agent.clone())
            .default_headers(default_headers)
            // Redirects are followed by `open`, hop by hop.
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .connect_timeout(config.connect_timeout)
            // reqwest::blocking applies this to the wait for the response
            // headers and to every single body read: a stall timeout.
            .timeout(config.stall_timeout)
            .pool_max_idle_per_host(config.per_host)
            .tcp_keepalive(Duration::from_secs(60));
        if let Some(path) = &config.extra_root_certs {
            let pem = std::fs::read(path).map_err(|source| FetchError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                FetchError::CaPem {
                    path: path.clone(),
                    source,
                }
            })?;
            if certs.is_empty() {
                return Err(FetchError::CaEmpty { path: path.clone() });
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(FetchError::Client)?;
        Ok(Self {
            client,
            hosts: Arc::new(HostLimiter::new(config.per_host)),
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> &FetchConfig {
        &self.config
    }

    /// Tries each URL in order (the next one when a URL fails after its
    /// retries) and streams the body into `sink`. An interrupted transfer is
    /// resumed with `Range: bytes=<sink.written()>-` when the server answers
    /// 206 with the matching `Content-Range`; otherwise the sink is reset and
    /// the body read from the start. The sink is also reset before each new
    /// URL. On error the sink may hold a partial body.
    pub fn fetch(&self, urls: &[String], sink: &mut dyn Sink) -> Result<Fetched, FetchError> {
        if urls.is_empty() {
            return Err(FetchError::NoUrls);
        }
        let mut failures = Vec::new();
        for url in urls {
            match self.fetch_one(url, sink) {
                Ok(bytes) => {
                    if !failures.is_empty() {
                        tracing::debug!(%url, failed = failures.len(), "fetched from a later mirror");
                    }
                    return Ok(Fetched {
                        url: url.clone(),
                        bytes,
                    });
                }
                Err(UrlOutcome::Failed(failure)) => {
                    tracing::debug!(%failure, "mirror failed");
                    failures.push(failure);
                }
                Err(UrlOutcome::Sink(source)) => {
                    return Err(FetchError::Sink {
                        url: url.clone(),
                        source,
                    })
                }
            }
        }
        let reported = most_telling(&failures);
        Err(FetchError::AllFailed { failures, reported })
    }

    /// One URL with its retries and resumes.
    fn fetch_one(&self, url_text: &str, sink: &mut dyn Sink) -> Result<u64, UrlOutcome> {
        let fail = |kind, attempts, cause| {
            UrlOutcome::Failed(UrlFailure {
                url: url_text.to_owned(),
                kind,
                attempts,
                cause,
            })
        };
        let url = match Url::parse(url_text) {
            Ok(url) => url,
            Err(e) => {
                let cause = FailureCause::BadUrl(e.to_string());
                return Err(fail(FailureKind::Unsupported, 0, cause));
            }
        };
        if !matches!(url.scheme(), "http" | "https") {
            let scheme = url.scheme().to_owned();
            return Err(fail(
                FailureKind::Unsupported,
                0,
                FailureCause::Scheme(scheme),
            ));
        }
        // Bytes from another mirror are not resumed: mirrors may differ.
        if sink.written() > 0 {
            sink.reset().map_err(UrlOutcome::Sink)?;
        }
        let mut attempts = 0u32;
        let mut retries_used = 0u32;
        let mut resumes = 0u32;
        loop {
            attempts += 1;
            let before = sink.written();
            let error = match self.attempt(&url, sink) {
                Ok(bytes) => return Ok(bytes),
                Err(AttemptError::Sink(e)) => return Err(UrlOutcome::Sink(e)),
                Err(AttemptError::Failed {
                    kind,
                    cause,
                    retry_after,
                }) => (kind, cause, retry_after),
            };
            let (kind, cause, retry_after) = error;
            if !kind.is_transient() {
                return Err(fail(kind, attempts, cause));
            }
            let delay = if sink.written() > before && resumes < MAX_RESUMES_PER_URL {
                // Progress: resume promptly, without using up a retry.
                resumes += 1;
                self.backoff(0)
            } else if retries_used < self.config.retries {
                retries_used += 1;
                self.backoff(retries_used - 1)
            } else {
                return Err(fail(kind, attempts, cause));
            };
            let delay = retry_after.map_or(delay, |after| delay.max(after));
            tracing::debug!(url = url_text, %kind, %cause, ?delay, written = sink.written(), "retrying");
            std::thread::sleep(delay);
        }
    }

    /// `base * 2^n` capped, then jittered into [half, all] of it so that
    /// threads failing together do not retry together.
    fn backoff(&self, n: u32) -> Duration {
        let full = self
            .config
            .backoff_base
            .saturating_mul(1u32 << n.min(20))
            .min(self.config.backoff_max);
        let random = RandomState::new().hash_one(n);
        let fraction = 0.5 + (random % 1024) as f64 / 2048.0;
        full.mul_f64(fraction)
    }

    /// One request (following redirects) and its body into the sink,
    /// continuing from `sink.written()` when the server allows it.
    fn attempt(&self, start: &Url, sink: &mut dyn Sink) -> Result<u64, AttemptError> {
        let offset = sink.written();
        let (response, _permit) = self.open(start, offset)?;
        let status = response.status();
        let max = self.config.max_bytes;
        let expected_total = match status {
            StatusCode::OK => {
                if offset > 0 {
                    // Range ignored: the whole body again, from byte 0.
                    sink.reset().map_err(AttemptError::Sink)?;
                }
                response.content_length()
            }
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                match parse_content_range(response.headers()) {
                    Some((first, total)) if first == offset => total,
                    other => {
                        // Not the bytes asked for: start over next attempt.
                        sink.reset().map_err(AttemptError::Sink)?;
                        return Err(AttemptError::io(FailureCause::Range(format!(
                            "asked for bytes {offset}-, got Content-Range {other:?}"
                        ))));
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                sink.reset().map_err(AttemptError::Sink)?;
                return Err(AttemptError::io(FailureCause::Range(format!(
                    "416 for bytes {offset}-"
                ))));
            }
            _ => return Err(AttemptError::status(&response)),
        };
        if let Some(declared) = expected_total {
            if declared > max {
                return Err(AttemptError::Failed {
                    kind: FailureKind::TooLarge,
                    cause: FailureCause::DeclaredTooLarge { declared, max },
                    retry_after: None,
                });
            }
        }
        stream_body(response, sink, max, expected_total)
    }

    /// Sends the GET and follows redirects; returns the final response with
    /// the permit of the host that answers it (held while the body streams).
    fn open(&self, start: &Url, offset: u64) -> Result<(Response, HostPermit<'_>), AttemptError> {
        let mut url = start.clone();
        let mut visited = vec![without_fragment(&url)];
        let mut hops = 0u32;
        loop {
            let permit = self.hosts.acquire(host_key(&url));
            let mut request = self.client.get(url.clone());
            if offset > 0 {
                request = request.header(header::RANGE, format!("bytes={offset}-"));
            }
            let response = request.send().map_err(AttemptError::request)?;
            let status = response.status();
            let location = response.headers().get(header::LOCATION).cloned();
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let Some(location) = location.filter(|_| is_redirect) else {
                return Ok((response, permit));
            };
            drop(response);
            drop(permit);
            let refuse = |reason: String| AttemptError::Failed {
                kind: FailureKind::RedirectRefused,
                cause: FailureCause::Redirect {
                    from: redacted(&url),
                    reason,
                },
                retry_after: None,
            };
            hops += 1;
            if hops > self.config.max_redirects {
                return Err(refuse(format!(
                    "more than {} redirects",
                    self.config.max_redirects
                )));
            }
            let location = location
                .to_str()
                .map_err(|_| refuse("Location header is not text".to_owned()))?;
            let mut next = url
                .join(location)
                .map_err(|e| refuse(format!("bad Location {location:?}: {e}")))?;
            match (url.scheme(), next.scheme()) {
                ("https", "http") => {
                    return Err(refuse(format!("https to plain http ({})", redacted(&next))))
                }
                (_, "http" | "https") => {}
                (_, other) => {
                    return Err(AttemptError::Failed {
                        kind: FailureKind::Unsupported,
                        cause: FailureCause::Scheme(other.to_owned()),
                        retry_after: None,
                    })
                }
            }
            if host_key(&next) != host_key(&url) || next.scheme() != url.scheme() {
                // Credentials are for the origin they were given for.
                // Clearing cannot fail for http(s) URLs, which have a host.
                let _ = next.set_username("");
                let _ = next.set_password(None);
            }
            let key = without_fragment(&next);
            if visited.contains(&key) {
                return Err(refuse(format!("redirect loop back to {}", redacted(&next))));
            }
            // `visited` holds at most max_redirects + 1 URLs.
            visited.push(key);
            tracing::trace!(from = %redacted(&url), to = %redacted(&next), "redirect");
            url = next;
        }
    }
}

/// Streams the body in [`CHUNK_SIZE`] reads, enforcing the cap.
fn stream_body(
    mut response: Response,
    sink: &mut dyn Sink,
    max: u64,
    expected_total: Option<u64>,
) -> Result<u64, AttemptError> {
    let mut buffer = vec![0u8; CHUNK_SIZE];
    loop {
        let read = match response.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                let kind = if io_is_timeout(&source) {
                    FailureKind::Timeout
                } else {
                    FailureKind::Io
                };
                let at = sink.written();
                return Err(AttemptError::Failed {
                    kind,
                    cause: FailureCause::Body { at, source },
                    retry_after: None,
                });
            }
        };
        if sink.written().saturating_add(read as u64) > max {
            return Err(AttemptError::Failed {
                kind: FailureKind::TooLarge,
                cause: FailureCause::GrewTooLarge { max },
                retry_after: None,
            });
        }
        sink.write_all(&buffer[..read])
            .map_err(AttemptError::Sink)?;
    }
    let got = sink.written();
    if let Some(expected) = expected_total {
        if got < expected {
            return Err(AttemptError::io(FailureCause::Truncated { got, expected }));
        }
    }
    sink.flush().map_err(AttemptError::Sink)?;
    Ok(got)
}

/// All 404: not-found; otherwise the last failure (the one tried last is
/// the best guess at the current state of things).
fn most_telling(failures: &[UrlFailure]) -> usize {
    if failures.iter().all(|f| f.kind == FailureKind::NotFound) {
        0
    } else {
        failures.len() - 1
    }
}

enum UrlOutcome {
    Failed(UrlFailure),
    Sink(io::Error),
}

enum AttemptError {
    Failed {
        kind: FailureKind,
        cause: FailureCause,
        retry_after: Option<Duration>,
    },
    Sink(io::Error),
}

impl AttemptError {
    fn io(cause: FailureCause) -> Self {
        AttemptError::Failed {
            kind: FailureKind::Io,
            cause,
            retry_after: None,
        }
    }

    fn status(response: &Response) -> Self {
        let status = response.status();
        let kind = match status.as_u16() {
            404 | 410 => FailureKind::NotFound,
            code => FailureKind::Http(code),
        };
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_RETRY_AFTER));
        AttemptError::Failed {
            kind,
            cause: FailureCause::Status(status),
            retry_after,
        }
    }

    fn request(error: reqwest::Error) -> Self {
        let kind = classify(&error);
        AttemptError::Failed {
            kind,
            cause: FailureCause::Request(error),
            retry_after: None,
        }
    }
}

/// Sorts a request error into the status reasons.
fn classify(error: &reqwest::Error) -> FailureKind {
    if chain_has_tls_error(error) {
        FailureKind::Tls
    } else if error.is_timeout() {
        FailureKind::Timeout
    } else if error.is_connect() {
        FailureKind::Connect
    } else {
        // The connection broke before the headers: a reset, a closed socket.
        FailureKind::Io
    }
}

/// rustls errors arrive wrapped in `io::Error`s, whose `source()` skips the
/// wrapped error itself, so both links are followed.
fn chain_has_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(inner) = io.get_ref() {
                if chain_has_tls_error(inner) {
                    return true;
                }
            }
        }
        next = err.source();
    }
    false
}

/// reqwest::blocking reports a stalled body read as an `io::Error` around a
/// `reqwest::Error` whose chain says timed out.
fn io_is_timeout(error: &io::Error) -> bool {
    if error.kind() == io::ErrorKind::TimedOut {
        return true;
    }
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
        .is_some_and(reqwest::Error::is_timeout)
}

/// `Content-Range: bytes FIRST-LAST/TOTAL` -> (FIRST, TOTAL if known).
fn parse_content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let range = value.trim().strip_prefix("bytes ")?;
    let (span, total) = range.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        text => {
            let total: u64 = text.parse().ok()?;
            if last >= total {
                return None;
            }
            Some(total)
        }
    };
    // Without a total, the body ends at LAST.
    Some((first, total.or(Some(last + 1))))
}

fn host_key(url: &Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

fn without_fragment(url: &Url) -> Url {
    let mut url = url.clone();
    url.set_fragment(None);
    url
}

/// A URL for logs and errors: without its password.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// At most `per_host` requests in flight per host key. Entries exist only
/// while a host has requests in flight, so the map is bounded by the number
/// of threads fetching.
struct HostLimiter {
    per_host: usize,
    in_flight: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

impl HostLimiter {
    fn new(per_host: usize) -> Self {
        Self {
            per_host: per_host.max(1),
            in_flight: Mutex::new(HashMap::new()),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self, host: String) -> HostPermit<'_> {
        // A poisoned lock only means another thread panicked mid-update of
        // a counter map that is still consistent (updates are single ops).
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while in_flight.get(&host).copied().unwrap_or(0) >= self.per_host {
            in_flight = self
                .freed
                .wait(in_flight)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *in_flight.entry(host.clone()).or_insert(0) += 1;
        HostPermit {
            limiter: self,
            host,
        }
    }
}

struct HostPermit<'a> {
    limiter: &'a HostLimiter,
    host: String,
}

impl Drop for HostPermit<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .limiter
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = in_flight.get_mut(&self.host) {
            *count -= 1;
            if *count == 0 {
                in_flight.remove(&self.host);
            }
        }
        drop(in_flight);
        // Waiters may be for different hosts: wake all, each rechecks.
        self.limiter.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetcher_is_shareable_across_threads() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Fetcher>();
        shareable::<FetchConfig>();
    }

    #[test]
    fn content_range_parsing() {
        let mut headers = HeaderMap::new();
        let mut with = |value: &str| {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(value).expect("ascii"),
            );
            parse_content_range(&headers)
        };
        assert_eq!(with("bytes 10-99/100"), Some((10, Some(100))));
        assert_eq!(with("bytes 10-99/*"), Some((10, Some(100))));
        assert_eq!(with("bytes 10-100/100"), None);
        assert_eq!(with("bytes 20-10/100"), None);
        assert_eq!(with("items 0-1/2"), None);
    }

    #[test]
    fn most_telling_prefers_not_found_only_when_unanimous() {
        let failure = |kind| UrlFailure {
            url: "http://x/".into(),
            kind,
            attempts: 1,
            cause: FailureCause::Scheme("x".into()),
        };
        let all_404 = [
            failure(FailureKind::NotFound),
            failure(FailureKind::NotFound),
        ];
        assert_eq!(most_telling(&all_404), 0);
        let mixed = [
            failure(FailureKind::NotFound),
            failure(FailureKind::Timeout),
        ];
        assert_eq!(most_telling(&mixed), 1);
    }

    #[test]
    fn transient_kinds() {
        assert!(FailureKind::Http(503).is_transient());
        assert!(FailureKind::Http(429).is_transient());
        assert!(FailureKind::Timeout.is_transient());
        assert!(!FailureKind::NotFound.is_transient());
        assert!(!FailureKind::Http(403).is_transient());
        assert!(!FailureKind::Tls.is_transient());
        assert_eq!(FailureKind::Http(500).as_str(), "http-error");
    }

    #[test]
    fn backoff_doubles_caps_and_jitters_down_to_half() {
        let config = FetchConfig::default()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(1000));
        let fetcher = Fetcher::new(config).expect("client");
        for (n, full) in [(0, 100), (1, 200), (3, 800), (4, 1000), (30, 1000)] {
            let delay = fetcher.backoff(n);
            let full = Duration::from_millis(full);
            assert!(delay <= full && delay >= full / 2, "retry {n}: {delay:?}");
        }
    }
}
