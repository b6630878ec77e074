//! The config loader: never panic, errors always carry file:line.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = gateway::config::Config::parse(text, "fuzz.toml") {
            assert!(e.to_string().starts_with("fuzz.toml:"), "{e}");
        }
    }
});
