//! Token-bucket rates: per source at ingest, per target for deliveries.

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
