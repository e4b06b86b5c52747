//! Media work off the executors: two pools of std threads behind bounded queues.
//!
//! - The *intake* thread does the short blocking work of a request: write an upload to a
//!   temporary file and fsync it, hash it, probe it (limits checked before decoding), place
//!   it in the owner shard's blob store; append and fsync tus chunks; delete freed blobs.
//! - The *transcoding* threads (`media_threads`, default 1, at nice `media_nice`) make the
//!   renditions. Each job asks the owning shard to mark the media processing (`MediaStart`,
//!   attempts counted), works, then sends the result to the owning shard
//!   (`MediaFinish`), which commits it with a `MediaReady` or `MediaFailed` event, a logged
//!   write (`Shard::write_recorded`, like every media record's write: replay.rs). A full queue leaves the media pending on disk; `requeue_loop` finds
//!   it again (and everything unfinished at start-up, so a crash leaves nothing stuck).
//!
//! Blobs live in `<data>/media/shard-<k>/`, one store per shard, so that a blob's reference
//! count is in the same database as the records that use it; each shard's blob is a hard link
//! of one file in `<data>/media/blobs/`, so identical content is stored once across shards
//! (`nova_media::SharedBlobs`).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use nova_core::media::{self as records, Outcome};
use nova_core::CoreError;
use nova_media::{BlobStore, Limits, MediaError, Probe, SharedBlobs};
use nova_storage::Partition;

use crate::error::Fail;
use crate::mesh::{Op, ShardMsg};
use crate::replay::Record;
use crate::shard::{now_ms, Shard};

/// Time a transcoding thread waits for its shard to answer.
const SHARD_ANSWER_MS: u64 = 30_000;
/// Intake jobs waiting at most (each is short).
const INTAKE_QUEUE_MAX: usize = 256;
/// Unfinished media re-queued per shard per sweep.
const REQUEUE_BATCH_MAX: usize = 10_000;
/// How often a shard looks for media left pending (a full queue, a lost job).
const REQUEUE_EVERY_S: u64 = 60;
/// A pending media untouched this long is queued again by the sweep.
const STALE_PENDING_MS: u64 = 120_000;

/// What an upload is, once stored.
#[derive(Debug, Clone)]
pub struct Intake {
    pub blob: String,
    pub bytes: u64,
    pub probe: Probe,
}

/// Why an upload was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Media(#[from] MediaError),
    /// The file is larger than its kind allows.
    #[error("a {kind} may have at most {max} bytes")]
    TooLarge { kind: &'static str, max: u64 },
    #[error("the media threads are busy")]
    Busy,
    #[error("the media threads have stopped")]
    Stopped,
}

enum IoJob {
    /// Store an upload held in memory.
    Bytes {
        shard: usize,
        data: Bytes,
        reply: flume::Sender<Result<Intake, IntakeError>>,
    },
    /// Store a finished tus upload (its part file is moved into the store).
    File {
        shard: usize,
        path: PathBuf,
        reply: flume::Sender<Result<Intake, IntakeError>>,
    },
    /// Write `data` at `offset` of `path` (cutting anything past `offset` first: bytes of a
    /// chunk never acknowledged), then fsync when `sync`.
    Append {
        path: PathBuf,
        offset: u64,
        data: Bytes,
        sync: bool,
        reply: flume::Sender<std::io::Result<()>>,
    },
    Remove {
        path: PathBuf,
        done: flume::Sender<()>,
    },
    Unpin {
        shard: usize,
        blob: String,
    },
    Release {
        shard: usize,
        blobs: Vec<String>,
        done: flume::Sender<()>,
    },
    Stop,
}

/// Settings of the media threads.
#[derive(Debug, Clone)]
pub struct MediaSettings {
    pub limits: Limits,
    pub image_bytes_max: u64,
    pub video_bytes_max: u64,
    pub threads: usize,
    pub nice: i32,
    pub sched_idle: bool,
    pub queue_max: usize,
}

/// A handle to the media threads; one per shard.
#[derive(Clone)]
pub struct Media {
    io: flume::Sender<IoJob>,
    work: flume::Sender<(usize, u64)>,
    stores: Arc<Vec<BlobStore>>,
    /// Key of the HMAC-signed URLs of private media.
    pub url_key: Arc<[u8]>,
    root: PathBuf,
    /// tus uploads with a PATCH in progress (any shard may receive one), so that a second
    /// PATCH of the same upload is refused instead of writing over the first.
    patching: Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
}

/// A tus upload claimed by one PATCH until dropped.
pub struct PatchClaim {
    patching: Arc<std::sync::Mutex<std::collections::HashSet<u64>>>,
    id: u64,
}

impl Drop for PatchClaim {
    fn drop(&mut self) {
        let mut set = self.patching.lock().unwrap_or_else(|e| e.into_inner());
        set.remove(&self.id);
    }
}

pub struct MediaThreads {
    io: flume::Sender<IoJob>,
    io_thread: Option<JoinHandle<()>>,
    work: Vec<JoinHandle<()>>,
}

impl MediaThreads {
    /// Stops the intake thread after its queue; transcoding threads are not waited for (a
    /// file being transcoded is re-queued at the next start).
    pub fn join(mut self) {
        let _ = self.io.send(IoJob::Stop);
        if let Some(t) = self.io_thread.take() {
            let _ = t.join();
        }
        drop(self.work);
    }
}

/// Lowers the calling thread's priority so that transcoding yields to the shards: its nice
/// value, then (when `sched_idle`) the SCHED_IDLE class. On Linux both are per thread (the
/// calls name this thread, not the process), and threads it starts later (x264's, when
/// `media_codec_threads` > 1) inherit them. Backups lower their copying threads the same way.
pub(crate) fn lower_priority(nice: i32, sched_idle: bool) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // this thread's (and its future children's) nice value.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice.clamp(0, 19))
    };
    if rc != 0 {
        tracing::warn!(nice, "could not lower the thread's priority");
    }
    if sched_idle {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if rc != 0 {
            tracing::warn!("could not put the thread in SCHED_IDLE");
        }
    }
}

fn referenced(partition: &Partition, blob: &str) -> bool {
    // When in doubt (a read failed), keep the file: a leaked blob is swept at start-up, a
    // deleted one in use is lost.
    partition
        .read()
        .ok()
        .and_then(|r| records::referenced(&r, blob).ok())
        .unwrap_or(true)
}

impl Media {
    /// Opens the blob stores, sweeps what a crash left behind (and shares the bytes of blobs
    /// that have their own copy), and starts the threads.
    pub fn start(
        root: &Path,
        url_key: Arc<[u8]>,
        partitions: &[Arc<Partition>],
        mesh: Vec<flume::Sender<ShardMsg>>,
        settings: MediaSettings,
    ) -> anyhow::Result<(Media, MediaThreads)> {
        let shared = SharedBlobs::open(&root.join("media").join("blobs"))?;
        let mut stores = Vec::with_capacity(partitions.len());
        for (k, partition) in partitions.iter().enumerate() {
            let dir = root.join("media").join(format!("shard-{k}"));
            let store = BlobStore::open(&dir, Arc::clone(&shared))?;
            let swept = store.sweep(|blob| referenced(partition, blob))?;
            if swept.removed > 0 {
                tracing::info!(
                    shard = k,
                    removed = swept.removed,
                    "removed blobs no record references"
                );
            }
            if swept.shared > 0 || swept.unshared > 0 {
                tracing::info!(
                    shard = k,
                    shared = swept.shared,
                    unshared = swept.unshared,
                    "linked blobs into the shared store"
                );
            }
            std::fs::create_dir_all(tus_dir(root, k))?;
            stores.push(store);
        }
        // After every shard's sweep: the shared names no shard links any more.
        let removed = shared.sweep()?;
        if removed > 0 {
            tracing::info!(removed, "removed shared blobs no shard uses");
        }
        let stores = Arc::new(stores);
        let (io_tx, io_rx) = flume::bounded::<IoJob>(INTAKE_QUEUE_MAX);
        let (work_tx, work_rx) = flume::bounded::<(usize, u64)>(settings.queue_max);
        let io_thread = {
            let stores = Arc::clone(&stores);
            let partitions = partitions.to_vec();
            let settings = settings.clone();
            std::thread::Builder::new()
                .name("nova-media-io".into())
                .spawn(move || io_loop(io_rx, &stores, &partitions, &settings))?
        };
        let mut work = Vec::with_capacity(settings.threads);
        for i in 0..settings.threads.max(1) {
            let rx = work_rx.clone();
            let stores = Arc::clone(&stores);
            let partitions = partitions.to_vec();
            let mesh = mesh.clone();
            let settings = settings.clone();
            work.push(
                std::thread::Builder::new()
                    .name(format!("nova-transcode-{i}"))
                    .spawn(move || {
                        lower_priority(settings.nice, settings.sched_idle);
                        for (shard, id) in rx.iter() {
                            transcode(shard, id, &stores, &partitions, &mesh, &settings);
                        }
                    })?,
            );
        }
        Ok((
            Media {
                io: io_tx.clone(),
                work: work_tx,
                stores,
                url_key,
                root: root.to_path_buf(),
                patching: Arc::default(),
            },
            MediaThreads {
                io: io_tx,
                io_thread: Some(io_thread),
                work,
            },
        ))
    }

    /// Where blob `blob` of shard `shard` lives (a pure computation: no I/O).
    pub fn blob_path(&self, shard: usize, blob: &str) -> Option<PathBuf> {
        let store = self.stores.get(shard)?;
        nova_media::valid_id(blob).then(|| store.path_of(blob))
    }

    /// Claims tus upload `id` for one PATCH; `None` while another PATCH of it is running.
    /// The lock is held only to test and insert (never across an await).
    pub fn claim_patch(&self, id: u64) -> Option<PatchClaim> {
        let mut set = self.patching.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(id).then(|| PatchClaim {
            patching: Arc::clone(&self.patching),
            id,
        })
    }

    /// The part file of tus upload `id` (owned by shard `shard`).
    pub fn tus_path(&self, shard: usize, id: u64) -> PathBuf {
        tus_dir(&self.root, shard).join(id.to_string())
    }

    fn submit(&self, job: IoJob) -> Result<(), IntakeError> {
        self.io.try_send(job).map_err(|e| match e {
            flume::TrySendError::Full(_) => IntakeError::Busy,
            flume::TrySendError::Disconnected(_) => IntakeError::Stopped,
        })
    }

    /// Stores an upload in shard `shard`'s blob store after probing it. The blob stays
    /// pinned until the returned guard is dropped (after the record is committed or not).
    pub async fn intake(
        &self,
        shard: usize,
        data: Bytes,
    ) -> Result<(Intake, PinGuard), IntakeError> {
        let (reply, rx) = flume::bounded(1);
        self.submit(IoJob::Bytes { shard, data, reply })?;
        let intake = rx.recv_async().await.map_err(|_| IntakeError::Stopped)??;
        let guard = self.guard(shard, &intake.blob);
        Ok((intake, guard))
    }

    /// Like `intake` for a finished tus upload's part file.
    pub async fn intake_file(
        &self,
        shard: usize,
        path: PathBuf,
    ) -> Result<(Intake, PinGuard), IntakeError> {
        let (reply, rx) = flume::bounded(1);
        self.submit(IoJob::File { shard, path, reply })?;
        let intake = rx.recv_async().await.map_err(|_| IntakeError::Stopped)??;
        let guard = self.guard(shard, &intake.blob);
        Ok((intake, guard))
    }

    fn guard(&self, shard: usize, blob: &str) -> PinGuard {
        PinGuard {
            io: self.io.clone(),
            shard,
            blob: blob.to_string(),
        }
    }

    /// Writes a tus chunk at `offset` of `path`, fsynced when `sync`.
    pub async fn append(
        &self,
        path: PathBuf,
        offset: u64,
        data: Bytes,
        sync: bool,
    ) -> Result<(), IntakeError> {
        let (reply, rx) = flume::bounded(1);
        // Awaited, not tried: a chunk is part of a request already accepted.
        self.io
            .send_async(IoJob::Append {
                path,
                offset,
                data,
                sync,
                reply,
            })
            .await
            .map_err(|_| IntakeError::Stopped)?;
        rx.recv_async()
            .await
            .map_err(|_| IntakeError::Stopped)?
            .map_err(|e| IntakeError::Media(MediaError::Io(e)))
    }

    /// Deletes a file (a resumable upload's part) on the I/O thread, and waits until that is
    /// done: a terminated upload's 204 means its part file is gone.
    pub async fn remove(&self, path: PathBuf) {
        let (done, rx) = flume::bounded(1);
        if self
            .io
            .send_async(IoJob::Remove { path, done })
            .await
            .is_ok()
        {
            let _ = rx.recv_async().await;
        }
    }

    /// Deletes these blobs of shard `shard` unless something references them again, and
    /// waits until that is done.
    pub async fn release(&self, shard: usize, blobs: Vec<String>) {
        if blobs.is_empty() {
            return;
        }
        let (done, rx) = flume::bounded(1);
        let job = IoJob::Release { shard, blobs, done };
        if self.io.send_async(job).await.is_ok() {
            let _ = rx.recv_async().await;
        }
    }

    /// Files waiting for a transcoding thread.
    pub fn queue_len(&self) -> usize {
        self.work.len()
    }

    /// Queues media `id` of shard `shard` for processing; false when the queue is full (it
    /// stays pending on disk and the sweep queues it later).
    pub fn enqueue(&self, shard: usize, id: u64) -> bool {
        self.work.try_send((shard, id)).is_ok()
    }
}

fn tus_dir(root: &Path, shard: usize) -> PathBuf {
    root.join("media")
        .join(format!("shard-{shard}"))
        .join("uploads")
}

/// Unpins a blob when dropped: after the request's commit, whether it succeeded or not
/// (also when the request is dropped at its deadline). A full queue leaks the pin, and the
/// blob, until the next start-up sweep.
pub struct PinGuard {
    io: flume::Sender<IoJob>,
    shard: usize,
    blob: String,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = self.io.try_send(IoJob::Unpin {
            shard: self.shard,
            blob: std::mem::take(&mut self.blob),
        });
    }
}

fn io_loop(
    rx: flume::Receiver<IoJob>,
    stores: &[BlobStore],
    partitions: &[Arc<Partition>],
    settings: &MediaSettings,
) {
    for job in rx.iter() {
        match job {
            IoJob::Bytes { shard, data, reply } => {
                let _ = reply.send(store_bytes(stores, shard, &data, settings));
            }
            IoJob::File { shard, path, reply } => {
                let _ = reply.send(store_file(stores, shard, &path, settings));
            }
            IoJob::Append {
                path,
                offset,
                data,
                sync,
                reply,
            } => {
                let _ = reply.send(append(&path, offset, &data, sync));
            }
            IoJob::Remove { path, done } => {
                let _ = std::fs::remove_file(path);
                let _ = done.send(());
            }
            IoJob::Unpin { shard, blob } => {
                if let (Some(store), Some(p)) = (stores.get(shard), partitions.get(shard)) {
                    if let Err(e) = store.unpin(&blob, |b| referenced(p, b)) {
                        tracing::warn!(error = %e, "could not delete an unused blob");
                    }
                }
            }
            IoJob::Release { shard, blobs, done } => {
                if let (Some(store), Some(p)) = (stores.get(shard), partitions.get(shard)) {
                    for blob in blobs {
                        if let Err(e) = store.release(&blob, |b| referenced(p, b)) {
                            tracing::warn!(error = %e, "could not delete an unused blob");
                        }
                    }
                }
                let _ = done.send(());
            }
            IoJob::Stop => return,
        }
    }
}

fn append(path: &Path, offset: u64, data: &[u8], sync: bool) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    if file.metadata()?.len() != offset {
        // Bytes past the acknowledged offset were never acknowledged: drop them.
        file.set_len(offset)?;
    }
    file.write_all_at(data, offset)?;
    if sync {
        file.sync_all()?;
        if offset == 0 {
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
        }
    }
    Ok(())
}

/// Checks the per-kind byte limit; probes; places the file (pinned). Removes it on refusal.
fn admit(
    store: &BlobStore,
    temp: &Path,
    blob: String,
    bytes: u64,
    settings: &MediaSettings,
) -> Result<Intake, IntakeError> {
    let checked = nova_media::inspect(temp, &settings.limits)
        .map_err(IntakeError::from)
        .and_then(|probe| {
            let (kind, max) = match probe.kind {
                nova_media::Kind::Image => ("image", settings.image_bytes_max),
                nova_media::Kind::Video => ("video", settings.video_bytes_max),
            };
            if bytes > max {
                return Err(IntakeError::TooLarge { kind, max });
            }
            Ok(probe)
        });
    let probe = match checked {
        Ok(p) => p,
        Err(e) => {
            let _ = std::fs::remove_file(temp);
            return Err(e);
        }
    };
    store
        .put(temp, &blob)
        .map_err(|e| IntakeError::Media(MediaError::Io(e)))?;
    Ok(Intake { blob, bytes, probe })
}

fn store_bytes(
    stores: &[BlobStore],
    shard: usize,
    data: &[u8],
    settings: &MediaSettings,
) -> Result<Intake, IntakeError> {
    let store = stores.get(shard).ok_or(IntakeError::Stopped)?;
    let (temp, blob) = store
        .write_temp(data)
        .map_err(|e| IntakeError::Media(MediaError::Io(e)))?;
    admit(store, &temp, blob, data.len() as u64, settings)
}

fn store_file(
    stores: &[BlobStore],
    shard: usize,
    path: &Path,
    settings: &MediaSettings,
) -> Result<Intake, IntakeError> {
    let store = stores.get(shard).ok_or(IntakeError::Stopped)?;
    let (blob, bytes) =
        BlobStore::hash_file(path).map_err(|e| IntakeError::Media(MediaError::Io(e)))?;
    // Moved out of the uploads directory first, so the store's rename stays within it.
    let temp = store.temp_path("tus");
    std::fs::rename(path, &temp).map_err(|e| IntakeError::Media(MediaError::Io(e)))?;
    admit(store, &temp, blob, bytes, settings)
}

/// Runs `op` on shard `shard` from a std thread and waits for the answer.
fn call<T>(
    mesh: &[flume::Sender<ShardMsg>],
    shard: usize,
    make: impl FnOnce(crate::mesh::Reply<T>) -> Op,
) -> Result<T, Fail> {
    let (tx, rx) = flume::bounded(1);
    let deadline = Instant::now() + Duration::from_millis(SHARD_ANSWER_MS);
    let sender = mesh.get(shard).ok_or(Fail::Unavailable)?;
    sender
        .send_timeout(
            ShardMsg::Call {
                op: make(tx),
                deadline,
            },
            Duration::from_millis(SHARD_ANSWER_MS),
        )
        .map_err(|_| Fail::Unavailable)?;
    match rx.recv_deadline(deadline) {
        Ok(r) => r,
        Err(_) => Err(Fail::Timeout),
    }
}

/// What the uploader is told when processing fails (no internal detail beyond ffmpeg's).
fn reason(e: &MediaError) -> String {
    match e {
        MediaError::Io(_) => "the file could not be read back from storage".to_string(),
        other => other.to_string(),
    }
}

fn transcode(
    shard: usize,
    id: u64,
    stores: &[BlobStore],
    partitions: &[Arc<Partition>],
    mesh: &[flume::Sender<ShardMsg>],
    settings: &MediaSettings,
) {
    let media = match call(mesh, shard, |reply| Op::MediaStart { id, reply }) {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            // Left pending or processing on disk; the sweep or the next start retries.
            tracing::warn!(media = id, error = %e, "could not start processing");
            return;
        }
    };
    let (Some(store), Some(partition)) = (stores.get(shard), partitions.get(shard)) else {
        return;
    };
    let started = Instant::now();
    let src = store.path_of(&media.original.id);
    let work = store.temp_path("work");
    let mut pinned = Vec::new();
    let outcome = match make_renditions(store, &src, &work, settings, &mut pinned) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::Failed(reason(&e)),
    };
    let _ = std::fs::remove_dir_all(&work);
    tracing::info!(
        media = id,
        elapsed_ms = started.elapsed().as_millis() as u64,
        ready = matches!(outcome, Outcome::Ready { .. }),
        "processed"
    );
    if let Err(e) = call(mesh, shard, |reply| Op::MediaFinish { id, outcome, reply }) {
        // Left processing on disk: retried at the next start (the attempt is counted).
        tracing::warn!(media = id, error = %e, "could not record the processing result");
    }
    // Renditions the commit did not keep (deleted meanwhile, over quota) go with the pins.
    for blob in &pinned {
        let _ = store.unpin(blob, |b| referenced(partition, b));
    }
}

fn make_renditions(
    store: &BlobStore,
    src: &Path,
    work: &Path,
    settings: &MediaSettings,
    pinned: &mut Vec<String>,
) -> Result<Outcome, MediaError> {
    std::fs::create_dir_all(work)?;
    let probe = nova_media::inspect(src, &settings.limits)?;
    let done = nova_media::process(src, &probe, work, &settings.limits)?;
    let mut renditions = Vec::with_capacity(done.renditions.len());
    for r in done.renditions {
        let (blob, bytes) = BlobStore::hash_file(&r.path)?;
        store.put(&r.path, &blob)?;
        pinned.push(blob.clone());
        renditions.push(records::Rendition {
            name: r.name,
            blob,
            mime: r.mime.to_string(),
            width: r.width,
            height: r.height,
            bytes,
        });
    }
    Ok(Outcome::Ready {
        renditions,
        blurhash: done.blurhash,
    })
}

impl Op {
    /// Operations served by `serve` below.
    pub fn is_media(&self) -> bool {
        matches!(
            self,
            Op::MediaCreate { .. }
                | Op::MediaGet { .. }
                | Op::MediaDelete { .. }
                | Op::MediaRendition { .. }
                | Op::MediaStart { .. }
                | Op::MediaFinish { .. }
                | Op::MediaUsage { .. }
                | Op::MediaViews { .. }
                | Op::MediaMakePrivate { .. }
                | Op::TusCreate { .. }
                | Op::TusGet { .. }
                | Op::TusAdvance { .. }
                | Op::TusRemove { .. }
        )
    }
}

/// Media of `owner` (on this, their shard) still public, per write.
const MAKE_PRIVATE_BATCH: usize = 256;

/// Makes every medium of `owner` private, durably, a batch per write (an account made
/// private: what its posts showed is for its followers now). Answers the ids made private
/// (the caller tells every shard's cache, `media_views::forget_everywhere`). Runs on
/// `owner`'s shard, where their media are.
pub(crate) async fn make_all_private(shard: &Rc<Shard>, owner: u64) -> Result<Vec<u64>, Fail> {
    let mut made = Vec::new();
    let mut after = None;
    loop {
        let page = shard.read(|r| records::of_owner(r, owner, after, MAKE_PRIVATE_BATCH))?;
        after = page.last().map(|v| v.media.id);
        let ids: Vec<u64> = page
            .iter()
            .filter(|v| !v.media.private)
            .map(|v| v.media.id)
            .collect();
        if !ids.is_empty() {
            made.extend(write_private(shard, ids, owner).await?);
        }
        if page.len() < MAKE_PRIVATE_BATCH {
            return Ok(made);
        }
    }
}

/// `owner`'s media `ids` made private, a logged write: those it changed.
async fn write_private(
    shard: &Rc<Shard>,
    ids: Vec<u64>,
    owner: u64,
) -> Result<Vec<u64>, CoreError> {
    let now = now_ms();
    let record = Record::MediaPrivate {
        ids: &ids,
        owner,
        now,
    }
    .encode();
    shard
        .write_recorded(record, move |t| records::make_private(t, &ids, owner, now))
        .await
}

/// The media operations a shard runs on its own data.
pub async fn serve(shard: &Rc<Shard>, op: Op, deadline: Instant) {
    let quota = shard.cfg.media_quota_bytes;
    match op {
        Op::MediaCreate { mut new, reply } => {
            new.id = shard.next_id();
            let now = now_ms();
            let record = Record::MediaCreate {
                new: &new,
                now,
                quota,
            }
            .encode();
            let result = shard
                .write_recorded(record, move |t| records::create(t, new, now, quota))
                .await
                .map_err(Fail::from);
            if let Ok(media) = &result {
                shard.media.enqueue(shard.id, media.id);
            }
            let _ = reply.send(result);
        }
        Op::MediaGet { id, reply } => {
            let _ = reply.send(shard.read(|r| records::get(r, id)));
        }
        Op::MediaDelete { id, owner, reply } => {
            let result = shard
                .write_recorded(Record::MediaDelete { id, owner }.encode(), move |t| {
                    records::delete(t, id, owner)
                })
                .await;
            match result {
                Ok(unreferenced) => {
                    // Freed before the answer: a 204 means the files are gone.
                    shard.media.release(shard.id, unreferenced).await;
                    // It may have been the owner's avatar, and other shards may have its view.
                    crate::briefs::forget_everywhere(shard, owner, deadline).await;
                    crate::media_views::forget_everywhere(shard, vec![id], deadline).await;
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            }
        }
        Op::MediaRendition { id, name, reply } => {
            let _ = reply.send(shard.read(|r| records::rendition(r, id, &name)));
        }
        Op::MediaStart { id, reply } => {
            let now = now_ms();
            let result = shard
                .write_recorded(Record::MediaStart { id, now }.encode(), move |t| {
                    records::start(t, id, now)
                })
                .await;
            let _ = reply.send(result.map_err(Fail::from));
        }
        Op::MediaFinish { id, outcome, reply } => {
            let now = now_ms();
            let event_id = shard.next_id();
            let record = Record::MediaFinish {
                id,
                outcome: &outcome,
                now,
                quota,
                event_id,
            }
            .encode();
            let result = shard
                .write_recorded(record, move |t| {
                    records::finish(t, id, outcome, now, quota, event_id)
                })
                .await;
            let _ = reply.send(result.map_err(Fail::from));
        }
        Op::MediaUsage { user_id, reply } => {
            let _ = reply.send(shard.read(|r| records::usage(r, user_id)));
        }
        Op::MediaViews { ids, reply } => {
            let _ = reply.send(shard.read(|r| records::get_many(r, &ids)));
        }
        Op::MediaMakePrivate { ids, owner, reply } => {
            // Media already private (every later message that sends them again) need no write.
            let public = shard.read(|r| {
                let mut public = Vec::new();
                for &id in &ids {
                    if records::get(r, id)?
                        .is_some_and(|v| v.media.owner == owner && !v.media.private)
                    {
                        public.push(id);
                    }
                }
                Ok(public)
            });
            let ids = match public {
                Ok(public) if public.is_empty() => {
                    let _ = reply.send(Ok(Vec::new()));
                    return;
                }
                Ok(public) => public,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let result = write_private(shard, ids, owner).await;
            let _ = reply.send(result.map_err(Fail::from));
        }
        Op::TusCreate { mut upload, reply } => {
            upload.id = shard.next_id();
            let record = Record::TusCreate { upload: &upload }.encode();
            let result = shard
                .write_recorded(record, move |t| {
                    records::tus_create(t, &upload).map(|()| upload)
                })
                .await;
            let _ = reply.send(result.map_err(Fail::from));
        }
        Op::TusGet { id, reply } => {
            let _ = reply.send(shard.read(|r| records::tus_get(r, id)));
        }
        Op::TusAdvance {
            id,
            owner,
            from,
            to,
            reply,
        } => {
            let record = Record::TusAdvance {
                id,
                owner,
                from,
                to,
            }
            .encode();
            let result = shard
                .write_recorded(record, move |t| {
                    records::tus_advance(t, id, owner, from, to)
                })
                .await;
            let _ = reply.send(result.map_err(Fail::from));
        }
        Op::TusRemove { id, owner, reply } => {
            let result = shard
                .write_recorded(Record::TusRemove { id, owner }.encode(), move |t| {
                    records::tus_remove(t, id, owner)
                })
                .await;
            let _ = reply.send(result.map_err(Fail::from));
        }
        _ => {}
    }
}

/// At start-up, then every `REQUEUE_EVERY_S`: queue this shard's unfinished media (at
/// start-up all of it, later only pending media untouched for `STALE_PENDING_MS`), and drop
/// expired tus uploads. Awaiting queue space is back-pressure, never unbounded memory.
pub async fn requeue_loop(shard: Rc<Shard>) {
    let mut first = true;
    loop {
        let now = now_ms();
        let ids = shard
            .read(|r| records::unfinished(r, REQUEUE_BATCH_MAX))
            .unwrap_or_default();
        for id in ids {
            let stale = first
                || shard
                    .read(|r| records::get(r, id))
                    .ok()
                    .flatten()
                    .is_some_and(|v| {
                        v.media.state == records::MediaState::Pending
                            && now.saturating_sub(v.media.updated_ms) > STALE_PENDING_MS
                    });
            if stale && shard.media.work.send_async((shard.id, id)).await.is_err() {
                return;
            }
        }
        first = false;
        let expired = shard
            .read(|r| records::tus_expired(r, now, REQUEUE_BATCH_MAX))
            .unwrap_or_default();
        for up in expired {
            let (id, owner) = (up.id, up.owner);
            let removed = shard
                .write_recorded(Record::TusRemove { id, owner }.encode(), move |t| {
                    records::tus_remove(t, id, owner)
                })
                .await;
            if removed.is_ok() {
                shard.media.remove(shard.media.tus_path(shard.id, id)).await;
            }
        }
        glommio::timer::sleep(Duration::from_secs(REQUEUE_EVERY_S)).await;
        if shard.draining.fired() {
            return;
        }
    }
}

impl From<IntakeError> for crate::error::ApiError {
    fn from(e: IntakeError) -> Self {
        use crate::error::ApiError;
        use http::StatusCode as S;
        match e {
            IntakeError::TooLarge { .. } => {
                ApiError::new(S::PAYLOAD_TOO_LARGE, "media_too_large", e.to_string())
            }
            IntakeError::Media(MediaError::Unsupported(m)) => ApiError::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media",
                format!("not a supported image or video ({m})"),
            ),
            IntakeError::Media(MediaError::Unreadable(m)) => ApiError::new(
                S::UNPROCESSABLE_ENTITY,
                "unreadable_media",
                format!("the file is damaged or truncated ({m})"),
            ),
            IntakeError::Media(MediaError::Limit { code, message }) => {
                ApiError::new(S::UNPROCESSABLE_ENTITY, code, message)
            }
            IntakeError::Busy => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server is busy; retry shortly",
                )
            },
            IntakeError::Stopped => Fail::Unavailable.into(),
            IntakeError::Media(other) => {
                tracing::error!(error = %other, "storing an upload failed");
                Fail::Core(CoreError::Corrupt(other.to_string())).into()
            }
        }
    }
}
