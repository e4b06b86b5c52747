//! A partition is one shard's redb database plus the thread that commits to it.
//!
//! Group commit: writes queue on a bounded channel; the writer thread takes everything queued
//! (up to `commit_batch_ops_max`), applies it in one write transaction and commits it with one
//! fsync (`Durability::Immediate`). Only then is each caller answered. A caller therefore
//! never sees success for a write that is not on disk.
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

use redb::{Database, ReadTransaction, ReadableDatabase, WriteTransaction};

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
type Job = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

enum Msg {
    Write(Job),
    /// A write nobody waits on at once: it rides along with the next commit that happens
    /// anyway, or commits by itself once this moment comes (`Partition::write_deferred`).
    Deferred(Job, Instant),
    Stop,
}

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
    fsync_ns: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS_S.len()],
}

/// A copy of `CommitStats` at one moment.
#[derive(Debug, Clone, Default)]
pub struct CommitStatsSnapshot {
    pub batches: u64,
    pub ops: u64,
    pub failures: u64,
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
    /// A damaged file is reported, naming the file, and left untouched.
    pub fn open(
        path: &Path,
        commit_batch_ops_max: usize,
        commit_queue_max: usize,
    ) -> Result<Partition, StorageError> {
        assert!(commit_batch_ops_max > 0 && commit_queue_max > 0);
        let damaged = |reason: String| StorageError::Damaged {
            path: path.to_path_buf(),
            reason,
        };
        let exists = path.exists();
        // A redb open of a file altered outside redb may panic rather than fail; the check on
        // open turns that into an error, and catch_unwind covers what it does not.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| StorageError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        let tap = crate::snapshot::Tap::new(file).map_err(|e| damaged(e.to_string()))?;
        let opened = std::panic::catch_unwind(|| {
            let mut builder = Database::builder();
            builder.set_check_integrity_on_open(exists);
            builder.create_with_backend(tap.clone())
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(damaged(e.to_string())),
            Err(_) => return Err(damaged("redb panicked while opening it".to_string())),
        };
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
                .spawn(move || run_writer(&db, &rx, &stats, &linger, commit_batch_ops_max))
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
        self.write_within(op, None).await
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
        self.write_within(op, Some(within)).await
    }

    async fn write_within<R, E, F>(&self, op: F, within: Option<Duration>) -> Result<R, E>
    where
        F: FnOnce(&WriteTransaction) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<StorageError> + WriteFailure + Send + 'static,
    {
        let (reply_tx, reply_rx) = flume::bounded::<Result<R, E>>(1);
        let job: Job = Box::new(move |txn: &WriteTransaction| {
            let outcome = op(txn);
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
            (completion, poisons)
        });
        let msg = match within {
            None => Msg::Write(job),
            Some(within) => Msg::Deferred(job, Instant::now() + within),
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

fn run_writer(
    db: &Database,
    rx: &flume::Receiver<Msg>,
    stats: &CommitStats,
    linger_us: &AtomicU64,
    commit_batch_ops_max: usize,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(commit_batch_ops_max);
    // Deferred writes waiting for a commit, in arrival order, and the moment the first of
    // them must commit by. Writes commit in the order they arrive, deferred or not (a post
    // is applied before its edit): a commit takes every waiting one before anything later.
    let mut waiting: Vec<Job> = Vec::new();
    let mut due: Option<Instant> = None;
    let mut last_end: Option<Instant> = None;
    loop {
        let mut stop = false;
        // Wait for a write, or for the waiting deferred ones to fall due.
        let first = match due {
            None => rx.recv().ok(),
            Some(at) => match rx.recv_deadline(at) {
                Ok(msg) => Some(msg),
                Err(flume::RecvTimeoutError::Timeout) => {
                    take_waiting(db, stats, &mut batch, &mut waiting, commit_batch_ops_max);
                    due = None;
                    commit_batch(db, &mut batch, stats);
                    last_end = Some(Instant::now());
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => None,
            },
        };
        match first {
            Some(Msg::Deferred(job, at)) => {
                waiting.push(job);
                due = Some(due.map_or(at, |d| d.min(at)));
                continue;
            }
            Some(Msg::Write(job)) => {
                // This commit happens anyway: what waits rides along, ahead of this write.
                take_waiting(db, stats, &mut batch, &mut waiting, commit_batch_ops_max);
                due = None;
                batch.push(job);
            }
            Some(Msg::Stop) | None => {
                // Nothing is left behind: what still waits commits before the thread ends.
                take_waiting(db, stats, &mut batch, &mut waiting, commit_batch_ops_max);
                stop = true;
            }
        }
        while !stop && batch.len() < commit_batch_ops_max {
            match rx.try_recv() {
                // Committed now with the rest, in arrival order.
                Ok(Msg::Write(job)) | Ok(Msg::Deferred(job, _)) => batch.push(job),
                Ok(Msg::Stop) => stop = true,
                Err(_) => break,
            }
        }
        // Busy (the previous commit ended moments ago): wait a little for more writes, so one
        // commit carries them all, with one fsync and one write of the pages that every write
        // dirties near the roots of its tables. An idle writer commits at once.
        let linger = Duration::from_micros(linger_us.load(Ordering::Relaxed));
        let busy = last_end.is_some_and(|end| end.elapsed() < BUSY_GAP);
        if !stop && busy && !linger.is_zero() {
            let until = Instant::now() + linger;
            while batch.len() < commit_batch_ops_max {
                match rx.recv_deadline(until) {
                    Ok(Msg::Write(job)) | Ok(Msg::Deferred(job, _)) => batch.push(job),
                    Ok(Msg::Stop) | Err(flume::RecvTimeoutError::Disconnected) => {
                        stop = true;
                        break;
                    }
                    Err(flume::RecvTimeoutError::Timeout) => break,
                }
            }
        }
        if !batch.is_empty() {
            commit_batch(db, &mut batch, stats);
            last_end = Some(Instant::now());
        }
        if stop {
            return;
        }
    }
}

/// Moves every waiting deferred write into `batch`, in order, committing full batches on
/// the way (so that all of them commit before any write that arrived after them).
fn take_waiting(
    db: &Database,
    stats: &CommitStats,
    batch: &mut Vec<Job>,
    waiting: &mut Vec<Job>,
    max: usize,
) {
    for job in waiting.drain(..) {
        if batch.len() >= max {
            commit_batch(db, batch, stats);
        }
        batch.push(job);
    }
}

fn commit_batch(db: &Database, batch: &mut Vec<Job>, stats: &CommitStats) {
    let ops = batch.len();
    let started = Instant::now();
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            // Without a transaction the jobs cannot run. Dropping them closes their reply
            // channels, so each caller gets a storage error and nothing was written.
            tracing::error!(error = %e, ops, "cannot begin a write transaction; batch refused");
            batch.clear();
            stats.record(ops, started.elapsed().as_secs_f64(), false);
            return;
        }
    };
    let mut completions = Vec::with_capacity(ops);
    let mut poisoned = false;
    for job in batch.drain(..) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| job(&txn))) {
            Ok((completion, poisons)) => {
                poisoned |= poisons;
                completions.push(completion);
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
        txn.commit().map_err(StorageError::from)
    };
    let ok = result.is_ok();
    if let Err(e) = &result {
        tracing::error!(error = %e, ops, "group commit failed");
    }
    stats.record(ops, started.elapsed().as_secs_f64(), ok);
    for completion in completions {
        completion(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(StorageError::Redb(e.to_string())),
        });
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
