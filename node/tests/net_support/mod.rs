//! Nodes for in-process network tests: a node on a throwaway store,
//! listening on loopback, and small waiting helpers.
#![allow(dead_code)] // each test binary uses its own part

use ipnix_node::net::{Keypair, Multiaddr, NetConfig, Node, NodeHandle};
use ipnix_store::Store;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TestNode {
    pub node: Node,
    pub store: Arc<Store>,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start(configure: impl FnOnce(&mut NetConfig)) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let mut config = NetConfig::loopback(Keypair::generate_ed25519());
        configure(&mut config);
        let node = Node::start(config, store.clone())
            .await
            .expect("node starts");
        TestNode { node, store, dir }
    }

    pub fn handle(&self) -> NodeHandle {
        self.node.handle()
    }

    pub async fn addr(&self, quic: bool) -> Multiaddr {
        self.handle()
            .listen_addrs()
            .await
            .expect("addrs")
            .into_iter()
            .find(|a| a.to_string().contains("/quic-v1") == quic)
            .expect("a listen address of that transport")
    }
}

pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut data);
    data
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
