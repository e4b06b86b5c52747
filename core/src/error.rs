use nova_storage::{StorageError, WriteFailure};

/// A rejected input, named by the field and a stable machine code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// snake_case error code for clients, e.g. `invalid_username`.
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Invalid {
        Invalid {
            code,
            message: message.into(),
        }
    }
}

/// Every way a domain operation can fail. Mapped to HTTP status in one place, in `shards`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// Input that breaks a rule (length, characters, reserved name...).
    #[error("{}", .0.message)]
    Invalid(Invalid),
    /// The username is registered already (compared case-insensitively).
    #[error("that username is taken")]
    UsernameTaken,
    /// The email is registered already (compared case-insensitively).
    #[error("that email address is already registered")]
    EmailTaken,
    /// Unknown login or wrong password; deliberately not saying which.
    #[error("wrong login or password")]
    InvalidCredentials,
    /// The refresh token is not one this server issued for a live session.
    #[error("the refresh token is not valid")]
    InvalidRefreshToken,
    /// A refresh token that was already rotated was presented again: the session is revoked.
    #[error("this refresh token was already used; the session has been revoked")]
    RefreshTokenReused,
    /// An email-verification or password-reset token that is unknown or used.
    #[error("the token is not valid or was already used")]
    InvalidToken,
    /// An email-verification or password-reset token past its expiry.
    #[error("the token has expired")]
    TokenExpired,
    /// The object does not exist, or the caller may not know that it does.
    #[error("not found")]
    NotFound,
    /// Allowed to know, not allowed to do (a recipient who does not take messages from you).
    #[error("{}", .0.message)]
    Forbidden(Invalid),
    /// A stored record could not be decoded: a bug or a damaged file.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Storage failed underneath.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl CoreError {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> CoreError {
        CoreError::Invalid(Invalid::new(code, message))
    }
}

impl CoreError {
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> CoreError {
        CoreError::Forbidden(Invalid::new(code, message))
    }
}

impl From<Invalid> for CoreError {
    fn from(v: Invalid) -> Self {
        CoreError::Invalid(v)
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for CoreError {
            fn from(e: $t) -> Self {
                CoreError::Storage(StorageError::from(e))
            }
        }
    )*};
}
from_redb!(redb::StorageError, redb::TableError, redb::TransactionError);

impl WriteFailure for CoreError {
    fn poisons_batch(&self) -> bool {
        matches!(self, CoreError::Storage(_) | CoreError::Corrupt(_))
    }
}
