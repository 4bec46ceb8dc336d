//! The ticker: the cache's timers.
//!
//! - barrier deadline: a FLUSH/FUA waiting on the partial current segment
//!   seals it after `barrier_deadline_ms`;
//! - `flush_current_buffer_interval`: a partial segment older than this is sealed;
//! - `commit_super_block_interval`: the record block is committed this often.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::{lock, Inner};
use crate::flusher::FlushJob;
use crate::knobs::Knob;

pub(crate) fn run(inner: Arc<Inner>) {
    let mut st = lock(&inner.metadata);
    loop {
        if st.stopping {
            return;
        }
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        let has_lines = st.log.current.as_ref().is_some_and(|c| c.length > 0);

        if let (Some(since), true) = (st.flush_waiters.barrier_since, has_lines) {
            let due = since + Duration::from_millis(inner.knobs.get(Knob::BarrierDeadlineMs));
            if due <= now {
                inner.close_current(&mut st);
            } else {
                next = next.min(due);
            }
        }
        let interval = inner.knobs.get(Knob::FlushCurrentBufferInterval);
        if let (Some(cur), true) = (&st.log.current, interval > 0) {
            let due = cur.opened_at + Duration::from_secs(interval);
            if cur.length > 0 && due <= now {
                inner.close_current(&mut st);
            } else {
                next = next.min(due.max(now + Duration::from_millis(10)));
            }
        }
        let interval = inner.knobs.get(Knob::CommitSuperBlockInterval);
        if interval > 0 {
            let due = st.record.last_commit + Duration::from_secs(interval);
            if due <= now {
                st.record.last_commit = now;
                inner.send_job(FlushJob::Commit(None));
            } else {
                next = next.min(due);
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        st = inner
            .ticker_cv
            .wait_timeout(st, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}
