//! Probing: what a file is, read from its bytes only (never its name or declared type), and
//! the limits checked against what the headers claim, before anything is decoded.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ffmpeg_next as ffmpeg;

use crate::sniff::{self, ImageFormat};
use crate::MediaError;

/// Demuxers a video may come in: MP4/QuickTime and Matroska/WebM. Everything else is refused.
const VIDEO_DEMUXERS: &str = "mov,matroska";
/// Video codecs decoded.
const VIDEO_CODECS: &[&str] = &["h264", "hevc", "vp8", "vp9", "av1", "mpeg4"];
/// Audio codecs decoded (another audio codec is dropped, the video kept).
const AUDIO_CODECS: &[&str] = &["aac", "mp3", "opus", "vorbis", "flac", "alac", "pcm_s16le"];

/// Limits on one file, checked against its headers before decoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Width x height of an image or a video frame.
    pub pixels_max: u64,
    /// Longest side of an image or a video frame.
    pub side_pixels_max: u32,
    pub duration_ms_max: u64,
    pub frame_rate_max: f64,
    /// Wall time for the whole processing of one file.
    pub time_budget_ms: u64,
    /// Threads each decoder and encoder may use (1: a file's processing stays on one core).
    pub codec_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            pixels_max: 40_000_000,
            side_pixels_max: 16_384,
            duration_ms_max: 10 * 60 * 1000,
            frame_rate_max: 120.0,
            time_budget_ms: 10 * 60 * 1000,
            codec_threads: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Video,
}

/// What probing found.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub kind: Kind,
    /// The demuxer's short name, e.g. `png_pipe` or `mov,mp4,m4a,3gp,3g2,mj2`.
    pub container: String,
    /// Stored (coded) size of the picture.
    pub width: u32,
    pub height: u32,
    /// Clockwise rotation (0, 90, 180, 270) needed to show it upright: from the EXIF
    /// orientation of an image or the display matrix of a video.
    pub rotation: u16,
    /// EXIF orientation (1..=8; 1 = as stored). Mirrored orientations have no `rotation`.
    pub orientation: u8,
    pub duration_ms: Option<u64>,
    pub frame_rate: Option<f64>,
    pub video_codec: String,
    pub pixel_format: String,
    pub audio_codec: Option<String>,
}

impl Probe {
    /// Size as shown (rotation applied).
    pub fn display_size(&self) -> (u32, u32) {
        if self.rotation == 90 || self.rotation == 270 || (5..=8).contains(&self.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

pub(crate) fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // Quiet: ffmpeg's own logging would bypass tracing and flood stderr on bad input.
        // NOVA_FFMPEG_LOG=1 turns it on, for debugging a file that fails.
        let level = if std::env::var_os("NOVA_FFMPEG_LOG").is_some() {
            ffmpeg::util::log::Level::Info
        } else {
            ffmpeg::util::log::Level::Fatal
        };
        ffmpeg::util::log::set_level(level);
        let _ = ffmpeg::init();
    });
}

/// A deadline for one file's work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    until: Instant,
    ms: u64,
}

impl Budget {
    pub(crate) fn new(ms: u64) -> Budget {
        Budget {
            until: Instant::now() + Duration::from_millis(ms),
            ms,
        }
    }

    pub(crate) fn check(&self) -> Result<(), MediaError> {
        if Instant::now() >= self.until {
            Err(MediaError::TimedOut { budget_ms: self.ms })
        } else {
            Ok(())
        }
    }
}

/// Opens `path` with only the demuxers in `whitelist` allowed, and only the file protocol.
pub(crate) fn open(
    path: &Path,
    whitelist: &str,
) -> Result<ffmpeg::format::context::Input, MediaError> {
    init();
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("format_whitelist", whitelist);
    opts.set("protocol_whitelist", "file");
    ffmpeg::format::input_with_dictionary(&path, opts).map_err(open_error)
}

/// Unknown data and a demuxer outside the whitelist (EINVAL) are "not ours"; the rest is a
/// damaged file.
fn open_error(e: ffmpeg::Error) -> MediaError {
    match e {
        ffmpeg::Error::InvalidData
        | ffmpeg::Error::Other {
            errno: libc::EINVAL,
        } => MediaError::Unsupported("not an image or video we take".into()),
        other => MediaError::Unreadable(other.to_string()),
    }
}

/// Opens `path` with the demuxer `name` forced (the format was recognised from the bytes, so
/// ffmpeg does not get to guess from the file name).
pub(crate) fn open_as(
    path: &Path,
    name: &str,
) -> Result<ffmpeg::format::context::Input, MediaError> {
    init();
    let cname =
        std::ffi::CString::new(name).map_err(|_| MediaError::Failed("demuxer name".into()))?;
    // SAFETY: av_find_input_format takes a NUL-terminated name and returns a pointer to a
    // static demuxer description (or null), which Input::wrap only reads.
    let format = unsafe {
        let ptr = ffmpeg::ffi::av_find_input_format(cname.as_ptr());
        if ptr.is_null() {
            return Err(MediaError::Failed(format!(
                "no {name} demuxer in this ffmpeg"
            )));
        }
        ffmpeg::format::format::Input::wrap(ptr as *mut _)
    };
    let mut opts = ffmpeg::Dictionary::new();
    opts.set("format_whitelist", name);
    opts.set("protocol_whitelist", "file");
    match ffmpeg::format::open_with(&path, &ffmpeg::format::format::Format::Input(format), opts) {
        Ok(ffmpeg::format::context::Context::Input(input)) => Ok(input),
        Ok(_) => Err(MediaError::Failed("opened as an output".into())),
        Err(e) => Err(open_error(e)),
    }
}

fn demuxer_for(format: ImageFormat) -> (&'static str, &'static str) {
    match format {
        ImageFormat::Jpeg => ("jpeg_pipe", "mjpeg"),
        ImageFormat::Png => ("png_pipe", "png"),
        ImageFormat::Gif => ("gif", "gif"),
        ImageFormat::WebP => ("webp_pipe", "webp"),
    }
}

fn limit(code: &'static str, message: String) -> MediaError {
    MediaError::Limit { code, message }
}

fn check_size(w: u32, h: u32, limits: &Limits) -> Result<(), MediaError> {
    if u64::from(w) * u64::from(h) > limits.pixels_max
        || w > limits.side_pixels_max
        || h > limits.side_pixels_max
    {
        return Err(limit(
            "too_many_pixels",
            format!(
                "{w}x{h} is more than {} pixels or {} on a side",
                limits.pixels_max, limits.side_pixels_max
            ),
        ));
    }
    Ok(())
}

/// Probes the file at `path` and checks it against `limits`. Images are measured from their
/// own header first, so an oversized one is refused before ffmpeg opens it.
pub fn inspect(path: &Path, limits: &Limits) -> Result<Probe, MediaError> {
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(sniff::SNIFF_BYTES_MAX as u64)
        .read_to_end(&mut head)?;
    if head.is_empty() {
        return Err(MediaError::Unreadable("the file is empty".into()));
    }
    if let Some(format) = sniff::image_format(&head) {
        let header = sniff::image_header(&head)
            .ok_or_else(|| MediaError::Unreadable(format!("damaged {} header", format.name())))?;
        check_size(header.width, header.height, limits)?;
        if header.format == ImageFormat::WebP && (sniff::animated_webp(&head) || webp_frames(path)?)
        {
            return Err(MediaError::Unsupported(
                "animated WebP is not taken; send it as a GIF or a video".into(),
            ));
        }
        if !image_complete(path, header.format, &head)? {
            return Err(MediaError::Unreadable(format!(
                "the {} is truncated",
                header.format.name()
            )));
        }
        return probe_image(path, header);
    }
    probe_video(path, limits)
}

/// Chunks of a WebP looked at for animation frames (`webp_frames`); a still one has a few.
const WEBP_CHUNKS_MAX: usize = 64;

/// Whether a WebP holds animation chunks (ANIM, ANMF), whatever its VP8X flags say: the
/// RIFF chunks' headers are walked, their payloads skipped.
fn webp_frames(path: &Path) -> Result<bool, MediaError> {
    use std::io::{Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut at = 12u64;
    for _ in 0..WEBP_CHUNKS_MAX {
        let mut chunk = [0u8; 8];
        if at + 8 > len {
            break;
        }
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut chunk)?;
        if &chunk[..4] == b"ANIM" || &chunk[..4] == b"ANMF" {
            return Ok(true);
        }
        let size = u64::from(u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]));
        at += 8 + size + (size & 1);
    }
    Ok(false)
}

fn image_complete(path: &Path, format: ImageFormat, head: &[u8]) -> Result<bool, MediaError> {
    use std::io::{Seek as _, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if format == ImageFormat::WebP {
        return Ok(sniff::riff_complete(head, len));
    }
    let start = len.saturating_sub(sniff::TAIL_BYTES as u64);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(sniff::TAIL_BYTES);
    f.take(sniff::TAIL_BYTES as u64).read_to_end(&mut tail)?;
    Ok(sniff::complete(format, &tail, len))
}

/// Reads the last second of a video: a file cut short fails here, at upload, instead of
/// during processing. Bounded: at most `TAIL_PACKETS_MAX` packets are read.
fn video_complete(
    input: &mut ffmpeg::format::context::Input,
    duration: i64,
    len: u64,
) -> Result<(), MediaError> {
    const TAIL_PACKETS_MAX: usize = 2_000;
    let cut = || MediaError::Unreadable("the video is truncated".into());
    let at = (duration - i64::from(ffmpeg::ffi::AV_TIME_BASE)).max(0);
    input.seek(at, ..at).map_err(|_| cut())?;
    let mut packet = ffmpeg::Packet::empty();
    for _ in 0..TAIL_PACKETS_MAX {
        match packet.read(input) {
            Ok(()) => {
                let end = packet.position() as u64 + packet.size() as u64;
                if packet.position() >= 0 && end > len {
                    return Err(cut());
                }
            }
            Err(ffmpeg::Error::Eof) => return Ok(()),
            Err(_) => return Err(cut()),
        }
    }
    Ok(())
}

fn probe_image(path: &Path, header: sniff::ImageHeader) -> Result<Probe, MediaError> {
    let (demuxer, codec) = demuxer_for(header.format);
    let input = open_as(path, demuxer)?;
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| MediaError::Unreadable("no picture in the image".into()))?;
    let params = stream.parameters();
    let id = params.id();
    if id.name() != codec {
        return Err(MediaError::Unreadable(format!(
            "a {} header over {} data",
            header.format.name(),
            id.name()
        )));
    }
    let decoder = ffmpeg::codec::context::Context::from_parameters(params)
        .and_then(|c| c.decoder().video())
        .map_err(|e| MediaError::Unreadable(e.to_string()))?;
    // ffmpeg may not know the size before decoding (GIF, WebP): the header's is checked.
    let (w, h) = (decoder.width(), decoder.height());
    if (w, h) != (0, 0) && (w, h) != (header.width, header.height) {
        return Err(MediaError::Unreadable(format!(
            "the header says {}x{}, the data {w}x{h}",
            header.width, header.height
        )));
    }
    let rotation = match header.orientation {
        3 => 180,
        6 => 90,
        8 => 270,
        _ => 0,
    };
    Ok(Probe {
        kind: Kind::Image,
        container: input.format().name().to_string(),
        width: header.width,
        height: header.height,
        rotation,
        orientation: header.orientation,
        duration_ms: None,
        frame_rate: None,
        video_codec: codec.to_string(),
        pixel_format: format!("{:?}", decoder.format()).to_lowercase(),
        audio_codec: None,
    })
}

fn probe_video(path: &Path, limits: &Limits) -> Result<Probe, MediaError> {
    let mut input = open(path, VIDEO_DEMUXERS)?;
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| MediaError::Unsupported("no video stream".into()))?;
    let codec = stream.parameters().id().name().to_string();
    if !VIDEO_CODECS.contains(&codec.as_str()) {
        return Err(MediaError::Unsupported(format!("video codec {codec}")));
    }
    let decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| MediaError::Unreadable(e.to_string()))?;
    let (width, height) = (decoder.width(), decoder.height());
    if width == 0 || height == 0 {
        return Err(MediaError::Unreadable("the video has no frame size".into()));
    }
    check_size(width, height, limits)?;
    let rate = [stream.avg_frame_rate(), stream.rate()]
        .into_iter()
        .find(|r| r.numerator() > 0 && r.denominator() > 0)
        .map(f64::from);
    if let Some(fps) = rate.filter(|f| *f > limits.frame_rate_max) {
        return Err(limit(
            "frame_rate_too_high",
            format!(
                "{fps:.2} frames per second is more than {}",
                limits.frame_rate_max
            ),
        ));
    }
    let duration = input.duration();
    if duration <= 0 {
        return Err(MediaError::Unreadable("the video has no duration".into()));
    }
    let duration_ms = (duration as u64).saturating_mul(1000) / ffmpeg::ffi::AV_TIME_BASE as u64;
    if duration_ms > limits.duration_ms_max {
        return Err(limit(
            "too_long",
            format!(
                "{:.1} s is longer than {} s",
                duration_ms as f64 / 1000.0,
                limits.duration_ms_max / 1000
            ),
        ));
    }
    let len = std::fs::metadata(path)?.len();
    let (rotation, pixel_format) = (display_rotation(&stream), decoder.format());
    drop(decoder);
    let audio_codec = input
        .streams()
        .best(ffmpeg::media::Type::Audio)
        .map(|s| s.parameters().id().name().to_string())
        .filter(|c| AUDIO_CODECS.contains(&c.as_str()));
    let container = input.format().name().to_string();
    video_complete(&mut input, duration, len)?;
    Ok(Probe {
        kind: Kind::Video,
        container,
        width,
        height,
        rotation,
        orientation: 1,
        duration_ms: Some(duration_ms),
        frame_rate: rate,
        video_codec: codec,
        pixel_format: format!("{pixel_format:?}").to_lowercase(),
        audio_codec,
    })
}

/// Clockwise rotation from a stream's display matrix, rounded to a quarter turn.
pub(crate) fn display_rotation(stream: &ffmpeg::format::stream::Stream) -> u16 {
    for side in stream.side_data() {
        if side.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix
            && side.data().len() >= 36
        {
            // The side data is nine i32 (36 bytes, checked), copied out to be aligned.
            let m: [i32; 9] = std::array::from_fn(|i| {
                let b = &side.data()[i * 4..i * 4 + 4];
                i32::from_ne_bytes([b[0], b[1], b[2], b[3]])
            });
            // SAFETY: `m` is nine valid i32; av_display_rotation_get only reads them.
            let ccw = unsafe { ffmpeg::ffi::av_display_rotation_get(m.as_ptr()) };
            if ccw.is_nan() {
                return 0;
            }
            // The matrix gives the counter-clockwise angle; showing upright turns clockwise.
            let cw = (-ccw).rem_euclid(360.0);
            return ((cw / 90.0).round() as u16 % 4) * 90;
        }
    }
    0
}
