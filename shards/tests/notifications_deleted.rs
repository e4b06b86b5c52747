//! Proves that notifications about a post or comment go when it is deleted (issue 4), against
//! the real `nova` process with 2 shards, actor and recipient on the same shard and on
//! different shards: likes, comments, replies and mentions are no longer listed nor counted
//! unread once their post or comment is deleted, whoever deletes it, while notifications
//! about what still exists stay.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

/// Actor and recipient on different shards both ways, and on the same shard.
const PAIRS: [(u32, u32); 4] = [(0, 1), (1, 0), (0, 0), (1, 1)];
/// Notices and retractions for another shard travel through the outbox (a comment's
/// deletion is picked up by the notification sweep, every second); give them this long.
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

/// `who`'s notifications as (type, subject id), sorted.
fn listed(server: &Server, who: &Member) -> Vec<(String, u64)> {
    let resp = server.get("/v1/notifications?limit=100", who.auth());
    resp.expect(200);
    let mut out: Vec<(String, u64)> = resp
        .at("items")
        .as_array()
        .expect("items")
        .iter()
        .map(|n| {
            let kind = at(n, "type").and_then(|v| v.as_str()).unwrap().to_string();
            let subject = at(n, "subject.id")
                .and_then(|v| v.as_str())
                .map_or(0, |s| s.parse().unwrap());
            (kind, subject)
        })
        .collect();
    out.sort();
    out
}

fn unread(server: &Server, who: &Member) -> u64 {
    let resp = server.get("/v1/notifications/unread_count", who.auth());
    resp.expect(200);
    resp.at("unread").as_u64().expect("unread is a number")
}

/// Waits until `who`'s notifications are `want` (sorted); returns what was listed last.
fn wait_until(server: &Server, who: &Member, want: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut want: Vec<(String, u64)> = want.iter().map(|(k, s)| (k.to_string(), *s)).collect();
    want.sort();
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = listed(server, who);
        if got == want || Instant::now() > deadline {
            return got;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn want(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = list.iter().map(|(k, s)| (k.to_string(), *s)).collect();
    out.sort();
    out
}

#[test]
fn deleting_a_post_or_comment_takes_its_notifications_across_shards() {
    let server = Server::start(&[]);
    for (actor_shard, recipient_shard) in PAIRS {
        let actor = server.member_on_shard(actor_shard);
        let recipient = server.member_on_shard(recipient_shard);
        // Lives with the actor, so its post's shard is the recipient's only when they share.
        let third = server.member_on_shard(actor_shard);
        let case = format!("actor on {actor_shard}, recipient on {recipient_shard}");

        // The recipient's post: liked and commented twice by the actor.
        let p = server.new_post(&recipient, "mine");
        server
            .post(&format!("/v1/posts/{p}/like"), actor.auth(), json!({}))
            .expect(200);
        let c1 = comment(&server, &actor, p, None);
        let c2 = comment(&server, &actor, p, None);
        // The recipient's comment on the third user's post: replied to and liked by the actor
        // (notices that travel to the recipient's shard when it differs).
        let q = server.new_post(&third, "third's post");
        let rc = comment(&server, &recipient, q, None);
        let reply = comment(&server, &actor, q, Some(rc));
        server
            .post(&format!("/v1/comments/{rc}/like"), actor.auth(), json!({}))
            .expect(200);
        // A mention, made where the recipient lives when the post arrives there.
        let m = server.new_post(&actor, &format!("hi @{}", recipient.name()));
        let all = [
            ("like", p),
            ("comment", c1),
            ("comment", c2),
            ("reply", reply),
            ("like", rc),
            ("mention", m),
        ];
        assert_eq!(wait_until(&server, &recipient, &all), want(&all), "{case}");
        assert_eq!(unread(&server, &recipient), 6, "{case}");

        // The actor deletes one comment on the recipient's post: that notice goes, the
        // other comment's stays.
        server
            .delete(&format!("/v1/comments/{c1}"), actor.auth())
            .expect(204);
        let left = [
            ("like", p),
            ("comment", c2),
            ("reply", reply),
            ("like", rc),
            ("mention", m),
        ];
        assert_eq!(
            wait_until(&server, &recipient, &left),
            want(&left),
            "{case}"
        );
        assert_eq!(unread(&server, &recipient), 5, "{case}");

        // The reply, deleted by its author on the post's shard (the actor's).
        server
            .delete(&format!("/v1/comments/{reply}"), actor.auth())
            .expect(204);
        let left = [("like", p), ("comment", c2), ("like", rc), ("mention", m)];
        assert_eq!(
            wait_until(&server, &recipient, &left),
            want(&left),
            "{case}"
        );

        // The mentioning post, deleted by the actor.
        server
            .delete(&format!("/v1/posts/{m}"), actor.auth())
            .expect(204);
        let left = [("like", p), ("comment", c2), ("like", rc)];
        assert_eq!(
            wait_until(&server, &recipient, &left),
            want(&left),
            "{case}"
        );

        // The third user deletes its post: the recipient's comment on it goes, and with it
        // the like of that comment the recipient was told of.
        server
            .delete(&format!("/v1/posts/{q}"), third.auth())
            .expect(204);
        let left = [("like", p), ("comment", c2)];
        assert_eq!(
            wait_until(&server, &recipient, &left),
            want(&left),
            "{case}"
        );
        // The third user heard of the recipient's comment on its post: gone too.
        assert_eq!(wait_until(&server, &third, &[]), want(&[]), "{case}");

        // The recipient deletes its own post: nothing about it is left.
        server
            .delete(&format!("/v1/posts/{p}"), recipient.auth())
            .expect(204);
        assert_eq!(wait_until(&server, &recipient, &[]), want(&[]), "{case}");
        assert_eq!(unread(&server, &recipient), 0, "{case}");

        // A new like of a new post still notifies (nothing stale blocks it).
        let p2 = server.new_post(&recipient, "again");
        server
            .post(&format!("/v1/posts/{p2}/like"), actor.auth(), json!({}))
            .expect(200);
        assert_eq!(
            wait_until(&server, &recipient, &[("like", p2)]),
            want(&[("like", p2)]),
            "{case}"
        );
    }
}
