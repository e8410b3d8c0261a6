//! The repo directory: where it is, what lives in it (block store, identity
//! key, config), the `api` and `api.token` files through which a running
//! daemon tells CLI invocations where its control API listens (as Kubo's
//! `$IPFS_PATH/api`) and proves who may use it, and the daemon lock that says
//! a daemon is alive on the repo (starting, serving or stopping).
//!
//! Layout:
//! ```text
//! REPO/
//!   store/          ipnix-store: redb database and pack files
//!   identity.key    libp2p Ed25519 keypair, protobuf-encoded, mode 0600
//!   config          settings, JSON (`ipnix config`; see crate::config); optional
//!   daemon.lock     flock held by the daemon for its whole life; holds its pid
//!   api             "http://127.0.0.1:PORT" while a daemon serves its control API
//!   api.token       the control API's bearer token while a daemon runs, mode 0600
//! ```

use libp2p::identity::Keypair;
use std::fs::File;
use std::io::{Read, Seek, Write};
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
    #[error("another ipnix daemon{} runs on repo {repo}", pid_text(*.pid))]
    DaemonRunning { repo: PathBuf, pid: Option<u32> },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
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
            // Two processes may create a repo at once (a daemon and a CLI
            // command on a new machine): the first complete key wins.
            publish_private_once(&self.identity_path(), &bytes)?;
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

    pub fn api_token_path(&self) -> PathBuf {
        self.root.join("api.token")
    }

    pub fn daemon_lock_path(&self) -> PathBuf {
        self.root.join("daemon.lock")
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

    /// Writes a fresh control API token, readable only by the repo's owner.
    /// The file is created anew (never an old one rewritten), so a token file
    /// someone else made readable is replaced, not reused.
    pub fn write_api_token(&self, token: &str) -> Result<(), RepoError> {
        let path = self.api_token_path();
        let tmp = self.root.join("api.token.tmp");
        // A leftover from a daemon that died while writing it.
        let _ = std::fs::remove_file(&tmp);
        write_private(&tmp, token.as_bytes())?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The running daemon's control API token; `Err` when it cannot be read
    /// (no daemon, or a repo of another user).
    pub fn read_api_token(&self) -> Result<String, RepoError> {
        let path = self.api_token_path();
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(text.trim().to_string())
    }

    pub fn remove_api_token(&self) {
        // A missing file is fine: the daemon may never have written it.
        let _ = std::fs::remove_file(self.api_token_path());
    }

    /// Takes the daemon lock if no other daemon holds it. `Err(DaemonRunning)`
    /// when one does (or, for an instant, a CLI command looks at it).
    pub fn try_lock_daemon(&self) -> Result<DaemonLock, RepoError> {
        let path = self.daemon_lock_path();
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = fs2::FileExt::try_lock_exclusive(&file) {
            if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() {
                return Err(RepoError::DaemonRunning {
                    repo: self.root.clone(),
                    pid: read_pid(&mut file),
                });
            }
            return Err(RepoError::Io { path, source: e });
        }
        // For people and error messages only; the lock itself is the truth.
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(io_err(&path))?;
        Ok(DaemonLock { _file: file })
    }

    /// Whether a daemon is alive on this repo (starting, serving or
    /// stopping), and its pid if it said so. Probes the daemon lock with a
    /// shared lock that is released at once.
    pub fn live_daemon(&self) -> Option<DaemonPid> {
        let path = self.daemon_lock_path();
        let mut file = File::open(path).ok()?;
        match fs2::FileExt::try_lock_shared(&file) {
            Ok(()) => {
                let _ = fs2::FileExt::unlock(&file);
                None
            }
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => {
                Some(DaemonPid(read_pid(&mut file)))
            }
            // A filesystem without locks: no daemon could hold one either.
            Err(_) => None,
        }
    }
}

/// A live daemon's pid, when it has written it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaemonPid(pub Option<u32>);

impl std::fmt::Display for DaemonPid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "the ipnix daemon (pid {pid})"),
            None => write!(f, "an ipnix daemon"),
        }
    }
}

/// Held by a daemon from before it opens the store until it has stopped;
/// released when dropped or when the process dies, however it dies.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
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

/// Creates `path` with `bytes` unless it exists: written under a private
/// temporary name, then linked into place, which fails if another process
/// got there first (its complete file then stays).
fn publish_private_once(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(RepoError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
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

    #[test]
    fn api_token_is_private_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::open_or_init(dir.path()).expect("open");
        assert!(repo.read_api_token().is_err());
        repo.write_api_token("first").expect("write");
        repo.write_api_token("second").expect("write again");
        assert_eq!(repo.read_api_token().expect("read"), "second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(repo.api_token_path())
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        repo.remove_api_token();
        assert!(repo.read_api_token().is_err());
    }

    #[test]
    fn daemon_lock_is_exclusive_and_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::open_or_init(dir.path()).expect("open");
        assert_eq!(repo.live_daemon(), None);
        let lock = repo.try_lock_daemon().expect("first lock");
        assert_eq!(
            repo.live_daemon(),
            Some(DaemonPid(Some(std::process::id())))
        );
        match repo.try_lock_daemon() {
            Err(RepoError::DaemonRunning { pid, .. }) => {
                assert_eq!(pid, Some(std::process::id()))
            }
            other => panic!("a second daemon lock: {other:?}"),
        }
        drop(lock);
        assert_eq!(repo.live_daemon(), None);
        drop(repo.try_lock_daemon().expect("lock after release"));
    }

    #[test]
    fn identity_created_once_by_racing_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        publish_private_once(&path, b"first").expect("first");
        publish_private_once(&path, b"second").expect("second is a no-op");
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
    }
}
