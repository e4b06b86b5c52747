//! Proves docs/openapi.yaml stays true: it documents exactly the routes the server serves
//! (`nova_protocol::ROUTES`), docs/api-contract.md names those routes and no others, the server
//! answers each documented method with a documented status and every other method 405, and the
//! DeathStarBench routes answer 404 unless the server runs with `--dsb-compat`.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use nova_protocol::ROUTES;

const METHODS: [&str; 7] = ["get", "post", "put", "patch", "delete", "head", "options"];
/// Methods tried on every documented path (HEAD and OPTIONS answers have no error body to
/// check, so they are only tried where documented).
const PROBED: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Routes that take no token and answer 404 for anything not stored (a rendition of an
/// unknown media id), so 404 cannot tell "not routed" from them here; their routing is
/// checked with `Route::find` instead, and their other answers in shards/tests/media.rs.
const NOT_FOUND_WITHOUT_DATA: [&str; 1] = ["/v1/media/{id}/{name}"];

/// The prefix of the DeathStarBench routes, served only with `--dsb-compat`.
const DSB_PREFIX: &str = "/wrk2-api/";

/// path template -> method -> documented status codes, read from the `paths:` section (the
/// file's own layout: two spaces per level, quoted status codes).
fn documented() -> BTreeMap<String, BTreeMap<String, BTreeSet<u16>>> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml"))
            .expect("docs/openapi.yaml");
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<u16>>> = BTreeMap::new();
    let mut in_paths = false;
    let (mut path, mut method, mut in_responses) = (None::<String>, None::<String>, false);
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let key = line
            .trim()
            .strip_suffix(':')
            .map(|k| k.trim_matches('\'').trim_matches('"'));
        if indent == 0 {
            in_paths = line.trim() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        match (indent, key) {
            (2, Some(p)) => {
                assert!(p.starts_with('/'), "path key {p:?}");
                path = Some(p.to_string());
                method = None;
                out.entry(p.to_string()).or_default();
            }
            (4, Some(m)) if METHODS.contains(&m) => {
                method = Some(m.to_string());
                in_responses = false;
                let p = path.clone().expect("method outside a path");
                let previous = out
                    .get_mut(&p)
                    .unwrap()
                    .insert(m.to_string(), BTreeSet::new());
                assert!(previous.is_none(), "{m} twice under {p}");
            }
            (4, _) => method = None,
            (6, k) => in_responses = k == Some("responses"),
            (8, Some(code)) if in_responses => {
                if let (Some(p), Some(m)) = (&path, &method) {
                    let code: u16 = code.parse().unwrap_or_else(|_| panic!("status {code:?}"));
                    out.get_mut(p).unwrap().get_mut(m).unwrap().insert(code);
                }
            }
            _ => {}
        }
    }
    out
}

/// (lower-case method, path template) pairs documented in docs/openapi.yaml.
fn documented_pairs() -> BTreeSet<(String, String)> {
    documented()
        .into_iter()
        .flat_map(|(path, methods)| methods.into_keys().map(move |m| (m, path.clone())))
        .collect()
}

/// (lower-case method, path template) pairs the server routes: `nova_protocol::ROUTES`.
fn served() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(method, path)| (method.to_ascii_lowercase(), path.to_string()))
        .collect()
}

fn contract_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/api-contract.md"
    ))
    .expect("docs/api-contract.md")
}

/// What docs/api-contract.md names in backticks: `METHOD /path` pairs, and every `/path`
/// (with or without a method; the query string left out).
fn contract_routes() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let text = contract_text();
    let (mut pairs, mut paths) = (BTreeSet::new(), BTreeSet::new());
    for piece in text.split('`').skip(1).step_by(2) {
        let words: Vec<&str> = piece.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if !word.starts_with('/') {
                continue;
            }
            let path = word.split('?').next().unwrap().to_string();
            paths.insert(path.clone());
            if let Some(method) = i.checked_sub(1).map(|j| words[j].to_ascii_lowercase()) {
                if METHODS.contains(&method.as_str()) {
                    pairs.insert((method, path));
                }
            }
        }
    }
    (pairs, paths)
}

/// A concrete path for a route template.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "1")
        .replace("{username}", "nobody")
        .replace("{name}", "thumb.jpg")
}

#[test]
fn openapi_documents_exactly_the_served_routes() {
    let served = served();
    assert_eq!(served.len(), ROUTES.len(), "ROUTES lists a route twice");
    let doc = documented_pairs();
    let undocumented: Vec<_> = served.difference(&doc).collect();
    let unserved: Vec<_> = doc.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "docs/openapi.yaml and nova_protocol::ROUTES disagree: served but not documented \
         {undocumented:?}; documented but not served {unserved:?}"
    );
    for (path, methods) in documented() {
        for (method, codes) in methods {
            assert!(!codes.is_empty(), "{method} {path} documents no responses");
        }
    }
}

#[test]
fn the_contract_names_the_served_routes_only() {
    let served = served();
    let (pairs, paths) = contract_routes();
    assert!(
        pairs.len() >= 12,
        "too few routes read from the contract: {pairs:?}"
    );
    let unserved: Vec<_> = pairs.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "docs/api-contract.md names routes the server does not serve: {unserved:?}"
    );
    let unnamed: BTreeSet<&str> = ROUTES
        .iter()
        .map(|(_, path)| *path)
        .filter(|path| !paths.contains(*path))
        .collect();
    assert!(
        unnamed.is_empty(),
        "routes in nova_protocol::ROUTES that docs/api-contract.md never names: {unnamed:?}"
    );
}

#[test]
fn the_server_answers_the_documented_routes_only() {
    // With --dsb-compat, so that the DeathStarBench routes are served too.
    let server = Server::start(&["--dsb-compat"]);
    for (path, methods) in documented() {
        let concrete = concrete(&path);
        for method in ["head", "options"] {
            if let Some(codes) = methods.get(method) {
                let resp = server.call(&method.to_ascii_uppercase(), &concrete, None, None);
                assert!(
                    codes.contains(&resp.status),
                    "{method} {path}: status {} is not documented ({codes:?})",
                    resp.status
                );
            }
        }
        for method in PROBED {
            let upper = method.to_ascii_uppercase();
            let resp = server.call(&upper, &concrete, None, None);
            match methods.get(method) {
                Some(codes) => {
                    assert!(
                        codes.contains(&resp.status),
                        "{upper} {path}: status {} is not documented ({codes:?}): {}",
                        resp.status,
                        resp.what_happened()
                    );
                    let exempt = NOT_FOUND_WITHOUT_DATA.contains(&path.as_str())
                        && resp.status == 404
                        && nova_protocol::Route::find(&upper.parse().unwrap(), &concrete).is_ok();
                    assert!(
                        exempt || (resp.status != 404 && resp.status != 405),
                        "documented {upper} {path} is not routed: {}",
                        resp.what_happened()
                    );
                    resp.expect_common_headers();
                }
                None => {
                    assert_eq!(
                        resp.status,
                        405,
                        "undocumented {upper} {path}: {}",
                        resp.what_happened()
                    );
                    resp.expect_error(405, "method_not_allowed");
                }
            }
        }
    }
}

#[test]
fn without_dsb_compat_the_deathstarbench_routes_are_404() {
    let server = Server::start(&[]);
    for (path, methods) in documented() {
        if !path.starts_with(DSB_PREFIX) {
            continue;
        }
        for (method, codes) in methods {
            assert!(
                codes.contains(&404),
                "{method} {path} does not document the 404 it answers without --dsb-compat"
            );
            let upper = method.to_ascii_uppercase();
            server
                .call(&upper, &concrete(&path), None, None)
                .expect_error(404, "not_found");
        }
    }
}
