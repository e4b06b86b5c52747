//! Web Push: browser subscriptions (table `push_subscriptions`, on the subscriber's shard) and
//! the pure cryptography of sending to them: RFC 8291 message encryption (`aes128gcm`, RFC
//! 8188) and RFC 8292 VAPID (an ES256 JWT naming the push service's origin). No I/O here: the
//! engine's push threads make the requests; randomness comes in as arguments (or from the OS
//! generator in the `*_random` helpers, like `tokens::random_bytes`).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hkdf::Hkdf;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::codec::{decode, encode};
use crate::{CoreError, Invalid};

/// (user, endpoint) -> Subscription
const SUBSCRIPTIONS: TableDefinition<(u64, &str), &[u8]> =
    TableDefinition::new("push_subscriptions");

pub const ENDPOINT_BYTES_MAX: usize = 2048;
/// An uncompressed P-256 point.
pub const P256DH_BYTES: usize = 65;
pub const AUTH_BYTES: usize = 16;
/// The record size announced in the header; one record carries the whole message.
const RECORD_SIZE: u32 = 4096;
/// The header: salt (16), record size (4), key id length (1), key id (65).
const HEADER_BYTES: usize = 16 + 4 + 1 + P256DH_BYTES;
/// The largest plaintext one record holds (record size less the tag and the delimiter), and
/// what push services accept (4096 bytes of body) less the header.
pub const PLAINTEXT_BYTES_MAX: usize = 4096 - HEADER_BYTES - 16 - 1;

/// A push service URL: `https://` (or `http://` to a loopback host, when allowed for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    /// `scheme://host[:port]`: the VAPID audience.
    origin: String,
    /// `host:port`: what a circuit breaker is kept for.
    host_port: String,
}

impl Endpoint {
    pub fn parse(raw: &str, allow_insecure_loopback: bool) -> Result<Endpoint, Invalid> {
        let bad = |why: &str| Invalid::new("invalid_endpoint", why.to_string());
        if raw.is_empty() || raw.len() > ENDPOINT_BYTES_MAX {
            return Err(bad("the endpoint is a URL of 1 to 2048 bytes"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            return Err(bad("the endpoint must be a plain ASCII URL"));
        }
        let (scheme, rest, default_port) = if let Some(rest) = raw.strip_prefix("https://") {
            ("https", rest, 443)
        } else if let Some(rest) = raw.strip_prefix("http://") {
            ("http", rest, 80)
        } else {
            return Err(bad("the endpoint must be an https:// URL"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("the endpoint has no valid host"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("invalid host or port"))?;
        let port = port.unwrap_or(default_port);
        let ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok();
        // Resolvers read `127.1`, `2130706433`, `0x7f000001` or `0177.0.0.1` as IPv4
        // addresses too: only the dotted-decimal form is taken, so the checks below see them.
        if ip.is_none() && looks_numeric(host) {
            return Err(bad("an IPv4 host must be written as four decimal numbers"));
        }
        let named_local = is_localhost(host);
        let loopback = named_local || ip.is_some_and(|ip| ip.is_loopback());
        if scheme == "http" && !(allow_insecure_loopback && loopback) {
            return Err(bad("the endpoint must be an https:// URL"));
        }
        // Push services are public hosts: an address of this machine or of a private network
        // would let a client make the server post to internal services. (A name is checked
        // again once resolved, when the push thread connects: `public_addresses`.)
        let internal = named_local || ip.is_some_and(not_public);
        if internal && !(allow_insecure_loopback && loopback) {
            return Err(bad("the endpoint must be a public push service"));
        }
        Ok(Endpoint {
            url: raw.to_string(),
            origin: format!("{scheme}://{authority}"),
            host_port: format!("{}:{port}", host.to_ascii_lowercase()),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn host_port(&self) -> &str {
        &self.host_port
    }
}

/// `localhost`, a name under it (RFC 6761), either with the root's trailing dot.
fn is_localhost(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Whether a host that is not a dotted-decimal IPv4 address would still be read as one (the
/// WHATWG URL rule: its last label, trailing dot aside, is a number, decimal, octal or hex).
fn looks_numeric(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .or_else(|| last.strip_prefix("0X"))
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// Loopback, private, shared (carrier-grade NAT), link-local, reserved, unspecified,
/// multicast or broadcast addresses: none is a push service's.
pub fn not_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || a == 0
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b & 0xfe) == 18)
                || a >= 240
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                // Site-local (deprecated), local-use NAT64 (64:ff9b:1::/48), Teredo
                // (2001::/32, an IPv4 relay), documentation (2001:db8::/32), discard (100::/64).
                || (s[0] & 0xffc0) == 0xfec0
                || s[..3] == [0x64, 0xff9b, 1]
                || s[..2] == [0x2001, 0]
                || s[..2] == [0x2001, 0xdb8]
                || s[..4] == [0x100, 0, 0, 0]
                // 6to4 (2002::/16): the IPv4 address it carries.
                || (s[0] == 0x2002 && not_public(embedded(s[1], s[2]).into()))
                || v6.to_ipv4_mapped().is_some_and(|v4| not_public(v4.into()))
                // IPv4-compatible (deprecated) and NAT64 (64:ff9b::/96) forms of an address.
                || (s[..6] == [0; 6] && not_public(embedded(s[6], s[7]).into()))
                || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    && not_public(embedded(s[6], s[7]).into()))
        }
    }
}

/// Of the addresses a push service's host resolved to, those it may be sent to: public ones,
/// or loopback ones when `allow_loopback` (tests). A name that resolves to an address of this
/// machine or of a private network is refused here, at connect time, as `Endpoint::parse`
/// refuses such an address written out.
pub fn public_addresses(
    resolved: impl IntoIterator<Item = std::net::SocketAddr>,
    allow_loopback: bool,
) -> Vec<std::net::SocketAddr> {
    resolved
        .into_iter()
        .filter(|a| !not_public(a.ip()) || (allow_loopback && a.ip().is_loopback()))
        .collect()
}

/// (host, port) of an authority; the host may be a bracketed IPv6 address.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority.find(']')?;
        let host = &authority[..=close];
        match &authority[close + 1..] {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
    if !host_ok {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    Some((host, port))
}

/// A browser's push subscription, validated.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subscription {
    pub endpoint: String,
    /// The browser's P-256 public key (uncompressed point).
    pub p256dh: Vec<u8>,
    /// The browser's authentication secret.
    pub auth: Vec<u8>,
    pub created_ms: u64,
    /// The session that subscribed (0: stored before subscriptions kept it). It goes with
    /// the session: a logout, a revocation or a password change ends it.
    pub session: u64,
}

impl Subscription {
    /// Validates a subscription as a browser's `PushSubscription.toJSON()` gives it (keys in
    /// base64url, padding optional).
    pub fn parse(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        allow_insecure_loopback: bool,
        now_ms: u64,
        session: u64,
    ) -> Result<Subscription, Invalid> {
        let endpoint = Endpoint::parse(endpoint, allow_insecure_loopback)?;
        let key = b64url(p256dh)
            .filter(|k| k.len() == P256DH_BYTES && PublicKey::from_sec1_bytes(k).is_ok())
            .ok_or_else(|| {
                Invalid::new(
                    "invalid_p256dh",
                    "keys.p256dh is an uncompressed P-256 public key in base64url",
                )
            })?;
        let auth = b64url(auth)
            .filter(|a| a.len() == AUTH_BYTES)
            .ok_or_else(|| Invalid::new("invalid_auth", "keys.auth is 16 bytes in base64url"))?;
        Ok(Subscription {
            endpoint: endpoint.url,
            p256dh: key,
            auth,
            created_ms: now_ms,
            session,
        })
    }

    /// A stored subscription; one stored before subscriptions kept their session has none.
    fn decode(bytes: &[u8]) -> Result<Subscription, CoreError> {
        #[derive(Deserialize)]
        struct Before {
            endpoint: String,
            p256dh: Vec<u8>,
            auth: Vec<u8>,
            created_ms: u64,
        }
        decode::<Subscription>(bytes).or_else(|_| {
            decode::<Before>(bytes).map(|b| Subscription {
                endpoint: b.endpoint,
                p256dh: b.p256dh,
                auth: b.auth,
                created_ms: b.created_ms,
                session: 0,
            })
        })
    }
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    if s.len() > 256 {
        return None;
    }
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Stores (or replaces, for the same endpoint) a subscription of `user`. A user has at most
/// `max` subscriptions.
pub fn subscribe(
    txn: &WriteTransaction,
    user: u64,
    sub: &Subscription,
    max: usize,
) -> Result<(), CoreError> {
    let mut table = txn.open_table(SUBSCRIPTIONS)?;
    if table.get((user, sub.endpoint.as_str()))?.is_none() {
        let count = table
            .range((user, "")..(user.saturating_add(1), ""))?
            .take(max)
            .count();
        if count >= max {
            return Err(CoreError::invalid(
                "too_many_subscriptions",
                format!("an account has at most {max} push subscriptions; delete one first"),
            ));
        }
    }
    table.insert((user, sub.endpoint.as_str()), encode(sub).as_slice())?;
    Ok(())
}

/// Deletes `user`'s subscription to `endpoint`; false when there was none.
pub fn unsubscribe(txn: &WriteTransaction, user: u64, endpoint: &str) -> Result<bool, CoreError> {
    let removed = txn
        .open_table(SUBSCRIPTIONS)?
        .remove((user, endpoint))?
        .is_some();
    Ok(removed)
}

/// `user`'s subscriptions (at most `max`).
pub fn subscriptions(
    read: &ReadTransaction,
    user: u64,
    max: usize,
) -> Result<Vec<Subscription>, CoreError> {
    let table = match read.open_table(SUBSCRIPTIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table
        .range((user, "")..(user.saturating_add(1), ""))?
        .take(max)
    {
        out.push(Subscription::decode(row?.1.value())?);
    }
    Ok(out)
}

/// `user`'s subscription to `endpoint` if it is still the one made at `created_ms` (not
/// deleted, nor replaced by a new subscription of the same endpoint).
pub fn still_subscribed(
    read: &ReadTransaction,
    user: u64,
    endpoint: &str,
    created_ms: u64,
) -> Result<bool, CoreError> {
    let table = match read.open_table(SUBSCRIPTIONS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(match table.get((user, endpoint))? {
        Some(v) => Subscription::decode(v.value())?.created_ms == created_ms,
        None => false,
    })
}

/// Deletes `user`'s subscription to `endpoint` if it is still the one made at `created_ms`
/// (the push service said it is gone; a new one of the same endpoint stays).
pub fn unsubscribe_made_at(
    txn: &WriteTransaction,
    user: u64,
    endpoint: &str,
    created_ms: u64,
) -> Result<bool, CoreError> {
    let mut table = txn.open_table(SUBSCRIPTIONS)?;
    let same = match table.get((user, endpoint))? {
        Some(v) => Subscription::decode(v.value())?.created_ms == created_ms,
        None => false,
    };
    if same {
        table.remove((user, endpoint))?;
    }
    Ok(same)
}

/// Deletes `user`'s subscriptions made by `session` (revoked); returns how many went.
pub fn forget_session(txn: &WriteTransaction, user: u64, session: u64) -> Result<usize, CoreError> {
    let mut table = txn.open_table(SUBSCRIPTIONS)?;
    let mut gone = Vec::new();
    for row in table.range((user, "")..(user.saturating_add(1), ""))? {
        let (key, value) = row?;
        if Subscription::decode(value.value())?.session == session {
            gone.push(key.value().1.to_string());
        }
    }
    for endpoint in &gone {
        table.remove((user, endpoint.as_str()))?;
    }
    Ok(gone.len())
}

/// Deletes up to `limit` of `user`'s subscriptions (account erasure); returns how many.
pub fn erase_user(txn: &WriteTransaction, user: u64, limit: usize) -> Result<usize, CoreError> {
    let mut table = txn.open_table(SUBSCRIPTIONS)?;
    let endpoints: Vec<String> = table
        .range((user, "")..(user.saturating_add(1), ""))?
        .take(limit)
        .map(|r| r.map(|(k, _)| k.value().1.to_string()))
        .collect::<Result<_, _>>()?;
    for e in &endpoints {
        table.remove((user, e.as_str()))?;
    }
    Ok(endpoints.len())
}

// ---- VAPID (RFC 8292) ----------------------------------------------------------------------

/// The application server's key pair.
pub struct Vapid {
    key: SigningKey,
    /// The public key, uncompressed, in base64url (what browsers take as
    /// `applicationServerKey` and what the `k=` parameter carries).
    public_b64: String,
}

impl Vapid {
    /// A new private key (32 bytes) for `from_secret`.
    pub fn generate_secret() -> Vec<u8> {
        SecretKey::random(&mut rand::rngs::OsRng)
            .to_bytes()
            .to_vec()
    }

    pub fn from_secret(bytes: &[u8]) -> Result<Vapid, Invalid> {
        let secret = SecretKey::from_slice(bytes).map_err(|_| {
            Invalid::new("invalid_vapid_key", "the VAPID key file is not a P-256 key")
        })?;
        let public = secret.public_key().to_encoded_point(false);
        Ok(Vapid {
            key: SigningKey::from(&secret),
            public_b64: URL_SAFE_NO_PAD.encode(public.as_bytes()),
        })
    }

    pub fn public_key_b64(&self) -> &str {
        &self.public_b64
    }

    /// The ES256 JWT for a push service (`aud`: its origin), valid until `expires_s`;
    /// `subject` is a `mailto:` or `https:` contact.
    pub fn jwt(&self, audience: &str, expires_s: u64, subject: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = format!(
            r#"{{"aud":"{}","exp":{expires_s},"sub":"{}"}}"#,
            json_escape(audience),
            json_escape(subject)
        );
        let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
    }

    /// The `Authorization` header value: `vapid t=<jwt>, k=<public key>`.
    pub fn authorization(&self, audience: &str, expires_s: u64, subject: &str) -> String {
        format!(
            "vapid t={}, k={}",
            self.jwt(audience, expires_s, subject),
            self.public_b64
        )
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

// ---- Message encryption (RFC 8291, aes128gcm of RFC 8188) --------------------------------

/// Encrypts `plaintext` for a subscriber (`ua_public`, `auth`) with an ephemeral key
/// `as_secret` and `salt`, both fresh for every message. Returns the whole body: header then
/// one record.
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, Invalid> {
    if plaintext.len() > PLAINTEXT_BYTES_MAX {
        return Err(Invalid::new(
            "payload_too_large",
            format!("a push message holds at most {PLAINTEXT_BYTES_MAX} bytes"),
        ));
    }
    let ua = PublicKey::from_sec1_bytes(ua_public)
        .map_err(|_| Invalid::new("invalid_p256dh", "not a P-256 public key"))?;
    let ua_bytes = ua.to_encoded_point(false);
    let as_public = as_secret.public_key().to_encoded_point(false);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), ua.as_affine());
    let (cek, nonce) = derive(
        shared.raw_secret_bytes(),
        auth,
        ua_bytes.as_bytes(),
        as_public.as_bytes(),
        salt,
    )?;
    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    // The delimiter of the last (only) record; no padding.
    record.push(2);
    let cipher = Aes128Gcm::new_from_slice(&cek)
        .map_err(|_| Invalid::new("crypto", "bad content-encryption key length"))?;
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), record.as_slice())
        .map_err(|_| Invalid::new("crypto", "encryption failed"))?;
    let mut body = Vec::with_capacity(HEADER_BYTES + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(P256DH_BYTES as u8);
    body.extend_from_slice(as_public.as_bytes());
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// `encrypt` with a fresh ephemeral key and salt from the OS generator.
pub fn encrypt_random(plaintext: &[u8], ua_public: &[u8], auth: &[u8]) -> Result<Vec<u8>, Invalid> {
    use rand::RngCore as _;
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let secret = SecretKey::random(&mut rand::rngs::OsRng);
    encrypt(plaintext, ua_public, auth, &secret, &salt)
}

/// The content-encryption key and nonce (RFC 8291 section 3.4, RFC 8188 section 2.2).
fn derive(
    ecdh_secret: &[u8],
    auth: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> Result<([u8; 16], [u8; 12]), Invalid> {
    let length = || Invalid::new("crypto", "HKDF output length");
    let mut key_info = Vec::with_capacity(14 + 1 + 65 + 65);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth), ecdh_secret)
        .expand(&key_info, &mut ikm)
        .map_err(|_| length())?;
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .map_err(|_| length())?;
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .map_err(|_| length())?;
    Ok((cek, nonce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::VerifyingKey;

    fn d(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// The receiving side, as a browser does it.
    fn decrypt(body: &[u8], ua_secret: &SecretKey, auth: &[u8]) -> Vec<u8> {
        let salt = &body[..16];
        let id_len = body[20] as usize;
        let as_public = &body[21..21 + id_len];
        let ua_public = ua_secret.public_key().to_encoded_point(false);
        let shared = p256::ecdh::diffie_hellman(
            ua_secret.to_nonzero_scalar(),
            PublicKey::from_sec1_bytes(as_public).unwrap().as_affine(),
        );
        let (cek, nonce) = derive(
            shared.raw_secret_bytes(),
            auth,
            ua_public.as_bytes(),
            as_public,
            salt,
        )
        .unwrap();
        let mut plain = Aes128Gcm::new_from_slice(&cek)
            .unwrap()
            .decrypt(Nonce::from_slice(&nonce), &body[21 + id_len..])
            .unwrap();
        assert_eq!(plain.pop(), Some(2));
        plain
    }

    #[test]
    fn rfc8291_example() {
        let as_secret =
            SecretKey::from_slice(&d("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        let ua_public = d("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4");
        let auth = d("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = d("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let body = encrypt(
            b"When I grow up, I want to be a watermelon",
            &ua_public,
            &auth,
            &as_secret,
            &salt,
        )
        .unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
        let ua_secret =
            SecretKey::from_slice(&d("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
        assert_eq!(
            decrypt(&body, &ua_secret, &auth),
            b"When I grow up, I want to be a watermelon"
        );
    }

    #[test]
    fn random_messages_round_trip_and_have_a_limit() {
        let ua = SecretKey::random(&mut rand::rngs::OsRng);
        let ua_public = ua.public_key().to_encoded_point(false);
        let auth = [7u8; 16];
        let body = encrypt_random(b"{\"x\":1}", ua_public.as_bytes(), &auth).unwrap();
        assert_eq!(decrypt(&body, &ua, &auth), b"{\"x\":1}");
        let big = vec![b'a'; PLAINTEXT_BYTES_MAX];
        let body = encrypt_random(&big, ua_public.as_bytes(), &auth).unwrap();
        assert_eq!(body.len(), 4096);
        assert!(encrypt_random(
            &[b'a'; PLAINTEXT_BYTES_MAX + 1],
            ua_public.as_bytes(),
            &auth
        )
        .is_err());
    }

    #[test]
    fn vapid_jwt_verifies_with_the_public_key() {
        let vapid = Vapid::from_secret(&Vapid::generate_secret()).unwrap();
        let jwt = vapid.jwt("https://push.example.net", 1_900_000_000, "mailto:a@b.c");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = String::from_utf8(d(parts[1])).unwrap();
        assert_eq!(
            claims,
            r#"{"aud":"https://push.example.net","exp":1900000000,"sub":"mailto:a@b.c"}"#
        );
        let key = VerifyingKey::from_sec1_bytes(&d(vapid.public_key_b64())).unwrap();
        let sig = Signature::from_slice(&d(parts[2])).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(key.verify(input.as_bytes(), &sig).is_ok());
        assert!(key.verify(b"other", &sig).is_err());
        let auth = vapid.authorization("https://x", 1, "mailto:a@b.c");
        assert!(
            auth.starts_with("vapid t=")
                && auth.ends_with(&format!(", k={}", vapid.public_key_b64()))
        );
    }

    #[test]
    fn endpoints_and_keys_are_validated() {
        let e = Endpoint::parse("https://Push.Example.net/wpush/v2/abc?x=1", false).unwrap();
        assert_eq!(e.origin(), "https://Push.Example.net");
        assert_eq!(e.host_port(), "push.example.net:443");
        let e = Endpoint::parse("https://[2606:4700::1111]:8443/p", false).unwrap();
        assert_eq!(e.host_port(), "[2606:4700::1111]:8443");
        for internal in [
            "https://[::1]/p",
            "https://localhost/p",
            "https://127.0.0.1/p",
            "https://10.1.2.3/p",
            "https://192.168.0.1/p",
            "https://169.254.169.254/p",
            "https://[fd00::1]/p",
            "https://[::ffff:10.0.0.1]/p",
            "https://0.0.0.0/p",
            "https://127.1/p",
            "https://2130706433/p",
            "https://0x7f000001/p",
            "https://0X7F.1/p",
            "https://0177.0.0.1/p",
            "https://0/p",
            "https://localhost./p",
            "https://LocalHost/p",
            "https://a.localhost/p",
            "https://100.64.0.1/p",
            "https://[::127.0.0.1]/p",
            "https://[64:ff9b::a00:1]/p",
            "https://[2002:a9fe:a9fe::]/p",
            "https://[2002:7f00:1::]/p",
            "https://[fec0::1]/p",
            "https://[64:ff9b:1::8.8.8.8]/p",
            "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/p",
            "https://[2001:db8::1]/p",
            "https://[100::1]/p",
        ] {
            assert!(Endpoint::parse(internal, false).is_err(), "{internal}");
        }
        assert!(Endpoint::parse("https://[::1]/p", true).is_ok());
        // Names with digits are names; a public address written out is taken.
        for public in [
            "https://fcm.googleapis.com/fcm/send/x",
            "https://updates.push.services.mozilla.com/wpush/v2/x",
            "https://1e100.net/p",
            "https://push.example.123abc/p",
            "https://8.8.8.8/p",
            "https://[2002:808:808::]/p",
            "https://[2606:4700::1111]/p",
        ] {
            assert!(Endpoint::parse(public, false).is_ok(), "{public}");
        }
        let at = |ip: &str| std::net::SocketAddr::new(ip.parse().unwrap(), 443);
        let resolved = [
            at("127.0.0.1"),
            at("10.0.0.7"),
            at("93.184.216.34"),
            at("::1"),
        ];
        assert_eq!(public_addresses(resolved, false), [at("93.184.216.34")]);
        assert_eq!(
            public_addresses(resolved, true),
            [at("127.0.0.1"), at("93.184.216.34"), at("::1")]
        );
        for bad in [
            "",
            "ftp://x/y",
            "http://push.example.net/x",
            "https://user@host/x",
            "https:///x",
            "https://host:0/x",
            "https://host:99999/x",
            "https://ho st/x",
        ] {
            assert!(Endpoint::parse(bad, true).is_err(), "{bad}");
        }
        assert!(Endpoint::parse("http://127.0.0.1:9/x", false).is_err());
        assert!(Endpoint::parse("http://127.0.0.1:9/x", true).is_ok());
        assert!(Endpoint::parse("http://localhost/x", true).is_ok());
        assert!(Endpoint::parse("http://10.0.0.1/x", true).is_err());
        let ua = SecretKey::random(&mut rand::rngs::OsRng)
            .public_key()
            .to_encoded_point(false);
        let key = URL_SAFE_NO_PAD.encode(ua.as_bytes());
        let auth = URL_SAFE_NO_PAD.encode([1u8; 16]);
        assert!(Subscription::parse("https://h/x", &key, &auth, false, 0, 7).is_ok());
        assert!(Subscription::parse(
            "https://h/x",
            &format!("{key}="),
            &format!("{auth}=="),
            false,
            0,
            7
        )
        .is_ok());
        assert_eq!(
            Subscription::parse("https://h/x", &auth, &auth, false, 0, 7)
                .unwrap_err()
                .code,
            "invalid_p256dh"
        );
        assert_eq!(
            Subscription::parse("https://h/x", &key, &key, false, 0, 7)
                .unwrap_err()
                .code,
            "invalid_auth"
        );
        let mut not_on_curve = ua.as_bytes().to_vec();
        not_on_curve[64] ^= 1;
        assert!(Subscription::parse(
            "https://h/x",
            &URL_SAFE_NO_PAD.encode(&not_on_curve),
            &auth,
            false,
            0,
            7
        )
        .is_err());
    }

    /// An in-memory database and a browser's keys (p256dh, auth) in base64url.
    fn db_and_keys() -> (redb::Database, String, String) {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let ua = SecretKey::random(&mut rand::rngs::OsRng)
            .public_key()
            .to_encoded_point(false);
        let key = URL_SAFE_NO_PAD.encode(ua.as_bytes());
        (db, key, URL_SAFE_NO_PAD.encode([1u8; 16]))
    }

    #[test]
    fn subscriptions_are_kept_per_user_with_a_limit() {
        use redb::ReadableDatabase;
        let (db, key, auth) = db_and_keys();
        let sub = |n: u32| {
            Subscription::parse(&format!("https://h/{n}"), &key, &auth, false, 0, 7).unwrap()
        };
        let txn = db.begin_write().unwrap();
        subscribe(&txn, 1, &sub(1), 2).unwrap();
        subscribe(&txn, 1, &sub(1), 2).unwrap();
        subscribe(&txn, 1, &sub(2), 2).unwrap();
        assert!(subscribe(&txn, 1, &sub(3), 2).is_err());
        subscribe(&txn, 2, &sub(3), 2).unwrap();
        assert!(unsubscribe(&txn, 1, "https://h/1").unwrap());
        assert!(!unsubscribe(&txn, 1, "https://h/1").unwrap());
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let mine: Vec<String> = subscriptions(&read, 1, 10)
            .unwrap()
            .into_iter()
            .map(|s| s.endpoint)
            .collect();
        assert_eq!(mine, vec!["https://h/2".to_string()]);
        assert_eq!(subscriptions(&read, 2, 10).unwrap().len(), 1);
    }

    #[test]
    fn subscriptions_go_with_their_session_and_retries_with_their_subscription() {
        use redb::ReadableDatabase;
        let (db, key, auth) = db_and_keys();
        let sub = |n: u32, at: u64, session: u64| {
            Subscription::parse(&format!("https://h/{n}"), &key, &auth, false, at, session).unwrap()
        };
        let txn = db.begin_write().unwrap();
        subscribe(&txn, 1, &sub(1, 10, 7), 10).unwrap();
        subscribe(&txn, 1, &sub(2, 10, 8), 10).unwrap();
        subscribe(&txn, 1, &sub(3, 10, 7), 10).unwrap();
        // One stored before subscriptions kept their session: none, so no session ends it.
        #[derive(Serialize)]
        struct Before<'a> {
            endpoint: &'a str,
            p256dh: &'a [u8],
            auth: &'a [u8],
            created_ms: u64,
        }
        let old = sub(4, 10, 0);
        let bytes = encode(&Before {
            endpoint: &old.endpoint,
            p256dh: &old.p256dh,
            auth: &old.auth,
            created_ms: 10,
        });
        txn.open_table(SUBSCRIPTIONS)
            .unwrap()
            .insert((1, old.endpoint.as_str()), bytes.as_slice())
            .unwrap();
        assert_eq!(forget_session(&txn, 1, 7).unwrap(), 2);
        assert_eq!(forget_session(&txn, 1, 7).unwrap(), 0);
        // Replaced by a new subscription of the same endpoint: the old one's retries stop,
        // and "gone" for the old one leaves the new one.
        subscribe(&txn, 1, &sub(2, 20, 8), 10).unwrap();
        assert!(!unsubscribe_made_at(&txn, 1, "https://h/2", 10).unwrap());
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let left: Vec<(String, u64)> = subscriptions(&read, 1, 10)
            .unwrap()
            .into_iter()
            .map(|s| (s.endpoint, s.session))
            .collect();
        assert_eq!(
            left,
            vec![
                ("https://h/2".to_string(), 8),
                ("https://h/4".to_string(), 0)
            ]
        );
        assert!(!still_subscribed(&read, 1, "https://h/2", 10).unwrap());
        assert!(still_subscribed(&read, 1, "https://h/2", 20).unwrap());
        assert!(!still_subscribed(&read, 1, "https://h/1", 10).unwrap());
        drop(read);
        let txn = db.begin_write().unwrap();
        assert!(unsubscribe_made_at(&txn, 1, "https://h/2", 20).unwrap());
        txn.commit().unwrap();
    }
}
