//! What hookrelay tells operators.
//!
//! - [`metrics`]: the Prometheus registry; labels are bounded (routes and
//!   targets that exist, fixed sets of reasons, outcomes and states; never
//!   event ids or URLs).
//! - [`log`]: log output on a terminal, under systemd, or as JSON lines.

pub mod log;
pub mod metrics;

pub use metrics::{EventTotals, Metrics, TargetLabel};
