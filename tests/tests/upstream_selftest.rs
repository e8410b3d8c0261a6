//! The loopback upstream (`tests/upstream/upstream.py`, harness
//! `ipnix_tests::upstream`) does what the sources tests rely on: every
//! route, HTTPS with its test CA (checked with `curl`), request counters,
//! and dying. Plus: the real registry corpus, served over HTTPS, arrives
//! with the hashes the registries publish.

use anyhow::{Context, Result};
use ipnix_bridge::{HashAlgo, NixHash};
use ipnix_tests::corpus;
use ipnix_tests::peers::{skip, PseudoRandom};
use ipnix_tests::upstream::{self, http_get, http_request, Upstream, UpstreamOptions};
use sha2::{Digest, Sha256, Sha512};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const FILE: &str = "a.bin";
const FILE_LEN: usize = 300_001;

/// A served dir with one pseudo-random file (odd length: halves are uneven).
fn served_dir() -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut bytes = vec![0u8; FILE_LEN];
    PseudoRandom::new(7).fill(&mut bytes);
    std::fs::write(dir.path().join(FILE), &bytes).expect("write file");
    (dir, bytes)
}

fn start(test: &str, dir: &Path) -> Option<Upstream> {
    if let Some(reason) = upstream::unusable() {
        skip(test, &reason);
        return None;
    }
    Some(Upstream::start(UpstreamOptions::new(dir)).expect("upstream starts"))
}

fn curl_missing() -> bool {
    !Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `curl` to a file: (exit code, http code, redirects followed, body).
fn curl(args: &[&str], url: &str) -> (i32, String, String, Vec<u8>) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out_file = out_dir.path().join("body");
    let out = Command::new("curl")
        .args(["--noproxy", "*", "-s", "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code} %{num_redirects}"])
        .args(args)
        .arg(url)
        .output()
        .expect("runs curl");
    let written = String::from_utf8_lossy(&out.stdout).to_string();
    let mut parts = written.split_whitespace();
    let code = parts.next().unwrap_or("").to_owned();
    let redirects = parts.next().unwrap_or("").to_owned();
    let body = std::fs::read(&out_file).unwrap_or_default();
    (out.status.code().unwrap_or(-1), code, redirects, body)
}

#[test]
fn plain_file_head_and_ranges() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("plain_file_head_and_ranges", dir.path()) else {
        return Ok(());
    };
    let got = http_request(&up.http_url("/f/a.bin"), "GET", &[])?;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, bytes);
    assert_eq!(got.header("content-length"), Some("300001"));
    assert_eq!(got.header("accept-ranges"), Some("bytes"));
    assert!(got.header("etag").is_some());

    let head = http_request(&up.http_url("/f/a.bin?ignored=1"), "HEAD", &[])?;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("300001"));
    assert!(head.body.is_empty());

    let range = http_request(&up.http_url("/f/a.bin"), "GET", &[("Range", "bytes=10-19")])?;
    assert_eq!(range.status, 206);
    assert_eq!(range.body, &bytes[10..20]);
    assert_eq!(range.header("content-range"), Some("bytes 10-19/300001"));
    let open = http_request(
        &up.http_url("/f/a.bin"),
        "GET",
        &[("Range", "bytes=300000-")],
    )?;
    assert_eq!(
        (open.status, open.body.as_slice()),
        (206, &bytes[300_000..])
    );
    let suffix = http_request(&up.http_url("/f/a.bin"), "GET", &[("Range", "bytes=-5")])?;
    assert_eq!(
        (suffix.status, suffix.body.as_slice()),
        (206, &bytes[FILE_LEN - 5..])
    );
    let beyond = http_request(
        &up.http_url("/f/a.bin"),
        "GET",
        &[("Range", "bytes=400000-")],
    )?;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */300001"));

    // Nothing outside the served dir, nothing that is not a file.
    assert_eq!(http_get(&up.http_url("/f/../../../etc/passwd"))?.0, 404);
    assert_eq!(
        http_get(&up.http_url("/f/%2e%2e/%2e%2e/etc/passwd"))?.0,
        404
    );
    assert_eq!(http_get(&up.http_url("/f/"))?.0, 404);
    assert_eq!(http_get(&up.http_url("/f/missing"))?.0, 404);
    assert_eq!(http_get(&up.http_url("/nonsense/a.bin"))?.0, 404);
    Ok(())
}

#[test]
fn statuses_and_flaky() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("statuses_and_flaky", dir.path()) else {
        return Ok(());
    };
    assert_eq!(http_get(&up.http_url("/404/a.bin"))?.0, 404);
    assert_eq!(http_get(&up.http_url("/status/503/a.bin"))?.0, 503);
    assert_eq!(http_get(&up.http_url("/status/403/x"))?.0, 403);
    assert_eq!(http_get(&up.http_url("/flaky/2/a.bin"))?.0, 503);
    assert_eq!(http_get(&up.http_url("/flaky/2/a.bin"))?.0, 503);
    assert_eq!(http_get(&up.http_url("/flaky/2/a.bin"))?, (200, bytes));
    Ok(())
}

#[test]
fn redirects() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("redirects", dir.path()) else {
        return Ok(());
    };
    // N hops, then the file.
    let mut path = "/redirect/3/a.bin".to_owned();
    let mut hops = 0;
    loop {
        let got = http_request(&up.http_url(&path), "GET", &[])?;
        if got.status != 302 {
            assert_eq!((got.status, got.body), (200, bytes.clone()));
            break;
        }
        path = got.header("location").expect("Location").to_owned();
        hops += 1;
        assert!(hops <= 3, "more hops than asked");
    }
    assert_eq!(hops, 3);

    let looped = http_request(&up.http_url("/redirect-loop/a.bin"), "GET", &[])?;
    assert_eq!(looped.status, 302);
    assert_eq!(looped.header("location"), Some("/redirect-loop/a.bin"));

    let to_https = http_request(&up.http_url("/to-https/a.bin"), "GET", &[])?;
    assert_eq!(to_https.status, 302);
    assert_eq!(
        to_https.header("location"),
        Some(up.https_url("/f/a.bin").as_str())
    );

    if curl_missing() {
        skip("redirects (cross-scheme part)", "curl is not installed");
        return Ok(());
    }
    let ca = up.ca_path().to_str().expect("utf-8 path");
    let (exit, code, redirects, body) =
        curl(&["--cacert", ca, "-L"], &up.https_url("/to-http/a.bin"));
    assert_eq!((exit, code.as_str(), redirects.as_str()), (0, "200", "1"));
    assert_eq!(body, bytes, "https -> http redirect ends at the plain file");
    assert_eq!(up.requests("/to-http/a.bin")?, 1);
    Ok(())
}

#[test]
fn https_with_the_test_ca() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("https_with_the_test_ca", dir.path()) else {
        return Ok(());
    };
    if curl_missing() {
        skip("https_with_the_test_ca", "curl is not installed");
        return Ok(());
    }
    let ca = up.ca_path().to_str().expect("utf-8 path");
    let (exit, code, _, body) = curl(&["--cacert", ca], &up.https_url("/f/a.bin"));
    assert_eq!((exit, code.as_str()), (0, "200"));
    assert_eq!(body, bytes);
    let by_name = format!("https://localhost:{}/f/a.bin", up.https_port());
    let (exit, code, _, body) = curl(&["--cacert", ca], &by_name);
    assert_eq!(
        (exit, code.as_str()),
        (0, "200"),
        "the certificate names localhost"
    );
    assert_eq!(body, bytes);
    let (exit, _, _, _) = curl(&["--cacert", ca, "-r", "0-9"], &up.https_url("/f/a.bin"));
    assert_eq!(exit, 0);
    // Without the test CA the certificate is not trusted (curl: 60).
    let (exit, _, _, _) = curl(&["--cacert", "/dev/null"], &up.https_url("/f/a.bin"));
    assert_ne!(exit, 0);
    // Plain HTTP on the HTTPS port is not served.
    assert!(
        http_get(&format!("http://127.0.0.1:{}/f/a.bin", up.https_port())).is_err()
            || http_get(&format!("http://127.0.0.1:{}/f/a.bin", up.https_port()))
                .is_ok_and(|(status, _)| status != 200)
    );
    Ok(())
}

#[test]
fn cut_then_range_resume() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("cut_then_range_resume", dir.path()) else {
        return Ok(());
    };
    let first = http_request(&up.http_url("/cut/a.bin"), "GET", &[])?;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("content-length"), Some("300001"));
    assert_eq!(
        first.body.len(),
        FILE_LEN / 2,
        "half, then the connection closes"
    );
    assert_eq!(first.body, &bytes[..FILE_LEN / 2]);

    let resume_from = format!("bytes={}-", first.body.len());
    let rest = http_request(
        &up.http_url("/cut/a.bin"),
        "GET",
        &[("Range", &resume_from)],
    )?;
    assert_eq!(rest.status, 206);
    let mut whole = first.body;
    whole.extend_from_slice(&rest.body);
    assert_eq!(whole, bytes);
    assert_eq!(up.requests("/cut/a.bin")?, 2);
    Ok(())
}

/// Reads headers and as much body as arrives before `timeout` of silence.
fn read_until_silent(url_path: &str, port: u16, timeout: Duration) -> (String, usize, bool) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    write!(stream, "GET {url_path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return (head, 0, false),
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push_str(&line),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (head, 0, true)
            }
            Err(e) => panic!("reading headers: {e}"),
        }
    }
    let mut body = 0usize;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (head, body, false),
            Ok(n) => body += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (head, body, true)
            }
            Err(e) => panic!("reading body: {e}"),
        }
    }
}

#[test]
fn stall_hang_and_stall_once() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("stall_hang_and_stall_once", dir.path()) else {
        return Ok(());
    };
    // The server stays silent for 600 s; 2 s of silence is enough to see it.
    let silence = Duration::from_secs(2);
    let (head, body, silent) = read_until_silent("/stall/a.bin", up.http_port(), silence);
    assert!(head.contains("Content-Length: 300001"), "{head}");
    assert_eq!(body, FILE_LEN / 2);
    assert!(silent, "a stall keeps the connection open and silent");

    let (head, body, silent) = read_until_silent("/hang/a.bin", up.http_port(), silence);
    assert!(head.is_empty() && body == 0 && silent, "hang sends nothing");

    let (_, body, silent) = read_until_silent("/stall-once/a.bin", up.http_port(), silence);
    assert!(silent && body == FILE_LEN / 2);
    assert_eq!(http_get(&up.http_url("/stall-once/a.bin"))?, (200, bytes));
    Ok(())
}

#[test]
fn mutate_changes_one_byte() -> Result<()> {
    let (dir, bytes) = served_dir();
    let Some(up) = start("mutate_changes_one_byte", dir.path()) else {
        return Ok(());
    };
    let (status, mutated) = http_get(&up.http_url("/mutate/a.bin"))?;
    assert_eq!(status, 200);
    assert_eq!(mutated.len(), bytes.len());
    let differing = mutated.iter().zip(&bytes).filter(|(a, b)| a != b).count();
    assert_eq!(differing, 1);
    assert_ne!(Sha256::digest(&mutated), Sha256::digest(&bytes));
    // The same change inside a range that covers it.
    let mid = FILE_LEN / 2;
    let range = format!("bytes={}-{}", mid - 1, mid + 1);
    let part = http_request(&up.http_url("/mutate/a.bin"), "GET", &[("Range", &range)])?;
    assert_eq!(part.body, &mutated[mid - 1..=mid + 1]);
    Ok(())
}

#[test]
fn slow_serves_the_same_bytes() -> Result<()> {
    let (dir, bytes) = served_dir();
    if let Some(reason) = upstream::unusable() {
        skip("slow_serves_the_same_bytes", &reason);
        return Ok(());
    }
    let up = Upstream::start(UpstreamOptions::new(dir.path()).with_slow_rate(2 << 20))?;
    assert_eq!(http_get(&up.http_url("/slow/a.bin"))?, (200, bytes));
    Ok(())
}

#[test]
fn stats_count_and_reset() -> Result<()> {
    let (dir, _) = served_dir();
    let Some(up) = start("stats_count_and_reset", dir.path()) else {
        return Ok(());
    };
    assert_eq!(up.requests("/f/a.bin")?, 0);
    http_get(&up.http_url("/f/a.bin"))?;
    http_get(&up.http_url("/f/a.bin?x=1"))?;
    http_request(&up.http_url("/f/a.bin"), "HEAD", &[])?;
    http_get(&up.http_url("/404/zzz"))?;
    let stats = up.stats()?;
    assert_eq!(stats.get("/f/a.bin"), Some(&3));
    assert_eq!(stats.get("/404/zzz"), Some(&1));
    assert!(
        !stats.contains_key("/_stats"),
        "stats do not count themselves"
    );
    up.reset_stats()?;
    assert_eq!(up.requests("/f/a.bin")?, 0);
    Ok(())
}

#[test]
fn kill_and_die() -> Result<()> {
    let (dir, _) = served_dir();
    let Some(mut up) = start("kill_and_die", dir.path()) else {
        return Ok(());
    };
    let url = up.http_url("/f/a.bin");
    assert_eq!(http_get(&url)?.0, 200);
    up.kill();
    assert!(!up.is_running());
    assert!(
        http_get(&url).is_err(),
        "a killed upstream refuses connections"
    );

    let Some(mut up) = start("kill_and_die", dir.path()) else {
        return Ok(());
    };
    let _ = http_get(&up.http_url("/_die"));
    let mut waited = 0;
    while up.is_running() {
        assert!(waited < 300, "/_die did not end the server");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    assert!(http_get(&up.http_url("/f/a.bin")).is_err());
    Ok(())
}

/// Every corpus file, fetched over HTTPS from the upstream, has the hash its
/// registry publishes (sha256 for PyPI and crates.io, sha512 SRI for npm).
#[test]
fn corpus_served_over_https_matches_published_hashes() -> Result<()> {
    const TEST: &str = "corpus_served_over_https_matches_published_hashes";
    let Some(corpus) = corpus::load_or_skip(TEST) else {
        return Ok(());
    };
    if curl_missing() {
        skip(TEST, "curl is not installed");
        return Ok(());
    }
    let Some(up) = start(TEST, &corpus.dir) else {
        return Ok(());
    };
    assert!(corpus.files.len() >= 18, "{} files", corpus.files.len());
    assert!(corpus.files.iter().any(|f| f.is_over_one_mib()));
    assert!(corpus.files.iter().any(|f| f.file_name.ends_with(".zip")));
    let ca = up.ca_path().to_str().expect("utf-8 path");
    for file in &corpus.files {
        let path = format!("/f/{}/{}", file.registry.as_str(), file.file_name);
        let (exit, code, _, body) = curl(&["--cacert", ca], &up.https_url(&path));
        assert_eq!((exit, code.as_str()), (0, "200"), "{path}");
        assert_eq!(body.len() as u64, file.size, "{path}");
        let published = &file.published_hash;
        let got = match published.algo() {
            HashAlgo::Sha512 => NixHash::new(HashAlgo::Sha512, &Sha512::digest(&body)),
            HashAlgo::Sha256 => NixHash::new(HashAlgo::Sha256, &Sha256::digest(&body)),
            other => panic!("{path}: unexpected published algorithm {other}"),
        }
        .context("digest length")?;
        assert_eq!(
            &got, published,
            "{path} against {}",
            file.published_hash_text
        );
        let sha256: [u8; 32] = Sha256::digest(&body).into();
        assert_eq!(NixHash::sha256(sha256), file.sha256, "{path}");
    }
    Ok(())
}
