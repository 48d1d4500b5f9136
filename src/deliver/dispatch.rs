//! The dispatcher: takes due deliveries from the store and attempts them.
//!
//! Each pass looks only at the targets that may have work now: those the
//! store woke (new durable work, a re-queue), those whose lane freed a
//! slot, and those whose timer (next due time, circuit reopening) has come;
//! every target only after the endpoint list changed. For each, it claims
//! from that target's own run of the `due` index as many deliveries as its
//! lane has room for (concurrency, a cap on claimed work, the circuit
//! breaker). Then it sleeps until the earliest timer or until woken — it
//! never spins, and a pass costs what the targets with work cost, however
//! many endpoints there are. A slow or failing target fills only its own
//! lane.
//!
//! Invariants: a delivery is attempted only after `Store::claim_due` moved
//! it to `in_flight`; every attempt is recorded by `Store::finish` with what
//! follows (succeeded, retry at a time, dead). A crash between the two
//! leaves it in flight, and the store puts it back to pending (the embedded
//! store at the next start, a shared one when the claim's lease runs out),
//! so delivery is at least once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::catalog::{Catalog, Origin, Target};
use crate::deliver::egress::pool::RequestSlot;
use crate::deliver::lane::CircuitChange;
use crate::service::Heartbeat;
use crate::shutdown::stopped;
use crate::store::{
    now_ms, Attempt, Delivery, DeliveryId, Event, EventId, Next, State, Store, StoreError,
};
use crate::telemetry::log::{escaped, Escaped};
use crate::telemetry::{Finished, Metrics};

/// How long a delivery whose attempt could not be made or recorded (the
/// store failed) waits before it is tried again.
const RETRY_AFTER_ERROR_MS: u64 = 1000;

/// Deliveries claimed at once, over all targets, per outbound connection
/// the budget allows.
const CLAIMED_PER_CONNECTION: usize = 2;

/// Bytes of event bodies that claimed deliveries may hold from their
/// claim (a shared store reads the event with it); past this, a delivery
/// reads its event when its attempt starts.
const PREFETCHED_BYTES: usize = 16 << 20;

/// Runs the scheduler until shutdown, then gives attempts under way up to
/// `delivery.shutdown_grace` to finish.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    passes: Arc<AtomicU64>,
    grace: Duration,
    /// Targets whose lane freed a slot since the last pass.
    freed: Arc<Mutex<HashSet<String>>>,
    /// Deliveries claimed and not yet done, over all targets: each holds
    /// its event in memory, so their number is bounded (by
    /// `egress.max_connections`, twice over), however many targets there are.
    claimed: Arc<AtomicUsize>,
    /// Body bytes held by the events read with claims ([`PREFETCHED_BYTES`]).
    prefetched: Arc<AtomicUsize>,
}

/// An event read with its delivery's claim, its body counted in the
/// dispatcher's [`PREFETCHED_BYTES`] until the attempt takes it.
struct Prefetched {
    event: Option<Event>,
    held: Arc<AtomicUsize>,
    bytes: usize,
}

impl Prefetched {
    /// `event`, if its body fits in what is left of the budget.
    fn hold(held: &Arc<AtomicUsize>, event: Event) -> Option<Prefetched> {
        let bytes = event.body.len();
        held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now + bytes <= PREFETCHED_BYTES).then_some(now + bytes)
        })
        .ok()?;
        Some(Prefetched {
            event: Some(event),
            held: held.clone(),
            bytes,
        })
    }

    fn take(mut self) -> Option<Event> {
        self.event.take()
    }
}

impl Drop for Prefetched {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Which targets the next pass looks at, and when to look at the others.
#[derive(Default)]
struct Schedule {
    candidates: HashSet<String>,
    /// (when, target): a target's next due time or circuit reopening.
    timers: BTreeSet<(u64, String)>,
    timer_of: HashMap<String, u64>,
    /// The catalog version the candidates last covered in full.
    version: Option<u64>,
}

impl Schedule {
    /// Look at `key` again at `at` (the earlier of two such wishes wins).
    fn wake_at(&mut self, key: &str, at: u64) {
        if let Some(&old) = self.timer_of.get(key) {
            if old <= at {
                return;
            }
            self.timers.remove(&(old, key.to_string()));
        }
        self.timers.insert((at, key.to_string()));
        self.timer_of.insert(key.to_string(), at);
    }

    /// Moves the targets whose timer has come into the candidates.
    fn due(&mut self, now: u64) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.timers.pop_first() {
                self.timer_of.remove(&key);
                self.candidates.insert(key);
            }
        }
    }

    fn next(&self) -> Option<u64> {
        self.timers.first().map(|(at, _)| *at)
    }
}

impl Dispatcher {
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        grace: Duration,
    ) -> Dispatcher {
        Dispatcher {
            wake: store.new_work(),
            store,
            catalog,
            metrics,
            passes: Arc::new(AtomicU64::new(0)),
            grace,
            freed: Arc::new(Mutex::new(HashSet::new())),
            claimed: Arc::new(AtomicUsize::new(0)),
            prefetched: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The scheduler's sign of life, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            passes: self.passes.clone(),
            poke: self.wake.clone(),
        }
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let wake = self.wake.clone();
        let mut failing = false;
        // The first pass looks at every target of the catalog (its version
        // is new to the schedule); pending work of any other is cancelled.
        let mut schedule = Schedule::default();
        if let Err(e) = self.cancel_orphans().await {
            tracing::error!(error = %e, "cannot cancel deliveries of removed targets");
        }
        loop {
            while tasks.try_join_next().is_some() {}
            let next = match self.pass(&mut schedule, &mut tasks, &shutdown).await {
                Ok(next) => {
                    if failing {
                        failing = false;
                        tracing::warn!("dispatcher: the store answers again; deliveries go on");
                    }
                    next
                }
                Err(e) => {
                    // Whatever this pass did not get to: all of it next time.
                    schedule.version = None;
                    // Once per outage, not once a second.
                    if !failing {
                        failing = true;
                        tracing::error!(error = %e, "dispatcher cannot read the store; trying again every second");
                    }
                    Some(now_ms() + 1000)
                }
            };
            self.passes.fetch_add(1, Ordering::Relaxed);
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = sleep => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let n = tasks.len();
        if n > 0 {
            tracing::info!(attempts = n, grace = %humantime::format_duration(self.grace), "waiting for attempts under way");
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!(
                attempts = tasks.len(),
                "attempts still under way at the end of the grace period; they are retried at the next start"
            );
            tasks.abort_all();
        }
    }

    /// Pending deliveries whose target is in no configuration any more are
    /// cancelled, with the reason recorded (not on a shared store: there,
    /// the target may be in another relay's configuration).
    async fn cancel_orphans(&self) -> Result<(), StoreError> {
        if self.store.shared() {
            // Another relay's configuration may have the target.
            return Ok(());
        }
        for target in self.store.due_targets().await? {
            if self.catalog.get(&target).is_none() {
                let total = self.store.cancel_all(&target, "target removed").await?;
                tracing::warn!(target = %Escaped(&target), deliveries = total, "cancelled deliveries of a removed target");
            }
        }
        Ok(())
    }

    /// Claims what is due and has room in its lane, for the targets that
    /// may have work; returns when to look again (`None`: only when woken).
    async fn pass(
        &self,
        schedule: &mut Schedule,
        tasks: &mut JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<u64>, StoreError> {
        let now = now_ms();
        let version = self.catalog.version();
        if schedule.version != Some(version) {
            // Endpoints came, went, paused or resumed: look at all of them.
            schedule.version = Some(version);
            schedule
                .candidates
                .extend(self.catalog.all().iter().map(|t| t.spec.key.clone()));
        }
        schedule.candidates.extend(self.store.woken());
        schedule
            .candidates
            .extend(self.freed.lock().expect("lock poisoned").drain());
        schedule.due(now);
        let cap = CLAIMED_PER_CONNECTION * self.catalog.budget().settings().max_connections;
        let candidates: Vec<String> = schedule.candidates.drain().collect();
        let mut candidates = candidates.into_iter();
        while let Some(key) = candidates.next() {
            let room_left = cap.saturating_sub(self.claimed.load(Ordering::Relaxed));
            if room_left == 0 {
                // Full: the rest wait for a finishing attempt, which wakes us.
                schedule.candidates.insert(key);
                schedule.candidates.extend(candidates);
                break;
            }
            let Some(target) = self.catalog.get(&key) else {
                // Removed: its deliveries were cancelled with it.
                continue;
            };
            if !target.spec.enabled {
                // Paused: its deliveries wait; resuming changes the catalog.
                continue;
            }
            let (room, reopens) = target.lane.room(now);
            if let Some(at) = reopens {
                schedule.wake_at(&key, at);
                continue;
            }
            if room == 0 {
                // A finishing attempt frees a slot and names the target.
                continue;
            }
            let room = room.min(room_left);
            let claimed = self
                .store
                .claim_due(&key, now, room, target.spec.policy.concurrency)
                .await?;
            let drained = claimed.looked < room;
            let mut events: HashMap<EventId, Event> =
                claimed.events.into_iter().map(|e| (e.id, e)).collect();
            for (at, id, delivery) in claimed.deliveries {
                let event = events
                    .remove(&delivery.event)
                    .and_then(|e| Prefetched::hold(&self.prefetched, e));
                target.lane.claimed();
                self.claimed.fetch_add(1, Ordering::Relaxed);
                let job = Job {
                    target: target.clone(),
                    catalog: self.catalog.clone(),
                    metrics: self.metrics.clone(),
                    store: self.store.clone(),
                    wake: self.wake.clone(),
                    freed: self.freed.clone(),
                    claimed: self.claimed.clone(),
                    id,
                    at,
                    delivery,
                    event,
                };
                tasks.spawn(job.run(shutdown.clone()));
            }
            if drained {
                let next_due = match claimed.next_due {
                    Some(known) => known,
                    None => self.store.next_due(&key).await?,
                };
                if let Some(at) = next_due {
                    schedule.wake_at(&key, at.max(now + 1));
                }
            } else if target.lane.room(now).0 > 0 {
                // Stale index entries took the room: look again at once.
                schedule.wake_at(&key, now + 1);
            }
        }
        Ok(schedule.next())
    }
}

/// One claimed delivery on its way through its target's lane.
struct Job {
    target: Arc<Target>,
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    freed: Arc<Mutex<HashSet<String>>>,
    claimed: Arc<AtomicUsize>,
    id: DeliveryId,
    at: u64,
    delivery: Delivery,
    /// Its event, when read with the claim.
    event: Option<Prefetched>,
}

impl Job {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        // Wait for a slot and the rate limit; on shutdown, give the delivery
        // back untouched instead of starting it.
        let ready = async {
            let permit = self.target.lane.slots.acquire().await;
            self.target.lane.pace(&*self.store).await;
            // And a connection slot, before the event is read and shaped:
            // deliveries waiting on a busy receiver hold only their record
            // (and what they hold of PREFETCHED_BYTES).
            // (A proxy route's target learns its origin from the event.)
            let slot = if self.target.spec.to_event_url {
                None
            } else {
                self.target
                    .lane
                    .client
                    .slot(self.target.spec.url.uri())
                    .await
                    .ok()
            };
            (permit, slot)
        };
        let (permit, slot) = tokio::select! {
            p = ready => p,
            _ = stopped(&mut shutdown) => {
                self.give_back().await;
                return;
            }
        };
        if self.catalog.get(&self.target.spec.key).is_none() {
            // Removed while this delivery waited.
            // Not counted: the target's series went with it.
            if let Err(e) = self.store.cancel(self.id, "target removed").await {
                tracing::error!(delivery = %self.id, error = %e, "cannot cancel delivery");
            }
            self.done(true);
            return;
        }
        let prefetched = self.event.take().and_then(Prefetched::take);
        match self.attempt(slot, prefetched).await {
            Ok(()) => {}
            // A shared store: another relay has it now and records its own.
            Err(e @ StoreError::ClaimLost(_)) => {
                tracing::warn!(delivery = %self.id, error = %e, "attempt not recorded")
            }
            Err(e) => {
                // A full store said so once when it filled; each delivery
                // that meets it again says so at debug only.
                if e.is_full() {
                    tracing::debug!(delivery = %self.id, error = %e, "cannot record the delivery while the store is full; it is tried again");
                } else {
                    tracing::error!(delivery = %self.id, error = %e, "cannot attempt or record the delivery; it is tried again");
                }
                // Given back, not left claimed: a shared store would renew
                // the claim for as long as this relay lives.
                if let Err(e) = self
                    .store
                    .release(self.id, now_ms() + RETRY_AFTER_ERROR_MS)
                    .await
                {
                    tracing::debug!(delivery = %self.id, error = %e, "cannot give the delivery back; its claim lapses");
                }
            }
        }
        drop(permit);
        self.done(false);
    }

    async fn give_back(&self) {
        if let Err(e) = self.store.release(self.id, self.at).await {
            tracing::error!(delivery = %self.id, error = %e, "cannot release delivery; it is retried at the next start");
        }
        self.done(true);
    }

    fn done(&self, released: bool) {
        self.target.lane.unclaimed(released);
        self.claimed.fetch_sub(1, Ordering::Relaxed);
        self.freed
            .lock()
            .expect("lock poisoned")
            .insert(self.target.spec.key.clone());
        self.wake.notify_one();
    }

    async fn attempt(
        &self,
        slot: Option<RequestSlot>,
        prefetched: Option<Event>,
    ) -> Result<(), StoreError> {
        let target = &*self.target;
        let n = self.delivery.attempts + 1;
        let event = match prefetched {
            Some(event) => Some(event),
            None => self.store.event(self.delivery.event).await?,
        };
        let Some(event) = event else {
            let attempt = Attempt::failed("the event is no longer stored".into());
            self.store.finish(self.id, &attempt, Next::Dead).await?;
            self.metrics.finished(&target.spec.key, Finished::Dead, 1);
            tracing::error!(delivery = %self.id, target = %Escaped(&target.spec.key), "dead: the event is no longer stored");
            return Ok(());
        };
        let event_id = event.id.to_string();
        let shaped = match target.spec.outbound.shape.apply(&event) {
            Ok(shaped) => shaped,
            Err(e) => {
                // Shaping is deterministic: another attempt would fail the same way.
                let attempt = Attempt::failed(e.to_string());
                self.store.finish(self.id, &attempt, Next::Dead).await?;
                self.circuit_moved(target.lane.record(&attempt, false, true))
                    .await;
                self.metrics.finished(&target.spec.key, Finished::Dead, 1);
                tracing::error!(
                    event = %event_id,
                    delivery = %self.id,
                    target = %Escaped(&target.spec.key),
                    event_type = %Escaped(&event.meta.event_type),
                    attempt = n,
                    error = %Escaped(&e),
                    "dead: the body cannot be shaped for this target"
                );
                return Ok(());
            }
        };
        // A proxy route's `origin` target relays each event to its own URL.
        let uri = if target.spec.to_event_url {
            match event.meta.url.as_deref().map(str::parse::<http::Uri>) {
                Some(Ok(uri)) => uri,
                _ => {
                    let attempt = Attempt::failed("the event has no URL to relay to".into());
                    self.store.finish(self.id, &attempt, Next::Dead).await?;
                    self.metrics.finished(&target.spec.key, Finished::Dead, 1);
                    tracing::error!(event = %event_id, delivery = %self.id, target = %Escaped(&target.spec.key), "dead: the event has no URL to relay to");
                    return Ok(());
                }
            }
        } else {
            target.spec.url.uri().clone()
        };
        let (attempt, retry_after) = target
            .attempt(uri, &event_id, &event.meta, shaped, slot)
            .await;
        let next = self.next(n, &attempt, retry_after);
        let d = self.store.finish(self.id, &attempt, next).await?;
        if attempt.status == Some(410) && target.spec.origin == Origin::Api {
            // REST Hooks: 410 Gone means "unsubscribe me".
            let reason = "the receiver answered 410 Gone";
            match self.catalog.disable_gone(&target.spec.key, reason).await {
                Ok(cancelled) => {
                    self.metrics
                        .finished(&target.spec.key, Finished::Cancelled, cancelled as u64);
                    tracing::warn!(target = %Escaped(&target.spec.key), cancelled, "endpoint disabled: the receiver answered 410 Gone")
                }
                Err(e) => {
                    tracing::error!(target = %Escaped(&target.spec.key), error = %Escaped(&e), "cannot disable an endpoint that answered 410 Gone")
                }
            }
        }
        let moved = target.lane.record(
            &attempt,
            d.state == State::Succeeded,
            d.state == State::Dead,
        );
        self.circuit_moved(moved).await;
        let outcome = match d.state {
            State::Succeeded => "succeeded",
            State::Dead => "dead",
            _ => "retry",
        };
        let key = &target.spec.key;
        let succeeded = d.state == State::Succeeded;
        self.metrics
            .attempted(key, succeeded, attempt.duration_ms as f64 / 1000.0);
        if succeeded {
            self.metrics.finished(key, Finished::Delivered, 1);
            let e2e = now_ms().saturating_sub(event.meta.received_at_ms);
            self.metrics.end_to_end(key, e2e as f64 / 1000.0);
        } else if d.state == State::Dead {
            self.metrics.finished(key, Finished::Dead, 1);
        }
        // One line per attempt, at the level of what it means: a success is
        // news, a failure a warning (its status or error says why), a
        // delivery going dead an error.
        macro_rules! attempt_line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    event = %event_id,
                    delivery = %self.id,
                    target = %Escaped(key),
                    event_type = %Escaped(&event.meta.event_type),
                    attempt = n,
                    status = attempt.status,
                    error = escaped(attempt.error.as_deref()),
                    duration_ms = attempt.duration_ms,
                    outcome = %outcome,
                    "delivery attempt"
                )
            };
        }
        match d.state {
            State::Succeeded => attempt_line!(tracing::Level::INFO),
            State::Dead => attempt_line!(tracing::Level::ERROR),
            _ => attempt_line!(tracing::Level::WARN),
        }
        Ok(())
    }

    /// Tells the fleet (a shared store) that this target's circuit opened
    /// or closed, so the other relays hold or resume its deliveries too.
    async fn circuit_moved(&self, change: Option<CircuitChange>) {
        let Some(change) = change else {
            return;
        };
        if !self.store.shared() {
            return;
        }
        let until = match change {
            CircuitChange::Opened { until_ms } => until_ms,
            CircuitChange::Closed => 0,
        };
        if let Err(e) = self.store.set_circuit(&self.target.spec.key, until).await {
            tracing::warn!(target = %Escaped(&self.target.spec.key), error = %e, "cannot tell the fleet of a circuit change");
        }
    }

    /// What follows attempt number `n` of this delivery.
    fn next(&self, n: u32, attempt: &Attempt, retry_after: Option<Duration>) -> Next {
        let policy = &self.target.spec.policy;
        // The budget counts from the last re-queue by hand.
        let tries = n.saturating_sub(self.delivery.base);
        if attempt.status.is_some_and(|s| policy.success.contains(s)) {
            Next::Succeeded
        } else if tries >= policy.max_attempts {
            Next::Dead
        } else {
            let delay = match retry_after {
                Some(d) => d.min(policy.backoff.max),
                None => policy.backoff.jittered(tries, rand::random::<f64>()),
            };
            Next::RetryAt(now_ms() + delay.as_millis() as u64)
        }
    }
}
