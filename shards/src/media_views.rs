//! What readers of a post or a message see of its media: state, size, blurhash and the
//! renditions with their URLs, resolved when the post or message is read (so a post made
//! while its video was still processing shows the renditions once they are ready).
//!
//! The media records live on their uploader's shard; each view asks every owning shard once
//! for all the media it needs. Ready media change only when deleted or made private, so they
//! are cached per shard for `READY_CACHE_MS`; unfinished media are always asked again.
//!
//! Privacy: media attached to a followers-only post or a message are made private (served
//! only through HMAC-signed, expiring URLs) before the post or message is written, and the
//! views of such posts and of messages always hand out signed URLs: only those allowed to
//! read the post get one. The cache cannot leak: a cached "public" media that has since
//! become private only yields an unsigned URL, which the server then refuses; and every
//! shard forgets a media made private or deleted before that is answered
//! (`forget_everywhere`), so such a URL is handed out only by a shard that did not hear.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nova_core::media::{MediaState, MediaView};
use nova_core::shard_of;
use nova_protocol as wire;

use crate::api::Result;
use crate::mesh::Op;
use crate::shard::Shard;

/// How long a ready media's record is reused before it is asked for again.
const READY_CACHE_MS: u64 = 30_000;
/// Media records cached per shard; the cache is emptied when it is full.
const CACHE_MAX: usize = 10_000;

thread_local! {
    /// Ready media by id (each shard is one thread, so this is the shard's own cache).
    static READY: RefCell<HashMap<u64, (Instant, Rc<MediaView>)>> = RefCell::new(HashMap::new());
}

fn cached(id: u64, now: Instant) -> Option<Rc<MediaView>> {
    READY.with(|c| {
        c.borrow()
            .get(&id)
            .filter(|(at, _)| now.duration_since(*at) < Duration::from_millis(READY_CACHE_MS))
            .map(|(_, v)| Rc::clone(v))
    })
}

fn remember(view: &Rc<MediaView>, now: Instant) {
    if view.media.state != MediaState::Ready {
        return;
    }
    READY.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(view.media.id, (now, Rc::clone(view)));
    });
}

/// Forgets these media (made private or deleted through this shard).
pub(crate) fn forget(ids: &[u64]) {
    READY.with(|c| {
        let mut c = c.borrow_mut();
        for id in ids {
            c.remove(id);
        }
    });
}

/// The records of these media that exist, asking each owning shard once.
async fn resolve(
    shard: &Rc<Shard>,
    ids: impl Iterator<Item = u64>,
    deadline: Instant,
) -> Result<HashMap<u64, Rc<MediaView>>> {
    let now = Instant::now();
    let mut found = HashMap::new();
    let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for id in ids {
        if found.contains_key(&id) || shard_of(id) >= shard.shards {
            continue;
        }
        match cached(id, now) {
            Some(v) => {
                found.insert(id, v);
            }
            None => {
                let wanted = by_shard.entry(shard_of(id)).or_default();
                if !wanted.contains(&id) {
                    wanted.push(id);
                }
            }
        }
    }
    let asks = by_shard
        .into_iter()
        .map(|(k, ids)| shard.ask(k, deadline, |reply| Op::MediaViews { ids, reply }));
    for answer in crate::shard::join_all(asks).await {
        for v in answer? {
            let v = Rc::new(v);
            remember(&v, now);
            found.insert(v.media.id, v);
        }
    }
    Ok(found)
}

fn attached(
    shard: &Shard,
    id: &str,
    found: Option<&Rc<MediaView>>,
    sign: bool,
) -> wire::AttachedMediaView {
    let Some(v) = found else {
        return wire::AttachedMediaView {
            id: id.to_string(),
            kind: "image",
            state: "deleted",
            width: 0,
            height: 0,
            duration_ms: None,
            blurhash: None,
            renditions: Vec::new(),
        };
    };
    let m = &v.media;
    let sign = sign || m.private;
    wire::AttachedMediaView {
        id: id.to_string(),
        kind: m.kind.as_str(),
        state: m.state.as_str(),
        width: v.metadata.width,
        height: v.metadata.height,
        duration_ms: v.metadata.duration_ms,
        blurhash: v.metadata.blurhash.clone(),
        renditions: v
            .renditions
            .iter()
            .map(|r| wire::RenditionView {
                name: r.name.clone(),
                url: crate::api_media::url_for(shard, m.id, &r.name, sign),
                mime: r.mime.clone(),
                width: r.width,
                height: r.height,
                bytes: r.bytes,
            })
            .collect(),
    }
}

fn ids_of(media_ids: &[String]) -> impl Iterator<Item = u64> + '_ {
    media_ids.iter().filter_map(|s| s.parse::<u64>().ok())
}

fn fill(
    shard: &Shard,
    media_ids: &[String],
    found: &HashMap<u64, Rc<MediaView>>,
    sign: bool,
) -> Vec<wire::AttachedMediaView> {
    media_ids
        .iter()
        .map(|raw| {
            let v = raw.parse::<u64>().ok().and_then(|id| found.get(&id));
            attached(shard, raw, v, sign)
        })
        .collect()
}

/// The view of a profile's avatar: none when none is set or its media is gone.
pub(crate) async fn avatar(
    shard: &Rc<Shard>,
    id: Option<u64>,
    deadline: Instant,
) -> Result<Option<wire::AttachedMediaView>> {
    let mut found = avatars(shard, id, deadline).await?;
    Ok(id.and_then(|id| found.remove(&id)))
}

/// The view of an avatar if this shard has its record cached (no ask).
pub(crate) fn avatar_at_hand(shard: &Shard, id: u64) -> Option<wire::AttachedMediaView> {
    let v = cached(id, Instant::now())?;
    Some(attached(shard, &id.to_string(), Some(&v), false))
}

/// The views of these avatars that exist, by media id (one ask per owning shard).
pub(crate) async fn avatars(
    shard: &Rc<Shard>,
    ids: impl IntoIterator<Item = u64>,
    deadline: Instant,
) -> Result<HashMap<u64, wire::AttachedMediaView>> {
    let found = resolve(shard, ids.into_iter(), deadline).await?;
    Ok(found
        .iter()
        .map(|(id, v)| (*id, attached(shard, &id.to_string(), Some(v), false)))
        .collect())
}

/// Fills `media` of these post views. Followers-only posts get signed URLs.
pub(crate) async fn fill_posts(
    shard: &Rc<Shard>,
    views: &mut [wire::PostView],
    deadline: Instant,
) -> Result<()> {
    if views.iter().all(|v| v.media_ids.is_empty()) {
        return Ok(());
    }
    let found = resolve(
        shard,
        views.iter().flat_map(|v| ids_of(&v.media_ids)),
        deadline,
    )
    .await?;
    for v in views.iter_mut() {
        let sign = v.visibility != "public";
        v.media = fill(shard, &v.media_ids, &found, sign);
    }
    Ok(())
}

/// Fills `media` of these message views; message media always get signed URLs.
pub(crate) async fn fill_messages(
    shard: &Rc<Shard>,
    views: &mut [wire::MessageView],
    deadline: Instant,
) -> Result<()> {
    if views.iter().all(|v| v.media_ids.is_empty()) {
        return Ok(());
    }
    let found = resolve(
        shard,
        views.iter().flat_map(|v| ids_of(&v.media_ids)),
        deadline,
    )
    .await?;
    for v in views.iter_mut() {
        v.media = fill(shard, &v.media_ids, &found, true);
    }
    Ok(())
}

/// Makes `owner`'s media `ids` private on their shard (durably) before they are attached to
/// a followers-only post or a message.
pub(crate) async fn make_private(
    shard: &Rc<Shard>,
    owner: u64,
    ids: &[u64],
    deadline: Instant,
) -> Result<()> {
    let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for &id in ids {
        by_shard.entry(shard_of(id)).or_default().push(id);
    }
    let mut made = Vec::new();
    for (k, ids) in by_shard {
        made.extend(
            shard
                .ask(k, deadline, |reply| Op::MediaMakePrivate {
                    ids,
                    owner,
                    reply,
                })
                .await?,
        );
    }
    // Every shard, this one too, may keep a view of them as public (an avatar's, say): it
    // would hand out unsigned URLs, which the server refuses now. Media that were private
    // already were forgotten when they became so.
    forget_everywhere(shard, made, deadline).await;
    Ok(())
}

/// Forgets these media's views here and tells every other shard to (made private or
/// deleted), waiting for each (until `deadline`). A shard too busy to hear keeps an old view
/// for `READY_CACHE_MS` at most, logged.
pub(crate) async fn forget_everywhere(shard: &Rc<Shard>, ids: Vec<u64>, deadline: Instant) {
    if ids.is_empty() {
        return;
    }
    forget(&ids);
    let asks = (0..shard.shards).filter(|k| *k != shard.id).map(|k| {
        let ids = ids.clone();
        shard.ask(k, deadline, |reply| Op::ForgetMedia { ids, reply })
    });
    for told in crate::shard::join_all(asks).await {
        if let Err(e) = told {
            tracing::warn!(error = %e, "a shard kept an old media view");
        }
    }
}
