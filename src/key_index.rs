//! A run's request index: request keys to record numbers.
//!
//! The keys are already hashes (xxh3 of the request id), so the index is an
//! open-addressing table with linear probing over 12-byte slots: a lookup
//! reads one cache line (rarely two), where a general hash map reads a
//! control group and then a bucket elsewhere. And a lookup's line can be
//! fetched ahead ([`KeyIndex::prefetch`]) while earlier spans of a batch
//! are joined, so the cache misses of new requests overlap instead of
//! stalling one after another.

use std::sync::OnceLock;

use crate::model::RequestKey;

/// A key and its record number in 12 bytes (the key as two halves, so
/// the slot is aligned to 4 and five fit a cache line).
#[derive(Clone, Copy, Debug)]
struct Slot {
    key: [u32; 2],
    at: u32,
}

impl Slot {
    #[inline(always)]
    fn new(key: RequestKey, at: u32) -> Slot {
        Slot {
            key: [key as u32, (key >> 32) as u32],
            at,
        }
    }

    #[inline(always)]
    fn key(self) -> RequestKey {
        u64::from(self.key[0]) | u64::from(self.key[1]) << 32
    }
}

/// A free slot's record number.
const FREE: u32 = u32::MAX;

const EMPTY: Slot = Slot {
    key: [0, 0],
    at: FREE,
};

/// The smallest table that is allocated.
const MIN_SLOTS: usize = 8;

/// Request keys to record numbers (below `u32::MAX`).
#[derive(Clone, Debug, Default)]
pub struct KeyIndex {
    /// Empty, or a power of two of slots, at most three quarters used.
    slots: Vec<Slot>,
    len: usize,
}

/// A per-process seed mixed into every key, so that ids chosen to share a
/// stretch of slots in one process do not in another.
pub(crate) fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x7470_7367_6170);
        h.finish()
    })
}

impl KeyIndex {
    /// The number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The slot where `key`'s probe starts.
    #[inline(always)]
    fn home(&self, key: RequestKey) -> usize {
        let h = (key ^ seed()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h ^ h >> 29) as usize & (self.slots.len() - 1)
    }

    /// The record number of `key`.
    #[inline]
    pub fn get(&self, key: RequestKey) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = self.slots[i];
            if s.at == FREE {
                return None;
            }
            if s.key() == key {
                return Some(s.at);
            }
            i = (i + 1) & mask;
        }
    }

    /// The record number of `key`, or `at` for it when it is new: `(number,
    /// new)`. One probe either way.
    #[inline]
    pub fn get_or_insert(&mut self, key: RequestKey, at: u32) -> (u32, bool) {
        debug_assert!(at != FREE);
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let s = &mut self.slots[i];
            if s.at == FREE {
                *s = Slot::new(key, at);
                self.len += 1;
                return (at, true);
            }
            if s.key() == key {
                return (s.at, false);
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the table (or makes the first one) and puts every key back.
    #[cold]
    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        let mask = n - 1;
        for s in old.into_iter().filter(|s| s.at != FREE) {
            let mut i = self.home(s.key());
            while self.slots[i].at != FREE {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// Asks the CPU to fetch the cache line where `key`'s lookup starts, so
    /// that a lookup a few spans later finds it there.
    #[inline(always)]
    pub fn prefetch(&self, key: RequestKey) {
        if self.slots.is_empty() {
            return;
        }
        let slot: *const Slot = &self.slots[self.home(key)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint that never faults and reads nothing
        // the program sees; the address is that of a live slot anyway.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(slot.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }
}

impl FromIterator<(RequestKey, u32)> for KeyIndex {
    fn from_iter<I: IntoIterator<Item = (RequestKey, u32)>>(iter: I) -> KeyIndex {
        let mut index = KeyIndex::default();
        for (key, at) in iter {
            index.get_or_insert(key, at);
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The index answers as a `HashMap` does, through growth and with
        /// keys that share their low or high bits.
        #[test]
        fn the_index_finds_what_a_map_finds(
            keys in proptest::collection::vec(
                prop_oneof![
                    any::<u64>(),
                    (0u64..64).prop_map(|k| k << 58),
                    (0u64..64),
                ],
                0..3000,
            ),
            probes in proptest::collection::vec(any::<u64>(), 0..50),
        ) {
            let mut index = KeyIndex::default();
            let mut map: HashMap<u64, u32> = HashMap::new();
            for &k in &keys {
                let next = map.len() as u32;
                let new = !map.contains_key(&k);
                let want = *map.entry(k).or_insert(next);
                prop_assert_eq!(index.get_or_insert(k, next), (want, new));
                prop_assert_eq!(index.len(), map.len());
            }
            for k in keys.iter().chain(&probes) {
                prop_assert_eq!(index.get(*k), map.get(k).copied());
            }
            let rebuilt: KeyIndex = map.iter().map(|(k, v)| (*k, *v)).collect();
            for k in keys.iter().chain(&probes) {
                prop_assert_eq!(rebuilt.get(*k), map.get(k).copied());
            }
            if !index.slots.is_empty() {
                prop_assert!(index.slots.len().is_power_of_two());
                prop_assert!(index.len * 4 <= index.slots.len() * 3);
            }
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = KeyIndex::default();
        assert_eq!(index.get(0), None);
        assert_eq!(index.get(u64::MAX), None);
        index.prefetch(7);
    }

    #[test]
    fn a_second_insert_keeps_the_first_number() {
        let mut index = KeyIndex::default();
        assert_eq!(index.get_or_insert(42, 0), (0, true));
        assert_eq!(index.get_or_insert(42, 1), (0, false));
        assert_eq!(index.get_or_insert(0, 1), (1, true));
        assert_eq!(
            (index.get(42), index.get(0), index.len()),
            (Some(0), Some(1), 2)
        );
    }
}
