//! Proves that direct messages survive a SIGKILL of the `nova` process under concurrent load,
//! with participants on both shards: every message answered 201 is in its conversation after
//! restart (read by every participant, from either shard, with its text, no repeats), and the
//! outbox then brings every participant's inbox up to the conversation's last message. A
//! fourth participant of the group, who never sends, marks it read as it goes: its last
//! answered read receipt holds after the kill. The senders also edit one message in five and
//! delete an older one in seven as they go: every answered edit and delete holds, and the
//! one in flight at the kill either landed or not.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use simd_json::json;

const ACKED_BEFORE_KILL: usize = 200;
const MESSAGES_PER_THREAD_MAX: usize = 100_000;
const REDELIVERY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct Acked {
    conversation: usize,
    id: u64,
    /// Its text, as sent or as its answered edit left it.
    text: String,
    /// Its delete was answered.
    deleted: bool,
    /// An edit (its text) or delete (`None`) sent and not answered (or answered 503): it may
    /// have landed or not.
    unsure: Option<Option<String>>,
}

/// The text an edit gives a message.
fn edited(text: &str) -> String {
    format!("{text} (edited)")
}

/// Sends as one participant into one conversation until the server stops answering; edits
/// every fifth message answered, and deletes every seventh the one answered three before it.
fn load(
    server: &Server,
    sender: &Member,
    conversation: (usize, u64),
    tag: &str,
    acked: &AtomicUsize,
) -> Vec<Acked> {
    let mut out: Vec<Acked> = Vec::new();
    for i in 0..MESSAGES_PER_THREAD_MAX {
        let text = format!("{tag} message {i}");
        let req = Req::post(&format!("/v1/conversations/{}/messages", conversation.1))
            .json(&json!({ "text": text.clone() }))
            .bearer(&sender.token)
            .timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 201 => {
                assert_eq!(resp.str("message.text"), text);
                out.push(Acked {
                    conversation: conversation.0,
                    id: parse_id(resp.at("message.id")),
                    text,
                    deleted: false,
                    unsure: None,
                });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) if resp.status == 503 => continue,
            Ok(resp) => panic!("message {text:?}: {}", resp.what_happened()),
            Err(_) => break,
        }
        let n = out.len();
        let change = if n.is_multiple_of(5) {
            Some(n - 1)
        } else if n.is_multiple_of(7) && n > 3 {
            Some(n - 4)
        } else {
            None
        };
        let Some(k) = change else { continue };
        let message = &mut out[k];
        let path = format!("/v1/messages/{}", message.id);
        let (req, new_text) = if k == n - 1 {
            let new_text = edited(&message.text);
            let req = Req::new("PATCH", &path).json(&json!({ "text": new_text.clone() }));
            (req, Some(new_text))
        } else {
            (Req::new("DELETE", &path), None)
        };
        let req = req.bearer(&sender.token).timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 200 || resp.status == 204 => match new_text {
                Some(t) => {
                    assert_eq!(resp.str("message.text"), t, "{}", resp.what_happened());
                    message.text = t;
                }
                None => message.deleted = true,
            },
            Ok(resp) if resp.status == 503 => message.unsure = Some(new_text),
            Ok(resp) => panic!("{} {path}: {}", req.method, resp.what_happened()),
            Err(_) => {
                message.unsure = Some(new_text);
                break;
            }
        }
    }
    out
}

/// Every message of `conversation` as `reader` reads it: id -> text, walked newest first by
/// `max_id` (which must be strictly newest first, without repeats).
fn texts(server: &Server, conversation: u64, reader: &Member) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut max_id: Option<u64> = None;
    loop {
        let cursor = max_id.map_or(String::new(), |m| format!("&max_id={m}"));
        let resp = server.get(
            &format!("/v1/conversations/{conversation}/messages?limit=100{cursor}"),
            reader.auth(),
        );
        resp.expect(200);
        for item in resp.at("items").as_array().expect("items") {
            let id = parse_id(at(item, "id").expect("id"));
            assert!(
                max_id.is_none_or(|m| id < m) && out.keys().next().is_none_or(|&o| id < o),
                "conversation {conversation}: {id} is not strictly older than the ones before"
            );
            let text = at(item, "text").and_then(|t| t.as_str()).expect("text");
            out.insert(id, text.to_string());
        }
        match next_cursor(&resp) {
            Some(next) => max_id = Some(next),
            None => return out,
        }
    }
}

/// The `last_read_id` of a receipt (0 for null: nothing read yet).
fn read_up_to(receipt: &Json) -> u64 {
    at(receipt, "last_read_id")
        .and_then(|v| v.as_str())
        .map_or(0, |id| id.parse().expect("an id"))
}

/// Marks `conversation` read as `reader`, over and over, until the server stops answering.
/// Returns the highest receipt answered (0: none).
fn read_load(server: &Server, reader: &Member, conversation: u64) -> u64 {
    let mut highest = 0;
    loop {
        let req = Req::post(&format!("/v1/conversations/{conversation}/read"))
            .bearer(&reader.token)
            .timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 200 => {
                let last = read_up_to(resp.json());
                assert!(
                    last >= highest,
                    "a receipt moved back: {last} after {highest}"
                );
                highest = last;
            }
            Ok(resp) if resp.status == 503 => {}
            Ok(resp) => panic!("read receipt: {}", resp.what_happened()),
            Err(_) => return highest,
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn relogin(server: &Server, members: &mut [Member]) {
    for m in members {
        m.token = server.login(&m.user.username, &m.user.password).access;
    }
}

#[test]
fn acknowledged_messages_survive_sigkill_and_reach_every_inbox() {
    let mut server = Server::start(&[]);
    // a and c on shard 0, b and d on shard 1; a pair across shards and a group of four, where
    // d only reads.
    let mut people = vec![
        server.member_on_shard(0),
        server.member_on_shard(1),
        server.member_on_shard(0),
        server.member_on_shard(1),
    ];
    const READER: usize = 3;
    let create = |creator: &Member, others: &[&Member]| {
        let ids: Vec<String> = others.iter().map(|m| m.id().to_string()).collect();
        let resp = server.post(
            "/v1/conversations",
            creator.auth(),
            json!({ "participants": ids }),
        );
        resp.expect(201);
        parse_id(resp.at("conversation.id"))
    };
    let pair = create(&people[0], &[&people[1]]);
    let group = create(&people[1], &[&people[0], &people[2], &people[READER]]);
    let conversations = [(pair, vec![0, 1]), (group, vec![0, 1, 2, READER])];
    let mut acked: Vec<Acked> = Vec::new();
    let mut receipt = 0;
    for round in 1..=2 {
        let shared = Arc::new(server);
        let count = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for (ci, (conv, members)) in conversations.iter().enumerate() {
            for &p in members.iter().filter(|&&p| p != READER) {
                let server = Arc::clone(&shared);
                let count = Arc::clone(&count);
                let sender = people[p].clone();
                let conv = (ci, *conv);
                let tag = format!("round {round} conversation {ci} sender {p}");
                handles.push(thread::spawn(move || {
                    load(&server, &sender, conv, &tag, &count)
                }));
            }
        }
        let reading = {
            let server = Arc::clone(&shared);
            let reader = people[READER].clone();
            thread::spawn(move || read_load(&server, &reader, group))
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while count.load(Ordering::SeqCst) < ACKED_BEFORE_KILL {
            assert!(Instant::now() < deadline, "too few messages in 120 s");
            thread::sleep(Duration::from_millis(5));
        }
        shared.signal(libc::SIGKILL);
        let sent: Vec<Acked> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let answered = reading.join().unwrap();
        assert!(
            answered > receipt,
            "round {round}: no new read receipt answered"
        );
        receipt = answered;
        server = Arc::try_unwrap(shared).ok().expect("no other owner");
        server.kill9();
        assert!(
            (0..2).all(|c| sent.iter().any(|m| m.conversation == c)),
            "round {round}: every conversation got messages"
        );
        acked.extend(sent);
        server.restart();
        relogin(&server, &mut people);
        // Killed under load, the server had commits only its write-ahead log held: what the
        // checks below find, the replay brought back.
        server.assert_replayed(&format!("round {round}: "));

        // Every participant reads every acknowledged message, once, newest first, as its
        // answered edits and deletes left it.
        let mut stored: Vec<BTreeSet<u64>> = Vec::new();
        for (ci, (conv, members)) in conversations.iter().enumerate() {
            let mut seen: Option<BTreeMap<u64, String>> = None;
            for &p in members {
                let found = texts(&server, *conv, &people[p]);
                match &seen {
                    Some(s) => assert_eq!(s, &found, "participants disagree"),
                    None => seen = Some(found),
                }
            }
            let found = seen.unwrap();
            for m in acked.iter_mut().filter(|m| m.conversation == ci) {
                let here = found.get(&m.id);
                let allowed = match &m.unsure {
                    None if m.deleted => here.is_none(),
                    None => here == Some(&m.text),
                    Some(None) => here.is_none() || here == Some(&m.text),
                    Some(Some(t)) => here == Some(&m.text) || here == Some(t),
                };
                assert!(
                    allowed,
                    "round {round}, conversation {ci}: message {} is {here:?} after the \
                     restart; answered text {:?}, delete answered: {}, in flight: {:?}",
                    m.id, m.text, m.deleted, m.unsure
                );
                // What was in flight is settled now.
                match here {
                    Some(t) => m.text = t.clone(),
                    None => m.deleted = true,
                }
                m.unsure = None;
            }
            stored.push(found.into_keys().collect());
        }

        // The reader's last answered receipt holds.
        let resp = server.get(&format!("/v1/conversations/{group}"), people[0].auth());
        resp.expect(200);
        let held = resp
            .at("conversation.read_receipts")
            .as_array()
            .unwrap()
            .iter()
            .find(|r| parse_id(at(r, "user_id").unwrap()) == people[READER].id())
            .map(read_up_to);
        assert!(
            held.is_some_and(|s| s >= receipt),
            "round {round}: the reader's answered receipt up to {receipt} is lost (stored: \
             {held:?})"
        );

        // Every inbox comes to order the conversations by their last message: the
        // `MessagePosted` events reached each participant's shard.
        let newest_first: Vec<u64> = {
            let mut by_last: Vec<(u64, u64)> = conversations
                .iter()
                .enumerate()
                // Inboxes order by the last message's millisecond, then by conversation id.
                .map(|(ci, (conv, _))| (*stored[ci].iter().next_back().unwrap() >> 22, *conv))
                .collect();
            by_last.sort_unstable_by(|a, b| b.cmp(a));
            by_last.into_iter().map(|(_, c)| c).collect()
        };
        let deadline = Instant::now() + REDELIVERY_TIMEOUT;
        for (p, member) in people.iter().enumerate() {
            let want: Vec<u64> = newest_first
                .iter()
                .copied()
                .filter(|c| {
                    conversations
                        .iter()
                        .any(|(id, m)| id == c && m.contains(&p))
                })
                .collect();
            loop {
                let resp = server.get("/v1/conversations", member.auth());
                resp.expect(200);
                if item_ids(&resp) == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "inbox of participant {p} (shard {}): {:?}, want {want:?}: {}",
                    member.shard(),
                    item_ids(&resp),
                    resp.text()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        let edits = acked
            .iter()
            .filter(|m| m.text.ends_with("(edited)"))
            .count();
        let deletes = acked.iter().filter(|m| m.deleted).count();
        assert!(
            edits > 0 && deletes > 0,
            "round {round}: {edits} edits and {deletes} deletes stored"
        );
        eprintln!(
            "round {round}: {} acknowledged messages verified, {} stored ({edits} edited, \
             {deletes} deleted); receipt {receipt} held",
            acked.len(),
            stored.iter().map(BTreeSet::len).sum::<usize>()
        );
    }
}

/// Conversations created before the kills, by `creator`.
#[derive(Debug, Default)]
struct Created {
    /// Answered 201, with whether the creator's leave was answered.
    answered: Vec<(u64, bool)>,
    /// A leave sent and not answered: it may have landed or not.
    unsure_leave: Option<u64>,
}

/// Every conversation in `member`'s inbox (`GET /v1/conversations`, walked by its cursor).
fn inbox(server: &Server, member: &Member) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    let mut cursor = String::new();
    for _ in 0..1000 {
        let resp = server.get(
            &format!("/v1/conversations?limit=100{cursor}"),
            member.auth(),
        );
        resp.expect(200);
        out.extend(item_ids(&resp));
        match resp.at("next").as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
    panic!("an inbox of more than 1,000 pages");
}

/// Creates conversations as `creator` with `others` (in turn: a pair, a group) and leaves
/// every third one answered, until the server stops answering.
fn create_load(server: &Server, creator: &Member, others: &[u64], acked: &AtomicUsize) -> Created {
    let mut out = Created::default();
    for i in 0..MESSAGES_PER_THREAD_MAX {
        let with: Vec<String> = others[..1 + i % others.len()]
            .iter()
            .map(u64::to_string)
            .collect();
        let req = Req::post("/v1/conversations")
            .json(&json!({ "participants": with }))
            .bearer(&creator.token)
            .timeout(Duration::from_secs(20));
        let id = match server.send(&req) {
            Ok(resp) if resp.status == 201 => parse_id(resp.at("conversation.id")),
            Ok(resp) if resp.status == 503 => continue,
            Ok(resp) => panic!("a new conversation: {}", resp.what_happened()),
            Err(_) => return out,
        };
        acked.fetch_add(1, Ordering::SeqCst);
        out.answered.push((id, false));
        if out.answered.len() % 3 != 0 {
            continue;
        }
        let req = Req::new("DELETE", &format!("/v1/conversations/{id}/membership"))
            .bearer(&creator.token)
            .timeout(Duration::from_secs(20));
        match server.send(&req) {
            Ok(resp) if resp.status == 204 => out.answered.last_mut().unwrap().1 = true,
            Ok(resp) if resp.status == 503 => out.unsure_leave = Some(id),
            Ok(resp) => panic!("leaving {id}: {}", resp.what_happened()),
            Err(_) => {
                out.unsure_leave = Some(id);
                return out;
            }
        }
    }
    out
}

/// Conversations created and left through a SIGKILL, with participants on both shards:
/// every answered one is there for every participant after the restart (in their inboxes, on
/// the other shard once the outbox has delivered), and every answered leave holds.
#[test]
fn answered_conversations_and_leaves_survive_sigkill() {
    let mut server = Server::start(&[]);
    let mut people = vec![
        server.member_on_shard(0),
        server.member_on_shard(1),
        server.member_on_shard(0),
    ];
    let shared = Arc::new(server);
    let count = Arc::new(AtomicUsize::new(0));
    let handle = {
        let (server, count) = (Arc::clone(&shared), Arc::clone(&count));
        let creator = people[0].clone();
        let others = [people[1].id(), people[2].id()];
        thread::spawn(move || create_load(&server, &creator, &others, &count))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < 60 {
        assert!(Instant::now() < deadline, "too few conversations in 120 s");
        assert!(!handle.is_finished(), "the creator stopped before the kill");
        thread::sleep(Duration::from_millis(5));
    }
    shared.signal(libc::SIGKILL);
    let created = handle.join().unwrap();
    server = Arc::try_unwrap(shared).ok().expect("no other owner");
    server.kill9();
    server.restart();
    relogin(&server, &mut people);
    server.assert_replayed("");
    let creator_inbox = inbox(&server, &people[0]);
    for (i, &(id, left)) in created.answered.iter().enumerate() {
        let unsure = created.unsure_leave == Some(id);
        let status = server
            .get(&format!("/v1/conversations/{id}"), people[0].auth())
            .status;
        let there = (status == 200, creator_inbox.contains(&id));
        let allowed: &[(bool, bool)] = match (left, unsure) {
            (true, _) => &[(false, false)],
            (false, true) => &[(true, true), (false, false)],
            (false, false) => &[(true, true)],
        };
        assert!(
            allowed.contains(&there),
            "conversation {id}: (readable, in the inbox) {there:?} for its creator; leave \
             answered: {left}, in flight: {unsure}"
        );
        // The others were in it from the start, and stay.
        let others = if i % 2 == 0 {
            &people[1..2]
        } else {
            &people[1..3]
        };
        for member in others {
            server
                .get(&format!("/v1/conversations/{id}"), member.auth())
                .expect(200);
        }
    }
    // The participants' inboxes, the one on the other shard by the outbox's events.
    let deadline = Instant::now() + REDELIVERY_TIMEOUT;
    for (p, member) in people.iter().enumerate().skip(1) {
        let want: BTreeSet<u64> = created
            .answered
            .iter()
            .enumerate()
            .filter(|(i, _)| p == 1 || i % 2 == 1)
            .map(|(_, (id, _))| *id)
            .collect();
        loop {
            let found = inbox(&server, member);
            if want.is_subset(&found) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "participant {p} (shard {}) misses {:?}",
                member.shard(),
                want.difference(&found).collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    let leaves = created.answered.iter().filter(|(_, left)| *left).count();
    assert!(leaves > 0, "no leave answered before the kill");
    eprintln!(
        "{} conversations answered, {leaves} left, a leave in flight: {}",
        created.answered.len(),
        created.unsure_leave.is_some()
    );
}
