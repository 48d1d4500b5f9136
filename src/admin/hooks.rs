//! REST Hooks subscriptions: subscribe, list, show, unsubscribe, and a
//! signed test send. A subscription's secret is in the answer to its
//! creation and in no other answer or log line.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::error::{invalid, AdminError};
use crate::admin::json::hook_json;
use crate::admin::{ok, Admin};
use crate::catalog::Target;
use crate::deliver::egress::TargetUrl;
use crate::deliver::shape::Shaped;
use crate::deliver::sign::Secret;
use crate::ingest::route::EventPattern;
use crate::server::json_response;
use crate::store::{now_ms, EventMeta, Subscription};

impl Admin {
    pub(super) async fn subscribe(&self, body: Value) -> Result<Response<Full<Bytes>>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NewHook {
            target_url: Option<String>,
            event: Option<String>,
            secret: Option<String>,
            route: Option<String>,
        }
        let req: NewHook = serde_json::from_value(body).map_err(|e| invalid("body", e))?;
        let url = req
            .target_url
            .ok_or_else(|| invalid("target_url", "is required"))?;
        let parsed = TargetUrl::parse(&url).map_err(|e| invalid("target_url", e))?;
        let settings = self.settings();
        if settings.https_only && !parsed.is_https() {
            return Err(invalid(
                "target_url",
                "egress.https_only is set and this URL is http",
            ));
        }
        let event = req.event.ok_or_else(|| invalid("event", "is required"))?;
        EventPattern::parse(event.trim()).map_err(|e| invalid("event", e))?;
        let secret = match req.secret {
            Some(s) => {
                Secret::parse(&s).map_err(|e| invalid("secret", e))?;
                s
            }
            None => new_secret(),
        };
        if let Some(route) = &req.route {
            if !settings.routes.contains(route) {
                return Err(invalid("route", format!("no route is named `{route}`")));
            }
        }
        let sub = Subscription {
            id: format!("hook_{}", ulid::Ulid::new()),
            target_url: url,
            event: event.trim().to_string(),
            secret,
            route: req.route,
            created_at_ms: now_ms(),
        };
        self.store.put_subscription(&sub).await?;
        self.catalog
            .add_subscription(&sub)
            .map_err(AdminError::Invalid)?;
        tracing::info!(hook = %sub.id, url = %sub.target_url, event = %sub.event, "subscribed");
        let mut out = hook_json(&sub, None);
        out["secret"] = json!(sub.secret);
        Ok(json_response(StatusCode::CREATED, out))
    }

    async fn subscription(&self, id: &str) -> Result<(Subscription, Arc<Target>), AdminError> {
        let not_found = || AdminError::NotFound(format!("hook {id}"));
        let sub = self
            .store
            .subscriptions()
            .await?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(not_found)?;
        let target = self.catalog.get(id).ok_or_else(not_found)?;
        Ok((sub, target))
    }

    pub(super) async fn list_hooks(&self) -> Result<Response<Full<Bytes>>, AdminError> {
        let hooks: Vec<Value> = self
            .store
            .subscriptions()
            .await?
            .iter()
            .map(|s| hook_json(s, self.catalog.get(&s.id).as_deref()))
            .collect();
        Ok(ok(json!({ "hooks": hooks })))
    }

    pub(super) async fn show_hook(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let (sub, target) = self.subscription(id).await?;
        Ok(ok(hook_json(&sub, Some(&target))))
    }

    pub(super) async fn unsubscribe(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        self.subscription(id).await?;
        self.catalog.remove(id);
        self.store.delete_subscription(id).await?;
        let cancelled = self.store.cancel_all(id, "subscription deleted").await?;
        tracing::info!(hook = %id, cancelled, "unsubscribed");
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }

    /// Sends a synthetic, signed event to the hook now; not stored, not counted.
    pub(super) async fn test_send(&self, id: &str) -> Result<Response<Full<Bytes>>, AdminError> {
        let (sub, target) = self.subscription(id).await?;
        let event_id = format!("evt_test_{}", ulid::Ulid::new());
        let body = json!({
            "type": "hookrelay.test",
            "id": event_id,
            "hook": sub.id,
            "event": sub.event,
            "created_at": now_ms(),
        })
        .to_string();
        let timestamp = (now_ms() / 1000) as i64;
        let meta = EventMeta {
            received_at_ms: now_ms(),
            source: "admin".into(),
            route: String::new(),
            event_type: "hookrelay.test".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            request_headers: Vec::new(),
            url: None,
        };
        // Subscriptions send bodies as they are: no shaping to apply.
        let shaped = Shaped {
            body: Bytes::from(body),
            content_type: None,
        };
        let uri = target.spec.url.uri().clone();
        let started = now_ms();
        let result = target.send(uri, &event_id, timestamp, &meta, shaped).await;
        let out = match result {
            Ok(reply) => json!({
                "event_id": event_id,
                "status": reply.status,
                "succeeded": target.spec.policy.success.contains(reply.status),
                "error": null,
                "duration_ms": reply.duration.as_millis() as u64,
                "excerpt": reply.excerpt,
            }),
            Err(e) => json!({
                "event_id": event_id,
                "status": null,
                "succeeded": false,
                "error": e.to_string(),
                "duration_ms": now_ms().saturating_sub(started),
                "excerpt": "",
            }),
        };
        Ok(ok(out))
    }
}

/// A fresh Standard Webhooks secret: 32 random bytes.
fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
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
