//! Delivery: from a pending delivery in the store to a signed request at a
//! receiver, and what its answer means.
//!
//! - [`dispatch`]: the scheduler; claims due deliveries lane by lane and
//!   runs each attempt.
//! - [`lane`]: a target's bounds on work (concurrency, rate, claimed work),
//!   its circuit breaker and counters.
//! - [`policy`]: timeouts, attempts, backoff, success ranges (`[delivery]`
//!   and each target's overrides).
//! - [`shape`]: the body a target receives (original, XML, template).
//! - [`request`]: the outbound request, with the Standard Webhooks headers.
//! - [`sign`]: Standard Webhooks secrets and signatures.
//! - [`egress`]: the outbound client and the egress guard.
//!
//! Invariants: a delivery is attempted only after the store moved it to
//! `in_flight`, and every attempt is recorded with what follows (succeeded,
//! retry at a time, dead); the signature covers exactly the bytes sent.
//! Only `dispatch` talks to the store; the modules below it see its
//! records (an event, an attempt, counters) and nothing of the store
//! itself or of the configuration file.

pub mod dispatch;
pub mod egress;
pub mod lane;
pub mod policy;
pub mod request;
pub mod shape;
pub mod sign;
