//! What hookrelay tells operators.
//!
//! - [`metrics`]: the Prometheus registry; labels are bounded (routes and
//!   targets that exist, fixed sets of reasons, outcomes and states; never
//!   event ids or URLs).
//! - [`exposition`]: the two text formats `/metrics` answers in;
//! - [`process`]: the standard `process_*` metrics, read from `/proc`.
//! - [`log`]: log output on a terminal, under systemd, or as JSON lines;
//!   [`log::Escaped`] prints what users supplied with its control
//!   characters escaped.

pub mod exposition;
pub mod log;
pub mod metrics;
pub mod process;

pub use exposition::Format;
pub use metrics::{EventTotals, Finished, Metrics};
