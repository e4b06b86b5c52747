//! One shard: its state (all `Rc`/`Cell`, touched only by its own thread), the router that
//! sends an operation to the shard owning the data, and the operations it runs for itself and
//! for others.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nova_core::communication::{self, EmailStatus};
use nova_core::identity::{self, AuthEvent, Context, EmailClaim, User, EMAIL_CLAIM_STALE_MS};
use nova_core::{shard_for_key, shard_of, CoreError, IdGen};
use nova_storage::Partition;

use crate::config::Config;
use crate::error::Fail;
use crate::hasher::Hasher;
use crate::limits::Limits;
use crate::mesh::{LoginWho, Offer, Op, Registration, Reply, ShardMsg};
use crate::metrics::{Metrics, Snapshot};
use crate::replay::Record;

/// Rows the admin email listing looks at, at most.
const EMAILS_SCAN_MAX: usize = 10_000;
const EMAILS_LISTED_MAX: usize = 100;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A one-shot signal for the tasks of one shard (no atomics: one thread).
///
/// Each waiting future holds one slot for its waker, refreshed in place when polled again
/// and freed when the future is dropped: a connection polls its drain signal on every wake,
/// so pushing a waker per poll would grow without bound (and keep every finished
/// connection's task allocation alive through its waker) until shutdown.
#[derive(Default)]
pub struct Notify {
    fired: Cell<bool>,
    waiters: RefCell<Slots>,
}

#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Notify {
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = {
            let mut slots = self.waiters.borrow_mut();
            slots.wakers.iter_mut().filter_map(Option::take).collect()
        };
        for w in wakers {
            w.wake();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            slot: None,
        }
    }
}

/// The future of `Notify::wait`.
pub struct Wait<'a> {
    notify: &'a Notify,
    slot: Option<usize>,
}

impl std::future::Future for Wait<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.notify.fired.get() {
            return std::task::Poll::Ready(());
        }
        let mut slots = self.notify.waiters.borrow_mut();
        match self.slot {
            Some(i) => match &mut slots.wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                let waker = Some(cx.waker().clone());
                let i = match slots.free.pop() {
                    Some(i) => {
                        slots.wakers[i] = waker;
                        i
                    }
                    None => {
                        slots.wakers.push(waker);
                        slots.wakers.len() - 1
                    }
                };
                drop(slots);
                self.slot = Some(i);
            }
        }
        std::task::Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let mut slots = self.notify.waiters.borrow_mut();
            slots.wakers[i] = None;
            slots.free.push(i);
        }
    }
}

pub struct Shard {
    pub id: usize,
    /// When this process started (ms since the epoch).
    pub boot_ms: u64,
    pub shards: usize,
    pub cfg: Arc<Config>,
    pub partition: Arc<Partition>,
    pub ids: RefCell<IdGen>,
    pub mesh: Vec<flume::Sender<ShardMsg>>,
    pub inbox_len: Box<dyn Fn() -> usize>,
    /// Each shard's offer channel (`mesh::Offer`), by shard.
    pub offer_to: Vec<flume::Sender<Offer>>,
    /// Offers to this shard, taken by `take_offers`.
    pub offers: flume::Receiver<Offer>,
    pub hasher: Hasher,
    pub token_key: Arc<[u8]>,
    pub dummy_hash: Arc<str>,
    pub metrics: Metrics,
    pub limits: Limits,
    pub open_connections: Cell<usize>,
    /// Revoked sessions -> the time (s) until which their access tokens must be refused.
    pub revoked: RefCell<HashMap<u64, u64>>,
    /// Users this shard owns, by id: read on every authenticated `GET /v1/me`. Every change
    /// to a user happens on this shard, which updates or drops the entry in the same step.
    pub users: RefCell<quick_cache::unsync::Cache<u64, Rc<User>>>,
    /// Username key -> its owner. A name changes owner only when its account is deleted and
    /// the name registered again: every shard drops it then (`AccountOp::ForgetName`).
    pub names: RefCell<quick_cache::unsync::Cache<String, Rc<Named>>>,
    /// DeathStarBench user id -> user id; never stale (mappings are never changed).
    pub ext_ids: RefCell<quick_cache::unsync::Cache<u64, u64>>,
    pub request_seq: Cell<u64>,
    pub relay: crate::social::Relay,
    /// Home-feed heads and decoded posts (shards/src/feeds.rs).
    pub feeds: crate::feeds::Feeds,
    pub streams: crate::stream::Streams,
    pub typing: crate::messaging::Typing,
    /// Sends waiting to be written in a batch (conversations of this shard).
    pub sending: crate::messaging::Sending,
    /// Fired when the shard starts draining: stop accepting, close idle connections.
    pub draining: Notify,
    /// The shard's mailer (shards/src/mail.rs).
    pub mail: crate::mail::Mail,
    /// The media threads (intake, transcoding) and blob stores.
    pub media: crate::media_jobs::Media,
    /// Listeners of notifications committed on this shard (shards/src/notify.rs).
    pub fresh: crate::notify::Fresh,
    /// The Web Push delivery threads (shards/src/push.rs).
    pub push: crate::push::Push,
    /// The suspended users, as this shard's mirror says (shards/src/moderation.rs).
    pub moderation: crate::moderation::Moderation,
    /// Export slots and the erasure loop's wake-up (shards/src/account.rs).
    pub account: crate::account::Accounts,
}

/// The owner of a username, with what a mention of it records.
#[derive(Debug)]
pub struct Named {
    pub id: u64,
    pub username: String,
    /// The owner's DeathStarBench id, if it registered through that API.
    pub external_id: Option<u64>,
}

impl Shard {
    pub fn next_id(&self) -> u64 {
        self.ids.borrow_mut().next(now_ms())
    }

    fn ctx(&self, ip: &str) -> Context {
        Context {
            now_ms: now_ms(),
            ip: ip.to_string(),
            log_id: self.next_id(),
        }
    }

    /// Runs `make(reply)` on shard `target` (here, or over the mesh) and waits for the answer
    /// until `deadline`.
    pub async fn ask<T>(
        self: &Rc<Self>,
        target: usize,
        deadline: Instant,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> Result<T, Fail> {
        let (tx, rx) = flume::bounded(1);
        let op = make(tx);
        if target == self.id {
            // Boxed: serve may call ask again (register -> claim email), a recursive future.
            let local: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> =
                Box::pin(Rc::clone(self).serve(op, deadline));
            local.await;
        } else {
            let sender = self.mesh.get(target).ok_or(Fail::Unavailable)?;
            match sender.try_send(ShardMsg::Call { op, deadline }) {
                Ok(()) => {}
                // Back-pressure: a full inbox means that shard is behind; shed, don't queue.
                Err(flume::TrySendError::Full(_)) => return Err(Fail::Busy),
                Err(flume::TrySendError::Disconnected(_)) => return Err(Fail::Unavailable),
            }
        }
        let answer = until(deadline, rx.recv_async()).await;
        match answer {
            Some(Ok(result)) => result,
            // The other side dropped the reply: its deadline check refused the work.
            Some(Err(_)) => Err(Fail::Timeout),
            None => Err(Fail::Timeout),
        }
    }

    /// The owner of a username key (lowercase), asked of the shard that owns the name once and
    /// then remembered in `names`. `None` when nobody has that name (not remembered).
    pub async fn user_named(
        self: &Rc<Self>,
        key: String,
        deadline: Instant,
    ) -> Result<Option<Rc<Named>>, Fail> {
        if let Some(named) = self.names.borrow().get(&key) {
            return Ok(Some(Rc::clone(named)));
        }
        let home = shard_for_key(&key, self.shards);
        let lookup = key.clone();
        let found = self
            .ask(home, deadline, |reply| Op::LookupUsername {
                key: lookup,
                reply,
            })
            .await?;
        Ok(found.map(|user| {
            let named = Rc::new(Named {
                id: user.id,
                username: user.username,
                external_id: user.external_id,
            });
            self.names.borrow_mut().insert(key, Rc::clone(&named));
            named
        }))
    }

    /// Tells every shard (this one included) to refuse these sessions' access tokens.
    pub async fn broadcast_revoked(self: &Rc<Self>, session_ids: &[u64]) {
        if session_ids.is_empty() {
            return;
        }
        let until_s = now_ms() / 1000 + self.cfg.access_token_ttl_s + 1;
        let sessions: Vec<(u64, u64)> = session_ids.iter().map(|s| (*s, until_s)).collect();
        for (k, sender) in self.mesh.iter().enumerate() {
            if k == self.id {
                self.note_revoked(&sessions);
            } else {
                // Awaited, not tried: a lost revocation would let a logged-out token work.
                let _ = sender
                    .send_async(ShardMsg::Revoked {
                        sessions: sessions.clone(),
                    })
                    .await;
            }
        }
    }

    pub fn note_revoked(&self, sessions: &[(u64, u64)]) {
        let mut revoked = self.revoked.borrow_mut();
        for (session, until_s) in sessions {
            revoked.insert(*session, *until_s);
        }
    }

    pub fn is_revoked(&self, session_id: u64) -> bool {
        self.revoked.borrow().contains_key(&session_id)
    }

    /// Drops deny-list entries whose tokens have all expired.
    pub fn tidy_revoked(&self) {
        let now_s = now_ms() / 1000;
        self.revoked.borrow_mut().retain(|_, until| *until > now_s);
    }

    pub fn snapshot(&self) -> Snapshot {
        let (requests, latency) = self.metrics.snapshot();
        Snapshot {
            shard: self.id,
            requests,
            latency,
            open_connections: self.open_connections.get(),
            commit: self.partition.stats(),
            mesh_queue_depth: (self.inbox_len)(),
            outbox_pending: match self.read(nova_core::events::outbox_len) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: outbox length");
                    0
                }
            },
            outbox_redelivered: self.relay.redelivered(),
            feed_heads: self.feeds.heads_len() as u64,
            search_segments: match self.read(nova_core::search::segments_read) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: search segments");
                    0
                }
            },
            mail: [EmailStatus::Queued, EmailStatus::Sending, EmailStatus::Dead]
                .into_iter()
                .map(|state| {
                    let n = self
                        .read(|r| {
                            communication::count_in_state(
                                r,
                                state,
                                crate::metrics::MAIL_COUNTED_MAX,
                            )
                        })
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "metrics: emails by state");
                            0
                        });
                    (state.as_str(), n as u64)
                })
                .collect(),
            transcode_queue_depth: self.media.queue_len(),
        }
    }

    /// Runs one operation on data this shard owns and sends the answer on its reply channel.
    /// Work whose deadline already passed is dropped unanswered (the caller has timed out).
    pub async fn serve(self: Rc<Self>, op: Op, deadline: Instant) {
        if Instant::now() >= deadline {
            return;
        }
        match op {
            Op::EmailOwner { key, reply } => {
                let _ = reply.send(self.read(|r| identity::email_claim(r, &key)));
            }
            Op::ClaimEmail {
                email,
                user_id,
                reply,
            } => {
                let _ = reply.send(self.claim_email(email, user_id, deadline).await);
            }
            Op::ReleaseEmail {
                key,
                user_id,
                reply,
            } => {
                let result = self
                    .partition
                    .write(move |t| identity::release_email(t, &key, user_id))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::UserExists { user_id, reply } => {
                let _ = reply.send(
                    self.read(|r| identity::user(r, user_id))
                        .map(|u| u.is_some()),
                );
            }
            Op::Register { new, reply } => {
                let _ = reply.send(self.register(new, deadline).await);
            }
            Op::Login {
                who,
                password,
                ip,
                user_agent,
                reply,
            } => {
                let _ = reply.send(self.login(who, password, ip, user_agent).await);
            }
            Op::Refresh { token, ip, reply } => {
                let ctx = self.ctx(&ip);
                let ttl = self.cfg.refresh_token_ttl_s * 1000;
                let record = Record::Refresh {
                    ctx: &ctx,
                    token: &token,
                    ttl,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| identity::refresh(t, &ctx, &token, ttl))
                    .await;
                let result = match result {
                    Ok(identity::Refreshed::Reused {
                        session_id,
                        user_id,
                    }) => {
                        self.broadcast_revoked(&[session_id]).await;
                        Ok(identity::Refreshed::Reused {
                            session_id,
                            user_id,
                        })
                    }
                    other => other.map_err(Fail::from),
                };
                let _ = reply.send(result);
            }
            Op::RevokeSession {
                user_id,
                session_id,
                ip,
                event,
                reply,
            } => {
                let ctx = self.ctx(&ip);
                let record = Record::RevokeSession {
                    ctx: &ctx,
                    user_id,
                    session_id,
                    event,
                }
                .encode();
                let result = self
                    .write_recorded(record, move |t| {
                        identity::revoke_session(t, &ctx, user_id, session_id, event)
                    })
                    .await;
                if result.is_ok() {
                    self.broadcast_revoked(&[session_id]).await;
                }
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::Sessions { user_id, reply } => {
                let _ = reply.send(self.read(|r| identity::sessions_of(r, user_id)));
            }
            Op::GetUser { user_id, reply } => {
                let _ = reply.send(self.user(user_id));
            }
            Op::VerifyEmail { token, ip, reply } => {
                let ctx = self.ctx(&ip);
                let result = self
                    .partition
                    .write(move |t| identity::verify_email(t, &ctx, &token))
                    .await;
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::RequestReset { user_id, ip, reply } => {
                let ctx = self.ctx(&ip);
                let email_id = self.next_id();
                let ttl = self.cfg.reset_token_ttl_s * 1000;
                let result = self
                    .partition
                    .write(move |t| {
                        identity::request_password_reset(t, &ctx, user_id, email_id, ttl)
                    })
                    .await;
                if result.is_ok() {
                    self.mail.wake();
                }
                let _ = reply.send(result.map_err(Fail::from));
            }
            Op::ConfirmReset {
                token,
                password,
                ip,
                reply,
            } => {
                let _ = reply.send(self.confirm_reset(token, password, ip).await);
            }
            Op::Emails { to, reply } => {
                let _ = reply.send(self.read(|r| {
                    communication::emails(r, to.as_deref(), EMAILS_LISTED_MAX, EMAILS_SCAN_MAX)
                }));
            }
            Op::Metrics { reply } => {
                let _ = reply.send(Ok(self.snapshot()));
            }
            media if media.is_media() => crate::media_jobs::serve(&self, media, deadline).await,
            Op::Notify(op) => self.serve_notify(op).await,
            Op::Moderation(op) => self.serve_moderation(op, deadline).await,
            Op::Account(op) => self.serve_account(op, deadline).await,
            search @ (Op::SearchMutes { .. }
            | Op::SearchPosts { .. }
            | Op::SearchAccounts { .. }
            | Op::SearchTags { .. }) => self.serve_search(search),
            social => self.serve_social(social, deadline).await,
        }
    }

    /// A user this shard owns, through the cache.
    fn user(&self, user_id: u64) -> Result<Option<User>, Fail> {
        if let Some(user) = self.users.borrow().get(&user_id) {
            return Ok(Some(User::clone(user)));
        }
        let user = self.read(|r| identity::user(r, user_id))?;
        if let Some(user) = &user {
            self.users
                .borrow_mut()
                .insert(user_id, Rc::new(user.clone()));
        }
        Ok(user)
    }

    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&nova_storage::redb::ReadTransaction) -> Result<T, CoreError>,
    ) -> Result<T, Fail> {
        let txn = self.partition.read()?;
        Ok(f(&txn)?)
    }

    /// On the email's shard: claim it, taking over a stale claim whose user never appeared.
    async fn claim_email(
        self: &Rc<Self>,
        email: identity::Email,
        user_id: u64,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let existing: Option<EmailClaim> = self.read(|r| identity::email_claim(r, &email.key()))?;
        let mut replacing = None;
        if let Some(claim) = existing.filter(|c| c.user_id != user_id) {
            // A claim older than this process belongs to a registration that died with the
            // previous one; a younger one may be a registration still in progress.
            let stale = claim.claimed_ms < self.boot_ms
                || now_ms().saturating_sub(claim.claimed_ms) > EMAIL_CLAIM_STALE_MS;
            if !stale {
                return Err(CoreError::EmailTaken.into());
            }
            let holder = claim.user_id;
            let exists = self
                .ask(shard_of(holder), deadline, |reply| Op::UserExists {
                    user_id: holder,
                    reply,
                })
                .await?;
            if exists {
                return Err(CoreError::EmailTaken.into());
            }
            replacing = Some(holder);
        }
        let now = now_ms();
        Ok(self
            .partition
            .write(move |t| identity::claim_email(t, &email, user_id, now, replacing))
            .await?)
    }

    /// On the username's shard: claim the email (on its shard), then create the user.
    async fn register(self: &Rc<Self>, new: Registration, deadline: Instant) -> Result<User, Fail> {
        debug_assert_eq!(shard_for_key(&new.username.key(), self.shards), self.id);
        if self
            .read(|r| identity::user_by_username(r, &new.username.key()))?
            .is_some()
        {
            return Err(CoreError::UsernameTaken.into());
        }
        let user_id = self.next_id();
        let email_key = new.email.key();
        let email_shard = shard_for_key(&email_key, self.shards);
        let email = new.email.clone();
        self.ask(email_shard, deadline, |reply| Op::ClaimEmail {
            email,
            user_id,
            reply,
        })
        .await?;
        let ctx = self.ctx(&new.ip);
        let email_id = self.next_id();
        let verify_ttl_ms = self.cfg.email_token_ttl_s * 1000;
        let created = self
            .partition
            .write(move |t| {
                identity::create_user(
                    t,
                    &ctx,
                    identity::NewUser {
                        id: user_id,
                        username: new.username,
                        email: new.email,
                        display_name: new.display_name,
                        password_hash: new.password_hash,
                        email_id,
                        verify_ttl_ms,
                    },
                )
            })
            .await;
        if created.is_ok() {
            // Its verification email is queued (durably): the mailer may send it.
            self.mail.wake();
        } else {
            // Best effort: a claim left behind goes stale and is taken over later.
            let key = email_key.clone();
            let _ = self
                .ask(email_shard, deadline, |reply| Op::ReleaseEmail {
                    key,
                    user_id,
                    reply,
                })
                .await;
        }
        Ok(created?)
    }

    async fn login(
        self: &Rc<Self>,
        who: LoginWho,
        password: String,
        ip: String,
        user_agent: String,
    ) -> Result<identity::Issued, Fail> {
        let user = match &who {
            LoginWho::UsernameKey(key) => self.read(|r| identity::user_by_username(r, key))?,
            LoginWho::UserId(id) => self.read(|r| identity::user(r, *id))?,
        };
        if let Some(u) = &user {
            self.limits.login_failures_account.check_blocked(&u.id)?;
        }
        let phc = user.as_ref().map_or_else(
            || self.dummy_hash.to_string(),
            |u| u.password_hash().to_string(),
        );
        let ok = self.hasher.verify(password, phc).await?;
        let user = match user {
            // Checked after the password, so a guesser learns nothing about the account.
            Some(u)
                if ok
                    && self
                        .read(|r| nova_core::moderation::suspension(r, u.id))?
                        .is_some() =>
            {
                return Err(
                    CoreError::forbidden("account_suspended", "this account is suspended").into(),
                );
            }
            Some(u) if ok => u,
            other => {
                let user_id = other.map(|u| u.id);
                let ctx = self.ctx(&ip);
                let event = AuthEvent::LoginFailed;
                let record = Record::AuthEvent {
                    ctx: &ctx,
                    event,
                    user_id,
                }
                .encode();
                self.write_recorded(record, move |t| {
                    identity::log_event(t, &ctx, event, user_id)
                })
                .await?;
                if let Some(id) = user_id {
                    self.limits.login_failures_account.fail(&id)?;
                }
                return Err(CoreError::InvalidCredentials.into());
            }
        };
        let ctx = self.ctx(&ip);
        let new = identity::NewSession {
            id: self.next_id(),
            user_id: user.id,
            user_agent,
            refresh_ttl_ms: self.cfg.refresh_token_ttl_s * 1000,
            secret: nova_core::tokens::random_bytes(),
        };
        let record = Record::Login {
            ctx: &ctx,
            new: &new,
        }
        .encode();
        Ok(self
            .write_recorded(record, move |t| identity::create_session(t, &ctx, new))
            .await?)
    }

    async fn confirm_reset(
        self: &Rc<Self>,
        token: String,
        password: String,
        ip: String,
    ) -> Result<(), Fail> {
        // Check the token before spending a hash on it; the write checks it again.
        self.read(|r| identity::check_reset_token(r, &token, now_ms()))?;
        let hash = self.hasher.hash(password).await?;
        let ctx = self.ctx(&ip);
        let (user_id, revoked) = self
            .partition
            .write(move |t| identity::confirm_password_reset(t, &ctx, &token, hash))
            .await?;
        self.users.borrow_mut().remove(&user_id);
        self.broadcast_revoked(&revoked).await;
        Ok(())
    }

    /// Start-up: move the ID generator past every stored ID and tell every shard which
    /// sessions were revoked recently enough for their access tokens to still be alive.
    pub async fn recover(self: &Rc<Self>) -> Result<(), Fail> {
        if let Some(id) = self.read(identity::highest_id)? {
            self.ids.borrow_mut().observe(id);
        }
        let since = now_ms().saturating_sub((self.cfg.access_token_ttl_s + 1) * 1000);
        let revoked: Vec<u64> = self
            .read(|r| identity::revoked_since(r, since))?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        self.broadcast_revoked(&revoked).await;
        Ok(())
    }

    /// Housekeeping every minute: rate-limit state, the deny list, auth-log retention.
    pub async fn housekeeping(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_secs(60)).await;
            if self.draining.fired() {
                return;
            }
            self.limits.tidy();
            self.tidy_revoked();
            let before =
                now_ms().saturating_sub(self.cfg.auth_log_retention_days * 24 * 3600 * 1000);
            match self.read(|r| identity::auth_logs_older_than(r, before)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "auth log pruning could not read");
                    continue;
                }
            }
            let pruned = self
                .partition
                .write(move |t| identity::prune_auth_logs(t, before, 1000))
                .await;
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "auth log pruning failed");
            }
        }
    }
}

/// Runs `fut` until `deadline`: `None` if the deadline came first. The timer is made only if
/// the future does not finish on its first poll, so requests answered at once (health,
/// local reads) pay for no timer.
pub async fn until<T>(deadline: Instant, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut timer: Option<glommio::timer::Timer> = None;
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        let timer = timer.get_or_insert_with(|| {
            glommio::timer::Timer::new(deadline.saturating_duration_since(Instant::now()))
        });
        match std::future::Future::poll(std::pin::Pin::new(timer), cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// Every future of `futures`, polled together; their outputs in order.
/// (Asks to several shards go out at once this way: each is sent at its first poll.)
pub async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (f, done) in pending.iter_mut().zip(out.iter_mut()) {
            if done.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *done = Some(v),
                    std::task::Poll::Pending => waiting = true,
                }
            }
        }
        match waiting {
            true => std::task::Poll::Pending,
            false => std::task::Poll::Ready(()),
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::Notify;

    #[test]
    fn join_all_polls_every_future_and_keeps_their_order() {
        // Ready after `n` polls, with `v`.
        struct After(u32, u32);
        impl Future for After {
            type Output = u32;
            fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
                match self.0 {
                    0 => Poll::Ready(self.1),
                    _ => {
                        self.0 -= 1;
                        Poll::Pending
                    }
                }
            }
        }
        let mut cx = Context::from_waker(Waker::noop());
        let futures = vec![After(2, 10), After(0, 20), After(1, 30)];
        let mut all = pin!(super::join_all(futures.into_iter()));
        assert_eq!(all.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(all.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(all.as_mut().poll(&mut cx), Poll::Ready(vec![10, 20, 30]));
    }

    #[test]
    fn a_waiter_holds_one_slot_however_often_polled() {
        let notify = Notify::default();
        let mut cx = Context::from_waker(Waker::noop());
        {
            let mut wait = pin!(notify.wait());
            for _ in 0..1000 {
                assert_eq!(wait.as_mut().poll(&mut cx), Poll::Pending);
            }
            assert_eq!(notify.waiters.borrow().wakers.len(), 1);
        }
        // Dropped: its slot is reused.
        let mut a = pin!(notify.wait());
        let mut b = pin!(notify.wait());
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(notify.waiters.borrow().wakers.len(), 2);
        notify.fire();
        assert_eq!(a.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(b.as_mut().poll(&mut cx), Poll::Ready(()));
        assert!(notify.waiters.borrow().wakers.iter().all(Option::is_none));
    }
}
