//! Upstream response heads: never panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::http::fuzz::response(data);
});
