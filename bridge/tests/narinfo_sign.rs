//! narinfo parse/render and signatures against what real Nix writes:
//! `nix copy --to file://...?secret-key=...` signs narinfos; our code
//! verifies those signatures, and signing the same fingerprint with the same
//! key gives Nix's signature byte for byte (ed25519 is deterministic).

mod common;

use common::*;
use ipnix_bridge::narinfo::{fingerprint, NarInfo, PublicKey, SecretKey};
use ipnix_store::MemoryBlocks;
use std::process::Command;

#[test]
fn nix_signed_narinfos_verify_and_our_signatures_match() {
    if !have("nix", "nix_signed_narinfos_verify_and_our_signatures_match") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (_, b, _) = tiny_closure(dir.path(), "sign");
    let secret_file = dir.path().join("secret.key");
    let public_file = dir.path().join("public.key");
    run(Command::new("nix-store")
        .args(["--generate-binary-cache-key", "ipnix-test-1"])
        .arg(&secret_file)
        .arg(&public_file));
    let cache = dir.path().join("cache");
    run(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
        ])
        .arg(format!(
            "file://{}?compression=none&secret-key={}",
            cache.display(),
            secret_file.display()
        ))
        .arg(&b));
    let secret = SecretKey::parse(&std::fs::read_to_string(&secret_file).expect("secret"))
        .expect("nix secret key");
    let public = PublicKey::parse(&std::fs::read_to_string(&public_file).expect("public"))
        .expect("nix public key");
    assert_eq!(secret.public_key(), public);
    assert_eq!(
        public.to_string(),
        std::fs::read_to_string(&public_file)
            .expect("public")
            .trim()
    );
    assert_eq!(
        secret.to_nix_string(),
        std::fs::read_to_string(&secret_file)
            .expect("secret")
            .trim()
    );

    let mut seen = 0;
    for entry in std::fs::read_dir(&cache).expect("cache") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "narinfo") {
            continue;
        }
        seen += 1;
        let text = std::fs::read(&path).expect("narinfo");
        let info = NarInfo::parse(&text).expect("Nix's narinfo parses");
        assert_eq!(
            info.render().as_bytes(),
            text.as_slice(),
            "render reproduces Nix's file"
        );
        assert_eq!(info.sigs.len(), 1);
        assert_eq!(
            info.verified_by(std::slice::from_ref(&public)),
            vec!["ipnix-test-1".to_owned()]
        );
        // Our signature over our fingerprint is Nix's signature.
        assert_eq!(secret.sign(&info.fingerprint()), info.sigs[0]);
        let mut resigned = info.clone();
        resigned.sigs.clear();
        resigned.sign(&secret);
        assert_eq!(resigned.render().as_bytes(), text.as_slice());
        // The fingerprint is what `nix path-info --json` data gives too.
        let nix = ipnix_bridge::nixstore::path_info(std::slice::from_ref(&info.store_path), false)
            .expect("path-info");
        assert_eq!(
            fingerprint(
                &nix[0].path,
                &nix[0].nar_hash,
                nix[0].nar_size,
                &nix[0].references
            ),
            info.fingerprint()
        );
        // Tampering breaks verification.
        let mut tampered = info.clone();
        tampered.nar_size += 8;
        assert!(tampered
            .verified_by(std::slice::from_ref(&public))
            .is_empty());
        let mut tampered = info.clone();
        tampered.references.clear();
        if !info.references.is_empty() {
            assert!(tampered
                .verified_by(std::slice::from_ref(&public))
                .is_empty());
        }
        // A different key with the same name does not verify.
        let other = SecretKey::from_seed("ipnix-test-1", [7; 32]).public_key();
        assert!(info.verified_by(&[other]).is_empty());
    }
    assert_eq!(seen, 3, "a, b and dep");
}

#[test]
fn pathinfo_narinfo_carries_nix_signatures() {
    if !have("nix", "pathinfo_narinfo_carries_nix_signatures") {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let (_, b, _) = tiny_closure(dir.path(), "sign2");
    let key = SecretKey::from_seed("ipnix-local-1", [3; 32]);
    // Sign in the local store with `nix store sign`, then import: the
    // path-info keeps the signature and a narinfo rendered from it verifies.
    let secret_file = dir.path().join("k");
    std::fs::write(&secret_file, key.to_nix_string()).expect("write key");
    run(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "sign",
            "--key-file",
        ])
        .arg(&secret_file)
        .arg(&b));
    let mut blocks = MemoryBlocks::new();
    let items =
        ipnix_bridge::nixstore::import_closure(&mut blocks, std::slice::from_ref(&b), |_| None)
            .expect("import");
    let info = &items
        .last()
        .expect("b")
        .imported
        .as_ref()
        .expect("imported")
        .pathinfo;
    let our_sig = key.sign(&fingerprint(
        &info.store_path,
        &info.nar_hash,
        info.nar_size,
        &info.reference_paths(),
    ));
    assert!(
        info.signatures.contains(&our_sig),
        "nix store sign made our signature: {:?}",
        info.signatures
    );
    let narinfo = NarInfo::from_pathinfo(info, "nar/x.nar".into(), "none", None, None);
    assert_eq!(
        narinfo.verified_by(&[key.public_key()]),
        vec!["ipnix-local-1".to_owned()]
    );
    let reparsed = NarInfo::parse(narinfo.render().as_bytes()).expect("parses");
    assert_eq!(reparsed, narinfo);
}

#[test]
fn malformed_narinfos_are_refused() {
    let good = "StorePath: /nix/store/qs2vcw1sd6lzsvgvq6gggnw1v31qrm28-hi.txt\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h\nNarSize: 120\nReferences: \n";
    NarInfo::parse(good.as_bytes()).expect("good");
    for bad in [
        good.replace("qs2vcw1sd6lzsvgvq6gggnw1v31qrm28", "qs2vcw1sd6"),
        good.replace("-hi.txt", "-hi/../x"),
        good.replace("NarSize: 120", "NarSize: -1"),
        good.replace("NarSize: 120", "NarSize: 0"),
        good.replace("URL: nar/x.nar", "URL: ../../etc/passwd"),
        good.replace("NarHash: sha256:", "NarHash: md5:"),
        good.replace("References: ", "References: notapath"),
        format!("{good}NarSize: 128\n"),
        good.replace("URL: nar/x.nar\n", ""),
        "no colon here\n".to_owned(),
        // Found by the narinfo_parse fuzz target: a `\r` would not survive render/parse.
        format!("{good}Sig: k:sig\r\r\n"),
    ] {
        assert!(NarInfo::parse(bad.as_bytes()).is_err(), "accepted:\n{bad}");
    }
    assert!(NarInfo::parse(&[0xff, 0xfe]).is_err());
}
