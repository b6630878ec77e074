//! Request heads: never panic, and an accepted head is internally consistent.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::http::fuzz::request(data);
});
