//! What came in and what went out: targets with their counters, an
//! event with its deliveries and attempts, the delivery log, re-queues.

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::error::{invalid, AdminError};
use crate::admin::json::{attempt_json, delivery_json, target_json};
use crate::admin::{ok, page_limit, Admin};
use crate::store::{DeliveryId, EventId, State};
use crate::telemetry::log::{escaped, Escaped};

/// Page size of `GET /api/deliveries` without `limit` (at most `PAGE_MAX`).
const PAGE_DEFAULT: usize = 50;
/// Records one page request may look at before answering with a cursor.
const PAGE_SCAN: usize = 100_000;
/// Deliveries re-queued per step of a bulk retry; the relay serves other
/// work between steps.
const RETRY_STEP: usize = 500;

impl Admin {
    pub(super) fn targets(&self) -> Value {
        let targets: Vec<Value> = self.catalog.all().iter().map(|t| target_json(t)).collect();
        json!({ "targets": targets })
    }

    pub(super) async fn event(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let not_found = || AdminError::NotFound(format!("event {id}"));
        let event_id = EventId::parse(id).ok_or_else(not_found)?;
        let event = self.store.event(event_id).await?.ok_or_else(not_found)?;
        let mut deliveries = Vec::new();
        for (did, d) in self.store.deliveries_of(event_id).await? {
            let mut j = delivery_json(did, &d);
            let history: Vec<Value> = self
                .store
                .attempts(did)
                .await?
                .iter()
                .map(attempt_json)
                .collect();
            j["history"] = json!(history);
            deliveries.push(j);
        }
        let headers: serde_json::Map<String, Value> = event
            .meta
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut out = json!({
            "id": event.id.to_string(),
            "received_at": event.meta.received_at_ms,
            "source": event.meta.source,
            "route": event.meta.route,
            "type": event.meta.event_type,
            "headers": headers,
            "deliveries": deliveries,
        });
        match std::str::from_utf8(&event.body) {
            Ok(text) => out["body"] = json!(text),
            Err(_) => {
                out["body_base64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(&event.body))
            }
        }
        Ok(ok(out))
    }

    pub(super) async fn deliveries(
        &self,
        query: &str,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        let mut state = None;
        let mut target = None;
        let mut after = None;
        let mut limit = PAGE_DEFAULT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "state" => {
                    state = Some(State::parse(&v).ok_or_else(|| {
                        invalid(
                            "state",
                            "one of pending, in_flight, succeeded, dead, cancelled",
                        )
                    })?)
                }
                "target" => target = Some(v.into_owned()),
                "after" => {
                    after = Some(
                        DeliveryId::parse(&v)
                            .ok_or_else(|| invalid("after", "not a delivery id"))?,
                    )
                }
                "limit" => limit = page_limit(&v)?,
                other => return Err(invalid(other, "unknown query parameter")),
            }
        }
        let page = self
            .store
            .list_deliveries(state, target.as_deref(), after, limit, PAGE_SCAN)
            .await?;
        let list: Vec<Value> = page
            .deliveries
            .iter()
            .map(|(id, d)| delivery_json(*id, d))
            .collect();
        Ok(ok(json!({
            "deliveries": list,
            "next": page.next.map(|n| n.to_string()),
        })))
    }

    pub(super) async fn retry_one(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let not_found = || AdminError::NotFound(format!("delivery {id}"));
        let did = DeliveryId::parse(id).ok_or_else(not_found)?;
        let d = self
            .store
            .requeue(did, "re-queued by hand")
            .await?
            .ok_or_else(not_found)?;
        if d.state == State::InFlight {
            return Err(AdminError::Conflict(format!(
                "delivery {id} is being attempted now"
            )));
        }
        if self.catalog.get(&d.target).is_none() {
            tracing::warn!(delivery = %id, target = %Escaped(&d.target), "re-queued for a removed target; it will be cancelled");
        }
        Ok(ok(delivery_json(did, &d)))
    }

    pub(super) async fn retry_many(
        &self,
        body: Value,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bulk {
            state: Option<String>,
            target: Option<String>,
        }
        // Absent means every target; a null is refused, not read as absent,
        // so a client that meant to name one target never re-queues all.
        if body.get("target").is_some_and(Value::is_null) {
            return Err(invalid(
                "target",
                "must be a target id; leave it out for every target",
            ));
        }
        let req: Bulk = serde_json::from_value(body).map_err(|e| invalid("body", e))?;
        let state = req
            .state
            .as_deref()
            .map(|s| State::parse(s).ok_or_else(|| invalid("state", "not a delivery state")))
            .transpose()?
            .ok_or_else(|| invalid("state", "is required"))?;
        if !state.is_finished() {
            return Err(invalid(
                "state",
                "only dead, cancelled or succeeded deliveries are re-queued",
            ));
        }
        let mut total = 0;
        let mut from = None;
        loop {
            let (n, next) = self
                .store
                .requeue_batch(state, req.target.as_deref(), from, RETRY_STEP)
                .await?;
            total += n;
            match next {
                Some(n) => from = Some(n),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        tracing::info!(
            retried = total,
            state = %state.as_str(),
            target = escaped(req.target.as_deref()),
            "bulk re-queue"
        );
        Ok(ok(json!({ "retried": total })))
    }
}
