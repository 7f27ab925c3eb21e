//! Maps keyed by a shard's request ids, hashed for their locality.
//!
//! A shard numbers its requests 1, 2, 3, … and answers them in about that order,
//! with thousands in flight when clients pipeline. With SipHash (std's default)
//! every insert and removal lands on a random bucket of a table of that size, and
//! the lookups of a turn's answers missed the cache: the answer path was a tenth of
//! a pipelined leader's CPU in the profiles of docs/performance.md. Keeping the
//! id's low bits as the bucket position makes consecutive requests neighbours in
//! the table. The ids are the shard's own, never a peer's or a client's, so there is
//! no adversary to choose colliding keys.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map from request id to what waits for its answer.
pub type RequestMap<V> = HashMap<u64, V, BuildHasherDefault<RequestIdHasher>>;

/// Hashes a `u64` to itself in the low bits (hashbrown places by the low bits) and
/// repeats its lowest seven bits at the top (hashbrown's tag, compared before the
/// key), so neighbours land side by side with distinct tags.
#[derive(Default)]
pub struct RequestIdHasher(u64);

impl Hasher for RequestIdHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 << 57)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed (`write_u64`); anything else folds in bytewise.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn consecutive_ids_keep_their_order_and_get_distinct_tags() {
        let build = BuildHasherDefault::<RequestIdHasher>::default();
        let hashes: Vec<u64> = (1..=128u64).map(|id| build.hash_one(id)).collect();
        for (id, h) in (1..=128u64).zip(&hashes) {
            assert_eq!(h & ((1 << 57) - 1), id, "low bits are the id");
        }
        let tags: std::collections::BTreeSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128, "128 neighbours, 128 distinct tags");
    }

    #[test]
    fn a_map_of_thousands_finds_every_id() {
        let mut map = RequestMap::default();
        for id in 1..=5000u64 {
            map.insert(id, id * 2);
        }
        for id in (1..=5000u64).step_by(2) {
            assert_eq!(map.remove(&id), Some(id * 2));
        }
        assert_eq!(map.len(), 2500);
        assert!((2..=5000u64).step_by(2).all(|id| map[&id] == id * 2));
    }
}
