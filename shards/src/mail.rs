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
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
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
                let transport = transport(cfg, host)?;
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
                            mailer_thread(&transport, &from, &jobs_rx, &done_tx, &stopping)
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

fn transport(cfg: &Config, host: &str) -> anyhow::Result<SmtpTransport> {
    let mut builder = SmtpTransport::builder_dangerous(host)
        .port(cfg.smtp_port())
        .timeout(Some(Duration::from_millis(cfg.smtp_timeout_ms)));
    let tls = || {
        TlsParameters::new(host.to_string())
            .map_err(|e| anyhow::anyhow!("smtp TLS for {host}: {e}"))
    };
    builder = match cfg.smtp_tls {
        SmtpTls::None => builder.tls(Tls::None),
        SmtpTls::Starttls => builder.tls(Tls::Required(tls()?)),
        SmtpTls::Tls => builder.tls(Tls::Wrapper(tls()?)),
    };
    if let (Some(user), Some(password)) = (&cfg.smtp_username, &cfg.smtp_password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    Ok(builder.build())
}

/// The thread: one email at a time, one SMTP connection per email (so that an idle mailer
/// holds no connection and no timer).
fn mailer_thread(
    transport: &SmtpTransport,
    from: &Mailbox,
    jobs: &flume::Receiver<Job>,
    done: &flume::Sender<Done>,
    stopping: &AtomicBool,
) {
    for job in jobs.iter() {
        let outcome = if stopping.load(Ordering::Relaxed) {
            Outcome::NotTried
        } else {
            deliver(transport, from, &job)
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
    }
}

fn deliver(transport: &SmtpTransport, from: &Mailbox, job: &Job) -> Outcome {
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
    match transport.send(&message) {
        Ok(_) => Outcome::Sent,
        Err(e) if timed_out(&e) => Outcome::Failed {
            error: format!("timed out: {e}"),
        },
        Err(e) => Outcome::Failed {
            error: e.to_string(),
        },
    }
}

/// A socket timeout shows as `TimedOut`, or on Linux as `WouldBlock` (EAGAIN from a read or
/// write with SO_RCVTIMEO/SO_SNDTIMEO), which lettre's `is_timeout` does not recognise.
fn timed_out(e: &lettre::transport::smtp::Error) -> bool {
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
        let mut next_wait = None;
        if free > 0 {
            let now = now_ms();
            let domain = mail.msgid_domain.clone();
            let claimed = shard
                .partition
                .write(move |t| communication::claim_due(t, now, free, &domain))
                .await;
            match claimed {
                Ok(claimed) => {
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
                                "the mailer thread is gone; emails stay queued"
                            );
                            shard.mail.stopped.fire();
                            return;
                        }
                        mail.in_flight.set(mail.in_flight.get() + 1);
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = shard.id, error = %e, "claiming due emails failed");
                    next_wait = Some(Duration::from_millis(CLAIM_RETRY_MS));
                }
            }
        }
        if next_wait.is_none() && mail.in_flight.get() < mail.in_flight_max {
            // Everything due is out; sleep until the next queued email is due, if any.
            match shard.read(communication::next_due_ms) {
                Ok(Some(due)) => {
                    next_wait = Some(Duration::from_millis(due.saturating_sub(now_ms()).max(1)));
                }
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
