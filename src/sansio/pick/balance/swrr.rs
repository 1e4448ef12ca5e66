//! nginx's smooth weighted round robin (ngx_http_upstream_round_robin.c):
//! each pick adds every peer's weight to its current weight, takes the
//! peer with the highest current weight and subtracts the total from it.
//! Weights 5, 1, 1 give a, a, b, a, c, a, a — spread out, not bunched.

use super::Pool;

/// Round-robin state, reset when the member list changes.
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    /// Current weight per pool position.
    current: Vec<i64>,
    /// Next position when all weights are equal.
    next: usize,
}

impl SmoothWrr {
    pub fn new(len: usize) -> Self {
        SmoothWrr { current: vec![0; len], next: 0 }
    }

    /// The candidate index of the next pick, or `None` for an empty pool.
    pub fn pick(&mut self, pool: &Pool) -> Option<usize> {
        if pool.is_empty() {
            return None;
        }
        if pool.equal {
            // With equal weights the smooth sequence is plain rotation in
            // candidate order (a, b, c, a, ...): O(1) per pick.
            let k = self.next % pool.len();
            self.next = (k + 1) % pool.len();
            return pool.indices.get(k).copied();
        }
        if self.current.len() != pool.len() {
            self.current = vec![0; pool.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for (k, (cur, &w)) in self.current.iter_mut().zip(&pool.weights).enumerate() {
            *cur += i64::from(w);
            total += i64::from(w);
            if best.is_none_or(|(_, b)| *cur > b) {
                best = Some((k, *cur));
            }
        }
        let (k, _) = best?;
        if let Some(cur) = self.current.get_mut(k) {
            *cur -= total;
        }
        pool.indices.get(k).copied()
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::tests::c;
    use super::super::Candidate;
    use super::*;

    fn sequence(list: &[Candidate], n: usize) -> String {
        let pool = Pool::new(list);
        let mut rr = SmoothWrr::new(pool.len());
        (0..n).map(|_| rr.pick(&pool).map_or("-".to_string(), |i| list[i].address.to_string())).collect()
    }

    #[test]
    fn same_sequence_as_nginx() {
        // The sequence nginx's source comment documents for weights 5, 1, 1.
        assert_eq!(sequence(&[c("a", 5), c("b", 1), c("c", 1)], 7), "aabacaa");
        assert_eq!(sequence(&[c("a", 5), c("b", 1), c("c", 1)], 14), "aabacaaaabacaa");
        assert_eq!(sequence(&[c("a", 1), c("b", 1)], 4), "abab");
        assert_eq!(sequence(&[c("a", 3), c("b", 2)], 5), "ababa");
    }

    #[test]
    fn drained_down_and_backup_members() {
        let mut list = vec![c("a", 2), c("b", 0), Candidate { backup: true, ..c("z", 1) }];
        assert_eq!(sequence(&list, 4), "aaaa", "weight 0 drains b; the backup waits");
        list[0].unavailable = true;
        assert_eq!(sequence(&list, 3), "zzz");
        list[2].unavailable = true;
        assert_eq!(sequence(&list, 2), "--");
    }

    #[test]
    fn shares_follow_weights_over_a_long_run() {
        let list = [c("a", 1), c("b", 3), c("c", 6)];
        let pool = Pool::new(&list);
        let mut rr = SmoothWrr::new(pool.len());
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[rr.pick(&pool).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300, 600]);
    }

    #[test]
    fn equal_weights_rotate_exactly_like_the_general_algorithm() {
        // Run the general algorithm on weights 2, 2, 2 by hand-rolled
        // current weights, and compare with the O(1) path.
        let list = [c("a", 2), c("b", 2), c("c", 2)];
        let mut current = [0i64; 3];
        let mut general = String::new();
        for _ in 0..9 {
            for cur in &mut current {
                *cur += 2;
            }
            let best = (0..3).fold(0, |b, i| if current[i] > current[b] { i } else { b });
            current[best] -= 6;
            general.push_str(&list[best].address);
        }
        assert_eq!(sequence(&list, 9), general);
        assert_eq!(general, "abcabcabc");
    }
}
