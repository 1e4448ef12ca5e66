//! EDS long polls: with `eds_hold_ms` > 0, an EDS request whose version is
//! already current is held instead of answered 304 at once, and answered
//! as soon as one of its clusters is published again, or with 304 when the
//! hold runs out. Envoy's REST EDS then behaves like a long poll: a short
//! `refresh_delay` costs few requests, and a change reaches Envoy within a
//! tick instead of within `refresh_delay`.
//!
//! One [`EdsHold`] per worker (the requests of that worker's streams). The
//! host checks [`EdsHold::poll_timeout`] on its tick and calls
//! [`EdsHold::take_due`] only when a hold may have ended or any version
//! moved.

use crate::sansio::serve::eds::{current_version, DiscoveryRequest};
use crate::sansio::shared::store::SharedStore;

/// A held EDS request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The host's stream (context) id.
    pub stream: u32,
    pub request: DiscoveryRequest,
    until: u64,
}

#[derive(Debug, Default)]
pub struct EdsHold {
    held: Vec<Held>,
}

impl EdsHold {
    /// Holds `request` of `stream` until `until` at the latest.
    pub fn hold(&mut self, stream: u32, request: DiscoveryRequest, until: u64) {
        self.held.push(Held { stream, request, until });
    }

    /// The stream is gone (answered, reset or timed out): never answer it.
    pub fn release(&mut self, stream: u32) {
        self.held.retain(|h| h.stream != stream);
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The held requests to answer now: their hold ran out, or the version
    /// of their clusters moved (one with no snapshot yet is due as soon as
    /// one appears).
    pub fn take_due(&mut self, store: &dyn SharedStore, now: u64) -> Vec<Held> {
        let (due, waiting) = std::mem::take(&mut self.held).into_iter().partition(|h| {
            now >= h.until
                || current_version(store, &h.request.resource_names).is_some_and(|v| v != h.request.version_info)
        });
        self.held = waiting;
        due
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::sansio::model::member::Member;
    use crate::sansio::model::member_set::MemberSet;
    use crate::sansio::model::update::{Published, Source};
    use crate::sansio::shared::snapshot;
    use crate::sansio::shared::store::{MemoryStore, StoreRules};

    fn publish(store: &mut MemoryStore, name: &str, addr: &str) {
        let members = MemberSet::from_members([Member::new(addr.parse().unwrap(), Default::default())]).0;
        snapshot::publish(store, name, &Published { members, source: Source::Registry }).unwrap();
    }

    fn request(names: &[&str], version: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: version.to_string(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn a_held_request_is_due_when_its_version_moves_or_its_hold_ends() {
        let mut store = MemoryStore::new(StoreRules::Envoy);
        publish(&mut store, "web", "10.0.0.1:80");
        publish(&mut store, "api", "10.0.0.9:80");
        let mut hold = EdsHold::default();
        hold.hold(1, request(&["web"], "1"), 30_000);
        hold.hold(2, request(&["api"], "1"), 500);
        hold.hold(3, request(&["new"], ""), 30_000);
        assert!(hold.take_due(&store, 10).is_empty(), "nothing moved");

        publish(&mut store, "web", "10.0.0.2:80");
        let due: Vec<u32> = hold.take_due(&store, 20).iter().map(|h| h.stream).collect();
        assert_eq!(due, [1], "web moved to version 2");
        let due: Vec<u32> = hold.take_due(&store, 500).iter().map(|h| h.stream).collect();
        assert_eq!(due, [2], "api's hold ran out");
        publish(&mut store, "new", "10.0.0.3:80");
        let due: Vec<u32> = hold.take_due(&store, 600).iter().map(|h| h.stream).collect();
        assert_eq!(due, [3], "a first snapshot of a cluster with none");
        assert!(hold.is_empty());
    }

    #[test]
    fn a_released_stream_is_never_answered() {
        let store = MemoryStore::new(StoreRules::Envoy);
        let mut hold = EdsHold::default();
        hold.hold(7, request(&["web"], ""), 100);
        hold.hold(8, request(&["web"], ""), 100);
        hold.release(7);
        let due: Vec<u32> = hold.take_due(&store, 100).iter().map(|h| h.stream).collect();
        assert_eq!(due, [8]);
    }
}
