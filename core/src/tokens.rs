//! Signed tokens.
//!
//! - Access tokens: `v1.<payload>.<mac>` (base64url), payload = user id, session id and expiry
//!   (seconds) as big-endian u64s, mac = HMAC-SHA256 over `v1.<payload>` with the server key.
//!   Verified on every request from the key alone, without touching storage.
//! - Refresh tokens: `<session>.<generation>.<mac>`, mac = HMAC-SHA256(session secret,
//!   generation). The session secret is stored with the session; only the current generation
//!   is accepted, and an older one that verifies is proof of reuse.
//! - One-time tokens (email verification, password reset): `<user id>.<random>`; only their
//!   SHA-256 is stored.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// What a valid access token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: u64,
    pub session_id: u64,
    pub expires_at_s: u64,
}

/// Why an access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// Not a token of ours: wrong shape or a signature that does not verify.
    Invalid,
    /// A token of ours whose time has passed.
    Expired,
}

const ACCESS_PREFIX: &str = "v1.";

fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

pub fn sign_access(key: &[u8], claims: AccessClaims) -> String {
    let mut payload = [0u8; 24];
    payload[..8].copy_from_slice(&claims.user_id.to_be_bytes());
    payload[8..16].copy_from_slice(&claims.session_id.to_be_bytes());
    payload[16..].copy_from_slice(&claims.expires_at_s.to_be_bytes());
    let body = format!("{ACCESS_PREFIX}{}", B64.encode(payload));
    let sig = mac(key, &[body.as_bytes()]);
    format!("{body}.{}", B64.encode(sig))
}

pub fn verify_access(key: &[u8], token: &str, now_s: u64) -> Result<AccessClaims, AccessError> {
    if token.len() > 256 || !token.starts_with(ACCESS_PREFIX) {
        return Err(AccessError::Invalid);
    }
    let (body, sig) = token.rsplit_once('.').ok_or(AccessError::Invalid)?;
    let sig = B64.decode(sig).map_err(|_| AccessError::Invalid)?;
    let expected = mac(key, &[body.as_bytes()]);
    if sig.len() != expected.len() || !bool::from(expected.ct_eq(&sig)) {
        return Err(AccessError::Invalid);
    }
    let payload = B64
        .decode(&body[ACCESS_PREFIX.len()..])
        .map_err(|_| AccessError::Invalid)?;
    let field = |i: usize| -> Result<u64, AccessError> {
        let bytes = payload.get(i * 8..i * 8 + 8).ok_or(AccessError::Invalid)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(bytes);
        Ok(u64::from_be_bytes(a))
    };
    if payload.len() != 24 {
        return Err(AccessError::Invalid);
    }
    let claims = AccessClaims {
        user_id: field(0)?,
        session_id: field(1)?,
        expires_at_s: field(2)?,
    };
    if claims.expires_at_s <= now_s {
        return Err(AccessError::Expired);
    }
    Ok(claims)
}

/// A parsed (not yet verified) refresh token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefreshToken {
    pub session_id: u64,
    pub generation: u64,
    mac: Vec<u8>,
}

impl RefreshToken {
    pub fn parse(token: &str) -> Option<RefreshToken> {
        if token.len() > 128 {
            return None;
        }
        let mut parts = token.splitn(3, '.');
        let session_id = parts.next()?.parse().ok()?;
        let generation = parts.next()?.parse().ok()?;
        let mac = B64.decode(parts.next()?).ok()?;
        Some(RefreshToken {
            session_id,
            generation,
            mac,
        })
    }

    /// True when this token was made with `secret` (any generation).
    pub(crate) fn verifies(&self, secret: &[u8]) -> bool {
        let expected = refresh_mac(secret, self.session_id, self.generation);
        self.mac.len() == expected.len() && bool::from(expected.ct_eq(&self.mac))
    }
}

fn refresh_mac(secret: &[u8], session_id: u64, generation: u64) -> [u8; 32] {
    mac(
        secret,
        &[&session_id.to_be_bytes(), &generation.to_be_bytes()],
    )
}

pub(crate) fn make_refresh(secret: &[u8], session_id: u64, generation: u64) -> String {
    format!(
        "{session_id}.{generation}.{}",
        B64.encode(refresh_mac(secret, session_id, generation))
    )
}

/// 32 random bytes from the OS.
pub fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A one-time token for `user_id` and the hash under which it is stored.
pub(crate) fn make_one_time(user_id: u64) -> (String, [u8; 32]) {
    let token = format!("{user_id}.{}", B64.encode(random_bytes()));
    let hash = hash_one_time(&token);
    (token, hash)
}

pub(crate) fn hash_one_time(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The user a one-time token belongs to (so the engine can route it), if it is well formed.
pub fn one_time_owner(token: &str) -> Option<u64> {
    if token.len() > 128 {
        return None;
    }
    let (user, rest) = token.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    user.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_tokens_verify_expire_and_resist_forgery() {
        let key = [7u8; 32];
        let claims = AccessClaims {
            user_id: 42,
            session_id: 9,
            expires_at_s: 1000,
        };
        let t = sign_access(&key, claims);
        assert_eq!(verify_access(&key, &t, 999), Ok(claims));
        assert_eq!(verify_access(&key, &t, 1000), Err(AccessError::Expired));
        assert_eq!(
            verify_access(&[8u8; 32], &t, 999),
            Err(AccessError::Invalid)
        );
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(verify_access(&key, &forged, 999), Err(AccessError::Invalid));
        for junk in ["", "v1.", "v1..", "abc.def", "v1.AAAA.AAAA"] {
            assert_eq!(
                verify_access(&key, junk, 0),
                Err(AccessError::Invalid),
                "{junk}"
            );
        }
    }

    #[test]
    fn refresh_tokens_bind_to_secret_session_and_generation() {
        let secret = random_bytes();
        let t = RefreshToken::parse(&make_refresh(&secret, 5, 2)).unwrap();
        assert_eq!((t.session_id, t.generation), (5, 2));
        assert!(t.verifies(&secret));
        assert!(!t.verifies(&random_bytes()));
        assert!(RefreshToken::parse("5.x.abc").is_none());
    }
}
