//! Request heads: never panic, and an accepted head is internally consistent.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::http::fuzz::request(data));
