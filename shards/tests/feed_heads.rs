//! Home feeds are served from memory once read (shards/src/feeds.rs): proves, against the
//! real `nova` process with reader and author on the same and on different shards, that a
//! feed already read takes in every later change at once — a new post, a mute, an edit,
//! feed preferences, a delete, an unfollow and a follow again, a block both ways — and that
//! a feed longer than what memory keeps pages to its end without gaps or repeats.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use simd_json::json;

/// (reader, author) shards: different both ways, and the same.
const PAIRS: [(u32, u32); 3] = [(0, 1), (1, 0), (1, 1)];

fn home(server: &Server, reader: &Member) -> Vec<u64> {
    server.walk_posts("/v1/timelines/home", &reader.token, 50)
}

/// The text of `post` as `reader`'s home feed shows it.
fn home_text(server: &Server, reader: &Member, post: u64) -> String {
    let resp = server.get("/v1/timelines/home?limit=50", reader.auth());
    resp.expect(200);
    let items = resp.at("items").as_array().unwrap().clone();
    let item = items
        .iter()
        .find(|i| parse_id(i.get("id").unwrap()) == post)
        .unwrap_or_else(|| panic!("post {post} not in the feed: {}", resp.what_happened()));
    item.get("text").unwrap().as_str().unwrap().to_string()
}

fn call(server: &Server, method: &str, path: &str, who: &Member, body: Option<Json>) {
    let resp = server.call(method, path, who.auth(), body);
    assert!(
        resp.status == 200 || resp.status == 204,
        "{method} {path}: {}",
        resp.what_happened()
    );
}

#[test]
fn a_feed_already_read_takes_in_every_change() {
    let server = Server::start(&[]);
    for (r, a) in PAIRS {
        let reader = server.member_on_shard(r);
        let author = server.member_on_shard(a);
        let own = server.new_post(&reader, "my own post");
        let follow = format!("/v1/users/{}/follow", author.id());
        call(&server, "POST", &follow, &reader, None);
        // Read first: from here on the feed is served from memory.
        assert_eq!(home(&server, &reader), vec![own], "pair {r}/{a}");

        let p1 = server.new_post(&author, "first post of the author");
        assert_eq!(
            home(&server, &reader),
            vec![p1, own],
            "new post, pair {r}/{a}"
        );

        let mute = format!("/v1/users/{}/mute", author.id());
        call(&server, "POST", &mute, &reader, None);
        assert_eq!(home(&server, &reader), vec![own], "muted, pair {r}/{a}");
        call(&server, "DELETE", &mute, &reader, None);
        assert_eq!(
            home(&server, &reader),
            vec![p1, own],
            "unmuted, pair {r}/{a}"
        );

        call(
            &server,
            "PATCH",
            &format!("/v1/posts/{p1}"),
            &author,
            Some(json!({"text": "first post, edited"})),
        );
        assert_eq!(home_text(&server, &reader, p1), "first post, edited");

        let p2 = server.new_post(&author, "a post about zucchini");
        assert_eq!(home(&server, &reader), vec![p2, p1, own]);
        let prefs = "/v1/me/preferences";
        call(
            &server,
            "PATCH",
            prefs,
            &reader,
            Some(json!({"muted_words": ["zucchini"]})),
        );
        assert_eq!(
            home(&server, &reader),
            vec![p1, own],
            "muted word, pair {r}/{a}"
        );
        call(
            &server,
            "PATCH",
            prefs,
            &reader,
            Some(json!({"muted_words": []})),
        );
        assert_eq!(home(&server, &reader), vec![p2, p1, own]);

        call(&server, "DELETE", &format!("/v1/posts/{p1}"), &author, None);
        assert_eq!(
            home(&server, &reader),
            vec![p2, own],
            "deleted, pair {r}/{a}"
        );

        call(&server, "DELETE", &follow, &reader, None);
        assert_eq!(
            home(&server, &reader),
            vec![own],
            "unfollowed, pair {r}/{a}"
        );
        call(&server, "POST", &follow, &reader, None);
        assert_eq!(
            home(&server, &reader),
            vec![p2, own],
            "followed again, pair {r}/{a}"
        );

        // A block by the author reaches the reader's shard and ends the follow.
        let block = format!("/v1/users/{}/block", reader.id());
        call(&server, "POST", &block, &author, None);
        assert_eq!(home(&server, &reader), vec![own], "blocked, pair {r}/{a}");
        call(&server, "DELETE", &block, &author, None);
        assert_eq!(home(&server, &reader), vec![own], "unblocked, pair {r}/{a}");
        call(&server, "POST", &follow, &reader, None);
        let p3 = server.new_post(&author, "after the block");
        assert_eq!(home(&server, &reader), vec![p3, p2, own], "pair {r}/{a}");

        // And a block by the reader, on its own shard.
        let theirs = format!("/v1/users/{}/block", author.id());
        call(&server, "POST", &theirs, &reader, None);
        assert_eq!(
            home(&server, &reader),
            vec![own],
            "reader blocked, pair {r}/{a}"
        );
    }
}

#[test]
fn a_feed_longer_than_memory_keeps_pages_to_its_end() {
    let server = Server::start(&[]);
    let reader = server.member_on_shard(0);
    let author = server.member_on_shard(1);
    call(
        &server,
        "POST",
        &format!("/v1/users/{}/follow", author.id()),
        &reader,
        None,
    );
    // More posts than a head keeps (256), from both shards, read while they arrive.
    let mut all = Vec::new();
    for i in 0..300 {
        let who = if i % 3 == 0 { &reader } else { &author };
        all.push(server.new_post(who, &format!("post number {i}")));
        if i % 100 == 0 {
            assert_eq!(home(&server, &reader).len(), all.len());
        }
    }
    // Newest first by id: ids order posts by millisecond, then by shard, so two posts made
    // in one millisecond on different shards (the reader's right after the author's, on a
    // fast machine) show in shard order, not in the order they were made.
    all.sort_unstable_by(|a, b| b.cmp(a));
    for limit in [7, 50, 100] {
        let walked = server.walk_posts("/v1/timelines/home", &reader.token, limit);
        assert_eq!(walked, all, "walk by {limit}");
    }
}

/// `nova_feed_heads` of each shard, from `/metrics`.
fn heads(server: &Server) -> Vec<u64> {
    server.per_shard_metric("nova_feed_heads")
}

/// Heads are built ahead of any read while the shard is idle (`warm_heads`), after the
/// follow that drops them; the feed then read is right and takes in a post that came after.
/// With `--warm-heads 0` no head exists until a read builds it.
#[test]
fn heads_are_built_before_any_read_unless_turned_off() {
    for warm in [true, false] {
        let server = match warm {
            true => Server::start(&[]),
            false => Server::start(&["--warm-heads", "0"]),
        };
        let reader = server.member_on_shard(0);
        let author = server.member_on_shard(1);
        let own = server.new_post(&reader, "my own post");
        let follow = format!("/v1/users/{}/follow", author.id());
        call(&server, "POST", &follow, &reader, None);
        if warm {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while heads(&server).iter().any(|&n| n == 0) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no heads built: {:?}",
                    heads(&server)
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1000));
            assert_eq!(heads(&server), vec![0, 0]);
        }
        let p1 = server.new_post(&author, "after the heads were built");
        assert_eq!(home(&server, &reader), vec![p1, own], "warm {warm}");
        assert!(heads(&server)[0] >= 1, "warm {warm}");
    }
}
