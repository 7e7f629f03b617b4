//! `cargo fuzz run netconf`: see [`overlayd_fuzz::cni::netconf`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::cni::netconf(data));
