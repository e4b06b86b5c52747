use std::path::PathBuf;

/// Everything that can go wrong below the domain: opening, checking and committing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The data directory or one of its files could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data directory was made for another number of shards.
    #[error(
        "data dir {path} was created with {recorded} shards, but this start asked for {requested}; \
         start with --shards {recorded} (resharding is an offline admin task)"
    )]
    ShardCountMismatch {
        path: PathBuf,
        recorded: usize,
        requested: usize,
    },
    /// The manifest exists but cannot be understood.
    #[error("{path}: unreadable manifest: {reason}")]
    BadManifest { path: PathBuf, reason: String },
    /// Another process holds the database file open (a running server).
    #[error(
        "database {path} is in use by another process: is `nova serve` running on this data dir?"
    )]
    InUse { path: PathBuf },
    /// A database file failed its integrity check or could not be opened. It is left as it is.
    #[error("database {path} is damaged and was not opened (it has not been modified): {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// redb failed during a transaction.
    #[error("storage: {0}")]
    Redb(String),
    /// The writer thread has stopped (shutdown or a fatal commit error).
    #[error("the commit writer has stopped")]
    WriterStopped,
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Redb(e.to_string())
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError
);
