//! `nova-bench`: Nova's benchmark tool. Subcommands: `baseline` (a minimal hyper server to
//! compare against), `load` (one open-loop, coordinated-omission-corrected load run), `max`
//! (the highest rate that keeps p99 under a target) and `login` (a token for the
//! authenticated scenarios). `scripts/bench.sh` strings them together; `docs/benchmarks.md`
//! holds the method and the numbers.

mod baseline;
mod clock;
mod http1;
mod load;
mod login;
mod machine;
mod max;
mod url;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::load::LoadConfig;
use crate::max::MaxConfig;
use crate::url::Target;

#[derive(Parser)]
#[command(
    name = "nova-bench",
    about = "Nova's load generator and side-by-side baseline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A minimal hyper server on one core answering GET /health.
    Baseline {
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: SocketAddr,
    },
    /// One open-loop load run at a fixed rate.
    Load {
        #[command(flatten)]
        target: TargetArgs,
        /// Requests per second, offered on a fixed schedule.
        #[arg(long)]
        rate: f64,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// Steps the rate up until p99 misses the target; prints `max_rate=N p99_ms=X` (and
    /// `server_us_per_req=Y` with --server-pid).
    Max {
        #[command(flatten)]
        target: TargetArgs,
        /// The p99 latency target in milliseconds.
        #[arg(long, default_value_t = 5.0)]
        p99_ms: f64,
        /// First rate tried, requests per second.
        #[arg(long, default_value_t = 2000.0)]
        start: f64,
        /// Each step offers this many times the previous rate.
        #[arg(long, default_value_t = 1.25)]
        factor: f64,
        /// Measured seconds per step.
        #[arg(long, default_value_t = 3.0)]
        step_s: f64,
        /// Bisection rounds between the last rate that held and the first that missed.
        #[arg(long, default_value_t = 0)]
        bisect: u32,
        /// Reruns of a missed step before it counts (a noisy machine hiccups).
        #[arg(long, default_value_t = 1)]
        retries: u32,
        /// A step must achieve at least this share of its offered rate.
        #[arg(long, default_value_t = 0.95)]
        achieved_share_min: f64,
        /// Stop searching at this rate.
        #[arg(long, default_value_t = 1_000_000.0)]
        rate_max: f64,
        /// Rerun a step when other work on the machine used more than this many cores
        /// during it (0 trusts every step).
        #[arg(long, default_value_t = 0.15)]
        noise_cores_max: f64,
        /// Limit on noisy reruns over the search.
        #[arg(long, default_value_t = 30)]
        noisy_reruns_max: u32,
        /// Limit in seconds on each wait for the machine to be quiet.
        #[arg(long, default_value_t = 120.0)]
        quiet_wait_s: f64,
    },
    /// Registers a random user and logs in; prints the access token.
    Login {
        /// The server's base URL, e.g. http://127.0.0.1:18080
        #[arg(long)]
        url: String,
    },
}

#[derive(Args)]
struct TargetArgs {
    /// The URL to GET, e.g. http://127.0.0.1:18080/health
    #[arg(long)]
    url: String,
    /// An extra request header, 'Name: value'; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Keep-alive connections; requests are spread round-robin over them. Enough that the
    /// server, not the round trips, limits the rate: with 32 a single-core hyper server sat
    /// at 75% CPU when offered more than it could take.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Unmeasured seconds of load before the measured time.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait for responses after the last request is due.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Sleep on tokio's millisecond timer instead of spinning for precise send times (use
    /// when the generator shares a core with the server).
    #[arg(long)]
    no_spin: bool,
    /// The server's pid: report the CPU it spends per request.
    #[arg(long)]
    server_pid: Option<u32>,
}

impl TargetArgs {
    fn load_config(&self, rate: f64, duration_s: f64) -> Result<LoadConfig> {
        let headers = self
            .headers
            .iter()
            .map(|h| http1::parse_header(h))
            .collect::<Result<Vec<_>>>()?;
        Ok(LoadConfig {
            target: Target::parse(&self.url)?,
            headers,
            rate,
            duration: seconds(duration_s, "duration")?,
            warmup: seconds(self.warmup, "warmup")?,
            connections: self.connections,
            drain: seconds(self.drain, "drain")?,
            spin: !self.no_spin,
            server_pid: self.server_pid,
        })
    }
}

fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| anyhow::anyhow!("bad {what} {value}"))
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Baseline { listen } => baseline::serve(listen),
        Command::Load {
            target,
            rate,
            duration,
        } => {
            let config = target.load_config(rate, duration)?;
            println!(
                "load {} at {:.0} req/s for {:.1} s (+{:.1} s warmup) on {} connections",
                target.url,
                rate,
                config.duration.as_secs_f64(),
                config.warmup.as_secs_f64(),
                config.connections
            );
            let report = on_one_core(async { load::run(&config).await })?;
            println!("{report}");
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
            noise_cores_max,
            noisy_reruns_max,
            quiet_wait_s,
        } => {
            if factor <= 1.0 || start <= 0.0 || rate_max < start {
                bail!("need start > 0, factor > 1 and rate-max >= start");
            }
            let config = MaxConfig {
                load: target.load_config(start, step_s)?,
                start_rate: start,
                factor,
                p99_ms,
                achieved_share_min,
                bisect_rounds: bisect,
                retries,
                rate_max,
                pause: Duration::from_millis(300),
                noise_cores_max: (noise_cores_max > 0.0).then_some(noise_cores_max),
                noisy_reruns_max,
                quiet_wait: seconds(quiet_wait_s, "quiet-wait-s")?,
            };
            println!("max {} with p99 <= {p99_ms} ms", target.url);
            match on_one_core(async { max::run(&config).await })? {
                Some(best) => {
                    let cpu = best
                        .server_us_per_request
                        .map_or(String::new(), |us| format!(" server_us_per_req={us:.1}"));
                    println!("max_rate={:.0} p99_ms={:.3}{cpu}", best.rate, best.p99_ms)
                }
                None => println!("max_rate=0 p99_ms=nan"),
            }
            Ok(())
        }
        Command::Login { url } => {
            let target = Target::parse(&url)?;
            let token = on_one_core(async { login::login(&target).await })?;
            println!("{token}");
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
