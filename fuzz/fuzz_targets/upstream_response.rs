//! libFuzzer target: `tandem_proxy::fuzzing::upstream_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proxy::fuzzing::upstream_response(data));
