//! The open-loop load generator. Request `n` is due at `start + n / rate`, whatever happened
//! to earlier requests, and request `n` goes on connection `n % connections` (one request in
//! flight per keep-alive connection, as a browser or a proxy would). Latency is measured from
//! the request's *due* time, not from when it was written, so a server that stalls is
//! charged for every request that queued behind the stall (the "coordinated omission"
//! correction of wrk2). Everything runs on one thread: a current-thread tokio runtime and
//! a `LocalSet`.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hdrhistogram::Histogram;

use crate::clock::Clock;
use crate::http1::{encode_request, Conn};
use crate::machine::CpuSnapshot;
use crate::url::Target;

/// Largest latency the histogram tracks; longer ones are recorded as this.
const LATENCY_US_MAX: u64 = 60_000_000;
/// Limit on connections, so a typo cannot exhaust file descriptors.
pub const CONNECTIONS_MAX: usize = 10_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub target: Target,
    /// Extra request headers, e.g. `Authorization`.
    pub headers: Vec<(String, String)>,
    /// Requests per second, offered whatever the server does.
    pub rate: f64,
    /// Measured time.
    pub duration: Duration,
    /// Load before the measured time, not recorded (connections warm, caches filled).
    pub warmup: Duration,
    pub connections: usize,
    /// After the last request is due, how long to wait for the stragglers.
    pub drain: Duration,
    /// Use the spinning precise timer (see `clock`); off when sharing a core.
    pub spin: bool,
    /// The server's process id, to report the CPU it used per request.
    pub server_pid: Option<u32>,
}

/// What happened during the measured time.
pub struct LoadReport {
    pub offered_rate: f64,
    /// Responses for measured requests divided by the time from the start of the measured
    /// window to the last such response (at least the window).
    pub achieved_rate: f64,
    /// Responses (to any request) received during the measured window, per second: under
    /// overload this is the server's capacity, while `achieved_rate` falls towards zero.
    pub throughput: f64,
    pub ok: u64,
    /// Responses with a status outside 2xx.
    pub non_2xx: u64,
    /// Requests that failed on the connection (refused, reset, closed, unparsable).
    pub conn_errors: u64,
    /// Measured requests with no outcome when the drain time ran out.
    pub unfinished: u64,
    /// Latency in microseconds from due time to response, for every response (2xx or not).
    pub latency_us: Histogram<u64>,
    /// How late the generator itself sent requests whose connection was free before they
    /// were due, in microseconds: near zero unless the generator is the bottleneck.
    pub send_lag_us: Histogram<u64>,
    /// Share of one core the generator used during the run, when the OS says.
    pub generator_cpu: Option<f64>,
    /// Other work on the machine during the run, in cores (see `machine`).
    pub foreign_cpu: Option<f64>,
    /// The server's CPU use over the whole run (warmup included), when its pid was given.
    pub server_cpu: Option<ServerCpu>,
}

/// CPU the server process (all its threads) used during a run.
#[derive(Clone, Copy, Debug)]
pub struct ServerCpu {
    /// Share of one core.
    pub share: f64,
    /// Microseconds of CPU per response: a measure of cost that, unlike the maximum rate,
    /// hardly moves when other work shares the machine.
    pub us_per_request: f64,
}

impl LoadReport {
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.conn_errors + self.unfinished
    }

    /// The latency at `quantile` in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The generator's own send lag at p99, in milliseconds.
    pub fn send_lag_p99_ms(&self) -> f64 {
        self.send_lag_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "achieved {:.0} req/s of {:.0} offered; {} ok, {} non-2xx, {} connection errors, \
             {} unfinished",
            self.achieved_rate,
            self.offered_rate,
            self.ok,
            self.non_2xx,
            self.conn_errors,
            self.unfinished
        )?;
        writeln!(
            f,
            "throughput {:.0} responses/s during the measured window",
            self.throughput
        )?;
        write!(
            f,
            "latency ms from intended send time: p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} \
             max {:.3}",
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.max_ms()
        )?;
        write!(
            f,
            "\ngenerator send lag ms: p99 {:.3}",
            self.send_lag_p99_ms()
        )?;
        if let Some(cpu) = self.generator_cpu {
            write!(
                f,
                "; cpu {:.0}% of one core (spinning counts as busy)",
                cpu * 100.0
            )?;
        }
        if let Some(server) = self.server_cpu {
            write!(
                f,
                "\nserver cpu {:.0}% of one core, {:.1} us per request",
                server.share * 100.0,
                server.us_per_request
            )?;
        }
        if let Some(foreign) = self.foreign_cpu {
            write!(f, "\nother work on the machine: {:.2} cores", foreign)?;
        }
        Ok(())
    }
}

/// Shared by the connection tasks of one run (one thread, hence `Rc`/`RefCell`).
struct Run {
    request: Vec<u8>,
    target: Target,
    clock: Clock,
    start: Instant,
    /// Seconds between two consecutive requests (over all connections).
    interval_s: f64,
    connections: usize,
    /// Requests `first_measured..end` are recorded; `0..first_measured` are warmup.
    first_measured: u64,
    end: u64,
    stats: RefCell<Stats>,
}

struct Stats {
    ok: u64,
    non_2xx: u64,
    conn_errors: u64,
    /// Responses and errors of warmup requests, for the server's CPU per request.
    warmup_done: u64,
    /// Outcomes of any request that arrived during the measured window (by the clock, not
    /// by due time): the delivered throughput, meaningful even when the server is overloaded.
    in_window: u64,
    last_done: Option<Instant>,
    latency_us: Histogram<u64>,
    send_lag_us: Histogram<u64>,
}

impl Run {
    fn due(&self, n: u64) -> Instant {
        self.start + Duration::from_secs_f64(n as f64 * self.interval_s)
    }

    fn record_send_lag(&self, n: u64, lag: Duration) {
        if n >= self.first_measured {
            let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
            self.stats.borrow_mut().send_lag_us.saturating_record(us);
        }
    }

    fn record(&self, n: u64, outcome: &Result<u16>) {
        let done = Instant::now();
        let mut stats = self.stats.borrow_mut();
        if (self.due(self.first_measured)..self.due(self.end)).contains(&done) {
            stats.in_window += 1;
        }
        if n < self.first_measured {
            stats.warmup_done += 1;
            return;
        }
        match outcome {
            Ok(status) => {
                let us = done.saturating_duration_since(self.due(n)).as_micros();
                stats
                    .latency_us
                    .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
                if (200..300).contains(status) {
                    stats.ok += 1;
                } else {
                    stats.non_2xx += 1;
                }
            }
            Err(_) => stats.conn_errors += 1,
        }
        stats.last_done = Some(done);
    }
}

/// Runs one load test; call inside a `LocalSet` on a current-thread runtime.
pub async fn run(config: &LoadConfig) -> Result<LoadReport> {
    if !(config.rate.is_finite() && config.rate > 0.0) {
        bail!("rate must be positive, got {}", config.rate);
    }
    if config.connections == 0 || config.connections > CONNECTIONS_MAX {
        bail!(
            "connections must be 1..={CONNECTIONS_MAX}, got {}",
            config.connections
        );
    }
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

    let latency_us = Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)?;
    let first_measured = (config.warmup.as_secs_f64() * config.rate).ceil() as u64;
    let end = ((config.warmup + config.duration).as_secs_f64() * config.rate).ceil() as u64;
    let run = Rc::new(Run {
        request: encode_request("GET", &config.target, &config.headers, None),
        target: config.target.clone(),
        clock,
        start: Instant::now() + Duration::from_millis(10),
        interval_s: 1.0 / config.rate,
        connections: config.connections,
        first_measured,
        end,
        stats: RefCell::new(Stats {
            ok: 0,
            non_2xx: 0,
            conn_errors: 0,
            warmup_done: 0,
            in_window: 0,
            last_done: None,
            send_lag_us: latency_us.clone(),
            latency_us,
        }),
    });
    let cpu_before = CpuSnapshot::take(config.server_pid);
    let mut tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(k, conn)| tokio::task::spawn_local(connection_task(run.clone(), k as u64, conn)))
        .collect();
    // Wait for every task or the drain deadline, whichever comes first.
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

    let stats = run.stats.borrow();
    let measured = end - first_measured;
    let done = stats.ok + stats.non_2xx + stats.conn_errors;
    let window_start = run.due(first_measured);
    let span = stats
        .last_done
        .map_or(config.duration, |last| {
            last.saturating_duration_since(window_start)
        })
        .max(config.duration);
    Ok(LoadReport {
        offered_rate: config.rate,
        achieved_rate: done as f64 / span.as_secs_f64(),
        throughput: stats.in_window as f64 / config.duration.as_secs_f64(),
        ok: stats.ok,
        non_2xx: stats.non_2xx,
        conn_errors: stats.conn_errors,
        unfinished: measured.saturating_sub(done),
        latency_us: stats.latency_us.clone(),
        send_lag_us: stats.send_lag_us.clone(),
        generator_cpu: cpu_after
            .own_since(&cpu_before)
            .map(|cpu| cpu.as_secs_f64() / wall),
        foreign_cpu: cpu_after.foreign_since(&cpu_before),
        server_cpu: cpu_after.server_since(&cpu_before).map(|cpu| {
            let cpu = cpu.as_secs_f64();
            let requests = (done + stats.warmup_done).max(1) as f64;
            ServerCpu {
                share: cpu / wall,
                us_per_request: cpu * 1e6 / requests,
            }
        }),
    })
}

/// Sends requests `k, k + C, k + 2C, ...` on one connection, each at its due time or, when
/// the previous response came late, as soon as it came.
async fn connection_task(run: Rc<Run>, k: u64, mut conn: Option<Conn>) {
    let mut n = k;
    while n < run.end {
        let due = run.due(n);
        // A request already overdue waited for its connection (the server's doing, charged
        // in its latency); one not yet due measures how precisely the generator sends.
        if Instant::now() < due {
            run.clock.sleep_until(due).await;
            run.record_send_lag(n, Instant::now().saturating_duration_since(due));
        }
        let outcome = exchange(&run, &mut conn).await;
        run.record(n, &outcome);
        n += run.connections as u64;
    }
}

async fn exchange(run: &Run, slot: &mut Option<Conn>) -> Result<u16> {
    let conn = match slot {
        Some(conn) => conn,
        None => slot.insert(Conn::connect(run.target.addr).await?),
    };
    match conn.exchange(&run.request, false).await {
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
