//! A request body on a validating route: never a panic, the bytes the
//! upstream would get untouched, and the same verdict as `serde_json` with
//! the same schema for every body accepted as a document.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gateway::stages::validation::fuzz_json_body(data);
});
