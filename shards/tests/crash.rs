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

/// A session's refresh tokens as one client rotates them through the kill.
#[derive(Debug)]
struct Rotated {
    login: Login,
    /// Refreshes answered 200.
    answered: usize,
    /// A refresh sent and not answered (or answered 503): it may have landed or not.
    in_flight: bool,
}

/// Refreshes `login`'s session over and over until the server stops answering.
fn refresh_load(server: &Server, login: Login, acked: &AtomicUsize) -> Rotated {
    let mut out = Rotated {
        login,
        answered: 0,
        in_flight: false,
    };
    loop {
        let req = Req::post("/v1/sessions/refresh")
            .json(&json!({"refresh_token": out.login.refresh.clone()}))
            .timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 200 => {
                out.login = Login::from_resp(&resp);
                out.answered += 1;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) if resp.status == 503 => {
                out.in_flight = true;
                return out;
            }
            Ok(resp) => panic!("refresh: {}", resp.what_happened()),
            Err(_) => {
                out.in_flight = true;
                return out;
            }
        }
    }
}

/// Sessions opened (and every other one closed) by one client through the kill.
#[derive(Debug, Default)]
struct Opened {
    /// Logins answered 200, with whether their logout was answered.
    answered: Vec<(Login, bool)>,
    /// A logout sent and not answered: it may have landed or not.
    unsure_logout: Option<u64>,
}

/// Logs `user` in over and over, logging every other session out, until the server stops
/// answering.
fn login_load(server: &Server, user: &User, acked: &AtomicUsize) -> Opened {
    let mut out = Opened::default();
    loop {
        let req = Req::post("/v1/sessions")
            .json(&json!({"login": user.username.clone(), "password": user.password.clone()}))
            .timeout(Duration::from_secs(20));
        let login = match server.send(&req) {
            Ok(resp) if resp.status == 200 => Login::from_resp(&resp),
            Ok(resp) if resp.status == 503 => continue,
            Ok(resp) => panic!("login: {}", resp.what_happened()),
            Err(_) => return out,
        };
        acked.fetch_add(1, Ordering::SeqCst);
        let access = login.access.clone();
        let session = login.session_id;
        out.answered.push((login, false));
        if out.answered.len() % 2 == 1 {
            continue;
        }
        let req = Req::new("DELETE", "/v1/sessions/current")
            .bearer(&access)
            .timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 204 => out.answered.last_mut().unwrap().1 = true,
            Ok(resp) if resp.status == 503 => out.unsure_logout = Some(session),
            Ok(resp) => panic!("logout: {}", resp.what_happened()),
            Err(_) => {
                out.unsure_logout = Some(session);
                return out;
            }
        }
    }
}

/// Presents a refresh token after the restart: `Ok(login)` when it rotated, else the error
/// code.
fn present(server: &Server, refresh: &str) -> Result<Login, String> {
    let resp = server.post(
        "/v1/sessions/refresh",
        None,
        json!({"refresh_token": refresh}),
    );
    match resp.status {
        200 => Ok(Login::from_resp(&resp)),
        401 => Err(resp.str("error.code").to_string()),
        _ => panic!("refresh after the restart: {}", resp.what_happened()),
    }
}

/// Refresh-token rotations, logins and logouts through a SIGKILL, on both shards: the last
/// answered refresh token of each session still works after the restart (or, when a refresh
/// was in flight at the kill and landed, is found rotated: `refresh_token_reused`, never
/// `invalid_refresh_token`, which would mean a stored rotation was lost); every answered
/// login's session is there, and every answered logout holds.
#[test]
fn answered_refreshes_logins_and_logouts_survive_sigkill() {
    let mut server = Server::start(&[]);
    let users: Vec<User> = [0, 0, 1, 1]
        .into_iter()
        .map(|s| server.register_on_shard(s))
        .collect();
    for round in 1..=2 {
        let shared = Arc::new(server);
        let acked = Arc::new(AtomicUsize::new(0));
        let refreshers: Vec<_> = users
            .iter()
            .map(|u| {
                let login = shared.login(&u.username, &u.password);
                let (server, acked) = (Arc::clone(&shared), Arc::clone(&acked));
                thread::spawn(move || refresh_load(&server, login, &acked))
            })
            .collect();
        let openers: Vec<_> = [&users[0], &users[2]]
            .into_iter()
            .map(|u| {
                let (server, acked, user) = (Arc::clone(&shared), Arc::clone(&acked), u.clone());
                thread::spawn(move || login_load(&server, &user, &acked))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
            assert!(Instant::now() < deadline, "too few answers in 120 s");
            thread::sleep(Duration::from_millis(5));
        }
        shared.signal(libc::SIGKILL);
        let rotated: Vec<Rotated> = refreshers.into_iter().map(|h| h.join().unwrap()).collect();
        let opened: Vec<Opened> = openers.into_iter().map(|h| h.join().unwrap()).collect();
        server = Arc::try_unwrap(shared).ok().expect("no other owner");
        server.kill9();
        server.restart();
        server.assert_replayed(&format!("round {round}: "));
        let mut landed = 0;
        for (u, r) in rotated.iter().enumerate() {
            match present(&server, &r.login.refresh) {
                Ok(next) => {
                    server.get("/v1/me", Some(&next.access)).expect(200);
                }
                Err(code) if code == "refresh_token_reused" && r.in_flight => landed += 1,
                Err(code) => panic!(
                    "round {round}: user {u}'s last answered refresh token (of {} answered, \
                     one in flight: {}) is {code} after the restart",
                    r.answered, r.in_flight
                ),
            }
        }
        let mut logouts = 0;
        for o in &opened {
            for (login, logged_out) in &o.answered {
                let unsure = o.unsure_logout == Some(login.session_id);
                match present(&server, &login.refresh) {
                    Ok(_) => assert!(
                        !logged_out,
                        "round {round}: session {} works after its answered logout",
                        login.session_id
                    ),
                    Err(_) if *logged_out => {
                        // Its access token, still within its lifetime, is refused too.
                        let me = server.get("/v1/me", Some(&login.access));
                        assert_eq!(me.status, 401, "{}", me.what_happened());
                    }
                    Err(code) => assert!(
                        *logged_out || unsure,
                        "round {round}: answered login's session {} is {code} after the restart",
                        login.session_id
                    ),
                }
                logouts += usize::from(*logged_out);
            }
        }
        assert!(
            logouts > 0,
            "round {round}: no logout answered before the kill"
        );
        eprintln!(
            "round {round}: {} refreshes answered ({landed} in flight landed), {} logins \
             answered, {logouts} logouts",
            rotated.iter().map(|r| r.answered).sum::<usize>(),
            opened.iter().map(|o| o.answered.len()).sum::<usize>()
        );
    }
}
