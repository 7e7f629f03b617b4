//! Keeps heavy tests (floods, the loss soak, iperf3 runs) away from timing-sensitive
//! checks: a heavy test holds an exclusive lock, every other root-only test a shared
//! one, on one file for the whole machine. So a heavy test runs alone, one at a time,
//! whatever the test threads and whichever test binaries run at once.

use std::fs::File;
use std::os::fd::AsRawFd;

/// A held lock; released on drop (closing the file releases the flock).
pub struct LoadLock {
    _file: File,
}

fn lock(op: i32) -> LoadLock {
    let path = std::env::temp_dir().join("overlayd-tests.load.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    loop {
        // SAFETY: flock(2) on a file descriptor we own, open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return LoadLock { _file: file };
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "flock {}: {err}",
            path.display()
        );
    }
}

/// For a heavy test: waits until no other root-only test runs, and keeps them out
/// until dropped.
pub fn heavy() -> LoadLock {
    lock(libc::LOCK_EX)
}

/// For any other root-only test: runs beside other such tests, never beside a heavy
/// one.
pub fn shared() -> LoadLock {
    lock(libc::LOCK_SH)
}
