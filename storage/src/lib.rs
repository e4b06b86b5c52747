//! Nova's storage layer: one redb database per shard, the data-dir manifest that pins the shard
//! count, the integrity check at open, and group commit on a writer thread per shard.
//!
//! This crate knows nothing of the domain: `nova-core` declares the tables and passes closures
//! that run inside a write transaction. Keeping the boundary this narrow is what leaves room
//! for a second backend later.

mod datadir;
mod error;
mod gather;
mod snapshot;
mod wal;
mod writer;

pub use datadir::{DataDir, Manifest, MANIFEST_FILE};
pub use error::StorageError;
pub use snapshot::{quiet_image, Image, Tap, IMAGE_CHUNK_BYTES};
pub use writer::{
    refuse_unapplied_log, unapplied_log_frames, CommitStats, CommitStatsSnapshot, Partition,
    Replay, WriteFailure, FSYNC_BUCKETS_S,
};

/// Re-exported so that `core` and the engine name the same redb types.
pub use redb;
