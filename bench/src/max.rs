//! The search for the highest rate a server holds: run open-loop steps at rising rates
//! (`start`, `start * factor`, ...) until one misses (p99 over the target, any error, or
//! achieved rate under a share of offered), optionally bisect between the last good and
//! the first bad rate, and report the best good rate. A step during which other work ran on
//! the machine (see `machine`) is rerun once the machine is quiet again.

use std::time::Duration;

use anyhow::Result;

use crate::load::{self, LoadConfig, LoadReport};
use crate::machine;

#[derive(Clone, Debug)]
pub struct MaxConfig {
    /// Everything but the rate, which the search sets.
    pub load: LoadConfig,
    pub start_rate: f64,
    /// Each step offers this many times the previous rate.
    pub factor: f64,
    /// A step holds when it had no error at all, its p99 is at most this...
    pub p99_ms: f64,
    /// ...and it achieved at least this share of the offered rate.
    pub achieved_share_min: f64,
    /// Bisection rounds between the last good and the first bad rate.
    pub bisect_rounds: u32,
    /// A missed step is run again this many times before it counts as missed, because one
    /// hiccup of a noisy machine should not end the search.
    pub retries: u32,
    /// The search stops here even if the server holds.
    pub rate_max: f64,
    /// Idle time between steps, so one step's stragglers do not land in the next.
    pub pause: Duration,
    /// A step during which other work used more than this many cores is noisy: it is rerun
    /// after waiting for quiet. `None` trusts every step.
    pub noise_cores_max: Option<f64>,
    /// Limit on noisy reruns over the whole search; past it noisy steps are trusted.
    pub noisy_reruns_max: u32,
    /// Limit on each wait for quiet.
    pub quiet_wait: Duration,
}

/// The answer: the best rate that held and its p99, or none if even the first step missed.
pub struct MaxResult {
    pub rate: f64,
    pub p99_ms: f64,
    /// The server's CPU per request at that rate, when its pid was given.
    pub server_us_per_request: Option<f64>,
}

impl MaxResult {
    fn new(rate: f64, report: &LoadReport) -> MaxResult {
        MaxResult {
            rate,
            p99_ms: report.ms(0.99),
            server_us_per_request: report.server_cpu.map(|cpu| cpu.us_per_request),
        }
    }
}

pub async fn run(config: &MaxConfig) -> Result<Option<MaxResult>> {
    let mut search = Search {
        config,
        noisy_reruns: 0,
    };
    search.wait_quiet().await;
    let mut best: Option<MaxResult> = None;
    let mut bad: Option<f64> = None;
    let mut rate = config.start_rate;
    loop {
        let report = search.step(rate).await?;
        if holds(config, &report) {
            best = Some(MaxResult::new(rate, &report));
            if rate >= config.rate_max {
                break;
            }
            rate = (rate * config.factor).min(config.rate_max).round();
        } else {
            bad = Some(rate);
            break;
        }
    }
    for _ in 0..config.bisect_rounds {
        let (Some(good), Some(miss)) = (best.as_ref().map(|b| b.rate), bad) else {
            break;
        };
        let mid = ((good + miss) / 2.0).round();
        if mid <= good || mid >= miss {
            break;
        }
        let report = search.step(mid).await?;
        if holds(config, &report) {
            best = Some(MaxResult::new(mid, &report));
        } else {
            bad = Some(mid);
        }
    }
    Ok(best)
}

struct Search<'a> {
    config: &'a MaxConfig,
    noisy_reruns: u32,
}

impl Search<'_> {
    /// Runs one rate, rerunning it while noisy and while it misses (up to the retries);
    /// prints one line per attempt.
    async fn step(&mut self, rate: f64) -> Result<LoadReport> {
        let config = self.config;
        let mut attempt = 0;
        loop {
            let load = LoadConfig {
                rate,
                ..config.load.clone()
            };
            let report = load::run(&load).await?;
            let noisy = match (config.noise_cores_max, report.foreign_cpu) {
                (Some(max), Some(foreign)) => {
                    foreign > max && self.noisy_reruns < config.noisy_reruns_max
                }
                _ => false,
            };
            let verdict = match (noisy, holds(config, &report)) {
                (true, _) => "noisy, rerun",
                (false, true) => "holds",
                (false, false) => "misses",
            };
            print_step(rate, &report, verdict);
            tokio::time::sleep(config.pause).await;
            if noisy {
                self.noisy_reruns += 1;
                self.wait_quiet().await;
                continue;
            }
            if holds(config, &report) || attempt >= config.retries {
                return Ok(report);
            }
            attempt += 1;
        }
    }

    async fn wait_quiet(&self) {
        let Some(max) = self.config.noise_cores_max else {
            return;
        };
        let (waited, last) =
            machine::wait_quiet(self.config.load.server_pid, max, self.config.quiet_wait).await;
        if waited > Duration::from_secs(3) {
            let last = last.map_or("?".to_string(), |c| format!("{c:.2}"));
            println!(
                "waited {:.0} s for other work to stop (now {last} cores)",
                waited.as_secs_f64()
            );
        }
    }
}

fn print_step(rate: f64, report: &LoadReport, verdict: &str) {
    let server = report.server_cpu.map_or(String::new(), |cpu| {
        format!(
            " server-cpu {:.0}% {:.1} us/req",
            cpu.share * 100.0,
            cpu.us_per_request
        )
    });
    let foreign = report
        .foreign_cpu
        .map_or(String::new(), |c| format!(" other-work {c:.2}"));
    println!(
        "rate {:>7.0} achieved {:>7.0} p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms errors {} \
         send-lag p99 {:.3} ms{server}{foreign}: {verdict}",
        rate,
        report.achieved_rate,
        report.ms(0.5),
        report.ms(0.99),
        report.ms(0.999),
        report.max_ms(),
        report.errors(),
        report.send_lag_p99_ms(),
    );
}

fn holds(config: &MaxConfig, report: &LoadReport) -> bool {
    report.errors() == 0
        && report.ms(0.99) <= config.p99_ms
        && report.achieved_rate >= config.achieved_share_min * report.offered_rate
}
