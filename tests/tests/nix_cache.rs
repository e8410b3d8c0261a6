//! The Nix binary cache inside `ipnix daemon`, used by the real Nix 2.8 as a
//! substituter on loopback: `nix-store --realise` and `nix copy --from` get
//! a deleted closure back and `nix store verify` accepts it; Nix refuses
//! paths whose signatures it does not trust; `--sign-key` adds a signature
//! Nix accepts on its own; a path-info whose NAR hash does not match its
//! blocks is cut short by ipnix itself.

use ipnix_bridge::export::load_pathinfo;
use ipnix_bridge::hash::NixHash;
use ipnix_store::{Cid, Store};
use ipnix_tests::cli::Ipnix;
use ipnix_tests::nix::{http_request, stderr_of, Closure, Daemon, NixKey, NixLab};

/// The store index `ipnix nix import` writes (see ipnix_node::http::nixcache::PATH_INDEX).
const PATH_INDEX: &str = "nix-path";

fn hash_part(path: &str) -> &str {
    &path[11..43]
}

/// A lab with a signed closure imported into a fresh repo.
fn setup(test: &str, key_name: &str) -> Option<(NixLab, Closure, NixKey, Ipnix)> {
    let lab = NixLab::new(test)?;
    let closure = lab.build_closure();
    let key = lab.gen_key(key_name);
    lab.sign(&key, &[closure.top.as_str()]);
    let ipnix = Ipnix::new();
    ipnix.ok(&["nix", "import", "--closure", &closure.top]);
    Some((lab, closure, key, ipnix))
}

/// The outputs that can be deleted (the text file `dep` stays: the
/// derivations still reference it).
fn deletable(closure: &Closure) -> Vec<String> {
    vec![closure.top.clone(), closure.a.clone(), closure.big.clone()]
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(out)
    );
}

#[test]
fn nix_substitutes_from_the_daemon() {
    let Some((lab, closure, key, ipnix)) = setup("nix_substitutes_from_the_daemon", "cache-test-1")
    else {
        return;
    };
    let before = lab.dump(&closure.top);
    let daemon = Daemon::start(&ipnix.bin, ipnix.repo_path(), &[]);
    let url = daemon.url.clone();

    let info = http_request("GET", &format!("{url}/nix-cache-info"));
    assert_eq!(info.status, 200);
    assert!(
        info.text().contains("StoreDir: /nix/store"),
        "{}",
        info.text()
    );
    assert_eq!(
        http_request("HEAD", &format!("{url}/nix-cache-info")).status,
        200
    );
    let unknown = http_request(
        "GET",
        &format!("{url}/00000000000000000000000000000000.narinfo"),
    );
    assert_eq!(unknown.status, 404);
    assert_eq!(
        http_request("GET", &format!("{url}/not-a-hash.narinfo")).status,
        404
    );
    let narinfo = http_request("GET", &format!("{url}/{}.narinfo", hash_part(&closure.top)));
    assert_eq!(narinfo.status, 200, "{}", narinfo.text());
    let text = narinfo.text();
    assert!(
        text.contains(&format!("StorePath: {}", closure.top)),
        "{text}"
    );
    assert!(text.contains("Compression: none"), "{text}");
    assert!(
        text.contains(&format!("Sig: {}:", key.name)),
        "upstream signature served: {text}"
    );
    let head = http_request(
        "HEAD",
        &format!("{url}/{}.narinfo", hash_part(&closure.top)),
    );
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    let nar_url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("narinfo has a URL");
    let nar = http_request("GET", &format!("{url}/{nar_url}"));
    assert_eq!(nar.status, 200);
    assert!(
        nar.complete && nar.body == before,
        "served NAR equals nix-store --dump"
    );
    let nar_head = http_request("HEAD", &format!("{url}/{nar_url}"));
    assert_eq!(
        nar_head.header("content-length"),
        Some(before.len().to_string().as_str())
    );

    // Delete the closure from /nix/store, and let Nix substitute it back.
    lab.delete(&deletable(&closure));
    let other = lab.gen_key("someone-else-1");
    let refused = lab.realise(&closure.top, &url, &[&other.public]);
    assert!(
        !refused.status.success(),
        "an untrusted signature must be refused"
    );
    assert!(!lab.is_valid(&closure.top));
    let refused = lab.copy_from(
        &url,
        &lab.path("store-untrusted"),
        &closure.top,
        &[&other.public],
    );
    assert!(!refused.status.success());
    assert!(
        stderr_of(&refused).contains("lacks a valid signature"),
        "{}",
        stderr_of(&refused)
    );

    let realised = lab.realise(&closure.top, &url, &[&key.public]);
    assert_ok(&realised, "nix-store --realise from ipnix");
    assert!(lab.is_valid(&closure.top) && lab.is_valid(&closure.a) && lab.is_valid(&closure.big));
    assert!(lab.dump(&closure.top) == before, "substituted path differs");
    assert_ok(
        &lab.verify(None, &closure.top, &[&key.public]),
        "nix store verify",
    );

    let store2 = lab.path("store2");
    let copied = lab.copy_from(&url, &store2, &closure.top, &[&key.public]);
    assert_ok(&copied, "nix copy --from ipnix");
    assert_ok(
        &lab.verify(Some(&store2), &closure.top, &[&key.public]),
        "nix store verify --store store2",
    );
    drop(daemon);
}

#[test]
fn sign_key_adds_a_signature_nix_accepts() {
    let Some((lab, closure, upstream, ipnix)) =
        setup("sign_key_adds_a_signature_nix_accepts", "upstream-1")
    else {
        return;
    };
    let ours = lab.gen_key("ipnix-node-1");
    let key_file = ours.secret_file.to_str().expect("utf-8").to_string();
    let daemon = Daemon::start(&ipnix.bin, ipnix.repo_path(), &["--sign-key", &key_file]);
    let narinfo = http_request(
        "GET",
        &format!("{}/{}.narinfo", daemon.url, hash_part(&closure.top)),
    )
    .text();
    let sigs: Vec<&str> = narinfo.lines().filter(|l| l.starts_with("Sig: ")).collect();
    assert_eq!(sigs.len(), 2, "upstream and node signatures: {narinfo}");
    assert!(
        narinfo.contains(&format!("Sig: {}:", upstream.name))
            && narinfo.contains(&format!("Sig: {}:", ours.name))
    );
    // Every path of the closure (signed with -r) gets both.
    let a = http_request(
        "GET",
        &format!("{}/{}.narinfo", daemon.url, hash_part(&closure.a)),
    )
    .text();
    assert_eq!(
        a.lines().filter(|l| l.starts_with("Sig: ")).count(),
        2,
        "{a}"
    );

    let store2 = lab.path("store2");
    let copied = lab.copy_from(&daemon.url, &store2, &closure.top, &[&ours.public]);
    assert_ok(&copied, "nix copy trusting only the node key");
    assert_ok(
        &lab.verify(Some(&store2), &closure.top, &[&ours.public]),
        "nix store verify",
    );
}

#[test]
fn pathinfo_with_a_wrong_nar_hash_is_cut_short() {
    let Some((lab, closure, key, ipnix)) = setup(
        "pathinfo_with_a_wrong_nar_hash_is_cut_short",
        "tamper-key-1",
    ) else {
        return;
    };
    // Write a tampered path-info (same size, wrong NAR hash) and point the
    // index at it, through the bridge and store APIs.
    let store = Store::open(&ipnix.repo_path().join("store")).expect("open the repo's store");
    let cid_bytes = store
        .index_get(PATH_INDEX, hash_part(&closure.top).as_bytes())
        .expect("index")
        .expect("top is indexed");
    let cid = Cid::try_from(cid_bytes.as_slice()).expect("cid");
    let mut info = load_pathinfo(&store, &cid).expect("path-info");
    let mut digest = [0u8; 32];
    digest.copy_from_slice(info.nar_hash.digest());
    digest[0] ^= 0xff;
    info.nar_hash = NixHash::sha256(digest);
    let (bad_cid, bytes) = info.to_block().expect("encode");
    store.put(&bad_cid, &bytes).expect("put");
    store
        .index_put(
            PATH_INDEX,
            hash_part(&closure.top).as_bytes(),
            &bad_cid.to_bytes(),
        )
        .expect("index_put");
    drop(store);

    let daemon = Daemon::start(&ipnix.bin, ipnix.repo_path(), &[]);
    let narinfo = http_request(
        "GET",
        &format!("{}/{}.narinfo", daemon.url, hash_part(&closure.top)),
    );
    assert_eq!(narinfo.status, 200);
    assert!(
        narinfo.text().contains(&format!("URL: nar/{bad_cid}.nar")),
        "{}",
        narinfo.text()
    );
    let nar = http_request("GET", &format!("{}/nar/{bad_cid}.nar", daemon.url));
    assert!(
        !nar.complete && (nar.body.len() as u64) < info.nar_size,
        "a NAR that does not match its hash must be cut short (status {}, {} of {} bytes)",
        nar.status,
        nar.body.len(),
        info.nar_size
    );
    // The good path-info still serves.
    let good = http_request("GET", &format!("{}/nar/{cid}.nar", daemon.url));
    assert!(good.complete && good.body == lab.dump(&closure.top));

    // Nix: the signature no longer matches; without signature checks, the NAR is refused.
    let refused = lab.copy_from(
        &daemon.url,
        &lab.path("store2"),
        &closure.top,
        &[&key.public],
    );
    assert!(!refused.status.success());
    assert!(
        stderr_of(&refused).contains("lacks a valid signature"),
        "{}",
        stderr_of(&refused)
    );
    lab.forget_cache_lookups();
    let unchecked = lab.run(
        "nix",
        &[
            "copy",
            "--no-check-sigs",
            "--from",
            &daemon.url,
            "--to",
            lab.path("store3").to_str().expect("utf-8"),
            &closure.top,
            "--option",
            "substituters",
            "",
        ],
    );
    assert!(
        !unchecked.status.success(),
        "a cut-short NAR must fail the copy"
    );
}
