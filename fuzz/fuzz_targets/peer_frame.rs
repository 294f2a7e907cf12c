//! libFuzzer target: `tandem_proxy::fuzzing::peer_frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proxy::fuzzing::peer_frame(data));
