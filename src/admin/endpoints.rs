//! Endpoints through the API: list, show, make, change, remove, rotate a
//! secret, Send Test; the event catalog; the inbound log.
//!
//! Invariants: a subscriber token sees and touches only the endpoints it
//! made (others are "not found" to it, not "forbidden", so it cannot tell
//! which ids exist); a secret is returned only by the call that made it;
//! a test send is shaped and signed exactly as a delivery of the same
//! event would be, and is kept out of the success counters. A subscriber
//! token learns of what receivers answered only whether it was delivered
//! and the status class ([`Detail::Outcome`]), in every answer, and may
//! make [`SUBSCRIBER_TEST_BURST`] test sends at once, one more every
//! [`SUBSCRIBER_TEST_EVERY`]: a test send is a request to a URL it chose,
//! inside whatever `egress.allow` opens, so it must not serve as a scanner.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::error::{invalid, AdminError};
use crate::admin::json::{endpoint_json, test_json, Detail};
use crate::admin::tokens::{Grant, Scope};
use crate::admin::{ok, page_limit, Admin};
use crate::catalog::{Origin, Target, MAX_GRACE};
use crate::config::endpoint::RouteCatalogs;
use crate::config::event_types::EventType;
use crate::deliver::sign::Secret;
use crate::server::json_response;
use crate::store::{
    now_ms, Attempt, Event, EventId, EventMeta, InboundFilter, InboundId, Outcome, TestSend,
};
use crate::telemetry::log::Escaped;

/// Page sizes of `GET /api/endpoints` and `GET /api/events` without `limit`.
const ENDPOINTS_DEFAULT: usize = 100;
const EVENTS_DEFAULT: usize = 50;
/// Records one inbound page may look at before answering with a cursor.
const INBOUND_SCAN: usize = 100_000;
/// Inbound records looked at for the event types seen at ingest.
const SEEN_SCAN: usize = 10_000;
/// The type of a test send when neither the caller nor a catalog gives one.
const TEST_TYPE: &str = "hookrelay.test";
/// Test sends a subscriber token may make at once ...
pub const SUBSCRIBER_TEST_BURST: u32 = 10;
/// ... and how long until it may make one more.
pub const SUBSCRIBER_TEST_EVERY: Duration = Duration::from_secs(6);

type Answer = Result<Response<Full<Bytes>>, AdminError>;

/// A fresh Standard Webhooks secret: 32 random bytes.
pub fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The test sends each subscriber token has left: one bucket per token
/// name. Operator tokens are not limited (they can read the config).
pub struct TestSends(DefaultKeyedRateLimiter<String>);

impl Default for TestSends {
    fn default() -> TestSends {
        // Both constants are above 0, which is all either call asks.
        let burst = NonZeroU32::new(SUBSCRIBER_TEST_BURST).expect("a burst above 0");
        let quota = Quota::with_period(SUBSCRIBER_TEST_EVERY)
            .expect("a period above 0")
            .allow_burst(burst);
        TestSends(RateLimiter::keyed(quota))
    }
}

impl TestSends {
    /// Takes one test send from `who`'s bucket, or says how long until
    /// there is one.
    fn take(&self, who: &Grant) -> Result<(), AdminError> {
        if who.scope != Scope::Subscriber {
            return Ok(());
        }
        // Full buckets hold nothing worth keeping, and names come and go
        // with the tokens file: drop them, so the map holds only tokens
        // that tested within the last minute.
        self.0.retain_recent();
        self.0.check_key(&who.name).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            AdminError::RateLimited {
                message: format!(
                    "token {} has made its {SUBSCRIBER_TEST_BURST} test sends; \
                     one more is possible every {}s",
                    who.name,
                    SUBSCRIBER_TEST_EVERY.as_secs()
                ),
                retry_after: wait,
            }
        })
    }
}

impl Admin {
    /// The endpoint `id`, if `who` may see it.
    pub(super) fn visible(&self, id: &str, who: &Grant) -> Result<Arc<Target>, AdminError> {
        let t = self
            .catalog
            .get(id)
            .ok_or_else(|| AdminError::NotFound(format!("endpoint {id}")))?;
        if may_see(&t, who) {
            Ok(t)
        } else {
            Err(AdminError::NotFound(format!("endpoint {id}")))
        }
    }

    pub(super) fn list_endpoints(&self, query: &str, who: &Grant) -> Answer {
        let mut route = None;
        let mut after = None;
        let mut limit = ENDPOINTS_DEFAULT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "route" => route = Some(v.into_owned()),
                "after" => after = Some(v.into_owned()),
                "limit" => limit = page_limit(&v)?,
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        let all: Vec<Arc<Target>> = self
            .catalog
            .all()
            .into_iter()
            .filter(|t| may_see(t, who))
            .filter(|t| {
                route
                    .as_ref()
                    .is_none_or(|r| t.spec.route.as_ref() == Some(r))
            })
            .collect();
        // Config endpoints in file order, then API ones by id (time-ordered).
        let start = match &after {
            None => 0,
            Some(a) => match all.iter().position(|t| &t.spec.key == a) {
                Some(i) => i + 1,
                None => all
                    .iter()
                    .position(|t| t.spec.origin == Origin::Api && t.spec.key.as_str() > a.as_str())
                    .unwrap_or(all.len()),
            },
        };
        let detail = Detail::of(who.scope);
        let page: Vec<Value> = all
            .iter()
            .skip(start)
            .take(limit)
            .map(|t| endpoint_json(t, detail))
            .collect();
        let next = (start + limit < all.len()).then(|| all[start + limit - 1].spec.key.clone());
        Ok(ok(json!({ "endpoints": page, "next": next })))
    }

    pub(super) fn show_endpoint(&self, id: &str, who: &Grant) -> Answer {
        let t = self.visible(id, who)?;
        Ok(ok(endpoint_json(&t, Detail::of(who.scope))))
    }

    /// Refuses a new API endpoint over `admin.max_endpoints` or the caller's cap.
    pub(super) fn check_caps(&self, who: &Grant) -> Result<(), AdminError> {
        let settings = self.settings();
        let (all, mine) = self.catalog.api_counts(Some(&who.name));
        if all >= settings.max_endpoints {
            return Err(AdminError::Limit(format!(
                "there are {all} API endpoints, the most admin.max_endpoints allows"
            )));
        }
        if who.scope == Scope::Subscriber && mine >= settings.max_endpoints_per_token {
            return Err(AdminError::Limit(format!(
                "token {} has made {mine} endpoints, the most admin.max_endpoints_per_token allows",
                who.name
            )));
        }
        Ok(())
    }

    /// Makes an API endpoint `id` from a body (its `secret` taken out, or
    /// a new one made); returns the endpoint and its secret.
    pub(super) async fn make_endpoint(
        &self,
        id: String,
        mut body: Value,
        who: &Grant,
    ) -> Result<(Arc<Target>, String), AdminError> {
        self.check_caps(who)?;
        let secret = match body.as_object_mut().and_then(|o| o.remove("secret")) {
            None | Some(Value::Null) => new_secret(),
            Some(Value::String(s)) => {
                Secret::parse(&s).map_err(|e| invalid("secret", e))?;
                s
            }
            Some(_) => return Err(invalid("secret", "must be a whsec_ string")),
        };
        let target = self
            .catalog
            .create(id, body, secret.clone(), Some(who.name.clone()))
            .await?;
        tracing::info!(endpoint = %Escaped(&target.spec.key), name = %Escaped(&target.spec.name), url = %Escaped(&target.spec.url), by = %Escaped(&who.name), "endpoint created");
        Ok((target, secret))
    }

    pub(super) async fn create_endpoint(&self, body: Value, who: &Grant) -> Answer {
        let id = format!("ep_{}", ulid::Ulid::new());
        let (target, secret) = self.make_endpoint(id, body, who).await?;
        let mut out = endpoint_json(&target, Detail::of(who.scope));
        out["secret"] = json!(secret);
        Ok(json_response(StatusCode::CREATED, out))
    }

    pub(super) async fn patch_endpoint(&self, id: &str, patch: Value) -> Answer {
        if !patch.is_object() {
            return Err(invalid("body", "a JSON merge patch is an object"));
        }
        if patch.get("secret").is_some() {
            return Err(invalid(
                "secret",
                "is changed by POST /api/endpoints/{id}/rotate-secret",
            ));
        }
        let t = self.catalog.update(id, &patch).await?;
        tracing::info!(endpoint = %Escaped(id), name = %Escaped(&t.spec.name), enabled = t.spec.enabled, "endpoint changed");
        // Only admin tokens may change an endpoint.
        Ok(ok(endpoint_json(&t, Detail::Full)))
    }

    pub(super) async fn delete_endpoint(&self, id: &str, who: &Grant) -> Answer {
        self.visible(id, who)?;
        let cancelled = self.catalog.delete(id, "endpoint deleted").await?;
        tracing::info!(endpoint = %Escaped(id), cancelled, by = %Escaped(&who.name), "endpoint deleted");
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    pub(super) async fn rotate_secret(&self, id: &str, body: Value) -> Answer {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Rotate {
            #[serde(default, with = "humantime_serde")]
            grace: Option<Duration>,
        }
        let req: Rotate = serde_json::from_value(body).map_err(|e| invalid("grace", e))?;
        let grace = req.grace.unwrap_or(Duration::from_secs(24 * 3600));
        if grace > MAX_GRACE {
            return Err(invalid("grace", "at most 30d"));
        }
        let secret = new_secret();
        let (_, until) = self.catalog.rotate(id, secret.clone(), grace).await?;
        tracing::info!(endpoint = %Escaped(id), grace = %humantime::format_duration(grace), "secret rotated");
        Ok(ok(json!({
            "id": id,
            "secret": secret,
            "previous_expires_at": until,
        })))
    }

    /// Sends the endpoint a signed test of an event type now, shaped as a
    /// delivery would be, and answers with the attempt (at `who`'s detail).
    pub(super) async fn test_send(&self, id: &str, body: Value, who: &Grant) -> Answer {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TestReq {
            event_type: Option<String>,
            payload: Option<Value>,
        }
        let req: TestReq = serde_json::from_value(body).map_err(|e| invalid("body", e))?;
        let target = self.visible(id, who)?;
        if target.spec.to_event_url {
            return Err(invalid(
                "id",
                "a proxy route's origin sends each event to its own URL; there is none to test",
            ));
        }
        let catalogs = self.catalog.event_types();
        let (route, event_type, example) = pick_test(&catalogs, &target, req.event_type.as_deref());
        let body = match (req.payload, example) {
            (Some(Value::String(s)), _) => Bytes::from(s),
            (Some(p), _) => Bytes::from(p.to_string()),
            (None, Some(e)) => Bytes::from(e.to_string()),
            (None, None) if event_type == TEST_TYPE => Bytes::from(
                json!({"type": TEST_TYPE, "endpoint": target.spec.key, "created_at": now_ms()})
                    .to_string(),
            ),
            (None, None) => {
                return Err(invalid(
                    "payload",
                    format!("no catalog has an example for `{event_type}`; give a payload"),
                ))
            }
        };
        // Last, so a refused body costs nothing; before anything is sent.
        self.test_sends.take(who)?;
        let ulid = ulid::Ulid::new();
        let event_id = format!("evt_test_{ulid}");
        let event = Event {
            id: EventId(ulid),
            meta: EventMeta {
                received_at_ms: now_ms(),
                source: "admin".into(),
                route: route.unwrap_or_default(),
                event_type: event_type.clone(),
                headers: vec![("content-type".into(), "application/json".into())],
                request_headers: Vec::new(),
                url: None,
            },
            body,
        };
        let attempt = match target.spec.outbound.shape.apply_as(&event, &event_id) {
            Err(e) => Attempt::failed(format!("the body cannot be shaped for this endpoint: {e}")),
            Ok(shaped) => {
                let uri = target.spec.url.uri().clone();
                target
                    .attempt(uri, &event_id, &event.meta, shaped, None)
                    .await
                    .0
            }
        };
        let sent = TestSend {
            event_id,
            event_type,
            at_ms: attempt.at_ms,
            status: attempt.status,
            succeeded: attempt
                .status
                .is_some_and(|s| target.spec.policy.success.contains(s)),
            error: attempt.error.clone(),
            duration_ms: attempt.duration_ms,
            excerpt: attempt.excerpt.clone(),
        };
        if attempt.status.is_some() {
            target.lane.record_test(&attempt);
        }
        self.catalog.record_test(id, sent.clone()).await?;
        tracing::info!(endpoint = %Escaped(id), status = sent.status, by = %Escaped(&who.name), "test send");
        Ok(ok(test_json(&sent, Detail::of(who.scope))))
    }

    /// The routes' catalogs, and the types seen at ingest that none declares.
    pub(super) async fn event_types(&self, query: &str) -> Answer {
        let mut only = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "route" => only = Some(v.into_owned()),
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        let page = self
            .store
            .inbound(&InboundFilter::default(), None, SEEN_SCAN, SEEN_SCAN)
            .await?;
        let mut seen: HashMap<(String, String), u64> = HashMap::new();
        for (_, r) in &page.records {
            if let (Some(route), Some(t), Outcome::Accepted | Outcome::Duplicate) =
                (&r.route, &r.event_type, r.outcome)
            {
                let at = seen.entry((route.clone(), t.clone())).or_insert(0);
                *at = (*at).max(r.at_ms);
            }
        }
        let catalogs = self.catalog.event_types();
        let mut out = Vec::new();
        for (route, catalog) in catalogs.iter() {
            if only.as_ref().is_some_and(|o| o != route) {
                continue;
            }
            for e in catalog {
                let last = seen.remove(&(route.clone(), e.name.clone()));
                out.push(json!({
                    "route": route,
                    "name": e.name,
                    "display_name": e.display_name,
                    "category": e.category,
                    "description": e.description,
                    "example": e.example,
                    "declared": true,
                    "last_seen": last,
                }));
            }
        }
        let mut rest: Vec<((String, String), u64)> = seen
            .into_iter()
            .filter(|((r, _), _)| only.as_ref().is_none_or(|o| o == r))
            .collect();
        rest.sort();
        for ((route, name), at) in rest {
            out.push(json!({
                "route": route,
                "name": name,
                "display_name": null,
                "category": null,
                "description": null,
                "example": null,
                "declared": false,
                "last_seen": at,
            }));
        }
        Ok(ok(json!({ "event_types": out })))
    }

    /// `GET /api/events`: the inbound log, newest first.
    pub(super) async fn inbound_log(&self, query: &str) -> Answer {
        let mut filter = InboundFilter::default();
        let mut after = None;
        let mut limit = EVENTS_DEFAULT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "route" => filter.route = Some(v.into_owned()),
                "type" => filter.event_type = Some(v.into_owned()),
                "outcome" => {
                    filter.outcome = Some(
                        Outcome::parse(&v)
                            .ok_or_else(|| invalid("outcome", "accepted, duplicate or rejected"))?,
                    )
                }
                "after" => {
                    after = Some(
                        InboundId::parse(&v).ok_or_else(|| invalid("after", "not an in_ id"))?,
                    )
                }
                "limit" => limit = page_limit(&v)?,
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        let page = self
            .store
            .inbound(&filter, after, limit, INBOUND_SCAN)
            .await?;
        let list: Vec<Value> = page
            .records
            .iter()
            .map(|(id, r)| {
                json!({
                    "id": id.to_string(),
                    "at": r.at_ms,
                    "source": r.source,
                    "method": r.method,
                    "path": r.path,
                    "route": r.route,
                    "type": r.event_type,
                    "outcome": r.outcome,
                    "status": r.status,
                    "code": r.code,
                    "reason": r.reason,
                    "deliveries": r.deliveries,
                    "event": r.event.map(|e| e.to_string()),
                })
            })
            .collect();
        Ok(ok(json!({
            "events": list,
            "next": page.next.map(|n| n.to_string()),
        })))
    }
}

/// Whether `who` may see endpoint `t`: admin and read tokens see all; a
/// subscriber only the API endpoints it made.
pub(super) fn may_see(t: &Target, who: &Grant) -> bool {
    who.scope != Scope::Subscriber
        || (t.spec.origin == Origin::Api && t.spec.owner.as_deref() == Some(&who.name))
}

/// The route, event type and example of a test send: the one asked for,
/// else the first catalog type the endpoint wants, else a plain test event.
fn pick_test(
    catalogs: &RouteCatalogs,
    target: &Target,
    asked: Option<&str>,
) -> (Option<String>, String, Option<Value>) {
    let routes: Vec<&(String, Vec<EventType>)> = catalogs
        .iter()
        .filter(|(r, _)| target.spec.route.as_ref().is_none_or(|t| t == r))
        .collect();
    let find = |pred: &dyn Fn(&EventType) -> bool| {
        routes.iter().find_map(|(r, c)| {
            c.iter()
                .find(|e| pred(e))
                .map(|e| (Some(r.clone()), e.name.clone(), e.example.clone()))
        })
    };
    if let Some(name) = asked {
        return find(&|e| e.name == name)
            .unwrap_or_else(|| (target.spec.route.clone(), name.to_string(), None));
    }
    find(&|e| target.spec.events.iter().any(|p| p.matches(&e.name)))
        .unwrap_or_else(|| (target.spec.route.clone(), TEST_TYPE.to_string(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse() {
        assert!(Secret::parse(&new_secret()).is_ok());
        assert_ne!(new_secret(), new_secret());
    }
}
