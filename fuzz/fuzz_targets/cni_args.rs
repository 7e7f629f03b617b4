//! `cargo fuzz run cni_args`: see [`overlayd_fuzz::cni::cni_args`] for the input format
//! and what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::cni::cni_args(data));
