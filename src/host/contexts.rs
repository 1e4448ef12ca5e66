//! The plugin's context traits, and the two adapters that hand contexts
//! implementing them to the SDK's dispatcher.
//!
//! The plugin's contexts do not implement proxy-wasm's traits themselves:
//! - those traits carry 92 helpers (`get_http_request_header`,
//!   `send_http_response`, ...) that unwrap host calls and panic on any error
//!   (docs/sdk-panics.md); a context implementing them could call one, and no
//!   lint would see it. These traits have the callbacks only, so host calls
//!   can only go through [`super::abi`].
//! - every type implementing them puts all those helpers in its vtable, so
//!   the module kept them (and the SDK hostcalls behind them). Now two
//!   adapter types implement them, with every helper overridden to do
//!   nothing (nothing can call them).
//!
//! Callback names and signatures are the SDK's, so an `impl` moves here by
//! changing its `use`. A callback the SDK dispatches that is not listed
//! here keeps the SDK's default (continue, do nothing); to implement one,
//! add it to the trait and forward it in the adapter.

use proxy_wasm::traits as sdk;
use proxy_wasm::types::{Action, Bytes, ContextType, GrpcStatusCode, Status};
use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Context {
    fn on_http_call_response(&mut self, _token_id: u32, _num_headers: usize, _body_size: usize, _num_trailers: usize) {}

    fn on_grpc_stream_message(&mut self, _token_id: u32, _message_size: usize) {}

    fn on_grpc_stream_close(&mut self, _token_id: u32, _status_code: u32) {}

    fn on_done(&mut self) -> bool {
        true
    }
}

/// A root context. Its streams are HTTP contexts (the adapter tells the
/// SDK so: the SDK panics on a root without a context type).
pub trait RootContext: Context {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        true
    }

    fn on_tick(&mut self) {}

    fn on_queue_ready(&mut self, _queue_id: u32) {}

    /// `None` gets a stream that lets everything through (the SDK panics on `None`).
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        None
    }
}

pub trait HttpContext: Context {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}

// Every helper of the SDK's traits (the methods that call the host and
// unwrap: docs/sdk-panics.md), overridden in the adapters to do nothing.
// Nothing calls them: the SDK's dispatcher calls only callbacks, and the
// adapters are private to this module. Without these, each adapter's vtable
// would keep the SDK's bodies, and the SDK hostcalls behind them, in the
// module. Generated from proxy-wasm 0.2.5's traits.rs: a helper a later SDK
// adds only comes back as size, never as a call.

/// `Context`'s 35 helpers, doing nothing.
macro_rules! context_helpers {
    () => {
        fn get_current_time(&self) -> SystemTime {
            UNIX_EPOCH
        }
        fn get_property(&self, _path: Vec<&str>) -> Option<Bytes> {
            None
        }
        fn set_property(&self, _path: Vec<&str>, _value: Option<&[u8]>) {}
        fn get_shared_data(&self, _key: &str) -> (Option<Bytes>, Option<u32>) {
            (None, None)
        }
        fn set_shared_data(&self, _key: &str, _value: Option<&[u8]>, _cas: Option<u32>) -> Result<(), Status> {
            Err(Status::InternalFailure)
        }
        fn remove_shared_data(&self, _key: &str, _cas: Option<u32>) -> Result<(), Status> {
            Err(Status::InternalFailure)
        }
        fn register_shared_queue(&self, _name: &str) -> u32 {
            0
        }
        fn resolve_shared_queue(&self, _vm_id: &str, _name: &str) -> Option<u32> {
            None
        }
        fn dequeue_shared_queue(&self, _queue_id: u32) -> Result<Option<Bytes>, Status> {
            Err(Status::InternalFailure)
        }
        fn enqueue_shared_queue(&self, _queue_id: u32, _value: Option<&[u8]>) -> Result<(), Status> {
            Err(Status::InternalFailure)
        }
        fn dispatch_http_call(
            &self,
            _upstream: &str,
            _headers: Vec<(&str, &str)>,
            _body: Option<&[u8]>,
            _trailers: Vec<(&str, &str)>,
            _timeout: Duration,
        ) -> Result<u32, Status> {
            Err(Status::InternalFailure)
        }
        fn get_http_call_response_headers(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn get_http_call_response_headers_bytes(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn get_http_call_response_header(&self, _name: &str) -> Option<String> {
            None
        }
        fn get_http_call_response_header_bytes(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn get_http_call_response_body(&self, _start: usize, _max_size: usize) -> Option<Bytes> {
            None
        }
        fn get_http_call_response_trailers(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn get_http_call_response_trailers_bytes(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn get_http_call_response_trailer(&self, _name: &str) -> Option<String> {
            None
        }
        fn get_http_call_response_trailer_bytes(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn dispatch_grpc_call(
            &self,
            _upstream_name: &str,
            _service_name: &str,
            _method_name: &str,
            _initial_metadata: Vec<(&str, &[u8])>,
            _message: Option<&[u8]>,
            _timeout: Duration,
        ) -> Result<u32, Status> {
            Err(Status::InternalFailure)
        }
        fn get_grpc_call_response_body(&self, _start: usize, _max_size: usize) -> Option<Bytes> {
            None
        }
        fn cancel_grpc_call(&self, _token_id: u32) {}
        fn open_grpc_stream(
            &self,
            _cluster_name: &str,
            _service_name: &str,
            _method_name: &str,
            _initial_metadata: Vec<(&str, &[u8])>,
        ) -> Result<u32, Status> {
            Err(Status::InternalFailure)
        }
        fn get_grpc_stream_initial_metadata(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn get_grpc_stream_initial_metadata_value(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn send_grpc_stream_message(&self, _token_id: u32, _message: Option<&[u8]>, _end_stream: bool) {}
        fn get_grpc_stream_message(&mut self, _start: usize, _max_size: usize) -> Option<Bytes> {
            None
        }
        fn get_grpc_stream_trailing_metadata(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn get_grpc_stream_trailing_metadata_value(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn cancel_grpc_stream(&self, _token_id: u32) {}
        fn close_grpc_stream(&self, _token_id: u32) {}
        fn get_grpc_status(&self) -> (u32, Option<String>) {
            (0, None)
        }
        fn call_foreign_function(
            &self,
            _function_name: &str,
            _arguments: Option<&[u8]>,
        ) -> Result<Option<Bytes>, Status> {
            Err(Status::InternalFailure)
        }
        fn done(&self) {}
    };
}

/// `RootContext`'s 3 helpers, doing nothing.
macro_rules! root_helpers {
    () => {
        fn get_vm_configuration(&self) -> Option<Bytes> {
            None
        }
        fn get_plugin_configuration(&self) -> Option<Bytes> {
            None
        }
        fn set_tick_period(&self, _period: Duration) {}
    };
}

/// `HttpContext`'s 54 helpers, doing nothing.
macro_rules! http_helpers {
    () => {
        fn get_http_request_headers(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn get_http_request_headers_bytes(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn set_http_request_headers(&self, _headers: Vec<(&str, &str)>) {}
        fn set_http_request_headers_bytes(&self, _headers: Vec<(&str, &[u8])>) {}
        fn get_http_request_header(&self, _name: &str) -> Option<String> {
            None
        }
        fn get_http_request_header_bytes(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn set_http_request_header(&self, _name: &str, _value: Option<&str>) {}
        fn set_http_request_header_bytes(&self, _name: &str, _value: Option<&[u8]>) {}
        fn add_http_request_header(&self, _name: &str, _value: &str) {}
        fn add_http_request_header_bytes(&self, _name: &str, _value: &[u8]) {}
        fn remove_http_request_header(&self, _name: &str) {}
        fn get_http_request_body(&self, _start: usize, _max_size: usize) -> Option<Bytes> {
            None
        }
        fn set_http_request_body(&self, _start: usize, _size: usize, _value: &[u8]) {}
        fn get_http_request_trailers(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn get_http_request_trailers_bytes(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn set_http_request_trailers(&self, _trailers: Vec<(&str, &str)>) {}
        fn set_http_request_trailers_bytes(&self, _trailers: Vec<(&str, &[u8])>) {}
        fn get_http_request_trailer(&self, _name: &str) -> Option<String> {
            None
        }
        fn get_http_request_trailer_bytes(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn set_http_request_trailer(&self, _name: &str, _value: Option<&str>) {}
        fn set_http_request_trailer_bytes(&self, _name: &str, _value: Option<&[u8]>) {}
        fn add_http_request_trailer(&self, _name: &str, _value: &str) {}
        fn add_http_request_trailer_bytes(&self, _name: &str, _value: &[u8]) {}
        fn remove_http_request_trailer(&self, _name: &str) {}
        fn resume_http_request(&self) {}
        fn reset_http_request(&self) {}
        fn get_http_response_headers(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn get_http_response_headers_bytes(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn set_http_response_headers(&self, _headers: Vec<(&str, &str)>) {}
        fn set_http_response_headers_bytes(&self, _headers: Vec<(&str, &[u8])>) {}
        fn get_http_response_header(&self, _name: &str) -> Option<String> {
            None
        }
        fn get_http_response_header_bytes(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn set_http_response_header(&self, _name: &str, _value: Option<&str>) {}
        fn set_http_response_header_bytes(&self, _name: &str, _value: Option<&[u8]>) {}
        fn add_http_response_header(&self, _name: &str, _value: &str) {}
        fn add_http_response_header_bytes(&self, _name: &str, _value: &[u8]) {}
        fn remove_http_response_header(&self, _name: &str) {}
        fn get_http_response_body(&self, _start: usize, _max_size: usize) -> Option<Bytes> {
            None
        }
        fn set_http_response_body(&self, _start: usize, _size: usize, _value: &[u8]) {}
        fn get_http_response_trailers(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        fn get_http_response_trailers_bytes(&self) -> Vec<(String, Bytes)> {
            Vec::new()
        }
        fn set_http_response_trailers(&self, _trailers: Vec<(&str, &str)>) {}
        fn set_http_response_trailers_bytes(&self, _trailers: Vec<(&str, &[u8])>) {}
        fn get_http_response_trailer(&self, _name: &str) -> Option<String> {
            None
        }
        fn get_http_response_trailer_bytes(&self, _name: &str) -> Option<Bytes> {
            None
        }
        fn set_http_response_trailer(&self, _name: &str, _value: Option<&str>) {}
        fn set_http_response_trailer_bytes(&self, _name: &str, _value: Option<&[u8]>) {}
        fn add_http_response_trailer(&self, _name: &str, _value: &str) {}
        fn add_http_response_trailer_bytes(&self, _name: &str, _value: &[u8]) {}
        fn remove_http_response_trailer(&self, _name: &str) {}
        fn resume_http_response(&self) {}
        fn reset_http_response(&self) {}
        fn send_http_response(&self, _status_code: u32, _headers: Vec<(&str, &str)>, _body: Option<&[u8]>) {}
        fn send_grpc_response(
            &self,
            _grpc_status: GrpcStatusCode,
            _grpc_status_message: Option<&str>,
            _custom_metadata: Vec<(&str, &[u8])>,
        ) {
        }
    };
}

type NewRootContext = fn(u32) -> Box<dyn RootContext>;

thread_local! {
    static NEW_ROOT: Cell<Option<NewRootContext>> = const { Cell::new(None) };
}

/// What `proxy_wasm::set_root_context` is for the SDK's traits.
pub fn set_root_context(new: NewRootContext) {
    NEW_ROOT.with(|n| n.set(Some(new)));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn sdk::RootContext> {
        let root = match NEW_ROOT.with(Cell::get) {
            Some(new) => new(context_id),
            None => Box::new(Nothing),
        };
        Box::new(Root(root))
    });
}

/// A context with no callbacks of its own.
struct Nothing;

impl Context for Nothing {}

impl RootContext for Nothing {}

impl HttpContext for Nothing {}

/// A root context, for the SDK's dispatcher.
struct Root(Box<dyn RootContext>);

impl sdk::Context for Root {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        self.0.on_http_call_response(token_id, num_headers, body_size, num_trailers);
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        self.0.on_grpc_stream_message(token_id, message_size);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        self.0.on_grpc_stream_close(token_id, status_code);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done()
    }

    context_helpers!();
}

impl sdk::RootContext for Root {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        self.0.on_vm_start(vm_configuration_size)
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        self.0.on_configure(plugin_configuration_size)
    }

    fn on_tick(&mut self) {
        self.0.on_tick();
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        self.0.on_queue_ready(queue_id);
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn sdk::HttpContext>> {
        let stream = self.0.create_http_context(context_id).unwrap_or_else(|| Box::new(Nothing));
        Some(Box::new(Http(stream)))
    }

    root_helpers!();
}

/// An HTTP context, for the SDK's dispatcher.
struct Http(Box<dyn HttpContext>);

impl sdk::Context for Http {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, num_trailers: usize) {
        self.0.on_http_call_response(token_id, num_headers, body_size, num_trailers);
    }

    fn on_grpc_stream_message(&mut self, token_id: u32, message_size: usize) {
        self.0.on_grpc_stream_message(token_id, message_size);
    }

    fn on_grpc_stream_close(&mut self, token_id: u32, status_code: u32) {
        self.0.on_grpc_stream_close(token_id, status_code);
    }

    fn on_done(&mut self) -> bool {
        self.0.on_done()
    }

    context_helpers!();
}

impl sdk::HttpContext for Http {
    fn on_http_request_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.0.on_http_request_headers(num_headers, end_of_stream)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.0.on_http_request_body(body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, num_headers: usize, end_of_stream: bool) -> Action {
        self.0.on_http_response_headers(num_headers, end_of_stream)
    }

    http_helpers!();
}
