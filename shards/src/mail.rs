//! Each shard's mailer: delivers the shard's queued emails (`nova_core::communication`) to the
//! configured SMTP relay with lettre.
//!
//! SMTP is blocking network I/O, so it runs on one std thread per shard (`nova-mail-<k>`), fed
//! by a bounded channel; the shard's executor only claims due emails and records outcomes,
//! both through `Partition::write` (group commit). The order that makes "exactly once" as
//! good as SMTP allows:
//! 1. claim: the email becomes `sending` (durable) with its Message-ID;
//! 2. only then is it handed to the thread, which sends it;
//! 3. the outcome (250, or the error) comes back and is committed at once: `sent`, or
//!    `queued` again after a backoff, or `dead` after the last try.
//!
//! A crash between the relay's 250 and the commit of `sent` leaves the email `sending`; at the
//! next start it is sent again with the same Message-ID. That window (one commit, a few ms) is
//! the only way an email is sent twice; nothing acknowledged is lost.
//!
//! Idle cost: none. The loop sleeps until an email is queued (`Mail::wake`, called after the
//! commit that queued it), an outcome is recorded, or the next queued email is due (one timer).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail as MailCommand, Rcpt};
use lettre::transport::smtp::extension::{ClientId, MailParameter};
use lettre::transport::smtp::Error as SmtpError;
use lettre::Message;
use nova_core::communication::{self, EmailStatus, Outcome, RetryPolicy};
use nova_core::CoreError;

use crate::config::{Config, SmtpTls};
use crate::shard::{now_ms, Notify, Shard};

/// Interrupted emails moved back to `queued` per write at start-up.
const REQUEUE_BATCH_MAX: usize = 1000;
/// Interrupted email ids named in the start-up log line, at most.
const REQUEUE_LOGGED_MAX: usize = 100;
/// Sent emails past their retention deleted per outcome commit, at most.
const PRUNE_BATCH_MAX: usize = 100;
/// Wait before claiming again after a failed claim commit (a full disk must not be hammered).
const CLAIM_RETRY_MS: u64 = 1000;
/// Tries to commit a batch of outcomes before giving up on it (its emails then stay
/// `sending` until the next start, when they are sent again).
const OUTCOME_COMMIT_TRIES: u32 = 5;

/// Refuses a From address lettre cannot use (checked with the rest of the config).
pub fn check_from(from: &str) -> anyhow::Result<()> {
    from.parse::<Mailbox>()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("mail_from {from:?} is not an email address: {e}"))
}

/// One email handed to the thread.
struct Job {
    id: u64,
    to: String,
    subject: String,
    body: String,
    message_id: String,
}

/// What became of a job.
struct Done {
    id: u64,
    outcome: Outcome,
}

/// The link to the mailer thread (absent without a relay).
struct Link {
    jobs: flume::Sender<Job>,
    done: flume::Receiver<Done>,
    /// Set when the shard drains: jobs not started yet come back `NotTried`.
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A level-triggered wake-up for the one task that runs the mail loop.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    fn raise(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// A shard's mailer state (its thread, the wake-up, the count of emails out).
pub struct Mail {
    link: RefCell<Option<Link>>,
    signal: Signal,
    in_flight: Cell<usize>,
    in_flight_max: usize,
    policy: RetryPolicy,
    msgid_domain: String,
    sent_retention_ms: u64,
    /// Fired when the mail loop has ended (after a drain, or at once without a relay).
    pub stopped: Notify,
}

impl Mail {
    /// Starts the shard's mailer thread when a relay is configured.
    pub fn start(cfg: &Config, shard: usize) -> anyhow::Result<Mail> {
        let from: Mailbox = cfg
            .mail_from
            .parse()
            .map_err(|e| anyhow::anyhow!("mail_from {:?}: {e}", cfg.mail_from))?;
        let link = match cfg.smtp_host.as_deref() {
            None => None,
            Some(host) => {
                let relay = Relay::new(cfg, host)?;
                let cap = cfg.mail_in_flight_max;
                let (jobs_tx, jobs_rx) = flume::bounded::<Job>(cap);
                let (done_tx, done_rx) = flume::bounded::<Done>(cap);
                let stopping = Arc::new(AtomicBool::new(false));
                let thread = {
                    let from = from.clone();
                    let stopping = Arc::clone(&stopping);
                    std::thread::Builder::new()
                        .name(format!("nova-mail-{shard}"))
                        .spawn(move || {
                            mailer_thread(&relay, &from, &jobs_rx, &done_tx, &stopping)
                        })?
                };
                Some(Link {
                    jobs: jobs_tx,
                    done: done_rx,
                    stopping,
                    thread,
                })
            }
        };
        Ok(Mail {
            link: RefCell::new(link),
            signal: Signal::default(),
            in_flight: Cell::new(0),
            in_flight_max: cfg.mail_in_flight_max,
            policy: RetryPolicy {
                attempts_max: cfg.mail_attempts_max,
                backoff_base_ms: cfg.mail_backoff_base_ms,
                backoff_max_ms: cfg.mail_backoff_max_ms,
            },
            msgid_domain: from.email.domain().to_string(),
            sent_retention_ms: cfg
                .mail_sent_retention_days
                .saturating_mul(24 * 3600 * 1000),
            stopped: Notify::default(),
        })
    }

    /// Something changed: an email was queued (call after its commit), an outcome was
    /// recorded, or the shard is draining.
    pub fn wake(&self) {
        self.signal.raise();
    }
}

/// How to reach the relay; built once at start-up, used by the mailer thread.
struct Relay {
    host: String,
    port: u16,
    timeout: Duration,
    tls: Option<(SmtpTls, TlsParameters)>,
    credentials: Option<Credentials>,
    hello: ClientId,
}

impl Relay {
    fn new(cfg: &Config, host: &str) -> anyhow::Result<Relay> {
        let tls = match cfg.smtp_tls {
            SmtpTls::None => None,
            mode => {
                let mut params = TlsParameters::builder(host.to_string());
                if let Some(path) = &cfg.smtp_ca_file {
                    let pem = std::fs::read(path)
                        .map_err(|e| anyhow::anyhow!("smtp_ca_file {}: {e}", path.display()))?;
                    let ca = Certificate::from_pem(&pem)
                        .map_err(|e| anyhow::anyhow!("smtp_ca_file {}: {e}", path.display()))?;
                    params = params.add_root_certificate(ca);
                }
                let params = params
                    .build_rustls()
                    .map_err(|e| anyhow::anyhow!("smtp TLS for {host}: {e}"))?;
                Some((mode, params))
            }
        };
        let credentials = match (&cfg.smtp_username, &cfg.smtp_password) {
            (Some(user), Some(password)) => Some(Credentials::new(user.clone(), password.clone())),
            _ => None,
        };
        Ok(Relay {
            host: host.to_string(),
            port: cfg.smtp_port(),
            timeout: Duration::from_millis(cfg.smtp_timeout_ms),
            tls,
            credentials,
            hello: ClientId::default(),
        })
    }

    /// A new session: connect (TLS from the first byte for `tls`), EHLO, STARTTLS when asked
    /// for (required: no fallback to plain text), AUTH when configured.
    fn connect(&self) -> Result<SmtpConnection, SmtpError> {
        let wrapper = match &self.tls {
            Some((SmtpTls::Tls, params)) => Some(params),
            _ => None,
        };
        let mut conn = SmtpConnection::connect(
            (self.host.as_str(), self.port),
            Some(self.timeout),
            &self.hello,
            wrapper,
            None,
        )?;
        if let Some((SmtpTls::Starttls, params)) = &self.tls {
            conn.starttls(params, &self.hello)?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)?;
        }
        Ok(conn)
    }
}

/// The message's content, dot-stuffed and with its end marker, written in ONE write: lettre's
/// own `SmtpConnection::message` writes the end marker separately, and with Nagle on (lettre
/// sets no TCP_NODELAY) that small second write waits for the relay's delayed ACK, 40 ms per
/// email. Waiting there also widened the window between the relay's 250 and our `sent`.
struct Content(String);

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn content(message: &[u8]) -> Content {
    let text = String::from_utf8_lossy(message);
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive('\n') {
        // RFC 5321 4.5.2: a line that starts with a dot gets another.
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    Content(out)
}

/// The thread: one email at a time. A session is kept while more emails wait and closed as
/// soon as none does, so an idle mailer holds no connection and no timer. The outcome is
/// reported as soon as the relay answers the message, before QUIT.
fn mailer_thread(
    relay: &Relay,
    from: &Mailbox,
    jobs: &flume::Receiver<Job>,
    done: &flume::Sender<Done>,
    stopping: &AtomicBool,
) {
    let mut session: Option<SmtpConnection> = None;
    for job in jobs.iter() {
        let outcome = if stopping.load(Ordering::Relaxed) {
            Outcome::NotTried
        } else {
            deliver(relay, &mut session, from, &job)
        };
        // The shard is gone (process ending): the email stays `sending`, resent at start-up.
        if done
            .send(Done {
                id: job.id,
                outcome,
            })
            .is_err()
        {
            return;
        }
        if jobs.is_empty() {
            if let Some(mut conn) = session.take() {
                let _ = conn.quit();
            }
        }
    }
    if let Some(mut conn) = session.take() {
        let _ = conn.quit();
    }
}

fn deliver(
    relay: &Relay,
    session: &mut Option<SmtpConnection>,
    from: &Mailbox,
    job: &Job,
) -> Outcome {
    let to: Mailbox = match job.to.parse() {
        Ok(to) => to,
        Err(e) => {
            return Outcome::Rejected {
                error: format!("recipient {:?}: {e}", job.to),
            }
        }
    };
    let message = Message::builder()
        .message_id(Some(job.message_id.clone()))
        .from(from.clone())
        .to(to)
        .subject(job.subject.clone())
        .header(ContentType::TEXT_PLAIN)
        .body(job.body.clone());
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            return Outcome::Rejected {
                error: format!("cannot build the message: {e}"),
            }
        }
    };
    // A kept session may have been closed by the relay meanwhile (NOOP checks).
    if let Some(conn) = session.as_mut() {
        if !conn.test_connected() {
            *session = None;
        }
    }
    let conn = match session {
        Some(conn) => conn,
        None => match relay.connect() {
            Ok(conn) => session.insert(conn),
            Err(e) => return failed(&e),
        },
    };
    match transaction(conn, &message) {
        Ok(()) => Outcome::Sent,
        Err(e) => {
            if let Some(mut conn) = session.take() {
                conn.abort();
            }
            failed(&e)
        }
    }
}

/// MAIL, RCPT, DATA and the content on an open session.
fn transaction(conn: &mut SmtpConnection, message: &Message) -> Result<(), SmtpError> {
    let envelope = message.envelope();
    let mut params = Vec::new();
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    let non_ascii = !envelope.to().iter().all(ascii) || !envelope.from().is_none_or(ascii);
    if non_ascii {
        // A relay without SMTPUTF8 refuses the MAIL command: a failed try like any other.
        params.push(MailParameter::SmtpUtfEight);
    }
    conn.command(MailCommand::new(envelope.from().cloned(), params))?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new()))?;
    }
    conn.command(Data)?;
    // The message is ASCII: lettre encodes bodies (quoted-printable) and headers.
    conn.command(content(&message.formatted()))?;
    Ok(())
}

fn failed(e: &SmtpError) -> Outcome {
    if timed_out(e) {
        Outcome::Failed {
            error: format!("timed out: {e}"),
        }
    } else {
        Outcome::Failed {
            error: e.to_string(),
        }
    }
}

/// A socket timeout shows as `TimedOut`, or on Linux as `WouldBlock` (EAGAIN from a read or
/// write with SO_RCVTIMEO/SO_SNDTIMEO), which lettre's `is_timeout` does not recognise.
fn timed_out(e: &SmtpError) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
        }
        source = err.source();
    }
    false
}

/// The shard's mail loop, spawned once at start-up; ends after the shard drains.
pub async fn run(shard: Rc<Shard>) {
    recover(&shard).await;
    let link = shard.mail.link.borrow_mut().take();
    let Some(link) = link else {
        // No relay: emails stay queued for an admin to see.
        shard.mail.stopped.fire();
        return;
    };
    let Link {
        jobs,
        done,
        stopping,
        thread,
    } = link;
    let outcomes = glommio::spawn_local(record_outcomes(Rc::clone(&shard), done));
    let mail = &shard.mail;
    loop {
        if shard.draining.fired() {
            break;
        }
        let free = mail.in_flight_max.saturating_sub(mail.in_flight.get());
        // `None`: nothing to do until woken (an email queued, an outcome recorded, a drain).
        let mut next_wait = None;
        if free > 0 {
            let now = now_ms();
            // A read first: most wake-ups (outcomes) find nothing due, and a claim is a commit.
            match shard.read(communication::next_due_ms) {
                Ok(Some(due)) if due <= now => match claim(&shard, &jobs, now, free).await {
                    Ok(()) => continue,
                    Err(Stop) => {
                        shard.mail.stopped.fire();
                        return;
                    }
                },
                Ok(Some(due)) => next_wait = Some(Duration::from_millis(due - now)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard = shard.id, error = %e, "reading the email queue failed");
                    next_wait = Some(Duration::from_millis(CLAIM_RETRY_MS));
                }
            }
        }
        match next_wait {
            Some(wait) => {
                futures_lite::future::or(mail.signal.wait(), glommio::timer::sleep(wait)).await;
            }
            None => mail.signal.wait().await,
        }
    }
    // Draining: jobs not started come back `NotTried`; wait for the one being sent (bounded
    // by the SMTP timeout; the server stops waiting after its shutdown grace anyway).
    stopping.store(true, Ordering::Relaxed);
    while mail.in_flight.get() > 0 {
        mail.signal.wait().await;
    }
    // Closing the jobs channel ends the thread (nothing is queued in it any more), which
    // closes the outcomes channel and so ends `record_outcomes`; the join is then immediate.
    drop(jobs);
    outcomes.await;
    let _ = thread.join();
    shard.mail.stopped.fire();
}

/// The mailer thread is gone: nothing more can be sent by this process.
struct Stop;

/// Claims up to `free` due emails (one commit) and hands them to the thread. A failed commit
/// is logged and waited out (the emails stay queued).
async fn claim(
    shard: &Rc<Shard>,
    jobs: &flume::Sender<Job>,
    now: u64,
    free: usize,
) -> Result<(), Stop> {
    let mail = &shard.mail;
    let domain = mail.msgid_domain.clone();
    let claimed = shard
        .partition
        .write(move |t| communication::claim_due(t, now, free, &domain))
        .await;
    let claimed = match claimed {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(shard = shard.id, error = %e, "claiming due emails failed");
            glommio::timer::sleep(Duration::from_millis(CLAIM_RETRY_MS)).await;
            return Ok(());
        }
    };
    for email in claimed {
        let job = Job {
            id: email.id,
            to: email.to,
            subject: email.subject,
            body: email.body,
            message_id: email.message_id.unwrap_or_default(),
        };
        // Never full: at most `in_flight_max` jobs exist, the channel's size.
        if jobs.try_send(job).is_err() {
            tracing::error!(
                shard = shard.id,
                "the mailer thread is gone; emails stay `sending` until the next start"
            );
            return Err(Stop);
        }
        mail.in_flight.set(mail.in_flight.get() + 1);
    }
    Ok(())
}

/// Start-up: emails left `sending` by the previous process go back to `queued` (and are sent
/// again with their Message-ID); a queue from before `email_states` existed is indexed.
async fn recover(shard: &Rc<Shard>) {
    match shard.partition.write(communication::upgrade_queue).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(shard = shard.id, emails = n, "email queue indexed"),
        Err(e) => tracing::error!(shard = shard.id, error = %e, "indexing the email queue failed"),
    }
    let mut logged: Vec<u64> = Vec::new();
    let mut total = 0usize;
    loop {
        let now = now_ms();
        let moved = shard
            .partition
            .write(move |t| communication::requeue_interrupted(t, now, REQUEUE_BATCH_MAX))
            .await;
        match moved {
            Ok(ids) if ids.is_empty() => break,
            Ok(ids) => {
                total += ids.len();
                let room = REQUEUE_LOGGED_MAX.saturating_sub(logged.len());
                logged.extend(ids.iter().take(room));
            }
            Err(e) => {
                tracing::error!(shard = shard.id, error = %e, "requeueing interrupted emails failed");
                break;
            }
        }
    }
    if total > 0 {
        // The one ambiguous case: the relay may have accepted these before the crash.
        tracing::warn!(
            shard = shard.id,
            count = total,
            ids = ?logged,
            "emails interrupted mid-send are sent again with the same Message-ID"
        );
    }
}

/// Commits outcomes as they come, batching whatever has arrived meanwhile into one write.
async fn record_outcomes(shard: Rc<Shard>, done: flume::Receiver<Done>) {
    let mail = &shard.mail;
    while let Ok(first) = done.recv_async().await {
        let mut batch = vec![first];
        while batch.len() < mail.in_flight_max {
            match done.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let batch: Rc<Vec<(Done, u64)>> =
            Rc::new(batch.into_iter().map(|d| (d, rand::random())).collect());
        let mut tries = 0;
        loop {
            tries += 1;
            let now = now_ms();
            let policy = mail.policy;
            let prune_before = now.saturating_sub(mail.sent_retention_ms);
            let items: Vec<(u64, Outcome, u64)> = batch
                .iter()
                .map(|(d, jitter)| (d.id, d.outcome.clone(), *jitter))
                .collect();
            let result = shard
                .partition
                .write(move |t| {
                    let mut states = Vec::with_capacity(items.len());
                    for (id, outcome, jitter) in &items {
                        let state =
                            communication::record_outcome(t, *id, outcome, now, &policy, *jitter)?;
                        states.push(state);
                    }
                    communication::prune_sent(t, prune_before, PRUNE_BATCH_MAX)?;
                    Ok::<_, CoreError>(states)
                })
                .await;
            match result {
                Ok(states) => {
                    for ((d, _), state) in batch.iter().zip(states) {
                        log_outcome(shard.id, d, state);
                    }
                    break;
                }
                Err(e) if tries < OUTCOME_COMMIT_TRIES => {
                    tracing::warn!(shard = shard.id, error = %e, "recording email outcomes failed; trying again");
                    glommio::timer::sleep(Duration::from_millis(CLAIM_RETRY_MS)).await;
                }
                Err(e) => {
                    tracing::error!(
                        shard = shard.id,
                        error = %e,
                        emails = n,
                        "email outcomes not recorded; these stay `sending` until the next start"
                    );
                    break;
                }
            }
        }
        mail.in_flight.set(mail.in_flight.get().saturating_sub(n));
        mail.wake();
    }
}

fn log_outcome(shard: usize, d: &Done, state: Option<EmailStatus>) {
    match (&d.outcome, state) {
        (Outcome::Sent, _) | (Outcome::NotTried, _) | (_, None) => {}
        (Outcome::Failed { error } | Outcome::Rejected { error }, Some(EmailStatus::Dead)) => {
            tracing::warn!(shard, email = d.id, error = %error, "email dead after its last try");
        }
        (Outcome::Failed { error } | Outcome::Rejected { error }, Some(_)) => {
            tracing::info!(shard, email = d.id, error = %error, "email try failed; will retry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_dot_stuffed_and_ends_with_the_marker() {
        for (message, expected) in [
            ("a\r\nb\r\n", "a\r\nb\r\n.\r\n"),
            (".x\r\n..y\r\nz.\r\n", "..x\r\n...y\r\nz.\r\n.\r\n"),
            ("no newline", "no newline\r\n.\r\n"),
            ("a\r\n.\r\nb", "a\r\n..\r\nb\r\n.\r\n"),
        ] {
            assert_eq!(content(message.as_bytes()).0, expected, "{message:?}");
        }
    }
}
