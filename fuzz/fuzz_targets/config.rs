//! libFuzzer target: `tandem_proxy::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proxy::fuzzing::config(data));
