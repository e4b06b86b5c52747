//! The typed messages shards send each other. Every request-caused message carries its
//! deadline; the receiver drops work whose deadline has passed. Replies travel on a channel
//! carried in the message.

use std::time::Instant;

use nova_core::communication::QueuedEmail;
use nova_core::identity::{AuthEvent, Email, EmailClaim, Issued, Refreshed, Session, User};
use nova_core::tokens::RefreshToken;

use crate::error::Fail;
use crate::metrics::Snapshot;

pub type Reply<T> = flume::Sender<Result<T, Fail>>;

/// Who is logging in: a username's key routes to the user's shard directly; an email has
/// been resolved to the user's id on the email's shard first.
#[derive(Debug, Clone)]
pub enum LoginWho {
    UsernameKey(String),
    UserId(u64),
}

/// Operations a shard runs on data it owns.
pub enum Op {
    /// Who holds the claim on an email key (on the email's shard).
    EmailOwner {
        key: String,
        reply: Reply<Option<EmailClaim>>,
    },
    /// Claim an email for a user being registered (on the email's shard).
    ClaimEmail {
        email: Email,
        user_id: u64,
        reply: Reply<()>,
    },
    /// Give up a claim (the registration failed after claiming).
    ReleaseEmail {
        key: String,
        user_id: u64,
        reply: Reply<()>,
    },
    /// Does this user exist (on the user's shard)?
    UserExists {
        user_id: u64,
        reply: Reply<bool>,
    },
    /// Register a user on its home shard (the shard of its username).
    Register {
        new: Registration,
        reply: Reply<User>,
    },
    Login {
        who: LoginWho,
        password: String,
        ip: String,
        user_agent: String,
        reply: Reply<Issued>,
    },
    Refresh {
        token: RefreshToken,
        ip: String,
        reply: Reply<Refreshed>,
    },
    RevokeSession {
        user_id: u64,
        session_id: u64,
        ip: String,
        event: AuthEvent,
        reply: Reply<()>,
    },
    Sessions {
        user_id: u64,
        reply: Reply<Vec<Session>>,
    },
    GetUser {
        user_id: u64,
        reply: Reply<Option<User>>,
    },
    VerifyEmail {
        token: String,
        ip: String,
        reply: Reply<User>,
    },
    RequestReset {
        user_id: u64,
        ip: String,
        reply: Reply<()>,
    },
    ConfirmReset {
        token: String,
        password: String,
        ip: String,
        reply: Reply<()>,
    },
    Emails {
        to: Option<String>,
        reply: Reply<Vec<QueuedEmail>>,
    },
    Metrics {
        reply: Reply<Snapshot>,
    },
}

/// A registration, validated and with its password already hashed.
#[derive(Debug)]
pub struct Registration {
    pub username: nova_core::identity::Username,
    pub email: Email,
    pub display_name: nova_core::identity::DisplayName,
    pub password_hash: String,
    pub ip: String,
}

pub enum ShardMsg {
    Call {
        op: Op,
        deadline: Instant,
    },
    /// Sessions revoked somewhere: refuse their access tokens until `until_s`.
    Revoked {
        sessions: Vec<(u64, u64)>,
    },
    /// Stop accepting, finish open connections, then say so on `done`.
    Drain {
        done: flume::Sender<usize>,
    },
    /// Every shard has drained: stop serving the mesh and end the executor.
    Exit,
}
