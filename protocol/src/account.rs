//! Bodies of the account routes: `DELETE /v1/me` and the files of `GET /v1/me/export`.

use serde::{Deserialize, Serialize};

/// `DELETE /v1/me`: the current password, as re-authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteAccountRequest {
    pub password: String,
}

/// `profile.json` of an export.
#[derive(Debug, Clone, Serialize)]
pub struct ExportProfile {
    pub id: String,
    pub username: String,
    pub email: String,
    pub email_verified: bool,
    pub display_name: String,
    pub created_at: String,
    pub bio: String,
    pub links: Vec<String>,
    pub avatar_media_id: Option<String>,
    pub default_visibility: &'static str,
    pub language: String,
    pub private: bool,
    pub messages_from: &'static str,
    pub email_digest: &'static str,
    pub hide_replies: bool,
    pub muted_words: Vec<String>,
}

/// One post in `posts.json`.
#[derive(Debug, Clone, Serialize)]
pub struct ExportPost {
    pub id: String,
    pub text: String,
    pub visibility: &'static str,
    pub reply_to: Option<String>,
    pub hashtags: Vec<String>,
    pub created_at: String,
    pub edited_at: Option<String>,
}

/// One comment in `comments.json` (the user's comments, wherever the post lives).
#[derive(Debug, Clone, Serialize)]
pub struct ExportComment {
    pub id: String,
    pub post_id: String,
    pub parent_id: Option<String>,
    pub text: String,
    pub created_at: String,
    pub edited_at: Option<String>,
}

/// One conversation in `messages.json` (`{"conversation": ..., "messages": [...]}`).
#[derive(Debug, Clone, Serialize)]
pub struct ExportConversation {
    pub id: String,
    pub participants: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportMessage {
    pub id: String,
    pub sender_id: String,
    pub sender_username: String,
    pub text: String,
    pub media_ids: Vec<String>,
    pub created_at: String,
    pub edited_at: Option<String>,
}

/// One relation in `follows.json` (`following`, `followers`, `blocks`, `mutes`).
#[derive(Debug, Clone, Serialize)]
pub struct ExportRelation {
    pub user_id: String,
    pub since: String,
}

/// One upload in `media.json`; its original is `file` in the zip.
#[derive(Debug, Clone, Serialize)]
pub struct ExportMedia {
    pub id: String,
    pub kind: &'static str,
    pub state: &'static str,
    pub private: bool,
    pub bytes: u64,
    pub sha256: String,
    pub created_at: String,
    /// `media/<id>`, or null when the file could not be included.
    pub file: Option<String>,
}
