//! Copying a shard's database table by table, for backups: each module lists its own tables
//! (`copy_tables`), and `copy_all` checks that every table in the source was copied, so a new
//! table that no module lists stops the backup instead of being left out silently.

use std::collections::BTreeMap;

use redb::{
    Key, ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    Value, WriteTransaction,
};

use crate::CoreError;

/// Copies tables from a snapshot into a new database, counting rows per table.
pub struct Copier<'a> {
    read: &'a ReadTransaction,
    write: &'a WriteTransaction,
    /// table name -> rows copied
    pub copied: BTreeMap<String, u64>,
}

impl<'a> Copier<'a> {
    pub fn new(read: &'a ReadTransaction, write: &'a WriteTransaction) -> Copier<'a> {
        Copier {
            read,
            write,
            copied: BTreeMap::new(),
        }
    }

    /// Copies one table (absent in the source: nothing to do).
    pub fn copy<K: Key + 'static, V: Value + 'static>(
        &mut self,
        def: TableDefinition<K, V>,
    ) -> Result<(), CoreError> {
        let source = match self.read.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut target = self.write.open_table(def)?;
        let mut rows = 0u64;
        for row in source.iter()? {
            let (k, v) = row?;
            target.insert(k.value(), v.value())?;
            rows += 1;
        }
        self.copied.insert(def.name().to_string(), rows);
        Ok(())
    }
}

/// Copies every table of a shard's snapshot into `write`. Returns rows per table.
pub fn copy_all(
    read: &ReadTransaction,
    write: &WriteTransaction,
) -> Result<BTreeMap<String, u64>, CoreError> {
    let mut c = Copier::new(read, write);
    crate::identity::copy_tables(&mut c)?;
    crate::communication::copy_tables(&mut c)?;
    crate::content::copy_tables(&mut c)?;
    crate::social::copy_tables(&mut c)?;
    crate::profiles::copy_tables(&mut c)?;
    crate::events::copy_tables(&mut c)?;
    crate::messages::copy_tables(&mut c)?;
    crate::media::copy_tables(&mut c)?;
    crate::notifications::copy_tables(&mut c)?;
    crate::push::copy_tables(&mut c)?;
    crate::search::copy_tables(&mut c)?;
    crate::moderation::copy_tables(&mut c)?;
    crate::erasure::copy_tables(&mut c)?;
    let missed: Vec<String> = read
        .list_tables()?
        .map(|t| t.name().to_string())
        .filter(|name| !c.copied.contains_key(name))
        .collect();
    if !missed.is_empty() {
        return Err(CoreError::Corrupt(format!(
            "tables no module copies (a backup would lose them): {missed:?}"
        )));
    }
    Ok(c.copied)
}

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
