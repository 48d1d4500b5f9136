//! Reads for operators, endpoints and counters, the inbound log, the
//! history, and retention.
//!
//! Listings look at no more rows than the caller's `scan` bound, in id
//! order, exactly as the embedded store does, so a page and its cursor
//! mean the same on both backends. Retention and the trims run in bounded
//! steps, each in a transaction that holds this schema's advisory lock for
//! that job: one relay of the fleet does a given step, the others skip it.

use std::collections::HashMap;

use bytes::Bytes;

use super::{col, corrupt, delivery_row, id_at, json, to_json, Cached, Inner, DELIVERY};
use crate::store::{
    now_ms, Attempt, Counters, Delivery, DeliveryId, EndpointRecord, Event, EventId, Gauges,
    Inbound, InboundFilter, InboundId, InboundPage, Page, Purged, Resolution, StatRow, StatValues,
    State, StoreError,
};

/// Most expired dedup keys removed by one step.
const DEDUP_STEP: i64 = 10_000;
/// Most history rows removed by one call (the next call goes on).
const STATS_STEP: i64 = 50_000;

fn resolution_code(r: Resolution) -> i16 {
    match r {
        Resolution::Minute => 0,
        Resolution::Hour => 1,
    }
}

// === events and deliveries ===

pub(super) async fn event(inner: &Inner, id: EventId) -> Result<Option<Event>, StoreError> {
    let c = inner.client().await?;
    let row = c
        .row_opt(
            "SELECT meta, body FROM events WHERE id = $1",
            &[&id.to_key().as_slice()],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some(Event {
        id,
        meta: json(col(&row, 0, "events")?, "events")?,
        body: Bytes::from(col::<Vec<u8>>(&row, 1, "events")?),
    }))
}

pub(super) async fn delivery(
    inner: &Inner,
    id: DeliveryId,
) -> Result<Option<Delivery>, StoreError> {
    let c = inner.client().await?;
    let row = c
        .row_opt(
            &format!("SELECT {DELIVERY} FROM deliveries WHERE id = $1"),
            &[&id.to_key().as_slice()],
        )
        .await
        .map_err(|e| inner.db(e))?;
    row.map(|r| delivery_row(&r).map(|(_, d)| d)).transpose()
}

pub(super) async fn deliveries_of(
    inner: &Inner,
    event: EventId,
) -> Result<Vec<(DeliveryId, Delivery)>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            &format!("SELECT {DELIVERY} FROM deliveries WHERE event = $1 ORDER BY id"),
            &[&event.to_key().as_slice()],
        )
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter().map(delivery_row).collect()
}

pub(super) async fn attempts(inner: &Inner, id: DeliveryId) -> Result<Vec<Attempt>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            "SELECT record FROM attempts WHERE delivery = $1 ORDER BY n",
            &[&id.to_key().as_slice()],
        )
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| json(col(r, 0, "attempts")?, "attempts"))
        .collect()
}

pub(super) async fn list_deliveries(
    inner: &Inner,
    state: Option<State>,
    target: Option<&str>,
    after: Option<DeliveryId>,
    limit: usize,
    scan: usize,
) -> Result<Page, StoreError> {
    let after = after.map(|a| a.to_key().to_vec());
    let c = inner.client().await?;
    // One row past the scan bound tells whether the scan stopped early.
    let rows = c
        .rows(
            &format!(
                "SELECT {DELIVERY} FROM deliveries WHERE ($1::bytea IS NULL OR id < $1) \
                 ORDER BY id DESC LIMIT $2"
            ),
            &[&after, &(scan as i64 + 1)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    Page::collect(rows.iter().map(delivery_row), state, target, limit, scan)
}

// === endpoints and counters ===

pub(super) async fn put_endpoint(inner: &Inner, e: &EndpointRecord) -> Result<(), StoreError> {
    let mut c = inner.client().await?;
    let tx = c.transaction().await.map_err(|e| inner.db(e))?;
    tx.exec(
        "INSERT INTO endpoints (id, record) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET record = excluded.record",
        &[&e.id, &to_json(e)],
    )
    .await
    .map_err(|e| inner.db(e))?;
    endpoints_changed(inner, &tx).await?;
    tx.commit().await.map_err(|e| inner.db(e))?;
    Ok(())
}

/// Within a transaction that changed the endpoints: the fleet is told
/// when it commits, and the generation that the poller compares moves.
async fn endpoints_changed(
    inner: &Inner,
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<(), StoreError> {
    let row = tx
        .row(
            "INSERT INTO generations (name, value) VALUES ('endpoints', 1) \
             ON CONFLICT (name) DO UPDATE SET value = generations.value + 1 RETURNING value",
            &[],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let generation: i64 = col(&row, 0, "generations")?;
    inner
        .endpoints_seen
        .fetch_max(generation, std::sync::atomic::Ordering::Relaxed);
    tx.exec(
        "SELECT pg_notify($1, $2)",
        &[
            &inner.channel,
            &format!("{}:{}", inner.instance, super::ENDPOINTS),
        ],
    )
    .await
    .map_err(|e| inner.db(e))?;
    Ok(())
}

pub(super) async fn endpoints(inner: &Inner) -> Result<Vec<EndpointRecord>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows("SELECT record FROM endpoints ORDER BY id", &[])
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| json(col(r, 0, "endpoints")?, "endpoints"))
        .collect()
}

pub(super) async fn delete_endpoint(inner: &Inner, id: &str) -> Result<bool, StoreError> {
    let mut c = inner.client().await?;
    let tx = c.transaction().await.map_err(|e| inner.db(e))?;
    let n = tx
        .exec("DELETE FROM endpoints WHERE id = $1", &[&id])
        .await
        .map_err(|e| inner.db(e))?;
    tx.exec("DELETE FROM counters WHERE target = $1", &[&id])
        .await
        .map_err(|e| inner.db(e))?;
    tx.exec("DELETE FROM stats WHERE series = $1", &[&id])
        .await
        .map_err(|e| inner.db(e))?;
    if n > 0 {
        endpoints_changed(inner, &tx).await?;
    }
    tx.commit().await.map_err(|e| inner.db(e))?;
    Ok(n > 0)
}

/// The columns counters are read from, in the order [`counters_row`] takes.
const COUNTERS: &str =
    "calls, succeeded, failed, dead, tests, duration_ms, last_status, last_error, last_at_ms";

fn counters_row(r: &tokio_postgres::Row, first: usize) -> Result<Counters, StoreError> {
    const T: &str = "counters";
    let n = |i: usize| col::<i64>(r, first + i, T).map(|v| v.max(0) as u64);
    Ok(Counters {
        calls: n(0)?,
        succeeded: n(1)?,
        failed: n(2)?,
        dead: n(3)?,
        tests: n(4)?,
        duration_ms: n(5)?,
        last_status: col::<Option<i32>>(r, first + 6, T)?.map(|s| s.clamp(0, 999) as u16),
        last_error: col(r, first + 7, T)?,
        last_at_ms: col::<Option<i64>>(r, first + 8, T)?.map(|v| v.max(0) as u64),
    })
}

/// The parameters `$2`… of a counters row.
fn counters_params(c: &Counters) -> [Box<dyn tokio_postgres::types::ToSql + Sync + Send>; 9] {
    [
        Box::new(c.calls as i64),
        Box::new(c.succeeded as i64),
        Box::new(c.failed as i64),
        Box::new(c.dead as i64),
        Box::new(c.tests as i64),
        Box::new(c.duration_ms as i64),
        Box::new(c.last_status.map(i32::from)),
        Box::new(c.last_error.clone()),
        Box::new(c.last_at_ms.map(|v| v as i64)),
    ]
}

pub(super) async fn counters(inner: &Inner, target: &str) -> Result<Counters, StoreError> {
    let c = inner.client().await?;
    let row = c
        .row_opt(
            &format!("SELECT {COUNTERS} FROM counters WHERE target = $1"),
            &[&target],
        )
        .await
        .map_err(|e| inner.db(e))?;
    match row {
        Some(r) => counters_row(&r, 0),
        None => Ok(Counters::default()),
    }
}

pub(super) async fn all_counters(inner: &Inner) -> Result<Vec<(String, Counters)>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            &format!("SELECT target, {COUNTERS} FROM counters ORDER BY target"),
            &[],
        )
        .await
        .map_err(|e| inner.db(e))?;
    rows.iter()
        .map(|r| Ok((col(r, 0, "counters")?, counters_row(r, 1)?)))
        .collect()
}

/// Writes `counters` over the saved ones (`add`: adds to them instead);
/// returns what is saved now.
async fn write_counters(
    inner: &Inner,
    target: &str,
    counters: &Counters,
    add: bool,
) -> Result<Counters, StoreError> {
    let set = if add {
        "calls = counters.calls + excluded.calls, \
         succeeded = counters.succeeded + excluded.succeeded, \
         failed = counters.failed + excluded.failed, \
         dead = counters.dead + excluded.dead, \
         tests = counters.tests + excluded.tests, \
         duration_ms = counters.duration_ms + excluded.duration_ms, \
         last_status = CASE WHEN excluded.last_at_ms >= coalesce(counters.last_at_ms, 0) \
           THEN excluded.last_status ELSE counters.last_status END, \
         last_error = CASE WHEN excluded.last_at_ms >= coalesce(counters.last_at_ms, 0) \
           THEN excluded.last_error ELSE counters.last_error END, \
         last_at_ms = greatest(counters.last_at_ms, excluded.last_at_ms)"
    } else {
        "calls = excluded.calls, succeeded = excluded.succeeded, failed = excluded.failed, \
         dead = excluded.dead, tests = excluded.tests, duration_ms = excluded.duration_ms, \
         last_status = excluded.last_status, last_error = excluded.last_error, \
         last_at_ms = excluded.last_at_ms"
    };
    let boxed = counters_params(counters);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&target];
    params.extend(
        boxed
            .iter()
            .map(|b| &**b as &(dyn tokio_postgres::types::ToSql + Sync)),
    );
    let c = inner.client().await?;
    let row = c
        .row(
            &format!(
                "INSERT INTO counters (target, {COUNTERS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (target) DO UPDATE SET {set} RETURNING {COUNTERS}"
            ),
            &params,
        )
        .await
        .map_err(|e| inner.db(e))?;
    counters_row(&row, 0)
}

pub(super) async fn save_counters(
    inner: &Inner,
    target: &str,
    counters: &Counters,
) -> Result<(), StoreError> {
    write_counters(inner, target, counters, false)
        .await
        .map(|_| ())
}

pub(super) async fn add_counters(
    inner: &Inner,
    target: &str,
    delta: &Counters,
) -> Result<Counters, StoreError> {
    write_counters(inner, target, delta, true).await
}

// === the inbound log ===

pub(super) async fn record_inbound(inner: &Inner, r: &Inbound) -> Result<(), StoreError> {
    let id = inner.next_ids(0).0;
    let c = inner.client().await?;
    c.exec(
        "INSERT INTO inbound (id, record) VALUES ($1, $2)",
        &[&id.to_key().as_slice(), &to_json(r)],
    )
    .await
    .map_err(|e| inner.db(e))?;
    Ok(())
}

pub(super) async fn inbound(
    inner: &Inner,
    filter: &InboundFilter,
    after: Option<InboundId>,
    limit: usize,
    scan: usize,
) -> Result<InboundPage, StoreError> {
    let after = after.map(|a| a.to_key().to_vec());
    let c = inner.client().await?;
    let rows = c
        .rows(
            "SELECT id, record FROM inbound WHERE ($1::bytea IS NULL OR id < $1) \
             ORDER BY id DESC LIMIT $2",
            &[&after, &(scan as i64)],
        )
        .await
        .map_err(|e| inner.db(e))?;
    let records = rows.iter().map(|row| {
        let id = InboundId::from_key(col::<&[u8]>(row, 0, "inbound")?)
            .ok_or_else(|| corrupt("inbound", "bad id"))?;
        Ok((id, json(col(row, 1, "inbound")?, "inbound")?))
    });
    InboundPage::collect(records, filter, limit, scan)
}

/// Oldest first: records older than `cutoff_ms`, and those beyond the
/// newest `keep`, at most `limit` of them.
pub(super) async fn purge_inbound(
    inner: &Inner,
    cutoff_ms: u64,
    keep: usize,
    limit: usize,
) -> Result<Purged, StoreError> {
    let cutoff = id_at(cutoff_ms);
    let step = inner
        .exclusively("inbound", move |tx| {
            Box::pin(async move {
                let total: i64 = tx
                    .row("SELECT count(*) FROM inbound", &[])
                    .await?
                    .try_get(0)?;
                let mut over = (total as usize).saturating_sub(keep);
                let rows = tx
                    .rows(
                        "SELECT id FROM inbound ORDER BY id LIMIT $1",
                        &[&(limit as i64 + 1)],
                    )
                    .await?;
                let mut doomed: Vec<Vec<u8>> = Vec::new();
                let mut more = false;
                for row in &rows {
                    let id: Vec<u8> = row.try_get(0)?;
                    let old = id < cutoff;
                    if !old && over == 0 {
                        break;
                    }
                    if doomed.len() == limit {
                        more = true;
                        break;
                    }
                    over = over.saturating_sub(1);
                    doomed.push(id);
                }
                tx.exec("DELETE FROM inbound WHERE id = ANY($1)", &[&doomed])
                    .await?;
                Ok(Purged {
                    removed: doomed.len(),
                    more,
                })
            })
        })
        .await?;
    Ok(step.unwrap_or_default())
}

// === retention ===

/// One step: up to `limit` events received before the cutoff, from where
/// the last step stopped; those whose deliveries have all finished go,
/// with their deliveries and attempts.
pub(super) async fn purge(
    inner: &Inner,
    cutoff_ms: u64,
    limit: usize,
) -> Result<Purged, StoreError> {
    let from = inner
        .purge_from
        .lock()
        .expect("lock poisoned")
        .clone()
        .unwrap_or_default();
    let cutoff = id_at(cutoff_ms);
    let step = inner
        .exclusively("retention", move |tx| {
            Box::pin(async move {
                let looked = tx
                    .rows(
                        "SELECT id FROM events WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3",
                        &[&from, &cutoff, &(limit as i64)],
                    )
                    .await?;
                let ids: Vec<Vec<u8>> = looked
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                let last = ids.last().cloned();
                let doomed: Vec<Vec<u8>> = tx
                    .rows(
                        "SELECT e.id FROM events e WHERE e.id = ANY($1) AND NOT EXISTS \
                         (SELECT 1 FROM deliveries d WHERE d.event = e.id AND d.state IN (0, 1))",
                        &[&ids],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                // Only finished deliveries go; one re-queued meanwhile keeps
                // its event.
                let gone = tx
                    .rows(
                        "DELETE FROM deliveries WHERE event = ANY($1) AND state IN (2, 3, 4) \
                         RETURNING id, state",
                        &[&doomed],
                    )
                    .await?;
                let gone_ids: Vec<Vec<u8>> = gone
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                let mut by_state: HashMap<i16, i64> = HashMap::new();
                for r in &gone {
                    *by_state.entry(r.try_get(1)?).or_default() += 1;
                }
                tx.exec(
                    "DELETE FROM attempts WHERE delivery = ANY($1)",
                    &[&gone_ids],
                )
                .await?;
                let removed = tx
                    .exec(
                        "DELETE FROM events e WHERE e.id = ANY($1) AND NOT EXISTS \
                         (SELECT 1 FROM deliveries d WHERE d.event = e.id)",
                        &[&doomed],
                    )
                    .await?;
                let more = ids.len() == limit;
                Ok((removed as usize, more, last, by_state))
            })
        })
        .await?;
    let Some((removed, more, last, by_state)) = step else {
        return Ok(Purged::default());
    };
    for (code, n) in by_state {
        inner.moved(super::state_of(code).ok(), None, n);
    }
    *inner.purge_from.lock().expect("lock poisoned") = if more { last } else { None };
    Ok(Purged { removed, more })
}

pub(super) async fn purge_dedup(inner: &Inner) -> Result<usize, StoreError> {
    let now = now_ms() as i64;
    let n = inner
        .exclusively("dedup", move |tx| {
            Box::pin(async move {
                tx.exec(
                    "DELETE FROM dedup WHERE ctid = ANY(ARRAY( \
                       SELECT ctid FROM dedup WHERE expires_at_ms <= $1 LIMIT $2))",
                    &[&now, &DEDUP_STEP],
                )
                .await
            })
        })
        .await?;
    Ok(n.unwrap_or(0) as usize)
}

// === history ===

pub(super) async fn add_stats(inner: &Inner, rows: &[StatRow]) -> Result<(), StoreError> {
    // One row per bucket: the database cannot add two rows of one
    // statement to the same stored row.
    let mut merged: Vec<StatRow> = Vec::new();
    let mut place: HashMap<(&str, Resolution, u64), usize> = HashMap::new();
    for r in rows {
        match place.get(&(r.series.as_str(), r.resolution, r.start_ms)) {
            Some(&i) => merged[i].values.add(&r.values),
            None => {
                place.insert((r.series.as_str(), r.resolution, r.start_ms), merged.len());
                merged.push(r.clone());
            }
        }
    }
    if merged.is_empty() {
        return Ok(());
    }
    let series: Vec<&str> = merged.iter().map(|r| r.series.as_str()).collect();
    let res: Vec<i16> = merged
        .iter()
        .map(|r| resolution_code(r.resolution))
        .collect();
    let start: Vec<i64> = merged.iter().map(|r| r.start_ms as i64).collect();
    let v = |f: fn(&StatValues) -> u64| -> Vec<i64> {
        merged.iter().map(|r| f(&r.values) as i64).collect()
    };
    let gauges: Vec<Option<serde_json::Value>> = merged
        .iter()
        .map(|r| r.values.gauges.as_ref().map(to_json))
        .collect();
    let c = inner.client().await?;
    c.exec(
        "INSERT INTO stats (series, resolution, start_ms, events, duplicates, rejected, \
           succeeded, failed, dead, attempts, duration_ms, gauges) \
         SELECT * FROM unnest($1::text[], $2::int2[], $3::int8[], $4::int8[], $5::int8[], \
           $6::int8[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::jsonb[]) \
         ON CONFLICT (series, resolution, start_ms) DO UPDATE SET \
           events = stats.events + excluded.events, \
           duplicates = stats.duplicates + excluded.duplicates, \
           rejected = stats.rejected + excluded.rejected, \
           succeeded = stats.succeeded + excluded.succeeded, \
           failed = stats.failed + excluded.failed, \
           dead = stats.dead + excluded.dead, \
           attempts = stats.attempts + excluded.attempts, \
           duration_ms = stats.duration_ms + excluded.duration_ms, \
           gauges = coalesce(excluded.gauges, stats.gauges)",
        &[
            &series,
            &res,
            &start,
            &v(|s| s.events),
            &v(|s| s.duplicates),
            &v(|s| s.rejected),
            &v(|s| s.succeeded),
            &v(|s| s.failed),
            &v(|s| s.dead),
            &v(|s| s.attempts),
            &v(|s| s.duration_ms),
            &gauges,
        ],
    )
    .await
    .map_err(|e| inner.db(e))?;
    Ok(())
}

pub(super) async fn stats(
    inner: &Inner,
    series: &str,
    resolution: Resolution,
    from_ms: u64,
    to_ms: u64,
) -> Result<Vec<StatRow>, StoreError> {
    let c = inner.client().await?;
    let rows = c
        .rows(
            "SELECT start_ms, events, duplicates, rejected, succeeded, failed, dead, attempts, \
               duration_ms, gauges FROM stats \
             WHERE series = $1 AND resolution = $2 AND start_ms >= $3 AND start_ms < $4 \
             ORDER BY start_ms",
            &[
                &series,
                &resolution_code(resolution),
                &(from_ms.min(i64::MAX as u64) as i64),
                &(to_ms.min(i64::MAX as u64) as i64),
            ],
        )
        .await
        .map_err(|e| inner.db(e))?;
    const T: &str = "stats";
    rows.iter()
        .map(|r| {
            let n = |i: usize| col::<i64>(r, i, T).map(|v| v.max(0) as u64);
            let gauges: Option<serde_json::Value> = col(r, 9, T)?;
            Ok(StatRow {
                series: series.to_string(),
                resolution,
                start_ms: n(0)?,
                values: StatValues {
                    events: n(1)?,
                    duplicates: n(2)?,
                    rejected: n(3)?,
                    succeeded: n(4)?,
                    failed: n(5)?,
                    dead: n(6)?,
                    attempts: n(7)?,
                    duration_ms: n(8)?,
                    gauges: gauges.map(|g| json::<Gauges>(g, T)).transpose()?,
                },
            })
        })
        .collect()
}

pub(super) async fn purge_stats(
    inner: &Inner,
    minutes_before_ms: u64,
    hours_before_ms: u64,
) -> Result<usize, StoreError> {
    let (m, h) = (
        minutes_before_ms.min(i64::MAX as u64) as i64,
        hours_before_ms.min(i64::MAX as u64) as i64,
    );
    let n = inner
        .exclusively("stats", move |tx| {
            Box::pin(async move {
                tx.exec(
                    "DELETE FROM stats WHERE ctid = ANY(ARRAY( \
                       SELECT ctid FROM stats WHERE (resolution = 0 AND start_ms < $1) \
                       OR (resolution = 1 AND start_ms < $2) LIMIT $3))",
                    &[&m, &h, &STATS_STEP],
                )
                .await
            })
        })
        .await?;
    Ok(n.unwrap_or(0) as usize)
}
