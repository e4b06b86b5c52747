//! A partition's write-ahead log: what makes a logged write durable without an fsync of the
//! database.
//!
//! A redb commit that is durable writes every page the transaction dirtied, scattered over
//! the file, then fsyncs. On a disk that does a few thousand random writes a second, that is
//! what limits writes (docs/benchmarks.md, "A write-ahead log"). A logged write instead
//! appends one frame to this file and fsyncs it (one sequential write), and its redb commit
//! stays in memory (`Durability::None`). Every so often a checkpoint commits durably, which
//! writes each dirtied page once however many writes dirtied it, and the log starts again.
//!
//! A frame holds the records of one commit's logged writes, in order: what the domain needs
//! to run those writes again (`Partition::open_logged`'s replay). Frames are numbered; every
//! logged commit stores its frame's number in the database (`WAL_SEQ`), and every durable
//! commit stores the last number used. After a crash, redb comes back at its last durable
//! commit, and the frames numbered after the one it stores are replayed in order.
//!
//! The file is written from its start again after each checkpoint, over the old frames, so it
//! stays as large as the most written between two checkpoints and its blocks are already
//! allocated (the fsync of an overwrite writes no metadata). Reading stops at the first frame
//! that is torn, damaged or does not follow its predecessor's number: old frames past the end
//! of the new ones carry lower numbers.
//!
//! Frame: magic `NWAL` (4 bytes), payload length (u32), number (u64), CRC-32 of length,
//! number and payload (u32), payload. Payload: per record, its length (u32) then its bytes.
//! All little-endian.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use redb::TableDefinition;

/// The number of the last frame the database holds the effects of.
pub(crate) const WAL_SEQ: TableDefinition<&str, u64> = TableDefinition::new("nova_wal");
pub(crate) const WAL_SEQ_KEY: &str = "seq";

const MAGIC: &[u8; 4] = b"NWAL";
const HEADER_BYTES: usize = 4 + 4 + 8 + 4;
/// A frame longer than this is taken for damage when read (a commit's records are far
/// smaller: a batch holds at most `commit_batch_ops_max` writes).
const FRAME_BYTES_MAX: usize = 256 << 20;

/// The log file next to a partition's database: `shard-0.redb` logs to `shard-0.wal`.
pub(crate) fn path_for(db: &Path) -> PathBuf {
    db.with_extension("wal")
}

/// The log, owned by the writer thread.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next frame goes.
    at: u64,
    /// The next frame's number.
    next_seq: u64,
}

impl Wal {
    pub(crate) fn new(file: File, path: PathBuf, next_seq: u64) -> Wal {
        Wal {
            file,
            path,
            at: 0,
            next_seq,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written since the last checkpoint.
    pub(crate) fn written(&self) -> u64 {
        self.at
    }

    /// The number the next frame will carry.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest number given out so far (0 before any).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Appends one frame of `records` and waits until it is on disk. The number is used up
    /// whether or not this succeeds, so a frame that failed half-way is never mistaken for
    /// a later one.
    pub(crate) fn append(&mut self, records: &[Vec<u8>]) -> io::Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let frame = encode_frame(seq, records)?;
        self.file.write_all_at(&frame, self.at)?;
        self.file.sync_data()?;
        self.at += frame.len() as u64;
        Ok(seq)
    }

    /// After a durable commit: the frames so far are no longer needed.
    pub(crate) fn restart(&mut self) {
        self.at = 0;
    }
}

fn encode_frame(seq: u64, records: &[Vec<u8>]) -> io::Result<Vec<u8>> {
    let payload_len: usize = records.iter().map(|r| 4 + r.len()).sum();
    if payload_len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a commit's log records exceed the frame limit",
        ));
    }
    let mut frame = Vec::with_capacity(HEADER_BYTES + payload_len);
    frame.extend_from_slice(MAGIC);
    frame.extend_from_slice(&(payload_len as u32).to_le_bytes());
    frame.extend_from_slice(&seq.to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    for r in records {
        frame.extend_from_slice(&(r.len() as u32).to_le_bytes());
        frame.extend_from_slice(r);
    }
    let crc = frame_crc(&frame[4..16], &frame[HEADER_BYTES..]);
    frame[16..20].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

fn frame_crc(len_and_seq: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_and_seq);
    h.update(payload);
    h.finalize()
}

/// The frames at the start of `file`, in order, each with its number and records: up to the
/// first torn or damaged frame, or the first whose number does not follow the one before.
pub(crate) fn read_frames(file: &File) -> io::Result<Vec<(u64, Vec<Vec<u8>>)>> {
    let len = file.metadata()?.len();
    let mut frames: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
    let mut at = 0u64;
    let mut header = [0u8; HEADER_BYTES];
    while at + HEADER_BYTES as u64 <= len {
        file.read_exact_at(&mut header, at)?;
        if &header[..4] != MAGIC {
            break;
        }
        let payload_len = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[16..20].try_into().unwrap_or_default());
        let end = at + (HEADER_BYTES + payload_len) as u64;
        if payload_len > FRAME_BYTES_MAX || end > len {
            break;
        }
        if frames.last().is_some_and(|(prev, _)| seq != prev + 1) {
            break;
        }
        let mut payload = vec![0u8; payload_len];
        file.read_exact_at(&mut payload, at + HEADER_BYTES as u64)?;
        if frame_crc(&header[4..16], &payload) != crc {
            break;
        }
        match split_records(&payload) {
            Some(records) => frames.push((seq, records)),
            None => break,
        }
        at = end;
    }
    Ok(frames)
}

fn split_records(mut payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut records = Vec::new();
    while !payload.is_empty() {
        let (len, rest) = payload.split_at_checked(4)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (record, rest) = rest.split_at_checked(len)?;
        records.push(record.to_vec());
        payload = rest;
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &Path) -> (Wal, File) {
        let path = dir.join("s.wal");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let reader = file.try_clone().unwrap();
        (Wal::new(file, path, 1), reader)
    }

    #[test]
    fn frames_read_back_in_order_until_the_first_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, reader) = log_in(dir.path());
        assert_eq!(wal.append(&[b"a".to_vec(), b"bc".to_vec()]).unwrap(), 1);
        assert_eq!(wal.append(&[Vec::new()]).unwrap(), 2);
        assert_eq!(wal.append(&[b"d".repeat(1000)]).unwrap(), 3);
        let frames = read_frames(&reader).unwrap();
        assert_eq!(
            frames,
            vec![
                (1, vec![b"a".to_vec(), b"bc".to_vec()]),
                (2, vec![Vec::new()]),
                (3, vec![b"d".repeat(1000)]),
            ]
        );
        // The last frame torn (its tail never reached the disk): the two before it stand.
        let len = reader.metadata().unwrap().len();
        reader.set_len(len - 10).unwrap();
        assert_eq!(read_frames(&reader).unwrap().len(), 2);
        // A flipped byte in the second frame's payload: only the first stands.
        let second_payload = (HEADER_BYTES + 4 + 1 + 4 + 2 + HEADER_BYTES) as u64;
        reader.write_all_at(&[0xFF], second_payload).unwrap();
        assert_eq!(read_frames(&reader).unwrap().len(), 1);
    }

    /// After a checkpoint the file is written from its start again: the old frames past the
    /// new ones are not read as if they followed them.
    #[test]
    fn old_frames_after_a_restart_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, reader) = log_in(dir.path());
        for _ in 0..5 {
            wal.append(&[b"old old old".to_vec()]).unwrap();
        }
        wal.restart();
        wal.append(&[b"new".to_vec()]).unwrap();
        wal.append(&[b"newer".to_vec()]).unwrap();
        let frames = read_frames(&reader).unwrap();
        let seqs: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![6, 7]);
        assert_eq!(frames[1].1, vec![b"newer".to_vec()]);
        // Same length as the frame it overwrote: the next old frame is still not taken.
        wal.restart();
        wal.append(&[b"sameleng_00".to_vec()]).unwrap();
        let seqs: Vec<u64> = read_frames(&reader).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(seqs, vec![8]);
    }
}
