//! The life of a delivery in sled: the `due` index, claims, attempts,
//! hand-made changes; and reading events back, and purging them.

use ::sled::transaction::ConflictableTransactionError;
use ::sled::Transactional;
use bytes::Bytes;

use crate::store::sled::keys::{
    attempt_key, attempt_number, decode, decode_event, due_key, due_prefix, encode, parse_due_key,
};
use crate::store::sled::{tx_error, Sled};
use crate::store::{
    now_ms, Attempt, Delivery, DeliveryId, Event, EventId, Next, Purged, State, StoreError,
};

/// Events whose removals a retention step writes at once.
const PURGE_BATCH: usize = 32;

impl Sled {
    /// `target`'s deliveries due at or before `now_ms`, earliest first;
    /// only those whose commit has been synced.
    pub fn due_for(
        &self,
        target: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeliveryId)>, StoreError> {
        let start = due_prefix(target);
        let mut end = start.clone();
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self.due.range(start..end).keys() {
            if out.len() >= limit {
                break;
            }
            match parse_due_key(&item?) {
                Some((_, at, id)) if self.is_durable(id) && !self.is_claimed(id) => {
                    out.push((at, id))
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// When `target`'s earliest pending delivery is due. `None` too when
    /// that one's commit is still being synced: the sync wakes `new_work`.
    /// Claimed ones are passed over: their attempt's end wakes the scheduler.
    pub fn next_due(&self, target: &str) -> Result<Option<u64>, StoreError> {
        for item in self.due.scan_prefix(due_prefix(target)).keys() {
            let Some((_, at, id)) = parse_due_key(&item?) else {
                continue;
            };
            if self.is_claimed(id) {
                continue;
            }
            return Ok(self.is_durable(id).then_some(at));
        }
        Ok(None)
    }

    /// Whether `id` is claimed for an attempt now.
    pub(super) fn is_claimed(&self, id: DeliveryId) -> bool {
        self.claimed
            .lock()
            .expect("lock poisoned")
            .contains_key(&id)
    }

    /// `d` as queries show it: `in_flight` while claimed.
    pub(super) fn shown(&self, id: DeliveryId, mut d: Delivery) -> Delivery {
        if d.state == State::Pending && self.is_claimed(id) {
            d.state = State::InFlight;
        }
        d
    }

    /// The first `limit` entries of the `due` index not claimed now:
    /// (target, due at, delivery).
    pub fn due_entries(&self, limit: usize) -> Result<Vec<(String, u64, DeliveryId)>, StoreError> {
        let mut out = Vec::new();
        for item in self.due.iter().keys() {
            if out.len() >= limit {
                break;
            }
            match parse_due_key(&item?) {
                Some((t, at, id)) if !self.is_claimed(id) => out.push((t.to_string(), at, id)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every target that has pending deliveries.
    pub fn due_targets(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mut from = Vec::new();
        while let Some(item) = self.due.range(from.clone()..).keys().next() {
            let k = item?;
            let Some((target, _, _)) = parse_due_key(&k) else {
                // Not a key of ours: step past it.
                from = k.to_vec();
                from.push(0);
                continue;
            };
            out.push(target.to_string());
            from = due_prefix(target);
            // 0 ends the prefix; 1 sorts after every key with this prefix.
            *from.last_mut().expect("prefix ends in 0") = 1;
        }
        Ok(out)
    }

    /// Takes a pending delivery for an attempt. `None` if it is no longer
    /// pending at `at_ms`, or already claimed.
    ///
    /// In memory only: on disk it stays pending, with its `due` entry, until
    /// `finish` (so a crash leaves it pending, to be attempted again: at
    /// least once). A `due` entry whose delivery moved on is stale, and is
    /// removed here.
    pub fn claim(
        &self,
        target: &str,
        at_ms: u64,
        id: DeliveryId,
    ) -> Result<Option<Delivery>, StoreError> {
        let index = due_key(target, at_ms, id);
        let Some(v) = self.deliveries.get(id.to_key())? else {
            self.due.remove(index)?;
            return Ok(None);
        };
        let mut d: Delivery = decode("deliveries", &v)?;
        if d.state != State::Pending || d.next_at_ms != at_ms {
            self.due.remove(index)?;
            return Ok(None);
        }
        let counted = self.counts.transition();
        {
            let mut claimed = self.claimed.lock().expect("lock poisoned");
            if claimed.contains_key(&id) {
                return Ok(None);
            }
            claimed.insert(id, at_ms);
        }
        counted.moved(id, Some(State::Pending), Some(State::InFlight));
        d.state = State::InFlight;
        Ok(Some(d))
    }

    /// Records attempt number `d.attempts + 1` and what follows it.
    ///
    /// The delivery keeps its last attempt (`last`), so the `attempts` tree
    /// only gets an attempt once a later one takes its place there: a
    /// delivery that succeeds at its first attempt writes no attempt record
    /// (`attempts` reads the history as the tree's records, then `last`).
    ///
    /// Not a transaction (each sled transaction costs a log write of its
    /// own): the attempt moved out of `last` and, for a retry, the new index
    /// entry are written first, then the delivery is swapped to its new
    /// state, then the claimed index entry goes. A crash before the swap
    /// leaves the delivery pending, so it is attempted again after restart
    /// (at least once); an index entry left behind is stale and the next
    /// claim drops it, and an attempt record written twice is the same
    /// record under the same key.
    pub fn finish(
        &self,
        id: DeliveryId,
        attempt: &Attempt,
        next: Next,
    ) -> Result<Delivery, StoreError> {
        let key = id.to_key();
        let counted = self.counts.transition();
        loop {
            let Some(v) = self.deliveries.get(key)? else {
                return Err(StoreError::Corrupt {
                    tree: "deliveries",
                    reason: format!("{id} vanished while in flight"),
                });
            };
            let mut d: Delivery = decode("deliveries", &v)?;
            let on_disk = d.state;
            let was_due = (d.state == State::Pending).then_some(d.next_at_ms);
            if let Some(earlier) = d.last.replace(attempt.clone()) {
                self.attempts
                    .insert(attempt_key(id, d.attempts), encode(&earlier))?;
            }
            d.attempts += 1;
            match next {
                Next::Succeeded => d.state = State::Succeeded,
                Next::Dead => d.state = State::Dead,
                Next::RetryAt(at) => {
                    d.state = State::Pending;
                    d.next_at_ms = at;
                    self.due.insert(due_key(&d.target, at, id), &[])?;
                }
            }
            if self
                .deliveries
                .compare_and_swap(key, Some(v), Some(encode(&d)))?
                .is_err()
            {
                // Changed by hand meanwhile: read it again and record on top.
                continue;
            }
            if let Some(at) =
                was_due.filter(|&at| !(d.state == State::Pending && d.next_at_ms == at))
            {
                self.due.remove(due_key(&d.target, at, id))?;
            }
            let was = if self
                .claimed
                .lock()
                .expect("lock poisoned")
                .remove(&id)
                .is_some()
            {
                State::InFlight
            } else {
                // Not claimed in this open of the store (it was opened again
                // meanwhile): it was pending, or changed by hand.
                on_disk
            };
            counted.moved(id, Some(was), Some(d.state));
            return Ok(d);
        }
    }

    /// Changes one delivery in a transaction, keeping the `due` index and
    /// the state counts in step with it; `change` returns false to leave the
    /// delivery as it is. Returns whether it changed and the delivery as it
    /// now is; `None` if there is no such delivery.
    pub(super) fn change(
        &self,
        id: DeliveryId,
        change: impl Fn(&mut Delivery) -> bool,
    ) -> Result<Option<(bool, Delivery)>, StoreError> {
        let key = id.to_key();
        let counted = self.counts.transition();
        let result = (&self.deliveries, &self.due).transaction(|(deliveries, due)| {
            let Some(v) = deliveries.get(key)? else {
                return Ok(None);
            };
            let mut d: Delivery =
                decode("deliveries", &v).map_err(ConflictableTransactionError::Abort)?;
            let (was, was_due) = (d.state, due_key(&d.target, d.next_at_ms, id));
            if !change(&mut d) {
                return Ok(Some((was, false, d)));
            }
            if was == State::Pending {
                due.remove(was_due)?;
            }
            if d.state == State::Pending {
                due.insert(due_key(&d.target, d.next_at_ms, id), &[])?;
            }
            deliveries.insert(&key, encode(&d))?;
            Ok(Some((was, true, d)))
        });
        let Some((mut was, changed, d)) = result.map_err(tx_error)? else {
            return Ok(None);
        };
        if changed {
            if was == State::Pending
                && d.state != State::Pending
                && self
                    .claimed
                    .lock()
                    .expect("lock poisoned")
                    .remove(&id)
                    .is_some()
            {
                // Cancelled while an attempt was under way.
                was = State::InFlight;
            }
            counted.moved(id, Some(was), Some(d.state));
            if d.state == State::Pending {
                self.shared.wake([&d.target]);
            }
        }
        Ok(Some((changed, d)))
    }

    /// Puts an in-flight delivery back to pending at `at_ms` without counting
    /// an attempt (used when shutdown interrupts it before it was sent).
    pub fn release(&self, id: DeliveryId, at_ms: u64) -> Result<(), StoreError> {
        let claimed_at = {
            // Dropped before `change`, which holds its own.
            let counted = self.counts.transition();
            let Some(claimed_at) = self.claimed.lock().expect("lock poisoned").remove(&id) else {
                return Ok(());
            };
            counted.moved(id, Some(State::InFlight), Some(State::Pending));
            claimed_at
        };
        if claimed_at != at_ms {
            self.change(id, |d| {
                if d.state != State::Pending {
                    return false;
                }
                d.next_at_ms = at_ms;
                true
            })?;
        }
        if let Some(d) = self.delivery(id)? {
            self.shared.wake([&d.target]);
        }
        Ok(())
    }

    pub fn event(&self, id: EventId) -> Result<Option<Event>, StoreError> {
        let Some(v) = self.events.get(id.to_key())? else {
            return Ok(None);
        };
        let (meta, inline, chunked) = decode_event(&v)?;
        let body = if chunked {
            let mut body = Vec::new();
            for chunk in self.bodies.scan_prefix(id.to_key()).values() {
                body.extend_from_slice(&chunk?);
            }
            Bytes::from(body)
        } else {
            Bytes::copy_from_slice(inline)
        };
        Ok(Some(Event { id, meta, body }))
    }

    /// Removes the chunks of an event's body, if it has any; their bytes.
    pub(super) fn remove_body(&self, id: EventId) -> Result<u64, StoreError> {
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        for item in self.bodies.scan_prefix(id.to_key()) {
            let (key, value) = item?;
            bytes += (key.len() + value.len()) as u64;
            batch.remove(key);
        }
        self.bodies.apply_batch(batch)?;
        Ok(bytes)
    }

    pub fn delivery(&self, id: DeliveryId) -> Result<Option<Delivery>, StoreError> {
        self.deliveries
            .get(id.to_key())?
            .map(|v| decode("deliveries", &v).map(|d| self.shown(id, d)))
            .transpose()
    }

    /// Every delivery of `event`, in creation order.
    pub fn deliveries_of(&self, event: EventId) -> Result<Vec<(DeliveryId, Delivery)>, StoreError> {
        // An event's delivery ids directly follow its own id (`next_ids`), so
        // they are the run of deliveries starting at the event's key.
        let mut out = Vec::new();
        for item in self.deliveries.range(event.to_key()..) {
            let (k, v) = item?;
            let d: Delivery = decode("deliveries", &v)?;
            if d.event != event {
                break;
            }
            if let Some(id) = DeliveryId::from_key(&k) {
                out.push((id, self.shown(id, d)));
            }
        }
        Ok(out)
    }

    /// The attempts of a delivery, in order: the `attempts` tree's records,
    /// then the delivery's last attempt unless the tree has it too (stores
    /// written before the last attempt stayed out of the tree have every
    /// attempt there).
    pub fn attempts(&self, id: DeliveryId) -> Result<Vec<Attempt>, StoreError> {
        let mut out = Vec::new();
        // Keys sort by attempt number: the last one read is the highest.
        let mut highest = 0;
        for item in self.attempts.scan_prefix(id.to_key()) {
            let (k, v) = item?;
            highest = attempt_number(&k).unwrap_or(highest);
            out.push(decode("attempts", &v)?);
        }
        let Some(v) = self.deliveries.get(id.to_key())? else {
            return Ok(out);
        };
        let d: Delivery = decode("deliveries", &v)?;
        if let Some(last) = d.last.filter(|_| d.attempts > highest) {
            out.push(last);
        }
        Ok(out)
    }

    /// Removes events received before `cutoff_ms` whose deliveries have all
    /// finished (succeeded or dead), with their deliveries and attempts,
    /// looking at no more than `limit` events, from where the last step
    /// stopped. What it removed counts as room sled can reuse.
    pub fn purge(&self, cutoff_ms: u64, limit: usize) -> Result<Purged, StoreError> {
        let from = *self.purge_from.lock().expect("lock poisoned");
        let iter = match from {
            Some(e) => {
                let mut start = e.to_key().to_vec();
                start.push(0);
                self.events.range(start..)
            }
            None => self.events.iter(),
        };
        let mut removed = 0;
        let mut bytes = 0u64;
        let mut looked = 0;
        let (mut gone_events, mut gone_deliveries) =
            (sled::Batch::default(), sled::Batch::default());
        let (mut gone_attempts, mut gone_bodies) = (sled::Batch::default(), sled::Batch::default());
        let mut counted = Vec::new();
        let mut last = None;
        let mut more = false;
        let transition = self.counts.transition();
        for item in iter {
            if looked == limit {
                more = true;
                break;
            }
            let (k, v) = item?;
            let Some(event) = EventId::from_key(&k) else {
                continue;
            };
            if event.0.timestamp_ms() >= cutoff_ms {
                break;
            }
            looked += 1;
            last = Some(event);
            let deliveries = self.deliveries_of(event)?;
            if deliveries
                .iter()
                .any(|(_, d)| matches!(d.state, State::Pending | State::InFlight))
                || self.expanding(event)?
            {
                continue;
            }
            for (id, _) in &deliveries {
                for item in self.attempts.scan_prefix(id.to_key()) {
                    let (key, value) = item?;
                    bytes += (key.len() + value.len()) as u64;
                    gone_attempts.remove(key);
                }
                gone_deliveries.remove(&id.to_key());
                // The delivery and its index entry, roughly.
                bytes += 256;
            }
            for item in self.bodies.scan_prefix(event.to_key()) {
                let (key, value) = item?;
                bytes += (key.len() + value.len()) as u64;
                gone_bodies.remove(key);
            }
            bytes += (k.len() + v.len()) as u64;
            gone_events.remove(k);
            counted.extend(deliveries.into_iter().map(|(id, d)| (id, d.state)));
            removed += 1;
            if removed % PURGE_BATCH == 0 {
                // A few events' removals per write: one sled batch is one
                // log entry, and a large one takes new log segments.
                self.attempts
                    .apply_batch(std::mem::take(&mut gone_attempts))?;
                self.bodies.apply_batch(std::mem::take(&mut gone_bodies))?;
                self.deliveries
                    .apply_batch(std::mem::take(&mut gone_deliveries))?;
                self.events.apply_batch(std::mem::take(&mut gone_events))?;
            }
        }
        // The rest. Attempts go first and the event last, so a crash part
        // way leaves an event that the next step removes again, never a
        // delivery without its event.
        self.attempts.apply_batch(gone_attempts)?;
        self.bodies.apply_batch(gone_bodies)?;
        self.deliveries.apply_batch(gone_deliveries)?;
        self.events.apply_batch(gone_events)?;
        for (id, state) in counted {
            transition.moved(id, Some(state), None);
        }
        drop(transition);
        *self.purge_from.lock().expect("lock poisoned") = if more { last } else { None };
        self.shared.space.purged(bytes);
        Ok(Purged { removed, more })
    }

    /// Drops dedup keys that have expired; returns how many. What it
    /// removed counts as room sled can reuse, as the other purges' does.
    pub fn purge_dedup(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let mut removed = 0;
        let mut bytes = 0u64;
        for item in self.dedup.iter() {
            let (k, v) = item?;
            let expired = v
                .get(16..24)
                .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")) <= now)
                .unwrap_or(true);
            if expired {
                bytes += (k.len() + v.len()) as u64;
                self.dedup.remove(k)?;
                removed += 1;
            }
        }
        self.shared.space.purged(bytes);
        Ok(removed)
    }
}
