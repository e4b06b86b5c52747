//! Routes of the social domain: profiles, posts, follows, blocks and timelines. Each one
//! authenticates, validates, then asks the shard that owns the data.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, StatusCode};
use hyper::body::Incoming;

use nova_core::content::{self, Post, Visibility};
use nova_core::identity::DisplayName;
use nova_core::profiles;
use nova_core::social::OwnList;
use nova_core::{shard_of, CoreError};
use nova_protocol::{self as wire, rfc3339, Route};

use crate::api::{authenticate, json_body, query_param, Reply, Result};
use crate::briefs::{apply_cards, as_now, brief_views, cards};
use crate::error::{ApiError, Fail};
use crate::feeds::SharedPost;
use crate::mesh::{
    CommentInfo, NewPost, Op, Page, PostStats, PreferencesUpdate, ProfileEdit, SettingsUpdate,
};
use crate::shard::Shard;

pub const PAGE_LIMIT_DEFAULT: usize = 20;
pub const PAGE_LIMIT_MAX: usize = 100;

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let viewer = authenticate(shard, req.headers())?.user_id;
    match route {
        Route::UserById(id) => profile(shard, known(shard, id)?, viewer, deadline).await,
        Route::UserByName => {
            let name = req.uri().path().trim_start_matches("/v1/users/@");
            let key = crate::api::percent_decode(name).to_ascii_lowercase();
            if key.is_empty() || key.len() > 64 {
                return Err(ApiError::not_found());
            }
            let user = shard.user_named(key, deadline).await?;
            let user = user.ok_or_else(ApiError::not_found)?;
            profile(shard, user.id, viewer, deadline).await
        }
        Route::Follow(id) => {
            let followee = known(shard, id)?;
            let following = shard
                .ask(shard_of(viewer), deadline, |reply| Op::Follow {
                    follower: viewer,
                    followee,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::Following {
                    following,
                    requested: !following,
                },
            ))
        }
        Route::Unfollow(id) => {
            let followee = known(shard, id)?;
            unfollow(shard, viewer, followee, deadline).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::Following {
                    following: false,
                    requested: false,
                },
            ))
        }
        Route::FollowRequests => {
            own_list(
                shard,
                &req,
                viewer,
                OwnList::FollowRequests,
                deadline,
                |user, at| wire::FollowRequestView {
                    user,
                    requested_at: rfc3339(at),
                },
            )
            .await
        }
        Route::Blocks => {
            own_list(
                shard,
                &req,
                viewer,
                OwnList::Blocks,
                deadline,
                |user, at| wire::BlockView {
                    user,
                    blocked_at: rfc3339(at),
                },
            )
            .await
        }
        Route::Mutes => {
            own_list(shard, &req, viewer, OwnList::Mutes, deadline, |user, at| {
                wire::MuteView {
                    user,
                    muted_at: rfc3339(at),
                }
            })
            .await
        }
        Route::ApproveFollowRequest(id) | Route::RejectFollowRequest(id) => {
            let requester = known(shard, id)?;
            let approve = matches!(route, Route::ApproveFollowRequest(_));
            shard
                .ask(shard_of(viewer), deadline, |reply| {
                    Op::AnswerFollowRequest {
                        followee: viewer,
                        requester,
                        approve,
                        reply,
                    }
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        Route::GetSettings | Route::UpdateSettings => {
            let update = if route == Route::UpdateSettings {
                let body: wire::UpdateSettingsRequest = json_body(shard, req).await?;
                Some(SettingsUpdate {
                    private: body.private,
                    messages_from: body
                        .messages_from
                        .as_deref()
                        .map(profiles::MessagesFrom::parse)
                        .transpose()?,
                    email_digest: body
                        .email_digest
                        .as_deref()
                        .map(profiles::Digest::parse)
                        .transpose()?,
                })
            } else {
                None
            };
            let (settings, digest) = shard
                .ask(shard_of(viewer), deadline, |reply| Op::Settings {
                    user_id: viewer,
                    update,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::SettingsEnvelope {
                    settings: wire::SettingsView {
                        private: settings.private,
                        messages_from: settings.messages_from.as_str(),
                        email_digest: digest.as_str(),
                    },
                },
            ))
        }
        Route::EditPost(id) => {
            let post_id = known(shard, id)?;
            let body: wire::EditPostRequest = json_body(shard, req).await?;
            let text = content::parse_text(&body.text)?;
            let post = shard
                .ask(shard_of(post_id), deadline, |reply| Op::EditPost {
                    post_id,
                    author: viewer,
                    text,
                    reply,
                })
                .await?;
            post_reply(shard, StatusCode::OK, &post, viewer, deadline).await
        }
        Route::Block(id) => {
            let blocked = known(shard, id)?;
            if blocked == viewer {
                return Err(Fail::Core(CoreError::invalid(
                    "cannot_block_self",
                    "you cannot block yourself",
                ))
                .into());
            }
            visible_or_404(shard, blocked, viewer, deadline, true).await?;
            shard
                .ask(shard_of(viewer), deadline, |reply| Op::Block {
                    blocker: viewer,
                    blocked,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::Blocking { blocking: true },
            ))
        }
        Route::Unblock(id) => {
            let blocked = known(shard, id)?;
            shard
                .ask(shard_of(viewer), deadline, |reply| Op::Unblock {
                    blocker: viewer,
                    blocked,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::Blocking { blocking: false },
            ))
        }
        Route::Mute(id) | Route::Unmute(id) => {
            let muted = known(shard, id)?;
            let on = matches!(route, Route::Mute(_));
            if on {
                if muted == viewer {
                    return Err(Fail::Core(CoreError::invalid(
                        "cannot_mute_self",
                        "you cannot mute yourself",
                    ))
                    .into());
                }
                visible_or_404(shard, muted, viewer, deadline, true).await?;
            }
            shard
                .ask(shard_of(viewer), deadline, |reply| Op::Mute {
                    muter: viewer,
                    muted,
                    on,
                    reply,
                })
                .await?;
            Ok(Reply::json(StatusCode::OK, &wire::Muting { muting: on }))
        }
        Route::Followers(id) | Route::Following(id) => {
            let user_id = known(shard, id)?;
            let followers = matches!(route, Route::Followers(_));
            visible_or_404(shard, user_id, viewer, deadline, false).await?;
            let page = page(req.uri().query())?;
            let limit = page.limit;
            let after = page.max_id;
            let ids = shard
                .ask(shard_of(user_id), deadline, |reply| Op::Relations {
                    user_id,
                    followers,
                    after,
                    limit,
                    reply,
                })
                .await?;
            let next = (ids.len() == limit)
                .then(|| ids.last().map(u64::to_string))
                .flatten();
            // Suspended users, and users the viewer blocks or is blocked by, are left out of
            // others' lists (the cursor still moves on). The viewer's blocks and the cards are
            // asked for together.
            let ids: Vec<u64> = ids
                .into_iter()
                .filter(|id| !shard.hidden_from(*id, viewer))
                .collect();
            let (blocked, items) = futures_lite::future::zip(
                shard.blocked_among(viewer, ids.clone(), deadline),
                brief_views(shard, &ids, deadline),
            )
            .await;
            let blocked = blocked?;
            let mut items = items?;
            items.retain(|b| b.id.parse().is_ok_and(|id: u64| !blocked.contains(&id)));
            Ok(id_list(req.uri().path(), limit, items, next))
        }
        Route::UserPosts(id) => {
            let author = known(shard, id)?;
            let page = page(req.uri().query())?;
            let (posts, scanned) = shard
                .ask(shard_of(author), deadline, |reply| Op::UserPosts {
                    author,
                    viewer,
                    page,
                    skip: 0,
                    reply,
                })
                .await?;
            let counts = counts_of(shard, posts.iter().map(|p| p.id), viewer, deadline).await?;
            post_list(
                shard,
                req.uri().path(),
                posts,
                &counts,
                page,
                scanned,
                deadline,
            )
            .await
        }
        Route::HomeTimeline => {
            let page = page(req.uri().query())?;
            let (posts, scanned) = shard
                .ask(shard_of(viewer), deadline, |reply| Op::Home {
                    reader: viewer,
                    page,
                    skip: 0,
                    reply,
                })
                .await?;
            let counts = counts_of(shard, posts.iter().map(|p| p.id), viewer, deadline).await?;
            post_list(
                shard,
                req.uri().path(),
                posts,
                &counts,
                page,
                scanned,
                deadline,
            )
            .await
        }
        Route::CreatePost => create_post(shard, viewer, req, deadline).await,
        Route::GetPost(id) => {
            let post_id = known(shard, id)?;
            let post = shard
                .ask(shard_of(post_id), deadline, |reply| Op::GetPost {
                    post_id,
                    viewer,
                    reply,
                })
                .await?;
            let post = post.ok_or_else(ApiError::not_found)?;
            post_reply(shard, StatusCode::OK, &post, viewer, deadline).await
        }
        Route::DeletePost(id) => {
            let post_id = known(shard, id)?;
            shard
                .ask(shard_of(post_id), deadline, |reply| Op::DeletePost {
                    post_id,
                    author: viewer,
                    reply,
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        Route::UpdateProfile => {
            let body: wire::UpdateProfileRequest = json_body(shard, req).await?;
            let display_name = body
                .display_name
                .as_deref()
                .map(DisplayName::parse)
                .transpose()?;
            let bio = body.bio.as_deref().map(profiles::parse_bio).transpose()?;
            let links = body
                .links
                .as_deref()
                .map(profiles::parse_links)
                .transpose()?;
            let avatar = match body.avatar_media_id {
                None => None,
                Some(None) => Some(None),
                Some(Some(raw)) => Some(Some(avatar_media(shard, viewer, &raw, deadline).await?)),
            };
            let edit = ProfileEdit {
                display_name,
                bio,
                links,
                avatar,
            };
            shard
                .ask(shard_of(viewer), deadline, |reply| Op::UpdateProfile {
                    user_id: viewer,
                    edit,
                    reply,
                })
                .await?;
            profile(shard, viewer, viewer, deadline).await
        }
        Route::GetPreferences | Route::UpdatePreferences => {
            let update = if route == Route::UpdatePreferences {
                let body: wire::UpdatePreferencesRequest = json_body(shard, req).await?;
                Some(PreferencesUpdate {
                    hide_replies: body.hide_replies,
                    muted_words: body
                        .muted_words
                        .as_deref()
                        .map(profiles::parse_muted_words)
                        .transpose()?,
                    default_visibility: body
                        .default_visibility
                        .as_deref()
                        .map(default_visibility)
                        .transpose()?,
                    language: body
                        .language
                        .as_deref()
                        .map(profiles::parse_language)
                        .transpose()?,
                })
            } else {
                None
            };
            let (prefs, feed) = shard
                .ask(shard_of(viewer), deadline, |reply| Op::Preferences {
                    user_id: viewer,
                    update,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::PreferencesEnvelope {
                    preferences: wire::PreferencesView {
                        default_visibility: prefs.default_visibility.as_str(),
                        language: prefs.language,
                        hide_replies: feed.hide_replies,
                        muted_words: feed.muted_words,
                    },
                },
            ))
        }
        Route::LikePost(id)
        | Route::UnlikePost(id)
        | Route::LikeComment(id)
        | Route::UnlikeComment(id) => {
            let id = known(shard, id)?;
            let comment = matches!(route, Route::LikeComment(_) | Route::UnlikeComment(_));
            let on = matches!(route, Route::LikePost(_) | Route::LikeComment(_));
            let likes = shard
                .ask(shard_of(id), deadline, |reply| Op::Like {
                    id,
                    user: viewer,
                    comment,
                    on,
                    reply,
                })
                .await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::Liked {
                    liked: on,
                    likes_count: likes,
                },
            ))
        }
        Route::CreateComment(id) => {
            let post_id = known(shard, id)?;
            let body: wire::CreateCommentRequest = json_body(shard, req).await?;
            let text = content::parse_comment_text(&body.text)?;
            let parent = match body.reply_to.as_deref() {
                None => None,
                Some(r) => Some(
                    r.parse::<u64>()
                        .ok()
                        .filter(|c| shard_of(*c) == shard_of(post_id))
                        .ok_or_else(ApiError::not_found)?,
                ),
            };
            let info = shard
                .ask(shard_of(post_id), deadline, |reply| Op::AddComment {
                    post_id,
                    author: viewer,
                    text,
                    parent,
                    reply,
                })
                .await?;
            let comment = comment_as_now(shard, info, deadline).await?;
            Ok(Reply::json(
                StatusCode::CREATED,
                &wire::CommentEnvelope { comment },
            ))
        }
        Route::ListComments(id) => {
            let post_id = known(shard, id)?;
            let page = page(req.uri().query())?;
            let (after, limit) = (page.max_id, page.limit);
            let infos = shard
                .ask(shard_of(post_id), deadline, |reply| Op::Comments {
                    post_id,
                    viewer,
                    after,
                    limit,
                    reply,
                })
                .await?;
            let next = (infos.len() == limit)
                .then(|| infos.last().map(|c| c.comment.id.to_string()))
                .flatten();
            // Comments of users the viewer blocks or is blocked by are left out (the cursor
            // still moves on). The viewer's blocks and the authors' cards are asked for
            // together.
            let authors: Vec<u64> = infos.iter().map(|c| c.comment.author_id).collect();
            let (blocked, cards) = futures_lite::future::zip(
                shard.blocked_among(viewer, authors.clone(), deadline),
                cards(shard, authors, deadline),
            )
            .await;
            let blocked = blocked?;
            let mut items: Vec<wire::CommentView> = infos
                .into_iter()
                .filter(|c| !blocked.contains(&c.comment.author_id))
                .map(comment_view)
                .collect();
            apply_cards(&cards?, &mut items, |v| &mut v.author);
            Ok(id_list(req.uri().path(), limit, items, next))
        }
        Route::EditComment(id) => {
            let id = known(shard, id)?;
            let body: wire::EditCommentRequest = json_body(shard, req).await?;
            let text = content::parse_comment_text(&body.text)?;
            let info = shard
                .ask(shard_of(id), deadline, |reply| Op::EditComment {
                    id,
                    author: viewer,
                    text,
                    reply,
                })
                .await?;
            let comment = comment_as_now(shard, info, deadline).await?;
            Ok(Reply::json(
                StatusCode::OK,
                &wire::CommentEnvelope { comment },
            ))
        }
        Route::DeleteComment(id) => {
            let id = known(shard, id)?;
            shard
                .ask(shard_of(id), deadline, |reply| Op::DeleteComment {
                    id,
                    user: viewer,
                    reply,
                })
                .await?;
            Ok(Reply::empty(StatusCode::NO_CONTENT))
        }
        _ => Err(ApiError::not_found()),
    }
}

/// A comment's view with its author as it is now (`as_now`).
async fn comment_as_now(
    shard: &Rc<Shard>,
    info: CommentInfo,
    deadline: Instant,
) -> Result<wire::CommentView> {
    let mut views = [comment_view(info)];
    as_now(shard, &mut views, |v| &mut v.author, deadline).await?;
    let [view] = views;
    Ok(view)
}

/// A comment's view with its author's names as stored (when it was written).
fn comment_view(info: CommentInfo) -> wire::CommentView {
    let c = info.comment;
    wire::CommentView {
        id: c.id.to_string(),
        post_id: c.post_id.to_string(),
        author: wire::UserBrief {
            id: c.author_id.to_string(),
            username: c.author_username,
            display_name: c.author_display_name,
            avatar: None,
        },
        text: c.text,
        reply_to: c.parent.map(|p| p.to_string()),
        depth: c.depth,
        created_at: rfc3339(c.created_ms),
        edited_at: c.edited_ms.map(rfc3339),
        likes_count: info.likes,
        replies_count: info.replies,
        liked: info.liked,
    }
}

/// An id that could belong to this server (its shard exists), or 404.
pub(crate) fn known(shard: &Shard, id: u64) -> Result<u64> {
    if shard_of(id) < shard.shards {
        Ok(id)
    } else {
        Err(ApiError::not_found())
    }
}

async fn visible_or_404(
    shard: &Rc<Shard>,
    user_id: u64,
    viewer: u64,
    deadline: Instant,
    allow_blocked: bool,
) -> Result<()> {
    if allow_blocked {
        // Blocking someone who blocked you is allowed; only existence matters.
        let exists = shard
            .ask(shard_of(user_id), deadline, |reply| Op::UserExists {
                user_id,
                reply,
            })
            .await?;
        return if exists {
            Ok(())
        } else {
            Err(ApiError::not_found())
        };
    }
    let visible = shard
        .ask(shard_of(user_id), deadline, |reply| Op::Visible {
            user_id,
            viewer,
            reply,
        })
        .await?;
    if visible {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

async fn profile(shard: &Rc<Shard>, user_id: u64, viewer: u64, deadline: Instant) -> Result<Reply> {
    let profile = shard.ask(shard_of(user_id), deadline, |reply| Op::Profile {
        user_id,
        viewer,
        reply,
    });
    // The viewer's side (its follow and mute) is read where it is written, on its own shard,
    // at the same time.
    let (profile, side) = match user_id == viewer {
        true => (profile.await?, None),
        false => {
            let side = shard.ask(shard_of(viewer), deadline, |reply| Op::Relationship {
                viewer,
                other: user_id,
                reply,
            });
            let (profile, side) = futures_lite::future::zip(profile, side).await;
            (profile?, Some(side?))
        }
    };
    let p = profile.ok_or_else(ApiError::not_found)?;
    let avatar = crate::media_views::avatar(shard, p.avatar, deadline).await?;
    let relationship = side.map(|side| wire::Relationship {
        following: side.following,
        requested: p.requested_by_viewer,
        followed_by: p.follows_viewer,
        muting: side.muting,
    });
    Ok(Reply::json(
        StatusCode::OK,
        &wire::ProfileEnvelope {
            user: wire::ProfileView {
                id: p.user.id.to_string(),
                username: p.user.username.clone(),
                display_name: p.user.display_name.clone(),
                bio: p.profile.bio.clone(),
                links: p.profile.links.clone(),
                created_at: rfc3339(p.user.created_ms),
                followers_count: p.followers,
                following_count: p.following,
                posts_count: p.posts,
                private: p.private,
                avatar,
            },
            relationship,
        },
    ))
}

/// A page of one of the viewer's own lists (`OwnList`), each entry made by `view` from the
/// user's brief and since when (ms). Suspended users are left out (the cursor still moves on).
async fn own_list<T: serde::Serialize>(
    shard: &Rc<Shard>,
    req: &Request<Incoming>,
    viewer: u64,
    list: OwnList,
    deadline: Instant,
    view: impl Fn(wire::UserBrief, u64) -> T,
) -> Result<Reply> {
    let page = page(req.uri().query())?;
    let limit = page.limit;
    let after = page.max_id;
    let rows = shard
        .ask(shard_of(viewer), deadline, |reply| Op::OwnList {
            list,
            user_id: viewer,
            after,
            limit,
            reply,
        })
        .await?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|(id, _)| id.to_string()))
        .flatten();
    let ids: Vec<u64> = rows
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !shard.hidden_from(*id, viewer))
        .collect();
    let since: HashMap<u64, u64> = rows.into_iter().collect();
    let mut cards = cards(shard, ids.iter().copied(), deadline).await?;
    let items: Vec<T> = ids
        .iter()
        .filter_map(|id| {
            let at = since.get(id).copied().unwrap_or(0);
            Some(view(cards.remove(id)?, at))
        })
        .collect();
    Ok(id_list(req.uri().path(), limit, items, next))
}

/// A page of a list walked up by id (users by id, comments oldest first): `next` (the last
/// id of a full page) is both the body's cursor and the `Link` header's `rel="next"` (as
/// `max_id`).
fn id_list<T: serde::Serialize>(
    path: &str,
    limit: usize,
    items: Vec<T>,
    next: Option<String>,
) -> Reply {
    let link = next
        .as_ref()
        .map(|n| format!("<{path}?max_id={n}&limit={limit}>; rel=\"next\""));
    let mut reply = Reply::json(StatusCode::OK, &wire::List { items, next });
    reply.link = link;
    reply
}

/// `limit`, `max_id`, `min_id` from a query string.
pub(crate) fn page(query: Option<&str>) -> Result<Page> {
    let q = query.unwrap_or("");
    let limit = match query_param(q, "limit") {
        None => PAGE_LIMIT_DEFAULT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=PAGE_LIMIT_MAX).contains(&n) => n,
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_limit",
                    format!("limit is a number from 1 to {PAGE_LIMIT_MAX}"),
                ))
            }
        },
    };
    let cursor = |name: &str| -> Result<Option<u64>> {
        match query_param(q, name) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_cursor",
                    format!("{name} is an id"),
                )
            }),
        }
    };
    Ok(Page {
        max_id: cursor("max_id")?,
        min_id: cursor("min_id")?,
        limit,
    })
}

/// A page of posts with its `next` cursor and `Link` header.
async fn post_list(
    shard: &Rc<Shard>,
    path: &str,
    posts: Vec<Arc<SharedPost>>,
    counts: &HashMap<u64, Counts>,
    page: Page,
    scanned_to: Option<u64>,
    deadline: Instant,
) -> Result<Reply> {
    // A full page may have more after it; a short page only when the feed scan stopped at
    // its cap (`scanned_to`), in which case the next page continues from there.
    let next_id = if posts.len() >= page.limit {
        posts.last().map(|p| p.id)
    } else {
        scanned_to
    };
    let mut links = Vec::new();
    if let Some(n) = next_id {
        links.push(format!(
            "<{path}?max_id={n}&limit={}>; rel=\"next\"",
            page.limit
        ));
    }
    if let Some(first) = posts.first() {
        links.push(format!(
            "<{path}?min_id={}&limit={}>; rel=\"prev\"",
            first.id, page.limit
        ));
    }
    let mut items: Vec<wire::PostView> = posts
        .iter()
        .map(|p| post_view(p, counts.get(&p.id).copied().unwrap_or_default()))
        .collect();
    as_now(shard, &mut items, |v| &mut v.author, deadline).await?;
    crate::media_views::fill_posts(shard, &mut items, deadline).await?;
    let mut reply = Reply::json(
        StatusCode::OK,
        &wire::List {
            items,
            next: next_id.map(|n| n.to_string()),
        },
    );
    if !links.is_empty() {
        reply.link = Some(links.join(", "));
    }
    Ok(reply)
}

/// (likes, comments, liked by the viewer) of each post, asking each owning shard once.
async fn counts_of(
    shard: &Rc<Shard>,
    posts: impl IntoIterator<Item = u64>,
    viewer: u64,
    deadline: Instant,
) -> Result<HashMap<u64, Counts>> {
    let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for id in posts {
        by_shard.entry(shard_of(id)).or_default().push(id);
    }
    let mut out = HashMap::with_capacity(by_shard.values().map(Vec::len).sum());
    let asks = by_shard
        .into_iter()
        .map(|(k, ids)| shard.ask(k, deadline, |reply| Op::PostCounts { ids, viewer, reply }));
    for answer in crate::shard::join_all(asks).await {
        for stats in answer? {
            out.insert(stats.id, stats);
        }
    }
    Ok(out)
}

pub(crate) type Counts = PostStats;

pub(crate) fn post_view(p: &Post, counts: Counts) -> wire::PostView {
    wire::PostView {
        id: p.id.to_string(),
        author: wire::UserBrief {
            id: p.author_id.to_string(),
            username: p.author_username.clone(),
            display_name: p.author_display_name.clone(),
            avatar: None,
        },
        text: p.text.clone(),
        visibility: p.visibility.as_str(),
        reply_to: p.reply_to.map(|r| r.to_string()),
        mentions: p
            .mentions
            .iter()
            .map(|m| wire::MentionView {
                id: m.user_id.to_string(),
                username: m.username.clone(),
            })
            .collect(),
        hashtags: p.hashtags.clone(),
        urls: p
            .urls
            .iter()
            .map(|l| wire::LinkView {
                url: l.url.clone(),
                short: l.short.clone(),
            })
            .collect(),
        media_ids: p.media.iter().map(|(id, _)| id.clone()).collect(),
        media: Vec::new(),
        created_at: rfc3339(p.created_ms),
        edited_at: p.edited_ms.map(rfc3339),
        likes_count: counts.likes,
        comments_count: counts.comments,
        liked: counts.liked,
        views_count: counts.views,
    }
}

/// Media attached to a post or a message: at most `MEDIA_ATTACHED_MAX` distinct ids of the
/// caller's own uploads that have not failed (pending ones are fine: they become ready
/// later). Anything else is 422 `invalid_media`. Returns (id, "image" | "video").
pub(crate) async fn attachments(
    shard: &Rc<Shard>,
    owner: u64,
    ids: &[String],
    deadline: Instant,
) -> Result<Vec<(u64, &'static str)>> {
    let invalid = |m: &str| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_media", m);
    if ids.len() > MEDIA_ATTACHED_MAX {
        return Err(invalid("at most 4 media per post or message"));
    }
    let mut out: Vec<(u64, &'static str)> = Vec::with_capacity(ids.len());
    for raw in ids {
        let id = raw
            .parse::<u64>()
            .ok()
            .filter(|id| shard_of(*id) < shard.shards)
            .ok_or_else(|| invalid("media ids are ids of your uploads"))?;
        if out.iter().any(|(i, _)| *i == id) {
            continue;
        }
        let found = shard
            .ask(shard_of(id), deadline, |reply| Op::MediaGet { id, reply })
            .await?;
        match found {
            Some(v)
                if v.media.owner == owner
                    && !matches!(v.media.state, nova_core::media::MediaState::Failed(_)) =>
            {
                out.push((id, v.media.kind.as_str()));
            }
            _ => {
                return Err(invalid(
                    "media ids are ids of your uploads that have not failed",
                ))
            }
        }
    }
    Ok(out)
}

/// A default visibility: `public` or `followers` (a post for its mentioned users only is
/// chosen post by post).
fn default_visibility(raw: &str) -> std::result::Result<Visibility, nova_core::Invalid> {
    match Visibility::parse(raw)? {
        Visibility::Mentioned => Err(nova_core::Invalid::new(
            "invalid_visibility",
            "default_visibility is public or followers",
        )),
        v => Ok(v),
    }
}

/// The id of an avatar: one of `owner`'s images that has not failed.
async fn avatar_media(shard: &Rc<Shard>, owner: u64, raw: &str, deadline: Instant) -> Result<u64> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_avatar",
            "avatar_media_id is the id of one of your images that has not failed",
        )
    };
    let id = raw
        .parse::<u64>()
        .ok()
        .filter(|id| shard_of(*id) < shard.shards)
        .ok_or_else(invalid)?;
    let found = shard
        .ask(shard_of(id), deadline, |reply| Op::MediaGet { id, reply })
        .await?;
    match found {
        Some(v)
            if v.media.owner == owner
                && v.media.kind == nova_core::media::MediaKind::Image
                && !matches!(v.media.state, nova_core::media::MediaState::Failed(_)) =>
        {
            Ok(id)
        }
        _ => Err(invalid()),
    }
}

/// Media per post or message, at most.
pub(crate) const MEDIA_ATTACHED_MAX: usize = 4;

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or("");
    let ok = !key.is_empty()
        && key.len() <= content::IDEMPOTENCY_KEY_BYTES_MAX
        && key.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "Idempotency-Key is 1 to 128 visible ASCII characters",
        ));
    }
    Ok(Some(key.to_string()))
}

async fn create_post(
    shard: &Rc<Shard>,
    author: u64,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let key = idempotency_key(req.headers())?;
    let body: wire::CreatePostRequest = json_body(shard, req).await?;
    let text = content::parse_text(&body.text)?;
    let visibility = body
        .visibility
        .as_deref()
        .map(Visibility::parse)
        .transpose()?;
    let reply_to = match body.reply_to.as_deref() {
        None => None,
        Some(r) => Some(
            r.parse::<u64>()
                .ok()
                .filter(|id| shard_of(*id) < shard.shards)
                .ok_or_else(ApiError::not_found)?,
        ),
    };
    // Media of a followers-only (or mentioned-only) post, or of any post of a private
    // account, become private before the post exists.
    let restricted = visibility.is_some_and(|v| v != Visibility::Public);
    let private_account = async {
        if body.media_ids.is_empty() || restricted {
            return Ok(false);
        }
        let (settings, _) = shard
            .ask(shard_of(author), deadline, |reply| Op::Settings {
                user_id: author,
                update: None,
                reply,
            })
            .await?;
        Ok::<_, Fail>(settings.private)
    };
    let (attached, private_account) = futures_lite::future::zip(
        attachments(shard, author, &body.media_ids, deadline),
        private_account,
    )
    .await;
    let attached = attached?;
    let attached_ids: Vec<u64> = attached.iter().map(|(id, _)| *id).collect();
    let mut made_private = false;
    if (restricted || private_account?) && !attached_ids.is_empty() {
        crate::media_views::make_private(shard, author, &attached_ids, deadline).await?;
        made_private = true;
    }
    let media = attached
        .into_iter()
        .map(|(id, kind)| (id.to_string(), kind.to_string()))
        .collect();
    let new = NewPost {
        author,
        text,
        visibility,
        reply_to,
        idempotency_key: key,
        post_type: 0,
        media,
        author_external_id: None,
    };
    let post = shard.compose_on(new, deadline).await?;
    // The account's default visibility (or an idempotent repeat's) decided it.
    if post.visibility != Visibility::Public && !made_private && !attached_ids.is_empty() {
        crate::media_views::make_private(shard, author, &attached_ids, deadline).await?;
    }
    // An idempotent repeat returns the first post, which may have gathered likes since.
    post_reply(shard, StatusCode::CREATED, &post, author, deadline).await
}

/// How long an unfollow waits between looks for an approval on its way (`unfollow`).
const APPROVAL_LOOK_MS: u64 = 5;

/// Ends `follower`'s follow of `followee`, or its request to follow. The request goes first,
/// on the followee's shard, so an approval after it finds nothing to approve. One before it
/// made the follower a follower there, and its follow reaches the follower's shard through
/// the outbox: the unfollow waits for it there (or for the follower row to go some other
/// way), within the deadline.
async fn unfollow(
    shard: &Rc<Shard>,
    follower: u64,
    followee: u64,
    deadline: Instant,
) -> Result<()> {
    let home = shard_of(followee);
    let cancel = |reply| Op::CancelFollowRequest {
        followee,
        requester: follower,
        reply,
    };
    let mut follower_there = shard.ask(home, deadline, cancel).await?;
    loop {
        let ended = shard
            .ask(shard_of(follower), deadline, |reply| Op::Unfollow {
                follower,
                followee,
                reply,
            })
            .await?;
        if ended || !follower_there {
            return Ok(());
        }
        glommio::timer::sleep(Duration::from_millis(APPROVAL_LOOK_MS)).await;
        if Instant::now() >= deadline {
            return Err(Fail::Timeout.into());
        }
        follower_there = shard.ask(home, deadline, cancel).await?;
    }
}

/// One post as `viewer` sees it: counts, and its media resolved.
async fn post_reply(
    shard: &Rc<Shard>,
    status: StatusCode,
    post: &Post,
    viewer: u64,
    deadline: Instant,
) -> Result<Reply> {
    let counts = counts_of(shard, [post.id], viewer, deadline).await?;
    let counts = counts.get(&post.id).copied().unwrap_or_default();
    let mut views = [post_view(post, counts)];
    as_now(shard, &mut views, |v| &mut v.author, deadline).await?;
    crate::media_views::fill_posts(shard, &mut views, deadline).await?;
    let [post] = views;
    Ok(Reply::json(status, &wire::PostEnvelope { post }))
}
