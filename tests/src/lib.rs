//! Shared helpers for the workspace integration tests: running the `ipnix`
//! binary, starting real Kubo and Helia peers, skipping with a printed reason.

pub mod cli;
pub mod corpus;
pub mod netns;
pub mod nix;
pub mod peers;
pub mod swh;
pub mod tarball_corpus;
pub mod upstream;
