//! Search routes: `GET /v1/search?q=&type=posts|accounts|hashtags&limit=&cursor=` (and the
//! same as a JSON body, `POST /v1/search`), `GET /v1/tags/{tag}`. Each one checks the query
//! on the connection's shard, asks every shard (`crate::search::gather`) and merges.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use http::{Request, StatusCode};
use hyper::body::Incoming;

use nova_core::search::{self, AccountRank, PostQuery, Rank};
use nova_core::{shard_of, Invalid};
use nova_protocol::{self as wire, Route};

use crate::api::{authenticate, json_body, Reply, Result};
use crate::api_social::{post_view, Counts, PAGE_LIMIT_DEFAULT};
use crate::error::ApiError;
use crate::mesh::Op;
use crate::search::{gather, merge_posts};
use crate::shard::Shard;

/// Longest query string of `GET /v1/search` (bytes, still percent-encoded).
const QUERY_STRING_BYTES_MAX: usize = 4_096;
/// Longest cursor (bytes).
const CURSOR_BYTES_MAX: usize = 128;
/// How far hashtag completion pages go (an offset).
const TAG_OFFSET_MAX: usize = 1_000;

/// What to search, as the client sent it (query string or JSON body).
struct Ask {
    q: String,
    kind: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let searcher = authenticate(shard, req.headers())?.user_id;
    match route {
        Route::Search => {
            let params = Params::parse(req.uri().query().unwrap_or(""))?;
            let ask = Ask {
                q: params.get("q").ok_or_else(|| bad_query("q is required"))?,
                kind: params.get("type"),
                limit: params.get("limit"),
                cursor: params.get("cursor"),
            };
            search(shard, searcher, ask, deadline).await
        }
        Route::SearchBody => {
            let body: wire::SearchRequest = json_body(shard, req).await?;
            let ask = Ask {
                q: body.q,
                kind: body.kind,
                limit: body.limit.map(|l| l.to_string()),
                cursor: body.cursor,
            };
            search(shard, searcher, ask, deadline).await
        }
        Route::TagPosts => {
            let raw = req.uri().path().trim_start_matches("/v1/tags/");
            let tag = strict_decode(raw)?;
            let params = Params::parse(req.uri().query().unwrap_or(""))?;
            let limit = limit(params.get("limit").as_deref())?;
            let after = post_cursor(params.get("cursor").as_deref())?;
            let tag = search::parse_tag_query(&tag).map_err(invalid)?;
            let Some(tag) = tag else {
                return Ok(page(Vec::<wire::PostView>::new(), None, false, None));
            };
            let query = PostQuery {
                tags: vec![tag],
                ..PostQuery::default()
            };
            let link_base = format!("/v1/tags/{}?", encode(raw));
            posts(shard, searcher, query, after, limit, &link_base, deadline).await
        }
        _ => Err(ApiError::not_found()),
    }
}

async fn search(shard: &Rc<Shard>, searcher: u64, ask: Ask, deadline: Instant) -> Result<Reply> {
    let limit = limit(ask.limit.as_deref())?;
    let kind = ask.kind.as_deref().unwrap_or("posts");
    let link_base = format!("/v1/search?q={}&type={kind}&", encode(&ask.q));
    match kind {
        "posts" => {
            let after = post_cursor(ask.cursor.as_deref())?;
            let parsed = search::parse_post_query(&ask.q).map_err(invalid)?;
            if parsed.is_empty() {
                return Ok(page(Vec::<wire::PostView>::new(), None, false, None));
            }
            let author = match parsed.from {
                None => None,
                Some(name) => {
                    match shard.user_named(name, deadline).await? {
                        Some(u) => Some(u.id),
                        // Nobody by that name wrote anything.
                        None => return Ok(page(Vec::<wire::PostView>::new(), None, false, None)),
                    }
                }
            };
            let query = PostQuery {
                words: parsed.words,
                tags: parsed.tags,
                author,
            };
            posts(shard, searcher, query, after, limit, &link_base, deadline).await
        }
        "accounts" => {
            let after = match ask.cursor.as_deref() {
                None => None,
                Some(c) => Some(
                    AccountRank::parse(c)
                        .filter(|_| c.len() <= CURSOR_BYTES_MAX)
                        .ok_or_else(bad_cursor)?,
                ),
            };
            let words = search::parse_account_query(&ask.q).map_err(invalid)?;
            if words.is_empty() {
                return Ok(page(Vec::<wire::UserBrief>::new(), None, false, None));
            }
            let gathered = {
                let here = after.clone();
                let local = || shard.search_accounts_here(&words, searcher, here, limit);
                gather(shard, deadline, local, |reply| Op::SearchAccounts {
                    words: words.clone(),
                    searcher,
                    after: after.clone(),
                    limit,
                    reply,
                })
                .await?
            };
            let mut all: Vec<_> = gathered.answers.into_iter().flatten().collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all.truncate(limit);
            let next = (all.len() == limit)
                .then(|| all.last().map(|(r, _)| r.render()))
                .flatten();
            let mut avatars = crate::media_views::avatars(
                shard,
                all.iter().filter_map(|(_, b)| b.avatar),
                deadline,
            )
            .await?;
            let items: Vec<wire::UserBrief> = all
                .into_iter()
                .map(|(_, b)| wire::UserBrief {
                    id: b.id.to_string(),
                    username: b.username,
                    display_name: b.display_name,
                    avatar: b.avatar.and_then(|m| avatars.remove(&m)),
                })
                .collect();
            let link = next.as_ref().map(|n| link(&link_base, limit, n));
            Ok(page(items, next, gathered.partial, link))
        }
        "hashtags" => {
            let offset = match ask.cursor.as_deref() {
                None => 0,
                Some(c) => c
                    .parse::<usize>()
                    .ok()
                    .filter(|o| *o <= TAG_OFFSET_MAX)
                    .ok_or_else(bad_cursor)?,
            };
            let Some(prefix) = search::parse_tag_query(&ask.q).map_err(invalid)? else {
                return Ok(page(Vec::<wire::TagView>::new(), None, false, None));
            };
            let gathered = {
                let p = prefix.clone();
                let local = || shard.read(|r| search::complete_tags(r, &p));
                gather(shard, deadline, local, |reply| Op::SearchTags {
                    prefix: prefix.clone(),
                    reply,
                })
                .await?
            };
            let mut counts: HashMap<String, u64> = HashMap::new();
            for (tag, n) in gathered.answers.into_iter().flatten() {
                *counts.entry(tag).or_default() += n;
            }
            let mut tags: Vec<(String, u64)> = counts.into_iter().collect();
            // The tag itself first, then the most used, then by name.
            tags.sort_by(|a, b| {
                let exact = |t: &str| search::fold(t) != prefix;
                exact(&a.0)
                    .cmp(&exact(&b.0))
                    .then(b.1.cmp(&a.1))
                    .then(a.0.cmp(&b.0))
            });
            let more = tags.len() > offset + limit && offset + limit <= TAG_OFFSET_MAX;
            let items: Vec<wire::TagView> = tags
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(|(name, count)| wire::TagView { name, count })
                .collect();
            let next = more.then(|| (offset + limit).to_string());
            let link = next.as_ref().map(|n| link(&link_base, limit, n));
            Ok(page(items, next, gathered.partial, link))
        }
        _ => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_type",
            "type is posts, accounts or hashtags",
        )),
    }
}

/// Post search over every shard; the searcher's mutes (on its own shard) go along.
async fn posts(
    shard: &Rc<Shard>,
    searcher: u64,
    query: PostQuery,
    after: Option<Rank>,
    limit: usize,
    link_base: &str,
    deadline: Instant,
) -> Result<Reply> {
    let mutes = shard
        .ask(shard_of(searcher), deadline, |reply| Op::SearchMutes {
            user_id: searcher,
            reply,
        })
        .await?;
    let gathered = {
        let local = || shard.search_posts_here(&query, searcher, &mutes, after, limit);
        gather(shard, deadline, local, |reply| Op::SearchPosts {
            query: query.clone(),
            searcher,
            mutes: mutes.clone(),
            after,
            limit,
            reply,
        })
        .await?
    };
    let (hits, next) = merge_posts(gathered.answers, limit);
    let mut items: Vec<wire::PostView> = hits
        .iter()
        .map(|h| {
            post_view(
                &h.post,
                Counts {
                    id: h.post.id,
                    likes: h.likes,
                    comments: h.comments,
                    views: h.views,
                    liked: h.liked,
                },
            )
        })
        .collect();
    crate::briefs::as_now(shard, &mut items, |v| &mut v.author, deadline).await?;
    crate::media_views::fill_posts(shard, &mut items, deadline).await?;
    let next = next.map(|r| r.render());
    let link = next.as_ref().map(|n| link(link_base, limit, n));
    Ok(page(items, next, gathered.partial, link))
}

fn page<T: serde::Serialize>(
    items: Vec<T>,
    next: Option<String>,
    partial: bool,
    link: Option<String>,
) -> Reply {
    let mut reply = Reply::json(
        StatusCode::OK,
        &wire::SearchPage {
            items,
            next,
            partial,
        },
    );
    reply.link = link;
    reply
}

fn link(base: &str, limit: usize, next: &str) -> String {
    format!(
        "<{base}limit={limit}&cursor={}>; rel=\"next\"",
        encode(next)
    )
}

fn limit(raw: Option<&str>) -> Result<usize> {
    match raw {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=search::RESULTS_MAX).contains(&n) => Ok(n),
            _ => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_limit",
                format!("limit is a number from 1 to {}", search::RESULTS_MAX),
            )),
        },
    }
}

fn post_cursor(raw: Option<&str>) -> Result<Option<Rank>> {
    match raw {
        None => Ok(None),
        Some(c) => Rank::parse(c).map(Some).ok_or_else(bad_cursor),
    }
}

fn bad_cursor() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
        "cursor is the next value of an earlier page",
    )
}

fn bad_query(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

/// A query the rules refuse is a bad request (400), not a semantic error.
fn invalid(v: Invalid) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, v.code, v.message)
}

/// Query-string parameters, decoded strictly: a bad escape or bytes that are not UTF-8
/// (a lone surrogate, for one) are a 400, never replaced or guessed.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: &str) -> Result<Params> {
        if raw.len() > QUERY_STRING_BYTES_MAX {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "query_too_long",
                format!("the query string is longer than {QUERY_STRING_BYTES_MAX} bytes"),
            ));
        }
        let mut out = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.push((strict_decode(k)?, strict_decode(v)?));
        }
        Ok(Params(out))
    }

    /// The first value of `name`.
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

fn strict_decode(s: &str) -> Result<String> {
    let bad = || bad_query("the query string is not valid percent-encoded UTF-8");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_is_strict() {
        assert_eq!(strict_decode("caf%C3%A9+bar").unwrap(), "café bar");
        assert!(strict_decode("%ED%A0%80").is_err(), "a lone surrogate");
        assert!(strict_decode("%zz").is_err());
        assert!(strict_decode("%4").is_err());
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
        let p = Params::parse("q=x&type=posts&q=y").unwrap();
        assert_eq!(p.get("q").as_deref(), Some("x"));
        assert!(Params::parse(&"q=".repeat(3000)).is_err());
    }
}
