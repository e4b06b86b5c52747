//! Profiles, preferences, settings and feed preferences (tables `user_profiles`,
//! `user_avatars`, `user_preferences`, `user_settings`, `user_digests`, `feed_preferences`),
//! on the user's shard. The display name stays with identity (it is part of the account).

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::content::Visibility;
use crate::{CoreError, Invalid};

/// user id -> Profile
const USER_PROFILES: TableDefinition<u64, &[u8]> = TableDefinition::new("user_profiles");
/// user id -> media id of the avatar (one of the user's own images), when one is set. A table
/// of its own: `Profile` rows written before avatars existed keep their shape.
const USER_AVATARS: TableDefinition<u64, u64> = TableDefinition::new("user_avatars");
/// user id -> Digest (as its code) of the users who want notification digests by email;
/// no row: none. A table of its own, as `user_avatars`.
const USER_DIGESTS: TableDefinition<u64, u8> = TableDefinition::new("user_digests");
/// user id -> Preferences
const USER_PREFERENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("user_preferences");
/// user id -> Settings
const USER_SETTINGS: TableDefinition<u64, &[u8]> = TableDefinition::new("user_settings");
/// user id -> FeedPreferences
const FEED_PREFERENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("feed_preferences");

pub const MUTED_WORDS_MAX: usize = 20;
pub const MUTED_WORD_CHARS_MAX: usize = 40;

/// Who may start a conversation with me.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum MessagesFrom {
    #[default]
    Everyone,
    /// Only people I follow.
    Following,
    Nobody,
}

impl MessagesFrom {
    pub fn parse(raw: &str) -> Result<MessagesFrom, Invalid> {
        match raw {
            "everyone" => Ok(MessagesFrom::Everyone),
            "following" => Ok(MessagesFrom::Following),
            "nobody" => Ok(MessagesFrom::Nobody),
            _ => Err(Invalid::new(
                "invalid_messages_from",
                "messages_from is everyone, following or nobody",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessagesFrom::Everyone => "everyone",
            MessagesFrom::Following => "following",
            MessagesFrom::Nobody => "nobody",
        }
    }
}

/// How often a user wants an email summing up the notifications not read yet.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Digest {
    #[default]
    Off,
    Daily,
    Weekly,
}

impl Digest {
    pub fn parse(raw: &str) -> Result<Digest, Invalid> {
        match raw {
            "off" => Ok(Digest::Off),
            "daily" => Ok(Digest::Daily),
            "weekly" => Ok(Digest::Weekly),
            _ => Err(Invalid::new(
                "invalid_email_digest",
                "email_digest is off, daily or weekly",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Digest::Off => "off",
            Digest::Daily => "daily",
            Digest::Weekly => "weekly",
        }
    }

    /// Days between two digests (none for `Off`).
    pub fn days(self) -> Option<u64> {
        match self {
            Digest::Off => None,
            Digest::Daily => Some(1),
            Digest::Weekly => Some(7),
        }
    }

    fn code(self) -> u8 {
        match self {
            Digest::Off => 0,
            Digest::Daily => 1,
            Digest::Weekly => 2,
        }
    }

    fn from_code(code: u8) -> Digest {
        match code {
            1 => Digest::Daily,
            2 => Digest::Weekly,
            _ => Digest::Off,
        }
    }
}

/// Account settings.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// A private account approves each follower, and only followers see its posts.
    pub private: bool,
    pub messages_from: MessagesFrom,
}

/// What the home feed leaves out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedPreferences {
    /// Hide replies (posts with `reply_to`) of other people.
    pub hide_replies: bool,
    /// Lowercased words; a post containing one as a whole word is hidden.
    pub muted_words: Vec<String>,
}

impl FeedPreferences {
    /// True when `hides` is false for every post.
    pub fn hides_nothing(&self) -> bool {
        !self.hide_replies && self.muted_words.is_empty()
    }

    /// Does this preference hide `text` (a post by someone else, replying or not)?
    pub fn hides(&self, text: &str, is_reply: bool) -> bool {
        if self.hide_replies && is_reply {
            return true;
        }
        if self.muted_words.is_empty() {
            return false;
        }
        let lower = text.to_lowercase();
        self.muted_words.iter().any(|w| contains_word(&lower, w))
    }
}

/// Is `word` in `text` with no letter or digit right before or after it?
fn contains_word(text: &str, word: &str) -> bool {
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        if !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric) {
            return true;
        }
        from = start + text[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

pub fn parse_muted_words(raw: &[String]) -> Result<Vec<String>, Invalid> {
    if raw.len() > MUTED_WORDS_MAX {
        return Err(Invalid::new(
            "invalid_muted_words",
            format!("at most {MUTED_WORDS_MAX} muted words"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(raw.len());
    for w in raw {
        let w = w.trim().to_lowercase();
        let n = w.chars().count();
        if n == 0 || n > MUTED_WORD_CHARS_MAX || w.chars().any(char::is_control) {
            return Err(Invalid::new(
                "invalid_muted_words",
                format!("a muted word has 1 to {MUTED_WORD_CHARS_MAX} characters"),
            ));
        }
        if !out.contains(&w) {
            out.push(w);
        }
    }
    Ok(out)
}

pub const BIO_CHARS_MAX: usize = 500;
pub const LINKS_MAX: usize = 5;
pub const LINK_BYTES_MAX: usize = 300;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    pub bio: String,
    pub links: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Preferences {
    pub default_visibility: Visibility,
    /// A BCP 47 language tag, e.g. `en` or `pt-BR`.
    pub language: String,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            default_visibility: Visibility::Public,
            language: "en".to_string(),
        }
    }
}

pub fn parse_bio(raw: &str) -> Result<String, Invalid> {
    let bio = raw.trim();
    if bio.chars().count() > BIO_CHARS_MAX || bio.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Invalid::new(
            "invalid_bio",
            format!("a bio has at most {BIO_CHARS_MAX} characters and no control characters"),
        ));
    }
    Ok(bio.to_string())
}

pub fn parse_links(raw: &[String]) -> Result<Vec<String>, Invalid> {
    if raw.len() > LINKS_MAX {
        return Err(Invalid::new(
            "invalid_links",
            format!("at most {LINKS_MAX} links"),
        ));
    }
    raw.iter()
        .map(|l| {
            let l = l.trim();
            // A host after the scheme: up to the path, query or fragment, without the
            // user-info and the port.
            let rest = l
                .strip_prefix("https://")
                .or_else(|| l.strip_prefix("http://"));
            let host = rest
                .and_then(|r| r.split(['/', '?', '#']).next())
                .map(|authority| authority.rsplit('@').next().unwrap_or(""))
                .map(|h| h.split(':').next().unwrap_or(""));
            let ok = host.is_some_and(|h| !h.is_empty())
                && l.len() <= LINK_BYTES_MAX
                && !l.chars().any(|c| c.is_whitespace() || c.is_control());
            if ok {
                Ok(l.to_string())
            } else {
                Err(Invalid::new(
                    "invalid_links",
                    "links are http(s) URLs of at most 300 bytes",
                ))
            }
        })
        .collect()
}

pub fn parse_language(raw: &str) -> Result<String, Invalid> {
    // The primary language subtag is 2-8 letters; the subtags after it 1-8 letters or digits.
    let mut parts = raw.split('-');
    let primary = parts.next().unwrap_or("");
    let ok = (2..=35).contains(&raw.len())
        && (2..=8).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(raw.to_string())
    } else {
        Err(Invalid::new(
            "invalid_language",
            "language is a BCP 47 tag such as en or pt-BR",
        ))
    }
}

/// The record of `user` in `def`, or the default when there is none (or no table yet).
fn get_or_default<T: serde::de::DeserializeOwned + Default>(
    read: &ReadTransaction,
    def: TableDefinition<u64, &[u8]>,
    user: u64,
) -> Result<T, CoreError> {
    let table = match read.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(T::default()),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(user)?;
    Ok(value
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default())
}

/// Read-modify-write of `user`'s record in `def` inside the transaction.
fn modify<T: Serialize + serde::de::DeserializeOwned + Default>(
    txn: &WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    user: u64,
    change: impl FnOnce(&mut T),
) -> Result<T, CoreError> {
    let mut table = txn.open_table(def)?;
    let mut record: T = table
        .get(user)?
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default();
    change(&mut record);
    table.insert(user, encode(&record).as_slice())?;
    Ok(record)
}

pub fn profile(read: &ReadTransaction, user: u64) -> Result<Profile, CoreError> {
    get_or_default(read, USER_PROFILES, user)
}

/// The media id of `user`'s avatar, if one is set.
pub fn avatar(read: &ReadTransaction, user: u64) -> Result<Option<u64>, CoreError> {
    let table = match read.open_table(USER_AVATARS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let found = table.get(user)?.map(|v| v.value());
    Ok(found)
}

/// Sets (or with `None` removes) `user`'s avatar.
pub fn set_avatar(txn: &WriteTransaction, user: u64, media: Option<u64>) -> Result<(), CoreError> {
    let mut table = txn.open_table(USER_AVATARS)?;
    match media {
        Some(id) => table.insert(user, id)?,
        None => table.remove(user)?,
    };
    Ok(())
}

/// Removes `user`'s avatar if it is `media` (being deleted). Media live on their owner's
/// shard, as the profile does.
pub fn forget_avatar(txn: &WriteTransaction, user: u64, media: u64) -> Result<(), CoreError> {
    let mut table = txn.open_table(USER_AVATARS)?;
    let current = table.get(user)?.map(|v| v.value());
    if current == Some(media) {
        table.remove(user)?;
    }
    Ok(())
}

/// How often `user` wants a notification digest.
pub fn digest(read: &ReadTransaction, user: u64) -> Result<Digest, CoreError> {
    let table = match read.open_table(USER_DIGESTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Digest::Off),
        Err(e) => return Err(e.into()),
    };
    let found = table.get(user)?.map(|v| Digest::from_code(v.value()));
    Ok(found.unwrap_or_default())
}

/// `digest` inside a write transaction.
pub fn digest_in(txn: &WriteTransaction, user: u64) -> Result<Digest, CoreError> {
    let found = txn
        .open_table(USER_DIGESTS)?
        .get(user)?
        .map(|v| Digest::from_code(v.value()));
    Ok(found.unwrap_or_default())
}

pub fn set_digest(txn: &WriteTransaction, user: u64, digest: Digest) -> Result<(), CoreError> {
    let mut table = txn.open_table(USER_DIGESTS)?;
    match digest {
        Digest::Off => table.remove(user)?,
        on => table.insert(user, on.code())?,
    };
    Ok(())
}

/// Up to `limit` users (with ids past `after`) who want digests, with how often.
pub fn digest_subscribers(
    read: &ReadTransaction,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, Digest)>, CoreError> {
    let table = match read.open_table(USER_DIGESTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let start = after.map_or(0, |a| a.saturating_add(1));
    table
        .range(start..)?
        .take(limit)
        .map(|r| {
            r.map(|(k, v)| (k.value(), Digest::from_code(v.value())))
                .map_err(Into::into)
        })
        .collect()
}

pub fn settings(read: &ReadTransaction, user: u64) -> Result<Settings, CoreError> {
    get_or_default(read, USER_SETTINGS, user)
}

/// `settings` inside a write transaction.
pub fn settings_in(txn: &WriteTransaction, user: u64) -> Result<Settings, CoreError> {
    Ok(txn
        .open_table(USER_SETTINGS)?
        .get(user)?
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default())
}

/// Changes the settings given.
pub fn update_settings(
    txn: &WriteTransaction,
    user: u64,
    private: Option<bool>,
    messages_from: Option<MessagesFrom>,
) -> Result<Settings, CoreError> {
    modify(txn, USER_SETTINGS, user, |s: &mut Settings| {
        if let Some(p) = private {
            s.private = p;
        }
        if let Some(m) = messages_from {
            s.messages_from = m;
        }
    })
}

pub fn feed_preferences(read: &ReadTransaction, user: u64) -> Result<FeedPreferences, CoreError> {
    get_or_default(read, FEED_PREFERENCES, user)
}

/// Changes the feed preferences given.
pub fn update_feed_preferences(
    txn: &WriteTransaction,
    user: u64,
    hide_replies: Option<bool>,
    muted_words: Option<Vec<String>>,
) -> Result<FeedPreferences, CoreError> {
    modify(txn, FEED_PREFERENCES, user, |f: &mut FeedPreferences| {
        if let Some(h) = hide_replies {
            f.hide_replies = h;
        }
        if let Some(w) = muted_words {
            f.muted_words = w;
        }
    })
}

/// Changes the fields given, in one read-modify-write inside the transaction.
pub fn update_profile(
    txn: &WriteTransaction,
    user: u64,
    bio: Option<String>,
    links: Option<Vec<String>>,
) -> Result<Profile, CoreError> {
    modify(txn, USER_PROFILES, user, |p: &mut Profile| {
        if let Some(bio) = bio {
            p.bio = bio;
        }
        if let Some(links) = links {
            p.links = links;
        }
    })
}

pub fn preferences(read: &ReadTransaction, user: u64) -> Result<Preferences, CoreError> {
    get_or_default(read, USER_PREFERENCES, user)
}

/// Changes the preferences given, in one read-modify-write inside the transaction.
pub fn update_preferences(
    txn: &WriteTransaction,
    user: u64,
    visibility: Option<Visibility>,
    language: Option<String>,
) -> Result<Preferences, CoreError> {
    modify(txn, USER_PREFERENCES, user, |p: &mut Preferences| {
        if let Some(v) = visibility {
            p.default_visibility = v;
        }
        if let Some(l) = language {
            p.language = l;
        }
    })
}

/// Everything a user set (export): profile, preferences, settings, feed preferences.
pub fn all(
    read: &ReadTransaction,
    user: u64,
) -> Result<(Profile, Preferences, Settings, FeedPreferences), CoreError> {
    Ok((
        profile(read, user)?,
        preferences(read, user)?,
        settings(read, user)?,
        feed_preferences(read, user)?,
    ))
}

/// Deletes everything the user set (account erasure).
pub fn erase_user(txn: &WriteTransaction, user: u64) -> Result<(), CoreError> {
    for def in [
        USER_PROFILES,
        USER_PREFERENCES,
        USER_SETTINGS,
        FEED_PREFERENCES,
    ] {
        txn.open_table(def)?.remove(user)?;
    }
    set_avatar(txn, user, None)?;
    set_digest(txn, user, Digest::Off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(parse_bio(&"x".repeat(501)).is_err());
        assert_eq!(parse_bio(" hi ").unwrap(), "hi");
        assert!(parse_links(&["ftp://x".into()]).is_err());
        for hostless in [
            "https://",
            "http://",
            "https:///path",
            "https://user@",
            "http://:80/",
        ] {
            assert!(parse_links(&[hostless.into()]).is_err(), "{hostless}");
        }
        assert!(parse_links(&["https://a.org:8080/p?q#f".into(), "http://u@b.org".into()]).is_ok());
        assert!(parse_links(&vec!["https://x.org".to_string(); 6]).is_err());
        assert!(parse_language("pt-BR").is_ok());
        assert!(parse_language("x").is_err());
        assert!(parse_language("en_US").is_err());
        assert!(parse_language("123").is_err());
        assert!(parse_language("e1-US").is_err());
        assert!(parse_language("es-419").is_ok());
        assert!(parse_muted_words(&["".into()]).is_err());
        assert_eq!(
            parse_muted_words(&[" Spoiler ".into(), "spoiler".into()]).unwrap(),
            vec!["spoiler"]
        );
    }

    #[test]
    fn an_avatar_is_set_replaced_forgotten_with_its_media_and_erased() {
        use redb::ReadableDatabase;
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        let write = |f: &dyn Fn(&WriteTransaction)| {
            let txn = db.begin_write().unwrap();
            f(&txn);
            txn.commit().unwrap();
        };
        let read = |user| avatar(&db.begin_read().unwrap(), user).unwrap();
        assert_eq!(read(1), None);
        write(&|t| set_avatar(t, 1, Some(10)).unwrap());
        write(&|t| set_avatar(t, 2, Some(20)).unwrap());
        write(&|t| set_avatar(t, 1, Some(11)).unwrap());
        assert_eq!((read(1), read(2)), (Some(11), Some(20)));
        // Deleting another media of the user leaves the avatar; deleting it removes it.
        write(&|t| forget_avatar(t, 1, 10).unwrap());
        assert_eq!(read(1), Some(11));
        write(&|t| forget_avatar(t, 1, 11).unwrap());
        assert_eq!(read(1), None);
        write(&|t| set_avatar(t, 1, Some(12)).unwrap());
        write(&|t| set_avatar(t, 1, None).unwrap());
        assert_eq!(read(1), None);
        write(&|t| erase_user(t, 2).unwrap());
        assert_eq!(read(2), None);
    }

    #[test]
    fn muted_words_match_whole_words() {
        let f = FeedPreferences {
            hide_replies: false,
            muted_words: vec!["spoiler".into(), "café".into()],
        };
        assert!(f.hides("Big SPOILER ahead", false));
        assert!(f.hides("#spoiler!", false));
        assert!(f.hides("au Café", false));
        assert!(!f.hides("spoilers everywhere", false));
        assert!(!f.hides("nospoiler", false));
        assert!(!f.hides("nothing here", true));
        let r = FeedPreferences {
            hide_replies: true,
            muted_words: vec![],
        };
        assert!(r.hides("a reply", true));
        assert!(!r.hides("a post", false));
    }
}
