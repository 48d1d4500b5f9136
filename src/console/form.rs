//! The endpoint form (add and edit) and its preview. The form becomes the
//! API's endpoint body; the API checks it, and its 422 is shown next to
//! the field it names.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::admin::AdminError;
use crate::console::pages::{api_path, ui_path};
use crate::console::session::Flash;
use crate::console::{Console, Ctx, Reply, Req, Shown};
use crate::deliver::shape::{Body, BodyTemplate, Shape, XmlName};
use crate::store::{now_ms, Event, EventId, EventMeta};

/// Every field of the form, as the page names them.
const FIELDS: &[&str] = &[
    "name",
    "description",
    "url",
    "route",
    "patterns",
    "format",
    "xml_root",
    "template",
    "content_type",
    "basic_auth",
    "username",
    "password",
    "headers",
    "filter",
    "max_attempts",
    "timeout",
    "backoff_initial",
    "backoff_max",
    "rate_per_second",
    "rate_burst",
    "concurrency",
];

/// What the form shows: its values, the catalog's choices, errors by field.
struct FormView {
    values: BTreeMap<String, String>,
    events: BTreeSet<String>,
    errors: BTreeMap<String, String>,
    preview: Option<Value>,
}

impl FormView {
    fn from_req(req: &Req) -> FormView {
        let mut values = BTreeMap::new();
        for f in FIELDS {
            if let Some(v) = req.f(f) {
                values.insert(f.to_string(), v.to_string());
            }
        }
        values.insert(
            "enabled".into(),
            if req.f("enabled").is_some() { "on" } else { "" }.into(),
        );
        FormView {
            values,
            events: req.f_all("event").into_iter().map(String::from).collect(),
            errors: BTreeMap::new(),
            preview: None,
        }
    }

    /// An endpoint as the API shows it, in the form's fields.
    fn from_endpoint(e: &Value) -> FormView {
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let n = |v: &Value| {
            if v.is_null() {
                String::new()
            } else {
                v.to_string().trim_matches('"').to_string()
            }
        };
        let mut values = BTreeMap::new();
        values.insert("name".into(), s(&e["name"]));
        values.insert("description".into(), s(&e["description"]));
        values.insert("url".into(), s(&e["url"]));
        values.insert("route".into(), s(&e["route"]));
        values.insert("format".into(), s(&e["format"]));
        values.insert("xml_root".into(), s(&e["xml_root"]));
        values.insert("template".into(), s(&e["template"]));
        values.insert("content_type".into(), s(&e["content_type"]));
        if let Some(user) = e["basic_auth"]["username"].as_str() {
            values.insert("basic_auth".into(), "on".into());
            values.insert("username".into(), user.to_string());
        }
        let headers: Vec<String> = e["headers"]
            .as_object()
            .map(|h| h.keys().map(|k| format!("{k}: ***")).collect())
            .unwrap_or_default();
        values.insert("headers".into(), headers.join("\n"));
        if !e["filter"].is_null() {
            values.insert(
                "filter".into(),
                serde_json::to_string_pretty(&e["filter"]).unwrap_or_default(),
            );
        }
        let spec = e.get("spec").cloned().unwrap_or(Value::Null);
        // Only what the endpoint sets itself; the defaults show as placeholders.
        let retry = &spec["retry"];
        values.insert("max_attempts".into(), n(&retry["max_attempts"]));
        values.insert("timeout".into(), n(&retry["timeout"]));
        values.insert("backoff_initial".into(), n(&retry["backoff"]["initial"]));
        values.insert("backoff_max".into(), n(&retry["backoff"]["max"]));
        values.insert("rate_per_second".into(), n(&spec["rate"]["per_second"]));
        values.insert("rate_burst".into(), n(&spec["rate"]["burst"]));
        values.insert("concurrency".into(), n(&spec["concurrency"]));
        values.insert(
            "enabled".into(),
            if e["enabled"] == json!(false) {
                ""
            } else {
                "on"
            }
            .into(),
        );
        let mut events = BTreeSet::new();
        let mut patterns = Vec::new();
        for ev in e["events"].as_array().into_iter().flatten() {
            let ev = ev.as_str().unwrap_or("");
            if ev.contains('*') {
                patterns.push(ev.to_string());
            } else {
                events.insert(ev.to_string());
            }
        }
        values.insert("patterns".into(), patterns.join(", "));
        FormView {
            values,
            events,
            errors: BTreeMap::new(),
            preview: None,
        }
    }

    fn get(&self, k: &str) -> &str {
        self.values.get(k).map_or("", |v| v.trim())
    }

    /// The trigger: ticked event types, then patterns.
    fn event_list(&self) -> Vec<String> {
        let mut out: Vec<String> = self.events.iter().cloned().collect();
        for p in self.get("patterns").split([',', ' ', '\n']) {
            let p = p.trim();
            if !p.is_empty() && !out.iter().any(|e| e == p) {
                out.push(p.to_string());
            }
        }
        out
    }

    /// The API's endpoint body. `patch`: a merge patch over `old` (fields
    /// left empty are removed; a header shown as `***` keeps its value; an
    /// empty password keeps the one set).
    fn body(&mut self, patch: Option<&Value>) -> Option<Value> {
        let mut b = Map::new();
        let mut errors = BTreeMap::new();
        let values = self.values.clone();
        let get = |k: &str| values.get(k).map_or("", |v| v.trim()).to_string();
        let text = |k: &str| -> Option<String> {
            let v = get(k);
            (!v.is_empty()).then_some(v)
        };
        let set = |b: &mut Map<String, Value>, k: &str, v: Option<Value>| match v {
            Some(v) => {
                b.insert(k.to_string(), v);
            }
            None if patch.is_some() => {
                b.insert(k.to_string(), Value::Null);
            }
            None => {}
        };
        b.insert("name".into(), json!(get("name")));
        b.insert("description".into(), json!(get("description")));
        b.insert("url".into(), json!(get("url")));
        set(&mut b, "route", text("route").map(Value::from));
        let events = self.event_list();
        if events.is_empty() {
            errors.insert(
                "events".into(),
                "pick at least one event type, or give a pattern such as * or course.*".into(),
            );
        }
        b.insert("events".into(), json!(events));
        let format = text("format").unwrap_or_else(|| "json".into());
        let templated = format == "template";
        set(
            &mut b,
            "template",
            text("template").filter(|_| templated).map(Value::from),
        );
        set(
            &mut b,
            "xml_root",
            text("xml_root")
                .filter(|_| format == "xml")
                .map(Value::from),
        );
        b.insert("format".into(), json!(format));
        set(
            &mut b,
            "content_type",
            text("content_type").map(Value::from),
        );
        let had_auth = patch.is_some_and(|old| !old["basic_auth"].is_null());
        if get("basic_auth").is_empty() {
            set(&mut b, "basic_auth", None);
        } else if get("password").is_empty() && had_auth {
            // The password set stays; a changed username needs it again.
            let same_user = patch.is_some_and(|old| {
                old["basic_auth"]["username"].as_str() == Some(get("username").as_str())
            });
            if !same_user {
                errors.insert(
                    "password".into(),
                    "give the password again to change the username".into(),
                );
            }
        } else {
            b.insert(
                "basic_auth".into(),
                json!({"username": get("username"), "password": get("password")}),
            );
        }
        let mut headers = Map::new();
        for (i, line) in get("headers").lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            match line.split_once(':') {
                Some((k, v)) if !k.trim().is_empty() => {
                    headers.insert(k.trim().to_string(), json!(v.trim()));
                }
                _ => {
                    errors.insert(
                        "headers".into(),
                        format!("line {}: write each header as Name: value", i + 1),
                    );
                }
            }
        }
        if let Some(old) = patch {
            for k in old["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if !headers.keys().any(|h| h.eq_ignore_ascii_case(k)) {
                    headers.insert(k.clone(), Value::Null);
                }
            }
        }
        b.insert("headers".into(), Value::Object(headers));
        match text("filter") {
            None => set(&mut b, "filter", None),
            Some(f) => match serde_json::from_str::<Value>(&f) {
                Ok(v) => {
                    b.insert("filter".into(), v);
                }
                Err(e) => {
                    errors.insert("filter".into(), format!("not JSON: {e}"));
                }
            },
        }
        let number = |errors: &mut BTreeMap<String, String>, k: &str| -> Option<Value> {
            let v = text(k)?;
            match v.parse::<u64>() {
                Ok(n) => Some(json!(n)),
                Err(_) => {
                    errors.insert(k.into(), "a whole number".into());
                    None
                }
            }
        };
        let max_attempts = number(&mut errors, "max_attempts");
        let mut backoff = Map::new();
        for (field, key) in [("backoff_initial", "initial"), ("backoff_max", "max")] {
            match text(field) {
                Some(v) => backoff.insert(key.into(), json!(v)),
                None if patch.is_some() => backoff.insert(key.into(), Value::Null),
                None => None,
            };
        }
        let mut retry = Map::new();
        for (k, v) in [
            ("max_attempts", max_attempts),
            ("timeout", text("timeout").map(Value::from)),
        ] {
            match v {
                Some(v) => {
                    retry.insert(k.into(), v);
                }
                None if patch.is_some() => {
                    retry.insert(k.into(), Value::Null);
                }
                None => {}
            }
        }
        if !backoff.is_empty() {
            retry.insert("backoff".into(), Value::Object(backoff));
        }
        b.insert("retry".into(), Value::Object(retry));
        let per_second = number(&mut errors, "rate_per_second");
        let burst = number(&mut errors, "rate_burst");
        match (per_second, burst) {
            (Some(p), Some(b2)) => {
                b.insert("rate".into(), json!({"per_second": p, "burst": b2}));
            }
            (None, None) => set(&mut b, "rate", None),
            _ => {
                errors.insert(
                    "rate".into(),
                    "give both the rate per second and the burst, or neither".into(),
                );
            }
        }
        let concurrency = number(&mut errors, "concurrency");
        set(&mut b, "concurrency", concurrency);
        b.insert("enabled".into(), json!(!get("enabled").is_empty()));
        let ok = errors.is_empty();
        self.errors.extend(errors);
        ok.then_some(Value::Object(b))
    }

    /// Puts the API's 422 (`field: reason`) next to the field it names.
    fn api_error(&mut self, e: &AdminError) {
        let text = e.to_string();
        let AdminError::Invalid(msg) = e else {
            self.errors.insert("form".into(), text);
            return;
        };
        let (field, reason) = msg.split_once(": ").unwrap_or(("form", msg.as_str()));
        let top = field.split(['.', '[']).next().unwrap_or(field);
        let slot = match (top, field) {
            (_, f) if f.starts_with("retry.max_attempts") => "max_attempts",
            (_, f) if f.starts_with("retry.timeout") => "timeout",
            (_, f) if f.starts_with("retry.backoff.max") => "backoff_max",
            (_, f) if f.starts_with("retry.backoff") => "backoff_initial",
            ("basic_auth", f) if f.ends_with("password") => "password",
            ("basic_auth", _) => "username",
            ("events", _) => "events",
            (
                "name" | "description" | "url" | "route" | "format" | "template" | "xml_root"
                | "content_type" | "headers" | "filter" | "rate" | "concurrency",
                _,
            ) => top,
            _ => "form",
        };
        self.errors.insert(slot.into(), reason.to_string());
    }
}

impl Console {
    /// The form page, with the catalog's event types grouped by route and category.
    async fn form_page(
        &self,
        ctx: &Ctx,
        view: &FormView,
        editing: Option<&Value>,
        status: StatusCode,
    ) -> Shown {
        let mut types = self.types().0;
        types.extend(self.seen_types(ctx).await?);
        let mut groups: BTreeMap<(String, String), Vec<Value>> = BTreeMap::new();
        for t in &types {
            let category = if t.category.is_empty() {
                "Other".to_string()
            } else {
                t.category.clone()
            };
            groups
                .entry((t.route.clone(), category))
                .or_default()
                .push(json!({
                    "name": t.name,
                    "label": t.display_name,
                    "checked": view.events.contains(&t.name),
                }));
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|((route, category), types)| {
                json!({"route": route, "category": category, "types": types})
            })
            .collect();
        let routes = self.route_names();
        let d = self.admin.catalog().defaults();
        let human = |d: std::time::Duration| humantime::format_duration(d).to_string();
        let data = json!({
            "v": view.values,
            "errors": view.errors,
            "groups": groups,
            "routes": routes,
            "preview": view.preview,
            "editing": editing,
            "action": editing.map_or("/ui/endpoints".to_string(), |e| ui_path(e["id"].as_str().unwrap_or(""), "/edit")),
            "defaults": {
                "max_attempts": d.max_attempts,
                "timeout": human(d.timeout),
                "backoff_initial": human(d.backoff.initial),
                "backoff_max": human(d.backoff.max),
                "rate_per_second": d.rate.per_second.get(),
                "rate_burst": d.rate.burst.get(),
                "concurrency": d.concurrency,
            },
        });
        Ok(Reply::Html(
            status,
            self.page(ctx, "endpoint_form.html", "endpoints", &data, None),
        ))
    }

    pub async fn new_endpoint(&self, ctx: &Ctx, req: &Req) -> Shown {
        if !self.may(ctx, Method::POST, "/api/endpoints") {
            return Err(AdminError::Forbidden(format!(
                "a {} token may not add endpoints",
                ctx.who.scope
            )));
        }
        let mut view = FormView::from_req(req);
        view.values.insert("format".into(), "json".into());
        view.values.insert("enabled".into(), "on".into());
        if let Some(r) = req.q("route") {
            view.values.insert("route".into(), r.to_string());
        }
        self.form_page(ctx, &view, None, StatusCode::OK).await
    }

    pub async fn create_endpoint(&self, ctx: &Ctx, req: &Req) -> Shown {
        let mut view = FormView::from_req(req);
        if req.f("action") == Some("preview") {
            view.preview = Some(self.shaped_preview(&view));
            return self.form_page(ctx, &view, None, StatusCode::OK).await;
        }
        let Some(body) = view.body(None) else {
            return self
                .form_page(ctx, &view, None, StatusCode::UNPROCESSABLE_ENTITY)
                .await;
        };
        match self
            .api(ctx, Method::POST, "/api/endpoints", "", Some(body))
            .await
        {
            Ok(made) => {
                let id = made["id"].as_str().unwrap_or("").to_string();
                let mut flash = Flash::ok(
                    "Endpoint added. Its signing secret is below: copy it now, it is not shown again.",
                );
                flash.secret = made["secret"].as_str().map(String::from);
                self.flash(ctx, flash);
                Ok(Reply::Redirect(ui_path(&id, "")))
            }
            Err(e @ (AdminError::Invalid(_) | AdminError::Limit(_) | AdminError::Conflict(_))) => {
                view.api_error(&e);
                self.form_page(ctx, &view, None, e.status()).await
            }
            Err(e) => Err(e),
        }
    }

    /// The endpoint as the form edits it, with the definition it was made from.
    async fn editable(&self, ctx: &Ctx, id: &str) -> Result<Value, AdminError> {
        let e = self
            .api(ctx, Method::GET, &api_path(id, ""), "", None)
            .await?;
        if e["origin"] != json!("api") {
            return Err(AdminError::ReadOnly(format!(
                "endpoint {id} is defined in the configuration file; change it there"
            )));
        }
        let mut e = e;
        // The API shows the effective policy; the form edits only what the
        // endpoint set itself.
        if let Some(t) = self.admin.catalog().get(id) {
            e["spec"] = t.record().spec;
        }
        Ok(e)
    }

    pub async fn edit_endpoint(&self, ctx: &Ctx, id: &str) -> Shown {
        if !self.may(ctx, Method::PATCH, &api_path(id, "")) {
            return Err(AdminError::Forbidden(format!(
                "a {} token may not change endpoints",
                ctx.who.scope
            )));
        }
        let e = self.editable(ctx, id).await?;
        let view = FormView::from_endpoint(&e);
        self.form_page(ctx, &view, Some(&e), StatusCode::OK).await
    }

    pub async fn save_endpoint(&self, ctx: &Ctx, id: &str, req: &Req) -> Shown {
        let old = self.editable(ctx, id).await?;
        let mut view = FormView::from_req(req);
        if req.f("action") == Some("preview") {
            view.preview = Some(self.shaped_preview(&view));
            return self.form_page(ctx, &view, Some(&old), StatusCode::OK).await;
        }
        let Some(patch) = view.body(Some(&old)) else {
            return self
                .form_page(ctx, &view, Some(&old), StatusCode::UNPROCESSABLE_ENTITY)
                .await;
        };
        match self
            .api(ctx, Method::PATCH, &api_path(id, ""), "", Some(patch))
            .await
        {
            Ok(_) => {
                self.flash(ctx, Flash::ok("Endpoint saved."));
                Ok(Reply::Redirect(ui_path(id, "")))
            }
            Err(e @ (AdminError::Invalid(_) | AdminError::Conflict(_))) => {
                view.api_error(&e);
                self.form_page(ctx, &view, Some(&old), e.status()).await
            }
            Err(e) => Err(e),
        }
    }

    /// `POST /ui/preview` (the form's script): the shaped body as text.
    pub fn preview(&self, req: &Req) -> Shown {
        let view = FormView::from_req(req);
        let p = self.shaped_preview(&view);
        let text = match (&p["body"], &p["error"]) {
            (Value::String(b), _) => b.clone(),
            (_, Value::String(e)) => format!("(not shaped: {e})"),
            _ => String::new(),
        };
        Ok(Reply::Text(text))
    }

    /// The catalog example of the form's first event type, shaped as the
    /// form says: `{event_type, content_type, body}` or `{error}`.
    fn shaped_preview(&self, view: &FormView) -> Value {
        let types = self.types();
        let route = Some(view.get("route")).filter(|r| !r.is_empty());
        let pick = view
            .events
            .iter()
            .find_map(|n| types.of_route(route).into_iter().find(|t| &t.name == n))
            .or_else(|| types.of_route(route).into_iter().next());
        let (event_type, example) = match pick {
            Some(t) => (t.name.clone(), t.example.clone()),
            None => ("hookrelay.test".to_string(), None),
        };
        let example = example.unwrap_or_else(
            || json!({"type": event_type, "id": "evt_example", "data": {"example": true}}),
        );
        match preview_body(view, &event_type, route, &example) {
            Ok((content_type, body)) => {
                json!({"event_type": event_type, "content_type": content_type, "body": body})
            }
            Err(e) => json!({"event_type": event_type, "error": e}),
        }
    }
}

/// Shapes `example` with the form's body settings, by the delivery code.
fn preview_body(
    view: &FormView,
    event_type: &str,
    route: Option<&str>,
    example: &Value,
) -> Result<(String, String), String> {
    let content_type = match view.get("content_type") {
        "" => None,
        ct => Some(http::HeaderValue::from_str(ct).map_err(|_| "not a content type".to_string())?),
    };
    let body = match view.get("format") {
        "xml" => {
            let root = view.get("xml_root");
            Body::Xml(if root.is_empty() {
                XmlName::default()
            } else {
                XmlName::parse(root)?
            })
        }
        "template" => Body::Template(BodyTemplate::parse(
            view.get("template"),
            content_type.as_ref(),
        )?),
        "original" => Body::Original,
        _ => Body::Json,
    };
    let shape = Shape { body, content_type };
    let event = Event {
        id: EventId(ulid::Ulid::new()),
        meta: EventMeta {
            received_at_ms: now_ms(),
            source: "console".into(),
            route: route.unwrap_or_default().to_string(),
            event_type: event_type.to_string(),
            headers: vec![("content-type".into(), "application/json".into())],
            request_headers: Vec::new(),
            url: None,
        },
        body: Bytes::from(example.to_string()),
    };
    let shaped = shape
        .apply_as(&event, "evt_preview")
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&shaped.body).into_owned();
    let pretty = match serde_json::from_str::<Value>(&text) {
        Ok(v) if matches!(view.get("format"), "json" | "original" | "") => {
            serde_json::to_string_pretty(&v).unwrap_or(text)
        }
        _ => crate::console::log::pretty(
            &text,
            shaped.content_type.as_ref().and_then(|c| c.to_str().ok()),
        ),
    };
    let ct = shaped
        .content_type
        .and_then(|c| c.to_str().ok().map(String::from))
        .unwrap_or_default();
    Ok((ct, pretty))
}
