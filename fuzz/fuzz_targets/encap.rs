//! `cargo fuzz run encap`: see [`overlayd_fuzz::dataplane::encap`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::dataplane::encap(data));
