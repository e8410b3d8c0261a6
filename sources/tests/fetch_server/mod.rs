//! A loopback HTTP/1.1 server (plain or TLS with a test CA) for the fetcher
//! tests. Each test gives it a handler that writes raw responses, so it can
//! misbehave on purpose: stall, cut the connection, lie about lengths,
//! ignore Range, redirect anywhere. One thread per connection, every
//! response `Connection: close`, so connections in flight are requests in
//! flight and the server can count them.

#![allow(dead_code)]

pub mod h2;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One parsed request head.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent: `/path` or, through a proxy, `http://host/path`.
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The host name in the Host header, without the port.
    pub fn host(&self) -> &str {
        let host = self.header("host").unwrap_or("");
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    }

    /// N of `Range: bytes=N-`.
    pub fn range_start(&self) -> Option<u64> {
        let value = self.header("range")?;
        let start = value.strip_prefix("bytes=")?.strip_suffix('-')?;
        start.parse().ok()
    }
}

/// What handlers can see of the server while they serve.
pub struct Control {
    active: AtomicUsize,
    max_active: AtomicUsize,
    stopping: AtomicBool,
    log: Mutex<Vec<Request>>,
}

impl Control {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Waits (polling) until `condition` holds, the server stops, or
    /// `limit` passes; says whether the condition held. A safety net so a
    /// broken client cannot hang a test, not a timing assertion.
    pub fn wait_until(&self, limit: Duration, condition: impl Fn(&Control) -> bool) -> bool {
        let start = Instant::now();
        while !condition(self) {
            if self.stopping() || start.elapsed() > limit {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Holds a connection open (sending nothing) until the server stops or
    /// the client goes away; how "stall" is served.
    pub fn stall(&self, limit: Duration) {
        self.wait_until(limit, |_| false);
    }
}

pub type Handler = dyn Fn(&Request, &mut dyn Write, &Control) -> io::Result<()> + Send + Sync;

/// A TLS identity for the server and the PEM of the CA that signed it.
pub struct TestCa {
    pub ca_pem_path: PathBuf,
    cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    /// A fresh CA and a leaf for `127.0.0.1` and `localhost`.
    pub fn generate() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ipnix fetch test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf cert");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_pem_path = dir.path().join("test-ca.pem");
        std::fs::write(&ca_pem_path, ca.pem()).expect("write CA PEM");
        TestCa {
            ca_pem_path,
            cert_chain: vec![leaf.der().clone()],
            key_der: leaf_key.serialize_der(),
            _dir: dir,
        }
    }

    pub fn ca_pem(&self) -> &Path {
        &self.ca_pem_path
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(self.cert_chain.clone(), key)
            .expect("server cert");
        // This server speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

pub struct Server {
    pub port: u16,
    scheme: &'static str,
    control: Arc<Control>,
}

impl Server {
    pub fn http(
        handler: impl Fn(&Request, &mut dyn Write, &Control) -> io::Result<()> + Send + Sync + 'static,
    ) -> Server {
        Server::start(Arc::new(handler), None)
    }

    pub fn https(
        ca: &TestCa,
        handler: impl Fn(&Request, &mut dyn Write, &Control) -> io::Result<()> + Send + Sync + 'static,
    ) -> Server {
        Server::start(Arc::new(handler), Some(ca.server_config()))
    }

    fn start(handler: Arc<Handler>, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let control = Arc::new(Control {
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let accept_control = Arc::clone(&control);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_control.stopping() {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let handler = Arc::clone(&handler);
                let control = Arc::clone(&accept_control);
                let tls = tls.clone();
                thread::spawn(move || {
                    // Errors here are clients going away mid-response: expected.
                    let _ = serve_connection(stream, tls, &*handler, &control);
                });
            }
        });
        Server {
            port,
            scheme,
            control,
        }
    }

    /// `scheme://127.0.0.1:port/path`.
    pub fn url(&self, path: &str) -> String {
        self.url_on("127.0.0.1", path)
    }

    /// The same server under another loopback host name (`localhost`).
    pub fn url_on(&self, host: &str, path: &str) -> String {
        format!("{}://{host}:{}{path}", self.scheme, self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.control.log.lock().expect("log").clone()
    }

    /// Requests whose target ends with `path`.
    pub fn count(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.target.ends_with(path))
            .count()
    }

    /// Most requests that were ever in flight at once.
    pub fn max_active(&self) -> usize {
        self.control.max_active.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.control.stopping.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn serve_connection(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: &Handler,
    control: &Control,
) -> io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let shutdown_handle = tcp.try_clone()?;
    let mut stream: Box<dyn Stream> = match tls {
        Some(config) => {
            let connection = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            Box::new(rustls::StreamOwned::new(connection, tcp))
        }
        None => Box::new(tcp),
    };
    let Some(request) = read_head(&mut stream)? else {
        return Ok(());
    };
    if control.stopping() {
        return Ok(());
    }
    control.log.lock().expect("log").push(request.clone());
    let now = control.active.fetch_add(1, Ordering::SeqCst) + 1;
    control.max_active.fetch_max(now, Ordering::SeqCst);
    let served = handler(&request, &mut stream, control).and_then(|()| stream.flush());
    control.active.fetch_sub(1, Ordering::SeqCst);
    drop(stream);
    let _ = shutdown_handle.shutdown(Shutdown::Both);
    served
}

/// Reads the request line and headers (at most 64 KiB).
fn read_head(stream: &mut dyn Stream) -> io::Result<Option<Request>> {
    let mut reader = BufReader::new(Read::take(&mut *stream, 64 * 1024));
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Ok(Some(Request {
        method,
        target,
        headers,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

/// The status line and headers (plus `Connection: close`), no body.
pub fn write_head(w: &mut dyn Write, status: u16, headers: &[(&str, String)]) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    w.write_all(head.as_bytes())?;
    w.flush()
}

/// A complete response with a correct Content-Length.
pub fn respond(w: &mut dyn Write, status: u16, body: &[u8]) -> io::Result<()> {
    write_head(w, status, &[("Content-Length", body.len().to_string())])?;
    w.write_all(body)
}

pub fn redirect(w: &mut dyn Write, location: &str) -> io::Result<()> {
    write_head(
        w,
        302,
        &[
            ("Location", location.to_owned()),
            ("Content-Length", "0".to_owned()),
        ],
    )
}

/// Serves `data` honouring `Range: bytes=N-` (206) like a static file server.
pub fn serve_file(request: &Request, w: &mut dyn Write, data: &[u8]) -> io::Result<()> {
    let len = data.len();
    match request.range_start() {
        Some(start) if (start as usize) < len => {
            let start = start as usize;
            write_head(
                w,
                206,
                &[
                    ("Content-Length", (len - start).to_string()),
                    ("Content-Range", format!("bytes {start}-{}/{len}", len - 1)),
                    ("Accept-Ranges", "bytes".to_owned()),
                ],
            )?;
            w.write_all(&data[start..])
        }
        Some(_) => write_head(
            w,
            416,
            &[
                ("Content-Range", format!("bytes */{len}")),
                ("Content-Length", "0".to_owned()),
            ],
        ),
        None => {
            write_head(
                w,
                200,
                &[
                    ("Content-Length", len.to_string()),
                    ("Accept-Ranges", "bytes".to_owned()),
                ],
            )?;
            w.write_all(data)
        }
    }
}
