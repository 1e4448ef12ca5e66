//! Least-request by the power of two choices: pick two distinct eligible
//! members at random, send to the one with fewer requests in flight
//! (ties: the first drawn). 0 eligible → none, 1 → that one. Weights bias
//! the draw.

use super::Pool;
use crate::sansio::util::rng::Rng;

/// Picks from `pool` with `in_flight[i]` requests outstanding at candidate
/// `i`. Draws are weighted, O(log n) each.
pub fn pick(pool: &Pool, in_flight: &[u32], rng: &mut Rng) -> Option<usize> {
    let total = pool.total_weight();
    if total == 0 {
        return None;
    }
    let first = pool.position_of(rng.up_to(total - 1))?;
    let first_w = u64::from(pool.weights.get(first).copied().unwrap_or(0));
    let rest = total - first_w;
    let candidate = |k: usize| pool.indices.get(k).copied();
    if rest == 0 {
        return candidate(first);
    }
    // A draw over everything but `first`: skip its weight range.
    let mut r = rng.up_to(rest - 1);
    let first_start = pool.cumulative.get(first).copied().unwrap_or(0) - first_w;
    if r >= first_start {
        r += first_w;
    }
    let second = pool.position_of(r)?;
    let load = |k: usize| candidate(k).and_then(|i| in_flight.get(i).copied()).unwrap_or(0);
    candidate(if load(second) < load(first) { second } else { first })
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::tests::c;
    use super::super::Candidate;
    use super::*;

    #[test]
    fn zero_one_and_two_members() {
        let mut rng = Rng::new(7);
        assert_eq!(pick(&Pool::new(&[]), &[], &mut rng), None);
        assert_eq!(pick(&Pool::new(&[c("a", 1)]), &[9], &mut rng), Some(0));
        // With two, both are always drawn: the less loaded wins every time.
        let two = Pool::new(&[c("a", 1), c("b", 1)]);
        for _ in 0..50 {
            assert_eq!(pick(&two, &[5, 2], &mut rng), Some(1));
        }
    }

    #[test]
    fn load_steers_traffic_away_from_busy_members() {
        let list: Vec<Candidate> = (0..5).map(|i| c(&format!("m{i}"), 1)).collect();
        let pool = Pool::new(&list);
        let mut in_flight = vec![0u32; 5];
        in_flight[0] = 100; // one slow member
        let mut rng = Rng::new(42);
        let mut counts = [0u32; 5];
        for _ in 0..10_000 {
            counts[pick(&pool, &in_flight, &mut rng).unwrap()] += 1;
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
        let pool = Pool::new(&list);
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..20_000 {
            counts[pick(&pool, &[0, 0, 0], &mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        // With equal load the first draw wins, so shares follow weights.
        assert!((2.7..3.3).contains(&ratio), "{counts:?}");
    }
}
