//! Small non-cryptographic hashes written here instead of pulled in as dependencies.
//!
//! - [`fnv1a64`]: 64-bit FNV-1a over bytes. Used for `hash_buckets` (the bucket of a raw value
//!   is part of the saved model's meaning, so this function must never change) and for
//!   fingerprints of short texts.
//! - [`ContentHasher`]: a streaming 64-bit hash for whole files (cache invalidation). FNV-1a
//!   works a byte at a time (~1 GB/s); this one consumes 32 bytes per round in four independent
//!   multiply–rotate lanes, so hashing a CSV costs far less than parsing it. The result does not
//!   depend on how the input is split into `update` calls.
//! - [`FastHash`]: a `HashMap` hasher for the raw-value tables built while streaming a CSV; the
//!   std SipHash is DoS-resistant but several times slower, and our keys come from a local file.

use std::hash::{BuildHasherDefault, Hasher};

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes` (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Formats a 64-bit hash as 16 lowercase hex digits (how fingerprints are stored in JSON).
pub fn hex64(h: u64) -> String {
    format!("{h:016x}")
}

// Odd 64-bit constants with well-mixed bits (from the golden ratio and two primes).
const M1: u64 = 0x9e37_79b9_7f4a_7c15;
const M2: u64 = 0xc2b2_ae3d_27d4_eb4f;
const M3: u64 = 0x1656_67b1_9e37_79f9;

/// Final avalanche: every input bit affects every output bit.
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(M2);
    x ^= x >> 29;
    x = x.wrapping_mul(M3);
    x ^= x >> 32;
    x
}

/// One lane step: fold a little-endian word into an accumulator.
#[inline(always)]
fn round(acc: u64, w: u64) -> u64 {
    (acc ^ w.wrapping_mul(M2)).rotate_left(29).wrapping_mul(M1)
}

/// Streaming 64-bit content hash (four lanes of 8-byte words, then a tail).
#[derive(Clone, Debug)]
pub struct ContentHasher {
    lanes: [u64; 4],
    /// Bytes not yet forming a full 32-byte block.
    pending: [u8; 32],
    pending_len: usize,
    total: u64,
}

impl Default for ContentHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        ContentHasher {
            lanes: [M1, M2, M3, M1 ^ M2],
            pending: [0; 32],
            pending_len: 0,
            total: 0,
        }
    }

    #[inline(always)]
    fn block(&mut self, b: &[u8]) {
        for (l, lane) in self.lanes.iter_mut().enumerate() {
            let w = u64::from_le_bytes(b[8 * l..8 * l + 8].try_into().expect("8 bytes"));
            *lane = round(*lane, w);
        }
    }

    /// Feeds more bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.pending_len > 0 {
            let take = (32 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 32 {
                return;
            }
            let p = self.pending;
            self.block(&p);
            self.pending_len = 0;
        }
        let mut chunks = data.chunks_exact(32);
        for c in &mut chunks {
            self.block(c);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The hash of everything fed so far.
    pub fn finish(&self) -> u64 {
        let mut h = self.total.wrapping_mul(M3);
        for (i, &l) in self.lanes.iter().enumerate() {
            h = round(h ^ (i as u64), mix64(l));
        }
        // Tail bytes one at a time, FNV style, then the final avalanche.
        for &b in &self.pending[..self.pending_len] {
            h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
        mix64(h)
    }
}

/// One-shot [`ContentHasher`] over a byte slice.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = ContentHasher::new();
    h.update(bytes);
    h.finish()
}

/// A fast `Hasher` for in-memory tables keyed by short strings (FNV-1a over 8-byte words).
#[derive(Clone, Copy, Debug)]
pub struct FastHasher(u64);

impl Default for FastHasher {
    fn default() -> Self {
        FastHasher(FNV_OFFSET)
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0 ^ w).wrapping_mul(M1).rotate_left(31);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        }
    }

    fn finish(&self) -> u64 {
        mix64(self.0)
    }
}

/// `BuildHasher` for [`FastHasher`].
pub type FastHash = BuildHasherDefault<FastHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn content_hash_is_split_invariant_and_sensitive() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = content_hash(&data);
        for split in [0, 1, 7, 31, 32, 33, 500, 999, 1000] {
            let mut h = ContentHasher::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            assert_eq!(h.finish(), whole, "split at {split}");
        }
        let mut h = ContentHasher::new();
        for c in data.chunks(3) {
            h.update(c);
        }
        assert_eq!(h.finish(), whole);
        let mut flipped = data.clone();
        flipped[517] ^= 1;
        assert_ne!(content_hash(&flipped), whole);
        assert_ne!(content_hash(&data[..999]), whole);
        // Appending zero bytes changes the length, hence the hash.
        let mut longer = data.clone();
        longer.push(0);
        assert_ne!(content_hash(&longer), whole);
    }
}
