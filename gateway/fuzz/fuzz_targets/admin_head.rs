//! The admin API's request head: never panic, never promise more body
//! than the API reads.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::admin::fuzz_head(data);
});
