//! Colour: an image's embedded ICC profile (PNG iCCP, JPEG APP2, WebP ICCP) is applied, so
//! renditions are sRGB with no profile left in them; untagged and sRGB pictures come out
//! unchanged; a damaged, oversized or unusable profile still gives renditions, as sRGB.
//! Matrix/TRC (v4 parametric and v2 gamma curves) and v2 LUT profiles, RGB and grey.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use nova_media::{inspect, process, Colour, Limits, Processed};

/// A scratch directory, removed when the returned guard drops (also when the test fails).
fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nova-colour-test-{name}-"))
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

/// Decodes a picture to RGB24 with the ffmpeg command (which ignores ICC profiles, so this
/// is the naive copy of the pixels): (width, height, pixels).
fn rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=width,height", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    let size = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (w, h) = size.split_once(',').unwrap();
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .unwrap();
    (w.parse().unwrap(), h.parse().unwrap(), out.stdout)
}

// ---------------------------------------------------------------------------------------
// Test pictures: four 64x64 patches side by side, encoded by the ffmpeg command.

const PATCH: u32 = 64;
const PATCHES: [[u8; 3]; 4] = [
    [200, 100, 50],
    [60, 180, 90],
    [40, 90, 200],
    [128, 128, 128],
];

/// Raw RGB24 of the four patches.
fn patches_raw(d: &Path) -> PathBuf {
    let (w, h) = (PATCH * 4, PATCH);
    let mut raw = Vec::with_capacity((w * h * 3) as usize);
    for _ in 0..h {
        for x in 0..w {
            raw.extend_from_slice(&PATCHES[(x / PATCH) as usize]);
        }
    }
    let path = d.join("patches.rgb");
    std::fs::write(&path, raw).unwrap();
    path
}

/// The patches encoded as `name` (the extension picks the format) with `extra` options.
fn patches(d: &Path, name: &str, extra: &[&str]) -> Vec<u8> {
    let raw = patches_raw(d);
    let out = d.join(name);
    let size = format!("{}x{}", PATCH * 4, PATCH);
    let mut args = vec!["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", &size, "-i"];
    args.push(raw.to_str().unwrap());
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-frames:v", "1", out.to_str().unwrap()]);
    ffmpeg(&args);
    std::fs::read(out).unwrap()
}

/// The colour at the centre of patch `i` of a decoded picture whose width is 4 patches.
fn patch(img: &(u32, u32, Vec<u8>), i: u32) -> [u8; 3] {
    let (x, y) = (img.0 * (2 * i + 1) / 8, img.1 / 2);
    let at = ((y * img.0 + x) * 3) as usize;
    [img.2[at], img.2[at + 1], img.2[at + 2]]
}

fn close(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
    a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= tolerance)
}

// ---------------------------------------------------------------------------------------
// ICC profiles built here (ICC.1:2010 matrix/TRC display profiles).

/// sRGB's primaries adapted to D50 (the columns are the R, G, B colorants' XYZ).
const SRGB_D50: [[f64; 3]; 3] = [
    [0.436_074_7, 0.385_064_9, 0.143_080_4],
    [0.222_504_5, 0.716_878_6, 0.060_616_9],
    [0.013_932_2, 0.097_104_5, 0.714_173_3],
];
/// Display P3's, as in Apple's "Display P3" profile.
const P3_D50: [[f64; 3]; 3] = [
    [0.515_121, 0.291_977, 0.157_104],
    [0.241_196, 0.692_245, 0.066_574],
    [-0.001_053, 0.041_885, 0.784_073],
];

enum Trc {
    /// The sRGB curve, as a parametricCurveType (function 3).
    Srgb,
    /// A pure power, as a one-entry curveType.
    Gamma(f64),
}

fn s15(v: f64) -> [u8; 4] {
    ((v * 65536.0).round() as i32).to_be_bytes()
}

fn xyz_tag(x: f64, y: f64, z: f64) -> Vec<u8> {
    let mut t = b"XYZ \0\0\0\0".to_vec();
    for v in [x, y, z] {
        t.extend_from_slice(&s15(v));
    }
    t
}

fn trc_tag(trc: &Trc) -> Vec<u8> {
    match trc {
        Trc::Srgb => {
            let mut t = b"para\0\0\0\0\0\x03\0\0".to_vec();
            for v in [2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045] {
                t.extend_from_slice(&s15(v));
            }
            t
        }
        Trc::Gamma(g) => {
            let mut t = b"curv\0\0\0\0\0\0\0\x01".to_vec();
            t.extend_from_slice(&((g * 256.0).round() as u16).to_be_bytes());
            t
        }
    }
}

/// An ICC profile from its colour space and tags (each tag's data aligned to 4 bytes;
/// tags with the same data share it, as real profiles do for their TRCs).
fn icc(space: &[u8; 4], tags: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    let table = 4 + 12 * tags.len();
    let mut data: Vec<u8> = Vec::new();
    let mut entries = Vec::new();
    for (sig, bytes) in tags {
        let at = match entries.iter().find(|(_, _, b)| b == bytes) {
            Some((_, at, _)) => *at,
            None => {
                let at = 128 + table + data.len();
                data.extend_from_slice(bytes);
                while !data.len().is_multiple_of(4) {
                    data.push(0);
                }
                at
            }
        };
        entries.push((**sig, at, bytes.clone()));
    }
    let size = 128 + table + data.len();
    let mut p = Vec::with_capacity(size);
    p.extend_from_slice(&(size as u32).to_be_bytes());
    p.extend_from_slice(&[0; 4]); // CMM
    p.extend_from_slice(&[4, 0x30, 0, 0]); // version 4.3
    p.extend_from_slice(b"mntr");
    p.extend_from_slice(space);
    p.extend_from_slice(b"XYZ ");
    p.extend_from_slice(&[0; 12]); // date
    p.extend_from_slice(b"acsp");
    p.extend_from_slice(&[0; 24]); // platform, flags, maker, model, attributes
    p.extend_from_slice(&[0; 4]); // perceptual
    for v in [0.9642, 1.0, 0.8249] {
        p.extend_from_slice(&s15(v)); // D50
    }
    p.extend_from_slice(&[0; 4 + 16 + 28]); // creator, id, reserved
    assert_eq!(p.len(), 128);
    p.extend_from_slice(&(tags.len() as u32).to_be_bytes());
    for (sig, at, bytes) in &entries {
        p.extend_from_slice(sig);
        p.extend_from_slice(&(*at as u32).to_be_bytes());
        p.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    }
    p.extend_from_slice(&data);
    p
}

/// An RGB display profile with the given colorants (columns of `m`) and curve.
fn rgb_profile(m: [[f64; 3]; 3], trc: Trc) -> Vec<u8> {
    let curve = trc_tag(&trc);
    let col = |c: usize| xyz_tag(m[0][c], m[1][c], m[2][c]);
    icc(
        b"RGB ",
        &[
            (b"wtpt", xyz_tag(0.9642, 1.0, 0.8249)),
            (b"rXYZ", col(0)),
            (b"gXYZ", col(1)),
            (b"bXYZ", col(2)),
            (b"rTRC", curve.clone()),
            (b"gTRC", curve.clone()),
            (b"bTRC", curve),
        ],
    )
}

/// A profile whose red is sRGB's green, green sRGB's blue and blue sRGB's red, with the
/// sRGB curve: (r, g, b) in it is exactly (b, r, g) in sRGB. Nothing subtle about it, so
/// a profile ignored or applied wrongly cannot pass for a right one.
fn rotated_profile() -> Vec<u8> {
    let s = SRGB_D50;
    let m = [
        [s[0][1], s[0][2], s[0][0]],
        [s[1][1], s[1][2], s[1][0]],
        [s[2][1], s[2][2], s[2][0]],
    ];
    rgb_profile(m, Trc::Srgb)
}

fn rotated(c: [u8; 3]) -> [u8; 3] {
    [c[2], c[0], c[1]]
}

fn srgb_decode(v: u8) -> f64 {
    let v = f64::from(v) / 255.0;
    if v <= 0.04045 {
        v / 12.92
    } else {
        ((v + 0.055) / 1.055).powf(2.4)
    }
}

fn srgb_encode(v: f64) -> u8 {
    let v = v.clamp(0.0, 1.0);
    let s = if v <= 0.003_130_8 {
        v * 12.92
    } else {
        1.055 * v.powf(1.0 / 2.4) - 0.055
    };
    (s * 255.0).round() as u8
}

fn invert(m: [[f64; 3]; 3]) -> [[f64; 3]; 3] {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
        - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    let c = |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1];
    [
        [
            (c(1, 1, 2, 2) - c(1, 2, 2, 1)) / det,
            (c(0, 2, 2, 1) - c(0, 1, 2, 2)) / det,
            (c(0, 1, 1, 2) - c(0, 2, 1, 1)) / det,
        ],
        [
            (c(1, 2, 2, 0) - c(1, 0, 2, 2)) / det,
            (c(0, 0, 2, 2) - c(0, 2, 2, 0)) / det,
            (c(0, 2, 1, 0) - c(0, 0, 1, 2)) / det,
        ],
        [
            (c(1, 0, 2, 1) - c(1, 1, 2, 0)) / det,
            (c(0, 1, 2, 0) - c(0, 0, 2, 1)) / det,
            (c(0, 0, 1, 1) - c(0, 1, 1, 0)) / det,
        ],
    ]
}

fn mul(m: [[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [0, 1, 2].map(|r| m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2])
}

/// A Display P3 colour in sRGB, worked out here: decode, to XYZ (D50), to sRGB, encode.
fn p3_to_srgb(c: [u8; 3]) -> [u8; 3] {
    let xyz = mul(P3_D50, c.map(srgb_decode));
    mul(invert(SRGB_D50), xyz).map(srgb_encode)
}

// ---------------------------------------------------------------------------------------
// Putting a profile into a file.

fn crc(kind: &[u8], data: &[u8]) -> [u8; 4] {
    let mut h = crc32fast::Hasher::new();
    h.update(kind);
    h.update(data);
    h.finalize().to_be_bytes()
}

/// zlib with stored (uncompressed) deflate blocks: valid, and needs no compressor.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut z = vec![0x78, 0x01];
    let mut blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    if blocks.is_empty() {
        blocks.push(&[]);
    }
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    z
}

/// `png` with an iCCP chunk holding `payload` (already zlib) right after IHDR.
fn png_with_iccp_raw(png: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut data = b"icc\0\0".to_vec(); // name, compression method 0
    data.extend_from_slice(payload);
    let ihdr_end = 8 + 8 + 13 + 4;
    let mut out = png[..ihdr_end].to_vec();
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(b"iCCP");
    out.extend_from_slice(&data);
    out.extend_from_slice(&crc(b"iCCP", &data));
    out.extend_from_slice(&png[ihdr_end..]);
    out
}

fn png_with_iccp(png: &[u8], profile: &[u8]) -> Vec<u8> {
    png_with_iccp_raw(png, &zlib_stored(profile))
}

/// `jpeg` with the profile in APP2 ICC_PROFILE segments (several when it is over 64 KiB).
fn jpeg_with_icc(jpeg: &[u8], profile: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = profile.chunks(65_519).collect();
    let mut out = jpeg[..2].to_vec();
    for (i, part) in parts.iter().enumerate() {
        out.extend_from_slice(&[0xFF, 0xE2]);
        out.extend_from_slice(&((2 + 14 + part.len()) as u16).to_be_bytes());
        out.extend_from_slice(b"ICC_PROFILE\0");
        out.extend_from_slice(&[(i + 1) as u8, parts.len() as u8]);
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A simple-format WebP (RIFF, one VP8L chunk) turned extended: VP8X with the ICC flag,
/// then ICCP, then the image chunk.
fn webp_with_iccp(webp: &[u8], w: u32, h: u32, profile: &[u8]) -> Vec<u8> {
    assert_eq!(&webp[12..15], b"VP8", "a simple-format WebP");
    let mut body = b"WEBP".to_vec();
    body.extend_from_slice(b"VP8X");
    body.extend_from_slice(&10u32.to_le_bytes());
    body.extend_from_slice(&[0x20, 0, 0, 0]); // ICC profile flag
    body.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    body.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    body.extend_from_slice(b"ICCP");
    body.extend_from_slice(&(profile.len() as u32).to_le_bytes());
    body.extend_from_slice(profile);
    if profile.len() % 2 == 1 {
        body.push(0);
    }
    body.extend_from_slice(&webp[12..]);
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------

fn run(d: &Path, name: &str, bytes: &[u8]) -> Processed {
    let src = d.join(name);
    std::fs::write(&src, bytes).unwrap();
    let out = d.join(format!("out-{name}"));
    std::fs::create_dir_all(&out).unwrap();
    let limits = Limits::default();
    let probe = inspect(&src, &limits).unwrap_or_else(|e| panic!("{name}: {e}"));
    process(&src, &probe, &out, &limits).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn rendition(p: &Processed, name: &str) -> PathBuf {
    p.renditions
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .path
        .clone()
}

/// JPEG marker segments before the scan.
fn markers(jpeg: &[u8]) -> Vec<u8> {
    let mut at = 2;
    let mut out = Vec::new();
    while at + 4 <= jpeg.len() && jpeg[at] == 0xFF {
        let m = jpeg[at + 1];
        out.push(m);
        if m == 0xDA {
            break;
        }
        at += 2 + u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]) as usize;
    }
    out
}

/// Both renditions: no profile (APP2) or other metadata segment, nothing ICC-looking, and
/// each patch's centre within `tolerance` of `want(i)`.
fn check(p: &Processed, tolerance: u8, want: impl Fn(usize) -> [u8; 3]) {
    for name in ["thumb.jpg", "display.jpg"] {
        let path = rendition(p, name);
        let bytes = std::fs::read(&path).unwrap();
        let m = markers(&bytes);
        assert!(
            m.iter().all(|m| !matches!(m, 0xE1..=0xEF | 0xFE)),
            "{name}: metadata segments {m:x?}"
        );
        for needle in [&b"ICC_PROFILE"[..], b"acsp", b"Exif", b"mntr"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{name}");
        }
        let img = rgb(&path);
        for i in 0..4 {
            let got = patch(&img, i as u32);
            assert!(
                close(got, want(i), tolerance),
                "{name} patch {i}: got {got:?}, want {:?}",
                want(i)
            );
        }
    }
}

/// The DC (average) colour a blurhash carries.
fn blurhash_dc(hash: &str) -> [u8; 3] {
    const CHARS: &[u8] =
        b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~";
    let mut v = 0u32;
    for c in hash[2..6].bytes() {
        v = v * 83 + CHARS.iter().position(|x| *x == c).unwrap() as u32;
    }
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// JPEG at -q:v 2 moves a flat patch's colour by a few levels; qcms by one.
const TOLERANCE: u8 = 6;

#[test]
fn png_iccp_is_applied_and_removed() {
    let scratch_dir = dir("png");
    let d = scratch_dir.path();
    let png = patches(d, "p.png", &[]);
    let tagged = png_with_iccp(&png, &rotated_profile());
    // The naive copy (what the ffmpeg command decodes) is the untouched patches.
    std::fs::write(d.join("tagged.png"), &tagged).unwrap();
    let naive = rgb(&d.join("tagged.png"));
    assert_eq!(patch(&naive, 0), PATCHES[0]);

    let done = run(d, "tagged.png", &tagged);
    assert_eq!(done.colour, Colour::Converted);
    check(&done, TOLERANCE, |i| rotated(PATCHES[i]));
    for (i, c) in PATCHES.iter().enumerate().take(3) {
        assert!(!close(*c, rotated(*c), 40), "patch {i} must move");
    }

    // The blurhash is of the converted pixels: its average is the rotated patches'.
    let plain = run(d, "plain.png", &png);
    assert_eq!(plain.colour, Colour::Untagged);
    let hash = done.blurhash.unwrap();
    assert_ne!(Some(&hash), plain.blurhash.as_ref());
    let swapped = patches_rotated(d);
    let want = run(d, "rotated.png", &swapped).blurhash.unwrap();
    assert!(
        close(blurhash_dc(&hash), blurhash_dc(&want), 2),
        "{hash} vs {want}"
    );
}

/// The patches already rotated, untagged.
fn patches_rotated(d: &Path) -> Vec<u8> {
    let raw = std::fs::read(patches_raw(d)).unwrap();
    let swapped: Vec<u8> = raw
        .chunks_exact(3)
        .flat_map(|p| rotated([p[0], p[1], p[2]]))
        .collect();
    let path = d.join("rotated.rgb");
    std::fs::write(&path, swapped).unwrap();
    let out = d.join("rotated-src.png");
    let size = format!("{}x{}", PATCH * 4, PATCH);
    ffmpeg(&[
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        &size,
        "-i",
        path.to_str().unwrap(),
        "-frames:v",
        "1",
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

/// The rotated profile again, as an ICC v2 LUT profile (an `A2B0` lut16Type: sRGB-decoding
/// input tables, a 2-point CLUT holding the corners' XYZ, which trilinear interpolation
/// makes exactly the matrix, identity output tables): qcms's other input path.
fn rotated_lut_profile() -> Vec<u8> {
    const ENTRIES: usize = 1024;
    let s = SRGB_D50;
    // Profile red, green, blue = sRGB green, blue, red.
    let cols = [1, 2, 0].map(|c| [s[0][c], s[1][c], s[2][c]]);
    let mut t = b"mft2\0\0\0\0".to_vec();
    t.extend_from_slice(&[3, 3, 2, 0]);
    for v in [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0] {
        t.extend_from_slice(&s15(v));
    }
    t.extend_from_slice(&(ENTRIES as u16).to_be_bytes());
    t.extend_from_slice(&2u16.to_be_bytes());
    for _ in 0..3 {
        for i in 0..ENTRIES {
            let v = i as f64 / (ENTRIES - 1) as f64;
            let lin = if v <= 0.04045 {
                v / 12.92
            } else {
                ((v + 0.055) / 1.055).powf(2.4)
            };
            t.extend_from_slice(&((lin * 65535.0).round() as u16).to_be_bytes());
        }
    }
    for r in 0..2 {
        for g in 0..2 {
            for b in 0..2 {
                let corner = [r, g, b].map(f64::from);
                let xyz = [0, 1, 2].map(|k| (0..3).map(|c| corner[c] * cols[c][k]).sum::<f64>());
                for v in xyz {
                    // lut16 XYZ: 1.0 is 0x8000.
                    let v = (v * 32768.0).round().min(65535.0) as u16;
                    t.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
    }
    for _ in 0..3 {
        t.extend_from_slice(&0u16.to_be_bytes());
        t.extend_from_slice(&65535u16.to_be_bytes());
    }
    let mut p = icc(
        b"RGB ",
        &[(b"wtpt", xyz_tag(0.9642, 1.0, 0.8249)), (b"A2B0", t)],
    );
    p[8..12].copy_from_slice(&[2, 0x40, 0, 0]); // version 2.4
    p
}

#[test]
fn png_with_a_lut_profile() {
    let scratch_dir = dir("lut");
    let d = scratch_dir.path();
    let png = patches(d, "p.png", &[]);
    let done = run(d, "lut.png", &png_with_iccp(&png, &rotated_lut_profile()));
    assert_eq!(done.colour, Colour::Converted);
    check(&done, TOLERANCE, |i| rotated(PATCHES[i]));
}

#[test]
fn jpeg_display_p3_matches_the_worked_out_srgb() {
    let scratch_dir = dir("jpeg");
    let d = scratch_dir.path();
    // 4:4:4 so the patch colours survive the source's own compression closely.
    let jpeg = patches(d, "p.jpg", &["-q:v", "2", "-pix_fmt", "yuvj444p"]);
    std::fs::write(d.join("src.jpg"), &jpeg).unwrap();
    let naive = rgb(&d.join("src.jpg"));
    let src: Vec<[u8; 3]> = (0..4).map(|i| patch(&naive, i)).collect();
    let want: Vec<[u8; 3]> = src.iter().map(|c| p3_to_srgb(*c)).collect();
    // The test means something only if the conversion moves colours well past tolerance.
    assert!(
        (0..3).all(|i| !close(src[i], want[i], 3 * TOLERANCE)),
        "{src:?} {want:?}"
    );

    let tagged = jpeg_with_icc(&jpeg, &rgb_profile(P3_D50, Trc::Srgb));
    let done = run(d, "p3.jpg", &tagged);
    assert_eq!(done.colour, Colour::Converted);
    check(&done, TOLERANCE, |i| want[i]);

    // A profile split over several APP2 segments (padded past 64 KiB with a private tag)
    // is put back together by the decoder.
    let mut big = rgb_profile(P3_D50, Trc::Srgb);
    let tags = big[128..132].to_vec();
    assert_eq!(tags, 7u32.to_be_bytes());
    big.extend_from_slice(&vec![0u8; 100_000]);
    let size = big.len() as u32;
    big[0..4].copy_from_slice(&size.to_be_bytes());
    let done = run(d, "p3-split.jpg", &jpeg_with_icc(&jpeg, &big));
    assert_eq!(done.colour, Colour::Converted);
    check(&done, TOLERANCE, |i| want[i]);
}

#[test]
fn webp_iccp_is_read_from_the_file() {
    let scratch_dir = dir("webp");
    let d = scratch_dir.path();
    let webp = patches(d, "p.webp", &["-c:v", "libwebp", "-lossless", "1"]);
    let tagged = webp_with_iccp(&webp, PATCH * 4, PATCH, &rotated_profile());
    let done = run(d, "tagged.webp", &tagged);
    assert_eq!(done.colour, Colour::Converted);
    check(&done, TOLERANCE, |i| rotated(PATCHES[i]));
}

#[test]
fn grey_png_with_a_linear_grey_profile() {
    let scratch_dir = dir("grey");
    let d = scratch_dir.path();
    let png = patches(d, "g.png", &["-pix_fmt", "gray"]);
    std::fs::write(d.join("g.png"), &png).unwrap();
    let naive = rgb(&d.join("g.png"));
    let src: Vec<[u8; 3]> = (0..4).map(|i| patch(&naive, i)).collect();
    // Linear light (gamma 1.0) in sRGB: much lighter.
    let want: Vec<[u8; 3]> = src
        .iter()
        .map(|c| [srgb_encode(f64::from(c[0]) / 255.0); 3])
        .collect();
    let grey = icc(
        b"GRAY",
        &[
            (b"wtpt", xyz_tag(0.9642, 1.0, 0.8249)),
            (b"kTRC", trc_tag(&Trc::Gamma(1.0))),
        ],
    );
    let done = run(d, "linear.png", &png_with_iccp(&png, &grey));
    assert_eq!(done.colour, Colour::Converted);
    check(&done, TOLERANCE, |i| want[i]);
    assert!(!close(src[3], want[3], 40));
}

#[test]
fn untagged_and_srgb_tagged_pictures_are_unchanged() {
    let scratch_dir = dir("srgb");
    let d = scratch_dir.path();
    let png = patches(d, "p.png", &[]);
    let plain = run(d, "plain.png", &png);
    assert_eq!(plain.colour, Colour::Untagged);
    check(&plain, TOLERANCE, |i| PATCHES[i]);
    let srgb = rgb_profile(SRGB_D50, Trc::Srgb);
    let done = run(d, "srgb.png", &png_with_iccp(&png, &srgb));
    assert_eq!(done.colour, Colour::Srgb);
    for r in ["thumb.jpg", "display.jpg"] {
        assert_eq!(
            std::fs::read(rendition(&done, r)).unwrap(),
            std::fs::read(rendition(&plain, r)).unwrap(),
            "{r} differs from the untagged picture's"
        );
    }
    assert_eq!(done.blurhash, plain.blurhash);
}

#[test]
fn bad_profiles_give_renditions_as_srgb() {
    let scratch_dir = dir("bad");
    let d = scratch_dir.path();
    let png = patches(d, "p.png", &[]);
    let plain = run(d, "plain.png", &png);
    let good = rotated_profile();

    let mut garbage = vec![0x5Au8; 700];
    garbage[0..4].copy_from_slice(&700u32.to_be_bytes());
    garbage[16..20].copy_from_slice(b"RGB ");
    garbage[36..40].copy_from_slice(b"acsp");
    let mut cmyk = good.clone();
    cmyk[16..20].copy_from_slice(b"CMYK");
    let mut lying_size = good.clone();
    lying_size[0..4].copy_from_slice(&1_000_000u32.to_be_bytes());
    let mut tags_past_end = good.clone();
    let n = tags_past_end.len();
    // The second tag (rXYZ): its 20 bytes would start 4 bytes before the end.
    tags_past_end[144 + 4..144 + 8].copy_from_slice(&(n as u32 - 4).to_be_bytes());
    let mut over = good.clone();
    over.resize(nova_media::ICC_PROFILE_BYTES_MAX + 1, 0);
    let over_len = over.len() as u32;
    over[0..4].copy_from_slice(&over_len.to_be_bytes());
    let grey = icc(
        b"GRAY",
        &[
            (b"wtpt", xyz_tag(0.9642, 1.0, 0.8249)),
            (b"kTRC", trc_tag(&Trc::Gamma(1.0))),
        ],
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage.png", png_with_iccp(&png, &garbage), "damaged"),
        ("cmyk.png", png_with_iccp(&png, &cmyk), "CMYK"),
        (
            "cut.png",
            png_with_iccp(&png, &good[..good.len() / 2]),
            "damaged",
        ),
        (
            "lying-size.png",
            png_with_iccp(&png, &lying_size),
            "damaged",
        ),
        (
            "tags-past-end.png",
            png_with_iccp(&png, &tags_past_end),
            "damaged",
        ),
        ("over-limit.png", png_with_iccp(&png, &over), "limit"),
        ("grey-on-colour.png", png_with_iccp(&png, &grey), "grey"),
        ("empty.png", png_with_iccp(&png, &[]), "not an ICC profile"),
        // FFmpeg 5.1 fails the whole picture on these two: the chunk is left out.
        (
            "bad-zlib.png",
            png_with_iccp_raw(&png, b"\x78\x01not deflate at all"),
            "zlib",
        ),
        // 64 MiB of zeros in 64 KiB: inflated only up to the limit.
        (
            "bomb.png",
            png_with_iccp_raw(
                &png,
                &miniz_oxide::deflate::compress_to_vec_zlib(&vec![0u8; 64 << 20], 9),
            ),
            "limit",
        ),
    ];
    for (name, bytes, why) in cases {
        let done = run(d, name, &bytes);
        assert!(
            matches!(&done.colour, Colour::Ignored(r) if r.contains(why)),
            "{name}: {:?}",
            done.colour
        );
        for r in ["thumb.jpg", "display.jpg"] {
            assert_eq!(
                std::fs::read(rendition(&done, r)).unwrap(),
                std::fs::read(rendition(&plain, r)).unwrap(),
                "{name}: {r} differs from the untagged picture's"
            );
        }
    }

    // JPEG: a damaged profile, and one whose APP2 segments are not all there.
    let jpeg = patches(d, "p.jpg", &["-q:v", "2", "-pix_fmt", "yuvj444p"]);
    let mut missing = jpeg_with_icc(&jpeg, &good);
    assert_eq!(missing[2 + 4 + 12..2 + 4 + 14], [1, 1]);
    missing[2 + 4 + 13] = 2; // "one of two"
    for (name, bytes) in [
        ("garbage.jpg", jpeg_with_icc(&jpeg, &garbage)),
        ("missing.jpg", missing),
    ] {
        let done = run(d, name, &bytes);
        // An incomplete set of segments is dropped by the decoder itself.
        assert!(
            matches!(
                (name, &done.colour),
                (_, Colour::Ignored(_)) | ("missing.jpg", Colour::Untagged)
            ),
            "{name}: {:?}",
            done.colour
        );
        check(&done, TOLERANCE, |i| PATCHES[i]);
    }

    // Over the limit in a WebP: refused before it is read.
    let webp = patches(d, "p.webp", &["-c:v", "libwebp", "-lossless", "1"]);
    let done = run(
        d,
        "over.webp",
        &webp_with_iccp(&webp, PATCH * 4, PATCH, &over),
    );
    assert!(
        matches!(&done.colour, Colour::Ignored(r) if r.contains("limit")),
        "{:?}",
        done.colour
    );
    check(&done, TOLERANCE, |i| PATCHES[i]);
}

/// The cost of a profile: `process` on a 12-megapixel photo with and without one. Not a
/// test (no assertion on time); run it on a quiet machine with
/// `cargo test --release -p nova-media --test colour -- --ignored --nocapture cost`.
#[test]
#[ignore]
fn cost_of_a_profile() {
    const RUNS: usize = 9;
    let scratch_dir = dir("cost");
    let d = scratch_dir.path();
    let p3 = rgb_profile(P3_D50, Trc::Srgb);
    for (name, ext, extra) in [
        ("jpeg 4032x3024", "jpg", &["-q:v", "2"][..]),
        ("png 4032x3024", "png", &[][..]),
    ] {
        let src = d.join(format!("src.{ext}"));
        let mut args = vec!["-f", "lavfi", "-i", "testsrc2=s=4032x3024"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-frames:v", "1", src.to_str().unwrap()]);
        ffmpeg(&args);
        let plain = std::fs::read(&src).unwrap();
        let tagged = match ext {
            "jpg" => jpeg_with_icc(&plain, &p3),
            _ => png_with_iccp(&plain, &p3),
        };
        for (label, bytes, colour) in [
            ("no profile", &plain, Colour::Untagged),
            ("Display P3", &tagged, Colour::Converted),
        ] {
            let path = d.join(format!("in.{ext}"));
            std::fs::write(&path, bytes).unwrap();
            let out = d.join("out");
            std::fs::create_dir_all(&out).unwrap();
            let limits = Limits::default();
            let mut ms: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let started = std::time::Instant::now();
                    let probe = inspect(&path, &limits).unwrap();
                    let done = process(&path, &probe, &out, &limits).unwrap();
                    assert_eq!(done.colour, colour);
                    started.elapsed().as_secs_f64() * 1000.0
                })
                .collect();
            ms.sort_by(f64::total_cmp);
            println!(
                "{name}, {label}: median {:.1} ms, min {:.1} ms, max {:.1} ms ({RUNS} runs)",
                ms[RUNS / 2],
                ms[0],
                ms[RUNS - 1]
            );
        }
    }
}
