//! Proves that queued emails are sent exactly once across a SIGKILL: registrations and reset
//! requests on both shards of a 2-shard server queue emails while a real SMTP relay (aiosmtpd)
//! receives them; the server is killed mid-way and restarted; then every email it stored is
//! received, each Message-ID once.
//!
//! What the test allows, and why: an email is marked `sending` durably before it goes to the
//! relay and `sent` as soon as the relay answers 250. A kill between that 250 and the commit
//! of `sent` (one group commit, a few ms) cannot be told apart from a kill before the relay
//! got it, so at start-up such an email is sent again with the SAME Message-ID. The server
//! logs those ids ("interrupted mid-send"). A Message-ID received twice is therefore allowed
//! only if the restarted server named it as interrupted, and never more than twice; every
//! other email must arrive exactly once. The test prints how many duplicates it saw.

// A panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod mailsink;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use mailsink::*;
use simd_json::json;

const THREADS: usize = 4;
/// Acknowledged registrations before the kill.
const ACKED_BEFORE_KILL: usize = 60;
const VERIFY: &str = "Confirm your email address";
const RESET: &str = "Reset your password";

#[derive(Default)]
struct Load {
    /// Every address a registration was tried for (answered or not).
    tried: Mutex<Vec<String>>,
    /// Registrations answered 201: their address.
    registered: Mutex<Vec<String>>,
    /// Reset requests answered 202: their address.
    resets: Mutex<Vec<String>>,
    acked: AtomicUsize,
    stop: AtomicBool,
}

fn worker(server: &Server, load: &Load, t: usize) {
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        n += 1;
        let name = unique_name(&format!("m{t}x"));
        let email = format!("{name}@example.com");
        load.tried.lock().unwrap().push(email.clone());
        let body = json!({"username": name.clone(), "email": email.clone(),
                          "password": format!("pw-{name}-secret")});
        match server.send(&Req::post("/v1/accounts").json(&body)) {
            Ok(resp) if resp.status == 201 => {
                load.registered.lock().unwrap().push(email.clone());
                load.acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) if resp.status == 503 => continue,
            Ok(resp) => panic!("register {name}: {}", resp.what_happened()),
            Err(_) => return,
        }
        if n % 2 == 0 {
            let body = json!({"email": email.clone()});
            match server.send(&Req::post("/v1/accounts/password-reset").json(&body)) {
                Ok(resp) if resp.status == 202 => load.resets.lock().unwrap().push(email),
                Ok(resp) if resp.status == 503 => {}
                Ok(resp) => panic!("reset for {email}: {}", resp.what_happened()),
                Err(_) => return,
            }
        }
    }
}

/// The ids the server logged as interrupted mid-send at start-up.
fn interrupted_ids(stderr: &str) -> HashSet<u64> {
    let mut ids = HashSet::new();
    for line in stderr
        .lines()
        .filter(|l| l.contains("interrupted mid-send"))
    {
        let list = line
            .split_once("ids=[")
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(list, _)| list)
            .unwrap_or_else(|| panic!("no ids in {line:?}"));
        ids.extend(list.split(", ").filter(|s| !s.is_empty()).map(|s| {
            s.parse::<u64>()
                .unwrap_or_else(|_| panic!("bad id {s:?} in {line:?}"))
        }));
    }
    ids
}

#[test]
fn queued_emails_are_sent_exactly_once_across_sigkill() {
    let sink = Sink::start();
    // A relay that takes a little while per message, so that a backlog builds up and the
    // kill finds emails queued, being sent and just sent.
    sink.set_mode("slow:0.01");
    let args = mail_flags(sink.port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Arc::new(Server::start(&args));
    assert_eq!(server.shards(), 2);
    let load = Arc::new(Load::default());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let server = Arc::clone(&server);
            let load = Arc::clone(&load);
            thread::spawn(move || worker(&server, &load, t))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.acked.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
        assert!(Instant::now() < deadline, "too few registrations in 120 s");
        assert!(!handles.iter().all(|h| h.is_finished()), "clients stopped");
        thread::sleep(Duration::from_millis(5));
    }
    let received_before_kill = sink.messages().len();
    server.signal(libc::SIGKILL);
    load.stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    let mut server = Arc::try_unwrap(server).ok().expect("no other owner");
    server.kill9();
    server.restart();

    let registered = load.registered.lock().unwrap().clone();
    let resets = load.resets.lock().unwrap().clone();
    let tried = load.tried.lock().unwrap().clone();
    let users_on: BTreeSet<u32> = registered
        .iter()
        .map(|e| {
            let name = e.split('@').next().unwrap();
            let login = server.login(name, &format!("pw-{name}-secret"));
            shard_of(login.user_id)
        })
        .collect();
    assert_eq!(users_on.len(), 2, "registered users on both shards");

    // Every acknowledged email arrives.
    sink.wait_for(Duration::from_secs(60), "every acknowledged email", |got| {
        let has = |to: &str, subject: &str| {
            got.iter()
                .any(|m| m.to.eq_ignore_ascii_case(to) && m.subject == subject)
        };
        registered.iter().all(|e| has(e, VERIFY)) && resets.iter().all(|e| has(e, RESET))
    });

    // Every email stored (including those of requests the kill left unanswered) ends `sent`,
    // and what the relay received is exactly the stored set.
    let mut stored: HashSet<u64> = HashSet::new();
    for to in &tried {
        let ok = wait_until(Duration::from_secs(60), || {
            server
                .emails_to(to)
                .iter()
                .all(|e| e.get("status").and_then(|s| s.as_str()) == Some("sent"))
        });
        assert!(
            ok,
            "emails to {to} not all sent: {:?}",
            server.emails_to(to)
        );
        for e in server.emails_to(to) {
            stored.insert(
                e.get("id")
                    .and_then(|i| i.as_str())
                    .unwrap()
                    .parse()
                    .unwrap(),
            );
        }
    }
    thread::sleep(Duration::from_millis(500));
    let counts: HashMap<u64, usize> = sink.messages().iter().fold(HashMap::new(), |mut acc, m| {
        *acc.entry(m.email_id()).or_insert(0) += 1;
        acc
    });
    let received: HashSet<u64> = counts.keys().copied().collect();
    let missing: Vec<_> = stored.difference(&received).collect();
    let phantom: Vec<_> = received.difference(&stored).collect();
    assert!(missing.is_empty(), "stored but never received: {missing:?}");
    assert!(phantom.is_empty(), "received but not stored: {phantom:?}");

    let interrupted = interrupted_ids(&server.stderr_text());
    let duplicates: Vec<(u64, usize)> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    for (id, n) in &duplicates {
        assert!(
            *n == 2 && interrupted.contains(id),
            "email {id} received {n} times but the server did not name it as interrupted \
             mid-send (interrupted: {interrupted:?})"
        );
    }
    eprintln!(
        "mail crash: {} registrations and {} resets acknowledged, {} emails stored, {} received \
         before the kill; after restart {} were requeued as interrupted mid-send and {} \
         Message-IDs arrived twice",
        registered.len(),
        resets.len(),
        stored.len(),
        received_before_kill,
        interrupted.len(),
        duplicates.len()
    );
}
