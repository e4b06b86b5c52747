//! Direct messages as a shard runs them: a conversation's shard (the one that created it)
//! owns the conversation and its messages; each participant's shard keeps that user's inbox,
//! filled by the conversation's events through the outbox (`ConversationJoined` is delivered
//! before the create is answered; `MessagePosted` goes through the relay, woken at once, which
//! sends each target's events one batch at a time in id order, so a participant on another
//! shard gets a conversation's messages once and in order). Recipients are notified where
//! they live: in the send's transaction on the conversation's shard, and when
//! `MessagePosted` is applied on the others (`notifications::on_message`).
//!
//! Sends are written in batches: a checked send joins its conversation's shard's queue
//! (`Sending`), and one task writes what is queued in one notifying write (tables opened
//! once for the batch: `messages::Poster`, `events::record_all`,
//! `notifications::on_messages`), then answers each send once
//! that write is durable, in queue order. While a batch commits the next one gathers, as the
//! partition's group commit does for separate writes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use nova_core::events::{self, Event};
use nova_core::messages::{self, Conversation, Message, Summary};
use nova_core::notifications;
use nova_core::profiles::{self, MessagesFrom};
use nova_core::{id_ms, identity, shard_of, social, CoreError};
use nova_storage::redb::WriteTransaction;
use nova_storage::{StorageError, WriteFailure};

use crate::error::Fail;
use crate::mesh::{NewMessage, Op};
use crate::replay::Record;
use crate::shard::{now_ms, Shard};

/// How long a typing indicator lasts without being renewed.
const TYPING_MS: u64 = 6000;
/// Conversations a user may be in, at most (counted when creating one).
pub const CONVERSATIONS_PER_USER_MAX: usize = 10_000;
/// Sends written in one batch, at most.
const SEND_BATCH_MAX: usize = 256;
/// Sends queued on one shard for writing, at most; past it a send is refused as busy.
const SENDS_QUEUED_MAX: usize = 8192;

/// Checked sends waiting on this (their conversation's) shard to be written.
#[derive(Default)]
pub struct Sending {
    queue: RefCell<VecDeque<Outgoing>>,
    /// A task is writing what is queued (`write_sends`).
    writing: Cell<bool>,
}

/// One send, checked, with the ids it was given.
struct Outgoing {
    message: Message,
    key: Option<String>,
    event_id: u64,
    reply: flume::Sender<Result<Message, Fail>>,
}

/// One send as written: the message (an earlier one for a repeated idempotency key),
/// whether it is new, and its recipients on this shard.
pub(crate) struct Sent {
    message: Message,
    fresh: bool,
    local: Vec<u64>,
}

/// Who is typing where (on the conversation's shard): conversation -> (user, until ms).
#[derive(Default)]
pub struct Typing {
    by_conversation: RefCell<HashMap<u64, Vec<(u64, u64)>>>,
}

impl Typing {
    fn start(&self, conversation: u64, user: u64, now: u64) {
        let mut map = self.by_conversation.borrow_mut();
        let list = map.entry(conversation).or_default();
        list.retain(|(u, until)| *u != user && *until > now);
        list.push((user, now + TYPING_MS));
    }

    fn stop(&self, conversation: u64, user: u64) {
        if let Some(list) = self.by_conversation.borrow_mut().get_mut(&conversation) {
            list.retain(|(u, _)| *u != user);
        }
    }

    fn who(&self, conversation: u64, now: u64) -> Vec<u64> {
        self.by_conversation
            .borrow()
            .get(&conversation)
            .map(|l| {
                l.iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(u, _)| *u)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Forgets expired indicators.
    pub fn prune(&self, now: u64) {
        self.by_conversation.borrow_mut().retain(|_, l| {
            l.retain(|(_, until)| *until > now);
            !l.is_empty()
        });
    }
}

impl Shard {
    pub(crate) async fn serve_messaging(self: &Rc<Self>, op: Op, deadline: Instant) {
        match op {
            Op::MayMessage {
                recipient,
                sender,
                reply,
            } => {
                let _ = reply.send(self.may_message(recipient, sender));
            }
            Op::CreateConversation {
                creator,
                others,
                reply,
            } => {
                let _ = reply.send(self.create_conversation(creator, others, deadline).await);
            }
            Op::Inbox {
                user,
                before,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read(|r| messages::inbox(r, user, before, limit)));
            }
            Op::Summaries { ids, user, reply } => {
                let result = self.read(|r| {
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        match messages::summary(r, id, user) {
                            Ok(s) => out.push(s),
                            // Left since the inbox row was read: skip it.
                            Err(CoreError::NotFound) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(out)
                });
                let _ = reply.send(result);
            }
            Op::ConversationView {
                conversation,
                user,
                reply,
            } => {
                let typing = self.typing.who(conversation, now_ms());
                let result = self
                    .read(|r| messages::summary(r, conversation, user))
                    .map(|s| (s, typing));
                let _ = reply.send(result);
            }
            Op::Messages {
                conversation,
                user,
                page,
                reply,
            } => {
                let _ = reply.send(self.read(|r| {
                    messages::conversation_for(r, conversation, user)?;
                    messages::page(r, conversation, page.max_id, page.min_id, page.limit)
                }));
            }
            Op::SendMessage { new, reply } => {
                let _ = reply.send(self.send_message(new, deadline).await);
            }
            Op::EditMessage {
                id,
                sender,
                text,
                reply,
            } => {
                let now = now_ms();
                let record = Record::EditMessage {
                    id,
                    sender,
                    text: &text,
                    now,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| messages::edit(t, id, sender, text, now))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::DeleteMessage { id, sender, reply } => {
                let _ = reply.send(self.delete_message(id, sender).await);
            }
            Op::MarkRead {
                conversation,
                user,
                up_to,
                reply,
            } => {
                let record = Record::ReadReceipt {
                    conversation,
                    user,
                    up_to,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| {
                        messages::mark_read(t, conversation, user, up_to)
                    })
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::Typing {
                conversation,
                user,
                reply,
            } => {
                let _ = reply.send(self.typing(conversation, user, deadline).await);
            }
            Op::LeaveConversation {
                conversation,
                user,
                reply,
            } => {
                let _ = reply.send(self.leave(conversation, user).await);
            }
            other => self.serve_stream(other).await,
        }
    }

    /// On the recipient's shard: refuses a sender the recipient blocked or was blocked by,
    /// or whom the recipient's `messages_from` setting leaves out. A suspended recipient is
    /// not found, as everywhere else.
    fn may_message(&self, recipient: u64, sender: u64) -> Result<(), Fail> {
        if self.hidden_from(recipient, sender) {
            return Err(CoreError::NotFound.into());
        }
        self.read(|r| {
            if identity::user(r, recipient)?.is_none() {
                return Err(CoreError::NotFound);
            }
            let refused = || {
                CoreError::forbidden(
                    "cannot_message",
                    format!("user {recipient} does not accept messages from you"),
                )
            };
            if social::blocked_either_way(r, recipient, sender)? {
                return Err(refused());
            }
            match profiles::settings(r, recipient)?.messages_from {
                MessagesFrom::Everyone => Ok(()),
                MessagesFrom::Following if social::follows(r, recipient, sender)? => Ok(()),
                _ => Err(refused()),
            }
        })
    }

    /// On the creator's shard: checks every recipient on its own shard, then stores the
    /// conversation and delivers it to the other participants' inboxes before answering.
    async fn create_conversation(
        self: &Rc<Self>,
        creator: u64,
        others: Vec<u64>,
        deadline: Instant,
    ) -> Result<Summary, Fail> {
        if self.read(|r| messages::inbox_len(r, creator, CONVERSATIONS_PER_USER_MAX))?
            >= CONVERSATIONS_PER_USER_MAX
        {
            return Err(CoreError::invalid(
                "too_many_conversations",
                format!("at most {CONVERSATIONS_PER_USER_MAX} conversations; leave some first"),
            )
            .into());
        }
        for recipient in &others {
            let target = shard_of(*recipient);
            if target >= self.shards {
                return Err(CoreError::NotFound.into());
            }
            let recipient = *recipient;
            self.ask(target, deadline, |reply| Op::MayMessage {
                recipient,
                sender: creator,
                reply,
            })
            .await?;
        }
        let now = now_ms();
        let mut participants = vec![creator];
        participants.extend(&others);
        let conversation = Conversation {
            id: self.next_id(),
            creator,
            participants,
            created_ms: now,
            last_ms: now,
            last_message: None,
        };
        let here = self.id;
        let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for p in &conversation.participants {
            by_shard.entry(shard_of(*p)).or_default().push(*p);
        }
        let mut events_out: Vec<(u64, Event, usize)> = Vec::new();
        for (target, users) in by_shard.iter().filter(|(s, _)| **s != here) {
            let event = Event::ConversationJoined {
                conversation: conversation.id,
                users: users.clone(),
                at_ms: now,
            };
            events_out.push((self.next_id(), event, *target));
        }
        let local: Vec<u64> = by_shard.get(&here).cloned().unwrap_or_default();
        {
            let record = Record::Conversation {
                conversation: &conversation,
                local: &local,
                events: &events_out,
                now,
            }
            .encode();
            let conversation = conversation.clone();
            let events_out = events_out.clone();
            self.write_recorded(record, move |t| {
                create_in(t, &conversation, &local, &events_out, now)
            })
            .await?;
        }
        for (id, event, target) in events_out {
            self.deliver_now(id, event, &[target], deadline).await;
        }
        let id = conversation.id;
        self.read(|r| messages::summary(r, id, creator))
    }

    /// In a conversation of two, a block either way stops new messages and typing (asked on
    /// the other participant's shard): 403 `cannot_message`.
    async fn may_send(
        self: &Rc<Self>,
        conversation: &Conversation,
        sender: u64,
        deadline: Instant,
    ) -> Result<(), Fail> {
        if conversation.participants.len() != 2 {
            return Ok(());
        }
        let Some(other) = conversation
            .participants
            .iter()
            .copied()
            .find(|p| *p != sender)
        else {
            return Ok(());
        };
        let visible = self
            .ask(shard_of(other), deadline, |reply| Op::Visible {
                user_id: other,
                viewer: sender,
                reply,
            })
            .await?;
        if !visible {
            return Err(CoreError::forbidden(
                "cannot_message",
                format!("user {other} does not accept messages from you"),
            )
            .into());
        }
        Ok(())
    }

    /// On the conversation's shard (`may_send` first).
    async fn send_message(
        self: &Rc<Self>,
        new: NewMessage,
        deadline: Instant,
    ) -> Result<Message, Fail> {
        let sender = new.sender.id;
        let conversation =
            self.read(|r| messages::conversation_for(r, new.conversation, sender))?;
        self.may_send(&conversation, sender, deadline).await?;
        // The message's time is its id's millisecond, so ordering by time (the inbox) and
        // by id (a conversation's messages) agree even when the clock ticks in between.
        let id = self.next_id();
        let now = id_ms(id);
        let message = Message {
            id,
            conversation: new.conversation,
            sender,
            sender_username: new.sender.username,
            sender_display_name: new.sender.display_name,
            text: new.text,
            media_ids: new.media_ids,
            created_ms: now,
            edited_ms: None,
        };
        let (reply, answer) = flume::bounded(1);
        {
            let mut queue = self.sending.queue.borrow_mut();
            if queue.len() >= SENDS_QUEUED_MAX {
                return Err(Fail::Busy);
            }
            queue.push_back(Outgoing {
                message,
                key: new.idempotency_key,
                event_id: self.next_id(),
                reply,
            });
        }
        if !self.sending.writing.replace(true) {
            let shard = Rc::clone(self);
            glommio::spawn_local(async move { shard.write_sends().await }).detach();
        }
        // The write goes on if this caller goes (its deadline passed): it stands regardless.
        answer.recv_async().await.map_err(|_| Fail::Unavailable)?
    }

    /// Writes the queued sends, a batch at a time, until none is left. Each batch is one
    /// notifying write; after its commit, each new message goes to its local recipients'
    /// streams and each send is answered, in queue order (ids were given in that order, so a
    /// conversation's messages stay in id order everywhere).
    async fn write_sends(self: Rc<Self>) {
        loop {
            let batch: Vec<Outgoing> = {
                let mut queue = self.sending.queue.borrow_mut();
                let n = queue.len().min(SEND_BATCH_MAX);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let mut replies = Vec::with_capacity(batch.len());
            let mut sends = Vec::with_capacity(batch.len());
            for o in batch {
                replies.push(o.reply);
                sends.push((o.message, o.key, o.event_id));
            }
            let here = self.id;
            let written = self
                .write_notifying_logged(
                    move |t| {
                        let record = crate::replay::Record::Send {
                            here,
                            sends: &sends,
                        }
                        .encode();
                        Ok((post_batch(t, here, sends)?, record))
                    },
                    None,
                )
                .await;
            let outcomes = match written {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    // The whole batch was aborted: every send in it fails alike.
                    let reason = e.to_string();
                    for reply in replies {
                        let failed = CoreError::Storage(StorageError::Redb(reason.clone()));
                        let _ = reply.send(Err(failed.into()));
                    }
                    continue;
                }
            };
            let mut kick = false;
            for (outcome, reply) in outcomes.into_iter().zip(replies) {
                let answer = match outcome {
                    Ok(sent) => {
                        if sent.fresh {
                            kick = true;
                            self.typing
                                .stop(sent.message.conversation, sent.message.sender);
                            self.publish_message(sent.local, &sent.message);
                        }
                        Ok(sent.message)
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(answer);
            }
            if kick {
                self.relay.kick();
            }
        }
        self.sending.writing.set(false);
    }

    /// On the conversation's shard: remember the indicator and tell the other participants'
    /// streams (in memory only; nothing is stored).
    async fn typing(
        self: &Rc<Self>,
        conversation: u64,
        user: u64,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let c = self.read(|r| messages::conversation_for(r, conversation, user))?;
        self.may_send(&c, user, deadline).await?;
        self.typing.start(conversation, user, now_ms());
        let data = format!(r#"{{"conversation_id":"{conversation}","user_id":"{user}"}}"#);
        for p in c.participants.iter().filter(|p| **p != user) {
            let (reply, _) = flume::bounded(1);
            self.tell(
                shard_of(*p),
                Op::StreamPublish {
                    user: *p,
                    kind: "typing",
                    data: data.clone(),
                    about: crate::stream::About {
                        actor: user,
                        items: [conversation, 0],
                    },
                    reply,
                },
            );
        }
        Ok(())
    }

    /// On the conversation's shard: `sender` deletes its message `id`; the other
    /// participants' notifications about it go, here at once, elsewhere when the relay
    /// delivers `MessageDeleted` (woken now; after the message's own `MessagePosted`, as
    /// events go in id order).
    async fn delete_message(self: &Rc<Self>, id: u64, sender: u64) -> Result<(), Fail> {
        let (here, shards) = (self.id, self.shards);
        let (event_id, now) = (self.next_id(), now_ms());
        let record = Record::DeleteMessageAt {
            id,
            sender,
            here,
            shards,
            event_id,
            now,
        }
        .encode();
        let targets = self
            .write_recorded(record, move |t| {
                delete_in(t, id, sender, here, shards, event_id, now)
            })
            .await?;
        self.unstream_item(id);
        if !targets.is_empty() {
            self.relay.kick();
        }
        Ok(())
    }

    /// On the conversation's shard: the user leaves; its inbox forgets the conversation (at
    /// once here; on another shard when the relay delivers `ConversationLeft`, while the
    /// conversation's summaries already leave it out, as the user is no participant).
    async fn leave(self: &Rc<Self>, conversation: u64, user: u64) -> Result<(), Fail> {
        let target = shard_of(user);
        let here = self.id;
        let event_id = self.next_id();
        let now = now_ms();
        let event = Event::ConversationLeft { conversation, user };
        let record = Record::Leave {
            here,
            target,
            event_id,
            now,
            event: &event,
        }
        .encode();
        self.write_recorded(record, move |t| {
            leave_in(t, here, target, event_id, now, &event)
        })
        .await?;
        self.typing.stop(conversation, user);
        if target == here {
            self.unstream_left(user, conversation);
        } else {
            // Relay-only, so it reaches the user's shard after the conversation's messages
            // sent before it (a later `MessagePosted` would notify the user again).
            self.relay.kick();
        }
        Ok(())
    }

    /// After events were applied here: stream the new messages to their local recipients,
    /// in the order applied.
    pub(crate) fn publish_applied(self: &Rc<Self>, applied: &[(u64, Event)]) {
        for (_, event) in applied {
            match event {
                Event::MessagePosted {
                    message,
                    recipients,
                } => {
                    if !self.streams.any() {
                        continue;
                    }
                    let here = recipients
                        .iter()
                        .copied()
                        .filter(|r| shard_of(*r) == self.id)
                        .collect();
                    self.publish_message(here, message);
                }
                Event::PostCreated { post } => self.publish_post(post),
                Event::SuspensionChanged { .. } => self.reload_suspended(),
                _ => {}
            }
        }
    }
}

/// `Shard::create_conversation`'s write on the creator's shard: the conversation, the
/// inboxes of its participants here (`local`), and its `ConversationJoined` events for the
/// other shards. Replayed from its log record (replay.rs).
pub(crate) fn create_in(
    t: &WriteTransaction,
    conversation: &Conversation,
    local: &[u64],
    events_out: &[(u64, Event, usize)],
    now: u64,
) -> Result<(), CoreError> {
    messages::create(t, conversation)?;
    for u in local {
        messages::touch_inbox(t, *u, conversation.id, now)?;
    }
    for (id, event, target) in events_out {
        events::record(t, *id, now, event, &[*target])?;
    }
    Ok(())
}

/// `Shard::delete_message`'s write on the conversation's shard (`here`, of `shards`): the
/// message goes, and so do the notifications about it of the other participants here; the
/// `MessageDeleted` event is recorded for the shards of the others. Those shards. Replayed
/// from its log record (replay.rs).
pub(crate) fn delete_in(
    t: &WriteTransaction,
    id: u64,
    sender: u64,
    here: usize,
    shards: usize,
    event_id: u64,
    now: u64,
) -> Result<Vec<usize>, CoreError> {
    let message = messages::delete(t, id, sender)?;
    let conversation = message.conversation;
    let users: Vec<u64> = messages::participants_in(t, conversation)?
        .into_iter()
        .filter(|u| *u != sender)
        .collect();
    let mut targets = Vec::new();
    for u in &users {
        match shard_of(*u) {
            s if s == here => {
                notifications::forget_message(t, *u, conversation, id)?;
            }
            s if s < shards && !targets.contains(&s) => targets.push(s),
            _ => {}
        }
    }
    let event = Event::MessageDeleted {
        conversation,
        message: id,
        users,
    };
    if !targets.is_empty() {
        events::record(t, event_id, now, &event, &targets)?;
    }
    Ok(targets)
}

/// `Shard::leave`'s write on the conversation's shard (`here`): `event` is the
/// `ConversationLeft` of `conversation` and the leaving user, whose inbox is on `target`.
/// Replayed from its log record (replay.rs).
pub(crate) fn leave_in(
    t: &WriteTransaction,
    here: usize,
    target: usize,
    event_id: u64,
    now: u64,
    event: &Event,
) -> Result<(), CoreError> {
    let Event::ConversationLeft { conversation, user } = *event else {
        return Err(CoreError::Corrupt(format!("not a leave: {event:?}")));
    };
    messages::leave(t, conversation, user)?;
    if target == here {
        events::left(t, user, conversation)?;
    } else {
        events::record(t, event_id, now, event, &[target])?;
    }
    Ok(())
}

/// Writes a batch of sends (message, idempotency key, event id) on the conversation's shard
/// `here`: each message, its conversation's local inboxes, its `MessagePosted` outbox event
/// for the other shards and its local recipients' notifications. A send refused by the domain
/// (its sender has left) fails alone and wrote nothing; a storage failure fails the batch.
pub(crate) fn post_batch(
    t: &WriteTransaction,
    here: usize,
    sends: Vec<crate::replay::SendItem>,
) -> Result<Vec<Result<Sent, CoreError>>, CoreError> {
    let mut out: Vec<Result<Sent, CoreError>> = Vec::with_capacity(sends.len());
    let mut recorded: Vec<(u64, u64, Event, Vec<usize>)> = Vec::with_capacity(sends.len());
    {
        let mut poster = messages::Poster::open(t)?;
        for (message, key, event_id) in sends {
            match post_one(&mut poster, here, message, key.as_deref(), event_id) {
                Ok((sent, event)) => {
                    recorded.extend(event);
                    out.push(Ok(sent));
                }
                Err(e) if e.poisons_batch() => return Err(e),
                Err(e) => out.push(Err(e)),
            }
        }
    }
    events::record_all(
        t,
        recorded
            .iter()
            .map(|(id, now, event, targets)| (*id, *now, event, targets.as_slice())),
    )?;
    // Recipients on other shards are notified where the event is applied.
    let notified: Vec<(&Message, &[u64])> = out
        .iter()
        .flatten()
        .filter(|s| s.fresh)
        .map(|s| (&s.message, s.local.as_slice()))
        .collect();
    notifications::on_messages(t, &notified)?;
    Ok(out)
}

/// One send of `post_batch`: the message (or the one its idempotency key made before) and
/// the event to record for it.
#[allow(clippy::type_complexity)]
fn post_one(
    poster: &mut messages::Poster<'_>,
    here: usize,
    message: Message,
    key: Option<&str>,
    event_id: u64,
) -> Result<(Sent, Option<(u64, u64, Event, Vec<usize>)>), CoreError> {
    let (sender, now) = (message.sender, message.created_ms);
    if let Some(key) = key {
        if let Some(first) = poster.idempotent(message.conversation, sender, key, now)? {
            let sent = Sent {
                message: first,
                fresh: false,
                local: Vec::new(),
            };
            return Ok((sent, None));
        }
    }
    let conversation = poster.post(&message, key)?;
    let recipients: Vec<u64> = conversation
        .participants
        .iter()
        .copied()
        .filter(|p| *p != sender)
        .collect();
    let mut local = Vec::new();
    let mut targets: Vec<usize> = Vec::new();
    for p in &conversation.participants {
        let s = shard_of(*p);
        if s == here {
            poster.touch_inbox(*p, conversation.id, now)?;
            if *p != sender {
                local.push(*p);
            }
        } else if !targets.contains(&s) {
            targets.push(s);
        }
    }
    let event = Event::MessagePosted {
        message: Box::new(message.clone()),
        recipients,
    };
    let sent = Sent {
        message,
        fresh: true,
        local,
    };
    Ok((sent, Some((event_id, now, event, targets))))
}

/// A message as the API and the stream show it.
pub(crate) fn message_view(m: &Message) -> nova_protocol::MessageView {
    nova_protocol::MessageView {
        id: m.id.to_string(),
        conversation_id: m.conversation.to_string(),
        sender: nova_protocol::UserBrief {
            id: m.sender.to_string(),
            username: m.sender_username.clone(),
            display_name: m.sender_display_name.clone(),
            avatar: None,
        },
        text: m.text.clone(),
        media_ids: m.media_ids.iter().map(u64::to_string).collect(),
        media: Vec::new(),
        created_at: nova_protocol::rfc3339(m.created_ms),
        edited_at: m.edited_ms.map(nova_protocol::rfc3339),
    }
}

impl Shard {
    async fn serve_stream(self: &Rc<Self>, op: Op) {
        match op {
            Op::StreamSubscribe {
                user,
                sub,
                shard,
                last_id,
                reply,
            } => {
                let _ = reply.send(Ok(self.subscribe(user, sub, shard, last_id)));
            }
            Op::StreamUnsubscribe { user, sub, reply } => {
                self.unsubscribe(user, sub);
                let _ = reply.send(Ok(()));
            }
            Op::StreamPush { sub, event } => self.push_local(sub, event),
            Op::StreamPublish {
                user,
                kind,
                data,
                about,
                reply,
            } => {
                self.publish(user, kind, data, about);
                let _ = reply.send(Ok(()));
            }
            // Identity and social operations are served in shard.rs and social.rs.
            _ => {}
        }
    }
}
