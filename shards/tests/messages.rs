//! Proves direct messages (issue 4) against the real `nova` process with participants on both
//! shards: conversations and their inboxes, messages with pagination and Idempotency-Key, edit
//! and delete, read receipts and unread counts, typing, leaving, one `message` notification
//! per conversation for each recipient (on either shard), and the rules: only
//! participants see a conversation (404 for anyone else), a block or a recipient's
//! `messages_from` setting refuses a new conversation with 403 `cannot_message`.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use simd_json::json;

fn create(server: &Server, creator: &Member, others: &[&Member]) -> Resp {
    let ids: Vec<String> = others.iter().map(|m| m.id().to_string()).collect();
    server.post(
        "/v1/conversations",
        creator.auth(),
        json!({ "participants": ids }),
    )
}

fn conversation(server: &Server, creator: &Member, others: &[&Member]) -> u64 {
    let resp = create(server, creator, others);
    resp.expect(201);
    parse_id(resp.at("conversation.id"))
}

fn send(server: &Server, sender: &Member, conv: u64, text: &str) -> u64 {
    let resp = server.post(
        &format!("/v1/conversations/{conv}/messages"),
        sender.auth(),
        json!({ "text": text }),
    );
    resp.expect(201);
    assert_eq!(resp.str("message.text"), text);
    assert_eq!(parse_id(resp.at("message.sender.id")), sender.id());
    parse_id(resp.at("message.id"))
}

fn inbox(server: &Server, member: &Member) -> Vec<u64> {
    let resp = server.get("/v1/conversations", member.auth());
    resp.expect(200);
    item_ids(&resp)
}

fn messages(server: &Server, member: &Member, conv: u64) -> Vec<u64> {
    server.walk_posts(
        &format!("/v1/conversations/{conv}/messages"),
        &member.token,
        2,
    )
}

fn unread(server: &Server, member: &Member, conv: u64) -> u64 {
    let resp = server.get(&format!("/v1/conversations/{conv}"), member.auth());
    resp.expect(200);
    resp.at("conversation.unread_count").as_u64().unwrap()
}

#[test]
fn conversations_across_shards() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let c = server.member_on_shard(0);
    let resp = create(&server, &a, &[&b, &c]);
    resp.expect(201);
    let conv = parse_id(resp.at("conversation.id"));
    let people: Vec<u64> = resp
        .at("conversation.participants")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| parse_id(at(p, "id").unwrap()))
        .collect();
    assert_eq!(people, vec![a.id(), b.id(), c.id()]);
    assert_eq!(resp.at("conversation.unread_count"), &json!(0));
    assert_eq!(resp.at("conversation.last_message"), &json!(null));
    // Every participant has it in the inbox when the create is answered.
    for m in [&a, &b, &c] {
        assert_eq!(inbox(&server, m), vec![conv]);
    }

    let m1 = send(&server, &a, conv, "hello from shard 0");
    // Each other participant is notified of it, on its own shard (through the outbox for
    // one on another shard: within moments).
    for m in [&b, &c] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let resp = loop {
            let resp = server.get("/v1/notifications?types=message", m.auth());
            resp.expect(200);
            if !item_ids(&resp).is_empty() || std::time::Instant::now() > deadline {
                break resp;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(
            resp.at("items.0.subject.id")
                .as_str()
                .map(|s| s.parse::<u64>().unwrap()),
            Some(m1),
            "{}",
            resp.text()
        );
        assert_eq!(
            resp.str("items.0.subject.conversation_id"),
            conv.to_string()
        );
    }
    let none = server.get("/v1/notifications?types=message", a.auth());
    assert!(
        item_ids(&none).is_empty(),
        "no notification of one's own message"
    );
    let m2 = send(&server, &b, conv, "hi from shard 1");
    let m3 = send(&server, &c, conv, "and me");
    assert_eq!(messages(&server, &a, conv), vec![m3, m2, m1]);
    assert_eq!(messages(&server, &b, conv), vec![m3, m2, m1]);
    assert_eq!(unread(&server, &a, conv), 2, "own messages count as read");
    assert_eq!(unread(&server, &b, conv), 1);

    // Read receipts.
    let resp = server.post(
        &format!("/v1/conversations/{conv}/read"),
        b.auth(),
        json!({"up_to": m2.to_string()}),
    );
    resp.expect(200);
    assert_eq!(parse_id(resp.at("last_read_id")), m2);
    assert_eq!(unread(&server, &b, conv), 1);
    server
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/read"),
            b.auth(),
            None,
        )
        .expect(200);
    assert_eq!(unread(&server, &b, conv), 0);
    let resp = server.get(&format!("/v1/conversations/{conv}"), a.auth());
    let receipts = resp.at("conversation.read_receipts").as_array().unwrap();
    let of = |user: u64| {
        receipts
            .iter()
            .find(|r| parse_id(at(r, "user_id").unwrap()) == user)
            .and_then(|r| at(r, "last_read_id"))
            .and_then(|v| v.as_str())
            .map(|s| s.parse::<u64>().unwrap())
    };
    assert_eq!(of(b.id()), Some(m3));
    assert_eq!(of(a.id()), Some(m1));
    assert_eq!(parse_id(resp.at("conversation.last_message.id")), m3);

    // Newest activity first: a second conversation with fresh activity comes first.
    let other = conversation(&server, &b, &[&a]);
    assert_eq!(inbox(&server, &a), vec![other, conv]);
    send(&server, &c, conv, "bump");
    assert_eq!(inbox(&server, &a), vec![conv, other]);
    let page = server.get("/v1/conversations?limit=1", a.auth());
    page.expect(200);
    assert_eq!(item_ids(&page), vec![conv]);
    let cursor = page.at("next").as_str().unwrap().to_string();
    let page = server.get(
        &format!("/v1/conversations?limit=1&cursor={cursor}"),
        a.auth(),
    );
    assert_eq!(item_ids(&page), vec![other]);
    server
        .get("/v1/conversations?cursor=nope", a.auth())
        .expect_error(400, "invalid_cursor");

    // A sender's own message moves the sender's inbox, also when the conversation lives on
    // another shard (b is on shard 1, `conv` on shard 0; `other` is on b's shard).
    send(&server, &a, other, "in the pair");
    assert_eq!(inbox(&server, &b), vec![other, conv]);
    send(&server, &b, conv, "my own message moves my inbox");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while inbox(&server, &b) != vec![conv, other] {
        assert!(
            std::time::Instant::now() < deadline,
            "inbox of b: {:?}, want {:?}",
            inbox(&server, &b),
            vec![conv, other]
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(inbox(&server, &a), vec![conv, other]);

    // Typing shows for a while on the conversation.
    server
        .call(
            "POST",
            &format!("/v1/conversations/{conv}/typing"),
            b.auth(),
            None,
        )
        .expect(204);
    let resp = server.get(&format!("/v1/conversations/{conv}"), a.auth());
    assert_eq!(resp.at("conversation.typing"), &json!([b.id().to_string()]));
}

#[test]
fn only_participants_see_or_touch_a_conversation() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    for outsider in [server.member_on_shard(0), server.member_on_shard(1)] {
        let conv = conversation(&server, &a, &[&b]);
        let msg = send(&server, &a, conv, "private");
        let base = format!("/v1/conversations/{conv}");
        server
            .get(&base, outsider.auth())
            .expect_error(404, "not_found");
        server
            .get(&format!("{base}/messages"), outsider.auth())
            .expect_error(404, "not_found");
        server
            .post(
                &format!("{base}/messages"),
                outsider.auth(),
                json!({"text": "let me in"}),
            )
            .expect_error(404, "not_found");
        for tail in ["read", "typing"] {
            server
                .call("POST", &format!("{base}/{tail}"), outsider.auth(), None)
                .expect_error(404, "not_found");
        }
        server
            .delete(&format!("{base}/membership"), outsider.auth())
            .expect_error(404, "not_found");
        // Someone else's message: not even a participant may change it.
        for who in [&outsider, &b] {
            server
                .call(
                    "PATCH",
                    &format!("/v1/messages/{msg}"),
                    who.auth(),
                    Some(json!({"text": "changed"})),
                )
                .expect_error(404, "not_found");
            server
                .delete(&format!("/v1/messages/{msg}"), who.auth())
                .expect_error(404, "not_found");
        }
        assert!(!inbox(&server, &outsider).contains(&conv));
        // Unknown ids and no token.
        server
            .get("/v1/conversations/4194311", a.auth())
            .expect_error(404, "not_found");
        server.get(&base, None).expect_error(401, "unauthorized");
    }
}

#[test]
fn messages_edit_delete_idempotency_and_leaving() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(1);
    let b = server.member_on_shard(0);
    let c = server.member_on_shard(1);
    let conv = conversation(&server, &a, &[&b, &c]);
    let path = format!("/v1/conversations/{conv}/messages");
    let keyed = |text: &str| {
        server.req(
            &Req::post(&path)
                .bearer(&a.token)
                .header("Idempotency-Key", "send-1")
                .json(&json!({ "text": text })),
        )
    };
    let first = keyed("once");
    first.expect(201);
    let again = keyed("once");
    again.expect(201);
    assert_eq!(again.str("message.id"), first.str("message.id"));
    let id = parse_id(first.at("message.id"));
    assert_eq!(messages(&server, &b, conv), vec![id]);

    let resp = server.call(
        "PATCH",
        &format!("/v1/messages/{id}"),
        a.auth(),
        Some(json!({"text": "edited"})),
    );
    resp.expect(200);
    assert_eq!(resp.str("message.text"), "edited");
    assert!(resp.at("message.edited_at").as_str().is_some());
    let page = server.get(&path, b.auth());
    assert_eq!(page.str("items.0.text"), "edited");

    let second = send(&server, &b, conv, "second");
    server
        .delete(&format!("/v1/messages/{second}"), b.auth())
        .expect(204);
    assert_eq!(messages(&server, &c, conv), vec![id]);
    let resp = server.get(&format!("/v1/conversations/{conv}"), c.auth());
    assert_eq!(parse_id(resp.at("conversation.last_message.id")), id);

    // Leaving: gone from the leaver's inbox and view; the others go on.
    server
        .delete(&format!("/v1/conversations/{conv}/membership"), b.auth())
        .expect(204);
    assert!(!inbox(&server, &b).contains(&conv));
    server
        .get(&format!("/v1/conversations/{conv}"), b.auth())
        .expect_error(404, "not_found");
    server
        .post(&path, b.auth(), json!({"text": "still here?"}))
        .expect_error(404, "not_found");
    let resp = server.get(&format!("/v1/conversations/{conv}"), a.auth());
    assert_eq!(
        resp.at("conversation.participants")
            .as_array()
            .unwrap()
            .len(),
        2
    );
    send(&server, &c, conv, "after b left");
    assert!(!inbox(&server, &b).contains(&conv));
}

#[test]
fn blocks_and_settings_refuse_new_conversations() {
    let server = Server::start(&[]);
    for (x, y) in [(0, 1), (1, 0), (1, 1)] {
        let a = server.member_on_shard(x);
        let b = server.member_on_shard(y);
        let existing = conversation(&server, &a, &[&b]);

        // A block, either way, refuses new conversations and stops a conversation of two.
        server
            .call(
                "POST",
                &format!("/v1/users/{}/block", a.id()),
                b.auth(),
                None,
            )
            .expect(200);
        create(&server, &a, &[&b]).expect_error(403, "cannot_message");
        create(&server, &b, &[&a]).expect_error(403, "cannot_message");
        // Nor typing, either way.
        for who in [&a, &b] {
            server
                .post(
                    &format!("/v1/conversations/{existing}/typing"),
                    who.auth(),
                    json!({}),
                )
                .expect_error(403, "cannot_message");
        }
        server
            .post(
                &format!("/v1/conversations/{existing}/messages"),
                a.auth(),
                json!({"text": "hello?"}),
            )
            .expect_error(403, "cannot_message");
        server
            .delete(&format!("/v1/users/{}/block", a.id()), b.auth())
            .expect(200);
        send(&server, &a, existing, "unblocked");

        // messages_from: nobody, then following (people b follows).
        let set = |value: &str| {
            server
                .call(
                    "PATCH",
                    "/v1/me/settings",
                    b.auth(),
                    Some(json!({ "messages_from": value })),
                )
                .expect(200);
        };
        set("nobody");
        create(&server, &a, &[&b]).expect_error(403, "cannot_message");
        set("following");
        create(&server, &a, &[&b]).expect_error(403, "cannot_message");
        server.follow(b.auth(), a.id());
        create(&server, &a, &[&b]).expect(201);
        set("everyone");
    }
}

#[test]
fn bad_conversation_input_is_refused() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    for body in [
        json!({"participants": []}),
        json!({"participants": [a.id().to_string()]}),
        json!({"participants": ["abc"]}),
        json!({ "participants": (0..32).map(|i| (1000 + i).to_string()).collect::<Vec<_>>() }),
    ] {
        let resp = server.post("/v1/conversations", a.auth(), body);
        resp.expect_error(422, "invalid_participants");
    }
    server
        .post("/v1/conversations", a.auth(), json!({"people": []}))
        .expect_error(422, "invalid_body");
    server
        .post(
            "/v1/conversations",
            a.auth(),
            json!({"participants": ["4194311"]}),
        )
        .expect_error(404, "not_found");
    let conv = conversation(&server, &a, &[&b]);
    let path = format!("/v1/conversations/{conv}/messages");
    for text in ["   ", &"x".repeat(5001), "bell\u{7}"] {
        server
            .post(&path, a.auth(), json!({ "text": text }))
            .expect_error(422, "invalid_text");
    }
    server
        .post(
            &path,
            a.auth(),
            json!({"text": "with media", "media_ids": ["1"]}),
        )
        .expect_error(422, "invalid_media");
    server
        .post(
            &format!("/v1/conversations/{conv}/read"),
            a.auth(),
            json!({"up_to": "x"}),
        )
        .expect_error(422, "invalid_up_to");
    server
        .get(&format!("{path}?limit=0"), a.auth())
        .expect_error(400, "invalid_limit");
}

#[test]
fn posts_and_messages_carry_the_senders_own_media() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let mine = picture(&server, &a);
    let theirs = picture(&server, &b);

    let post = server.post(
        "/v1/posts",
        a.auth(),
        json!({"text": "look", "media_ids": [mine.to_string()]}),
    );
    post.expect(201);
    assert_eq!(post.at("post.media_ids"), &json!([mine.to_string()]));
    let id = parse_id(post.at("post.id"));
    let read = server.get(&format!("/v1/posts/{id}"), b.auth());
    assert_eq!(read.at("post.media_ids"), &json!([mine.to_string()]));

    let conv = conversation(&server, &a, &[&b]);
    let path = format!("/v1/conversations/{conv}/messages");
    let sent = server.post(
        &path,
        a.auth(),
        json!({"text": "see", "media_ids": [mine.to_string()]}),
    );
    sent.expect(201);
    assert_eq!(sent.at("message.media_ids"), &json!([mine.to_string()]));

    // Someone else's upload, an unknown id, or too many: 422 invalid_media.
    for ids in [
        vec![theirs.to_string()],
        vec!["4194311".to_string()],
        vec![mine.to_string(); 5]
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                if i == 0 {
                    m
                } else {
                    format!("{}", 4194311 + i)
                }
            })
            .collect(),
    ] {
        server
            .post(
                "/v1/posts",
                a.auth(),
                json!({"text": "x", "media_ids": ids.clone()}),
            )
            .expect_error(422, "invalid_media");
        server
            .post(&path, a.auth(), json!({"text": "x", "media_ids": ids}))
            .expect_error(422, "invalid_media");
    }
}

/// (subject message id, actor id) of `member`'s `message` notifications, newest first, once
/// the newest is about `latest` (within moments: a recipient on another shard is notified
/// when the message is applied there).
fn message_notifications(server: &Server, member: &Member, latest: u64) -> Vec<(u64, u64)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let items = message_notifications_now(server, member);
        if items.first().map(|(m, _)| *m) == Some(latest) || std::time::Instant::now() > deadline {
            return items;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// (subject message id, actor id) of `member`'s `message` notifications, newest first.
fn message_notifications_now(server: &Server, member: &Member) -> Vec<(u64, u64)> {
    let resp = server.get("/v1/notifications?types=message", member.auth());
    resp.expect(200);
    resp.at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                parse_id(at(n, "subject.id").unwrap()),
                parse_id(at(n, "actor.id").unwrap()),
            )
        })
        .collect()
}

fn unread_notifications(server: &Server, member: &Member) -> u64 {
    let resp = server.get("/v1/notifications/unread_count", member.auth());
    resp.expect(200);
    resp.at("unread").as_u64().unwrap()
}

#[test]
fn each_recipient_keeps_one_message_notification_per_conversation_on_any_shard() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let c = server.member_on_shard(0);
    let conv = conversation(&server, &a, &[&b, &c]);
    let m1 = send(&server, &a, conv, "one");
    let m2 = send(&server, &a, conv, "two");
    // c (the conversation's shard) and b (the other shard): one notification, the newest.
    assert_eq!(message_notifications(&server, &c, m2), vec![(m2, a.id())]);
    assert_eq!(message_notifications(&server, &b, m2), vec![(m2, a.id())]);
    assert_ne!(m1, m2);
    let m3 = send(&server, &c, conv, "three");
    assert_eq!(message_notifications(&server, &b, m3), vec![(m3, c.id())]);
    assert_eq!(
        message_notifications(&server, &c, m2),
        vec![(m2, a.id())],
        "nobody is notified of their own message"
    );
    assert_eq!(unread_notifications(&server, &b), 1);

    // Read, then a new message: unread again, still one.
    server
        .post("/v1/notifications/read", b.auth(), json!({ "all": true }))
        .expect(200);
    assert_eq!(unread_notifications(&server, &b), 0);
    let m4 = send(&server, &a, conv, "four");
    assert_eq!(message_notifications(&server, &b, m4), vec![(m4, a.id())]);
    assert_eq!(unread_notifications(&server, &b), 1);

    // Another conversation has its own, listed first while it is the newest.
    let other = conversation(&server, &c, &[&b]);
    let m5 = send(&server, &c, other, "elsewhere");
    assert_eq!(
        message_notifications(&server, &b, m5),
        vec![(m5, c.id()), (m4, a.id())]
    );
    assert_eq!(unread_notifications(&server, &b), 2);

    // Leaving a conversation takes its notification: b's is on another shard than the
    // conversation, c's on the same.
    for (leaver, left) in [(&b, vec![(m5, c.id())]), (&c, vec![])] {
        server
            .delete(
                &format!("/v1/conversations/{conv}/membership"),
                leaver.auth(),
            )
            .expect(204);
        let mut now = Vec::new();
        let gone = wait_until(std::time::Duration::from_secs(5), || {
            now = message_notifications_now(&server, leaver);
            now == left
        });
        assert!(gone, "{now:?}");
    }
    assert_eq!(unread_notifications(&server, &b), 1);
}

/// A user leaving a conversation on another shard while messages are sent to it keeps no
/// `message` notification of it: the leave reaches the user's shard after the messages sent
/// before it.
#[test]
fn leaving_while_messages_arrive_leaves_no_notification() {
    let server = Server::start(&[]);
    // The race is lost in about one round in ten without the ordering: many rounds.
    for round in 0..16 {
        let a = server.member_on_shard(0);
        let b = server.member_on_shard(1);
        let conv = conversation(&server, &a, &[&b]);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..9 {
                    let resp = server.post(
                        &format!("/v1/conversations/{conv}/messages"),
                        a.auth(),
                        json!({ "text": format!("m{i}") }),
                    );
                    assert!(
                        resp.status == 201 || resp.status == 403,
                        "{}",
                        resp.what_happened()
                    );
                }
            });
            scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                server
                    .delete(&format!("/v1/conversations/{conv}/membership"), b.auth())
                    .expect(204);
            });
        });
        let mut now = Vec::new();
        let none = wait_until(std::time::Duration::from_secs(5), || {
            now = message_notifications_now(&server, &b);
            now.is_empty()
        });
        assert!(none, "round {round}: {now:?}");
    }
}

/// A deleted message takes the notifications about it, for recipients on either shard; one
/// about a newer message stays when an older one is deleted.
#[test]
fn a_deleted_message_takes_its_notifications() {
    let server = Server::start(&[]);
    for conv_shard in [0, 1] {
        let a = server.member_on_shard(conv_shard);
        let b = server.member_on_shard(1 - conv_shard);
        let c = server.member_on_shard(conv_shard);
        let conv = conversation(&server, &a, &[&b, &c]);
        let m1 = send(&server, &a, conv, "one");
        let m2 = send(&server, &a, conv, "two");
        for who in [&b, &c] {
            assert_eq!(message_notifications(&server, who, m2), vec![(m2, a.id())]);
        }
        server
            .delete(&format!("/v1/messages/{m2}"), a.auth())
            .expect(204);
        for who in [&b, &c] {
            let mut now = Vec::new();
            let gone = wait_until(std::time::Duration::from_secs(5), || {
                now = message_notifications_now(&server, who);
                now.is_empty()
            });
            assert!(gone, "{}: {now:?}", who.name());
            assert_eq!(unread_notifications(&server, who), 0);
        }
        let m3 = send(&server, &a, conv, "three");
        server
            .delete(&format!("/v1/messages/{m1}"), a.auth())
            .expect(204);
        // A message from the same shard sent after the delete is delivered after it: once it
        // is there, so is the delete, and the newer notification stayed.
        let other = conversation(&server, &c, &[&b]);
        let m4 = send(&server, &c, other, "elsewhere");
        assert_eq!(
            message_notifications(&server, &b, m4),
            vec![(m4, c.id()), (m3, a.id())]
        );
        assert_eq!(message_notifications(&server, &c, m3), vec![(m3, a.id())]);
    }
}

/// (id, last_activity_at) of each conversation in `member`'s inbox, in the listed order.
fn inbox_activity(server: &Server, member: &Member) -> Vec<(u64, String)> {
    let resp = server.get("/v1/conversations", member.auth());
    resp.expect(200);
    resp.at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = parse_id(at(c, "id").unwrap());
            let at = at(c, "last_activity_at").unwrap().as_str().unwrap();
            (id, at.to_string())
        })
        .collect()
}

/// Deleting a conversation's newest message keeps its time as the conversation's activity:
/// `last_activity_at` is what the inbox is ordered by, in the list and in the single view,
/// for participants on both shards (the times are RFC 3339 with milliseconds, so their
/// string order is their time order).
#[test]
fn deleting_the_newest_message_keeps_the_activity_the_inbox_is_ordered_by() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let c = server.member_on_shard(0);
    let first = conversation(&server, &a, &[&b]);
    let second = conversation(&server, &a, &[&c]);
    let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
    pause();
    let kept = send(&server, &b, first, "kept");
    pause();
    send(&server, &c, second, "in between");
    pause();
    let newest = server.post(
        &format!("/v1/conversations/{first}/messages"),
        a.auth(),
        json!({ "text": "deleted soon" }),
    );
    newest.expect(201);
    let newest_at = newest.str("message.created_at").to_string();
    let newest = parse_id(newest.at("message.id"));
    server
        .delete(&format!("/v1/messages/{newest}"), a.auth())
        .expect(204);

    for member in [&a, &b] {
        let listed = inbox_activity(&server, member);
        assert_eq!(listed[0], (first, newest_at.clone()), "{listed:?}");
        // Listed newest activity first, and the times say so.
        assert!(
            listed.windows(2).all(|w| w[0].1 >= w[1].1),
            "order and times disagree: {listed:?}"
        );
        let view = server.get(&format!("/v1/conversations/{first}"), member.auth());
        view.expect(200);
        assert_eq!(view.str("conversation.last_activity_at"), newest_at);
        assert_eq!(parse_id(view.at("conversation.last_message.id")), kept);
    }
    let listed = inbox_activity(&server, &a);
    assert_eq!(
        listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![first, second]
    );

    // Deleting an older message changes nothing; a new one moves the activity on.
    server
        .delete(&format!("/v1/messages/{kept}"), b.auth())
        .expect(204);
    assert_eq!(inbox_activity(&server, &b)[0], (first, newest_at.clone()));
    pause();
    send(&server, &b, first, "later");
    let view = server.get(&format!("/v1/conversations/{first}"), a.auth());
    let later_at = view.str("conversation.last_message.created_at").to_string();
    assert!(later_at > newest_at);
    assert_eq!(view.str("conversation.last_activity_at"), later_at);
    assert_eq!(inbox_activity(&server, &a)[0], (first, later_at));
}
