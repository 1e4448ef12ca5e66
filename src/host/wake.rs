//! Envoy: the poller wakes the workers holding EDS requests through shared
//! queues, so that a held request is answered the moment a list is
//! published instead of at a worker's next 10 ms tick (which cost ~1 % of
//! a core per worker while requests are held, i.e. always at scale).
//!
//! Each worker's EDS server registers its own queue (a queue has one
//! owner: the last to register a name) and adds the name to a list in
//! shared data; on every publish the poller puts one message in each. A
//! queue whose worker is gone (a reloaded configuration) is never drained:
//! the poller takes the previous message out before putting one in, so
//! such a queue holds one message at most, and the list keeps the newest
//! [`MAX_WAKE_QUEUES`] names.

use super::abi;
use super::store::HostStore;
use crate::sansio::shared::keys::wake_queues_key;
use crate::sansio::shared::names;
use std::collections::HashMap;

/// Names kept in the list: the workers of a 64-core Envoy through a few
/// configuration reloads (a worker whose name fell off is still answered
/// from its tick, within `WOKEN_TICK_MS`).
const MAX_WAKE_QUEUES: usize = 256;

/// Registers this worker's queue (from its root context) and lists it.
pub fn register(identity: u64) -> Option<u32> {
    let name = format!("upsync/wake/{identity:016x}");
    let id = match abi::register_shared_queue(&name) {
        Ok(id) => id,
        Err(e) => {
            log::info!("EDS: no shared queue ({e:?}); held requests are answered from the tick");
            return None;
        }
    };
    let key = wake_queues_key();
    let listed = names::read(&HostStore, &key).ok().flatten().unwrap_or_default();
    let over = (listed.len() + 1).saturating_sub(MAX_WAKE_QUEUES);
    let dropped: Vec<String> = listed.into_iter().take(over).collect();
    if let Err(e) = names::merge(&mut HostStore, &key, std::slice::from_ref(&name), &dropped) {
        log::warn!("EDS: cannot list the wake queue: {e}; held requests are answered from the tick");
        return None;
    }
    Some(id)
}

/// Takes the messages out of queue `id` (what woke it needs no reading).
/// The poller leaves at most one in a queue; the bound only keeps a host
/// that never reports the queue empty from holding the worker here.
pub fn drain(id: u32) {
    for _ in 0..16 {
        if !matches!(abi::dequeue_shared_queue(id), Ok(Some(_))) {
            break;
        }
    }
}

/// The poller's side: the listed queues (re-read only when the list's
/// entry was written since) and those resolved so far, by name.
#[derive(Default)]
pub struct Waker {
    vm_id: Option<String>,
    listed_cas: Option<u32>,
    listed: Vec<String>,
    queues: HashMap<String, u32>,
}

impl Waker {
    /// One message in every listed queue.
    pub fn wake(&mut self) {
        if let Ok(Some(listed)) = names::read_changed(&HostStore, &wake_queues_key(), &mut self.listed_cas) {
            self.queues.retain(|name, _| listed.contains(name));
            self.listed = listed;
        }
        if self.listed.is_empty() {
            return;
        }
        let vm_id = self.vm_id.get_or_insert_with(|| {
            abi::get_property(vec!["plugin_vm_id"])
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default()
        });
        for name in &self.listed {
            let id = match self.queues.get(name) {
                Some(id) => *id,
                None => match abi::resolve_shared_queue(vm_id, name) {
                    Ok(Some(id)) => {
                        self.queues.insert(name.clone(), id);
                        id
                    }
                    Ok(None) | Err(_) => continue,
                },
            };
            // At most one message waits in a queue nobody drains.
            let _ = abi::dequeue_shared_queue(id);
            if abi::enqueue_shared_queue(id, b"1").is_err() {
                self.queues.remove(name);
            }
        }
    }
}
