//! The operator's side of the admin API: a small client that finds the
//! admin address and token in the same config file the relay reads, and the
//! plain-text tables the `hookrelay hooks|deliveries|targets` commands print.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::config::Config;

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
    /// loopback) and the first token of `admin.tokens_file`.
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
        let token = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
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
            let message = json["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string();
            return Err(ClientError::Api { status, message });
        }
        Ok(json)
    }
}

/// Lays out rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
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
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `GET /api/hooks` as a table.
pub fn hooks_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["hooks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
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
    let rows: Vec<Vec<String>> = v["targets"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
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
    let rows: Vec<Vec<String>> = v["deliveries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
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
}
