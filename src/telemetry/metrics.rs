//! Prometheus metrics.
//!
//! Metric labels are bounded: routes and targets come from the config file
//! and the API endpoints that exist; reasons, outcomes and states are fixed
//! sets. No event ids or URLs are ever labels. Gauges (queue depth, dead
//! letters, circuit state, store size) are read from the store and catalog
//! at scrape time, and so are the process metrics (from `/proc`).
//!
//! Invariant: a scrape shows series only for endpoints the catalog has. An
//! endpoint deleted through the API or gone from the config file loses its
//! series at the next scrape, also when an attempt that was under way
//! records after the deletion.
//!
//! Event totals are also kept as plain numbers, for the delivery history.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::catalog::Catalog;
use crate::store::{State, Store};
use crate::telemetry::exposition::{to_prometheus_text, Format};
use crate::telemetry::process::ProcessCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub target: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The states `hookrelay_queue_depth` counts: work still to do. Finished
/// deliveries are history, not queue; dead ones have their own gauge.
const QUEUED: [State; 2] = [State::Pending, State::InFlight];

/// How a delivery finished (`hookrelay_deliveries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// An attempt got a success status.
    Delivered,
    /// Out of attempts, or it cannot be sent (the body cannot be shaped,
    /// the event is gone).
    Dead,
    /// Given up: its endpoint answered 410 Gone and was disabled (REST
    /// Hooks' way to unsubscribe). Deliveries of an endpoint that is
    /// deleted are not counted: its series go with it.
    Cancelled,
}

impl Finished {
    fn as_str(self) -> &'static str {
        match self {
            Finished::Delivered => "delivered",
            Finished::Dead => "dead",
            Finished::Cancelled => "cancelled",
        }
    }
}

/// Ingest requests since the relay started, by what became of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventTotals {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
}

/// Every metric the relay exports.
pub struct Metrics {
    registry: Registry,
    pub events_received: Counter,
    pub events_accepted: Family<RouteLabel, Counter>,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub events_duplicate: Counter,
    attempts: Family<OutcomeLabel, Counter>,
    deliveries: Family<OutcomeLabel, Counter>,
    attempt_duration: Histograms<TargetLabel>,
    end_to_end: Histograms<TargetLabel>,
    queue_depth: Family<StateLabel, Gauge>,
    dead_letters: Gauge,
    circuit: Family<TargetLabel, Gauge>,
    store_bytes: Gauge,
    egress_connections: Gauge,
    egress_requests: Gauge,
    /// Targets that have per-target series, so a scrape can remove those
    /// of targets that are gone (a `Family` cannot list its label sets).
    targets: Mutex<HashSet<String>>,
    /// `events_accepted` and `events_rejected` over all labels.
    accepted_total: AtomicU64,
    rejected_total: AtomicU64,
}

impl Metrics {
    /// The registry, with the store's own metrics in it.
    pub fn new(store: &dyn Store) -> Arc<Metrics> {
        let m = Metrics {
            events_received: Counter::default(),
            events_accepted: Family::default(),
            events_rejected: Family::default(),
            events_duplicate: Counter::default(),
            attempts: Family::default(),
            deliveries: Family::default(),
            attempt_duration: Family::new_with_constructor(latency_histogram),
            end_to_end: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            dead_letters: Gauge::default(),
            circuit: Family::default(),
            store_bytes: Gauge::default(),
            egress_connections: Gauge::default(),
            egress_requests: Gauge::default(),
            targets: Mutex::new(HashSet::new()),
            accepted_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            registry: Registry::default(),
        };
        // The process metrics keep their standard names, without the prefix.
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let r = root.sub_registry_with_prefix("hookrelay");
        r.register(
            "build",
            "The running hookrelay's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "events_received",
            "Requests that reached the ingest handler",
            m.events_received.clone(),
        );
        r.register(
            "events_accepted",
            "Events stored and acknowledged, by route",
            m.events_accepted.clone(),
        );
        r.register(
            "events_rejected",
            "Ingest requests refused, by reason",
            m.events_rejected.clone(),
        );
        r.register(
            "events_duplicate",
            "Requests acknowledged as duplicates of an earlier event",
            m.events_duplicate.clone(),
        );
        r.register(
            "attempts",
            "Requests sent to receivers, by target and outcome (succeeded, failed)",
            m.attempts.clone(),
        );
        r.register(
            "deliveries",
            "Deliveries that finished, by target and outcome (delivered, dead, cancelled)",
            m.deliveries.clone(),
        );
        r.register_with_unit(
            "attempt_duration",
            "Time from sending an attempt to its answer, by target",
            Unit::Seconds,
            m.attempt_duration.clone(),
        );
        r.register_with_unit(
            "end_to_end_latency",
            "Time from receiving an event to its successful delivery, by target",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        r.register(
            "queue_depth",
            "Deliveries still to do, by state (pending, in_flight)",
            m.queue_depth.clone(),
        );
        r.register(
            "dead_letters",
            "Dead deliveries kept in the store (until re-queued or past retention)",
            m.dead_letters.clone(),
        );
        r.register(
            "circuit_state",
            "Circuit breaker by target: 0 closed, 1 open, 2 half-open",
            m.circuit.clone(),
        );
        r.register_with_unit(
            "store_disk",
            "Size of the store's files",
            Unit::Bytes,
            m.store_bytes.clone(),
        );
        r.register(
            "egress_connections",
            "Outbound connections open now (at most egress.max_connections)",
            m.egress_connections.clone(),
        );
        r.register(
            "egress_requests",
            "Outbound requests under way now",
            m.egress_requests.clone(),
        );
        store.register_metrics(r);
        Arc::new(Metrics {
            registry: root,
            ..m
        })
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        self.events_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn accepted(&self, route: &str) {
        self.accepted_total.fetch_add(1, Ordering::Relaxed);
        self.events_accepted
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .inc();
    }

    /// Events accepted, duplicates and refusals since the start, without
    /// rendering the registry.
    pub fn events_total(&self) -> EventTotals {
        EventTotals {
            accepted: self.accepted_total.load(Ordering::Relaxed),
            duplicate: self.events_duplicate.get(),
            rejected: self.rejected_total.load(Ordering::Relaxed),
        }
    }

    /// One request sent to `target` and answered (or failed) after `seconds`.
    pub fn attempted(&self, target: &str, succeeded: bool, seconds: f64) {
        self.seen(target);
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.attempts
            .get_or_create(&OutcomeLabel {
                target: target.to_string(),
                outcome,
            })
            .inc();
        self.attempt_duration
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .observe(seconds);
    }

    /// `count` deliveries to `target` finished as `how`.
    pub fn finished(&self, target: &str, how: Finished, count: u64) {
        self.seen(target);
        self.deliveries
            .get_or_create(&OutcomeLabel {
                target: target.to_string(),
                outcome: how.as_str(),
            })
            .inc_by(count);
    }

    /// A delivery to `target` succeeded `seconds` after its event came in.
    pub fn end_to_end(&self, target: &str, seconds: f64) {
        self.seen(target);
        self.end_to_end
            .get_or_create(&TargetLabel {
                target: target.to_string(),
            })
            .observe(seconds);
    }

    fn seen(&self, target: &str) {
        let mut targets = self.targets.lock().expect("lock poisoned");
        if !targets.contains(target) {
            targets.insert(target.to_string());
        }
    }

    /// Removes the per-target series of targets the catalog no longer has.
    fn forget_gone(&self, catalog: &Catalog) {
        let mut targets = self.targets.lock().expect("lock poisoned");
        targets.retain(|key| {
            if catalog.get(key).is_some() {
                return true;
            }
            let label = TargetLabel {
                target: key.clone(),
            };
            self.attempt_duration.remove(&label);
            self.end_to_end.remove(&label);
            for outcome in ["succeeded", "failed"] {
                self.attempts.remove(&OutcomeLabel {
                    target: key.clone(),
                    outcome,
                });
            }
            for how in [Finished::Delivered, Finished::Dead, Finished::Cancelled] {
                self.deliveries.remove(&OutcomeLabel {
                    target: key.clone(),
                    outcome: how.as_str(),
                });
            }
            false
        });
    }

    /// The exposition in `format`, gauges read now.
    pub fn render(&self, store: &dyn Store, catalog: &Catalog, format: Format) -> String {
        self.forget_gone(catalog);
        // While the store is still counting (after an unclean stop) the
        // queue has no series, and the dead letters keep their last value.
        for state in QUEUED {
            let label = StateLabel {
                state: state.as_str(),
            };
            match store.count(state) {
                Some(n) => {
                    self.queue_depth.get_or_create(&label).set(n);
                }
                None => {
                    self.queue_depth.remove(&label);
                }
            }
        }
        if let Some(n) = store.count(State::Dead) {
            self.dead_letters.set(n);
        }
        // Rebuilt from the catalog, so a target that is gone has no gauge.
        self.circuit.clear();
        for t in catalog.all() {
            let v = match t.lane.circuit_state() {
                "closed" => 0,
                "open" => 1,
                _ => 2,
            };
            self.circuit
                .get_or_create(&TargetLabel {
                    target: t.spec.key.clone(),
                })
                .set(v);
        }
        self.store_bytes.set(store.disk_bytes() as i64);
        let budget = catalog.budget();
        self.egress_connections
            .set(budget.open_connections() as i64);
        self.egress_requests.set(budget.requests_under_way() as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encode to String");
        match format {
            Format::OpenMetrics => out,
            Format::Prometheus => to_prometheus_text(&out),
        }
    }
}
