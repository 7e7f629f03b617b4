//! `cargo fuzz run wg_open`: see [`overlayd_fuzz::wg::wg_open`] for the input format and
//! what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlayd_fuzz::wg::wg_open(data));
