//! I/O statistics of a cache: dm-lc's 16 counters, the error counters, and
//! the cache's health: which kind of device I/O is failing right now, since
//! when and with what error ([`Health`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// The 16 counters, indexed by (write?, hit?, on_buffer?, fullsize?), plus
/// error and retry counts, and the running fault streaks.
#[derive(Default)]
pub struct Stats {
    counters: [AtomicU64; 16],
    errors: [AtomicU64; 5],
    /// Set while a streak of [`FAULT_KINDS`] kind `i` runs (cheap test on
    /// the success path).
    failing: [AtomicBool; 4],
    streaks: Mutex<[Option<Fault>; 4]>,
}

/// The error counters that describe a device fault (not the retry count).
pub const FAULT_KINDS: [ErrorCounter; 4] = [
    ErrorCounter::CacheRead,
    ErrorCounter::CacheWrite,
    ErrorCounter::BackingRead,
    ErrorCounter::BackingWrite,
];

/// A kind of device I/O that is failing now: errors since the last success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Which kind of I/O.
    pub kind: ErrorCounter,
    /// Errors in a row, without a success of that kind in between.
    pub errors: u64,
    /// When the first of them happened.
    pub since: SystemTime,
    /// What failed last, and the operating system's error.
    pub last_error: String,
}

impl Fault {
    /// What the fault means for the user and what to do, in one sentence.
    pub fn consequence(&self) -> &'static str {
        match self.kind {
            ErrorCounter::CacheWrite => {
                "writes are held in RAM and retried, FLUSH/fsync fails with EIO and new writes \
                 fail with EIO once the RAM buffers are full; check the cache device (dmesg, \
                 SMART): lc recovers by itself when it works again"
            }
            ErrorCounter::CacheRead => {
                "reads of lines cached there fail with EIO (never stale data) and write-back \
                 waits; check the cache device (dmesg, SMART)"
            }
            ErrorCounter::BackingRead => {
                "reads of data not in the cache fail with EIO; check the backing device"
            }
            ErrorCounter::BackingWrite | ErrorCounter::MigrationRetry => {
                "dirty data stays in the cache and write-back is retried; detach fails until \
                 the backing device works again; check it (dmesg, SMART)"
            }
        }
    }

    /// `cache device write errors (3 since 2026-11-26 11:32:05 UTC, last:
    /// writing a segment: Input/output error (os error 5))`.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            ErrorCounter::CacheRead => "cache device read errors",
            ErrorCounter::CacheWrite => "cache device write errors",
            ErrorCounter::BackingRead => "backing device read errors",
            ErrorCounter::BackingWrite | ErrorCounter::MigrationRetry => {
                "backing device write errors"
            }
        };
        format!(
            "{what} ({} since {}, last: {})",
            self.errors,
            utc(self.since),
            self.last_error
        )
    }
}

/// The faults a cache has right now; none means healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// One entry per kind of I/O that is failing, in [`FAULT_KINDS`] order.
    pub faults: Vec<Fault>,
}

impl Health {
    /// True when no kind of device I/O is failing.
    pub fn is_healthy(&self) -> bool {
        self.faults.is_empty()
    }

    /// The fault of one kind, if that kind of I/O is failing.
    pub fn fault(&self, kind: ErrorCounter) -> Option<&Fault> {
        self.faults
            .iter()
            .find(|f| f.kind as usize == kind as usize)
    }

    /// `healthy`, or `failing: <fault>: <consequence>; <fault>: …`.
    pub fn describe(&self) -> String {
        if self.faults.is_empty() {
            return "healthy".into();
        }
        let parts: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{}: {}", f.describe(), f.consequence()))
            .collect();
        format!("failing: {}", parts.join("; "))
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` (civil date from days since 1970, proleptic
/// Gregorian calendar).
fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // shift the era to begin on 0000-03-01, so leap days end a year
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One of the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCounter {
    /// Failed reads of the cache device.
    CacheRead = 0,
    /// Failed writes or flushes of the cache device.
    CacheWrite = 1,
    /// Failed reads of a backing device.
    BackingRead = 2,
    /// Failed writes or flushes of a backing device (during write-back).
    BackingWrite = 3,
    /// Migration batches retried after an error.
    MigrationRetry = 4,
}

/// Index of a counter: bit 3 write, bit 2 hit, bit 1 on_buffer, bit 0 fullsize.
pub fn stat_index(write: bool, hit: bool, on_buffer: bool, fullsize: bool) -> usize {
    (write as usize) << 3 | (hit as usize) << 2 | (on_buffer as usize) << 1 | fullsize as usize
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// The 16 counters, see [`stat_index`].
    pub counters: [u64; 16],
    /// Cache-device read errors.
    pub cache_read_errors: u64,
    /// Cache-device write/flush errors.
    pub cache_write_errors: u64,
    /// Backing-device read errors.
    pub backing_read_errors: u64,
    /// Backing-device write/flush errors.
    pub backing_write_errors: u64,
    /// Migration batches retried.
    pub migration_retries: u64,
}

impl StatsSnapshot {
    /// Counter for one combination.
    pub fn get(&self, write: bool, hit: bool, on_buffer: bool, fullsize: bool) -> u64 {
        self.counters[stat_index(write, hit, on_buffer, fullsize)]
    }
}

impl Stats {
    /// Counts one I/O (one cache line's worth of a request).
    pub fn count(&self, write: bool, hit: bool, on_buffer: bool, fullsize: bool) {
        self.count_many(write, hit, on_buffer, fullsize, 1);
    }

    /// Counts `n` line accesses of one kind at once ([`Stats::count`]).
    pub fn count_many(&self, write: bool, hit: bool, on_buffer: bool, fullsize: bool, n: u64) {
        self.counters[stat_index(write, hit, on_buffer, fullsize)].fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one error.
    pub fn error(&self, which: ErrorCounter) {
        self.errors[which as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one error of a device and extends (or starts) its fault
    /// streak; `what` says what lc was doing.
    pub fn failure(&self, which: ErrorCounter, what: &str, e: &std::io::Error) {
        self.error(which);
        let i = which as usize;
        if i >= FAULT_KINDS.len() {
            return;
        }
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        let s = streaks[i].get_or_insert_with(|| Fault {
            kind: which,
            errors: 0,
            since: SystemTime::now(),
            last_error: String::new(),
        });
        s.errors += 1;
        s.last_error = format!("{what}: {e}");
        self.failing[i].store(true, Ordering::SeqCst);
    }

    /// A device I/O of this kind succeeded: its fault streak, if any, ends.
    pub fn success(&self, which: ErrorCounter) {
        let i = which as usize;
        if i >= FAULT_KINDS.len() || !self.failing[i].load(Ordering::Relaxed) {
            return;
        }
        let mut streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        streaks[i] = None;
        self.failing[i].store(false, Ordering::SeqCst);
    }

    /// Errors in the running streak of this kind (0: not failing now).
    pub fn streak(&self, which: ErrorCounter) -> u64 {
        let i = which as usize;
        if i >= FAULT_KINDS.len() || !self.failing[i].load(Ordering::Relaxed) {
            return 0;
        }
        let streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        streaks[i].as_ref().map_or(0, |s| s.errors)
    }

    /// Which kinds of device I/O are failing now.
    pub fn health(&self) -> Health {
        let streaks = self.streaks.lock().unwrap_or_else(|e| e.into_inner());
        Health {
            faults: streaks.iter().flatten().cloned().collect(),
        }
    }

    /// Zeroes the 16 I/O counters (error counters are kept: they are health).
    pub fn clear(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let e = |i: usize| self.errors[i].load(Ordering::Relaxed);
        StatsSnapshot {
            counters: std::array::from_fn(|i| self.counters[i].load(Ordering::Relaxed)),
            cache_read_errors: e(0),
            cache_write_errors: e(1),
            backing_read_errors: e(2),
            backing_write_errors: e(3),
            migration_retries: e(4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_795_692_725), "2026-11-26 11:32:05 UTC");
    }

    #[test]
    fn a_streak_runs_until_the_next_success() {
        let s = Stats::default();
        assert!(s.health().is_healthy());
        assert_eq!(s.health().describe(), "healthy");
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        s.failure(ErrorCounter::CacheWrite, "writing a segment", &eio);
        s.failure(ErrorCounter::CacheWrite, "flushing the cache device", &eio);
        s.success(ErrorCounter::BackingWrite);
        let h = s.health();
        let f = h.fault(ErrorCounter::CacheWrite).expect("failing");
        assert_eq!(f.errors, 2);
        assert_eq!(s.streak(ErrorCounter::CacheWrite), 2);
        let text = h.describe();
        assert!(
            text.starts_with("failing: cache device write errors (2 since ")
                && text.contains("last: flushing the cache device: Input/output error")
                && text.contains("FLUSH/fsync fails with EIO"),
            "{text}"
        );
        s.success(ErrorCounter::CacheWrite);
        assert!(s.health().is_healthy());
        assert_eq!(s.streak(ErrorCounter::CacheWrite), 0);
        // the counter keeps the history
        assert_eq!(s.snapshot().cache_write_errors, 2);
        // the retry counter is no fault of its own
        s.failure(ErrorCounter::MigrationRetry, "x", &eio);
        assert!(s.health().is_healthy());
    }
}
