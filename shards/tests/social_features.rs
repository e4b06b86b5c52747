//! Proves the rest of the social API of docs/api-contract.md (issue 3) against the real `nova`
//! process with users on both shards: private accounts and follow requests, settings, post
//! edits reaching every feed copy, views counted once per viewer and kept across a restart,
//! feed preferences, and the backfill of a new follower's feed.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

/// (owner, other) shards: different both ways, and the same.
const PAIRS: [(u32, u32); 3] = [(0, 1), (1, 0), (1, 1)];

fn post(server: &Server, author: &Member, text: &str, visibility: &str) -> u64 {
    let resp = server.post(
        "/v1/posts",
        author.auth(),
        json!({"text": text, "visibility": visibility}),
    );
    resp.expect(201);
    parse_id(resp.at("post.id"))
}

fn reply(server: &Server, author: &Member, text: &str, to: u64) -> u64 {
    let resp = server.post(
        "/v1/posts",
        author.auth(),
        json!({"text": text, "reply_to": to.to_string()}),
    );
    resp.expect(201);
    parse_id(resp.at("post.id"))
}

fn follow(server: &Server, follower: &Member, followee: u64) -> Json {
    let resp = server.call(
        "POST",
        &format!("/v1/users/{followee}/follow"),
        follower.auth(),
        None,
    );
    resp.expect(200);
    resp.json().clone()
}

fn home(server: &Server, viewer: &Member) -> Vec<u64> {
    server.walk_posts("/v1/timelines/home", &viewer.token, 100)
}

fn set(server: &Server, member: &Member, path: &str, body: Json) -> Resp {
    let resp = server.call("PATCH", path, member.auth(), Some(body));
    resp.expect(200);
    resp
}

fn requests(server: &Server, owner: &Member) -> Vec<u64> {
    let resp = server.get("/v1/me/follow-requests", owner.auth());
    resp.expect(200);
    resp.at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|item| parse_id(at(item, "user.id").unwrap()))
        .collect()
}

fn answer(server: &Server, owner: &Member, requester: u64, verb: &str) -> Resp {
    server.call(
        "POST",
        &format!("/v1/me/follow-requests/{requester}/{verb}"),
        owner.auth(),
        None,
    )
}

/// Who `owner`'s follow-request notifications are from, newest first.
fn request_notices(server: &Server, owner: &Member) -> Vec<u64> {
    let resp = server.get("/v1/notifications?types=follow_request", owner.auth());
    resp.expect(200);
    resp.at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|item| parse_id(at(item, "actor.id").unwrap()))
        .collect()
}

fn profile_count(server: &Server, viewer: &Member, id: u64, key: &str) -> u64 {
    let resp = server.get(&format!("/v1/users/{id}"), viewer.auth());
    resp.expect(200);
    resp.at(&format!("user.{key}")).as_u64().unwrap()
}

#[test]
fn private_accounts_approve_each_follower() {
    let server = Server::start(&[]);
    for (owner_shard, other_shard) in PAIRS {
        let owner = server.member_on_shard(owner_shard);
        let asker = server.member_on_shard(other_shard);
        let bystander = server.member_on_shard(other_shard);

        let resp = server.get("/v1/me/settings", owner.auth());
        resp.expect(200);
        assert_eq!(
            resp.json(),
            &json!({"settings": {"private": false, "messages_from": "everyone", "email_digest": "off"}})
        );
        let resp = set(&server, &owner, "/v1/me/settings", json!({"private": true}));
        assert_eq!(resp.at("settings.private"), &json!(true));
        assert_eq!(resp.str("settings.messages_from"), "everyone");
        let resp = server.get(&format!("/v1/users/{}", owner.id()), asker.auth());
        resp.expect(200);
        assert_eq!(resp.at("user.private"), &json!(true));

        // Before approval: a public post of a private account is for followers only.
        let earlier = post(&server, &owner, "before anyone follows", "public");
        server
            .get(&format!("/v1/posts/{earlier}"), asker.auth())
            .expect_error(404, "not_found");
        let resp = server.get(&format!("/v1/users/{}/posts", owner.id()), asker.auth());
        resp.expect(200);
        assert!(item_ids(&resp).is_empty(), "{}", resp.what_happened());

        // The request waits, idempotently.
        for _ in 0..2 {
            assert_eq!(
                follow(&server, &asker, owner.id()),
                json!({"following": false, "requested": true})
            );
        }
        assert_eq!(requests(&server, &owner), vec![asker.id()]);
        assert_eq!(
            profile_count(&server, &owner, owner.id(), "followers_count"),
            0
        );
        assert_eq!(request_notices(&server, &owner), vec![asker.id()]);
        assert_eq!(
            profile_count(&server, &asker, asker.id(), "following_count"),
            0
        );
        assert!(!home(&server, &asker).contains(&earlier));

        // Only the addressee answers its requests.
        answer(&server, &bystander, asker.id(), "approve").expect_error(404, "not_found");
        answer(&server, &owner, bystander.id(), "approve").expect_error(404, "not_found");

        answer(&server, &owner, asker.id(), "approve").expect(204);
        answer(&server, &owner, asker.id(), "approve").expect_error(404, "not_found");
        assert!(requests(&server, &owner).is_empty());
        assert_eq!(
            profile_count(&server, &owner, owner.id(), "followers_count"),
            1
        );
        assert_eq!(
            profile_count(&server, &asker, asker.id(), "following_count"),
            1
        );
        server
            .get(&format!("/v1/posts/{earlier}"), asker.auth())
            .expect(200);
        assert!(
            home(&server, &asker).contains(&earlier),
            "approval backfills the follower's feed"
        );
        let later = post(&server, &owner, "after approval", "public");
        assert_eq!(home(&server, &asker)[0], later);
        // Following again is a no-op.
        assert_eq!(
            follow(&server, &asker, owner.id()),
            json!({"following": true, "requested": false})
        );

        // Reject: dropped, nothing visible, and it may ask again.
        follow(&server, &bystander, owner.id());
        assert_eq!(requests(&server, &owner), vec![bystander.id()]);
        assert_eq!(
            request_notices(&server, &owner),
            vec![bystander.id(), asker.id()]
        );
        answer(&server, &owner, bystander.id(), "reject").expect(204);
        assert!(requests(&server, &owner).is_empty());
        // A refused request's notice goes with it; an approved one's stays.
        assert_eq!(request_notices(&server, &owner), vec![asker.id()]);
        server
            .get(&format!("/v1/posts/{later}"), bystander.auth())
            .expect_error(404, "not_found");

        // Withdraw: unfollowing drops the pending request.
        follow(&server, &bystander, owner.id());
        assert_eq!(requests(&server, &owner), vec![bystander.id()]);
        server
            .delete(
                &format!("/v1/users/{}/follow", owner.id()),
                bystander.auth(),
            )
            .expect(200);
        assert!(requests(&server, &owner).is_empty());
        // Withdrawn: its notice goes too (asked again, it was new again).
        assert_eq!(request_notices(&server, &owner), vec![asker.id()]);

        // A block drops a pending request and its notice, whichever side blocks.
        follow(&server, &bystander, owner.id());
        server
            .call(
                "POST",
                &format!("/v1/users/{}/block", bystander.id()),
                owner.auth(),
                None,
            )
            .expect(200);
        assert!(requests(&server, &owner).is_empty());
        assert_eq!(request_notices(&server, &owner), vec![asker.id()]);
        let third = server.member_on_shard(other_shard);
        follow(&server, &third, owner.id());
        server
            .call(
                "POST",
                &format!("/v1/users/{}/block", owner.id()),
                third.auth(),
                None,
            )
            .expect(200);
        assert!(requests(&server, &owner).is_empty());
        assert_eq!(request_notices(&server, &owner), vec![asker.id()]);

        // Going public approves what is still pending.
        let fourth = server.member_on_shard(other_shard);
        follow(&server, &fourth, owner.id());
        assert_eq!(requests(&server, &owner), vec![fourth.id()]);
        set(
            &server,
            &owner,
            "/v1/me/settings",
            json!({"private": false}),
        )
        .expect(200);
        assert!(requests(&server, &owner).is_empty());
        assert_eq!(
            profile_count(&server, &fourth, fourth.id(), "following_count"),
            1
        );
        assert!(
            home(&server, &fourth).contains(&later),
            "approval backfills"
        );
        set(&server, &owner, "/v1/me/settings", json!({"private": true})).expect(200);
    }
}

#[test]
fn settings_validate_and_persist() {
    let server = Server::start(&[]);
    let member = server.member_on_shard(1);
    for body in [
        json!({"messages_from": "aliens"}),
        json!({"private": "yes"}),
        json!({"private": true, "extra": 1}),
        json!({"email_digest": "hourly"}),
        json!({"email_digest": true}),
    ] {
        let resp = server.call("PATCH", "/v1/me/settings", member.auth(), Some(body));
        assert_eq!(resp.status, 422, "{}", resp.what_happened());
    }
    set(
        &server,
        &member,
        "/v1/me/settings",
        json!({"messages_from": "following", "email_digest": "weekly"}),
    );
    let resp = server.get("/v1/me/settings", member.auth());
    assert_eq!(
        resp.json(),
        &json!({"settings": {"private": false, "messages_from": "following", "email_digest": "weekly"}})
    );
    server
        .get("/v1/me/settings", None)
        .expect_error(401, "unauthorized");
    server
        .get("/v1/me/follow-requests?limit=0", member.auth())
        .expect_error(400, "invalid_limit");
}

#[test]
fn edits_reach_every_copy_of_a_post() {
    let server = Server::start(&[]);
    for (author_shard, reader_shard) in PAIRS {
        let author = server.member_on_shard(author_shard);
        let reader = server.member_on_shard(reader_shard);
        let stranger = server.member_on_shard(reader_shard);
        follow(&server, &reader, author.id());
        let id = post(&server, &author, "hello #old https://old.example", "public");
        assert!(home(&server, &reader).contains(&id));

        let text = format!("bye #new @{} https://new.example/x", reader.name());
        let resp = set(
            &server,
            &author,
            &format!("/v1/posts/{id}"),
            json!({ "text": text.as_str() }),
        );
        assert_eq!(resp.str("post.text"), text);
        assert_eq!(resp.at("post.hashtags"), &json!(["new"]));
        assert_eq!(resp.str("post.urls.0.url"), "https://new.example/x");
        assert_eq!(parse_id(resp.at("post.mentions.0.id")), reader.id());
        assert!(resp.at("post.edited_at").as_str().is_some());

        let resp = server.get(&format!("/v1/posts/{id}"), reader.auth());
        resp.expect(200);
        assert_eq!(resp.str("post.text"), text);
        let page = server.get("/v1/timelines/home?limit=5", reader.auth());
        page.expect(200);
        let item = page
            .at("items")
            .as_array()
            .unwrap()
            .iter()
            .find(|p| parse_id(at(p, "id").unwrap()) == id)
            .cloned()
            .expect("edited post in the reader's feed");
        assert_eq!(at(&item, "text").unwrap().as_str(), Some(text.as_str()));

        // Only the author edits, with a valid text.
        let path = format!("/v1/posts/{id}");
        server
            .call(
                "PATCH",
                &path,
                stranger.auth(),
                Some(json!({"text": "mine now"})),
            )
            .expect_error(404, "not_found");
        for bad in [json!({"text": "   "}), json!({"text": "x".repeat(5001)})] {
            server
                .call("PATCH", &path, author.auth(), Some(bad))
                .expect_error(422, "invalid_text");
        }
        server
            .call("PATCH", &path, author.auth(), Some(json!({"txt": "x"})))
            .expect_error(422, "invalid_body");
        server
            .call(
                "PATCH",
                "/v1/posts/4194311",
                author.auth(),
                Some(json!({"text": "nothing there"})),
            )
            .expect_error(404, "not_found");
        // A deleted post cannot be edited.
        server.delete(&path, author.auth()).expect(204);
        server
            .call("PATCH", &path, author.auth(), Some(json!({"text": "late"})))
            .expect_error(404, "not_found");
        assert!(!home(&server, &reader).contains(&id));
    }
}

fn views(server: &Server, viewer: &Member, id: u64) -> u64 {
    let resp = server.get(&format!("/v1/posts/{id}"), viewer.auth());
    resp.expect(200);
    resp.at("post.views_count").as_u64().unwrap()
}

#[test]
fn views_count_once_per_viewer_and_survive_a_restart() {
    let mut server = Server::start(&[]);
    let author = server.member_on_shard(0);
    let near = server.member_on_shard(0);
    let far = server.member_on_shard(1);
    let id = post(&server, &author, "look at me", "public");
    assert_eq!(
        views(&server, &author, id),
        0,
        "the author's own views do not count"
    );
    for _ in 0..3 {
        views(&server, &far, id);
    }
    views(&server, &near, id);
    assert_eq!(views(&server, &author, id), 2);
    // Written within a second or so; then a restart keeps them.
    std::thread::sleep(Duration::from_millis(2500));
    server.restart();
    let author = author.logged_in_again(&server);
    assert_eq!(views(&server, &author, id), 2);
    // The list views carry the count too.
    let resp = server.get(&format!("/v1/users/{}/posts", author.id()), author.auth());
    resp.expect(200);
    assert_eq!(resp.at("items.0.views_count"), &json!(2));
}

#[test]
fn feed_preferences_hide_replies_and_muted_words() {
    let server = Server::start(&[]);
    for (author_shard, reader_shard) in PAIRS {
        let author = server.member_on_shard(author_shard);
        let reader = server.member_on_shard(reader_shard);
        follow(&server, &reader, author.id());
        let plain = post(&server, &author, "a plain post", "public");
        let spoiler = post(&server, &author, "Big SPOILER: it was the butler", "public");
        let spoilers = post(&server, &author, "no spoilers here", "public");
        let answer = reply(&server, &author, "replying to myself", plain);
        let own = post(&server, &reader, "my own spoiler", "public");
        let all = home(&server, &reader);
        for id in [plain, spoiler, spoilers, answer, own] {
            assert!(all.contains(&id));
        }

        let resp = set(
            &server,
            &reader,
            "/v1/me/preferences",
            json!({"hide_replies": true, "muted_words": [" Spoiler ", "spoiler", "Butler"]}),
        );
        assert_eq!(resp.at("preferences.hide_replies"), &json!(true));
        assert_eq!(
            resp.at("preferences.muted_words"),
            &json!(["spoiler", "butler"])
        );
        let filtered = home(&server, &reader);
        assert!(filtered.contains(&plain));
        assert!(filtered.contains(&spoilers), "whole words only");
        assert!(filtered.contains(&own), "one's own posts are never hidden");
        assert!(!filtered.contains(&spoiler));
        assert!(!filtered.contains(&answer));

        set(
            &server,
            &reader,
            "/v1/me/preferences",
            json!({"hide_replies": false, "muted_words": []}),
        );
        assert_eq!(home(&server, &reader), all);
    }
    let member = server.member_on_shard(0);
    let too_many: Vec<String> = (0..21).map(|i| format!("w{i}")).collect();
    for bad in [
        json!({ "muted_words": too_many }),
        json!({"muted_words": [""]}),
        json!({"muted_words": ["x".repeat(41)]}),
        json!({"hide_replies": "yes"}),
    ] {
        let resp = server.call("PATCH", "/v1/me/preferences", member.auth(), Some(bad));
        assert_eq!(resp.status, 422, "{}", resp.what_happened());
    }
}

#[test]
fn a_new_follow_backfills_the_feed() {
    let server = Server::start(&[]);
    for (author_shard, reader_shard) in PAIRS {
        let author = server.member_on_shard(author_shard);
        let reader = server.member_on_shard(reader_shard);
        let public = post(&server, &author, "old public", "public");
        let private = post(&server, &author, "old followers-only", "followers");
        let before = home(&server, &reader);
        assert!(!before.contains(&public));
        assert_eq!(
            follow(&server, &reader, author.id()),
            json!({"following": true, "requested": false})
        );
        let started = Instant::now();
        let after = home(&server, &reader);
        assert!(
            after.contains(&public),
            "backfilled before the follow is answered"
        );
        assert!(
            after.contains(&private),
            "followers-only posts once following"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // An unfollow hides them again; a deleted one leaves the backfilled feed too.
        server
            .delete(&format!("/v1/users/{}/follow", author.id()), reader.auth())
            .expect(200);
        assert!(!home(&server, &reader).contains(&public));
        follow(&server, &reader, author.id());
        server
            .delete(&format!("/v1/posts/{public}"), author.auth())
            .expect(204);
        let feed = home(&server, &reader);
        assert!(!feed.contains(&public));
        assert!(feed.contains(&private));
    }
}
