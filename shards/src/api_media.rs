//! Media routes: uploads (`POST /v1/media` with the whole file as the body, and tus 1.0 at
//! `/v1/uploads` for large or resumable ones), records, deletion, and serving renditions with
//! ranges, ETags and long-lived caching (signed, expiring URLs for private media).
//!
//! The request path only moves bytes and asks: probing, hashing and fsync run on the intake
//! thread, transcoding on its own threads, files are read with glommio's io_uring files.

use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderName, HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, LOCATION, RANGE,
};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use nova_core::media::{self as records, MediaKind, MediaState, NewMedia, TusUpload};
use nova_core::{shard_of, CoreError};
use nova_protocol::{self as wire, rfc3339, tus, Route};

use crate::api::{authenticate, query_param, Reply, Result};
use crate::error::{ApiError, Fail};
use crate::media_jobs::Intake;
use crate::mesh::Op;
use crate::shard::{now_ms, Shard};

/// Bytes of a rendition read per chunk when serving it.
const SERVE_CHUNK_BYTES: usize = 256 * 1024;
/// Bytes of a tus PATCH body gathered before they are handed to the intake thread.
const TUS_WRITE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of an oversized body read and thrown away so that the 413 is delivered.
const BODY_DRAIN_BYTES_MAX: u64 = 1024 * 1024;
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn header(name: &'static str, value: impl ToString) -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static(name),
        HeaderValue::from_str(&value.to_string()).unwrap_or(HeaderValue::from_static("")),
    )
}

fn tus_headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![header(tus::RESUMABLE, tus::PROTOCOL)]
}

/// The media timeout for routes that carry a file, else `None` (the usual request timeout).
pub(crate) fn timeout_ms(route: Route, cfg: &crate::config::Config) -> Option<u64> {
    matches!(route, Route::MediaUpload | Route::TusPatch(_)).then_some(cfg.media_request_timeout_ms)
}

pub(crate) async fn dispatch(
    shard: &Rc<Shard>,
    route: Route,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    match route {
        Route::MediaFile(id) => serve_file(shard, id, req, deadline).await,
        Route::TusOptions => {
            let mut reply = Reply::empty(StatusCode::NO_CONTENT);
            reply.headers = tus_headers();
            reply.headers.push(header(tus::VERSION, tus::PROTOCOL));
            reply.headers.push(header(tus::EXTENSION, tus::EXTENSIONS));
            reply
                .headers
                .push(header(tus::MAX_SIZE, shard.cfg.media_video_bytes_max));
            Ok(reply)
        }
        _ => {
            let user = authenticate(shard, req.headers())?.user_id;
            match route {
                Route::MediaUpload => upload(shard, user, req, deadline).await,
                Route::GetMedia(id) => get(shard, user, id, deadline).await,
                Route::DeleteMedia(id) => {
                    let target = owner_shard(shard, id)?;
                    shard
                        .ask(target, deadline, |reply| Op::MediaDelete {
                            id,
                            owner: user,
                            reply,
                        })
                        .await?;
                    Ok(Reply::empty(StatusCode::NO_CONTENT))
                }
                Route::TusCreate => tus_create(shard, user, req, deadline).await,
                Route::TusHead(id) => tus_head(shard, user, id, deadline).await,
                Route::TusPatch(id) => tus_patch(shard, user, id, req, deadline).await,
                Route::TusDelete(id) => tus_delete(shard, user, id, deadline).await,
                _ => Err(ApiError::not_found()),
            }
        }
    }
}

/// The shard of a media or upload id, if the id can be ours.
fn owner_shard(shard: &Shard, id: u64) -> Result<usize> {
    let k = shard_of(id);
    if k < shard.shards {
        Ok(k)
    } else {
        Err(ApiError::not_found())
    }
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "media_too_large",
        format!("the body is larger than {max} bytes; use resumable uploads at /v1/uploads"),
    )
}

fn bad_body() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad_body",
        "the body could not be read",
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a whole raw body of at most `max` bytes.
async fn raw_body(req: Request<Incoming>, max: usize) -> Result<Bytes> {
    let declared = declared_length(req.headers());
    if declared.is_some_and(|n| n > max as u64 + BODY_DRAIN_BYTES_MAX) {
        // Too big to be worth reading just to discard it: refuse now, the connection closes.
        return Err(too_large(max as u64));
    }
    // Slightly over: read and drop the rest so that the 413 reaches the client (closing a
    // socket with unread input resets it, which can destroy the answer in flight).
    let mut over = declared.is_some_and(|n| n > max as u64);
    let mut buf = BytesMut::with_capacity(declared.map_or(64 * 1024, |n| n as usize).min(max));
    let mut body = req.into_body();
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| bad_body())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen += data.len() as u64;
        if over || buf.len() + data.len() > max {
            // Keep reading (and dropping) a little so that the 413 reaches the client.
            over = true;
            if seen > max as u64 + BODY_DRAIN_BYTES_MAX {
                break;
            }
            continue;
        }
        buf.extend_from_slice(&data);
    }
    if over {
        return Err(too_large(max as u64));
    }
    if buf.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "send the file as the request body",
        ));
    }
    Ok(buf.freeze())
}

/// `?private=`: `true` or `1`, `false` or `0` (any case), absent: false. Anything else is
/// refused rather than taken as public.
fn wants_private(req: &Request<Incoming>) -> Result<bool> {
    let Some(v) = req.uri().query().and_then(|q| query_param(q, "private")) else {
        return Ok(false);
    };
    if v == "1" || v.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if v == "0" || v.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_private",
            "private is true or false",
        ))
    }
}

fn new_media(owner: u64, private: bool, intake: &Intake) -> NewMedia {
    let p = &intake.probe;
    let (width, height) = p.display_size();
    NewMedia {
        id: 0,
        owner,
        kind: match p.kind {
            nova_media::Kind::Image => MediaKind::Image,
            nova_media::Kind::Video => MediaKind::Video,
        },
        private,
        original: records::Blob {
            id: intake.blob.clone(),
            bytes: intake.bytes,
        },
        metadata: records::Metadata {
            container: p.container.clone(),
            width,
            height,
            rotation: p.rotation,
            duration_ms: p.duration_ms,
            frame_rate: p.frame_rate,
            video_codec: p.video_codec.clone(),
            audio_codec: p.audio_codec.clone(),
            blurhash: None,
        },
    }
}

async fn upload(
    shard: &Rc<Shard>,
    user: u64,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let private = wants_private(&req)?;
    let home = shard_of(user);
    // A cheap early refusal: someone already at their quota sends no file for nothing.
    let used = shard
        .ask(home, deadline, |reply| Op::MediaUsage {
            user_id: user,
            reply,
        })
        .await?;
    if used >= shard.cfg.media_quota_bytes {
        return Err(quota_full(shard));
    }
    let data = raw_body(req, shard.cfg.media_upload_bytes_max).await?;
    let (intake, pin) = shard.media.intake(home, data).await?;
    let new = new_media(user, private, &intake);
    let media = shard
        .ask(home, deadline, |reply| Op::MediaCreate { new, reply })
        .await;
    // The record (or its failure) is committed: the blob needs no pin any more.
    drop(pin);
    let media = media.map_err(quota_status)?;
    let view = shard
        .ask(home, deadline, |reply| Op::MediaGet {
            id: media.id,
            reply,
        })
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::json(
        StatusCode::ACCEPTED,
        &wire::MediaEnvelope {
            media: media_view(shard, &view),
        },
    ))
}

/// Over the quota is a 413, like any other "too much", wherever it is found.
fn quota_status(f: Fail) -> ApiError {
    match f {
        Fail::Core(CoreError::Invalid(v)) if v.code == "quota_exceeded" => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, v.code, v.message)
        }
        other => other.into(),
    }
}

fn quota_full(shard: &Shard) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "quota_exceeded",
        format!(
            "your media storage is full ({} bytes)",
            shard.cfg.media_quota_bytes
        ),
    )
}

/// The URL of a rendition: plain for public media, signed and expiring for private media.
fn rendition_url(shard: &Shard, media: &records::Media, name: &str) -> String {
    url_for(shard, media.id, name, media.private)
}

/// The URL of rendition `name` of media `id`, signed and expiring when `signed`.
pub(crate) fn url_for(shard: &Shard, id: u64, name: &str, signed: bool) -> String {
    let base = format!("/v1/media/{id}/{name}");
    if !signed {
        return base;
    }
    let expires = now_ms() / 1000 + shard.cfg.media_url_ttl_s;
    let sig = records::sign_url(&shard.media.url_key, id, name, expires);
    format!("{base}?expires={expires}&sig={sig}")
}

fn media_view(shard: &Shard, v: &records::MediaView) -> wire::MediaView {
    let m = &v.media;
    wire::MediaView {
        id: m.id.to_string(),
        owner: m.owner.to_string(),
        kind: m.kind.as_str(),
        state: m.state.as_str(),
        failure: match &m.state {
            MediaState::Failed(reason) => Some(reason.clone()),
            _ => None,
        },
        private: m.private,
        bytes: m.original.bytes,
        created_at: rfc3339(m.created_ms),
        metadata: wire::MediaMetadataView {
            container: v.metadata.container.clone(),
            width: v.metadata.width,
            height: v.metadata.height,
            rotation: v.metadata.rotation,
            duration_ms: v.metadata.duration_ms,
            frame_rate: v.metadata.frame_rate,
            video_codec: v.metadata.video_codec.clone(),
            audio_codec: v.metadata.audio_codec.clone(),
            blurhash: v.metadata.blurhash.clone(),
        },
        renditions: v
            .renditions
            .iter()
            .map(|r| wire::RenditionView {
                name: r.name.clone(),
                url: rendition_url(shard, m, &r.name),
                mime: r.mime.clone(),
                width: r.width,
                height: r.height,
                bytes: r.bytes,
            })
            .collect(),
    }
}

async fn get(shard: &Rc<Shard>, user: u64, id: u64, deadline: Instant) -> Result<Reply> {
    let target = owner_shard(shard, id)?;
    let view = shard
        .ask(target, deadline, |reply| Op::MediaGet { id, reply })
        .await?
        .filter(|v| !v.media.private || v.media.owner == user)
        .ok_or_else(ApiError::not_found)?;
    Ok(Reply::json(
        StatusCode::OK,
        &wire::MediaEnvelope {
            media: media_view(shard, &view),
        },
    ))
}

fn static_mime(mime: &str) -> &'static str {
    match mime {
        "image/jpeg" => "image/jpeg",
        "video/mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// A single byte range of a `len`-byte file: `Ok(None)` for no (or an ignored) Range,
/// `Err(())` when it cannot be satisfied.
fn parse_range(value: Option<&str>, len: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole file is a valid answer
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len.saturating_sub(1))
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if len == 0 || start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn serve_file(
    shard: &Rc<Shard>,
    id: u64,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    let path = req.uri().path();
    let name = path.rsplit('/').next().unwrap_or("").to_string();
    if name.is_empty() || name.len() > records::RENDITION_NAME_BYTES_MAX {
        return Err(ApiError::not_found());
    }
    let target = owner_shard(shard, id)?;
    let query = req.uri().query().unwrap_or("");
    let signed = match (query_param(query, "expires"), query_param(query, "sig")) {
        (Some(e), Some(sig)) => Some((e.parse::<u64>().unwrap_or(0), sig)),
        _ => None,
    };
    let lookup_name = name.clone();
    let (media, r) = shard
        .ask(target, deadline, |reply| Op::MediaRendition {
            id,
            name: lookup_name,
            reply,
        })
        .await?
        .ok_or_else(ApiError::not_found)?;
    let mut cache = IMMUTABLE.to_string();
    if media.private {
        let now_s = now_ms() / 1000;
        let ok = signed.as_ref().is_some_and(|(expires, sig)| {
            records::verify_url(&shard.media.url_key, id, &name, *expires, sig, now_s)
        });
        if !ok {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_signature",
                "this media needs a valid, unexpired signed URL",
            ));
        }
        let left = signed.map_or(0, |(e, _)| e.saturating_sub(now_s));
        cache = format!("private, max-age={left}, immutable");
    }
    let etag = format!("\"{}\"", r.blob);
    let mut headers = vec![
        header("etag", &etag),
        header("cache-control", &cache),
        header("accept-ranges", "bytes"),
    ];
    let _ = (ETAG, CACHE_CONTROL, ACCEPT_RANGES);
    let matches = req
        .headers()
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == etag || t.trim() == "*" || t.trim() == format!("W/{etag}"))
        });
    let content_type = static_mime(&r.mime);
    if matches {
        let mut reply = Reply::empty(StatusCode::NOT_MODIFIED);
        reply.content_type = content_type;
        reply.headers = headers;
        return Ok(reply);
    }
    let len = r.bytes;
    let range = parse_range(req.headers().get(RANGE).and_then(|v| v.to_str().ok()), len);
    let (status, start, end) = match range {
        Ok(None) => (StatusCode::OK, 0, len.saturating_sub(1)),
        Ok(Some((s, e))) => {
            headers.push((
                CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {s}-{e}/{len}")).map_err(|_| bad_body())?,
            ));
            (StatusCode::PARTIAL_CONTENT, s, e)
        }
        Err(()) => {
            let mut e = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the file has {len} bytes"),
            );
            e.retry_after_s = None;
            return Err(e);
        }
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    if req.method() == http::Method::HEAD {
        // The same headers as a GET, and no body.
        headers.push((CONTENT_LENGTH, HeaderValue::from(count)));
        let mut reply = Reply::empty(status);
        reply.content_type = content_type;
        reply.headers = headers;
        return Ok(reply);
    }
    let path = shard
        .media
        .blob_path(target, &r.blob)
        .ok_or_else(ApiError::not_found)?;
    let file = glommio::io::BufferedFile::open(&path).await.map_err(|e| {
        tracing::error!(error = %e, path = %path.display(), "a rendition's blob is missing");
        ApiError::not_found()
    })?;
    headers.push((CONTENT_LENGTH, HeaderValue::from(count)));
    let file = Rc::new(file);
    let chunks =
        futures_lite::stream::unfold((file, start, count), |(file, pos, left)| async move {
            if left == 0 {
                let _ = Rc::try_unwrap(file).map(|f| glommio::spawn_local(f.close()).detach());
                return None;
            }
            let n = left.min(SERVE_CHUNK_BYTES as u64) as usize;
            match file.read_at(pos, n).await {
                Ok(buf) if !buf.is_empty() => {
                    let got = buf.len() as u64;
                    Some((
                        Ok(Bytes::copy_from_slice(&buf)),
                        (file, pos + got, left.saturating_sub(got)),
                    ))
                }
                Ok(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than its record",
                    )),
                    (file, pos, 0),
                )),
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), (file, pos, 0))),
            }
        });
    let mut reply = Reply::empty(status);
    reply.content_type = content_type;
    reply.headers = headers;
    reply.stream = Some(Box::pin(chunks));
    Ok(reply)
}

// ---- tus 1.0: core, creation, termination ----

fn tus_version_ok(headers: &HeaderMap) -> Result<()> {
    match headers.get(tus::RESUMABLE).and_then(|v| v.to_str().ok()) {
        Some(tus::PROTOCOL) => Ok(()),
        _ => {
            let mut e = ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "tus_version",
                "send Tus-Resumable: 1.0.0",
            );
            e.retry_after_s = None;
            Err(e)
        }
    }
}

fn number_header(headers: &HeaderMap, name: &'static str) -> Result<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_header",
                format!("{name} must be a non-negative integer"),
            )
        })
}

/// `private` in Upload-Metadata (`key base64value, ...`): any value but `false`/`0`.
fn metadata_private(headers: &HeaderMap) -> bool {
    let Some(meta) = headers
        .get(tus::UPLOAD_METADATA)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    meta.split(',').any(|pair| {
        let mut it = pair.trim().splitn(2, ' ');
        it.next() == Some("private") && !matches!(it.next(), Some("ZmFsc2U=") | Some("MA=="))
    })
}

async fn tus_create(
    shard: &Rc<Shard>,
    user: u64,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    tus_version_ok(req.headers())?;
    let length = number_header(req.headers(), tus::UPLOAD_LENGTH)?;
    let max = shard
        .cfg
        .media_video_bytes_max
        .max(shard.cfg.media_image_bytes_max);
    if length > max {
        let mut e = too_large(max);
        e.message = format!("Upload-Length is over the largest file taken ({max} bytes)");
        return Err(e);
    }
    if length == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_upload",
            "Upload-Length is 0",
        ));
    }
    let home = shard_of(user);
    let used = shard
        .ask(home, deadline, |reply| Op::MediaUsage {
            user_id: user,
            reply,
        })
        .await?;
    if used.saturating_add(length) > shard.cfg.media_quota_bytes {
        return Err(quota_full(shard));
    }
    let now = now_ms();
    let upload = TusUpload {
        id: 0,
        owner: user,
        length,
        offset: 0,
        private: metadata_private(req.headers()),
        created_ms: now,
        expires_ms: now + shard.cfg.tus_upload_ttl_s * 1000,
    };
    let upload = shard
        .ask(home, deadline, |reply| Op::TusCreate { upload, reply })
        .await?;
    // The (empty) part file exists, durably, before the upload is announced.
    shard
        .media
        .append(shard.media.tus_path(home, upload.id), 0, Bytes::new(), true)
        .await?;
    let mut reply = Reply::empty(StatusCode::CREATED);
    reply.headers = tus_headers();
    reply.headers.push((
        LOCATION,
        HeaderValue::from_str(&format!("/v1/uploads/{}", upload.id)).map_err(|_| bad_body())?,
    ));
    reply.headers.push(header(tus::UPLOAD_OFFSET, 0));
    Ok(reply)
}

async fn tus_upload(shard: &Rc<Shard>, user: u64, id: u64, deadline: Instant) -> Result<TusUpload> {
    let target = owner_shard(shard, id)?;
    shard
        .ask(target, deadline, |reply| Op::TusGet { id, reply })
        .await?
        .filter(|u| u.owner == user)
        .ok_or_else(ApiError::not_found)
}

async fn tus_head(shard: &Rc<Shard>, user: u64, id: u64, deadline: Instant) -> Result<Reply> {
    let up = tus_upload(shard, user, id, deadline).await?;
    let mut reply = Reply::empty(StatusCode::OK);
    reply.headers = tus_headers();
    reply.headers.push(header(tus::UPLOAD_OFFSET, up.offset));
    reply.headers.push(header(tus::UPLOAD_LENGTH, up.length));
    reply.headers.push(header("cache-control", "no-store"));
    Ok(reply)
}

async fn tus_delete(shard: &Rc<Shard>, user: u64, id: u64, deadline: Instant) -> Result<Reply> {
    tus_upload(shard, user, id, deadline).await?;
    let target = owner_shard(shard, id)?;
    shard
        .ask(target, deadline, |reply| Op::TusRemove {
            id,
            owner: user,
            reply,
        })
        .await?;
    shard.media.remove(shard.media.tus_path(target, id)).await;
    let mut reply = Reply::empty(StatusCode::NO_CONTENT);
    reply.headers = tus_headers();
    Ok(reply)
}

async fn tus_patch(
    shard: &Rc<Shard>,
    user: u64,
    id: u64,
    req: Request<Incoming>,
    deadline: Instant,
) -> Result<Reply> {
    tus_version_ok(req.headers())?;
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.trim().eq_ignore_ascii_case(tus::CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send chunks as application/offset+octet-stream",
        ));
    }
    let offset = number_header(req.headers(), tus::UPLOAD_OFFSET)?;
    // One PATCH of an upload at a time: a second one would write over the first's bytes.
    let claim = shard.media.claim_patch(id).ok_or_else(|| {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "upload_busy",
            "another PATCH of this upload is in progress; HEAD for the offset when it ends",
        );
        e.retry_after_s = None;
        e
    })?;
    let up = tus_upload(shard, user, id, deadline).await?;
    if offset != up.offset {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "offset_mismatch",
            format!("the upload is at offset {}", up.offset),
        );
        e.retry_after_s = None;
        return Err(e);
    }
    let room = (up.length - up.offset).min(shard.cfg.tus_chunk_bytes_max);
    if declared_length(req.headers()).is_some_and(|n| n > room) {
        return Err(too_large(room));
    }
    let target = owner_shard(shard, id)?;
    // Received in a task of its own: if the client hangs up, the request is dropped but what
    // arrived is still written, fsynced and acknowledged in the record, as tus asks.
    let task = glommio::spawn_local(receive(
        Rc::clone(shard),
        req.into_body(),
        up,
        target,
        user,
        room,
        deadline,
        claim,
    ))
    .detach();
    let (up, over, broken, claim) = task
        .await
        .ok_or_else(|| ApiError::from(Fail::Unavailable))??;
    if over {
        return Err(too_large(room));
    }
    if broken {
        return Err(bad_body());
    }
    let mut reply = Reply::empty(StatusCode::NO_CONTENT);
    reply.headers = tus_headers();
    reply.headers.push(header(tus::UPLOAD_OFFSET, up.offset));
    if up.offset == up.length {
        let media_id = finish_upload(shard, user, &up, deadline).await?;
        reply.headers.push(header(tus::MEDIA_ID, media_id));
    }
    drop(claim);
    Ok(reply)
}

/// Streams a PATCH body into the upload's part file in slices, then fsyncs and moves the
/// upload's offset: (upload after, body over its room, body broken off, the claim on the
/// upload, held until the bytes are acknowledged even when the client is gone).
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn receive(
    shard: Rc<Shard>,
    mut body: Incoming,
    up: TusUpload,
    target: usize,
    user: u64,
    room: u64,
    deadline: Instant,
    claim: crate::media_jobs::PatchClaim,
) -> Result<(TusUpload, bool, bool, crate::media_jobs::PatchClaim)> {
    let id = up.id;
    let path = shard.media.tus_path(target, id);
    let mut pending = BytesMut::new();
    let mut written = up.offset;
    let mut broken = false;
    let mut over = false;
    loop {
        let frame = match crate::shard::until(deadline, body.frame()).await {
            Some(None) => break,
            Some(Some(Ok(f))) => f,
            // An error or the deadline: keep what came.
            Some(Some(Err(_))) | None => {
                broken = true;
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if written + (pending.len() + data.len()) as u64 > up.offset + room {
            over = true;
            break;
        }
        pending.extend_from_slice(&data);
        if pending.len() >= TUS_WRITE_BYTES {
            let chunk = pending.split().freeze();
            let n = chunk.len() as u64;
            shard
                .media
                .append(path.clone(), written, chunk, false)
                .await?;
            written += n;
        }
    }
    if over {
        pending.clear();
    }
    let n = pending.len() as u64;
    shard
        .media
        .append(path.clone(), written, pending.freeze(), true)
        .await?;
    written += n;
    let from = up.offset;
    // Not bound by the request's deadline: these bytes are on disk and should count.
    let ack_deadline = Instant::now() + std::time::Duration::from_secs(10);
    if written == from {
        // Nothing came, but the part file was opened: if the upload was deleted meanwhile,
        // that opened it again.
        let kept = shard
            .ask(target, ack_deadline, |reply| Op::TusGet { id, reply })
            .await?;
        if kept.is_none() {
            shard.media.remove(path).await;
            return Err(ApiError::not_found());
        }
        return Ok((up, over, broken, claim));
    }
    let advanced = shard
        .ask(target, ack_deadline, |reply| Op::TusAdvance {
            id,
            owner: user,
            from,
            to: written,
            reply,
        })
        .await;
    // Deleted while these bytes came: they go with it (no record would ever find them).
    if matches!(advanced, Err(Fail::Core(CoreError::NotFound))) {
        shard.media.remove(path).await;
    }
    let up = advanced.map_err(|e| match e {
        Fail::Core(CoreError::Invalid(v)) if v.code == "offset_mismatch" => {
            let mut e = ApiError::new(StatusCode::CONFLICT, "offset_mismatch", v.message);
            e.retry_after_s = None;
            e
        }
        other => other.into(),
    })?;
    Ok((up, over, broken, claim))
}

/// A complete tus upload becomes a media record like a small upload; the tus record goes.
async fn finish_upload(
    shard: &Rc<Shard>,
    user: u64,
    up: &TusUpload,
    deadline: Instant,
) -> Result<u64> {
    let target = owner_shard(shard, up.id)?;
    let id = up.id;
    let path = shard.media.tus_path(target, id);
    let intake = shard.media.intake_file(target, path.clone()).await;
    // Whatever happened to the file, the upload is over.
    shard
        .ask(target, deadline, |reply| Op::TusRemove {
            id,
            owner: user,
            reply,
        })
        .await?;
    let (intake, pin) = match intake {
        Ok(v) => v,
        Err(e) => {
            shard.media.remove(path).await;
            return Err(e.into());
        }
    };
    let new = new_media(user, up.private, &intake);
    let media = shard
        .ask(target, deadline, |reply| Op::MediaCreate { new, reply })
        .await;
    drop(pin);
    Ok(media.map_err(quota_status)?.id)
}
