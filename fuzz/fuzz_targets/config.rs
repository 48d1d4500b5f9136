//! The config parser: any text either loads or is refused with a key and a
//! reason; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Err(e) = hookrelay::config::Config::parse(text, std::path::Path::new("fuzz.toml")) {
        assert!(!e.key.is_empty());
        let _ = e.to_string();
    }
});
