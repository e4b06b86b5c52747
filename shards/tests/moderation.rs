//! Proves moderation (issue 7) against the real `nova` binary with 2 shards: a report goes
//! to the queue, a moderator on another shard removes the post (gone from a follower's home
//! feed on the other shard and from search) and every action is in the audit log; a
//! suspension refuses login and tokens, hides the profile, posts and comments on every shard,
//! and an unsuspension brings it all back; a suspended user also leaves others' follower and
//! following lists, notifications and conversations (its messages) until lifted; plain users get 403 on every moderator route and
//! a moderator cannot grant roles or suspend an admin; bad reports get 400/404; and every
//! `nova admin users` command works online (admin listener) and offline (data dir).

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

/// How long the search index may lag a write.
const INDEX_LAG_MAX: Duration = Duration::from_secs(10);

fn start() -> Server {
    Server::start(&["--admin-listen", "127.0.0.1:0"])
}

fn admin_url(server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(url) = server.stdout_lines().iter().find_map(|l| {
            l.strip_prefix("nova admin listening on ")
                .map(str::to_string)
        }) {
            return url;
        }
        assert!(Instant::now() < deadline, "no admin listening line");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `nova admin users ARGS` with `stdin` on its standard input.
fn nova_users(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nova"));
    cmd.arg("admin")
        .arg("users")
        .args(args)
        .env("NOVA_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

/// Runs an admin users command that must succeed; its JSON output.
fn users_ok(args: &[&str], stdin: Option<&str>) -> Json {
    let out = nova_users(args, stdin);
    assert!(
        out.status.success(),
        "nova admin users {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = out.stdout.clone();
    simd_json::to_owned_value(&mut text)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn online<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(&["--server", url]);
    v
}

fn offline<'a>(dir: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(&[
        "--data-dir",
        dir,
        "--argon2-memory-kib",
        "64",
        "--argon2-iterations",
        "1",
    ]);
    v
}

fn field<'a>(v: &'a Json, name: &str) -> &'a Json {
    v.get(name)
        .unwrap_or_else(|| panic!("no {name:?} in {v:?}"))
}

fn compose(server: &Server, author: &Member, text: &str) -> u64 {
    let resp = server.post("/v1/posts", author.auth(), json!({"text": text}));
    resp.expect(201);
    parse_id(resp.at("post.id"))
}

fn comment(server: &Server, author: &Member, post: u64, text: &str) -> u64 {
    let resp = server.post(
        &format!("/v1/posts/{post}/comments"),
        author.auth(),
        json!({"text": text}),
    );
    resp.expect(201);
    parse_id(resp.at("comment.id"))
}

fn follow(server: &Server, follower: &Member, followee: &Member) {
    let resp = server.post(
        &format!("/v1/users/{}/follow", followee.id()),
        follower.auth(),
        json!({}),
    );
    assert!(
        resp.status == 200 || resp.status == 201,
        "{}",
        resp.what_happened()
    );
}

fn home(server: &Server, reader: &Member) -> Vec<u64> {
    server.walk_posts("/v1/timelines/home", &reader.token, 100)
}

fn comments(server: &Server, reader: &Member, post: u64) -> Vec<u64> {
    let resp = server.get(&format!("/v1/posts/{post}/comments"), reader.auth());
    resp.expect(200);
    item_ids(&resp)
}

fn search_posts(server: &Server, who: &Member, word: &str) -> Vec<u64> {
    let resp = server.get(
        &format!("/v1/search?type=posts&q={}", percent_encode(word)),
        who.auth(),
    );
    resp.expect(200);
    item_ids(&resp)
}

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

fn report(server: &Server, who: &Member, kind: &str, id: u64, reason: &str) -> Resp {
    server.post(
        "/v1/reports",
        who.auth(),
        json!({"target_type": kind, "target_id": id.to_string(), "reason": reason}),
    )
}

/// Logs in again (tokens of a member whose role changed stay valid; this is for after a
/// suspension or reset).
fn relogin(server: &Server, m: &mut Member) {
    m.token = server.login(&m.user.username, &m.user.password).access;
}

/// A unique word for search.
fn word(prefix: &str) -> String {
    unique_name(prefix).replace(['-', '_'], "")
}

#[test]
fn a_report_reaches_the_queue_and_a_moderator_removes_the_post_everywhere() {
    let server = start();
    let url = admin_url(&server);
    // The author on shard 1; the follower (who reports) and the moderator on shard 0.
    let author = server.member_on_shard(1);
    let reporter = server.member_on_shard(0);
    let moderator = server.member_on_shard(0);
    let promoted = users_ok(
        &online(&url, &["promote", moderator.name(), "--role", "moderator"]),
        None,
    );
    assert_eq!(field(&promoted, "role").as_str(), Some("moderator"));
    follow(&server, &reporter, &author);
    let w = word("spamword");
    let post = compose(&server, &author, &format!("buy now {w}"));
    assert!(home(&server, &reporter).contains(&post));
    eventually("search before", vec![post], || {
        search_posts(&server, &reporter, &w)
    });

    // Bad reports.
    report(&server, &reporter, "post", post, "rude").expect_error(400, "invalid_reason");
    report(&server, &reporter, "video", post, "spam").expect_error(400, "invalid_target_type");
    server
        .post(
            "/v1/reports",
            reporter.auth(),
            json!({"target_type": "post", "target_id": post.to_string(), "reason": "spam",
                   "note": "x".repeat(1001)}),
        )
        .expect_error(400, "invalid_note");
    // A post id that names shard 1 but does not exist.
    report(&server, &reporter, "post", post ^ 0xfff, "spam").expect_error(404, "not_found");
    report(&server, &reporter, "account", 12345 << 22, "spam").expect_error(404, "not_found");

    // The report, then the same again: one report.
    let filed = server.post(
        "/v1/reports",
        reporter.auth(),
        json!({"target_type": "post", "target_id": post.to_string(), "reason": "spam",
               "note": "selling things"}),
    );
    filed.expect(201);
    let report_id = parse_id(filed.at("report.id"));
    assert_eq!(filed.str("report.state"), "open");
    let again = report(&server, &reporter, "post", post, "spam");
    again.expect(200);
    assert_eq!(parse_id(again.at("report.id")), report_id);

    // A message can be reported by a participant only (the conversation lives on shard 1).
    let conv = server.post(
        "/v1/conversations",
        author.auth(),
        json!({"participants": [reporter.id().to_string()]}),
    );
    conv.expect(201);
    let conv = parse_id(conv.at("conversation.id"));
    let sent = server.post(
        &format!("/v1/conversations/{conv}/messages"),
        author.auth(),
        json!({"text": "buy my things"}),
    );
    sent.expect(201);
    let message = parse_id(sent.at("message.id"));
    report(&server, &moderator, "message", message, "spam").expect(404);
    report(&server, &reporter, "message", message, "spam").expect(201);
    report(&server, &reporter, "account", author.id(), "impersonation").expect(201);

    // The queue, as the moderator sees it.
    let queue = server.get("/v1/moderation/reports", moderator.auth());
    queue.expect(200);
    assert!(item_ids(&queue).contains(&report_id), "{}", queue.text());
    let kinds: Vec<&str> = queue
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.get("target_type").and_then(|t| t.as_str()).unwrap())
        .collect();
    assert_eq!(kinds, ["post", "message", "account"], "oldest first");
    // Cursor pagination walks the same queue one by one.
    let first = server.get("/v1/moderation/reports?limit=1", moderator.auth());
    assert_eq!(item_ids(&first), vec![report_id]);
    let cursor = next_cursor(&first).unwrap();
    let second = server.get(
        &format!("/v1/moderation/reports?limit=1&cursor={cursor}"),
        moderator.auth(),
    );
    assert_eq!(item_ids(&second), item_ids(&queue)[1..2].to_vec());

    // Removal: gone from the follower's feed (other shard), the post, and search.
    server
        .delete(
            &format!("/v1/moderation/posts/{post}?reason=spam%20links"),
            moderator.auth(),
        )
        .expect(204);
    assert!(!home(&server, &reporter).contains(&post));
    server
        .get(&format!("/v1/posts/{post}"), author.auth())
        .expect(404);
    eventually("search after removal", Vec::<u64>::new(), || {
        search_posts(&server, &reporter, &w)
    });

    // A comment of anyone, removed by the moderator.
    let other = compose(&server, &author, "a quiet post");
    let c = comment(&server, &reporter, other, "a rude comment");
    report(&server, &author, "comment", c, "harassment").expect(201);
    server
        .delete(&format!("/v1/moderation/comments/{c}"), moderator.auth())
        .expect(204);
    assert!(!comments(&server, &author, other).contains(&c));

    // Resolution moves the report out of the open queue.
    let resolved = server.post(
        &format!("/v1/moderation/reports/{report_id}/resolve"),
        moderator.auth(),
        json!({"resolution": "actioned", "note": "removed"}),
    );
    resolved.expect(200);
    assert_eq!(resolved.str("report.state"), "actioned");
    server
        .post(
            &format!("/v1/moderation/reports/{report_id}/resolve"),
            moderator.auth(),
            json!({"resolution": "maybe"}),
        )
        .expect_error(400, "invalid_resolution");
    let open = server.get("/v1/moderation/reports?state=open", moderator.auth());
    assert!(!item_ids(&open).contains(&report_id));
    let done = server.get("/v1/moderation/reports?state=actioned", moderator.auth());
    assert!(item_ids(&done).contains(&report_id));

    // The audit log: who did what to which target, with the reason.
    let audit = server.get("/v1/moderation/audit?limit=100", moderator.auth());
    audit.expect(200);
    let entries = audit.at("items").as_array().unwrap().clone();
    let find = |action: &str, target: u64| {
        entries
            .iter()
            .find(|e| {
                e.get("action").and_then(|a| a.as_str()) == Some(action)
                    && e.get("target_id").and_then(|t| t.as_str())
                        == Some(target.to_string().as_str())
            })
            .unwrap_or_else(|| panic!("no {action} of {target} in {entries:?}"))
            .clone()
    };
    let removal = find("remove_post", post);
    assert_eq!(
        field(&removal, "actor").as_str(),
        Some(moderator.id().to_string().as_str())
    );
    assert_eq!(field(&removal, "reason").as_str(), Some("spam links"));
    assert!(is_rfc3339_millis(field(&removal, "at").as_str().unwrap()));
    find("remove_comment", c);
    find("resolve_report_actioned", post);
    let role = find("set_role_moderator", moderator.id());
    assert_eq!(field(&role, "actor").as_str(), Some("admin-cli"));
}

#[test]
fn a_suspension_hides_the_account_everywhere_until_it_is_lifted() {
    let server = start();
    let url = admin_url(&server);
    let mut target = server.member_on_shard(1);
    let follower = server.member_on_shard(0);
    let moderator = server.member_on_shard(0);
    users_ok(
        &online(&url, &["promote", moderator.name(), "--role", "moderator"]),
        None,
    );
    follow(&server, &follower, &target);
    let w = word("hiddenword");
    let post = compose(&server, &target, &format!("hello {w} #{w}"));
    let theirs = compose(&server, &follower, "a post on shard 0");
    let tags = |who: &Member| -> Vec<String> {
        let resp = server.get(&format!("/v1/search?type=hashtags&q={w}"), who.auth());
        resp.expect(200);
        resp.at("items")
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.get("name").unwrap().as_str().unwrap().to_string())
            .collect()
    };
    let c = comment(&server, &target, theirs, "a comment from shard 1");
    assert!(home(&server, &follower).contains(&post));
    eventually("search before", vec![post], || {
        search_posts(&server, &follower, &w)
    });
    eventually("hashtag before", vec![w.clone()], || tags(&follower));

    let suspended = server.post(
        &format!("/v1/moderation/users/{}/suspension", target.id()),
        moderator.auth(),
        json!({"reason": "spam account"}),
    );
    suspended.expect(200);
    assert_eq!(suspended.at("suspended").as_bool(), Some(true));

    // No login, no token.
    server
        .try_login(&target.user.username, &target.user.password)
        .expect_error(403, "account_suspended");
    let me = server.get("/v1/me", target.auth());
    assert!(
        me.status == 401 || me.status == 403,
        "a suspended user's token must be refused: {}",
        me.what_happened()
    );
    // Hidden from the other shard's reader: profile, timeline, post, feed, comments, search.
    server
        .get(&format!("/v1/users/{}", target.id()), follower.auth())
        .expect(404);
    server
        .get(&format!("/v1/users/{}/posts", target.id()), follower.auth())
        .expect(404);
    server
        .get(&format!("/v1/posts/{post}"), follower.auth())
        .expect(404);
    assert!(!home(&server, &follower).contains(&post));
    assert!(!comments(&server, &follower, theirs).contains(&c));
    assert!(search_posts(&server, &follower, &w).is_empty());
    assert!(tags(&follower).is_empty());
    // Reporting what is hidden finds nothing.
    report(&server, &follower, "post", post, "spam").expect(404);
    // Nor can anyone follow it or start a conversation with it: it is not found, as an
    // unknown id is (from either shard).
    let stranger = server.member_on_shard(0);
    let follow_it = Req::post(&format!("/v1/users/{}/follow", target.id())).bearer(&stranger.token);
    server.on_each_shard(&follow_it, |r| {
        r.expect(404);
    });
    let talk = Req::post("/v1/conversations")
        .json(&json!({"participants": [target.id().to_string()]}))
        .bearer(&stranger.token);
    server.on_each_shard(&talk, |r| {
        r.expect(404);
    });

    // Lifted: everything is back, nothing was deleted.
    let lifted = server.delete(
        &format!("/v1/moderation/users/{}/suspension", target.id()),
        moderator.auth(),
    );
    lifted.expect(200);
    assert_eq!(lifted.at("suspended").as_bool(), Some(false));
    relogin(&server, &mut target);
    server.get("/v1/me", target.auth()).expect(200);
    server
        .get(&format!("/v1/users/{}", target.id()), follower.auth())
        .expect(200);
    server
        .get(&format!("/v1/posts/{post}"), follower.auth())
        .expect(200);
    assert!(home(&server, &follower).contains(&post));
    assert!(comments(&server, &follower, theirs).contains(&c));
    assert_eq!(search_posts(&server, &follower, &w), vec![post]);
    assert_eq!(tags(&follower), vec![w.clone()]);

    // The audit log has both, with the reason.
    let audit = server.get("/v1/moderation/audit", moderator.auth());
    audit.expect(200);
    let actions: Vec<String> = audit
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e.get("target_id").and_then(|t| t.as_str()) == Some(target.id().to_string().as_str())
        })
        .map(|e| {
            e.get("action")
                .and_then(|a| a.as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(actions[..2], ["unsuspend", "suspend"], "{actions:?}");
}

/// What `viewer` sees of `who` in lists, notifications and conversations: (in viewer's
/// followers, in viewer's following, notifications caused, messages sent in `conv`, last
/// message of `conv` in the inbox is who's).
fn traces(
    server: &Server,
    viewer: &Member,
    who: u64,
    conv: u64,
) -> (bool, bool, usize, usize, bool) {
    let listed = |path: String| {
        let resp = server.get(&path, viewer.auth());
        resp.expect(200);
        item_ids(&resp).contains(&who)
    };
    let followers = listed(format!("/v1/users/{}/followers", viewer.id()));
    let following = listed(format!("/v1/users/{}/following", viewer.id()));
    let notes = server.get("/v1/notifications?limit=100", viewer.auth());
    notes.expect(200);
    let caused = notes
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n.get("actor")
                .and_then(|a| a.get("id"))
                .is_some_and(|id| parse_id(id) == who)
        })
        .count();
    let msgs = server.get(&format!("/v1/conversations/{conv}/messages"), viewer.auth());
    msgs.expect(200);
    let sent = msgs
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| parse_id(m.get("sender").unwrap().get("id").unwrap()) == who)
        .count();
    let inbox = server.get("/v1/conversations", viewer.auth());
    inbox.expect(200);
    let last_is_theirs = inbox.at("items").as_array().unwrap().iter().any(|c| {
        parse_id(c.get("id").unwrap()) == conv
            && c.get("last_message")
                .and_then(|m| m.get("sender"))
                .and_then(|s| s.get("id"))
                .is_some_and(|id| parse_id(id) == who)
    });
    (followers, following, caused, sent, last_is_theirs)
}

#[test]
fn a_suspended_user_leaves_lists_notifications_and_conversations_until_lifted() {
    let server = start();
    let mut target = server.member_on_shard(1);
    let viewer = server.member_on_shard(0);
    let moderator = server.member_on_shard(1);
    let url = admin_url(&server);
    users_ok(
        &online(&url, &["promote", moderator.name(), "--role", "moderator"]),
        None,
    );
    // Follows both ways (the target follows the viewer: a notification on the other shard),
    // a comment on the viewer's post (another), and a conversation the viewer made, in
    // which the target wrote last.
    follow(&server, &viewer, &target);
    follow(&server, &target, &viewer);
    let theirs = compose(&server, &viewer, "a post on shard 0");
    comment(&server, &target, theirs, "a comment from shard 1");
    let conv = server.post(
        "/v1/conversations",
        viewer.auth(),
        json!({"participants": [target.id().to_string()]}),
    );
    conv.expect(201);
    let conv = parse_id(conv.at("conversation.id"));
    for (who, text) in [(&viewer, "hello"), (&target, "hi from shard 1")] {
        server
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                who.auth(),
                json!({"text": text}),
            )
            .expect(201);
    }
    // The follow and the comment notify the viewer (so may the message: at least 2).
    let mut visible = traces(&server, &viewer, target.id(), conv);
    let settled = wait_until(INDEX_LAG_MAX, || {
        visible = traces(&server, &viewer, target.id(), conv);
        visible.0 && visible.1 && visible.2 >= 2 && visible.3 == 1 && visible.4
    });
    assert!(settled, "before the suspension: {visible:?}");

    server
        .post(
            &format!("/v1/moderation/users/{}/suspension", target.id()),
            moderator.auth(),
            json!({"reason": "spam account"}),
        )
        .expect(200);
    // At once (the suspension reaches every shard before it is answered).
    assert_eq!(
        traces(&server, &viewer, target.id(), conv),
        (false, false, 0, 0, false)
    );
    // The viewer's own message is still there.
    let msgs = server.get(&format!("/v1/conversations/{conv}/messages"), viewer.auth());
    assert!(msgs.text().contains("hello"), "{}", msgs.what_happened());

    server
        .delete(
            &format!("/v1/moderation/users/{}/suspension", target.id()),
            moderator.auth(),
        )
        .expect(200);
    assert_eq!(traces(&server, &viewer, target.id(), conv), visible);
    // And the target sees itself in the viewer's lists again (and always saw its own
    // messages).
    relogin(&server, &mut target);
    let msgs = server.get(&format!("/v1/conversations/{conv}/messages"), target.auth());
    assert!(msgs.text().contains("hi from shard 1"));
}

#[test]
fn only_moderators_moderate_and_only_admins_grant_roles() {
    let server = start();
    let url = admin_url(&server);
    let user = server.member_on_shard(0);
    let moderator = server.member_on_shard(1);
    let admin = server.member_on_shard(0);
    let other = server.member_on_shard(1);
    users_ok(
        &online(&url, &["promote", moderator.name(), "--role", "moderator"]),
        None,
    );
    users_ok(
        &online(
            &url,
            &["promote", &admin.id().to_string(), "--role", "admin"],
        ),
        None,
    );
    let post = compose(&server, &other, "a post");
    let routes: Vec<(&str, String)> = vec![
        ("GET", "/v1/moderation/reports".into()),
        ("POST", "/v1/moderation/reports/1/resolve".into()),
        ("DELETE", format!("/v1/moderation/posts/{post}")),
        ("DELETE", "/v1/moderation/comments/1".into()),
        (
            "POST",
            format!("/v1/moderation/users/{}/suspension", other.id()),
        ),
        (
            "DELETE",
            format!("/v1/moderation/users/{}/suspension", other.id()),
        ),
        (
            "POST",
            format!("/v1/moderation/users/{}/moderator", other.id()),
        ),
        (
            "DELETE",
            format!("/v1/moderation/users/{}/moderator", other.id()),
        ),
        ("GET", "/v1/moderation/audit".into()),
    ];
    for (method, path) in &routes {
        let body = (*method == "POST").then(|| json!({}));
        server
            .call(method, path, user.auth(), body)
            .expect_error(403, "forbidden");
        // Without a token: 401.
        server.call(method, path, None, None).expect(401);
    }
    // The post was not removed by any of that.
    server
        .get(&format!("/v1/posts/{post}"), user.auth())
        .expect(200);

    // A moderator cannot grant roles, nor suspend an admin or another moderator.
    let grant = format!("/v1/moderation/users/{}/moderator", other.id());
    server
        .post(&grant, moderator.auth(), json!({}))
        .expect_error(403, "admin_only");
    server
        .post(
            &format!("/v1/moderation/users/{}/suspension", admin.id()),
            moderator.auth(),
            json!({}),
        )
        .expect_error(403, "target_role_too_high");
    // An admin grants the role; the new moderator then moderates.
    let granted = server.post(&grant, admin.auth(), json!({}));
    granted.expect(200);
    assert_eq!(granted.str("role"), "moderator");
    server
        .get("/v1/moderation/reports", other.auth())
        .expect(200);
    server
        .post(
            &format!("/v1/moderation/users/{}/suspension", other.id()),
            moderator.auth(),
            json!({}),
        )
        .expect_error(403, "target_role_too_high");
    // Revoked, it is a plain user again.
    let revoked = server.delete(&grant, admin.auth());
    revoked.expect(200);
    assert_eq!(revoked.str("role"), "user");
    server
        .get("/v1/moderation/reports", other.auth())
        .expect_error(403, "forbidden");
    // Bad input on moderator routes.
    server
        .get("/v1/moderation/reports?state=closed", moderator.auth())
        .expect_error(400, "invalid_state");
    server
        .get("/v1/moderation/audit?limit=0", moderator.auth())
        .expect_error(400, "invalid_limit");
    server
        .delete(
            &format!("/v1/moderation/posts/{}", post ^ 0xfff),
            moderator.auth(),
        )
        .expect(404);
    server
        .post(
            &format!("/v1/moderation/users/{}/suspension", user.id()),
            moderator.auth(),
            json!({"reason": "y".repeat(501)}),
        )
        .expect_error(400, "invalid_note");
}

/// Every `nova admin users` command, through the running server's admin listener.
#[test]
fn admin_user_commands_work_online() {
    let server = start();
    let url = admin_url(&server);
    let name = unique_name("cli");
    let email = format!("{name}@example.com");
    // Created with a generated password, printed once.
    let created = users_ok(&online(&url, &["create", &name, "--email", &email]), None);
    let id = parse_id(field(&created, "id"));
    let password = field(&created, "password").as_str().unwrap().to_string();
    server.login(&name, &password);
    // With a password from stdin.
    let name2 = unique_name("cli");
    let created2 = users_ok(
        &online(
            &url,
            &[
                "create",
                &name2,
                "--email",
                &format!("{name2}@example.com"),
                "--password-stdin",
            ],
        ),
        Some("a-stdin-password-123\n"),
    );
    assert!(created2.get("password").is_none());
    server.login(&name2, "a-stdin-password-123");
    // Taken names are refused.
    let dup = nova_users(
        &online(&url, &["create", &name, "--email", "x@example.com"]),
        None,
    );
    assert!(!dup.status.success());

    let shown = users_ok(
        &online(&url, &["promote", &name, "--role", "moderator"]),
        None,
    );
    assert_eq!(field(&shown, "role").as_str(), Some("moderator"));
    let shown = users_ok(&online(&url, &["demote", &id.to_string()]), None);
    assert_eq!(field(&shown, "role").as_str(), Some("user"));

    let viewer = server.member_on_shard(if shard_of(id) == 0 { 1 } else { 0 });
    let shown = users_ok(
        &online(&url, &["suspend", &name, "--reason", "operator says so"]),
        None,
    );
    assert_eq!(field(&shown, "suspended").as_bool(), Some(true));
    assert_eq!(
        field(&shown, "suspension_reason").as_str(),
        Some("operator says so")
    );
    assert_eq!(field(&shown, "sessions").as_u64(), Some(0));
    server
        .try_login(&name, &password)
        .expect_error(403, "account_suspended");
    server
        .get(&format!("/v1/users/{id}"), viewer.auth())
        .expect(404);
    let shown = users_ok(&online(&url, &["unsuspend", &name]), None);
    assert_eq!(field(&shown, "suspended").as_bool(), Some(false));
    server
        .get(&format!("/v1/users/{id}"), viewer.auth())
        .expect(200);
    let session = server.login(&name, &password);

    // Reset: the old password and session end, the new password works.
    users_ok(
        &online(&url, &["reset-password", &name, "--password-stdin"]),
        Some("brand-new-password-456\n"),
    );
    server.try_login(&name, &password).expect(401);
    server.get("/v1/me", Some(&session.access)).expect(401);
    server.login(&name, "brand-new-password-456");
    let generated = users_ok(&online(&url, &["reset-password", &id.to_string()]), None);
    let newest = field(&generated, "password").as_str().unwrap().to_string();
    server.login(&name, &newest);

    let shown = users_ok(&online(&url, &["show", &name]), None);
    assert_eq!(parse_id(field(&shown, "id")), id);
    assert_eq!(field(&shown, "email").as_str(), Some(email.as_str()));
    assert_eq!(field(&shown, "role").as_str(), Some("user"));
    let missing = nova_users(&online(&url, &["show", "nobody-here-at-all"]), None);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    // A wrong token is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(["admin", "users", "show", &name, "--server", &url])
        .env("NOVA_ADMIN_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Each command left an audit entry by admin-cli (read as an admin).
    let mut admin = server.member_on_shard(0);
    users_ok(
        &online(&url, &["promote", admin.name(), "--role", "admin"]),
        None,
    );
    relogin(&server, &mut admin);
    let audit = server.get("/v1/moderation/audit?limit=100", admin.auth());
    audit.expect(200);
    let mine: Vec<String> = audit
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("target_id").and_then(|t| t.as_str()) == Some(id.to_string().as_str()))
        .inspect(|e| assert_eq!(e.get("actor").and_then(|a| a.as_str()), Some("admin-cli")))
        .map(|e| {
            e.get("action")
                .and_then(|a| a.as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    for action in [
        "create_user",
        "set_role_moderator",
        "set_role_user",
        "suspend",
        "unsuspend",
        "reset_password",
    ] {
        assert!(mine.iter().any(|a| a == action), "no {action}: {mine:?}");
    }
}

/// Every `nova admin users` command on a stopped server's data dir, then checked by the
/// server started on it.
#[test]
fn admin_user_commands_work_offline() {
    let mut server = start();
    let target = server.member_on_shard(1);
    let viewer = server.member_on_shard(0);
    let data = server.launch().data_dir();
    let dir = data.to_str().unwrap().to_string();
    // While the server holds the files: refused, with the reason.
    let busy = nova_users(&offline(&dir, &["show", target.name()]), None);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    server.stop();

    let name = unique_name("off");
    let created = users_ok(
        &offline(
            &dir,
            &[
                "create",
                &name,
                "--email",
                &format!("{name}@example.com"),
                "--password-stdin",
            ],
        ),
        Some("offline-password-1\n"),
    );
    let id = parse_id(field(&created, "id"));
    let shown = users_ok(&offline(&dir, &["promote", &name, "--role", "admin"]), None);
    assert_eq!(field(&shown, "role").as_str(), Some("admin"));
    let shown = users_ok(
        &offline(&dir, &["suspend", target.name(), "--reason", "offline"]),
        None,
    );
    assert_eq!(field(&shown, "suspended").as_bool(), Some(true));
    let shown = users_ok(&offline(&dir, &["show", &target.id().to_string()]), None);
    assert_eq!(field(&shown, "suspended").as_bool(), Some(true));
    assert_eq!(field(&shown, "sessions").as_u64(), Some(0));

    server.restart();
    let mut admin = Member {
        token: server.login(&name, "offline-password-1").access,
        user: User {
            id,
            username: name.clone(),
            email: format!("{name}@example.com"),
            password: "offline-password-1".into(),
        },
    };
    server
        .try_login(target.name(), &target.user.password)
        .expect_error(403, "account_suspended");
    server.get("/v1/me", target.auth()).expect(401);
    server
        .get(&format!("/v1/users/{}", target.id()), viewer.auth())
        .expect(404);
    server
        .get("/v1/moderation/reports", admin.auth())
        .expect(200);
    server.stop();

    users_ok(&offline(&dir, &["unsuspend", target.name()]), None);
    users_ok(
        &offline(&dir, &["reset-password", target.name(), "--password-stdin"]),
        Some("reset-offline-789\n"),
    );
    let shown = users_ok(&offline(&dir, &["demote", &name]), None);
    assert_eq!(field(&shown, "role").as_str(), Some("user"));
    let missing = nova_users(&offline(&dir, &["show", "nobody-here-at-all"]), None);
    assert!(!missing.status.success());

    server.restart();
    server
        .try_login(target.name(), &target.user.password)
        .expect(401);
    server.login(target.name(), "reset-offline-789");
    server
        .get(&format!("/v1/users/{}", target.id()), viewer.auth())
        .expect(200);
    relogin(&server, &mut admin);
    server
        .get("/v1/moderation/reports", admin.auth())
        .expect_error(403, "forbidden");
    // The audit entries, read by an admin made online.
    let url = admin_url(&server);
    let mut reader = server.member_on_shard(0);
    users_ok(
        &online(&url, &["promote", reader.name(), "--role", "admin"]),
        None,
    );
    relogin(&server, &mut reader);
    let audit = server.get("/v1/moderation/audit?limit=100", reader.auth());
    audit.expect(200);
    let actions: Vec<(String, String)> = audit
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("actor").and_then(|a| a.as_str()) == Some("admin-cli"))
        .map(|e| {
            (
                e.get("action")
                    .and_then(|a| a.as_str())
                    .unwrap()
                    .to_string(),
                e.get("target_id")
                    .and_then(|a| a.as_str())
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    for (action, who) in [
        ("create_user", id),
        ("set_role_admin", id),
        ("suspend", target.id()),
        ("unsuspend", target.id()),
        ("reset_password", target.id()),
        ("set_role_user", id),
    ] {
        assert!(
            actions.contains(&(action.to_string(), who.to_string())),
            "no {action} of {who}: {actions:?}"
        );
    }
}

/// A `/wrk2-api` form POST (the routes take no token).
fn dsb_form(server: &Server, path: &str, body: &str) -> Resp {
    server.req(&Req::post(path).raw(
        "application/x-www-form-urlencoded",
        body.as_bytes().to_vec(),
    ))
}

#[test]
fn a_suspended_user_acts_nowhere_and_what_a_reporter_cannot_read_is_not_reported() {
    let server = Server::start(&["--admin-listen", "127.0.0.1:0", "--dsb-compat"]);
    let url = admin_url(&server);
    let target = server.member_on_shard(1);
    let viewer = server.member_on_shard(0);
    let private = server.member_on_shard(0);
    let other = server.member_on_shard(1);
    server.set_private(&private, true);
    let asked = server.post(
        &format!("/v1/users/{}/follow", private.id()),
        target.auth(),
        json!({}),
    );
    asked.expect(200);
    assert_eq!(asked.at("requested").as_bool(), Some(true));
    let post = compose(&server, &other, "a post to comment on");
    let by_target = comment(&server, &target, post, "the target's comment");
    let by_other = comment(&server, &other, post, "another comment");
    let conv = server.post(
        "/v1/conversations",
        target.auth(),
        json!({"participants": [viewer.id().to_string()]}),
    );
    conv.expect(201);
    let conv = conv.str("conversation.id").to_string();
    let sent = server.post(
        &format!("/v1/conversations/{conv}/messages"),
        target.auth(),
        json!({"text": "hello"}),
    );
    sent.expect(201);
    let message = parse_id(sent.at("message.id"));
    let compose_as = |who: &Member| {
        dsb_form(
            &server,
            "/wrk2-api/post/compose",
            &format!(
                "username={}&user_id=7&text=hello there&post_type=0",
                who.name()
            ),
        )
    };
    compose_as(&target).expect(200);

    // A comment of someone the reporter blocks, or who blocks the reporter, is not found,
    // as the comment lists leave it out; another one is reported.
    server
        .post(
            &format!("/v1/users/{}/block", target.id()),
            viewer.auth(),
            json!({}),
        )
        .expect(200);
    report(&server, &viewer, "comment", by_target, "spam").expect(404);
    report(&server, &viewer, "comment", by_other, "spam").expect(201);
    server
        .post(
            &format!("/v1/users/{}/block", viewer.id()),
            other.auth(),
            json!({}),
        )
        .expect(200);
    let third = server.member_on_shard(1);
    report(&server, &viewer, "comment", by_other, "harassment").expect(404);
    report(&server, &third, "comment", by_other, "spam").expect(201);
    report(&server, &viewer, "message", message, "spam").expect(201);

    users_ok(
        &online(&url, &["suspend", target.name(), "--reason", "spam"]),
        None,
    );
    // Nothing through the benchmark's routes either.
    let refused = compose_as(&target);
    assert_eq!(refused.status, 403, "{}", refused.what_happened());
    let refused = dsb_form(
        &server,
        "/wrk2-api/user/follow",
        &format!("user_name={}&followee_name={}", target.name(), other.name()),
    );
    assert_eq!(refused.status, 403, "{}", refused.what_happened());
    compose_as(&other).expect(200);
    // Its waiting request is not found, as the list leaves it out.
    server
        .post(
            &format!("/v1/me/follow-requests/{}/approve", target.id()),
            private.auth(),
            json!({}),
        )
        .expect(404);
    let followers = server.get(&format!("/v1/users/{}", private.id()), private.auth());
    assert_eq!(followers.at("user.followers_count").as_u64(), Some(0));
    // Its messages are left out of the conversation: not reported either.
    report(&server, &viewer, "message", message, "harassment").expect(404);
}

/// After a crash the databases lack what their logs hold until a start replays it: an offline
/// command refuses them then (a session it revoked would come back with the replay), and
/// works once the server has started and stopped.
#[test]
fn an_offline_command_after_a_crash_waits_for_the_log_to_be_applied() {
    // No checkpoint while it runs: the login below is in the log only.
    let mut server = Server::start(&["--checkpoint-ms", "60000"]);
    let target = server.member_on_shard(1);
    let session = server.login(&target.user.username, &target.user.password);
    let dir = server.launch().data_dir().to_str().unwrap().to_string();
    server.kill9();
    let refused = nova_users(
        &offline(&dir, &["reset-password", target.name(), "--password-stdin"]),
        Some("after-the-crash-1\n"),
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("write-ahead log"), "{stderr}");

    server.restart();
    server.stop();
    users_ok(
        &offline(&dir, &["reset-password", target.name(), "--password-stdin"]),
        Some("after-the-crash-2\n"),
    );
    server.restart();
    server.get("/v1/me", Some(&session.access)).expect(401);
    assert_eq!(refresh_status(&server, &session.refresh), 401);
    server.login(&target.user.username, "after-the-crash-2");
}

/// The status of `POST /v1/sessions/refresh` with this refresh token.
fn refresh_status(server: &Server, refresh: &str) -> u16 {
    server
        .post(
            "/v1/sessions/refresh",
            None,
            json!({ "refresh_token": refresh }),
        )
        .status
}
