//! Retrying background I/O: the flusher's and write-back's device I/O is
//! never given up (nothing acknowledged is dropped); it is retried with
//! exponential backoff until it succeeds or the cache stops.

use std::time::Duration;

use std::sync::Mutex;

use crate::cache::{lock, Metadata};

/// Exponential backoff for retried I/O: 10 ms doubling up to 2 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(10u64 << attempt.min(8)).min(Duration::from_secs(2))
}

/// Runs background I/O `op` until it succeeds, calling `on_error` after each
/// failure and sleeping with exponential backoff. Background I/O never gives
/// up on its own (nothing is dropped); it returns false only when the cache
/// is stopping and `op` has failed more than `attempts_when_stopping` times.
pub(crate) fn retry_io(
    metadata: &Mutex<Metadata>,
    attempts_when_stopping: u32,
    mut on_error: impl FnMut(&std::io::Error),
    mut op: impl FnMut() -> std::io::Result<()>,
) -> bool {
    let mut attempt = 0;
    loop {
        match op() {
            Ok(()) => return true,
            Err(e) => {
                on_error(&e);
                if lock(metadata).stopping && attempt >= attempts_when_stopping {
                    return false;
                }
                std::thread::sleep(backoff(attempt));
                attempt += 1;
            }
        }
    }
}
