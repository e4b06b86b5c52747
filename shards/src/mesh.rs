//! The typed messages shards send each other. Every request-caused message carries its
//! deadline; the receiver drops work whose deadline has passed. Replies travel on a channel
//! carried in the message.

use std::sync::Arc;
use std::time::Instant;

use nova_core::communication::QueuedEmail;
use nova_core::content::{Comment, Post, Visibility};
use nova_core::events::Event;
use nova_core::identity::DisplayName;
use nova_core::identity::{AuthEvent, Email, EmailClaim, Issued, Refreshed, Session, User};
use nova_core::messages::{Message, Summary};
use nova_core::profiles::{Digest, FeedPreferences, MessagesFrom, Preferences, Settings};
use nova_core::social;
use nova_core::tokens::RefreshToken;

use crate::error::Fail;
use crate::feeds::SharedPost;
use crate::metrics::Snapshot;
use crate::stream::StreamEvent;

pub type Reply<T> = flume::Sender<Result<T, Fail>>;

/// Who is logging in: a username's key routes to the user's shard directly; an email has
/// been resolved to the user's id on the email's shard first.
#[derive(Debug, Clone)]
pub enum LoginWho {
    UsernameKey(String),
    UserId(u64),
}

/// New posts offered by shard `from` to a shard where someone is to see them
/// (`Shard::offer`). Offers travel on a channel of their own beside the inbox and are not
/// answered: the author's shard answers its compose once the offer is sent, and the target
/// takes every offer waiting for it before it serves a home feed or any message from its
/// inbox (`Shard::take_offers`). So a post shows in a follower's feed as soon as its
/// compose is answered, and ahead of anything its author's shard sent after it (an edit).
/// Each is applied durably right after and acknowledged to `from` with `Acked`; one that
/// is lost stays in `from`'s outbox and is delivered again.
pub struct Offer {
    pub from: usize,
    pub events: Vec<(u64, Event)>,
}

/// Operations a shard runs on data it owns.
pub enum Op {
    /// Who holds the claim on an email key (on the email's shard).
    EmailOwner {
        key: String,
        reply: Reply<Option<EmailClaim>>,
    },
    /// Claim an email for a user being registered (on the email's shard).
    ClaimEmail {
        email: Email,
        user_id: u64,
        reply: Reply<()>,
    },
    /// Give up a claim (the registration failed after claiming).
    ReleaseEmail {
        key: String,
        user_id: u64,
        reply: Reply<()>,
    },
    /// Does this user exist (on the user's shard)?
    UserExists {
        user_id: u64,
        reply: Reply<bool>,
    },
    /// Register a user on its home shard (the shard of its username).
    Register {
        new: Registration,
        reply: Reply<User>,
    },
    Login {
        who: LoginWho,
        password: String,
        ip: String,
        user_agent: String,
        reply: Reply<Issued>,
    },
    Refresh {
        token: RefreshToken,
        ip: String,
        reply: Reply<Refreshed>,
    },
    RevokeSession {
        user_id: u64,
        session_id: u64,
        ip: String,
        event: AuthEvent,
        reply: Reply<()>,
    },
    Sessions {
        user_id: u64,
        reply: Reply<Vec<Session>>,
    },
    GetUser {
        user_id: u64,
        reply: Reply<Option<User>>,
    },
    VerifyEmail {
        token: String,
        ip: String,
        reply: Reply<User>,
    },
    RequestReset {
        user_id: u64,
        ip: String,
        reply: Reply<()>,
    },
    ConfirmReset {
        token: String,
        password: String,
        ip: String,
        reply: Reply<()>,
    },
    Emails {
        to: Option<String>,
        reply: Reply<Vec<QueuedEmail>>,
    },
    Metrics {
        reply: Reply<Snapshot>,
    },

    // ---- social (shards/src/social.rs) ----
    /// (id, username, display name) of a username's key, on its shard.
    LookupUsername {
        key: String,
        reply: Reply<Option<UserBrief>>,
    },
    /// Of `others`, those `user` blocks or is blocked by, on `user`'s shard.
    BlockedAmong {
        user: u64,
        others: Vec<u64>,
        reply: Reply<Vec<u64>>,
    },
    /// Brief views of users this shard owns (unknown ids are left out).
    Briefs {
        ids: Vec<u64>,
        reply: Reply<Vec<UserBrief>>,
    },
    /// Forget a user's cached brief: its display name or avatar changed, or it is gone (to
    /// every shard, `briefs::forget_everywhere`).
    ForgetBrief {
        user: u64,
        reply: Reply<()>,
    },
    /// A user id from a client's own numbering (DeathStarBench), on the key's shard.
    ExternalId {
        ext: u64,
        reply: Reply<Option<u64>>,
    },
    MapExternalId {
        ext: u64,
        user_id: u64,
        reply: Reply<()>,
    },
    /// Drops a reservation (`identity::EXTERNAL_PENDING`) of a registration that failed.
    ReleaseExternalId {
        ext: u64,
        reply: Reply<()>,
    },
    Profile {
        user_id: u64,
        viewer: u64,
        reply: Reply<Option<Profile>>,
    },
    /// On the viewer's shard: the viewer's own side of its relation with `other`.
    Relationship {
        viewer: u64,
        other: u64,
        reply: Reply<ViewerSide>,
    },
    /// A new post, composed on its author's shard for a request on shard `from`. The answer
    /// carries the post's event id when `from` is one of the shards the post goes to: that
    /// shard is not offered the post, it takes the offer from the answer itself
    /// (`Shard::compose_on`), saving a round trip.
    Compose {
        new: NewPost,
        from: usize,
        reply: Reply<(Post, Option<u64>)>,
    },
    GetPost {
        post_id: u64,
        viewer: u64,
        reply: Reply<Option<Post>>,
    },
    DeletePost {
        post_id: u64,
        author: u64,
        reply: Reply<()>,
    },
    /// Follow, on the follower's shard: `true` when following, `false` when a request now
    /// waits for a private account's approval.
    Follow {
        follower: u64,
        followee: u64,
        reply: Reply<bool>,
    },
    /// On the followee's shard, before a follow: may `follower` follow, and must it ask?
    /// Records the request of a private account.
    FollowGate {
        followee: u64,
        follower: u64,
        reply: Reply<Gate>,
    },
    /// On the followee's shard: withdraw a pending request (`true` if there was one).
    /// Drops `requester`'s request to follow, if any; answers whether `requester` is a
    /// follower here (approved before, maybe still on its way to the requester's shard).
    CancelFollowRequest {
        followee: u64,
        requester: u64,
        reply: Reply<bool>,
    },
    /// On the user's shard: a page of one of its own lists as (other user, since ms), by the
    /// other's id.
    OwnList {
        list: social::OwnList,
        user_id: u64,
        after: Option<u64>,
        limit: usize,
        reply: Reply<Vec<(u64, u64)>>,
    },
    /// On the followee's shard: approve or reject a pending request.
    AnswerFollowRequest {
        followee: u64,
        requester: u64,
        approve: bool,
        reply: Reply<()>,
    },
    /// Recent posts of `author` that `viewer` may see, newest first (on the author's shard),
    /// to backfill a new follower's feed.
    RecentPosts {
        author: u64,
        viewer: u64,
        limit: usize,
        reply: Reply<Vec<Post>>,
    },
    /// On the follower's shard: put these posts of `author` in the follower's feed (none:
    /// the backfill is done all the same).
    Backfill {
        reader: u64,
        author: u64,
        posts: Vec<Post>,
        reply: Reply<()>,
    },
    /// Edit the author's own post (on the post's shard).
    EditPost {
        post_id: u64,
        author: u64,
        text: String,
        reply: Reply<Post>,
    },
    Settings {
        user_id: u64,
        update: Option<SettingsUpdate>,
        reply: Reply<(Settings, Digest)>,
    },
    /// Answers whether there was a follow to end.
    Unfollow {
        follower: u64,
        followee: u64,
        reply: Reply<bool>,
    },
    Block {
        blocker: u64,
        blocked: u64,
        reply: Reply<()>,
    },
    Unblock {
        blocker: u64,
        blocked: u64,
        reply: Reply<()>,
    },
    /// May `viewer` see `user` at all (exists, no block either way)? On `user`'s shard.
    Visible {
        user_id: u64,
        viewer: u64,
        reply: Reply<bool>,
    },
    Relations {
        user_id: u64,
        followers: bool,
        after: Option<u64>,
        limit: usize,
        reply: Reply<Vec<u64>>,
    },
    /// A page of an author's posts, after leaving out the first `skip` the viewer may see.
    UserPosts {
        author: u64,
        viewer: u64,
        page: Page,
        skip: usize,
        reply: Reply<(Vec<Arc<SharedPost>>, Option<u64>)>,
    },
    /// A page of a home feed, after leaving out its first `skip` posts.
    Home {
        reader: u64,
        page: Page,
        skip: usize,
        reply: Reply<(Vec<Arc<SharedPost>>, Option<u64>)>,
    },
    /// Like or unlike a post (`comment: false`) or comment on its shard; the new count.
    Like {
        id: u64,
        user: u64,
        comment: bool,
        on: bool,
        reply: Reply<u64>,
    },
    AddComment {
        post_id: u64,
        author: u64,
        text: String,
        parent: Option<u64>,
        reply: Reply<CommentInfo>,
    },
    Comments {
        post_id: u64,
        viewer: u64,
        after: Option<u64>,
        limit: usize,
        reply: Reply<Vec<CommentInfo>>,
    },
    EditComment {
        id: u64,
        author: u64,
        text: String,
        reply: Reply<CommentInfo>,
    },
    DeleteComment {
        id: u64,
        user: u64,
        reply: Reply<()>,
    },
    /// (likes, comments, liked by viewer) of posts this shard owns, in the order asked.
    PostCounts {
        ids: Vec<u64>,
        viewer: u64,
        reply: Reply<Vec<PostStats>>,
    },
    /// Change the user's display name and/or profile (fields left `None` stay).
    UpdateProfile {
        user_id: u64,
        edit: ProfileEdit,
        reply: Reply<()>,
    },
    Preferences {
        user_id: u64,
        update: Option<PreferencesUpdate>,
        reply: Reply<(Preferences, FeedPreferences)>,
    },
    /// Mute or unmute, on the muter's shard.
    Mute {
        muter: u64,
        muted: u64,
        on: bool,
        reply: Reply<()>,
    },
    /// Record a user's DeathStarBench id on the user's shard (the reverse mapping).
    SetExternalOf {
        user_id: u64,
        ext: u64,
        reply: Reply<()>,
    },
    /// On a user's shard: a connection (on `shard`) opens a stream for the user; the answer
    /// is the events after `last_id`, or `None` when the user has too many streams.
    StreamSubscribe {
        user: u64,
        sub: u64,
        shard: usize,
        last_id: Option<u64>,
        reply: Reply<Option<Vec<StreamEvent>>>,
    },
    StreamUnsubscribe {
        user: u64,
        sub: u64,
        reply: Reply<()>,
    },
    /// On a connection's shard: an event for one of its streams (no answer).
    StreamPush {
        sub: u64,
        event: StreamEvent,
    },
    /// On a user's shard: add an event to the user's stream (typing, from a conversation's
    /// shard).
    StreamPublish {
        user: u64,
        kind: &'static str,
        data: String,
        about: crate::stream::About,
        reply: Reply<()>,
    },
    /// On the recipient's shard: may `sender` start a conversation with `recipient`?
    MayMessage {
        recipient: u64,
        sender: u64,
        reply: Reply<()>,
    },
    /// On the creator's shard: a new conversation with `others`.
    CreateConversation {
        creator: u64,
        others: Vec<u64>,
        reply: Reply<Summary>,
    },
    /// On a user's shard: a page of the inbox as (activity ms, conversation).
    Inbox {
        user: u64,
        before: Option<(u64, u64)>,
        limit: usize,
        reply: Reply<Vec<(u64, u64)>>,
    },
    /// On a conversation shard: these conversations as `user` sees them (others skipped).
    Summaries {
        ids: Vec<u64>,
        user: u64,
        reply: Reply<Vec<Summary>>,
    },
    /// On a conversation's shard: its summary plus who is typing.
    ConversationView {
        conversation: u64,
        user: u64,
        reply: Reply<(Summary, Vec<u64>)>,
    },
    Messages {
        conversation: u64,
        user: u64,
        page: Page,
        reply: Reply<Vec<Message>>,
    },
    SendMessage {
        new: NewMessage,
        reply: Reply<Message>,
    },
    EditMessage {
        id: u64,
        sender: u64,
        text: String,
        reply: Reply<Message>,
    },
    DeleteMessage {
        id: u64,
        sender: u64,
        reply: Reply<()>,
    },
    MarkRead {
        conversation: u64,
        user: u64,
        up_to: Option<u64>,
        reply: Reply<u64>,
    },
    Typing {
        conversation: u64,
        user: u64,
        reply: Reply<()>,
    },
    LeaveConversation {
        conversation: u64,
        user: u64,
        reply: Reply<()>,
    },
    /// Outbox delivery: apply these events here, once each.
    Deliver {
        events: Vec<(u64, Event)>,
        reply: Reply<()>,
    },
    /// Shard `from` applied these outbox events of this shard durably.
    Acked {
        from: usize,
        ids: Vec<u64>,
        reply: Reply<()>,
    },

    // ---- media (shards/src/media_jobs.rs) ----
    /// Record an upload (its blob stored already); the id is made on the owner's shard.
    MediaCreate {
        new: nova_core::media::NewMedia,
        reply: Reply<nova_core::media::Media>,
    },
    MediaGet {
        id: u64,
        reply: Reply<Option<nova_core::media::MediaView>>,
    },
    MediaDelete {
        id: u64,
        owner: u64,
        reply: Reply<()>,
    },
    MediaRendition {
        id: u64,
        name: String,
        reply: Reply<Option<(nova_core::media::Media, nova_core::media::Rendition)>>,
    },
    /// From a transcoding thread: mark processing (counting the attempt) before the work.
    MediaStart {
        id: u64,
        reply: Reply<Option<nova_core::media::Media>>,
    },
    /// From a transcoding thread: commit the result.
    MediaFinish {
        id: u64,
        outcome: nova_core::media::Outcome,
        reply: Reply<nova_core::media::Finished>,
    },
    MediaUsage {
        user_id: u64,
        reply: Reply<u64>,
    },
    /// The media attached to posts or messages being shown (ids of this shard's media).
    MediaViews {
        ids: Vec<u64>,
        reply: Reply<Vec<nova_core::media::MediaView>>,
    },
    /// Media attached to a followers-only post or a message become private.
    /// Answers the ids made private now (not private before).
    MediaMakePrivate {
        ids: Vec<u64>,
        owner: u64,
        reply: Reply<Vec<u64>>,
    },
    /// Forget these media's cached views (`media_views`): made private or deleted (to every
    /// shard, `media_views::forget_everywhere`).
    ForgetMedia {
        ids: Vec<u64>,
        reply: Reply<()>,
    },
    TusCreate {
        upload: nova_core::media::TusUpload,
        reply: Reply<nova_core::media::TusUpload>,
    },
    TusGet {
        id: u64,
        reply: Reply<Option<nova_core::media::TusUpload>>,
    },
    TusAdvance {
        id: u64,
        owner: u64,
        from: u64,
        to: u64,
        reply: Reply<nova_core::media::TusUpload>,
    },
    TusRemove {
        id: u64,
        owner: u64,
        reply: Reply<()>,
    },
    /// Notifications and push subscriptions, on the user's shard (shards/src/notify.rs).
    Notify(crate::notify::NotifyOp),

    // ---- search (shards/src/search.rs) ----
    /// The users `user_id` mutes, on the user's shard (a search leaves their posts out).
    SearchMutes {
        user_id: u64,
        reply: Reply<Vec<u64>>,
    },
    /// This shard's first posts for a query, as `searcher` may see them.
    SearchPosts {
        query: nova_core::search::PostQuery,
        searcher: u64,
        mutes: Vec<u64>,
        after: Option<nova_core::search::Rank>,
        limit: usize,
        reply: Reply<crate::search::ShardPosts>,
    },
    /// This shard's accounts for a query, without those blocked either way with `searcher`.
    SearchAccounts {
        words: Vec<String>,
        searcher: u64,
        after: Option<nova_core::search::AccountRank>,
        limit: usize,
        reply: Reply<Vec<(nova_core::search::AccountRank, UserBrief)>>,
    },
    /// This shard's hashtags starting with a prefix, with their counts here.
    SearchTags {
        prefix: String,
        reply: Reply<Vec<(String, u64)>>,
    },
    /// Moderation: roles, suspensions, removals, reports, audit (shards/src/moderation.rs).
    Moderation(crate::moderation::ModOp),
    /// Account export and deletion (shards/src/account.rs).
    Account(crate::account::AccountOp),
}

/// A comment with its counts as the viewer sees them.
#[derive(Debug, Clone)]
pub struct CommentInfo {
    pub comment: Comment,
    pub likes: u64,
    pub replies: u64,
    pub liked: bool,
}

/// A profile edit: each field set is changed. `avatar`: `Some(None)` removes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProfileEdit {
    pub display_name: Option<DisplayName>,
    pub bio: Option<String>,
    pub links: Option<Vec<String>>,
    pub avatar: Option<Option<u64>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreferencesUpdate {
    pub default_visibility: Option<Visibility>,
    pub language: Option<String>,
    pub hide_replies: Option<bool>,
    pub muted_words: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SettingsUpdate {
    pub private: Option<bool>,
    pub messages_from: Option<MessagesFrom>,
    pub email_digest: Option<Digest>,
}

/// What a follow must do, as the followee's shard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// No such user, or a block either way.
    Missing,
    /// Follow now.
    Open,
    /// A private account: the request is recorded and waits.
    Requested,
}

/// A post's counts as a viewer sees them.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostStats {
    pub id: u64,
    pub likes: u64,
    pub comments: u64,
    pub views: u64,
    pub liked: bool,
}

/// A message to send, validated on the connection's shard.
#[derive(Debug)]
pub struct NewMessage {
    pub conversation: u64,
    pub sender: UserBrief,
    pub text: String,
    pub media_ids: Vec<u64>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UserBrief {
    pub id: u64,
    pub username: String,
    pub display_name: String,
    /// The user's DeathStarBench id, if it registered through that API.
    pub external_id: Option<u64>,
    /// The media id of the user's avatar, if one is set.
    pub avatar: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub user: User,
    pub followers: u64,
    pub following: u64,
    pub posts: u64,
    pub profile: nova_core::profiles::Profile,
    pub private: bool,
    /// The media id of the user's avatar, if set.
    pub avatar: Option<u64>,
    /// The user follows the viewer (false for the user's own profile).
    pub follows_viewer: bool,
    /// The viewer's request to follow the user (a private account) waits.
    pub requested_by_viewer: bool,
}

/// What a viewer's own shard knows of its relation with another user.
#[derive(Debug, Clone, Copy)]
pub struct ViewerSide {
    pub following: bool,
    pub muting: bool,
}

/// A post to compose, validated on the connection's shard.
#[derive(Debug)]
pub struct NewPost {
    pub author: u64,
    pub text: String,
    /// None: the author's default (preferences).
    pub visibility: Option<Visibility>,
    pub reply_to: Option<u64>,
    pub idempotency_key: Option<String>,
    pub post_type: u32,
    pub media: Vec<(String, String)>,
    pub author_external_id: Option<u64>,
}

/// Which part of a newest-first list to read.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub max_id: Option<u64>,
    pub min_id: Option<u64>,
    pub limit: usize,
}

/// A registration, validated and with its password already hashed.
#[derive(Debug)]
pub struct Registration {
    pub username: nova_core::identity::Username,
    pub email: Email,
    pub display_name: nova_core::identity::DisplayName,
    pub password_hash: String,
    pub ip: String,
}

pub enum ShardMsg {
    Call {
        op: Op,
        deadline: Instant,
    },
    /// Sessions revoked somewhere: refuse their access tokens until `until_s`.
    Revoked {
        sessions: Vec<(u64, u64)>,
    },
    /// Stop accepting, finish open connections, then say so on `done`.
    Drain {
        done: flume::Sender<usize>,
    },
    /// Every shard has drained: stop serving the mesh and end the executor.
    Exit,
}
