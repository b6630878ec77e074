//! A request target as path and query validation read it: normalization
//! idempotent, path parameters judged on the normalized path, strict
//! percent-decoding of the query, and a parameter's verdict independent of
//! the other pairs.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::route::fuzz_path_query(data);
});
