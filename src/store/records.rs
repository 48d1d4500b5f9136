//! The records of the store: ids, values and key layouts.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{StoreError, VALUE_VERSION};

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

    pub(super) fn index(self) -> usize {
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

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_VERSION];
    // Serializing these plain structs to a Vec cannot fail.
    serde_json::to_writer(&mut out, v).expect("records serialize");
    out
}

pub(super) fn decode<T: for<'de> Deserialize<'de>>(
    tree: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, rest)) => {
            serde_json::from_slice(rest).map_err(|e| StoreError::Corrupt {
                tree,
                reason: e.to_string(),
            })
        }
        _ => Err(StoreError::Corrupt {
            tree,
            reason: "unknown value version".into(),
        }),
    }
}

/// Bodies up to this size are kept in the event's value; larger ones go
/// to the `bodies` tree in chunks of this size. sled writes values over
/// about a quarter of its 512 KiB segment to blob files it never syncs, so
/// every value stays well below that.
pub(super) const BODY_CHUNK: usize = 64 * 1024;
/// The first byte of an event value whose body is in the `bodies` tree.
pub(super) const CHUNKED_EVENT: u8 = 2;

/// The event's value: version (`1`, or `CHUNKED_EVENT` when the body is in
/// chunks), the metadata's length and JSON, then the body when inline.
pub(super) fn encode_event(meta: &EventMeta, body: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(meta).expect("records serialize");
    let inline = body.len() <= BODY_CHUNK;
    let mut out = Vec::with_capacity(1 + 4 + meta.len() + if inline { body.len() } else { 0 });
    out.push(if inline { VALUE_VERSION } else { CHUNKED_EVENT });
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    out.extend_from_slice(&meta);
    if inline {
        out.extend_from_slice(body);
    }
    out
}

/// `event id ‖ chunk number` in the `bodies` tree.
pub(super) fn chunk_key(id: EventId, n: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&id.to_key());
    k[16..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The metadata and inline body of an event value, and whether its body is
/// in chunks instead.
pub(super) fn decode_event(v: &[u8]) -> Result<(EventMeta, &[u8], bool), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        tree: "events",
        reason: reason.into(),
    };
    let chunked = match v.first() {
        Some(&VALUE_VERSION) => false,
        Some(&CHUNKED_EVENT) => true,
        _ => return Err(corrupt("unknown value version")),
    };
    if v.len() < 5 {
        return Err(corrupt("value too short"));
    }
    let len = u32::from_be_bytes([v[1], v[2], v[3], v[4]]) as usize;
    let meta_end = 5usize
        .checked_add(len)
        .filter(|&e| e <= v.len())
        .ok_or_else(|| corrupt("meta length past the end"))?;
    let meta = serde_json::from_slice(&v[5..meta_end]).map_err(|e| corrupt(&e.to_string()))?;
    Ok((meta, &v[meta_end..], chunked))
}

/// `target ‖ 0 ‖ next_at ms ‖ delivery id`: one run of keys per target,
/// in due order, so the scheduler serves each target from its own run and
/// one slow or failing target never holds back another.
pub(super) fn due_key(target: &str, at_ms: u64, id: DeliveryId) -> Vec<u8> {
    let mut k = due_prefix(target);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&id.to_key());
    k
}

pub(super) fn due_prefix(target: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(target.len() + 25);
    k.extend_from_slice(target.as_bytes());
    k.push(0);
    k
}

/// (target, next_at ms, delivery) of a `due` key.
pub(super) fn parse_due_key(k: &[u8]) -> Option<(&str, u64, DeliveryId)> {
    let split = k.len().checked_sub(25)?;
    let (target, rest) = k.split_at(split);
    if rest[0] != 0 {
        return None;
    }
    let at = u64::from_be_bytes(rest[1..9].try_into().ok()?);
    let id = DeliveryId::from_key(&rest[9..])?;
    Some((std::str::from_utf8(target).ok()?, at, id))
}

pub(super) fn attempt_key(id: DeliveryId, n: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(&id.to_key());
    k[16..].copy_from_slice(&n.to_be_bytes());
    k
}

pub(super) fn dedup_key(route: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + 1 + key.len());
    k.extend_from_slice(route.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}
