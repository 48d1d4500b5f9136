//! Reads and repairs for operators: listing deliveries, re-queueing and
//! cancelling them, endpoint records, per-target counters, the inbound log.
//!
//! Every scan a request makes here is bounded by a caller-given limit, so
//! no request can hold the store for long; `endpoints` (read at start) and
//! the inbound log's trim (once a minute) read their whole tree.

use crate::store::sled::keys::{decode, due_prefix, encode, parse_due_key};
use crate::store::sled::Sled;
use serde::Deserialize;

use crate::store::{
    now_ms, Counters, Delivery, DeliveryId, EndpointRecord, Inbound, InboundFilter, InboundId,
    InboundPage, Origin, Page, Purged, State, StoreError, StoredSecret,
};

const COUNTERS_PREFIX: &str = "counters/";
/// Inbound records removed per sled batch by the trim.
const TRIM_BATCH: usize = 256;

impl Sled {
    /// Deliveries newest first, from just before `after`, matching `state`
    /// and `target`. Looks at no more than `scan` records, so a filter that
    /// matches little still answers promptly; `next` then tells where to go on.
    pub fn list_deliveries(
        &self,
        state: Option<State>,
        target: Option<&str>,
        after: Option<DeliveryId>,
        limit: usize,
        scan: usize,
    ) -> Result<Page, StoreError> {
        let iter = match after {
            Some(a) => self.deliveries.range(..a.to_key()),
            None => self.deliveries.iter(),
        };
        let rows = iter.rev().filter_map(|item| {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let id = DeliveryId::from_key(&k)?;
            Some(decode("deliveries", &v).map(|d| (id, self.shown(id, d))))
        });
        Page::collect(rows, state, target, limit, scan)
    }

    /// Re-queues a delivery now, with a fresh attempt budget. Refused for
    /// one in flight (it is being attempted): that one comes back unchanged.
    /// `None` if there is no such delivery.
    pub fn requeue(&self, id: DeliveryId, note: &str) -> Result<Option<Delivery>, StoreError> {
        let now = now_ms();
        let claimed = self.is_claimed(id);
        let result = self.change(id, |d| {
            if claimed || d.state == State::InFlight {
                return false;
            }
            d.state = State::Pending;
            d.next_at_ms = now;
            d.base = d.attempts;
            d.note = Some(note.to_string());
            true
        })?;
        self.shared.new_work.notify_one();
        Ok(result.map(|(_, d)| self.shown(id, d)))
    }

    /// Re-queues up to `limit` deliveries in `state` (and of `target`),
    /// oldest first from just after `from`, looking at no more than
    /// `4 * limit`. Returns how many, and where the
    /// next batch starts (`None` when the scan reached the end).
    pub fn requeue_batch(
        &self,
        state: State,
        target: Option<&str>,
        from: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(usize, Option<DeliveryId>), StoreError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let start = match from {
            Some(f) => Excluded(f.to_key()),
            None => Unbounded,
        };
        let mut matched = Vec::new();
        let mut last = None;
        let mut full = false;
        for (n, item) in self.deliveries.range((start, Unbounded)).enumerate() {
            if n == limit * 4 || matched.len() == limit {
                full = true;
                break;
            }
            let (k, v) = item?;
            let Some(id) = DeliveryId::from_key(&k) else {
                continue;
            };
            last = Some(id);
            let d = self.shown(id, decode("deliveries", &v)?);
            if d.state == state && target.is_none_or(|t| t == d.target) {
                matched.push(id);
            }
        }
        let mut done = 0;
        for id in &matched {
            if self.requeue(*id, "re-queued in bulk")?.is_some() {
                done += 1;
            }
        }
        // The next batch starts after the last delivery looked at.
        Ok((done, if full { last } else { None }))
    }

    /// Cancels a pending or in-flight delivery: it will not be attempted
    /// (again). Returns whether it was cancelled.
    pub fn cancel(&self, id: DeliveryId, reason: &str) -> Result<bool, StoreError> {
        let result = self.change(id, |d| {
            if !matches!(d.state, State::Pending | State::InFlight) {
                return false;
            }
            d.state = State::Cancelled;
            d.note = Some(reason.to_string());
            true
        })?;
        Ok(result.is_some_and(|(changed, _)| changed))
    }

    /// Cancels every pending delivery of `target`, a bounded step at a time;
    /// returns how many. Index entries left stale by a crash go too.
    pub fn cancel_all(&self, target: &str, reason: &str) -> Result<usize, StoreError> {
        const STEP: usize = 1000;
        let mut cancelled = 0;
        loop {
            let keys: Vec<_> = self
                .due
                .scan_prefix(due_prefix(target))
                .keys()
                .take(STEP)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                return Ok(cancelled);
            }
            for k in keys {
                let Some((_, _, id)) = parse_due_key(&k) else {
                    self.due.remove(&k)?;
                    continue;
                };
                if self.cancel(id, reason)? {
                    cancelled += 1;
                } else {
                    self.due.remove(&k)?;
                }
            }
        }
    }

    // === endpoints ===

    pub fn put_endpoint(&self, e: &EndpointRecord) -> Result<(), StoreError> {
        self.endpoints.insert(e.id.as_bytes(), encode(e))?;
        self.sync()?;
        Ok(())
    }

    pub fn endpoints(&self) -> Result<Vec<EndpointRecord>, StoreError> {
        self.endpoints
            .iter()
            .values()
            .map(|v| decode("endpoints", &v?))
            .collect()
    }

    /// Removes an endpoint, its counters and its history; returns whether
    /// it existed.
    pub fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.endpoints.remove(id.as_bytes())?.is_some();
        self.meta.remove(format!("{COUNTERS_PREFIX}{id}"))?;
        self.remove_series(id)?;
        self.sync()?;
        Ok(existed)
    }

    /// Moves the REST Hooks subscriptions of an older store (the
    /// `subscriptions` tree) into `endpoints`, as API endpoints with the
    /// same ids, once.
    pub(super) fn migrate_subscriptions(&self) -> Result<usize, StoreError> {
        #[derive(Deserialize)]
        struct Subscription {
            id: String,
            target_url: String,
            event: String,
            secret: String,
            route: Option<String>,
            created_at_ms: u64,
        }
        let mut n = 0;
        for item in self.subscriptions.iter() {
            let (k, v) = item?;
            let sub: Subscription = decode("subscriptions", &v)?;
            let host = sub
                .target_url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string))
                .unwrap_or_default();
            // The definition's keys are those of the admin API's endpoint body.
            let record = EndpointRecord {
                id: sub.id,
                origin: Origin::Api,
                route: None,
                url: String::new(),
                owner: None,
                created_at_ms: sub.created_at_ms,
                updated_at_ms: sub.created_at_ms,
                secrets: vec![StoredSecret {
                    secret: sub.secret,
                    expires_at_ms: None,
                }],
                disabled_reason: None,
                tests: Vec::new(),
                spec: serde_json::json!({
                    "name": crate::store::hook_name(&sub.event, &host),
                    "url": sub.target_url,
                    "events": [sub.event],
                    "route": sub.route,
                }),
            };
            self.endpoints
                .insert(record.id.as_bytes(), encode(&record))?;
            self.subscriptions.remove(k)?;
            n += 1;
        }
        if n > 0 {
            self.sync()?;
            tracing::info!(
                subscriptions = n,
                "moved REST Hooks subscriptions to endpoints"
            );
        }
        Ok(n)
    }

    // === the inbound log ===

    pub fn record_inbound(&self, r: &Inbound) -> Result<(), StoreError> {
        let id = self.next_ids(0).0 .0;
        self.inbound.insert(id.0.to_be_bytes(), encode(r))?;
        self.inbound_len.add(1);
        Ok(())
    }

    pub fn inbound(
        &self,
        filter: &InboundFilter,
        after: Option<InboundId>,
        limit: usize,
        scan: usize,
    ) -> Result<InboundPage, StoreError> {
        let iter = match after {
            Some(a) => self.inbound.range(..a.to_key()),
            None => self.inbound.iter(),
        };
        let records = iter.rev().filter_map(|item| {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            let id = InboundId::from_key(&k)?;
            Some(decode("inbound", &v).map(|r| (id, r)))
        });
        InboundPage::collect(records, filter, limit, scan)
    }

    /// Oldest first, in sled batches of `TRIM_BATCH` removals: one batch
    /// is one log entry, held in memory until it is written. What it
    /// removed counts as room sled can reuse, as retention's does.
    pub fn purge_inbound(
        &self,
        cutoff_ms: u64,
        keep: usize,
        limit: usize,
    ) -> Result<Purged, StoreError> {
        let mut over = self.inbound_len.get(&self.inbound).saturating_sub(keep);
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        let mut more = false;
        let mut bytes = 0u64;
        for item in self.inbound.iter() {
            let (key, value) = item?;
            let old = InboundId::from_key(&key).is_some_and(|id| id.0.timestamp_ms() < cutoff_ms);
            if !old && over == 0 {
                break;
            }
            if removed == limit {
                more = true;
                break;
            }
            over = over.saturating_sub(1);
            bytes += (key.len() + value.len()) as u64;
            batch.remove(key);
            removed += 1;
            if removed % TRIM_BATCH == 0 {
                self.inbound.apply_batch(std::mem::take(&mut batch))?;
                self.inbound_len.add(-(TRIM_BATCH as i64));
            }
        }
        self.inbound.apply_batch(batch)?;
        self.inbound_len.add(-((removed % TRIM_BATCH) as i64));
        self.shared.space.purged(bytes);
        Ok(Purged { removed, more })
    }

    // === counters ===

    pub fn counters(&self, target: &str) -> Result<Counters, StoreError> {
        match self.meta.get(format!("{COUNTERS_PREFIX}{target}"))? {
            Some(v) => decode("meta", &v),
            None => Ok(Counters::default()),
        }
    }

    pub fn all_counters(&self) -> Result<Vec<(String, Counters)>, StoreError> {
        self.meta
            .scan_prefix(COUNTERS_PREFIX)
            .map(|item| {
                let (k, v) = item?;
                let target = String::from_utf8_lossy(&k[COUNTERS_PREFIX.len()..]).into_owned();
                Ok((target, decode("meta", &v)?))
            })
            .collect()
    }

    pub fn save_counters(&self, target: &str, counters: &Counters) -> Result<(), StoreError> {
        self.meta
            .insert(format!("{COUNTERS_PREFIX}{target}"), encode(counters))?;
        Ok(())
    }
}
