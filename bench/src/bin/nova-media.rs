//! `nova-media`: media benchmarks against a `nova` it starts itself (2 shards, a temporary
//! data directory), in one run:
//!
//! - `images`: distinct 1920x1080 JPEG photos uploaded by `--clients` threads; reports
//!   uploads/s (answered 202) and images/s to `ready` (first upload to last ready), and the
//!   upload latency.
//! - `video`: a 30 s 1080p30 clip with sound (H.264 4:4:4 in Matroska, so every rung is
//!   encoded) uploaded and polled until `ready`, against the ffmpeg command doing the same
//!   work with the same settings (one decode; 360p, 720p and 1080p H.264 yuv420p at
//!   `preset=veryfast crf=23`, AAC 128 kb/s 48 kHz stereo, faststart MP4; a poster JPEG),
//!   alternated `--rounds` times on the same machine. Same resources too: the command gets
//!   `--codec-threads` threads per decoder, encoder and filter graph (as Nova's
//!   `--media-codec-threads`), and runs in SCHED_IDLE at nice 19 (`chrt --idle 0 nice -n 19`)
//!   when Nova's transcoding does (`--sched-idle`, the default). The command is printed.
//! - `GET /health` at 50 requests/s on one keep-alive connection: idle for 10 s before each
//!   round, while Nova processes the clip, and while the ffmpeg command runs: p50/p99/max
//!   per round, with the load average (the machine may be shared).
//!
//! Inputs are made with the ffmpeg command (Debian `ffmpeg`), which is also the baseline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Nova media benchmarks (images/s to ready; 30 s 1080p clip vs ffmpeg)")]
struct Args {
    /// The nova binary.
    #[arg(long, default_value = "target/release/nova")]
    nova: PathBuf,
    /// Photos uploaded in the image scenario.
    #[arg(long, default_value_t = 40)]
    images: usize,
    /// Concurrent uploading clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Video rounds (each: Nova, then the ffmpeg command).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Transcoding threads given to nova (`--media-threads`).
    #[arg(long, default_value_t = 1)]
    media_threads: usize,
    /// Threads per decoder and encoder, for Nova (`--media-codec-threads`) and the command.
    #[arg(long, default_value_t = 1)]
    codec_threads: usize,
    /// Nova's transcoding in SCHED_IDLE (`--media-sched-idle`), and the command under
    /// `chrt --idle 0 nice -n 19`; `false`: both at nice 0 in the normal class (Nova keeps
    /// its `--media-nice` of 19 unless given `--media-nice 0` through NOVA_MEDIA_NICE).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sched_idle: bool,
}

const READY_TIMEOUT: Duration = Duration::from_secs(1800);
const HEALTH_EVERY: Duration = Duration::from_millis(20);

fn ffmpeg(args: &[&str]) -> Result<()> {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .context("the ffmpeg command (Debian package ffmpeg) is needed")?;
    if !out.status.success() {
        bail!("ffmpeg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

struct Nova {
    child: Child,
    base: String,
    _dir: PathBuf,
}

impl Drop for Nova {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(nova: &Path, dir: &Path, args: &Args) -> Result<Nova> {
    use std::io::BufRead as _;
    let mut child = Command::new(nova)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--log",
            "warn",
        ])
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--argon2-memory-kib", "64", "--argon2-iterations", "1"])
        .args(["--registrations-per-ip-per-hour", "100000"])
        .args(["--media-threads", &args.media_threads.to_string()])
        .args(["--media-codec-threads", &args.codec_threads.to_string()])
        .args(["--media-sched-idle", &args.sched_idle.to_string()])
        .args(["--media-nice", if args.sched_idle { "19" } else { "0" }])
        .args(["--media-upload-bytes-max", &(512u64 << 20).to_string()])
        .args(["--media-video-bytes-max", &(512u64 << 20).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", nova.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .context("no listening line")?
        .to_string();
    Ok(Nova {
        child,
        base: url,
        _dir: dir.to_path_buf(),
    })
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(600))
        .build()
}

/// The string value of `"key":"..."` in a JSON text (enough for these answers).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let end = json[start..].find('"')? + start;
    Some(&json[start..end])
}

fn token(nova: &Nova) -> Result<String> {
    let name = format!("bench{}", std::process::id());
    let a = agent();
    let body = format!(
        r#"{{"username":"{name}","email":"{name}@example.com","password":"pw-{name}-secret"}}"#
    );
    a.post(&format!("{}/v1/accounts", nova.base))
        .set("Content-Type", "application/json")
        .send_string(&body)?;
    let login = format!(r#"{{"login":"{name}","password":"pw-{name}-secret"}}"#);
    let resp = a
        .post(&format!("{}/v1/sessions", nova.base))
        .set("Content-Type", "application/json")
        .send_string(&login)?
        .into_string()?;
    Ok(field(&resp, "access_token")
        .context("no token")?
        .to_string())
}

fn upload(a: &ureq::Agent, base: &str, token: &str, bytes: &[u8]) -> Result<String> {
    let resp = a
        .post(&format!("{base}/v1/media"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(bytes)?
        .into_string()?;
    Ok(field(&resp, "id").context("no media id")?.to_string())
}

fn wait_ready(a: &ureq::Agent, nova: &Nova, token: &str, id: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let resp = a
            .get(&format!("{}/v1/media/{id}", nova.base))
            .set("Authorization", &format!("Bearer {token}"))
            .call()?
            .into_string()?;
        match field(&resp, "state") {
            Some("ready") => return Ok(()),
            Some("failed") => bail!("media {id} failed: {resp}"),
            _ => {}
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("media {id} not ready in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    format!(
        "n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        percentile(&v, 50.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0.0)
    )
}

/// GET /health every `HEALTH_EVERY` until `stop`; latencies in ms.
fn health_probe(base: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let a = agent();
        let mut out = Vec::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            if a.get(&format!("{base}/health")).call().is_ok() {
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            next += HEALTH_EVERY;
            if let Some(d) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
        }
        out
    })
}

fn images(nova: &Nova, token: &str, dir: &Path, n: usize, clients: usize) -> Result<()> {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames)?;
    let pattern = frames.join("p%04d.jpg");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=s=1920x1080:r=30",
        "-frames:v",
        &n.to_string(),
        "-q:v",
        "3",
        pattern.to_str().context("path")?,
    ])?;
    let mut files: Vec<Vec<u8>> = Vec::with_capacity(n);
    for i in 1..=n {
        files.push(std::fs::read(frames.join(format!("p{i:04}.jpg")))?);
    }
    let mean_kib = files.iter().map(|f| f.len()).sum::<usize>() as f64 / n as f64 / 1024.0;
    let files = Arc::new(Mutex::new(files));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (files, ids, latencies) =
            (Arc::clone(&files), Arc::clone(&ids), Arc::clone(&latencies));
        let token = token.to_string();
        let base = nova.base.clone();
        threads.push(std::thread::spawn(move || -> Result<()> {
            let a = agent();
            loop {
                let Some(f) = files.lock().map_err(|_| anyhow::anyhow!("lock"))?.pop() else {
                    return Ok(());
                };
                let t = Instant::now();
                let id = upload(&a, &base, &token, &f)?;
                latencies
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .push(t.elapsed().as_secs_f64() * 1000.0);
                ids.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(id);
            }
        }));
    }
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    let uploaded = started.elapsed().as_secs_f64();
    let a = agent();
    let ids = ids.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    for id in &ids {
        wait_ready(&a, nova, token, id)?;
    }
    let ready = started.elapsed().as_secs_f64();
    println!(
        "images: {n} JPEG 1920x1080 (mean {mean_kib:.0} KiB), {clients} clients: uploads {:.1}/s ({uploaded:.2} s), ready {:.2}/s ({ready:.2} s to the last ready)",
        n as f64 / uploaded,
        n as f64 / ready
    );
    println!(
        "images: upload latency {}",
        summary(
            latencies
                .lock()
                .map_err(|_| anyhow::anyhow!("lock"))?
                .clone()
        )
    );
    Ok(())
}

/// The one-minute load average, from /proc/loadavg.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The ffmpeg command doing Nova's work on `src` into `out`, as (program, arguments).
fn ffmpeg_baseline_command(src: &Path, out: &Path, args: &Args) -> (String, Vec<String>) {
    let o = |name: &str| out.join(name).to_string_lossy().into_owned();
    let graph = "[0:v]split=4[a][b][c][d];\
        [a]scale=640:360:flags=bicubic,setsar=1,format=yuv420p[v360];\
        [b]scale=1280:720:flags=bicubic,setsar=1,format=yuv420p[v720];\
        [c]scale=1920:1080:flags=bicubic,setsar=1,format=yuv420p[v1080];\
        [d]scale=1280:720[poster]";
    let threads = args.codec_threads.to_string();
    let mut cmd: Vec<String> = Vec::new();
    let program = if args.sched_idle {
        for a in ["--idle", "0", "nice", "-n", "19", "ffmpeg"] {
            cmd.push(a.to_string());
        }
        "chrt".to_string()
    } else {
        "ffmpeg".to_string()
    };
    for a in [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-threads",
        &threads,
        "-i",
    ] {
        cmd.push(a.to_string());
    }
    cmd.push(src.to_string_lossy().into_owned());
    for a in [
        "-filter_complex_threads",
        &threads,
        "-filter_complex",
        graph,
    ] {
        cmd.push(a.to_string());
    }
    for (label, name) in [
        ("[v360]", "360p.mp4"),
        ("[v720]", "720p.mp4"),
        ("[v1080]", "1080p.mp4"),
    ] {
        for a in [
            "-map",
            label,
            "-map",
            "0:a",
            "-threads",
            &threads,
            "-c:v",
            "libx264",
            "-preset",
            nova_media_preset(),
            "-crf",
            "23",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            "-ar",
            "48000",
            "-ac",
            "2",
            "-movflags",
            "+faststart",
        ] {
            cmd.push(a.to_string());
        }
        cmd.push(o(name));
    }
    for a in ["-map", "[poster]", "-frames:v", "1", "-q:v", "3"] {
        cmd.push(a.to_string());
    }
    cmd.push(o("poster.jpg"));
    (program, cmd)
}

/// Runs the ffmpeg command; its wall time in seconds.
fn ffmpeg_baseline(src: &Path, out: &Path, args: &Args) -> Result<f64> {
    std::fs::create_dir_all(out)?;
    let (program, cmd) = ffmpeg_baseline_command(src, out, args);
    let t = Instant::now();
    let status = Command::new(&program)
        .args(&cmd)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("the ffmpeg command failed: {program} {}", cmd.join(" "));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// x264's preset in Nova (`nova_media::X264_PRESET`), repeated here so the bench needs no
/// ffmpeg linking; the bench prints it so a mismatch shows.
fn nova_media_preset() -> &'static str {
    "veryfast"
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    percentile(&v, 99.0)
}

/// `GET /health` for `secs` seconds with nothing else running.
fn idle_health(base: &str, secs: u64) -> Result<Vec<f64>> {
    let stop = Arc::new(AtomicBool::new(false));
    let probe = health_probe(base.to_string(), Arc::clone(&stop));
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    probe.join().map_err(|_| anyhow::anyhow!("probe panicked"))
}

fn video(nova: &Nova, token: &str, dir: &Path, args: &Args) -> Result<()> {
    let (rounds, secs) = (args.rounds, args.seconds);
    let src = dir.join("clip.mkv");
    let size = format!("testsrc2=s=1920x1080:r=30:d={secs}");
    let tone = format!("sine=f=440:d={secs}");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        &size,
        "-f",
        "lavfi",
        "-i",
        &tone,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv444p",
        "-c:a",
        "aac",
        src.to_str().context("path")?,
    ])?;
    let bytes = std::fs::read(&src)?;
    println!(
        "video: {secs} s 1920x1080p30 H.264 4:4:4 + AAC in Matroska ({:.1} MiB); x264 preset {} crf 23; codec threads {}; sched_idle {}",
        bytes.len() as f64 / 1048576.0,
        nova_media_preset(),
        args.codec_threads,
        args.sched_idle
    );
    let (program, cmd) = ffmpeg_baseline_command(&src, &dir.join("ffmpeg-N"), args);
    println!("ffmpeg command: {program} {}", cmd.join(" "));
    let a = agent();
    let (mut ratios, mut idle_p99, mut busy_p99, mut ffmpeg_p99) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let idle = idle_health(&nova.base, 10)?;
        let load_before = load();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = health_probe(nova.base.clone(), Arc::clone(&stop));
        let t = Instant::now();
        let id = upload(&a, &nova.base, token, &bytes)?;
        wait_ready(&a, nova, token, &id)?;
        let nova_s = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let busy = probe
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))?;
        let load_nova = load();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = health_probe(nova.base.clone(), Arc::clone(&stop));
        let ffmpeg_s = ffmpeg_baseline(&src, &dir.join(format!("ffmpeg-{round}")), args)?;
        stop.store(true, Ordering::Relaxed);
        let during_ffmpeg = probe
            .join()
            .map_err(|_| anyhow::anyhow!("probe panicked"))?;
        let load_ffmpeg = load();
        println!(
            "video round {round}: nova upload-to-ready {nova_s:.2} s, ffmpeg command {ffmpeg_s:.2} s, ratio {:.3} (load average {load_before} before, {load_nova} after nova, {load_ffmpeg} after ffmpeg)",
            nova_s / ffmpeg_s
        );
        println!("  health idle:                 {}", summary(idle.clone()));
        println!("  health while nova processes: {}", summary(busy.clone()));
        println!(
            "  health while ffmpeg runs:    {}",
            summary(during_ffmpeg.clone())
        );
        ratios.push(nova_s / ffmpeg_s);
        idle_p99.push(p99(idle));
        busy_p99.push(p99(busy));
        ffmpeg_p99.push(p99(during_ffmpeg));
    }
    println!(
        "video medians over {rounds} rounds: ratio {:.3}; health p99 idle {:.2} ms, while nova processes {:.2} ms ({:.2}x idle), while ffmpeg runs {:.2} ms",
        median(ratios),
        median(idle_p99.clone()),
        median(busy_p99.clone()),
        median(busy_p99) / median(idle_p99).max(1e-9),
        median(ffmpeg_p99)
    );
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("nova-media-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let nova = start(&args.nova, &dir, &args)?;
    let token = token(&nova)?;
    if args.images > 0 {
        images(&nova, &token, &dir, args.images, args.clients)?;
    }
    video(&nova, &token, &dir, &args)?;
    drop(nova);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
