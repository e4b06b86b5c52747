//! Proves the engine around the API against the real `nova` process: health, Prometheus
//! metrics of both shards, TLS, limits (slow clients, header size, connections, request time),
//! request ids, graceful shutdown, refusal of a wrong shard count or a damaged database, and
//! configuration from a TOML file and environment variables.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

// ---------------------------------------------------------------------------------------------
// Health and metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn health_is_ok_on_every_shard() {
    let server = Server::start(&[]);
    assert_eq!(server.shards(), 2);
    server.on_each_shard(&Req::get("/health"), |resp| {
        resp.expect(200);
        assert_eq!(resp.json(), &json!({"status": "ok"}));
        let ct = resp.header("content-type").unwrap_or("");
        assert!(ct.starts_with("application/json"), "Content-Type {ct:?}");
    });
}

/// With `--pin-shards` each shard's threads run on one CPU of their own, and serve.
#[test]
fn pinned_shards_keep_to_one_cpu_each() {
    let server = Server::start(&["--pin-shards", "true"]);
    let shards = shard_threads_cpus(server.pid());
    assert!(shards.len() >= 2, "{shards:?}");
    for (name, cpus) in shards {
        assert!(cpus.parse::<usize>().is_ok(), "{name} may run on {cpus}");
    }
    server.on_each_shard(&Req::get("/health"), |resp| {
        resp.expect(200);
    });
}

/// By default the kernel places the shards: they serve, and reach each other (a follow and
/// a post's fan-out between users on different shards).
#[test]
fn unpinned_shards_serve_and_reach_each_other() {
    let server = Server::start(&[]);
    server.on_each_shard(&Req::get("/health"), |resp| {
        resp.expect(200);
    });
    let process = cpus_allowed(server.pid(), None);
    let shards = shard_threads_cpus(server.pid());
    // Each shard's executor and its helper thread for blocking syscalls.
    for k in 0..2 {
        let prefix = format!("nova-shard-{k}-");
        assert!(
            shards.iter().any(|(n, _)| n.starts_with(&prefix)),
            "{shards:?}"
        );
    }
    for (name, cpus) in &shards {
        assert_eq!(cpus, &process, "{name} is pinned");
    }
    let users = server.users_on_each_shard();
    let (reader, author) = (&users[0], &users[1]);
    let reader_token = server.login(&reader.username, &reader.password).access;
    let author_token = server.login(&author.username, &author.password).access;
    server.follow(Some(&reader_token), author.id);
    let posted = server.post(
        "/v1/posts",
        Some(&author_token),
        json!({"text": "from the other shard"}),
    );
    posted.expect(201);
    let id: u64 = posted.str("post.id").parse().unwrap();
    let home = server.walk_posts("/v1/timelines/home", &reader_token, 50);
    assert_eq!(home, vec![id]);
}

/// `Cpus_allowed_list` of a process (or one of its threads) from `/proc`.
fn cpus_allowed(pid: i32, thread: Option<&str>) -> String {
    let path = match thread {
        Some(tid) => format!("/proc/{pid}/task/{tid}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let status = std::fs::read_to_string(&path).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

/// (thread name, CPUs it may run on) of each shard executor thread.
fn shard_threads_cpus(pid: i32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = entry.unwrap().file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if name.starts_with("nova-shard-") {
            out.push((name, cpus_allowed(pid, Some(&tid))));
        }
    }
    out.sort();
    out
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text exposition format (label values may hold `{`, `}` and escapes).
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = line[..name_end].to_string();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let mut key = String::new();
            let end;
            loop {
                let (i, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated {line:?}"));
                match c {
                    '}' => {
                        end = i + 1;
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line:?}");
                        let mut value = String::new();
                        loop {
                            let (_, c) = chars.next().unwrap_or_else(|| panic!("bad {line:?}"));
                            match c {
                                '\\' => match chars.next().map(|(_, c)| c) {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("bad escape in {line:?}"),
                                },
                                '"' => break,
                                c => value.push(c),
                            }
                        }
                        labels.insert(std::mem::take(&mut key), value);
                    }
                    c => key.push(c),
                }
            }
            rest = &after[end..];
        }
        let value_text = rest.split_whitespace().next().unwrap_or("");
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

fn metric_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

#[test]
fn metrics_cover_both_shards() {
    let server = Server::start(&[]);
    // Writes on both shards, and traffic served by both shards.
    let users = server.users_on_each_shard();
    let mut health_calls = 0;
    server.on_each_shard(&Req::get("/health"), |resp| {
        resp.expect(200);
        health_calls += 1;
    });
    let login = server.login(&users[0].username, &users[0].password);
    server.check(
        "DELETE",
        "/v1/sessions/987654321",
        Some(&login.access),
        None,
        404,
        None,
    );
    server.check("GET", "/v1/nope", None, None, 404, None);

    let resp = server.get("/metrics", None);
    resp.expect(200);
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "metrics Content-Type {ct:?}");
    let text = resp.text();
    let samples = parse_prometheus(&text);
    let types = metric_types(&text);
    let series =
        |name: &str| -> Vec<&Sample> { samples.iter().filter(|s| s.name == name).collect() };
    let per_shard = |name: &str, shard: &str| -> Vec<&Sample> {
        series(name)
            .into_iter()
            .filter(|s| s.labels.get("shard").map(String::as_str) == Some(shard))
            .collect()
    };

    for (family, kind) in [
        ("nova_http_requests_total", "counter"),
        ("nova_http_request_duration_seconds", "histogram"),
        ("nova_commit_batches_total", "counter"),
        ("nova_commit_ops_total", "counter"),
        ("nova_commit_fsync_seconds", "histogram"),
        ("nova_open_connections", "gauge"),
    ] {
        assert_eq!(
            types.get(family).map(String::as_str),
            Some(kind),
            "# TYPE of {family}"
        );
        let sample_name = if kind == "histogram" {
            format!("{family}_bucket")
        } else {
            family.into()
        };
        for shard in ["0", "1"] {
            assert!(
                !per_shard(&sample_name, shard).is_empty(),
                "no {sample_name}{{shard=\"{shard}\"}} in /metrics:\n{text}"
            );
        }
        if kind == "histogram" {
            for suffix in ["_sum", "_count"] {
                assert!(
                    !series(&format!("{family}{suffix}")).is_empty(),
                    "no {family}{suffix}"
                );
            }
            for s in series(&sample_name) {
                assert!(s.labels.contains_key("le"), "bucket without le: {s:?}");
            }
        }
    }
    for s in series("nova_http_requests_total") {
        for label in ["shard", "route", "status"] {
            assert!(
                s.labels.contains_key(label),
                "nova_http_requests_total without {label}: {s:?}"
            );
        }
    }
    for s in series("nova_http_request_duration_seconds_bucket") {
        assert!(
            s.labels.contains_key("route"),
            "duration bucket without route: {s:?}"
        );
    }

    // The counts add up over the shards.
    let sum = |name: &str, want: &[(&str, &str)]| -> f64 {
        series(name)
            .iter()
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    };
    let health = sum(
        "nova_http_requests_total",
        &[("route", "/health"), ("status", "200")],
    );
    assert!(
        health >= f64::from(health_calls),
        "{health} /health 200s counted, {health_calls} made"
    );
    let created = sum(
        "nova_http_requests_total",
        &[("route", "/v1/accounts"), ("status", "201")],
    );
    assert!(
        created >= users.len() as f64,
        "{created} registrations counted"
    );
    for shard in ["0", "1"] {
        assert!(
            sum("nova_commit_batches_total", &[("shard", shard)]) >= 1.0,
            "shard {shard}"
        );
        assert!(
            sum("nova_commit_ops_total", &[("shard", shard)]) >= 1.0,
            "shard {shard}"
        );
    }
    assert!(
        sum("nova_open_connections", &[]) >= 1.0,
        "the scrape's own connection is open"
    );
    // Routes are templates, not raw paths: ids do not become label values.
    for s in series("nova_http_requests_total") {
        let route = &s.labels["route"];
        assert!(
            !route.contains("987654321"),
            "raw path as a route label: {s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_serves_https_with_the_configured_certificate() {
    let launch = Launch::new();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = launch.dir().join("cert.pem");
    let key = launch.dir().join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let server = launch
        .trust(ck.cert.der().to_vec())
        .args(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .start();
    assert_eq!(server.scheme(), "https");
    let line = server
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("nova listening on "));
    let line = line.unwrap();
    assert!(
        line.starts_with("nova listening on https://127.0.0.1:"),
        "{line}"
    );
    assert!(line.ends_with("(2 shards)"), "{line}");

    server.on_each_shard(&Req::get("/health"), |resp| {
        resp.expect(200);
    });
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    let me = server.get("/v1/me", Some(&login.access));
    me.expect(200);
    assert_eq!(parse_id(me.at("user.id")), user.id);

    // Plain HTTP on the TLS port is not served.
    let plain = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
        .get(&format!("http://{}/health", server.addr()))
        .call();
    match plain {
        Ok(resp) => panic!("plain HTTP answered {} on the TLS port", resp.status()),
        Err(ureq::Error::Status(code, _)) => assert_eq!(code, 400, "plain HTTP on TLS port"),
        Err(ureq::Error::Transport(_)) => {}
    }
    // A client that does not trust the certificate cannot connect.
    let untrusted = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
        .get(&server.url("/health"))
        .call();
    assert!(
        matches!(untrusted, Err(ureq::Error::Transport(_))),
        "an untrusting client must fail the handshake"
    );
    // Still serving after the failed handshakes.
    server.check("GET", "/health", None, None, 200, None);
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// Whether the server has closed `stream` (EOF or reset); waits at most the read timeout.
/// Bytes the server sends first (e.g. a 408) are collected into `got`.
fn closed_by_server(stream: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            got.extend_from_slice(&buf[..n]);
            false
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

#[test]
fn slow_clients_are_cut_off_while_others_are_served() {
    let server = Server::start(&["--header-read-timeout-ms", "1000"]);
    let mut stream = connect(server.addr());
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: {}\r\n\r\n",
        "s".repeat(100)
    );
    let started = Instant::now();
    let mut got = Vec::new();
    let mut closed_after = None;
    for (i, byte) in request.bytes().enumerate() {
        if write_all(&mut stream, &[byte]).is_err() || closed_by_server(&mut stream, &mut got) {
            closed_after = Some(started.elapsed());
            break;
        }
        if i == 2 {
            // Another client is served meanwhile, on whichever shard.
            for _ in 0..4 {
                server.check("GET", "/health", None, None, 200, None);
            }
        }
    }
    let closed_after = closed_after.unwrap_or_else(|| {
        panic!(
            "a client sending one header byte per 300 ms was never cut off ({} bytes)",
            request.len()
        )
    });
    assert!(
        closed_after < Duration::from_secs(10),
        "cut off only after {closed_after:?}"
    );
    let got = String::from_utf8_lossy(&got);
    assert!(
        !got.contains(" 200 "),
        "the incomplete request was answered 200: {got}"
    );
    server.check("GET", "/health", None, None, 200, None);
}

#[test]
fn oversized_headers_are_refused() {
    let server = Server::start(&["--header-bytes-max", "16384"]);
    server
        .req(&Req::get("/health").header("X-Pad", &"a".repeat(2000)))
        .expect(200);
    let one_big = Req::get("/health").header("X-Pad", &"a".repeat(65536));
    let mut many = Req::get("/health");
    for i in 0..400 {
        many = many.header(&format!("X-Pad-{i}"), &"b".repeat(100));
    }
    for req in [one_big, many] {
        // Closed without an answer (an `Err`) is allowed too.
        if let Ok(resp) = server.send(&req) {
            assert_eq!(
                resp.status,
                431,
                "oversized header: {}",
                resp.what_happened()
            );
        }
    }
    server.check("GET", "/health", None, None, 200, None);
}

#[test]
fn connections_over_the_per_shard_limit_are_turned_away() {
    let server = Server::start(&[
        "--connections-per-shard-max",
        "4",
        "--header-read-timeout-ms",
        "60000",
    ]);
    // 40 idle connections over 2 shards: each shard gets far more than 4 (SO_REUSEPORT hashes
    // the client port, so the split is random but never that lopsided).
    let idle: Vec<TcpStream> = (0..40).map(|_| connect(server.addr())).collect();
    thread::sleep(Duration::from_millis(500));
    for _ in 0..4 {
        // Refused or closed (an `Err`) is allowed too.
        if let Ok(resp) = server.send(&Req::get("/health").timeout(Duration::from_secs(5))) {
            assert_eq!(
                resp.status,
                503,
                "over the connection limit: {}",
                resp.what_happened()
            );
            resp.expect_error(503, "overloaded");
            let retry = resp
                .header("retry-after")
                .expect("503 overloaded has Retry-After");
            assert!(retry.trim().parse::<u64>().is_ok(), "Retry-After {retry:?}");
        }
    }
    drop(idle);
    let recovered = wait_until(Duration::from_secs(15), || {
        server
            .send(&Req::get("/health").timeout(Duration::from_secs(2)))
            .is_ok_and(|r| r.status == 200)
    });
    assert!(
        recovered,
        "the server did not serve again after the idle connections closed"
    );
}

#[test]
fn slow_requests_time_out_with_503() {
    // A registration hashes the password with 128 MiB x 10 passes: far over 50 ms.
    let server = Server::start(&[
        "--request-timeout-ms",
        "50",
        "--argon2-memory-kib",
        "131072",
        "--argon2-iterations",
        "10",
    ]);
    let name = unique_name("slow");
    let body = json!({"username": name.clone(), "email": format!("{name}@example.com"),
                      "password": "a fine password"});
    server.check(
        "POST",
        "/v1/accounts",
        None,
        Some(body),
        503,
        Some("timeout"),
    );
    server.check("GET", "/health", None, None, 200, None);
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

#[test]
fn request_ids_are_kept_when_valid_and_generated_otherwise() {
    let server = Server::start(&[]);
    let generated: Vec<String> = (0..5)
        .map(|_| {
            let resp = server.get("/health", None);
            resp.expect(200);
            resp.request_id().to_string()
        })
        .collect();
    let mut unique = generated.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        generated.len(),
        "generated ids repeat: {generated:?}"
    );

    let longest = "a".repeat(64);
    for valid in ["x", "ABC-def_123.456", longest.as_str()] {
        let resp = server.req(&Req::get("/health").header("X-Request-Id", valid));
        resp.expect(200);
        assert_eq!(resp.request_id(), valid);
    }
    let too_long = "a".repeat(65);
    for invalid in [
        too_long.as_str(),
        "has space",
        "semi;colon",
        "slash/",
        "q\"uote",
        "é",
    ] {
        // ureq refuses non-ASCII header values, so send those raw.
        let id = if invalid.is_ascii() {
            let resp = server.req(&Req::get("/v1/nope").header("X-Request-Id", invalid));
            resp.expect_error(404, "not_found");
            resp.request_id().to_string()
        } else {
            let mut stream = connect(server.addr());
            let mut head =
                b"GET /v1/nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX-Request-Id: ".to_vec();
            head.extend_from_slice(invalid.as_bytes());
            head.extend_from_slice(b"\r\n\r\n");
            write_all(&mut stream, &head).unwrap();
            let resp = read_raw_response(&mut stream).unwrap();
            assert_eq!(resp.status, 404);
            resp.header("x-request-id")
                .expect("X-Request-Id")
                .to_string()
        };
        assert_ne!(id, invalid, "an invalid X-Request-Id was echoed");
        assert!(valid_request_id(&id), "generated X-Request-Id {id:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Shutdown and start-up
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_0() {
    let mut server = Server::start(&["--shutdown-grace-ms", "10000"]);
    let user = server.register_new();
    let addr = server.addr();

    // An idle keep-alive connection must not hold up the exit.
    let mut idle = connect(addr);
    write_all(&mut idle, b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_raw_response(&mut idle).unwrap().status, 200);

    // A login in flight: head and half the body sent.
    let body = json!({"login": user.username.clone(), "password": user.password.clone()}).encode();
    let (first, second) = body.as_bytes().split_at(body.len() / 2);
    let mut inflight = connect(addr);
    let head = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write_all(&mut inflight, head.as_bytes()).unwrap();
    write_all(&mut inflight, first).unwrap();
    thread::sleep(Duration::from_millis(500));

    server.sigterm();
    // New connections stop being served.
    let refused = wait_until(Duration::from_secs(5), || {
        match server.send(&Req::get("/health").timeout(Duration::from_secs(1))) {
            Ok(resp) => resp.status != 200,
            Err(_) => true,
        }
    });
    assert!(
        refused,
        "new connections were still served 5 s after SIGTERM"
    );
    assert!(server.is_running(), "exited with a request in flight");

    write_all(&mut inflight, second).unwrap();
    let resp = read_raw_response(&mut inflight).expect("the in-flight login is answered");
    let mut body = resp.body.clone();
    assert_eq!(
        resp.status,
        200,
        "in-flight login: {}",
        String::from_utf8_lossy(&body)
    );
    let json: Json = simd_json::serde::from_slice(&mut body).expect("JSON login answer");
    assert!(at(&json, "access_token").and_then(|t| t.as_str()).is_some());

    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exit within 5 s of the answer");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr:\n{}",
        server.stderr_text()
    );
    drop(idle);

    // What was acknowledged before the signal is still there.
    server.restart();
    let login = server.login(&user.username, &user.password);
    assert_eq!(login.user_id, user.id);
}

#[test]
fn sigint_exits_0_and_keeps_data() {
    let mut server = Server::start(&[]);
    let users = server.users_on_each_shard();
    server.signal(libc::SIGINT);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit after SIGINT");
    assert_eq!(status.code(), Some(0));
    server.restart();
    for user in users {
        assert_eq!(
            server.login(&user.username, &user.password).user_id,
            user.id
        );
    }
}

/// Finds the numbers in a line (so `2` does not match `2026`).
fn numbers_in(line: &str) -> Vec<&str> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn a_different_shard_count_is_refused() {
    let mut server = Server::start(&[]);
    let user = server.register_new();
    server.stop();
    for other in ["3", "1"] {
        let exited = server
            .relaunch()
            .args(&["--shards", other])
            .run_expecting_exit();
        assert_eq!(
            exited.status.code(),
            Some(1),
            "--shards {other} on a 2-shard dir: {exited:?}"
        );
        assert!(!exited.stdout.contains("nova listening"), "{exited:?}");
        let names_both = exited.stderr.lines().any(|line| {
            let numbers = numbers_in(line);
            numbers.contains(&"2") && numbers.contains(&other)
        });
        assert!(
            names_both,
            "no stderr line names both 2 and {other}:\n{}",
            exited.stderr
        );
    }
    // The directory is unharmed.
    server.restart();
    assert_eq!(
        server.login(&user.username, &user.password).user_id,
        user.id
    );
}

/// A second server told to listen on a port a first one listens on refuses to start, rather
/// than share it (SO_REUSEPORT would let the kernel split the connections between them).
#[test]
fn a_port_another_server_listens_on_is_refused() {
    let first = Server::start(&[]);
    let user = first.register_new();
    let addr = first.addr().to_string();
    let exited = Launch::new()
        .args(&["--listen", &addr])
        .run_expecting_exit();
    assert_eq!(exited.status.code(), Some(1), "{exited:?}");
    assert!(!exited.stdout.contains("nova listening"), "{exited:?}");
    assert!(exited.stderr.contains("cannot bind"), "{}", exited.stderr);
    // Every connection still reaches the first one.
    for _ in 0..8 {
        assert_eq!(first.login(&user.username, &user.password).user_id, user.id);
    }
}

/// After a kill -9, the server starts again on its port at once, though connections it had
/// open linger there (FIN-WAIT-2, up to a minute) while their clients keep them: only a
/// listening socket counts as taken.
#[test]
fn a_killed_server_starts_again_on_its_port_at_once() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Launch::new().args(&["--listen", &addr]).start();
    let user = server.register_new();
    // An idle keep-alive connection, held open by this client across the kill.
    let mut held = TcpStream::connect(server.addr()).unwrap();
    std::io::Write::write_all(&mut held, b"GET /health HTTP/1.1\r\nHost: nova\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    held.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    server.kill9();
    let again = server.relaunch().start();
    assert_eq!(again.addr(), server.addr());
    assert_eq!(again.login(&user.username, &user.password).user_id, user.id);
    drop(held);
}

/// Starts, writes users on both shards, stops cleanly, damages `shard-1.redb` with `damage`
/// and requires start-up to fail naming the file.
fn check_damage_is_refused(what: &str, damage: impl FnOnce(&mut Vec<u8>, &[User])) {
    let mut server = Server::start(&[]);
    let users = server.users_on_each_shard();
    for _ in 0..20 {
        server.register_new();
    }
    server.stop();
    let path = server.launch().data_dir().join("shard-1.redb");
    let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() >= 8192,
        "shard-1.redb is only {} bytes",
        bytes.len()
    );
    damage(&mut bytes, &users);
    std::fs::write(&path, &bytes).unwrap();

    let exited = server.relaunch().run_expecting_exit();
    assert_eq!(exited.status.code(), Some(1), "{what}: {exited:?}");
    assert!(
        !exited.stdout.contains("nova listening"),
        "{what}: {exited:?}"
    );
    assert!(
        exited.stderr.contains("shard-1.redb"),
        "{what}: stderr does not name the file:\n{}",
        exited.stderr
    );
}

#[test]
fn a_damaged_database_header_stops_start_up() {
    check_damage_is_refused("first 4 KiB overwritten", |bytes, _| {
        for (i, b) in bytes[..4096].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0x5a;
        }
    });
}

#[test]
fn damaged_database_pages_stop_start_up() {
    check_damage_is_refused("data pages overwritten", |bytes, users| {
        // The record of shard 1's user: every copy of its username, then a block in the middle.
        let needle = users[1].username.as_bytes();
        let mut hits = 0;
        let mut i = 0;
        while i + needle.len() <= bytes.len() {
            if &bytes[i..i + needle.len()] == needle {
                for b in &mut bytes[i..i + needle.len()] {
                    *b = !*b;
                }
                hits += 1;
                i += needle.len();
            } else {
                i += 1;
            }
        }
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 4096] {
            *b = !*b;
        }
        eprintln!(
            "damaged {hits} copies of {:?} and 4 KiB at offset {mid}",
            users[1].username
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

fn only_shard_zero_serves(server: &Server) {
    for _ in 0..10 {
        let resp = server.get("/health", None);
        resp.expect(200);
        assert_eq!(resp.shard(), 0);
    }
}

#[test]
fn a_toml_config_file_sets_listen_and_shards() {
    let launch = Launch::new().omit("--listen").omit("--shards");
    let config = launch.dir().join("nova.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nshards = 1\n").unwrap();
    let server = launch.args(&["--config", config.to_str().unwrap()]).start();
    assert_ne!(server.port(), 8080, "listen from the file, not the default");
    assert_eq!(server.shards(), 1, "shards from the file");
    only_shard_zero_serves(&server);
    let user = server.register_new();
    assert_eq!(user.shard(), 0);
}

#[test]
fn environment_variables_configure_the_server() {
    let server = Launch::new()
        .omit("--listen")
        .omit("--shards")
        .omit("--admin-token")
        .env("NOVA_LISTEN", "127.0.0.1:0")
        .env("NOVA_SHARDS", "1")
        .env("NOVA_ADMIN_TOKEN", "env-admin-token")
        .start();
    assert_ne!(server.port(), 8080);
    assert_eq!(server.shards(), 1);
    only_shard_zero_serves(&server);
    let user = server.register_new();
    let path = format!("/v1/admin/emails?to={}", percent_encode(&user.email));
    server.check("GET", &path, Some("env-admin-token"), None, 200, None);
}

#[test]
fn flags_override_environment_which_overrides_the_file() {
    // File says 1, environment says 2: the environment wins.
    let launch = Launch::new().omit("--shards").env("NOVA_SHARDS", "2");
    let config = launch.dir().join("nova.toml");
    std::fs::write(&config, "shards = 1\n").unwrap();
    let server = launch.args(&["--config", config.to_str().unwrap()]).start();
    assert_eq!(server.shards(), 2, "NOVA_SHARDS over the file");
    drop(server);

    // Environment says 1, the flag says 2: the flag wins.
    let server = Launch::new()
        .env("NOVA_SHARDS", "1")
        .args(&["--shards", "2"])
        .start();
    assert_eq!(server.shards(), 2, "--shards over NOVA_SHARDS");
    server.on_each_shard(&Req::get("/health"), |resp| {
        resp.expect(200);
    });
}
