//! The data directory: `nova.manifest` records the shard count and format when the directory
//! is created; `shard-<k>.redb` holds shard k's tables; `secrets/` holds keys made at first
//! start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::StorageError;

pub const MANIFEST_FILE: &str = "nova.manifest";
const FORMAT_VERSION: u32 = 1;

/// What the data directory was created with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub shards: usize,
}

impl Manifest {
    fn render(&self) -> String {
        format!(
            "# Written by nova when this data directory was created. Do not edit.\nformat = {}\nshards = {}\n",
            self.format, self.shards
        )
    }

    fn parse(text: &str) -> Result<Manifest, String> {
        let mut format = None;
        let mut shards = None;
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            let value: u64 = value
                .trim()
                .parse()
                .map_err(|_| format!("bad value in {line:?}"))?;
            match key.trim() {
                "format" => format = u32::try_from(value).ok(),
                "shards" => shards = usize::try_from(value).ok(),
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        match (format, shards) {
            (Some(format), Some(shards)) if shards > 0 => Ok(Manifest { format, shards }),
            _ => Err("missing or invalid `format` or `shards`".to_string()),
        }
    }
}

/// An opened data directory whose shard count matches the one asked for.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    manifest: Manifest,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DataDir {
    /// Opens `root`, creating it (and its manifest) when it does not exist or is empty.
    /// A directory made for another shard count is refused.
    pub fn open(root: &Path, shards: usize) -> Result<DataDir, StorageError> {
        assert!(shards > 0, "shard count must be positive");
        fs::create_dir_all(root).map_err(io_err(root))?;
        let manifest_path = root.join(MANIFEST_FILE);
        let manifest = match fs::read_to_string(&manifest_path) {
            Ok(text) => Manifest::parse(&text).map_err(|reason| StorageError::BadManifest {
                path: manifest_path.clone(),
                reason,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let has_db = fs::read_dir(root)
                    .map_err(io_err(root))?
                    .filter_map(Result::ok)
                    .any(|entry| entry.file_name().to_string_lossy().ends_with(".redb"));
                if has_db {
                    return Err(StorageError::BadManifest {
                        path: manifest_path,
                        reason: "missing, but the directory holds databases".to_string(),
                    });
                }
                let manifest = Manifest {
                    format: FORMAT_VERSION,
                    shards,
                };
                write_durably(&manifest_path, manifest.render().as_bytes())?;
                manifest
            }
            Err(e) => {
                return Err(StorageError::Io {
                    path: manifest_path,
                    source: e,
                })
            }
        };
        if manifest.shards != shards {
            return Err(StorageError::ShardCountMismatch {
                path: root.to_path_buf(),
                recorded: manifest.shards,
                requested: shards,
            });
        }
        if manifest.format != FORMAT_VERSION {
            return Err(StorageError::BadManifest {
                path: manifest_path,
                reason: format!(
                    "format {} is not supported by this build (it reads format {FORMAT_VERSION})",
                    manifest.format
                ),
            });
        }
        Ok(DataDir {
            root: root.to_path_buf(),
            manifest,
        })
    }

    /// Reads the manifest of an existing directory without checking the shard count.
    pub fn read_manifest(root: &Path) -> Result<Option<Manifest>, StorageError> {
        let path = root.join(MANIFEST_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => Manifest::parse(&text)
                .map(Some)
                .map_err(|reason| StorageError::BadManifest { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Io { path, source: e }),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn shards(&self) -> usize {
        self.manifest.shards
    }

    pub fn shard_path(&self, shard: usize) -> PathBuf {
        self.root.join(format!("shard-{shard}.redb"))
    }

    /// Returns the secret stored under `secrets/<name>`, creating it from `make` on first use.
    /// The file is written to a temporary name, fsynced and renamed, readable by the owner only.
    pub fn secret(
        &self,
        name: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, StorageError> {
        let dir = self.root.join("secrets");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join(name);
        match fs::read(&path) {
            Ok(bytes) if !bytes.is_empty() => Ok(bytes),
            Ok(_) => Err(StorageError::BadManifest {
                path,
                reason: "empty secret".to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = make();
                write_durably(&path, &bytes)?;
                Ok(bytes)
            }
            Err(e) => Err(StorageError::Io { path, source: e }),
        }
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_pins_the_shard_count() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path(), 2).unwrap();
        assert_eq!(data.shards(), 2);
        assert!(DataDir::open(dir.path(), 2).is_ok());
        let err = DataDir::open(dir.path(), 3).unwrap_err().to_string();
        assert!(err.contains("2 shards") && err.contains("3"), "{err}");
    }

    #[test]
    fn secrets_are_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path(), 1).unwrap();
        let a = data.secret("k", || vec![1, 2, 3]).unwrap();
        let b = data.secret("k", || vec![9]).unwrap();
        assert_eq!(a, b);
    }
}
