//! Pins on segment slots: a reader of cached lines on the cache device
//! (a read, a read plan, write-back's window) pins their slot so the
//! flusher neither overwrites nor discards it meanwhile; the flusher waits
//! until a slot is unpinned before it does either.
//!
//! A pin is a [`SlotPin`] guard: taking one is the only way to raise a
//! slot's count and dropping it the only way to lower it, so no path (an
//! early return, an error, a panic, a plan a frontend drops unfinished)
//! can leak a pin or release it twice.
//!
//! The counts are atomics beside the cache's metadata mutex, not inside it:
//! a pin is *taken* with the mutex held (what [`SlotPins::pin`] asks for,
//! so the reader's look at the index and the pin are one step for the
//! flusher, which checks a slot's state under the mutex before it waits for
//! the slot's pins), but *released* without it. So a guard may be dropped
//! with the mutex held or not: its `Drop` takes no lock and cannot
//! deadlock or wait.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

/// The pin count of every segment slot of a cache.
pub(crate) struct SlotPins {
    counts: Vec<AtomicU32>,
}

impl SlotPins {
    /// Counts for `nr_segments` slots, none pinned.
    pub(crate) fn new(nr_segments: u64) -> Arc<SlotPins> {
        Arc::new(SlotPins {
            counts: (0..nr_segments).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Pins slot `slot` until the guard is dropped. `_locked`: the cache's
    /// metadata mutex is held while the pin is taken (see the module docs).
    pub(crate) fn pin<T>(self: &Arc<Self>, _locked: &MutexGuard<'_, T>, slot: u64) -> SlotPin {
        self.counts[slot as usize].fetch_add(1, Ordering::SeqCst);
        SlotPin {
            pins: self.clone(),
            slot,
        }
    }

    /// Waits until no reader has slot `slot` pinned.
    pub(crate) fn wait_unpinned(&self, slot: u64) {
        while self.counts[slot as usize].load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Pins held now over all slots.
    pub(crate) fn total(&self) -> u64 {
        self.counts
            .iter()
            .map(|p| p.load(Ordering::SeqCst) as u64)
            .sum()
    }
}

/// One pin on a segment slot, released when dropped.
pub(crate) struct SlotPin {
    pins: Arc<SlotPins>,
    slot: u64,
}

impl SlotPin {
    /// The pinned slot.
    pub(crate) fn slot(&self) -> u64 {
        self.slot
    }
}

impl Drop for SlotPin {
    fn drop(&mut self) {
        self.pins.counts[self.slot as usize].fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for SlotPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SlotPin({})", self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_pin_lasts_as_long_as_its_guard() {
        let pins = SlotPins::new(4);
        let metadata = Mutex::new(());
        let locked = metadata.lock().unwrap();
        let a = pins.pin(&locked, 2);
        let b = pins.pin(&locked, 2);
        let c = pins.pin(&locked, 3);
        drop(locked);
        assert_eq!(pins.total(), 3);
        drop(a);
        assert_eq!(pins.total(), 2);
        // one of two pins on slot 2 is left: the flusher would still wait
        assert_eq!(pins.counts[2].load(Ordering::SeqCst), 1);
        drop((b, c));
        assert_eq!(pins.total(), 0);
        pins.wait_unpinned(2);
    }
}
