//! `nova-search`: the search benchmark. Against a server whose data directory holds the
//! synthetic corpus of `nova admin import-posts` (accounts `user<i>`, posts made of words of
//! a Zipf-distributed made-up vocabulary), it logs in once and sends two-word post queries
//! (`GET /v1/search?q=<w1>+<w2>`) open-loop at a fixed rate, the words drawn with the
//! corpus's own frequencies, and reports latency percentiles (measured from each request's
//! due time, so a slow answer delays nobody's clock: no coordinated omission), the achieved
//! rate, non-2xx and partial answers. `scripts/bench-search.sh` builds the corpus, times
//! the index build and runs this.
//!
//! It reuses nova-bench's HTTP/1.1 client, precise clock, URL parsing and CPU accounting.

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
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;

use crate::clock::Clock;
use crate::http1::Conn;
use crate::machine::CpuSnapshot;
use crate::url::Target;

/// Largest latency the histogram tracks; longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;
const CONNECTIONS_MAX: usize = 10_000;

#[derive(Parser)]
#[command(name = "nova-search", about = "Two-word search queries, open loop")]
struct Cli {
    /// The server's base URL, e.g. http://127.0.0.1:18090
    #[arg(long)]
    url: String,
    /// Account to search as (the import makes user0, user1, ...).
    #[arg(long, default_value = "user1")]
    login: String,
    #[arg(long, default_value = "password")]
    password: String,
    /// Queries per second, offered on a fixed schedule.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Unmeasured seconds of load first.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Keep-alive connections; query `n` goes on connection `n % connections`.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Results asked per query.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Spin for precise send times (only when the generator has a core of its own).
    #[arg(long)]
    spin: bool,
    /// The server's pid: report its CPU per query.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

struct Run {
    target: Target,
    token: String,
    limit: usize,
    clock: Clock,
    start: Instant,
    interval_s: f64,
    first_measured: u64,
    end: u64,
    connections: u64,
    seed: u64,
    zipf: corpus::Zipf,
    stats: RefCell<Stats>,
}

struct Stats {
    latency_us: Histogram<u64>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    partial: u64,
    empty: u64,
    last_done: Option<Instant>,
}

impl Run {
    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 * self.interval_s)
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !(cli.rate.is_finite() && cli.rate > 0.0) {
        bail!("rate must be positive");
    }
    if cli.connections == 0 || cli.connections > CONNECTIONS_MAX {
        bail!("connections must be 1..={CONNECTIONS_MAX}");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let target = Target::parse(&cli.url)?;
    let token = login(&target, &cli.login, &cli.password).await?;
    let clock = Clock::new(cli.spin);
    let driver = cli
        .spin
        .then(|| tokio::task::spawn_local(clock.clone().drive()));
    let mut conns = Vec::with_capacity(cli.connections);
    for _ in 0..cli.connections {
        conns.push(Conn::connect(target.addr).await.ok());
    }
    let first_measured = (cli.warmup * cli.rate).ceil() as u64;
    let end = ((cli.warmup + cli.duration) * cli.rate).ceil() as u64;
    let run = Rc::new(Run {
        target,
        token,
        limit: cli.limit,
        clock,
        start: Instant::now() + Duration::from_millis(10),
        interval_s: 1.0 / cli.rate,
        first_measured,
        end,
        connections: cli.connections as u64,
        seed: cli.seed,
        zipf: corpus::Zipf::new(corpus::VOCABULARY),
        stats: RefCell::new(Stats {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?,
            ok: 0,
            non_2xx: 0,
            errors: 0,
            partial: 0,
            empty: 0,
            last_done: None,
        }),
    });
    let cpu_before = CpuSnapshot::take(cli.server_pid);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, c)| tokio::task::spawn_local(connection_task(run.clone(), k as u64, c)))
        .collect();
    let deadline = run.due(end) + Duration::from_secs(2);
    let _ = tokio::time::timeout_at(deadline.into(), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let cpu_after = CpuSnapshot::take(cli.server_pid);
    if let Some(d) = driver {
        d.abort();
    }
    let stats = run.stats.borrow();
    let done = stats.ok + stats.non_2xx + stats.errors;
    let span = stats
        .last_done
        .map_or(cli.duration, |l| {
            l.saturating_duration_since(run.due(first_measured))
                .as_secs_f64()
        })
        .max(cli.duration);
    let ms = |q: f64| stats.latency_us.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "search two-word queries: offered {:.0}/s achieved {:.0}/s over {:.1} s, ok {} non_2xx {} errors {} partial {} empty {}",
        cli.rate,
        done as f64 / span,
        cli.duration,
        stats.ok,
        stats.non_2xx,
        stats.errors,
        stats.partial,
        stats.empty
    );
    println!(
        "latency ms: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        stats.latency_us.max() as f64 / 1000.0
    );
    let wall = cpu_after.elapsed_since(&cpu_before).as_secs_f64();
    if let Some(cpu) = cpu_after.server_since(&cpu_before) {
        println!(
            "server cpu: {:.2} cores, {:.0} us per query",
            cpu.as_secs_f64() / wall,
            cpu.as_secs_f64() * 1e6 / (done.max(1) as f64)
        );
    }
    if let Some(foreign) = cpu_after.foreign_since(&cpu_before) {
        println!("other work on the machine: {foreign:.2} cores");
    }
    println!("result p99_ms={:.3} p50_ms={:.3}", ms(0.99), ms(0.5));
    Ok(())
}

async fn connection_task(run: Rc<Run>, k: u64, mut conn: Option<Conn>) {
    let mut rng = corpus::Rng::new(run.seed ^ k.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut n = k;
    while n < run.end {
        let a = corpus::word(run.zipf.sample(&mut rng));
        let b = corpus::word(run.zipf.sample(&mut rng));
        let path = format!("/v1/search?q={a}+{b}&limit={}", run.limit);
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            run.target.authority, run.token
        )
        .into_bytes();
        let due = run.due(n);
        run.clock.sleep_until(due).await;
        let outcome = match &mut conn {
            Some(c) => c.exchange(&request, true).await,
            None => match Conn::connect(run.target.addr).await {
                Ok(c) => conn.insert(c).exchange(&request, true).await,
                Err(e) => Err(e),
            },
        };
        let now = Instant::now();
        if n >= run.first_measured {
            let mut s = run.stats.borrow_mut();
            let us = now.saturating_duration_since(due).as_micros();
            s.latency_us
                .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
            s.last_done = Some(now);
            match &outcome {
                Ok(r) if (200..300).contains(&r.status) => {
                    s.ok += 1;
                    if find(&r.body, b"\"partial\":true") {
                        s.partial += 1;
                    }
                    if find(&r.body, b"\"items\":[]") {
                        s.empty += 1;
                    }
                }
                Ok(_) => s.non_2xx += 1,
                Err(_) => s.errors += 1,
            }
        }
        match outcome {
            Ok(r) if !r.close => {}
            _ => conn = None,
        }
        n += run.connections;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn login(target: &Target, login: &str, password: &str) -> Result<String> {
    let body = format!("{{\"login\":\"{login}\",\"password\":\"{password}\"}}");
    let request = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        target.authority,
        body.len()
    );
    let response = http1::one_shot(target, request.as_bytes()).await?;
    if response.status != 200 {
        bail!("login as {login} answered {}", response.status);
    }
    let text = String::from_utf8(response.body).context("login answer is not UTF-8")?;
    let start = text
        .find("\"access_token\":\"")
        .context("no access_token in the login answer")?
        + "\"access_token\":\"".len();
    let end = text[start..]
        .find('"')
        .context("unterminated access_token")?;
    Ok(text[start..start + end].to_string())
}

/// The corpus of `nova admin import-posts` (shards/src/search_admin.rs, `corpus`): the same
/// words with the same frequencies, so queries look like the posts. Kept in step by hand:
/// the bench depends on no other crate of the workspace.
mod corpus {
    pub const VOCABULARY: usize = 20_000;
    const SYLLABLES: [&str; 32] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "ha", "ju", "ke",
        "la", "ma", "no", "pe", "qui", "ro", "su", "ta", "ul", "ve", "wa", "xi", "ya", "ze", "an",
        "el", "or",
    ];

    pub fn word(rank: usize) -> String {
        let mut n = rank;
        let mut out = String::new();
        for _ in 0..2 {
            out.push_str(SYLLABLES[n % 32]);
            n /= 32;
        }
        while n > 0 {
            out.push_str(SYLLABLES[n % 32]);
            n /= 32;
        }
        out
    }

    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    pub struct Zipf {
        cdf: Vec<f64>,
    }

    impl Zipf {
        pub fn new(n: usize) -> Zipf {
            let mut cdf = Vec::with_capacity(n);
            let mut sum = 0.0;
            for r in 0..n {
                sum += 1.0 / (r as f64 + 1.0);
                cdf.push(sum);
            }
            for c in &mut cdf {
                *c /= sum;
            }
            Zipf { cdf }
        }

        pub fn sample(&self, rng: &mut Rng) -> usize {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
        }
    }
}
