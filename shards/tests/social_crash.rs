//! Proves that posts survive a SIGKILL of the `nova` process under concurrent load (authors on
//! both shards, followers on the other shard and on the same one): every post answered 201 is
//! in its author's timeline after restart, the outbox then brings every stored post into every
//! follower's home feed, and no post appears twice in any feed or timeline. Each post
//! mentions a reader on each shard: each of them ends up with exactly one mention notification
//! per stored post (made in the compose's transaction on the author's shard, or where the post's
//! event is applied on the other one). Meanwhile those two readers like the posts as they
//! are answered, through the kill: every like answered is still there, each post's count is
//! exactly its likers, and each like notified the post's author once. They also comment on
//! every fourth post, and edit or delete some of their comments: every answered comment,
//! edit and delete holds after the kill, each post's comment count is its comments, and the
//! author has one notification per comment that is there.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

/// Rounds of load and SIGKILL.
const ROUNDS: usize = 3;
/// Client threads per author.
const THREADS_PER_AUTHOR: usize = 2;
/// Posts acknowledged (all threads together) before the kill, per round.
const ACKED_BEFORE_KILL: usize = 200;
/// Posts one thread sends at most (the kill normally ends it long before).
const POSTS_PER_THREAD_MAX: usize = 100_000;
/// How long the outbox relay may take to deliver after a restart.
const REDELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

/// A post the server answered 201.
#[derive(Debug, Clone)]
struct Acked {
    author: usize,
    id: u64,
    text: String,
}

/// Likes sent before the kills: (liker, post) pairs, the liker an index of `Cast::readers`.
#[derive(Default)]
struct Likes {
    /// Answered 200.
    acked: BTreeSet<(usize, u64)>,
    /// Sent, whatever came of it (a superset of `acked`).
    tried: BTreeSet<(usize, u64)>,
}

/// Comments sent before the kills by the two readers (as they like), with edits and deletes
/// of some of them.
#[derive(Default)]
struct Comments {
    /// Answered 201.
    acked: Vec<Comment>,
    /// Texts sent, whatever came of them (edited texts included), and the posts they went to.
    tried: BTreeSet<String>,
    posts: BTreeSet<u64>,
    /// Comment ids whose edit was answered 200, and those whose edit was sent.
    edited: BTreeSet<u64>,
    edit_tried: BTreeSet<u64>,
    /// Comment ids whose delete was answered 204, and those whose delete was sent.
    deleted: BTreeSet<u64>,
    delete_tried: BTreeSet<u64>,
}

impl Comments {
    fn extend(&mut self, other: Comments) {
        self.acked.extend(other.acked);
        self.tried.extend(other.tried);
        self.posts.extend(other.posts);
        self.edited.extend(other.edited);
        self.edit_tried.extend(other.edit_tried);
        self.deleted.extend(other.deleted);
        self.delete_tried.extend(other.delete_tried);
    }
}

/// A comment the server answered 201.
#[derive(Debug, Clone)]
struct Comment {
    /// The commenter, an index of `Cast::readers`.
    by: usize,
    post: u64,
    id: u64,
    text: String,
}

/// The text an edit gives a comment.
fn edited(text: &str) -> String {
    format!("{text} (edited)")
}

/// The cast: four authors (two per shard) and four readers, each author followed by readers on
/// the other shard and on its own.
struct Cast {
    authors: Vec<Member>,
    readers: Vec<Member>,
    /// For each reader, the indexes of the authors it follows.
    follows: Vec<Vec<usize>>,
}

impl Cast {
    /// The readers every post mentions: x0 and x1, one on each shard, who follow everyone
    /// (so every post, followers-only too, is theirs to see).
    fn mentioned(&self) -> impl Iterator<Item = usize> {
        [0, 1].into_iter()
    }
}

fn cast(server: &Server) -> Cast {
    let authors: Vec<Member> = [0, 0, 1, 1]
        .into_iter()
        .map(|s| server.member_on_shard(s))
        .collect();
    // x0 and x1 follow everyone; y0 follows the authors of shard 1, y1 those of shard 0.
    let readers: Vec<Member> = [0, 1, 0, 1]
        .into_iter()
        .map(|s| server.member_on_shard(s))
        .collect();
    let follows = vec![vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![2, 3], vec![0, 1]];
    for (reader, followed) in readers.iter().zip(&follows) {
        for &a in followed {
            let resp = server.call(
                "POST",
                &format!("/v1/users/{}/follow", authors[a].id()),
                reader.auth(),
                None,
            );
            resp.expect(200);
        }
    }
    for (a, author) in authors.iter().enumerate() {
        let other_shard = readers
            .iter()
            .zip(&follows)
            .any(|(r, f)| f.contains(&a) && r.shard() != author.shard());
        assert!(other_shard, "author {a} has no follower on the other shard");
    }
    Cast {
        authors,
        readers,
        follows,
    }
}

/// Posts as one author on fresh connections until the server stops answering.
fn load(
    server: &Server,
    author: &Member,
    (index, mentions): (usize, &str),
    round: usize,
    thread: usize,
    (acked, posted): (&AtomicUsize, &Mutex<Vec<u64>>),
) -> Vec<Acked> {
    let mut out = Vec::new();
    for i in 0..POSTS_PER_THREAD_MAX {
        let text = format!("round {round} author {index} thread {thread} post {i} {mentions}");
        let visibility = if i % 4 == 3 { "followers" } else { "public" };
        let req = Req::post("/v1/posts")
            .json(&json!({"text": text.clone(), "visibility": visibility}))
            .bearer(&author.token)
            .timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 201 => {
                assert_eq!(resp.str("post.text"), text, "{}", resp.what_happened());
                assert_eq!(parse_id(resp.at("post.author.id")), author.id());
                let id = parse_id(resp.at("post.id"));
                posted.lock().unwrap().push(id);
                out.push(Acked {
                    author: index,
                    id,
                    text,
                });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            // Overloaded or timed out: says nothing either way.
            Ok(resp) if resp.status == 503 => {}
            Ok(resp) => panic!("post {text:?}: {}", resp.what_happened()),
            Err(_) => break,
        }
    }
    out
}

/// Likes, as reader `liker`, the posts answered so far, newest first, each once (and every
/// tenth one again: a like is idempotent), and comments on every fourth of them (editing
/// every third comment answered and deleting the next), until the server stops answering (or
/// is killed with nothing left to like).
fn like_load(
    server: &Server,
    liker: (usize, &str),
    posted: &Mutex<Vec<u64>>,
    killed: &AtomicBool,
) -> (Likes, Comments) {
    let (index, token) = liker;
    let mut likes = Likes::default();
    let mut comments = Comments::default();
    let mut seen = 0;
    loop {
        let fresh: Vec<u64> = posted.lock().unwrap()[seen..].to_vec();
        if fresh.is_empty() {
            if killed.load(Ordering::SeqCst) {
                return (likes, comments);
            }
            thread::sleep(Duration::from_millis(2));
            continue;
        }
        seen += fresh.len();
        for (i, id) in fresh.into_iter().rev().enumerate() {
            for _ in 0..if i % 10 == 0 { 2 } else { 1 } {
                likes.tried.insert((index, id));
                let req = Req::post(&format!("/v1/posts/{id}/like"))
                    .bearer(token)
                    .timeout(Duration::from_secs(20));
                match server.send(&req) {
                    Ok(resp) if resp.status == 200 => {
                        assert_eq!(resp.at("liked").as_bool(), Some(true));
                        likes.acked.insert((index, id));
                    }
                    Ok(resp) if resp.status == 503 => {}
                    Ok(resp) => panic!("like of {id}: {}", resp.what_happened()),
                    Err(_) => return (likes, comments),
                }
            }
            if i % 4 == 1 && comment_on(server, (index, token), id, &mut comments).is_err() {
                return (likes, comments);
            }
        }
    }
}

/// Comments on post `id` as reader `index`; edits every third comment answered, deletes the
/// one after. Err once the server stops answering.
fn comment_on(
    server: &Server,
    (index, token): (usize, &str),
    id: u64,
    comments: &mut Comments,
) -> Result<(), ()> {
    let text = format!("reader {index} on {id}");
    comments.tried.insert(text.clone());
    comments.posts.insert(id);
    let req = Req::post(&format!("/v1/posts/{id}/comments"))
        .json(&json!({"text": text.clone()}))
        .bearer(token)
        .timeout(Duration::from_secs(20));
    let comment = match server.send(&req) {
        Ok(resp) if resp.status == 201 => {
            assert_eq!(resp.str("comment.text"), text, "{}", resp.what_happened());
            Comment {
                by: index,
                post: id,
                id: parse_id(resp.at("comment.id")),
                text,
            }
        }
        Ok(resp) if resp.status == 503 => return Ok(()),
        Ok(resp) => panic!("comment on {id}: {}", resp.what_happened()),
        Err(_) => return Err(()),
    };
    let nth = comments.acked.len();
    let cid = comment.id;
    comments.acked.push(comment.clone());
    let req = match nth % 3 {
        0 => {
            comments.tried.insert(edited(&comment.text));
            comments.edit_tried.insert(cid);
            Req::new("PATCH", &format!("/v1/comments/{cid}"))
                .json(&json!({"text": edited(&comment.text)}))
        }
        1 => {
            comments.delete_tried.insert(cid);
            Req::new("DELETE", &format!("/v1/comments/{cid}"))
        }
        _ => return Ok(()),
    };
    match server.send(&req.bearer(token).timeout(Duration::from_secs(20))) {
        Ok(resp) if resp.status == 200 => {
            assert_eq!(resp.str("comment.text"), edited(&comment.text));
            comments.edited.insert(cid);
        }
        Ok(resp) if resp.status == 204 => {
            comments.deleted.insert(cid);
        }
        Ok(resp) if resp.status == 503 => {}
        Ok(resp) => panic!("edit or delete of comment {cid}: {}", resp.what_happened()),
        Err(_) => return Err(()),
    }
    Ok(())
}

/// Runs the load from every author's threads (and the two likers') and SIGKILLs the server
/// once `ACKED_BEFORE_KILL` posts have been acknowledged, while requests are still in flight.
fn load_then_kill(
    server: Server,
    cast: &Cast,
    round: usize,
) -> (Server, Vec<Acked>, Likes, Comments) {
    let server = Arc::new(server);
    let acked = Arc::new(AtomicUsize::new(0));
    let posted = Arc::new(Mutex::new(Vec::new()));
    let killed = Arc::new(AtomicBool::new(false));
    let mentions: String = cast
        .mentioned()
        .map(|r| format!("@{}", cast.readers[r].name()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut handles = Vec::new();
    for (index, author) in cast.authors.iter().enumerate() {
        for t in 0..THREADS_PER_AUTHOR {
            let server = Arc::clone(&server);
            let acked = Arc::clone(&acked);
            let author = author.clone();
            let mentions = mentions.clone();
            let posted = Arc::clone(&posted);
            handles.push(thread::spawn(move || {
                let counters = (&*acked, &*posted);
                load(&server, &author, (index, &mentions), round, t, counters)
            }));
        }
    }
    let likers: Vec<_> = cast
        .mentioned()
        .map(|r| {
            let server = Arc::clone(&server);
            let posted = Arc::clone(&posted);
            let token = cast.readers[r].token.clone();
            let killed = Arc::clone(&killed);
            thread::spawn(move || like_load(&server, (r, &token), &posted, &killed))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} posts in 120 s",
            acked.load(Ordering::SeqCst)
        );
        assert!(
            !handles.iter().all(|h| h.is_finished()),
            "every client stopped before the kill"
        );
        thread::sleep(Duration::from_millis(5));
    }
    server.signal(libc::SIGKILL);
    killed.store(true, Ordering::SeqCst);
    let posts: Vec<Acked> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut likes = Likes::default();
    let mut comments = Comments::default();
    for liker in likers {
        let (done, commented) = liker.join().unwrap();
        likes.acked.extend(done.acked);
        likes.tried.extend(done.tried);
        comments.extend(commented);
    }
    let mut server = Arc::try_unwrap(server).ok().expect("no other owner");
    server.kill9(); // reap it
    (server, posts, likes, comments)
}

/// Fresh access tokens after a restart (the old ones are not what this test is about).
fn relogin(server: &Server, members: &mut [Member]) {
    for m in members {
        m.token = server.login(&m.user.username, &m.user.password).access;
    }
}

/// A walk of a list of posts, required to be strictly newest first (so without repeats).
fn walk_once(server: &Server, path: &str, token: &str) -> Vec<u64> {
    let ids = server.walk_posts(path, token, 100);
    if let Some(w) = ids.windows(2).find(|w| w[0] <= w[1]) {
        panic!("{path}: not strictly newest first, or repeated: {w:?} in {ids:?}");
    }
    ids
}

/// Checks everything after a restart; `acked` holds every acknowledged post of every round.
/// Returns how many stored posts were never answered (in flight at the kill).
fn verify(
    server: &Server,
    cast: &Cast,
    acked: &[Acked],
    likes: &Likes,
    comments: &Comments,
) -> usize {
    // Every acknowledged post is in its author's timeline, with its text.
    let mut timelines: Vec<BTreeSet<u64>> = Vec::new();
    for (index, author) in cast.authors.iter().enumerate() {
        let ids = walk_once(
            server,
            &format!("/v1/users/{}/posts", author.id()),
            &author.token,
        );
        let set: BTreeSet<u64> = ids.iter().copied().collect();
        let lost: Vec<&Acked> = acked
            .iter()
            .filter(|p| p.author == index && !set.contains(&p.id))
            .collect();
        assert!(
            lost.is_empty(),
            "author {index}: {} acknowledged posts lost: {lost:?}",
            lost.len()
        );
        timelines.push(set);
    }
    for post in acked {
        let author = &cast.authors[post.author];
        let resp = server.get(&format!("/v1/posts/{}", post.id), author.auth());
        resp.expect(200);
        assert_eq!(resp.str("post.text"), post.text);
    }

    // Every follower's home feed comes to hold exactly the posts of the authors it follows:
    // each acknowledged one, and each one stored without an answer too (its outbox row was
    // written with it). Never a repeat on the way.
    let deadline = Instant::now() + REDELIVERY_TIMEOUT;
    for (reader, followed) in cast.readers.iter().zip(&cast.follows) {
        let want: BTreeSet<u64> = followed
            .iter()
            .flat_map(|&a| timelines[a].iter().copied())
            .collect();
        loop {
            let got: BTreeSet<u64> = walk_once(server, "/v1/timelines/home", &reader.token)
                .into_iter()
                .collect();
            if got == want {
                break;
            }
            if Instant::now() > deadline {
                let missing: Vec<&u64> = want.difference(&got).collect();
                let extra: Vec<&u64> = got.difference(&want).collect();
                let missing_acked: Vec<&Acked> =
                    acked.iter().filter(|p| missing.contains(&&p.id)).collect();
                panic!(
                    "home of reader {} (shard {}) after {REDELIVERY_TIMEOUT:?}: {} posts \
                     missing ({} of them acknowledged: {missing_acked:?}), extra {extra:?}",
                    reader.name(),
                    reader.shard(),
                    missing.len(),
                    missing_acked.len()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    // Each mentioned reader has one mention notification per stored post: none lost with
    // the kill, none made twice by a replay or a redelivery.
    let stored: BTreeSet<u64> = timelines.iter().flatten().copied().collect();
    let deadline = Instant::now() + REDELIVERY_TIMEOUT;
    for r in cast.mentioned() {
        let reader = &cast.readers[r];
        loop {
            let got = mentions_of(server, reader);
            let distinct: BTreeSet<u64> = got.iter().copied().collect();
            if got.len() == stored.len() && distinct == stored {
                break;
            }
            if Instant::now() > deadline {
                let missing: Vec<&u64> = stored.difference(&distinct).collect();
                let extra: Vec<&u64> = distinct.difference(&stored).collect();
                let missing_acked = acked.iter().filter(|p| missing.contains(&&p.id)).count();
                panic!(
                    "mentions of reader {} (shard {}): {} notifications for {} stored posts; \
                     missing {} ({missing_acked} acknowledged), {} twice, extra {extra:?}",
                    reader.name(),
                    reader.shard(),
                    got.len(),
                    stored.len(),
                    missing.len(),
                    got.len() - distinct.len(),
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    // Every answered like is there, none that was never sent, and each count is its likers.
    let liked_posts: BTreeSet<u64> = likes.tried.iter().map(|(_, id)| *id).collect();
    let mut liked_by: BTreeSet<(u64, u64)> = BTreeSet::new();
    for id in &liked_posts {
        let mut likers = 0;
        let mut count = None;
        for r in cast.mentioned() {
            let resp = server.get(&format!("/v1/posts/{id}"), cast.readers[r].auth());
            resp.expect(200);
            let liked = resp.at("post.liked").as_bool().expect("liked");
            assert!(
                liked || !likes.acked.contains(&(r, *id)),
                "post {id}: the answered like of reader {r} is lost"
            );
            assert!(
                !liked || likes.tried.contains(&(r, *id)),
                "post {id}: liked by reader {r}, who never sent that like"
            );
            likers += usize::from(liked);
            if liked {
                liked_by.insert((cast.readers[r].id(), *id));
            }
            let n = resp.at("post.likes_count").as_u64().expect("likes_count");
            assert!(
                count.is_none_or(|c| c == n),
                "post {id}: counts {count:?} and {n}"
            );
            count = Some(n);
        }
        assert_eq!(
            count,
            Some(likers as u64),
            "post {id}: likes_count against likers"
        );
    }
    // And each like that is there notified the post's author once (the notification is
    // made in the like's transaction and published by the shard's sweep, whose write the
    // log replays).
    let author_of: std::collections::HashMap<u64, usize> = timelines
        .iter()
        .enumerate()
        .flat_map(|(a, ids)| ids.iter().map(move |id| (*id, a)))
        .collect();
    for (a, author) in cast.authors.iter().enumerate() {
        let want: BTreeSet<(u64, u64)> = liked_by
            .iter()
            .filter(|(_, post)| author_of.get(post) == Some(&a))
            .copied()
            .collect();
        assert_notices(server, (a, author), "like", &want);
    }
    verify_comments(server, cast, &author_of, comments);
    stored.len() - acked.len()
}

/// Every answered comment, edit and delete holds; nothing is there that was never sent; each
/// post's `comments_count` is its comments; each comment there notified the post's author
/// once.
fn verify_comments(
    server: &Server,
    cast: &Cast,
    author_of: &std::collections::HashMap<u64, usize>,
    comments: &Comments,
) {
    let reader = &cast.readers[0];
    // Every comment there, whether answered or stored without an answer: (author, text, post).
    let mut there: std::collections::HashMap<u64, (u64, String, u64)> = Default::default();
    for post in &comments.posts {
        let resp = server.get(
            &format!("/v1/posts/{post}/comments?limit=100"),
            reader.auth(),
        );
        resp.expect(200);
        let items = resp.at("items").as_array().expect("items").clone();
        for c in &items {
            let id = parse_id(c.get("id").expect("id"));
            let text = at(c, "text").and_then(|v| v.as_str()).expect("text");
            let by = parse_id(at(c, "author.id").expect("author.id"));
            assert!(
                comments.tried.contains(text),
                "post {post}: comment {id} {text:?} was never sent"
            );
            there.insert(id, (by, text.to_string(), *post));
        }
        let resp = server.get(&format!("/v1/posts/{post}"), reader.auth());
        resp.expect(200);
        assert_eq!(
            resp.at("post.comments_count").as_u64(),
            Some(items.len() as u64),
            "post {post}: comments_count against its comments"
        );
    }
    for c in &comments.acked {
        match there.get(&c.id) {
            None => assert!(
                comments.delete_tried.contains(&c.id),
                "the answered comment {} ({:?}) is lost",
                c.id,
                c.text
            ),
            Some((by, text, post)) => {
                assert_eq!(*by, cast.readers[c.by].id(), "comment {}: its author", c.id);
                assert_eq!(*post, c.post, "comment {}: its post", c.id);
                assert!(
                    !comments.deleted.contains(&c.id),
                    "comment {} is back after its answered delete",
                    c.id
                );
                let edit = edited(&c.text);
                let ok = match (
                    comments.edited.contains(&c.id),
                    comments.edit_tried.contains(&c.id),
                ) {
                    (true, _) => *text == edit,
                    (false, true) => *text == edit || *text == c.text,
                    (false, false) => *text == c.text,
                };
                assert!(
                    ok,
                    "comment {}: text {text:?} after the restart; sent as {:?}, edit answered: \
                     {}, edit sent: {}",
                    c.id,
                    c.text,
                    comments.edited.contains(&c.id),
                    comments.edit_tried.contains(&c.id)
                );
            }
        }
    }
    for (a, author) in cast.authors.iter().enumerate() {
        let want: BTreeSet<(u64, u64)> = there
            .iter()
            .filter(|(_, (_, _, post))| author_of.get(post) == Some(&a))
            .map(|(id, (by, _, _))| (*by, *id))
            .collect();
        assert_notices(server, (a, author), "comment", &want);
    }
}

/// Author `a` has exactly one notification of `kind` per (actor, subject) of `want`.
fn assert_notices(
    server: &Server,
    (a, author): (usize, &Member),
    kind: &str,
    want: &BTreeSet<(u64, u64)>,
) {
    let got = notices_of(server, author, kind);
    let distinct: BTreeSet<(u64, u64)> = got.iter().copied().collect();
    assert!(
        got.len() == distinct.len() && distinct == *want,
        "{kind} notifications of author {a}: {} for {} wanted; missing {:?}, extra {:?}",
        got.len(),
        want.len(),
        want.difference(&distinct).collect::<Vec<_>>(),
        distinct.difference(want).collect::<Vec<_>>()
    );
}

/// The posts of every mention notification of `who`, newest first.
fn mentions_of(server: &Server, who: &Member) -> Vec<u64> {
    notices_of(server, who, "mention")
        .into_iter()
        .map(|(_, post)| post)
        .collect()
}

/// (actor id, subject id) of every notification of `kind` of `who`, newest first, walked
/// page by page.
fn notices_of(server: &Server, who: &Member, kind: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut max_id: Option<u64> = None;
    loop {
        let cursor = max_id.map_or(String::new(), |id| format!("&max_id={id}"));
        let resp = server.get(
            &format!("/v1/notifications?types={kind}&limit=100{cursor}"),
            who.auth(),
        );
        resp.expect(200);
        let items = resp.at("items").as_array().expect("items").clone();
        for n in &items {
            let id_at = |path: &str| -> u64 {
                let v = at(n, path).and_then(|v| v.as_str());
                v.unwrap_or_else(|| panic!("no {path} in {n:?}"))
                    .parse()
                    .expect("an id")
            };
            out.push((id_at("actor.id"), id_at("subject.id")));
            max_id = Some(parse_id(n.get("id").expect("id")));
        }
        if items.len() < 100 {
            return out;
        }
    }
}

#[test]
fn acknowledged_posts_reach_timelines_and_feeds_after_sigkill() {
    let server = Server::start(&[]);
    let mut cast = cast(&server);
    let mut acked = Vec::new();
    let mut likes = Likes::default();
    let mut comments = Comments::default();
    let mut server = server;
    for round in 1..=ROUNDS {
        let (s, posts, round_likes, round_comments) = load_then_kill(server, &cast, round);
        server = s;
        assert!(
            !round_likes.acked.is_empty(),
            "round {round}: no like answered before the kill"
        );
        assert!(
            !round_comments.deleted.is_empty() && !round_comments.edited.is_empty(),
            "round {round}: no comment edited and deleted before the kill"
        );
        comments.extend(round_comments);
        likes.acked.extend(round_likes.acked);
        likes.tried.extend(round_likes.tried);
        let per_author: Vec<usize> = (0..cast.authors.len())
            .map(|a| posts.iter().filter(|p| p.author == a).count())
            .collect();
        assert!(
            per_author.iter().all(|&n| n > 0),
            "round {round}: acknowledged posts per author {per_author:?}"
        );
        acked.extend(posts);
        server.restart();
        relogin(&server, &mut cast.authors);
        // Killed under load, the server had commits only its write-ahead log held: what the
        // checks below find, the replay brought back.
        server.assert_replayed(&format!("round {round}: "));
        relogin(&server, &mut cast.readers);
        let unanswered = verify(&server, &cast, &acked, &likes, &comments);
        eprintln!(
            "round {round}: {} acknowledged posts verified ({per_author:?} per author), \
             {unanswered} stored without an answer; {} likes answered of {} sent; {} comments \
             answered, {} edited, {} deleted",
            acked.len(),
            likes.acked.len(),
            likes.tried.len(),
            comments.acked.len(),
            comments.edited.len(),
            comments.deleted.len()
        );
    }
}

/// Pairs of (author on shard 0 with posts of its own, reader on shard 1): each reader's feed
/// can only get its author's older posts from that follow's own backfill.
const BACKFILL_PAIRS: usize = 8;
/// How long a restarted server may take to redo an interrupted backfill (it retries follows
/// older than 10 s, every 5 s).
const BACKFILL_RETRY_TIMEOUT: Duration = Duration::from_secs(40);

/// A follow answered or not, killed anywhere between its commit and its backfill's: after the
/// restart, every follow that exists brings the author's earlier posts into the reader's home
/// feed. The kills land at spread-out moments of the follows in flight; wherever they land,
/// the check is the same.
#[test]
fn a_follow_cut_by_sigkill_still_gets_its_backfill() {
    let mut server = Server::start(&[]);
    for (round, delay_ms) in [3u64, 8, 15, 25, 40].into_iter().enumerate() {
        let pairs: Vec<(Member, Member, Vec<u64>)> = (0..BACKFILL_PAIRS)
            .map(|_| {
                let author = server.member_on_shard(0);
                let reader = server.member_on_shard(1);
                let posts = (0..3)
                    .map(|i| {
                        let resp = server.post(
                            "/v1/posts",
                            Some(&author.token),
                            json!({"text": format!("earlier post {i}")}),
                        );
                        resp.expect(201);
                        parse_id(resp.at("post.id"))
                    })
                    .collect();
                (author, reader, posts)
            })
            .collect();
        let server_arc = Arc::new(server);
        let handles: Vec<_> = pairs
            .iter()
            .map(|(author, reader, _)| {
                let server = Arc::clone(&server_arc);
                let (author, token) = (author.id(), reader.token.clone());
                thread::spawn(move || {
                    let req = Req::post(&format!("/v1/users/{author}/follow"))
                        .bearer(&token)
                        .timeout(Duration::from_secs(10));
                    server.send(&req).map(|r| r.status).ok()
                })
            })
            .collect();
        // Somewhere among the follows in flight: a different moment each round.
        thread::sleep(Duration::from_millis(delay_ms));
        server_arc.signal(libc::SIGKILL);
        let answered: Vec<Option<u16>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let Ok(mut s) = Arc::try_unwrap(server_arc) else {
            panic!("every client thread has ended");
        };
        s.kill9();
        s.restart();
        server = s;
        let deadline = Instant::now() + BACKFILL_RETRY_TIMEOUT;
        let mut followed = 0;
        for ((author, reader, posts), answer) in pairs.iter().zip(&answered) {
            let reader_token = server
                .login(&reader.user.username, &reader.user.password)
                .access;
            let resp = server.get(
                &format!("/v1/users/{}/following?limit=10", reader.id()),
                Some(&reader_token),
            );
            resp.expect(200);
            let following: Vec<u64> = resp
                .at("items")
                .as_array()
                .expect("items")
                .iter()
                .map(|item| parse_id(item.get("id").expect("id")))
                .collect();
            if !following.contains(&author.id()) {
                assert_ne!(*answer, Some(200), "an answered follow was lost");
                continue;
            }
            followed += 1;
            loop {
                let home = server.walk_posts("/v1/timelines/home", &reader_token, 100);
                if posts.iter().all(|p| home.contains(p)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "round {round}: reader {} follows {} but its feed has {home:?}, not {posts:?}",
                    reader.id(),
                    author.id()
                );
                thread::sleep(Duration::from_millis(250));
            }
        }
        eprintln!(
            "round {round} (kill after {delay_ms} ms): {followed} of {BACKFILL_PAIRS} follows \
             survived the kill (answered before it: {})",
            answered.iter().filter(|a| **a == Some(200)).count()
        );
    }
}
