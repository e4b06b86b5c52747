//! Request and response bodies. Requests deny unknown fields, so a typo is an error rather
//! than a silently ignored setting. IDs go out as decimal strings.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    pub password: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub login: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    pub email: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirm {
    pub token: String,
    pub password: String,
}

/// A user as its owner sees it (with email).
#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub email: String,
    pub email_verified: bool,
    pub created_at: String,
    /// Media storage used and allowed (only in `GET /v1/me`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::MediaUsageView>,
}

#[derive(Debug, Serialize)]
pub struct UserEnvelope {
    pub user: UserView,
}

#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub session_id: String,
    pub user: UserView,
}

#[derive(Debug, Serialize)]
pub struct SessionView {
    pub id: String,
    pub created_at: String,
    pub last_used_at: String,
    pub ip: String,
    pub user_agent: String,
    pub current: bool,
}

#[derive(Debug, Serialize)]
pub struct EmailView {
    pub id: String,
    pub to: String,
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub status: &'static str,
    pub created_at: String,
}

/// Every list: the page and the cursor of the next one.
#[derive(Debug, Serialize)]
pub struct List<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub status: &'static str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePostRequest {
    pub text: String,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub reply_to: Option<String>,
    #[serde(default)]
    pub media_ids: Vec<String>,
}

/// A user as lists, posts, comments and messages show it: its display name and avatar as
/// they are now (the live stream's events carry the names as they were, and no avatar).
#[derive(Debug, Clone, Serialize)]
pub struct UserBrief {
    pub id: String,
    pub username: String,
    pub display_name: String,
    /// The avatar image; left out when none is set or its media is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<crate::AttachedMediaView>,
}

#[derive(Debug, Serialize)]
pub struct MentionView {
    pub id: String,
    pub username: String,
}

#[derive(Debug, Serialize)]
pub struct LinkView {
    pub url: String,
    pub short: String,
}

#[derive(Debug, Serialize)]
pub struct PostView {
    pub id: String,
    pub author: UserBrief,
    pub text: String,
    pub visibility: &'static str,
    pub reply_to: Option<String>,
    pub mentions: Vec<MentionView>,
    pub hashtags: Vec<String>,
    pub urls: Vec<LinkView>,
    pub media_ids: Vec<String>,
    /// The media of `media_ids` with their state and renditions (resolved when read).
    pub media: Vec<crate::AttachedMediaView>,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub likes_count: u64,
    pub comments_count: u64,
    /// Whether the caller likes it.
    pub liked: bool,
    pub views_count: u64,
}

#[derive(Debug, Serialize)]
pub struct PostEnvelope {
    pub post: PostView,
}

#[derive(Debug, Serialize)]
pub struct ProfileView {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub bio: String,
    pub links: Vec<String>,
    pub created_at: String,
    pub followers_count: u64,
    pub following_count: u64,
    pub posts_count: u64,
    pub private: bool,
    /// The avatar image (null when none is set, or its media was deleted).
    pub avatar: Option<crate::AttachedMediaView>,
}

#[derive(Debug, Serialize)]
pub struct ProfileEnvelope {
    pub user: ProfileView,
    /// The caller's relation with the user; absent on the caller's own profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relationship: Option<Relationship>,
}

/// How the caller and another user stand.
#[derive(Debug, Serialize)]
pub struct Relationship {
    pub following: bool,
    pub requested: bool,
    pub followed_by: bool,
    pub muting: bool,
}

#[derive(Debug, Serialize)]
pub struct Following {
    pub following: bool,
    /// A request waits for a private account's approval.
    pub requested: bool,
}

#[derive(Debug, Serialize)]
pub struct Blocking {
    pub blocking: bool,
}

/// DeathStarBench's post, as its clients read it.
#[derive(Debug, Serialize)]
pub struct DsbPost<'a> {
    pub post_id: String,
    pub creator: DsbCreator<'a>,
    pub req_id: String,
    pub text: &'a str,
    pub user_mentions: Vec<DsbCreator<'a>>,
    pub media: Vec<DsbMedia<'a>>,
    pub urls: Vec<DsbUrl<'a>>,
    pub timestamp: String,
    pub post_type: u32,
}

#[derive(Debug, Serialize)]
pub struct DsbCreator<'a> {
    pub user_id: String,
    pub username: &'a str,
}

#[derive(Debug, Serialize)]
pub struct DsbMedia<'a> {
    pub media_id: &'a str,
    pub media_type: &'a str,
}

#[derive(Debug, Serialize)]
pub struct DsbUrl<'a> {
    pub shortened_url: &'a str,
    pub expanded_url: &'a str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCommentRequest {
    pub text: String,
    #[serde(default)]
    pub reply_to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditCommentRequest {
    pub text: String,
}

#[derive(Debug, Serialize)]
pub struct CommentView {
    pub id: String,
    pub post_id: String,
    pub author: UserBrief,
    pub text: String,
    pub reply_to: Option<String>,
    pub depth: u32,
    pub created_at: String,
    pub edited_at: Option<String>,
    pub likes_count: u64,
    pub replies_count: u64,
    pub liked: bool,
}

#[derive(Debug, Serialize)]
pub struct CommentEnvelope {
    pub comment: CommentView,
}

#[derive(Debug, Serialize)]
pub struct Liked {
    pub liked: bool,
    pub likes_count: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateProfileRequest {
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub bio: Option<String>,
    #[serde(default)]
    pub links: Option<Vec<String>>,
    /// Absent: unchanged; null: removed; an id: one of the caller's images.
    #[serde(default, deserialize_with = "present")]
    pub avatar_media_id: Option<Option<String>>,
}

/// A field that may be absent (`None`, by `#[serde(default)]`), null (`Some(None)`) or set.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePreferencesRequest {
    #[serde(default)]
    pub default_visibility: Option<String>,
    #[serde(default)]
    pub language: Option<String>,
    #[serde(default)]
    pub hide_replies: Option<bool>,
    #[serde(default)]
    pub muted_words: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct PreferencesView {
    pub default_visibility: &'static str,
    pub language: String,
    pub hide_replies: bool,
    pub muted_words: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettingsRequest {
    #[serde(default)]
    pub private: Option<bool>,
    #[serde(default)]
    pub messages_from: Option<String>,
    #[serde(default)]
    pub email_digest: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SettingsView {
    pub private: bool,
    pub messages_from: &'static str,
    pub email_digest: &'static str,
}

#[derive(Debug, Serialize)]
pub struct SettingsEnvelope {
    pub settings: SettingsView,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditPostRequest {
    pub text: String,
}

/// A pending follow request, as its addressee sees it.
#[derive(Debug, Serialize)]
pub struct FollowRequestView {
    pub user: UserBrief,
    pub requested_at: String,
}

/// A user the caller blocks, since when.
#[derive(Debug, Serialize)]
pub struct BlockView {
    pub user: UserBrief,
    pub blocked_at: String,
}

/// A user the caller mutes, since when.
#[derive(Debug, Serialize)]
pub struct MuteView {
    pub user: UserBrief,
    pub muted_at: String,
}

#[derive(Debug, Serialize)]
pub struct PreferencesEnvelope {
    pub preferences: PreferencesView,
}

#[derive(Debug, Serialize)]
pub struct Muting {
    pub muting: bool,
}

// ---- direct messages ---------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConversationRequest {
    pub participants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    pub text: String,
    #[serde(default)]
    pub media_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditMessageRequest {
    pub text: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MarkReadRequest {
    #[serde(default)]
    pub up_to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MessageView {
    pub id: String,
    pub conversation_id: String,
    pub sender: UserBrief,
    pub text: String,
    pub media_ids: Vec<String>,
    /// The media of `media_ids` with their state and renditions (resolved when read).
    pub media: Vec<crate::AttachedMediaView>,
    pub created_at: String,
    pub edited_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct MessageEnvelope {
    pub message: MessageView,
}

#[derive(Debug, Serialize)]
pub struct ReadReceipt {
    pub user_id: String,
    /// The last message this participant has read (null: none).
    pub last_read_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ConversationView {
    pub id: String,
    pub participants: Vec<UserBrief>,
    pub created_at: String,
    pub last_activity_at: String,
    pub last_message: Option<MessageView>,
    pub unread_count: u64,
    pub read_receipts: Vec<ReadReceipt>,
    /// Who is typing now (only in `GET /v1/conversations/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typing: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct ConversationEnvelope {
    pub conversation: ConversationView,
}

#[derive(Debug, Serialize)]
pub struct ReadState {
    pub last_read_id: Option<String>,
}

// ---- search (issue 6) ----

/// `POST /v1/search`: the query of `GET /v1/search` as a JSON body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub q: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub limit: Option<u64>,
    #[serde(default)]
    pub cursor: Option<String>,
}

/// A page of search results; `partial` when some shard did not answer in time.
#[derive(Debug, Serialize)]
pub struct SearchPage<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
    pub partial: bool,
}

/// A hashtag and how many posts use it.
#[derive(Debug, Serialize)]
pub struct TagView {
    pub name: String,
    pub count: u64,
}
