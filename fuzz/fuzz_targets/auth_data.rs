#![no_main]
//! libFuzzer entry point; the target and its checks are `chromecard_fuzz::auth_data`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| chromecard_fuzz::auth_data(data));
