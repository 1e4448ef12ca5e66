//! A fast, seedless 64-bit hash for balancing keys (FNV-1a with a
//! SplitMix64 finaliser so that similar keys spread over the whole range).
//! Not for anything adversarial.

pub fn hash64(data: &[u8], salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn deterministic_and_salted() {
        assert_eq!(hash64(b"10.0.0.1:80", 0), hash64(b"10.0.0.1:80", 0));
        assert_ne!(hash64(b"10.0.0.1:80", 0), hash64(b"10.0.0.1:80", 1));
        assert_ne!(hash64(b"10.0.0.1:80", 0), hash64(b"10.0.0.2:80", 0));
        // Low bits of similar keys are not correlated.
        let lows: std::collections::HashSet<u64> = (0..64).map(|i| hash64(format!("k{i}").as_bytes(), 0) % 8).collect();
        assert_eq!(lows.len(), 8);
    }
}
