//! A guard for a process a test started: on drop it is asked to stop (SIGTERM), killed
//! if it has not within 5 s, and reaped, also when the test panics.
//!
//! The guard holds the real process (started as `ip netns exec NS PROGRAM`, which execs
//! the program, so the pid is the program's), never a shell or its `$!`.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A running child process, stopped and reaped on drop.
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Takes charge of `child`.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    /// The process id, while it has not been stopped through this guard.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True once the process has exited (it is reaped then).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().is_ok_and(|s| s.is_some()),
            None => true,
        }
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`) to the process, if it runs.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on the pid of our own child, which is not reaped yet (the
            // guard still holds it), so the pid cannot have been reused.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after that). Returns the
    /// exit status when the process exited by itself in time.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid, not reaped yet.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Hands the child back without stopping it.
    pub fn into_inner(mut self) -> Option<Child> {
        self.child.take()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}
