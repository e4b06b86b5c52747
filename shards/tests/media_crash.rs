//! Proves that media processing survives a SIGKILL of the `nova` process: media killed while
//! processing (a video being transcoded) or still waiting in the queue (images uploaded by a
//! user of the other shard) is processed after the restart: every one ends ready or failed,
//! never stuck pending or processing, and an acknowledged upload is never lost.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const SETTLE_TIMEOUT: Duration = Duration::from_secs(240);

fn make(args: &[&str], out: &std::path::Path) -> Vec<u8> {
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(out)
        .status()
        .expect("the ffmpeg command (Debian package ffmpeg) is needed by these tests");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

/// A test-pattern PNG of `width` x `height`, written to `out`.
fn png(out: &std::path::Path, width: usize, height: usize) -> Vec<u8> {
    let source = format!("testsrc2=s={width}x{height}");
    make(&["-f", "lavfi", "-i", &source, "-frames:v", "1"], out)
}

fn state(server: &Server, token: &str, id: &str) -> String {
    let resp = server.get(&format!("/v1/media/{id}"), Some(token));
    resp.expect(200);
    resp.str("media.state").to_string()
}

#[test]
fn sigkill_during_processing_leaves_nothing_stuck() {
    let mut server = Server::start(&[]);
    let scratch_dir = tempfile::Builder::new()
        .prefix("nova-media-crash-")
        .tempdir()
        .unwrap();
    let dir = scratch_dir.path();
    let video = make(
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=1920x1080:r=30:d=6",
            "-f",
            "lavfi",
            "-i",
            "sine=d=6",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv444p",
            "-c:a",
            "aac",
        ],
        &dir.join("big.mp4"),
    );
    let users = server.users_on_each_shard();
    let a = server.login(&users[0].username, &users[0].password).access;
    let b = server.login(&users[1].username, &users[1].password).access;

    let mut uploaded: Vec<(String, String)> = Vec::new();
    let resp = server.req(
        &Req::post("/v1/media")
            .bearer(&a)
            .raw("video/mp4", video)
            .timeout(Duration::from_secs(60)),
    );
    resp.expect(202);
    uploaded.push((a.clone(), resp.str("media.id").to_string()));
    // Images from the other shard's user queue up behind the video.
    for i in 0..3 {
        let img = png(&dir.join(format!("img{i}.png")), 400 + i, 300);
        let resp = server.req(&Req::post("/v1/media").bearer(&b).raw("image/png", img));
        resp.expect(202);
        uploaded.push((b.clone(), resp.str("media.id").to_string()));
    }
    // Kill while the video is being transcoded.
    let started = Instant::now();
    while state(&server, &a, &uploaded[0].1) != "processing" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never started processing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        state(&server, &a, &uploaded[0].1),
        "processing",
        "finished too soon to test"
    );
    server.kill9();
    server.restart();

    let started = Instant::now();
    for (token, id) in &uploaded {
        loop {
            let s = state(&server, token, id);
            if s == "ready" || s == "failed" {
                assert_eq!(s, "ready", "media {id} failed after the restart");
                break;
            }
            assert!(
                started.elapsed() < SETTLE_TIMEOUT,
                "media {id} is still {s} after the restart"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let video = server.get(&format!("/v1/media/{}", uploaded[0].1), Some(&a));
    let names: Vec<&str> = video
        .at("media.renditions")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.get("name").unwrap().as_str().unwrap())
        .collect();
    assert_eq!(names, ["1080p.mp4", "360p.mp4", "720p.mp4", "poster.jpg"]);
}

/// Media writes that only the write-ahead log holds at the kill (no periodic checkpoint):
/// uploads answered 202, one of them deleted (204), the others processed to `ready`, and a
/// resumable upload half sent. After the SIGKILL and restart, at the first look: every
/// answered upload is there and the deleted one is not, what was `ready` still is (not
/// processed again), and the resumable upload goes on from its answered offset.
#[test]
fn media_writes_in_the_log_survive_sigkill() {
    let mut server = Server::start(&["--checkpoint-ms", "60000"]);
    let scratch_dir = tempfile::Builder::new()
        .prefix("nova-media-crash-")
        .tempdir()
        .unwrap();
    let dir = scratch_dir.path();
    let users = server.users_on_each_shard();
    let mut tokens: Vec<String> = users
        .iter()
        .map(|u| server.login(&u.username, &u.password).access)
        .collect();
    // The registrations and logins above were durable commits: what follows is the log's.
    let mut uploaded: Vec<(usize, String)> = Vec::new();
    for i in 0..6 {
        let img = png(&dir.join(format!("img{i}.png")), 300 + i, 200);
        let who = i % tokens.len();
        let resp = server.req(
            &Req::post("/v1/media")
                .bearer(&tokens[who])
                .raw("image/png", img),
        );
        resp.expect(202);
        uploaded.push((who, resp.str("media.id").to_string()));
    }
    let (gone_who, gone) = uploaded.pop().unwrap();
    server
        .delete(&format!("/v1/media/{gone}"), Some(&tokens[gone_who]))
        .expect(204);
    let started = Instant::now();
    for (who, id) in &uploaded {
        while state(&server, &tokens[*who], id) != "ready" {
            assert!(started.elapsed() < SETTLE_TIMEOUT, "media {id} never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Each user's first image becomes its avatar (a logged profile edit).
    let mut avatars = Vec::new();
    for (who, token) in tokens.iter().enumerate() {
        let (_, id) = uploaded.iter().find(|(w, _)| *w == who).unwrap();
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                Some(token),
                Some(simd_json::json!({ "avatar_media_id": id.clone() })),
            )
            .expect(200);
        avatars.push(id.clone());
    }
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let created = server.req(
        &Req::post("/v1/uploads")
            .header("Tus-Resumable", "1.0.0")
            .bearer(&tokens[1])
            .header("Upload-Length", &data.len().to_string()),
    );
    created.expect(201);
    let location = created.header("location").unwrap().to_string();
    let half = data.len() / 2;
    let patched = server.req(
        &Req::new("PATCH", &location)
            .header("Tus-Resumable", "1.0.0")
            .bearer(&tokens[1])
            .header("Upload-Offset", "0")
            .raw("application/offset+octet-stream", data[..half].to_vec()),
    );
    patched.expect(204);

    server.kill9();
    server.restart();
    server.assert_replayed("");
    for (token, user) in tokens.iter_mut().zip(&users) {
        *token = server.login(&user.username, &user.password).access;
    }
    for (who, id) in &uploaded {
        assert_eq!(
            state(&server, &tokens[*who], id),
            "ready",
            "media {id} after the restart"
        );
    }
    server
        .get(&format!("/v1/media/{gone}"), Some(&tokens[gone_who]))
        .expect(404);
    for ((user, token), avatar) in users.iter().zip(&tokens).zip(&avatars) {
        let resp = server.get(&format!("/v1/users/{}", user.id), Some(token));
        resp.expect(200);
        assert_eq!(resp.str("user.avatar.id"), avatar, "the answered avatar");
    }
    let head = server.req(
        &Req::new("HEAD", &location)
            .header("Tus-Resumable", "1.0.0")
            .bearer(&tokens[1]),
    );
    head.expect(200);
    assert_eq!(
        head.header("upload-offset"),
        Some(half.to_string().as_str()),
        "the resumable upload's answered offset"
    );
}
