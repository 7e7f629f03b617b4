//! `cargo fuzz run prev_result`: see [`overlayd_fuzz::cni::prev_result`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::cni::prev_result(data));
