//! Backups that restore: `nova admin backup` (online through the admin listener, or offline
//! from a stopped server's data dir), `nova admin restore` and `nova admin verify`.
//!
//! A backup is a directory: one redb file per shard, a byte image of each file taken at one
//! moment across every shard (`Partition::consistent_images`, storage/src/snapshot.rs), every other
//! file of the data dir (manifest, secrets, media blobs), and `backup.json`: the shard count,
//! each file's size and SHA-256, and each table's row count.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use nova_storage::redb::{self, ReadTransaction, ReadableDatabase};
use nova_storage::{DataDir, Image, Partition, Tap};

pub const BACKUP_MANIFEST: &str = "backup.json";
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub created_ms: u64,
    pub shards: usize,
    pub files: Vec<FileEntry>,
    /// shard -> table -> rows
    pub tables: Vec<BTreeMap<String, u64>>,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

fn shard_file(k: usize) -> String {
    format!("shard-{k}.redb")
}

/// How a backup's copying threads run.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Lower the copying threads (nice 19, SCHED_IDLE, the idle I/O class) so that the
    /// shards keep their latency: the copy gets what the server leaves.
    pub low_priority: bool,
    /// Bytes per second the copy writes at most (0: no limit).
    pub bytes_per_s_max: u64,
}

impl Pace {
    /// A stopped server's data dir: nothing to yield to.
    pub const FULL: Pace = Pace {
        low_priority: false,
        bytes_per_s_max: 0,
    };
}

/// One read and write of the copy.
const COPY_BUF_BYTES: usize = 1 << 20;
/// Bytes of one file written before the copy waits for the disk to take the previous ones
/// (write-behind): the page cache never fills with the backup's dirty pages, which would
/// stall the server's own writes, and the final fsync of each file is short.
const WRITE_BEHIND_BYTES: u64 = 8 << 20;

/// Online backup: images of every shard's database at one moment (`consistent_images`), the
/// media blobs that moment references, every other file of the data dir.
pub fn backup_partitions(
    data_root: &Path,
    partitions: &[Arc<Partition>],
    dest: &Path,
    pace: Pace,
) -> anyhow::Result<BackupManifest> {
    let started = Instant::now();
    outside(data_root, dest)?;
    prepare_empty(dest)?;
    let files = (0..partitions.len())
        .map(|k| image_file(&dest.join(shard_file(k))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let images = Partition::consistent_images(partitions, files)?;
    write_backup(data_root, images, dest, pace, started)
}

fn image_file(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

/// Writes the backup of `images` (one per shard, in order, each with a read transaction of
/// the same moment) and of the other files of the data dir into `dest`: the databases on
/// one thread, the media blobs and other files on another, both hashing what they copy as
/// they go (one pass over the bytes).
fn write_backup(
    data_root: &Path,
    images: Vec<(Image, ReadTransaction)>,
    dest: &Path,
    pace: Pace,
    started: Instant,
) -> anyhow::Result<BackupManifest> {
    let mut tables = Vec::with_capacity(images.len());
    let mut blobs = Vec::new();
    let mut copies = Vec::with_capacity(images.len());
    for (k, (image, read)) in images.into_iter().enumerate() {
        tables.push(nova_core::backup::table_rows(&read).map_err(|e| anyhow::anyhow!("{e}"))?);
        for blob in nova_core::media::blob_refs(&read).map_err(|e| anyhow::anyhow!("{e}"))? {
            blobs.push((k, blob));
        }
        copies.push(image);
    }
    let throttle = Throttle::new(pace.bytes_per_s_max);
    let (databases, others) = std::thread::scope(|scope| {
        let databases = std::thread::Builder::new()
            .name("nova-backup-db".into())
            .spawn_scoped(scope, || {
                lower_priority(pace);
                copy_images(copies, &throttle)
            })?;
        let others = std::thread::Builder::new()
            .name("nova-backup-files".into())
            .spawn_scoped(scope, || {
                lower_priority(pace);
                copy_files(data_root, dest, &blobs, &throttle)
            })?;
        let joined = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<Vec<FileEntry>>>| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a backup thread panicked")))
        };
        Ok::<_, anyhow::Error>((joined(databases), joined(others)))
    })?;
    let mut files = databases?;
    files.extend(others?);
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let bytes = files.iter().map(|f| f.bytes).sum();
    let manifest = BackupManifest {
        format: FORMAT,
        created_ms: crate::shard::now_ms(),
        shards: tables.len(),
        files,
        tables,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = simd_json::serde::to_vec_pretty(&manifest)?;
    write_synced(&dest.join(BACKUP_MANIFEST), &text)?;
    sync_dir(dest)?;
    Ok(manifest)
}

/// Nice 19, SCHED_IDLE and the idle I/O class for the calling thread (each per thread on
/// Linux). Failing to lower is logged, not fatal: the backup is still right, only less kind.
fn lower_priority(pace: Pace) {
    if !pace.low_priority {
        return;
    }
    crate::media_jobs::lower_priority(19, true);
    // ioprio_set(IOPRIO_WHO_PROCESS, this thread, IOPRIO_CLASS_IDLE): its reads and the
    // writeback it starts wait for the server's. libc has no wrapper.
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: u32 = 13;
    // SAFETY: ioprio_set on our own thread id takes plain integers and changes only this
    // thread's I/O priority.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid,
            IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
        )
    };
    if rc != 0 {
        tracing::warn!("could not put the backup thread in the idle I/O class");
    }
}

/// Holds the copy to `bytes_per_s_max` (both threads together).
struct Throttle {
    max: u64,
    start: Instant,
    bytes: std::sync::atomic::AtomicU64,
}

impl Throttle {
    fn new(max: u64) -> Throttle {
        Throttle {
            max,
            start: Instant::now(),
            bytes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn account(&self, n: usize) {
        if self.max == 0 {
            return;
        }
        let total = self
            .bytes
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
            + n as u64;
        let due = Duration::from_secs_f64(total as f64 / self.max as f64);
        if let Some(wait) = due.checked_sub(self.start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Write-behind for one file being written front to back: once `WRITE_BEHIND_BYTES` more
/// are written, their writeback starts and the window before them is waited for and dropped
/// from the page cache (a backup is not read again soon; the server's pages stay).
struct Behind {
    started: u64,
    settled: u64,
}

impl Behind {
    fn new() -> Behind {
        Behind {
            started: 0,
            settled: 0,
        }
    }

    fn wrote(&mut self, file: &std::fs::File, upto: u64) {
        use std::os::fd::AsRawFd;
        if upto < self.started + WRITE_BEHIND_BYTES {
            return;
        }
        let fd = file.as_raw_fd();
        // SAFETY: plain syscalls on a file descriptor we own, with in-range offsets; their
        // failure only loses the hint (the final fsync still makes the file durable).
        unsafe {
            libc::sync_file_range(
                fd,
                self.started as libc::off64_t,
                (upto - self.started) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if self.started > self.settled {
                let len = (self.started - self.settled) as libc::off64_t;
                libc::sync_file_range(
                    fd,
                    self.settled as libc::off64_t,
                    len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                libc::posix_fadvise(
                    fd,
                    self.settled as libc::off64_t,
                    len,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
        self.settled = self.started;
        self.started = upto;
    }
}

/// Copies every shard's image, hashing it on the way.
fn copy_images(images: Vec<Image>, throttle: &Throttle) -> anyhow::Result<Vec<FileEntry>> {
    let mut buf = vec![0u8; COPY_BUF_BYTES];
    let mut out = Vec::with_capacity(images.len());
    for (k, mut image) in images.into_iter().enumerate() {
        let mut hasher = Sha256::new();
        let mut behind = Behind::new();
        let mut pos = 0u64;
        while let Some(bytes) = image
            .next(&mut buf)
            .with_context(|| format!("copying shard {k}'s database"))?
        {
            hasher.update(bytes);
            pos += bytes.len() as u64;
            behind.wrote(image.dest(), pos);
            throttle.account(bytes.len());
        }
        image.dest().sync_all()?;
        out.push(FileEntry {
            path: shard_file(k),
            bytes: image.len(),
            sha256: hex(&hasher.finalize()),
        });
        // Dropping the image here ends the copy-on-write on this shard's writer.
    }
    Ok(out)
}

/// The referenced blobs first (a delete after the snapshot could free one), each checked
/// against its name, then every other file of the data dir. A blob several shards reference
/// is copied once: the other shards' names in the backup are hard links of that copy (as in
/// the data dir, where they share one file), and `restore` keeps them linked.
fn copy_files(
    data_root: &Path,
    dest: &Path,
    blobs: &[(usize, String)],
    throttle: &Throttle,
) -> anyhow::Result<Vec<FileEntry>> {
    let mut buf = vec![0u8; COPY_BUF_BYTES];
    let mut out = Vec::with_capacity(blobs.len());
    let mut dirs = std::collections::BTreeSet::new();
    let mut copied: std::collections::HashMap<&str, (PathBuf, u64)> =
        std::collections::HashMap::new();
    for (k, blob) in blobs {
        let rel = blob_rel(*k, blob)?;
        let target = dest.join(&rel);
        if target.exists() {
            continue; // referenced twice
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
            dirs.insert(parent.to_path_buf());
        }
        let linked = copied
            .get(blob.as_str())
            .and_then(|(first, bytes)| std::fs::hard_link(first, &target).ok().map(|()| *bytes));
        let bytes = match linked {
            Some(bytes) => bytes,
            None => {
                let (bytes, sha256) =
                    copy_hashed(&data_root.join(&rel), &target, &mut buf, throttle)
                        .with_context(|| format!("shard {k}: referenced blob {blob} is missing"))?;
                if &sha256 != blob {
                    bail!(
                        "shard {k}: blob {blob} does not hash to its name (damaged in the data dir)"
                    );
                }
                copied.insert(blob, (target.clone(), bytes));
                bytes
            }
        };
        out.push(FileEntry {
            path: rel.to_string_lossy().into_owned(),
            bytes,
            sha256: blob.clone(),
        });
    }
    copy_other_files(data_root, data_root, dest, &mut buf, throttle, &mut out)?;
    for dir in dirs {
        sync_dir(&dir)?;
    }
    Ok(out)
}

/// Copies `from` to a new file `to`, hashing the bytes on the way; fsyncs `to`.
fn copy_hashed(
    from: &Path,
    to: &Path,
    buf: &mut [u8],
    throttle: &Throttle,
) -> anyhow::Result<(u64, String)> {
    let mut src = std::fs::File::open(from)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut behind = Behind::new();
    let mut bytes = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        bytes += n as u64;
        behind.wrote(&dst, bytes);
        throttle.account(n);
    }
    dst.sync_all()?;
    Ok((bytes, hex(&hasher.finalize())))
}

/// Refuses a destination inside the data dir: the copy of the data dir's files would copy the
/// copy into itself, without end.
fn outside(data_root: &Path, dest: &Path) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(data_root)
        .with_context(|| format!("reading {}", data_root.display()))?;
    // The nearest part of the destination that exists, resolved (links and `..` included),
    // then what does not exist yet.
    let dest_abs = std::path::absolute(dest)?;
    let mut existing = dest_abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_os_string());
        existing = parent;
    }
    let mut resolved = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.into());
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    if resolved.starts_with(&root) {
        bail!(
            "{} is inside the data dir {}: back up to a directory outside it",
            dest.display(),
            data_root.display()
        );
    }
    Ok(())
}

fn prepare_empty(dest: &Path) -> anyhow::Result<()> {
    if dest.exists() {
        let mut entries = std::fs::read_dir(dest)?;
        if entries.next().is_some() {
            bail!("{} is not empty", dest.display());
        }
    } else {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    }
    Ok(())
}

/// The shared blob store (`nova_media::SharedBlobs`): derived from the shards' stores, whose
/// files are links of it, and made again from them at start-up; never copied.
const SHARED_BLOBS_DIR: &str = "media/blobs";

/// Copies every file under `dir` but the live databases, temporary files and the shared blob
/// store, hashing each.
fn copy_other_files(
    root: &Path,
    dir: &Path,
    dest_root: &Path,
    buf: &mut [u8],
    throttle: &Throttle,
    out: &mut Vec<FileEntry>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if name.ends_with(".redb") || name.ends_with(".tmp") || name == "tmp" {
            continue;
        }
        let rel = path.strip_prefix(root)?;
        if rel == Path::new(SHARED_BLOBS_DIR) {
            continue;
        }
        let target = dest_root.join(rel);
        if kind.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_other_files(root, &path, dest_root, buf, throttle, out)?;
            sync_dir(&target)?;
        } else if kind.is_file() {
            if target.exists() {
                continue; // a referenced blob, copied already
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let (bytes, sha256) = copy_hashed(&path, &target, buf, throttle)
                .with_context(|| format!("copying {}", path.display()))?;
            out.push(FileEntry {
                path: rel.to_string_lossy().into_owned(),
                bytes,
                sha256,
            });
        }
    }
    Ok(())
}

/// Where blob `blob` of shard `k` lives, relative to a data dir or a backup.
fn blob_rel(k: usize, blob: &str) -> anyhow::Result<PathBuf> {
    if !nova_media::valid_id(blob) {
        bail!("shard {k}: a blob reference {blob:?} is not a SHA-256");
    }
    Ok(PathBuf::from("media")
        .join(format!("shard-{k}"))
        .join(&blob[..2])
        .join(blob))
}

/// Every blob a shard's records reference is there, with the content its name says.
fn check_blobs(root: &Path, k: usize, read: &ReadTransaction) -> anyhow::Result<usize> {
    let refs = nova_core::media::blob_refs(read).map_err(|e| anyhow::anyhow!("{e}"))?;
    for blob in &refs {
        let path = root.join(blob_rel(k, blob)?);
        let (_, sha) = hash_file(&path)
            .with_context(|| format!("shard {k}: referenced blob {blob} is missing"))?;
        if &sha != blob {
            bail!("shard {k}: blob {blob} does not hash to its name (damaged)");
        }
    }
    Ok(refs.len())
}

fn walk(dir: &Path, each: &mut dyn FnMut(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), each)?;
        } else if kind.is_file() {
            each(&entry.path())?;
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Opens a redb file, checking every page; `None` when it is damaged.
fn open_checked(path: &Path) -> anyhow::Result<redb::Database> {
    let opened = std::panic::catch_unwind(|| {
        let mut db = redb::Database::builder().open(path)?;
        let ok = db.check_integrity()?;
        Ok::<_, anyhow::Error>((db, ok))
    });
    match opened {
        Ok(Ok((db, true))) => Ok(db),
        Ok(Ok((_, false))) => bail!("{}: the database is damaged", path.display()),
        Ok(Err(e)) => bail!("{}: {e:#}", path.display()),
        Err(_) => bail!("{}: the database is damaged", path.display()),
    }
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub files: usize,
    pub bytes: u64,
    pub shards: usize,
    pub rows: u64,
}

/// Checks a backup (checksums of every file, every database page, row counts as recorded)
/// or a data dir (every database page).
pub fn verify(path: &Path) -> anyhow::Result<Report> {
    let manifest_path = path.join(BACKUP_MANIFEST);
    let mut report = Report::default();
    if manifest_path.exists() {
        let manifest: BackupManifest =
            simd_json::serde::from_slice(&mut std::fs::read(&manifest_path)?)
                .context("backup.json is not a backup manifest")?;
        if manifest.format != FORMAT {
            bail!("backup format {} is not {FORMAT}", manifest.format);
        }
        for f in &manifest.files {
            let file = path.join(&f.path);
            let (bytes, sha) =
                hash_file(&file).with_context(|| format!("{} is missing", f.path))?;
            if bytes != f.bytes || sha != f.sha256 {
                bail!("{}: checksum mismatch (the backup is damaged)", f.path);
            }
            report.files += 1;
            report.bytes += bytes;
        }
        let listed: std::collections::BTreeSet<&str> =
            manifest.files.iter().map(|f| f.path.as_str()).collect();
        let mut extra = Vec::new();
        walk(path, &mut |p| {
            let rel = p.strip_prefix(path)?.to_string_lossy().into_owned();
            if rel != BACKUP_MANIFEST && !listed.contains(rel.as_str()) {
                extra.push(rel);
            }
            Ok(())
        })?;
        if !extra.is_empty() {
            bail!("files not in the backup manifest: {extra:?}");
        }
        for (k, want) in manifest.tables.iter().enumerate() {
            // Opening a redb file can write to it (its header), so the check opens a copy:
            // verifying never changes the backup.
            let copy = std::env::temp_dir().join(format!(
                "nova-verify-{}-{k}-{}.redb",
                std::process::id(),
                crate::shard::now_ms()
            ));
            // Removed on every outcome, a failed (partial) copy included.
            let opened = std::fs::copy(path.join(shard_file(k)), &copy)
                .map_err(anyhow::Error::from)
                .and_then(|_| open_checked(&copy));
            let _ = std::fs::remove_file(&copy);
            let db = opened.map_err(|e| anyhow::anyhow!("{}: {e:#}", shard_file(k)))?;
            let read = db.begin_read()?;
            let got = nova_core::backup::table_rows(&read).map_err(|e| anyhow::anyhow!("{e}"))?;
            let want: BTreeMap<&String, &u64> = want.iter().filter(|(_, n)| **n > 0).collect();
            let got_nonempty: BTreeMap<&String, &u64> =
                got.iter().filter(|(_, n)| **n > 0).collect();
            if want != got_nonempty {
                bail!("shard {k}: table rows differ from the backup manifest");
            }
            check_blobs(path, k, &read)?;
            report.rows += got.values().sum::<u64>();
        }
        report.shards = manifest.shards;
    } else {
        let manifest = DataDir::read_manifest(path)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_context(|| format!("{} is neither a backup nor a data dir", path.display()))?;
        for k in 0..manifest.shards {
            let file = path.join(shard_file(k));
            let db = open_checked(&file)?;
            let read = db.begin_read()?;
            let rows = nova_core::backup::table_rows(&read).map_err(|e| anyhow::anyhow!("{e}"))?;
            check_blobs(path, k, &read)?;
            report.rows += rows.values().sum::<u64>();
            report.bytes += std::fs::metadata(&file)?.len();
            report.files += 1;
        }
        report.shards = manifest.shards;
    }
    Ok(report)
}

/// Restores a verified backup into an empty (or new) data dir.
pub fn restore(src: &Path, data: &Path) -> anyhow::Result<Report> {
    let report = verify(src).context("the backup does not verify; nothing restored")?;
    prepare_empty(data)?;
    let mut files = Vec::new();
    walk(src, &mut |p| {
        files.push(p.to_path_buf());
        Ok(())
    })?;
    // Files the backup holds as links of one another (a blob of several shards) are restored
    // as links too: one copy of the bytes, as in the data dir the backup was taken from.
    let mut restored: std::collections::HashMap<(u64, u64), PathBuf> =
        std::collections::HashMap::new();
    for p in files {
        use std::os::unix::fs::MetadataExt as _;
        let rel = p.strip_prefix(src)?;
        if rel == Path::new(BACKUP_MANIFEST) {
            continue;
        }
        let target = data.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let meta = std::fs::metadata(&p)?;
        let inode = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = restored.get(&inode) {
                if std::fs::hard_link(first, &target).is_ok() {
                    continue;
                }
            }
        }
        std::fs::copy(&p, &target)?;
        std::fs::File::open(&target)?.sync_all()?;
        if meta.nlink() > 1 {
            restored.insert(inode, target);
        }
    }
    let mut dirs = vec![data.to_path_buf()];
    while let Some(d) = dirs.pop() {
        sync_dir(&d)?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(report)
}

/// Offline backup of a stopped server's data dir: the same images, of files nothing writes
/// (opening them here also refuses a data dir a running server holds).
pub fn backup_offline(data: &Path, dest: &Path) -> anyhow::Result<BackupManifest> {
    let started = Instant::now();
    let manifest = DataDir::read_manifest(data)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_context(|| format!("{} is not a Nova data dir", data.display()))?;
    let mut dbs = Vec::with_capacity(manifest.shards);
    for k in 0..manifest.shards {
        let path = data.join(shard_file(k));
        let running = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "{}: {e} (is the server running? use --server for an online backup)",
                path.display()
            )
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| running(&e))?;
        let tap = Tap::new(file).map_err(|e| running(&e))?;
        let db = redb::Database::builder()
            .create_with_backend(tap.clone())
            .map_err(|e| running(&e))?;
        let unapplied = nova_storage::unapplied_log_frames(&path, &db)?;
        anyhow::ensure!(
            unapplied == 0,
            "{}: its write-ahead log holds {unapplied} commits the file lacks (the server \
             stopped without a checkpoint); start the server once and stop it, then back up",
            path.display()
        );
        dbs.push((db, tap));
    }
    outside(data, dest)?;
    prepare_empty(dest)?;
    let mut images = Vec::with_capacity(dbs.len());
    for (k, (db, tap)) in dbs.iter().enumerate() {
        let read = db.begin_read()?;
        let image = nova_storage::quiet_image(tap, image_file(&dest.join(shard_file(k)))?)?;
        images.push((image, read));
    }
    let written = write_backup(data, images, dest, Pace::FULL, started);
    drop(dbs);
    written
}

// ---- the admin listener ---------------------------------------------------------------------

/// The admin API: a plain HTTP/1.1 listener on a loopback address, one request per
/// connection, every request with `Authorization: Bearer <admin token>`. Runs on its own
/// thread, never on a shard.
pub struct Admin {
    pub data_root: PathBuf,
    pub partitions: Vec<Arc<Partition>>,
    pub token: String,
    /// The shards' inboxes, for `nova admin users` (shards/src/users_admin.rs).
    pub mesh: Vec<flume::Sender<crate::mesh::ShardMsg>>,
    /// How online backups copy (`backup_low_priority`, `backup_bytes_per_s_max`).
    pub pace: Pace,
}

pub fn spawn_admin(listener: TcpListener, admin: Admin) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("nova-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = serve_admin(stream, &admin) {
                            tracing::warn!(error = %e, "admin request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(())
}

/// Binds the admin listener; only loopback addresses are allowed.
pub fn bind_admin(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    if !addr.ip().is_loopback() {
        bail!("admin_listen must be a loopback address, not {addr}");
    }
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

const ADMIN_HEAD_MAX: usize = 16 * 1024;
const ADMIN_BODY_MAX: usize = 64 * 1024;

fn serve_admin(stream: TcpStream, admin: &Admin) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = Vec::new();
    let mut line = String::new();
    let mut content_length = 0usize;
    let mut auth = None;
    let mut request_line = String::new();
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .take(ADMIN_HEAD_MAX as u64)
            .read_line(&mut line)?;
        head.extend_from_slice(line.as_bytes());
        if n == 0 || head.len() > ADMIN_HEAD_MAX {
            return respond(stream, 400, r#"{"error":"bad request"}"#);
        }
        let l = line.trim_end();
        if request_line.is_empty() {
            request_line = l.to_string();
            continue;
        }
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse().unwrap_or(usize::MAX),
                "authorization" => auth = value.strip_prefix("Bearer ").map(str::to_string),
                _ => {}
            }
        }
    }
    if content_length > ADMIN_BODY_MAX {
        return respond(stream, 413, r#"{"error":"body too large"}"#);
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let token_ok = auth.as_deref().is_some_and(|t| {
        t.len() == admin.token.len()
            && t.bytes()
                .zip(admin.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !token_ok {
        return respond(stream, 401, r#"{"error":"unauthorized"}"#);
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("POST", "/admin/backup") => {
            #[derive(Deserialize)]
            struct Req {
                dest: PathBuf,
            }
            let req: Req = match simd_json::serde::from_slice(&mut body) {
                Ok(r) => r,
                Err(e) => {
                    let msg = simd_json::json!({ "error": format!("invalid body: {e}") });
                    return respond(stream, 422, &simd_json::to_string(&msg)?);
                }
            };
            let result =
                backup_partitions(&admin.data_root, &admin.partitions, &req.dest, admin.pace);
            match result {
                Ok(m) => {
                    let summary = simd_json::json!({
                        "dest": req.dest.to_string_lossy(),
                        "shards": m.shards,
                        "files": m.files.len(),
                        "bytes": m.bytes,
                        "seconds": m.seconds,
                    });
                    respond(stream, 200, &simd_json::to_string(&summary)?)
                }
                Err(e) => {
                    let msg = simd_json::json!({ "error": format!("{e:#}") });
                    respond(stream, 500, &simd_json::to_string(&msg)?)
                }
            }
        }
        ("GET", "/admin/stats") => {
            let mut shards = Vec::new();
            for p in &admin.partitions {
                let read = p.read()?;
                let rows =
                    nova_core::backup::table_rows(&read).map_err(|e| anyhow::anyhow!("{e}"))?;
                shards.push(simd_json::json!({
                    "users": rows.get("users").copied().unwrap_or(0),
                    "posts": rows.get("posts").copied().unwrap_or(0),
                    "messages": rows.get("messages").copied().unwrap_or(0),
                    "database_bytes": std::fs::metadata(p.path()).map(|m| m.len()).unwrap_or(0),
                }));
            }
            respond(
                stream,
                200,
                &simd_json::to_string(&simd_json::json!({ "shards": shards }))?,
            )
        }
        ("POST", "/admin/users") => {
            let (status, answer) = crate::users_admin::serve(&admin.mesh, &mut body);
            respond(stream, status, &answer)
        }
        _ => respond(stream, 404, r#"{"error":"not found"}"#),
    }
}

fn respond(mut stream: TcpStream, status: u16, body: &str) -> anyhow::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        409 => "Conflict",
        503 => "Service Unavailable",
        404 => "Not Found",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        _ => "Internal Server Error",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    Ok(())
}

/// The CLI side of an online backup: asks the running server to write it.
pub fn backup_online(server: &str, token: &str, dest: &Path) -> anyhow::Result<String> {
    let dest = std::path::absolute(dest)?;
    let url = format!("{}/admin/backup", server.trim_end_matches('/'));
    let body = simd_json::json!({ "dest": dest.to_string_lossy() });
    let resp = ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(3600))
        .send_string(&simd_json::to_string(&body)?);
    match resp {
        Ok(r) => Ok(r.into_string()?),
        Err(ureq::Error::Status(code, r)) => {
            bail!(
                "the server answered {code}: {}",
                r.into_string().unwrap_or_default()
            )
        }
        Err(e) => bail!("cannot reach the admin listener at {server}: {e}"),
    }
}
