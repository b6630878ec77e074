//! Whose limit a request is charged to: always the peer or an address
//! written in `X-Forwarded-For`, and the peer itself unless it is trusted.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::stages::rate_limit::fuzz_forwarded_for(data);
});
