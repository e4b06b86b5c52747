//! Proves that direct messages survive a SIGKILL of the `nova` process under concurrent load,
//! with participants on both shards: every message answered 201 is in its conversation after
//! restart (read by every participant, from either shard, with its text, no repeats), and the
//! outbox then brings every participant's inbox up to the conversation's last message. A
//! fourth participant of the group, who never sends, marks it read as it goes: its last
//! answered read receipt holds after the kill.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
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
    text: String,
}

/// Sends as one participant into one conversation until the server stops answering.
fn load(
    server: &Server,
    sender: &Member,
    conversation: (usize, u64),
    tag: &str,
    acked: &AtomicUsize,
) -> Vec<Acked> {
    let mut out = Vec::new();
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
                });
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) if resp.status == 503 => {}
            Ok(resp) => panic!("message {text:?}: {}", resp.what_happened()),
            Err(_) => break,
        }
    }
    out
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
        let log = server.stderr_once_has("replayed the write-ahead log", Duration::from_secs(5));
        assert!(
            log.contains("replayed the write-ahead log"),
            "round {round}: nothing was replayed after the kill; stderr:\n{log}"
        );

        // Every participant reads every acknowledged message, once, newest first.
        let mut stored: Vec<BTreeSet<u64>> = Vec::new();
        for (ci, (conv, members)) in conversations.iter().enumerate() {
            let mut seen: Option<Vec<u64>> = None;
            for &p in members {
                let ids = server.walk_posts(
                    &format!("/v1/conversations/{conv}/messages"),
                    &people[p].token,
                    100,
                );
                if let Some(w) = ids.windows(2).find(|w| w[0] <= w[1]) {
                    panic!("conversation {ci}: not strictly newest first: {w:?}");
                }
                match &seen {
                    Some(s) => assert_eq!(s, &ids, "participants disagree"),
                    None => seen = Some(ids),
                }
            }
            let set: BTreeSet<u64> = seen.unwrap().into_iter().collect();
            let lost: Vec<&Acked> = acked
                .iter()
                .filter(|m| m.conversation == ci && !set.contains(&m.id))
                .collect();
            assert!(lost.is_empty(), "conversation {ci}: lost {lost:?}");
            stored.push(set);
        }
        for m in &acked[acked.len().saturating_sub(20)..] {
            let conv = conversations[m.conversation].0;
            let page = server.get(
                &format!(
                    "/v1/conversations/{conv}/messages?max_id={}&limit=1",
                    m.id + 1
                ),
                people[conversations[m.conversation].1[0]].auth(),
            );
            page.expect(200);
            assert_eq!(page.str("items.0.text"), m.text);
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
        eprintln!(
            "round {round}: {} acknowledged messages verified, {} stored; receipt {receipt} held",
            acked.len(),
            stored.iter().map(BTreeSet::len).sum::<usize>()
        );
    }
}
