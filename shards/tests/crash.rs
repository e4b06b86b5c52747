//! Proves that nothing acknowledged is lost when the `nova` process is killed (SIGKILL) under
//! concurrent load, and that a registration whose answer was lost is whole or absent.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

const THREADS: usize = 4;
/// Registrations acknowledged before the kill (per round).
const ACKED_BEFORE_KILL: usize = 200;

fn register_raw(server: &Server, username: &str, email: &str) -> Resp {
    server.post(
        "/v1/accounts",
        None,
        json!({"username": username, "email": email, "password": "another password"}),
    )
}

/// What the client learned about one registration (and the login that followed it).
#[derive(Debug)]
struct Attempt {
    username: String,
    email: String,
    password: String,
    /// The user id if the registration was answered 201.
    acked: Option<u64>,
    /// The login made after an acknowledged registration, if it was answered 200.
    login: Option<Login>,
}

/// Registers and logs in users on fresh connections until the server stops answering.
fn load(server: &Server, round: usize, thread: usize, acked: &AtomicUsize) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    for i in 0.. {
        let username = format!("c{round}t{thread}n{i}");
        let email = format!("{username}@crash.example.com");
        let password = format!("pw {username} secret");
        let register = Req::post("/v1/accounts")
            .json(
                &json!({"username": username.clone(), "email": email.clone(),
                          "password": password.clone()}),
            )
            .timeout(Duration::from_secs(20));
        let mut attempt = Attempt {
            username,
            email,
            password,
            acked: None,
            login: None,
        };
        let answered = match server.send(&register) {
            Ok(resp) if resp.status == 201 => {
                attempt.acked = Some(parse_id(resp.at("user.id")));
                acked.fetch_add(1, Ordering::SeqCst);
                true
            }
            // An overloaded or timed-out answer says nothing either way: checked like a lost one.
            Ok(resp) if resp.status == 503 => true,
            Ok(resp) => panic!(
                "registration {}: {}",
                attempt.username,
                resp.what_happened()
            ),
            Err(_) => false,
        };
        let mut alive = answered;
        if attempt.acked.is_some() {
            let login = Req::post("/v1/sessions")
                .json(&json!({"login": attempt.username.clone(),
                              "password": attempt.password.clone()}))
                .timeout(Duration::from_secs(20));
            match server.send(&login) {
                Ok(resp) if resp.status == 200 => attempt.login = Some(Login::from_resp(&resp)),
                Ok(resp) if resp.status == 503 => {}
                Ok(resp) => panic!("login {}: {}", attempt.username, resp.what_happened()),
                Err(_) => alive = false,
            }
        }
        attempts.push(attempt);
        if !alive {
            break;
        }
    }
    attempts
}

/// Runs the load from `THREADS` threads and SIGKILLs the server once `ACKED_BEFORE_KILL`
/// registrations have been acknowledged, while requests are still in flight.
fn load_then_kill(server: Server, round: usize) -> (Server, Vec<Attempt>, Instant) {
    let server = Arc::new(server);
    let acked = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let server = Arc::clone(&server);
            let acked = Arc::clone(&acked);
            thread::spawn(move || load(&server, round, t, &acked))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} registrations in 120 s",
            acked.load(Ordering::SeqCst)
        );
        assert!(
            !handles.iter().all(|h| h.is_finished()),
            "every client stopped before the kill"
        );
        thread::sleep(Duration::from_millis(10));
    }
    server.signal(libc::SIGKILL);
    let killed_at = Instant::now();
    let attempts: Vec<Attempt> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let mut server = Arc::try_unwrap(server).ok().expect("no other owner");
    server.kill9(); // reap it
    (server, attempts, killed_at)
}

/// Every acknowledged registration (and login) survived; every unanswered one is whole or
/// absent, its username and email both free again. Returns the users that exist now.
fn verify(server: &Server, attempts: &[Attempt], killed_at: Instant) -> Vec<User> {
    let mut shards = [0usize; 2];
    let mut existing = Vec::new();
    let mut lost_answers = 0;
    for a in attempts {
        let resp = server.try_login(&a.username, &a.password);
        match a.acked {
            Some(id) => {
                assert_eq!(
                    resp.status,
                    200,
                    "acknowledged user {} lost: {}",
                    a.username,
                    resp.what_happened()
                );
                let login = Login::from_resp(&resp);
                assert_eq!(
                    login.user_id, id,
                    "{} came back with another id",
                    a.username
                );
                shards[shard_of(id) as usize] += 1;
                if let Some(before) = &a.login {
                    // The acknowledged session survived too.
                    let me = server.get("/v1/me", Some(&before.access));
                    assert_eq!(
                        me.status,
                        200,
                        "session of {} lost: {}",
                        a.username,
                        me.what_happened()
                    );
                    assert_eq!(parse_id(me.at("user.id")), id);
                }
            }
            None => {
                lost_answers += 1;
                assert!(
                    resp.status == 200 || resp.status == 401,
                    "login of unanswered {}: {}",
                    a.username,
                    resp.what_happened()
                );
                if resp.status == 401 {
                    resp.expect_error(401, "invalid_credentials");
                    // Absent: then the username is wholly free...
                    let again = server.post(
                        "/v1/accounts",
                        None,
                        json!({"username": a.username.clone(),
                               "email": format!("{}.retry@crash.example.com", a.username),
                               "password": a.password.clone()}),
                    );
                    assert_eq!(
                        again.status,
                        201,
                        "username of the unanswered, absent {} is held: {}",
                        a.username,
                        again.what_happened()
                    );
                    existing.push(User::from_created(&again, &a.password));
                    // ...and so is the email: a claim left by a registration that died with the
                    // previous process is released as soon as someone asks for the email.
                    let other = format!("{}r", a.username);
                    let resp = register_raw(server, &other, &a.email);
                    assert_eq!(
                        resp.status,
                        201,
                        "email of the unanswered, absent {} is held: {}",
                        a.username,
                        resp.what_happened()
                    );
                    existing.push(User::from_created(&resp, "another password"));
                    continue;
                }
            }
        }
        // Present: then the username and email are both taken.
        let user = User::from_created(&resp, &a.password);
        let fresh = format!("{}x", a.username);
        server
            .post(
                "/v1/accounts",
                None,
                json!({"username": a.username.to_uppercase(),
                       "email": format!("{fresh}@other.example.com"),
                       "password": "another password"}),
            )
            .expect_error(409, "username_taken");
        server
            .post(
                "/v1/accounts",
                None,
                json!({"username": fresh, "email": a.email.to_uppercase(),
                       "password": "another password"}),
            )
            .expect_error(409, "email_taken");
        existing.push(user);
    }
    assert!(
        shards[0] > 0 && shards[1] > 0,
        "acknowledged users per shard: {shards:?}"
    );
    eprintln!(
        "verified {} attempts: {shards:?} acknowledged per shard, {lost_answers} answers lost \
         ({:?} after the kill)",
        attempts.len(),
        killed_at.elapsed()
    );
    existing
}

#[test]
fn acknowledged_registrations_and_logins_survive_sigkill() {
    let server = Server::start(&[]);
    let (mut server, round1, killed_at) = load_then_kill(server, 1);
    server.restart();
    let users1 = verify(&server, &round1, killed_at);

    // Again, on the recovered directory.
    let (mut server, round2, killed_at) = load_then_kill(server, 2);
    server.restart();
    verify(&server, &round2, killed_at);
    for user in users1 {
        assert_eq!(
            server.login(&user.username, &user.password).user_id,
            user.id
        );
    }
}
