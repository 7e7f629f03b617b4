//! `cargo fuzz run gossip_node`: see [`overlayd_fuzz::gossip::gossip_node`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::gossip::gossip_node(data));
