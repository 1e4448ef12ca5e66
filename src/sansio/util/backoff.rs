//! The one backoff: exponential in the number of consecutive failures,
//! from `base_ms`, capped at `max_ms`.

use crate::sansio::util::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The delay after `failures` (≥ 1) consecutive failures, without jitter.
    pub fn full(&self, failures: u32) -> u64 {
        let shift = failures.saturating_sub(1).min(20);
        self.base_ms.saturating_mul(1 << shift).min(self.max_ms.max(self.base_ms))
    }

    /// [`Backoff::full`] with "equal jitter": half fixed, half random, so
    /// that pollers that failed together spread out.
    pub fn jittered(&self, failures: u32, rng: &mut Rng) -> u64 {
        let full = self.full(failures);
        let half = full / 2;
        half + rng.up_to(full - half)
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn doubles_to_the_cap_and_jitters_within_the_upper_half() {
        let b = Backoff { base_ms: 500, max_ms: 4000 };
        let fulls: Vec<u64> = (1..=6).map(|n| b.full(n)).collect();
        assert_eq!(fulls, [500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(b.full(u32::MAX), 4000, "no overflow");
        let mut rng = Rng::new(7);
        for n in 1..=6 {
            let d = b.jittered(n, &mut rng);
            assert!((b.full(n) / 2..=b.full(n)).contains(&d), "{n}: {d}");
        }
        // A cap below the base never shortens the first delay.
        assert_eq!(Backoff { base_ms: 500, max_ms: 100 }.full(3), 500);
    }
}
