//! `nova admin emails`: the email queue of a stopped server, read and changed offline from
//! the shards' redb files. redb lets one process open a file at a time, so a running server
//! is detected (its files are locked) and the command refuses, saying so.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use nova_core::communication::{self, EmailStatus, QueuedEmail};
use nova_storage::redb::{self, Database, ReadableDatabase};
use nova_storage::DataDir;

/// Emails one `retry --dead` moves back at most (run it again for more).
const RETRY_DEAD_MAX: usize = 100_000;

#[derive(Debug, Subcommand)]
pub enum EmailsCommand {
    /// List emails, newest first per state (tab-separated, one per line).
    List {
        /// The data directory of a stopped server.
        #[arg(long)]
        data_dir: PathBuf,
        /// Only this state.
        #[arg(long, value_parser = ["queued", "sending", "sent", "dead"])]
        state: Option<String>,
        /// At most this many per state and shard.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move a dead email (or every dead email) back to queued, with a fresh count of tries.
    Retry {
        /// The data directory of a stopped server.
        #[arg(long)]
        data_dir: PathBuf,
        /// The email's id (as `list` prints it).
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<u64>,
        /// Every dead email.
        #[arg(long)]
        dead: bool,
    },
}

pub fn run(cmd: EmailsCommand) -> anyhow::Result<()> {
    match cmd {
        EmailsCommand::List {
            data_dir,
            state,
            limit,
        } => {
            let states: Vec<EmailStatus> = match state.as_deref() {
                Some(s) => vec![EmailStatus::parse(s).context("unknown state")?],
                None => EmailStatus::ALL.to_vec(),
            };
            let dbs = open_all(&data_dir)?;
            let mut out = std::io::stdout().lock();
            // A reader that stops early (`| head`) ends the listing, quietly.
            let quiet = |e: std::io::Error| match e.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(()),
                _ => Err(e),
            };
            let header = "id\tstate\tattempts\tnext_attempt_at\tkind\tto\tmessage_id\tlast_error";
            if let Err(e) = writeln!(out, "{header}") {
                return Ok(quiet(e)?);
            }
            for status in states {
                let mut all = Vec::new();
                for db in &dbs {
                    let read = db.begin_read()?;
                    all.extend(communication::emails_in_state(&read, status, limit)?);
                }
                all.sort_by(|a, b| b.updated_ms.cmp(&a.updated_ms).then(b.id.cmp(&a.id)));
                for email in all {
                    if let Err(e) = writeln!(out, "{}", line(&email)) {
                        return Ok(quiet(e)?);
                    }
                }
            }
            Ok(())
        }
        EmailsCommand::Retry { data_dir, id, dead } => {
            let dbs = open_all(&data_dir)?;
            let now = crate::shard::now_ms();
            let mut moved = 0;
            match (id, dead) {
                (Some(id), _) => {
                    let shard = nova_core::shard_of(id);
                    let db = dbs
                        .get(shard)
                        .with_context(|| format!("no email {id} (no shard {shard})"))?;
                    let txn = db.begin_write()?;
                    match communication::retry_dead(&txn, Some(id), now, 1) {
                        Ok(ids) => moved += ids.len(),
                        Err(nova_core::CoreError::NotFound) => {
                            anyhow::bail!("email {id} is not a dead email")
                        }
                        Err(e) => return Err(e.into()),
                    }
                    txn.commit()?;
                }
                (None, _) => {
                    debug_assert!(dead);
                    for db in &dbs {
                        let txn = db.begin_write()?;
                        moved += communication::retry_dead(&txn, None, now, RETRY_DEAD_MAX)?.len();
                        txn.commit()?;
                    }
                }
            }
            // The change is committed; a closed stdout only loses the message.
            let _ = writeln!(
                std::io::stdout(),
                "{moved} email(s) moved back to queued; the server sends them when it runs"
            );
            Ok(())
        }
    }
}

fn line(e: &QueuedEmail) -> String {
    let clean = |s: &str| s.replace(['\t', '\n', '\r'], " ");
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        e.id,
        e.status.as_str(),
        e.attempts,
        if e.status == EmailStatus::Queued {
            nova_protocol::rfc3339(e.next_attempt_ms)
        } else {
            "-".to_string()
        },
        clean(&e.kind),
        clean(&e.to),
        e.message_id.as_deref().unwrap_or("-"),
        clean(e.last_error.as_deref().unwrap_or("-")),
    )
}

/// Opens every shard's database, refusing if a server holds them.
fn open_all(root: &Path) -> anyhow::Result<Vec<Database>> {
    let manifest = DataDir::read_manifest(root)?
        .with_context(|| format!("{} is not a nova data directory", root.display()))?;
    let data = DataDir::open(root, manifest.shards)?;
    let mut dbs = Vec::with_capacity(manifest.shards);
    for k in 0..manifest.shards {
        let path = data.shard_path(k);
        if !path.exists() {
            anyhow::bail!("{} is missing", path.display());
        }
        match Database::open(&path) {
            Ok(db) => {
                nova_storage::refuse_unapplied_log(&path, &db)?;
                dbs.push(db);
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => anyhow::bail!(
                "{} is in use: is `nova serve` running on {}? Stop it first (a database \
                 file is opened by one process at a time).",
                path.display(),
                root.display()
            ),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open {}", path.display()));
            }
        }
    }
    Ok(dbs)
}
