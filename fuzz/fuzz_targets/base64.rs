#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| upsync_wasm_fuzz::targets::base64(data));
