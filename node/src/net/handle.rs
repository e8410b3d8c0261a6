//! [`NodeHandle`]: the cloneable front of the swarm task. Each call sends one
//! command over a bounded channel and waits for its oneshot reply.

use super::{Multiaddr, NetError, PeerId};
use crate::bitswap::StatsSnapshot;
use bytes::Bytes;
use cid::Cid;
use futures::future::Either;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A connected peer as the swarm sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// Remote addresses of the open connections.
    pub addrs: Vec<Multiaddr>,
    /// Agent version from identify (`kubo/0.22.0/`, `helia/...`, `ipnix/0.1.0`).
    pub agent: Option<String>,
    /// Protocols the peer announced through identify.
    pub protocols: Vec<String>,
}

/// Counters for `/metrics` and `ipnix stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub peers: usize,
    pub connections: usize,
    /// Local callers waiting for blocks.
    pub block_waiters: usize,
    /// Peers in the LAN DHT routing table.
    pub lan_dht_peers: usize,
    /// Peers in the public DHT routing table (0 unless `--public`).
    pub public_dht_peers: usize,
    /// Keys this node announces as provider.
    pub provided_keys: usize,
    /// Bitswap's counters: blocks and bytes sent and received, wantlist sizes.
    pub bitswap: StatsSnapshot,
    /// The last few Bitswap transfers, newest first.
    pub transfers: Vec<crate::bitswap::Transfer>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NetError>>;

pub(crate) enum Command {
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Connect(Multiaddr, Reply<PeerId>),
    Disconnect(PeerId, oneshot::Sender<bool>),
    Provide(Cid, Reply<()>),
    FindProviders {
        cid: Cid,
        limit: usize,
        deadline: Instant,
        connect: bool,
        reply: Reply<Vec<PeerId>>,
    },
    GetBlock {
        cid: Cid,
        deadline: Instant,
        /// After a grace period, look the CID up in the DHT and connect to its providers.
        discover: bool,
        /// Part of a DAG someone waits for now (see `bitswap::WantOptions`).
        prompt: bool,
        reply: Reply<Bytes>,
    },
    AskPathInfo {
        hash_part: String,
        /// `None`: every connected peer.
        peers: Option<Vec<PeerId>>,
        deadline: Instant,
        reply: Reply<Option<(PeerId, Cid)>>,
    },
    AskSource {
        request: crate::sourceshare::Request,
        /// `None`: every connected peer.
        peers: Option<Vec<PeerId>>,
        /// Peers not to ask (their answer was refused before).
        exclude: Vec<PeerId>,
        deadline: Instant,
        reply: Reply<Option<(PeerId, Cid)>>,
    },
    /// Announce pinned roots and held path-infos now (after an import).
    Reprovide,
    NewBlocks(Vec<Cid>),
    Stats(oneshot::Sender<NodeStats>),
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable handle to a running [`Node`](super::Node).
#[derive(Clone)]
pub struct NodeHandle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl NodeHandle {
    pub(crate) fn new(peer_id: PeerId, commands: mpsc::Sender<Command>) -> Self {
        Self { peer_id, commands }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| NetError::Shutdown)?;
        rx.await.map_err(|_| NetError::Shutdown)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Addresses the node listens on, each ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(Command::ListenAddrs).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(Command::Peers).await
    }

    /// Dials `addr` (with or without `/p2p/`) and returns the peer once the
    /// connection is up; an already connected peer returns at once.
    pub async fn connect(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.ask(|tx| Command::Connect(addr, tx)).await?
    }

    /// Closes all connections to `peer`; false if it was not connected.
    pub async fn disconnect(&self, peer: PeerId) -> Result<bool, NetError> {
        self.ask(|tx| Command::Disconnect(peer, tx)).await
    }

    /// Announces this node as a provider of `cid` on the DHTs and waits until
    /// the announcement went out (Ok also when no DHT peer is known yet: the
    /// record is kept and republished).
    pub async fn provide(&self, cid: Cid) -> Result<(), NetError> {
        self.ask(|tx| Command::Provide(cid, tx)).await?
    }

    /// Asks peers over `/ipnix/pathinfo/1.0.0` which path-info they hold for
    /// a store-path hash part: connected peers at once and, in parallel,
    /// providers of its DHT key (connected as they are found). The first
    /// peer that names one wins; `None` when nobody did within `timeout`.
    /// The CID is only a pointer: the caller fetches and checks the block.
    pub async fn find_pathinfo(
        &self,
        hash_part: &str,
        timeout: Duration,
    ) -> Result<Option<(PeerId, Cid)>, NetError> {
        let key = crate::pathinfo::provider_cid(hash_part);
        Ok(self
            .first_answer(key, timeout, |peers, deadline| {
                self.ask_pathinfo(hash_part, peers, deadline)
            })
            .await)
    }

    /// Asks peers over `/ipnix/source/1.0.0` which path-info holds the
    /// source `request` names: connected peers at once and, in parallel,
    /// providers of its DHT key; never the peers in `exclude`. The first peer
    /// that names one wins; `None` when nobody did within `timeout`. The CID
    /// is only a pointer: [`find_source`](Self::find_source) fetches and
    /// verifies what it names.
    pub async fn ask_source(
        &self,
        request: &crate::sourceshare::Request,
        exclude: &[PeerId],
        timeout: Duration,
    ) -> Result<Option<(PeerId, Cid)>, NetError> {
        let key = crate::sourceshare::provider_cid(request);
        Ok(self
            .first_answer(key, timeout, |peers, deadline| {
                self.ask(move |reply| Command::AskSource {
                    request: request.clone(),
                    peers,
                    exclude: exclude.to_vec(),
                    deadline,
                    reply,
                })
            })
            .await)
    }

    /// Runs `ask` on the connected peers (`None`) and, in parallel, on the
    /// DHT providers of `key` once they are found and connected; the first
    /// positive answer wins, `None` when there was none within `timeout`.
    async fn first_answer<Ask, Asked>(
        &self,
        key: Cid,
        timeout: Duration,
        ask: Ask,
    ) -> Option<(PeerId, Cid)>
    where
        Ask: Fn(Option<Vec<PeerId>>, Instant) -> Asked,
        Asked: Future<Output = Result<Result<Option<(PeerId, Cid)>, NetError>, NetError>>,
    {
        let deadline = Instant::now() + timeout;
        let connected = async {
            match ask(None, deadline).await.and_then(|answer| answer) {
                Ok(found) => found,
                Err(e) => {
                    tracing::debug!("asking connected peers about {key}: {e}");
                    None
                }
            }
        };
        let via_dht = async {
            let providers = match self.connect_providers(key, 4, timeout).await {
                Ok(providers) if !providers.is_empty() => providers,
                _ => return None,
            };
            ask(Some(providers), deadline)
                .await
                .and_then(|answer| answer)
                .ok()
                .flatten()
        };
        let first_found = async {
            futures::pin_mut!(connected, via_dht);
            match futures::future::select(connected, via_dht).await {
                Either::Left((Some(found), _)) | Either::Right((Some(found), _)) => Some(found),
                Either::Left((None, other)) => other.await,
                Either::Right((None, other)) => other.await,
            }
        };
        tokio::time::timeout(timeout, first_found)
            .await
            .unwrap_or(None)
    }

    async fn ask_pathinfo(
        &self,
        hash_part: &str,
        peers: Option<Vec<PeerId>>,
        deadline: Instant,
    ) -> Result<Result<Option<(PeerId, Cid)>, NetError>, NetError> {
        self.ask(|reply| Command::AskPathInfo {
            hash_part: hash_part.to_owned(),
            peers,
            deadline,
            reply,
        })
        .await
    }
    /// Announces pinned roots and held path-infos in the DHT now, rather than
    /// at the next reprovide; returns at once.
    pub fn reprovide(&self) {
        // A full queue means a reprovide is already on its way.
        let _ = self.commands.try_send(Command::Reprovide);
    }

    /// Up to `limit` peers that provide `cid`, from the DHTs, within `timeout`.
    pub async fn find_providers(
        &self,
        cid: Cid,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<PeerId>, NetError> {
        self.lookup_providers(cid, limit, timeout, false).await
    }

    /// Like [`find_providers`](Self::find_providers), and dials each provider
    /// found so Bitswap can ask it.
    pub async fn connect_providers(
        &self,
        cid: Cid,
        limit: usize,
        timeout: Duration,
    ) -> Result<Vec<PeerId>, NetError> {
        self.lookup_providers(cid, limit, timeout, true).await
    }

    async fn lookup_providers(
        &self,
        cid: Cid,
        limit: usize,
        timeout: Duration,
        connect: bool,
    ) -> Result<Vec<PeerId>, NetError> {
        let deadline = Instant::now() + timeout;
        self.ask(|reply| Command::FindProviders {
            cid,
            limit,
            deadline,
            connect,
            reply,
        })
        .await?
    }

    /// One verified block over Bitswap from connected peers; when none has it
    /// after a short while, the DHT is asked for providers of `cid`.
    pub async fn get_block(&self, cid: Cid, timeout: Duration) -> Result<Bytes, NetError> {
        self.request_block(cid, timeout, true, false).await
    }

    /// One verified block over Bitswap from connected peers only (no DHT
    /// lookup): for the inner blocks of a DAG whose root came from a peer.
    /// `prompt`: someone waits for this DAG now, so peers serve it before
    /// walks that run ahead.
    pub async fn want_block(
        &self,
        cid: Cid,
        timeout: Duration,
        prompt: bool,
    ) -> Result<Bytes, NetError> {
        self.request_block(cid, timeout, false, prompt).await
    }

    async fn request_block(
        &self,
        cid: Cid,
        timeout: Duration,
        discover: bool,
        prompt: bool,
    ) -> Result<Bytes, NetError> {
        let deadline = Instant::now() + timeout;
        self.ask(|reply| Command::GetBlock {
            cid,
            deadline,
            discover,
            prompt,
            reply,
        })
        .await?
    }

    /// [`get_block`](Self::get_block) for blocking threads (e.g. inside
    /// `spawn_blocking`). Panics if called from an async task, like
    /// tokio's own blocking calls.
    pub fn get_block_blocking(&self, cid: Cid, timeout: Duration) -> Result<Bytes, NetError> {
        let (reply, rx) = oneshot::channel();
        let deadline = Instant::now() + timeout;
        self.commands
            .blocking_send(Command::GetBlock {
                cid,
                deadline,
                discover: true,
                prompt: false,
                reply,
            })
            .map_err(|_| NetError::Shutdown)?;
        rx.blocking_recv().map_err(|_| NetError::Shutdown)?
    }

    /// Tells Bitswap these blocks just entered the store, so peers that asked
    /// for them earlier (and were told DONT_HAVE) get them now. Call after an
    /// import or fetch commits; the root alone is enough for whole-DAG wants
    /// that start at the root.
    pub async fn notify_new_blocks(&self, cids: Vec<Cid>) -> Result<(), NetError> {
        self.commands
            .send(Command::NewBlocks(cids))
            .await
            .map_err(|_| NetError::Shutdown)
    }

    /// Counters for metrics.
    pub async fn stats(&self) -> Result<NodeStats, NetError> {
        self.ask(Command::Stats).await
    }

    /// Asks the swarm task to stop and waits for it to acknowledge; pending
    /// requests fail with [`NetError::Shutdown`]. Idempotent.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// True once the swarm task has stopped.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}
