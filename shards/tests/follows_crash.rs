//! Proves that follows, unfollows, blocks and unblocks survive a SIGKILL of the `nova` process
//! under load, on both sides of each relation. Four actors (two per shard) follow and unfollow
//! four targets (two per shard) over and over, and follow, block and unblock four others, who
//! each followed every actor first, through the kill. After each restart:
//! - every answered change holds, and a change in flight at the kill either landed whole or
//!   not at all;
//! - each follow shows in its followee's followers, across shards too, once the outbox has
//!   delivered, and nothing else does;
//! - a block took away the follow its target had of the blocker, on both shards;
//! - every profile's `followers_count` and `following_count` equal its lists.
//!
//! Between their changes the actors also edit their profile's bio, their language preference
//! and who may message them and how often to get notification digests, and mute or unmute one
//! target: after each restart each holds its last answered value (or the one in flight at the
//! kill).
//!
//! A second test does the same for follow requests to a private account, and its approvals
//! and rejections.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Rounds of load and SIGKILL.
const ROUNDS: usize = 3;
/// Changes acknowledged (all actors together) before the kill, per round.
const ACKED_BEFORE_KILL: usize = 300;
/// How long the outbox relay may take to deliver after a restart.
const REDELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Follow,
    Unfollow,
    Block,
    Unblock,
}

/// Where a relation stands, as its actor sees it: (follows, blocks).
type State = (bool, bool);

impl Change {
    fn request(self, target: u64, token: &str) -> Req {
        let path = match self {
            Change::Follow | Change::Unfollow => format!("/v1/users/{target}/follow"),
            Change::Block | Change::Unblock => format!("/v1/users/{target}/block"),
        };
        let req = match self {
            Change::Follow | Change::Block => Req::post(&path),
            Change::Unfollow | Change::Unblock => Req::new("DELETE", &path),
        };
        req.bearer(token).timeout(Duration::from_secs(20))
    }

    /// The state the change leaves.
    fn leaves(self) -> State {
        match self {
            Change::Follow => (true, false),
            Change::Block => (false, true),
            Change::Unfollow | Change::Unblock => (false, false),
        }
    }
}

/// One actor's relation with one target, as the test knows it.
#[derive(Clone, Debug)]
struct Relation {
    actor: usize,
    target: usize,
    /// A relation of the block targets: follow, block, unblock in turn (else follow and
    /// unfollow in turn).
    blocking: bool,
    /// The state every answered change (and the last check) leaves.
    state: State,
    /// A change sent and not answered (or answered 503): it may have landed or not.
    unsure: Option<Change>,
    /// Whether a block of this relation was ever stored (answered, or found after a kill):
    /// the target's own follow of the actor is gone for good then.
    blocked_once: bool,
    /// Changes answered, all rounds.
    answered: usize,
}

impl Relation {
    fn next(&self) -> Change {
        match (self.blocking, self.state) {
            (_, (false, true)) => Change::Unblock,
            (true, (true, _)) => Change::Block,
            (false, (true, _)) => Change::Unfollow,
            (_, (false, false)) => Change::Follow,
        }
    }
}

/// The profile edits an actor makes between its changes, in turn: (route, field, where a read
/// finds it after the restart). The last is a mute of `MUTED`, on and off in turn, which the
/// actor's `GET /v1/me/mutes` shows.
const EDITS: [(&str, &str, &str); 5] = [
    ("/v1/me/profile", "bio", "user.bio"),
    ("/v1/me/preferences", "language", "preferences.language"),
    ("/v1/me/settings", "messages_from", "settings.messages_from"),
    ("/v1/users/{id}/mute", "", "mute"),
    ("/v1/me/settings", "email_digest", "settings.email_digest"),
];
const MUTE: usize = 3;
/// The target every actor mutes and unmutes (never blocked, so always there to mute).
const MUTED: usize = 3;

/// The value the `n`th edit of kind `kind` sets.
fn edit_value(kind: usize, n: usize) -> String {
    match kind {
        0 => format!("bio {n}"),
        1 => ["en", "de", "fr", "es"][n % 4].to_string(),
        2 => ["everyone", "following"][n % 2].to_string(),
        MUTE => ["on", "off"][n % 2].to_string(),
        _ => ["daily", "weekly", "off"][n % 3].to_string(),
    }
}

/// One actor's edits of each kind of `EDITS`: the last answered value, and the one in flight
/// at the kill (or answered 503).
#[derive(Clone, Debug, Default)]
struct Edits {
    answered: [Option<String>; EDITS.len()],
    unsure: [Option<String>; EDITS.len()],
    count: usize,
}

/// The cast: actors 0 and 1 on shard 0, 2 and 3 on shard 1; targets the same; blockers'
/// targets the same, each following every actor from the start.
struct Cast {
    actors: Vec<Member>,
    targets: Vec<Member>,
    blocked: Vec<Member>,
}

impl Cast {
    fn everyone(&mut self) -> impl Iterator<Item = &mut Member> {
        self.actors
            .iter_mut()
            .chain(self.targets.iter_mut())
            .chain(self.blocked.iter_mut())
    }
}

fn cast(server: &Server) -> (Cast, Vec<Relation>) {
    let four = || -> Vec<Member> {
        [0, 0, 1, 1]
            .into_iter()
            .map(|s| server.member_on_shard(s))
            .collect()
    };
    let cast = Cast {
        actors: four(),
        targets: four(),
        blocked: four(),
    };
    for b in &cast.blocked {
        for a in &cast.actors {
            server
                .call(
                    "POST",
                    &format!("/v1/users/{}/follow", a.id()),
                    b.auth(),
                    None,
                )
                .expect(200);
        }
    }
    let mut relations = Vec::new();
    for actor in 0..cast.actors.len() {
        for blocking in [false, true] {
            for target in 0..4 {
                relations.push(Relation {
                    actor,
                    target,
                    blocking,
                    state: (false, false),
                    unsure: None,
                    blocked_once: false,
                    answered: 0,
                });
            }
        }
    }
    (cast, relations)
}

/// Sends the actor's next profile edit (or mute of `muted`). False once the server stops
/// answering.
fn edit(server: &Server, token: &str, muted: u64, edits: &mut Edits) -> bool {
    let kind = edits.count % EDITS.len();
    let value = edit_value(kind, edits.count / EDITS.len());
    edits.count += 1;
    let (path, field, _) = EDITS[kind];
    let path = path.replace("{id}", &muted.to_string());
    let req = match (kind, value.as_str()) {
        (MUTE, "on") => Req::post(&path),
        (MUTE, _) => Req::new("DELETE", &path),
        _ => {
            let mut body = simd_json::owned::Object::new();
            body.insert(field.into(), value.clone().into());
            Req::new("PATCH", &path).json(&Json::from(body))
        }
    };
    let req = req.bearer(token).timeout(Duration::from_secs(20));
    match server.send(&req) {
        Ok(resp) if resp.status == 200 => {
            edits.answered[kind] = Some(value);
            edits.unsure[kind] = None;
            true
        }
        Ok(resp) if resp.status == 503 => {
            edits.unsure[kind] = Some(value);
            true
        }
        Ok(resp) => panic!("PATCH {path}: {}", resp.what_happened()),
        Err(_) => {
            edits.unsure[kind] = Some(value);
            false
        }
    }
}

/// Changes `relations` (all of one actor) in turn, with a profile edit after every third,
/// until the server stops answering.
fn load(
    server: &Server,
    token: &str,
    ids: &(Vec<u64>, Vec<u64>),
    (mut relations, mut edits): (Vec<Relation>, Edits),
    acked: &AtomicUsize,
) -> (Vec<Relation>, Edits) {
    for i in 0.. {
        if i % 3 == 2 && !edit(server, token, ids.0[MUTED], &mut edits) {
            break;
        }
        let n = relations.len();
        // A relation left unsure (503) is not touched again this round.
        let Some(r) = (0..n)
            .map(|k| (i + k) % n)
            .find(|&k| relations[k].unsure.is_none())
        else {
            break;
        };
        let relation = &mut relations[r];
        let change = relation.next();
        let target = if relation.blocking {
            ids.1[relation.target]
        } else {
            ids.0[relation.target]
        };
        match server.send(&change.request(target, token)) {
            Ok(resp) if resp.status == 200 => {
                relation.state = change.leaves();
                relation.answered += 1;
                relation.blocked_once |= change == Change::Block;
                acked.fetch_add(1, Ordering::SeqCst);
            }
            // Overloaded or timed out: says nothing either way.
            Ok(resp) if resp.status == 503 => relation.unsure = Some(change),
            Ok(resp) => panic!("{change:?} of {target}: {}", resp.what_happened()),
            Err(_) => {
                relation.unsure = Some(change);
                break;
            }
        }
    }
    (relations, edits)
}

/// Runs every actor's load and SIGKILLs the server once `ACKED_BEFORE_KILL` changes have
/// been answered, while requests are still in flight.
fn load_then_kill(
    server: Server,
    cast: &Cast,
    (relations, edits): (Vec<Relation>, Vec<Edits>),
) -> (Server, Vec<Relation>, Vec<Edits>) {
    let server = Arc::new(server);
    let acked = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new((
        cast.targets.iter().map(Member::id).collect::<Vec<_>>(),
        cast.blocked.iter().map(Member::id).collect::<Vec<_>>(),
    ));
    let handles: Vec<_> = cast
        .actors
        .iter()
        .enumerate()
        .map(|(a, actor)| {
            let mine: Vec<Relation> = relations.iter().filter(|r| r.actor == a).cloned().collect();
            let (server, acked, ids) = (Arc::clone(&server), Arc::clone(&acked), Arc::clone(&ids));
            let token = actor.token.clone();
            let edits = edits[a].clone();
            thread::spawn(move || load(&server, &token, &ids, (mine, edits), &acked))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
        assert!(
            Instant::now() < deadline,
            "only {} changes answered in 120 s",
            acked.load(Ordering::SeqCst)
        );
        assert!(
            !handles.iter().all(|h| h.is_finished()),
            "every actor stopped before the kill"
        );
        thread::sleep(Duration::from_millis(5));
    }
    server.signal(libc::SIGKILL);
    let mut relations = Vec::new();
    let mut edits = Vec::new();
    for h in handles {
        let (r, e) = h.join().unwrap();
        relations.extend(r);
        edits.push(e);
    }
    let mut server = Arc::try_unwrap(server).ok().expect("no other owner");
    server.kill9(); // reap it
    (server, relations, edits)
}

/// After a restart: each actor's profile, preferences, settings and mute hold its last
/// answered edit of each, or the one in flight. Settles each to what was found.
fn check_edits(server: &Server, cast: &Cast, edits: &mut [Edits], round: usize) {
    for (a, (actor, e)) in cast.actors.iter().zip(edits.iter_mut()).enumerate() {
        for (kind, (path, _, field)) in EDITS.iter().enumerate() {
            let found = match kind {
                MUTE => {
                    let resp = server.get("/v1/me/mutes?limit=100", actor.auth());
                    resp.expect(200);
                    let muted: Vec<u64> = resp
                        .at("items")
                        .as_array()
                        .expect("items")
                        .iter()
                        .map(|item| parse_id(item.get("user").and_then(|u| u.get("id")).unwrap()))
                        .collect();
                    let on = muted == [cast.targets[MUTED].id()];
                    assert!(on || muted.is_empty(), "actor {a} mutes {muted:?}");
                    ["off", "on"][usize::from(on)].to_string()
                }
                _ => {
                    let path = match kind {
                        0 => format!("/v1/users/{}", actor.id()),
                        _ => path.to_string(),
                    };
                    let resp = server.get(&path, actor.auth());
                    resp.expect(200);
                    resp.str(field).to_string()
                }
            };
            let allowed = [&e.answered[kind], &e.unsure[kind]];
            assert!(
                allowed.iter().any(|v| v.as_deref() == Some(&found))
                    || allowed.iter().all(|v| v.is_none()),
                "round {round}: actor {a}'s {field} is {found:?} after the restart; answered \
                 {:?}, in flight {:?}",
                e.answered[kind],
                e.unsure[kind]
            );
            if e.answered[kind].is_some() || e.unsure[kind].is_some() {
                e.answered[kind] = Some(found);
            }
            e.unsure[kind] = None;
        }
    }
}

/// The ids in `member`'s followers or following list, as `member` sees it.
fn relation_ids(server: &Server, member: &Member, list: &str) -> BTreeSet<u64> {
    let resp = server.get(
        &format!("/v1/users/{}/{list}?limit=100", member.id()),
        member.auth(),
    );
    resp.expect(200);
    assert!(next_cursor(&resp).is_none(), "{}", resp.what_happened());
    item_ids(&resp).into_iter().collect()
}

/// Whether `member` sees `other`'s profile (a block either way hides it: 404).
fn sees(server: &Server, member: &Member, other: &Member) -> bool {
    let resp = server.get(&format!("/v1/users/{}", other.id()), member.auth());
    match resp.status {
        200 => true,
        404 => false,
        _ => panic!("profile of {}: {}", other.id(), resp.what_happened()),
    }
}

/// After a restart: each relation as its actor finds it, against what its changes allow.
/// Settles each relation's state to what was found. The follow is read on the actor's shard;
/// a block hides the profile on the target's shard once its event is applied there, which
/// after a kill may wait for the outbox: a relation is read again until it is allowed, for
/// as long as redelivery may take.
fn check_actors(server: &Server, cast: &Cast, relations: &mut [Relation], round: usize) {
    let deadline = Instant::now() + REDELIVERY_TIMEOUT;
    for (a, actor) in cast.actors.iter().enumerate() {
        for r in relations.iter_mut().filter(|r| r.actor == a) {
            let target = if r.blocking {
                &cast.blocked[r.target]
            } else {
                &cast.targets[r.target]
            };
            let allowed: Vec<State> = std::iter::once(r.state)
                .chain(r.unsure.map(Change::leaves))
                .collect();
            let found = loop {
                let found = (
                    relation_ids(server, actor, "following").contains(&target.id()),
                    !sees(server, actor, target),
                );
                if allowed.contains(&found) || Instant::now() >= deadline {
                    break found;
                }
                thread::sleep(Duration::from_millis(100));
            };
            assert!(
                allowed.contains(&found),
                "round {round}: actor {a} and {} target {}: found (follows, blocks) {found:?}, \
                 allowed {allowed:?} ({} changes answered, in flight: {:?})",
                if r.blocking { "blocked" } else { "followed" },
                r.target,
                r.answered,
                r.unsure
            );
            r.state = found;
            r.blocked_once |= found.1;
            r.unsure = None;
        }
    }
}

/// The other sides: followers lists (on the followees' shards), the blocked targets' own
/// follows, and every profile's counts. Waits for the outbox to deliver.
fn check_mirrors(server: &Server, cast: &Cast, relations: &[Relation], round: usize) {
    let deadline = Instant::now() + REDELIVERY_TIMEOUT;
    loop {
        match mirror_mismatch(server, cast, relations) {
            None => return,
            Some(what) => assert!(
                Instant::now() < deadline,
                "round {round}, {} s after the restart: {what}",
                REDELIVERY_TIMEOUT.as_secs()
            ),
        }
        thread::sleep(Duration::from_millis(250));
    }
}

fn mirror_mismatch(server: &Server, cast: &Cast, relations: &[Relation]) -> Option<String> {
    let actor_id = |a: usize| cast.actors[a].id();
    for (t, target) in cast.targets.iter().enumerate() {
        let want: BTreeSet<u64> = relations
            .iter()
            .filter(|r| !r.blocking && r.target == t && r.state.0)
            .map(|r| actor_id(r.actor))
            .collect();
        let found = relation_ids(server, target, "followers");
        if found != want {
            return Some(format!("target {t} has followers {found:?}, not {want:?}"));
        }
    }
    for (b, blocked) in cast.blocked.iter().enumerate() {
        let mine = || {
            relations
                .iter()
                .filter(move |r| r.blocking && r.target == b)
        };
        let followers: BTreeSet<u64> = mine()
            .filter(|r| r.state.0)
            .map(|r| actor_id(r.actor))
            .collect();
        let found = relation_ids(server, blocked, "followers");
        if found != followers {
            return Some(format!(
                "blocked target {b} has followers {found:?}, not {followers:?}"
            ));
        }
        let following: BTreeSet<u64> = mine()
            .filter(|r| !r.blocked_once)
            .map(|r| actor_id(r.actor))
            .collect();
        let found = relation_ids(server, blocked, "following");
        if found != following {
            return Some(format!(
                "blocked target {b} follows {found:?}, not {following:?} (a block takes a \
                 follow away for good)"
            ));
        }
    }
    for (a, actor) in cast.actors.iter().enumerate() {
        let want: BTreeSet<u64> = relations
            .iter()
            .filter(|r| r.actor == a && r.blocking && !r.blocked_once)
            .map(|r| cast.blocked[r.target].id())
            .collect();
        let found = relation_ids(server, actor, "followers");
        if found != want {
            return Some(format!("actor {a} has followers {found:?}, not {want:?}"));
        }
    }
    let everyone = cast.actors.iter().chain(&cast.targets).chain(&cast.blocked);
    for member in everyone {
        let resp = server.get(&format!("/v1/users/{}", member.id()), member.auth());
        resp.expect(200);
        let count = |field: &str| resp.at(&format!("user.{field}")).as_u64().expect("a count");
        let lists = (
            relation_ids(server, member, "followers").len() as u64,
            relation_ids(server, member, "following").len() as u64,
        );
        let counts = (count("followers_count"), count("following_count"));
        if counts != lists {
            return Some(format!(
                "user {}: (followers_count, following_count) {counts:?}, lists {lists:?}",
                member.id()
            ));
        }
    }
    None
}

#[test]
fn answered_follows_and_blocks_hold_on_both_shards_after_sigkill() {
    // No periodic checkpoint: everything a round's load writes is the log's to replay, so
    // every round checks the replay of every kind of change, wherever the kill falls.
    let mut server = Server::start(&["--checkpoint-ms", "60000"]);
    assert!(server.shards() >= 2, "the relations must cross shards");
    let (mut cast, mut relations) = cast(&server);
    let mut edits = vec![Edits::default(); cast.actors.len()];
    for round in 1..=ROUNDS {
        let (s, r, e) = load_then_kill(server, &cast, (relations, edits));
        server = s;
        relations = r;
        edits = e;
        server.restart();
        server.assert_replayed(&format!("round {round}: "));
        for member in cast.everyone() {
            member.token = server
                .login(&member.user.username, &member.user.password)
                .access;
        }
        let in_flight = relations.iter().filter(|r| r.unsure.is_some()).count();
        check_actors(&server, &cast, &mut relations, round);
        check_mirrors(&server, &cast, &relations, round);
        check_edits(&server, &cast, &mut edits, round);
        let blocks = relations.iter().filter(|r| r.blocked_once).count();
        assert!(
            round < 2 || blocks > 0,
            "round {round}: no block stored yet; the load never got to them"
        );
        eprintln!(
            "round {round}: {} changes answered in all, {in_flight} in flight at the kill; \
             {} follows and {} blocks stand, {blocks} relations blocked once",
            relations.iter().map(|r| r.answered).sum::<usize>(),
            relations.iter().filter(|r| r.state.0).count(),
            relations.iter().filter(|r| r.state.1).count(),
        );
    }
}

/// Follow requests to a private account, and its answers, with only the write-ahead log
/// holding them at the kill: after the restart every answered request is still waiting
/// unless answered, every approval made a follower on both sides (the requester's shard
/// once the outbox has delivered), and every rejection left nothing.
#[test]
fn answered_follow_requests_and_answers_survive_sigkill() {
    let mut server = Server::start(&["--checkpoint-ms", "60000"]);
    let mut owner = server.member_on_shard(0);
    let mut requesters: Vec<Member> = [0, 1, 0, 1, 0, 1, 0, 1]
        .into_iter()
        .map(|s| server.member_on_shard(s))
        .collect();
    server
        .call(
            "PATCH",
            "/v1/me/settings",
            owner.auth(),
            Some(simd_json::json!({"private": true})),
        )
        .expect(200);
    for r in &requesters {
        let resp = server.call(
            "POST",
            &format!("/v1/users/{}/follow", owner.id()),
            r.auth(),
            None,
        );
        resp.expect(200);
        assert_eq!(resp.at("requested").as_bool(), Some(true));
    }
    // Requesters 0-2 approved, 3-4 rejected, 5-7 left waiting.
    for (i, r) in requesters.iter().enumerate().take(5) {
        let verb = if i < 3 { "approve" } else { "reject" };
        server
            .call(
                "POST",
                &format!("/v1/me/follow-requests/{}/{verb}", r.id()),
                owner.auth(),
                None,
            )
            .expect(204);
    }
    server.kill9();
    server.restart();
    server.assert_replayed("");
    owner = owner.logged_in_again(&server);
    requesters = requesters
        .into_iter()
        .map(|r| r.logged_in_again(&server))
        .collect();
    let ids = |range: std::ops::Range<usize>| -> BTreeSet<u64> {
        requesters[range].iter().map(Member::id).collect()
    };
    let resp = server.get("/v1/me/follow-requests", owner.auth());
    resp.expect(200);
    let waiting: BTreeSet<u64> = resp
        .at("items")
        .as_array()
        .expect("items")
        .iter()
        .map(|item| parse_id(at(item, "user.id").expect("user.id")))
        .collect();
    assert_eq!(waiting, ids(5..8), "the requests still waiting");
    assert_eq!(
        relation_ids(&server, &owner, "followers"),
        ids(0..3),
        "the approved requesters follow"
    );
    let deadline = Instant::now() + REDELIVERY_TIMEOUT;
    for (i, r) in requesters.iter().enumerate() {
        let want = i < 3;
        loop {
            let follows = relation_ids(&server, r, "following").contains(&owner.id());
            if follows == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "requester {i} (shard {}): following the owner {follows}, want {want}",
                r.shard()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}
