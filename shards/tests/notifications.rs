//! Proves the notifications of docs/api-contract.md (issue 4) against the real `nova` process
//! with 2 shards, actor and recipient on the same shard and on different shards: follows,
//! likes of posts and comments, comments, replies and mentions notify once (coalesced),
//! never for one's own action nor from a blocked or muted actor; the list pages and filters,
//! marks read and counts unread; nobody reads another's notifications.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

/// Actor and recipient on different shards both ways, and on the same shard.
const PAIRS: [(u32, u32); 4] = [(0, 1), (1, 0), (0, 0), (1, 1)];
/// Notices for another shard are delivered right after the commit; give them this long.
const SETTLE: Duration = Duration::from_secs(10);

fn comment(server: &Server, author: &Member, post_id: u64, reply_to: Option<u64>) -> u64 {
    let body = match reply_to {
        Some(parent) => json!({"text": "a reply", "reply_to": parent.to_string()}),
        None => json!({"text": "a comment"}),
    };
    let resp = server.post(
        &format!("/v1/posts/{post_id}/comments"),
        author.auth(),
        body,
    );
    resp.expect(201);
    parse_id(resp.at("comment.id"))
}

fn items(server: &Server, who: &Member, query: &str) -> Vec<Json> {
    let resp = server.get(&format!("/v1/notifications{query}"), who.auth());
    resp.expect(200);
    resp.at("items").as_array().expect("items").clone()
}

fn unread(server: &Server, who: &Member) -> u64 {
    let resp = server.get("/v1/notifications/unread_count", who.auth());
    resp.expect(200);
    resp.at("unread").as_u64().expect("unread is a number")
}

fn field<'a>(item: &'a Json, path: &str) -> &'a str {
    at(item, path)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no string `{path}` in {item:?}"))
}

/// The notifications of `who` of `kind`, as (actor id, subject id) pairs.
fn of_kind(server: &Server, who: &Member, kind: &str) -> Vec<(u64, Option<u64>)> {
    items(server, who, "?limit=100")
        .iter()
        .filter(|n| field(n, "type") == kind)
        .map(|n| {
            let actor = field(n, "actor.id").parse().unwrap();
            let subject = at(n, "subject.id")
                .and_then(|v| v.as_str())
                .map(|s| s.parse().unwrap());
            (actor, subject)
        })
        .collect()
}

/// Waits until `who` has `want` notifications of `kind` (they may come from another shard).
fn wait_for(server: &Server, who: &Member, kind: &str, want: usize) -> Vec<(u64, Option<u64>)> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = of_kind(server, who, kind);
        if got.len() >= want || Instant::now() > deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every notification has its fields in their types.
fn check_item(n: &Json) {
    assert!(parse_id(n.get("id").expect("id")) > 0);
    assert!(!field(n, "type").is_empty());
    assert!(is_rfc3339_millis(field(n, "created_at")), "{n:?}");
    assert!(n.get("read").and_then(|r| r.as_bool()).is_some(), "{n:?}");
}

#[test]
fn follows_likes_comments_replies_and_mentions_notify_once() {
    let server = Server::start(&[]);
    for (actor_shard, recipient_shard) in PAIRS {
        let actor = server.member_on_shard(actor_shard);
        let recipient = server.member_on_shard(recipient_shard);
        let case = format!("actor on {actor_shard}, recipient on {recipient_shard}");

        // Follow: on the followee's shard; following again, or after an unfollow, coalesces.
        server.follow(actor.auth(), recipient.id());
        server
            .delete(
                &format!("/v1/users/{}/follow", recipient.id()),
                actor.auth(),
            )
            .expect(200);
        server.follow(actor.auth(), recipient.id());
        assert_eq!(
            of_kind(&server, &recipient, "follow"),
            vec![(actor.id(), None)],
            "{case}"
        );
        let first = &items(&server, &recipient, "")[0];
        check_item(first);
        assert_eq!(field(first, "actor.username"), actor.name(), "{case}");
        assert!(first.get("subject").unwrap().is_null(), "{case}");
        // The actor's display name as it is now, also on what it caused before.
        let renamed = format!("Renamed {}", actor.name());
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                actor.auth(),
                Some(json!({ "display_name": renamed.as_str() })),
            )
            .expect(200);
        let first = &items(&server, &recipient, "")[0];
        assert_eq!(field(first, "actor.display_name"), renamed, "{case}");

        // Like of a post: like, unlike, like notifies once.
        let p = server.new_post(&recipient, "like me");
        for method in ["POST", "DELETE", "POST"] {
            server
                .call(method, &format!("/v1/posts/{p}/like"), actor.auth(), None)
                .expect(200);
        }
        assert_eq!(
            of_kind(&server, &recipient, "like"),
            vec![(actor.id(), Some(p))],
            "{case}"
        );

        // A comment on the recipient's post.
        let c = comment(&server, &actor, p, None);
        assert_eq!(
            of_kind(&server, &recipient, "comment"),
            vec![(actor.id(), Some(c))],
            "{case}"
        );
        let n = items(&server, &recipient, "?types=comment");
        assert_eq!(field(&n[0], "subject.type"), "comment");
        assert_eq!(field(&n[0], "subject.post_id"), p.to_string());

        // A reply to the recipient's comment on a third user's post (on the actor's shard,
        // so the post's shard differs from the recipient's when they differ), and a like of
        // that comment: the comment's author lives wherever the recipient lives.
        let third = server.member_on_shard(actor_shard);
        let q = server.new_post(&third, "third's post");
        let rc = comment(&server, &recipient, q, None);
        let reply = comment(&server, &actor, q, Some(rc));
        assert_eq!(
            wait_for(&server, &recipient, "reply", 1),
            vec![(actor.id(), Some(reply))],
            "{case}"
        );
        server
            .post(&format!("/v1/comments/{rc}/like"), actor.auth(), json!({}))
            .expect(200);
        let likes = wait_for(&server, &recipient, "like", 2);
        assert!(likes.contains(&(actor.id(), Some(rc))), "{case}: {likes:?}");
        // The post's author heard of both comments once, not of the reply as a reply.
        let mut heard = wait_for(&server, &third, "comment", 2);
        heard.sort();
        let mut want = vec![(recipient.id(), Some(rc)), (actor.id(), Some(reply))];
        want.sort();
        assert_eq!(heard, want, "{case}");
        assert!(of_kind(&server, &third, "reply").is_empty(), "{case}");

        // A mention, where the post is applied on the recipient's shard.
        let m = server.new_post(
            &actor,
            &format!("hello @{} and @{}", recipient.name(), actor.name()),
        );
        assert_eq!(
            wait_for(&server, &recipient, "mention", 1),
            vec![(actor.id(), Some(m))],
            "{case}"
        );
        assert!(
            of_kind(&server, &actor, "mention").is_empty(),
            "no self-mention: {case}"
        );

        // One's own actions notify nobody.
        server
            .post(&format!("/v1/posts/{p}/like"), recipient.auth(), json!({}))
            .expect(200);
        comment(&server, &recipient, p, None);
        let before = items(&server, &recipient, "?limit=100").len();
        assert_eq!(
            before,
            6,
            "{case}: {:?}",
            items(&server, &recipient, "?limit=100")
        );
        assert_eq!(unread(&server, &recipient), 6, "{case}");
        // Nothing notifies the actor, who only acted (and mentioned itself).
        assert!(items(&server, &actor, "").is_empty(), "{case}");
    }
}

#[test]
fn muted_and_blocked_actors_cause_none() {
    let server = Server::start(&[]);
    for (actor_shard, recipient_shard) in PAIRS {
        let case = format!("actor on {actor_shard}, recipient on {recipient_shard}");
        let actor = server.member_on_shard(actor_shard);
        let recipient = server.member_on_shard(recipient_shard);
        let p = server.new_post(&recipient, "a post");
        let third = server.member_on_shard(actor_shard);
        let q = server.new_post(&third, "third's post");
        let rc = comment(&server, &recipient, q, None);

        server
            .post(
                &format!("/v1/users/{}/mute", actor.id()),
                recipient.auth(),
                json!({}),
            )
            .expect(200);
        server
            .post(&format!("/v1/posts/{p}/like"), actor.auth(), json!({}))
            .expect(200);
        comment(&server, &actor, p, None);
        comment(&server, &actor, q, Some(rc));
        server
            .post(&format!("/v1/comments/{rc}/like"), actor.auth(), json!({}))
            .expect(200);
        server.follow(actor.auth(), recipient.id());
        server.new_post(&actor, &format!("hi @{}", recipient.name()));

        // Blocked: a mention still names the user, and nothing reaches it.
        let blocked = server.member_on_shard(actor_shard);
        server
            .post(
                &format!("/v1/users/{}/block", blocked.id()),
                recipient.auth(),
                json!({}),
            )
            .expect(200);
        server.new_post(&blocked, &format!("hey @{}", recipient.name()));

        // A control actor in the same positions is heard (so the silence above is not just
        // slowness): its reply and comment like cross shards like the muted actor's did.
        let control = server.member_on_shard(actor_shard);
        comment(&server, &control, q, Some(rc));
        server
            .post(
                &format!("/v1/comments/{rc}/like"),
                control.auth(),
                json!({}),
            )
            .expect(200);
        let got = wait_for(&server, &recipient, "like", 1);
        assert_eq!(got, vec![(control.id(), Some(rc))], "{case}");
        wait_for(&server, &recipient, "reply", 1);
        let all = items(&server, &recipient, "?limit=100");
        let actors: Vec<&str> = all.iter().map(|n| field(n, "actor.id")).collect();
        assert!(
            actors.iter().all(|a| *a == control.id().to_string()),
            "{case}: only the control actor notifies: {all:?}"
        );
        assert_eq!(all.len(), 2, "{case}: {all:?}");
    }
}

#[test]
fn pages_filters_read_marks_and_authorization() {
    let server = Server::start(&[]);
    let recipient = server.member_on_shard(0);
    let actor = server.member_on_shard(1);
    let other = server.member_on_shard(0);
    let posts: Vec<u64> = (0..5)
        .map(|i| server.new_post(&recipient, &format!("p{i}")))
        .collect();
    for p in &posts {
        server
            .post(&format!("/v1/posts/{p}/like"), actor.auth(), json!({}))
            .expect(200);
    }
    server.follow(actor.auth(), recipient.id());
    comment(&server, &actor, posts[0], None);

    // Pages of 3, newest first, with `next` and a Link header that carries the filter.
    let all = server.walk_posts("/v1/notifications", &recipient.token, 3);
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let first = server.get("/v1/notifications?limit=3&types=like", recipient.auth());
    first.expect(200);
    let link = first.header("link").expect("a Link header on a full page");
    assert!(
        link.contains("rel=\"next\"") && link.contains("types=like"),
        "{link}"
    );
    let likes = server.walk_posts("/v1/notifications?types=like", &recipient.token, 2);
    assert_eq!(likes.len(), 5);
    let two = items(&server, &recipient, "?types=follow,comment");
    let kinds: Vec<&str> = two.iter().map(|n| field(n, "type")).collect();
    assert_eq!(kinds, vec!["comment", "follow"]);
    let rest = items(&server, &recipient, "?exclude_types=like,follow");
    assert_eq!(rest.len(), 1);
    // A long list with repeats still counts every name in it.
    let many = format!("?types={}comment", "like,".repeat(40));
    let kinds: Vec<String> = items(&server, &recipient, &many)
        .iter()
        .map(|n| field(n, "type").to_string())
        .collect();
    assert!(kinds.contains(&"comment".to_string()), "{kinds:?}");
    for bad in [
        "?types=likes",
        "?exclude_types=,nope",
        &format!("?types={}nope", "like,".repeat(40)),
        "?limit=0",
        "?limit=101",
        "?max_id=x",
    ] {
        let resp = server.get(&format!("/v1/notifications{bad}"), recipient.auth());
        assert_eq!(resp.status, 400, "{bad}: {}", resp.text());
    }

    // Read marks: some ids, up to an id, all; counts follow.
    assert_eq!(unread(&server, &recipient), 7);
    let ids: Vec<String> = all[..2].iter().map(|i| i.to_string()).collect();
    let resp = server.post(
        "/v1/notifications/read",
        recipient.auth(),
        json!({ "ids": ids }),
    );
    resp.expect(200);
    assert_eq!(resp.at("marked").as_u64(), Some(2));
    assert_eq!(resp.at("unread").as_u64(), Some(5));
    let n = items(&server, &recipient, "?limit=100");
    let read: Vec<bool> = n
        .iter()
        .map(|i| i.get("read").unwrap().as_bool().unwrap())
        .collect();
    assert_eq!(read, vec![true, true, false, false, false, false, false]);
    let resp = server.post(
        "/v1/notifications/read",
        recipient.auth(),
        json!({ "up_to": all[5].to_string() }),
    );
    // Up to and including that id: the two oldest.
    assert_eq!(resp.at("marked").as_u64(), Some(2));
    assert_eq!(unread(&server, &recipient), 3);

    // Nobody reads or marks another's notifications: they are keyed by the token's user.
    assert!(items(&server, &other, "").is_empty());
    assert_eq!(unread(&server, &other), 0);
    let resp = server.post(
        "/v1/notifications/read",
        other.auth(),
        json!({ "all": true }),
    );
    assert_eq!(resp.at("marked").as_u64(), Some(0));
    let resp = server.post(
        "/v1/notifications/read",
        other.auth(),
        json!({ "ids": [all[3].to_string()] }),
    );
    assert_eq!(resp.at("marked").as_u64(), Some(0));
    assert_eq!(unread(&server, &recipient), 3);
    for (method, path) in [
        ("GET", "/v1/notifications"),
        ("GET", "/v1/notifications/unread_count"),
        ("POST", "/v1/notifications/read"),
    ] {
        server
            .call(method, path, None, Some(json!({"all": true})))
            .expect_error(401, "unauthorized");
    }

    let resp = server.post(
        "/v1/notifications/read",
        recipient.auth(),
        json!({ "all": true }),
    );
    assert_eq!(resp.at("marked").as_u64(), Some(3));
    assert_eq!(unread(&server, &recipient), 0);
    for bad in [
        json!({}),
        json!({"all": true, "ids": ["1"]}),
        json!({"all": false}),
        json!({"ids": []}),
        json!({"ids": ["x"]}),
        json!({"up_to": "y"}),
        json!({"everything": true}),
    ] {
        let resp = server.post("/v1/notifications/read", recipient.auth(), bad.clone());
        assert_eq!(resp.status, 422, "{bad:?}: {}", resp.text());
    }
}

/// Composes that arrive together are written together on their authors' shard: each is
/// answered with its own post (or, for a raced `Idempotency-Key`, with the one post made
/// for it), each post is in its author's timeline once, and each mentioned user, on either
/// shard, hears once per post however often it names them.
#[test]
fn composes_at_once_notify_each_mention_once() {
    let server = Server::start(&[]);
    let authors = [server.member_on_shard(0), server.member_on_shard(1)];
    let mentioned = [server.member_on_shard(0), server.member_on_shard(1)];
    let text = format!(
        "hi @{} and @{} and again @{}",
        mentioned[0].name(),
        mentioned[1].name(),
        mentioned[0].name()
    );
    let key = unique_name("race-");
    let (raced, plain): (Vec<u64>, Vec<(usize, u64)>) = thread::scope(|scope| {
        let raced: Vec<_> = (0..4)
            .map(|_| {
                let (server, author, text, key) = (&server, &authors[0], &text, &key);
                scope.spawn(move || {
                    let req = Req::post("/v1/posts")
                        .json(&json!({ "text": text }))
                        .bearer(&author.token)
                        .header("Idempotency-Key", key);
                    let resp = server.req(&req);
                    resp.expect(201);
                    parse_id(resp.at("post.id"))
                })
            })
            .collect();
        let plain: Vec<_> = (0..8)
            .map(|i| {
                let (server, author, text) = (&server, &authors[i % 2], &text);
                scope.spawn(move || {
                    (0..4)
                        .map(|_| (i % 2, server.new_post(author, text)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        (
            raced.into_iter().map(|h| h.join().unwrap()).collect(),
            plain.into_iter().flat_map(|h| h.join().unwrap()).collect(),
        )
    });
    assert!(
        raced.iter().all(|id| *id == raced[0]),
        "one post for one key: {raced:?}"
    );
    let mut want_by_author = [vec![raced[0]], Vec::new()];
    for (author, id) in &plain {
        want_by_author[*author].push(*id);
    }
    for (author, want) in authors.iter().zip(&mut want_by_author) {
        want.sort_unstable_by(|a, b| b.cmp(a));
        let timeline = server.walk_posts(
            &format!("/v1/users/{}/posts", author.id()),
            &author.token,
            100,
        );
        assert_eq!(&timeline, want, "timeline of {}", author.name());
    }
    let posts = 1 + plain.len();
    for who in &mentioned {
        let mut got: Vec<u64> = wait_for(&server, who, "mention", posts)
            .into_iter()
            .map(|(_, subject)| subject.expect("a mention names its post"))
            .collect();
        got.sort_unstable();
        let mut want: Vec<u64> = want_by_author.concat();
        want.sort_unstable();
        assert_eq!(got, want, "mentions of {}", who.name());
    }
}
