//! Per-shard request metrics, kept in plain cells (one thread writes them) and merged across
//! shards only when `/metrics` is scraped, by asking every shard over the mesh.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;

use nova_storage::{CommitStatsSnapshot, FSYNC_BUCKETS_S};

/// Emails counted per state for `nova_mail_emails`, at most.
pub const MAIL_COUNTED_MAX: usize = 100_000;

/// Upper bounds (seconds) of the request latency histogram.
pub const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; observations above the last bound are only in count.
    pub buckets: [u64; LATENCY_BUCKETS_S.len()],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        if let Some(i) = LATENCY_BUCKETS_S.iter().position(|&le| seconds <= le) {
            self.buckets[i] += 1;
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: RefCell<HashMap<(&'static str, u16), u64>>,
    latency: RefCell<HashMap<&'static str, Histogram>>,
}

/// Request counts by (route template, status).
pub type RequestCounts = Vec<((&'static str, u16), u64)>;
/// Latency histograms by route template.
pub type Latencies = Vec<(&'static str, Histogram)>;

/// One shard's numbers at one moment; sent across the mesh.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub shard: usize,
    pub requests: RequestCounts,
    pub latency: Latencies,
    pub open_connections: usize,
    pub commit: CommitStatsSnapshot,
    pub mesh_queue_depth: usize,
    /// Events in the outbox not yet acknowledged by their target shard.
    pub outbox_pending: u64,
    /// Events the relay sent again because no acknowledgement came in time.
    pub outbox_redelivered: u64,
    /// Emails waiting here, by state (`queued`, `sending`, `dead`), each counted up to
    /// `MAIL_COUNTED_MAX`.
    pub mail: Vec<(&'static str, u64)>,
    /// Posting segments the shard's search index reads (`search::segments_read`).
    pub search_segments: u64,
    /// Home-feed heads the shard holds in memory (`feeds::Feeds::heads_len`).
    pub feed_heads: u64,
    /// Media files waiting for a transcoding thread (one queue for the process).
    pub transcode_queue_depth: usize,
}

impl Metrics {
    pub fn record(&self, route: &'static str, status: u16, seconds: f64) {
        *self
            .requests
            .borrow_mut()
            .entry((route, status))
            .or_default() += 1;
        self.latency
            .borrow_mut()
            .entry(route)
            .or_default()
            .observe(seconds);
    }

    pub fn snapshot(&self) -> (RequestCounts, Latencies) {
        let requests = self
            .requests
            .borrow()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        let latency = self
            .latency
            .borrow()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        (requests, latency)
    }
}

/// Renders every shard's snapshot in the Prometheus text format.
pub fn render(mut shards: Vec<Snapshot>) -> String {
    shards.sort_by_key(|s| s.shard);
    let mut out = String::with_capacity(8 * 1024);
    out.push_str(
        "# HELP nova_http_requests_total HTTP requests answered, by route template and status.\n",
    );
    out.push_str("# TYPE nova_http_requests_total counter\n");
    for s in &shards {
        let mut rows = s.requests.clone();
        rows.sort();
        for ((route, status), n) in rows {
            let _ = writeln!(out, "nova_http_requests_total{{shard=\"{}\",route=\"{route}\",status=\"{status}\"}} {n}", s.shard);
        }
    }
    out.push_str("# HELP nova_http_request_duration_seconds Time from request head to response, by route template.\n");
    out.push_str("# TYPE nova_http_request_duration_seconds histogram\n");
    for s in &shards {
        let mut rows = s.latency.clone();
        rows.sort_by_key(|(route, _)| *route);
        for (route, h) in rows {
            let labels = format!("shard=\"{}\",route=\"{route}\"", s.shard);
            write_histogram(
                &mut out,
                "nova_http_request_duration_seconds",
                &labels,
                &LATENCY_BUCKETS_S,
                &h.buckets,
                h.count,
                h.sum,
            );
        }
    }
    out.push_str("# HELP nova_open_connections Open client connections per shard.\n");
    out.push_str("# TYPE nova_open_connections gauge\n");
    for s in &shards {
        let _ = writeln!(
            out,
            "nova_open_connections{{shard=\"{}\"}} {}",
            s.shard, s.open_connections
        );
    }
    out.push_str(
        "# HELP nova_mesh_queue_depth Messages waiting in the shard's inbound mesh channel.\n",
    );
    out.push_str("# TYPE nova_mesh_queue_depth gauge\n");
    for s in &shards {
        let _ = writeln!(
            out,
            "nova_mesh_queue_depth{{shard=\"{}\"}} {}",
            s.shard, s.mesh_queue_depth
        );
    }
    per_shard(
        &mut out,
        "nova_outbox_pending",
        "gauge",
        "Events in the shard's outbox not yet acknowledged by their target shard.",
        &shards,
        |s| s.outbox_pending,
    );
    per_shard(
        &mut out,
        "nova_search_segments",
        "gauge",
        "Posting segments the shard's search index reads; about 8 per level while merges keep up, more when they fall behind.",
        &shards,
        |s| s.search_segments,
    );
    per_shard(
        &mut out,
        "nova_feed_heads",
        "gauge",
        "Home-feed heads the shard holds in memory: built by a first read, or ahead of it while the shard is idle (warm_heads).",
        &shards,
        |s| s.feed_heads,
    );
    per_shard(
        &mut out,
        "nova_outbox_redelivered_total",
        "counter",
        "Events the outbox relay sent because their own delivery went unacknowledged (or, for events only the relay sends, after waiting over 2 s).",
        &shards,
        |s| s.outbox_redelivered,
    );
    out.push_str(
        "# HELP nova_mail_emails Emails in the shard's queue by state (queued: waiting or between tries; sending: handed to the relay; dead: out of tries), counted up to 100000.\n",
    );
    out.push_str("# TYPE nova_mail_emails gauge\n");
    for s in &shards {
        for (state, n) in &s.mail {
            let _ = writeln!(
                out,
                "nova_mail_emails{{shard=\"{}\",state=\"{state}\"}} {n}",
                s.shard
            );
        }
    }
    if let Some(s) = shards.first() {
        out.push_str(
            "# HELP nova_transcode_queue_depth Media files waiting for a transcoding thread.\n",
        );
        out.push_str("# TYPE nova_transcode_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "nova_transcode_queue_depth {}",
            s.transcode_queue_depth
        );
    }
    out.push_str(
        "# HELP nova_commit_batches_total Group commits (one write transaction and fsync each).\n",
    );
    out.push_str("# TYPE nova_commit_batches_total counter\n");
    for s in &shards {
        let _ = writeln!(
            out,
            "nova_commit_batches_total{{shard=\"{}\"}} {}",
            s.shard, s.commit.batches
        );
    }
    out.push_str("# HELP nova_commit_ops_total Write operations committed through group commit.\n");
    out.push_str("# TYPE nova_commit_ops_total counter\n");
    for s in &shards {
        let _ = writeln!(
            out,
            "nova_commit_ops_total{{shard=\"{}\"}} {}",
            s.shard, s.commit.ops
        );
    }
    out.push_str(
        "# HELP nova_commit_logged_total Group commits made durable by the write-ahead log, left in memory until a checkpoint.\n",
    );
    out.push_str("# TYPE nova_commit_logged_total counter\n");
    for s in &shards {
        let _ = writeln!(
            out,
            "nova_commit_logged_total{{shard=\"{}\"}} {}",
            s.shard, s.commit.logged
        );
    }
    out.push_str("# HELP nova_commit_failures_total Group commits that failed.\n");
    out.push_str("# TYPE nova_commit_failures_total counter\n");
    for s in &shards {
        let _ = writeln!(
            out,
            "nova_commit_failures_total{{shard=\"{}\"}} {}",
            s.shard, s.commit.failures
        );
    }
    out.push_str("# HELP nova_commit_fsync_seconds Time to apply and durably commit one batch.\n");
    out.push_str("# TYPE nova_commit_fsync_seconds histogram\n");
    for s in &shards {
        let labels = format!("shard=\"{}\"", s.shard);
        write_histogram(
            &mut out,
            "nova_commit_fsync_seconds",
            &labels,
            &FSYNC_BUCKETS_S,
            &s.commit.fsync_buckets,
            s.commit.batches,
            s.commit.fsync_seconds_sum,
        );
    }
    out
}

fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds: &[f64],
    buckets: &[u64],
    count: u64,
    sum: f64,
) {
    let mut cumulative = 0;
    for (le, n) in bounds.iter().zip(buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// One series per shard: `name{shard="N"} value`.
fn per_shard(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    shards: &[Snapshot],
    value: impl Fn(&Snapshot) -> u64,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for s in shards {
        let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.shard, value(s));
    }
}
