//! The writes the write-ahead log carries (nova-storage, wal.rs), and how they are run again
//! after a crash.
//!
//! A logged write commits in memory once its record is in the log, so it costs a sequential
//! append and a small fsync instead of a durable commit of every page it dirtied. Only the
//! writes that dominate a busy server are logged: composes (`social::compose_batch`),
//! delivered events (`events::apply_all`), message sends (`messaging::post_batch`), likes
//! and unlikes (`content::set_like`: as durable writes each fsynced the database, and took
//! the logged commits before it along), the notification sweep that runs every second
//! beside them (`notifications::take_stored_fresh`: as a durable write it stalled the writer
//! 16-35 ms each time), and the other writes clients make often: comments (new, edited,
//! deleted), the view counts' flush (every relay pass with views), read receipts,
//! notifications marked read, and the social graph's changes on the actor's shard (follows,
//! unfollows, blocks, unblocks: `social::change_in`) with the backfill that follows a follow
//! (as durable writes, each follow waited for two checkpoints: loading the benchmark's graph
//! of 37,624 follows took 18-19 s instead of 8), mutes, in messaging edits and deletes of
//! messages, new conversations and leaves, and the sessions' writes: a login's new session
//! (its refresh secret made before, so that a replay makes the same), each refresh-token
//! rotation (clients refresh all day long), logouts and failed logins, profile, preference
//! and settings edits, follow requests made, approved, withdrawn or rejected (every
//! unfollow asked for a durable withdrawal on the followee's shard, a checkpoint there), and
//! the media records' writes (an upload was three checkpoints, and each chunk of a resumable
//! upload one). Any other write commits durably, taking the logged ones before it along:
//! registrations, email and password changes, push subscriptions, moderation, mail.
//!
//! Replaying a record must do what the write did. It does, because the record carries every
//! input the write took besides the database (ids, times, the shard's place), the write is
//! a function of those and of the state it ran on, and the state a replay runs on is the
//! same: redb comes back at the last durable commit, and every commit after it was logged
//! and is replayed in order. (Lossy writes, acknowledgements and index upkeep, are not
//! replayed; no logged write reads what they write.)
//!
//! Records are postcard behind core's format byte. A record's shape may only change with a
//! new format byte or a new variant at the end: a log written by one version is replayed by
//! the next when a crash falls between them.

use nova_core::codec;
use nova_core::content::{self, Comment, Post};
use nova_core::events::{self, Event};
use nova_core::identity::{self, AuthEvent, Context, DisplayName, NewSession};
use nova_core::media::{self, NewMedia, Outcome, TusUpload};
use nova_core::messages::{self, Conversation, Message};
use nova_core::notifications::{self, Which};
use nova_core::profiles::{self, MessagesFrom};
use nova_core::shard_of;
use nova_core::social;
use nova_core::tokens::RefreshToken;
use nova_storage::redb::WriteTransaction;
use nova_storage::StorageError;
use serde::{Deserialize, Serialize};

use crate::mesh::{PreferencesUpdate, ProfileEdit, SettingsUpdate};
use crate::notify::REMOTE_EVENT_IDS;

/// A compose as `compose_batch` takes it: the post, its idempotency key, its event id and
/// the shards its event goes to.
pub(crate) type ComposeItem = (Post, Option<String>, u64, Vec<usize>);
/// A send as `post_batch` takes it: the message, its idempotency key, its event id.
pub(crate) type SendItem = (Message, Option<String>, u64);

/// A logged write, to be decoded and run again.
#[derive(Debug, Deserialize)]
enum Logged {
    Compose {
        here: usize,
        items: Vec<ComposeItem>,
    },
    Apply {
        here: usize,
        shards: usize,
        events: Vec<(u64, Event)>,
        now: u64,
    },
    Send {
        here: usize,
        sends: Vec<SendItem>,
    },
    /// The notification sweep (`Shard::sweep_loop`): `notifications::take_stored_fresh`.
    Sweep,
    /// A like or unlike of a post or comment (`Shard::like`): `content::set_like`.
    Like {
        id: u64,
        user: u64,
        of_comment: bool,
        on: bool,
        now: u64,
    },
    /// A new comment (`Shard::add_comment`): `content::add_comment`.
    Comment {
        comment: Comment,
    },
    /// `content::edit_comment`.
    EditComment {
        id: u64,
        author: u64,
        text: String,
        now: u64,
    },
    /// `content::delete_comment`.
    DeleteComment {
        id: u64,
        user: u64,
    },
    /// Buffered view counts (`Shard::flush_views`): `content::add_views`.
    Views {
        views: Vec<(u64, u64)>,
    },
    /// A read receipt: `messages::mark_read`.
    ReadReceipt {
        conversation: u64,
        user: u64,
        up_to: Option<u64>,
    },
    /// Notifications marked read: `notifications::mark_read`.
    NotificationsRead {
        user: u64,
        which: Which,
    },
    /// A follow, unfollow, block or unblock (`Shard::change`), or a follow request approved
    /// (`Shard::answer_request`): `social::change_in`.
    Change {
        here: usize,
        target: usize,
        event_id: u64,
        now: u64,
        event: Event,
    },
    /// Copies of an author's latest posts into a reader's feed (`Shard::backfill`):
    /// `social::backfill`.
    Backfill {
        reader: u64,
        author: u64,
        posts: Vec<Post>,
    },
    /// `social::set_mute`.
    Mute {
        muter: u64,
        muted: u64,
        on: bool,
        now: u64,
    },
    /// `messages::edit`.
    EditMessage {
        id: u64,
        sender: u64,
        text: String,
        now: u64,
    },
    /// `messages::delete`.
    DeleteMessage {
        id: u64,
        sender: u64,
    },
    /// A new conversation (`Shard::create_conversation`): `messaging::create_in`.
    Conversation {
        conversation: Conversation,
        local: Vec<u64>,
        events: Vec<(u64, Event, usize)>,
        now: u64,
    },
    /// A participant leaving (`Shard::leave`): `messaging::leave_in`.
    Leave {
        here: usize,
        target: usize,
        event_id: u64,
        now: u64,
        event: Event,
    },
    /// A login's new session: `identity::create_session`.
    Login {
        ctx: Context,
        new: NewSession,
    },
    /// A refresh token presented: `identity::refresh`.
    Refresh {
        ctx: Context,
        token: RefreshToken,
        ttl: u64,
    },
    /// `identity::revoke_session`.
    RevokeSession {
        ctx: Context,
        user_id: u64,
        session_id: u64,
        event: AuthEvent,
    },
    /// An entry of the authentication log alone (a failed login): `identity::log_event`.
    AuthEvent {
        ctx: Context,
        event: AuthEvent,
        user_id: Option<u64>,
    },
    /// `social::update_profile_in`, as versions before avatars wrote it.
    Profile {
        user_id: u64,
        display_name: Option<DisplayName>,
        bio: Option<String>,
        links: Option<Vec<String>>,
        event_id: u64,
        now: u64,
    },
    /// `social::preferences_in`.
    Preferences {
        user_id: u64,
        update: PreferencesUpdate,
    },
    /// `profiles::update_settings`.
    Settings {
        user_id: u64,
        private: Option<bool>,
        messages_from: Option<MessagesFrom>,
    },
    /// A follow request withdrawn or rejected: `social::drop_request`.
    DropRequest {
        followee: u64,
        requester: u64,
    },
    /// An upload's record: `media::create`.
    MediaCreate {
        new: NewMedia,
        now: u64,
        quota: u64,
    },
    /// `media::start`.
    MediaStart {
        id: u64,
        now: u64,
    },
    /// `media::finish`.
    MediaFinish {
        id: u64,
        outcome: Outcome,
        now: u64,
        quota: u64,
        event_id: u64,
    },
    /// `media::delete`.
    MediaDelete {
        id: u64,
        owner: u64,
    },
    /// `media::make_private`.
    MediaPrivate {
        ids: Vec<u64>,
        owner: u64,
        now: u64,
    },
    /// `media::tus_create`.
    TusCreate {
        upload: TusUpload,
    },
    /// `media::tus_advance`.
    TusAdvance {
        id: u64,
        owner: u64,
        from: u64,
        to: u64,
    },
    /// `media::tus_remove`.
    TusRemove {
        id: u64,
        owner: u64,
    },
    /// A follow request to a private account (`Shard::follow_gate`): `social::request_in`.
    FollowRequest {
        here: usize,
        followee: u64,
        follower: u64,
        now: u64,
    },
    /// `social::update_profile_in` (with the avatar; `Profile` is what older versions wrote).
    ProfileEdit {
        user_id: u64,
        edit: ProfileEdit,
        event_id: u64,
        now: u64,
    },
    /// `social::settings_in` (with the digest; `Settings` is what older versions wrote).
    SettingsEdit {
        user_id: u64,
        update: SettingsUpdate,
        now: u64,
    },
    /// `social::settings_in` with the `WentPrivate` or `WentPublic` event it records for the
    /// other shards when the account turns private or public (`SettingsEdit` is what older
    /// versions wrote).
    SettingsEditAt {
        user_id: u64,
        update: SettingsUpdate,
        now: u64,
        event_id: u64,
        targets: Vec<usize>,
    },
    /// A message deleted by its sender, with the `MessageDeleted` event it records for the
    /// other participants' shards: `messaging::delete_in` (`DeleteMessage` is what older
    /// versions wrote).
    DeleteMessageAt {
        id: u64,
        sender: u64,
        here: usize,
        shards: usize,
        event_id: u64,
        now: u64,
    },
}

/// `Logged` as it is written, from borrowed inputs (the same variants and fields, so the
/// same bytes; `tests::records_read_back_as_written`).
#[derive(Debug, Serialize)]
pub(crate) enum Record<'a> {
    Compose {
        here: usize,
        items: &'a [ComposeItem],
    },
    Apply {
        here: usize,
        shards: usize,
        events: &'a [(u64, Event)],
        now: u64,
    },
    Send {
        here: usize,
        sends: &'a [SendItem],
    },
    Sweep,
    Like {
        id: u64,
        user: u64,
        of_comment: bool,
        on: bool,
        now: u64,
    },
    Comment {
        comment: &'a Comment,
    },
    EditComment {
        id: u64,
        author: u64,
        text: &'a str,
        now: u64,
    },
    DeleteComment {
        id: u64,
        user: u64,
    },
    Views {
        views: &'a [(u64, u64)],
    },
    ReadReceipt {
        conversation: u64,
        user: u64,
        up_to: Option<u64>,
    },
    NotificationsRead {
        user: u64,
        which: &'a Which,
    },
    Change {
        here: usize,
        target: usize,
        event_id: u64,
        now: u64,
        event: &'a Event,
    },
    Backfill {
        reader: u64,
        author: u64,
        posts: &'a [Post],
    },
    Mute {
        muter: u64,
        muted: u64,
        on: bool,
        now: u64,
    },
    EditMessage {
        id: u64,
        sender: u64,
        text: &'a str,
        now: u64,
    },
    // No longer written (`DeleteMessageAt` is); kept as `Profile` is.
    #[cfg_attr(not(test), allow(dead_code))]
    DeleteMessage {
        id: u64,
        sender: u64,
    },
    Conversation {
        conversation: &'a Conversation,
        local: &'a [u64],
        events: &'a [(u64, Event, usize)],
        now: u64,
    },
    Leave {
        here: usize,
        target: usize,
        event_id: u64,
        now: u64,
        event: &'a Event,
    },
    Login {
        ctx: &'a Context,
        new: &'a NewSession,
    },
    Refresh {
        ctx: &'a Context,
        token: &'a RefreshToken,
        ttl: u64,
    },
    RevokeSession {
        ctx: &'a Context,
        user_id: u64,
        session_id: u64,
        event: AuthEvent,
    },
    AuthEvent {
        ctx: &'a Context,
        event: AuthEvent,
        user_id: Option<u64>,
    },
    // No longer written (`ProfileEdit` is), but kept: the variants after it keep their index,
    // and the round-trip test writes it as older versions did.
    #[cfg_attr(not(test), allow(dead_code))]
    Profile {
        user_id: u64,
        display_name: Option<&'a DisplayName>,
        bio: Option<&'a str>,
        links: Option<&'a [String]>,
        event_id: u64,
        now: u64,
    },
    Preferences {
        user_id: u64,
        update: &'a PreferencesUpdate,
    },
    // No longer written (`SettingsEdit` is); kept as `Profile` is.
    #[cfg_attr(not(test), allow(dead_code))]
    Settings {
        user_id: u64,
        private: Option<bool>,
        messages_from: Option<MessagesFrom>,
    },
    DropRequest {
        followee: u64,
        requester: u64,
    },
    MediaCreate {
        new: &'a NewMedia,
        now: u64,
        quota: u64,
    },
    MediaStart {
        id: u64,
        now: u64,
    },
    MediaFinish {
        id: u64,
        outcome: &'a Outcome,
        now: u64,
        quota: u64,
        event_id: u64,
    },
    MediaDelete {
        id: u64,
        owner: u64,
    },
    MediaPrivate {
        ids: &'a [u64],
        owner: u64,
        now: u64,
    },
    TusCreate {
        upload: &'a TusUpload,
    },
    TusAdvance {
        id: u64,
        owner: u64,
        from: u64,
        to: u64,
    },
    TusRemove {
        id: u64,
        owner: u64,
    },
    FollowRequest {
        here: usize,
        followee: u64,
        follower: u64,
        now: u64,
    },
    ProfileEdit {
        user_id: u64,
        edit: &'a ProfileEdit,
        event_id: u64,
        now: u64,
    },
    // No longer written (`SettingsEditAt` is); kept as `Profile` is.
    #[cfg_attr(not(test), allow(dead_code))]
    SettingsEdit {
        user_id: u64,
        update: &'a SettingsUpdate,
        now: u64,
    },
    SettingsEditAt {
        user_id: u64,
        update: &'a SettingsUpdate,
        now: u64,
        event_id: u64,
        targets: &'a [usize],
    },
    DeleteMessageAt {
        id: u64,
        sender: u64,
        here: usize,
        shards: usize,
        event_id: u64,
        now: u64,
    },
}

impl Record<'_> {
    pub(crate) fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }
}

/// A logged write and what `Shard::write_notifying_logged` did after it in the same
/// transaction.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Notifying {
    pub write: Vec<u8>,
    pub event_ids: [u64; REMOTE_EVENT_IDS],
    pub now: u64,
}

/// Runs one log record again (`Partition::open_logged`).
pub(crate) fn replay(t: &WriteTransaction, record: &[u8]) -> Result<(), StorageError> {
    let failed = |e: nova_core::CoreError| StorageError::Redb(format!("replay: {e}"));
    let notifying: Notifying = codec::decode(record).map_err(failed)?;
    let write: Logged = codec::decode(&notifying.write).map_err(failed)?;
    match write {
        Logged::Compose { here, items } => {
            crate::social::compose_batch(t, here, &items).map_err(failed)?;
        }
        Logged::Apply {
            here,
            shards,
            events,
            now,
        } => {
            events::apply_all(t, events, now, |user| {
                shard_of(user) == here && here < shards
            })
            .map_err(failed)?;
        }
        Logged::Send { here, sends } => {
            crate::messaging::post_batch(t, here, sends).map_err(failed)?;
        }
        Logged::Sweep => {
            notifications::take_stored_fresh(t).map_err(failed)?;
        }
        Logged::Like {
            id,
            user,
            of_comment,
            on,
            now,
        } => {
            content::set_like(t, id, user, of_comment, on, now).map_err(failed)?;
        }
        Logged::Comment { comment } => {
            content::add_comment(t, comment).map_err(failed)?;
        }
        Logged::EditComment {
            id,
            author,
            text,
            now,
        } => {
            content::edit_comment(t, id, author, text, now).map_err(failed)?;
        }
        Logged::DeleteComment { id, user } => {
            content::delete_comment(t, id, user).map_err(failed)?;
        }
        Logged::Views { views } => {
            content::add_views(t, &views).map_err(failed)?;
        }
        Logged::ReadReceipt {
            conversation,
            user,
            up_to,
        } => {
            messages::mark_read(t, conversation, user, up_to).map_err(failed)?;
        }
        Logged::NotificationsRead { user, which } => {
            notifications::mark_read(t, user, &which).map_err(failed)?;
        }
        Logged::Change {
            here,
            target,
            event_id,
            now,
            event,
        } => {
            crate::social::change_in(t, here, target, event_id, now, &event).map_err(failed)?;
        }
        Logged::Backfill {
            reader,
            author,
            posts,
        } => {
            social::backfill(t, reader, author, &posts).map_err(failed)?;
        }
        Logged::Mute {
            muter,
            muted,
            on,
            now,
        } => {
            social::set_mute(t, muter, muted, on, now).map_err(failed)?;
        }
        Logged::EditMessage {
            id,
            sender,
            text,
            now,
        } => {
            messages::edit(t, id, sender, text, now).map_err(failed)?;
        }
        Logged::DeleteMessage { id, sender } => {
            messages::delete(t, id, sender).map_err(failed)?;
        }
        Logged::DeleteMessageAt {
            id,
            sender,
            here,
            shards,
            event_id,
            now,
        } => {
            crate::messaging::delete_in(t, id, sender, here, shards, event_id, now)
                .map_err(failed)?;
        }
        Logged::Conversation {
            conversation,
            local,
            events,
            now,
        } => {
            crate::messaging::create_in(t, &conversation, &local, &events, now).map_err(failed)?;
        }
        Logged::Leave {
            here,
            target,
            event_id,
            now,
            event,
        } => {
            crate::messaging::leave_in(t, here, target, event_id, now, &event).map_err(failed)?;
        }
        Logged::Login { ctx, new } => {
            identity::create_session(t, &ctx, new).map_err(failed)?;
        }
        Logged::Refresh { ctx, token, ttl } => {
            identity::refresh(t, &ctx, &token, ttl).map_err(failed)?;
        }
        Logged::RevokeSession {
            ctx,
            user_id,
            session_id,
            event,
        } => {
            identity::revoke_session(t, &ctx, user_id, session_id, event).map_err(failed)?;
        }
        Logged::AuthEvent {
            ctx,
            event,
            user_id,
        } => {
            identity::log_event(t, &ctx, event, user_id).map_err(failed)?;
        }
        Logged::Profile {
            user_id,
            display_name,
            bio,
            links,
            event_id,
            now,
        } => {
            // Written by versions before avatars: the same edit, the avatar left alone.
            let edit = ProfileEdit {
                display_name,
                bio,
                links,
                avatar: None,
            };
            crate::social::update_profile_in(t, user_id, edit, event_id, now).map_err(failed)?;
        }
        Logged::ProfileEdit {
            user_id,
            edit,
            event_id,
            now,
        } => {
            crate::social::update_profile_in(t, user_id, edit, event_id, now).map_err(failed)?;
        }
        Logged::Preferences { user_id, update } => {
            crate::social::preferences_in(t, user_id, update).map_err(failed)?;
        }
        Logged::Settings {
            user_id,
            private,
            messages_from,
        } => {
            profiles::update_settings(t, user_id, private, messages_from).map_err(failed)?;
        }
        Logged::SettingsEdit {
            user_id,
            update,
            now,
        } => {
            crate::social::settings_in(t, user_id, &update, now, None).map_err(failed)?;
        }
        Logged::SettingsEditAt {
            user_id,
            update,
            now,
            event_id,
            targets,
        } => {
            let went_private = Some((event_id, targets.as_slice()));
            crate::social::settings_in(t, user_id, &update, now, went_private).map_err(failed)?;
        }
        Logged::DropRequest {
            followee,
            requester,
        } => {
            social::withdraw_request(t, followee, requester).map_err(failed)?;
        }
        Logged::MediaCreate { new, now, quota } => {
            media::create(t, new, now, quota).map_err(failed)?;
        }
        Logged::MediaStart { id, now } => {
            media::start(t, id, now).map_err(failed)?;
        }
        Logged::MediaFinish {
            id,
            outcome,
            now,
            quota,
            event_id,
        } => {
            media::finish(t, id, outcome, now, quota, event_id).map_err(failed)?;
        }
        Logged::MediaDelete { id, owner } => {
            media::delete(t, id, owner).map_err(failed)?;
        }
        Logged::MediaPrivate { ids, owner, now } => {
            media::make_private(t, &ids, owner, now).map_err(failed)?;
        }
        Logged::TusCreate { upload } => {
            media::tus_create(t, &upload).map_err(failed)?;
        }
        Logged::TusAdvance {
            id,
            owner,
            from,
            to,
        } => {
            media::tus_advance(t, id, owner, from, to).map_err(failed)?;
        }
        Logged::TusRemove { id, owner } => {
            media::tus_remove(t, id, owner).map_err(failed)?;
        }
        Logged::FollowRequest {
            here,
            followee,
            follower,
            now,
        } => {
            crate::social::request_in(t, here, followee, follower, now).map_err(failed)?;
        }
    }
    notifications::take_fresh(t).map_err(failed)?;
    notifications::take_remote(t, &notifying.event_ids, notifying.now).map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_written() {
        let event = Event::Followed {
            follower: 7,
            followee: 9,
        };
        let events = vec![(42, event.clone())];
        let bytes = Record::Apply {
            here: 1,
            shards: 2,
            events: &events,
            now: 1_700_000_000_000,
        }
        .encode();
        match codec::decode::<Logged>(&bytes).unwrap() {
            Logged::Apply {
                here,
                shards,
                events,
                now,
            } => {
                assert_eq!((here, shards, now), (1, 2, 1_700_000_000_000));
                assert_eq!(events, vec![(42, event)]);
            }
            other => panic!("{other:?}"),
        }
        let bytes = Record::Send {
            here: 0,
            sends: &[],
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Send { here: 0, sends } if sends.is_empty()
        ));
        let bytes = Record::Sweep.encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Sweep
        ));
        let bytes = Record::Like {
            id: 11,
            user: 12,
            of_comment: true,
            on: false,
            now: 13,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Like {
                id: 11,
                user: 12,
                of_comment: true,
                on: false,
                now: 13
            }
        ));
        let comment = Comment {
            id: 21,
            post_id: 22,
            author_id: 23,
            author_username: "ann".into(),
            author_display_name: "Ann".into(),
            text: "hello".into(),
            parent: Some(24),
            depth: 0,
            created_ms: 25,
            edited_ms: None,
        };
        let bytes = Record::Comment { comment: &comment }.encode();
        match codec::decode::<Logged>(&bytes).unwrap() {
            Logged::Comment { comment: back } => assert_eq!(back, comment),
            other => panic!("{other:?}"),
        }
        let bytes = Record::EditComment {
            id: 21,
            author: 23,
            text: "edited",
            now: 26,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::EditComment { id: 21, author: 23, text, now: 26 } if text == "edited"
        ));
        let bytes = Record::DeleteComment { id: 21, user: 22 }.encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::DeleteComment { id: 21, user: 22 }
        ));
        let bytes = Record::Views {
            views: &[(1, 2), (3, 4)],
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Views { views } if views == vec![(1, 2), (3, 4)]
        ));
        let bytes = Record::ReadReceipt {
            conversation: 31,
            user: 32,
            up_to: Some(33),
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::ReadReceipt {
                conversation: 31,
                user: 32,
                up_to: Some(33)
            }
        ));
        let which = Which::Ids(vec![41, 42]);
        let bytes = Record::NotificationsRead {
            user: 43,
            which: &which,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::NotificationsRead { user: 43, which: back } if back == which
        ));
        let blocked = Event::Blocked {
            blocker: 51,
            blocked: 52,
        };
        let bytes = Record::Change {
            here: 1,
            target: 0,
            event_id: 53,
            now: 54,
            event: &blocked,
        }
        .encode();
        match codec::decode::<Logged>(&bytes).unwrap() {
            Logged::Change {
                here,
                target,
                event_id,
                now,
                event,
            } => {
                assert_eq!((here, target, event_id, now), (1, 0, 53, 54));
                assert_eq!(event, blocked);
            }
            other => panic!("{other:?}"),
        }
        let post = Post {
            id: 61,
            author_id: 62,
            author_username: "bo".into(),
            author_display_name: "Bo".into(),
            text: "backfilled".into(),
            visibility: content::Visibility::Followers,
            reply_to: None,
            mentions: Vec::new(),
            hashtags: vec!["tag".into()],
            urls: Vec::new(),
            created_ms: 63,
            edited_ms: Some(64),
            post_type: 0,
            media: Vec::new(),
            author_external_id: Some(65),
            fanned_to: vec![1],
        };
        let posts = [post];
        let bytes = Record::Backfill {
            reader: 66,
            author: 62,
            posts: &posts,
        }
        .encode();
        match codec::decode::<Logged>(&bytes).unwrap() {
            Logged::Backfill {
                reader,
                author,
                posts: back,
            } => {
                assert_eq!((reader, author), (66, 62));
                assert_eq!(back, posts);
            }
            other => panic!("{other:?}"),
        }
        let bytes = Record::Mute {
            muter: 71,
            muted: 72,
            on: true,
            now: 73,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Mute {
                muter: 71,
                muted: 72,
                on: true,
                now: 73
            }
        ));
        let bytes = Record::EditMessage {
            id: 81,
            sender: 82,
            text: "fixed",
            now: 83,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::EditMessage { id: 81, sender: 82, text, now: 83 } if text == "fixed"
        ));
        let bytes = Record::DeleteMessageAt {
            id: 81,
            sender: 82,
            here: 1,
            shards: 2,
            event_id: 83,
            now: 84,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::DeleteMessageAt {
                id: 81,
                sender: 82,
                here: 1,
                shards: 2,
                event_id: 83,
                now: 84
            }
        ));
        let bytes = Record::DeleteMessage { id: 81, sender: 82 }.encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::DeleteMessage { id: 81, sender: 82 }
        ));
        let conversation = Conversation {
            id: 91,
            creator: 92,
            participants: vec![92, 93, 94],
            created_ms: 95,
            last_ms: 95,
            last_message: None,
        };
        let joined = vec![(
            96,
            Event::ConversationJoined {
                conversation: 91,
                users: vec![94],
                at_ms: 95,
            },
            1,
        )];
        let bytes = Record::Conversation {
            conversation: &conversation,
            local: &[92, 93],
            events: &joined,
            now: 95,
        }
        .encode();
        match codec::decode::<Logged>(&bytes).unwrap() {
            Logged::Conversation {
                conversation: back,
                local,
                events,
                now,
            } => {
                assert_eq!(back, conversation);
                assert_eq!((local, now), (vec![92, 93], 95));
                assert_eq!(events, joined);
            }
            other => panic!("{other:?}"),
        }
        let left = Event::ConversationLeft {
            conversation: 91,
            user: 94,
        };
        let bytes = Record::Leave {
            here: 0,
            target: 1,
            event_id: 97,
            now: 98,
            event: &left,
        }
        .encode();
        match codec::decode::<Logged>(&bytes).unwrap() {
            Logged::Leave {
                here,
                target,
                event_id,
                now,
                event,
            } => {
                assert_eq!((here, target, event_id, now), (0, 1, 97, 98));
                assert_eq!(event, left);
            }
            other => panic!("{other:?}"),
        }
        let ctx = Context {
            now_ms: 101,
            ip: "192.0.2.7".into(),
            log_id: 102,
        };
        let new = NewSession {
            id: 103,
            user_id: 104,
            user_agent: "curl".into(),
            refresh_ttl_ms: 105,
            secret: [7; 32],
        };
        let bytes = Record::Login {
            ctx: &ctx,
            new: &new,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Login { ctx: c, new: n } if c == ctx && n == new
        ));
        let token = RefreshToken::parse("103.2.c2lnbmVk").unwrap();
        let bytes = Record::Refresh {
            ctx: &ctx,
            token: &token,
            ttl: 106,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Refresh { ctx: c, token: t, ttl: 106 } if c == ctx && t == token
        ));
        let bytes = Record::RevokeSession {
            ctx: &ctx,
            user_id: 104,
            session_id: 103,
            event: AuthEvent::Logout,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::RevokeSession {
                ctx: c,
                user_id: 104,
                session_id: 103,
                event: AuthEvent::Logout
            } if c == ctx
        ));
        let bytes = Record::AuthEvent {
            ctx: &ctx,
            event: AuthEvent::LoginFailed,
            user_id: None,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::AuthEvent {
                ctx: c,
                event: AuthEvent::LoginFailed,
                user_id: None
            } if c == ctx
        ));
        let links = vec!["https://example.com".to_string()];
        let bytes = Record::Profile {
            user_id: 115,
            display_name: None,
            bio: Some("hello"),
            links: Some(&links),
            event_id: 116,
            now: 117,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Profile {
                user_id: 115,
                display_name: None,
                bio: Some(b),
                links: Some(l),
                event_id: 116,
                now: 117
            } if b == "hello" && l == links
        ));
        let update = SettingsUpdate {
            private: Some(false),
            messages_from: None,
            email_digest: Some(profiles::Digest::Weekly),
        };
        let bytes = Record::SettingsEdit {
            user_id: 122,
            update: &update,
            now: 123,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::SettingsEdit { user_id: 122, update: u, now: 123 } if u == update
        ));
        let bytes = Record::SettingsEditAt {
            user_id: 122,
            update: &update,
            now: 123,
            event_id: 124,
            targets: &[0, 2],
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::SettingsEditAt { user_id: 122, update: u, now: 123, event_id: 124, targets: t }
                if u == update && t == [0, 2]
        ));
        let edit = ProfileEdit {
            display_name: Some(DisplayName::parse("Ada").unwrap()),
            bio: None,
            links: Some(links.clone()),
            avatar: Some(Some(118)),
        };
        let bytes = Record::ProfileEdit {
            user_id: 119,
            edit: &edit,
            event_id: 120,
            now: 121,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::ProfileEdit {
                user_id: 119,
                edit: e,
                event_id: 120,
                now: 121
            } if e == edit
        ));
        let update = PreferencesUpdate {
            default_visibility: Some(content::Visibility::Followers),
            language: Some("de".into()),
            hide_replies: None,
            muted_words: Some(vec!["spoiler".into()]),
        };
        let bytes = Record::Preferences {
            user_id: 113,
            update: &update,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Preferences { user_id: 113, update: u } if u == update
        ));
        let bytes = Record::Settings {
            user_id: 114,
            private: Some(true),
            messages_from: Some(MessagesFrom::Following),
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::Settings {
                user_id: 114,
                private: Some(true),
                messages_from: Some(MessagesFrom::Following)
            }
        ));
        let bytes = Record::DropRequest {
            followee: 111,
            requester: 112,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::DropRequest {
                followee: 111,
                requester: 112
            }
        ));
        let new = NewMedia {
            id: 121,
            owner: 122,
            kind: media::MediaKind::Image,
            private: true,
            original: media::Blob {
                id: "abc".into(),
                bytes: 123,
            },
            metadata: media::Metadata {
                container: "png".into(),
                width: 4,
                height: 3,
                frame_rate: Some(29.97),
                ..Default::default()
            },
        };
        let bytes = Record::MediaCreate {
            new: &new,
            now: 124,
            quota: 125,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::MediaCreate { new: n, now: 124, quota: 125 } if n == new
        ));
        let outcome = Outcome::Ready {
            renditions: vec![media::Rendition {
                name: "thumb.webp".into(),
                blob: "def".into(),
                mime: "image/webp".into(),
                width: 2,
                height: 1,
                bytes: 126,
            }],
            blurhash: Some("LEHV6n".into()),
        };
        let bytes = Record::MediaFinish {
            id: 121,
            outcome: &outcome,
            now: 127,
            quota: 125,
            event_id: 128,
        }
        .encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::MediaFinish { id: 121, outcome: o, now: 127, quota: 125, event_id: 128 }
                if o == outcome
        ));
        let simple = [
            (
                Record::MediaStart { id: 121, now: 129 }.encode(),
                "MediaStart { id: 121, now: 129 }",
            ),
            (
                Record::MediaDelete {
                    id: 121,
                    owner: 122,
                }
                .encode(),
                "MediaDelete { id: 121, owner: 122 }",
            ),
            (
                Record::MediaPrivate {
                    ids: &[121, 130],
                    owner: 122,
                    now: 131,
                }
                .encode(),
                "MediaPrivate { ids: [121, 130], owner: 122, now: 131 }",
            ),
            (
                Record::TusAdvance {
                    id: 132,
                    owner: 122,
                    from: 0,
                    to: 133,
                }
                .encode(),
                "TusAdvance { id: 132, owner: 122, from: 0, to: 133 }",
            ),
            (
                Record::TusRemove {
                    id: 132,
                    owner: 122,
                }
                .encode(),
                "TusRemove { id: 132, owner: 122 }",
            ),
        ];
        for (bytes, debug) in simple {
            assert_eq!(
                format!("{:?}", codec::decode::<Logged>(&bytes).unwrap()),
                debug
            );
        }
        let upload = TusUpload {
            id: 132,
            owner: 122,
            length: 134,
            offset: 0,
            private: false,
            created_ms: 135,
            expires_ms: 136,
        };
        let bytes = Record::FollowRequest {
            here: 1,
            followee: 141,
            follower: 142,
            now: 143,
        }
        .encode();
        assert_eq!(
            format!("{:?}", codec::decode::<Logged>(&bytes).unwrap()),
            "FollowRequest { here: 1, followee: 141, follower: 142, now: 143 }"
        );
        let bytes = Record::TusCreate { upload: &upload }.encode();
        assert!(matches!(
            codec::decode::<Logged>(&bytes).unwrap(),
            Logged::TusCreate { upload: u } if u == upload
        ));
    }
}
