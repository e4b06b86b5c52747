//! The token helper for the authenticated scenario: registers a fresh random user
//! (`POST /v1/accounts`) and logs in (`POST /v1/sessions`), returning the access token.

use std::hash::{BuildHasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::http1::{encode_request, one_shot};
use crate::url::Target;

const PASSWORD: &str = "bench-password-1234";

/// Registers a user named `bench_<random>` on the server at `base` and returns an access
/// token for it.
pub async fn login(base: &Target) -> Result<String> {
    // No rand dependency for one name: std's per-process random hasher keys over time and
    // pid give a name that is new on every call.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = RandomState::new().hash_one((nanos, std::process::id()));
    let username = format!("bench_{key:016x}");
    let email = format!("{username}@example.com");

    let register = format!(
        r#"{{"username":"{username}","email":"{email}","password":"{PASSWORD}","display_name":"Bench"}}"#
    );
    let accounts = base.with_path("/v1/accounts");
    let response = one_shot(
        &accounts,
        &encode_request("POST", &accounts, &[], Some(&register)),
    )
    .await
    .context("registering")?;
    if response.status != 201 {
        bail!(
            "POST /v1/accounts answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }

    let credentials = format!(r#"{{"login":"{username}","password":"{PASSWORD}"}}"#);
    let sessions = base.with_path("/v1/sessions");
    let response = one_shot(
        &sessions,
        &encode_request("POST", &sessions, &[], Some(&credentials)),
    )
    .await
    .context("logging in")?;
    if response.status != 200 {
        bail!(
            "POST /v1/sessions answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        );
    }
    let body = String::from_utf8_lossy(&response.body);
    json_string_field(&body, "access_token")
        .with_context(|| format!("no access_token in login response {body}"))
}

/// The value of a top-level string field, without a JSON dependency: tokens are plain
/// ASCII with no escapes, and a field of that name appears once.
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\"");
    let after_key = &json[json.find(&key)? + key.len()..];
    let after_colon = after_key.trim_start().strip_prefix(':')?.trim_start();
    let value = after_colon.strip_prefix('"')?;
    let end = value.find(['"', '\\'])?;
    if value[end..].starts_with('\\') {
        return None;
    }
    Some(value[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_token() {
        let body = r#"{"access_token" : "abc.def-_", "token_type":"Bearer"}"#;
        assert_eq!(
            json_string_field(body, "access_token").as_deref(),
            Some("abc.def-_")
        );
        assert_eq!(json_string_field(body, "refresh_token"), None);
        assert_eq!(
            json_string_field(r#"{"access_token":"a\"b"}"#, "access_token"),
            None
        );
    }
}
