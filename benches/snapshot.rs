//! Snapshot decode time and the memory a worker holds for one upstream of
//! 10000 members (the snapshot as stored, its decoded view and the picker's
//! state), measured natively. On wasm32 pointers and `usize` are half as
//! wide, so the plugin's linear memory needs at most these numbers.
//!
//! Run: `cargo bench --bench snapshot` (or `make bench`).

// A counting allocator needs `unsafe impl GlobalAlloc`; only this bench has it.
#![allow(unsafe_code)]
// Benchmark code, not plugin code: it may unwrap and index.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use upsync_wasm::sansio::config::PluginConfig;
use upsync_wasm::sansio::model::member::{Member, MemberAttrs};
use upsync_wasm::sansio::model::member_set::MemberSet;
use upsync_wasm::sansio::model::update::{Published, Source};
use upsync_wasm::sansio::pick::picker::UpstreamPicker;
use upsync_wasm::sansio::shared::snapshot::{self, Snapshot};
use upsync_wasm::sansio::shared::store::{MemoryStore, StoreRules};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn members(n: usize) -> MemberSet {
    MemberSet::from_members((0..n).map(|i| Member {
        addr: format!("10.{}.{}.{}:8080", i / 65536 % 256, i / 256 % 256, i % 256).parse().unwrap(),
        attrs: MemberAttrs { weight: 1 + (i % 3) as u32, ..MemberAttrs::default() },
        meta: Default::default(),
    }))
    .0
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    xs[xs.len() / 2]
}

fn main() {
    let config = PluginConfig::parse(
        br#"{"host":"nginx","upstreams":[{"name":"web","registry":{"type":"etcd_v3","target":"127.0.0.1:2379","prefix":"/u/"}}]}"#,
    )
    .unwrap();
    println!("snapshot decode and worker memory (native, release build)");
    println!("{:>8} {:>14} {:>14} {:>16} {:>12}", "members", "stored bytes", "decode ms", "refresh ms", "held KiB");
    for n in [10usize, 1000, 10_000] {
        let set = members(n);
        let bytes = Snapshot { version: 1, source: Source::Registry, members: set.clone() }.encode("k");
        let decode: Vec<f64> = (0..15)
            .map(|_| {
                let t = Instant::now();
                let s = Snapshot::decode("k", &bytes).unwrap();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                assert_eq!(s.members.len(), n);
                ms
            })
            .collect();

        let mut store = MemoryStore::new(StoreRules::NgxWasm);
        let update = Published { members: set, source: Source::Registry };
        snapshot::publish(&mut store, "web", &update).unwrap();
        let before = LIVE.load(Ordering::Relaxed);
        let mut picker = UpstreamPicker::new(&config.upstreams[0], 1);
        let t = Instant::now();
        picker.refresh(&store, 0);
        let refresh_ms = t.elapsed().as_secs_f64() * 1000.0;
        let held = LIVE.load(Ordering::Relaxed) - before;
        assert!(picker.pick(None).is_some());
        println!(
            "{:>8} {:>14} {:>14.3} {:>16.3} {:>12.0}",
            n,
            bytes.len(),
            median(decode),
            refresh_ms,
            held as f64 / 1024.0
        );
        drop(picker);
    }
    println!("held = the picker's view after a refresh (members, candidates, balancer state);");
    println!("the stored snapshot lives in the host's shared memory, not in the plugin's heap.");
}
