//! The redb block store: block index, inline small blocks, pack files for
//! large ones, pins, temporary pins, GC and generic indexes.
//! (Being written; the error enum below is the shared contract.)

use crate::block::BlockError;
use crate::links::LinksError;
use cid::Cid;

/// Everything that can go wrong in the block store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Links(#[from] LinksError),
    #[error("block {0} is not in the store")]
    Missing(Cid),
    #[error("database error: {0}")]
    Db(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}
