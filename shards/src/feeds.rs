//! Memory-resident home feeds and posts: derived state, rebuilt from redb on a miss.
//!
//! A *head* is the newest `HEAD_LEN` post ids of one reader's home feed, in the order and
//! with the relations `social::home` applies when it merges the feed from redb (follows,
//! blocks, mutes, mentions). What changes without a feed write is applied when a page is
//! served from it: suspended authors (`Shard::hidden_from`), deleted posts (no longer found)
//! and the reader's feed preferences (kept in the head, which a preference change drops).
//!
//! A head is filled by one merge the first time its reader's feed is read, and kept up to
//! date after that: every post committed or offered on this shard is added to the heads of
//! the readers it reaches here (`Shard::feeds_add`; not those who mute its author, nor those a
//! `mentioned` post does not address); every change of a relation drops the
//! heads of both users (`Feeds::forget`), and a rare change that can touch anyone's feed
//! (an erasure, a moderator's removal, an account turning private, an edit of a `mentioned`
//! post, which can change whom it addresses) drops them all. Anything a head cannot answer (a page
//! past its end, an ascending page) is read from redb as before.
//!
//! The post cache holds decoded posts by id, for heads and timelines alike: both the
//! author's `posts` row and other shards' `post_copies` hold the same post (with the
//! author's names as they were at compose time: a profile change rewrites no post, and the
//! API's views lay the authors' current names over them, `briefs::as_now`). An edit
//! replaces it, a delete drops it, an erasure drops them all. It is bounded by memory
//! (`post_cache_mib`), not by count: a timeline read that misses decodes every post it
//! passes, the ones it skips included, so a cache smaller than the posts being read costs
//! most of a read (docs/benchmarks.md). A cached post carries its JSON for the benchmark
//! API once a page has needed it (`SharedPost::rendered`), weighed in from the start.
//!
//! Heads and the cache live on one shard's executor. A decoded post is immutable and goes
//! to other shards in pages (`Arc`); the only thing set after it is made is its JSON, once.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::ops::Deref;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use nova_core::content::Post;
use nova_core::profiles::FeedPreferences;
use quick_cache::unsync::Cache;

/// Post ids one head keeps (the benchmark API reads at most 110 deep).
pub const HEAD_LEN: usize = 256;
/// Heads kept per shard (least recently used go first): 2 KiB each at most.
pub const HEADS_MAX: usize = 20_000;
/// Deleted posts remembered for the heads (`Feeds::post_gone`): 8 bytes and a slot each.
const GONE_MAX: usize = 4096;
/// A guess at the size of one cached post, decoded or rendered, for the cache's table.
const POST_BYTES_TYPICAL: u64 = 1024;
/// What an entry costs besides its own bytes: the cache's slot, the `Arc` and the key.
const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// A decoded post as caches and pages hold it. Pages carry it to other shards without a
/// copy; its JSON for the benchmark API is made the first time a page needs it, by
/// whichever shard serves that page, and kept with it (an edit makes a new post).
pub struct SharedPost {
    post: Post,
    json: OnceLock<Bytes>,
}

impl SharedPost {
    pub fn new(post: Post) -> Arc<SharedPost> {
        Arc::new(SharedPost {
            post,
            json: OnceLock::new(),
        })
    }

    /// The post rendered by `render`, made once for this post.
    pub fn rendered(&self, render: impl FnOnce(&Post) -> Vec<u8>) -> Bytes {
        self.json
            .get_or_init(|| Bytes::from(render(&self.post)))
            .clone()
    }

    /// The post itself, as an owned value.
    pub fn into_post(self) -> Post {
        self.post
    }
}

impl Deref for SharedPost {
    type Target = Post;

    fn deref(&self) -> &Post {
        &self.post
    }
}

/// A decoded post's weight: its heap bytes, roughly, twice over: its JSON, once made, holds
/// the same strings again.
#[derive(Clone)]
struct PostBytes;

impl quick_cache::Weighter<u64, Arc<SharedPost>> for PostBytes {
    fn weight(&self, _: &u64, post: &Arc<SharedPost>) -> u64 {
        let strings = |v: &[String]| v.iter().map(|s| 24 + s.len()).sum::<usize>();
        let bytes = std::mem::size_of::<Post>()
            + post.author_username.len()
            + post.author_display_name.len()
            + post.text.len()
            + post
                .mentions
                .iter()
                .map(|m| std::mem::size_of_val(m) + m.username.len())
                .sum::<usize>()
            + strings(&post.hashtags)
            + post
                .urls
                .iter()
                .map(|l| std::mem::size_of_val(l) + l.url.len() + l.short.len())
                .sum::<usize>()
            + post
                .media
                .iter()
                .map(|(id, kind)| 48 + id.len() + kind.len())
                .sum::<usize>()
            + 2 * post.fanned_to.len();
        2 * bytes as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The newest post ids of one reader's home feed.
pub struct Head {
    /// Ascending post ids.
    ids: VecDeque<u64>,
    /// True when `ids` is the whole feed: nothing older exists.
    whole: bool,
    /// The reader's feed preferences when the head was filled.
    pub prefs: FeedPreferences,
}

impl Head {
    /// A head of `newest_first` ids (as `social::home` returns them).
    pub fn new(
        newest_first: impl Iterator<Item = u64>,
        whole: bool,
        prefs: FeedPreferences,
    ) -> Head {
        let mut ids: VecDeque<u64> = newest_first.take(HEAD_LEN).collect();
        ids.make_contiguous().reverse();
        Head { ids, whole, prefs }
    }

    /// Adds a post id in its place (ids are time-ordered, so nearly always at the end).
    fn add(&mut self, post_id: u64) {
        // The common case: newer than everything kept.
        if self.ids.back().is_none_or(|&newest| post_id > newest) {
            self.ids.push_back(post_id);
            if self.ids.len() > HEAD_LEN {
                self.ids.pop_front();
                self.whole = false;
            }
            return;
        }
        if let Some(&oldest) = self.ids.front() {
            if post_id < oldest && !self.whole {
                // Older than everything kept, with older posts not kept: a page that far
                // back is read from redb, which has it.
                return;
            }
        }
        if let Err(at) = self.ids.binary_search(&post_id) {
            self.ids.insert(at, post_id);
            if self.ids.len() > HEAD_LEN {
                self.ids.pop_front();
                self.whole = false;
            }
        }
    }

    fn remove(&mut self, post_id: u64) {
        if let Ok(at) = self.ids.binary_search(&post_id) {
            self.ids.remove(at);
        }
    }

    /// Ids older than `max_id` (all when `None`), newest first.
    pub fn before(&self, max_id: Option<u64>) -> impl Iterator<Item = u64> + '_ {
        let end = match max_id {
            Some(m) => self.ids.partition_point(|id| *id < m),
            None => self.ids.len(),
        };
        self.ids.range(..end).rev().copied()
    }

    pub fn whole(&self) -> bool {
        self.whole
    }
}

pub struct Feeds {
    heads: RefCell<Cache<u64, Rc<RefCell<Head>>>>,
    posts: RefCell<Cache<u64, Arc<SharedPost>, PostBytes>>,
    /// Posts deleted since the heads were filled, which heads may still name: a page skips
    /// them without looking them up (`Shard::page_of_head`). At most `GONE_MAX`.
    gone: RefCell<HashSet<u64>>,
    epoch: Cell<u64>,
}

impl Feeds {
    /// Feeds whose post cache holds `post_cache_bytes` (posts and their JSON).
    pub fn new(post_cache_bytes: u64) -> Feeds {
        let bytes = post_cache_bytes.max(1);
        let items = (bytes / (2 * POST_BYTES_TYPICAL)).max(1) as usize;
        Feeds {
            heads: RefCell::new(Cache::new(HEADS_MAX)),
            posts: RefCell::new(Cache::with_weighter(items, bytes, PostBytes)),
            gone: RefCell::default(),
            epoch: Cell::new(0),
        }
    }

    pub fn head(&self, reader: u64) -> Option<Rc<RefCell<Head>>> {
        self.heads.borrow().get(&reader).cloned()
    }

    /// Whether `reader` has a head (without touching its place in the LRU order).
    pub fn has_head(&self, reader: u64) -> bool {
        self.heads.borrow().peek(&reader).is_some()
    }

    /// Heads held now.
    pub fn heads_len(&self) -> usize {
        self.heads.borrow().len()
    }

    pub fn keep_head(&self, reader: u64, head: Head) -> Rc<RefCell<Head>> {
        let head = Rc::new(RefCell::new(head));
        self.heads.borrow_mut().insert(reader, Rc::clone(&head));
        head
    }

    /// Adds `post_id` to the heads of those of `readers` that have one.
    pub fn add(&self, readers: impl IntoIterator<Item = u64>, post_id: u64) {
        let heads = self.heads.borrow();
        for reader in readers {
            if let Some(head) = heads.peek(&reader) {
                head.borrow_mut().add(post_id);
            }
        }
    }

    /// Drops a post id from `reader`'s head (its post is gone).
    pub fn remove(&self, reader: u64, post_id: u64) {
        if let Some(head) = self.heads.borrow().peek(&reader) {
            head.borrow_mut().remove(post_id);
        }
    }

    /// Drops `user`'s head: the next read merges it again.
    pub fn forget(&self, user: u64) {
        self.heads.borrow_mut().remove(&user);
        self.epoch.set(self.epoch.get() + 1);
    }

    /// How many times heads were dropped (not evicted): a post added to the heads of its
    /// readers is still in every head of its readers while this has not changed.
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Drops every head and every post.
    pub fn forget_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        self.heads.borrow_mut().clear();
        self.posts.borrow_mut().clear();
        self.gone.borrow_mut().clear();
    }

    /// A post was deleted: its cached copy goes, and heads that name it skip it. Past
    /// `GONE_MAX` deletions every head is merged again instead (deletions are rare).
    pub fn post_gone(&self, id: u64) {
        self.drop_post(id);
        let full = {
            let mut gone = self.gone.borrow_mut();
            gone.insert(id);
            gone.len() > GONE_MAX
        };
        if full {
            self.forget_all();
        }
    }

    /// Was this post deleted since the heads were filled?
    pub fn is_gone(&self, id: u64) -> bool {
        let gone = self.gone.borrow();
        !gone.is_empty() && gone.contains(&id)
    }

    pub fn post(&self, id: u64) -> Option<Arc<SharedPost>> {
        self.posts.borrow().get(&id).cloned()
    }

    pub fn keep_post(&self, post: Arc<SharedPost>) {
        self.posts.borrow_mut().insert(post.id, post);
    }

    pub fn drop_post(&self, id: u64) {
        self.posts.borrow_mut().remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(head: &Head, max_id: Option<u64>) -> Vec<u64> {
        head.before(max_id).collect()
    }

    fn post(id: u64, text_len: usize) -> Arc<SharedPost> {
        SharedPost::new(Post {
            id,
            author_id: 1,
            author_username: "a".into(),
            author_display_name: "A".into(),
            text: "x".repeat(text_len),
            visibility: nova_core::content::Visibility::Public,
            reply_to: None,
            mentions: Vec::new(),
            hashtags: Vec::new(),
            urls: Vec::new(),
            created_ms: 0,
            edited_ms: None,
            post_type: 0,
            media: Vec::new(),
            author_external_id: None,
            fanned_to: Vec::new(),
        })
    }

    #[test]
    fn the_post_cache_holds_bytes_not_a_count() {
        let feeds = Feeds::new(1 << 20);
        // A MiB for posts and their JSON: a few hundred of 1 KiB, thousands of 10 bytes.
        for id in 0..2_000 {
            feeds.keep_post(post(id, 1024));
        }
        let big = feeds.posts.borrow().len();
        assert!((200..600).contains(&big), "{big} posts of 1 KiB kept");
        assert!(feeds.posts.borrow().weight() <= 1 << 20);
        feeds.forget_all();
        for id in 0..2_000 {
            feeds.keep_post(post(id, 10));
        }
        assert!(feeds.posts.borrow().len() > 1_000);
    }

    #[test]
    fn a_post_is_rendered_once() {
        let shared = post(1, 10);
        let renders = std::cell::Cell::new(0);
        let render = |p: &Post| {
            renders.set(renders.get() + 1);
            p.text.clone().into_bytes()
        };
        assert_eq!(&shared.rendered(render)[..], b"xxxxxxxxxx");
        let again = Arc::clone(&shared);
        let other_shard = std::thread::spawn(move || again.rendered(|_| b"other".to_vec()));
        assert_eq!(&other_shard.join().unwrap()[..], b"xxxxxxxxxx");
        assert_eq!(&shared.rendered(render)[..], b"xxxxxxxxxx");
        assert_eq!(renders.get(), 1);
    }

    #[test]
    fn a_head_keeps_the_newest_ids_in_order() {
        let mut head = Head::new([9, 7, 5].into_iter(), true, FeedPreferences::default());
        assert_eq!(ids(&head, None), vec![9, 7, 5]);
        assert_eq!(ids(&head, Some(7)), vec![5]);
        head.add(8);
        head.add(8);
        head.add(1);
        head.add(9);
        assert_eq!(ids(&head, None), vec![9, 8, 7, 5, 1]);
        head.add(10);
        head.add(10);
        assert_eq!(ids(&head, None), vec![10, 9, 8, 7, 5, 1]);
        let mut empty = Head::new(std::iter::empty(), true, FeedPreferences::default());
        empty.add(3);
        assert_eq!(ids(&empty, None), vec![3]);
        head.remove(7);
        assert_eq!(ids(&head, None), vec![10, 9, 8, 5, 1]);
        for id in 100..100 + HEAD_LEN as u64 {
            head.add(id);
        }
        assert!(!head.whole());
        assert_eq!(head.before(None).count(), HEAD_LEN);
        assert_eq!(head.before(None).last(), Some(100));
        // Older than the oldest kept of a partial head: not kept (redb answers that far).
        head.add(50);
        assert_eq!(head.before(None).last(), Some(100));
    }
}
