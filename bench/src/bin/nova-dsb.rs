//! `nova-dsb`: the DeathStarBench socialNetwork workload against Nova's `/wrk2-api/*` routes
//! (the server runs with `--dsb-compat`). Subcommands: `load-graph` (register `username_<i>`
//! for every node of a social graph and follow every edge both ways, as DeathStarBench's
//! `init_social_graph.py` does), `run` (one open-loop, coordinated-omission-corrected run of
//! `compose`, `home`, `user` or the `mix` of 60% home / 30% user / 10% compose timeline
//! requests, with the request bodies of DeathStarBench's wrk2 Lua scripts) and `max` (the
//! highest rate whose p99 stays under a target). `scripts/bench-dsb.sh` strings them together
//! and `docs/benchmarks.md` records the numbers.
//!
//! It reuses nova-bench's HTTP/1.1 client, precise clock, URL parsing and CPU accounting;
//! unlike `nova-bench load`, every request here is a different one, generated (with a small
//! local PRNG) before its due time so that generating it is never charged to its latency.

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

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;

use crate::clock::Clock;
use crate::http1::Conn;
use crate::machine::CpuSnapshot;
use crate::url::Target;

/// The graph DeathStarBench loads by default.
const DEFAULT_EDGES: &str = "/work/shared/datasets/socfb-Reed98/socfb-Reed98.edges";
/// Size of socfb-Reed98, the shape of the graph `--generate` makes.
const GENERATED_NODES: u64 = 962;
const GENERATED_EDGES: usize = 18_812;
/// Limits on a graph, so a wrong file cannot make millions of accounts.
const GRAPH_NODES_MAX: u64 = 1_000_000;
const GRAPH_EDGES_MAX: usize = 10_000_000;
/// Largest latency the histograms track; longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Limit on connections, so a typo cannot exhaust file descriptors.
const CONNECTIONS_MAX: usize = 10_000;
/// Random characters in a post's text, and in each URL, as in DeathStarBench's compose.
const TEXT_CHARS: usize = 256;
const URL_CHARS: usize = 64;
/// Timeline reads start at a random offset below this and read `TIMELINE_PAGE` posts.
const TIMELINE_START_MAX: u64 = 100;
const TIMELINE_PAGE: u64 = 10;
const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

#[derive(Parser)]
#[command(
    name = "nova-dsb",
    about = "DeathStarBench socialNetwork workload against Nova's /wrk2-api routes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Registers one user per node and follows every edge in both directions.
    LoadGraph {
        /// The server's base URL, e.g. http://127.0.0.1:18090
        #[arg(long)]
        url: String,
        /// An edge list: one `a b` pair of node ids a line; `%`/`#` lines are comments.
        #[arg(long, default_value = DEFAULT_EDGES)]
        edges: PathBuf,
        /// Ignore --edges and load a random graph the size of socfb-Reed98.
        #[arg(long)]
        generate: bool,
        /// Concurrent connections (one request in flight on each).
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// One open-loop run at a fixed rate.
    Run {
        #[command(flatten)]
        target: TargetArgs,
        /// Requests per second, offered on a fixed schedule.
        #[arg(long)]
        rate: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Steps the rate up until p99 misses the target; prints `max_rate=N ...`.
    Max {
        #[command(flatten)]
        target: TargetArgs,
        /// The p99 latency target in milliseconds.
        #[arg(long, default_value_t = 10.0)]
        p99_ms: f64,
        /// First rate tried, requests per second.
        #[arg(long, default_value_t = 1000.0)]
        start: f64,
        /// Each step offers this many times the previous rate.
        #[arg(long, default_value_t = 1.25)]
        factor: f64,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 5.0)]
        step_s: f64,
        /// Bisection rounds between the last rate that held and the first that missed.
        #[arg(long, default_value_t = 2)]
        bisect: u32,
        /// Reruns of a missed step before it counts (a noisy machine hiccups).
        #[arg(long, default_value_t = 1)]
        retries: u32,
        /// A step must achieve at least this share of its offered rate.
        #[arg(long, default_value_t = 0.95)]
        achieved_share_min: f64,
        /// Stop searching at this rate.
        #[arg(long, default_value_t = 200_000.0)]
        rate_max: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// POST /wrk2-api/post/compose only.
    Compose,
    /// GET /wrk2-api/home-timeline/read only.
    Home,
    /// GET /wrk2-api/user-timeline/read only.
    User,
    /// 60% home, 30% user, 10% compose (DeathStarBench's mixed workload).
    Mix,
}

/// The three kinds of request, indexing the per-kind statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Home = 0,
    User = 1,
    Compose = 2,
}

const KINDS: [Kind; 3] = [Kind::Home, Kind::User, Kind::Compose];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Home => "home",
            Kind::User => "user",
            Kind::Compose => "compose",
        }
    }
}

#[derive(Args, Clone)]
struct TargetArgs {
    /// The server's base URL, e.g. http://127.0.0.1:18090
    #[arg(long)]
    url: String,
    /// Which requests to send.
    #[arg(long, value_enum, default_value_t = Workload::Mix)]
    mix: Workload,
    /// Users are `0..users`, picked uniformly (the graph's node count).
    #[arg(long, default_value_t = GENERATED_NODES)]
    users: u64,
    /// Keep-alive connections; request `n` goes on connection `n % connections`.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Unmeasured seconds of load before the measured time.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for responses after the last request is due.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Spin for precise send times (costs a core: only when the generator has one of its
    /// own). Without it requests are sent on tokio's millisecond timer, up to ~1 ms late,
    /// and that lateness counts in the measured latency.
    #[arg(long)]
    spin: bool,
    /// The server's pid: report the CPU it spends per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Seed of the request generator (default: random).
    #[arg(long)]
    seed: Option<u64>,
    /// Write every measured request to this file, one line each, in the order they
    /// completed: its due time (us after the first measured one), its latency from that due
    /// time (us), its kind and its status (0: connection error). A `#` header gives the wall
    /// clock of time 0, to line a stall up with the server's logs. A search writes each of
    /// its runs over the last.
    #[arg(long)]
    trace: Option<PathBuf>,
}

/// Everything one run needs.
#[derive(Clone)]
struct RunConfig {
    target: Target,
    mix: Workload,
    users: u64,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    drain: Duration,
    spin: bool,
    server_pid: Option<u32>,
    seed: u64,
    trace: Option<PathBuf>,
}

impl TargetArgs {
    fn config(&self, rate: f64, duration_s: f64) -> Result<RunConfig> {
        if self.users == 0 || self.users > GRAPH_NODES_MAX {
            bail!("users must be 1..={GRAPH_NODES_MAX}, got {}", self.users);
        }
        Ok(RunConfig {
            target: Target::parse(&self.url)?,
            mix: self.mix,
            users: self.users,
            rate,
            duration: seconds(duration_s, "duration")?,
            warmup: seconds(self.warmup, "warmup")?,
            connections: self.connections,
            drain: seconds(self.drain, "drain")?,
            spin: self.spin,
            server_pid: self.server_pid,
            seed: self.seed.unwrap_or_else(random_seed),
            trace: self.trace.clone(),
        })
    }
}

/// Writes `--trace`'s file (see `TargetArgs::trace`), created at `path` before the run (so a
/// path that cannot be written fails before the run, not after it); `zero` is the wall clock
/// of due time 0.
fn write_trace(
    (path, file): (&Path, std::fs::File),
    zero: std::time::SystemTime,
    rows: &[TraceRow],
    dropped: u64,
) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(file);
    let zero_ms = zero
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    writeln!(out, "# nova-dsb trace: due_us latency_us kind status")?;
    writeln!(out, "# due_us 0 is unix ms {zero_ms}")?;
    if dropped > 0 {
        writeln!(
            out,
            "# {dropped} later requests not kept (at most {TRACE_ROWS_MAX} rows)"
        )?;
    }
    for row in rows {
        let kind = row.kind.name();
        writeln!(
            out,
            "{} {} {kind} {}",
            row.due_us, row.latency_us, row.status
        )?;
    }
    out.flush().with_context(|| format!("writing {path:?}"))
}

fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow::anyhow!("bad {what} {value}"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::LoadGraph {
            url,
            edges,
            generate,
            connections,
        } => {
            let target = Target::parse(&url)?;
            let graph = if generate {
                Graph::generate(GENERATED_NODES, GENERATED_EDGES, random_seed())
            } else {
                Graph::read(&edges)?
            };
            let source = if generate {
                "generated".to_string()
            } else {
                edges.display().to_string()
            };
            println!(
                "load-graph {source}: {} users, {} edges ({} follows) on {connections} connections",
                graph.nodes,
                graph.edges.len(),
                graph.edges.len() * 2
            );
            on_one_core(async { load_graph(&target, &graph, connections).await })
        }
        Command::Run {
            target,
            rate,
            duration,
        } => {
            let config = target.config(rate, duration)?;
            println!(
                "run {:?} on {} at {rate:.0} req/s for {:.1} s (+{:.1} s warmup), {} users, \
                 {} connections",
                config.mix,
                target.url,
                config.duration.as_secs_f64(),
                config.warmup.as_secs_f64(),
                config.users,
                config.connections
            );
            let report = on_one_core(async { run(&config).await })?;
            print!("{}", report.describe());
            println!("{}", report.summary("result", config.mix));
            Ok(())
        }
        Command::Max {
            target,
            p99_ms,
            start,
            factor,
            step_s,
            bisect,
            retries,
            achieved_share_min,
            rate_max,
        } => {
            if factor <= 1.0 || start <= 0.0 || rate_max < start {
                bail!("need start > 0, factor > 1 and rate-max >= start");
            }
            let mut search = MaxSearch {
                load: target.config(start, step_s)?,
                start,
                factor,
                p99_ms,
                achieved_share_min,
                bisect,
                retries,
                rate_max,
                last_miss: None,
            };
            println!(
                "max {:?} on {} with p99 <= {p99_ms} ms",
                search.load.mix, target.url
            );
            match on_one_core(search.run())? {
                Some((rate, report)) => {
                    print!("{}", report.describe());
                    println!("{}", report.summary("max", search.load.mix));
                    println!("max_rate={rate:.0} p99_ms={:.3}", report.ms(None, 0.99));
                }
                None => {
                    // Even the first rate missed: its numbers say by how much.
                    if let Some((rate, report)) = search.last_miss.take() {
                        print!("{}", report.describe());
                        println!("{}", report.summary("miss", search.load.mix));
                        println!("first rate {rate:.0} missed");
                    }
                    println!("max_rate=0 p99_ms=nan");
                }
            }
            Ok(())
        }
    }
}

/// Runs `future` on a current-thread runtime inside a `LocalSet`: the generator uses one
/// core, and its tasks share state through `Rc`.
fn on_one_core<T>(future: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

// ---------------------------------------------------------------------------------------
// Randomness: a splitmix64 generator is plenty for request contents, and keeps the bench
// crate free of a `rand` dependency.

fn random_seed() -> u64 {
    RandomState::new().hash_one((Instant::now(), std::process::id()))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (the modulo bias is negligible for the small `n` used here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn alphanumeric(&mut self, out: &mut String, chars: usize) {
        for _ in 0..chars {
            let i = self.below(ALPHANUMERIC.len() as u64) as usize;
            out.push(char::from(ALPHANUMERIC[i]));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Requests.

/// Encodes one request; `form` is sent as `application/x-www-form-urlencoded`, unescaped
/// as DeathStarBench's own client sends it.
fn encode(method: &str, target: &Target, path: &str, form: Option<&str>) -> Vec<u8> {
    let base = target.path.trim_end_matches('/');
    let mut out = format!(
        "{method} {base}{path} HTTP/1.1\r\nHost: {}\r\n",
        target.authority
    );
    match form {
        Some(body) => {
            let _ = write!(
                out,
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n\
                 {body}",
                body.len()
            );
        }
        None => out.push_str("\r\n"),
    }
    out.into_bytes()
}

/// The next request of `mix` for a uniformly random user, as DeathStarBench's
/// `compose-post.lua`, `read-home-timeline.lua` and `read-user-timeline.lua` make them.
fn next_request(rng: &mut Rng, mix: Workload, users: u64, target: &Target) -> (Kind, Vec<u8>) {
    let kind = match mix {
        Workload::Compose => Kind::Compose,
        Workload::Home => Kind::Home,
        Workload::User => Kind::User,
        Workload::Mix => match rng.below(100) {
            0..60 => Kind::Home,
            60..90 => Kind::User,
            _ => Kind::Compose,
        },
    };
    let user = rng.below(users);
    let request = match kind {
        Kind::Compose => encode(
            "POST",
            target,
            "/wrk2-api/post/compose",
            Some(&compose_form(rng, user, users)),
        ),
        Kind::Home | Kind::User => {
            let start = rng.below(TIMELINE_START_MAX + 1);
            let which = if kind == Kind::Home { "home" } else { "user" };
            let path = format!(
                "/wrk2-api/{which}-timeline/read?user_id={user}&start={start}&stop={}",
                start + TIMELINE_PAGE
            );
            encode("GET", target, &path, None)
        }
    };
    (kind, request)
}

/// A compose form: 256 random characters, 1-6 mentions of other users, 1-6 URLs and 1-5
/// media items of type png.
fn compose_form(rng: &mut Rng, user: u64, users: u64) -> String {
    let mut text = String::with_capacity(TEXT_CHARS + 12 * 20 + 6 * (URL_CHARS + 8));
    rng.alphanumeric(&mut text, TEXT_CHARS);
    for _ in 0..rng.between(1, 6) {
        let mut other = rng.below(users);
        if other == user && users > 1 {
            other = (other + 1) % users;
        }
        let _ = write!(text, " @username_{other}");
    }
    for _ in 0..rng.between(1, 6) {
        text.push_str(" http://");
        rng.alphanumeric(&mut text, URL_CHARS);
    }
    let media = rng.between(1, 5);
    let mut ids = String::from("[");
    let mut types = String::from("[");
    for i in 0..media {
        if i > 0 {
            ids.push(',');
            types.push(',');
        }
        // An 18-digit decimal id.
        let id = 100_000_000_000_000_000 + rng.below(900_000_000_000_000_000);
        let _ = write!(ids, "\"{id}\"");
        types.push_str("\"png\"");
    }
    ids.push(']');
    types.push(']');
    format!(
        "username=username_{user}&user_id={user}&text={text}&media_ids={ids}\
         &media_types={types}&post_type=0"
    )
}

// ---------------------------------------------------------------------------------------
// The social graph.

struct Graph {
    /// Users are `0..nodes`.
    nodes: u64,
    edges: Vec<(u64, u64)>,
}

impl Graph {
    /// Reads an edge list: the first two numbers of each line are an edge; blank lines,
    /// comment lines (`%`, `#`) and lines that do not start with two numbers (a header) are
    /// skipped. A `<stem>.nodes` file next to it, if any, gives the node count; otherwise it
    /// is the largest id plus one.
    fn read(path: &Path) -> Result<Graph> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut graph = Graph::parse(&text)?;
        let nodes_file = path.with_extension("nodes");
        if let Ok(count) = std::fs::read_to_string(&nodes_file) {
            let count: u64 = count
                .trim()
                .parse()
                .with_context(|| format!("bad node count in {}", nodes_file.display()))?;
            if count < graph.nodes || count > GRAPH_NODES_MAX {
                bail!(
                    "{} says {count} nodes, the edges need {}",
                    nodes_file.display(),
                    graph.nodes
                );
            }
            graph.nodes = count;
        }
        Ok(graph)
    }

    fn parse(text: &str) -> Result<Graph> {
        let mut edges = Vec::new();
        let mut nodes = 0;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('%') || line.starts_with('#') {
                continue;
            }
            let mut fields = line
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|f| !f.is_empty());
            let (Some(Ok(a)), Some(Ok(b))) = (
                fields.next().map(str::parse::<u64>),
                fields.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if a.max(b) >= GRAPH_NODES_MAX || edges.len() >= GRAPH_EDGES_MAX {
                bail!("graph over the limits ({GRAPH_NODES_MAX} nodes, {GRAPH_EDGES_MAX} edges)");
            }
            if a != b {
                edges.push((a, b));
            }
            nodes = nodes.max(a.max(b) + 1);
        }
        if edges.is_empty() {
            bail!("no edges found");
        }
        Ok(Graph { nodes, edges })
    }

    /// A random graph with `nodes` nodes and `edges` distinct edges, by preferential
    /// attachment (an endpoint is often one end of an earlier edge), which gives the
    /// skewed degrees of a real social graph.
    fn generate(nodes: u64, edges: usize, seed: u64) -> Graph {
        let mut rng = Rng(seed);
        let edges = edges.min((nodes * nodes.saturating_sub(1) / 2) as usize);
        let mut seen = std::collections::HashSet::with_capacity(edges);
        let mut list: Vec<(u64, u64)> = Vec::with_capacity(edges);
        while list.len() < edges {
            let a = rng.below(nodes);
            let b = if !list.is_empty() && rng.below(2) == 0 {
                let (x, y) = list[rng.below(list.len() as u64) as usize];
                if rng.below(2) == 0 {
                    x
                } else {
                    y
                }
            } else {
                rng.below(nodes)
            };
            if a != b && seen.insert((a.min(b), a.max(b))) {
                list.push((a, b));
            }
        }
        Graph { nodes, edges: list }
    }
}

/// Registers every user, then follows every edge both ways, each phase on `connections`
/// concurrent connections. A `user_id` registered before counts as loaded, so the graph can
/// be loaded again into the same server.
async fn load_graph(target: &Target, graph: &Graph, connections: usize) -> Result<()> {
    if connections == 0 || connections > CONNECTIONS_MAX {
        bail!("connections must be 1..={CONNECTIONS_MAX}, got {connections}");
    }
    let registrations: Vec<Vec<u8>> = (0..graph.nodes)
        .map(|i| {
            let form = format!(
                "first_name=first_name_{i}&last_name=last_name_{i}&username=username_{i}\
                 &password=password_{i}&user_id={i}"
            );
            encode("POST", target, "/wrk2-api/user/register", Some(&form))
        })
        .collect();
    let started = Instant::now();
    let taken = in_parallel(target, &registrations, connections).await?;
    let register_s = started.elapsed().as_secs_f64();
    println!(
        "registered {} users ({taken} already there) in {register_s:.1} s ({:.0}/s)",
        graph.nodes,
        graph.nodes as f64 / register_s
    );
    let follows: Vec<Vec<u8>> = graph
        .edges
        .iter()
        .flat_map(|&(a, b)| [(a, b), (b, a)])
        .map(|(a, b)| {
            let form = format!("user_id={a}&followee_id={b}");
            encode("POST", target, "/wrk2-api/user/follow", Some(&form))
        })
        .collect();
    let started = Instant::now();
    in_parallel(target, &follows, connections).await?;
    let follow_s = started.elapsed().as_secs_f64();
    println!(
        "followed {} edges both ways in {follow_s:.1} s ({:.0}/s)",
        graph.edges.len(),
        follows.len() as f64 / follow_s
    );
    Ok(())
}

/// Sends every request once, `connections` at a time; each must answer 200 `Success!`,
/// except a 422 `user_id_taken`, which is counted and returned.
async fn in_parallel(target: &Target, requests: &[Vec<u8>], connections: usize) -> Result<u64> {
    let next = Cell::new(0usize);
    let taken = Cell::new(0u64);
    let worker = || async {
        let mut conn = Conn::connect(target.addr).await?;
        loop {
            let i = next.get();
            let Some(request) = requests.get(i) else {
                return Ok::<(), anyhow::Error>(());
            };
            next.set(i + 1);
            let response = conn.exchange(request, true).await?;
            let body = String::from_utf8_lossy(&response.body);
            if response.status == 422 && body.contains("user_id_taken") {
                taken.set(taken.get() + 1);
            } else if response.status != 200 || body != "Success!" {
                bail!(
                    "{} answered {}: {body}",
                    String::from_utf8_lossy(request.split(|&b| b == b'\r').next().unwrap_or(&[])),
                    response.status
                );
            }
            if response.close {
                conn = Conn::connect(target.addr).await?;
            }
        }
    };
    let workers: Vec<_> = (0..connections.min(requests.len().max(1)))
        .map(|_| worker())
        .collect();
    for result in futures_join_all(workers).await {
        result?;
    }
    Ok(taken.get())
}

/// Polls all futures on this task until all are done (no `futures` dependency for one
/// join: a `LocalSet` cannot take the borrowed futures, so they are polled in turn).
async fn futures_join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

// ---------------------------------------------------------------------------------------
// The open-loop run: request `n` is due at `start + n / rate` and goes on connection
// `n % connections`; its latency runs from its due time to its response, so a stalled
// server is charged for every request queued behind the stall (wrk2's correction).

/// Outcomes of one kind of request during the measured time.
struct KindStats {
    ok: u64,
    non_2xx: u64,
    conn_errors: u64,
    latency_us: Histogram<u64>,
}

struct Stats {
    kinds: [KindStats; 3],
    all_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    warmup_done: u64,
    last_done: Option<Instant>,
    /// Every measured request, when `--trace` asks for them (at most `TRACE_ROWS_MAX`).
    trace: Vec<TraceRow>,
    /// Measured requests past `TRACE_ROWS_MAX`, not in `trace`.
    trace_dropped: u64,
}

/// A measured request as `--trace` writes it.
struct TraceRow {
    /// Due time after the first measured request's.
    due_us: u64,
    latency_us: u64,
    kind: Kind,
    /// The HTTP status, 0 for a connection error.
    status: u16,
}

/// Rows a trace keeps at most (24 bytes each, 240 MB): 11 minutes at 15,000 requests a
/// second. The file says how many more there were.
const TRACE_ROWS_MAX: usize = 10_000_000;

struct Run {
    config: RunConfig,
    clock: Clock,
    start: Instant,
    interval_s: f64,
    first_measured: u64,
    end: u64,
    stats: RefCell<Stats>,
}

impl Run {
    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 * self.interval_s)
    }

    fn record(&self, n: u64, kind: Kind, outcome: &Result<u16>) {
        let mut stats = self.stats.borrow_mut();
        if n < self.first_measured {
            stats.warmup_done += 1;
            return;
        }
        let done = Instant::now();
        let us = u64::try_from(done.saturating_duration_since(self.due(n)).as_micros())
            .unwrap_or(u64::MAX);
        let stats = &mut *stats;
        if self.config.trace.is_some() && stats.trace.len() >= TRACE_ROWS_MAX {
            stats.trace_dropped += 1;
        } else if self.config.trace.is_some() {
            let due_us = self
                .due(n)
                .saturating_duration_since(self.due(self.first_measured));
            stats.trace.push(TraceRow {
                due_us: u64::try_from(due_us.as_micros()).unwrap_or(u64::MAX),
                latency_us: us,
                kind,
                status: *outcome.as_ref().unwrap_or(&0),
            });
        }
        let slot = &mut stats.kinds[kind as usize];
        match outcome {
            Ok(status) => {
                slot.latency_us.saturating_record(us);
                stats.all_us.saturating_record(us);
                if (200..300).contains(status) {
                    slot.ok += 1;
                } else {
                    slot.non_2xx += 1;
                }
            }
            Err(_) => slot.conn_errors += 1,
        }
        stats.last_done = Some(done);
    }
}

/// What one run measured.
struct Report {
    offered_rate: f64,
    achieved_rate: f64,
    unfinished: u64,
    kinds: [KindStats; 3],
    all_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
    generator_cpu: Option<f64>,
    foreign_cpu: Option<f64>,
    /// The server's share of one core and its CPU microseconds per response.
    server_cpu: Option<(f64, f64)>,
}

impl Report {
    fn errors(&self) -> u64 {
        self.unfinished
            + self
                .kinds
                .iter()
                .map(|k| k.non_2xx + k.conn_errors)
                .sum::<u64>()
    }

    fn done(&self, kind: Kind) -> u64 {
        let k = &self.kinds[kind as usize];
        k.ok + k.non_2xx + k.conn_errors
    }

    /// Latency at `quantile` in milliseconds, of one kind or (`None`) of all requests.
    fn ms(&self, kind: Option<Kind>, quantile: f64) -> f64 {
        let h = kind.map_or(&self.all_us, |k| &self.kinds[k as usize].latency_us);
        h.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        let non_2xx: u64 = self.kinds.iter().map(|k| k.non_2xx).sum();
        let conn: u64 = self.kinds.iter().map(|k| k.conn_errors).sum();
        let ok: u64 = self.kinds.iter().map(|k| k.ok).sum();
        let _ = writeln!(
            out,
            "achieved {:.0} req/s of {:.0} offered; {ok} ok, {non_2xx} non-2xx, {conn} \
             connection errors, {} unfinished",
            self.achieved_rate, self.offered_rate, self.unfinished
        );
        let _ = writeln!(
            out,
            "latency ms from intended send time: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} \
             max {:.3}",
            self.ms(None, 0.5),
            self.ms(None, 0.9),
            self.ms(None, 0.99),
            self.ms(None, 0.999),
            self.all_us.max() as f64 / 1000.0
        );
        let used: Vec<Kind> = KINDS.into_iter().filter(|&k| self.done(k) > 0).collect();
        if used.len() > 1 {
            for kind in used {
                let k = &self.kinds[kind as usize];
                let _ = writeln!(
                    out,
                    "  {:<7} {:>7} done, {} errors: p50 {:.3} p99 {:.3} p99.9 {:.3}",
                    kind.name(),
                    self.done(kind),
                    k.non_2xx + k.conn_errors,
                    self.ms(Some(kind), 0.5),
                    self.ms(Some(kind), 0.99),
                    self.ms(Some(kind), 0.999)
                );
            }
        }
        let _ = write!(
            out,
            "generator send lag ms: p99 {:.3}",
            self.send_lag_us.value_at_quantile(0.99) as f64 / 1000.0
        );
        if let Some(cpu) = self.generator_cpu {
            let _ = write!(out, "; generator cpu {:.0}% of one core", cpu * 100.0);
        }
        out.push('\n');
        if let Some((share, us)) = self.server_cpu {
            let _ = writeln!(
                out,
                "server cpu {:.0}% of one core, {us:.1} us per request",
                share * 100.0
            );
        }
        if let Some(foreign) = self.foreign_cpu {
            let _ = writeln!(out, "other work on the machine: {foreign:.2} cores");
        }
        out
    }

    /// One `key=value` line for scripts.
    fn summary(&self, label: &str, mix: Workload) -> String {
        let server = self.server_cpu.map_or(String::new(), |(_, us)| {
            format!(" server_us_per_req={us:.1}")
        });
        format!(
            "{label} mix={} offered={:.0} achieved={:.0} errors={} p50_ms={:.3} p90_ms={:.3} \
             p99_ms={:.3} p999_ms={:.3}{server}",
            format!("{mix:?}").to_lowercase(),
            self.offered_rate,
            self.achieved_rate,
            self.errors(),
            self.ms(None, 0.5),
            self.ms(None, 0.9),
            self.ms(None, 0.99),
            self.ms(None, 0.999),
        )
    }
}

/// Runs one open-loop run; call inside a `LocalSet` on a current-thread runtime.
async fn run(config: &RunConfig) -> Result<Report> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        bail!("rate must be positive, got {}", config.rate);
    }
    if config.connections == 0 || config.connections > CONNECTIONS_MAX {
        bail!(
            "connections must be 1..={CONNECTIONS_MAX}, got {}",
            config.connections
        );
    }
    let trace_file = match &config.trace {
        Some(path) => Some((
            path.as_path(),
            std::fs::File::create(path).with_context(|| format!("creating {path:?}"))?,
        )),
        None => None,
    };
    let clock = Clock::new(config.spin);
    let driver = config
        .spin
        .then(|| tokio::task::spawn_local(clock.clone().drive()));
    // Connect before the schedule starts so set-up is not charged to the first requests; a
    // connection that fails here is retried by its task on its first request.
    let mut conns = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        conns.push(Conn::connect(config.target.addr).await.ok());
    }
    if conns.iter().all(Option::is_none) {
        bail!("cannot connect to {}", config.target.addr);
    }
    let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let kind_stats = || KindStats {
        ok: 0,
        non_2xx: 0,
        conn_errors: 0,
        latency_us: histogram.clone(),
    };
    let first_measured = (config.warmup.as_secs_f64() * config.rate).ceil() as u64;
    let end = ((config.warmup + config.duration).as_secs_f64() * config.rate).ceil() as u64;
    let run = Rc::new(Run {
        config: config.clone(),
        clock,
        start: Instant::now() + Duration::from_millis(10),
        interval_s: 1.0 / config.rate,
        first_measured,
        end,
        stats: RefCell::new(Stats {
            kinds: [kind_stats(), kind_stats(), kind_stats()],
            all_us: histogram.clone(),
            send_lag_us: histogram.clone(),
            warmup_done: 0,
            last_done: None,
            trace: Vec::new(),
            trace_dropped: 0,
        }),
    });
    let cpu_before = CpuSnapshot::take(config.server_pid);
    let mut tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| tokio::task::spawn_local(connection_task(run.clone(), k as u64, conn)))
        .collect();
    let deadline = run.due(end) + config.drain;
    let _ = tokio::time::timeout_at(deadline.into(), async {
        for task in &mut tasks {
            let _ = task.await;
        }
    })
    .await;
    let cpu_after = CpuSnapshot::take(config.server_pid);
    let wall = cpu_after.elapsed_since(&cpu_before).as_secs_f64();
    for task in &tasks {
        task.abort();
    }
    if let Some(driver) = driver {
        driver.abort();
    }

    let stats = run.stats.replace(Stats {
        kinds: [kind_stats(), kind_stats(), kind_stats()],
        all_us: histogram.clone(),
        send_lag_us: histogram,
        warmup_done: 0,
        last_done: None,
        trace: Vec::new(),
        trace_dropped: 0,
    });
    if let Some(file) = trace_file {
        let zero = std::time::SystemTime::now() - run.due(first_measured).elapsed();
        write_trace(file, zero, &stats.trace, stats.trace_dropped)?;
    }
    let done: u64 = stats
        .kinds
        .iter()
        .map(|k| k.ok + k.non_2xx + k.conn_errors)
        .sum();
    let span = stats
        .last_done
        .map_or(config.duration, |last| {
            last.saturating_duration_since(run.due(first_measured))
        })
        .max(config.duration);
    let requests = (done + stats.warmup_done).max(1) as f64;
    Ok(Report {
        offered_rate: config.rate,
        achieved_rate: done as f64 / span.as_secs_f64(),
        unfinished: (end - first_measured).saturating_sub(done),
        kinds: stats.kinds,
        all_us: stats.all_us,
        send_lag_us: stats.send_lag_us,
        generator_cpu: cpu_after
            .own_since(&cpu_before)
            .map(|cpu| cpu.as_secs_f64() / wall),
        foreign_cpu: cpu_after.foreign_since(&cpu_before),
        server_cpu: cpu_after.server_since(&cpu_before).map(|cpu| {
            let cpu = cpu.as_secs_f64();
            (cpu / wall, cpu * 1e6 / requests)
        }),
    })
}

/// Sends requests `k, k + C, k + 2C, ...` on one connection, each at its due time or, when
/// the previous response came late, as soon as it came. Each request is generated before
/// waiting for its due time.
async fn connection_task(run: Rc<Run>, k: u64, mut conn: Option<Conn>) {
    let config = &run.config;
    let mut rng = Rng(config.seed ^ k.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut n = k;
    while n < run.end {
        let (kind, request) = next_request(&mut rng, config.mix, config.users, &config.target);
        let due = run.due(n);
        if Instant::now() < due {
            run.clock.sleep_until(due).await;
            if n >= run.first_measured {
                let lag = Instant::now().saturating_duration_since(due).as_micros();
                run.stats
                    .borrow_mut()
                    .send_lag_us
                    .saturating_record(u64::try_from(lag).unwrap_or(u64::MAX));
            }
        }
        let outcome = exchange(&run.config.target, &mut conn, &request).await;
        run.record(n, kind, &outcome);
        n += config.connections as u64;
    }
}

async fn exchange(target: &Target, slot: &mut Option<Conn>, request: &[u8]) -> Result<u16> {
    let conn = match slot {
        Some(conn) => conn,
        None => slot.insert(Conn::connect(target.addr).await?),
    };
    match conn.exchange(request, false).await {
        Ok(response) => {
            if response.close {
                *slot = None;
            }
            Ok(response.status)
        }
        Err(e) => {
            *slot = None;
            Err(e)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The search for the highest rate that holds, as `nova-bench max` does it: rising steps
// until one misses, then bisection between the last good and the first bad rate.

struct MaxSearch {
    load: RunConfig,
    start: f64,
    factor: f64,
    p99_ms: f64,
    achieved_share_min: f64,
    bisect: u32,
    retries: u32,
    rate_max: f64,
    /// The last step that missed, kept for the report when nothing held.
    last_miss: Option<(f64, Report)>,
}

impl MaxSearch {
    async fn run(&mut self) -> Result<Option<(f64, Report)>> {
        let mut best: Option<(f64, Report)> = None;
        let mut bad: Option<f64> = None;
        let mut rate = self.start;
        loop {
            let report = self.step(rate).await?;
            if !self.holds(&report) {
                bad = Some(rate);
                self.last_miss = Some((rate, report));
                break;
            }
            best = Some((rate, report));
            if rate >= self.rate_max {
                break;
            }
            rate = (rate * self.factor).min(self.rate_max).round();
        }
        for _ in 0..self.bisect {
            let (Some(good), Some(miss)) = (best.as_ref().map(|b| b.0), bad) else {
                break;
            };
            let mid = ((good + miss) / 2.0).round();
            if mid <= good || mid >= miss {
                break;
            }
            let report = self.step(mid).await?;
            if self.holds(&report) {
                best = Some((mid, report));
            } else {
                bad = Some(mid);
                self.last_miss = Some((mid, report));
            }
        }
        Ok(best)
    }

    /// Runs one rate, again up to `retries` times while it misses; prints each attempt.
    async fn step(&self, rate: f64) -> Result<Report> {
        let mut attempt = 0;
        loop {
            let config = RunConfig {
                rate,
                seed: self.load.seed.wrapping_add(rate.to_bits()) ^ u64::from(attempt),
                ..self.load.clone()
            };
            let report = run(&config).await?;
            let holds = self.holds(&report);
            let server = report.server_cpu.map_or(String::new(), |(share, us)| {
                format!(" server-cpu {:.0}% {us:.1} us/req", share * 100.0)
            });
            println!(
                "rate {rate:>7.0} achieved {:>7.0} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms \
                 errors {}{server}: {}",
                report.achieved_rate,
                report.ms(None, 0.5),
                report.ms(None, 0.9),
                report.ms(None, 0.99),
                report.ms(None, 0.999),
                report.errors(),
                if holds { "holds" } else { "misses" }
            );
            // Idle between steps so one step's stragglers do not land in the next.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if holds || attempt >= self.retries {
                return Ok(report);
            }
            attempt += 1;
        }
    }

    fn holds(&self, report: &Report) -> bool {
        report.errors() == 0
            && report.ms(None, 0.99) <= self.p99_ms
            && report.achieved_rate >= self.achieved_share_min * report.offered_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edge_lists() {
        let g = Graph::parse("% comment\nsource target\n1 0\n\n2,1\n# x\n5\t3 1.0\n4 4\n").unwrap();
        assert_eq!(g.edges, vec![(1, 0), (2, 1), (5, 3)]);
        assert_eq!(g.nodes, 6);
        assert!(Graph::parse("% only comments\n").is_err());
    }

    #[test]
    fn generates_a_graph_of_the_asked_size() {
        let g = Graph::generate(GENERATED_NODES, GENERATED_EDGES, 7);
        assert_eq!(g.edges.len(), GENERATED_EDGES);
        assert!(g
            .edges
            .iter()
            .all(|&(a, b)| a != b && a.max(b) < GENERATED_NODES));
    }

    #[test]
    fn composes_like_deathstarbench() {
        let mut rng = Rng(1);
        let form = compose_form(&mut rng, 3, 962);
        assert!(form.starts_with("username=username_3&user_id=3&text="));
        assert!(form.ends_with("&post_type=0"));
        let text = form
            .split("&text=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        let mentions = text.matches(" @username_").count();
        let urls = text.matches(" http://").count();
        assert!((1..=6).contains(&mentions) && (1..=6).contains(&urls));
        assert!(!text.contains("@username_3 ") && !text.ends_with("@username_3"));
        assert!(form.contains("&media_types=[\"png\""));
        let t = Target::parse("http://127.0.0.1:1").unwrap();
        let mut kinds = [0; 3];
        for _ in 0..1000 {
            let (kind, request) = next_request(&mut rng, Workload::Mix, 962, &t);
            kinds[kind as usize] += 1;
            assert!(request.starts_with(b"GET /wrk2-api/") || request.starts_with(b"POST /wrk2"));
        }
        assert!(
            kinds[0] > 500 && kinds[1] > 220 && kinds[2] > 60,
            "{kinds:?}"
        );
    }
}
