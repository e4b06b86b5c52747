//! Proves account export and deletion against the real `nova` process (2 shards): the export
//! zip holds the user's profile, posts, comments (on posts of the other shard too), messages,
//! relations and media (the original bytes), file by file; `DELETE /v1/me` needs the
//! password, and afterwards nothing of the user is readable by anyone (profile, posts,
//! comments, likes, feeds and lists on the other shard, search, notifications; messages show
//! a deleted author), its tokens and login are refused and its username and email can be
//! registered again, and no shard's event history keeps anything of it; a SIGKILL right after the answer does not stop the erasure.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use simd_json::json;

/// Posts of the erased user in the crash test (one erasure step each).
const POSTS_BEFORE_KILL: usize = 100;
/// How long the background erasure may take to reach every shard.
const ERASURE_TIMEOUT: Duration = Duration::from_secs(20);

/// The cast: `d` (the user whose data is exported or erased) on shard 0; a follower and a
/// commenter on shard 1, a conversation partner on shard 1, a local follower on shard 0.
struct Cast {
    d: Member,
    follower: Member,
    commenter: Member,
    partner: Member,
    local: Member,
    blocked: Member,
    muted: Member,
    /// A word only `d`'s posts use (search).
    word: String,
    d_posts: Vec<u64>,
    /// The commenter's post, which `d` liked and commented on.
    their_post: u64,
    d_comment: u64,
    /// A comment by the commenter on `d`'s first post.
    on_d_post: u64,
    conversation: u64,
    d_message: u64,
    partner_message: u64,
    media: Option<(u64, Vec<u8>)>,
}

fn id_of(resp: &Resp, path: &str) -> u64 {
    parse_id(resp.at(path))
}

fn tiny_jpeg(dir: &Path) -> Option<Vec<u8>> {
    let out = dir.join("tiny.jpg");
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=red:s=32x24",
            "-frames:v",
            "1",
        ])
        .arg(&out)
        .status()
        .ok()?;
    status.success().then(|| std::fs::read(&out).ok()).flatten()
}

fn cast(server: &Server, with_media: bool) -> Cast {
    let d = server.member_on_shard(0);
    let follower = server.member_on_shard(1);
    let commenter = server.member_on_shard(1);
    let partner = server.member_on_shard(1);
    let local = server.member_on_shard(0);
    let blocked = server.member_on_shard(1);
    let muted = server.member_on_shard(1);
    let word = unique_name("erasable").replace('-', "");

    server
        .call(
            "PATCH",
            "/v1/me/profile",
            d.auth(),
            Some(json!({"bio": "my bio", "links": ["https://example.com/me"]})),
        )
        .expect(200);
    for f in [&follower, &local] {
        server.follow(f.auth(), d.id());
    }
    for other in [&follower, &commenter] {
        server.follow(d.auth(), other.id());
    }
    server
        .call(
            "POST",
            &format!("/v1/users/{}/block", blocked.id()),
            d.auth(),
            None,
        )
        .expect(200);
    server
        .call(
            "POST",
            &format!("/v1/users/{}/mute", muted.id()),
            d.auth(),
            None,
        )
        .expect(200);
    // The muted user mutes d back: a mirror-less row on the other shard.
    server
        .call(
            "POST",
            &format!("/v1/users/{}/mute", d.id()),
            muted.auth(),
            None,
        )
        .expect(200);

    let mut d_posts = Vec::new();
    for i in 0..3 {
        let resp = server.post(
            "/v1/posts",
            d.auth(),
            json!({"text": format!("post {i} about {word} #{word}")}),
        );
        resp.expect(201);
        d_posts.push(id_of(&resp, "post.id"));
    }
    let resp = server.post("/v1/posts", commenter.auth(), json!({"text": "their post"}));
    resp.expect(201);
    let their_post = id_of(&resp, "post.id");
    server
        .call(
            "POST",
            &format!("/v1/posts/{their_post}/like"),
            d.auth(),
            None,
        )
        .expect(200);
    let resp = server.post(
        &format!("/v1/posts/{their_post}/comments"),
        d.auth(),
        json!({"text": "d was here"}),
    );
    resp.expect(201);
    let d_comment = id_of(&resp, "comment.id");
    let resp = server.post(
        &format!("/v1/posts/{}/comments", d_posts[0]),
        commenter.auth(),
        json!({"text": "nice post"}),
    );
    resp.expect(201);
    let on_d_post = id_of(&resp, "comment.id");
    server
        .call(
            "POST",
            &format!("/v1/posts/{}/like", d_posts[0]),
            commenter.auth(),
            None,
        )
        .expect(200);

    let resp = server.post(
        "/v1/conversations",
        d.auth(),
        json!({"participants": [partner.id().to_string()]}),
    );
    resp.expect(201);
    let conversation = id_of(&resp, "conversation.id");
    let resp = server.post(
        &format!("/v1/conversations/{conversation}/messages"),
        d.auth(),
        json!({"text": "secret hello"}),
    );
    resp.expect(201);
    let d_message = id_of(&resp, "message.id");
    let resp = server.post(
        &format!("/v1/conversations/{conversation}/messages"),
        partner.auth(),
        json!({"text": "hi back"}),
    );
    resp.expect(201);
    let partner_message = id_of(&resp, "message.id");

    let media = if with_media {
        let bytes = tiny_jpeg(server.launch().dir()).expect("ffmpeg makes a test JPEG");
        let resp = server.req(
            &Req::post("/v1/media")
                .bearer(&d.token)
                .raw("application/octet-stream", bytes.clone())
                .timeout(Duration::from_secs(60)),
        );
        resp.expect(202);
        let id = id_of(&resp, "media.id");
        // It is d's avatar too.
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                d.auth(),
                Some(json!({"avatar_media_id": id.to_string()})),
            )
            .expect(200);
        Some((id, bytes))
    } else {
        None
    };
    Cast {
        d,
        follower,
        commenter,
        partner,
        local,
        blocked,
        muted,
        word,
        d_posts,
        their_post,
        d_comment,
        on_d_post,
        conversation,
        d_message,
        partner_message,
        media,
    }
}

/// Extracts a zip with Python's `zipfile` (an independent reader, which also checks every
/// CRC) and returns every file by name.
fn unzip(bytes: &[u8], dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let zip = dir.join("export.zip");
    let out = dir.join("export");
    std::fs::write(&zip, bytes).unwrap();
    let test = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-t"])
        .arg(&zip)
        .output()
        .expect("python3 runs");
    if !test.status.success() {
        let _ = std::fs::copy(&zip, "/tmp/erasure-export-debug.zip");
    }
    assert!(
        test.status.success(),
        "zipfile -t: {}",
        String::from_utf8_lossy(&test.stderr)
    );
    let extract = std::process::Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&out)
        .status()
        .expect("python3 runs");
    assert!(extract.success());
    let mut files = BTreeMap::new();
    let mut stack: Vec<PathBuf> = vec![out.clone()];
    while let Some(p) = stack.pop() {
        for entry in std::fs::read_dir(&p).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(&out)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Files in a blob store's two-letter fan-out directories.
fn blob_files(store: &Path) -> usize {
    let Ok(dirs) = std::fs::read_dir(store) else {
        return 0;
    };
    dirs.flatten()
        .filter(|d| d.file_name().len() == 2 && d.path().is_dir())
        .map(|d| std::fs::read_dir(d.path()).map_or(0, |f| f.count()))
        .sum()
}

fn parse(bytes: &[u8]) -> Json {
    let mut copy = bytes.to_vec();
    simd_json::to_owned_value(&mut copy)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn ids(list: &Json, key: &str) -> Vec<u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| parse_id(item.get(key).unwrap()))
        .collect()
}

#[test]
fn export_holds_everything_file_by_file() {
    let server = Server::start(&[]);
    let c = cast(&server, true);
    let resp = server.req(
        &Req::get("/v1/me/export")
            .bearer(&c.d.token)
            .timeout(Duration::from_secs(60)),
    );
    resp.expect(200);
    assert_eq!(resp.header("content-type"), Some("application/zip"));
    assert!(resp
        .header("content-disposition")
        .is_some_and(|v| v.contains("attachment")));
    let files = unzip(&resp.body, server.launch().dir());
    let (media_id, media_bytes) = c.media.clone().unwrap();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    let media_name = format!("media/{media_id}");
    let mut expected = vec![
        "comments.json",
        "follows.json",
        media_name.as_str(),
        "media.json",
        "messages.json",
        "posts.json",
        "profile.json",
    ];
    expected.sort();
    assert_eq!(names, expected);

    let profile = parse(&files["profile.json"]);
    assert_eq!(parse_id(profile.get("id").unwrap()), c.d.id());
    assert_eq!(profile.get("username").unwrap().as_str(), Some(c.d.name()));
    assert_eq!(
        profile.get("email").unwrap().as_str(),
        Some(c.d.user.email.as_str())
    );
    assert_eq!(profile.get("bio").unwrap().as_str(), Some("my bio"));
    assert_eq!(parse_id(profile.get("avatar_media_id").unwrap()), media_id);
    assert_eq!(profile.get("email_digest").unwrap().as_str(), Some("off"));
    assert!(profile.get("private").is_some() && profile.get("language").is_some());

    let posts = parse(&files["posts.json"]);
    let mut got = ids(&posts, "id");
    got.sort();
    assert_eq!(got, c.d_posts);
    assert!(posts.as_array().unwrap()[0]
        .get("text")
        .unwrap()
        .as_str()
        .unwrap()
        .contains(&c.word));

    // The comment lives on the commenter's shard (shard 1); the commenter's own is not here.
    let comments = parse(&files["comments.json"]);
    assert_eq!(ids(&comments, "id"), vec![c.d_comment]);
    assert_eq!(
        parse_id(comments.as_array().unwrap()[0].get("post_id").unwrap()),
        c.their_post
    );

    let messages = parse(&files["messages.json"]);
    let convs = messages.as_array().unwrap();
    assert_eq!(convs.len(), 1);
    let head = convs[0].get("conversation").unwrap();
    assert_eq!(parse_id(head.get("id").unwrap()), c.conversation);
    let mut parts = Vec::new();
    for p in head.get("participants").unwrap().as_array().unwrap() {
        parts.push(parse_id(p));
    }
    parts.sort();
    let mut want = vec![c.d.id(), c.partner.id()];
    want.sort();
    assert_eq!(parts, want);
    let msgs = convs[0].get("messages").unwrap();
    assert_eq!(ids(msgs, "id"), vec![c.d_message, c.partner_message]);
    assert_eq!(
        msgs.as_array().unwrap()[0].get("text").unwrap().as_str(),
        Some("secret hello")
    );

    let follows = parse(&files["follows.json"]);
    let list = |k: &str| {
        let mut v: Vec<u64> = follows
            .get(k)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| parse_id(r.get("user_id").unwrap()))
            .collect();
        v.sort();
        v
    };
    let mut following = vec![c.follower.id(), c.commenter.id()];
    following.sort();
    assert_eq!(list("following"), following);
    let mut followers = vec![c.follower.id(), c.local.id()];
    followers.sort();
    assert_eq!(list("followers"), followers);
    assert_eq!(list("blocks"), vec![c.blocked.id()]);
    assert_eq!(list("mutes"), vec![c.muted.id()]);

    let media = parse(&files["media.json"]);
    assert_eq!(ids(&media, "id"), vec![media_id]);
    assert_eq!(
        media.as_array().unwrap()[0].get("file").unwrap().as_str(),
        Some(media_name.as_str())
    );
    assert_eq!(
        files[&media_name], media_bytes,
        "the original, byte for byte"
    );

    // One export per interval: the next one waits, with Retry-After.
    let again = server.get("/v1/me/export", c.d.auth());
    again.expect_error(429, "rate_limited");
    assert!(again.header("retry-after").is_some());
    // Without a token: 401.
    server.get("/v1/me/export", None).expect(401);
}

#[test]
fn deletion_leaves_nothing_readable() {
    let server = Server::start(&[]);
    let c = cast(&server, true);
    let d = &c.d;

    // Wrong password (or none): refused, nothing deleted.
    server
        .call(
            "DELETE",
            "/v1/me",
            d.auth(),
            Some(json!({"password": "not-it"})),
        )
        .expect_error(403, "wrong_password");
    server
        .call("DELETE", "/v1/me", d.auth(), Some(json!({})))
        .expect_error(422, "invalid_body");
    server.get("/v1/me", d.auth()).expect(200);
    server
        .get(&format!("/v1/posts/{}", c.d_posts[0]), c.follower.auth())
        .expect(200);
    let store = server.launch().data_dir().join("media").join("shard-0");
    assert!(
        blob_files(&store) > 0,
        "the upload left no blob in {}",
        store.display()
    );

    server.erase(d);

    // At once: tokens refused, login impossible, profile gone, on both shards.
    let me = server.get("/v1/me", d.auth());
    assert_eq!(me.status, 401, "{}", me.what_happened());
    assert_eq!(server.try_login(d.name(), &d.user.password).status, 401);
    for viewer in [&c.follower, &c.local] {
        server
            .get(&format!("/v1/users/{}", d.id()), viewer.auth())
            .expect(404);
        server
            .get(&format!("/v1/users/@{}", d.name()), viewer.auth())
            .expect(404);
    }

    let settled = wait_until(ERASURE_TIMEOUT, || {
        let their = server.get(&format!("/v1/posts/{}", c.their_post), c.commenter.auth());
        let counts_exact = their.status == 200
            && their.at("post.likes_count").as_u64() == Some(0)
            && their.at("post.comments_count").as_u64() == Some(0);
        let posts_gone = c.d_posts.iter().all(|p| {
            server
                .get(&format!("/v1/posts/{p}"), c.follower.auth())
                .status
                == 404
        });
        let feed = server.get("/v1/timelines/home?limit=100", c.follower.auth());
        let feed_clean =
            feed.status == 200 && !item_ids(&feed).iter().any(|p| c.d_posts.contains(p));
        let notes = server.get("/v1/notifications?limit=100", c.commenter.auth());
        let notes_clean = notes.status == 200
            && !notes.at("items").as_array().unwrap().iter().any(|n| {
                n.get("actor")
                    .and_then(|a| a.get("id"))
                    .is_some_and(|id| parse_id(id) == d.id())
            });
        counts_exact && posts_gone && feed_clean && notes_clean
    });
    assert!(settled, "the erasure did not reach every shard in time");

    // Comments on the erased user's posts went with them; its comment elsewhere too.
    server
        .get(
            &format!("/v1/posts/{}/comments", c.d_posts[0]),
            c.commenter.auth(),
        )
        .expect(404);
    let _ = c.on_d_post;
    let comments = server.get(
        &format!("/v1/posts/{}/comments", c.their_post),
        c.commenter.auth(),
    );
    comments.expect(200);
    assert!(item_ids(&comments).is_empty());

    // Lists and counts on both shards, once every shard's erasure job is done (the rows of
    // the follower's shard go in its own job: its list hides the erased user at once, its
    // count only then).
    let finished = |k: usize| {
        let user = format!("user={}", d.id());
        let shard = format!("shard={k}");
        server
            .stderr_text()
            .lines()
            .chain(server.stdout_lines().iter().map(String::as_str))
            .any(|l| l.contains("erasure finished here") && l.contains(&user) && l.contains(&shard))
    };
    assert!(
        wait_until(ERASURE_TIMEOUT, || finished(0) && finished(1)),
        "the erasure jobs did not finish on every shard"
    );
    for (who, path) in [
        (
            &c.follower,
            format!("/v1/users/{}/following", c.follower.id()),
        ),
        (
            &c.follower,
            format!("/v1/users/{}/followers", c.follower.id()),
        ),
        (&c.local, format!("/v1/users/{}/following", c.local.id())),
        (
            &c.commenter,
            format!("/v1/users/{}/followers", c.commenter.id()),
        ),
    ] {
        let resp = server.get(&path, who.auth());
        resp.expect(200);
        assert!(
            !item_ids(&resp).contains(&d.id()),
            "{path} still lists the user"
        );
    }
    let follower = server.get(&format!("/v1/users/{}", c.follower.id()), c.follower.auth());
    assert_eq!(follower.at("user.following_count").as_u64(), Some(0));
    assert_eq!(follower.at("user.followers_count").as_u64(), Some(0));
    let local = server.get(&format!("/v1/users/{}", c.local.id()), c.local.auth());
    assert_eq!(local.at("user.following_count").as_u64(), Some(0));

    // Search: no post, no account.
    let found = server.get(&format!("/v1/search?q={}", c.word), c.follower.auth());
    found.expect(200);
    assert!(item_ids(&found).is_empty(), "{}", found.what_happened());
    let found = server.get(
        &format!("/v1/search?type=accounts&q={}", d.name()),
        c.follower.auth(),
    );
    found.expect(200);
    assert!(item_ids(&found).is_empty(), "{}", found.what_happened());

    // The conversation: the partner sees the message anonymised and is alone in it.
    let anonymised = wait_until(ERASURE_TIMEOUT, || {
        let msgs = server.get(
            &format!("/v1/conversations/{}/messages", c.conversation),
            c.partner.auth(),
        );
        msgs.status == 200
            && msgs.at("items").as_array().unwrap().iter().any(|m| {
                parse_id(m.get("id").unwrap()) == c.d_message
                    && m.get("text").unwrap().as_str() == Some("")
                    && parse_id(m.get("sender").unwrap().get("id").unwrap()) == 0
            })
    });
    assert!(anonymised, "the erased user's message was not anonymised");
    let conv = server.get(
        &format!("/v1/conversations/{}", c.conversation),
        c.partner.auth(),
    );
    conv.expect(200);
    let participants: Vec<u64> = conv
        .at("conversation.participants")
        .as_array()
        .unwrap()
        .iter()
        .map(|p| parse_id(p.get("id").unwrap()))
        .collect();
    assert_eq!(participants, vec![c.partner.id()]);
    let msgs = server.get(
        &format!("/v1/conversations/{}/messages", c.conversation),
        c.partner.auth(),
    );
    assert!(msgs.text().contains("hi back") && !msgs.text().contains("secret hello"));

    // Media: gone, and its blobs (original and renditions) freed: the erased user was the
    // only uploader of its shard.
    let (media_id, _) = c.media.clone().unwrap();
    server
        .get(&format!("/v1/media/{media_id}"), c.follower.auth())
        .expect(404);
    let store = server.launch().data_dir().join("media").join("shard-0");
    assert!(
        wait_until(ERASURE_TIMEOUT, || blob_files(&store) == 0),
        "blobs left in {}",
        store.display()
    );

    // The muted user's mute of the erased user went too (a walk of the mutes table).
    let _ = (&c.blocked, &c.muted);

    // The username and email can be registered again at once.
    let again = server.register(d.name(), &d.user.email, "another-password-1");
    assert_ne!(again.id, d.id());
    let login = server.login(d.name(), "another-password-1");
    assert_eq!(login.user_id, again.id);
    server
        .get(&format!("/v1/users/@{}", d.name()), c.follower.auth())
        .expect(200);

    // The history (`event_store`) of every shard, read from the data dir (the jobs are done, above)
    // once the server stopped: no event of the user's is left (posts, the message, the
    // comment, relations, notifications), only id-only tombstones.
    let mut server = server;
    server.stop();
    let mut tombstones = 0;
    for k in 0..2 {
        let path = server.launch().data_dir().join(format!("shard-{k}.redb"));
        let db = nova_storage::redb::Database::open(&path).unwrap();
        let read = nova_storage::redb::ReadableDatabase::begin_read(&db).unwrap();
        let history = nova_core::events::history(&read, (0, 0), 1_000_000).unwrap();
        assert!(!history.is_empty(), "shard {k} has no history at all");
        for (key, event) in history {
            let text = format!("{event:?}");
            assert!(
                !event.reveals(d.id())
                    && !text.contains("secret hello")
                    && !text.contains("d was here")
                    && !text.contains(&c.word),
                "shard {k} still holds {key:?}: {text}"
            );
            tombstones += usize::from(matches!(
                event,
                nova_core::events::Event::PostDeleted { author, .. } if author == d.id()
            ));
        }
    }
    assert_eq!(
        tombstones,
        c.d_posts.len(),
        "one PostDeleted per erased post stays"
    );
}

#[test]
fn deletion_completes_after_sigkill() {
    // Tiny batches: the erasure takes many steps, so the kill lands in the middle of it.
    let mut server = Server::start(&["--erasure-batch-rows", "1"]);
    let c = cast(&server, false);
    let d = &c.d;
    for i in 0..POSTS_BEFORE_KILL {
        server
            .post("/v1/posts", d.auth(), json!({"text": format!("more {i}")}))
            .expect(201);
    }
    server.erase(d);
    server.kill9();
    server.restart();

    assert_eq!(server.try_login(d.name(), &d.user.password).status, 401);
    let settled = wait_until(ERASURE_TIMEOUT, || {
        let their = server.get(&format!("/v1/posts/{}", c.their_post), c.commenter.auth());
        let feed = server.get("/v1/timelines/home?limit=100", c.follower.auth());
        let posts = server.get(&format!("/v1/users/{}", c.follower.id()), c.follower.auth());
        their.status == 200
            && their.at("post.likes_count").as_u64() == Some(0)
            && their.at("post.comments_count").as_u64() == Some(0)
            && feed.status == 200
            && item_ids(&feed).is_empty()
            && posts.at("user.followers_count").as_u64() == Some(0)
    });
    assert!(settled, "the erasure did not finish after the restart");
    // The kill landed in the middle: the user's own shard finished its job after the restart
    // (one post per step, so the job outlives the answer by far more than the kill takes).
    let resumed = wait_until(ERASURE_TIMEOUT, || {
        server
            .stderr_text()
            .lines()
            .chain(server.stdout_lines().iter().map(String::as_str))
            .any(|l| l.contains("erasure finished here") && l.contains("shard=0"))
    });
    assert!(resumed, "no erasure job was resumed after the restart");
    server
        .get(&format!("/v1/users/{}", d.id()), c.follower.auth())
        .expect(404);
    let _ = (c.on_d_post, c.partner_message);
}

/// Posts of a user of shard 1 that make that shard's history long: its erasure job walks it
/// (`Events`, one row per step here) for seconds.
const HISTORY_ON_SHARD_1: usize = 1_500;
/// Posts of the erased user: its own shard deletes them (one per step) before it reaches
/// `Relations`, by which time shard 1's job is walking its history.
const POSTS_BEFORE_RELATIONS: usize = 150;

#[test]
fn erasure_work_arriving_during_the_history_walk_is_done() {
    // One row per step: shard 1's job (a few steps to `Events`, then some 1,500) is walking
    // its history when shard 0, past the erased user's posts, sends the relations of shard 1
    // to forget (`ErasureWork`). That work must still be done: the followers of shard 1 lose
    // the erased user from their count, not only from their list.
    let server = Server::start(&["--erasure-batch-rows", "1"]);
    let d = server.member_on_shard(0);
    let followers: Vec<Member> = (0..2).map(|_| server.member_on_shard(1)).collect();
    for f in &followers {
        server.follow(f.auth(), d.id());
        server.follow(d.auth(), f.id());
    }
    let filler = server.member_on_shard(1);
    for i in 0..HISTORY_ON_SHARD_1 {
        server.new_post(&filler, &format!("history {i}"));
    }
    for i in 0..POSTS_BEFORE_RELATIONS {
        server.new_post(&d, &format!("erased {i}"));
    }
    for f in &followers {
        let me = server.get(&format!("/v1/users/{}", f.id()), f.auth());
        assert_eq!(me.at("user.followers_count").as_u64(), Some(1));
        assert_eq!(me.at("user.following_count").as_u64(), Some(1));
    }

    server.erase(&d);

    // Every job that ran for the user on shard 1 has finished (a later `ErasureWork` may
    // start one more: wait until the counts settle or the time is up).
    let finished_on_1 = || {
        let user = format!("user={}", d.id());
        server
            .stderr_text()
            .lines()
            .chain(server.stdout_lines().iter().map(String::as_str))
            .any(|l| {
                l.contains("erasure finished here") && l.contains(&user) && l.contains("shard=1")
            })
    };
    assert!(
        wait_until(Duration::from_secs(60), finished_on_1),
        "the erasure job of shard 1 did not finish"
    );
    let counts_of = |f: &Member| {
        let me = server.get(&format!("/v1/users/{}", f.id()), f.auth());
        me.expect(200);
        (
            me.at("user.followers_count").as_u64(),
            me.at("user.following_count").as_u64(),
        )
    };
    let exact = wait_until(Duration::from_secs(10), || {
        followers.iter().all(|f| counts_of(f) == (Some(0), Some(0)))
    });
    for f in &followers {
        let listed = server.get(&format!("/v1/users/{}/followers", f.id()), f.auth());
        listed.expect(200);
        assert!(item_ids(&listed).is_empty());
    }
    assert!(
        exact,
        "followers of shard 1 keep the erased user in their counts: {:?}",
        followers.iter().map(counts_of).collect::<Vec<_>>()
    );
}
