//! The config loader: never panic, errors always carry file:line.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = gateway::config::Config::fuzz_parse(data);
});
