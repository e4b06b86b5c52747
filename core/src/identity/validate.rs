//! Newtypes that validate on construction: a handler that holds a `Username` knows it is well
//! formed, and its lower-cased key is the one used for uniqueness.

use crate::Invalid;

/// Names no account may take: routes, roles and words that would confuse other users.
const RESERVED: &[&str] = &[
    "about",
    "abuse",
    "account",
    "accounts",
    "admin",
    "administrator",
    "api",
    "auth",
    "billing",
    "help",
    "info",
    "login",
    "logout",
    "me",
    "mod",
    "moderator",
    "moderators",
    "nova",
    "null",
    "official",
    "postmaster",
    "register",
    "root",
    "security",
    "settings",
    "signup",
    "staff",
    "support",
    "system",
    "undefined",
    "webmaster",
    "www",
];

pub const USERNAME_CHARS_MIN: usize = 3;
pub const USERNAME_CHARS_MAX: usize = 30;
pub const EMAIL_BYTES_MAX: usize = 254;
pub const PASSWORD_CHARS_MIN: usize = 8;
pub const PASSWORD_CHARS_MAX: usize = 128;
pub const DISPLAY_NAME_CHARS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Username, Invalid> {
        let bad = |m: &str| Invalid::new("invalid_username", m);
        let len = raw.chars().count();
        if !(USERNAME_CHARS_MIN..=USERNAME_CHARS_MAX).contains(&len) {
            return Err(bad(&format!(
                "a username has {USERNAME_CHARS_MIN} to {USERNAME_CHARS_MAX} characters"
            )));
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad("a username uses only letters A-Z, digits and _"));
        }
        if !raw.as_bytes()[0].is_ascii_alphabetic() {
            return Err(bad("a username starts with a letter"));
        }
        if RESERVED.contains(&raw.to_ascii_lowercase().as_str()) {
            return Err(Invalid::new(
                "reserved_username",
                format!("the name {raw:?} is reserved"),
            ));
        }
        Ok(Username(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive key under which uniqueness is kept.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, Invalid> {
        use unicode_normalization::UnicodeNormalization as _;
        let bad = |m: &str| Invalid::new("invalid_email", m);
        // One address, one form: `é` typed as one character or as `e` and a combining
        // accent is the same address (NFC), for uniqueness and for logging in.
        let normalized: String = raw.trim().nfc().collect();
        let raw = normalized.as_str();
        if raw.is_empty() || raw.len() > EMAIL_BYTES_MAX {
            return Err(bad(&format!(
                "an email address has 3 to {EMAIL_BYTES_MAX} bytes"
            )));
        }
        let (local, domain) = raw
            .split_once('@')
            .ok_or_else(|| bad("an email address has an @"))?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .chars()
                .all(|c| !c.is_control() && !c.is_whitespace() && c != '@');
        let labels_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !local_ok || !labels_ok {
            return Err(bad(
                "that is not an email address (expected name@example.org)",
            ));
        }
        Ok(Email(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The case-insensitive key under which uniqueness is kept.
    pub fn key(&self) -> String {
        use unicode_normalization::UnicodeNormalization as _;
        self.0.to_lowercase().nfc().collect()
    }
}

/// A password that meets the length rules. Never logged: `Debug` hides it.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    pub fn parse(raw: &str) -> Result<Password, Invalid> {
        let len = raw.chars().count();
        if !(PASSWORD_CHARS_MIN..=PASSWORD_CHARS_MAX).contains(&len) {
            return Err(Invalid::new(
                "invalid_password",
                format!("a password has {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters"),
            ));
        }
        Ok(Password(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Serialized as its string (a write-ahead log record carries it); only validated names are
/// ever written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<DisplayName, Invalid> {
        let trimmed = raw.trim();
        let len = trimmed.chars().count();
        if len == 0 || len > DISPLAY_NAME_CHARS_MAX || trimmed.chars().any(char::is_control) {
            return Err(Invalid::new(
                "invalid_display_name",
                format!(
                    "a display name has 1 to {DISPLAY_NAME_CHARS_MAX} characters and no control characters"
                ),
            ));
        }
        Ok(DisplayName(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["bob", "Alice_99", "a23456789012345678901234567890"] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for (bad, code) in [
            ("ab", "invalid_username"),
            ("1abc", "invalid_username"),
            ("bad name", "invalid_username"),
            ("émile", "invalid_username"),
            ("Admin", "reserved_username"),
            ("a234567890123456789012345678901", "invalid_username"),
        ] {
            assert_eq!(Username::parse(bad).unwrap_err().code, code, "{bad}");
        }
        assert_eq!(Username::parse("BoB").unwrap().key(), "bob");
    }

    #[test]
    fn emails_passwords_and_names() {
        assert_eq!(
            Email::parse(" Bob@Example.ORG ").unwrap().key(),
            "bob@example.org"
        );
        // Composed and decomposed accents are one address (and one key).
        let composed = Email::parse("Ren\u{e9}@example.org").unwrap();
        let decomposed = Email::parse("Rene\u{301}@example.org").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.key(), "ren\u{e9}@example.org");
        for bad in [
            "",
            "bob",
            "bob@",
            "@x.org",
            "bob@localhost",
            "a b@x.org",
            "bob@-x.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("long enough").is_ok());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        assert!(DisplayName::parse("  ").is_err());
        assert!(DisplayName::parse("Bob\u{7}").is_err());
        assert_eq!(DisplayName::parse(" Bob ").unwrap().as_str(), "Bob");
    }
}
