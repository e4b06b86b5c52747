//! The email queue's rules on redb's in-memory backend: states, tries, backoff, dead letters,
//! recovery of interrupted sends.

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase};

use super::*;

fn db() -> Database {
    Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap()
}

fn write<R>(db: &Database, f: impl FnOnce(&WriteTransaction) -> Result<R, CoreError>) -> R {
    let txn = db.begin_write().unwrap();
    let out = f(&txn).unwrap();
    txn.commit().unwrap();
    out
}

fn queue(db: &Database, id: u64, now_ms: u64) {
    let email = QueuedEmail::new(
        id,
        format!("u{id}@example.org"),
        "verify_email",
        "s".into(),
        "b".into(),
        now_ms,
    );
    write(db, |t| enqueue_email(t, &email));
}

fn state(db: &Database, id: u64) -> QueuedEmail {
    email(&db.begin_read().unwrap(), id).unwrap().unwrap()
}

const POLICY: RetryPolicy = RetryPolicy {
    attempts_max: 3,
    backoff_base_ms: 1000,
    backoff_max_ms: 3000,
};

#[test]
fn a_due_email_is_claimed_once_and_sent() {
    let db = db();
    queue(&db, 7, 100);
    assert_eq!(next_due_ms(&db.begin_read().unwrap()).unwrap(), Some(100));
    // Not due yet.
    assert!(write(&db, |t| claim_due(t, 99, 10, "d")).is_empty());
    let claimed = write(&db, |t| claim_due(t, 100, 10, "nova.test"));
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].status, EmailStatus::Sending);
    assert_eq!(claimed[0].attempts, 1);
    assert_eq!(claimed[0].message_id.as_deref(), Some("<7@nova.test>"));
    // A sending email is not claimed again, and nothing else is due.
    assert!(write(&db, |t| claim_due(t, 10_000, 10, "d")).is_empty());
    assert_eq!(next_due_ms(&db.begin_read().unwrap()).unwrap(), None);
    let st = write(&db, |t| {
        record_outcome(t, 7, &Outcome::Sent, 200, &POLICY, 0)
    });
    assert_eq!(st, Some(EmailStatus::Sent));
    let sent = emails_in_state(&db.begin_read().unwrap(), EmailStatus::Sent, 10).unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].id, 7);
    // A late second outcome changes nothing.
    let st = write(&db, |t| {
        record_outcome(t, 7, &Outcome::Sent, 300, &POLICY, 0)
    });
    assert_eq!(st, None);
}

#[test]
fn failures_back_off_then_the_email_is_dead_and_can_be_retried() {
    let db = db();
    queue(&db, 1, 0);
    let fail = Outcome::Failed {
        error: "451 try later".into(),
    };
    let mut now = 0;
    let mut due = Vec::new();
    for attempt in 1..=3u32 {
        let claimed = write(&db, |t| claim_due(t, now, 10, "d"));
        assert_eq!(claimed.len(), 1, "attempt {attempt}");
        assert_eq!(claimed[0].attempts, attempt);
        assert_eq!(claimed[0].message_id.as_deref(), Some("<1@d>"));
        let st = write(&db, |t| record_outcome(t, 1, &fail, now, &POLICY, 0));
        if attempt < 3 {
            assert_eq!(st, Some(EmailStatus::Queued));
            let next = state(&db, 1).next_attempt_ms;
            due.push(next - now);
            // Not due before its backoff.
            assert!(write(&db, |t| claim_due(t, next - 1, 10, "d")).is_empty());
            now = next;
        } else {
            assert_eq!(st, Some(EmailStatus::Dead));
        }
    }
    // Equal jitter with jitter 0: half of 1000, then half of 2000.
    assert_eq!(due, [500, 1000]);
    let dead = state(&db, 1);
    assert_eq!(dead.status, EmailStatus::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("451 try later"));
    assert!(write(&db, |t| claim_due(t, u64::MAX / 2, 10, "d")).is_empty());
    // Retrying something that is not dead is refused.
    queue(&db, 2, 0);
    let txn = db.begin_write().unwrap();
    assert!(matches!(
        retry_dead(&txn, Some(2), 5, 10),
        Err(CoreError::NotFound)
    ));
    drop(txn);
    assert_eq!(write(&db, |t| retry_dead(t, None, 5, 10)), vec![1]);
    let again = state(&db, 1);
    assert_eq!((again.status, again.attempts), (EmailStatus::Queued, 0));
    assert_eq!(again.message_id.as_deref(), Some("<1@d>"));
}

#[test]
fn backoff_grows_is_capped_and_jittered() {
    let p = RetryPolicy {
        attempts_max: 10,
        backoff_base_ms: 100,
        backoff_max_ms: 1000,
    };
    for (attempts, full) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1000),
        (40, 1000),
    ] {
        for jitter in [0, 1, 57, 999, u64::MAX] {
            let d = p.backoff_ms(attempts, jitter);
            assert!(d >= full / 2 && d <= full, "{attempts} {jitter} -> {d}");
        }
        assert_eq!(p.backoff_ms(attempts, 0), full / 2);
        assert_eq!(p.backoff_ms(attempts, full - full / 2), full);
    }
}

#[test]
fn interrupted_sends_are_requeued_with_their_message_id() {
    let db = db();
    for id in 1..=3 {
        queue(&db, id, 0);
    }
    let claimed = write(&db, |t| claim_due(t, 0, 2, "d"));
    assert_eq!(claimed.len(), 2);
    // The process dies here. At start-up:
    let moved = write(&db, |t| requeue_interrupted(t, 50, 100));
    assert_eq!(moved, vec![1, 2]);
    let again = write(&db, |t| claim_due(t, 50, 10, "other"));
    assert_eq!(again.len(), 3);
    for e in again {
        let expected = if e.id <= 2 { "<ID@d>" } else { "<ID@other>" };
        assert_eq!(
            e.message_id.unwrap(),
            expected.replace("ID", &e.id.to_string())
        );
    }
}

#[test]
fn not_tried_goes_back_without_counting() {
    let db = db();
    queue(&db, 1, 0);
    write(&db, |t| claim_due(t, 0, 1, "d"));
    write(&db, |t| {
        record_outcome(t, 1, &Outcome::NotTried, 5, &POLICY, 0)
    });
    let e = state(&db, 1);
    assert_eq!(
        (e.status, e.attempts, e.next_attempt_ms),
        (EmailStatus::Queued, 0, 5)
    );
}

#[test]
fn rejected_is_dead_at_once_and_errors_are_shortened() {
    let db = db();
    queue(&db, 1, 0);
    write(&db, |t| claim_due(t, 0, 1, "d"));
    let long = "é".repeat(1000);
    write(&db, |t| {
        record_outcome(t, 1, &Outcome::Rejected { error: long }, 5, &POLICY, 0)
    });
    let e = state(&db, 1);
    assert_eq!(e.status, EmailStatus::Dead);
    assert!(e.last_error.unwrap().len() <= ERROR_BYTES_MAX + 3);
}

#[test]
fn sent_emails_are_pruned_by_age() {
    let db = db();
    for id in 1..=3 {
        queue(&db, id, 0);
    }
    write(&db, |t| claim_due(t, 0, 10, "d"));
    for (id, at) in [(1, 10), (2, 20)] {
        write(&db, |t| {
            record_outcome(t, id, &Outcome::Sent, at, &POLICY, 0)
        });
    }
    assert_eq!(write(&db, |t| prune_sent(t, 15, 100)), 1);
    assert!(email(&db.begin_read().unwrap(), 1).unwrap().is_none());
    assert!(email(&db.begin_read().unwrap(), 2).unwrap().is_some());
    assert_eq!(state(&db, 3).status, EmailStatus::Sending);
}

#[test]
fn old_rows_are_read_and_indexed_once() {
    #[derive(Serialize)]
    struct V0 {
        id: u64,
        to: String,
        kind: String,
        subject: String,
        body: String,
        status: EmailStatus,
        attempts: u32,
        created_ms: u64,
    }
    let db = db();
    let old = V0 {
        id: 9,
        to: "a@b.c".into(),
        kind: "verify_email".into(),
        subject: "s".into(),
        body: "b".into(),
        status: EmailStatus::Queued,
        attempts: 0,
        created_ms: 40,
    };
    write(&db, |t| {
        t.open_table(EMAIL_QUEUES)?
            .insert(9, encode(&old).as_slice())?;
        Ok(())
    });
    assert_eq!(state(&db, 9).created_ms, 40);
    assert_eq!(write(&db, upgrade_queue), 1);
    assert_eq!(write(&db, upgrade_queue), 0);
    assert_eq!(write(&db, |t| claim_due(t, 40, 10, "d")).len(), 1);
}

#[test]
fn a_digest_counts_each_kind_in_words() {
    use crate::notifications::Kind;
    let (subject, body) = digest_email("Ada", &[(Kind::Follow, 1), (Kind::Like, 3)]);
    assert_eq!(subject, "Your Nova digest: 4 unread notifications");
    assert!(body.starts_with("Hello Ada,"), "{body}");
    assert!(body.contains("- 1 new follower\n- 3 likes\n"), "{body}");
    let (subject, _) = digest_email("Ada", &[(Kind::Reply, 1)]);
    assert_eq!(subject, "Your Nova digest: 1 unread notification");
}
