//! libFuzzer target: `tandem_proxy::fuzzing::client_hello`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proxy::fuzzing::client_hello(data));
