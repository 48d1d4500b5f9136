//! Prometheus metrics.
//!
//! Metric labels are bounded: routes and targets come from the config file
//! and the API endpoints that exist; reasons, outcomes and states are fixed
//! sets. No event ids or URLs are ever labels. Gauges (queue depth, circuit
//! state, store size) are read from the store and catalog at scrape time.
//! Event totals are also kept as plain numbers, for the delivery history.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::catalog::Catalog;
use crate::store::{State, Store};

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
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
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
    pub deliveries: Family<OutcomeLabel, Counter>,
    pub attempt_duration: Histograms<TargetLabel>,
    pub end_to_end: Histograms<TargetLabel>,
    queue_depth: Family<StateLabel, Gauge>,
    circuit: Family<TargetLabel, Gauge>,
    store_bytes: Gauge,
    egress_connections: Gauge,
    egress_requests: Gauge,
    /// `events_accepted` and `events_rejected` over all labels.
    accepted_total: AtomicU64,
    rejected_total: AtomicU64,
}

impl Metrics {
    /// The registry, with the store's own metrics in it.
    pub fn new(store: &dyn Store) -> Arc<Metrics> {
        let mut r = Registry::with_prefix("hookrelay");
        let m = Metrics {
            events_received: Counter::default(),
            events_accepted: Family::default(),
            events_rejected: Family::default(),
            events_duplicate: Counter::default(),
            deliveries: Family::default(),
            attempt_duration: Family::new_with_constructor(latency_histogram),
            end_to_end: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            circuit: Family::default(),
            store_bytes: Gauge::default(),
            egress_connections: Gauge::default(),
            egress_requests: Gauge::default(),
            accepted_total: AtomicU64::new(0),
            rejected_total: AtomicU64::new(0),
            registry: Registry::default(),
        };
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
            "deliveries",
            "Delivery attempts by target and outcome (succeeded, retry, dead, cancelled)",
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
        r.register("queue_depth", "Deliveries by state", m.queue_depth.clone());
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
        store.register_metrics(&mut r);
        Arc::new(Metrics { registry: r, ..m })
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

    pub fn outcome(&self, target: &str, outcome: &str) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                target: target.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The Prometheus text exposition, gauges read now.
    pub fn render(&self, store: &dyn Store, catalog: &Catalog) -> String {
        for state in State::ALL {
            self.queue_depth
                .get_or_create(&StateLabel {
                    state: state.as_str().to_string(),
                })
                .set(store.count(state));
        }
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
        out
    }
}
