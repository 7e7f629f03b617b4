//! Logging to `logFile`: stdout carries only the result, so logs never go there.
//!
//! One line per event: unix time, pid, level, message. Without `logFile`, nothing is logged.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogLevel;

/// An append-only log file with a level filter.
#[derive(Debug, Default)]
pub struct Logger {
    file: Option<File>,
    level: LogLevel,
}

impl Logger {
    /// Opens `path` for appending; a log that cannot be opened is silently disabled, since
    /// failing the CNI command because of logging would be worse.
    pub fn open(path: Option<&Path>, level: LogLevel) -> Self {
        let file = path.and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok());
        Logger { file, level }
    }

    /// Logs `msg` at `level`.
    pub fn log(&self, level: LogLevel, msg: impl Display) {
        if level > self.level {
            return;
        }
        if let Some(mut f) = self.file.as_ref() {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            // One write call per line so concurrent plugins do not interleave within lines.
            let line = format!("{t:.3} pid={} {level:?} {msg}\n", std::process::id());
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// Logs at info level.
    pub fn info(&self, msg: impl Display) {
        self.log(LogLevel::Info, msg)
    }

    /// Logs at debug level.
    pub fn debug(&self, msg: impl Display) {
        self.log(LogLevel::Debug, msg)
    }

    /// Logs at warn level.
    pub fn warn(&self, msg: impl Display) {
        self.log(LogLevel::Warn, msg)
    }

    /// Logs at error level.
    pub fn error(&self, msg: impl Display) {
        self.log(LogLevel::Error, msg)
    }
}
