//! The moderation rules on redb's in-memory backend.

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase};

use super::*;

fn db() -> Database {
    Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap()
}

fn write<R>(
    db: &Database,
    f: impl FnOnce(&WriteTransaction) -> Result<R, CoreError>,
) -> Result<R, CoreError> {
    let txn = db.begin_write().unwrap();
    let out = f(&txn);
    if out.is_ok() {
        txn.commit().unwrap();
    }
    out
}

/// An id made at `ms` (since the Unix epoch) with sequence `seq`.
fn id_at(ms: u64, seq: u64) -> u64 {
    ((ms - crate::ID_EPOCH_MS) << 22) | seq
}

const NOW: u64 = crate::ID_EPOCH_MS + 1_000_000_000;

fn entry(id: u64, action: Action, target: u64) -> AuditEntry {
    AuditEntry {
        id,
        at_ms: NOW,
        actor: Actor::User(7),
        action,
        target_kind: TargetKind::Account,
        target,
        reason: "why".into(),
    }
}

fn new_report(id: u64, reporter: u64, target: u64) -> NewReport {
    NewReport {
        id,
        reporter,
        kind: TargetKind::Post,
        target,
        reason: Reason::Spam,
        note: String::new(),
    }
}

#[test]
fn roles_default_to_user_and_change_with_an_audit_entry() {
    let db = db();
    assert_eq!(role(&db.begin_read().unwrap(), 5).unwrap(), Role::User);
    let before = write(&db, |t| {
        set_role(
            t,
            5,
            Role::Moderator,
            &entry(1, Action::SetRole(Role::Moderator), 5),
        )
    })
    .unwrap();
    assert_eq!(before, Role::User);
    let r = db.begin_read().unwrap();
    assert_eq!(role(&r, 5).unwrap(), Role::Moderator);
    assert!(role(&r, 5).unwrap().moderates());
    assert!(!Role::User.moderates());
    let log = audit_log(&r, None, 10).unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, Action::SetRole(Role::Moderator));
    drop(r);
    write(&db, |t| {
        set_role(t, 5, Role::User, &entry(2, Action::SetRole(Role::User), 5))
    })
    .unwrap();
    assert_eq!(role(&db.begin_read().unwrap(), 5).unwrap(), Role::User);
}

#[test]
fn suspend_and_unsuspend_once_each_with_the_mirror() {
    let db = db();
    let s = Suspension {
        at_ms: NOW,
        by: Actor::AdminCli,
        reason: "spam".into(),
    };
    assert!(write(&db, |t| suspend(
        t,
        9,
        &s,
        10,
        &entry(1, Action::Suspend, 9)
    ))
    .unwrap());
    // Twice: nothing more is written (no second audit entry).
    assert!(!write(&db, |t| suspend(
        t,
        9,
        &s,
        11,
        &entry(2, Action::Suspend, 9)
    ))
    .unwrap());
    let r = db.begin_read().unwrap();
    assert_eq!(suspension(&r, 9).unwrap(), Some(s.clone()));
    assert_eq!(suspended_users(&r).unwrap(), vec![9]);
    assert_eq!(audit_log(&r, None, 10).unwrap().len(), 1);
    drop(r);
    assert!(write(&db, |t| unsuspend(
        t,
        9,
        12,
        &entry(3, Action::Unsuspend, 9)
    ))
    .unwrap());
    assert!(!write(&db, |t| unsuspend(
        t,
        9,
        13,
        &entry(4, Action::Unsuspend, 9)
    ))
    .unwrap());
    let r = db.begin_read().unwrap();
    assert_eq!(suspension(&r, 9).unwrap(), None);
    assert!(suspended_users(&r).unwrap().is_empty());
    let log = audit_log(&r, None, 10).unwrap();
    assert_eq!(
        log.iter().map(|e| e.action).collect::<Vec<_>>(),
        [Action::Unsuspend, Action::Suspend],
        "newest first"
    );
}

#[test]
fn the_mirror_ignores_an_older_change_delivered_late() {
    let db = db();
    assert!(write(&db, |t| mirror(t, 3, true, 100)).unwrap());
    assert!(write(&db, |t| mirror(t, 3, false, 200)).unwrap());
    // The suspension's event arrives again after the unsuspension: no change.
    assert!(!write(&db, |t| mirror(t, 3, true, 100)).unwrap());
    assert!(suspended_users(&db.begin_read().unwrap())
        .unwrap()
        .is_empty());
    assert!(write(&db, |t| mirror(t, 3, true, 300)).unwrap());
    assert_eq!(suspended_users(&db.begin_read().unwrap()).unwrap(), vec![3]);
}

#[test]
fn a_report_is_deduplicated_per_reporter_and_target_until_resolved() {
    let db = db();
    let first = write(&db, |t| {
        file_report(t, new_report(id_at(NOW, 1), 1, 50), NOW, 5)
    })
    .unwrap();
    let Filed::New(first) = first else {
        panic!("{first:?}")
    };
    let again = write(&db, |t| {
        file_report(t, new_report(id_at(NOW, 2), 1, 50), NOW, 5)
    })
    .unwrap();
    assert_eq!(again, Filed::Existing(first.clone()));
    // Another reporter, or another target: new reports.
    assert!(matches!(
        write(&db, |t| file_report(
            t,
            new_report(id_at(NOW, 3), 2, 50),
            NOW,
            5
        ))
        .unwrap(),
        Filed::New(_)
    ));
    assert!(matches!(
        write(&db, |t| file_report(
            t,
            new_report(id_at(NOW, 4), 1, 51),
            NOW,
            5
        ))
        .unwrap(),
        Filed::New(_)
    ));
    let r = db.begin_read().unwrap();
    let open = reports(&r, ReportState::Open, None, 10).unwrap();
    assert_eq!(open.len(), 3);
    assert!(open.windows(2).all(|w| w[0].id < w[1].id), "oldest first");
    let page = reports(&r, ReportState::Open, Some(open[0].id), 1).unwrap();
    assert_eq!(page[0].id, open[1].id, "the cursor goes on after the id");
    drop(r);
    let audit = entry(9, Action::ResolveReport(ReportState::Dismissed), first.id);
    let closed = write(&db, |t| {
        resolve(
            t,
            first.id,
            ReportState::Dismissed,
            7,
            "fine".into(),
            NOW,
            &audit,
        )
    })
    .unwrap();
    assert_eq!(closed.state, ReportState::Dismissed);
    assert_eq!(closed.resolved_by, Some(7));
    // Resolved twice: refused, nothing written.
    let twice = write(&db, |t| {
        resolve(
            t,
            first.id,
            ReportState::Actioned,
            7,
            String::new(),
            NOW,
            &audit,
        )
    });
    assert!(matches!(twice, Err(CoreError::Invalid(_))));
    let unknown = write(&db, |t| {
        resolve(
            t,
            12345,
            ReportState::Actioned,
            7,
            String::new(),
            NOW,
            &audit,
        )
    });
    assert!(matches!(unknown, Err(CoreError::NotFound)));
    let r = db.begin_read().unwrap();
    assert_eq!(reports(&r, ReportState::Open, None, 10).unwrap().len(), 2);
    assert_eq!(
        reports(&r, ReportState::Dismissed, None, 10).unwrap().len(),
        1
    );
    drop(r);
    // Resolved, the same reporter may report the same target again.
    assert!(matches!(
        write(&db, |t| file_report(
            t,
            new_report(id_at(NOW, 5), 1, 50),
            NOW,
            5
        ))
        .unwrap(),
        Filed::New(_)
    ));
}

#[test]
fn reports_are_rate_limited_per_reporter_per_hour() {
    let db = db();
    for k in 0..3 {
        let filed = write(&db, |t| {
            file_report(t, new_report(id_at(NOW, k), 1, 100 + k), NOW, 3)
        })
        .unwrap();
        assert!(matches!(filed, Filed::New(_)));
    }
    let over = write(&db, |t| {
        file_report(t, new_report(id_at(NOW, 9), 1, 200), NOW, 3)
    })
    .unwrap();
    assert!(matches!(over, Filed::TooMany { retry_after_ms } if retry_after_ms > 0));
    // Someone else is not limited by it; an hour later the reporter is not either.
    assert!(matches!(
        write(&db, |t| file_report(
            t,
            new_report(id_at(NOW, 10), 2, 200),
            NOW,
            3
        ))
        .unwrap(),
        Filed::New(_)
    ));
    let later = NOW + HOUR_MS + 1;
    assert!(matches!(
        write(&db, |t| file_report(
            t,
            new_report(id_at(later, 0), 1, 200),
            later,
            3
        ))
        .unwrap(),
        Filed::New(_)
    ));
}

#[test]
fn the_audit_log_pages_newest_first() {
    let db = db();
    write(&db, |t| {
        for id in 1..=5 {
            record_audit(t, &entry(id, Action::RemovePost, id))?;
        }
        Ok(())
    })
    .unwrap();
    let r = db.begin_read().unwrap();
    let first = audit_log(&r, None, 2).unwrap();
    assert_eq!(first.iter().map(|e| e.id).collect::<Vec<_>>(), [5, 4]);
    let next = audit_log(&r, Some(4), 2).unwrap();
    assert_eq!(next.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 2]);
    assert_eq!(highest_id(&r).unwrap(), Some(5));
}

#[test]
fn notes_and_names_are_checked() {
    assert_eq!(parse_note("  hi  ", 10, "invalid_note").unwrap(), "hi");
    assert!(parse_note(&"x".repeat(11), 10, "invalid_note").is_err());
    assert!(parse_note("a\u{0}b", 10, "invalid_note").is_err());
    assert_eq!(Reason::parse("self_harm"), Some(Reason::SelfHarm));
    assert_eq!(Reason::parse("rude"), None);
    for r in Reason::ALL {
        assert_eq!(Reason::parse(r.as_str()), Some(r));
    }
    assert_eq!(TargetKind::parse("comment"), Some(TargetKind::Comment));
    assert_eq!(Role::parse("admin"), Some(Role::Admin));
    assert_eq!(ReportState::parse("closed"), None);
}
