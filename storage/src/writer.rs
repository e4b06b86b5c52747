//! A partition is one shard's redb database plus the thread that commits to it.
//!
//! Group commit: writes queue on a bounded channel; the writer thread takes everything queued
//! (up to `commit_batch_ops_max`), applies it in one write transaction and commits it with one
//! fsync (`Durability::Immediate`). Only then is each caller answered. A caller therefore
//! never sees success for a write that is not on disk.
//!
//! Opened with `Partition::open_logged`, a partition also keeps a write-ahead log (wal.rs):
//! a batch of logged and lossy writes commits in memory (`Durability::None`) once the log
//! frame of its logged writes is on disk, and a checkpoint (a durable commit) follows within
//! `checkpoint_every`, or at once when a plain write needs one. See `Class`.
//!
//! Invariant the closures must keep: an operation that returns a domain error (one whose
//! `poisons_batch()` is false) has not modified the transaction. Domain code validates first
//! and writes after. An operation that fails inside redb poisons the batch: the whole
//! transaction is aborted and every caller in it gets the storage error.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};

use crate::wal::{self, Wal, WAL_SEQ, WAL_SEQ_KEY};
use crate::StorageError;

/// Decides whether an operation's error leaves the transaction unusable.
pub trait WriteFailure {
    /// True when the error came from storage (the transaction may be half-applied), false for
    /// domain errors returned before anything was written.
    fn poisons_batch(&self) -> bool;
}

impl WriteFailure for StorageError {
    fn poisons_batch(&self) -> bool {
        true
    }
}

type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
/// A queued write: run in the batch's transaction, it answers its completion, whether it
/// poisons the batch, and its log record (logged writes that succeeded).
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool, Option<Vec<u8>>) + Send>;

/// How a write is made durable before its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// By a durable commit of the database (an fsync of its file).
    Durable,
    /// By its record in the write-ahead log, which replays it after a crash; its commit may
    /// stay in memory until the next checkpoint. Without a log, as `Durable`.
    Logged,
    /// Not at all: a crash may lose it, and whatever wrote it writes it again (delivery
    /// acknowledgements, the search index's upkeep). Without a log, as `Durable`.
    Lossy,
    /// As `Durable`, and every earlier commit is made durable before it runs, so the file
    /// holds exactly what it sees (images for backups).
    Barrier,
}

enum Msg {
    Write(Job, Class),
    /// A write nobody waits on at once: it rides along with the next commit that happens
    /// anyway, or commits by itself once this moment comes (`Partition::write_deferred`).
    Deferred(Job, Class, Instant),
    Stop,
}

/// The log grows about this much at most between two checkpoints: past it, a checkpoint
/// follows the next commit (once the previous one's fsync is done; see `wants_checkpoint`).
const WAL_BYTES_MAX: u64 = 64 << 20;

/// Upper bounds (seconds) of the commit-time histogram buckets.
pub const FSYNC_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// Counters the writer thread keeps; read by `/metrics`. Atomics are fine here: they are
/// written once per batch by one thread, never on a request path.
#[derive(Default)]
pub struct CommitStats {
    batches: AtomicU64,
    ops: AtomicU64,
    failures: AtomicU64,
    logged: AtomicU64,
    fsync_ns: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS_S.len()],
}

/// A copy of `CommitStats` at one moment.
#[derive(Debug, Clone, Default)]
pub struct CommitStatsSnapshot {
    pub batches: u64,
    pub ops: u64,
    pub failures: u64,
    /// Commits made durable by the write-ahead log rather than by an fsync of the database.
    pub logged: u64,
    pub fsync_seconds_sum: f64,
    /// Non-cumulative counts per bucket of `FSYNC_BUCKETS_S`; the rest is in `batches`.
    pub fsync_buckets: [u64; FSYNC_BUCKETS_S.len()],
}

impl CommitStats {
    fn record(&self, ops: usize, elapsed_s: f64, ok: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.ops.fetch_add(ops as u64, Ordering::Relaxed);
        if !ok {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.fsync_ns
            .fetch_add((elapsed_s * 1e9) as u64, Ordering::Relaxed);
        if let Some(i) = FSYNC_BUCKETS_S.iter().position(|&le| elapsed_s <= le) {
            self.fsync_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> CommitStatsSnapshot {
        let mut buckets = [0; FSYNC_BUCKETS_S.len()];
        for (out, b) in buckets.iter_mut().zip(&self.fsync_buckets) {
            *out = b.load(Ordering::Relaxed);
        }
        CommitStatsSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            ops: self.ops.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            logged: self.logged.load(Ordering::Relaxed),
            fsync_seconds_sum: self.fsync_ns.load(Ordering::Relaxed) as f64 / 1e9,
            fsync_buckets: buckets,
        }
    }
}

/// One shard's database and its commit thread.
pub struct Partition {
    path: PathBuf,
    db: Arc<Database>,
    tx: flume::Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<CommitStats>,
    /// How long (µs) a busy writer waits for more writes before committing (`run_writer`).
    linger_us: Arc<AtomicU64>,
    /// The file under redb, for online images (storage/src/snapshot.rs).
    tap: crate::snapshot::Tap,
}

impl Partition {
    /// Opens (or creates) the database at `path`, checking every page of an existing file.
    /// A damaged file is reported, naming the file, and left untouched. Every commit is
    /// durable; a write-ahead log left with writes the database lacks is refused (see
    /// `open_logged`).
    pub fn open(
        path: &Path,
        commit_batch_ops_max: usize,
        commit_queue_max: usize,
    ) -> Result<Partition, StorageError> {
        Partition::open_with(path, commit_batch_ops_max, commit_queue_max, None)
    }

    /// `open` with a write-ahead log (wal.rs) at `path` with the extension `wal`: first the
    /// logged writes the database lacks (those of the commits a crash left in memory) are
    /// run again, in order, through `replay`, and committed durably; then logged and lossy
    /// writes commit in memory, with a checkpoint at least every `checkpoint_every`.
    /// A record `replay` fails on stops the open: an answered write cannot be dropped.
    pub fn open_logged(
        path: &Path,
        commit_batch_ops_max: usize,
        commit_queue_max: usize,
        checkpoint_every: Duration,
        replay: Replay<'_>,
    ) -> Result<Partition, StorageError> {
        Partition::open_with(
            path,
            commit_batch_ops_max,
            commit_queue_max,
            Some((checkpoint_every, replay)),
        )
    }

    fn open_with(
        path: &Path,
        commit_batch_ops_max: usize,
        commit_queue_max: usize,
        logged: Option<(Duration, Replay<'_>)>,
    ) -> Result<Partition, StorageError> {
        assert!(commit_batch_ops_max > 0 && commit_queue_max > 0);
        let damaged = |reason: String| StorageError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let exists = path.exists();
        // A redb open of a file altered outside redb may panic rather than fail; the check on
        // open turns that into an error, and catch_unwind covers what it does not.
        let file = open_file(path)?;
        let opening = |e: redb::DatabaseError| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StorageError::InUse {
                path: path.to_path_buf(),
            },
            e => damaged(e.to_string()),
        };
        let tap = crate::snapshot::Tap::new(file).map_err(opening)?;
        let opened = std::panic::catch_unwind(|| {
            let mut builder = Database::builder();
            builder.set_check_integrity_on_open(exists);
            builder.create_with_backend(tap.clone())
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(opening(e)),
            Err(_) => return Err(damaged("redb panicked while opening it".to_string())),
        };
        let log = recover(&db, path, logged, &tap)?;
        let db = Arc::new(db);
        let (tx, rx) = flume::bounded(commit_queue_max);
        let stats = Arc::new(CommitStats::default());
        let linger_us = Arc::new(AtomicU64::new(0));
        let thread = {
            let db = Arc::clone(&db);
            let stats = Arc::clone(&stats);
            let linger = Arc::clone(&linger_us);
            let name = format!(
                "nova-commit-{}",
                path.file_stem()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default()
            );
            std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    let mut writer = Writer {
                        db: &db,
                        stats: &stats,
                        log,
                    };
                    writer.run(&rx, &linger, commit_batch_ops_max)
                })
                .map_err(|source| StorageError::Io {
                    path: path.to_path_buf(),
                    source,
                })?
        };
        Ok(Partition {
            path: path.to_path_buf(),
            db,
            tx,
            thread: Mutex::new(Some(thread)),
            stats,
            linger_us,
            tap,
        })
    }

    pub(crate) fn tap(&self) -> &crate::snapshot::Tap {
        &self.tap
    }

    /// How long a busy writer waits for more writes before it commits (zero: never waits).
    /// Longer lingers make fewer, larger commits under load, at the cost of that much
    /// latency per write; an idle writer always commits at once.
    pub fn set_commit_linger(&self, linger: Duration) {
        let us = u64::try_from(linger.as_micros()).unwrap_or(u64::MAX);
        self.linger_us.store(us, Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A read transaction on the last committed state. Cheap; never blocks on writers.
    pub fn read(&self) -> Result<ReadTransaction, StorageError> {
        Ok(self.db.begin_read()?)
    }

    /// Runs `op` inside the next group commit and resolves once that commit is durable.
    pub async fn write<R, E, F>(&self, op: F) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        self.write_job(unlogged(op), None, Class::Durable).await
    }

    /// `write` for work no request waits on (applying what another shard offered, indexing,
    /// acknowledgements): it joins the next commit some other write causes, and commits on
    /// its own only if none comes within `within`. Under light load that spares a commit
    /// (an fsync and its page writes) per such write; under heavy load commits are shared
    /// anyway. It still resolves only once its commit is durable.
    pub async fn write_deferred<R, E, F>(&self, op: F, within: Duration) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        self.write_job(unlogged(op), Some(within), Class::Durable)
            .await
    }

    /// `write` for an operation that can say how to run it again: besides its value, `op`
    /// returns a record that `open_logged`'s replay turns back into the same writes on the
    /// same state. It resolves once that record is in the log (or its commit durable).
    /// With `within`, it is deferred as in `write_deferred`.
    pub async fn write_logged<R, E, F>(&self, op: F, within: Option<Duration>) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<(R, Vec<u8>), E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        let op = move |txn: &WriteTransaction| op(txn).map(|(value, record)| (value, Some(record)));
        self.write_job(op, within, Class::Logged).await
    }

    /// `write_deferred` for a write a crash may lose because its writer writes it again
    /// (acknowledgements that are resent, an index that catches up from its stored cursor).
    /// It must not be what a logged write later depends on. It resolves once committed.
    pub async fn write_lossy<R, E, F>(&self, op: F, within: Duration) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        self.write_job(unlogged(op), Some(within), Class::Lossy)
            .await
    }

    async fn write_job<R, E, F>(
        &self,
        op: F,
        within: Option<Duration>,
        class: Class,
    ) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<(R, Option<Vec<u8>>), E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        let (reply_tx, reply_rx) = flume::bounded::<Result<R, E>>(1);
        let job: Job = Box::new(move |txn: &WriteTransaction| {
            let (outcome, record) = match op(txn) {
                Ok((value, record)) => (Ok(value), record),
                Err(e) => (Err(e), None),
            };
            let poisons = matches!(&outcome, Err(e) if e.poisons_batch());
            let completion: Completion = Box::new(move |commit: Result<(), StorageError>| {
                let answer = match (outcome, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(E::from(e)),
                    (Ok(value), Ok(())) => Ok(value),
                };
                // The caller may have gone (deadline passed); the write stands regardless.
                let _ = reply_tx.send(answer);
            });
            (completion, poisons, record)
        });
        let msg = match within {
            None => Msg::Write(job, class),
            Some(within) => Msg::Deferred(job, class, Instant::now() + within),
        };
        self.tx
            .send_async(msg)
            .await
            .map_err(|_| StorageError::WriterStopped)?;
        reply_rx
            .recv_async()
            .await
            .map_err(|_| E::from(StorageError::WriterStopped))?
    }

    /// `write_blocking` that first makes every earlier commit durable in the file, so the
    /// file holds exactly what `op` sees (images).
    pub(crate) fn barrier_blocking<R, E, F>(&self, op: F) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        futures_block_on(self.write_job(unlogged(op), None, Class::Barrier))
    }

    /// Like `write`, for callers off any executor (admin tools, start-up).
    pub fn write_blocking<R, E, F>(&self, op: F) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        futures_block_on(self.write(op))
    }

    pub fn stats(&self) -> CommitStatsSnapshot {
        self.stats.snapshot()
    }

    /// Commits everything queued so far, then stops the writer thread. Later writes fail
    /// with `WriterStopped`. Idempotent.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Stop);
        let handle = match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.close();
    }
}

/// A write that arrives this soon after the previous commit ended finds the writer busy.
const BUSY_GAP: Duration = Duration::from_millis(5);

/// `op` as a job that leaves no log record.
fn unlogged<R, E, F>(
    op: F,
) -> impl FnOnce(&WriteTransaction) -> Result<(R, Option<Vec<u8>>), E> + Send + 'static
where
    F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
{
    move |txn: &WriteTransaction| op(txn).map(|value| (value, None))
}

fn open_file(path: &Path) -> Result<std::fs::File, StorageError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| StorageError::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn sync_dir(file: &Path) -> std::io::Result<()> {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// The number of the last log frame `db` holds the effects of (0: none).
fn stored_seq(db: &Database) -> Result<u64, StorageError> {
    let read = db.begin_read()?;
    let seq = match read.open_table(WAL_SEQ) {
        Ok(table) => table.get(WAL_SEQ_KEY)?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    Ok(seq.unwrap_or(0))
}

fn record_seq(txn: &WriteTransaction, seq: u64) -> Result<(), StorageError> {
    txn.open_table(WAL_SEQ)?.insert(WAL_SEQ_KEY, seq)?;
    Ok(())
}

/// Runs one log record again (`Partition::open_logged`).
pub type Replay<'r> = &'r dyn Fn(&WriteTransaction, &[u8]) -> Result<(), StorageError>;

/// How many commits the write-ahead log next to the database at `path` holds that `db`
/// (opened on that file) lacks: a crash left them to replay, so a copy of the file alone
/// would miss them.
pub fn unapplied_log_frames(path: &Path, db: &Database) -> Result<usize, StorageError> {
    let mut files = Vec::new();
    for wal_path in wal::paths_for(path) {
        if wal_path.exists() {
            files.push(
                std::fs::File::open(&wal_path).map_err(|source| StorageError::Io {
                    path: wal_path.clone(),
                    source,
                })?,
            );
        }
    }
    let (after, _) =
        wal::frames_after(&files, stored_seq(db)?).map_err(|source| StorageError::Io {
            path: path.with_extension("wal"),
            source,
        })?;
    Ok(after.len())
}

/// Refuses, for a command that writes to a stopped server's database, a file whose log holds
/// commits it lacks (a crash): written now, they would be replayed over what it writes at the
/// next start (a session revoked here would come back).
pub fn refuse_unapplied_log(path: &Path, db: &Database) -> Result<(), StorageError> {
    let missing = unapplied_log_frames(path, db)?;
    if missing == 0 {
        return Ok(());
    }
    Err(StorageError::Damaged {
        path: path.with_extension("wal"),
        reason: format!(
            "its write-ahead log holds {missing} commits the database lacks (the server \
             stopped without a checkpoint): start the server on this data dir once and stop \
             it, then run this again"
        ),
    })
}

/// Brings `db` up to its log: the frames after the one it holds are replayed and committed
/// durably. Without `logged`, a log with such frames is refused instead.
fn recover(
    db: &Database,
    path: &Path,
    logged: Option<(Duration, Replay<'_>)>,
    tap: &crate::snapshot::Tap,
) -> Result<Option<Log>, StorageError> {
    let paths = wal::paths_for(path);
    let io = |source| StorageError::Io {
        path: paths[0].clone(),
        source,
    };
    let Some((every, replay)) = logged else {
        refuse_unapplied_log(path, db)?;
        return Ok(None);
    };
    let mut files = Vec::with_capacity(2);
    for wal_path in &paths {
        let created = !wal_path.exists();
        let file = open_file(wal_path)?;
        if created {
            // The new name must survive a power cut as much as the frames written to it.
            sync_dir(wal_path).map_err(io)?;
        }
        files.push(file);
    }
    let stored = stored_seq(db)?;
    let (missing, highest) = wal::frames_after(&files, stored).map_err(io)?;
    if let Some((newest, _)) = missing.last() {
        let txn = db.begin_write()?;
        for (seq, records) in &missing {
            for record in records {
                if let Err(e) = replay(&txn, record) {
                    let _ = txn.abort();
                    return Err(StorageError::Damaged {
                        path: paths[0].clone(),
                        reason: format!("log frame {seq} cannot be replayed: {e}"),
                    });
                }
            }
        }
        record_seq(&txn, *newest)?;
        txn.commit()?;
        tracing::info!(
            log = %paths[0].display(),
            frames = missing.len(),
            "replayed the write-ahead log"
        );
    }
    let [a, b] = paths;
    let mut files = files.into_iter();
    let (Some(file_a), Some(file_b)) = (files.next(), files.next()) else {
        unreachable!("two log files were opened");
    };
    Ok(Some(Log {
        wals: [Wal::new(file_a, a), Wal::new(file_b, b)],
        current: 0,
        next_seq: stored.max(highest) + 1,
        every,
        phase: checkpoint_phase(every),
        last_durable: Instant::now(),
        dirty: false,
        force: false,
        tap: tap.clone(),
    }))
}

/// The writer thread's side of the write-ahead log.
struct Log {
    /// The two files, used in turn (wal.rs); frames go to `wals[current]`.
    wals: [Wal; 2],
    current: usize,
    /// The number the next frame will carry.
    next_seq: u64,
    /// The longest a commit stays out of the database file.
    every: Duration,
    /// Where this partition's checkpoints fall in each period of `every` (`checkpoint_phase`).
    phase: Duration,
    last_durable: Instant,
    /// Commits since `last_durable` (in memory, their logged writes in the log).
    dirty: bool,
    /// The next commit must be durable (the log failed: see `Writer::finish`).
    force: bool,
    /// The database file's backend, whose checkpoint fsyncs run in the background.
    tap: crate::snapshot::Tap,
}

/// How often a writer looks again whether the previous checkpoint's fsync is done, when the
/// next checkpoint waits for it.
const SYNC_POLL: Duration = Duration::from_millis(10);

/// The clock every partition's checkpoints are placed on (`Log::due`).
fn checkpoint_clock() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// The phase of the next log opened: the partitions' checkpoints are spread over the period
/// (by the golden ratio, so any number of them lands apart), instead of all falling at once.
/// Together, the shards' checkpoints stalled every commit thread at once and took the
/// machine's cores from the shards (docs/benchmarks.md, session 16).
fn checkpoint_phase(every: Duration) -> Duration {
    checkpoint_clock();
    static OPENED: AtomicU64 = AtomicU64::new(0);
    phase_of(OPENED.fetch_add(1, Ordering::Relaxed), every)
}

/// The phase of the `k`th log opened.
fn phase_of(k: u64, every: Duration) -> Duration {
    let golden = 0.618_033_988_749_895_f64;
    every.mul_f64((k as f64 * golden).fract())
}

/// The last of the points `start + m * every` (m = 0, 1, ...) at most `every` after
/// `last_durable`; `last_durable + every` itself before `start`.
fn phased_due(last_durable: Instant, every: Duration, start: Instant) -> Instant {
    let latest = last_durable + every;
    match latest.checked_duration_since(start) {
        Some(since) => {
            let into = since.as_nanos() % every.as_nanos().max(1);
            latest - Duration::from_nanos(into as u64)
        }
        None => latest,
    }
}

impl Log {
    /// When the next checkpoint is due: the last point of this partition's phase
    /// (`origin + phase + m * every`) at most `every` after the last durable commit. In a
    /// steady state that is one period after the last; it is never later than `every`.
    fn due(&self) -> Instant {
        phased_due(
            self.last_durable,
            self.every,
            checkpoint_clock() + self.phase,
        )
    }

    /// When the writer, idle, should wake for a checkpoint.
    fn checkpoint_due(&self) -> Option<Instant> {
        if !self.dirty {
            return None;
        }
        let due = self.due();
        Some(match self.tap.syncing() {
            true => due.max(Instant::now() + SYNC_POLL),
            false => due,
        })
    }

    /// A checkpoint is due, and the previous one's fsync is done (starting one before would
    /// make its first write wait for that fsync, stalling the writer: the commits wait in
    /// memory and the log a little longer instead).
    fn wants_checkpoint(&self) -> bool {
        let written = self.wals[self.current].written();
        let due = Instant::now() >= self.due() || written >= WAL_BYTES_MAX;
        // Past four times the limit, the log does not grow further: the writer waits.
        self.dirty && ((due && !self.tap.syncing()) || written >= 4 * WAL_BYTES_MAX)
    }

    /// The highest number given out so far (0 before any).
    fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Appends the next frame. Its number is used up whether or not this succeeds, so a
    /// frame that failed half-way is never mistaken for a later one.
    fn append(&mut self, records: &[Vec<u8>]) -> std::io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.wals[self.current].append(seq, records)
    }

    /// After a durable commit (its fsync done or running in the background): frames go to
    /// the other file from its start. That file's frames are all covered by the checkpoint
    /// before this one, which is durable: this commit's own writes waited for its fsync.
    fn checkpointed(&mut self) {
        self.current = 1 - self.current;
        self.wals[self.current].restart();
        self.dirty = false;
        self.force = false;
        self.last_durable = Instant::now();
    }
}

struct Writer<'a> {
    db: &'a Database,
    stats: &'a CommitStats,
    log: Option<Log>,
}

impl Writer<'_> {
    fn run(
        &mut self,
        rx: &flume::Receiver<Msg>,
        linger_us: &AtomicU64,
        commit_batch_ops_max: usize,
    ) {
        let mut batch: Vec<(Job, Class)> = Vec::with_capacity(commit_batch_ops_max);
        // Deferred writes waiting for a commit, in arrival order, and the moment the first of
        // them must commit by. Writes commit in the order they arrive, deferred or not (a post
        // is applied before its edit): a commit takes every waiting one before anything later.
        let mut waiting: Vec<(Job, Class)> = Vec::new();
        let mut due: Option<Instant> = None;
        let mut last_end: Option<Instant> = None;
        loop {
            let mut stop = false;
            // Wait for a write, for the waiting deferred ones to fall due, or for the
            // checkpoint the commits in memory need.
            let checkpoint = self.log.as_ref().and_then(Log::checkpoint_due);
            let deadline = match (due, checkpoint) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let first = match deadline {
                None => rx.recv().ok(),
                Some(at) => match rx.recv_deadline(at) {
                    Ok(msg) => Some(msg),
                    Err(flume::RecvTimeoutError::Timeout) => {
                        if due.is_some_and(|d| d <= Instant::now()) {
                            self.take_waiting(&mut batch, &mut waiting, commit_batch_ops_max);
                            due = None;
                            self.commit_batch(&mut batch, false);
                            last_end = Some(Instant::now());
                        } else if self.log.as_ref().is_some_and(Log::wants_checkpoint) {
                            self.checkpoint();
                        }
                        // (Else the previous checkpoint's fsync still runs: look again soon.
                        // Only a commit of writes makes the writer count as busy.)
                        continue;
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => None,
                },
            };
            match first {
                Some(Msg::Deferred(job, class, at)) => {
                    waiting.push((job, class));
                    due = Some(due.map_or(at, |d| d.min(at)));
                    continue;
                }
                Some(Msg::Write(job, class)) => {
                    // This commit happens anyway: what waits rides along, ahead of this write.
                    self.take_waiting(&mut batch, &mut waiting, commit_batch_ops_max);
                    due = None;
                    batch.push((job, class));
                }
                Some(Msg::Stop) | None => {
                    // Nothing is left behind: what still waits commits before the thread ends.
                    self.take_waiting(&mut batch, &mut waiting, commit_batch_ops_max);
                    stop = true;
                }
            }
            while !stop && batch.len() < commit_batch_ops_max {
                match rx.try_recv() {
                    // Committed now with the rest, in arrival order.
                    Ok(Msg::Write(job, class)) | Ok(Msg::Deferred(job, class, _)) => {
                        batch.push((job, class))
                    }
                    Ok(Msg::Stop) => stop = true,
                    Err(_) => break,
                }
            }
            // Busy (the previous commit ended moments ago): wait a little for more writes, so
            // one commit carries them all, with one fsync and one write of the pages that every
            // write dirties near the roots of its tables. An idle writer commits at once.
            let linger = Duration::from_micros(linger_us.load(Ordering::Relaxed));
            let busy = last_end.is_some_and(|end| end.elapsed() < BUSY_GAP);
            if !stop && busy && !linger.is_zero() {
                let until = Instant::now() + linger;
                while batch.len() < commit_batch_ops_max {
                    match rx.recv_deadline(until) {
                        Ok(Msg::Write(job, class)) | Ok(Msg::Deferred(job, class, _)) => {
                            batch.push((job, class))
                        }
                        Ok(Msg::Stop) | Err(flume::RecvTimeoutError::Disconnected) => {
                            stop = true;
                            break;
                        }
                        Err(flume::RecvTimeoutError::Timeout) => break,
                    }
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch, stop);
                last_end = Some(Instant::now());
            }
            if stop {
                // The database file holds everything, durably, when the thread ends.
                if self.log.as_ref().is_some_and(|l| l.dirty) {
                    self.checkpoint();
                }
                if let Some(log) = &self.log {
                    if let Err(e) = log.tap.wait_synced() {
                        tracing::error!(error = %e, "the last checkpoint is not durable");
                    }
                }
                return;
            }
        }
    }

    /// Moves every waiting deferred write into `batch`, in order, committing full batches on
    /// the way (so that all of them commit before any write that arrived after them).
    fn take_waiting(
        &mut self,
        batch: &mut Vec<(Job, Class)>,
        waiting: &mut Vec<(Job, Class)>,
        max: usize,
    ) {
        for job in waiting.drain(..) {
            if batch.len() >= max {
                self.commit_batch(batch, false);
            }
            batch.push(job);
        }
    }

    /// A durable commit of nothing: the commits held in memory reach the file. Its fsync
    /// runs in the background (`Tap::defer_next_sync`): the writer goes on at once.
    fn checkpoint(&mut self) {
        let Some(log) = &mut self.log else {
            return;
        };
        let started = Instant::now();
        log.tap.defer_next_sync();
        let result = self
            .db
            .begin_write()
            .map_err(StorageError::from)
            .and_then(|txn| {
                record_seq(&txn, log.last_seq())?;
                txn.commit().map_err(StorageError::from)
            });
        log.tap.disarm();
        match &result {
            Ok(()) => log.checkpointed(),
            Err(e) => {
                // Tried again with the next commit (forced durable), or after `every`.
                tracing::error!(error = %e, "checkpoint failed");
                log.force = true;
                log.last_durable = Instant::now();
            }
        }
        self.stats
            .record(0, started.elapsed().as_secs_f64(), result.is_ok());
    }

    /// Runs `batch` in one transaction and commits it: durably when a write in it asks
    /// for it (or there is no log, or a checkpoint is due, or `closing`), else in memory
    /// after its logged writes' frame is on disk. Then answers every write in it.
    fn commit_batch(&mut self, batch: &mut Vec<(Job, Class)>, closing: bool) {
        let ops = batch.len();
        if self.log.as_ref().is_some_and(|l| l.dirty)
            && batch.iter().any(|(_, class)| *class == Class::Barrier)
        {
            self.checkpoint();
        }
        let started = Instant::now();
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                // Without a transaction the jobs cannot run. Dropping them closes their reply
                // channels, so each caller gets a storage error and nothing was written.
                tracing::error!(error = %e, ops, "cannot begin a write transaction; batch refused");
                batch.clear();
                self.stats
                    .record(ops, started.elapsed().as_secs_f64(), false);
                return;
            }
        };
        let mut completions = Vec::with_capacity(ops);
        let mut records = Vec::new();
        let mut poisoned = false;
        let mut durable = closing;
        for (job, class) in batch.drain(..) {
            durable |= matches!(class, Class::Durable | Class::Barrier);
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(&txn))) {
                Ok((completion, poisons, record)) => {
                    poisoned |= poisons;
                    completions.push(completion);
                    records.extend(record);
                }
                Err(_) => {
                    tracing::error!("a write operation panicked; aborting its batch");
                    poisoned = true;
                }
            }
        }
        let result = if poisoned {
            let _ = txn.abort();
            Err(StorageError::Redb(
                "the batch was aborted after a storage failure".to_string(),
            ))
        } else {
            self.finish(txn, durable, &records)
        };
        let ok = result.is_ok();
        if let Err(e) = &result {
            tracing::error!(error = %e, ops, "group commit failed");
        }
        self.stats.record(ops, started.elapsed().as_secs_f64(), ok);
        if self.log.as_ref().is_some_and(|l| l.force) {
            // The failed batch's frame may be on disk: a durable commit storing its number
            // as done, durable before anyone hears of the failure (its fsync waited for
            // here, not left to the background), keeps a crash from replaying it.
            self.checkpoint();
            if let Some(Err(e)) = self.log.as_ref().map(|l| l.tap.wait_synced()) {
                tracing::error!(error = %e, "the checkpoint after a failed commit");
            }
        }
        for completion in completions {
            completion(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(StorageError::Redb(e.to_string())),
            });
        }
        if self.log.as_ref().is_some_and(Log::wants_checkpoint) {
            self.checkpoint();
        }
    }

    /// Commits a batch's transaction (see `commit_batch`).
    ///
    /// A failure of the log or of the in-memory commit after its frame was written forces
    /// a durable commit (`commit_batch` runs a checkpoint at once, before answering the
    /// batch; if that fails too, the next commit is durable): it stores the failed frame's
    /// number as done, so a crash after it never replays the failed batch. A crash before
    /// the batch is answered may replay it, like any write in flight. (If that checkpoint
    /// fails, the callers hear of the failure while the frame could still be replayed until
    /// a later durable commit: that takes the disk failing twice in a row, then a crash.)
    fn finish(
        &mut self,
        mut txn: WriteTransaction,
        durable: bool,
        records: &[Vec<u8>],
    ) -> Result<(), StorageError> {
        let Some(log) = &mut self.log else {
            return txn.commit().map_err(StorageError::from);
        };
        if durable || log.force {
            // A caller waits for this commit to be durable: its fsync runs here.
            record_seq(&txn, log.last_seq())?;
            txn.commit()?;
            log.checkpointed();
            return Ok(());
        }
        if !records.is_empty() {
            record_seq(&txn, log.next_seq)?;
            if let Err(source) = log.append(records) {
                log.force = true;
                let _ = txn.abort();
                return Err(StorageError::Io {
                    path: log.wals[log.current].path().to_path_buf(),
                    source,
                });
            }
        }
        if txn.set_durability(Durability::None).is_err() {
            // Not expected (no persistent savepoints, one process): commit durably instead.
            record_seq(&txn, log.last_seq())?;
            txn.commit()?;
            log.checkpointed();
            return Ok(());
        }
        #[cfg(test)]
        if !records.is_empty() && tests::FAIL_AFTER_APPEND.swap(false, Ordering::Relaxed) {
            // As if the in-memory commit failed after the frame reached the disk.
            log.force = true;
            let _ = txn.abort();
            return Err(StorageError::Redb("injected commit failure".to_string()));
        }
        match txn.commit() {
            Ok(()) => {
                log.dirty = true;
                self.stats.logged.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                log.force = true;
                Err(e.into())
            }
        }
    }
}

/// A minimal executor-free `block_on` for `write_blocking`: the future only waits on flume
/// channels, which wake through the waker, so parking the thread is enough.
fn futures_block_on<F: std::future::Future>(fut: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableTable, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    /// Makes the next logged commit fail after its frame is on disk (`Writer::finish`). Set
    /// only in a child process that runs one test.
    pub(super) static FAIL_AFTER_APPEND: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    #[derive(Debug)]
    enum E {
        Storage,
        Domain,
    }
    impl From<StorageError> for E {
        fn from(_: StorageError) -> Self {
            E::Storage
        }
    }
    impl WriteFailure for E {
        fn poisons_batch(&self) -> bool {
            matches!(self, E::Storage)
        }
    }

    #[test]
    fn checkpoints_fall_on_their_phase_and_never_later_than_the_period() {
        let every = Duration::from_millis(500);
        let t0 = Instant::now();
        let start = t0 + Duration::from_millis(300);
        let ms = |d: Instant| d.duration_since(t0).as_millis();
        // Before the first point: the period from the last checkpoint.
        assert_eq!(ms(phased_due(t0, every, t0 + Duration::from_secs(9))), 500);
        // After one: the last point within the period.
        assert_eq!(ms(phased_due(t0, every, start)), 300);
        assert_eq!(
            ms(phased_due(t0 + Duration::from_millis(310), every, start)),
            800
        );
        assert_eq!(
            ms(phased_due(t0 + Duration::from_millis(299), every, start)),
            300
        );
        // A steady state: one period apart, whatever a checkpoint takes.
        let mut last = start + Duration::from_millis(7);
        for _ in 0..20 {
            let due = phased_due(last, every, start);
            assert!(due > last && due <= last + every);
            assert_eq!(due.duration_since(start).as_millis() % 500, 0);
            last = due + Duration::from_millis(13);
        }
        // The phases of partitions opened one after another are spread apart: two shards'
        // checkpoints fall about two fifths of a period apart, three no closer than a fifth,
        // four no closer than a seventh.
        let phases: Vec<u128> = (0..4).map(|k| phase_of(k, every).as_millis()).collect();
        assert_eq!(phases, [0, 309, 118, 427]);
    }

    #[test]
    fn writes_are_visible_after_commit_and_domain_errors_do_not_poison() {
        let dir = tempfile::tempdir().unwrap();
        let p = Partition::open(&dir.path().join("s.redb"), 64, 64).unwrap();
        p.write_blocking(|txn| -> Result<(), E> {
            txn.open_table(T)
                .map_err(|_| E::Storage)?
                .insert(1, 10)
                .map_err(|_| E::Storage)?;
            Ok(())
        })
        .unwrap();
        let r: Result<(), E> = p.write_blocking(|_| Err(E::Domain));
        assert!(matches!(r, Err(E::Domain)));
        let read = p.read().unwrap();
        let t = read.open_table(T).unwrap();
        assert_eq!(t.get(1).unwrap().unwrap().value(), 10);
        assert!(p.stats().batches >= 2);
    }

    fn put(key: u64) -> impl FnOnce(&WriteTransaction) -> Result<(), E> + Send + 'static {
        move |txn| {
            txn.open_table(T)
                .map_err(|_| E::Storage)?
                .insert(key, key)
                .map_err(|_| E::Storage)?;
            Ok(())
        }
    }

    /// A deferred write commits by itself once its window passes, rides along with a
    /// commit another write causes before then, and is committed, not dropped, at close.
    #[test]
    fn deferred_writes_ride_along_or_commit_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let p = Arc::new(Partition::open(&dir.path().join("s.redb"), 64, 64).unwrap());
        let started = Instant::now();
        futures_block_on(p.write_deferred(put(1), Duration::from_millis(100))).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(p.stats().batches, 1);

        // Deferred for a minute, it commits with the next plain write.
        let waiting = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                futures_block_on(p.write_deferred(put(2), Duration::from_secs(60)))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(p.stats().batches, 1, "nothing due yet");
        let started = Instant::now();
        // In arrival order: the deferred write ran first in the shared transaction.
        p.write_blocking(|txn| -> Result<(), E> {
            let mut t = txn.open_table(T).map_err(|_| E::Storage)?;
            let earlier = t.get(2).map_err(|_| E::Storage)?.map(|v| v.value());
            assert_eq!(earlier, Some(2), "the deferred write comes first");
            t.insert(3, 3).map_err(|_| E::Storage)?;
            Ok(())
        })
        .unwrap();
        waiting.join().unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(p.stats().batches, 2, "one commit carried both");
        assert_eq!(p.stats().ops, 3);

        // Closing commits what is still deferred.
        let waiting = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                futures_block_on(p.write_deferred(put(4), Duration::from_secs(60)))
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        p.close();
        waiting.join().unwrap().unwrap();
        let read = p.read().unwrap();
        let t = read.open_table(T).unwrap();
        for key in 1..=4 {
            assert_eq!(t.get(key).unwrap().unwrap().value(), key);
        }
    }

    fn put_logged(
        key: u64,
    ) -> impl FnOnce(&WriteTransaction) -> Result<((), Vec<u8>), E> + Send + 'static {
        move |txn| put(key)(txn).map(|()| ((), key.to_le_bytes().to_vec()))
    }

    fn keys_in(p: &Partition) -> Vec<u64> {
        let read = p.read().unwrap();
        match read.open_table(T) {
            Ok(t) => t.iter().unwrap().map(|e| e.unwrap().0.value()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The child of `logged_writes_survive_a_crash`: answered writes, then an abort (no
    /// destructor, no close: as a kill would leave the files).
    fn crash_after_writes(path: &Path, mode: &str) -> ! {
        let replay = |_: &WriteTransaction, _: &[u8]| -> Result<(), StorageError> {
            panic!("nothing to replay in a fresh file")
        };
        let every = match mode {
            "checkpointed" => Duration::from_millis(100),
            _ => Duration::from_secs(3600),
        };
        let p = Partition::open_logged(path, 64, 64, every, &replay).unwrap();
        for key in 1..=50 {
            futures_block_on(p.write_logged(put_logged(key), None)).unwrap();
        }
        if mode == "failed-commit" {
            // Key 51's frame is written, then its commit fails: the caller hears of the
            // failure, and the crash right after must not bring the write back.
            FAIL_AFTER_APPEND.store(true, Ordering::Relaxed);
            assert!(futures_block_on(p.write_logged(put_logged(51), None)).is_err());
            std::process::abort();
        }
        if mode == "checkpointed" {
            // A checkpoint by itself (its fsync in the background), then frames in the
            // other log file.
            std::thread::sleep(Duration::from_millis(400));
            for key in 51..=60 {
                futures_block_on(p.write_logged(put_logged(key), None)).unwrap();
            }
        }
        futures_block_on(p.write_lossy(put(1000), Duration::from_millis(1))).unwrap();
        if mode == "then-durable" {
            p.write_blocking(put(51)).unwrap();
        }
        assert!(p.stats().logged >= 1);
        std::process::abort();
    }

    /// Logged writes answered before a crash are in the log, not the file; reopened with
    /// the log, they are replayed once, in order, and a durable commit after them leaves
    /// nothing to replay.
    #[test]
    fn logged_writes_survive_a_crash() {
        if let Ok(child) = std::env::var("NOVA_WAL_CHILD") {
            let (mode, path) = child.split_once(':').unwrap();
            crash_after_writes(Path::new(path), mode);
        }
        for mode in [
            "logged-only",
            "then-durable",
            "checkpointed",
            "failed-commit",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("s.redb");
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "writer::tests::logged_writes_survive_a_crash"])
                .args(["--nocapture", "--test-threads=1"])
                .env("NOVA_WAL_CHILD", format!("{mode}:{}", path.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(!status.success(), "the child aborts");
            if mode == "failed-commit" {
                // The checkpoint after the failure holds 1..=50 and marks 51's frame done:
                // nothing to replay, and 51 is nowhere.
                let p = Partition::open(&path, 8, 8).unwrap();
                assert_eq!(keys_in(&p), (1..=50).collect::<Vec<u64>>(), "{mode}");
                continue;
            }
            if mode == "then-durable" {
                // The durable commit carried the logged ones: nothing is left to replay.
                let p = Partition::open(&path, 8, 8).unwrap();
                let keys = keys_in(&p);
                assert_eq!(keys[..51], (1..=51).collect::<Vec<u64>>()[..], "{mode}");
                continue;
            }
            // The file alone lacks the answered writes: a plain open refuses it.
            let err = Partition::open(&path, 8, 8).err().unwrap().to_string();
            assert!(
                err.contains("s.wal") && err.contains("write-ahead log"),
                "{err}"
            );
            let last = if mode == "checkpointed" { 60 } else { 50 };
            let replayed = Mutex::new(Vec::new());
            let replay = |txn: &WriteTransaction, record: &[u8]| -> Result<(), StorageError> {
                let key = u64::from_le_bytes(record.try_into().unwrap());
                replayed.lock().unwrap().push(key);
                txn.open_table(T)?.insert(key, key)?;
                Ok(())
            };
            let p = Partition::open_logged(&path, 8, 8, Duration::from_secs(1), &replay).unwrap();
            let got = replayed.lock().unwrap().clone();
            if mode == "checkpointed" {
                // Checkpoints hold 1..=50 at least (and maybe some after: one follows the
                // first write once `every` has passed); the log the rest.
                let first = *got.first().unwrap();
                assert!(first > 50, "{got:?}");
                assert_eq!(got, (first..=60).collect::<Vec<u64>>());
            } else {
                assert_eq!(got, (1..=50).collect::<Vec<u64>>(), "{mode}");
            }
            // The lossy write may or may not have survived; every logged one did.
            let upto = (1..=last).collect::<Vec<u64>>();
            assert_eq!(keys_in(&p)[..upto.len()], upto[..]);
            drop(p);
            // Replayed and committed: a second open replays nothing.
            replayed.lock().unwrap().clear();
            let p = Partition::open_logged(&path, 8, 8, Duration::from_secs(1), &replay).unwrap();
            assert!(replayed.lock().unwrap().is_empty());
            assert_eq!(keys_in(&p)[..upto.len()], upto[..]);
        }
    }

    /// With a log, logged writes commit in memory until a checkpoint, which comes by
    /// itself once `checkpoint_every` has passed, and at close.
    #[test]
    fn logged_commits_reach_the_file_at_the_next_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let replay = |_: &WriteTransaction, _: &[u8]| -> Result<(), StorageError> { Ok(()) };
        let p = Partition::open_logged(&path, 8, 8, Duration::from_millis(200), &replay).unwrap();
        futures_block_on(p.write_logged(put_logged(1), None)).unwrap();
        futures_block_on(p.write_logged(put_logged(2), None)).unwrap();
        assert_eq!(p.stats().logged, 2, "both in memory and in the log");
        assert_eq!(keys_in(&p), vec![1, 2], "and visible at once");
        let before = p.stats().batches;
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(p.stats().batches, before + 1, "one checkpoint, by itself");
        assert_eq!(p.stats().logged, 2);
        // A plain write is durable at once (no new logged commit).
        p.write_blocking(put(3)).unwrap();
        assert_eq!(p.stats().logged, 2);
    }

    #[test]
    fn a_reopened_file_keeps_its_data_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let p = Partition::open(&path, 8, 8).unwrap();
            p.write_blocking(|txn| -> Result<(), E> {
                txn.open_table(T)
                    .map_err(|_| E::Storage)?
                    .insert(7, 70)
                    .map_err(|_| E::Storage)?;
                Ok(())
            })
            .unwrap();
        }
        {
            let p = Partition::open(&path, 8, 8).unwrap();
            let read = p.read().unwrap();
            assert_eq!(
                read.open_table(T).unwrap().get(7).unwrap().unwrap().value(),
                70
            );
        }
        std::fs::write(&path, vec![0xAB; 8192]).unwrap();
        let err = Partition::open(&path, 8, 8).err().unwrap().to_string();
        assert!(err.contains("s.redb"), "{err}");
    }
}
