//! Proves the social API of docs/api-contract.md (issue 3) against the real `nova` process with
//! users on both shards: posts and their extraction and validation, visibility, deletes,
//! Idempotency-Key, follows and their counts and lists, home feeds filled before a post is
//! answered, blocks, profiles by id and by name, pagination, and authentication everywhere.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;

use common::*;
use simd_json::json;

/// Author and other user on different shards both ways, and on the same shard.
const PAIRS: [(u32, u32); 4] = [(0, 1), (1, 0), (0, 0), (1, 1)];

/// A post id that no post has (1 ms after the epoch, shard 0), and one naming a shard that does
/// not exist.
const NO_SUCH_ID: u64 = (1 << 22) | 7;
const NO_SUCH_SHARD_ID: u64 = (1 << 22) | (999 << 12) | 7;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn create(server: &Server, author: &Member, body: Json) -> Resp {
    server.post("/v1/posts", author.auth(), body)
}

/// Posts `text` with `visibility` and requires 201; returns the post id.
fn post_as(server: &Server, author: &Member, text: &str, visibility: &str) -> u64 {
    let resp = create(
        server,
        author,
        json!({"text": text, "visibility": visibility}),
    );
    resp.expect(201);
    check_post(resp.at("post"), author);
    assert_eq!(resp.str("post.visibility"), visibility);
    parse_id(resp.at("post.id"))
}

fn post(server: &Server, author: &Member, text: &str) -> u64 {
    post_as(server, author, text, "public")
}

/// Requires every key the contract names; the server may add fields the contract does not
/// name yet (it grows with each issue), so extra keys are not an error.
fn has_keys(json: &Json, want: &[&str]) {
    let got = keys(json);
    let missing: Vec<&&str> = want
        .iter()
        .filter(|k| !got.iter().any(|g| g == *k))
        .collect();
    assert!(missing.is_empty(), "missing keys {missing:?} in {json:?}");
}

/// Checks the contract's shape of a Post and that `author` wrote it.
fn check_post(post: &Json, author: &Member) {
    has_keys(
        post,
        &[
            "author",
            "created_at",
            "edited_at",
            "hashtags",
            "id",
            "media_ids",
            "mentions",
            "reply_to",
            "text",
            "urls",
            "visibility",
        ],
    );
    parse_id(post.get("id").unwrap());
    let a = post.get("author").unwrap();
    assert_eq!(
        keys(a),
        ["display_name", "id", "username"],
        "author keys: {post:?}"
    );
    assert_eq!(parse_id(a.get("id").unwrap()), author.id(), "{post:?}");
    assert_eq!(
        a.get("username").unwrap().as_str(),
        Some(author.name()),
        "{post:?}"
    );
    assert!(a.get("display_name").unwrap().as_str().is_some());
    assert!(post.get("text").unwrap().as_str().is_some());
    let vis = post.get("visibility").unwrap().as_str().unwrap_or("");
    assert!(vis == "public" || vis == "followers", "{post:?}");
    let reply_to = post.get("reply_to").unwrap();
    if !reply_to.is_null() {
        parse_id(reply_to);
    }
    for m in post.get("mentions").unwrap().as_array().expect("mentions") {
        assert_eq!(keys(m), ["id", "username"], "mention keys: {post:?}");
        parse_id(m.get("id").unwrap());
    }
    for h in post.get("hashtags").unwrap().as_array().expect("hashtags") {
        assert!(h.as_str().is_some(), "{post:?}");
    }
    for u in post.get("urls").unwrap().as_array().expect("urls") {
        assert_eq!(keys(u), ["short", "url"], "url keys: {post:?}");
    }
    assert!(
        post.get("media_ids").unwrap().as_array().is_some(),
        "{post:?}"
    );
    let created = post.get("created_at").unwrap().as_str().unwrap_or("");
    assert!(is_rfc3339_millis(created), "created_at {created:?}");
    let edited = post.get("edited_at").unwrap();
    assert!(
        edited.is_null() || edited.as_str().is_some_and(is_rfc3339_millis),
        "edited_at {edited:?}"
    );
}

/// Every post id of the viewer's home feed, walked 100 at a time.
fn home(server: &Server, viewer: &Member) -> Vec<u64> {
    server.walk_posts("/v1/timelines/home", &viewer.token, 100)
}

/// Every post id of `author`'s timeline as `viewer` sees it, walked 100 at a time.
fn timeline(server: &Server, viewer: &Member, author: u64) -> Vec<u64> {
    server.walk_posts(&format!("/v1/users/{author}/posts"), &viewer.token, 100)
}

/// Ids newest first (the order of every list of posts).
fn newest_first(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// The profile `viewer` sees, required to be 200 with the contract's shape.
fn profile(server: &Server, viewer: &Member, id: u64) -> Resp {
    let resp = server.get(&format!("/v1/users/{id}"), viewer.auth());
    resp.expect(200);
    // Someone else's profile says how the two stand; the caller's own does not.
    let want: &[&str] = match viewer.id() == id {
        true => &["user"],
        false => &["relationship", "user"],
    };
    assert_eq!(keys(resp.json()), want, "{}", resp.what_happened());
    if viewer.id() != id {
        assert_eq!(
            keys(resp.at("relationship")),
            ["followed_by", "following", "muting", "requested"],
            "{}",
            resp.what_happened()
        );
    }
    has_keys(
        resp.at("user"),
        &[
            "bio",
            "created_at",
            "display_name",
            "followers_count",
            "following_count",
            "id",
            "posts_count",
            "username",
        ],
    );
    assert_eq!(parse_id(resp.at("user.id")), id);
    assert!(resp.at("user.bio").as_str().is_some());
    assert!(is_rfc3339_millis(resp.str("user.created_at")));
    resp
}

/// (followers_count, following_count) of `id`, as `viewer` sees them.
fn counts(server: &Server, viewer: &Member, id: u64) -> (u64, u64) {
    let resp = profile(server, viewer, id);
    let n = |key: &str| {
        resp.at(key)
            .as_u64()
            .unwrap_or_else(|| panic!("{key} is not a count: {}", resp.what_happened()))
    };
    (n("user.followers_count"), n("user.following_count"))
}

fn posts_count(server: &Server, viewer: &Member, id: u64) -> u64 {
    let resp = profile(server, viewer, id);
    resp.at("user.posts_count").as_u64().expect("posts_count")
}

fn follow(server: &Server, follower: &Member, followee: u64) {
    let resp = server.call(
        "POST",
        &format!("/v1/users/{followee}/follow"),
        follower.auth(),
        None,
    );
    resp.expect(200);
    assert_eq!(
        resp.json(),
        &json!({"following": true, "requested": false}),
        "{}",
        resp.what_happened()
    );
}

fn unfollow(server: &Server, follower: &Member, followee: u64) {
    let resp = server.delete(&format!("/v1/users/{followee}/follow"), follower.auth());
    resp.expect(200);
    assert_eq!(
        resp.json(),
        &json!({"following": false, "requested": false}),
        "{}",
        resp.what_happened()
    );
}

fn block(server: &Server, blocker: &Member, blocked: u64) {
    let resp = server.call(
        "POST",
        &format!("/v1/users/{blocked}/block"),
        blocker.auth(),
        None,
    );
    resp.expect(200);
    assert_eq!(
        resp.json(),
        &json!({"blocking": true}),
        "{}",
        resp.what_happened()
    );
}

fn unblock(server: &Server, blocker: &Member, blocked: u64) {
    let resp = server.delete(&format!("/v1/users/{blocked}/block"), blocker.auth());
    resp.expect(200);
    assert_eq!(
        resp.json(),
        &json!({"blocking": false}),
        "{}",
        resp.what_happened()
    );
}

/// Mutes (`on`) or unmutes `muted` as `muter`, and checks the answer.
fn mute(server: &Server, muter: &Member, muted: u64, on: bool) {
    let path = format!("/v1/users/{muted}/mute");
    let resp = match on {
        true => server.call("POST", &path, muter.auth(), None),
        false => server.delete(&path, muter.auth()),
    };
    resp.expect(200);
    assert_eq!(
        resp.json(),
        &json!({ "muting": on }),
        "{}",
        resp.what_happened()
    );
}

/// The ids of a followers/following list, walked `limit` at a time by its `next` cursor.
fn relations(server: &Server, viewer: &Member, path: &str, limit: usize) -> Vec<Json> {
    let mut out = Vec::new();
    let mut cursor: Option<u64> = None;
    for _ in 0..1000 {
        let url = match cursor {
            None => format!("{path}?limit={limit}"),
            Some(c) => format!("{path}?limit={limit}&max_id={c}"),
        };
        let resp = server.get(&url, viewer.auth());
        resp.expect(200);
        assert_eq!(
            keys(resp.json()),
            ["items", "next"],
            "{}",
            resp.what_happened()
        );
        check_next_link(&resp, path, limit);
        assert_eq!(link(&resp, "prev"), None, "{}", resp.what_happened());
        let items = resp.at("items").as_array().expect("items").clone();
        assert!(items.len() <= limit, "{}", resp.what_happened());
        for item in &items {
            assert_eq!(
                keys(item),
                ["display_name", "id", "username"],
                "{}",
                resp.what_happened()
            );
            parse_id(item.get("id").unwrap());
        }
        out.extend(items);
        match next_cursor(&resp) {
            None => return out,
            Some(next) => {
                assert_ne!(
                    Some(next),
                    cursor,
                    "next does not move: {}",
                    resp.what_happened()
                );
                cursor = Some(next);
            }
        }
    }
    panic!("{path}: more than 1000 pages");
}

fn relation_ids(server: &Server, viewer: &Member, path: &str) -> Vec<u64> {
    relations(server, viewer, path, 100)
        .iter()
        .map(|u| parse_id(u.get("id").unwrap()))
        .collect()
}

/// The (url, rel) pairs of a `Link` header (none when the header is absent).
fn links(resp: &Resp) -> Vec<(String, String)> {
    let Some(header) = resp.header("link") else {
        return Vec::new();
    };
    header
        .split(',')
        .map(|part| {
            let part = part.trim();
            let (url, params) = part
                .strip_prefix('<')
                .and_then(|p| p.split_once('>'))
                .unwrap_or_else(|| panic!("bad Link part {part:?} in {header:?}"));
            let rel = params
                .split(';')
                .filter_map(|p| p.trim().strip_prefix("rel="))
                .map(|r| r.trim_matches('"').to_string())
                .next()
                .unwrap_or_else(|| panic!("Link part without rel: {part:?}"));
            (url.to_string(), rel)
        })
        .collect()
}

fn link(resp: &Resp, rel: &str) -> Option<String> {
    let found: Vec<String> = links(resp)
        .into_iter()
        .filter(|(_, r)| r == rel)
        .map(|(u, _)| u)
        .collect();
    assert!(
        found.len() <= 1,
        "two rel={rel} links: {}",
        resp.what_happened()
    );
    found.into_iter().next()
}

/// The path and query of a link (which may be absolute), and its query parameters.
fn split_link(url: &str) -> (String, Vec<(String, String)>) {
    let path_query = match url.split_once("://") {
        Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_string(),
        None => url.to_string(),
    };
    let query = path_query.split_once('?').map_or("", |(_, q)| q);
    let params = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    (path_query, params)
}

/// Checks the `next` cursor and the `Link` header of one page of `path` against its items.
fn check_page_links(resp: &Resp, path: &str, limit: usize) {
    check_next_link(resp, path, limit);
    let ids = item_ids(resp);
    match (link(resp, "prev"), ids.first()) {
        (Some(url), Some(first)) => {
            let (path_query, mut params) = split_link(&url);
            assert!(
                path_query.starts_with(&format!("{path}?")),
                "prev link {url:?} is not for {path}"
            );
            params.sort();
            let mut want = vec![
                ("limit".to_string(), limit.to_string()),
                ("min_id".to_string(), first.to_string()),
            ];
            want.sort();
            assert_eq!(params, want, "prev link {url:?}: {}", resp.what_happened());
        }
        (None, None) => {}
        (link, first) => panic!(
            "prev link {link:?} for a page starting at {first:?}: {}",
            resp.what_happened()
        ),
    }
}

/// Checks the `next` cursor of one page of `path` against its `Link` header's `rel="next"`.
fn check_next_link(resp: &Resp, path: &str, limit: usize) {
    let next = next_cursor(resp);
    match (link(resp, "next"), next) {
        (Some(url), Some(next)) => {
            let (path_query, params) = split_link(&url);
            assert!(
                path_query.starts_with(&format!("{path}?")),
                "next link {url:?} is not for {path}"
            );
            let mut params = params;
            params.sort();
            let mut want = vec![
                ("limit".to_string(), limit.to_string()),
                ("max_id".to_string(), next.to_string()),
            ];
            want.sort();
            assert_eq!(params, want, "next link {url:?}: {}", resp.what_happened());
        }
        (None, None) => {}
        (link, next) => panic!(
            "next cursor {next:?} and rel=next link {link:?} disagree: {}",
            resp.what_happened()
        ),
    }
}

/// The item ids of `path` as `viewer` reads them, walked `limit` at a time by the `Link`
/// header's `rel="next"` alone, each page checked by `check`.
fn walk_links(
    server: &Server,
    viewer: &Member,
    path: &str,
    limit: usize,
    check: fn(&Resp, &str, usize),
) -> Vec<u64> {
    let mut walked = Vec::new();
    let mut url = format!("{path}?limit={limit}");
    for _ in 0..100 {
        let resp = server.get(&url, viewer.auth());
        resp.expect(200);
        check(&resp, path, limit);
        walked.extend(item_ids(&resp));
        match link(&resp, "next") {
            Some(next) => url = split_link(&next).0,
            None => return walked,
        }
    }
    panic!("{path}: more than 100 pages");
}

// ---------------------------------------------------------------------------------------------
// Creating and reading posts
// ---------------------------------------------------------------------------------------------

#[test]
fn create_post_extracts_mentions_hashtags_and_links() {
    let server = Server::start(&[]);
    let on = [server.member_on_shard(0), server.member_on_shard(1)];
    for author in &on {
        for mentioned in &on {
            let other = &on[1 - mentioned.shard() as usize];
            let text = format!(
                "Hi @{} and @{}, and @nosuchuser_xyz! #Rust #rust #Nova_2 see \
                 https://example.com/a?b=1 and http://nova.test/x",
                mentioned.name(),
                other.name()
            );
            let resp = create(&server, author, json!({"text": text.clone()}));
            resp.expect(201);
            assert_eq!(keys(resp.json()), ["post"], "{}", resp.what_happened());
            let post = resp.at("post");
            check_post(post, author);
            assert_eq!(resp.str("post.text"), text);
            assert_eq!(resp.str("post.visibility"), "public", "default visibility");
            assert!(resp.at("post.reply_to").is_null());
            assert!(resp.at("post.edited_at").is_null());
            assert_eq!(resp.at("post.media_ids"), &json!([]));
            assert_eq!(
                resp.str("post.author.display_name"),
                author.name(),
                "display_name defaults to the username"
            );
            let mentions: Vec<(u64, String)> = resp
                .at("post.mentions")
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        parse_id(m.get("id").unwrap()),
                        m.get("username").unwrap().as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(
                mentions,
                [
                    (mentioned.id(), mentioned.name().to_string()),
                    (other.id(), other.name().to_string())
                ],
                "mentions of existing users only: {}",
                resp.what_happened()
            );
            let mut tags: Vec<&str> = resp
                .at("post.hashtags")
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap())
                .collect();
            tags.sort_unstable();
            assert_eq!(tags, ["nova_2", "rust"], "{}", resp.what_happened());
            let urls: Vec<&str> = resp
                .at("post.urls")
                .as_array()
                .unwrap()
                .iter()
                .map(|u| {
                    let short = u.get("short").unwrap().as_str().unwrap_or("");
                    assert!(
                        !short.is_empty(),
                        "empty short link: {}",
                        resp.what_happened()
                    );
                    u.get("url").unwrap().as_str().unwrap()
                })
                .collect();
            assert_eq!(
                urls,
                ["https://example.com/a?b=1", "http://nova.test/x"],
                "{}",
                resp.what_happened()
            );

            // Anyone reads back the same post.
            let id = parse_id(resp.at("post.id"));
            for viewer in &on {
                let got = server.get(&format!("/v1/posts/{id}"), viewer.auth());
                got.expect(200);
                // Reading is a view: everything but the view count is the same.
                let strip = |j: &Json| {
                    let mut j = j.clone();
                    j.get_mut("post")
                        .and_then(|p| p.as_object_mut())
                        .map(|p| p.remove("views_count"));
                    j
                };
                assert_eq!(strip(got.json()), strip(resp.json()), "GET /v1/posts/{id}");
            }
        }
    }
}

#[test]
fn create_post_validates_its_body() {
    let server = Server::start(&[]);
    let author = server.member_on_shard(0);
    let other = server.member_on_shard(1);
    let check = |body: Json, status: u16, code: &str| {
        let resp = create(&server, &author, body.clone());
        resp.expect_error(status, code);
    };
    check(json!({"text": ""}), 422, "invalid_text");
    check(json!({"text": "   \n\t  "}), 422, "invalid_text");
    check(json!({"text": "x".repeat(5001)}), 422, "invalid_text");
    check(
        json!({"text": format!("  {}  ", "é".repeat(5001))}),
        422,
        "invalid_text",
    );
    check(
        json!({"text": "hi", "visibility": "private"}),
        422,
        "invalid_visibility",
    );
    check(
        json!({"text": "hi", "visibility": "PUBLIC"}),
        422,
        "invalid_visibility",
    );
    check(
        json!({"text": "hi", "media_ids": ["123"]}),
        422,
        "invalid_media",
    );
    check(
        json!({"text": "hi", "reply_to": NO_SUCH_ID.to_string()}),
        404,
        "not_found",
    );
    check(
        json!({"text": "hi", "reply_to": NO_SUCH_SHARD_ID.to_string()}),
        404,
        "not_found",
    );
    check(json!({}), 422, "invalid_body");
    check(json!({"text": 5}), 422, "invalid_body");
    check(json!({"text": "hi", "colour": "red"}), 422, "invalid_body");
    // Nothing above made a post.
    assert_eq!(timeline(&server, &author, author.id()), Vec::<u64>::new());

    // The limits themselves are fine: 5000 characters (not bytes), surrounding space aside.
    let long = "é".repeat(5000);
    let resp = create(&server, &author, json!({"text": format!("  {long}\n")}));
    resp.expect(201);
    let long_id = parse_id(resp.at("post.id"));
    let resp = create(&server, &author, json!({"text": "a", "media_ids": []}));
    resp.expect(201);
    let one_id = parse_id(resp.at("post.id"));
    let followers_only = post_as(&server, &author, "for followers", "followers");

    // reply_to: a visible post on either shard is fine; an invisible one is 404.
    let theirs = post(&server, &other, "a post on the other shard");
    let resp = create(
        &server,
        &author,
        json!({"text": "a reply", "reply_to": theirs.to_string()}),
    );
    resp.expect(201);
    assert_eq!(parse_id(resp.at("post.reply_to")), theirs);
    let reply_id = parse_id(resp.at("post.id"));
    let resp = create(
        &server,
        &other,
        json!({"text": "a reply", "reply_to": one_id.to_string()}),
    );
    resp.expect(201);
    assert_eq!(parse_id(resp.at("post.reply_to")), one_id);
    let resp = create(
        &server,
        &other,
        json!({"text": "sneaky", "reply_to": followers_only.to_string()}),
    );
    resp.expect_error(404, "not_found");
    assert_eq!(
        newest_first(&timeline(&server, &author, author.id())),
        newest_first(&[long_id, one_id, followers_only, reply_id])
    );
}

/// `POST /v1/posts/{id}/comments` as `who`, replying to `reply_to`; the answer.
fn comment_on(server: &Server, who: &Member, post: u64, text: &str, reply_to: Option<u64>) -> Resp {
    let body = match reply_to {
        Some(id) => json!({"text": text, "reply_to": id.to_string()}),
        None => json!({ "text": text }),
    };
    server.post(&format!("/v1/posts/{post}/comments"), who.auth(), body)
}

/// Comments and their replies, from users on both shards: the comment's shape, nesting to
/// `COMMENT_DEPTH_MAX` and no deeper, replies only to comments of the same post, pages oldest
/// first by `next` and by the `Link` header, exact counts, edits by their author only,
/// deletes by their author or the post's, and likes.
#[test]
fn comments_nest_paginate_and_keep_their_rules() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let commenter = server.member_on_shard(b);
        let other = server.member_on_shard(1 - b);
        let post_id = post(&server, &author, "comment on me");
        let elsewhere = post(&server, &other, "another post");

        let resp = comment_on(&server, &commenter, post_id, "first", None);
        resp.expect(201);
        let c = resp.at("comment");
        assert_eq!(
            keys(c),
            [
                "author",
                "created_at",
                "depth",
                "edited_at",
                "id",
                "liked",
                "likes_count",
                "post_id",
                "replies_count",
                "reply_to",
                "text"
            ]
        );
        assert_eq!(parse_id(c.get("post_id").unwrap()), post_id);
        assert_eq!(resp.str("comment.author.username"), commenter.name());
        assert!(c.get("reply_to").unwrap().is_null() && c.get("edited_at").unwrap().is_null());
        assert_eq!(c.get("depth").unwrap().as_u64(), Some(0));
        let first = parse_id(c.get("id").unwrap());

        // A chain of replies, taking turns, down to the deepest level allowed.
        let mut chain = vec![first];
        for depth in 1..=8u64 {
            let who = [&other, &commenter][depth as usize % 2];
            let resp = comment_on(
                &server,
                who,
                post_id,
                &format!("depth {depth}"),
                chain.last().copied(),
            );
            resp.expect(201);
            assert_eq!(resp.at("comment.depth").as_u64(), Some(depth));
            chain.push(parse_id(resp.at("comment.id")));
        }
        comment_on(&server, &other, post_id, "too deep", chain.last().copied())
            .expect_error(422, "too_deep");
        // A reply to a comment of another post, or to none that exists: 404.
        comment_on(&server, &other, elsewhere, "wrong post", Some(first))
            .expect_error(404, "not_found");
        comment_on(&server, &other, post_id, "nothing", Some(NO_SUCH_ID))
            .expect_error(404, "not_found");
        comment_on(&server, &other, post_id, "   ", None).expect_error(422, "invalid_text");
        comment_on(&server, &other, post_id, &"x".repeat(2001), None)
            .expect_error(422, "invalid_text");
        comment_on(&server, &other, NO_SUCH_ID, "lost", None).expect_error(404, "not_found");

        // Oldest first, two at a time, by `next` and by the `Link` header alike.
        let path = format!("/v1/posts/{post_id}/comments");
        let walked = walk_links(&server, &other, &path, 2, check_next_link);
        assert_eq!(walked, chain, "walked by Link rel=next");
        let resp = server.get(&format!("{path}?limit=100"), other.auth());
        assert_eq!(resp.at("items.0.replies_count").as_u64(), Some(1));
        let resp = server.get(&format!("/v1/posts/{post_id}"), other.auth());
        assert_eq!(resp.at("post.comments_count").as_u64(), Some(9));

        // Edits: the comment's author only.
        let edit = |who: &Member, id: u64| {
            server.call(
                "PATCH",
                &format!("/v1/comments/{id}"),
                who.auth(),
                Some(json!({"text": "edited"})),
            )
        };
        edit(&other, first).expect_error(404, "not_found");
        edit(&author, first).expect_error(404, "not_found");
        let resp = edit(&commenter, first);
        resp.expect(200);
        assert_eq!(resp.str("comment.text"), "edited");
        assert!(is_rfc3339_millis(resp.str("comment.edited_at")));

        // Likes of a comment, idempotent, by anyone who sees the post.
        for _ in 0..2 {
            server
                .post(
                    &format!("/v1/comments/{first}/like"),
                    other.auth(),
                    json!({}),
                )
                .expect(200);
        }
        let resp = server.get(&format!("{path}?limit=1"), other.auth());
        assert_eq!(resp.at("items.0.likes_count").as_u64(), Some(1));
        assert_eq!(resp.at("items.0.liked").as_bool(), Some(true));
        server
            .delete(&format!("/v1/comments/{first}/like"), other.auth())
            .expect(200);
        let resp = server.get(&format!("{path}?limit=1"), other.auth());
        assert_eq!(resp.at("items.0.likes_count").as_u64(), Some(0));

        // Deletes: the comment's author (chain[1] is the commenter's) or the post's; replies
        // stay.
        server
            .delete(&format!("/v1/comments/{first}"), other.auth())
            .expect_error(404, "not_found");
        server
            .delete(&format!("/v1/comments/{first}"), author.auth())
            .expect(204);
        server
            .delete(&format!("/v1/comments/{}", chain[1]), commenter.auth())
            .expect(204);
        let left = item_ids(&server.get(&format!("{path}?limit=100"), other.auth()));
        let want: Vec<u64> = chain
            .iter()
            .copied()
            .filter(|id| *id != first && *id != chain[1])
            .collect();
        assert_eq!(left, want);
        let resp = server.get(&format!("/v1/posts/{post_id}"), other.auth());
        assert_eq!(resp.at("post.comments_count").as_u64(), Some(7));

        // Blocked by the post's author, the commenter no longer edits its comments there (as
        // it could not comment); it may still delete them.
        let own = chain[3];
        edit(&commenter, own).expect(200);
        server
            .call(
                "POST",
                &format!("/v1/users/{}/block", commenter.id()),
                author.auth(),
                None,
            )
            .expect(200);
        edit(&commenter, own).expect_error(404, "not_found");
        server
            .delete(&format!("/v1/comments/{own}"), commenter.auth())
            .expect(204);
    }
}

/// Across a block either way, a user neither likes nor replies to the other's comment (it is
/// hidden from them: 404), on a third user's public post.
#[test]
fn a_comment_hidden_by_a_block_is_neither_liked_nor_replied_to() {
    let server = Server::start(&[]);
    for (x, y) in [(0, 1), (1, 0), (1, 1)] {
        let author = server.member_on_shard(1 - y);
        let commenter = server.member_on_shard(x);
        let other = server.member_on_shard(y);
        let post_id = server.new_post(&author, "a public post");
        let resp = comment_on(&server, &commenter, post_id, "a comment", None);
        resp.expect(201);
        let id = parse_id(resp.at("comment.id"));
        let like =
            |verb: &str| server.call(verb, &format!("/v1/comments/{id}/like"), other.auth(), None);
        like("POST").expect(200);
        for (blocker, blocked) in [(&other, &commenter), (&commenter, &other)] {
            let path = format!("/v1/users/{}/block", blocked.id());
            server.call("POST", &path, blocker.auth(), None).expect(200);
            like("POST").expect_error(404, "not_found");
            comment_on(&server, &other, post_id, "a reply", Some(id))
                .expect_error(404, "not_found");
            server.delete(&path, blocker.auth()).expect(200);
        }
        like("DELETE").expect(200);
        comment_on(&server, &other, post_id, "a reply", Some(id)).expect(201);
    }
}

/// A `mentioned` post is for its author and the users it mentions: they read it (in their
/// home feed too, following the author or not) and may comment; the author's followers and
/// everyone else see nothing of it, anywhere.
#[test]
fn a_mentioned_post_is_for_its_author_and_the_mentioned_only() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let mentioned = server.member_on_shard(b);
        let follower = server.member_on_shard(b);
        let stranger = server.member_on_shard(1 - b);
        follow(&server, &follower, author.id());
        let text = format!("just for you @{}", mentioned.name());
        let resp = create(
            &server,
            &author,
            json!({"text": text, "visibility": "mentioned"}),
        );
        resp.expect(201);
        assert_eq!(resp.str("post.visibility"), "mentioned");
        let secret = parse_id(resp.at("post.id"));
        let public = post(&server, &author, "for everyone");

        for reader in [&author, &mentioned] {
            let resp = server.get(&format!("/v1/posts/{secret}"), reader.auth());
            resp.expect(200);
            assert_eq!(resp.str("post.text"), text);
            assert!(timeline(&server, reader, author.id()).contains(&secret));
        }
        assert!(home(&server, &author).contains(&secret));
        assert_eq!(home(&server, &mentioned), vec![secret]);
        for outsider in [&follower, &stranger] {
            server
                .get(&format!("/v1/posts/{secret}"), outsider.auth())
                .expect_error(404, "not_found");
            assert_eq!(timeline(&server, outsider, author.id()), vec![public]);
            for (method, path, body) in [
                ("POST", format!("/v1/posts/{secret}/like"), None),
                (
                    "POST",
                    format!("/v1/posts/{secret}/comments"),
                    Some(json!({"text": "me too"})),
                ),
                ("GET", format!("/v1/posts/{secret}/comments"), None),
            ] {
                server
                    .call(method, &path, outsider.auth(), body)
                    .expect_error(404, "not_found");
            }
        }
        // The follower's feed has the public post, delivered after it, and not the other.
        assert_eq!(home(&server, &follower), vec![public]);
        server
            .post(
                &format!("/v1/posts/{secret}/comments"),
                mentioned.auth(),
                json!({"text": "thanks"}),
            )
            .expect(201);
    }
    // Chosen post by post, not as a default.
    let member = server.member_on_shard(0);
    server
        .call(
            "PATCH",
            "/v1/me/preferences",
            member.auth(),
            Some(json!({"default_visibility": "mentioned"})),
        )
        .expect_error(422, "invalid_visibility");
}

#[test]
fn followers_only_posts_are_visible_to_followers_only() {
    let server = Server::start(&[]);
    for author_shard in [0, 1] {
        let author = server.member_on_shard(author_shard);
        let followers = [server.member_on_shard(0), server.member_on_shard(1)];
        let strangers = [server.member_on_shard(0), server.member_on_shard(1)];
        for f in &followers {
            follow(&server, f, author.id());
        }
        let public = post(&server, &author, "for everyone");
        let private = post_as(&server, &author, "for followers", "followers");

        let get = |viewer: &Member, id: u64| server.get(&format!("/v1/posts/{id}"), viewer.auth());
        for viewer in std::iter::once(&author).chain(&followers) {
            for id in [public, private] {
                let resp = get(viewer, id);
                resp.expect(200);
                check_post(resp.at("post"), &author);
                assert_eq!(parse_id(resp.at("post.id")), id);
            }
            assert_eq!(
                timeline(&server, viewer, author.id()),
                [private, public],
                "timeline of the author for {}",
                viewer.name()
            );
        }
        for f in &followers {
            assert_eq!(home(&server, f), [private, public], "home of a follower");
        }
        for s in &strangers {
            get(s, public).expect(200);
            get(s, private).expect_error(404, "not_found");
            assert_eq!(
                timeline(&server, s, author.id()),
                [public],
                "a stranger sees only the public post"
            );
            assert_eq!(home(&server, s), Vec::<u64>::new());
        }
        // Unknown posts are 404 for everyone.
        get(&author, NO_SUCH_ID).expect_error(404, "not_found");
        get(&author, NO_SUCH_SHARD_ID).expect_error(404, "not_found");
        server
            .get(&format!("/v1/users/{NO_SUCH_ID}/posts"), author.auth())
            .expect_error(404, "not_found");

        // A follower who leaves loses the followers-only post.
        unfollow(&server, &followers[0], author.id());
        get(&followers[0], private).expect_error(404, "not_found");
        get(&followers[0], public).expect(200);
    }
}

/// The ids of `viewer`'s `mention` notifications, by post.
fn mentioned_in(server: &Server, viewer: &Member) -> Vec<u64> {
    let resp = server.get("/v1/notifications?types=mention&limit=100", viewer.auth());
    resp.expect(200);
    resp.at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| parse_id(at(n, "subject.id").unwrap_or_else(|| panic!("{n:?}"))))
        .collect()
}

/// The user ids in a post view's `mentions`.
fn mention_ids(post: &Json) -> Vec<u64> {
    at(post, "mentions")
        .and_then(|m| m.as_array())
        .unwrap()
        .iter()
        .map(|m| parse_id(at(m, "id").unwrap()))
        .collect()
}

/// A mention reaches only users who may read the post: a followers-only post, or a public
/// one of a private account, mentioning a follower and a stranger notifies the follower and
/// shows in its home feed, while the stranger gets no notification, no feed row and no
/// post (its name stays in the text only); an edit mentions no more. A public post of a
/// public account reaches both.
#[test]
fn mentions_reach_only_users_who_may_read_the_post() {
    let server = Server::start(&[]);
    for (author_shard, stranger_shard) in [(0, 1), (1, 1)] {
        let author = server.member_on_shard(author_shard);
        let private = server.member_on_shard(author_shard);
        server
            .call(
                "PATCH",
                "/v1/me/settings",
                private.auth(),
                Some(json!({"private": true})),
            )
            .expect(200);
        let follower = server.member_on_shard(1 - author_shard);
        let stranger = server.member_on_shard(stranger_shard);
        let case = format!("author on {author_shard}, stranger on {stranger_shard}");
        follow(&server, &follower, author.id());
        let resp = server.call(
            "POST",
            &format!("/v1/users/{}/follow", private.id()),
            follower.auth(),
            None,
        );
        resp.expect(200);
        server
            .call(
                "POST",
                &format!("/v1/me/follow-requests/{}/approve", follower.id()),
                private.auth(),
                None,
            )
            .expect(204);
        let text = format!("hi @{} and @{}", follower.name(), stranger.name());

        let resp = create(
            &server,
            &author,
            json!({"text": text, "visibility": "followers"}),
        );
        resp.expect(201);
        let for_followers = parse_id(resp.at("post.id"));
        assert_eq!(mention_ids(resp.at("post")), [follower.id()], "{case}");
        assert_eq!(resp.str("post.text"), text);
        let public = post(&server, &author, &text);
        let resp = create(&server, &private, json!({"text": text}));
        resp.expect(201);
        let of_private = parse_id(resp.at("post.id"));
        assert_eq!(mention_ids(resp.at("post")), [follower.id()], "{case}");
        let edited = server.call(
            "PATCH",
            &format!("/v1/posts/{for_followers}"),
            author.auth(),
            Some(json!({ "text": format!("{text}!") })),
        );
        edited.expect(200);
        assert_eq!(mention_ids(edited.at("post")), [follower.id()], "{case}");

        assert_eq!(
            home(&server, &follower),
            [of_private, public, for_followers],
            "{case}"
        );
        assert_eq!(
            mentioned_in(&server, &follower),
            [of_private, public, for_followers],
            "{case}"
        );
        assert_eq!(home(&server, &stranger), [public], "{case}");
        assert_eq!(mentioned_in(&server, &stranger), [public], "{case}");
        for id in [for_followers, of_private] {
            server
                .get(&format!("/v1/posts/{id}"), stranger.auth())
                .expect_error(404, "not_found");
        }

        // The author turns private: its public post leaves the stranger's feed (a page of
        // it was read just now, so from memory too); one addressed to the stranger stays.
        let to_stranger = format!("just you @{}", stranger.name());
        let resp = create(
            &server,
            &author,
            json!({"text": to_stranger, "visibility": "mentioned"}),
        );
        resp.expect(201);
        let addressed = parse_id(resp.at("post.id"));
        assert_eq!(home(&server, &stranger), [addressed, public], "{case}");
        server.set_private(&author, true);
        assert_eq!(home(&server, &stranger), [addressed], "{case}");
        // Its mention of the stranger goes too (the one addressed to it arrives on its own
        // time on another shard).
        let mut notes = Vec::new();
        let only_addressed = wait_until(std::time::Duration::from_secs(5), || {
            notes = mentioned_in(&server, &stranger);
            notes == [addressed]
        });
        assert!(only_addressed, "{case}: {notes:?}");
        assert_eq!(
            home(&server, &follower),
            [of_private, public, for_followers],
            "{case}"
        );
        // The follower unfollows: the author's posts that mentioned it go from its feed too
        // (a followers-only post, a public post of a private account); the other private
        // account it still follows stays.
        server
            .delete(
                &format!("/v1/users/{}/follow", author.id()),
                follower.auth(),
            )
            .expect(200);
        assert_eq!(home(&server, &follower), [of_private], "{case}");
    }
}

/// Posts mentioning a stranger composed while their account turns private: whichever commits
/// first, none stays in the stranger's feed once both are answered (the compose's write keeps
/// only the mentions the author's privacy allows by then).
#[test]
fn posts_racing_a_switch_to_private_do_not_reach_strangers() {
    let server = Server::start(&[]);
    for trial in 0..8 {
        let author = server.member_on_shard(trial % 2);
        let stranger = server.member_on_shard((trial / 2) % 2);
        let text = format!("racing @{}", stranger.name());
        let posted: Vec<u64> = std::thread::scope(|scope| {
            let composes: Vec<_> = (0..5)
                .map(|_| scope.spawn(|| post(&server, &author, &text)))
                .collect();
            scope.spawn(|| server.set_private(&author, true));
            composes.into_iter().map(|c| c.join().unwrap()).collect()
        });
        let shown = home(&server, &stranger);
        let leaked: Vec<u64> = posted
            .iter()
            .copied()
            .filter(|p| shown.contains(p))
            .collect();
        assert!(
            leaked.is_empty(),
            "trial {trial}: {leaked:?} of {posted:?} in the stranger's feed"
        );
    }
}

#[test]
fn delete_removes_a_post_everywhere() {
    let server = Server::start(&[]);
    for author_shard in [0, 1] {
        let author = server.member_on_shard(author_shard);
        let followers = [server.member_on_shard(0), server.member_on_shard(1)];
        for f in &followers {
            follow(&server, f, author.id());
        }
        let first = post(&server, &author, "first");
        let second = post_as(&server, &author, "second", "followers");
        let third = post(&server, &author, "third");
        for f in &followers {
            assert_eq!(home(&server, f), [third, second, first]);
        }
        assert_eq!(posts_count(&server, &author, author.id()), 3);

        // Someone else's post: 404, and it stays.
        for f in &followers {
            server
                .delete(&format!("/v1/posts/{second}"), f.auth())
                .expect_error(404, "not_found");
        }
        server
            .get(&format!("/v1/posts/{second}"), author.auth())
            .expect(200);

        let resp = server.delete(&format!("/v1/posts/{second}"), author.auth());
        resp.expect(204);
        assert!(resp.body.is_empty(), "204 with a body: {}", resp.text());
        for viewer in std::iter::once(&author).chain(&followers) {
            server
                .get(&format!("/v1/posts/{second}"), viewer.auth())
                .expect_error(404, "not_found");
            assert_eq!(timeline(&server, viewer, author.id()), [third, first]);
            assert_eq!(
                home(&server, viewer),
                [third, first],
                "home of {}",
                viewer.name()
            );
        }
        assert_eq!(posts_count(&server, &author, author.id()), 2);
        // Deleting again, or an unknown post, is 404.
        server
            .delete(&format!("/v1/posts/{second}"), author.auth())
            .expect_error(404, "not_found");
        server
            .delete(&format!("/v1/posts/{NO_SUCH_ID}"), author.auth())
            .expect_error(404, "not_found");
        server
            .delete(&format!("/v1/posts/{NO_SUCH_SHARD_ID}"), author.auth())
            .expect_error(404, "not_found");
    }
}

/// The sum over shards of a `/metrics` series with only a shard label.
fn shard_metric(server: &Server, name: &str) -> u64 {
    server.per_shard_metric(name).iter().sum()
}

/// Posts offered to the followers' shard while their authors post at once (the offers share
/// writes there) are acknowledged from that write: the outboxes empty without the relay
/// sending any of them again.
#[test]
fn offered_posts_are_acknowledged_not_sent_again() {
    let server = Server::start(&[]);
    let authors: Vec<Member> = (0..8).map(|_| server.member_on_shard(0)).collect();
    let reader = server.member_on_shard(1);
    for author in &authors {
        follow(&server, &reader, author.id());
    }
    let posted: Vec<u64> = std::thread::scope(|scope| {
        let handles: Vec<_> = authors
            .iter()
            .map(|author| {
                let server = &server;
                scope.spawn(move || {
                    (0..5)
                        .map(|i| post(server, author, &format!("at once {i}")))
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut want = posted.clone();
    want.sort_unstable_by(|a, b| b.cmp(a));
    let feed = server.walk_posts("/v1/timelines/home", &reader.token, 100);
    assert_eq!(
        feed, want,
        "every post in the reader's home feed, newest first"
    );

    // Acknowledgements are written by the relay (every 250 ms); unacknowledged events are
    // sent again once 2 s old.
    let start = std::time::Instant::now();
    while shard_metric(&server, "nova_outbox_pending") > 0 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "the outbox never emptied"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(shard_metric(&server, "nova_outbox_pending"), 0);
    assert_eq!(
        shard_metric(&server, "nova_outbox_redelivered_total"),
        0,
        "the relay sent offered posts again"
    );
}

/// Sends `POST /v1/posts` over a raw connection with the given `Idempotency-Key` line.
fn raw_post_with_key(server: &Server, token: &str, key_line: &str) -> RawResponse {
    let body = r#"{"text":"keyed"}"#;
    let request = format!(
        "POST /v1/posts HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\n{key_line}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        server.addr(),
        body.len()
    );
    let mut stream = connect(server.addr());
    stream.write_all(request.as_bytes()).unwrap();
    read_raw_response(&mut stream).unwrap()
}

#[test]
fn idempotency_key_returns_the_first_post() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let follower = server.member_on_shard(b);
        follow(&server, &follower, author.id());
        let key = unique_name("key-");
        let send = |who: &Member, key: &str, text: &str| {
            let req = Req::post("/v1/posts")
                .json(&json!({"text": text}))
                .bearer(&who.token)
                .header("Idempotency-Key", key);
            let resp = server.req(&req);
            resp.expect(201);
            check_post(resp.at("post"), who);
            resp
        };
        let first = send(&author, &key, "once");
        let again = send(&author, &key, "once");
        assert_eq!(
            again.json(),
            first.json(),
            "the same key must give the same answer"
        );
        // The first answer even when the retry's body differs.
        let third = send(&author, &key, "twice?");
        assert_eq!(third.json(), first.json());
        let id = parse_id(first.at("post.id"));
        assert_eq!(timeline(&server, &author, author.id()), [id]);
        assert_eq!(home(&server, &author), [id]);
        assert_eq!(home(&server, &follower), [id]);
        assert_eq!(posts_count(&server, &author, author.id()), 1);

        // A key whose post was deleted makes a new post, as messages' keys do.
        let gone_key = format!("{key}-gone");
        let gone = parse_id(send(&author, &gone_key, "to delete").at("post.id"));
        server
            .delete(&format!("/v1/posts/{gone}"), author.auth())
            .expect(204);
        let fresh = parse_id(send(&author, &gone_key, "after the delete").at("post.id"));
        assert_ne!(fresh, gone);
        server
            .get(&format!("/v1/posts/{fresh}"), follower.auth())
            .expect(200);
        server
            .delete(&format!("/v1/posts/{fresh}"), author.auth())
            .expect(204);

        // Keys belong to their user; another key is another post.
        let theirs = send(&follower, &key, "once");
        assert_ne!(parse_id(theirs.at("post.id")), id);
        let other = send(&author, &format!("{key}-2"), "once");
        let other_id = parse_id(other.at("post.id"));
        assert_ne!(other_id, id);
        assert_eq!(
            timeline(&server, &author, author.id()),
            newest_first(&[id, other_id])
        );

        // Bad keys: over 128 characters, or empty.
        let req = Req::post("/v1/posts")
            .json(&json!({"text": "long key"}))
            .bearer(&author.token)
            .header("Idempotency-Key", &"k".repeat(129));
        let resp = server.req(&req);
        resp.expect(400);
        assert!(resp.error_code().is_some(), "{}", resp.what_happened());
        let resp = send(&author, &"k".repeat(128), "longest key");
        let longest = parse_id(resp.at("post.id"));
        let raw = raw_post_with_key(&server, &author.token, "Idempotency-Key: ");
        assert_eq!(
            raw.status,
            400,
            "empty Idempotency-Key: {}",
            String::from_utf8_lossy(&raw.body)
        );
        assert_eq!(
            timeline(&server, &author, author.id()),
            newest_first(&[id, other_id, longest]),
            "a refused key made no post"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Follows
// ---------------------------------------------------------------------------------------------

#[test]
fn follow_and_unfollow_are_idempotent_and_counted() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let fan = server.member_on_shard(a);
        let star = server.member_on_shard(b);
        let third = server.member_on_shard(1 - a);
        follow(&server, &fan, star.id());
        follow(&server, &fan, star.id());
        for viewer in [&fan, &star, &third] {
            assert_eq!(counts(&server, viewer, star.id()), (1, 0), "star's counts");
            assert_eq!(counts(&server, viewer, fan.id()), (0, 1), "fan's counts");
            assert_eq!(
                relation_ids(
                    &server,
                    viewer,
                    &format!("/v1/users/{}/followers", star.id())
                ),
                [fan.id()]
            );
            assert_eq!(
                relation_ids(
                    &server,
                    viewer,
                    &format!("/v1/users/{}/following", fan.id())
                ),
                [star.id()]
            );
            assert_eq!(
                relation_ids(
                    &server,
                    viewer,
                    &format!("/v1/users/{}/following", star.id())
                ),
                Vec::<u64>::new()
            );
            assert_eq!(
                relation_ids(
                    &server,
                    viewer,
                    &format!("/v1/users/{}/followers", fan.id())
                ),
                Vec::<u64>::new()
            );
        }
        // The list items are brief views of the users.
        let items = relations(
            &server,
            &third,
            &format!("/v1/users/{}/followers", star.id()),
            10,
        );
        assert_eq!(
            items,
            [json!({"id": fan.id().to_string(), "username": fan.name(),
                    "display_name": fan.name()})]
        );

        // Both ways at once.
        follow(&server, &star, fan.id());
        assert_eq!(counts(&server, &third, star.id()), (1, 1));
        assert_eq!(counts(&server, &third, fan.id()), (1, 1));

        unfollow(&server, &fan, star.id());
        unfollow(&server, &fan, star.id());
        assert_eq!(counts(&server, &third, star.id()), (0, 1));
        assert_eq!(counts(&server, &third, fan.id()), (1, 0));
        assert_eq!(
            relation_ids(
                &server,
                &third,
                &format!("/v1/users/{}/followers", star.id())
            ),
            Vec::<u64>::new()
        );
        assert_eq!(
            relation_ids(
                &server,
                &third,
                &format!("/v1/users/{}/following", fan.id())
            ),
            Vec::<u64>::new()
        );
        // Unfollowing someone never followed is fine too.
        unfollow(&server, &third, star.id());
        assert_eq!(counts(&server, &third, third.id()), (0, 0));
    }
}

#[test]
fn follow_refuses_self_and_unknown_users() {
    let server = Server::start(&[]);
    for shard in [0, 1] {
        let me = server.member_on_shard(shard);
        server
            .call(
                "POST",
                &format!("/v1/users/{}/follow", me.id()),
                me.auth(),
                None,
            )
            .expect_error(422, "cannot_follow_self");
        for id in [NO_SUCH_ID, NO_SUCH_SHARD_ID, NO_SUCH_ID | (1 << 12)] {
            server
                .call("POST", &format!("/v1/users/{id}/follow"), me.auth(), None)
                .expect_error(404, "not_found");
            server
                .get(&format!("/v1/users/{id}"), me.auth())
                .expect_error(404, "not_found");
            server
                .get(&format!("/v1/users/{id}/followers"), me.auth())
                .expect_error(404, "not_found");
            server
                .get(&format!("/v1/users/{id}/following"), me.auth())
                .expect_error(404, "not_found");
        }
        assert_eq!(counts(&server, &me, me.id()), (0, 0));
    }
}

#[test]
fn followers_and_following_lists_paginate() {
    let server = Server::start(&[]);
    for shard in [0, 1] {
        let star = server.member_on_shard(shard);
        let fans: Vec<Member> = (0..5).map(|i| server.member_on_shard(i % 2)).collect();
        for fan in &fans {
            follow(&server, fan, star.id());
            follow(&server, &star, fan.id());
        }
        let want: BTreeSet<u64> = fans.iter().map(Member::id).collect();
        for path in ["followers", "following"] {
            let path = format!("/v1/users/{}/{path}", star.id());
            for limit in [1, 2, 5, 100] {
                let ids: Vec<u64> = relations(&server, &fans[0], &path, limit)
                    .iter()
                    .map(|u| parse_id(u.get("id").unwrap()))
                    .collect();
                let set: BTreeSet<u64> = ids.iter().copied().collect();
                assert_eq!(
                    set.len(),
                    ids.len(),
                    "{path} limit {limit}: repeats {ids:?}"
                );
                assert_eq!(set, want, "{path} limit {limit}");
            }
        }
        assert_eq!(counts(&server, &fans[1], star.id()), (5, 5));
    }
}

// ---------------------------------------------------------------------------------------------
// Home feeds
// ---------------------------------------------------------------------------------------------

#[test]
fn home_feed_gets_posts_before_they_are_answered() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let follower = server.member_on_shard(b);
        let bystander = server.member_on_shard(b);
        let unrelated = server.member_on_shard(1 - a);
        follow(&server, &follower, author.id());
        follow(&server, &bystander, unrelated.id());
        let mut posted = Vec::new();
        let mut theirs = Vec::new();
        for i in 0..4 {
            let visibility = if i % 2 == 0 { "public" } else { "followers" };
            let id = post_as(&server, &author, &format!("post {i}"), visibility);
            posted.insert(0, id);
            // Read at once: the contract promises the post is there when it is answered.
            assert_eq!(
                home(&server, &follower),
                posted,
                "follower's home after post {i}"
            );
            assert_eq!(home(&server, &author), posted, "author's own home");
            theirs.insert(0, post(&server, &unrelated, &format!("other {i}")));
            assert_eq!(home(&server, &bystander), theirs);
            assert_eq!(
                home(&server, &follower),
                posted,
                "no unfollowed author's posts"
            );
        }
        // The follower's own posts join its feed.
        let own = post(&server, &follower, "mine");
        let mut with_own = posted.clone();
        with_own.push(own);
        assert_eq!(home(&server, &follower), newest_first(&with_own));

        // Unfollowing removes that author's posts, and later ones never arrive.
        unfollow(&server, &follower, author.id());
        assert_eq!(home(&server, &follower), [own]);
        post(&server, &author, "after the unfollow");
        assert_eq!(home(&server, &follower), [own]);
        assert_eq!(home(&server, &bystander), theirs);
    }
}

// ---------------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------------

#[test]
fn blocks_hide_both_users_from_each_other() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let blocker = server.member_on_shard(a);
        let blocked = server.member_on_shard(b);
        let witness = server.member_on_shard(1 - b);
        follow(&server, &blocker, blocked.id());
        follow(&server, &blocked, blocker.id());
        follow(&server, &witness, blocker.id());
        follow(&server, &witness, blocked.id());
        let p1 = post(&server, &blocker, "blocker public");
        let p2 = post_as(&server, &blocker, "blocker followers", "followers");
        let q1 = post(&server, &blocked, "blocked public");
        let q2 = post_as(&server, &blocked, "blocked followers", "followers");
        // (Ids order posts; two shards' posts interleave by the millisecond they were made.)
        let both = newest_first(&[p1, p2, q1, q2]);
        assert_eq!(home(&server, &blocker), both);
        assert_eq!(home(&server, &blocked), both);
        assert_eq!(counts(&server, &witness, blocker.id()), (2, 1));
        assert_eq!(counts(&server, &witness, blocked.id()), (2, 1));

        block(&server, &blocker, blocked.id());

        for (me, them, their_posts) in [
            (&blocker, &blocked, [q1, q2]),
            (&blocked, &blocker, [p1, p2]),
        ] {
            let t = them.id();
            server
                .get(&format!("/v1/users/{t}"), me.auth())
                .expect_error(404, "not_found");
            server
                .get(&format!("/v1/users/@{}", them.name()), me.auth())
                .expect_error(404, "not_found");
            server
                .get(&format!("/v1/users/{t}/posts"), me.auth())
                .expect_error(404, "not_found");
            for id in their_posts {
                server
                    .get(&format!("/v1/posts/{id}"), me.auth())
                    .expect_error(404, "not_found");
            }
            server
                .call("POST", &format!("/v1/users/{t}/follow"), me.auth(), None)
                .expect_error(404, "not_found");
            let resp = create(
                &server,
                me,
                json!({"text": "a reply", "reply_to": their_posts[0].to_string()}),
            );
            resp.expect_error(404, "not_found");
        }
        // The follows both ways are gone, and counted so.
        assert_eq!(counts(&server, &witness, blocker.id()), (1, 0));
        assert_eq!(counts(&server, &witness, blocked.id()), (1, 0));
        assert_eq!(counts(&server, &blocker, blocker.id()), (1, 0));
        assert_eq!(counts(&server, &blocked, blocked.id()), (1, 0));
        assert_eq!(
            relation_ids(
                &server,
                &witness,
                &format!("/v1/users/{}/followers", blocker.id())
            ),
            [witness.id()]
        );
        assert_eq!(
            relation_ids(
                &server,
                &witness,
                &format!("/v1/users/{}/following", blocked.id())
            ),
            Vec::<u64>::new()
        );
        // Home feeds are filtered; new posts do not cross either.
        assert_eq!(home(&server, &blocker), [p2, p1]);
        assert_eq!(home(&server, &blocked), [q2, q1]);
        let p3 = post(&server, &blocker, "after the block");
        let q3 = post(&server, &blocked, "after the block");
        assert_eq!(home(&server, &blocker), [p3, p2, p1]);
        assert_eq!(home(&server, &blocked), [q3, q2, q1]);
        // Others still see both.
        assert_eq!(
            home(&server, &witness),
            newest_first(&[p1, p2, p3, q1, q2, q3])
        );
        profile(&server, &witness, blocker.id());
        profile(&server, &witness, blocked.id());

        // Unblocking makes them visible again; the follows stay ended until renewed.
        unblock(&server, &blocker, blocked.id());
        profile(&server, &blocker, blocked.id());
        profile(&server, &blocked, blocker.id());
        server
            .get(&format!("/v1/posts/{p1}"), blocked.auth())
            .expect(200);
        server
            .get(&format!("/v1/posts/{p2}"), blocked.auth())
            .expect_error(404, "not_found");
        assert_eq!(counts(&server, &witness, blocker.id()), (1, 0));
        follow(&server, &blocked, blocker.id());
        assert_eq!(counts(&server, &witness, blocker.id()), (2, 0));
        assert_eq!(counts(&server, &witness, blocked.id()), (1, 1));
        server
            .get(&format!("/v1/posts/{p2}"), blocked.auth())
            .expect(200);
    }
}

/// The caller's `list` (`blocks` or `mutes`), walked `limit` at a time by the `Link` header's
/// `rel="next"` alone: (user id, since) of each entry, after checking each entry's shape.
/// A block hides both users from each other in a third user's lists and comments too; others
/// still see both.
#[test]
fn a_block_hides_both_users_in_a_third_users_lists_and_comments() {
    let server = Server::start(&[]);
    for (a_shard, b_shard, c_shard) in [(0, 1, 0), (1, 0, 1), (0, 0, 1)] {
        let a = server.member_on_shard(a_shard);
        let b = server.member_on_shard(b_shard);
        let c = server.member_on_shard(c_shard);
        let other = server.member_on_shard(1 - c_shard);
        let case = format!("a on {a_shard}, b on {b_shard}, c on {c_shard}");
        for m in [&a, &b, &other] {
            follow(&server, m, c.id());
        }
        follow(&server, &c, a.id());
        follow(&server, &c, b.id());
        let post = post(&server, &c, "comment here");
        for m in [&a, &b] {
            comment_on(&server, m, post, "mine", None).expect(201);
        }
        block(&server, &a, b.id());

        let comment_authors = |viewer: &Member| -> Vec<u64> {
            let resp = server.get(&format!("/v1/posts/{post}/comments"), viewer.auth());
            resp.expect(200);
            let mut ids: Vec<u64> = resp
                .at("items")
                .as_array()
                .unwrap()
                .iter()
                .map(|c| parse_id(at(c, "author.id").unwrap()))
                .collect();
            ids.sort_unstable();
            ids
        };
        let sorted = |mut ids: Vec<u64>| {
            ids.sort_unstable();
            ids
        };
        let followers = format!("/v1/users/{}/followers", c.id());
        let following = format!("/v1/users/{}/following", c.id());
        for (viewer, hidden) in [(&a, &b), (&b, &a)] {
            assert_eq!(comment_authors(viewer), [viewer.id()], "{case}");
            let seen = sorted(relation_ids(&server, viewer, &followers));
            assert_eq!(seen, sorted(vec![viewer.id(), other.id()]), "{case}");
            assert!(
                !relation_ids(&server, viewer, &following).contains(&hidden.id()),
                "{case}"
            );
        }
        assert_eq!(
            comment_authors(&other),
            sorted(vec![a.id(), b.id()]),
            "{case}"
        );
        assert_eq!(
            sorted(relation_ids(&server, &other, &following)),
            sorted(vec![a.id(), b.id()]),
            "{case}"
        );
    }
}

fn own_list(server: &Server, owner: &Member, list: &str, limit: usize) -> Vec<(u64, String)> {
    let path = format!("/v1/me/{list}");
    let since = match list {
        "blocks" => "blocked_at",
        _ => "muted_at",
    };
    let mut out = Vec::new();
    let mut url = format!("{path}?limit={limit}");
    for _ in 0..100 {
        let resp = server.get(&url, owner.auth());
        resp.expect(200);
        assert_eq!(
            keys(resp.json()),
            ["items", "next"],
            "{}",
            resp.what_happened()
        );
        check_next_link(&resp, &path, limit);
        assert_eq!(link(&resp, "prev"), None, "{}", resp.what_happened());
        let items = resp.at("items").as_array().expect("items").clone();
        assert!(items.len() <= limit, "{}", resp.what_happened());
        for item in &items {
            assert_eq!(keys(item), [since, "user"], "{}", resp.what_happened());
            let user = item.get("user").unwrap();
            assert_eq!(keys(user), ["display_name", "id", "username"]);
            let at = item.get(since).unwrap().as_str().unwrap().to_string();
            assert!(is_rfc3339_millis(&at), "{since} {at:?}");
            out.push((parse_id(user.get("id").unwrap()), at));
        }
        match link(&resp, "next") {
            Some(next) => url = split_link(&next).0,
            None => return out,
        }
    }
    panic!("{path}: more than 100 pages");
}

fn own_ids(server: &Server, owner: &Member, list: &str) -> Vec<u64> {
    own_list(server, owner, list, 2)
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn the_caller_lists_whom_it_blocks_and_mutes() {
    let server = Server::start(&[]);
    for shard in [0, 1] {
        let owner = server.member_on_shard(shard);
        let others: Vec<Member> = [0, 1, 0, 1, 1]
            .into_iter()
            .map(|s| server.member_on_shard(s))
            .collect();
        assert!(own_ids(&server, &owner, "blocks").is_empty());
        assert!(own_ids(&server, &owner, "mutes").is_empty());

        // Blocked and muted users on both shards, one of them both.
        for other in &others[..3] {
            block(&server, &owner, other.id());
        }
        for other in &others[2..] {
            mute(&server, &owner, other.id(), true);
        }
        let sorted = |members: &[Member]| -> Vec<u64> {
            let mut ids: Vec<u64> = members.iter().map(Member::id).collect();
            ids.sort();
            ids
        };
        assert_eq!(own_ids(&server, &owner, "blocks"), sorted(&others[..3]));
        assert_eq!(own_ids(&server, &owner, "mutes"), sorted(&others[2..]));
        // The names are the users' own, and the other lists the same entries a page at a time.
        let listed = own_list(&server, &owner, "blocks", 100);
        let first = others.iter().find(|o| o.id() == listed[0].0).unwrap();
        let resp = server.get("/v1/me/blocks?limit=1", owner.auth());
        assert_eq!(resp.str("items.0.user.username"), first.name());
        assert_eq!(resp.str("items.0.blocked_at"), listed[0].1);
        // Nobody else's lists hold them: not the blocked user's, not a bystander's.
        for other in &others {
            assert!(own_ids(&server, other, "blocks").is_empty());
            assert!(own_ids(&server, other, "mutes").is_empty());
        }

        // Undone, they leave the lists (and only they).
        unblock(&server, &owner, others[0].id());
        mute(&server, &owner, others[4].id(), false);
        assert_eq!(own_ids(&server, &owner, "blocks"), sorted(&others[1..3]));
        assert_eq!(own_ids(&server, &owner, "mutes"), sorted(&others[2..4]));

        // Bad input and no token.
        for list in ["blocks", "mutes"] {
            let path = format!("/v1/me/{list}");
            for bad in ["limit=0", "limit=101", "limit=x"] {
                server
                    .get(&format!("{path}?{bad}"), owner.auth())
                    .expect_error(400, "invalid_limit");
            }
            server
                .get(&format!("{path}?max_id=abc"), owner.auth())
                .expect_error(400, "invalid_cursor");
            server.get(&path, None).expect_error(401, "unauthorized");
        }
    }
}

#[test]
fn the_blocked_user_cannot_follow_until_unblocked() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let blocker = server.member_on_shard(a);
        let blocked = server.member_on_shard(b);
        block(&server, &blocker, blocked.id());
        for (me, them) in [(&blocked, &blocker), (&blocker, &blocked)] {
            server
                .call(
                    "POST",
                    &format!("/v1/users/{}/follow", them.id()),
                    me.auth(),
                    None,
                )
                .expect_error(404, "not_found");
        }
        assert_eq!(counts(&server, &blocker, blocker.id()), (0, 0));
        assert_eq!(counts(&server, &blocked, blocked.id()), (0, 0));
        unblock(&server, &blocker, blocked.id());
        follow(&server, &blocked, blocker.id());
        follow(&server, &blocker, blocked.id());
        assert_eq!(counts(&server, &blocker, blocker.id()), (1, 1));
        assert_eq!(counts(&server, &blocked, blocked.id()), (1, 1));
    }
}

/// A block sent while a follow between the same two users is under way wins, whichever
/// lands first and whoever blocks: afterwards neither side holds the follow (the follow is
/// answered 200 only if it landed first, and the block then took it away).
#[test]
fn a_block_sent_with_a_follow_wins() {
    const TRIALS: usize = 6;
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        for trial in 0..TRIALS {
            // The follower blocks in half the trials, the followee in the other half.
            let follower = server.member_on_shard(a);
            let followee = server.member_on_shard(b);
            let (blocker, blocked) = match trial % 2 {
                0 => (&follower, followee.id()),
                _ => (&followee, follower.id()),
            };
            let follow_status = std::thread::scope(|s| {
                let follow = s.spawn(|| {
                    server
                        .call(
                            "POST",
                            &format!("/v1/users/{}/follow", followee.id()),
                            follower.auth(),
                            None,
                        )
                        .status
                });
                block(&server, blocker, blocked);
                follow.join().unwrap()
            });
            assert!(
                [200, 404].contains(&follow_status),
                "follow answered {follow_status}"
            );
            // Each side's own view, once the outbox has delivered the other side's change.
            let settled = wait_until(std::time::Duration::from_secs(10), || {
                let following = relation_ids(
                    &server,
                    &follower,
                    &format!("/v1/users/{}/following", follower.id()),
                );
                let followers = relation_ids(
                    &server,
                    &followee,
                    &format!("/v1/users/{}/followers", followee.id()),
                );
                following.is_empty()
                    && followers.is_empty()
                    && counts(&server, &follower, follower.id()) == (0, 0)
                    && counts(&server, &followee, followee.id()) == (0, 0)
            });
            assert!(
                settled,
                "shards {a}->{b}, trial {trial}: the follow (answered {follow_status}) \
                 outlived the block"
            );
        }
    }
}

/// A request withdrawn while the private account approves it: whichever lands first, the
/// withdrawal (answered `following: false`) holds; neither side keeps a follow.
#[test]
fn a_request_withdrawn_while_it_is_approved_stays_withdrawn() {
    const TRIALS: usize = 6;
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        for trial in 0..TRIALS {
            let requester = server.member_on_shard(a);
            let private = server.member_on_shard(b);
            server.set_private(&private, true);
            let asked = server.call(
                "POST",
                &format!("/v1/users/{}/follow", private.id()),
                requester.auth(),
                None,
            );
            asked.expect(200);
            assert_eq!(asked.at("requested").as_bool(), Some(true));
            let barrier = std::sync::Barrier::new(2);
            let (approved, withdrawn) = std::thread::scope(|s| {
                let approve = s.spawn(|| {
                    barrier.wait();
                    server
                        .call(
                            "POST",
                            &format!("/v1/me/follow-requests/{}/approve", requester.id()),
                            private.auth(),
                            None,
                        )
                        .status
                });
                barrier.wait();
                let withdrawn = server.call(
                    "DELETE",
                    &format!("/v1/users/{}/follow", private.id()),
                    requester.auth(),
                    None,
                );
                (approve.join().unwrap(), withdrawn)
            });
            assert!(
                [204, 404].contains(&approved),
                "approve answered {approved}"
            );
            withdrawn.expect(200);
            assert_eq!(withdrawn.at("following").as_bool(), Some(false));
            let settled = wait_until(std::time::Duration::from_secs(2), || {
                relation_ids(
                    &server,
                    &requester,
                    &format!("/v1/users/{}/following", requester.id()),
                )
                .is_empty()
                    && relation_ids(
                        &server,
                        &private,
                        &format!("/v1/users/{}/followers", private.id()),
                    )
                    .is_empty()
            });
            // Not settled "eventually": the follow must not come back after the answer.
            std::thread::sleep(std::time::Duration::from_millis(200));
            let (following, requested, _, _) = relationship(&server, &requester, private.id());
            assert!(
                settled && !following && !requested,
                "shards {a}->{b}, trial {trial}: approve {approved}, the withdrawal was lost"
            );
            assert_eq!(counts(&server, &private, private.id()), (0, 0));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------------------------

#[test]
fn profiles_by_id_and_by_username() {
    let server = Server::start(&[]);
    let users = [server.member_on_shard(0), server.member_on_shard(1)];
    post(&server, &users[1], "one");
    post(&server, &users[1], "two");
    for viewer in &users {
        for user in &users {
            let by_id = profile(&server, viewer, user.id());
            assert_eq!(by_id.str("user.username"), user.name());
            assert_eq!(by_id.str("user.display_name"), user.name());
            let by_name = server.get(&format!("/v1/users/@{}", user.name()), viewer.auth());
            by_name.expect(200);
            assert_eq!(by_name.json(), by_id.json(), "by name and by id differ");
            assert_eq!(
                by_id.at("user.posts_count").as_u64(),
                Some(if user.shard() == 1 { 2 } else { 0 })
            );
            assert_eq!(by_id.at("user.followers_count").as_u64(), Some(0));
            assert_eq!(by_id.at("user.following_count").as_u64(), Some(0));
        }
        server
            .get("/v1/users/@nosuchuser_abc", viewer.auth())
            .expect_error(404, "not_found");
    }
}

/// (following, requested, followed_by, muting) of the `relationship` in `viewer`'s view of
/// `id`'s profile.
fn relationship(server: &Server, viewer: &Member, id: u64) -> (bool, bool, bool, bool) {
    let resp = profile(server, viewer, id);
    let flag = |key: &str| {
        resp.at(&format!("relationship.{key}"))
            .as_bool()
            .unwrap_or_else(|| panic!("{key}: {}", resp.what_happened()))
    };
    (
        flag("following"),
        flag("requested"),
        flag("followed_by"),
        flag("muting"),
    )
}

#[test]
fn a_profile_says_how_the_caller_and_the_user_stand() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let viewer = server.member_on_shard(a);
        let user = server.member_on_shard(b);
        let none = (false, false, false, false);
        assert_eq!(relationship(&server, &viewer, user.id()), none);

        follow(&server, &viewer, user.id());
        assert_eq!(
            relationship(&server, &viewer, user.id()),
            (true, false, false, false)
        );
        assert_eq!(
            relationship(&server, &user, viewer.id()),
            (false, false, true, false)
        );
        mute(&server, &viewer, user.id(), true);
        assert_eq!(
            relationship(&server, &viewer, user.id()),
            (true, false, false, true)
        );
        follow(&server, &user, viewer.id());
        assert_eq!(
            relationship(&server, &viewer, user.id()),
            (true, false, true, true)
        );
        assert_eq!(
            relationship(&server, &user, viewer.id()),
            (true, false, true, false)
        );
        mute(&server, &viewer, user.id(), false);
        unfollow(&server, &viewer, user.id());
        assert_eq!(
            relationship(&server, &viewer, user.id()),
            (false, false, true, false)
        );

        // A private account: requested until approved, then following.
        server
            .call(
                "PATCH",
                "/v1/me/settings",
                user.auth(),
                Some(json!({"private": true})),
            )
            .expect(200);
        let resp = server.call(
            "POST",
            &format!("/v1/users/{}/follow", user.id()),
            viewer.auth(),
            None,
        );
        resp.expect(200);
        assert_eq!(resp.json(), &json!({"following": false, "requested": true}));
        assert_eq!(
            relationship(&server, &viewer, user.id()),
            (false, true, true, false)
        );
        server
            .call(
                "POST",
                &format!("/v1/me/follow-requests/{}/approve", viewer.id()),
                user.auth(),
                None,
            )
            .expect(204);
        assert_eq!(
            relationship(&server, &viewer, user.id()),
            (true, false, true, false)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------------------------

#[test]
fn user_timeline_pages_by_cursor_and_link() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let reader = server.member_on_shard(b);
        let mut ids: Vec<u64> = (0..7)
            .map(|i| post(&server, &author, &format!("p{i}")))
            .collect();
        ids.reverse();
        let path = format!("/v1/users/{}/posts", author.id());

        // By `next`: 3, 3, 1.
        let mut pages = Vec::new();
        let mut url = format!("{path}?limit=3");
        loop {
            let resp = server.get(&url, reader.auth());
            resp.expect(200);
            check_page_links(&resp, &path, 3);
            let page = item_ids(&resp);
            pages.push(page.clone());
            match next_cursor(&resp) {
                Some(next) => {
                    assert_eq!(Some(&next), page.last(), "next is the page's last id");
                    url = format!("{path}?limit=3&max_id={next}");
                }
                None => break,
            }
            assert!(pages.len() <= 3, "too many pages: {pages:?}");
        }
        assert_eq!(pages, [&ids[0..3], &ids[3..6], &ids[6..7]]);

        // By the `Link` header alone.
        let walked = walk_links(&server, &reader, &path, 2, check_page_links);
        assert_eq!(walked, ids, "walked by Link rel=next");

        // min_id and max_id bound the page; it stays newest first.
        let resp = server.get(&format!("{path}?min_id={}", ids[4]), reader.auth());
        resp.expect(200);
        assert_eq!(item_ids(&resp), &ids[0..4]);
        let resp = server.get(
            &format!("{path}?min_id={}&max_id={}", ids[5], ids[1]),
            reader.auth(),
        );
        resp.expect(200);
        assert_eq!(item_ids(&resp), &ids[2..5]);
        let resp = server.get(&format!("{path}?max_id={}", ids[6]), reader.auth());
        resp.expect(200);
        assert_eq!(item_ids(&resp), Vec::<u64>::new());
        assert!(next_cursor(&resp).is_none());
        assert!(link(&resp, "prev").is_none() && link(&resp, "next").is_none());
        // The prev link of the first page finds what is newer.
        let resp = server.get(&format!("{path}?limit=3"), reader.auth());
        let prev = link(&resp, "prev").expect("prev link on a full page");
        let newer: Vec<u64> = (0..2)
            .map(|i| post(&server, &author, &format!("n{i}")))
            .collect();
        let resp = server.get(&split_link(&prev).0, reader.auth());
        resp.expect(200);
        assert_eq!(item_ids(&resp), newest_first(&newer));
    }
}

#[test]
fn default_page_is_twenty() {
    let server = Server::start(&[]);
    let author = server.member_on_shard(1);
    let reader = server.member_on_shard(0);
    follow(&server, &reader, author.id());
    let mut ids: Vec<u64> = (0..25)
        .map(|i| post(&server, &author, &format!("p{i}")))
        .collect();
    ids.reverse();
    for (who, path) in [
        (&reader, format!("/v1/users/{}/posts", author.id())),
        (&reader, "/v1/timelines/home".to_string()),
        (&author, "/v1/timelines/home".to_string()),
    ] {
        let resp = server.get(&path, who.auth());
        resp.expect(200);
        assert_eq!(item_ids(&resp), &ids[..20], "{path}");
        assert_eq!(next_cursor(&resp), Some(ids[19]));
        check_page_links(&resp, &path, 20);
        let resp = server.get(&format!("{path}?max_id={}", ids[19]), who.auth());
        resp.expect(200);
        assert_eq!(item_ids(&resp), &ids[20..], "{path}");
        assert!(next_cursor(&resp).is_none());
    }
}

#[test]
fn walks_give_every_post_once_while_posts_arrive() {
    let server = Server::start(&[]);
    let authors = [server.member_on_shard(0), server.member_on_shard(1)];
    let reader = server.member_on_shard(0);
    for a in &authors {
        follow(&server, &reader, a.id());
    }
    // Everything the reader's home holds: its own posts and every post of both authors.
    let mut feed = Vec::new();
    for i in 0..9 {
        let author = &authors[i % 2];
        let visibility = if i % 3 == 0 { "followers" } else { "public" };
        feed.push(post_as(&server, author, &format!("before {i}"), visibility));
    }
    feed.push(post(&server, &reader, "the reader's own"));

    for limit in [1, 2, 3, 4] {
        let before = newest_first(&feed);
        let mut walked: Vec<u64> = Vec::new();
        let mut during = Vec::new();
        let mut url = format!("/v1/timelines/home?limit={limit}");
        for page in 0..100 {
            let resp = server.get(&url, reader.auth());
            resp.expect(200);
            check_page_links(&resp, "/v1/timelines/home", limit);
            walked.extend(item_ids(&resp));
            // New posts between pages, on both shards.
            let id = post(&server, &authors[page % 2], &format!("during {page}"));
            during.push(id);
            feed.push(id);
            match next_cursor(&resp) {
                Some(next) => url = format!("/v1/timelines/home?limit={limit}&max_id={next}"),
                None => break,
            }
        }
        assert_eq!(
            walked.windows(2).find(|w| w[0] <= w[1]),
            None,
            "limit {limit}: not strictly newest first: {walked:?}"
        );
        let old: Vec<u64> = walked
            .iter()
            .copied()
            .filter(|id| !during.contains(id))
            .collect();
        assert_eq!(
            old, before,
            "limit {limit}: every earlier post exactly once"
        );
        // What arrived meanwhile is above the first page: min_id finds it, newest first.
        let top = before[0];
        let resp = server.get(
            &format!("/v1/timelines/home?min_id={top}&limit=100"),
            reader.auth(),
        );
        resp.expect(200);
        let newer: Vec<u64> = feed.iter().copied().filter(|id| *id > top).collect();
        assert_eq!(item_ids(&resp), newest_first(&newer), "home min_id={top}");
        // The author's timeline the same way (a post made during the walk is newer than
        // every post the walk has yet to reach, so it never shows up).
        for author in &authors {
            let path = format!("/v1/users/{}/posts", author.id());
            let want = timeline(&server, &reader, author.id());
            let mut walked = Vec::new();
            let mut url = format!("{path}?limit={limit}");
            for _ in 0..100 {
                let resp = server.get(&url, reader.auth());
                resp.expect(200);
                walked.extend(item_ids(&resp));
                feed.push(post(&server, author, "during the timeline walk"));
                match next_cursor(&resp) {
                    Some(next) => url = format!("{path}?limit={limit}&max_id={next}"),
                    None => break,
                }
            }
            assert_eq!(walked, want, "{path} limit {limit}");
        }
    }
}

#[test]
fn timeline_pages_skip_invisible_posts_without_losing_any() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let stranger = server.member_on_shard(b);
        let follower = server.member_on_shard(b);
        follow(&server, &follower, author.id());
        let mut all = Vec::new();
        let mut public = Vec::new();
        for i in 0..9 {
            let followers_only = i % 2 == 1;
            let vis = if followers_only {
                "followers"
            } else {
                "public"
            };
            let id = post_as(&server, &author, &format!("p{i}"), vis);
            all.push(id);
            if !followers_only {
                public.push(id);
            }
        }
        let path = format!("/v1/users/{}/posts", author.id());
        for limit in [1, 2, 3] {
            assert_eq!(
                server.walk_posts(&path, &follower.token, limit),
                newest_first(&all),
                "follower, limit {limit}"
            );
            assert_eq!(
                server.walk_posts(&path, &stranger.token, limit),
                newest_first(&public),
                "stranger, limit {limit}: public posts hidden behind followers-only ones"
            );
        }
    }
}

#[test]
fn pagination_refuses_bad_values() {
    let server = Server::start(&[]);
    let user = server.member_on_shard(0);
    let other = server.member_on_shard(1);
    post(&server, &other, "something");
    for path in [
        "/v1/timelines/home".to_string(),
        format!("/v1/users/{}/posts", other.id()),
        format!("/v1/users/{}/posts", user.id()),
    ] {
        for q in [
            "limit=0",
            "limit=101",
            "limit=-1",
            "limit=abc",
            "limit=",
            "limit=2.5",
        ] {
            server
                .get(&format!("{path}?{q}"), user.auth())
                .expect_error(400, "invalid_limit");
        }
        for q in [
            "max_id=abc",
            "max_id=-5",
            "max_id=",
            "max_id=1.5",
            "max_id=18446744073709551616",
            "min_id=x",
            "min_id=-1",
            "limit=5&min_id=zz",
        ] {
            server
                .get(&format!("{path}?{q}"), user.auth())
                .expect_error(400, "invalid_cursor");
        }
        for q in ["limit=1", "limit=100", "max_id=1", "min_id=0"] {
            server.get(&format!("{path}?{q}"), user.auth()).expect(200);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn every_social_route_needs_a_token() {
    let server = Server::start(&[]);
    let user = server.member_on_shard(0);
    let other = server.member_on_shard(1);
    let id = other.id();
    let post_id = post(&server, &other, "hello");
    let routes: Vec<(&str, String, Option<Json>)> = vec![
        ("GET", format!("/v1/users/{id}"), None),
        ("GET", format!("/v1/users/@{}", other.name()), None),
        ("POST", format!("/v1/users/{id}/follow"), None),
        ("DELETE", format!("/v1/users/{id}/follow"), None),
        ("GET", format!("/v1/users/{id}/followers"), None),
        ("GET", format!("/v1/users/{id}/following"), None),
        ("POST", format!("/v1/users/{id}/block"), None),
        ("DELETE", format!("/v1/users/{id}/block"), None),
        ("GET", format!("/v1/users/{id}/posts"), None),
        ("POST", "/v1/posts".to_string(), Some(json!({"text": "hi"}))),
        ("GET", format!("/v1/posts/{post_id}"), None),
        ("DELETE", format!("/v1/posts/{post_id}"), None),
        ("GET", "/v1/timelines/home".to_string(), None),
    ];
    for (method, path, body) in &routes {
        server
            .call(method, path, None, body.clone())
            .expect_error(401, "unauthorized");
        server
            .call(method, path, Some("garbage"), body.clone())
            .expect_error(401, "invalid_token");
    }
    // Nothing happened: no follow, no block, no post, no delete.
    assert_eq!(counts(&server, &user, id), (0, 0));
    assert_eq!(timeline(&server, &user, id), [post_id]);
    assert_eq!(home(&server, &user), Vec::<u64>::new());
}

#[test]
fn mute_hides_an_author_from_the_muters_home_feed_only() {
    let server = Server::start(&[]);
    for (a, b) in PAIRS {
        let author = server.member_on_shard(a);
        let muter = server.member_on_shard(b);
        let other = server.member_on_shard(b);
        follow(&server, &muter, author.id());
        follow(&server, &other, author.id());
        let first = post(&server, &author, "before the mute");
        assert_eq!(home(&server, &muter), vec![first]);

        mute(&server, &muter, author.id(), true);
        // Read once: the muter's feed head is made again, without the author.
        assert!(home(&server, &muter).is_empty());
        let second = post(&server, &author, "after the mute");
        assert!(
            home(&server, &muter).is_empty(),
            "a muted author stays out of the feed, its new posts too"
        );
        assert_eq!(
            home(&server, &other),
            vec![second, first],
            "others are not affected"
        );
        // Muting is not blocking: the profile and the timeline stay readable.
        profile(&server, &muter, author.id()).expect(200);
        assert_eq!(timeline(&server, &muter, author.id()), vec![second, first]);

        mute(&server, &muter, author.id(), false);
        assert_eq!(home(&server, &muter), vec![second, first]);

        let resp = server.call(
            "POST",
            &format!("/v1/users/{}/mute", muter.id()),
            muter.auth(),
            None,
        );
        resp.expect_error(422, "cannot_mute_self");
        server
            .call("POST", "/v1/users/999/mute", muter.auth(), None)
            .expect_error(404, "not_found");
    }
}
