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
//! There are two files, used in turn: a checkpoint switches to the other one and writes it
//! from its start again, over its old frames. The checkpoint's own fsync runs in the
//! background (`Tap::defer_next_sync`), so until it is done the frames it covers must stay
//! where they are; they do, in the file just left, which is only written again at the next
//! checkpoint, once this one is durable (its writes wait for that). A file stays as large as
//! the most written between two checkpoints and its blocks stay allocated (the fsync of an
//! overwrite writes no metadata). Reading a file stops at the first frame that is torn,
//! damaged or does not follow its predecessor's number: old frames past the end of the new
//! ones carry lower numbers.
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

/// The log files next to a partition's database: `shard-0.redb` logs to `shard-0.wal` and
/// `shard-0.wal2`, in turn.
pub(crate) fn paths_for(db: &Path) -> [PathBuf; 2] {
    [db.with_extension("wal"), db.with_extension("wal2")]
}

/// A frame read back: its number and its records.
pub(crate) type Frame = (u64, Vec<Vec<u8>>);

/// One log file, written by the writer thread.
pub(crate) struct Wal {
    file: File,
    path: PathBuf,
    /// Where the next frame goes.
    at: u64,
}

impl Wal {
    pub(crate) fn new(file: File, path: PathBuf) -> Wal {
        Wal { file, path, at: 0 }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written since this file was last started again.
    pub(crate) fn written(&self) -> u64 {
        self.at
    }

    /// Appends frame `seq` of `records` and waits until it is on disk.
    pub(crate) fn append(&mut self, seq: u64, records: &[Vec<u8>]) -> io::Result<()> {
        let frame = encode_frame(seq, records)?;
        self.file.write_all_at(&frame, self.at)?;
        self.file.sync_data()?;
        self.at += frame.len() as u64;
        Ok(())
    }

    /// Once the frames in it are no longer needed: the next frame goes at the start.
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

/// The frames of both files that follow frame `stored`: in order, from `stored + 1`, up to
/// the first missing number. Also the highest number found (0: none).
pub(crate) fn frames_after(files: &[File], stored: u64) -> io::Result<(Vec<Frame>, u64)> {
    let mut frames = Vec::new();
    for file in files {
        frames.extend(read_frames(file)?);
    }
    frames.sort_by_key(|(seq, _)| *seq);
    let highest = frames.last().map_or(0, |(seq, _)| *seq);
    let mut next = stored + 1;
    let mut after = Vec::new();
    for (seq, records) in frames {
        if seq < next {
            continue;
        }
        if seq != next {
            break;
        }
        after.push((seq, records));
        next += 1;
    }
    Ok((after, highest))
}

/// The frames at the start of `file`, in order, each with its number and records: up to the
/// first torn or damaged frame, or the first whose number does not follow the one before.
pub(crate) fn read_frames(file: &File) -> io::Result<Vec<Frame>> {
    let len = file.metadata()?.len();
    let mut frames: Vec<Frame> = Vec::new();
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
        (Wal::new(file, path), reader)
    }

    #[test]
    fn frames_read_back_in_order_until_the_first_torn_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, reader) = log_in(dir.path());
        wal.append(1, &[b"a".to_vec(), b"bc".to_vec()]).unwrap();
        wal.append(2, &[Vec::new()]).unwrap();
        wal.append(3, &[b"d".repeat(1000)]).unwrap();
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
        for seq in 1..=5 {
            wal.append(seq, &[b"old old old".to_vec()]).unwrap();
        }
        wal.restart();
        wal.append(6, &[b"new".to_vec()]).unwrap();
        wal.append(7, &[b"newer".to_vec()]).unwrap();
        let frames = read_frames(&reader).unwrap();
        let seqs: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![6, 7]);
        assert_eq!(frames[1].1, vec![b"newer".to_vec()]);
        // Same length as the frame it overwrote: the next old frame is still not taken.
        wal.restart();
        wal.append(8, &[b"sameleng_00".to_vec()]).unwrap();
        let seqs: Vec<u64> = read_frames(&reader).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(seqs, vec![8]);
    }

    /// The two files in turn: the frames after the stored number come from both, in order,
    /// and stop at a gap.
    #[test]
    fn frames_after_a_number_come_from_both_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, ra) = log_in(dir.path());
        let path_b = dir.path().join("s.wal2");
        let file_b = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path_b)
            .unwrap();
        let rb = file_b.try_clone().unwrap();
        let mut b = Wal::new(file_b, path_b);
        for seq in 1..=3 {
            a.append(seq, &[vec![seq as u8]]).unwrap();
        }
        for seq in 4..=5 {
            b.append(seq, &[vec![seq as u8]]).unwrap();
        }
        let files = [ra, rb];
        let seqs = |stored| {
            let (after, highest) = frames_after(&files, stored).unwrap();
            (
                after.into_iter().map(|f| f.0).collect::<Vec<u64>>(),
                highest,
            )
        };
        assert_eq!(seqs(2), (vec![3, 4, 5], 5));
        assert_eq!(seqs(5), (vec![], 5));
        // File a started again: frame 6 over frame 1; 2 and 3 are old and not read.
        a.restart();
        a.append(6, &[vec![6]]).unwrap();
        assert_eq!(seqs(3), (vec![4, 5, 6], 6));
        // A gap (frame 4 lost): nothing after it is taken.
        b.restart();
        b.append(7, &[vec![7]]).unwrap();
        assert_eq!(seqs(5), (vec![6, 7], 7));
        assert_eq!(seqs(3), (vec![], 7));
    }
}
