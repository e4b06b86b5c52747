//! A streaming zip writer (stored entries, no compression): each entry is written as its
//! bytes come, with its CRC-32 and sizes in a data descriptor after the data and in the
//! central directory at the end, so nothing has to be held in memory or seeked back to.
//! No zip64: an archive stops at 4 GiB - 1 and 65,535 entries (`ZipFull`).

use bytes::{BufMut, Bytes, BytesMut};

const LOCAL_HEADER: u32 = 0x0403_4b50;
const DATA_DESCRIPTOR: u32 = 0x0807_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_CENTRAL: u32 = 0x0605_4b50;
/// Bit 3: sizes and CRC follow the data; bit 11: names are UTF-8.
const FLAGS: u16 = 0x0008 | 0x0800;
const VERSION: u16 = 20;
/// 1980-01-01 00:00, the earliest DOS date (the entries carry no meaningful time).
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;
const ENTRIES_MAX: usize = u16::MAX as usize;
const OFFSET_MAX: u64 = u32::MAX as u64;

/// The archive would pass what a zip without zip64 can say.
#[derive(Debug, thiserror::Error)]
#[error("the archive would be larger than a zip without zip64 allows")]
pub struct ZipFull;

struct Entry {
    name: String,
    crc: u32,
    size: u32,
    offset: u32,
}

struct Open {
    name: String,
    crc: crc32fast::Hasher,
    size: u64,
    offset: u64,
}

#[derive(Default)]
pub struct ZipWriter {
    written: u64,
    entries: Vec<Entry>,
    open: Option<Open>,
}

impl ZipWriter {
    /// Starts an entry (ending the open one first); the answer is the bytes to send.
    pub fn begin(&mut self, name: &str) -> Result<Bytes, ZipFull> {
        let mut out = BytesMut::new();
        if self.open.is_some() {
            out.put(self.end()?);
        }
        if self.entries.len() >= ENTRIES_MAX {
            return Err(ZipFull);
        }
        let offset = self.written;
        let ended = out.len() as u64;
        out.put_u32_le(LOCAL_HEADER);
        out.put_u16_le(VERSION);
        out.put_u16_le(FLAGS);
        out.put_u16_le(0); // stored
        out.put_u16_le(DOS_TIME);
        out.put_u16_le(DOS_DATE);
        out.put_u32_le(0); // crc, sizes: in the data descriptor
        out.put_u32_le(0);
        out.put_u32_le(0);
        out.put_u16_le(name.len() as u16);
        out.put_u16_le(0);
        out.put_slice(name.as_bytes());
        self.open = Some(Open {
            name: name.to_string(),
            crc: crc32fast::Hasher::new(),
            size: 0,
            offset,
        });
        self.count(out.len() as u64 - ended)?;
        Ok(out.freeze())
    }

    /// Counts `data` into the open entry; the caller sends `data` itself.
    pub fn data(&mut self, data: &[u8]) -> Result<(), ZipFull> {
        let Some(open) = self.open.as_mut() else {
            return Err(ZipFull);
        };
        open.crc.update(data);
        open.size += data.len() as u64;
        self.count(data.len() as u64)
    }

    /// Ends the open entry: its data descriptor.
    pub fn end(&mut self) -> Result<Bytes, ZipFull> {
        let Some(open) = self.open.take() else {
            return Ok(Bytes::new());
        };
        let crc = open.crc.finalize();
        let size = u32::try_from(open.size).map_err(|_| ZipFull)?;
        let offset = u32::try_from(open.offset).map_err(|_| ZipFull)?;
        let mut out = BytesMut::with_capacity(16);
        out.put_u32_le(DATA_DESCRIPTOR);
        out.put_u32_le(crc);
        out.put_u32_le(size);
        out.put_u32_le(size);
        self.count(16)?;
        self.entries.push(Entry {
            name: open.name,
            crc,
            size,
            offset,
        });
        Ok(out.freeze())
    }

    /// Ends the archive: the central directory and its end record.
    pub fn finish(mut self) -> Result<Bytes, ZipFull> {
        let mut out = BytesMut::new();
        out.put(self.end()?);
        let start = self.written;
        let mut directory = BytesMut::new();
        for e in &self.entries {
            directory.put_u32_le(CENTRAL_HEADER);
            directory.put_u16_le(VERSION);
            directory.put_u16_le(VERSION);
            directory.put_u16_le(FLAGS);
            directory.put_u16_le(0);
            directory.put_u16_le(DOS_TIME);
            directory.put_u16_le(DOS_DATE);
            directory.put_u32_le(e.crc);
            directory.put_u32_le(e.size);
            directory.put_u32_le(e.size);
            directory.put_u16_le(e.name.len() as u16);
            directory.put_u16_le(0);
            directory.put_u16_le(0);
            directory.put_u16_le(0);
            directory.put_u16_le(0);
            directory.put_u32_le(0);
            directory.put_u32_le(e.offset);
            directory.put_slice(e.name.as_bytes());
        }
        let size = directory.len() as u64;
        self.count(size)?;
        let start = u32::try_from(start).map_err(|_| ZipFull)?;
        let size = u32::try_from(size).map_err(|_| ZipFull)?;
        out.put(directory);
        out.put_u32_le(END_OF_CENTRAL);
        out.put_u16_le(0);
        out.put_u16_le(0);
        out.put_u16_le(self.entries.len() as u16);
        out.put_u16_le(self.entries.len() as u16);
        out.put_u32_le(size);
        out.put_u32_le(start);
        out.put_u16_le(0);
        self.count(22)?;
        Ok(out.freeze())
    }

    fn count(&mut self, n: u64) -> Result<(), ZipFull> {
        self.written += n;
        if self.written > OFFSET_MAX {
            return Err(ZipFull);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two entries: every offset the central directory gives points at a local header.
    #[test]
    fn offsets_point_at_headers() {
        let mut z = ZipWriter::default();
        let mut all = Vec::new();
        for (name, data) in [("a", &b"one"[..]), ("bb", &b"second"[..])] {
            all.extend_from_slice(&z.begin(name).unwrap());
            z.data(data).unwrap();
            all.extend_from_slice(data);
        }
        all.extend_from_slice(&z.finish().unwrap());
        let end = &all[all.len() - 22..];
        let cd_size = u32::from_le_bytes([end[12], end[13], end[14], end[15]]) as usize;
        let cd_start = u32::from_le_bytes([end[16], end[17], end[18], end[19]]) as usize;
        assert_eq!(cd_start + cd_size + 22, all.len());
        let mut at = cd_start;
        for _ in 0..2 {
            let h = &all[at..];
            assert_eq!(&h[..4], &CENTRAL_HEADER.to_le_bytes());
            let name_len = u16::from_le_bytes([h[28], h[29]]) as usize;
            let offset = u32::from_le_bytes([h[42], h[43], h[44], h[45]]) as usize;
            assert_eq!(&all[offset..offset + 4], &LOCAL_HEADER.to_le_bytes());
            at += 46 + name_len;
        }
    }

    /// The layout checked by hand against APPNOTE: one entry "a" holding "hi".
    #[test]
    fn one_entry() {
        let mut z = ZipWriter::default();
        let mut all = Vec::new();
        all.extend_from_slice(&z.begin("a").unwrap());
        z.data(b"hi").unwrap();
        all.extend_from_slice(b"hi");
        all.extend_from_slice(&z.finish().unwrap());
        // local header 30 + 1, data 2, descriptor 16, central 46 + 1, end 22
        assert_eq!(all.len(), 31 + 2 + 16 + 47 + 22);
        assert_eq!(&all[..4], &LOCAL_HEADER.to_le_bytes());
        let crc = crc32fast::hash(b"hi");
        assert_eq!(&all[37..41], &crc.to_le_bytes());
        let end = &all[all.len() - 22..];
        assert_eq!(&end[..4], &END_OF_CENTRAL.to_le_bytes());
        assert_eq!(u32::from_le_bytes([end[16], end[17], end[18], end[19]]), 49);
    }
}
