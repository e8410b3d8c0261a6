//! Talking to the local Nix: `nix path-info --json [--recursive]` (Nix 2.8
//! JSON), `nix-store --dump` as a streamed child stdout, closure ordering
//! (dependencies first), and importing a closure from the local store.

use crate::hash::NixHash;
use crate::import::{import_nar, ImportError, Imported, PathMeta};
use crate::pathinfo::{split_store_path, Reference};
use cid::Cid;
use ipnix_store::BlockWrite;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Largest `nix path-info --json` output read (about 1 KiB per path).
const MAX_JSON_LEN: u64 = 256 * 1024 * 1024;

/// Why talking to Nix failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NixStoreError {
    #[error("could not run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot parse `nix path-info --json` output: {0}")]
    Json(String),
    #[error("store path {0} is not valid in the local Nix store")]
    Invalid(String),
    #[error("path-info of {path}: {reason}")]
    Field { path: String, reason: String },
    #[error("{path} references {reference}, which is not in the set being ordered")]
    MissingReference { path: String, reference: String },
    #[error("reference cycle among {0:?}")]
    Cycle(Vec<String>),
    #[error("reading the NAR of {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("importing {path}: {source}")]
    Import {
        path: String,
        #[source]
        source: ImportError,
    },
}

/// What `nix path-info --json` says about one valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixPathInfo {
    pub path: String,
    pub nar_hash: NixHash,
    pub nar_size: u64,
    /// Full paths, possibly including `path` itself.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub signatures: Vec<String>,
    pub ca: Option<String>,
}

impl NixPathInfo {
    /// Import metadata, with the path-info CIDs of the references taken from `known`.
    pub fn to_meta(&self, known: &HashMap<String, Cid>) -> Result<PathMeta, NixStoreError> {
        let mut meta = PathMeta::new(self.path.clone());
        for reference in &self.references {
            if *reference == self.path {
                meta.self_reference = true;
                continue;
            }
            let info = known
                .get(reference)
                .ok_or_else(|| NixStoreError::MissingReference {
                    path: self.path.clone(),
                    reference: reference.clone(),
                })?;
            meta.references.push(Reference {
                path: reference.clone(),
                info: *info,
            });
        }
        meta.signatures = self.signatures.clone();
        meta.deriver = self.deriver.clone();
        meta.ca = self.ca.clone();
        meta.expected_nar_hash = Some(self.nar_hash.clone());
        meta.expected_nar_size = Some(self.nar_size);
        Ok(meta)
    }
}

fn run_capture(mut cmd: Command) -> Result<Vec<u8>, NixStoreError> {
    let command = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NixStoreError::Spawn {
            command: command.clone(),
            source,
        })?;
    let mut stdout = Vec::new();
    let stdout_pipe = child.stdout.take().expect("stdout is piped");
    let stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr_pipe.take(64 * 1024).read_to_end(&mut text);
        text
    });
    let read = stdout_pipe.take(MAX_JSON_LEN).read_to_end(&mut stdout);
    let status = child.wait().map_err(|source| NixStoreError::Spawn {
        command: command.clone(),
        source,
    })?;
    let stderr = stderr_thread.join().unwrap_or_default();
    read.map_err(|source| NixStoreError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(NixStoreError::Failed {
            command,
            status: status.to_string(),
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        });
    }
    Ok(stdout)
}

/// Runs `nix path-info --json [--recursive] PATHS` and parses the answer.
pub fn path_info(paths: &[String], recursive: bool) -> Result<Vec<NixPathInfo>, NixStoreError> {
    let mut cmd = Command::new("nix");
    cmd.args([
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
    ]);
    if recursive {
        cmd.arg("--recursive");
    }
    cmd.arg("--").args(paths);
    parse_path_info_json(&run_capture(cmd)?)
}

/// Parses Nix 2.8's `nix path-info --json` array.
pub fn parse_path_info_json(json: &[u8]) -> Result<Vec<NixPathInfo>, NixStoreError> {
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| NixStoreError::Json(e.to_string()))?;
    let items = value
        .as_array()
        .ok_or_else(|| NixStoreError::Json("expected a JSON array".into()))?;
    items.iter().map(parse_one).collect()
}

fn parse_one(item: &serde_json::Value) -> Result<NixPathInfo, NixStoreError> {
    let path = item
        .get("path")
        .and_then(|p| p.as_str())
        .ok_or_else(|| NixStoreError::Json("entry without a path".into()))?
        .to_owned();
    let bad = |reason: String| NixStoreError::Field {
        path: path.clone(),
        reason,
    };
    if item.get("valid").and_then(|v| v.as_bool()) == Some(false) {
        return Err(NixStoreError::Invalid(path));
    }
    split_store_path(&path).map_err(&bad)?;
    let nar_hash = item
        .get("narHash")
        .and_then(|v| v.as_str())
        .ok_or_else(|| bad("no narHash".into()))?;
    let nar_hash = NixHash::parse(nar_hash).map_err(|e| bad(e.to_string()))?;
    let nar_size = item
        .get("narSize")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| bad("no narSize".into()))?;
    let strings = |key: &str| -> Result<Vec<String>, NixStoreError> {
        match item.get(key) {
            None | Some(serde_json::Value::Null) => Ok(Vec::new()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(format!("{key} holds a non-string")))
                })
                .collect(),
            Some(_) => Err(bad(format!("{key} is not a list"))),
        }
    };
    let references = strings("references")?;
    for reference in &references {
        split_store_path(reference).map_err(&bad)?;
    }
    let optional = |key: &str| item.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(NixPathInfo {
        nar_hash,
        nar_size,
        references,
        deriver: optional("deriver"),
        signatures: strings("signatures")?,
        ca: optional("ca"),
        path,
    })
}

/// [`closure_order`] of a set that need not be closed: references to paths
/// outside `infos` count as already satisfied (imported before, or left to
/// the caller).
pub fn order_within(infos: Vec<NixPathInfo>) -> Result<Vec<NixPathInfo>, NixStoreError> {
    let in_set: std::collections::HashSet<String> = infos.iter().map(|i| i.path.clone()).collect();
    let mut full: HashMap<String, Vec<String>> = HashMap::new();
    let restricted = infos
        .into_iter()
        .map(|mut info| {
            let (inside, _): (Vec<String>, Vec<String>) = info
                .references
                .iter()
                .cloned()
                .partition(|r| in_set.contains(r));
            full.insert(
                info.path.clone(),
                std::mem::replace(&mut info.references, inside),
            );
            info
        })
        .collect();
    let mut order = closure_order(restricted)?;
    for info in &mut order {
        if let Some(references) = full.remove(&info.path) {
            info.references = references;
        }
    }
    Ok(order)
}

/// Orders path-infos so that every path comes after the paths it references
/// (a self-reference is ignored). Ties are broken by path for determinism.
pub fn closure_order(infos: Vec<NixPathInfo>) -> Result<Vec<NixPathInfo>, NixStoreError> {
    let mut by_path: BTreeMap<String, NixPathInfo> = BTreeMap::new();
    for info in infos {
        by_path.insert(info.path.clone(), info);
    }
    let mut pending: BTreeMap<String, usize> = BTreeMap::new();
    let mut dependents: HashMap<String, Vec<String>> = HashMap::new();
    for (path, info) in &by_path {
        let mut count = 0;
        for reference in &info.references {
            if reference == path {
                continue;
            }
            if !by_path.contains_key(reference) {
                return Err(NixStoreError::MissingReference {
                    path: path.clone(),
                    reference: reference.clone(),
                });
            }
            count += 1;
            dependents
                .entry(reference.clone())
                .or_default()
                .push(path.clone());
        }
        pending.insert(path.clone(), count);
    }
    let mut ready: std::collections::BTreeSet<String> = pending
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(p, _)| p.clone())
        .collect();
    let mut order = Vec::with_capacity(by_path.len());
    while let Some(path) = ready.pop_first() {
        pending.remove(&path);
        for dependent in dependents.get(&path).into_iter().flatten() {
            let count = pending
                .get_mut(dependent)
                .expect("dependents are pending until their count is zero");
            *count -= 1;
            if *count == 0 {
                ready.insert(dependent.clone());
            }
        }
        order.push(by_path.remove(&path).expect("every ready path is known"));
    }
    if !pending.is_empty() {
        return Err(NixStoreError::Cycle(pending.into_keys().collect()));
    }
    Ok(order)
}

/// `nix-store --dump PATH` as a stream; [`finish`](Self::finish) checks the exit status.
pub struct Dump {
    path: String,
    child: Child,
    stdout: ChildStdout,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Dump {
    pub fn start(path: &str) -> Result<Self, NixStoreError> {
        let mut cmd = Command::new("nix-store");
        cmd.arg("--dump").arg(path);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NixStoreError::Spawn {
                command: format!("nix-store --dump {path}"),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr_pipe.take(64 * 1024).read_to_end(&mut text);
            text
        });
        Ok(Dump {
            path: path.to_owned(),
            child,
            stdout,
            stderr: Some(stderr),
        })
    }

    /// Waits for `nix-store` and fails if it did not exit cleanly.
    pub fn finish(mut self) -> Result<(), NixStoreError> {
        let status = self.child.wait().map_err(|source| NixStoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        if status.success() {
            Ok(())
        } else {
            Err(NixStoreError::Failed {
                command: format!("nix-store --dump {}", self.path),
                status: status.to_string(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
            })
        }
    }
}

impl Read for Dump {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        // An abandoned dump must not leave a child behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One path of an imported closure.
#[derive(Debug, Clone)]
pub struct ClosureItem {
    pub path: String,
    pub pathinfo_cid: Cid,
    /// `None` when `known` already had the path.
    pub imported: Option<Imported>,
}

/// Imports the closures of `paths` from the local Nix store, dependencies
/// first. `known` returns the path-info CID of a path already imported (those
/// are skipped). Each NAR is checked against Nix's NAR hash and size.
pub fn import_closure<W: BlockWrite>(
    w: &mut W,
    paths: &[String],
    mut known: impl FnMut(&str) -> Option<Cid>,
) -> Result<Vec<ClosureItem>, NixStoreError> {
    let infos = closure_order(path_info(paths, true)?)?;
    let mut cids: HashMap<String, Cid> = HashMap::new();
    let mut items = Vec::with_capacity(infos.len());
    for info in infos {
        if let Some(cid) = known(&info.path) {
            cids.insert(info.path.clone(), cid);
            items.push(ClosureItem {
                path: info.path,
                pathinfo_cid: cid,
                imported: None,
            });
            continue;
        }
        let meta = info.to_meta(&cids)?;
        let mut dump = Dump::start(&info.path)?;
        let imported = import_nar(w, &mut dump, meta).map_err(|source| NixStoreError::Import {
            path: info.path.clone(),
            source,
        })?;
        dump.finish()?;
        cids.insert(info.path.clone(), imported.pathinfo_cid);
        items.push(ClosureItem {
            path: info.path,
            pathinfo_cid: imported.pathinfo_cid,
            imported: Some(imported),
        });
    }
    Ok(items)
}
