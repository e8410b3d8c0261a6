//! ipnix-bridge: the Nix side of ipnix. NAR <-> git-tree IPLD DAGs, the
//! path-info object, narinfo files and their ed25519 signatures, talking to
//! the local Nix, and reading existing binary caches. No libp2p here.

pub mod ca;
pub mod cache_client;
pub mod dump;
pub mod export;
pub mod git;
pub mod hash;
pub mod import;
pub mod nar;
pub mod narinfo;
pub mod nixstore;
pub mod path_index;
pub mod pathinfo;
pub mod swhid;

pub use ca::{ContentAddress, FileIngestion};
pub use export::{
    export_dir, export_dir_with, export_nar, export_nar_with, load_pathinfo, BlobRebuilder,
    ExportError, NoRebuilder,
};
pub use hash::{HashAlgo, NixHash, StorePath};
pub use import::{import_nar, ImportError, Imported, PathMeta};
pub use nar::{NarEvent, NarReader, NarSummary, NarWriter};
pub use pathinfo::PathInfo;
