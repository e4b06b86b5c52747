//! Configuration: built-in defaults, then a TOML file (`--config`), then `NOVA_*` environment
//! variables, then command-line flags; each later source overrides the earlier ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;

/// Everything `nova serve` can be told. Field names are the TOML keys; flags are the same
/// names in kebab case; environment variables are `NOVA_` plus the name in upper case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: SocketAddr,
    pub data: PathBuf,
    /// Shards (executors, one per core). 0 = one per available core.
    pub shards: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Bearer token for the admin routes; without one they do not exist.
    pub admin_token: Option<String>,
    /// Loopback address of the admin listener (backups, stats); needs `admin_token`.
    pub admin_listen: Option<SocketAddr>,
    pub log: String,

    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub connections_per_shard_max: usize,
    pub request_timeout_ms: u64,
    pub header_read_timeout_ms: u64,
    pub shutdown_grace_ms: u64,

    pub access_token_ttl_s: u64,
    pub refresh_token_ttl_s: u64,
    pub email_token_ttl_s: u64,
    pub reset_token_ttl_s: u64,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
    /// Threads that hash passwords. 0 = one per available core.
    pub hash_threads: usize,
    pub hash_queue_max: usize,

    pub login_failures_per_ip_per_minute: u32,
    pub login_failures_per_account_per_minute: u32,
    pub registrations_per_ip_per_hour: u32,
    pub password_resets_per_ip_per_hour: u32,

    pub commit_batch_ops_max: usize,
    pub commit_queue_max: usize,
    /// How long (µs) a busy commit thread waits for more writes before committing (0: never).
    pub commit_linger_us: u64,
    /// How long (µs) an idle shard keeps polling for work before it sleeps (0: sleeps at once).
    pub spin_before_park_us: u64,
    /// Pin each shard's executor to its own CPU (false, the default: the kernel places them).
    pub pin_shards: bool,
    /// How long (ms) a commit may stay out of the database file, carried by the write-ahead
    /// log, before a checkpoint (0: no log, every commit durable in the file).
    pub checkpoint_ms: u64,
    pub mesh_queue_max: usize,
    /// Memory (MiB) each shard gives to decoded posts and their rendered JSON.
    pub post_cache_mib: u64,
    /// Home-feed heads each shard builds ahead of any read, while idle (0: none).
    pub warm_heads: usize,
    pub auth_log_retention_days: u64,
    /// Serve DeathStarBench's unauthenticated `/wrk2-api/*` routes (benchmarks only).
    pub dsb_compat: bool,
    /// History (`event_store`) and dedupe records (`event_applied`) older than this go.
    pub event_retention_days: u64,
    /// Live event streams (`GET /v1/stream`) open on one shard, at most.
    pub streams_per_shard_max: usize,
    /// Live event streams of one user, at most.
    pub streams_per_user_max: usize,
    /// A comment line is sent on an idle stream this often.
    pub stream_heartbeat_ms: u64,

    /// SMTP relay host; without one, emails stay queued (listable with `nova admin emails`).
    pub smtp_host: Option<String>,
    /// 0 = the usual port of `smtp_tls` (25, 587 or 465).
    pub smtp_port: u16,
    pub smtp_tls: SmtpTls,
    /// A PEM CA certificate trusted for the relay besides the built-in web roots (a private
    /// relay's own CA).
    pub smtp_ca_file: Option<PathBuf>,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<String>,
    /// The From of every email, e.g. `Nova <nova@example.org>`; its domain names Message-IDs.
    pub mail_from: String,
    /// Per SMTP command (connect, each reply): a relay slower than this fails the try.
    pub smtp_timeout_ms: u64,
    /// Tries per email; after the last failed one the email is dead (kept, listable).
    pub mail_attempts_max: u32,
    /// Wait after the first failed try, doubled after each further one (with jitter).
    pub mail_backoff_base_ms: u64,
    pub mail_backoff_max_ms: u64,
    /// Emails each shard's mailer thread holds at once (claimed and not yet answered).
    pub mail_in_flight_max: usize,
    /// Sent emails are deleted after this many days.
    pub mail_sent_retention_days: u64,
    /// The length of a day for notification digests (`daily` is one, `weekly` seven), in
    /// seconds: 86400, shorter only for tests.
    pub digest_day_s: u64,
    /// How often each shard looks for digests due, in seconds.
    pub digest_check_s: u64,
    /// Largest body of `POST /v1/media` (larger files go through tus).
    pub media_upload_bytes_max: usize,
    /// Largest image file.
    pub media_image_bytes_max: u64,
    /// Largest video file (also the largest tus upload).
    pub media_video_bytes_max: u64,
    /// Width x height of an image or a video frame.
    pub media_pixels_max: u64,
    /// Longest video.
    pub media_duration_s_max: u64,
    /// Highest video frame rate.
    pub media_frame_rate_max: u32,
    /// Wall time to process one file before it fails.
    pub media_time_budget_s: u64,
    /// Bytes a user may store, originals and every rendition counted.
    pub media_quota_bytes: u64,
    /// Transcoding threads (run at a lower priority than the shards).
    pub media_threads: usize,
    /// Nice value of the transcoding threads (0..=19).
    pub media_nice: i32,
    /// Threads each decoder and encoder of a transcoding thread may use; 1 keeps each
    /// transcoding thread on one core.
    pub media_codec_threads: usize,
    /// Run the transcoding threads in Linux's SCHED_IDLE class: they get a core only when
    /// no request thread wants it, and a waking shard preempts them at once.
    pub media_sched_idle: bool,
    /// Files waiting for a transcoding thread (more stay pending on disk).
    pub media_queue_max: usize,
    /// Online backups copy on threads at nice 19, in SCHED_IDLE and the idle I/O class, so
    /// that requests keep their latency (false: normal priority, a faster backup on a busy
    /// machine).
    pub backup_low_priority: bool,
    /// Bytes per second an online backup writes at most (0: as fast as the disk goes).
    pub backup_bytes_per_s_max: u64,
    /// Time for a media upload request (bodies are large).
    pub media_request_timeout_ms: u64,
    /// Lifetime of signed URLs for private media.
    pub media_url_ttl_s: u64,
    /// An unfinished resumable upload is dropped after this.
    pub tus_upload_ttl_s: u64,
    /// Largest body of one tus PATCH.
    pub tus_chunk_bytes_max: u64,

    /// Web Push: allow `http://` endpoints on loopback hosts (tests only; https otherwise).
    pub push_allow_insecure_loopback: bool,
    /// Threads that deliver push messages (never the shards' executors).
    pub push_threads: usize,
    /// Push messages waiting for a delivery thread; past it new ones are dropped.
    pub push_queue_max: usize,
    /// Connect, read and write timeout of one push request.
    pub push_timeout_ms: u64,
    /// Tries of one push message after the first, with exponential backoff and jitter.
    pub push_retries_max: u32,
    /// The first backoff; each retry doubles it.
    pub push_backoff_ms: u64,
    /// Consecutive failures of a push service host that open its circuit breaker.
    pub push_breaker_failures: u32,
    /// How long an open breaker refuses before one trial request (half-open).
    pub push_breaker_cooldown_ms: u64,
    /// The TTL header: how long a push service keeps an undelivered message.
    pub push_ttl_s: u64,
    pub push_subscriptions_per_user_max: usize,
    /// The VAPID `sub` claim: a `mailto:` or `https:` contact for push services.
    pub vapid_subject: String,
    /// How long a search waits for each shard's answer; a shard later than this is left
    /// out and the answer is marked partial.
    pub search_shard_timeout_ms: u64,
    /// Postings a search segment takes before it is sealed (8 to 1,048,576). Smaller: fewer
    /// pages written per checkpoint while posts pour in, more segments for a query to read.
    pub search_segment_postings: u64,
    /// Rows one step of an account erasure touches at most (one write transaction each).
    pub erasure_batch_rows: usize,
    /// A user may start one data export per this many seconds (and one at a time).
    pub export_interval_s: u64,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP (a relay on the same host or network only).
    None,
    /// Plain connection upgraded with STARTTLS, required (port 587).
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

impl SmtpTls {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("./nova-data"),
            shards: 0,
            tls_cert: None,
            tls_key: None,
            admin_token: None,
            admin_listen: None,
            log: "info".to_string(),
            header_bytes_max: 16 * 1024,
            body_bytes_max: 64 * 1024,
            connections_per_shard_max: 10_000,
            request_timeout_ms: 10_000,
            header_read_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            access_token_ttl_s: 15 * 60,
            refresh_token_ttl_s: 30 * 24 * 3600,
            email_token_ttl_s: 24 * 3600,
            reset_token_ttl_s: 3600,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            hash_threads: 0,
            hash_queue_max: 1024,
            login_failures_per_ip_per_minute: 30,
            login_failures_per_account_per_minute: 5,
            registrations_per_ip_per_hour: 30,
            password_resets_per_ip_per_hour: 10,
            commit_batch_ops_max: 1024,
            commit_queue_max: 8192,
            commit_linger_us: 0,
            spin_before_park_us: 0,
            pin_shards: false,
            checkpoint_ms: 500,
            mesh_queue_max: 4096,
            post_cache_mib: 256,
            warm_heads: 10_000,
            auth_log_retention_days: 90,
            dsb_compat: false,
            event_retention_days: 30,
            streams_per_shard_max: 2048,
            streams_per_user_max: 8,
            stream_heartbeat_ms: 15_000,
            smtp_host: None,
            smtp_port: 0,
            smtp_tls: SmtpTls::Starttls,
            smtp_ca_file: None,
            smtp_username: None,
            smtp_password: None,
            mail_from: "Nova <nova@localhost>".to_string(),
            smtp_timeout_ms: 10_000,
            mail_attempts_max: 8,
            mail_backoff_base_ms: 30_000,
            mail_backoff_max_ms: 3_600_000,
            mail_in_flight_max: 4,
            mail_sent_retention_days: 7,
            digest_day_s: 86_400,
            digest_check_s: 60,
            media_upload_bytes_max: 64 * 1024 * 1024,
            media_image_bytes_max: 32 * 1024 * 1024,
            media_video_bytes_max: 1024 * 1024 * 1024,
            media_pixels_max: 40_000_000,
            media_duration_s_max: 600,
            media_frame_rate_max: 120,
            media_time_budget_s: 900,
            media_quota_bytes: 5 * 1024 * 1024 * 1024,
            media_threads: 1,
            media_nice: 19,
            media_codec_threads: 1,
            media_sched_idle: true,
            media_queue_max: 1024,
            backup_low_priority: true,
            backup_bytes_per_s_max: 0,
            media_request_timeout_ms: 300_000,
            media_url_ttl_s: 3600,
            tus_upload_ttl_s: 24 * 3600,
            tus_chunk_bytes_max: 1024 * 1024 * 1024,
            push_allow_insecure_loopback: false,
            push_threads: 2,
            push_queue_max: 4096,
            push_timeout_ms: 10_000,
            push_retries_max: 4,
            push_backoff_ms: 1000,
            push_breaker_failures: 5,
            push_breaker_cooldown_ms: 30_000,
            push_ttl_s: 24 * 3600,
            push_subscriptions_per_user_max: 10,
            vapid_subject: "mailto:admin@localhost".to_string(),
            search_shard_timeout_ms: 1_000,
            search_segment_postings: nova_core::search::SEGMENT_POSTINGS_DEFAULT,
            erasure_batch_rows: 500,
            export_interval_s: 60,
        }
    }
}

/// The flags of `nova serve`. Every one is optional: unset means "keep the file's or the
/// default value".
#[derive(Debug, Clone, Args, Default)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "NOVA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
    #[arg(long, env = "NOVA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "NOVA_DATA")]
    pub data: Option<PathBuf>,
    /// Number of shards (0 = the data directory's own count, or one per core for a new one).
    /// Fixed when the data directory is created.
    #[arg(long, env = "NOVA_SHARDS")]
    pub shards: Option<usize>,
    /// PEM certificate chain; with --tls-key, serve HTTPS.
    #[arg(long, env = "NOVA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "NOVA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token that opens the admin routes.
    #[arg(long, env = "NOVA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Loopback address of the admin listener, e.g. 127.0.0.1:8081 (port 0 picks one).
    #[arg(long, env = "NOVA_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Log filter (tracing EnvFilter syntax), e.g. info or nova=debug.
    #[arg(long, env = "NOVA_LOG")]
    pub log: Option<String>,
    #[arg(long, env = "NOVA_HEADER_BYTES_MAX")]
    pub header_bytes_max: Option<usize>,
    #[arg(long, env = "NOVA_BODY_BYTES_MAX")]
    pub body_bytes_max: Option<usize>,
    #[arg(long, env = "NOVA_CONNECTIONS_PER_SHARD_MAX")]
    pub connections_per_shard_max: Option<usize>,
    #[arg(long, env = "NOVA_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "NOVA_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    #[arg(long, env = "NOVA_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(long, env = "NOVA_ACCESS_TOKEN_TTL_S")]
    pub access_token_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_REFRESH_TOKEN_TTL_S")]
    pub refresh_token_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_EMAIL_TOKEN_TTL_S")]
    pub email_token_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_RESET_TOKEN_TTL_S")]
    pub reset_token_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_ARGON2_MEMORY_KIB")]
    pub argon2_memory_kib: Option<u32>,
    #[arg(long, env = "NOVA_ARGON2_ITERATIONS")]
    pub argon2_iterations: Option<u32>,
    #[arg(long, env = "NOVA_HASH_THREADS")]
    pub hash_threads: Option<usize>,
    #[arg(long, env = "NOVA_HASH_QUEUE_MAX")]
    pub hash_queue_max: Option<usize>,
    #[arg(long, env = "NOVA_LOGIN_FAILURES_PER_IP_PER_MINUTE")]
    pub login_failures_per_ip_per_minute: Option<u32>,
    #[arg(long, env = "NOVA_LOGIN_FAILURES_PER_ACCOUNT_PER_MINUTE")]
    pub login_failures_per_account_per_minute: Option<u32>,
    #[arg(long, env = "NOVA_REGISTRATIONS_PER_IP_PER_HOUR")]
    pub registrations_per_ip_per_hour: Option<u32>,
    #[arg(long, env = "NOVA_PASSWORD_RESETS_PER_IP_PER_HOUR")]
    pub password_resets_per_ip_per_hour: Option<u32>,
    #[arg(long, env = "NOVA_COMMIT_BATCH_OPS_MAX")]
    pub commit_batch_ops_max: Option<usize>,
    #[arg(long, env = "NOVA_COMMIT_QUEUE_MAX")]
    pub commit_queue_max: Option<usize>,
    #[arg(long, env = "NOVA_COMMIT_LINGER_US")]
    pub commit_linger_us: Option<u64>,
    #[arg(long, env = "NOVA_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    /// Pin each shard to its own CPU (`--pin-shards`; by default the kernel places them).
    #[arg(long, env = "NOVA_PIN_SHARDS", num_args = 0..=1, default_missing_value = "true")]
    pub pin_shards: Option<bool>,
    #[arg(long, env = "NOVA_CHECKPOINT_MS")]
    pub checkpoint_ms: Option<u64>,
    #[arg(long, env = "NOVA_MESH_QUEUE_MAX")]
    pub mesh_queue_max: Option<usize>,
    #[arg(long, env = "NOVA_POST_CACHE_MIB")]
    pub post_cache_mib: Option<u64>,
    #[arg(long, env = "NOVA_WARM_HEADS")]
    pub warm_heads: Option<usize>,
    #[arg(long, env = "NOVA_AUTH_LOG_RETENTION_DAYS")]
    pub auth_log_retention_days: Option<u64>,
    /// Serve DeathStarBench's unauthenticated /wrk2-api routes (benchmark deployments only).
    #[arg(long, env = "NOVA_DSB_COMPAT", num_args = 0..=1, default_missing_value = "true")]
    pub dsb_compat: Option<bool>,
    #[arg(long, env = "NOVA_EVENT_RETENTION_DAYS")]
    pub event_retention_days: Option<u64>,
    #[arg(long, env = "NOVA_STREAMS_PER_SHARD_MAX")]
    pub streams_per_shard_max: Option<usize>,
    #[arg(long, env = "NOVA_STREAMS_PER_USER_MAX")]
    pub streams_per_user_max: Option<usize>,
    #[arg(long, env = "NOVA_STREAM_HEARTBEAT_MS")]
    pub stream_heartbeat_ms: Option<u64>,
    /// SMTP relay host (without one, emails stay queued).
    #[arg(long, env = "NOVA_SMTP_HOST")]
    pub smtp_host: Option<String>,
    #[arg(long, env = "NOVA_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    #[arg(long, env = "NOVA_SMTP_TLS", value_enum)]
    pub smtp_tls: Option<SmtpTls>,
    #[arg(long, env = "NOVA_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    #[arg(long, env = "NOVA_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    #[arg(long, env = "NOVA_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    #[arg(long, env = "NOVA_MAIL_FROM")]
    pub mail_from: Option<String>,
    #[arg(long, env = "NOVA_SMTP_TIMEOUT_MS")]
    pub smtp_timeout_ms: Option<u64>,
    #[arg(long, env = "NOVA_MAIL_ATTEMPTS_MAX")]
    pub mail_attempts_max: Option<u32>,
    #[arg(long, env = "NOVA_MAIL_BACKOFF_BASE_MS")]
    pub mail_backoff_base_ms: Option<u64>,
    #[arg(long, env = "NOVA_MAIL_BACKOFF_MAX_MS")]
    pub mail_backoff_max_ms: Option<u64>,
    #[arg(long, env = "NOVA_MAIL_IN_FLIGHT_MAX")]
    pub mail_in_flight_max: Option<usize>,
    #[arg(long, env = "NOVA_MAIL_SENT_RETENTION_DAYS")]
    pub mail_sent_retention_days: Option<u64>,
    #[arg(long, env = "NOVA_DIGEST_DAY_S")]
    pub digest_day_s: Option<u64>,
    #[arg(long, env = "NOVA_DIGEST_CHECK_S")]
    pub digest_check_s: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_UPLOAD_BYTES_MAX")]
    pub media_upload_bytes_max: Option<usize>,
    #[arg(long, env = "NOVA_MEDIA_IMAGE_BYTES_MAX")]
    pub media_image_bytes_max: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_VIDEO_BYTES_MAX")]
    pub media_video_bytes_max: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_PIXELS_MAX")]
    pub media_pixels_max: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_DURATION_S_MAX")]
    pub media_duration_s_max: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_FRAME_RATE_MAX")]
    pub media_frame_rate_max: Option<u32>,
    #[arg(long, env = "NOVA_MEDIA_TIME_BUDGET_S")]
    pub media_time_budget_s: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_QUOTA_BYTES")]
    pub media_quota_bytes: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_THREADS")]
    pub media_threads: Option<usize>,
    #[arg(long, env = "NOVA_MEDIA_NICE")]
    pub media_nice: Option<i32>,
    #[arg(long, env = "NOVA_MEDIA_CODEC_THREADS")]
    pub media_codec_threads: Option<usize>,
    #[arg(long, env = "NOVA_MEDIA_SCHED_IDLE", num_args = 0..=1, default_missing_value = "true")]
    pub media_sched_idle: Option<bool>,
    #[arg(long, env = "NOVA_MEDIA_QUEUE_MAX")]
    pub media_queue_max: Option<usize>,
    #[arg(long, env = "NOVA_BACKUP_LOW_PRIORITY", num_args = 0..=1, default_missing_value = "true")]
    pub backup_low_priority: Option<bool>,
    #[arg(long, env = "NOVA_BACKUP_BYTES_PER_S_MAX")]
    pub backup_bytes_per_s_max: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_REQUEST_TIMEOUT_MS")]
    pub media_request_timeout_ms: Option<u64>,
    #[arg(long, env = "NOVA_MEDIA_URL_TTL_S")]
    pub media_url_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_TUS_UPLOAD_TTL_S")]
    pub tus_upload_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_TUS_CHUNK_BYTES_MAX")]
    pub tus_chunk_bytes_max: Option<u64>,
    #[arg(long, env = "NOVA_PUSH_ALLOW_INSECURE_LOOPBACK", num_args = 0..=1, default_missing_value = "true")]
    pub push_allow_insecure_loopback: Option<bool>,
    #[arg(long, env = "NOVA_PUSH_THREADS")]
    pub push_threads: Option<usize>,
    #[arg(long, env = "NOVA_PUSH_QUEUE_MAX")]
    pub push_queue_max: Option<usize>,
    #[arg(long, env = "NOVA_PUSH_TIMEOUT_MS")]
    pub push_timeout_ms: Option<u64>,
    #[arg(long, env = "NOVA_PUSH_RETRIES_MAX")]
    pub push_retries_max: Option<u32>,
    #[arg(long, env = "NOVA_PUSH_BACKOFF_MS")]
    pub push_backoff_ms: Option<u64>,
    #[arg(long, env = "NOVA_PUSH_BREAKER_FAILURES")]
    pub push_breaker_failures: Option<u32>,
    #[arg(long, env = "NOVA_PUSH_BREAKER_COOLDOWN_MS")]
    pub push_breaker_cooldown_ms: Option<u64>,
    #[arg(long, env = "NOVA_PUSH_TTL_S")]
    pub push_ttl_s: Option<u64>,
    #[arg(long, env = "NOVA_PUSH_SUBSCRIPTIONS_PER_USER_MAX")]
    pub push_subscriptions_per_user_max: Option<usize>,
    #[arg(long, env = "NOVA_VAPID_SUBJECT")]
    pub vapid_subject: Option<String>,
    #[arg(long, env = "NOVA_SEARCH_SHARD_TIMEOUT_MS")]
    pub search_shard_timeout_ms: Option<u64>,
    #[arg(long, env = "NOVA_SEARCH_SEGMENT_POSTINGS")]
    pub search_segment_postings: Option<u64>,
    #[arg(long, env = "NOVA_ERASURE_BATCH_ROWS")]
    pub erasure_batch_rows: Option<usize>,
    #[arg(long, env = "NOVA_EXPORT_INTERVAL_S")]
    pub export_interval_s: Option<u64>,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, $($field:ident),*) => {
        $( if let Some(v) = $args.$field.clone() { $cfg.$field = v; } )*
    };
}

impl Config {
    /// Defaults, then the file, then environment and flags (clap has already merged those
    /// two, flags winning).
    pub fn load(args: &ServeArgs) -> anyhow::Result<Config> {
        let mut cfg = match &args.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        overlay!(
            cfg,
            args,
            listen,
            data,
            shards,
            log,
            header_bytes_max,
            body_bytes_max,
            connections_per_shard_max,
            request_timeout_ms,
            header_read_timeout_ms,
            shutdown_grace_ms,
            access_token_ttl_s,
            refresh_token_ttl_s,
            email_token_ttl_s,
            reset_token_ttl_s,
            argon2_memory_kib,
            argon2_iterations,
            hash_threads,
            hash_queue_max,
            login_failures_per_ip_per_minute,
            login_failures_per_account_per_minute,
            registrations_per_ip_per_hour,
            password_resets_per_ip_per_hour,
            commit_batch_ops_max,
            commit_queue_max,
            commit_linger_us,
            spin_before_park_us,
            pin_shards,
            checkpoint_ms,
            mesh_queue_max,
            post_cache_mib,
            warm_heads,
            auth_log_retention_days,
            dsb_compat,
            event_retention_days,
            streams_per_shard_max,
            streams_per_user_max,
            stream_heartbeat_ms,
            smtp_port,
            smtp_tls,
            mail_from,
            smtp_timeout_ms,
            mail_attempts_max,
            mail_backoff_base_ms,
            mail_backoff_max_ms,
            mail_in_flight_max,
            mail_sent_retention_days,
            digest_day_s,
            digest_check_s,
            media_upload_bytes_max,
            media_image_bytes_max,
            media_video_bytes_max,
            media_pixels_max,
            media_duration_s_max,
            media_frame_rate_max,
            media_time_budget_s,
            media_quota_bytes,
            media_threads,
            media_nice,
            media_codec_threads,
            media_sched_idle,
            media_queue_max,
            media_request_timeout_ms,
            media_url_ttl_s,
            tus_upload_ttl_s,
            tus_chunk_bytes_max,
            push_allow_insecure_loopback,
            push_threads,
            push_queue_max,
            push_timeout_ms,
            push_retries_max,
            push_backoff_ms,
            push_breaker_failures,
            push_breaker_cooldown_ms,
            push_ttl_s,
            push_subscriptions_per_user_max,
            vapid_subject,
            search_shard_timeout_ms,
            search_segment_postings,
            erasure_batch_rows,
            export_interval_s,
            backup_low_priority,
            backup_bytes_per_s_max
        );
        for (slot, arg) in [
            (&mut cfg.smtp_host, &args.smtp_host),
            (&mut cfg.smtp_username, &args.smtp_username),
            (&mut cfg.smtp_password, &args.smtp_password),
        ] {
            if arg.is_some() {
                slot.clone_from(arg);
            }
        }
        if args.smtp_ca_file.is_some() {
            cfg.smtp_ca_file.clone_from(&args.smtp_ca_file);
        }
        if args.tls_cert.is_some() {
            cfg.tls_cert = args.tls_cert.clone();
        }
        if args.tls_key.is_some() {
            cfg.tls_key = args.tls_key.clone();
        }
        if args.admin_token.is_some() {
            cfg.admin_token = args.admin_token.clone();
        }
        if args.admin_listen.is_some() {
            cfg.admin_listen = args.admin_listen;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        if self.shards == 0 {
            // Not asked for: an existing data dir keeps the count it was made with (a host
            // that gained or lost cores still starts); a new one gets one shard per core.
            let recorded = nova_storage::DataDir::read_manifest(&self.data)
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .map(|m| m.shards);
            self.shards = match recorded {
                Some(n) => n,
                None => std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            };
        }
        if self.hash_threads == 0 {
            self.hash_threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        anyhow::ensure!(
            self.shards <= nova_core::SHARDS_MAX,
            "shards must be at most {}",
            nova_core::SHARDS_MAX
        );
        anyhow::ensure!(
            self.spin_before_park_us <= 10_000,
            "spin_before_park_us must be at most 10000"
        );
        anyhow::ensure!(
            self.checkpoint_ms <= 60_000,
            "checkpoint_ms must be at most 60000"
        );
        anyhow::ensure!(
            (8..=1 << 20).contains(&self.search_segment_postings),
            "search_segment_postings must be 8 to 1048576"
        );
        anyhow::ensure!(
            (1..=65_536).contains(&self.post_cache_mib),
            "post_cache_mib must be 1 to 65536"
        );
        anyhow::ensure!(
            self.warm_heads <= crate::feeds::HEADS_MAX,
            "warm_heads must be at most {}",
            crate::feeds::HEADS_MAX
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "--tls-cert and --tls-key go together"
        );
        if let Some(addr) = self.admin_listen {
            anyhow::ensure!(
                addr.ip().is_loopback(),
                "admin_listen must be a loopback address (it serves backups)"
            );
            anyhow::ensure!(self.admin_token.is_some(), "admin_listen needs admin_token");
        }
        anyhow::ensure!(
            self.stream_heartbeat_ms >= 100 && self.streams_per_user_max >= 1,
            "stream_heartbeat_ms must be at least 100 and streams_per_user_max at least 1"
        );
        anyhow::ensure!(
            self.header_bytes_max >= 1024,
            "header_bytes_max must be at least 1024"
        );
        anyhow::ensure!(
            self.body_bytes_max >= 1024,
            "body_bytes_max must be at least 1024"
        );
        for (name, v) in [
            ("connections_per_shard_max", self.connections_per_shard_max),
            ("commit_batch_ops_max", self.commit_batch_ops_max),
            ("commit_queue_max", self.commit_queue_max),
            ("mesh_queue_max", self.mesh_queue_max),
            ("hash_queue_max", self.hash_queue_max),
            ("mail_in_flight_max", self.mail_in_flight_max),
            ("media_threads", self.media_threads),
            ("media_codec_threads", self.media_codec_threads),
            ("media_queue_max", self.media_queue_max),
        ] {
            anyhow::ensure!(v > 0, "{name} must be positive");
        }
        for (name, v) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("access_token_ttl_s", self.access_token_ttl_s),
            ("refresh_token_ttl_s", self.refresh_token_ttl_s),
            ("smtp_timeout_ms", self.smtp_timeout_ms),
            ("mail_backoff_base_ms", self.mail_backoff_base_ms),
            ("mail_backoff_max_ms", self.mail_backoff_max_ms),
            ("mail_attempts_max", u64::from(self.mail_attempts_max)),
        ] {
            anyhow::ensure!(v > 0, "{name} must be positive");
        }
        for (name, v) in [
            (
                "login_failures_per_ip_per_minute",
                self.login_failures_per_ip_per_minute,
            ),
            (
                "login_failures_per_account_per_minute",
                self.login_failures_per_account_per_minute,
            ),
            (
                "registrations_per_ip_per_hour",
                self.registrations_per_ip_per_hour,
            ),
            (
                "password_resets_per_ip_per_hour",
                self.password_resets_per_ip_per_hour,
            ),
        ] {
            anyhow::ensure!(v > 0, "{name} must be positive");
        }
        // Upper bounds: far past any use, and short of what overflows once the value is
        // turned into milliseconds or a queue is sized from it.
        const HOUR_MS: u64 = 3_600_000;
        const DAY_S: u64 = 86_400;
        const QUEUE_MAX: u64 = 1 << 24;
        for (name, v, max) in [
            ("request_timeout_ms", self.request_timeout_ms, HOUR_MS),
            (
                "header_read_timeout_ms",
                self.header_read_timeout_ms,
                HOUR_MS,
            ),
            ("shutdown_grace_ms", self.shutdown_grace_ms, HOUR_MS),
            ("smtp_timeout_ms", self.smtp_timeout_ms, HOUR_MS),
            ("push_timeout_ms", self.push_timeout_ms, HOUR_MS),
            (
                "mail_backoff_base_ms",
                self.mail_backoff_base_ms,
                24 * HOUR_MS,
            ),
            (
                "mail_backoff_max_ms",
                self.mail_backoff_max_ms,
                24 * HOUR_MS,
            ),
            ("commit_linger_us", self.commit_linger_us, 1_000_000),
            ("access_token_ttl_s", self.access_token_ttl_s, 30 * DAY_S),
            (
                "refresh_token_ttl_s",
                self.refresh_token_ttl_s,
                3650 * DAY_S,
            ),
            ("email_token_ttl_s", self.email_token_ttl_s, 30 * DAY_S),
            ("media_url_ttl_s", self.media_url_ttl_s, 365 * DAY_S),
            ("tus_upload_ttl_s", self.tus_upload_ttl_s, 365 * DAY_S),
            (
                "connections_per_shard_max",
                self.connections_per_shard_max as u64,
                QUEUE_MAX,
            ),
            (
                "commit_batch_ops_max",
                self.commit_batch_ops_max as u64,
                QUEUE_MAX,
            ),
            ("commit_queue_max", self.commit_queue_max as u64, QUEUE_MAX),
            ("mesh_queue_max", self.mesh_queue_max as u64, QUEUE_MAX),
            ("hash_queue_max", self.hash_queue_max as u64, QUEUE_MAX),
            ("media_queue_max", self.media_queue_max as u64, QUEUE_MAX),
        ] {
            anyhow::ensure!(v <= max, "{name} must be at most {max}");
        }
        anyhow::ensure!(
            self.mail_in_flight_max <= 1024,
            "mail_in_flight_max must be at most 1024"
        );
        anyhow::ensure!(
            self.digest_day_s > 0 && (1..=86_400).contains(&self.digest_check_s),
            "digest_day_s must be positive and digest_check_s 1 to 86400"
        );
        anyhow::ensure!(
            self.smtp_username.is_some() == self.smtp_password.is_some(),
            "smtp_username and smtp_password go together"
        );
        if self
            .smtp_host
            .as_deref()
            .is_some_and(|h| h.trim().is_empty())
        {
            self.smtp_host = None;
        }
        if let Some(host) = self.smtp_host.as_deref() {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            anyhow::ensure!(
                self.smtp_username.is_none() || self.smtp_tls != SmtpTls::None || loopback,
                "smtp_username needs smtp_tls starttls or tls: the password would cross the \
                 network in clear (plain SMTP with a password is allowed to a loopback relay only)"
            );
        }
        crate::mail::check_from(&self.mail_from)?;
        for (name, v) in [
            ("push_threads", self.push_threads as u64),
            ("push_queue_max", self.push_queue_max as u64),
            ("push_timeout_ms", self.push_timeout_ms),
            ("push_backoff_ms", self.push_backoff_ms),
            (
                "push_breaker_failures",
                u64::from(self.push_breaker_failures),
            ),
            ("push_breaker_cooldown_ms", self.push_breaker_cooldown_ms),
            (
                "push_subscriptions_per_user_max",
                self.push_subscriptions_per_user_max as u64,
            ),
        ] {
            anyhow::ensure!(v > 0, "{name} must be positive");
        }
        anyhow::ensure!(
            self.push_retries_max <= 20,
            "push_retries_max must be at most 20"
        );
        anyhow::ensure!(
            (self.vapid_subject.starts_with("mailto:") || self.vapid_subject.starts_with("https:"))
                && self.vapid_subject.len() <= 256
                && self
                    .vapid_subject
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "vapid_subject is a mailto: or https: URI of at most 256 plain characters"
        );
        Ok(())
    }

    /// `smtp_port`, or the usual one for `smtp_tls`.
    pub fn smtp_port(&self) -> u16 {
        if self.smtp_port == 0 {
            self.smtp_tls.default_port()
        } else {
            self.smtp_port
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\nshards = 3\nbody_bytes_max = 2048\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            shards: Some(2),
            ..Default::default()
        };
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.listen.port(), 9000);
        assert_eq!(cfg.shards, 2);
        assert_eq!(cfg.body_bytes_max, 2048);
        assert_eq!(cfg.data, PathBuf::from("./nova-data"));
    }

    #[test]
    fn an_unset_shard_count_is_the_data_dirs_own() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let fresh = ServeArgs {
            data: Some(data.clone()),
            ..Default::default()
        };
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::load(&fresh).unwrap().shards, cores);
        // Made with another count than this host's cores: an unset count keeps it.
        nova_storage::DataDir::open(&data, cores + 2).unwrap();
        assert_eq!(Config::load(&fresh).unwrap().shards, cores + 2);
        // Asked for explicitly, the count is the one asked (the start then refuses it).
        let asked = ServeArgs {
            data: Some(data),
            shards: Some(1),
            ..Default::default()
        };
        assert_eq!(Config::load(&asked).unwrap().shards, 1);
    }

    #[test]
    fn shards_are_pinned_only_when_asked() {
        assert!(!Config::load(&ServeArgs::default()).unwrap().pin_shards);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.toml");
        std::fs::write(&path, "pin_shards = true\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        assert!(Config::load(&from_file).unwrap().pin_shards);
        let flag_wins = ServeArgs {
            config: Some(path),
            pin_shards: Some(false),
            ..Default::default()
        };
        assert!(!Config::load(&flag_wins).unwrap().pin_shards);
    }

    #[test]
    fn numbers_past_any_use_are_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.toml");
        let huge = u64::MAX;
        for (key, value) in [
            ("request_timeout_ms", huge),
            ("access_token_ttl_s", huge),
            ("refresh_token_ttl_s", huge),
            ("email_token_ttl_s", huge),
            ("hash_queue_max", 1 << 40),
            ("mesh_queue_max", 1 << 40),
            ("commit_queue_max", 1 << 40),
            ("commit_linger_us", 10_000_000_000),
        ] {
            // TOML integers are signed 64-bit.
            let value = value.min(i64::MAX as u64);
            std::fs::write(&path, format!("{key} = {value}\n")).unwrap();
            let args = ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            };
            let refused = Config::load(&args).unwrap_err().to_string();
            assert!(
                refused.contains(key) && refused.contains("at most"),
                "{key}: {refused}"
            );
        }
        // The defaults are within them.
        Config::load(&ServeArgs::default()).unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nova.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        assert!(Config::load(&args).is_err());
    }

    #[test]
    fn spinning_is_bounded() {
        let spin = |us: u64| {
            Config::load(&ServeArgs {
                spin_before_park_us: Some(us),
                ..Default::default()
            })
        };
        assert_eq!(spin(200).unwrap().spin_before_park_us, 200);
        assert!(spin(10_001).is_err());
    }

    #[test]
    fn checkpoints_are_bounded() {
        let every = |ms: u64| {
            Config::load(&ServeArgs {
                checkpoint_ms: Some(ms),
                ..Default::default()
            })
        };
        assert_eq!(
            Config::load(&ServeArgs::default()).unwrap().checkpoint_ms,
            500
        );
        assert_eq!(every(0).unwrap().checkpoint_ms, 0);
        assert!(every(60_001).is_err());
    }

    #[test]
    fn the_post_cache_is_bounded() {
        let mib = |n: u64| {
            Config::load(&ServeArgs {
                post_cache_mib: Some(n),
                ..Default::default()
            })
        };
        assert_eq!(
            Config::load(&ServeArgs::default()).unwrap().post_cache_mib,
            256
        );
        assert_eq!(mib(1).unwrap().post_cache_mib, 1);
        assert!(mib(0).is_err());
        assert!(mib(65_537).is_err());
    }
}
