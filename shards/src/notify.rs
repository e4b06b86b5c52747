//! Notifications on the engine side: the writes that may notify, the hook that hands freshly
//! committed notifications to their consumers (Web Push today, the live stream next), and the
//! operations a shard runs on the notifications and push subscriptions of its users.
//!
//! The hook, in three parts:
//! - `Shard::write_notifying_logged(op)` (and `write_recorded`) runs `op` in the next group
//!   commit like `Partition::write_logged`, and in the same transaction takes what `op`
//!   notified (`notifications::take_fresh`) and turns notices for users of other shards into
//!   outbox events (`take_remote`).
//! - After the commit is durable (its record in the write-ahead log), `Fresh::publish` calls every listener with the new
//!   notifications (on this shard's thread, in commit order), and the remote events are
//!   delivered at once (the outbox relay retries what fails).
//! - `Fresh::listen` adds a listener; `server.rs` adds `push::on_fresh`. A listener must not
//!   block or await: it copies what it needs and spawns a task or sends on a bounded channel.
//!
//! A write that notifies without `write_notifying_logged` loses nothing: the notifications a write
//! made are remembered in memory on the partition's writer thread (`notifications::take_fresh`
//! takes them; `notifications::untaken` tells the shard some are waiting), and notices for
//! other shards are parked in a table; `sweep_loop` finds both within `SWEEP_PERIOD` and
//! publishes them then (with what older versions left in `notifications_fresh`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nova_core::events::Event;
use nova_core::notifications::{self, Filter, Notification, Which};
use nova_core::push::{self, Subscription};
use nova_core::CoreError;
use nova_storage::redb::WriteTransaction;

use crate::mesh::Reply;
use crate::shard::{now_ms, Shard};

/// Event ids reserved per notifying write for notices to other shards; a write needing more
/// (none does today: a comment notifies at most one user elsewhere) leaves the rest to the
/// sweep.
pub(crate) const REMOTE_EVENT_IDS: usize = 4;
/// How often a shard looks for notifications that no `write_notifying_logged` took.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);
/// How long an immediate delivery of a notice to another shard may take before the relay's
/// retries take over.
const REMOTE_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Something that wants every notification committed on this shard.
pub type Listener = Box<dyn Fn(&Rc<Shard>, &[Notification])>;

/// The listeners of one shard.
#[derive(Default)]
pub struct Fresh {
    listeners: RefCell<Vec<Listener>>,
}

impl Fresh {
    /// Adds a listener (at start-up; not from inside a listener).
    pub fn listen(&self, listener: Listener) {
        self.listeners.borrow_mut().push(listener);
    }

    fn publish(&self, shard: &Rc<Shard>, fresh: &[Notification]) {
        if fresh.is_empty() {
            return;
        }
        for listener in self.listeners.borrow().iter() {
            listener(shard, fresh);
        }
    }
}

/// Notification and push-subscription operations, run on the user's shard.
pub enum NotifyOp {
    List {
        user: u64,
        max_id: Option<u64>,
        limit: usize,
        filter: Filter,
        reply: Reply<(Vec<Notification>, Option<u64>)>,
    },
    /// (how many changed, unread left)
    MarkRead {
        user: u64,
        which: Which,
        reply: Reply<(u64, u64)>,
    },
    Unread {
        user: u64,
        reply: Reply<u64>,
    },
    /// false when the subscribing session has ended meanwhile (nothing stored).
    Subscribe {
        user: u64,
        sub: Subscription,
        reply: Reply<bool>,
    },
    /// false when there was no such subscription.
    Unsubscribe {
        user: u64,
        endpoint: String,
        reply: Reply<bool>,
    },
    Subscriptions {
        user: u64,
        reply: Reply<Vec<Subscription>>,
    },
}

impl Shard {
    /// `Partition::write_logged` for a change that may notify (see the module comment): `op`
    /// also returns its record, and the record logged is that and what this adds to it.
    pub(crate) async fn write_notifying_logged<R, F>(
        self: &Rc<Self>,
        op: F,
        defer: Option<Duration>,
    ) -> Result<R, CoreError>
    where
        F: FnOnce(&WriteTransaction) -> Result<(R, Vec<u8>), CoreError> + Send + 'static,
        R: Send + 'static,
    {
        let event_ids: [u64; REMOTE_EVENT_IDS] = std::array::from_fn(|_| self.next_id());
        let now = now_ms();
        let op = move |t: &WriteTransaction| {
            let (out, write) = op(t)?;
            let fresh = notifications::take_fresh(t)?;
            let remote = notifications::take_remote(t, &event_ids, now)?;
            let record = nova_core::codec::encode(&crate::replay::Notifying {
                write,
                event_ids,
                now,
            });
            Ok::<_, CoreError>(((out, fresh, remote), record))
        };
        let (out, fresh, remote) = self.partition.write_logged(op, defer).await?;
        self.notified(&fresh, remote);
        Ok(out)
    }

    /// `write_notifying_logged` for a write whose record (`Record::encode`) is made before it
    /// runs, from its inputs alone: here rather than on the commit thread.
    pub(crate) async fn write_recorded<R, F>(
        self: &Rc<Self>,
        record: Vec<u8>,
        op: F,
    ) -> Result<R, CoreError>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, CoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.write_notifying_logged(move |t| Ok((op(t)?, record)), None)
            .await
    }

    /// After a notifying write's commit: its notifications go to streams, and its notices
    /// for other shards on their way.
    fn notified(self: &Rc<Self>, fresh: &[Notification], remote: Vec<(u64, usize, Event)>) {
        self.fresh.publish(self, fresh);
        for (event_id, target, event) in remote {
            if target == self.id || target >= self.shards {
                continue;
            }
            let me = Rc::clone(self);
            let deadline = Instant::now() + REMOTE_DELIVERY_TIMEOUT;
            glommio::spawn_local(async move {
                me.deliver_now(event_id, event, &[target], deadline).await;
            })
            .detach();
        }
    }

    /// Every `SWEEP_PERIOD`: publish notifications a plain `Partition::write` made (and send
    /// its notices for other shards), and what older versions left in `notifications_fresh`.
    /// Runs until the shard drains.
    pub async fn sweep_loop(self: Rc<Self>) {
        fn sweep(t: &WriteTransaction) -> Result<(Vec<Notification>, Vec<u8>), CoreError> {
            let stored = notifications::take_stored_fresh(t)?;
            Ok((stored, crate::replay::Record::Sweep.encode()))
        }
        loop {
            glommio::timer::sleep(SWEEP_PERIOD).await;
            if self.draining.fired() {
                return;
            }
            let untaken = notifications::untaken(self.id);
            match self.read(notifications::has_pending) {
                Ok(false) if !untaken => {}
                Ok(_) => match self.write_notifying_logged(sweep, None).await {
                    Ok(stored) => self.fresh.publish(&self, &stored),
                    Err(e) => tracing::warn!(error = %e, "notification sweep failed"),
                },
                Err(e) => tracing::warn!(error = %e, "notification sweep could not read"),
            }
        }
    }

    pub(crate) async fn serve_notify(self: &Rc<Self>, op: NotifyOp) {
        match op {
            NotifyOp::List {
                user,
                max_id,
                limit,
                filter,
                reply,
            } => {
                let _ =
                    reply.send(self.read(|r| notifications::page(r, user, max_id, limit, &filter)));
            }
            NotifyOp::MarkRead { user, which, reply } => {
                let record = crate::replay::Record::NotificationsRead {
                    user,
                    which: &which,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| notifications::mark_read(t, user, &which))
                    .await;
                let _ = reply.send(result.map_err(Into::into));
            }
            NotifyOp::Unread { user, reply } => {
                let _ = reply.send(self.read(|r| notifications::unread(r, user)));
            }
            NotifyOp::Subscribe { user, sub, reply } => {
                let max = self.cfg.push_subscriptions_per_user_max;
                let result = self
                    .partition
                    .write(move |t| {
                        // A session revoked meanwhile keeps no subscription (a revocation
                        // deletes them in its own write: `identity::revoke`).
                        if sub.session != 0
                            && !nova_core::identity::session_live_in(t, sub.session)?
                        {
                            return Ok(false);
                        }
                        push::subscribe(t, user, &sub, max).map(|()| true)
                    })
                    .await;
                let _ = reply.send(result.map_err(Into::into));
            }
            NotifyOp::Unsubscribe {
                user,
                endpoint,
                reply,
            } => {
                let result = self
                    .partition
                    .write(move |t| push::unsubscribe(t, user, &endpoint))
                    .await;
                let _ = reply.send(result.map_err(Into::into));
            }
            NotifyOp::Subscriptions { user, reply } => {
                let max = self.cfg.push_subscriptions_per_user_max;
                let _ = reply.send(self.read(|r| push::subscriptions(r, user, max)));
            }
        }
    }
}
