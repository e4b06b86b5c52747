//! Content: posts (tables `posts`, `user_posts`, `post_idempotency`). A post lives on its
//! author's shard (its id carries that shard).

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::{CoreError, Invalid};

/// post id -> Post
const POSTS: TableDefinition<u64, &[u8]> = TableDefinition::new("posts");
/// (author, post id) -> () : the author's timeline
const USER_POSTS: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_posts");
/// (author, key) -> (post id, ms) : Idempotency-Key of a create, kept an hour
const POST_IDEMPOTENCY: TableDefinition<(u64, &str), (u64, u64)> =
    TableDefinition::new("post_idempotency");

pub const TEXT_CHARS_MAX: usize = 5000;
pub const MENTIONS_MAX: usize = 20;
pub const HASHTAGS_MAX: usize = 30;
pub const URLS_MAX: usize = 20;
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;
pub const IDEMPOTENCY_WINDOW_MS: u64 = 3600 * 1000;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Visibility {
    Public,
    Followers,
    /// The author and the users the post mentions (appended: stored records keep their
    /// variant index).
    Mentioned,
}

impl Visibility {
    pub fn parse(raw: &str) -> Result<Visibility, Invalid> {
        match raw {
            "public" => Ok(Visibility::Public),
            "followers" => Ok(Visibility::Followers),
            "mentioned" => Ok(Visibility::Mentioned),
            _ => Err(Invalid::new(
                "invalid_visibility",
                "visibility is public, followers or mentioned",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Followers => "followers",
            Visibility::Mentioned => "mentioned",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Mention {
    pub user_id: u64,
    pub username: String,
    /// The user's id in a client's own numbering (DeathStarBench), when it has one.
    pub external_id: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub url: String,
    pub short: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Post {
    pub id: u64,
    pub author_id: u64,
    pub author_username: String,
    pub author_display_name: String,
    pub text: String,
    pub visibility: Visibility,
    pub reply_to: Option<u64>,
    pub mentions: Vec<Mention>,
    pub hashtags: Vec<String>,
    pub urls: Vec<Link>,
    pub created_ms: u64,
    pub edited_ms: Option<u64>,
    /// DeathStarBench's post_type (0 = post), kept for its API.
    pub post_type: u32,
    /// (media id, media type) as DeathStarBench's compose sends them.
    pub media: Vec<(String, String)>,
    /// The author's id in the client's own numbering (DeathStarBench), when it has one.
    pub author_external_id: Option<u64>,
    /// Shards this post was fanned out to, so a delete reaches the same feeds.
    pub fanned_to: Vec<u16>,
}

impl Post {
    /// Whether `reader` is in the post's audience as far as its visibility names one: a
    /// `mentioned` post is for its author and the users it mentions only. (Followers-only
    /// posts, private accounts and blocks are checked where the follows are known.)
    pub fn addressed_to(&self, reader: u64) -> bool {
        self.visibility != Visibility::Mentioned
            || self.author_id == reader
            || self.mentions.iter().any(|m| m.user_id == reader)
    }
}

/// Post text: trimmed, 1 to `TEXT_CHARS_MAX` characters, no control characters but newlines
/// and tabs.
pub fn parse_text(raw: &str) -> Result<String, Invalid> {
    parse_user_text(raw, "a post", TEXT_CHARS_MAX)
}

/// Text a user writes (a post, a comment, a message): trimmed, 1 to `max` characters, no
/// control characters but newlines, carriage returns and tabs. `what` names it in errors.
pub fn parse_user_text(raw: &str, what: &str, max: usize) -> Result<String, Invalid> {
    let text = raw.trim();
    let len = text.chars().count();
    if len == 0 || len > max {
        return Err(Invalid::new(
            "invalid_text",
            format!("{what} has 1 to {max} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(Invalid::new(
            "invalid_text",
            format!("{what} cannot contain control characters"),
        ));
    }
    Ok(text.to_string())
}

/// What a post's text refers to: `@names` (as written), `#tags` (lower-cased) and links.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    pub mentions: Vec<String>,
    pub hashtags: Vec<String>,
    pub urls: Vec<String>,
}

/// Extracts mentions (`@` then `[A-Za-z0-9_-]+`), hashtags (`#` then letters, digits or
/// `_`) and `http://`/`https://` links, each list deduplicated and capped.
pub fn extract(text: &str) -> Extracted {
    let mut out = Extracted::default();
    for word in text.split(|c: char| c.is_whitespace()) {
        if word.starts_with("http://") || word.starts_with("https://") {
            let url = word.trim_end_matches(['.', ',', ')', '!', '?', ';', ':', '"', '\'']);
            if url.len() > "https://".len()
                && out.urls.len() < URLS_MAX
                && !out.urls.iter().any(|u| u == url)
            {
                out.urls.push(url.to_string());
            }
            continue;
        }
        let mut rest = word;
        while let Some(pos) = rest.find(['@', '#']) {
            let sigil = rest.as_bytes()[pos];
            let after = &rest[pos + 1..];
            let end = after
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || (sigil == b'@' && c == '-')))
                .unwrap_or(after.len());
            let name = &after[..end];
            if !name.is_empty() {
                if sigil == b'@' {
                    if name.is_ascii()
                        && out.mentions.len() < MENTIONS_MAX
                        && !out.mentions.iter().any(|m| m.eq_ignore_ascii_case(name))
                    {
                        out.mentions.push(name.to_string());
                    }
                } else {
                    let tag = name.to_lowercase();
                    if out.hashtags.len() < HASHTAGS_MAX && !out.hashtags.contains(&tag) {
                        out.hashtags.push(tag);
                    }
                }
            }
            rest = &after[end..];
        }
    }
    out
}

pub fn post(read: &ReadTransaction, id: u64) -> Result<Option<Post>, CoreError> {
    let table = match read.open_table(POSTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// This shard's posts, for reads of many (home feeds take the posts of local authors from
/// here, and keep copies of the others': `social`). `None` before the first post.
pub fn posts_table(
    read: &ReadTransaction,
) -> Result<Option<redb::ReadOnlyTable<u64, &'static [u8]>>, CoreError> {
    crate::table_or_none(read, POSTS)
}

/// (author, post id) -> (): `author_index`.
pub type AuthorIndex = redb::ReadOnlyTable<(u64, u64), ()>;

/// This shard's (author, post id) index of its posts, for reads of many (home feeds merge
/// local authors' ranges from it). A row and its post are written and removed together.
pub fn author_index(read: &ReadTransaction) -> Result<Option<AuthorIndex>, CoreError> {
    crate::table_or_none(read, USER_POSTS)
}

/// `post` inside a write transaction (sees the batch's own earlier writes).
pub fn post_in(txn: &WriteTransaction, id: u64) -> Result<Option<Post>, CoreError> {
    let table = txn.open_table(POSTS)?;
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Up to `limit` posts with ids above `after`, in id order (a rebuild walks them all).
pub fn posts_after(
    read: &ReadTransaction,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<Post>, CoreError> {
    let table = match read.open_table(POSTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = match after {
        None => 0,
        Some(a) => match a.checked_add(1) {
            Some(s) => s,
            None => return Ok(Vec::new()),
        },
    };
    let mut out = Vec::with_capacity(limit);
    for row in table.range(start..)?.take(limit) {
        out.push(decode(row?.1.value())?);
    }
    Ok(out)
}

/// The post an earlier create with this Idempotency-Key made, if within the window.
pub fn idempotent_post(
    read: &ReadTransaction,
    author: u64,
    key: &str,
    now_ms: u64,
) -> Result<Option<u64>, CoreError> {
    let table = match read.open_table(POST_IDEMPOTENCY) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let value = table.get((author, key))?;
    Ok(value
        .map(|v| v.value())
        .filter(|(_, at)| now_ms.saturating_sub(*at) < IDEMPOTENCY_WINDOW_MS)
        .map(|(id, _)| id))
}

/// `idempotent_post` inside a write transaction (sees the batch's own earlier creates).
pub fn idempotent_post_in(
    txn: &WriteTransaction,
    author: u64,
    key: &str,
    now_ms: u64,
) -> Result<Option<u64>, CoreError> {
    NewPosts::open(txn)?.earlier(author, key, now_ms)
}

/// Stores a new post (validated by the caller) and indexes it in the author's timeline.
pub fn insert_post(
    txn: &WriteTransaction,
    post: &Post,
    idempotency_key: Option<&str>,
) -> Result<(), CoreError> {
    NewPosts::open(txn)?.insert(post, idempotency_key)
}

/// (author, idempotency key) -> (post id, created ms), open in a write.
type KeysTable<'t> = Table<'t, (u64, &'static str), (u64, u64)>;

/// New posts written in one pass (a batch of composes): each table opened once.
pub struct NewPosts<'t> {
    txn: &'t WriteTransaction,
    posts: Option<Table<'t, u64, &'static [u8]>>,
    user_posts: Option<Table<'t, (u64, u64), ()>>,
    keys: Option<KeysTable<'t>>,
}

impl<'t> NewPosts<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<NewPosts<'t>, CoreError> {
        Ok(NewPosts {
            txn,
            posts: None,
            user_posts: None,
            keys: None,
        })
    }

    fn keys(&mut self) -> Result<&mut KeysTable<'t>, CoreError> {
        let table = match self.keys.take() {
            Some(t) => t,
            None => self.txn.open_table(POST_IDEMPOTENCY)?,
        };
        Ok(self.keys.insert(table))
    }

    /// The post `author` created with `key` within the idempotency window, if any (this
    /// transaction's own creates included) and not deleted since: a key whose post is gone
    /// makes a new post.
    pub fn earlier(
        &mut self,
        author: u64,
        key: &str,
        now_ms: u64,
    ) -> Result<Option<u64>, CoreError> {
        let value = self.keys()?.get((author, key))?;
        let Some(id) = value
            .map(|v| v.value())
            .filter(|(_, at)| now_ms.saturating_sub(*at) < IDEMPOTENCY_WINDOW_MS)
            .map(|(id, _)| id)
        else {
            return Ok(None);
        };
        let posts = match &mut self.posts {
            Some(t) => t,
            None => self.posts.insert(self.txn.open_table(POSTS)?),
        };
        Ok(posts.get(id)?.is_some().then_some(id))
    }

    /// Stores a new post (validated by the caller) and indexes it in the author's timeline.
    pub fn insert(&mut self, post: &Post, idempotency_key: Option<&str>) -> Result<(), CoreError> {
        let posts = match &mut self.posts {
            Some(t) => t,
            None => self.posts.insert(self.txn.open_table(POSTS)?),
        };
        posts.insert(post.id, encode(post).as_slice())?;
        let user_posts = match &mut self.user_posts {
            Some(t) => t,
            None => self.user_posts.insert(self.txn.open_table(USER_POSTS)?),
        };
        user_posts.insert((post.author_id, post.id), ())?;
        if let Some(key) = idempotency_key {
            self.keys()?
                .insert((post.author_id, key), (post.id, post.created_ms))?;
        }
        Ok(())
    }
}

pub fn delete_post(txn: &WriteTransaction, author: u64, id: u64) -> Result<Post, CoreError> {
    let mut posts = txn.open_table(POSTS)?;
    let post: Post = match posts.get(id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    if post.author_id != author {
        return Err(CoreError::NotFound);
    }
    posts.remove(id)?;
    drop(posts);
    txn.open_table(USER_POSTS)?.remove((author, id))?;
    purge_reactions(txn, id)?;
    crate::notifications::forget_subject(txn, id)?;
    Ok(post)
}

/// What an edit changes: the text and what is extracted from it.
#[derive(Debug, Clone)]
pub struct PostEdit {
    pub text: String,
    pub mentions: Vec<Mention>,
    pub hashtags: Vec<String>,
    pub urls: Vec<Link>,
}

/// Edits the author's own post; someone else's or a missing one is `NotFound`.
pub fn edit_post(
    txn: &WriteTransaction,
    author: u64,
    id: u64,
    edit: PostEdit,
    now_ms: u64,
) -> Result<Post, CoreError> {
    let mut posts = txn.open_table(POSTS)?;
    let mut post: Post = match posts.get(id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    if post.author_id != author {
        return Err(CoreError::NotFound);
    }
    post.text = edit.text;
    post.mentions = edit.mentions;
    post.hashtags = edit.hashtags;
    post.urls = edit.urls;
    post.edited_ms = Some(now_ms);
    posts.insert(id, encode(&post).as_slice())?;
    Ok(post)
}

/// A page of `author`'s post ids, newest first, strictly between `min_id` and `max_id`.
pub fn user_post_ids(
    read: &ReadTransaction,
    author: u64,
    max_id: Option<u64>,
    min_id: Option<u64>,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let table = match read.open_table(USER_POSTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let low = min_id.map_or(0, |m| m.saturating_add(1));
    let high = max_id.map_or(u64::MAX, |m| m.saturating_sub(1));
    if low > high {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(limit);
    if min_id.is_some() && max_id.is_none() {
        // The page just above min_id, still returned newest first.
        for row in table.range((author, low)..=(author, high))?.take(limit) {
            out.push(row?.0.value().1);
        }
        out.reverse();
    } else {
        for row in table
            .range((author, low)..=(author, high))?
            .rev()
            .take(limit)
        {
            out.push(row?.0.value().1);
        }
    }
    Ok(out)
}

/// How many posts `author` has (counted over the timeline index).
pub fn posts_count(read: &ReadTransaction, author: u64, cap: usize) -> Result<u64, CoreError> {
    let table = match read.open_table(USER_POSTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    Ok(table
        .range((author, 0)..=(author, u64::MAX))?
        .take(cap)
        .count() as u64)
}

/// A public post saying "hi", for tests.
#[cfg(test)]
pub(crate) fn test_post(id: u64, author: u64) -> Post {
    Post {
        id,
        author_id: author,
        author_username: format!("u{author}"),
        author_display_name: String::new(),
        text: "hi".into(),
        visibility: Visibility::Public,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction() {
        let e = extract("hi @Bob and @bob, @al-ice! #Rust #rust #día see https://x.org/a?b=1. (https://y.io) mail a@b.c");
        assert_eq!(e.mentions, vec!["Bob", "al-ice", "b"]);
        assert_eq!(e.hashtags, vec!["rust", "día"]);
        assert_eq!(e.urls, vec!["https://x.org/a?b=1"]);
        assert!(parse_text("   ").is_err());
        assert!(parse_text(&"x".repeat(5001)).is_err());
        assert!(parse_text("a\u{0}b").is_err());
        assert_eq!(parse_text(" hi\nthere ").unwrap(), "hi\nthere");
    }

    #[test]
    fn deleting_a_post_removes_its_comments_likes_and_views() {
        use redb::backends::InMemoryBackend;
        use redb::{Database, ReadableDatabase};
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let post = test_post(10, 1);
        let new_comment = |id, parent| Comment {
            id,
            post_id: 10,
            author_id: 2,
            author_username: "b".into(),
            author_display_name: String::new(),
            text: "c".into(),
            parent,
            depth: 0,
            created_ms: 0,
            edited_ms: None,
        };
        let other = Post {
            id: 20,
            ..post.clone()
        };
        let txn = db.begin_write().unwrap();
        insert_post(&txn, &post, None).unwrap();
        insert_post(&txn, &other, None).unwrap();
        add_comment(&txn, new_comment(11, None)).unwrap();
        add_comment(&txn, new_comment(12, Some(11))).unwrap();
        set_like(&txn, 10, 2, false, true, 0).unwrap();
        set_like(&txn, 20, 2, false, true, 0).unwrap();
        set_like(&txn, 11, 3, true, true, 0).unwrap();
        add_views(&txn, &[(10, 5), (20, 1), (99, 4)]).unwrap();
        txn.commit().unwrap();

        let txn = db.begin_write().unwrap();
        assert!(matches!(delete_post(&txn, 2, 10), Err(CoreError::NotFound)));
        delete_post(&txn, 1, 10).unwrap();
        txn.commit().unwrap();

        let read = db.begin_read().unwrap();
        assert!(post_of(&read, 10).is_none());
        assert!(comment(&read, 11).unwrap().is_none());
        assert!(comment(&read, 12).unwrap().is_none());
        assert!(comments_of(&read, 10, None, 10).unwrap().is_empty());
        assert!(!liked(&read, 10, 2, false).unwrap());
        assert!(!liked(&read, 11, 3, true).unwrap());
        assert_eq!(counts(&read, 10).unwrap(), (0, 0));
        assert_eq!(counts(&read, 11).unwrap(), (0, 0));
        assert_eq!(views(&read, 10).unwrap(), 0);
        assert_eq!(
            views(&read, 99).unwrap(),
            0,
            "views of unknown posts are dropped"
        );
        // The other post keeps its own.
        assert!(liked(&read, 20, 2, false).unwrap());
        assert_eq!(views(&read, 20).unwrap(), 1);
        assert_eq!(counts(&read, 20).unwrap(), (1, 0));
    }

    /// Rows written before the per-user indexes existed are indexed by the one-time build.
    #[test]
    fn user_indexes_are_built_for_older_rows() {
        use redb::backends::InMemoryBackend;
        use redb::{Database, ReadableDatabase};
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let txn = db.begin_write().unwrap();
        {
            // As an older version wrote them: no index rows.
            let mut comments = txn.open_table(COMMENTS).unwrap();
            for (id, author) in [(11u64, 7u64), (12, 8), (13, 7)] {
                let c = Comment {
                    id,
                    post_id: 10,
                    author_id: author,
                    author_username: "x".into(),
                    author_display_name: String::new(),
                    text: "t".into(),
                    parent: None,
                    depth: 0,
                    created_ms: 0,
                    edited_ms: None,
                };
                comments.insert(id, encode(&c).as_slice()).unwrap();
            }
            let mut likes = txn.open_table(POST_LIKES).unwrap();
            likes.insert((10, 7), 0).unwrap();
            likes.insert((20, 7), 0).unwrap();
            txn.open_table(COMMENT_LIKES)
                .unwrap()
                .insert((12, 7), 0)
                .unwrap();
        }
        txn.commit().unwrap();
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 50);
            let txn = db.begin_write().unwrap();
            let more = index_users_step(&txn, 1).unwrap();
            txn.commit().unwrap();
            if !more {
                break;
            }
        }
        let read = db.begin_read().unwrap();
        assert!(users_indexed(&read).unwrap());
        let mine: Vec<u64> = comments_by(&read, 7, None, 10)
            .unwrap()
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(mine, vec![11, 13]);
        assert_eq!(
            likes_by(&read, 7, None, 10).unwrap(),
            vec![(10, false), (12, true), (20, false)]
        );
    }

    fn post_of(read: &ReadTransaction, id: u64) -> Option<Post> {
        super::post(read, id).unwrap()
    }
}

// ---- comments and likes ------------------------------------------------------------------
// Comments and likes live on the post's shard: a comment's id is made there, so
// `shard_of(comment)` routes to the post's shard too.

/// comment id -> Comment
const COMMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("comments");
/// (post id, comment id) -> () : a post's comments in order
const POST_COMMENTS: TableDefinition<(u64, u64), ()> = TableDefinition::new("post_comments");
/// (post id, user id) -> ms
const POST_LIKES: TableDefinition<(u64, u64), u64> = TableDefinition::new("post_likes");
/// (comment id, user id) -> ms
const COMMENT_LIKES: TableDefinition<(u64, u64), u64> = TableDefinition::new("comment_likes");
/// post or comment id -> (likes, comments) : exact, kept in the same transaction as the rows
const COUNTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("content_counts");
/// post id -> views : flushed in batches from the shard's view buffer
const POST_VIEWS: TableDefinition<u64, u64> = TableDefinition::new("post_views");
/// (author, comment id) -> () : a user's comments on this shard (export, account erasure)
const USER_COMMENTS: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_comments");
/// (user, post or comment id) -> 1 for a comment, 0 for a post : a user's likes on this shard
const USER_LIKES: TableDefinition<(u64, u64), u8> = TableDefinition::new("user_likes");
/// name -> value : how far the one-time build of `user_comments`/`user_likes` over rows
/// written before they existed has come (`index_users_step`)
const CONTENT_META: TableDefinition<&str, u64> = TableDefinition::new("content_meta");

pub const COMMENT_CHARS_MAX: usize = 2000;
/// How deep replies to comments nest.
pub const COMMENT_DEPTH_MAX: u32 = 8;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Comment {
    pub id: u64,
    pub post_id: u64,
    pub author_id: u64,
    pub author_username: String,
    pub author_display_name: String,
    pub text: String,
    pub parent: Option<u64>,
    pub depth: u32,
    pub created_ms: u64,
    pub edited_ms: Option<u64>,
}

/// Comment text: like a post's, shorter.
pub fn parse_comment_text(raw: &str) -> Result<String, Invalid> {
    parse_user_text(raw, "a comment", COMMENT_CHARS_MAX)
}

/// (likes, comments) of a post, or (likes, replies) of a comment.
pub fn counts(read: &ReadTransaction, id: u64) -> Result<(u64, u64), CoreError> {
    let table = match read.open_table(COUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((0, 0)),
        Err(e) => return Err(e.into()),
    };
    let c = table.get(id)?.map(|v| v.value()).unwrap_or((0, 0));
    Ok(c)
}

pub fn liked(
    read: &ReadTransaction,
    id: u64,
    user: u64,
    of_comment: bool,
) -> Result<bool, CoreError> {
    let def = if of_comment {
        COMMENT_LIKES
    } else {
        POST_LIKES
    };
    let table = match read.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let found = table.get((id, user))?.is_some();
    Ok(found)
}

fn bump(txn: &WriteTransaction, id: u64, likes: i64, comments: i64) -> Result<(), CoreError> {
    let mut t = txn.open_table(COUNTS)?;
    let (a, b) = t.get(id)?.map(|v| v.value()).unwrap_or((0, 0));
    t.insert(
        id,
        (
            a.saturating_add_signed(likes),
            b.saturating_add_signed(comments),
        ),
    )?;
    Ok(())
}

/// Likes (`on`) or unlikes a post or comment; idempotent. Returns the new like count.
pub fn set_like(
    txn: &WriteTransaction,
    id: u64,
    user: u64,
    of_comment: bool,
    on: bool,
    now_ms: u64,
) -> Result<u64, CoreError> {
    let def = if of_comment {
        COMMENT_LIKES
    } else {
        POST_LIKES
    };
    let mut likes = txn.open_table(def)?;
    let changed = if on {
        likes.insert((id, user), now_ms)?.is_none()
    } else {
        likes.remove((id, user))?.is_some()
    };
    drop(likes);
    if changed {
        bump(txn, id, if on { 1 } else { -1 }, 0)?;
        let mut index = txn.open_table(USER_LIKES)?;
        if on {
            index.insert((user, id), u8::from(of_comment))?;
        } else {
            index.remove((user, id))?;
        }
    }
    if changed && on {
        notify_like(txn, id, user, of_comment, now_ms)?;
    }
    let count = txn
        .open_table(COUNTS)?
        .get(id)?
        .map(|v| v.value().0)
        .unwrap_or(0);
    Ok(count)
}

pub fn comment(read: &ReadTransaction, id: u64) -> Result<Option<Comment>, CoreError> {
    let table = match read.open_table(COMMENTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Adds a comment to a post (which the caller has checked the author may see). A reply to a
/// comment of another post, or nested deeper than `COMMENT_DEPTH_MAX`, is refused.
pub fn add_comment(txn: &WriteTransaction, mut comment: Comment) -> Result<Comment, CoreError> {
    if txn.open_table(POSTS)?.get(comment.post_id)?.is_none() {
        return Err(CoreError::NotFound);
    }
    let mut comments = txn.open_table(COMMENTS)?;
    if let Some(parent) = comment.parent {
        let parent: Comment = match comments.get(parent)? {
            Some(v) => decode(v.value())?,
            None => return Err(CoreError::NotFound),
        };
        if parent.post_id != comment.post_id {
            return Err(CoreError::NotFound);
        }
        if parent.depth >= COMMENT_DEPTH_MAX {
            return Err(CoreError::invalid(
                "too_deep",
                format!("replies nest at most {COMMENT_DEPTH_MAX} deep"),
            ));
        }
        comment.depth = parent.depth + 1;
    }
    comments.insert(comment.id, encode(&comment).as_slice())?;
    drop(comments);
    txn.open_table(POST_COMMENTS)?
        .insert((comment.post_id, comment.id), ())?;
    txn.open_table(USER_COMMENTS)?
        .insert((comment.author_id, comment.id), ())?;
    bump(txn, comment.post_id, 0, 1)?;
    if let Some(parent) = comment.parent {
        bump(txn, parent, 0, 1)?;
    }
    notify_comment(txn, &comment)?;
    Ok(comment)
}

/// Edits the text of the author's own comment.
pub fn edit_comment(
    txn: &WriteTransaction,
    id: u64,
    author: u64,
    text: String,
    now_ms: u64,
) -> Result<Comment, CoreError> {
    let mut comments = txn.open_table(COMMENTS)?;
    let mut c: Comment = match comments.get(id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    if c.author_id != author {
        return Err(CoreError::NotFound);
    }
    c.text = text;
    c.edited_ms = Some(now_ms);
    comments.insert(id, encode(&c).as_slice())?;
    Ok(c)
}

/// Deletes a comment, by its author or by the post's author. Replies to it stay (shown
/// under a deleted parent); its likes go.
pub fn delete_comment(txn: &WriteTransaction, id: u64, user: u64) -> Result<(), CoreError> {
    let c: Comment = match txn.open_table(COMMENTS)?.get(id)? {
        Some(v) => decode(v.value())?,
        None => return Err(CoreError::NotFound),
    };
    let post_author = match txn.open_table(POSTS)?.get(c.post_id)? {
        Some(v) => decode::<Post>(v.value())?.author_id,
        None => return Err(CoreError::NotFound),
    };
    if c.author_id != user && post_author != user {
        return Err(CoreError::NotFound);
    }
    remove_comment(txn, &c)
}

/// Removes a comment with its likes, keeping the counts of its post and parent exact.
fn remove_comment(txn: &WriteTransaction, c: &Comment) -> Result<(), CoreError> {
    let id = c.id;
    crate::notifications::forget_subject(txn, id)?;
    txn.open_table(COMMENTS)?.remove(id)?;
    txn.open_table(POST_COMMENTS)?.remove((c.post_id, id))?;
    txn.open_table(USER_COMMENTS)?.remove((c.author_id, id))?;
    bump(txn, c.post_id, 0, -1)?;
    if let Some(parent) = c.parent {
        bump(txn, parent, 0, -1)?;
    }
    let likers: Vec<u64> = txn
        .open_table(COMMENT_LIKES)?
        .extract_from_if((id, 0)..=(id, u64::MAX), |_, _| true)?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut index = txn.open_table(USER_LIKES)?;
    for u in likers {
        index.remove((u, id))?;
    }
    drop(index);
    txn.open_table(COUNTS)?.remove(id)?;
    Ok(())
}

/// Removes a deleted post's comments, likes (of the post and of its comments), counts and
/// views.
fn purge_reactions(txn: &WriteTransaction, post_id: u64) -> Result<(), CoreError> {
    let comment_ids: Vec<u64> = txn
        .open_table(POST_COMMENTS)?
        .extract_from_if((post_id, 0)..=(post_id, u64::MAX), |_, _| true)?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    {
        let mut comments = txn.open_table(COMMENTS)?;
        let mut likes = txn.open_table(COMMENT_LIKES)?;
        let mut counts = txn.open_table(COUNTS)?;
        let mut by_author = txn.open_table(USER_COMMENTS)?;
        let mut by_liker = txn.open_table(USER_LIKES)?;
        for c in &comment_ids {
            if let Some(v) = comments.remove(c)? {
                let comment: Comment = decode(v.value())?;
                by_author.remove((comment.author_id, *c))?;
            }
            counts.remove(c)?;
            let likers: Vec<u64> = likes
                .extract_from_if((*c, 0)..=(*c, u64::MAX), |_, _| true)?
                .map(|r| r.map(|(k, _)| k.value().1))
                .collect::<Result<_, _>>()?;
            for u in likers {
                by_liker.remove((u, *c))?;
            }
        }
        counts.remove(post_id)?;
    }
    let likers: Vec<u64> = txn
        .open_table(POST_LIKES)?
        .extract_from_if((post_id, 0)..=(post_id, u64::MAX), |_, _| true)?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut by_liker = txn.open_table(USER_LIKES)?;
    for u in likers {
        by_liker.remove((u, post_id))?;
    }
    drop(by_liker);
    txn.open_table(POST_VIEWS)?.remove(post_id)?;
    Ok(())
}

// ---- account export and erasure -----------------------------------------------------------
// Comments and likes live on the post's shard, so a user's comments and likes are spread
// over every shard; `user_comments` and `user_likes` index them by user on each shard.

/// A page of `author`'s comments on this shard, in id order after `after`.
pub fn comments_by(
    read: &ReadTransaction,
    author: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<Comment>, CoreError> {
    comments_keyed(read, USER_COMMENTS, author, after, limit)
}

/// A page of `user`'s likes on this shard as (id, is a comment), in id order after `after`.
pub fn likes_by(
    read: &ReadTransaction,
    user: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, bool)>, CoreError> {
    let index = match read.open_table(USER_LIKES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = after.map_or(0, |a| a.saturating_add(1));
    index
        .range((user, start)..=(user, u64::MAX))?
        .take(limit)
        .map(|r| {
            r.map(|(k, v)| (k.value().1, v.value() == 1))
                .map_err(Into::into)
        })
        .collect()
}

/// Is the one-time build of the per-user indexes finished?
pub fn users_indexed(read: &ReadTransaction) -> Result<bool, CoreError> {
    let table = match read.open_table(CONTENT_META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let done = table.get("user_index_done")?.is_some();
    Ok(done)
}

/// One step of the one-time build of `user_comments` and `user_likes` from the rows of a
/// data dir older than them: looks at up to `limit` rows of `comments`, then
/// `comment_likes`, then `post_likes`, from where the last step stopped (kept in
/// `content_meta`). Returns whether more is left. Indexing a row twice changes nothing.
pub fn index_users_step(txn: &WriteTransaction, limit: usize) -> Result<bool, CoreError> {
    let meta = txn.open_table(CONTENT_META)?;
    if meta.get("user_index_done")?.is_some() {
        return Ok(false);
    }
    let table = meta.get("user_index_table")?.map_or(0, |v| v.value());
    let a = meta.get("user_index_a")?.map_or(0, |v| v.value());
    let b = meta.get("user_index_b")?.map_or(0, |v| v.value());
    drop(meta);
    let (seen, last) = match table {
        0 => {
            let rows: Vec<(u64, u64)> = txn
                .open_table(COMMENTS)?
                .range(a..)?
                .take(limit)
                .map(|r| {
                    r.map_err(CoreError::from)
                        .and_then(|(k, v)| Ok((k.value(), decode::<Comment>(v.value())?.author_id)))
                })
                .collect::<Result<_, _>>()?;
            let mut index = txn.open_table(USER_COMMENTS)?;
            for (id, author) in &rows {
                index.insert((*author, *id), ())?;
            }
            (rows.len(), rows.last().map(|(id, _)| (*id, 0)))
        }
        1 | 2 => {
            let def = if table == 1 {
                COMMENT_LIKES
            } else {
                POST_LIKES
            };
            let rows: Vec<(u64, u64)> = txn
                .open_table(def)?
                .range((a, b)..)?
                .take(limit)
                .map(|r| r.map(|(k, _)| k.value()))
                .collect::<Result<_, _>>()?;
            let mut index = txn.open_table(USER_LIKES)?;
            for (id, user) in &rows {
                index.insert((*user, *id), u8::from(table == 1))?;
            }
            (rows.len(), rows.last().copied())
        }
        _ => (0, None),
    };
    let mut meta = txn.open_table(CONTENT_META)?;
    if seen < limit {
        if table >= 2 {
            meta.insert("user_index_done", 1)?;
            return Ok(false);
        }
        meta.insert("user_index_table", table + 1)?;
        meta.insert("user_index_a", 0)?;
        meta.insert("user_index_b", 0)?;
        return Ok(true);
    }
    // Go on just after the last row seen.
    let (la, lb) = last.unwrap_or((u64::MAX, u64::MAX));
    let (na, nb) = if table == 0 {
        (la.saturating_add(1), 0)
    } else {
        match lb.checked_add(1) {
            Some(n) => (la, n),
            None => (la.saturating_add(1), 0),
        }
    };
    meta.insert("user_index_a", na)?;
    meta.insert("user_index_b", nb)?;
    Ok(true)
}

/// The first `limit` of `author`'s post ids, inside a write (account erasure).
pub fn post_ids_in(
    txn: &WriteTransaction,
    author: u64,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let table = txn.open_table(USER_POSTS)?;
    let ids = table
        .range((author, 0)..=(author, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Deletes up to `limit` of `author`'s comments on this shard (counts stay exact); returns
/// how many went. Fewer than `limit`: none is left.
pub fn erase_comments(
    txn: &WriteTransaction,
    author: u64,
    limit: usize,
) -> Result<usize, CoreError> {
    let ids: Vec<u64> = txn
        .open_table(USER_COMMENTS)?
        .range((author, 0)..=(author, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for id in &ids {
        match comment_in(txn, *id)? {
            Some(c) => remove_comment(txn, &c)?,
            None => {
                txn.open_table(USER_COMMENTS)?.remove((author, *id))?;
            }
        }
    }
    Ok(ids.len())
}

/// Withdraws up to `limit` of `user`'s likes on this shard (counts stay exact); returns how
/// many went. Fewer than `limit`: none is left.
pub fn erase_likes(txn: &WriteTransaction, user: u64, limit: usize) -> Result<usize, CoreError> {
    let likes: Vec<(u64, u8)> = txn
        .open_table(USER_LIKES)?
        .range((user, 0)..=(user, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, v)| (k.value().1, v.value())))
        .collect::<Result<_, _>>()?;
    for (id, kind) in &likes {
        set_like(txn, *id, user, *kind == 1, false, 0)?;
        // A like whose row had gone already leaves only its index entry.
        txn.open_table(USER_LIKES)?.remove((user, *id))?;
    }
    Ok(likes.len())
}

/// Adds buffered view counts to posts that still exist.
pub fn add_views(txn: &WriteTransaction, views: &[(u64, u64)]) -> Result<(), CoreError> {
    let posts = txn.open_table(POSTS)?;
    let mut table = txn.open_table(POST_VIEWS)?;
    for (post, n) in views {
        if posts.get(*post)?.is_none() {
            continue;
        }
        let old = table.get(*post)?.map_or(0, |v| v.value());
        table.insert(*post, old.saturating_add(*n))?;
    }
    Ok(())
}

/// The flushed view count of a post.
pub fn views(read: &ReadTransaction, post_id: u64) -> Result<u64, CoreError> {
    let table = match read.open_table(POST_VIEWS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let n = table.get(post_id)?.map_or(0, |v| v.value());
    Ok(n)
}

/// A page of a post's comments, oldest first, after `after`.
pub fn comments_of(
    read: &ReadTransaction,
    post_id: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<Comment>, CoreError> {
    comments_keyed(read, POST_COMMENTS, post_id, after, limit)
}

/// The comments an index of (key, comment id) lists for `key`, in id order after `after`.
fn comments_keyed(
    read: &ReadTransaction,
    index: TableDefinition<(u64, u64), ()>,
    key: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<Comment>, CoreError> {
    let Some(index) = crate::table_or_none(read, index)? else {
        return Ok(Vec::new());
    };
    let start = after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::with_capacity(limit);
    for row in index.range((key, start)..=(key, u64::MAX))?.take(limit) {
        if let Some(c) = comment(read, row?.0.value().1)? {
            out.push(c);
        }
    }
    Ok(out)
}

// ---- notifications of likes and comments (the rules are in `notifications`) ---------------

/// The author of a post or comment, inside a write.
fn author_in(txn: &WriteTransaction, id: u64, of_comment: bool) -> Result<Option<u64>, CoreError> {
    if of_comment {
        let c = txn
            .open_table(COMMENTS)?
            .get(id)?
            .map(|v| decode::<Comment>(v.value()));
        Ok(c.transpose()?.map(|c| c.author_id))
    } else {
        let p = txn
            .open_table(POSTS)?
            .get(id)?
            .map(|v| decode::<Post>(v.value()));
        Ok(p.transpose()?.map(|p| p.author_id))
    }
}

fn notify_like(
    txn: &WriteTransaction,
    id: u64,
    user: u64,
    of_comment: bool,
    now_ms: u64,
) -> Result<(), CoreError> {
    use crate::notifications::Subject;
    let (author, subject) = if of_comment {
        match comment_in(txn, id)? {
            Some(c) => (
                c.author_id,
                Subject::Comment {
                    id,
                    post: c.post_id,
                },
            ),
            None => return Ok(()),
        }
    } else {
        match author_in(txn, id, false)? {
            Some(author) => (author, Subject::Post(id)),
            None => return Ok(()),
        }
    };
    crate::notifications::on_like(txn, author, user, subject, now_ms)
}

fn comment_in(txn: &WriteTransaction, id: u64) -> Result<Option<Comment>, CoreError> {
    let c = txn
        .open_table(COMMENTS)?
        .get(id)?
        .map(|v| decode::<Comment>(v.value()));
    c.transpose()
}

fn notify_comment(txn: &WriteTransaction, comment: &Comment) -> Result<(), CoreError> {
    let Some(post_author) = author_in(txn, comment.post_id, false)? else {
        return Ok(());
    };
    let parent_author = match comment.parent {
        Some(parent) => author_in(txn, parent, true)?,
        None => None,
    };
    crate::notifications::on_comment(txn, comment, post_author, parent_author)
}
