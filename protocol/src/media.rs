//! Media bodies: a media record with its renditions, a user's storage use, and the tus
//! protocol's header names.

use serde::Serialize;

/// `GET /v1/media/{id}`, and the `202` of an upload.
#[derive(Debug, Serialize)]
pub struct MediaView {
    pub id: String,
    pub owner: String,
    /// `image` or `video`.
    pub kind: &'static str,
    /// `pending`, `processing`, `ready` or `failed`.
    pub state: &'static str,
    /// Why processing failed (only when `state` is `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub private: bool,
    /// Bytes of the upload as received.
    pub bytes: u64,
    pub created_at: String,
    pub metadata: MediaMetadataView,
    pub renditions: Vec<RenditionView>,
}

/// A media attached to a post or a message, as its readers see it: its state and, once
/// ready, its renditions. URLs of private media (attached to a followers-only post or a
/// message) are signed and expire; they are handed only to those who can read the post.
#[derive(Debug, Clone, Serialize)]
pub struct AttachedMediaView {
    pub id: String,
    /// `image` or `video`.
    pub kind: &'static str,
    /// `pending`, `processing`, `ready` or `failed`; `deleted` when the media is gone.
    pub state: &'static str,
    /// Size as shown (rotation applied); 0 when deleted.
    pub width: u32,
    pub height: u32,
    pub duration_ms: Option<u64>,
    pub blurhash: Option<String>,
    pub renditions: Vec<RenditionView>,
}

#[derive(Debug, Serialize)]
pub struct MediaMetadataView {
    pub container: String,
    /// Size as shown (rotation applied).
    pub width: u32,
    pub height: u32,
    /// Clockwise degrees applied to show the source upright.
    pub rotation: u16,
    pub duration_ms: Option<u64>,
    pub frame_rate: Option<f64>,
    pub video_codec: String,
    pub audio_codec: Option<String>,
    pub blurhash: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RenditionView {
    /// `thumb.jpg`, `display.jpg`, `360p.mp4`, `720p.mp4`, `1080p.mp4`, `poster.jpg`.
    pub name: String,
    /// Path (and for private media the signature) to fetch it from.
    pub url: String,
    pub mime: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct MediaEnvelope {
    pub media: MediaView,
}

/// A user's media storage, in `GET /v1/me`.
#[derive(Debug, Serialize)]
pub struct MediaUsageView {
    pub used_bytes: u64,
    pub quota_bytes: u64,
}

/// tus 1.0 headers.
pub mod tus {
    pub const RESUMABLE: &str = "tus-resumable";
    pub const VERSION: &str = "tus-version";
    pub const EXTENSION: &str = "tus-extension";
    pub const MAX_SIZE: &str = "tus-max-size";
    pub const UPLOAD_OFFSET: &str = "upload-offset";
    pub const UPLOAD_LENGTH: &str = "upload-length";
    pub const UPLOAD_METADATA: &str = "upload-metadata";
    /// The protocol version spoken.
    pub const PROTOCOL: &str = "1.0.0";
    pub const EXTENSIONS: &str = "creation,termination";
    pub const CONTENT_TYPE: &str = "application/offset+octet-stream";
    /// Nova's own: the media record a finished upload became.
    pub const MEDIA_ID: &str = "nova-media-id";
}
