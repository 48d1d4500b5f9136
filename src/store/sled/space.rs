//! Room on disk: whether the store may take new events, and why not.
//!
//! Two limits, both checked before anything is acknowledged:
//! - **The disk.** Ingest stops while the filesystem has less than
//!   [`MIN_FREE_BYTES`] free, so sled normally never meets `ENOSPC`. Beside
//!   the store a [`RESERVE_FILE`] of [`RESERVE_BYTES`] is kept; when the
//!   disk fills anyway (another process filled it), the reserve is given
//!   up, so deliveries, which free space, can still be recorded. It is
//!   written again once there is room.
//! - **`store.max_disk_bytes`.** sled's files never shrink: what retention
//!   removes becomes room sled reuses. So the measure is the files' size
//!   less that room (a credit retention adds to and new events use first),
//!   plus what was accepted since the last measure beyond the credit. At
//!   nine tenths of the limit ingest stops until retention has made room:
//!   the last tenth is for what deliveries and retention write meanwhile
//!   (sled logs removals too, and grows in 512 KiB segments). The measure
//!   moves with every event, so it passes that mark by one event at most.
//!
//! Every change of state is logged once, not per refused request.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::store::StoreError;

/// Ingest stops while the disk has less than this free.
pub const MIN_FREE_BYTES: u64 = 16 << 20;
/// Space held in reserve for deliveries when the disk fills.
pub const RESERVE_BYTES: u64 = 16 << 20;
/// The reserve's file, in the store's directory.
pub const RESERVE_FILE: &str = "hookrelay.reserve";
/// Bytes on disk per byte of record, roughly (sled's log and indexes).
const AMPLIFICATION: u64 = 2;

/// Why the store refuses new events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The filesystem is (nearly) full.
    DiskFull { free: u64 },
    /// `store.max_disk_bytes` is reached.
    Full { used: u64, limit: u64 },
    /// sled failed a write; the store is being opened again.
    Broken(String),
}

impl Refusal {
    pub(super) fn error(&self) -> StoreError {
        match self {
            Refusal::DiskFull { free } => StoreError::DiskFull { free: *free },
            Refusal::Full { used, limit } => StoreError::Full {
                used: *used,
                limit: *limit,
            },
            Refusal::Broken(reason) => StoreError::Unavailable(reason.clone()),
        }
    }

    /// The same kind of refusal (figures aside), for logging changes only.
    fn same_kind(&self, other: &Refusal) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The store's room, measured every second and estimated in between.
pub(super) struct Space {
    dir: PathBuf,
    limit: u64,
    /// The store's files at the last measure, the reserve not counted.
    files: AtomicU64,
    /// Free on the filesystem at the last measure.
    free: AtomicU64,
    /// Accepted since the last measure (estimated bytes on disk).
    unmeasured: AtomicU64,
    /// Of those, what the credit did not cover.
    unmeasured_growth: AtomicU64,
    /// Purged bytes sled can reuse, less what new events used of them.
    credit: AtomicI64,
    refusal: Mutex<Option<Refusal>>,
}

impl Space {
    pub(super) fn new(dir: &Path, limit: u64) -> Space {
        Space {
            dir: dir.to_path_buf(),
            limit,
            files: AtomicU64::new(0),
            free: AtomicU64::new(u64::MAX),
            unmeasured: AtomicU64::new(0),
            unmeasured_growth: AtomicU64::new(0),
            credit: AtomicI64::new(0),
            refusal: Mutex::new(None),
        }
    }

    /// Whether an event of about `bytes` may be taken now.
    pub(super) fn admit(&self, bytes: u64) -> Result<(), StoreError> {
        if let Some(r) = self.refusal() {
            return Err(r.error());
        }
        let est = bytes.saturating_mul(AMPLIFICATION);
        let pending = self.unmeasured.fetch_add(est, Ordering::Relaxed) + est;
        let free = self.free.load(Ordering::Relaxed);
        if free.saturating_sub(pending) < MIN_FREE_BYTES {
            let r = Refusal::DiskFull {
                free: free.saturating_sub(pending),
            };
            self.set(Some(r.clone()));
            return Err(r.error());
        }
        if self.limit > 0 {
            // Room retention made is used first; what it does not cover
            // grows the files.
            let mut took = 0;
            let _ = self
                .credit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    took = c.clamp(0, est as i64);
                    Some(c - took)
                });
            let grows = est - took as u64;
            let used =
                self.used(self.unmeasured_growth.fetch_add(grows, Ordering::Relaxed) + grows);
            if used >= self.threshold() {
                let r = Refusal::Full {
                    used,
                    limit: self.limit,
                };
                self.set(Some(r.clone()));
                return Err(r.error());
            }
        }
        Ok(())
    }

    /// Where ingest stops: nine tenths of the limit, so that what
    /// deliveries and retention write meanwhile (sled logs removals too)
    /// keeps the files within the limit.
    fn threshold(&self) -> u64 {
        self.limit - self.limit / 10
    }

    /// The store's size as the limit counts it: the files, less the room
    /// sled can reuse, plus `growth` not yet measured.
    fn used(&self, growth: u64) -> u64 {
        let credit = self.credit.load(Ordering::Relaxed).max(0) as u64;
        (self.files.load(Ordering::Relaxed) + growth).saturating_sub(credit)
    }

    /// Retention removed about `bytes` of records.
    pub(super) fn purged(&self, bytes: u64) {
        self.credit.fetch_add(
            bytes.saturating_mul(AMPLIFICATION) as i64,
            Ordering::Relaxed,
        );
    }

    /// Purged room not yet used by new events.
    #[cfg(test)]
    pub(super) fn credit(&self) -> i64 {
        self.credit.load(Ordering::Relaxed)
    }

    /// Measures the files and the free space; returns the files' size.
    pub(super) fn measure(&self) -> u64 {
        let files = dir_size(&self.dir);
        self.measured(files, free_space(&self.dir));
        files
    }

    /// Takes a measure: the files' size and the free space.
    fn measured(&self, files: u64, free: u64) {
        self.files.store(files, Ordering::Relaxed);
        self.free.store(free, Ordering::Relaxed);
        self.unmeasured.store(0, Ordering::Relaxed);
        self.unmeasured_growth.store(0, Ordering::Relaxed);
        // Credit beyond the files' size is not room.
        let cap = files.min(i64::MAX as u64) as i64;
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.min(cap)));
    }

    pub(super) fn files(&self) -> u64 {
        self.files.load(Ordering::Relaxed)
    }

    pub(super) fn free(&self) -> u64 {
        self.free.load(Ordering::Relaxed)
    }

    /// What the last measure says, `broken` aside.
    pub(super) fn assess(&self, broken: Option<String>) -> Option<Refusal> {
        if let Some(reason) = broken {
            return Some(Refusal::Broken(reason));
        }
        let free = self.free();
        if free < MIN_FREE_BYTES {
            return Some(Refusal::DiskFull { free });
        }
        let used = self.used(0);
        if self.limit > 0 && used >= self.threshold() {
            return Some(Refusal::Full {
                used,
                limit: self.limit,
            });
        }
        None
    }

    pub(super) fn refusal(&self) -> Option<Refusal> {
        self.refusal.lock().expect("lock poisoned").clone()
    }

    /// Records the state; logs it when it changed.
    pub(super) fn set(&self, now: Option<Refusal>) {
        let mut state = self.refusal.lock().expect("lock poisoned");
        let changed = match (&*state, &now) {
            (None, None) => false,
            (Some(a), Some(b)) => !a.same_kind(b),
            _ => true,
        };
        if changed {
            match &now {
                None => tracing::warn!("store: new events are accepted again"),
                Some(r) => {
                    tracing::error!(reason = %r.error(), "store: new events are refused (503) until there is room; deliveries go on")
                }
            }
        }
        *state = now;
    }

    /// Writes the reserve file if it is missing and the disk has room for
    /// it beside the free space ingest needs. Whether it exists now.
    pub(super) fn keep_reserve(&self) -> bool {
        let path = self.dir.join(RESERVE_FILE);
        if path.exists() {
            return true;
        }
        if self.free() < RESERVE_BYTES + MIN_FREE_BYTES {
            return false;
        }
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&path)?;
            // Real blocks (not a sparse file), so giving it up frees them.
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        })();
        match written {
            Ok(()) => {
                let free = self.free().saturating_sub(RESERVE_BYTES);
                self.free.store(free, Ordering::Relaxed);
                true
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                tracing::warn!(error = %e, "cannot write the store's disk reserve");
                false
            }
        }
    }

    /// Gives the reserve up (the disk is full); whether there was one.
    pub(super) fn release_reserve(&self) -> bool {
        let released = std::fs::remove_file(self.dir.join(RESERVE_FILE)).is_ok();
        if released {
            tracing::warn!(
                bytes = RESERVE_BYTES,
                "the disk is full: the store's reserve was given up so deliveries can go on"
            );
        }
        released
    }
}

/// Bytes used by the files under `dir` (sled keeps a flat tree: a log, a
/// snapshot or two, and a directory of blobs), the reserve not counted.
pub(super) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name() != RESERVE_FILE)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes an unprivileged process may still write on `dir`'s filesystem.
fn free_space(dir: &Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
        // Unknown: do not refuse on a guess.
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(limit: u64, files: u64, free: u64) -> Space {
        let s = Space::new(Path::new("/nonexistent"), limit);
        s.measured(files, free);
        s
    }

    #[test]
    fn the_limit_counts_what_was_accepted_since_the_last_measure() {
        let s = space(10_000_000, 8_000_000, u64::MAX);
        // 400 kB of events is 800 kB on disk: still under nine tenths.
        for _ in 0..4 {
            s.admit(100_000).unwrap();
        }
        // The next ones would pass the limit.
        assert!(matches!(s.admit(200_000), Err(StoreError::Full { .. })));
        assert!(matches!(s.refusal(), Some(Refusal::Full { .. })));
    }

    #[test]
    fn purged_room_lets_events_in_until_it_is_used_up() {
        let s = space(10_000_000, 9_000_000, u64::MAX);
        assert!(s.assess(None).is_some(), "at nine tenths with no credit");
        s.purged(50_000);
        assert_eq!(s.assess(None), None, "retention made room");
        s.admit(20_000).unwrap();
        s.admit(20_000).unwrap();
        assert!(s.admit(20_000).is_err(), "the credit is used up");
        // Files that grew past the limit (sled has not reused the room yet)
        // count less what retention removed.
        let s = space(1_000_000, 1_300_000, u64::MAX);
        assert!(s.assess(None).is_some());
        s.purged(400_000);
        s.measured(1_300_000, u64::MAX);
        assert_eq!(s.assess(None), None);
    }

    #[test]
    fn a_nearly_full_disk_refuses_and_a_freed_one_does_not() {
        let s = space(0, 1_000, MIN_FREE_BYTES + 1_000);
        assert!(matches!(s.admit(1_000), Err(StoreError::DiskFull { .. })));
        s.free.store(MIN_FREE_BYTES * 4, Ordering::Relaxed);
        s.set(s.assess(None));
        s.admit(1_000).unwrap();
    }
}
