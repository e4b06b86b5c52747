//! The social operations a shard runs on data it owns (posts, follows, blocks, feeds), and
//! the outbox relay that carries their events to other shards.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nova_core::content::{self, Mention, Post, Visibility};
use nova_core::events::{self, Event};
use nova_core::identity;
use nova_core::profiles;
use nova_core::social;
use nova_core::{id_ms, shard_of, CoreError};

use crate::error::Fail;
use crate::feeds::{Head, SharedPost, HEAD_LEN};
use crate::mesh::{
    Gate, NewPost, Offer, Op, Page, PostStats, PreferencesUpdate, Profile, ProfileEdit,
    SettingsUpdate, UserBrief, ViewerSide,
};
use crate::replay::Record;
use crate::shard::{now_ms, until, Shard};

/// Rows of a home feed looked at for one page, at most (filtered items are skipped).
const HOME_SCAN_MAX: usize = 2000;
/// Followers looked at to find the shards a post goes to.
const FANOUT_FOLLOWERS_MAX: usize = 10_000_000;
/// Posts counted for a profile, at most.
const POSTS_COUNTED_MAX: usize = 1_000_000;
/// Outbox rows sent per delivery.
const DELIVER_BATCH_MAX: usize = 256;
/// Events younger than this are left to the request that made them.
const RELAY_AGE_MIN_MS: u64 = 2000;
const RELAY_PERIOD: Duration = Duration::from_millis(250);
/// How long the deletion of acknowledged outbox rows may wait for a commit to ride along
/// with (a commit of its own otherwise).
const ACK_DEFER: Duration = Duration::from_millis(50);
/// Acknowledgements waiting for their commit, at most; past it the relay waits for one.
const ACKING_MAX: usize = 16_384;
/// How long the commit of offered posts may wait for a commit to ride along with.
const OFFER_APPLY_DEFER: Duration = Duration::from_millis(25);
/// Composes waiting for their write on one shard, at most: past it a compose is refused
/// (503) rather than queued.
const COMPOSE_QUEUE_MAX: usize = 4096;
/// Composes one write takes, at most.
const COMPOSE_BATCH_MAX: usize = 256;
/// Posts of a newly followed author put into the follower's feed.
const BACKFILL_POSTS: usize = 20;
/// Relay passes between two looks for backfills left undone (20 x 250 ms: 5 s).
const BACKFILL_RETRY_EVERY: u32 = 20;
/// A follow's backfill is retried once its follow is this old (the request does it first).
const BACKFILL_RETRY_AGE_MS: u64 = 10_000;
/// Backfills retried per look, at most.
const BACKFILL_RETRIES_MAX: usize = 32;
/// Time allowed to one retried backfill.
const BACKFILL_RETRY_TIMEOUT: Duration = Duration::from_secs(2);
/// Views are written to `post_views` every this many relay passes.
const VIEW_FLUSH_EVERY: u32 = 4;
/// A viewer's repeated views of a post within this window count once.
const VIEW_DEDUPE_MS: u64 = 60 * 60 * 1000;
/// (post, viewer) pairs remembered for deduplication, at most.
const VIEW_SEEN_MAX: usize = 200_000;
/// How often the head warmer looks for users without a head (`Shard::warm_heads`).
const WARM_PERIOD: Duration = Duration::from_millis(100);
/// Users it looks at per look, and heads it builds per look at most (yielding after each):
/// 80 heads a second at about 0.4 ms each, under 4% of a core while it has work.
const WARM_SCAN: usize = 256;
const WARM_BUILDS: usize = 8;
/// Namespace of DeathStarBench's user ids in `external_ids`.
pub const DSB_NAMESPACE: &str = "dsb";

/// Delivered events whose outbox rows are still to be deleted (batched by the relay), and the
/// view counts waiting to be written.
#[derive(Default)]
pub struct Relay {
    acks: RefCell<Vec<(usize, u64)>>,
    /// (target, event id) delivered and acknowledged, whose outbox rows' deletion has not
    /// committed yet (it rides along with a later commit: `acknowledge`). The relay does not
    /// send these again meanwhile. At most `ACKING_MAX`.
    acking: RefCell<HashSet<(usize, u64)>>,
    early: RefCell<Early>,
    offered: RefCell<Offered>,
    composing: Arc<std::sync::Mutex<Composing>>,
    /// Wakes the relay before its period (events that go only through the relay, in order).
    wake: Wake,
    views: RefCell<Views>,
    passes: std::cell::Cell<u32>,
    /// Events sent again by the relay (their acknowledgement did not come in time).
    redelivered: std::cell::Cell<u64>,
}

impl Relay {
    pub fn redelivered(&self) -> u64 {
        self.redelivered.get()
    }
}

/// Post views counted in memory and flushed in batches: a viewer's views of one post within
/// `VIEW_DEDUPE_MS` count once. Views not yet flushed are lost in a crash (at most one
/// second's worth); nothing acknowledged a view to anyone.
#[derive(Default)]
struct Views {
    pending: std::collections::HashMap<u64, u64>,
    seen: std::collections::HashMap<(u64, u64), u64>,
}

/// Posts offered to this shard (`mesh::Offer`) whose fan-out has not committed yet: home
/// feeds show them meanwhile. Lost in a crash, which is fine: the author's outbox delivers
/// them again.
#[derive(Default)]
struct Early {
    posts: HashMap<u64, (Post, Vec<(u64, social::Reason)>)>,
    /// Reader -> ids of its early posts, ascending.
    readers: HashMap<u64, Vec<u64>>,
}

impl Early {
    fn add(&mut self, post: Post, readers: Vec<(u64, social::Reason)>) {
        for (reader, _) in &readers {
            let ids = self.readers.entry(*reader).or_default();
            if let Err(at) = ids.binary_search(&post.id) {
                ids.insert(at, post.id);
            }
        }
        self.posts.insert(post.id, (post, readers));
    }

    fn remove(&mut self, post_id: u64) {
        let Some((_, readers)) = self.posts.remove(&post_id) else {
            return;
        };
        for (reader, _) in readers {
            if let Some(ids) = self.readers.get_mut(&reader) {
                ids.retain(|id| *id != post_id);
                if ids.is_empty() {
                    self.readers.remove(&reader);
                }
            }
        }
    }

    /// Drops `author`'s early posts (it turned private: whom they may reach is decided again
    /// when their fan-out commits, `social::mentioned_as_now`).
    fn forget_author(&mut self, author: u64) {
        let ids: Vec<u64> = self
            .posts
            .iter()
            .filter(|(_, (post, _))| post.author_id == author)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.remove(id);
        }
    }

    fn edit(&mut self, post: &Post) {
        if let Some((early, _)) = self.posts.get_mut(&post.id) {
            *early = post.clone();
        }
    }

    fn post(&self, post_id: u64) -> Option<&Post> {
        self.posts.get(&post_id).map(|(post, _)| post)
    }

    /// `reader`'s early posts, ascending ids.
    fn of(&self, reader: u64) -> Vec<(&Post, social::Reason)> {
        let Some(ids) = self.readers.get(&reader) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                let (post, readers) = self.posts.get(id)?;
                let reason = readers.iter().find(|(r, _)| *r == reader)?.1;
                Some((post, reason))
            })
            .collect()
    }
}

/// Offered events (from, event id, event) not yet handed to the writer, in arrival order, and
/// whether a task to hand them over is spawned (`Shard::apply_offered`).
#[derive(Default)]
struct Offered {
    queue: Vec<(usize, u64, Event)>,
    scheduled: bool,
    /// The heads' epoch (`Feeds::epoch`) when the first of them was shown.
    shown_at: Option<u64>,
}

/// Composes waiting for their write (`Shard::write_composes`). The write takes every compose
/// queued when the writer runs it, not when it was queued: composes that arrive while the
/// writer is busy share one write (each table opened once) instead of one each. Shared with
/// the partition's writer thread.
#[derive(Default)]
struct Composing {
    queue: Vec<Compose>,
    /// A write that will take the queue is on its way to the writer.
    pending: bool,
}

/// One compose's post, idempotency key, event id and the shards its event goes to, and
/// where to answer: `Some(id)` when an earlier create with the same key is the answer.
struct Compose {
    post: Post,
    key: Option<String>,
    event_id: u64,
    targets: Vec<usize>,
    reply: ComposeReply,
}

type ComposeReply = flume::Sender<Result<Option<u64>, Fail>>;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds sound data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A latch the relay sleeps on besides its timer.
#[derive(Default)]
struct Wake {
    set: std::cell::Cell<bool>,
    waiter: RefCell<Option<std::task::Waker>>,
}

impl Relay {
    /// Runs the relay now rather than at its next period.
    pub fn kick(&self) {
        self.wake.set.set(true);
        if let Some(w) = self.wake.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    async fn kicked(&self) {
        std::future::poll_fn(|cx| {
            if self.wake.set.replace(false) {
                std::task::Poll::Ready(())
            } else {
                *self.wake.waiter.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

impl Views {
    fn record(&mut self, post: u64, viewer: u64, now: u64) {
        if let Some(at) = self.seen.get(&(post, viewer)) {
            if now.saturating_sub(*at) < VIEW_DEDUPE_MS {
                return;
            }
        }
        if self.seen.len() >= VIEW_SEEN_MAX {
            self.seen
                .retain(|_, at| now.saturating_sub(*at) < VIEW_DEDUPE_MS);
            if self.seen.len() >= VIEW_SEEN_MAX {
                // Bounded memory wins over perfect deduplication under a flood.
                self.seen.clear();
            }
        }
        self.seen.insert((post, viewer), now);
        *self.pending.entry(post).or_default() += 1;
    }
}

impl Shard {
    pub(crate) async fn serve_social(self: &Rc<Self>, op: Op, deadline: Instant) {
        match op {
            Op::LookupUsername { key, reply } => {
                let found = self.read(|r| {
                    identity::user_by_username(r, &key)?
                        .map(|u| brief(r, &u))
                        .transpose()
                });
                let _ = reply.send(found);
            }
            Op::Briefs { ids, reply } => {
                let briefs = self.read(|r| {
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        if let Some(u) = identity::user(r, id)? {
                            out.push(brief(r, &u)?);
                        }
                    }
                    Ok(out)
                });
                let _ = reply.send(briefs);
            }
            Op::ForgetBrief { user, reply } => {
                crate::briefs::forget(user);
                let _ = reply.send(Ok(()));
            }
            Op::ForgetMedia { ids, reply } => {
                crate::media_views::forget(&ids);
                let _ = reply.send(Ok(()));
            }
            Op::BlockedAmong {
                user,
                others,
                reply,
            } => {
                let _ = reply.send(self.read(|r| blocked_among(r, user, others)));
            }
            Op::ExternalId { ext, reply } => {
                let _ = reply.send(self.read(|r| identity::external_id(r, DSB_NAMESPACE, ext)));
            }
            Op::MapExternalId {
                ext,
                user_id,
                reply,
            } => {
                let result = self
                    .partition
                    .write(move |t| identity::map_external_id(t, DSB_NAMESPACE, ext, user_id))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::ReleaseExternalId { ext, reply } => {
                let result = self
                    .partition
                    .write(move |t| identity::release_external_id(t, DSB_NAMESPACE, ext))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::Profile {
                user_id,
                viewer,
                reply,
            } => {
                let _ = reply.send(self.profile(user_id, viewer));
            }
            Op::Relationship {
                viewer,
                other,
                reply,
            } => {
                let _ = reply.send(self.read(|r| {
                    Ok(ViewerSide {
                        following: social::follows(r, viewer, other)?,
                        muting: social::mutes(r, viewer, other)?,
                    })
                }));
            }
            Op::Visible {
                user_id,
                viewer,
                reply,
            } => {
                let visible = self.read(|r| {
                    Ok(identity::user(r, user_id)?.is_some()
                        && !self.hidden_from(user_id, viewer)
                        && !social::blocked_either_way(r, user_id, viewer)?)
                });
                let _ = reply.send(visible);
            }
            Op::Compose { new, from, reply } => {
                let _ = reply.send(self.compose(new, from, deadline).await);
            }
            Op::GetPost {
                post_id,
                viewer,
                reply,
            } => {
                let post = self.visible_post(post_id, viewer);
                if let Ok(Some(p)) = &post {
                    if p.author_id != viewer {
                        self.relay
                            .views
                            .borrow_mut()
                            .record(post_id, viewer, now_ms());
                    }
                }
                let _ = reply.send(post);
            }
            Op::DeletePost {
                post_id,
                author,
                reply,
            } => {
                let _ = reply.send(self.delete_post(post_id, author, deadline).await);
            }
            Op::Follow {
                follower,
                followee,
                reply,
            } => {
                let _ = reply.send(self.follow(follower, followee, deadline).await);
            }
            Op::Unfollow {
                follower,
                followee,
                reply,
            } => {
                let event = Event::Unfollowed { follower, followee };
                let result = self.change(follower, followee, event, deadline).await;
                let _ = reply.send(result);
            }
            Op::Block {
                blocker,
                blocked,
                reply,
            } => {
                let event = Event::Blocked { blocker, blocked };
                let result = self
                    .change(blocker, blocked, event, deadline)
                    .await
                    .map(|_| ());
                let _ = reply.send(result);
            }
            Op::Unblock {
                blocker,
                blocked,
                reply,
            } => {
                let event = Event::Unblocked { blocker, blocked };
                let result = self
                    .change(blocker, blocked, event, deadline)
                    .await
                    .map(|_| ());
                let _ = reply.send(result);
            }
            Op::Relations {
                user_id,
                followers,
                after,
                limit,
                reply,
            } => {
                let _ =
                    reply.send(self.read(|r| social::page(r, user_id, followers, after, limit)));
            }
            Op::UserPosts {
                author,
                viewer,
                page,
                skip,
                reply,
            } => {
                let _ = reply.send(self.user_posts(author, viewer, page, skip));
            }
            Op::Home {
                reader,
                page,
                skip,
                reply,
            } => {
                // Posts whose composes were answered before this read show in it.
                self.take_offers();
                let _ = reply.send(self.home_page(reader, page, skip));
            }
            Op::Like {
                id,
                user,
                comment,
                on,
                reply,
            } => {
                let _ = reply.send(self.like(id, user, comment, on, deadline).await);
            }
            Op::AddComment {
                post_id,
                author,
                text,
                parent,
                reply,
            } => {
                let _ = reply.send(
                    self.add_comment(post_id, author, text, parent, deadline)
                        .await,
                );
            }
            Op::Comments {
                post_id,
                viewer,
                after,
                limit,
                reply,
            } => {
                let result = self.read(|r| {
                    let Some(post) = content::post(r, post_id)? else {
                        return Err(CoreError::NotFound);
                    };
                    if !self.may_see(r, &post, viewer)? {
                        return Err(CoreError::NotFound);
                    }
                    content::comments_of(r, post_id, after, limit)?
                        .into_iter()
                        .filter(|c| !self.hidden_from(c.author_id, viewer))
                        .map(|c| comment_info(r, c, viewer))
                        .collect()
                });
                let _ = reply.send(result);
            }
            Op::EditComment {
                id,
                author,
                text,
                reply,
            } => {
                let _ = reply.send(self.edit_comment(id, author, text).await);
            }
            Op::DeleteComment { id, user, reply } => {
                let result = self
                    .write_recorded(Record::DeleteComment { id, user }.encode(), move |t| {
                        content::delete_comment(t, id, user)
                    })
                    .await;
                if result.is_ok() {
                    self.unstream_item(id);
                }
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::PostCounts { ids, viewer, reply } => {
                let views = self.relay.views.borrow();
                let result = self.read(|r| {
                    ids.iter()
                        .map(|id| {
                            let (likes, comments) = content::counts(r, *id)?;
                            let buffered = views.pending.get(id).copied().unwrap_or(0);
                            Ok(PostStats {
                                id: *id,
                                likes,
                                comments,
                                views: content::views(r, *id)? + buffered,
                                liked: content::liked(r, *id, viewer, false)?,
                            })
                        })
                        .collect()
                });
                drop(views);
                let _ = reply.send(result);
            }
            Op::UpdateProfile {
                user_id,
                edit,
                reply,
            } => {
                let (event_id, now) = (self.next_id(), now_ms());
                let brief_changes = edit.display_name.is_some() || edit.avatar.is_some();
                let record = Record::ProfileEdit {
                    user_id,
                    edit: &edit,
                    event_id,
                    now,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| {
                        update_profile_in(t, user_id, edit, event_id, now)
                    })
                    .await;
                let result = match result {
                    Ok(user) => {
                        if let Some(user) = user {
                            self.users.borrow_mut().insert(user.id, Rc::new(user));
                        }
                        if brief_changes {
                            crate::briefs::forget_everywhere(self, user_id, deadline).await;
                        }
                        Ok(())
                    }
                    Err(e) => Err(Fail::from(e)),
                };
                let _ = reply.send(result);
            }
            Op::Preferences {
                user_id,
                update,
                reply,
            } => {
                let result = match update {
                    None => self.read(|r| {
                        Ok((
                            profiles::preferences(r, user_id)?,
                            profiles::feed_preferences(r, user_id)?,
                        ))
                    }),
                    Some(u) => self
                        .write_recorded(
                            Record::Preferences {
                                user_id,
                                update: &u,
                            }
                            .encode(),
                            move |t| preferences_in(t, user_id, u),
                        )
                        .await
                        .map_err(Fail::from)
                        .inspect(|_| self.feeds.forget(user_id)),
                };
                let _ = reply.send(result);
            }
            Op::Mute {
                muter,
                muted,
                on,
                reply,
            } => {
                let now = now_ms();
                let record = Record::Mute {
                    muter,
                    muted,
                    on,
                    now,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| social::set_mute(t, muter, muted, on, now))
                    .await;
                self.feeds.forget(muter);
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::SetExternalOf {
                user_id,
                ext,
                reply,
            } => {
                let result = self
                    .partition
                    .write(move |t| identity::set_external_of(t, DSB_NAMESPACE, user_id, ext))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::Settings {
                user_id,
                update,
                reply,
            } => {
                let result = match update {
                    None => self.read(|r| {
                        Ok((
                            profiles::settings(r, user_id)?,
                            profiles::digest(r, user_id)?,
                        ))
                    }),
                    Some(update) => self.update_settings(user_id, update, deadline).await,
                };
                let _ = reply.send(result);
            }
            Op::FollowGate {
                followee,
                follower,
                reply,
            } => {
                let _ = reply.send(self.follow_gate(followee, follower).await);
            }
            Op::CancelFollowRequest {
                followee,
                requester,
                reply,
            } => {
                let result = match self.drop_request(followee, requester).await {
                    Ok(_) => self.read(|r| social::is_follower(r, followee, requester)),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Op::OwnList {
                list,
                user_id,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read(|r| social::own_page(r, list, user_id, after, limit)));
            }
            Op::AnswerFollowRequest {
                followee,
                requester,
                approve,
                reply,
            } => {
                // A suspended requester's request is left out of the list: it is not found
                // here either (it waits, to be answered once the suspension is lifted).
                let result = match self.hidden_from(requester, followee) {
                    true => Err(CoreError::NotFound.into()),
                    false => {
                        self.answer_request(followee, requester, approve, deadline)
                            .await
                    }
                };
                let _ = reply.send(result);
            }
            Op::RecentPosts {
                author,
                viewer,
                limit,
                reply,
            } => {
                let page = Page {
                    limit,
                    max_id: None,
                    min_id: None,
                };
                let _ = reply.send(
                    self.user_posts(author, viewer, page, 0)
                        .map(|(p, _)| owned(p)),
                );
            }
            Op::Backfill {
                reader,
                author,
                posts,
                reply,
            } => {
                let result = self.write_backfill(reader, author, posts).await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::EditPost {
                post_id,
                author,
                text,
                reply,
            } => {
                let _ = reply.send(self.edit_post(post_id, author, text, deadline).await);
            }
            Op::Deliver { events, reply } => {
                let _ = reply.send(self.apply_delivered(events, None, None).await);
            }
            Op::Acked { from, ids, reply } => {
                self.relay
                    .acks
                    .borrow_mut()
                    .extend(ids.into_iter().map(|id| (from, id)));
                let _ = reply.send(Ok(()));
            }
            other => self.serve_messaging(other, deadline).await,
        }
    }

    /// Applies delivered events here, once each, and publishes what they bring to streams.
    /// Applies delivered events in one write (`defer`: through `Partition::write_deferred`).
    async fn apply_delivered(
        self: &Rc<Self>,
        events: Vec<(u64, Event)>,
        defer: Option<Duration>,
        shown_at: Option<u64>,
    ) -> Result<(), Fail> {
        {
            let mut early = self.relay.early.borrow_mut();
            for (_, event) in &events {
                // A cached post must not outlive its delete or edit, not even until the
                // commit (`feeds_applied` drops it again after).
                match event {
                    Event::PostDeleted { post_id, .. } => {
                        early.remove(*post_id);
                        self.feeds.post_gone(*post_id);
                    }
                    Event::PostEdited { post } => {
                        early.edit(post);
                        self.feeds.drop_post(post.id);
                    }
                    _ => {}
                }
            }
        }
        let id = self.id;
        let shards = self.shards;
        let now = now_ms();
        let fresh = self
            .write_notifying_logged(
                move |t| {
                    let record = Record::Apply {
                        here: id,
                        shards,
                        events: &events,
                        now,
                    }
                    .encode();
                    let fresh = events::apply_all(t, events, now, |user| {
                        shard_of(user) == id && id < shards
                    })?;
                    Ok((fresh, record))
                },
                defer,
            )
            .await?;
        // Offered posts went into the heads when they were shown; unless a head was dropped
        // since (a relation changed, which can change who reads a post), they are there.
        let shown = shown_at.is_some_and(|epoch| epoch == self.feeds.epoch());
        self.feeds_applied(&fresh, shown);
        self.publish_applied(&fresh);
        Ok(())
    }

    /// Keeps the feed heads and cached posts true to events applied here (after their
    /// commit). With `shown`, new posts are in the heads already.
    pub(crate) fn feeds_applied(&self, applied: &[(u64, Event)], shown: bool) {
        for (_, event) in applied {
            match event {
                Event::Followed { follower, followee }
                | Event::Unfollowed { follower, followee }
                | Event::FollowApproved { follower, followee } => {
                    self.feeds.forget(*follower);
                    self.feeds.forget(*followee);
                }
                Event::Blocked { blocker, blocked } => {
                    self.feeds.forget(*blocker);
                    self.feeds.forget(*blocked);
                    self.unstream_between(*blocker, *blocked);
                }
                Event::Unblocked { blocker, blocked } => {
                    self.feeds.forget(*blocker);
                    self.feeds.forget(*blocked);
                }
                Event::PostCreated { post } if !shown => self.feeds_add(post),
                Event::PostDeleted { post_id, .. } => {
                    self.feeds.post_gone(*post_id);
                    self.unstream_item(*post_id);
                }
                Event::MessageDeleted { message, .. } => self.unstream_item(*message),
                Event::NotificationsRetracted { subject } => self.unstream_item(*subject),
                Event::PostEdited { post } => self.post_edited(post),
                // Erasures remove posts, copies and relations of anyone, an account turning
                // private its posts from strangers' feeds: start again.
                Event::AccountErased { user_id, .. } => {
                    self.feeds.forget_all();
                    self.unstream_user(*user_id);
                }
                Event::ErasureWork { .. } => self.feeds.forget_all(),
                Event::WentPrivate { user_id } => {
                    // Offers shown meanwhile (read before the mirror row committed) go too.
                    self.relay.early.borrow_mut().forget_author(*user_id);
                    self.feeds.forget_all();
                    self.unstream_private(*user_id);
                }
                Event::ConversationLeft { conversation, user } => {
                    self.unstream_left(*user, *conversation)
                }
                Event::SuspensionChanged {
                    user_id,
                    suspended: true,
                } => self.unstream_user(*user_id),
                _ => {}
            }
        }
    }

    /// Adds a post stored here to the heads of the readers whose feeds it reaches here (the
    /// same readers `social::fan_out` wrote it for).
    fn feeds_add(&self, post: &Post) {
        let author_here = shard_of(post.author_id) == self.id;
        match self.read(|r| social::feed_readers(r, post, author_here)) {
            Ok(readers) => self.feeds.add(readers, post.id),
            Err(e) => {
                // The heads may now miss the post: merge them again instead.
                tracing::warn!(error = %e, "feed heads: readers of a post");
                self.feeds.forget_all();
            }
        }
    }

    /// A page of `reader`'s home feed, on the reader's shard: from its head in memory when
    /// the head holds the page, else merged from redb.
    fn home_page(
        &self,
        reader: u64,
        page: Page,
        skip: usize,
    ) -> Result<(Vec<Arc<SharedPost>>, Option<u64>), Fail> {
        if page.min_id.is_none() {
            let head = match self.feeds.head(reader) {
                Some(head) => head,
                None => self.fill_head(reader)?,
            };
            if let Some(posts) = self.page_of_head(reader, &head, page.max_id, skip, page.limit)? {
                return Ok((posts, None));
            }
        }
        let early = self.relay.early.borrow();
        let (posts, more) = self.read(|r| {
            let prefs = profiles::feed_preferences(r, reader)?;
            social::home(
                r,
                reader,
                page.max_id,
                page.min_id,
                (skip, page.limit),
                HOME_SCAN_MAX,
                &prefs,
                &early.of(reader),
                &|author| self.hidden_from(author, reader),
            )
        })?;
        Ok((posts.into_iter().map(SharedPost::new).collect(), more))
    }

    /// Builds heads ahead of any read for this shard's users that have none, until the
    /// shard holds `warm_heads` heads: a few every `WARM_PERIOD`, yielding after each, in
    /// user id order, round and round. A first read then finds its head already there:
    /// after a restart, and after the follows that drop heads (a head costs about 0.4 ms of
    /// the shard's CPU to merge; in the DeathStarBench mix right after its graph load and
    /// composes, 962 readers' first reads at once held the requests of its first second
    /// behind them, p99 40-90 ms). Runs until the shard drains.
    pub async fn warm_heads(self: Rc<Self>) {
        let max = self.cfg.warm_heads;
        if max == 0 {
            return;
        }
        let mut from = 0;
        loop {
            glommio::timer::sleep(WARM_PERIOD).await;
            if self.draining.fired() {
                return;
            }
            if self.feeds.heads_len() >= max {
                continue;
            }
            let users = match self.read(|r| identity::user_ids_from(r, from, WARM_SCAN)) {
                Ok(users) => users,
                Err(e) => {
                    tracing::warn!(error = %e, "warming heads: listing users failed");
                    continue;
                }
            };
            from = match users.last() {
                Some(last) if users.len() == WARM_SCAN => last.saturating_add(1),
                _ => 0,
            };
            let mut built = 0;
            for user in users {
                if built == WARM_BUILDS || self.feeds.heads_len() >= max {
                    break;
                }
                if shard_of(user) != self.id || self.feeds.has_head(user) {
                    continue;
                }
                if let Err(e) = self.fill_head(user) {
                    tracing::warn!(error = %e, user, "warming a head failed");
                    break;
                }
                built += 1;
                futures_lite::future::yield_now().await;
            }
        }
    }

    /// Merges `reader`'s head from redb (and the early posts) and keeps it.
    fn fill_head(&self, reader: u64) -> Result<Rc<RefCell<Head>>, Fail> {
        let early = self.relay.early.borrow();
        let (ids, more, prefs) = self.read(|r| {
            let prefs = profiles::feed_preferences(r, reader)?;
            // Preferences and suspensions are applied when a page is served.
            let (ids, more) =
                social::home_ids(r, reader, HEAD_LEN, HOME_SCAN_MAX, &early.of(reader))?;
            Ok((ids, more, prefs))
        })?;
        drop(early);
        let whole = ids.len() < HEAD_LEN && more.is_none();
        let head = Head::new(ids.into_iter(), whole, prefs);
        Ok(self.feeds.keep_head(reader, head))
    }

    /// A page (newest first, older than `max_id`, after `skip` posts) of `reader`'s head, or
    /// `None` when the head ends before the page does and older posts exist.
    fn page_of_head(
        &self,
        reader: u64,
        head: &RefCell<Head>,
        max_id: Option<u64>,
        skip: usize,
        limit: usize,
    ) -> Result<Option<Vec<Arc<SharedPost>>>, Fail> {
        let head = head.borrow();
        let mut read = None;
        let mut out = Vec::with_capacity(limit);
        let mut gone = Vec::new();
        let mut skip = skip;
        let mut full = limit == 0;
        // When only a deletion can hide a post (the reader hides nothing, nobody is
        // suspended), the posts skipped are not looked up: a page deep in the feed (the
        // benchmark's start is up to 100) would otherwise fetch every post before it.
        let plain = head.prefs.hides_nothing() && !self.anyone_suspended();
        for id in head.before(max_id) {
            if full {
                break;
            }
            if plain && skip > 0 {
                match self.feeds.is_gone(id) {
                    true => gone.push(id),
                    false => skip -= 1,
                }
                continue;
            }
            let Some(post) = self.feed_post(id, &mut read)? else {
                gone.push(id);
                continue;
            };
            let author = post.author_id;
            if author != reader
                && (self.hidden_from(author, reader)
                    || head.prefs.hides(&post.text, post.reply_to.is_some())
                    || !post.addressed_to(reader))
            {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            out.push(post);
            full = out.len() >= limit;
        }
        let answered = full || head.whole();
        drop(head);
        for id in gone {
            self.feeds.remove(reader, id);
        }
        Ok(answered.then_some(out))
    }

    /// A post a head names: cached, early, or this shard's copy (`None`: deleted since).
    fn feed_post(
        &self,
        id: u64,
        read: &mut Option<nova_storage::redb::ReadTransaction>,
    ) -> Result<Option<Arc<SharedPost>>, Fail> {
        if let Some(post) = self.feeds.post(id) {
            return Ok(Some(post));
        }
        let early = self.relay.early.borrow().post(id).cloned();
        let found = match early {
            Some(post) => Some(post),
            None => {
                if read.is_none() {
                    *read = Some(self.partition.read()?);
                }
                match read {
                    Some(r) => social::copy(r, self.id, id)?,
                    None => None,
                }
            }
        };
        Ok(found.map(|post| {
            let post = SharedPost::new(post);
            self.feeds.keep_post(Arc::clone(&post));
            post
        }))
    }

    /// Takes every offer waiting in this shard's offer channel (`mesh::Offer`).
    pub(crate) fn take_offers(self: &Rc<Self>) {
        while let Ok(Offer { from, events }) = self.offers.try_recv() {
            self.offer(from, events);
        }
    }

    /// An offer from shard `from` (`mesh::Offer`): the offered posts show in this shard's
    /// home feeds at once; their fan-out is committed right after and acknowledged to
    /// `from`. Until it commits they live in `Relay::early`. If they cannot be shown, they
    /// stay in `from`'s outbox, which delivers them again.
    pub(crate) fn offer(self: &Rc<Self>, from: usize, events: Vec<(u64, Event)>) {
        let (here, shards) = (self.id, self.shards);
        let shown = self.read(|r| {
            let mut shown = Vec::new();
            for (event_id, event) in &events {
                let Event::PostCreated { post } = event else {
                    continue;
                };
                if events::applied(r, *event_id)? {
                    continue;
                }
                let mentioned: Vec<u64> = post
                    .mentions
                    .iter()
                    .map(|m| m.user_id)
                    .filter(|u| shard_of(*u) == here && here < shards)
                    .collect();
                let mentioned = social::mentioned_as_now_read(r, post, mentioned)?;
                let readers = social::fan_out_readers(r, post, false, &mentioned)?;
                shown.push(((**post).clone(), readers));
            }
            Ok(shown)
        });
        let shown = match shown {
            Ok(shown) => shown,
            Err(e) => {
                tracing::warn!(error = %e, "offered posts not shown; the outbox will retry");
                return;
            }
        };
        {
            let mut early = self.relay.early.borrow_mut();
            for (post, readers) in shown {
                self.feeds.add(readers.iter().map(|(r, _)| *r), post.id);
                early.add(post, readers);
            }
        }
        let start = {
            let mut offered = self.relay.offered.borrow_mut();
            offered
                .queue
                .extend(events.into_iter().map(|(id, event)| (from, id, event)));
            offered.shown_at.get_or_insert(self.feeds.epoch());
            !std::mem::replace(&mut offered.scheduled, true)
        };
        if start {
            glommio::spawn_local(Rc::clone(self).apply_offered()).detach();
        }
    }

    /// Applies the events offered since this task was spawned in one write: offers that
    /// arrive together (the mesh hands them over back to back) share it. The write is handed
    /// to the writer at once, so it keeps its place before any later write of this shard (an
    /// edit delivered after its post), and rides along with the shard's next commit: nobody
    /// waits on it (the offers are answered, readers see the posts meanwhile). Once committed
    /// it is acknowledged to the shards the events came from; if it fails, they stay in their
    /// outboxes.
    async fn apply_offered(self: Rc<Self>) {
        let (batch, shown_at) = {
            let mut offered = self.relay.offered.borrow_mut();
            offered.scheduled = false;
            (std::mem::take(&mut offered.queue), offered.shown_at.take())
        };
        let mut acks: Vec<(usize, Vec<u64>)> = Vec::new();
        let mut post_ids = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        for (from, id, event) in batch {
            match acks.iter_mut().find(|(f, _)| *f == from) {
                Some((_, ids)) => ids.push(id),
                None => acks.push((from, vec![id])),
            }
            if let Event::PostCreated { post } = &event {
                post_ids.push(post.id);
            }
            events.push((id, event));
        }
        let applied = self
            .apply_delivered(events, Some(OFFER_APPLY_DEFER), shown_at)
            .await;
        {
            let mut early = self.relay.early.borrow_mut();
            for id in post_ids {
                early.remove(id);
            }
        }
        if let Err(e) = applied {
            tracing::warn!(error = %e, "offered events not applied; the outbox will retry");
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (from, ids) in acks {
            let acked = self
                .ask(from, deadline, |reply| Op::Acked {
                    from: self.id,
                    ids,
                    reply,
                })
                .await;
            if let Err(e) = acked {
                // The outbox delivers them again; applying twice does nothing.
                tracing::debug!(error = %e, "acknowledging offered events failed");
            }
        }
    }

    /// Likes need the liker to see the post (for a comment: the comment's post).
    async fn like(
        self: &Rc<Self>,
        id: u64,
        user: u64,
        of_comment: bool,
        on: bool,
        deadline: Instant,
    ) -> Result<u64, Fail> {
        let mut comment_author = None;
        let visible = self.read(|r| {
            let post_id = if of_comment {
                match content::comment(r, id)? {
                    Some(c) => {
                        comment_author = Some(c.author_id);
                        c.post_id
                    }
                    None => return Ok(false),
                }
            } else {
                id
            };
            match content::post(r, post_id)? {
                Some(post) => self.may_see(r, &post, user),
                None => Ok(false),
            }
        })?;
        if !visible {
            return Err(CoreError::NotFound.into());
        }
        // A comment hidden from the user (a block either way with its author) is not liked.
        if let Some(author) = comment_author.filter(|_| on) {
            self.not_hidden_by_block(user, author, deadline).await?;
        }
        let now = now_ms();
        let record = Record::Like {
            id,
            user,
            of_comment,
            on,
            now,
        }
        .encode();
        let like = move |t: &nova_storage::redb::WriteTransaction| {
            content::set_like(t, id, user, of_comment, on, now)
        };
        Ok(self.write_recorded(record, like).await?)
    }

    async fn add_comment(
        self: &Rc<Self>,
        post_id: u64,
        author: u64,
        text: String,
        parent: Option<u64>,
        deadline: Instant,
    ) -> Result<crate::mesh::CommentInfo, Fail> {
        let visible = self.read(|r| match content::post(r, post_id)? {
            Some(post) => self.may_see(r, &post, author),
            None => Ok(false),
        })?;
        if !visible {
            return Err(CoreError::NotFound.into());
        }
        // A reply to a comment hidden from the author (a block either way): 404.
        if let Some(parent) = parent {
            let parent_author = self
                .read(|r| content::comment(r, parent))?
                .map(|c| c.author_id);
            if let Some(parent_author) = parent_author {
                self.not_hidden_by_block(author, parent_author, deadline)
                    .await?;
            }
        }
        let ids = vec![author];
        let who = self
            .ask(shard_of(author), deadline, |reply| Op::Briefs {
                ids,
                reply,
            })
            .await?;
        let who = who.into_iter().next().ok_or(CoreError::NotFound)?;
        let comment = content::Comment {
            id: self.next_id(),
            post_id,
            author_id: author,
            author_username: who.username,
            author_display_name: who.display_name,
            text,
            parent,
            depth: 0,
            created_ms: now_ms(),
            edited_ms: None,
        };
        let record = Record::Comment { comment: &comment }.encode();
        let stored = self
            .write_recorded(record, move |t| content::add_comment(t, comment))
            .await?;
        self.read(|r| comment_info(r, stored, author))
    }

    /// Changes `user_id`'s settings. Turning private, its posts leave the feeds of strangers
    /// they mentioned on every shard and its media become private; turning public approves
    /// every waiting follow request. Answered once all of it is done.
    async fn update_settings(
        self: &Rc<Self>,
        user_id: u64,
        update: SettingsUpdate,
        deadline: Instant,
    ) -> Result<(profiles::Settings, profiles::Digest), Fail> {
        let (private, now) = (update.private, now_ms());
        let was_private = self.read(|r| profiles::settings(r, user_id))?.private;
        let event_id = self.next_id();
        let here = self.id;
        let targets: Vec<usize> = (0..self.shards).filter(|s| *s != here).collect();
        let record = Record::SettingsEditAt {
            user_id,
            update: &update,
            now,
            event_id,
            targets: &targets,
        }
        .encode();
        let sent = targets.clone();
        if private == Some(true) && !was_private {
            // A compose whose mentions were checked before this write looks again after its
            // own (`create_post`).
            self.feeds.forget_all();
        }
        let settings = self
            .write_recorded(record, move |t| {
                settings_in(t, user_id, &update, now, Some((event_id, &sent)))
            })
            .await?;
        match private {
            Some(false) => {
                if was_private {
                    let event = Event::WentPublic { user_id };
                    self.deliver_now(event_id, event, &targets, deadline).await;
                }
                self.approve_all(user_id, deadline).await?
            }
            Some(true) => {
                if !was_private {
                    self.feeds.forget_all();
                    self.unstream_private(user_id);
                    let event = Event::WentPrivate { user_id };
                    self.deliver_now(event_id, event, &targets, deadline).await;
                }
                // Its posts are for its followers from now on, so are its media (signed for
                // them, as a followers-only post's are).
                let made = crate::media_jobs::make_all_private(self, user_id).await?;
                crate::media_views::forget_everywhere(self, made, deadline).await;
            }
            None => {}
        }
        Ok(settings)
    }

    /// Edits `author`'s comment `id`, while its post is still one the author may see (not
    /// after a block or the post's author turning private: 404, as for a new comment).
    async fn edit_comment(
        self: &Rc<Self>,
        id: u64,
        author: u64,
        text: String,
    ) -> Result<crate::mesh::CommentInfo, Fail> {
        let visible = self.read(|r| {
            let Some(comment) = content::comment(r, id)? else {
                return Ok(false);
            };
            match content::post(r, comment.post_id)? {
                Some(post) => self.may_see(r, &post, author),
                None => Ok(false),
            }
        })?;
        if !visible {
            return Err(CoreError::NotFound.into());
        }
        let now = now_ms();
        let record = Record::EditComment {
            id,
            author,
            text: &text,
            now,
        }
        .encode();
        let edited = self
            .write_recorded(record, move |t| {
                content::edit_comment(t, id, author, text, now)
            })
            .await?;
        self.read(|r| comment_info(r, edited, author))
    }

    fn profile(&self, user_id: u64, viewer: u64) -> Result<Option<Profile>, Fail> {
        self.read(|r| {
            let Some(user) = identity::user(r, user_id)? else {
                return Ok(None);
            };
            if social::blocked_either_way(r, user_id, viewer)? || self.hidden_from(user_id, viewer)
            {
                return Ok(None);
            }
            let (followers, following) = social::counts(r, user_id)?;
            let posts = content::posts_count(r, user_id, POSTS_COUNTED_MAX)?;
            let profile = profiles::profile(r, user_id)?;
            let private = profiles::settings(r, user_id)?.private;
            let avatar = profiles::avatar(r, user_id)?;
            let other = user_id != viewer;
            Ok(Some(Profile {
                user,
                followers,
                following,
                posts,
                profile,
                private,
                avatar,
                follows_viewer: other && social::follows(r, user_id, viewer)?,
                requested_by_viewer: other && social::requested(r, user_id, viewer)?,
            }))
        })
    }

    /// May `viewer` read `post` (on the author's shard)?
    pub(crate) fn may_see(
        &self,
        r: &nova_storage::redb::ReadTransaction,
        post: &Post,
        viewer: u64,
    ) -> Result<bool, CoreError> {
        if post.author_id == viewer {
            return Ok(true);
        }
        if self.hidden_from(post.author_id, viewer) {
            return Ok(false);
        }
        if social::blocked_either_way(r, post.author_id, viewer)? {
            return Ok(false);
        }
        let private = profiles::settings(r, post.author_id)?.private;
        readable(post.visibility, post.addressed_to(viewer), private, || {
            social::is_follower(r, post.author_id, viewer)
        })
    }

    fn visible_post(&self, post_id: u64, viewer: u64) -> Result<Option<Post>, Fail> {
        self.read(|r| {
            let Some(post) = content::post(r, post_id)? else {
                return Ok(None);
            };
            Ok(self.may_see(r, &post, viewer)?.then_some(post))
        })
    }

    /// A page of `author`'s posts that `viewer` may see. Posts the viewer may not see are
    /// skipped and the scan goes on (up to `HOME_SCAN_MAX` posts); when it stops at that cap
    /// before the page is full, the last id scanned is returned as the cursor to go on from.
    fn user_posts(
        &self,
        author: u64,
        viewer: u64,
        page: Page,
        skip: usize,
    ) -> Result<(Vec<Arc<SharedPost>>, Option<u64>), Fail> {
        self.read(|r| {
            if identity::user(r, author)?.is_none()
                || self.hidden_from(author, viewer)
                || social::blocked_either_way(r, author, viewer)?
            {
                return Err(CoreError::NotFound);
            }
            // What `may_see` asks of every post, asked once: one author, one viewer.
            let private = author != viewer && profiles::settings(r, author)?.private;
            let mut follows = None;
            let mut follower = |r: &nova_storage::redb::ReadTransaction| match follows {
                Some(f) => Ok::<bool, CoreError>(f),
                None => {
                    let f = social::is_follower(r, author, viewer)?;
                    follows = Some(f);
                    Ok(f)
                }
            };
            if private && !follower(r)? {
                // A private account shows its posts to its followers only.
                return Ok((Vec::new(), None));
            }
            let mut out = Vec::with_capacity(page.limit);
            let mut max_id = page.max_id;
            let mut scanned = 0;
            let mut skip = skip;
            let batch = page.limit.saturating_add(skip).clamp(1, HOME_SCAN_MAX);
            loop {
                let ids = content::user_post_ids(r, author, max_id, page.min_id, batch)?;
                let exhausted = ids.len() < batch;
                for id in &ids {
                    scanned += 1;
                    max_id = Some(*id);
                    let Some(post) = self.stored_post(r, *id)? else {
                        continue;
                    };
                    let visible = author == viewer
                        || readable(post.visibility, post.addressed_to(viewer), private, || {
                            follower(r)
                        })?;
                    if !visible {
                        continue;
                    }
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    out.push(post);
                    if out.len() == page.limit {
                        return Ok((out, None));
                    }
                }
                // An ascending (min_id) page is one window; only newest-first pages go on.
                if exhausted || page.min_id.is_some() {
                    return Ok((out, None));
                }
                if scanned >= HOME_SCAN_MAX {
                    return Ok((out, max_id));
                }
            }
        })
    }

    /// A post of this shard's `posts` table, from the post cache when it is there.
    fn stored_post(
        &self,
        r: &nova_storage::redb::ReadTransaction,
        id: u64,
    ) -> Result<Option<Arc<SharedPost>>, CoreError> {
        if let Some(post) = self.feeds.post(id) {
            return Ok(Some(post));
        }
        Ok(content::post(r, id)?.map(|post| {
            let post = SharedPost::new(post);
            self.feeds.keep_post(Arc::clone(&post));
            post
        }))
    }

    /// Composes `new` on its author's shard and returns the post, having offered it to every
    /// shard it goes to before returning: this shard offers it to the others, and the
    /// asking shard takes its own offer from the answer.
    pub async fn compose_on(
        self: &Rc<Self>,
        new: NewPost,
        deadline: Instant,
    ) -> Result<Post, Fail> {
        let author_shard = shard_of(new.author);
        let (post, offer) = self
            .ask(author_shard, deadline, |reply| Op::Compose {
                new,
                from: self.id,
                reply,
            })
            .await?;
        if let Some(event_id) = offer {
            // As if offered over the mesh: shown in feeds now, committed and acknowledged
            // to the author's shard with this shard's next write.
            let event = Event::PostCreated {
                post: Box::new(post.clone()),
            };
            self.offer(author_shard, vec![(event_id, event)]);
        }
        Ok(post)
    }

    /// On the author's shard, for a request on shard `from`: store the post, put it in local
    /// feeds, queue it for the shards of followers and mentioned users, deliver it there,
    /// then answer. The event id comes back when `from` is to take the post's offer itself
    /// (`compose_on`) instead.
    async fn compose(
        self: &Rc<Self>,
        new: NewPost,
        from: usize,
        deadline: Instant,
    ) -> Result<(Post, Option<u64>), Fail> {
        let now = now_ms();
        if let Some(key) = &new.idempotency_key {
            if let Some(id) = self.read(|r| content::idempotent_post(r, new.author, key, now))? {
                if let Some(post) = self.read(|r| content::post(r, id))? {
                    return Ok((post, None));
                }
            }
        }
        let author = self
            .read(|r| identity::user(r, new.author))?
            .ok_or(CoreError::NotFound)?;
        if let Some(parent) = new.reply_to {
            let visible = self
                .ask(shard_of(parent), deadline, |reply| Op::GetPost {
                    post_id: parent,
                    viewer: new.author,
                    reply,
                })
                .await?;
            if visible.is_none() {
                return Err(CoreError::NotFound.into());
            }
        }
        let visibility = match new.visibility {
            Some(v) => v,
            None => {
                self.read(|r| profiles::preferences(r, author.id))?
                    .default_visibility
            }
        };
        let extracted = content::extract(&new.text);
        let mentions = self.resolve_mentions(extracted.mentions, deadline).await?;
        // An account turning private meanwhile drops every head first (`update_settings`):
        // then the write may have kept fewer mentions than these (`mentions_as_now`).
        let epoch = self.feeds.epoch();
        let mentions = self.read(|r| readers_mentioned(r, author.id, visibility, mentions))?;
        let mut targets: Vec<usize> = self.read(|r| {
            social::follower_shards(r, author.id, (shard_of, self.shards), FANOUT_FOLLOWERS_MAX)
        })?;
        for m in &mentions {
            let s = shard_of(m.user_id);
            if !targets.contains(&s) {
                targets.push(s);
            }
        }
        targets.retain(|s| *s != self.id && *s < self.shards);
        let post = Post {
            id: self.next_id(),
            author_id: author.id,
            author_username: author.username.clone(),
            author_display_name: author.display_name.clone(),
            text: new.text,
            visibility,
            reply_to: new.reply_to,
            mentions,
            hashtags: extracted.hashtags,
            urls: links(extracted.urls),
            created_ms: now,
            edited_ms: None,
            post_type: new.post_type,
            media: new.media,
            author_external_id: new.author_external_id,
            fanned_to: targets.iter().map(|s| *s as u16).collect(),
        };
        let (reply, answer) = flume::bounded(1);
        let event_id = self.next_id();
        let submit = {
            let mut composing = lock(&self.relay.composing);
            if composing.queue.len() >= COMPOSE_QUEUE_MAX {
                return Err(Fail::Busy);
            }
            composing.queue.push(Compose {
                post: post.clone(),
                key: new.idempotency_key,
                event_id,
                targets: targets.clone(),
                reply,
            });
            !std::mem::replace(&mut composing.pending, true)
        };
        if submit {
            glommio::spawn_local(Rc::clone(self).write_composes()).detach();
        }
        // The write goes on if this caller goes (its deadline passed): it stands regardless.
        let stored = answer.recv_async().await.map_err(|_| Fail::Unavailable)??;
        if let Some(existing) = stored {
            // An earlier create with the same key (or a concurrent one) won.
            return self
                .read(|r| content::post(r, existing))?
                .map(|post| (post, None))
                .ok_or_else(|| CoreError::NotFound.into());
        }
        let post = match self.feeds.epoch() != epoch && !post.mentions.is_empty() {
            true => self.read(|r| content::post(r, post.id))?.unwrap_or(post),
            false => post,
        };
        let event = Event::PostCreated {
            post: Box::new(post.clone()),
        };
        self.feeds.keep_post(SharedPost::new(post.clone()));
        self.feeds_add(&post);
        self.publish_post(&post);
        // The asking shard, if the post goes there, takes the offer from the answer; its
        // outbox row stays until that shard acknowledges it, as for any offer.
        let asker_takes = from != self.id && targets.contains(&from);
        if asker_takes {
            targets.retain(|s| *s != from);
        }
        self.deliver_now(event_id, event, &targets, deadline).await;
        Ok((post, asker_takes.then_some(event_id)))
    }

    /// Hands the writer a write that takes the composes queued when it runs (see
    /// `Composing`), up to `COMPOSE_BATCH_MAX`, and answers each after the commit, in queue
    /// order; again while some are left that no write is on its way for.
    async fn write_composes(self: Rc<Self>) {
        loop {
            self.write_some_composes().await;
            let mut composing = lock(&self.relay.composing);
            if composing.queue.is_empty() || composing.pending {
                return;
            }
            composing.pending = true;
        }
    }

    async fn write_some_composes(self: &Rc<Self>) {
        let queue = Arc::clone(&self.relay.composing);
        // The answers of the composes the write took; `None` while it has not run.
        let taken: Arc<std::sync::Mutex<Option<Vec<ComposeReply>>>> = Arc::default();
        let replies = Arc::clone(&taken);
        let here = self.id;
        let written = self
            .write_notifying_logged(
                move |t| {
                    let batch: Vec<Compose> = {
                        let mut composing = lock(&queue);
                        composing.pending = false;
                        let n = composing.queue.len().min(COMPOSE_BATCH_MAX);
                        composing.queue.drain(..n).collect()
                    };
                    let mut items = Vec::with_capacity(batch.len());
                    let mut senders = Vec::with_capacity(batch.len());
                    for c in batch {
                        items.push((c.post, c.key, c.event_id, c.targets));
                        senders.push(c.reply);
                    }
                    *lock(&replies) = Some(senders);
                    let record = Record::Compose {
                        here,
                        items: &items,
                    };
                    let outcomes = compose_batch(t, here, &items)?;
                    Ok((outcomes, record.encode()))
                },
                None,
            )
            .await;
        let senders = lock(&taken).take();
        match written {
            Ok(outcomes) => {
                for (reply, outcome) in senders.unwrap_or_default().into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                // The whole write was aborted: every compose in it fails alike. If the
                // writer never ran it, the queue it would have taken fails too.
                let reason = e.to_string();
                let failed = || {
                    Fail::from(CoreError::Storage(nova_storage::StorageError::Redb(
                        reason.clone(),
                    )))
                };
                let unanswered = match senders {
                    Some(senders) => senders,
                    // Not run: the queue is still this write's to take (no other write was
                    // handed over since, as `pending` is still set).
                    None => {
                        let mut composing = lock(&self.relay.composing);
                        composing.pending = false;
                        composing.queue.drain(..).map(|c| c.reply).collect()
                    }
                };
                for reply in unanswered {
                    let _ = reply.send(Err(failed()));
                }
            }
        }
    }

    async fn delete_post(
        self: &Rc<Self>,
        post_id: u64,
        author: u64,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let event_id = self.next_id();
        let now = now_ms();
        let shards = self.shards;
        let here = self.id;
        let (targets, event) = self
            .partition
            .write(move |t| {
                content::delete_post(t, author, post_id)?;
                social::unfan(t, post_id)?;
                // Every other shard: besides the fan-out's, backfills may hold copies.
                let targets: Vec<usize> = (0..shards).filter(|s| *s != here).collect();
                let event = Event::PostDeleted { post_id, author };
                events::record(t, event_id, now, &event, &targets)?;
                Ok::<_, CoreError>((targets, event))
            })
            .await?;
        self.feeds.post_gone(post_id);
        self.unstream_item(post_id);
        self.deliver_now(event_id, event, &targets, deadline).await;
        Ok(())
    }

    async fn follow(
        self: &Rc<Self>,
        follower: u64,
        followee: u64,
        deadline: Instant,
    ) -> Result<bool, Fail> {
        if follower == followee {
            return Err(
                CoreError::invalid("cannot_follow_self", "you cannot follow yourself").into(),
            );
        }
        if self.read(|r| social::blocked_either_way(r, follower, followee))? {
            return Err(CoreError::NotFound.into());
        }
        if self.read(|r| social::follows(r, follower, followee))? {
            return Ok(true);
        }
        let gate = self
            .ask(shard_of(followee), deadline, |reply| Op::FollowGate {
                followee,
                follower,
                reply,
            })
            .await?;
        match gate {
            Gate::Missing => return Err(CoreError::NotFound.into()),
            Gate::Requested => return Ok(false),
            Gate::Open => {}
        }
        let event = Event::Followed { follower, followee };
        self.change(follower, followee, event, deadline).await?;
        self.backfill(follower, followee, deadline).await;
        Ok(true)
    }

    /// On the reader's shard: copies of the author's latest posts the reader may see, so that
    /// they show in the reader's home feed. The follow left a pending row in its own
    /// transaction; if this fails (or the process dies first), `retry_backfills` does it
    /// later, so a follow always ends up with its backfill.
    async fn backfill(self: &Rc<Self>, reader: u64, author: u64, deadline: Instant) {
        let posts = if shard_of(author) == self.id {
            // Its posts are here already: the write only clears the pending row.
            Ok(Vec::new())
        } else {
            self.ask(shard_of(author), deadline, |reply| Op::RecentPosts {
                author,
                viewer: reader,
                limit: BACKFILL_POSTS,
                reply,
            })
            .await
        };
        let posts = match posts {
            Ok(posts) => posts,
            // The author is gone: nothing to copy, and nothing to retry.
            Err(Fail::Core(CoreError::NotFound)) => Vec::new(),
            Err(e) => {
                tracing::warn!(error = %e, reader, author, "feed backfill failed; will retry");
                return;
            }
        };
        let written = self.write_backfill(reader, author, posts).await;
        if let Err(e) = written {
            tracing::warn!(error = %e, reader, author, "feed backfill failed; will retry");
        }
    }

    /// On the reader's shard: `social::backfill`, a logged write.
    async fn write_backfill(
        self: &Rc<Self>,
        reader: u64,
        author: u64,
        posts: Vec<Post>,
    ) -> Result<(), CoreError> {
        let record = Record::Backfill {
            reader,
            author,
            posts: &posts,
        }
        .encode();
        let written = self
            .write_recorded(record, move |t| social::backfill(t, reader, author, &posts))
            .await;
        self.feeds.forget(reader);
        written
    }

    /// Backfills whose follow committed more than `BACKFILL_RETRY_AGE_MS` ago without them.
    async fn retry_backfills(self: &Rc<Self>) -> Result<(), Fail> {
        let before = now_ms().saturating_sub(BACKFILL_RETRY_AGE_MS);
        let pending = self.read(|r| social::pending_backfills(r, before, BACKFILL_RETRIES_MAX))?;
        if !pending.is_empty() {
            tracing::info!(count = pending.len(), "retrying feed backfills left undone");
        }
        // The relay waits for this pass: it stops after one retry timeout's worth.
        let pass_end = Instant::now() + BACKFILL_RETRY_TIMEOUT;
        for (reader, author) in pending {
            let now = Instant::now();
            if now >= pass_end {
                break;
            }
            self.backfill(reader, author, now + BACKFILL_RETRY_TIMEOUT)
                .await;
        }
        Ok(())
    }

    /// On the followee's shard: may `follower` follow now, or must it ask? A private account
    /// records the request (idempotent).
    async fn follow_gate(self: &Rc<Self>, followee: u64, follower: u64) -> Result<Gate, Fail> {
        // A suspended account is not found, as everywhere else.
        if self.hidden_from(followee, follower) {
            return Ok(Gate::Missing);
        }
        let open = self.read(|r| {
            if identity::user(r, followee)?.is_none()
                || social::blocked_either_way(r, followee, follower)?
            {
                return Ok(None);
            }
            Ok(Some(
                !profiles::settings(r, followee)?.private
                    || social::is_follower(r, followee, follower)?,
            ))
        })?;
        match open {
            None => Ok(Gate::Missing),
            Some(true) => Ok(Gate::Open),
            Some(false) => {
                let now = now_ms();
                let here = self.id;
                let record = Record::FollowRequest {
                    here,
                    followee,
                    follower,
                    now,
                }
                .encode();
                let requested = self
                    .write_recorded(record, move |t| {
                        request_in(t, here, followee, follower, now)
                    })
                    .await?;
                Ok(if requested {
                    Gate::Requested
                } else {
                    Gate::Missing
                })
            }
        }
    }

    /// On the followee's shard: withdraws or rejects `requester`'s request to follow, a logged
    /// write. False when there was none, found by a read: every unfollow asks this, and most
    /// find nothing to write.
    async fn drop_request(self: &Rc<Self>, followee: u64, requester: u64) -> Result<bool, Fail> {
        if !self.read(|r| social::requested(r, followee, requester))? {
            return Ok(false);
        }
        let record = Record::DropRequest {
            followee,
            requester,
        }
        .encode();
        let dropped = self
            .write_recorded(record, move |t| {
                social::withdraw_request(t, followee, requester)
            })
            .await?;
        Ok(dropped)
    }

    /// On a private followee's shard: approve (the requester becomes a follower here, and
    /// its own shard hears it through the outbox) or reject a pending request.
    async fn answer_request(
        self: &Rc<Self>,
        followee: u64,
        requester: u64,
        approve: bool,
        deadline: Instant,
    ) -> Result<(), Fail> {
        if !approve {
            let dropped = self.drop_request(followee, requester).await?;
            return if dropped {
                Ok(())
            } else {
                Err(CoreError::NotFound.into())
            };
        }
        let target = shard_of(requester);
        if target >= self.shards {
            return Err(CoreError::NotFound.into());
        }
        let here = self.id;
        let event = Event::FollowApproved {
            follower: requester,
            followee,
        };
        let sent = event.clone();
        // The approver's side of the relation, like a follow's on the follower's shard.
        let (approved, event_id) = self.write_change(target, event).await?;
        if !approved {
            return Err(CoreError::NotFound.into());
        }
        self.feeds.forget(requester);
        self.feeds.forget(followee);
        if target != here {
            self.deliver_now(event_id, sent, &[target], deadline).await;
        }
        let page = Page {
            limit: BACKFILL_POSTS,
            max_id: None,
            min_id: None,
        };
        let posts = owned(self.user_posts(followee, requester, page, 0)?.0);
        let result = self
            .ask(target, deadline, |reply| Op::Backfill {
                reader: requester,
                author: followee,
                posts,
                reply,
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "feed backfill failed; the follower's shard will retry");
        }
        Ok(())
    }

    /// An account made public approves the follow requests it was still holding.
    async fn approve_all(self: &Rc<Self>, followee: u64, deadline: Instant) -> Result<(), Fail> {
        loop {
            let pending = self.read(|r| {
                social::own_page(r, social::OwnList::FollowRequests, followee, None, 64)
            })?;
            if pending.is_empty() {
                return Ok(());
            }
            for (requester, _) in pending {
                match self
                    .answer_request(followee, requester, true, deadline)
                    .await
                {
                    // Withdrawn or blocked meanwhile.
                    Ok(()) | Err(Fail::Core(CoreError::NotFound)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Usernames mentioned in a text, resolved on their shards (unknown names are skipped).
    async fn resolve_mentions(
        self: &Rc<Self>,
        names: Vec<String>,
        deadline: Instant,
    ) -> Result<Vec<Mention>, Fail> {
        let mut mentions = Vec::new();
        for name in names {
            if let Some(user) = self.user_named(name.to_ascii_lowercase(), deadline).await? {
                mentions.push(Mention {
                    user_id: user.id,
                    username: user.username.clone(),
                    external_id: user.external_id,
                });
            }
        }
        Ok(mentions)
    }

    /// Start-up, before any post is offered: builds the index of who mutes whom
    /// (`social::index_muters`) if this database predates it.
    pub(crate) async fn index_muters(self: &Rc<Self>) -> Result<(), Fail> {
        if !self.read(social::muters_stale)? {
            return Ok(());
        }
        let n = self.partition.write(social::index_muters).await?;
        tracing::info!(shard = self.id, mutes = n, "mutes indexed by author");
        Ok(())
    }

    /// On the post's shard: the author edits the text; the post's copies on every other
    /// shard follow through the outbox. Mentions added by an edit do not reach new feeds.
    async fn edit_post(
        self: &Rc<Self>,
        post_id: u64,
        author: u64,
        text: String,
        deadline: Instant,
    ) -> Result<Post, Fail> {
        let owned = self.read(|r| content::post(r, post_id))?;
        let Some(owned) = owned.filter(|p| p.author_id == author) else {
            return Err(CoreError::NotFound.into());
        };
        let extracted = content::extract(&text);
        let mentions = self.resolve_mentions(extracted.mentions, deadline).await?;
        let edit = content::PostEdit {
            mentions: self.read(|r| readers_mentioned(r, author, owned.visibility, mentions))?,
            hashtags: extracted.hashtags,
            urls: links(extracted.urls),
            text,
        };
        let event_id = self.next_id();
        let now = now_ms();
        let here = self.id;
        let targets: Vec<usize> = (0..self.shards).filter(|s| *s != here).collect();
        let (post, event) = {
            let targets = targets.clone();
            self.partition
                .write(move |t| {
                    let post = content::edit_post(t, author, post_id, edit, now)?;
                    social::refresh_copy(t, &post)?;
                    let event = Event::PostEdited {
                        post: Box::new(post.clone()),
                    };
                    events::record(t, event_id, now, &event, &targets)?;
                    Ok::<_, CoreError>((post, event))
                })
                .await?
        };
        self.post_edited(&post);
        self.deliver_now(event_id, event, &targets, deadline).await;
        Ok(post)
    }

    /// After an edit of `post` here: its cached copy goes; a `mentioned` post may now
    /// address other readers, whose heads (and the heads of those it no longer addresses)
    /// are merged again. Such edits are rare: every head of this shard goes.
    fn post_edited(&self, post: &Post) {
        self.feeds.drop_post(post.id);
        if post.visibility == Visibility::Mentioned {
            self.feeds.forget_all();
        }
    }

    /// A follow, unfollow, block or unblock (`event`) on `actor`'s shard whose mirror lives
    /// on `other`'s shard: applied here with its event in one logged write (`change_in`),
    /// then delivered before answering.
    async fn change(
        self: &Rc<Self>,
        actor: u64,
        other: u64,
        event: Event,
        deadline: Instant,
    ) -> Result<bool, Fail> {
        debug_assert_eq!(shard_of(actor), self.id);
        let target = shard_of(other);
        if target >= self.shards {
            return Err(CoreError::NotFound.into());
        }
        let sent = event.clone();
        let (changed, event_id) = self.write_change(target, event).await?;
        if changed {
            self.feeds.forget(actor);
            self.feeds.forget(other);
            // What the actor's stream kept of the other goes as its feed does.
            match &sent {
                Event::Blocked { .. } => self.unstream_between(actor, other),
                Event::Unfollowed { .. } => self.unstream_unfollowed(actor, other),
                _ => {}
            }
        }
        if changed && target != self.id {
            self.deliver_now(event_id, sent, &[target], deadline).await;
        }
        Ok(changed)
    }

    /// `change_in` here as a logged write, with a fresh event id: whether it changed anything,
    /// and the event's id (for its delivery to `target`).
    async fn write_change(
        self: &Rc<Self>,
        target: usize,
        event: Event,
    ) -> Result<(bool, u64), CoreError> {
        let event_id = self.next_id();
        let now = now_ms();
        let here = self.id;
        let record = Record::Change {
            here,
            target,
            event_id,
            now,
            event: &event,
        }
        .encode();
        let changed = self
            .write_recorded(record, move |t| {
                change_in(t, here, target, event_id, now, &event)
            })
            .await?;
        Ok((changed, event_id))
    }

    /// Delivers a fresh event to its targets (within the deadline): a new post is offered
    /// (`mesh::Offer`), anything else is applied there before this returns. What fails
    /// here stays in the outbox for the relay; it is never lost.
    pub(crate) async fn deliver_now(
        self: &Rc<Self>,
        event_id: u64,
        event: Event,
        targets: &[usize],
        deadline: Instant,
    ) {
        // A new post only needs to show in feeds before the answer, which an offer sent is
        // enough for: the target takes it before it serves a home feed. It acknowledges the
        // post once committed. Everything else waits for the target's commit.
        if matches!(event, Event::PostCreated { .. }) {
            for &target in targets {
                let events = vec![(event_id, event.clone())];
                if target == self.id {
                    self.offer(self.id, events);
                    continue;
                }
                let Some(to) = self.offer_to.get(target) else {
                    continue;
                };
                // Waits only while the target's offer channel is full.
                let offer = Offer {
                    from: self.id,
                    events,
                };
                if !matches!(until(deadline, to.send_async(offer)).await, Some(Ok(()))) {
                    tracing::debug!(target, event_id, "offer not sent; the outbox will");
                }
            }
            return;
        }
        let mut waits = Vec::with_capacity(targets.len());
        for &target in targets {
            let events = vec![(event_id, event.clone())];
            let me = Rc::clone(self);
            waits.push(glommio::spawn_local(async move {
                let delivered = me
                    .ask(target, deadline, |reply| Op::Deliver { events, reply })
                    .await;
                (target, delivered.is_ok())
            }));
        }
        for wait in waits {
            let (target, ok) = wait.await;
            if ok {
                self.relay.acks.borrow_mut().push((target, event_id));
            }
        }
    }

    /// The relay: every `RELAY_PERIOD`, delete acknowledged outbox rows and send what is still
    /// pending (events older than `RELAY_AGE_MIN_MS`, so a request delivering its own fresh
    /// event is not raced). Runs until the shard exits.
    pub async fn relay_loop(self: Rc<Self>) {
        loop {
            futures_lite::future::or(glommio::timer::sleep(RELAY_PERIOD), self.relay.kicked())
                .await;
            if let Err(e) = self.relay_once().await {
                tracing::warn!(error = %e, "outbox relay pass failed");
            }
        }
    }

    /// Writes the buffered view counts (one transaction, a logged write: a durable one made
    /// every relay pass with views a checkpoint).
    pub async fn flush_views(self: &Rc<Self>) -> Result<(), Fail> {
        let pending: Vec<(u64, u64)> = self.relay.views.borrow_mut().pending.drain().collect();
        if pending.is_empty() {
            return Ok(());
        }
        let record = Record::Views { views: &pending }.encode();
        self.write_recorded(record, move |t| content::add_views(t, &pending))
            .await?;
        Ok(())
    }

    async fn relay_once(self: &Rc<Self>) -> Result<(), Fail> {
        let pass = self.relay.passes.get().wrapping_add(1);
        self.relay.passes.set(pass);
        if pass.is_multiple_of(BACKFILL_RETRY_EVERY) {
            self.retry_backfills().await?;
        }
        if pass.is_multiple_of(VIEW_FLUSH_EVERY) {
            self.flush_views().await?;
            self.prune_streams();
            self.typing.prune(now_ms());
        }
        let acks: Vec<(usize, u64)> = std::mem::take(&mut *self.relay.acks.borrow_mut());
        self.acknowledge(acks).await?;
        let cutoff = now_ms().saturating_sub(RELAY_AGE_MIN_MS);
        for target in self.read(events::pending_targets)? {
            if target >= self.shards || target == self.id {
                continue;
            }
            let batch: Vec<(u64, Event)> = {
                let acking = self.relay.acking.borrow();
                let skip_max = acking.len();
                self.read(|r| {
                    events::pending_except(r, target, DELIVER_BATCH_MAX, skip_max, |id| {
                        acking.contains(&(target, id))
                    })
                })?
            }
            .into_iter()
            .filter(|(id, event)| id_ms(*id) <= cutoff || relay_only(event))
            .collect();
            if batch.is_empty() {
                continue;
            }
            let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
            // Fresh events the relay sends only itself are not redeliveries.
            let again = batch
                .iter()
                .filter(|(id, event)| !relay_only(event) || id_ms(*id) <= cutoff)
                .count() as u64;
            let deadline = Instant::now() + Duration::from_secs(5);
            match self
                .ask(target, deadline, |reply| Op::Deliver {
                    events: batch,
                    reply,
                })
                .await
            {
                Ok(()) => {
                    tracing::debug!(target, events = ids.len(), "outbox delivered");
                    self.relay
                        .redelivered
                        .set(self.relay.redelivered.get().saturating_add(again));
                    self.acknowledge(ids.into_iter().map(|id| (target, id)).collect())
                        .await?;
                }
                Err(e) => tracing::warn!(target, error = %e, "outbox delivery failed; will retry"),
            }
        }
        Ok(())
    }
}

/// `Shard::follow_gate`'s write on a private followee's shard (`here`): `follower`'s request,
/// and the followee's notification of it when it is new. False when a block either way
/// stands (nothing written). Replayed from its log record (replay.rs).
pub(crate) fn request_in(
    t: &nova_storage::redb::WriteTransaction,
    here: usize,
    followee: u64,
    follower: u64,
    now: u64,
) -> Result<bool, CoreError> {
    if social::blocked_either_way_in(t, followee, follower)? {
        return Ok(false);
    }
    if social::request_follow(t, followee, follower, now)? {
        let notice = nova_core::notifications::New {
            recipient: followee,
            kind: nova_core::notifications::Kind::FollowRequest,
            actor: Some(follower),
            subject: nova_core::notifications::Subject::None,
        };
        nova_core::notifications::notify(t, here, &notice, now)?;
    }
    Ok(true)
}

/// `Op::UpdateProfile`'s write: the display name (on the user's row, with its
/// `UserChanged` event), bio and links. The user, when its name changed. Replayed from its
/// log record (replay.rs).
pub(crate) fn update_profile_in(
    t: &nova_storage::redb::WriteTransaction,
    user_id: u64,
    edit: ProfileEdit,
    event_id: u64,
    now: u64,
) -> Result<Option<identity::User>, CoreError> {
    let user = match &edit.display_name {
        Some(name) => Some(identity::set_display_name(t, user_id, name, event_id, now)?),
        None => None,
    };
    if edit.bio.is_some() || edit.links.is_some() {
        profiles::update_profile(t, user_id, edit.bio, edit.links)?;
    }
    if let Some(avatar) = edit.avatar {
        profiles::set_avatar(t, user_id, avatar)?;
    }
    Ok(user)
}

/// `Op::Settings`' write: the account settings given and how often to send digests. Turned
/// on, the digests start from `now` and the newest notification (nothing older is summed
/// up); turned off, where they stood is forgotten. Replayed from its log record (replay.rs).
pub(crate) fn settings_in(
    t: &nova_storage::redb::WriteTransaction,
    user_id: u64,
    u: &SettingsUpdate,
    now: u64,
    switched: Option<(u64, &[usize])>,
) -> Result<(profiles::Settings, profiles::Digest), CoreError> {
    use nova_core::communication;
    let was_private = profiles::settings_in(t, user_id)?.private;
    let settings = profiles::update_settings(t, user_id, u.private, u.messages_from)?;
    if settings.private != was_private {
        // Its posts' hashtags leave (or join) the counts anyone's completion shows.
        nova_core::search::recount_author(t, user_id)?;
    }
    if settings.private != was_private {
        // Turning private, its posts leave the feeds of strangers they mentioned, here and on
        // every shard; every shard marks it, for posts still on their way there.
        let event = match settings.private {
            true => {
                social::went_private(t, user_id)?;
                Event::WentPrivate { user_id }
            }
            false => {
                social::went_public(t, user_id)?;
                Event::WentPublic { user_id }
            }
        };
        if let Some((event_id, targets)) = switched {
            nova_core::events::record(t, event_id, now, &event, targets)?;
        }
    }
    if let Some(digest) = u.email_digest {
        let was = profiles::digest_in(t, user_id)?;
        profiles::set_digest(t, user_id, digest)?;
        match digest {
            profiles::Digest::Off => communication::forget_digest(t, user_id)?,
            _ if was == profiles::Digest::Off => {
                let newest = nova_core::notifications::newest_in(t, user_id)?.unwrap_or(0);
                communication::record_digest(t, user_id, now, newest)?;
            }
            // From daily to weekly or back: the last digest still counts.
            _ => {}
        }
    }
    let digest = match u.email_digest {
        Some(d) => d,
        None => profiles::digest_in(t, user_id)?,
    };
    Ok((settings, digest))
}

/// `Op::Preferences`' write: posting and feed preferences. Replayed from its log record
/// (replay.rs).
pub(crate) fn preferences_in(
    t: &nova_storage::redb::WriteTransaction,
    user_id: u64,
    u: PreferencesUpdate,
) -> Result<(profiles::Preferences, profiles::FeedPreferences), CoreError> {
    let prefs = profiles::update_preferences(t, user_id, u.default_visibility, u.language)?;
    let feed = profiles::update_feed_preferences(t, user_id, u.hide_replies, u.muted_words)?;
    Ok((prefs, feed))
}

/// `Shard::change`'s write on the actor's shard `here`: the actor's side of a follow,
/// unfollow, block or unblock (`event`), or of a follow request approved (on the followee's
/// shard: `Shard::answer_request`), and, when it changed anything, the event, recorded for
/// `target` (the other side's shard), or applied at once when that is `here` too.
/// Whether anything changed. Replayed from its log record (replay.rs), so a function of its
/// arguments and the tables alone.
pub(crate) fn change_in(
    t: &nova_storage::redb::WriteTransaction,
    here: usize,
    target: usize,
    event_id: u64,
    now: u64,
    event: &Event,
) -> Result<bool, CoreError> {
    let changed = match *event {
        Event::Followed { follower, followee } => {
            // A block either way that landed since `Shard::follow` looked (a block sent at
            // the same time, or the other side's delivered meanwhile) wins: the follow is
            // refused as if the block had come first.
            if social::blocked_either_way_in(t, follower, followee)? {
                return Err(CoreError::NotFound);
            }
            if social::follows_in(t, follower, followee)? {
                false
            } else {
                social::check_following_room(t, follower)?;
                social::follow(t, follower, followee, now)?
            }
        }
        Event::Unfollowed { follower, followee } => social::unfollow(t, follower, followee)?,
        Event::Blocked { blocker, blocked } => social::block(t, blocker, blocked, now)?,
        Event::Unblocked { blocker, blocked } => social::unblock(t, blocker, blocked)?,
        // On the followee's shard, who approved.
        Event::FollowApproved { follower, followee } => {
            social::approve_request(t, followee, follower, now)?
        }
        _ => {
            return Err(CoreError::Corrupt(format!(
                "not a social graph change: {event:?}"
            )))
        }
    };
    if !changed {
        return Ok(false);
    }
    if target == here {
        events::record(t, event_id, now, event, &[])?;
        events::apply(t, event_id, now, event, |u| shard_of(u) == here)?;
    } else {
        events::record(t, event_id, now, event, &[target])?;
    }
    Ok(true)
}

/// Writes a batch of composes on their authors' shard `here`, in one pass: each post (unless
/// an earlier create with its idempotency key is found: `Some(that id)`), its fan-out here
/// (copies, feed rows and notifications of the mentioned users of this shard) and its
/// `PostCreated` event for the other shards.
pub(crate) fn compose_batch(
    t: &nova_storage::redb::WriteTransaction,
    here: usize,
    items: &[crate::replay::ComposeItem],
) -> Result<Vec<Option<u64>>, CoreError> {
    let mut out = Vec::with_capacity(items.len());
    let mut fresh = Vec::with_capacity(items.len());
    let items: Vec<(std::borrow::Cow<'_, Post>, _, _, _)> = items
        .iter()
        .map(|(post, key, event_id, targets)| {
            Ok((mentions_as_now(t, post)?, key, event_id, targets))
        })
        .collect::<Result<_, CoreError>>()?;
    {
        let mut posts = content::NewPosts::open(t)?;
        for (post, key, _, _) in &items {
            if let Some(key) = key {
                if let Some(id) = posts.earlier(post.author_id, key, post.created_ms)? {
                    out.push(Some(id));
                    continue;
                }
            }
            posts.insert(post, key.as_deref())?;
            out.push(None);
            fresh.push(post.as_ref());
        }
    }
    let mentioned: Vec<Vec<u64>> = fresh
        .iter()
        .map(|post| {
            post.mentions
                .iter()
                .map(|m| m.user_id)
                .filter(|u| shard_of(*u) == here)
                .collect()
        })
        .collect();
    let fanned: Vec<(&Post, &[u64])> = fresh
        .iter()
        .zip(&mentioned)
        .map(|(post, m)| (*post, m.as_slice()))
        .collect();
    social::fan_out_all(t, &fanned, true)?;
    let created: Vec<(u64, u64, Event, &[usize])> = items
        .iter()
        .zip(&out)
        .filter(|(_, earlier)| earlier.is_none())
        .map(|((post, _, event_id, targets), _)| {
            let event = Event::PostCreated {
                post: Box::new(post.clone().into_owned()),
            };
            (**event_id, post.created_ms, event, targets.as_slice())
        })
        .collect();
    events::record_all(
        t,
        created
            .iter()
            .map(|(id, ms, event, targets)| (*id, *ms, event, *targets)),
    )?;
    Ok(out)
}

/// `post` with the mentions its author's privacy allows now, in the compose's write: a
/// public post whose account turned private after its mentions were checked
/// (`readers_mentioned`) keeps only the author's followers among them, as it would have had
/// the switch come first.
fn mentions_as_now<'p>(
    t: &nova_storage::redb::WriteTransaction,
    post: &'p Post,
) -> Result<std::borrow::Cow<'p, Post>, CoreError> {
    use std::borrow::Cow;
    let author = post.author_id;
    if post.visibility != Visibility::Public
        || post.mentions.iter().all(|m| m.user_id == author)
        || !profiles::settings_in(t, author)?.private
    {
        return Ok(Cow::Borrowed(post));
    }
    let mut kept = Vec::with_capacity(post.mentions.len());
    for m in &post.mentions {
        if m.user_id == author || social::is_follower_in(t, author, m.user_id)? {
            kept.push(m.clone());
        }
    }
    if kept.len() == post.mentions.len() {
        return Ok(Cow::Borrowed(post));
    }
    let mut post = post.clone();
    post.mentions = kept;
    Ok(Cow::Owned(post))
}

impl Shard {
    /// Deletes the outbox rows of delivered events (target, event id). The deletion rides
    /// along with the next commit (within `ACK_DEFER`), as nobody waits for it; until it is
    /// durable the rows stay in `Relay::acking`, so the relay does not send them again (a
    /// resend would be harmless, `event_applied` drops it, but a busy shard would resend
    /// every pass). A failed commit forgets them there: the relay sends them again. With
    /// `ACKING_MAX` waiting, this waits for the commit instead.
    async fn acknowledge(self: &Rc<Self>, acks: Vec<(usize, u64)>) -> Result<(), Fail> {
        if acks.is_empty() {
            return Ok(());
        }
        let wait = {
            let mut acking = self.relay.acking.borrow_mut();
            acking.extend(acks.iter().copied());
            acking.len() > ACKING_MAX
        };
        let me = Rc::clone(self);
        let commit = async move {
            let rows = acks.clone();
            let done = me
                .partition
                .write_lossy(move |t| acknowledge_rows(t, &rows), ACK_DEFER)
                .await;
            let mut acking = me.relay.acking.borrow_mut();
            for ack in &acks {
                acking.remove(ack);
            }
            done
        };
        if wait {
            commit.await?;
        } else {
            glommio::spawn_local(async move {
                if let Err(e) = commit.await {
                    tracing::warn!(error = %e, "outbox acknowledgement failed; will resend");
                }
            })
            .detach();
        }
        Ok(())
    }
}

/// Deletes delivered events' outbox rows, grouped by target.
fn acknowledge_rows(
    t: &nova_storage::redb::WriteTransaction,
    acks: &[(usize, u64)],
) -> Result<(), CoreError> {
    let mut by_target: std::collections::BTreeMap<usize, Vec<u64>> = Default::default();
    for (target, id) in acks {
        by_target.entry(*target).or_default().push(*id);
    }
    for (target, ids) in by_target {
        events::acknowledge(t, target, &ids)?;
    }
    Ok(())
}

/// Events no request delivers itself: the relay sends them as soon as it runs, in id order
/// per target (a conversation's messages arrive in order).
fn relay_only(event: &Event) -> bool {
    matches!(
        event,
        Event::MessagePosted { .. }
            | Event::MessageDeleted { .. }
            | Event::ConversationLeft { .. }
            | Event::AccountErased { .. }
            | Event::ErasureWork { .. }
    )
}

fn comment_info(
    r: &nova_storage::redb::ReadTransaction,
    comment: content::Comment,
    viewer: u64,
) -> Result<crate::mesh::CommentInfo, CoreError> {
    let (likes, replies) = content::counts(r, comment.id)?;
    let liked = content::liked(r, comment.id, viewer, true)?;
    Ok(crate::mesh::CommentInfo {
        comment,
        likes,
        replies,
        liked,
    })
}

fn brief(
    r: &nova_storage::redb::ReadTransaction,
    user: &identity::User,
) -> Result<UserBrief, CoreError> {
    Ok(UserBrief {
        id: user.id,
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        external_id: identity::external_of(r, DSB_NAMESPACE, user.id)?,
        avatar: profiles::avatar(r, user.id)?,
    })
}

/// Of `others`, those `user` blocks or is blocked by (on `user`'s shard).
fn blocked_among(
    r: &nova_storage::redb::ReadTransaction,
    user: u64,
    others: Vec<u64>,
) -> Result<Vec<u64>, CoreError> {
    let mut out = Vec::new();
    for other in others {
        if other != user && social::blocked_either_way(r, user, other)? {
            out.push(other);
        }
    }
    Ok(out)
}

impl Shard {
    /// Of `others`, those `viewer` blocks or is blocked by: what a list of other users'
    /// relations or comments leaves out for the viewer (a block hides both sides from each
    /// other everywhere). Asks the viewer's shard, unless it is this one.
    /// 404 when `user` and `other` blocked one another (either way): what `other` wrote is
    /// hidden from `user` (asked on `user`'s shard).
    async fn not_hidden_by_block(
        self: &Rc<Self>,
        user: u64,
        other: u64,
        deadline: Instant,
    ) -> Result<(), Fail> {
        match self
            .blocked_among(user, vec![other], deadline)
            .await?
            .is_empty()
        {
            true => Ok(()),
            false => Err(CoreError::NotFound.into()),
        }
    }

    pub(crate) async fn blocked_among(
        self: &Rc<Self>,
        viewer: u64,
        mut others: Vec<u64>,
        deadline: Instant,
    ) -> Result<Vec<u64>, Fail> {
        others.sort_unstable();
        others.dedup();
        others.retain(|o| *o != viewer);
        if others.is_empty() {
            return Ok(Vec::new());
        }
        let home = shard_of(viewer);
        if home == self.id {
            return self.read(|r| blocked_among(r, viewer, others));
        }
        self.ask(home, deadline, |reply| Op::BlockedAmong {
            user: viewer,
            others,
            reply,
        })
        .await
    }
}

/// The mentions a post keeps: those of users who may read it (as `Shard::may_see` decides).
/// A followers-only post, or any post of a private account, mentions the author's followers
/// only: the name of anyone else stays in the text, but the post notifies them of nothing
/// and reaches none of their feeds or streams (a mention reaches a user's feed whether or not
/// the user follows the author).
fn readers_mentioned(
    r: &nova_storage::redb::ReadTransaction,
    author: u64,
    visibility: Visibility,
    mentions: Vec<Mention>,
) -> Result<Vec<Mention>, CoreError> {
    if mentions.is_empty() {
        return Ok(mentions);
    }
    // Only a public post asks whether its account is private.
    let private = visibility == Visibility::Public && profiles::settings(r, author)?.private;
    let mut kept = Vec::with_capacity(mentions.len());
    for m in mentions {
        // A mentioned user is one a `mentioned` post is addressed to.
        if m.user_id == author
            || readable(visibility, true, private, || {
                social::is_follower(r, author, m.user_id)
            })?
        {
            kept.push(m);
        }
    }
    Ok(kept)
}

/// Whether a reader other than the author may read a post, by its visibility alone (the
/// author, blocks and suspensions are checked before): `addressed` is
/// `Post::addressed_to(reader)`, `private` the author's setting, and `follower` whether the
/// reader follows the author, asked only when it decides. Public posts of a public account
/// are for everyone, `mentioned` ones for the users they mention (followers or not), the
/// rest (followers-only posts, any post of a private account) for followers.
fn readable(
    visibility: Visibility,
    addressed: bool,
    private: bool,
    follower: impl FnOnce() -> Result<bool, CoreError>,
) -> Result<bool, CoreError> {
    Ok(match visibility {
        Visibility::Public if !private => true,
        Visibility::Mentioned => addressed,
        _ => follower()?,
    })
}

fn links(urls: Vec<String>) -> Vec<content::Link> {
    urls.into_iter()
        .map(|url| content::Link {
            short: shorten(&url),
            url,
        })
        .collect()
}

/// A short, stable form of a link (DeathStarBench stores one next to each link).
fn shorten(url: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    format!("http://short-url/{:016x}", h.finish())
}

/// Posts shared from a cache, as owned values (what outlives the page: a backfill's copies).
fn owned(posts: Vec<Arc<SharedPost>>) -> Vec<Post> {
    posts
        .into_iter()
        .map(|p| {
            Arc::try_unwrap(p).map_or_else(|shared| Post::clone(&shared), SharedPost::into_post)
        })
        .collect()
}
