//! Fuzzes the stdin parsers: the network configuration and any embedded `prevResult`.
//! Run with `cargo +nightly fuzz run netconf` from `cni/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use overlayd_cni::config::NetConf;
use overlayd_cni::result::CniResult;

fuzz_target!(|data: &[u8]| {
    if let Ok(conf) = NetConf::parse(data) {
        let _ = conf.requested_ip();
        if let Some(prev) = &conf.prev_result {
            if let Ok(r) = CniResult::from_json(prev) {
                // Whatever parses must emit for every version without panicking.
                let _ = r.to_json(conf.version);
            }
        }
    }
    let _ = overlayd_cni::error::Error::Decode(String::from_utf8_lossy(data).into_owned())
        .to_reply("1.1.0");
});
