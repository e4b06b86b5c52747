//! Email delivery against a real SMTP server on loopback (aiosmtpd, started by each test):
//! verification and reset emails arrive once with a stable Message-ID and their tokens work;
//! a relay that is down, refusing (4xx/5xx) or slow is retried with backoff, then
//! dead-lettered, listed and retried with `nova admin emails`; SMTP never holds up requests.
//! Users live on both shards of a 2-shard server.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mailsink;

use std::time::Duration;

use common::*;
use mailsink::*;
use simd_json::json;

const VERIFY: &str = "Confirm your email address";
const RESET: &str = "Reset your password";
const WAIT: Duration = Duration::from_secs(20);

/// A 2-shard server mailing through the relay on `port`; `extra` flag pairs replace
/// `mail_flags`' values.
fn start(port: u16, extra: &[&str]) -> Server {
    let mut args = mail_flags(port);
    for pair in extra.chunks(2) {
        let at = args.iter().position(|a| a == pair[0]);
        match at {
            Some(i) => args[i + 1] = pair[1].to_string(),
            None => args.extend(pair.iter().map(|s| s.to_string())),
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// The admin view's status of every email to `to`.
fn statuses(server: &Server, to: &str) -> Vec<String> {
    server
        .emails_to(to)
        .iter()
        .map(|e| {
            e.get("status")
                .and_then(|s| s.as_str())
                .unwrap()
                .to_string()
        })
        .collect()
}

fn wait_status(server: &Server, to: &str, status: &str) {
    let ok = wait_until(WAIT, || {
        let s = statuses(server, to);
        !s.is_empty() && s.iter().all(|x| x == status)
    });
    assert!(
        ok,
        "emails to {to} not all {status}: {:?}",
        statuses(server, to)
    );
}

/// `nova_mail_emails{shard, state}` from `/metrics`.
fn mail_gauge(server: &Server, shard: u32, state: &str) -> u64 {
    let line = format!("nova_mail_emails{{shard=\"{shard}\",state=\"{state}\"}} ");
    let text = server.get("/metrics", None).text();
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line} in /metrics"))
        .parse()
        .unwrap()
}

/// Registers users until both shards have one; returns every user registered (all of them
/// have an email queued, which tests counting emails must know about).
fn users_on_both_shards(server: &Server) -> Vec<User> {
    let mut users: Vec<User> = Vec::new();
    for _ in 0..200 {
        users.push(server.register_new());
        let shards: std::collections::BTreeSet<u32> = users.iter().map(User::shard).collect();
        if shards.len() == 2 {
            return users;
        }
    }
    panic!("200 registrations did not cover both shards");
}

fn assert_no_duplicates(sink: &Sink) {
    let dup: Vec<_> = sink.counts().into_iter().filter(|(_, n)| *n > 1).collect();
    assert!(
        dup.is_empty(),
        "Message-IDs received more than once: {dup:?}"
    );
}

#[test]
fn verification_and_reset_emails_arrive_once_and_their_tokens_work() {
    let sink = Sink::start();
    let server = start(sink.port, &[]);
    let users = server.users_on_each_shard();
    assert_eq!(users.len(), 2);
    for user in &users {
        let mail = sink.wait_one(&user.email, VERIFY, WAIT);
        // The Message-ID names the queued email, which lives on the user's shard.
        assert_eq!(shard_of(mail.email_id()), user.shard(), "{mail:?}");
        let resp = server.post(
            "/v1/accounts/verify-email",
            None,
            json!({"token": mail.token()}),
        );
        resp.expect(200);
        assert_eq!(resp.at("user.email_verified").as_bool(), Some(true));
        wait_status(&server, &user.email, "sent");
    }
    for user in &users {
        server
            .post(
                "/v1/accounts/password-reset",
                None,
                json!({"email": user.email.clone()}),
            )
            .expect(202);
        let mail = sink.wait_one(&user.email, RESET, WAIT);
        assert_eq!(shard_of(mail.email_id()), user.shard());
        let new_password = format!("{}-new", user.password);
        server
            .post(
                "/v1/accounts/password-reset/confirm",
                None,
                json!({"token": mail.token(), "password": new_password.clone()}),
            )
            .expect(204);
        server.try_login(&user.username, &user.password).expect(401);
        server.login(&user.username, &new_password);
        wait_status(&server, &user.email, "sent");
    }
    // Nothing arrives twice (give a late duplicate a moment to show up).
    std::thread::sleep(Duration::from_millis(500));
    assert_no_duplicates(&sink);
    for user in &users {
        assert_eq!(sink.messages_to(&user.email).len(), 2);
    }
}

#[test]
fn a_relay_down_at_first_is_retried_and_each_email_arrives_once() {
    let port = mailsink::free_port_outside_ephemeral();
    let server = start(port, &[]);
    let users = server.users_on_each_shard();
    // Tries fail (connection refused) and the emails wait, queued, for the next one.
    std::thread::sleep(Duration::from_millis(1500));
    for user in &users {
        let s = statuses(&server, &user.email);
        // `sending` only for the instant of a try.
        assert!(s == ["queued"] || s == ["sending"], "{s:?}");
    }
    let sink = Sink::start_on(port);
    for user in &users {
        sink.wait_one(&user.email, VERIFY, WAIT);
        wait_status(&server, &user.email, "sent");
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_no_duplicates(&sink);
    let mut server = server;
    server.stop();
    let listed = admin_list(&server.launch().data_dir(), Some("sent"));
    for user in &users {
        let row = listed.iter().find(|l| l.to == user.email).unwrap();
        assert!(row.attempts >= 2, "refused tries are counted: {row:?}");
        assert_eq!(row.message_id, format!("<{}@nova.test>", row.id));
    }
}

#[test]
fn a_refusing_relay_dead_letters_and_an_admin_retries() {
    for code in ["451", "550"] {
        let sink = Sink::start();
        sink.set_mode(code);
        let mut server = start(
            sink.port,
            &["--mail-attempts-max", "3", "--mail-backoff-base-ms", "100"],
        );
        let users = users_on_both_shards(&server);
        for user in &users {
            wait_status(&server, &user.email, "dead");
        }
        assert!(sink.messages().is_empty(), "{code}: nothing was accepted");
        for shard in 0..server.shards() {
            let here = users.iter().filter(|u| u.shard() == shard).count() as u64;
            assert_eq!(
                mail_gauge(&server, shard, "dead"),
                here,
                "{code}: dead on {shard}"
            );
            assert_eq!(
                mail_gauge(&server, shard, "queued"),
                0,
                "{code}: queued on {shard}"
            );
        }
        let data = server.launch().data_dir();
        let data_arg = data.display().to_string();

        // The files are the running server's: the offline tool refuses, politely.
        let (ok, _, err) = admin_emails(&["list", "--data-dir", &data_arg]);
        assert!(
            !ok && err.contains("in use") && err.contains("nova serve"),
            "{err}"
        );

        server.stop();
        let dead = admin_list(&data, Some("dead"));
        for user in &users {
            let row = dead
                .iter()
                .find(|l| l.to == user.email)
                .unwrap_or_else(|| panic!("{code}: no dead email to {}: {dead:?}", user.email));
            assert_eq!(row.state, "dead");
            assert_eq!(row.attempts, 3, "{row:?}");
            assert!(row.last_error.contains(code), "{row:?}");
        }
        assert!(admin_list(&data, Some("queued")).is_empty());

        // One by id, the rest with --dead; retrying what is not dead is refused.
        let first = dead.iter().find(|l| l.to == users[0].email).unwrap().id;
        let (ok, out, err) = admin_emails(&["retry", "--data-dir", &data_arg, &first.to_string()]);
        assert!(ok && out.starts_with("1 email"), "{out}{err}");
        let (ok, _, err) = admin_emails(&["retry", "--data-dir", &data_arg, &first.to_string()]);
        assert!(!ok && err.contains("not a dead email"), "{err}");
        let rest = dead.len() - 1;
        let (ok, out, err) = admin_emails(&["retry", "--data-dir", &data_arg, "--dead"]);
        assert!(
            ok && out.starts_with(&format!("{rest} email")),
            "{out}{err}"
        );
        let queued = admin_list(&data, Some("queued"));
        assert_eq!(queued.len(), dead.len(), "{queued:?}");
        assert!(admin_list(&data, Some("dead")).is_empty());
        assert!(queued.iter().all(|l| l.attempts == 0));

        sink.set_mode("ok");
        server.restart();
        for user in &users {
            let mail = sink.wait_one(&user.email, VERIFY, WAIT);
            assert!(dead.iter().any(|l| l.message_id == mail.message_id));
            wait_status(&server, &user.email, "sent");
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_no_duplicates(&sink);
    }
}

#[test]
fn a_slow_relay_times_out_without_holding_up_requests() {
    let sink = Sink::start();
    sink.set_mode("slow:4");
    let mut server = start(
        sink.port,
        &[
            "--smtp-timeout-ms",
            "300",
            "--mail-attempts-max",
            "2",
            "--mail-backoff-base-ms",
            "100",
        ],
    );
    let users = server.users_on_each_shard();
    // While the mailer threads wait on the relay, requests on both shards are served.
    for user in &users {
        let login = server.login(&user.username, &user.password);
        server.get("/v1/me", Some(&login.access)).expect(200);
    }
    for user in &users {
        wait_status(&server, &user.email, "dead");
    }
    server.stop();
    let dead = admin_list(&server.launch().data_dir(), Some("dead"));
    for user in &users {
        let row = dead.iter().find(|l| l.to == user.email).unwrap();
        assert!(row.last_error.contains("timed out"), "{row:?}");
    }
    // The relay got nothing: it was still waiting to answer RCPT when the client gave up.
    assert!(sink.messages().is_empty());
    sink.set_mode("ok");
    let data = server.launch().data_dir().display().to_string();
    let id = dead.iter().find(|l| l.to == users[1].email).unwrap().id;
    let (ok, _, err) = admin_emails(&["retry", "--data-dir", &data, &id.to_string()]);
    assert!(ok, "{err}");
    server.restart();
    sink.wait_one(&users[1].email, VERIFY, WAIT);
    wait_status(&server, &users[1].email, "sent");
    assert_eq!(statuses(&server, &users[0].email), ["dead"]);
}

#[test]
fn without_a_relay_emails_stay_queued_and_are_listed() {
    let mut server = Server::start(&[]);
    let users = server.users_on_each_shard();
    std::thread::sleep(Duration::from_millis(300));
    for user in &users {
        assert_eq!(statuses(&server, &user.email), ["queued"]);
    }
    for user in &users {
        let on_shard = users.iter().filter(|u| u.shard() == user.shard()).count() as u64;
        assert!(
            mail_gauge(&server, user.shard(), "queued") >= on_shard,
            "queued emails of shard {} in /metrics",
            user.shard()
        );
        assert_eq!(mail_gauge(&server, user.shard(), "dead"), 0);
    }
    server.stop();
    let queued = admin_list(&server.launch().data_dir(), Some("queued"));
    for user in &users {
        let row = queued.iter().find(|l| l.to == user.email).unwrap();
        assert_eq!((row.attempts, row.message_id.as_str()), (0, "-"));
        assert_eq!(shard_of(row.id), user.shard());
    }
    let all = admin_list(&server.launch().data_dir(), None);
    assert_eq!(all.len(), queued.len());
    let (ok, _, err) = admin_emails(&["list", "--data-dir", "/nonexistent/nova"]);
    assert!(!ok && err.contains("not a nova data directory"), "{err}");
}

#[test]
fn starttls_and_implicit_tls_carry_the_session_and_the_certificate_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = dir.path().join("relay.pem");
    let key = dir.path().join("relay.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let ca = cert.display().to_string();
    for mode in ["starttls", "tls"] {
        let sink = Sink::start_tls(mode, &cert, &key);
        let server = start(sink.port, &["--smtp-tls", mode, "--smtp-ca-file", &ca]);
        for user in server.users_on_each_shard() {
            let mail = sink.wait_one(&user.email, VERIFY, WAIT);
            assert_eq!(shard_of(mail.email_id()), user.shard());
        }
    }
    // Without the relay's CA the certificate is refused and nothing is sent in clear.
    let sink = Sink::start_tls("starttls", &cert, &key);
    let mut server = start(
        sink.port,
        &[
            "--smtp-tls",
            "starttls",
            "--mail-attempts-max",
            "2",
            "--mail-backoff-base-ms",
            "100",
        ],
    );
    let user = server.register_new();
    wait_status(&server, &user.email, "dead");
    server.stop();
    let dead = admin_list(&server.launch().data_dir(), Some("dead"));
    let row = dead.iter().find(|l| l.to == user.email).unwrap();
    assert!(
        row.last_error.to_lowercase().contains("certificate"),
        "{row:?}"
    );
    assert!(sink.messages().is_empty());
}

#[test]
fn a_clean_restart_while_sending_loses_and_repeats_nothing() {
    let sink = Sink::start();
    // Slow enough that SIGTERM finds emails claimed and one at the relay.
    sink.set_mode("slow:0.3");
    let mut server = start(sink.port, &[]);
    let mut users = server.users_on_each_shard();
    while users.len() < 8 {
        users.push(server.register_new());
    }
    sink.wait_for(WAIT, "a first email", |got| !got.is_empty());
    server.stop();
    let listed = admin_list(&server.launch().data_dir(), None);
    assert!(
        listed.iter().all(|l| l.state != "sending"),
        "a clean stop records every outcome: {listed:?}"
    );
    let queued = listed.iter().filter(|l| l.state == "queued").count();
    assert!(queued > 0, "the stop came while emails waited: {listed:?}");
    // Emails never started went back without their try counted.
    assert!(listed
        .iter()
        .filter(|l| l.state == "queued")
        .all(|l| l.attempts == 0));
    sink.set_mode("ok");
    server.restart();
    for user in &users {
        sink.wait_one(&user.email, VERIFY, WAIT);
        wait_status(&server, &user.email, "sent");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_no_duplicates(&sink);
    assert!(
        !server.stderr_text().contains("interrupted mid-send"),
        "{}",
        server.stderr_text()
    );
}

#[test]
fn credentials_go_over_tls_only_and_a_wrong_password_is_a_failed_try() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = dir.path().join("relay.pem");
    let key = dir.path().join("relay.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let ca = cert.display().to_string();
    let sink = Sink::start_tls_auth("starttls", &cert, &key, Some("nova:s3cret-pw"));
    for (password, delivered) in [("s3cret-pw", true), ("wrong-pw", false)] {
        let mut server = start(
            sink.port,
            &[
                "--smtp-tls",
                "starttls",
                "--smtp-ca-file",
                &ca,
                "--smtp-username",
                "nova",
                "--smtp-password",
                password,
                "--mail-attempts-max",
                "2",
                "--mail-backoff-base-ms",
                "100",
            ],
        );
        let user = server.register_new();
        if delivered {
            sink.wait_one(&user.email, VERIFY, WAIT);
            wait_status(&server, &user.email, "sent");
        } else {
            wait_status(&server, &user.email, "dead");
            server.stop();
            let dead = admin_list(&server.launch().data_dir(), Some("dead"));
            let row = dead.iter().find(|l| l.to == user.email).unwrap();
            assert!(row.last_error.contains("535"), "{row:?}");
            assert!(sink.messages_to(&user.email).is_empty());
        }
    }
    // A password over plain SMTP to a remote relay is refused at start-up.
    let exited = Launch::new()
        .args(&[
            "--smtp-host",
            "mail.example.org",
            "--smtp-tls",
            "none",
            "--smtp-username",
            "nova",
            "--smtp-password",
            "x",
        ])
        .run_expecting_exit();
    assert!(!exited.status.success());
    assert!(exited.stderr.contains("in clear"), "{}", exited.stderr);
}

/// The digests received by `to`, oldest first.
fn digests_to(sink: &Sink, to: &str) -> Vec<Received> {
    sink.messages_to(to)
        .into_iter()
        .filter(|m| m.subject.starts_with("Your Nova digest"))
        .collect()
}

/// A user's notification digest (`email_digest: daily`, with a day of 2 s here) counts the
/// notifications not read since the previous one, across shards (the actor on the other
/// shard); none is sent when nothing is new, to an unverified address, or once turned off.
#[test]
fn notification_digests_count_what_is_unread_since_the_last_one() {
    let sink = Sink::start();
    let server = start(sink.port, &["--digest-day-s", "2", "--digest-check-s", "1"]);
    let users = server.users_on_each_shard();
    for user in &users {
        let mail = sink.wait_one(&user.email, VERIFY, WAIT);
        server
            .post(
                "/v1/accounts/verify-email",
                None,
                json!({"token": mail.token()}),
            )
            .expect(200);
    }
    let (reader, actor) = (&users[0], &users[1]);
    let reader_token = server.login(&reader.username, &reader.password).access;
    let actor_token = server.login(&actor.username, &actor.password).access;
    let unverified = server.register_new();
    let unverified_token = server
        .login(&unverified.username, &unverified.password)
        .access;
    let post_of = |token: &str, text: &str| -> String {
        let resp = server.post("/v1/posts", Some(token), json!({ "text": text }));
        resp.expect(201);
        resp.str("post.id").to_string()
    };
    let like = |post: &str| {
        server
            .post(
                &format!("/v1/posts/{post}/like"),
                Some(&actor_token),
                json!({}),
            )
            .expect(200);
    };
    // An old notification, from before the digest was turned on: never counted.
    server.follow(Some(&actor_token), reader.id);
    for token in [&reader_token, &unverified_token] {
        let resp = server.call(
            "PATCH",
            "/v1/me/settings",
            Some(token),
            Some(json!({"email_digest": "daily"})),
        );
        resp.expect(200);
        assert_eq!(resp.str("settings.email_digest"), "daily");
    }
    // The digests start the moment they are turned on: what comes right after counts.

    let posts: Vec<String> = (0..2)
        .map(|i| post_of(&reader_token, &format!("p{i}")))
        .collect();
    for post in &posts {
        like(post);
    }
    post_of(&actor_token, &format!("hello @{}", reader.username));
    like(&post_of(&unverified_token, "mine"));
    let got = sink.wait_for(WAIT, "the first digest", |_| {
        !digests_to(&sink, &reader.email).is_empty()
    });
    drop(got);
    let first = &digests_to(&sink, &reader.email)[0];
    assert_eq!(first.subject, "Your Nova digest: 3 unread notifications");
    assert!(first.body.contains("- 2 likes"), "{}", first.body);
    assert!(first.body.contains("- 1 mention"), "{}", first.body);
    assert!(!first.body.contains("follower"), "{}", first.body);

    // Within the period after it: a like, then everything marked read. Nothing unread is new
    // then, so no digest comes for a few periods; then only what is new and unread counts.
    like(&post_of(&reader_token, "p2"));
    server
        .call(
            "POST",
            "/v1/notifications/read",
            Some(&reader_token),
            Some(json!({"all": true})),
        )
        .expect(200);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        digests_to(&sink, &reader.email).len(),
        1,
        "{:#?}",
        digests_to(&sink, &reader.email)
    );
    like(&post_of(&reader_token, "p3"));
    server
        .post(
            &format!("/v1/posts/{}/comments", posts[0]),
            Some(&actor_token),
            json!({"text": "nice"}),
        )
        .expect(201);
    sink.wait_for(WAIT, "the second digest", |_| {
        digests_to(&sink, &reader.email).len() >= 2
    });
    let second = &digests_to(&sink, &reader.email)[1];
    assert_eq!(second.subject, "Your Nova digest: 2 unread notifications");
    assert!(second.body.contains("- 1 like\n"), "{}", second.body);
    assert!(second.body.contains("- 1 comment"), "{}", second.body);

    // Turned off: nothing more, whatever comes.
    server
        .call(
            "PATCH",
            "/v1/me/settings",
            Some(&reader_token),
            Some(json!({"email_digest": "off"})),
        )
        .expect(200);
    like(&post_of(&reader_token, "p4"));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(digests_to(&sink, &reader.email).len(), 2);
    // Neither the unverified subscriber nor the actor (no digest) got one.
    assert!(digests_to(&sink, &unverified.email).is_empty());
    assert!(digests_to(&sink, &actor.email).is_empty());
    assert_no_duplicates(&sink);
}
