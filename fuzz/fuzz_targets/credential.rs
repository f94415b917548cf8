#![no_main]
//! libFuzzer entry point; the target and its checks are `chromecard_fuzz::credential`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| chromecard_fuzz::credential(data));
