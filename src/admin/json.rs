//! The JSON shapes of the admin API's answers (docs/openapi.json has them
//! as schemas; tests/openapi.rs checks every answer against them).
//!
//! Invariants: no answer built here holds a secret, a password or a header
//! value; the only answers with a secret are those of a creation and of a
//! rotation, which add it themselves. What a receiver answered (status,
//! error, excerpt) is shown in full only at [`Detail::Full`]; a subscriber
//! token gets [`Detail::Outcome`] in every answer that carries it.

use serde_json::{json, Value};

use crate::admin::tokens::Scope;
use crate::catalog::{Origin, Target};
use crate::store::{Attempt, Counters, Delivery, DeliveryId, State, TestSend};

/// How much of what receivers answered an answer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Status, error and excerpt as recorded: for the operator's tokens
    /// (`admin`, `read`), who can read the configuration anyway.
    Full,
    /// Whether it was delivered, and the status class (`2xx` …) only: a
    /// subscriber chooses the URL, so anything more would let it probe
    /// what `egress.allow` opens (which ports answer, what internal
    /// services say, which names resolve).
    Outcome,
}

/// What a subscriber is told of a request that got no status.
pub const NOT_DELIVERED: &str = "not delivered";

impl Detail {
    pub fn of(scope: Scope) -> Detail {
        match scope {
            Scope::Subscriber => Detail::Outcome,
            Scope::Admin | Scope::Read => Detail::Full,
        }
    }

    /// `status`, as this detail shows it.
    fn status(self, status: Option<u16>) -> Option<u16> {
        status.filter(|_| self == Detail::Full)
    }

    /// `error`, as this detail shows it.
    fn error(self, error: Option<&str>) -> Option<&str> {
        match self {
            Detail::Full => error,
            Detail::Outcome => error.map(|_| NOT_DELIVERED),
        }
    }
}

/// `2xx` for 200-299, and so on.
fn status_class(status: Option<u16>) -> Option<String> {
    status.map(|s| format!("{}xx", s / 100))
}

pub fn counters_json(c: &Counters, detail: Detail) -> Value {
    json!({
        "calls": c.calls,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "dead": c.dead,
        "tests": c.tests,
        "last_status": detail.status(c.last_status),
        "last_status_class": status_class(c.last_status),
        "last_error": detail.error(c.last_error.as_deref()),
        "last_at": c.last_at_ms,
    })
}

/// succeeded / (succeeded + failed), `None` before any delivery attempt.
pub fn success_rate(c: &Counters) -> Option<f64> {
    let tried = c.succeeded + c.failed;
    (tried > 0).then(|| c.succeeded as f64 / tried as f64)
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// An endpoint as the API shows it.
pub fn endpoint_json(t: &Target, detail: Detail) -> Value {
    let spec = &t.spec;
    let record = t.record();
    let events: Vec<String> = spec.events.iter().map(ToString::to_string).collect();
    let p = &spec.policy;
    let counters = t.lane.shown_counters();
    let c = spec.config.as_deref();
    let headers: serde_json::Map<String, Value> = spec
        .outbound
        .headers
        .iter()
        .filter(|(n, _)| {
            // basic_auth's header is shown as basic_auth.
            !(c.is_some_and(|c| c.basic_auth.is_some()) && *n == http::header::AUTHORIZATION)
        })
        .map(|(n, _)| (n.to_string(), json!("***")))
        .collect();
    let now = crate::store::now_ms();
    let tests: Vec<Value> = record.tests.iter().map(|s| test_json(s, detail)).collect();
    json!({
        "id": spec.key,
        "origin": spec.origin,
        "owner": record.owner,
        "name": spec.name,
        "description": c.map_or("", |c| c.description.as_str()),
        "url": spec.url.to_string(),
        "events": events,
        "route": spec.route,
        "enabled": spec.enabled,
        "disabled_reason": record.disabled_reason,
        "format": spec.outbound.shape.body.format(),
        "template": c.and_then(|c| c.template.clone()),
        "content_type": c.and_then(|c| c.content_type.clone()),
        "xml_root": c.and_then(|c| c.xml_root.as_ref().map(|x| x.as_str().to_string())),
        "basic_auth": c.and_then(|c| c.basic_auth.as_ref()).map(|a| json!({"username": a.username})),
        "headers": headers,
        "filter": spec.filter.as_ref().map(|f| f.to_json()),
        "retry": {
            "max_attempts": p.max_attempts,
            "timeout": duration(p.timeout),
            "success": p.success.to_strings(),
            "backoff": {
                "initial": duration(p.backoff.initial),
                "max": duration(p.backoff.max),
                "multiplier": p.backoff.multiplier,
                "jitter": p.backoff.jitter,
            },
        },
        "rate": {"per_second": p.rate.per_second.get(), "burst": p.rate.burst.get()},
        "concurrency": p.concurrency,
        "metadata": c.map(|c| c.metadata.clone()).unwrap_or_default(),
        "secrets": spec.live_secrets(now).len(),
        "created_at": record.created_at_ms,
        "updated_at": record.updated_at_ms,
        "counters": counters_json(&counters, detail),
        "success_rate": success_rate(&counters),
        "circuit": t.lane.circuit_state(),
        "recent_tests": tests,
    })
}

/// A test send; the excerpt only at [`Detail::Full`].
pub fn test_json(s: &TestSend, detail: Detail) -> Value {
    let mut j = json!({
        "event_id": s.event_id,
        "event_type": s.event_type,
        "at": s.at_ms,
        "status": detail.status(s.status),
        "status_class": status_class(s.status),
        "succeeded": s.succeeded,
        "error": detail.error(s.error.as_deref()),
        "duration_ms": s.duration_ms,
    });
    if detail == Detail::Full {
        j["excerpt"] = json!(s.excerpt);
    }
    j
}

/// An API endpoint in the REST Hooks view.
pub fn hook_json(t: &Target, detail: Detail) -> Value {
    let record = t.record();
    let events: Vec<String> = t.spec.events.iter().map(ToString::to_string).collect();
    json!({
        "id": t.spec.key,
        "target_url": t.spec.url.to_string(),
        "event": events.join(","),
        "route": t.spec.route,
        "enabled": t.spec.enabled,
        "created_at": record.created_at_ms,
        "counters": counters_json(&t.lane.shown_counters(), detail),
        "circuit": t.lane.circuit_state(),
    })
}

/// A target for `GET /api/targets` (operator tokens only).
pub fn target_json(t: &Target) -> Value {
    let events: Vec<String> = t.spec.events.iter().map(ToString::to_string).collect();
    json!({
        "key": t.spec.key,
        "origin": match t.spec.origin {
            Origin::Config => "config",
            // Older clients know API endpoints as subscriptions.
            Origin::Api => "subscription",
        },
        "name": t.spec.name,
        "route": t.spec.route,
        "url": t.spec.url.to_string(),
        "events": events,
        "enabled": t.spec.enabled,
        "counters": counters_json(&t.lane.shown_counters(), Detail::Full),
        "circuit": t.lane.circuit_state(),
    })
}

/// An attempt, as the delivery log shows it (operator tokens only).
pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "at": a.at_ms,
        "duration_ms": a.duration_ms,
        "status": a.status,
        "error": a.error,
        "excerpt": a.excerpt,
        "request_headers": a.request_headers,
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
