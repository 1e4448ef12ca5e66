//! nginx's smooth weighted round robin (ngx_http_upstream_round_robin.c):
//! each pick adds every peer's weight to its current weight, takes the
//! peer with the highest current weight and subtracts the total from it.
//! Weights 5, 1, 1 give a, a, b, a, c, a, a — spread out, not bunched.

use super::{eligible, Candidate};

/// Round-robin state: one current weight per candidate, reset when the
/// member list changes.
#[derive(Debug, Clone, Default)]
pub struct SmoothWrr {
    current: Vec<i64>,
}

impl SmoothWrr {
    pub fn new(len: usize) -> Self {
        SmoothWrr { current: vec![0; len] }
    }

    /// The index of the next candidate, or `None` when none is eligible.
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        if self.current.len() != candidates.len() {
            self.current = vec![0; candidates.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in eligible(candidates) {
            let (Some(c), Some(cur)) = (candidates.get(i), self.current.get_mut(i)) else {
                continue;
            };
            let w = i64::from(c.weight);
            *cur += w;
            total += w;
            let better = match best.and_then(|b| self.current.get(b)) {
                None => true,
                Some(&b) => self.current.get(i).is_some_and(|&x| x > b),
            };
            if better {
                best = Some(i);
            }
        }
        let b = best?;
        if let Some(cur) = self.current.get_mut(b) {
            *cur -= total;
        }
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::super::tests::c;
    use super::*;

    fn sequence(list: &[Candidate], n: usize) -> String {
        let mut rr = SmoothWrr::new(list.len());
        (0..n).map(|_| rr.pick(list).map_or("-".to_string(), |i| list[i].address.clone())).collect()
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
        let mut rr = SmoothWrr::new(list.len());
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[rr.pick(&list).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300, 600]);
    }
}
