//! Web Push delivery (RFC 8030 with RFC 8291 encryption and RFC 8292 VAPID) on dedicated
//! threads, never on a shard's executor.
//!
//! A shard hears of a committed notification (`notify::Fresh`), looks up the recipient's
//! subscriptions (local: they live on the recipient's shard, like the notification), builds
//! the payload (the notification's JSON, as `GET /v1/notifications` shows it) and offers one
//! `Job` per subscription to a bounded queue (`try_send`: a full queue drops the message and
//! counts it; a request never waits for push).
//!
//! Each delivery thread encrypts, signs and POSTs with `ureq` (connect, read and write
//! timeouts), and keeps its own retry queue: 429, 5xx and transport errors are retried up to
//! `push_retries_max` times with exponential backoff and jitter. A circuit breaker per push
//! service host (shared by the threads) opens after `push_breaker_failures` consecutive
//! failures: while open, messages for that host are not sent but wait (as retries) for the
//! cool-down; then one trial request is let through (half-open), whose outcome closes or
//! reopens it. A 404 or 410 means the subscription is gone: it is deleted through the owning
//! shard's partition (`Partition::write_blocking`, from this thread).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Read as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nova_core::notifications::Notification;
use nova_core::push::{self as core_push, Endpoint, Subscription, Vapid};
use nova_core::shard_of;
use nova_protocol as wire;
use nova_storage::Partition;

use crate::config::Config;
use crate::shard::{now_ms, Shard};

/// Retries one delivery thread keeps waiting, at most; past it a failed message is dropped.
const RETRIES_PENDING_MAX: usize = 10_000;
/// Hosts with a breaker remembered; past it healthy ones are forgotten.
const BREAKER_HOSTS_MAX: usize = 10_000;
/// A VAPID JWT is valid this long (RFC 8292 allows up to 24 h) and reused until an hour
/// before it ends.
const JWT_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const JWT_REUSE_MARGIN: Duration = Duration::from_secs(3600);
const JWTS_CACHED_MAX: usize = 1000;
/// Bytes of a push service's answer read (and thrown away) so the connection can be reused.
const ANSWER_BYTES_MAX: u64 = 16 * 1024;
/// The longest `Retry-After` honoured, and the longest backoff.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(600);
/// How long a shard waits for actor names when building a payload.
const PAYLOAD_BUILD_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the push threads, for logs and tests.
#[derive(Default, Debug)]
pub struct Stats {
    pub queued: AtomicU64,
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
    pub removed: AtomicU64,
    pub breaker_refused: AtomicU64,
}

/// A shard's handle on the push threads.
#[derive(Clone)]
pub struct Push {
    tx: flume::Sender<Job>,
    public_key: Arc<str>,
    pub stats: Arc<Stats>,
}

impl Push {
    /// The VAPID public key (base64url, uncompressed point).
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The push counters in Prometheus text (one set for the process: the threads are shared).
    pub fn metrics_text(&self) -> String {
        let s = &self.stats;
        let mut out = String::from(
            "# HELP nova_push_messages_total Web Push messages, by what became of them.\n\
             # TYPE nova_push_messages_total counter\n",
        );
        for (outcome, n) in [
            ("queued", &s.queued),
            ("sent", &s.sent),
            ("retried", &s.retried),
            ("dropped", &s.dropped),
            ("removed", &s.removed),
            ("breaker_refused", &s.breaker_refused),
        ] {
            out.push_str(&format!(
                "nova_push_messages_total{{outcome=\"{outcome}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out
    }

    fn offer(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("push queue full: message dropped");
            }
        }
    }
}

/// One message to one subscription.
struct Job {
    user: u64,
    endpoint: String,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
    /// When the subscription was made: a retry goes only to that same subscription.
    created_ms: u64,
    payload: Vec<u8>,
    /// Tries made so far.
    tries: u32,
}

/// The delivery threads; `stop` ends them (messages still waiting are dropped).
pub struct Threads {
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Threads {
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
    }
}

/// What the delivery threads are told by the config.
#[derive(Clone)]
struct Settings {
    allow_insecure_loopback: bool,
    timeout: Duration,
    retries_max: u32,
    backoff: Duration,
    breaker_failures: u32,
    breaker_cooldown: Duration,
    ttl_s: u64,
    subject: String,
}

/// Starts `cfg.push_threads` delivery threads.
pub fn start(
    cfg: &Config,
    vapid: Vapid,
    partitions: Vec<Arc<Partition>>,
) -> std::io::Result<(Push, Threads)> {
    let (tx, rx) = flume::bounded(cfg.push_queue_max);
    let stats = Arc::new(Stats::default());
    let public_key: Arc<str> = vapid.public_key_b64().into();
    let vapid = Arc::new(vapid);
    let breakers = Arc::new(Mutex::new(Breakers::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let settings = Settings {
        allow_insecure_loopback: cfg.push_allow_insecure_loopback,
        timeout: Duration::from_millis(cfg.push_timeout_ms),
        retries_max: cfg.push_retries_max,
        backoff: Duration::from_millis(cfg.push_backoff_ms),
        breaker_failures: cfg.push_breaker_failures,
        breaker_cooldown: Duration::from_millis(cfg.push_breaker_cooldown_ms),
        ttl_s: cfg.push_ttl_s,
        subject: cfg.vapid_subject.clone(),
    };
    let mut handles = Vec::with_capacity(cfg.push_threads);
    for k in 0..cfg.push_threads {
        let worker = Worker {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(settings.timeout)
                .timeout_read(settings.timeout)
                .timeout_write(settings.timeout)
                // Bounds a whole request too (and so how long shutdown waits for a thread).
                .timeout(settings.timeout)
                .redirects(0)
                .resolver(guarded_resolver(settings.allow_insecure_loopback))
                .build(),
            settings: settings.clone(),
            vapid: Arc::clone(&vapid),
            breakers: Arc::clone(&breakers),
            partitions: partitions.clone(),
            stats: Arc::clone(&stats),
            retries: BinaryHeap::new(),
            seq: 0,
            jwts: HashMap::new(),
        };
        let rx = rx.clone();
        let stop = Arc::clone(&stop);
        handles.push(
            std::thread::Builder::new()
                .name(format!("nova-push-{k}"))
                .spawn(move || worker.run(&rx, &stop))?,
        );
    }
    Ok((
        Push {
            tx,
            public_key,
            stats,
        },
        Threads { handles, stop },
    ))
}

/// The listener `server.rs` registers on every shard's `notify::Fresh`: offers each fresh
/// notification to the push threads, once per subscription of its recipient.
pub fn on_fresh(shard: &Rc<Shard>, fresh: &[Notification]) {
    let max = shard.cfg.push_subscriptions_per_user_max;
    let found = shard.read(|r| {
        let mut out = Vec::new();
        for n in fresh {
            let subs = core_push::subscriptions(r, n.recipient, max)?;
            if !subs.is_empty() {
                out.push((n.clone(), subs));
            }
        }
        Ok(out)
    });
    let wanted: Vec<(Notification, Vec<Subscription>)> = match found {
        Ok(w) if !w.is_empty() => w,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "push: cannot read subscriptions");
            return;
        }
    };
    let shard = Rc::clone(shard);
    glommio::spawn_local(async move {
        let deadline = Instant::now() + PAYLOAD_BUILD_TIMEOUT;
        let mut actors: Vec<u64> = wanted.iter().filter_map(|(n, _)| n.actor).collect();
        actors.sort_unstable();
        actors.dedup();
        let names = crate::api_notify::actor_names(&shard, &actors, deadline).await;
        for (n, subs) in wanted {
            let payload = wire::to_json(&crate::api_notify::view(&n, &names));
            for sub in subs {
                shard.push.offer(Job {
                    user: n.recipient,
                    endpoint: sub.endpoint,
                    p256dh: sub.p256dh,
                    auth: sub.auth,
                    created_ms: sub.created_ms,
                    payload: payload.clone(),
                    tries: 0,
                });
            }
        }
    })
    .detach();
}

struct Due {
    at: Instant,
    seq: u64,
    job: Job,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Worker {
    agent: ureq::Agent,
    settings: Settings,
    vapid: Arc<Vapid>,
    breakers: Arc<Mutex<Breakers>>,
    partitions: Vec<Arc<Partition>>,
    stats: Arc<Stats>,
    retries: BinaryHeap<Reverse<Due>>,
    seq: u64,
    /// origin -> (Authorization header, when to make a new one)
    jwts: HashMap<String, (String, Instant)>,
}

/// How one try ended.
enum Outcome {
    Delivered,
    /// 404/410: the subscription no longer exists.
    Gone,
    /// Worth trying again (transport error, 429, 5xx), maybe not before a time.
    Retry(Option<Duration>),
    /// Refused for good (another 4xx, a payload that cannot be encrypted).
    Refused,
}

impl Worker {
    fn run(mut self, rx: &flume::Receiver<Job>, stop: &AtomicBool) {
        /// How often a waiting thread looks at the stop flag.
        const IDLE_WAKE: Duration = Duration::from_millis(200);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            while self.retries.peek().is_some_and(|Reverse(d)| d.at <= now) {
                if let Some(Reverse(due)) = self.retries.pop() {
                    self.attempt(due.job);
                }
            }
            let wait = self
                .retries
                .peek()
                .map_or(IDLE_WAKE, |Reverse(d)| d.at.saturating_duration_since(now))
                .min(IDLE_WAKE);
            match rx.recv_timeout(wait) {
                Ok(job) => self.attempt(job),
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    if self.retries.is_empty() {
                        return;
                    }
                    std::thread::sleep(wait);
                }
            }
        }
    }

    fn attempt(&mut self, mut job: Job) {
        let endpoint = match Endpoint::parse(&job.endpoint, self.settings.allow_insecure_loopback) {
            Ok(e) => e,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // A retry of a subscription deleted (or replaced) since is not sent.
        if job.tries > 0 && !self.still_subscribed(&job) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let host = endpoint.host_port().to_string();
        let admitted = self.breakers().admit(&host, Instant::now(), &self.settings);
        if let Err(until) = admitted {
            self.stats.breaker_refused.fetch_add(1, Ordering::Relaxed);
            job.tries += 1;
            self.retry_or_drop(job, Some(until));
            return;
        }
        job.tries += 1;
        let outcome = self.send(&endpoint, &job);
        let now = Instant::now();
        match outcome {
            Outcome::Delivered => {
                self.breakers().success(&host);
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Gone => {
                self.breakers().success(&host);
                self.remove(job.user, job.endpoint, job.created_ms);
            }
            Outcome::Refused => {
                self.breakers().success(&host);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Retry(after) => {
                self.breakers().failure(&host, now, &self.settings);
                self.retry_or_drop(job, after.map(|a| now + a.min(RETRY_AFTER_MAX)));
            }
        }
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, Breakers> {
        match self.breakers.lock() {
            Ok(g) => g,
            // A thread that panicked holding the lock left counters, nothing half-made.
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn send(&mut self, endpoint: &Endpoint, job: &Job) -> Outcome {
        let body = match core_push::encrypt_random(&job.payload, &job.p256dh, &job.auth) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e.message, "push: message not encrypted");
                return Outcome::Refused;
            }
        };
        let authorization = self.authorization(endpoint.origin());
        let answer = self
            .agent
            .post(endpoint.url())
            .set("TTL", &self.settings.ttl_s.to_string())
            .set("Content-Encoding", "aes128gcm")
            .set("Content-Type", "application/octet-stream")
            .set("Urgency", "normal")
            .set("Authorization", &authorization)
            .send_bytes(&body);
        match answer {
            Ok(resp) => {
                let status = resp.status();
                drain(resp);
                if (200..300).contains(&status) {
                    Outcome::Delivered
                } else {
                    // A redirect (not followed: a push service answers 201) or the like.
                    tracing::warn!(status, host = endpoint.host_port(), "push not accepted");
                    Outcome::Refused
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let retry_after = resp
                    .header("Retry-After")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                drain(resp);
                match code {
                    404 | 410 => Outcome::Gone,
                    429 | 500..=599 => Outcome::Retry(retry_after),
                    _ => {
                        tracing::warn!(status = code, host = endpoint.host_port(), "push refused");
                        Outcome::Refused
                    }
                }
            }
            Err(ureq::Error::Transport(t)) => {
                tracing::debug!(host = endpoint.host_port(), error = %t, "push transport error");
                Outcome::Retry(None)
            }
        }
    }

    /// The `Authorization` header for a push service origin, reused while fresh.
    fn authorization(&mut self, origin: &str) -> String {
        let now = Instant::now();
        if let Some((header, renew_at)) = self.jwts.get(origin) {
            if now < *renew_at {
                return header.clone();
            }
        }
        let expires_s = now_ms() / 1000 + JWT_LIFETIME.as_secs();
        let header = self
            .vapid
            .authorization(origin, expires_s, &self.settings.subject);
        if self.jwts.len() >= JWTS_CACHED_MAX {
            self.jwts.clear();
        }
        self.jwts.insert(
            origin.to_string(),
            (header.clone(), now + JWT_LIFETIME - JWT_REUSE_MARGIN),
        );
        header
    }

    /// Schedules the next try (after exponential backoff with jitter, and not before
    /// `not_before`), or drops the message when it has had all its tries.
    fn retry_or_drop(&mut self, job: Job, not_before: Option<Instant>) {
        if job.tries > self.settings.retries_max || self.retries.len() >= RETRIES_PENDING_MAX {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(tries = job.tries, "push message dropped");
            return;
        }
        let exp = 1u32 << job.tries.saturating_sub(1).min(16);
        let jitter = 0.5 + rand::random::<f64>();
        let delay = self
            .settings
            .backoff
            .saturating_mul(exp)
            .min(RETRY_AFTER_MAX)
            .mul_f64(jitter);
        let mut at = Instant::now() + delay;
        if let Some(nb) = not_before {
            at = at.max(nb);
        }
        self.seq += 1;
        self.stats.retried.fetch_add(1, Ordering::Relaxed);
        self.retries.push(Reverse(Due {
            at,
            seq: self.seq,
            job,
        }));
    }

    /// Is the job's subscription still there, as it was when the job was made? (Read on the
    /// owner's shard; when it cannot be read, yes.)
    fn still_subscribed(&self, job: &Job) -> bool {
        let Some(partition) = self.partitions.get(shard_of(job.user)) else {
            return false;
        };
        let found = partition
            .read()
            .map_err(nova_core::CoreError::from)
            .and_then(|r| core_push::still_subscribed(&r, job.user, &job.endpoint, job.created_ms));
        found.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "push: cannot read a subscription");
            true
        })
    }

    /// Deletes a subscription the push service no longer knows, on its owner's shard (unless
    /// it was replaced meanwhile by a new subscription of the same endpoint).
    fn remove(&self, user: u64, endpoint: String, created_ms: u64) {
        let Some(partition) = self.partitions.get(shard_of(user)) else {
            return;
        };
        let removed = partition.write_blocking(move |t| {
            core_push::unsubscribe_made_at(t, user, &endpoint, created_ms)
        });
        match removed {
            Ok(_) => {
                self.stats.removed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "push: gone subscription not deleted"),
        }
    }
}

fn drain(resp: ureq::Response) {
    let mut sink = Vec::new();
    let _ = resp
        .into_reader()
        .take(ANSWER_BYTES_MAX)
        .read_to_end(&mut sink);
}

/// Circuit breakers by push service host.
#[derive(Default)]
struct Breakers {
    hosts: HashMap<String, Breaker>,
}

#[derive(Default)]
struct Breaker {
    failures: u32,
    /// Open until then; after it, half-open.
    open_until: Option<Instant>,
    /// Half-open and its one trial request is out.
    trial: bool,
}

impl Breakers {
    /// May a request go to `host` now? `Err(t)`: not before `t`.
    fn admit(&mut self, host: &str, now: Instant, s: &Settings) -> Result<(), Instant> {
        let Some(b) = self.hosts.get_mut(host) else {
            return Ok(());
        };
        match b.open_until {
            None => Ok(()),
            Some(until) if now < until => Err(until),
            Some(_) if b.trial => Err(now + s.breaker_cooldown),
            Some(_) => {
                b.trial = true;
                Ok(())
            }
        }
    }

    fn success(&mut self, host: &str) {
        if let Some(b) = self.hosts.get_mut(host) {
            if b.open_until.is_some() {
                tracing::info!(host, "push breaker closed");
            }
            *b = Breaker::default();
        }
    }

    fn failure(&mut self, host: &str, now: Instant, s: &Settings) {
        if !self.hosts.contains_key(host) && self.hosts.len() >= BREAKER_HOSTS_MAX {
            self.hosts
                .retain(|_, b| b.failures > 0 || b.open_until.is_some());
        }
        let b = self.hosts.entry(host.to_string()).or_default();
        b.failures = b.failures.saturating_add(1);
        let reopen = b.trial;
        b.trial = false;
        if b.failures >= s.breaker_failures || reopen {
            if b.open_until.is_none() || reopen {
                tracing::warn!(host, failures = b.failures, "push breaker open");
            }
            b.open_until = Some(now + s.breaker_cooldown);
        }
    }
}

/// Resolves a push service's host and keeps only the addresses it may be sent to
/// (`core_push::public_addresses`): a name pointing at this machine or a private network is not
/// connected to, whatever `Endpoint::parse` saw when it was subscribed.
fn guarded_resolver(
    allow_loopback: bool,
) -> impl Fn(&str) -> std::io::Result<Vec<std::net::SocketAddr>> + Send + Sync {
    move |netloc| {
        use std::net::ToSocketAddrs;
        let found = core_push::public_addresses(netloc.to_socket_addrs()?, allow_loopback);
        match found.is_empty() {
            true => Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{netloc} resolves to no public address"),
            )),
            false => Ok(found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            allow_insecure_loopback: true,
            timeout: Duration::from_millis(100),
            retries_max: 3,
            backoff: Duration::from_millis(10),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(10),
            ttl_s: 60,
            subject: "mailto:a@b.c".into(),
        }
    }

    #[test]
    fn a_name_of_this_machine_is_not_connected_to() {
        // `localhost` resolves from /etc/hosts, without a network.
        assert!(guarded_resolver(false)("localhost:443").is_err());
        let found = guarded_resolver(true)("localhost:443").unwrap();
        assert!(found.iter().all(|a| a.ip().is_loopback()) && !found.is_empty());
        assert!(guarded_resolver(false)("127.0.0.1:443").is_err());
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let s = settings();
        let mut b = Breakers::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.admit("h:1", t0, &s).is_ok());
            b.failure("h:1", t0, &s);
        }
        assert!(b.admit("h:1", t0, &s).is_ok());
        b.failure("h:1", t0, &s);
        let until = b.admit("h:1", t0, &s).unwrap_err();
        assert_eq!(until, t0 + s.breaker_cooldown);
        assert!(b.admit("other:1", t0, &s).is_ok(), "breakers are per host");
        let later = until + Duration::from_millis(1);
        assert!(
            b.admit("h:1", later, &s).is_ok(),
            "one trial when half-open"
        );
        assert!(b.admit("h:1", later, &s).is_err(), "only one trial");
        b.failure("h:1", later, &s);
        assert!(b.admit("h:1", later, &s).is_err(), "a failed trial reopens");
        let again = later + s.breaker_cooldown + Duration::from_millis(1);
        assert!(b.admit("h:1", again, &s).is_ok());
        b.success("h:1");
        assert!(b.admit("h:1", again, &s).is_ok());
        assert!(b.admit("h:1", again, &s).is_ok(), "closed again");
    }
}
