//! Fuzz target `segment`: see `lc_fuzz::engine::segment`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lc_fuzz::engine::segment(data));
