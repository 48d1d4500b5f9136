//! What came in and what went out: the inbound log, an event with its
//! deliveries and attempts, dead letters and their replay.

use std::collections::BTreeMap;

use http::Method;
use serde_json::{json, Value};

use crate::admin::AdminError;
use crate::console::pages::segment;
use crate::console::session::Flash;
use crate::console::{local_path, Console, Ctx, Reply, Req, Shown};

/// Inbound records on one page.
const EVENTS_PAGE: usize = 50;
/// Dead deliveries read for the dead-letter page (newest first).
const DEAD_READ: usize = 1000;

/// A body for people: JSON and XML indented, anything else as it came.
pub fn pretty(text: &str, content_type: Option<&str>) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_string());
    }
    let xml = content_type.is_some_and(|c| c.contains("xml")) || text.trim_start().starts_with('<');
    if xml {
        if let Some(p) = pretty_xml(text) {
            return p;
        }
    }
    text.to_string()
}

fn pretty_xml(text: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut writer = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => break,
            Ok(e) => writer.write_event(e).ok()?,
            Err(_) => return None,
        }
    }
    String::from_utf8(writer.into_inner()).ok()
}

impl Console {
    /// `/ui/events`: the inbound log, newest first, by outcome, route, type.
    pub async fn events(&self, ctx: &Ctx, req: &Req) -> Shown {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for k in ["outcome", "route", "type", "after"] {
                if let Some(v) = req.q(k) {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("limit", &EVENTS_PAGE.to_string());
            q.finish()
        };
        let v = self
            .api(ctx, Method::GET, "/api/events", &query, None)
            .await?;
        let next = v["next"].as_str().map(|n| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for k in ["outcome", "route", "type"] {
                if let Some(v) = req.q(k) {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("after", n);
            format!("/ui/events?{}", q.finish())
        });
        let routes = self.route_names();
        let data = json!({
            "events": v["events"],
            "next": next,
            "outcome": req.q("outcome"),
            "route": req.q("route"),
            "type": req.q("type"),
            "routes": routes,
        });
        Ok(self.ok_page(ctx, "events.html", "events", &data, None))
    }

    /// `/ui/events/{id}`: the body, the headers, every delivery and attempt.
    pub async fn event(&self, ctx: &Ctx, id: &str) -> Shown {
        let path = format!("/api/events/{}", segment(id));
        let mut e = self.api(ctx, Method::GET, &path, "", None).await?;
        let content_type = e["headers"]["content-type"].as_str().map(String::from);
        if let Some(body) = e["body"].as_str() {
            e["pretty"] = json!(pretty(body, content_type.as_deref()));
        }
        let names: BTreeMap<String, String> = self
            .admin
            .catalog()
            .all()
            .iter()
            .map(|t| (t.spec.key.clone(), t.spec.name.clone()))
            .collect();
        for d in e["deliveries"].as_array_mut().into_iter().flatten() {
            let key = d["target"].as_str().unwrap_or("").to_string();
            d["target_name"] = json!(names.get(&key));
        }
        let data = json!({
            "e": e,
            "can_replay": self.may(ctx, Method::POST, "/api/deliveries/x/retry"),
            "back": format!("/ui/events/{}", segment(id)),
        });
        Ok(self.ok_page(ctx, "event.html", "events", &data, None))
    }

    /// Replay one delivery, then back to the page it was asked from.
    pub async fn replay(&self, ctx: &Ctx, id: &str, req: &Req) -> Shown {
        let path = format!("/api/deliveries/{}/retry", segment(id));
        match self.api(ctx, Method::POST, &path, "", None).await {
            Ok(_) => self.flash(
                ctx,
                Flash::ok(format!("Delivery {id} re-queued: it is sent again now.")),
            ),
            Err(e) => self.flash(ctx, Flash::error(format!("Not re-queued: {e}"))),
        }
        let back = req
            .f("back")
            .filter(|b| local_path(b))
            .unwrap_or("/ui/dead");
        Ok(Reply::Redirect(back.to_string()))
    }

    /// The dead deliveries, newest first, grouped by endpoint.
    async fn dead_by_endpoint(
        &self,
        ctx: &Ctx,
        target: Option<&str>,
    ) -> Result<(Vec<Value>, bool), AdminError> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("state", "dead");
            q.append_pair("limit", &DEAD_READ.to_string());
            if let Some(t) = target {
                q.append_pair("target", t);
            }
            q.finish()
        };
        let v = self
            .api(ctx, Method::GET, "/api/deliveries", &query, None)
            .await?;
        let more = !v["next"].is_null();
        let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for d in v["deliveries"].as_array().into_iter().flatten() {
            let key = d["target"].as_str().unwrap_or("").to_string();
            groups.entry(key).or_default().push(d.clone());
        }
        let catalog = self.admin.catalog();
        let out = groups
            .into_iter()
            .map(|(key, list)| {
                let name = catalog.get(&key).map(|t| t.spec.name.clone());
                json!({
                    "target": key,
                    "name": name,
                    "count": list.len(),
                    "deliveries": list,
                    "replay_all": format!("/ui/dead/replay?{}", form_urlencoded::Serializer::new(String::new()).append_pair("target", &key).finish()),
                })
            })
            .collect();
        Ok((out, more))
    }

    /// `/ui/dead`: dead letters by endpoint, with Replay buttons.
    pub async fn dead(&self, ctx: &Ctx, req: &Req) -> Shown {
        let (groups, more) = self.dead_by_endpoint(ctx, req.q("target")).await?;
        let data = json!({
            "groups": groups,
            "more": more,
            "limit": DEAD_READ,
            "target": req.q("target"),
            "can_replay": self.may(ctx, Method::POST, "/api/deliveries/retry"),
        });
        Ok(self.ok_page(ctx, "dead.html", "dead", &data, None))
    }

    /// "Replay all for this endpoint": how many, and are you sure.
    pub async fn confirm_replay_all(&self, ctx: &Ctx, req: &Req) -> Shown {
        let target = req
            .q("target")
            .ok_or_else(|| crate::admin::error::invalid("target", "is required"))?;
        if !self.may(ctx, Method::POST, "/api/deliveries/retry") {
            return Err(AdminError::Forbidden(format!(
                "a {} token may not replay deliveries",
                ctx.who.scope
            )));
        }
        let (groups, more) = self.dead_by_endpoint(ctx, Some(target)).await?;
        let count = groups
            .first()
            .map_or(0, |g| g["count"].as_u64().unwrap_or(0));
        let counted = if more {
            format!("at least {count}")
        } else {
            count.to_string()
        };
        let name = self
            .admin
            .catalog()
            .get(target)
            .map_or(target.to_string(), |t| t.spec.name.clone());
        let data = json!({
            "title": format!("Replay dead deliveries of {name}"),
            "question": format!("Re-queue {counted} dead deliveries of {name}? Each is sent again with a fresh attempt budget."),
            "action": "/ui/dead/replay",
            "button": "Replay all",
            "back": "/ui/dead",
            "fields": [{"name": "target", "value": target}],
        });
        Ok(self.ok_page(ctx, "confirm.html", "dead", &data, None))
    }

    pub async fn replay_all(&self, ctx: &Ctx, req: &Req) -> Shown {
        let target = req
            .f("target")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| crate::admin::error::invalid("target", "is required"))?;
        match self
            .api(
                ctx,
                Method::POST,
                "/api/deliveries/retry",
                "",
                Some(json!({"state": "dead", "target": target})),
            )
            .await
        {
            Ok(v) => self.flash(
                ctx,
                Flash::ok(format!(
                    "Re-queued {} dead deliveries of {target}.",
                    v["retried"]
                )),
            ),
            Err(e) => self.flash(ctx, Flash::error(format!("Not re-queued: {e}"))),
        }
        Ok(Reply::Redirect("/ui/dead".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_indented() {
        assert_eq!(pretty("{\"a\":1}", None), "{\n  \"a\": 1\n}");
        assert_eq!(
            pretty("<a><b>1</b></a>", Some("application/xml")),
            "<a>\n  <b>1</b>\n</a>"
        );
        assert_eq!(pretty("x=1&y=2", None), "x=1&y=2");
        assert_eq!(pretty("<a></b>", Some("application/xml")), "<a></b>");
    }
}
