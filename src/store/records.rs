//! The records of the store, the same for every backend: ids, events,
//! deliveries and their states, attempts, endpoint records, the inbound
//! log, counters, and the delivery history the console charts.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

// === ids ===

macro_rules! id_type {
    ($name:ident, $prefix:literal) => {
        /// A time-ordered id (ULID): 16 bytes big-endian as a key,
        #[doc = concat!("`", $prefix, "<ulid>` as text.")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub ulid::Ulid);

        impl $name {
            pub fn to_key(self) -> [u8; 16] {
                self.0 .0.to_be_bytes()
            }

            pub fn from_key(key: &[u8]) -> Option<Self> {
                let bytes: [u8; 16] = key.get(..16)?.try_into().ok()?;
                Some($name(ulid::Ulid(u128::from_be_bytes(bytes))))
            }

            pub fn parse(s: &str) -> Option<Self> {
                let rest = s.strip_prefix($prefix)?;
                ulid::Ulid::from_string(rest).ok().map($name)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| serde::de::Error::custom("bad id"))
            }
        }
    };
}

id_type!(EventId, "evt_");
id_type!(DeliveryId, "dlv_");
id_type!(InboundId, "in_");

// === records ===

/// A received event, as kept in the `events` tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventMeta {
    pub received_at_ms: u64,
    pub source: String,
    pub route: String,
    pub event_type: String,
    /// `content-type` and the route's `forward_headers`, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The request's other headers (never credentials or hop-by-hop ones),
    /// kept only when a target of the route renders a template, which sees
    /// them. They are not forwarded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<(String, String)>,
    /// Proxy mode: the URL the event is relayed to (the `origin` target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: EventId,
    pub meta: EventMeta,
    pub body: Bytes,
}

/// Where a delivery is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    InFlight,
    Succeeded,
    Dead,
    /// Its target was removed; it will not be attempted.
    Cancelled,
}

impl State {
    pub const ALL: [State; 5] = [
        State::Pending,
        State::InFlight,
        State::Succeeded,
        State::Dead,
        State::Cancelled,
    ];

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Succeeded => "succeeded",
            State::Dead => "dead",
            State::Cancelled => "cancelled",
        }
    }

    /// Its place in [`State::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn is_finished(self) -> bool {
        matches!(self, State::Succeeded | State::Dead | State::Cancelled)
    }
}

/// One (event, target) pair, as kept in the `deliveries` tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    pub event: EventId,
    pub target: String,
    pub state: State,
    pub attempts: u32,
    pub next_at_ms: u64,
    pub last: Option<Attempt>,
    /// Why it was cancelled or last re-queued by hand.
    #[serde(default)]
    pub note: Option<String>,
    /// `attempts` when it was last re-queued by hand: the attempt budget
    /// (`max_attempts`) counts from here.
    #[serde(default)]
    pub base: u32,
}

/// One try at a delivery, as kept in the `attempts` tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The start of the response body, bounded.
    pub excerpt: String,
    /// The request's headers as sent, secret values (basic auth, the
    /// endpoint's own headers) as `***`. Empty on attempts that sent
    /// nothing, and on those stored before hookrelay kept them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers: Vec<(String, String)>,
}

/// The name a REST Hooks subscription's endpoint gets: `event → host`, cut
/// to the 100 characters a name may have (subscribing, and moving an older
/// store's subscriptions into endpoints, name them alike).
pub fn hook_name(event: &str, host: &str) -> String {
    format!("{event} → {host}").chars().take(100).collect()
}

impl Attempt {
    /// An attempt that sent nothing, and why (no event, no URL, no body).
    pub fn failed(error: String) -> Attempt {
        Attempt {
            at_ms: crate::store::now_ms(),
            duration_ms: 0,
            status: None,
            error: Some(error),
            excerpt: String::new(),
            request_headers: Vec::new(),
        }
    }
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Succeeded,
    RetryAt(u64),
    Dead,
}

/// An event to accept, with the targets it goes to.
pub struct NewEvent {
    pub meta: EventMeta,
    pub body: Bytes,
    /// The ids of the endpoints it goes to; shared with the catalog's
    /// matches, so an event for thousands costs no copy of their ids.
    pub targets: std::sync::Arc<[String]>,
    /// (route, key): a second event with the same pair within retention is a duplicate.
    pub dedup: Option<(String, String)>,
    /// The request path, for the inbound log record `accept` writes with the event.
    pub path: String,
}

/// A target's delivery counters, as kept in the `meta` tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Attempts made.
    pub calls: u64,
    pub succeeded: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Deliveries that ended dead.
    pub dead: u64,
    /// Test sends (counted in `calls`, not in `succeeded` or `failed`).
    #[serde(default)]
    pub tests: u64,
    /// Time spent on attempts (not test sends), summed.
    #[serde(default)]
    pub duration_ms: u64,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_at_ms: Option<u64>,
}

impl Counters {
    /// Adds `delta`'s counts; its `last_*` replace these if they are newer.
    pub fn add(&mut self, delta: &Counters) {
        self.calls += delta.calls;
        self.succeeded += delta.succeeded;
        self.failed += delta.failed;
        self.dead += delta.dead;
        self.tests += delta.tests;
        self.duration_ms += delta.duration_ms;
        if delta.last_at_ms.is_some() && delta.last_at_ms >= self.last_at_ms {
            self.last_status = delta.last_status;
            self.last_error = delta.last_error.clone();
            self.last_at_ms = delta.last_at_ms;
        }
    }

    /// What was counted since `earlier` (the same counters, before).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let newer = self.last_at_ms != earlier.last_at_ms;
        Counters {
            calls: self.calls.saturating_sub(earlier.calls),
            succeeded: self.succeeded.saturating_sub(earlier.succeeded),
            failed: self.failed.saturating_sub(earlier.failed),
            dead: self.dead.saturating_sub(earlier.dead),
            tests: self.tests.saturating_sub(earlier.tests),
            duration_ms: self.duration_ms.saturating_sub(earlier.duration_ms),
            last_status: if newer { self.last_status } else { None },
            last_error: if newer { self.last_error.clone() } else { None },
            last_at_ms: if newer { self.last_at_ms } else { None },
        }
    }
}

/// What `accept` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub id: EventId,
    pub deliveries: usize,
    pub duplicate: bool,
}

/// One page of deliveries, newest first.
#[derive(Debug)]
pub struct Page {
    pub deliveries: Vec<(DeliveryId, Delivery)>,
    /// Where the next page starts (`after`), if the scan stopped early.
    pub next: Option<DeliveryId>,
}

impl Page {
    /// One page from `rows`, newest first: those matching `state` and
    /// `target`, up to `limit`, looking at no more than `scan` rows; `next`
    /// says where the next page starts when it stopped early. Both backends
    /// page this way, so a cursor means the same on either.
    pub fn collect(
        rows: impl IntoIterator<Item = Result<(DeliveryId, Delivery), super::StoreError>>,
        state: Option<State>,
        target: Option<&str>,
        limit: usize,
        scan: usize,
    ) -> Result<Page, super::StoreError> {
        let mut deliveries = Vec::new();
        let mut last = None;
        for (n, row) in rows.into_iter().enumerate() {
            let (id, d) = row?;
            if n >= scan {
                return Ok(Page {
                    deliveries,
                    next: last,
                });
            }
            last = Some(id);
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
}

/// Where an endpoint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The config file: read-only through the API; the record keeps its id.
    Config,
    /// The admin API (REST Hooks subscriptions included).
    Api,
}

/// An endpoint as kept in the `endpoints` tree. The store keeps `spec` as
/// it is given (the definition the API took, secrets included) and reads
/// only the fields it indexes by.
#[derive(Clone, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub id: String,
    pub origin: Origin,
    /// Config endpoints: their route and URL, by which a renamed target
    /// keeps its id.
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub url: String,
    /// The name of the token that made it.
    #[serde(default)]
    pub owner: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// The secrets that sign its deliveries, newest first.
    #[serde(default)]
    pub secrets: Vec<StoredSecret>,
    /// Why it was disabled by what a receiver answered (`410 Gone`).
    #[serde(default)]
    pub disabled_reason: Option<String>,
    /// Its last test sends, newest first.
    #[serde(default)]
    pub tests: Vec<TestSend>,
    /// The definition; its shape belongs to the layer that reads it.
    pub spec: serde_json::Value,
}

/// A test send to an endpoint, as its record keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TestSend {
    /// `evt_test_<ulid>`: the `webhook-id` it was sent with.
    pub event_id: String,
    pub event_type: String,
    pub at_ms: u64,
    pub status: Option<u16>,
    pub succeeded: bool,
    pub error: Option<String>,
    pub duration_ms: u64,
    pub excerpt: String,
}

/// A signing secret (`whsec_…`) and when it stops signing (after a rotation).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredSecret {
    pub secret: String,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl std::fmt::Debug for EndpointRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The spec holds secrets and passwords.
        f.debug_struct("EndpointRecord")
            .field("id", &self.id)
            .field("origin", &self.origin)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

/// What became of an ingest request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Duplicate,
    Rejected,
}

impl Outcome {
    pub fn parse(s: &str) -> Option<Outcome> {
        match s {
            "accepted" => Some(Outcome::Accepted),
            "duplicate" => Some(Outcome::Duplicate),
            "rejected" => Some(Outcome::Rejected),
            _ => None,
        }
    }
}

/// One ingest request, as kept in the `inbound` tree (the inbound log).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Inbound {
    pub at_ms: u64,
    pub source: String,
    pub method: String,
    pub path: String,
    pub route: Option<String>,
    pub event_type: Option<String>,
    pub outcome: Outcome,
    pub status: u16,
    /// A refusal's error code and message.
    pub code: Option<String>,
    pub reason: Option<String>,
    pub deliveries: usize,
    pub event: Option<EventId>,
}

impl Inbound {
    /// The inbound log's record of a request `accept` took, as `a` says:
    /// accepted, or a duplicate of the first event.
    pub fn accepted(new: &NewEvent, a: &Accepted) -> Inbound {
        Inbound {
            at_ms: new.meta.received_at_ms,
            source: new.meta.source.clone(),
            method: "POST".into(),
            path: new.path.clone(),
            route: Some(new.meta.route.clone()),
            event_type: Some(new.meta.event_type.clone()),
            outcome: if a.duplicate {
                Outcome::Duplicate
            } else {
                Outcome::Accepted
            },
            status: 202,
            code: None,
            reason: None,
            deliveries: a.deliveries,
            event: Some(a.id),
        }
    }
}

/// Which inbound records a listing wants.
#[derive(Debug, Clone, Default)]
pub struct InboundFilter {
    pub route: Option<String>,
    pub event_type: Option<String>,
    pub outcome: Option<Outcome>,
}

impl InboundFilter {
    pub fn matches(&self, r: &Inbound) -> bool {
        self.route
            .as_ref()
            .is_none_or(|x| r.route.as_ref() == Some(x))
            && self
                .event_type
                .as_ref()
                .is_none_or(|x| r.event_type.as_ref() == Some(x))
            && self.outcome.is_none_or(|o| r.outcome == o)
    }
}

/// One page of the inbound log, newest first.
#[derive(Debug)]
pub struct InboundPage {
    pub records: Vec<(InboundId, Inbound)>,
    /// Where the next page starts (`after`), if there may be more.
    pub next: Option<InboundId>,
}

impl InboundPage {
    /// One page from `records`, newest first, as [`Page::collect`] makes
    /// one of deliveries.
    pub fn collect(
        records: impl IntoIterator<Item = Result<(InboundId, Inbound), super::StoreError>>,
        filter: &InboundFilter,
        limit: usize,
        scan: usize,
    ) -> Result<InboundPage, super::StoreError> {
        let mut out = Vec::new();
        for (n, record) in records.into_iter().enumerate() {
            let (id, r) = record?;
            if filter.matches(&r) {
                out.push((id, r));
                if out.len() == limit {
                    return Ok(InboundPage {
                        next: Some(id),
                        records: out,
                    });
                }
            }
            if n + 1 >= scan {
                return Ok(InboundPage {
                    records: out,
                    next: Some(id),
                });
            }
        }
        Ok(InboundPage {
            records: out,
            next: None,
        })
    }
}

// === history ===

/// The series of overall counts; an endpoint's series is its id.
pub const ALL_SERIES: &str = "*";

/// How wide a history bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Minute,
    Hour,
}

impl Resolution {
    /// The bucket's width.
    pub fn width_ms(self) -> u64 {
        match self {
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }

    /// The start of the bucket that holds `at_ms`.
    pub fn bucket(self, at_ms: u64) -> u64 {
        at_ms - at_ms % self.width_ms()
    }
}

/// One bucket of one series, as kept in the `stats` tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatRow {
    pub series: String,
    pub resolution: Resolution,
    /// The bucket's start: a multiple of its width.
    pub start_ms: u64,
    pub values: StatValues,
}

/// What happened within a bucket: counts (added up), and the gauges at
/// its end (the overall series only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatValues {
    /// Events accepted.
    pub events: u64,
    /// Requests acknowledged as duplicates.
    pub duplicates: u64,
    /// Ingest requests refused.
    pub rejected: u64,
    /// Attempts that succeeded.
    pub succeeded: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Deliveries that ended dead.
    pub dead: u64,
    /// Attempts made (not test sends).
    pub attempts: u64,
    /// Time those attempts took, summed.
    pub duration_ms: u64,
    pub gauges: Option<Gauges>,
}

impl StatValues {
    /// Adds `other`'s counts; its gauges, if it has them, are the newer ones.
    pub fn add(&mut self, other: &StatValues) {
        self.events += other.events;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.succeeded += other.succeeded;
        self.failed += other.failed;
        self.dead += other.dead;
        self.attempts += other.attempts;
        self.duration_ms += other.duration_ms;
        if other.gauges.is_some() {
            self.gauges = other.gauges;
        }
    }

    /// Whether it holds no count and no gauge.
    pub fn is_empty(&self) -> bool {
        *self == StatValues::default()
    }
}

/// Levels at one moment, not counts: they are not added up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Gauges {
    /// Deliveries pending, in flight and dead.
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    /// Endpoints whose circuit is open.
    pub open_circuits: u64,
    /// The store's size on disk.
    pub store_bytes: u64,
}
