//! `cargo fuzz run vxlan_decap`: see [`overlayd_fuzz::dataplane::vxlan_decap`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::dataplane::vxlan_decap(data));
