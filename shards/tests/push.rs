//! Proves Web Push (issue 4) against the real `nova` process with 2 shards and a push service
//! started by the test on loopback: each notification reaches the recipient's subscriptions
//! as an RFC 8291 `aes128gcm` message that the subscriber's private key decrypts to the
//! notification's JSON, signed with an RFC 8292 VAPID JWT (ES256, `aud` the endpoint's origin,
//! `exp` ahead) under the server's public key; actor and recipient on the same and on
//! different shards. Failures: a 500 is retried, a 410 deletes the subscription, an endpoint
//! that refuses connections or answers too slowly is retried and never delays a request, and
//! a failing host's circuit breaker stops the requests to it. Subscriptions are validated,
//! limited per user, listed and deleted by their owner only.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::*;
use hkdf::Hkdf;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use sha2::Sha256;
use simd_json::json;

const PAIRS: [(u32, u32); 4] = [(0, 1), (1, 0), (0, 0), (1, 1)];
/// How long the test waits for something the push threads do in the background.
const SETTLE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// A push service on loopback
// ---------------------------------------------------------------------------------------------

/// What the push service does with the next request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    /// Wait this long, then answer 201.
    Slow(Duration),
}

#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 push service: records every request and answers as scripted (then 201).
struct PushService {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl PushService {
    fn start(script: &[Answer]) -> PushService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (Arc::clone(&script), Arc::clone(&received));
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                thread::spawn(move || serve(conn, &s, &r));
            }
        });
        PushService { port, received }
    }

    fn endpoint(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/push/{name}", self.port)
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until at least `n` requests came (or `SETTLE` passed); returns them all.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + SETTLE;
        while self.count() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        self.received()
    }
}

fn serve(conn: TcpStream, script: &Mutex<VecDeque<Answer>>, received: &Mutex<Vec<Received>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    received.lock().unwrap().push(Received {
        path,
        headers,
        body,
    });
    let answer = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Answer::Status(201));
    let status = match answer {
        Answer::Status(s) => s,
        Answer::Slow(d) => {
            thread::sleep(d);
            201
        }
    };
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

// ---------------------------------------------------------------------------------------------
// The subscriber's side
// ---------------------------------------------------------------------------------------------

struct Subscriber {
    secret: SecretKey,
    auth: [u8; 16],
    endpoint: String,
}

impl Subscriber {
    fn new(endpoint: String) -> Subscriber {
        let secret = SecretKey::random(&mut rand::rngs::OsRng);
        let auth: [u8; 16] = rand::random();
        Subscriber {
            secret,
            auth,
            endpoint,
        }
    }

    fn public(&self) -> Vec<u8> {
        self.secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    fn body(&self) -> Json {
        json!({
            "endpoint": self.endpoint.clone(),
            "expirationTime": null,
            "keys": {"p256dh": B64.encode(self.public()), "auth": B64.encode(self.auth)}
        })
    }

    fn subscribe(&self, server: &Server, who: &Member) {
        let resp = server.post("/v1/push/subscriptions", who.auth(), self.body());
        resp.expect(201);
        assert_eq!(resp.str("endpoint"), self.endpoint);
    }

    /// Decrypts an `aes128gcm` message as a browser does (RFC 8291 and RFC 8188).
    fn decrypt(&self, body: &[u8]) -> Vec<u8> {
        assert!(body.len() > 21, "message too short");
        let salt = &body[..16];
        let record_size = u32::from_be_bytes(body[16..20].try_into().unwrap());
        assert!(record_size >= 18, "record size {record_size}");
        let id_len = body[20] as usize;
        assert_eq!(id_len, 65, "the key id is the sender's public key");
        let as_public = &body[21..21 + id_len];
        let ua_public = self.public();
        let shared = p256::ecdh::diffie_hellman(
            self.secret.to_nonzero_scalar(),
            PublicKey::from_sec1_bytes(as_public).unwrap().as_affine(),
        );
        let mut key_info = b"WebPush: info\0".to_vec();
        key_info.extend_from_slice(&ua_public);
        key_info.extend_from_slice(as_public);
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes())
            .expand(&key_info, &mut ikm)
            .unwrap();
        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .unwrap();
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .unwrap();
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(Nonce::from_slice(&nonce), &body[21 + id_len..])
            .expect("the message decrypts with the subscriber's key");
        while plain.last() == Some(&0) {
            plain.pop();
        }
        assert_eq!(plain.pop(), Some(2), "the last record's delimiter");
        plain
    }
}

/// Checks the VAPID `Authorization` of a push request: the key is the server's, the ES256
/// signature verifies, `aud` is the endpoint's origin, `exp` is ahead (within 24 h).
fn check_vapid(req: &Received, server_key: &str, origin: &str) {
    let auth = req
        .header("authorization")
        .expect("an Authorization header");
    let rest = auth.strip_prefix("vapid ").expect("vapid scheme");
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let (name, value) = part.trim().split_once('=').unwrap();
        match name {
            "t" => t = Some(value),
            "k" => k = Some(value),
            other => panic!("unexpected parameter {other}"),
        }
    }
    let (t, k) = (t.expect("t="), k.expect("k="));
    assert_eq!(k, server_key, "k= is the server's VAPID key");
    let parts: Vec<&str> = t.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT: {t}");
    let mut header = B64.decode(parts[0]).unwrap();
    let header = simd_json::to_owned_value(&mut header).unwrap();
    assert_eq!(header.get("alg").and_then(|v| v.as_str()), Some("ES256"));
    let mut claims = B64.decode(parts[1]).unwrap();
    let claims = simd_json::to_owned_value(&mut claims).unwrap();
    assert_eq!(claims.get("aud").and_then(|v| v.as_str()), Some(origin));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = claims.get("exp").and_then(|v| v.as_u64()).expect("exp");
    assert!(
        exp > now && exp <= now + 24 * 3600,
        "exp {exp} vs now {now}"
    );
    let sub = claims.get("sub").and_then(|v| v.as_str()).expect("sub");
    assert!(sub.starts_with("mailto:") || sub.starts_with("https:"));
    let key = VerifyingKey::from_sec1_bytes(&B64.decode(k).unwrap()).unwrap();
    let sig = Signature::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
        .expect("the JWT signature verifies with the server's public key");
}

fn vapid_key(server: &Server) -> String {
    let resp = server.get("/v1/push/vapid_public_key", None);
    resp.expect(200);
    let key = resp.str("public_key").to_string();
    let point = B64.decode(&key).unwrap();
    assert_eq!(point.len(), 65);
    PublicKey::from_sec1_bytes(&point).expect("a P-256 point");
    key
}

/// The decrypted payload of a push request, parsed.
fn payload(sub: &Subscriber, req: &Received) -> Json {
    assert_eq!(req.header("content-encoding"), Some("aes128gcm"));
    let ttl: u64 = req.header("ttl").expect("TTL").parse().unwrap();
    assert!(ttl > 0);
    let mut plain = sub.decrypt(&req.body);
    simd_json::to_owned_value(&mut plain).unwrap()
}

fn notifications(server: &Server, who: &Member) -> Vec<Json> {
    let resp = server.get("/v1/notifications?limit=100", who.auth());
    resp.expect(200);
    resp.at("items").as_array().unwrap().clone()
}

fn like(server: &Server, who: &Member, post: u64) {
    server
        .post(&format!("/v1/posts/{post}/like"), who.auth(), json!({}))
        .expect(200);
}

fn subscriptions(server: &Server, who: &Member) -> Vec<String> {
    let resp = server.get("/v1/push/subscriptions", who.auth());
    resp.expect(200);
    resp.at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.get("endpoint").unwrap().as_str().unwrap().to_string())
        .collect()
}

/// A counter of `nova_push_messages_total` from `/metrics`.
fn push_metric(server: &Server, outcome: &str) -> u64 {
    let resp = server.get("/metrics", None);
    resp.expect(200);
    let prefix = format!("nova_push_messages_total{{outcome=\"{outcome}\"}} ");
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn start_server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--push-allow-insecure-loopback",
        "true",
        "--push-timeout-ms",
        "400",
        "--push-backoff-ms",
        "100",
        "--push-retries-max",
        "3",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn notifications_arrive_signed_and_encrypted_across_shards() {
    let server = start_server(&[]);
    let key = vapid_key(&server);
    let service = PushService::start(&[]);
    for (actor_shard, recipient_shard) in PAIRS {
        let case = format!("actor on {actor_shard}, recipient on {recipient_shard}");
        let actor = server.member_on_shard(actor_shard);
        let recipient = server.member_on_shard(recipient_shard);
        let sub = Subscriber::new(service.endpoint(&recipient.user.username));
        sub.subscribe(&server, &recipient);
        let before = service.count();

        server.follow(actor.auth(), recipient.id());
        let p = server.new_post(&recipient, "push me");
        like(&server, &actor, p);
        server
            .delete(&format!("/v1/posts/{p}/like"), actor.auth())
            .expect(200);
        like(&server, &actor, p);

        let got = service.wait_for(before + 2);
        let mine: Vec<&Received> = got[before..]
            .iter()
            .filter(|r| r.path.ends_with(&recipient.user.username))
            .collect();
        assert_eq!(mine.len(), 2, "{case}: one push per notification: {mine:?}");
        let listed = notifications(&server, &recipient);
        let mut kinds = Vec::new();
        for req in &mine {
            check_vapid(req, &key, &service.origin());
            let sent = payload(&sub, req);
            let id = sent.get("id").and_then(|v| v.as_str()).unwrap();
            let same = listed
                .iter()
                .find(|n| n.get("id").and_then(|v| v.as_str()) == Some(id))
                .unwrap_or_else(|| panic!("{case}: pushed {sent:?} is not listed: {listed:?}"));
            assert_eq!(
                &sent, same,
                "{case}: the payload is the notification's JSON"
            );
            assert_eq!(
                at(&sent, "actor.username").and_then(|v| v.as_str()),
                Some(actor.name())
            );
            kinds.push(sent.get("type").unwrap().as_str().unwrap().to_string());
        }
        kinds.sort();
        assert_eq!(kinds, vec!["follow", "like"], "{case}");
        thread::sleep(Duration::from_millis(300));
        assert_eq!(service.count(), before + 2, "{case}: nothing sent twice");
    }
}

#[test]
fn subscriptions_are_validated_limited_and_private() {
    let server = start_server(&["--push-subscriptions-per-user-max", "2"]);
    let alice = server.member_on_shard(0);
    let bob = server.member_on_shard(1);
    let a1 = Subscriber::new("https://push.example.net/a1".to_string());
    let a2 = Subscriber::new("http://127.0.0.1:9/a2".to_string());
    let a3 = Subscriber::new("https://push.example.net/a3".to_string());
    a1.subscribe(&server, &alice);
    a1.subscribe(&server, &alice);
    a2.subscribe(&server, &alice);
    server
        .post("/v1/push/subscriptions", alice.auth(), a3.body())
        .expect_error(422, "too_many_subscriptions");
    let mut mine = subscriptions(&server, &alice);
    mine.sort();
    assert_eq!(mine, vec![a2.endpoint.clone(), a1.endpoint.clone()]);
    assert!(
        subscriptions(&server, &bob).is_empty(),
        "nobody sees another's"
    );
    let path = format!(
        "/v1/push/subscriptions?endpoint={}",
        percent_encode(&a1.endpoint)
    );
    server
        .delete(&path, bob.auth())
        .expect_error(404, "not_found");
    server.delete(&path, alice.auth()).expect(204);
    server
        .delete(&path, alice.auth())
        .expect_error(404, "not_found");
    assert_eq!(subscriptions(&server, &alice), vec![a2.endpoint.clone()]);
    a3.subscribe(&server, &alice);

    let good = a1.body();
    let with = |f: &dyn Fn(&mut Json)| {
        let mut b = good.clone();
        f(&mut b);
        b
    };
    for (body, code) in [
        (
            with(&|b| b["endpoint"] = "http://push.example.net/x".into()),
            "invalid_endpoint",
        ),
        (
            with(&|b| b["endpoint"] = "ftp://x/y".into()),
            "invalid_endpoint",
        ),
        (
            with(&|b| b["endpoint"] = format!("https://h/{}", "x".repeat(3000)).into()),
            "invalid_endpoint",
        ),
        (
            with(&|b| b["keys"]["p256dh"] = "AAAA".into()),
            "invalid_p256dh",
        ),
        (with(&|b| b["keys"]["auth"] = "AAAA".into()), "invalid_auth"),
        (with(&|b| b["keys"]["auth"] = "!!!".into()), "invalid_auth"),
    ] {
        server
            .post("/v1/push/subscriptions", bob.auth(), body)
            .expect_error(422, code);
    }
    server
        .post(
            "/v1/push/subscriptions",
            bob.auth(),
            json!({"endpoint": "https://h/x"}),
        )
        .expect_error(422, "invalid_body");
    server
        .post("/v1/push/subscriptions", None, good.clone())
        .expect_error(401, "unauthorized");
    server
        .get("/v1/push/subscriptions", None)
        .expect_error(401, "unauthorized");

    // Without the test-only flag, plain http is refused even on loopback.
    let strict = Server::start(&[]);
    let carol = strict.member_on_shard(0);
    strict
        .post("/v1/push/subscriptions", carol.auth(), a2.body())
        .expect_error(422, "invalid_endpoint");
    // The key pair is made once and kept in the data dir.
    let key = vapid_key(&strict);
    let mut strict = strict;
    strict.restart();
    assert_eq!(vapid_key(&strict), key);
    assert!(strict
        .launch()
        .data_dir()
        .join("secrets/vapid.key")
        .exists());
}

#[test]
fn failures_are_retried_dropped_or_cut_off_and_never_slow_requests() {
    let server = start_server(&[
        "--push-breaker-failures",
        "3",
        "--push-breaker-cooldown-ms",
        "3000",
        "--push-threads",
        "2",
    ]);
    let actor = server.member_on_shard(0);

    // 500 then success: retried, delivered once.
    let flaky = PushService::start(&[Answer::Status(500)]);
    let r1 = server.member_on_shard(1);
    let s1 = Subscriber::new(flaky.endpoint("r1"));
    s1.subscribe(&server, &r1);
    like(&server, &actor, server.new_post(&r1, "p"));
    let got = flaky.wait_for(2);
    assert_eq!(got.len(), 2, "one failed try, one retry: {got:?}");
    assert_eq!(
        payload(&s1, &got[0]),
        payload(&s1, &got[1]),
        "the same message"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(flaky.count(), 2, "delivered: no more tries");
    assert!(push_metric(&server, "retried") >= 1 && push_metric(&server, "sent") >= 1);
    assert_eq!(subscriptions(&server, &r1), vec![s1.endpoint.clone()]);

    // 410: the subscription is deleted, on the recipient's shard, and not tried again.
    let gone = PushService::start(&[Answer::Status(410)]);
    let r2 = server.member_on_shard(0);
    let s2 = Subscriber::new(gone.endpoint("r2"));
    s2.subscribe(&server, &r2);
    like(&server, &actor, server.new_post(&r2, "p"));
    gone.wait_for(1);
    let deadline = Instant::now() + SETTLE;
    while !subscriptions(&server, &r2).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        subscriptions(&server, &r2).is_empty(),
        "410 deletes the subscription"
    );
    assert_eq!(push_metric(&server, "removed"), 1);
    like(&server, &actor, server.new_post(&r2, "q"));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(gone.count(), 1, "no push to a deleted subscription");

    // Slow (beyond the 400 ms timeout): every try times out and is retried, up to the limit;
    // meanwhile requests are answered at once (the likes below do not wait for push).
    let slow = PushService::start(&[Answer::Slow(Duration::from_secs(3)); 10]);
    let r3 = server.member_on_shard(1);
    let s3 = Subscriber::new(slow.endpoint("r3"));
    s3.subscribe(&server, &r3);
    let p3 = server.new_post(&r3, "p");
    like(&server, &actor, p3);
    let got = slow.wait_for(2);
    assert!(got.len() >= 2, "a timed-out try is retried: {got:?}");

    // Endpoint down (connection refused): retried, kept (not a 404/410), nothing blocks.
    let down_port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r4 = server.member_on_shard(0);
    let s4 = Subscriber::new(format!("http://127.0.0.1:{down_port}/r4"));
    s4.subscribe(&server, &r4);
    let p4 = server.new_post(&r4, "p");
    for _ in 0..3 {
        let other = server.member_on_shard(1);
        like(&server, &other, p4);
    }
    assert_eq!(subscriptions(&server, &r4), vec![s4.endpoint.clone()]);
    assert_eq!(notifications(&server, &r4).len(), 3);

    // Breaker: a host that fails every time gets `push_breaker_failures` consecutive tries
    // (plus what the other delivery thread had already started), then none during the
    // cool-down, although many messages wait for it.
    let broken = PushService::start(&[Answer::Status(503); 1000]);
    let r5 = server.member_on_shard(1);
    let s5 = Subscriber::new(broken.endpoint("r5"));
    s5.subscribe(&server, &r5);
    let posts: Vec<u64> = (0..10)
        .map(|i| server.new_post(&r5, &format!("p{i}")))
        .collect();
    for p in &posts {
        like(&server, &actor, *p);
    }
    broken.wait_for(3);
    thread::sleep(Duration::from_millis(1500));
    let during = broken.count();
    assert!(
        // Without a breaker: 10 messages x 4 tries. A retry already due may slip in before
        // the third failure is counted, hence a little slack.
        (3..=6).contains(&during),
        "the breaker opened after 3 failures: {during} requests for 10 messages"
    );
    assert!(push_metric(&server, "breaker_refused") > 0);
    // After the cool-down one trial is let through; it fails and the breaker opens again.
    thread::sleep(Duration::from_millis(3000));
    let after = broken.count();
    assert!(
        after > during && after <= during + 2,
        "half-open lets one trial through: {during} then {after}"
    );
    // Ten more messages while open change nothing for the push service, and the requests
    // that cause them are answered.
    for p in &posts {
        let other = server.member_on_shard(0);
        like(&server, &other, *p);
    }
    thread::sleep(Duration::from_millis(300));
    assert!(
        broken.count() <= after + 1,
        "no requests to an open breaker"
    );
    // Requests stayed fast throughout: the slow service still holds its connections.
    let t = Instant::now();
    like(&server, &r3, p4);
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "a like does not wait for push"
    );
}

/// A subscription goes with the session that made it: after a logout (or a password reset,
/// which revokes every session) nothing more is pushed to it. A retry waiting for a
/// subscription deleted since is not sent.
#[test]
fn a_subscription_goes_with_its_session_and_its_retries_with_it() {
    let server = Server::start(&[
        "--push-allow-insecure-loopback",
        "true",
        "--push-timeout-ms",
        "400",
        "--push-backoff-ms",
        "1000",
        "--push-retries-max",
        "3",
    ]);
    let service = PushService::start(&[]);
    for (actor_shard, recipient_shard) in PAIRS {
        let case = format!("actor on {actor_shard}, recipient on {recipient_shard}");
        let actor = server.member_on_shard(actor_shard);
        let recipient = server.member_on_shard(recipient_shard);
        // Another session of the same account, which stays.
        let other = server.login(&recipient.user.username, &recipient.user.password);
        let sub = Subscriber::new(service.endpoint(&recipient.user.username));
        sub.subscribe(&server, &recipient);
        server
            .delete("/v1/sessions/current", recipient.auth())
            .expect(204);
        let resp = server.get("/v1/push/subscriptions", Some(&other.access));
        resp.expect(200);
        assert_eq!(resp.at("items"), &json!([]), "{case}");
        let before = service.count();
        let resp = server.post(
            "/v1/posts",
            Some(&other.access),
            json!({"text": "after the logout"}),
        );
        resp.expect(201);
        like(&server, &actor, parse_id(resp.at("post.id")));
        thread::sleep(Duration::from_millis(500));
        assert_eq!(service.count(), before, "{case}: pushed after the logout");
    }

    let failing = PushService::start(&[Answer::Status(500); 10]);
    let actor = server.member_on_shard(0);
    let recipient = server.member_on_shard(1);
    let sub = Subscriber::new(failing.endpoint("r"));
    sub.subscribe(&server, &recipient);
    like(&server, &actor, server.new_post(&recipient, "p"));
    failing.wait_for(1);
    let endpoint = sub.endpoint.replace(':', "%3A").replace('/', "%2F");
    server
        .delete(
            &format!("/v1/push/subscriptions?endpoint={endpoint}"),
            recipient.auth(),
        )
        .expect(204);
    // The first retry was due 0.5-1.5 s after the failure (backoff 1 s, jitter).
    thread::sleep(Duration::from_millis(2500));
    assert_eq!(failing.count(), 1, "a retry went to a deleted subscription");
}

/// Subscriptions made while their session logs out: none outlives the session (a subscribe
/// that loses the race is 401 `session_revoked`, one that wins goes with the logout).
#[test]
fn a_subscription_racing_its_logout_does_not_outlive_it() {
    let server = start_server(&[]);
    let service = PushService::start(&[]);
    let member = server.member_on_shard(1);
    let keeper = server.login(&member.user.username, &member.user.password);
    for round in 0..20 {
        let racing = server.login(&member.user.username, &member.user.password);
        let subs: Vec<Subscriber> = (0..8)
            .map(|i| Subscriber::new(service.endpoint(&format!("r{round}-{i}"))))
            .collect();
        std::thread::scope(|scope| {
            for sub in &subs {
                let token = racing.access.clone();
                let server = &server;
                scope.spawn(move || {
                    let resp = server.post("/v1/push/subscriptions", Some(&token), sub.body());
                    assert!(
                        resp.status == 201 || resp.status == 401,
                        "{}",
                        resp.what_happened()
                    );
                });
            }
            scope.spawn(|| {
                server
                    .delete("/v1/sessions/current", Some(&racing.access))
                    .expect(204);
            });
        });
        let resp = server.get("/v1/push/subscriptions", Some(&keeper.access));
        resp.expect(200);
        assert_eq!(resp.at("items"), &json!([]), "round {round}");
    }
}
