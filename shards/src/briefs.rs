//! User briefs (id, names, avatar) as every view of a user shows them, and a cache of them on
//! each shard.
//!
//! A post, comment or message stores its author's username and display name as they were
//! when it was written; the API's views lay each user's brief as it is now over them
//! (`as_now`), the avatar resolved like attached media. Briefs live on their users' shards
//! (`Op::Briefs`); each shard keeps the ones it asked for (`CACHE_TTL`, `CACHE_MAX`), so a
//! page of posts by authors it has seen asks nothing. Every change of a brief (a display name
//! or avatar edited, an avatar's image deleted, an account erased) is told to every shard
//! before it is answered (`forget_everywhere`), so a client that made it reads it next,
//! wherever its request lands; answers that may predate such a word are not kept (`epoch`).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nova_core::shard_of;
use nova_protocol as wire;

use crate::api::Result;
use crate::error::ApiError;
use crate::mesh::{Op, UserBrief};
use crate::shard::Shard;

/// How long a brief is reused without asking again: only a shard that did not hear of a
/// change in time (`forget_everywhere`) shows an old one, this long at most.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Briefs kept per shard; the cache is emptied when it is full.
const CACHE_MAX: usize = 50_000;

#[derive(Default)]
struct Cache {
    briefs: HashMap<u64, (Instant, UserBrief)>,
    /// Counts the changes heard (`forget`).
    epoch: u64,
}

impl Cache {
    /// `user`'s brief, if kept and not older than `CACHE_TTL`.
    fn fresh(&self, user: u64, now: Instant) -> Option<UserBrief> {
        self.briefs
            .get(&user)
            .filter(|(at, _)| now.duration_since(*at) < CACHE_TTL)
            .map(|(_, b)| b.clone())
    }

    fn keep(&mut self, brief: UserBrief, now: Instant) {
        if self.briefs.len() >= CACHE_MAX {
            self.briefs.clear();
        }
        self.briefs.insert(brief.id, (now, brief));
    }
}

thread_local! {
    /// Each shard is one thread: this is the shard's own cache.
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Brief views of users, in the order of `ids` (unknown ids, and repeats, left out): from
/// this shard's cache, the rest asked of their shards, each shard once and all at once.
pub(crate) async fn briefs(
    shard: &Rc<Shard>,
    ids: &[u64],
    deadline: Instant,
) -> Result<Vec<UserBrief>> {
    let now = Instant::now();
    let mut found: HashMap<u64, UserBrief> = HashMap::with_capacity(ids.len());
    let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    CACHE.with(|c| {
        let c = c.borrow();
        for id in ids {
            match c.fresh(*id, now) {
                Some(b) => {
                    found.insert(*id, b);
                }
                None if shard_of(*id) < shard.shards => {
                    by_shard.entry(shard_of(*id)).or_default().push(*id);
                }
                None => {}
            }
        }
    });
    if !by_shard.is_empty() {
        let epoch = CACHE.with(|c| c.borrow().epoch);
        let asks = by_shard
            .into_iter()
            .map(|(k, ids)| shard.ask(k, deadline, |reply| Op::Briefs { ids, reply }));
        let answers = crate::shard::join_all(asks).await;
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            // A change told to this shard while the asks were out may be older than an
            // answer: keep nothing from them then.
            let keep = c.epoch == epoch;
            for answer in answers {
                for b in answer? {
                    if keep {
                        c.keep(b.clone(), now);
                    }
                    found.insert(b.id, b);
                }
            }
            Ok::<_, ApiError>(())
        })?;
    }
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// `user`'s brief if this shard has it at hand (no ask).
pub(crate) fn cached(user: u64) -> Option<UserBrief> {
    CACHE.with(|c| c.borrow().fresh(user, Instant::now()))
}

/// Forgets `user`'s brief on this shard (`Op::ForgetBrief`: its display name or avatar
/// changed, or it is gone).
pub(crate) fn forget(user: u64) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        c.briefs.remove(&user);
        c.epoch += 1;
    });
}

/// Tells every shard to forget `user`'s brief, waiting for each (until `deadline`): once this
/// returns, every shard that heard it shows the change. A shard too busy to hear it keeps
/// the old brief for `CACHE_TTL` at most, logged.
pub(crate) async fn forget_everywhere(shard: &Rc<Shard>, user: u64, deadline: Instant) {
    let asks =
        (0..shard.shards).map(|k| shard.ask(k, deadline, |reply| Op::ForgetBrief { user, reply }));
    for (k, told) in crate::shard::join_all(asks).await.into_iter().enumerate() {
        if let Err(e) = told {
            tracing::warn!(shard = k, user, error = %e, "a shard kept an old brief");
        }
    }
}

/// Users as brief views show them now, by id: the display name and avatar they have today.
/// A post, comment or message stores its author's names as they were when it was written;
/// its view takes these instead. Unknown (erased) users are left out.
pub(crate) async fn cards(
    shard: &Rc<Shard>,
    ids: impl IntoIterator<Item = u64>,
    deadline: Instant,
) -> Result<HashMap<u64, wire::UserBrief>> {
    let mut ids: Vec<u64> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let found = briefs(shard, &ids, deadline).await?;
    let mut avatars =
        crate::media_views::avatars(shard, found.iter().filter_map(|b| b.avatar), deadline).await?;
    Ok(found
        .into_iter()
        .map(|b| {
            let avatar = b.avatar.and_then(|m| avatars.remove(&m));
            (b.id, card(b, avatar))
        })
        .collect())
}

fn card(b: UserBrief, avatar: Option<wire::AttachedMediaView>) -> wire::UserBrief {
    wire::UserBrief {
        id: b.id.to_string(),
        username: b.username,
        display_name: b.display_name,
        avatar,
    }
}

/// `user`'s card (as `cards`) if this shard has it at hand, the brief and its avatar's view
/// both cached: no ask.
pub(crate) fn card_at_hand(shard: &Shard, user: u64) -> Option<wire::UserBrief> {
    let b = cached(user)?;
    let avatar = match b.avatar {
        Some(m) => Some(crate::media_views::avatar_at_hand(shard, m)?),
        None => None,
    };
    Some(card(b, avatar))
}

/// Replaces the user brief in each of `views` (`brief_of`) by that user's card (`cards`):
/// its display name and avatar as they are now, not as a post, comment or message stored
/// them. A user no longer found keeps the stored brief.
pub(crate) async fn as_now<V>(
    shard: &Rc<Shard>,
    views: &mut [V],
    brief_of: for<'v> fn(&'v mut V) -> &'v mut wire::UserBrief,
    deadline: Instant,
) -> Result<()> {
    let ids: Vec<u64> = views
        .iter_mut()
        .filter_map(|v| brief_of(v).id.parse().ok())
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let cards = cards(shard, ids, deadline).await?;
    apply_cards(&cards, views, brief_of);
    Ok(())
}

/// `as_now` with the cards at hand.
pub(crate) fn apply_cards<V>(
    cards: &HashMap<u64, wire::UserBrief>,
    views: &mut [V],
    brief_of: for<'v> fn(&'v mut V) -> &'v mut wire::UserBrief,
) {
    for v in views.iter_mut() {
        let brief = brief_of(v);
        if let Some(card) = brief.id.parse().ok().and_then(|id: u64| cards.get(&id)) {
            apply_card(card, brief);
        }
    }
}

/// Lays `card` over a stored `brief` of the same user.
pub(crate) fn apply_card(card: &wire::UserBrief, brief: &mut wire::UserBrief) {
    // The username never changes; what usually has not changed either is not copied.
    if brief.display_name != card.display_name {
        brief.display_name.clone_from(&card.display_name);
    }
    brief.avatar.clone_from(&card.avatar);
}

/// Brief views of `ids` as they are now (`cards`), in their order; unknown users left out.
pub(crate) async fn brief_views(
    shard: &Rc<Shard>,
    ids: &[u64],
    deadline: Instant,
) -> Result<Vec<wire::UserBrief>> {
    let mut cards = cards(shard, ids.iter().copied(), deadline).await?;
    Ok(ids.iter().filter_map(|id| cards.remove(id)).collect())
}
