//! Nova's wire format: the route table, request and response bodies, the error envelope, and
//! JSON through simd-json. Only this crate knows what goes over the wire; the engine maps
//! domain results onto these types.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod account;
mod body;
mod json;
mod media;
mod moderation;
mod notify;
mod routes;
mod time;

pub use account::*;
pub use body::*;
pub use json::{error_body, parse_json, to_json, WireError};
pub use media::{
    tus, AttachedMediaView, MediaEnvelope, MediaMetadataView, MediaUsageView, MediaView,
    RenditionView,
};
pub use moderation::*;
pub use notify::*;
pub use routes::{Route, RouteMiss, ROUTES};
pub use time::rfc3339;
