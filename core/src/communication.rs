//! Communication: the durable email queue (tables `email_queues` and `email_states`), and
//! where each user's notification digests stand (`digests_sent`).
//!
//! An email moves `queued -> sending -> sent`, or `queued -> sending -> queued` (a failed try,
//! due again after a backoff) and finally `dead` after the last allowed try. `dead` emails are
//! kept and can be moved back to `queued` by an admin. The engine (shards/src/mail.rs) does
//! the SMTP; this module holds every rule and does no I/O: time and randomness (jitter) are
//! arguments.
//!
//! Exactly-once across a crash: an email is marked `sending` (durably) before it is handed to
//! SMTP and `sent` as soon as the relay accepts it. An email found in `sending` at start-up
//! was interrupted: the relay may or may not have it. It goes back to `queued` and is sent
//! again with the same Message-ID (assigned once, at its first claim, and never changed), so a
//! receiving system can recognise the duplicate.

use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::CoreError;

/// email id -> QueuedEmail
const EMAIL_QUEUES: TableDefinition<u64, &[u8]> = TableDefinition::new("email_queues");
/// (state code, order, email id) -> (): the emails in each state. `order` is `next_attempt_ms`
/// for queued emails (so the due ones are a range), `updated_ms` for the others.
const EMAIL_STATES: TableDefinition<(u8, u64, u64), ()> = TableDefinition::new("email_states");

/// user id -> (when its last digest was made, ms; the newest notification id it covered):
/// the users who want digests (profiles' `user_digests`) once their first was considered.
const DIGESTS_SENT: TableDefinition<u64, (u64, u64)> = TableDefinition::new("digests_sent");

/// Error texts kept with an email, at most (SMTP servers can answer at length).
const ERROR_BYTES_MAX: usize = 500;

// Appending variants keeps old records readable (postcard stores the variant index).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum EmailStatus {
    Queued,
    Sent,
    Dead,
    /// Handed to SMTP; the outcome is not recorded yet.
    Sending,
}

impl EmailStatus {
    pub const ALL: [EmailStatus; 4] = [
        EmailStatus::Queued,
        EmailStatus::Sending,
        EmailStatus::Sent,
        EmailStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EmailStatus::Queued => "queued",
            EmailStatus::Sent => "sent",
            EmailStatus::Dead => "dead",
            EmailStatus::Sending => "sending",
        }
    }

    pub fn parse(s: &str) -> Option<EmailStatus> {
        EmailStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    fn code(self) -> u8 {
        match self {
            EmailStatus::Queued => 0,
            EmailStatus::Sending => 1,
            EmailStatus::Sent => 2,
            EmailStatus::Dead => 3,
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
    /// Tries started so far (a try interrupted by a crash counts).
    pub attempts: u32,
    pub created_ms: u64,
    /// When a queued email is due (its next try); for other states, when it last was.
    pub next_attempt_ms: u64,
    /// Last change of state.
    pub updated_ms: u64,
    /// Why the last try failed.
    pub last_error: Option<String>,
    /// `<id@domain>`, set at the first claim and never changed afterwards.
    pub message_id: Option<String>,
}

/// The shape written before delivery existed (no retry fields): still readable.
#[derive(Deserialize)]
struct QueuedEmailV0 {
    id: u64,
    to: String,
    kind: String,
    subject: String,
    body: String,
    status: EmailStatus,
    attempts: u32,
    created_ms: u64,
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
            next_attempt_ms: now_ms,
            updated_ms: now_ms,
            last_error: None,
            message_id: None,
        }
    }

    fn index_key(&self) -> (u8, u64, u64) {
        let order = match self.status {
            EmailStatus::Queued => self.next_attempt_ms,
            _ => self.updated_ms,
        };
        (self.status.code(), order, self.id)
    }
}

fn decode_email(bytes: &[u8]) -> Result<QueuedEmail, CoreError> {
    match decode::<QueuedEmail>(bytes) {
        Ok(e) => Ok(e),
        Err(first) => {
            let Ok(old) = decode::<QueuedEmailV0>(bytes) else {
                return Err(first);
            };
            Ok(QueuedEmail {
                next_attempt_ms: old.created_ms,
                updated_ms: old.created_ms,
                last_error: None,
                message_id: None,
                id: old.id,
                to: old.to,
                kind: old.kind,
                subject: old.subject,
                body: old.body,
                status: old.status,
                attempts: old.attempts,
                created_ms: old.created_ms,
            })
        }
    }
}

/// How often and how patiently an email is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all; after the last failed one the email is dead.
    pub attempts_max: u32,
    /// Wait after the first failure; doubled after each further one.
    pub backoff_base_ms: u64,
    /// The wait never exceeds this.
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    /// The wait after `attempts` failed tries: exponential, capped, with "equal jitter" (half
    /// fixed, half random from `jitter`) so that emails that failed together spread out.
    pub fn backoff_ms(&self, attempts: u32, jitter: u64) -> u64 {
        let doublings = attempts.saturating_sub(1).min(32);
        let full = self
            .backoff_base_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms);
        let half = full / 2;
        half + jitter % (full - half + 1)
    }
}

/// What one try came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The relay answered 250 to the message.
    Sent,
    /// The try failed; `error` says how (kept, shortened, with the email).
    Failed { error: String },
    /// The email could never be sent (e.g. an address the mailer cannot parse): dead at once.
    Rejected { error: String },
    /// Never tried (the mailer was stopping): back to queued, the try not counted.
    NotTried,
}

/// Writes `email` and moves its state index entry from `old`'s.
fn put(
    txn: &WriteTransaction,
    email: &QueuedEmail,
    old: Option<&QueuedEmail>,
) -> Result<(), CoreError> {
    let mut states = txn.open_table(EMAIL_STATES)?;
    if let Some(old) = old {
        states.remove(old.index_key())?;
    }
    states.insert(email.index_key(), ())?;
    txn.open_table(EMAIL_QUEUES)?
        .insert(email.id, encode(email).as_slice())?;
    Ok(())
}

fn get(txn: &WriteTransaction, id: u64) -> Result<Option<QueuedEmail>, CoreError> {
    let table = txn.open_table(EMAIL_QUEUES)?;
    let found = table.get(id)?;
    match found {
        Some(v) => Ok(Some(decode_email(v.value())?)),
        None => Ok(None),
    }
}

/// Queues a new email, due at once.
pub fn enqueue_email(txn: &WriteTransaction, email: &QueuedEmail) -> Result<(), CoreError> {
    assert_eq!(email.status, EmailStatus::Queued, "a new email is queued");
    put(txn, email, None)
}

/// Ids of up to `limit` emails in `status`, oldest order key first.
fn ids_in_state(
    states: &impl ReadableTable<(u8, u64, u64), ()>,
    status: EmailStatus,
    order_max: u64,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let code = status.code();
    let mut ids = Vec::new();
    for row in states.range((code, 0, 0)..=(code, order_max, u64::MAX))? {
        let (key, _) = row?;
        ids.push(key.value().2);
        if ids.len() >= limit {
            break;
        }
    }
    Ok(ids)
}

/// When the earliest queued email is due, if any is queued.
pub fn next_due_ms(read: &ReadTransaction) -> Result<Option<u64>, CoreError> {
    let states = match read.open_table(EMAIL_STATES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let code = EmailStatus::Queued.code();
    let first = states
        .range((code, 0, 0)..=(code, u64::MAX, u64::MAX))?
        .next();
    match first {
        Some(row) => Ok(Some(row?.0.value().1)),
        None => Ok(None),
    }
}

/// Claims up to `limit` queued emails due by `now_ms`: each becomes `sending`, its try is
/// counted, and it gets its Message-ID (`<id@msgid_domain>`) if it has none yet. The caller
/// must hand them to SMTP only after this transaction is durable.
pub fn claim_due(
    txn: &WriteTransaction,
    now_ms: u64,
    limit: usize,
    msgid_domain: &str,
) -> Result<Vec<QueuedEmail>, CoreError> {
    let ids = ids_in_state(
        &txn.open_table(EMAIL_STATES)?,
        EmailStatus::Queued,
        now_ms,
        limit,
    )?;
    let mut claimed = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(old) = get(txn, id)? else {
            return Err(CoreError::Corrupt(format!(
                "email {id} is indexed but missing"
            )));
        };
        let mut email = old.clone();
        email.status = EmailStatus::Sending;
        email.attempts = email.attempts.saturating_add(1);
        email.updated_ms = now_ms;
        if email.message_id.is_none() {
            email.message_id = Some(format!("<{}@{}>", email.id, msgid_domain));
        }
        put(txn, &email, Some(&old))?;
        claimed.push(email);
    }
    Ok(claimed)
}

/// Start-up: every email still `sending` was interrupted by the end of the previous process;
/// the relay may or may not have accepted it. Each goes back to `queued`, due at once, keeping
/// its Message-ID. Returns the ids moved (at most `limit`; call again while it returns some).
pub fn requeue_interrupted(
    txn: &WriteTransaction,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let ids = ids_in_state(
        &txn.open_table(EMAIL_STATES)?,
        EmailStatus::Sending,
        u64::MAX,
        limit,
    )?;
    for id in &ids {
        let Some(old) = get(txn, *id)? else {
            return Err(CoreError::Corrupt(format!(
                "email {id} is indexed but missing"
            )));
        };
        let mut email = old.clone();
        email.status = EmailStatus::Queued;
        email.next_attempt_ms = now_ms;
        email.updated_ms = now_ms;
        email.last_error = Some("interrupted while sending (process ended)".to_string());
        put(txn, &email, Some(&old))?;
    }
    Ok(ids)
}

/// Records the outcome of a try. `jitter` is a random number (for the backoff). An email that
/// is no longer `sending` (an admin moved it) is left alone. Returns the new state.
pub fn record_outcome(
    txn: &WriteTransaction,
    id: u64,
    outcome: &Outcome,
    now_ms: u64,
    policy: &RetryPolicy,
    jitter: u64,
) -> Result<Option<EmailStatus>, CoreError> {
    let Some(old) = get(txn, id)? else {
        return Ok(None);
    };
    if old.status != EmailStatus::Sending {
        return Ok(None);
    }
    let mut email = old.clone();
    email.updated_ms = now_ms;
    match outcome {
        Outcome::Sent => {
            email.status = EmailStatus::Sent;
        }
        Outcome::NotTried => {
            email.status = EmailStatus::Queued;
            email.attempts = email.attempts.saturating_sub(1);
            email.next_attempt_ms = now_ms;
        }
        Outcome::Failed { error } if email.attempts < policy.attempts_max => {
            email.status = EmailStatus::Queued;
            email.next_attempt_ms = now_ms + policy.backoff_ms(email.attempts, jitter);
            email.last_error = Some(shorten(error));
        }
        Outcome::Failed { error } | Outcome::Rejected { error } => {
            email.status = EmailStatus::Dead;
            email.last_error = Some(shorten(error));
        }
    }
    put(txn, &email, Some(&old))?;
    Ok(Some(email.status))
}

fn shorten(error: &str) -> String {
    if error.len() <= ERROR_BYTES_MAX {
        return error.to_string();
    }
    let mut end = ERROR_BYTES_MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &error[..end])
}

/// Moves dead emails back to `queued`, due at once, with a fresh count of tries: the one named
/// `id`, or (with `None`) up to `limit` of them. Returns the ids moved. Naming an email that
/// is not dead is `NotFound` (nothing is changed).
pub fn retry_dead(
    txn: &WriteTransaction,
    id: Option<u64>,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let ids = match id {
        Some(id) => match get(txn, id)? {
            Some(e) if e.status == EmailStatus::Dead => vec![id],
            _ => return Err(CoreError::NotFound),
        },
        None => ids_in_state(
            &txn.open_table(EMAIL_STATES)?,
            EmailStatus::Dead,
            u64::MAX,
            limit,
        )?,
    };
    for id in &ids {
        let Some(old) = get(txn, *id)? else {
            return Err(CoreError::Corrupt(format!(
                "email {id} is indexed but missing"
            )));
        };
        let mut email = old.clone();
        email.status = EmailStatus::Queued;
        email.attempts = 0;
        email.next_attempt_ms = now_ms;
        email.updated_ms = now_ms;
        put(txn, &email, Some(&old))?;
    }
    Ok(ids)
}

/// Deletes up to `limit` emails sent before `before_ms` (their tokens are long expired).
/// Returns how many went.
pub fn prune_sent(
    txn: &WriteTransaction,
    before_ms: u64,
    limit: usize,
) -> Result<usize, CoreError> {
    let code = EmailStatus::Sent.code();
    let mut states = txn.open_table(EMAIL_STATES)?;
    let mut keys = Vec::new();
    for row in states.range((code, 0, 0)..(code, before_ms, 0))? {
        keys.push(row?.0.value());
        if keys.len() >= limit {
            break;
        }
    }
    let mut queues = txn.open_table(EMAIL_QUEUES)?;
    for key in &keys {
        states.remove(*key)?;
        queues.remove(key.2)?;
    }
    Ok(keys.len())
}

/// Rows written before `email_states` existed have no index entry: index them once (the
/// index table's absence marks a queue not upgraded yet). Returns how many were indexed.
pub fn upgrade_queue(txn: &WriteTransaction) -> Result<usize, CoreError> {
    let has_index = txn.list_tables()?.any(|t| t.name() == EMAIL_STATES.name());
    if has_index {
        return Ok(0);
    }
    let mut emails = Vec::new();
    {
        let queues = txn.open_table(EMAIL_QUEUES)?;
        for row in queues.iter()? {
            let (_, value) = row?;
            emails.push(decode_email(value.value())?);
        }
    }
    let mut states = txn.open_table(EMAIL_STATES)?;
    for email in &emails {
        states.insert(email.index_key(), ())?;
    }
    Ok(emails.len())
}

/// How many emails are in `status`, counting at most `max` (a gauge, not an audit).
pub fn count_in_state(
    read: &ReadTransaction,
    status: EmailStatus,
    max: usize,
) -> Result<usize, CoreError> {
    let Some(states) = crate::table_or_none(read, EMAIL_STATES)? else {
        return Ok(0);
    };
    let code = status.code();
    let mut n = 0;
    for row in states
        .range((code, 0, 0)..=(code, u64::MAX, u64::MAX))?
        .take(max)
    {
        row?;
        n += 1;
    }
    Ok(n)
}

/// Up to `limit` emails in `status`, newest order key first.
pub fn emails_in_state(
    read: &ReadTransaction,
    status: EmailStatus,
    limit: usize,
) -> Result<Vec<QueuedEmail>, CoreError> {
    let (states, queues) = match (read.open_table(EMAIL_STATES), read.open_table(EMAIL_QUEUES)) {
        (Ok(s), Ok(q)) => (s, q),
        (Err(redb::TableError::TableDoesNotExist(_)), _)
        | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
        (Err(e), _) | (_, Err(e)) => return Err(e.into()),
    };
    let code = status.code();
    let mut out = Vec::new();
    for row in states
        .range((code, 0, 0)..=(code, u64::MAX, u64::MAX))?
        .rev()
        .take(limit)
    {
        let id = row?.0.value().2;
        if let Some(v) = queues.get(id)? {
            out.push(decode_email(v.value())?);
        }
    }
    Ok(out)
}

/// One email by id.
pub fn email(read: &ReadTransaction, id: u64) -> Result<Option<QueuedEmail>, CoreError> {
    let queues = match read.open_table(EMAIL_QUEUES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let found = queues.get(id)?;
    match found {
        Some(v) => Ok(Some(decode_email(v.value())?)),
        None => Ok(None),
    }
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
        let email = decode_email(value.value())?;
        if to.is_none_or(|t| email.to.eq_ignore_ascii_case(t)) {
            out.push(email);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Drops queued and dead emails addressed to `address` (compared case-insensitively) and
/// made up to `until_ms` (a later one belongs to a new account with the address), looking
/// at no more than `scan_max` emails of each state (account erasure). An email being sent
/// right now is left to finish. Returns how many went.
/// Where `user`'s digests stand: (when the last was made, the newest notification id it
/// covered), or none before the first.
pub fn digest_state(read: &ReadTransaction, user: u64) -> Result<Option<(u64, u64)>, CoreError> {
    let table = match read.open_table(DIGESTS_SENT) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let found = table.get(user)?.map(|v| v.value());
    Ok(found)
}

/// `digest_state` inside a write transaction.
pub fn digest_state_in(txn: &WriteTransaction, user: u64) -> Result<Option<(u64, u64)>, CoreError> {
    let found = txn.open_table(DIGESTS_SENT)?.get(user)?.map(|v| v.value());
    Ok(found)
}

/// The subject and body of a digest for `name` of these unread notifications (by kind).
pub fn digest_email(name: &str, counts: &[(crate::notifications::Kind, u64)]) -> (String, String) {
    use crate::notifications::Kind;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let plural = |n: u64, one: &str, many: &str| match n {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    };
    let lines: Vec<String> = counts
        .iter()
        .map(|&(kind, n)| {
            let (one, many) = match kind {
                Kind::Follow => ("new follower", "new followers"),
                Kind::FollowRequest => ("follow request", "follow requests"),
                Kind::Like => ("like", "likes"),
                Kind::Comment => ("comment", "comments"),
                Kind::Reply => ("reply", "replies"),
                Kind::Mention => ("mention", "mentions"),
                Kind::Message => (
                    "conversation with new messages",
                    "conversations with new messages",
                ),
                Kind::MediaReady => ("upload processed", "uploads processed"),
            };
            format!("- {}", plural(n, one, many))
        })
        .collect();
    let subject = format!(
        "Your Nova digest: {}",
        plural(total, "unread notification", "unread notifications")
    );
    let body = format!(
        "Hello {name},\n\nSince your last digest, you have {} on Nova:\n\n{}\n\nTo stop these \
         emails, set email_digest to off in your settings.\n",
        plural(
            total,
            "notification you have not read",
            "notifications you have not read"
        ),
        lines.join("\n")
    );
    (subject, body)
}

/// Records a digest made (or, the first time, the point the first one starts from).
pub fn record_digest(
    txn: &WriteTransaction,
    user: u64,
    at_ms: u64,
    covered: u64,
) -> Result<(), CoreError> {
    txn.open_table(DIGESTS_SENT)?
        .insert(user, (at_ms, covered))?;
    Ok(())
}

/// Forgets where `user`'s digests stood (turned off, or the account erased): a digest turned
/// on again starts from then, not from the old point.
pub fn forget_digest(txn: &WriteTransaction, user: u64) -> Result<(), CoreError> {
    txn.open_table(DIGESTS_SENT)?.remove(user)?;
    Ok(())
}

pub fn drop_emails_to(
    txn: &WriteTransaction,
    address: &str,
    until_ms: u64,
    scan_max: usize,
) -> Result<usize, CoreError> {
    let mut dropped = 0;
    for status in [EmailStatus::Queued, EmailStatus::Dead] {
        let ids = {
            let states = txn.open_table(EMAIL_STATES)?;
            ids_in_state(&states, status, u64::MAX, scan_max)?
        };
        for id in ids {
            let Some(email) = get(txn, id)? else {
                continue;
            };
            if email.to.to_lowercase() == address && email.created_ms <= until_ms {
                txn.open_table(EMAIL_STATES)?.remove(email.index_key())?;
                txn.open_table(EMAIL_QUEUES)?.remove(id)?;
                dropped += 1;
            }
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests;
