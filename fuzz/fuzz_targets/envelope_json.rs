//! Fuzz target `envelope_json`: its body is `jetline_fuzz::envelope_json` (fuzz/src/lib.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jetline_fuzz::envelope_json(data));
