//! Media records (tables `media_uploads`, `media_metadata`, `video_transcodes`, `cdn_urls`,
//! plus `media_blob_refs`, `media_usage` and `media_tus`), on the uploader's shard: the
//! media id is made there, so `shard_of(media id)` finds them.
//!
//! Files themselves are blobs named by their SHA-256 (the `media` crate's store); this module
//! only counts who references which blob (`media_blob_refs`), so that identical uploads share
//! one file and the last reference gone frees it. Each shard has its own blob directory and
//! counts, so sharing is per shard (a cross-shard count would need a cross-shard
//! transaction; see ARCHITECTURE.md).
//!
//! A media record moves pending -> processing -> ready | failed. `video_transcodes` is the
//! durable queue of unfinished work (images too, despite the seed's name): re-read at
//! start-up, so nothing stays pending after a crash; `attempts` is raised durably before
//! each try, so a file that kills the process is failed instead of retried forever.

use hmac::{Hmac, Mac};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::events::{self, Event};
use crate::{CoreError, Invalid};

/// media id -> Media
const MEDIA_UPLOADS: TableDefinition<u64, &[u8]> = TableDefinition::new("media_uploads");
/// media id -> Metadata
const MEDIA_METADATA: TableDefinition<u64, &[u8]> = TableDefinition::new("media_metadata");
/// media id -> Job : work not finished (pending or processing)
const VIDEO_TRANSCODES: TableDefinition<u64, &[u8]> = TableDefinition::new("video_transcodes");
/// (media id, rendition name) -> Rendition : what a media URL serves
const CDN_URLS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("cdn_urls");
/// blob id (sha-256 hex) -> references
const MEDIA_BLOB_REFS: TableDefinition<&str, u64> = TableDefinition::new("media_blob_refs");
/// user id -> bytes stored (originals and every rendition)
const MEDIA_USAGE: TableDefinition<u64, u64> = TableDefinition::new("media_usage");
/// (user id, media id) -> () : a user's media, newest last
const USER_MEDIA: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_media");
/// upload id -> TusUpload : resumable uploads in progress
const MEDIA_TUS: TableDefinition<u64, &[u8]> = TableDefinition::new("media_tus");

/// Tries of one file before it is failed (a try that crashed the process counts).
pub const ATTEMPTS_MAX: u32 = 3;
/// Rendition names are short and plain (`thumb.jpg`, `720p.mp4`).
pub const RENDITION_NAME_BYTES_MAX: usize = 32;
/// Failure reasons kept.
const REASON_CHARS_MAX: usize = 200;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum MediaState {
    Pending,
    Processing,
    Ready,
    /// With the reason, as the uploader may read it.
    Failed(String),
}

impl MediaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            MediaState::Pending => "pending",
            MediaState::Processing => "processing",
            MediaState::Ready => "ready",
            MediaState::Failed(_) => "failed",
        }
    }
}

/// A stored file: its blob id and length.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Blob {
    pub id: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Media {
    pub id: u64,
    pub owner: u64,
    pub kind: MediaKind,
    pub state: MediaState,
    /// Served only through signed URLs.
    pub private: bool,
    /// The upload as received; never served (it may carry EXIF GPS).
    pub original: Blob,
    pub attempts: u32,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// What probing found, kept for the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    pub container: String,
    pub width: u32,
    pub height: u32,
    pub rotation: u16,
    pub duration_ms: Option<u64>,
    pub frame_rate: Option<f64>,
    pub video_codec: String,
    pub audio_codec: Option<String>,
    pub blurhash: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rendition {
    pub name: String,
    pub blob: String,
    pub mime: String,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
}

/// Unfinished work on a media record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Job {
    queued_ms: u64,
}

/// A resumable (tus) upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TusUpload {
    pub id: u64,
    pub owner: u64,
    pub length: u64,
    pub offset: u64,
    pub private: bool,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// A media record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaView {
    pub media: Media,
    pub metadata: Metadata,
    pub renditions: Vec<Rendition>,
}

/// A new upload, probed and stored as a blob.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NewMedia {
    pub id: u64,
    pub owner: u64,
    pub kind: MediaKind,
    pub private: bool,
    pub original: Blob,
    pub metadata: Metadata,
}

fn quota_error(used: u64, adding: u64, quota: u64) -> CoreError {
    CoreError::Invalid(Invalid::new(
        "quota_exceeded",
        format!("storing {adding} more bytes would pass your quota of {quota} bytes ({used} used)"),
    ))
}

/// Bytes a user stores (originals and renditions).
pub fn usage(read: &ReadTransaction, owner: u64) -> Result<u64, CoreError> {
    let Some(t) = crate::table_or_none(read, MEDIA_USAGE)? else {
        return Ok(0);
    };
    Ok(t.get(owner)?.map_or(0, |v| v.value()))
}

/// Does any record on this shard reference blob `id`?
pub fn referenced(read: &ReadTransaction, blob: &str) -> Result<bool, CoreError> {
    let Some(t) = crate::table_or_none(read, MEDIA_BLOB_REFS)? else {
        return Ok(false);
    };
    Ok(t.get(blob)?.is_some_and(|v| v.value() > 0))
}

fn add_ref(txn: &WriteTransaction, blob: &str) -> Result<(), CoreError> {
    let mut t = txn.open_table(MEDIA_BLOB_REFS)?;
    let n = t.get(blob)?.map_or(0, |v| v.value());
    t.insert(blob, n + 1)?;
    Ok(())
}

/// Drops one reference; true when it was the last (the blob may be deleted).
fn drop_ref(txn: &WriteTransaction, blob: &str) -> Result<bool, CoreError> {
    let mut t = txn.open_table(MEDIA_BLOB_REFS)?;
    let n = t.get(blob)?.map_or(0, |v| v.value());
    if n <= 1 {
        t.remove(blob)?;
        Ok(true)
    } else {
        t.insert(blob, n - 1)?;
        Ok(false)
    }
}

fn add_usage(txn: &WriteTransaction, owner: u64, delta: i128) -> Result<(), CoreError> {
    let mut t = txn.open_table(MEDIA_USAGE)?;
    let n = i128::from(t.get(owner)?.map_or(0, |v| v.value()));
    let next = (n + delta).max(0) as u64;
    if next == 0 {
        t.remove(owner)?;
    } else {
        t.insert(owner, next)?;
    }
    Ok(())
}

/// Records a new upload (pending, queued for processing), counting it against `quota`.
pub fn create(
    txn: &WriteTransaction,
    new: NewMedia,
    now_ms: u64,
    quota_bytes: u64,
) -> Result<Media, CoreError> {
    let used = {
        let t = txn.open_table(MEDIA_USAGE)?;
        let v = t.get(new.owner)?.map_or(0, |v| v.value());
        v
    };
    if used.saturating_add(new.original.bytes) > quota_bytes {
        return Err(quota_error(used, new.original.bytes, quota_bytes));
    }
    let media = Media {
        id: new.id,
        owner: new.owner,
        kind: new.kind,
        state: MediaState::Pending,
        private: new.private,
        original: new.original,
        attempts: 0,
        created_ms: now_ms,
        updated_ms: now_ms,
    };
    txn.open_table(MEDIA_UPLOADS)?
        .insert(media.id, encode(&media).as_slice())?;
    txn.open_table(MEDIA_METADATA)?
        .insert(media.id, encode(&new.metadata).as_slice())?;
    txn.open_table(VIDEO_TRANSCODES)?
        .insert(media.id, encode(&Job { queued_ms: now_ms }).as_slice())?;
    txn.open_table(USER_MEDIA)?
        .insert((media.owner, media.id), ())?;
    add_ref(txn, &media.original.id)?;
    add_usage(txn, media.owner, i128::from(media.original.bytes))?;
    Ok(media)
}

fn load(txn: &WriteTransaction, id: u64) -> Result<Option<Media>, CoreError> {
    let t = txn.open_table(MEDIA_UPLOADS)?;
    let v = t.get(id)?;
    v.map(|v| decode(v.value())).transpose()
}

fn store(txn: &WriteTransaction, media: &Media) -> Result<(), CoreError> {
    txn.open_table(MEDIA_UPLOADS)?
        .insert(media.id, encode(media).as_slice())?;
    Ok(())
}

pub fn get(read: &ReadTransaction, id: u64) -> Result<Option<MediaView>, CoreError> {
    let Some(uploads) = crate::table_or_none(read, MEDIA_UPLOADS)? else {
        return Ok(None);
    };
    let Some(media) = uploads
        .get(id)?
        .map(|v| decode::<Media>(v.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let metadata = match crate::table_or_none(read, MEDIA_METADATA)? {
        Some(t) => t
            .get(id)?
            .map(|v| decode(v.value()))
            .transpose()?
            .unwrap_or_default(),
        None => Metadata::default(),
    };
    let mut renditions = Vec::new();
    if let Some(t) = crate::table_or_none(read, CDN_URLS)? {
        for row in t.range((id, "")..(id + 1, ""))? {
            let (_, v) = row?;
            renditions.push(decode(v.value())?);
        }
    }
    Ok(Some(MediaView {
        media,
        metadata,
        renditions,
    }))
}

/// One rendition of a media record, with the record (for its owner and privacy).
pub fn rendition(
    read: &ReadTransaction,
    id: u64,
    name: &str,
) -> Result<Option<(Media, Rendition)>, CoreError> {
    let (Some(uploads), Some(urls)) = (
        crate::table_or_none(read, MEDIA_UPLOADS)?,
        crate::table_or_none(read, CDN_URLS)?,
    ) else {
        return Ok(None);
    };
    let Some(media) = uploads
        .get(id)?
        .map(|v| decode::<Media>(v.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    let r = urls
        .get((id, name))?
        .map(|v| decode(v.value()))
        .transpose()?;
    Ok(r.map(|r| (media, r)))
}

/// Unfinished work on this shard (pending or processing), oldest first, at most `limit`.
pub fn unfinished(read: &ReadTransaction, limit: usize) -> Result<Vec<u64>, CoreError> {
    let Some(t) = crate::table_or_none(read, VIDEO_TRANSCODES)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in t.iter()?.take(limit) {
        out.push(row?.0.value());
    }
    Ok(out)
}

/// Marks a media record as being processed, counting the attempt durably. `None` when there
/// is nothing to do: the record is gone, finished, or out of attempts (then failed here).
pub fn start(txn: &WriteTransaction, id: u64, now_ms: u64) -> Result<Option<Media>, CoreError> {
    let Some(mut media) = load(txn, id)? else {
        txn.open_table(VIDEO_TRANSCODES)?.remove(id)?;
        return Ok(None);
    };
    if matches!(media.state, MediaState::Ready | MediaState::Failed(_)) {
        txn.open_table(VIDEO_TRANSCODES)?.remove(id)?;
        return Ok(None);
    }
    media.updated_ms = now_ms;
    if media.attempts >= ATTEMPTS_MAX {
        media.state = MediaState::Failed("processing was interrupted too many times".into());
        store(txn, &media)?;
        txn.open_table(VIDEO_TRANSCODES)?.remove(id)?;
        return Ok(None);
    }
    media.attempts += 1;
    media.state = MediaState::Processing;
    store(txn, &media)?;
    Ok(Some(media))
}

/// How processing ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Outcome {
    Ready {
        renditions: Vec<Rendition>,
        blurhash: Option<String>,
    },
    Failed(String),
}

/// The state after `finish`, and blobs no longer referenced (to delete after the commit).
#[derive(Debug, Clone)]
pub struct Finished {
    pub media: Option<Media>,
    pub unreferenced: Vec<String>,
}

/// Records the result of processing (renditions and their blobs, or the failure) and an event
/// for the uploader (`event_id`). Renditions that would pass the owner's quota fail the media.
pub fn finish(
    txn: &WriteTransaction,
    id: u64,
    outcome: Outcome,
    now_ms: u64,
    quota_bytes: u64,
    event_id: u64,
) -> Result<Finished, CoreError> {
    let renditions_of = |o: &Outcome| match o {
        Outcome::Ready { renditions, .. } => renditions.iter().map(|r| r.blob.clone()).collect(),
        Outcome::Failed(_) => Vec::new(),
    };
    let media = load(txn, id)?;
    let Some(mut media) = media.filter(|m| m.state == MediaState::Processing) else {
        // Deleted (or finished) meanwhile: the new files belong to no one.
        return Ok(Finished {
            media: None,
            unreferenced: renditions_of(&outcome),
        });
    };
    txn.open_table(VIDEO_TRANSCODES)?.remove(id)?;
    media.updated_ms = now_ms;
    let mut unreferenced = Vec::new();
    let outcome = match outcome {
        Outcome::Ready { renditions, .. }
            if renditions
                .iter()
                .any(|r| r.name.is_empty() || r.name.len() > RENDITION_NAME_BYTES_MAX) =>
        {
            unreferenced.extend(renditions.iter().map(|r| r.blob.clone()));
            Outcome::Failed("a rendition had no usable name".into())
        }
        Outcome::Ready {
            renditions,
            blurhash,
        } => {
            let adding: u64 = renditions.iter().map(|r| r.bytes).sum();
            let used = {
                let t = txn.open_table(MEDIA_USAGE)?;
                let v = t.get(media.owner)?.map_or(0, |v| v.value());
                v
            };
            if used.saturating_add(adding) > quota_bytes {
                unreferenced.extend(renditions.iter().map(|r| r.blob.clone()));
                Outcome::Failed(quota_error(used, adding, quota_bytes).to_string())
            } else {
                Outcome::Ready {
                    renditions,
                    blurhash,
                }
            }
        }
        failed => failed,
    };
    let event = match outcome {
        Outcome::Ready {
            renditions,
            blurhash,
        } => {
            let mut urls = txn.open_table(CDN_URLS)?;
            let mut total = 0u64;
            for r in &renditions {
                urls.insert((id, r.name.as_str()), encode(r).as_slice())?;
                add_ref(txn, &r.blob)?;
                total += r.bytes;
            }
            drop(urls);
            add_usage(txn, media.owner, i128::from(total))?;
            if blurhash.is_some() {
                let mut meta_t = txn.open_table(MEDIA_METADATA)?;
                let mut meta: Metadata = meta_t
                    .get(id)?
                    .map(|v| decode(v.value()))
                    .transpose()?
                    .unwrap_or_default();
                meta.blurhash = blurhash;
                meta_t.insert(id, encode(&meta).as_slice())?;
            }
            media.state = MediaState::Ready;
            let notice = crate::notifications::New {
                recipient: media.owner,
                kind: crate::notifications::Kind::MediaReady,
                actor: None,
                subject: crate::notifications::Subject::Media(id),
            };
            crate::notifications::notify(txn, crate::shard_of(media.owner), &notice, now_ms)?;
            Event::MediaReady {
                media_id: id,
                owner: media.owner,
            }
        }
        Outcome::Failed(reason) => {
            let reason: String = reason.chars().take(REASON_CHARS_MAX).collect();
            media.state = MediaState::Failed(reason.clone());
            Event::MediaFailed {
                media_id: id,
                owner: media.owner,
                reason,
            }
        }
    };
    store(txn, &media)?;
    events::record(txn, event_id, now_ms, &event, &[])?;
    Ok(Finished {
        media: Some(media),
        unreferenced,
    })
}

/// Deletes a media record of `owner` with its renditions (and the owner's avatar, if it was
/// this); returns the blobs no longer referenced (to delete after the commit). `NotFound` for
/// someone else's.
pub fn delete(txn: &WriteTransaction, id: u64, owner: u64) -> Result<Vec<String>, CoreError> {
    let Some(media) = load(txn, id)?.filter(|m| m.owner == owner) else {
        return Err(CoreError::NotFound);
    };
    let mut unreferenced = Vec::new();
    let mut freed = media.original.bytes;
    if drop_ref(txn, &media.original.id)? {
        unreferenced.push(media.original.id.clone());
    }
    let mut urls = txn.open_table(CDN_URLS)?;
    let rows: Vec<(String, Rendition)> = urls
        .range((id, "")..(id + 1, ""))?
        .map(|row| {
            let (k, v) = row?;
            Ok((k.value().1.to_string(), decode(v.value())?))
        })
        .collect::<Result<_, CoreError>>()?;
    for (name, r) in rows {
        urls.remove((id, name.as_str()))?;
        freed += r.bytes;
        if drop_ref(txn, &r.blob)? {
            unreferenced.push(r.blob);
        }
    }
    drop(urls);
    txn.open_table(MEDIA_UPLOADS)?.remove(id)?;
    txn.open_table(MEDIA_METADATA)?.remove(id)?;
    txn.open_table(VIDEO_TRANSCODES)?.remove(id)?;
    txn.open_table(USER_MEDIA)?.remove((owner, id))?;
    add_usage(txn, owner, -i128::from(freed))?;
    crate::profiles::forget_avatar(txn, owner, id)?;
    Ok(unreferenced)
}

/// Makes these media of `owner` private (served only through signed URLs): done when they
/// are attached to a followers-only post or a message. Ids that are not `owner`'s media are
/// left alone (the caller checked them just before; a media deleted since has nothing to
/// protect). Idempotent. Returns the ids made private by this call.
pub fn make_private(
    txn: &WriteTransaction,
    ids: &[u64],
    owner: u64,
    now_ms: u64,
) -> Result<Vec<u64>, CoreError> {
    let mut made = Vec::new();
    for &id in ids {
        if let Some(mut media) = load(txn, id)?.filter(|m| m.owner == owner && !m.private) {
            media.private = true;
            media.updated_ms = now_ms;
            store(txn, &media)?;
            made.push(id);
        }
    }
    Ok(made)
}

/// The views of these media that exist, in the order asked.
pub fn get_many(read: &ReadTransaction, ids: &[u64]) -> Result<Vec<MediaView>, CoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        if let Some(v) = get(read, id)? {
            out.push(v);
        }
    }
    Ok(out)
}

// ---- resumable uploads (tus) ----

pub fn tus_create(txn: &WriteTransaction, upload: &TusUpload) -> Result<(), CoreError> {
    txn.open_table(MEDIA_TUS)?
        .insert(upload.id, encode(upload).as_slice())?;
    Ok(())
}

pub fn tus_get(read: &ReadTransaction, id: u64) -> Result<Option<TusUpload>, CoreError> {
    let Some(t) = crate::table_or_none(read, MEDIA_TUS)? else {
        return Ok(None);
    };
    let v = t.get(id)?;
    v.map(|v| decode(v.value())).transpose()
}

/// Moves an upload's offset from `from` to `to` (the bytes in between are durable).
pub fn tus_advance(
    txn: &WriteTransaction,
    id: u64,
    owner: u64,
    from: u64,
    to: u64,
) -> Result<TusUpload, CoreError> {
    let mut t = txn.open_table(MEDIA_TUS)?;
    let current: Option<TusUpload> = t.get(id)?.map(|v| decode(v.value())).transpose()?;
    let Some(mut up) = current.filter(|u| u.owner == owner) else {
        return Err(CoreError::NotFound);
    };
    if up.offset != from || to > up.length || to < from {
        return Err(CoreError::invalid(
            "offset_mismatch",
            format!("the upload is at offset {}", up.offset),
        ));
    }
    up.offset = to;
    t.insert(id, encode(&up).as_slice())?;
    Ok(up)
}

pub fn tus_remove(txn: &WriteTransaction, id: u64, owner: u64) -> Result<(), CoreError> {
    let mut t = txn.open_table(MEDIA_TUS)?;
    let current: Option<TusUpload> = t.get(id)?.map(|v| decode(v.value())).transpose()?;
    if current.filter(|u| u.owner == owner).is_none() {
        return Err(CoreError::NotFound);
    }
    t.remove(id)?;
    Ok(())
}

/// Uploads past their expiry (to remove with their part files), at most `limit`.
pub fn tus_expired(
    read: &ReadTransaction,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<TusUpload>, CoreError> {
    let Some(t) = crate::table_or_none(read, MEDIA_TUS)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for row in t.iter()? {
        let up: TusUpload = decode(row?.1.value())?;
        if up.expires_ms <= now_ms {
            out.push(up);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

// ---- signed URLs ----

type HmacSha256 = Hmac<Sha256>;

fn url_mac(key: &[u8], id: u64, name: &str, expires_s: u64) -> [u8; 32] {
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    m.update(&id.to_be_bytes());
    m.update(name.as_bytes());
    m.update(&expires_s.to_be_bytes());
    m.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `sig` parameter of a signed rendition URL valid until `expires_s` (Unix seconds).
pub fn sign_url(key: &[u8], id: u64, name: &str, expires_s: u64) -> String {
    hex(&url_mac(key, id, name, expires_s))
}

/// Checks a signed URL's `expires` and `sig` at `now_s`.
pub fn verify_url(key: &[u8], id: u64, name: &str, expires_s: u64, sig: &str, now_s: u64) -> bool {
    if expires_s <= now_s || sig.len() != 64 {
        return false;
    }
    let expected = sign_url(key, id, name, expires_s);
    bool::from(expected.as_bytes().ct_eq(sig.as_bytes()))
}

/// Every blob the records of this shard reference.
pub fn blob_refs(read: &ReadTransaction) -> Result<Vec<String>, CoreError> {
    let table = match read.open_table(MEDIA_BLOB_REFS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        out.push(row?.0.value().to_string());
    }
    Ok(out)
}

/// A page of `owner`'s media records, by id after `after` (export).
pub fn of_owner(
    read: &ReadTransaction,
    owner: u64,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<MediaView>, CoreError> {
    let Some(index) = crate::table_or_none(read, USER_MEDIA)? else {
        return Ok(Vec::new());
    };
    let start = after.map_or(0, |a| a.saturating_add(1));
    let mut out = Vec::with_capacity(limit);
    for row in index.range((owner, start)..=(owner, u64::MAX))?.take(limit) {
        if let Some(view) = get(read, row?.0.value().1)? {
            out.push(view);
        }
    }
    Ok(out)
}

/// Deletes up to `limit` of `owner`'s media (account erasure). Returns how many went and the
/// blobs no longer referenced (to delete after the commit); fewer than `limit`: none is left,
/// and the owner's usage row goes too.
pub fn erase_owner(
    txn: &WriteTransaction,
    owner: u64,
    limit: usize,
) -> Result<(usize, Vec<String>), CoreError> {
    let ids: Vec<u64> = txn
        .open_table(USER_MEDIA)?
        .range((owner, 0)..=(owner, u64::MAX))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut blobs = Vec::new();
    for id in &ids {
        match delete(txn, *id, owner) {
            Ok(mut freed) => blobs.append(&mut freed),
            Err(CoreError::NotFound) => {
                txn.open_table(USER_MEDIA)?.remove((owner, *id))?;
            }
            Err(e) => return Err(e),
        }
    }
    if ids.len() < limit {
        txn.open_table(MEDIA_USAGE)?.remove(owner)?;
    }
    Ok((ids.len(), blobs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::backends::InMemoryBackend;
    use redb::{Database, ReadableDatabase};

    fn db() -> Database {
        Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap()
    }

    fn blob(c: char, bytes: u64) -> Blob {
        Blob {
            id: c.to_string().repeat(64),
            bytes,
        }
    }

    fn new(id: u64, owner: u64, b: Blob) -> NewMedia {
        NewMedia {
            id,
            owner,
            kind: MediaKind::Image,
            private: false,
            original: b,
            metadata: Metadata::default(),
        }
    }

    fn rendition(name: &str, c: char, bytes: u64) -> Rendition {
        Rendition {
            name: name.into(),
            blob: c.to_string().repeat(64),
            mime: "image/jpeg".into(),
            width: 10,
            height: 10,
            bytes,
        }
    }

    #[test]
    fn shared_blobs_quota_and_lifecycle() {
        let db = db();
        let w = db.begin_write().unwrap();
        create(&w, new(1, 7, blob('a', 100)), 1, 1000).unwrap();
        create(&w, new(2, 7, blob('a', 100)), 1, 1000).unwrap();
        assert!(matches!(
            create(&w, new(3, 7, blob('b', 900)), 1, 1000),
            Err(CoreError::Invalid(Invalid {
                code: "quota_exceeded",
                ..
            }))
        ));
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(usage(&r, 7).unwrap(), 200);
        assert_eq!(unfinished(&r, 10).unwrap(), vec![1, 2]);
        assert!(referenced(&r, &"a".repeat(64)).unwrap());
        drop(r);

        let w = db.begin_write().unwrap();
        assert!(start(&w, 1, 2).unwrap().is_some());
        let done = finish(
            &w,
            1,
            Outcome::Ready {
                renditions: vec![
                    rendition("thumb.jpg", 'c', 10),
                    rendition("display.jpg", 'd', 20),
                ],
                blurhash: Some("LKO2".into()),
            },
            3,
            1000,
            99,
        )
        .unwrap();
        assert_eq!(done.media.unwrap().state, MediaState::Ready);
        // Renditions that pass the quota fail the media and free their blobs.
        assert!(start(&w, 2, 2).unwrap().is_some());
        let done = finish(
            &w,
            2,
            Outcome::Ready {
                renditions: vec![rendition("thumb.jpg", 'e', 5000)],
                blurhash: None,
            },
            3,
            1000,
            100,
        )
        .unwrap();
        assert!(matches!(done.media.unwrap().state, MediaState::Failed(_)));
        assert_eq!(done.unreferenced, vec!["e".repeat(64)]);
        w.commit().unwrap();

        let r = db.begin_read().unwrap();
        let view = get(&r, 1).unwrap().unwrap();
        assert_eq!(view.renditions.len(), 2);
        assert_eq!(view.metadata.blurhash.as_deref(), Some("LKO2"));
        assert_eq!(usage(&r, 7).unwrap(), 230);
        assert!(unfinished(&r, 10).unwrap().is_empty());
        drop(r);

        // Deleting: someone else cannot; the owner frees blobs no one else uses.
        let w = db.begin_write().unwrap();
        assert!(matches!(delete(&w, 1, 8), Err(CoreError::NotFound)));
        let freed = delete(&w, 1, 7).unwrap();
        assert_eq!(freed, vec!["d".repeat(64), "c".repeat(64)]); // by rendition name
        let freed = delete(&w, 2, 7).unwrap();
        assert_eq!(freed, vec!["a".repeat(64)]);
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(usage(&r, 7).unwrap(), 0);
        assert!(get(&r, 1).unwrap().is_none());
    }

    #[test]
    fn attempts_are_bounded() {
        let db = db();
        let w = db.begin_write().unwrap();
        create(&w, new(1, 7, blob('a', 1)), 1, 1000).unwrap();
        for _ in 0..ATTEMPTS_MAX {
            assert!(start(&w, 1, 2).unwrap().is_some());
        }
        assert!(start(&w, 1, 2).unwrap().is_none());
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        assert!(matches!(
            get(&r, 1).unwrap().unwrap().media.state,
            MediaState::Failed(_)
        ));
        assert!(unfinished(&r, 10).unwrap().is_empty());
    }

    #[test]
    fn tus_offsets_and_signed_urls() {
        let db = db();
        let w = db.begin_write().unwrap();
        let up = TusUpload {
            id: 5,
            owner: 7,
            length: 10,
            offset: 0,
            private: false,
            created_ms: 0,
            expires_ms: 100,
        };
        tus_create(&w, &up).unwrap();
        assert_eq!(tus_advance(&w, 5, 7, 0, 4).unwrap().offset, 4);
        assert!(matches!(
            tus_advance(&w, 5, 7, 0, 4),
            Err(CoreError::Invalid(_))
        ));
        assert!(matches!(
            tus_advance(&w, 5, 8, 4, 5),
            Err(CoreError::NotFound)
        ));
        assert!(tus_advance(&w, 5, 7, 4, 11).is_err());
        w.commit().unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(tus_expired(&r, 100, 10).unwrap().len(), 1);

        let sig = sign_url(b"k", 1, "thumb.jpg", 50);
        assert!(verify_url(b"k", 1, "thumb.jpg", 50, &sig, 49));
        assert!(!verify_url(b"k", 1, "thumb.jpg", 50, &sig, 50));
        assert!(!verify_url(b"k", 1, "display.jpg", 50, &sig, 10));
        assert!(!verify_url(b"x", 1, "thumb.jpg", 50, &sig, 10));
    }
}
