//! ipnix-node: the libp2p peer (Bitswap 1.2.0, Kademlia, mDNS), the daemon,
//! its HTTP surfaces (control API, trustless gateway, Nix binary cache) and the
//! repo layout the `ipnix` binary works on.

pub mod bitswap;
pub mod config;
pub mod daemon;
pub mod fetch;
pub mod http;
pub mod metrics;
pub mod net;
pub mod pathinfo;
pub mod repo;
pub mod sourceshare;
pub mod summary;
