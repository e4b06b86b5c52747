//! 64-bit time-ordered IDs that carry their owning shard.
//!
//! Layout: `ms since ID_EPOCH_MS` (42 bits, ~139 years) `<< 22 | shard (10 bits) << 12 |
//! sequence (12 bits)`. Sorting IDs sorts by creation time; `shard_of` is a pure function.

/// 2025-01-01T00:00:00Z.
pub const ID_EPOCH_MS: u64 = 1_735_689_600_000;
pub const SHARDS_MAX: usize = 1 << SHARD_BITS;
const SHARD_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;

/// The shard that owns the object with this ID.
pub fn shard_of(id: u64) -> usize {
    ((id >> SEQ_BITS) & (SHARDS_MAX as u64 - 1)) as usize
}

/// When the object with this ID was made (ms since the Unix epoch).
pub fn id_ms(id: u64) -> u64 {
    (id >> (SHARD_BITS + SEQ_BITS)) + ID_EPOCH_MS
}

/// The shard that owns a lookup key (a lower-cased username or email). FNV-1a: stable across
/// builds and platforms, which `std`'s hasher does not promise.
pub fn shard_for_key(key: &str, shards: usize) -> usize {
    assert!(shards > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// Makes IDs for one shard. Not shared between threads: each shard has its own.
#[derive(Debug)]
pub struct IdGen {
    shard: u64,
    last_ms: u64,
    seq: u64,
}

impl IdGen {
    pub fn new(shard: usize) -> IdGen {
        assert!(shard < SHARDS_MAX, "shard {shard} out of range");
        IdGen {
            shard: shard as u64,
            last_ms: 0,
            seq: 0,
        }
    }

    /// A new ID, strictly greater than every earlier one from this generator. When the
    /// sequence of one millisecond runs out, or the clock steps back, it borrows the next
    /// millisecond rather than repeat.
    pub fn next(&mut self, now_ms: u64) -> u64 {
        let ms = now_ms.saturating_sub(ID_EPOCH_MS);
        if ms > self.last_ms {
            self.last_ms = ms;
            self.seq = 0;
        } else if self.seq < SEQ_MAX {
            self.seq += 1;
        } else {
            self.last_ms += 1;
            self.seq = 0;
        }
        (self.last_ms << (SHARD_BITS + SEQ_BITS)) | (self.shard << SEQ_BITS) | self.seq
    }

    /// Moves the generator past `id` (used at start-up so a restart with a clock that went
    /// back never reuses an ID).
    pub fn observe(&mut self, id: u64) {
        let ms = id >> (SHARD_BITS + SEQ_BITS);
        if ms > self.last_ms || (ms == self.last_ms && (id & SEQ_MAX) > self.seq) {
            self.last_ms = ms;
            self.seq = id & SEQ_MAX;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_shard_and_increase() {
        let mut g = IdGen::new(3);
        let now = ID_EPOCH_MS + 1000;
        let mut last = 0;
        for i in 0..10_000 {
            let id = g.next(now + i / 100);
            assert!(id > last);
            assert_eq!(shard_of(id), 3);
            last = id;
        }
        let mut back = IdGen::new(3);
        back.observe(last);
        assert!(back.next(now) > last);
    }

    #[test]
    fn keys_spread_over_shards() {
        let hits: std::collections::HashSet<usize> = (0..100)
            .map(|i| shard_for_key(&format!("user{i}"), 4))
            .collect();
        assert_eq!(hits.len(), 4);
    }
}
