//! Identity: accounts, sessions, refresh tokens, email verification, password resets and the
//! authentication log (the seed's identity service).
//!
//! Placement: a user lives on the shard of its lower-cased username
//! (`shard_for_key(username)`), so username uniqueness is a local check. Email uniqueness
//! needs a second shard: the `email_claims` table on `shard_for_key(email)` maps each email to
//! the user that claimed it. Registration claims the email first, then creates the user; a
//! claim whose user never appeared (a crash in between) is stale and may be taken over after
//! `EMAIL_CLAIM_STALE_MS`, once the user's shard confirms the user does not exist.
//!
//! Every write function here checks before it writes: when it returns `Err`, it has written
//! nothing (the group-commit contract of `nova_storage::Partition`).

mod validate;

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::communication::{self, QueuedEmail};
use crate::tokens::{self, RefreshToken};
use crate::CoreError;

pub use validate::{DisplayName, Email, Password, Username};

/// user id -> User
const USERS: TableDefinition<u64, &[u8]> = TableDefinition::new("users");
/// lower-cased username -> user id (on the user's own shard)
const USERNAMES: TableDefinition<&str, u64> = TableDefinition::new("usernames");
/// lower-cased email -> EmailClaim (on the email's shard, which may differ from the user's)
const EMAIL_CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("email_claims");
/// session id -> Session
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// (user id, session id) -> () : a user's sessions, for listing and revoking them all
const USER_SESSIONS: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_sessions");
/// session id -> RefreshState (the stored half of the refresh token)
const TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("tokens");
/// (revoked at ms, session id) -> user id : recent revocations, replayed to every shard's
/// in-memory deny list at start-up so that revoked access tokens stay refused
const REVOKED_SESSIONS: TableDefinition<(u64, u64), u64> = TableDefinition::new("revoked_sessions");
/// sha-256 of the token -> OneTimeToken
const EMAIL_VERIFICATIONS: TableDefinition<&[u8; 32], &[u8]> =
    TableDefinition::new("email_verifications");
/// sha-256 of the token -> OneTimeToken
const PASSWORD_RESETS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("password_resets");
/// (namespace, external id) -> user id : ids a client brings (DeathStarBench's user_id),
/// on `shard_for_key("<namespace>:<id>")`
const EXTERNAL_IDS: TableDefinition<(&str, u64), u64> = TableDefinition::new("external_ids");
/// (namespace, user id) -> external id : the reverse of `external_ids`, on the user's shard
const EXTERNAL_OF: TableDefinition<(&str, u64), u64> = TableDefinition::new("external_of");
/// (ms, log id) -> AuthLog : time-keyed, pruned by retention
const AUTH_LOGS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("auth_logs");

/// How long a claim on an email may stay without its user before another may take it. Longer
/// than any request can take, so a registration in progress is never overtaken.
pub const EMAIL_CLAIM_STALE_MS: u64 = 120_000;
/// Sessions listed per page; a user with more sees the newest.
pub const SESSIONS_LISTED_MAX: usize = 100;
/// Revocation index entries older than this are pruned (they outlive any access token).
const REVOKED_KEEP_MS: u64 = 7 * 24 * 3600 * 1000;
/// Prune work done per revocation, so a revocation never turns into a long scan.
const PRUNE_PER_WRITE_MAX: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub email: String,
    pub display_name: String,
    pub email_verified: bool,
    pub created_ms: u64,
    password_hash: String,
    pub password_changed_ms: u64,
}

impl User {
    /// The PHC string to verify a password against (on a hashing thread).
    pub fn password_hash(&self) -> &str {
        &self.password_hash
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct EmailClaim {
    pub user_id: u64,
    pub claimed_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub id: u64,
    pub user_id: u64,
    pub created_ms: u64,
    pub last_used_ms: u64,
    pub ip: String,
    pub user_agent: String,
    pub revoked_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshState {
    secret: [u8; 32],
    generation: u64,
    expires_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OneTimeToken {
    user_id: u64,
    expires_ms: u64,
    /// When it was issued: a password-reset token issued before the password last changed
    /// is spent (another reset, or the operator's, came first).
    issued_ms: u64,
}

impl OneTimeToken {
    /// A stored token; one stored before `issued_ms` was kept counts as issued at 0 (so a
    /// password-reset token from then is spent once the password has changed at all).
    fn decode(bytes: &[u8]) -> Result<OneTimeToken, CoreError> {
        #[derive(Deserialize)]
        struct Before {
            user_id: u64,
            expires_ms: u64,
        }
        decode::<OneTimeToken>(bytes).or_else(|_| {
            decode::<Before>(bytes).map(|b| OneTimeToken {
                user_id: b.user_id,
                expires_ms: b.expires_ms,
                issued_ms: 0,
            })
        })
    }

    /// Whether a password-reset token still holds for `user`.
    fn resets(&self, user: &User) -> bool {
        self.issued_ms >= user.password_changed_ms
    }
}

/// What happened, for the authentication log.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum AuthEvent {
    Register,
    Login,
    LoginFailed,
    Refresh,
    RefreshReused,
    Logout,
    SessionRevoked,
    EmailVerified,
    PasswordResetRequested,
    PasswordReset,
    /// The account was deleted (`DELETE /v1/me`). Last: postcard encodes the variant index.
    AccountDeleted,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthLog {
    pub at_ms: u64,
    pub event: AuthEvent,
    pub user_id: Option<u64>,
    pub session_id: Option<u64>,
    pub ip: String,
}

/// Request context every logged write carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Context {
    pub now_ms: u64,
    pub ip: String,
    /// A fresh ID for the auth-log row (made by the shard's IdGen).
    pub log_id: u64,
}

fn log(
    txn: &WriteTransaction,
    ctx: &Context,
    event: AuthEvent,
    user: Option<u64>,
    session: Option<u64>,
) -> Result<(), CoreError> {
    let entry = AuthLog {
        at_ms: ctx.now_ms,
        event,
        user_id: user,
        session_id: session,
        ip: ctx.ip.clone(),
    };
    txn.open_table(AUTH_LOGS)?
        .insert((ctx.now_ms, ctx.log_id), encode(&entry).as_slice())?;
    Ok(())
}

/// Records an authentication event on its own (a failed login, which changes nothing else).
pub fn log_event(
    txn: &WriteTransaction,
    ctx: &Context,
    event: AuthEvent,
    user: Option<u64>,
) -> Result<(), CoreError> {
    log(txn, ctx, event, user, None)
}

/// The newest auth-log entries of `user_id`, newest first (scans at most `scan_max` rows).
pub fn auth_logs(
    read: &ReadTransaction,
    user_id: Option<u64>,
    limit: usize,
    scan_max: usize,
) -> Result<Vec<AuthLog>, CoreError> {
    let table = match read.open_table(AUTH_LOGS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()?.rev().take(scan_max) {
        let (_, value) = row?;
        let entry: AuthLog = decode(value.value())?;
        if user_id.is_none() || entry.user_id == user_id {
            out.push(entry);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// Deletes auth-log rows older than `before_ms`, at most `max` of them. Returns how many.
pub fn prune_auth_logs(
    txn: &WriteTransaction,
    before_ms: u64,
    max: usize,
) -> Result<usize, CoreError> {
    let mut table = txn.open_table(AUTH_LOGS)?;
    let old: Vec<(u64, u64)> = table
        .range(..(before_ms, 0))?
        .take(max)
        .map(|row| row.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in &old {
        table.remove(key)?;
    }
    Ok(old.len())
}

// ---- reads -------------------------------------------------------------------------------

/// Whether `prune_auth_logs(_, before_ms, _)` has anything to remove: the periodic prune
/// then skips its write (a durable commit, which waits for the disk) when it has none.
pub fn auth_logs_older_than(read: &ReadTransaction, before_ms: u64) -> Result<bool, CoreError> {
    match read.open_table(AUTH_LOGS) {
        Ok(t) => Ok(t.range(..(before_ms, 0))?.next().is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

macro_rules! open_or_empty {
    ($read:expr, $def:expr) => {
        match $read.open_table($def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
}

/// Up to `n` ids of the users stored here, from `from` up, in id order.
pub fn user_ids_from(read: &ReadTransaction, from: u64, n: usize) -> Result<Vec<u64>, CoreError> {
    let table = match read.open_table(USERS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::with_capacity(n.min(1024));
    for row in table.range(from..)?.take(n) {
        out.push(row?.0.value());
    }
    Ok(out)
}

pub fn user(read: &ReadTransaction, id: u64) -> Result<Option<User>, CoreError> {
    let table = open_or_empty!(read, USERS);
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// `user` inside a write transaction (sees the batch's own earlier writes).
pub fn user_in(txn: &WriteTransaction, id: u64) -> Result<Option<User>, CoreError> {
    let table = txn.open_table(USERS)?;
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Up to `limit` users with ids above `after`, in id order (a search rebuild walks them).
pub fn users_after(
    read: &ReadTransaction,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<User>, CoreError> {
    let table = match read.open_table(USERS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = match after {
        None => 0,
        Some(a) => match a.checked_add(1) {
            Some(s) => s,
            None => return Ok(Vec::new()),
        },
    };
    let mut out = Vec::with_capacity(limit);
    for row in table.range(start..)?.take(limit) {
        out.push(decode(row?.1.value())?);
    }
    Ok(out)
}

pub fn user_by_username(read: &ReadTransaction, key: &str) -> Result<Option<User>, CoreError> {
    let id = {
        let table = open_or_empty!(read, USERNAMES);
        let value = table.get(key)?;
        match value {
            Some(v) => v.value(),
            None => return Ok(None),
        }
    };
    user(read, id)
}

pub fn email_claim(read: &ReadTransaction, key: &str) -> Result<Option<EmailClaim>, CoreError> {
    let table = open_or_empty!(read, EMAIL_CLAIMS);
    let value = table.get(key)?;
    value.map(|v| decode(v.value())).transpose()
}

pub fn session(read: &ReadTransaction, id: u64) -> Result<Option<Session>, CoreError> {
    let table = open_or_empty!(read, SESSIONS);
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Is session `id` there and not revoked? (In a write: one racing a revocation sees it.)
pub fn session_live_in(txn: &WriteTransaction, id: u64) -> Result<bool, CoreError> {
    Ok(match txn.open_table(SESSIONS)?.get(id)? {
        Some(v) => decode::<Session>(v.value())?.revoked_ms.is_none(),
        None => false,
    })
}

/// The user's live sessions, newest first.
pub fn sessions_of(read: &ReadTransaction, user_id: u64) -> Result<Vec<Session>, CoreError> {
    let index = match read.open_table(USER_SESSIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in index
        .range((user_id, 0)..=(user_id, u64::MAX))?
        .rev()
        .take(SESSIONS_LISTED_MAX)
    {
        let (key, _) = row?;
        if let Some(s) = session(read, key.value().1)? {
            if s.revoked_ms.is_none() {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// Sessions revoked at or after `since_ms`: (session id, user id).
pub fn revoked_since(read: &ReadTransaction, since_ms: u64) -> Result<Vec<(u64, u64)>, CoreError> {
    let table = match read.open_table(REVOKED_SESSIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.range((since_ms, 0)..)? {
        let (key, user) = row?;
        out.push((key.value().1, user.value()));
    }
    Ok(out)
}

/// The user a one-time password-reset token belongs to, if it is live (no write).
pub fn check_reset_token(
    read: &ReadTransaction,
    token: &str,
    now_ms: u64,
) -> Result<u64, CoreError> {
    let table = match read.open_table(PASSWORD_RESETS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(CoreError::InvalidToken),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(&tokens::hash_one_time(token))?;
    let record = match value {
        Some(v) => OneTimeToken::decode(v.value())?,
        None => return Err(CoreError::InvalidToken),
    };
    if record.expires_ms <= now_ms {
        return Err(CoreError::TokenExpired);
    }
    match user(read, record.user_id)? {
        Some(user) if record.resets(&user) => Ok(record.user_id),
        _ => Err(CoreError::InvalidToken),
    }
}

/// The largest ID stored on this shard (users and sessions), so the ID generator can move
/// past it after a restart.
pub fn highest_id(read: &ReadTransaction) -> Result<Option<u64>, CoreError> {
    let mut best = None;
    for def in [USERS, SESSIONS] {
        let table = match read.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        let last = table.last()?.map(|(k, _)| k.value());
        best = best.max(last);
    }
    Ok(best)
}

pub fn external_id(
    read: &ReadTransaction,
    namespace: &str,
    ext: u64,
) -> Result<Option<u64>, CoreError> {
    let table = open_or_empty!(read, EXTERNAL_IDS);
    let value = table.get((namespace, ext))?;
    Ok(value
        .map(|v| v.value())
        .filter(|id| *id != EXTERNAL_PENDING))
}

/// Drops the reservation of an external id whose registration failed (`EXTERNAL_PENDING`);
/// a mapping to a user stays.
pub fn release_external_id(
    txn: &WriteTransaction,
    namespace: &str,
    ext: u64,
) -> Result<(), CoreError> {
    let mut table = txn.open_table(EXTERNAL_IDS)?;
    if table.get((namespace, ext))?.map(|v| v.value()) == Some(EXTERNAL_PENDING) {
        table.remove((namespace, ext))?;
    }
    Ok(())
}

pub fn external_of(
    read: &ReadTransaction,
    namespace: &str,
    user_id: u64,
) -> Result<Option<u64>, CoreError> {
    let table = open_or_empty!(read, EXTERNAL_OF);
    let value = table.get((namespace, user_id))?;
    Ok(value.map(|v| v.value()))
}

// ---- writes ------------------------------------------------------------------------------

/// Records the user's external id on the user's own shard (the reverse mapping).
pub fn set_external_of(
    txn: &WriteTransaction,
    namespace: &str,
    user_id: u64,
    ext: u64,
) -> Result<(), CoreError> {
    txn.open_table(EXTERNAL_OF)?
        .insert((namespace, user_id), ext)?;
    Ok(())
}

/// The user an external id is mapped to while its registration is under way: mapping it
/// to `EXTERNAL_PENDING` first reserves it, so that of two registrations racing for one id
/// only one makes an account.
pub const EXTERNAL_PENDING: u64 = u64::MAX;

/// Maps a client's external id to a user (or reserves it: `EXTERNAL_PENDING`; a reservation
/// is then replaced by the user). An id already mapped to another user, or reserved by
/// another registration: `Invalid` (`user_id_taken`).
pub fn map_external_id(
    txn: &WriteTransaction,
    namespace: &str,
    ext: u64,
    user_id: u64,
) -> Result<(), CoreError> {
    let mut table = txn.open_table(EXTERNAL_IDS)?;
    let existing = table.get((namespace, ext))?.map(|v| v.value());
    match existing {
        Some(id) if id == user_id && id != EXTERNAL_PENDING => Ok(()),
        Some(EXTERNAL_PENDING) if user_id != EXTERNAL_PENDING => {
            table.insert((namespace, ext), user_id)?;
            Ok(())
        }
        Some(_) => Err(CoreError::invalid(
            "user_id_taken",
            "that user_id is already registered",
        )),
        None => {
            table.insert((namespace, ext), user_id)?;
            Ok(())
        }
    }
}

/// Claims `email` for `user_id`. `replacing` names a stale claim's user that the caller has
/// confirmed does not exist; that claim may be overwritten. Any other claim: `EmailTaken`.
pub fn claim_email(
    txn: &WriteTransaction,
    email: &Email,
    user_id: u64,
    now_ms: u64,
    replacing: Option<u64>,
) -> Result<(), CoreError> {
    let mut table = txn.open_table(EMAIL_CLAIMS)?;
    let key = email.key();
    let existing: Option<EmailClaim> = table
        .get(key.as_str())?
        .map(|v| decode(v.value()))
        .transpose()?;
    match existing {
        Some(c) if c.user_id == user_id => return Ok(()),
        Some(c) if Some(c.user_id) != replacing => return Err(CoreError::EmailTaken),
        _ => {}
    }
    let claim = EmailClaim {
        user_id,
        claimed_ms: now_ms,
    };
    table.insert(key.as_str(), encode(&claim).as_slice())?;
    Ok(())
}

/// Drops the claim on `email` if `user_id` holds it (a registration that failed later).
pub fn release_email(
    txn: &WriteTransaction,
    email_key: &str,
    user_id: u64,
) -> Result<(), CoreError> {
    let mut table = txn.open_table(EMAIL_CLAIMS)?;
    let held = match table.get(email_key)? {
        Some(v) => decode::<EmailClaim>(v.value())?.user_id == user_id,
        None => false,
    };
    if held {
        table.remove(email_key)?;
    }
    Ok(())
}

pub struct NewUser {
    pub id: u64,
    pub username: Username,
    pub email: Email,
    pub display_name: DisplayName,
    pub password_hash: String,
    /// ID for the verification email in the queue.
    pub email_id: u64,
    pub verify_ttl_ms: u64,
}

/// Creates the user with its username index, a verification token and its queued email.
/// Returns the user and the verification token (already emailed; returned for logging only
/// in tests through the email queue, never to the client).
pub fn create_user(txn: &WriteTransaction, ctx: &Context, new: NewUser) -> Result<User, CoreError> {
    let key = new.username.key();
    let mut names = txn.open_table(USERNAMES)?;
    if names.get(key.as_str())?.is_some() {
        return Err(CoreError::UsernameTaken);
    }
    let user = User {
        id: new.id,
        username: new.username.as_str().to_string(),
        email: new.email.as_str().to_string(),
        display_name: new.display_name.as_str().to_string(),
        email_verified: false,
        created_ms: ctx.now_ms,
        password_hash: new.password_hash,
        password_changed_ms: ctx.now_ms,
    };
    names.insert(key.as_str(), user.id)?;
    txn.open_table(USERS)?
        .insert(user.id, encode(&user).as_slice())?;
    issue_one_time(
        txn,
        EMAIL_VERIFICATIONS,
        &user,
        ctx.now_ms + new.verify_ttl_ms,
        new.email_id,
        ctx.now_ms,
        OneTimeKind::VerifyEmail,
    )?;
    log(txn, ctx, AuthEvent::Register, Some(user.id), None)?;
    // For the search index (the auth log's id is unique, so it serves as the event's).
    let changed = crate::events::Event::UserChanged { user_id: user.id };
    crate::events::record(txn, ctx.log_id, ctx.now_ms, &changed, &[])?;
    Ok(user)
}

enum OneTimeKind {
    VerifyEmail,
    PasswordReset,
}

fn issue_one_time(
    txn: &WriteTransaction,
    table: TableDefinition<&[u8; 32], &[u8]>,
    user: &User,
    expires_ms: u64,
    email_id: u64,
    now_ms: u64,
    kind: OneTimeKind,
) -> Result<(), CoreError> {
    let (token, hash) = tokens::make_one_time(user.id);
    let record = OneTimeToken {
        user_id: user.id,
        expires_ms,
        issued_ms: now_ms,
    };
    txn.open_table(table)?
        .insert(&hash, encode(&record).as_slice())?;
    let (kind, subject, intro) = match kind {
        OneTimeKind::VerifyEmail => (
            "verify_email",
            "Confirm your email address",
            "Welcome to Nova. To confirm this email address, use this code",
        ),
        OneTimeKind::PasswordReset => (
            "password_reset",
            "Reset your password",
            "Someone asked to reset the password of your Nova account. If it was you, use this code",
        ),
    };
    let body = format!(
        "Hello {},\n\n{intro}:\n\ntoken: {token}\n\nIt is valid until {} (ms since the epoch). If you did not ask for this, ignore this email.\n",
        user.display_name, expires_ms
    );
    communication::enqueue_email(
        txn,
        &QueuedEmail::new(
            email_id,
            user.email.clone(),
            kind,
            subject.to_string(),
            body,
            now_ms,
        ),
    )
}

/// What a new session hands the client.
#[derive(Debug, Clone)]
pub struct Issued {
    pub session_id: u64,
    pub refresh_token: String,
    pub user: User,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NewSession {
    pub id: u64,
    pub user_id: u64,
    pub user_agent: String,
    pub refresh_ttl_ms: u64,
    /// The secret of the session's refresh tokens (`tokens::random_bytes`): made by the
    /// caller, so that the write is a function of its inputs (a replay makes the same one).
    pub secret: [u8; 32],
}

/// Opens a session for a user whose password was just verified.
pub fn create_session(
    txn: &WriteTransaction,
    ctx: &Context,
    new: NewSession,
) -> Result<Issued, CoreError> {
    let user: User = match txn.open_table(USERS)?.get(new.user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::InvalidCredentials),
    };
    let session = Session {
        id: new.id,
        user_id: user.id,
        created_ms: ctx.now_ms,
        last_used_ms: ctx.now_ms,
        ip: ctx.ip.clone(),
        user_agent: new.user_agent,
        revoked_ms: None,
    };
    let state = RefreshState {
        secret: new.secret,
        generation: 0,
        expires_ms: ctx.now_ms + new.refresh_ttl_ms,
    };
    txn.open_table(SESSIONS)?
        .insert(session.id, encode(&session).as_slice())?;
    txn.open_table(USER_SESSIONS)?
        .insert((user.id, session.id), ())?;
    txn.open_table(TOKENS)?
        .insert(session.id, encode(&state).as_slice())?;
    log(txn, ctx, AuthEvent::Login, Some(user.id), Some(session.id))?;
    Ok(Issued {
        session_id: session.id,
        refresh_token: tokens::make_refresh(&state.secret, session.id, 0),
        user,
    })
}

/// The outcome of presenting a refresh token that verified.
#[derive(Debug, Clone)]
pub enum Refreshed {
    /// The current token: here is the next one.
    Rotated(Issued),
    /// An already-rotated token: the session is now revoked (a stolen token was replayed, or
    /// the client lost track). Both the thief and the owner must log in again.
    Reused { session_id: u64, user_id: u64 },
}

pub fn refresh(
    txn: &WriteTransaction,
    ctx: &Context,
    token: &RefreshToken,
    refresh_ttl_ms: u64,
) -> Result<Refreshed, CoreError> {
    let mut tokens_table = txn.open_table(TOKENS)?;
    let mut state: RefreshState = match tokens_table.get(token.session_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::InvalidRefreshToken),
    };
    if !token.verifies(&state.secret) || token.generation > state.generation {
        return Err(CoreError::InvalidRefreshToken);
    }
    let mut sessions = txn.open_table(SESSIONS)?;
    let mut session: Session = match sessions.get(token.session_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::InvalidRefreshToken),
    };
    if token.generation < state.generation {
        drop(tokens_table);
        drop(sessions);
        revoke(txn, ctx, &session, AuthEvent::RefreshReused)?;
        return Ok(Refreshed::Reused {
            session_id: session.id,
            user_id: session.user_id,
        });
    }
    if state.expires_ms <= ctx.now_ms {
        return Err(CoreError::InvalidRefreshToken);
    }
    let user: User = match txn.open_table(USERS)?.get(session.user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::InvalidRefreshToken),
    };
    state.generation += 1;
    state.expires_ms = ctx.now_ms + refresh_ttl_ms;
    session.last_used_ms = ctx.now_ms;
    tokens_table.insert(session.id, encode(&state).as_slice())?;
    sessions.insert(session.id, encode(&session).as_slice())?;
    drop(sessions);
    drop(tokens_table);
    log(
        txn,
        ctx,
        AuthEvent::Refresh,
        Some(user.id),
        Some(session.id),
    )?;
    Ok(Refreshed::Rotated(Issued {
        session_id: session.id,
        refresh_token: tokens::make_refresh(&state.secret, session.id, state.generation),
        user,
    }))
}

/// Marks a session revoked, deletes its refresh state and indexes the revocation.
fn revoke(
    txn: &WriteTransaction,
    ctx: &Context,
    session: &Session,
    event: AuthEvent,
) -> Result<(), CoreError> {
    let mut revoked = session.clone();
    revoked.revoked_ms = Some(ctx.now_ms);
    // Its push subscriptions go with it: nobody who held the session keeps getting the
    // account's notifications.
    crate::push::forget_session(txn, session.user_id, session.id)?;
    txn.open_table(SESSIONS)?
        .insert(session.id, encode(&revoked).as_slice())?;
    txn.open_table(TOKENS)?.remove(session.id)?;
    txn.open_table(USER_SESSIONS)?
        .remove((session.user_id, session.id))?;
    let mut index = txn.open_table(REVOKED_SESSIONS)?;
    index.insert((ctx.now_ms, session.id), session.user_id)?;
    let cutoff = ctx.now_ms.saturating_sub(REVOKED_KEEP_MS);
    let old: Vec<(u64, u64)> = index
        .range(..(cutoff, 0))?
        .take(PRUNE_PER_WRITE_MAX)
        .map(|row| row.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in &old {
        index.remove(key)?;
    }
    drop(index);
    log(txn, ctx, event, Some(session.user_id), Some(session.id))
}

/// Revokes one of `user_id`'s sessions. Someone else's or an unknown session: `NotFound`.
pub fn revoke_session(
    txn: &WriteTransaction,
    ctx: &Context,
    user_id: u64,
    session_id: u64,
    event: AuthEvent,
) -> Result<(), CoreError> {
    let session: Session = match txn.open_table(SESSIONS)?.get(session_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    if session.user_id != user_id || session.revoked_ms.is_some() {
        return Err(CoreError::NotFound);
    }
    revoke(txn, ctx, &session, event)
}

/// Revokes every live session of the user; returns their IDs.
fn revoke_all(txn: &WriteTransaction, ctx: &Context, user_id: u64) -> Result<Vec<u64>, CoreError> {
    let ids: Vec<u64> = txn
        .open_table(USER_SESSIONS)?
        .range((user_id, 0)..=(user_id, u64::MAX))?
        .map(|row| row.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for id in &ids {
        let session: Option<Session> = txn
            .open_table(SESSIONS)?
            .get(*id)?
            .map(|v| decode(v.value()))
            .transpose()?;
        if let Some(session) = session.filter(|s| s.revoked_ms.is_none()) {
            revoke(txn, ctx, &session, AuthEvent::SessionRevoked)?;
        }
    }
    Ok(ids)
}

/// Revokes every live session of the user (a suspension, an operator's password reset);
/// returns their IDs for the deny lists.
pub fn revoke_all_sessions(
    txn: &WriteTransaction,
    ctx: &Context,
    user_id: u64,
) -> Result<Vec<u64>, CoreError> {
    revoke_all(txn, ctx, user_id)
}

/// Sets a new password hash (the operator's reset, no token) and revokes every session.
/// Unknown user: `NotFound`. Returns the revoked session IDs.
pub fn set_password_hash(
    txn: &WriteTransaction,
    ctx: &Context,
    user_id: u64,
    new_hash: String,
) -> Result<Vec<u64>, CoreError> {
    let mut users = txn.open_table(USERS)?;
    let mut user: User = match users.get(user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    user.password_hash = new_hash;
    user.password_changed_ms = ctx.now_ms;
    users.insert(user_id, encode(&user).as_slice())?;
    drop(users);
    let revoked = revoke_all(txn, ctx, user_id)?;
    log(txn, ctx, AuthEvent::PasswordReset, Some(user_id), None)?;
    Ok(revoked)
}

/// Checks a one-time token stored in `table`, applies `change` to its user and saves the
/// user, then deletes the token. Every check comes before the first write.
fn consume_one_time(
    txn: &WriteTransaction,
    table: TableDefinition<&[u8; 32], &[u8]>,
    token: &str,
    now_ms: u64,
    holds: impl FnOnce(&OneTimeToken, &User) -> bool,
    change: impl FnOnce(&mut User),
) -> Result<User, CoreError> {
    let hash = tokens::hash_one_time(token);
    let mut tokens_table = txn.open_table(table)?;
    let record = match tokens_table.get(&hash)? {
        Some(v) => OneTimeToken::decode(v.value())?,
        None => return Err(CoreError::InvalidToken),
    };
    if record.expires_ms <= now_ms {
        return Err(CoreError::TokenExpired);
    }
    let mut users = txn.open_table(USERS)?;
    let mut user: User = match users.get(record.user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::InvalidToken),
    };
    if !holds(&record, &user) {
        return Err(CoreError::InvalidToken);
    }
    change(&mut user);
    users.insert(user.id, encode(&user).as_slice())?;
    tokens_table.remove(&hash)?;
    Ok(user)
}

/// Consumes an email-verification token and marks the address verified.
pub fn verify_email(txn: &WriteTransaction, ctx: &Context, token: &str) -> Result<User, CoreError> {
    let user = consume_one_time(
        txn,
        EMAIL_VERIFICATIONS,
        token,
        ctx.now_ms,
        |_, _| true,
        |u| u.email_verified = true,
    )?;
    log(txn, ctx, AuthEvent::EmailVerified, Some(user.id), None)?;
    Ok(user)
}

/// Changes the user's display name (validated by the caller); `event_id` and `now_ms` date
/// its `UserChanged` event.
pub fn set_display_name(
    txn: &WriteTransaction,
    user_id: u64,
    name: &DisplayName,
    event_id: u64,
    now_ms: u64,
) -> Result<User, CoreError> {
    let mut users = txn.open_table(USERS)?;
    let mut user: User = match users.get(user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    user.display_name = name.as_str().to_string();
    users.insert(user_id, encode(&user).as_slice())?;
    let changed = crate::events::Event::UserChanged { user_id };
    crate::events::record(txn, event_id, now_ms, &changed, &[])?;
    Ok(user)
}

/// Queues a password-reset email for the user. Unknown user: `NotFound` (the route answers
/// the same either way, so nobody learns which emails are registered).
pub fn request_password_reset(
    txn: &WriteTransaction,
    ctx: &Context,
    user_id: u64,
    email_id: u64,
    ttl_ms: u64,
) -> Result<(), CoreError> {
    let user: User = match txn.open_table(USERS)?.get(user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    issue_one_time(
        txn,
        PASSWORD_RESETS,
        &user,
        ctx.now_ms + ttl_ms,
        email_id,
        ctx.now_ms,
        OneTimeKind::PasswordReset,
    )?;
    log(
        txn,
        ctx,
        AuthEvent::PasswordResetRequested,
        Some(user.id),
        None,
    )
}

/// Consumes a reset token, sets the new password hash and revokes every session of the user.
/// Returns the user and the revoked session IDs.
pub fn confirm_password_reset(
    txn: &WriteTransaction,
    ctx: &Context,
    token: &str,
    new_hash: String,
) -> Result<(u64, Vec<u64>), CoreError> {
    let now_ms = ctx.now_ms;
    let user = consume_one_time(
        txn,
        PASSWORD_RESETS,
        token,
        now_ms,
        OneTimeToken::resets,
        |u| {
            u.password_hash = new_hash;
            u.password_changed_ms = now_ms;
        },
    )?;
    let revoked = revoke_all(txn, ctx, user.id)?;
    log(txn, ctx, AuthEvent::PasswordReset, Some(user.id), None)?;
    Ok((user.id, revoked))
}

/// What erasing an account released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erased {
    pub user: User,
    /// The key of the email claim to release (on the email's shard).
    pub email_key: String,
    /// Sessions revoked, to refuse their access tokens everywhere.
    pub sessions: Vec<u64>,
}

/// Erases an account on its shard: every session is revoked, the user row and its username
/// go (the username can be registered again at once), its external ids in `namespaces` go.
/// The auth log keeps its rows until retention prunes them (who logged in from where, kept
/// for abuse handling). `event_id` dates the `UserChanged` event the search index reads.
pub fn erase_user(
    txn: &WriteTransaction,
    ctx: &Context,
    user_id: u64,
    event_id: u64,
    namespaces: &[&str],
) -> Result<Erased, CoreError> {
    let user: User = match txn.open_table(USERS)?.get(user_id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    let sessions = revoke_all(txn, ctx, user_id)?;
    txn.open_table(USERS)?.remove(user_id)?;
    let name_key = user.username.to_ascii_lowercase();
    let mut names = txn.open_table(USERNAMES)?;
    if names.get(name_key.as_str())?.map(|v| v.value()) == Some(user_id) {
        names.remove(name_key.as_str())?;
    }
    drop(names);
    let mut external = txn.open_table(EXTERNAL_OF)?;
    for namespace in namespaces {
        external.remove((*namespace, user_id))?;
    }
    drop(external);
    log(txn, ctx, AuthEvent::AccountDeleted, Some(user_id), None)?;
    let changed = crate::events::Event::UserChanged { user_id };
    crate::events::record(txn, event_id, ctx.now_ms, &changed, &[])?;
    Ok(Erased {
        email_key: user.email.to_lowercase(),
        user,
        sessions,
    })
}

#[cfg(test)]
mod tests;
