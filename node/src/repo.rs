//! The repo directory: where it is, what lives in it (block store, identity
//! key, config), and the `api` file through which a running daemon tells CLI
//! invocations where its control API listens (as Kubo's `$IPFS_PATH/api`).
//!
//! Layout:
//! ```text
//! REPO/
//!   store/          ipnix-store: redb database and pack files
//!   identity.key    libp2p Ed25519 keypair, protobuf-encoded, mode 0600
//!   api             "http://127.0.0.1:PORT" while a daemon runs
//! ```

use libp2p::identity::Keypair;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the repo could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("cannot find a home for the repo: set --repo, $IPNIX_REPO, $XDG_DATA_HOME or $HOME")]
    NoLocation,
    #[error("repo {0} is already initialised")]
    AlreadyInitialised(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity key {path} is unreadable ({reason}); move it away to make a new identity")]
    BadIdentity { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + '_ {
    move |source| RepoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A repo directory on disk.
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// Where the repo is: the flag, else `$IPNIX_REPO`, else the XDG data directory.
    pub fn locate(flag: Option<&Path>) -> Result<PathBuf, RepoError> {
        if let Some(path) = flag {
            return Ok(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os("IPNIX_REPO").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(data).join("ipnix"));
        }
        let home = std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .ok_or(RepoError::NoLocation)?;
        Ok(PathBuf::from(home).join(".local/share/ipnix"))
    }

    /// Creates a new repo; refuses one that exists.
    pub fn init(root: &Path) -> Result<Repo, RepoError> {
        let repo = Repo {
            root: root.to_path_buf(),
        };
        if repo.identity_path().exists() {
            return Err(RepoError::AlreadyInitialised(root.to_path_buf()));
        }
        repo.ensure()?;
        Ok(repo)
    }

    /// Opens a repo, creating it with a fresh identity on first use, so that
    /// `ipnix daemon` works on a new machine without a separate `init`.
    pub fn open_or_init(root: &Path) -> Result<Repo, RepoError> {
        let repo = Repo {
            root: root.to_path_buf(),
        };
        repo.ensure()?;
        Ok(repo)
    }

    fn ensure(&self) -> Result<(), RepoError> {
        std::fs::create_dir_all(self.store_dir()).map_err(io_err(&self.root))?;
        if !self.identity_path().exists() {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .expect("ed25519 keys always encode");
            write_private(&self.identity_path(), &bytes)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    pub fn api_path(&self) -> PathBuf {
        self.root.join("api")
    }

    /// The node's persistent libp2p identity.
    pub fn identity(&self) -> Result<Keypair, RepoError> {
        let path = self.identity_path();
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        Keypair::from_protobuf_encoding(&bytes).map_err(|e| RepoError::BadIdentity {
            path,
            reason: e.to_string(),
        })
    }

    /// Records where the daemon's control API listens.
    pub fn write_api(&self, url: &str) -> Result<(), RepoError> {
        let path = self.api_path();
        let tmp = self.root.join("api.tmp");
        std::fs::write(&tmp, url).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The daemon's control API URL, if a daemon said it runs.
    pub fn read_api(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.api_path()).ok()?;
        let url = text.trim();
        (!url.is_empty()).then(|| url.to_string())
    }

    pub fn remove_api(&self) {
        // A missing file is fine: the daemon may never have written it.
        let _ = std::fs::remove_file(self.api_path());
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(bytes).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_init_refuses_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(dir.path()).expect("init");
        let a = repo.identity().expect("key").public().to_peer_id();
        let again = Repo::open_or_init(dir.path()).expect("open");
        assert_eq!(again.identity().expect("key").public().to_peer_id(), a);
        assert!(matches!(
            Repo::init(dir.path()),
            Err(RepoError::AlreadyInitialised(_))
        ));
    }

    #[test]
    fn api_file_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::open_or_init(dir.path()).expect("open");
        assert_eq!(repo.read_api(), None);
        repo.write_api("http://127.0.0.1:1234").expect("write");
        assert_eq!(repo.read_api().as_deref(), Some("http://127.0.0.1:1234"));
        repo.remove_api();
        assert_eq!(repo.read_api(), None);
    }
}
