//! Nova's domain: each module owns its redb tables (declared privately inside it) and exposes
//! functions that run inside a read or write transaction handed to it by the engine.
//!
//! `core` does no I/O of its own and never names glommio, sockets or HTTP: the engine decides
//! where and when a function runs (which shard, which commit batch), `core` decides what it
//! means. Time comes in as an argument (`now_ms`), so every rule here is testable on redb's
//! in-memory backend.

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod backup;
pub mod codec;
pub mod communication;
pub mod content;
pub mod erasure;
mod error;
pub mod events;
pub mod identity;
mod ids;
pub mod media;
pub mod messages;
pub mod moderation;
pub mod notifications;
pub mod password;
pub mod profiles;
pub mod push;
pub mod search;
pub mod social;
pub mod tokens;

pub use error::{CoreError, Invalid};
pub use ids::{id_ms, shard_for_key, shard_of, IdGen, ID_EPOCH_MS, SHARDS_MAX};

/// A table in a read transaction, or `None` when no write has created it yet.
pub(crate) fn table_or_none<K: redb::Key + 'static, V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    def: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, CoreError> {
    match read.open_table(def) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
