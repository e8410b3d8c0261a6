//! The CLI's finish: `ipnix peers` names each peer once as a dialable
//! `/ip4/…/tcp/…/p2p/<id>` (from both ends of a connection), shell
//! completions that the shells accept, manual pages that `man` renders,
//! `ipnix config` round trips and the daemon honouring it (flags winning),
//! and an "Examples:" block in every command's `--help`.

use ipnix_tests::cli::{Daemon, Ipnix};
use std::io::BufRead;
use std::process::{Command, Stdio};

fn tcp_addr(ipnix: &Ipnix) -> String {
    let id: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["id", "--json"])).expect("id json");
    id["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.contains("/tcp/") && a.contains("127.0.0.1"))
        .expect("a loopback tcp address")
        .to_string()
}

fn peer_id(ipnix: &Ipnix) -> String {
    ipnix
        .ok(&["id"])
        .lines()
        .next()
        .expect("peer id")
        .to_string()
}

fn tool(name: &str) -> bool {
    Command::new("which")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn peers_are_listed_once_each_as_a_dialable_address() {
    let a = Ipnix::new();
    let b = Ipnix::new();
    let _da = Daemon::start(&a, &[]);
    let _db = Daemon::start(&b, &[]);
    // B dials A: B's connection address already ends in /p2p/<A>; A's
    // (the listener's) has no /p2p/ of its own.
    let dialled = tcp_addr(&a);
    b.ok(&["connect", &dialled]);
    for (me, other) in [(&b, &a), (&a, &b)] {
        let other_id = peer_id(other);
        let out = me.ok(&["peers"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "one connected peer, one line: {out}");
        let line = lines[0];
        assert!(line.starts_with("/ip4/127.0.0.1/tcp/"), "{line}");
        assert!(line.ends_with(&format!("/p2p/{other_id}")), "{line}");
        assert_eq!(line.matches("/p2p/").count(), 1, "{line}");
        assert_eq!(line.matches(&other_id).count(), 1, "{line}");
        let json: serde_json::Value =
            serde_json::from_str(&me.ok(&["peers", "--json"])).expect("json");
        assert_eq!(json["peers"][0]["addr"], line, "{json}");
    }
    // What B prints for A dials A.
    assert_eq!(b.ok(&["peers"]).trim(), dialled);
    let c = Ipnix::new();
    let _dc = Daemon::start(&c, &[]);
    let line = b.ok(&["peers"]).trim().to_string();
    c.ok(&["connect", &line]);
    assert!(c.ok(&["peers"]).contains(&peer_id(&a)));
}

#[test]
fn completions_are_scripts_the_shells_accept() {
    let ipnix = Ipnix::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = ipnix.ok(&["completions", shell]);
        assert!(script.len() > 1000, "{shell}: {} bytes", script.len());
        assert!(script.contains("ipnix"), "{shell}");
        for word in ["sources", "config", "completions"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
        if !tool(shell) {
            eprintln!("{shell} is not installed: its script is not syntax-checked");
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join(format!("ipnix.{shell}"));
        std::fs::write(&file, &script).expect("write");
        let out = Command::new(shell)
            .arg("-n")
            .arg(&file)
            .output()
            .expect("shell runs");
        assert!(
            out.status.success(),
            "{shell} -n rejects the script: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let err = ipnix.fails(&["completions", "tcsh"]);
    assert!(err.contains("bash"), "{err}");
}

#[test]
fn manual_pages_render() {
    let ipnix = Ipnix::new();
    let page = ipnix.ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains("\n.TH "),
        "roff: {page:.200}"
    );
    assert!(page.contains("ipnix"));
    let dir = tempfile::tempdir().expect("tempdir");
    let listed = ipnix.ok(&["man", "-o", dir.path().to_str().expect("utf-8")]);
    let files: Vec<&str> = listed.lines().collect();
    for name in [
        "ipnix.1",
        "ipnix-daemon.1",
        "ipnix-nix-import.1",
        "ipnix-sources-pin.1",
        "ipnix-config-set.1",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(&format!("/{name}"))),
            "{name} written: {listed}"
        );
        assert!(dir.path().join(name).exists(), "{name} on disk");
    }
    if !tool("man") {
        ipnix_tests::peers::skip("manual_pages_render", "`man` is not installed");
        return;
    }
    for name in ["ipnix.1", "ipnix-daemon.1", "ipnix-config-set.1"] {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.path().join(name))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .stdin(Stdio::null())
            .output()
            .expect("man runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "man -l {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("NAME") && text.contains("SYNOPSIS"),
            "{name}: {text:.500}"
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "{name}"
        );
    }
}

/// Starts `ipnix daemon` with only `extra` flags (no --http, --listen or
/// --no-mdns of the harness: the repo's config supplies them) and returns
/// it with the HTTP URL it printed.
fn daemon_from_config(ipnix: &Ipnix, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = ipnix
        .command()
        .arg("daemon")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("daemon starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line.expect("banner line");
        if line.starts_with("HTTP (") {
            url = line.rsplit_once(" on ").map(|(_, u)| u.trim().to_string());
        }
        if line.contains("daemon is ready") {
            break;
        }
    }
    // Keep reading, so the daemon's last lines find an open pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url.expect("the daemon printed its HTTP address"))
}

fn stop(mut child: std::process::Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

#[test]
fn config_round_trips_and_the_daemon_uses_it() {
    let ipnix = Ipnix::new();
    let show: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["config", "show"])).expect("config show is JSON");
    assert_eq!(show["Addresses"]["HTTP"], "127.0.0.1:4880", "{show}");
    assert_eq!(show["Discovery"]["MDNS"]["Enabled"], true, "{show}");
    let keys = ipnix.ok(&["config", "keys"]);
    assert!(
        keys.contains("Addresses.HTTP") && keys.contains("--http"),
        "{keys}"
    );

    // A free loopback port for the config to name.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let http = format!("127.0.0.1:{port}");
    for (key, value) in [
        ("Addresses.HTTP", http.as_str()),
        ("Addresses.Swarm", "/ip4/127.0.0.1/tcp/0"),
        ("Discovery.MDNS.Enabled", "false"),
        ("Timeouts.FetchSecs", "7"),
    ] {
        ipnix.ok(&["config", "set", key, value]);
    }
    let show: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["config", "show"])).expect("json");
    assert_eq!(show["Addresses"]["HTTP"], http.as_str());
    assert_eq!(show["Addresses"]["Swarm"][0], "/ip4/127.0.0.1/tcp/0");
    assert_eq!(show["Discovery"]["MDNS"]["Enabled"], false);
    assert_eq!(show["Timeouts"]["FetchSecs"], 7);
    assert_eq!(
        ipnix.ok(&["config", "get", "Timeouts.FetchSecs"]).trim(),
        "7"
    );
    let on_disk = std::fs::read_to_string(ipnix.repo_path().join("config")).expect("REPO/config");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&on_disk).expect("json"),
        show
    );

    // Bad input: refused, nothing changed.
    for (key, value) in [
        ("Addresses.HTTP", "not-an-address"),
        ("Addresses.API", "0.0.0.0:5001"),
        ("Discovery.MDNS.Enabled", "maybe"),
        ("Nope", "1"),
    ] {
        let err = ipnix.fails(&["config", "set", key, value]);
        assert!(err.contains(key) || err.contains("unknown"), "{err}");
    }
    assert_eq!(
        std::fs::read_to_string(ipnix.repo_path().join("config")).expect("config"),
        on_disk
    );

    // The daemon takes its HTTP address from the config...
    let (child, url) = daemon_from_config(&ipnix, &[]);
    assert_eq!(url, format!("http://{http}"));
    // ...and `config` works beside it (no store needed).
    assert!(ipnix.ok(&["config", "show"]).contains(&http));
    stop(child);
    // A flag wins over the setting.
    let (child, url) = daemon_from_config(&ipnix, &["--http", "127.0.0.1:0"]);
    assert_ne!(url, format!("http://{http}"));
    stop(child);

    // A hand-broken file is a clear error, not a default.
    std::fs::write(ipnix.repo_path().join("config"), "{\"Adresses\": {}}").expect("write");
    let err = ipnix.fails(&["config", "show"]);
    assert!(err.contains("config"), "{err}");
}

/// The subcommands a `--help` lists under "Commands:" (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() || !line.starts_with("  ") {
                break;
            }
            let name = line.split_whitespace().next().expect("a name");
            if name != "help" {
                out.push(name.to_string());
            }
        }
    }
    out
}

#[test]
fn every_command_has_examples_in_its_help() {
    let ipnix = Ipnix::new();
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    let mut missing = Vec::new();
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let help = ipnix.ok(&args);
        seen += 1;
        if !help.contains("Examples:") {
            missing.push(path.join(" "));
        }
        for sub in subcommands(&help) {
            let mut next = path.clone();
            next.push(sub);
            todo.push(next);
        }
    }
    assert!(seen > 40, "walked {seen} commands");
    assert!(
        missing.is_empty(),
        "no Examples: in the --help of: ipnix {}",
        missing.join(", ipnix ")
    );
}
