//! `nova admin users`: create accounts, set roles, suspend and unsuspend, reset passwords and
//! show an account, as the operator (`admin-cli` in the audit log).
//!
//! Online (`--server`): the request goes to the running server's loopback admin listener
//! (`POST /admin/users`, bearer admin token), whose thread hands it to the owning shard over
//! the mesh: the same operations as the moderation API (deny lists, mirrors and caches on
//! every shard follow at once). Offline (`--data-dir`): the command opens the stopped
//! server's redb files itself (refused while a server holds them) and writes through the same
//! `core` functions; what other shards must hear (a suspension) is queued in the outbox for
//! the next start and applied to their files at once too (`event_applied` drops the
//! redelivery). Both print one JSON object.

use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use nova_core::events::{self, Event};
use nova_core::identity::{self, Context, DisplayName, Email, NewUser, Password, User, Username};
use nova_core::moderation::{
    self as mods, Action, Actor, AuditEntry, Role, Suspension, TargetKind,
};
use nova_core::password::HashCost;
use nova_core::{shard_for_key, shard_of, CoreError, IdGen};
use nova_storage::redb::{self, Database, ReadableDatabase};
use nova_storage::DataDir;

use crate::error::Fail;
use crate::mesh::{Op, ShardMsg};
use crate::moderation::{Account, ModOp};

/// How long the admin thread waits for a shard's answer.
const ONLINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest password read from stdin.
const STDIN_PASSWORD_BYTES_MAX: u64 = 4096;

/// Where the command acts: a running server, or a stopped server's data dir.
#[derive(Debug, Args)]
pub struct Place {
    /// The admin listener of a running server, e.g. http://127.0.0.1:8081.
    #[arg(long, conflicts_with = "data_dir")]
    server: Option<String>,
    #[arg(long, env = "NOVA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// The data directory of a stopped server.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Offline password hashing cost (argon2id memory, KiB).
    #[arg(long, default_value_t = 19 * 1024, hide = true)]
    argon2_memory_kib: u32,
    #[arg(long, default_value_t = 2, hide = true)]
    argon2_iterations: u32,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an account; the password is read from stdin or generated and printed.
    Create {
        username: String,
        #[arg(long)]
        email: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Give a user the moderator or admin role.
    Promote {
        /// A username or a user id.
        user: String,
        #[arg(long, value_parser = ["moderator", "admin"])]
        role: String,
        #[command(flatten)]
        place: Place,
    },
    /// Make a user a plain user again.
    Demote {
        user: String,
        #[command(flatten)]
        place: Place,
    },
    /// Suspend an account: no login, every session ended, its content hidden.
    Suspend {
        user: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        place: Place,
    },
    /// Lift a suspension (everything hidden comes back).
    Unsuspend {
        user: String,
        #[command(flatten)]
        place: Place,
    },
    /// Set a new password (from stdin, or generated and printed); every session ends.
    ResetPassword {
        user: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        place: Place,
    },
    /// Show an account: profile, role, suspension, live sessions.
    Show {
        user: String,
        #[command(flatten)]
        place: Place,
    },
}

/// One command, as the online admin route takes it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub action: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

pub fn run(cmd: UsersCommand) -> anyhow::Result<String> {
    let (req, place, generated) = match cmd {
        UsersCommand::Create {
            username,
            email,
            password_stdin,
            place,
        } => {
            let (password, generated) = password(password_stdin)?;
            let req = UserRequest {
                action: "create".into(),
                username: Some(username),
                email: Some(email),
                password: Some(password),
                ..UserRequest::default()
            };
            (req, place, generated)
        }
        UsersCommand::Promote { user, role, place } => (
            UserRequest {
                action: "set_role".into(),
                user: Some(user),
                role: Some(role),
                ..UserRequest::default()
            },
            place,
            None,
        ),
        UsersCommand::Demote { user, place } => (
            UserRequest {
                action: "set_role".into(),
                user: Some(user),
                role: Some("user".into()),
                ..UserRequest::default()
            },
            place,
            None,
        ),
        UsersCommand::Suspend {
            user,
            reason,
            place,
        } => (
            UserRequest {
                action: "suspend".into(),
                user: Some(user),
                reason: Some(reason),
                ..UserRequest::default()
            },
            place,
            None,
        ),
        UsersCommand::Unsuspend { user, place } => (
            UserRequest {
                action: "unsuspend".into(),
                user: Some(user),
                ..UserRequest::default()
            },
            place,
            None,
        ),
        UsersCommand::ResetPassword {
            user,
            password_stdin,
            place,
        } => {
            let (password, generated) = password(password_stdin)?;
            let req = UserRequest {
                action: "reset_password".into(),
                user: Some(user),
                password: Some(password),
                ..UserRequest::default()
            };
            (req, place, generated)
        }
        UsersCommand::Show { user, place } => (
            UserRequest {
                action: "show".into(),
                user: Some(user),
                ..UserRequest::default()
            },
            place,
            None,
        ),
    };
    let mut out: simd_json::OwnedValue = match (&place.server, &place.data_dir) {
        (Some(server), None) => {
            let token = place
                .admin_token
                .as_deref()
                .context("--admin-token (or NOVA_ADMIN_TOKEN) is needed with --server")?;
            online(server, token, &req)?
        }
        (None, Some(dir)) => {
            let cost = HashCost {
                memory_kib: place.argon2_memory_kib,
                iterations: place.argon2_iterations,
            };
            Offline::open(dir)?.run(&req, cost)?
        }
        _ => bail!("give --server (online) or --data-dir (offline)"),
    };
    if let (Some(pw), simd_json::OwnedValue::Object(map)) = (generated, &mut out) {
        map.insert("password".into(), pw.into());
    }
    Ok(simd_json::to_string(&out)?)
}

/// The password from stdin, or a generated one (returned second, to be printed).
fn password(from_stdin: bool) -> anyhow::Result<(String, Option<String>)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .take(STDIN_PASSWORD_BYTES_MAX)
            .read_line(&mut line)?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        if pw.is_empty() {
            bail!("no password on stdin");
        }
        return Ok((pw, None));
    }
    let bytes = nova_core::tokens::random_bytes();
    let pw: String = bytes[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok((pw.clone(), Some(pw)))
}

fn online(server: &str, token: &str, req: &UserRequest) -> anyhow::Result<simd_json::OwnedValue> {
    let url = format!("{}/admin/users", server.trim_end_matches('/'));
    let resp = ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(ONLINE_TIMEOUT + Duration::from_secs(5))
        .send_string(&simd_json::to_string(req)?);
    match resp {
        Ok(r) => {
            let mut text = r.into_string()?.into_bytes();
            Ok(simd_json::to_owned_value(&mut text)?)
        }
        Err(ureq::Error::Status(code, r)) => bail!(
            "the server answered {code}: {}",
            r.into_string().unwrap_or_default()
        ),
        Err(e) => bail!("cannot reach the admin listener at {server}: {e}"),
    }
}

// ---- online: the admin listener's side --------------------------------------------------------

/// Serves `POST /admin/users` on the admin listener's thread: (status, JSON body).
pub fn serve(mesh: &[flume::Sender<ShardMsg>], body: &mut [u8]) -> (u16, String) {
    let req: UserRequest = match simd_json::serde::from_slice(body) {
        Ok(r) => r,
        Err(e) => return (422, error_json(&format!("invalid body: {e}"))),
    };
    match serve_request(mesh, &req) {
        Ok(v) => (200, simd_json::to_string(&v).unwrap_or_default()),
        Err(Failure(status, message)) => (status, error_json(&message)),
    }
}

fn error_json(message: &str) -> String {
    simd_json::to_string(&simd_json::json!({ "error": message })).unwrap_or_default()
}

/// An answer that is not a success: HTTP status and message.
struct Failure(u16, String);

impl From<Fail> for Failure {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Core(CoreError::NotFound) => Failure(404, "no such user".into()),
            Fail::Core(e @ (CoreError::UsernameTaken | CoreError::EmailTaken)) => {
                Failure(409, e.to_string())
            }
            Fail::Core(CoreError::Invalid(v) | CoreError::Forbidden(v)) => Failure(422, v.message),
            other => Failure(500, other.to_string()),
        }
    }
}

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Self {
        Failure::from(Fail::Core(e))
    }
}

impl From<nova_core::Invalid> for Failure {
    fn from(v: nova_core::Invalid) -> Self {
        Failure(422, v.message)
    }
}

/// Runs an operation on shard `target` from a thread outside the shards.
fn call<T>(
    mesh: &[flume::Sender<ShardMsg>],
    target: usize,
    make: impl FnOnce(crate::mesh::Reply<T>) -> Op,
) -> Result<T, Failure> {
    let sender = mesh
        .get(target)
        .ok_or_else(|| Failure(500, format!("no shard {target}")))?;
    let (tx, rx) = flume::bounded(1);
    let deadline = Instant::now() + ONLINE_TIMEOUT;
    sender
        .send_timeout(
            ShardMsg::Call {
                op: make(tx),
                deadline,
            },
            ONLINE_TIMEOUT,
        )
        .map_err(|_| Failure(503, "the shard is not answering".into()))?;
    match rx.recv_timeout(ONLINE_TIMEOUT) {
        Ok(result) => Ok(result?),
        Err(_) => Err(Failure(503, "the shard did not answer in time".into())),
    }
}

fn resolve_online(mesh: &[flume::Sender<ShardMsg>], user: &str) -> Result<u64, Failure> {
    if let Ok(id) = user.parse::<u64>() {
        if shard_of(id) < mesh.len() {
            return Ok(id);
        }
        return Err(Failure(404, "no such user".into()));
    }
    let key = user.trim_start_matches('@').to_ascii_lowercase();
    let home = shard_for_key(&key, mesh.len());
    let found = call(mesh, home, |reply| Op::LookupUsername { key, reply })?;
    found
        .map(|b| b.id)
        .ok_or_else(|| Failure(404, "no such user".into()))
}

fn serve_request(
    mesh: &[flume::Sender<ShardMsg>],
    req: &UserRequest,
) -> Result<simd_json::OwnedValue, Failure> {
    let field = |v: &Option<String>, name: &str| {
        v.clone()
            .ok_or_else(|| Failure(422, format!("{name} is needed")))
    };
    let actor = Actor::AdminCli;
    if req.action == "create" {
        let username = Username::parse(&field(&req.username, "username")?)?;
        let email = Email::parse(&field(&req.email, "email")?)?;
        let password = Password::parse(&field(&req.password, "password")?)?;
        let home = shard_for_key(&username.key(), mesh.len());
        let user = call(mesh, home, |reply| {
            Op::Moderation(ModOp::CreateUser {
                username,
                email,
                password: password.as_str().to_string(),
                reply,
            })
        })?;
        return Ok(user_json(&user));
    }
    let user_id = resolve_online(mesh, &field(&req.user, "user")?)?;
    let k = shard_of(user_id);
    match req.action.as_str() {
        "set_role" => {
            let role = Role::parse(&field(&req.role, "role")?)
                .ok_or_else(|| Failure(422, "role is user, moderator or admin".into()))?;
            call(mesh, k, |reply| {
                Op::Moderation(ModOp::SetRole {
                    user_id,
                    role,
                    actor,
                    reply,
                })
            })?;
        }
        "suspend" | "unsuspend" => {
            let reason = mods::parse_note(
                req.reason.as_deref().unwrap_or(""),
                mods::REASON_CHARS_MAX,
                "invalid_reason",
            )?;
            let on = req.action == "suspend";
            call(mesh, k, |reply| {
                Op::Moderation(ModOp::Suspend {
                    user_id,
                    on,
                    actor,
                    actor_role: Role::Admin,
                    reason,
                    reply,
                })
            })?;
        }
        "reset_password" => {
            let password = Password::parse(&field(&req.password, "password")?)?;
            call(mesh, k, |reply| {
                Op::Moderation(ModOp::SetPassword {
                    user_id,
                    password: password.as_str().to_string(),
                    actor,
                    reply,
                })
            })?;
        }
        "show" => {}
        other => return Err(Failure(404, format!("unknown action {other:?}"))),
    }
    let account = call(mesh, k, |reply| {
        Op::Moderation(ModOp::Account { user_id, reply })
    })?
    .ok_or_else(|| Failure(404, "no such user".into()))?;
    Ok(account_json(&account))
}

fn user_json(u: &User) -> simd_json::OwnedValue {
    simd_json::json!({
        "id": u.id.to_string(),
        "username": u.username.clone(),
        "email": u.email.clone(),
    })
}

fn account_json(a: &Account) -> simd_json::OwnedValue {
    simd_json::json!({
        "id": a.user.id.to_string(),
        "username": a.user.username.clone(),
        "email": a.user.email.clone(),
        "email_verified": a.user.email_verified,
        "created_at": nova_protocol::rfc3339(a.user.created_ms),
        "role": a.role.as_str(),
        "suspended": a.suspension.is_some(),
        "suspended_at": a.suspension.as_ref().map(|s| nova_protocol::rfc3339(s.at_ms)),
        "suspension_reason": a.suspension.as_ref().map(|s| s.reason.clone()),
        "sessions": a.sessions as u64,
    })
}

// ---- offline: a stopped server's data dir ---------------------------------------------------

struct Offline {
    dbs: Vec<Database>,
    ids: Vec<IdGen>,
}

impl Offline {
    /// Opens every shard's database, refusing if a server holds them.
    fn open(root: &Path) -> anyhow::Result<Offline> {
        let manifest = DataDir::read_manifest(root)?
            .with_context(|| format!("{} is not a nova data directory", root.display()))?;
        let data = DataDir::open(root, manifest.shards)?;
        let mut dbs = Vec::with_capacity(manifest.shards);
        let mut ids = Vec::with_capacity(manifest.shards);
        for k in 0..manifest.shards {
            let path = data.shard_path(k);
            if !path.exists() {
                bail!("{} is missing", path.display());
            }
            let db = match Database::open(&path) {
                Ok(db) => db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => bail!(
                    "{} is in use: is `nova serve` running on {}? Stop it first, or use \
                     --server with the admin listener.",
                    path.display(),
                    root.display()
                ),
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
            };
            nova_storage::refuse_unapplied_log(&path, &db)?;
            // Ids made here must come after every id the server made.
            let mut gen = IdGen::new(k);
            let read = db.begin_read()?;
            for id in [
                identity::highest_id(&read)?,
                mods::highest_id(&read)?,
                events::last_key(&read)?.map(|(_, id)| id),
            ]
            .into_iter()
            .flatten()
            {
                gen.observe(id);
            }
            drop(read);
            dbs.push(db);
            ids.push(gen);
        }
        Ok(Offline { dbs, ids })
    }

    fn next_id(&mut self, k: usize) -> u64 {
        self.ids[k].next(crate::shard::now_ms())
    }

    fn resolve(&self, user: &str) -> anyhow::Result<u64> {
        let not_found = || anyhow::anyhow!("no such user: {user}");
        if let Ok(id) = user.parse::<u64>() {
            let db = self.dbs.get(shard_of(id)).ok_or_else(not_found)?;
            return identity::user(&db.begin_read()?, id)?
                .map(|u| u.id)
                .ok_or_else(not_found);
        }
        let key = user.trim_start_matches('@').to_ascii_lowercase();
        let db = &self.dbs[shard_for_key(&key, self.dbs.len())];
        identity::user_by_username(&db.begin_read()?, &key)?
            .map(|u| u.id)
            .ok_or_else(not_found)
    }

    fn audit(&mut self, k: usize, action: Action, target: u64, reason: &str) -> AuditEntry {
        AuditEntry {
            id: self.next_id(k),
            at_ms: crate::shard::now_ms(),
            actor: Actor::AdminCli,
            action,
            target_kind: TargetKind::Account,
            target,
            reason: reason.to_string(),
        }
    }

    fn ctx(&mut self, k: usize) -> Context {
        Context {
            now_ms: crate::shard::now_ms(),
            ip: "admin-cli".to_string(),
            log_id: self.next_id(k),
        }
    }

    /// Runs `f` in one write transaction of shard `k`, committed only when it succeeds.
    fn write<R>(
        &self,
        k: usize,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<R, CoreError>,
    ) -> anyhow::Result<R> {
        let txn = self.dbs[k].begin_write()?;
        match f(&txn) {
            Ok(r) => {
                txn.commit()?;
                Ok(r)
            }
            Err(e) => {
                txn.abort()?;
                Err(anyhow::anyhow!("{e}"))
            }
        }
    }

    fn run(mut self, req: &UserRequest, cost: HashCost) -> anyhow::Result<simd_json::OwnedValue> {
        let field =
            |v: &Option<String>, name: &str| v.clone().with_context(|| format!("{name} is needed"));
        let invalid = |v: nova_core::Invalid| anyhow::anyhow!("{}", v.message);
        let shards = self.dbs.len();
        if req.action == "create" {
            let username = Username::parse(&field(&req.username, "username")?).map_err(invalid)?;
            let email = Email::parse(&field(&req.email, "email")?).map_err(invalid)?;
            let password = Password::parse(&field(&req.password, "password")?).map_err(invalid)?;
            let display_name = DisplayName::parse(username.as_str()).map_err(invalid)?;
            let hash = nova_core::password::hash(password.as_str(), cost)
                .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            let k = shard_for_key(&username.key(), shards);
            let email_shard = shard_for_key(&email.key(), shards);
            let user_id = self.next_id(k);
            let now = crate::shard::now_ms();
            {
                let email = email.clone();
                self.write(email_shard, move |t| {
                    identity::claim_email(t, &email, user_id, now, None)
                })?;
            }
            let ctx = self.ctx(k);
            let email_id = self.next_id(k);
            let audit = self.audit(k, Action::CreateUser, user_id, "");
            let email_key = email.key();
            let created = self.write(k, move |t| {
                let user = identity::create_user(
                    t,
                    &ctx,
                    NewUser {
                        id: user_id,
                        username,
                        email,
                        display_name,
                        password_hash: hash,
                        email_id,
                        verify_ttl_ms: 24 * 3600 * 1000,
                    },
                )?;
                mods::record_audit(t, &audit)?;
                Ok(user)
            });
            return match created {
                Ok(user) => Ok(user_json(&user)),
                Err(e) => {
                    let _ = self.write(email_shard, move |t| {
                        identity::release_email(t, &email_key, user_id)
                    });
                    Err(e)
                }
            };
        }
        let user_id = self.resolve(&field(&req.user, "user")?)?;
        let k = shard_of(user_id);
        match req.action.as_str() {
            "set_role" => {
                let role = Role::parse(&field(&req.role, "role")?)
                    .context("role is user, moderator or admin")?;
                let audit = self.audit(k, Action::SetRole(role), user_id, role.as_str());
                self.write(k, move |t| mods::set_role(t, user_id, role, &audit))?;
            }
            "suspend" | "unsuspend" => {
                let on = req.action == "suspend";
                let reason = mods::parse_note(
                    req.reason.as_deref().unwrap_or(""),
                    mods::REASON_CHARS_MAX,
                    "invalid_reason",
                )
                .map_err(invalid)?;
                let action = if on {
                    Action::Suspend
                } else {
                    Action::Unsuspend
                };
                let audit = self.audit(k, action, user_id, &reason);
                let ctx = self.ctx(k);
                let event_id = self.next_id(k);
                let now = ctx.now_ms;
                let event = Event::SuspensionChanged {
                    user_id,
                    suspended: on,
                };
                let others: Vec<usize> = (0..shards).filter(|s| *s != k).collect();
                let changed = {
                    let event = event.clone();
                    let others = others.clone();
                    self.write(k, move |t| {
                        let changed = if on {
                            let s = Suspension {
                                at_ms: now,
                                by: Actor::AdminCli,
                                reason,
                            };
                            mods::suspend(t, user_id, &s, event_id, &audit)?
                        } else {
                            mods::unsuspend(t, user_id, event_id, &audit)?
                        };
                        if changed {
                            if on {
                                // Revoked sessions are replayed to every shard's deny list
                                // at the next start.
                                identity::revoke_all_sessions(t, &ctx, user_id)?;
                            }
                            events::record(t, event_id, now, &event, &others)?;
                        }
                        Ok(changed)
                    })?
                };
                if changed {
                    // The outbox would carry it at the next start; applying it now keeps
                    // the files consistent on their own (the redelivery changes nothing).
                    for s in others {
                        let event = event.clone();
                        self.write(s, move |t| {
                            events::apply(t, event_id, now, &event, |_| false).map(|_| ())
                        })?;
                    }
                }
            }
            "reset_password" => {
                let password =
                    Password::parse(&field(&req.password, "password")?).map_err(invalid)?;
                let hash = nova_core::password::hash(password.as_str(), cost)
                    .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
                let ctx = self.ctx(k);
                let audit = self.audit(k, Action::ResetPassword, user_id, "");
                self.write(k, move |t| {
                    identity::set_password_hash(t, &ctx, user_id, hash)?;
                    mods::record_audit(t, &audit)
                })?;
            }
            "show" => {}
            other => bail!("unknown action {other:?}"),
        }
        let read = self.dbs[k].begin_read()?;
        let user = identity::user(&read, user_id)?.context("no such user")?;
        let account = Account {
            role: mods::role(&read, user_id)?,
            suspension: mods::suspension(&read, user_id)?,
            sessions: identity::sessions_of(&read, user_id)?.len(),
            user,
        };
        Ok(account_json(&account))
    }
}
