#![no_main]
//! libFuzzer entry point; the target and its checks are `chromecard_fuzz::resource_path`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| chromecard_fuzz::resource_path(data));
