//! The media crate on real files made by the `ffmpeg` command: probing from bytes, limits
//! before decoding, upright metadata-free image renditions, the video ladder (codecs, sizes,
//! durations, faststart, pass-through of a compliant source), the poster, and refusals.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nova_media::{inspect, process, Kind, Limits, MediaError, Processed};

/// A scratch directory, removed when the returned guard drops (also when the test fails).
fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nova-media-test-{name}-"))
        .tempdir()
        .unwrap()
}

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

/// ffprobe's answer for one stream entry, e.g. `codec_name`.
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

/// Decodes a picture to RGB24 with the ffmpeg command: (width, height, pixels).
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

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 200 && p[1] < 60 && p[2] < 60
}

fn is_blue(p: [u8; 3]) -> bool {
    p[2] > 200 && p[0] < 60 && p[1] < 60
}

/// A little-endian EXIF block (APP1 payload) with Orientation and a GPS IFD.
pub fn exif_app1(orientation: u16) -> Vec<u8> {
    let mut t = b"II*\0\x08\0\0\0".to_vec();
    // IFD0: 2 entries (Orientation, GPS IFD pointer), next IFD 0.
    t.extend_from_slice(&2u16.to_le_bytes());
    t.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]);
    t.extend_from_slice(&orientation.to_le_bytes());
    t.extend_from_slice(&[0, 0]);
    let gps_at: u32 = 8 + 2 + 24 + 4;
    t.extend_from_slice(&[0x25, 0x88, 4, 0, 1, 0, 0, 0]);
    t.extend_from_slice(&gps_at.to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    // GPS IFD: GPSLatitudeRef "N", GPSLongitudeRef "E" (ASCII, inline).
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

/// A 640x480 JPEG, left half red and right half blue, with EXIF orientation and GPS.
fn photo(d: &Path, orientation: u16) -> PathBuf {
    let plain = d.join("plain.jpg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=red:s=640x480",
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
    out.extend_from_slice(&exif_app1(orientation));
    out.extend_from_slice(&bytes[2..]);
    let path = d.join("photo.jpg");
    std::fs::write(&path, out).unwrap();
    path
}

fn run(path: &Path, out: &Path, limits: &Limits) -> Result<Processed, MediaError> {
    let probe = inspect(path, limits)?;
    process(path, &probe, out, limits)
}

fn named<'a>(p: &'a Processed, name: &str) -> &'a nova_media::Rendition {
    p.renditions
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", p.renditions))
}

/// JPEG segments markers before the scan: there must be no APP1 (EXIF/XMP) or COM.
fn markers(jpeg: &[u8]) -> Vec<u8> {
    let mut at = 2;
    let mut out = Vec::new();
    while at + 4 <= jpeg.len() && jpeg[at] == 0xFF {
        let m = jpeg[at + 1];
        out.push(m);
        if m == 0xDA {
            break;
        }
        let len = u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
        at += 2 + len;
    }
    out
}

#[test]
fn photo_is_turned_upright_and_stripped() {
    let scratch_dir = dir("photo");
    let d = scratch_dir.path();
    let src = photo(d, 6);
    let limits = Limits::default();
    let probe = inspect(&src, &limits).unwrap();
    assert_eq!(probe.kind, Kind::Image);
    assert_eq!((probe.width, probe.height, probe.rotation), (640, 480, 90));
    assert_eq!(probe.display_size(), (480, 640));
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let done = process(&src, &probe, &out, &limits).unwrap();
    let thumb = named(&done, "thumb.jpg");
    let display = named(&done, "display.jpg");
    assert_eq!((thumb.width, thumb.height), (240, 320));
    // Never enlarged: the source is smaller than 1280.
    assert_eq!((display.width, display.height), (480, 640));
    for r in [thumb, display] {
        let bytes = std::fs::read(&r.path).unwrap();
        assert_eq!(bytes.len() as u64, r.bytes);
        let m = markers(&bytes);
        assert!(
            !m.contains(&0xE1) && !m.contains(&0xFE),
            "metadata segments {m:x?}"
        );
        assert!(!bytes.windows(4).any(|w| w == b"Exif"), "EXIF left");
        let img = rgb(&r.path);
        assert_eq!((img.0, img.1), (r.width, r.height));
        // Turned a quarter clockwise: the left (red) half is now on top.
        assert!(
            is_red(pixel(&img, img.0 / 2, 5)),
            "{:?}",
            pixel(&img, img.0 / 2, 5)
        );
        assert!(is_blue(pixel(&img, img.0 / 2, img.1 - 5)));
        assert_eq!(ffprobe(&r.path, "v:0", "stream_tags"), "");
    }
    let hash = done.blurhash.unwrap();
    assert_eq!(hash.len(), 28, "{hash}");
}

#[test]
fn large_png_gets_both_sizes_and_webp_gif_are_taken() {
    let scratch_dir = dir("png");
    let d = scratch_dir.path();
    let png = d.join("big.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=4000x3000",
        "-frames:v",
        "1",
        png.to_str().unwrap(),
    ]);
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let done = run(&png, &out, &Limits::default()).unwrap();
    assert_eq!(
        (
            named(&done, "display.jpg").width,
            named(&done, "display.jpg").height
        ),
        (1280, 960)
    );
    assert_eq!(
        (
            named(&done, "thumb.jpg").width,
            named(&done, "thumb.jpg").height
        ),
        (320, 240)
    );
    assert_eq!(
        ffprobe(&named(&done, "thumb.jpg").path, "v:0", "stream=codec_name"),
        "mjpeg"
    );

    let webp = d.join("a.webp");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=300x200",
        "-frames:v",
        "1",
        webp.to_str().unwrap(),
    ]);
    let done = run(&webp, &out, &Limits::default()).unwrap();
    assert_eq!(
        (
            named(&done, "thumb.jpg").width,
            named(&done, "thumb.jpg").height
        ),
        (300, 200)
    );

    let gif = d.join("a.gif");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=200x100:r=10",
        "-t",
        "1",
        gif.to_str().unwrap(),
    ]);
    let probe = inspect(&gif, &Limits::default()).unwrap();
    assert_eq!(
        (probe.kind, probe.width, probe.height),
        (Kind::Image, 200, 100)
    );
    let done = process(&gif, &probe, &out, &Limits::default()).unwrap();
    assert_eq!(named(&done, "display.jpg").width, 200);
}

#[test]
fn refusals_before_decoding() {
    let scratch_dir = dir("refuse");
    let d = scratch_dir.path();
    let strict = Limits {
        pixels_max: 1_000_000,
        ..Limits::default()
    };
    // A PNG that claims 50,000 x 50,000: refused from its header.
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    bomb.extend_from_slice(&50_000u32.to_be_bytes());
    bomb.extend_from_slice(&50_000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    bomb.extend_from_slice(&[0u8; 100]);
    let path = d.join("bomb.png");
    std::fs::write(&path, &bomb).unwrap();
    match inspect(&path, &Limits::default()) {
        Err(MediaError::Limit {
            code: "too_many_pixels",
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // A real image over a smaller pixel limit.
    let png = d.join("b.png");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "color=white:s=1200x1000",
        "-frames:v",
        "1",
        png.to_str().unwrap(),
    ]);
    assert!(matches!(
        inspect(&png, &strict),
        Err(MediaError::Limit {
            code: "too_many_pixels",
            ..
        })
    ));
    // Garbage, text, truncated headers, audio only: refused.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("junk.bin", b"this is not a picture at all".to_vec()),
        ("empty.jpg", Vec::new()),
        (
            "cut.jpg",
            std::fs::read(photo(d, 1)).unwrap()[..300].to_vec(),
        ),
        ("cut.png", std::fs::read(&png).unwrap()[..20].to_vec()),
    ];
    for (name, bytes) in cases {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        let r = inspect(&p, &Limits::default());
        assert!(
            matches!(
                r,
                Err(MediaError::Unreadable(_)) | Err(MediaError::Unsupported(_))
            ),
            "{name}: {r:?}"
        );
    }
    let mp3 = d.join("a.mp3");
    ffmpeg(&["-f", "lavfi", "-i", "sine=d=1", mp3.to_str().unwrap()]);
    assert!(matches!(
        inspect(&mp3, &Limits::default()),
        Err(MediaError::Unsupported(_))
    ));
    // A PNG header glued onto JPEG data: the header and the data disagree.
    let mut liar = std::fs::read(&png).unwrap()[..33].to_vec();
    liar.extend_from_slice(&std::fs::read(photo(d, 1)).unwrap());
    let p = d.join("liar.png");
    std::fs::write(&p, liar).unwrap();
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(run(&p, &out, &Limits::default()).is_err());
}

/// A test pattern with a tone: `secs` long at `w`x`h`, encoded with `vcodec`/`pix`.
fn clip(d: &Path, name: &str, w: u32, h: u32, secs: u32, extra: &[&str]) -> PathBuf {
    let path = d.join(name);
    let size = format!("testsrc2=s={w}x{h}:r=30:d={secs}");
    let tone = format!("sine=f=440:d={secs}");
    let mut args = vec!["-f", "lavfi", "-i", &size, "-f", "lavfi", "-i", &tone];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    ffmpeg(&args);
    path
}

fn moov_before_mdat(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    let find = |tag: &[u8]| b.windows(4).position(|w| w == tag);
    matches!((find(b"moov"), find(b"mdat")), (Some(m), Some(d)) if m < d)
}

#[test]
fn video_ladder_poster_and_codecs() {
    let scratch_dir = dir("video");
    let d = scratch_dir.path();
    // Not compliant (yuv444p, MP3 sound, Matroska): every rung is encoded.
    let src = clip(
        d,
        "src.mkv",
        1280,
        720,
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
    let limits = Limits::default();
    let probe = inspect(&src, &limits).unwrap();
    assert_eq!(probe.kind, Kind::Video);
    assert_eq!(probe.audio_codec.as_deref(), Some("mp3"));
    assert!(!nova_media::compliant(&probe));
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let done = process(&src, &probe, &out, &limits).unwrap();
    let names: Vec<&str> = done.renditions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["360p.mp4", "720p.mp4", "poster.jpg"]);
    for (name, w, h) in [("360p.mp4", 640, 360), ("720p.mp4", 1280, 720)] {
        let r = named(&done, name);
        assert_eq!((r.width, r.height), (w, h));
        assert_eq!(
            ffprobe(&r.path, "v:0", "stream=codec_name,pix_fmt,width,height"),
            format!("h264,{w},{h},yuv420p")
        );
        assert_eq!(
            ffprobe(&r.path, "a:0", "stream=codec_name,sample_rate,channels"),
            "aac,48000,2"
        );
        let dur: f64 = ffprobe(&r.path, "v:0", "stream=duration").parse().unwrap();
        assert!((dur - 2.0).abs() <= 1.0 / 30.0 + 1e-6, "{name} lasts {dur}");
        assert!(moov_before_mdat(&r.path), "{name} is not faststart");
    }
    let poster = named(&done, "poster.jpg");
    assert_eq!((poster.width, poster.height), (1280, 720));
    assert!(done.blurhash.is_some());
}

#[test]
fn compliant_source_is_copied_and_rotation_applied() {
    let scratch_dir = dir("copy");
    let d = scratch_dir.path();
    let src = clip(
        d,
        "src.mp4",
        640,
        360,
        1,
        &["-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"],
    );
    let limits = Limits::default();
    let probe = inspect(&src, &limits).unwrap();
    assert!(nova_media::compliant(&probe), "{probe:?}");
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let done = process(&src, &probe, &out, &limits).unwrap();
    let r = named(&done, "360p.mp4");
    // Same video packets as the source: the stream was copied, not encoded again.
    let md5 = |p: &Path| {
        let o = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(p)
            .args(["-map", "0:v", "-c", "copy", "-f", "md5", "-"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert_eq!(md5(&src), md5(&r.path));
    assert!(moov_before_mdat(&r.path));

    // A phone video held upright: stored 640x360 with a display matrix of 90 degrees.
    let rotated = d.join("rot.mp4");
    ffmpeg(&[
        "-i",
        src.to_str().unwrap(),
        "-c",
        "copy",
        "-metadata:s:v",
        "rotate=90",
        rotated.to_str().unwrap(),
    ]);
    let probe = inspect(&rotated, &limits).unwrap();
    // ffmpeg 5.1 stores `rotate=90` as a matrix that turns a quarter counter-clockwise.
    assert_eq!(probe.rotation, 270);
    assert!(!nova_media::compliant(&probe));
    let out = d.join("out-rot");
    std::fs::create_dir_all(&out).unwrap();
    let done = process(&rotated, &probe, &out, &limits).unwrap();
    let r = named(&done, "360p.mp4");
    assert_eq!((r.width, r.height), (360, 640));
    assert_eq!(ffprobe(&r.path, "v:0", "stream=width,height"), "360,640");
    let poster = named(&done, "poster.jpg");
    assert_eq!((poster.width, poster.height), (360, 640));
    // Turned the same way as the ffmpeg command turns it (it rotates by default).
    let reference = d.join("ref.png");
    ffmpeg(&[
        "-i",
        rotated.to_str().unwrap(),
        "-frames:v",
        "1",
        reference.to_str().unwrap(),
    ]);
    let (ours, theirs) = (rgb(&poster.path), rgb(&reference));
    assert_eq!((theirs.0, theirs.1), (360, 640));
    for (x, y) in [(40, 40), (320, 40), (40, 600), (320, 600), (180, 320)] {
        let (a, b) = (pixel(&ours, x, y), pixel(&theirs, x, y));
        let close = a
            .iter()
            .zip(b)
            .all(|(p, q)| (i32::from(*p) - i32::from(q)).abs() < 60);
        assert!(close, "at ({x},{y}): {a:?} vs {b:?}");
    }
}

#[test]
fn video_limits_and_time_budget() {
    let scratch_dir = dir("vlimits");
    let d = scratch_dir.path();
    let src = clip(
        d,
        "src.mp4",
        320,
        240,
        3,
        &["-c:v", "libx264", "-c:a", "aac"],
    );
    let short = Limits {
        duration_ms_max: 2_000,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(&src, &short),
        Err(MediaError::Limit {
            code: "too_long",
            ..
        })
    ));
    let slow = Limits {
        frame_rate_max: 25.0,
        ..Limits::default()
    };
    assert!(matches!(
        inspect(&src, &slow),
        Err(MediaError::Limit {
            code: "frame_rate_too_high",
            ..
        })
    ));
    let hurried = Limits {
        time_budget_ms: 0,
        ..Limits::default()
    };
    let probe = inspect(&src, &hurried).unwrap();
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    assert!(matches!(
        process(&src, &probe, &out, &hurried),
        Err(MediaError::TimedOut { .. })
    ));
    // Truncated: the first half of a file whose index is at its end.
    let bytes = std::fs::read(&src).unwrap();
    let cut = d.join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(run(&cut, &out, &Limits::default()).is_err());
}
