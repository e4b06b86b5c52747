//! The `nova` binary: `nova serve` runs the platform.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod account;
mod api;
mod api_account;
mod api_dsb;
mod api_media;
mod api_messages;
mod api_moderation;
mod api_notify;
mod api_search;
mod api_social;
mod backup;
mod body;
mod briefs;
mod config;
mod digest;
mod error;
mod feeds;
mod hasher;
mod http;
mod limits;
mod mail;
mod mail_admin;
mod media_jobs;
mod media_views;
mod mesh;
mod messaging;
mod metrics;
mod moderation;
mod notify;
mod push;
mod replay;
mod search;
mod search_admin;
mod server;
mod shard;
mod social;
mod stream;
mod users_admin;
mod zip;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: with glibc, malloc and free (and its
/// `malloc_consolidate`) were about 15% of a server under messaging load, spread over every
/// thread (docs/benchmarks.md, messaging). Built without transparent huge pages (`no_thp`):
/// with them, 10,000 idle streams took 304 MiB instead of 213 (the target is 300).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "nova",
    version,
    about = "A self-hosted social, messaging and media platform in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default configuration needs no file).
    Serve(Box<config::ServeArgs>),
    /// Operate on a data dir or a running server.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Back up every shard (one moment across shards) and the data dir's files to DEST.
    /// Online through the running server's admin listener with --server, or offline from a
    /// stopped server's --data-dir.
    Backup {
        dest: std::path::PathBuf,
        /// The admin listener, e.g. http://127.0.0.1:8081.
        #[arg(long, conflicts_with = "data_dir")]
        server: Option<String>,
        #[arg(long, env = "NOVA_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Restore a backup into an empty data dir.
    Restore {
        src: std::path::PathBuf,
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Check a backup (checksums, database pages, row counts) or a data dir (pages).
    Verify { path: std::path::PathBuf },
    /// The email queue: list emails by state, send dead ones again.
    #[command(subcommand)]
    Emails(mail_admin::EmailsCommand),
    /// Drop and rebuild every shard's search index from the posts and users tables (the
    /// server must be stopped).
    Reindex {
        #[arg(long)]
        data_dir: std::path::PathBuf,
    },
    /// Accounts: create, promote/demote, suspend/unsuspend, reset-password, show. Online
    /// with --server (the admin listener) or offline with a stopped server's --data-dir.
    #[command(subcommand)]
    Users(users_admin::UsersCommand),
    /// Write synthetic accounts and posts into a data directory (search benchmark corpus);
    /// the search index is built at the next start or by `reindex`.
    ImportPosts {
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// Shards of a new data directory (an existing one keeps its own).
        #[arg(long, default_value_t = 2)]
        shards: usize,
        #[arg(long, default_value_t = 1_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000_000)]
        posts: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Every account's password.
        #[arg(long, default_value = "password")]
        password: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Admin(cmd) => match admin(cmd) {
            Ok(out) => {
                if !out.is_empty() {
                    println!("{out}");
                }
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nova admin: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Serve(args) => {
            let cfg = match config::Config::load(&args) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("nova: {e:#}");
                    return std::process::ExitCode::from(2);
                }
            };
            init_tracing(&cfg.log);
            match server::run(cfg) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("nova: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

fn admin(cmd: AdminCommand) -> anyhow::Result<String> {
    match cmd {
        AdminCommand::Emails(cmd) => mail_admin::run(cmd).map(|()| String::new()),
        AdminCommand::Users(cmd) => users_admin::run(cmd),
        AdminCommand::Reindex { data_dir } => {
            search_admin::reindex(&data_dir).map(|()| String::new())
        }
        AdminCommand::ImportPosts {
            data_dir,
            shards,
            users,
            posts,
            seed,
            password,
        } => {
            let shards = match nova_storage::DataDir::read_manifest(&data_dir) {
                Ok(Some(m)) => m.shards,
                _ => shards,
            };
            search_admin::import_posts(&data_dir, shards, users, posts, seed, &password)
                .map(|()| String::new())
        }
        AdminCommand::Backup {
            dest,
            server,
            admin_token,
            data_dir,
        } => match (server, data_dir) {
            (Some(server), None) => {
                let token = admin_token.ok_or_else(|| {
                    anyhow::anyhow!("--admin-token (or NOVA_ADMIN_TOKEN) is needed")
                })?;
                backup::backup_online(&server, &token, &dest)
            }
            (None, Some(data)) => {
                let m = backup::backup_offline(&data, &dest)?;
                Ok(format!(
                    "backed up {} shards, {} files, {} bytes in {:.2} s to {}",
                    m.shards,
                    m.files.len(),
                    m.bytes,
                    m.seconds,
                    dest.display()
                ))
            }
            _ => anyhow::bail!("give --server (online) or --data-dir (offline)"),
        },
        AdminCommand::Restore { src, data_dir } => {
            let r = backup::restore(&src, &data_dir)?;
            Ok(format!(
                "restored {} shards ({} files, {} bytes, {} rows) into {}",
                r.shards,
                r.files,
                r.bytes,
                r.rows,
                data_dir.display()
            ))
        }
        AdminCommand::Verify { path } => {
            let r = backup::verify(&path)?;
            Ok(format!(
                "ok: {} shards, {} files, {} bytes, {} rows",
                r.shards, r.files, r.bytes, r.rows
            ))
        }
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}
