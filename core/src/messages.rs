//! Direct messages: conversations of two or more people and their messages.
//!
//! Placement: a conversation lives on the shard that made it (its id says which), with its
//! messages, read receipts and idempotency keys (tables `conversations`, `messages`,
//! `conversation_messages`, `read_receipts`, `message_idempotency`). Each participant's own
//! shard keeps that user's inbox (`inbox`, `inbox_by_activity`), written when the
//! conversation's events are applied there (`ConversationJoined`, `MessagePosted`,
//! `ConversationLeft`), so "my conversations, newest activity first" is one local range.
//!
//! A conversation's last message and activity time are not stored with it: they are the last
//! row of `conversation_messages` (a message's time is its id's millisecond), so a send does
//! not rewrite the conversation. A batch of sends opens its tables once (`Poster`).

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{CoreError, Invalid};

/// conversation id -> Conversation
const CONVERSATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("conversations");
/// message id -> Message
const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
/// (conversation, message) -> () : a conversation's messages in order
const CONVERSATION_MESSAGES: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("conversation_messages");
/// (conversation, user) -> last message id read (0: none)
const READ_RECEIPTS: TableDefinition<(u64, u64), u64> = TableDefinition::new("read_receipts");
/// (conversation, sender, key) -> (message id, ms)
const MESSAGE_IDEMPOTENCY: TableDefinition<(u64, u64, &str), (u64, u64)> =
    TableDefinition::new("message_idempotency");
/// (user, conversation) -> last activity ms : on the user's shard
const INBOX: TableDefinition<(u64, u64), u64> = TableDefinition::new("inbox");
/// (user, last activity ms, conversation) -> () : the inbox, by activity
const INBOX_BY_ACTIVITY: TableDefinition<(u64, u64, u64), ()> =
    TableDefinition::new("inbox_by_activity");

/// People in one conversation, the creator included.
pub const PARTICIPANTS_MAX: usize = 32;
pub const MESSAGE_CHARS_MAX: usize = 5000;
pub const MESSAGE_MEDIA_MAX: usize = 4;
/// Unread messages counted per conversation, at most (shown as "100+").
pub const UNREAD_COUNTED_MAX: usize = 100;
const IDEMPOTENCY_WINDOW_MS: u64 = 60 * 60 * 1000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conversation {
    pub id: u64,
    pub creator: u64,
    /// Current participants (a leaver is removed).
    pub participants: Vec<u64>,
    pub created_ms: u64,
    /// The conversation's last activity: the newest message ever posted in it, deleted ones
    /// included (the time its participants' inboxes are ordered by), or `created_ms`
    /// without one. Shown as `summary` derives it: the newer of the stored value and the last
    /// row of `conversation_messages`. The stored value is not rewritten per message, only
    /// when the newest message is deleted (`delete` keeps its time here); rows written
    /// before that hold the creation's or an older message's time, never a later one.
    pub last_ms: u64,
    /// Derived like `last_ms`.
    pub last_message: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub conversation: u64,
    pub sender: u64,
    pub sender_username: String,
    pub sender_display_name: String,
    pub text: String,
    pub media_ids: Vec<u64>,
    pub created_ms: u64,
    pub edited_ms: Option<u64>,
}

/// A conversation as one participant sees it.
#[derive(Debug, Clone)]
pub struct Summary {
    pub conversation: Conversation,
    pub last_message: Option<Message>,
    pub unread: u64,
    /// (participant, last message id read) of every participant.
    pub receipts: Vec<(u64, u64)>,
}

/// Message text: trimmed, 1 to `MESSAGE_CHARS_MAX` characters, no control characters but
/// newlines and tabs.
pub fn parse_text(raw: &str) -> Result<String, Invalid> {
    crate::content::parse_user_text(raw, "a message", MESSAGE_CHARS_MAX)
}

/// The other participants of a new conversation: distinct, not the creator, 1 to
/// `PARTICIPANTS_MAX - 1` of them.
pub fn parse_participants(creator: u64, raw: &[u64]) -> Result<Vec<u64>, Invalid> {
    let mut out: Vec<u64> = Vec::with_capacity(raw.len());
    for id in raw {
        if *id != creator && !out.contains(id) {
            out.push(*id);
        }
    }
    if out.is_empty() || out.len() > PARTICIPANTS_MAX - 1 {
        return Err(Invalid::new(
            "invalid_participants",
            format!(
                "a conversation has 1 to {} other participants",
                PARTICIPANTS_MAX - 1
            ),
        ));
    }
    Ok(out)
}

fn load_conversation(
    table: &impl ReadableTable<u64, &'static [u8]>,
    id: u64,
) -> Result<Option<Conversation>, CoreError> {
    table.get(id)?.map(|v| decode(v.value())).transpose()
}

/// The id of a conversation's latest message, from its index.
fn latest(
    index: &impl ReadableTable<(u64, u64), ()>,
    conversation: u64,
) -> Result<Option<u64>, CoreError> {
    Ok(index
        .range((conversation, 0)..=(conversation, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(k, _)| k.value().1))
}

/// The conversation if `user` takes part in it, else `NotFound` (no existence leak).
pub fn conversation_for(
    read: &ReadTransaction,
    id: u64,
    user: u64,
) -> Result<Conversation, CoreError> {
    let table = match read.open_table(CONVERSATIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Err(CoreError::NotFound),
        Err(e) => return Err(e.into()),
    };
    match load_conversation(&table, id)? {
        Some(c) if c.participants.contains(&user) => Ok(c),
        _ => Err(CoreError::NotFound),
    }
}

/// The participants of `conversation` now (none when it is gone), in a write.
pub fn participants_in(txn: &WriteTransaction, conversation: u64) -> Result<Vec<u64>, CoreError> {
    Ok(
        load_conversation(&txn.open_table(CONVERSATIONS)?, conversation)?
            .map(|c| c.participants)
            .unwrap_or_default(),
    )
}

/// Creates a conversation (on this, the creator's shard) with read receipts for everyone.
pub fn create(txn: &WriteTransaction, conversation: &Conversation) -> Result<(), CoreError> {
    txn.open_table(CONVERSATIONS)?
        .insert(conversation.id, encode(conversation).as_slice())?;
    let mut receipts = txn.open_table(READ_RECEIPTS)?;
    for p in &conversation.participants {
        receipts.insert((conversation.id, *p), 0)?;
    }
    Ok(())
}

/// The message an earlier request with the same key made, within the window.
pub fn idempotent_message(
    txn: &WriteTransaction,
    conversation: u64,
    sender: u64,
    key: &str,
    now_ms: u64,
) -> Result<Option<Message>, CoreError> {
    Poster::open(txn)?.idempotent(conversation, sender, key, now_ms)
}

/// Adds a message from a participant; the sender has read everything up to it. Returns the
/// conversation as it is after the message.
pub fn post(
    txn: &WriteTransaction,
    message: &Message,
    idempotency_key: Option<&str>,
) -> Result<Conversation, CoreError> {
    Poster::open(txn)?.post(message, idempotency_key)
}

/// The tables a send writes, opened once for a batch of sends in one transaction: opening a
/// table costs a lookup in redb's table tree and a few allocations each time, which was a
/// large part of a send (docs/benchmarks.md, messaging).
pub struct Poster<'t> {
    conversations: Table<'t, u64, &'static [u8]>,
    messages: Table<'t, u64, &'static [u8]>,
    index: Table<'t, (u64, u64), ()>,
    receipts: Table<'t, (u64, u64), u64>,
    idempotency: Table<'t, (u64, u64, &'static str), (u64, u64)>,
    inbox: Table<'t, (u64, u64), u64>,
    by_activity: Table<'t, (u64, u64, u64), ()>,
}

impl<'t> Poster<'t> {
    /// Opens the tables; drop it before anything else in `txn` opens one of them.
    pub fn open(txn: &'t WriteTransaction) -> Result<Poster<'t>, CoreError> {
        Ok(Poster {
            conversations: txn.open_table(CONVERSATIONS)?,
            messages: txn.open_table(MESSAGES)?,
            index: txn.open_table(CONVERSATION_MESSAGES)?,
            receipts: txn.open_table(READ_RECEIPTS)?,
            idempotency: txn.open_table(MESSAGE_IDEMPOTENCY)?,
            inbox: txn.open_table(INBOX)?,
            by_activity: txn.open_table(INBOX_BY_ACTIVITY)?,
        })
    }

    /// The message an earlier request with the same key made, within the window.
    pub fn idempotent(
        &self,
        conversation: u64,
        sender: u64,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<Message>, CoreError> {
        let found = self
            .idempotency
            .get((conversation, sender, key))?
            .map(|v| v.value());
        match found {
            Some((id, at)) if now_ms.saturating_sub(at) < IDEMPOTENCY_WINDOW_MS => self
                .messages
                .get(id)?
                .map(|v| decode(v.value()))
                .transpose(),
            _ => Ok(None),
        }
    }

    /// Adds a message from a participant (checked first: nothing is written for anyone
    /// else); the sender has read everything up to it. Returns the conversation as it is
    /// after the message (its row is not rewritten: see the module comment).
    pub fn post(
        &mut self,
        message: &Message,
        idempotency_key: Option<&str>,
    ) -> Result<Conversation, CoreError> {
        let mut conversation = match load_conversation(&self.conversations, message.conversation)? {
            Some(c) if c.participants.contains(&message.sender) => c,
            _ => return Err(CoreError::NotFound),
        };
        self.messages
            .insert(message.id, encode(message).as_slice())?;
        self.index.insert((message.conversation, message.id), ())?;
        self.receipts
            .insert((message.conversation, message.sender), message.id)?;
        if let Some(key) = idempotency_key {
            self.idempotency.insert(
                (message.conversation, message.sender, key),
                (message.id, message.created_ms),
            )?;
        }
        conversation.last_ms = message.created_ms;
        conversation.last_message = Some(message.id);
        Ok(conversation)
    }

    /// `touch_inbox` with the tables open.
    pub fn touch_inbox(
        &mut self,
        user: u64,
        conversation: u64,
        at_ms: u64,
    ) -> Result<(), CoreError> {
        touch(
            &mut self.inbox,
            &mut self.by_activity,
            user,
            conversation,
            at_ms,
        )
    }
}

/// The sender's own message, if it is still in a conversation the sender takes part in.
fn own_message(txn: &WriteTransaction, id: u64, sender: u64) -> Result<Message, CoreError> {
    let message: Message = match txn.open_table(MESSAGES)?.get(id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    let member = load_conversation(&txn.open_table(CONVERSATIONS)?, message.conversation)?
        .is_some_and(|c| c.participants.contains(&sender));
    if message.sender != sender || !member {
        return Err(CoreError::NotFound);
    }
    Ok(message)
}

pub fn edit(
    txn: &WriteTransaction,
    id: u64,
    sender: u64,
    text: String,
    now_ms: u64,
) -> Result<Message, CoreError> {
    let mut message = own_message(txn, id, sender)?;
    message.text = text;
    message.edited_ms = Some(now_ms);
    txn.open_table(MESSAGES)?
        .insert(id, encode(&message).as_slice())?;
    Ok(message)
}

/// Deletes the sender's own message (the conversation's last message, derived, is then the
/// one before it). The conversation's activity time stays that of the deleted message when
/// it was the newest, as the participants' inboxes keep it: the conversation's row records
/// it then.
pub fn delete(txn: &WriteTransaction, id: u64, sender: u64) -> Result<Message, CoreError> {
    let message = own_message(txn, id, sender)?;
    txn.open_table(MESSAGES)?.remove(id)?;
    let mut index = txn.open_table(CONVERSATION_MESSAGES)?;
    index.remove((message.conversation, id))?;
    let newest = latest(&index, message.conversation)?.is_none_or(|last| last < id);
    drop(index);
    if newest {
        let mut conversations = txn.open_table(CONVERSATIONS)?;
        if let Some(mut c) = load_conversation(&conversations, message.conversation)? {
            if c.last_ms < message.created_ms {
                c.last_ms = message.created_ms;
                conversations.insert(c.id, encode(&c).as_slice())?;
            }
        }
    }
    Ok(message)
}

/// Marks messages up to `up_to` (or the latest, when `None`) read by `user`. Never moves a
/// receipt backwards. Returns the receipt.
pub fn mark_read(
    txn: &WriteTransaction,
    conversation: u64,
    user: u64,
    up_to: Option<u64>,
) -> Result<u64, CoreError> {
    match load_conversation(&txn.open_table(CONVERSATIONS)?, conversation)? {
        Some(c) if c.participants.contains(&user) => {}
        _ => return Err(CoreError::NotFound),
    }
    let latest = latest(&txn.open_table(CONVERSATION_MESSAGES)?, conversation)?.unwrap_or(0);
    let target = up_to.map_or(latest, |u| u.min(latest));
    let mut receipts = txn.open_table(READ_RECEIPTS)?;
    let old = receipts.get((conversation, user))?.map_or(0, |v| v.value());
    let new = old.max(target);
    receipts.insert((conversation, user), new)?;
    Ok(new)
}

/// Removes `user` from the conversation. Returns the conversation after it; when nobody is
/// left the conversation and its messages are deleted (and `None` is returned).
pub fn leave(
    txn: &WriteTransaction,
    conversation: u64,
    user: u64,
) -> Result<Option<Conversation>, CoreError> {
    let mut conversations = txn.open_table(CONVERSATIONS)?;
    let mut c = match load_conversation(&conversations, conversation)? {
        Some(c) if c.participants.contains(&user) => c,
        _ => return Err(CoreError::NotFound),
    };
    c.participants.retain(|p| *p != user);
    txn.open_table(READ_RECEIPTS)?
        .remove((conversation, user))?;
    if !c.participants.is_empty() {
        conversations.insert(conversation, encode(&c).as_slice())?;
        return Ok(Some(c));
    }
    conversations.remove(conversation)?;
    let ids: Vec<u64> = txn
        .open_table(CONVERSATION_MESSAGES)?
        .extract_from_if((conversation, 0)..=(conversation, u64::MAX), |_, _| true)?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut messages = txn.open_table(MESSAGES)?;
    for id in ids {
        messages.remove(id)?;
    }
    Ok(None)
}

pub fn message(read: &ReadTransaction, id: u64) -> Result<Option<Message>, CoreError> {
    let table = match read.open_table(MESSAGES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// A page of a conversation's messages, newest first, strictly between `min_id` and
/// `max_id` (with only `min_id`: the page just above it, still newest first).
pub fn page(
    read: &ReadTransaction,
    conversation: u64,
    max_id: Option<u64>,
    min_id: Option<u64>,
    limit: usize,
) -> Result<Vec<Message>, CoreError> {
    let index = match read.open_table(CONVERSATION_MESSAGES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let low = min_id.map_or(0, |m| m.saturating_add(1));
    let high = max_id.map_or(u64::MAX, |m| m.saturating_sub(1));
    if low > high {
        return Ok(Vec::new());
    }
    let range = index.range((conversation, low)..=(conversation, high))?;
    let ascending = min_id.is_some() && max_id.is_none();
    let ids: Vec<u64> = if ascending {
        let mut ids: Vec<u64> = range
            .take(limit)
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        ids.reverse();
        ids
    } else {
        range
            .rev()
            .take(limit)
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(m) = message(read, id)? {
            out.push(m);
        }
    }
    Ok(out)
}

/// The conversation as `user` sees it: last message, unread count, everyone's receipts.
pub fn summary(read: &ReadTransaction, id: u64, user: u64) -> Result<Summary, CoreError> {
    let mut conversation = conversation_for(read, id, user)?;
    // What the row holds: the creation's time or a deleted newest message's (see `last_ms`).
    let stored_ms = conversation.last_ms.max(conversation.created_ms);
    let index = match read.open_table(CONVERSATION_MESSAGES) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    conversation.last_message = match &index {
        Some(index) => latest(index, id)?,
        None => None,
    };
    let last_message = match conversation.last_message {
        Some(m) => message(read, m)?,
        None => None,
    };
    conversation.last_ms = last_message
        .as_ref()
        .map_or(stored_ms, |m| m.created_ms.max(stored_ms));
    let receipts_t = read.open_table(READ_RECEIPTS)?;
    let mut receipts = Vec::with_capacity(conversation.participants.len());
    for p in &conversation.participants {
        receipts.push((*p, receipts_t.get((id, *p))?.map_or(0, |v| v.value())));
    }
    let mine = receipts
        .iter()
        .find(|(p, _)| *p == user)
        .map_or(0, |(_, r)| *r);
    let mut unread = 0;
    if let Some(index) = index {
        for row in index
            .range((id, mine.saturating_add(1))..=(id, u64::MAX))?
            .take(UNREAD_COUNTED_MAX)
        {
            let mid = row?.0.value().1;
            if message(read, mid)?.is_some_and(|m| m.sender != user) {
                unread += 1;
            }
        }
    }
    Ok(Summary {
        conversation,
        last_message,
        unread,
        receipts,
    })
}

// ---- the inbox, on each participant's own shard -----------------------------------------

/// Puts (or moves) a conversation in `user`'s inbox at `at_ms`; never moves it back in time.
pub fn touch_inbox(
    txn: &WriteTransaction,
    user: u64,
    conversation: u64,
    at_ms: u64,
) -> Result<(), CoreError> {
    touch(
        &mut txn.open_table(INBOX)?,
        &mut txn.open_table(INBOX_BY_ACTIVITY)?,
        user,
        conversation,
        at_ms,
    )
}

/// `touch_inbox` for many (user, conversation, ms), in order, each table opened once.
pub fn touch_inboxes(txn: &WriteTransaction, touches: &[(u64, u64, u64)]) -> Result<(), CoreError> {
    if touches.is_empty() {
        return Ok(());
    }
    let mut inbox = txn.open_table(INBOX)?;
    let mut by_activity = txn.open_table(INBOX_BY_ACTIVITY)?;
    for (user, conversation, at_ms) in touches {
        touch(&mut inbox, &mut by_activity, *user, *conversation, *at_ms)?;
    }
    Ok(())
}

fn touch(
    inbox: &mut Table<'_, (u64, u64), u64>,
    by_activity: &mut Table<'_, (u64, u64, u64), ()>,
    user: u64,
    conversation: u64,
    at_ms: u64,
) -> Result<(), CoreError> {
    let old = inbox.get((user, conversation))?.map(|v| v.value());
    if old.is_some_and(|o| o >= at_ms) {
        return Ok(());
    }
    inbox.insert((user, conversation), at_ms)?;
    if let Some(o) = old {
        by_activity.remove((user, o, conversation))?;
    }
    by_activity.insert((user, at_ms, conversation), ())?;
    Ok(())
}

pub fn drop_from_inbox(
    txn: &WriteTransaction,
    user: u64,
    conversation: u64,
) -> Result<(), CoreError> {
    if let Some(old) = txn
        .open_table(INBOX)?
        .remove((user, conversation))?
        .map(|v| v.value())
    {
        txn.open_table(INBOX_BY_ACTIVITY)?
            .remove((user, old, conversation))?;
    }
    Ok(())
}

/// How many conversations `user` has (counted up to `cap`).
pub fn inbox_len(read: &ReadTransaction, user: u64, cap: usize) -> Result<usize, CoreError> {
    let table = match read.open_table(INBOX) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(table.range((user, 0)..=(user, u64::MAX))?.take(cap).count())
}

/// A page of `user`'s inbox as (activity ms, conversation), newest activity first, strictly
/// before the cursor (activity ms, conversation).
pub fn inbox(
    read: &ReadTransaction,
    user: u64,
    before: Option<(u64, u64)>,
    limit: usize,
) -> Result<Vec<(u64, u64)>, CoreError> {
    let table = match read.open_table(INBOX_BY_ACTIVITY) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let rows = match before {
        Some((ms, conv)) => table.range((user, 0, 0)..(user, ms, conv))?,
        None => table.range((user, 0, 0)..=(user, u64::MAX, u64::MAX))?,
    };
    rows.rev()
        .take(limit)
        .map(|r| {
            r.map(|(k, _)| {
                let (_, ms, conv) = k.value();
                (ms, conv)
            })
            .map_err(Into::into)
        })
        .collect()
}

// ---- account export and erasure ---------------------------------------------------------

/// The sender an erased user's messages show: no id, no name.
pub const ERASED_SENDER: u64 = 0;
pub const ERASED_USERNAME: &str = "deleted";
pub const ERASED_DISPLAY_NAME: &str = "Deleted account";

/// A page of the conversations in `user`'s inbox, by conversation id after `after` (export).
pub fn conversations_of(
    read: &ReadTransaction,
    user: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let table = match read.open_table(INBOX) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = after.map_or(0, |a| a.saturating_add(1));
    table
        .range((user, start)..=(user, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1).map_err(Into::into))
        .collect()
}

/// A page of a conversation's messages in id order after `after`, if `user` takes part in
/// it (export; `None` otherwise).
pub fn messages_for(
    read: &ReadTransaction,
    conversation: u64,
    user: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Option<(Conversation, Vec<Message>)>, CoreError> {
    let c = match conversation_for(read, conversation, user) {
        Ok(c) => c,
        Err(CoreError::NotFound) => return Ok(None),
        Err(e) => return Err(e),
    };
    let index = read.open_table(CONVERSATION_MESSAGES)?;
    let start = after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::with_capacity(limit);
    for row in index
        .range((conversation, start)..=(conversation, u64::MAX))?
        .take(limit)
    {
        if let Some(m) = message(read, row?.0.value().1)? {
            out.push(m);
        }
    }
    Ok(Some((c, out)))
}

/// On the erased user's shard: drops up to `limit` conversations from the user's inbox and
/// returns them (their shards then run `erase_sender`). Empty: the inbox is empty.
pub fn erase_inbox(txn: &WriteTransaction, user: u64, limit: usize) -> Result<Vec<u64>, CoreError> {
    let rows: Vec<(u64, u64)> = txn
        .open_table(INBOX)?
        .range((user, 0)..=(user, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, v)| (k.value().1, v.value())))
        .collect::<Result<_, _>>()?;
    let mut inbox = txn.open_table(INBOX)?;
    let mut by = txn.open_table(INBOX_BY_ACTIVITY)?;
    for (conv, at) in &rows {
        inbox.remove((user, *conv))?;
        by.remove((user, *at, *conv))?;
    }
    Ok(rows.into_iter().map(|(c, _)| c).collect())
}

/// On a conversation's shard: anonymises up to `limit` messages of the conversation after
/// `after` that the erased `user` sent (text, media and name removed, the sender shown as
/// `ERASED_SENDER`). Returns where to go on; when the conversation was walked, the user
/// leaves it (a conversation nobody is left in is deleted) and `None` is returned.
pub fn erase_sender(
    txn: &WriteTransaction,
    conversation: u64,
    user: u64,
    after: u64,
    limit: usize,
) -> Result<Option<u64>, CoreError> {
    let ids: Vec<u64> = txn
        .open_table(CONVERSATION_MESSAGES)?
        .range((conversation, after)..=(conversation, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut messages = txn.open_table(MESSAGES)?;
    for id in &ids {
        let m: Option<Message> = messages.get(*id)?.map(|v| decode(v.value())).transpose()?;
        if let Some(mut m) = m.filter(|m| m.sender == user) {
            m.sender = ERASED_SENDER;
            m.sender_username = ERASED_USERNAME.to_string();
            m.sender_display_name = ERASED_DISPLAY_NAME.to_string();
            m.text = String::new();
            m.media_ids = Vec::new();
            messages.insert(*id, encode(&m).as_slice())?;
        }
    }
    drop(messages);
    if ids.len() >= limit {
        return Ok(ids.last().map(|l| l.saturating_add(1)));
    }
    match leave(txn, conversation, user) {
        Ok(Some(mut c)) if c.creator == user => {
            c.creator = ERASED_SENDER;
            txn.open_table(CONVERSATIONS)?
                .insert(conversation, encode(&c).as_slice())?;
            Ok(None)
        }
        Ok(_) | Err(CoreError::NotFound) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod erase_tests {
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    use super::*;

    #[test]
    fn erase_sender_anonymises_in_batches_then_leaves() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let (conv, d, p) = (100, 1, 2);
        let txn = db.begin_write().unwrap();
        create(
            &txn,
            &Conversation {
                id: conv,
                creator: d,
                participants: vec![d, p],
                created_ms: 0,
                last_ms: 0,
                last_message: None,
            },
        )
        .unwrap();
        for i in 0..5u64 {
            let sender = if i % 2 == 0 { d } else { p };
            let m = Message {
                id: 200 + i,
                conversation: conv,
                sender,
                sender_username: "n".into(),
                sender_display_name: "N".into(),
                text: format!("text {i}"),
                media_ids: vec![9],
                created_ms: i,
                edited_ms: None,
            };
            post(&txn, &m, None).unwrap();
        }
        txn.commit().unwrap();
        let mut cursor = 0;
        let mut steps = 0;
        loop {
            steps += 1;
            let txn = db.begin_write().unwrap();
            let next = erase_sender(&txn, conv, d, cursor, 2).unwrap();
            txn.commit().unwrap();
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(steps, 3);
        let r = db.begin_read().unwrap();
        let c = conversation_for(&r, conv, p).unwrap();
        assert_eq!(c.participants, vec![p]);
        assert_eq!(c.creator, ERASED_SENDER);
        for i in 0..5u64 {
            let m = message(&r, 200 + i).unwrap().unwrap();
            if i % 2 == 0 {
                assert_eq!(m.sender, ERASED_SENDER);
                assert!(m.text.is_empty() && m.media_ids.is_empty());
                assert_eq!(m.sender_username, ERASED_USERNAME);
            } else {
                assert_eq!(m.sender, p);
                assert_eq!(m.text, format!("text {i}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    use super::*;

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn msg(id: u64, sender: u64, at: u64) -> Message {
        Message {
            id,
            conversation: 1,
            sender,
            sender_username: format!("u{sender}"),
            sender_display_name: String::new(),
            text: format!("m{id}"),
            media_ids: Vec::new(),
            created_ms: at,
            edited_ms: None,
        }
    }

    #[test]
    fn participants_and_text_rules() {
        assert!(parse_participants(1, &[1]).is_err());
        assert_eq!(parse_participants(1, &[2, 2, 1, 3]).unwrap(), vec![2, 3]);
        let many: Vec<u64> = (2..=33).collect();
        assert!(parse_participants(1, &many).is_err());
        assert!(parse_participants(1, &many[..31]).is_ok());
        assert!(parse_text("  ").is_err());
        assert!(parse_text(&"é".repeat(5001)).is_err());
        assert!(parse_text("a\u{7}").is_err());
        assert_eq!(parse_text(" hi\n ").unwrap(), "hi");
    }

    #[test]
    fn messages_receipts_unread_and_leaving() {
        let db = db();
        let txn = db.begin_write().unwrap();
        create(
            &txn,
            &Conversation {
                id: 1,
                creator: 10,
                participants: vec![10, 20, 30],
                created_ms: 0,
                last_ms: 0,
                last_message: None,
            },
        )
        .unwrap();
        post(&txn, &msg(100, 10, 1), Some("k")).unwrap();
        post(&txn, &msg(101, 20, 2), None).unwrap();
        post(&txn, &msg(102, 10, 3), None).unwrap();
        assert!(matches!(
            post(&txn, &msg(103, 99, 4), None),
            Err(CoreError::NotFound)
        ));
        assert_eq!(
            idempotent_message(&txn, 1, 10, "k", 10)
                .unwrap()
                .unwrap()
                .id,
            100
        );
        assert!(
            idempotent_message(&txn, 1, 10, "k", IDEMPOTENCY_WINDOW_MS + 5)
                .unwrap()
                .is_none()
        );
        txn.commit().unwrap();

        let read = db.begin_read().unwrap();
        let s = summary(&read, 1, 30).unwrap();
        assert_eq!(s.unread, 3);
        assert_eq!(s.last_message.unwrap().id, 102);
        assert_eq!(
            summary(&read, 1, 20).unwrap().unread,
            1,
            "own messages are read"
        );
        assert!(matches!(summary(&read, 1, 99), Err(CoreError::NotFound)));
        let ids: Vec<u64> = page(&read, 1, None, None, 10)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![102, 101, 100]);
        let ids: Vec<u64> = page(&read, 1, Some(102), None, 1)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![101]);
        let ids: Vec<u64> = page(&read, 1, None, Some(100), 10)
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, vec![102, 101]);
        drop(read);

        let txn = db.begin_write().unwrap();
        assert_eq!(mark_read(&txn, 1, 30, Some(101)).unwrap(), 101);
        assert_eq!(
            mark_read(&txn, 1, 30, Some(100)).unwrap(),
            101,
            "never backwards"
        );
        assert!(matches!(
            edit(&txn, 102, 20, "x".into(), 5),
            Err(CoreError::NotFound)
        ));
        assert_eq!(edit(&txn, 102, 10, "x".into(), 5).unwrap().text, "x");
        delete(&txn, 102, 10).unwrap();
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let s = summary(&read, 1, 30).unwrap();
        assert_eq!(s.unread, 0);
        assert_eq!(s.conversation.last_message, Some(101));
        drop(read);

        let txn = db.begin_write().unwrap();
        assert!(leave(&txn, 1, 30).unwrap().is_some());
        assert!(matches!(leave(&txn, 1, 30), Err(CoreError::NotFound)));
        leave(&txn, 1, 10).unwrap();
        assert!(leave(&txn, 1, 20).unwrap().is_none());
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert!(message(&read, 100).unwrap().is_none());
    }

    #[test]
    fn inbox_orders_by_activity() {
        let db = db();
        let txn = db.begin_write().unwrap();
        touch_inbox(&txn, 7, 1, 10).unwrap();
        touch_inbox(&txn, 7, 2, 20).unwrap();
        touch_inbox(&txn, 7, 3, 30).unwrap();
        touch_inbox(&txn, 7, 1, 40).unwrap();
        touch_inbox(&txn, 7, 3, 25).unwrap(); // older: ignored
        touch_inbox(&txn, 8, 9, 50).unwrap();
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(
            inbox(&read, 7, None, 10).unwrap(),
            vec![(40, 1), (30, 3), (20, 2)]
        );
        assert_eq!(inbox(&read, 7, Some((30, 3)), 10).unwrap(), vec![(20, 2)]);
        assert_eq!(inbox_len(&read, 7, 100).unwrap(), 3);
        drop(read);
        let txn = db.begin_write().unwrap();
        drop_from_inbox(&txn, 7, 3).unwrap();
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        assert_eq!(inbox(&read, 7, None, 10).unwrap(), vec![(40, 1), (20, 2)]);
    }
}
