//! Token-bucket rates: per source at ingest, per target for deliveries,
//! and [`Throttle`], which lets log lines through at a rate and counts the rest.

use std::num::NonZeroU32;

use serde::Deserialize;

/// A token-bucket rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    /// A rate from numbers written in the code (defaults); both are above 0.
    pub const fn of(per_second: u32, burst: u32) -> Rate {
        match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (Some(per_second), Some(burst)) => Rate { per_second, burst },
            _ => panic!("a rate's numbers are above 0"),
        }
    }

    /// The limiter quota of this rate.
    pub fn quota(&self) -> governor::Quota {
        governor::Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

/// Lets through at most `rate` of something (log lines), and counts the
/// rest, so the next one let through can say how many were left out.
pub struct Throttle<C: governor::clock::Clock = governor::clock::DefaultClock> {
    limiter: governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        C,
        governor::middleware::NoOpMiddleware<C::Instant>,
    >,
    held_back: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub fn new(rate: Rate) -> Throttle {
        Throttle::with_clock(rate, governor::clock::DefaultClock::default())
    }
}

impl<C: governor::clock::Clock> Throttle<C> {
    pub fn with_clock(rate: Rate, clock: C) -> Throttle<C> {
        Throttle {
            limiter: governor::RateLimiter::direct_with_clock(rate.quota(), clock),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(n)` if one more may go now, `n` being how many were held back
    /// since the last one that went; `None` (and counted) if not.
    pub fn admit(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        if self.limiter.check().is_err() {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    #[test]
    fn a_throttle_lets_a_burst_through_then_counts_what_it_holds_back() {
        let clock = FakeRelativeClock::default();
        let t = Throttle::with_clock(Rate::of(5, 20), clock.clone());
        for _ in 0..20 {
            assert_eq!(t.admit(), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(t.admit(), None);
        }
        // One more is allowed every 200 ms; it tells how many were held back.
        clock.advance(Duration::from_millis(200));
        assert_eq!(t.admit(), Some(100));
        assert_eq!(t.admit(), None);
        clock.advance(Duration::from_secs(1));
        assert_eq!(t.admit(), Some(1));
    }
}
