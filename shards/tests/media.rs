//! Proves the media API against the real `nova` process (2 shards): uploads of photos (EXIF
//! GPS and rotation) and videos (test pattern with sound) processed to ready, renditions
//! downloaded and checked with the ffmpeg command (upright, no metadata, sizes, codecs),
//! serving (Range, ETag, 304, caching), signed URLs and their expiry, every limit, refusals
//! that keep nothing, shared blobs freed on delete, and tus uploads broken and resumed. Every
//! case runs across shards (uploader on one shard, requests served by both).

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("the ffmpeg command (Debian package ffmpeg) is needed by these tests");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ffprobe(path: &Path, stream: &str, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            stream,
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A scratch directory, removed when the returned guard drops (also when the test fails).
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nova-media-http-{name}-"))
        .tempdir()
        .unwrap()
}

/// EXIF (APP1) with an orientation and a GPS IFD holding "N"/"E" references.
fn exif_app1(orientation: u16) -> Vec<u8> {
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    t.extend_from_slice(&2u16.to_le_bytes());
    t.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]);
    t.extend_from_slice(&orientation.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    t.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0]);
    t.extend_from_slice(&38u32.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    t.extend_from_slice(&2u16.to_le_bytes());
    t.extend_from_slice(&[0x01, 0x00, 2, 0, 2, 0, 0, 0, b'N', 0, 0, 0]);
    t.extend_from_slice(&[0x03, 0x00, 2, 0, 2, 0, 0, 0, b'E', 0, 0, 0]);
    t.extend_from_slice(&0u32.to_le_bytes());
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&((t.len() + 8) as u16).to_be_bytes());
    seg.extend_from_slice(b"Exif\0\0");
    seg.extend_from_slice(&t);
    seg
}

/// A 640x480 JPEG (left half red, right half blue) with EXIF orientation 6 and GPS.
fn photo(d: &Path, color: &str) -> Vec<u8> {
    let plain = d.join(format!("plain-{color}.jpg"));
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &format!("color={color}:s=640x480"),
        "-vf",
        "drawbox=x=320:y=0:w=320:h=480:color=blue:t=fill",
        "-frames:v",
        "1",
        "-q:v",
        "2",
        plain.to_str().unwrap(),
    ]);
    let bytes = std::fs::read(&plain).unwrap();
    let mut out = bytes[..2].to_vec();
    out.extend_from_slice(&exif_app1(6));
    out.extend_from_slice(&bytes[2..]);
    assert!(out.windows(4).any(|w| w == b"Exif"));
    out
}

fn clip(d: &Path, name: &str, size: &str, secs: u32, extra: &[&str]) -> Vec<u8> {
    let path = d.join(name);
    let src = format!("testsrc2=s={size}:r=30:d={secs}");
    let tone = format!("sine=f=440:d={secs}");
    let mut args = vec!["-f", "lavfi", "-i", &src, "-f", "lavfi", "-i", &tone];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
    std::fs::read(&path).unwrap()
}

fn upload(server: &Server, token: &str, bytes: &[u8], query: &str) -> Resp {
    server.req(
        &Req::post(&format!("/v1/media{query}"))
            .bearer(token)
            .raw("application/octet-stream", bytes.to_vec())
            .timeout(Duration::from_secs(60)),
    )
}

fn media_id(resp: &Resp) -> u64 {
    resp.str("media.id").parse().unwrap()
}

/// Polls `GET /v1/media/{id}` until it is ready or failed.
fn wait_done(server: &Server, token: &str, id: u64) -> Resp {
    let started = Instant::now();
    loop {
        let resp = server.get(&format!("/v1/media/{id}"), Some(token));
        resp.expect(200);
        let state = resp.str("media.state").to_string();
        if state == "ready" || state == "failed" {
            return resp;
        }
        assert!(
            ["pending", "processing"].contains(&state.as_str()),
            "unknown state {state}"
        );
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "media {id} still {state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rendition<'a>(resp: &'a Resp, name: &str) -> &'a Json {
    resp.at("media.renditions")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
        .unwrap_or_else(|| panic!("no {name}: {}", resp.text()))
}

fn num(j: &Json, key: &str) -> u64 {
    j.get(key)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("{key} in {j:?}"))
}

fn url(j: &Json) -> String {
    j.get("url").and_then(|v| v.as_str()).unwrap().to_string()
}

/// Blob files of the data directory (every shard's store).
fn blobs(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(data.join("media")) else {
        return out;
    };
    for shard in shards.flatten() {
        for sub in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = sub.file_name().to_string_lossy().to_string();
            if name.len() == 2 {
                for f in std::fs::read_dir(sub.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    out.push(f.path());
                }
            }
        }
    }
    out
}

fn used_bytes(server: &Server, token: &str) -> u64 {
    let me = server.get("/v1/me", Some(token));
    me.expect(200);
    num(me.at("user.media"), "used_bytes")
}

fn rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let size = ffprobe(path, "v:0", "stream=width,height");
    let (w, h) = size.split_once(',').unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    (w.parse().unwrap(), h.parse().unwrap(), out.stdout)
}

fn pixel(img: &(u32, u32, Vec<u8>), x: u32, y: u32) -> [u8; 3] {
    let i = ((y * img.0 + x) * 3) as usize;
    [img.2[i], img.2[i + 1], img.2[i + 2]]
}

#[test]
fn photo_upload_renditions_serving_and_shared_blobs() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("photo");
    let d = scratch_dir.path();
    let users = server.users_on_each_shard();
    let owner = &users[1];
    let other = &users[0];
    let token = server.login(&owner.username, &owner.password).access;
    let other_token = server.login(&other.username, &other.password).access;
    let bytes = photo(d, "red");

    let created = upload(&server, &token, &bytes, "");
    created.expect(202);
    let id = media_id(&created);
    assert_eq!(created.str("media.kind"), "image");
    assert!(["pending", "processing"].contains(&created.str("media.state")));
    assert_eq!(
        num(created.json().get("media").unwrap(), "bytes"),
        bytes.len() as u64
    );
    // Upright size from the EXIF orientation, known at once.
    assert_eq!(num(created.at("media.metadata"), "width"), 480);
    assert_eq!(num(created.at("media.metadata"), "height"), 640);

    let done = wait_done(&server, &token, id);
    assert_eq!(done.str("media.state"), "ready", "{}", done.text());
    assert!(done.at("media.metadata.blurhash").as_str().is_some());
    // The other user (on the other shard) sees a public media too, from either shard.
    server.on_each_shard(
        &Req::get(&format!("/v1/media/{id}")).bearer(&other_token),
        |r| {
            r.expect(200);
        },
    );

    let mut stored = bytes.len() as u64;
    for (name, w, h) in [("thumb.jpg", 240, 320), ("display.jpg", 480, 640)] {
        let r = rendition(&done, name);
        assert_eq!((num(r, "width"), num(r, "height")), (w, h));
        assert_eq!(r.get("mime").and_then(|m| m.as_str()), Some("image/jpeg"));
        let resp = server.req(&Req::get(&url(r)));
        resp.expect(200);
        assert_eq!(resp.header("content-type"), Some("image/jpeg"));
        assert_eq!(
            resp.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(resp.body.len() as u64, num(r, "bytes"));
        stored += num(r, "bytes");
        // No EXIF, no GPS left; turned upright (the left, red half is on top).
        assert!(!resp.body.windows(4).any(|w| w == b"Exif"));
        let file = d.join(name);
        std::fs::write(&file, &resp.body).unwrap();
        let img = rgb(&file);
        assert_eq!((img.0, img.1), (w as u32, h as u32));
        let top = pixel(&img, img.0 / 2, 4);
        let bottom = pixel(&img, img.0 / 2, img.1 - 4);
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");

        // ETag and 304; Range and 206; an unsatisfiable range is 416.
        let etag = resp.header("etag").unwrap().to_string();
        let again = server.req(&Req::get(&url(r)).header("If-None-Match", &etag));
        again.expect(304);
        assert!(again.body.is_empty());
        let part = server.req(&Req::get(&url(r)).header("Range", "bytes=10-19"));
        part.expect(206);
        assert_eq!(part.body, resp.body[10..20]);
        let len = resp.body.len();
        assert_eq!(
            part.header("content-range"),
            Some(format!("bytes 10-19/{len}").as_str())
        );
        let tail = server.req(&Req::get(&url(r)).header("Range", "bytes=-5"));
        tail.expect(206);
        assert_eq!(tail.body, resp.body[len - 5..]);
        server
            .req(&Req::get(&url(r)).header("Range", &format!("bytes={len}-")))
            .expect(416);
    }
    assert_eq!(used_bytes(&server, &token), stored);

    // The same photo again: one blob for both originals.
    let before = blobs(&server.launch().data_dir()).len();
    let twin = upload(&server, &token, &bytes, "");
    twin.expect(202);
    let twin_id = media_id(&twin);
    wait_done(&server, &token, twin_id);
    assert_eq!(
        blobs(&server.launch().data_dir()).len(),
        before,
        "identical uploads share blobs"
    );

    // Only the owner deletes; deleting both frees every blob.
    server
        .req(&Req::new("DELETE", &format!("/v1/media/{id}")).bearer(&other_token))
        .expect(404);
    for m in [id, twin_id] {
        server
            .req(&Req::new("DELETE", &format!("/v1/media/{m}")).bearer(&token))
            .expect(204);
        server
            .get(&format!("/v1/media/{m}"), Some(&token))
            .expect(404);
    }
    assert!(blobs(&server.launch().data_dir()).is_empty());
    assert_eq!(used_bytes(&server, &token), 0);
    server
        .req(&Req::get(&url(rendition(&done, "thumb.jpg"))))
        .expect(404);
}

#[test]
fn video_ladder_and_poster() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("video");
    let d = scratch_dir.path();
    let users = server.users_on_each_shard();
    let token = server.login(&users[0].username, &users[0].password).access;
    let bytes = clip(
        d,
        "src.mkv",
        "1280x720",
        2,
        &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv444p",
            "-c:a",
            "libmp3lame",
        ],
    );
    let created = upload(&server, &token, &bytes, "");
    created.expect(202);
    assert_eq!(created.str("media.kind"), "video");
    let done = wait_done(&server, &token, media_id(&created));
    assert_eq!(done.str("media.state"), "ready", "{}", done.text());
    let names: Vec<&str> = done
        .at("media.renditions")
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.get("name").unwrap().as_str().unwrap())
        .collect();
    assert_eq!(names, ["360p.mp4", "720p.mp4", "poster.jpg"]);
    for (name, w, h) in [("360p.mp4", 640, 360), ("720p.mp4", 1280, 720)] {
        let r = rendition(&done, name);
        let resp = server.req(&Req::get(&url(r)));
        resp.expect(200);
        assert_eq!(resp.header("content-type"), Some("video/mp4"));
        let file = d.join(name);
        std::fs::write(&file, &resp.body).unwrap();
        assert_eq!(
            ffprobe(&file, "v:0", "stream=codec_name,width,height,pix_fmt"),
            format!("h264,{w},{h},yuv420p")
        );
        assert_eq!(ffprobe(&file, "a:0", "stream=codec_name"), "aac");
        let dur: f64 = ffprobe(&file, "v:0", "stream=duration").parse().unwrap();
        assert!((dur - 2.0).abs() <= 1.0 / 30.0 + 1e-6, "{name}: {dur}");
    }
    let poster = rendition(&done, "poster.jpg");
    assert_eq!((num(poster, "width"), num(poster, "height")), (1280, 720));
}

/// Every refusal: a 4xx with its code, and nothing kept (no blob, no bytes counted).
#[test]
fn limits_and_refusals_keep_nothing() {
    let server = Server::start(&[
        "--media-upload-bytes-max",
        "3000000",
        "--media-image-bytes-max",
        "200000",
        "--media-pixels-max",
        "2000000",
        "--media-duration-s-max",
        "2",
        "--media-frame-rate-max",
        "25",
    ]);
    let scratch_dir = scratch("limits");
    let d = scratch_dir.path();
    let users = server.users_on_each_shard();
    let token = server.login(&users[1].username, &users[1].password).access;
    let jpeg = photo(d, "red");

    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bomb.extend_from_slice(&50_000u32.to_be_bytes());
    bomb.extend_from_slice(&50_000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    bomb.extend_from_slice(&[0u8; 64]);
    let big_png = d.join("big.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=white:s=2000x1200",
        "-frames:v",
        "1",
        big_png.to_str().unwrap(),
    ]);
    let noisy = d.join("noisy.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "nullsrc=s=500x500,geq=random(1)*255:128:128",
        "-frames:v",
        "1",
        noisy.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&noisy).unwrap().len() > 200_000);
    let long = clip(
        d,
        "long.mp4",
        "320x240",
        3,
        &["-c:v", "libx264", "-c:a", "aac", "-r", "24"],
    );
    let fast = clip(
        d,
        "fast.mp4",
        "320x240",
        1,
        &["-c:v", "libx264", "-c:a", "aac"],
    );
    let small_png = d.join("small.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=white:s=100x100",
        "-frames:v",
        "1",
        small_png.to_str().unwrap(),
    ]);
    let mut liar = std::fs::read(&small_png).unwrap()[..33].to_vec();
    liar.extend_from_slice(&jpeg);
    let animated = d.join("animated.webp");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=s=64x64:r=10",
        "-t",
        "1",
        "-c:v",
        "libwebp_anim",
        "-loop",
        "0",
        animated.to_str().unwrap(),
    ]);
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("png bomb", bomb, 422, "too_many_pixels"),
        (
            "too many pixels",
            std::fs::read(&big_png).unwrap(),
            422,
            "too_many_pixels",
        ),
        (
            "image bytes",
            std::fs::read(&noisy).unwrap(),
            413,
            "media_too_large",
        ),
        ("body bytes", vec![0u8; 3_100_000], 413, "media_too_large"),
        ("too long", long, 422, "too_long"),
        ("frame rate", fast, 422, "frame_rate_too_high"),
        (
            "text",
            b"hello, I am not a picture".to_vec(),
            415,
            "unsupported_media",
        ),
        (
            "truncated jpeg",
            jpeg[..jpeg.len() / 2].to_vec(),
            422,
            "unreadable_media",
        ),
        ("png header on jpeg data", liar, 422, "unreadable_media"),
        (
            "animated webp",
            std::fs::read(&animated).unwrap(),
            415,
            "unsupported_media",
        ),
        (
            "animated webp whose header says it is not",
            {
                let mut b = std::fs::read(&animated).unwrap();
                b[20] &= !0x02;
                b
            },
            415,
            "unsupported_media",
        ),
        ("empty", Vec::new(), 400, "empty_body"),
    ];
    for (what, bytes, status, code) in cases {
        // Labelled as a JPEG whatever it is: the type sent is never believed.
        let resp = server.req(
            &Req::post("/v1/media")
                .bearer(&token)
                .raw("image/jpeg", bytes)
                .timeout(Duration::from_secs(60)),
        );
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        resp.expect_error(status, code);
        assert!(
            blobs(&server.launch().data_dir()).is_empty(),
            "{what} left a blob"
        );
        assert_eq!(used_bytes(&server, &token), 0, "{what} was counted");
    }
    // A mislabelled but good file is taken: the bytes decide.
    upload(&server, &token, &jpeg, "").expect(202);
}

#[test]
fn quota_counts_every_rendition() {
    let scratch_dir = scratch("quota");
    let d = scratch_dir.path();
    let jpeg = photo(d, "red");
    let server = Server::start(&["--media-quota-bytes", &(jpeg.len() as u64 + 10).to_string()]);
    let users = server.users_on_each_shard();
    let token = server.login(&users[0].username, &users[0].password).access;
    let created = upload(&server, &token, &jpeg, "");
    created.expect(202);
    // The original fits; its renditions do not: the media fails and keeps only the original.
    let done = wait_done(&server, &token, media_id(&created));
    assert_eq!(done.str("media.state"), "failed");
    assert!(
        done.str("media.failure").contains("quota"),
        "{}",
        done.text()
    );
    assert_eq!(used_bytes(&server, &token), jpeg.len() as u64);
    upload(&server, &token, &jpeg, "").expect_error(413, "quota_exceeded");
}

#[test]
fn private_media_needs_signed_urls_that_expire() {
    let server = Server::start(&["--media-url-ttl-s", "3"]);
    let scratch_dir = scratch("private");
    let d = scratch_dir.path();
    let users = server.users_on_each_shard();
    let token = server.login(&users[0].username, &users[0].password).access;
    let other = server.login(&users[1].username, &users[1].password).access;
    // A value that is not true or false is refused, not taken as public.
    for bad in ["yes", "on", "maybe", ""] {
        upload(
            &server,
            &token,
            &photo(d, "red"),
            &format!("?private={bad}"),
        )
        .expect_error(400, "invalid_private");
    }
    assert_eq!(used_bytes(&server, &token), 0);
    let created = upload(&server, &token, &photo(d, "red"), "?private=True");
    created.expect(202);
    assert_eq!(created.at("media.private").as_bool(), Some(true));
    let id = media_id(&created);
    let done = wait_done(&server, &token, id);
    assert_eq!(done.str("media.state"), "ready");
    server
        .get(&format!("/v1/media/{id}"), Some(&other))
        .expect(404);
    let signed = url(rendition(&done, "thumb.jpg"));
    assert!(signed.contains("sig="), "{signed}");
    // Any client may fetch with the signature (no token), from either shard.
    server.on_each_shard(&Req::get(&signed), |r| {
        r.expect(200);
        assert!(r.header("cache-control").unwrap().starts_with("private"));
    });
    let bare = signed.split('?').next().unwrap().to_string();
    server
        .req(&Req::get(&bare))
        .expect_error(403, "bad_signature");
    let tampered = signed.replace("thumb.jpg", "display.jpg");
    server
        .req(&Req::get(&tampered))
        .expect_error(403, "bad_signature");
    std::thread::sleep(Duration::from_millis(4200));
    server
        .req(&Req::get(&signed))
        .expect_error(403, "bad_signature");
}

fn tus(req: Req) -> Req {
    req.header("Tus-Resumable", "1.0.0")
}

/// Sends a PATCH that promises `declared` bytes but delivers `sent` and hangs up.
fn broken_patch(
    server: &Server,
    path: &str,
    token: &str,
    offset: u64,
    data: &[u8],
    declared: usize,
) {
    let mut s = std::net::TcpStream::connect(server.addr()).unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\nContent-Length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(data).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
}

#[test]
fn tus_upload_broken_and_resumed() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("tus");
    let d = scratch_dir.path();
    let users = server.users_on_each_shard();
    let token = server.login(&users[1].username, &users[1].password).access;
    let bytes = clip(
        d,
        "src.mp4",
        "640x360",
        1,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    );
    let len = bytes.len();

    let opts = server.req(&Req::new("OPTIONS", "/v1/uploads"));
    opts.expect(204);
    assert_eq!(opts.header("tus-version"), Some("1.0.0"));
    assert_eq!(opts.header("tus-extension"), Some("creation,termination"));
    assert!(opts.header("tus-max-size").unwrap().parse::<u64>().unwrap() > 0);

    // No version header: 412. No length: 400.
    server
        .req(
            &Req::post("/v1/uploads")
                .bearer(&token)
                .header("Upload-Length", "10"),
        )
        .expect(412);
    server
        .req(&tus(Req::post("/v1/uploads")).bearer(&token))
        .expect(400);

    let created = server.req(
        &tus(Req::post("/v1/uploads"))
            .bearer(&token)
            .header("Upload-Length", &len.to_string()),
    );
    created.expect(201);
    let location = created.header("location").unwrap().to_string();
    assert!(location.starts_with("/v1/uploads/"));
    let head = |server: &Server| -> u64 {
        let h = server.req(&tus(Req::new("HEAD", &location)).bearer(&token));
        h.expect(200);
        assert_eq!(h.header("upload-length"), Some(len.to_string().as_str()));
        h.header("upload-offset").unwrap().parse().unwrap()
    };
    assert_eq!(head(&server), 0);

    let patch = |offset: usize, chunk: &[u8]| -> Resp {
        server.req(
            &tus(Req::new("PATCH", &location))
                .bearer(&token)
                .header("Upload-Offset", &offset.to_string())
                .raw("application/offset+octet-stream", chunk.to_vec()),
        )
    };
    let first = len / 3;
    let r = patch(0, &bytes[..first]);
    r.expect(204);
    assert_eq!(r.header("upload-offset"), Some(first.to_string().as_str()));
    // A wrong offset is a conflict; the wrong content type is refused.
    patch(0, &bytes[..10]).expect_error(409, "offset_mismatch");
    server
        .req(
            &tus(Req::new("PATCH", &location))
                .bearer(&token)
                .header("Upload-Offset", &first.to_string())
                .raw("application/octet-stream", vec![1u8]),
        )
        .expect(415);

    // The connection breaks mid-chunk: what arrived is kept, HEAD says where to go on.
    let second = first + len / 3;
    broken_patch(
        &server,
        &location,
        &token,
        first as u64,
        &bytes[first..second],
        len - first,
    );
    // The server finishes writing what came after the client is gone: wait for it.
    let started = Instant::now();
    let mut resumed_at = head(&server) as usize;
    while resumed_at == first && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        resumed_at = head(&server) as usize;
    }
    assert!(
        (first..=second).contains(&resumed_at),
        "offset {resumed_at}"
    );
    assert_eq!(resumed_at, second, "every byte before the break is kept");

    let done = patch(resumed_at, &bytes[resumed_at..]);
    done.expect(204);
    assert_eq!(done.header("upload-offset"), Some(len.to_string().as_str()));
    let id: u64 = done.header("nova-media-id").unwrap().parse().unwrap();
    // The upload is over; the media is like any other.
    server
        .req(&tus(Req::new("HEAD", &location)).bearer(&token))
        .expect(404);
    let media = wait_done(&server, &token, id);
    assert_eq!(media.str("media.state"), "ready", "{}", media.text());
    assert_eq!(num(media.json().get("media").unwrap(), "bytes"), len as u64);
    // A compliant 360p source: its rung is the source's own stream, copied.
    let r = rendition(&media, "360p.mp4");
    let got = server.req(&Req::get(&url(r)));
    got.expect(200);
    std::fs::write(d.join("copy.mp4"), &got.body).unwrap();
    assert_eq!(
        ffprobe(&d.join("copy.mp4"), "v:0", "stream=codec_name,width,height"),
        "h264,640,360"
    );

    // Termination: another upload deleted; its part file goes.
    let other = server.req(
        &tus(Req::post("/v1/uploads"))
            .bearer(&token)
            .header("Upload-Length", "1000"),
    );
    other.expect(201);
    let other_loc = other.header("location").unwrap().to_string();
    server
        .req(&tus(Req::new("DELETE", &other_loc)).bearer(&token))
        .expect(204);
    server
        .req(&tus(Req::new("HEAD", &other_loc)).bearer(&token))
        .expect(404);
    let parts: usize = std::fs::read_dir(server.launch().data_dir().join("media"))
        .unwrap()
        .flatten()
        .map(|s| {
            std::fs::read_dir(s.path().join("uploads"))
                .map(|d| d.count())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(parts, 0, "part files left");
    // Someone else's upload is not found.
    let theirs = server.login(&users[0].username, &users[0].password).access;
    let third = server.req(
        &tus(Req::post("/v1/uploads"))
            .bearer(&token)
            .header("Upload-Length", "1000"),
    );
    let third_loc = third.header("location").unwrap().to_string();
    server
        .req(&tus(Req::new("HEAD", &third_loc)).bearer(&theirs))
        .expect(404);
    let _ = std::io::stdout().flush();
    let mut sink = Vec::new();
    let _ = std::io::empty().read_to_end(&mut sink);
}

/// The first attached media of a post or message view.
fn attached<'a>(resp: &'a Resp, at: &str) -> &'a Json {
    let list = resp.at(at).as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", resp.text());
    &list[0]
}

fn attached_url(media: &Json, name: &str) -> String {
    media
        .get("renditions")
        .and_then(|r| r.as_array())
        .unwrap()
        .iter()
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
        .map(url)
        .unwrap_or_else(|| panic!("no {name} in {media:?}"))
}

fn state(media: &Json) -> &str {
    media.get("state").and_then(|s| s.as_str()).unwrap()
}

#[test]
fn posts_and_messages_show_their_media_and_hand_signed_urls_to_their_readers() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("attached");
    let d = scratch_dir.path();
    // The uploader on shard 0; the follower and the stranger read from shard 1.
    let uploader = server.member_on_shard(0);
    let follower = server.member_on_shard(1);
    let stranger = server.member_on_shard(1);
    server.follow(follower.auth(), uploader.id());
    let token = uploader.token.clone();

    // A public post made while its photo is still processing shows it once it is ready.
    let public = media_id(&upload(&server, &token, &photo(d, "red"), ""));
    let post = server.post(
        "/v1/posts",
        uploader.auth(),
        simd_json::json!({"text": "public photo", "media_ids": [public.to_string()]}),
    );
    post.expect(201);
    let m = attached(&post, "post.media");
    assert_eq!(
        m.get("id").and_then(|v| v.as_str()),
        Some(public.to_string().as_str())
    );
    assert!(
        ["pending", "processing", "ready"].contains(&state(m)),
        "{m:?}"
    );
    let post_id = post.str("post.id").to_string();
    wait_done(&server, &token, public);
    let seen = server.get(&format!("/v1/posts/{post_id}"), stranger.auth());
    seen.expect(200);
    let m = attached(&seen, "post.media");
    assert_eq!(state(m), "ready");
    assert_eq!(m.get("kind").and_then(|v| v.as_str()), Some("image"));
    // Turned upright: 640x480 with orientation 6 is shown 480x640.
    assert_eq!((num(m, "width"), num(m, "height")), (480, 640));
    let thumb = m
        .get("renditions")
        .and_then(|r| r.as_array())
        .unwrap()
        .iter()
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some("thumb.jpg"))
        .unwrap();
    assert_eq!(
        thumb.get("mime").and_then(|v| v.as_str()),
        Some("image/jpeg")
    );
    assert_eq!((num(thumb, "width"), num(thumb, "height")), (240, 320));
    let plain = url(thumb);
    assert_eq!(plain, format!("/v1/media/{public}/thumb.jpg"));
    let got = server.req(&Req::get(&plain));
    got.expect(200);
    // HEAD: the same headers, no body.
    let head = server.req(&Req::new("HEAD", &plain));
    head.expect(200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(num(thumb, "bytes").to_string().as_str())
    );
    assert_eq!(head.header("etag"), got.header("etag"));
    let head = server.req(&Req::new("HEAD", &plain).header("range", "bytes=0-9"));
    head.expect(206);
    assert_eq!(head.header("content-length"), Some("10"));

    // A followers-only post: its media become private; the follower (another shard) gets
    // working signed URLs, in the post and in the author's list of posts.
    let hidden = media_id(&upload(&server, &token, &photo(d, "green"), ""));
    wait_done(&server, &token, hidden);
    let post = server.post(
        "/v1/posts",
        uploader.auth(),
        simd_json::json!({"text": "for followers", "visibility": "followers",
            "media_ids": [hidden.to_string()]}),
    );
    post.expect(201);
    let post_id = post.str("post.id").to_string();
    let seen = server.get(&format!("/v1/posts/{post_id}"), follower.auth());
    seen.expect(200);
    let signed = attached_url(attached(&seen, "post.media"), "display.jpg");
    assert!(signed.contains("sig="), "{signed}");
    server.on_each_shard(&Req::get(&signed), |r| {
        r.expect(200);
    });
    let listed = server.get(
        &format!("/v1/users/{}/posts", uploader.id()),
        follower.auth(),
    );
    listed.expect(200);
    let item = listed
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p.get("id").and_then(|v| v.as_str()) == Some(post_id.as_str()))
        .unwrap();
    let m = &item.get("media").and_then(|v| v.as_array()).unwrap()[0];
    server
        .req(&Req::get(&attached_url(m, "thumb.jpg")))
        .expect(200);
    // A non-follower gets neither the post, nor the media record, nor a working URL.
    server
        .get(&format!("/v1/posts/{post_id}"), stranger.auth())
        .expect(404);
    server
        .get(&format!("/v1/media/{hidden}"), stranger.auth())
        .expect(404);
    server
        .req(&Req::get(&format!("/v1/media/{hidden}/display.jpg")))
        .expect_error(403, "bad_signature");
    // The owner's own view agrees.
    let own = server.get(&format!("/v1/media/{hidden}"), Some(&token));
    assert_eq!(own.at("media.private").as_bool(), Some(true));

    // A message: its media are private and its members get signed URLs.
    let sent = media_id(&upload(&server, &token, &photo(d, "yellow"), ""));
    wait_done(&server, &token, sent);
    let conv = server.post(
        "/v1/conversations",
        uploader.auth(),
        simd_json::json!({"participants": [follower.id().to_string()]}),
    );
    conv.expect(201);
    let conv = conv.str("conversation.id").to_string();
    let msg = server.post(
        &format!("/v1/conversations/{conv}/messages"),
        uploader.auth(),
        simd_json::json!({"text": "a photo", "media_ids": [sent.to_string()]}),
    );
    msg.expect(201);
    let list = server.get(
        &format!("/v1/conversations/{conv}/messages"),
        follower.auth(),
    );
    list.expect(200);
    let m = &list.at("items").as_array().unwrap()[0]
        .get("media")
        .and_then(|v| v.as_array())
        .unwrap()[0];
    assert_eq!(state(m), "ready");
    let signed = attached_url(m, "thumb.jpg");
    assert!(signed.contains("sig="), "{signed}");
    server.req(&Req::get(&signed)).expect(200);
    server
        .req(&Req::get(&format!("/v1/media/{sent}/thumb.jpg")))
        .expect_error(403, "bad_signature");
    server
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            stranger.auth(),
        )
        .expect(404);
}

#[test]
fn two_patches_of_one_upload_at_once_the_second_is_refused() {
    let server = Server::start(&[]);
    let users = server.users_on_each_shard();
    // The uploader's upload lives on shard 1; the PATCHes arrive on any shard.
    let token = server.login(&users[1].username, &users[1].password).access;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let created = server.req(
        &tus(Req::post("/v1/uploads"))
            .bearer(&token)
            .header("Upload-Length", &(data.len() + 100_000).to_string()),
    );
    created.expect(201);
    let location = created.header("location").unwrap().to_string();
    // The first PATCH sends half its body and waits.
    let mut first = std::net::TcpStream::connect(server.addr()).unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    first.write_all(head.as_bytes()).unwrap();
    first.write_all(&data[..100_000]).unwrap();
    first.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A second PATCH at the same offset meanwhile, from each shard: 409 upload_busy.
    let other = vec![0xAAu8; 1000];
    server.on_each_shard(
        &tus(Req::new("PATCH", &location))
            .bearer(&token)
            .header("Upload-Offset", "0")
            .raw("application/offset+octet-stream", other),
        |r| {
            r.expect_error(409, "upload_busy");
        },
    );
    // The first one finishes; the upload holds its bytes, not the second's.
    first.write_all(&data[100_000..]).unwrap();
    first.flush().unwrap();
    let mut answer = Vec::new();
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = first.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 204"), "{answer}");
    assert!(
        answer.contains(&format!("upload-offset: {}", data.len())),
        "{answer}"
    );
    // The claim is released with the answer: the next PATCH goes on from there.
    let next = server.req(
        &tus(Req::new("PATCH", &location))
            .bearer(&token)
            .header("Upload-Offset", &data.len().to_string())
            .raw("application/offset+octet-stream", vec![7u8; 50_000]),
    );
    next.expect(204);
    assert_eq!(
        next.header("upload-offset"),
        Some((data.len() + 50_000).to_string().as_str())
    );

    // An upload deleted while a PATCH is under way: the bytes that come after go too.
    let doomed = server.req(
        &tus(Req::post("/v1/uploads"))
            .bearer(&token)
            .header("Upload-Length", &data.len().to_string()),
    );
    doomed.expect(201);
    let doomed = doomed.header("location").unwrap().to_string();
    let mut patch = std::net::TcpStream::connect(server.addr()).unwrap();
    let head = format!(
        "PATCH {doomed} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    patch.write_all(head.as_bytes()).unwrap();
    patch.write_all(&data[..100_000]).unwrap();
    patch.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server
        .req(&tus(Req::new("DELETE", &doomed)).bearer(&token))
        .expect(204);
    patch.write_all(&data[100_000..]).unwrap();
    patch.flush().unwrap();
    patch
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = patch.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed");
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 404"), "{answer}");
    let id = doomed.rsplit('/').next().unwrap();
    for shard in std::fs::read_dir(server.launch().data_dir().join("media"))
        .unwrap()
        .flatten()
    {
        let part = shard.path().join("uploads").join(id);
        assert!(!part.exists(), "{} left behind", part.display());
    }
}

/// An avatar every shard has seen as public, then attached to a followers-only post (which
/// makes it private): every shard shows it at once with signed URLs that load, not the
/// unsigned ones the server now refuses.
#[test]
fn an_avatar_made_private_is_signed_at_once_on_every_shard() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("private-avatar");
    let d = scratch_dir.path();
    for shard in [0, 1] {
        let owner = server.member_on_shard(shard);
        let viewer = server.member_on_shard(1 - shard);
        server.follow(viewer.auth(), owner.id()).expect(200);
        let image = media_id(&upload(&server, &owner.token, &photo(d, "blue"), ""));
        wait_done(&server, &owner.token, image);
        set_avatar(&server, &owner, image.to_string().into()).expect(200);
        let post = server.new_post(&owner, "hello");
        let avatar_url = |r: &Resp| url(r.at("post.author.avatar.renditions.0"));
        let read = Req::get(&format!("/v1/posts/{post}")).bearer(&viewer.token);
        server.on_each_shard(&read, |r| {
            r.expect(200);
            assert!(!avatar_url(r).contains("sig="), "{:?}", r.json());
        });

        server
            .post(
                "/v1/posts",
                owner.auth(),
                simd_json::json!({
                    "text": "for followers",
                    "visibility": "followers",
                    "media_ids": [image.to_string()],
                }),
            )
            .expect(201);
        server.on_each_shard(&read, |r| {
            r.expect(200);
            let signed = avatar_url(r);
            assert!(signed.contains("sig="), "{signed}");
            server.req(&Req::get(&signed)).expect(200);
        });
    }
}

/// A private account's posts are for its followers, whatever their visibility: so are their
/// media. Those of posts made before the account turned private, and of posts made after.
#[test]
fn a_private_accounts_media_are_for_its_followers() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("private-account");
    let d = scratch_dir.path();
    for shard in [0, 1] {
        let owner = server.member_on_shard(shard);
        let follower = server.member_on_shard(1 - shard);
        let stranger = server.member_on_shard(1 - shard);
        server.follow(follower.auth(), owner.id()).expect(200);
        let post_with = |image: u64| {
            let post = server.post(
                "/v1/posts",
                owner.auth(),
                simd_json::json!({"text": "a photo", "media_ids": [image.to_string()]}),
            );
            post.expect(201);
            post.str("post.id").to_string()
        };
        let before = media_id(&upload(&server, &owner.token, &photo(d, "red"), ""));
        wait_done(&server, &owner.token, before);
        let early = post_with(before);
        server
            .req(&Req::get(&format!("/v1/media/{before}/thumb.jpg")))
            .expect(200);

        server.set_private(&owner, true);
        let after = media_id(&upload(&server, &owner.token, &photo(d, "green"), ""));
        wait_done(&server, &owner.token, after);
        let late = post_with(after);

        for (image, post) in [(before, &early), (after, &late)] {
            server
                .get(&format!("/v1/media/{image}"), stranger.auth())
                .expect(404);
            server.on_each_shard(&Req::get(&format!("/v1/media/{image}/thumb.jpg")), |r| {
                r.expect_error(403, "bad_signature");
            });
            let own = server.get(&format!("/v1/media/{image}"), owner.auth());
            assert_eq!(own.at("media.private").as_bool(), Some(true));
            let read = Req::get(&format!("/v1/posts/{post}")).bearer(&follower.token);
            server.on_each_shard(&read, |r| {
                r.expect(200);
                let signed = attached_url(attached(r, "post.media"), "thumb.jpg");
                assert!(signed.contains("sig="), "{signed}");
                server.req(&Req::get(&signed)).expect(200);
            });
        }
    }
}

/// `PATCH /v1/me/profile` with `avatar_media_id` as `owner`; the answer.
fn set_avatar(server: &Server, owner: &Member, avatar: Json) -> Resp {
    server.call(
        "PATCH",
        "/v1/me/profile",
        owner.auth(),
        Some(simd_json::json!({ "avatar_media_id": avatar })),
    )
}

/// The `avatar` of `id`'s profile as `viewer` sees it.
fn avatar_of(server: &Server, viewer: &Member, id: u64) -> Json {
    let resp = server.get(&format!("/v1/users/{id}"), viewer.auth());
    resp.expect(200);
    resp.at("user.avatar").clone()
}

#[test]
fn an_avatar_is_one_of_the_users_own_images() {
    let mut server = Server::start(&[]);
    let scratch_dir = scratch("avatar");
    let d = scratch_dir.path();
    for shard in [0, 1] {
        // The owner on one shard, the viewer on the other.
        let owner = server.member_on_shard(shard);
        let viewer = server.member_on_shard(1 - shard);
        assert!(avatar_of(&server, &viewer, owner.id()).is_null());
        let image = media_id(&upload(&server, &owner.token, &photo(d, "red"), ""));
        wait_done(&server, &owner.token, image);

        let resp = set_avatar(&server, &owner, image.to_string().into());
        resp.expect(200);
        assert_eq!(resp.str("user.avatar.id"), image.to_string());
        let seen = avatar_of(&server, &viewer, owner.id());
        assert_eq!(state(&seen), "ready", "{seen:?}");
        assert_eq!(seen.get("kind").and_then(|v| v.as_str()), Some("image"));
        // Its renditions are public: anyone fetches them without a token or a signature.
        let thumb = attached_url(&seen, "thumb.jpg");
        assert!(!thumb.contains("sig="), "{thumb}");
        server.on_each_shard(&Req::get(&thumb), |r| {
            r.expect(200);
        });
        // Other edits leave it alone.
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                owner.auth(),
                Some(simd_json::json!({"bio": "with a face"})),
            )
            .expect(200);
        assert_eq!(
            avatar_of(&server, &viewer, owner.id()).get("id"),
            seen.get("id")
        );

        // Not the owner's own image, or no image at all: refused, and nothing changes.
        let others = media_id(&upload(&server, &viewer.token, &photo(d, "blue"), ""));
        for bad in [
            others.to_string(),
            "0".to_string(),
            "abc".to_string(),
            ((1u64 << 22) | 7).to_string(),
            (image + 1).to_string(),
        ] {
            set_avatar(&server, &owner, bad.into()).expect_error(422, "invalid_avatar");
        }
        set_avatar(&server, &owner, simd_json::json!(5)).expect_error(422, "invalid_body");
        assert_eq!(
            avatar_of(&server, &viewer, owner.id()).get("id"),
            seen.get("id")
        );

        // Null removes it; a deleted image leaves none.
        set_avatar(&server, &owner, Json::Static(simd_json::StaticNode::Null)).expect(200);
        assert!(avatar_of(&server, &viewer, owner.id()).is_null());
        set_avatar(&server, &owner, image.to_string().into()).expect(200);
        server
            .delete(&format!("/v1/media/{image}"), owner.auth())
            .expect(204);
        assert!(avatar_of(&server, &owner, owner.id()).is_null());
    }

    // It survives a restart.
    let owner = server.member_on_shard(1);
    let image = media_id(&upload(&server, &owner.token, &photo(d, "green"), ""));
    wait_done(&server, &owner.token, image);
    set_avatar(&server, &owner, image.to_string().into()).expect(200);
    server.restart();
    let token = server.login(owner.name(), &owner.user.password).access;
    let resp = server.get(&format!("/v1/users/{}", owner.id()), Some(&token));
    resp.expect(200);
    assert_eq!(resp.str("user.avatar.id"), image.to_string());
}

/// Every brief view of a user (post authors, comment authors, lists, conversations and
/// message senders) shows its display name and avatar as they are now, also on posts,
/// comments and messages written before either changed.
#[test]
fn brief_views_show_the_users_name_and_avatar_as_they_are_now() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("briefs");
    let d = scratch_dir.path();
    for shard in [0, 1] {
        // The owner on one shard, the viewer on the other.
        let owner = server.member_on_shard(shard);
        let viewer = server.member_on_shard(1 - shard);
        server.follow(viewer.auth(), owner.id()).expect(200);
        let post = server.new_post(&owner, "before the change");
        let theirs = server.new_post(&viewer, "a post to comment on");
        server
            .post(
                &format!("/v1/posts/{theirs}/comments"),
                owner.auth(),
                simd_json::json!({"text": "a comment"}),
            )
            .expect(201);
        let conv = server.post(
            "/v1/conversations",
            viewer.auth(),
            simd_json::json!({"participants": [owner.id().to_string()]}),
        );
        conv.expect(201);
        let conv = conv.str("conversation.id").to_string();
        server
            .post(
                &format!("/v1/conversations/{conv}/messages"),
                owner.auth(),
                simd_json::json!({"text": "a message"}),
            )
            .expect(201);

        // Before: the names as registered, and no avatar (the key is left out). Each shard
        // has now seen (and keeps) the owner's brief.
        server.on_each_shard(
            &Req::get(&format!("/v1/posts/{post}")).bearer(&viewer.token),
            |r| {
                r.expect(200);
                assert!(
                    at(r.json(), "post.author.avatar").is_none(),
                    "{:?}",
                    r.json()
                );
            },
        );

        let image = media_id(&upload(&server, &owner.token, &photo(d, "red"), ""));
        wait_done(&server, &owner.token, image);
        set_avatar(&server, &owner, image.to_string().into()).expect(200);
        let name = format!("Renamed {shard}");
        server
            .call(
                "PATCH",
                "/v1/me/profile",
                owner.auth(),
                Some(simd_json::json!({ "display_name": name.as_str() })),
            )
            .expect(200);

        // Every brief of the owner the viewer reads, from either shard.
        let briefs = [
            (format!("/v1/posts/{post}"), "post.author"),
            // The viewer's own post comes first.
            ("/v1/timelines/home".to_string(), "items.1.author"),
            (format!("/v1/users/{}/posts", owner.id()), "items.0.author"),
            (format!("/v1/posts/{theirs}/comments"), "items.0.author"),
            (format!("/v1/users/{}/following", viewer.id()), "items.0"),
            (format!("/v1/users/{}/followers", owner.id()), "items.0"),
            (
                "/v1/conversations".to_string(),
                "items.0.last_message.sender",
            ),
            (
                format!("/v1/conversations/{conv}/messages"),
                "items.0.sender",
            ),
        ];
        for (path, brief) in &briefs {
            server.on_each_shard(&Req::get(path).bearer(&viewer.token), |r| {
                r.expect(200);
                let seen = r.at(brief);
                if !path.ends_with("/followers") {
                    assert_eq!(
                        seen.get("id").and_then(|v| v.as_str()),
                        Some(&*owner.id().to_string()),
                        "{path}: {:?}",
                        r.json()
                    );
                    assert_eq!(
                        seen.get("display_name").and_then(|v| v.as_str()),
                        Some(name.as_str()),
                        "{path}: {:?}",
                        r.json()
                    );
                    let avatar = seen
                        .get("avatar")
                        .unwrap_or_else(|| panic!("{path}: {:?}", r.json()));
                    assert_eq!(
                        avatar.get("id").and_then(|v| v.as_str()),
                        Some(&*image.to_string()),
                        "{path}"
                    );
                    assert_eq!(state(avatar), "ready", "{path}");
                } else {
                    // The owner's follower: the viewer, who has no avatar.
                    assert_eq!(
                        seen.get("id").and_then(|v| v.as_str()),
                        Some(&*viewer.id().to_string()),
                        "{path}: {:?}",
                        r.json()
                    );
                    assert!(seen.get("avatar").is_none(), "{path}: {:?}", r.json());
                }
            });
        }
        // The conversation lists both participants as they are now.
        let convs = server.get("/v1/conversations", viewer.auth());
        convs.expect(200);
        let participants = convs.at("items.0.participants").as_array().unwrap();
        for p in participants {
            let has_avatar = p.get("avatar").is_some();
            let is_owner = p.get("id").and_then(|v| v.as_str()) == Some(&*owner.id().to_string());
            assert_eq!(has_avatar, is_owner, "{:?}", convs.json());
        }
        // The owner leaves the conversation: its last message still shows it as it is now.
        server
            .delete(
                &format!("/v1/conversations/{conv}/membership"),
                owner.auth(),
            )
            .expect(204);
        for path in [
            "/v1/conversations".to_string(),
            format!("/v1/conversations/{conv}"),
        ] {
            let field = if path.ends_with("/conversations") {
                "items.0"
            } else {
                "conversation"
            };
            server.on_each_shard(&Req::get(&path).bearer(&viewer.token), |r| {
                r.expect(200);
                let conversation = r.at(field);
                assert_eq!(
                    at(conversation, "participants")
                        .and_then(|p| p.as_array())
                        .map(Vec::len),
                    Some(1),
                    "{path}: {:?}",
                    r.json()
                );
                let sender = at(conversation, "last_message.sender").unwrap();
                assert_eq!(
                    sender.get("display_name").and_then(|v| v.as_str()),
                    Some(name.as_str()),
                    "{path}: {:?}",
                    r.json()
                );
                assert!(sender.get("avatar").is_some(), "{path}: {:?}", r.json());
            });
        }
        // The image deleted, no brief shows it.
        server
            .delete(&format!("/v1/media/{image}"), owner.auth())
            .expect(204);
        for (path, brief) in &briefs {
            server.on_each_shard(&Req::get(path).bearer(&viewer.token), |r| {
                r.expect(200);
                assert!(
                    r.at(brief).get("avatar").is_none(),
                    "{path}: {:?}",
                    r.json()
                );
            });
        }
    }
}
