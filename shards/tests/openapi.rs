//! Proves docs/openapi.yaml stays true: it lists exactly the routes of docs/api-contract.md, the
//! server answers each documented method with a documented status, and every other method 405.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

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

/// `METHOD /path` pairs named in backticks in the Routes section of docs/api-contract.md.
fn contract_routes() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/api-contract.md"
    ))
    .expect("docs/api-contract.md");
    let routes = text
        .split("## Routes")
        .nth(1)
        .expect("a Routes section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut out = BTreeSet::new();
    for piece in routes.split('`').skip(1).step_by(2) {
        let mut words = piece.split_whitespace();
        let (Some(method), Some(path)) = (words.next(), words.next()) else {
            continue;
        };
        if METHODS.contains(&method.to_ascii_lowercase().as_str()) && path.starts_with('/') {
            let path = path.split('?').next().unwrap();
            out.insert((method.to_ascii_lowercase(), path.to_string()));
        }
    }
    out
}

#[test]
fn openapi_lists_exactly_the_contract_routes() {
    let doc: BTreeSet<(String, String)> = documented()
        .into_iter()
        .flat_map(|(path, methods)| methods.into_keys().map(move |m| (m, path.clone())))
        .collect();
    let contract = contract_routes();
    assert!(
        contract.len() >= 12,
        "too few routes read from the contract: {contract:?}"
    );
    assert_eq!(
        doc, contract,
        "docs/openapi.yaml and docs/api-contract.md disagree"
    );
    for (path, methods) in documented() {
        for (method, codes) in methods {
            assert!(!codes.is_empty(), "{method} {path} documents no responses");
        }
    }
}

#[test]
fn the_server_answers_the_documented_routes_only() {
    let server = Server::start(&[]);
    for (path, methods) in documented() {
        let concrete = path.replace("{id}", "1");
        for method in METHODS {
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
                    assert!(
                        resp.status != 404 && resp.status != 405,
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
