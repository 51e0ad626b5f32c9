//! Fuzz target `config`: its body is `jetline_fuzz::config` (fuzz/src/lib.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jetline_fuzz::config(data));
