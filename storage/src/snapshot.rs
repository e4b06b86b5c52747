//! Images of a partition's file at one moment, taken while the server writes (online backups).
//!
//! Every partition's database reads and writes its file through a `Tap`, a redb
//! `StorageBackend` that passes each call on to redb's own `FileBackend`. While no image is
//! being taken that is all it does (one atomic load per write). `Partition::consistent_images`
//! parks every partition's writer between two group commits, starts an image of each file at
//! that moment, takes a read transaction on each (showing the same commit), and lets the
//! writers go on. From then until the image is finished, the first write (or truncation) that
//! touches a chunk of the file the image has not copied yet first copies the chunk's old bytes
//! into the image file: copy-on-write at the level of file chunks, done by the writer thread
//! (never by an executor). The backup copies the other chunks in file order (`Image::next`).
//!
//! The result is byte for byte the file as it stood between two commits: a redb file whose
//! last commit is the snapshot. It still carries the "a writer is live" flag of the running
//! server, so redb treats it like a file after a kill -9 when it is opened: it checks the
//! primary commit's checksums and rebuilds its allocator state. Nothing new is trusted:
//! that is the same path every restart after a crash takes.
//!
//! Compared with copying the snapshot table by table into a new database, an image costs no
//! B-tree work at all (it is a sequential read and write of the file), so it runs at disk
//! speed; it also copies the file's free pages, so it is as large as the live file.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use redb::backends::FileBackend;
use redb::{BackendError, ReadTransaction, StorageBackend};

use crate::gather::{Gathered, Sorted};
use crate::{Partition, StorageError};

/// The unit of copy-on-write: a write touching a chunk not yet in the image copies the whole
/// chunk first. Small enough that the writer's extra copy stays well under a millisecond,
/// large enough that the bitmap of a 100 GB file is 50 KB.
pub const IMAGE_CHUNK_BYTES: u64 = 256 * 1024;

/// How long a writer may stay parked waiting for the others while images start.
const PARK_WAIT: Duration = Duration::from_secs(10);

/// The backend every partition's database goes through (see the module comment).
#[derive(Clone, Debug)]
pub struct Tap(Arc<TapInner>);

#[derive(Debug)]
struct TapInner {
    file: FileBackend,
    /// The same file, for the paced writeback of deferred fsyncs.
    raw: File,
    /// An image is being taken: writes look at `capture` first.
    active: AtomicBool,
    capture: Mutex<Option<Capture>>,
    /// Chunks copied by writes (not by the backup) over this tap's life; for tests and logs.
    preserved: AtomicU64,
    /// Some writes are not in the file yet (`Deferred::gathered`, `Deferred::writing`):
    /// reads look there too.
    pending: AtomicBool,
    /// A checkpoint's fsync running on its own thread (`Tap::defer_next_sync`).
    sync: Mutex<Deferred>,
    synced: Condvar,
}

/// The state of a deferred fsync.
#[derive(Debug, Default)]
struct Deferred {
    /// The next `sync_data` is to run on its own thread.
    next: bool,
    /// The checkpoint's page writes while its commit runs (gather.rs).
    gathered: Gathered,
    /// A checkpoint's page writes, in file order, that its thread writes before its fsync.
    /// Kept after a failed write, so that reads still find them.
    writing: Option<Arc<Sorted>>,
    /// One is running: nothing may write the file until it is done.
    running: bool,
    /// One failed: the commit it stood for is not durable, and nothing more is written.
    failed: Option<String>,
}

#[derive(Debug)]
struct Capture {
    dest: Arc<File>,
    /// The file's length at the moment of the image.
    len: u64,
    /// One bit per chunk: already in the image file.
    done: Vec<u64>,
    /// Set when a write could not preserve a chunk (the image file's disk is full, say): the
    /// image is then incomplete and the backup fails; the live write goes on regardless.
    failed: Option<String>,
}

impl Capture {
    fn is_done(&self, chunk: u64) -> bool {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        self.done.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn mark_done(&mut self, chunk: u64) {
        let (word, bit) = ((chunk / 64) as usize, chunk % 64);
        if let Some(w) = self.done.get_mut(word) {
            *w |= 1 << bit;
        }
    }

    fn chunks(&self) -> u64 {
        self.len.div_ceil(IMAGE_CHUNK_BYTES)
    }

    /// Bytes of chunk `chunk` that belong to the image (the last one may be short).
    fn chunk_range(&self, chunk: u64) -> (u64, usize) {
        let start = chunk * IMAGE_CHUNK_BYTES;
        let end = (start + IMAGE_CHUNK_BYTES).min(self.len);
        (start, end.saturating_sub(start) as usize)
    }
}

impl Tap {
    pub fn new(file: File) -> Result<Tap, redb::DatabaseError> {
        let raw = file.try_clone()?;
        Ok(Tap(Arc::new(TapInner {
            file: FileBackend::new(file)?,
            raw,
            active: AtomicBool::new(false),
            capture: Mutex::new(None),
            pending: AtomicBool::new(false),
            preserved: AtomicU64::new(0),
            sync: Mutex::new(Deferred::default()),
            synced: Condvar::new(),
        })))
    }

    fn deferred(&self) -> MutexGuard<'_, Deferred> {
        self.0.sync.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the next `sync_data` (a checkpoint's, the last call of its durable commit)
    /// return at once and run on its own thread, so the writer goes on while the disk
    /// catches up. Until it is done, every write to the file waits for it: no page the
    /// commit freed can be overwritten before the commit is durable, so a crash meanwhile
    /// finds the commit before it intact. Calls on the writer thread only.
    ///
    /// The commit's page writes go to that thread too: gathered until that `sync_data`, then
    /// written there in file order before the fsync (gather.rs). Reads find them meanwhile.
    /// The writer then only copies them: writing them took it 6-11 ms per checkpoint.
    ///
    /// A process killed before they are all written leaves a commit whose header is in the
    /// file without all its pages, as redb's own order of writes (the header first) can:
    /// redb's checksums find it on open and go back to the commit before it, which is
    /// durable; the log (not started again until this commit is durable) replays the rest.
    pub(crate) fn defer_next_sync(&self) {
        let mut d = self.deferred();
        d.next = true;
        self.0.pending.store(true, Ordering::Release);
    }

    /// A deferred fsync is still running.
    pub(crate) fn syncing(&self) -> bool {
        self.deferred().running
    }

    /// Undoes `defer_next_sync` if no `sync_data` took it (a commit that failed before):
    /// what it gathered is written now, as it would have been without the gathering.
    pub(crate) fn disarm(&self) {
        self.deferred().next = false;
        if let Err(e) = self.write_gathered() {
            tracing::error!(error = %e, "writing a failed checkpoint's pages");
        }
    }

    /// Writes what is gathered here and now (after the previous checkpoint's fsync, like any
    /// write). The lock is held throughout: a read finds each write in the buffer or in the
    /// file, never in neither.
    fn write_gathered(&self) -> io::Result<()> {
        // (Nothing gathered: nothing to wait for, even while a checkpoint's thread runs.)
        if !self.0.pending.load(Ordering::Acquire) || self.deferred().gathered.is_empty() {
            return Ok(());
        }
        self.wait_synced()?;
        let mut d = self.deferred();
        let written = match d.gathered.sorted() {
            Some(sorted) => sorted.write_to(&self.0.raw, |from, to| self.preserve(from, to)),
            None => d
                .gathered
                .write_in_order(&self.0.raw, |from, to| self.preserve(from, to)),
        };
        if written.is_ok() && !d.next && d.writing.is_none() {
            self.0.pending.store(false, Ordering::Release);
        }
        written
    }

    /// Waits for a deferred fsync, if one runs; its error if it failed (then, and from then
    /// on, nothing more is written).
    pub(crate) fn wait_synced(&self) -> io::Result<()> {
        let mut d = self.deferred();
        while d.running {
            d = self.0.synced.wait(d).unwrap_or_else(|p| p.into_inner());
        }
        match &d.failed {
            Some(e) => Err(io::Error::other(format!(
                "a checkpoint's fsync failed: {e}"
            ))),
            None => Ok(()),
        }
    }

    /// Hands what is gathered, in file order, to a thread that writes it and then fsyncs.
    fn sync_in_background(&self) -> io::Result<()> {
        self.wait_synced()?;
        {
            let mut d = self.deferred();
            if let Some(sorted) = d.gathered.sorted() {
                d.writing = Some(Arc::new(sorted));
            }
        }
        // Writes that overlap stay gathered: written here, in order, before the thread starts.
        self.write_gathered()?;
        let writes = {
            let mut d = self.deferred();
            d.running = true;
            d.writing.clone()
        };
        let tap = self.clone();
        let spawned = std::thread::Builder::new()
            .name("nova-checkpoint-sync".to_string())
            .spawn(move || {
                // Nobody waits for this thread but the next checkpoint: the shards' threads
                // and the commit threads go first.
                // SAFETY: a plain syscall on the calling thread (Linux: `who` 0 is this thread).
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, 0, CHECKPOINT_NICE);
                }
                let written = match &writes {
                    Some(w) => w.write_to(&tap.0.raw, |from, to| tap.preserve(from, to)),
                    None => Ok(()),
                };
                let result = written.and_then(|()| paced_sync(&tap.0.raw));
                let mut d = tap.deferred();
                d.running = false;
                match result {
                    Ok(()) => {
                        drop(writes);
                        // The buffer's memory, for the next checkpoint (nothing else holds it).
                        if let Some(Ok(done)) = d.writing.take().map(Arc::try_unwrap) {
                            if d.gathered.is_empty() {
                                d.gathered = done.into_empty();
                            }
                        }
                        if d.gathered.is_empty() && !d.next {
                            tap.0.pending.store(false, Ordering::Release);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a checkpoint's writes or fsync failed");
                        d.failed = Some(e.to_string());
                    }
                }
                tap.0.synced.notify_all();
            });
        if spawned.is_err() {
            // No thread: write and sync here instead.
            let writes = {
                let mut d = self.deferred();
                d.running = false;
                d.writing.take()
            };
            if let Some(w) = writes {
                w.write_to(&self.0.raw, |from, to| self.preserve(from, to))?;
            }
            return self.0.file.sync_data();
        }
        Ok(())
    }

    /// Chunks that writes had to copy into an image before changing them (all images so far).
    pub fn preserved_chunks(&self) -> u64 {
        self.0.preserved.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Option<Capture>> {
        // A panic while holding the lock leaves plain data behind (a bitmap): go on with it.
        self.0.capture.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an image of the file as it is now, into `dest` (opened for reading and
    /// writing: chunks preserved by writes are read back from it). Only while the writer is parked
    /// (nothing writes the file meanwhile), or on a file nothing writes.
    fn start(&self, dest: File) -> io::Result<Image> {
        // A checkpoint's writes still on their way belong to the file before the image.
        self.wait_synced()?;
        let len = self.0.file.len()?;
        dest.set_len(len)?;
        let chunks = len.div_ceil(IMAGE_CHUNK_BYTES);
        let mut capture = self.lock();
        if capture.is_some() {
            return Err(io::Error::other(
                "an image of this file is already being taken",
            ));
        }
        let dest = Arc::new(dest);
        *capture = Some(Capture {
            dest: Arc::clone(&dest),
            len,
            done: vec![0; chunks.div_ceil(64) as usize],
            failed: None,
        });
        self.0.active.store(true, Ordering::Release);
        Ok(Image {
            tap: self.clone(),
            dest,
            len,
            pos: 0,
        })
    }

    fn stop(&self) {
        let mut capture = self.lock();
        self.0.active.store(false, Ordering::Release);
        *capture = None;
    }

    /// Before bytes `[from, to)` of the file change: copies the chunks among them that the
    /// image has not copied yet.
    fn preserve(&self, from: u64, to: u64) {
        if !self.0.active.load(Ordering::Acquire) {
            return;
        }
        let mut guard = self.lock();
        let Some(capture) = guard.as_mut() else {
            return;
        };
        if capture.failed.is_some() || from >= capture.len {
            return;
        }
        let first = from / IMAGE_CHUNK_BYTES;
        let last = to.min(capture.len).div_ceil(IMAGE_CHUNK_BYTES);
        let mut buf = Vec::new();
        for chunk in first..last {
            if capture.is_done(chunk) {
                continue;
            }
            let (start, n) = capture.chunk_range(chunk);
            buf.resize(n, 0);
            let copied = self
                .0
                .file
                .read(start, &mut buf)
                .and_then(|()| capture.dest.write_all_at(&buf, start));
            if let Err(e) = copied {
                capture.failed = Some(format!("preserving a chunk at {start}: {e}"));
                self.0.active.store(false, Ordering::Release);
                return;
            }
            capture.mark_done(chunk);
            self.0.preserved.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The nice value of a checkpoint's thread (higher is lower priority).
const CHECKPOINT_NICE: libc::c_int = 10;

/// Writeback of a deferred fsync goes this many bytes of the file at a time.
const PACED_SYNC_BYTES: u64 = 1 << 20;

/// An fsync of `file` that writes its dirty pages back a range at a time, waiting for each:
/// the disk's queue then never holds more than one range's writes, so the log's own small
/// fsyncs, meanwhile, wait behind little. There is no pause between ranges: a pause of
/// 1 ms after each busy range (sessions 11-18) stretched a checkpoint's writeback, and with
/// it every wait for it (a durable commit, the next checkpoint), and lost to no pause in
/// 30-second runs (docs/benchmarks.md, "Session 19").
fn paced_sync(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let mut at = 0;
    while at < len {
        let n = PACED_SYNC_BYTES.min(len - at);
        // SAFETY: a plain syscall on a descriptor this tap owns, with in-range offsets. Its
        // failure only loses the pacing: the fsync below still makes the file durable.
        unsafe {
            libc::sync_file_range(
                fd,
                at as libc::off64_t,
                n as libc::off64_t,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
        }
        at += n;
    }
    file.sync_data()
}

impl StorageBackend for Tap {
    fn len(&self) -> Result<u64, io::Error> {
        if !self.0.pending.load(Ordering::Acquire) {
            return self.0.file.len();
        }
        let d = self.deferred();
        let writing = d.writing.as_ref().map_or(0, |w| w.end());
        Ok(self.0.file.len()?.max(d.gathered.end()).max(writing))
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        if !self.0.pending.load(Ordering::Acquire) {
            return self.0.file.read(offset, out);
        }
        // Under the lock, so that what is gathered is not written meanwhile. (The checkpoint's
        // thread may write what it holds meanwhile: it stays held, and laid over, until the
        // thread is done.) A read past the file's end is only short of what a write supplies.
        let d = self.deferred();
        let len = self.0.file.len()?;
        let have = len.saturating_sub(offset).min(out.len() as u64) as usize;
        if have > 0 {
            self.0.file.read(offset, &mut out[..have])?;
        }
        // Past the file's end: zeros, as the file will read there once the writes are in it.
        out[have..].fill(0);
        let writing = d.writing.as_ref().map_or(0, |w| w.end());
        if have < out.len() && d.gathered.end().max(writing) < offset + out.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a read past the end of the file",
            ));
        }
        if let Some(w) = &d.writing {
            w.overlay(offset, out);
        }
        d.gathered.overlay(offset, out);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        // A change of length orders after the writes before it.
        self.write_gathered()?;
        self.wait_synced()?;
        // A shrink loses the bytes past `len`: the image takes them first.
        self.preserve(len, u64::MAX);
        self.0.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        if std::mem::take(&mut self.deferred().next) {
            return self.sync_in_background();
        }
        self.write_gathered()?;
        self.wait_synced()?;
        self.0.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        {
            let mut d = self.deferred();
            if d.next {
                d.gathered.push(offset, data);
                return Ok(());
            }
        }
        self.wait_synced()?;
        self.preserve(offset, offset.saturating_add(data.len() as u64));
        self.0.file.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.write_gathered()?;
        self.wait_synced()?;
        self.0.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.file.query_lock_range(start, end)
    }
}

/// An image being taken: the backup calls `next` until it returns `None`. Dropping it (done
/// or not) ends the copy-on-write.
pub struct Image {
    tap: Tap,
    dest: Arc<File>,
    len: u64,
    pos: u64,
}

impl Image {
    /// The image's length in bytes (the file's length at the moment).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The image file (to sync it while copying).
    pub fn dest(&self) -> &File {
        &self.dest
    }

    /// Puts the next bytes of the image into the image file and into `buf` (for the
    /// checksum): up to `buf.len()` bytes, a whole number of chunks but at the end. `None`
    /// once the image is complete. `buf` must hold at least one chunk.
    pub fn next<'b>(&mut self, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        assert!(buf.len() as u64 >= IMAGE_CHUNK_BYTES);
        if self.pos >= self.len {
            return self.finished().map(|()| None);
        }
        let first = self.pos / IMAGE_CHUNK_BYTES;
        let room = buf.len() as u64 / IMAGE_CHUNK_BYTES;
        let guard = self.tap.lock();
        let Some(capture) = guard.as_ref() else {
            return Err(io::Error::other("the image was stopped"));
        };
        if let Some(why) = &capture.failed {
            return Err(io::Error::other(why.clone()));
        }
        // A run of chunks all copied already, or none copied yet.
        let copied = capture.is_done(first);
        let mut end = first + 1;
        while end < capture.chunks() && end - first < room && capture.is_done(end) == copied {
            end += 1;
        }
        let n = ((end * IMAGE_CHUNK_BYTES).min(self.len) - self.pos) as usize;
        let out = &mut buf[..n];
        if copied {
            // A write copied these before changing them: the image file has them.
            drop(guard);
            self.dest.read_exact_at(out, self.pos)?;
        } else {
            // Read under the lock, so that no write changes them meanwhile; written to the
            // image file after it (no write touches chunks marked done).
            self.tap.0.file.read(self.pos, out)?;
            let mut guard = guard;
            if let Some(capture) = guard.as_mut() {
                for chunk in first..end {
                    capture.mark_done(chunk);
                }
            }
            drop(guard);
            self.dest.write_all_at(out, self.pos)?;
        }
        self.pos += n as u64;
        Ok(Some(out))
    }

    fn finished(&self) -> io::Result<()> {
        match self.tap.lock().as_ref().and_then(|c| c.failed.clone()) {
            Some(why) => Err(io::Error::other(why)),
            None => Ok(()),
        }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.tap.stop();
    }
}

impl Partition {
    /// Starts an image of every partition's file (`dests[k]` for `partitions[k]`) at one
    /// moment, with a read transaction on each showing that same moment: every writer is
    /// parked inside a write transaction at once (between two group commits), the images
    /// start and the snapshots are taken, then the writers go on. Writes wait for that short
    /// moment only; reads never wait. Call off any executor.
    pub fn consistent_images(
        partitions: &[Arc<Partition>],
        dests: Vec<File>,
    ) -> Result<Vec<(Image, ReadTransaction)>, StorageError> {
        assert_eq!(partitions.len(), dests.len());
        let (reached_tx, reached_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = flume::bounded::<()>(0);
        let mut parked = Vec::with_capacity(partitions.len());
        for p in partitions {
            let p = Arc::clone(p);
            let reached = reached_tx.clone();
            let release = release_rx.clone();
            parked.push(std::thread::spawn(move || {
                p.barrier_blocking(move |_txn| {
                    let _ = reached.send(());
                    // Held here (nothing commits on this partition) until every image has
                    // started; a dropped sender also releases.
                    let _ = release.recv_timeout(3 * PARK_WAIT);
                    Ok::<(), StorageError>(())
                })
            }));
        }
        drop(reached_tx);
        let all_parked = partitions
            .iter()
            .all(|_| reached_rx.recv_timeout(PARK_WAIT).is_ok());
        let started = if all_parked {
            partitions
                .iter()
                .zip(dests)
                .map(|(p, dest)| {
                    let image = p.tap().start(dest).map_err(|source| StorageError::Io {
                        path: p.path().to_path_buf(),
                        source,
                    })?;
                    Ok((image, p.read()?))
                })
                .collect::<Result<Vec<_>, StorageError>>()
        } else {
            Err(StorageError::WriterStopped)
        };
        drop(release_tx);
        for t in parked {
            let _ = t.join();
        }
        started
    }
}

/// An image of a database file nothing writes (a stopped server's data dir, opened here
/// through `tap`): the same copy as online, with no writer to park.
pub fn quiet_image(tap: &Tap, dest: File) -> io::Result<Image> {
    tap.start(dest)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

    use super::*;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn open(path: &std::path::Path) -> (Database, Tap) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        let tap = Tap::new(file).unwrap();
        let db = Database::builder()
            .create_with_backend(tap.clone())
            .unwrap();
        (db, tap)
    }

    /// A checkpoint's writes, gathered and then written by its thread, are what reads find
    /// at every step: while gathered, while that thread runs, and once in the file.
    #[test]
    fn a_checkpoints_writes_are_read_back_before_during_and_after_its_thread() {
        let (_dir, file) = crate::gather::tests::file_with(64 * 4096, 0xAA);
        let tap = Tap::new(file).unwrap();
        let page = |i: u64| vec![i as u8 ^ 0x5C; 4096];
        let pages = [9u64, 3, 4, 70, 0, 33];
        let expect = |at: u64| -> u8 {
            match pages.iter().find(|p| **p == at / 4096) {
                Some(p) => page(*p)[0],
                // The file's bytes, and past its end (the gap before page 70) zeros.
                None if at < 64 * 4096 => 0xAA,
                None => 0,
            }
        };
        let check = |tap: &Tap| {
            assert_eq!(tap.len().unwrap(), 71 * 4096);
            // Whole pages, and a read across three pages, two of them written.
            for at in (0..71).map(|p| p * 4096).chain([2 * 4096 + 100]) {
                let len = if at % 4096 == 0 { 4096 } else { 8192 };
                let mut out = vec![0; len];
                tap.read(at, &mut out).unwrap();
                for (i, b) in out.iter().enumerate() {
                    assert_eq!(*b, expect(at + i as u64), "byte {} of a read at {at}", i);
                }
            }
        };
        tap.defer_next_sync();
        for p in pages {
            tap.write(p * 4096, &page(p)).unwrap();
        }
        check(&tap);
        // The file itself is untouched until the checkpoint's thread writes.
        let mut raw = vec![0; 4096];
        tap.0.raw.read_exact_at(&mut raw, 9 * 4096).unwrap();
        assert_eq!(raw, vec![0xAA; 4096]);
        tap.sync_data().unwrap();
        check(&tap);
        tap.wait_synced().unwrap();
        assert!(!tap.0.pending.load(Ordering::Acquire));
        check(&tap);
        tap.0.raw.read_exact_at(&mut raw, 9 * 4096).unwrap();
        assert_eq!(raw, page(9));
        // The next checkpoint gathers into the memory the last one used.
        assert!(tap.deferred().gathered.is_empty());
    }

    fn fill(db: &Database, from: u64, to: u64, tag: u8) {
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(T).unwrap();
            for k in from..to {
                t.insert(k, vec![tag; 700].as_slice()).unwrap();
            }
        }
        w.commit().unwrap();
    }

    /// An image started before many more commits (rewrites, deletes, growth) still opens
    /// as exactly the database at its start, and the writes had to preserve chunks.
    #[test]
    fn an_image_is_the_file_at_its_start_despite_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (db, tap) = open(&dir.path().join("live.redb"));
        fill(&db, 0, 20_000, 1);
        let image_path = dir.path().join("image.redb");
        let dest = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&image_path)
            .unwrap();
        let mut image = quiet_image(&tap, dest).unwrap();
        // Copy a little, then change everything, then copy the rest.
        let mut buf = vec![0u8; 4 * IMAGE_CHUNK_BYTES as usize];
        let mut hasher_len = 0u64;
        hasher_len += image.next(&mut buf).unwrap().unwrap().len() as u64;
        fill(&db, 0, 20_000, 2);
        fill(&db, 20_000, 60_000, 3);
        {
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(T).unwrap();
                for k in 0..10_000u64 {
                    t.remove(k).unwrap();
                }
            }
            w.commit().unwrap();
        }
        while let Some(bytes) = image.next(&mut buf).unwrap() {
            hasher_len += bytes.len() as u64;
        }
        assert_eq!(hasher_len, image.len());
        drop(image);
        assert!(tap.preserved_chunks() > 0, "no write met an uncopied chunk");
        // Writes after the image ended pay nothing and change nothing in it.
        fill(&db, 0, 100, 4);
        let preserved = tap.preserved_chunks();
        fill(&db, 100, 200, 4);
        assert_eq!(tap.preserved_chunks(), preserved);
        drop(db);

        let mut copy = Database::builder().open(&image_path).unwrap();
        assert!(copy.check_integrity().unwrap());
        let r = copy.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        assert_eq!(t.len().unwrap(), 20_000);
        for row in t.iter().unwrap() {
            let (_, v) = row.unwrap();
            assert!(v.value().iter().all(|b| *b == 1));
        }
    }
}
