//! The Kubo RPC API (`ipnix daemon --rpc`) driven by what people drive Kubo
//! with: the real `kubo-rpc-client` from npm (tests/rpc/client.mjs: add with
//! Kubo's options, cat, get, block, dag export/import, pin, refs, repo,
//! swarm connect to a second ipnix daemon, routing/findprovs) and a curl
//! script (tests/rpc/curl.sh: status codes and Kubo's error shape for an
//! unknown command, GET, a missing argument, a malformed CID, a foreign
//! Origin or Host, an oversized multipart body, with nothing pinned after).
//!
//! CIDs: every add is checked against the same bytes imported by
//! ipnix-store with the same parameters, and, when Kubo 0.22 can run here
//! (`../shared/peers/setup-peers.sh`, inside the sandbox or with
//! IPNIX_ALLOW_LOOPBACK=1), the default-option adds (file, larger file,
//! directory tree) against Kubo's own `ipfs add` of the same files.
//!
//! Needs node >= 20 and `tests/setup-rpc-client.sh` (kubo-rpc-client in
//! ~/.cache/ipnix-rpc-client); otherwise each test prints `SKIP: <reason>`.

use anyhow::{bail, Context, Result};
use ipnix_store::unixfs::{add_file, add_path, Params, Profile};
use ipnix_store::NullBlocks;
use ipnix_tests::cli::{Daemon, Ipnix};
use ipnix_tests::peers::{self, write_pseudo_random_file, KuboOptions, KuboPeer};
use ipnix_tests::skip_if;
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The daemon's cap on request bodies in these tests.
const MAX_BODY: u64 = 4 << 20;

/// Where tests/setup-rpc-client.sh installed kubo-rpc-client.
fn client_home() -> PathBuf {
    if let Some(home) = std::env::var_os("IPNIX_RPC_CLIENT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/ipnix-rpc-client")
}

fn client_missing() -> Option<String> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("node is not installed (Node.js >= 20)".into()),
    }
    let module = client_home().join("node_modules/kubo-rpc-client");
    if !module.exists() {
        return Some(format!(
            "kubo-rpc-client is not installed at {} (run tests/setup-rpc-client.sh)",
            module.display()
        ));
    }
    None
}

fn curl_missing() -> Option<String> {
    for tool in ["curl", "python3"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

/// A daemon with the RPC listener on a free loopback port; its RPC URL.
fn start(ipnix: &Ipnix) -> (Daemon, String) {
    let max = MAX_BODY.to_string();
    let daemon = Daemon::start(ipnix, &["--rpc", "127.0.0.1:0", "--rpc-max-body", &max]);
    let url = daemon
        .banner
        .iter()
        .find_map(|line| line.strip_prefix("Kubo RPC API (loopback only) on "))
        .map(|url| url.trim().trim_end_matches("/api/v0").to_string())
        .unwrap_or_else(|| panic!("no Kubo RPC line in {:?}", daemon.banner));
    (daemon, url)
}

fn rpc_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rpc")
}

fn cid_of_file(path: &Path, params: &Params) -> Result<String> {
    let file = fs::File::open(path).with_context(|| format!("opening {path:?}"))?;
    Ok(
        add_file(&mut NullBlocks, std::io::BufReader::new(file), params)?
            .cid
            .to_string(),
    )
}

fn kubo_defaults() -> Params {
    Profile::V0_2015.params()
}

fn params(cid_version: u8, raw_leaves: bool, chunk_size: usize) -> Params {
    Params {
        cid_version,
        raw_leaves,
        chunk_size,
        max_links: 174,
    }
}

/// The files client.mjs adds.
fn make_work_dir(dir: &Path) -> Result<()> {
    write_pseudo_random_file(&dir.join("small.bin"), 7, 3000)?;
    // Six 256 KiB chunks: a two-level file in Kubo's default layout.
    write_pseudo_random_file(&dir.join("big.bin"), 8, 1_500_000)?;
    let tree = dir.join("tree");
    fs::create_dir_all(tree.join("sub"))?;
    fs::create_dir_all(tree.join("empty"))?;
    fs::write(tree.join("one.txt"), "one\n")?;
    fs::write(tree.join("sub/two.txt"), "two\n")?;
    fs::write(tree.join("sub/empty.txt"), "")?;
    Ok(())
}

fn run_client(url: &str, work: &Path, peer: Option<(&str, &str)>) -> Result<Value> {
    // ES modules resolve packages next to the script, not through NODE_PATH.
    let script = client_home().join("client.mjs");
    fs::copy(rpc_dir().join("client.mjs"), &script).context("copying client.mjs")?;
    let mut command = Command::new("node");
    command.arg(&script).arg(url).arg(work);
    if let Some((peer, remote_cid)) = peer {
        command.arg(peer).arg(remote_cid);
    }
    let out = command.output().context("running node")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "client.mjs stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("client.mjs failed ({}): {stdout}", out.status);
    }
    serde_json::from_str(stdout.trim()).with_context(|| format!("client.mjs printed {stdout}"))
}

fn field<'v>(results: &'v Value, step: &str) -> &'v Value {
    let value = &results[step];
    assert!(
        value.get("error").is_none(),
        "{step} failed through kubo-rpc-client: {value}"
    );
    value
}

#[test]
fn kubo_rpc_client_round_trips_with_kubos_cids() -> Result<()> {
    let test = "kubo_rpc_client_round_trips_with_kubos_cids";
    skip_if!(test, client_missing());
    let work = tempfile::tempdir()?;
    make_work_dir(work.path())?;
    let ipnix = Ipnix::new();
    let (_daemon, url) = start(&ipnix);
    let other = Ipnix::new();
    let other_daemon = Daemon::start(&other, &["--rpc", "off"]);
    let other_addr = other_daemon
        .banner
        .iter()
        .find_map(|l| l.strip_prefix("swarm listening on "))
        .context("second daemon's address")?
        .trim()
        .to_string();
    let other_id = other_addr
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    // Content only the second daemon holds: routing/findprovs must find it there.
    let remote = work.path().join("remote.bin");
    write_pseudo_random_file(&remote, 9, 5000)?;
    let added = other.ok(&["add", remote.to_str().context("UTF-8 path")?]);
    let remote_cid = added
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("`ipnix add` printed {added:?}"))?
        .to_string();

    let results = run_client(&url, work.path(), Some((&other_addr, &remote_cid)))?;
    eprintln!("kubo-rpc-client results: {results:#}");

    // add: the CIDs Kubo makes for these options (checked against Kubo's
    // own add below, and against ipnix-store's importer here).
    let small = work.path().join("small.bin");
    let big = work.path().join("big.bin");
    let tree = work.path().join("tree");
    let default_small = cid_of_file(&small, &kubo_defaults())?;
    let default_big = cid_of_file(&big, &kubo_defaults())?;
    assert_eq!(
        field(&results, "add_default")["cid"],
        default_small.as_str()
    );
    assert_eq!(field(&results, "add_default")["path"], "small.bin");
    assert_eq!(
        field(&results, "add_big_default")["cid"],
        default_big.as_str()
    );
    let progress = field(&results, "add_big_default");
    assert!(
        progress["progress_events"].as_u64().unwrap_or(0) >= 2,
        "{progress}"
    );
    assert_eq!(progress["progress_last"], 1_500_000);
    // --cid-version=1 implies raw leaves, as in Kubo.
    assert_eq!(
        field(&results, "add_big_v1").as_str(),
        Some(cid_of_file(&big, &params(1, true, 256 << 10))?.as_str())
    );
    assert_eq!(
        field(&results, "add_big_v1_dagpb_leaves").as_str(),
        Some(cid_of_file(&big, &params(1, false, 256 << 10))?.as_str())
    );
    assert_eq!(
        field(&results, "add_big_chunker").as_str(),
        Some(cid_of_file(&big, &params(0, true, 65536))?.as_str())
    );
    let tree_added = field(&results, "add_tree")
        .as_array()
        .context("add_tree is a list")?;
    let tree_cid = add_path(&mut NullBlocks, &tree, &kubo_defaults())?
        .cid
        .to_string();
    let root = tree_added
        .iter()
        .find(|r| r["path"] == "tree")
        .context("add_tree has the root")?;
    assert_eq!(root["cid"], tree_cid.as_str(), "{tree_added:?}");
    // Kubo's order: files as they are added, then directories, children first.
    assert_eq!(
        tree_added.last().map(|r| &r["path"]),
        Some(&Value::from("tree"))
    );
    let wrapped = field(&results, "add_wrapped").as_array().context("list")?;
    assert_eq!(wrapped.last().map(|r| &r["path"]), Some(&Value::from("")));

    // Reads and round trips.
    let cat = field(&results, "cat");
    assert_eq!(cat["sha256"], cat["expected"]);
    assert_eq!(cat["length"], 1_500_000);
    assert_eq!(field(&results, "cat_range")["same"], true);
    let names: Vec<&str> = field(&results, "get")["names"]
        .as_array()
        .context("names")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "",
        "/one.txt",
        "/sub",
        "/sub/two.txt",
        "/sub/empty.txt",
        "/empty",
    ] {
        let name = format!("{tree_cid}{expected}");
        assert!(
            names.contains(&name.as_str()),
            "get's tar lacks {name}: {names:?}"
        );
    }
    let block = field(&results, "block");
    assert_eq!(block["same"], true);
    assert_eq!(block["size"], 33);
    assert_eq!(
        field(&results, "dag_round_trip")["roots"][0],
        default_big.as_str()
    );
    let pins = field(&results, "pins");
    assert_eq!(pins["direct"][0]["type"], "direct");
    assert!(
        pins["recursive"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| c == default_small.as_str())),
        "the add's pin is listed as added (CIDv0): {pins}"
    );
    assert!(pins["after_rm"]
        .as_str()
        .unwrap_or_default()
        .contains("not pinned"));
    let refs = field(&results, "refs");
    // big.bin in Kubo's layout: one root linking six leaves.
    assert_eq!(refs["count"], 6, "{refs}");
    assert_eq!(refs["errors"], 0);
    let stat = field(&results, "repo_stat");
    assert!(stat["repoSize"].as_u64().unwrap_or(0) > 1_500_000, "{stat}");
    assert!(stat["storageMax"].as_u64() >= stat["repoSize"].as_u64());
    let gc = field(&results, "repo_gc");
    assert!(
        gc["removed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|c| *c == gc["loose"])),
        "repo/gc names the unpinned block it removed: {gc}"
    );
    let swarm = field(&results, "swarm_connect");
    assert!(
        swarm["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|id| id == other_id.as_str())),
        "swarm/peers lists the peer swarm/connect reached: {swarm}"
    );
    let providers = field(&results, "findprovs");
    assert!(
        providers
            .as_array()
            .is_some_and(|p| p.iter().any(|id| id == other_id.as_str())),
        "routing/findprovs finds the peer holding {remote_cid}: {providers}"
    );

    // The same files through Kubo 0.22's own add (its defaults).
    if let Some(reason) = peers::kubo_unusable() {
        peers::skip(&format!("{test} (Kubo CID comparison)"), &reason);
        return Ok(());
    }
    let mut kubo = KuboPeer::start(KuboOptions::default())?;
    for (what, path, ours) in [
        ("small file", &small, &default_small),
        ("1.5 MB file", &big, &default_big),
        ("directory tree", &tree, &tree_cid),
    ] {
        let from_kubo = kubo.add(path)?;
        eprintln!("{what}: Kubo {from_kubo}, ipnix RPC {ours}");
        assert_eq!(
            &from_kubo, ours,
            "{what}: Kubo's add and the RPC add differ"
        );
    }
    Ok(())
}

#[test]
fn curl_script_status_codes_errors_and_limits() -> Result<()> {
    let test = "curl_script_status_codes_errors_and_limits";
    skip_if!(test, curl_missing());
    let ipnix = Ipnix::new();
    let (_daemon, url) = start(&ipnix);
    let work = tempfile::tempdir()?;
    // `printf 'hello from curl\n' | ipfs add` in Kubo's defaults.
    let hello = work.path().join("hello-source.txt");
    fs::write(&hello, "hello from curl\n")?;
    fs::write(
        work.path().join("expected-hello-cid"),
        cid_of_file(&hello, &kubo_defaults())?,
    )?;
    let out = Command::new("bash")
        .arg(rpc_dir().join("curl.sh"))
        .arg(&url)
        .arg(work.path())
        .arg(MAX_BODY.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "curl.sh failed:\n{stdout}");
    Ok(())
}

#[test]
fn default_port_taken_starts_without_rpc_and_explicit_port_taken_fails() {
    // Hold a loopback port, then ask for it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").to_string();
    let ipnix = Ipnix::new();
    let out = ipnix.run(&[
        "daemon",
        "--http",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--rpc",
        &taken,
    ]);
    assert!(
        !out.status.success(),
        "a daemon started on a taken --rpc address"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&taken),
        "the error names the address: {stderr}"
    );
    let out = ipnix.run(&["daemon", "--rpc", "0.0.0.0:5001"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("loopback"),
        "a LAN-facing --rpc is refused"
    );
}
