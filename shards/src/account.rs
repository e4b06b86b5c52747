//! Account export and deletion as a shard runs them (routes in `api_account.rs`).
//!
//! Deletion: the user's shard checks the password, then erases the account in one
//! transaction (`identity::erase_user`, `erasure::begin`, an `AccountErased` outbox row for
//! every other shard) and answers once that is durable; sessions are refused everywhere at
//! once (`broadcast_revoked`). Every shard then drains its erasure jobs in the background
//! (`erasure_loop`), one bounded transaction per step, pausing between steps so requests are
//! never starved.
//!
//! Export: the connection's shard streams a zip (`zip.rs`) through a bounded channel while it
//! gathers the parts page by page from the shards owning them (`AccountOp::Part`), so memory
//! stays at a page and a few chunks whatever the user's size. The user's shard admits one
//! export per user at a time and one per `export_interval_s` (`ExportBegin`/`ExportEnd`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nova_core::erasure::{self, EventIds};
use nova_core::events::{self, Event};
use nova_core::identity::{self, Context};
use nova_core::social::Relation;
use nova_core::{content, media, messages, profiles, shard_of, CoreError};
use nova_protocol::{self as wire, rfc3339};

use crate::error::Fail;
use crate::mesh::{Op, Reply};
use crate::shard::{now_ms, Shard};
use crate::zip::ZipWriter;

/// Items of one export page (one mesh round trip).
const EXPORT_PAGE_MAX: usize = 200;
/// Chunks waiting between the export's producer and the connection.
const EXPORT_CHUNKS_QUEUED_MAX: usize = 4;
/// A blob is sent in chunks of this size.
const BLOB_CHUNK_BYTES: usize = 256 * 1024;
/// How long one part request of an export may take.
const EXPORT_PART_TIMEOUT: Duration = Duration::from_secs(10);
/// The erasure loop looks for jobs this often (and at once when kicked).
const ERASURE_PERIOD: Duration = Duration::from_millis(500);
/// Pause between two erasure steps of a shard, so a big erasure leaves room for requests.
const ERASURE_PAUSE: Duration = Duration::from_millis(2);
/// Users whose erasure one pass of the loop works on.
const ERASURE_USERS_PER_PASS: usize = 16;
/// An export slot is considered abandoned after this long (a producer that died).
const EXPORT_SLOT_STALE_S: u64 = 6 * 3600;

/// Account operations, run on the shard given by the caller.
pub enum AccountOp {
    /// On the user's shard: check the password and erase the account.
    Delete {
        user_id: u64,
        password: String,
        ip: String,
        reply: Reply<()>,
    },
    /// On the user's shard: may the user start an export now?
    ExportBegin { user_id: u64, reply: Reply<()> },
    /// On the user's shard: the export ended.
    ExportEnd { user_id: u64, reply: Reply<()> },
    /// On every shard: forget a deleted username in the name cache (`Shard::names`, which
    /// otherwise never expires), so a reused name maps to its new owner.
    ForgetName { key: String, reply: Reply<()> },
    /// One page of one part of a user's export, from the shard owning it.
    Part {
        user_id: u64,
        part: Part,
        after: Option<u64>,
        reply: Reply<Page>,
    },
}

/// What an export page is of, and where it lives.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// The user's shard: one item, `profile.json`.
    Profile,
    /// The user's shard.
    Posts,
    /// Every shard: the user's comments there.
    Comments,
    /// The user's shard: the conversations of its inbox (`ids` only).
    Conversations,
    /// The conversation's shard: its head (first page only) and messages.
    Messages { conversation: u64 },
    /// The user's shard.
    Relation(Relation),
    /// The user's shard: media records and their originals' blobs.
    Media,
}

/// One page: JSON items (made where the data lives), ids, blobs and where to go on.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<String>,
    pub ids: Vec<u64>,
    /// (media id, blob id, bytes) of originals.
    pub blobs: Vec<(u64, String, u64)>,
    /// The conversation, on its first page.
    pub head: Option<String>,
    pub next: Option<u64>,
}

/// Per-shard account state: export slots of this shard's users, the erasure loop's wake-up.
#[derive(Default)]
pub struct Accounts {
    /// user -> (running, when the last export started, s)
    exports: RefCell<HashMap<u64, (bool, u64)>>,
    kicked: Cell<bool>,
    waiter: RefCell<Option<std::task::Waker>>,
}

impl Accounts {
    pub fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    async fn kicked(&self) {
        std::future::poll_fn(|cx| {
            if self.kicked.replace(false) {
                std::task::Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await
    }
}

impl Shard {
    pub(crate) async fn serve_account(self: &Rc<Self>, op: AccountOp, deadline: Instant) {
        match op {
            AccountOp::Delete {
                user_id,
                password,
                ip,
                reply,
            } => {
                let _ = reply.send(self.delete_account(user_id, password, ip, deadline).await);
            }
            AccountOp::ExportBegin { user_id, reply } => {
                let _ = reply.send(self.export_begin(user_id));
            }
            AccountOp::ExportEnd { user_id, reply } => {
                if let Some(slot) = self.account.exports.borrow_mut().get_mut(&user_id) {
                    slot.0 = false;
                }
                let _ = reply.send(Ok(()));
            }
            AccountOp::ForgetName { key, reply } => {
                self.names.borrow_mut().remove(&key);
                let _ = reply.send(Ok(()));
            }
            AccountOp::Part {
                user_id,
                part,
                after,
                reply,
            } => {
                let _ = reply.send(self.export_part(user_id, part, after));
            }
        }
    }

    async fn delete_account(
        self: &Rc<Self>,
        user_id: u64,
        password: String,
        ip: String,
        deadline: Instant,
    ) -> Result<(), Fail> {
        let user = self
            .read(|r| identity::user(r, user_id))?
            .ok_or(CoreError::NotFound)?;
        self.limits.login_failures_account.check_blocked(&user_id)?;
        let ok = self
            .hasher
            .verify(password, user.password_hash().to_string())
            .await?;
        if !ok {
            self.limits.login_failures_account.fail(&user_id)?;
            return Err(CoreError::forbidden(
                "wrong_password",
                "the password is not the account's password",
            )
            .into());
        }
        let now = now_ms();
        let ctx = Context {
            now_ms: now,
            ip,
            log_id: self.next_id(),
        };
        let changed_id = self.next_id();
        let event_id = self.next_id();
        let targets: Vec<usize> = (0..self.shards).filter(|s| *s != self.id).collect();
        let to = targets.clone();
        let (sessions, event) = self
            .partition
            .write(move |t| {
                let erased = identity::erase_user(
                    t,
                    &ctx,
                    user_id,
                    changed_id,
                    &[crate::social::DSB_NAMESPACE],
                )?;
                erasure::begin(t, &erased, now)?;
                let event = Event::AccountErased {
                    user_id,
                    email_key: erased.email_key.clone(),
                };
                events::record(t, event_id, now, &event, &to)?;
                Ok::<_, CoreError>((erased.sessions, event))
            })
            .await?;
        self.users.borrow_mut().remove(&user_id);
        self.unstream_user(user_id);
        self.broadcast_revoked(&sessions).await;
        // The name caches are memory only (a restart empties them all), so telling every
        // shard now is enough; a shard too busy to hear it keeps a stale entry, logged.
        let key = user.username.to_ascii_lowercase();
        for target in 0..self.shards {
            let key = key.clone();
            let forgot = self
                .ask(target, deadline, |reply| {
                    Op::Account(AccountOp::ForgetName { key, reply })
                })
                .await;
            if let Err(e) = forgot {
                tracing::warn!(shard = target, error = %e, "a name cache kept an erased username");
            }
        }
        crate::briefs::forget_everywhere(self, user_id, deadline).await;
        // The other shards start their part now; what this misses, the relay sends.
        self.deliver_now(event_id, event, &targets, deadline).await;
        self.account.kick();
        tracing::info!(user = user_id, "account erased; erasure jobs started");
        Ok(())
    }

    fn export_begin(&self, user_id: u64) -> Result<(), Fail> {
        let now_s = now_ms() / 1000;
        let interval = self.cfg.export_interval_s;
        let mut exports = self.account.exports.borrow_mut();
        // Forget finished exports past the interval, and running ones whose producer must
        // have died (a slot is memory only: a restart forgets them all).
        exports.retain(|_, (running, at)| {
            let age = now_s.saturating_sub(*at);
            if *running {
                age < EXPORT_SLOT_STALE_S
            } else {
                age < interval
            }
        });
        if let Some((running, at)) = exports.get(&user_id) {
            let wait = interval.saturating_sub(now_s.saturating_sub(*at));
            if *running || wait > 0 {
                return Err(Fail::RateLimited {
                    retry_after_s: wait.max(1),
                    limit: 1,
                });
            }
        }
        exports.insert(user_id, (true, now_s));
        Ok(())
    }

    fn export_part(&self, user_id: u64, part: Part, after: Option<u64>) -> Result<Page, Fail> {
        let n = EXPORT_PAGE_MAX;
        let mut page = Page::default();
        match part {
            Part::Profile => {
                let found = self.read(|r| {
                    let Some(user) = identity::user(r, user_id)? else {
                        return Ok(None);
                    };
                    let avatar = profiles::avatar(r, user_id)?;
                    let digest = profiles::digest(r, user_id)?;
                    Ok(Some((user, profiles::all(r, user_id)?, avatar, digest)))
                })?;
                let (user, (profile, prefs, settings, feed), avatar, digest) =
                    found.ok_or(CoreError::NotFound)?;
                let view = wire::ExportProfile {
                    id: user.id.to_string(),
                    username: user.username,
                    email: user.email,
                    email_verified: user.email_verified,
                    display_name: user.display_name,
                    created_at: rfc3339(user.created_ms),
                    bio: profile.bio,
                    links: profile.links,
                    avatar_media_id: avatar.map(|id| id.to_string()),
                    default_visibility: prefs.default_visibility.as_str(),
                    language: prefs.language,
                    private: settings.private,
                    messages_from: settings.messages_from.as_str(),
                    email_digest: digest.as_str(),
                    hide_replies: feed.hide_replies,
                    muted_words: feed.muted_words,
                };
                page.items.push(json(&view));
            }
            Part::Posts => {
                let posts = self.read(|r| {
                    // Newest first, below `after`.
                    let ids = content::user_post_ids(r, user_id, after, None, n)?;
                    let mut out = Vec::with_capacity(ids.len());
                    for id in ids {
                        if let Some(p) = content::post(r, id)? {
                            out.push(p);
                        }
                    }
                    Ok(out)
                })?;
                for p in &posts {
                    page.items.push(json(&wire::ExportPost {
                        id: p.id.to_string(),
                        text: p.text.clone(),
                        visibility: p.visibility.as_str(),
                        reply_to: p.reply_to.map(|r| r.to_string()),
                        hashtags: p.hashtags.clone(),
                        created_at: rfc3339(p.created_ms),
                        edited_at: p.edited_ms.map(rfc3339),
                    }));
                }
                page.next = posts.last().map(|p| p.id).filter(|_| posts.len() >= n);
            }
            Part::Comments => {
                let comments = self.read(|r| content::comments_by(r, user_id, after, n))?;
                for c in &comments {
                    page.items.push(json(&wire::ExportComment {
                        id: c.id.to_string(),
                        post_id: c.post_id.to_string(),
                        parent_id: c.parent.map(|p| p.to_string()),
                        text: c.text.clone(),
                        created_at: rfc3339(c.created_ms),
                        edited_at: c.edited_ms.map(rfc3339),
                    }));
                }
                page.next = comments
                    .last()
                    .map(|c| c.id)
                    .filter(|_| comments.len() >= n);
            }
            Part::Conversations => {
                page.ids = self.read(|r| messages::conversations_of(r, user_id, after, n))?;
                page.next = page.ids.last().copied().filter(|_| page.ids.len() >= n);
            }
            Part::Messages { conversation } => {
                let found =
                    self.read(|r| messages::messages_for(r, conversation, user_id, after, n))?;
                let Some((c, list)) = found else {
                    return Ok(page);
                };
                if after.is_none() {
                    page.head = Some(json(&wire::ExportConversation {
                        id: c.id.to_string(),
                        participants: c.participants.iter().map(u64::to_string).collect(),
                        created_at: rfc3339(c.created_ms),
                    }));
                }
                for m in &list {
                    page.items.push(json(&wire::ExportMessage {
                        id: m.id.to_string(),
                        sender_id: m.sender.to_string(),
                        sender_username: m.sender_username.clone(),
                        text: m.text.clone(),
                        media_ids: m.media_ids.iter().map(u64::to_string).collect(),
                        created_at: rfc3339(m.created_ms),
                        edited_at: m.edited_ms.map(rfc3339),
                    }));
                }
                page.next = list.last().map(|m| m.id).filter(|_| list.len() >= n);
            }
            Part::Relation(which) => {
                let rows =
                    self.read(|r| nova_core::social::relation_page(r, user_id, which, after, n))?;
                for (other, ms) in &rows {
                    page.items.push(json(&wire::ExportRelation {
                        user_id: other.to_string(),
                        since: rfc3339(*ms),
                    }));
                }
                page.next = rows.last().map(|(o, _)| *o).filter(|_| rows.len() >= n);
            }
            Part::Media => {
                let list = self.read(|r| media::of_owner(r, user_id, after, n))?;
                for v in &list {
                    let m = &v.media;
                    page.items.push(json(&wire::ExportMedia {
                        id: m.id.to_string(),
                        kind: m.kind.as_str(),
                        state: m.state.as_str(),
                        private: m.private,
                        bytes: m.original.bytes,
                        sha256: m.original.id.clone(),
                        created_at: rfc3339(m.created_ms),
                        file: Some(format!("media/{}", m.id)),
                    }));
                    page.blobs
                        .push((m.id, m.original.id.clone(), m.original.bytes));
                }
                page.next = list.last().map(|v| v.media.id).filter(|_| list.len() >= n);
            }
        }
        Ok(page)
    }

    /// The erasure loop: works through this shard's erasure jobs, one bounded transaction per
    /// step, until none is left; then sleeps until kicked or the next period.
    pub async fn erasure_loop(self: Rc<Self>) {
        self.index_users().await;
        loop {
            futures_lite::future::or(glommio::timer::sleep(ERASURE_PERIOD), self.account.kicked())
                .await;
            let users = match self.read(|r| erasure::pending(r, ERASURE_USERS_PER_PASS)) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(error = %e, "erasure: reading the jobs failed");
                    continue;
                }
            };
            for user in users {
                self.erase_steps(user).await;
            }
        }
    }

    /// Builds the per-user comment and like indexes over rows older than them (once per data
    /// dir, in steps like the erasure's), before any erasure job runs.
    async fn index_users(self: &Rc<Self>) {
        match self.read(content::users_indexed) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the user index state failed");
                return;
            }
        }
        let batch = self.cfg.erasure_batch_rows.max(1);
        loop {
            let more = self
                .partition
                .write(move |t| content::index_users_step(t, batch))
                .await;
            match more {
                Ok(true) => glommio::timer::sleep(ERASURE_PAUSE).await,
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "building the user index failed; next start retries");
                    return;
                }
            }
        }
    }

    /// Runs `user`'s erasure steps here until the job is done or a step fails (the next
    /// pass tries again).
    async fn erase_steps(self: &Rc<Self>, user: u64) {
        let batch = self.cfg.erasure_batch_rows.max(1);
        loop {
            // One id per post a step may delete, and one per shard it may send work to.
            let ids: Vec<u64> = (0..batch + self.shards).map(|_| self.next_id()).collect();
            let lim = erasure::Limits {
                here: self.id,
                shards: self.shards,
                batch,
                now_ms: now_ms(),
            };
            let stepped = self
                .partition
                .write(move |t| erasure::step(t, user, &lim, &mut EventIds(ids)))
                .await;
            // A step removes posts, copies and relations of others too.
            self.feeds.forget_all();
            match stepped {
                Ok(s) => {
                    if !s.blobs.is_empty() {
                        self.media.release(self.id, s.blobs).await;
                    }
                    if s.events {
                        self.relay.kick();
                    }
                    if s.done {
                        tracing::info!(user, shard = self.id, "erasure finished here");
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(user, error = %e, "erasure step failed; will retry");
                    return;
                }
            }
            glommio::timer::sleep(ERASURE_PAUSE).await;
        }
    }
}

fn json(value: &impl serde::Serialize) -> String {
    String::from_utf8_lossy(&wire::to_json(value)).into_owned()
}

/// A chunk for the body channel.
type Chunk = Result<Bytes, std::io::Error>;

/// Why the export stopped early (the client then sees a cut body).
#[derive(Debug)]
enum Stop {
    /// The client went away.
    Gone,
    Failed(String),
}

impl From<crate::zip::ZipFull> for Stop {
    fn from(e: crate::zip::ZipFull) -> Stop {
        Stop::Failed(e.to_string())
    }
}

impl From<Fail> for Stop {
    fn from(e: Fail) -> Stop {
        Stop::Failed(e.to_string())
    }
}

/// Writes one export into `tx`, entry by entry. The caller ends the export slot.
pub(crate) async fn produce_export(
    shard: Rc<Shard>,
    user_id: u64,
    tx: flume::Sender<Chunk>,
) -> Result<(), String> {
    let mut out = Out {
        tx,
        zip: ZipWriter::default(),
    };
    match write_export(&shard, user_id, &mut out).await {
        Ok(()) => Ok(()),
        Err(Stop::Gone) => Ok(()),
        Err(Stop::Failed(why)) => {
            let _ = out
                .tx
                .send_async(Err(std::io::Error::other(why.clone())))
                .await;
            Err(why)
        }
    }
}

struct Out {
    tx: flume::Sender<Chunk>,
    zip: ZipWriter,
}

impl Out {
    async fn raw(&mut self, bytes: Bytes) -> Result<(), Stop> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.tx.send_async(Ok(bytes)).await.map_err(|_| Stop::Gone)
    }

    async fn begin(&mut self, name: &str) -> Result<(), Stop> {
        let head = self.zip.begin(name)?;
        self.raw(head).await
    }

    async fn data(&mut self, bytes: Bytes) -> Result<(), Stop> {
        self.zip.data(&bytes)?;
        self.raw(bytes).await
    }

    async fn text(&mut self, s: &str) -> Result<(), Stop> {
        self.data(Bytes::copy_from_slice(s.as_bytes())).await
    }

    /// Items as the elements of a JSON array already opened; `first` says whether one was
    /// written before.
    async fn items(&mut self, items: &[String], first: &mut bool) -> Result<(), Stop> {
        for item in items {
            if !*first {
                self.text(",").await?;
            }
            *first = false;
            self.text(item).await?;
        }
        Ok(())
    }
}

async fn part(
    shard: &Rc<Shard>,
    target: usize,
    user_id: u64,
    part: Part,
    after: Option<u64>,
) -> Result<Page, Stop> {
    let deadline = Instant::now() + EXPORT_PART_TIMEOUT;
    Ok(shard
        .ask(target, deadline, |reply| {
            Op::Account(AccountOp::Part {
                user_id,
                part,
                after,
                reply,
            })
        })
        .await?)
}

/// Every page of a part on one shard, as array elements.
async fn all_pages(
    shard: &Rc<Shard>,
    out: &mut Out,
    target: usize,
    user_id: u64,
    which: Part,
    first: &mut bool,
) -> Result<(), Stop> {
    let mut after = None;
    loop {
        let page = part(shard, target, user_id, which, after).await?;
        out.items(&page.items, first).await?;
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

async fn write_export(shard: &Rc<Shard>, user_id: u64, out: &mut Out) -> Result<(), Stop> {
    let home = shard_of(user_id);

    out.begin("profile.json").await?;
    let profile = part(shard, home, user_id, Part::Profile, None).await?;
    for item in &profile.items {
        out.text(item).await?;
    }

    out.begin("posts.json").await?;
    out.text("[").await?;
    all_pages(shard, out, home, user_id, Part::Posts, &mut true).await?;
    out.text("]").await?;

    out.begin("comments.json").await?;
    out.text("[").await?;
    let mut first = true;
    for target in 0..shard.shards {
        all_pages(shard, out, target, user_id, Part::Comments, &mut first).await?;
    }
    out.text("]").await?;

    out.begin("messages.json").await?;
    out.text("[").await?;
    let mut first_conv = true;
    let mut after = None;
    loop {
        let convs = part(shard, home, user_id, Part::Conversations, after).await?;
        for conv in &convs.ids {
            let target = shard_of(*conv);
            let mut m_after = None;
            let mut opened = false;
            let mut first_msg = true;
            loop {
                let which = Part::Messages {
                    conversation: *conv,
                };
                let page = part(shard, target, user_id, which, m_after).await?;
                if let Some(head) = &page.head {
                    if !first_conv {
                        out.text(",").await?;
                    }
                    first_conv = false;
                    opened = true;
                    out.text("{\"conversation\":").await?;
                    out.text(head).await?;
                    out.text(",\"messages\":[").await?;
                }
                if !opened {
                    break;
                }
                out.items(&page.items, &mut first_msg).await?;
                match page.next {
                    Some(n) => m_after = Some(n),
                    None => break,
                }
            }
            if opened {
                out.text("]}").await?;
            }
        }
        match convs.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    out.text("]").await?;

    out.begin("follows.json").await?;
    let lists = [
        ("following", Relation::Following),
        ("followers", Relation::Followers),
        ("blocks", Relation::Blocks),
        ("mutes", Relation::Mutes),
    ];
    for (i, (name, which)) in lists.into_iter().enumerate() {
        let open = if i == 0 { "{" } else { "," };
        out.text(&format!("{open}\"{name}\":[")).await?;
        all_pages(shard, out, home, user_id, Part::Relation(which), &mut true).await?;
        out.text("]").await?;
    }
    out.text("}").await?;

    out.begin("media.json").await?;
    out.text("[").await?;
    all_pages(shard, out, home, user_id, Part::Media, &mut true).await?;
    out.text("]").await?;

    // The originals, a second walk over the records (nothing is collected in memory).
    let mut after = None;
    loop {
        let page = part(shard, home, user_id, Part::Media, after).await?;
        for (id, blob, bytes) in &page.blobs {
            out.begin(&format!("media/{id}")).await?;
            blob_into(shard, out, home, blob, *bytes).await?;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let tail = std::mem::take(&mut out.zip).finish()?;
    out.raw(tail).await
}

/// Streams one blob of `home`'s store into the open entry.
async fn blob_into(
    shard: &Rc<Shard>,
    out: &mut Out,
    home: usize,
    blob: &str,
    bytes: u64,
) -> Result<(), Stop> {
    let path = shard
        .media
        .blob_path(home, blob)
        .ok_or_else(|| Stop::Failed(format!("no blob store for shard {home}")))?;
    let file = glommio::io::BufferedFile::open(&path)
        .await
        .map_err(|e| Stop::Failed(format!("blob {blob}: {e}")))?;
    let mut pos = 0u64;
    while pos < bytes {
        let n = (bytes - pos).min(BLOB_CHUNK_BYTES as u64) as usize;
        let buf = file
            .read_at(pos, n)
            .await
            .map_err(|e| Stop::Failed(format!("blob {blob}: {e}")))?;
        if buf.is_empty() {
            let _ = file.close().await;
            return Err(Stop::Failed(format!(
                "blob {blob} is shorter than its record"
            )));
        }
        pos += buf.len() as u64;
        out.data(Bytes::copy_from_slice(&buf)).await?;
    }
    let _ = file.close().await;
    Ok(())
}

/// Starts an export for `user_id` on the connection's shard: the producer runs as a task and
/// the answer's body reads its channel.
pub(crate) fn start_export(shard: &Rc<Shard>, user_id: u64) -> crate::body::Chunks {
    let (tx, rx) = flume::bounded::<Chunk>(EXPORT_CHUNKS_QUEUED_MAX);
    let me = Rc::clone(shard);
    glommio::spawn_local(async move {
        if let Err(why) = produce_export(Rc::clone(&me), user_id, tx).await {
            tracing::warn!(user = user_id, error = %why, "export failed");
        }
        let deadline = Instant::now() + EXPORT_PART_TIMEOUT;
        let ended = me
            .ask(shard_of(user_id), deadline, |reply| {
                Op::Account(AccountOp::ExportEnd { user_id, reply })
            })
            .await;
        if let Err(e) = ended {
            tracing::warn!(user = user_id, error = %e, "ending the export slot failed");
        }
    })
    .detach();
    Box::pin(rx.into_stream())
}
