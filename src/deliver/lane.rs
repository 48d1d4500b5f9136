//! A target's delivery lane: what an attempt is sent with (a client of the
//! shared pool), the
//! bounds on its work (a concurrency semaphore, a rate limiter deliveries
//! wait on, a cap on claimed deliveries), its circuit breaker and counters.
//!
//! A slow or failing target fills only its own lane. Counters live in
//! memory and are marked dirty when they change; the catalog saves them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, RateLimiter};
use tokio::sync::Semaphore;

use crate::deliver::egress::EgressClient;
use crate::deliver::policy::{CircuitConfig, DeliveryConfig};
use crate::rate::Rate;
use crate::store::{now_ms, Attempt, Counters, Store};
use crate::telemetry::log::Escaped;

/// A lane holds at most this many deliveries per unit of concurrency claimed
/// at once (in flight or waiting on its rate limit).
const CLAIMED_PER_SLOT: usize = 2;

/// A change of a circuit's state that the other relays of a fleet hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitChange {
    Opened { until_ms: u64 },
    Closed,
}

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed {
        failures: u32,
    },
    /// Deliveries wait until `until_ms`.
    Open {
        until_ms: u64,
    },
    /// One probe at a time decides whether to close.
    HalfOpen {
        probing: bool,
    },
}

/// One target's lane.
pub struct Lane {
    /// The target's key, for log lines.
    key: String,
    pub client: EgressClient,
    pub slots: Semaphore,
    pub limiter: DefaultDirectRateLimiter,
    rate: Rate,
    /// Tokens of the fleet's bucket reserved and not used yet, and the
    /// lock one reservation at a time holds.
    allowance: Mutex<u32>,
    reserving: tokio::sync::Mutex<()>,
    concurrency: usize,
    breaker: CircuitConfig,
    claimed: AtomicUsize,
    circuit: Mutex<Circuit>,
    /// Shared with the lanes that replace this one (a reload, a changed
    /// endpoint), so an attempt finishing on the old lane still counts.
    counters: Arc<Mutex<Counters>>,
    dirty: Arc<AtomicBool>,
    /// The saved counters (on a shared store, what every relay counted) as
    /// of the last save, and this relay's own counters at that moment.
    saved: Arc<Mutex<Saved>>,
}

#[derive(Debug, Clone, Default)]
struct Saved {
    totals: Counters,
    own: Counters,
}

impl Lane {
    /// A lane for `policy`, sending with `client` (the shared pool), with
    /// its saved counters.
    pub fn new(
        key: &str,
        policy: &DeliveryConfig,
        client: EgressClient,
        counters: Counters,
    ) -> Lane {
        Lane {
            key: key.to_string(),
            client,
            slots: Semaphore::new(policy.concurrency),
            limiter: RateLimiter::direct(policy.rate.quota()),
            rate: policy.rate,
            allowance: Mutex::new(0),
            reserving: tokio::sync::Mutex::new(()),
            concurrency: policy.concurrency,
            breaker: policy.circuit,
            claimed: AtomicUsize::new(0),
            circuit: Mutex::new(Circuit::Closed { failures: 0 }),
            saved: Arc::new(Mutex::new(Saved {
                totals: counters.clone(),
                own: counters.clone(),
            })),
            counters: Arc::new(Mutex::new(counters)),
            dirty: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A lane for `policy` that replaces `old`: it shares `old`'s counters
    /// (attempts still finishing on `old` count in both) and starts from
    /// its circuit state.
    pub fn replacing(key: &str, policy: &DeliveryConfig, client: EgressClient, old: &Lane) -> Lane {
        let mut lane = Lane::new(key, policy, client, Counters::default());
        lane.counters = old.counters.clone();
        lane.dirty = old.dirty.clone();
        lane.saved = old.saved.clone();
        lane.keep_circuit_of(old);
        lane
    }

    /// Takes `other`'s circuit state (a reload keeps it).
    fn keep_circuit_of(&self, other: &Lane) {
        let state = *other.circuit.lock().expect("lock poisoned");
        *self.circuit.lock().expect("lock poisoned") = match state {
            // A probe under way belongs to the old lane; let the new one probe.
            Circuit::HalfOpen { .. } => Circuit::HalfOpen { probing: false },
            s => s,
        };
    }

    /// How many more deliveries may be claimed now; when the circuit is
    /// open, also when to look again.
    pub fn room(&self, now: u64) -> (usize, Option<u64>) {
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        if let Circuit::Open { until_ms } = *circuit {
            if until_ms > now {
                return (0, Some(until_ms));
            }
            *circuit = Circuit::HalfOpen { probing: false };
        }
        let cap = self.concurrency * CLAIMED_PER_SLOT;
        let free = cap.saturating_sub(self.claimed.load(Ordering::Relaxed));
        match *circuit {
            Circuit::HalfOpen { probing: true } => (0, None),
            Circuit::HalfOpen { probing: false } => (free.min(1), None),
            _ => (free, None),
        }
    }

    /// A delivery was claimed for this lane (in half-open, it is the probe).
    pub fn claimed(&self) {
        self.claimed.fetch_add(1, Ordering::Relaxed);
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        if let Circuit::HalfOpen { probing: false } = *circuit {
            *circuit = Circuit::HalfOpen { probing: true };
        }
    }

    /// A claimed delivery left the lane. `released`: it was given back
    /// without an attempt (a probe given back lets another probe go).
    pub fn unclaimed(&self, released: bool) {
        self.claimed.fetch_sub(1, Ordering::Relaxed);
        if released {
            let mut circuit = self.circuit.lock().expect("lock poisoned");
            if let Circuit::HalfOpen { probing: true } = *circuit {
                *circuit = Circuit::HalfOpen { probing: false };
            }
        }
    }

    /// Counts an attempt and moves the circuit; says whether the circuit
    /// opened (until when) or closed, for the fleet to hear of.
    pub fn record(&self, attempt: &Attempt, succeeded: bool, dead: bool) -> Option<CircuitChange> {
        {
            let mut c = self.counters.lock().expect("lock poisoned");
            c.calls += 1;
            if succeeded {
                c.succeeded += 1;
            } else {
                c.failed += 1;
            }
            if dead {
                c.dead += 1;
            }
            c.duration_ms += attempt.duration_ms;
            c.last_status = attempt.status;
            c.last_error = attempt.error.clone();
            c.last_at_ms = Some(attempt.at_ms);
        }
        self.dirty.store(true, Ordering::Relaxed);

        let threshold = self.breaker.failures;
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        let before = *circuit;
        *circuit = match (*circuit, succeeded) {
            (Circuit::Closed { .. }, true) => Circuit::Closed { failures: 0 },
            (_, true) => {
                tracing::info!(target = %Escaped(&self.key), "circuit closed: the target answers again");
                Circuit::Closed { failures: 0 }
            }
            (_, false) if threshold == 0 => Circuit::Closed { failures: 0 },
            (Circuit::Closed { failures }, false) if failures + 1 < threshold => Circuit::Closed {
                failures: failures + 1,
            },
            (Circuit::Open { until_ms }, false) => Circuit::Open { until_ms },
            (_, false) => {
                let until_ms = now_ms() + self.breaker.cooldown.as_millis() as u64;
                tracing::warn!(target = %Escaped(&self.key), "circuit open: deliveries wait");
                Circuit::Open { until_ms }
            }
        };
        match (before, *circuit) {
            (Circuit::Open { .. }, Circuit::Open { .. }) => None,
            (_, Circuit::Open { until_ms }) => Some(CircuitChange::Opened { until_ms }),
            (Circuit::Closed { .. }, _) => None,
            (_, Circuit::Closed { .. }) => Some(CircuitChange::Closed),
            _ => None,
        }
    }

    /// What the fleet says of this target's circuit: open until a time
    /// (another relay opened it), or not open. A circuit this relay opened
    /// and the fleet no longer has open (another relay's probe went
    /// through) is closed.
    pub fn fleet_circuit(&self, open_until_ms: Option<u64>) {
        let now = now_ms();
        let mut circuit = self.circuit.lock().expect("lock poisoned");
        match (open_until_ms.filter(|&u| u > now), *circuit) {
            (Some(until_ms), Circuit::Closed { .. } | Circuit::HalfOpen { probing: false }) => {
                tracing::warn!(target = %Escaped(&self.key), "circuit open by another relay: deliveries wait");
                *circuit = Circuit::Open { until_ms };
            }
            (None, Circuit::Open { until_ms }) if until_ms > now => {
                tracing::info!(target = %Escaped(&self.key), "circuit closed by another relay: the target answers again");
                *circuit = Circuit::Closed { failures: 0 };
            }
            _ => {}
        }
    }

    /// Waits for the target's rate to let one more delivery go: this
    /// relay's limiter, or on a shared store the fleet's bucket, from which
    /// a tenth of a second's worth of tokens is reserved at a time.
    pub async fn pace(&self, store: &dyn Store) {
        if !store.shared() {
            self.limiter.until_ready().await;
            return;
        }
        loop {
            if self.take_allowance() {
                return;
            }
            let wait = {
                let _reserving = self.reserving.lock().await;
                if self.take_allowance() {
                    return;
                }
                let batch = (self.rate.per_second.get() / 10).clamp(1, self.rate.burst.get());
                match store
                    .take_tokens(
                        &self.key,
                        self.rate.per_second.get(),
                        self.rate.burst.get(),
                        batch,
                    )
                    .await
                {
                    Ok(t) if t.granted > 0 => {
                        *self.allowance.lock().expect("lock poisoned") += t.granted - 1;
                        return;
                    }
                    Ok(t) => Duration::from_millis(t.next_in_ms.clamp(1, 1000)),
                    // The database is away: nothing could be recorded anyway.
                    Err(_) => Duration::from_secs(1),
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    fn take_allowance(&self) -> bool {
        let mut a = self.allowance.lock().expect("lock poisoned");
        if *a > 0 {
            *a -= 1;
            true
        } else {
            false
        }
    }

    /// Counts a test send: a call, and neither a success nor a failure; the
    /// circuit stays as it is.
    pub fn record_test(&self, attempt: &Attempt) {
        {
            let mut c = self.counters.lock().expect("lock poisoned");
            c.calls += 1;
            c.tests += 1;
            c.last_status = attempt.status;
            c.last_error = attempt.error.clone();
            c.last_at_ms = Some(attempt.at_ms);
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// What this relay counted (since the counters it started from).
    pub fn counters(&self) -> Counters {
        self.counters.lock().expect("lock poisoned").clone()
    }

    /// The counters to show: the saved ones (on a shared store, the
    /// fleet's) and what this relay counted since it last saved.
    pub fn shown_counters(&self) -> Counters {
        let saved = self.saved.lock().expect("lock poisoned").clone();
        let mut shown = saved.totals;
        shown.add(&self.counters().since(&saved.own));
        shown
    }

    /// What this relay counted since the last save, if anything, with its
    /// own counters now (for [`Lane::saved`]).
    pub fn take_unsaved(&self) -> Option<(Counters, Counters)> {
        if !self.dirty.swap(false, Ordering::Relaxed) {
            return None;
        }
        let own = self.counters();
        let delta = own.since(&self.saved.lock().expect("lock poisoned").own);
        Some((delta, own))
    }

    /// The save of what was counted up to `own` failed: try again later.
    pub fn unsaved(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// What was counted up to `own` is saved; `totals` is what the store
    /// holds now.
    pub fn saved(&self, own: Counters, totals: Counters) {
        *self.saved.lock().expect("lock poisoned") = Saved { totals, own };
    }

    /// The store's counters as another relay left them: shown from now on,
    /// with what this relay counted since its last save.
    pub fn refresh(&self, totals: Counters) {
        self.saved.lock().expect("lock poisoned").totals = totals;
    }

    /// `closed`, `open` or `half_open`.
    pub fn circuit_state(&self) -> &'static str {
        match *self.circuit.lock().expect("lock poisoned") {
            Circuit::Closed { .. } => "closed",
            Circuit::Open { until_ms } if until_ms > now_ms() => "open",
            Circuit::Open { .. } | Circuit::HalfOpen { .. } => "half_open",
        }
    }
}
