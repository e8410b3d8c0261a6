//! The fetcher against a loopback server that misbehaves on purpose:
//! mirrors, retries, redirects, stalls, cuts, Range resume, size caps, TLS
//! with a test CA, the per-host limit and proxies from the environment.
//! Loopback only; no timing assertions (timeouts are only safety nets).

mod fetch_server;

use fetch_server::h2::H2Server;
use fetch_server::{redirect, respond, serve_file, write_head, Control, Request, Server, TestCa};
use ipnix_sources::fetch::{FailureKind, FetchConfig, FetchError, Fetcher, Sink};
use ipnix_store::test_util::pseudo_random;
use std::io::{self, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SAFETY: Duration = Duration::from_secs(20);

/// Fast retries; a stall timeout long enough never to fire by accident.
fn config() -> FetchConfig {
    FetchConfig::default()
        .with_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .with_connect_timeout(Duration::from_secs(10))
        .with_stall_timeout(Duration::from_secs(15))
}

fn fetcher(config: FetchConfig) -> Fetcher {
    Fetcher::new(config).expect("fetcher")
}

/// 300 KiB: several 64 KiB chunks.
fn body() -> Arc<Vec<u8>> {
    Arc::new(pseudo_random(10, 300 * 1024))
}

/// A sink that records resets, as a hashing sink would restart its hasher.
#[derive(Default)]
struct RecordingSink {
    data: Vec<u8>,
    resets: usize,
}

impl Write for RecordingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for RecordingSink {
    fn reset(&mut self) -> io::Result<()> {
        self.data.clear();
        self.resets += 1;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.data.len() as u64
    }
}

fn urls(list: &[String]) -> Vec<String> {
    list.to_vec()
}

/// A loopback port with nothing listening.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/gone.tar.gz")
}

fn file_server(data: Arc<Vec<u8>>) -> Server {
    Server::http(move |req, w, _| serve_file(req, w, &data))
}

#[test]
fn fetches_a_body_in_chunks() {
    let data = body();
    let server = file_server(Arc::clone(&data));
    let mut sink = Vec::new();
    let fetched = fetcher(config())
        .fetch(&[server.url("/a.tar.gz")], &mut sink)
        .expect("fetch");
    assert_eq!(fetched.url, server.url("/a.tar.gz"));
    assert_eq!(fetched.bytes, data.len() as u64);
    assert_eq!(sink, *data);
    let request = &server.requests()[0];
    assert_eq!(request.header("accept-encoding"), Some("identity"));
    assert!(request
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("ipnix/")));
}

#[test]
fn mirror_failover_when_the_first_url_is_dead() {
    let data = body();
    let server = file_server(Arc::clone(&data));
    let list = urls(&[dead_url(), server.url("/b.tar.gz")]);
    let mut sink = RecordingSink::default();
    let fetched = fetcher(config()).fetch(&list, &mut sink).expect("fetch");
    assert_eq!(fetched.url, list[1]);
    assert_eq!(sink.data, *data);

    // A dead URL alone: `connect`, not retried into the next hour.
    let error = fetcher(config())
        .fetch(&[dead_url()], &mut Vec::new())
        .expect_err("dead");
    assert_eq!(error.kind(), FailureKind::Connect);
    assert_eq!(error.kind().as_str(), "connect");
    assert_eq!(error.failures()[0].attempts, 1);
}

#[test]
fn not_found_is_never_retried_and_wins_when_unanimous() {
    let server = Server::http(|_, w, _| respond(w, 404, b"no"));
    let list = urls(&[
        server.url("/x.tar.gz"),
        server.url_on("localhost", "/y.tar.gz"),
    ]);
    let error = fetcher(config().with_retries(5))
        .fetch(&list, &mut Vec::new())
        .expect_err("404");
    assert_eq!(error.kind(), FailureKind::NotFound);
    assert_eq!(error.kind().as_str(), "not-found");
    assert_eq!(server.count("/x.tar.gz"), 1);
    assert_eq!(server.count("/y.tar.gz"), 1);
    assert_eq!(error.failures().len(), 2);
    assert_eq!(error.url(), Some(list[0].as_str()));
    let message = error.to_string();
    assert!(
        message.contains("x.tar.gz") && message.contains("1 other URL"),
        "{message}"
    );

    // Not unanimous: the last failure is reported.
    let list = urls(&[server.url("/x.tar.gz"), dead_url()]);
    let error = fetcher(config())
        .fetch(&list, &mut Vec::new())
        .expect_err("both fail");
    assert_eq!(error.kind(), FailureKind::Connect);
    assert_eq!(error.url(), Some(list[1].as_str()));
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let data = body();
    let served = Arc::new(AtomicUsize::new(0));
    let server = {
        let (data, served) = (Arc::clone(&data), Arc::clone(&served));
        Server::http(
            move |req, w, _| match served.fetch_add(1, Ordering::SeqCst) {
                0 => respond(w, 500, b"oops"),
                1 => write_head(
                    w,
                    429,
                    &[("Retry-After", "0".into()), ("Content-Length", "0".into())],
                ),
                _ => serve_file(req, w, &data),
            },
        )
    };
    let mut sink = Vec::new();
    let fetched = fetcher(config().with_retries(3))
        .fetch(&[server.url("/c.tar.gz")], &mut sink)
        .expect("third time lucky");
    assert_eq!(fetched.bytes, data.len() as u64);
    assert_eq!(sink, *data);
    assert_eq!(server.count("/c.tar.gz"), 3);

    // Always 503: 1 try + 2 retries, then `http-error`.
    let always = Server::http(|_, w, _| respond(w, 503, b"down"));
    let error = fetcher(config().with_retries(2))
        .fetch(&[always.url("/d.tar.gz")], &mut Vec::new())
        .expect_err("503");
    assert_eq!(error.kind(), FailureKind::Http(503));
    assert_eq!(error.kind().as_str(), "http-error");
    assert_eq!(always.count("/d.tar.gz"), 3);
    assert_eq!(error.failures()[0].attempts, 3);

    // 403 is not transient.
    let forbidden = Server::http(|_, w, _| respond(w, 403, b"no"));
    let error = fetcher(config())
        .fetch(&[forbidden.url("/e")], &mut Vec::new())
        .expect_err("403");
    assert_eq!(error.kind(), FailureKind::Http(403));
    assert_eq!(forbidden.count("/e"), 1);
}

/// `/hop/N` redirects to `/hop/N-1`; `/hop/0` is the file.
fn hop_server(data: Arc<Vec<u8>>) -> Server {
    Server::http(move |req, w, _| {
        let n: u32 = req
            .target
            .strip_prefix("/hop/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n == 0 {
            serve_file(req, w, &data)
        } else {
            redirect(w, &format!("/hop/{}", n - 1))
        }
    })
}

#[test]
fn redirect_chains_are_followed_up_to_ten_hops() {
    let data = body();
    let server = hop_server(Arc::clone(&data));
    let mut sink = Vec::new();
    let fetched = fetcher(config())
        .fetch(&[server.url("/hop/10")], &mut sink)
        .expect("10 hops");
    assert_eq!(fetched.url, server.url("/hop/10"), "the URL as given");
    assert_eq!(sink, *data);

    let error = fetcher(config())
        .fetch(&[server.url("/hop/11")], &mut Vec::new())
        .expect_err("11 hops");
    assert_eq!(error.kind(), FailureKind::RedirectRefused);
    assert_eq!(error.kind().as_str(), "redirect");
    assert!(
        error.to_string().contains("more than 10 redirects"),
        "{error}"
    );
    // Refused, not retried: 11 more requests (hop 11 .. hop 1), no hop/0.
    assert_eq!(server.count("/hop/0"), 1, "only the first fetch got there");
    assert_eq!(server.requests().len(), 11 + 11);

    let short = fetcher(config().with_max_redirects(2));
    let error = short
        .fetch(&[server.url("/hop/3")], &mut Vec::new())
        .expect_err("3 > 2");
    assert_eq!(error.kind(), FailureKind::RedirectRefused);
}

#[test]
fn redirect_loops_are_refused() {
    let server = Server::http(|req, w, _| match req.target.as_str() {
        "/loop/a" => redirect(w, "/loop/b"),
        _ => redirect(w, "/loop/a#again"),
    });
    let error = fetcher(config())
        .fetch(&[server.url("/loop/a")], &mut Vec::new())
        .expect_err("loop");
    assert_eq!(error.kind(), FailureKind::RedirectRefused);
    assert!(error.to_string().contains("loop"), "{error}");
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn cross_host_redirects_drop_credentials() {
    let data = body();
    let target = file_server(Arc::clone(&data));
    let to_localhost = target.url_on("localhost", "/file");
    let origin = Server::http(move |req, w, _| match req.target.as_str() {
        "/same" => redirect(w, "/other"),
        "/other" => redirect(w, &to_localhost),
        _ => respond(w, 404, b""),
    });
    let with_credentials = origin
        .url("/same")
        .replacen("http://", "http://user:secret@", 1);
    let mut sink = Vec::new();
    fetcher(config())
        .fetch(&[with_credentials], &mut sink)
        .expect("fetch");
    assert_eq!(sink, *data);
    let hops = origin.requests();
    assert_eq!(hops.len(), 2);
    assert!(
        hops.iter().all(|r| r
            .header("authorization")
            .is_some_and(|a| a.starts_with("Basic "))),
        "same-host hops keep the credentials: {hops:?}"
    );
    let last = &target.requests()[0];
    assert_eq!(last.host(), "localhost");
    assert_eq!(
        last.header("authorization"),
        None,
        "cross-host hop drops them"
    );
}

#[test]
fn unsupported_schemes_are_skipped_without_a_request() {
    let data = body();
    let server = file_server(Arc::clone(&data));
    let list = urls(&["ftp://ftp.example.org/x.tar.gz".into(), server.url("/x")]);
    let fetched = fetcher(config())
        .fetch(&list, &mut Vec::new())
        .expect("fetch");
    assert_eq!(fetched.url, list[1]);
    let error = fetcher(config())
        .fetch(&["mirror://gnu/hello.tar.gz".into()], &mut Vec::new())
        .expect_err("mirror://");
    assert_eq!(error.kind(), FailureKind::Unsupported);
    assert_eq!(error.kind().as_str(), "unsupported");
    let error = fetcher(config())
        .fetch(&[], &mut Vec::new())
        .expect_err("no URLs");
    assert!(matches!(error, FetchError::NoUrls));

    // A redirect to an unfetchable scheme.
    let to_ftp = Server::http(|_, w, _| redirect(w, "ftp://127.0.0.1/x"));
    let error = fetcher(config())
        .fetch(&[to_ftp.url("/x")], &mut Vec::new())
        .expect_err("ftp redirect");
    assert_eq!(error.kind(), FailureKind::Unsupported);
}

#[test]
fn a_stalled_body_times_out() {
    let data = body();
    let server = {
        let data = Arc::clone(&data);
        Server::http(move |_, w, control| {
            write_head(w, 200, &[("Content-Length", data.len().to_string())])?;
            w.write_all(&data[..1000])?;
            w.flush()?;
            control.stall(SAFETY);
            Ok(())
        })
    };
    let quick = config()
        .with_stall_timeout(Duration::from_secs(1))
        .with_retries(1);
    let error = fetcher(quick.clone())
        .fetch(&[server.url("/slow")], &mut Vec::new())
        .expect_err("stall");
    assert_eq!(error.kind(), FailureKind::Timeout);
    assert_eq!(error.kind().as_str(), "timeout");

    // Headers that never come time out too.
    let silent = Server::http(|_, _, control| {
        control.stall(SAFETY);
        Ok(())
    });
    let error = fetcher(quick.with_retries(0))
        .fetch(&[silent.url("/silent")], &mut Vec::new())
        .expect_err("no headers");
    assert_eq!(error.kind(), FailureKind::Timeout);
    assert_eq!(silent.count("/silent"), 1);
}

/// First request: headers for the whole body, `cut` bytes, then `misbehave`
/// (stall or close). Later requests: `later`.
fn interrupted_server(
    data: Arc<Vec<u8>>,
    cut: usize,
    stall: bool,
    later: fn(&Request, &mut dyn Write, &[u8]) -> io::Result<()>,
) -> Server {
    let first = Arc::new(AtomicUsize::new(0));
    Server::http(move |req, w, control: &Control| {
        if first.fetch_add(1, Ordering::SeqCst) == 0 {
            write_head(
                w,
                200,
                &[
                    ("Content-Length", data.len().to_string()),
                    ("Accept-Ranges", "bytes".into()),
                ],
            )?;
            w.write_all(&data[..cut])?;
            w.flush()?;
            if stall {
                control.stall(SAFETY);
            }
            Ok(())
        } else {
            later(req, w, &data)
        }
    })
}

#[test]
fn a_cut_transfer_resumes_with_range() {
    let data = body();
    let cut = 150 * 1024 + 17;
    let server = interrupted_server(Arc::clone(&data), cut, false, serve_file);
    let mut sink = RecordingSink::default();
    // No retries: a resume that makes progress does not use one up.
    let fetched = fetcher(config().with_retries(0))
        .fetch(&[server.url("/big")], &mut sink)
        .expect("resumed");
    assert_eq!(fetched.bytes, data.len() as u64);
    assert_eq!(sink.data, *data);
    assert_eq!(sink.resets, 0, "resumed, not restarted");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].range_start(), None);
    assert_eq!(requests[1].range_start(), Some(cut as u64));
}

#[test]
fn a_stalled_transfer_resumes_with_range() {
    let data = body();
    let cut = 70 * 1024;
    let server = interrupted_server(Arc::clone(&data), cut, true, serve_file);
    let mut sink = RecordingSink::default();
    let fetched = fetcher(
        config()
            .with_stall_timeout(Duration::from_secs(1))
            .with_retries(0),
    )
    .fetch(&[server.url("/big")], &mut sink)
    .expect("resumed");
    assert_eq!(fetched.bytes, data.len() as u64);
    assert_eq!(sink.data, *data);
    assert_eq!(sink.resets, 0);
    assert_eq!(server.requests()[1].range_start(), Some(cut as u64));
}

#[test]
fn a_server_ignoring_range_restarts_from_zero() {
    let data = body();
    let ignore_range: fn(&Request, &mut dyn Write, &[u8]) -> io::Result<()> = |_, w, data| {
        write_head(w, 200, &[("Content-Length", data.len().to_string())])?;
        w.write_all(data)
    };
    let server = interrupted_server(Arc::clone(&data), 100_000, false, ignore_range);
    let mut sink = RecordingSink::default();
    let fetched = fetcher(config())
        .fetch(&[server.url("/big")], &mut sink)
        .expect("restarted");
    assert_eq!(fetched.bytes, data.len() as u64);
    assert_eq!(sink.data, *data);
    assert_eq!(sink.resets, 1, "the sink was reset for the full body");
    assert_eq!(server.requests()[1].range_start(), Some(100_000));

    // A 206 for the wrong bytes: reset and start over.
    let wrong_range: fn(&Request, &mut dyn Write, &[u8]) -> io::Result<()> = |req, w, data| {
        if req.range_start().is_some() {
            write_head(
                w,
                206,
                &[
                    ("Content-Length", data.len().to_string()),
                    (
                        "Content-Range",
                        format!("bytes 0-{}/{}", data.len() - 1, data.len()),
                    ),
                ],
            )?;
            w.write_all(data)
        } else {
            serve_file(req, w, data)
        }
    };
    let server = interrupted_server(Arc::clone(&data), 100_000, false, wrong_range);
    let mut sink = RecordingSink::default();
    fetcher(config())
        .fetch(&[server.url("/big")], &mut sink)
        .expect("restarted after a bad 206");
    assert_eq!(sink.data, *data);
    assert_eq!(sink.resets, 1);
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn the_sink_is_reset_between_mirrors() {
    let data = body();
    // Mirror 1 cuts the body and then fails for good; mirror 2 serves it.
    let first = interrupted_server(Arc::clone(&data), 5000, false, |_, w, _| {
        respond(w, 404, b"")
    });
    let second = file_server(Arc::clone(&data));
    let mut sink = RecordingSink::default();
    let fetched = fetcher(config())
        .fetch(&urls(&[first.url("/f"), second.url("/f")]), &mut sink)
        .expect("second mirror");
    assert_eq!(fetched.url, second.url("/f"));
    assert_eq!(sink.data, *data);
    assert_eq!(sink.resets, 1);
    assert_eq!(second.requests()[0].range_start(), None);
}

#[test]
fn the_size_cap_holds_for_declared_and_streamed_bodies() {
    let data = body();
    let cap = 100 * 1024;
    let server = file_server(Arc::clone(&data));
    let error = fetcher(config().with_max_bytes(cap))
        .fetch(&[server.url("/declared")], &mut Vec::new())
        .expect_err("Content-Length over the cap");
    assert_eq!(error.kind(), FailureKind::TooLarge);
    assert_eq!(error.kind().as_str(), "too-large");
    assert_eq!(server.count("/declared"), 1, "not retried");

    // No Content-Length (close-delimited): caught while streaming.
    let undeclared = {
        let data = Arc::clone(&data);
        Server::http(move |_, w, _| {
            write_head(w, 200, &[])?;
            w.write_all(&data)
        })
    };
    let mut sink = Vec::new();
    let error = fetcher(config().with_max_bytes(cap))
        .fetch(&[undeclared.url("/streamed")], &mut sink)
        .expect_err("body over the cap");
    assert_eq!(error.kind(), FailureKind::TooLarge);
    assert!(
        sink.len() as u64 <= cap,
        "never more than the cap in the sink"
    );

    // Exactly the cap is fine.
    let exact = pseudo_random(11, cap as usize);
    let exact_server = file_server(Arc::new(exact.clone()));
    let mut sink = Vec::new();
    fetcher(config().with_max_bytes(cap))
        .fetch(&[exact_server.url("/exact")], &mut sink)
        .expect("at the cap");
    assert_eq!(sink, exact);
}

#[test]
fn bytes_beyond_content_length_are_not_taken() {
    let data = body();
    let declared = 1000;
    let server = {
        let data = Arc::clone(&data);
        Server::http(move |_, w, _| {
            write_head(w, 200, &[("Content-Length", declared.to_string())])?;
            w.write_all(&data)
        })
    };
    let mut sink = Vec::new();
    let fetched = fetcher(config())
        .fetch(&[server.url("/liar")], &mut sink)
        .expect("fetch");
    assert_eq!(fetched.bytes, declared as u64);
    assert_eq!(sink, data[..declared]);
}

#[test]
fn https_with_the_test_ca_and_tls_failure_without_it() {
    let ca = TestCa::generate();
    let data = body();
    let server = {
        let data = Arc::clone(&data);
        Server::https(&ca, move |req, w, _| serve_file(req, w, &data))
    };
    let trusting = fetcher(config().with_extra_root_certs(ca.ca_pem()));
    for url in [
        server.url("/s.tar.gz"),
        server.url_on("localhost", "/s.tar.gz"),
    ] {
        let mut sink = Vec::new();
        let fetched = trusting
            .fetch(std::slice::from_ref(&url), &mut sink)
            .expect("https");
        assert_eq!(fetched.url, url);
        assert_eq!(sink, *data);
    }

    let error = fetcher(config())
        .fetch(&[server.url("/s.tar.gz")], &mut Vec::new())
        .expect_err("unknown CA");
    assert_eq!(error.kind(), FailureKind::Tls);
    assert_eq!(error.kind().as_str(), "tls");
    assert_eq!(
        error.failures()[0].attempts,
        1,
        "TLS failures are not retried"
    );

    // A missing or empty CA file is a clear setup error.
    let missing = Fetcher::new(config().with_extra_root_certs("/nonexistent/ca.pem"))
        .expect_err("missing CA file");
    assert!(matches!(missing, FetchError::CaFile { .. }), "{missing}");
    let empty = tempfile::NamedTempFile::new().expect("temp");
    let error = Fetcher::new(config().with_extra_root_certs(empty.path())).expect_err("empty");
    assert!(matches!(error, FetchError::CaEmpty { .. }), "{error}");
}

#[test]
fn http2_over_tls_and_its_stall_timeout() {
    let ca = TestCa::generate();
    let data = body();
    let server = H2Server::start(&ca, Arc::clone(&data), None);
    let trusting = fetcher(config().with_extra_root_certs(ca.ca_pem()));
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let (fetcher, url) = (trusting.clone(), server.url(&format!("/h2/{i}")));
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                fetcher.fetch(&[url], &mut sink).map(|_| sink)
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("thread").expect("h2 fetch"), *data);
    }
    assert_eq!(server.h2_requests(), 3, "spoken over HTTP/2");

    let stalling = H2Server::start(&ca, Arc::clone(&data), Some(4096));
    let error = fetcher(
        config()
            .with_extra_root_certs(ca.ca_pem())
            .with_stall_timeout(Duration::from_secs(1))
            .with_retries(0),
    )
    .fetch(&[stalling.url("/stall")], &mut Vec::new())
    .expect_err("stalled h2 stream");
    assert_eq!(error.kind(), FailureKind::Timeout, "{error}");
}

#[test]
fn https_to_http_redirects_are_refused() {
    let ca = TestCa::generate();
    let data = body();
    let plain = file_server(Arc::clone(&data));
    let downgrade = plain.url("/file");
    let secure = Server::https(&ca, move |req, w, _| match req.target.as_str() {
        "/up" => redirect(w, "/down"),
        _ => redirect(w, &downgrade),
    });
    let error = fetcher(config().with_extra_root_certs(ca.ca_pem()))
        .fetch(&[secure.url("/up")], &mut Vec::new())
        .expect_err("downgrade");
    assert_eq!(error.kind(), FailureKind::RedirectRefused);
    assert!(error.to_string().contains("plain http"), "{error}");
    assert_eq!(plain.requests().len(), 0, "the http URL was never asked");

    // http -> https is fine.
    let secure_file = {
        let data = Arc::clone(&data);
        Server::https(&ca, move |req, w, _| serve_file(req, w, &data))
    };
    let upgrade = secure_file.url("/file");
    let plain_redirect = Server::http(move |_, w, _| redirect(w, &upgrade));
    let mut sink = Vec::new();
    fetcher(config().with_extra_root_certs(ca.ca_pem()))
        .fetch(&[plain_redirect.url("/x")], &mut sink)
        .expect("upgrade");
    assert_eq!(sink, *data);
}

#[test]
fn at_most_per_host_requests_in_flight_across_threads() {
    let data = Arc::new(pseudo_random(12, 32 * 1024));
    // Counted by the handler, which leaves the count before it sends the
    // last byte: the client cannot finish (and start its next request)
    // before that, so the count never runs ahead of the client's.
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let server = {
        let (data, in_flight, most) =
            (Arc::clone(&data), Arc::clone(&in_flight), Arc::clone(&most));
        Server::http(move |_, w, control| {
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            // Invite one request more than the limit: wait (up to a bound)
            // for a third to arrive, which a client that breaks the limit
            // sends, while a correct one never does.
            control.wait_until(Duration::from_secs(2), |_| {
                in_flight.load(Ordering::SeqCst) >= 3
            });
            write_head(w, 200, &[("Content-Length", data.len().to_string())])?;
            let (most_of_it, last) = data.split_at(data.len() - 1);
            w.write_all(most_of_it)?;
            w.flush()?;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            w.write_all(last)
        })
    };
    let fetcher = fetcher(config().with_per_host(2));
    let threads: Vec<_> = (0..6)
        .map(|i| {
            let fetcher = fetcher.clone();
            let url = server.url(&format!("/p{i}"));
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                fetcher.fetch(&[url], &mut sink).expect("fetch");
                sink
            })
        })
        .collect();
    for thread in threads {
        assert_eq!(thread.join().expect("thread"), *data);
    }
    assert_eq!(server.requests().len(), 6);
    assert_eq!(most.load(Ordering::SeqCst), 2, "two at a time, never more");
}

#[test]
fn works_from_tokio_spawn_blocking_threads() {
    let data = body();
    let server = file_server(Arc::clone(&data));
    let url = server.url("/t");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fetched = runtime.block_on(async move {
        // Built, used and dropped on blocking threads only.
        let fetcher = tokio::task::spawn_blocking(|| Fetcher::new(config()))
            .await
            .expect("join")
            .expect("fetcher");
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (fetcher, url) = (fetcher.clone(), url.clone());
                tokio::task::spawn_blocking(move || {
                    let mut sink = Vec::new();
                    fetcher.fetch(&[url], &mut sink).map(|_| sink)
                })
            })
            .collect();
        let mut bodies = Vec::new();
        for task in tasks {
            bodies.push(task.await.expect("join").expect("fetch"));
        }
        tokio::task::spawn_blocking(move || drop(fetcher))
            .await
            .expect("drop");
        bodies
    });
    for sink in fetched {
        assert_eq!(sink, *data);
    }
}

const PROXY_CHILD: &str = "IPNIX_FETCH_TEST_PROXY_CHILD";

/// Proxy settings come from the process environment, which tests in one
/// process share, so this test runs `proxy_env_child` in a child process.
#[test]
fn proxies_come_from_the_environment_and_no_proxy_covers_loopback() {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = std::process::Command::new(exe);
    command.args([
        "--exact",
        "proxy_env_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        command.env_remove(var).env_remove(var.to_lowercase());
    }
    let output = command.env(PROXY_CHILD, "1").output().expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("proxy child ok"),
        "child did not run:\n{stdout}\n{stderr}"
    );
}

#[test]
#[ignore = "run by proxies_come_from_the_environment_and_no_proxy_covers_loopback in a child process"]
fn proxy_env_child() {
    if std::env::var_os(PROXY_CHILD).is_none() {
        println!("SKIP: only meaningful in the child process its parent test starts");
        return;
    }
    let data = body();
    let origin = file_server(Arc::clone(&data));
    // A forward proxy: answers absolute-form requests itself.
    let proxy = Server::http(|req, w, _| {
        assert!(req.target.starts_with("http://"), "{req:?}");
        respond(w, 200, format!("via proxy: {}", req.target).as_bytes())
    });
    let proxy_url = proxy.url("");
    // One test thread in this process: setting the environment is safe.
    std::env::set_var("HTTP_PROXY", &proxy_url);
    std::env::set_var("HTTPS_PROXY", &proxy_url);
    std::env::set_var("ALL_PROXY", &proxy_url);
    std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
    let fetcher = fetcher(config());

    for url in [origin.url("/direct"), origin.url_on("localhost", "/direct")] {
        let mut sink = Vec::new();
        fetcher.fetch(&[url], &mut sink).expect("direct fetch");
        assert_eq!(sink, *data, "loopback bypasses the proxy");
    }
    assert_eq!(proxy.requests().len(), 0);
    assert_eq!(origin.count("/direct"), 2);

    // A name NO_PROXY does not cover goes to the (loopback) proxy, which
    // answers itself: nothing is resolved or sent beyond loopback.
    let mut sink = Vec::new();
    fetcher
        .fetch(&["http://sources.invalid/x.tar.gz".to_owned()], &mut sink)
        .expect("through the proxy");
    assert_eq!(sink, b"via proxy: http://sources.invalid/x.tar.gz");
    assert_eq!(proxy.requests().len(), 1);
    println!("proxy child ok");
}

/// A sink that fails like a full disk.
struct FullDisk;

impl Write for FullDisk {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for FullDisk {
    fn reset(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn written(&self) -> u64 {
        0
    }
}

#[test]
fn a_failing_sink_stops_the_fetch_without_trying_other_mirrors() {
    let data = body();
    let first = file_server(Arc::clone(&data));
    let second = file_server(Arc::clone(&data));
    let error = fetcher(config())
        .fetch(&urls(&[first.url("/f"), second.url("/f")]), &mut FullDisk)
        .expect_err("disk full");
    assert!(matches!(error, FetchError::Sink { .. }), "{error}");
    assert_eq!(error.kind(), FailureKind::Io);
    assert_eq!(error.url(), Some(first.url("/f").as_str()));
    assert_eq!(first.requests().len(), 1, "not retried");
    assert_eq!(
        second.requests().len(),
        0,
        "a local failure is not a mirror's"
    );
}
