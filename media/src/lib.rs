//! Media probing and processing, in-process through ffmpeg-next. This crate is the only one
//! that links ffmpeg; it knows nothing of the domain (records live in `core`).
//!
//! For now it probes: container, streams, codecs, dimensions and duration, read from the
//! bytes (never from a file name or a declared type). Renditions and transcoding come with
//! the media issue.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Once;

use ffmpeg_next as ffmpeg;

/// What probing found in a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// The demuxer's short name(s), e.g. `mov,mp4,m4a,3gp,3g2,mj2` or `png_pipe`.
    pub container: String,
    pub duration_s: Option<f64>,
    pub streams: Vec<StreamInfo>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamInfo {
    pub kind: StreamKind,
    pub codec: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Video,
    Audio,
    Other,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// ffmpeg could not open or understand the input.
    #[error("not a readable media file: {0}")]
    Unreadable(String),
}

fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Quiet: ffmpeg's own logging would bypass tracing and flood stderr on bad input.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
        let _ = ffmpeg::init();
    });
}

/// Probes the file at `path` from its contents.
pub fn probe(path: &Path) -> Result<Probe, MediaError> {
    init();
    let input = ffmpeg::format::input(path).map_err(|e| MediaError::Unreadable(e.to_string()))?;
    let duration = input.duration();
    let duration_s = (duration > 0).then(|| duration as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE));
    let mut streams = Vec::new();
    for stream in input.streams() {
        let params = stream.parameters();
        let medium = params.medium();
        let codec = ffmpeg::codec::context::Context::from_parameters(params)
            .map_err(|e| MediaError::Unreadable(e.to_string()))?;
        let (kind, width, height) = match medium {
            ffmpeg::media::Type::Video => {
                let v = codec
                    .decoder()
                    .video()
                    .map_err(|e| MediaError::Unreadable(e.to_string()))?;
                (StreamKind::Video, v.width(), v.height())
            }
            ffmpeg::media::Type::Audio => (StreamKind::Audio, 0, 0),
            _ => (StreamKind::Other, 0, 0),
        };
        let codec_name = stream.parameters().id().name().to_string();
        streams.push(StreamInfo {
            kind,
            codec: codec_name,
            width,
            height,
        });
    }
    Ok(Probe {
        container: input.format().name().to_string(),
        duration_s,
        streams,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused() {
        let dir = std::env::temp_dir().join(format!("nova-media-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("junk.bin");
        std::fs::write(&path, b"this is not a picture").unwrap();
        assert!(probe(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
