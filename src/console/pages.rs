//! The overview, the endpoints table, an endpoint's page and what its
//! buttons do (Send Test, rotate secret, pause and resume, delete).

use std::collections::BTreeSet;

use http::Method;
use serde_json::{json, Value};

use crate::admin::AdminError;
use crate::console::chart::{self, Chart, Series, Tone};
use crate::console::session::Flash;
use crate::console::{Console, Ctx, Reply, Req, Shown};
use crate::history::Point;
use crate::ingest::route::EventPattern;
use crate::store::{now_ms, State, ALL_SERIES};

/// Endpoints the table shows on one page.
const TABLE_PAGE: usize = 100;
/// Most endpoints one page request reads through the API (its cap is
/// `admin.max_endpoints`, 10,000 by default).
const TABLE_READ: usize = 20_000;
/// Recent deliveries on an endpoint's page.
const RECENT: usize = 20;

/// One declared event type, as `GET /api/event-types` lists it.
#[derive(Debug, Clone)]
pub struct EventTypeInfo {
    pub route: String,
    pub name: String,
    pub display_name: String,
    pub category: String,
    pub example: Option<Value>,
}

/// The catalogs of the running configuration.
pub struct Types(pub Vec<EventTypeInfo>);

impl Types {
    /// The declared types an endpoint on `route` (any route: `None`) can get.
    pub fn of_route(&self, route: Option<&str>) -> Vec<&EventTypeInfo> {
        self.0
            .iter()
            .filter(|t| route.is_none_or(|r| r == t.route))
            .collect()
    }

    /// What an endpoint's trigger reads as: each pattern with the catalog's
    /// display name and category where it is one declared type.
    pub fn trigger(&self, events: &[String], route: Option<&str>) -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                if e == "*" {
                    return json!({"label": "All events", "category": null, "name": e});
                }
                match self.of_route(route).into_iter().find(|t| &t.name == e) {
                    Some(t) => json!({"label": t.display_name, "category": t.category, "name": e}),
                    None => json!({"label": e, "category": null, "name": e, "pattern": true}),
                }
            })
            .collect()
    }

    /// The categories of the declared types an endpoint's patterns match.
    pub fn categories(&self, events: &[String], route: Option<&str>) -> BTreeSet<String> {
        let patterns: Vec<EventPattern> = events
            .iter()
            .filter_map(|e| EventPattern::parse(e).ok())
            .collect();
        self.of_route(route)
            .into_iter()
            .filter(|t| !t.category.is_empty() && patterns.iter().any(|p| p.matches(&t.name)))
            .map(|t| t.category.clone())
            .collect()
    }
}

impl Console {
    /// The routes of the running configuration, in file order.
    pub fn route_names(&self) -> Vec<String> {
        self.admin
            .catalog()
            .event_types()
            .iter()
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The routes' catalogs, as the running configuration declares them
    /// (what `GET /api/event-types` lists as declared, without its scan of
    /// the inbound log).
    pub fn types(&self) -> Types {
        let catalogs = self.admin.catalog().event_types();
        Types(
            catalogs
                .iter()
                .flat_map(|(route, types)| {
                    types.iter().map(move |t| EventTypeInfo {
                        route: route.clone(),
                        name: t.name.clone(),
                        display_name: t.display_name.clone(),
                        category: t.category.clone().unwrap_or_default(),
                        example: t.example.clone(),
                    })
                })
                .collect(),
        )
    }

    /// The types seen at ingest on routes that have no catalog (category
    /// "Seen at ingest"), through the API.
    pub async fn seen_types(&self, ctx: &Ctx) -> Result<Vec<EventTypeInfo>, AdminError> {
        let catalogued: BTreeSet<String> = self
            .admin
            .catalog()
            .event_types()
            .iter()
            .filter(|(_, types)| !types.is_empty())
            .map(|(route, _)| route.clone())
            .collect();
        let v = self
            .api(ctx, Method::GET, "/api/event-types", "", None)
            .await?;
        Ok(v["event_types"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["declared"] == json!(false))
            .filter_map(|t| {
                let route = t["route"].as_str()?;
                let name = t["name"].as_str()?;
                (!catalogued.contains(route)).then(|| EventTypeInfo {
                    route: route.to_string(),
                    name: name.to_string(),
                    display_name: name.to_string(),
                    category: "Seen at ingest".to_string(),
                    example: None,
                })
            })
            .collect())
    }

    /// Every endpoint the session may see, through the API's pages.
    async fn all_endpoints(
        &self,
        ctx: &Ctx,
        route: Option<&str>,
    ) -> Result<Vec<Value>, AdminError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query = {
                let mut q = form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", "1000");
                if let Some(r) = route {
                    q.append_pair("route", r);
                }
                if let Some(a) = &after {
                    q.append_pair("after", a);
                }
                q.finish()
            };
            let v = self
                .api(ctx, Method::GET, "/api/endpoints", &query, None)
                .await?;
            out.extend(v["endpoints"].as_array().cloned().unwrap_or_default());
            match v["next"].as_str() {
                Some(n) if out.len() < TABLE_READ => after = Some(n.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// `/ui/`: the last hour of the whole relay.
    pub async fn overview(&self, ctx: &Ctx) -> Shown {
        if !self.may(ctx, Method::GET, "/api/targets") {
            return Ok(Reply::Redirect("/ui/endpoints".into()));
        }
        let now = now_ms();
        let points = self.history.minutes(ALL_SERIES, 60, now).await?;
        let targets = self.api(ctx, Method::GET, "/api/targets", "", None).await?;
        let targets = targets["targets"].as_array().cloned().unwrap_or_default();
        let open: Vec<&Value> = targets
            .iter()
            .filter(|t| t["circuit"] != json!("closed"))
            .collect();
        let store = self.admin.store();
        let health = store.health();
        let data = json!({
            "endpoints": targets.len(),
            "open_circuits": open.iter().map(|t| json!({"key": t["key"], "name": t["name"], "circuit": t["circuit"]})).collect::<Vec<_>>(),
            "pending": store.count(State::Pending),
            "in_flight": store.count(State::InFlight),
            "dead": store.count(State::Dead),
            "store_bytes": health.disk_bytes,
            "ready": health.accepting(),
            "not_ready": health.refusing.map(|(_, reason)| reason),
        });
        let charts = overview_charts(&points);
        Ok(self.ok_page(ctx, "overview.html", "overview", &data, Some(charts)))
    }

    /// `/ui/endpoints`: the table, filtered by route and category.
    pub async fn endpoints(&self, ctx: &Ctx, req: &Req) -> Shown {
        let route = req.q("route");
        let category = req.q("category");
        let start: usize = req.q("from").and_then(|f| f.parse().ok()).unwrap_or(0);
        let types = self.types();
        let all = self.all_endpoints(ctx, route).await?;
        let rows: Vec<Value> = all
            .into_iter()
            .filter_map(|e| {
                let events = event_list(&e);
                let r = e["route"].as_str();
                let cats = types.categories(&events, r);
                if category.is_some_and(|c| !cats.contains(c)) {
                    return None;
                }
                Some(json!({
                    "endpoint": e,
                    "trigger": types.trigger(&events, r),
                    "categories": cats,
                }))
            })
            .collect();
        let total = rows.len();
        let page: Vec<Value> = rows.into_iter().skip(start).take(TABLE_PAGE).collect();
        let routes = self.route_names();
        let categories: BTreeSet<&str> = types
            .0
            .iter()
            .filter(|t| !t.category.is_empty())
            .map(|t| t.category.as_str())
            .collect();
        let more = start + TABLE_PAGE < total;
        let mut next = form_urlencoded::Serializer::new(String::new());
        if let Some(r) = route {
            next.append_pair("route", r);
        }
        if let Some(c) = category {
            next.append_pair("category", c);
        }
        next.append_pair("from", &(start + TABLE_PAGE).to_string());
        let data = json!({
            "rows": page,
            "total": total,
            "from": start,
            "next": more.then(|| format!("/ui/endpoints?{}", next.finish())),
            "routes": routes,
            "categories": categories,
            "route": route,
            "category": category,
            "can_add": self.may(ctx, Method::POST, "/api/endpoints"),
        });
        Ok(self.ok_page(ctx, "endpoints.html", "endpoints", &data, None))
    }

    /// `/ui/endpoints/{id}`: the endpoint, its buttons, charts and deliveries.
    pub async fn endpoint(&self, ctx: &Ctx, id: &str) -> Shown {
        let path = api_path(id, "");
        let e = self.api(ctx, Method::GET, &path, "", None).await?;
        let types = self.types();
        let events = event_list(&e);
        let route = e["route"].as_str();
        let patterns: Vec<EventPattern> = events
            .iter()
            .filter_map(|p| EventPattern::parse(p).ok())
            .collect();
        let test_types: Vec<Value> = types
            .of_route(route)
            .into_iter()
            .filter(|t| patterns.iter().any(|p| p.matches(&t.name)))
            .map(|t| json!({"name": t.name, "label": t.display_name, "category": t.category, "route": t.route}))
            .collect();
        let can_deliveries = self.may(ctx, Method::GET, "/api/deliveries");
        let deliveries = if can_deliveries {
            let q = form_urlencoded::Serializer::new(String::new())
                .append_pair("target", id)
                .append_pair("limit", &RECENT.to_string())
                .finish();
            self.api(ctx, Method::GET, "/api/deliveries", &q, None)
                .await?["deliveries"]
                .clone()
        } else {
            Value::Null
        };
        let api = e["origin"] == json!("api");
        let can = json!({
            "test": self.may(ctx, Method::POST, &api_path(id, "/test")),
            "rotate": api && self.may(ctx, Method::POST, &api_path(id, "/rotate-secret")),
            "edit": api && self.may(ctx, Method::PATCH, &path),
            "delete": api && self.may(ctx, Method::DELETE, &path),
            "replay": self.may(ctx, Method::POST, "/api/deliveries/x/retry"),
        });
        let now = now_ms();
        let minutes = self.history.minutes(id, 60, now).await?;
        let hours = self.history.hours(id, 24, now).await?;
        let charts = endpoint_charts(&minutes, &hours);
        let data = json!({
            "e": e,
            "trigger": types.trigger(&events, route),
            "test_types": test_types,
            "deliveries": deliveries,
            "can": can,
        });
        Ok(self.ok_page(ctx, "endpoint.html", "endpoints", &data, Some(charts)))
    }

    /// Send Test: the answer is shown on the endpoint's page.
    pub async fn test_send(&self, ctx: &Ctx, id: &str, req: &Req) -> Shown {
        let mut body = json!({});
        if let Some(t) = req.f("event_type").filter(|t| !t.is_empty()) {
            body["event_type"] = json!(t);
        }
        match self
            .api(ctx, Method::POST, &api_path(id, "/test"), "", Some(body))
            .await
        {
            Ok(answer) => {
                let text = match (answer["status"].as_u64(), answer["error"].as_str()) {
                    (Some(s), _) => format!(
                        "Test sent: the endpoint answered HTTP {s} in {} ms.",
                        answer["duration_ms"]
                    ),
                    (None, Some(e)) => format!("Test sent, but no answer came: {e}"),
                    (None, None) => "Test sent.".to_string(),
                };
                let mut flash = if answer["succeeded"] == json!(true) {
                    Flash::ok(text)
                } else {
                    Flash::error(text)
                };
                flash.test = Some(answer);
                self.flash(ctx, flash);
            }
            Err(e) => self.flash(ctx, Flash::error(format!("Test not sent: {e}"))),
        }
        Ok(Reply::Redirect(ui_path(id, "")))
    }

    /// Rotate secret: the new one is shown once.
    pub async fn rotate(&self, ctx: &Ctx, id: &str) -> Shown {
        match self
            .api(ctx, Method::POST, &api_path(id, "/rotate-secret"), "", None)
            .await
        {
            Ok(answer) => {
                let mut flash = Flash::ok(
                    "New signing secret made. Copy it now: it is not shown again. \
                     The old one keeps signing for 24 hours.",
                );
                flash.secret = answer["secret"].as_str().map(String::from);
                self.flash(ctx, flash);
            }
            Err(e) => self.flash(ctx, Flash::error(format!("Secret not rotated: {e}"))),
        }
        Ok(Reply::Redirect(ui_path(id, "")))
    }

    /// Pause or resume.
    pub async fn set_enabled(&self, ctx: &Ctx, id: &str, req: &Req) -> Shown {
        let enabled = req.f("enabled") == Some("true");
        match self
            .api(
                ctx,
                Method::PATCH,
                &api_path(id, ""),
                "",
                Some(json!({ "enabled": enabled })),
            )
            .await
        {
            Ok(_) if enabled => self.flash(ctx, Flash::ok("Resumed: queued events are delivered.")),
            Ok(_) => self.flash(
                ctx,
                Flash::ok(
                    "Paused: events are kept for this endpoint and delivered when it resumes.",
                ),
            ),
            Err(e) => self.flash(ctx, Flash::error(format!("Not changed: {e}"))),
        }
        Ok(Reply::Redirect(ui_path(id, "")))
    }

    pub async fn confirm_delete(&self, ctx: &Ctx, id: &str) -> Shown {
        let e = self
            .api(ctx, Method::GET, &api_path(id, ""), "", None)
            .await?;
        let data = json!({
            "title": format!("Delete endpoint {}", e["name"].as_str().unwrap_or(id)),
            "question": "Delete this endpoint? Its queued deliveries are cancelled and it gets no more events.",
            "action": ui_path(id, "/delete"),
            "button": "Delete endpoint",
            "back": ui_path(id, ""),
            "fields": [],
        });
        Ok(self.ok_page(ctx, "confirm.html", "endpoints", &data, None))
    }

    pub async fn delete(&self, ctx: &Ctx, id: &str) -> Shown {
        match self
            .api(ctx, Method::DELETE, &api_path(id, ""), "", None)
            .await
        {
            Ok(_) => {
                self.flash(ctx, Flash::ok(format!("Endpoint {id} deleted.")));
                Ok(Reply::Redirect("/ui/endpoints".into()))
            }
            Err(e) => {
                self.flash(ctx, Flash::error(format!("Not deleted: {e}")));
                Ok(Reply::Redirect(ui_path(id, "")))
            }
        }
    }
}

/// An endpoint's `events`, as the API shows them.
fn event_list(e: &Value) -> Vec<String> {
    e["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `/api/endpoints/{id}{rest}`, the id percent-encoded.
pub fn api_path(id: &str, rest: &str) -> String {
    format!("/api/endpoints/{}{rest}", segment(id))
}

/// `/ui/endpoints/{id}{rest}`.
pub fn ui_path(id: &str, rest: &str) -> String {
    format!("/ui/endpoints/{}{rest}", segment(id))
}

/// What a path segment keeps as it is: RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment, percent-encoded.
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn column(points: &[Point], f: impl Fn(&Point) -> f64) -> Vec<f64> {
    points.iter().map(f).collect()
}

/// The overview's charts, from the last hour's minutes of the whole relay.
fn overview_charts(points: &[Point]) -> String {
    let v = |f: fn(&crate::store::StatValues) -> u64| column(points, |p| f(&p.values) as f64);
    let g = |f: fn(&crate::store::Gauges) -> f64| {
        column(points, |p| p.values.gauges.as_ref().map_or(0.0, f))
    };
    let (accepted, duplicates, rejected) =
        (v(|s| s.events), v(|s| s.duplicates), v(|s| s.rejected));
    let (ok, failed) = (v(|s| s.succeeded), v(|s| s.failed));
    let (pending, in_flight, dead) = (
        g(|g| g.pending as f64),
        g(|g| g.in_flight as f64),
        g(|g| g.dead as f64),
    );
    let (circuits, size) = (g(|g| g.open_circuits as f64), g(|g| g.store_bytes as f64));
    let span = |title, unit, series| Chart {
        title,
        unit,
        start: "60 min ago",
        end: "now",
        series,
    };
    [
        chart::bars(&span(
            "Events per minute",
            "events",
            vec![
                Series {
                    label: "accepted",
                    tone: Tone::Good,
                    values: &accepted,
                },
                Series {
                    label: "duplicate",
                    tone: Tone::Neutral,
                    values: &duplicates,
                },
                Series {
                    label: "rejected",
                    tone: Tone::Bad,
                    values: &rejected,
                },
            ],
        )),
        chart::bars(&span(
            "Delivery attempts per minute",
            "attempts",
            vec![
                Series {
                    label: "succeeded",
                    tone: Tone::Good,
                    values: &ok,
                },
                Series {
                    label: "failed",
                    tone: Tone::Bad,
                    values: &failed,
                },
            ],
        )),
        chart::lines(&span(
            "Queue depth",
            "deliveries",
            vec![
                Series {
                    label: "pending",
                    tone: Tone::Neutral,
                    values: &pending,
                },
                Series {
                    label: "in flight",
                    tone: Tone::Good,
                    values: &in_flight,
                },
                Series {
                    label: "dead",
                    tone: Tone::Bad,
                    values: &dead,
                },
            ],
        )),
        chart::lines(&span(
            "Open circuits",
            "circuits",
            vec![Series {
                label: "open",
                tone: Tone::Warn,
                values: &circuits,
            }],
        )),
        chart::lines(&span(
            "Store size",
            "bytes",
            vec![Series {
                label: "on disk",
                tone: Tone::Neutral,
                values: &size,
            }],
        )),
    ]
    .concat()
}

/// An endpoint's charts: the last hour by minute, the last day by hour,
/// and the mean attempt duration.
fn endpoint_charts(minutes: &[Point], hours: &[Point]) -> String {
    let ok_m = column(minutes, |p| p.values.succeeded as f64);
    let bad_m = column(minutes, |p| p.values.failed as f64);
    let ok_h = column(hours, |p| p.values.succeeded as f64);
    let bad_h = column(hours, |p| p.values.failed as f64);
    let mean = |p: &Point| {
        if p.values.attempts == 0 {
            0.0
        } else {
            p.values.duration_ms as f64 / p.values.attempts as f64
        }
    };
    let dur_m = column(minutes, mean);
    [
        chart::bars(&Chart {
            title: "Delivery attempts per minute, last hour",
            unit: "attempts",
            start: "60 min ago",
            end: "now",
            series: vec![
                Series {
                    label: "succeeded",
                    tone: Tone::Good,
                    values: &ok_m,
                },
                Series {
                    label: "failed",
                    tone: Tone::Bad,
                    values: &bad_m,
                },
            ],
        }),
        chart::bars(&Chart {
            title: "Delivery attempts per hour, last day",
            unit: "attempts",
            start: "24 h ago",
            end: "now",
            series: vec![
                Series {
                    label: "succeeded",
                    tone: Tone::Good,
                    values: &ok_h,
                },
                Series {
                    label: "failed",
                    tone: Tone::Bad,
                    values: &bad_h,
                },
            ],
        }),
        chart::lines(&Chart {
            title: "Mean attempt duration per minute, last hour",
            unit: "ms",
            start: "60 min ago",
            end: "now",
            series: vec![Series {
                label: "duration",
                tone: Tone::Neutral,
                values: &dur_m,
            }],
        }),
    ]
    .concat()
}
