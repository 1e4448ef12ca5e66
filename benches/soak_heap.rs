//! benches/soak.py's soak (issue 10) natively: the same kind of updates
//! (10 upstreams x 100 members; a new member put, a member deleted or a
//! weight changed, 10 per etcd transaction, each upstream kept at its
//! starting size, or with `--drift` let wander between half and twice it)
//! reach the poller (`Poller`, Envoy's singleton, etcd v3 with the gRPC
//! watch) as etcd watch messages, with the poller's range calls answered
//! by a scripted etcd, and a counting allocator tells after 1,000 ...
//! 100,000 updates:
//! - natively: the bytes the poller holds (allocated inside its calls and
//!   not freed yet: what it keeps), the most it held, and the largest
//!   transient of one call (what it allocated above what it held before);
//! - built for wasm32-wasip1 (run under Node's WASI, see
//!   benches/soak_heap_wasi.mjs): the module's linear memory itself, with
//!   the module's own allocator (wasi-libc's dlmalloc) as in the plugin
//!   (this harness's own allocations share that heap there).
//!
//! Live bytes that grow with the updates at a steady member count would
//! be something kept per update; a linear memory that grows while they do
//! not is the allocator's high-water mark (wasm memory never shrinks).
//! Shared data is the host's memory: what the poller writes is not counted
//! (what it reads is, as a host copies it into the VM).
//!
//! Usage: `cargo bench --bench soak_heap -- [--updates 100000] [--drift]`,
//! or `make bench-heap` (native and wasm32).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use upsync_wasm::sansio::config::PluginConfig;
use upsync_wasm::sansio::registry::HttpResponse;
use upsync_wasm::sansio::shared::store::{Entry, SharedStore, StoreError};
use upsync_wasm::sansio::sync::poller::{Action, Leadership, Poller};
use upsync_wasm::sansio::util::base64;

/// Who made an allocation: the harness, or the poller (inside its calls).
const HARNESS: usize = 0;
const POLLER: usize = 1;

static LIVE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static PEAK: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static ALLOCATED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

thread_local! {
    static WHO: Cell<usize> = const { Cell::new(HARNESS) };
}

#[cfg(not(target_arch = "wasm32"))]
fn who() -> usize {
    WHO.try_with(Cell::get).unwrap_or(HARNESS)
}

fn load(counter: &[AtomicU64; 2], who: usize) -> u64 {
    counter.get(who).map_or(0, |c| c.load(Relaxed))
}

fn add(who: usize, n: u64) {
    if let (Some(live), Some(peak), Some(total)) = (LIVE.get(who), PEAK.get(who), ALLOCATED.get(who)) {
        let now = live.fetch_add(n, Relaxed).saturating_add(n);
        peak.fetch_max(now, Relaxed);
        total.fetch_add(n, Relaxed);
    }
}

fn sub(who: usize, n: u64) {
    if let Some(live) = LIVE.get(who) {
        live.fetch_sub(n, Relaxed);
    }
}

struct Counting;

/// Natively each allocation carries who made it in front of it, so a
/// free counts against its maker wherever it happens.
#[cfg(not(target_arch = "wasm32"))]
const HEADER: usize = 16;

#[cfg(not(target_arch = "wasm32"))]
fn with_header(layout: Layout) -> Option<(Layout, usize)> {
    let offset = HEADER.max(layout.align());
    let size = layout.size().checked_add(offset)?;
    Layout::from_size_align(size, layout.align().max(HEADER)).ok().map(|l| (l, offset))
}

#[cfg(not(target_arch = "wasm32"))]
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, offset)) = with_header(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size (it holds the header).
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        let maker = who();
        add(maker, layout.size() as u64);
        // SAFETY: `offset` <= the block's size, and the byte before `ptr` is in the header.
        unsafe {
            let ptr = base.add(offset);
            ptr.sub(1).write(maker as u8);
            ptr
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some((outer, offset)) = with_header(layout) else {
            return;
        };
        // SAFETY: `ptr` came from `alloc` above with the same layout.
        let maker = usize::from(unsafe { ptr.sub(1).read() });
        sub(maker, layout.size() as u64);
        // SAFETY: as above: the block starts `offset` before `ptr`.
        unsafe { System.dealloc(ptr.sub(offset), outer) }
    }
}

/// On wasm32 the allocator is the module's own, untouched (a header would
/// change its pattern): every byte counts, the harness's too.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, passed on.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            add(HARNESS, layout.size() as u64);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        sub(HARNESS, layout.size() as u64);
        // SAFETY: the caller's pointer and layout, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// This module's linear memory in bytes (wasm32); `None` natively.
fn linear_memory() -> Option<u64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some((core::arch::wasm32::memory_size(0) as u64) << 16)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

/// The kinds of poller call whose transients are told apart.
const WATCH: usize = 0;
const FLUSH: usize = 1;
const ANSWER: usize = 2;
const OTHER: usize = 3;

/// Per kind: the most one call allocated above what the poller held
/// before it, since the last checkpoint.
static TRANSIENT: [AtomicU64; 4] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Runs `f` as a poller call of `kind`: what it allocates is the poller's.
fn vm<T>(kind: usize, f: impl FnOnce() -> T) -> T {
    // On wasm32 a free in the harness of the poller's bytes would count
    // against the harness: there, every byte is looked at together.
    let counted = if cfg!(target_arch = "wasm32") { HARNESS } else { POLLER };
    let before = load(&LIVE, counted);
    let peak = PEAK.get(counted).map_or(0, |p| p.swap(before, Relaxed));
    let outer = WHO.with(|w| w.replace(POLLER));
    let out = f();
    WHO.with(|w| w.set(outer));
    if let Some(p) = PEAK.get(counted) {
        let transient = p.load(Relaxed).saturating_sub(before);
        if let Some(t) = TRANSIENT.get(kind) {
            t.fetch_max(transient, Relaxed);
        }
        p.fetch_max(peak, Relaxed);
    }
    out
}

/// Runs `f` as the host: shared data is the host's memory, not the VM's.
fn host<T>(f: impl FnOnce() -> T) -> T {
    let outer = WHO.with(|w| w.replace(HARNESS));
    let out = f();
    WHO.with(|w| w.set(outer));
    out
}

/// Shared data with Envoy's rules (a set with no cas, or cas 0, overwrites).
#[derive(Default)]
struct Store {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedStore for Store {
    /// The copy a host hands out is in the VM's memory: counted as the poller's.
    fn get(&self, key: &str) -> Result<Entry, StoreError> {
        Ok(match self.entries.get(key) {
            Some((v, cas)) => Entry { value: Some(v.clone()), cas: Some(*cas) },
            None => Entry { value: None, cas: None },
        })
    }
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
        host(|| {
            let current = self.entries.get(key).map(|(_, c)| *c);
            if let (Some(want), Some(have)) = (cas.filter(|c| *c != 0), current) {
                if want != have {
                    return Err(StoreError::CasMismatch);
                }
            }
            self.next_cas = self.next_cas.wrapping_add(1).max(1);
            let next = self.next_cas;
            match self.entries.get_mut(key) {
                Some(slot) => {
                    slot.0.clear();
                    slot.0.extend_from_slice(value);
                    slot.1 = next;
                }
                None => {
                    self.entries.insert(key.to_string(), (value.to_vec(), next));
                }
            }
            Ok(())
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_field(out: &mut Vec<u8>, field: u64, v: u64) {
    if v != 0 {
        put_varint(out, field << 3);
        put_varint(out, v);
    }
}

/// One etcd WatchResponse: (put?, key, value) events at `revision`, or a creation.
fn watch_response(watch_id: u64, revision: i64, created: bool, events: &[(bool, String, String)]) -> Vec<u8> {
    let rev = u64::try_from(revision).unwrap_or(0);
    let mut out = Vec::new();
    let mut header = Vec::new();
    put_field(&mut header, 1, 14_841_639_068_965_178_418);
    put_field(&mut header, 3, rev);
    put_bytes(&mut out, 1, &header);
    put_field(&mut out, 2, watch_id);
    put_field(&mut out, 3, u64::from(created));
    for (is_put, key, value) in events {
        let mut kv = Vec::new();
        put_bytes(&mut kv, 1, key.as_bytes());
        put_field(&mut kv, 2, rev);
        put_field(&mut kv, 3, rev);
        put_field(&mut kv, 4, 1);
        if *is_put && !value.is_empty() {
            put_bytes(&mut kv, 5, value.as_bytes());
        }
        let mut event = Vec::new();
        put_field(&mut event, 1, u64::from(!*is_put));
        put_bytes(&mut event, 2, &kv);
        put_bytes(&mut out, 11, &event);
    }
    out
}

/// A small seeded generator (xorshift64*), like the bench's random.Random(seed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        usize::try_from(x % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
    }
}

fn member_addr(m: usize) -> String {
    let n = m + 1;
    format!("10.{}.{}.{}:8080", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

fn member_value(weight: usize) -> String {
    format!(r#"{{"weight":{weight},"max_fails":2,"fail_timeout":10,"down":0,"backup":0}}"#)
}

fn prefix_of(upstream: &str) -> String {
    format!("/upstreams/{upstream}/")
}

/// etcd: keys with their mod revisions, and the store revision.
struct Etcd {
    keys: BTreeMap<String, (String, i64)>,
    revision: i64,
}

impl Etcd {
    /// The JSON gateway's range answer (a full read or a probe).
    fn range(&self, body: &[u8]) -> Vec<u8> {
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
            return b"{}".to_vec();
        };
        let key = request.get("key").and_then(|k| k.as_str()).and_then(|k| base64::decode(k).ok());
        let prefix = String::from_utf8(key.unwrap_or_default()).unwrap_or_default();
        let probe = request.get("sort_target").is_some();
        let mut kvs: Vec<(&String, &(String, i64))> =
            self.keys.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).collect();
        let count = kvs.len();
        if probe {
            kvs.sort_by_key(|(_, (_, rev))| std::cmp::Reverse(*rev));
            kvs.truncate(1);
        }
        // Written straight out (no JSON tree): on wasm32 the harness shares the module's heap.
        let mut out = format!(r#"{{"header":{{"cluster_id":"1","revision":"{}"}}"#, self.revision);
        for (n, (k, (v, rev))) in kvs.iter().enumerate() {
            out.push_str(if n == 0 { r#","kvs":["# } else { "," });
            out.push_str(&format!(r#"{{"key":"{}","mod_revision":"{rev}""#, base64::encode(k.as_bytes())));
            if !probe {
                out.push_str(&format!(r#","value":"{}""#, base64::encode(v.as_bytes())));
            }
            out.push('}');
        }
        if !kvs.is_empty() {
            out.push_str(&format!(r#"],"count":"{count}""#));
        }
        out.push('}');
        out.into_bytes()
    }
}

/// benches/soak.py's model of etcd: per upstream {address: weight}; the
/// next fresh member index.
struct Model {
    rng: Rng,
    lo: usize,
    hi: usize,
    state: Vec<BTreeMap<String, usize>>,
    next: usize,
    drift: bool,
    start: usize,
}

impl Model {
    /// `size` updates with distinct keys: (upstream index, put?, address, weight).
    fn batch(&mut self, size: usize) -> Vec<(usize, bool, String, usize)> {
        let mut out: Vec<(usize, bool, String, usize)> = Vec::new();
        while out.len() < size {
            let u = self.rng.below(self.state.len());
            let Some(members) = self.state.get_mut(u) else { continue };
            let mut kind = self.rng.below(3);
            if !self.drift && kind < 2 {
                // Sizes kept: each stays at its start, +-1.
                kind = if members.len() < self.start {
                    0
                } else if members.len() > self.start {
                    1
                } else {
                    kind
                };
            }
            if members.len() <= self.lo {
                kind = 0;
            } else if members.len() >= self.hi {
                kind = 1;
            }
            if kind == 0 {
                let addr = member_addr(self.next);
                self.next += 1;
                let w = self.rng.below(10) + 1;
                members.insert(addr.clone(), w);
                out.push((u, true, addr, w));
                continue;
            }
            let pick = self.rng.below(members.len());
            let Some(addr) = members.keys().nth(pick).cloned() else { continue };
            if out.iter().any(|(v, _, a, _)| *v == u && *a == addr) {
                continue;
            }
            if kind == 1 {
                members.remove(&addr);
                out.push((u, false, addr, 0));
            } else if let Some(w) = members.get_mut(&addr) {
                *w = *w % 10 + 1;
                out.push((u, true, addr, *w));
            }
        }
        out
    }
}

/// Registry calls sent and not answered yet.
type Out = Vec<(usize, u64, Vec<u8>)>;

/// Answers the calls sent before (from etcd as it is now: a call is
/// answered one step after it was sent, so watch messages arrive while
/// it is out, as on a real network), takes the poller's new calls and
/// flushes, as the host does; returns how many calls were answered.
fn settle(p: &mut Poller, etcd: &Etcd, store: &mut Store, out: &mut Out, now: u64) -> usize {
    let answered = out.len();
    for (upstream, id, request) in std::mem::take(out) {
        let body = etcd.range(&request);
        vm(ANSWER, || p.handle_response(now, upstream, id, HttpResponse::new(Some(200), &[], &body)));
    }
    while let Some(action) = vm(OTHER, || p.poll_action()) {
        if let Action::Dispatch(d) = action {
            out.push((d.upstream, d.id, d.request.body));
        }
    }
    vm(FLUSH, || p.flush(store));
    answered
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let updates = arg("--updates", 100_000);
    let upstreams = arg("--upstreams", 10);
    let members = arg("--members", 100);
    let batch = arg("--batch", 10).max(1);
    let drift = std::env::args().any(|a| a == "--drift");
    // Every this many updates a watch message that does not decode: every
    // upstream reads in full (as after a lost watch event); 0: never.
    let resync_every = arg("--resync-every", 0);
    let names: Vec<String> = (0..upstreams).map(|i| format!("s{i:03}")).collect();
    let mut model = Model {
        rng: Rng(arg("--seed", 10) as u64 | 1),
        lo: (members / 2).max(1),
        hi: members * 2,
        state: names.iter().map(|_| (0..members).map(|j| (member_addr(j), 1)).collect()).collect(),
        next: members,
        drift,
        start: members,
    };
    let mut etcd = Etcd { keys: BTreeMap::new(), revision: 1 };
    for (u, ms) in names.iter().zip(&model.state) {
        for (a, w) in ms {
            etcd.keys.insert(format!("{}{a}", prefix_of(u)), (member_value(*w), etcd.revision));
        }
    }
    // benches/soak.py's poller: benches/scalekit.py's fields, a 2 s safety poll.
    let ups: Vec<String> = names
        .iter()
        .map(|n| {
            format!(
                r#"{{"name":"{n}","registry":{{"type":"etcd_v3","target":"etcd","prefix":"{}","grpc_target":"etcd_grpc"}},"interval_ms":2000,"timeout_ms":2000,"backoff_max_ms":30000,"allow_empty":false}}"#,
                prefix_of(n)
            )
        })
        .collect();
    let config = match PluginConfig::parse(format!(r#"{{"upstreams":[{}]}}"#, ups.join(",")).as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("soak_heap: the poller's configuration is refused: {e:?}");
            std::process::exit(2);
        }
    };
    let mut store = Store::default();
    let mut p = vm(OTHER, || Poller::new(&config, Leadership::Singleton, 1));
    let mut now = 0u64;
    let mut out = Out::new();
    vm(OTHER, || p.handle_timeout(&mut store, now));
    settle(&mut p, &etcd, &mut store, &mut out, now);
    settle(&mut p, &etcd, &mut store, &mut out, now);
    for id in 1..=upstreams as u64 {
        let created = watch_response(id, etcd.revision, true, &[]);
        vm(WATCH, || p.handle_watch_message(now, 0, &created));
    }
    settle(&mut p, &etcd, &mut store, &mut out, now);
    settle(&mut p, &etcd, &mut store, &mut out, now);

    let marks: Vec<usize> = [1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 200_000, 400_000, updates]
        .into_iter()
        .filter(|m| *m <= updates)
        .collect();
    let wasm = linear_memory().is_some();
    println!(
        "soak_heap ({}): {updates} updates, {upstreams} upstreams x {members} members ({}), {batch} per transaction",
        if wasm { "wasm32, the module's allocator; every byte" } else { "native; the poller's bytes" },
        if drift { "sizes drift" } else { "sizes kept" },
    );
    println!(
        "{:>8} {:>8} {:>8} {:>12} {:>10} {:>10} {:>34} {:>10} {:>6}",
        "updates",
        "members",
        "largest",
        "linear",
        "live",
        "peak",
        "largest transient: watch/flush/answer",
        "alloc MiB",
        "calls"
    );
    let counted = if wasm { HARNESS } else { POLLER };
    let show = |done: usize, state: &[BTreeMap<String, usize>], calls: usize| -> (u64, u64) {
        let members: usize = state.iter().map(BTreeMap::len).sum();
        let largest = state.iter().map(BTreeMap::len).max().unwrap_or(0);
        let live = load(&LIVE, counted);
        let t: Vec<String> = TRANSIENT.iter().take(3).map(|t| t.swap(0, Relaxed).to_string()).collect();
        let linear = linear_memory().map_or("-".to_string(), |b| b.to_string());
        println!(
            "{done:>8} {members:>8} {largest:>8} {linear:>12} {live:>10} {:>10} {:>34} {:>10.1} {calls:>6}",
            load(&PEAK, counted),
            t.join(" / "),
            load(&ALLOCATED, counted) as f64 / f64::from(1u32 << 20),
        );
        (live, linear_memory().unwrap_or(0))
    };
    let mut calls = 0;
    show(0, &model.state, calls);
    let mut first = None;
    let mut last = (0, 0);
    let mut done = 0;
    while done < updates {
        etcd.revision += 1;
        let rev = etcd.revision;
        let mut by_upstream: BTreeMap<usize, Vec<(bool, String, String)>> = BTreeMap::new();
        for (u, put, addr, w) in model.batch(batch) {
            let Some(name) = names.get(u) else { continue };
            let key = format!("{}{addr}", prefix_of(name));
            let value = if put { member_value(w) } else { String::new() };
            if put {
                etcd.keys.insert(key.clone(), (value.clone(), rev));
            } else {
                etcd.keys.remove(&key);
            }
            by_upstream.entry(u).or_default().push((put, key, value));
        }
        now += 5;
        // etcd sends one message per watch (upstream) the transaction touched.
        for (u, events) in &by_upstream {
            let message = watch_response(*u as u64 + 1, rev, false, events);
            vm(WATCH, || p.handle_watch_message(now, 0, &message));
        }
        if resync_every > 0 && (done + batch) % resync_every == 0 {
            vm(WATCH, || p.handle_watch_message(now, 0, &[0x5a, 0x09, 0x01]));
        }
        if p.poll_timeout().is_some_and(|due| due <= now) {
            vm(OTHER, || p.handle_timeout(&mut store, now));
        }
        calls += settle(&mut p, &etcd, &mut store, &mut out, now);
        done += batch;
        if marks.contains(&done) {
            last = show(done, &model.state, calls);
            if done == 1000 {
                first = Some(last);
            }
        }
    }
    let what = if wasm { "linear memory" } else { "the poller's live bytes" };
    if let Some((live0, linear0)) = first.filter(|_| done > 1000) {
        let (a, b) = if wasm { (linear0, last.1) } else { (live0, last.0) };
        println!(
            "{what} from 1,000 to {done} updates: {a} -> {b} ({:+.1} %)",
            100.0 * (b as f64 / a.max(1) as f64 - 1.0)
        );
    }
}
