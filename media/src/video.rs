//! Video: one decoding pass feeds every rung of the ladder (H.264 yuv420p + AAC in MP4 with
//! faststart), each through its own filter graph (rotation, scale, pixel format) and encoder.
//! A rung the source already is, when the source is compliant, is copied without
//! re-encoding. The first picture becomes the poster.

use std::path::{Path, PathBuf};

use ffmpeg::{codec, filter, format, frame, media, Dictionary, Packet, Rational};
use ffmpeg_next as ffmpeg;

use crate::icc::ToSrgb;
use crate::image;
use crate::probe::{self, Budget, Probe};
use crate::{MediaError, Rendition};

/// Ladder rungs by the short side of the picture.
pub const LADDER: [u32; 3] = [360, 720, 1080];
/// x264 settings; the bench's ffmpeg command uses the same ones.
pub const X264_PRESET: &str = "veryfast";
pub const X264_CRF: &str = "23";
pub const AAC_BIT_RATE: usize = 128_000;
pub const AAC_SAMPLE_RATE: i32 = 48_000;
/// Longest side of the poster picture.
pub const POSTER_SIDE_MAX: u32 = 1280;

fn failed(what: &'static str) -> impl Fn(ffmpeg::Error) -> MediaError {
    move |e| MediaError::Failed(format!("{what}: {e}"))
}

/// The rungs (width, height) for a picture shown at `dw` x `dh`, never above the source.
pub fn ladder(dw: u32, dh: u32) -> Vec<(u32, u32)> {
    let short = dw.min(dh);
    let mut rungs: Vec<u32> = LADDER.iter().copied().filter(|r| *r <= short).collect();
    if rungs.is_empty() {
        rungs.push(short);
    }
    let even = |v: u64| (v.div_ceil(2) * 2).max(2) as u32;
    rungs
        .into_iter()
        .map(|r| {
            let long = u64::from(dw.max(dh)) * u64::from(r) / u64::from(short);
            let (r, long) = (even(u64::from(r)), even(long));
            if dw <= dh {
                (r, long)
            } else {
                (long, r)
            }
        })
        .collect()
}

/// True when the source can be served as it is: H.264 yuv420p, AAC or no sound, MP4, upright.
pub fn compliant(p: &Probe) -> bool {
    p.container.contains("mp4")
        && p.video_codec == "h264"
        && p.pixel_format == "yuv420p"
        && p.rotation == 0
        && p.audio_codec.as_deref().is_none_or(|a| a == "aac")
}

fn rung_name(w: u32, h: u32) -> String {
    format!("{}p.mp4", w.min(h))
}

fn faststart() -> Dictionary<'static> {
    let mut d = Dictionary::new();
    d.set("movflags", "+faststart");
    d
}

struct VideoOut {
    graph: filter::Graph,
    enc: codec::encoder::Video,
    ost: usize,
    enc_tb: Rational,
}

struct AudioOut {
    graph: filter::Graph,
    enc: codec::encoder::Audio,
    ost: usize,
    enc_tb: Rational,
}

struct Rung {
    w: u32,
    h: u32,
    path: PathBuf,
    octx: format::context::Output,
    video: VideoOut,
    audio: Option<AudioOut>,
}

fn rotate_filter(rotation: u16) -> &'static str {
    match rotation {
        90 => "transpose=clock,",
        180 => "hflip,vflip,",
        270 => "transpose=cclock,",
        _ => "",
    }
}

/// An empty filter graph whose filters use at most `threads` threads (libavfilter's default
/// is one per core, for slice threading of `scale` and others).
fn new_graph(threads: usize) -> filter::Graph {
    let mut graph = filter::Graph::new();
    // SAFETY: the pointer is the graph's own, valid while `graph` lives; `nb_threads` is a
    // plain int read when filters are added, which happens after this.
    unsafe {
        (*graph.as_mut_ptr()).nb_threads = i32::try_from(threads.max(1)).unwrap_or(1);
    }
    graph
}

fn video_graph(
    dec: &codec::decoder::Video,
    tb: Rational,
    rotation: u16,
    w: u32,
    h: u32,
    threads: usize,
) -> Result<filter::Graph, MediaError> {
    let mut graph = new_graph(threads);
    let pix: ffmpeg::ffi::AVPixelFormat = dec.format().into();
    let sar = dec.aspect_ratio();
    let sar = if sar.numerator() > 0 {
        sar
    } else {
        Rational(1, 1)
    };
    let args = format!(
        "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
        dec.width(),
        dec.height(),
        pix as i32,
        tb.numerator(),
        tb.denominator(),
        sar.numerator(),
        sar.denominator()
    );
    let buffer =
        filter::find("buffer").ok_or_else(|| MediaError::Failed("no buffer filter".into()))?;
    let sink =
        filter::find("buffersink").ok_or_else(|| MediaError::Failed("no buffersink".into()))?;
    graph
        .add(&buffer, "in", &args)
        .map_err(failed("video source"))?;
    graph.add(&sink, "out", "").map_err(failed("video sink"))?;
    let spec = format!(
        "{}scale={w}:{h}:flags=bicubic,setsar=1,format=yuv420p",
        rotate_filter(rotation)
    );
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(&spec))
        .map_err(failed("video filters"))?;
    graph.validate().map_err(failed("video filters"))?;
    Ok(graph)
}

fn audio_graph(
    dec: &codec::decoder::Audio,
    tb: Rational,
    frame_size: u32,
    threads: usize,
) -> Result<filter::Graph, MediaError> {
    let mut graph = new_graph(threads);
    let layout = dec.channel_layout().bits();
    let layout = if layout != 0 {
        format!("0x{layout:x}")
    } else if dec.channels() == 1 {
        "mono".to_string()
    } else {
        "stereo".to_string()
    };
    let args = format!(
        "time_base={}/{}:sample_rate={}:sample_fmt={}:channel_layout={layout}:channels={}",
        tb.numerator(),
        tb.denominator(),
        dec.rate(),
        dec.format().name(),
        dec.channels(),
    );
    let src = filter::find("abuffer").ok_or_else(|| MediaError::Failed("no abuffer".into()))?;
    let sink =
        filter::find("abuffersink").ok_or_else(|| MediaError::Failed("no abuffersink".into()))?;
    graph
        .add(&src, "in", &args)
        .map_err(failed("audio source"))?;
    graph.add(&sink, "out", "").map_err(failed("audio sink"))?;
    let spec = format!(
        "aresample={AAC_SAMPLE_RATE},aformat=sample_fmts=fltp:sample_rates={AAC_SAMPLE_RATE}:channel_layouts=stereo"
    );
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(&spec))
        .map_err(failed("audio filters"))?;
    graph.validate().map_err(failed("audio filters"))?;
    if let Some(mut out) = graph.get("out") {
        out.sink().set_frame_size(frame_size);
    }
    Ok(graph)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn open_rung(
    path: PathBuf,
    w: u32,
    h: u32,
    vdec: &codec::decoder::Video,
    vtb: Rational,
    frame_rate: Option<Rational>,
    rotation: u16,
    adec: Option<(&codec::decoder::Audio, Rational)>,
    threads: usize,
) -> Result<Rung, MediaError> {
    let mut octx = format::output_as(&path, "mp4").map_err(failed("output"))?;
    let global = octx.format().flags().contains(format::Flags::GLOBAL_HEADER);
    let h264 = ffmpeg::encoder::find(codec::Id::H264)
        .ok_or_else(|| MediaError::Failed("no H.264 encoder in this ffmpeg".into()))?;
    let mut enc = codec::context::Context::new_with_codec(h264)
        .encoder()
        .video()
        .map_err(failed("H.264 encoder"))?;
    enc.set_width(w);
    enc.set_height(h);
    enc.set_format(format::Pixel::YUV420P);
    enc.set_time_base(vtb);
    enc.set_frame_rate(frame_rate);
    if global {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut opts = Dictionary::new();
    opts.set("preset", X264_PRESET);
    opts.set("crf", X264_CRF);
    // x264's own threads (frame threads and the lookahead) follow this count.
    opts.set("threads", &threads.max(1).to_string());
    let enc = enc.open_with(opts).map_err(failed("H.264 encoder"))?;
    let mut ost = octx.add_stream(h264).map_err(failed("video stream"))?;
    ost.set_parameters(&enc);
    ost.set_time_base(vtb);
    let video = VideoOut {
        graph: video_graph(vdec, vtb, rotation, w, h, threads)?,
        enc,
        ost: ost.index(),
        enc_tb: vtb,
    };
    let audio = match adec {
        Some((adec, atb)) => {
            let aac = ffmpeg::encoder::find(codec::Id::AAC)
                .ok_or_else(|| MediaError::Failed("no AAC encoder in this ffmpeg".into()))?;
            let mut enc = codec::context::Context::new_with_codec(aac)
                .encoder()
                .audio()
                .map_err(failed("AAC encoder"))?;
            enc.set_rate(AAC_SAMPLE_RATE);
            enc.set_channel_layout(ffmpeg::ChannelLayout::STEREO);
            enc.set_channels(2);
            enc.set_format(format::Sample::F32(format::sample::Type::Planar));
            enc.set_bit_rate(AAC_BIT_RATE);
            enc.set_time_base((1, AAC_SAMPLE_RATE));
            if global {
                enc.set_flags(codec::Flags::GLOBAL_HEADER);
            }
            let enc = enc.open_as(aac).map_err(failed("AAC encoder"))?;
            let mut ost = octx.add_stream(aac).map_err(failed("audio stream"))?;
            ost.set_parameters(&enc);
            ost.set_time_base((1, AAC_SAMPLE_RATE));
            let frame_size = enc.frame_size().max(1);
            Some(AudioOut {
                graph: audio_graph(adec, atb, frame_size, threads)?,
                enc,
                ost: ost.index(),
                enc_tb: Rational(1, AAC_SAMPLE_RATE),
            })
        }
        None => None,
    };
    octx.write_header_with(faststart())
        .map_err(failed("MP4 header"))?;
    Ok(Rung {
        w,
        h,
        path,
        octx,
        video,
        audio,
    })
}

fn ost_tb(octx: &format::context::Output, index: usize) -> Rational {
    octx.stream(index)
        .map_or(Rational(1, 90_000), |s| s.time_base())
}

impl Rung {
    fn drain_video(&mut self) -> Result<(), MediaError> {
        let mut filtered = frame::Video::empty();
        while let Some(mut out) = self.video.graph.get("out") {
            if out.sink().frame(&mut filtered).is_err() {
                break;
            }
            filtered.set_kind(ffmpeg::picture::Type::None);
            self.video
                .enc
                .send_frame(&filtered)
                .map_err(failed("H.264 encoding"))?;
            self.write_video()?;
        }
        Ok(())
    }

    fn write_video(&mut self) -> Result<(), MediaError> {
        let tb = ost_tb(&self.octx, self.video.ost);
        let mut packet = Packet::empty();
        while self.video.enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(self.video.ost);
            packet.rescale_ts(self.video.enc_tb, tb);
            packet
                .write_interleaved(&mut self.octx)
                .map_err(failed("MP4 writing"))?;
        }
        Ok(())
    }

    fn drain_audio(&mut self) -> Result<(), MediaError> {
        let Some(audio) = self.audio.as_mut() else {
            return Ok(());
        };
        let mut filtered = frame::Audio::empty();
        while let Some(mut out) = audio.graph.get("out") {
            let sink_tb = out.sink().time_base();
            if out.sink().frame(&mut filtered).is_err() {
                break;
            }
            if let Some(pts) = filtered.pts() {
                filtered.set_pts(Some(pts.rescale(sink_tb, audio.enc_tb)));
            }
            audio
                .enc
                .send_frame(&filtered)
                .map_err(failed("AAC encoding"))?;
            Self::write_audio(audio, &mut self.octx)?;
        }
        Ok(())
    }

    fn write_audio(
        audio: &mut AudioOut,
        octx: &mut format::context::Output,
    ) -> Result<(), MediaError> {
        let tb = ost_tb(octx, audio.ost);
        let mut packet = Packet::empty();
        while audio.enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(audio.ost);
            packet.rescale_ts(audio.enc_tb, tb);
            packet
                .write_interleaved(octx)
                .map_err(failed("MP4 writing"))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Rendition, MediaError> {
        if let Some(mut src) = self.video.graph.get("in") {
            src.source().flush().map_err(failed("video filters"))?;
        }
        self.drain_video()?;
        self.video
            .enc
            .send_eof()
            .map_err(failed("H.264 encoding"))?;
        self.write_video()?;
        if let Some(audio) = self.audio.as_mut() {
            if let Some(mut src) = audio.graph.get("in") {
                src.source().flush().map_err(failed("audio filters"))?;
            }
        }
        self.drain_audio()?;
        if let Some(audio) = self.audio.as_mut() {
            audio.enc.send_eof().map_err(failed("AAC encoding"))?;
            Self::write_audio(audio, &mut self.octx)?;
        }
        self.octx.write_trailer().map_err(failed("MP4 trailer"))?;
        rendition(&self.path, self.w, self.h, "video/mp4")
    }
}

use ffmpeg::Rescale as _;

/// Gives a frame to a buffer source by reference: every rung gets the same decoded frame
/// (ffmpeg-next's `Source::add` moves the frame's data out, leaving it empty for the next).
fn feed(src: &mut filter::Context, frame: &ffmpeg::Frame) -> Result<(), ffmpeg::Error> {
    // SAFETY: both pointers are valid for the call; av_buffersrc_write_frame takes a new
    // reference to the frame's buffers and leaves the frame itself untouched.
    let r = unsafe { ffmpeg::ffi::av_buffersrc_write_frame(src.as_mut_ptr(), frame.as_ptr()) };
    if r < 0 {
        Err(ffmpeg::Error::from(r))
    } else {
        Ok(())
    }
}

fn rendition(path: &Path, w: u32, h: u32, mime: &'static str) -> Result<Rendition, MediaError> {
    let bytes = std::fs::metadata(path)?.len();
    Ok(Rendition {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_path_buf(),
        mime,
        width: w,
        height: h,
        bytes,
    })
}

/// Copies the source's streams into a faststart MP4 without re-encoding.
fn remux(
    src: &Path,
    dst: PathBuf,
    w: u32,
    h: u32,
    budget: &Budget,
) -> Result<Rendition, MediaError> {
    let mut input = probe::open(src, "mov")?;
    let mut octx = format::output_as(&dst, "mp4").map_err(failed("output"))?;
    let mut map: Vec<Option<usize>> = Vec::new();
    let mut tbs = Vec::new();
    for s in input.streams() {
        let medium = s.parameters().medium();
        let id = s.parameters().id();
        let keep = (medium == media::Type::Video && id == codec::Id::H264)
            || (medium == media::Type::Audio && id == codec::Id::AAC);
        if !keep || map.iter().flatten().count() >= 2 {
            map.push(None);
            tbs.push(s.time_base());
            continue;
        }
        let mut ost = octx
            .add_stream(ffmpeg::encoder::find(codec::Id::None))
            .map_err(failed("stream"))?;
        ost.set_parameters(s.parameters());
        // SAFETY: the parameters belong to the stream just added; codec_tag 0 lets the mp4
        // muxer pick its own tag (a tag from another container can be refused).
        unsafe {
            (*ost.parameters().as_mut_ptr()).codec_tag = 0;
        }
        map.push(Some(ost.index()));
        tbs.push(s.time_base());
    }
    octx.write_header_with(faststart())
        .map_err(failed("MP4 header"))?;
    for (s, mut packet) in input.packets() {
        budget.check()?;
        let Some(Some(out)) = map.get(s.index()).copied() else {
            continue;
        };
        let tb = ost_tb(&octx, out);
        packet.rescale_ts(tbs[s.index()], tb);
        packet.set_position(-1);
        packet.set_stream(out);
        packet
            .write_interleaved(&mut octx)
            .map_err(failed("MP4 writing"))?;
    }
    octx.write_trailer().map_err(failed("MP4 trailer"))?;
    rendition(&dst, w, h, "video/mp4")
}

/// Makes the ladder and the poster in `out_dir`; returns them and the poster's blurhash.
pub(crate) fn process(
    path: &Path,
    p: &Probe,
    out_dir: &Path,
    budget: &Budget,
    threads: usize,
) -> Result<(Vec<Rendition>, Option<String>), MediaError> {
    let (dw, dh) = p.display_size();
    let rungs = ladder(dw, dh);
    let copy_ok = compliant(p);
    let mut done = Vec::new();
    let mut to_encode = Vec::new();
    for (w, h) in rungs {
        if copy_ok && (w, h) == (dw, dh) {
            done.push(remux(path, out_dir.join(rung_name(w, h)), w, h, budget)?);
        } else {
            to_encode.push((w, h));
        }
    }

    let mut input = probe::open(path, "mov,matroska")?;
    let vstream = input
        .streams()
        .best(media::Type::Video)
        .ok_or_else(|| MediaError::Unreadable("no video stream".into()))?;
    let vindex = vstream.index();
    let vtb = vstream.time_base();
    let rate = vstream.avg_frame_rate();
    let frame_rate = (rate.numerator() > 0 && rate.denominator() > 0).then_some(rate);
    let mut vdec = codec::context::Context::from_parameters(vstream.parameters())
        .and_then(|mut c| {
            c.set_threading(codec::threading::Config {
                kind: codec::threading::Type::Frame,
                count: threads.max(1),
                ..Default::default()
            });
            c.decoder().video()
        })
        .map_err(|e| MediaError::Unreadable(e.to_string()))?;
    let mut adec = None;
    if p.audio_codec.is_some() && !to_encode.is_empty() {
        if let Some(astream) = input.streams().best(media::Type::Audio) {
            let mut ctx = codec::context::Context::from_parameters(astream.parameters())
                .map_err(|e| MediaError::Unreadable(e.to_string()))?;
            // Packets are given in the stream's time base; the decoder must know it.
            ctx.set_time_base(astream.time_base());
            if let Ok(dec) = ctx.decoder().audio() {
                adec = Some((astream.index(), astream.time_base(), dec));
            }
        }
    }
    let mut outs = Vec::with_capacity(to_encode.len());
    for (w, h) in &to_encode {
        outs.push(open_rung(
            out_dir.join(rung_name(*w, *h)),
            *w,
            *h,
            &vdec,
            vtb,
            frame_rate,
            p.rotation,
            adec.as_ref().map(|(_, tb, d)| (d, *tb)),
            threads,
        )?);
    }

    let orientation = match p.rotation {
        90 => 6,
        180 => 3,
        270 => 8,
        _ => 1,
    };
    let mut poster: Option<image::Rgba> = None;
    let mut vframe = frame::Video::empty();
    let mut aframe = frame::Audio::empty();
    let mut handle_video = |vdec: &mut codec::decoder::Video,
                            outs: &mut Vec<Rung>,
                            poster: &mut Option<image::Rgba>|
     -> Result<(), MediaError> {
        while vdec.receive_frame(&mut vframe).is_ok() {
            if poster.is_none() {
                *poster = Some(image::upright(
                    &vframe,
                    orientation,
                    POSTER_SIDE_MAX,
                    &ToSrgb::none(),
                )?);
            }
            let ts = vframe.timestamp();
            vframe.set_pts(ts);
            for rung in outs.iter_mut() {
                if let Some(mut src) = rung.video.graph.get("in") {
                    feed(&mut src, &vframe).map_err(failed("video filters"))?;
                }
                rung.drain_video()?;
            }
        }
        Ok(())
    };
    let mut handle_audio =
        |adec: &mut codec::decoder::Audio, outs: &mut Vec<Rung>| -> Result<(), MediaError> {
            while adec.receive_frame(&mut aframe).is_ok() {
                let ts = aframe.timestamp();
                aframe.set_pts(ts);
                for rung in outs.iter_mut() {
                    if let Some(audio) = rung.audio.as_mut() {
                        if let Some(mut src) = audio.graph.get("in") {
                            feed(&mut src, &aframe).map_err(failed("audio filters"))?;
                        }
                    }
                    rung.drain_audio()?;
                }
            }
            Ok(())
        };
    let need_frames = !outs.is_empty();
    for (s, packet) in input.packets() {
        budget.check()?;
        if s.index() == vindex {
            // A damaged packet is skipped, as players do; a file with none decodable fails below.
            if vdec.send_packet(&packet).is_ok() {
                handle_video(&mut vdec, &mut outs, &mut poster)?;
            }
            if !need_frames && poster.is_some() {
                break;
            }
        } else if let Some((aindex, _, dec)) = adec.as_mut() {
            if s.index() == *aindex && dec.send_packet(&packet).is_ok() {
                handle_audio(dec, &mut outs)?;
            }
        }
    }
    if need_frames || poster.is_none() {
        let _ = vdec.send_eof();
        handle_video(&mut vdec, &mut outs, &mut poster)?;
        if let Some((_, _, dec)) = adec.as_mut() {
            let _ = dec.send_eof();
            handle_audio(dec, &mut outs)?;
        }
    }
    let poster =
        poster.ok_or_else(|| MediaError::Unreadable("no picture could be decoded".into()))?;
    for rung in outs {
        budget.check()?;
        done.push(rung.finish()?);
    }
    done.sort_by_key(|r| r.width.min(r.height));
    let jpeg = image::encode_jpeg(&poster)?;
    let poster_path = out_dir.join("poster.jpg");
    std::fs::write(&poster_path, &jpeg)?;
    let hash = crate::blurhash_of(&poster)?;
    done.push(rendition(&poster_path, poster.w, poster.h, "image/jpeg")?);
    Ok((done, Some(hash)))
}
