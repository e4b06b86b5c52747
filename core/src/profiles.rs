//! Profiles and preferences (tables `user_profiles`, `user_preferences`), on the user's
//! shard. The display name stays with identity (it is part of the account).

use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::content::Visibility;
use crate::{CoreError, Invalid};

/// user id -> Profile
const USER_PROFILES: TableDefinition<u64, &[u8]> = TableDefinition::new("user_profiles");
/// user id -> Preferences
const USER_PREFERENCES: TableDefinition<u64, &[u8]> = TableDefinition::new("user_preferences");

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
            let ok = (l.starts_with("https://") || l.starts_with("http://"))
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
    let ok = (2..=35).contains(&raw.len())
        && raw
            .split('-')
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

pub fn profile(read: &ReadTransaction, user: u64) -> Result<Profile, CoreError> {
    let table = match read.open_table(USER_PROFILES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Profile::default()),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(user)?;
    Ok(value
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default())
}

/// Changes the fields given, in one read-modify-write inside the transaction.
pub fn update_profile(
    txn: &WriteTransaction,
    user: u64,
    bio: Option<String>,
    links: Option<Vec<String>>,
) -> Result<Profile, CoreError> {
    let mut table = txn.open_table(USER_PROFILES)?;
    let mut profile: Profile = table
        .get(user)?
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default();
    if let Some(bio) = bio {
        profile.bio = bio;
    }
    if let Some(links) = links {
        profile.links = links;
    }
    table.insert(user, encode(&profile).as_slice())?;
    Ok(profile)
}

pub fn preferences(read: &ReadTransaction, user: u64) -> Result<Preferences, CoreError> {
    let table = match read.open_table(USER_PREFERENCES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Preferences::default()),
        Err(e) => return Err(e.into()),
    };
    let value = table.get(user)?;
    Ok(value
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default())
}

/// Changes the preferences given, in one read-modify-write inside the transaction.
pub fn update_preferences(
    txn: &WriteTransaction,
    user: u64,
    visibility: Option<Visibility>,
    language: Option<String>,
) -> Result<Preferences, CoreError> {
    let mut table = txn.open_table(USER_PREFERENCES)?;
    let mut prefs: Preferences = table
        .get(user)?
        .map(|v| decode(v.value()))
        .transpose()?
        .unwrap_or_default();
    if let Some(v) = visibility {
        prefs.default_visibility = v;
    }
    if let Some(l) = language {
        prefs.language = l;
    }
    table.insert(user, encode(&prefs).as_slice())?;
    Ok(prefs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(parse_bio(&"x".repeat(501)).is_err());
        assert_eq!(parse_bio(" hi ").unwrap(), "hi");
        assert!(parse_links(&["ftp://x".into()]).is_err());
        assert!(parse_links(&vec!["https://x.org".to_string(); 6]).is_err());
        assert!(parse_language("pt-BR").is_ok());
        assert!(parse_language("x").is_err());
        assert!(parse_language("en_US").is_err());
    }
}
