//! Reads and repairs for operators: listing deliveries, re-queueing and
//! cancelling them, subscriptions, and per-target counters.
//!
//! Every scan here is bounded by a caller-given limit, so no request can
//! hold the store for long.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::records::{decode, due_key, due_prefix, encode, parse_due_key};
use super::{
    now_ms, tx_error, Counters, Delivery, DeliveryId, State, Store, StoreError, Subscription,
};

const COUNTERS_PREFIX: &str = "counters/";

/// One page of deliveries, newest first.
#[derive(Debug)]
pub struct Page {
    pub deliveries: Vec<(DeliveryId, Delivery)>,
    /// Where the next page starts (`after`), if the scan stopped early.
    pub next: Option<DeliveryId>,
}

impl Store {
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
        let mut deliveries = Vec::new();
        let mut last = None;
        for (n, item) in iter.rev().enumerate() {
            let (k, v) = item?;
            let Some(id) = DeliveryId::from_key(&k) else {
                continue;
            };
            if n >= scan {
                return Ok(Page {
                    deliveries,
                    next: last,
                });
            }
            last = Some(id);
            let d: Delivery = decode("deliveries", &v)?;
            if state.is_some_and(|s| s != d.state) || target.is_some_and(|t| t != d.target) {
                continue;
            }
            deliveries.push((id, d));
            if deliveries.len() == limit {
                return Ok(Page {
                    deliveries,
                    next: Some(id),
                });
            }
        }
        Ok(Page {
            deliveries,
            next: None,
        })
    }

    /// Re-queues a delivery now, with a fresh attempt budget. Refused for
    /// one in flight (it is being attempted). `None` if there is no such delivery.
    pub fn requeue(&self, id: DeliveryId, note: &str) -> Result<Option<Delivery>, StoreError> {
        let key = id.to_key();
        let now = now_ms();
        let result = (&self.deliveries, &self.due).transaction(|(deliveries, due)| {
            let Some(v) = deliveries.get(key)? else {
                return Ok(None);
            };
            let mut d: Delivery =
                decode("deliveries", &v).map_err(ConflictableTransactionError::Abort)?;
            let was = d.state;
            match d.state {
                State::InFlight => return Ok(Some((was, d))),
                State::Pending => {
                    due.remove(due_key(&d.target, d.next_at_ms, id))?;
                }
                State::Succeeded | State::Dead | State::Cancelled => {}
            }
            d.state = State::Pending;
            d.next_at_ms = now;
            d.base = d.attempts;
            d.note = Some(note.to_string());
            deliveries.insert(&key, encode(&d))?;
            due.insert(due_key(&d.target, now, id), &[])?;
            Ok(Some((was, d)))
        });
        let Some((was, d)) = result.map_err(tx_error)? else {
            return Ok(None);
        };
        self.counts.moved(Some(was), Some(d.state));
        self.new_work.notify_one();
        Ok(Some(d))
    }

    /// Re-queues up to `limit` deliveries in `state` (and of `target`),
    /// oldest first from just after `from`. Returns how many, and where the
    /// next batch starts (`None` when the scan reached the end).
    pub fn requeue_batch(
        &self,
        state: State,
        target: Option<&str>,
        from: Option<DeliveryId>,
        limit: usize,
    ) -> Result<(usize, Option<DeliveryId>), StoreError> {
        let iter = match from {
            Some(f) => self.deliveries.range(f.to_key()..),
            None => self.deliveries.iter(),
        };
        let mut matched = Vec::new();
        let mut next = None;
        for (n, item) in iter.enumerate() {
            let (k, v) = item?;
            let Some(id) = DeliveryId::from_key(&k) else {
                continue;
            };
            if Some(id) == from {
                continue;
            }
            if n > limit * 4 || matched.len() == limit {
                next = Some(id);
                break;
            }
            let d: Delivery = decode("deliveries", &v)?;
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
        // `next` is the first id not looked at; step back so the next
        // batch (which skips `from` itself) starts there.
        let next = next.map(|n| DeliveryId(ulid::Ulid(n.0 .0.saturating_sub(1))));
        Ok((done, next))
    }

    /// Cancels a pending delivery: it will not be attempted. Returns whether
    /// it was pending.
    pub fn cancel(&self, id: DeliveryId, reason: &str) -> Result<bool, StoreError> {
        let key = id.to_key();
        let result = (&self.deliveries, &self.due).transaction(|(deliveries, due)| {
            let Some(v) = deliveries.get(key)? else {
                return Ok(None);
            };
            let mut d: Delivery =
                decode("deliveries", &v).map_err(ConflictableTransactionError::Abort)?;
            let was = d.state;
            if !matches!(d.state, State::Pending | State::InFlight) {
                return Ok(None);
            }
            if d.state == State::Pending {
                due.remove(due_key(&d.target, d.next_at_ms, id))?;
            }
            d.state = State::Cancelled;
            d.note = Some(reason.to_string());
            deliveries.insert(&key, encode(&d))?;
            Ok(Some(was))
        });
        let was = result.map_err(tx_error)?;
        if let Some(was) = was {
            self.counts.moved(Some(was), Some(State::Cancelled));
        }
        Ok(was.is_some())
    }

    /// Cancels up to `limit` of `target`'s pending deliveries; returns how many.
    pub fn cancel_target(
        &self,
        target: &str,
        reason: &str,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let keys: Vec<_> = self
            .due
            .scan_prefix(due_prefix(target))
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for k in keys {
            if let Some((_, _, id)) = parse_due_key(&k) {
                n += usize::from(self.cancel(id, reason)?);
            }
        }
        Ok(n)
    }

    // === subscriptions ===

    pub fn put_subscription(&self, sub: &Subscription) -> Result<(), StoreError> {
        self.subscriptions.insert(sub.id.as_bytes(), encode(sub))?;
        self.sync()?;
        Ok(())
    }

    pub fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.subscriptions
            .iter()
            .values()
            .map(|v| decode("subscriptions", &v?))
            .collect()
    }

    /// Removes a subscription and its counters; returns whether it existed.
    pub fn delete_subscription(&self, id: &str) -> Result<bool, StoreError> {
        let existed = self.subscriptions.remove(id.as_bytes())?.is_some();
        self.meta.remove(format!("{COUNTERS_PREFIX}{id}"))?;
        self.sync()?;
        Ok(existed)
    }

    // === counters ===

    pub fn counters(&self, target: &str) -> Result<Counters, StoreError> {
        match self.meta.get(format!("{COUNTERS_PREFIX}{target}"))? {
            Some(v) => decode("meta", &v),
            None => Ok(Counters::default()),
        }
    }

    pub fn save_counters(&self, target: &str, counters: &Counters) -> Result<(), StoreError> {
        self.meta
            .insert(format!("{COUNTERS_PREFIX}{target}"), encode(counters))?;
        Ok(())
    }
}
