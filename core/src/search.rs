//! Search: a projection of posts, accounts and hashtags (tables `search_segment_postings`,
//! `search_segments`, `search_merge_at`, `search_docs`, `search_doc_meta`, `search_tags`, `search_accounts`, `search_account_docs`, `search_meta`).
//!
//! Every shard indexes what it owns (its posts and its users) and nothing else; a query is
//! answered by every shard and merged by the engine. The index is derived data: it is fed
//! by re-reading the primary rows an event names (`resync_post`, `resync_user`), so applying
//! the same event twice, or out of order, leaves the same index; and it can be dropped and
//! rebuilt from the `posts` and `users` tables at any time (`clear`, `index_fresh_posts`,
//! `index_fresh_users`, `finish_rebuild`).
//!
//! Text: Unicode word segmentation (UAX #29), then NFKD, combining marks removed, lower
//! case: matching ignores case and accents. No stemming ("runs" does not find "run").
//! A short list of English stop-words is neither indexed nor searched.
//!
//! Postings are blocks of post ids keyed `(segment, term, smallest id in the block)`: a
//! term's posts in a segment are one contiguous range of blocks, newest last, so an AND of
//! terms is a leapfrog walk of descending lists (each the union of its segments' parts,
//! mostly inside blocks already read) that stops as soon as a page is full. Segments: see
//! "segments" below. Terms: a word, `#tag` for a hashtag, `@<author id>` for the author.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use crate::codec::{decode, encode};
use crate::content::{Post, Visibility};
use crate::events::Event;
use crate::{CoreError, Invalid};

/// (segment, term, smallest post id of the block) -> a block of up to `BLOCK_IDS_MAX` post
/// ids of the term in that segment, ascending, 8 bytes little-endian each
const POSTINGS: TableDefinition<(u64, &str, u64), &[u8]> =
    TableDefinition::new("search_segment_postings");
/// The postings of format 3 and before, keyed (term, smallest id): dropped by `clear`.
const POSTINGS_V3: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("search_postings");
/// segment -> (level, state `SEG_*`, postings written to it)
const SEGMENTS: TableDefinition<u64, (u8, u8, u64)> = TableDefinition::new("search_segments");
/// the running merge's output segment -> (term, id): the last posting it holds, all before
/// it merged
const MERGE_AT: TableDefinition<u64, (&str, u64)> = TableDefinition::new("search_merge_at");
/// post id -> PostDoc : what a post was indexed under, and what a query filters on
const DOCS: TableDefinition<u64, &[u8]> = TableDefinition::new("search_docs");
/// post id -> (author, flags: 1 followers-only, 2 has hashtags) : what a query filters on,
/// fixed-size so that a candidate costs no decoding
const DOC_META: TableDefinition<u64, (u64, u8)> = TableDefinition::new("search_doc_meta");
const META_FOLLOWERS_ONLY: u8 = 1;
const META_HAS_TAGS: u8 = 2;
/// (folded tag, tag as written) -> posts on this shard using it
const TAGS: TableDefinition<(&str, &str), u64> = TableDefinition::new("search_tags");
/// (term, user id) -> AccountTerm code : username and display-name terms
const ACCOUNTS: TableDefinition<(&str, u64), u8> = TableDefinition::new("search_accounts");
/// user id -> AccountDoc
const ACCOUNT_DOCS: TableDefinition<u64, &[u8]> = TableDefinition::new("search_account_docs");
/// name -> value : `format`, and the event cursor (`cursor_ms`, `cursor_id`)
const META: TableDefinition<&str, u64> = TableDefinition::new("search_meta");

/// Bumped whenever what is indexed changes; an index of another format is rebuilt.
pub const FORMAT_VERSION: u64 = 5;
/// Post ids per posting block: one B-tree entry holds this many, so a build writes a
/// hundred times fewer entries and a query walks most of a list in memory.
const BLOCK_IDS_MAX: usize = 128;
/// Segment states. Open: takes new postings (one at a time). Sealed: full, read. Merging: an
/// input of the running merge, still read. Building: the running merge's output, not read
/// until it is whole. Dead: merged away, not read, its rows being deleted.
const SEG_OPEN: u8 = 0;
const SEG_SEALED: u8 = 1;
const SEG_MERGING: u8 = 2;
const SEG_BUILDING: u8 = 3;
const SEG_DEAD: u8 = 4;
/// Postings an open segment takes before it is sealed, by default. Small, so that the pages
/// new posts dirty between two checkpoints are few and close together (a few hundred,
/// against one page per new term when every term had its single list).
pub const SEGMENT_POSTINGS_DEFAULT: u64 = 4_096;
/// The process's setting (`set_segment_postings`; the server's `search_segment_postings`).
static SEAL_POSTINGS: AtomicU64 = AtomicU64::new(match cfg!(test) {
    true => 40,
    false => SEGMENT_POSTINGS_DEFAULT,
});
/// Sealed segments of one level that are merged into one of the next level: a query reads
/// at most about `MERGE_FANOUT` segments per level, and a posting is rewritten once per level.
#[cfg(not(test))]
const MERGE_FANOUT: usize = 8;
#[cfg(test)]
const MERGE_FANOUT: usize = 3;
/// Posting blocks one upkeep step reads, about (`upkeep`).
pub const UPKEEP_ROWS: usize = 512;
/// Longest query, in characters.
pub const QUERY_CHARS_MAX: usize = 256;
/// Terms (words, tags, `from:`) in one query, at most.
pub const QUERY_TERMS_MAX: usize = 8;
/// Longer terms are cut to this many bytes (at a character boundary), when indexed and
/// when searched alike.
pub const TERM_BYTES_MAX: usize = 64;
/// Most results on one page.
pub const RESULTS_MAX: usize = 100;
/// Account-index rows looked at for one prefix, at most.
pub const ACCOUNT_SCAN_MAX: usize = 2_000;
/// Hashtag rows looked at for one prefix, at most.
pub const TAG_SCAN_MAX: usize = 5_000;

/// Words neither indexed nor searched: they would match nearly every post.
const STOP_WORDS: [&str; 33] = [
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he",
    "i", "if", "in", "is", "it", "its", "not", "of", "on", "or", "she", "that", "the", "they",
    "this", "to", "was", "were", "with",
];

// ---- text ------------------------------------------------------------------------------

/// Case- and accent-folded form of a word: NFKD, combining marks dropped, lower case, cut
/// to `TERM_BYTES_MAX` bytes.
pub fn fold(word: &str) -> String {
    if word.is_ascii() {
        // Most words: nothing to decompose (the same answer, without the NFKD machinery).
        let end = word.len().min(TERM_BYTES_MAX);
        return word[..end].to_ascii_lowercase();
    }
    let mut out = String::with_capacity(word.len());
    for c in word.nfkd().filter(|c| !is_combining_mark(*c)) {
        for l in c.to_lowercase() {
            if out.len() + l.len_utf8() > TERM_BYTES_MAX {
                return out;
            }
            out.push(l);
        }
    }
    out
}

pub fn is_stop_word(term: &str) -> bool {
    STOP_WORDS.binary_search(&term).is_ok()
}

/// The folded words of a text (UAX #29 words, so punctuation and emoji are not words),
/// stop-words included, in order.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.unicode_words().map(fold).filter(|w| !w.is_empty())
}

/// The distinct searchable words of a text (no stop-words), sorted.
fn word_terms(text: &str) -> Vec<String> {
    let mut out: Vec<String> = words(text).filter(|w| !is_stop_word(w)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

// ---- queries ---------------------------------------------------------------------------

/// A post query as the client wrote it, checked and folded. `from` is still a username:
/// the engine resolves it to an id on the user's shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedPostQuery {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub from: Option<String>,
}

impl ParsedPostQuery {
    /// True when nothing is left to search for (only stop-words and punctuation).
    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.tags.is_empty() && self.from.is_none()
    }
}

/// The checks every query passes: not empty, not too long, no control characters.
pub fn check_query(raw: &str) -> Result<&str, Invalid> {
    let q = raw.trim();
    if q.is_empty() {
        return Err(Invalid::new("invalid_query", "the query is empty"));
    }
    if q.chars().count() > QUERY_CHARS_MAX {
        return Err(Invalid::new(
            "query_too_long",
            format!("a query has at most {QUERY_CHARS_MAX} characters"),
        ));
    }
    if q.chars().any(char::is_control) {
        return Err(Invalid::new(
            "invalid_query",
            "a query cannot contain control characters",
        ));
    }
    Ok(q)
}

fn too_many_terms() -> Invalid {
    Invalid::new(
        "too_many_terms",
        format!("a query has at most {QUERY_TERMS_MAX} terms"),
    )
}

/// Parses a post query: words (all must match), `#tag`, `from:username`. A query of only
/// stop-words and punctuation parses to an empty query (no results), not an error.
pub fn parse_post_query(raw: &str) -> Result<ParsedPostQuery, Invalid> {
    let q = check_query(raw)?;
    let mut out = ParsedPostQuery::default();
    for piece in q.split_whitespace() {
        if let Some(name) = piece.strip_prefix("from:") {
            let name = name.trim_start_matches('@');
            if name.is_empty() {
                continue;
            }
            if out.from.is_some() {
                return Err(Invalid::new(
                    "invalid_query",
                    "a query has at most one from:",
                ));
            }
            out.from = Some(name.to_ascii_lowercase());
        } else if let Some(tag) = piece.strip_prefix('#') {
            for t in words(tag) {
                if !out.tags.contains(&t) {
                    out.tags.push(t);
                }
            }
        } else {
            for w in words(piece) {
                if !is_stop_word(&w) && !out.words.contains(&w) {
                    out.words.push(w);
                }
            }
        }
        if out.words.len() + out.tags.len() + usize::from(out.from.is_some()) > QUERY_TERMS_MAX {
            return Err(too_many_terms());
        }
    }
    Ok(out)
}

/// The folded words of an account query (a leading `@` is ignored; stop-words are kept:
/// names are short and "The" may be one).
pub fn parse_account_query(raw: &str) -> Result<Vec<String>, Invalid> {
    let q = check_query(raw)?;
    let mut out: Vec<String> = Vec::new();
    for w in words(q) {
        if !out.contains(&w) {
            out.push(w);
        }
    }
    if out.len() > QUERY_TERMS_MAX {
        return Err(too_many_terms());
    }
    Ok(out)
}

/// The folded prefix of a hashtag query (`#` optional); `None` when it has no word.
pub fn parse_tag_query(raw: &str) -> Result<Option<String>, Invalid> {
    let q = check_query(raw)?;
    let mut it = words(q.trim_start_matches('#'));
    let first = it.next();
    if it.next().is_some() {
        return Err(Invalid::new("invalid_query", "a hashtag query is one word"));
    }
    Ok(first)
}

// ---- posts ------------------------------------------------------------------------------

/// What a post is indexed under, kept to remove it again and to filter hits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct PostDoc {
    author: u64,
    followers_only: bool,
    /// Its hashtags count in `search_tags` (which anyone's completion shows): a public post
    /// of an account neither private nor suspended. Kept so that taking it out takes out what it
    /// added, whatever changed since.
    counted: bool,
    /// Every posting term of the post.
    terms: Vec<String>,
    /// (folded, as written) hashtags.
    tags: Vec<(String, String)>,
}

fn author_term(author: u64) -> String {
    format!("@{author}")
}

fn tag_term(folded: &str) -> String {
    format!("#{folded}")
}

/// Posts for their mentioned users only (`Visibility::Mentioned`) are not searched: they are
/// closer to messages than to posts.
fn searchable(post: &Post) -> bool {
    post.visibility != Visibility::Mentioned
}

/// Whether `author`'s posts are hidden from some readers whatever their visibility (a
/// private account's are for its followers, a suspended one's for nobody), so their hashtags
/// are not counted.
fn hidden_author(txn: &WriteTransaction, author: u64) -> Result<bool, CoreError> {
    Ok(crate::profiles::settings_in(txn, author)?.private
        || crate::moderation::suspension_in(txn, author)?.is_some())
}

/// `hidden_author`, asked once per author for a batch of posts.
#[derive(Default)]
struct HiddenAuthors(std::collections::HashMap<u64, bool>);

impl HiddenAuthors {
    fn of(&mut self, txn: &WriteTransaction, author: u64) -> Result<bool, CoreError> {
        if let Some(known) = self.0.get(&author) {
            return Ok(*known);
        }
        let hidden = hidden_author(txn, author)?;
        self.0.insert(author, hidden);
        Ok(hidden)
    }
}

fn post_doc(post: &Post, hidden_author: bool) -> PostDoc {
    let mut terms = word_terms(&post.text);
    let mut tags: Vec<(String, String)> = Vec::new();
    for tag in &post.hashtags {
        let folded = fold(tag);
        if !folded.is_empty() && !tags.iter().any(|(f, _)| *f == folded) {
            terms.push(tag_term(&folded));
            tags.push((folded, tag.clone()));
        }
    }
    terms.push(author_term(post.author_id));
    let followers_only = post.visibility == Visibility::Followers;
    PostDoc {
        author: post.author_id,
        followers_only,
        counted: !followers_only && !hidden_author,
        terms,
        tags,
    }
}

fn meta_flags(doc: &PostDoc) -> u8 {
    let mut flags = 0;
    if doc.followers_only {
        flags |= META_FOLLOWERS_ONLY;
    }
    if !doc.tags.is_empty() {
        flags |= META_HAS_TAGS;
    }
    flags
}

fn add_tag_counts(
    txn: &WriteTransaction,
    tags: &[(String, String)],
    delta: i64,
) -> Result<(), CoreError> {
    let mut table = txn.open_table(TAGS)?;
    for (folded, written) in tags {
        let key = (folded.as_str(), written.as_str());
        let old = table.get(key)?.map(|v| v.value()).unwrap_or(0);
        let new = old.saturating_add_signed(delta);
        if new == 0 {
            table.remove(key)?;
        } else {
            table.insert(key, new)?;
        }
    }
    Ok(())
}

fn remove_doc(txn: &WriteTransaction, post_id: u64) -> Result<Option<PostDoc>, CoreError> {
    let old: Option<PostDoc> = match txn.open_table(DOCS)?.remove(post_id)? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    };
    txn.open_table(DOC_META)?.remove(post_id)?;
    if let Some(doc) = &old {
        // Wherever the postings are: the running merge's output too, so that a posting it
        // copied already does not come back when it takes the inputs' place.
        let segments = segments_where(&txn.open_table(SEGMENTS)?, |state| state != SEG_DEAD)?;
        let mut postings = txn.open_table(POSTINGS)?;
        for term in &doc.terms {
            for (seg, _) in &segments {
                remove_posting(&mut postings, *seg, term, post_id)?;
            }
        }
        drop(postings);
        if doc.counted {
            add_tag_counts(txn, &doc.tags, -1)?;
        }
    }
    Ok(old)
}

fn insert_doc(txn: &WriteTransaction, post_id: u64, doc: &PostDoc) -> Result<(), CoreError> {
    let seal = SEAL_POSTINGS.load(Ordering::Relaxed);
    let (seg, _) = open_segment(txn, seal)?;
    let mut postings = txn.open_table(POSTINGS)?;
    for term in &doc.terms {
        add_posting(&mut postings, seg, term, post_id)?;
    }
    drop(postings);
    count_postings(txn, seg, doc.terms.len() as u64, seal)?;
    txn.open_table(DOCS)?
        .insert(post_id, encode(doc).as_slice())?;
    txn.open_table(DOC_META)?
        .insert(post_id, (doc.author, meta_flags(doc)))?;
    match doc.counted {
        true => add_tag_counts(txn, &doc.tags, 1),
        false => Ok(()),
    }
}

type Postings<'t> = redb::Table<'t, (u64, &'static str, u64), &'static [u8]>;

// ---- segments ----------------------------------------------------------------------------
//
// The postings are split into segments, as in a log-structured merge tree: new postings go to
// the one open segment, whose keys all start with its number, so the pages a burst of new
// posts dirties are few and side by side whatever the terms. A full segment is sealed; when
// `MERGE_FANOUT` sealed segments of one level exist they are merged, a few hundred blocks per
// step (`upkeep`), in term order into one segment of the next level, written in key order.
// A query reads every segment that is open, sealed or an input of the running merge.

/// Sets how many postings a segment takes before it is sealed (at least 8), for the process.
pub fn set_segment_postings(n: u64) {
    SEAL_POSTINGS.store(n.max(8), Ordering::Relaxed);
}

/// A segment's row: (level, state `SEG_*`, postings written to it).
type SegmentRow = (u8, u8, u64);

/// The segments whose state `keep` accepts: (number, row), ascending.
fn segments_where(
    table: &impl ReadableTable<u64, SegmentRow>,
    keep: impl Fn(u8) -> bool,
) -> Result<Vec<(u64, SegmentRow)>, CoreError> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if keep(v.value().1) {
            out.push((k.value(), v.value()));
        }
    }
    Ok(out)
}

/// The segments a query reads.
fn is_read(state: u8) -> bool {
    matches!(state, SEG_OPEN | SEG_SEALED | SEG_MERGING)
}

/// Posting segments a query reads (open, sealed, merging): about `MERGE_FANOUT` per level
/// while merges keep up.
pub fn segments_read(read: &ReadTransaction) -> Result<u64, CoreError> {
    match read.open_table(SEGMENTS) {
        Ok(t) => Ok(segments_where(&t, is_read)?.len() as u64),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// A new segment's number (numbers are never reused until the index is cleared).
fn new_segment(txn: &WriteTransaction, level: u8, state: u8) -> Result<u64, CoreError> {
    let mut meta = txn.open_table(META)?;
    let seg = meta.get("next_segment")?.map(|v| v.value()).unwrap_or(0);
    meta.insert("next_segment", seg + 1)?;
    txn.open_table(SEGMENTS)?.insert(seg, (level, state, 0))?;
    Ok(seg)
}

/// The segment new postings go to (opened when there is none), and the postings it takes
/// before it is sealed (at least 1).
fn open_segment(txn: &WriteTransaction, seal: u64) -> Result<(u64, u64), CoreError> {
    let open = segments_where(&txn.open_table(SEGMENTS)?, |state| state == SEG_OPEN)?;
    match open.last() {
        Some((seg, (_, _, count))) => Ok((*seg, seal.saturating_sub(*count).max(1))),
        None => Ok((new_segment(txn, 0, SEG_OPEN)?, seal)),
    }
}

/// Counts `n` postings written to the open segment `seg`; seals it once it holds `seal`.
fn count_postings(txn: &WriteTransaction, seg: u64, n: u64, seal: u64) -> Result<(), CoreError> {
    let mut table = txn.open_table(SEGMENTS)?;
    let Some((level, state, count)) = table.get(seg)?.map(|v| v.value()) else {
        return Err(CoreError::Corrupt(format!(
            "search segment {seg} is not listed"
        )));
    };
    let count = count + n;
    let state = match state == SEG_OPEN && count >= seal {
        true => SEG_SEALED,
        false => state,
    };
    table.insert(seg, (level, state, count))?;
    Ok(())
}

/// One step of the index's upkeep, reading about `rows` posting blocks: it deletes part of a
/// merged-away segment, or goes on with the running merge, or starts a merge where a level
/// has `MERGE_FANOUT` sealed segments. False when there was nothing to do.
pub fn upkeep(txn: &WriteTransaction, rows: usize) -> Result<bool, CoreError> {
    let segments = segments_where(&txn.open_table(SEGMENTS)?, |_| true)?;
    let of = |state: u8| segments.iter().filter(move |(_, (_, s, _))| *s == state);
    let dead: Vec<u64> = of(SEG_DEAD).map(|(seg, _)| *seg).collect();
    if !dead.is_empty() {
        let mut budget = rows.max(1);
        for seg in dead {
            let (deleted, all) = delete_segment_rows(txn, seg, budget)?;
            if all {
                txn.open_table(SEGMENTS)?.remove(seg)?;
            }
            budget = budget.saturating_sub(deleted.max(1));
            if budget == 0 {
                break;
            }
        }
        return Ok(true);
    }
    if let Some((out, (level, _, _))) = of(SEG_BUILDING).next() {
        let inputs: Vec<u64> = of(SEG_MERGING).map(|(seg, _)| *seg).collect();
        merge_step(txn, *out, *level, &inputs, rows)?;
        return Ok(true);
    }
    let mut by_level: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
    for (seg, (level, _, _)) in of(SEG_SEALED) {
        by_level.entry(*level).or_default().push(*seg);
    }
    let Some((level, sealed)) = by_level.iter().find(|(_, s)| s.len() >= MERGE_FANOUT) else {
        return Ok(false);
    };
    let inputs = &sealed[..MERGE_FANOUT];
    {
        let mut table = txn.open_table(SEGMENTS)?;
        for seg in inputs {
            let Some((l, _, count)) = table.get(*seg)?.map(|v| v.value()) else {
                continue;
            };
            table.insert(*seg, (l, SEG_MERGING, count))?;
        }
    }
    let out = new_segment(txn, level + 1, SEG_BUILDING)?;
    merge_step(txn, out, level + 1, inputs, rows)?;
    Ok(true)
}

/// Deletes up to `rows` blocks of segment `seg`: how many it deleted, and whether none is
/// left.
fn delete_segment_rows(
    txn: &WriteTransaction,
    seg: u64,
    rows: usize,
) -> Result<(usize, bool), CoreError> {
    let mut postings = txn.open_table(POSTINGS)?;
    let mut keys: Vec<(String, u64)> = Vec::new();
    for row in postings
        .range((seg, "", 0)..(seg + 1, "", 0))?
        .take(rows + 1)
    {
        let (k, _) = row?;
        let (_, term, first) = k.value();
        keys.push((term.to_string(), first));
    }
    for (term, first) in keys.iter().take(rows) {
        postings.remove((seg, term.as_str(), *first))?;
    }
    Ok((keys.len().min(rows), keys.len() <= rows))
}

/// Merges the next postings of `inputs` into `out` (of `level`), in (term, id) order: each
/// input gives up to about `rows / inputs` blocks, and every posting below the first one some
/// input has not read yet is written (so a term of many blocks is spread over steps too).
/// When the inputs are used up, `out` takes their place.
fn merge_step(
    txn: &WriteTransaction,
    out: u64,
    level: u8,
    inputs: &[u64],
    rows: usize,
) -> Result<(), CoreError> {
    use std::ops::Bound::{Excluded, Included};
    // Every posting up to (term, id) is in `out` already.
    let resume: Option<(String, u64)> = txn
        .open_table(MERGE_AT)?
        .get(out)?
        .map(|v| (v.value().0.to_string(), v.value().1));
    let mut postings = txn.open_table(POSTINGS)?;
    let per_input = (rows / inputs.len().max(1)).max(1);
    let mut read: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    // The first posting some input has not read: everything below it is read everywhere.
    let mut cut: Option<(String, u64)> = None;
    for &seg in inputs {
        // From the block that may hold the posting after `resume` (the one with the greatest
        // smallest id at most the resume id, else the term's first).
        let start = match &resume {
            None => (seg, "", 0),
            Some((term, id)) => {
                let below = postings
                    .range((seg, term.as_str(), 0)..=(seg, term.as_str(), *id))?
                    .next_back();
                match below {
                    Some(r) => (seg, term.as_str(), r?.0.value().2),
                    None => (seg, term.as_str(), 0),
                }
            }
        };
        let range = (Included(start), Excluded((seg + 1, "", 0)));
        let mut taken = 0usize;
        for row in postings.range::<(u64, &str, u64)>(range)? {
            let (k, v) = row?;
            let (_, term, first) = k.value();
            if taken == per_input {
                if cut
                    .as_ref()
                    .is_none_or(|(t, i)| (term, first) < (t.as_str(), *i))
                {
                    cut = Some((term.to_string(), first));
                }
                break;
            }
            let mut ids = decode_block(v.value());
            if let Some((t, i)) = &resume {
                ids.retain(|id| (term, *id) > (t.as_str(), *i));
            }
            // A block the last step finished (at most one per input) does not count.
            if !ids.is_empty() {
                taken += 1;
                read.entry(term.to_string()).or_default().extend(ids);
            }
        }
    }
    let mut written = 0u64;
    let mut last_written: Option<(String, u64)> = None;
    for (term, mut ids) in read {
        if let Some((t, i)) = &cut {
            match term.as_str().cmp(t.as_str()) {
                std::cmp::Ordering::Less => {}
                std::cmp::Ordering::Equal => ids.retain(|id| id < i),
                std::cmp::Ordering::Greater => break,
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let Some(&max) = ids.last() else {
            continue;
        };
        let last = last_block(&postings, out, &term)?;
        append_postings(&mut postings, out, &term, last, &ids)?;
        written += ids.len() as u64;
        last_written = Some((term, max));
    }
    drop(postings);
    let mut segments = txn.open_table(SEGMENTS)?;
    let count = segments.get(out)?.map_or(0, |v| v.value().2) + written;
    let done = cut.is_none();
    let state = match done {
        true => SEG_SEALED,
        false => SEG_BUILDING,
    };
    segments.insert(out, (level, state, count))?;
    let mut at = txn.open_table(MERGE_AT)?;
    if done {
        for seg in inputs {
            segments.insert(*seg, (level.saturating_sub(1), SEG_DEAD, 0))?;
        }
        at.remove(out)?;
    } else if let Some((term, id)) = &last_written {
        at.insert(out, (term.as_str(), *id))?;
    }
    Ok(())
}

fn decode_block(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect()
}

fn encode_block(ids: &[u64]) -> Vec<u8> {
    ids.iter().flat_map(|id| id.to_le_bytes()).collect()
}

/// The block of `term` in `seg` that holds `id` if any does: the one with the greatest
/// smallest id at most `id` (or, when `id` is below every block, the first block).
fn block_for(
    postings: &Postings<'_>,
    seg: u64,
    term: &str,
    id: u64,
) -> Result<Option<(u64, Vec<u64>)>, CoreError> {
    let below = postings
        .range((seg, term, 0)..=(seg, term, id))?
        .next_back();
    let row = match below {
        Some(r) => Some(r?),
        None => match postings
            .range((seg, term, id)..=(seg, term, u64::MAX))?
            .next()
        {
            Some(r) => Some(r?),
            None => None,
        },
    };
    Ok(row.map(|(k, v)| (k.value().2, decode_block(v.value()))))
}

fn put_block(
    postings: &mut Postings<'_>,
    seg: u64,
    term: &str,
    ids: &[u64],
) -> Result<(), CoreError> {
    if let Some(first) = ids.first() {
        postings.insert((seg, term, *first), encode_block(ids).as_slice())?;
    }
    Ok(())
}

/// Adds `id` to `term`'s list in `seg` (idempotent).
fn add_posting(
    postings: &mut Postings<'_>,
    seg: u64,
    term: &str,
    id: u64,
) -> Result<(), CoreError> {
    let Some((key, mut ids)) = block_for(postings, seg, term, id)? else {
        return put_block(postings, seg, term, &[id]);
    };
    let at = match ids.binary_search(&id) {
        Ok(_) => return Ok(()),
        Err(at) => at,
    };
    if ids.len() >= BLOCK_IDS_MAX && at == ids.len() {
        // The usual case, a new post: the full newest block stays, a new one starts.
        return put_block(postings, seg, term, &[id]);
    }
    ids.insert(at, id);
    if at == 0 {
        // A block is keyed by its smallest id: this one's key changes.
        postings.remove((seg, term, key))?;
    }
    if ids.len() > BLOCK_IDS_MAX {
        let upper = ids.split_off(ids.len() / 2);
        put_block(postings, seg, term, &upper)?;
    }
    put_block(postings, seg, term, &ids)
}

/// Removes `id` from `term`'s list in `seg`, if there.
fn remove_posting(
    postings: &mut Postings<'_>,
    seg: u64,
    term: &str,
    id: u64,
) -> Result<(), CoreError> {
    let Some((key, mut ids)) = block_for(postings, seg, term, id)? else {
        return Ok(());
    };
    let Ok(at) = ids.binary_search(&id) else {
        return Ok(());
    };
    ids.remove(at);
    if at == 0 {
        // The smallest id went: the rest (if any) is keyed anew.
        postings.remove((seg, term, key))?;
    }
    put_block(postings, seg, term, &ids)
}

/// `term`'s newest block in `seg`: its key (its smallest id) and its ids.
fn last_block(
    postings: &Postings<'_>,
    seg: u64,
    term: &str,
) -> Result<Option<(u64, Vec<u64>)>, CoreError> {
    match postings
        .range((seg, term, 0)..=(seg, term, u64::MAX))?
        .next_back()
    {
        Some(r) => {
            let (k, v) = r?;
            Ok(Some((k.value().2, decode_block(v.value()))))
        }
        None => Ok(None),
    }
}

/// Appends ascending `ids`, all above any id `term` has in `seg`, after its newest block
/// `last`: that block is filled up first (rewritten under the same key: its smallest id
/// stays), then new blocks follow.
fn append_postings(
    postings: &mut Postings<'_>,
    seg: u64,
    term: &str,
    last: Option<(u64, Vec<u64>)>,
    ids: &[u64],
) -> Result<(), CoreError> {
    let mut rest = ids;
    if let Some((_, mut block)) = last.filter(|(_, b)| b.len() < BLOCK_IDS_MAX) {
        let room = (BLOCK_IDS_MAX - block.len()).min(rest.len());
        block.extend_from_slice(&rest[..room]);
        rest = &rest[room..];
        put_block(postings, seg, term, &block)?;
    }
    for chunk in rest.chunks(BLOCK_IDS_MAX) {
        put_block(postings, seg, term, chunk)?;
    }
    Ok(())
}

/// Makes the index agree with `post` (`None`: the post is gone). Idempotent.
pub fn resync_post(
    txn: &WriteTransaction,
    post_id: u64,
    post: Option<&Post>,
) -> Result<(), CoreError> {
    let new = match post.filter(|p| searchable(p)) {
        Some(p) => Some(post_doc(p, hidden_author(txn, p.author_id)?)),
        None => None,
    };
    let old: Option<PostDoc> = match txn.open_table(DOCS)?.get(post_id)? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    };
    if old == new {
        return Ok(());
    }
    remove_doc(txn, post_id)?;
    if let Some(doc) = &new {
        insert_doc(txn, post_id, doc)?;
    }
    Ok(())
}

/// `resync_post` for many posts in one transaction (the indexer's batch): the posts the index
/// does not hold yet are added term by term (`index_docs`), so a word many of them share has
/// its block rewritten once, not once per post; the others one by one.
pub fn resync_posts(
    txn: &WriteTransaction,
    posts: &[(u64, Option<Post>)],
) -> Result<(), CoreError> {
    let mut fresh: Vec<(u64, PostDoc)> = Vec::new();
    let mut known: Vec<(u64, Option<&Post>)> = Vec::new();
    let mut hidden = HiddenAuthors::default();
    {
        let docs = txn.open_table(DOCS)?;
        for (id, post) in posts {
            match post {
                Some(p)
                    if searchable(p)
                        && docs.get(*id)?.is_none()
                        && !fresh.iter().any(|(f, _)| f == id) =>
                {
                    fresh.push((*id, post_doc(p, hidden.of(txn, p.author_id)?)));
                }
                _ => known.push((*id, post.as_ref())),
            }
        }
    }
    index_docs(txn, &fresh, SEAL_POSTINGS.load(Ordering::Relaxed))?;
    for (id, post) in known {
        resync_post(txn, id, post)?;
    }
    Ok(())
}

/// Indexes posts into an index known not to hold them (a rebuild): see `index_docs`. They
/// all go to one segment (posts come in id order, so each term's list is appended to),
/// sealed by `finish_rebuild` at the level its size makes it.
pub fn index_fresh_posts(txn: &WriteTransaction, posts: &[Post]) -> Result<(), CoreError> {
    let mut hidden = HiddenAuthors::default();
    let mut docs: Vec<(u64, PostDoc)> = Vec::with_capacity(posts.len());
    for p in posts.iter().filter(|p| searchable(p)) {
        docs.push((p.id, post_doc(p, hidden.of(txn, p.author_id)?)));
    }
    index_docs(txn, &docs, u64::MAX)
}

/// `author`'s account turned private or public, or was suspended or let back: the hashtags
/// of its posts on this shard leave or join the counts, as `hidden_author` now says.
/// Idempotent; run in that change's own write, on the author's shard.
pub fn recount_author(txn: &WriteTransaction, author: u64) -> Result<(), CoreError> {
    let hidden = hidden_author(txn, author)?;
    // The author's posts the index holds: its author term's postings, in every segment.
    let term = author_term(author);
    let mut ids: Vec<u64> = Vec::new();
    {
        let segments = segments_where(&txn.open_table(SEGMENTS)?, |state| state != SEG_DEAD)?;
        let postings = txn.open_table(POSTINGS)?;
        for (seg, _) in segments {
            for row in postings.range((seg, term.as_str(), 0)..=(seg, term.as_str(), u64::MAX))? {
                ids.extend(decode_block(row?.1.value()));
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let doc: Option<PostDoc> = match txn.open_table(DOCS)?.get(id)? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        };
        let Some(mut doc) = doc else { continue };
        let counted = !doc.followers_only && !hidden;
        if doc.counted != counted {
            doc.counted = counted;
            txn.open_table(DOCS)?.insert(id, encode(&doc).as_slice())?;
            add_tag_counts(txn, &doc.tags, if counted { 1 } else { -1 })?;
        }
    }
    Ok(())
}

/// The level a segment of `postings` belongs to: 0 up to `MERGE_FANOUT` times the sealed
/// size, and one more for each further factor of `MERGE_FANOUT`.
fn level_for(postings: u64) -> u8 {
    let seal = SEAL_POSTINGS.load(Ordering::Relaxed).max(1);
    let mut level = 0u8;
    let mut size = seal.saturating_mul(MERGE_FANOUT as u64);
    while postings >= size && level < u8::MAX {
        level += 1;
        size = size.saturating_mul(MERGE_FANOUT as u64);
    }
    level
}

/// Adds documents the index does not hold, as many to the open segment as it has room for
/// (then to the next): postings are sorted first so that the B-tree is written in order and
/// each term once, and tag counts are summed per batch.
fn index_docs(txn: &WriteTransaction, docs: &[(u64, PostDoc)], seal: u64) -> Result<(), CoreError> {
    let mut rest = docs;
    while !rest.is_empty() {
        let (seg, room) = open_segment(txn, seal)?;
        let mut n = 0;
        let mut postings = 0u64;
        while n < rest.len() && postings < room {
            postings += rest[n].1.terms.len() as u64;
            n += 1;
        }
        index_docs_in(txn, seg, &rest[..n], seal)?;
        rest = &rest[n..];
    }
    Ok(())
}

fn index_docs_in(
    txn: &WriteTransaction,
    seg: u64,
    docs: &[(u64, PostDoc)],
    seal: u64,
) -> Result<(), CoreError> {
    let mut keys: Vec<(&str, u64)> = docs
        .iter()
        .flat_map(|(id, d)| d.terms.iter().map(move |t| (t.as_str(), *id)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    {
        let mut postings = txn.open_table(POSTINGS)?;
        for run in keys.chunk_by(|a, b| a.0 == b.0) {
            let ids: Vec<u64> = run.iter().map(|(_, id)| *id).collect();
            add_postings(&mut postings, seg, run[0].0, &ids)?;
        }
    }
    count_postings(txn, seg, keys.len() as u64, seal)?;
    {
        let mut table = txn.open_table(DOCS)?;
        let mut meta = txn.open_table(DOC_META)?;
        for (id, doc) in docs {
            table.insert(*id, encode(doc).as_slice())?;
            meta.insert(*id, (doc.author, meta_flags(doc)))?;
        }
    }
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (_, doc) in docs.iter().filter(|(_, d)| d.counted) {
        for (f, w) in &doc.tags {
            *counts.entry((f.as_str(), w.as_str())).or_default() += 1;
        }
    }
    let mut tags = txn.open_table(TAGS)?;
    for (key, n) in counts {
        let old = tags.get(key)?.map(|v| v.value()).unwrap_or(0);
        tags.insert(key, old + n)?;
    }
    Ok(())
}

/// Adds ascending `ids` to `term`'s list in `seg`: appended when they all come after it (new
/// posts), else one by one into their blocks.
fn add_postings(
    postings: &mut Postings<'_>,
    seg: u64,
    term: &str,
    ids: &[u64],
) -> Result<(), CoreError> {
    let Some(first) = ids.first() else {
        return Ok(());
    };
    let last = last_block(postings, seg, term)?;
    let after_all = match &last {
        Some((_, block)) => block.last().is_none_or(|l| l < first),
        None => true,
    };
    if after_all {
        return append_postings(postings, seg, term, last, ids);
    }
    for id in ids {
        add_posting(postings, seg, term, *id)?;
    }
    Ok(())
}

/// Where a post sorts in a result list: by tier (0 first: every searched word is also one
/// of the post's hashtags), then newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rank {
    pub tier: u8,
    pub id: u64,
}

impl Ord for Rank {
    fn cmp(&self, other: &Rank) -> std::cmp::Ordering {
        self.tier
            .cmp(&other.tier)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Rank) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Rank {
    /// The cursor form: `<tier>-<id>`.
    pub fn render(&self) -> String {
        format!("{}-{}", self.tier, self.id)
    }

    pub fn parse(raw: &str) -> Option<Rank> {
        let (tier, id) = raw.split_once('-')?;
        Some(Rank {
            tier: tier.parse().ok().filter(|t| *t <= 1)?,
            id: id.parse().ok()?,
        })
    }
}

/// A post query with `from:` resolved to the author's id.
#[derive(Debug, Clone, Default)]
pub struct PostQuery {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub author: Option<u64>,
}

/// A candidate post, before the engine's visibility checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostHit {
    pub rank: Rank,
    pub author: u64,
    pub followers_only: bool,
}

/// One page of post hits and how far the walk got.
#[derive(Debug, Default)]
pub struct PostPage {
    pub hits: Vec<PostHit>,
    /// `None`: every match after the cursor was looked at. `Some(r)`: everything up to `r`
    /// was looked at (the page is full, or the walk hit `steps_max`); a next page starts
    /// after `r`.
    pub stopped_at: Option<Rank>,
}

/// Posts matching `q`, after `after`, that `keep` accepts; at most `limit`, walking at most
/// `steps_max` posting seeks.
pub fn search_posts(
    read: &ReadTransaction,
    q: &PostQuery,
    after: Option<Rank>,
    limit: usize,
    steps_max: usize,
    mut keep: impl FnMut(&PostHit) -> Result<bool, CoreError>,
) -> Result<PostPage, CoreError> {
    let mut page = PostPage::default();
    if limit == 0 || (q.words.is_empty() && q.tags.is_empty() && q.author.is_none()) {
        return Ok(page);
    }
    let postings = match read.open_table(POSTINGS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(page),
        Err(e) => return Err(e.into()),
    };
    let segments: Vec<u64> = match read.open_table(SEGMENTS) {
        Ok(t) => segments_where(&t, is_read)?
            .into_iter()
            .map(|(seg, _)| seg)
            .collect(),
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(page),
        Err(e) => return Err(e.into()),
    };
    let docs = read.open_table(DOCS)?;
    let meta = read.open_table(DOC_META)?;
    let mut common: Vec<String> = q.tags.iter().map(|t| tag_term(t)).collect();
    if let Some(a) = q.author {
        common.push(author_term(a));
    }
    // Tier 0 (only when words are searched): the words are hashtags of the post.
    let mut tiers: Vec<(u8, Vec<String>)> = Vec::new();
    if !q.words.is_empty() {
        let mut t0: Vec<String> = q.words.iter().map(|w| tag_term(w)).collect();
        t0.extend(common.iter().cloned());
        tiers.push((0, t0));
    }
    let mut t1 = q.words.clone();
    t1.extend(common);
    tiers.push((1, t1));
    let mut steps = 0usize;
    for (tier, terms) in tiers {
        let mut lists: Vec<Cursor> = terms
            .into_iter()
            .map(|term| Cursor::new(term, &segments))
            .collect();
        let mut high = match after {
            Some(a) if a.tier > tier => continue,
            Some(a) if a.tier == tier => match a.id.checked_sub(1) {
                Some(h) => h,
                None => continue,
            },
            _ => u64::MAX,
        };
        loop {
            let found = leapfrog(&postings, &mut lists, high, &mut steps, steps_max)?;
            let id = match found {
                Walk::Match(id) => id,
                Walk::Exhausted => break,
                Walk::OutOfSteps(at) => {
                    // Nothing above `at` matched: the next page starts at `at` itself.
                    let id = at.saturating_add(1);
                    page.stopped_at = Some(Rank { tier, id });
                    return Ok(page);
                }
            };
            let found = meta.get(id)?.map(|v| v.value());
            if let Some((author, flags)) = found {
                // A tier-0 post was listed in tier 0 already (only a post with hashtags can
                // be one; only then is its whole doc read).
                let in_tier0 = tier == 1 && !q.words.is_empty() && flags & META_HAS_TAGS != 0 && {
                    let doc: Option<PostDoc> = match docs.get(id)? {
                        Some(v) => Some(decode(v.value())?),
                        None => None,
                    };
                    doc.is_some_and(|d| q.words.iter().all(|w| d.tags.iter().any(|(f, _)| f == w)))
                };
                let hit = PostHit {
                    rank: Rank { tier, id },
                    author,
                    followers_only: flags & META_FOLLOWERS_ONLY != 0,
                };
                if !in_tier0 && keep(&hit)? {
                    page.hits.push(hit);
                    if page.hits.len() == limit {
                        page.stopped_at = Some(hit.rank);
                        return Ok(page);
                    }
                }
            }
            match id.checked_sub(1) {
                Some(h) => high = h,
                None => break,
            }
            if steps >= steps_max {
                page.stopped_at = Some(Rank { tier, id });
                return Ok(page);
            }
        }
    }
    Ok(page)
}

enum Walk {
    Match(u64),
    Exhausted,
    /// Gave up after `steps_max` probes; no id above this one matches.
    OutOfSteps(u64),
}

/// One term's list as the walk reads it: its part in each segment.
struct Cursor {
    term: String,
    parts: Vec<Part>,
}

/// One term's list in one segment: the block last read, kept while the walk stays in it (the
/// walk only goes down, so a block is read once).
struct Part {
    seg: u64,
    /// (smallest id, ids ascending) of the block read last.
    block: Option<(u64, Vec<u64>)>,
    /// Nothing is left at or below where the walk is.
    done: bool,
}

impl Cursor {
    fn new(term: String, segments: &[u64]) -> Cursor {
        let parts = segments
            .iter()
            .map(|seg| Part {
                seg: *seg,
                block: None,
                done: false,
            })
            .collect();
        Cursor { term, parts }
    }

    /// The largest id of the list at most `at_most`, in whichever segment it is.
    fn seek(
        &mut self,
        postings: &redb::ReadOnlyTable<(u64, &str, u64), &[u8]>,
        at_most: u64,
    ) -> Result<Option<u64>, CoreError> {
        let mut best: Option<u64> = None;
        for part in &mut self.parts {
            if let Some(id) = part.seek(postings, &self.term, at_most)? {
                best = best.max(Some(id));
            }
        }
        Ok(best)
    }
}

impl Part {
    fn seek(
        &mut self,
        postings: &redb::ReadOnlyTable<(u64, &str, u64), &[u8]>,
        term: &str,
        at_most: u64,
    ) -> Result<Option<u64>, CoreError> {
        if self.done {
            return Ok(None);
        }
        let cached = matches!(&self.block, Some((min, _)) if *min <= at_most);
        if !cached {
            let seg = self.seg;
            let row = postings
                .range((seg, term, 0)..=(seg, term, at_most))?
                .next_back();
            self.block = match row {
                Some(r) => {
                    let (k, v) = r?;
                    Some((k.value().2, decode_block(v.value())))
                }
                None => {
                    self.done = true;
                    return Ok(None);
                }
            };
        }
        let Some((_, ids)) = &self.block else {
            return Ok(None);
        };
        // The block's smallest id is at most `at_most`, so there is an answer in it.
        let n = ids.partition_point(|id| *id <= at_most);
        Ok(n.checked_sub(1).map(|i| ids[i]))
    }
}

/// The largest id at most `high` that is in every list (a leapfrog join: each list jumps to
/// the candidate of the others).
fn leapfrog(
    postings: &redb::ReadOnlyTable<(u64, &str, u64), &[u8]>,
    lists: &mut [Cursor],
    high: u64,
    steps: &mut usize,
    steps_max: usize,
) -> Result<Walk, CoreError> {
    let n = lists.len();
    let mut candidate = high;
    let mut agreed = 0usize;
    let mut i = 0usize;
    loop {
        *steps += 1;
        let Some(id) = lists[i].seek(postings, candidate)? else {
            return Ok(Walk::Exhausted);
        };
        if id == candidate {
            agreed += 1;
        } else {
            candidate = id;
            agreed = 1;
        }
        if agreed == n {
            return Ok(Walk::Match(candidate));
        }
        i = (i + 1) % n;
        if *steps >= steps_max {
            return Ok(Walk::OutOfSteps(candidate));
        }
    }
}

// ---- accounts ----------------------------------------------------------------------------

/// How an account term was made.
const TERM_USERNAME: u8 = 0;
const TERM_USERNAME_PART: u8 = 1;
const TERM_NAME: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct AccountDoc {
    username_key: String,
    terms: Vec<(String, u8)>,
}

fn account_doc(username: &str, display_name: &str) -> AccountDoc {
    let key = fold(username);
    let mut terms: Vec<(String, u8)> = vec![(key.clone(), TERM_USERNAME)];
    for part in key.split('_').filter(|p| !p.is_empty() && *p != key) {
        if !terms.iter().any(|(t, _)| t == part) {
            terms.push((part.to_string(), TERM_USERNAME_PART));
        }
    }
    for w in words(display_name) {
        if !terms.iter().any(|(t, _)| *t == w) {
            terms.push((w, TERM_NAME));
        }
    }
    AccountDoc {
        username_key: key,
        terms,
    }
}

/// Makes the account index agree with a user (`None`: the user is gone). Idempotent.
pub fn resync_user(
    txn: &WriteTransaction,
    user_id: u64,
    user: Option<(&str, &str)>,
) -> Result<(), CoreError> {
    let new = user.map(|(u, d)| account_doc(u, d));
    let mut docs = txn.open_table(ACCOUNT_DOCS)?;
    let old: Option<AccountDoc> = match docs.get(user_id)? {
        Some(v) => Some(decode(v.value())?),
        None => None,
    };
    if old == new {
        return Ok(());
    }
    let mut index = txn.open_table(ACCOUNTS)?;
    if let Some(old) = old {
        for (t, _) in &old.terms {
            index.remove((t.as_str(), user_id))?;
        }
        docs.remove(user_id)?;
    }
    if let Some(new) = new {
        for (t, kind) in &new.terms {
            index.insert((t.as_str(), user_id), *kind)?;
        }
        docs.insert(user_id, encode(&new).as_slice())?;
    }
    Ok(())
}

/// Where an account sorts: tier 0 the username is the query, 1 every word is a whole
/// term, 2 some word only as a prefix; then by username.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountRank {
    pub tier: u8,
    pub username_key: String,
}

impl AccountRank {
    pub fn render(&self) -> String {
        format!("{}-{}", self.tier, self.username_key)
    }

    pub fn parse(raw: &str) -> Option<AccountRank> {
        let (tier, name) = raw.split_once('-')?;
        Some(AccountRank {
            tier: tier.parse().ok().filter(|t| *t <= 2)?,
            username_key: name.to_string(),
        })
    }
}

/// Accounts whose username or display name has every query word as a word or a word's
/// prefix; after `after`, at most `limit`, each accepted by `keep(user id)`.
pub fn search_accounts(
    read: &ReadTransaction,
    words: &[String],
    after: Option<&AccountRank>,
    limit: usize,
    mut keep: impl FnMut(u64) -> Result<bool, CoreError>,
) -> Result<Vec<(AccountRank, u64)>, CoreError> {
    let Some(first) = words.iter().max_by_key(|w| w.len()) else {
        return Ok(Vec::new());
    };
    let index = match read.open_table(ACCOUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let docs = read.open_table(ACCOUNT_DOCS)?;
    let whole: String = words.join("_");
    let mut candidates: Vec<u64> = Vec::new();
    for row in index.range((first.as_str(), 0)..)?.take(ACCOUNT_SCAN_MAX) {
        let (key, _) = row?;
        let (term, user) = key.value();
        if !term.starts_with(first.as_str()) {
            break;
        }
        if !candidates.contains(&user) {
            candidates.push(user);
        }
    }
    let mut out: Vec<(AccountRank, u64)> = Vec::new();
    for user in candidates {
        let doc: AccountDoc = match docs.get(user)? {
            Some(v) => decode(v.value())?,
            None => continue,
        };
        let mut all_whole = true;
        let mut all_match = true;
        for w in words {
            if doc.terms.iter().any(|(t, _)| t == w) {
                continue;
            }
            all_whole = false;
            if !doc.terms.iter().any(|(t, _)| t.starts_with(w.as_str())) {
                all_match = false;
                break;
            }
        }
        if !all_match {
            continue;
        }
        let tier = if doc.username_key == whole {
            0
        } else if all_whole {
            1
        } else {
            2
        };
        let rank = AccountRank {
            tier,
            username_key: doc.username_key,
        };
        if after.is_some_and(|a| rank <= *a) {
            continue;
        }
        out.push((rank, user));
    }
    out.sort();
    let mut kept = Vec::with_capacity(limit);
    for (rank, user) in out {
        if kept.len() == limit {
            break;
        }
        if keep(user)? {
            kept.push((rank, user));
        }
    }
    Ok(kept)
}

// ---- hashtags ----------------------------------------------------------------------------

/// Hashtags (as written) starting with the folded `prefix`, with how many of this shard's
/// posts use them; at most `TAG_SCAN_MAX` looked at.
pub fn complete_tags(
    read: &ReadTransaction,
    prefix: &str,
) -> Result<Vec<(String, u64)>, CoreError> {
    let table = match read.open_table(TAGS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.range((prefix, "")..)?.take(TAG_SCAN_MAX) {
        let (key, count) = row?;
        let (folded, written) = key.value();
        if !folded.starts_with(prefix) {
            break;
        }
        out.push((written.to_string(), count.value()));
    }
    Ok(out)
}

// ---- events, cursor, rebuild -------------------------------------------------------------

/// What an event asks the index to look at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Post(u64),
    User(u64),
}

/// The index entry an event touches, if any. Exhaustive on purpose: a new event kind must
/// say here whether search cares.
pub fn subject(event: &Event) -> Option<Subject> {
    match event {
        Event::PostCreated { post } => Some(Subject::Post(post.id)),
        Event::PostDeleted { post_id, .. } => Some(Subject::Post(*post_id)),
        Event::PostEdited { post } => Some(Subject::Post(post.id)),
        Event::UserChanged { user_id } => Some(Subject::User(*user_id)),
        // Messages and media states are not searched.
        Event::MediaReady { .. }
        | Event::MediaFailed { .. }
        | Event::ConversationJoined { .. }
        | Event::MessagePosted { .. }
        | Event::ConversationLeft { .. }
        | Event::Notified { .. }
        | Event::NotificationsRetracted { .. }
        | Event::MessageDeleted { .. } => None,
        // Relations change who may see a post, which is checked when a query runs.
        Event::Followed { .. }
        | Event::Unfollowed { .. }
        | Event::Blocked { .. }
        | Event::Unblocked { .. }
        | Event::FollowApproved { .. } => None,
        // A suspension hides results when a query runs (the mirror), nothing is reindexed.
        // Turning private recounts the author's tags on its own shard (`recount_author`).
        Event::SuspensionChanged { .. } | Event::WentPrivate { .. } | Event::WentPublic { .. } => {
            None
        }
        // An erased user's posts and account are deleted through `PostDeleted` and
        // `UserChanged`, recorded on its own shard.
        Event::AccountErased { .. } | Event::ErasureWork { .. } => None,
    }
}

/// The stored format of this shard's index; `None` when there is none (or it is unfinished).
pub fn format(read: &ReadTransaction) -> Result<Option<u64>, CoreError> {
    let table = match read.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = table.get("format")?.map(|v| v.value());
    Ok(v)
}

/// The last event (ms, id) the index has taken in.
pub fn cursor(read: &ReadTransaction) -> Result<Option<(u64, u64)>, CoreError> {
    let table = match read.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let ms = table.get("cursor_ms")?.map(|v| v.value());
    let id = table.get("cursor_id")?.map(|v| v.value());
    Ok(ms.zip(id))
}

/// Moves the cursor forward (never back).
pub fn advance_cursor(txn: &WriteTransaction, to: (u64, u64)) -> Result<(), CoreError> {
    let mut table = txn.open_table(META)?;
    let ms = table.get("cursor_ms")?.map(|v| v.value());
    let id = table.get("cursor_id")?.map(|v| v.value());
    if ms.zip(id).is_some_and(|old| old >= to) {
        return Ok(());
    }
    table.insert("cursor_ms", to.0)?;
    table.insert("cursor_id", to.1)?;
    Ok(())
}

/// Drops the whole index (the format mark first, so a half-built index is never taken for
/// a finished one).
pub fn clear(txn: &WriteTransaction) -> Result<(), CoreError> {
    txn.delete_table(META)?;
    txn.delete_table(POSTINGS)?;
    txn.delete_table(POSTINGS_V3)?;
    txn.delete_table(SEGMENTS)?;
    txn.delete_table(MERGE_AT)?;
    txn.delete_table(DOCS)?;
    txn.delete_table(DOC_META)?;
    txn.delete_table(TAGS)?;
    txn.delete_table(ACCOUNTS)?;
    txn.delete_table(ACCOUNT_DOCS)?;
    Ok(())
}

/// Indexes users into an index known not to hold them (a rebuild).
pub fn index_fresh_users(
    txn: &WriteTransaction,
    users: &[(u64, &str, &str)],
) -> Result<(), CoreError> {
    for (id, username, display) in users {
        resync_user(txn, *id, Some((username, display)))?;
    }
    Ok(())
}

/// Marks a rebuild finished: its segment sealed, the format, and the event cursor it was
/// built at.
pub fn finish_rebuild(txn: &WriteTransaction, cursor: Option<(u64, u64)>) -> Result<(), CoreError> {
    let open = segments_where(&txn.open_table(SEGMENTS)?, |state| state == SEG_OPEN)?;
    let mut segments = txn.open_table(SEGMENTS)?;
    for (seg, (_, _, count)) in open {
        segments.insert(seg, (level_for(count), SEG_SEALED, count))?;
    }
    drop(segments);
    let mut table = txn.open_table(META)?;
    if let Some((ms, id)) = cursor {
        table.insert("cursor_ms", ms)?;
        table.insert("cursor_id", id)?;
    }
    table.insert("format", FORMAT_VERSION)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Post;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn post(id: u64, author: u64, text: &str, visibility: Visibility) -> Post {
        Post {
            id,
            author_id: author,
            author_username: "u".into(),
            author_display_name: "U".into(),
            text: text.into(),
            visibility,
            reply_to: None,
            mentions: vec![],
            hashtags: crate::content::extract(text).hashtags,
            urls: vec![],
            created_ms: 0,
            edited_ms: None,
            post_type: 0,
            media: vec![],
            author_external_id: None,
            fanned_to: vec![],
        }
    }

    /// `f`, then the index's upkeep until it has nothing left to do (in small steps, so
    /// that merges take many steps and single terms outgrow a step).
    fn write(db: &Database, f: impl FnOnce(&WriteTransaction)) {
        let txn = db.begin_write().unwrap();
        f(&txn);
        while upkeep(&txn, 3).unwrap() {}
        txn.commit().unwrap();
    }

    fn segment_states(db: &Database) -> Vec<(u8, u8)> {
        let read = db.begin_read().unwrap();
        let table = read.open_table(SEGMENTS).unwrap();
        segments_where(&table, |_| true)
            .unwrap()
            .into_iter()
            .map(|(_, (level, state, _))| (level, state))
            .collect()
    }

    #[test]
    fn segments_merge_while_posts_come_change_and_go() {
        // Posts added, edited and removed in a scrambled order, with upkeep steps in between
        // (merges half done when a post changes): every word's list must read back as the
        // model says, at every check and once all merges are done.
        let db = db();
        let vocab = ["red", "green", "blue", "cyan", "plum"];
        let mut model: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let check = |db: &Database, model: &BTreeMap<u64, Vec<&str>>| {
            for word in vocab {
                let want: Vec<(u8, u64)> = model
                    .iter()
                    .rev()
                    .filter(|(_, words)| words.contains(&word))
                    .map(|(id, _)| (1, *id))
                    .take(50)
                    .collect();
                assert_eq!(find(db, word, None), want, "{word}");
            }
        };
        for round in 0..1500u64 {
            let txn = db.begin_write().unwrap();
            let r = next();
            let id = match r % 4 {
                // Mostly new posts, newest ids; sometimes an older id.
                0 | 1 => 10_000 + round,
                _ => 10_000 + next() % (round + 1),
            };
            if r % 7 == 3 {
                resync_post(&txn, id, None).unwrap();
                model.remove(&id);
            } else {
                let extra = ["solo", "pair", "trio"][(next() % 3) as usize];
                let mut words: Vec<&str> =
                    vocab.iter().copied().filter(|_| next() % 3 == 0).collect();
                words.push(extra);
                let text = words.join(" ");
                resync_post(&txn, id, Some(&post(id, 1, &text, Visibility::Public))).unwrap();
                model.insert(id, words);
            }
            for _ in 0..next() % 3 {
                upkeep(&txn, (next() % 6) as usize).unwrap();
            }
            txn.commit().unwrap();
            if round % 100 == 99 {
                check(&db, &model);
            }
        }
        write(&db, |_| {});
        check(&db, &model);
        let states = segment_states(&db);
        assert!(states.iter().any(|(level, _)| *level >= 2), "{states:?}");
        assert!(states
            .iter()
            .all(|(_, state)| *state == SEG_OPEN || *state == SEG_SEALED));
        // Not more than a level's worth waiting per level.
        let mut per_level: BTreeMap<u8, usize> = BTreeMap::new();
        for (level, _) in &states {
            *per_level.entry(*level).or_default() += 1;
        }
        assert!(per_level.values().all(|n| *n <= MERGE_FANOUT), "{states:?}");
    }

    fn find(db: &Database, q: &str, author: Option<u64>) -> Vec<(u8, u64)> {
        let p = parse_post_query(q).unwrap();
        let q = PostQuery {
            words: p.words,
            tags: p.tags,
            author,
        };
        let read = db.begin_read().unwrap();
        search_posts(&read, &q, None, 50, 10_000, |_| Ok(true))
            .unwrap()
            .hits
            .iter()
            .map(|h| (h.rank.tier, h.rank.id))
            .collect()
    }

    #[test]
    fn folding_and_stop_words() {
        assert_eq!(fold("Café"), "cafe");
        assert_eq!(fold("ÉCOLE"), "ecole");
        assert_eq!(fold("ﬁne"), "fine");
        assert_eq!(fold(&"x".repeat(100)).len(), TERM_BYTES_MAX);
        assert_eq!(
            words("Hello, wörld! The naïve café's 3.14").collect::<Vec<_>>(),
            vec!["hello", "world", "the", "naive", "cafe's", "3.14"]
        );
        assert!(is_stop_word("the") && !is_stop_word("rust"));
        let mut sorted = STOP_WORDS;
        sorted.sort_unstable();
        assert_eq!(sorted, STOP_WORDS, "binary search needs a sorted list");
        assert!(parse_post_query("the, and ... !!").unwrap().is_empty());
        assert_eq!(parse_post_query("").unwrap_err().code, "invalid_query");
        assert_eq!(
            parse_post_query("a\u{1}b").unwrap_err().code,
            "invalid_query"
        );
        assert_eq!(
            parse_post_query(&"x".repeat(300)).unwrap_err().code,
            "query_too_long"
        );
        assert_eq!(
            parse_post_query("a1 b1 c1 d1 e1 f1 g1 h1 i1")
                .unwrap_err()
                .code,
            "too_many_terms"
        );
        let p = parse_post_query("Rust #Día from:@Bob").unwrap();
        assert_eq!(p.words, vec!["rust"]);
        assert_eq!(p.tags, vec!["dia"]);
        assert_eq!(p.from.as_deref(), Some("bob"));
    }

    #[test]
    fn and_of_words_ranked_by_tags_then_recency_and_resync() {
        let db = db();
        write(&db, |t| {
            resync_post(
                t,
                10,
                Some(&post(10, 1, "Rust is fast", Visibility::Public)),
            )
            .unwrap();
            resync_post(
                t,
                11,
                Some(&post(11, 2, "fast café and RUST", Visibility::Public)),
            )
            .unwrap();
            resync_post(t, 12, Some(&post(12, 1, "only fast", Visibility::Public))).unwrap();
            resync_post(
                t,
                13,
                Some(&post(13, 1, "#rust tips", Visibility::Followers)),
            )
            .unwrap();
            resync_post(t, 9, Some(&post(9, 2, "rust", Visibility::Public))).unwrap();
        });
        assert_eq!(find(&db, "rust fast", None), vec![(1, 11), (1, 10)]);
        assert_eq!(
            find(&db, "RÚST", None),
            vec![(0, 13), (1, 11), (1, 10), (1, 9)]
        );
        assert_eq!(find(&db, "#rust", None), vec![(1, 13)]);
        assert_eq!(find(&db, "cafe", None), vec![(1, 11)]);
        assert_eq!(find(&db, "rust", Some(2)), vec![(1, 11), (1, 9)]);
        // Pagination: after (1, 11) comes (1, 10).
        let read = db.begin_read().unwrap();
        let q = PostQuery {
            words: vec!["rust".into()],
            ..Default::default()
        };
        let page = search_posts(&read, &q, None, 2, 1000, |_| Ok(true)).unwrap();
        assert_eq!(page.stopped_at, Some(Rank { tier: 1, id: 11 }));
        let next = search_posts(&read, &q, page.stopped_at, 2, 1000, |_| Ok(true)).unwrap();
        let ids: Vec<u64> = next.hits.iter().map(|h| h.rank.id).collect();
        assert_eq!(ids, vec![10, 9]);
        drop(read);
        // An edit and a delete are taken in; doing them twice changes nothing.
        for _ in 0..2 {
            write(&db, |t| {
                resync_post(t, 10, Some(&post(10, 1, "Go is fast", Visibility::Public))).unwrap();
                resync_post(t, 11, None).unwrap();
            });
        }
        assert_eq!(find(&db, "rust fast", None), vec![]);
        assert_eq!(find(&db, "go", None), vec![(1, 10)]);
        // A followers-only post's hashtags are not counted: anyone's completion shows them.
        let tags = |db: &Database| complete_tags(&db.begin_read().unwrap(), "ru").unwrap();
        assert_eq!(tags(&db), vec![]);
        write(&db, |t| {
            resync_post(t, 14, Some(&post(14, 1, "#rust", Visibility::Public))).unwrap();
        });
        assert_eq!(tags(&db), vec![("rust".into(), 1)]);
        // Nor those of a private account's posts: turning private takes them out, turning
        // public again brings them back (each twice: idempotent), and a post indexed or taken
        // out meanwhile keeps the counts right.
        let set_private = |db: &Database, private: bool| {
            write(db, |t| {
                crate::profiles::update_settings(t, 1, Some(private), None).unwrap();
                recount_author(t, 1).unwrap();
                recount_author(t, 1).unwrap();
            })
        };
        set_private(&db, true);
        assert_eq!(tags(&db), vec![]);
        write(&db, |t| {
            resync_post(t, 15, Some(&post(15, 1, "#rust again", Visibility::Public))).unwrap();
        });
        assert_eq!(tags(&db), vec![]);
        set_private(&db, false);
        assert_eq!(tags(&db), vec![("rust".into(), 2)]);
        set_private(&db, true);
        write(&db, |t| resync_post(t, 14, None).unwrap());
        set_private(&db, false);
        assert_eq!(tags(&db), vec![("rust".into(), 1)]);
    }

    #[test]
    fn fresh_build_equals_incremental() {
        let posts: Vec<Post> = (1..200)
            .map(|i| {
                post(
                    i,
                    i % 7,
                    &format!("word{} common #t{}", i % 13, i % 3),
                    Visibility::Public,
                )
            })
            .collect();
        let a = db();
        write(&a, |t| index_fresh_posts(t, &posts[..100]).unwrap());
        write(&a, |t| index_fresh_posts(t, &posts[100..]).unwrap());
        write(&a, |t| finish_rebuild(t, None).unwrap());
        // A rebuild is one segment, sealed at the level of its size: 199 posts of 5 terms
        // (word, common, tag, #tag, author) against segments of 40 merged 3 to a level: level
        // 2 holds up to 40 * 3 * 3 * 3 postings.
        assert_eq!(segment_states(&a), vec![(level_for(995), SEG_SEALED)]);
        assert_eq!(level_for(995), 2, "under 40 * 3 * 3 * 3");
        let b = db();
        write(&b, |t| {
            for p in &posts {
                resync_post(t, p.id, Some(p)).unwrap();
            }
        });
        for q in ["common", "word3 common", "#t1", "word5 #t2"] {
            assert_eq!(find(&a, q, None), find(&b, q, None), "{q}");
            assert!(!find(&a, q, None).is_empty(), "{q}");
        }
        assert_eq!(
            complete_tags(&a.begin_read().unwrap(), "t").unwrap(),
            complete_tags(&b.begin_read().unwrap(), "t").unwrap()
        );
    }

    /// The indexer's batches (`resync_posts`) index what posts one by one would: new posts
    /// after the indexed ones, an older one arriving late (into the middle of its words'
    /// lists), an edit, a deletion, the same post twice.
    #[test]
    fn a_batch_of_posts_indexes_as_posts_one_by_one() {
        let p = |id: u64, text: &str| post(id, id % 3, text, Visibility::Public);
        let earlier: Vec<Post> = (100..400u64)
            .map(|i| p(i, &format!("http shared w{} #t{}", i % 11, i % 4)))
            .collect();
        let batch: Vec<(u64, Option<Post>)> = vec![
            (500, Some(p(500, "http shared fresh #t1"))),
            (150, Some(p(150, "http edited words #t9"))),
            (151, None),
            (50, Some(p(50, "http late shared"))),
            (501, Some(p(501, "http shared fresh"))),
            (501, Some(p(501, "http shared fresh"))),
        ];
        let (one, many) = (db(), db());
        for db in [&one, &many] {
            write(db, |t| {
                for e in &earlier {
                    resync_post(t, e.id, Some(e)).unwrap();
                }
            });
        }
        write(&one, |t| {
            for (id, post) in &batch {
                resync_post(t, *id, post.as_ref()).unwrap();
            }
        });
        write(&many, |t| resync_posts(t, &batch).unwrap());
        for q in [
            "http", "shared", "fresh", "late", "edited", "w7", "#t1", "#t9", "words",
        ] {
            let got = find(&many, q, None);
            assert_eq!(got, find(&one, q, None), "{q}");
            assert!(!got.is_empty(), "{q}");
        }
        let ids = |q: &str| -> Vec<u64> { find(&many, q, None).iter().map(|h| h.1).collect() };
        assert_eq!(ids("late"), vec![50]);
        assert_eq!(ids("fresh"), vec![501, 500]);
        assert!(ids("w8").contains(&162) && !ids("w8").contains(&151));
        assert!(!ids("w7").contains(&150) && ids("edited") == vec![150]);
        assert_eq!(
            complete_tags(&many.begin_read().unwrap(), "t").unwrap(),
            complete_tags(&one.begin_read().unwrap(), "t").unwrap()
        );
    }

    #[test]
    fn posting_blocks_against_a_model() {
        // Ids in a scrambled order, some removed, some added twice: the lists must read back
        // as a sorted set would, across block splits.
        let db = db();
        let mut model = std::collections::BTreeSet::new();
        let ids: Vec<u64> = (0..1000u64).map(|i| (i * 7919) % 1000 + 1).collect();
        write(&db, |t| {
            for (n, id) in ids.iter().enumerate() {
                let text = if id % 2 == 0 { "even blocky" } else { "blocky" };
                resync_post(t, *id, Some(&post(*id, 1, text, Visibility::Public))).unwrap();
                model.insert(*id);
                if n % 3 == 0 {
                    resync_post(t, *id, None).unwrap();
                    model.remove(id);
                }
            }
            for id in ids.iter().take(50) {
                resync_post(t, *id, Some(&post(*id, 1, "blocky", Visibility::Public))).unwrap();
                model.insert(*id);
            }
        });
        // Then new posts in batches, as the indexer takes them: appended after the newest
        // block, filling it up and starting new ones.
        for batch in [1001..1003u64, 1003..1300, 1300..1301] {
            let posts: Vec<(u64, Option<Post>)> = batch
                .map(|id| (id, Some(post(id, 1, "blocky", Visibility::Public))))
                .collect();
            write(&db, |t| resync_posts(t, &posts).unwrap());
            model.extend(posts.iter().map(|(id, _)| *id));
        }
        let read = db.begin_read().unwrap();
        let q = PostQuery {
            words: vec!["blocky".into()],
            ..Default::default()
        };
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = search_posts(&read, &q, after, 37, 100_000, |_| Ok(true)).unwrap();
            got.extend(page.hits.iter().map(|h| h.rank.id));
            match page.stopped_at {
                Some(r) => after = Some(r),
                None => break,
            }
        }
        let want: Vec<u64> = model.iter().rev().copied().collect();
        assert_eq!(got, want);
    }

    #[test]
    fn accounts_exact_whole_then_prefix() {
        let db = db();
        write(&db, |t| {
            resync_user(t, 1, Some(("ana", "Ana Lima"))).unwrap();
            resync_user(t, 2, Some(("anabel_x", "Bel"))).unwrap();
            resync_user(t, 3, Some(("zed", "Ana Ñandú"))).unwrap();
            resync_user(t, 4, Some(("bob", "Bob"))).unwrap();
        });
        let read = db.begin_read().unwrap();
        let names = |q: &str| -> Vec<(u8, u64)> {
            let w = parse_account_query(q).unwrap();
            search_accounts(&read, &w, None, 10, |_| Ok(true))
                .unwrap()
                .into_iter()
                .map(|(r, u)| (r.tier, u))
                .collect()
        };
        assert_eq!(names("ana"), vec![(0, 1), (1, 3), (2, 2)]);
        assert_eq!(names("@ANA"), vec![(0, 1), (1, 3), (2, 2)]);
        assert_eq!(names("nandu"), vec![(1, 3)]);
        assert_eq!(names("ana lim"), vec![(2, 1)]);
        assert_eq!(names("anabel_x"), vec![(0, 2)]);
        drop(read);
        write(&db, |t| resync_user(t, 3, Some(("zed", "Zed"))).unwrap());
        let read = db.begin_read().unwrap();
        let w = parse_account_query("nandu").unwrap();
        assert!(search_accounts(&read, &w, None, 10, |_| Ok(true))
            .unwrap()
            .is_empty());
    }
}
