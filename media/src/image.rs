//! Still pictures: decode one frame, scale, convert to sRGB (see `icc`), turn upright,
//! flatten transparency, and write a fresh JPEG. Nothing of the source's metadata is copied:
//! the output is made from pixels alone, so EXIF (GPS included), XMP, comments and ICC
//! profiles cannot survive.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use crate::icc::ToSrgb;
use crate::probe::{self, Budget};
use crate::MediaError;

/// mjpeg quality scale (2 best .. 31 worst), as `ffmpeg -q:v`.
pub(crate) const JPEG_QSCALE: i32 = 3;
/// ffmpeg's FF_QP2LAMBDA.
const QP2LAMBDA: i32 = 118;

/// Packed RGBA pixels, rows without padding.
pub(crate) struct Rgba {
    pub w: u32,
    pub h: u32,
    pub data: Vec<u8>,
}

fn failed(what: &str) -> impl Fn(ffmpeg::Error) -> MediaError + '_ {
    move |e| MediaError::Failed(format!("{what}: {e}"))
}

/// Fits (w, h) into a box whose longest side is `longest`, never enlarging; sides >= 1.
pub fn fit(w: u32, h: u32, longest: u32) -> (u32, u32) {
    let side = w.max(h);
    if side <= longest {
        return (w, h);
    }
    let scale = |v: u32| {
        ((u64::from(v) * u64::from(longest) + u64::from(side) / 2) / u64::from(side)).max(1) as u32
    };
    (scale(w), scale(h))
}

/// Decodes the first picture of the file at `path` (opened with only `demuxer` allowed).
pub(crate) fn first_frame(
    path: &Path,
    demuxer: &str,
    budget: &Budget,
) -> Result<ffmpeg::frame::Video, MediaError> {
    let mut input = probe::open_as(path, demuxer)?;
    let stream = input
        .streams()
        .best(ffmpeg::media::Type::Video)
        .ok_or_else(|| MediaError::Unreadable("no picture".into()))?;
    let index = stream.index();
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
        .and_then(|c| c.decoder().video())
        .map_err(|e| MediaError::Unreadable(e.to_string()))?;
    let mut frame = ffmpeg::frame::Video::empty();
    for (s, packet) in input.packets() {
        budget.check()?;
        if s.index() != index {
            continue;
        }
        // A damaged packet is skipped; the error only counts if no frame ever comes.
        if decoder.send_packet(&packet).is_err() {
            continue;
        }
        if decoder.receive_frame(&mut frame).is_ok() {
            return Ok(frame);
        }
    }
    let _ = decoder.send_eof();
    if decoder.receive_frame(&mut frame).is_ok() {
        return Ok(frame);
    }
    Err(MediaError::Unreadable("no picture could be decoded".into()))
}

/// Scales `frame` to (w, h) RGBA.
pub(crate) fn to_rgba(frame: &ffmpeg::frame::Video, w: u32, h: u32) -> Result<Rgba, MediaError> {
    let mut scaler = scaling::Context::get(
        frame.format(),
        frame.width(),
        frame.height(),
        Pixel::RGBA,
        w,
        h,
        scaling::Flags::LANCZOS,
    )
    .map_err(failed("scaler"))?;
    let mut out = ffmpeg::frame::Video::empty();
    scaler.run(frame, &mut out).map_err(failed("scaling"))?;
    let stride = out.stride(0);
    let row = w as usize * 4;
    let plane = out.data(0);
    let mut data = Vec::with_capacity(row * h as usize);
    for y in 0..h as usize {
        data.extend_from_slice(&plane[y * stride..y * stride + row]);
    }
    Ok(Rgba { w, h, data })
}

/// Applies an EXIF orientation (1..=8), so the result is upright and unmirrored.
pub(crate) fn orient(src: Rgba, orientation: u8) -> Rgba {
    if !(2..=8).contains(&orientation) {
        return src;
    }
    let (w, h) = (src.w as usize, src.h as usize);
    let swap = orientation >= 5;
    let (dw, dh) = if swap { (h, w) } else { (w, h) };
    let mut data = vec![0u8; src.data.len()];
    for sy in 0..h {
        for sx in 0..w {
            let (dx, dy) = match orientation {
                2 => (w - 1 - sx, sy),
                3 => (w - 1 - sx, h - 1 - sy),
                4 => (sx, h - 1 - sy),
                5 => (sy, sx),
                6 => (h - 1 - sy, sx),
                7 => (h - 1 - sy, w - 1 - sx),
                _ => (sy, w - 1 - sx), // 8
            };
            let s = (sy * w + sx) * 4;
            let d = (dy * dw + dx) * 4;
            data[d..d + 4].copy_from_slice(&src.data[s..s + 4]);
        }
    }
    Rgba {
        w: dw as u32,
        h: dh as u32,
        data,
    }
}

/// Composites transparent pixels onto white (JPEG has no alpha).
pub(crate) fn flatten(img: &mut Rgba) {
    for p in img.data.chunks_exact_mut(4) {
        let a = u32::from(p[3]);
        if a < 255 {
            for c in &mut p[..3] {
                *c = ((u32::from(*c) * a + 255 * (255 - a) + 127) / 255) as u8;
            }
            p[3] = 255;
        }
    }
}

/// Encodes RGBA pixels as a baseline JPEG with no metadata segments.
pub(crate) fn encode_jpeg(img: &Rgba) -> Result<Vec<u8>, MediaError> {
    let mut rgba = ffmpeg::frame::Video::new(Pixel::RGBA, img.w, img.h);
    let stride = rgba.stride(0);
    let row = img.w as usize * 4;
    {
        let plane = rgba.data_mut(0);
        for y in 0..img.h as usize {
            plane[y * stride..y * stride + row].copy_from_slice(&img.data[y * row..(y + 1) * row]);
        }
    }
    let mut scaler = scaling::Context::get(
        Pixel::RGBA,
        img.w,
        img.h,
        Pixel::YUVJ420P,
        img.w,
        img.h,
        scaling::Flags::BICUBIC,
    )
    .map_err(failed("scaler"))?;
    let mut yuv = ffmpeg::frame::Video::empty();
    scaler
        .run(&rgba, &mut yuv)
        .map_err(failed("colour conversion"))?;
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::MJPEG)
        .ok_or_else(|| MediaError::Failed("no JPEG encoder in this ffmpeg".into()))?;
    let mut enc = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(failed("encoder"))?;
    enc.set_width(img.w);
    enc.set_height(img.h);
    enc.set_format(Pixel::YUVJ420P);
    enc.set_time_base((1, 25));
    // BITEXACT: no "Lavc" comment segment; QSCALE: a fixed quality, as `-q:v`.
    enc.set_flags(ffmpeg::codec::Flags::QSCALE | ffmpeg::codec::Flags::BITEXACT);
    enc.set_global_quality(JPEG_QSCALE * QP2LAMBDA);
    let mut enc = enc.open().map_err(failed("JPEG encoder"))?;
    yuv.set_pts(Some(0));
    // SAFETY: `yuv` is a valid, owned frame; quality is a plain int field the encoder reads
    // for the fixed quality scale.
    unsafe {
        (*yuv.as_mut_ptr()).quality = JPEG_QSCALE * QP2LAMBDA;
    }
    enc.send_frame(&yuv).map_err(failed("JPEG encoding"))?;
    enc.send_eof().map_err(failed("JPEG encoding"))?;
    let mut packet = ffmpeg::Packet::empty();
    let mut out = Vec::new();
    while enc.receive_packet(&mut packet).is_ok() {
        out.extend_from_slice(packet.data().unwrap_or(&[]));
    }
    if out.is_empty() {
        return Err(MediaError::Failed("the JPEG encoder gave nothing".into()));
    }
    Ok(out)
}

/// An upright sRGB RGBA copy of `frame` whose longest side is at most `longest`.
///
/// Colour is converted after scaling: the same result to within rounding (both are gamma
/// encoded), at the cost of the output's pixels rather than the source's.
pub(crate) fn upright(
    frame: &ffmpeg::frame::Video,
    orientation: u8,
    longest: u32,
    colour: &ToSrgb,
) -> Result<Rgba, MediaError> {
    let swap = (5..=8).contains(&orientation);
    let (sw, sh) = (frame.width(), frame.height());
    let (dw, dh) = if swap { (sh, sw) } else { (sw, sh) };
    let (fw, fh) = fit(dw, dh, longest);
    let (pw, ph) = if swap { (fh, fw) } else { (fw, fh) };
    let mut img = to_rgba(frame, pw, ph)?;
    // Before flattening: the white behind transparency is sRGB white, not the profile's.
    colour.apply(&mut img);
    let mut img = orient(img, orientation);
    flatten(&mut img);
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_never_enlarges() {
        assert_eq!(fit(100, 50, 320), (100, 50));
        assert_eq!(fit(4000, 3000, 1280), (1280, 960));
        assert_eq!(fit(3000, 4000, 320), (240, 320));
        assert_eq!(fit(10_000, 1, 320), (320, 1));
    }

    #[test]
    fn orientation_six_turns_clockwise() {
        // 2x1: red, blue. Turned a quarter clockwise: 1x2, red on top.
        let src = Rgba {
            w: 2,
            h: 1,
            data: vec![255, 0, 0, 255, 0, 0, 255, 255],
        };
        let out = orient(src, 6);
        assert_eq!((out.w, out.h), (1, 2));
        assert_eq!(&out.data[0..3], &[255, 0, 0]);
        let src = Rgba {
            w: 2,
            h: 1,
            data: vec![255, 0, 0, 255, 0, 0, 255, 255],
        };
        let out = orient(src, 8);
        assert_eq!(&out.data[0..3], &[0, 0, 255]);
    }
}
