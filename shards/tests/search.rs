//! Proves built-in search (issue 6) against the real `nova` process with 2 shards: post
//! search by words (case- and accent-insensitive AND), `#tag` and `from:`, ranked by match
//! then recency and paginated; visibility (followers-only posts, private accounts), blocks
//! both ways and mutes; edits, deletes and display-name changes reflected; accounts (exact username first, whole word, prefix) and hashtag
//! completion with counts; `GET /v1/tags/{tag}`; answers unchanged by `nova admin reindex`
//! and an index built at start-up when missing; partial answers when a shard is late; bad
//! queries answered with clean 400s; and the segmented postings' merges, under edits and
//! deletes and across a SIGKILL.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use simd_json::json;

/// How long the index may lag behind a write before a test gives up.
const INDEX_LAG_MAX: Duration = Duration::from_secs(5);

fn member_named(server: &Server, username: &str, display: &str) -> Member {
    let password = format!("pw-{username}-secret");
    let resp = server.post(
        "/v1/accounts",
        None,
        json!({"username": username, "email": format!("{username}@example.com"),
               "password": password.clone(), "display_name": display}),
    );
    resp.expect(201);
    let user = User::from_created(&resp, &password);
    let login = server.login(&user.username, &password);
    Member {
        user,
        token: login.access,
    }
}

fn post(server: &Server, author: &Member, text: &str, visibility: &str) -> u64 {
    let resp = server.post(
        "/v1/posts",
        author.auth(),
        json!({"text": text, "visibility": visibility}),
    );
    resp.expect(201);
    parse_id(resp.at("post.id"))
}

fn search(server: &Server, who: &Member, query: &str) -> Resp {
    let resp = server.get(&format!("/v1/search?{query}"), who.auth());
    resp.expect(200);
    resp
}

/// Post ids a search answers.
fn posts(server: &Server, who: &Member, q: &str) -> Vec<u64> {
    item_ids(&search(
        server,
        who,
        &format!("type=posts&q={}", percent_encode(q)),
    ))
}

/// Waits until `f` gives `want` (the index lags writes by a moment); fails with the last answer.
fn eventually<T: PartialEq + std::fmt::Debug>(what: &str, want: T, mut f: impl FnMut() -> T) {
    let mut last = None;
    let ok = wait_until(INDEX_LAG_MAX, || {
        let got = f();
        let ok = got == want;
        last = Some(got);
        ok
    });
    assert!(ok, "{what}: wanted {want:?}, last got {last:?}");
}

#[test]
fn posts_by_words_tags_and_author_ranked_and_paged() {
    let server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let reader = server.member_on_shard(1);
    let p1 = post(&server, &a, "Zebra crossing at night", "public");
    let p2 = post(&server, &b, "the zebra café is CROSSING", "public");
    let p3 = post(&server, &a, "#Zebra stripes", "public");
    let p4 = post(&server, &b, "Ñandú and zebra", "public");
    // Ranked by match (a post tagged with the word first), then newest first, across shards.
    eventually("zebra", vec![p3, p4, p2, p1], || {
        posts(&server, &reader, "zebra")
    });
    for (q, want) in [
        ("zebra crossing", vec![p2, p1]),
        ("ZÉBRA   Crossing!", vec![p2, p1]),
        ("cafe", vec![p2]),
        ("nandu", vec![p4]),
        ("#zebra", vec![p3]),
        ("#ZEBRA stripes", vec![p3]),
        (&format!("from:{} zebra", b.name()), vec![p4, p2]),
        (&format!("from:@{}", a.name()), vec![p3, p1]),
        ("from:nobody_at_all zebra", vec![]),
        ("zebra giraffe", vec![]),
        ("the AND, of ... !!", vec![]),
    ] {
        assert_eq!(posts(&server, &reader, q), want, "query {q:?}");
    }
    // A query of only stop-words and punctuation: empty, not an error.
    let resp = search(&server, &reader, "q=the%20and%20%3F%3F");
    assert_eq!(item_ids(&resp), Vec::<u64>::new());
    assert!(resp.at("next").is_null());
    assert_eq!(resp.at("partial").as_bool(), Some(false));
    // Pages of 2 with a `next` cursor and a Link header; together they are the whole list.
    let first = search(&server, &reader, "q=zebra&limit=2");
    assert_eq!(item_ids(&first), vec![p3, p4]);
    let next = first.str("next").to_string();
    let link = first.header("link").expect("a Link header");
    assert!(
        link.contains("rel=\"next\"") && link.contains("cursor="),
        "{link}"
    );
    let second = search(
        &server,
        &reader,
        &format!("q=zebra&limit=2&cursor={}", percent_encode(&next)),
    );
    assert_eq!(item_ids(&second), vec![p2, p1]);
    if !second.at("next").is_null() {
        let third = search(
            &server,
            &reader,
            &format!("q=zebra&limit=2&cursor={}", second.str("next")),
        );
        assert_eq!(item_ids(&third), Vec::<u64>::new());
    }
    // The same through a JSON body, and the tag route.
    let resp = server.post(
        "/v1/search",
        reader.auth(),
        json!({"q": "zebra crossing", "type": "posts"}),
    );
    resp.expect(200);
    assert_eq!(item_ids(&resp), vec![p2, p1]);
    let resp = server.get("/v1/tags/zebra", reader.auth());
    resp.expect(200);
    assert_eq!(item_ids(&resp), vec![p3]);
    let resp = server.get("/v1/tags/Z%C3%A9bra?limit=5", reader.auth());
    resp.expect(200);
    assert_eq!(item_ids(&resp), vec![p3]);
    // Items are full post views.
    let resp = search(&server, &reader, "q=nandu");
    assert_eq!(resp.str("items.0.author.username"), b.name());
    assert_eq!(resp.str("items.0.text"), "Ñandú and zebra");
}

#[test]
fn visibility_blocks_mutes_and_deletes() {
    let server = Server::start(&[]);
    for (author_shard, other_shard) in [(0, 1), (1, 0)] {
        let author = server.member_on_shard(author_shard);
        let follower = server.member_on_shard(other_shard);
        let stranger = server.member_on_shard(other_shard);
        let blocked = server.member_on_shard(other_shard);
        let blocker = server.member_on_shard(author_shard);
        let muter = server.member_on_shard(other_shard);
        server.follow(follower.auth(), author.id());
        let word = unique_name("walrus").replace('_', "");
        let open = post(&server, &author, &format!("public {word}"), "public");
        let secret = post(&server, &author, &format!("secret {word}"), "followers");
        eventually("author sees both", vec![secret, open], || {
            posts(&server, &author, &word)
        });
        assert_eq!(posts(&server, &follower, &word), vec![secret, open]);
        assert_eq!(posts(&server, &stranger, &word), vec![open]);
        // Blocks from either side hide the author's posts.
        server
            .post(
                &format!("/v1/users/{}/block", blocked.id()),
                author.auth(),
                json!({}),
            )
            .expect(200);
        server
            .post(
                &format!("/v1/users/{}/block", author.id()),
                blocker.auth(),
                json!({}),
            )
            .expect(200);
        eventually("blocked by the author", vec![], || {
            posts(&server, &blocked, &word)
        });
        eventually("blocking the author", vec![], || {
            posts(&server, &blocker, &word)
        });
        // And the author does not see the posts of those it blocked or who blocked it.
        let theirs = post(&server, &blocked, &format!("reply {word}"), "public");
        eventually(
            "stranger sees the blocked user's post",
            vec![theirs, open],
            || posts(&server, &stranger, &word),
        );
        assert_eq!(posts(&server, &author, &word), vec![secret, open]);
        // Mutes hide the muted author from the muter only.
        server
            .post(
                &format!("/v1/users/{}/mute", author.id()),
                muter.auth(),
                json!({}),
            )
            .expect(200);
        assert_eq!(posts(&server, &muter, &word), vec![theirs]);
        // A delete leaves the index.
        server
            .delete(&format!("/v1/posts/{open}"), author.auth())
            .expect(204);
        eventually("deleted post gone", vec![theirs], || {
            posts(&server, &stranger, &word)
        });
        assert_eq!(posts(&server, &follower, &word), vec![theirs, secret]);
        // An edit is reflected: the old words no longer find the post, the new ones do.
        let fresh = unique_name("narwhal").replace('_', "");
        server
            .call(
                "PATCH",
                &format!("/v1/posts/{secret}"),
                author.auth(),
                Some(json!({"text": format!("edited {fresh}")})),
            )
            .expect(200);
        eventually("edited post found by its new text", vec![secret], || {
            posts(&server, &follower, &fresh)
        });
        eventually("edited post gone from its old text", vec![theirs], || {
            posts(&server, &follower, &word)
        });
        // A private account's public posts are for its followers only.
        let public = post(&server, &author, &format!("open {fresh}"), "public");
        eventually("stranger sees a public post", vec![public], || {
            posts(&server, &stranger, &fresh)
        });
        server
            .call(
                "PATCH",
                "/v1/me/settings",
                author.auth(),
                Some(json!({"private": true})),
            )
            .expect(200);
        assert_eq!(posts(&server, &stranger, &fresh), Vec::<u64>::new());
        assert_eq!(posts(&server, &follower, &fresh), vec![public, secret]);
    }
}

#[test]
fn accounts_and_hashtags() {
    let server = Server::start(&[]);
    let me = server.member_on_shard(0);
    let kiwi = member_named(&server, "kiwi", "Plain Kiwi");
    let kiwifruit = member_named(&server, "kiwifruit", "Green Fruit");
    let zed = member_named(&server, "zed", "Kiwi Élan");
    let hidden = member_named(&server, "kiwihidden", "Hidden");
    let accounts = |who: &Member, q: &str| -> Vec<u64> {
        item_ids(&search(
            &server,
            who,
            &format!("type=accounts&q={}", percent_encode(q)),
        ))
    };
    // Exact username first, then whole words of names, then prefixes.
    eventually(
        "kiwi",
        vec![kiwi.id(), zed.id(), kiwifruit.id(), hidden.id()],
        || accounts(&me, "kiwi"),
    );
    assert_eq!(accounts(&me, "@KIWI")[0], kiwi.id());
    assert_eq!(accounts(&me, "elan"), vec![zed.id()]);
    assert_eq!(accounts(&me, "kiwi el"), vec![zed.id()]);
    assert_eq!(accounts(&me, "green fru"), vec![kiwifruit.id()]);
    // Blocks either way hide an account.
    server
        .post(
            &format!("/v1/users/{}/block", me.id()),
            hidden.auth(),
            json!({}),
        )
        .expect(200);
    eventually("blocked account gone", false, || {
        accounts(&me, "kiwi").contains(&hidden.id())
    });
    server
        .get(&format!("/v1/users/{}", me.id()), hidden.auth())
        .expect(404);
    server
        .get(&format!("/v1/users/{}", hidden.id()), me.auth())
        .expect(404);
    assert_eq!(accounts(&hidden, me.name()), Vec::<u64>::new());
    assert_eq!(
        accounts(&server.member_on_shard(1), me.name()),
        vec![me.id()]
    );
    // A new display name is found, the old one no longer.
    server
        .call(
            "PATCH",
            "/v1/me/profile",
            zed.auth(),
            Some(json!({"display_name": "Ñu Zebu"})),
        )
        .expect(200);
    eventually("renamed", vec![zed.id()], || accounts(&me, "nu zeb"));
    eventually("old name gone", false, || {
        accounts(&me, "elan").contains(&zed.id())
    });
    // Pagination of accounts.
    let first = search(&server, &me, "type=accounts&q=kiwi&limit=1");
    assert_eq!(item_ids(&first), vec![kiwi.id()]);
    let second = search(
        &server,
        &me,
        &format!(
            "type=accounts&q=kiwi&limit=1&cursor={}",
            percent_encode(first.str("next"))
        ),
    );
    assert_eq!(item_ids(&second), vec![kiwifruit.id()]);

    // Hashtags: prefix completion with counts summed over both shards.
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    post(&server, &a, "#Kiwi one", "public");
    post(&server, &b, "#kiwi two", "public");
    post(&server, &b, "#kiwisauce three", "public");
    post(&server, &a, "#kiwí accented", "public");
    let tags = |q: &str| -> Vec<(String, u64)> {
        let resp = search(
            &server,
            &me,
            &format!("type=hashtags&q={}", percent_encode(q)),
        );
        resp.at("items")
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t.get("name").unwrap().as_str().unwrap().to_string(),
                    t.get("count").unwrap().as_u64().unwrap(),
                )
            })
            .collect()
    };
    eventually(
        "kiw",
        vec![
            ("kiwi".to_string(), 2),
            ("kiwisauce".to_string(), 1),
            ("kiwí".to_string(), 1),
        ],
        || tags("kiw"),
    );
    // The tag itself first.
    assert_eq!(tags("#kiwisauce")[0], ("kiwisauce".to_string(), 1));
    assert_eq!(tags("nothing"), vec![]);

    // The hashtags of posts not everyone may read are not counted: a followers-only post's,
    // and a private account's public post's (on both shards).
    for (k, author) in [&a, &b].into_iter().enumerate() {
        post(&server, author, &format!("#hushfollowers{k}"), "followers");
        let hidden = server.member_on_shard(k as u32);
        let set_private = |private: bool| server.set_private(&hidden, private);
        set_private(true);
        post(&server, &hidden, &format!("#hushprivate{k}"), "public");
        // Posted last on the shard: once it is counted, the others were taken in.
        post(&server, author, &format!("#hushmarker{k}"), "public");
        eventually("marker", vec![(format!("hushmarker{k}"), 1)], || {
            tags(&format!("hushmarker{k}"))
        });
        assert_eq!(tags(&format!("hushfollowers{k}")), vec![]);
        assert_eq!(tags(&format!("hushprivate{k}")), vec![]);
        // Public again: its posts' hashtags count again, at once.
        set_private(false);
        assert_eq!(
            tags(&format!("hushprivate{k}")),
            vec![(format!("hushprivate{k}"), 1)]
        );
        // And private again: they no longer do.
        set_private(true);
        assert_eq!(tags(&format!("hushprivate{k}")), vec![]);
    }
}

#[test]
fn bad_queries_are_clean_400s() {
    let server = Server::start(&[]);
    let me = server.member_on_shard(0);
    let big = "x".repeat(10 * 1024);
    for (query, code) in [
        ("q=", "invalid_query"),
        ("q=%20%20", "invalid_query"),
        ("type=posts", "invalid_query"),
        (&format!("q={big}") as &str, "query_too_long"),
        ("q=a%01b", "invalid_query"),
        ("q=a%0Ab", "invalid_query"),
        ("q=%ED%A0%80", "invalid_query"),
        ("q=%zz", "invalid_query"),
        ("q=ok&type=people", "invalid_type"),
        ("q=ok&limit=0", "invalid_limit"),
        ("q=ok&limit=101", "invalid_limit"),
        ("q=ok&limit=x", "invalid_limit"),
        ("q=ok&cursor=abc", "invalid_cursor"),
        ("q=ok&type=accounts&cursor=abc", "invalid_cursor"),
        ("q=ok&type=hashtags&cursor=-1", "invalid_cursor"),
        ("q=a1+b1+c1+d1+e1+f1+g1+h1+i1", "too_many_terms"),
        (&format!("q={}", "y".repeat(300)) as &str, "query_too_long"),
        ("q=two+words&type=hashtags", "invalid_query"),
    ] {
        server
            .get(&format!("/v1/search?{query}"), me.auth())
            .expect_error(400, code);
    }
    server
        .get("/v1/search?q=ok", None)
        .expect_error(401, "unauthorized");
    server
        .post("/v1/search", me.auth(), json!({"q": big}))
        .expect_error(400, "query_too_long");
    server
        .post("/v1/search", me.auth(), json!({"q": "a\u{7}b"}))
        .expect_error(400, "invalid_query");
    server
        .post("/v1/search", me.auth(), json!({"q": ""}))
        .expect_error(400, "invalid_query");
    server
        .post("/v1/search", me.auth(), json!({"q": 5}))
        .expect_error(422, "invalid_body");
    let resp = server.req(
        &Req::post("/v1/search")
            .bearer(&me.token)
            .raw("application/json", br#"{"q": "\ud800"}"#.to_vec()),
    );
    assert_eq!(resp.status, 400, "{}", resp.what_happened());
    assert!(resp.error_code().is_some(), "{}", resp.what_happened());
    let resp = server.get("/v1/tags/%ED%A0%80", me.auth());
    resp.expect_error(400, "invalid_query");
    // Still serving.
    assert_eq!(posts(&server, &me, "anything"), Vec::<u64>::new());
}

/// Snapshot of several queries' answers, to compare before and after a rebuild.
fn answers(server: &Server, who: &Member, queries: &[String]) -> Vec<String> {
    queries
        .iter()
        .map(|q| search(server, who, q).at("items").encode())
        .collect()
}

#[test]
fn reindex_and_start_up_rebuild_give_the_same_answers() {
    let mut server = Server::start(&[]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let reader = member_named(&server, "reader", "Reading Person");
    let mut last = 0;
    for i in 0..30 {
        let author = if i % 2 == 0 { &a } else { &b };
        last = post(
            &server,
            author,
            &format!("Lemur number{} #tag{} lémur", i % 5, i % 3),
            if i % 4 == 0 { "followers" } else { "public" },
        );
    }
    let gone = post(&server, &a, "lemur to delete", "public");
    server
        .delete(&format!("/v1/posts/{gone}"), a.auth())
        .expect(204);
    let queries: Vec<String> = [
        "q=lemur&limit=100",
        "q=lemur+number3",
        "q=%23tag1",
        "type=accounts&q=read",
        "type=hashtags&q=tag",
        &format!("q=from:{}+lemur", a.name()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Both shards have taken everything in (each indexes its own posts, at its own pace):
    // the hashtags of the 22 public posts of 30 are counted, the followers-only ones not.
    eventually("indexed", (Some(last), 22, 22), || {
        let all = search(&server, &reader, "q=lemur&limit=100");
        let tags = search(&server, &reader, "type=hashtags&q=tag");
        let used: u64 = tags
            .at("items")
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.get("count").unwrap().as_u64().unwrap())
            .sum();
        let ids = item_ids(&all);
        (ids.first().copied(), ids.len(), used)
    });
    let before = answers(&server, &reader, &queries);
    assert_eq!(
        posts(&server, &reader, "lemur").len(),
        20,
        "a page of 20 of the 30 posts, 8 followers-only, one deleted"
    );
    assert_eq!(
        search(&server, &reader, "q=lemur&limit=100")
            .at("items")
            .as_array()
            .unwrap()
            .len(),
        22,
        "30 posts, 8 followers-only, one deleted"
    );
    // While the server holds the files: refused, saying so (not that they are damaged).
    let busy = std::process::Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(["admin", "reindex", "--data-dir"])
        .arg(server.launch().data_dir())
        .output()
        .unwrap();
    assert!(!busy.status.success());
    let said = String::from_utf8_lossy(&busy.stderr);
    assert!(said.contains("in use by another process"), "{said}");
    server.stop();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(["admin", "reindex", "--data-dir"])
        .arg(server.launch().data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("reindexed 30 posts"), "{said}");
    server.restart();
    let reader = reader.logged_in_again(&server);
    assert_eq!(answers(&server, &reader, &queries), before);

    // A data directory whose index was never built gets one at start-up.
    let fresh = Launch::new();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(["admin", "import-posts", "--shards", "2", "--users", "20"])
        .args(["--posts", "500", "--password", "password1", "--data-dir"])
        .arg(fresh.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported = fresh.start();
    let login = imported.login("user3", "password1");
    let resp = imported.get("/v1/search?q=kaka&limit=100", Some(&login.access));
    resp.expect(200);
    assert!(!item_ids(&resp).is_empty(), "{}", resp.what_happened());
    let resp = imported.get("/v1/search?type=accounts&q=user3", Some(&login.access));
    assert_eq!(item_ids(resp.expect(200))[0], login.user_id);
}

#[test]
fn a_late_shard_gives_a_partial_answer() {
    // Shards get no time at all: only the shard serving the connection answers.
    let server = Server::start(&["--search-shard-timeout-ms", "0"]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let pa = post(&server, &a, "okapi here", "public");
    let pb = post(&server, &b, "okapi there", "public");
    let mut seen = [false, false];
    wait_until(INDEX_LAG_MAX, || {
        let resp = search(&server, &a, "q=okapi");
        assert_eq!(resp.at("partial").as_bool(), Some(true));
        let want = if resp.shard() == 0 {
            vec![pa]
        } else {
            vec![pb]
        };
        if item_ids(&resp) == want {
            seen[resp.shard() as usize] = true;
        }
        seen == [true, true]
    });
    assert_eq!(seen, [true, true], "each shard answered for its own posts");
}

/// Every post matching `word`, all pages.
fn all_posts(server: &Server, who: &Member, word: &str) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut query = format!("type=posts&limit=100&q={word}");
    loop {
        let resp = search(server, who, &query);
        ids.extend(item_ids(&resp));
        if resp.at("next").is_null() {
            return ids;
        }
        let next = resp.str("next").to_string();
        query = format!(
            "type=posts&limit=100&q={word}&cursor={}",
            percent_encode(&next)
        );
    }
}

fn segments(server: &Server) -> Vec<u64> {
    server.per_shard_metric("nova_search_segments")
}

#[test]
fn segments_merge_under_posts_edits_and_deletes_and_survive_a_kill() {
    // Segments of 8 postings: a few hundred posts make dozens of segments and merges two
    // levels deep, with posts edited and deleted while merges are under way.
    let mut server = Server::start(&["--search-segment-postings", "8"]);
    let a = server.member_on_shard(0);
    let b = server.member_on_shard(1);
    let reader = server.member_on_shard(1);
    let words = [
        "okapi", "w0", "w1", "w2", "w3", "w4", "w5", "v0", "v1", "v2", "v3",
    ];
    // post id -> its words, newest last
    let mut model: std::collections::BTreeMap<u64, (bool, Vec<String>)> = Default::default();
    let text_of = |i: usize| format!("okapi w{} v{}", i % 6, i % 4);
    let write_some =
        |server: &Server, model: &mut std::collections::BTreeMap<_, _>, from: usize| {
            for i in from..from + 180 {
                let on_a = i % 2 == 0;
                let author = if on_a { &a } else { &b };
                let id = post(server, author, &text_of(i), "public");
                model.insert(
                    id,
                    (on_a, text_of(i).split(' ').map(String::from).collect()),
                );
                if i % 9 == 4 {
                    let (&old, _) = model.iter().nth(i / 3).unwrap();
                    let (was_a, _) = model[&old];
                    let owner = if was_a { &a } else { &b };
                    if i % 2 == 0 {
                        server
                            .delete(&format!("/v1/posts/{old}"), owner.auth())
                            .expect(204);
                        model.remove(&old);
                    } else {
                        let body = json!({"text": "okapi w5 edited"});
                        let path = format!("/v1/posts/{old}");
                        server
                            .call("PATCH", &path, owner.auth(), Some(body))
                            .expect(200);
                        model.insert(
                            old,
                            (was_a, vec!["okapi".into(), "w5".into(), "edited".into()]),
                        );
                    }
                }
            }
        };
    let want =
        |model: &std::collections::BTreeMap<u64, (bool, Vec<String>)>, word: &str| -> Vec<u64> {
            model
                .iter()
                .rev()
                .filter(|(_, (_, w))| w.iter().any(|x| x == word))
                .map(|(id, _)| *id)
                .collect()
        };
    write_some(&server, &mut model, 0);
    for word in words.iter().chain(&["edited"]) {
        eventually(word, want(&model, word), || {
            all_posts(&server, &reader, word)
        });
    }
    // Merges keep up: a few levels' worth of segments, not one per batch of posts.
    eventually("segments", true, || {
        segments(&server).iter().all(|n| (1..=24).contains(n))
    });
    // More posts, and a kill while the index (and its merges) is behind them.
    write_some(&server, &mut model, 180);
    server.kill9();
    server.restart();
    let reader = reader.logged_in_again(&server);
    for word in words.iter().chain(&["edited"]) {
        eventually(word, want(&model, word), || {
            all_posts(&server, &reader, word)
        });
    }
    // Merges keep up: a few levels' worth of segments, not one per batch of posts.
    eventually("segments", true, || {
        segments(&server).iter().all(|n| (1..=24).contains(n))
    });
}
