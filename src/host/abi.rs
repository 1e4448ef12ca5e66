//! The proxy-wasm ABI 0.2.1 host calls the plugin makes, made directly.
//!
//! proxy-wasm 0.2.5's `hostcalls` panic when a host answers with a status
//! they do not expect (a panic with "unexpected status", and a status the SDK's
//! `Status` enum lacks, such as 6 `InvalidMemoryAccess`, is not even a valid
//! value of its return type), and their header decoders unwrap UTF-8 and
//! index slices. A panic traps the VM: every root context in it dies, and
//! nginx leaves the dead VM's tick timer armed. Here every status code is a
//! value: `Ok(..)`, or a [`Status`] error for any other code, unknown ones
//! included; nothing in this module panics. The audit is
//! `docs/sdk-panics.md`.
//!
//! The functions keep the SDK's names, arguments and success values (e.g.
//! `NotFound` from `get_shared_data` is `Ok((None, None))`), so a call site
//! changes only from `hostcalls::` to `abi::`. Two calls stay the SDK's:
//! [`dispatch_http_call`] and [`open_grpc_stream`] must register their token
//! in the SDK's dispatcher, which routes the answers (and panics on an HTTP
//! call answer it did not register).
//!
//! Buffers the host returns: the host allocates them in the module through
//! the SDK's export `proxy_on_memory_allocate(size)` (a `Box<[u8]>` of
//! exactly `size` bytes from the global allocator) and writes the pointer
//! and size back; [`HostBuffer::adopt`] takes one over as a `Vec` of that
//! length and capacity, freed on drop — exactly what the SDK's own
//! hostcalls do.

// This module is the crate's only unsafe code (lib.rs denies it elsewhere):
// calls of host imports and the adoption of host-allocated buffers. Every
// unsafe block carries its SAFETY argument.
#![allow(unsafe_code)]

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use std::ptr::{null, null_mut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A host call's failure: the status code it returned, any but 0 (`Ok`).
/// The constants carry the ABI spec's names (proxy-wasm-cpp-host's
/// `WasmResult`), spelled like the SDK's `Status` variants so that call
/// sites and patterns read the same; `Debug` shows the name, or the code
/// for one the spec does not define.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Status(u32);

#[allow(non_upper_case_globals, dead_code)] // named like the SDK's variants; not all matched yet
impl Status {
    pub const NotFound: Status = Status(1);
    pub const BadArgument: Status = Status(2);
    pub const SerializationFailure: Status = Status(3);
    pub const ParseFailure: Status = Status(4);
    pub const BadExpression: Status = Status(5);
    pub const InvalidMemoryAccess: Status = Status(6);
    pub const Empty: Status = Status(7);
    pub const CasMismatch: Status = Status(8);
    pub const ResultMismatch: Status = Status(9);
    pub const InternalFailure: Status = Status(10);
    pub const BrokenConnection: Status = Status(11);
    pub const Unimplemented: Status = Status(12);
}

/// The spec's status names, by code.
const STATUS_NAMES: [&str; 13] = [
    "Ok",
    "NotFound",
    "BadArgument",
    "SerializationFailure",
    "ParseFailure",
    "BadExpression",
    "InvalidMemoryAccess",
    "Empty",
    "CasMismatch",
    "ResultMismatch",
    "InternalFailure",
    "BrokenConnection",
    "Unimplemented",
];

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match usize::try_from(self.0).ok().and_then(|i| STATUS_NAMES.get(i)) {
            Some(name) => f.write_str(name),
            None => write!(f, "Status({})", self.0),
        }
    }
}

/// `Ok` for status 0, the error for any other code.
fn check(code: u32) -> Result<(), Status> {
    if code == 0 {
        Ok(())
    } else {
        Err(Status(code))
    }
}

/// The error an SDK hostcall returned (its `Status` has the same codes).
fn from_sdk(status: proxy_wasm::types::Status) -> Status {
    Status(status as u32)
}

/// `NotFound` as "nothing", the SDK's meaning for getters.
fn none_if_not_found<T>(got: Result<Option<T>, Status>) -> Result<Option<T>, Status> {
    match got {
        Err(Status::NotFound) => Ok(None),
        other => other,
    }
}

// The imports, with the names and parameter types proxy-wasm 0.2.5 declares
// (its `#[repr(u32)]` enums as `u32`, its `Status` return as the raw `u32`),
// so the module's import section stays what it was.
#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_map_data: *mut *mut u8, return_map_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_grpc_send(token: u32, message_ptr: *const u8, message_len: usize, end_stream: bool) -> u32;
    fn proxy_grpc_stream(
        upstream_data: *const u8,
        upstream_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        return_stream_id: *mut u32,
    ) -> u32;
    fn proxy_grpc_cancel(token: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_register_shared_queue(name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_resolve_shared_queue(
        vm_id_data: *const u8,
        vm_id_size: usize,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(queue_id: u32, return_value_data: *mut *mut u8, return_value_size: *mut usize)
        -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
}

/// The out-parameters of a host call that returns a buffer the host
/// allocated (through the SDK's `proxy_on_memory_allocate`).
struct HostBuffer {
    data: *mut u8,
    size: usize,
}

impl HostBuffer {
    fn new() -> Self {
        HostBuffer { data: null_mut(), size: 0 }
    }

    /// The buffer, if the call returned `code` 0 (`Ok`); `None` for a null
    /// pointer.
    ///
    /// # Safety
    /// `&mut self.data` and `&mut self.size` were the data and size
    /// out-parameters of the proxy-wasm host call that returned `code`.
    unsafe fn adopt(self, code: u32) -> Result<Option<Vec<u8>>, Status> {
        check(code)?;
        if self.data.is_null() {
            return Ok(None);
        }
        // SAFETY: the call succeeded, so per the ABI the host wrote `data`,
        // a buffer it got from the module's proxy_on_memory_allocate(size)
        // (the SDK's: a `Box<[u8]>` of exactly `size` bytes from the global
        // allocator, layout size x align 1), filled it, wrote `size`, and
        // handed it over: nobody else owns or frees it. A Vec of length and
        // capacity `size` has that layout and frees it on drop; for size 0
        // the pointer is the box's dangling one and nothing is freed, as for
        // the box. The SDK's hostcalls adopt buffers exactly so. (On an error
        // status nothing is adopted: the out-parameters may be half-written;
        // a buffer the host allocated before failing leaks, as in the SDK.)
        Ok(Some(unsafe { Vec::from_raw_parts(self.data, self.size, self.size) }))
    }
}

/// `(pointer, length)` of an optional byte slice; null/0 for `None`, as the SDK passes it.
fn raw(bytes: Option<&[u8]>) -> (*const u8, usize) {
    bytes.map_or((null(), 0), |b| (b.as_ptr(), b.len()))
}

/// Bytes a client or a registry sent as a header, as text: lossy, since
/// they may send any byte (the SDK unwraps `String::from_utf8` and panics).
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A header map in the ABI's encoding: count, then (key length, value
/// length) pairs, then each key and value followed by a NUL byte; all
/// numbers u32 little-endian. `None` if a length does not fit in u32
/// (impossible on wasm32, where usize is u32).
fn encode_pairs(pairs: &[(&str, &str)]) -> Option<Vec<u8>> {
    let word = |n: usize| u32::try_from(n).ok().map(u32::to_le_bytes);
    let mut out = Vec::new();
    out.extend_from_slice(&word(pairs.len())?);
    for (k, v) in pairs {
        out.extend_from_slice(&word(k.len())?);
        out.extend_from_slice(&word(v.len())?);
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    Some(out)
}

/// The inverse of [`encode_pairs`], checking every bound; text is decoded
/// lossily ([`text`]). Bytes that are not such a map give the entries up to
/// the first one that does not fit (hosts send well-formed maps; this only
/// keeps a malformed one from being a panic).
fn decode_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    let mut map = Vec::new();
    let Some((count, rest)) = bytes.split_first_chunk::<4>() else {
        return map;
    };
    let count = u32::from_le_bytes(*count) as usize;
    let Some((lengths, mut strings)) = count.checked_mul(8).and_then(|n| rest.split_at_checked(n)) else {
        return map;
    };
    // One string of `len` bytes and its NUL, off the front of `strings`.
    let mut next = |len: &[u8]| -> Option<String> {
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let (s, tail) = strings.split_at_checked(len)?;
        strings = tail.get(1..)?;
        Some(text(s.to_vec()))
    };
    for entry in lengths.chunks_exact(8) {
        let (key, value) = entry.split_at(4);
        let (Some(key), Some(value)) = (next(key), next(value)) else {
            break;
        };
        map.push((key, value));
    }
    map
}

/// A property path in the ABI's encoding: its parts joined by NUL bytes.
fn encode_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

pub fn log(level: LogLevel, message: &str) -> Result<(), Status> {
    // SAFETY: the message pointer and length describe a live &str the host
    // only reads during the call.
    check(unsafe { proxy_log(level as u32, message.as_ptr(), message.len()) })
}

pub fn get_current_time() -> Result<SystemTime, Status> {
    let mut nanos: u64 = 0;
    // SAFETY: the out-pointer is a live local u64 the host writes during the call.
    check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) })?;
    UNIX_EPOCH.checked_add(Duration::from_nanos(nanos)).ok_or(Status::InternalFailure)
}

/// The period in whole milliseconds (saturated at u32::MAX, about 49 days).
pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

pub fn get_buffer(buffer_type: BufferType, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, Status> {
    let mut out = HostBuffer::new();
    // SAFETY: the out-parameters are `out`'s live fields, adopted with the
    // call's status; no other pointers.
    none_if_not_found(unsafe {
        let code = proxy_get_buffer_bytes(buffer_type as u32, start, max_size, &mut out.data, &mut out.size);
        out.adopt(code)
    })
}

/// A whole header map; an empty one when the host returns no buffer.
pub fn get_map(map_type: MapType) -> Result<Vec<(String, String)>, Status> {
    let mut out = HostBuffer::new();
    // SAFETY: the out-parameters are `out`'s live fields, adopted with the
    // call's status; no other pointers.
    let bytes = unsafe {
        let code = proxy_get_header_map_pairs(map_type as u32, &mut out.data, &mut out.size);
        out.adopt(code)
    }?;
    Ok(bytes.as_deref().map(decode_pairs).unwrap_or_default())
}

/// One header ([`text`]); `Ok(None)` when absent, `Some("")` when the host
/// returns no buffer.
pub fn get_map_value(map_type: MapType, key: &str) -> Result<Option<String>, Status> {
    let mut out = HostBuffer::new();
    // SAFETY: the key pointer and length describe a live &str the host only
    // reads; the out-parameters are `out`'s live fields, adopted with the
    // call's status.
    let got = unsafe {
        let code = proxy_get_header_map_value(map_type as u32, key.as_ptr(), key.len(), &mut out.data, &mut out.size);
        out.adopt(code)
    };
    none_if_not_found(got.map(|bytes| Some(text(bytes.unwrap_or_default()))))
}

/// Replaces header `key` with `value`, or removes it for `None`.
pub fn set_map_value(map_type: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
    let code = match value {
        // SAFETY: key and value pointers and lengths describe live &strs the
        // host only reads during the call.
        Some(v) => unsafe {
            proxy_replace_header_map_value(map_type as u32, key.as_ptr(), key.len(), v.as_ptr(), v.len())
        },
        // SAFETY: as above, for the key.
        None => unsafe { proxy_remove_header_map_value(map_type as u32, key.as_ptr(), key.len()) },
    };
    check(code)
}

/// Registers queue `name` in this VM's vm_id; its `on_queue_ready` goes to
/// the calling root context, on its thread.
pub fn register_shared_queue(name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: the name pointer and length describe a live &str the host only
    // reads; `id` is a live u32 the host writes.
    check(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// The queue `name` of `vm_id`; `Ok(None)` when nobody registered it.
pub fn resolve_shared_queue(vm_id: &str, name: &str) -> Result<Option<u32>, Status> {
    let mut id = 0u32;
    // SAFETY: as above, for both strings.
    let code = unsafe { proxy_resolve_shared_queue(vm_id.as_ptr(), vm_id.len(), name.as_ptr(), name.len(), &mut id) };
    none_if_not_found(check(code).map(|()| Some(id)))
}

pub fn enqueue_shared_queue(queue_id: u32, value: &[u8]) -> Result<(), Status> {
    // SAFETY: the value pointer and length describe a live slice the host only reads.
    check(unsafe { proxy_enqueue_shared_queue(queue_id, value.as_ptr(), value.len()) })
}

/// The next message of queue `queue_id`; `Ok(None)` when it is empty.
pub fn dequeue_shared_queue(queue_id: u32) -> Result<Option<Vec<u8>>, Status> {
    let mut out = HostBuffer::new();
    // SAFETY: the out-parameters are `out`'s live fields, adopted with the call's status.
    let got = unsafe {
        let code = proxy_dequeue_shared_queue(queue_id, &mut out.data, &mut out.size);
        out.adopt(code)
    };
    match got {
        Err(Status::Empty) => Ok(None),
        Ok(None) => Ok(Some(Vec::new())),
        other => other,
    }
}

pub fn get_property(path: Vec<&str>) -> Result<Option<Vec<u8>>, Status> {
    let path = encode_path(&path);
    let mut out = HostBuffer::new();
    // SAFETY: the path pointer and length describe a live Vec the host only
    // reads; the out-parameters are `out`'s live fields, adopted with the
    // call's status.
    none_if_not_found(unsafe {
        let code = proxy_get_property(path.as_ptr(), path.len(), &mut out.data, &mut out.size);
        out.adopt(code)
    })
}

pub fn set_property(path: Vec<&str>, value: Option<&[u8]>) -> Result<(), Status> {
    let path = encode_path(&path);
    let (value, value_len) = raw(value);
    // SAFETY: path and value pointers and lengths describe a live Vec and a
    // live slice (or null/0) the host only reads during the call.
    check(unsafe { proxy_set_property(path.as_ptr(), path.len(), value, value_len) })
}

/// The value and its CAS token (`None` for 0); `(None, None)` when the key is absent.
pub fn get_shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut out = HostBuffer::new();
    let mut cas: u32 = 0;
    // SAFETY: the key pointer and length describe a live &str the host only
    // reads; `cas` is a live local it writes; the value out-parameters are
    // `out`'s live fields, adopted with the call's status.
    let got = unsafe {
        let code = proxy_get_shared_data(key.as_ptr(), key.len(), &mut out.data, &mut out.size, &mut cas);
        out.adopt(code)
    };
    match got {
        Ok(value) => Ok((value, (cas != 0).then_some(cas))),
        Err(Status::NotFound) => Ok((None, None)),
        Err(e) => Err(e),
    }
}

pub fn set_shared_data(key: &str, value: Option<&[u8]>, cas: Option<u32>) -> Result<(), Status> {
    let (value, value_len) = raw(value);
    // SAFETY: key and value pointers and lengths describe a live &str and a
    // live slice (or null/0) the host only reads during the call.
    check(unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value, value_len, cas.unwrap_or(0)) })
}

pub fn send_http_response(status_code: u32, headers: Vec<(&str, &str)>, body: Option<&[u8]>) -> Result<(), Status> {
    let headers = encode_pairs(&headers).ok_or(Status::BadArgument)?;
    let (body, body_len) = raw(body);
    // SAFETY: body and header pointers and lengths describe a live slice
    // (or null/0) and a live Vec the host only reads during the call; the
    // details are null/0 as the SDK passes them, -1 means no gRPC status.
    check(unsafe {
        proxy_send_local_response(status_code, null(), 0, body, body_len, headers.as_ptr(), headers.len(), -1)
    })
}

/// The SDK's call: its dispatcher must register the token to route the
/// answer to `on_http_call_response` (it panics on an answer it did not
/// register). It panics itself on a status other than Ok, BadArgument and
/// InternalFailure, which neither Envoy nor ngx_wasm_module returns for
/// valid arguments (docs/sdk-panics.md). The timeout saturates at u32::MAX
/// milliseconds instead of the SDK's truncation (which can make it 0, "no
/// timeout").
pub fn dispatch_http_call(
    upstream: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    trailers: Vec<(&str, &str)>,
    timeout: Duration,
) -> Result<u32, Status> {
    let timeout = timeout.min(Duration::from_millis(u64::from(u32::MAX)));
    hostcalls::dispatch_http_call(upstream, headers, body, trailers, timeout).map_err(from_sdk)
}

/// The SDK's call, for the same reason as [`dispatch_http_call`]: only
/// streams its dispatcher registered reach `on_grpc_stream_*`. It panics on
/// a status other than Ok, ParseFailure and InternalFailure, and Envoy
/// returns BadArgument when it cannot create the gRPC client for the
/// cluster (docs/sdk-panics.md). So the target is first tried with the raw
/// call: a stream that opens is canceled at once (the SDK's dispatcher does
/// not know its token and ignores its close), one that cannot is an error
/// here, and only a target that opens is handed to the SDK.
pub fn open_grpc_stream(
    cluster_name: &str,
    service_name: &str,
    method_name: &str,
    initial_metadata: Vec<(&str, &[u8])>,
) -> Result<u32, Status> {
    let mut token = 0u32;
    // An empty header map: its pair count, 0, as a little-endian u32.
    let no_metadata = [0u8; 4];
    // SAFETY: every pointer/length pair describes a live slice the host only
    // reads during the call; `token` is a live u32 the host writes.
    let opened = check(unsafe {
        proxy_grpc_stream(
            cluster_name.as_ptr(),
            cluster_name.len(),
            service_name.as_ptr(),
            service_name.len(),
            method_name.as_ptr(),
            method_name.len(),
            no_metadata.as_ptr(),
            no_metadata.len(),
            &mut token,
        )
    });
    opened?;
    // SAFETY: no pointers.
    let _ = check(unsafe { proxy_grpc_cancel(token) });
    hostcalls::open_grpc_stream(cluster_name, service_name, method_name, initial_metadata).map_err(from_sdk)
}

pub fn send_grpc_stream_message(token: u32, message: Option<&[u8]>, end_stream: bool) -> Result<(), Status> {
    let (message, message_len) = raw(message);
    // SAFETY: the message pointer and length describe a live slice (or
    // null/0) the host only reads during the call.
    check(unsafe { proxy_grpc_send(token, message, message_len, end_stream) })
}

pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

pub fn call_foreign_function(function_name: &str, arguments: Option<&[u8]>) -> Result<Option<Vec<u8>>, Status> {
    let (args, args_len) = raw(arguments);
    let mut out = HostBuffer::new();
    // SAFETY: name and argument pointers and lengths describe a live &str and
    // a live slice (or null/0) the host only reads; the result
    // out-parameters are `out`'s live fields, adopted with the call's status.
    unsafe {
        let name = function_name;
        let code = proxy_call_foreign_function(name.as_ptr(), name.len(), args, args_len, &mut out.data, &mut out.size);
        out.adopt(code)
    }
}

/// Defines a counter, gauge or histogram named `name`; returns its id.
#[allow(dead_code)] // for the metrics of issue 11, not called yet
pub fn define_metric(metric_type: MetricType, name: &str) -> Result<u32, Status> {
    let mut id: u32 = 0;
    // SAFETY: the name pointer and length describe a live &str the host only
    // reads; `id` is a live local the host writes during the call.
    check(unsafe { proxy_define_metric(metric_type as u32, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

/// Adds `offset` to a counter (Envoy: only > 0) or a gauge.
#[allow(dead_code)] // for the metrics of issue 11, not called yet
pub fn increment_metric(metric_id: u32, offset: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(metric_id, offset) })
}

/// Sets a gauge, records a histogram sample, or adds to a counter.
#[allow(dead_code)] // for the metrics of issue 11, not called yet
pub fn record_metric(metric_id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_record_metric(metric_id, value) })
}

#[allow(dead_code)] // for the metrics of issue 11, not called yet
pub fn get_metric(metric_id: u32) -> Result<u64, Status> {
    let mut value: u64 = 0;
    // SAFETY: `value` is a live local the host writes during the call.
    check(unsafe { proxy_get_metric(metric_id, &mut value) })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The SDK's own test vector (proxy-wasm 0.2.5, hostcalls::utils::tests).
    const MAP: &[(&str, &str)] =
        &[(":method", "GET"), (":path", "/bytes/1"), (":authority", "httpbin.org"), ("Powered-By", "proxy-wasm")];
    #[rustfmt::skip]
    const SERIALIZED_MAP: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        58, 109, 101, 116, 104, 111, 100, 0,
        71, 69, 84, 0,
        58, 112, 97, 116, 104, 0,
        47, 98, 121, 116, 101, 115, 47, 49, 0,
        58, 97, 117, 116, 104, 111, 114, 105, 116, 121, 0,
        104, 116, 116, 112, 98, 105, 110, 46, 111, 114, 103, 0,
        80, 111, 119, 101, 114, 101, 100, 45, 66, 121, 0,
        112, 114, 111, 120, 121, 45, 119, 97, 115, 109, 0,
    ];

    fn owned(map: &[(&str, &str)]) -> Vec<(String, String)> {
        map.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn pairs_encode_and_decode_as_the_sdk_does() {
        assert_eq!(encode_pairs(MAP).unwrap(), SERIALIZED_MAP);
        assert_eq!(decode_pairs(SERIALIZED_MAP), owned(MAP));
        assert_eq!(encode_pairs(&[]).unwrap(), [0, 0, 0, 0]);
        assert_eq!(decode_pairs(&[]), vec![]);
        assert_eq!(decode_pairs(&[0, 0, 0, 0]), vec![]);
    }

    #[test]
    fn a_truncated_map_gives_its_whole_entries_not_a_panic() {
        // Where each entry's value (and its NUL) ends.
        let mut ends = Vec::new();
        let mut end = 4 + 8 * MAP.len();
        for (k, v) in MAP {
            end += k.len() + v.len() + 2;
            ends.push(end);
        }
        assert_eq!(end, SERIALIZED_MAP.len());
        for cut in 0..=SERIALIZED_MAP.len() {
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(decode_pairs(&SERIALIZED_MAP[..cut]), owned(&MAP[..whole]), "{cut} bytes");
        }
    }

    #[test]
    fn lengths_past_the_end_give_nothing() {
        // A count whose length table does not fit, and a value length past the end.
        assert_eq!(decode_pairs(&[0xff, 0xff, 0xff, 0xff]), vec![]);
        assert_eq!(decode_pairs(&[1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, b'k', 0]), vec![]);
    }

    #[test]
    fn bytes_that_are_not_utf8_decode_lossily() {
        // The SDK unwraps String::from_utf8 here and panics on these.
        let map = [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'k', 0, 0xff, b'v', 0];
        assert_eq!(decode_pairs(&map), owned(&[("k", "\u{fffd}v")]));
    }

    #[test]
    fn every_status_code_is_a_value() {
        assert_eq!(check(0), Ok(()));
        assert_eq!(check(1), Err(Status::NotFound));
        assert_eq!(check(8), Err(Status::CasMismatch));
        assert_eq!(check(u32::MAX), Err(Status(u32::MAX)));
        // The SDK's Status has no 6, 12 or 13: here they are values too, named where the spec names them.
        let shown: Vec<String> = [1, 6, 8, 12, 13].into_iter().map(|c| format!("{:?}", Status(c))).collect();
        assert_eq!(shown, ["NotFound", "InvalidMemoryAccess", "CasMismatch", "Unimplemented", "Status(13)"]);
        assert_eq!(from_sdk(proxy_wasm::types::Status::BadArgument), Status::BadArgument);
        assert_eq!(from_sdk(proxy_wasm::types::Status::ParseFailure), Status::ParseFailure);
        assert_eq!(from_sdk(proxy_wasm::types::Status::InternalFailure), Status::InternalFailure);
    }

    #[test]
    fn paths_join_with_nul_as_the_sdk_does() {
        assert_eq!(encode_path(&["plugin_root_id"]), b"plugin_root_id");
        assert_eq!(encode_path(&["source", "address"]), b"source\0address");
        assert_eq!(encode_path(&[]), b"");
    }
}
