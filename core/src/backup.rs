//! What a backup records about a shard's database. Backups themselves are byte images of the
//! database files (storage/src/snapshot.rs), so no module lists its tables for them.

use std::collections::BTreeMap;

use redb::{ReadTransaction, ReadableTableMetadata, TableHandle};

use crate::CoreError;

/// Rows per table of a shard's database (for `verify` and stats).
pub fn table_rows(read: &ReadTransaction) -> Result<BTreeMap<String, u64>, CoreError> {
    let mut out = BTreeMap::new();
    for handle in read.list_tables()? {
        let name = handle.name().to_string();
        let table = read.open_untyped_table(handle)?;
        out.insert(name, table.len()?);
    }
    Ok(out)
}
