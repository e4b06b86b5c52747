//! `Fail` is what an operation on a shard can end in; `ApiError` is what the client sees.
//! The mapping between the two (and from domain errors to HTTP status) lives here, once.

use http::StatusCode;
use nova_core::CoreError;
use nova_protocol::WireError;

use crate::hasher::HashError;

/// Why an operation failed, anywhere in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Fail {
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A rate limit was hit; retry after this many seconds.
    #[error("rate limited")]
    RateLimited { retry_after_s: u64, limit: u32 },
    /// A bounded queue (mesh, hashing) is full: shed load.
    #[error("overloaded")]
    Busy,
    /// The request's deadline passed before the work was done.
    #[error("deadline passed")]
    Timeout,
    /// A shard or a thread the work needed has stopped.
    #[error("a shard is unavailable")]
    Unavailable,
    #[error("hashing: {0}")]
    Hash(String),
}

impl From<HashError> for Fail {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Busy => Fail::Busy,
            HashError::Stopped => Fail::Unavailable,
            HashError::Failed(m) => Fail::Hash(m),
        }
    }
}

impl From<nova_storage::StorageError> for Fail {
    fn from(e: nova_storage::StorageError) -> Self {
        Fail::Core(CoreError::Storage(e))
    }
}

/// An error as the client will see it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// For 429: the limit that was hit, for the X-RateLimit-* headers.
    pub limit: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
            limit: None,
        }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn unauthorized(code: &'static str, message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Malformed(m) => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", m),
            WireError::Shape(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", m)
            }
        }
    }
}

impl From<nova_core::Invalid> for ApiError {
    fn from(v: nova_core::Invalid) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, v.code, v.message)
    }
}

impl From<Fail> for ApiError {
    fn from(f: Fail) -> Self {
        use StatusCode as S;
        match f {
            Fail::Core(e) => match e {
                CoreError::Invalid(v) => v.into(),
                CoreError::UsernameTaken => {
                    ApiError::new(S::CONFLICT, "username_taken", e.to_string())
                }
                CoreError::EmailTaken => ApiError::new(S::CONFLICT, "email_taken", e.to_string()),
                CoreError::InvalidCredentials => {
                    ApiError::new(S::UNAUTHORIZED, "invalid_credentials", e.to_string())
                }
                CoreError::InvalidRefreshToken => {
                    ApiError::new(S::UNAUTHORIZED, "invalid_refresh_token", e.to_string())
                }
                CoreError::RefreshTokenReused => {
                    ApiError::new(S::UNAUTHORIZED, "refresh_token_reused", e.to_string())
                }
                CoreError::InvalidToken => {
                    ApiError::new(S::BAD_REQUEST, "invalid_token", e.to_string())
                }
                CoreError::TokenExpired => {
                    ApiError::new(S::BAD_REQUEST, "token_expired", e.to_string())
                }
                CoreError::NotFound => ApiError::not_found(),
                CoreError::Forbidden(v) => ApiError::new(S::FORBIDDEN, v.code, v.message),
                CoreError::Corrupt(_) | CoreError::Storage(_) => {
                    tracing::error!(error = %e, "storage failure");
                    internal()
                }
                _ => {
                    tracing::error!(error = %e, "unmapped domain error");
                    internal()
                }
            },
            Fail::RateLimited {
                retry_after_s,
                limit,
            } => ApiError {
                retry_after_s: Some(retry_after_s.max(1)),
                limit: Some(limit),
                ..ApiError::new(
                    S::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many attempts; retry later",
                )
            },
            Fail::Busy => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "the server is busy; retry shortly",
                )
            },
            Fail::Timeout => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request took too long",
                )
            },
            Fail::Unavailable => ApiError {
                retry_after_s: Some(1),
                ..ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the server is shutting down",
                )
            },
            Fail::Hash(m) => {
                tracing::error!(error = %m, "password hashing failed");
                internal()
            }
        }
    }
}

fn internal() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "something went wrong on our side",
    )
}
