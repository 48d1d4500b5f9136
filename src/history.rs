//! Delivery history for the console's charts: for each endpoint and for
//! the whole relay (the series [`ALL_SERIES`]), counts per minute for a day
//! and per hour for a week, kept in the store so a restart does not blank
//! them.
//!
//! History hooks into nothing: once a minute [`History::tick`] reads the
//! cumulative counters (each endpoint lane's, the ingest totals), takes
//! away the snapshot the last tick kept, and adds what moved to the minute
//! row and to the hour row that holds it (`Store::add_stats`). The overall
//! series gets a row every tick, with the gauges of that moment.
//!
//! Invariants:
//! - What moved between two ticks is written once: ticks take turns, and
//!   the snapshot moves on only after the rows are written, so a failed
//!   write is retried by the next tick.
//! - The first snapshot is taken when the history is made, from the
//!   counters the catalog loaded from the store, so a restart counts
//!   nothing twice. An endpoint that appears later counts from zero: a new
//!   endpoint starts with zero counters, and a removed one's went with it.
//! - A tick's counts go to the minute that holds the middle of the time
//!   since the last tick: at a minute boundary that is the minute that just
//!   ended, whether the timer fired a little early or late, and a second
//!   tick within a minute adds to the current one. Readers add the counts
//!   not yet written to the bucket a tick would write them to now, so a
//!   chart shows an attempt as soon as it is counted, and never twice.
//! - Bounded: after a tick the store holds at most [`MINUTES_KEPT`] minute
//!   rows and [`HOURS_KEPT`] hour rows of each series; memory holds one
//!   snapshot per endpoint that exists.
//!
//! A crash loses what moved since the last tick (at most a minute), and
//! rows written since sled's last flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, RwLock};

use crate::catalog::Catalog;
use crate::shutdown::stopped;
use crate::store::{
    now_ms, Counters, Gauges, Resolution, StatRow, StatValues, State, Store, StoreError, ALL_SERIES,
};
use crate::telemetry::{EventTotals, Metrics};

/// Minute rows kept of each series: a day.
pub const MINUTES_KEPT: usize = 1440;
/// Hour rows kept of each series: a week.
pub const HOURS_KEPT: usize = 168;

/// One bucket of a series, as a chart draws it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub start_ms: u64,
    pub values: StatValues,
}

/// The relay's delivery history: what it samples, and where it keeps it.
pub struct History {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// The last tick's snapshot. A tick holds it for writing from before it
    /// reads the counters until its rows are written, so a reader sees rows
    /// and snapshot of the same moment.
    last: RwLock<Snapshot>,
}

/// Cumulative counters at one moment.
struct Snapshot {
    at_ms: u64,
    events: EventTotals,
    /// By endpoint id: only endpoints that existed then.
    lanes: HashMap<String, LaneTotals>,
}

/// The counters of a lane that history differences.
#[derive(Debug, Clone, Copy, Default)]
struct LaneTotals {
    calls: u64,
    tests: u64,
    succeeded: u64,
    failed: u64,
    dead: u64,
    duration_ms: u64,
}

impl History {
    pub fn new(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
    ) -> Arc<History> {
        History::starting_at(store, catalog, metrics, now_ms())
    }

    fn starting_at(
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        now_ms: u64,
    ) -> Arc<History> {
        let first = Snapshot::read(&catalog, &metrics, now_ms);
        Arc::new(History {
            store,
            catalog,
            metrics,
            last: RwLock::new(first),
        })
    }

    /// Writes what moved since the last tick to its minute and hour rows,
    /// then removes rows past [`MINUTES_KEPT`] and [`HOURS_KEPT`]. Called
    /// once a minute; a late or second call counts nothing twice.
    pub async fn tick(&self, now_ms: u64) -> Result<(), StoreError> {
        let mut last = self.last.write().await;
        let now = Snapshot::read(&self.catalog, &self.metrics, now_ms);
        let minute = Resolution::Minute.bucket(midpoint(last.at_ms, now_ms));
        let hour = Resolution::Hour.bucket(minute);
        let mut rows = Vec::new();
        for (series, values) in self.moved(&last, &now) {
            rows.push(StatRow {
                series: series.clone(),
                resolution: Resolution::Minute,
                start_ms: minute,
                values: values.clone(),
            });
            rows.push(StatRow {
                series,
                resolution: Resolution::Hour,
                start_ms: hour,
                values,
            });
        }
        self.store.add_stats(&rows).await?;
        // Endpoints that are gone leave the snapshot here.
        *last = now;
        drop(last);
        let (minutes_before, hours_before) = cutoffs(now_ms);
        self.store.purge_stats(minutes_before, hours_before).await?;
        Ok(())
    }

    /// Ticks at each minute boundary until `shutdown`, and once more then
    /// (the last minute is not lost). A failure is logged when it starts
    /// and when it ends, not every minute.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let width = Resolution::Minute.width_ms();
        let mut failing = false;
        loop {
            let wait = Duration::from_millis(width - now_ms() % width);
            let stopping = tokio::select! {
                _ = tokio::time::sleep(wait) => false,
                _ = stopped(&mut shutdown) => true,
            };
            match self.tick(now_ms()).await {
                Err(e) if !failing => {
                    tracing::error!(error = %e, "cannot write the delivery history; it is retried every minute");
                    failing = true;
                }
                Ok(()) if failing => {
                    tracing::info!("the delivery history is written again");
                    failing = false;
                }
                _ => {}
            }
            if stopping {
                return;
            }
        }
    }

    /// `series`' last `n` minutes (at most [`MINUTES_KEPT`]), oldest first,
    /// ending with the current one.
    pub async fn minutes(
        &self,
        series: &str,
        n: usize,
        now_ms: u64,
    ) -> Result<Vec<Point>, StoreError> {
        self.points(series, Resolution::Minute, n.min(MINUTES_KEPT), now_ms)
            .await
    }

    /// `series`' last `n` hours (at most [`HOURS_KEPT`]), oldest first,
    /// ending with the current one.
    pub async fn hours(
        &self,
        series: &str,
        n: usize,
        now_ms: u64,
    ) -> Result<Vec<Point>, StoreError> {
        self.points(series, Resolution::Hour, n.min(HOURS_KEPT), now_ms)
            .await
    }

    /// `n` consecutive buckets ending with the one that holds `now_ms`:
    /// the stored rows, zero where there is none, plus what the next tick
    /// will add to its bucket.
    async fn points(
        &self,
        series: &str,
        resolution: Resolution,
        n: usize,
        now_ms: u64,
    ) -> Result<Vec<Point>, StoreError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let width = resolution.width_ms();
        let current = resolution.bucket(now_ms);
        let first = current.saturating_sub((n as u64 - 1) * width);
        let mut points: Vec<Point> = (0..n as u64)
            .map(|i| first + i * width)
            .take_while(|&start| start <= current)
            .map(|start_ms| Point {
                start_ms,
                values: StatValues::default(),
            })
            .collect();
        let last = self.last.read().await;
        for row in self
            .store
            .stats(series, resolution, first, current + width)
            .await?
        {
            if let Some(values) = bucket(&mut points, width, row.start_ms) {
                values.add(&row.values);
            }
        }
        let minute = Resolution::Minute.bucket(midpoint(last.at_ms, now_ms));
        if let Some(v) = bucket(&mut points, width, resolution.bucket(minute)) {
            v.add(&self.unwritten(&last, series, now_ms));
        }
        Ok(points)
    }

    /// What the next tick will add to `series`. One endpoint's reads only
    /// its own lane; the whole relay's reads every lane.
    fn unwritten(&self, last: &Snapshot, series: &str, now_ms: u64) -> StatValues {
        if series == ALL_SERIES {
            let now = Snapshot::read(&self.catalog, &self.metrics, now_ms);
            return self.moved(last, &now).swap_remove(0).1;
        }
        match self.catalog.get(series) {
            Some(t) => LaneTotals::of(&t.lane.counters())
                .since(&last.lanes.get(series).copied().unwrap_or_default()),
            None => StatValues::default(),
        }
    }

    /// What moved from `before` to `now`: the overall series first, always,
    /// with the gauges now; then each endpoint with a count that moved.
    fn moved(&self, before: &Snapshot, now: &Snapshot) -> Vec<(String, StatValues)> {
        let mut all = StatValues {
            events: since(now.events.accepted, before.events.accepted),
            duplicates: since(now.events.duplicate, before.events.duplicate),
            rejected: since(now.events.rejected, before.events.rejected),
            gauges: self.gauges(),
            ..StatValues::default()
        };
        let mut lanes = Vec::new();
        for (id, totals) in &now.lanes {
            let was = before.lanes.get(id).copied().unwrap_or_default();
            let values = totals.since(&was);
            if !values.is_empty() {
                all.add(&values);
                lanes.push((id.clone(), values));
            }
        }
        let mut out = vec![(ALL_SERIES.to_string(), all)];
        out.extend(lanes);
        out
    }

    /// `None` while the store is still counting its deliveries.
    fn gauges(&self) -> Option<Gauges> {
        let open = self
            .catalog
            .all()
            .iter()
            .filter(|t| t.lane.circuit_state() == "open")
            .count();
        Some(Gauges {
            pending: self.store.count(State::Pending)?,
            in_flight: self.store.count(State::InFlight)?,
            dead: self.store.count(State::Dead)?,
            open_circuits: open as u64,
            store_bytes: self.store.disk_bytes(),
        })
    }
}

impl Snapshot {
    fn read(catalog: &Catalog, metrics: &Metrics, at_ms: u64) -> Snapshot {
        let lanes = catalog
            .all()
            .iter()
            .map(|t| (t.spec.key.clone(), LaneTotals::of(&t.lane.counters())))
            .collect();
        Snapshot {
            at_ms,
            events: metrics.events_total(),
            lanes,
        }
    }
}

impl LaneTotals {
    fn of(c: &Counters) -> LaneTotals {
        LaneTotals {
            calls: c.calls,
            tests: c.tests,
            succeeded: c.succeeded,
            failed: c.failed,
            dead: c.dead,
            duration_ms: c.duration_ms,
        }
    }

    /// What moved since `was`; test sends are not attempts.
    fn since(&self, was: &LaneTotals) -> StatValues {
        StatValues {
            succeeded: since(self.succeeded, was.succeeded),
            failed: since(self.failed, was.failed),
            dead: since(self.dead, was.dead),
            attempts: since(self.calls, was.calls).saturating_sub(since(self.tests, was.tests)),
            duration_ms: since(self.duration_ms, was.duration_ms),
            ..StatValues::default()
        }
    }
}

/// How far a cumulative counter moved. One that went back was started
/// again (its endpoint made anew with the same id): all of it is new.
fn since(now: u64, was: u64) -> u64 {
    now.checked_sub(was).unwrap_or(now)
}

/// The values of the point that starts at `start_ms`, if it is one of
/// `points` (consecutive buckets `width` apart).
fn bucket(points: &mut [Point], width: u64, start_ms: u64) -> Option<&mut StatValues> {
    let first = points.first()?.start_ms;
    let i = start_ms.checked_sub(first)? / width;
    points.get_mut(i as usize).map(|p| &mut p.values)
}

fn midpoint(a: u64, b: u64) -> u64 {
    a.min(b) + a.abs_diff(b) / 2
}

/// Rows that start before these (minutes, hours) are past what is kept:
/// the window a reader may ask for ends with the bucket that holds `now_ms`.
fn cutoffs(now_ms: u64) -> (u64, u64) {
    let keep = |resolution: Resolution, kept: usize| {
        let width = resolution.width_ms();
        resolution
            .bucket(now_ms)
            .saturating_sub((kept as u64 - 1) * width)
    };
    (
        keep(Resolution::Minute, MINUTES_KEPT),
        keep(Resolution::Hour, HOURS_KEPT),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::store::{Attempt, SledStore, StoreConfig};

    const MINUTE: u64 = 60_000;
    /// A Monday, 00:00 UTC: simulated time starts here.
    const START: u64 = 1_700_438_400_000;

    /// Two endpoints, `a` and `b`, on route `r`.
    fn config(targets: &[&str]) -> Config {
        let mut text = String::from("[[routes]]\nname = \"r\"\npath = \"/r\"\n");
        for t in targets {
            text.push_str(&format!(
                "[[routes.targets]]\nid = \"{t}\"\nname = \"{t}\"\nurl = \"http://{t}.example/hook\"\n"
            ));
        }
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    /// A relay's parts over a sled store in `dir`, its history started at `now_ms`.
    struct Parts {
        store: Arc<dyn Store>,
        catalog: Arc<Catalog>,
        metrics: Arc<Metrics>,
        history: Arc<History>,
    }

    async fn open(dir: &Path, targets: &[&str], now_ms: u64) -> Parts {
        let store: Arc<dyn Store> = Arc::new(
            SledStore::open(&StoreConfig {
                path: dir.to_path_buf(),
                ..StoreConfig::default()
            })
            .unwrap(),
        );
        let metrics = Metrics::new(&*store);
        let catalog = Catalog::new(&config(targets), store.clone()).await.unwrap();
        let history = History::starting_at(store.clone(), catalog.clone(), metrics.clone(), now_ms);
        Parts {
            store,
            catalog,
            metrics,
            history,
        }
    }

    impl Parts {
        /// `n` attempts to `target`, each taking 10 ms; `failed` of them fail.
        fn attempts(&self, target: &str, n: u64, failed: u64) {
            let lane = &self.catalog.get(target).unwrap().lane;
            for i in 0..n {
                let ok = i >= failed;
                let attempt = Attempt {
                    at_ms: START,
                    duration_ms: 10,
                    status: Some(if ok { 200 } else { 500 }),
                    error: None,
                    excerpt: String::new(),
                    request_headers: Vec::new(),
                };
                lane.record(&attempt, ok, false);
            }
        }

        async fn rows(&self, series: &str, resolution: Resolution) -> Vec<StatRow> {
            self.store
                .stats(series, resolution, 0, u64::MAX)
                .await
                .unwrap()
        }
    }

    fn succeeded(points: &[Point]) -> Vec<u64> {
        points.iter().map(|p| p.values.succeeded).collect()
    }

    #[tokio::test]
    async fn a_week_of_minutes_never_holds_more_than_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let relay = open(dir.path(), &["a", "b"], START).await;
        // A week and three hours of minutes: both resolutions are purged.
        let ticks = 7 * 24 * 60 + 180;
        for m in 1..=ticks {
            // `a` is busy every minute, `b` every seventh; ingest too.
            relay.attempts("a", 3, 1);
            if m % 7 == 0 {
                relay.attempts("b", 1, 0);
            }
            relay.metrics.accepted("r");
            // Ticks fire a little late, or early.
            let jitter = [0, 40, 1_500, -30][m as usize % 4];
            let now = (START + m * MINUTE).saturating_add_signed(jitter);
            relay.history.tick(now).await.unwrap();
            if m % 360 == 0 {
                for series in [ALL_SERIES, "a", "b"] {
                    let minutes = relay.rows(series, Resolution::Minute).await.len();
                    let hours = relay.rows(series, Resolution::Hour).await.len();
                    assert!(minutes <= MINUTES_KEPT, "{series}: {minutes} minutes");
                    assert!(hours <= HOURS_KEPT, "{series}: {hours} hours");
                }
            }
        }
        // The last tick was on the hour: the day and the week before it,
        // but for the bucket under way, which is not written yet.
        assert_eq!(
            relay.rows("a", Resolution::Minute).await.len(),
            MINUTES_KEPT - 1
        );
        assert_eq!(
            relay.rows(ALL_SERIES, Resolution::Hour).await.len(),
            HOURS_KEPT - 1
        );

        // Each hour whose minutes are all kept is their sum.
        let minutes = relay.rows(ALL_SERIES, Resolution::Minute).await;
        let hours = relay.rows(ALL_SERIES, Resolution::Hour).await;
        let mut checked = 0;
        for hour in hours.iter().filter(|h| h.start_ms >= minutes[0].start_ms) {
            let mut sum = StatValues::default();
            for m in minutes
                .iter()
                .filter(|m| Resolution::Hour.bucket(m.start_ms) == hour.start_ms)
            {
                sum.add(&m.values);
            }
            assert_eq!(sum, hour.values, "hour {}", hour.start_ms);
            assert_eq!((sum.events, sum.failed), (60, 60));
            checked += 1;
        }
        assert_eq!(checked, 23);

        // A reader gets the buckets it asks for (up to the cap), the one
        // under way with what is not written yet.
        relay.attempts("a", 3, 1);
        let now = START + ticks * MINUTE + 30_000;
        let day = relay.history.minutes("a", 2000, now).await.unwrap();
        assert_eq!(day.len(), MINUTES_KEPT);
        assert_eq!(day.last().unwrap().start_ms, START + ticks * MINUTE);
        assert!(day
            .windows(2)
            .all(|w| w[1].start_ms == w[0].start_ms + MINUTE));
        assert!(succeeded(&day).iter().all(|&n| n == 2), "two a minute");
        let week = relay.history.hours("b", 1000, now).await.unwrap();
        assert_eq!(week.len(), HOURS_KEPT);
        assert_eq!(week.last().unwrap().start_ms, Resolution::Hour.bucket(now));
        let b: u64 = succeeded(&week).iter().sum();
        let kept = (1..=ticks)
            .filter(|m| m % 7 == 0 && START + (m - 1) * MINUTE >= week[0].start_ms)
            .count();
        assert_eq!(b, kept as u64);
    }

    #[tokio::test]
    async fn an_attempt_shows_in_the_current_minute_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let relay = open(dir.path(), &["a"], START + 1_000).await;
        relay.attempts("a", 2, 0);
        relay.metrics.accepted("r");
        let now = START + 20_000;
        let minutes = relay.history.minutes("a", 3, now).await.unwrap();
        assert_eq!(minutes[2].start_ms, START);
        assert_eq!(succeeded(&minutes), [0, 0, 2]);
        let all = relay.history.minutes(ALL_SERIES, 1, now).await.unwrap();
        assert_eq!((all[0].values.events, all[0].values.succeeded), (1, 2));
        assert!(all[0].values.gauges.is_some(), "the gauges now");

        // The tick at the boundary writes it where the chart showed it.
        relay.history.tick(START + MINUTE + 3).await.unwrap();
        let now = START + MINUTE + 10_000;
        let minutes = relay.history.minutes("a", 3, now).await.unwrap();
        assert_eq!(succeeded(&minutes), [0, 2, 0]);
        let hours = relay.history.hours("a", 2, now).await.unwrap();
        assert_eq!(succeeded(&hours), [0, 2]);
        assert_eq!(hours[0].values.duration_ms, 0);
        assert_eq!(hours[1].values.duration_ms, 20);
    }

    #[tokio::test]
    async fn late_or_repeated_ticks_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let relay = open(dir.path(), &["a"], START).await;
        relay.attempts("a", 1, 0);
        relay.history.tick(START + MINUTE + 5).await.unwrap();
        relay.history.tick(START + MINUTE + 6).await.unwrap();
        // A second tick within a minute adds to that minute.
        relay.attempts("a", 1, 0);
        relay.history.tick(START + MINUTE + 30_000).await.unwrap();
        // A tick minutes late puts all it found in one minute between.
        relay.attempts("a", 1, 0);
        relay
            .history
            .tick(START + 5 * MINUTE + 20_000)
            .await
            .unwrap();
        let now = START + 5 * MINUTE + 30_000;
        let minutes = relay.history.minutes("a", 6, now).await.unwrap();
        assert_eq!(succeeded(&minutes), [1, 1, 0, 1, 0, 0]);
        let hours = relay.history.hours("a", 1, now).await.unwrap();
        assert_eq!(succeeded(&hours), [3]);
    }

    #[tokio::test]
    async fn a_restart_counts_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        {
            let relay = open(dir.path(), &["a"], START).await;
            relay.attempts("a", 3, 0);
            relay.history.tick(START + MINUTE).await.unwrap();
            relay.catalog.save_counters().await.unwrap();
            relay.store.close().await.unwrap();
        }
        let relay = open(dir.path(), &["a"], START + MINUTE + 10).await;
        let a = relay.catalog.get("a").unwrap();
        assert_eq!(a.lane.counters().succeeded, 3, "counters were loaded");
        relay.attempts("a", 1, 0);
        relay.history.tick(START + 2 * MINUTE).await.unwrap();
        let now = START + 2 * MINUTE + 10;
        let minutes = relay.history.minutes("a", 3, now).await.unwrap();
        assert_eq!(succeeded(&minutes), [3, 1, 0]);
    }

    #[tokio::test]
    async fn endpoints_that_are_gone_leave_the_snapshot_and_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let relay = open(dir.path(), &["a", "b"], START).await;
        relay.attempts("b", 1, 0);
        relay.history.tick(START + MINUTE).await.unwrap();
        assert_eq!(relay.rows("b", Resolution::Minute).await.len(), 1);

        relay.catalog.reload(&config(&["a"])).await.unwrap();
        relay.history.tick(START + 2 * MINUTE).await.unwrap();
        let kept: Vec<String> = relay
            .history
            .last
            .read()
            .await
            .lanes
            .keys()
            .cloned()
            .collect();
        assert_eq!(kept, ["a"]);
        assert!(relay.rows("b", Resolution::Minute).await.is_empty());
        assert!(relay.rows("b", Resolution::Hour).await.is_empty());
    }
}
