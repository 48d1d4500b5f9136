//! The JSON shapes of the admin API's answers (docs/openapi.json has them
//! as schemas; tests/openapi.rs checks every answer against them).

use serde_json::{json, Value};

use crate::catalog::Target;
use crate::store::{Attempt, Counters, Delivery, DeliveryId, State, Subscription};

pub fn counters_json(c: &Counters) -> Value {
    json!({
        "calls": c.calls,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "dead": c.dead,
        "last_status": c.last_status,
        "last_error": c.last_error,
        "last_at": c.last_at_ms,
    })
}

pub fn hook_json(sub: &Subscription, target: Option<&Target>) -> Value {
    let mut j = json!({
        "id": sub.id,
        "target_url": sub.target_url,
        "event": sub.event,
        "route": sub.route,
        "created_at": sub.created_at_ms,
    });
    if let Some(t) = target {
        j["counters"] = counters_json(&t.lane.counters());
        j["circuit"] = json!(t.lane.circuit_state());
    }
    j
}

pub fn target_json(t: &Target) -> Value {
    let events: Vec<String> = t.spec.events.iter().map(ToString::to_string).collect();
    json!({
        "key": t.spec.key,
        "origin": t.spec.origin,
        "route": t.spec.route,
        "url": t.spec.url.to_string(),
        "events": events,
        "counters": counters_json(&t.lane.counters()),
        "circuit": t.lane.circuit_state(),
    })
}

pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "at": a.at_ms,
        "duration_ms": a.duration_ms,
        "status": a.status,
        "error": a.error,
        "excerpt": a.excerpt,
    })
}

pub fn delivery_json(id: DeliveryId, d: &Delivery) -> Value {
    json!({
        "id": id.to_string(),
        "event": d.event.to_string(),
        "target": d.target,
        "state": d.state,
        "attempts": d.attempts,
        "next_at": (d.state == State::Pending).then_some(d.next_at_ms),
        "last": d.last.as_ref().map(attempt_json),
        "note": d.note,
    })
}
