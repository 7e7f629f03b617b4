//! `cargo fuzz run wire_parsers`: see [`overlayd_fuzz::dataplane::wire_parsers`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::dataplane::wire_parsers(data));
