//! Search on a shard: the indexer that tails this shard's `event_store` into its search
//! tables, the answers a shard gives for its own posts, accounts and hashtags, and the
//! scatter-gather that asks every shard and merges.
//!
//! The indexer keeps a cursor (the last event key taken in) in the index itself, advanced
//! in the same write transaction as the index change. Event keys are (ms, id) taken when a
//! request starts, so an event can commit after a later-keyed one: every
//! `RESCAN_PERIOD` the indexer looks again at the keys of the last `request_timeout_ms`
//! (plus a second) and takes in those it has not seen. Taking an event in means re-reading
//! the post or user it names from the primary tables, so doing it twice is harmless.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nova_core::content::{self, Post};
use nova_core::events;
use nova_core::identity;
use nova_core::profiles;
use nova_core::search::{self, AccountRank, PostQuery, Rank, Subject};
use nova_core::social;
use nova_core::CoreError;

use crate::error::Fail;
use crate::mesh::{Op, Reply, ShardMsg, UserBrief};
use crate::shard::{until, Shard};

/// Events taken in per write, at most. The write runs inside a commit that composes and
/// sends wait for, so it is kept short: a benchmark post (a long word, up to six mentions and
/// six links) costs about 36 us to index, so 64 of them about 2.5 ms. Batches of 2,048 held
/// the commit for tens of milliseconds while the index caught up after a burst of posts.
const INDEX_BATCH_MAX: usize = 64;
/// How often the indexer looks for new events when it is idle.
const POLL_PERIOD: Duration = Duration::from_millis(200);
/// How long an index write may wait for another commit to ride along with
/// (`Partition::write_deferred`): the index follows the data by at most about
/// `POLL_PERIOD` + this.
const INDEX_DEFER: Duration = Duration::from_millis(100);
/// The same while the indexer is behind (its last batch was full): the batches follow one
/// another, riding along with the commits of a busy shard, and on an idle one committing by
/// themselves almost at once, so a backlog is not worked off at one batch per `INDEX_DEFER`.
const INDEX_DEFER_BEHIND: Duration = Duration::from_millis(1);
/// How often late-committed events are looked for.
const RESCAN_PERIOD: Duration = Duration::from_secs(1);
/// Event keys looked at again per rescan, at most.
const RESCAN_KEYS_MAX: usize = 200_000;
/// Event keys a rescan reads before it lets the shard's other work run.
const RESCAN_CHUNK_KEYS: usize = 2_048;
/// Posting seeks one shard spends on one query page, at most (then it says where it
/// stopped and the next page goes on from there).
const SEARCH_STEPS_MAX: usize = 20_000;
/// Mutes of a searcher passed along, at most.
const MUTES_MAX: usize = 10_000;

/// One post a shard found, with what its view needs.
#[derive(Debug, Clone)]
pub struct PostHit {
    pub rank: Rank,
    pub post: Post,
    pub likes: u64,
    pub comments: u64,
    /// Durable views (the few seconds of views still buffered in memory are not counted).
    pub views: u64,
    pub liked: bool,
}

/// A shard's answer to a post query.
#[derive(Debug, Clone, Default)]
pub struct ShardPosts {
    pub hits: Vec<PostHit>,
    /// As `nova_core::search::PostPage::stopped_at`.
    pub stopped_at: Option<Rank>,
}

/// Where the indexer is (only its own task touches it).
struct Tail {
    cursor: Option<(u64, u64)>,
    /// Keys taken in within the rescan window.
    seen: BTreeSet<(u64, u64)>,
    last_rescan: Instant,
    /// The index's segments may want merging (`search::upkeep`).
    upkeep_due: bool,
}

impl Shard {
    pub(crate) fn serve_search(self: &Rc<Self>, op: Op) {
        match op {
            Op::SearchMutes { user_id, reply } => {
                let _ = reply.send(self.read(|r| social::muted_by(r, user_id, MUTES_MAX)));
            }
            Op::SearchPosts {
                query,
                searcher,
                mutes,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.search_posts_here(&query, searcher, &mutes, after, limit));
            }
            Op::SearchAccounts {
                words,
                searcher,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.search_accounts_here(&words, searcher, after, limit));
            }
            Op::SearchTags { prefix, reply } => {
                let _ = reply.send(self.read(|r| search::complete_tags(r, &prefix)));
            }
            other => {
                tracing::error!("serve_search was handed an operation that is not a search");
                drop(other);
            }
        }
    }

    /// The first `limit` posts of this shard after `after` matching `q` that `searcher` may
    /// see: public (of a public account) or followed, no block either way, author not muted.
    pub(crate) fn search_posts_here(
        &self,
        q: &PostQuery,
        searcher: u64,
        mutes: &[u64],
        after: Option<Rank>,
        limit: usize,
    ) -> Result<ShardPosts, Fail> {
        let mutes: HashSet<u64> = mutes.iter().copied().collect();
        self.read(|r| {
            // Per author, asked once per query: (may see at all, needs to follow: private).
            let mut authors: HashMap<u64, (bool, bool)> = HashMap::new();
            let mut follows: HashMap<u64, bool> = HashMap::new();
            let page = search::search_posts(r, q, after, limit, SEARCH_STEPS_MAX, |hit| {
                let author = hit.author;
                if self.hidden_from(author, searcher) {
                    return Ok(false);
                }
                if author == searcher {
                    return Ok(true);
                }
                let (allowed, private) = match authors.get(&author) {
                    Some(known) => *known,
                    None => {
                        let allowed = !mutes.contains(&author)
                            && !social::blocked_either_way(r, author, searcher)?;
                        // A private account's posts are for its followers, whatever their
                        // visibility.
                        let private = allowed && profiles::settings(r, author)?.private;
                        authors.insert(author, (allowed, private));
                        (allowed, private)
                    }
                };
                if !allowed {
                    return Ok(false);
                }
                if hit.followers_only || private {
                    if let Some(f) = follows.get(&author) {
                        return Ok(*f);
                    }
                    let f = social::is_follower(r, author, searcher)?;
                    follows.insert(author, f);
                    return Ok(f);
                }
                Ok(true)
            })?;
            let mut hits = Vec::with_capacity(page.hits.len());
            for hit in page.hits {
                let id = hit.rank.id;
                // The index follows the posts table within a moment; a post deleted in
                // that moment is simply left out.
                let Some(post) = content::post(r, id)? else {
                    continue;
                };
                let (likes, comments) = content::counts(r, id)?;
                hits.push(PostHit {
                    rank: hit.rank,
                    post,
                    likes,
                    comments,
                    views: content::views(r, id)?,
                    liked: content::liked(r, id, searcher, false)?,
                });
            }
            Ok(ShardPosts {
                hits,
                stopped_at: page.stopped_at,
            })
        })
    }

    pub(crate) fn search_accounts_here(
        &self,
        words: &[String],
        searcher: u64,
        after: Option<AccountRank>,
        limit: usize,
    ) -> Result<Vec<(AccountRank, UserBrief)>, Fail> {
        self.read(|r| {
            let found = search::search_accounts(r, words, after.as_ref(), limit, |user| {
                Ok(user == searcher
                    || (!self.hidden_from(user, searcher)
                        && !social::blocked_either_way(r, user, searcher)?))
            })?;
            let mut out = Vec::with_capacity(found.len());
            for (rank, id) in found {
                if let Some(u) = identity::user(r, id)? {
                    out.push((
                        rank,
                        UserBrief {
                            id: u.id,
                            username: u.username,
                            display_name: u.display_name,
                            external_id: None,
                            avatar: nova_core::profiles::avatar(r, u.id)?,
                        },
                    ));
                }
            }
            Ok(out)
        })
    }

    /// Takes this shard's new events into its search index, for as long as the shard runs.
    pub async fn indexer_loop(self: Rc<Self>) {
        let cursor = match self.read(search::cursor) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, shard = self.id, "search indexer cannot start");
                return;
            }
        };
        let tail = RefCell::new(Tail {
            cursor,
            seen: BTreeSet::new(),
            // Rescan at once: events of the last moments before a restart may be missing.
            last_rescan: Instant::now() - RESCAN_PERIOD,
            // A merge may have been under way before a restart.
            upkeep_due: true,
        });
        let mut behind = false;
        loop {
            if self.draining.fired() {
                return;
            }
            let within = match behind {
                true => INDEX_DEFER_BEHIND,
                false => INDEX_DEFER,
            };
            behind = false;
            match self.index_once(&tail, within).await {
                Ok(n) if n >= INDEX_BATCH_MAX || tail.borrow().upkeep_due => behind = true,
                Ok(_) => glommio::timer::sleep(POLL_PERIOD).await,
                Err(e) => {
                    tracing::warn!(error = %e, shard = self.id, "search indexing failed; retrying");
                    glommio::timer::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// One stored event; one that cannot be read is reported and passed over (the index can
    /// be rebuilt from the primary tables; the history cannot be repaired from here).
    fn event_or_report(
        &self,
        read: &nova_storage::redb::ReadTransaction,
        key: (u64, u64),
    ) -> Option<nova_core::events::Event> {
        match events::stored(read, key) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, shard = self.id, ms = key.0, id = key.1,
                    "search indexer passed over an unreadable event");
                None
            }
        }
    }

    /// Adds to `keys` and `subjects` the keys of the rescan window (from `window_ms` before
    /// `cursor` up to it) that were not taken in, and their events' subjects. Reads
    /// `RESCAN_CHUNK_KEYS` keys at a time with a yield in between: a busy shard's window
    /// holds tens of thousands of keys, and reading them in one go held its requests up for
    /// milliseconds every rescan.
    async fn late_events(
        &self,
        tail: &RefCell<Tail>,
        cursor: (u64, u64),
        window_ms: u64,
        keys: &mut Vec<(u64, u64)>,
        subjects: &mut HashSet<Subject>,
    ) -> Result<(), Fail> {
        let mut from = (cursor.0.saturating_sub(window_ms), 0);
        let mut looked = 0;
        loop {
            let chunk = {
                let read = self.partition.read()?;
                let chunk = events::history_keys(&read, from, RESCAN_CHUNK_KEYS)?;
                let t = tail.borrow();
                for key in chunk.iter().take_while(|key| **key <= cursor) {
                    if t.seen.contains(key) {
                        continue;
                    }
                    if let Some(event) = self.event_or_report(&read, *key) {
                        subjects.extend(search::subject(&event));
                    }
                    keys.push(*key);
                }
                chunk
            };
            looked += chunk.len();
            let Some(&last) = chunk.last() else {
                break;
            };
            if last >= cursor || chunk.len() < RESCAN_CHUNK_KEYS || looked >= RESCAN_KEYS_MAX {
                break;
            }
            from = key_after(last);
            futures_lite::future::yield_now().await;
        }
        Ok(())
    }

    /// One pass: new events, and every `RESCAN_PERIOD` late ones. Returns how many events
    /// it took in.
    async fn index_once(&self, tail: &RefCell<Tail>, within: Duration) -> Result<usize, Fail> {
        let window_ms = self.cfg.request_timeout_ms + 1_000;
        let (mut keys, mut subjects, new_cursor, rescan) = {
            let mut t = tail.borrow_mut();
            let from = t.cursor.map_or((0, 0), key_after);
            let read = self.partition.read()?;
            let fresh: Vec<((u64, u64), Option<nova_core::events::Event>)> =
                match events::history(&read, from, INDEX_BATCH_MAX) {
                    Ok(rows) => rows.into_iter().map(|(k, e)| (k, Some(e))).collect(),
                    // One undecodable row must not stop the index for good: read the rows
                    // one by one and pass over (and report) the bad ones.
                    Err(_) => events::history_keys(&read, from, INDEX_BATCH_MAX)?
                        .into_iter()
                        .map(|key| (key, self.event_or_report(&read, key)))
                        .collect(),
                };
            let mut keys: Vec<(u64, u64)> = Vec::with_capacity(fresh.len());
            let mut subjects: HashSet<Subject> = HashSet::new();
            let mut new_cursor = t.cursor;
            for (key, event) in &fresh {
                keys.push(*key);
                new_cursor = Some(*key);
                subjects.extend(event.as_ref().and_then(search::subject));
            }
            let rescan = match t.cursor {
                Some(cursor) if t.last_rescan.elapsed() >= RESCAN_PERIOD => {
                    t.last_rescan = Instant::now();
                    Some(cursor)
                }
                _ => None,
            };
            (keys, subjects, new_cursor, rescan)
        };
        if let Some(cursor) = rescan {
            self.late_events(tail, cursor, window_ms, &mut keys, &mut subjects)
                .await?;
        }
        if keys.is_empty() && !tail.borrow().upkeep_due {
            return Ok(0);
        }
        let taken = keys.len();
        let advance = new_cursor.filter(|c| Some(*c) != tail.borrow().cursor);
        // Lossy: the cursor is stored with the postings, so a crash that loses this write
        // loses the cursor's step too, and the indexer takes the same events again. One step
        // of the segments' upkeep rides along (a merge's steps are as lossy: a lost one is
        // done again from where the stored merge stands).
        let upkeep_due = self
            .partition
            .write_lossy(
                move |t| {
                    let mut posts = Vec::new();
                    for s in &subjects {
                        match s {
                            Subject::Post(id) => posts.push((*id, content::post_in(t, *id)?)),
                            Subject::User(_) => resync(t, *s)?,
                        }
                    }
                    search::resync_posts(t, &posts)?;
                    if let Some(c) = advance {
                        search::advance_cursor(t, c)?;
                    }
                    search::upkeep(t, search::UPKEEP_ROWS)
                },
                within,
            )
            .await?;
        let mut t = tail.borrow_mut();
        t.upkeep_due = upkeep_due;
        t.cursor = new_cursor;
        t.seen.extend(keys);
        if let Some((ms, _)) = t.cursor {
            let keep_from = (ms.saturating_sub(window_ms), 0);
            t.seen = t.seen.split_off(&keep_from);
        }
        Ok(taken)
    }
}

/// The first event key after `key` (keys are (ms, id)).
fn key_after((ms, id): (u64, u64)) -> (u64, u64) {
    match id.checked_add(1) {
        Some(next) => (ms, next),
        None => (ms.saturating_add(1), 0),
    }
}

/// Makes the index agree with the primary row `s` names.
pub(crate) fn resync(
    t: &nova_storage::redb::WriteTransaction,
    s: Subject,
) -> Result<(), CoreError> {
    match s {
        Subject::Post(id) => {
            let post = content::post_in(t, id)?;
            search::resync_post(t, id, post.as_ref())
        }
        Subject::User(id) => {
            let user = identity::user_in(t, id)?;
            search::resync_user(
                t,
                id,
                user.as_ref()
                    .map(|u| (u.username.as_str(), u.display_name.as_str())),
            )
        }
    }
}

/// Answers from every shard; `partial` when some did not answer in time.
pub(crate) struct Gathered<T> {
    pub answers: Vec<T>,
    pub partial: bool,
}

/// Asks every other shard with `make` (all at once, each bounded by
/// `search_shard_timeout_ms`), answers for this shard with `local` meanwhile, then waits.
/// A shard that is late, overloaded or failing is left out and marks the answer partial.
pub(crate) async fn gather<T>(
    shard: &Rc<Shard>,
    deadline: Instant,
    local: impl FnOnce() -> Result<T, Fail>,
    make: impl Fn(Reply<T>) -> Op,
) -> Result<Gathered<T>, Fail> {
    let shard_deadline =
        deadline.min(Instant::now() + Duration::from_millis(shard.cfg.search_shard_timeout_ms));
    let mut waiting = Vec::with_capacity(shard.shards);
    let mut partial = false;
    for (k, sender) in shard.mesh.iter().enumerate() {
        if k == shard.id {
            continue;
        }
        let (tx, rx) = flume::bounded(1);
        let msg = ShardMsg::Call {
            op: make(tx),
            deadline: shard_deadline,
        };
        match sender.try_send(msg) {
            Ok(()) => waiting.push((k, rx)),
            Err(_) => partial = true,
        }
    }
    let mut answers = Vec::with_capacity(shard.shards);
    answers.push(local()?);
    for (k, rx) in waiting {
        match until(shard_deadline, rx.recv_async()).await {
            Some(Ok(Ok(answer))) => answers.push(answer),
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, shard = k, "a shard failed a search");
                partial = true;
            }
            _ => partial = true,
        }
    }
    Ok(Gathered { answers, partial })
}

/// Merges shards' post pages: by rank, never past the point where a shard stopped looking
/// (so the next page misses nothing). Returns the page and the cursor after it.
pub(crate) fn merge_posts(pages: Vec<ShardPosts>, limit: usize) -> (Vec<PostHit>, Option<Rank>) {
    let bound = pages.iter().filter_map(|p| p.stopped_at).min();
    let mut hits: Vec<PostHit> = pages
        .into_iter()
        .flat_map(|p| p.hits)
        .filter(|h| bound.is_none_or(|b| h.rank <= b))
        .collect();
    hits.sort_by_key(|h| h.rank);
    hits.truncate(limit);
    let next = if hits.len() == limit {
        hits.last().map(|h| h.rank)
    } else {
        bound
    };
    (hits, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(tier: u8, id: u64) -> PostHit {
        PostHit {
            rank: Rank { tier, id },
            post: Post {
                id,
                author_id: 1,
                author_username: String::new(),
                author_display_name: String::new(),
                text: String::new(),
                visibility: nova_core::content::Visibility::Public,
                reply_to: None,
                mentions: vec![],
                hashtags: vec![],
                urls: vec![],
                created_ms: 0,
                edited_ms: None,
                post_type: 0,
                media: vec![],
                author_external_id: None,
                fanned_to: vec![],
            },
            likes: 0,
            comments: 0,
            views: 0,
            liked: false,
        }
    }

    #[test]
    fn merge_stops_where_a_shard_stopped() {
        let a = ShardPosts {
            hits: vec![hit(0, 50), hit(1, 40), hit(1, 30)],
            stopped_at: Some(Rank { tier: 1, id: 30 }),
        };
        let b = ShardPosts {
            hits: vec![hit(1, 35), hit(1, 20)],
            stopped_at: None,
        };
        let (hits, next) = merge_posts(vec![a.clone(), b.clone()], 10);
        let ids: Vec<u64> = hits.iter().map(|h| h.rank.id).collect();
        assert_eq!(ids, vec![50, 40, 35, 30]);
        assert_eq!(next, Some(Rank { tier: 1, id: 30 }));
        let (hits, next) = merge_posts(vec![a, b], 2);
        assert_eq!(hits.len(), 2);
        assert_eq!(next, Some(Rank { tier: 1, id: 40 }));
    }
}
