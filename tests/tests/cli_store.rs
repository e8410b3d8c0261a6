//! The `ipnix` CLI on its own repo, offline: init, add/cat/get, block, pin,
//! gc, repo stat, dag export/import, --json, and clean errors on bad input.

use ipnix_store::test_util::pseudo_random;
use ipnix_tests::cli::Ipnix;
use std::path::Path;

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, data).expect("write");
}

#[test]
fn init_twice_is_refused_and_id_works_offline() {
    let ipnix = Ipnix::new();
    let out = ipnix.ok(&["init", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let peer = v["peer_id"].as_str().expect("peer id").to_string();
    let err = ipnix.fails(&["init"]);
    assert!(err.contains("already initialised"), "{err}");
    let id: serde_json::Value = serde_json::from_str(&ipnix.ok(&["id", "--json"])).expect("json");
    assert_eq!(id["peer_id"].as_str(), Some(peer.as_str()));
}

#[test]
fn add_cat_get_file_round_trip_with_both_profiles() {
    let ipnix = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = pseudo_random(7, 3 * 1024 * 1024 + 17);
    let file = dir.path().join("data.bin");
    write(&file, &data);
    for profile in ["unixfs-v1-2025", "unixfs-v0-2015"] {
        let cid = ipnix.ok(&[
            "add",
            "-Q",
            "--profile",
            profile,
            file.to_str().expect("utf-8"),
        ]);
        let cid = cid.trim();
        if profile == "unixfs-v0-2015" {
            assert!(cid.starts_with("Qm"), "v0 profile gives CIDv0: {cid}");
        } else {
            assert!(cid.starts_with("bafy"), "v1 profile gives CIDv1: {cid}");
        }
        assert_eq!(ipnix.ok_bytes(&["cat", cid]), data);
        let out = dir.path().join(format!("got-{profile}"));
        ipnix.ok(&["get", cid, "-o", out.to_str().expect("utf-8")]);
        assert_eq!(std::fs::read(&out).expect("read"), data);
    }
}

#[test]
fn add_reads_stdin_and_reports_json() {
    let ipnix = Ipnix::new();
    let out = ipnix.run_with_stdin(&["add", "--json", "-"], b"hello from stdin\n");
    ipnix_tests::cli::assert_success(&out, &["add", "--json", "-"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cid = v["cid"].as_str().expect("cid");
    assert_eq!(ipnix.ok_bytes(&["cat", cid]), b"hello from stdin\n");
}

#[test]
fn add_directory_needs_r_and_get_restores_the_tree() {
    let ipnix = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    write(&tree.join("a.txt"), b"alpha\n");
    write(&tree.join("sub/b.bin"), &pseudo_random(3, 300_000));
    write(&tree.join("sub/deeper/empty"), b"");
    let err = ipnix.fails(&["add", tree.to_str().expect("utf-8")]);
    assert!(err.contains("-r"), "{err}");
    let cid = ipnix.ok(&["add", "-r", "-Q", tree.to_str().expect("utf-8")]);
    let out = dir.path().join("restored");
    ipnix.ok(&["get", cid.trim(), "-o", out.to_str().expect("utf-8")]);
    assert_eq!(std::fs::read(out.join("a.txt")).expect("a"), b"alpha\n");
    assert_eq!(
        std::fs::read(out.join("sub/b.bin")).expect("b"),
        pseudo_random(3, 300_000)
    );
    assert_eq!(
        std::fs::read(out.join("sub/deeper/empty")).expect("empty"),
        b""
    );
}

#[test]
fn block_put_get_stat_rm() {
    let ipnix = Ipnix::new();
    let out = ipnix.run_with_stdin(&["block", "put"], b"a raw block");
    ipnix_tests::cli::assert_success(&out, &["block", "put"]);
    let cid = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(cid.starts_with("bafk"), "raw CIDv1: {cid}");
    assert_eq!(ipnix.ok_bytes(&["block", "get", &cid]), b"a raw block");
    let stat = ipnix.ok(&["block", "stat", &cid]);
    assert!(stat.contains("Size: 11"), "{stat}");
    ipnix.ok(&["block", "rm", &cid]);
    let err = ipnix.fails(&["block", "get", &cid]);
    assert!(err.contains("not in the store"), "{err}");
}

#[test]
fn pinned_blocks_survive_gc_and_unpinned_ones_do_not() {
    let ipnix = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let kept = dir.path().join("kept");
    let dropped = dir.path().join("dropped");
    write(&kept, &pseudo_random(1, 2_500_000));
    write(&dropped, &pseudo_random(2, 2_500_000));
    let kept_cid = ipnix
        .ok(&["add", "-Q", kept.to_str().expect("utf-8")])
        .trim()
        .to_string();
    let dropped_cid = ipnix
        .ok(&["add", "-Q", "--pin=false", dropped.to_str().expect("utf-8")])
        .trim()
        .to_string();
    let pins = ipnix.ok(&["pin", "ls"]);
    assert!(
        pins.contains(&kept_cid) && !pins.contains(&dropped_cid),
        "{pins}"
    );
    let gc: serde_json::Value = serde_json::from_str(&ipnix.ok(&["gc", "--json"])).expect("json");
    assert!(gc["blocks_removed"].as_u64().expect("count") >= 3, "{gc}");
    assert_eq!(
        ipnix.ok_bytes(&["cat", &kept_cid]),
        pseudo_random(1, 2_500_000)
    );
    ipnix.fails(&["cat", &dropped_cid]);
    // Unpinned, the rest goes too.
    ipnix.ok(&["pin", "rm", &kept_cid]);
    ipnix.ok(&["gc"]);
    ipnix.fails(&["cat", &kept_cid]);
    let stat: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["repo", "stat", "--json"])).expect("json");
    assert_eq!(stat["blocks"].as_u64(), Some(0), "{stat}");
}

#[test]
fn pinned_block_cannot_be_removed() {
    let ipnix = Ipnix::new();
    let out = ipnix.run_with_stdin(&["add", "-Q", "-"], b"keep me");
    let cid = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    let err = ipnix.fails(&["block", "rm", &cid]);
    assert!(err.contains("pinned"), "{err}");
}

#[test]
fn dag_export_import_round_trip_into_another_repo() {
    let a = Ipnix::new();
    let b = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let tree = dir.path().join("tree");
    write(&tree.join("x"), &pseudo_random(9, 1_500_000));
    write(&tree.join("y/z"), b"zed");
    let cid = a
        .ok(&["add", "-r", "-Q", tree.to_str().expect("utf-8")])
        .trim()
        .to_string();
    let car = a.ok_bytes(&["dag", "export", &cid]);
    let car_path = dir.path().join("x.car");
    std::fs::write(&car_path, &car).expect("write car");
    let out = b.ok(&["dag", "import", car_path.to_str().expect("utf-8")]);
    assert!(out.contains(&cid), "{out}");
    assert!(b.ok(&["pin", "ls"]).contains(&cid));
    assert_eq!(
        b.ok_bytes(&["dag", "export", &cid]),
        car,
        "export is deterministic"
    );
}

#[test]
fn corrupted_car_is_refused_whole_and_pins_nothing() {
    let a = Ipnix::new();
    let b = Ipnix::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("f");
    write(&file, &pseudo_random(5, 3_000_000));
    let cid = a
        .ok(&["add", "-Q", file.to_str().expect("utf-8")])
        .trim()
        .to_string();
    let mut car = a.ok_bytes(&["dag", "export", &cid]);
    let at = car.len() / 2;
    car[at] ^= 0xff;
    let car_path = dir.path().join("bad.car");
    std::fs::write(&car_path, &car).expect("write car");
    let err = b.fails(&["dag", "import", car_path.to_str().expect("utf-8")]);
    assert!(
        err.to_lowercase().contains("match") || err.contains("hash"),
        "{err}"
    );
    assert_eq!(b.ok(&["pin", "ls"]).trim(), "", "nothing pinned");
    b.ok(&["gc"]);
    let stat: serde_json::Value =
        serde_json::from_str(&b.ok(&["repo", "stat", "--json"])).expect("json");
    assert_eq!(stat["blocks"].as_u64(), Some(0), "{stat}");
}

#[test]
fn bad_input_gets_one_clear_line_and_no_panic() {
    let ipnix = Ipnix::new();
    for args in [
        vec!["cat", "not-a-cid"],
        vec![
            "cat",
            "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        ],
        vec!["block", "get", "Qm123"],
        vec!["get", "zzz", "-o", "/tmp/ipnix-never"],
        vec!["add", "/definitely/not/here"],
        vec!["add", "--profile", "unixfs-v9", "/etc/hostname"],
        vec![
            "pin",
            "add",
            "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
        ],
        vec!["block", "put", "--cid-codec", "nope", "/etc/hostname"],
        vec!["dag", "import", "/definitely/not/here.car"],
        vec!["peers"],
    ] {
        let err = ipnix.fails(&args);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?} gave more than one line: {err}"
        );
    }
}
