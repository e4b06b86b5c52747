//! `nova-msg`: the messaging benchmark (issue 4), against a `nova` it starts itself (2
//! shards, a temporary data directory, optionally pinned with `taskset`), in two parts:
//!
//! - `messages`: registers `--users` accounts over both shards, creates pairs and groups of
//!   3 to 5 whose members are on both shards (with `--shards 1`, all on the one), connects
//!   one `GET /v1/stream` per user, then sends messages open-loop at `--rate` (message `n`
//!   is due at `start + n / rate`, on keep-alive connection `n % connections`;
//!   conversation `n % conversations`, sender turning round its members). Each message's
//!   text carries its number, so when a `message` event arrives on a recipient's stream its
//!   delivery latency is taken from the message's *due* time (no coordinated omission) and,
//!   separately, from when its request was written. Reports messages/s answered 201,
//!   delivery p50/p99/p99.9, and every delivery missing (a recipient of a message answered
//!   201 whose stream never showed it) or repeated.
//! - `idle`: a fresh server; registers enough users for `--idle-streams` streams at the
//!   server's default per-user limit (8), reads the server's resident memory (VmRSS of
//!   /proc/<pid>/status), opens the streams, waits, reads it again and reports the growth
//!   per stream, and how many streams were still open at the end.
//!
//! `scripts/bench-msg.sh` (`make bench-msg`) runs it with the server and the generator
//! sharing the machine's cores (`MSG_PIN=1`: on different cores); docs/benchmarks.md records
//! results.

// The shared modules carry items only `nova-bench` itself uses.
#[allow(dead_code)]
#[path = "../clock.rs"]
mod clock;
#[allow(dead_code)]
#[path = "../http1.rs"]
mod http1;
#[allow(dead_code)]
#[path = "../machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../url.rs"]
mod url;

use std::cell::RefCell;
use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::Clock;
use crate::http1::{encode_request, Conn};
use crate::machine::CpuSnapshot;
use crate::url::Target;

/// Largest latency the histograms track; longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;
const CONNECTIONS_MAX: usize = 10_000;
/// The server's default streams per user (`streams_per_user_max`); the idle part stays
/// within it.
const STREAMS_PER_USER: usize = 8;
/// Limit on what one stream's reader buffers before it gives up on the stream.
const STREAM_BUFFER_MAX: usize = 4 << 20;
/// Filler after the message number, so a message is about the size of a short chat line.
const FILLER: &str = "the quick brown fox jumps over the lazy dog";

#[derive(Parser)]
#[command(
    name = "nova-msg",
    about = "Messaging benchmark: messages/s, send-to-stream latency, idle streams' memory"
)]
struct Cli {
    /// The nova binary.
    #[arg(long, default_value = "target/release/nova")]
    nova: PathBuf,
    /// CPUs for the server (`taskset -c`), e.g. "0"; empty: not pinned.
    #[arg(long, default_value = "")]
    server_cpus: String,
    /// What to run: messages, idle, or both.
    #[arg(long, default_value = "both")]
    part: String,
    /// Shards of the server. With 2 or more, pairs and groups have members on two shards.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    shards: u16,
    /// Accounts in the messaging part (half on each shard, near enough).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Pairs (one member on each shard).
    #[arg(long, default_value_t = 300)]
    pairs: usize,
    /// Groups of 3 to 5 (members on both shards).
    #[arg(long, default_value_t = 200)]
    groups: usize,
    /// Messages per second, offered on a fixed schedule.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of load first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// How long to wait for the last deliveries after the last message was due.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Keep-alive connections sending messages; message `n` goes on `n % connections`.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Streams held open in the idle part.
    #[arg(long, default_value_t = 10_000)]
    idle_streams: usize,
    /// Seconds the idle streams are held before memory is read.
    #[arg(long, default_value_t = 5.0)]
    idle_hold: f64,
    /// Spin for precise send times (only when the generator has a core of its own).
    #[arg(long)]
    spin: bool,
}

// ---- the server -------------------------------------------------------------------------

struct Nova {
    child: Child,
    target: Target,
    dir: PathBuf,
}

impl Drop for Nova {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nova {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts a server; `streams_per_shard` raises that limit above its default (2048) when the
/// part needs it.
fn start(cli: &Cli, tag: &str, streams_per_shard: Option<usize>) -> Result<Nova> {
    let dir = std::env::temp_dir().join(format!("nova-msg-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut cmd = if cli.server_cpus.is_empty() {
        Command::new(&cli.nova)
    } else {
        let mut c = Command::new("taskset");
        c.args(["-c", &cli.server_cpus]).arg(&cli.nova);
        c
    };
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        &cli.shards.to_string(),
        "--log",
        "warn",
    ])
    .arg("--data")
    .arg(dir.join("data"))
    // Setup speed only: registrations hash cheaply and come from one address.
    .args(["--argon2-memory-kib", "64", "--argon2-iterations", "1"])
    .args(["--registrations-per-ip-per-hour", "1000000"])
    .args(["--access-token-ttl-s", "86400"])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    if let Some(n) = streams_per_shard {
        cmd.args(["--streams-per-shard-max", &n.to_string()]);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", cli.nova.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no listening line from nova: {line:?}"))?
        .to_string();
    Ok(Nova {
        child,
        target: Target::parse(&url)?,
        dir,
    })
}

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// The 1-minute load average.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// The soft limit on open files of this process.
fn open_files_max() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---- setup over plain HTTP ----------------------------------------------------------------

#[derive(Clone)]
struct User {
    id: u64,
    token: String,
}

fn shard_of(id: u64) -> usize {
    ((id >> 12) & 1023) as usize
}

/// The string value of `"key":"..."` in a JSON text (enough for these answers).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let start = json.find(&pat)? + pat.len();
    let end = json[start..].find('"')? + start;
    Some(&json[start..end])
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build()
}

fn register(a: &ureq::Agent, base: &str, name: &str) -> Result<User> {
    let body = format!(
        r#"{{"username":"{name}","email":"{name}@example.com","password":"pw-{name}-secret"}}"#
    );
    let resp = a
        .post(&format!("{base}/v1/accounts"))
        .set("Content-Type", "application/json")
        .send_string(&body)
        .with_context(|| format!("registering {name}"))?
        .into_string()?;
    let id: u64 = field(&resp, "id").context("no user id")?.parse()?;
    let login = format!(r#"{{"login":"{name}","password":"pw-{name}-secret"}}"#);
    let resp = a
        .post(&format!("{base}/v1/sessions"))
        .set("Content-Type", "application/json")
        .send_string(&login)
        .with_context(|| format!("logging in {name}"))?
        .into_string()?;
    let token = field(&resp, "access_token")
        .context("no token")?
        .to_string();
    Ok(User { id, token })
}

/// Registers and logs in `n` users, on a few threads.
fn register_many(base: &str, n: usize, tag: &str) -> Result<Vec<User>> {
    let next = Arc::new(AtomicUsize::new(0));
    let prefix = format!("{tag}{}x", std::process::id());
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let next = Arc::clone(&next);
            let base = base.to_string();
            let prefix = prefix.clone();
            std::thread::spawn(move || -> Result<Vec<(usize, User)>> {
                let a = agent();
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok(out);
                    }
                    out.push((i, register(&a, &base, &format!("{prefix}{i}"))?));
                }
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    for t in threads {
        all.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("a setup thread panicked"))??,
        );
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, u)| u).collect())
}

fn create_conversation(a: &ureq::Agent, base: &str, creator: &User, others: &[u64]) -> Result<u64> {
    let ids: Vec<String> = others.iter().map(|id| format!("\"{id}\"")).collect();
    let body = format!(r#"{{"participants":[{}]}}"#, ids.join(","));
    let resp = a
        .post(&format!("{base}/v1/conversations"))
        .set("Content-Type", "application/json")
        .set("Authorization", &format!("Bearer {}", creator.token))
        .send_string(&body)
        .context("creating a conversation")?
        .into_string()?;
    field(&resp, "id")
        .context("no conversation id")?
        .parse()
        .context("conversation id")
}

/// A conversation: its id and its members (indexes into the users).
struct Conversation {
    id: u64,
    members: Vec<usize>,
}

/// Pairs with one member on each of shards 0 and 1 and groups of 3 to 5 drawn alternately
/// from both, all made by their first member (with one shard, all from shard 0).
fn make_conversations(
    base: &str,
    users: &[User],
    shards: usize,
    pairs: usize,
    groups: usize,
) -> Result<Vec<Conversation>> {
    let of = |k: usize| -> Vec<usize> {
        (0..users.len())
            .filter(|i| shard_of(users[*i].id) == k.min(shards - 1))
            .collect()
    };
    let by_shard: [Vec<usize>; 2] = [of(0), of(1)];
    if by_shard[0].is_empty() || by_shard[1].is_empty() {
        bail!("the users are not on both shards");
    }
    let mut picks = [0usize; 2];
    let mut take = |shard: usize| {
        let k = shard.min(shards - 1);
        let list = &by_shard[k];
        let i = list[picks[k] % list.len()];
        picks[k] += 1;
        i
    };
    let mut plans: Vec<Vec<usize>> = Vec::with_capacity(pairs + groups);
    for p in 0..pairs {
        let first = p % 2;
        plans.push(vec![take(first), take(1 - first)]);
    }
    for g in 0..groups {
        let size = 3 + g % 3;
        let mut members: Vec<usize> = Vec::with_capacity(size);
        let mut shard = g % 2;
        while members.len() < size {
            let m = take(shard);
            if !members.contains(&m) {
                members.push(m);
            }
            shard = 1 - shard;
        }
        plans.push(members);
    }
    let a = agent();
    let mut out = Vec::with_capacity(plans.len());
    for members in plans {
        let others: Vec<u64> = members[1..].iter().map(|m| users[*m].id).collect();
        let id = create_conversation(&a, base, &users[members[0]], &others)?;
        out.push(Conversation { id, members });
    }
    Ok(out)
}

// ---- streams ----------------------------------------------------------------------------

/// Opens `GET /v1/stream` and reads the answer's head; returns the connection and whatever
/// body bytes came with the head.
async fn open_stream(target: &Target, token: &str) -> Result<(TcpStream, Vec<u8>, bool)> {
    let mut s = TcpStream::connect(target.addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET /v1/stream HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n",
        target.authority
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            bail!("stream closed before its head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head.split_whitespace().nth(1).unwrap_or("");
            if status != "200" {
                bail!("stream answered {status}");
            }
            let chunked = head.contains("transfer-encoding: chunked");
            return Ok((s, buf[end + 4..].to_vec(), chunked));
        }
        if buf.len() > 64 * 1024 {
            bail!("stream head too long");
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Undoes chunked transfer encoding as bytes arrive.
struct Dechunk {
    raw: Vec<u8>,
    /// Bytes left in the current chunk; `None` while a size line is awaited.
    left: Option<usize>,
    /// The CRLF after a chunk's data is still to skip.
    trailer: bool,
}

impl Dechunk {
    fn new() -> Dechunk {
        Dechunk {
            raw: Vec::new(),
            left: None,
            trailer: false,
        }
    }

    /// Appends the decoded bytes of `input` to `out`; false at the last chunk.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        self.raw.extend_from_slice(input);
        let mut at = 0;
        let alive = loop {
            if self.trailer {
                if self.raw.len() - at < 2 {
                    break true;
                }
                at += 2;
                self.trailer = false;
            }
            match self.left {
                Some(n) => {
                    let take = n.min(self.raw.len() - at);
                    out.extend_from_slice(&self.raw[at..at + take]);
                    at += take;
                    if take == n {
                        self.left = None;
                        self.trailer = true;
                    } else {
                        self.left = Some(n - take);
                        break true;
                    }
                }
                None => {
                    let Some(end) = find(&self.raw[at..], b"\r\n") else {
                        break true;
                    };
                    let line = std::str::from_utf8(&self.raw[at..at + end])?;
                    let size =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                            .with_context(|| format!("bad chunk size {line:?}"))?;
                    at += end + 2;
                    if size == 0 {
                        break false;
                    }
                    self.left = Some(size);
                }
            }
        };
        self.raw.drain(..at);
        Ok(alive)
    }
}

/// Reads a stream until it ends, calling `on_event(kind, data)` for every complete event.
async fn read_events(
    mut s: TcpStream,
    first: Vec<u8>,
    chunked: bool,
    mut on_event: impl FnMut(&str, &str),
) -> Result<()> {
    let mut dechunk = Dechunk::new();
    let mut body: Vec<u8> = Vec::new();
    let mut input = first;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let alive = if chunked {
            dechunk.feed(&input, &mut body)?
        } else {
            body.extend_from_slice(&input);
            true
        };
        let mut used = 0;
        while let Some(end) = find(&body[used..], b"\n\n") {
            let block = std::str::from_utf8(&body[used..used + end])?;
            let mut kind = "";
            let mut data = "";
            for line in block.lines() {
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k;
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d;
                }
            }
            if !kind.is_empty() {
                on_event(kind, data);
            }
            used += end + 2;
        }
        body.drain(..used);
        if !alive || body.len() > STREAM_BUFFER_MAX {
            return Ok(());
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        input = chunk[..n].to_vec();
    }
}

/// The message number in a `message` event's data (`"text":"b<n> ..."`).
fn message_number(data: &str) -> Option<u64> {
    let start = data.find("\"text\":\"b")? + 9;
    let digits: &str = &data[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

// ---- the messaging part -----------------------------------------------------------------

struct Run {
    target: Target,
    users: Vec<User>,
    conversations: Vec<Conversation>,
    clock: Clock,
    start: Instant,
    interval_s: f64,
    first_measured: u64,
    end: u64,
    connections: u64,
    stats: RefCell<Stats>,
}

struct Stats {
    /// Per message: 0 not answered, 1 answered 201, 2 another status, 3 failed.
    status: Vec<u8>,
    /// Per message: which of its conversation's members saw it on their stream (bit i =
    /// member i).
    seen: Vec<u8>,
    /// Per message: when its request was written, in microseconds after the start.
    written_us: Vec<u64>,
    /// Send (due time) to stream, and request written to stream.
    from_due_us: Histogram<u64>,
    from_write_us: Histogram<u64>,
    /// Due time to the 201.
    answer_us: Histogram<u64>,
    duplicates: u64,
    strays: u64,
    ok_measured: u64,
    /// 201s that arrived within the measured window, for any message (the server's
    /// throughput when it cannot keep up with the offered rate).
    ok_in_window: u64,
    last_answer: Option<Instant>,
    streams_ended: u64,
}

impl Run {
    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 * self.interval_s)
    }

    /// Message `n`'s conversation and its sender (index among the members).
    fn plan(&self, n: u64) -> (usize, usize) {
        let convs = self.conversations.len() as u64;
        let c = (n % convs) as usize;
        let size = self.conversations[c].members.len() as u64;
        (c, ((n / convs) % size) as usize)
    }

    fn delivered(&self, user: usize, n: u64, at: Instant) {
        let mut st = self.stats.borrow_mut();
        if n >= self.end {
            st.strays += 1;
            return;
        }
        let (c, _) = self.plan(n);
        let Some(bit) = self.conversations[c]
            .members
            .iter()
            .position(|m| *m == user)
        else {
            st.strays += 1;
            return;
        };
        let i = n as usize;
        if st.seen[i] & (1 << bit) != 0 {
            st.duplicates += 1;
            return;
        }
        st.seen[i] |= 1 << bit;
        if n >= self.first_measured {
            let due = at.saturating_duration_since(self.due(n)).as_micros() as u64;
            st.from_due_us
                .saturating_record(due.clamp(1, LATENCY_US_MAX));
            let written = self.start + Duration::from_micros(st.written_us[i]);
            let w = at.saturating_duration_since(written).as_micros() as u64;
            st.from_write_us
                .saturating_record(w.clamp(1, LATENCY_US_MAX));
        }
    }
}

async fn sender(run: Rc<Run>, k: u64, mut conn: Option<Conn>) {
    let mut n = k;
    while n < run.end {
        let due = run.due(n);
        run.clock.sleep_until(due).await;
        let (c, s) = run.plan(n);
        let conv = &run.conversations[c];
        let user = &run.users[conv.members[s]];
        let body = format!(r#"{{"text":"b{n} {FILLER}"}}"#);
        let target = run
            .target
            .with_path(&format!("/v1/conversations/{}/messages", conv.id));
        let headers = [(
            "Authorization".to_string(),
            format!("Bearer {}", user.token),
        )];
        let request = encode_request("POST", &target, &headers, Some(&body));
        if conn.is_none() {
            conn = Conn::connect(run.target.addr).await.ok();
        }
        run.stats.borrow_mut().written_us[n as usize] = Instant::now()
            .saturating_duration_since(run.start)
            .as_micros() as u64;
        let outcome = match conn.as_mut() {
            Some(c) => c.exchange(&request, false).await.ok(),
            None => None,
        };
        let now = Instant::now();
        let mut st = run.stats.borrow_mut();
        match outcome {
            Some(r) => {
                st.status[n as usize] = if r.status == 201 { 1 } else { 2 };
                if r.close {
                    conn = None;
                }
                if r.status == 201 && now >= run.due(run.first_measured) && now < run.due(run.end) {
                    st.ok_in_window += 1;
                }
                if r.status == 201 && n >= run.first_measured {
                    st.ok_measured += 1;
                    let us = now.saturating_duration_since(due).as_micros() as u64;
                    st.answer_us.saturating_record(us.clamp(1, LATENCY_US_MAX));
                    st.last_answer = Some(now);
                }
            }
            None => {
                st.status[n as usize] = 3;
                conn = None;
            }
        }
        n += run.connections;
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

async fn messages_part(
    cli: &Cli,
    nova: &Nova,
    users: Vec<User>,
    conversations: Vec<Conversation>,
) -> Result<()> {
    let first_measured = (cli.warmup * cli.rate).ceil() as u64;
    let end = ((cli.warmup + cli.duration) * cli.rate).ceil() as u64;
    let clock = Clock::new(cli.spin);
    let driver = cli
        .spin
        .then(|| tokio::task::spawn_local(clock.clone().drive()));
    let run = Rc::new(Run {
        target: nova.target.clone(),
        users,
        conversations,
        clock,
        // Set again once the streams are up.
        start: Instant::now(),
        interval_s: 1.0 / cli.rate,
        first_measured,
        end,
        connections: cli.connections as u64,
        stats: RefCell::new(Stats {
            status: vec![0; end as usize],
            seen: vec![0; end as usize],
            written_us: vec![0; end as usize],
            from_due_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?,
            from_write_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?,
            answer_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?,
            duplicates: 0,
            strays: 0,
            ok_measured: 0,
            ok_in_window: 0,
            last_answer: None,
            streams_ended: 0,
        }),
    });

    // One stream per user, all open before the first message.
    let mut opened = Vec::with_capacity(run.users.len());
    for u in &run.users {
        opened.push(open_stream(&run.target, &u.token).await?);
    }
    let mut conns = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        conns.push(Conn::connect(run.target.addr).await.ok());
    }
    let mut run = run;
    Rc::get_mut(&mut run)
        .context("the run is not shared yet")?
        .start = Instant::now() + Duration::from_millis(50);
    let mut readers = Vec::with_capacity(opened.len());
    for (user, (s, first, chunked)) in opened.into_iter().enumerate() {
        let run = Rc::clone(&run);
        readers.push(tokio::task::spawn_local(async move {
            let r = Rc::clone(&run);
            let result = read_events(s, first, chunked, move |kind, data| {
                if kind == "message" {
                    let at = Instant::now();
                    match message_number(data) {
                        Some(n) => r.delivered(user, n, at),
                        None => r.stats.borrow_mut().strays += 1,
                    }
                }
            })
            .await;
            run.stats.borrow_mut().streams_ended += 1;
            result
        }));
    }
    if Instant::now() > run.start {
        eprintln!("note: connecting took past the start; the first messages are late");
    }
    println!(
        "messages: {} users, {} conversations ({} pairs, {} groups of 3-5), {} streams, {} connections, {:.0}/s for {:.0} s after {:.0} s warmup; load average {}",
        run.users.len(),
        run.conversations.len(),
        cli.pairs,
        cli.groups,
        readers.len(),
        cli.connections,
        cli.rate,
        cli.duration,
        cli.warmup,
        load_average()
    );
    let cpu_before = CpuSnapshot::take(Some(nova.pid()));
    let senders: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, c)| tokio::task::spawn_local(sender(Rc::clone(&run), k as u64, c)))
        .collect();
    let last_due = run.due(end);
    let _ = tokio::time::timeout_at(
        (last_due + Duration::from_secs_f64(cli.drain)).into(),
        async {
            for s in senders {
                let _ = s.await;
            }
        },
    )
    .await;
    let cpu_after = CpuSnapshot::take(Some(nova.pid()));
    // Deliveries still on their way.
    let settle = last_due + Duration::from_secs_f64(cli.drain);
    tokio::time::sleep_until(settle.into()).await;
    let load_after = load_average();
    if let Some(d) = driver {
        d.abort();
    }
    for r in &readers {
        r.abort();
    }

    let st = run.stats.borrow();
    let (mut ok, mut other, mut failed, mut unanswered) = (0u64, 0u64, 0u64, 0u64);
    let (mut expected, mut missing) = (0u64, 0u64);
    for n in first_measured..end {
        let i = n as usize;
        match st.status[i] {
            1 => {
                ok += 1;
                let (c, s) = run.plan(n);
                let members = run.conversations[c].members.len();
                let want: u8 = ((1u16 << members) - 1) as u8 & !(1u8 << s);
                expected += u64::from(want.count_ones());
                missing += u64::from((want & !st.seen[i]).count_ones());
            }
            2 => other += 1,
            3 => failed += 1,
            _ => unanswered += 1,
        }
    }
    let span = st
        .last_answer
        .map_or(cli.duration, |l| {
            l.saturating_duration_since(run.due(first_measured))
                .as_secs_f64()
        })
        .max(cli.duration);
    let sent_per_s = st.ok_measured as f64 / span;
    let server_cpu = cpu_after
        .server_since(&cpu_before)
        .map(|d| d.as_secs_f64() / cpu_after.elapsed_since(&cpu_before).as_secs_f64());
    let own_cpu = cpu_after
        .own_since(&cpu_before)
        .map(|d| d.as_secs_f64() / cpu_after.elapsed_since(&cpu_before).as_secs_f64());
    let throughput = st.ok_in_window as f64 / cli.duration;
    println!(
        "sent: offered {:.0}/s, answered 201 {:.0}/s ({ok} measured; {other} other status, {failed} failed, {unanswered} unanswered); throughput {throughput:.0}/s (201s during the measured window, any message)",
        cli.rate, sent_per_s
    );
    println!(
        "delivered: {} of {expected} stream deliveries, missing {missing}, duplicates {}, strays {}, streams ended early {}",
        expected - missing,
        st.duplicates,
        st.strays,
        st.streams_ended
    );
    println!(
        "delivery ms from due time: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        ms(&st.from_due_us, 0.5),
        ms(&st.from_due_us, 0.99),
        ms(&st.from_due_us, 0.999),
        st.from_due_us.max() as f64 / 1000.0
    );
    println!(
        "delivery ms from request written: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        ms(&st.from_write_us, 0.5),
        ms(&st.from_write_us, 0.99),
        ms(&st.from_write_us, 0.999),
        st.from_write_us.max() as f64 / 1000.0
    );
    println!(
        "201 answer ms from due time: p50 {:.3} p99 {:.3} p99.9 {:.3}",
        ms(&st.answer_us, 0.5),
        ms(&st.answer_us, 0.99),
        ms(&st.answer_us, 0.999)
    );
    println!(
        "cpu: server {} cores, generator {} cores; load average {load_after} after",
        server_cpu.map_or("?".into(), |c| format!("{c:.2}")),
        own_cpu.map_or("?".into(), |c| format!("{c:.2}")),
    );
    println!(
        "result messages sent_per_s={sent_per_s:.0} throughput={throughput:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3} missing={missing} duplicates={} load={load_after}",
        ms(&st.from_due_us, 0.5),
        ms(&st.from_due_us, 0.99),
        ms(&st.from_due_us, 0.999),
        st.duplicates
    );
    Ok(())
}

// ---- the idle part ----------------------------------------------------------------------

async fn idle_part(cli: &Cli, nova: &Nova, users: &[User]) -> Result<()> {
    let pid = nova.pid();
    // Settle, then the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid)?;
    let started = Instant::now();
    let open = Rc::new(RefCell::new(0usize));
    let ended = Rc::new(RefCell::new(0usize));
    let mut tasks = Vec::with_capacity(cli.idle_streams);
    let mut failures = 0usize;
    let mut first_error = None;
    // In batches, so the listen backlog is not overrun.
    for batch in (0..cli.idle_streams).collect::<Vec<_>>().chunks(500) {
        let mut opening = Vec::with_capacity(batch.len());
        for &i in batch {
            let target = nova.target.clone();
            let token = users[i / STREAMS_PER_USER].token.clone();
            opening.push(tokio::task::spawn_local(async move {
                open_stream(&target, &token).await
            }));
        }
        for o in opening {
            match o.await? {
                Ok((s, first, chunked)) => {
                    *open.borrow_mut() += 1;
                    let ended = Rc::clone(&ended);
                    tasks.push(tokio::task::spawn_local(async move {
                        let _ = read_events(s, first, chunked, |_, _| {}).await;
                        *ended.borrow_mut() += 1;
                    }));
                }
                Err(e) => {
                    failures += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(cli.idle_hold)).await;
    let after = rss_kib(pid)?;
    let opened = *open.borrow();
    let still = opened - *ended.borrow();
    let per = if opened > 0 {
        (after.saturating_sub(before)) as f64 * 1024.0 / opened as f64
    } else {
        0.0
    };
    println!(
        "idle streams: {opened} opened in {connect_s:.1} s ({failures} refused{}), {still} still open after {:.0} s",
        first_error
            .map(|e| format!(", first: {e:#}"))
            .unwrap_or_default(),
        cli.idle_hold
    );
    println!(
        "server memory (VmRSS): {:.1} MiB before, {:.1} MiB with the streams, {:.0} bytes per stream; load average {}",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per,
        load_average()
    );
    println!(
        "result idle streams={still} rss_before_mib={:.1} rss_after_mib={:.1} bytes_per_stream={per:.0} load={}",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        load_average()
    );
    for t in tasks {
        t.abort();
    }
    Ok(())
}

// ---- main -------------------------------------------------------------------------------

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !(cli.rate.is_finite() && cli.rate > 0.0) {
        bail!("rate must be positive");
    }
    if cli.connections == 0 || cli.connections > CONNECTIONS_MAX {
        bail!("connections must be 1..={CONNECTIONS_MAX}");
    }
    if cli.users < 4 || cli.pairs + cli.groups == 0 {
        bail!("at least 4 users and one conversation");
    }
    if !["messages", "idle", "both"].contains(&cli.part.as_str()) {
        bail!("part must be messages, idle or both");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    if cli.part != "idle" {
        let need = cli.users + cli.connections + 64;
        check_open_files(need)?;
        let nova = start(&cli, "messages", None)?;
        let base = format!("http://{}", nova.target.authority);
        let t = Instant::now();
        let users = register_many(&base, cli.users, "m")?;
        let conversations = make_conversations(
            &base,
            &users,
            usize::from(cli.shards),
            cli.pairs,
            cli.groups,
        )?;
        eprintln!(
            "setup: {} users and {} conversations in {:.1} s",
            users.len(),
            conversations.len(),
            t.elapsed().as_secs_f64()
        );
        local.block_on(&runtime, messages_part(&cli, &nova, users, conversations))?;
    }
    if cli.part != "messages" {
        check_open_files(cli.idle_streams + 64)?;
        // Room for every stream on either shard, however the kernel spreads them.
        let nova = start(&cli, "idle", Some(cli.idle_streams + 16))?;
        let base = format!("http://{}", nova.target.authority);
        let users = register_many(&base, cli.idle_streams.div_ceil(STREAMS_PER_USER), "i")?;
        local.block_on(&runtime, idle_part(&cli, &nova, &users))?;
    }
    Ok(())
}

fn check_open_files(need: usize) -> Result<()> {
    match open_files_max() {
        Some(max) if max < need => bail!(
            "this run needs about {need} open files and the limit is {max}: raise it first \
             (`ulimit -n {need}`; scripts/bench-msg.sh does)"
        ),
        _ => Ok(()),
    }
}
