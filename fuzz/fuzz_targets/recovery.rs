//! Fuzz target `recovery`: see `lc_fuzz::engine::recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lc_fuzz::engine::recovery(data));
