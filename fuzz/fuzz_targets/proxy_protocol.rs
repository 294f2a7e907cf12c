//! libFuzzer target: `tandem_proxy::fuzzing::proxy_protocol`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proxy::fuzzing::proxy_protocol(data));
