//! Chunked decoding: never panic, and the result does not depend on how
//! the input was split across reads.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::http::fuzz::chunked(data);
});
