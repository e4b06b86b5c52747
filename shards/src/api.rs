//! Request handling: one span per request (request id, route template, shard), the limits on
//! bodies and time, authentication, and the routes themselves. Each route parses and
//! validates on the connection's shard, then asks the owning shard to do the work.

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
    USER_AGENT,
};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use nova_core::identity::{self, AuthEvent, DisplayName, Email, Password, Username};
use nova_core::tokens::{self, AccessClaims, AccessError, RefreshToken};
use nova_core::{shard_for_key, shard_of, CoreError};
use nova_protocol::{self as wire, rfc3339, Route, RouteMiss};

use crate::body::{Body, Chunks};
use crate::error::{ApiError, Fail};
use crate::limits::RateState;
use crate::mesh::{LoginWho, Op, Registration};
use crate::shard::{now_ms, Shard};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_NOVA_SHARD: HeaderName = HeaderName::from_static("x-nova-shard");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
pub(crate) const JSON: &str = "application/json";
const REQUEST_ID_CHARS_MAX: usize = 64;
const USER_AGENT_CHARS_MAX: usize = 256;
/// Longest login (username or email) looked up; anything longer cannot exist.
const LOGIN_BYTES_MAX: usize = 254;
/// Bytes of an oversized body read and thrown away so that the 413 is delivered.
const BODY_DRAIN_BYTES_MAX: u64 = 1024 * 1024;

/// A successful answer.
pub struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) rate: Option<RateState>,
    /// A `Link` header (pagination).
    pub(crate) link: Option<String>,
    /// Sent instead of `body` when set (event streams, large files).
    pub(crate) stream: Option<Chunks>,
    /// Other headers of this answer.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reply {
    pub(crate) fn json(status: StatusCode, value: &impl serde::Serialize) -> Reply {
        Reply::json_bytes(status, Bytes::from(wire::to_json(value)))
    }

    /// A JSON answer already rendered.
    pub(crate) fn json_bytes(status: StatusCode, body: Bytes) -> Reply {
        Reply {
            status,
            body,
            content_type: JSON,
            rate: None,
            link: None,
            stream: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn empty(status: StatusCode) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
            content_type: JSON,
            rate: None,
            link: None,
            stream: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn text(status: StatusCode, body: &'static str) -> Reply {
        Reply {
            status,
            body: Bytes::from_static(body.as_bytes()),
            content_type: "text/plain; charset=utf-8",
            rate: None,
            link: None,
            stream: None,
            headers: Vec::new(),
        }
    }

    /// An answer whose body is streamed as it is produced.
    pub(crate) fn streamed(
        status: StatusCode,
        content_type: &'static str,
        chunks: Chunks,
    ) -> Reply {
        Reply {
            status,
            body: Bytes::new(),
            content_type,
            rate: None,
            link: None,
            stream: Some(chunks),
            headers: Vec::new(),
        }
    }

    /// Adds a header to the answer.
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    fn with_rate(mut self, rate: RateState) -> Reply {
        self.rate = Some(rate);
        self
    }
}

pub(crate) type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Serves one request; never fails (every failure is an error response).
pub async fn handle(shard: Rc<Shard>, mut req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    let started = Instant::now();
    let request_id = request_id(&shard, req.headers());
    let mut route = Route::find(req.method(), req.uri().path());
    // HEAD is a GET whose answer has no body (RFC 9110): hyper leaves the body out of the
    // answer to a HEAD request, headers (Content-Length too) as for GET. Not where a GET does
    // more than read: the live stream opens one, an export spends the user's slot.
    if req.method() == http::Method::HEAD && route == Err(RouteMiss::MethodNotAllowed) {
        if let Ok(get) = Route::find(&http::Method::GET, req.uri().path()) {
            if !matches!(get, Route::Stream | Route::ExportAccount) {
                route = Ok(get);
                *req.method_mut() = http::Method::GET;
            }
        }
    }
    let template = route.map_or("unmatched", Route::template);
    let span = tracing::info_span!("request", id = %request_id, route = template, shard = shard.id, user = tracing::field::Empty);
    let timeout_ms = route
        .ok()
        .and_then(|r| crate::api_media::timeout_ms(r, &shard.cfg))
        .unwrap_or(shard.cfg.request_timeout_ms);
    let deadline = started + Duration::from_millis(timeout_ms);
    // A body coded otherwise than chunked (gzip, say) would be read as if it were not
    // (RFC 9112: 501 for a transfer coding not understood).
    let coded = req
        .headers()
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            !v.to_str()
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
        });
    let result = async {
        if coded {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_encoding",
                "the only transfer coding taken is chunked",
            ));
        }
        let route = match route {
            Ok(route) => route,
            Err(RouteMiss::NotFound) => return Err(ApiError::not_found()),
            Err(RouteMiss::MethodNotAllowed) => {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "this route does not take that method",
                ))
            }
        };
        let work = dispatch(&shard, route, req, peer, deadline);
        crate::shard::until(deadline, work)
            .await
            .unwrap_or_else(|| Err(Fail::Timeout.into()))
    }
    .instrument(span.clone())
    .await;
    let response = match result {
        Ok(reply) => render(reply),
        Err(e) => {
            if e.status.is_server_error() {
                span.in_scope(|| {
                    tracing::warn!(status = e.status.as_u16(), code = e.code, "request failed")
                });
            }
            render_error(e)
        }
    };
    let mut response = response;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID, v);
    }
    headers.insert(X_NOVA_SHARD, HeaderValue::from(shard.id));
    let status = response.status().as_u16();
    shard
        .metrics
        .record(template, status, started.elapsed().as_secs_f64());
    span.in_scope(|| {
        tracing::debug!(
            status,
            elapsed_us = started.elapsed().as_micros() as u64,
            "answered"
        )
    });
    response
}

fn request_id(shard: &Shard, headers: &HeaderMap) -> String {
    if let Some(given) = headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        let ok = !given.is_empty()
            && given.len() <= REQUEST_ID_CHARS_MAX
            && given
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            return given.to_string();
        }
    }
    new_request_id(shard)
}

/// A request id unique within this process: shard and sequence, in hex.
pub fn new_request_id(shard: &Shard) -> String {
    let n = shard.request_seq.get() + 1;
    shard.request_seq.set(n);
    format!("{:x}-{n:x}", shard.id)
}

fn render(reply: Reply) -> Response<Body> {
    let body = match reply.stream {
        Some(chunks) => Body::Stream(chunks),
        None => Body::full(reply.body),
    };
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    if reply.status != StatusCode::NO_CONTENT {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    }
    if let Some(link) = reply.link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(http::header::LINK, link);
    }
    for (name, value) in reply.headers {
        headers.append(name, value);
    }
    if let Some(rate) = reply.rate {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(rate.limit));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(rate.remaining));
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(rate.reset_s));
    }
    response
}

fn render_error(e: ApiError) -> Response<Body> {
    let mut response = Response::new(Body::full(Bytes::from(wire::error_body(
        e.code, &e.message,
    ))));
    *response.status_mut() = e.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    if let Some(s) = e.retry_after_s {
        headers.insert(RETRY_AFTER, HeaderValue::from(s));
    }
    if let Some(limit) = e.limit {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(limit));
        headers.insert(X_RATELIMIT_REMAINING, HeaderValue::from(0u32));
        headers.insert(
            X_RATELIMIT_RESET,
            HeaderValue::from(e.retry_after_s.unwrap_or(1)),
        );
    }
    response
}

async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    match route {
        Route::Health => Ok(Reply {
            status: StatusCode::OK,
            body: Bytes::from_static(br#"{"status":"ok"}"#),
            content_type: JSON,
            rate: None,
            link: None,
            stream: None,
            headers: Vec::new(),
        }),
        Route::Metrics => metrics(shard, deadline).await,
        Route::Register => register(shard, req, peer, deadline).await,
        Route::Login => login(shard, req, peer, deadline).await,
        Route::Refresh => refresh(shard, req, peer, deadline).await,
        Route::Logout => {
            let claims = authenticate(shard, req.headers())?;
            revoke(
                shard,
                claims,
                claims.session_id,
                AuthEvent::Logout,
                peer,
                deadline,
            )
            .await
        }
        Route::RevokeSession(session_id) => {
            let claims = authenticate(shard, req.headers())?;
            revoke(
                shard,
                claims,
                session_id,
                AuthEvent::SessionRevoked,
                peer,
                deadline,
            )
            .await
        }
        Route::ListSessions => sessions(shard, req, deadline).await,
        Route::Me => me(shard, req, deadline).await,
        Route::VerifyEmail => verify_email(shard, req, peer, deadline).await,
        Route::PasswordReset => password_reset(shard, req, peer, deadline).await,
        Route::PasswordResetConfirm => password_reset_confirm(shard, req, peer, deadline).await,
        Route::AdminEmails => admin_emails(shard, req, deadline).await,
        Route::DsbRegister
        | Route::DsbFollow
        | Route::DsbUnfollow
        | Route::DsbCompose
        | Route::DsbUserTimeline
        | Route::DsbHomeTimeline => {
            crate::api_dsb::dispatch(shard, route, req, peer, deadline).await
        }
        Route::Stream
        | Route::CreateConversation
        | Route::ListConversations
        | Route::GetConversation(_)
        | Route::ListMessages(_)
        | Route::SendMessage(_)
        | Route::MarkRead(_)
        | Route::Typing(_)
        | Route::LeaveConversation(_)
        | Route::EditMessage(_)
        | Route::DeleteMessage(_) => {
            crate::api_messages::dispatch(shard, route, req, deadline).await
        }
        Route::MediaUpload
        | Route::GetMedia(_)
        | Route::DeleteMedia(_)
        | Route::MediaFile(_)
        | Route::TusOptions
        | Route::TusCreate
        | Route::TusHead(_)
        | Route::TusPatch(_)
        | Route::TusDelete(_) => crate::api_media::dispatch(shard, route, req, deadline).await,
        Route::Notifications
        | Route::NotificationsRead
        | Route::NotificationsUnreadCount
        | Route::PushVapidKey
        | Route::PushSubscriptions
        | Route::PushSubscribe
        | Route::PushUnsubscribe => crate::api_notify::dispatch(shard, route, req, deadline).await,
        Route::DeleteAccount | Route::ExportAccount => {
            crate::api_account::dispatch(shard, route, req, peer, deadline).await
        }
        Route::Search | Route::SearchBody | Route::TagPosts => {
            crate::api_search::dispatch(shard, route, req, deadline).await
        }
        Route::CreateReport
        | Route::ModReports
        | Route::ModResolveReport(_)
        | Route::ModRemovePost(_)
        | Route::ModRemoveComment(_)
        | Route::ModSuspend(_)
        | Route::ModUnsuspend(_)
        | Route::ModGrantModerator(_)
        | Route::ModRevokeModerator(_)
        | Route::ModAudit => crate::api_moderation::dispatch(shard, route, req, deadline).await,
        social => crate::api_social::dispatch(shard, social, req, deadline).await,
    }
}

/// Reads a JSON body within `body_bytes_max` and parses it.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    shard: &Shard,
    req: Request<Incoming>,
) -> Result<T> {
    let headers = req.headers();
    if let Some(ct) = headers.get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case(JSON) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            ));
        }
    }
    let max = shard.cfg.body_bytes_max;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than {max} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_DRAIN_BYTES_MAX) {
        // Too big to be worth reading just to discard it: refuse now, the connection closes.
        return Err(too_large());
    }
    // Read up to the limit; past it, keep reading (and discarding) up to the drain limit so
    // that the 413 reaches the client before the connection closes. Closing a socket with
    // unread input makes the kernel send a reset, which can destroy the answer in flight.
    let mut over = declared.is_some_and(|n| n > max as u64);
    let mut seen: u64 = 0;
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(max));
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the body could not be read",
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if over || buf.len() + data.len() > max {
            over = true;
            if seen > BODY_DRAIN_BYTES_MAX {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over {
        return Err(too_large());
    }
    Ok(wire::parse_json(&buf)?)
}

pub(crate) fn authenticate(shard: &Shard, headers: &HeaderMap) -> Result<AccessClaims> {
    let value = headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthorized(
            "unauthorized",
            "this route needs Authorization: Bearer <access token>",
        )
    })?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("invalid_token", "the access token is not valid"))?;
    let token = bearer(value)
        .ok_or_else(|| ApiError::unauthorized("invalid_token", "the access token is not valid"))?;
    authenticate_token(shard, token)
}

/// Verifies an access token given some other way than the header (the event stream takes
/// one in its query, as browsers' EventSource cannot send headers).
pub(crate) fn authenticate_token(shard: &Shard, token: &str) -> Result<AccessClaims> {
    let claims =
        tokens::verify_access(&shard.token_key, token, now_ms() / 1000).map_err(|e| match e {
            AccessError::Expired => {
                ApiError::unauthorized("token_expired", "the access token has expired; refresh it")
            }
            AccessError::Invalid => {
                ApiError::unauthorized("invalid_token", "the access token is not valid")
            }
        })?;
    if shard.is_revoked(claims.session_id) {
        return Err(ApiError::unauthorized(
            "session_revoked",
            "this session has ended; log in again",
        ));
    }
    // A suspension revokes every session too; this covers a token whose revocation has not
    // reached this shard's deny list.
    if shard.is_suspended(claims.user_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_suspended",
            "this account is suspended",
        ));
    }
    tracing::Span::current().record("user", claims.user_id);
    Ok(claims)
}

fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(USER_AGENT_CHARS_MAX)
        .collect()
}

fn user_view(user: &identity::User) -> wire::UserView {
    wire::UserView {
        id: user.id.to_string(),
        username: user.username.clone(),
        display_name: user.display_name.clone(),
        email: user.email.clone(),
        email_verified: user.email_verified,
        created_at: rfc3339(user.created_ms),
        media: None,
    }
}

fn token_response(shard: &Shard, issued: identity::Issued) -> Reply {
    let ttl = shard.cfg.access_token_ttl_s;
    let claims = AccessClaims {
        user_id: issued.user.id,
        session_id: issued.session_id,
        expires_at_s: now_ms() / 1000 + ttl,
    };
    Reply::json(
        StatusCode::OK,
        &wire::TokenResponse {
            access_token: tokens::sign_access(&shard.token_key, claims),
            refresh_token: issued.refresh_token,
            token_type: "Bearer",
            expires_in: ttl,
            session_id: issued.session_id.to_string(),
            user: user_view(&issued.user),
        },
    )
}

async fn metrics(shard: &Rc<Shard>, deadline: Instant) -> Result<Reply> {
    let mut snapshots = Vec::with_capacity(shard.shards);
    for k in 0..shard.shards {
        snapshots.push(
            shard
                .ask(k, deadline, |reply| Op::Metrics { reply })
                .await?,
        );
    }
    let mut text = crate::metrics::render(snapshots);
    text.push_str(&shard.push.metrics_text());
    Ok(Reply {
        status: StatusCode::OK,
        body: Bytes::from(text),
        content_type: "text/plain; version=0.0.4",
        rate: None,
        link: None,
        stream: None,
        headers: Vec::new(),
    })
}

/// Hashes `password` and makes the account (username, email, display name) on the shard
/// its username hashes to (`Op::Register`, which claims the email first).
pub(crate) async fn create_account(
    shard: &Rc<Shard>,
    (username, email, display_name): (Username, Email, DisplayName),
    password: &Password,
    peer: IpAddr,
    deadline: Instant,
) -> std::result::Result<identity::User, Fail> {
    let password_hash = shard.hasher.hash(password.as_str().to_string()).await?;
    let home = shard_for_key(&username.key(), shard.shards);
    let new = Registration {
        username,
        email,
        display_name,
        password_hash,
        ip: peer.to_string(),
    };
    shard
        .ask(home, deadline, |reply| Op::Register { new, reply })
        .await
}

async fn register(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let body: wire::RegisterRequest = json_body(shard, req).await?;
    let username = Username::parse(&body.username)?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(&body.password)?;
    let display_name = DisplayName::parse(body.display_name.as_deref().unwrap_or(&body.username))?;
    let rate = shard.limits.registrations_ip.hit(&peer)?;
    let who = (username, email, display_name);
    let user = create_account(shard, who, &password, peer, deadline).await?;
    Ok(Reply::json(
        StatusCode::CREATED,
        &wire::UserEnvelope {
            user: user_view(&user),
        },
    )
    .with_rate(rate))
}

async fn login(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    shard.limits.login_failures_ip.check_blocked(&peer)?;
    let agent = user_agent(req.headers());
    let body: wire::LoginRequest = json_body(shard, req).await?;
    let login = body.login.trim();
    let who = if login.len() > LOGIN_BYTES_MAX {
        None
    } else if login.contains('@') {
        match Email::parse(login) {
            Ok(email) => {
                let key = email.key();
                let owner = shard
                    .ask(shard_for_key(&key, shard.shards), deadline, |reply| {
                        Op::EmailOwner { key, reply }
                    })
                    .await?;
                owner.map(|claim| LoginWho::UserId(claim.user_id))
            }
            Err(_) => None,
        }
    } else {
        Some(LoginWho::UsernameKey(login.to_ascii_lowercase()))
    };
    let outcome = match who {
        Some(who) => {
            let target = match &who {
                LoginWho::UsernameKey(key) => shard_for_key(key, shard.shards),
                LoginWho::UserId(id) => shard_of(*id),
            };
            let ip = peer.to_string();
            let password = body.password;
            shard
                .ask(target, deadline, |reply| Op::Login {
                    who,
                    password,
                    ip,
                    user_agent: agent,
                    reply,
                })
                .await
        }
        None => {
            // Spend the same time as a wrong password so unknown logins do not stand out.
            let _ = shard
                .hasher
                .verify(body.password, shard.dummy_hash.to_string())
                .await;
            Err(CoreError::InvalidCredentials.into())
        }
    };
    match outcome {
        Ok(issued) => Ok(token_response(shard, issued)),
        Err(Fail::Core(CoreError::InvalidCredentials)) => {
            shard.limits.login_failures_ip.fail(&peer)?;
            Err(Fail::Core(CoreError::InvalidCredentials).into())
        }
        Err(other) => Err(other.into()),
    }
}

async fn refresh(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let body: wire::RefreshRequest = json_body(shard, req).await?;
    let token = RefreshToken::parse(&body.refresh_token)
        .ok_or(Fail::Core(CoreError::InvalidRefreshToken))?;
    if nova_core::shard_of(token.session_id) >= shard.shards {
        return Err(Fail::Core(CoreError::InvalidRefreshToken).into());
    }
    let target = shard_of(token.session_id);
    let ip = peer.to_string();
    match shard
        .ask(target, deadline, |reply| Op::Refresh { token, ip, reply })
        .await?
    {
        identity::Refreshed::Rotated(issued) => Ok(token_response(shard, issued)),
        identity::Refreshed::Reused { .. } => Err(Fail::Core(CoreError::RefreshTokenReused).into()),
    }
}

async fn revoke(
    shard: &Rc<Shard>,
    claims: AccessClaims,
    session_id: u64,
    event: AuthEvent,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let user_id = claims.user_id;
    let ip = peer.to_string();
    shard
        .ask(shard_of(user_id), deadline, |reply| Op::RevokeSession {
            user_id,
            session_id,
            ip,
            event,
            reply,
        })
        .await?;
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}

async fn sessions(shard: &Rc<Shard>, req: Request<Incoming>, deadline: Instant) -> Result<Reply> {
    let claims = authenticate(shard, req.headers())?;
    let user_id = claims.user_id;
    let sessions = shard
        .ask(shard_of(user_id), deadline, |reply| Op::Sessions {
            user_id,
            reply,
        })
        .await?;
    let items = sessions
        .iter()
        .map(|s| wire::SessionView {
            id: s.id.to_string(),
            created_at: rfc3339(s.created_ms),
            last_used_at: rfc3339(s.last_used_ms),
            ip: s.ip.clone(),
            user_agent: s.user_agent.clone(),
            current: s.id == claims.session_id,
        })
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &wire::List { items, next: None },
    ))
}

async fn me(shard: &Rc<Shard>, req: Request<Incoming>, deadline: Instant) -> Result<Reply> {
    let claims = authenticate(shard, req.headers())?;
    let user_id = claims.user_id;
    let user = shard
        .ask(shard_of(user_id), deadline, |reply| Op::GetUser {
            user_id,
            reply,
        })
        .await?;
    let user = user.ok_or_else(ApiError::not_found)?;
    let used_bytes = shard
        .ask(shard_of(user_id), deadline, |reply| Op::MediaUsage {
            user_id,
            reply,
        })
        .await?;
    let mut view = user_view(&user);
    view.media = Some(wire::MediaUsageView {
        used_bytes,
        quota_bytes: shard.cfg.media_quota_bytes,
    });
    Ok(Reply::json(
        StatusCode::OK,
        &wire::UserEnvelope { user: view },
    ))
}

/// The shard that owns a one-time token, or `invalid_token` when it cannot be ours.
fn one_time_shard(shard: &Shard, token: &str) -> Result<usize> {
    tokens::one_time_owner(token)
        .map(shard_of)
        .filter(|k| *k < shard.shards)
        .ok_or_else(|| Fail::Core(CoreError::InvalidToken).into())
}

async fn verify_email(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let body: wire::TokenRequest = json_body(shard, req).await?;
    let target = one_time_shard(shard, &body.token)?;
    let ip = peer.to_string();
    let token = body.token;
    let user = shard
        .ask(target, deadline, |reply| Op::VerifyEmail {
            token,
            ip,
            reply,
        })
        .await?;
    Ok(Reply::json(
        StatusCode::OK,
        &wire::UserEnvelope {
            user: user_view(&user),
        },
    ))
}

async fn password_reset(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let body: wire::PasswordResetRequest = json_body(shard, req).await?;
    let email = Email::parse(&body.email)?;
    let rate = shard.limits.password_resets_ip.hit(&peer)?;
    let key = email.key();
    let owner = shard
        .ask(shard_for_key(&key, shard.shards), deadline, |reply| {
            Op::EmailOwner { key, reply }
        })
        .await?;
    if let Some(claim) = owner {
        let user_id = claim.user_id;
        let ip = peer.to_string();
        match shard
            .ask(shard_of(user_id), deadline, |reply| Op::RequestReset {
                user_id,
                ip,
                reply,
            })
            .await
        {
            // A claim without its user (a registration that never finished): nothing to send.
            Ok(()) | Err(Fail::Core(CoreError::NotFound)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Reply::json(StatusCode::ACCEPTED, &wire::Status { status: "queued" }).with_rate(rate))
}

async fn password_reset_confirm(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
) -> Result<Reply> {
    let body: wire::PasswordResetConfirm = json_body(shard, req).await?;
    let password = Password::parse(&body.password)?;
    let target = one_time_shard(shard, &body.token)?;
    let ip = peer.to_string();
    let token = body.token;
    let password = password.as_str().to_string();
    shard
        .ask(target, deadline, |reply| Op::ConfirmReset {
            token,
            password,
            ip,
            reply,
        })
        .await?;
    Ok(Reply::empty(StatusCode::NO_CONTENT))
}

async fn admin_emails(
    shard: &Rc<Shard>,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let Some(expected) = shard.cfg.admin_token.as_deref() else {
        return Err(ApiError::not_found());
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or("");
    let matches: bool = subtle::ConstantTimeEq::ct_eq(given.as_bytes(), expected.as_bytes()).into();
    if !matches {
        return Err(ApiError::unauthorized(
            "unauthorized",
            "this route needs the admin token",
        ));
    }
    let to = req.uri().query().and_then(|q| query_param(q, "to"));
    let mut all = Vec::new();
    for k in 0..shard.shards {
        let to = to.clone();
        all.extend(
            shard
                .ask(k, deadline, |reply| Op::Emails { to, reply })
                .await?,
        );
    }
    all.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then(b.id.cmp(&a.id)));
    let items = all
        .into_iter()
        .take(100)
        .map(|e| wire::EmailView {
            id: e.id.to_string(),
            to: e.to,
            kind: e.kind,
            subject: e.subject,
            body: e.body,
            status: e.status.as_str(),
            created_at: rfc3339(e.created_ms),
        })
        .collect();
    Ok(Reply::json(
        StatusCode::OK,
        &wire::List { items, next: None },
    ))
}

/// The percent-decoded value of `name` in a query string.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param("to=bob%40example.org&x=1", "to").as_deref(),
            Some("bob@example.org")
        );
        assert_eq!(query_param("a=1", "to"), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
    }
}
