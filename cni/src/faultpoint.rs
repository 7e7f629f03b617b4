//! Fault-injection points for the root-only tests that kill the plugin mid-command.
//!
//! With the `netns-tests` feature, [`stall`] stops the process for good when the
//! `OVERLAYD_CNI_TEST_STALL` variable names the point it is called at, so a test can
//! kill it there. Without the feature it compiles to nothing.

/// The variable naming the point to stall at.
pub const STALL_VAR: &str = "OVERLAYD_CNI_TEST_STALL";

/// Stalls forever at `point` if `OVERLAYD_CNI_TEST_STALL` names it (only with the
/// `netns-tests` feature; otherwise a no-op).
pub fn stall(point: &str) {
    #[cfg(feature = "netns-tests")]
    if std::env::var(STALL_VAR).is_ok_and(|v| v == point) {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let _ = point;
}
