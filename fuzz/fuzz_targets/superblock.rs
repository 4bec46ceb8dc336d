//! Fuzz target `superblock`: see `lc_fuzz::engine::superblock`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lc_fuzz::engine::superblock(data));
