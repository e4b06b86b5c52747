//! Routes of moderation: any user reports (`POST /v1/reports`); moderators and admins work
//! the queue, remove content, suspend accounts and read the audit log; admins grant and
//! revoke the moderator role. Each route authenticates, checks the caller's role on the
//! caller's shard, validates, then asks the shard that owns the data.

use std::rc::Rc;
use std::time::Instant;

use http::header::CONTENT_LENGTH;
use http::{Request, StatusCode};
use hyper::body::Incoming;

use nova_core::moderation::{
    self as mods, Actor, AuditEntry, Filed, Reason, Report, ReportState, Role, TargetKind,
    REPORTS_SHARD,
};
use nova_core::shard_of;
use nova_protocol::{self as wire, rfc3339, Route};

use crate::api::{authenticate, json_body, query_param, Reply, Result};
use crate::api_social::{known, PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::error::{ApiError, Fail};
use crate::mesh::Op;
use crate::moderation::{ModOp, ReportDraft, Status};
use crate::shard::Shard;

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let viewer = authenticate(shard, req.headers())?.user_id;
    if route == Route::CreateReport {
        return create_report(shard, viewer, req, deadline).await;
    }
    let role = ask_mod(shard, shard_of(viewer), deadline, |reply| ModOp::Role {
        user_id: viewer,
        reply,
    })
    .await?;
    if !role.moderates() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for moderators and admins",
        ));
    }
    let actor = Actor::User(viewer);
    match route {
        Route::ModReports => {
            let q = req.uri().query().unwrap_or("");
            let state = match query_param(q, "state") {
                None => ReportState::Open,
                Some(s) => ReportState::parse(&s)
                    .ok_or_else(|| bad("invalid_state", "state is open, actioned or dismissed"))?,
            };
            let (after, limit) = cursor_and_limit(q, "cursor")?;
            let reports = ask_mod(shard, REPORTS_SHARD, deadline, |reply| ModOp::Reports {
                state,
                after,
                limit,
                reply,
            })
            .await?;
            let next = (reports.len() == limit)
                .then(|| reports.last().map(|r| r.id.to_string()))
                .flatten();
            let items = reports.iter().map(report_view).collect();
            Ok(Reply::json(StatusCode::OK, &wire::List { items, next }))
        }
        Route::ModResolveReport(id) => {
            let body: wire::ResolveRequest = json_body(shard, req).await?;
            let state = match body.resolution.as_str() {
                "actioned" => ReportState::Actioned,
                "dismissed" => ReportState::Dismissed,
                _ => {
                    return Err(bad(
                        "invalid_resolution",
                        "resolution is actioned or dismissed",
                    ))
                }
            };
            let note = note(body.note.as_deref(), mods::NOTE_CHARS_MAX)?;
            if shard_of(id) != REPORTS_SHARD {
                return Err(ApiError::not_found());
            }
            let report = ask_mod(shard, REPORTS_SHARD, deadline, |reply| ModOp::Resolve {
                id,
                state,
                actor: viewer,
                note,
                reply,
            })
            .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::ReportEnvelope {
                    report: report_view(&report),
                },
            ))
        }
        Route::ModRemovePost(id) | Route::ModRemoveComment(id) => {
            let kind = if matches!(route, Route::ModRemovePost(_)) {
                TargetKind::Post
            } else {
                TargetKind::Comment
            };
            let q = req.uri().query().unwrap_or("");
            let reason = note(query_param(q, "reason").as_deref(), mods::REASON_CHARS_MAX)?;
            let id = known(shard, id)?;
            ask_mod(shard, shard_of(id), deadline, |reply| ModOp::Remove {
                kind,
                id,
                actor,
                reason,
                reply,
            })
            .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        Route::ModSuspend(id) | Route::ModUnsuspend(id) => {
            let on = matches!(route, Route::ModSuspend(_));
            let body: wire::ReasonRequest = optional_body(shard, req).await?;
            let reason = note(body.reason.as_deref(), mods::REASON_CHARS_MAX)?;
            let user_id = known(shard, id)?;
            let status = ask_mod(shard, shard_of(user_id), deadline, |reply| ModOp::Suspend {
                user_id,
                on,
                actor,
                actor_role: role,
                reason,
                reply,
            })
            .await?;
            Ok(status_reply(user_id, status))
        }
        Route::ModGrantModerator(id) | Route::ModRevokeModerator(id) => {
            if role != Role::Admin {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "admin_only",
                    "only admins grant or revoke the moderator role",
                ));
            }
            let new_role = if matches!(route, Route::ModGrantModerator(_)) {
                Role::Moderator
            } else {
                Role::User
            };
            let user_id = known(shard, id)?;
            let status = ask_mod(shard, shard_of(user_id), deadline, |reply| ModOp::SetRole {
                user_id,
                role: new_role,
                actor,
                reply,
            })
            .await?;
            Ok(status_reply(user_id, status))
        }
        Route::ModAudit => {
            let q = req.uri().query().unwrap_or("");
            let (before, limit) = cursor_and_limit(q, "cursor")?;
            let mut all: Vec<AuditEntry> = Vec::new();
            for k in 0..shard.shards {
                all.extend(
                    ask_mod(shard, k, deadline, |reply| ModOp::Audit {
                        before,
                        limit,
                        reply,
                    })
                    .await?,
                );
            }
            // Ids are time-ordered across shards: one merge, newest first.
            all.sort_by_key(|e| std::cmp::Reverse(e.id));
            all.truncate(limit);
            let next = (all.len() == limit)
                .then(|| all.last().map(|e| e.id.to_string()))
                .flatten();
            let items: Vec<wire::AuditView> = all.iter().map(audit_view).collect();
            Ok(Reply::json(StatusCode::OK, &wire::List { items, next }))
        }
        _ => Err(ApiError::not_found()),
    }
}

async fn create_report(
    shard: &Rc<Shard>,
    reporter: u64,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let body: wire::ReportRequest = json_body(shard, req).await?;
    let kind = TargetKind::parse(&body.target_type).ok_or_else(|| {
        bad(
            "invalid_target_type",
            "target_type is post, comment, message or account",
        )
    })?;
    let reason = Reason::parse(&body.reason).ok_or_else(|| {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        bad(
            "invalid_reason",
            format!("reason is one of {}", names.join(", ")),
        )
    })?;
    let note = note(body.note.as_deref(), mods::NOTE_CHARS_MAX)?;
    let target = body
        .target_id
        .parse::<u64>()
        .map_err(|_| bad("invalid_target_id", "target_id is an id"))?;
    let target = known(shard, target)?;
    let readable = ask_mod(shard, shard_of(target), deadline, |reply| ModOp::CanRead {
        kind,
        id: target,
        viewer: reporter,
        reply,
    })
    .await?;
    let Some(unless) = readable else {
        return Err(ApiError::not_found());
    };
    if !shard
        .blocked_among(reporter, unless, deadline)
        .await?
        .is_empty()
    {
        return Err(ApiError::not_found());
    }
    let draft = ReportDraft {
        reporter,
        kind,
        target,
        reason,
        note,
    };
    let filed = ask_mod(shard, REPORTS_SHARD, deadline, |reply| ModOp::FileReport {
        draft,
        reply,
    })
    .await?;
    match filed {
        Filed::New(r) => Ok(Reply::json(
            StatusCode::CREATED,
            &wire::ReportEnvelope {
                report: report_view(&r),
            },
        )),
        Filed::Existing(r) => Ok(Reply::json(
            StatusCode::OK,
            &wire::ReportEnvelope {
                report: report_view(&r),
            },
        )),
        Filed::TooMany { retry_after_ms } => Err(Fail::RateLimited {
            retry_after_s: retry_after_ms.div_ceil(1000),
            limit: mods::REPORTS_PER_HOUR_MAX as u32,
        }
        .into()),
    }
}

/// Runs a moderation operation on shard `target`.
async fn ask_mod<T>(
    shard: &Rc<Shard>,
    target: usize,
    deadline: Instant,
    make: impl FnOnce(crate::mesh::Reply<T>) -> ModOp,
) -> Result<T, Fail> {
    shard
        .ask(target, deadline, |reply| Op::Moderation(make(reply)))
        .await
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A free-text note or reason within `max` characters (400 otherwise).
fn note(raw: Option<&str>, max: usize) -> Result<String> {
    mods::parse_note(raw.unwrap_or(""), max, "invalid_note")
        .map_err(|v| bad(v.code, format!("note: {}", v.message)))
}

/// `limit` (1 to 100, default 20) and an id cursor named `name`.
fn cursor_and_limit(q: &str, name: &str) -> Result<(Option<u64>, usize)> {
    let limit = match query_param(q, "limit") {
        None => PAGE_LIMIT_DEFAULT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => n,
            _ => {
                return Err(bad(
                    "invalid_limit",
                    format!("limit is a number from 1 to {PAGE_LIMIT_MAX}"),
                ))
            }
        },
    };
    let cursor = match query_param(q, name) {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad("invalid_cursor", format!("{name} is an id")))?,
        ),
    };
    Ok((cursor, limit))
}

/// A JSON body that may be left out (no body reads as the default).
async fn optional_body<T: serde::de::DeserializeOwned + Default>(
    shard: &Shard,
    req: Request<Incoming>,
) -> Result<T> {
    let empty = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == "0");
    if empty {
        return Ok(T::default());
    }
    json_body(shard, req).await
}

fn status_reply(user_id: u64, status: Status) -> Reply {
    Reply::json(
        StatusCode::OK,
        &wire::ModerationStatus {
            user_id: user_id.to_string(),
            role: status.role.as_str(),
            suspended: status.suspended,
        },
    )
}

fn report_view(r: &Report) -> wire::ReportView {
    wire::ReportView {
        id: r.id.to_string(),
        reporter_id: r.reporter.to_string(),
        target_type: r.kind.as_str(),
        target_id: r.target.to_string(),
        reason: r.reason.as_str(),
        note: r.note.clone(),
        state: r.state.as_str(),
        created_at: rfc3339(r.created_ms),
        resolved_by: r.resolved_by.map(|u| u.to_string()),
        resolved_at: r.resolved_ms.map(rfc3339),
        resolution_note: r.resolution_note.clone(),
    }
}

pub(crate) fn audit_view(e: &AuditEntry) -> wire::AuditView {
    wire::AuditView {
        id: e.id.to_string(),
        at: rfc3339(e.at_ms),
        actor: e.actor.label(),
        action: e.action.as_str(),
        target_type: e.target_kind.as_str(),
        target_id: e.target.to_string(),
        reason: e.reason.clone(),
    }
}
