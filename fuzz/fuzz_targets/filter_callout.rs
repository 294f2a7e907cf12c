//! libFuzzer target: `tandem_proxy::fuzzing::filter_callout`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proxy::fuzzing::filter_callout(data));
