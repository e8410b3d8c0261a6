//! SWHIDs: `ipnix swh id` against Software Heritage's own `swh identify`
//! (PyPI swh.model) on real trees (every corpus tarball unpacked by the real
//! `tar`/`unzip`) and on a tree with the corner cases: symlinks (relative,
//! absolute, dangling), executables, empty files, empty and nested
//! directories, odd but legal names.

use ipnix_tests::cli::Ipnix;
use ipnix_tests::corpus;
use std::path::Path;
use std::process::Command;

fn swh_missing() -> Option<String> {
    match Command::new("swh").args(["identify", "--help"]).output() {
        Ok(out) if out.status.success() => None,
        _ => Some(
            "`swh identify` is not installed (tests/setup-swh.sh installs swh.model[cli])".into(),
        ),
    }
}

fn swh_identify(path: &Path) -> String {
    let out = Command::new("swh")
        .args(["identify", "--no-filename"])
        .arg(path)
        .output()
        .expect("swh identify runs");
    assert!(
        out.status.success(),
        "swh identify {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

fn ipnix_id(ipnix: &Ipnix, path: &Path) -> String {
    let line = ipnix.ok(&["swh", "id", path.to_str().expect("utf-8")]);
    line.split('\t').next().expect("a swhid").trim().to_string()
}

fn corner_case_tree(root: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::create_dir_all(root.join("nested/deeper/empty-dir")).expect("mkdir");
    std::fs::create_dir_all(root.join("empty-top")).expect("mkdir");
    std::fs::write(root.join("plain.txt"), "plain\n").expect("write");
    std::fs::write(root.join("empty-file"), "").expect("write");
    std::fs::write(root.join("nested/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
    std::fs::set_permissions(
        root.join("nested/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::fs::write(root.join("nested/deeper/x+y=z_1.0-a.b"), vec![7u8; 3 << 20]).expect("write");
    symlink("plain.txt", root.join("rel-link")).expect("symlink");
    symlink("/etc/hostname", root.join("abs-link")).expect("symlink");
    symlink("does-not-exist", root.join("nested/dangling")).expect("symlink");
}

#[test]
fn swhids_equal_swh_identify_on_real_and_corner_case_trees() {
    const TEST: &str = "swhids_equal_swh_identify_on_real_and_corner_case_trees";
    if let Some(reason) = swh_missing() {
        ipnix_tests::peers::skip(TEST, &reason);
        return;
    }
    let ipnix = Ipnix::new();
    let work = tempfile::tempdir().expect("tempdir");
    let corner = work.path().join("corner");
    corner_case_tree(&corner);
    let mut checked = vec![
        corner.clone(),
        corner.join("plain.txt"),
        corner.join("empty-file"),
    ];
    if let Some(corpus) = corpus::load_or_skip(TEST) {
        for (i, file) in corpus.files.iter().enumerate() {
            let dest = work.path().join(format!("unpacked-{i}"));
            std::fs::create_dir(&dest).expect("mkdir");
            let status = if file.file_name.ends_with(".zip") {
                Command::new("unzip")
                    .args(["-q", "-o"])
                    .arg(&file.path)
                    .arg("-d")
                    .arg(&dest)
                    .status()
            } else {
                Command::new("tar")
                    .arg("-xf")
                    .arg(&file.path)
                    .arg("-C")
                    .arg(&dest)
                    .status()
            };
            match status {
                Ok(s) if s.success() => checked.push(dest),
                _ => eprintln!(
                    "note: could not unpack {} here; not compared",
                    file.file_name
                ),
            }
            checked.push(file.path.clone());
        }
    }
    for path in &checked {
        assert_eq!(
            ipnix_id(&ipnix, path),
            swh_identify(path),
            "{}",
            path.display()
        );
    }
    assert!(checked.len() >= 3);
}
