//! Registry text in log lines and status: bounded, whatever the registry
//! stored (a key of 64 KiB must not make a 200 KB log line).

use std::borrow::Cow;

/// How many characters of a registry string a log line shows.
pub const SHOWN_CHARS: usize = 120;

/// `s` as shown in a log line: whole when short, else its first
/// [`SHOWN_CHARS`] characters and its length.
pub fn clip(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(SHOWN_CHARS) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => Cow::Owned(format!("{}…({} bytes)", s.get(..cut).unwrap_or_default(), s.len())),
    }
}

#[cfg(test)]
mod tests {
    // On wasm32 the same tests run under wasm-bindgen-test.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    #[test]
    fn long_text_is_cut_and_says_how_long_it_was() {
        assert_eq!(clip("10.0.0.1:80"), "10.0.0.1:80");
        let key = format!("/upstreams/web/{}", "x".repeat(65_536));
        let shown = clip(&key);
        assert!(shown.len() < 200, "{}", shown.len());
        assert!(shown.ends_with("…(65551 bytes)"), "{shown}");
        // Never cuts inside a character.
        let wide = "é".repeat(500);
        assert!(clip(&wide).starts_with(&"é".repeat(SHOWN_CHARS)));
    }
}
