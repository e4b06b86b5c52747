//! Events and the transactional outbox.
//!
//! A domain change and the events it causes are written in one write transaction: the
//! change, an `event_store` row (the append-only history) and, for every other shard that
//! must react, an `event_outbox` row addressed to it. The engine's relay delivers outbox rows;
//! the target applies each event at most once (`event_applied` remembers its id, in the same
//! transaction as the effect) and acknowledges; then the source deletes the row. Undelivered
//! rows survive a crash and are sent again after restart.

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::content::Post;
use crate::messages::{self, Message};
use crate::social;
use crate::CoreError;

/// (ms, event id) -> Event : the history, pruned by retention
const EVENT_STORE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("event_store");
/// (target shard, event id) -> Event : waiting for delivery
const EVENT_OUTBOX: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("event_outbox");
/// event id -> ms applied : dedupe on the receiving side
const EVENT_APPLIED: TableDefinition<u64, u64> = TableDefinition::new("event_applied");

/// Something that happened, as other shards need to hear it.
///
/// Stored (event_store, event_outbox) with postcard, which writes a variant's position: a new
/// variant goes at the end, and none is ever removed or moved (`tests::stored_tags_never_move`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Event {
    /// `follower` (on the source shard) now follows `followee` (on the target).
    Followed {
        follower: u64,
        followee: u64,
    },
    Unfollowed {
        follower: u64,
        followee: u64,
    },
    /// `blocker` blocked `blocked`: follows both ways end.
    Blocked {
        blocker: u64,
        blocked: u64,
    },
    Unblocked {
        blocker: u64,
        blocked: u64,
    },
    /// A new post, for the home feeds of the target shard's followers of the author and the
    /// users it mentions there.
    PostCreated {
        post: Box<Post>,
    },
    /// A deleted post leaves every feed it reached.
    PostDeleted {
        post_id: u64,
        author: u64,
    },
    /// An edited post replaces its copies.
    PostEdited {
        post: Box<Post>,
    },
    /// Users on the target shard joined a conversation: it enters their inboxes.
    ConversationJoined {
        conversation: u64,
        users: Vec<u64>,
        at_ms: u64,
    },
    /// A new message: the conversation moves up in the inboxes of `recipients` there, and
    /// they are notified of it there (`notifications::on_message`).
    MessagePosted {
        message: Box<Message>,
        recipients: Vec<u64>,
    },
    /// `user` left a conversation: it leaves the user's inbox.
    ConversationLeft {
        conversation: u64,
        user: u64,
    },
    /// A private `followee` approved `follower`'s request: the follower's shard writes its
    /// side of the follow.
    FollowApproved {
        follower: u64,
        followee: u64,
    },
    /// The uploader's media finished processing and can be shown (history only, on the
    /// uploader's shard: `core/src/media.rs` `finish`).
    MediaReady {
        media_id: u64,
        owner: u64,
    },
    /// The uploader's media could not be processed.
    MediaFailed {
        media_id: u64,
        owner: u64,
        reason: String,
    },
    /// A notification for a user of the target shard (see `notifications::take_remote`).
    Notified {
        notice: Box<crate::notifications::New>,
    },
    /// A user was registered or changed its username or display name (local history only:
    /// the search index of the user's shard reads it).
    UserChanged {
        user_id: u64,
    },
    /// A user was suspended or unsuspended (moderation): every shard's mirror of suspended
    /// users follows, newest change wins (the event id orders them).
    SuspensionChanged {
        user_id: u64,
        suspended: bool,
    },
    /// A user deleted its account (`erasure`): the target shard starts its part of the
    /// erasure and releases the email claim if it holds it. Variants go only at the end:
    /// postcard encodes the variant index.
    AccountErased {
        user_id: u64,
        email_key: String,
    },
    /// Erasure work for the target shard: relations to forget, conversations to leave
    /// (`erasure::add_work`).
    ErasureWork {
        user_id: u64,
        items: Vec<(u8, u64)>,
    },
    /// A post or comment was deleted: the target shard deletes its users' notifications
    /// about it (`notifications::forget_subject`).
    NotificationsRetracted {
        subject: u64,
    },
    /// A user turned its account private: the target shard's feeds keep its posts only for
    /// its followers and those a `mentioned` post addresses (`social::went_private`).
    WentPrivate {
        user_id: u64,
    },
    /// A message was deleted by its sender: the target shard's `users` (the conversation's
    /// other participants) lose their `message` notification if it is about that message
    /// (`notifications::forget_message`).
    MessageDeleted {
        conversation: u64,
        message: u64,
        users: Vec<u64>,
    },
    /// The user turned its account public again (`social::went_public`).
    WentPublic {
        user_id: u64,
    },
}

impl Event {
    /// Does the event carry something of `user`'s (its posts, messages, relations,
    /// notifications, media) that must go from the history when the account is erased?
    /// Tombstones that other readers of the history still need (`PostDeleted` for the search
    /// index, `UserChanged`, `SuspensionChanged`, `AccountErased`, `ErasureWork`,
    /// `NotificationsRetracted`, `WentPrivate`, `WentPublic`) name ids only and stay until retention. Exhaustive on purpose: a new variant must decide.
    pub fn reveals(&self, user: u64) -> bool {
        match self {
            Event::Followed { follower, followee }
            | Event::Unfollowed { follower, followee }
            | Event::FollowApproved { follower, followee } => {
                *follower == user || *followee == user
            }
            Event::Blocked { blocker, blocked } | Event::Unblocked { blocker, blocked } => {
                *blocker == user || *blocked == user
            }
            Event::PostCreated { post } | Event::PostEdited { post } => post.author_id == user,
            Event::ConversationJoined { users, .. } | Event::MessageDeleted { users, .. } => {
                users.contains(&user)
            }
            Event::MessagePosted {
                message,
                recipients,
            } => message.sender == user || recipients.contains(&user),
            Event::ConversationLeft { user: left, .. } => *left == user,
            Event::MediaReady { owner, .. } | Event::MediaFailed { owner, .. } => *owner == user,
            Event::Notified { notice } => notice.recipient == user || notice.actor == Some(user),
            Event::PostDeleted { .. }
            | Event::UserChanged { .. }
            | Event::SuspensionChanged { .. }
            | Event::AccountErased { .. }
            | Event::ErasureWork { .. }
            | Event::NotificationsRetracted { .. }
            | Event::WentPrivate { .. }
            | Event::WentPublic { .. } => false,
        }
    }
}

/// Account erasure: walks up to `limit` rows of the history from `from` and deletes the
/// events that reveal `user` (`Event::reveals`). Returns the rows deleted and where the walk
/// goes on (`None`: the end of the history is reached). A row that does not decode is
/// deleted too: nothing can tell whose it was.
pub fn erase_revealing(
    txn: &WriteTransaction,
    user: u64,
    from: HistoryKey,
    limit: usize,
) -> Result<(usize, Option<HistoryKey>), CoreError> {
    let mut store = txn.open_table(EVENT_STORE)?;
    let mut doomed = Vec::new();
    let mut next = None;
    for (i, row) in store.range(from..)?.enumerate() {
        let (key, value) = row?;
        if i == limit {
            next = Some(key.value());
            break;
        }
        let reveals = decode::<Event>(value.value()).map_or(true, |e| e.reveals(user));
        if reveals {
            doomed.push(key.value());
        }
    }
    for key in &doomed {
        store.remove(key)?;
    }
    Ok((doomed.len(), next))
}

/// Appends `event` to the history and queues it for each shard in `targets`.
pub fn record(
    txn: &WriteTransaction,
    id: u64,
    now_ms: u64,
    event: &Event,
    targets: &[usize],
) -> Result<(), CoreError> {
    record_all(txn, [(id, now_ms, event, targets)])
}

/// `record` for several events (id, ms, event, targets), each table opened once (a batch of
/// sends records one event per message).
pub fn record_all<'a>(
    txn: &WriteTransaction,
    events: impl IntoIterator<Item = (u64, u64, &'a Event, &'a [usize])>,
) -> Result<(), CoreError> {
    let mut store = txn.open_table(EVENT_STORE)?;
    let mut outbox = None;
    for (id, now_ms, event, targets) in events {
        let bytes = encode(event);
        store.insert((now_ms, id), bytes.as_slice())?;
        if targets.is_empty() {
            continue;
        }
        let outbox = match &mut outbox {
            Some(t) => t,
            None => outbox.insert(txn.open_table(EVENT_OUTBOX)?),
        };
        for target in targets {
            outbox.insert((*target as u32, id), bytes.as_slice())?;
        }
    }
    Ok(())
}

/// A key of the history: (ms, event id).
pub type HistoryKey = (u64, u64);

/// Up to `limit` events of the history from key `from` (inclusive), oldest first.
pub fn history(
    read: &ReadTransaction,
    from: HistoryKey,
    limit: usize,
) -> Result<Vec<(HistoryKey, Event)>, CoreError> {
    let table = match read.open_table(EVENT_STORE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.range(from..)?.take(limit) {
        let (key, value) = row?;
        out.push((key.value(), decode(value.value())?));
    }
    Ok(out)
}

/// Up to `limit` keys (ms, event id) of the history from `from` (inclusive), oldest first.
pub fn history_keys(
    read: &ReadTransaction,
    from: (u64, u64),
    limit: usize,
) -> Result<Vec<(u64, u64)>, CoreError> {
    let table = match read.open_table(EVENT_STORE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.range(from..)?.take(limit) {
        out.push(row?.0.value());
    }
    Ok(out)
}

/// One event of the history.
pub fn stored(read: &ReadTransaction, key: (u64, u64)) -> Result<Option<Event>, CoreError> {
    let table = match read.open_table(EVENT_STORE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(key)?;
    value.map(|v| decode(v.value())).transpose()
}

/// The newest key of the history.
pub fn last_key(read: &ReadTransaction) -> Result<Option<(u64, u64)>, CoreError> {
    let table = match read.open_table(EVENT_STORE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let last = table.last()?.map(|(k, _)| k.value());
    Ok(last)
}

/// Up to `limit` undelivered events for `target`, oldest first.
pub fn pending(
    read: &ReadTransaction,
    target: usize,
    limit: usize,
) -> Result<Vec<(u64, Event)>, CoreError> {
    pending_except(read, target, limit, 0, |_| false)
}

/// Outbox rows not yet acknowledged, for every target.
pub fn outbox_len(read: &ReadTransaction) -> Result<u64, CoreError> {
    match crate::table_or_none(read, EVENT_OUTBOX)? {
        Some(table) => Ok(table.len()?),
        None => Ok(0),
    }
}

/// Up to `limit` undelivered events for `target`, oldest first, leaving out those `skip`
/// names (delivered, their acknowledgement not committed yet). At most `limit + skip_max`
/// rows are looked at, and a skipped row is not decoded.
pub fn pending_except(
    read: &ReadTransaction,
    target: usize,
    limit: usize,
    skip_max: usize,
    skip: impl Fn(u64) -> bool,
) -> Result<Vec<(u64, Event)>, CoreError> {
    let table = match read.open_table(EVENT_OUTBOX) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let t = target as u32;
    let mut out = Vec::new();
    for row in table
        .range((t, 0)..=(t, u64::MAX))?
        .take(limit.saturating_add(skip_max))
    {
        let (key, value) = row?;
        let id = key.value().1;
        if skip(id) {
            continue;
        }
        out.push((id, decode(value.value())?));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// The shards that have undelivered events.
pub fn pending_targets(read: &ReadTransaction) -> Result<Vec<usize>, CoreError> {
    let table = match read.open_table(EVENT_OUTBOX) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    let mut next = 0u32;
    // Skip from one target to the next instead of walking every row.
    while let Some(row) = table.range((next, 0)..)?.next() {
        let (key, _) = row?;
        let target = key.value().0;
        out.push(target as usize);
        match target.checked_add(1) {
            Some(n) => next = n,
            None => break,
        }
    }
    Ok(out)
}

/// Deletes delivered events from the outbox.
pub fn acknowledge(txn: &WriteTransaction, target: usize, ids: &[u64]) -> Result<(), CoreError> {
    let mut outbox = txn.open_table(EVENT_OUTBOX)?;
    for id in ids {
        outbox.remove((target as u32, *id))?;
    }
    Ok(())
}

/// Records that event `id` is being applied here; false when it already was (apply nothing).
pub fn first_application(txn: &WriteTransaction, id: u64, now_ms: u64) -> Result<bool, CoreError> {
    let mut applied = txn.open_table(EVENT_APPLIED)?;
    if applied.get(id)?.is_some() {
        return Ok(false);
    }
    applied.insert(id, now_ms)?;
    Ok(true)
}

/// Has the event `id` been applied on this shard?
pub fn applied(read: &ReadTransaction, id: u64) -> Result<bool, CoreError> {
    match crate::table_or_none(read, EVENT_APPLIED)? {
        Some(t) => Ok(t.get(id)?.is_some()),
        None => Ok(false),
    }
}

/// Deletes history and dedupe rows older than `before_ms` (at most `max` of each).
pub fn prune(txn: &WriteTransaction, before_ms: u64, max: usize) -> Result<usize, CoreError> {
    let mut store = txn.open_table(EVENT_STORE)?;
    let old: Vec<(u64, u64)> = store
        .range(..(before_ms, 0))?
        .take(max)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for key in &old {
        store.remove(key)?;
    }
    // Event ids are time-ordered, so the dedupe rows older than the cut are one range.
    let cut = before_ms.saturating_sub(crate::ID_EPOCH_MS) << 22;
    let mut applied = txn.open_table(EVENT_APPLIED)?;
    let stale: Vec<u64> = applied
        .range(..cut)?
        .take(max)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for id in &stale {
        applied.remove(id)?;
    }
    Ok(old.len() + stale.len())
}

/// Applies events delivered to this shard in order, each at most once, and returns those
/// applied now (the others were applied before). A run of `MessagePosted` events (a busy
/// conversation's batch) is applied together: each table is opened once for the run and its
/// notifications are one `notify_all` (`apply_messages`); anything else goes through
/// `apply`, one at a time.
pub fn apply_all(
    txn: &WriteTransaction,
    events: Vec<(u64, Event)>,
    now_ms: u64,
    here: impl Fn(u64) -> bool,
) -> Result<Vec<(u64, Event)>, CoreError> {
    let mut fresh = Vec::with_capacity(events.len());
    let mut run: Vec<(u64, Event)> = Vec::new();
    for (id, event) in events {
        if matches!(event, Event::MessagePosted { .. }) {
            run.push((id, event));
            continue;
        }
        if !run.is_empty() {
            fresh.extend(apply_messages(
                txn,
                std::mem::take(&mut run),
                now_ms,
                &here,
            )?);
        }
        if apply(txn, id, now_ms, &event, &here)? {
            fresh.push((id, event));
        }
    }
    if !run.is_empty() {
        fresh.extend(apply_messages(txn, run, now_ms, &here)?);
    }
    Ok(fresh)
}

/// `user` left `conversation`, on the user's shard: its inbox forgets the conversation, and
/// its `message` notification about it goes (`ConversationLeft` applied, or the leave itself
/// when the conversation is on the user's shard).
pub fn left(txn: &WriteTransaction, user: u64, conversation: u64) -> Result<(), CoreError> {
    messages::drop_from_inbox(txn, user, conversation)?;
    crate::notifications::forget_conversation(txn, user, conversation)?;
    Ok(())
}

/// `apply` for a run of `MessagePosted` events: the same rows (dedupe, inboxes,
/// notifications), each table opened once for the run. Returns the events applied now.
fn apply_messages(
    txn: &WriteTransaction,
    run: Vec<(u64, Event)>,
    now_ms: u64,
    here: &impl Fn(u64) -> bool,
) -> Result<Vec<(u64, Event)>, CoreError> {
    let mut fresh = Vec::with_capacity(run.len());
    {
        let mut applied = txn.open_table(EVENT_APPLIED)?;
        for (id, event) in run {
            if applied.get(id)?.is_some() {
                continue;
            }
            applied.insert(id, now_ms)?;
            fresh.push((id, event));
        }
    }
    let mut touches: Vec<(u64, u64, u64)> = Vec::new();
    let mut notified: Vec<(&Message, Vec<u64>)> = Vec::with_capacity(fresh.len());
    for (_, event) in &fresh {
        let Event::MessagePosted {
            message,
            recipients,
        } = event
        else {
            continue;
        };
        // As in `apply`: the sender's own inbox moves too when the sender lives here.
        let sender = std::iter::once(&message.sender);
        for u in recipients.iter().chain(sender).filter(|u| here(**u)) {
            touches.push((*u, message.conversation, message.created_ms));
        }
        let local: Vec<u64> = recipients
            .iter()
            .copied()
            .filter(|u| here(*u) && *u != message.sender)
            .collect();
        notified.push((message, local));
    }
    messages::touch_inboxes(txn, &touches)?;
    let notified: Vec<(&Message, &[u64])> =
        notified.iter().map(|(m, l)| (*m, l.as_slice())).collect();
    crate::notifications::on_messages(txn, &notified)?;
    Ok(fresh)
}

/// Applies an event delivered to this shard, at most once: `false` when it was applied
/// before (nothing done). `here` tells whether a user lives on this shard.
pub fn apply(
    txn: &WriteTransaction,
    id: u64,
    now_ms: u64,
    event: &Event,
    here: impl Fn(u64) -> bool,
) -> Result<bool, CoreError> {
    if !first_application(txn, id, now_ms)? {
        return Ok(false);
    }
    match event {
        Event::Followed { follower, followee } => {
            social::add_follower(txn, *followee, *follower, now_ms)?
        }
        Event::Unfollowed { follower, followee } => {
            social::remove_follower(txn, *followee, *follower)?
        }
        Event::Blocked { blocker, blocked } => {
            social::apply_blocked(txn, *blocker, *blocked, now_ms)?
        }
        Event::Unblocked { blocker, blocked } => social::apply_unblocked(txn, *blocker, *blocked)?,
        Event::PostCreated { post } => {
            let mentioned: Vec<u64> = post
                .mentions
                .iter()
                .map(|m| m.user_id)
                .filter(|u| here(*u))
                .collect();
            let mentioned = social::mentioned_as_now(txn, post, mentioned)?;
            social::fan_out(txn, post, false, &mentioned)?;
        }
        Event::PostDeleted { post_id, .. } => {
            social::unfan(txn, *post_id)?;
            // Mentions were made here when the post arrived.
            crate::notifications::forget_local(txn, *post_id)?;
        }
        Event::PostEdited { post } => social::refresh_copy(txn, post)?,
        Event::FollowApproved { follower, followee } => {
            social::apply_approved(txn, *follower, *followee, now_ms)?
        }
        Event::ConversationJoined {
            conversation,
            users,
            at_ms,
        } => {
            for u in users.iter().filter(|u| here(**u)) {
                messages::touch_inbox(txn, *u, *conversation, *at_ms)?;
            }
        }
        Event::MessagePosted {
            message,
            recipients,
        } => {
            // The sender's own inbox moves too when the sender lives here (the event came
            // to this shard for it even with no recipient here).
            let sender = std::iter::once(&message.sender);
            for u in recipients.iter().chain(sender).filter(|u| here(**u)) {
                messages::touch_inbox(txn, *u, message.conversation, message.created_ms)?;
            }
            // The recipients here hear of it now: the message carries its notifications.
            let local: Vec<u64> = recipients
                .iter()
                .copied()
                .filter(|u| here(*u) && *u != message.sender)
                .collect();
            crate::notifications::on_message(txn, message, &local)?;
        }
        Event::ConversationLeft { conversation, user } => left(txn, *user, *conversation)?,
        // Recorded on the uploader's own shard, never sent anywhere.
        Event::MediaReady { .. } | Event::MediaFailed { .. } => {}
        Event::Notified { notice } => crate::notifications::apply_remote(txn, notice, now_ms)?,
        // Never sent to another shard.
        Event::UserChanged { .. } => {}
        Event::SuspensionChanged { user_id, suspended } => {
            crate::moderation::mirror(txn, *user_id, *suspended, id)?;
        }
        Event::AccountErased { user_id, email_key } => {
            crate::erasure::on_erased(txn, *user_id, email_key, now_ms)?
        }
        Event::ErasureWork { user_id, items } => {
            crate::erasure::add_work(txn, *user_id, items, now_ms)?
        }
        Event::NotificationsRetracted { subject } => {
            crate::notifications::forget_local(txn, *subject)?
        }
        Event::WentPrivate { user_id } => {
            social::went_private(txn, *user_id)?;
        }
        Event::WentPublic { user_id } => social::went_public(txn, *user_id)?,
        Event::MessageDeleted {
            conversation,
            message,
            users,
        } => {
            for u in users.iter().filter(|u| here(**u)) {
                crate::notifications::forget_message(txn, *u, *conversation, *message)?;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tag each variant is stored with. Exhaustive on purpose: a new variant does not
    /// compile until it is given the next number here.
    fn stored_tag(event: &Event) -> u8 {
        match event {
            Event::Followed { .. } => 0,
            Event::Unfollowed { .. } => 1,
            Event::Blocked { .. } => 2,
            Event::Unblocked { .. } => 3,
            Event::PostCreated { .. } => 4,
            Event::PostDeleted { .. } => 5,
            Event::PostEdited { .. } => 6,
            Event::ConversationJoined { .. } => 7,
            Event::MessagePosted { .. } => 8,
            Event::ConversationLeft { .. } => 9,
            Event::FollowApproved { .. } => 10,
            Event::MediaReady { .. } => 11,
            Event::MediaFailed { .. } => 12,
            Event::Notified { .. } => 13,
            Event::UserChanged { .. } => 14,
            Event::SuspensionChanged { .. } => 15,
            Event::AccountErased { .. } => 16,
            Event::ErasureWork { .. } => 17,
            Event::NotificationsRetracted { .. } => 18,
            Event::WentPrivate { .. } => 19,
            Event::MessageDeleted { .. } => 20,
            Event::WentPublic { .. } => 21,
        }
    }

    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    const NOW: u64 = crate::ID_EPOCH_MS + 1_000_000;

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn posted(id: u64, conversation: u64, sender: u64, recipients: &[u64]) -> Event {
        Event::MessagePosted {
            message: Box::new(Message {
                id,
                conversation,
                sender,
                sender_username: "s".into(),
                sender_display_name: "S".into(),
                text: format!("m{id}"),
                media_ids: Vec::new(),
                created_ms: crate::id_ms(id),
                edited_ms: None,
            }),
            recipients: recipients.to_vec(),
        }
    }

    /// A user's inbox (activity ms, conversation), notifications (ms, actor) and unread count.
    type Seen = (Vec<(u64, u64)>, Vec<(u64, Option<u64>)>, u64);

    /// What a user sees of the events: its inbox and its notifications.
    fn seen(db: &Database, user: u64) -> Seen {
        let read = db.begin_read().unwrap();
        let inbox = messages::inbox(&read, user, None, 100).unwrap();
        let filter = crate::notifications::Filter::default();
        let notes = crate::notifications::page(&read, user, None, 100, &filter)
            .unwrap()
            .0
            .into_iter()
            .map(|n| (n.created_ms, n.actor))
            .collect();
        (
            inbox,
            notes,
            crate::notifications::unread(&read, user).unwrap(),
        )
    }

    /// `apply_all` (runs of `MessagePosted` applied together) leaves what `apply` one event
    /// at a time leaves, applies each event once, and answers the events it applied now.
    #[test]
    fn apply_all_is_apply_one_at_a_time() {
        let mut ids = crate::IdGen::new(1);
        let here = |u: u64| crate::shard_of(u) == 0;
        let (a, b) = (ids.next(NOW), ids.next(NOW + 1));
        let mut local = crate::IdGen::new(0);
        let (c, d) = (local.next(NOW + 2), local.next(NOW + 3));
        let (conv1, conv2) = (ids.next(NOW + 4), ids.next(NOW + 5));
        let mut events = Vec::new();
        let mut t = NOW + 10;
        let mut next = || {
            t += 3;
            ids.next(t)
        };
        events.push((next(), posted(0, conv1, a, &[c, d])));
        events.push((next(), posted(0, conv1, c, &[a, d])));
        events.push((
            next(),
            Event::ConversationJoined {
                conversation: conv2,
                users: vec![c],
                at_ms: NOW + 20,
            },
        ));
        events.push((next(), posted(0, conv2, b, &[c])));
        events.push((next(), posted(0, conv1, d, &[a, c])));
        // A message's id is its event's neighbour, so its time orders like the event's.
        let events: Vec<(u64, Event)> = events
            .into_iter()
            .map(|(id, e)| match e {
                Event::MessagePosted {
                    mut message,
                    recipients,
                } => {
                    message.id = id + 1;
                    message.created_ms = crate::id_ms(id);
                    (
                        id,
                        Event::MessagePosted {
                            message,
                            recipients,
                        },
                    )
                }
                other => (id, other),
            })
            .collect();

        let one = db();
        let tx = one.begin_write().unwrap();
        // The first is applied before (a redelivery): applied once only.
        assert!(apply(&tx, events[0].0, NOW, &events[0].1, here).unwrap());
        tx.commit().unwrap();
        let tx = one.begin_write().unwrap();
        for (id, e) in &events {
            apply(&tx, *id, NOW, e, here).unwrap();
        }
        tx.commit().unwrap();

        let all = db();
        let tx = all.begin_write().unwrap();
        assert!(apply(&tx, events[0].0, NOW, &events[0].1, here).unwrap());
        tx.commit().unwrap();
        let tx = all.begin_write().unwrap();
        let fresh = apply_all(&tx, events.clone(), NOW, here).unwrap();
        tx.commit().unwrap();
        assert_eq!(fresh, events[1..].to_vec());
        let tx = all.begin_write().unwrap();
        assert!(apply_all(&tx, events.clone(), NOW, here)
            .unwrap()
            .is_empty());
        tx.commit().unwrap();

        for user in [c, d] {
            let (inbox, notes, unread) = seen(&all, user);
            assert_eq!((inbox.clone(), unread), {
                let (i, _, u) = seen(&one, user);
                (i, u)
            });
            // The same notifications, by actor; a batch makes them at its newest time.
            let actors: Vec<Option<u64>> = notes.iter().map(|n| n.1).collect();
            let (_, one_notes, _) = seen(&one, user);
            let one_actors: Vec<Option<u64>> = one_notes.iter().map(|n| n.1).collect();
            assert_eq!(actors, one_actors, "user {user}");
            assert!(!inbox.is_empty());
        }
        // Users of other shards get nothing here.
        assert!(seen(&all, a).0.is_empty());
    }

    /// `pending_except` leaves out what is being acknowledged, and still finds `limit` rows
    /// behind them.
    #[test]
    fn pending_except_skips_rows_being_acknowledged() {
        let db = db();
        let event = Event::UserChanged { user_id: 1 };
        let tx = db.begin_write().unwrap();
        for id in 1..=10u64 {
            record(&tx, id, NOW, &event, &[1]).unwrap();
        }
        tx.commit().unwrap();
        let read = db.begin_read().unwrap();
        let ids = |v: Vec<(u64, Event)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let skipped = |id: u64| id <= 4 || id == 6;
        assert_eq!(
            ids(pending_except(&read, 1, 3, 5, skipped).unwrap()),
            vec![5, 7, 8]
        );
        assert_eq!(
            ids(pending_except(&read, 1, 100, 5, skipped).unwrap()),
            vec![5, 7, 8, 9, 10]
        );
        // At most limit + skip_max rows are looked at.
        assert_eq!(
            ids(pending_except(&read, 1, 2, 1, skipped).unwrap()),
            vec![]
        );
        assert_eq!(
            ids(pending_except(&read, 0, 3, 5, skipped).unwrap()),
            vec![]
        );
    }

    #[test]
    fn stored_tags_never_move() {
        let samples = [
            Event::Followed {
                follower: 1,
                followee: 2,
            },
            Event::Unfollowed {
                follower: 1,
                followee: 2,
            },
            Event::Blocked {
                blocker: 1,
                blocked: 2,
            },
            Event::Unblocked {
                blocker: 1,
                blocked: 2,
            },
            Event::PostDeleted {
                post_id: 1,
                author: 2,
            },
            Event::ConversationJoined {
                conversation: 1,
                users: vec![2],
                at_ms: 3,
            },
            Event::ConversationLeft {
                conversation: 1,
                user: 2,
            },
            Event::FollowApproved {
                follower: 1,
                followee: 2,
            },
            Event::MediaReady {
                media_id: 1,
                owner: 2,
            },
            Event::MediaFailed {
                media_id: 1,
                owner: 2,
                reason: "x".into(),
            },
            Event::UserChanged { user_id: 1 },
            Event::SuspensionChanged {
                user_id: 1,
                suspended: true,
            },
            Event::AccountErased {
                user_id: 1,
                email_key: "a@b.c".into(),
            },
            Event::ErasureWork {
                user_id: 1,
                items: vec![(0, 2)],
            },
            Event::NotificationsRetracted { subject: 1 },
        ];
        for event in &samples {
            let bytes = encode(event);
            // After the format byte.
            assert_eq!(bytes[1], stored_tag(event), "{event:?}");
            assert_eq!(&decode::<Event>(&bytes).unwrap(), event);
        }
    }
}
