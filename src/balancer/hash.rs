//! A small, fixed, portable 64-bit hash for sticky balancing.
//!
//! Stickiness must agree across replicas, restarts and upgrades of switchboard, so the function
//! and its seed are part of the contract: `std`'s hasher is explicitly allowed to change between
//! Rust releases and is randomly keyed, so it cannot be used. This is a multiply-rotate over
//! 8-byte words finished with MurmurHash3's `fmix64` avalanche. It is not DoS-resistant and
//! does not need to be: an attacker who chooses keys can only choose which backend they land on.

/// The fixed seed (the first 64 bits of the fractional part of pi). Never change it: every
/// sticky session in every deployment would move at once.
pub const SEED: u64 = 0x243F_6A88_85A3_08D3;

const MUL: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hashes a byte string.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = SEED ^ (bytes.len() as u64).wrapping_mul(MUL);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(MUL).rotate_left(29);
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    h = (h ^ u64::from_le_bytes(tail))
        .wrapping_mul(MUL)
        .rotate_left(29);
    fmix64(h)
}

/// MurmurHash3's finaliser: a bijection in which every input bit affects every output bit.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned() {
        // These exact values are the cross-version contract: if this test fails, stickiness
        // would change for every deployment on upgrade.
        assert_eq!(hash_bytes(b""), hash_bytes(b""));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_ne!(hash_bytes(b"abcdefgh"), hash_bytes(b"abcdefgh\0"));
        assert_eq!(hash_bytes(b"room-1"), PINNED_ROOM_1);
    }

    const PINNED_ROOM_1: u64 = 7_395_247_914_221_438_423;
}
