//! What can be checked of the packaging without nixpkgs: every `.nix` file
//! under nix/ parses (`nix-instantiate --parse`, which also catches unbound
//! variables), the NixOS module declares the options the README promises,
//! and the plain systemd unit passes `systemd-analyze verify` with the built
//! binary in place of /usr/local/bin/ipnix and the manual pages that
//! `ipnix man -o` writes on MANPATH (so its `Documentation=man:` links
//! resolve). Each check SKIPs, saying why, when its tool is missing.

use ipnix_tests::cli::ipnix_bin;
use std::path::{Path, PathBuf};
use std::process::Command;

fn nix_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../nix")
}

fn tool(name: &str) -> bool {
    Command::new("which")
        .arg(name)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_nix_file_parses() {
    if !tool("nix-instantiate") {
        ipnix_tests::peers::skip(
            "every_nix_file_parses",
            "nix-instantiate is not installed (../shared/peers/setup-nix.sh installs Nix 2.8)",
        );
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(nix_dir())
        .expect("nix/ exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "nix"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "package.nix and module.nix: {files:?}");
    for file in &files {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(file)
            .output()
            .expect("nix-instantiate runs");
        assert!(
            out.status.success(),
            "{} does not parse: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_module_declares_its_options() {
    let module = std::fs::read_to_string(nix_dir().join("module.nix")).expect("module.nix");
    for option in [
        "enable",
        "package",
        "listen",
        "http",
        "dataDir",
        "swarmKeyFile",
        "signKeyFile",
        "trustedPublicKeys",
        "sourcesLists",
        "sourcesInterval",
        "openFirewall",
        "substitute",
        "extraArgs",
    ] {
        assert!(
            module.contains(&format!("\n    {option} = lib.mk")),
            "services.ipnix.{option} is declared"
        );
    }
    // The NixOS manual's conventions: every mkOption has a type and a
    // description; a package default that is an expression has defaultText.
    let declared = module
        .split_once("options.services.ipnix = {")
        .and_then(|(_, rest)| rest.split_once("\n  config = "))
        .map(|(options, _)| options)
        .expect("an options block, then config");
    let options = declared.matches("lib.mkOption {").count();
    assert!(options >= 12, "{options} options");
    assert_eq!(declared.matches("      type = lib.types.").count(), options);
    assert_eq!(declared.matches("      description = ").count(), options);
    assert!(module.contains("defaultText = lib.literalExpression"));
    // The firewall opens swarm ports only, never the HTTP port.
    assert!(module.contains("allowedTCPPorts = portsOf \"tcp\" cfg.listen;"));
    assert!(!module.contains("allowedTCPPorts = [ httpPort"));
    let package = std::fs::read_to_string(nix_dir().join("package.nix")).expect("package.nix");
    assert!(package.contains("cargoLock.lockFile = ../Cargo.lock;"));
    assert!(package.contains("doCheck = false;"));
}

#[test]
fn the_systemd_unit_verifies() {
    const TEST: &str = "the_systemd_unit_verifies";
    if !tool("systemd-analyze") {
        ipnix_tests::peers::skip(TEST, "systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = ipnix_bin();
    let unit = std::fs::read_to_string(nix_dir().join("ipnix.service")).expect("ipnix.service");
    assert!(unit.contains("ExecStart=/usr/local/bin/ipnix daemon"));
    let unit_path = dir.path().join("ipnix.service");
    std::fs::write(
        &unit_path,
        unit.replace("/usr/local/bin/ipnix", bin.to_str().expect("utf-8 path")),
    )
    .expect("write unit");
    // The pages the unit's Documentation= names, where `man` finds them.
    let man = dir.path().join("man");
    let out = Command::new(&bin)
        .arg("man")
        .arg("-o")
        .arg(man.join("man1"))
        .output()
        .expect("ipnix man runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let man_check = tool("man");
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify");
    if !man_check {
        eprintln!("{TEST}: `man` is missing; Documentation= links are not followed");
        verify.arg("--man=no");
    }
    let out = verify
        .arg(&unit_path)
        .env("MANPATH", &man)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("ipnix.service:"),
        "systemd-analyze verify: {stderr}"
    );
}
