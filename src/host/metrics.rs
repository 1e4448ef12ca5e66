//! Envoy's own stats for the poller's counters (`define_metric`), so they
//! appear in Envoy's `/stats/prometheus` beside Envoy's. Envoy names them
//! `wasmcustom.<name>`; the shipped configs' `stats_tags` turn the
//! `.<upstream>` suffix into an `upstream` label.

use super::abi;
use crate::sansio::shared::status::SyncStats;
use proxy_wasm::types::MetricType;

/// (name, counter?) in the order of [`values`].
const STATS: [(&str, bool); 8] = [
    ("upsync_syncs_ok_total", true),
    ("upsync_syncs_failed_total", true),
    ("upsync_updates_applied_total", true),
    ("upsync_updates_refused_total", true),
    ("upsync_updates_held_total", true),
    ("upsync_consecutive_failures", false),
    ("upsync_bad_entries", false),
    ("upsync_update_held", false),
];

fn values(s: &SyncStats) -> [u64; 8] {
    [
        s.syncs_ok,
        s.syncs_failed,
        s.updates_applied,
        s.updates_refused,
        s.updates_held,
        u64::from(s.consecutive_failures),
        s.bad_entries,
        u64::from(s.held),
    ]
}

/// One upstream's stats: Envoy ids and the values last reported.
struct Reported {
    ids: [Option<u32>; 8],
    last: [u64; 8],
}

#[derive(Default)]
pub struct EnvoyStats {
    upstreams: Vec<Option<Reported>>,
}

impl EnvoyStats {
    /// Brings `upstream`'s stats up to `stats` (counters by their increase).
    pub fn report(&mut self, upstream: usize, name: &str, stats: &SyncStats) {
        if self.upstreams.len() <= upstream {
            self.upstreams.resize_with(upstream + 1, || None);
        }
        let Some(slot) = self.upstreams.get_mut(upstream) else {
            return;
        };
        let reported = slot.get_or_insert_with(|| Reported { ids: define(name), last: [0; 8] });
        for (((id, last), value), (_, counter)) in
            reported.ids.iter().zip(reported.last.iter_mut()).zip(values(stats)).zip(STATS)
        {
            let Some(id) = *id else {
                continue;
            };
            let result = if counter {
                let delta = i64::try_from(value.saturating_sub(*last)).unwrap_or(i64::MAX);
                if delta == 0 {
                    continue;
                }
                abi::increment_metric(id, delta)
            } else {
                abi::record_metric(id, value)
            };
            match result {
                Ok(()) => *last = value,
                Err(e) => log::debug!("upstream {name}: cannot update an Envoy stat: {e:?}"),
            }
        }
    }
}

fn define(upstream: &str) -> [Option<u32>; 8] {
    STATS.map(|(stat, counter)| {
        let kind = if counter { MetricType::Counter } else { MetricType::Gauge };
        match abi::define_metric(kind, &format!("{stat}.{upstream}")) {
            Ok(id) => Some(id),
            Err(e) => {
                log::warn!("upstream {upstream}: cannot define the Envoy stat {stat}: {e:?}");
                None
            }
        }
    })
}
