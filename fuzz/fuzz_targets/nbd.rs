//! Fuzz target `nbd`: see `lc_fuzz::nbd`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lc_fuzz::nbd::nbd(data));
