//! Fuzz target `envelope_binary`: its body is `jetline_fuzz::envelope_binary` (fuzz/src/lib.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jetline_fuzz::envelope_binary(data));
