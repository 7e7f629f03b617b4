//! What every userspace dataplane (plain and encrypted) does with its threads: the
//! stop signal, spawning a worker that reports how it ended (a panic included),
//! waiting for the first to end, shutting them down, and the worker loop that runs
//! rounds until idle (busy polling for a while if asked) and then sleeps in `poll`.
//! I/O only: what a round does is the caller's.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use tokio::sync::mpsc;

use super::error::Error;

/// Tells every worker to stop: a flag checked between rounds, and an eventfd that
/// wakes a worker sleeping in `poll`.
#[derive(Debug)]
pub(crate) struct Stop {
    flag: AtomicBool,
    pub(crate) event: OwnedFd,
}

impl Stop {
    pub(crate) fn new() -> io::Result<Stop> {
        Ok(Stop {
            flag: AtomicBool::new(false),
            event: eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?,
        })
    }

    pub(crate) fn signal(&self) {
        self.flag.store(true, Ordering::Relaxed);
        // The counter stays non-zero, so every poller sees the eventfd readable.
        let _ = rustix::io::write(&self.event, &1u64.to_ne_bytes());
    }

    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// Waits until one of `fds` is ready. `EINTR` counts as ready.
pub(crate) fn wait(fds: &mut [PollFd<'_>]) -> io::Result<()> {
    match poll(fds, None) {
        Err(e) if e != rustix::io::Errno::INTR => Err(e.into()),
        _ => Ok(()),
    }
}

/// A dataplane's threads: each reports how it ended on `done`.
pub(crate) struct Threads {
    threads: Vec<std::thread::JoinHandle<()>>,
    done_tx: mpsc::UnboundedSender<Result<(), Error>>,
    done: mpsc::UnboundedReceiver<Result<(), Error>>,
    pub(crate) stop: Arc<Stop>,
}

impl Threads {
    /// No threads yet, and their stop signal.
    pub(crate) fn new() -> Result<Threads, Error> {
        let stop = Stop::new().map_err(|source| Error::Io {
            what: "creating the dataplane stop event",
            source,
        })?;
        let (done_tx, done) = mpsc::unbounded_channel();
        Ok(Threads {
            threads: Vec::new(),
            done_tx,
            done,
            stop: Arc::new(stop),
        })
    }

    /// Starts thread `name` running `f`; its result, or its panic as an error naming
    /// `name`, is what [`Threads::wait`] returns if it ends first. A thread that
    /// cannot start is reported the same way.
    pub(crate) fn spawn(
        &mut self,
        name: String,
        f: impl FnOnce() -> Result<(), Error> + Send + 'static,
    ) {
        let done = self.done_tx.clone();
        let label = name.clone();
        let spawned = std::thread::Builder::new().name(name).spawn(move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(Error::ThreadPanicked {
                        thread: label,
                        message: msg,
                    })
                });
            let _ = done.send(result);
        });
        match spawned {
            Ok(handle) => self.threads.push(handle),
            Err(source) => {
                let _ = self.done_tx.send(Err(Error::Io {
                    what: "starting a dataplane thread",
                    source,
                }));
            }
        }
    }

    /// Waits until a thread ends (a worker only returns on a fatal error).
    pub(crate) async fn wait(&mut self) -> Result<(), Error> {
        self.done.recv().await.unwrap_or(Ok(()))
    }

    /// Stops the threads and waits for them; their fds close with them.
    pub(crate) async fn shutdown(mut self) {
        self.stop.signal();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Threads {
    /// Threads dropped without [`Threads::shutdown`] are still told to stop (without
    /// waiting for them).
    fn drop(&mut self) {
        self.stop.signal();
    }
}

/// A worker's loop: runs `round` (which returns how much it handled) until nothing
/// is queued and, with busy polling, has not been for `busy_poll`, then sleeps in
/// `poll` until `a` or `b` is readable; ends when stopped or when a round fails.
pub(crate) fn run_rounds(
    stop: &Stop,
    busy_poll: Duration,
    a: impl AsFd,
    b: impl AsFd,
    what: &'static str,
    mut round: impl FnMut() -> Result<usize, Error>,
) -> Result<(), Error> {
    loop {
        let mut idle_since: Option<Instant> = None;
        loop {
            if stop.is_set() {
                return Ok(());
            }
            if round()? > 0 {
                idle_since = None;
                continue;
            }
            if busy_poll.is_zero() {
                break;
            }
            let now = Instant::now();
            if now.duration_since(*idle_since.get_or_insert(now)) >= busy_poll {
                break;
            }
            // Keep polling, but let anything else runnable on this core go first.
            std::thread::yield_now();
        }
        let mut fds = [
            PollFd::new(&a, PollFlags::IN),
            PollFd::new(&b, PollFlags::IN),
            PollFd::new(&stop.event, PollFlags::IN),
        ];
        wait(&mut fds).map_err(|source| Error::Io { what, source })?;
    }
}
