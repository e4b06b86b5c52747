//! Account erasure (tables `erasure_jobs`, `erasure_work`): the durable, batched work of
//! removing a deleted user's data from one shard.
//!
//! `DELETE /v1/me` erases the account itself on the user's shard (`identity::erase_user`:
//! sessions revoked, user row and username gone) and, in the same transaction, starts a job
//! here (`begin`) and records `Event::AccountErased` for every other shard, which starts a
//! job there when applied (`on_erased`). A job is a row naming a stage and a cursor; the
//! engine calls `step` again and again, each call one write transaction touching at most
//! `Limits::batch` rows, until the job is gone. So erasing a user with 100,000 posts is many
//! small transactions, never one giant one, and a crash resumes where the last commit left.
//!
//! The work itself is done by the modules owning the tables (`content::erase_comments`,
//! `social::forget`, `messages::erase_sender`, ...): this module only orders the stages.
//! What another shard must do (forget a relation, anonymise the user's messages in a
//! conversation living there) travels as `Event::ErasureWork` through the outbox and lands
//! in that shard's `erasure_work` list, drained by its own job for the user.

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::events::{self, Event};
use crate::{
    communication, content, identity, media, messages, notifications, profiles, push, shard_of,
    social, CoreError,
};

/// erased user id -> Job : the erasure still to do on this shard
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("erasure_jobs");
/// (erased user, kind, item) -> cursor : work other shards asked of this one
const WORK: TableDefinition<(u64, u8, u64), u64> = TableDefinition::new("erasure_work");

/// `erasure_work` kind: a local user whose relations with the erased user go
/// (`social::forget`); the item is that user.
pub const WORK_RELATION: u8 = 0;
/// `erasure_work` kind: a conversation on this shard the erased user leaves, its messages
/// anonymised (`messages::erase_sender`); the item is the conversation.
pub const WORK_CONVERSATION: u8 = 1;
/// Items one `ErasureWork` event carries at most.
pub const WORK_ITEMS_PER_EVENT_MAX: usize = 512;
/// Emails of each state looked at for the erased address.
const EMAILS_SCANNED_MAX: usize = 10_000;

/// The stages, in order. The user's own shard runs them all; every other shard starts at
/// `LocalFollowers`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Profile, settings, push subscriptions, queued emails, notifications received, feed.
    Account,
    /// The user's posts, through the post delete path (copies in feeds everywhere, comments
    /// and likes on them, the search index through the event).
    Posts,
    /// Follows, followers, blocks, mutes, follow requests, and their mirrors elsewhere.
    Relations,
    /// Uploaded media; blobs nobody else uses are freed.
    Media,
    /// The user leaves every conversation; its messages are anonymised where they live.
    Conversations,
    /// Local users who follow the erased user.
    LocalFollowers,
    /// Mutes of the user and follow requests it made (only a table walk finds them).
    Scans,
    /// Notifications the user caused (a table walk).
    Notifications,
    /// The user's comments on posts of this shard.
    Comments,
    /// The user's likes of posts and comments of this shard.
    Likes,
    /// Work other shards asked for (`erasure_work`).
    Work,
    /// The user's events in this shard's history (`event_store`): post and message texts,
    /// relations, notifications (a walk, `events::erase_revealing`). Last, so that what the
    /// stages before recorded is looked at too. Variants go only at the end: a job row
    /// stores the stage by its position.
    Events,
}

impl Stage {
    fn next(self) -> Option<Stage> {
        use Stage::*;
        Some(match self {
            Account => Posts,
            Posts => Relations,
            Relations => Media,
            Media => Conversations,
            Conversations => LocalFollowers,
            LocalFollowers => Scans,
            Scans => Notifications,
            Notifications => Comments,
            Comments => Likes,
            Likes => Work,
            Work => Events,
            Events => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    pub user: u64,
    /// The erased user's own shard (runs every stage).
    pub home: bool,
    /// The erased user's email key, so queued emails to it go.
    pub email_key: String,
    pub stage: Stage,
    /// Where the stage goes on (its meaning is the stage's).
    pub cursor: (u64, u64, u64),
    pub started_ms: u64,
    /// Rows handled so far (logs, tests).
    pub rows: u64,
}

/// Where a `step` runs and how much it may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub here: usize,
    pub shards: usize,
    /// Rows one step touches at most (roughly: each unit is a row and what hangs on it).
    pub batch: usize,
    pub now_ms: u64,
}

/// What a step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stepped {
    /// The job is finished (its row is gone).
    pub done: bool,
    /// Blobs no longer referenced, to delete after the commit.
    pub blobs: Vec<String>,
    /// Outbox rows were written (the relay should run).
    pub events: bool,
    pub rows: usize,
}

fn load(txn: &WriteTransaction, user: u64) -> Result<Option<Job>, CoreError> {
    let t = txn.open_table(JOBS)?;
    let v = t.get(user)?;
    v.map(|v| decode(v.value())).transpose()
}

fn save(txn: &WriteTransaction, job: &Job) -> Result<(), CoreError> {
    txn.open_table(JOBS)?
        .insert(job.user, encode(job).as_slice())?;
    Ok(())
}

fn new_job(user: u64, home: bool, email_key: &str, stage: Stage, now_ms: u64) -> Job {
    Job {
        user,
        home,
        email_key: email_key.to_string(),
        stage,
        cursor: (0, 0, 0),
        started_ms: now_ms,
        rows: 0,
    }
}

/// On the erased user's shard, in the transaction that erased the account: starts the job
/// and releases the email claim if this shard holds it.
pub fn begin(
    txn: &WriteTransaction,
    erased: &identity::Erased,
    now_ms: u64,
) -> Result<(), CoreError> {
    let user = erased.user.id;
    identity::release_email(txn, &erased.email_key, user)?;
    if load(txn, user)?.is_none() {
        save(
            txn,
            &new_job(user, true, &erased.email_key, Stage::Account, now_ms),
        )?;
    }
    Ok(())
}

/// Applying `Event::AccountErased` on another shard: starts this shard's job and releases
/// the email claim if this shard holds it.
pub fn on_erased(
    txn: &WriteTransaction,
    user: u64,
    email_key: &str,
    now_ms: u64,
) -> Result<(), CoreError> {
    identity::release_email(txn, email_key, user)?;
    match load(txn, user)? {
        Some(_) => Ok(()),
        None => save(
            txn,
            &new_job(user, false, email_key, Stage::LocalFollowers, now_ms),
        ),
    }
}

/// Applying `Event::ErasureWork`: queues the items; a job that had finished starts again
/// at `Work`, and so does one already past it (walking the history at `Events`), which
/// would otherwise end with the items never drained.
pub fn add_work(
    txn: &WriteTransaction,
    user: u64,
    items: &[(u8, u64)],
    now_ms: u64,
) -> Result<(), CoreError> {
    let mut work = txn.open_table(WORK)?;
    for (kind, item) in items {
        if work.get((user, *kind, *item))?.is_none() {
            work.insert((user, *kind, *item), 0)?;
        }
    }
    drop(work);
    match load(txn, user)? {
        None => save(txn, &new_job(user, false, "", Stage::Work, now_ms))?,
        Some(mut job) if job.stage > Stage::Work && !items.is_empty() => {
            job.stage = Stage::Work;
            job.cursor = (0, 0, 0);
            save(txn, &job)?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// Users whose erasure is not finished on this shard (at most `limit`).
pub fn pending(read: &ReadTransaction, limit: usize) -> Result<Vec<u64>, CoreError> {
    let t = match read.open_table(JOBS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    t.iter()?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value()).map_err(Into::into))
        .collect()
}

/// The job for `user` on this shard, if one is running.
pub fn job(read: &ReadTransaction, user: u64) -> Result<Option<Job>, CoreError> {
    let t = match read.open_table(JOBS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = t.get(user)?;
    v.map(|v| decode(v.value())).transpose()
}

/// Event ids the engine reserved for one step (`PostDeleted`, `ErasureWork`); a step stops
/// early when they run out.
pub struct EventIds(pub Vec<u64>);

impl EventIds {
    fn take(&mut self) -> Option<u64> {
        self.0.pop()
    }
}

/// Does one bounded piece of `user`'s erasure on this shard in the caller's transaction.
pub fn step(
    txn: &WriteTransaction,
    user: u64,
    lim: &Limits,
    ids: &mut EventIds,
) -> Result<Stepped, CoreError> {
    let Some(mut job) = load(txn, user)? else {
        return Ok(Stepped {
            done: true,
            ..Stepped::default()
        });
    };
    let mut out = Stepped::default();
    let n = lim.batch.max(1);
    let others: Vec<usize> = (0..lim.shards).filter(|s| *s != lim.here).collect();
    // Does the stage have more to do?
    let more = match job.stage {
        Stage::Account => {
            // The one-shot parts run in the stage's first step only (cursor.0 marks them).
            if job.cursor.0 == 0 {
                profiles::erase_user(txn, user)?;
                if !job.email_key.is_empty() {
                    communication::drop_emails_to(
                        txn,
                        &job.email_key,
                        job.started_ms,
                        EMAILS_SCANNED_MAX,
                    )?;
                }
                notifications::erase_recipient(txn, user)?;
                communication::forget_digest(txn, user)?;
                job.cursor.0 = 1;
            }
            let subs = push::erase_user(txn, user, n)?;
            let feed = social::erase_feed(txn, user, n)?;
            out.rows = subs + feed;
            subs >= n || feed >= n
        }
        Stage::Posts => {
            let posts = content::post_ids_in(txn, user, n)?;
            let mut done = 0;
            for post_id in &posts {
                let Some(event_id) = ids.take() else {
                    break;
                };
                content::delete_post(txn, user, *post_id)?;
                social::unfan(txn, *post_id)?;
                let event = Event::PostDeleted {
                    post_id: *post_id,
                    author: user,
                };
                events::record(txn, event_id, lim.now_ms, &event, &others)?;
                done += 1;
            }
            out.events |= done > 0 && !others.is_empty();
            out.rows = done;
            done < posts.len() || posts.len() >= n
        }
        Stage::Relations => {
            let touched = social::erase_relations(txn, user, n)?;
            out.rows = touched.len();
            let mut remote: Vec<Vec<(u8, u64)>> = vec![Vec::new(); lim.shards];
            for other in &touched {
                let s = shard_of(*other);
                if s == lim.here {
                    social::forget(txn, *other, user)?;
                } else if let Some(list) = remote.get_mut(s) {
                    list.push((WORK_RELATION, *other));
                }
            }
            send_work(txn, user, remote, lim, ids, &mut out)?;
            !touched.is_empty()
        }
        Stage::Media => {
            let (count, mut blobs) = media::erase_owner(txn, user, n)?;
            out.blobs.append(&mut blobs);
            out.rows = count;
            count >= n
        }
        Stage::Conversations => {
            let convs = messages::erase_inbox(txn, user, n.min(WORK_ITEMS_PER_EVENT_MAX))?;
            out.rows = convs.len();
            let mut remote: Vec<Vec<(u8, u64)>> = vec![Vec::new(); lim.shards];
            let mut local = Vec::new();
            for conv in &convs {
                let s = shard_of(*conv);
                if s == lim.here {
                    local.push((WORK_CONVERSATION, *conv));
                } else if let Some(list) = remote.get_mut(s) {
                    list.push((WORK_CONVERSATION, *conv));
                }
            }
            add_work(txn, user, &local, lim.now_ms)?;
            send_work(txn, user, remote, lim, ids, &mut out)?;
            !convs.is_empty()
        }
        Stage::LocalFollowers => {
            let count = social::erase_local_followers(txn, user, n)?;
            out.rows = count;
            count >= n
        }
        Stage::Scans => {
            let next = social::erase_mentions_scan(txn, user, job.cursor, n)?;
            out.rows = n;
            match next {
                Some(c) => {
                    job.cursor = c;
                    true
                }
                None => false,
            }
        }
        Stage::Notifications => {
            let from = (job.cursor.0, job.cursor.1);
            let next = notifications::erase_actor_scan(txn, user, from, n)?;
            out.rows = n;
            match next {
                Some((a, b)) => {
                    job.cursor = (a, b, 0);
                    true
                }
                None => false,
            }
        }
        Stage::Comments => {
            let count = content::erase_comments(txn, user, n)?;
            out.rows = count;
            count >= n
        }
        Stage::Likes => {
            let count = content::erase_likes(txn, user, n)?;
            out.rows = count;
            count >= n
        }
        Stage::Work => {
            let (units, more) = drain_work(txn, user, n)?;
            out.rows = units;
            more
        }
        Stage::Events => {
            let from = (job.cursor.0, job.cursor.1);
            let (_, next) = events::erase_revealing(txn, user, from, n)?;
            out.rows = n;
            match next {
                Some((a, b)) => {
                    job.cursor = (a, b, 0);
                    true
                }
                None => false,
            }
        }
    };
    job.rows = job.rows.saturating_add(out.rows as u64);
    if more {
        save(txn, &job)?;
        return Ok(out);
    }
    match job.stage.next() {
        Some(stage) => {
            job.stage = stage;
            job.cursor = (0, 0, 0);
            save(txn, &job)?;
        }
        None => {
            txn.open_table(JOBS)?.remove(user)?;
            out.done = true;
        }
    }
    Ok(out)
}

/// Records one `ErasureWork` event per shard with items (chunks of
/// `WORK_ITEMS_PER_EVENT_MAX`).
fn send_work(
    txn: &WriteTransaction,
    user: u64,
    per_shard: Vec<Vec<(u8, u64)>>,
    lim: &Limits,
    ids: &mut EventIds,
    out: &mut Stepped,
) -> Result<(), CoreError> {
    for (target, items) in per_shard.into_iter().enumerate() {
        for chunk in items.chunks(WORK_ITEMS_PER_EVENT_MAX) {
            let Some(event_id) = ids.take() else {
                // The caller reserves one id per shard per step, and a step's items fit in
                // one chunk per shard.
                return Err(CoreError::Corrupt(
                    "erasure step ran out of event ids".to_string(),
                ));
            };
            let event = Event::ErasureWork {
                user_id: user,
                items: chunk.to_vec(),
            };
            events::record(txn, event_id, lim.now_ms, &event, &[target])?;
            out.events = true;
        }
    }
    Ok(())
}

/// Works through up to `limit` units of the queued work for `user`. Returns the units done
/// and whether work is left.
fn drain_work(txn: &WriteTransaction, user: u64, limit: usize) -> Result<(usize, bool), CoreError> {
    let mut units = 0;
    while units < limit {
        let first = txn
            .open_table(WORK)?
            .range((user, 0, 0)..=(user, u8::MAX, u64::MAX))?
            .next()
            .map(|r| r.map(|(k, v)| (k.value(), v.value())))
            .transpose()?;
        let Some(((_, kind, item), cursor)) = first else {
            return Ok((units, false));
        };
        match kind {
            WORK_RELATION => {
                social::forget(txn, item, user)?;
                txn.open_table(WORK)?.remove((user, kind, item))?;
                units += 1;
            }
            WORK_CONVERSATION => {
                let room = limit - units;
                match messages::erase_sender(txn, item, user, cursor, room)? {
                    Some(next) => {
                        txn.open_table(WORK)?.insert((user, kind, item), next)?;
                        return Ok((limit, true));
                    }
                    None => {
                        txn.open_table(WORK)?.remove((user, kind, item))?;
                        // Up to `room` messages were looked at: the step's budget is spent.
                        units = limit;
                    }
                }
            }
            _ => {
                // An unknown kind (written by a newer version): dropped, not looped on.
                txn.open_table(WORK)?.remove((user, kind, item))?;
            }
        }
    }
    let left = txn
        .open_table(WORK)?
        .range((user, 0, 0)..=(user, u8::MAX, u64::MAX))?
        .next()
        .is_some();
    Ok((units, left))
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::content::{Comment, Post};
    use crate::identity::{Context, DisplayName, Email, NewUser, Username};
    use crate::IdGen;

    fn post(id: u64, author: u64) -> Post {
        crate::content::test_post(id, author)
    }

    fn comment(id: u64, post_id: u64, author: u64) -> Comment {
        Comment {
            id,
            post_id,
            author_id: author,
            author_username: "c".into(),
            author_display_name: String::new(),
            text: "c".into(),
            parent: None,
            depth: 0,
            created_ms: 0,
            edited_ms: None,
        }
    }

    /// `ErasureWork` applied while this shard's job walks the history (`Events`, the stage
    /// after `Work`) is still done: the job goes back to `Work`, so the local user forgets
    /// the erased follower and its count is exact.
    #[test]
    fn work_arriving_during_the_history_walk_is_done() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let (d, x) = (1u64 << 12, 2u64);
        let txn = db.begin_write().unwrap();
        social::add_follower(&txn, x, d, 0).unwrap();
        for id in 10..20 {
            let event = Event::PostCreated {
                post: Box::new(post(id, x)),
            };
            events::record(&txn, id, 1_000, &event, &[]).unwrap();
        }
        on_erased(&txn, d, "d@example.com", 1_000).unwrap();
        txn.commit().unwrap();
        assert_eq!(
            social::counts(&db.begin_read().unwrap(), x).unwrap(),
            (1, 0)
        );

        let lim = Limits {
            here: 0,
            shards: 2,
            batch: 1,
            now_ms: 2_000,
        };
        let run = |until_events: bool| {
            for _ in 0..100 {
                if until_events {
                    let r = db.begin_read().unwrap();
                    if job(&r, d).unwrap().map(|j| j.stage) == Some(Stage::Events) {
                        return;
                    }
                }
                let txn = db.begin_write().unwrap();
                let s = step(&txn, d, &lim, &mut EventIds(vec![100, 101, 102])).unwrap();
                txn.commit().unwrap();
                if s.done {
                    assert!(!until_events, "the job ended before walking the history");
                    return;
                }
            }
            panic!("the erasure does not end");
        };
        run(true);
        let txn = db.begin_write().unwrap();
        add_work(&txn, d, &[(WORK_RELATION, x)], 2_000).unwrap();
        txn.commit().unwrap();
        run(false);

        let r = db.begin_read().unwrap();
        assert!(pending(&r, 10).unwrap().is_empty());
        assert_eq!(social::counts(&r, x).unwrap(), (0, 0));
        assert!(
            social::relation_page(&r, x, social::Relation::Followers, None, 10)
                .unwrap()
                .is_empty()
        );
    }

    /// A user with posts, comments, likes and relations on a one-shard database is erased in
    /// many one-row steps; afterwards the other users' counts are exact and nothing of the
    /// user is left in any table a reader looks at.
    #[test]
    fn erasure_in_small_steps_leaves_counts_exact() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let mut ids = IdGen::new(0);
        let mut next = || ids.next(1_000);
        let (d, x, y, z) = (next(), next(), next(), next());
        let ctx = Context {
            now_ms: 1_000,
            ip: "127.0.0.1".into(),
            log_id: next(),
        };
        let txn = db.begin_write().unwrap();
        let new = NewUser {
            id: d,
            username: Username::parse("erased_one").unwrap(),
            email: Email::parse("Erased@Example.com").unwrap(),
            display_name: DisplayName::parse("E").unwrap(),
            password_hash: "x".into(),
            email_id: next(),
            verify_ttl_ms: 1,
        };
        crate::identity::create_user(&txn, &ctx, new).unwrap();
        let email = Email::parse("Erased@Example.com").unwrap();
        crate::identity::claim_email(&txn, &email, d, 1_000, None).unwrap();
        let d_posts: Vec<u64> = (0..5).map(|_| next()).collect();
        for p in &d_posts {
            content::insert_post(&txn, &post(*p, d), None).unwrap();
        }
        let x_post = next();
        content::insert_post(&txn, &post(x_post, x), None).unwrap();
        // x comments on d's post, d on x's (twice), likes both ways.
        content::add_comment(&txn, comment(next(), d_posts[0], x)).unwrap();
        content::add_comment(&txn, comment(next(), x_post, d)).unwrap();
        content::add_comment(&txn, comment(next(), x_post, d)).unwrap();
        let x_comment = next();
        content::add_comment(&txn, comment(x_comment, x_post, x)).unwrap();
        content::set_like(&txn, x_post, d, false, true, 0).unwrap();
        content::set_like(&txn, x_comment, d, true, true, 0).unwrap();
        content::set_like(&txn, d_posts[1], x, false, true, 0).unwrap();
        // Follows both ways with x, d blocks y, z mutes d, d asked z to follow.
        social::follow(&txn, d, x, 0).unwrap();
        social::add_follower(&txn, x, d, 0).unwrap();
        social::follow(&txn, x, d, 0).unwrap();
        social::add_follower(&txn, d, x, 0).unwrap();
        social::block(&txn, d, y, 0).unwrap();
        social::apply_blocked(&txn, d, y, 0).unwrap();
        social::set_mute(&txn, z, d, true, 0).unwrap();
        social::request_follow(&txn, z, d, 0).unwrap();
        // The history: d's post and follow, and x's post that stays.
        let d_created = Event::PostCreated {
            post: Box::new(post(d_posts[0], d)),
        };
        let x_created = Event::PostCreated {
            post: Box::new(post(x_post, x)),
        };
        let d_followed = Event::Followed {
            follower: d,
            followee: x,
        };
        for event in [&d_created, &x_created, &d_followed] {
            events::record(&txn, next(), 1_000, event, &[]).unwrap();
        }
        txn.commit().unwrap();

        let r = db.begin_read().unwrap();
        let queued = communication::emails(&r, Some("Erased@Example.com"), 10, 100).unwrap();
        assert_eq!(queued.len(), 1, "the verification email waits");
        drop(r);
        let txn = db.begin_write().unwrap();
        let erased = crate::identity::erase_user(&txn, &ctx, d, next(), &["dsb"]).unwrap();
        assert_eq!(erased.email_key, "erased@example.com");
        begin(&txn, &erased, 1_000).unwrap();
        txn.commit().unwrap();

        let lim = Limits {
            here: 0,
            shards: 1,
            batch: 1,
            now_ms: 2_000,
        };
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 200, "the erasure does not end");
            let txn = db.begin_write().unwrap();
            let reserve: Vec<u64> = (0..3).map(|_| next()).collect();
            let s = step(&txn, d, &lim, &mut EventIds(reserve)).unwrap();
            txn.commit().unwrap();
            assert!(s.rows <= 2, "a step of batch 1 touched {} rows", s.rows);
            if s.done {
                break;
            }
        }
        assert!(steps > 10, "one-row batches take many steps ({steps})");

        let r = db.begin_read().unwrap();
        assert!(crate::identity::user(&r, d).unwrap().is_none());
        assert!(crate::identity::user_by_username(&r, "erased_one")
            .unwrap()
            .is_none());
        assert!(crate::identity::email_claim(&r, "erased@example.com")
            .unwrap()
            .is_none());
        assert!(pending(&r, 10).unwrap().is_empty());
        assert!(
            communication::emails(&r, Some("Erased@Example.com"), 10, 100)
                .unwrap()
                .is_empty()
        );
        for p in &d_posts {
            assert!(content::post(&r, *p).unwrap().is_none());
        }
        // x's post: no like and no comment of d left; x's own comment stays, unliked.
        assert_eq!(content::counts(&r, x_post).unwrap(), (0, 1));
        assert_eq!(content::counts(&r, x_comment).unwrap(), (0, 0));
        assert!(content::comments_by(&r, d, None, 10).unwrap().is_empty());
        assert!(content::likes_by(&r, d, None, 10).unwrap().is_empty());
        assert_eq!(social::counts(&r, x).unwrap(), (0, 0));
        for which in [
            social::Relation::Following,
            social::Relation::Followers,
            social::Relation::Blocks,
            social::Relation::Mutes,
        ] {
            assert!(social::relation_page(&r, d, which, None, 10)
                .unwrap()
                .is_empty());
            assert!(social::relation_page(&r, x, which, None, 10)
                .unwrap()
                .is_empty());
        }
        assert!(!social::mutes(&r, z, d).unwrap());
        assert!(!social::requested(&r, z, d).unwrap());
        assert!(!social::blocked_either_way(&r, y, d).unwrap());
        // The history keeps x's post and the tombstones, nothing that reveals d.
        let history: Vec<Event> = events::history(&r, (0, 0), 1_000)
            .unwrap()
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        assert!(history.contains(&x_created));
        assert!(history
            .iter()
            .any(|e| matches!(e, Event::PostDeleted { author, .. } if *author == d)));
        assert!(
            !history.iter().any(|e| e.reveals(d)),
            "{:?}",
            history.iter().filter(|e| e.reveals(d)).collect::<Vec<_>>()
        );
    }
}
