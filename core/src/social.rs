//! The social graph and home feeds (tables `follows`, `followers`, `followers_local`,
//! `blocks`, `blocked_by`, `feed_items`, `feed_posts`).
//!
//! Placement: every relation is stored on the shards of both users, each side written by its
//! own shard: `follows` (follower, followee) and `blocks` (blocker, blocked) on the acting
//! user's shard, in the same transaction as the event; `followers` (followee, follower) and
//! `blocked_by` (blocked, blocker) on the other user's shard, when the event is applied
//! there. So every question about one user ("does R follow me? did I block R, or R me?") is
//! answered by that user's own shard.
//!
//! Home feeds are read, not written: a shard keeps one durable copy of each post its users may
//! see (`post_copies`, indexed by author in `copies_by_author`), and a reader's home page is
//! the merge, newest first, of the author indexes of the reader and of everyone the reader
//! follows now, plus the reader's own `feed_items` rows (mentions). A new post therefore
//! costs each shard two appends, not one row per follower; unfollowing, blocking and muting
//! act at once because the sources are chosen at read time.

use redb::{
    ReadTransaction, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::content::{Post, Visibility};
use crate::ids::shard_of;
use crate::profiles::FeedPreferences;
use crate::CoreError;

/// (follower, followee) -> ms : on the follower's shard
const FOLLOWS: TableDefinition<(u64, u64), u64> = TableDefinition::new("follows");
/// (followee, follower) -> ms : on the follower's shard, to find local followers of an author
const FOLLOWERS_LOCAL: TableDefinition<(u64, u64), ()> = TableDefinition::new("followers_local");
/// (followee, follower) -> ms : on the followee's shard
const FOLLOWERS: TableDefinition<(u64, u64), u64> = TableDefinition::new("followers");
/// (blocker, blocked) -> ms : on the blocker's shard
const BLOCKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("blocks");
/// (blocked, blocker) -> ms : on the blocked user's shard
const BLOCKED_BY: TableDefinition<(u64, u64), u64> = TableDefinition::new("blocked_by");
/// (muter, muted) -> ms : on the muter's shard; only the muter's reads change
const MUTES: TableDefinition<(u64, u64), u64> = TableDefinition::new("mutes");
/// (muted, muter) -> ms : `mutes` the other way round, on the muter's shard: who mutes an
/// author, looked up once per new post (`audience`). Kept with `mutes` in every write, and
/// built from it at start when they differ (`index_muters`).
const MUTERS: TableDefinition<(u64, u64), u64> = TableDefinition::new("muters");
/// (reader, post id) -> (author, Reason as u8) : on the reader's shard; posts that reach a
/// reader other than by following their author (mentions). Rows of any reason written by
/// earlier versions are still read.
const FEED_ITEMS: TableDefinition<(u64, u64), (u64, u8)> = TableDefinition::new("feed_items");
/// post id -> Post : one copy per shard whose feeds hold the post (not one per reader)
const POST_COPIES: TableDefinition<u64, &[u8]> = TableDefinition::new("post_copies");
/// (post id, reader) -> () : which local `feed_items` rows name a post, for deletes
const FEED_POSTS: TableDefinition<(u64, u64), ()> = TableDefinition::new("feed_posts");
/// (author, post id) -> () : the posts of each author held in `post_copies` here
const COPIES_BY_AUTHOR: TableDefinition<(u64, u64), ()> = TableDefinition::new("copies_by_author");
/// post id -> () : the posts held here (this shard's own and its copies) whose visibility is
/// `mentioned`, for the feed scans that pass a followed author's posts without decoding them
/// (a head's ids, a page's skipped start): they decode only these, to leave them out of the
/// feeds of followers they do not mention. Written and removed with the post's rows.
const ADDRESSED_POSTS: TableDefinition<u64, ()> = TableDefinition::new("feed_addressed_posts");
/// (followee, requester) -> ms : follow requests to a private account, on its shard
const FOLLOW_REQUESTS: TableDefinition<(u64, u64), u64> = TableDefinition::new("follow_requests");
/// (reader, author) -> ms : follows whose backfill (copies of the author's recent posts) is
/// not written yet, on the reader's shard; written with the follow, removed by the backfill
const BACKFILLS: TableDefinition<(u64, u64), u64> = TableDefinition::new("feed_backfills");
/// user -> () : accounts that turned private (`WentPrivate` applied here, or the owner's own
/// shard), until they turn public again (`WentPublic`): a public post of one that arrives
/// after the switch mentions only its followers here (`mentioned_as_now`), whatever order
/// the two events came in
const PRIVATE_MIRROR: TableDefinition<u64, ()> = TableDefinition::new("private_mirror");
/// user id -> (followers, following) counts, each kept on the shard that owns that side
const COUNTS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("social_counts");

/// Why a post is in a feed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reason {
    Own,
    Followed,
    Mentioned,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::Own => 0,
            Reason::Followed => 1,
            Reason::Mentioned => 2,
        }
    }

    fn from_code(code: u8) -> Reason {
        match code {
            0 => Reason::Own,
            1 => Reason::Followed,
            _ => Reason::Mentioned,
        }
    }
}

macro_rules! open_read {
    ($read:expr, $def:expr, $empty:expr) => {
        match $read.open_table($def) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok($empty),
            Err(e) => return Err(e.into()),
        }
    };
}

/// A table that may not exist yet: `None` then.
fn optional<T>(opened: Result<T, redb::TableError>) -> Result<Option<T>, CoreError> {
    match opened {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn follows(read: &ReadTransaction, follower: u64, followee: u64) -> Result<bool, CoreError> {
    let t = open_read!(read, FOLLOWS, false);
    let found = t.get((follower, followee))?.is_some();
    Ok(found)
}

pub fn is_follower(
    read: &ReadTransaction,
    followee: u64,
    follower: u64,
) -> Result<bool, CoreError> {
    let t = open_read!(read, FOLLOWERS, false);
    let found = t.get((followee, follower))?.is_some();
    Ok(found)
}

/// `is_follower` inside a write (on the followee's shard).
pub fn is_follower_in(
    txn: &WriteTransaction,
    followee: u64,
    follower: u64,
) -> Result<bool, CoreError> {
    Ok(txn
        .open_table(FOLLOWERS)?
        .get((followee, follower))?
        .is_some())
}

/// True when either user blocked the other, asked on the shard of `user`.
pub fn blocked_either_way(
    read: &ReadTransaction,
    user: u64,
    other: u64,
) -> Result<bool, CoreError> {
    // Either table may not exist yet on this shard; each is checked on its own.
    if let Some(blocks) = optional(read.open_table(BLOCKS))? {
        if blocks.get((user, other))?.is_some() {
            return Ok(true);
        }
    }
    if let Some(by) = optional(read.open_table(BLOCKED_BY))? {
        if by.get((user, other))?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `blocked_either_way` inside a write transaction.
pub fn blocked_either_way_in(
    txn: &WriteTransaction,
    user: u64,
    other: u64,
) -> Result<bool, CoreError> {
    Ok(txn.open_table(BLOCKS)?.get((user, other))?.is_some()
        || txn.open_table(BLOCKED_BY)?.get((user, other))?.is_some())
}

/// (followers, following) of a user, on its shard.
pub fn counts(read: &ReadTransaction, user: u64) -> Result<(u64, u64), CoreError> {
    let t = open_read!(read, COUNTS, (0, 0));
    let c = t.get(user)?.map(|v| v.value()).unwrap_or((0, 0));
    Ok(c)
}

fn bump(
    txn: &WriteTransaction,
    user: u64,
    followers: i64,
    following: i64,
) -> Result<(), CoreError> {
    let mut t = txn.open_table(COUNTS)?;
    let (a, b) = t.get(user)?.map(|v| v.value()).unwrap_or((0, 0));
    let next = (
        a.saturating_add_signed(followers),
        b.saturating_add_signed(following),
    );
    t.insert(user, next)?;
    Ok(())
}

/// A page of ids from a (user, other) index, in insertion-key order: `followers` (who
/// follows `user`) or `following` (whom `user` follows).
pub fn page(
    read: &ReadTransaction,
    user: u64,
    followers_side: bool,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let def = if followers_side { FOLLOWERS } else { FOLLOWS };
    let t = open_read!(read, def, Vec::new());
    let start = after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::with_capacity(limit);
    for row in t.range((user, start)..=(user, u64::MAX))?.take(limit) {
        out.push(row?.0.value().1);
    }
    Ok(out)
}

/// Mutes (`on`) or unmutes `muted` for `muter`, on the muter's shard. Idempotent.
pub fn set_mute(
    txn: &WriteTransaction,
    muter: u64,
    muted: u64,
    on: bool,
    now_ms: u64,
) -> Result<(), CoreError> {
    let mut t = txn.open_table(MUTES)?;
    let mut muters = txn.open_table(MUTERS)?;
    if on {
        t.insert((muter, muted), now_ms)?;
        muters.insert((muted, muter), now_ms)?;
    } else {
        t.remove((muter, muted))?;
        muters.remove((muted, muter))?;
    }
    Ok(())
}

/// Start-up: builds `muters` from `mutes` when the two differ in size (a database from
/// before `muters` existed). Returns how many rows were indexed.
pub fn index_muters(txn: &WriteTransaction) -> Result<usize, CoreError> {
    let mutes = txn.open_table(MUTES)?;
    let mut muters = txn.open_table(MUTERS)?;
    if mutes.len()? == muters.len()? {
        return Ok(0);
    }
    muters.retain(|_, _| false)?;
    let mut n = 0;
    for row in mutes.iter()? {
        let (key, at) = row?;
        let (muter, muted) = key.value();
        muters.insert((muted, muter), at.value())?;
        n += 1;
    }
    Ok(n)
}

/// Whether `index_muters` has anything to do (a read, so a start with nothing to do writes
/// nothing).
pub fn muters_stale(read: &ReadTransaction) -> Result<bool, CoreError> {
    let Some(mutes) = crate::table_or_none(read, MUTES)? else {
        return Ok(false);
    };
    let muters = match crate::table_or_none(read, MUTERS)? {
        Some(t) => t.len()?,
        None => 0,
    };
    Ok(mutes.len()? != muters)
}

pub fn mutes(read: &ReadTransaction, muter: u64, muted: u64) -> Result<bool, CoreError> {
    let t = open_read!(read, MUTES, false);
    let found = t.get((muter, muted))?.is_some();
    Ok(found)
}

/// Up to `max` users `muter` mutes, on the muter's shard.
pub fn muted_by(read: &ReadTransaction, muter: u64, max: usize) -> Result<Vec<u64>, CoreError> {
    let t = open_read!(read, MUTES, Vec::new());
    let mut out = Vec::new();
    for row in t.range((muter, 0)..=(muter, u64::MAX))?.take(max) {
        out.push(row?.0.value().1);
    }
    Ok(out)
}

/// `follows` inside a write transaction.
pub fn follows_in(txn: &WriteTransaction, follower: u64, followee: u64) -> Result<bool, CoreError> {
    Ok(txn
        .open_table(FOLLOWS)?
        .get((follower, followee))?
        .is_some())
}

/// The most accounts one user may follow (a request counts when it is approved).
pub const FOLLOWING_MAX: u64 = 5_000;

/// Refuses a new follow by `follower` (on its shard) who follows `FOLLOWING_MAX` already.
pub fn check_following_room(txn: &WriteTransaction, follower: u64) -> Result<(), CoreError> {
    let following = txn
        .open_table(COUNTS)?
        .get(follower)?
        .map_or(0, |v| v.value().1);
    if following >= FOLLOWING_MAX {
        return Err(CoreError::invalid(
            "following_limit",
            format!("you follow {FOLLOWING_MAX} accounts, the most allowed"),
        ));
    }
    Ok(())
}

/// On the follower's shard. Returns false when it already held (nothing written).
pub fn follow(
    txn: &WriteTransaction,
    follower: u64,
    followee: u64,
    now_ms: u64,
) -> Result<bool, CoreError> {
    let mut f = txn.open_table(FOLLOWS)?;
    if f.get((follower, followee))?.is_some() {
        return Ok(false);
    }
    f.insert((follower, followee), now_ms)?;
    txn.open_table(FOLLOWERS_LOCAL)?
        .insert((followee, follower), ())?;
    txn.open_table(BACKFILLS)?
        .insert((follower, followee), now_ms)?;
    drop(f);
    bump(txn, follower, 0, 1)?;
    Ok(true)
}

/// On the follower's shard. Returns false when there was nothing to undo.
pub fn unfollow(txn: &WriteTransaction, follower: u64, followee: u64) -> Result<bool, CoreError> {
    let removed = txn
        .open_table(FOLLOWS)?
        .remove((follower, followee))?
        .is_some();
    if removed {
        txn.open_table(FOLLOWERS_LOCAL)?
            .remove((followee, follower))?;
        txn.open_table(BACKFILLS)?.remove((follower, followee))?;
        bump(txn, follower, 0, -1)?;
        drop_mentions_by(txn, follower, followee)?;
    }
    Ok(removed)
}

/// `reader` stopped following `author` (an unfollow, a block, an erasure): the author's posts
/// that reached the reader's feed by a mention leave it too, but for `mentioned` posts (which
/// address the reader). A followers-only post, or any post of a private account, is no longer
/// the reader's to read; and an unfollow means "not in my feed".
fn drop_mentions_by(txn: &WriteTransaction, reader: u64, author: u64) -> Result<(), CoreError> {
    let mut items = txn.open_table(FEED_ITEMS)?;
    let addressed = txn.open_table(ADDRESSED_POSTS)?;
    let mut gone = Vec::new();
    for row in items.range((reader, 0)..=(reader, u64::MAX))? {
        let (key, value) = row?;
        let post = key.value().1;
        if value.value().0 == author && addressed.get(post)?.is_none() {
            gone.push(post);
        }
    }
    let mut index = txn.open_table(FEED_POSTS)?;
    for post in gone {
        items.remove((reader, post))?;
        index.remove((post, reader))?;
    }
    Ok(())
}

/// On a private followee's shard: `requester` asks to follow. False when it already asked
/// (nothing written). The caller has checked blocks.
pub fn request_follow(
    txn: &WriteTransaction,
    followee: u64,
    requester: u64,
    now_ms: u64,
) -> Result<bool, CoreError> {
    let mut t = txn.open_table(FOLLOW_REQUESTS)?;
    if t.get((followee, requester))?.is_some() {
        return Ok(false);
    }
    t.insert((followee, requester), now_ms)?;
    Ok(true)
}

/// On the followee's shard: withdraw or reject a request. False when there was none.
pub fn drop_request(
    txn: &WriteTransaction,
    followee: u64,
    requester: u64,
) -> Result<bool, CoreError> {
    Ok(txn
        .open_table(FOLLOW_REQUESTS)?
        .remove((followee, requester))?
        .is_some())
}

/// On the followee's shard: a request withdrawn, refused or ended by a block goes, and the
/// followee's `follow_request` notification of it with it. False when there was none.
pub fn withdraw_request(
    txn: &WriteTransaction,
    followee: u64,
    requester: u64,
) -> Result<bool, CoreError> {
    if !drop_request(txn, followee, requester)? {
        return Ok(false);
    }
    let kind = crate::notifications::Kind::FollowRequest;
    crate::notifications::retract(txn, followee, kind, requester)?;
    Ok(true)
}

/// On the followee's shard: approve a request, making `requester` a follower here. False when
/// there was no such request. The caller records `FollowApproved` for the requester's shard.
pub fn approve_request(
    txn: &WriteTransaction,
    followee: u64,
    requester: u64,
    now_ms: u64,
) -> Result<bool, CoreError> {
    if !drop_request(txn, followee, requester)? {
        return Ok(false);
    }
    add_follower(txn, followee, requester, now_ms)?;
    Ok(true)
}

/// Is a request from `requester` to `followee` pending (on the followee's shard)?
pub fn requested(read: &ReadTransaction, followee: u64, requester: u64) -> Result<bool, CoreError> {
    let t = open_read!(read, FOLLOW_REQUESTS, false);
    let found = t.get((followee, requester))?.is_some();
    Ok(found)
}

/// A list a user keeps of others, on that user's shard, by the other's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnList {
    /// Who asked to follow the user (a private account).
    FollowRequests,
    /// Whom the user blocks.
    Blocks,
    /// Whom the user mutes.
    Mutes,
}

/// Up to `limit` entries of `user`'s `list` with ids past `after`, as (other user, since ms).
pub fn own_page(
    read: &ReadTransaction,
    list: OwnList,
    user: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, u64)>, CoreError> {
    let def = match list {
        OwnList::FollowRequests => FOLLOW_REQUESTS,
        OwnList::Blocks => BLOCKS,
        OwnList::Mutes => MUTES,
    };
    let t = open_read!(read, def, Vec::new());
    let start = after.map_or(0, |a| a.saturating_add(1));
    t.range((user, start)..=(user, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, v)| (k.value().1, v.value())).map_err(Into::into))
        .collect()
}

/// On the follower's shard, applying `FollowApproved`: the follow rows of this side, unless
/// either blocked the other in the meantime.
pub fn apply_approved(
    txn: &WriteTransaction,
    follower: u64,
    followee: u64,
    now_ms: u64,
) -> Result<(), CoreError> {
    if blocked_either_way_in(txn, follower, followee)? {
        return Ok(());
    }
    follow(txn, follower, followee, now_ms)?;
    Ok(())
}

/// On the followee's shard, applying `Followed`.
pub fn add_follower(
    txn: &WriteTransaction,
    followee: u64,
    follower: u64,
    now_ms: u64,
) -> Result<(), CoreError> {
    if blocked_either_way_in(txn, followee, follower)? {
        // Blocked (by either side) while the event was in flight: the block wins.
        return Ok(());
    }
    if txn
        .open_table(FOLLOWERS)?
        .insert((followee, follower), now_ms)?
        .is_none()
    {
        bump(txn, followee, 1, 0)?;
        crate::notifications::on_follow(txn, followee, follower, now_ms)?;
    }
    Ok(())
}

/// On the followee's shard, applying `Unfollowed`.
pub fn remove_follower(
    txn: &WriteTransaction,
    followee: u64,
    follower: u64,
) -> Result<(), CoreError> {
    if txn
        .open_table(FOLLOWERS)?
        .remove((followee, follower))?
        .is_some()
    {
        bump(txn, followee, -1, 0)?;
    }
    Ok(())
}

/// On the blocker's shard: record the block and end follows in both directions on this side.
/// Returns false when the block already held.
pub fn block(
    txn: &WriteTransaction,
    blocker: u64,
    blocked: u64,
    now_ms: u64,
) -> Result<bool, CoreError> {
    if txn
        .open_table(BLOCKS)?
        .insert((blocker, blocked), now_ms)?
        .is_some()
    {
        return Ok(false);
    }
    unfollow(txn, blocker, blocked)?;
    remove_follower(txn, blocker, blocked)?;
    withdraw_request(txn, blocker, blocked)?;
    Ok(true)
}

pub fn unblock(txn: &WriteTransaction, blocker: u64, blocked: u64) -> Result<bool, CoreError> {
    Ok(txn
        .open_table(BLOCKS)?
        .remove((blocker, blocked))?
        .is_some())
}

/// On the blocked user's shard, applying `Blocked`: mirror it and end follows this side.
pub fn apply_blocked(
    txn: &WriteTransaction,
    blocker: u64,
    blocked: u64,
    now_ms: u64,
) -> Result<(), CoreError> {
    txn.open_table(BLOCKED_BY)?
        .insert((blocked, blocker), now_ms)?;
    unfollow(txn, blocked, blocker)?;
    remove_follower(txn, blocked, blocker)?;
    withdraw_request(txn, blocked, blocker)?;
    Ok(())
}

pub fn apply_unblocked(
    txn: &WriteTransaction,
    blocker: u64,
    blocked: u64,
) -> Result<(), CoreError> {
    txn.open_table(BLOCKED_BY)?.remove((blocked, blocker))?;
    Ok(())
}

/// The shards (of `shards`) holding followers of `author` (asked on the author's shard),
/// looking at `cap` followers at most; the scan stops once every shard is found.
pub fn follower_shards(
    read: &ReadTransaction,
    author: u64,
    (shard_of, shards): (impl Fn(u64) -> usize, usize),
    cap: usize,
) -> Result<Vec<usize>, CoreError> {
    let t = open_read!(read, FOLLOWERS, Vec::new());
    let mut out: Vec<usize> = Vec::new();
    for row in t.range((author, 0)..=(author, u64::MAX))?.take(cap) {
        let s = shard_of(row?.0.value().1);
        if !out.contains(&s) {
            out.push(s);
            if out.len() >= shards {
                break;
            }
        }
    }
    Ok(out)
}

/// Makes `post` readable in the home feeds of this shard: a post of another shard's author is
/// copied here when the author has followers here or mentions someone here (a local
/// author's post is read from `posts`, written in the same transaction), and a feed row is
/// kept for each user of `mentioned_here` (users on this shard it mentions) who has not
/// blocked the author or been blocked by it.
pub fn fan_out(
    txn: &WriteTransaction,
    post: &Post,
    author_here: bool,
    mentioned_here: &[u64],
) -> Result<(), CoreError> {
    fan_out_all(txn, &[(post, mentioned_here)], author_here)
}

/// `fan_out` for several posts (post, its mentioned users of this shard) in one pass, each
/// table opened once (a batch of composes on the authors' shard).
pub fn fan_out_all(
    txn: &WriteTransaction,
    posts: &[(&Post, &[u64])],
    author_here: bool,
) -> Result<(), CoreError> {
    crate::notifications::on_mentions(txn, posts)?;
    // Only a copy asks for local followers, and the author's own shard keeps none.
    let local = match author_here {
        true => None,
        false => Some(txn.open_table(FOLLOWERS_LOCAL)?),
    };
    let mut blocks = None;
    let mut copies = None;
    let mut feed = None;
    for (post, mentioned_here) in posts {
        let author = post.author_id;
        let mut mentioned = Vec::with_capacity(mentioned_here.len());
        for user in *mentioned_here {
            if *user == author || mentioned.contains(user) {
                continue;
            }
            let (blocks, by) = match &mut blocks {
                Some(t) => t,
                None => blocks.insert((txn.open_table(BLOCKS)?, txn.open_table(BLOCKED_BY)?)),
            };
            let key = (*user, author);
            if blocks.get(key)?.is_none() && by.get(key)?.is_none() {
                mentioned.push(*user);
            }
        }
        // The author's own shard reads the post from `posts` (content's rows, written in the
        // same transaction): a copy is kept of other shards' posts only, and only where
        // someone follows the author or is mentioned.
        let copied = match &local {
            None => false,
            Some(local) => {
                !mentioned.is_empty()
                    || local
                        .range((author, 0)..=(author, u64::MAX))?
                        .next()
                        .is_some()
            }
        };
        if copied {
            let (posts, by_author) = match &mut copies {
                Some(t) => t,
                None => copies.insert((
                    txn.open_table(POST_COPIES)?,
                    txn.open_table(COPIES_BY_AUTHOR)?,
                )),
            };
            posts.insert(post.id, encode(*post).as_slice())?;
            by_author.insert((author, post.id), ())?;
        }
        if (author_here || copied) && post.visibility == Visibility::Mentioned {
            txn.open_table(ADDRESSED_POSTS)?.insert(post.id, ())?;
        }
        if mentioned.is_empty() {
            continue;
        }
        let (items, index) = match &mut feed {
            Some(t) => t,
            None => feed.insert((txn.open_table(FEED_ITEMS)?, txn.open_table(FEED_POSTS)?)),
        };
        for reader in mentioned {
            items.insert((reader, post.id), (author, Reason::Mentioned.code()))?;
            index.insert((post.id, reader), ())?;
        }
    }
    Ok(())
}

/// Stores this shard's copy of a post and its author-index row.
fn keep_copy(txn: &WriteTransaction, post: &Post) -> Result<(), CoreError> {
    txn.open_table(POST_COPIES)?
        .insert(post.id, encode(post).as_slice())?;
    txn.open_table(COPIES_BY_AUTHOR)?
        .insert((post.author_id, post.id), ())?;
    if post.visibility == Visibility::Mentioned {
        txn.open_table(ADDRESSED_POSTS)?.insert(post.id, ())?;
    }
    Ok(())
}

/// The readers on this shard whose feeds `fan_out` would put `post` in, and why: what a
/// shard shows before the fan-out's own commit (see `home`'s `early`), without those it is not
/// for (`audience`).
pub fn fan_out_readers(
    read: &ReadTransaction,
    post: &Post,
    author_here: bool,
    mentioned_here: &[u64],
) -> Result<Vec<(u64, Reason)>, CoreError> {
    let readers = readers_among(
        crate::table_or_none(read, FOLLOWERS_LOCAL)?.as_ref(),
        crate::table_or_none(read, BLOCKS)?.as_ref(),
        crate::table_or_none(read, BLOCKED_BY)?.as_ref(),
        post,
        author_here,
        mentioned_here,
    )?;
    audience(read, post, readers, |(r, _)| *r)
}

fn readers_among(
    local: Option<&impl ReadableTable<(u64, u64), ()>>,
    blocks: Option<&impl ReadableTable<(u64, u64), u64>>,
    by: Option<&impl ReadableTable<(u64, u64), u64>>,
    post: &Post,
    author_here: bool,
    mentioned_here: &[u64],
) -> Result<Vec<(u64, Reason)>, CoreError> {
    let mut readers: Vec<(u64, Reason)> = Vec::new();
    if author_here {
        readers.push((post.author_id, Reason::Own));
    }
    if let Some(local) = local {
        for row in local.range((post.author_id, 0)..=(post.author_id, u64::MAX))? {
            readers.push((row?.0.value().1, Reason::Followed));
        }
    }
    for user in mentioned_here {
        let key = (*user, post.author_id);
        let blocked = match blocks {
            Some(t) => t.get(key)?.is_some(),
            None => false,
        } || match by {
            Some(t) => t.get(key)?.is_some(),
            None => false,
        };
        if !blocked && !readers.iter().any(|(r, _)| r == user) {
            readers.push((*user, Reason::Mentioned));
        }
    }
    Ok(readers)
}

/// A post as home feeds on shard `here` show it: a post of this shard from `posts`, another
/// shard's from this shard's copy, if it holds one.
pub fn copy(read: &ReadTransaction, here: usize, post_id: u64) -> Result<Option<Post>, CoreError> {
    if shard_of(post_id) == here {
        return crate::content::post(read, post_id);
    }
    let copies = open_read!(read, POST_COPIES, None);
    let value = copies.get(post_id)?;
    value.map(|v| decode(v.value())).transpose()
}

/// Replaces this shard's copy of an edited post, if it holds one.
pub fn refresh_copy(txn: &WriteTransaction, post: &Post) -> Result<(), CoreError> {
    let mut copies = txn.open_table(POST_COPIES)?;
    if copies.get(post.id)?.is_some() {
        copies.insert(post.id, encode(post).as_slice())?;
    }
    Ok(())
}

/// Keeps copies of earlier posts of a newly followed `author` here (on the reader's shard),
/// so that they show in the reader's home feed, unless the follow ended or a block came in
/// the meantime. Either way the follow's pending backfill row is done.
pub fn backfill(
    txn: &WriteTransaction,
    reader: u64,
    author: u64,
    posts: &[Post],
) -> Result<(), CoreError> {
    txn.open_table(BACKFILLS)?.remove((reader, author))?;
    // An author of the reader's shard: its posts are here already (`posts`).
    if shard_of(author) == shard_of(reader)
        || txn.open_table(FOLLOWS)?.get((reader, author))?.is_none()
        || txn.open_table(BLOCKS)?.get((reader, author))?.is_some()
        || txn.open_table(BLOCKED_BY)?.get((reader, author))?.is_some()
    {
        return Ok(());
    }
    for post in posts.iter().filter(|p| p.author_id == author) {
        let held = txn
            .open_table(COPIES_BY_AUTHOR)?
            .get((author, post.id))?
            .is_some();
        if !held {
            keep_copy(txn, post)?;
        }
    }
    Ok(())
}

/// Up to `limit` follows on this shard, as (reader, author), whose backfill was asked for at
/// or before `before_ms` and is still not written (a crash or a failed request in between).
pub fn pending_backfills(
    read: &ReadTransaction,
    before_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, u64)>, CoreError> {
    let t = open_read!(read, BACKFILLS, Vec::new());
    let mut out = Vec::new();
    for row in t.iter()? {
        let (key, ms) = row?;
        if ms.value() <= before_ms {
            out.push(key.value());
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

/// The readers on this shard whose home feeds show a post: its author when `author_here`,
/// the author's local followers, and users whose feed rows name it (mentions); not those it
/// is not addressed to, nor those who mute its author.
pub fn feed_readers(
    read: &ReadTransaction,
    post: &Post,
    author_here: bool,
) -> Result<Vec<u64>, CoreError> {
    let mut readers: Vec<u64> = readers_among(
        crate::table_or_none(read, FOLLOWERS_LOCAL)?.as_ref(),
        None::<&redb::ReadOnlyTable<(u64, u64), u64>>,
        None::<&redb::ReadOnlyTable<(u64, u64), u64>>,
        post,
        author_here,
        &[],
    )?
    .into_iter()
    .map(|(reader, _)| reader)
    .collect();
    if let Some(index) = crate::table_or_none(read, FEED_POSTS)? {
        for row in index.range((post.id, 0)..=(post.id, u64::MAX))? {
            let reader = row?.0.value().1;
            if !readers.contains(&reader) {
                readers.push(reader);
            }
        }
    }
    audience(read, post, readers, |r| *r)
}

/// `readers` without those `post` is not for, as `home`'s merge leaves it out for them: a
/// `mentioned` post's readers it does not mention, and those who mute its author.
fn audience<T>(
    read: &ReadTransaction,
    post: &Post,
    readers: Vec<T>,
    reader_of: impl Fn(&T) -> u64,
) -> Result<Vec<T>, CoreError> {
    let muters = Muters::of(read, post.author_id, readers.len())?;
    let mut kept = Vec::with_capacity(readers.len());
    for r in readers {
        let reader = reader_of(&r);
        let muted = reader != post.author_id && muters.mute(reader, post.author_id)?;
        if post.addressed_to(reader) && !muted {
            kept.push(r);
        }
    }
    Ok(kept)
}

/// Who on this shard mutes an author, as `audience` asks it of each reader of a post.
enum Muters {
    /// All of them (by id), from `muters`: no more than the readers asked about.
    Few(Vec<u64>),
    /// More than the readers: each reader is looked up in `mutes` instead.
    Many(redb::ReadOnlyTable<(u64, u64), u64>),
}

impl Muters {
    fn of(read: &ReadTransaction, author: u64, readers: usize) -> Result<Self, CoreError> {
        let Some(index) = crate::table_or_none(read, MUTERS)? else {
            return Ok(Muters::Few(Vec::new()));
        };
        let mut few = Vec::new();
        for row in index.range((author, 0)..=(author, u64::MAX))? {
            if few.len() >= readers {
                return Ok(match crate::table_or_none(read, MUTES)? {
                    Some(mutes) => Muters::Many(mutes),
                    None => Muters::Few(Vec::new()),
                });
            }
            few.push(row?.0.value().1);
        }
        Ok(Muters::Few(few))
    }

    fn mute(&self, reader: u64, author: u64) -> Result<bool, CoreError> {
        Ok(match self {
            // In key order, so sorted.
            Muters::Few(ids) => ids.binary_search(&reader).is_ok(),
            Muters::Many(mutes) => mutes.get((reader, author))?.is_some(),
        })
    }
}

/// `author` turned private, on any shard: a public post of a private account is for its
/// followers, so its posts (this shard's own and its copies) leave the feeds of the readers
/// here they reached by a mention (`feed_items` rows) who do not follow it. A `mentioned`
/// post stays with those it addresses. The readers whose feeds changed, once each.
pub fn went_private(txn: &WriteTransaction, author: u64) -> Result<Vec<u64>, CoreError> {
    txn.open_table(PRIVATE_MIRROR)?.insert(author, ())?;
    let mut posts: Vec<u64> = txn
        .open_table(COPIES_BY_AUTHOR)?
        .range((author, 0)..=(author, u64::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    posts.extend(crate::content::post_ids_in(txn, author, usize::MAX)?);
    let addressed = txn.open_table(ADDRESSED_POSTS)?;
    let follows = txn.open_table(FOLLOWS)?;
    let mut index = txn.open_table(FEED_POSTS)?;
    let mut items = txn.open_table(FEED_ITEMS)?;
    let mut changed = Vec::new();
    for post in posts {
        if addressed.get(post)?.is_some() {
            continue;
        }
        // Its mentions of strangers here go too (the post is followers-only now).
        crate::notifications::forget_mentions(txn, post, |reader| {
            Ok(reader == author || follows.get((reader, author))?.is_some())
        })?;
        let readers: Vec<u64> = index
            .range((post, 0)..=(post, u64::MAX))?
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for reader in readers {
            if reader == author || follows.get((reader, author))?.is_some() {
                continue;
            }
            items.remove((reader, post))?;
            index.remove((post, reader))?;
            changed.push(reader);
        }
    }
    changed.sort_unstable();
    changed.dedup();
    Ok(changed)
}

/// `author` turned public again, on any shard: `went_private`'s mark goes.
pub fn went_public(txn: &WriteTransaction, author: u64) -> Result<(), CoreError> {
    txn.open_table(PRIVATE_MIRROR)?.remove(author)?;
    Ok(())
}

/// Of `mentioned` (users of this shard a new post mentions), those it may reach: all of
/// them, unless the post is public and its account turned private (`went_private`) before
/// the post arrived here, when only its followers.
pub fn mentioned_as_now(
    txn: &WriteTransaction,
    post: &Post,
    mentioned: Vec<u64>,
) -> Result<Vec<u64>, CoreError> {
    if mentioned.is_empty() || post.visibility != Visibility::Public {
        return Ok(mentioned);
    }
    let mirror = txn.open_table(PRIVATE_MIRROR)?;
    keep_followers_if_private(&mirror, &txn.open_table(FOLLOWS)?, post, mentioned)
}

/// `mentioned_as_now` in a read (an offered post shown before its fan-out commits).
pub fn mentioned_as_now_read(
    read: &ReadTransaction,
    post: &Post,
    mentioned: Vec<u64>,
) -> Result<Vec<u64>, CoreError> {
    if mentioned.is_empty() || post.visibility != Visibility::Public {
        return Ok(mentioned);
    }
    let Some(mirror) = crate::table_or_none(read, PRIVATE_MIRROR)? else {
        return Ok(mentioned);
    };
    match crate::table_or_none(read, FOLLOWS)? {
        Some(follows) => keep_followers_if_private(&mirror, &follows, post, mentioned),
        // Nobody here follows anyone.
        None if mirror.get(post.author_id)?.is_some() => Ok(Vec::new()),
        None => Ok(mentioned),
    }
}

fn keep_followers_if_private(
    mirror: &impl ReadableTable<u64, ()>,
    follows: &impl ReadableTable<(u64, u64), u64>,
    post: &Post,
    mentioned: Vec<u64>,
) -> Result<Vec<u64>, CoreError> {
    let author = post.author_id;
    if mirror.get(author)?.is_none() {
        return Ok(mentioned);
    }
    let mut kept = Vec::with_capacity(mentioned.len());
    for reader in mentioned {
        if follows.get((reader, author))?.is_some() {
            kept.push(reader);
        }
    }
    Ok(kept)
}

/// Removes a post from every feed on this shard: its copy, its author-index row and the feed
/// rows naming it.
pub fn unfan(txn: &WriteTransaction, post_id: u64) -> Result<(), CoreError> {
    let mut index = txn.open_table(FEED_POSTS)?;
    let readers: Vec<u64> = index
        .range((post_id, 0)..=(post_id, u64::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut items = txn.open_table(FEED_ITEMS)?;
    for reader in readers {
        items.remove((reader, post_id))?;
        index.remove((post_id, reader))?;
    }
    let mut copies = txn.open_table(POST_COPIES)?;
    let author = match copies.remove(post_id)? {
        Some(copy) => Some(decode::<Post>(copy.value())?.author_id),
        None => None,
    };
    if let Some(author) = author {
        txn.open_table(COPIES_BY_AUTHOR)?
            .remove((author, post_id))?;
    }
    txn.open_table(ADDRESSED_POSTS)?.remove(post_id)?;
    Ok(())
}

/// A page of `reader`'s home feed, newest first, strictly between `min_id` and `max_id`,
/// keeping only items the reader may still see (own posts, posts of people it follows now,
/// mentions), never anything across a block: the merge of the author index ranges of the
/// reader and of each account it follows with its own feed rows. Scans at most `scan_max`
/// rows; returns the items
/// and, when the scan stopped at that cap before filling the page, the last id scanned (the
/// cursor to continue from).
///
/// `hidden` names authors nobody else may see now (suspended): their posts are passed over
/// like blocked ones, so a page stays full.
///
/// `early` are feed items of `reader` delivered to this shard whose fan-out has not committed
/// yet (ascending post ids): they are merged in and pass the same checks. The first `skip`
/// posts the page would show (in scan order) are left out, without decoding them when the
/// preferences do not need their text (the benchmark API's `start`).
#[allow(clippy::too_many_arguments)]
pub fn home(
    read: &ReadTransaction,
    reader: u64,
    max_id: Option<u64>,
    min_id: Option<u64>,
    (skip, limit): (usize, usize),
    scan_max: usize,
    prefs: &FeedPreferences,
    early: &[(&Post, Reason)],
    hidden: &dyn Fn(u64) -> bool,
) -> Result<(Vec<Post>, Option<u64>), CoreError> {
    let range = (max_id, min_id);
    let want = Want::Posts(prefs);
    let (items, more) = scan(
        read,
        reader,
        range,
        (skip, limit),
        scan_max,
        want,
        early,
        hidden,
    )?;
    Ok((items.into_iter().filter_map(|(_, p)| p).collect(), more))
}

/// The ids of the newest `limit` posts of `reader`'s home feed that `home` would show with
/// no preferences and nobody hidden, without decoding them (what the engine keeps in
/// memory and filters when it serves a page), and the cursor as `home`'s.
pub fn home_ids(
    read: &ReadTransaction,
    reader: u64,
    limit: usize,
    scan_max: usize,
    early: &[(&Post, Reason)],
) -> Result<(Vec<u64>, Option<u64>), CoreError> {
    let (items, more) = scan(
        read,
        reader,
        (None, None),
        (0, limit),
        scan_max,
        Want::Ids,
        early,
        &|_| false,
    )?;
    Ok((items.into_iter().map(|(id, _)| id).collect(), more))
}

/// What a feed scan gives: decoded posts filtered by preferences, or ids only.
#[derive(Clone, Copy)]
enum Want<'p> {
    Posts(&'p FeedPreferences),
    Ids,
}

/// A post a feed scan shows: its id, and the post unless only ids are wanted.
type Scanned = (u64, Option<Post>);

/// `home`'s merge: the posts shown, and the cursor.
#[allow(clippy::too_many_arguments)]
fn scan(
    read: &ReadTransaction,
    reader: u64,
    (max_id, min_id): (Option<u64>, Option<u64>),
    (skip, limit): (usize, usize),
    scan_max: usize,
    want: Want<'_>,
    early: &[(&Post, Reason)],
    hidden: &dyn Fn(u64) -> bool,
) -> Result<(Vec<Scanned>, Option<u64>), CoreError> {
    let no_prefs = FeedPreferences::default();
    let prefs = match want {
        Want::Posts(prefs) => prefs,
        Want::Ids => &no_prefs,
    };
    let mut skip = skip;
    let low = min_id.map_or(0, |m| m.saturating_add(1));
    let high = max_id.map_or(u64::MAX, |m| m.saturating_sub(1));
    if low > high {
        return Ok((Vec::new(), None));
    }
    let early: Vec<&(&Post, Reason)> = early
        .iter()
        .filter(|(p, _)| (low..=high).contains(&p.id))
        .collect();
    // Posts of this shard's authors are read from `posts` and its author index (content's
    // rows); other shards' posts from this shard's copies.
    let here = shard_of(reader);
    let copies = crate::table_or_none(read, POST_COPIES)?;
    let local_posts = crate::content::posts_table(read)?;
    if copies.is_none() && local_posts.is_none() && early.is_empty() {
        return Ok((Vec::new(), None));
    }
    let stored = |post_id: u64| match (shard_of(post_id) == here, &local_posts, &copies) {
        (true, Some(t), _) | (false, _, Some(t)) => t.get(post_id),
        _ => Ok(None),
    };
    let by_author = crate::table_or_none(read, COPIES_BY_AUTHOR)?;
    let local_index = crate::content::author_index(read)?;
    let items = crate::table_or_none(read, FEED_ITEMS)?;
    let follows_t = crate::table_or_none(read, FOLLOWS)?;
    let blocks_t = crate::table_or_none(read, BLOCKS)?;
    let by_t = crate::table_or_none(read, BLOCKED_BY)?;
    let mutes_t = crate::table_or_none(read, MUTES)?;
    let addressed_t = crate::table_or_none(read, ADDRESSED_POSTS)?;
    // Whether a post the scan passes without decoding it exists and is for the reader: only a
    // `mentioned` post (listed in `addressed_t`) is decoded to ask.
    let passes = |post_id: u64, author: u64, early_post: Option<&Post>, copy_here: bool| {
        if let Some(post) = early_post {
            return Ok::<_, CoreError>(author == reader || post.addressed_to(reader));
        }
        let addressed = author != reader
            && match &addressed_t {
                Some(t) => t.get(post_id)?.is_some(),
                None => false,
            };
        if !addressed {
            return Ok(copy_here || stored(post_id)?.is_some());
        }
        Ok(match stored(post_id)? {
            Some(bytes) => decode::<Post>(bytes.value())?.addressed_to(reader),
            None => false,
        })
    };
    let forward = min_id.is_some() && max_id.is_none();
    // The sources, each ordered by post id: the reader's own posts, the posts of everyone the
    // reader follows, the reader's feed rows, the early items. Rows are
    // (post id, author, reason code, the post when it is an early one).
    let mut sources: Vec<Box<dyn Iterator<Item = Row<'_>> + '_>> = Vec::new();
    {
        let mut authors = vec![(reader, Reason::Own)];
        if let Some(follows) = &follows_t {
            for row in follows
                .range((reader, 0)..=(reader, u64::MAX))?
                .take(HOME_SOURCES_MAX)
            {
                authors.push((row?.0.value().1, Reason::Followed));
            }
        }
        for (author, reason) in authors {
            let index = match shard_of(author) == here {
                true => &local_index,
                false => &by_author,
            };
            let Some(index) = index else {
                continue;
            };
            let rows = index
                .range((author, low)..=(author, high))?
                .map(move |row| Ok((row?.0.value().1, author, reason.code(), None, true)));
            sources.push(if forward {
                Box::new(rows)
            } else {
                Box::new(rows.rev())
            });
        }
    }
    if let Some(items) = &items {
        let rows = items.range((reader, low)..=(reader, high))?.map(|row| {
            let (key, value) = row?;
            let (author, reason) = value.value();
            Ok((key.value().1, author, reason, None, false))
        });
        sources.push(if forward {
            Box::new(rows)
        } else {
            Box::new(rows.rev())
        });
    }
    let early_rows = early
        .iter()
        .map(|(p, reason)| Ok((p.id, p.author_id, reason.code(), Some(*p), false)));
    sources.push(if forward {
        Box::new(early_rows)
    } else {
        Box::new(early_rows.rev())
    });
    let mut out = Vec::with_capacity(limit);
    let mut last = None;
    let mut scanned = 0;
    // The last post id shown or skipped: sources can name one post twice, one after the other.
    let mut taken = None;
    let mut verdicts: std::collections::HashMap<(u64, u8), bool> = Default::default();
    for row in Merged::new(sources, forward).take(scan_max) {
        let (post_id, author, reason, early_post, copy_here) = row?;
        last = Some(post_id);
        scanned += 1;
        if taken == Some(post_id) {
            continue;
        }
        // Feeds repeat authors: each (author, reason) is checked once per page.
        let shown = match verdicts.get(&(author, reason)) {
            Some(shown) => *shown,
            None => {
                let keep = match Reason::from_code(reason) {
                    Reason::Own => author == reader,
                    Reason::Followed => match &follows_t {
                        Some(t) => t.get((reader, author))?.is_some(),
                        None => false,
                    },
                    Reason::Mentioned => true,
                };
                let blocked = author != reader
                    && (match &blocks_t {
                        Some(t) => t.get((reader, author))?.is_some(),
                        None => false,
                    } || match &by_t {
                        Some(t) => t.get((reader, author))?.is_some(),
                        None => false,
                    });
                let muted = author != reader
                    && match &mutes_t {
                        Some(t) => t.get((reader, author))?.is_some(),
                        None => false,
                    };
                let shown = keep && !blocked && !muted && (author == reader || !hidden(author));
                verdicts.insert((author, reason), shown);
                shown
            }
        };
        if !shown {
            continue;
        }
        if matches!(want, Want::Ids) {
            if passes(post_id, author, early_post, copy_here)? {
                taken = Some(post_id);
                out.push((post_id, None));
                if out.len() >= limit {
                    break;
                }
            }
            continue;
        }
        if skip > 0 && prefs.hides_nothing() {
            if passes(post_id, author, early_post, copy_here)? {
                skip -= 1;
                taken = Some(post_id);
            }
            continue;
        }
        let post = match early_post {
            Some(post) => Some(post.clone()),
            None => match stored(post_id)? {
                Some(bytes) => Some(decode::<Post>(bytes.value())?),
                None => None,
            },
        };
        let Some(post) = post else {
            continue;
        };
        taken = Some(post_id);
        if author != reader
            && (prefs.hides(&post.text, post.reply_to.is_some()) || !post.addressed_to(reader))
        {
            continue;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        out.push((post.id, Some(post)));
        if out.len() >= limit {
            break;
        }
    }
    if forward {
        out.reverse();
    }
    let more_from = if scanned >= scan_max && out.len() < limit {
        last
    } else {
        None
    };
    Ok((out, more_from))
}

/// A home feed row: (post id, author, reason code, the post when it is an early one,
/// whether its post is known to be here). A row of an author index always has its post: a
/// copy and its `copies_by_author` row are written together (`keep_copy`, `fan_out_all`) and
/// removed together (`unfan`), as are a local post and its `user_posts` row (`content`), so
/// a scan need not look the post up to know it is there; a feed row (a mention, or a row of
/// an earlier version) is checked.
type FeedRow<'p> = (u64, u64, u8, Option<&'p Post>, bool);
type Row<'p> = Result<FeedRow<'p>, CoreError>;

/// At most this many followed accounts are read into one home page (a follow beyond
/// `FOLLOWING_MAX` can only come from requests approved late).
const HOME_SOURCES_MAX: usize = FOLLOWING_MAX as usize + 1_000;

/// Id-ordered streams of feed rows as one (ascending when `forward`, else descending). Rows
/// with the same post id come out one after the other; an error comes out as soon as it is
/// met.
struct Merged<'a, 'p> {
    sources: Vec<Box<dyn Iterator<Item = Row<'p>> + 'a>>,
    /// The next row of each source, by source index.
    heads: Vec<Option<FeedRow<'p>>>,
    /// (ordering key, source index) of every source with a head; the largest comes next.
    heap: std::collections::BinaryHeap<(u64, usize)>,
    failed: Option<CoreError>,
    forward: bool,
}

impl<'a, 'p> Merged<'a, 'p> {
    fn new(sources: Vec<Box<dyn Iterator<Item = Row<'p>> + 'a>>, forward: bool) -> Self {
        let n = sources.len();
        let mut merged = Merged {
            sources,
            heads: vec![None; n],
            heap: std::collections::BinaryHeap::with_capacity(n),
            failed: None,
            forward,
        };
        for i in 0..n {
            merged.advance(i);
        }
        merged
    }

    /// Takes the next row of source `i` as its head.
    fn advance(&mut self, i: usize) {
        match self.sources[i].next() {
            Some(Ok(row)) => {
                let key = if self.forward {
                    u64::MAX - row.0
                } else {
                    row.0
                };
                self.heads[i] = Some(row);
                self.heap.push((key, usize::MAX - i));
            }
            Some(Err(e)) if self.failed.is_none() => self.failed = Some(e),
            Some(Err(_)) | None => {}
        }
    }
}

impl<'p> Iterator for Merged<'_, 'p> {
    type Item = Row<'p>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        let (_, slot) = self.heap.pop()?;
        // Equal ids come out in source order (`usize::MAX - i`: lower index first).
        let i = usize::MAX - slot;
        let row = self.heads[i].take()?;
        self.advance(i);
        Some(Ok(row))
    }
}

/// Has `user` (on this shard) blocked or muted `other`, or been blocked by it? Inside a write
/// (notifications ask it in the transaction that would notify).
pub fn silenced_in(txn: &WriteTransaction, user: u64, other: u64) -> Result<bool, CoreError> {
    Silence::open(txn)?.silenced(user, other)
}

/// The tables `silenced_in` reads, opened once to ask about many pairs.
pub struct Silence<'t> {
    blocks: redb::Table<'t, (u64, u64), u64>,
    blocked_by: redb::Table<'t, (u64, u64), u64>,
    mutes: redb::Table<'t, (u64, u64), u64>,
}

impl<'t> Silence<'t> {
    pub fn open(txn: &'t WriteTransaction) -> Result<Self, CoreError> {
        Ok(Silence {
            blocks: txn.open_table(BLOCKS)?,
            blocked_by: txn.open_table(BLOCKED_BY)?,
            mutes: txn.open_table(MUTES)?,
        })
    }

    /// `silenced_in`.
    pub fn silenced(&self, user: u64, other: u64) -> Result<bool, CoreError> {
        let key = (user, other);
        Ok(self.blocks.get(key)?.is_some()
            || self.blocked_by.get(key)?.is_some()
            || self.mutes.get(key)?.is_some())
    }
}

// ---- account export and erasure ---------------------------------------------------------

/// One of a user's relation lists (export).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Following,
    Followers,
    Blocks,
    Mutes,
}

/// A page of (other user, ms) of one of `user`'s relations, by other's id after `after`.
pub fn relation_page(
    read: &ReadTransaction,
    user: u64,
    which: Relation,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, u64)>, CoreError> {
    let def = match which {
        Relation::Following => FOLLOWS,
        Relation::Followers => FOLLOWERS,
        Relation::Blocks => BLOCKS,
        Relation::Mutes => MUTES,
    };
    let t = open_read!(read, def, Vec::new());
    let start = after.map_or(0, |a| a.saturating_add(1));
    t.range((user, start)..=(user, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, v)| (k.value().1, v.value())).map_err(Into::into))
        .collect()
}

/// On an erased user's own shard: removes up to `limit` rows of the user's relations
/// (follows, followers, blocks, blocked-by, mutes, follow requests to the user) and returns
/// the other users whose side must forget the user (`forget`, on their shards). An empty
/// answer: nothing is left (the user's counts go too).
pub fn erase_relations(
    txn: &WriteTransaction,
    user: u64,
    limit: usize,
) -> Result<Vec<u64>, CoreError> {
    let tables = [
        FOLLOWS,
        FOLLOWERS,
        BLOCKS,
        BLOCKED_BY,
        MUTES,
        FOLLOW_REQUESTS,
    ];
    let mut others: Vec<u64> = Vec::new();
    let mut left = limit;
    // Indices into `tables`: follows have a local reverse index; mutes no mirror.
    const FOLLOWS_AT: usize = 0;
    const MUTES_AT: usize = 4;
    for (at, def) in tables.into_iter().enumerate() {
        if left == 0 {
            break;
        }
        let mut t = txn.open_table(def)?;
        let taken: Vec<u64> = t
            .range((user, 0)..=(user, u64::MAX))?
            .take(left)
            .map(|r| r.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for other in &taken {
            t.remove((user, *other))?;
        }
        drop(t);
        left -= taken.len();
        if at == FOLLOWS_AT {
            let mut local = txn.open_table(FOLLOWERS_LOCAL)?;
            for other in &taken {
                local.remove((*other, user))?;
            }
        }
        if at == MUTES_AT {
            let mut muters = txn.open_table(MUTERS)?;
            for other in &taken {
                muters.remove((*other, user))?;
            }
        }
        for other in taken {
            // Mutes are the user's alone: nobody else holds a mirror of them.
            if at != MUTES_AT && !others.contains(&other) {
                others.push(other);
            }
        }
    }
    if left == limit {
        txn.open_table(COUNTS)?.remove(user)?;
    }
    Ok(others)
}

/// On `other`'s shard: every relation between `other` and the erased user goes (follows
/// either way, blocks either way, mutes, follow requests), counts kept exact. Idempotent.
pub fn forget(txn: &WriteTransaction, other: u64, erased: u64) -> Result<(), CoreError> {
    unfollow(txn, other, erased)?;
    remove_follower(txn, other, erased)?;
    txn.open_table(BLOCKS)?.remove((other, erased))?;
    txn.open_table(BLOCKED_BY)?.remove((other, erased))?;
    txn.open_table(MUTES)?.remove((other, erased))?;
    txn.open_table(MUTERS)?.remove((erased, other))?;
    txn.open_table(FOLLOW_REQUESTS)?.remove((other, erased))?;
    Ok(())
}

/// On any shard: up to `limit` local users who follow the erased user stop following it
/// (found through `followers_local`); returns how many. Fewer than `limit`: none is left.
pub fn erase_local_followers(
    txn: &WriteTransaction,
    erased: u64,
    limit: usize,
) -> Result<usize, CoreError> {
    let followers: Vec<u64> = txn
        .open_table(FOLLOWERS_LOCAL)?
        .range((erased, 0)..=(erased, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for f in &followers {
        if !unfollow(txn, *f, erased)? {
            txn.open_table(FOLLOWERS_LOCAL)?.remove((erased, *f))?;
        }
    }
    Ok(followers.len())
}

/// On any shard: looks at up to `limit` rows of the mutes and follow requests from
/// `from` on (the tables in turn: mutes, then requests, as `(table, user, other)`), removing
/// those naming the erased user (nobody else knows who muted it or whom it asked). Returns
/// where to go on, or `None` when both tables were walked.
pub fn erase_mentions_scan(
    txn: &WriteTransaction,
    erased: u64,
    from: (u64, u64, u64),
    limit: usize,
) -> Result<Option<(u64, u64, u64)>, CoreError> {
    let (table, a, b) = from;
    let def = match table {
        0 => MUTES,
        1 => FOLLOW_REQUESTS,
        _ => return Ok(None),
    };
    let mut t = txn.open_table(def)?;
    let rows: Vec<(u64, u64)> = t
        .range((a, b)..)?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value()))
        .collect::<Result<_, _>>()?;
    for (x, y) in &rows {
        if *y == erased {
            t.remove((*x, *y))?;
        }
    }
    drop(t);
    if table == 0 {
        let mut muters = txn.open_table(MUTERS)?;
        for (x, y) in &rows {
            if *y == erased {
                muters.remove((*y, *x))?;
            }
        }
    }
    if rows.len() < limit {
        return Ok(Some((table + 1, 0, 0)).filter(|_| table == 0));
    }
    Ok(rows.last().map(|(x, y)| match y.checked_add(1) {
        Some(next) => (table, *x, next),
        None => (table, x.saturating_add(1), 0),
    }))
}

/// On the erased user's shard: empties up to `limit` rows of the user's own feed rows (the
/// copies stay: other readers here read them). Returns how many; fewer than `limit`: none is
/// left.
pub fn erase_feed(txn: &WriteTransaction, reader: u64, limit: usize) -> Result<usize, CoreError> {
    let mut feed = txn.open_table(FEED_ITEMS)?;
    let items: Vec<u64> = feed
        .range((reader, 0)..=(reader, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    for post in &items {
        feed.remove((reader, *post))?;
    }
    drop(feed);
    let mut index = txn.open_table(FEED_POSTS)?;
    for post in &items {
        index.remove((*post, reader))?;
    }
    Ok(items.len())
}

#[cfg(test)]
mod tests {
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    use super::*;
    use crate::events::{self, Event};

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn write<R>(db: &Database, f: impl FnOnce(&WriteTransaction) -> Result<R, CoreError>) -> R {
        let txn = db.begin_write().unwrap();
        let out = f(&txn).unwrap();
        txn.commit().unwrap();
        out
    }

    fn post(id: u64, author: u64) -> Post {
        crate::content::test_post(id, author)
    }

    /// An id (user or post) made on this test's shard, 0, or on another one, 1: ids order by
    /// `n` (their millisecond), as real ids do.
    fn here(n: u64) -> u64 {
        n << 22
    }

    fn there(n: u64) -> u64 {
        (n << 22) | (1 << 12)
    }

    /// The `n` of each id, to compare feeds with.
    fn ns(ids: &[u64]) -> Vec<u64> {
        ids.iter().map(|id| id >> 22).collect()
    }

    /// A post of an author of this shard, as a compose writes it.
    fn compose(db: &Database, post: &Post) {
        write(db, |t| {
            crate::content::insert_post(t, post, None)?;
            fan_out(t, post, true, &[])
        });
    }

    fn home_ids(db: &Database, reader: u64) -> Vec<u64> {
        home_with(db, reader, None, None, &[])
    }

    fn home_with(
        db: &Database,
        reader: u64,
        max_id: Option<u64>,
        min_id: Option<u64>,
        early: &[(&Post, Reason)],
    ) -> Vec<u64> {
        let read = db.begin_read().unwrap();
        let ids: Vec<u64> = home(
            &read,
            reader,
            max_id,
            min_id,
            (0, 100),
            1000,
            &FeedPreferences::default(),
            early,
            &|_| false,
        )
        .unwrap()
        .0
        .iter()
        .map(|p| p.id)
        .collect();
        if max_id.is_none() && min_id.is_none() {
            // What the engine keeps in memory: the same ids, without decoding a post.
            let (only, _) = super::home_ids(&read, reader, 100, 1000, early).unwrap();
            assert_eq!(only, ids, "home_ids of reader {reader}");
        }
        ids
    }

    #[test]
    fn early_items_merge_in_order_once_and_pass_the_same_checks() {
        let db = db();
        let (reader, a2, a3) = (here(1), there(2), there(3));
        // No feed table yet: an early post shows, subject to the follow check.
        assert_eq!(
            ns(&home_with(
                &db,
                reader,
                None,
                None,
                &[(&post(here(9), reader), Reason::Own)]
            )),
            vec![9]
        );
        let unfollowed = post(there(9), a2);
        assert!(home_with(&db, reader, None, None, &[(&unfollowed, Reason::Followed)]).is_empty());
        // The reader follows 2 (on another shard) but not 3.
        write(&db, |t| follow(t, reader, a2, 0));
        write(&db, |t| add_follower(t, a2, reader, 0));
        write(&db, |t| fan_out(t, &post(there(10), a2), false, &[]));
        write(&db, |t| fan_out(t, &post(there(13), a2), false, &[]));
        let (p11, p12, p13, p14) = (
            post(there(11), a2),
            post(there(12), a2),
            post(there(13), a2),
            post(there(14), a3),
        );
        let read = db.begin_read().unwrap();
        let readers = fan_out_readers(&read, &p11, false, &[]).unwrap();
        assert_eq!(readers, vec![(reader, Reason::Followed)]);
        drop(read);
        let early = [
            (&p11, Reason::Followed),
            (&p12, Reason::Followed),
            // Committed meanwhile: shown once.
            (&p13, Reason::Followed),
            // Its author is not followed: left out like a committed row would be.
            (&p14, Reason::Followed),
        ];
        let page = |max: Option<u64>, min: Option<u64>| {
            ns(&home_with(
                &db,
                reader,
                max.map(there),
                min.map(there),
                &early,
            ))
        };
        assert_eq!(page(None, None), vec![13, 12, 11, 10]);
        assert_eq!(page(Some(13), None), vec![12, 11, 10]);
        assert_eq!(page(None, Some(10)), vec![13, 12, 11]);
        assert_eq!(page(Some(13), Some(10)), vec![12, 11]);
        // Skipping: the benchmark API's `start`, counted over shown posts only.
        let read = db.begin_read().unwrap();
        let prefs = FeedPreferences::default();
        let page = home(
            &read,
            reader,
            None,
            None,
            (2, 1),
            1000,
            &prefs,
            &early,
            &|_| false,
        )
        .unwrap();
        assert_eq!(
            page.0.iter().map(|p| p.id).collect::<Vec<_>>(),
            vec![there(11)]
        );
        let muting = FeedPreferences {
            hide_replies: false,
            muted_words: vec!["hi".into()],
        };
        let page = home(
            &read,
            reader,
            None,
            None,
            (0, 5),
            1000,
            &muting,
            &early,
            &|_| false,
        )
        .unwrap();
        assert!(page.0.is_empty(), "every post says hi");
        drop(read);
        write(&db, |t| block(t, reader, a2, 0));
        assert!(home_with(&db, reader, None, None, &early).is_empty());
    }

    /// Readers on this shard who follow `author`, as the two paths that add a new post to
    /// heads see them (`feed_readers`, `fan_out_readers`), which must agree.
    fn readers_of(db: &Database, post: &Post) -> Vec<u64> {
        let read = db.begin_read().unwrap();
        let mut fed = feed_readers(&read, post, false).unwrap();
        let mut offered: Vec<u64> = fan_out_readers(&read, post, false, &[])
            .unwrap()
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        fed.sort_unstable();
        offered.sort_unstable();
        assert_eq!(fed, offered);
        assert!(!muters_stale(&read).unwrap(), "muters differ from mutes");
        ns(&fed)
    }

    #[test]
    fn a_new_post_leaves_out_its_authors_muters_few_or_many() {
        let db = db();
        let author = there(1);
        let readers: Vec<u64> = (10..14).map(here).collect();
        for r in &readers {
            write(&db, |t| follow(t, *r, author, 0));
        }
        let p = post(there(100), author);
        assert_eq!(readers_of(&db, &p), vec![10, 11, 12, 13]);
        // Fewer muters than readers (looked up once), then more (each reader asked).
        write(&db, |t| set_mute(t, here(10), author, true, 0));
        assert_eq!(readers_of(&db, &p), vec![11, 12, 13]);
        for n in 20..26 {
            write(&db, |t| set_mute(t, here(n), author, true, 0));
        }
        write(&db, |t| set_mute(t, here(12), there(2), true, 0));
        assert_eq!(readers_of(&db, &p), vec![11, 12, 13]);
        write(&db, |t| set_mute(t, here(11), author, true, 0));
        assert_eq!(readers_of(&db, &p), vec![12, 13]);
        write(&db, |t| set_mute(t, here(10), author, false, 0));
        assert_eq!(readers_of(&db, &p), vec![10, 12, 13]);
        // Erasures keep both tables together: the muter's own relations, the muted
        // user's forgetting of a muter, and the scan for mutes of an erased user.
        write(&db, |t| erase_relations(t, here(11), 100));
        assert_eq!(readers_of(&db, &p), vec![10, 12, 13]);
        write(&db, |t| set_mute(t, here(13), author, true, 0));
        // (The erased author's relations go: 13 follows it no more.)
        write(&db, |t| forget(t, here(13), author));
        assert_eq!(readers_of(&db, &p), vec![10, 12]);
        write(&db, |t| set_mute(t, here(13), author, true, 0));
        let mut from = Some((0, 0, 0));
        while let Some(at) = from {
            from = write(&db, |t| erase_mentions_scan(t, author, at, 2));
        }
        assert_eq!(readers_of(&db, &p), vec![10, 12]);
        let read = db.begin_read().unwrap();
        let left: Vec<(u64, u64)> = read
            .open_table(MUTERS)
            .unwrap()
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect();
        assert_eq!(left, vec![(there(2), here(12))]);
    }

    #[test]
    fn mutes_from_before_the_index_are_indexed_at_start() {
        let db = db();
        let author = there(1);
        for n in 10..13 {
            write(&db, |t| follow(t, here(n), author, 0));
        }
        // As an older version wrote them: `mutes` only.
        write(&db, |t| {
            let mut mutes = t.open_table(MUTES)?;
            mutes.insert((here(10), author), 5)?;
            mutes.insert((here(12), there(2)), 6)?;
            Ok(())
        });
        assert!(muters_stale(&db.begin_read().unwrap()).unwrap());
        assert_eq!(write(&db, index_muters), 2);
        assert_eq!(write(&db, index_muters), 0, "nothing left to do");
        assert_eq!(readers_of(&db, &post(there(100), author)), vec![11, 12]);
        assert_eq!(
            readers_of(&db, &post(there(101), there(2))),
            Vec::<u64>::new()
        );
    }

    fn mentioning(id: u64, author: u64, user: u64) -> Post {
        let mut p = post(id, author);
        p.mentions.push(crate::content::Mention {
            user_id: user,
            username: format!("u{user}"),
            external_id: None,
        });
        p
    }

    #[test]
    fn home_merges_own_followed_and_mentioned_posts_in_id_order() {
        let db = db();
        // The reader is on this shard, the authors it follows or is mentioned by on another.
        let (reader, a2, a3, a4) = (here(1), there(2), there(3), there(4));
        write(&db, |t| follow(t, reader, a2, 0));
        write(&db, |t| follow(t, reader, a3, 0));
        write(&db, |t| fan_out(t, &post(there(10), a2), false, &[]));
        compose(&db, &post(here(11), reader));
        write(&db, |t| fan_out(t, &post(there(12), a3), false, &[]));
        let m13 = mentioning(there(13), a4, reader);
        write(&db, |t| fan_out(t, &m13, false, &[reader]));
        // Nobody here follows 4 and nobody is mentioned: this shard keeps nothing.
        write(&db, |t| fan_out(t, &post(there(14), a4), false, &[]));
        write(&db, |t| fan_out(t, &post(there(15), a2), false, &[]));
        // A followed author mentioning the reader: shown once.
        let m16 = mentioning(there(16), a3, reader);
        write(&db, |t| fan_out(t, &m16, false, &[reader]));
        assert_eq!(ns(&home_ids(&db, reader)), vec![16, 15, 13, 12, 11, 10]);
        assert_eq!(
            ns(&home_with(&db, reader, Some(there(13)), None, &[])),
            vec![12, 11, 10]
        );
        assert_eq!(
            ns(&home_with(&db, reader, None, Some(there(12)), &[])),
            vec![16, 15, 13]
        );
        let read = db.begin_read().unwrap();
        let prefs = FeedPreferences::default();
        let ids = |page: &[Post]| ns(&page.iter().map(|p| p.id).collect::<Vec<_>>());
        let (page, _) = home(
            &read,
            reader,
            None,
            None,
            (1, 2),
            1000,
            &prefs,
            &[],
            &|_| false,
        )
        .unwrap();
        assert_eq!(ids(&page), vec![15, 13]);
        // The scan cap names where to go on.
        let (page, more) = home(&read, reader, None, None, (0, 10), 3, &prefs, &[], &|_| {
            false
        })
        .unwrap();
        assert_eq!(ids(&page), vec![16, 15]);
        assert_eq!(
            more,
            Some(there(15)),
            "16 came twice (followed and mentioned)"
        );
        // A hidden (suspended) author is passed over and the page still fills.
        let (page, _) = home(&read, reader, None, None, (0, 3), 1000, &prefs, &[], &|a| {
            a == a3
        })
        .unwrap();
        assert_eq!(ids(&page), vec![15, 13, 11]);
        let mut readers = feed_readers(&read, &m16, false).unwrap();
        readers.sort_unstable();
        assert_eq!(readers, vec![reader]);
        drop(read);
        // Muting 3 hides its posts, mentions included; unfollowing 2 hides 2's at once.
        write(&db, |t| set_mute(t, reader, a3, true, 0));
        assert_eq!(ns(&home_ids(&db, reader)), vec![15, 13, 11, 10]);
        write(&db, |t| unfollow(t, reader, a2));
        assert_eq!(ns(&home_ids(&db, reader)), vec![13, 11]);
        write(&db, |t| unfan(t, there(13)));
        assert_eq!(ns(&home_ids(&db, reader)), vec![11]);
        // Following 2 again brings its kept posts back; a backfill adds older ones once.
        write(&db, |t| follow(t, reader, a2, 0));
        let read = db.begin_read().unwrap();
        assert_eq!(
            pending_backfills(&read, 0, 10).unwrap(),
            vec![(reader, a2), (reader, a3)]
        );
        drop(read);
        let (p5, p10) = (post(there(5), a2), post(there(10), a2));
        write(&db, |t| backfill(t, reader, a2, &[p5.clone(), p10]));
        write(&db, |t| backfill(t, reader, a2, &[p5]));
        write(&db, |t| backfill(t, reader, a3, &[]));
        let read = db.begin_read().unwrap();
        assert!(pending_backfills(&read, u64::MAX, 10).unwrap().is_empty());
        drop(read);
        assert_eq!(ns(&home_ids(&db, reader)), vec![15, 11, 10, 5]);
        // The erased reader's own rows go; the copies stay for others.
        let m17 = mentioning(there(17), a4, reader);
        write(&db, |t| fan_out(t, &m17, false, &[reader]));
        assert_eq!(write(&db, |t| erase_feed(t, reader, 10)), 2, "16 and 17");
        assert_eq!(ns(&home_ids(&db, reader)), vec![15, 11, 10, 5]);
    }

    #[test]
    fn following_is_capped() {
        let db = db();
        write(&db, |t| {
            bump(t, 1, 0, FOLLOWING_MAX as i64)?;
            Ok(())
        });
        let txn = db.begin_write().unwrap();
        let err = check_following_room(&txn, 1).unwrap_err();
        assert!(err.to_string().contains("5000"), "{err}");
        assert!(check_following_room(&txn, 2).is_ok());
    }

    #[test]
    fn follows_feed_home_and_unfollow_filters() {
        let db = db();
        // Both on this shard: the author's posts are read from `posts`, not copied.
        let (reader, author) = (here(1), here(2));
        assert!(write(&db, |t| follow(t, reader, author, 0)));
        assert!(!write(&db, |t| follow(t, reader, author, 0)));
        write(&db, |t| add_follower(t, author, reader, 0));
        write(&db, |t| add_follower(t, author, reader, 0));
        let read = db.begin_read().unwrap();
        assert_eq!(counts(&read, reader).unwrap(), (0, 1));
        assert_eq!(counts(&read, author).unwrap(), (1, 0));
        drop(read);
        compose(&db, &post(here(10), author));
        compose(&db, &post(here(11), author));
        assert!(
            copy(&db.begin_read().unwrap(), 0, here(10))
                .unwrap()
                .is_some(),
            "a local post reads as its copy"
        );
        assert_eq!(ns(&home_ids(&db, reader)), vec![11, 10]);
        assert_eq!(ns(&home_ids(&db, author)), vec![11, 10]);
        let read = db.begin_read().unwrap();
        let copies = optional(read.open_table(POST_COPIES)).unwrap();
        assert!(
            copies.is_none_or(|c| c.iter().unwrap().next().is_none()),
            "nothing copied"
        );
        drop(read);
        // A local author the reader does not follow, mentioning it: shown by its feed row.
        let m12 = mentioning(here(12), here(3), reader);
        write(&db, |t| {
            crate::content::insert_post(t, &m12, None)?;
            fan_out(t, &m12, true, &[reader])
        });
        assert_eq!(ns(&home_ids(&db, reader)), vec![12, 11, 10]);
        assert_eq!(ns(&home_ids(&db, author)), vec![11, 10]);
        // A deleted post leaves both feeds at once.
        write(&db, |t| {
            crate::content::delete_post(t, author, here(10))?;
            unfan(t, here(10))
        });
        assert_eq!(ns(&home_ids(&db, reader)), vec![12, 11]);
        assert_eq!(ns(&home_ids(&db, author)), vec![11]);
        assert!(write(&db, |t| unfollow(t, reader, author)));
        assert_eq!(ns(&home_ids(&db, reader)), vec![12]);
        assert_eq!(counts(&db.begin_read().unwrap(), reader).unwrap(), (0, 0));
    }

    #[test]
    fn a_block_ends_follows_both_ways_and_hides_mentions() {
        let db = db();
        write(&db, |t| follow(t, 1, 2, 0));
        write(&db, |t| add_follower(t, 2, 1, 0));
        write(&db, |t| follow(t, 2, 1, 0));
        write(&db, |t| add_follower(t, 1, 2, 0));
        assert!(write(&db, |t| block(t, 1, 2, 0)));
        write(&db, |t| apply_blocked(t, 1, 2, 0));
        let read = db.begin_read().unwrap();
        assert!(!follows(&read, 1, 2).unwrap() && !follows(&read, 2, 1).unwrap());
        assert_eq!(counts(&read, 1).unwrap(), (0, 0));
        assert_eq!(counts(&read, 2).unwrap(), (0, 0));
        assert!(blocked_either_way(&read, 2, 1).unwrap());
        drop(read);
        let mut p = post(20, 2);
        p.mentions.push(crate::content::Mention {
            user_id: 1,
            username: "u1".into(),
            external_id: None,
        });
        write(&db, |t| fan_out(t, &p, false, &[1]));
        assert!(home_ids(&db, 1).is_empty());
        write(&db, |t| add_follower(t, 1, 2, 0));
        assert!(
            !is_follower(&db.begin_read().unwrap(), 1, 2).unwrap(),
            "a block wins over a late follow"
        );
    }

    #[test]
    fn events_apply_once() {
        let db = db();
        let event = Event::Followed {
            follower: 1,
            followee: 2,
        };
        assert!(write(&db, |t| events::apply(t, 99, 0, &event, |_| true)));
        assert!(!write(&db, |t| events::apply(t, 99, 0, &event, |_| true)));
        assert_eq!(counts(&db.begin_read().unwrap(), 2).unwrap(), (1, 0));
        write(&db, |t| events::record(t, 5, 0, &event, &[1, 3]));
        let read = db.begin_read().unwrap();
        assert_eq!(events::pending_targets(&read).unwrap(), vec![1, 3]);
        assert_eq!(
            events::pending(&read, 3, 10).unwrap(),
            vec![(5, event.clone())]
        );
        drop(read);
        write(&db, |t| events::acknowledge(t, 3, &[5]));
        assert_eq!(
            events::pending_targets(&db.begin_read().unwrap()).unwrap(),
            vec![1]
        );
    }

    #[test]
    fn a_mentioned_post_takes_no_place_in_a_followers_feed_it_does_not_mention() {
        use crate::content::{Mention, Visibility};
        let db = db();
        let (reader, local, remote, named) = (here(1), here(2), there(3), here(4));
        let for_named = |id: u64, author: u64| Post {
            visibility: Visibility::Mentioned,
            mentions: vec![Mention {
                user_id: named,
                username: "named".into(),
                external_id: None,
            }],
            ..post(id, author)
        };
        for follower in [reader, named] {
            write(&db, |t| follow(t, follower, local, 0));
            write(&db, |t| follow(t, follower, remote, 0));
            write(&db, |t| add_follower(t, remote, follower, 0));
        }
        compose(&db, &post(here(9), local));
        compose(&db, &for_named(here(10), local));
        write(&db, |t| {
            fan_out(t, &for_named(there(11), remote), false, &[named])
        });
        write(&db, |t| fan_out(t, &post(there(12), remote), false, &[]));
        // `home_with` also checks that the ids a head is filled with are the same.
        assert_eq!(ns(&home_with(&db, reader, None, None, &[])), vec![12, 9]);
        assert_eq!(
            ns(&home_with(&db, named, None, None, &[])),
            vec![12, 11, 10, 9]
        );
        assert_eq!(ns(&home_with(&db, local, None, None, &[])), vec![10, 9]);
        // A skipped start counts only what the reader is shown.
        let skipped = |reader: u64, skip: usize| {
            let read = db.begin_read().unwrap();
            let prefs = FeedPreferences::default();
            let (posts, _) = home(
                &read,
                reader,
                None,
                None,
                (skip, 10),
                1000,
                &prefs,
                &[],
                &|_| false,
            )
            .unwrap();
            ns(&posts.iter().map(|p| p.id).collect::<Vec<_>>())
        };
        assert_eq!(skipped(reader, 1), vec![9]);
        assert_eq!(skipped(named, 1), vec![11, 10, 9]);
        // An early post (not yet committed here) passes the same check.
        let early = for_named(there(13), remote);
        assert_eq!(
            ns(&home_with(
                &db,
                reader,
                None,
                None,
                &[(&early, Reason::Followed)]
            )),
            vec![12, 9]
        );
        // A deleted post leaves no row behind.
        write(&db, |t| unfan(t, there(11)));
        let read = db.begin_read().unwrap();
        let addressed = read.open_table(ADDRESSED_POSTS).unwrap();
        assert!(addressed.get(there(11)).unwrap().is_none());
        assert!(addressed.get(here(10)).unwrap().is_some());
    }
}
