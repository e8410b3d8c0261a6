//! `sources.json` model: realistic published lists (hand-written from the
//! facts in `../shared/DESIGN.md`), every hash form Nix writes, skips, one
//! clear error per malformed file, the bounds, and the names and store paths
//! Nix would use (checked against `nix-store --print-fixed-path` when Nix is
//! installed).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ipnix_bridge::hash::nix32_encode;
use ipnix_bridge::{ContentAddress, FileIngestion, HashAlgo, NixHash};
use ipnix_sources::model::{
    EntryError, EntryKind, ModelError, SkipReason, SourcesFile, UrlSource, MAX_ENTRIES,
    MAX_SOURCES_FILE_BYTES,
};
use proptest::prelude::*;
use std::process::Command;

/// GNU hello 2.10, as nixpkgs pins it.
const HELLO_HEX: &str = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b";
const HELLO_SRI: &str = "sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=";
const HELLO_NIX32: &str = "0ssi1wpaf7plaswqqjwigppsg5fyh99vdlb9kzl7c9lng89ndq1i";
/// `nix-store --print-fixed-path sha256 $HELLO_NIX32 hello-2.10.tar.gz` (Nix 2.8).
const HELLO_STORE_PATH: &str = "/nix/store/3x7dwzq014bblazs7kq20p9hyzz0qh8g-hello-2.10.tar.gz";

/// A list shaped like the published one: flat and recursive url entries in
/// every hash form, resolved mirrors, postFetch, narinfo "404", fetcher
/// hints, VCS entries, and url entries ipnix cannot fetch.
fn realistic_list() -> String {
    format!(
        r#"{{
  "version": 1,
  "revision": "cc4e04c26672dd74e5fd0fecb78b435fb55368f7",
  "generated_by": "nixpkgs-swh",
  "sources": [
    {{
      "type": "url",
      "urls": ["https://ftpmirror.gnu.org/hello/hello-2.10.tar.gz",
               "https://ftp.nluug.nl/pub/gnu/hello/hello-2.10.tar.gz",
               "ftp://ftp.gnu.org/gnu/hello/hello-2.10.tar.gz",
               "https://ftpmirror.gnu.org/hello/hello-2.10.tar.gz"],
      "integrity": "{HELLO_SRI}",
      "outputHashAlgo": "sha256",
      "outputHashMode": "flat",
      "nixStorePath": "{HELLO_STORE_PATH}",
      "inferredFetcher": "unclassified",
      "narinfo": "404",
      "last_modified": 1700000000
    }},
    {{
      "type": "url",
      "urls": ["https://github.com/lz4/lz4/archive/v1.9.4.tar.gz"],
      "integrity": "sha256-YiMCD3vvrG+oxBUghSrCmP2LAfAGZrEaKz0YoaQJhpI=",
      "outputHashAlgo": "sha256",
      "outputHashMode": "recursive",
      "nixStorePath": "/nix/store/0b0aj4rrmr2n3jr0qhwrqfnqkdsi8kr7-source",
      "inferredFetcher": "fetchzip",
      "postFetch": true,
      "submodule": false
    }},
    {{
      "type": "url",
      "urls": ["https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz"],
      "integrity": "sha512-XI5MPzVNApjAyhQzphX8BkmKsKUxD4LdyK24iZeQEeCf3cJ5ag6Pa9ef0Y79DMPMFPZbZQBKgUp+2aKHhFZFRQ==",
      "outputHashMode": ""
    }},
    {{
      "type": "git",
      "git_url": "https://github.com/NixOS/nix",
      "git_ref": "2.8.0",
      "integrity": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
      "outputHashMode": "recursive",
      "submodule": true
    }},
    {{
      "type": "url",
      "urls": ["https://hackage.haskell.org/package/aeson-2.1.2.1/aeson-2.1.2.1.tar.gz"],
      "integrity": "{HELLO_HEX}",
      "outputHashAlgo": "sha256"
    }},
    {{
      "type": "url",
      "urls": ["http://example.org/old/thing.tar.bz2"],
      "outputHash": "{HELLO_NIX32}",
      "outputHashAlgo": "sha256",
      "outputHashMode": "flat"
    }},
    {{
      "type": "hg",
      "hg_url": "https://hg.example.org/repo",
      "hg_rev": "0123456789ab",
      "integrity": "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
    }},
    {{
      "type": "url",
      "urls": ["ftp://ftp.example.org/pub/a.tar.gz", "mirror://sourceforge/x/x-1.tar.gz"],
      "integrity": "sha1-2jmj7l5rSw0yVb/vlWAYkK/YBwk="
    }},
    {{
      "type": "svn",
      "svn_url": "svn://svn.example.org/trunk",
      "svn_revision": 1234
    }},
    {{
      "type": "url",
      "urls": ["https://files.pythonhosted.org/packages/source/s/six/six-1.16.0.tar.gz?raw=true"],
      "outputHash": "sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709",
      "postFetch": "mv $downloadedFile $out"
    }}
  ]
}}"#
    )
}

fn url_source(file: &SourcesFile, index: usize) -> &UrlSource {
    match &file.entries[index].kind {
        EntryKind::Url(source) => source,
        other => panic!("entry {index} is {other:?}, expected a url source"),
    }
}

fn parse_err(json: &str) -> ModelError {
    SourcesFile::parse(json.as_bytes()).expect_err("this file is malformed")
}

fn entry_reason(err: &ModelError, index: usize) -> &EntryError {
    match err {
        ModelError::Entry { index: i, reason } if *i == index => reason,
        other => panic!("expected an error naming sources[{index}], got {other:?}"),
    }
}

fn hello() -> NixHash {
    NixHash::parse_digest(HashAlgo::Sha256, HELLO_HEX).expect("hello hash")
}

#[test]
fn realistic_list_parses_as_published() {
    let file = SourcesFile::parse(realistic_list().as_bytes()).expect("parses");
    assert_eq!(file.version, 1);
    assert_eq!(
        file.revision.as_deref(),
        Some("cc4e04c26672dd74e5fd0fecb78b435fb55368f7")
    );
    assert_eq!(file.entries.len(), 10);
    for (i, entry) in file.entries.iter().enumerate() {
        assert_eq!(entry.index, i);
    }

    // Resolved mirrors: http(s) kept in order, ftp dropped, duplicates once.
    let gnu = url_source(&file, 0);
    assert_eq!(
        gnu.urls,
        [
            "https://ftpmirror.gnu.org/hello/hello-2.10.tar.gz",
            "https://ftp.nluug.nl/pub/gnu/hello/hello-2.10.tar.gz"
        ]
    );
    assert_eq!(gnu.hash, hello());
    assert_eq!(gnu.mode, FileIngestion::Flat);
    assert_eq!(gnu.store_path.as_deref(), Some(HELLO_STORE_PATH));
    assert!(!gnu.post_fetch && !gnu.submodule);
    assert_eq!(gnu.names(), ["hello-2.10.tar.gz"]);
    assert_eq!(
        gnu.content_address()
            .fixed_output_path("/nix/store", "hello-2.10.tar.gz")
            .expect("path")
            .as_deref(),
        Some(HELLO_STORE_PATH)
    );

    let github = url_source(&file, 1);
    assert_eq!(github.mode, FileIngestion::Recursive);
    assert!(github.post_fetch);
    assert!(!github.submodule);
    assert_eq!(github.names(), ["source"]);
    assert_eq!(
        github.content_address().to_string(),
        format!("fixed:r:{}", github.hash.to_nix32())
    );

    let npm = url_source(&file, 2);
    assert_eq!(npm.hash.algo(), HashAlgo::Sha512);
    assert_eq!(
        npm.mode,
        FileIngestion::Flat,
        "empty outputHashMode is flat"
    );
    assert_eq!(npm.store_path, None);
    assert_eq!(npm.names(), ["left-pad-1.3.0.tgz"]);

    match &file.entries[3].kind {
        EntryKind::Skipped(skip) => {
            assert_eq!(skip.source_type, "git");
            assert_eq!(skip.reason, SkipReason::UnsupportedType);
            assert_eq!(skip.reason.as_str(), "unsupported");
            assert!(
                skip.detail.contains("git_url=https://github.com/NixOS/nix"),
                "{}",
                skip.detail
            );
            assert!(skip.detail.contains("git_ref=2.8.0"), "{}", skip.detail);
        }
        other => panic!("git entry: {other:?}"),
    }

    // Older lists: `integrity` holds hex (or nix32) and `outputHashAlgo` the algorithm.
    assert_eq!(url_source(&file, 4).hash, hello());
    assert_eq!(url_source(&file, 5).hash, hello());
    assert_eq!(
        url_source(&file, 5).urls,
        ["http://example.org/old/thing.tar.bz2"]
    );

    match &file.entries[6].kind {
        EntryKind::Skipped(skip) => {
            assert_eq!(
                (skip.source_type.as_str(), skip.reason),
                ("hg", SkipReason::UnsupportedType)
            );
            assert!(skip.detail.contains("hg_url="), "{}", skip.detail);
        }
        other => panic!("hg entry: {other:?}"),
    }
    match &file.entries[7].kind {
        EntryKind::Skipped(skip) => {
            assert_eq!(skip.source_type, "url");
            assert_eq!(skip.reason, SkipReason::UnsupportedScheme);
            assert_eq!(skip.reason.as_str(), "unsupported");
            assert!(
                skip.detail.contains("ftp://ftp.example.org"),
                "{}",
                skip.detail
            );
        }
        other => panic!("ftp-only entry: {other:?}"),
    }
    match &file.entries[8].kind {
        EntryKind::Skipped(skip) => assert_eq!(skip.source_type, "svn"),
        other => panic!("svn entry: {other:?}"),
    }

    // `algo:hex` in `outputHash`, no `outputHashAlgo`; a postFetch script;
    // a query string kept in the name, as `baseNameOf` keeps it.
    let six = url_source(&file, 9);
    assert_eq!(six.hash.algo(), HashAlgo::Sha1);
    assert!(six.post_fetch);
    assert_eq!(six.names(), ["six-1.16.0.tar.gz?raw=true"]);

    assert_eq!(file.url_sources().count(), 6);
    let skipped: Vec<usize> = file.skipped().map(|(i, _)| i).collect();
    assert_eq!(skipped, [3, 6, 7, 8]);
}

#[test]
fn every_hash_form_gives_the_same_hash() {
    let forms = [
        format!(r#""integrity": "{HELLO_SRI}""#),
        format!(r#""integrity": "{HELLO_SRI}", "outputHashAlgo": "sha256""#),
        format!(r#""integrity": "{HELLO_HEX}", "outputHashAlgo": "sha256""#),
        format!(r#""integrity": "{HELLO_NIX32}", "outputHashAlgo": "sha256""#),
        format!(r#""integrity": "sha256:{HELLO_NIX32}""#),
        format!(r#""integrity": "", "outputHash": "{HELLO_HEX}", "outputHashAlgo": "sha256""#),
        format!(r#""outputHash": "{HELLO_NIX32}", "outputHashAlgo": "sha256""#),
        format!(r#""outputHash": "{HELLO_SRI}", "outputHashAlgo": """#),
        format!(r#""outputHash": "sha256:{HELLO_HEX}""#),
        format!(
            r#""outputHash": "{}", "outputHashAlgo": "sha256""#,
            &HELLO_SRI[7..]
        ),
    ];
    for form in forms {
        let json = format!(
            r#"{{"version":1,"sources":[{{"type":"url","urls":["https://h/x.tar.gz"],{form}}}]}}"#
        );
        let file = SourcesFile::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(url_source(&file, 0).hash, hello(), "{form}");
    }
}

#[test]
fn names_follow_nix_defaults() {
    let source = |urls: &[&str], mode, store_path: Option<&str>| UrlSource {
        urls: urls.iter().map(|u| u.to_string()).collect(),
        hash: hello(),
        mode,
        store_path: store_path.map(str::to_owned),
        post_fetch: false,
        submodule: false,
    };
    // The derivation's own name first; then each URL's base name; invalid
    // store names (`%`, `#`, `&`, empty) dropped; no duplicates.
    let flat = source(
        &[
            "https://a.example/pub/foo-1.0.tar.gz",
            "https://b.example/mirror/foo-1.0.tar.gz",
            "https://c.example/dl.php?file=foo&v=1",
            "https://d.example/a%20b.tgz",
            "https://e.example/x.tgz#frag",
            "https://f.example/releases/v1.0/",
            "https://g.example/download?id=7",
        ],
        FileIngestion::Flat,
        Some("/nix/store/3x7dwzq014bblazs7kq20p9hyzz0qh8g-foo-src.tar.gz"),
    );
    assert_eq!(
        flat.names(),
        ["foo-src.tar.gz", "foo-1.0.tar.gz", "v1.0", "download?id=7"]
    );
    let recursive = source(
        &["https://github.com/o/r/archive/v1.tar.gz"],
        FileIngestion::Recursive,
        None,
    );
    assert_eq!(recursive.names(), ["source"]);
    let named = source(
        &["https://github.com/o/r/archive/v1.tar.gz"],
        FileIngestion::Recursive,
        Some("/nix/store/0b0aj4rrmr2n3jr0qhwrqfnqkdsi8kr7-r-1.0-src"),
    );
    assert_eq!(named.names(), ["r-1.0-src", "source"]);
}

/// The fixed-output paths of every name agree with `nix-store --print-fixed-path`.
#[test]
fn store_paths_match_nix() {
    if Command::new("nix-store").arg("--version").output().is_err() {
        eprintln!("SKIP: store_paths_match_nix: nix-store is not installed");
        return;
    }
    let file = SourcesFile::parse(realistic_list().as_bytes()).expect("parses");
    let mut checked = 0;
    for (index, source) in file.url_sources() {
        for name in source.names() {
            let ours = source
                .content_address()
                .fixed_output_path("/nix/store", &name)
                .expect("valid name")
                .expect("fixed");
            let mut cmd = Command::new("nix-store");
            cmd.arg("--print-fixed-path");
            if source.mode == FileIngestion::Recursive {
                cmd.arg("--recursive");
            }
            let out = cmd
                .arg(source.hash.algo().name())
                .arg(source.hash.nix32_digest())
                .arg(&name)
                .output()
                .expect("runs nix-store");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let nix = String::from_utf8(out.stdout).expect("utf-8");
            assert_eq!(ours, nix.trim(), "sources[{index}] name {name}");
            checked += 1;
        }
    }
    assert!(checked >= 6, "checked {checked} paths");
}

#[test]
fn malformed_files_are_one_error() {
    assert!(matches!(parse_err("not json"), ModelError::Json(_)));
    assert!(matches!(
        parse_err(r#"{"version":1,"sources":[]"#),
        ModelError::Json(_)
    ));
    assert!(matches!(
        parse_err(r#"{"version":1,"sources":[]} x"#),
        ModelError::Json(_)
    ));
    assert!(matches!(parse_err("[]"), ModelError::NotObject { .. }));
    assert!(matches!(parse_err("null"), ModelError::NotObject { .. }));
    assert!(matches!(
        parse_err(r#"{"sources":[]}"#),
        ModelError::MissingVersion
    ));
    assert!(matches!(
        parse_err(r#"{"version":2,"sources":[]}"#),
        ModelError::UnsupportedVersion { .. }
    ));
    assert!(matches!(
        parse_err(r#"{"version":"1","sources":[]}"#),
        ModelError::UnsupportedVersion { .. }
    ));
    assert!(matches!(
        parse_err(r#"{"version":1}"#),
        ModelError::MissingSources
    ));
    assert!(matches!(
        parse_err(r#"{"version":1,"sources":{}}"#),
        ModelError::SourcesNotList { .. }
    ));
    assert!(matches!(
        parse_err(r#"{"version":1,"revision":7,"sources":[]}"#),
        ModelError::BadRevision
    ));
    assert!(matches!(
        parse_err(r#"{"version":1,"sources":[],"sources":[]}"#),
        ModelError::DuplicateField { field: "sources" }
    ));

    let ok = r#"{"type":"url","urls":["https://h/a.tgz"],"integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs="}"#;
    let with_third = |bad: &str| format!(r#"{{"version":1,"sources":[{ok},{ok},{bad},{ok}]}}"#);
    type Check = fn(&EntryError) -> bool;
    let cases: Vec<(&str, Check)> = vec![
        ("7", |e| {
            matches!(e, EntryError::NotObject { found: "number" })
        }),
        ("[]", |e| {
            matches!(e, EntryError::NotObject { found: "list" })
        }),
        (r#"{"urls":[]}"#, |e| matches!(e, EntryError::MissingType)),
        (r#"{"type":1}"#, |e| {
            matches!(e, EntryError::TypeNotString { .. })
        }),
        (
            r#"{"type":"url","integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs="}"#,
            |e| matches!(e, EntryError::MissingUrls),
        ),
        (
            r#"{"type":"url","urls":"https://h/a","integrity":"x"}"#,
            |e| matches!(e, EntryError::UrlsNotList { found: "string" }),
        ),
        (
            r#"{"type":"url","urls":["https://h/a",3],"integrity":"x"}"#,
            |e| matches!(e, EntryError::UrlNotString { position: 1, .. }),
        ),
        (r#"{"type":"url","urls":["https://h/a"]}"#, |e| {
            matches!(e, EntryError::MissingHash)
        }),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha256-short"}"#,
            |e| {
                matches!(
                    e,
                    EntryError::BadHash {
                        field: "integrity",
                        ..
                    }
                )
            },
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha999-AAAA"}"#,
            |e| matches!(e, EntryError::BadHash { .. }),
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs= sha512-x"}"#,
            |e| matches!(e, EntryError::BadHash { .. }),
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"outputHash":"31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b"}"#,
            |e| {
                matches!(
                    e,
                    EntryError::NoAlgo {
                        field: "outputHash",
                        ..
                    }
                )
            },
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"outputHash":"31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b","outputHashAlgo":"sha3"}"#,
            |e| matches!(e, EntryError::BadAlgo { .. }),
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"outputHash":"31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b","outputHashAlgo":"sha512"}"#,
            |e| matches!(e, EntryError::BadHash { .. }),
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=","outputHashAlgo":"sha1"}"#,
            |e| {
                matches!(
                    e,
                    EntryError::AlgoConflict {
                        declared: HashAlgo::Sha1,
                        hash_algo: HashAlgo::Sha256,
                        ..
                    }
                )
            },
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":5}"#,
            |e| {
                matches!(
                    e,
                    EntryError::FieldNotString {
                        field: "integrity",
                        ..
                    }
                )
            },
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=","outputHashMode":"text"}"#,
            |e| matches!(e, EntryError::BadMode(_)),
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=","nixStorePath":"/nix/store/short-name"}"#,
            |e| matches!(e, EntryError::BadStorePath { .. }),
        ),
        (
            r#"{"type":"url","urls":["https://h/a"],"integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=","nixStorePath":"3x7dwzq014bblazs7kq20p9hyzz0qh8g-x"}"#,
            |e| matches!(e, EntryError::BadStorePath { .. }),
        ),
    ];
    for (bad, expected) in cases {
        let err = parse_err(&with_third(bad));
        let reason = entry_reason(&err, 2);
        assert!(expected(reason), "{bad}: got {reason:?}");
        assert_eq!(err.entry_index(), Some(2));
        let message = err.to_string();
        assert!(message.starts_with("sources[2]: "), "{message}");
    }
}

#[test]
fn a_malformed_entry_reports_the_first_one() {
    let json = r#"{"version":1,"sources":[{"type":"git"},7,"x",{"type":"url"}]}"#;
    assert_eq!(parse_err(json).entry_index(), Some(1));
}

/// A future format's entries are not "malformed version-1 entries".
#[test]
fn a_wrong_version_after_the_entries_wins() {
    let json = r#"{"sources":[7],"version":2}"#;
    assert!(matches!(
        parse_err(json),
        ModelError::UnsupportedVersion { .. }
    ));
}

#[test]
fn empty_list_and_null_revision() {
    let file =
        SourcesFile::parse(br#"{"version":1,"revision":null,"sources":[]}"#).expect("parses");
    assert_eq!(file.revision, None);
    assert!(file.entries.is_empty());
}

#[test]
fn bounds_are_refused() {
    // Zeroed (untouched) memory: the size is refused before any byte is read.
    let too_big = vec![0u8; usize::try_from(MAX_SOURCES_FILE_BYTES + 1).expect("fits")];
    assert!(matches!(
        SourcesFile::parse(&too_big),
        Err(ModelError::TooLarge { .. })
    ));
    drop(too_big);

    let mut json = String::from(r#"{"version":1,"sources":["#);
    for _ in 0..MAX_ENTRIES {
        json.push_str("null,");
    }
    json.push_str("null]}");
    assert!(matches!(
        SourcesFile::parse(json.as_bytes()),
        Err(ModelError::TooManyEntries { max: MAX_ENTRIES })
    ));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let mut json = String::from(r#"{"version":1,"sources":[{"type":"url","x":"#);
    json.push_str(&"[".repeat(100_000));
    assert!(matches!(parse_err(&json), ModelError::Json(_)));
}

#[test]
fn content_address_is_fixed() {
    let file = SourcesFile::parse(realistic_list().as_bytes()).expect("parses");
    let gnu = url_source(&file, 0);
    assert_eq!(
        gnu.content_address(),
        ContentAddress::fixed(FileIngestion::Flat, hello())
    );
}

/// How a generated entry writes its hash.
#[derive(Debug, Clone, Copy)]
enum Form {
    IntegritySri,
    IntegrityHexWithAlgo,
    IntegrityNix32WithAlgo,
    IntegrityColonNix32,
    OutputHashHex,
    OutputHashNix32,
    OutputHashBase64,
    OutputHashSri,
    OutputHashColonHex,
}

fn write_hash(hash: &NixHash, form: Form) -> serde_json::Map<String, serde_json::Value> {
    let algo = hash.algo().name();
    let hex = hex::encode(hash.digest());
    let nix32 = nix32_encode(hash.digest());
    let b64 = BASE64.encode(hash.digest());
    let pairs: Vec<(&str, String)> = match form {
        Form::IntegritySri => vec![("integrity", hash.to_sri())],
        Form::IntegrityHexWithAlgo => vec![("integrity", hex), ("outputHashAlgo", algo.into())],
        Form::IntegrityNix32WithAlgo => vec![("integrity", nix32), ("outputHashAlgo", algo.into())],
        Form::IntegrityColonNix32 => vec![("integrity", format!("{algo}:{nix32}"))],
        Form::OutputHashHex => vec![("outputHash", hex), ("outputHashAlgo", algo.into())],
        Form::OutputHashNix32 => vec![("outputHash", nix32), ("outputHashAlgo", algo.into())],
        Form::OutputHashBase64 => vec![("outputHash", b64), ("outputHashAlgo", algo.into())],
        Form::OutputHashSri => vec![("outputHash", hash.to_sri())],
        Form::OutputHashColonHex => vec![("outputHash", format!("{algo}:{hex}"))],
    };
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v)))
        .collect()
}

fn arb_hash() -> impl Strategy<Value = NixHash> {
    (
        prop_oneof![
            Just(HashAlgo::Md5),
            Just(HashAlgo::Sha1),
            Just(HashAlgo::Sha256),
            Just(HashAlgo::Sha512)
        ],
        proptest::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(algo, bytes)| NixHash::new(algo, &bytes[..algo.size()]).expect("sized"))
}

fn arb_form() -> impl Strategy<Value = Form> {
    prop_oneof![
        Just(Form::IntegritySri),
        Just(Form::IntegrityHexWithAlgo),
        Just(Form::IntegrityNix32WithAlgo),
        Just(Form::IntegrityColonNix32),
        Just(Form::OutputHashHex),
        Just(Form::OutputHashNix32),
        Just(Form::OutputHashBase64),
        Just(Form::OutputHashSri),
        Just(Form::OutputHashColonHex),
    ]
}

fn arb_url() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("https://"),
            Just("http://"),
            Just("HTTPS://"),
            Just("ftp://"),
            Just("mirror://"),
            Just("file:///"),
            Just("")
        ],
        "[a-z]{1,8}",
        "[a-zA-Z0-9._?=%-]{0,12}",
    )
        .prop_map(|(scheme, host, file)| format!("{scheme}{host}/{file}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any hash, in any form Nix writes, parses back to the same hash; the
    /// mode, the kept URLs (http(s), in order, once) and unknown fields behave.
    #[test]
    fn generated_entries_parse_back(
        entries in proptest::collection::vec(
            (arb_hash(), arb_form(), 0u8..4, proptest::collection::vec(arb_url(), 0..5), any::<bool>()),
            0..8,
        )
    ) {
        let mut list = Vec::new();
        for (hash, form, mode, urls, extra) in &entries {
            let mut fields = write_hash(hash, *form);
            fields.insert("type".into(), "url".into());
            fields.insert("urls".into(), serde_json::json!(urls));
            match mode {
                0 => {}
                1 => { fields.insert("outputHashMode".into(), "".into()); }
                2 => { fields.insert("outputHashMode".into(), "flat".into()); }
                _ => { fields.insert("outputHashMode".into(), "recursive".into()); }
            }
            if *extra {
                fields.insert("narinfo".into(), "404".into());
                fields.insert("inferredFetcher".into(), serde_json::json!({"nested": [1, 2]}));
                fields.insert("last_modified".into(), serde_json::json!(1.5));
            }
            list.push(serde_json::Value::Object(fields));
        }
        let json = serde_json::json!({"version": 1, "sources": list}).to_string();
        let file = SourcesFile::parse(json.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(file.entries.len(), entries.len());
        for ((hash, _, mode, urls, _), entry) in entries.iter().zip(&file.entries) {
            let kept: Vec<&String> = urls
                .iter()
                .filter(|u| {
                    let lower = u.to_ascii_lowercase();
                    (lower.starts_with("https://") || lower.starts_with("http://")) && !u.ends_with("://")
                })
                .collect();
            let mut deduplicated: Vec<&String> = Vec::new();
            for url in kept {
                if !deduplicated.contains(&url) {
                    deduplicated.push(url);
                }
            }
            match &entry.kind {
                EntryKind::Url(source) => {
                    prop_assert_eq!(&source.hash, hash);
                    let expected_mode = if *mode == 3 { FileIngestion::Recursive } else { FileIngestion::Flat };
                    prop_assert_eq!(source.mode, expected_mode);
                    prop_assert_eq!(source.urls.iter().collect::<Vec<_>>(), deduplicated);
                    for name in source.names() {
                        prop_assert!(ipnix_bridge::hash::check_name(&name).is_ok());
                    }
                }
                EntryKind::Skipped(skip) => {
                    prop_assert!(deduplicated.is_empty());
                    prop_assert_eq!(skip.reason, SkipReason::UnsupportedScheme);
                }
            }
        }
    }

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SourcesFile::parse(&bytes);
    }
}

/// The generator writes what the derivation had: `null` where an attribute
/// was null (`outputHashAlgo` of an SRI hash, no `outputHashMode`).
#[test]
fn null_fields_count_as_absent() {
    let json = format!(
        r#"{{"version":1,"revision":null,"sources":[{{"type":"url","urls":["https://h/x-1.tgz"],
            "integrity":"{HELLO_SRI}","outputHashAlgo":null,"outputHashMode":null,
            "nixStorePath":null,"postFetch":null,"submodule":null}}]}}"#
    );
    let file = SourcesFile::parse(json.as_bytes()).expect("parses");
    let source = url_source(&file, 0);
    assert_eq!(source.hash, hello());
    assert_eq!(source.mode, FileIngestion::Flat);
    assert_eq!(source.store_path, None);
    assert!(!source.post_fetch && !source.submodule);
    assert_eq!(source.names(), ["x-1.tgz"]);
}

#[test]
fn an_empty_published_hash_skips_the_entry_not_the_file() {
    // nixpkgs-swh's post-processing writes `"integrity": ""` when it cannot
    // convert a derivation's hash; the rest of the list is still usable.
    let text = r#"{"version":1,"sources":[
        {"type":"url","urls":["https://h/a.tar.gz"],"integrity":""},
        {"type":"url","urls":["https://h/b.tar.gz"],
         "integrity":"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs="}]}"#;
    let file = SourcesFile::parse(text.as_bytes()).expect("parses");
    match &file.entries[0].kind {
        EntryKind::Skipped(skip) => {
            assert_eq!(skip.reason, SkipReason::EmptyHash);
            assert_eq!(skip.reason.as_str(), "unsupported");
        }
        other => panic!("empty hash: {other:?}"),
    }
    assert!(matches!(file.entries[1].kind, EntryKind::Url(_)));
}
