//! DeathStarBench socialNetwork compatibility: its `/wrk2-api/*` routes, form bodies and
//! answers, so that its own load generator and graph loader run against Nova unchanged.
//!
//! These routes take no token (the benchmark sends none), so they let anyone act as any user:
//! they exist only when `dsb_compat` is switched on, for benchmark deployments.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use nova_core::content::{self, Post, Visibility};
use nova_core::identity::{DisplayName, Email, Password, Username};
use nova_core::{shard_for_key, shard_of};
use nova_protocol::{self as wire, Route};

use crate::api::{percent_decode, Reply, Result};
use crate::error::ApiError;
use crate::mesh::{NewPost, Op, Page};
use crate::shard::Shard;
use crate::social::DSB_NAMESPACE;

/// Posts one timeline read may return.
const TIMELINE_STOP_MAX: i64 = 1000;
/// Media items one compose may carry.
const MEDIA_MAX: usize = 20;

fn incomplete() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "incomplete_arguments",
        "Incomplete arguments",
    )
}

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    if !shard.cfg.dsb_compat {
        return Err(ApiError::not_found());
    }
    match route {
        Route::DsbUserTimeline | Route::DsbHomeTimeline => {
            let q = req.uri().query().unwrap_or("").to_string();
            let form = Form::parse(&q);
            timeline(shard, route, &form, deadline).await
        }
        _ => {
            let max = shard.cfg.body_bytes_max;
            let body = http_body_util::Limited::new(req.into_body(), max)
                .collect()
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the body is too large",
                    )
                })?
                .to_bytes();
            let text = String::from_utf8_lossy(&body);
            let form = Form::parse(&text);
            match route {
                Route::DsbRegister => register(shard, &form, peer, deadline).await,
                Route::DsbFollow => follow(shard, &form, true, deadline).await,
                Route::DsbUnfollow => follow(shard, &form, false, deadline).await,
                _ => compose(shard, &form, deadline).await,
            }
        }
    }
}

/// A form body or query string, decoded leniently: the benchmark's client sends values
/// without percent-encoding, so only `&` and `=` delimit.
struct Form(Vec<(String, String)>);

impl Form {
    fn parse(raw: &str) -> Form {
        Form(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Result<&str> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(incomplete)
    }

    fn need_u64(&self, name: &str) -> Result<u64> {
        self.need(name)?.trim().parse().map_err(|_| incomplete())
    }
}

async fn register(
    shard: &Rc<Shard>,
    form: &Form,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let (first, last) = (form.need("first_name")?, form.need("last_name")?);
    let (username, password) = (form.need("username")?, form.need("password")?);
    let ext = form.need_u64("user_id")?;
    let username = Username::parse(username)?;
    let email = Email::parse(&format!("{}@dsb.invalid", username.key()))?;
    let password = Password::parse(password)?;
    let display_name = DisplayName::parse(&format!("{first} {last}"))
        .or_else(|_| DisplayName::parse(username.as_str()))?;
    // Reserve the user_id before making an account (one step, so of two registrations racing
    // for it one is refused), so a refusal leaves nothing behind; a registration that fails
    // after it gives it back.
    let pending = nova_core::identity::EXTERNAL_PENDING;
    shard
        .ask(ext_shard(shard, ext), deadline, |reply| Op::MapExternalId {
            ext,
            user_id: pending,
            reply,
        })
        .await?;
    let who = (username, email, display_name);
    let registered = crate::api::create_account(shard, who, &password, peer, deadline).await;
    let user = match registered {
        Ok(user) => user,
        Err(e) => {
            let released = shard
                .ask(ext_shard(shard, ext), deadline, |reply| {
                    Op::ReleaseExternalId { ext, reply }
                })
                .await;
            if let Err(r) = released {
                tracing::warn!(ext, error = %r, "a DSB user_id stays reserved");
            }
            return Err(e.into());
        }
    };
    let user_id = user.id;
    shard
        .ask(ext_shard(shard, ext), deadline, |reply| Op::MapExternalId {
            ext,
            user_id,
            reply,
        })
        .await?;
    shard
        .ask(shard_of(user_id), deadline, |reply| Op::SetExternalOf {
            user_id,
            ext,
            reply,
        })
        .await?;
    Ok(Reply::text(StatusCode::OK, "Success!"))
}

fn ext_shard(shard: &Shard, ext: u64) -> usize {
    shard_for_key(&format!("{DSB_NAMESPACE}:{ext}"), shard.shards)
}

/// Our user id for the benchmark's user id (cached: the mapping never changes).
async fn by_external(shard: &Rc<Shard>, ext: u64, deadline: Instant) -> Result<u64> {
    if let Some(id) = shard.ext_ids.borrow().get(&ext) {
        return Ok(*id);
    }
    let found = shard
        .ask(ext_shard(shard, ext), deadline, |reply| Op::ExternalId {
            ext,
            reply,
        })
        .await?;
    let id = found.ok_or_else(ApiError::not_found)?;
    shard.ext_ids.borrow_mut().insert(ext, id);
    Ok(id)
}

/// Our user id for a username (cached: usernames never change owner).
async fn by_name(shard: &Rc<Shard>, name: &str, deadline: Instant) -> Result<u64> {
    let key = name.trim().to_ascii_lowercase();
    let named = shard.user_named(key, deadline).await?;
    Ok(named.ok_or_else(ApiError::not_found)?.id)
}

/// A suspended user acts here no more than through `/v1` (where its token is refused).
fn acting(shard: &Shard, user: u64) -> Result<()> {
    match shard.is_suspended(user) {
        true => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_suspended",
            "this account is suspended",
        )),
        false => Ok(()),
    }
}

async fn follow(shard: &Rc<Shard>, form: &Form, on: bool, deadline: Instant) -> Result<Reply> {
    let (follower, followee) = match (form.get("user_id"), form.get("followee_id")) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => {
            let a = a.trim().parse().map_err(|_| incomplete())?;
            let b = b.trim().parse().map_err(|_| incomplete())?;
            (
                by_external(shard, a, deadline).await?,
                by_external(shard, b, deadline).await?,
            )
        }
        _ => {
            let a = form.need("user_name")?;
            let b = form.need("followee_name")?;
            (
                by_name(shard, a, deadline).await?,
                by_name(shard, b, deadline).await?,
            )
        }
    };
    acting(shard, follower)?;
    let home = shard_of(follower);
    if on {
        shard
            .ask(home, deadline, |reply| Op::Follow {
                follower,
                followee,
                reply,
            })
            .await?;
    } else {
        shard
            .ask(home, deadline, |reply| Op::Unfollow {
                follower,
                followee,
                reply,
            })
            .await?;
    }
    Ok(Reply::text(StatusCode::OK, "Success!"))
}

/// A JSON array of strings or numbers (`media_ids`, `media_types`), kept as text. The
/// benchmark's values never contain commas or quotes, so a flat split is exact for it.
fn string_array(raw: Option<&str>) -> Result<Vec<String>> {
    let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(Vec::new());
    };
    let inner = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(incomplete)?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .take(MEDIA_MAX)
        .collect())
}

async fn compose(shard: &Rc<Shard>, form: &Form, deadline: Instant) -> Result<Reply> {
    let username = form.need("username")?;
    let ext = form.need_u64("user_id")?;
    let text = form.need("text")?;
    let post_type: u32 = form
        .need("post_type")?
        .trim()
        .parse()
        .map_err(|_| incomplete())?;
    let ids = string_array(form.get("media_ids"))?;
    let types = string_array(form.get("media_types"))?;
    let media = ids
        .into_iter()
        .zip(types.into_iter().chain(std::iter::repeat(String::new())))
        .collect();
    let author = by_name(shard, username, deadline).await?;
    acting(shard, author)?;
    let new = NewPost {
        author,
        text: content::parse_text(text)?,
        visibility: Some(Visibility::Public),
        reply_to: None,
        idempotency_key: None,
        post_type,
        media,
        author_external_id: Some(ext),
    };
    shard.compose_on(new, deadline).await?;
    Ok(Reply::text(StatusCode::OK, "Successfully upload post"))
}

async fn timeline(
    shard: &Rc<Shard>,
    route: Route,
    form: &Form,
    deadline: Instant,
) -> Result<Reply> {
    let ext = form.need_u64("user_id")?;
    let start: i64 = form
        .need("start")?
        .trim()
        .parse()
        .map_err(|_| incomplete())?;
    let stop: i64 = form
        .need("stop")?
        .trim()
        .parse()
        .map_err(|_| incomplete())?;
    let user = by_external(shard, ext, deadline).await?;
    if stop <= start || start < 0 {
        return Ok(Reply::json(StatusCode::OK, &Vec::<wire::DsbPost>::new()));
    }
    let stop = stop.min(TIMELINE_STOP_MAX) as usize;
    let start = (start as usize).min(stop);
    if start == stop {
        return Ok(Reply::json(StatusCode::OK, &Vec::<wire::DsbPost>::new()));
    }
    let page = Page {
        max_id: None,
        min_id: None,
        limit: stop - start,
    };
    let posts = if route == Route::DsbHomeTimeline {
        shard
            .ask(shard_of(user), deadline, |reply| Op::Home {
                reader: user,
                page,
                skip: start,
                reply,
            })
            .await?
            .0
    } else {
        // The benchmark reads timelines without a viewer: public posts only.
        shard
            .ask(shard_of(user), deadline, |reply| Op::UserPosts {
                author: user,
                viewer: 0,
                page,
                skip: start,
                reply,
            })
            .await?
            .0
    };
    // Each decoded post is rendered once (`SharedPost::rendered`), then pages are joined
    // from that.
    let mut body = Vec::with_capacity(2 + posts.len() * 1024);
    body.push(b'[');
    for (i, post) in posts.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        let json = post.rendered(|p| wire::to_json(&dsb_post(p)));
        body.extend_from_slice(&json);
    }
    body.push(b']');
    Ok(Reply::json_bytes(StatusCode::OK, body.into()))
}

fn dsb_post(p: &Post) -> wire::DsbPost<'_> {
    wire::DsbPost {
        post_id: p.id.to_string(),
        creator: wire::DsbCreator {
            user_id: p.author_external_id.unwrap_or(p.author_id).to_string(),
            username: &p.author_username,
        },
        req_id: p.id.to_string(),
        text: &p.text,
        user_mentions: p
            .mentions
            .iter()
            .map(|m| wire::DsbCreator {
                user_id: m.external_id.unwrap_or(m.user_id).to_string(),
                username: &m.username,
            })
            .collect(),
        media: p
            .media
            .iter()
            .map(|(id, kind)| wire::DsbMedia {
                media_id: id,
                media_type: kind,
            })
            .collect(),
        urls: p
            .urls
            .iter()
            .map(|l| wire::DsbUrl {
                shortened_url: &l.short,
                expanded_url: &l.url,
            })
            .collect(),
        timestamp: p.created_ms.to_string(),
        post_type: p.post_type,
    }
}
