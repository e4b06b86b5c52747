//! Routes of notifications and Web Push subscriptions. Everything is keyed by the
//! authenticated user and runs on that user's shard: there is no way to name another user's
//! notifications or subscriptions.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use http::{Request, StatusCode};
use hyper::body::Incoming;

use nova_core::notifications::{self, Filter, Kind, Notification, Subject, Which};
use nova_core::push::Subscription;
use nova_core::shard_of;
use nova_protocol::{self as wire, rfc3339, Route};

use crate::api::{authenticate, json_body, query_param, Reply, Result};
use crate::api_social::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
use crate::error::ApiError;
use crate::mesh::Op;
use crate::notify::NotifyOp;
use crate::shard::{now_ms, Shard};

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    if route == Route::PushVapidKey {
        // A public key: no account needed to read it.
        return Ok(Reply::json(
            StatusCode::OK,
            &wire::VapidPublicKey {
                public_key: shard.push.public_key().to_string(),
            },
        ));
    }
    let claims = authenticate(shard, req.headers())?;
    let user = claims.user_id;
    let home = shard_of(user);
    match route {
        Route::Notifications => list(shard, user, req.uri().query(), deadline).await,
        Route::NotificationsRead => {
            let body: wire::NotificationsReadRequest = json_body(shard, req).await?;
            let which = which(body)?;
            let (marked, unread) = shard
                .ask(home, deadline, |reply| {
                    Op::Notify(NotifyOp::MarkRead { user, which, reply })
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::MarkedRead { marked, unread },
            ))
        }
        Route::NotificationsUnreadCount => {
            let unread = shard
                .ask(home, deadline, |reply| {
                    Op::Notify(NotifyOp::Unread { user, reply })
                })
                .await?;
            Ok(Reply::json(StatusCode::OK, &wire::UnreadCount { unread }))
        }
        Route::PushSubscriptions => {
            let subs = shard
                .ask(home, deadline, |reply| {
                    Op::Notify(NotifyOp::Subscriptions { user, reply })
                })
                .await?;
            let items: Vec<wire::PushSubscriptionView> = subs.iter().map(sub_view).collect();
            Ok(Reply::json(
                StatusCode::OK,
                &wire::List { items, next: None },
            ))
        }
        Route::PushSubscribe => {
            let body: wire::PushSubscriptionRequest = json_body(shard, req).await?;
            let sub = Subscription::parse(
                &body.endpoint,
                &body.keys.p256dh,
                &body.keys.auth,
                shard.cfg.push_allow_insecure_loopback,
                now_ms(),
                claims.session_id,
            )?;
            let view = sub_view(&sub);
            let stored = shard
                .ask(home, deadline, |reply| {
                    Op::Notify(NotifyOp::Subscribe { user, sub, reply })
                })
                .await?;
            if !stored {
                return Err(ApiError::unauthorized(
                    "session_revoked",
                    "this session has ended; log in again",
                ));
            }
            Ok(Reply::json(StatusCode::CREATED, &view))
        }
        Route::PushUnsubscribe => {
            let endpoint = req
                .uri()
                .query()
                .and_then(|q| query_param(q, "endpoint"))
                .filter(|e| !e.is_empty() && e.len() <= nova_core::push::ENDPOINT_BYTES_MAX)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_endpoint",
                        "name the subscription with ?endpoint=<its URL, percent-encoded>",
                    )
                })?;
            let removed = shard
                .ask(home, deadline, |reply| {
                    Op::Notify(NotifyOp::Unsubscribe {
                        user,
                        endpoint,
                        reply,
                    })
                })
                .await?;
            if removed {
                Ok(Reply::empty(StatusCode::NO_CONTENT))
            } else {
                Err(ApiError::not_found())
            }
        }
        _ => Err(ApiError::not_found()),
    }
}

/// `GET /v1/notifications?limit=&max_id=&types=a,b&exclude_types=c`.
async fn list(
    shard: &Rc<Shard>,
    user: u64,
    query: Option<&str>,
    deadline: Instant,
) -> Result<Reply> {
    let q = query.unwrap_or("");
    let bad =
        |code: &'static str, message: String| ApiError::new(StatusCode::BAD_REQUEST, code, message);
    let limit = match query_param(q, "limit") {
        None => PAGE_LIMIT_DEFAULT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
            .ok_or_else(|| {
                bad(
                    "invalid_limit",
                    format!("limit is a number from 1 to {PAGE_LIMIT_MAX}"),
                )
            })?,
    };
    let max_id = match query_param(q, "max_id") {
        None => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad("invalid_cursor", "max_id is an id".to_string()))?,
        ),
    };
    let kinds = |name: &str| -> Result<Vec<Kind>> {
        let Some(raw) = query_param(q, name) else {
            return Ok(Vec::new());
        };
        // Every name is checked (a repeated one counts once), so none is silently left out.
        let mut kinds = Vec::with_capacity(Kind::ALL.len());
        for s in raw.split(',').filter(|s| !s.is_empty()) {
            let kind = Kind::parse(s.trim()).ok_or_else(|| {
                bad(
                    "invalid_type",
                    format!(
                        "{name} is a comma-separated list of: {}",
                        Kind::ALL.map(Kind::as_str).join(", ")
                    ),
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    };
    let filter = Filter {
        only: kinds("types")?,
        exclude: kinds("exclude_types")?,
    };
    let filter_query = {
        let mut s = String::new();
        for (name, kinds) in [("types", &filter.only), ("exclude_types", &filter.exclude)] {
            if !kinds.is_empty() {
                let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
                s.push_str(&format!("&{name}={}", names.join(",")));
            }
        }
        s
    };
    let (items, next) = shard
        .ask(shard_of(user), deadline, |reply| {
            Op::Notify(NotifyOp::List {
                user,
                max_id,
                limit,
                filter,
                reply,
            })
        })
        .await?;
    // What a suspended user caused is hidden (the cursor still moves on).
    let items: Vec<_> = items
        .into_iter()
        .filter(|n| !n.actor.is_some_and(|a| shard.hidden_from(a, user)))
        .collect();
    let mut actors: Vec<u64> = items.iter().filter_map(|n| n.actor).collect();
    actors.sort_unstable();
    actors.dedup();
    let names = actor_names(shard, &actors, deadline).await;
    let views: Vec<wire::NotificationView> = items.iter().map(|n| view(n, &names)).collect();
    let mut reply = Reply::json(
        StatusCode::OK,
        &wire::List {
            items: views,
            next: next.map(|n| n.to_string()),
        },
    );
    if let Some(n) = next {
        reply.link = Some(format!(
            "</v1/notifications?max_id={n}&limit={limit}{filter_query}>; rel=\"next\""
        ));
    }
    Ok(reply)
}

fn which(body: wire::NotificationsReadRequest) -> Result<Which> {
    let bad =
        |message: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message);
    let id = |s: &str| {
        s.parse::<u64>()
            .map_err(|_| bad(format!("{s:?} is not a notification id")))
    };
    match (body.ids, body.all, body.up_to) {
        (Some(ids), None, None) => {
            if ids.is_empty() || ids.len() > notifications::MARK_IDS_MAX {
                return Err(bad(format!(
                    "ids lists 1 to {} notification ids",
                    notifications::MARK_IDS_MAX
                )));
            }
            Ok(Which::Ids(
                ids.iter().map(|s| id(s)).collect::<Result<Vec<_>>>()?,
            ))
        }
        (None, Some(true), None) => Ok(Which::All),
        (None, None, Some(up_to)) => Ok(Which::UpTo(id(&up_to)?)),
        _ => Err(bad(
            "send exactly one of ids (a list), all (true) or up_to (an id)".to_string(),
        )),
    }
}

/// An actor's names, as a notification shows them.
#[derive(Debug, Clone)]
pub(crate) struct ActorName {
    pub username: String,
    pub display_name: String,
}

impl From<crate::mesh::UserBrief> for ActorName {
    fn from(b: crate::mesh::UserBrief) -> ActorName {
        ActorName {
            username: b.username,
            display_name: b.display_name,
        }
    }
}

/// Names of actors, asked of their shards; an actor whose shard does not answer in time
/// (or who is gone) has none.
pub(crate) async fn actor_names(
    shard: &Rc<Shard>,
    actors: &[u64],
    deadline: Instant,
) -> HashMap<u64, ActorName> {
    match crate::briefs::briefs(shard, actors, deadline).await {
        Ok(briefs) => briefs.into_iter().map(|b| (b.id, b.into())).collect(),
        Err(e) => {
            tracing::debug!(status = e.status.as_u16(), "actor names not found");
            HashMap::new()
        }
    }
}

/// A notification as clients (and push messages) see it.
pub(crate) fn view(n: &Notification, names: &HashMap<u64, ActorName>) -> wire::NotificationView {
    let subject = |kind: &'static str, id: u64| wire::SubjectView {
        kind,
        id: id.to_string(),
        post_id: None,
        conversation_id: None,
    };
    wire::NotificationView {
        id: n.id.to_string(),
        kind: n.kind.as_str(),
        actor: n.actor.map(|a| {
            let name = names.get(&a);
            wire::ActorView {
                id: a.to_string(),
                username: name.map(|n| n.username.clone()),
                display_name: name.map(|n| n.display_name.clone()),
            }
        }),
        subject: match n.subject {
            Subject::None => None,
            Subject::Post(id) => Some(subject("post", id)),
            Subject::Media(id) => Some(subject("media", id)),
            Subject::Comment { id, post } => Some(wire::SubjectView {
                post_id: Some(post.to_string()),
                ..subject("comment", id)
            }),
            Subject::Message { id, conversation } => Some(wire::SubjectView {
                conversation_id: Some(conversation.to_string()),
                ..subject("message", id)
            }),
        },
        created_at: rfc3339(n.created_ms),
        read: n.read,
    }
}

fn sub_view(s: &Subscription) -> wire::PushSubscriptionView {
    wire::PushSubscriptionView {
        endpoint: s.endpoint.clone(),
        created_at: rfc3339(s.created_ms),
    }
}
