//! The records of the store, the same for every backend: ids, events,
//! deliveries and their states, attempts, subscriptions, counters.

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
    pub targets: Vec<String>,
    /// (route, key): a second event with the same pair within retention is a duplicate.
    pub dedup: Option<(String, String)>,
}

/// A REST Hooks subscription, as kept in the `subscriptions` tree.
#[derive(Clone, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub target_url: String,
    pub event: String,
    /// The signing secret, `whsec_…`. Shown once, at creation.
    pub secret: String,
    pub route: Option<String>,
    pub created_at_ms: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("target_url", &self.target_url)
            .field("event", &self.event)
            .field("secret", &"***")
            .field("route", &self.route)
            .finish()
    }
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
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_at_ms: Option<u64>,
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
