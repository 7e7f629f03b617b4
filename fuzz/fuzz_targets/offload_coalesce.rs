//! `cargo fuzz run offload_coalesce`: see [`overlayd_fuzz::dataplane::offload_coalesce`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::dataplane::offload_coalesce(data));
