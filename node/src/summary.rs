//! The figures that both the CLI (`ipnix peers`, `sources status`, `nix ls`)
//! and the status page report, computed in one place so the two always say
//! the same: how a peer is written, each pinned sources list's counts, and
//! the state of every indexed Nix store path.

use crate::net::PeerInfo;
use cid::Cid;
use ipnix_sources::list::{self, ListError};
use ipnix_sources::pin::{self, PinError};
use ipnix_store::{Store, StoreError};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use std::collections::{BTreeMap, HashSet};

/// Why a summary could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SummaryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    List(#[from] ListError),
    #[error("no sources list named {0:?} is pinned")]
    NoSuchList(String),
}

/// A connected peer as one dialable address, `/ip4/…/tcp/…/p2p/<id>`, as
/// Kubo's `swarm peers` prints it: the first connection's remote address
/// (which already ends in `/p2p/<id>` when this node dialled it) with the
/// peer id once at the end; `/p2p/<id>` alone when no address is known.
pub fn peer_address(peer: &PeerInfo) -> String {
    let mut addr = peer.addrs.first().cloned().unwrap_or_else(Multiaddr::empty);
    while matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr.with(Protocol::P2p(peer.peer_id)).to_string()
}

/// One pinned sources list, counted as `ipnix sources status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSummary {
    pub name: String,
    /// The list's root block.
    pub cid: Cid,
    pub revision: Option<String>,
    /// Entries in the sources.json.
    pub total: u64,
    pub ok: u64,
    /// Bytes of the entries that are ok.
    pub bytes: u64,
    /// Failed entries by reason (`not-found`, `hash-mismatch`, ...).
    pub failures: BTreeMap<String, u64>,
    /// Skipped entries by reason.
    pub skips: BTreeMap<String, u64>,
    /// Unix seconds of the latest attempt on any entry.
    pub last_attempt: u64,
}

impl ListSummary {
    pub fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    pub fn skipped(&self) -> u64 {
        self.skips.values().sum()
    }
}

/// The pinned sources lists (`name`, or all of them) with their counts.
/// `sources` also collects the path-infos the ok entries name, for
/// [`nix_paths`].
pub fn sources_lists(
    store: &Store,
    name: Option<&str>,
    mut sources: Option<&mut HashSet<Cid>>,
) -> Result<Vec<ListSummary>, SummaryError> {
    let selected = match name {
        Some(name) => match pin::find_list(store, name)? {
            Some(cid) => vec![(name.to_owned(), cid)],
            None => return Err(SummaryError::NoSuchList(name.to_owned())),
        },
        None => pin::lists(store)?,
    };
    let mut out = Vec::with_capacity(selected.len());
    for (name, cid) in selected {
        let root = list::load_root(store, &cid)?;
        let mut summary = ListSummary {
            name,
            cid,
            revision: root.revision.clone(),
            total: root.total,
            ok: 0,
            bytes: 0,
            failures: BTreeMap::new(),
            skips: BTreeMap::new(),
            last_attempt: 0,
        };
        list::for_each_entry(store, &root, |e| {
            summary.last_attempt = summary.last_attempt.max(e.attempted);
            let reason = e.reason.clone().unwrap_or_default();
            match e.status.as_str() {
                "ok" => {
                    summary.ok += 1;
                    summary.bytes += e.size.unwrap_or(0);
                    if let Some(set) = sources.as_deref_mut() {
                        set.extend(e.source);
                        set.extend(e.aliases.iter().copied());
                    }
                }
                "failed" => *summary.failures.entry(reason).or_default() += 1,
                _ => *summary.skips.entry(reason).or_default() += 1,
            }
        })?;
        out.push(summary);
    }
    Ok(out)
}

/// What holds an indexed Nix store path in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NixPathStatus {
    /// A pin names its path-info (`ipnix nix import`'s `nix:` pins).
    Pinned,
    /// An ok entry of a pinned sources list names it (the list's pin keeps it).
    Source,
    /// Its path-info is in the store but nothing named above keeps it:
    /// fetched for the binary cache, or left by a removed pin; GC may take it.
    Unpinned,
    /// The index names a path-info whose block is gone.
    Missing,
}

impl NixPathStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::Source => "source",
            Self::Unpinned => "unpinned",
            Self::Missing => "missing",
        }
    }
}

/// One entry of the store-path index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NixPath {
    /// The store path's hash part.
    pub hash_part: String,
    pub pathinfo: Cid,
    pub status: NixPathStatus,
    /// Imported from this machine's Nix store (the daemon may sign it).
    pub local_nix: bool,
}

/// Every indexed Nix store path, in hash-part order. `sources`: the
/// path-infos pinned sources lists name ([`sources_lists`] collects them).
/// Entries that are not a CID (a damaged index) are left out, as the binary
/// cache ignores them.
pub fn nix_paths(store: &Store, sources: &HashSet<Cid>) -> Result<Vec<NixPath>, SummaryError> {
    let pinned: HashSet<Cid> = store.pins()?.into_iter().map(|p| p.cid).collect();
    let mut out = Vec::new();
    for (key, value) in store.index_scan(crate::pathinfo::PATH_INDEX)? {
        let Ok(pathinfo) = Cid::try_from(value.as_slice()) else {
            continue;
        };
        let status = if pinned.contains(&pathinfo) {
            NixPathStatus::Pinned
        } else if sources.contains(&pathinfo) {
            NixPathStatus::Source
        } else if store.has(&pathinfo)? {
            NixPathStatus::Unpinned
        } else {
            NixPathStatus::Missing
        };
        out.push(NixPath {
            hash_part: String::from_utf8_lossy(&key).into_owned(),
            pathinfo,
            status,
            local_nix: crate::http::nixcache::is_from_local_nix(store, &pathinfo)?,
        });
    }
    Ok(out)
}

/// How many paths have each status.
pub fn count_by_status(paths: &[NixPath]) -> BTreeMap<NixPathStatus, u64> {
    let mut counts = BTreeMap::new();
    for path in paths {
        *counts.entry(path.status).or_default() += 1;
    }
    counts
}

/// The store path a path-info names, if its block is here and readable.
pub fn store_path_of(store: &Store, pathinfo: &Cid) -> Option<String> {
    ipnix_bridge::export::load_pathinfo(store, pathinfo)
        .ok()
        .map(|info| info.store_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_address_names_the_peer_once() {
        let peer = libp2p::PeerId::random();
        let dialled: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .expect("multiaddr");
        let accepted: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/5555".parse().expect("multiaddr");
        for addr in [dialled, accepted] {
            let info = PeerInfo {
                peer_id: peer,
                addrs: vec![addr],
                agent: None,
                protocols: Vec::new(),
            };
            let text = peer_address(&info);
            assert_eq!(text.matches("/p2p/").count(), 1, "{text}");
            assert!(text.starts_with("/ip4/127.0.0.1/tcp/"), "{text}");
            assert!(text.ends_with(&format!("/p2p/{peer}")), "{text}");
        }
        let bare = PeerInfo {
            peer_id: peer,
            addrs: Vec::new(),
            agent: None,
            protocols: Vec::new(),
        };
        assert_eq!(peer_address(&bare), format!("/p2p/{peer}"));
    }
}
