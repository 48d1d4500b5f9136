//! The `stats` tree: delivery history, one row per series, resolution and
//! bucket (`keys::stats_key`), so a chart reads one run of keys.
//!
//! Rows are added to in a transaction, so two adds to one row never lose
//! either; they are not synced (sled flushes them within half a second).
//! The tree stays small because its caller purges it by age; a series goes
//! with its endpoint (`delete_endpoint`).

use ::sled::transaction::ConflictableTransactionError;

use crate::store::sled::keys::{decode, encode, parse_stats_key, stats_key, stats_prefix};
use crate::store::sled::{tx_error, Sled};
use crate::store::{Resolution, StatRow, StatValues, StoreError};

impl Sled {
    pub fn add_stats(&self, rows: &[StatRow]) -> Result<(), StoreError> {
        self.check_room(0)?;
        self.stats
            .transaction(|tx| {
                for row in rows {
                    let key = stats_key(&row.series, row.resolution, row.start_ms);
                    let mut values: StatValues = match tx.get(&key)? {
                        Some(v) => {
                            decode("stats", &v).map_err(ConflictableTransactionError::Abort)?
                        }
                        None => StatValues::default(),
                    };
                    values.add(&row.values);
                    tx.insert(key, encode(&values))?;
                }
                Ok(())
            })
            .map_err(tx_error)
    }

    pub fn stats(
        &self,
        series: &str,
        resolution: Resolution,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<StatRow>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let from = stats_key(series, resolution, from_ms);
        let to = stats_key(series, resolution, to_ms);
        self.stats
            .range(from..to)
            .map(|item| {
                let (k, v) = item?;
                let (_, _, start_ms) = parse_stats_key(&k).ok_or_else(|| StoreError::Corrupt {
                    tree: "stats",
                    reason: "bad key".into(),
                })?;
                Ok(StatRow {
                    series: series.to_string(),
                    resolution,
                    start_ms,
                    values: decode("stats", &v)?,
                })
            })
            .collect()
    }

    /// Looks at each series in turn (a seek past the last one finds the
    /// next), and removes only the old end of each of its two runs.
    pub fn purge_stats(
        &self,
        minutes_before_ms: u64,
        hours_before_ms: u64,
    ) -> Result<usize, StoreError> {
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        let mut next: Vec<u8> = Vec::new();
        while let Some(item) = self.stats.range(next.as_slice()..).next() {
            let (k, _) = item?;
            let Some((series, _, _)) = parse_stats_key(&k) else {
                // Not a row: leave it, and go on after it.
                next = k.to_vec();
                next.push(0);
                continue;
            };
            for (resolution, before) in [
                (Resolution::Minute, minutes_before_ms),
                (Resolution::Hour, hours_before_ms),
            ] {
                let old = stats_key(series, resolution, 0)..stats_key(series, resolution, before);
                for key in self.stats.range(old).keys() {
                    batch.remove(key?);
                    removed += 1;
                }
            }
            // Every key of this series starts `series ‖ 0`; the next
            // series' keys sort after `series ‖ 1`.
            next = series.as_bytes().to_vec();
            next.push(1);
        }
        self.stats.apply_batch(batch)?;
        Ok(removed)
    }

    /// Removes every row of `series` (its endpoint is gone).
    pub(super) fn remove_series(&self, series: &str) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.stats.scan_prefix(stats_prefix(series)).keys() {
            batch.remove(key?);
        }
        self.stats.apply_batch(batch)?;
        Ok(())
    }
}
