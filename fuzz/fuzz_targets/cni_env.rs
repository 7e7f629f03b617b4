//! `cargo fuzz run cni_env`: see [`overlayd_fuzz::cni::cni_env`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::cni::cni_env(data));
