//! Replays the fuzz corpus kept in the repo through the fuzz target bodies
//! (`ipnix_fuzz`, the library of `fuzz/`), without libFuzzer: every file of
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` (crashes the
//! fuzzers found, kept once fixed; `tests/fuzz.sh` saves new ones there).
//! So a plain `cargo test` fails again if a fixed parser bug comes back.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The `[[bin]]` names of fuzz/Cargo.toml: every fuzz target.
fn fuzz_binaries() -> Vec<String> {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let Some(value) = line.strip_prefix("name").filter(|_| in_bin) {
            let name = value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            names.push(name.to_owned());
        }
    }
    names
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .map(|entry| entry.expect("corpus dir entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_a_body_and_seeds() {
    let binaries = fuzz_binaries();
    assert!(binaries.len() >= 10, "fuzz/Cargo.toml lists {binaries:?}");
    for (name, _) in ipnix_fuzz::TARGETS {
        assert!(
            binaries.iter().any(|b| b == name),
            "{name} has a body but no [[bin]] in fuzz/Cargo.toml"
        );
        assert!(
            !files_in(&fuzz_dir().join("seeds").join(name)).is_empty(),
            "fuzz target {name} has no seeds in fuzz/seeds/{name}/"
        );
    }
    for name in &binaries {
        if ipnix_fuzz::target(name).is_none() {
            println!(
                "SKIP: fuzz target {name} has no body in ipnix_fuzz::TARGETS, \
                 so its seeds and regressions are not replayed here"
            );
        }
    }
}

#[test]
fn seeds_and_regressions_replay_without_a_failure() {
    let mut replayed = 0;
    let mut failures = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else {
            continue;
        };
        for dir in dirs {
            let dir = dir.expect("corpus dir").path();
            if !dir.is_dir() {
                continue;
            }
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .expect("UTF-8 target name")
                .to_owned();
            let Some(body) = ipnix_fuzz::target(&name) else {
                assert!(
                    fuzz_binaries().contains(&name),
                    "fuzz/{kind}/{name}/ names no fuzz target"
                );
                continue;
            };
            for file in files_in(&dir) {
                let data = std::fs::read(&file).expect("read corpus file");
                if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
                    failures.push(file.display().to_string());
                }
                replayed += 1;
            }
        }
    }
    println!("replayed {replayed} corpus files");
    assert!(
        replayed > 0,
        "no corpus found under {}",
        fuzz_dir().display()
    );
    assert!(failures.is_empty(), "fuzz bodies failed on: {failures:#?}");
}
