//! `ipnix nix import|export|info` against the real Nix 2.8 and git: a small
//! signed closure built without nixpkgs is imported from the local store and
//! from binary caches (file:// with every compression this Nix writes, and
//! http:// served by python), exported back byte for byte (NAR and tree),
//! and its SWHIDs are checked against `git write-tree` / `git hash-object`.

use ipnix_tests::cli::Ipnix;
use ipnix_tests::nix::{git_blob_id, git_write_tree, read, Closure, NixLab, StaticServer};
use std::collections::HashMap;

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// `path -> path-info CID` from `ipnix nix import --json` output.
fn imported(text: &str) -> HashMap<String, String> {
    json_lines(text)
        .into_iter()
        .map(|v| {
            (
                v["path"].as_str().expect("path").to_string(),
                v["pathinfo"].as_str().expect("pathinfo").to_string(),
            )
        })
        .collect()
}

/// Every path's NAR from ipnix equals `nix-store --dump`.
fn assert_nars_equal(lab: &NixLab, ipnix: &Ipnix, closure: &Closure) {
    for path in &closure.all {
        let file = lab.path(&format!("export-{}.nar", &path[11..43]));
        ipnix.ok(&[
            "nix",
            "export",
            path,
            "--nar",
            file.to_str().expect("utf-8"),
        ]);
        assert!(
            read(&file) == lab.dump(path),
            "NAR of {path} differs from nix-store --dump"
        );
        std::fs::remove_file(&file).expect("rm");
    }
}

#[test]
fn import_export_info_round_trip() {
    let Some(lab) = NixLab::new("import_export_info_round_trip") else {
        return;
    };
    let closure = lab.build_closure();
    let key = lab.gen_key("e2e-test-1");
    lab.sign(&key, &[closure.top.as_str()]);
    let ipnix = Ipnix::new();

    // Without --closure, the references must already be imported.
    let err = ipnix.fails(&["nix", "import", &closure.top]);
    assert!(
        err.contains("--closure") && err.contains("not imported"),
        "{err}"
    );

    let out = ipnix.ok(&["--json", "nix", "import", "--closure", &closure.top]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), closure.all.len(), "one line per path: {out}");
    let order: Vec<&str> = lines
        .iter()
        .map(|v| v["path"].as_str().expect("path"))
        .collect();
    assert_eq!(
        order.last(),
        Some(&closure.top.as_str()),
        "dependencies first: {order:?}"
    );
    assert!(lines.iter().all(|v| v["status"] == "imported"), "{out}");
    let cids = imported(&out);

    // Byte-identical NARs, to a file and to stdout.
    assert_nars_equal(&lab, &ipnix, &closure);
    assert!(
        ipnix.ok_bytes(&["nix", "export", &closure.top, "--nar", "-"]) == lab.dump(&closure.top)
    );
    // By hash part and by path-info CID too.
    let hash_part = &closure.a[11..43];
    assert!(ipnix.ok_bytes(&["nix", "export", hash_part, "--nar", "-"]) == lab.dump(&closure.a));
    assert!(
        ipnix.ok_bytes(&["nix", "export", &cids[&closure.big], "--nar", "-"])
            == lab.dump(&closure.big)
    );

    // The materialised tree is the same tree (names, contents, modes, symlinks).
    let dir = lab.path("tree");
    ipnix.ok(&[
        "nix",
        "export",
        &closure.top,
        "--dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(
        lab.dump(dir.to_str().expect("utf-8")) == lab.dump(&closure.top),
        "tree differs"
    );
    assert_eq!(
        std::fs::read_link(dir.join("link-to-a"))
            .expect("symlink kept")
            .to_str(),
        Some(closure.a.as_str())
    );
    let err = ipnix.fails(&[
        "nix",
        "export",
        &closure.top,
        "--dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert!(err.contains("exists"), "{err}");
    let file_root = lab.path("a-file");
    ipnix.ok(&[
        "nix",
        "export",
        &closure.a,
        "--dir",
        file_root.to_str().expect("utf-8"),
    ]);
    assert_eq!(read(&file_root), read(std::path::Path::new(&closure.a)));

    // info: SWHIDs equal git's ids; metadata as Nix has it.
    let info: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["--json", "nix", "info", &closure.top])).expect("json");
    assert_eq!(info["pathinfo"].as_str(), Some(cids[&closure.top].as_str()));
    let tree = git_write_tree(std::path::Path::new(&closure.top));
    assert_eq!(
        info["swhid"].as_str(),
        Some(format!("swh:1:dir:{tree}").as_str())
    );
    let nix_info = &lab.path_info(&[closure.top.as_str()])[0];
    let nar_size = nix_info["narSize"].as_u64().expect("narSize");
    assert_eq!(info["narSize"].as_u64(), Some(nar_size));
    let mut refs: Vec<String> = nix_info["references"]
        .as_array()
        .expect("refs")
        .iter()
        .map(|r| r.as_str().expect("str").to_string())
        .collect();
    refs.sort();
    let got_refs: Vec<String> = info["references"]
        .as_array()
        .expect("refs")
        .iter()
        .map(|r| r.as_str().expect("str").to_string())
        .collect();
    assert_eq!(got_refs, refs, "references include the self-reference");
    assert_eq!(info["selfReference"], true);
    for r in info["referenceInfos"].as_array().expect("referenceInfos") {
        let path = r["path"].as_str().expect("path");
        assert_eq!(
            r["pathinfo"].as_str(),
            Some(cids[path].as_str()),
            "reference links the path-info of {path}"
        );
    }
    let sigs = info["signatures"].as_array().expect("signatures");
    assert!(
        sigs.iter()
            .any(|s| s.as_str().is_some_and(|s| s.starts_with("e2e-test-1:"))),
        "{info}"
    );
    assert_eq!(info["deriver"], nix_info["deriver"]);
    let file_info: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["--json", "nix", "info", &closure.a])).expect("json");
    let blob = git_blob_id(&read(std::path::Path::new(&closure.a)));
    assert_eq!(
        file_info["swhid"].as_str(),
        Some(format!("swh:1:cnt:{blob}").as_str())
    );
    let dep_info: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["--json", "nix", "info", &closure.dep])).expect("json");
    assert_eq!(
        dep_info["ca"],
        lab.path_info(&[closure.dep.as_str()])[0]["ca"]
    );
    let big_info: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["--json", "nix", "info", &closure.big])).expect("json");
    assert_eq!(
        big_info["largeBlobs"], 1,
        "the 1.5 MB file is a large blob: {big_info}"
    );
    assert_eq!(
        big_info["swhid"].as_str(),
        Some(
            format!(
                "swh:1:dir:{}",
                git_write_tree(std::path::Path::new(&closure.big))
            )
            .as_str()
        )
    );
    let text = ipnix.ok(&["nix", "info", &closure.top]);
    assert!(
        text.contains(&format!("swh:1:dir:{tree}")) && text.contains(&cids[&closure.top]),
        "{text}"
    );

    // Imports are pinned under nix:<path>, and survive GC.
    let pins = ipnix.ok(&["--json", "pin", "ls"]);
    assert!(pins.contains(&format!("nix:{}", closure.top)), "{pins}");
    ipnix.ok(&["gc"]);
    assert_nars_equal(&lab, &ipnix, &closure);

    // Importing again skips everything.
    let again = json_lines(&ipnix.ok(&["--json", "nix", "import", "--closure", &closure.top]));
    assert!(
        again.iter().all(|v| v["status"] == "already-imported"),
        "{again:?}"
    );
    assert_eq!(
        imported(&ipnix.ok(&["--json", "nix", "import", &closure.top])),
        HashMap::from([(closure.top.clone(), cids[&closure.top].clone())])
    );
}

#[test]
fn clear_errors_for_bad_and_unknown_paths() {
    let Some(lab) = NixLab::new("clear_errors_for_bad_and_unknown_paths") else {
        return;
    };
    let ipnix = Ipnix::new();
    let unknown = "/nix/store/00000000000000000000000000000000-not-there";
    let err = ipnix.fails(&["nix", "info", unknown]);
    assert!(
        err.contains("not imported") && err.contains("ipnix nix import"),
        "{err}"
    );
    let err = ipnix.fails(&["nix", "export", unknown, "--nar", "-"]);
    assert!(err.contains("not imported"), "{err}");
    let err = ipnix.fails(&["nix", "import", unknown]);
    assert!(
        err.contains("nix") && err.contains("not-there"),
        "Nix's own complaint is passed on: {err}"
    );
    let err = ipnix.fails(&["nix", "import", "/etc/hostname"]);
    assert!(err.contains("not a store path"), "{err}");
    let err = ipnix.fails(&["nix", "import", "/nix/store/short-name"]);
    assert!(err.contains("not a store path"), "{err}");
    let err = ipnix.fails(&["nix", "info", "not-a-cid-or-path"]);
    assert!(err.contains("neither"), "{err}");
    let err = ipnix.fails(&["nix", "export", unknown]);
    assert!(
        err.contains("not imported") || err.contains("--nar"),
        "{err}"
    );
    let err = ipnix.fails(&[
        "nix",
        "import",
        "--from-cache",
        "ftp://example.invalid",
        unknown,
    ]);
    assert!(err.contains("ftp://"), "{err}");
    let empty_cache = lab.path("empty-cache");
    std::fs::create_dir_all(&empty_cache).expect("mkdir");
    std::fs::write(empty_cache.join("nix-cache-info"), "StoreDir: /nix/store\n").expect("write");
    let url = format!("file://{}", empty_cache.display());
    let err = ipnix.fails(&["nix", "import", "--from-cache", &url, unknown]);
    assert!(err.contains("not in the binary cache"), "{err}");
}

/// Imports the closure from a cache into a fresh repo and checks it.
fn import_from_cache_and_check(lab: &NixLab, closure: &Closure, url: &str, key_name: &str) {
    let ipnix = Ipnix::new();
    let out = ipnix.ok(&[
        "--json",
        "nix",
        "import",
        "--from-cache",
        url,
        "--closure",
        &closure.top,
    ]);
    let lines = json_lines(&out);
    let paths: Vec<&str> = lines
        .iter()
        .map(|v| v["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths.len(), closure.all.len(), "{out}");
    assert_eq!(
        paths.last(),
        Some(&closure.top.as_str()),
        "dependencies first: {paths:?}"
    );
    assert_nars_equal(lab, &ipnix, closure);
    let info: serde_json::Value =
        serde_json::from_str(&ipnix.ok(&["--json", "nix", "info", &closure.top])).expect("json");
    let sigs = info["signatures"].as_array().expect("signatures");
    assert!(
        sigs.iter().any(|s| s
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{key_name}:")))),
        "the cache's signature is kept: {info}"
    );
    // The same DAG as an import from the local store (the path-infos differ:
    // the cache signed the paths, the local store did not).
    let local = Ipnix::new();
    let local_lines =
        json_lines(&local.ok(&["--json", "nix", "import", "--closure", &closure.top]));
    for line in &lines {
        let twin = local_lines
            .iter()
            .find(|l| l["path"] == line["path"])
            .expect("same paths");
        assert_eq!(
            twin["root"], line["root"],
            "same content gives the same root CID"
        );
        assert_eq!(twin["narHash"], line["narHash"]);
    }
    // Again: nothing to do.
    let again = json_lines(&ipnix.ok(&[
        "--json",
        "nix",
        "import",
        "--from-cache",
        url,
        "--closure",
        &closure.top,
    ]));
    assert!(
        again.iter().all(|v| v["status"] == "already-imported"),
        "{again:?}"
    );
}

#[test]
fn import_from_file_caches_with_each_compression() {
    let Some(lab) = NixLab::new("import_from_file_caches_with_each_compression") else {
        return;
    };
    let closure = lab.build_closure();
    let key = lab.gen_key("file-cache-1");
    for compression in ["none", "xz", "bzip2", "zstd"] {
        let cache = lab.path(&format!("cache-{compression}"));
        let url = format!(
            "file://{}?compression={compression}&secret-key={}",
            cache.display(),
            key.secret_file.display()
        );
        let out = lab.run(
            "nix",
            &[
                "copy",
                "--to",
                &url,
                &closure.top,
                "--option",
                "substituters",
                "",
            ],
        );
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr);
            if compression == "none" || compression == "xz" {
                panic!("nix copy --to {url}: {why}");
            }
            eprintln!(
                "SKIP: compression {compression}: this Nix cannot write it: {}",
                why.trim()
            );
            continue;
        }
        import_from_cache_and_check(
            &lab,
            &closure,
            &format!("file://{}", cache.display()),
            &key.name,
        );
    }
}

#[test]
fn import_from_http_cache() {
    let Some(lab) = NixLab::new("import_from_http_cache") else {
        return;
    };
    let closure = lab.build_closure();
    let key = lab.gen_key("http-cache-1");
    let www = lab.path("www");
    lab.copy_to_file_cache(&www.join("cache"), "xz", &key, &closure.top);
    let Some(server) = StaticServer::start("import_from_http_cache", &www) else {
        return;
    };
    import_from_cache_and_check(&lab, &closure, &format!("{}/cache", server.url), &key.name);
    // A hash part works as the argument, too.
    let ipnix = Ipnix::new();
    let out = ipnix.ok(&[
        "nix",
        "import",
        "--from-cache",
        &format!("{}/cache", server.url),
        &closure.dep[11..43],
    ]);
    assert!(out.contains(&closure.dep), "{out}");
}

#[test]
fn tampered_cache_nar_is_refused_on_import() {
    let Some(lab) = NixLab::new("tampered_cache_nar_is_refused_on_import") else {
        return;
    };
    let closure = lab.build_closure();
    let key = lab.gen_key("tamper-1");
    let cache = lab.path("cache");
    lab.copy_to_file_cache(&cache, "none", &key, &closure.a);
    let narinfo_file = cache.join(format!("{}.narinfo", &closure.a[11..43]));
    let narinfo = String::from_utf8(read(&narinfo_file)).expect("utf-8");
    // Change the NAR hash (and the file hash, so only the NAR check can catch it).
    let fake = "sha256:1ya6fpxvwyhxvg4n2gdpwn1432124i744fdrxvgvp7dv28hk8gxq";
    let tampered: String = narinfo
        .lines()
        .map(|l| {
            if l.starts_with("NarHash: ") {
                format!("NarHash: {fake}")
            } else if l.starts_with("FileHash: ") {
                String::new()
            } else {
                l.to_string()
            }
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&narinfo_file, tampered + "\n").expect("write");
    let ipnix = Ipnix::new();
    let err = ipnix.fails(&[
        "nix",
        "import",
        "--from-cache",
        &format!("file://{}", cache.display()),
        &closure.a,
    ]);
    assert!(err.contains("hash mismatch"), "{err}");
    let pins = ipnix.ok(&["pin", "ls"]);
    assert!(
        pins.trim().is_empty(),
        "nothing pinned after a failed import: {pins}"
    );
    let err = ipnix.fails(&["nix", "info", &closure.a]);
    assert!(err.contains("not imported"), "{err}");
}
