//! Proves backups that restore (issue 7) with the real `nova` binary: an online backup through
//! the admin listener while posts keep coming, `nova admin verify`, `nova admin restore` into a
//! new data dir, and a restored server that answers exactly like the original did at the
//! snapshot for every user (profiles, timelines, home feeds, conversations); a damaged backup
//! is caught by verify and refused by restore; the admin listener wants its token.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

const TOKEN: &str = "backup-test-admin-token-0123456789";

fn nova(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(args)
        .env("NOVA_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "nova failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// Everything each user sees, as text, to compare two servers.
fn view(server: &Server, members: &[Member]) -> Vec<String> {
    let mut out = Vec::new();
    for m in members {
        let profile = server.get(&format!("/v1/users/{}", m.id()), m.auth());
        profile.expect(200);
        out.push(format!("{}: {:?}", m.name(), profile.json()));
        out.push(format!(
            "timeline {:?}",
            server.walk_posts(&format!("/v1/users/{}/posts", m.id()), &m.token, 100)
        ));
        out.push(format!(
            "home {:?}",
            server.walk_posts("/v1/timelines/home", &m.token, 100)
        ));
        let convs = server.get("/v1/conversations", m.auth());
        convs.expect(200);
        for id in item_ids(&convs) {
            out.push(format!(
                "conversation {id}: {:?}",
                server.walk_posts(&format!("/v1/conversations/{id}/messages"), &m.token, 100)
            ));
        }
        let followers = server.get(&format!("/v1/users/{}/followers", m.id()), m.auth());
        out.push(format!("followers {:?}", item_ids(&followers)));
    }
    out
}

fn relogin(server: &Server, members: &mut [Member]) {
    for m in members {
        m.token = server.login(&m.user.username, &m.user.password).access;
    }
}

fn restore_and_start(backup: &Path) -> Server {
    let launch = Launch::new();
    let data = launch.data_dir();
    ok(&nova(&[
        "admin",
        "restore",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    launch.start()
}

#[test]
fn online_backup_restores_to_the_same_answers() {
    let server = Server::start(&["--admin-token", TOKEN, "--admin-listen", "127.0.0.1:0"]);
    let url = admin_url(&server);
    let mut members: Vec<Member> = [0, 1, 0, 1]
        .into_iter()
        .map(|s| server.member_on_shard(s))
        .collect();
    for (a, b) in [(0, 1), (1, 0), (2, 1), (3, 0)] {
        server.follow(members[a].auth(), members[b].id());
    }
    for (i, m) in members.iter().enumerate() {
        for n in 0..3 {
            server
                .post(
                    "/v1/posts",
                    m.auth(),
                    json!({ "text": format!("user {i} post {n}") }),
                )
                .expect(201);
        }
    }
    let conv = server.post(
        "/v1/conversations",
        members[0].auth(),
        json!({"participants": [members[1].id().to_string()]}),
    );
    conv.expect(201);
    let conv = parse_id(conv.at("conversation.id"));
    for (i, m) in members[..2].iter().enumerate() {
        server
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                m.auth(),
                json!({ "text": format!("dm {i}") }),
            )
            .expect(201);
    }

    // A backup while posts keep coming.
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<(Instant, u64)>::new()));
    let writer = {
        let (server, stop, acked, m) = (
            Arc::clone(&server),
            Arc::clone(&stop),
            Arc::clone(&acked),
            members[1].clone(),
        );
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = server.post(
                    "/v1/posts",
                    m.auth(),
                    json!({ "text": format!("busy {n}") }),
                );
                r.expect(201);
                acked
                    .lock()
                    .unwrap()
                    .push((Instant::now(), parse_id(r.at("post.id"))));
                n += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let busy = dir.path().join("busy");
    let started = Instant::now();
    let out = ok(&nova(&[
        "admin",
        "backup",
        busy.to_str().unwrap(),
        "--server",
        &url,
    ]));
    assert!(out.contains("\"shards\":2"), "{out}");
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let before: Vec<u64> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _)| *at < started)
        .map(|(_, id)| *id)
        .collect();
    assert!(!before.is_empty());
    let server = Arc::try_unwrap(server).ok().unwrap();
    ok(&nova(&["admin", "verify", busy.to_str().unwrap()]));
    {
        let restored = restore_and_start(&busy);
        let mut ms = members.clone();
        relogin(&restored, &mut ms);
        let busy_ids = restored.walk_posts(
            &format!("/v1/users/{}/posts", ms[1].id()),
            &ms[1].token,
            100,
        );
        let original = server.walk_posts(
            &format!("/v1/users/{}/posts", members[1].id()),
            &members[1].token,
            100,
        );
        for id in &before {
            assert!(
                busy_ids.contains(id),
                "post {id} acknowledged before the backup is missing"
            );
        }
        for id in &busy_ids {
            assert!(original.contains(id), "restored post {id} never existed");
        }
    }

    // Idle: the restored server answers exactly like the original.
    let quiet = dir.path().join("quiet");
    ok(&nova(&[
        "admin",
        "backup",
        quiet.to_str().unwrap(),
        "--server",
        &url,
    ]));
    let want = view(&server, &members);
    let restored = restore_and_start(&quiet);
    relogin(&restored, &mut members);
    assert_eq!(view(&restored, &members), want);
    // It takes writes as usual.
    restored
        .post(
            "/v1/posts",
            members[0].auth(),
            json!({"text": "after restore"}),
        )
        .expect(201);
}

#[test]
fn damaged_backups_are_refused_and_the_admin_listener_wants_its_token() {
    let server = Server::start(&["--admin-token", TOKEN, "--admin-listen", "127.0.0.1:0"]);
    let url = admin_url(&server);
    let m = server.member_on_shard(1);
    server
        .post("/v1/posts", m.auth(), json!({"text": "something to keep"}))
        .expect(201);
    // A picture, so that the backup holds media blobs.
    let png = tempfile::tempdir().unwrap();
    let png = png.path().join("p.png");
    let made = Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=red:s=64x48",
            "-frames:v",
            "1",
        ])
        .arg(&png)
        .status()
        .unwrap();
    assert!(made.success());
    let up = server.req(
        &Req::post("/v1/media")
            .bearer(&m.token)
            .raw("application/octet-stream", std::fs::read(&png).unwrap()),
    );
    up.expect(202);
    let media = up.str("media.id").to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = server.get(&format!("/v1/media/{media}"), m.auth());
        if r.str("media.state") == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "media not ready: {}", r.text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("b");
    ok(&nova(&[
        "admin",
        "backup",
        dest.to_str().unwrap(),
        "--server",
        &url,
    ]));
    let blobs: Vec<_> = std::fs::read_dir(dest.join("media/shard-1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().len() == 2)
        .collect();
    assert!(!blobs.is_empty(), "no media blobs in the backup");

    // The same destination again: refused, nothing overwritten.
    let again = nova(&["admin", "backup", dest.to_str().unwrap(), "--server", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // A destination inside the data dir would copy itself without end: refused, the server
    // still answers, and nothing is left in the data dir.
    let data = server.launch().data_dir();
    for inside in [data.join("bk"), data.join("media").join("..").join("bk2")] {
        let refused = nova(&[
            "admin",
            "backup",
            inside.to_str().unwrap(),
            "--server",
            &url,
        ]);
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("inside the data dir"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(!inside.exists(), "{} was made", inside.display());
    }
    server.get("/health", None).expect(200);

    // Offline backup of a running server's data dir: refused with a reason.
    let offline = nova(&[
        "admin",
        "backup",
        dir.path().join("c").to_str().unwrap(),
        "--data-dir",
        server.launch().data_dir().to_str().unwrap(),
    ]);
    assert!(!offline.status.success());
    assert!(
        String::from_utf8_lossy(&offline.stderr).contains("server running"),
        "{}",
        String::from_utf8_lossy(&offline.stderr)
    );

    // A wrong token.
    let resp = ureq::post(&format!("{url}/admin/backup"))
        .set("Authorization", "Bearer wrong")
        .send_string("{\"dest\":\"/tmp/x\"}");
    assert!(matches!(resp, Err(ureq::Error::Status(401, _))));
    let resp = ureq::get(&format!("{url}/admin/stats"))
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap();
    let stats = resp.into_string().unwrap();
    assert!(stats.contains("\"users\""), "{stats}");

    // One flipped byte in a shard file: verify says which, restore refuses.
    let shard = dest.join("shard-1.redb");
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let v = nova(&["admin", "verify", dest.to_str().unwrap()]);
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("shard-1.redb: checksum mismatch"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let target = tempfile::tempdir().unwrap();
    let r = nova(&[
        "admin",
        "restore",
        dest.to_str().unwrap(),
        "--data-dir",
        target.path().to_str().unwrap(),
    ]);
    assert!(!r.status.success());
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0);

    // A stopped server's data dir: offline backup and verify work.
    let mut server = server;
    server.stop();
    let offline = dir.path().join("offline");
    ok(&nova(&[
        "admin",
        "backup",
        offline.to_str().unwrap(),
        "--data-dir",
        server.launch().data_dir().to_str().unwrap(),
    ]));
    ok(&nova(&["admin", "verify", offline.to_str().unwrap()]));
    ok(&nova(&[
        "admin",
        "verify",
        server.launch().data_dir().to_str().unwrap(),
    ]));
    // A referenced blob gone from a data dir: verify names it.
    let data = server.launch().data_dir();
    let shard_dir = data.join("media/shard-1");
    let sub = std::fs::read_dir(&shard_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().len() == 2)
        .unwrap()
        .path();
    let blob = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&blob).unwrap();
    let v = nova(&["admin", "verify", data.to_str().unwrap()]);
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("is missing"),
        "{}",
        String::from_utf8_lossy(&v.stderr)
    );
}

/// After a kill, the write-ahead log holds answered posts the database files lack: an offline
/// backup refuses the data dir until a start has replayed them; after a start and a clean
/// stop, its backup restores every answered post.
#[test]
fn an_offline_backup_after_a_kill_wants_the_log_applied_first() {
    // No checkpoint by time: every post below stays in the log until the kill.
    let mut server = Server::start(&["--checkpoint-ms", "60000"]);
    let members: Vec<(User, String)> = server
        .users_on_each_shard()
        .into_iter()
        .map(|u| {
            let token = server.login(&u.username, &u.password).access;
            (u, token)
        })
        .collect();
    let mut posted: Vec<(u64, String)> = Vec::new();
    for i in 0..10 {
        for (user, token) in &members {
            let resp = server.post(
                "/v1/posts",
                Some(token),
                json!({"text": format!("answered before the kill, {i}")}),
            );
            resp.expect(201);
            posted.push((user.id, resp.str("post.id").to_string()));
        }
    }
    server.kill9();
    let data = server.launch().data_dir();
    let dest = tempfile::tempdir().unwrap();
    let refused = nova(&[
        "admin",
        "backup",
        dest.path().join("a").to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("write-ahead log"), "{why}");

    // A start replays the log; a clean stop checkpoints it: then the backup is whole.
    server.restart();
    let log = server.stderr_once_has("replayed the write-ahead log", Duration::from_secs(5));
    assert!(log.contains("replayed the write-ahead log"), "{log}");
    server.stop();
    let backup = dest.path().join("b");
    ok(&nova(&[
        "admin",
        "backup",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]));
    let restored = restore_and_start(&backup);
    for (user, _) in &members {
        let token = restored.login(&user.username, &user.password).access;
        let ids: Vec<String> = restored
            .walk_posts(&format!("/v1/users/{}/posts", user.id), &token, 50)
            .iter()
            .map(u64::to_string)
            .collect();
        for (author, id) in &posted {
            if author == &user.id {
                assert!(
                    ids.contains(id),
                    "post {id} of {} missing: {ids:?}",
                    user.id
                );
            }
        }
    }
}
