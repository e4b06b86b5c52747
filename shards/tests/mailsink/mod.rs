//! A real SMTP server for the mail tests: `smtp_sink.py` (aiosmtpd, installed by `make pyenv`
//! into target/pyenv) on a loopback port, writing every message it accepts to a directory,
//! which the tests read back.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The sender every mail test configures; Message-IDs are `<id@nova.test>`.
pub const FROM: &str = "Nova <nova@nova.test>";

/// The Python with aiosmtpd: `NOVA_TEST_PYTHON`, or the venv `make pyenv` makes.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("NOVA_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run `make pyenv` (installs aiosmtpd from PyPI into target/pyenv) or \
         set NOVA_TEST_PYTHON to a python that has aiosmtpd",
        p.display()
    );
    p
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port below the kernel's ephemeral range (32768 and up), for a port that must stay
/// free a while before anything listens on it: an ephemeral one can be taken meanwhile as
/// the source port of some other test's connection.
pub fn free_port_outside_ephemeral() -> u16 {
    let start = (std::process::id() as u16 % 10_000) + 20_000;
    (0..10_000u16)
        .map(|i| 20_000 + (start - 20_000 + i) % 10_000)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port between 20000 and 29999")
}

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub file: String,
    pub message_id: String,
    pub to: String,
    pub subject: String,
    /// Decoded (quoted-printable undone).
    pub body: String,
}

impl Received {
    /// The `token: ` line of the body.
    pub fn token(&self) -> String {
        self.body
            .lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| panic!("no token line in {self:?}"))
    }

    /// The email id inside `<id@nova.test>`.
    pub fn email_id(&self) -> u64 {
        self.message_id
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix("@nova.test>"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("Message-ID {:?} is not <id@nova.test>", self.message_id))
    }
}

pub struct Sink {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_on(free_port())
    }

    /// Starts the sink on `port` and waits for its "ready" line.
    pub fn start_on(port: u16) -> Sink {
        let dir = tempfile::Builder::new()
            .prefix("nova-smtp-")
            .tempdir()
            .unwrap();
        Sink::start_in(port, dir)
    }

    /// A sink that speaks TLS (`starttls`: required STARTTLS; `tls`: from the first byte)
    /// with this certificate and key (PEM files).
    pub fn start_tls(mode: &str, cert: &Path, key: &Path) -> Sink {
        Sink::start_tls_auth(mode, cert, key, None)
    }

    /// As `start_tls`, and with `Some("user:password")` AUTH is required with exactly those.
    pub fn start_tls_auth(mode: &str, cert: &Path, key: &Path, auth: Option<&str>) -> Sink {
        let dir = tempfile::Builder::new()
            .prefix("nova-smtp-")
            .tempdir()
            .unwrap();
        let mut tls = vec![
            mode.to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ];
        tls.extend(auth.map(str::to_string));
        Sink::spawn(free_port(), dir, &tls)
    }

    fn start_in(port: u16, dir: tempfile::TempDir) -> Sink {
        Sink::spawn(port, dir, &[])
    }

    fn spawn(port: u16, dir: tempfile::TempDir, tls: &[String]) -> Sink {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = Command::new(python())
            .arg(&script)
            .arg(port.to_string())
            .arg(dir.path())
            .args(tls)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start smtp_sink.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "smtp_sink.py did not start on {port}");
        Sink { child, port, dir }
    }

    /// Stops the server (the messages it kept stay readable).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `ok`, `451`, `550` or `slow:SECS` (see smtp_sink.py), for every command from now on.
    pub fn set_mode(&self, mode: &str) {
        let tmp = self.dir.path().join("mode.tmp");
        std::fs::write(&tmp, mode).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("mode")).unwrap();
    }

    /// Every message accepted so far, in the order accepted.
    pub fn messages(&self) -> Vec<Received> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("msg-") && n.ends_with(".eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let raw = std::fs::read(self.dir.path().join(&n)).unwrap();
                parse(&n, &String::from_utf8_lossy(&raw))
            })
            .collect()
    }

    /// Messages to `to` (case-insensitive).
    pub fn messages_to(&self, to: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.eq_ignore_ascii_case(to))
            .collect()
    }

    /// Waits up to `timeout` until `cond` holds for the messages received; returns them.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.messages();
            if cond(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {what}; received: {:#?}",
                got.iter()
                    .map(|m| (&m.message_id, &m.to, &m.subject))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The one message of `subject` to `to`, waiting up to `timeout` for it.
    pub fn wait_one(&self, to: &str, subject: &str, timeout: Duration) -> Received {
        let what = format!("{subject:?} to {to}");
        self.wait_for(timeout, &what, |got| {
            got.iter()
                .any(|m| m.to.eq_ignore_ascii_case(to) && m.subject == subject)
        });
        let found: Vec<Received> = self
            .messages_to(to)
            .into_iter()
            .filter(|m| m.subject == subject)
            .collect();
        assert_eq!(found.len(), 1, "exactly one {what}: {found:#?}");
        found.into_iter().next().unwrap()
    }

    /// How many times each Message-ID was received.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in self.messages() {
            *counts.entry(m.message_id).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop();
    }
}

fn parse(file: &str, raw: &str) -> Received {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((raw.as_str(), ""));
    // Unfold continuation lines.
    let head = head.replace("\n ", " ").replace("\n\t", " ");
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let qp = header("Content-Transfer-Encoding").eq_ignore_ascii_case("quoted-printable");
    Received {
        file: file.to_string(),
        message_id: header("Message-ID"),
        to: header("To"),
        subject: header("Subject"),
        body: if qp {
            decode_qp(body)
        } else {
            body.to_string()
        },
    }
}

fn decode_qp(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 2;
                continue;
            }
            if let Some(hex) = text.get(i + 1..i + 3) {
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `serve` flags pointing a server at a plain-SMTP relay on `port`, with quick retries.
pub fn mail_flags(port: u16) -> Vec<String> {
    [
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port.to_string(),
        "--smtp-tls",
        "none",
        "--mail-from",
        FROM,
        "--smtp-timeout-ms",
        "2000",
        "--mail-backoff-base-ms",
        "200",
        "--mail-backoff-max-ms",
        "1000",
        "--mail-attempts-max",
        "20",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `nova admin emails ARGS`: (exit success, stdout, stderr).
pub fn admin_emails(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nova"))
        .args(["admin", "emails"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line of `nova admin emails list`.
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: u64,
    pub state: String,
    pub attempts: u32,
    pub to: String,
    pub message_id: String,
    pub last_error: String,
}

/// `nova admin emails list --data-dir DIR [--state S]`, required to succeed.
pub fn admin_list(data_dir: &Path, state: Option<&str>) -> Vec<Listed> {
    let dir = data_dir.display().to_string();
    let mut args = vec!["list", "--data-dir", &dir];
    if let Some(s) = state {
        args.extend(["--state", s]);
    }
    let (ok, out, err) = admin_emails(&args);
    assert!(ok, "nova admin emails list failed: {err}");
    let mut lines = out.lines();
    assert_eq!(
        lines.next(),
        Some("id\tstate\tattempts\tnext_attempt_at\tkind\tto\tmessage_id\tlast_error")
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 8, "bad line {l:?}");
            Listed {
                id: f[0].parse().unwrap(),
                state: f[1].to_string(),
                attempts: f[2].parse().unwrap(),
                to: f[5].to_string(),
                message_id: f[6].to_string(),
                last_error: f[7].to_string(),
            }
        })
        .collect()
}
