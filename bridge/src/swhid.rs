//! Software Heritage identifiers (SWHIDs) of what the bridge stores: a
//! directory's git tree id is its `swh:1:dir:`, a file's git blob id its
//! `swh:1:cnt:` (SWH hashes contents and directories exactly as git does,
//! and keeps empty directories, which the bridge's trees keep too).

use crate::dump::{dump_path, DumpError};
use crate::git::{git_id, GitError};
use crate::import::{import_nar, ImportError, PathMeta};
use crate::pathinfo::{PathInfo, RootKind};
use ipnix_store::NullBlocks;
use std::io;
use std::path::Path;

/// Why a SWHID could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwhidError {
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("the root is not a git object: {0}")]
    Git(#[from] GitError),
    #[error("cannot serialise {path}: {source}")]
    Pipe { path: String, source: io::Error },
}

/// The SWHID of a path-info's root (`swh:1:dir:` for a directory, else
/// `swh:1:cnt:`; a symlink root's content is its target).
pub fn of_pathinfo(info: &PathInfo) -> Result<String, SwhidError> {
    let id = hex::encode(git_id(&info.root.cid)?);
    Ok(match info.root.kind {
        RootKind::Directory => format!("swh:1:dir:{id}"),
        RootKind::Regular | RootKind::Executable | RootKind::Symlink => format!("swh:1:cnt:{id}"),
    })
}

/// The SWHID of a file, symlink or directory on disk, as `swh identify`
/// computes it. Streams (bounded memory); stores nothing.
pub fn of_path(path: &Path) -> Result<String, SwhidError> {
    // Any valid store path: the name does not enter the git ids.
    let meta = PathMeta::new("/nix/store/00000000000000000000000000000000-swhid");
    let (reader, writer) = io::pipe().map_err(|source| SwhidError::Pipe {
        path: path.display().to_string(),
        source,
    })?;
    let (imported, dumped) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || dump_path(path, writer));
        let imported = import_nar(&mut NullBlocks, reader, meta);
        let dumped = producer.join().expect("the NAR writer does not panic");
        (imported, dumped)
    });
    dumped?;
    of_pathinfo(&imported?.pathinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_trees_have_gits_ids() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a");
        std::fs::write(&file, "hi\n").expect("write");
        // `echo hi | git hash-object --stdin`
        assert_eq!(
            of_path(&file).expect("swhid"),
            "swh:1:cnt:45b983be36b73c0788dc9cbcb76cbb80fc7bb057"
        );
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert_eq!(
            of_path(&empty).expect("swhid"),
            "swh:1:dir:4b825dc642cb6eb9a060e54bf8d69288fbee4904"
        );
    }
}
