//! Proves the live event stream (`GET /v1/stream`, issue 4) against the real `nova` process
//! with 2 shards: new messages, home-feed posts and typing reach a user's stream whichever
//! shard the connection lands on; a reconnect with `Last-Event-ID` gets exactly what was
//! missed; heartbeats on idle streams; the per-user limit; a reader that stops reading is cut
//! off instead of being buffered for.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

/// One Server-Sent Event as read off the wire.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    id: Option<u64>,
    kind: String,
    data: String,
}

struct Sse {
    reader: BufReader<Box<dyn Read + Send + Sync>>,
    comments: Vec<String>,
    /// The `X-Nova-Shard` that serves this stream.
    shard: u32,
}

impl Sse {
    fn open(server: &Server, member: &Member, last_id: Option<u64>) -> Result<Sse, u16> {
        let agent = ureq::AgentBuilder::new()
            .timeout_read(Duration::from_secs(5))
            .build();
        let mut req = agent
            .get(&server.url("/v1/stream"))
            .set("Authorization", &format!("Bearer {}", member.token));
        if let Some(id) = last_id {
            req = req.set("Last-Event-ID", &id.to_string());
        }
        match req.call() {
            Ok(resp) => {
                assert_eq!(resp.content_type(), "text/event-stream");
                let shard = resp.header("x-nova-shard").unwrap().parse().unwrap();
                Ok(Sse {
                    reader: BufReader::new(resp.into_reader()),
                    comments: Vec::new(),
                    shard,
                })
            }
            Err(ureq::Error::Status(code, _)) => Err(code),
            Err(e) => panic!("stream: {e}"),
        }
    }

    /// A stream served by the given shard (connections land where the kernel puts them).
    fn open_on(server: &Server, member: &Member, shard: u32) -> Sse {
        for _ in 0..200 {
            let s = Sse::open(server, member, None).unwrap();
            if s.shard == shard {
                return s;
            }
        }
        panic!("no stream connection landed on shard {shard}");
    }

    /// The next event (comments are kept aside); `None` when the stream ended.
    fn next(&mut self) -> Option<Event> {
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("stream read");
            if n == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if !kind.is_empty() || !data.is_empty() {
                    return Some(Event { id, kind, data });
                }
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                self.comments.push(c.trim().to_string());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            }
        }
    }

    /// The next event of `kind`, skipping others.
    fn next_of(&mut self, kind: &str) -> Event {
        loop {
            let e = self.next().expect("the stream ended");
            if e.kind == kind {
                return e;
            }
        }
    }
}

fn json_of(e: &Event) -> Json {
    let mut bytes = e.data.clone().into_bytes();
    simd_json::serde::from_slice::<Json>(&mut bytes).unwrap()
}

fn conversation(server: &Server, creator: &Member, other: &Member) -> u64 {
    let resp = server.post(
        "/v1/conversations",
        creator.auth(),
        json!({"participants": [other.id().to_string()]}),
    );
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
    parse_id(resp.at("message.id"))
}

#[test]
fn messages_posts_and_typing_reach_the_stream_on_any_shard() {
    let server = Server::start(&[]);
    for (listener_shard, sender_shard, connection_shard) in
        [(0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 1, 0)]
    {
        let listener = server.member_on_shard(listener_shard);
        let sender = server.member_on_shard(sender_shard);
        let mut sse = Sse::open_on(&server, &listener, connection_shard);
        assert!(sse.comments.is_empty());

        let conv = conversation(&server, &sender, &listener);
        let sent = send(&server, &sender, conv, "live hello");
        let e = sse.next_of("message");
        let body = json_of(&e);
        assert_eq!(parse_id(at(&body, "id").unwrap()), sent);
        assert_eq!(at(&body, "text").unwrap().as_str(), Some("live hello"));
        assert_eq!(parse_id(at(&body, "conversation_id").unwrap()), conv);

        // In order, each once.
        let ids: Vec<u64> = (0..5)
            .map(|i| send(&server, &sender, conv, &format!("n{i}")))
            .collect();
        let got: Vec<u64> = (0..5)
            .map(|_| parse_id(at(&json_of(&sse.next_of("message")), "id").unwrap()))
            .collect();
        assert_eq!(got, ids);

        server
            .call(
                "POST",
                &format!("/v1/conversations/{conv}/typing"),
                sender.auth(),
                None,
            )
            .expect(204);
        let e = sse.next_of("typing");
        assert_eq!(parse_id(at(&json_of(&e), "user_id").unwrap()), sender.id());

        // A new post of someone followed arrives as a `post` event.
        server.follow(listener.auth(), sender.id());
        let resp = server.post(
            "/v1/posts",
            sender.auth(),
            json!({"text": "for my followers"}),
        );
        resp.expect(201);
        let e = sse.next_of("post");
        assert_eq!(
            parse_id(at(&json_of(&e), "id").unwrap()),
            parse_id(resp.at("post.id"))
        );

        // A like of the listener's post arrives as a `notification` event.
        let mine = server.post("/v1/posts", listener.auth(), json!({"text": "like me"}));
        mine.expect(201);
        let mine = parse_id(mine.at("post.id"));
        server
            .call(
                "POST",
                &format!("/v1/posts/{mine}/like"),
                sender.auth(),
                None,
            )
            .expect(200);
        let e = sse.next_of("notification");
        let n = json_of(&e);
        assert_eq!(
            at(&n, "type").and_then(|t| t.as_str()),
            Some("like"),
            "{n:?}"
        );
        assert_eq!(
            at(&n, "actor.username").and_then(|t| t.as_str()),
            Some(sender.name())
        );

        // Renamed, the actor's next notification carries the new name at once (the stream's
        // shard, which has the old one at hand, heard of the change before it was answered).
        let renamed = format!("Renamed {}", sender.name());
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                sender.auth(),
                Some(json!({ "display_name": renamed.as_str() })),
            )
            .expect(200);
        server
            .call(
                "POST",
                &format!("/v1/posts/{mine}/comments"),
                sender.auth(),
                Some(json!({"text": "nice"})),
            )
            .expect(201);
        let n = json_of(&sse.next_of("notification"));
        assert_eq!(
            at(&n, "actor.display_name").and_then(|t| t.as_str()),
            Some(renamed.as_str()),
            "{n:?}"
        );
    }
}

/// A stream ends, before another event goes out, once the session of the token that opened
/// it is revoked (here by a logout, from either shard's stream) or once that token expires;
/// a `Last-Event-ID` from the future counts as none instead of holding back every event.
#[test]
fn a_stream_ends_when_its_token_no_longer_holds() {
    let server = Server::start(&[]);
    for (listener_shard, connection_shard) in [(0, 1), (1, 1), (0, 0)] {
        let listener = server.member_on_shard(listener_shard);
        let sender = server.member_on_shard(1 - listener_shard);
        let conv = conversation(&server, &sender, &listener);
        let mut sse = Sse::open_on(&server, &listener, connection_shard);
        send(&server, &sender, conv, "before");
        let e = json_of(&sse.next_of("message"));
        assert_eq!(at(&e, "text").and_then(|t| t.as_str()), Some("before"));

        server
            .delete("/v1/sessions/current", Some(&listener.token))
            .expect(204);
        send(&server, &sender, conv, "after the logout");
        while let Some(e) = sse.next() {
            assert!(!e.data.contains("after the logout"), "{e:?}");
        }
        assert_eq!(Sse::open(&server, &listener, None).err(), Some(401));
    }

    drop(server);
    let server = Server::start(&["--access-token-ttl-s", "5"]);
    let listener = server.member_on_shard(0);
    let sender = server.member_on_shard(1);
    let conv = conversation(&server, &sender, &listener);
    let opened = Instant::now();
    let mut sse = Sse::open(&server, &listener, Some(u64::MAX)).unwrap();
    send(&server, &sender, conv, "from the future");
    let e = json_of(&sse.next_of("message"));
    assert_eq!(
        at(&e, "text").and_then(|t| t.as_str()),
        Some("from the future")
    );
    // Idle, with heartbeats every 15 s: the stream ends when the 5-s token expires.
    assert_eq!(sse.next(), None);
    assert!(
        opened.elapsed() < Duration::from_secs(6),
        "{:?}",
        opened.elapsed()
    );
}

/// `post` events leave out what the reader's home feed hides: replies with `hide_replies`,
/// posts with a muted word; the reader's own posts are never hidden.
#[test]
fn post_events_follow_the_readers_feed_preferences() {
    let server = Server::start(&[]);
    for (author_shard, reader_shard) in [(0, 1), (1, 1)] {
        let author = server.member_on_shard(author_shard);
        let reader = server.member_on_shard(reader_shard);
        server.follow(reader.auth(), author.id());
        server
            .call(
                "PATCH",
                "/v1/me/preferences",
                reader.auth(),
                Some(json!({"hide_replies": true, "muted_words": ["spoiler"]})),
            )
            .expect(200);
        let mut sse = Sse::open(&server, &reader, None).unwrap();
        let first = server.new_post(&author, "first");
        let reply = server.post(
            "/v1/posts",
            author.auth(),
            json!({"text": "a reply", "reply_to": first.to_string()}),
        );
        reply.expect(201);
        server.new_post(&author, "big SPOILER here");
        let own = server.new_post(&reader, "my spoiler");
        let last = server.new_post(&author, "plain");
        let got: Vec<u64> = (0..3)
            .map(|_| parse_id(at(&json_of(&sse.next_of("post")), "id").unwrap()))
            .collect();
        assert_eq!(got, [first, own, last], "author on {author_shard}");
    }
}

#[test]
fn last_event_id_resumes_without_gaps_or_repeats() {
    let server = Server::start(&[]);
    let listener = server.member_on_shard(1);
    let sender = server.member_on_shard(0);
    let conv = conversation(&server, &sender, &listener);
    let mut sse = Sse::open(&server, &listener, None).unwrap();
    let first: Vec<u64> = (0..3)
        .map(|i| send(&server, &sender, conv, &format!("a{i}")))
        .collect();
    let mut last = 0;
    for want in &first {
        let e = sse.next_of("message");
        assert_eq!(parse_id(at(&json_of(&e), "id").unwrap()), *want);
        last = e.id.unwrap();
    }
    drop(sse);
    // Missed while away.
    let mut missed: Vec<u64> = (0..4)
        .map(|i| send(&server, &sender, conv, &format!("b{i}")))
        .collect();
    for shard in [0, 1] {
        // Whichever shard the reconnect lands on, the same answer.
        let mut sse = loop {
            let s = Sse::open(&server, &listener, Some(last)).unwrap();
            if s.shard == shard {
                break s;
            }
        };
        let got: Vec<u64> = (0..missed.len())
            .map(|_| parse_id(at(&json_of(&sse.next_of("message")), "id").unwrap()))
            .collect();
        assert_eq!(got, missed, "reconnected on shard {shard}");
        // Nothing twice: the next event is a new one.
        let fresh = send(&server, &sender, conv, &format!("c{shard}"));
        let e = sse.next_of("message");
        assert_eq!(parse_id(at(&json_of(&e), "id").unwrap()), fresh);
        // Sent after `last` too: the next reconnect from `last` gets it as well.
        missed.push(fresh);
    }
}

/// Every id the events show (`named_ids`) up to the first event of `kind` that shows `end`.
fn ids_until(sse: &mut Sse, kind: &str, end: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let e = sse.next().expect("the stream ended");
        let ids = named_ids(&e);
        seen.extend(ids.iter().copied());
        if e.kind == kind && ids.contains(&end) {
            return seen;
        }
    }
}

/// The ids of posts, messages and notifications' subjects and actors each event shows.
fn named_ids(e: &Event) -> Vec<u64> {
    let v = json_of(e);
    ["id", "author.id", "sender.id", "actor.id", "subject.id"]
        .iter()
        .filter_map(|path| {
            at(&v, path)
                .and_then(|x| x.as_str())
                .map(|x| x.parse().unwrap())
        })
        .collect()
}

/// A reconnect with `Last-Event-ID` brings back nothing that went meanwhile: a deleted post
/// or message, what a user who blocked the reader since showed it, an erased account's.
#[test]
fn a_resume_brings_back_nothing_that_went() {
    let server = Server::start(&[]);
    for (reader_shard, other_shard) in [(1, 0), (0, 0)] {
        let reader = server.member_on_shard(reader_shard);
        let author = server.member_on_shard(other_shard);
        let blocker = server.member_on_shard(other_shard);
        let erased = server.member_on_shard(1 - other_shard);
        for followee in [&author, &blocker, &erased] {
            server.follow(reader.auth(), followee.id()).expect(200);
        }
        let conv = conversation(&server, &author, &reader);
        let mut sse = Sse::open(&server, &reader, None).unwrap();
        send(&server, &author, conv, "before");
        let last = sse.next_of("message").id.unwrap();
        drop(sse);

        let kept_post = server.new_post(&author, "kept");
        let gone_post = server.new_post(&author, "deleted soon");
        let kept_message = send(&server, &author, conv, "kept");
        let gone_message = send(&server, &author, conv, "deleted soon");
        let blockers_post = server.new_post(&blocker, "then a block");
        let erased_post = server.new_post(&erased, "then erased");
        // Each shows up in the ring (a notification of the last message is there too).
        let notes = |who: &Member| server.get("/v1/notifications?types=message", who.auth());
        assert!(wait_until(Duration::from_secs(5), || {
            notes(&reader).text().contains(&gone_message.to_string())
        }));
        server
            .delete(&format!("/v1/posts/{gone_post}"), author.auth())
            .expect(204);
        server
            .delete(&format!("/v1/messages/{gone_message}"), author.auth())
            .expect(204);
        server
            .call(
                "POST",
                &format!("/v1/users/{}/block", reader.id()),
                blocker.auth(),
                None,
            )
            .expect(200);
        server.erase(&erased);
        // The message's delete reaches another shard through the relay: its notification
        // going shows it arrived.
        assert!(wait_until(Duration::from_secs(5), || {
            !notes(&reader).text().contains(&gone_message.to_string())
        }));

        let mut sse = Sse::open(&server, &reader, Some(last)).unwrap();
        let end = send(&server, &author, conv, "the end");
        let seen = ids_until(&mut sse, "message", end);
        let case = format!("reader on {reader_shard}, others on {other_shard}");
        for kept in [kept_post, kept_message] {
            assert!(seen.contains(&kept), "{case}: {kept} missing from {seen:?}");
        }
        for gone in [gone_post, gone_message, blockers_post, erased_post] {
            assert!(!seen.contains(&gone), "{case}: {gone} came back");
        }
        for gone in [blocker.id(), erased.id()] {
            assert!(!seen.contains(&gone), "{case}: user {gone} came back");
        }
    }
}

/// Nor what the reader may no longer read: a post that mentioned it from an account that
/// turned private since (and its mention), a followers-only post of an author it unfollowed
/// since, the messages of a conversation it left.
#[test]
fn a_resume_brings_back_only_what_the_reader_may_still_read() {
    let server = Server::start(&[]);
    for (reader_shard, other_shard) in [(1, 0), (0, 0)] {
        let reader = server.member_on_shard(reader_shard);
        let turning = server.member_on_shard(other_shard);
        let unfollowed = server.member_on_shard(other_shard);
        let sender = server.member_on_shard(1 - other_shard);
        server.follow(reader.auth(), unfollowed.id()).expect(200);
        let left = conversation(&server, &sender, &reader);
        let mut sse = Sse::open(&server, &reader, None).unwrap();
        let before = send(&server, &sender, left, "before");
        let last = sse.next_of("message").id.unwrap();
        drop(sse);

        let mentioning = server.new_post(&turning, &format!("hi @{}", reader.name()));
        let resp = server.post(
            "/v1/posts",
            unfollowed.auth(),
            json!({"text": "followers only", "visibility": "followers"}),
        );
        resp.expect(201);
        let for_followers = parse_id(resp.at("post.id"));
        let in_left = send(&server, &sender, left, "then left");
        let notes = server.get("/v1/notifications?types=mention", reader.auth());
        assert!(notes.text().contains(&mentioning.to_string()));
        server.set_private(&turning, true);
        server
            .delete(
                &format!("/v1/users/{}/follow", unfollowed.id()),
                reader.auth(),
            )
            .expect(200);
        server
            .delete(
                &format!("/v1/conversations/{left}/membership"),
                reader.auth(),
            )
            .expect(204);
        server.follow(reader.auth(), sender.id()).expect(200);
        let end = server.new_post(&sender, "the end");

        let mut sse = Sse::open(&server, &reader, Some(last)).unwrap();
        let seen = ids_until(&mut sse, "post", end);
        let case = format!("reader on {reader_shard}, others on {other_shard}");
        for gone in [mentioning, for_followers, in_left, before, left] {
            assert!(!seen.contains(&gone), "{case}: {gone} came back: {seen:?}");
        }
    }
}

#[test]
fn idle_streams_get_heartbeats_and_users_have_a_stream_limit() {
    let server = Server::start(&[
        "--stream-heartbeat-ms",
        "200",
        "--streams-per-user-max",
        "2",
    ]);
    let member = server.member_on_shard(0);
    let mut a = Sse::open(&server, &member, None).unwrap();
    let _b = Sse::open(&server, &member, None).unwrap();
    assert_eq!(Sse::open(&server, &member, None).err(), Some(429));
    // Heartbeats: read for a while; comments arrive though no event does.
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let _ = a.next();
        a
    });
    std::thread::sleep(Duration::from_millis(900));
    // Opening another user's stream still works (the limit is per user).
    let other = server.member_on_shard(1);
    let _c = Sse::open(&server, &other, None).unwrap();
    // Unblock the reader with an event for `member`.
    let peer = server.member_on_shard(1);
    let conv = conversation(&server, &peer, &member);
    send(&server, &peer, conv, "wake up");
    let a = reader.join().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(800));
    let pings = a.comments.iter().filter(|c| *c == "ping").count();
    assert!(pings >= 2, "heartbeats seen: {:?}", a.comments);
    // Closing a stream frees its place.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Sse::open(&server, &member, None) {
            Ok(_) => break,
            Err(429) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(code) => panic!("stream after a close: {code}"),
        }
    }
    server
        .get("/v1/stream", None)
        .expect_error(401, "unauthorized");
}

#[test]
fn a_reader_that_stops_reading_is_cut_off() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let server = Server::start(&[]);
    let listener = server.member_on_shard(0);
    let sender = server.member_on_shard(1);
    let conv = conversation(&server, &sender, &listener);
    // A raw connection with a fixed receive buffer (still above the loopback MSS, so the
    // window keeps opening), so the server's side fills up.
    let mut tcp = std::net::TcpStream::connect(server.addr()).unwrap();
    let small: libc::c_int = 128 * 1024;
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    write!(
        tcp,
        "GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        listener.token
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // Far more than the server's socket buffer (4 MiB at most here) and the connection's
    // queue hold, unread: 800 messages of 20 KB (5000 four-byte characters).
    let text = "\u{1F600}".repeat(5000);
    let total = 800;
    for _ in 0..total {
        send(&server, &sender, conv, &text);
    }
    // Reading now: the stream ends (the server closes) before everything was delivered.
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => {
                let tail =
                    String::from_utf8_lossy(&all[all.len().saturating_sub(300)..]).to_string();
                panic!(
                    "the server did not close the stream: after {} bytes: {e}; tail: {tail}",
                    all.len()
                );
            }
        }
    }
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let seen = text.matches("event: message").count();
    assert!(
        seen < total,
        "a reader that fell behind by {total} messages was still fed all of them"
    );
    // And the user can open a new stream right away.
    Sse::open(&server, &listener, None).unwrap();
}

/// The ids of a message view's `media`, checking each has a state.
fn media_of(message: &Json) -> Vec<u64> {
    at(message, "media")
        .and_then(|m| m.as_array())
        .unwrap_or_else(|| panic!("no media in {message:?}"))
        .iter()
        .map(|m| {
            assert!(at(m, "state").and_then(|s| s.as_str()).is_some(), "{m:?}");
            parse_id(at(m, "id").unwrap())
        })
        .collect()
}

#[test]
fn message_events_and_last_messages_carry_their_media() {
    let server = Server::start(&[]);
    for (sender_shard, listener_shard) in [(0, 1), (1, 0), (1, 1)] {
        let sender = server.member_on_shard(sender_shard);
        let listener = server.member_on_shard(listener_shard);
        let case = format!("sender on {sender_shard}, listener on {listener_shard}");
        let pic = picture(&server, &sender);
        let mut sse = Sse::open(&server, &listener, None).unwrap();
        let conv = conversation(&server, &sender, &listener);

        // A message with media, then one without: in order, the first with its media.
        let resp = server.post(
            &format!("/v1/conversations/{conv}/messages"),
            sender.auth(),
            json!({"text": "look", "media_ids": [pic.to_string()]}),
        );
        resp.expect(201);
        let with = parse_id(resp.at("message.id"));
        let without = send(&server, &sender, conv, "and this");
        let first = json_of(&sse.next_of("message"));
        assert_eq!(parse_id(at(&first, "id").unwrap()), with, "{case}");
        assert_eq!(media_of(&first), vec![pic], "{case}");
        let second = json_of(&sse.next_of("message"));
        assert_eq!(parse_id(at(&second, "id").unwrap()), without, "{case}");
        assert!(media_of(&second).is_empty(), "{case}");

        // The conversation's last message, listed and alone, carries its media.
        let media_message = server.post(
            &format!("/v1/conversations/{conv}/messages"),
            sender.auth(),
            json!({"text": "last", "media_ids": [pic.to_string()]}),
        );
        media_message.expect(201);
        for who in [&listener, &sender] {
            let list = server.get("/v1/conversations", who.auth());
            list.expect(200);
            let item = list
                .at("items")
                .as_array()
                .unwrap()
                .iter()
                .find(|c| at(c, "id").map(parse_id) == Some(conv))
                .cloned()
                .unwrap_or_else(|| panic!("{case}: conversation not listed"));
            let last = at(&item, "last_message").unwrap();
            assert_eq!(media_of(last), vec![pic], "{case}");
            let one = server.get(&format!("/v1/conversations/{conv}"), who.auth());
            one.expect(200);
            assert_eq!(
                media_of(one.at("conversation.last_message")),
                vec![pic],
                "{case}"
            );
        }
    }
}

/// The `avatar` id of a user brief in an event, or None when it has no `avatar` key.
fn avatar_in(brief: &Json) -> Option<u64> {
    at(brief, "avatar").map(|a| parse_id(at(a, "id").unwrap()))
}

/// `post` and `message` events show their author as a timeline or message list does: the
/// avatar as it is now (set after the stream's shard first saw the author), and the post's
/// media resolved; a brief without an avatar has no `avatar` key.
#[test]
fn post_and_message_events_show_the_author_as_now_and_the_media() {
    let server = Server::start(&[]);
    for (author_shard, listener_shard) in [(0, 1), (1, 0), (1, 1)] {
        let author = server.member_on_shard(author_shard);
        let listener = server.member_on_shard(listener_shard);
        let case = format!("author on {author_shard}, listener on {listener_shard}");
        server.follow(listener.auth(), author.id());
        let mut sse = Sse::open(&server, &listener, None).unwrap();
        let conv = conversation(&server, &author, &listener);

        // Before an avatar: no `avatar` key (and the stream's shard now has the brief).
        send(&server, &author, conv, "hello");
        let first = json_of(&sse.next_of("message"));
        assert_eq!(avatar_in(at(&first, "sender").unwrap()), None, "{case}");

        let avatar = picture(&server, &author);
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                author.auth(),
                Some(json!({ "avatar_media_id": avatar.to_string() })),
            )
            .expect(200);
        let sent = send(&server, &author, conv, "with a face");
        let e = json_of(&sse.next_of("message"));
        assert_eq!(parse_id(at(&e, "id").unwrap()), sent, "{case}");
        assert_eq!(avatar_in(at(&e, "sender").unwrap()), Some(avatar), "{case}");

        let pic = picture(&server, &author);
        let resp = server.post(
            "/v1/posts",
            author.auth(),
            json!({"text": "see this", "media_ids": [pic.to_string()]}),
        );
        resp.expect(201);
        let plain = server.new_post(&author, "and this");
        let e = json_of(&sse.next_of("post"));
        assert_eq!(
            parse_id(at(&e, "id").unwrap()),
            parse_id(resp.at("post.id")),
            "{case}"
        );
        assert_eq!(media_of(&e), vec![pic], "{case}");
        assert_eq!(avatar_in(at(&e, "author").unwrap()), Some(avatar), "{case}");
        let e = json_of(&sse.next_of("post"));
        assert_eq!(parse_id(at(&e, "id").unwrap()), plain, "{case}");
        assert!(media_of(&e).is_empty(), "{case}");
        assert_eq!(avatar_in(at(&e, "author").unwrap()), Some(avatar), "{case}");
    }
}

/// Sends made at once (written together in one batch on the conversation's shard), into a
/// group with members on both shards and a pair across shards: each is answered once with
/// its own id (a repeated Idempotency-Key, raced, answers one message), each reaches every
/// other member's stream once, in id order per conversation, and the conversation's last
/// message (derived from its messages) follows sends and deletes.
#[test]
fn concurrent_sends_reach_every_stream_once_in_order() {
    const PER_SENDER: usize = 10;
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let c = server.member_on_shard(0);
    let d = server.member_on_shard(1);
    let resp = server.post(
        "/v1/conversations",
        a.auth(),
        json!({"participants": [b.id().to_string(), c.id().to_string(), d.id().to_string()]}),
    );
    resp.expect(201);
    let group = parse_id(resp.at("conversation.id"));
    // Made by b: lives on shard 1, a on shard 0.
    let pair = conversation(&server, &b, &a);
    let members = [&a, &b, &c, &d];
    // a and d listen on the other shard than their own, b and c on their own.
    let mut streams: Vec<Sse> = members
        .iter()
        .zip([1, 1, 0, 0])
        .map(|(m, shard)| Sse::open_on(&server, m, shard))
        .collect();

    let keyed_path = format!("/v1/conversations/{group}/messages");
    // (conversation, sender, message id) of every send.
    let sent: Vec<(u64, u64, u64)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for m in members {
            let server = &server;
            handles.push(s.spawn(move || {
                (0..PER_SENDER)
                    .map(|i| (group, m.id(), send(server, m, group, &format!("g{i}"))))
                    .collect::<Vec<_>>()
            }));
        }
        for m in [&a, &b] {
            let server = &server;
            handles.push(s.spawn(move || {
                (0..PER_SENDER)
                    .map(|i| (pair, m.id(), send(server, m, pair, &format!("p{i}"))))
                    .collect::<Vec<_>>()
            }));
        }
        for _ in 0..4 {
            let (server, path, c) = (&server, &keyed_path, &c);
            handles.push(s.spawn(move || {
                let resp = server.req(
                    &Req::post(path)
                        .bearer(&c.token)
                        .header("Idempotency-Key", "raced")
                        .json(&json!({"text": "keyed"})),
                );
                resp.expect(201);
                vec![(group, c.id(), parse_id(resp.at("message.id")))]
            }));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let keyed: Vec<u64> = sent[sent.len() - 4..]
        .iter()
        .map(|(_, _, id)| *id)
        .collect();
    assert!(keyed.iter().all(|id| *id == keyed[0]), "{keyed:?}");
    let sent = &sent[..sent.len() - 3];
    let mut ids: Vec<u64> = sent.iter().map(|(_, _, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), sent.len(), "every send has its own message");

    let of = |conv: u64| {
        let mut v: Vec<u64> = sent
            .iter()
            .filter(|(k, _, _)| *k == conv)
            .map(|(_, _, id)| *id)
            .collect();
        v.sort_unstable();
        v
    };
    for m in members {
        let mut newest_first = of(group);
        newest_first.reverse();
        let path = format!("/v1/conversations/{group}/messages");
        assert_eq!(server.walk_posts(&path, &m.token, 7), newest_first);
    }

    for (m, sse) in members.iter().zip(streams.iter_mut()) {
        let mut want: Vec<(u64, u64)> = sent
            .iter()
            .filter(|(conv, sender, _)| {
                *sender != m.id() && (*conv == group || [a.id(), b.id()].contains(&m.id()))
            })
            .map(|(conv, _, id)| (*conv, *id))
            .collect();
        let mut got: Vec<(u64, u64)> = (0..want.len())
            .map(|_| {
                let body = json_of(&sse.next_of("message"));
                let conv = parse_id(at(&body, "conversation_id").unwrap());
                (conv, parse_id(at(&body, "id").unwrap()))
            })
            .collect();
        for conv in [group, pair] {
            let arrived: Vec<u64> = got
                .iter()
                .filter(|(k, _)| *k == conv)
                .map(|(_, id)| *id)
                .collect();
            assert!(
                arrived.windows(2).all(|w| w[0] < w[1]),
                "{} got conversation {conv} out of order: {arrived:?}",
                m.name()
            );
        }
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want, "{}: each message once", m.name());
    }
    // Nothing more (no repeats): the next message event is a new message.
    let last = send(&server, &d, group, "the last word");
    for (m, sse) in members.iter().zip(streams.iter_mut()) {
        if m.id() != d.id() {
            let e = sse.next_of("message");
            assert_eq!(parse_id(at(&json_of(&e), "id").unwrap()), last);
        }
    }

    // The last message is derived from the conversation's messages: deleting it brings the
    // one before it back, while the activity time stays the deleted one's (the inbox is
    // ordered by it).
    let view = |m: &Member| {
        let resp = server.get(&format!("/v1/conversations/{group}"), m.auth());
        resp.expect(200);
        resp
    };
    let resp = view(&a);
    assert_eq!(parse_id(resp.at("conversation.last_message.id")), last);
    assert_eq!(
        resp.str("conversation.last_activity_at"),
        resp.str("conversation.last_message.created_at")
    );
    let last_at = resp.str("conversation.last_message.created_at").to_string();
    server
        .delete(&format!("/v1/messages/{last}"), d.auth())
        .expect(204);
    let before = *of(group).last().unwrap();
    let resp = view(&b);
    assert_eq!(parse_id(resp.at("conversation.last_message.id")), before);
    assert_eq!(resp.str("conversation.last_activity_at"), last_at);
    assert!(resp.str("conversation.last_message.created_at") <= last_at.as_str());
}
