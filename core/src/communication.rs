//! Communication: for now the durable email queue (table `email_queues`). Delivery over SMTP
//! comes with the communication issue; until then queued emails wait here, visible to admins.

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::CoreError;

/// email id -> QueuedEmail
const EMAIL_QUEUES: TableDefinition<u64, &[u8]> = TableDefinition::new("email_queues");

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EmailStatus {
    Queued,
    Sent,
    Dead,
}

impl EmailStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::Queued => "queued",
            EmailStatus::Sent => "sent",
            EmailStatus::Dead => "dead",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueuedEmail {
    pub id: u64,
    pub to: String,
    /// `verify_email`, `password_reset`, ...
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub status: EmailStatus,
    pub attempts: u32,
    pub created_ms: u64,
}

impl QueuedEmail {
    pub fn new(
        id: u64,
        to: String,
        kind: &str,
        subject: String,
        body: String,
        now_ms: u64,
    ) -> QueuedEmail {
        QueuedEmail {
            id,
            to,
            kind: kind.to_string(),
            subject,
            body,
            status: EmailStatus::Queued,
            attempts: 0,
            created_ms: now_ms,
        }
    }
}

pub fn enqueue_email(txn: &WriteTransaction, email: &QueuedEmail) -> Result<(), CoreError> {
    txn.open_table(EMAIL_QUEUES)?
        .insert(email.id, encode(email).as_slice())?;
    Ok(())
}

/// Queued emails, newest first, optionally only those to `to` (compared case-insensitively).
/// Scans at most `scan_max` rows so that a huge queue cannot stall a shard.
pub fn emails(
    read: &ReadTransaction,
    to: Option<&str>,
    limit: usize,
    scan_max: usize,
) -> Result<Vec<QueuedEmail>, CoreError> {
    let table = match read.open_table(EMAIL_QUEUES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()?.rev().take(scan_max) {
        let (_, value) = row?;
        let email: QueuedEmail = decode(value.value())?;
        if to.is_none_or(|t| email.to.eq_ignore_ascii_case(t)) {
            out.push(email);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Copies this module's tables (backups).
pub(crate) fn copy_tables(c: &mut crate::backup::Copier) -> Result<(), CoreError> {
    c.copy(EMAIL_QUEUES)?;
    Ok(())
}
