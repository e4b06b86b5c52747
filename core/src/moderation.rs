//! Moderation: roles, suspensions, user reports and the audit log of moderator actions.
//!
//! Placement:
//! - `user_roles` and `suspensions` live on the user's shard (next to `users`); a
//!   suspension revokes the user's sessions in the same transaction (`identity`).
//! - `suspended_mirror` lives on every shard: which users are suspended, as the
//!   `SuspensionChanged` events said. Each row keeps the id of the event that wrote it, so an
//!   older event delivered late (the relay retries) never undoes a newer one. The user's own
//!   shard writes its row in the suspension's transaction.
//! - `reports`, `reports_by_state`, `report_keys` and `reports_by_reporter` live on one
//!   designated shard (`REPORTS_SHARD`): the moderation queue is one ordered list.
//! - `moderation_audit` lives on the shard where the action happened, written in the same
//!   transaction as the action; a reader merges every shard's entries by id (time-ordered).
//!
//! Every write function checks before it writes: an `Err` means nothing was written.

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{CoreError, Invalid};

/// user id -> Role as u8 (absent: a plain user)
const USER_ROLES: TableDefinition<u64, u8> = TableDefinition::new("user_roles");
/// user id -> Suspension (on the user's shard)
const SUSPENSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("suspensions");
/// user id -> Mirror (on every shard)
const SUSPENDED_MIRROR: TableDefinition<u64, &[u8]> = TableDefinition::new("suspended_mirror");
/// report id -> Report (on `REPORTS_SHARD`)
const REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("reports");
/// (state, report id) -> () : the queue, oldest first per state
const REPORTS_BY_STATE: TableDefinition<(u8, u64), ()> = TableDefinition::new("reports_by_state");
/// (reporter, target kind, target id) -> open report id : one open report per reporter+target
const REPORT_KEYS: TableDefinition<(u64, u8, u64), u64> = TableDefinition::new("report_keys");
/// (reporter, report id) -> () : a reporter's reports, to rate-limit them
const REPORTS_BY_REPORTER: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("reports_by_reporter");
/// entry id -> AuditEntry (on the shard where the action happened)
const MODERATION_AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("moderation_audit");

/// The shard holding reports and the queue.
pub const REPORTS_SHARD: usize = 0;
/// Longest note a reporter or moderator may write, in characters.
pub const NOTE_CHARS_MAX: usize = 1000;
/// Longest reason given for a moderator action, in characters.
pub const REASON_CHARS_MAX: usize = 500;
/// Reports one user may file per hour.
pub const REPORTS_PER_HOUR_MAX: usize = 30;
const HOUR_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    User,
    Moderator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Moderator => "moderator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "moderator" => Some(Role::Moderator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Role::User => 0,
            Role::Moderator => 1,
            Role::Admin => 2,
        }
    }

    fn from_code(c: u8) -> Role {
        match c {
            2 => Role::Admin,
            1 => Role::Moderator,
            _ => Role::User,
        }
    }

    /// May act as a moderator (admins may).
    pub fn moderates(self) -> bool {
        self >= Role::Moderator
    }
}

/// Who did something: a user through the API, or the operator's `nova admin` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    User(u64),
    AdminCli,
}

impl Actor {
    pub fn label(self) -> String {
        match self {
            Actor::User(id) => id.to_string(),
            Actor::AdminCli => "admin-cli".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    pub at_ms: u64,
    pub by: Actor,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Mirror {
    suspended: bool,
    /// The event (or change) id that wrote this row.
    version: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetKind {
    Post,
    Comment,
    Message,
    Account,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Post => "post",
            TargetKind::Comment => "comment",
            TargetKind::Message => "message",
            TargetKind::Account => "account",
        }
    }

    pub fn parse(s: &str) -> Option<TargetKind> {
        match s {
            "post" => Some(TargetKind::Post),
            "comment" => Some(TargetKind::Comment),
            "message" => Some(TargetKind::Message),
            "account" => Some(TargetKind::Account),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            TargetKind::Post => 0,
            TargetKind::Comment => 1,
            TargetKind::Message => 2,
            TargetKind::Account => 3,
        }
    }
}

/// Why a user reports something (a fixed list, so the queue can be sorted by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    Spam,
    Harassment,
    Hate,
    Violence,
    Sexual,
    SelfHarm,
    Illegal,
    Impersonation,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Spam,
        Reason::Harassment,
        Reason::Hate,
        Reason::Violence,
        Reason::Sexual,
        Reason::SelfHarm,
        Reason::Illegal,
        Reason::Impersonation,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Spam => "spam",
            Reason::Harassment => "harassment",
            Reason::Hate => "hate",
            Reason::Violence => "violence",
            Reason::Sexual => "sexual",
            Reason::SelfHarm => "self_harm",
            Reason::Illegal => "illegal",
            Reason::Impersonation => "impersonation",
            Reason::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportState {
    Open,
    Actioned,
    Dismissed,
}

impl ReportState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportState::Open => "open",
            ReportState::Actioned => "actioned",
            ReportState::Dismissed => "dismissed",
        }
    }

    pub fn parse(s: &str) -> Option<ReportState> {
        match s {
            "open" => Some(ReportState::Open),
            "actioned" => Some(ReportState::Actioned),
            "dismissed" => Some(ReportState::Dismissed),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            ReportState::Open => 0,
            ReportState::Actioned => 1,
            ReportState::Dismissed => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: u64,
    pub reporter: u64,
    pub kind: TargetKind,
    pub target: u64,
    pub reason: Reason,
    pub note: String,
    pub created_ms: u64,
    pub state: ReportState,
    pub resolved_by: Option<u64>,
    pub resolved_ms: Option<u64>,
    pub resolution_note: String,
}

/// What filing a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filed {
    New(Report),
    /// The reporter already has an open report on this target: that one.
    Existing(Report),
    /// Too many reports from this reporter in the last hour; retry after this many ms.
    TooMany {
        retry_after_ms: u64,
    },
}

/// What a moderator (or the operator) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    RemovePost,
    RemoveComment,
    Suspend,
    Unsuspend,
    SetRole(Role),
    ResolveReport(ReportState),
    CreateUser,
    ResetPassword,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::RemovePost => "remove_post",
            Action::RemoveComment => "remove_comment",
            Action::Suspend => "suspend",
            Action::Unsuspend => "unsuspend",
            Action::SetRole(Role::User) => "set_role_user",
            Action::SetRole(Role::Moderator) => "set_role_moderator",
            Action::SetRole(Role::Admin) => "set_role_admin",
            Action::ResolveReport(ReportState::Actioned) => "resolve_report_actioned",
            Action::ResolveReport(_) => "resolve_report_dismissed",
            Action::CreateUser => "create_user",
            Action::ResetPassword => "reset_password",
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// A fresh id from the acting shard's generator (time-ordered).
    pub id: u64,
    pub at_ms: u64,
    pub actor: Actor,
    pub action: Action,
    pub target_kind: TargetKind,
    pub target: u64,
    pub reason: String,
}

/// A free-text note or reason: trimmed, at most `max` characters, no control characters
/// but line breaks.
pub fn parse_note(raw: &str, max: usize, code: &'static str) -> Result<String, Invalid> {
    let text = raw.trim();
    if text.chars().count() > max {
        return Err(Invalid::new(
            code,
            format!("at most {max} characters, please"),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Invalid::new(code, "control characters are not allowed"));
    }
    Ok(text.to_string())
}

macro_rules! open_or {
    ($read:expr, $def:expr, $empty:expr) => {
        match $read.open_table($def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok($empty),
            Err(e) => return Err(e.into()),
        }
    };
}

// ---- roles -------------------------------------------------------------------------------

pub fn role(read: &ReadTransaction, user: u64) -> Result<Role, CoreError> {
    let table = open_or!(read, USER_ROLES, Role::User);
    let code = table.get(user)?.map(|v| v.value());
    Ok(code.map_or(Role::User, Role::from_code))
}

pub fn role_in(txn: &WriteTransaction, user: u64) -> Result<Role, CoreError> {
    let table = txn.open_table(USER_ROLES)?;
    let code = table.get(user)?.map(|v| v.value());
    Ok(code.map_or(Role::User, Role::from_code))
}

/// Sets the user's role (the caller checked the user exists and the actor may); returns the
/// previous one. Writes `audit` in the same transaction.
pub fn set_role(
    txn: &WriteTransaction,
    user: u64,
    role: Role,
    audit: &AuditEntry,
) -> Result<Role, CoreError> {
    let before = role_in(txn, user)?;
    let mut table = txn.open_table(USER_ROLES)?;
    match role {
        Role::User => {
            table.remove(user)?;
        }
        other => {
            table.insert(user, other.code())?;
        }
    }
    drop(table);
    record_audit(txn, audit)?;
    Ok(before)
}

// ---- suspensions -------------------------------------------------------------------------

pub fn suspension(read: &ReadTransaction, user: u64) -> Result<Option<Suspension>, CoreError> {
    let table = open_or!(read, SUSPENSIONS, None);
    let value = table.get(user)?;
    value.map(|v| decode(v.value())).transpose()
}

pub fn suspension_in(txn: &WriteTransaction, user: u64) -> Result<Option<Suspension>, CoreError> {
    let table = txn.open_table(SUSPENSIONS)?;
    let value = table.get(user)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Suspends the user (on the user's shard): the suspension row, this shard's mirror row
/// (`version`: the id of the `SuspensionChanged` event the caller records) and `audit`.
/// `false` (nothing written) when the user is suspended already.
pub fn suspend(
    txn: &WriteTransaction,
    user: u64,
    suspension: &Suspension,
    version: u64,
    audit: &AuditEntry,
) -> Result<bool, CoreError> {
    if suspension_in(txn, user)?.is_some() {
        return Ok(false);
    }
    txn.open_table(SUSPENSIONS)?
        .insert(user, encode(suspension).as_slice())?;
    mirror(txn, user, true, version)?;
    record_audit(txn, audit)?;
    // Its posts are hidden from search: their hashtags leave the counts too.
    crate::search::recount_author(txn, user)?;
    Ok(true)
}

/// Lifts a suspension; `false` (nothing written) when the user was not suspended.
pub fn unsuspend(
    txn: &WriteTransaction,
    user: u64,
    version: u64,
    audit: &AuditEntry,
) -> Result<bool, CoreError> {
    if suspension_in(txn, user)?.is_none() {
        return Ok(false);
    }
    txn.open_table(SUSPENSIONS)?.remove(user)?;
    mirror(txn, user, false, version)?;
    record_audit(txn, audit)?;
    crate::search::recount_author(txn, user)?;
    Ok(true)
}

/// Records in this shard's mirror that `user` is (or is no longer) suspended, unless a newer
/// change is recorded already. Returns whether the row changed.
pub fn mirror(
    txn: &WriteTransaction,
    user: u64,
    suspended: bool,
    version: u64,
) -> Result<bool, CoreError> {
    let mut table = txn.open_table(SUSPENDED_MIRROR)?;
    let current: Option<Mirror> = table.get(user)?.map(|v| decode(v.value())).transpose()?;
    if current.is_some_and(|m| m.version >= version) {
        return Ok(false);
    }
    table.insert(user, encode(&Mirror { suspended, version }).as_slice())?;
    Ok(true)
}

/// Every user this shard's mirror holds as suspended (loaded into memory at start-up).
pub fn suspended_users(read: &ReadTransaction) -> Result<Vec<u64>, CoreError> {
    let table = open_or!(read, SUSPENDED_MIRROR, Vec::new());
    let mut out = Vec::new();
    for row in table.iter()? {
        let (user, value) = row?;
        let m: Mirror = decode(value.value())?;
        if m.suspended {
            out.push(user.value());
        }
    }
    Ok(out)
}

// ---- reports -----------------------------------------------------------------------------

/// A report to file, validated by the caller (the reporter may read the target).
#[derive(Debug, Clone)]
pub struct NewReport {
    pub id: u64,
    pub reporter: u64,
    pub kind: TargetKind,
    pub target: u64,
    pub reason: Reason,
    pub note: String,
}

/// Files a report (on `REPORTS_SHARD`): one open report per reporter and target, and at most
/// `per_hour_max` new ones per reporter in any hour.
pub fn file_report(
    txn: &WriteTransaction,
    new: NewReport,
    now_ms: u64,
    per_hour_max: usize,
) -> Result<Filed, CoreError> {
    let key = (new.reporter, new.kind.code(), new.target);
    let existing = txn.open_table(REPORT_KEYS)?.get(key)?.map(|v| v.value());
    if let Some(id) = existing {
        if let Some(r) = report_in(txn, id)? {
            return Ok(Filed::Existing(r));
        }
    }
    // The reporter's reports of the last hour: ids are time-ordered, so one range.
    let since = id_floor(now_ms.saturating_sub(HOUR_MS));
    let recent: Vec<u64> = txn
        .open_table(REPORTS_BY_REPORTER)?
        .range((new.reporter, since)..=(new.reporter, u64::MAX))?
        .take(per_hour_max)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    if recent.len() >= per_hour_max {
        let oldest_ms = recent.first().map_or(now_ms, |id| crate::id_ms(*id));
        return Ok(Filed::TooMany {
            retry_after_ms: (oldest_ms + HOUR_MS).saturating_sub(now_ms).max(1000),
        });
    }
    let report = Report {
        id: new.id,
        reporter: new.reporter,
        kind: new.kind,
        target: new.target,
        reason: new.reason,
        note: new.note,
        created_ms: now_ms,
        state: ReportState::Open,
        resolved_by: None,
        resolved_ms: None,
        resolution_note: String::new(),
    };
    txn.open_table(REPORTS)?
        .insert(report.id, encode(&report).as_slice())?;
    txn.open_table(REPORTS_BY_STATE)?
        .insert((ReportState::Open.code(), report.id), ())?;
    txn.open_table(REPORT_KEYS)?.insert(key, report.id)?;
    txn.open_table(REPORTS_BY_REPORTER)?
        .insert((report.reporter, report.id), ())?;
    Ok(Filed::New(report))
}

fn id_floor(ms: u64) -> u64 {
    ms.saturating_sub(crate::ID_EPOCH_MS) << 22
}

pub fn report_in(txn: &WriteTransaction, id: u64) -> Result<Option<Report>, CoreError> {
    let table = txn.open_table(REPORTS)?;
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

pub fn report(read: &ReadTransaction, id: u64) -> Result<Option<Report>, CoreError> {
    let table = open_or!(read, REPORTS, None);
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Up to `limit` reports in `state` with ids above `after`, oldest first (a work queue).
pub fn reports(
    read: &ReadTransaction,
    state: ReportState,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<Report>, CoreError> {
    let index = open_or!(read, REPORTS_BY_STATE, Vec::new());
    let start = match after {
        None => 0,
        Some(a) => match a.checked_add(1) {
            Some(s) => s,
            None => return Ok(Vec::new()),
        },
    };
    let s = state.code();
    let mut out = Vec::with_capacity(limit);
    for row in index.range((s, start)..=(s, u64::MAX))?.take(limit) {
        let (key, _) = row?;
        if let Some(r) = report(read, key.value().1)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Closes an open report as actioned or dismissed, with `audit` in the same transaction.
/// Unknown: `NotFound`; closed already: `Invalid` (`report_closed`).
pub fn resolve(
    txn: &WriteTransaction,
    id: u64,
    state: ReportState,
    by: u64,
    note: String,
    now_ms: u64,
    audit: &AuditEntry,
) -> Result<Report, CoreError> {
    if state == ReportState::Open {
        return Err(CoreError::invalid(
            "invalid_resolution",
            "a report is resolved as actioned or dismissed",
        ));
    }
    let Some(mut report) = report_in(txn, id)? else {
        return Err(CoreError::NotFound);
    };
    if report.state != ReportState::Open {
        return Err(CoreError::invalid(
            "report_closed",
            "this report is resolved already",
        ));
    }
    let mut index = txn.open_table(REPORTS_BY_STATE)?;
    index.remove((ReportState::Open.code(), id))?;
    index.insert((state.code(), id), ())?;
    drop(index);
    let key = (report.reporter, report.kind.code(), report.target);
    let mut keys = txn.open_table(REPORT_KEYS)?;
    if keys.get(key)?.map(|v| v.value()) == Some(id) {
        keys.remove(key)?;
    }
    drop(keys);
    report.state = state;
    report.resolved_by = Some(by);
    report.resolved_ms = Some(now_ms);
    report.resolution_note = note;
    txn.open_table(REPORTS)?
        .insert(id, encode(&report).as_slice())?;
    record_audit(txn, audit)?;
    Ok(report)
}

// ---- the audit log -----------------------------------------------------------------------

/// Appends one entry (called by every moderator action in its own transaction).
pub fn record_audit(txn: &WriteTransaction, entry: &AuditEntry) -> Result<(), CoreError> {
    txn.open_table(MODERATION_AUDIT)?
        .insert(entry.id, encode(entry).as_slice())?;
    Ok(())
}

/// Up to `limit` entries with ids below `before`, newest first.
pub fn audit_log(
    read: &ReadTransaction,
    before: Option<u64>,
    limit: usize,
) -> Result<Vec<AuditEntry>, CoreError> {
    let table = open_or!(read, MODERATION_AUDIT, Vec::new());
    let end = before.unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(limit);
    for row in table.range(..end)?.rev().take(limit) {
        out.push(decode(row?.1.value())?);
    }
    Ok(out)
}

/// The largest id stored by this module on this shard (the id generator moves past it).
pub fn highest_id(read: &ReadTransaction) -> Result<Option<u64>, CoreError> {
    let mut best = None;
    for def in [REPORTS, MODERATION_AUDIT] {
        let table = match read.open_table(def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        best = best.max(table.last()?.map(|(k, _)| k.value()));
    }
    Ok(best)
}

#[cfg(test)]
mod tests;
