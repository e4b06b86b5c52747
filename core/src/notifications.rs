//! Notifications (tables `notifications`, `notification_keys`, `notification_counts`,
//! `notification_ids`, `notifications_fresh`, `notifications_remote`).
//!
//! Placement: a notification lives on its recipient's shard and is written in the same write
//! transaction as the change that causes it (a like, a comment, a follow applied on the
//! followee's shard, a post applied where a mentioned user lives). Whether the recipient
//! wants it is decided there too, where its blocks and mutes are: a blocked or muted actor
//! causes none, and nobody is notified of their own actions.
//!
//! A change on one shard whose recipient lives on another (a like of a comment whose author
//! is elsewhere, a reply to such a comment) parks the notice in `notifications_remote`; the
//! engine turns parked notices into `Event::Notified` outbox rows (`take_remote`, with event
//! ids it supplies) inside the same transaction, and the recipient's shard applies them.
//!
//! Fresh notifications are remembered in memory on the thread that made them (`MADE`: a
//! partition's one writer thread) until the engine takes them (`take_fresh`) in the very
//! transaction that made them: that is how the engine learns, after the commit, what to push
//! live without every domain function having to return them. (Older versions kept them in
//! `notifications_fresh`; what they left there is taken by `take_stored_fresh`.)
//!
//! A message's notification is one per (recipient, conversation), replaced by each new
//! message (a new id, so it moves up, unread again): a busy conversation costs one row, and
//! the recipient's shard makes it when it applies `Event::MessagePosted` (`on_message`),
//! with no notice of its own crossing shards.
//!
//! A deleted post or comment takes its notifications with it (`forget_subject`, in the
//! deleting transaction): those on this shard at once, through `notification_subjects`; on
//! each shard a notice about it was sent to (`notification_subjects_sent`), through an
//! `Event::NotificationsRetracted` parked in `notifications_retract` and sent like a notice.
//! Mentions, made where the mentioned user lives when the post arrives there, go when
//! `PostDeleted` is applied there.
//!
//! Duplicates coalesce: one notification per (recipient, kind, actor, subject), so like,
//! unlike, like notifies once. Mentions need no coalescing key: a post's mentions are made
//! once, when its fan-out is applied where each mentioned user lives. Each user keeps at most
//! `PER_USER_MAX` notifications; the oldest go first.

use std::sync::atomic::{AtomicUsize, Ordering};

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::events::{self, Event};
use crate::{shard_of, social, CoreError, IdGen};

/// (recipient, notification id) -> Notification
const NOTIFICATIONS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("notifications");
/// (recipient, kind, actor or 0, subject id or 0) -> notification id : coalescing
const KEYS: TableDefinition<(u64, u8, u64, u64), u64> = TableDefinition::new("notification_keys");
/// recipient -> (total, unread)
const COUNTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("notification_counts");
/// "last" -> the last notification id made on this shard (ids are made here, not by the
/// engine, so that any transaction can notify)
const IDS: TableDefinition<&str, u64> = TableDefinition::new("notification_ids");
/// (recipient, notification id) -> () : made but not yet taken by the engine, as versions
/// before `MADE` wrote it; only drained now (`take_stored_fresh`)
const FRESH: TableDefinition<(u64, u64), ()> = TableDefinition::new("notifications_fresh");
/// local sequence -> New : for a recipient on another shard, waiting for an event id
const REMOTE: TableDefinition<u64, &[u8]> = TableDefinition::new("notifications_remote");
/// (post or comment id, recipient, notification id) -> () : what to delete when the post or
/// comment goes (a comment's notifications are listed under its post too)
const SUBJECTS: TableDefinition<(u64, u64, u64), ()> =
    TableDefinition::new("notification_subjects");
/// (post or comment id, shard) -> () : on the subject's shard, the shards a notice about it
/// was sent to (parked in `REMOTE`), so that its deletion reaches them
const SENT: TableDefinition<(u64, u32), ()> = TableDefinition::new("notification_subjects_sent");
/// (post or comment id, shard) -> () : a deletion to tell that shard, waiting for an event id
const RETRACT: TableDefinition<(u64, u32), ()> = TableDefinition::new("notifications_retract");

/// Notifications made and not yet taken remembered per thread, at most; past it the list
/// is dropped (those notifications stay, unpublished live: nothing takes them then anyway).
const MADE_MAX: usize = 100_000;

std::thread_local! {
    /// (recipient, id) of the notifications made on this thread and not yet taken by
    /// `take_fresh`. Every write of a partition runs on its one writer thread, so the
    /// notifications a write closure made are here when the closure takes them; keeping them
    /// in memory spares a table written and emptied in every notifying transaction.
    static MADE: std::cell::RefCell<Vec<(u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Per shard (its number modulo the length): notifications in some thread's `MADE`, made by
/// a write that did not take them, so that the engine can come and take them (`untaken`).
static UNTAKEN: [AtomicUsize; 64] = [const { AtomicUsize::new(0) }; 64];

fn untaken_of(shard: usize) -> &'static AtomicUsize {
    &UNTAKEN[shard % UNTAKEN.len()]
}

/// Did a write on shard `here` make notifications that no `take_fresh` took yet? (The engine
/// then runs a notifying write on that shard, whose `take_fresh` takes them.)
pub fn untaken(here: usize) -> bool {
    untaken_of(here).load(Ordering::Relaxed) > 0
}

/// Notifications kept per user; past it the oldest is deleted.
pub const PER_USER_MAX: u64 = 1000;
/// Ids one mark-read request may name.
pub const MARK_IDS_MAX: usize = 100;

/// What happened.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Kind {
    Follow,
    FollowRequest,
    Like,
    Comment,
    Reply,
    Mention,
    Message,
    MediaReady,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Follow,
        Kind::FollowRequest,
        Kind::Like,
        Kind::Comment,
        Kind::Reply,
        Kind::Mention,
        Kind::Message,
        Kind::MediaReady,
    ];

    fn code(self) -> u8 {
        match self {
            Kind::Follow => 0,
            Kind::FollowRequest => 1,
            Kind::Like => 2,
            Kind::Comment => 3,
            Kind::Reply => 4,
            Kind::Mention => 5,
            Kind::Message => 6,
            Kind::MediaReady => 7,
        }
    }

    /// The name clients see and filter by.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Follow => "follow",
            Kind::FollowRequest => "follow_request",
            Kind::Like => "like",
            Kind::Comment => "comment",
            Kind::Reply => "reply",
            Kind::Mention => "mention",
            Kind::Message => "message",
            Kind::MediaReady => "media_ready",
        }
    }

    pub fn parse(raw: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

/// What a notification is about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Subject {
    None,
    Post(u64),
    Comment { id: u64, post: u64 },
    Message { id: u64, conversation: u64 },
    Media(u64),
}

impl Subject {
    /// The id that identifies the subject for coalescing (0 for none).
    pub fn id(self) -> u64 {
        match self {
            Subject::None => 0,
            Subject::Post(id) | Subject::Media(id) => id,
            Subject::Comment { id, .. } | Subject::Message { id, .. } => id,
        }
    }
}

/// A notification to make.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct New {
    pub recipient: u64,
    pub kind: Kind,
    /// Who caused it; `None` for the system (media ready).
    pub actor: Option<u64>,
    pub subject: Subject,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notification {
    pub id: u64,
    pub recipient: u64,
    pub kind: Kind,
    pub actor: Option<u64>,
    pub subject: Subject,
    pub created_ms: u64,
    pub read: bool,
}

impl Notification {
    /// Drops this notification's coalescing key, if it is still this one's.
    fn unkey(&self, keys: &mut redb::Table<(u64, u8, u64, u64), u64>) -> Result<(), CoreError> {
        let key = coalescing_key(self.recipient, self.kind, self.actor, self.subject);
        if keys.get(key)?.is_some_and(|v| v.value() == self.id) {
            keys.remove(key)?;
        }
        if self.kind == Kind::Message {
            // Message notifications made before they were kept one per conversation were
            // keyed by (actor, message).
            let legacy = (
                self.recipient,
                self.kind.code(),
                self.actor.unwrap_or(0),
                self.subject.id(),
            );
            keys.remove(legacy)?;
        }
        Ok(())
    }
}

/// Which notifications a mark-read means.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Which {
    Ids(Vec<u64>),
    All,
    /// Every notification with an id up to and including this one.
    UpTo(u64),
}

/// Kinds a listing keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only these kinds (empty: every kind).
    pub only: Vec<Kind>,
    pub exclude: Vec<Kind>,
}

impl Filter {
    fn keeps(&self, kind: Kind) -> bool {
        (self.only.is_empty() || self.only.contains(&kind)) && !self.exclude.contains(&kind)
    }
}

impl Subject {
    /// The post and comment ids a notification about this subject is listed under in
    /// `notification_subjects` (none for messages, media and follows).
    fn deletable(self) -> impl Iterator<Item = u64> {
        let (a, b) = match self {
            Subject::Post(post) => (Some(post), None),
            Subject::Comment { id, post } => (Some(id), Some(post)),
            Subject::None | Subject::Message { .. } | Subject::Media(_) => (None, None),
        };
        a.into_iter().chain(b)
    }
}

/// Notifies `new.recipient`, in the caller's write transaction, on shard `here`. A recipient
/// on another shard is parked for an outbox event (see `take_remote`). Nothing is made for
/// one's own action, for an actor the recipient blocked, muted or was blocked by, or when
/// the same (kind, actor, subject) was notified before. A message is the exception: a
/// recipient keeps one `message` notification per conversation, which each new message
/// replaces (a new id, so it moves to the top; unread again), so a busy conversation costs
/// one row, not one per message.
pub fn notify(
    txn: &WriteTransaction,
    here: usize,
    new: &New,
    now_ms: u64,
) -> Result<(), CoreError> {
    notify_all(txn, here, std::slice::from_ref(new), now_ms)
}

/// `notify` for many notices in one transaction (a post's mentions): each table is opened
/// once for all of them, and the shard's last id written once, instead of once per notice.
pub fn notify_all(
    txn: &WriteTransaction,
    here: usize,
    news: &[New],
    now_ms: u64,
) -> Result<(), CoreError> {
    let (local, remote): (Vec<&New>, Vec<&New>) = news
        .iter()
        .filter(|n| n.actor != Some(n.recipient))
        .partition(|n| shard_of(n.recipient) == here);
    if !remote.is_empty() {
        park(txn, here, &remote, now_ms)?;
    }
    if local.is_empty() {
        return Ok(());
    }
    let silence = social::Silence::open(txn)?;
    let wanted: Vec<&New> = local
        .into_iter()
        .filter_map(|n| match n.actor {
            Some(actor) => match silence.silenced(n.recipient, actor) {
                Ok(true) => None,
                Ok(false) => Some(Ok(n)),
                Err(e) => Some(Err(e)),
            },
            None => Some(Ok(n)),
        })
        .collect::<Result<_, CoreError>>()?;
    drop(silence);
    if wanted.is_empty() {
        return Ok(());
    }
    let mut ids = Ids::open(txn, here)?;
    let mut keys = txn.open_table(KEYS)?;
    let mut table = txn.open_table(NOTIFICATIONS)?;
    let mut counts = txn.open_table(COUNTS)?;
    let mut subjects = None;
    let mut over_limit: Vec<u64> = Vec::new();
    let mut mentioned = std::collections::HashSet::new();
    for new in &wanted {
        let key = coalescing_key(new.recipient, new.kind, new.actor, new.subject);
        // A mention needs no key: a post's mentions are made once where each mentioned user
        // lives (its fan-out is applied once), and the same user twice in one post is one.
        let keyed = new.kind != Kind::Mention;
        if !keyed && !mentioned.insert((new.recipient, new.actor, new.subject)) {
            continue;
        }
        let earlier = match keyed {
            true => keys.get(key)?.map(|v| v.value()),
            false => None,
        };
        // The conversation's earlier message notification, taken out to be replaced.
        let replaced: Option<Notification> = match earlier {
            None => None,
            Some(old) if new.kind == Kind::Message => {
                let row = table.remove((new.recipient, old))?;
                row.map(|v| decode(v.value())).transpose()?
            }
            Some(_) => continue,
        };
        let id = ids.next(now_ms);
        let n = Notification {
            id,
            recipient: new.recipient,
            kind: new.kind,
            actor: new.actor,
            subject: new.subject,
            created_ms: now_ms,
            read: false,
        };
        table.insert((n.recipient, id), encode(&n).as_slice())?;
        if keyed {
            keys.insert(key, id)?;
        }
        MADE.with(|made| {
            let mut made = made.borrow_mut();
            if made.len() >= MADE_MAX {
                for (_, id) in made.drain(..) {
                    untaken_of(shard_of(id)).fetch_sub(1, Ordering::Relaxed);
                }
            }
            made.push((n.recipient, id));
        });
        untaken_of(here).fetch_add(1, Ordering::Relaxed);
        // Opening a table is not free: only when there is something to list.
        if n.subject.deletable().next().is_some() {
            let subjects = match &mut subjects {
                Some(t) => t,
                None => subjects.insert(txn.open_table(SUBJECTS)?),
            };
            for subject in n.subject.deletable() {
                subjects.insert((subject, n.recipient, id), ())?;
            }
        }
        let (total, unread) = counts.get(n.recipient)?.map_or((0, 0), |v| v.value());
        match replaced {
            // Replaced an unread one: the counts stay.
            Some(old) if !old.read => {}
            Some(_) => {
                counts.insert(n.recipient, (total, unread + 1))?;
            }
            None => {
                counts.insert(n.recipient, (total + 1, unread + 1))?;
                if total + 1 > PER_USER_MAX && !over_limit.contains(&n.recipient) {
                    over_limit.push(n.recipient);
                }
            }
        }
    }
    drop((table, keys, counts, subjects));
    ids.close()?;
    for recipient in over_limit {
        while counts_in(txn, recipient)?.0 > PER_USER_MAX {
            if !drop_oldest(txn, recipient)? {
                break;
            }
        }
    }
    Ok(())
}

/// Parks notices for recipients on other shards (see `take_remote`), and lists their
/// subjects as sent there, so that a deletion follows them.
fn park(
    txn: &WriteTransaction,
    here: usize,
    notices: &[&New],
    now_ms: u64,
) -> Result<(), CoreError> {
    let mut ids = Ids::open(txn, here)?;
    let mut parked = txn.open_table(REMOTE)?;
    let mut sent = None;
    for new in notices {
        parked.insert(ids.next(now_ms), encode(*new).as_slice())?;
        let target = shard_of(new.recipient) as u32;
        for subject in new.subject.deletable() {
            let sent = match &mut sent {
                Some(t) => t,
                None => sent.insert(txn.open_table(SENT)?),
            };
            sent.insert((subject, target), ())?;
        }
    }
    drop((parked, sent));
    ids.close()
}

/// The coalescing key of a notification (`notification_keys`): (recipient, kind, actor or 0,
/// subject id or 0); for a message, (recipient, kind, 0, conversation): one per conversation.
fn coalescing_key(
    recipient: u64,
    kind: Kind,
    actor: Option<u64>,
    subject: Subject,
) -> (u64, u8, u64, u64) {
    match (kind, subject) {
        (Kind::Message, Subject::Message { conversation, .. }) => {
            (recipient, kind.code(), 0, conversation)
        }
        _ => (recipient, kind.code(), actor.unwrap_or(0), subject.id()),
    }
}

/// `notify` for a notice that arrived from another shard (`Event::Notified`).
pub fn apply_remote(txn: &WriteTransaction, new: &New, now_ms: u64) -> Result<(), CoreError> {
    notify(txn, shard_of(new.recipient), new, now_ms)
}

/// A follow, on the followee's shard.
pub fn on_follow(
    txn: &WriteTransaction,
    followee: u64,
    follower: u64,
    now_ms: u64,
) -> Result<(), CoreError> {
    let new = New {
        recipient: followee,
        kind: Kind::Follow,
        actor: Some(follower),
        subject: Subject::None,
    };
    notify(txn, shard_of(followee), &new, now_ms)
}

/// A new post, where it is applied: each of `mentioned_here` (users of this shard) hears.
pub fn on_mention(
    txn: &WriteTransaction,
    post: &crate::content::Post,
    mentioned_here: &[u64],
) -> Result<(), CoreError> {
    on_mentions(txn, &[(post, mentioned_here)])
}

/// `on_mention` for several posts in one pass (a batch of composes): one `notify_all`, at
/// the newest post's time (the posts of a batch are milliseconds apart).
pub fn on_mentions(
    txn: &WriteTransaction,
    posts: &[(&crate::content::Post, &[u64])],
) -> Result<(), CoreError> {
    let news: Vec<New> = posts
        .iter()
        .flat_map(|(post, mentioned)| {
            mentioned.iter().map(|user| New {
                recipient: *user,
                kind: Kind::Mention,
                actor: Some(post.author_id),
                subject: Subject::Post(post.id),
            })
        })
        .collect();
    let Some(first) = news.first() else {
        return Ok(());
    };
    let now_ms = posts.iter().map(|(p, _)| p.created_ms).max().unwrap_or(0);
    notify_all(txn, shard_of(first.recipient), &news, now_ms)
}

/// A like of a post or comment by `actor`, in the like's transaction (on the post's shard).
pub fn on_like(
    txn: &WriteTransaction,
    recipient: u64,
    actor: u64,
    subject: Subject,
    now_ms: u64,
) -> Result<(), CoreError> {
    let new = New {
        recipient,
        kind: Kind::Like,
        actor: Some(actor),
        subject,
    };
    notify(txn, shard_of(subject.id()), &new, now_ms)
}

/// A new comment, in its transaction (on the post's shard): the post's author hears of it
/// ("comment"), and the author of the comment it answers ("reply"), once each.
pub fn on_comment(
    txn: &WriteTransaction,
    comment: &crate::content::Comment,
    post_author: u64,
    parent_author: Option<u64>,
) -> Result<(), CoreError> {
    let here = shard_of(comment.id);
    let subject = Subject::Comment {
        id: comment.id,
        post: comment.post_id,
    };
    if let Some(parent_author) = parent_author {
        let new = New {
            recipient: parent_author,
            kind: Kind::Reply,
            actor: Some(comment.author_id),
            subject,
        };
        notify(txn, here, &new, comment.created_ms)?;
    }
    if parent_author != Some(post_author) {
        let new = New {
            recipient: post_author,
            kind: Kind::Comment,
            actor: Some(comment.author_id),
            subject,
        };
        notify(txn, here, &new, comment.created_ms)?;
    }
    Ok(())
}

/// A new message, on the shard of `recipients` (users of this shard, the sender not among
/// them): in the conversation's own shard's transaction for those there, when
/// `Event::MessagePosted` is applied for the others (no notice of its own crosses shards).
pub fn on_message(
    txn: &WriteTransaction,
    message: &crate::messages::Message,
    recipients: &[u64],
) -> Result<(), CoreError> {
    on_messages(txn, &[(message, recipients)])
}

/// `on_message` for the messages of one batch of sends (message, its recipients of this
/// shard), in order: one `notify_all`, so each table is opened once for the batch. The
/// notifications are made at the newest message's time.
pub fn on_messages(
    txn: &WriteTransaction,
    sent: &[(&crate::messages::Message, &[u64])],
) -> Result<(), CoreError> {
    let news: Vec<New> = sent
        .iter()
        .flat_map(|(message, recipients)| {
            let subject = Subject::Message {
                id: message.id,
                conversation: message.conversation,
            };
            recipients.iter().map(move |recipient| New {
                recipient: *recipient,
                kind: Kind::Message,
                actor: Some(message.sender),
                subject,
            })
        })
        .collect();
    let Some(first) = news.first() else {
        return Ok(());
    };
    let now_ms = sent.iter().map(|(m, _)| m.created_ms).max().unwrap_or(0);
    notify_all(txn, shard_of(first.recipient), &news, now_ms)
}

/// Takes the notifications made (on this thread: the partition's writer) and not yet handed
/// to the engine, as they are in `txn`. Call it in the transaction that made them.
pub fn take_fresh(txn: &WriteTransaction) -> Result<Vec<Notification>, CoreError> {
    let mut keys = MADE.with(|made| std::mem::take(&mut *made.borrow_mut()));
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    for (_, id) in &keys {
        untaken_of(shard_of(*id)).fetch_sub(1, Ordering::Relaxed);
    }
    keys.sort_unstable();
    keys.dedup();
    stored(txn, keys)
}

/// The notifications of `keys` that exist in this transaction: one made and then replaced
/// or trimmed in it is gone (so is one made by a transaction that was aborted).
fn stored(txn: &WriteTransaction, keys: Vec<(u64, u64)>) -> Result<Vec<Notification>, CoreError> {
    let table = txn.open_table(NOTIFICATIONS)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(v) = table.get(key)? {
            out.push(decode(v.value())?);
        }
    }
    Ok(out)
}

/// Takes what older versions left in `notifications_fresh` (see `has_pending`).
pub fn take_stored_fresh(txn: &WriteTransaction) -> Result<Vec<Notification>, CoreError> {
    let keys: Vec<(u64, u64)> = txn
        .open_table(FRESH)?
        .extract_from_if((0, 0)..=(u64::MAX, u64::MAX), |_, _| true)?
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    stored(txn, keys)
}

/// Turns parked notices for other shards into `Event::Notified` outbox rows, one per id in
/// `event_ids` at most (the rest wait for the next call). Returns (event id, target, event).
pub fn take_remote(
    txn: &WriteTransaction,
    event_ids: &[u64],
    now_ms: u64,
) -> Result<Vec<(u64, usize, Event)>, CoreError> {
    let mut parked = txn.open_table(REMOTE)?;
    let rows: Vec<(u64, New)> = parked
        .iter()?
        .take(event_ids.len())
        .map(|r| {
            let (k, v) = r?;
            Ok((k.value(), decode(v.value())?))
        })
        .collect::<Result<_, CoreError>>()?;
    let mut out = Vec::with_capacity(rows.len());
    for ((seq, notice), event_id) in rows.into_iter().zip(event_ids) {
        parked.remove(seq)?;
        let target = shard_of(notice.recipient);
        let event = Event::Notified {
            notice: Box::new(notice),
        };
        events::record(txn, *event_id, now_ms, &event, &[target])?;
        out.push((*event_id, target, event));
    }
    let left = &event_ids[out.len()..];
    let mut retract = txn.open_table(RETRACT)?;
    let rows: Vec<(u64, u32)> = retract
        .iter()?
        .take(left.len())
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for ((subject, target), event_id) in rows.into_iter().zip(left) {
        retract.remove((subject, target))?;
        let target = target as usize;
        let event = Event::NotificationsRetracted { subject };
        events::record(txn, *event_id, now_ms, &event, &[target])?;
        out.push((*event_id, target, event));
    }
    Ok(out)
}

/// A post or comment (`subject`) was deleted, on its own shard, in the deleting transaction:
/// its notifications here go, and each shard a notice about it was sent to gets a parked
/// `NotificationsRetracted` (see `take_remote`).
pub fn forget_subject(txn: &WriteTransaction, subject: u64) -> Result<(), CoreError> {
    forget_local(txn, subject)?;
    let targets: Vec<u32> = txn
        .open_table(SENT)?
        .extract_from_if((subject, 0)..=(subject, u32::MAX), |_, _| true)?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut retract = txn.open_table(RETRACT)?;
    for target in targets {
        retract.insert((subject, target), ())?;
    }
    Ok(())
}

/// Deletes this shard's notifications about `subject` (a deleted post or comment): the
/// deletion itself, `PostDeleted` or `NotificationsRetracted` applied here. Counts stay
/// exact; nothing to delete is fine.
pub fn forget_local(txn: &WriteTransaction, subject: u64) -> Result<(), CoreError> {
    let listed: Vec<(u64, u64)> = txn
        .open_table(SUBJECTS)?
        .range((subject, 0, 0)..=(subject, u64::MAX, u64::MAX))?
        .map(|r| r.map(|(k, _)| (k.value().1, k.value().2)))
        .collect::<Result<_, _>>()?;
    for key in listed {
        let n: Option<Notification> = match txn.open_table(NOTIFICATIONS)?.get(key)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        match n {
            Some(n) => remove(txn, &n)?,
            // Trimmed or erased already: only the listing is left.
            None => {
                txn.open_table(SUBJECTS)?.remove((subject, key.0, key.1))?;
            }
        }
    }
    Ok(())
}

/// Deletes `recipient`'s notification of `kind` by `actor` about no subject, if there is one
/// (a follow request withdrawn or refused: it asks for nothing any more). True when one went.
pub fn retract(
    txn: &WriteTransaction,
    recipient: u64,
    kind: Kind,
    actor: u64,
) -> Result<bool, CoreError> {
    let key = coalescing_key(recipient, kind, Some(actor), Subject::None);
    retract_keyed(txn, recipient, key)
}

/// Deletes `user`'s `message` notification about `conversation`, if there is one: the user
/// left it, and can read none of it any more.
pub fn forget_conversation(
    txn: &WriteTransaction,
    user: u64,
    conversation: u64,
) -> Result<bool, CoreError> {
    let subject = Subject::Message {
        id: 0,
        conversation,
    };
    let key = coalescing_key(user, Kind::Message, None, subject);
    retract_keyed(txn, user, key)
}

/// Deletes `user`'s `message` notification about `conversation` when it is about `message`
/// (deleted by its sender): nothing is left to read there. One about a newer message stays.
pub fn forget_message(
    txn: &WriteTransaction,
    user: u64,
    conversation: u64,
    message: u64,
) -> Result<bool, CoreError> {
    let subject = Subject::Message {
        id: 0,
        conversation,
    };
    let key = coalescing_key(user, Kind::Message, None, subject);
    let Some(id) = txn.open_table(KEYS)?.get(key)?.map(|v| v.value()) else {
        return Ok(false);
    };
    let about = match txn.open_table(NOTIFICATIONS)?.get((user, id))? {
        Some(v) => decode::<Notification>(v.value())?.subject.id(),
        None => 0,
    };
    if about != message {
        return Ok(false);
    }
    retract_keyed(txn, user, key)
}

/// Deletes the notification keyed `key` (`coalescing_key`) of `recipient`, if there is one.
fn retract_keyed(
    txn: &WriteTransaction,
    recipient: u64,
    key: (u64, u8, u64, u64),
) -> Result<bool, CoreError> {
    let Some(id) = txn.open_table(KEYS)?.get(key)?.map(|v| v.value()) else {
        return Ok(false);
    };
    let n: Option<Notification> = match txn.open_table(NOTIFICATIONS)?.get((recipient, id))? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    };
    match n {
        Some(n) => {
            remove(txn, &n)?;
            Ok(true)
        }
        // Trimmed already: only the key was left.
        None => {
            txn.open_table(KEYS)?.remove(key)?;
            Ok(false)
        }
    }
}

/// Deletes the `mention` notifications about `post` whose recipient `keep` refuses (its
/// account turned private: strangers it mentioned no longer read it). Counts stay exact.
pub fn forget_mentions(
    txn: &WriteTransaction,
    post: u64,
    keep: impl Fn(u64) -> Result<bool, CoreError>,
) -> Result<(), CoreError> {
    let listed: Vec<(u64, u64)> = txn
        .open_table(SUBJECTS)?
        .range((post, 0, 0)..=(post, u64::MAX, u64::MAX))?
        .map(|r| r.map(|(k, _)| (k.value().1, k.value().2)))
        .collect::<Result<_, _>>()?;
    for (recipient, id) in listed {
        let n: Option<Notification> = match txn.open_table(NOTIFICATIONS)?.get((recipient, id))? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        match n {
            Some(n) if n.kind == Kind::Mention && !keep(recipient)? => remove(txn, &n)?,
            _ => {}
        }
    }
    Ok(())
}

/// Deletes one notification with its coalescing key and listings, keeping counts exact.
fn remove(txn: &WriteTransaction, n: &Notification) -> Result<(), CoreError> {
    txn.open_table(NOTIFICATIONS)?.remove((n.recipient, n.id))?;
    n.unkey(&mut txn.open_table(KEYS)?)?;
    unlist(txn, n)?;
    let (total, unread) = counts_in(txn, n.recipient)?;
    let unread = if n.read {
        unread
    } else {
        unread.saturating_sub(1)
    };
    txn.open_table(COUNTS)?
        .insert(n.recipient, (total.saturating_sub(1), unread))?;
    Ok(())
}

/// Drops a notification's rows in `notification_subjects`.
fn unlist(txn: &WriteTransaction, n: &Notification) -> Result<(), CoreError> {
    let mut subjects = txn.open_table(SUBJECTS)?;
    for subject in n.subject.deletable() {
        subjects.remove((subject, n.recipient, n.id))?;
    }
    Ok(())
}

/// Is anything left for `take_stored_fresh` or `take_remote` (made by a write that did not
/// take them)?
pub fn has_pending(read: &ReadTransaction) -> Result<bool, CoreError> {
    for def in [FRESH] {
        match read.open_table(def) {
            Ok(t) => {
                if t.first()?.is_some() {
                    return Ok(true);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match read.open_table(REMOTE) {
        Ok(t) => {
            if t.first()?.is_some() {
                return Ok(true);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match read.open_table(RETRACT) {
        Ok(t) => Ok(t.first()?.is_some()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A page of `recipient`'s notifications, newest first, with ids below `max_id`, of the kinds
/// `filter` keeps. Looks at no more than `PER_USER_MAX` rows (all a user has). Returns the
/// page and the cursor of the next one (the last id when the page is full).
pub fn page(
    read: &ReadTransaction,
    recipient: u64,
    max_id: Option<u64>,
    limit: usize,
    filter: &Filter,
) -> Result<(Vec<Notification>, Option<u64>), CoreError> {
    let table = match read.open_table(NOTIFICATIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
        Err(e) => return Err(e.into()),
    };
    let high = match max_id {
        Some(0) => return Ok((Vec::new(), None)),
        Some(m) => m - 1,
        None => u64::MAX,
    };
    let mut out = Vec::with_capacity(limit);
    for row in table
        .range((recipient, 0)..=(recipient, high))?
        .rev()
        .take(PER_USER_MAX as usize)
    {
        let (_, v) = row?;
        let n: Notification = decode(v.value())?;
        if filter.keeps(n.kind) {
            out.push(n);
            if out.len() >= limit {
                break;
            }
        }
    }
    let next = if out.len() >= limit {
        out.last().map(|n| n.id)
    } else {
        None
    };
    Ok((out, next))
}

/// Notifications counted by kind, in `Kind::ALL`'s order.
pub type KindCounts = Vec<(Kind, u64)>;

/// The id of `recipient`'s newest notification, read or not (a digest turned on starts
/// after it).
pub fn newest_in(txn: &WriteTransaction, recipient: u64) -> Result<Option<u64>, CoreError> {
    let table = txn.open_table(NOTIFICATIONS)?;
    let last = table
        .range((recipient, 0)..=(recipient, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(k, _)| k.value().1);
    Ok(last)
}

/// `recipient`'s unread notifications with ids past `after`, counted by kind (looking at no
/// more than `PER_USER_MAX` rows, all a user has), and the newest id among them.
pub fn unread_since(
    read: &ReadTransaction,
    recipient: u64,
    after: u64,
) -> Result<(KindCounts, Option<u64>), CoreError> {
    let table = match read.open_table(NOTIFICATIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), None)),
        Err(e) => return Err(e.into()),
    };
    let mut counts: KindCounts = Vec::new();
    let mut newest = None;
    let start = after.saturating_add(1);
    for row in table
        .range((recipient, start)..=(recipient, u64::MAX))?
        .rev()
        .take(PER_USER_MAX as usize)
    {
        let (_, v) = row?;
        let n: Notification = decode(v.value())?;
        if n.read {
            continue;
        }
        newest = newest.max(Some(n.id));
        match counts.iter_mut().find(|(k, _)| *k == n.kind) {
            Some((_, c)) => *c += 1,
            None => counts.push((n.kind, 1)),
        }
    }
    counts.sort_by_key(|(k, _)| Kind::ALL.iter().position(|a| a == k));
    Ok((counts, newest))
}

/// Marks `recipient`'s notifications read; unknown ids (or another user's) are ignored.
/// Returns (how many changed, unread left).
pub fn mark_read(
    txn: &WriteTransaction,
    recipient: u64,
    which: &Which,
) -> Result<(u64, u64), CoreError> {
    let mut table = txn.open_table(NOTIFICATIONS)?;
    let ids: Vec<u64> = match which {
        Which::Ids(ids) => ids.iter().take(MARK_IDS_MAX).copied().collect(),
        Which::All | Which::UpTo(_) => {
            let high = match which {
                Which::UpTo(id) => *id,
                _ => u64::MAX,
            };
            table
                .range((recipient, 0)..=(recipient, high))?
                .take(PER_USER_MAX as usize)
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?
        }
    };
    let mut changed = 0;
    for id in ids {
        let n: Option<Notification> = match table.get((recipient, id))? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        if let Some(mut n) = n.filter(|n| !n.read) {
            n.read = true;
            table.insert((recipient, id), encode(&n).as_slice())?;
            changed += 1;
        }
    }
    drop(table);
    let (total, unread) = counts_in(txn, recipient)?;
    let unread = unread.saturating_sub(changed);
    if changed > 0 {
        txn.open_table(COUNTS)?.insert(recipient, (total, unread))?;
    }
    Ok((changed, unread))
}

/// How many of `recipient`'s notifications are unread.
pub fn unread(read: &ReadTransaction, recipient: u64) -> Result<u64, CoreError> {
    let table = match read.open_table(COUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let unread = table.get(recipient)?.map_or(0, |v| v.value().1);
    Ok(unread)
}

fn counts_in(txn: &WriteTransaction, recipient: u64) -> Result<(u64, u64), CoreError> {
    let c = txn
        .open_table(COUNTS)?
        .get(recipient)?
        .map_or((0, 0), |v| v.value());
    Ok(c)
}

/// Deletes the recipient's oldest notification (over the per-user limit). Its coalescing key
/// goes with it, so the same event much later notifies again.
/// Whether there was one.
fn drop_oldest(txn: &WriteTransaction, recipient: u64) -> Result<bool, CoreError> {
    let table = txn.open_table(NOTIFICATIONS)?;
    let oldest: Option<Notification> =
        match table.range((recipient, 0)..=(recipient, u64::MAX))?.next() {
            Some(row) => Some(decode(row?.1.value())?),
            None => None,
        };
    let Some(oldest) = oldest else {
        return Ok(false);
    };
    drop(table);
    remove(txn, &oldest)?;
    Ok(true)
}

/// The notification ids of this shard: time-ordered, carrying the shard like every id,
/// strictly above the last one made here (kept in `notification_ids`, written back by
/// `close` once for all the ids one call made).
struct Ids<'t> {
    table: redb::Table<'t, &'static str, u64>,
    gen: IdGen,
    last: Option<u64>,
}

impl<'t> Ids<'t> {
    fn open(txn: &'t WriteTransaction, here: usize) -> Result<Self, CoreError> {
        let table = txn.open_table(IDS)?;
        let mut gen = IdGen::new(here);
        if let Some(last) = table.get("last")? {
            gen.observe(last.value());
        }
        Ok(Ids {
            table,
            gen,
            last: None,
        })
    }

    fn next(&mut self, now_ms: u64) -> u64 {
        let id = self.gen.next(now_ms);
        self.last = Some(id);
        id
    }

    fn close(mut self) -> Result<(), CoreError> {
        if let Some(last) = self.last {
            self.table.insert("last", last)?;
        }
        Ok(())
    }
}

/// Deletes every notification of `recipient` (account erasure; at most `PER_USER_MAX`).
pub fn erase_recipient(txn: &WriteTransaction, recipient: u64) -> Result<(), CoreError> {
    let gone: Vec<Notification> = txn
        .open_table(NOTIFICATIONS)?
        .extract_from_if((recipient, 0)..=(recipient, u64::MAX), |_, _| true)?
        .map(|r| {
            r.map_err(CoreError::from)
                .and_then(|(_, v)| decode(v.value()))
        })
        .collect::<Result<_, _>>()?;
    let mut keys = txn.open_table(KEYS)?;
    for n in &gone {
        n.unkey(&mut keys)?;
    }
    drop(keys);
    for n in &gone {
        unlist(txn, n)?;
    }
    txn.open_table(COUNTS)?.remove(recipient)?;
    Ok(())
}

/// Looks at up to `limit` notifications from key `from` on and deletes those `actor` caused
/// (account erasure: nobody keeps "X liked your post" of an erased X). Counts stay exact.
/// Returns where to go on, or `None` when the table was walked.
pub fn erase_actor_scan(
    txn: &WriteTransaction,
    actor: u64,
    from: (u64, u64),
    limit: usize,
) -> Result<Option<(u64, u64)>, CoreError> {
    let rows: Vec<Notification> = txn
        .open_table(NOTIFICATIONS)?
        .range(from..)?
        .take(limit)
        .map(|r| {
            r.map_err(CoreError::from)
                .and_then(|(_, v)| decode(v.value()))
        })
        .collect::<Result<_, _>>()?;
    for n in rows.iter().filter(|n| n.actor == Some(actor)) {
        remove(txn, n)?;
    }
    if rows.len() < limit {
        return Ok(None);
    }
    Ok(rows.last().map(|n| match n.id.checked_add(1) {
        Some(next) => (n.recipient, next),
        None => (n.recipient.saturating_add(1), 0),
    }))
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    use super::*;

    const NOW: u64 = crate::ID_EPOCH_MS + 1_000_000;

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn write<R>(db: &Database, f: impl FnOnce(&WriteTransaction) -> Result<R, CoreError>) -> R {
        let txn = db.begin_write().unwrap();
        let out = f(&txn).unwrap();
        txn.commit().unwrap();
        out
    }

    /// A user id on shard `shard`.
    fn user(shard: usize, n: u64) -> u64 {
        IdGen::new(shard).next(NOW + n)
    }

    fn like(recipient: u64, actor: u64, post: u64) -> New {
        New {
            recipient,
            kind: Kind::Like,
            actor: Some(actor),
            subject: Subject::Post(post),
        }
    }

    fn all(db: &Database, who: u64) -> Vec<Notification> {
        page(
            &db.begin_read().unwrap(),
            who,
            None,
            100,
            &Filter::default(),
        )
        .unwrap()
        .0
    }

    #[test]
    fn coalesces_and_skips_self_blocked_and_muted() {
        let db = db();
        let (a, b, c, d) = (user(0, 1), user(0, 2), user(0, 3), user(0, 4));
        write(&db, |t| notify(t, 0, &like(a, b, 7), NOW));
        write(&db, |t| notify(t, 0, &like(a, b, 7), NOW + 1));
        write(&db, |t| notify(t, 0, &like(a, a, 7), NOW));
        write(&db, |t| social::set_mute(t, a, c, true, NOW));
        write(&db, |t| notify(t, 0, &like(a, c, 7), NOW));
        write(&db, |t| social::block(t, a, d, NOW));
        write(&db, |t| notify(t, 0, &like(a, d, 7), NOW));
        let got = all(&db, a);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].actor, Some(b));
        assert_eq!(unread(&db.begin_read().unwrap(), a).unwrap(), 1);
        let fresh = write(&db, take_fresh);
        assert_eq!(fresh, got);
        assert!(write(&db, take_fresh).is_empty());
        assert!(!has_pending(&db.begin_read().unwrap()).unwrap());
    }

    /// One batch (a post's mentions) leaves what the same notices one by one leave: the
    /// silenced and one's own skipped, remote ones parked, the limit kept; a user mentioned
    /// twice in the batch hears once.
    #[test]
    fn a_batch_of_notices_is_the_same_notices_one_by_one() {
        let (a, b, c, d) = (user(0, 1), user(0, 2), user(0, 3), user(0, 4));
        let remote = user(1, 5);
        let mention = |recipient: u64| New {
            recipient,
            kind: Kind::Mention,
            actor: Some(b),
            subject: Subject::Post(77),
        };
        let news = vec![
            mention(a),
            mention(b),
            mention(c),
            mention(d),
            mention(remote),
        ];
        let prepare = |db: &Database| {
            write(db, |t| social::set_mute(t, c, b, true, NOW));
            write(db, |t| social::block(t, d, b, NOW));
            // `a` is at the limit: its oldest goes.
            for i in 0..PER_USER_MAX {
                write(db, |t| {
                    notify(t, 0, &like(a, user(0, 100 + i), 1_000 + i), NOW)
                });
            }
            write(db, take_fresh);
        };
        let (one, many) = (db(), db());
        prepare(&one);
        prepare(&many);
        for new in &news {
            write(&one, |t| notify(t, 0, new, NOW + 5));
        }
        // The same user twice in one post is one mention.
        let mut twice = news.clone();
        twice.push(mention(a));
        write(&many, |t| notify_all(t, 0, &twice, NOW + 5));
        for who in [a, b, c, d] {
            let strip = |ns: Vec<Notification>| -> Vec<(Kind, Option<u64>, Subject, bool)> {
                ns.into_iter()
                    .map(|n| (n.kind, n.actor, n.subject, n.read))
                    .collect()
            };
            assert_eq!(strip(all(&one, who)), strip(all(&many, who)), "user {who}");
            assert_eq!(
                unread(&one.begin_read().unwrap(), who).unwrap(),
                unread(&many.begin_read().unwrap(), who).unwrap()
            );
        }
        let count = |db: &Database| -> (u64, u64) {
            let read = db.begin_read().unwrap();
            let counts = read.open_table(COUNTS).unwrap();
            let total = read
                .open_table(NOTIFICATIONS)
                .unwrap()
                .range((a, 0)..=(a, u64::MAX))
                .unwrap()
                .count() as u64;
            let (kept, unread) = counts.get(a).unwrap().unwrap().value();
            assert_eq!(kept, total);
            (kept, unread)
        };
        assert_eq!(count(&many), count(&one));
        assert_eq!(count(&many).0, PER_USER_MAX);
        assert_eq!(all(&many, a)[0].kind, Kind::Mention);
        assert!(all(&many, c).is_empty(), "muted");
        assert!(all(&many, d).is_empty(), "blocked");
        let fresh = write(&many, take_fresh);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].recipient, a);
        let parked = write(&many, |t| take_remote(t, &[9, 10], NOW + 6));
        assert_eq!(parked.len(), 1, "the remote mention is parked once");
    }

    #[test]
    fn pages_filter_and_mark_read() {
        let db = db();
        let a = user(0, 1);
        for i in 0..10 {
            let n = New {
                recipient: a,
                kind: if i % 2 == 0 { Kind::Like } else { Kind::Follow },
                actor: Some(user(1, 10 + i)),
                subject: Subject::Post(100 + i),
            };
            write(&db, |t| notify(t, 0, &n, NOW + i));
        }
        let read = db.begin_read().unwrap();
        let (first, next) = page(&read, a, None, 4, &Filter::default()).unwrap();
        assert_eq!(first.len(), 4);
        assert!(first.windows(2).all(|w| w[0].id > w[1].id));
        let (second, _) = page(&read, a, next, 100, &Filter::default()).unwrap();
        assert_eq!(second.len(), 6);
        let likes = Filter {
            only: vec![Kind::Like],
            exclude: vec![],
        };
        let (only, _) = page(&read, a, None, 100, &likes).unwrap();
        assert!(only.len() == 5 && only.iter().all(|n| n.kind == Kind::Like));
        let no_likes = Filter {
            only: vec![],
            exclude: vec![Kind::Like],
        };
        let (rest, _) = page(&read, a, None, 100, &no_likes).unwrap();
        assert!(rest.len() == 5 && rest.iter().all(|n| n.kind == Kind::Follow));
        drop(read);
        let ids = vec![first[0].id, first[1].id, 12345];
        assert_eq!(
            write(&db, |t| mark_read(t, a, &Which::Ids(ids.clone()))),
            (2, 8)
        );
        assert_eq!(write(&db, |t| mark_read(t, a, &Which::Ids(ids))), (0, 8));
        assert_eq!(
            write(&db, |t| mark_read(t, user(0, 99), &Which::All)),
            (0, 0)
        );
        assert_eq!(
            write(&db, |t| mark_read(t, a, &Which::UpTo(second[1].id))),
            (5, 3)
        );
        assert_eq!(write(&db, |t| mark_read(t, a, &Which::All)), (3, 0));
        assert_eq!(unread(&db.begin_read().unwrap(), a).unwrap(), 0);
    }

    #[test]
    fn keeps_at_most_the_per_user_limit() {
        let db = db();
        let a = user(0, 1);
        write(&db, |t| {
            for i in 0..PER_USER_MAX + 5 {
                notify(t, 0, &like(a, user(1, 2), 1000 + i), NOW + i)?;
            }
            Ok(())
        });
        let got = all(&db, a);
        assert_eq!(got.len(), 100);
        let read = db.begin_read().unwrap();
        assert_eq!(unread(&read, a).unwrap(), PER_USER_MAX);
        let (oldest, _) = page(&read, a, Some(got[99].id), 10_000, &Filter::default()).unwrap();
        assert_eq!(oldest.len() as u64, PER_USER_MAX - 100);
        assert_eq!(oldest.last().map(|n| n.subject), Some(Subject::Post(1005)));
        drop(read);
        assert_eq!(write(&db, take_fresh).len() as u64, PER_USER_MAX);
    }

    #[test]
    fn a_conversation_keeps_one_message_notification_moved_up_by_each_message() {
        let db = db();
        let (a, b, c) = (user(0, 1), user(0, 2), user(0, 3));
        let message = |id: u64, sender: u64, conversation: u64| crate::messages::Message {
            id,
            conversation,
            sender,
            sender_username: String::new(),
            sender_display_name: String::new(),
            text: "hi".into(),
            media_ids: Vec::new(),
            created_ms: NOW + id,
            edited_ms: None,
        };
        write(&db, |t| on_message(t, &message(1, b, 100), &[a]));
        write(&db, |t| notify(t, 0, &like(a, c, 7), NOW));
        let first = write(&db, take_fresh);
        assert_eq!(first.len(), 2);
        // Two more in the same conversation (one from another sender), one in another.
        write(&db, |t| {
            on_message(t, &message(2, c, 100), &[a])?;
            on_message(t, &message(3, b, 100), &[a])?;
            on_message(t, &message(4, b, 200), &[a])
        });
        let fresh = write(&db, take_fresh);
        let subjects: Vec<Subject> = fresh.iter().map(|n| n.subject).collect();
        assert_eq!(
            subjects,
            vec![
                Subject::Message {
                    id: 3,
                    conversation: 100
                },
                Subject::Message {
                    id: 4,
                    conversation: 200
                }
            ],
            "the replaced one of the same transaction is not handed out"
        );
        let got = all(&db, a);
        let kinds: Vec<(Kind, u64)> = got.iter().map(|n| (n.kind, n.subject.id())).collect();
        assert_eq!(
            kinds,
            vec![(Kind::Message, 4), (Kind::Message, 3), (Kind::Like, 7)],
            "newest first, one per conversation"
        );
        assert_eq!(got[1].actor, Some(b));
        assert_eq!(unread(&db.begin_read().unwrap(), a).unwrap(), 3);
        // Read, then a new message: unread again, still one row.
        write(&db, |t| mark_read(t, a, &Which::All));
        write(&db, |t| on_message(t, &message(5, c, 100), &[a]));
        assert_eq!(all(&db, a).len(), 3);
        assert_eq!(unread(&db.begin_read().unwrap(), a).unwrap(), 1);
        // Erasing the recipient leaves nothing behind: a later message notifies afresh.
        write(&db, |t| erase_recipient(t, a));
        assert!(all(&db, a).is_empty());
        write(&db, |t| on_message(t, &message(6, c, 100), &[a]));
        assert_eq!(all(&db, a).len(), 1);
        assert_eq!(unread(&db.begin_read().unwrap(), a).unwrap(), 1);
    }

    #[test]
    fn message_notifications_keyed_per_message_by_older_versions_still_go() {
        let db = db();
        let (a, b) = (user(0, 1), user(0, 2));
        // As older versions wrote one: keyed by (actor, message).
        let old = Notification {
            id: user(0, 50),
            recipient: a,
            kind: Kind::Message,
            actor: Some(b),
            subject: Subject::Message {
                id: 9,
                conversation: 100,
            },
            created_ms: NOW,
            read: false,
        };
        write(&db, |t| {
            t.open_table(NOTIFICATIONS)?
                .insert((a, old.id), encode(&old).as_slice())?;
            t.open_table(KEYS)?
                .insert((a, Kind::Message.code(), b, 9), old.id)?;
            t.open_table(COUNTS)?.insert(a, (1, 1))?;
            Ok(())
        });
        // Older versions also listed it in `notifications_fresh` until it was taken.
        write(&db, |t| {
            t.open_table(FRESH)?.insert((a, old.id), ())?;
            Ok(())
        });
        assert!(has_pending(&db.begin_read().unwrap()).unwrap());
        assert!(
            write(&db, take_fresh).is_empty(),
            "not made by this process"
        );
        assert_eq!(write(&db, take_stored_fresh), vec![old.clone()]);
        assert!(!has_pending(&db.begin_read().unwrap()).unwrap());
        write(&db, |t| erase_actor_scan(t, b, (0, 0), 100));
        assert!(all(&db, a).is_empty());
        assert_eq!(unread(&db.begin_read().unwrap(), a).unwrap(), 0);
        let read = db.begin_read().unwrap();
        assert!(read.open_table(KEYS).unwrap().first().unwrap().is_none());
    }

    #[test]
    fn remote_recipients_become_events_applied_there() {
        let db = db();
        let remote = user(1, 1);
        let actor = user(0, 2);
        let new = like(remote, actor, 7);
        write(&db, |t| notify(t, 0, &new, NOW));
        assert!(all(&db, remote).is_empty());
        assert!(has_pending(&db.begin_read().unwrap()).unwrap());
        let taken = write(&db, |t| take_remote(t, &[555], NOW));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 555);
        assert_eq!(taken[0].1, 1);
        assert!(!has_pending(&db.begin_read().unwrap()).unwrap());
        let read = db.begin_read().unwrap();
        assert_eq!(
            events::pending(&read, 1, 10).unwrap(),
            vec![(555, taken[0].2.clone())]
        );
        drop(read);
        // The recipient's shard (another database) applies it once.
        let there = self::db();
        let event = taken[0].2.clone();
        write(&there, |t| events::apply(t, 555, NOW, &event, |_| true));
        write(&there, |t| events::apply(t, 555, NOW, &event, |_| true));
        let got = all(&there, remote);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].actor, Some(actor));
        assert_eq!(crate::shard_of(got[0].id), 1);
    }

    #[test]
    fn a_deleted_subject_takes_its_notifications_here_and_elsewhere() {
        let db = db();
        let (author, liker, other) = (user(0, 1), user(0, 2), user(0, 3));
        let remote = user(1, 4);
        let (post, comment) = (user(0, 10), user(0, 11));
        let on_comment = Subject::Comment { id: comment, post };
        write(&db, |t| {
            notify(t, 0, &like(author, liker, post), NOW)?;
            notify(t, 0, &like(author, other, 99), NOW)?;
            // A reply to `remote`'s comment, and a like of it: both parked for shard 1.
            let reply = New {
                recipient: remote,
                kind: Kind::Reply,
                actor: Some(liker),
                subject: on_comment,
            };
            notify(t, 0, &reply, NOW)?;
            notify(
                t,
                0,
                &New {
                    recipient: author,
                    kind: Kind::Comment,
                    actor: Some(liker),
                    subject: on_comment,
                },
                NOW,
            )
        });
        assert_eq!(all(&db, author).len(), 3);
        write(&db, take_fresh);
        let parked = write(&db, |t| take_remote(t, &[500, 501], NOW));
        assert_eq!(parked.len(), 1);

        // Deleting the comment: its notification here goes, one retraction for shard 1.
        write(&db, |t| forget_subject(t, comment));
        assert_eq!(all(&db, author).len(), 2);
        assert!(has_pending(&db.begin_read().unwrap()).unwrap());
        let taken = write(&db, |t| take_remote(t, &[600, 601], NOW));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].1, 1);
        assert_eq!(
            taken[0].2,
            Event::NotificationsRetracted { subject: comment }
        );
        assert!(!has_pending(&db.begin_read().unwrap()).unwrap());

        // Shard 1 got the reply, then the retraction.
        let there = self::db();
        write(&there, |t| {
            events::apply(t, 500, NOW, &parked[0].2, |_| true)
        });
        assert_eq!(all(&there, remote).len(), 1);
        assert_eq!(unread(&there.begin_read().unwrap(), remote).unwrap(), 1);
        write(&there, |t| {
            events::apply(t, 600, NOW, &taken[0].2, |_| true)
        });
        assert!(all(&there, remote).is_empty());
        assert_eq!(unread(&there.begin_read().unwrap(), remote).unwrap(), 0);

        // Deleting the post: the like of it goes, the other post's stays, counts follow.
        write(&db, |t| forget_subject(t, post));
        let left = all(&db, author);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].subject, Subject::Post(99));
        assert_eq!(unread(&db.begin_read().unwrap(), author).unwrap(), 1);
        // Shard 1 heard of a comment on the post, so it hears of the post's deletion too.
        let taken = write(&db, |t| take_remote(t, &[700, 701], NOW));
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].2, Event::NotificationsRetracted { subject: post });
        // The same like can notify again later (its coalescing key went too).
        write(&db, |t| notify(t, 0, &like(author, liker, post), NOW + 5));
        assert_eq!(all(&db, author).len(), 2);
    }
}
