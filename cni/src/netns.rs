//! Running code inside another network namespace.
//!
//! `setns(2)` applies to the calling thread only, so [`run_in`] switches a fresh scoped
//! thread and leaves the caller's namespace untouched (the aya `run_in_netns` pattern).
//! A netlink socket keeps the namespace it was created in, so the usual use is to create
//! a socket there and use it from the calling thread.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::thread::{move_into_link_name_space, LinkNameSpaceType};

/// Opens a network namespace file such as `/var/run/netns/pod-1` or `/proc/<pid>/ns/net`.
pub fn open(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// Runs `f` on a new thread that has joined the namespace `ns`.
pub fn run_in<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let fd = ns.as_fd();
    std::thread::scope(|s| {
        // A thread the system can't make (a pids limit) is an error, not a panic.
        std::thread::Builder::new()
            .spawn_scoped(s, move || {
                // setns(fd, CLONE_NEWNET) changes only this thread's network namespace.
                move_into_link_name_space(fd, Some(LinkNameSpaceType::Network))?;
                f()
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("netns worker thread panicked")))
    })
}
