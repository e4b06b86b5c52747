//! JSON in and out through simd-json's serde support.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::body::{ErrorBody, ErrorDetail};

/// Why a request body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Not JSON at all (syntax error, truncated, not UTF-8).
    Malformed(String),
    /// JSON, but not of the expected shape (wrong type, unknown or missing field).
    Shape(String),
}

/// Parses a request body. simd-json parses in place, so the body is copied into `scratch`
/// (reused by the caller across requests on a connection when it wants).
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    let mut scratch = body.to_vec();
    simd_json::serde::from_slice(&mut scratch).map_err(|e| {
        // A broken literal (`nul`, `tru`, bare words) reports as "expected null/true/false".
        let broken_literal = matches!(
            e.error(),
            simd_json::ErrorType::ExpectedNull
                | simd_json::ErrorType::ExpectedTrue
                | simd_json::ErrorType::ExpectedFalse
        );
        if e.is_syntax() || e.is_eof() || e.is_io() || broken_literal {
            WireError::Malformed(format!("the body is not valid JSON ({e})"))
        } else {
            WireError::Shape(describe_shape_error(&e))
        }
    })
}

fn describe_shape_error(e: &simd_json::Error) -> String {
    match e.error() {
        simd_json::ErrorType::Serde(message) => message.clone(),
        simd_json::ErrorType::ExpectedString => {
            "a field has the wrong type: expected a string".into()
        }
        simd_json::ErrorType::ExpectedMap => "expected a JSON object".into(),
        other => format!("the body does not have the expected shape ({other:?})"),
    }
}

/// Serializes a response body. Our response types always serialize; a failure here is a bug,
/// answered as an empty object rather than a crash.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    simd_json::serde::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// The one error envelope: `{"error":{"code":...,"message":...}}`.
pub fn error_body(code: &str, message: &str) -> Vec<u8> {
    to_json(&ErrorBody {
        error: ErrorDetail { code, message },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::LoginRequest;

    #[test]
    fn classifies_bad_bodies() {
        assert!(parse_json::<LoginRequest>(br#"{"login":"a","password":"b"}"#).is_ok());
        for bad in [&b"{"[..], b"not json", b"{\"login\":", b""] {
            assert!(
                matches!(
                    parse_json::<LoginRequest>(bad),
                    Err(WireError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        for shape in [
            &br#"{"login":1,"password":"b"}"#[..],
            br#"{"login":"a"}"#,
            br#"{"login":"a","password":"b","extra":1}"#,
            br#"[1,2]"#,
        ] {
            assert!(
                matches!(parse_json::<LoginRequest>(shape), Err(WireError::Shape(_))),
                "{shape:?}"
            );
        }
        assert_eq!(
            error_body("x", "y\"z"),
            br#"{"error":{"code":"x","message":"y\"z"}}"#.to_vec()
        );
    }
}
