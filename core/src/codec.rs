//! Stored values: a format byte, then postcard. The byte lets a record change shape later
//! (read old, write new) without a migration of every row.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::CoreError;

const FORMAT_V1: u8 = 1;

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_V1];
    // postcard only fails to serialize types it cannot represent (maps with non-string keys
    // are fine, unsized sequences are not used); our records are plain structs.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => panic!("record cannot be encoded: {e}"),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CoreError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| CoreError::Corrupt(format!("undecodable record: {e}"))),
        _ => Err(CoreError::Corrupt(
            "record with an unknown format byte".to_string(),
        )),
    }
}
