//! The operator's side of the admin API: a small client that finds the
//! admin address and token in the same config file the relay reads, and the
//! plain text the `hookrelay hooks|deliveries|targets|endpoints|events|
//! event-types` commands print. The builders take the API's JSON as it
//! comes and never fail: a missing key prints as `-`. Those that print an
//! age take the current time, so tests pin it.
//!
//! Invariant: every value from the API reaches the terminal through
//! [`Escaped`] (in `table`, `key_values`, `indent` and the error message),
//! so a name, an event type or a body cannot add a line of its own or send
//! escape sequences to the operator's terminal.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::admin::tokens::{parse_line, Scope};
use crate::config::Config;
use crate::telemetry::log::Escaped;

/// Why a command could not talk to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("admin.listen is empty: the admin API is off in this config")]
    NoListener,
    #[error("no admin token in {0}")]
    NoToken(String),
    #[error("cannot reach the admin API at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the admin API answered {status}: {message}")]
    Api { status: u16, message: String },
}

/// A client of one relay's admin API.
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

impl AdminClient {
    /// The first `admin.listen` address (a wildcard one is reached on
    /// loopback) and a token of `admin.tokens_file` (see `pick_token`).
    pub fn from_config(config: &Config) -> Result<AdminClient, ClientError> {
        let mut addr = *config.admin.listen.first().ok_or(ClientError::NoListener)?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let path = config.admin.tokens_path(&config.base_dir);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ClientError::NoToken(format!("{} ({e})", path.display())))?;
        let token = pick_token(&text)
            .ok_or_else(|| ClientError::NoToken(path.display().to_string()))?
            .to_string();
        Ok(AdminClient { addr, token })
    }

    /// Sends one request; a non-2xx answer is an error carrying the API's message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let connect_err = |e: &dyn std::fmt::Display| ClientError::Connect {
            addr: self.addr,
            reason: e.to_string(),
        };
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| connect_err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect_err(&e))?;
        tokio::spawn(conn);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| connect_err(&e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| connect_err(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect_err(&e))?
            .to_bytes();
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if !(200..300).contains(&status) {
            let message =
                Escaped(json["error"]["message"].as_str().unwrap_or("no message")).to_string();
            return Err(ClientError::Api { status, message });
        }
        Ok(json)
    }
}

/// The token an operator's command sends, from the text of a tokens file
/// (one a line: `TOKEN [admin|read|subscriber] [name=NAME]`, `#` comments):
/// the first admin one (a line without a scope word is admin), else the
/// first one, so a file that lists a read token first still lets the
/// operator change things.
pub fn pick_token(text: &str) -> Option<&str> {
    let mut first = None;
    // A line the relay would refuse is skipped here; the relay names it.
    for line in text.lines().filter_map(|l| parse_line(l).ok().flatten()) {
        if line.scope == Scope::Admin {
            return Some(line.token);
        }
        first.get_or_insert(line.token);
    }
    first
}

/// Lays out rows under headers, columns padded to their widest cell (each
/// cell on one line, escaped).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| Escaped(c).to_string()).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// A JSON value as a table cell: strings bare (escaped), null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => Escaped(s).to_string(),
        other => other.to_string(),
    }
}

/// `GET /api/hooks` as a table.
pub fn hooks_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "hooks")
        .iter()
        .map(|h| {
            let c = &h["counters"];
            vec![
                cell(&h["id"]),
                cell(&h["event"]),
                cell(&h["target_url"]),
                cell(&c["calls"]),
                cell(&c["succeeded"]),
                cell(&c["failed"]),
                cell(&c["last_status"]),
                cell(&h["circuit"]),
            ]
        })
        .collect();
    table(
        &[
            "ID", "EVENT", "URL", "CALLS", "OK", "FAILED", "LAST", "CIRCUIT",
        ],
        &rows,
    )
}

/// `GET /api/targets` as a table.
pub fn targets_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "targets")
        .iter()
        .map(|t| {
            let c = &t["counters"];
            vec![
                cell(&t["key"]),
                cell(&t["url"]),
                cell(&c["calls"]),
                cell(&c["succeeded"]),
                cell(&c["failed"]),
                cell(&c["dead"]),
                cell(&c["last_status"]),
                cell(&t["circuit"]),
            ]
        })
        .collect();
    table(
        &[
            "TARGET", "URL", "CALLS", "OK", "FAILED", "DEAD", "LAST", "CIRCUIT",
        ],
        &rows,
    )
}

/// `GET /api/deliveries` as a table.
pub fn deliveries_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "deliveries")
        .iter()
        .map(|d| {
            let last = &d["last"];
            let result = match (&last["status"], &last["error"]) {
                (Value::Number(n), _) => n.to_string(),
                (_, Value::String(e)) => e.clone(),
                _ => "-".into(),
            };
            vec![
                cell(&d["id"]),
                cell(&d["event"]),
                cell(&d["target"]),
                cell(&d["state"]),
                cell(&d["attempts"]),
                result,
            ]
        })
        .collect();
    let mut out = table(
        &["DELIVERY", "EVENT", "TARGET", "STATE", "ATTEMPTS", "LAST"],
        &rows,
    );
    if let Some(next) = v["next"].as_str() {
        out.push_str(&format!("more: --after {next}\n"));
    }
    out
}

// === endpoints, the inbound log, event types ===

/// The items of a list answer (`v[key]`), none when it is not a list.
fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    items_of(&v[key])
}

fn items_of(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// A JSON list as one cell, `-` when empty or absent.
fn joined(v: &Value, sep: &str) -> String {
    let parts: Vec<String> = items_of(v).iter().map(cell).collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(sep)
    }
}

/// A JSON object of strings as `k=v, k=v`, `-` when empty or absent.
fn pairs(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
    }
}

/// A boolean as `yes`/`no`.
fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
        None => "-".into(),
    }
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2025-12-01T12:00:00Z`).
pub fn timestamp(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        None => "-".into(),
    }
}

/// How long ago `at_ms` was, in its largest unit (`5m ago`); `-` when absent.
pub fn age(now_ms: u64, at: &Value) -> String {
    let Some(at_ms) = at.as_u64() else {
        return "-".into();
    };
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// A success rate (0.0 to 1.0) as a percentage rounded down, so `100%`
/// means no failure at all; `-` before any delivery.
fn percent(v: &Value) -> String {
    match v.as_f64() {
        // The epsilon keeps 0.29 from showing as 28.9 after the float product.
        Some(r) => format!("{}%", ((r * 1000.0) + 1e-6).floor() / 10.0),
        None => "-".into(),
    }
}

/// The last request to an endpoint: its status (or `error`) and age.
fn last_call(counters: &Value, now_ms: u64) -> String {
    if counters["last_at"].is_null() {
        return "-".into();
    }
    let what = match (&counters["last_status"], &counters["last_error"]) {
        (Value::Number(n), _) => n.to_string(),
        (_, Value::String(_)) => "error".into(),
        _ => "-".into(),
    };
    format!("{what} {}", age(now_ms, &counters["last_at"]))
}

/// Text from a receiver or a sender, on one line and at most `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        flat.to_string()
    }
}

/// One attempt or test send: `200 in 12 ms` or `error: …`.
fn result(v: &Value) -> String {
    match (&v["status"], &v["error"]) {
        (Value::Number(n), _) => format!("{n} in {} ms", cell(&v["duration_ms"])),
        (_, Value::String(e)) => format!("error: {}", one_line(e, 200)),
        // A subscriber token is told the status class only.
        _ if v["status_class"].is_string() => {
            format!(
                "{} in {} ms",
                cell(&v["status_class"]),
                cell(&v["duration_ms"])
            )
        }
        _ => "-".into(),
    }
}

/// `key: value` lines, the values aligned.
fn key_values(lines: &[(&str, String)]) -> String {
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("{:<w$} {}\n", format!("{k}:"), Escaped(v)))
        .collect()
}

/// Every line of `text` indented by `n` spaces, escaped.
fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{:n$}{}\n", "", Escaped(l)))
        .collect()
}

/// Where the next page is: `next: COMMAND --after ID`, the command's words
/// quoted for a POSIX shell; empty on the last page.
pub fn next_line<S: AsRef<str>>(v: &Value, command: &[S]) -> String {
    let Some(next) = v["next"].as_str() else {
        return String::new();
    };
    let words: Vec<String> = command
        .iter()
        .map(AsRef::as_ref)
        .chain(["--after", next])
        .map(shell_word)
        .collect();
    format!("next: {}\n", words.join(" "))
}

fn shell_word(w: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c);
    if !w.is_empty() && w.chars().all(plain) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// `GET /api/endpoints` as a table.
pub fn endpoints_table(v: &Value, now_ms: u64) -> String {
    let rows: Vec<Vec<String>> = items(v, "endpoints")
        .iter()
        .map(|e| {
            let c = &e["counters"];
            vec![
                cell(&e["id"]),
                cell(&e["name"]),
                joined(&e["events"], ","),
                cell(&e["url"]),
                cell(&c["calls"]),
                percent(&e["success_rate"]),
                last_call(c, now_ms),
                yes_no(&e["enabled"]),
            ]
        })
        .collect();
    table(
        &[
            "ID", "NAME", "EVENTS", "URL", "CALLS", "SUCCESS", "LAST", "ENABLED",
        ],
        &rows,
    )
}

/// One endpoint (`GET /api/endpoints/{id}`) as `key: value` lines. Header
/// values and passwords are never in the answer, so never printed.
pub fn endpoint_text(e: &Value, now_ms: u64) -> String {
    let mut lines: Vec<(&str, String)> = vec![("id", cell(&e["id"])), ("name", cell(&e["name"]))];
    let origin = match e["owner"].as_str() {
        Some(owner) => format!("{} (owner {owner})", cell(&e["origin"])),
        None => cell(&e["origin"]),
    };
    lines.push(("origin", origin));
    if let Some(d) = e["description"].as_str().filter(|d| !d.is_empty()) {
        lines.push(("description", one_line(d, 200)));
    }
    lines.push(("url", cell(&e["url"])));
    lines.push(("events", joined(&e["events"], ", ")));
    lines.push(("route", e["route"].as_str().unwrap_or("(any)").into()));
    let enabled = match (e["enabled"].as_bool(), e["disabled_reason"].as_str()) {
        (Some(false), Some(why)) => format!("no ({why})"),
        _ => yes_no(&e["enabled"]),
    };
    lines.push(("enabled", enabled));
    let format = match e["xml_root"].as_str() {
        Some(root) if e["format"] == "xml" => format!("xml (root <{root}>)"),
        _ => cell(&e["format"]),
    };
    lines.push(("format", format));
    lines.push(("content_type", cell(&e["content_type"])));
    let auth = match e["basic_auth"]["username"].as_str() {
        Some(user) => format!("user {user}"),
        None => "-".into(),
    };
    lines.push(("basic_auth", auth));
    let headers: Vec<&str> = e["headers"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    lines.push((
        "headers",
        if headers.is_empty() {
            "-".into()
        } else {
            headers.join(", ")
        },
    ));
    if !e["filter"].is_null() {
        lines.push(("filter", e["filter"].to_string()));
    }
    let r = &e["retry"];
    let b = &r["backoff"];
    lines.push((
        "retry",
        format!(
            "{} attempts, timeout {}, success {}, backoff {} to {} x{} jitter {}",
            cell(&r["max_attempts"]),
            cell(&r["timeout"]),
            joined(&r["success"], ","),
            cell(&b["initial"]),
            cell(&b["max"]),
            cell(&b["multiplier"]),
            cell(&b["jitter"]),
        ),
    ));
    let rate = match e["rate"]["per_second"].as_f64() {
        Some(_) => format!(
            "{}/s, burst {}",
            cell(&e["rate"]["per_second"]),
            cell(&e["rate"]["burst"])
        ),
        None => "unlimited".into(),
    };
    lines.push(("rate", rate));
    lines.push(("concurrency", cell(&e["concurrency"])));
    lines.push(("metadata", pairs(&e["metadata"])));
    lines.push(("secrets", cell(&e["secrets"])));
    lines.push(("created", timestamp(&e["created_at"])));
    lines.push(("updated", timestamp(&e["updated_at"])));
    let c = &e["counters"];
    lines.push((
        "counters",
        format!(
            "{} calls, {} succeeded, {} failed, {} dead, {} tests",
            cell(&c["calls"]),
            cell(&c["succeeded"]),
            cell(&c["failed"]),
            cell(&c["dead"]),
            cell(&c["tests"]),
        ),
    ));
    let mut last = last_call(c, now_ms);
    if let Some(err) = c["last_error"].as_str() {
        last = format!("{last}: {}", one_line(err, 200));
    }
    lines.push(("last", last));
    lines.push(("success rate", percent(&e["success_rate"])));
    lines.push(("circuit", cell(&e["circuit"])));
    let mut out = key_values(&lines);
    if let Some(t) = e["template"].as_str() {
        out.push_str("template:\n");
        out.push_str(&indent(t, 2));
    }
    let tests = items(e, "recent_tests");
    if tests.is_empty() {
        out.push_str("recent tests: -\n");
    } else {
        let rows: Vec<Vec<String>> = tests
            .iter()
            .map(|t| {
                vec![
                    timestamp(&t["at"]),
                    cell(&t["event_type"]),
                    result(t),
                    t["excerpt"]
                        .as_str()
                        .map(|x| one_line(x, 60))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str("recent tests:\n");
        out.push_str(&indent(
            &table(&["AT", "TYPE", "RESULT", "EXCERPT"], &rows),
            2,
        ));
    }
    out
}

/// The answer of `POST /api/endpoints/{id}/test`: `ID: 200 in 12 ms` and
/// the receiver's excerpt, or `ID: error: …`.
pub fn test_text(id: &str, v: &Value) -> String {
    let mut out = format!("{}: {}\n", Escaped(id), result(v));
    if let Some(x) = v["excerpt"].as_str().map(|x| one_line(x, 200)) {
        if !x.is_empty() {
            out.push_str(&format!("  {x}\n"));
        }
    }
    out
}

/// What happened to one inbound request: `accepted 2`, `duplicate`,
/// `rejected 404 no_route`.
fn outcome(e: &Value) -> String {
    let o = cell(&e["outcome"]);
    match o.as_str() {
        "accepted" => format!("accepted {}", cell(&e["deliveries"])),
        "rejected" => match e["code"].as_str() {
            Some(code) => format!("rejected {} {code}", cell(&e["status"])),
            None => format!("rejected {}", cell(&e["status"])),
        },
        _ => o,
    }
}

/// `GET /api/events` (the inbound log) as a table.
pub fn events_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v, "events")
        .iter()
        .map(|e| {
            vec![
                timestamp(&e["at"]),
                cell(&e["source"]),
                cell(&e["route"]),
                cell(&e["type"]),
                outcome(e),
                cell(&e["event"]),
            ]
        })
        .collect();
    table(
        &["AT", "SOURCE", "ROUTE", "TYPE", "OUTCOME", "EVENT"],
        &rows,
    )
}

/// One event (`GET /api/events/{id}`): what came in, its body (indented
/// JSON when it is JSON), then each delivery with its attempts.
pub fn event_text(v: &Value) -> String {
    let mut out = key_values(&[
        ("event", cell(&v["id"])),
        ("received", timestamp(&v["received_at"])),
        ("source", cell(&v["source"])),
        ("route", cell(&v["route"])),
        ("type", cell(&v["type"])),
    ]);
    if let Some(h) = v["headers"].as_object().filter(|h| !h.is_empty()) {
        out.push_str("headers:\n");
        for (k, val) in h {
            out.push_str(&format!(
                "  {}: {}\n",
                Escaped(k),
                one_line(&cell(val), 200)
            ));
        }
    }
    out.push_str("body:\n");
    match (v["body"].as_str(), v["body_base64"].as_str()) {
        (Some(text), _) => {
            let shown = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|j| serde_json::to_string_pretty(&j).ok())
                .unwrap_or_else(|| text.to_string());
            out.push_str(&indent(&shown, 2));
        }
        (None, Some(b64)) => out.push_str(&format!(
            "  (binary, {} base64 characters; --json shows them)\n",
            b64.len()
        )),
        (None, None) => out.push_str("  -\n"),
    }
    let deliveries = items(v, "deliveries");
    if deliveries.is_empty() {
        out.push_str("deliveries: none\n");
        return out;
    }
    out.push_str("deliveries:\n");
    for d in deliveries {
        out.push_str(&format!(
            "  {} to {}: {}, {} attempt(s)\n",
            cell(&d["id"]),
            cell(&d["target"]),
            cell(&d["state"]),
            cell(&d["attempts"])
        ));
        if let Some(note) = d["note"].as_str() {
            out.push_str(&format!("    note: {}\n", one_line(note, 200)));
        }
        let rows: Vec<Vec<String>> = items(d, "history")
            .iter()
            .map(|a| {
                vec![
                    timestamp(&a["at"]),
                    result(a),
                    a["excerpt"]
                        .as_str()
                        .map(|x| one_line(x, 60))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push_str(&indent(&table(&["AT", "RESULT", "EXCERPT"], &rows), 4));
        }
    }
    out
}

/// `GET /api/event-types` as a table, grouped by route then category
/// (catalog order within a category); types seen but declared by no
/// catalog come last in their route, marked `(undeclared)`.
pub fn event_types_table(v: &Value, now_ms: u64) -> String {
    let mut types: Vec<&Value> = items(v, "event_types").iter().collect();
    types.sort_by_key(|t| {
        (
            cell(&t["route"]),
            t["declared"] == false,
            t["category"].as_str().unwrap_or_default().to_string(),
        )
    });
    let rows: Vec<Vec<String>> = types
        .iter()
        .map(|t| {
            let category = if t["declared"] == false {
                "(undeclared)".into()
            } else {
                cell(&t["category"])
            };
            vec![
                cell(&t["route"]),
                cell(&t["name"]),
                cell(&t["display_name"]),
                category,
                age(now_ms, &t["last_seen"]),
            ]
        })
        .collect();
    table(
        &["ROUTE", "NAME", "DISPLAY NAME", "CATEGORY", "SEEN"],
        &rows,
    )
}

/// Folds `patch` into `into`: objects key by key, anything else replaced.
/// `null`s are kept: in a merge patch they clear a key.
pub fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `Name: value` (a `--header` flag) as a pair.
pub fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected 'Name: value'"))?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(format!("{s:?}: no header name before ':'"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// `key=value` (a `--metadata` flag) as a pair.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: expected key=value")),
    }
}

/// `USER:PASSWORD` (the `--basic-auth` flag) as a pair; the password may hold `:`.
pub fn parse_basic_auth(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err("expected USER:PASSWORD".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn values_from_the_api_print_on_one_line_without_escape_sequences() {
        let mut e = endpoint();
        e["name"] = json!("red\u{1b}[31m\nFORGED");
        e["description"] = json!("line\u{1b}]0;title\u{7}");
        let t = endpoints_table(&json!({"endpoints": [e.clone()]}), NOW);
        let block = endpoint_text(&e, NOW);
        for out in [&t, &block] {
            assert!(!out.contains('\u{1b}'), "{out:?}");
            assert!(
                out.lines()
                    .filter(|l| l.contains("FORGED"))
                    .all(|l| l.contains("red")),
                "{out}"
            );
        }
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(t.contains(r"red\u{1b}[31m\nFORGED"), "{t}");
    }

    #[test]
    fn delivery_rows_show_status_or_error() {
        let v = json!({"deliveries": [
            {"id": "dlv_1", "event": "evt_1", "target": "t/rx", "state": "dead", "attempts": 2,
             "last": {"status": null, "error": "cannot connect"}},
            {"id": "dlv_2", "event": "evt_2", "target": "t/rx", "state": "succeeded", "attempts": 1,
             "last": {"status": 200, "error": null}}
        ], "next": "dlv_2"});
        let t = deliveries_table(&v);
        assert!(t.contains("cannot connect") && t.contains("200"));
        assert!(t.ends_with("more: --after dlv_2\n"));
    }

    #[test]
    fn the_token_sent_is_the_first_word_of_the_first_admin_line() {
        assert_eq!(pick_token("# ops\n\n  alpha  \n"), Some("alpha"));
        assert_eq!(pick_token("alpha admin name=ops\n"), Some("alpha"));
        assert_eq!(pick_token("alpha name=ops\n"), Some("alpha"));
        assert_eq!(
            pick_token("ro read name=grafana\nzap subscriber\nroot admin name=ops\n"),
            Some("root")
        );
        assert_eq!(pick_token("ro read\nzap subscriber\n"), Some("ro"));
        assert_eq!(pick_token("ro read\nplain\n"), Some("plain"));
        assert_eq!(pick_token("# only a comment\n\n"), None);
    }

    /// The value of `key:` in a `key: value` block.
    fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    }

    const NOW: u64 = 1_764_590_300_000; // 5 minutes after the spec's timestamps

    fn endpoint() -> Value {
        json!({
            "id": "ep_01JABC", "origin": "api", "owner": "zapier",
            "name": "Nouvelle vente → CRM", "description": "",
            "url": "https://crm.example.com/hook",
            "events": ["purchase.completed", "purchase.refunded"], "route": "braincert",
            "enabled": true, "disabled_reason": null,
            "format": "xml", "template": null, "content_type": null, "xml_root": "sale",
            "basic_auth": {"username": "lms"},
            "headers": {"x-api-key": "***"},
            "filter": null,
            "retry": {"max_attempts": 10, "timeout": "15s", "success": ["200-299"],
                      "backoff": {"initial": "20s", "max": "1h", "multiplier": 2.0, "jitter": 0.2}},
            "rate": {"per_second": 50, "burst": 100},
            "concurrency": 16,
            "metadata": {"team": "sales"},
            "secrets": 1,
            "created_at": 1_764_590_000_000_u64, "updated_at": 1_764_590_000_000_u64,
            "counters": {"calls": 3, "succeeded": 2, "failed": 1, "dead": 0, "tests": 1,
                         "last_status": 200, "last_error": null, "last_at": 1_764_590_000_000_u64},
            "success_rate": 0.6666666,
            "circuit": "closed",
            "recent_tests": [{"event_id": "evt_test_01J", "event_type": "purchase.completed",
                              "at": 1_764_590_000_000_u64, "status": 200, "succeeded": true,
                              "error": null, "duration_ms": 12, "excerpt": "ok\nthanks"}]
        })
    }

    #[test]
    fn endpoint_rows_show_name_events_rate_and_last_call() {
        let mut fresh = endpoint();
        fresh["id"] = json!("t/rx");
        fresh["origin"] = json!("config");
        fresh["enabled"] = json!(false);
        fresh["success_rate"] = Value::Null;
        fresh["counters"] =
            json!({"calls": 0, "last_status": null, "last_error": null, "last_at": null});
        let v = json!({"endpoints": [endpoint(), fresh], "next": "t/rx"});
        let t = endpoints_table(&v, NOW);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ID") && lines[0].ends_with("ENABLED"),
            "{t}"
        );
        assert!(lines[1].contains("Nouvelle vente → CRM"), "{t}");
        assert!(
            lines[1].contains("purchase.completed,purchase.refunded"),
            "{t}"
        );
        assert!(
            lines[1].contains("66.6%") && lines[1].contains("200 5m ago"),
            "{t}"
        );
        assert!(lines[1].ends_with("yes"), "{t}");
        let fresh_row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            fresh_row[fresh_row.len() - 4..],
            ["0", "-", "-", "no"],
            "{t}"
        );
        // Columns line up even after the non-ASCII name.
        let url_col = |l: &str| l.find("https").map(|b| l[..b].chars().count());
        assert_eq!(url_col(lines[1]), url_col(lines[2]), "{t}");
        assert_eq!(
            next_line(&v, &["hookrelay", "endpoints", "list"]),
            "next: hookrelay endpoints list --after t/rx\n"
        );
        assert_eq!(next_line(&json!({"next": null}), &["x"]), "");
    }

    #[test]
    fn success_rates_round_down() {
        assert_eq!(percent(&json!(1.0)), "100%");
        assert_eq!(percent(&json!(0.29)), "29%");
        assert_eq!(percent(&json!(0.9999)), "99.9%");
        assert_eq!(percent(&json!(0.0)), "0%");
        assert_eq!(percent(&Value::Null), "-");
    }

    #[test]
    fn ages_use_their_largest_unit() {
        assert_eq!(age(10_000, &json!(10_000)), "0s ago");
        assert_eq!(age(70_000, &json!(10_000)), "1m ago");
        assert_eq!(age(3 * 3_600_000 + 5, &json!(5)), "3h ago");
        assert_eq!(age(49 * 3_600_000, &json!(0)), "2d ago");
        assert_eq!(
            age(0, &json!(10_000)),
            "0s ago",
            "a clock behind the server's"
        );
        assert_eq!(age(0, &Value::Null), "-");
        assert_eq!(
            timestamp(&json!(1_764_590_000_000_u64)),
            "2025-12-01T11:53:20Z"
        );
    }

    #[test]
    fn endpoint_block_shows_settings_but_no_secret_value() {
        let t = endpoint_text(&endpoint(), NOW);
        for (key, want) in [
            ("name", "Nouvelle vente → CRM"),
            ("origin", "api (owner zapier)"),
            ("events", "purchase.completed, purchase.refunded"),
            ("route", "braincert"),
            ("enabled", "yes"),
            ("format", "xml (root <sale>)"),
            ("content_type", "-"),
            ("basic_auth", "user lms"),
            ("headers", "x-api-key"),
            (
                "retry",
                "10 attempts, timeout 15s, success 200-299, backoff 20s to 1h x2.0 jitter 0.2",
            ),
            ("rate", "50/s, burst 100"),
            ("concurrency", "16"),
            ("metadata", "team=sales"),
            (
                "counters",
                "3 calls, 2 succeeded, 1 failed, 0 dead, 1 tests",
            ),
            ("last", "200 5m ago"),
            ("success rate", "66.6%"),
            ("circuit", "closed"),
        ] {
            assert_eq!(field(&t, key), Some(want), "{key} in\n{t}");
        }
        let test_row = t.lines().last().unwrap();
        assert!(
            test_row.contains("200 in 12 ms") && test_row.ends_with("ok thanks"),
            "{t}"
        );
        assert!(!t.contains("***") && !t.contains("description"), "{t}");

        let mut off = endpoint();
        off["enabled"] = json!(false);
        off["disabled_reason"] = json!("the receiver answered 410 Gone");
        off["rate"] = Value::Null;
        off["recent_tests"] = json!([]);
        let t = endpoint_text(&off, NOW);
        assert_eq!(
            field(&t, "enabled"),
            Some("no (the receiver answered 410 Gone)")
        );
        assert_eq!(field(&t, "rate"), Some("unlimited"));
        assert!(t.ends_with("recent tests: -\n"), "{t}");
    }

    #[test]
    fn test_sends_print_status_and_excerpt_or_the_error() {
        let ok = json!({"event_id": "evt_test_1", "event_type": "new_order", "status": 200,
                        "succeeded": true, "error": null, "duration_ms": 12, "excerpt": "ok"});
        assert_eq!(test_text("ep_1", &ok), "ep_1: 200 in 12 ms\n  ok\n");
        let failed = json!({"event_id": "evt_test_2", "event_type": "new_order", "status": null,
                            "succeeded": false, "error": "connection refused", "duration_ms": 1});
        assert_eq!(
            test_text("t/rx", &failed),
            "t/rx: error: connection refused\n"
        );
        let outcome = json!({"event_id": "evt_test_3", "event_type": "new_order", "status": null,
                             "status_class": "2xx", "succeeded": true, "error": null,
                             "duration_ms": 3});
        assert_eq!(
            test_text("hook_1", &outcome),
            "hook_1: 2xx in 3 ms
"
        );
    }

    #[test]
    fn inbound_rows_show_the_outcome() {
        let v = json!({"events": [
            {"id": "in_2", "at": 1_764_590_000_000_u64, "source": "203.0.113.7", "method": "POST",
             "path": "/nowhere", "route": null, "type": null, "outcome": "rejected",
             "status": 404, "code": "no_route", "reason": "no route for /nowhere",
             "deliveries": 0, "event": null},
            {"id": "in_1", "at": 1_764_590_000_000_u64, "source": "203.0.113.7", "method": "POST",
             "path": "/heights/new_order", "route": "heights", "type": "new_order",
             "outcome": "accepted", "status": 202, "code": null, "reason": null,
             "deliveries": 2, "event": "evt_01J"},
            {"id": "in_0", "at": 1_764_590_000_000_u64, "source": "203.0.113.7", "method": "POST",
             "path": "/heights/new_order", "route": "heights", "type": "new_order",
             "outcome": "duplicate", "status": 200, "code": null, "reason": null,
             "deliveries": 0, "event": "evt_01J"}
        ], "next": "in_0"});
        let t = events_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("AT") && lines[0].ends_with("EVENT"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("2025-12-01T11:53:20Z  203.0.113.7"),
            "{t}"
        );
        assert!(
            lines[1].contains("rejected 404 no_route") && lines[1].ends_with('-'),
            "{t}"
        );
        assert!(
            lines[2].contains("accepted 2") && lines[2].ends_with("evt_01J"),
            "{t}"
        );
        assert!(lines[3].contains("duplicate"), "{t}");
        assert_eq!(
            next_line(&v, &["hookrelay", "events", "list", "--type", "new order"]),
            "next: hookrelay events list --type 'new order' --after in_0\n"
        );
    }

    #[test]
    fn an_event_shows_its_body_and_deliveries() {
        let v = json!({
            "id": "evt_01J", "received_at": 1_764_590_000_000_u64, "source": "203.0.113.7",
            "route": "t", "type": "new_order", "headers": {"content-type": "application/json"},
            "body": "{\"n\":1}",
            "deliveries": [{"id": "dlv_1", "event": "evt_01J", "target": "t/rx", "state": "succeeded",
                            "attempts": 2, "next_at": null, "note": null,
                            "last": {"at": 1, "duration_ms": 3, "status": 200, "error": null, "excerpt": "ok"},
                            "history": [
                                {"at": 1_764_590_000_000_u64, "duration_ms": 5, "status": null,
                                 "error": "connection refused", "excerpt": null},
                                {"at": 1_764_590_001_000_u64, "duration_ms": 3, "status": 200,
                                 "error": null, "excerpt": "ok"}]}]
        });
        let t = event_text(&v);
        assert_eq!(field(&t, "event"), Some("evt_01J"));
        assert_eq!(field(&t, "received"), Some("2025-12-01T11:53:20Z"));
        assert!(t.contains("  content-type: application/json\n"), "{t}");
        assert!(t.contains("body:\n  {\n    \"n\": 1\n  }\n"), "{t}");
        assert!(
            t.contains("  dlv_1 to t/rx: succeeded, 2 attempt(s)\n"),
            "{t}"
        );
        assert!(t.contains("error: connection refused"), "{t}");
        assert!(t.contains("200 in 3 ms") && t.contains("  ok\n"), "{t}");

        let binary = json!({"id": "evt_2", "body_base64": "AAEC", "deliveries": []});
        let t = event_text(&binary);
        assert!(
            t.contains("(binary, 4 base64 characters") && t.ends_with("deliveries: none\n"),
            "{t}"
        );
        let text = json!({"id": "evt_3", "body": "a=1&b=2", "deliveries": []});
        assert!(event_text(&text).contains("body:\n  a=1&b=2\n"));
    }

    #[test]
    fn event_types_group_by_route_then_category() {
        let v = json!({"event_types": [
            {"route": "heights", "name": "seen_only", "display_name": null, "category": null,
             "description": null, "example": null, "declared": false, "last_seen": NOW - 7_200_000},
            {"route": "heights", "name": "new_order", "display_name": "New Order", "category": "Sales",
             "description": "A customer bought.", "example": {"id": 1}, "declared": true, "last_seen": null},
            {"route": "braincert", "name": "purchase.completed", "display_name": "Purchase", "category": "Sales",
             "description": null, "example": null, "declared": true, "last_seen": NOW - 1_000},
            {"route": "heights", "name": "new_member", "display_name": "New Member", "category": "Community",
             "description": null, "example": null, "declared": true, "last_seen": null},
        ]});
        let t = event_types_table(&v, NOW);
        let names: Vec<&str> = t
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(
            names,
            ["purchase.completed", "new_member", "new_order", "seen_only"],
            "{t}"
        );
        assert!(t.lines().next().unwrap().contains("DISPLAY NAME"), "{t}");
        assert!(t.contains("New Order") && t.contains("1s ago"), "{t}");
        let last = t.lines().last().unwrap();
        assert!(
            last.contains("(undeclared)") && last.ends_with("2h ago"),
            "{t}"
        );
    }

    #[test]
    fn flags_merge_under_a_patch() {
        let mut body = json!({"name": "a", "retry": {"max_attempts": 3}, "headers": {"x-a": "1"}});
        merge(
            &mut body,
            json!({"retry": {"timeout": "5s"}, "headers": {"x-a": null}, "events": ["*"]}),
        );
        assert_eq!(
            body,
            json!({"name": "a", "retry": {"max_attempts": 3, "timeout": "5s"},
                   "headers": {"x-a": null}, "events": ["*"]})
        );
    }

    #[test]
    fn flag_values_parse() {
        assert_eq!(
            parse_header("X-Api-Key: abc: def").unwrap(),
            ("X-Api-Key".to_string(), "abc: def".to_string())
        );
        assert!(parse_header("no colon").is_err() && parse_header(": v").is_err());
        assert_eq!(
            parse_pair("team=a=b").unwrap(),
            ("team".into(), "a=b".into())
        );
        assert!(parse_pair("=x").is_err() && parse_pair("x").is_err());
        assert_eq!(
            parse_basic_auth("lms:p:w").unwrap(),
            ("lms".into(), "p:w".into())
        );
        assert!(parse_basic_auth(":pw").is_err());
    }
}
