//! Image headers read by hand, before ffmpeg sees the file: the format from its magic bytes,
//! the dimensions the header claims, and the EXIF orientation. This is what lets a PNG that
//! claims 50,000 x 50,000 be refused from its first 24 bytes, without allocating a frame.

/// Bytes of the file's start read for sniffing (JPEG APP segments come before SOF and may
/// hold a 64 KiB EXIF block each).
pub const SNIFF_BYTES_MAX: usize = 256 * 1024;
/// IFD entries read at most (a malicious TIFF could claim 65,535).
const IFD_ENTRIES_MAX: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Gif,
    WebP,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Gif => "gif",
            ImageFormat::WebP => "webp",
        }
    }
}

/// What an image's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// EXIF orientation 1..=8 (1 when absent or unreadable).
    pub orientation: u8,
}

/// The image format from magic bytes alone, if the start looks like one we take.
pub fn image_format(head: &[u8]) -> Option<ImageFormat> {
    if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(ImageFormat::Gif)
    } else if head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// Whether a WebP is animated (its VP8X chunk's animation flag): FFmpeg 5.1's decoder reads
/// no frame of one, so it is refused at upload rather than failing in processing.
pub fn animated_webp(head: &[u8]) -> bool {
    image_format(head) == Some(ImageFormat::WebP)
        && head.get(12..16) == Some(b"VP8X".as_slice())
        && head.get(20).is_some_and(|flags| flags & 0x02 != 0)
}

/// Reads the header of an image whose format `image_format` recognised. `None` when the
/// header is damaged or the dimensions are not within the bytes given.
pub fn image_header(head: &[u8]) -> Option<ImageHeader> {
    let format = image_format(head)?;
    let (width, height, orientation) = match format {
        ImageFormat::Png => png(head)?,
        ImageFormat::Gif => {
            let w = u16::from_le_bytes([*head.get(6)?, *head.get(7)?]);
            let h = u16::from_le_bytes([*head.get(8)?, *head.get(9)?]);
            (u32::from(w), u32::from(h), 1)
        }
        ImageFormat::Jpeg => jpeg(head)?,
        ImageFormat::WebP => webp(head)?,
    };
    (width > 0 && height > 0).then_some(ImageHeader {
        format,
        width,
        height,
        orientation,
    })
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn png(b: &[u8]) -> Option<(u32, u32, u8)> {
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4).
    if b.get(12..16)? != b"IHDR" {
        return None;
    }
    let (w, h) = (be32(b, 16)?, be32(b, 20)?);
    // An eXIf chunk may carry an orientation; walk the chunks within the sniffed bytes.
    let mut at = 8;
    let mut orientation = 1;
    while let (Some(len), Some(kind)) = (be32(b, at), b.get(at + 4..at + 8)) {
        let start = at + 8;
        let end = start.checked_add(len as usize)?;
        if kind == b"eXIf" {
            orientation = b.get(start..end).and_then(tiff_orientation).unwrap_or(1);
            break;
        }
        if kind == b"IDAT" || kind == b"IEND" {
            break;
        }
        at = end + 4;
    }
    Some((w, h, orientation))
}

fn jpeg(b: &[u8]) -> Option<(u32, u32, u8)> {
    let mut at = 2;
    let mut orientation = 1;
    loop {
        // Skip fill bytes before a marker.
        while *b.get(at)? == 0xFF && *b.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *b.get(at)? != 0xFF {
            return None;
        }
        let marker = *b.get(at + 1)?;
        at += 2;
        if (0xD0..=0xD9).contains(&marker) || marker == 0x01 {
            continue; // markers without a length
        }
        let len = usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
        if len < 2 {
            return None;
        }
        let seg = b.get(at + 2..at + len);
        match marker {
            // SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC).
            0xC0..=0xCF if marker != 0xC4 && marker != 0xC8 && marker != 0xCC => {
                let s = seg?;
                let h = u16::from_be_bytes([*s.get(1)?, *s.get(2)?]);
                let w = u16::from_be_bytes([*s.get(3)?, *s.get(4)?]);
                return Some((u32::from(w), u32::from(h), orientation));
            }
            0xE1 => {
                if let Some(tiff) = seg.and_then(|s| s.strip_prefix(b"Exif\0\0")) {
                    orientation = tiff_orientation(tiff).unwrap_or(1);
                }
            }
            0xDA => return None, // scan data before any frame header
            _ => {}
        }
        at += len;
    }
}

fn webp(b: &[u8]) -> Option<(u32, u32, u8)> {
    let le24 = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes([
            *b.get(at)?,
            *b.get(at + 1)?,
            *b.get(at + 2)?,
            0,
        ]))
    };
    match b.get(12..16)? {
        b"VP8 " => {
            // Frame tag (3), start code (3), then 14-bit width and height.
            let w = u16::from_le_bytes([*b.get(26)?, *b.get(27)?]) & 0x3FFF;
            let h = u16::from_le_bytes([*b.get(28)?, *b.get(29)?]) & 0x3FFF;
            Some((u32::from(w), u32::from(h), 1))
        }
        b"VP8L" => {
            let bits = u32::from_le_bytes(b.get(21..25)?.try_into().ok()?);
            Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 1))
        }
        b"VP8X" => {
            let (w, h) = (le24(24)? + 1, le24(27)? + 1);
            // Chunks follow the 18-byte VP8X chunk; look for EXIF within the sniffed bytes.
            let mut at = 30;
            let mut orientation = 1;
            while let (Some(kind), Some(len)) = (b.get(at..at + 4), b.get(at + 4..at + 8)) {
                let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
                let start = at + 8;
                if kind == b"EXIF" {
                    let data = b.get(start..start.checked_add(len)?)?;
                    let data = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
                    orientation = tiff_orientation(data).unwrap_or(1);
                    break;
                }
                at = start.checked_add(len + (len & 1))?;
            }
            Some((w, h, orientation))
        }
        _ => None,
    }
}

/// Does the file end the way a whole file of `format` ends? `tail` is its last bytes
/// (up to `TAIL_BYTES`), `len` its length. Catches truncated uploads before processing.
pub fn complete(format: ImageFormat, tail: &[u8], len: u64) -> bool {
    // Trailing zero padding (some cameras and editors add it) is ignored.
    let end = tail.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let tail = &tail[..end];
    len > 0
        && match format {
            // Vendor trailers may follow the EOI marker: it must be within the tail.
            ImageFormat::Jpeg => tail.windows(2).any(|w| w == [0xFF, 0xD9]),
            ImageFormat::Png => tail.ends_with(&[b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]),
            ImageFormat::Gif => tail.ends_with(b";"),
            ImageFormat::WebP => true, // checked against the RIFF size in `riff_complete`
        }
}

/// A WebP's RIFF header states its size: the file must hold all of it.
pub fn riff_complete(head: &[u8], len: u64) -> bool {
    head.get(4..8)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .is_some_and(|size| u64::from(size) + 8 <= len)
}

/// Bytes at the end of an image read by `complete`.
pub const TAIL_BYTES: usize = 64 * 1024;

/// The Orientation tag (0x0112) of IFD0 in a TIFF block.
pub fn tiff_orientation(t: &[u8]) -> Option<u8> {
    let le = match t.get(0..2)? {
        b"II" => true,
        b"MM" => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = [*t.get(at)?, *t.get(at + 1)?];
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b: [u8; 4] = t.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let count = usize::from(u16_at(ifd)?).min(IFD_ENTRIES_MAX);
    for i in 0..count {
        let entry = ifd + 2 + i * 12;
        if u16_at(entry)? == 0x0112 {
            let v = u16_at(entry + 8)?;
            return (1..=8).contains(&v).then_some(v as u8);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_bomb_header_is_read_without_decoding() {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        b.extend_from_slice(&50_000u32.to_be_bytes());
        b.extend_from_slice(&50_000u32.to_be_bytes());
        b.extend_from_slice(&[8, 6, 0, 0, 0]);
        let h = image_header(&b).unwrap();
        assert_eq!(
            (h.format, h.width, h.height),
            (ImageFormat::Png, 50_000, 50_000)
        );
    }

    #[test]
    fn an_animated_webp_is_told_from_a_still_one() {
        let vp8x = |flags: u8| {
            let mut b = b"RIFF\x38\x0a\0\0WEBPVP8X\x0a\0\0\0".to_vec();
            b.extend_from_slice(&[flags, 0, 0, 0, 63, 0, 0, 63, 0, 0]);
            b
        };
        assert!(animated_webp(&vp8x(0x02)));
        assert!(animated_webp(&vp8x(0x12)));
        assert!(!animated_webp(&vp8x(0x10)));
        assert!(!animated_webp(b"RIFF\x38\x0a\0\0WEBPVP8L\x0a\0\0\0\x02"));
        assert!(!animated_webp(b"GIF89a"));
    }

    #[test]
    fn orientation_from_tiff() {
        // Little-endian TIFF, IFD0 at 8 with one entry: Orientation SHORT 1 = 6.
        let mut t = b"II*\0\x08\0\0\0\x01\0".to_vec();
        t.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
        t.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(tiff_orientation(&t), Some(6));
        assert_eq!(tiff_orientation(b"junk"), None);
    }

    #[test]
    fn truncated_headers_are_none() {
        assert!(image_header(b"\x89PNG\r\n\x1a\n").is_none());
        assert!(image_header(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00]).is_none());
        assert!(image_header(b"RIFF\0\0\0\0WEBPVP8 ").is_none());
    }
}
