//! Who can drive the daemon: a web page after DNS rebinding (foreign `Host`,
//! `Origin`, `Sec-Fetch-Site`) and a caller without the repo's token are
//! refused with 403 and change nothing, while the CLI and a local request
//! with the token work beside them; the token file is private, fresh at each
//! start and gone at stop; with `--http 0.0.0.0:PORT` the LAN-facing listener
//! serves no control API at all, and `--api` accepts only loopback.

use ipnix_node::http::api::{encode_request, CommandRequest, RUN_PATH};
use ipnix_tests::cli::{assert_clean_failure, Daemon, Ipnix};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Stdio;

/// One raw HTTP/1.1 request (so every header is exactly what a browser or an
/// attacker would send); returns the status code and the body.
fn raw_request(addr: &str, method: &str, path: &str, headers: &[(&str, String)]) -> (u16, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text}"));
    let body = match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => response[at + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

/// `POST /api/v0/run` asking the daemon to write `cid` to `output`.
fn get_request(
    addr: &str,
    host: &str,
    cid: &str,
    output: &Path,
    extra: &[(&str, String)],
) -> (u16, String) {
    let command = CommandRequest {
        args: vec![
            "get".into(),
            cid.into(),
            "-o".into(),
            output.to_str().expect("utf-8").into(),
        ],
        cwd: std::env::temp_dir(),
    };
    let mut headers = vec![
        ("host", host.to_string()),
        ("x-ipnix-command", encode_request(&command)),
    ];
    headers.extend(extra.iter().cloned());
    let (status, body) = raw_request(addr, "POST", RUN_PATH, &headers);
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

fn port(url: &str) -> u16 {
    authority(url)
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

fn add(ipnix: &Ipnix, bytes: &[u8]) -> String {
    let out = ipnix.run_with_stdin(&["add", "-Q", "-"], bytes);
    ipnix_tests::cli::assert_success(&out, &["add", "-Q", "-"]);
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

#[test]
fn a_rebinding_page_cannot_drive_the_daemon_but_the_owner_can() {
    let ipnix = Ipnix::new();
    let daemon = Daemon::start(&ipnix, &[]);
    let cid = add(&ipnix, b"what a page wants written\n");
    let addr = authority(&daemon.api_url);
    let api_port = port(&daemon.api_url);
    let token = Daemon::api_token(&ipnix);
    let bearer = format!("Bearer {token}");
    let dir = tempfile::tempdir().expect("tempdir");
    let loopback_host = format!("127.0.0.1:{api_port}");

    // (what is sent, its Host, headers beyond Host and the command)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>);
    let evil = "evil.example:4880".to_string();
    let foreign: Vec<Case> = vec![
        // Exactly the measured attack: a page after DNS rebinding.
        (
            "rebinding page without token",
            evil.clone(),
            vec![("origin", "http://evil.example:4880".into())],
        ),
        // Even with the token (a page cannot read it, but the check is not on it alone).
        (
            "rebinding page with the token",
            evil.clone(),
            vec![
                ("origin", "http://evil.example:4880".into()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "foreign Host alone",
            evil.clone(),
            vec![("authorization", bearer.clone())],
        ),
        (
            "foreign Origin",
            loopback_host.clone(),
            vec![
                ("origin", "http://evil.example".into()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "another local page (other port)",
            loopback_host.clone(),
            vec![
                ("origin", "http://localhost:3000".into()),
                ("authorization", bearer.clone()),
            ],
        ),
        (
            "sandboxed page (Origin null)",
            loopback_host.clone(),
            vec![("origin", "null".into()), ("authorization", bearer.clone())],
        ),
        (
            "cross-site fetch",
            loopback_host.clone(),
            vec![
                ("sec-fetch-site", "cross-site".into()),
                ("authorization", bearer.clone()),
            ],
        ),
        ("no token", loopback_host.clone(), vec![]),
        (
            "wrong token",
            loopback_host.clone(),
            vec![("authorization", format!("Bearer {}", "0".repeat(64)))],
        ),
        (
            "token without scheme",
            loopback_host.clone(),
            vec![("authorization", token.clone())],
        ),
    ];
    let mut refused = 0;
    for (i, (what, host, extra)) in foreign.iter().enumerate() {
        let target = dir.path().join(format!("foreign-{i}"));
        let (status, body) = get_request(&addr, host, &cid, &target, extra);
        assert_eq!(status, 403, "{what}: {body}");
        assert!(!body.trim().is_empty(), "{what}: a 403 says why");
        assert!(
            !target.exists(),
            "{what}: the daemon wrote {}",
            target.display()
        );
        refused += 1;
    }

    // A valid local request beside them: the owner's token, a loopback Host.
    for (i, host) in [loopback_host.clone(), format!("localhost:{api_port}")]
        .iter()
        .enumerate()
    {
        let target = dir.path().join(format!("local-{i}"));
        let (status, _) = get_request(
            &addr,
            host,
            &cid,
            &target,
            &[
                ("authorization", bearer.clone()),
                ("origin", format!("http://127.0.0.1:{api_port}")),
            ],
        );
        assert_eq!(status, 200, "local request with Host {host}");
        assert_eq!(
            std::fs::read(&target).expect("the local request wrote its file"),
            b"what a page wants written\n"
        );
    }
    // And the CLI, which reads the token itself.
    let target = dir.path().join("cli");
    ipnix.ok(&["get", &cid, "-o", target.to_str().expect("utf-8")]);
    assert!(target.exists());
    println!("foreign requests refused: {refused} of {}", foreign.len());
    assert!(daemon.stop());
}

#[test]
fn the_token_is_private_fresh_at_each_start_and_gone_at_stop() {
    let ipnix = Ipnix::new();
    let token_file = ipnix.repo_path().join("api.token");
    let first = Daemon::start(&ipnix, &[]);
    let old_token = Daemon::api_token(&ipnix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "api.token is readable only by its owner"
        );
    }
    assert!(first.stop());
    assert!(!token_file.exists(), "api.token removed at stop");

    let second = Daemon::start(&ipnix, &[]);
    let new_token = Daemon::api_token(&ipnix);
    assert_ne!(old_token, new_token, "a fresh token at each start");
    let cid = add(&ipnix, b"x\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("old-token");
    let (status, body) = get_request(
        &authority(&second.api_url),
        &format!("127.0.0.1:{}", port(&second.api_url)),
        &cid,
        &target,
        &[("authorization", format!("Bearer {old_token}"))],
    );
    assert_eq!(status, 403, "the previous daemon's token: {body}");
    assert!(!target.exists());

    // A CLI that cannot read the token is refused, and says why.
    std::fs::remove_file(&token_file).expect("remove token");
    let err = ipnix.fails(&["pin", "ls"]);
    assert!(err.contains("403") && err.contains("token"), "{err}");
    assert!(second.stop());
}

#[test]
fn the_lan_listener_serves_no_control_api() {
    let ipnix = Ipnix::new();
    let daemon = Daemon::start_on(&ipnix, "0.0.0.0:0", &[]);
    assert!(
        daemon
            .banner
            .iter()
            .any(|l| l.starts_with("control API (loopback only) on http://127.0.0.1:")),
        "the banner names the control API's own listener: {:?}",
        daemon.banner
    );
    assert_ne!(daemon.url, daemon.api_url, "the API has its own listener");
    assert!(
        daemon.api_url.starts_with("http://127.0.0.1:"),
        "{}",
        daemon.api_url
    );

    // The CLI finds the API through REPO/api and works as ever.
    let cid = add(&ipnix, b"served to the LAN, written only from loopback\n");
    assert_eq!(
        ipnix.ok_bytes(&["cat", &cid]),
        b"served to the LAN, written only from loopback\n"
    );

    // Addresses that reach the LAN listener: loopback (the listener is
    // 0.0.0.0) and any LAN address this host has.
    let http_port = port(&daemon.url);
    let mut lan_addrs = vec![format!("127.0.0.1:{http_port}")];
    lan_addrs.extend(
        local_non_loopback_ipv4()
            .into_iter()
            .map(|ip| format!("{ip}:{http_port}")),
    );
    let token = Daemon::api_token(&ipnix);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut refused = 0;
    for (i, addr) in lan_addrs.iter().enumerate() {
        // The gateway answers there...
        let (status, body) = raw_request(
            addr,
            "GET",
            &format!("/ipfs/{cid}?format=raw"),
            &[("host", addr.clone())],
        );
        assert_eq!(status, 200, "gateway on {addr}");
        assert_eq!(body, b"served to the LAN, written only from loopback\n");
        // ...the control API does not, even with the owner's token.
        let target = dir.path().join(format!("lan-{i}"));
        let (status, body) = get_request(
            addr,
            &format!("127.0.0.1:{http_port}"),
            &cid,
            &target,
            &[("authorization", format!("Bearer {token}"))],
        );
        assert!(
            status == 404 || status == 403,
            "a write through {addr} answered {status}: {body}"
        );
        assert!(!target.exists(), "a write through {addr} wrote a file");
        refused += 1;
    }
    println!(
        "writes refused on the LAN listener: {refused} of {} addresses ({lan_addrs:?})",
        lan_addrs.len()
    );
    assert!(daemon.stop());
}

#[test]
fn the_control_api_listens_only_on_loopback() {
    let ipnix = Ipnix::new();
    for api in ["0.0.0.0:0", "192.0.2.1:4880", "[::]:0"] {
        let args = [
            "daemon",
            "--no-mdns",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--http",
            "127.0.0.1:0",
            "--api",
            api,
        ];
        let out = ipnix
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ipnix runs");
        let err = assert_clean_failure(&out, &args);
        assert!(
            err.contains("--api") && err.contains("loopback"),
            "--api {api}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!ipnix.repo_path().join("api").exists());
    }
    // A loopback --http beside an explicit --api: two listeners, and the
    // --http one serves no control API either.
    let daemon = Daemon::start(&ipnix, &["--api", "127.0.0.1:0"]);
    assert_ne!(daemon.url, daemon.api_url);
    let cid = add(&ipnix, b"y\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("via-http");
    let (status, _) = get_request(
        &authority(&daemon.url),
        &authority(&daemon.url),
        &cid,
        &target,
        &[(
            "authorization",
            format!("Bearer {}", Daemon::api_token(&ipnix)),
        )],
    );
    assert_eq!(status, 404);
    assert!(!target.exists());
    assert!(daemon.stop());
}

/// IPv4 addresses of this host's non-loopback interfaces (none inside the
/// test sandbox's loopback-only namespace). Read from `ip`, which only reads
/// the kernel's tables.
fn local_non_loopback_ipv4() -> Vec<String> {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            fields.find(|f| *f == "inet")?;
            let ip = fields.next()?.split('/').next()?.to_string();
            (!ip.starts_with("127.")).then_some(ip)
        })
        .collect()
}
