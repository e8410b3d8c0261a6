//! ipnix-sources: keeps the source tarballs behind Nix's fixed-output
//! derivations by content, so builds still get them when upstream rots.
//!
//! Layout:
//! - [`model`]: nixpkgs-swh `sources.json` (version 1) as published: entries,
//!   expected hashes in every form Nix writes, flat or recursive, skips.
//! - [`fetch`]: HTTP(S) downloads across an entry's mirror URLs: redirects,
//!   proxies, timeouts, retries, Range resume, size caps, per-host limits.
//! - [`unpack`]: archives (tar, gz, bz2, xz, zst, zip) unpacked into a fresh
//!   directory with every unsafe entry refused, then served as a NAR.
//! - [`index`]: the hash -> source index in the store's redb.
//! - [`list`]: the pinned list object (DAG-CBOR) with every entry's outcome.
//! - [`pin`]: the pinner that ties them together, resumable after a crash.
//! - [`recipe`]: tarballs as trees: byte-exact disassembly and reassembly.
//! - [`tarball`]: flat sources pinned as tree + recipe, rebuilt for NARs
//!   and the hashed mirror.
//! - [`swh`]: Software Heritage, the last fallback (content, ExtIDs, the
//!   vault) and the `known` batches behind `ipnix swh coverage`.
//!
//! Dependencies run one way: store <- bridge <- sources <- node.

pub mod fetch;
pub mod index;
pub mod list;
pub mod model;
pub mod pin;
pub mod recipe;
pub mod swh;
pub mod tarball;
pub mod unpack;
