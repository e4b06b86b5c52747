//! Proves over HTTP against the real `nova` process (2 shards) that an uploaded picture's
//! embedded ICC profile is applied: renditions served from either shard are sRGB with the
//! converted colours and carry no profile or EXIF; an untagged picture keeps its colours;
//! a picture with a damaged profile still becomes ready, with its colours taken as sRGB.
//! Uploaders on both shards.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Two 64x64 patches: an orange and a green.
const PATCHES: [[u8; 3]; 2] = [[200, 100, 50], [60, 180, 90]];
/// JPEG at -q:v 3 and qcms's rounding move a flat patch by a few levels.
const TOLERANCE: u8 = 6;

/// A scratch directory, removed when the returned guard drops (also when the test fails).
fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nova-colour-http-{name}-"))
        .tempdir()
        .unwrap()
}

/// The patches as a PNG, encoded by the ffmpeg command.
fn patches_png(d: &Path) -> Vec<u8> {
    let mut raw = Vec::new();
    for _ in 0..64 {
        for x in 0..128 {
            raw.extend_from_slice(&PATCHES[x / 64]);
        }
    }
    let src = d.join("patches.rgb");
    std::fs::write(&src, raw).unwrap();
    let png = d.join("patches.png");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "128x64", "-i"])
        .arg(&src)
        .args(["-frames:v", "1"])
        .arg(&png)
        .output()
        .expect("the ffmpeg command (Debian package ffmpeg) is needed by these tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(png).unwrap()
}

fn s15(v: f64) -> [u8; 4] {
    ((v * 65536.0).round() as i32).to_be_bytes()
}

/// A matrix/TRC display profile whose red is sRGB's green, green sRGB's blue and blue sRGB's
/// red (sRGB's D50 colorants, rotated), with the sRGB curve: (r, g, b) in it is (b, r, g)
/// in sRGB.
fn rotated_profile() -> Vec<u8> {
    let srgb = [
        [0.436_074_7, 0.222_504_5, 0.013_932_2],
        [0.385_064_9, 0.716_878_6, 0.097_104_5],
        [0.143_080_4, 0.060_616_9, 0.714_173_3],
    ];
    let xyz = |v: [f64; 3]| {
        let mut t = b"XYZ \0\0\0\0".to_vec();
        v.iter().for_each(|c| t.extend_from_slice(&s15(*c)));
        t
    };
    let mut curve = b"para\0\0\0\0\0\x03\0\0".to_vec();
    for v in [2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045] {
        curve.extend_from_slice(&s15(v));
    }
    // wtpt, rXYZ (sRGB green), gXYZ (sRGB blue), bXYZ (sRGB red), then one curve for all.
    let data = [
        xyz([0.9642, 1.0, 0.8249]),
        xyz(srgb[1]),
        xyz(srgb[2]),
        xyz(srgb[0]),
        curve,
    ];
    let sigs: [&[u8; 4]; 7] = [
        b"wtpt", b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC",
    ];
    let table = 4 + 12 * sigs.len();
    let mut offsets = Vec::new();
    let mut at = 128 + table;
    for d in &data {
        offsets.push((at, d.len()));
        at += d.len();
    }
    let mut p = Vec::new();
    p.extend_from_slice(&(at as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 4, 0x30, 0, 0]);
    p.extend_from_slice(b"mntrRGB XYZ ");
    p.extend_from_slice(&[0; 12]);
    p.extend_from_slice(b"acsp");
    p.extend_from_slice(&[0; 28]);
    for v in [0.9642, 1.0, 0.8249] {
        p.extend_from_slice(&s15(v));
    }
    p.extend_from_slice(&[0; 48]);
    p.extend_from_slice(&(sigs.len() as u32).to_be_bytes());
    for (i, sig) in sigs.iter().enumerate() {
        let (at, len) = offsets[i.min(4)];
        p.extend_from_slice(*sig);
        p.extend_from_slice(&(at as u32).to_be_bytes());
        p.extend_from_slice(&(len as u32).to_be_bytes());
    }
    data.iter().for_each(|d| p.extend_from_slice(d));
    p
}

/// zlib with one stored deflate block (profiles here are under 64 KiB).
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut z = vec![0x78, 0x01, 1];
    z.extend_from_slice(&(data.len() as u16).to_le_bytes());
    z.extend_from_slice(&(!(data.len() as u16)).to_le_bytes());
    z.extend_from_slice(data);
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    z
}

/// PNG's CRC-32 (bit by bit: a few hundred bytes here).
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// `png` with an iCCP chunk holding `profile`, right after IHDR.
fn with_iccp(png: &[u8], profile: &[u8]) -> Vec<u8> {
    let mut data = b"icc\0\0".to_vec();
    data.extend_from_slice(&zlib_stored(profile));
    let ihdr_end = 8 + 8 + 13 + 4;
    let mut out = png[..ihdr_end].to_vec();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(b"iCCP");
    out.extend_from_slice(&data);
    let typed: Vec<u8> = b"iCCP".iter().chain(&data).copied().collect();
    out.extend_from_slice(&crc32(&typed).to_be_bytes());
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

fn upload_and_wait(server: &Server, token: &str, bytes: &[u8]) -> Resp {
    let created = server.req(
        &Req::post("/v1/media")
            .bearer(token)
            .raw("application/octet-stream", bytes.to_vec())
            .timeout(Duration::from_secs(60)),
    );
    created.expect(202);
    let id: u64 = created.str("media.id").parse().unwrap();
    let started = Instant::now();
    loop {
        let resp = server.get(&format!("/v1/media/{id}"), Some(token));
        resp.expect(200);
        if ["ready", "failed"].contains(&resp.str("media.state")) {
            return resp;
        }
        assert!(started.elapsed() < READY_TIMEOUT, "media {id} not done");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn url_of(resp: &Resp, name: &str) -> String {
    let r = resp
        .at("media.renditions")
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r.get("name").and_then(|n| n.as_str()) == Some(name))
        .unwrap_or_else(|| panic!("no {name}: {}", resp.text()));
    r.get("url").and_then(|u| u.as_str()).unwrap().to_string()
}

/// The centre colours of the two patches of a downloaded JPEG, decoded by the ffmpeg
/// command (which applies no profile).
fn patch_colours(d: &Path, jpeg: &[u8]) -> [[u8; 3]; 2] {
    let path = d.join("got.jpg");
    std::fs::write(&path, jpeg).unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    // 128x64 is under both rendition sizes: never enlarged, the same size.
    let px = |x: usize, y: usize| {
        let i = (y * 128 + x) * 3;
        [out.stdout[i], out.stdout[i + 1], out.stdout[i + 2]]
    };
    [px(32, 32), px(96, 32)]
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= TOLERANCE)
}

/// Fetches `name` of `media` from each shard and checks its colours and that it has no
/// APP1/APP2 (EXIF, XMP, ICC) segment.
fn check_served(server: &Server, d: &Path, media: &Resp, want: [[u8; 3]; 2]) {
    for name in ["thumb.jpg", "display.jpg"] {
        server.on_each_shard(&Req::get(&url_of(media, name)), |resp| {
            resp.expect(200);
            let body = &resp.body;
            for needle in [&b"ICC_PROFILE"[..], b"acsp", b"Exif"] {
                assert!(!body.windows(needle.len()).any(|w| w == needle), "{name}");
            }
            assert!(
                !body
                    .windows(2)
                    .any(|w| w == [0xFF, 0xE2] || w == [0xFF, 0xE1]),
                "{name} has an APP1/APP2 marker"
            );
            let got = patch_colours(d, body);
            for i in 0..2 {
                assert!(close(got[i], want[i]), "{name}: {got:?} want {want:?}");
            }
        });
    }
}

#[test]
fn embedded_profiles_are_applied_and_removed_across_shards() {
    let server = Server::start(&[]);
    let scratch_dir = scratch("colour");
    let d = scratch_dir.path();
    let png = patches_png(d);
    let rotated = PATCHES.map(|c| [c[2], c[0], c[1]]);
    let mut broken = rotated_profile();
    broken[200..].fill(0xEE);

    for user in server.users_on_each_shard() {
        let token = server.login(&user.username, &user.password).access;
        let tagged = upload_and_wait(&server, &token, &with_iccp(&png, &rotated_profile()));
        assert_eq!(tagged.str("media.state"), "ready", "{}", tagged.text());
        check_served(&server, d, &tagged, rotated);

        let plain = upload_and_wait(&server, &token, &png);
        assert_eq!(plain.str("media.state"), "ready", "{}", plain.text());
        check_served(&server, d, &plain, PATCHES);
        // The blurhash is of the converted pixels.
        assert_ne!(
            tagged.at("media.metadata.blurhash").as_str(),
            plain.at("media.metadata.blurhash").as_str()
        );

        let damaged = upload_and_wait(&server, &token, &with_iccp(&png, &broken));
        assert_eq!(damaged.str("media.state"), "ready", "{}", damaged.text());
        check_served(&server, d, &damaged, PATCHES);
    }
    // The damaged profile is said in the log, with why.
    let started = Instant::now();
    while !server.stderr_text().contains("image ICC profile ignored") {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log line: {}",
            tail(&server.stderr_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server
        .stderr_text()
        .contains("damaged or unsupported ICC profile"));
}
