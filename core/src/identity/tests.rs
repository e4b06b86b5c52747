//! The identity rules on redb's in-memory backend.

use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase};

use super::*;
use crate::communication;

fn db() -> Database {
    Database::builder()
        .create_with_backend(InMemoryBackend::new())
        .unwrap()
}

fn ctx(now_ms: u64, log_id: u64) -> Context {
    Context {
        now_ms,
        ip: "127.0.0.1".into(),
        log_id,
    }
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

fn new_user(id: u64, name: &str) -> NewUser {
    NewUser {
        id,
        username: Username::parse(name).unwrap(),
        email: Email::parse(&format!("{name}@example.org")).unwrap(),
        display_name: DisplayName::parse(name).unwrap(),
        password_hash: "hash".into(),
        email_id: id + 1000,
        verify_ttl_ms: 10_000,
    }
}

fn token_in_outbox(db: &Database, to: &str) -> String {
    let read = db.begin_read().unwrap();
    let emails = communication::emails(&read, Some(to), 10, 100).unwrap();
    let body = &emails[0].body;
    body.lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap()
        .to_string()
}

#[test]
fn usernames_are_unique_case_insensitively() {
    let db = db();
    write(&db, |t| create_user(t, &ctx(1, 1), new_user(1, "Alice"))).unwrap();
    let err = write(&db, |t| create_user(t, &ctx(2, 2), new_user(2, "alice"))).unwrap_err();
    assert!(matches!(err, CoreError::UsernameTaken));
    let read = db.begin_read().unwrap();
    assert_eq!(user_by_username(&read, "alice").unwrap().unwrap().id, 1);
    assert!(user(&read, 2).unwrap().is_none());
}

#[test]
fn email_claims_hold_until_released_or_replaced() {
    let db = db();
    let email = Email::parse("Bob@Example.org").unwrap();
    write(&db, |t| claim_email(t, &email, 1, 0, None)).unwrap();
    let again = Email::parse("bob@example.ORG").unwrap();
    assert!(matches!(
        write(&db, |t| claim_email(t, &again, 2, 0, None)),
        Err(CoreError::EmailTaken)
    ));
    write(&db, |t| claim_email(t, &again, 2, 0, Some(1))).unwrap();
    write(&db, |t| release_email(t, "bob@example.org", 1)).unwrap();
    assert_eq!(
        email_claim(&db.begin_read().unwrap(), "bob@example.org")
            .unwrap()
            .unwrap()
            .user_id,
        2
    );
    write(&db, |t| release_email(t, "bob@example.org", 2)).unwrap();
    assert!(email_claim(&db.begin_read().unwrap(), "bob@example.org")
        .unwrap()
        .is_none());
}

#[test]
fn refresh_rotates_and_reuse_revokes_the_session() {
    let db = db();
    write(&db, |t| create_user(t, &ctx(1, 1), new_user(1, "carol"))).unwrap();
    let issued = write(&db, |t| {
        create_session(
            t,
            &ctx(2, 2),
            NewSession {
                id: 50,
                user_id: 1,
                user_agent: "t".into(),
                refresh_ttl_ms: 1000,
                secret: crate::tokens::random_bytes(),
            },
        )
    })
    .unwrap();
    let first = RefreshToken::parse(&issued.refresh_token).unwrap();
    let second = match write(&db, |t| refresh(t, &ctx(3, 3), &first, 1000)).unwrap() {
        Refreshed::Rotated(i) => RefreshToken::parse(&i.refresh_token).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(second.generation, 1);
    assert!(matches!(
        write(&db, |t| refresh(t, &ctx(4, 4), &first, 1000)).unwrap(),
        Refreshed::Reused { session_id: 50, .. }
    ));
    assert!(matches!(
        write(&db, |t| refresh(t, &ctx(5, 5), &second, 1000)),
        Err(CoreError::InvalidRefreshToken)
    ));
    let read = db.begin_read().unwrap();
    assert!(sessions_of(&read, 1).unwrap().is_empty());
    assert_eq!(revoked_since(&read, 0).unwrap(), vec![(50, 1)]);
}

#[test]
fn sessions_belong_to_their_user() {
    let db = db();
    write(&db, |t| create_user(t, &ctx(1, 1), new_user(1, "dave"))).unwrap();
    write(&db, |t| create_user(t, &ctx(1, 2), new_user(2, "erin"))).unwrap();
    write(&db, |t| {
        create_session(
            t,
            &ctx(2, 3),
            NewSession {
                id: 60,
                user_id: 1,
                user_agent: "t".into(),
                refresh_ttl_ms: 1000,
                secret: crate::tokens::random_bytes(),
            },
        )
    })
    .unwrap();
    assert!(matches!(
        write(&db, |t| revoke_session(
            t,
            &ctx(3, 4),
            2,
            60,
            AuthEvent::SessionRevoked
        )),
        Err(CoreError::NotFound)
    ));
    assert_eq!(sessions_of(&db.begin_read().unwrap(), 1).unwrap().len(), 1);
    write(&db, |t| {
        revoke_session(t, &ctx(3, 5), 1, 60, AuthEvent::Logout)
    })
    .unwrap();
    assert!(sessions_of(&db.begin_read().unwrap(), 1)
        .unwrap()
        .is_empty());
}

#[test]
fn verification_and_reset_tokens_are_single_use_and_expire() {
    let db = db();
    write(&db, |t| create_user(t, &ctx(1, 1), new_user(1, "frank"))).unwrap();
    let token = token_in_outbox(&db, "frank@example.org");
    assert!(matches!(
        write(&db, |t| verify_email(t, &ctx(20_000, 2), &token)),
        Err(CoreError::TokenExpired)
    ));
    assert!(
        write(&db, |t| verify_email(t, &ctx(2, 3), &token))
            .unwrap()
            .email_verified
    );
    assert!(matches!(
        write(&db, |t| verify_email(t, &ctx(3, 4), &token)),
        Err(CoreError::InvalidToken)
    ));

    write(&db, |t| {
        create_session(
            t,
            &ctx(4, 5),
            NewSession {
                id: 70,
                user_id: 1,
                user_agent: "t".into(),
                refresh_ttl_ms: 1000,
                secret: crate::tokens::random_bytes(),
            },
        )
    })
    .unwrap();
    write(&db, |t| {
        request_password_reset(t, &ctx(5, 6), 1, 2000, 1000)
    })
    .unwrap();
    let reset = token_in_outbox(&db, "frank@example.org");
    assert_eq!(
        check_reset_token(&db.begin_read().unwrap(), &reset, 6).unwrap(),
        1
    );
    let (user_id, revoked) = write(&db, |t| {
        confirm_password_reset(t, &ctx(6, 7), &reset, "new".into())
    })
    .unwrap();
    assert_eq!((user_id, revoked), (1, vec![70]));
    assert_eq!(
        user(&db.begin_read().unwrap(), 1)
            .unwrap()
            .unwrap()
            .password_hash(),
        "new"
    );
    assert!(matches!(
        write(&db, |t| confirm_password_reset(
            t,
            &ctx(7, 8),
            &reset,
            "x".into()
        )),
        Err(CoreError::InvalidToken)
    ));
    let logs = auth_logs(&db.begin_read().unwrap(), Some(1), 100, 1000).unwrap();
    assert!(logs.iter().any(|l| l.event == AuthEvent::PasswordReset));
}

#[test]
fn a_reset_token_is_spent_once_the_password_has_changed() {
    let db = db();
    write(&db, |t| create_user(t, &ctx(1, 1), new_user(1, "grace"))).unwrap();
    let tokens = |db: &Database| -> Vec<String> {
        let read = db.begin_read().unwrap();
        communication::emails(&read, Some("grace@example.org"), 10, 100)
            .unwrap()
            .iter()
            .filter(|e| e.kind == "password_reset")
            .filter_map(|e| {
                e.body
                    .lines()
                    .find_map(|l| l.strip_prefix("token: "))
                    .map(str::to_string)
            })
            .collect()
    };
    for (now, id) in [(5, 6), (6, 7), (7, 8)] {
        write(&db, |t| {
            request_password_reset(t, &ctx(now, id), 1, id + 1000, 10_000)
        })
        .unwrap();
    }
    let outstanding = tokens(&db);
    assert_eq!(outstanding.len(), 3);
    // One of them is used: the others are spent with it.
    write(&db, |t| {
        confirm_password_reset(t, &ctx(10, 11), &outstanding[1], "one".into())
    })
    .unwrap();
    for other in [&outstanding[0], &outstanding[2]] {
        assert!(matches!(
            check_reset_token(&db.begin_read().unwrap(), other, 12),
            Err(CoreError::InvalidToken)
        ));
        assert!(matches!(
            write(&db, |t| confirm_password_reset(
                t,
                &ctx(12, 13),
                other,
                "two".into()
            )),
            Err(CoreError::InvalidToken)
        ));
    }
    // A token asked for after that holds, until the operator sets a password.
    write(&db, |t| {
        request_password_reset(t, &ctx(20, 21), 1, 2021, 10_000)
    })
    .unwrap();
    let fresh: Vec<String> = tokens(&db)
        .into_iter()
        .filter(|t| !outstanding.contains(t))
        .collect();
    assert_eq!(fresh.len(), 1);
    assert_eq!(
        check_reset_token(&db.begin_read().unwrap(), &fresh[0], 21).unwrap(),
        1
    );
    write(&db, |t| {
        set_password_hash(t, &ctx(22, 23), 1, "operator".into())
    })
    .unwrap();
    assert!(matches!(
        write(&db, |t| confirm_password_reset(
            t,
            &ctx(24, 25),
            &fresh[0],
            "three".into()
        )),
        Err(CoreError::InvalidToken)
    ));
    assert_eq!(
        user(&db.begin_read().unwrap(), 1)
            .unwrap()
            .unwrap()
            .password_hash(),
        "operator"
    );
}

#[test]
fn one_time_tokens_stored_before_their_issue_time_was_kept_still_decode() {
    #[derive(serde::Serialize)]
    struct Before {
        user_id: u64,
        expires_ms: u64,
    }
    let old = crate::codec::encode(&Before {
        user_id: 9,
        expires_ms: 500,
    });
    let token = OneTimeToken::decode(&old).unwrap();
    assert_eq!(
        (token.user_id, token.expires_ms, token.issued_ms),
        (9, 500, 0)
    );
}
