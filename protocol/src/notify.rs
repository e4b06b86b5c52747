//! Bodies of the notification and Web Push routes.

use serde::{Deserialize, Serialize};

/// One notification, as listed and as pushed (the Web Push payload is this JSON).
#[derive(Debug, Clone, Serialize)]
pub struct NotificationView {
    pub id: String,
    /// follow, follow_request, like, comment, reply, mention, message, media_ready
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Who caused it; null for the system (media ready).
    pub actor: Option<ActorView>,
    /// What it is about; null for a follow.
    pub subject: Option<SubjectView>,
    pub created_at: String,
    pub read: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActorView {
    pub id: String,
    /// null when the account is gone.
    pub username: Option<String>,
    /// The actor's display name as it is now; null when the account is gone.
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubjectView {
    /// post, comment, message, media
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    /// The post a comment belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_id: Option<String>,
    /// The conversation a message belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
}

/// `POST /v1/notifications/read`: exactly one of `ids`, `all: true` or `up_to`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsReadRequest {
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    #[serde(default)]
    pub all: Option<bool>,
    #[serde(default)]
    pub up_to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MarkedRead {
    pub marked: u64,
    pub unread: u64,
}

#[derive(Debug, Serialize)]
pub struct UnreadCount {
    pub unread: u64,
}

/// A browser's `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSubscriptionRequest {
    pub endpoint: String,
    pub keys: PushKeys,
    /// Sent by browsers; not used.
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushKeys {
    pub p256dh: String,
    pub auth: String,
}

#[derive(Debug, Serialize)]
pub struct PushSubscriptionView {
    pub endpoint: String,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct VapidPublicKey {
    /// The application server key (uncompressed P-256 point, base64url), for
    /// `pushManager.subscribe({applicationServerKey})`.
    pub public_key: String,
}
