//! Media probing and processing, in-process through ffmpeg-next, and the content-addressed
//! blob store. This crate is the only one that links ffmpeg; it knows nothing of the domain
//! (records and reference counts live in `core`).
//!
//! - `inspect`: what a file is, from its bytes (never its name or declared type), checked
//!   against `Limits` before anything is decoded (an image's own header is read by hand, so
//!   a PNG that claims 50,000 x 50,000 costs 24 bytes of reading).
//! - `process`: renditions into a directory. Images: upright, converted to sRGB from their
//!   embedded ICC profile (`icc`), metadata stripped (the output is made from pixels alone,
//!   so it carries no EXIF, XMP or profile), a thumbnail (320) and a display copy (1280),
//!   never enlarged, and a blurhash of the converted pixels. Videos: an H.264 + AAC faststart MP4 ladder (360p, 720p, 1080p, never
//!   above the source; a compliant rung is copied, not re-encoded) and a poster.
//! - `BlobStore`: SHA-256 named files, durable before they are named; one per shard, each
//!   a hard link of one `SharedBlobs` file, so identical content is one file across shards.
//!
//! Everything here blocks and may take seconds: callers run it on their own threads.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod blobs;
mod blurhash;
mod icc;
mod image;
mod probe;
mod sniff;
mod video;

use std::path::{Path, PathBuf};

pub use blobs::{valid_id, BlobId, BlobStore, SharedBlobs, Swept};
pub use icc::{Colour, ICC_PROFILE_BYTES_MAX};
pub use image::fit;
pub use probe::{inspect, Kind, Limits, Probe};
pub use sniff::{image_header, ImageFormat, ImageHeader};
pub use video::{compliant, ladder, AAC_BIT_RATE, X264_CRF, X264_PRESET};

/// Longest side of an image's thumbnail.
pub const THUMB_SIDE_MAX: u32 = 320;
/// Longest side of an image's display copy.
pub const DISPLAY_SIDE_MAX: u32 = 1280;
/// BlurHash components (x, y).
const BLURHASH_COMPONENTS: (u32, u32) = (4, 3);
/// Side of the picture a blurhash is computed from (it only keeps 12 numbers anyway).
const BLURHASH_SIDE: u32 = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// Not an image or video we take (format or codec).
    #[error("unsupported media: {0}")]
    Unsupported(String),
    /// Recognised but damaged, truncated, or its header contradicts its data.
    #[error("unreadable media: {0}")]
    Unreadable(String),
    /// Over a limit (pixels, duration, frame rate); `code` names which.
    #[error("{message}")]
    Limit { code: &'static str, message: String },
    /// Processing took longer than the time budget.
    #[error("processing took longer than {budget_ms} ms")]
    TimedOut { budget_ms: u64 },
    /// ffmpeg failed while making renditions of a file that probed fine.
    #[error("processing failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    /// `thumb.jpg`, `display.jpg`, `360p.mp4`, `720p.mp4`, `1080p.mp4`, `poster.jpg`.
    pub name: String,
    pub path: PathBuf,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// What processing made.
#[derive(Debug, Clone)]
pub struct Processed {
    pub renditions: Vec<Rendition>,
    pub blurhash: Option<String>,
    /// What was done about an image's embedded colour profile (`Untagged` for videos).
    pub colour: Colour,
}

/// Makes the renditions of the file at `path` (already `inspect`ed into `probe`) inside
/// `out_dir`, within `limits.time_budget_ms`.
pub fn process(
    path: &Path,
    probe: &Probe,
    out_dir: &Path,
    limits: &Limits,
) -> Result<Processed, MediaError> {
    probe::init();
    let budget = probe::Budget::new(limits.time_budget_ms);
    match probe.kind {
        Kind::Image => process_image(path, probe, out_dir, &budget),
        Kind::Video => {
            let (renditions, blurhash) =
                video::process(path, probe, out_dir, &budget, limits.codec_threads)?;
            Ok(Processed {
                renditions,
                blurhash,
                colour: Colour::Untagged,
            })
        }
    }
}

fn process_image(
    path: &Path,
    probe: &Probe,
    out_dir: &Path,
    budget: &probe::Budget,
) -> Result<Processed, MediaError> {
    // FFmpeg 5.1 fails a PNG whose iCCP chunk is damaged and inflates it without a bound:
    // such a chunk is left out of a copy that is decoded instead.
    let mut unusable = None;
    let mut source = path.to_path_buf();
    if probe.container == "png_pipe" {
        if let icc::PngIccp::Unusable { reason, at, len } = icc::check_png(path)? {
            source = out_dir.join("source-without-iccp.png");
            icc::copy_without(path, at, len, &source)?;
            unusable = Some(reason);
        }
    }
    let frame = image::first_frame(&source, &probe.container, budget);
    if source != path {
        let _ = std::fs::remove_file(&source);
    }
    let frame = frame?;
    let colour = match unusable {
        Some(reason) => icc::ToSrgb::ignored(reason),
        None => icc::ToSrgb::for_frame(&frame, path, &probe.container),
    };
    let mut renditions = Vec::with_capacity(2);
    let mut hash = None;
    for (name, side) in [
        ("thumb.jpg", THUMB_SIDE_MAX),
        ("display.jpg", DISPLAY_SIDE_MAX),
    ] {
        budget.check()?;
        let img = image::upright(&frame, probe.orientation, side, &colour)?;
        if hash.is_none() {
            hash = Some(blurhash_of(&img)?);
        }
        let jpeg = image::encode_jpeg(&img)?;
        let out = out_dir.join(name);
        std::fs::write(&out, &jpeg)?;
        renditions.push(Rendition {
            name: name.to_string(),
            path: out,
            mime: "image/jpeg",
            width: img.w,
            height: img.h,
            bytes: jpeg.len() as u64,
        });
    }
    Ok(Processed {
        renditions,
        blurhash: hash,
        colour: colour.colour,
    })
}

/// A blurhash of an upright RGBA picture, computed on a small copy of it.
pub(crate) fn blurhash_of(img: &image::Rgba) -> Result<String, MediaError> {
    let (w, h) = fit(img.w, img.h, BLURHASH_SIDE);
    let small = if (w, h) == (img.w, img.h) {
        None
    } else {
        let mut frame =
            ffmpeg_next::frame::Video::new(ffmpeg_next::format::Pixel::RGBA, img.w, img.h);
        let stride = frame.stride(0);
        let row = img.w as usize * 4;
        let plane = frame.data_mut(0);
        for y in 0..img.h as usize {
            plane[y * stride..y * stride + row].copy_from_slice(&img.data[y * row..(y + 1) * row]);
        }
        Some(image::to_rgba(&frame, w, h)?)
    };
    let src = small.as_ref().unwrap_or(img);
    let (cx, cy) = BLURHASH_COMPONENTS;
    Ok(blurhash::encode(cx, cy, src.w, src.h, &src.data))
}
