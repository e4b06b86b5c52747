//! Building the search index from the primary tables (at start-up when it is missing or of
//! an older format, and with `nova admin reindex`), and `nova admin import-posts`, which
//! writes a synthetic corpus straight into a stopped server's data directory for the search
//! benchmark.
//!
//! These run off any executor: one std thread per shard, each reading its partition and
//! handing batches to the partition's commit thread.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use nova_core::content::{self, Post, Visibility};
use nova_core::identity::{self, Context, DisplayName, Email, NewUser, Username};
use nova_core::{events, search, shard_for_key, CoreError, IdGen};
use nova_storage::{DataDir, Partition};

/// Posts indexed per write transaction during a rebuild.
const REBUILD_POSTS_BATCH: usize = 20_000;
const REBUILD_USERS_BATCH: usize = 5_000;
/// Posts written per transaction by the import.
const IMPORT_POSTS_BATCH: usize = 20_000;
/// Limits on the import, so a typo cannot fill the disk.
const IMPORT_POSTS_MAX: u64 = 20_000_000;
const IMPORT_USERS_MAX: u64 = 1_000_000;

/// What a rebuild did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rebuilt {
    pub posts: u64,
    pub users: u64,
    pub seconds: f64,
}

/// Rebuilds the index of every partition whose index is missing, unfinished or of another
/// format (every partition when `force`), one thread per partition.
pub fn ensure_indexes(partitions: &[Arc<Partition>], force: bool) -> anyhow::Result<Rebuilt> {
    let started = Instant::now();
    let mut threads = Vec::new();
    for (k, p) in partitions.iter().enumerate() {
        let current = {
            let read = p.read()?;
            search::format(&read)? == Some(search::FORMAT_VERSION)
        };
        if current && !force {
            continue;
        }
        let p = Arc::clone(p);
        let handle = std::thread::Builder::new()
            .name(format!("nova-reindex-{k}"))
            .spawn(move || rebuild(&p))
            .context("cannot start a reindex thread")?;
        threads.push((k, handle));
    }
    let mut total = Rebuilt::default();
    for (k, handle) in threads {
        let done = handle
            .join()
            .map_err(|_| anyhow::anyhow!("the reindex of shard {k} panicked"))?
            .with_context(|| format!("reindex of shard {k}"))?;
        tracing::info!(
            shard = k,
            posts = done.posts,
            users = done.users,
            "search index rebuilt"
        );
        total.posts += done.posts;
        total.users += done.users;
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok(total)
}

/// Drops one shard's index and builds it again from its posts and users. The format mark is
/// written last, so a rebuild cut short is started over at the next start.
pub fn rebuild(p: &Partition) -> Result<Rebuilt, CoreError> {
    let started = Instant::now();
    let mut done = Rebuilt::default();
    // Events up to here are covered by what the rebuild reads (nothing else writes now).
    let cursor = events::last_key(&p.read()?)?;
    p.write_blocking(search::clear)?;
    let mut after = None;
    loop {
        let posts = content::posts_after(&p.read()?, after, REBUILD_POSTS_BATCH)?;
        let Some(last) = posts.last() else { break };
        after = Some(last.id);
        done.posts += posts.len() as u64;
        p.write_blocking(move |t| search::index_fresh_posts(t, &posts))?;
    }
    let mut after = None;
    loop {
        let users = identity::users_after(&p.read()?, after, REBUILD_USERS_BATCH)?;
        let Some(last) = users.last() else { break };
        after = Some(last.id);
        done.users += users.len() as u64;
        p.write_blocking(move |t| {
            let rows: Vec<(u64, &str, &str)> = users
                .iter()
                .map(|u| (u.id, u.username.as_str(), u.display_name.as_str()))
                .collect();
            search::index_fresh_users(t, &rows)
        })?;
    }
    p.write_blocking(move |t| search::finish_rebuild(t, cursor))?;
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

fn open_partitions(dir: &Path) -> anyhow::Result<Vec<Arc<Partition>>> {
    let manifest = DataDir::read_manifest(dir)?
        .with_context(|| format!("{} is not a nova data directory", dir.display()))?;
    open_data(dir, manifest.shards)
}

fn open_data(dir: &Path, shards: usize) -> anyhow::Result<Vec<Arc<Partition>>> {
    let data = DataDir::open(dir, shards)?;
    (0..shards)
        .map(|k| Ok(Arc::new(Partition::open(&data.shard_path(k), 1024, 1024)?)))
        .collect()
}

/// `nova admin reindex`: rebuild every shard's index of a stopped server.
pub fn reindex(dir: &Path) -> anyhow::Result<()> {
    let partitions = open_partitions(dir)?;
    let done = ensure_indexes(&partitions, true)?;
    for p in &partitions {
        p.close();
    }
    println!(
        "reindexed {} posts and {} users in {:.2} s ({:.0} posts/s)",
        done.posts,
        done.users,
        done.seconds,
        done.posts as f64 / done.seconds.max(1e-9)
    );
    Ok(())
}

/// `nova admin import-posts`: `users` accounts `user<i>` (password `password`, or the one
/// given) and `posts` posts of synthetic text, written straight into the data directory
/// (made with `shards` shards if new). The search index is not touched: the next start (or
/// `nova admin reindex`) builds it.
pub fn import_posts(
    dir: &Path,
    shards: usize,
    users: u64,
    posts: u64,
    seed: u64,
    password: &str,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=IMPORT_USERS_MAX).contains(&users),
        "users is 1 to {IMPORT_USERS_MAX}"
    );
    anyhow::ensure!(
        posts <= IMPORT_POSTS_MAX,
        "posts is at most {IMPORT_POSTS_MAX}"
    );
    let partitions = open_data(dir, shards)?;
    let started = Instant::now();
    // One real hash for every account: the bench logs in, and argon2 per user would
    // dominate the import.
    let hash = nova_core::password::hash(password, nova_core::password::HashCost::default())
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
    let mut ids: Vec<IdGen> = (0..shards).map(IdGen::new).collect();
    let now = crate::shard::now_ms();
    let mut people: Vec<(u64, String, String)> = Vec::with_capacity(users as usize);
    let mut per_shard: Vec<Vec<NewUser>> = (0..shards).map(|_| Vec::new()).collect();
    for i in 0..users {
        let name = format!("user{i}");
        let k = shard_for_key(&name, shards);
        let display = format!(
            "{} {}",
            corpus::word(i as usize % 5_000),
            corpus::word(i as usize % 97)
        );
        let id = ids[k].next(now);
        people.push((id, name.clone(), display.clone()));
        per_shard[k].push(NewUser {
            id,
            username: Username::parse(&name).map_err(invalid)?,
            email: Email::parse(&format!("{name}@example.org")).map_err(invalid)?,
            display_name: DisplayName::parse(&display).map_err(invalid)?,
            password_hash: hash.clone(),
            email_id: ids[k].next(now),
            verify_ttl_ms: 24 * 3600 * 1000,
        });
    }
    for (k, batch) in per_shard.into_iter().enumerate() {
        let log_ids: Vec<u64> = (0..batch.len()).map(|_| ids[k].next(now)).collect();
        partitions[k].write_blocking(move |t| {
            for (new, log_id) in batch.into_iter().zip(log_ids) {
                let ctx = Context {
                    now_ms: now,
                    ip: "127.0.0.1".to_string(),
                    log_id,
                };
                identity::create_user(t, &ctx, new)?;
            }
            Ok::<_, CoreError>(())
        })?;
    }
    let mut rng = corpus::Rng::new(seed);
    let zipf = corpus::Zipf::new(corpus::VOCABULARY);
    let mut batches: Vec<Vec<Post>> = (0..shards).map(|_| Vec::new()).collect();
    // Posts are dated in the past, before the accounts' ids: a generator of their own.
    let mut post_ids: Vec<IdGen> = (0..shards).map(IdGen::new).collect();
    // Posts are dated over the last `posts` seconds, oldest first.
    let start_ms = now.saturating_sub(posts * 1000);
    for n in 0..posts {
        let (author, username, display) = &people[rng.below(users) as usize];
        let k = nova_core::shard_of(*author);
        let at = start_ms + n * 1000;
        let text = corpus::post_text(&mut rng, &zipf);
        let post = Post {
            id: post_ids[k].next(at),
            author_id: *author,
            author_username: username.clone(),
            author_display_name: display.clone(),
            hashtags: content::extract(&text).hashtags,
            text,
            visibility: Visibility::Public,
            reply_to: None,
            mentions: Vec::new(),
            urls: Vec::new(),
            created_ms: at,
            edited_ms: None,
            post_type: 0,
            media: Vec::new(),
            author_external_id: None,
            fanned_to: Vec::new(),
        };
        batches[k].push(post);
        if batches[k].len() >= IMPORT_POSTS_BATCH {
            let batch = std::mem::take(&mut batches[k]);
            write_posts(&partitions[k], batch)?;
        }
    }
    for (k, batch) in batches.into_iter().enumerate() {
        write_posts(&partitions[k], batch)?;
    }
    for p in &partitions {
        p.close();
    }
    println!(
        "imported {users} users and {posts} posts in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn invalid(v: nova_core::Invalid) -> anyhow::Error {
    anyhow::anyhow!("{}", v.message)
}

fn write_posts(p: &Partition, batch: Vec<Post>) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    p.write_blocking(move |t| {
        for post in &batch {
            content::insert_post(t, post, None)?;
        }
        Ok::<_, CoreError>(())
    })?;
    Ok(())
}

/// The synthetic corpus: a vocabulary of made-up words whose frequencies follow Zipf's law,
/// as words in real text do. `nova-search` (the bench) makes the same words.
pub mod corpus {
    pub const VOCABULARY: usize = 20_000;
    const SYLLABLES: [&str; 32] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "ha", "ju", "ke",
        "la", "ma", "no", "pe", "qui", "ro", "su", "ta", "ul", "ve", "wa", "xi", "ya", "ze", "an",
        "el", "or",
    ];

    /// Word number `rank` (0 is the most frequent): two to four syllables.
    pub fn word(rank: usize) -> String {
        let mut n = rank;
        let mut out = String::new();
        for _ in 0..2 {
            out.push_str(SYLLABLES[n % 32]);
            n /= 32;
        }
        while n > 0 {
            out.push_str(SYLLABLES[n % 32]);
            n /= 32;
        }
        out
    }

    /// splitmix64.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n.max(1)
        }
    }

    /// Ranks drawn with probability proportional to 1 / (rank + 1).
    pub struct Zipf {
        cdf: Vec<f64>,
    }

    impl Zipf {
        pub fn new(n: usize) -> Zipf {
            let mut cdf = Vec::with_capacity(n);
            let mut sum = 0.0;
            for r in 0..n {
                sum += 1.0 / (r as f64 + 1.0);
                cdf.push(sum);
            }
            for c in &mut cdf {
                *c /= sum;
            }
            Zipf { cdf }
        }

        pub fn sample(&self, rng: &mut Rng) -> usize {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
        }
    }

    /// 8 to 15 words, and a hashtag in one post out of three.
    pub fn post_text(rng: &mut Rng, zipf: &Zipf) -> String {
        let n = 8 + rng.below(8) as usize;
        let mut words: Vec<String> = (0..n).map(|_| word(zipf.sample(rng))).collect();
        if rng.below(3) == 0 {
            words.push(format!("#{}", word(rng.below(200) as usize)));
        }
        words.join(" ")
    }
}
