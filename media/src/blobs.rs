//! The content-addressed blob stores: every stored file is named by the SHA-256 of its bytes
//! (`<dir>/ab/abcdef…`), written to a temporary file, fsynced, named, and the directory
//! fsynced. Identical content is one file, across shards too.
//!
//! Two levels:
//! - A `BlobStore` per shard (`<data>/media/shard-<k>/`). Its names are the ones that
//!   shard's reference counts (in `core`, same database and transaction as the records)
//!   speak of. Whether a blob is still used is the domain's knowledge, so the functions that
//!   may delete take a `referenced` check. A blob just placed but whose reference is not
//!   committed yet is *pinned* in memory, so a concurrent release of the same content cannot
//!   delete it in between.
//! - One `SharedBlobs` (`<data>/media/blobs/`) under all of them. A shard's blob is a hard
//!   link of the shared file of the same name, so the bytes exist once however many shards
//!   use them, and the file system's link count is the cross-shard reference count (shard
//!   names + 1 for the shared name). A shard frees its own name; the shared name goes when
//!   it is the file's last one. Every decision on shared names (link an existing one; unlink
//!   after reading the link count) is taken under one mutex for the process (every shard is
//!   in it), so a check-then-unlink never races another shard's link. The shared names are
//!   derived state: the start-up sweep links in any shard blob that has none (a data dir from
//!   before sharing, a restored backup, a crash that lost the name) and removes shared names
//!   no shard links. A file system without hard links only loses the sharing: each shard
//!   then keeps its own copy, as before.
//!
//! Everything here blocks (files, fsync): call it from the media threads only, never from a
//! shard executor.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

/// A blob's name: the SHA-256 of its content in lower-case hex.
pub type BlobId = String;

const READ_CHUNK_BYTES: usize = 256 * 1024;

/// One shard's store: the names its reference counts speak of, each a link of the shared file.
pub struct BlobStore {
    dir: PathBuf,
    shared: Arc<SharedBlobs>,
    pins: Mutex<HashMap<BlobId, u32>>,
    seq: AtomicU64,
}

/// The content store under every shard's store (see the module's comment).
pub struct SharedBlobs {
    dir: PathBuf,
    /// Held across every test-and-change of a shared name (never across an fsync).
    /// Lock order: a store's `pins`, then this.
    names: Mutex<()>,
}

/// What a start-up sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files removed: a shard's blobs nothing references, or shared names no shard links.
    pub removed: usize,
    /// Shard blobs that had their own copy of the bytes (or no shared name) and are now
    /// links of the shared file.
    pub shared: usize,
    /// Shard blobs that could not be shared (they keep their own copy; logged).
    pub unshared: usize,
}

/// Is `id` a well-formed blob name (64 lower-case hex digits)?
pub fn valid_id(id: &str) -> bool {
    id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn not_found(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
}

/// `<dir>/ab/abcdef…`
fn blob_path(dir: &Path, id: &str) -> PathBuf {
    assert!(valid_id(id), "blob ids are checked before use");
    dir.join(&id[..2]).join(id)
}

/// Calls `each(path, name)` for every well-formed blob under `dir`'s two-letter directories
/// (streamed: a store may hold millions).
fn each_blob(
    dir: &Path,
    mut each: impl FnMut(&Path, &str) -> std::io::Result<()>,
) -> std::io::Result<()> {
    for sub in fs::read_dir(dir)? {
        let sub = sub?;
        if !sub.file_type()?.is_dir() || sub.file_name().len() != 2 {
            continue;
        }
        for entry in fs::read_dir(sub.path())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if valid_id(&name) {
                each(&entry.path(), &name)?;
            }
        }
    }
    Ok(())
}

impl SharedBlobs {
    /// Opens (creating) the shared store at `dir`; one per process and data dir.
    pub fn open(dir: &Path) -> std::io::Result<Arc<SharedBlobs>> {
        fs::create_dir_all(dir)?;
        Ok(Arc::new(SharedBlobs {
            dir: dir.to_path_buf(),
            names: Mutex::new(()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the shared file of `id` lives (whether or not it exists).
    pub fn path_of(&self, id: &str) -> PathBuf {
        blob_path(&self.dir, id)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names the fsynced file `temp` (content `id`, `len` bytes) `dest` in a shard store,
    /// sharing the bytes: a link of the shared file when it exists (and `temp` is dropped),
    /// else `temp` becomes the shared file and `dest` its second name. Where no link can be
    /// made (a file system without them, a shared file of the wrong size), `dest` keeps its
    /// own copy. The caller fsyncs `dest`'s directory; the shared name needs no fsync (lost
    /// in a crash, it is made again at start-up from the shard names).
    fn adopt(&self, temp: &Path, id: &str, len: u64, dest: &Path) -> std::io::Result<()> {
        let shared = self.path_of(id);
        if let Some(parent) = shared.parent() {
            fs::create_dir_all(parent)?;
        }
        let names = self.lock();
        match fs::metadata(&shared) {
            Ok(m) if m.len() == len => match fs::hard_link(&shared, dest) {
                Ok(()) => {
                    drop(names);
                    // A temp file left behind is removed by the next start-up sweep.
                    let _ = fs::remove_file(temp);
                    return Ok(());
                }
                Err(e) => tracing::warn!(blob = id, error = %e, "cannot link a shared blob"),
            },
            Ok(m) => tracing::warn!(
                blob = id,
                bytes = m.len(),
                expected = len,
                "a shared blob has the wrong size; this shard keeps its own copy"
            ),
            Err(e) if not_found(&e) => {
                // The first copy of this content: the temp file gets the shared name too, so
                // it has two names until the rename below (a crash in between leaves a shared
                // name alone once tmp is emptied: swept at start-up).
                if let Err(e) = fs::hard_link(temp, &shared) {
                    tracing::warn!(blob = id, error = %e, "cannot share a blob");
                }
            }
            Err(e) => return Err(e),
        }
        fs::rename(temp, dest)
    }

    /// Removes a shard's name `dest` of `id`, then the shared name if no shard links the file
    /// any more. True when `dest` was removed.
    fn unlink(&self, dest: &Path, id: &str) -> std::io::Result<bool> {
        let _names = self.lock();
        let removed = match fs::remove_file(dest) {
            Ok(()) => true,
            Err(e) if not_found(&e) => false,
            Err(e) => return Err(e),
        };
        self.collect_locked(id)?;
        Ok(removed)
    }

    /// Removes the shared name of `id` when it is the file's only name (the lock is held).
    fn collect_locked(&self, id: &str) -> std::io::Result<bool> {
        let shared = self.path_of(id);
        match fs::metadata(&shared) {
            Ok(m) if m.nlink() == 1 => match fs::remove_file(&shared) {
                Ok(()) => Ok(true),
                Err(e) if not_found(&e) => Ok(false),
                Err(e) => Err(e),
            },
            Ok(_) => Ok(false),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes the shard blob `file` (content `id`) a link of the shared file: a name is added
    /// when the shared one is missing; a separate copy of the same size is replaced by a link
    /// (through `temp` and a rename, so `file` always names one of the two). No fsync: a
    /// crash leaves either state, both valid. True when something changed.
    fn share(&self, file: &Path, id: &str, temp: &Path) -> std::io::Result<bool> {
        let shared = self.path_of(id);
        let own = fs::metadata(file)?;
        if let Some(parent) = shared.parent() {
            fs::create_dir_all(parent)?;
        }
        let _names = self.lock();
        match fs::metadata(&shared) {
            Ok(m) if (m.dev(), m.ino()) == (own.dev(), own.ino()) => Ok(false),
            Ok(m) if m.len() == own.len() => {
                // Two copies (a restored backup, a data dir from before sharing): the shared
                // one is checked before this shard relies on it. Start-up only, and rare.
                let (sha, _) = BlobStore::hash_file(&shared)?;
                if sha != id {
                    return Err(std::io::Error::other("the shared copy is damaged"));
                }
                fs::hard_link(&shared, temp)?;
                if let Err(e) = fs::rename(temp, file) {
                    let _ = fs::remove_file(temp);
                    return Err(e);
                }
                Ok(true)
            }
            Ok(m) => Err(std::io::Error::other(format!(
                "the shared copy has {} bytes, this one {}",
                m.len(),
                own.len()
            ))),
            Err(e) if not_found(&e) => fs::hard_link(file, &shared).map(|()| true),
            Err(e) => Err(e),
        }
    }

    /// At start-up, after every shard store's `sweep`: removes the shared names no shard
    /// links (a crash between placing a blob and naming it in its shard, or a shard name
    /// swept as unreferenced). Returns how many were removed.
    pub fn sweep(&self) -> std::io::Result<usize> {
        let _names = self.lock();
        let mut removed = 0;
        each_blob(&self.dir, |_, id| {
            if self.collect_locked(id)? {
                removed += 1;
            }
            Ok(())
        })?;
        Ok(removed)
    }
}

impl BlobStore {
    /// Opens (creating) a shard's store at `dir`, sharing its bytes through `shared` (on the
    /// same file system).
    pub fn open(dir: &Path, shared: Arc<SharedBlobs>) -> std::io::Result<BlobStore> {
        fs::create_dir_all(dir.join("tmp"))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            shared,
            pins: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh path for a temporary file inside the store (same file system as the blobs, so
    /// that placing one is a rename).
    pub fn temp_path(&self, tag: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{}-{n}-{tag}", std::process::id()))
    }

    /// Where the blob `id` lives (whether or not it exists).
    pub fn path_of(&self, id: &str) -> PathBuf {
        blob_path(&self.dir, id)
    }

    /// Writes `bytes` to a new temporary file and fsyncs it; returns its path and blob id.
    pub fn write_temp(&self, bytes: &[u8]) -> std::io::Result<(PathBuf, BlobId)> {
        let path = self.temp_path("upload");
        let mut f = fs::File::create(&path)?;
        let written = f.write_all(bytes).and_then(|_| f.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok((path, hex(&Sha256::digest(bytes))))
    }

    /// The blob id and length of a file's content.
    pub fn hash_file(path: &Path) -> std::io::Result<(BlobId, u64)> {
        let mut f = fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        Ok((hex(&hasher.finalize()), len))
    }

    /// Moves the file `temp` (whose content is `id`) into the store, durably and sharing its
    /// bytes with other shards' stores, and pins `id` until `unpin`. If this store has the
    /// blob already, `temp` is removed instead.
    pub fn put(&self, temp: &Path, id: &str) -> std::io::Result<()> {
        let dest = self.path_of(id);
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        *pins.entry(id.to_string()).or_insert(0) += 1;
        if dest.exists() {
            drop(pins);
            fs::remove_file(temp)?;
            return Ok(());
        }
        let parent = self.dir.join(&id[..2]);
        let placed = fs::create_dir_all(&parent)
            .and_then(|_| {
                let f = fs::File::open(temp)?;
                f.sync_all()?;
                f.metadata()
            })
            .and_then(|m| self.shared.adopt(temp, id, m.len(), &dest))
            .and_then(|_| sync_dir(&parent));
        if let Err(e) = placed {
            if let Some(n) = pins.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(id);
                }
            }
            return Err(e);
        }
        Ok(())
    }

    /// Ends a pin from `put`; deletes the blob if nothing references it (the commit that
    /// should have referenced it failed).
    pub fn unpin(&self, id: &str, referenced: impl FnOnce(&str) -> bool) -> std::io::Result<bool> {
        {
            let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = pins.get_mut(id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pins.remove(id);
                }
            }
        }
        self.release(id, referenced)
    }

    /// Deletes this store's blob `id` if it is neither pinned nor referenced, and the shared
    /// bytes if no other store links them; true when this store's name was deleted.
    pub fn release(
        &self,
        id: &str,
        referenced: impl FnOnce(&str) -> bool,
    ) -> std::io::Result<bool> {
        if !valid_id(id) {
            return Ok(false);
        }
        let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        if pins.contains_key(id) || referenced(id) {
            return Ok(false);
        }
        self.shared.unlink(&self.path_of(id), id)
    }

    /// At start-up (nothing pinned): removes temporary files and every blob nothing
    /// references (left by a crash between placing a blob and committing its reference), and
    /// makes every blob kept a link of the shared file. `SharedBlobs::sweep` runs after every
    /// store's sweep.
    pub fn sweep(&self, referenced: impl Fn(&str) -> bool) -> std::io::Result<Swept> {
        // Temporary files, and the work directories of renditions (one may hold a file that
        // already has its shared name: removing it lets the shared sweep see link count 1).
        for entry in fs::read_dir(self.dir.join("tmp"))? {
            let entry = entry?;
            let _ = if entry.file_type()?.is_dir() {
                fs::remove_dir_all(entry.path())
            } else {
                fs::remove_file(entry.path())
            };
        }
        let mut swept = Swept::default();
        each_blob(&self.dir, |path, id| {
            if !referenced(id) {
                fs::remove_file(path)?;
                swept.removed += 1;
                return Ok(());
            }
            match self.shared.share(path, id, &self.temp_path("share")) {
                Ok(true) => swept.shared += 1,
                Ok(false) => {}
                Err(e) => {
                    // Logged once per store: the cause is usually the same for all.
                    if swept.unshared == 0 {
                        tracing::warn!(
                            blob = id,
                            error = %e,
                            "a blob cannot be shared; its shard keeps its own copy"
                        );
                    }
                    swept.unshared += 1;
                }
            }
            Ok(())
        })?;
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed when the returned guard drops (also when the test fails).
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("nova-blobs-{name}-"))
            .tempdir()
            .unwrap()
    }

    fn inode(path: &Path) -> (u64, u64) {
        let m = fs::metadata(path).unwrap();
        (m.ino(), m.nlink())
    }

    #[test]
    fn identical_content_is_one_blob_and_pins_protect_it() {
        let scratch_dir = scratch("one");
        let dir = scratch_dir.path();
        let shared = SharedBlobs::open(&dir.join("blobs")).unwrap();
        let store = BlobStore::open(&dir.join("shard-0"), Arc::clone(&shared)).unwrap();
        let (t1, id) = store.write_temp(b"hello").unwrap();
        let (t2, id2) = store.write_temp(b"hello").unwrap();
        assert_eq!(id, id2);
        assert_eq!(
            id,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        store.put(&t1, &id).unwrap();
        store.put(&t2, &id).unwrap();
        assert!(!t2.exists() && store.path_of(&id).exists());
        // Pinned twice: a release in between keeps it.
        assert!(!store.release(&id, |_| false).unwrap());
        assert!(!store.unpin(&id, |_| false).unwrap());
        // Referenced: kept; then no longer referenced: deleted, the shared name with it.
        assert!(!store.unpin(&id, |_| true).unwrap());
        assert!(store.release(&id, |_| false).unwrap());
        assert!(!store.path_of(&id).exists());
        assert!(!shared.path_of(&id).exists());
        let (t3, id3) = store.write_temp(b"orphan").unwrap();
        store.put(&t3, &id3).unwrap();
        // A crash while placing a rendition: its file in a work directory has its shared
        // name, not yet its shard name.
        let work = store.temp_path("work");
        fs::create_dir_all(&work).unwrap();
        fs::write(work.join("thumb.jpg"), b"rendition").unwrap();
        let id4 = hex(&Sha256::digest(b"rendition"));
        fs::create_dir_all(shared.path_of(&id4).parent().unwrap()).unwrap();
        fs::hard_link(work.join("thumb.jpg"), shared.path_of(&id4)).unwrap();
        let store = BlobStore::open(&dir.join("shard-0"), Arc::clone(&shared)).unwrap();
        assert_eq!(store.sweep(|_| false).unwrap().removed, 1);
        assert!(!work.exists());
        assert_eq!(shared.sweep().unwrap(), 2);
        assert!(!shared.path_of(&id3).exists());
        assert!(!shared.path_of(&id4).exists());
    }

    #[test]
    fn stores_share_one_file_freed_by_the_last() {
        let scratch_dir = scratch("two");
        let dir = scratch_dir.path();
        let shared = SharedBlobs::open(&dir.join("blobs")).unwrap();
        let a = BlobStore::open(&dir.join("shard-0"), Arc::clone(&shared)).unwrap();
        let b = BlobStore::open(&dir.join("shard-1"), Arc::clone(&shared)).unwrap();
        let (ta, id) = a.write_temp(b"same bytes").unwrap();
        let (tb, _) = b.write_temp(b"same bytes").unwrap();
        a.put(&ta, &id).unwrap();
        b.put(&tb, &id).unwrap();
        let (ino, links) = inode(&shared.path_of(&id));
        assert_eq!(links, 3, "shared name + two shard names");
        assert_eq!(inode(&a.path_of(&id)).0, ino);
        assert_eq!(inode(&b.path_of(&id)).0, ino);
        // A's release keeps B's bytes; B's frees them.
        assert!(a.unpin(&id, |_| false).unwrap());
        assert_eq!(inode(&shared.path_of(&id)), (ino, 2));
        assert_eq!(fs::read(b.path_of(&id)).unwrap(), b"same bytes");
        assert!(b.unpin(&id, |_| false).unwrap());
        assert!(!shared.path_of(&id).exists());
    }

    #[test]
    fn sweep_shares_separate_copies_and_removes_orphans() {
        let scratch_dir = scratch("sweep");
        let dir = scratch_dir.path();
        let shared = SharedBlobs::open(&dir.join("blobs")).unwrap();
        let a = BlobStore::open(&dir.join("shard-0"), Arc::clone(&shared)).unwrap();
        let b = BlobStore::open(&dir.join("shard-1"), Arc::clone(&shared)).unwrap();
        // Two separate copies, no shared name: a data dir from before sharing.
        let (_, id) = a.write_temp(b"old").unwrap();
        for s in [&a, &b] {
            fs::create_dir_all(s.path_of(&id).parent().unwrap()).unwrap();
            fs::write(s.path_of(&id), b"old").unwrap();
        }
        // A shared name nothing links (a crash before the shard's name was made).
        let (_, orphan) = a.write_temp(b"orphan").unwrap();
        fs::create_dir_all(shared.path_of(&orphan).parent().unwrap()).unwrap();
        fs::write(shared.path_of(&orphan), b"orphan").unwrap();
        assert_ne!(inode(&a.path_of(&id)).0, inode(&b.path_of(&id)).0);
        assert_eq!(a.sweep(|_| true).unwrap().shared, 1);
        assert_eq!(b.sweep(|_| true).unwrap().shared, 1);
        assert_eq!(shared.sweep().unwrap(), 1);
        let (ino, links) = inode(&shared.path_of(&id));
        assert_eq!(links, 3);
        assert_eq!(inode(&b.path_of(&id)).0, ino);
        assert_eq!(fs::read(b.path_of(&id)).unwrap(), b"old");
        assert!(!shared.path_of(&orphan).exists());
        // Done once: a second sweep changes nothing.
        assert_eq!(a.sweep(|_| true).unwrap(), Swept::default());
    }

    #[test]
    fn concurrent_puts_and_releases_share_exactly() {
        // Without the shared-name mutex, a release could read link count 1 and unlink the
        // shared name just after another store linked it: that store's copy would then be
        // alone, and the next put would make a second copy of the bytes.
        let scratch_dir = scratch("race");
        let dir = scratch_dir.path();
        let shared = SharedBlobs::open(&dir.join("blobs")).unwrap();
        let stores: Vec<BlobStore> = (0..4)
            .map(|k| BlobStore::open(&dir.join(format!("shard-{k}")), Arc::clone(&shared)).unwrap())
            .collect();
        let id = hex(&Sha256::digest(b"contended"));
        std::thread::scope(|scope| {
            for s in &stores {
                scope.spawn(move || {
                    for _ in 0..300 {
                        let (t, id) = s.write_temp(b"contended").unwrap();
                        s.put(&t, &id).unwrap();
                        // While pinned (as until its commit) the bytes are there, under the
                        // shared name too.
                        assert_eq!(fs::read(s.path_of(&id)).unwrap(), b"contended");
                        assert_eq!(
                            fs::metadata(s.shared.path_of(&id)).map(|m| m.ino()).ok(),
                            Some(inode(&s.path_of(&id)).0),
                            "a pinned blob lost its shared name"
                        );
                        s.unpin(&id, |_| false).unwrap();
                    }
                    // The last one is kept (referenced).
                    let (t, id) = s.write_temp(b"contended").unwrap();
                    s.put(&t, &id).unwrap();
                    s.unpin(&id, |_| true).unwrap();
                });
            }
        });
        let (ino, links) = inode(&shared.path_of(&id));
        assert_eq!(links, 5, "one file: the shared name and four shard names");
        for s in &stores {
            assert_eq!(inode(&s.path_of(&id)).0, ino);
        }
        for s in &stores {
            s.release(&id, |_| false).unwrap();
        }
        assert!(!shared.path_of(&id).exists());
    }
}
