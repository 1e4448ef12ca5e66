//! Least-request by the power of two choices: pick two distinct eligible
//! members at random, send to the one with fewer requests in flight
//! (ties: the first drawn). 0 eligible → none, 1 → that one. Weights bias
//! the draw.

use super::{eligible, Candidate};
use crate::sansio::rng::Rng;

/// Picks from `candidates` with `in_flight[i]` requests outstanding at each.
pub fn pick(candidates: &[Candidate], in_flight: &[u32], rng: &mut Rng) -> Option<usize> {
    let pool = eligible(candidates);
    let weight = |i: usize| candidates.get(i).map_or(0, |c| u64::from(c.weight));
    let total: u64 = pool.iter().map(|&i| weight(i)).sum();
    let draw = |rng: &mut Rng, exclude: Option<usize>| -> Option<usize> {
        let total = total - exclude.map_or(0, weight);
        if total == 0 {
            return None;
        }
        let mut r = rng.up_to(total - 1);
        for &i in &pool {
            if Some(i) == exclude {
                continue;
            }
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    };
    let first = draw(rng, None)?;
    let Some(second) = draw(rng, Some(first)) else {
        return Some(first);
    };
    let load = |i: usize| in_flight.get(i).copied().unwrap_or(0);
    Some(if load(second) < load(first) { second } else { first })
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::tests::c;
    use super::*;

    #[test]
    fn zero_one_and_two_members() {
        let mut rng = Rng::new(7);
        assert_eq!(pick(&[], &[], &mut rng), None);
        assert_eq!(pick(&[c("a", 1)], &[9], &mut rng), Some(0));
        // With two, both are always drawn: the less loaded wins every time.
        for _ in 0..50 {
            assert_eq!(pick(&[c("a", 1), c("b", 1)], &[5, 2], &mut rng), Some(1));
        }
    }

    #[test]
    fn load_steers_traffic_away_from_busy_members() {
        let list: Vec<Candidate> = (0..5).map(|i| c(&format!("m{i}"), 1)).collect();
        let mut in_flight = vec![0u32; 5];
        in_flight[0] = 100; // one slow member
        let mut rng = Rng::new(42);
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[pick(&list, &in_flight, &mut rng).unwrap()] += 1;
        }
        // m0 wins only when drawn with... nobody: it is never the lesser load.
        assert_eq!(counts[0], 0, "{counts:?}");
        for n in &counts[1..] {
            assert!((2000..3000).contains(n), "{counts:?}");
        }
    }

    #[test]
    fn equal_load_follows_weights() {
        let list = vec![c("a", 1), c("b", 3), Candidate { unavailable: true, ..c("x", 50) }];
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[pick(&list, &[0, 0, 0], &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        // With equal load the first draw wins, so shares follow weights.
        assert!((2.7..3.3).contains(&ratio), "{counts:?}");
    }
}
