//! Fuzz target `dbus`: see `lc_fuzz::dbus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lc_fuzz::dbus::run(data));
