//! Fuzz target `payload_validate`: its body is `jetline_fuzz::payload_validate` (fuzz/src/lib.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jetline_fuzz::payload_validate(data));
