//! The content-addressed blob store: every stored file is named by the SHA-256 of its bytes
//! (`<dir>/ab/abcdef…`), written to a temporary file, fsynced, renamed, and the directory
//! fsynced. Identical content is one file.
//!
//! Whether a blob is still used is the domain's knowledge (reference counts in `core`), so
//! the functions that may delete take a `referenced` check. A blob just placed but whose
//! reference is not committed yet is *pinned* in memory, so a concurrent release of the same
//! content cannot delete it in between. Everything here blocks (files, fsync): call it from
//! the media threads only, never from a shard executor.

use std::collections::HashMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A blob's name: the SHA-256 of its content in lower-case hex.
pub type BlobId = String;

const READ_CHUNK_BYTES: usize = 256 * 1024;

pub struct BlobStore {
    dir: PathBuf,
    pins: Mutex<HashMap<BlobId, u32>>,
    seq: AtomicU64,
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

impl BlobStore {
    /// Opens (creating) the store at `dir`.
    pub fn open(dir: &Path) -> std::io::Result<BlobStore> {
        fs::create_dir_all(dir.join("tmp"))?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
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
        assert!(valid_id(id), "blob ids are checked before use");
        self.dir.join(&id[..2]).join(id)
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

    /// Moves the fsynced file `temp` (whose content is `id`) into the store and pins `id`
    /// until `unpin`. If the blob exists already, `temp` is removed instead.
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
            .and_then(|_| fs::File::open(temp)?.sync_all())
            .and_then(|_| fs::rename(temp, &dest))
            .and_then(|_| sync_dir(&parent));
        if let Err(e) = placed {
            if let Some(n) = pins.get_mut(id) {
                *n -= 1;
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

    /// Deletes blob `id` if it is neither pinned nor referenced; true when it was deleted.
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
        match fs::remove_file(self.path_of(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// At start-up (nothing pinned): removes temporary files and every blob nothing
    /// references (left by a crash between placing a blob and committing its reference).
    /// Returns how many blobs were removed.
    pub fn sweep(&self, referenced: impl Fn(&str) -> bool) -> std::io::Result<usize> {
        for entry in fs::read_dir(self.dir.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        let mut removed = 0;
        for sub in fs::read_dir(&self.dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() || sub.file_name() == "tmp" {
                continue;
            }
            for entry in fs::read_dir(sub.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if valid_id(&name) && !referenced(&name) {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_content_is_one_blob_and_pins_protect_it() {
        let dir = std::env::temp_dir().join(format!("nova-blobs-{}", std::process::id()));
        let store = BlobStore::open(&dir).unwrap();
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
        // Referenced: kept; then no longer referenced: deleted.
        assert!(!store.unpin(&id, |_| true).unwrap());
        assert!(store.release(&id, |_| false).unwrap());
        assert!(!store.path_of(&id).exists());
        let (t3, id3) = store.write_temp(b"orphan").unwrap();
        store.put(&t3, &id3).unwrap();
        let store = BlobStore::open(&dir).unwrap();
        assert_eq!(store.sweep(|_| false).unwrap(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
