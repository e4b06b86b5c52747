//! Shared harness for the integration tests: starts the real `nova` binary on port 0 in a
//! temporary data directory and talks to it over HTTP(S), one fresh connection per request.
// Not every test file uses every helper.
#![allow(dead_code)]
// A panic is how a test reports failure; these helpers run only inside tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use simd_json::prelude::*;
pub use simd_json::OwnedValue as Json;

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-request timeout of the HTTP client: generous, the tests never measure speed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags every test server gets unless the test passes the same flag itself (the test's value
/// then replaces the default) or omits it with `Launch::omit`. Rate limits are high so that
/// only the tests about rate limiting meet them.
const DEFAULT_FLAGS: &[(&str, &str)] = &[
    ("--listen", "127.0.0.1:0"),
    ("--shards", "2"),
    ("--argon2-memory-kib", "64"),
    ("--argon2-iterations", "1"),
    ("--admin-token", ADMIN_TOKEN),
    ("--registrations-per-ip-per-hour", "100000"),
    ("--login-failures-per-ip-per-minute", "100000"),
    ("--login-failures-per-account-per-minute", "100000"),
    ("--password-resets-per-ip-per-hour", "100000"),
];

// ---------------------------------------------------------------------------------------------
// Starting and stopping the server
// ---------------------------------------------------------------------------------------------

/// How to start a server: extra flags, flags to leave out, environment, TLS trust. The temporary
/// directory lives as long as any `Launch` or `Server` made from it.
#[derive(Clone)]
pub struct Launch {
    tmp: Arc<tempfile::TempDir>,
    args: Vec<String>,
    omit: Vec<String>,
    env: Vec<(String, String)>,
    tls_root_der: Option<Vec<u8>>,
}

impl Default for Launch {
    fn default() -> Self {
        Self::new()
    }
}

impl Launch {
    pub fn new() -> Launch {
        let tmp = tempfile::Builder::new()
            .prefix("nova-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(tmp.path().join("data")).unwrap();
        Launch {
            tmp: Arc::new(tmp),
            args: Vec::new(),
            omit: Vec::new(),
            env: Vec::new(),
            tls_root_der: None,
        }
    }

    /// Adds flags (and their values) after the defaults; a flag given here replaces the default.
    pub fn args(mut self, args: &[&str]) -> Launch {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Leaves a default flag out entirely (to test config files and environment variables).
    pub fn omit(mut self, flag: &str) -> Launch {
        self.omit.push(flag.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Trusts this DER certificate for HTTPS requests to the server.
    pub fn trust(mut self, der: Vec<u8>) -> Launch {
        self.tls_root_der = Some(der);
        self
    }

    /// The temporary directory (holds `data/` and whatever the test writes, e.g. certificates).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The data directory passed with `--data`.
    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    /// `serve` and its flags: the defaults not replaced or omitted, then the test's own.
    pub fn command_args(&self) -> Vec<String> {
        let mut out = vec!["serve".to_string()];
        if !self.has_flag("--data") && !self.is_omitted("--data") {
            out.push("--data".to_string());
            out.push(self.data_dir().display().to_string());
        }
        for (flag, value) in DEFAULT_FLAGS {
            if self.has_flag(flag) || self.is_omitted(flag) {
                continue;
            }
            out.push(flag.to_string());
            out.push(value.to_string());
        }
        out.extend(self.args.iter().cloned());
        out
    }

    fn has_flag(&self, flag: &str) -> bool {
        let prefix = format!("{flag}=");
        self.args
            .iter()
            .any(|a| a == flag || a.starts_with(&prefix))
    }

    fn is_omitted(&self, flag: &str) -> bool {
        self.omit.iter().any(|f| f == flag)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nova"));
        cmd.args(self.command_args());
        // The test's own environment must not configure the server behind its back.
        for (key, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if key.starts_with("NOVA_") {
                cmd.env_remove(&key);
            }
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        cmd.current_dir(self.tmp.path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the server and waits for its listening line; panics with its stderr if it exits
    /// first or does not print the line within `START_TIMEOUT`.
    pub fn start(self) -> Server {
        match self.try_start() {
            Ok(server) => server,
            Err(failure) => panic!("{failure}"),
        }
    }

    /// Starts the server; `Err` describes why it did not come up (exit code and stderr).
    pub fn try_start(self) -> Result<Server, String> {
        let mut server = Server {
            launch: self,
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            scheme: String::new(),
            shards: 0,
            stdout: Arc::new(Mutex::new(Vec::new())),
            stderr: Arc::new(Mutex::new(String::new())),
            tls: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Runs the server expecting it to refuse to start: waits for it to exit (panics if it
    /// is still running after `START_TIMEOUT`) and returns its exit code and output.
    pub fn run_expecting_exit(&self) -> Exited {
        let mut child = self.command().spawn().expect("spawn nova");
        let out = drain(child.stdout.take().unwrap());
        let err = drain(child.stderr.take().unwrap());
        let deadline = Instant::now() + START_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nova {:?} was expected to refuse to start but was still running after \
                     {START_TIMEOUT:?}; stdout:\n{}\nstderr:\n{}",
                    self.command_args(),
                    out.join().unwrap(),
                    err.join().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        Exited {
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }
}

/// A server that was expected to exit on its own.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A running `nova serve`; killed (SIGKILL) when dropped.
pub struct Server {
    launch: Launch,
    child: Option<Child>,
    addr: SocketAddr,
    scheme: String,
    shards: u32,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Parses `nova listening on http://127.0.0.1:PORT (2 shards)`.
pub fn parse_listening_line(line: &str) -> Option<(String, SocketAddr, u32)> {
    let rest = line.trim().strip_prefix("nova listening on ")?;
    let (scheme, rest) = rest.split_once("://")?;
    let (addr, rest) = rest.split_once(' ')?;
    let count = rest.strip_prefix('(')?.split_once(' ')?.0.parse().ok()?;
    if !rest.contains("shard") {
        return None;
    }
    Some((scheme.to_string(), addr.parse().ok()?, count))
}

impl Server {
    /// Starts `nova serve` with the default flags plus `extra_args`.
    pub fn start(extra_args: &[&str]) -> Server {
        Launch::new().args(extra_args).start()
    }

    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "server already running");
        let mut child = self.launch.command().spawn().expect("spawn nova");
        let pid = child.id();
        let (tx, rx) = mpsc::channel::<String>();
        let stdout_lines = Arc::clone(&self.stdout);
        let stdout = child.stdout.take().unwrap();
        // Keep draining both pipes for the life of the process so it never blocks on a full
        // pipe; stderr is echoed so that it shows up in the output of a failing test.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                stdout_lines.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let stderr_text = Arc::clone(&self.stderr);
        let stderr = child.stderr.take().unwrap();
        let stderr_done = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[nova {pid}] {line}");
                let mut text = stderr_text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((scheme, addr, shards)) = parse_listening_line(&line) {
                        self.scheme = scheme;
                        self.addr = addr;
                        self.shards = shards;
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = child.wait().unwrap();
                    let _ = stderr_done.join();
                    return Err(format!(
                        "nova {:?} exited before listening ({status}); stderr:\n{}",
                        self.launch.command_args(),
                        self.stderr_text()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = stderr_done.join();
                    return Err(format!(
                        "nova {:?} printed no listening line within {START_TIMEOUT:?}; \
                         stdout: {:?}\nstderr:\n{}",
                        self.launch.command_args(),
                        self.stdout.lock().unwrap(),
                        self.stderr_text()
                    ));
                }
            }
        }
        self.tls = match (&self.launch.tls_root_der, self.scheme.as_str()) {
            (Some(der), _) => Some(tls_client_config(der)),
            (None, "https") => panic!("server speaks https but the test trusts no certificate"),
            (None, _) => None,
        };
        self.child = Some(child);
        Ok(())
    }

    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The shard count printed in the listening line.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.as_ref().expect("server not running").id()).unwrap()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for `needle` in the server's stderr, and returns that text. A
    /// thread of its own copies stderr in, so a line logged before the server listened may
    /// still be on its way when `restart` returns.
    pub fn stderr_once_has(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr_text();
            if text.contains(needle) || Instant::now() > deadline {
                return text;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// After a restart from a kill: the server replayed its write-ahead log (so the checks
    /// that follow test what the replay brought back). `context` starts the failure message.
    pub fn assert_replayed(&self, context: &str) {
        let log = self.stderr_once_has("replayed the write-ahead log", Duration::from_secs(5));
        assert!(
            log.contains("replayed the write-ahead log"),
            "{context}nothing was replayed after the kill; stderr:\n{log}"
        );
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns at once (see `wait_exit`).
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends a signal and returns at once; usable while other threads share the server.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid();
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, which
        // has not been reaped (we hold its `Child`), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("server not running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then require a clean exit (code 0) within 10 s.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.sigterm();
        match self.wait_exit(Duration::from_secs(10)) {
            Some(status) => assert!(
                status.success(),
                "nova exited with {status} on SIGTERM; stderr:\n{}",
                self.stderr_text()
            ),
            None => {
                self.kill9();
                panic!("nova did not exit within 10 s of SIGTERM");
            }
        }
    }

    /// Starts the server again on the same data directory with the same flags (stopping it
    /// with SIGTERM first if it is still running).
    pub fn restart(&mut self) {
        self.stop();
        self.stdout.lock().unwrap().clear();
        self.stderr.lock().unwrap().clear();
        if let Err(failure) = self.spawn() {
            panic!("restart failed: {failure}");
        }
    }

    /// A `Launch` for the same directory, e.g. to run it again with other flags.
    pub fn relaunch(&self) -> Launch {
        self.launch.clone()
    }

    // -----------------------------------------------------------------------------------------
    // Requests
    // -----------------------------------------------------------------------------------------

    fn agent(&self, timeout: Duration) -> ureq::Agent {
        let mut builder = ureq::AgentBuilder::new().timeout(timeout).redirects(0);
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(Arc::clone(tls));
        }
        builder.build()
    }

    /// Sends a request on a fresh connection. `Err` is a transport failure (refused, reset,
    /// closed without an answer, timeout), never an HTTP status.
    pub fn send(&self, req: &Req) -> Result<Resp, String> {
        let agent = self.agent(req.timeout);
        let mut r = agent.request(&req.method, &self.url(&req.path));
        if let Some(token) = &req.token {
            r = r.set("Authorization", &format!("Bearer {token}"));
        }
        if let Some(ct) = &req.content_type {
            r = r.set("Content-Type", ct);
        }
        for (name, value) in &req.headers {
            r = r.set(name, value);
        }
        let result = match &req.body {
            Some(body) => r.send_bytes(body),
            None => r.call(),
        };
        let response = match result {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(t)) => return Err(t.to_string()),
        };
        let status = response.status();
        let headers = response
            .headers_names()
            .into_iter()
            .filter_map(|name| {
                let value = response.header(&name)?.to_string();
                Some((name.to_ascii_lowercase(), value))
            })
            .collect();
        let mut body = Vec::new();
        response
            .into_reader()
            .take(64 << 20)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the body: {e}"))?;
        let json = if body.is_empty() {
            None
        } else {
            let mut copy = body.clone();
            simd_json::serde::from_slice::<Json>(&mut copy).ok()
        };
        Ok(Resp {
            method: req.method.clone(),
            path: req.path.clone(),
            status,
            headers,
            body,
            json,
        })
    }

    /// Sends a request; a transport failure fails the test.
    pub fn req(&self, req: &Req) -> Resp {
        match self.send(req) {
            Ok(resp) => resp,
            Err(e) => panic!(
                "{} {}: transport error: {e}\nnova stderr:\n{}",
                req.method,
                req.path,
                tail(&self.stderr_text(), 40)
            ),
        }
    }

    /// The data-driven helper: method, path, optional bearer token, optional JSON body.
    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Json>) -> Resp {
        let mut req = Req::new(method, path);
        if let Some(token) = token {
            req = req.bearer(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        self.req(&req)
    }

    /// `call`, then require `status`; for an error status also require the error envelope with
    /// `code` (pass `None` to skip the code check for success statuses).
    pub fn check(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Json>,
        status: u16,
        code: Option<&str>,
    ) -> Resp {
        let resp = self.call(method, path, token, body);
        match code {
            Some(code) => resp.expect_error(status, code),
            None => resp.expect(status),
        };
        resp
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call("GET", path, token, None)
    }

    /// The values of a per-shard metric `name` in `/metrics`, in shard order; one per shard.
    pub fn per_shard_metric(&self, name: &str) -> Vec<u64> {
        let text = self.get("/metrics", None).text();
        let prefix = format!("{name}{{shard=");
        let rows: Vec<u64> = text
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(rows.len(), self.shards() as usize, "{name}: {text}");
        rows
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: Json) -> Resp {
        self.call("POST", path, token, Some(body))
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.call("DELETE", path, token, None)
    }

    // -----------------------------------------------------------------------------------------
    // Domain helpers
    // -----------------------------------------------------------------------------------------

    /// Follows `followee` with `token` (`Member::auth`) and requires 200.
    pub fn follow(&self, token: Option<&str>, followee: u64) -> Resp {
        let resp = self.call("POST", &format!("/v1/users/{followee}/follow"), token, None);
        resp.expect(200);
        resp
    }

    /// Makes `member`'s account private (or public) with `PATCH /v1/me/settings`; requires 200.
    pub fn set_private(&self, member: &Member, private: bool) {
        self.call(
            "PATCH",
            "/v1/me/settings",
            member.auth(),
            Some(simd_json::json!({ "private": private })),
        )
        .expect(200);
    }

    /// Deletes `member`'s account (`DELETE /v1/me` with its password); requires 204.
    pub fn erase(&self, member: &Member) {
        self.call(
            "DELETE",
            "/v1/me",
            member.auth(),
            Some(simd_json::json!({ "password": member.user.password.clone() })),
        )
        .expect(204);
    }

    /// Posts `text` (public) as `author`, requires 201, and gives the post's id.
    pub fn new_post(&self, author: &Member, text: &str) -> u64 {
        let resp = self.post(
            "/v1/posts",
            author.auth(),
            simd_json::json!({ "text": text }),
        );
        resp.expect(201);
        parse_id(resp.at("post.id"))
    }

    /// Registers a user and requires 201.
    pub fn register(&self, username: &str, email: &str, password: &str) -> User {
        let resp = self.post(
            "/v1/accounts",
            None,
            simd_json::json!({"username": username, "email": email, "password": password}),
        );
        resp.expect(201);
        User::from_created(&resp, password)
    }

    /// Registers a user with fresh unique names.
    pub fn register_new(&self) -> User {
        let name = unique_name("u");
        self.register(
            &name,
            &format!("{name}@example.com"),
            &format!("pw-{name}-secret"),
        )
    }

    /// Registers fresh users until one is owned by each of `shards` shards (at most 200 tries).
    pub fn users_on_each_shard(&self) -> Vec<User> {
        let mut found: Vec<Option<User>> = vec![None; self.shards as usize];
        for _ in 0..200 {
            if found.iter().all(Option::is_some) {
                break;
            }
            let user = self.register_new();
            let shard = user.shard() as usize;
            assert!(
                shard < found.len(),
                "user id {} names shard {shard}",
                user.id
            );
            if found[shard].is_none() {
                found[shard] = Some(user);
            }
        }
        let missing: Vec<usize> = found
            .iter()
            .enumerate()
            .filter(|(_, u)| u.is_none())
            .map(|(i, _)| i)
            .collect();
        assert!(
            missing.is_empty(),
            "200 registrations gave no user on shard(s) {missing:?}"
        );
        found.into_iter().map(Option::unwrap).collect()
    }

    /// Logs in and requires 200.
    pub fn login(&self, login: &str, password: &str) -> Login {
        let resp = self.try_login(login, password);
        resp.expect(200);
        Login::from_resp(&resp)
    }

    pub fn try_login(&self, login: &str, password: &str) -> Resp {
        self.post(
            "/v1/sessions",
            None,
            simd_json::json!({"login": login, "password": password}),
        )
    }

    /// The admin outbox for one address (`GET /v1/admin/emails?to=`), required to be 200.
    pub fn emails_to(&self, to: &str) -> Vec<Json> {
        let path = format!("/v1/admin/emails?to={}", percent_encode(to));
        let resp = self.get(&path, Some(ADMIN_TOKEN));
        resp.expect(200);
        let items = resp
            .at("items")
            .as_array()
            .expect("items is an array")
            .clone();
        assert!(
            resp.at("next").is_null(),
            "next must be null: {}",
            resp.text()
        );
        items
    }

    /// Waits (up to 10 s: the outbox may be filled asynchronously) for an email of `kind` to
    /// `to` and returns the token of the newest one.
    pub fn email_token(&self, to: &str, kind: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let items = self.emails_to(to);
            let newest = items
                .iter()
                .filter(|item| item.get("kind").and_then(|k| k.as_str()) == Some(kind))
                .max_by_key(|item| {
                    item.get("id")
                        .and_then(|id| id.as_str())
                        .and_then(|id| id.parse::<u64>().ok())
                });
            if let Some(item) = newest {
                let body = item
                    .get("body")
                    .and_then(|b| b.as_str())
                    .expect("email body");
                return token_line(body)
                    .unwrap_or_else(|| panic!("no `token: ` line in email body {body:?}"));
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} email to {to} within 10 s: {items:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Repeats `req` on fresh connections until each shard has answered once (at most 300
    /// tries); returns one response per shard, in shard order.
    pub fn on_each_shard(&self, req: &Req, mut each: impl FnMut(&Resp)) -> Vec<Resp> {
        let mut found: Vec<Option<Resp>> = (0..self.shards).map(|_| None).collect();
        for _ in 0..300 {
            if found.iter().all(Option::is_some) {
                break;
            }
            let resp = self.req(req);
            each(&resp);
            let shard = resp.shard() as usize;
            assert!(shard < found.len(), "X-Nova-Shard {shard} out of range");
            if found[shard].is_none() {
                found[shard] = Some(resp);
            }
        }
        assert!(
            found.iter().all(Option::is_some),
            "{} {} was not served by every shard in 300 fresh connections",
            req.method,
            req.path
        );
        found.into_iter().map(Option::unwrap).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of the `token: <token>` line of an email body.
pub fn token_line(body: &str) -> Option<String> {
    body.lines()
        .find_map(|line| line.trim().strip_prefix("token: "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Percent-encodes everything but unreserved characters (for query strings).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `rustls` client configuration that trusts exactly one (self-signed) certificate.
pub fn tls_client_config(der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Process-wide counter for unique names within one test binary.
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh valid username: `prefix` (a letter first) and a number, at most 30 characters.
pub fn unique_name(prefix: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{n}_{}", std::process::id() % 10_000);
    assert!(name.len() <= 30);
    name
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------------------

/// One HTTP request; built with `Req::new(..).json(..).bearer(..)`.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub token: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.to_string(),
            path: path.to_string(),
            token: None,
            content_type: None,
            body: None,
            headers: Vec::new(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn get(path: &str) -> Req {
        Req::new("GET", path)
    }

    pub fn post(path: &str) -> Req {
        Req::new("POST", path)
    }

    pub fn json(self, body: &Json) -> Req {
        self.raw("application/json", body.encode().into_bytes())
    }

    /// A body sent as is, with this content type.
    pub fn raw(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        self.content_type = Some(content_type.to_string());
        self.body = Some(body.into());
        self
    }

    /// A body sent without any Content-Type header.
    pub fn untyped(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.content_type = None;
        self.body = Some(body.into());
        self
    }

    pub fn bearer(mut self, token: &str) -> Req {
        self.token = Some(token.to_string());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Req {
        self.timeout = timeout;
        self
    }
}

/// A response: status, headers (names lower-cased), body and the body parsed as JSON if it is.
#[derive(Clone, Debug)]
pub struct Resp {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub json: Option<Json>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn what(&self) -> String {
        format!(
            "{} {} -> {} {}",
            self.method,
            self.path,
            self.status,
            self.text()
        )
    }

    /// The `X-Nova-Shard` header as a number (required).
    pub fn shard(&self) -> u32 {
        let value = self
            .header("x-nova-shard")
            .unwrap_or_else(|| panic!("no X-Nova-Shard header: {}", self.what()));
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("X-Nova-Shard {value:?} is not a number"))
    }

    pub fn request_id(&self) -> &str {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id: {}", self.what()))
    }

    /// The parsed JSON body (required).
    pub fn json(&self) -> &Json {
        self.json
            .as_ref()
            .unwrap_or_else(|| panic!("body is not JSON: {}", self.what()))
    }

    /// The value at a dotted path of the JSON body (required to exist).
    pub fn at(&self, path: &str) -> &Json {
        at(self.json(), path).unwrap_or_else(|| panic!("no `{path}` in {}", self.what()))
    }

    /// The string at a dotted path (required).
    pub fn str(&self, path: &str) -> &str {
        self.at(path)
            .as_str()
            .unwrap_or_else(|| panic!("`{path}` is not a string: {}", self.what()))
    }

    /// Requires `status` and the headers every response carries.
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(self.status, status, "unexpected status: {}", self.what());
        self.expect_common_headers();
        self
    }

    /// Requires `X-Request-Id` (1-64 chars of `[A-Za-z0-9._-]`) and a numeric `X-Nova-Shard`.
    pub fn expect_common_headers(&self) -> &Resp {
        let id = self.request_id();
        assert!(
            valid_request_id(id),
            "X-Request-Id {id:?} is not 1-64 of [A-Za-z0-9._-]"
        );
        let _ = self.shard();
        self
    }

    /// Requires `status` and exactly the envelope `{"error":{"code":code,"message":"..."}}`.
    pub fn expect_error(&self, status: u16, code: &str) -> &Resp {
        self.expect(status);
        self.expect_envelope(code);
        self
    }

    /// Requires the error envelope with `code`, whatever the status.
    pub fn expect_envelope(&self, code: &str) -> &Resp {
        let json = self.json();
        let top = json
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {}", self.what()));
        assert_eq!(
            top.len(),
            1,
            "envelope must have only `error`: {}",
            self.what()
        );
        let error = json
            .get("error")
            .and_then(|e| e.as_object())
            .unwrap_or_else(|| panic!("no `error` object: {}", self.what()));
        assert_eq!(
            error.len(),
            2,
            "`error` must have exactly code and message: {}",
            self.what()
        );
        assert_eq!(
            self.error_code(),
            Some(code),
            "wrong error code: {}",
            self.what()
        );
        let message = self.str("error.message");
        assert!(!message.is_empty(), "empty error message: {}", self.what());
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error Content-Type {ct:?}: {}",
            self.what()
        );
        self
    }

    pub fn error_code(&self) -> Option<&str> {
        self.json
            .as_ref()
            .and_then(|j| at(j, "error.code"))
            .and_then(|c| c.as_str())
    }

    pub fn what_happened(&self) -> String {
        self.what()
    }
}

/// The value at a dotted path (`"user.id"`, `"items.0.id"`).
pub fn at<'a>(json: &'a Json, path: &str) -> Option<&'a Json> {
    let mut cur = json;
    for part in path.split('.') {
        cur = match part.parse::<usize>() {
            Ok(i) if cur.as_array().is_some() => cur.as_array()?.get(i)?,
            _ => cur.get(part)?,
        };
    }
    Some(cur)
}

/// The keys of a JSON object, sorted.
pub fn keys(json: &Json) -> Vec<String> {
    let mut keys: Vec<String> = json
        .as_object()
        .expect("an object")
        .keys()
        .map(|k| k.to_string())
        .collect();
    keys.sort();
    keys
}

pub fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// `2026-11-26T22:48:15.123Z`: RFC 3339, UTC, milliseconds.
pub fn is_rfc3339_millis(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 24
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..23)
        && b[23] == b'Z'
}

/// `shard_of(id) = (id >> 12) & 0x3ff`.
pub fn shard_of(id: u64) -> u32 {
    ((id >> 12) & 0x3ff) as u32
}

/// Parses a decimal-string id.
pub fn parse_id(value: &Json) -> u64 {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("id {value:?} is not a string"));
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "id {s:?} is not a decimal string"
    );
    s.parse()
        .unwrap_or_else(|_| panic!("id {s:?} is not a u64"))
}

/// Checks the self view of a user: exactly the contract's keys with the right types.
pub fn check_user_view(user: &Json) {
    // `media` (storage used and allowed) is only in `GET /v1/me`.
    let mut found = keys(user);
    if let Some(media) = user.get("media") {
        assert_eq!(
            keys(media),
            ["quota_bytes", "used_bytes"],
            "media keys: {media:?}"
        );
        found.retain(|k| k != "media");
    }
    assert_eq!(
        found,
        [
            "created_at",
            "display_name",
            "email",
            "email_verified",
            "id",
            "username"
        ],
        "user view keys: {user:?}"
    );
    parse_id(user.get("id").unwrap());
    for key in ["username", "display_name", "email"] {
        assert!(
            user.get(key).unwrap().as_str().is_some(),
            "{key} is not a string: {user:?}"
        );
    }
    assert!(
        user.get("email_verified").unwrap().as_bool().is_some(),
        "{user:?}"
    );
    let created = user.get("created_at").unwrap().as_str().unwrap_or("");
    assert!(
        is_rfc3339_millis(created),
        "created_at {created:?} is not RFC 3339 with ms, UTC"
    );
}

/// A registered user and its password.
#[derive(Clone, Debug)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub email: String,
    pub password: String,
}

impl User {
    pub fn from_created(resp: &Resp, password: &str) -> User {
        check_user_view(resp.at("user"));
        User {
            id: parse_id(resp.at("user.id")),
            username: resp.str("user.username").to_string(),
            email: resp.str("user.email").to_string(),
            password: password.to_string(),
        }
    }

    pub fn shard(&self) -> u32 {
        shard_of(self.id)
    }
}

/// A successful login (or refresh).
#[derive(Clone, Debug)]
pub struct Login {
    pub access: String,
    pub refresh: String,
    pub session_id: u64,
    pub user_id: u64,
    pub expires_in: u64,
    /// The shard that served the connection.
    pub served_by: u32,
}

impl Login {
    /// Checks the contract's shape of a login/refresh answer and extracts it.
    pub fn from_resp(resp: &Resp) -> Login {
        let json = resp.json();
        assert_eq!(
            keys(json),
            [
                "access_token",
                "expires_in",
                "refresh_token",
                "session_id",
                "token_type",
                "user"
            ],
            "login answer keys: {}",
            resp.what()
        );
        assert_eq!(resp.str("token_type"), "Bearer");
        check_user_view(resp.at("user"));
        let access = resp.str("access_token").to_string();
        let refresh = resp.str("refresh_token").to_string();
        assert!(
            !access.is_empty() && !refresh.is_empty(),
            "empty token: {}",
            resp.what()
        );
        assert_ne!(access, refresh, "access and refresh tokens must differ");
        let expires_in = resp
            .at("expires_in")
            .as_u64()
            .unwrap_or_else(|| panic!("expires_in is not a positive integer: {}", resp.what()));
        assert!(expires_in > 0);
        Login {
            access,
            refresh,
            session_id: parse_id(resp.at("session_id")),
            user_id: parse_id(resp.at("user.id")),
            expires_in,
            served_by: resp.shard(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw TCP, for what an HTTP client library will not do (slow writes, idle connections)
// ---------------------------------------------------------------------------------------------

/// A parsed raw HTTP/1.1 response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response from `stream` (Content-Length or chunked body, or until EOF).
/// Reads byte by byte where needed so that it never consumes the start of a pipelined answer.
pub fn read_raw_response(stream: &mut TcpStream) -> std::io::Result<RawResponse> {
    let head = read_until_crlf(stream, b"\r\n\r\n", 64 << 10)?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(std::io::Error::other)?;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        body
    } else if get("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line = read_until_crlf(stream, b"\r\n", 1024)?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size_text = line
                .trim_end()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(std::io::Error::other)?;
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        let mut body = Vec::new();
        stream.read_to_end(&mut body)?;
        body
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads up to and including `end`, one byte at a time.
fn read_until_crlf(stream: &mut TcpStream, end: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(end) {
        if buf.len() >= max {
            return Err(std::io::Error::other("response head too long"));
        }
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "closed before a full response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.push(byte[0]);
    }
    Ok(buf)
}

/// Opens a plain TCP connection to the server.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).expect("connect");
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    stream
}

/// Writes all of `bytes` to a raw connection.
pub fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes)?;
    stream.flush()
}

/// Waits up to `timeout` for `cond`, polling every 50 ms.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Social helpers (issue 3)
// ---------------------------------------------------------------------------------------------

/// A registered user with a logged-in access token.
#[derive(Clone, Debug)]
pub struct Member {
    pub user: User,
    pub token: String,
}

impl Member {
    pub fn id(&self) -> u64 {
        self.user.id
    }

    pub fn shard(&self) -> u32 {
        self.user.shard()
    }

    pub fn name(&self) -> &str {
        &self.user.username
    }

    /// The bearer token, in the form the request helpers take.
    pub fn auth(&self) -> Option<&str> {
        Some(&self.token)
    }

    /// The same member with a fresh token (after a restart).
    pub fn logged_in_again(self, server: &Server) -> Member {
        let token = server
            .login(&self.user.username, &self.user.password)
            .access;
        Member { token, ..self }
    }
}

/// The ids of a list answer's `items`, in order.
pub fn item_ids(resp: &Resp) -> Vec<u64> {
    resp.at("items")
        .as_array()
        .unwrap_or_else(|| panic!("items is not an array: {}", resp.what_happened()))
        .iter()
        .map(|item| {
            parse_id(
                item.get("id")
                    .unwrap_or_else(|| panic!("item without id: {}", resp.what_happened())),
            )
        })
        .collect()
}

/// The `next` cursor of a list answer: `Some(id)` or `None` for null (anything else fails).
pub fn next_cursor(resp: &Resp) -> Option<u64> {
    let next = resp.at("next");
    if next.is_null() {
        return None;
    }
    Some(parse_id(next))
}

impl Server {
    /// Registers fresh users until one is owned by `shard` (at most 200 tries).
    pub fn register_on_shard(&self, shard: u32) -> User {
        assert!(shard < self.shards, "no shard {shard} of {}", self.shards);
        for _ in 0..200 {
            let user = self.register_new();
            if user.shard() == shard {
                return user;
            }
        }
        panic!("200 registrations gave no user on shard {shard}");
    }

    /// A fresh user owned by `shard`, logged in.
    pub fn member_on_shard(&self, shard: u32) -> Member {
        let user = self.register_on_shard(shard);
        let login = self.login(&user.username, &user.password);
        assert_eq!(login.user_id, user.id);
        Member {
            user,
            token: login.access,
        }
    }

    /// Walks a paginated list of posts by its `next` cursors (`limit` per page, at most 10,000
    /// pages) and returns every id in the order served; each page must be 200 and hold at most
    /// `limit` items, and every `next` must move the walk forward.
    pub fn walk_posts(&self, path: &str, token: &str, limit: usize) -> Vec<u64> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut max_id: Option<u64> = None;
        for _ in 0..10_000 {
            let url = match max_id {
                None => format!("{path}{sep}limit={limit}"),
                Some(cursor) => format!("{path}{sep}limit={limit}&max_id={cursor}"),
            };
            let resp = self.get(&url, Some(token));
            resp.expect(200);
            let ids = item_ids(&resp);
            assert!(
                ids.len() <= limit,
                "page of {} items over limit {limit}: {}",
                ids.len(),
                resp.what_happened()
            );
            out.extend_from_slice(&ids);
            match next_cursor(&resp) {
                None => return out,
                Some(next) => {
                    assert!(
                        max_id.is_none_or(|prev| next < prev),
                        "next cursor {next} does not move past {max_id:?}: {}",
                        resp.what_happened()
                    );
                    max_id = Some(next);
                }
            }
        }
        panic!("{path}: more than 10,000 pages");
    }
}

/// A small picture uploaded by `member` (made with the ffmpeg command); answered 202, so it
/// may still be processing.
pub fn picture(server: &Server, member: &Member) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("p.png");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=blue:s=40x30",
            "-frames:v",
            "1",
        ])
        .arg(&png)
        .status()
        .unwrap();
    assert!(made.success());
    let up = server.req(
        &Req::post("/v1/media")
            .bearer(&member.token)
            .raw("application/octet-stream", std::fs::read(&png).unwrap()),
    );
    up.expect(202);
    up.str("media.id").parse().unwrap()
}
