//! The live event stream (`GET /v1/stream`, Server-Sent Events).
//!
//! A user's stream state lives on the user's shard (`Streams::users`): who is listening (each
//! subscription names the shard holding its connection) and a ring of the user's recent events
//! for resuming with `Last-Event-ID`. The connection may be on any shard: it registers a sink
//! there (`Streams::sinks`), subscribes on the user's shard (which answers with the backlog
//! after the client's last id), and from then on the user's shard forwards each new event to
//! the connection's shard (`Op::StreamPush`). Event ids come from the user's shard's id
//! generator, so they only grow; the connection drops anything not newer than what it sent,
//! so nothing arrives twice.
//!
//! A kept event names its actor and what it shows (`About`): deletes, blocks and erasures
//! applied on the user's shard forget the kept events they touch (`Shard::unstream`), so a
//! resume does not bring them back.
//!
//! Bounds: streams per shard and per user (config), `RING_MAX` events kept per user for
//! `RESUME_WINDOW_MS` after the last stream closed, and `SINK_CAPACITY` events queued per
//! connection: a reader that falls that far behind is cut off (it can reconnect and resume).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL};
use http::{HeaderMap, StatusCode};

use nova_core::content::Post;
use nova_core::messages::Message;
use nova_core::{shard_of, social};

use crate::api::Reply;
use crate::api_notify::ActorName;
use crate::error::Fail;
use crate::mesh::{Op, ShardMsg};
use crate::shard::{now_ms, Shard};
use nova_core::tokens::AccessClaims;
use nova_protocol as wire;

/// Events kept per user for resuming.
const RING_MAX: usize = 256;
/// How long a user's ring is kept after the last stream closed.
const RESUME_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Events queued for one connection before it counts as a slow reader.
const SINK_CAPACITY: usize = 128;
/// Events written to a connection in one chunk at most, when they are waiting together (one
/// write for a burst instead of one per event).
const CHUNK_EVENTS_MAX: usize = 32;
/// Tells a client how long to wait before reconnecting.
const RETRY_MS: u64 = 2000;
/// Post and message events queued behind ones being resolved (`publish_view`); past it,
/// events still queue (their order is kept) but go out as stored, without asking.
const VIEW_QUEUE_MAX: usize = 1024;
/// How long resolving a batch of queued events may take; after it they go out as stored.
const VIEW_RESOLVE_MS: u64 = 2000;

/// One event for a user's stream.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    pub id: u64,
    pub kind: &'static str,
    /// JSON, on one line.
    pub data: String,
    pub about: About,
}

/// Whom and what a stream event is about: its actor (author, sender, notifier; 0 for none)
/// and the posts, comments, messages or conversations it shows (0 for none). A kept event is
/// forgotten when what it shows goes (`Shard::unstream`), so a resumed stream does not bring
/// back a deleted post or message, nor anything of an erased account or across a block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct About {
    pub actor: u64,
    pub items: [u64; 2],
}

impl About {
    /// Does the event show `item`?
    pub fn names(&self, item: u64) -> bool {
        item != 0 && self.items.contains(&item)
    }
}

impl StreamEvent {
    /// Appends the event's SSE frame to `out`.
    fn frame_into(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        // Writing to a Vec cannot fail.
        out.reserve(self.data.len() + 64);
        let _ = write!(out, "id: {}\nevent: {}\ndata: ", self.id, self.kind);
        out.extend_from_slice(self.data.as_bytes());
        out.extend_from_slice(b"\n\n");
    }
}

#[derive(Default)]
pub struct Streams {
    /// On a user's shard: the user's subscriptions and recent events.
    users: RefCell<HashMap<u64, UserStreams>>,
    /// On a connection's shard: subscription id -> the connection's queue.
    sinks: RefCell<HashMap<u64, flume::Sender<StreamEvent>>>,
    /// Streams open on this shard.
    open: Cell<usize>,
    /// Post and message events waiting for their author's brief or their media (see
    /// `publish_view`), in the order they are to go out.
    view_queue: RefCell<VecDeque<Queued>>,
    /// A task is working through `view_queue`.
    resolving: Cell<bool>,
}

/// A post or message event waiting to be resolved: its listeners, its view as stored, and
/// whether to resolve it (false once the queue was past `VIEW_QUEUE_MAX`).
struct Queued {
    users: Vec<u64>,
    view: View,
    about: About,
    resolve: bool,
}

enum View {
    Post(wire::PostView),
    Message(wire::MessageView),
}

impl View {
    fn kind(&self) -> &'static str {
        match self {
            View::Post(_) => "post",
            View::Message(_) => "message",
        }
    }

    fn data(&self) -> String {
        match self {
            View::Post(v) => json_line(v),
            View::Message(v) => json_line(v),
        }
    }

    /// Lays the author's card over the stored brief if this shard has everything at hand
    /// (`briefs::card_at_hand`) and there are no media to resolve; false when asking is needed.
    fn resolve_at_hand(&mut self, shard: &Shard) -> bool {
        let (brief, media) = match self {
            View::Post(v) => (&mut v.author, &v.media_ids),
            View::Message(v) => (&mut v.sender, &v.media_ids),
        };
        if !media.is_empty() {
            return false;
        }
        let Some(card) = brief
            .id
            .parse()
            .ok()
            .and_then(|id| crate::briefs::card_at_hand(shard, id))
        else {
            return false;
        };
        crate::briefs::apply_card(&card, brief);
        true
    }
}

#[derive(Default)]
struct UserStreams {
    /// (subscription id, shard of its connection)
    subs: Vec<(u64, usize)>,
    ring: VecDeque<StreamEvent>,
    /// When the last subscription went (ms), for dropping the ring after the window.
    idle_since_ms: u64,
}

impl Streams {
    /// Is anyone on this shard's users listening (or within the resume window)?
    pub fn any(&self) -> bool {
        !self.users.borrow().is_empty()
    }
}

impl Shard {
    /// On `user`'s shard: adds an event to the user's stream, if the user has one open or
    /// had one within the resume window; otherwise nothing is kept.
    pub fn publish(self: &Rc<Self>, user: u64, kind: &'static str, data: String, about: About) {
        let subs = {
            let mut users = self.streams.users.borrow_mut();
            let Some(u) = users.get_mut(&user) else {
                return;
            };
            let event = StreamEvent {
                id: self.next_id(),
                kind,
                data,
                about,
            };
            if u.ring.len() >= RING_MAX {
                u.ring.pop_front();
            }
            u.ring.push_back(event.clone());
            u.subs
                .iter()
                .map(|(sub, shard)| (*sub, *shard, event.clone()))
                .collect::<Vec<_>>()
        };
        for (sub, shard, event) in subs {
            if shard == self.id {
                self.push_local(sub, event);
            } else {
                self.tell(shard, Op::StreamPush { sub, event });
            }
        }
    }

    /// On the shard of `users`: a `message` event for each of them who listens, shown as a
    /// message list shows it (`publish_view`).
    pub(crate) fn publish_message(self: &Rc<Self>, users: Vec<u64>, message: &Message) {
        let users: Vec<u64> = {
            let listening = self.streams.users.borrow();
            users
                .into_iter()
                .filter(|u| listening.contains_key(u))
                .collect()
        };
        if users.is_empty() {
            return;
        }
        let about = About {
            actor: message.sender,
            items: [message.id, message.conversation],
        };
        self.publish_view(
            users,
            View::Message(crate::messaging::message_view(message)),
            about,
        );
    }

    /// A post or message event for `users`, its author's brief as it is now (display name and
    /// avatar, `briefs`) and its media resolved (`media_views`), as a timeline or message list
    /// shows them. Events go out in the order of the calls: what this shard has at hand goes
    /// out at once; anything else waits for its asks (within `VIEW_RESOLVE_MS`, then it goes
    /// out as stored), and the events after it wait behind it.
    fn publish_view(self: &Rc<Self>, users: Vec<u64>, mut view: View, about: About) {
        let streams = &self.streams;
        if !streams.resolving.get()
            && streams.view_queue.borrow().is_empty()
            && view.resolve_at_hand(self)
        {
            let data = view.data();
            for user in users {
                self.publish(user, view.kind(), data.clone(), about);
            }
            return;
        }
        {
            let mut queue = streams.view_queue.borrow_mut();
            let resolve = queue.len() < VIEW_QUEUE_MAX;
            queue.push_back(Queued {
                users,
                view,
                about,
                resolve,
            });
        }
        if !streams.resolving.replace(true) {
            let shard = Rc::clone(self);
            glommio::spawn_local(async move { shard.resolve_views().await }).detach();
        }
    }

    /// Works through `view_queue` in order, all that is waiting at a time, then stops.
    async fn resolve_views(self: Rc<Self>) {
        loop {
            let batch: Vec<Queued> = self.streams.view_queue.borrow_mut().drain(..).collect();
            if batch.is_empty() {
                break;
            }
            let mut posts = Vec::new();
            let mut messages = Vec::new();
            let mut order = Vec::with_capacity(batch.len());
            for q in batch {
                let slot = match q.view {
                    View::Post(v) if q.resolve => {
                        posts.push(v);
                        Slot::Post(posts.len() - 1)
                    }
                    View::Message(v) if q.resolve => {
                        messages.push(v);
                        Slot::Message(messages.len() - 1)
                    }
                    stored => Slot::AsStored(stored.kind(), stored.data()),
                };
                order.push((q.users, slot, q.about));
            }
            let deadline = Instant::now() + Duration::from_millis(VIEW_RESOLVE_MS);
            resolve(&self, &mut posts, &mut messages, deadline).await;
            for (users, slot, about) in order {
                let (kind, data) = match slot {
                    Slot::Post(i) => ("post", json_line(&posts[i])),
                    Slot::Message(i) => ("message", json_line(&messages[i])),
                    Slot::AsStored(kind, data) => (kind, data),
                };
                for user in users {
                    self.publish(user, kind, data.clone(), about);
                }
            }
        }
        self.streams.resolving.set(false);
    }

    /// On a connection's shard: queue an event for a connection; a full queue cuts it off.
    pub(crate) fn push_local(&self, sub: u64, event: StreamEvent) {
        let mut sinks = self.streams.sinks.borrow_mut();
        let Some(sink) = sinks.get(&sub) else {
            return;
        };
        match sink.try_send(event) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => {
                tracing::info!(sub, "slow stream reader cut off");
                sinks.remove(&sub);
            }
            Err(flume::TrySendError::Disconnected(_)) => {
                sinks.remove(&sub);
            }
        }
    }

    /// On `user`'s shard: registers a subscription; answers the events after `last_id` (all
    /// kept ones when the client sends none is wrong: a fresh stream starts empty), or
    /// `None` when the user has too many streams.
    pub(crate) fn subscribe(
        &self,
        user: u64,
        sub: u64,
        shard: usize,
        last_id: Option<u64>,
    ) -> Option<Vec<StreamEvent>> {
        let mut users = self.streams.users.borrow_mut();
        let u = users.entry(user).or_default();
        if u.subs.len() >= self.cfg.streams_per_user_max {
            return None;
        }
        u.subs.push((sub, shard));
        Some(match last_id {
            Some(last) => u.ring.iter().filter(|e| e.id > last).cloned().collect(),
            None => Vec::new(),
        })
    }

    pub(crate) fn unsubscribe(&self, user: u64, sub: u64) {
        if let Some(u) = self.streams.users.borrow_mut().get_mut(&user) {
            u.subs.retain(|(s, _)| *s != sub);
            if u.subs.is_empty() {
                u.idle_since_ms = now_ms();
            }
        }
    }

    /// Forgets the kept events `gone(user, about)` names from the rings of this shard's
    /// users, so that resuming does not bring them back.
    pub(crate) fn unstream(&self, gone: impl Fn(u64, &StreamEvent) -> bool) {
        for (user, u) in self.streams.users.borrow_mut().iter_mut() {
            u.ring.retain(|e| !gone(*user, e));
        }
    }

    /// `unstream` for a post, comment or message that went (deleted, or its notifications
    /// retracted).
    pub(crate) fn unstream_item(&self, item: u64) {
        self.unstream(|_, e| e.about.names(item));
    }

    /// `unstream` for a block between `a` and `b`: what each was shown of the other.
    pub(crate) fn unstream_between(&self, a: u64, b: u64) {
        self.unstream(|user, e| {
            (user == a && e.about.actor == b) || (user == b && e.about.actor == a)
        });
    }

    /// `unstream` for an erased or suspended account: its own ring and everything of its in
    /// others'.
    pub(crate) fn unstream_user(&self, gone: u64) {
        self.unstream(|user, e| user == gone || e.about.actor == gone);
    }

    /// `unstream` for `reader` no longer following `author`: the author's posts, as its feed
    /// drops them.
    pub(crate) fn unstream_unfollowed(&self, reader: u64, author: u64) {
        self.unstream(|user, e| user == reader && e.about.actor == author && e.kind == "post");
    }

    /// `unstream` for `user` leaving `conversation`: its messages, typing and notifications.
    pub(crate) fn unstream_left(&self, user: u64, conversation: u64) {
        self.unstream(|u, e| u == user && e.about.names(conversation));
    }

    /// `unstream` for `author` turning private: everything of it kept for users of this
    /// shard who do not follow it (mentions of strangers, their posts and notifications).
    pub(crate) fn unstream_private(&self, author: u64) {
        let listeners: Vec<u64> = self.streams.users.borrow().keys().copied().collect();
        let strangers: Vec<u64> = listeners
            .into_iter()
            .filter(|u| {
                *u != author
                    && !self
                        .read(|r| social::follows(r, *u, author))
                        .unwrap_or(false)
            })
            .collect();
        self.unstream(|user, e| e.about.actor == author && strangers.contains(&user));
    }

    /// Drops the rings of users without streams for longer than the resume window.
    pub(crate) fn prune_streams(&self) {
        let now = now_ms();
        self.streams.users.borrow_mut().retain(|_, u| {
            !u.subs.is_empty() || now.saturating_sub(u.idle_since_ms) < RESUME_WINDOW_MS
        });
    }

    /// After a post reached feeds on this shard: a `post` event for each local reader who
    /// listens.
    pub(crate) fn publish_post(self: &Rc<Self>, post: &Post) {
        if !self.streams.any() {
            return;
        }
        let author_here = shard_of(post.author_id) == self.id;
        let readers = match self.read(|r| social::feed_readers(r, post, author_here)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "stream: feed readers of a post");
                return;
            }
        };
        let listening: Vec<u64> = {
            let users = self.streams.users.borrow();
            readers
                .into_iter()
                .filter(|r| users.contains_key(r))
                .collect()
        };
        if listening.is_empty() {
            return;
        }
        // What the home feed hides for a reader (its feed preferences) is not sent either.
        let shown = self.read(|r| {
            let mut shown = Vec::with_capacity(listening.len());
            for reader in listening {
                let prefs = nova_core::profiles::feed_preferences(r, reader)?;
                if reader == post.author_id || !prefs.hides(&post.text, post.reply_to.is_some()) {
                    shown.push(reader);
                }
            }
            Ok::<_, nova_core::CoreError>(shown)
        });
        let listening = match shown {
            Ok(shown) if shown.is_empty() => return,
            Ok(shown) => shown,
            Err(e) => {
                tracing::warn!(error = %e, "stream: feed preferences of a post's readers");
                return;
            }
        };
        let view = crate::api_social::post_view(post, Default::default());
        let about = About {
            actor: post.author_id,
            items: [post.id, 0],
        };
        self.publish_view(listening, View::Post(view), about);
    }

    /// Sends an op to a shard without waiting for an answer (best effort: a full inbox
    /// drops it).
    pub(crate) fn tell(self: &Rc<Self>, target: usize, op: Op) {
        let deadline = Instant::now() + Duration::from_secs(5);
        if target == self.id {
            let me = Rc::clone(self);
            glommio::spawn_local(async move { me.serve(op, deadline).await }).detach();
        } else if let Some(sender) = self.mesh.get(target) {
            if sender.try_send(ShardMsg::Call { op, deadline }).is_err() {
                tracing::warn!(target, "mesh full: stream message dropped");
            }
        }
    }
}

fn json_line<T: serde::Serialize>(view: &T) -> String {
    String::from_utf8_lossy(&nova_protocol::to_json(view)).into_owned()
}

/// Where a queued event's view is while its batch is resolved.
enum Slot {
    Post(usize),
    Message(usize),
    /// Not resolved: its kind and data.
    AsStored(&'static str, String),
}

/// The authors' briefs as they are now and the media of a batch of queued events: each
/// shard asked once for all of them. What cannot be resolved by `deadline` stays as stored.
async fn resolve(
    shard: &Rc<Shard>,
    posts: &mut [wire::PostView],
    messages: &mut [wire::MessageView],
    deadline: Instant,
) {
    let authors = posts
        .iter()
        .map(|v| &v.author.id)
        .chain(messages.iter().map(|v| &v.sender.id))
        .filter_map(|id| id.parse().ok());
    match crate::briefs::cards(shard, authors, deadline).await {
        Ok(cards) => {
            crate::briefs::apply_cards(&cards, posts, |v| &mut v.author);
            crate::briefs::apply_cards(&cards, messages, |v| &mut v.sender);
        }
        Err(e) => tracing::debug!(status = e.status.as_u16(), "stream: events' briefs"),
    }
    let media = async {
        crate::media_views::fill_posts(shard, posts, deadline).await?;
        crate::media_views::fill_messages(shard, messages, deadline).await
    };
    if let Err(e) = media.await {
        tracing::debug!(status = e.status.as_u16(), "stream: events' media");
    }
}

/// Unregisters a connection when its body is dropped (the client went away, or the stream
/// ended).
struct Subscription {
    shard: Rc<Shard>,
    user: u64,
    sub: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let streams = &self.shard.streams;
        streams.sinks.borrow_mut().remove(&self.sub);
        streams.open.set(streams.open.get().saturating_sub(1));
        let (reply, _) = flume::bounded(1);
        self.shard.tell(
            shard_of(self.user),
            Op::StreamUnsubscribe {
                user: self.user,
                sub: self.sub,
                reply,
            },
        );
    }
}

/// The `Last-Event-ID` a reconnecting client sends. Anything unparsable counts as none, and
/// so does an id from the future (made more than a second from now), which no event has and
/// which would hold back every event to come.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .filter(|id| nova_core::id_ms(*id) <= now_ms() + 1000)
}

/// `GET /v1/stream` for an authenticated user (`claims`: the stream ends when that access
/// token expires or its session is revoked).
pub(crate) async fn open(
    shard: &Rc<Shard>,
    claims: &AccessClaims,
    headers: &HeaderMap,
    deadline: Instant,
) -> Result<Reply, Fail> {
    let user = claims.user_id;
    let streams = &shard.streams;
    if streams.open.get() >= shard.cfg.streams_per_shard_max {
        return Err(Fail::Busy);
    }
    let last = last_event_id(headers);
    let sub = shard.next_id();
    let (tx, rx) = flume::bounded(SINK_CAPACITY);
    streams.sinks.borrow_mut().insert(sub, tx);
    streams.open.set(streams.open.get() + 1);
    let guard = Subscription {
        shard: Rc::clone(shard),
        user,
        sub,
    };
    let here = shard.id;
    let backlog = shard
        .ask(shard_of(user), deadline, |reply| Op::StreamSubscribe {
            user,
            sub,
            shard: here,
            last_id: last,
            reply,
        })
        .await?;
    let Some(backlog) = backlog else {
        return Err(Fail::RateLimited {
            retry_after_s: 5,
            limit: shard.cfg.streams_per_user_max as u32,
        });
    };
    let state = StreamState {
        guard,
        rx,
        backlog: backlog.into(),
        last_sent: last.unwrap_or(0),
        hello: true,
        heartbeat: Duration::from_millis(shard.cfg.stream_heartbeat_ms),
        session: claims.session_id,
        expires_at_s: claims.expires_at_s,
    };
    let chunks = futures_lite::stream::unfold(state, next_chunk);
    Ok(
        Reply::streamed(StatusCode::OK, "text/event-stream", Box::pin(chunks))
            .header(CACHE_CONTROL, HeaderValue::from_static("no-store"))
            .header(
                http::header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
    )
}

struct StreamState {
    guard: Subscription,
    rx: flume::Receiver<StreamEvent>,
    backlog: VecDeque<StreamEvent>,
    last_sent: u64,
    hello: bool,
    heartbeat: Duration,
    /// The session of the access token that opened the stream, and when that token expires.
    session: u64,
    expires_at_s: u64,
}

impl StreamState {
    /// Whether the token that opened the stream still holds: after its session is revoked
    /// (a logout, a password reset, a suspension) or once it expires, the stream ends before
    /// another event goes out. The client reconnects with a fresh token and resumes.
    fn authorized(&self) -> bool {
        now_ms() / 1000 < self.expires_at_s && !self.guard.shard.is_revoked(self.session)
    }

    /// How long to wait for an event: until the next heartbeat or the token's expiry.
    fn wait(&self) -> Duration {
        let left_ms = (self.expires_at_s * 1000).saturating_sub(now_ms());
        self.heartbeat.min(Duration::from_millis(left_ms))
    }
}

enum Wake {
    Event(Result<StreamEvent, flume::RecvError>),
    Beat,
    Drain,
}

/// The next piece of the body: the greeting, then missed events, then live events and
/// heartbeats; `None` ends the stream (cut off as a slow reader, the token no longer holds,
/// or the server drains).
async fn next_chunk(mut s: StreamState) -> Option<(Result<Bytes, std::io::Error>, StreamState)> {
    if !s.authorized() {
        return None;
    }
    if s.hello {
        s.hello = false;
        let hello = format!("retry: {RETRY_MS}\n: connected\n\n");
        return Some((Ok(Bytes::from(hello)), s));
    }
    let mut out = Vec::new();
    let mut taken = 0;
    while taken < CHUNK_EVENTS_MAX {
        let Some(event) = s.backlog.pop_front() else {
            break;
        };
        if event.id > s.last_sent {
            s.last_sent = event.id;
            event.frame_into(&mut out);
            taken += 1;
        }
    }
    if taken > 0 {
        return Some((Ok(Bytes::from(out)), s));
    }
    loop {
        if s.guard.shard.draining.fired() {
            return None;
        }
        let wake = {
            let event = async { Wake::Event(s.rx.recv_async().await) };
            let beat = async {
                glommio::timer::sleep(s.wait()).await;
                Wake::Beat
            };
            let drain = async {
                s.guard.shard.draining.wait().await;
                Wake::Drain
            };
            futures_lite::future::or(event, futures_lite::future::or(beat, drain)).await
        };
        if !s.authorized() {
            return None;
        }
        match wake {
            Wake::Event(Ok(event)) => {
                if event.id > s.last_sent {
                    s.last_sent = event.id;
                    event.frame_into(&mut out);
                    // What else is already queued goes in the same write.
                    for _ in 1..CHUNK_EVENTS_MAX {
                        let Ok(more) = s.rx.try_recv() else {
                            break;
                        };
                        if more.id > s.last_sent {
                            s.last_sent = more.id;
                            more.frame_into(&mut out);
                        }
                    }
                    return Some((Ok(Bytes::from(out)), s));
                }
            }
            // The sink was removed: a slow reader, cut off.
            Wake::Event(Err(_)) => return None,
            Wake::Beat => return Some((Ok(Bytes::from_static(b": ping\n\n")), s)),
            Wake::Drain => return None,
        }
    }
}

/// A listener of fresh notifications (see `notify::Fresh`): each one becomes a
/// `notification` event on its recipient's stream, with the actor's names. Names this shard
/// has at hand (`briefs::cached`, told of every change) are used at once, so a busy actor's
/// notifications go out with no lookup on its shard, right before or after the `message`
/// event they come with (one write to the connection for both).
pub(crate) fn on_fresh_notifications(
    shard: &Rc<Shard>,
    fresh: &[nova_core::notifications::Notification],
) {
    let listening: Vec<nova_core::notifications::Notification> = {
        let users = shard.streams.users.borrow();
        fresh
            .iter()
            .filter(|n| users.contains_key(&n.recipient))
            .cloned()
            .collect()
    };
    if listening.is_empty() {
        return;
    }
    let mut names: HashMap<u64, ActorName> = HashMap::new();
    let mut missing: Vec<u64> = Vec::new();
    for actor in listening.iter().filter_map(|n| n.actor) {
        match crate::briefs::cached(actor) {
            Some(brief) => {
                names.insert(actor, brief.into());
            }
            None => missing.push(actor),
        }
    }
    if missing.is_empty() {
        publish_notifications(shard, &listening, &names);
        return;
    }
    missing.sort_unstable();
    missing.dedup();
    let shard = Rc::clone(shard);
    glommio::spawn_local(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        if let Ok(found) = crate::briefs::briefs(&shard, &missing, deadline).await {
            for b in found {
                names.insert(b.id, b.into());
            }
        }
        publish_notifications(&shard, &listening, &names);
    })
    .detach();
}

fn publish_notifications(
    shard: &Rc<Shard>,
    list: &[nova_core::notifications::Notification],
    names: &HashMap<u64, ActorName>,
) {
    for n in list {
        let view = crate::api_notify::view(n, names);
        let data = String::from_utf8_lossy(&nova_protocol::to_json(&view)).into_owned();
        use nova_core::notifications::Subject;
        let items = match n.subject {
            Subject::None => [0, 0],
            Subject::Post(id) | Subject::Media(id) => [id, 0],
            Subject::Comment { id, post } => [id, post],
            Subject::Message { id, conversation } => [id, conversation],
        };
        let about = About {
            actor: n.actor.unwrap_or(0),
            items,
        };
        shard.publish(n.recipient, "notification", data, about);
    }
}
