//! Deliveries by state, kept in memory and moved by every transition.
//!
//! A clean close leaves the counts in `meta`. After a run that did not
//! close the store (`kill -9`, a power cut), they are read again from the
//! store, but not before the relay starts: a background thread reads the
//! deliveries in steps while the relay runs, and the counts are unknown
//! (`None`) until it is done. A million deliveries take a few seconds to
//! read, and nothing needs the counts to deliver.
//!
//! While the count runs, a transition of a delivery it has already read,
//! or of one past the last delivery it will read, moves the counts as
//! usual; a transition of one it has yet to read does not, since the count
//! will read its new state. For that to hold, every transition holds a
//! [`Transition`] (the count's lock, shared) from before its write until it
//! has moved the counts, and the count holds the lock alone while it reads
//! a step, so a transition is wholly before or wholly after each step. A
//! thread holds at most one `Transition` at a time: the lock favours the
//! count when it waits, so a second one could wait behind it for ever.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use crate::store::{DeliveryId, State};

/// Deliveries read per step of the count.
pub(super) const COUNT_STEP: usize = 1000;

#[derive(Default)]
pub(super) struct StateCounts {
    n: [AtomicI64; 5],
    scan: RwLock<Scan>,
}

/// Where the count of the store's deliveries is.
#[derive(Clone, Copy, Default, PartialEq, Debug)]
pub(super) enum Scan {
    /// Counted (or left by a clean close).
    #[default]
    Done,
    /// Being read: up to `upto` (inclusive) so far, and up to `end`, the
    /// last delivery at open.
    Reading { upto: Option<u128>, end: u128 },
}

impl Scan {
    /// Whether a transition of `id` moves the counts now.
    fn counts(self, id: DeliveryId) -> bool {
        match self {
            Scan::Done => true,
            Scan::Reading { upto, end } => id.0 .0 > end || upto.is_some_and(|u| id.0 .0 <= u),
        }
    }
}

/// A transition under way: the counts move only through it.
pub(super) struct Transition<'a> {
    n: &'a [AtomicI64; 5],
    scan: RwLockReadGuard<'a, Scan>,
}

impl Transition<'_> {
    /// Delivery `id` went from `from` to `to` (`None`: it did not exist,
    /// or no longer does).
    pub(super) fn moved(&self, id: DeliveryId, from: Option<State>, to: Option<State>) {
        if from == to || !self.scan.counts(id) {
            return;
        }
        if let Some(f) = from {
            self.n[f.index()].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(t) = to {
            self.n[t.index()].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl StateCounts {
    /// Holds off the count's next step until the transition is counted.
    pub(super) fn transition(&self) -> Transition<'_> {
        Transition {
            n: &self.n,
            scan: self.scan.read().expect("lock poisoned"),
        }
    }

    /// Deliveries in `state`; `None` while the count is under way.
    pub(super) fn get(&self, state: State) -> Option<i64> {
        match *self.scan.read().expect("lock poisoned") {
            Scan::Done => Some(self.n[state.index()].load(Ordering::Relaxed)),
            Scan::Reading { .. } => None,
        }
    }

    /// Where the count is.
    #[cfg(test)]
    pub(super) fn scan(&self) -> Scan {
        *self.scan.read().expect("lock poisoned")
    }

    /// Sets the counts a clean close left.
    pub(super) fn set(&self, counts: [i64; 5]) {
        for (c, n) in self.n.iter().zip(counts) {
            c.store(n, Ordering::Relaxed);
        }
    }

    /// The counts are to be read from the store, up to delivery `end`.
    pub(super) fn start_reading(&self, end: u128) {
        self.set([0; 5]);
        *self.scan.write().expect("lock poisoned") = Scan::Reading { upto: None, end };
    }

    /// One step of the count, with transitions held off: `read` gets the
    /// first delivery to read and the last one, and returns the states it
    /// read and the last id it read (`None` when there was none left).
    /// Returns whether the count is done.
    pub(super) fn step<E>(
        &self,
        read: impl FnOnce(Option<u128>, u128) -> Result<(Vec<State>, Option<u128>), E>,
    ) -> Result<bool, E> {
        let mut scan = self.scan.write().expect("lock poisoned");
        let Scan::Reading { upto, end } = *scan else {
            return Ok(true);
        };
        let (states, last) = read(upto, end)?;
        for s in states {
            self.n[s.index()].fetch_add(1, Ordering::Relaxed);
        }
        *scan = match last {
            Some(last) if last < end => Scan::Reading {
                upto: Some(last),
                end,
            },
            _ => Scan::Done,
        };
        Ok(*scan == Scan::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> DeliveryId {
        DeliveryId(ulid::Ulid(n))
    }

    #[test]
    fn a_transition_the_count_has_yet_to_read_is_left_to_it() {
        let c = StateCounts::default();
        c.start_reading(10);
        assert_eq!(c.get(State::Pending), None);
        // Read 1..=5: all pending.
        let done = c
            .step(|from, end| {
                assert_eq!((from, end), (None, 10));
                Ok::<_, ()>((vec![State::Pending; 5], Some(5)))
            })
            .unwrap();
        assert!(!done);
        // 3 was read: its transition counts. 7 was not: the count will
        // read its new state. 11 is past the end: it counts.
        c.transition()
            .moved(id(3), Some(State::Pending), Some(State::Succeeded));
        c.transition()
            .moved(id(7), Some(State::Pending), Some(State::Succeeded));
        c.transition().moved(id(11), None, Some(State::Pending));
        let done = c
            .step(|from, _| {
                assert_eq!(from, Some(5));
                // 6, 8, 9, 10 pending; 7 succeeded.
                Ok::<_, ()>((
                    vec![
                        State::Pending,
                        State::Succeeded,
                        State::Pending,
                        State::Pending,
                        State::Pending,
                    ],
                    Some(10),
                ))
            })
            .unwrap();
        assert!(done);
        // 5 read, 3 gone, 11 new, 4 more read.
        assert_eq!(c.get(State::Pending), Some(9));
        assert_eq!(c.get(State::Succeeded), Some(2));
        // Done: every transition counts.
        c.transition().moved(id(7), Some(State::Succeeded), None);
        assert_eq!(c.get(State::Succeeded), Some(1));
    }

    #[test]
    fn a_store_with_nothing_left_to_read_is_counted() {
        let c = StateCounts::default();
        c.start_reading(10);
        assert!(c.step(|_, _| Ok::<_, ()>((vec![], None))).unwrap());
        assert_eq!(c.get(State::Dead), Some(0));
    }
}
