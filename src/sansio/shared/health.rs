//! Passive health as nginx-upsync-module users know it: `max_fails`
//! failures within `fail_timeout` seconds take a member out for
//! `fail_timeout` seconds (`max_fails` 0 never does). Failures come from
//! what the proxy sees on the response path (connection failures, 502,
//! 503, 504) and are kept in shared data, so every worker counts toward
//! the same total and stops sending at the same time.

use crate::sansio::shared::keys::health_key;
use crate::sansio::shared::snapshot;
use crate::sansio::shared::store::{cas_update, CasStep, SharedStore, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MemberHealth {
    address: String,
    /// Failure times (ms) within the current window.
    fails: Vec<u64>,
    /// Out of rotation until this time (ms); 0 when in.
    out_until: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct HealthWire {
    key: String,
    members: Vec<MemberHealth>,
}

/// Whether an upstream response counts as a failure of the member.
pub fn is_failure(status: Option<u16>) -> bool {
    matches!(status, None | Some(502..=504))
}

fn read(store: &dyn SharedStore, key: &str) -> Result<(HealthWire, Option<u32>), StoreError> {
    let (wire, cas) = snapshot::get_keyed(store, key, |w: &HealthWire| &w.key)?;
    Ok((wire.unwrap_or_else(|| HealthWire { key: key.to_string(), members: Vec::new() }), cas))
}

/// Records one failure of `address`. Returns `true` when it takes the
/// member out.
pub fn report_failure(
    store: &mut dyn SharedStore,
    upstream: &str,
    address: &str,
    max_fails: u32,
    fail_timeout_s: u32,
    now: u64,
) -> Result<bool, StoreError> {
    if max_fails == 0 {
        return Ok(false);
    }
    let key = health_key(upstream);
    let window = u64::from(fail_timeout_s) * 1000;
    let mut newly_out = false;
    cas_update(store, &key, &mut |_, entry| {
        newly_out = false;
        let mut wire = snapshot::keyed_value(&entry, &key, |w: &HealthWire| &w.key)
            .unwrap_or_else(|| HealthWire { key: key.clone(), members: Vec::new() });
        // Forget members that are healthy again, so the record stays small.
        wire.members.retain(|m| m.out_until > now || m.fails.iter().any(|&t| t.saturating_add(window) > now));
        let pos = match wire.members.iter().position(|m| m.address == address) {
            Some(p) => p,
            None => {
                wire.members.push(MemberHealth { address: address.to_string(), ..Default::default() });
                wire.members.len() - 1
            }
        };
        let Some(m) = wire.members.get_mut(pos) else {
            return Ok(CasStep::Keep);
        };
        if m.out_until > now {
            // Already out: failures of requests sent before it went out.
            return Ok(CasStep::Keep);
        }
        m.fails.retain(|&t| t.saturating_add(window) > now);
        m.fails.push(now);
        newly_out = m.fails.len() >= max_fails as usize;
        if newly_out {
            m.fails.clear();
            m.out_until = now.saturating_add(window.max(1));
        }
        let bytes = serde_json::to_vec(&wire).map_err(|e| StoreError::Host(e.to_string()))?;
        Ok(CasStep::Write(bytes))
    })?;
    Ok(newly_out)
}

/// The members of `upstream` out of rotation at `now`.
pub fn out_members(store: &dyn SharedStore, upstream: &str, now: u64) -> Vec<String> {
    read(store, &health_key(upstream))
        .map(|(w, _)| w.members.into_iter().filter(|m| m.out_until > now).map(|m| m.address).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    #[test]
    fn max_fails_within_fail_timeout_takes_a_member_out_for_fail_timeout() {
        let mut s = MemoryStore::new(StoreRules::NgxWasm);
        let a = "10.0.0.1:80";
        // max_fails 2, fail_timeout 10 s: two failures 11 s apart do not count together.
        assert_eq!(report_failure(&mut s, "web", a, 2, 10, 0), Ok(false));
        assert_eq!(report_failure(&mut s, "web", a, 2, 10, 11_000), Ok(false));
        assert!(out_members(&s, "web", 11_000).is_empty());
        // A second one within the window: out until 21 s + 10 s.
        assert_eq!(report_failure(&mut s, "web", a, 2, 10, 12_000), Ok(true));
        assert_eq!(out_members(&s, "web", 12_000), [a]);
        assert_eq!(report_failure(&mut s, "web", a, 2, 10, 13_000), Ok(false), "already out");
        assert_eq!(out_members(&s, "web", 21_999), [a]);
        assert!(out_members(&s, "web", 22_000).is_empty(), "back after fail_timeout");
        // Other members and upstreams are independent.
        assert!(out_members(&s, "api", 12_000).is_empty());
    }

    #[test]
    fn max_fails_zero_never_takes_out_and_statuses() {
        let mut s = MemoryStore::new(StoreRules::Envoy);
        for t in 0..10 {
            assert_eq!(report_failure(&mut s, "web", "10.0.0.1:80", 0, 10, t), Ok(false));
        }
        assert!(out_members(&s, "web", 5).is_empty());
        assert!(is_failure(None) && is_failure(Some(502)) && is_failure(Some(504)));
        assert!(!is_failure(Some(500)) && !is_failure(Some(200)) && !is_failure(Some(404)));
    }

    #[test]
    fn workers_add_up_to_one_total() {
        // Two workers each see one failure (the zone is shared): with max_fails 2 that is enough.
        let mut zone = MemoryStore::new(StoreRules::NgxWasm);
        let worker_1_report = report_failure(&mut zone, "web", "10.0.0.1:80", 2, 10, 100);
        let worker_2_report = report_failure(&mut zone, "web", "10.0.0.1:80", 2, 10, 200);
        assert_eq!((worker_1_report, worker_2_report), (Ok(false), Ok(true)));
    }

    #[test]
    fn a_corrupt_failure_time_does_not_overflow() {
        // Shared data another writer garbled: a failure at u64::MAX (found by fuzzing).
        let mut s = MemoryStore::new(StoreRules::NgxWasm);
        let key = health_key("web");
        let record = format!(
            r#"{{"key":"{key}","members":[{{"address":"10.0.0.1:80","fails":[{}],"out_until":0}}]}}"#,
            u64::MAX
        );
        crate::sansio::shared::store::put(&mut s, &key, record.as_bytes()).unwrap();
        assert_eq!(
            report_failure(&mut s, "web", "10.0.0.1:80", 2, 10, 5),
            Ok(true),
            "the garbled time counts as recent"
        );
    }
}
