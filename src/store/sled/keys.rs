//! How the sled backend lays records out: value encoding (a version byte,
//! then JSON, or the event's own layout) and big-endian keys, so ranges
//! sort by time and each target's `due` entries form one run (and each
//! history series' buckets).

use serde::{Deserialize, Serialize};

use crate::store::sled::VALUE_VERSION;
use crate::store::{DeliveryId, EventId, EventMeta, Resolution, StoreError};

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

/// The attempt number at the end of an `attempts` key.
pub(super) fn attempt_number(k: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(16..20)?.try_into().ok()?))
}

pub(super) fn dedup_key(route: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(route.len() + 1 + key.len());
    k.extend_from_slice(route.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `series ‖ 0 ‖ resolution (`m` or `h`) ‖ start ms`: each series' rows of
/// one resolution form one run, oldest first. Series names (endpoint ids,
/// `*`) hold no NUL byte.
pub(super) fn stats_key(series: &str, resolution: Resolution, start_ms: u64) -> Vec<u8> {
    let mut k = stats_prefix(series);
    k.push(resolution_byte(resolution));
    k.extend_from_slice(&start_ms.to_be_bytes());
    k
}

/// Where `series`' rows start.
pub(super) fn stats_prefix(series: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(series.len() + 10);
    k.extend_from_slice(series.as_bytes());
    k.push(0);
    k
}

/// (series, resolution, start ms) of a `stats` key.
pub(super) fn parse_stats_key(k: &[u8]) -> Option<(&str, Resolution, u64)> {
    let split = k.len().checked_sub(10)?;
    let (series, rest) = k.split_at(split);
    if rest[0] != 0 {
        return None;
    }
    let resolution = match rest[1] {
        b'm' => Resolution::Minute,
        b'h' => Resolution::Hour,
        _ => return None,
    };
    let start = u64::from_be_bytes(rest[2..].try_into().ok()?);
    Some((std::str::from_utf8(series).ok()?, resolution, start))
}

fn resolution_byte(resolution: Resolution) -> u8 {
    match resolution {
        Resolution::Minute => b'm',
        Resolution::Hour => b'h',
    }
}
