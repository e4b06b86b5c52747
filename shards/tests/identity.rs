//! Proves the identity API of docs/api-contract.md against the real `nova` process: accounts,
//! logins on both shards, sessions and refresh rotation, email verification, password reset,
//! every bad input, tokens that must be refused, rate limits and the error envelope.

// Helpers outside `#[test]` functions panic to fail the test, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::*;
use simd_json::json;

const PASSWORD: &str = "correct horse battery";

fn email_of(name: &str) -> String {
    format!("{name}@example.com")
}

// ---------------------------------------------------------------------------------------------
// Accounts and logins
// ---------------------------------------------------------------------------------------------

#[test]
fn register_returns_the_self_view() {
    let server = Server::start(&[]);
    let name = unique_name("Reg");
    let resp = server.post(
        "/v1/accounts",
        None,
        json!({"username": name.clone(), "email": email_of(&name.to_lowercase()),
               "password": PASSWORD}),
    );
    resp.expect(201);
    assert_eq!(keys(resp.json()), ["user"], "{}", resp.what_happened());
    check_user_view(resp.at("user"));
    assert_eq!(resp.str("user.username"), name);
    assert_eq!(resp.str("user.email"), email_of(&name.to_lowercase()));
    assert_eq!(
        resp.str("user.display_name"),
        name,
        "display_name defaults to the username"
    );
    assert_eq!(resp.at("user.email_verified").as_bool(), Some(false));
    let id = parse_id(resp.at("user.id"));
    assert!(
        shard_of(id) < 2,
        "user id {id} names shard {} of 2",
        shard_of(id)
    );

    // An explicit display name is kept as given (Unicode allowed).
    let name2 = unique_name("Reg");
    let resp = server.post(
        "/v1/accounts",
        None,
        json!({"username": name2.clone(), "email": email_of(&name2.to_lowercase()),
               "password": PASSWORD, "display_name": "Zoë Ünïcode 🎉"}),
    );
    resp.expect(201);
    assert_eq!(resp.str("user.display_name"), "Zoë Ünïcode 🎉");
    assert_ne!(parse_id(resp.at("user.id")), id, "ids are unique");
}

#[test]
fn login_by_username_or_email_in_any_case() {
    let server = Server::start(&[]);
    let name = unique_name("MiXeD");
    let email = format!("{name}@Example.COM");
    let user = server.register(&name, &email, PASSWORD);
    let logins = [
        name.clone(),
        name.to_lowercase(),
        name.to_uppercase(),
        email.clone(),
        email.to_lowercase(),
        email.to_uppercase(),
    ];
    let mut sessions = BTreeSet::new();
    for login in logins {
        let resp = server.try_login(&login, PASSWORD);
        resp.expect(200);
        let login = Login::from_resp(&resp);
        assert_eq!(login.user_id, user.id, "login {login:?} gave another user");
        assert!(
            sessions.insert(login.session_id),
            "each login is a new session"
        );
        let me = server.get("/v1/me", Some(&login.access));
        me.expect(200);
        assert_eq!(parse_id(me.at("user.id")), user.id);
    }
}

/// Users owned by shard 0 and shard 1 each log in through connections served by shard 0 and by
/// shard 1, and `/v1/me` answers for them from both shards.
#[test]
fn users_of_both_shards_log_in_through_both_shards() {
    let server = Server::start(&[]);
    assert_eq!(server.shards(), 2);
    let users = server.users_on_each_shard();
    for (owner, user) in users.iter().enumerate() {
        assert_eq!(user.shard() as usize, owner);
        let login = Req::post("/v1/sessions")
            .json(&json!({"login": user.username.clone(), "password": user.password.clone()}));
        let mut tokens = Vec::new();
        server.on_each_shard(&login, |resp| {
            resp.expect(200);
            let login = Login::from_resp(resp);
            assert_eq!(login.user_id, user.id);
            tokens.push(login.access);
        });
        // Each token works whichever shard serves the connection.
        for token in &tokens {
            let me = Req::get("/v1/me").bearer(token);
            server.on_each_shard(&me, |resp| {
                resp.expect(200);
                check_user_view(resp.at("user"));
                assert_eq!(parse_id(resp.at("user.id")), user.id);
                assert_eq!(resp.str("user.username"), user.username);
            });
        }
    }
}

#[test]
fn me_returns_the_user() {
    let server = Server::start(&[]);
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    let me = server.get("/v1/me", Some(&login.access));
    me.expect(200);
    assert_eq!(keys(me.json()), ["user"]);
    check_user_view(me.at("user"));
    assert_eq!(parse_id(me.at("user.id")), user.id);
    assert_eq!(me.str("user.email"), user.email);
    assert_eq!(me.at("user.email_verified").as_bool(), Some(false));
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

fn refresh(server: &Server, token: &str) -> Resp {
    server.post(
        "/v1/sessions/refresh",
        None,
        json!({"refresh_token": token}),
    )
}

#[test]
fn refresh_rotates_and_reuse_revokes_the_session() {
    let server = Server::start(&[]);
    for user in server.users_on_each_shard() {
        let first = server.login(&user.username, &user.password);
        let other = server.login(&user.username, &user.password);

        let resp = refresh(&server, &first.refresh);
        resp.expect(200);
        let second = Login::from_resp(&resp);
        assert_eq!(
            second.session_id, first.session_id,
            "refresh keeps the session"
        );
        assert_eq!(second.user_id, user.id);
        assert_ne!(
            second.refresh, first.refresh,
            "refresh must rotate the refresh token"
        );
        server.check("GET", "/v1/me", Some(&second.access), None, 200, None);

        // The new refresh token works once more.
        let resp = refresh(&server, &second.refresh);
        resp.expect(200);
        let third = Login::from_resp(&resp);
        assert_ne!(third.refresh, second.refresh);

        // Presenting an already rotated token: reuse, the whole session is revoked.
        refresh(&server, &first.refresh).expect_error(401, "refresh_token_reused");
        refresh(&server, &third.refresh).expect_error(401, "invalid_refresh_token");
        server.check(
            "GET",
            "/v1/me",
            Some(&third.access),
            None,
            401,
            Some("session_revoked"),
        );
        server.check(
            "GET",
            "/v1/me",
            Some(&second.access),
            None,
            401,
            Some("session_revoked"),
        );

        // Only that session: the user's other session is untouched.
        server.check("GET", "/v1/me", Some(&other.access), None, 200, None);
        let resp = refresh(&server, &other.refresh);
        resp.expect(200);
    }
}

#[test]
fn refresh_refuses_garbage_and_access_tokens() {
    let server = Server::start(&[]);
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    for bad in ["garbage", "a.b.c", "", &login.access] {
        refresh(&server, bad).expect_error(401, "invalid_refresh_token");
    }
    // The refresh token is not an access token either.
    server.check(
        "GET",
        "/v1/me",
        Some(&login.refresh),
        None,
        401,
        Some("invalid_token"),
    );
    // None of this hurt the session.
    refresh(&server, &login.refresh).expect(200);
}

#[test]
fn logout_ends_the_session() {
    let server = Server::start(&[]);
    for user in server.users_on_each_shard() {
        let login = server.login(&user.username, &user.password);
        let other = server.login(&user.username, &user.password);
        let resp = server.delete("/v1/sessions/current", Some(&login.access));
        resp.expect(204);
        assert!(
            resp.body.is_empty(),
            "204 has no body: {}",
            resp.what_happened()
        );
        server.check(
            "GET",
            "/v1/me",
            Some(&login.access),
            None,
            401,
            Some("session_revoked"),
        );
        let resp = refresh(&server, &login.refresh);
        assert_eq!(
            resp.status,
            401,
            "refresh after logout: {}",
            resp.what_happened()
        );
        let code = resp.error_code().unwrap_or("");
        assert!(
            ["invalid_refresh_token", "session_revoked"].contains(&code),
            "refresh after logout: {}",
            resp.what_happened()
        );
        server.check(
            "DELETE",
            "/v1/sessions/current",
            Some(&login.access),
            None,
            401,
            Some("session_revoked"),
        );
        server.check("GET", "/v1/me", Some(&other.access), None, 200, None);
    }
    server.check(
        "DELETE",
        "/v1/sessions/current",
        None,
        None,
        401,
        Some("unauthorized"),
    );
}

#[test]
fn sessions_are_listed_and_revoked() {
    let server = Server::start(&[]);
    let users = server.users_on_each_shard();
    let (alice, bob) = (&users[0], &users[1]);
    let login_as = |user: &User, agent: &str| {
        let resp = server.req(
            &Req::post("/v1/sessions")
                .json(&json!({"login": user.username.clone(), "password": user.password.clone()}))
                .header("User-Agent", agent),
        );
        resp.expect(200);
        Login::from_resp(&resp)
    };
    let a1 = login_as(alice, "nova-test/one");
    let a2 = login_as(alice, "nova-test/two");
    let b1 = login_as(bob, "nova-test/bob");

    let list = server.get("/v1/sessions", Some(&a1.access));
    list.expect(200);
    assert_eq!(keys(list.json()), ["items", "next"]);
    assert!(list.at("next").is_null());
    let items = list.at("items").as_array().unwrap();
    assert_eq!(
        items.len(),
        2,
        "alice has exactly two sessions: {}",
        list.what_happened()
    );
    for item in items {
        assert_eq!(
            keys(item),
            [
                "created_at",
                "current",
                "id",
                "ip",
                "last_used_at",
                "user_agent"
            ],
            "session item: {item:?}"
        );
        let id = parse_id(item.get("id").unwrap());
        let current = item.get("current").unwrap().as_bool().unwrap();
        let agent = item.get("user_agent").unwrap().as_str().unwrap();
        assert_eq!(
            item.get("ip").unwrap().as_str(),
            Some("127.0.0.1"),
            "{item:?}"
        );
        for key in ["created_at", "last_used_at"] {
            let t = item.get(key).unwrap().as_str().unwrap_or("");
            assert!(is_rfc3339_millis(t), "{key} {t:?}");
        }
        if id == a1.session_id {
            assert!(
                current,
                "the session making the request is current: {item:?}"
            );
            assert_eq!(agent, "nova-test/one");
        } else {
            assert_eq!(
                id, a2.session_id,
                "unknown session in alice's list: {item:?}"
            );
            assert!(!current);
            assert_eq!(agent, "nova-test/two");
        }
    }

    // Bob (on the other shard) can neither see nor end Alice's sessions.
    let path_a2 = format!("/v1/sessions/{}", a2.session_id);
    server.check(
        "DELETE",
        &path_a2,
        Some(&b1.access),
        None,
        404,
        Some("not_found"),
    );
    server.check("GET", "/v1/me", Some(&a2.access), None, 200, None);
    let bob_list = server.get("/v1/sessions", Some(&b1.access));
    bob_list.expect(200);
    let bob_ids: Vec<u64> = bob_list
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|i| parse_id(&i["id"]))
        .collect();
    assert_eq!(bob_ids, [b1.session_id]);

    // Unknown ids are 404 too.
    server.check(
        "DELETE",
        "/v1/sessions/123456789",
        Some(&a1.access),
        None,
        404,
        Some("not_found"),
    );

    // Alice ends her second session.
    let resp = server.delete(&path_a2, Some(&a1.access));
    resp.expect(204);
    server.check(
        "GET",
        "/v1/me",
        Some(&a2.access),
        None,
        401,
        Some("session_revoked"),
    );
    assert_eq!(refresh(&server, &a2.refresh).status, 401);
    let list = server.get("/v1/sessions", Some(&a1.access));
    list.expect(200);
    let ids: Vec<u64> = list
        .at("items")
        .as_array()
        .unwrap()
        .iter()
        .map(|i| parse_id(&i["id"]))
        .collect();
    assert_eq!(ids, [a1.session_id]);
    // Ending it again: it is no longer there.
    server.check(
        "DELETE",
        &path_a2,
        Some(&a1.access),
        None,
        404,
        Some("not_found"),
    );

    // Ending one's own current session by id works like logout.
    let path_a1 = format!("/v1/sessions/{}", a1.session_id);
    server.check("DELETE", &path_a1, Some(&a1.access), None, 204, None);
    server.check(
        "GET",
        "/v1/me",
        Some(&a1.access),
        None,
        401,
        Some("session_revoked"),
    );
    server.check("GET", "/v1/me", Some(&b1.access), None, 200, None);
}

// ---------------------------------------------------------------------------------------------
// Email verification and password reset
// ---------------------------------------------------------------------------------------------

fn check_email_item(item: &Json, to: &str, kind: &str) {
    assert_eq!(
        keys(item),
        [
            "body",
            "created_at",
            "id",
            "kind",
            "status",
            "subject",
            "to"
        ],
        "email item: {item:?}"
    );
    parse_id(item.get("id").unwrap());
    assert_eq!(item.get("to").unwrap().as_str(), Some(to));
    assert_eq!(item.get("kind").unwrap().as_str(), Some(kind));
    assert_eq!(item.get("status").unwrap().as_str(), Some("queued"));
    assert!(!item.get("subject").unwrap().as_str().unwrap().is_empty());
    assert!(is_rfc3339_millis(
        item.get("created_at").unwrap().as_str().unwrap()
    ));
    assert!(
        token_line(item.get("body").unwrap().as_str().unwrap()).is_some(),
        "{item:?}"
    );
}

#[test]
fn email_verification_uses_the_outbox_token_once() {
    let server = Server::start(&[]);
    for user in server.users_on_each_shard() {
        let token = server.email_token(&user.email, "verify_email");
        let items = server.emails_to(&user.email);
        assert_eq!(items.len(), 1, "one email after registering: {items:?}");
        check_email_item(&items[0], &user.email, "verify_email");

        let garbage = json!({"token": "not-a-real-token"});
        let path = "/v1/accounts/verify-email";
        server.check(
            "POST",
            path,
            None,
            Some(garbage),
            400,
            Some("invalid_token"),
        );

        let resp = server.post(path, None, json!({"token": token.clone()}));
        resp.expect(200);
        check_user_view(resp.at("user"));
        assert_eq!(parse_id(resp.at("user.id")), user.id);
        assert_eq!(resp.at("user.email_verified").as_bool(), Some(true));

        // Used tokens are refused; the flag stays.
        let again = json!({"token": token.clone()});
        server.check("POST", path, None, Some(again), 400, Some("invalid_token"));
        let login = server.login(&user.username, &user.password);
        let me = server.get("/v1/me", Some(&login.access));
        me.expect(200);
        assert_eq!(me.at("user.email_verified").as_bool(), Some(true));
    }
}

#[test]
fn password_reset_replaces_the_password_and_revokes_sessions() {
    let server = Server::start(&[]);
    for user in server.users_on_each_shard() {
        let s1 = server.login(&user.username, &user.password);
        let s2 = server.login(&user.email, &user.password);

        // Two resets asked for: the first one's token is spent once the second is used.
        let mut tokens = Vec::new();
        for _ in 0..2 {
            let resp = server.post(
                "/v1/accounts/password-reset",
                None,
                json!({"email": user.email.clone()}),
            );
            resp.expect(202);
            assert_eq!(resp.json(), &json!({"status": "queued"}));
            tokens.push(server.email_token(&user.email, "password_reset"));
        }
        let (earlier, token) = (tokens[0].clone(), tokens[1].clone());
        assert_ne!(earlier, token);
        let reset = server
            .emails_to(&user.email)
            .into_iter()
            .find(|i| i.get("kind").and_then(|k| k.as_str()) == Some("password_reset"))
            .unwrap();
        check_email_item(&reset, &user.email, "password_reset");

        let confirm = "/v1/accounts/password-reset/confirm";
        // A weak password is refused before anything changes.
        let weak = json!({"token": token.clone(), "password": "short"});
        server.check(
            "POST",
            confirm,
            None,
            Some(weak),
            422,
            Some("invalid_password"),
        );
        let bad = json!({"token": "forged-token", "password": "a brand new password"});
        server.check("POST", confirm, None, Some(bad), 400, Some("invalid_token"));
        // Nothing changed yet.
        server.check("GET", "/v1/me", Some(&s1.access), None, 200, None);

        let new_password = format!("new {} password", user.username);
        let body = json!({"token": token.clone(), "password": new_password.clone()});
        let resp = server.post(confirm, None, body);
        resp.expect(204);
        assert!(resp.body.is_empty());

        for s in [&s1, &s2] {
            server.check(
                "GET",
                "/v1/me",
                Some(&s.access),
                None,
                401,
                Some("session_revoked"),
            );
            assert_eq!(refresh(&server, &s.refresh).status, 401);
        }
        server
            .try_login(&user.username, &user.password)
            .expect_error(401, "invalid_credentials");
        let login = server.login(&user.username, &new_password);
        assert_eq!(login.user_id, user.id);

        // The token is spent, and so is the one asked for before it.
        for spent in [&token, &earlier] {
            let again = json!({"token": spent, "password": "yet another password"});
            server.check(
                "POST",
                confirm,
                None,
                Some(again),
                400,
                Some("invalid_token"),
            );
        }
        server.login(&user.username, &new_password);
    }
}

#[test]
fn password_reset_does_not_reveal_accounts() {
    let server = Server::start(&[]);
    let user = server.register_new();
    let known = server.post(
        "/v1/accounts/password-reset",
        None,
        json!({"email": user.email.clone()}),
    );
    let unknown = server.post(
        "/v1/accounts/password-reset",
        None,
        json!({"email": "nobody@example.com"}),
    );
    known.expect(202);
    unknown.expect(202);
    assert_eq!(known.json(), unknown.json());
    assert_eq!(unknown.json(), &json!({"status": "queued"}));
    // Nothing is sent to an address with no account.
    assert!(server.emails_to("nobody@example.com").is_empty());
    // The body is still checked for shape.
    let resp = server.post("/v1/accounts/password-reset", None, json!({"email": 5}));
    resp.expect_error(422, "invalid_body");
}

#[test]
fn admin_emails_need_the_admin_token() {
    let server = Server::start(&[]);
    let user = server.register_new();
    let path = format!("/v1/admin/emails?to={}", percent_encode(&user.email));
    let login = server.login(&user.username, &user.password);
    for token in [None, Some("wrong-admin-token"), Some(login.access.as_str())] {
        let resp = server.get(&path, token);
        assert!(
            resp.status == 401 || resp.status == 403,
            "admin emails with {token:?}: {}",
            resp.what_happened()
        );
        resp.expect_common_headers();
        resp.expect_envelope(resp.error_code().unwrap_or("<none>"));
    }
    server.get(&path, Some(ADMIN_TOKEN)).expect(200);

    // Without a configured admin token the route does not exist.
    let server = Launch::new().omit("--admin-token").start();
    server.check(
        "GET",
        &path,
        Some(ADMIN_TOKEN),
        None,
        404,
        Some("not_found"),
    );
}

// ---------------------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------------------

/// A route taking a JSON body and a valid body for it.
fn json_routes(server: &Server) -> Vec<(&'static str, Json)> {
    let user = server.register_new();
    let name = unique_name("b");
    vec![
        (
            "/v1/accounts",
            json!({"username": name.clone(), "email": email_of(&name), "password": PASSWORD,
                   "display_name": "Bee"}),
        ),
        (
            "/v1/sessions",
            json!({"login": user.username.clone(), "password": user.password.clone()}),
        ),
        ("/v1/sessions/refresh", json!({"refresh_token": "x"})),
        ("/v1/accounts/verify-email", json!({"token": "x"})),
        (
            "/v1/accounts/password-reset",
            json!({"email": user.email.clone()}),
        ),
        (
            "/v1/accounts/password-reset/confirm",
            json!({"token": "x", "password": PASSWORD}),
        ),
    ]
}

#[test]
fn malformed_json_is_400() {
    let server = Server::start(&[]);
    let bodies: &[&[u8]] = &[
        b"{",
        b"not json",
        b"",
        b"{\"login\": \"a\", \"password\": }",
        b"{\"login\": \"a\"} trailing",
        b"{\"login\": \"\xff\xfe\", \"password\": \"abcdefgh\"}",
    ];
    for (path, _) in json_routes(&server) {
        for body in bodies {
            let resp = server.req(&Req::post(path).raw("application/json", body.to_vec()));
            assert_eq!(
                resp.status,
                400,
                "{path} with {:?}: {}",
                String::from_utf8_lossy(body),
                resp.what_happened()
            );
            resp.expect_error(400, "malformed_json");
        }
    }
}

#[test]
fn json_of_the_wrong_shape_is_422() {
    let server = Server::start(&[]);
    for (path, valid) in json_routes(&server) {
        let fields = keys(&valid);
        let mut cases: Vec<(String, Json)> = vec![
            ("an array".into(), json!([])),
            ("a string".into(), json!("text")),
            ("null".into(), json!(null)),
            ("an empty object".into(), json!({})),
        ];
        let mut extra = valid.clone();
        extra
            .as_object_mut()
            .unwrap()
            .insert("extra".into(), json!(1));
        cases.push(("an unknown field".into(), extra));
        for field in &fields {
            let mut missing = valid.clone();
            missing.as_object_mut().unwrap().remove(field.as_str());
            if field != "display_name" {
                cases.push((format!("missing {field}"), missing));
            }
            for (what, wrong) in [
                ("a number", json!(5)),
                ("an object", json!({"a": 1})),
                ("a list", json!(["a"])),
                ("a bool", json!(true)),
            ] {
                let mut body = valid.clone();
                body.as_object_mut().unwrap().insert(field.clone(), wrong);
                cases.push((format!("{field} as {what}"), body));
            }
            if field != "display_name" {
                let mut body = valid.clone();
                body.as_object_mut()
                    .unwrap()
                    .insert(field.clone(), json!(null));
                cases.push((format!("{field} null"), body));
            }
        }
        for (what, body) in cases {
            let resp = server.req(&Req::post(path).json(&body));
            assert_eq!(
                resp.status,
                422,
                "{path} with {what}: {}",
                resp.what_happened()
            );
            resp.expect_error(422, "invalid_body");
        }
    }
}

#[test]
fn bodies_over_the_limit_are_413() {
    let server = Server::start(&["--body-bytes-max", "4096"]);
    let name = unique_name("big");
    let big = "x".repeat(8000);
    let body = json!({"username": name.clone(), "email": email_of(&name), "password": PASSWORD,
                      "display_name": big});
    server.check(
        "POST",
        "/v1/accounts",
        None,
        Some(body),
        413,
        Some("body_too_large"),
    );
    let body = json!({"login": "someone", "password": "y".repeat(8000)});
    server.check(
        "POST",
        "/v1/sessions",
        None,
        Some(body),
        413,
        Some("body_too_large"),
    );

    // Just under the limit the body is read and judged: the display name is too long.
    let body = json!({"username": name.clone(), "email": email_of(&name), "password": PASSWORD,
                      "display_name": "x".repeat(3900)});
    server.check(
        "POST",
        "/v1/accounts",
        None,
        Some(body),
        422,
        Some("invalid_display_name"),
    );

    // A chunked body over the limit (no Content-Length to check up front).
    let mut stream = connect(server.addr());
    let mut request = b"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
        application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    let payload = format!(
        "{{\"login\":\"someone\",\"password\":\"{}\"}}",
        "z".repeat(8000)
    );
    for chunk in payload.as_bytes().chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let _ = stream.write_all(&request);
    let resp = read_raw_response(&mut stream).expect("an answer to a chunked body");
    assert_eq!(
        resp.status,
        413,
        "chunked: {:?}",
        String::from_utf8_lossy(&resp.body)
    );

    // A body in another transfer coding is not read as if it were plain: 501.
    let mut stream = connect(server.addr());
    let request = "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
        application/json\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n\
        2\r\n{}\r\n0\r\n\r\n";
    let _ = stream.write_all(request.as_bytes());
    let resp = read_raw_response(&mut stream).expect("an answer to a gzip body");
    assert_eq!(
        resp.status,
        501,
        "gzip: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert!(String::from_utf8_lossy(&resp.body).contains("unsupported_transfer_encoding"));

    // A Content-Length far over the limit is refused without waiting for the whole body.
    let mut stream = connect(server.addr());
    let head = "POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
        application/json\r\nContent-Length: 10000000\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&[b' '; 8192]);
    let resp = read_raw_response(&mut stream).expect("an answer to a huge Content-Length");
    assert_eq!(
        resp.status,
        413,
        "declared 10 MB: {:?}",
        String::from_utf8_lossy(&resp.body)
    );

    // The server is fine afterwards.
    server.check("GET", "/health", None, None, 200, None);
}

#[test]
fn bodies_that_are_not_json_are_415() {
    let server = Server::start(&[]);
    let name = unique_name("ct");
    let body =
        json!({"username": name.clone(), "email": email_of(&name), "password": PASSWORD}).encode();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let resp = server.req(&Req::post("/v1/accounts").raw(ct, body.clone()));
        assert_eq!(
            resp.status,
            415,
            "Content-Type {ct}: {}",
            resp.what_happened()
        );
        resp.expect_error(415, "unsupported_media_type");
    }
    // None of these registered anything; the same body as JSON does.
    let resp = server.req(&Req::post("/v1/accounts").raw("application/json; charset=utf-8", body));
    resp.expect(201);
    // Without a Content-Type a body is read as JSON (docs/api-contract.md).
    let name = unique_name("ct");
    let body =
        json!({"username": name.clone(), "email": email_of(&name), "password": PASSWORD}).encode();
    let resp = server.req(&Req::post("/v1/accounts").untyped(body));
    assert_eq!(
        resp.status,
        201,
        "no Content-Type: {}",
        resp.what_happened()
    );
}

/// One registration field replaced by a bad value, and the expected 422 code.
fn bad_registration_cases() -> Vec<(&'static str, Json, &'static str)> {
    let long_email = format!(
        "{}@{}.com",
        "a".repeat(59),
        vec!["d".repeat(63); 3].join(".")
    );
    assert_eq!(long_email.len(), 255);
    let mut cases: Vec<(&'static str, Json, &'static str)> = Vec::new();
    for bad in [
        "",
        "ab",
        "a",
        &"a".repeat(31),
        "1abc",
        "_abc",
        "ab-cd",
        "ab cd",
        "abc!",
        "ab.cd",
        "äbcd",
        "abcé",
        "abc\u{0}",
        " abc",
        "abc ",
    ] {
        cases.push(("username", json!(bad), "invalid_username"));
    }
    for reserved in [
        "admin", "root", "nova", "support", "api", "system", "Admin", "ROOT",
    ] {
        cases.push(("username", json!(reserved), "reserved_username"));
    }
    for bad in [
        "",
        "plainaddress",
        "@example.com",
        "local@",
        "local@example",
        "local@@example.com",
        "lo cal@example.com",
        "local@exa mple.com",
        "local@.com",
        "local@example.",
        long_email.as_str(),
    ] {
        cases.push(("email", json!(bad), "invalid_email"));
    }
    for bad in ["", "short", "1234567", &"p".repeat(129), &"é".repeat(129)] {
        cases.push(("password", json!(bad), "invalid_password"));
    }
    for bad in [
        "",
        &"d".repeat(65),
        &"é".repeat(65),
        "bell\u{7}",
        "line\nbreak",
        "tab\there",
        "nul\u{0}",
    ] {
        cases.push(("display_name", json!(bad), "invalid_display_name"));
    }
    cases
}

#[test]
fn invalid_registration_fields_are_422_with_their_code() {
    let server = Server::start(&[]);
    for (field, value, code) in bad_registration_cases() {
        let name = unique_name("f");
        let mut body = json!({"username": name.clone(), "email": email_of(&name),
                              "password": PASSWORD, "display_name": "Fine Name"});
        body.as_object_mut()
            .unwrap()
            .insert(field.to_string(), value.clone());
        let resp = server.post("/v1/accounts", None, body);
        assert_eq!(
            resp.status,
            422,
            "{field} = {value:?}: {}",
            resp.what_happened()
        );
        resp.expect_error(422, code);
    }
}

#[test]
fn edge_values_are_accepted() {
    let server = Server::start(&[]);
    let email_254 = format!(
        "{}@{}.com",
        "b".repeat(58),
        vec!["d".repeat(63); 3].join(".")
    );
    assert_eq!(email_254.len(), 254);
    let cases: Vec<(String, String, String, Option<String>)> = vec![
        (
            "Abc".into(),
            "abc@example.com".into(),
            "12345678".into(),
            None,
        ),
        (
            format!("Z{}", "z".repeat(29)),
            "z@example.com".into(),
            "p".repeat(128),
            None,
        ),
        (
            "user_with_digits_123".into(),
            "x.y+tag@sub.example.org".into(),
            "é".repeat(8),
            None,
        ),
        (
            "Long_email".into(),
            email_254,
            "é".repeat(128),
            Some("d".repeat(64)),
        ),
        (
            "Wide_name".into(),
            "wide@example.com".into(),
            PASSWORD.into(),
            Some("é".repeat(64)),
        ),
        (
            "Plain_name".into(),
            "plain@example.com".into(),
            PASSWORD.into(),
            Some("A".into()),
        ),
    ];
    for (username, email, password, display) in cases {
        let mut body = json!({"username": username.clone(), "email": email.clone(),
                              "password": password.clone()});
        if let Some(d) = &display {
            body.as_object_mut()
                .unwrap()
                .insert("display_name".into(), json!(d.clone()));
        }
        let resp = server.post("/v1/accounts", None, body);
        assert_eq!(
            resp.status,
            201,
            "{username} / {email}: {}",
            resp.what_happened()
        );
        if let Some(d) = display {
            assert_eq!(resp.str("user.display_name"), d);
        }
        let login = server.login(&username, &password);
        assert_eq!(login.user_id, parse_id(resp.at("user.id")));
    }
}

#[test]
fn duplicates_are_refused_case_insensitively_across_shards() {
    let server = Server::start(&[]);
    let name = unique_name("Dup");
    let email = format!("{name}@Example.com");
    let user = server.register(&name, &email, PASSWORD);

    // Enough attempts, on fresh connections, that both shards take some of them.
    let mut served = BTreeSet::new();
    let mut attempt = 0;
    let mut last_fresh = String::new();
    while attempt < 8 || served.len() < 2 {
        assert!(attempt < 300, "both shards never answered");
        let variants = [name.to_lowercase(), name.to_uppercase(), name.clone()];
        let username = &variants[attempt % 3];
        let fresh = unique_name("free");
        let resp = server.post(
            "/v1/accounts",
            None,
            json!({"username": username.clone(), "email": email_of(&fresh), "password": PASSWORD}),
        );
        resp.expect_error(409, "username_taken");
        served.insert(resp.shard());

        let emails = [email.to_lowercase(), email.to_uppercase(), email.clone()];
        let resp = server.post(
            "/v1/accounts",
            None,
            json!({"username": fresh.clone(), "email": emails[attempt % 3].clone(),
                   "password": PASSWORD}),
        );
        resp.expect_error(409, "email_taken");
        served.insert(resp.shard());
        last_fresh = fresh;
        attempt += 1;
    }
    // The refused attempts left nothing behind: a refused username is still free.
    server.register(&last_fresh, &email_of(&last_fresh), PASSWORD);
    let login = server.login(&name.to_lowercase(), PASSWORD);
    assert_eq!(login.user_id, user.id);
}

/// Many clients race for one username (or one email) in different cases: exactly one wins,
/// whichever shards the candidates would belong to.
#[test]
fn racing_registrations_have_one_winner() {
    let server = Arc::new(Server::start(&[]));
    const RACERS: usize = 8;
    for round in 0..6 {
        let name = unique_name("Race");
        let same_username = round % 2 == 0;
        let barrier = Arc::new(Barrier::new(RACERS));
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let server = Arc::clone(&server);
                let barrier = Arc::clone(&barrier);
                let name = name.clone();
                thread::spawn(move || {
                    let (username, email) = if same_username {
                        let u = if i % 2 == 0 {
                            name.to_lowercase()
                        } else {
                            name.to_uppercase()
                        };
                        (u, format!("{name}_{i}@example.com"))
                    } else {
                        let e = if i % 2 == 0 {
                            name.to_lowercase()
                        } else {
                            name.to_uppercase()
                        };
                        (format!("{name}_{i}"), format!("{e}@example.com"))
                    };
                    barrier.wait();
                    server.post(
                        "/v1/accounts",
                        None,
                        json!({"username": username, "email": email, "password": PASSWORD}),
                    )
                })
            })
            .collect();
        let results: Vec<Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners = results.iter().filter(|r| r.status == 201).count();
        let code = if same_username {
            "username_taken"
        } else {
            "email_taken"
        };
        assert_eq!(
            winners,
            1,
            "round {round}: {:?}",
            results
                .iter()
                .map(|r| r.what_happened())
                .collect::<Vec<_>>()
        );
        for r in results.iter().filter(|r| r.status != 201) {
            r.expect_error(409, code);
        }
    }
}

#[test]
fn wrong_password_and_unknown_login_are_401() {
    let server = Server::start(&[]);
    for user in server.users_on_each_shard() {
        let wrong = server.try_login(&user.username, "not the password");
        wrong.expect_error(401, "invalid_credentials");
        server
            .try_login(&user.email, "not the password")
            .expect_error(401, "invalid_credentials");
        // Right password in the wrong case is wrong.
        server
            .try_login(&user.username, &user.password.to_uppercase())
            .expect_error(401, "invalid_credentials");
    }
    let unknown = server.try_login("nobody_here", PASSWORD);
    unknown.expect_error(401, "invalid_credentials");
    server
        .try_login("nobody@example.com", PASSWORD)
        .expect_error(401, "invalid_credentials");
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

#[test]
fn expired_access_tokens_are_401_token_expired() {
    let server = Server::start(&["--access-token-ttl-s", "1"]);
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    assert_eq!(
        login.expires_in, 1,
        "expires_in follows --access-token-ttl-s"
    );
    thread::sleep(Duration::from_millis(3500));
    server.check(
        "GET",
        "/v1/me",
        Some(&login.access),
        None,
        401,
        Some("token_expired"),
    );
    server.check(
        "GET",
        "/v1/sessions",
        Some(&login.access),
        None,
        401,
        Some("token_expired"),
    );
    // The refresh token outlives it and gives a fresh access token.
    let resp = refresh(&server, &login.refresh);
    resp.expect(200);
    let fresh = Login::from_resp(&resp);
    server.check("GET", "/v1/me", Some(&fresh.access), None, 200, None);
}

#[test]
fn expired_refresh_tokens_are_401() {
    let server = Server::start(&["--refresh-token-ttl-s", "1"]);
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    thread::sleep(Duration::from_millis(3500));
    let resp = refresh(&server, &login.refresh);
    assert_eq!(
        resp.status,
        401,
        "expired refresh token: {}",
        resp.what_happened()
    );
    let code = resp.error_code().unwrap_or("");
    assert!(
        ["invalid_refresh_token", "token_expired"].contains(&code),
        "expired refresh token: {}",
        resp.what_happened()
    );
}

/// Changes one alphanumeric character near the end (inside the signature, whatever the format)
/// and one in the middle.
fn tampered(token: &str) -> Vec<String> {
    let bytes = token.as_bytes();
    let flip = |i: usize| {
        let mut b = bytes.to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let near_end = (0..bytes.len().saturating_sub(4))
        .rev()
        .find(|&i| bytes[i].is_ascii_alphanumeric())
        .expect("token has alphanumerics");
    let middle = (bytes.len() / 2..bytes.len())
        .find(|&i| bytes[i].is_ascii_alphanumeric())
        .expect("token has alphanumerics");
    vec![
        flip(near_end),
        flip(middle),
        format!("{token}x"),
        token[..token.len() - 1].to_string(),
    ]
}

#[test]
fn forged_tokens_are_401_invalid_token() {
    let server = Server::start(&[]);
    let other = Server::start(&[]);
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    // The same account on another server: its tokens are signed with another key.
    let twin = other.register(&user.username, &user.email, &user.password);
    let foreign = other.login(&twin.username, &twin.password);

    let mut bad_access = tampered(&login.access);
    bad_access.extend([
        "garbage".to_string(),
        "a.b.c".to_string(),
        foreign.access.clone(),
    ]);
    for token in &bad_access {
        for path in ["/v1/me", "/v1/sessions"] {
            let resp = server.get(path, Some(token));
            assert_eq!(
                resp.status,
                401,
                "token {token:?}: {}",
                resp.what_happened()
            );
            resp.expect_error(401, "invalid_token");
        }
    }
    let mut bad_refresh = tampered(&login.refresh);
    bad_refresh.push(foreign.refresh.clone());
    for token in &bad_refresh {
        refresh(&server, token).expect_error(401, "invalid_refresh_token");
    }
    // The genuine tokens still work: forgeries did not disturb the session.
    server.check("GET", "/v1/me", Some(&login.access), None, 200, None);
    refresh(&server, &login.refresh).expect(200);
}

#[test]
fn authenticated_routes_without_a_token_are_401() {
    let server = Server::start(&[]);
    for (method, path) in [
        ("GET", "/v1/me"),
        ("GET", "/v1/sessions"),
        ("DELETE", "/v1/sessions/current"),
        ("DELETE", "/v1/sessions/123456"),
    ] {
        server.check(method, path, None, None, 401, Some("unauthorized"));
        // A different scheme is no bearer token either.
        let resp = server.req(&Req::new(method, path).header("Authorization", "Basic YTpi"));
        assert_eq!(
            resp.status,
            401,
            "{method} {path} with Basic: {}",
            resp.what_happened()
        );
        resp.expect_envelope(resp.error_code().unwrap_or("<none>"));
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limits
// ---------------------------------------------------------------------------------------------

/// Requires a 429 with the contract's headers for a limit of `limit` per window.
fn expect_rate_limited(resp: &Resp, limit: u64) {
    resp.expect_error(429, "rate_limited");
    let number = |name: &str| -> u64 {
        let v = resp
            .header(name)
            .unwrap_or_else(|| panic!("429 without {name}"));
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not whole seconds/count"))
    };
    assert!(
        number("retry-after") >= 1,
        "Retry-After must be at least a second"
    );
    assert_eq!(number("x-ratelimit-limit"), limit);
    assert_eq!(number("x-ratelimit-remaining"), 0);
    let _ = number("x-ratelimit-reset");
}

/// Repeats `attempt` until a 429. The first `limit` attempts must not be limited; since limits
/// are kept per shard, the 429 must come within `shards * limit + 1` attempts (with slack for a
/// slow machine where a token is replenished meanwhile).
fn until_limited(server: &Server, limit: u64, mut attempt: impl FnMut(u64) -> Resp) -> u64 {
    let bound = 2 * (u64::from(server.shards()) * limit + 1);
    for n in 1..=bound {
        let resp = attempt(n);
        if resp.status == 429 {
            assert!(
                n > limit,
                "limited after {} of {limit} allowed attempts",
                n - 1
            );
            expect_rate_limited(&resp, limit);
            return n;
        }
    }
    panic!("no 429 within {bound} attempts for a limit of {limit} per shard");
}

#[test]
fn failed_logins_per_account_are_rate_limited() {
    let server = Server::start(&["--login-failures-per-account-per-minute", "3"]);
    let victim = server.register_new();
    let bystander = server.register_new();
    until_limited(&server, 3, |_| {
        let resp = server.try_login(&victim.username, "wrong password!");
        if resp.status != 429 {
            resp.expect_error(401, "invalid_credentials");
        }
        resp
    });
    // Only that account is limited: another one logs in from the same address.
    server.login(&bystander.username, &bystander.password);
    server
        .try_login(&bystander.username, "wrong password!")
        .expect_error(401, "invalid_credentials");
}

#[test]
fn failed_logins_per_ip_are_rate_limited() {
    let server = Server::start(&["--login-failures-per-ip-per-minute", "3"]);
    until_limited(&server, 3, |n| {
        let resp = server.try_login(&format!("nobody_{n}"), "wrong password!");
        if resp.status != 429 {
            resp.expect_error(401, "invalid_credentials");
        }
        resp
    });
}

#[test]
fn registrations_per_ip_are_rate_limited() {
    let server = Server::start(&["--registrations-per-ip-per-hour", "2"]);
    until_limited(&server, 2, |_| {
        let name = unique_name("rl");
        let resp = server.post(
            "/v1/accounts",
            None,
            json!({"username": name.clone(), "email": email_of(&name), "password": PASSWORD}),
        );
        if resp.status != 429 {
            resp.expect(201);
        }
        resp
    });
}

#[test]
fn password_resets_per_ip_are_rate_limited() {
    let server = Server::start(&["--password-resets-per-ip-per-hour", "2"]);
    let user = server.register_new();
    until_limited(&server, 2, |_| {
        let resp = server.post(
            "/v1/accounts/password-reset",
            None,
            json!({"email": user.email.clone()}),
        );
        if resp.status != 429 {
            resp.expect(202);
        }
        resp
    });
}

// ---------------------------------------------------------------------------------------------
// Routing and the envelope
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let server = Server::start(&[]);
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/v1"),
        ("GET", "/v1/nope"),
        ("POST", "/v1/accounts/nope"),
        ("GET", "/v1/me/extra"),
        ("GET", "/v2/me"),
        ("GET", "/health/x"),
    ] {
        server.check(method, path, None, None, 404, Some("not_found"));
    }
    for (method, path) in [
        ("GET", "/v1/accounts"),
        ("DELETE", "/v1/accounts"),
        ("PUT", "/v1/me"),
        ("POST", "/v1/me"),
        ("GET", "/v1/sessions/refresh"),
        ("GET", "/v1/sessions/current"),
        ("PATCH", "/v1/sessions"),
        ("GET", "/v1/accounts/verify-email"),
        ("GET", "/v1/accounts/password-reset"),
        ("POST", "/health"),
        ("DELETE", "/metrics"),
    ] {
        let resp = server.call(method, path, None, None);
        assert_eq!(
            resp.status,
            405,
            "{method} {path}: {}",
            resp.what_happened()
        );
        resp.expect_error(405, "method_not_allowed");
    }
    // HEAD is served wherever GET is: the same status and headers, no body. Not where GET
    // is not, nor on the live stream.
    let user = server.register_new();
    let login = server.login(&user.username, &user.password);
    for (path, token) in [
        ("/health", None),
        ("/v1/me", Some(login.access.as_str())),
        ("/v1/sessions", Some(login.access.as_str())),
    ] {
        let mut get = Req::get(path);
        let mut head = Req::new("HEAD", path);
        if let Some(t) = token {
            get = get.bearer(t);
            head = head.bearer(t);
        }
        let got = server.req(&get);
        got.expect(200);
        let headed = server.req(&head);
        headed.expect(200);
        assert!(headed.body.is_empty(), "HEAD {path} has a body");
        for name in ["content-type", "content-length"] {
            assert_eq!(headed.header(name), got.header(name), "HEAD {path}: {name}");
        }
    }
    let refused = server.req(&Req::new("HEAD", "/v1/me"));
    assert_eq!(refused.status, 401);
    assert!(refused.body.is_empty());
    for path in ["/v1/accounts", "/v1/stream", "/v1/me/export"] {
        let resp = server.req(&Req::new("HEAD", path).bearer(&login.access));
        assert_eq!(resp.status, 405, "HEAD {path}: {}", resp.what_happened());
    }
}

#[test]
fn request_ids_are_echoed_on_errors_and_successes() {
    let server = Server::start(&[]);
    for (method, path, status) in [
        ("GET", "/health", 200),
        ("GET", "/v1/nope", 404),
        ("GET", "/v1/me", 401),
        ("PUT", "/v1/me", 405),
    ] {
        let id = format!("req-{}.X_{status}", unique_name("r"));
        let resp = server.req(&Req::new(method, path).header("X-Request-Id", &id));
        resp.expect(status);
        assert_eq!(resp.request_id(), id, "{method} {path}");
    }
    let resp = server.req(
        &Req::post("/v1/accounts")
            .raw("application/json", "{")
            .header("X-Request-Id", "abc-1"),
    );
    resp.expect_error(400, "malformed_json");
    assert_eq!(resp.request_id(), "abc-1");
}

/// One raw connection carries several requests, one after another and pipelined.
#[test]
fn keep_alive_connection_serves_several_requests() {
    let server = Server::start(&[]);
    let mut stream = connect(server.addr());
    for _ in 0..3 {
        write_all(
            &mut stream,
            b"GET /v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        )
        .unwrap();
        let resp = read_raw_response(&mut stream).expect("keep-alive answer");
        assert_eq!(resp.status, 401);
        assert!(resp.header("x-request-id").is_some());
        assert!(resp.header("x-nova-shard").is_some());
    }
    // Pipelined: two requests in one write, two answers in order.
    write_all(
        &mut stream,
        b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/nope HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_raw_response(&mut stream).unwrap().status, 200);
    assert_eq!(read_raw_response(&mut stream).unwrap().status, 404);
    let mut rest = Vec::new();
    write_all(
        &mut stream,
        b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let last = read_raw_response(&mut stream).unwrap();
    assert_eq!(last.status, 200);
    let _ = stream.read_to_end(&mut rest);
}
