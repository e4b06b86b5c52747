//! Proves the DeathStarBench socialNetwork routes of docs/api-contract.md against the real
//! `nova` process run with `--dsb-compat`, with users on both shards: register, follow and
//! unfollow by ids and by names, compose, the two timeline reads and their shape and slicing,
//! the benchmark's raw wire habits, and that the routes do not exist without the flag.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

const FORM: &str = "application/x-www-form-urlencoded";
const PASSWORD: &str = "dsb-password";

/// A user registered through `/wrk2-api/user/register`.
#[derive(Clone, Debug)]
struct DsbUser {
    /// The client's own id (`user_id` of the form).
    ext: u64,
    name: String,
    /// Nova's id (learned by logging in), which tells the shard.
    id: u64,
}

impl DsbUser {
    fn shard(&self) -> u32 {
        shard_of(self.id)
    }
}

fn dsb_server() -> Server {
    Server::start(&["--dsb-compat"])
}

fn form(server: &Server, path: &str, body: &str) -> Resp {
    server.req(&Req::post(path).raw(FORM, body.as_bytes().to_vec()))
}

/// Requires 200 with exactly the text `want`.
fn expect_text(resp: &Resp, want: &str) {
    assert_eq!(resp.status, 200, "{}", resp.what_happened());
    assert_eq!(resp.text(), want, "{}", resp.what_happened());
}

fn register(server: &Server, ext: u64, name: &str) -> DsbUser {
    let body = format!(
        "first_name=First{ext}&last_name=Last{ext}&username={name}&password={PASSWORD}\
         &user_id={ext}"
    );
    expect_text(&form(server, "/wrk2-api/user/register", &body), "Success!");
    let login = server.login(name, PASSWORD);
    DsbUser {
        ext,
        name: name.to_string(),
        id: login.user_id,
    }
}

/// Registers `username_N` users (the benchmark's names) until each shard has `per_shard`;
/// returns them by shard.
fn users_by_shard(server: &Server, per_shard: usize) -> [Vec<DsbUser>; 2] {
    let mut out: [Vec<DsbUser>; 2] = [Vec::new(), Vec::new()];
    for ext in 1..=200u64 {
        if out.iter().all(|v| v.len() >= per_shard) {
            return out;
        }
        let user = register(server, ext, &format!("username_{ext}"));
        let shard = user.shard() as usize;
        if out[shard].len() < per_shard {
            out[shard].push(user);
        }
    }
    panic!("200 registrations did not give {per_shard} users on each shard");
}

fn follow_ids(server: &Server, follower: &DsbUser, followee: &DsbUser) {
    let body = format!("user_id={}&followee_id={}", follower.ext, followee.ext);
    expect_text(&form(server, "/wrk2-api/user/follow", &body), "Success!");
}

fn follow_names(server: &Server, follower: &DsbUser, followee: &DsbUser) {
    let body = format!(
        "user_name={}&followee_name={}",
        follower.name, followee.name
    );
    expect_text(&form(server, "/wrk2-api/user/follow", &body), "Success!");
}

fn unfollow_ids(server: &Server, follower: &DsbUser, followee: &DsbUser) {
    let body = format!("user_id={}&followee_id={}", follower.ext, followee.ext);
    expect_text(&form(server, "/wrk2-api/user/unfollow", &body), "Success!");
}

fn unfollow_names(server: &Server, follower: &DsbUser, followee: &DsbUser) {
    let body = format!(
        "user_name={}&followee_name={}",
        follower.name, followee.name
    );
    expect_text(&form(server, "/wrk2-api/user/unfollow", &body), "Success!");
}

/// Composes as the benchmark does (values not percent-encoded).
fn compose(server: &Server, author: &DsbUser, text: &str, media: &[(&str, &str)]) {
    let ids: Vec<String> = media.iter().map(|(id, _)| format!("\"{id}\"")).collect();
    let types: Vec<String> = media.iter().map(|(_, t)| format!("\"{t}\"")).collect();
    let body = format!(
        "username={}&user_id={}&text={text}&media_ids=[{}]&media_types=[{}]&post_type=0",
        author.name,
        author.ext,
        ids.join(","),
        types.join(",")
    );
    expect_text(
        &form(server, "/wrk2-api/post/compose", &body),
        "Successfully upload post",
    );
}

/// A timeline read: `kind` is `user-timeline` or `home-timeline`; requires 200 and an array.
fn read(server: &Server, kind: &str, user: &DsbUser, start: i64, stop: i64) -> Vec<Json> {
    let path = format!(
        "/wrk2-api/{kind}/read?user_id={}&start={start}&stop={stop}",
        user.ext
    );
    let resp = server.get(&path, None);
    resp.expect(200);
    resp.json()
        .as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {}", resp.what_happened()))
        .clone()
}

fn texts(posts: &[Json]) -> Vec<String> {
    posts
        .iter()
        .map(|p| {
            p.get("text")
                .and_then(|t| t.as_str())
                .expect("text")
                .to_string()
        })
        .collect()
}

fn post_ids(posts: &[Json]) -> Vec<u64> {
    posts
        .iter()
        .map(|p| parse_id(p.get("post_id").expect("post_id")))
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn digits(value: &Json, what: &str) -> u64 {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} {value:?} is not a string"));
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "{what} {s:?} is not a decimal string"
    );
    s.parse().unwrap()
}

/// Checks the benchmark's post shape; `created` bounds the timestamp (Unix ms).
fn check_dsb_post(post: &Json, author: &DsbUser, created: (u64, u64)) {
    let got = keys(post);
    for key in [
        "creator",
        "media",
        "post_id",
        "post_type",
        "req_id",
        "text",
        "timestamp",
        "urls",
        "user_mentions",
    ] {
        assert!(got.iter().any(|k| k == key), "no {key} in {post:?}");
    }
    digits(post.get("post_id").unwrap(), "post_id");
    let req_id = post.get("req_id").unwrap();
    assert!(
        req_id.as_str().is_some_and(|s| !s.is_empty()),
        "req_id {req_id:?} is not a string"
    );
    let creator = post.get("creator").unwrap();
    assert_eq!(keys(creator), ["user_id", "username"], "{post:?}");
    assert_eq!(
        creator.get("user_id").unwrap().as_str(),
        Some(author.ext.to_string().as_str()),
        "creator.user_id is the client's id: {post:?}"
    );
    assert_eq!(
        creator.get("username").unwrap().as_str(),
        Some(author.name.as_str()),
        "{post:?}"
    );
    assert!(post.get("text").unwrap().as_str().is_some());
    for m in post
        .get("user_mentions")
        .unwrap()
        .as_array()
        .expect("user_mentions")
    {
        assert_eq!(keys(m), ["user_id", "username"], "{post:?}");
        digits(m.get("user_id").unwrap(), "user_mentions.user_id");
    }
    for m in post.get("media").unwrap().as_array().expect("media") {
        assert_eq!(keys(m), ["media_id", "media_type"], "{post:?}");
        assert!(m.get("media_id").unwrap().as_str().is_some(), "{post:?}");
        assert!(m.get("media_type").unwrap().as_str().is_some(), "{post:?}");
    }
    for u in post.get("urls").unwrap().as_array().expect("urls") {
        assert_eq!(keys(u), ["expanded_url", "shortened_url"], "{post:?}");
        let short = u.get("shortened_url").unwrap().as_str().unwrap_or("");
        assert!(!short.is_empty(), "{post:?}");
    }
    let ts = digits(post.get("timestamp").unwrap(), "timestamp");
    // Same machine, same clock; a minute either way is only against nonsense (seconds, 0).
    assert!(
        ts + 60_000 >= created.0 && ts <= created.1 + 60_000,
        "timestamp {ts} is not the Unix ms of creation (between {} and {})",
        created.0,
        created.1
    );
    assert!(
        post.get("post_type").unwrap().as_u64().is_some(),
        "{post:?}"
    );
}

/// Sends raw bytes on a fresh connection and reads one answer.
fn raw(server: &Server, request: &str) -> RawResponse {
    let mut stream = connect(server.addr());
    write_all(&mut stream, request.as_bytes()).unwrap();
    read_raw_response(&mut stream).unwrap()
}

fn raw_json(resp: &RawResponse) -> Json {
    let mut body = resp.body.clone();
    simd_json::serde::from_slice::<Json>(&mut body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&resp.body)))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn dsb_routes_are_404_without_the_flag() {
    let server = Server::start(&[]);
    let body = "first_name=a&last_name=b&username=username_1&password=password1&user_id=1";
    for path in [
        "/wrk2-api/user/register",
        "/wrk2-api/user/follow",
        "/wrk2-api/user/unfollow",
        "/wrk2-api/post/compose",
    ] {
        form(&server, path, body).expect_error(404, "not_found");
    }
    for path in [
        "/wrk2-api/user-timeline/read?user_id=1&start=0&stop=10",
        "/wrk2-api/home-timeline/read?user_id=1&start=0&stop=10",
    ] {
        server.get(path, None).expect_error(404, "not_found");
    }
    // And nobody was registered.
    server
        .try_login("username_1", "password1")
        .expect_error(401, "invalid_credentials");
}

#[test]
fn compose_reaches_followers_and_mentioned_users_on_both_shards() {
    let server = dsb_server();
    let users = users_by_shard(&server, 5);
    for author_shard in [0, 1] {
        let other_shard = 1 - author_shard;
        let author = &users[author_shard][0];
        let near = &users[author_shard][1 + author_shard];
        let far = &users[other_shard][1 + author_shard];
        let mentioned = &users[other_shard][3];
        // By ids across shards, by names on the same shard.
        follow_ids(&server, far, author);
        follow_names(&server, near, author);

        let text = format!(
            "Hello @{} see http://example.com/a/b and https://nova.test/x?y #tag",
            mentioned.name
        );
        let before = now_ms();
        compose(&server, author, &text, &[("101", "png"), ("102", "jpg")]);
        let after = now_ms();

        let mine = read(&server, "user-timeline", author, 0, 10);
        assert_eq!(mine.len(), 1, "{mine:?}");
        let post = &mine[0];
        check_dsb_post(post, author, (before, after));
        assert_eq!(post.get("text").unwrap().as_str(), Some(text.as_str()));
        assert_eq!(post.get("post_type").unwrap().as_u64(), Some(0));
        let mentions = post.get("user_mentions").unwrap().as_array().unwrap();
        assert_eq!(mentions.len(), 1, "{post:?}");
        assert_eq!(
            mentions[0].get("username").unwrap().as_str(),
            Some(mentioned.name.as_str())
        );
        let media: Vec<(String, String)> = post
            .get("media")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m.get("media_id").unwrap().as_str().unwrap().to_string(),
                    m.get("media_type").unwrap().as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            media,
            [
                ("101".to_string(), "png".to_string()),
                ("102".to_string(), "jpg".to_string())
            ]
        );
        let urls: Vec<&str> = post
            .get("urls")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.get("expanded_url").unwrap().as_str().unwrap())
            .collect();
        assert_eq!(urls, ["http://example.com/a/b", "https://nova.test/x?y"]);

        // Read at once, no waiting: followers on both shards and the mentioned user have it.
        for reader in [near, far, mentioned] {
            let home = read(&server, "home-timeline", reader, 0, 10);
            assert_eq!(
                post_ids(&home),
                post_ids(&mine),
                "home timeline of {}",
                reader.name
            );
            check_dsb_post(&home[0], author, (before, after));
            assert_eq!(home[0].get("text"), post.get("text"));
        }
        // Users who neither follow the author nor are mentioned do not.
        for stranger in [&users[0][4], &users[1][4]] {
            assert_eq!(
                read(&server, "home-timeline", stranger, 0, 10),
                Vec::<Json>::new(),
                "home timeline of {}",
                stranger.name
            );
        }
        // The same post through the JSON API.
        let login = server.login(&far.name, PASSWORD);
        let id = parse_id(post.get("post_id").unwrap());
        let resp = server.get(&format!("/v1/posts/{id}"), Some(&login.access));
        resp.expect(200);
        assert_eq!(resp.str("post.text"), text);
        assert_eq!(parse_id(resp.at("post.author.id")), author.id);

        // Unfollow (by ids, then by names): the author's posts leave both home timelines.
        unfollow_ids(&server, far, author);
        unfollow_names(&server, near, author);
        for reader in [near, far] {
            assert_eq!(
                read(&server, "home-timeline", reader, 0, 10),
                Vec::<Json>::new(),
                "home of {} after unfollowing",
                reader.name
            );
        }
        // Unfollowing again is fine.
        unfollow_ids(&server, far, author);
    }
}

#[test]
fn mentions_carry_the_clients_user_ids() {
    let server = dsb_server();
    let users = users_by_shard(&server, 2);
    for (author, mentioned) in [
        (&users[0][0], &users[1][0]),
        (&users[1][0], &users[0][0]),
        (&users[0][0], &users[0][1]),
    ] {
        compose(&server, author, &format!("hi @{}", mentioned.name), &[]);
        let posts = read(&server, "user-timeline", author, 0, 1);
        let mentions = posts[0].get("user_mentions").unwrap().as_array().unwrap();
        assert_eq!(
            mentions
                .iter()
                .map(|m| m.get("user_id").unwrap().as_str().unwrap())
                .collect::<Vec<_>>(),
            [mentioned.ext.to_string()],
            "user_mentions.user_id must be the client's id {} of {} (Nova's id is {}): {:?}",
            mentioned.ext,
            mentioned.name,
            mentioned.id,
            posts[0]
        );
    }
}

#[test]
fn timelines_slice_by_start_and_stop() {
    let server = dsb_server();
    let users = users_by_shard(&server, 2);
    for (author, follower) in [(&users[0][0], &users[1][0]), (&users[1][1], &users[0][1])] {
        follow_ids(&server, follower, author);
        let texts_sent: Vec<String> = (0..5)
            .map(|i| format!("post {i} of {}", author.name))
            .collect();
        for t in &texts_sent {
            compose(&server, author, t, &[]);
        }
        let mut newest_first = texts_sent.clone();
        newest_first.reverse();
        for kind in ["user-timeline", "home-timeline"] {
            let reader = if kind == "user-timeline" {
                author
            } else {
                follower
            };
            let all = read(&server, kind, reader, 0, 5);
            assert_eq!(texts(&all), newest_first, "{kind}");
            let ids = post_ids(&all);
            assert!(ids.windows(2).all(|w| w[0] > w[1]), "{kind}: {ids:?}");
            for (start, stop) in [(0, 2), (2, 5), (1, 3), (4, 5), (3, 100), (0, 1000)] {
                let got = read(&server, kind, reader, start, stop);
                let lo = (start as usize).min(5);
                let hi = (stop as usize).min(5);
                assert_eq!(
                    texts(&got),
                    &newest_first[lo..hi],
                    "{kind} start={start} stop={stop}"
                );
            }
            for (start, stop) in [(3, 3), (4, 2), (-1, 3), (-5, -1), (5, 10), (0, 0), (0, -1)] {
                assert_eq!(
                    read(&server, kind, reader, start, stop),
                    Vec::<Json>::new(),
                    "{kind} start={start} stop={stop}"
                );
            }
        }
    }
}

#[test]
fn a_deleted_post_is_not_counted_in_a_slice() {
    // A slice's `start` skips posts without fetching them when nothing else can hide one:
    // a post deleted after the feed was read must not be counted among them, on the
    // author's shard and on the follower's.
    let server = dsb_server();
    let users = users_by_shard(&server, 2);
    for (author, follower) in [(&users[0][0], &users[1][0]), (&users[1][1], &users[0][1])] {
        follow_ids(&server, follower, author);
        for i in 0..6 {
            compose(
                &server,
                author,
                &format!("slice {i} of {}", author.name),
                &[],
            );
        }
        let want = |skip_deleted: bool| -> Vec<String> {
            (0..6)
                .rev()
                .filter(|i| !skip_deleted || *i != 4)
                .map(|i| format!("slice {i} of {}", author.name))
                .collect()
        };
        // Read once, so the feed is in memory; then delete the second newest.
        for reader in [author, follower] {
            assert_eq!(
                texts(&read(&server, "home-timeline", reader, 0, 6)),
                want(false)
            );
        }
        let all = read(&server, "home-timeline", follower, 0, 6);
        let second = post_ids(&all)[1];
        let token = server.login(&author.name, PASSWORD).access;
        server
            .delete(&format!("/v1/posts/{second}"), Some(&token))
            .expect(204);
        for reader in [author, follower] {
            // Skipping over the deleted post first: a page that reaches it drops it.
            for (start, stop) in [(2, 4), (3, 5), (1, 3), (0, 5)] {
                assert_eq!(
                    texts(&read(&server, "home-timeline", reader, start, stop)),
                    &want(true)[start as usize..stop as usize],
                    "{} start={start} stop={stop}",
                    reader.name
                );
            }
        }
    }
}

#[test]
fn an_edit_that_drops_a_mention_is_not_counted_in_a_slice() {
    // A `mentioned` post edited so that it no longer addresses a reader leaves that reader's
    // feed, in memory too: a slice's `start` must not count it, on the author's shard and on
    // the reader's.
    let server = dsb_server();
    let users = users_by_shard(&server, 3);
    for (author, reader) in [(&users[0][0], &users[1][0]), (&users[1][1], &users[1][2])] {
        follow_ids(&server, reader, author);
        for i in 0..3 {
            compose(
                &server,
                author,
                &format!("plain {i} of {}", author.name),
                &[],
            );
        }
        let token = server.login(&author.name, PASSWORD).access;
        let resp = server.post(
            "/v1/posts",
            Some(&token),
            simd_json::json!({"text": format!("for @{} only", reader.name), "visibility": "mentioned"}),
        );
        resp.expect(201);
        let addressed = parse_id(resp.at("post.id"));
        let all = read(&server, "home-timeline", reader, 0, 4);
        assert_eq!(post_ids(&all)[0], addressed);
        server
            .call(
                "PATCH",
                &format!("/v1/posts/{addressed}"),
                Some(&token),
                Some(simd_json::json!({"text": "for nobody now"})),
            )
            .expect(200);
        let plain: Vec<String> = (0..3)
            .rev()
            .map(|i| format!("plain {i} of {}", author.name))
            .collect();
        for (start, stop) in [(1, 3), (0, 3), (2, 3)] {
            assert_eq!(
                texts(&read(&server, "home-timeline", reader, start, stop)),
                &plain[start as usize..stop as usize],
                "{} start={start} stop={stop}",
                reader.name
            );
        }
    }
}

#[test]
fn missing_fields_are_400_incomplete_arguments() {
    let server = dsb_server();
    let users = users_by_shard(&server, 1);
    let (a, b) = (&users[0][0], &users[1][0]);
    let expect_incomplete = |resp: &Resp| {
        assert_eq!(resp.status, 400, "{}", resp.what_happened());
        assert!(
            resp.text().contains("Incomplete arguments"),
            "{}",
            resp.what_happened()
        );
    };
    let without = |fields: &[(&str, String)], skip: &str| -> String {
        fields
            .iter()
            .filter(|(k, _)| *k != skip)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    };

    let reg: Vec<(&str, String)> = vec![
        ("first_name", "F".into()),
        ("last_name", "L".into()),
        ("username", "username_900".into()),
        ("password", PASSWORD.into()),
        ("user_id", "900".into()),
    ];
    for (skip, _) in &reg {
        expect_incomplete(&form(
            &server,
            "/wrk2-api/user/register",
            &without(&reg, skip),
        ));
    }
    // An empty value counts as missing.
    expect_incomplete(&form(
        &server,
        "/wrk2-api/user/register",
        "first_name=F&last_name=L&username=username_900&password=&user_id=900",
    ));
    // None of those registered anyone.
    server
        .try_login("username_900", PASSWORD)
        .expect_error(401, "invalid_credentials");

    for path in ["/wrk2-api/user/follow", "/wrk2-api/user/unfollow"] {
        for body in [
            String::new(),
            format!("user_id={}", a.ext),
            format!("followee_id={}", b.ext),
            format!("user_name={}", a.name),
            format!("followee_name={}", b.name),
            format!("user_id={}&followee_name={}", a.ext, b.name),
        ] {
            expect_incomplete(&form(&server, path, &body));
        }
    }

    let post: Vec<(&str, String)> = vec![
        ("username", a.name.clone()),
        ("user_id", a.ext.to_string()),
        ("text", "hello".into()),
        ("media_ids", "[]".into()),
        ("media_types", "[]".into()),
        ("post_type", "0".into()),
    ];
    for skip in ["username", "user_id", "text", "post_type"] {
        expect_incomplete(&form(
            &server,
            "/wrk2-api/post/compose",
            &without(&post, skip),
        ));
    }
    // media_ids and media_types are optional.
    expect_text(
        &form(
            &server,
            "/wrk2-api/post/compose",
            &without(&without_pairs(&post, "media_ids"), "media_types"),
        ),
        "Successfully upload post",
    );
    assert_eq!(read(&server, "user-timeline", a, 0, 10).len(), 1);

    for kind in ["user-timeline", "home-timeline"] {
        for query in [
            "start=0&stop=10".to_string(),
            format!("user_id={}&stop=10", a.ext),
            format!("user_id={}&start=0", a.ext),
            String::new(),
        ] {
            expect_incomplete(&server.get(&format!("/wrk2-api/{kind}/read?{query}"), None));
        }
    }
}

fn without_pairs<'a>(fields: &[(&'a str, String)], skip: &str) -> Vec<(&'a str, String)> {
    fields.iter().filter(|(k, _)| *k != skip).cloned().collect()
}

/// A kept-alive connection that shard `shard` serves (the kernel picks a connection's
/// shard: connect until it is the one wanted).
fn connection_on(server: &Server, shard: u32) -> std::net::TcpStream {
    let host = server.addr().to_string();
    for _ in 0..200 {
        let mut stream = connect(server.addr());
        let health = format!("GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n");
        write_all(&mut stream, health.as_bytes()).unwrap();
        let resp = read_raw_response(&mut stream).unwrap();
        if resp.header("x-nova-shard") == Some(shard.to_string().as_str()) {
            return stream;
        }
    }
    panic!("200 connections and none on shard {shard}");
}

/// A compose sent on `stream`, answered by shard `shard`.
fn compose_on(
    stream: &mut std::net::TcpStream,
    server: &Server,
    shard: u32,
    author: &DsbUser,
    text: &str,
) {
    let host = server.addr().to_string();
    let body = format!(
        "username={}&user_id={}&text={text}&media_ids=[]&media_types=[]&post_type=0",
        author.name, author.ext
    );
    let request = format!(
        "POST /wrk2-api/post/compose HTTP/1.1\r\nHost: {host}\r\nContent-Type: {FORM}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    write_all(stream, request.as_bytes()).unwrap();
    let resp = read_raw_response(stream).unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.body, b"Successfully upload post");
    assert_eq!(
        resp.header("x-nova-shard"),
        Some(shard.to_string().as_str())
    );
}

#[test]
fn a_compose_shows_at_once_whichever_shard_takes_it() {
    // The shard a compose arrives on may be the author's or not; when it is not, it may be
    // one the post goes to (it then takes the post's offer from the author's answer).
    let server = dsb_server();
    let users = users_by_shard(&server, 4);
    let mut n = 0;
    for author_shard in [0usize, 1] {
        let author = &users[author_shard][0];
        let near = &users[author_shard][1];
        let far = &users[1 - author_shard][1];
        let mentioned = &users[1 - author_shard][2];
        follow_ids(&server, near, author);
        follow_ids(&server, far, author);
        for arrives_on in [0u32, 1] {
            let mut stream = connection_on(&server, arrives_on);
            n += 1;
            let text = format!("post{n} for @{}", mentioned.name);
            compose_on(&mut stream, &server, arrives_on, author, &text);
            // Read at once, on the same connection's shard and on the others.
            for reader in [near, far, mentioned] {
                let home = read(&server, "home-timeline", reader, 0, 1);
                assert_eq!(
                    texts(&home),
                    std::slice::from_ref(&text),
                    "author on shard {author_shard}, compose on shard {arrives_on}, reader {}",
                    reader.name
                );
            }
            let stranger = &users[1 - author_shard][3];
            assert!(
                !texts(&read(&server, "home-timeline", stranger, 0, 10)).contains(&text),
                "a stranger sees {text}"
            );
        }
    }
    // Every shard's offers were committed and acknowledged: once the outboxes drain, a
    // restarted server still shows every post in every feed.
    let mut server = server;
    server.restart();
    for author_shard in [0usize, 1] {
        for reader in [&users[author_shard][1], &users[1 - author_shard][1]] {
            let home = read(&server, "home-timeline", reader, 0, 10);
            assert_eq!(home.len(), 4, "{} has {:?}", reader.name, texts(&home));
        }
    }
}

/// A home timeline read on `stream` (kept alive), answered by shard `shard`.
fn read_home_on(
    stream: &mut std::net::TcpStream,
    server: &Server,
    shard: u32,
    user: &DsbUser,
) -> Vec<Json> {
    let host = server.addr().to_string();
    let request = format!(
        "GET /wrk2-api/home-timeline/read?user_id={}&start=0&stop=1 HTTP/1.1\r\n\
         Host: {host}\r\nContent-Type: {FORM}\r\n\r\n",
        user.ext
    );
    write_all(stream, request.as_bytes()).unwrap();
    let resp = read_raw_response(stream).unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(
        resp.header("x-nova-shard"),
        Some(shard.to_string().as_str())
    );
    raw_json(&resp).as_array().expect("a JSON array").clone()
}

#[test]
fn a_post_is_in_the_other_shards_feeds_as_soon_as_its_compose_is_answered() {
    // The author's shard answers once its offer to the follower's shard is sent, not taken:
    // that shard takes the offers waiting for it before it serves a home feed, whether the
    // read arrives there or through the author's shard. Read at once, many times over, on
    // kept-alive connections of both shards.
    const ROUNDS: usize = 150;
    let server = dsb_server();
    let users = users_by_shard(&server, 2);
    for author_shard in [0u32, 1] {
        let author = &users[author_shard as usize][0];
        let follower = &users[1 - author_shard as usize][1];
        follow_ids(&server, follower, author);
        let mut composing = connection_on(&server, author_shard);
        let mut readers = [connection_on(&server, 0), connection_on(&server, 1)];
        for n in 0..ROUNDS {
            let text = format!("round{n}from{author_shard}");
            compose_on(&mut composing, &server, author_shard, author, &text);
            for (shard, reader) in readers.iter_mut().enumerate() {
                let home = read_home_on(reader, &server, shard as u32, follower);
                assert_eq!(
                    texts(&home),
                    std::slice::from_ref(&text),
                    "round {n}: author on shard {author_shard}, read on shard {shard}"
                );
            }
        }
    }
}

#[test]
fn raw_forms_and_absolute_request_lines() {
    let server = dsb_server();
    let host = server.addr().to_string();
    let post_raw = |path: &str, body: &str, close: bool| -> String {
        format!(
            "POST http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {FORM}\r\n\
             Content-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    // Register two users, in absolute form, on one kept-alive connection.
    let mut stream = connect(server.addr());
    let mut users = Vec::new();
    for (i, ext) in [7001u64, 7002].into_iter().enumerate() {
        let name = format!("username_{ext}");
        let body = format!(
            "first_name=Ann Marie&last_name=O\"Neil: [x, y]&username={name}\
             &password=pass word @1/2:3&user_id={ext}"
        );
        write_all(
            &mut stream,
            post_raw("/wrk2-api/user/register", &body, i == 1).as_bytes(),
        )
        .unwrap();
        let resp = read_raw_response(&mut stream).unwrap();
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
        assert_eq!(resp.body, b"Success!");
        let login = server.login(&name, "pass word @1/2:3");
        users.push(DsbUser {
            ext,
            name,
            id: login.user_id,
        });
    }
    let (author, reader) = (&users[0], &users[1]);
    let resp = raw(
        &server,
        &post_raw(
            "/wrk2-api/user/follow",
            &format!("user_name={}&followee_name={}", reader.name, author.name),
            true,
        ),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"Success!");

    let text = format!(
        "Hi @{}: look at http://example.com/p/q \"quoted\" [a, b], c/d :-)",
        reader.name
    );
    let body = format!(
        "username={}&user_id={}&text={text}&media_ids=[\"77\",\"78\"]\
         &media_types=[\"png\",\"gif\"]&post_type=0",
        author.name, author.ext
    );
    let before = now_ms();
    let resp = raw(&server, &post_raw("/wrk2-api/post/compose", &body, true));
    let after = now_ms();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.body, b"Successfully upload post");

    // Reads: absolute form, a form Content-Type on a bodiless GET.
    for kind in ["user-timeline", "home-timeline"] {
        let who = if kind == "user-timeline" {
            author
        } else {
            reader
        };
        for absolute in [true, false] {
            let target = format!(
                "{}/wrk2-api/{kind}/read?user_id={}&start=0&stop=10",
                if absolute {
                    format!("http://{host}")
                } else {
                    String::new()
                },
                who.ext
            );
            let resp = raw(
                &server,
                &format!(
                    "GET {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {FORM}\r\n\
                     Connection: close\r\n\r\n"
                ),
            );
            assert_eq!(
                resp.status,
                200,
                "GET {target}: {}",
                String::from_utf8_lossy(&resp.body)
            );
            let posts = raw_json(&resp);
            let posts = posts.as_array().expect("an array");
            assert_eq!(posts.len(), 1, "GET {target}: {posts:?}");
            check_dsb_post(&posts[0], author, (before, after));
            assert_eq!(posts[0].get("text").unwrap().as_str(), Some(text.as_str()));
            let media = posts[0].get("media").unwrap().as_array().unwrap();
            let media: Vec<(&str, &str)> = media
                .iter()
                .map(|m| {
                    (
                        m.get("media_id").unwrap().as_str().unwrap(),
                        m.get("media_type").unwrap().as_str().unwrap(),
                    )
                })
                .collect();
            assert_eq!(media, [("77", "png"), ("78", "gif")]);
            let urls = posts[0].get("urls").unwrap().as_array().unwrap();
            assert_eq!(urls.len(), 1, "{posts:?}");
            assert_eq!(
                urls[0].get("expanded_url").unwrap().as_str(),
                Some("http://example.com/p/q")
            );
            let mentions = posts[0].get("user_mentions").unwrap().as_array().unwrap();
            assert_eq!(mentions.len(), 1, "{posts:?}");
            assert_eq!(
                mentions[0].get("username").unwrap().as_str(),
                Some(reader.name.as_str())
            );
        }
    }
    // The same read through a client that sends the header on a GET too.
    let resp = server.req(
        &Req::get(&format!(
            "/wrk2-api/home-timeline/read?user_id={}&start=0&stop=10",
            reader.ext
        ))
        .header("Content-Type", FORM),
    );
    resp.expect(200);
    assert_eq!(resp.json().as_array().map(Vec::len), Some(1));
}

#[test]
fn a_reused_user_id_is_refused_and_leaves_no_account() {
    let server = dsb_server();
    register(&server, 7, "username_7");
    let body =
        format!("first_name=A&last_name=B&username=username_other&password={PASSWORD}&user_id=7");
    let resp = form(&server, "/wrk2-api/user/register", &body);
    resp.expect_error(422, "user_id_taken");
    // Nothing was made: the username is still free.
    let body =
        format!("first_name=A&last_name=B&username=username_other&password={PASSWORD}&user_id=8");
    expect_text(&form(&server, "/wrk2-api/user/register", &body), "Success!");

    // A registration that fails for another reason (its username is taken) gives its
    // user_id back.
    let body =
        format!("first_name=A&last_name=B&username=username_other&password={PASSWORD}&user_id=9");
    assert_ne!(form(&server, "/wrk2-api/user/register", &body).status, 200);
    register(&server, 9, "username_9");

    // Registrations racing for one user_id: one account, the others refused with nothing made.
    let names: Vec<String> = (0..12).map(|i| format!("racer_{i}")).collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let racers: Vec<_> = names
            .iter()
            .map(|name| {
                let server = &server;
                scope.spawn(move || {
                    let body = format!(
                        "first_name=A&last_name=B&username={name}&password={PASSWORD}&user_id=10"
                    );
                    form(server, "/wrk2-api/user/register", &body).status
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 422),
        "{statuses:?}"
    );
    let accounts = names
        .iter()
        .filter(|name| server.try_login(name, PASSWORD).status == 200)
        .count();
    assert_eq!(accounts, 1, "accounts made by the racing registrations");
}
