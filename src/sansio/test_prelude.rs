//! Makes `#[test]` mean `#[wasm_bindgen_test]` when the core tests are
//! compiled to wasm32, so one test body runs natively and on 32-bit wasm.
//! Test modules `use crate::sansio::test_prelude::*;`.

#[cfg(target_arch = "wasm32")]
pub use wasm_bindgen_test::wasm_bindgen_test as test;
