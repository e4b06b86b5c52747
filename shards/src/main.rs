//! The `nova` binary: `nova serve` runs the platform.

#![deny(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod api_dsb;
mod api_messages;
mod api_social;
mod body;
mod config;
mod error;
mod hasher;
mod http;
mod limits;
mod mail;
mod mail_admin;
mod mesh;
mod messaging;
mod metrics;
mod server;
mod shard;
mod social;
mod stream;

use clap::{Parser, Subcommand};

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
    /// Offline maintenance of a data directory (the server must be stopped).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The email queue: list emails by state, send dead ones again.
    #[command(subcommand)]
    Emails(mail_admin::EmailsCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
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
        Command::Admin(admin) => {
            let result = match admin {
                AdminCommand::Emails(cmd) => mail_admin::run(cmd),
            };
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nova: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
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
