//! The throwaway PostgreSQL 15 server of the tests (`tests/common/postgres.rs`),
//! reused as it is for the fleet section (h): a fresh cluster in a temp dir,
//! loopback only, fsync and synchronous_commit on, run as `nobody` when the
//! bench runs as root, and stopped (its temp dir removed) when the
//! `Postgres` drops or this process ends, however it ends.
//!
//! The harness reaches two items of its parent module, `super::binary::free_port`
//! and `super::DEADLINE`; this module is that parent.

use std::time::Duration;

#[path = "../../tests/common/postgres.rs"]
// The tests use more of the harness (stop, the shared server) than (h) does.
#[allow(dead_code)]
mod postgres;

pub(crate) use postgres::Postgres;

/// How long any step of the harness (initdb, a start, a stop, CREATE
/// DATABASE) may take: the tests' bound.
const DEADLINE: Duration = Duration::from_secs(20);

mod binary {
    pub(super) use crate::procs::free_port;
}
