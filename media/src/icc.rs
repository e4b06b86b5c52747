//! Colour: an image's embedded ICC profile is applied to its pixels, so every rendition is
//! sRGB and carries no profile (renditions are written from pixels alone, like the rest of
//! the metadata strip). Without this a Display P3 or Adobe RGB photo would look washed out,
//! and a profile with unusual primaries would shift hues outright.
//!
//! The conversion is qcms (Firefox's colour management, pure Rust): matrix/TRC profiles and
//! ICC v2/v4 LUT profiles, RGB and grey. The profile comes from the decoder's frame side data
//! (ffmpeg exports JPEG APP2 and PNG iCCP) or, for WebP, whose decoder in FFmpeg 5.1 skips
//! the chunk, from the file's ICCP chunk read here.
//!
//! A profile is a hint, not a reason to refuse a picture: one that is too large, damaged,
//! of a colour space the pixels are not in (CMYK, Lab, grey on colour) or that qcms cannot
//! apply is ignored with a log line, and the pixels are taken as sRGB, as browsers do with
//! untagged images.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::OnceLock;

use ffmpeg::format::Pixel;
use ffmpeg::frame::side_data::Type as SideData;
use ffmpeg_next as ffmpeg;

use crate::image::Rgba;

/// Larger profiles are ignored. Matrix/TRC profiles (sRGB, Display P3, Adobe RGB) are under
/// 4 KiB and LUT-based camera or scanner profiles some hundreds of KiB; qcms itself stops at
/// 4 MiB. This bounds what one picture makes qcms parse and hold.
pub const ICC_PROFILE_BYTES_MAX: usize = 1024 * 1024;
/// ICC header bytes (the tag table follows).
const HEADER_BYTES: usize = 128;
/// Chunks of a WebP file looked at for ICCP: the format puts it right after VP8X.
const WEBP_CHUNKS_MAX: usize = 4;

/// What was done about an image's colour.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Colour {
    /// No ICC profile: the pixels are taken as sRGB (videos are always this).
    Untagged,
    /// A profile that is sRGB within one level per channel: the pixels are kept as they are.
    Srgb,
    /// The pixels were converted from the embedded profile to sRGB.
    Converted,
    /// A profile that could not be used, and why: the pixels are taken as sRGB.
    Ignored(String),
}

/// How the pixels a profile describes are laid out for qcms.
enum Layout {
    /// RGBA in, RGBA out, alpha untouched.
    Rgb,
    /// Grey: one channel (R of our grey RGBA) with alpha in, RGBA out.
    Grey,
}

/// A conversion of decoded RGBA pixels to sRGB (or none).
pub(crate) struct ToSrgb {
    transform: Option<(qcms::Transform, Layout)>,
    pub colour: Colour,
}

impl ToSrgb {
    /// Pixels taken as they are.
    pub fn none() -> ToSrgb {
        ToSrgb {
            transform: None,
            colour: Colour::Untagged,
        }
    }

    /// The conversion for `frame`, decoded from the file at `path` opened as `demuxer`.
    pub fn for_frame(frame: &ffmpeg::frame::Video, path: &Path, demuxer: &str) -> ToSrgb {
        // Palette pictures are colour even with one component: named, not counted.
        let grey = matches!(
            frame.format(),
            Pixel::GRAY8
                | Pixel::GRAY16BE
                | Pixel::GRAY16LE
                | Pixel::YA8
                | Pixel::YA16BE
                | Pixel::YA16LE
        );
        if let Some(sd) = frame.side_data(SideData::IccProfile) {
            return ToSrgb::for_profile(sd.data(), grey);
        }
        if demuxer != "webp_pipe" {
            return ToSrgb::none();
        }
        match webp_profile(path) {
            Ok(None) => ToSrgb::none(),
            Ok(Some(icc)) => ToSrgb::for_profile(&icc, grey),
            Err(reason) => ToSrgb::ignored(reason),
        }
    }

    /// No conversion, because of `reason` (logged).
    pub fn ignored(reason: String) -> ToSrgb {
        tracing::warn!(reason, "image ICC profile ignored; pixels taken as sRGB");
        ToSrgb {
            transform: None,
            colour: Colour::Ignored(reason),
        }
    }

    /// The conversion from the profile `icc` to sRGB, for grey pixels when `grey`.
    pub fn for_profile(icc: &[u8], grey: bool) -> ToSrgb {
        let layout = match check_header(icc, grey) {
            Ok(layout) => layout,
            Err(reason) => return ToSrgb::ignored(reason),
        };
        // qcms is fuzzed as part of Firefox, but a profile is hostile input and a panic here
        // would take the transcoding thread: it only costs the profile.
        let made = catch_unwind(AssertUnwindSafe(|| make_transform(icc, &layout)));
        match made {
            Ok(Ok(Some(t))) => ToSrgb {
                transform: Some((t, layout)),
                colour: Colour::Converted,
            },
            Ok(Ok(None)) => ToSrgb {
                transform: None,
                colour: Colour::Srgb,
            },
            Ok(Err(reason)) => ToSrgb::ignored(reason),
            Err(_) => ToSrgb::ignored("the colour library panicked on this profile".into()),
        }
    }

    /// Converts `img` to sRGB in place (nothing to do for untagged and sRGB pictures).
    pub fn apply(&self, img: &mut Rgba) {
        let Some((t, layout)) = &self.transform else {
            return;
        };
        // qcms only panics on a buffer that is not whole pixels, which `Rgba` always is; the
        // guard keeps a bug there from taking the transcoding thread.
        let converted = catch_unwind(AssertUnwindSafe(|| match layout {
            Layout::Rgb => t.apply(&mut img.data),
            Layout::Grey => {
                let ga: Vec<u8> = img
                    .data
                    .chunks_exact(4)
                    .flat_map(|p| [p[0], p[3]])
                    .collect();
                t.convert(&ga, &mut img.data);
            }
        }));
        if converted.is_err() {
            tracing::warn!("colour conversion panicked; the picture may be partly converted");
        }
    }
}

/// Checks what qcms does not: the size limit, the signature, and that the profile's colour
/// space is the pixels' (qcms would misread RGBA through a grey profile).
fn check_header(icc: &[u8], grey: bool) -> Result<Layout, String> {
    if icc.len() > ICC_PROFILE_BYTES_MAX {
        return Err(format!(
            "profile of {} bytes is over the limit of {ICC_PROFILE_BYTES_MAX}",
            icc.len()
        ));
    }
    if icc.len() < HEADER_BYTES + 4 || &icc[36..40] != b"acsp" {
        return Err("not an ICC profile (no acsp signature)".into());
    }
    match (&icc[16..20], grey) {
        (b"RGB ", _) => Ok(Layout::Rgb),
        (b"GRAY", true) => Ok(Layout::Grey),
        (b"GRAY", false) => Err("grey profile on a colour picture".into()),
        (space, _) => Err(format!(
            "unsupported profile colour space {:?}",
            String::from_utf8_lossy(space).trim_end()
        )),
    }
}

fn srgb() -> &'static qcms::Profile {
    static SRGB: OnceLock<Box<qcms::Profile>> = OnceLock::new();
    SRGB.get_or_init(|| {
        let mut p = qcms::Profile::new_sRGB();
        // Output tables made once, so each transform is table lookups after the matrix.
        p.precache_output_transform();
        p
    })
}

/// The transform from `icc` to sRGB; `None` when it changes no colour by more than a level
/// (an embedded sRGB profile), so sRGB pictures come out exactly as they went in.
fn make_transform(icc: &[u8], layout: &Layout) -> Result<Option<qcms::Transform>, String> {
    let input = qcms::Profile::new_from_slice(icc, false)
        .ok_or_else(|| "damaged or unsupported ICC profile".to_string())?;
    let intent = qcms::Intent::default();
    let (src, dst) = match layout {
        Layout::Rgb => (qcms::DataType::RGBA8, qcms::DataType::RGBA8),
        Layout::Grey => (qcms::DataType::GrayA8, qcms::DataType::RGBA8),
    };
    let t = qcms::Transform::new_to(&input, srgb(), src, dst, intent)
        .ok_or_else(|| "the profile cannot be applied".to_string())?;
    Ok((!is_identity(&t, layout)).then_some(t))
}

/// Whether `t` moves none of a 6x6x6 grid of colours (plus greys) by more than one level.
fn is_identity(t: &qcms::Transform, layout: &Layout) -> bool {
    let steps = [0u8, 51, 102, 153, 204, 255];
    let mut rgba = Vec::with_capacity(4 * (216 + 256));
    for r in steps {
        for g in steps {
            for b in steps {
                rgba.extend_from_slice(&[r, g, b, 255]);
            }
        }
    }
    for v in 0..=255u8 {
        rgba.extend_from_slice(&[v, v, v, 255]);
    }
    let mut out = vec![0u8; rgba.len()];
    match layout {
        Layout::Rgb => t.convert(&rgba, &mut out),
        Layout::Grey => {
            // Grey profiles only see greys.
            let greys: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255]).collect();
            rgba = (0..=255u8).flat_map(|v| [v, v, v, 255]).collect();
            out.truncate(rgba.len());
            t.convert(&greys, &mut out);
        }
    }
    rgba.iter().zip(&out).all(|(a, b)| a.abs_diff(*b) <= 1)
}

/// A PNG's iCCP chunk as FFmpeg 5.1 would meet it.
pub(crate) enum PngIccp {
    /// None, or one that inflates within the limit: ffmpeg may decode the file as it is.
    Fine,
    /// One ffmpeg must not see (it fails the whole picture on a damaged zlib stream, and
    /// inflates without a bound): why, and where the chunk is (start, length with header
    /// and CRC).
    Unusable { reason: String, at: u64, len: u64 },
}

/// Looks at the iCCP chunk of the PNG at `path` (before PLTE and IDAT, as the format puts
/// it), inflating it with a limit of `ICC_PROFILE_BYTES_MAX`.
pub(crate) fn check_png(path: &Path) -> std::io::Result<PngIccp> {
    use std::io::BufReader;
    let mut file = BufReader::new(std::fs::File::open(path)?);
    let mut at = 8u64;
    file.seek_relative(8)?;
    // Each step moves past a whole chunk, so the loop ends within the file's length.
    loop {
        let mut head = [0u8; 8];
        if file.read_exact(&mut head).is_err() {
            return Ok(PngIccp::Fine);
        }
        let size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        match &head[4..8] {
            b"iCCP" => {
                let unusable = |reason: String| PngIccp::Unusable {
                    reason,
                    at,
                    len: size + 12,
                };
                // Deflate does not make a profile much larger than it is.
                if size > 2 * ICC_PROFILE_BYTES_MAX as u64 {
                    return Ok(unusable(format!("iCCP chunk of {size} bytes is too large")));
                }
                let mut data = vec![0u8; size as usize];
                if file.read_exact(&mut data).is_err() {
                    return Ok(unusable("the iCCP chunk is cut short".into()));
                }
                return Ok(match inflate_iccp(&data) {
                    Ok(()) => PngIccp::Fine,
                    Err(reason) => unusable(reason),
                });
            }
            b"PLTE" | b"IDAT" | b"IEND" => return Ok(PngIccp::Fine),
            _ => {
                let skip = size + 4;
                file.seek_relative(skip as i64)?;
                at += 8 + skip;
            }
        }
    }
}

/// Checks an iCCP chunk's data (name, NUL, method 0, zlib) inflates within the limit.
fn inflate_iccp(data: &[u8]) -> Result<(), String> {
    let name_end = data
        .iter()
        .take(80)
        .position(|b| *b == 0)
        .ok_or_else(|| "iCCP chunk with a bad profile name".to_string())?;
    let Some((0, zlib)) = data[name_end + 1..].split_first() else {
        return Err("iCCP chunk with an unknown compression".into());
    };
    miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(zlib, ICC_PROFILE_BYTES_MAX)
        .map(|_| ())
        .map_err(|e| match e.status {
            miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                format!("profile over the limit of {ICC_PROFILE_BYTES_MAX} bytes")
            }
            _ => "iCCP chunk with a damaged zlib stream".into(),
        })
}

/// Copies the file at `src` to `dst` without the `len` bytes at `at`.
pub(crate) fn copy_without(src: &Path, at: u64, len: u64, dst: &Path) -> std::io::Result<()> {
    use std::io::{Seek as _, SeekFrom, Write as _};
    let mut from = std::fs::File::open(src)?;
    let mut to = std::io::BufWriter::new(std::fs::File::create(dst)?);
    std::io::copy(&mut (&mut from).take(at), &mut to)?;
    from.seek(SeekFrom::Start(at + len))?;
    std::io::copy(&mut from, &mut to)?;
    to.flush()
}

/// The ICCP chunk of the WebP file at `path`, if it has one: `Err` with a reason when it is
/// over the limit or cut short.
fn webp_profile(path: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("reading the file: {e}"))?;
    let mut head = [0u8; 12];
    if file.read_exact(&mut head).is_err() || &head[0..4] != b"RIFF" || &head[8..12] != b"WEBP" {
        return Ok(None);
    }
    for _ in 0..WEBP_CHUNKS_MAX {
        let mut chunk = [0u8; 8];
        if file.read_exact(&mut chunk).is_err() {
            return Ok(None);
        }
        let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]) as usize;
        match &chunk[0..4] {
            b"ICCP" => {
                if size > ICC_PROFILE_BYTES_MAX {
                    return Err(format!(
                        "profile of {size} bytes is over the limit of {ICC_PROFILE_BYTES_MAX}"
                    ));
                }
                let mut icc = vec![0u8; size];
                file.read_exact(&mut icc)
                    .map_err(|_| "the ICCP chunk is cut short".to_string())?;
                return Ok(Some(icc));
            }
            // Only VP8X may come before ICCP; image data means there is none.
            b"VP8X" => {
                let mut skip = [0u8; 10];
                if size != skip.len() || file.read_exact(&mut skip).is_err() {
                    return Ok(None);
                }
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_that_are_not_rgb_or_grey_profiles_are_refused() {
        let mut icc = vec![0u8; 200];
        assert!(check_header(&icc, false).is_err());
        icc[36..40].copy_from_slice(b"acsp");
        icc[16..20].copy_from_slice(b"CMYK");
        assert!(check_header(&icc, false)
            .err()
            .is_some_and(|e| e.contains("CMYK")));
        icc[16..20].copy_from_slice(b"GRAY");
        assert!(check_header(&icc, false).is_err());
        assert!(matches!(check_header(&icc, true), Ok(Layout::Grey)));
        icc[16..20].copy_from_slice(b"RGB ");
        assert!(matches!(check_header(&icc, true), Ok(Layout::Rgb)));
        let big = vec![0u8; ICC_PROFILE_BYTES_MAX + 1];
        assert!(check_header(&big, false).is_err());
    }

    #[test]
    fn garbage_after_a_good_header_is_ignored_not_fatal() {
        let mut icc = vec![0xA5u8; 600];
        icc[0..4].copy_from_slice(&600u32.to_be_bytes());
        icc[16..20].copy_from_slice(b"RGB ");
        icc[36..40].copy_from_slice(b"acsp");
        let t = ToSrgb::for_profile(&icc, false);
        assert!(matches!(t.colour, Colour::Ignored(_)), "{:?}", t.colour);
        let mut img = Rgba {
            w: 1,
            h: 1,
            data: vec![10, 20, 30, 255],
        };
        t.apply(&mut img);
        assert_eq!(img.data, [10, 20, 30, 255]);
    }
}
