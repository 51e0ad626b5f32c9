//! Fuzz target `template`: its body is `jetline_fuzz::template` (fuzz/src/lib.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jetline_fuzz::template(data));
