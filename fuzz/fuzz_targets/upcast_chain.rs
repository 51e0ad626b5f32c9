//! Fuzz target `upcast_chain`: its body is `jetline_fuzz::upcast_chain` (fuzz/src/lib.rs).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jetline_fuzz::upcast_chain(data));
