//! Routes of direct messages and the live event stream. Each one authenticates, validates,
//! then asks the shard that owns the data: the conversation's shard for a conversation and
//! its messages, the caller's own shard for the inbox.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Instant;

use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;

use nova_core::messages::{self, Summary};
use nova_core::{shard_of, CoreError};
use nova_protocol::{self as wire, rfc3339, Route};

use crate::api::{authenticate, authenticate_token, json_body, query_param, Reply, Result};
use crate::api_social::{known, page};
use crate::briefs::{as_now, briefs};
use crate::error::{ApiError, Fail};
use crate::mesh::{NewMessage, Op};
use crate::messaging::message_view;
use crate::shard::Shard;

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    if route == Route::Stream {
        return stream(shard, &req, deadline).await;
    }
    let viewer = authenticate(shard, req.headers())?.user_id;
    match route {
        Route::CreateConversation => {
            let body: wire::CreateConversationRequest = json_body(shard, req).await?;
            let ids = body
                .participants
                .iter()
                .map(|p| {
                    p.parse::<u64>().map_err(|_| {
                        Fail::Core(CoreError::invalid(
                            "invalid_participants",
                            "participants are user ids",
                        ))
                    })
                })
                .collect::<std::result::Result<Vec<u64>, Fail>>()?;
            let others = messages::parse_participants(viewer, &ids)?;
            let summary = shard
                .ask(shard_of(viewer), deadline, |reply| Op::CreateConversation {
                    creator: viewer,
                    others,
                    reply,
                })
                .await?;
            let view = conversation_views(shard, viewer, vec![(summary, None)], deadline).await?;
            let conversation = view.into_iter().next().ok_or_else(ApiError::not_found)?;
            Ok(Reply::json(
                StatusCode::CREATED,
                &wire::ConversationEnvelope { conversation },
            ))
        }
        Route::ListConversations => list(shard, viewer, req.uri().query(), deadline).await,
        Route::GetConversation(id) => {
            let conversation = known(shard, id)?;
            let (summary, typing) = shard
                .ask(shard_of(conversation), deadline, |reply| {
                    Op::ConversationView {
                        conversation,
                        user: viewer,
                        reply,
                    }
                })
                .await?;
            let view =
                conversation_views(shard, viewer, vec![(summary, Some(typing))], deadline).await?;
            let conversation = view.into_iter().next().ok_or_else(ApiError::not_found)?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::ConversationEnvelope { conversation },
            ))
        }
        Route::ListMessages(id) => {
            let conversation = known(shard, id)?;
            let page = page(req.uri().query())?;
            let list = shard
                .ask(shard_of(conversation), deadline, |reply| Op::Messages {
                    conversation,
                    user: viewer,
                    page,
                    reply,
                })
                .await?;
            let next = (list.len() >= page.limit)
                .then(|| list.last().map(|m| m.id))
                .flatten();
            let path = req.uri().path();
            let mut links = Vec::new();
            if let Some(n) = next {
                links.push(format!(
                    "<{path}?max_id={n}&limit={}>; rel=\"next\"",
                    page.limit
                ));
            }
            if let Some(first) = list.first() {
                links.push(format!(
                    "<{path}?min_id={}&limit={}>; rel=\"prev\"",
                    first.id, page.limit
                ));
            }
            // A suspended sender's messages are hidden from the others (the cursors above
            // still move past them).
            let mut items: Vec<wire::MessageView> = list
                .iter()
                .filter(|m| !shard.hidden_from(m.sender, viewer))
                .map(message_view)
                .collect();
            as_now(shard, &mut items, |m| &mut m.sender, deadline).await?;
            crate::media_views::fill_messages(shard, &mut items, deadline).await?;
            let mut reply = Reply::json(
                StatusCode::OK,
                &wire::List {
                    items,
                    next: next.map(|n| n.to_string()),
                },
            );
            if !links.is_empty() {
                reply.link = Some(links.join(", "));
            }
            Ok(reply)
        }
        Route::SendMessage(id) => {
            let conversation = known(shard, id)?;
            let key = crate::api_social::idempotency_key(req.headers())?;
            let body: wire::SendMessageRequest = json_body(shard, req).await?;
            let text = messages::parse_text(&body.text)?;
            let media_ids: Vec<u64> =
                crate::api_social::attachments(shard, viewer, &body.media_ids, deadline)
                    .await?
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect();
            // Media sent in a message are private before the message exists.
            crate::media_views::make_private(shard, viewer, &media_ids, deadline).await?;
            let sender = briefs(shard, &[viewer], deadline)
                .await?
                .into_iter()
                .next()
                .ok_or_else(ApiError::not_found)?;
            let new = NewMessage {
                conversation,
                sender,
                text,
                media_ids,
                idempotency_key: key,
            };
            let message = shard
                .ask(shard_of(conversation), deadline, |reply| Op::SendMessage {
                    new,
                    reply,
                })
                .await?;
            let mut views = [message_view(&message)];
            as_now(shard, &mut views, |m| &mut m.sender, deadline).await?;
            crate::media_views::fill_messages(shard, &mut views, deadline).await?;
            let [message] = views;
            Ok(Reply::json(
                StatusCode::CREATED,
                &wire::MessageEnvelope { message },
            ))
        }
        Route::EditMessage(id) => {
            let id = known(shard, id)?;
            let body: wire::EditMessageRequest = json_body(shard, req).await?;
            let text = messages::parse_text(&body.text)?;
            let message = shard
                .ask(shard_of(id), deadline, |reply| Op::EditMessage {
                    id,
                    sender: viewer,
                    text,
                    reply,
                })
                .await?;
            let mut views = [message_view(&message)];
            as_now(shard, &mut views, |m| &mut m.sender, deadline).await?;
            crate::media_views::fill_messages(shard, &mut views, deadline).await?;
            let [message] = views;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::MessageEnvelope { message },
            ))
        }
        Route::DeleteMessage(id) => {
            let id = known(shard, id)?;
            shard
                .ask(shard_of(id), deadline, |reply| Op::DeleteMessage {
                    id,
                    sender: viewer,
                    reply,
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        Route::MarkRead(id) => {
            let conversation = known(shard, id)?;
            let has_body = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
            let body: wire::MarkReadRequest = if has_body {
                json_body(shard, req).await?
            } else {
                wire::MarkReadRequest::default()
            };
            let up_to = match body.up_to.as_deref() {
                None => None,
                Some(v) => Some(v.parse::<u64>().map_err(|_| {
                    Fail::Core(CoreError::invalid("invalid_up_to", "up_to is a message id"))
                })?),
            };
            let last = shard
                .ask(shard_of(conversation), deadline, |reply| Op::MarkRead {
                    conversation,
                    user: viewer,
                    up_to,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::ReadState {
                    last_read_id: (last != 0).then(|| last.to_string()),
                },
            ))
        }
        Route::Typing(id) => {
            let conversation = known(shard, id)?;
            shard
                .ask(shard_of(conversation), deadline, |reply| Op::Typing {
                    conversation,
                    user: viewer,
                    reply,
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        Route::LeaveConversation(id) => {
            let conversation = known(shard, id)?;
            shard
                .ask(shard_of(conversation), deadline, |reply| {
                    Op::LeaveConversation {
                        conversation,
                        user: viewer,
                        reply,
                    }
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::not_found()),
    }
}

/// `GET /v1/conversations`: the caller's inbox, newest activity first. The cursor is
/// `<activity ms>.<conversation id>` of the last item.
async fn list(
    shard: &Rc<Shard>,
    viewer: u64,
    query: Option<&str>,
    deadline: Instant,
) -> Result<Reply> {
    let q = query.unwrap_or("");
    let limit = page(query)?.limit;
    let before = match query_param(q, "cursor") {
        None => None,
        Some(c) => Some(
            c.split_once('.')
                .and_then(|(ms, id)| Some((ms.parse::<u64>().ok()?, id.parse::<u64>().ok()?)))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_cursor",
                        "cursor is the next value of the previous page",
                    )
                })?,
        ),
    };
    let rows = shard
        .ask(shard_of(viewer), deadline, |reply| Op::Inbox {
            user: viewer,
            before,
            limit,
            reply,
        })
        .await?;
    let next = (rows.len() >= limit)
        .then(|| rows.last().map(|(ms, id)| format!("{ms}.{id}")))
        .flatten();
    let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for (_, id) in &rows {
        by_shard.entry(shard_of(*id)).or_default().push(*id);
    }
    let mut found: HashMap<u64, Summary> = HashMap::new();
    for (k, ids) in by_shard {
        if k >= shard.shards {
            continue;
        }
        for s in shard
            .ask(k, deadline, |reply| Op::Summaries {
                ids,
                user: viewer,
                reply,
            })
            .await?
        {
            found.insert(s.conversation.id, s);
        }
    }
    let ordered: Vec<(Summary, Option<Vec<u64>>)> = rows
        .iter()
        .filter_map(|(_, id)| found.remove(id))
        .map(|s| (s, None))
        .collect();
    let items = conversation_views(shard, viewer, ordered, deadline).await?;
    let mut reply = Reply::json(
        StatusCode::OK,
        &wire::List {
            items,
            next: next.clone(),
        },
    );
    if let Some(n) = next {
        reply.link = Some(format!(
            "</v1/conversations?cursor={n}&limit={limit}>; rel=\"next\""
        ));
    }
    Ok(reply)
}

/// Conversations with their participants' names (asked of their shards once per shard).
async fn conversation_views(
    shard: &Rc<Shard>,
    viewer: u64,
    summaries: Vec<(Summary, Option<Vec<u64>>)>,
    deadline: Instant,
) -> Result<Vec<wire::ConversationView>> {
    // The last message's sender may have left the conversation since.
    let mut ids: Vec<u64> = summaries
        .iter()
        .flat_map(|(s, _)| {
            let sender = s.last_message.as_ref().map(|m| m.sender);
            s.conversation.participants.iter().copied().chain(sender)
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let cards = crate::briefs::cards(shard, ids, deadline).await?;
    let mut views: Vec<wire::ConversationView> = summaries
        .into_iter()
        .map(|(s, typing)| wire::ConversationView {
            id: s.conversation.id.to_string(),
            // A participant whose account is gone (being erased: it leaves every
            // conversation within seconds) is not shown.
            participants: s
                .conversation
                .participants
                .iter()
                .filter_map(|p| cards.get(p).cloned())
                .collect(),
            created_at: rfc3339(s.conversation.created_ms),
            last_activity_at: rfc3339(s.conversation.last_ms),
            // A suspended sender's last message is not shown to the others.
            last_message: s
                .last_message
                .as_ref()
                .filter(|m| !shard.hidden_from(m.sender, viewer))
                .map(message_view),
            unread_count: s.unread,
            read_receipts: s
                .receipts
                .iter()
                .map(|(u, r)| wire::ReadReceipt {
                    user_id: u.to_string(),
                    last_read_id: (*r != 0).then(|| r.to_string()),
                })
                .collect(),
            typing: typing.map(|t| t.iter().map(u64::to_string).collect()),
        })
        .collect();
    // The last messages' media, resolved like a message list's (one ask per owning shard).
    let (mut at, mut last) = (Vec::new(), Vec::new());
    for (i, v) in views.iter_mut().enumerate() {
        if let Some(m) = v.last_message.take() {
            at.push(i);
            last.push(m);
        }
    }
    crate::media_views::fill_messages(shard, &mut last, deadline).await?;
    crate::briefs::apply_cards(&cards, &mut last, |m| &mut m.sender);
    for (i, m) in at.into_iter().zip(last) {
        views[i].last_message = Some(m);
    }
    Ok(views)
}

/// `GET /v1/stream`: authenticated by the header or, for EventSource, `access_token` in the
/// query.
async fn stream(shard: &Rc<Shard>, req: &Request<Incoming>, deadline: Instant) -> Result<Reply> {
    let headers: &HeaderMap = req.headers();
    let claims = if headers.contains_key(http::header::AUTHORIZATION) {
        authenticate(shard, headers)?
    } else {
        match req
            .uri()
            .query()
            .and_then(|q| query_param(q, "access_token"))
        {
            Some(token) => authenticate_token(shard, &token)?,
            None => authenticate(shard, headers)?,
        }
    };
    Ok(crate::stream::open(shard, &claims, headers, deadline).await?)
}
