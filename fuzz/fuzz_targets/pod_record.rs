//! `cargo fuzz run pod_record`: see [`overlayd_fuzz::cni::pod_record`] for the input
//! format and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::cni::pod_record(data));
