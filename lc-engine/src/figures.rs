//! Recent figures of a cache: what read-only status calls are served from.
//!
//! Anyone on the system may ask a daemon for a cache's status as often as
//! they like. Taken straight from the cache, every such call would take
//! the lock every write and read of the cache takes. Served from here, the
//! lock is taken at most once per [`RECENT_FIGURES_MAX_AGE`] per cache,
//! however many callers there are; the figures are never older than that,
//! and the cache's own administrative calls (knobs, statistics, attach and
//! detach, flushes asked for) make the next read take fresh ones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cache::lock;
use crate::status::CacheStatus;

/// The oldest figures [`crate::Cache::recent_status`] serves.
pub const RECENT_FIGURES_MAX_AGE: Duration = Duration::from_millis(20);

/// One snapshot: the cache's status and each device id's dirty lines.
#[derive(Clone)]
pub(crate) struct Figures {
    /// The cache's status when taken.
    pub status: CacheStatus,
    /// Dirty lines of each device id (index 0 unused).
    pub nr_dirty: Box<[u64; 256]>,
}

/// The last snapshot and when it was taken.
#[derive(Default)]
pub(crate) struct RecentFigures {
    taken: Mutex<Option<(Instant, Figures)>>,
    /// Set by [`RecentFigures::forget`]: the next read takes fresh figures.
    /// An atomic, so that code holding the cache's lock may set it.
    stale: AtomicBool,
}

impl RecentFigures {
    /// The snapshot, taken anew with `take` when it is older than
    /// [`RECENT_FIGURES_MAX_AGE`] or was forgotten. Callers asking at the
    /// same time wait for one `take`.
    pub fn get(&self, take: impl FnOnce() -> Figures) -> Figures {
        let mut taken = lock(&self.taken);
        let stale = self.stale.swap(false, Ordering::AcqRel);
        match &*taken {
            Some((at, f)) if !stale && at.elapsed() < RECENT_FIGURES_MAX_AGE => f.clone(),
            _ => {
                let f = take();
                *taken = Some((Instant::now(), f.clone()));
                f
            }
        }
    }

    /// Makes the next [`RecentFigures::get`] take fresh figures.
    pub fn forget(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Forgets the figures when the returned guard drops: at every return
    /// of the call that changes what they show.
    pub fn forget_when_done(&self) -> ForgetWhenDone<'_> {
        ForgetWhenDone(self)
    }
}

/// See [`RecentFigures::forget_when_done`].
pub(crate) struct ForgetWhenDone<'a>(&'a RecentFigures);

impl Drop for ForgetWhenDone<'_> {
    fn drop(&mut self) {
        self.0.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn figures(n: u64) -> Figures {
        let mut nr_dirty = Box::new([0u64; 256]);
        nr_dirty[1] = n;
        Figures {
            status: CacheStatus::default(),
            nr_dirty,
        }
    }

    #[test]
    fn figures_are_taken_once_per_age_and_again_when_forgotten() {
        let r = RecentFigures::default();
        let takes = Cell::new(0u64);
        let take = || {
            takes.set(takes.get() + 1);
            figures(takes.get())
        };
        assert_eq!(r.get(take).nr_dirty[1], 1);
        // however many callers ask within the age, one take
        for _ in 0..1000 {
            let f = r.get(|| {
                takes.set(takes.get() + 1);
                figures(takes.get())
            });
            if takes.get() > 1 {
                // the machine was slow enough for the age to pass: allowed,
                // but then the figures are the new ones
                assert_eq!(f.nr_dirty[1], takes.get());
                break;
            }
            assert_eq!(f.nr_dirty[1], 1);
        }
        let before = takes.get();
        r.forget();
        let f = r.get(|| {
            takes.set(takes.get() + 1);
            figures(takes.get())
        });
        assert_eq!(
            takes.get(),
            before + 1,
            "a forgotten snapshot is taken again"
        );
        assert_eq!(f.nr_dirty[1], before + 1);
        std::thread::sleep(RECENT_FIGURES_MAX_AGE * 2);
        let f = r.get(|| figures(99));
        assert_eq!(
            f.nr_dirty[1], 99,
            "figures older than the age are taken again"
        );
    }
}
