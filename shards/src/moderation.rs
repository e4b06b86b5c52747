//! The moderation operations a shard runs on data it owns: roles and suspensions (on the
//! user's shard), removals (on the content's shard), reports and the queue (on
//! `REPORTS_SHARD`), the audit log (every shard, merged by the reader), and the in-memory
//! set of suspended users every shard hides content by.
//!
//! How a suspension reaches every shard: the user's shard writes the suspension, its own
//! mirror row, the audit entry, the revocation of every session and a `SuspensionChanged`
//! event for every other shard in one transaction; then it broadcasts the revoked sessions
//! (deny lists) and delivers the event before answering. Each shard applies the event to
//! its `suspended_mirror` (newest event wins) and reloads its in-memory set from that table,
//! so feeds, post reads, comments and search on every shard hide the user's content at once
//! and show it again after an unsuspension (nothing is deleted).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Instant;

use nova_core::events::{self, Event};
use nova_core::identity::{self, Context, DisplayName, Email, User, Username};
use nova_core::moderation::{
    self as mods, Action, Actor, AuditEntry, Filed, NewReport, Report, ReportState, Role,
    Suspension, TargetKind,
};
use nova_core::{content, messages, shard_for_key, CoreError};

use crate::error::Fail;
use crate::mesh::{Op, Reply};
use crate::shard::{now_ms, Shard};

/// The suspended users as this shard's mirror says, loaded on first use and reloaded after
/// every change of the mirror.
#[derive(Default)]
pub struct Moderation {
    suspended: RefCell<HashSet<u64>>,
    loaded: Cell<bool>,
}

/// A user's moderation state.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub role: Role,
    pub suspended: bool,
}

/// A user as the operator's `show` sees it.
#[derive(Debug, Clone)]
pub struct Account {
    pub user: User,
    pub role: Role,
    pub suspension: Option<Suspension>,
    pub sessions: usize,
}

/// A report as the reporter files it (the id is made on the reports shard).
#[derive(Debug, Clone)]
pub struct ReportDraft {
    pub reporter: u64,
    pub kind: TargetKind,
    pub target: u64,
    pub reason: mods::Reason,
    pub note: String,
}

/// Moderation operations, each run on the shard that owns its data.
pub enum ModOp {
    /// On the user's shard: the user's role (`User` for an unknown user).
    Role { user_id: u64, reply: Reply<Role> },
    /// On the user's shard: the account, role, suspension and live sessions.
    Account {
        user_id: u64,
        reply: Reply<Option<Account>>,
    },
    /// On the user's shard: set the role (the caller checked the actor may).
    SetRole {
        user_id: u64,
        role: Role,
        actor: Actor,
        reply: Reply<Status>,
    },
    /// On the user's shard: suspend (`on`) or unsuspend.
    Suspend {
        user_id: u64,
        on: bool,
        actor: Actor,
        actor_role: Role,
        reason: String,
        reply: Reply<Status>,
    },
    /// On the user's shard: hash and set a new password, revoke every session.
    SetPassword {
        user_id: u64,
        password: String,
        actor: Actor,
        reply: Reply<()>,
    },
    /// On the username's shard: register a user for the operator, with an audit entry.
    CreateUser {
        username: Username,
        email: Email,
        password: String,
        reply: Reply<User>,
    },
    /// On the content's shard: remove a post or a comment of anyone.
    Remove {
        kind: TargetKind,
        id: u64,
        actor: Actor,
        reason: String,
        reply: Reply<()>,
    },
    /// On the target's shard: may `viewer` read it (a report needs so)?
    /// `None`: the viewer cannot read it; `Some(users)`: it can, unless it blocks or is
    /// blocked by one of `users` (asked on the viewer's shard).
    CanRead {
        kind: TargetKind,
        id: u64,
        viewer: u64,
        reply: Reply<Option<Vec<u64>>>,
    },
    /// On `REPORTS_SHARD`.
    FileReport {
        draft: ReportDraft,
        reply: Reply<Filed>,
    },
    Reports {
        state: ReportState,
        after: Option<u64>,
        limit: usize,
        reply: Reply<Vec<Report>>,
    },
    Resolve {
        id: u64,
        state: ReportState,
        actor: u64,
        note: String,
        reply: Reply<Report>,
    },
    /// On every shard: its audit entries below `before`, newest first.
    Audit {
        before: Option<u64>,
        limit: usize,
        reply: Reply<Vec<AuditEntry>>,
    },
}

impl Shard {
    /// Is `user` suspended (as this shard's mirror says)?
    pub fn is_suspended(&self, user: u64) -> bool {
        if !self.moderation.loaded.get() {
            self.reload_suspended();
        }
        self.moderation.suspended.borrow().contains(&user)
    }

    /// Is anyone suspended (as this shard's mirror says)? True while the mirror cannot be read.
    pub fn anyone_suspended(&self) -> bool {
        if !self.moderation.loaded.get() {
            self.reload_suspended();
        }
        !self.moderation.loaded.get() || !self.moderation.suspended.borrow().is_empty()
    }

    /// Is `author`'s content hidden from `viewer` (suspended, and not the author itself)?
    pub fn hidden_from(&self, author: u64, viewer: u64) -> bool {
        author != viewer && self.is_suspended(author)
    }

    /// Reads the mirror into memory (after it changed, or on first use).
    pub fn reload_suspended(&self) {
        match self.read(mods::suspended_users) {
            Ok(users) => {
                *self.moderation.suspended.borrow_mut() = users.into_iter().collect();
                self.moderation.loaded.set(true);
            }
            // Left unloaded: the next check tries again.
            Err(e) => tracing::error!(error = %e, "cannot read the suspended users"),
        }
    }

    fn audit(&self, actor: Actor, action: Action, kind: TargetKind, target: u64) -> AuditEntry {
        AuditEntry {
            id: self.next_id(),
            at_ms: now_ms(),
            actor,
            action,
            target_kind: kind,
            target,
            reason: String::new(),
        }
    }

    pub(crate) async fn serve_moderation(self: &Rc<Self>, op: ModOp, deadline: Instant) {
        match op {
            ModOp::Role { user_id, reply } => {
                let _ = reply.send(self.read(|r| mods::role(r, user_id)));
            }
            ModOp::Account { user_id, reply } => {
                let _ = reply.send(self.read(|r| {
                    let Some(user) = identity::user(r, user_id)? else {
                        return Ok(None);
                    };
                    Ok(Some(Account {
                        role: mods::role(r, user_id)?,
                        suspension: mods::suspension(r, user_id)?,
                        sessions: identity::sessions_of(r, user_id)?.len(),
                        user,
                    }))
                }));
            }
            ModOp::SetRole {
                user_id,
                role,
                actor,
                reply,
            } => {
                let _ = reply.send(self.set_role(user_id, role, actor).await);
            }
            ModOp::Suspend {
                user_id,
                on,
                actor,
                actor_role,
                reason,
                reply,
            } => {
                let result = self
                    .suspend(user_id, on, actor, actor_role, reason, deadline)
                    .await;
                let _ = reply.send(result);
            }
            ModOp::SetPassword {
                user_id,
                password,
                actor,
                reply,
            } => {
                let _ = reply.send(self.set_password(user_id, password, actor).await);
            }
            ModOp::CreateUser {
                username,
                email,
                password,
                reply,
            } => {
                let _ = reply.send(self.create_user(username, email, password, deadline).await);
            }
            ModOp::Remove {
                kind,
                id,
                actor,
                reason,
                reply,
            } => {
                let _ = reply.send(self.remove(kind, id, actor, reason, deadline).await);
            }
            ModOp::CanRead {
                kind,
                id,
                viewer,
                reply,
            } => {
                let _ = reply.send(self.can_read(kind, id, viewer));
            }
            ModOp::FileReport { draft, reply } => {
                let new = NewReport {
                    id: self.next_id(),
                    reporter: draft.reporter,
                    kind: draft.kind,
                    target: draft.target,
                    reason: draft.reason,
                    note: draft.note,
                };
                let now = now_ms();
                let result = self
                    .partition
                    .write(move |t| mods::file_report(t, new, now, mods::REPORTS_PER_HOUR_MAX))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            ModOp::Reports {
                state,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read(|r| mods::reports(r, state, after, limit)));
            }
            ModOp::Resolve {
                id,
                state,
                actor,
                note,
                reply,
            } => {
                let mut audit = self.audit(
                    Actor::User(actor),
                    Action::ResolveReport(state),
                    TargetKind::Account,
                    id,
                );
                let now = now_ms();
                let result = self
                    .partition
                    .write(move |t| {
                        // The entry names the report's target, with the report id in the reason.
                        if let Some(r) = mods::report_in(t, id)? {
                            audit.target_kind = r.kind;
                            audit.target = r.target;
                            audit.reason = format!("report {id}: {note}");
                        }
                        mods::resolve(t, id, state, actor, note, now, &audit)
                    })
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            ModOp::Audit {
                before,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read(|r| mods::audit_log(r, before, limit)));
            }
        }
    }

    async fn set_role(
        self: &Rc<Self>,
        user_id: u64,
        role: Role,
        actor: Actor,
    ) -> Result<Status, Fail> {
        let mut audit = self.audit(actor, Action::SetRole(role), TargetKind::Account, user_id);
        audit.reason = format!("role set to {}", role.as_str());
        let result = self
            .partition
            .write(move |t| {
                if identity::user_in(t, user_id)?.is_none() {
                    return Err(CoreError::NotFound);
                }
                let current = mods::role_in(t, user_id)?;
                // Through the API an admin grants and revokes the moderator role only; an
                // admin's own role changes through the operator's command.
                if matches!(actor, Actor::User(_)) && current == Role::Admin {
                    return Err(CoreError::forbidden(
                        "target_is_admin",
                        "an admin's role is changed with `nova admin users`",
                    ));
                }
                if current != role {
                    mods::set_role(t, user_id, role, &audit)?;
                }
                Ok(Status {
                    role,
                    suspended: mods::suspension_in(t, user_id)?.is_some(),
                })
            })
            .await?;
        Ok(result)
    }

    async fn suspend(
        self: &Rc<Self>,
        user_id: u64,
        on: bool,
        actor: Actor,
        actor_role: Role,
        reason: String,
        deadline: Instant,
    ) -> Result<Status, Fail> {
        let action = if on {
            Action::Suspend
        } else {
            Action::Unsuspend
        };
        let mut audit = self.audit(actor, action, TargetKind::Account, user_id);
        audit.reason = reason.clone();
        let event_id = self.next_id();
        let now = now_ms();
        let ctx = Context {
            now_ms: now,
            ip: "moderation".to_string(),
            log_id: self.next_id(),
        };
        let here = self.id;
        let targets: Vec<usize> = (0..self.shards).filter(|s| *s != here).collect();
        let event = Event::SuspensionChanged {
            user_id,
            suspended: on,
        };
        let (status, changed, revoked) = {
            let event = event.clone();
            let targets = targets.clone();
            self.partition
                .write(move |t| {
                    if identity::user_in(t, user_id)?.is_none() {
                        return Err(CoreError::NotFound);
                    }
                    let role = mods::role_in(t, user_id)?;
                    if let Actor::User(me) = actor {
                        if me == user_id {
                            return Err(CoreError::forbidden(
                                "cannot_suspend_self",
                                "you cannot suspend yourself",
                            ));
                        }
                        // A moderator acts on plain users; an admin on users and moderators.
                        if role >= actor_role {
                            return Err(CoreError::forbidden(
                                "target_role_too_high",
                                format!(
                                    "a {} cannot be suspended by a {}",
                                    role.as_str(),
                                    actor_role.as_str()
                                ),
                            ));
                        }
                    }
                    let changed = if on {
                        let s = Suspension {
                            at_ms: now,
                            by: actor,
                            reason,
                        };
                        mods::suspend(t, user_id, &s, event_id, &audit)?
                    } else {
                        mods::unsuspend(t, user_id, event_id, &audit)?
                    };
                    let mut revoked = Vec::new();
                    if changed {
                        if on {
                            revoked = identity::revoke_all_sessions(t, &ctx, user_id)?;
                        }
                        events::record(t, event_id, now, &event, &targets)?;
                    }
                    Ok((
                        Status {
                            role,
                            suspended: on,
                        },
                        changed,
                        revoked,
                    ))
                })
                .await?
        };
        if changed {
            self.reload_suspended();
            if on {
                self.unstream_user(user_id);
            }
            self.users.borrow_mut().remove(&user_id);
            self.broadcast_revoked(&revoked).await;
            self.deliver_now(event_id, event, &targets, deadline).await;
        }
        Ok(status)
    }

    async fn set_password(
        self: &Rc<Self>,
        user_id: u64,
        password: String,
        actor: Actor,
    ) -> Result<(), Fail> {
        if self.read(|r| identity::user(r, user_id))?.is_none() {
            return Err(CoreError::NotFound.into());
        }
        let hash = self.hasher.hash(password).await?;
        let audit = self.audit(actor, Action::ResetPassword, TargetKind::Account, user_id);
        let ctx = Context {
            now_ms: now_ms(),
            ip: "admin".to_string(),
            log_id: self.next_id(),
        };
        let revoked = self
            .partition
            .write(move |t| {
                let revoked = identity::set_password_hash(t, &ctx, user_id, hash)?;
                mods::record_audit(t, &audit)?;
                Ok::<_, CoreError>(revoked)
            })
            .await?;
        self.users.borrow_mut().remove(&user_id);
        self.broadcast_revoked(&revoked).await;
        Ok(())
    }

    /// The operator's registration: the same steps as `Shard::register` (claim the email on
    /// its shard, then create the user here, releasing the claim if that fails), with the
    /// audit entry in the user's creation transaction.
    async fn create_user(
        self: &Rc<Self>,
        username: Username,
        email: Email,
        password: String,
        deadline: Instant,
    ) -> Result<User, Fail> {
        debug_assert_eq!(shard_for_key(&username.key(), self.shards), self.id);
        let display_name = DisplayName::parse(username.as_str()).map_err(CoreError::from)?;
        if self
            .read(|r| identity::user_by_username(r, &username.key()))?
            .is_some()
        {
            return Err(CoreError::UsernameTaken.into());
        }
        let password_hash = self.hasher.hash(password).await?;
        let user_id = self.next_id();
        let email_key = email.key();
        let email_shard = shard_for_key(&email_key, self.shards);
        let claimed = email.clone();
        self.ask(email_shard, deadline, |reply| Op::ClaimEmail {
            email: claimed,
            user_id,
            reply,
        })
        .await?;
        let ctx = Context {
            now_ms: now_ms(),
            ip: "admin-cli".to_string(),
            log_id: self.next_id(),
        };
        let email_id = self.next_id();
        let verify_ttl_ms = self.cfg.email_token_ttl_s * 1000;
        let audit = self.audit(
            Actor::AdminCli,
            Action::CreateUser,
            TargetKind::Account,
            user_id,
        );
        let created = self
            .partition
            .write(move |t| {
                let user = identity::create_user(
                    t,
                    &ctx,
                    identity::NewUser {
                        id: user_id,
                        username,
                        email,
                        display_name,
                        password_hash,
                        email_id,
                        verify_ttl_ms,
                    },
                )?;
                mods::record_audit(t, &audit)?;
                Ok::<_, CoreError>(user)
            })
            .await;
        match created {
            Ok(user) => {
                self.mail.wake();
                Ok(user)
            }
            Err(e) => {
                // Best effort: a claim left behind goes stale and is taken over later.
                let _ = self
                    .ask(email_shard, deadline, |reply| Op::ReleaseEmail {
                        key: email_key,
                        user_id,
                        reply,
                    })
                    .await;
                Err(e.into())
            }
        }
    }

    /// Removes a post or comment through the same core paths as its author's delete (feeds,
    /// counts and search follow), with the audit entry in the same transaction.
    async fn remove(
        self: &Rc<Self>,
        kind: TargetKind,
        id: u64,
        actor: Actor,
        reason: String,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let mut audit = self.audit(actor, Action::RemovePost, kind, id);
        audit.reason = reason;
        match kind {
            TargetKind::Post => {
                let author = self
                    .read(|r| content::post(r, id))?
                    .ok_or(CoreError::NotFound)?
                    .author_id;
                let event_id = self.next_id();
                let now = now_ms();
                let here = self.id;
                let targets: Vec<usize> = (0..self.shards).filter(|s| *s != here).collect();
                let event = Event::PostDeleted {
                    post_id: id,
                    author,
                };
                {
                    let event = event.clone();
                    let targets = targets.clone();
                    self.partition
                        .write(move |t| {
                            content::delete_post(t, author, id)?;
                            nova_core::social::unfan(t, id)?;
                            events::record(t, event_id, now, &event, &targets)?;
                            mods::record_audit(t, &audit)
                        })
                        .await?;
                }
                self.feeds.post_gone(id);
                self.unstream_item(id);
                self.deliver_now(event_id, event, &targets, deadline).await;
                Ok(())
            }
            TargetKind::Comment => {
                audit.action = Action::RemoveComment;
                let author = self
                    .read(|r| content::comment(r, id))?
                    .ok_or(CoreError::NotFound)?
                    .author_id;
                self.partition
                    .write(move |t| {
                        content::delete_comment(t, id, author)?;
                        mods::record_audit(t, &audit)
                    })
                    .await?;
                self.unstream_item(id);
                Ok(())
            }
            TargetKind::Message | TargetKind::Account => Err(CoreError::NotFound.into()),
        }
    }

    /// Whether `viewer` may read the target (and so report it), as far as this, its shard,
    /// can tell: `Some(users)` when it may unless it blocks or is blocked by one of them.
    fn can_read(&self, kind: TargetKind, id: u64, viewer: u64) -> Result<Option<Vec<u64>>, Fail> {
        let readable = |yes: bool| Ok(yes.then(Vec::new));
        self.read(|r| match kind {
            TargetKind::Post => match content::post(r, id)? {
                Some(post) => readable(self.may_see(r, &post, viewer)?),
                None => Ok(None),
            },
            TargetKind::Comment => {
                let Some(comment) = content::comment(r, id)? else {
                    return Ok(None);
                };
                if self.hidden_from(comment.author_id, viewer) {
                    return Ok(None);
                }
                // A comment list leaves out the comments of users the viewer blocks or is
                // blocked by: so does this.
                match content::post(r, comment.post_id)? {
                    Some(post) if self.may_see(r, &post, viewer)? => {
                        Ok(Some(vec![comment.author_id]))
                    }
                    _ => Ok(None),
                }
            }
            TargetKind::Message => {
                let Some(message) = messages::message(r, id)? else {
                    return Ok(None);
                };
                // A suspended sender's messages are left out of the viewer's list.
                if self.hidden_from(message.sender, viewer) {
                    return Ok(None);
                }
                match messages::conversation_for(r, message.conversation, viewer) {
                    Ok(_) => Ok(Some(Vec::new())),
                    Err(CoreError::NotFound) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            TargetKind::Account => readable(
                identity::user(r, id)?.is_some()
                    && !self.hidden_from(id, viewer)
                    && !nova_core::social::blocked_either_way(r, id, viewer)?,
            ),
        })
    }
}
