//! REST Hooks: the minimal view of API endpoints. A hook is an endpoint
//! made with defaults (id `hook_…`); subscribing the same `target_url` and
//! `event` again with the same token gives the existing hook back.

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::Response;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::endpoints::may_see;
use crate::admin::error::{invalid, AdminError};
use crate::admin::json::{hook_json, Detail};
use crate::admin::tokens::Grant;
use crate::admin::{ok, Admin};
use crate::catalog::Origin;
use crate::deliver::egress::TargetUrl;
use crate::server::json_response;
use crate::telemetry::log::Escaped;

impl Admin {
    pub(super) async fn subscribe(
        &self,
        body: Value,
        who: &Grant,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
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
        let event = req.event.ok_or_else(|| invalid("event", "is required"))?;
        let existing = self.catalog.all().into_iter().find(|t| {
            t.spec.origin == Origin::Api
                && t.spec.owner.as_deref() == Some(&who.name)
                && t.spec.url.to_string() == parsed.to_string()
                && t.spec.route == req.route
                && t.spec.events.len() == 1
                && t.spec.events[0].to_string() == event
        });
        if let Some(t) = existing {
            return Ok(ok(hook_json(&t, Detail::of(who.scope))));
        }
        let host = parsed.uri().host().unwrap_or_default().to_string();
        let name = crate::store::hook_name(&event, &host);
        let endpoint = json!({
            "name": name,
            "url": url,
            "events": [event],
            "route": req.route,
            "secret": req.secret,
        });
        let id = format!("hook_{}", ulid::Ulid::new());
        let (target, secret) = self
            .make_endpoint(id, endpoint, who)
            .await
            .map_err(hook_fields)?;
        let mut out = hook_json(&target, Detail::of(who.scope));
        out["secret"] = json!(secret);
        Ok(json_response(StatusCode::CREATED, out))
    }

    pub(super) fn list_hooks(&self, who: &Grant) -> Result<Response<Full<Bytes>>, AdminError> {
        let hooks: Vec<Value> = self
            .catalog
            .all()
            .iter()
            .filter(|t| t.spec.origin == Origin::Api && may_see(t, who))
            .map(|t| hook_json(t, Detail::of(who.scope)))
            .collect();
        Ok(ok(json!({ "hooks": hooks })))
    }

    fn hook(
        &self,
        id: &str,
        who: &Grant,
    ) -> Result<std::sync::Arc<crate::catalog::Target>, AdminError> {
        match self.visible(id, who) {
            Ok(t) if t.spec.origin == Origin::Api => Ok(t),
            _ => Err(AdminError::NotFound(format!("hook {id}"))),
        }
    }

    pub(super) fn show_hook(
        &self,
        id: &str,
        who: &Grant,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        Ok(ok(hook_json(&*self.hook(id, who)?, Detail::of(who.scope))))
    }

    pub(super) async fn unsubscribe(
        &self,
        id: &str,
        who: &Grant,
    ) -> Result<Response<Full<Bytes>>, AdminError> {
        self.hook(id, who)?;
        let cancelled = self.catalog.delete(id, "subscription deleted").await?;
        tracing::info!(hook = %Escaped(id), cancelled, by = %Escaped(&who.name), "unsubscribed");
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        Ok(resp)
    }
}

/// An endpoint's field names in the words of a hook.
fn hook_fields(e: AdminError) -> AdminError {
    match e {
        AdminError::Invalid(m) => {
            let m = match m.split_once(':') {
                Some(("url", rest)) => format!("target_url:{rest}"),
                Some((f, rest)) if f.starts_with("events") => format!("event:{rest}"),
                _ => m,
            };
            AdminError::Invalid(m)
        }
        other => other,
    }
}
