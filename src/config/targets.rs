//! `[[routes]]` and `[[routes.targets]]`: where events come in, and the
//! receivers they go to, with each target's shape, headers and policy
//! resolved at load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::event_types::{
    valid_display_name, valid_event_name, EventType, EventTypeConfig,
};
use crate::config::values::{
    resolve_value, sensitive, Environment, SecretSources, Secrets, ValueSource,
};
use crate::deliver::egress::{Policy, TargetUrl};
use crate::deliver::policy::{Backoff, CircuitConfig, DeliveryConfig, SuccessRanges};
use crate::deliver::shape::{Body, BodyTemplate, Outbound, Shape, XmlName};
use crate::ingest::filter::Filter;
use crate::ingest::headers::ForwardHeader;
use crate::ingest::route::{EventPattern, PathPattern, ProxyHost, Template};
use crate::rate::Rate;

/// `[[routes]]`: a path the LMS posts to, and where its events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// Proxy mode: the host (and port, if given) of the absolute-form
    /// requests this route takes. Such a route takes only proxy requests, and
    /// relays each to its own URL (the implicit target `origin`).
    pub host: Option<ProxyHost>,
    /// Deliver a proxy route's requests over https, whatever scheme the LMS used.
    #[serde(default)]
    pub upgrade_https: bool,
    pub path: PathPattern,
    /// The event type. Defaults to `{path.event}` when the path captures
    /// `event`, else to the route's name.
    pub event: Option<Template>,
    /// Same key again within retention is acknowledged, not queued again.
    pub dedup: Option<Template>,
    /// Request headers (besides `content-type`) kept with the event and
    /// forwarded to receivers.
    #[serde(default)]
    pub forward_headers: Vec<ForwardHeader>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// The event types this route carries (its catalog), written here ...
    #[serde(default)]
    pub event_types: Vec<EventTypeConfig>,
    /// ... or in a catalog file, relative to the config file's directory.
    pub event_types_file: Option<PathBuf>,
    /// The catalog, resolved at load (both keys together).
    #[serde(skip)]
    pub catalog: Vec<EventType>,
}

/// `[[routes.targets]]`: a receiver, with any delivery setting overridden.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// A stable id for the API and the store; without it the target keeps
    /// the id it was first given, found again by route and name, else by
    /// route and URL.
    pub id: Option<String>,
    /// Free text shown in lists: 1-100 characters, no control characters.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// `false` pauses it: events still queue for it, none is attempted.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Labels of the operator's own (team, ticket, ...), shown by the API.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    pub url: TargetUrl,
    #[serde(default = "all_events")]
    pub events: Vec<EventPattern>,
    /// One Standard Webhooks secret, or a list while rotating; each may be
    /// written out or be `env:NAME` / `file:/path`.
    #[serde(default, rename = "secret")]
    pub secret_sources: SecretSources,
    /// The secrets, resolved at load.
    #[serde(skip)]
    pub secret: Secrets,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff: BackoffOverride,
    pub success: Option<SuccessRanges>,
    pub concurrency: Option<usize>,
    pub rate: Option<Rate>,
    pub circuit: Option<CircuitConfig>,
    /// Deliver only events whose JSON body matches (decided at ingest).
    pub filter: Option<Filter>,
    /// `original` (default): the bytes as received; `json`: the same, which
    /// must be JSON, as `application/json`; `xml`: the JSON body as XML;
    /// `template`: the output of `template`.
    pub format: Option<Format>,
    /// The root element of XML bodies (default `event`).
    pub xml_root: Option<XmlName>,
    /// A body template (minijinja), inline ...
    pub template: Option<String>,
    /// ... or from a file, relative to the config file's directory.
    pub template_file: Option<PathBuf>,
    /// Replaces the content type the body would otherwise be sent with.
    pub content_type: Option<String>,
    pub basic_auth: Option<BasicAuthConfig>,
    /// Extra request headers; values may be `env:NAME` or `file:/path`.
    #[serde(default)]
    pub headers: BTreeMap<String, ValueSource>,
    /// The body shape and extra headers, built from the keys above at load.
    #[serde(skip)]
    pub outbound: Outbound,
}

/// A target's body format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Original,
    Json,
    Xml,
    Template,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Original => "original",
            Format::Json => "json",
            Format::Xml => "xml",
            Format::Template => "template",
        }
    }
}

fn yes() -> bool {
    true
}

/// `at.k`, or `k` at the top (the admin API's bodies).
pub(crate) fn key(at: &str, k: &str) -> String {
    if at.is_empty() {
        k.to_string()
    } else {
        format!("{at}.{k}")
    }
}

/// `basic_auth = { username, password }`; the password may be `env:` or `file:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    pub password: ValueSource,
}

/// The name of a proxy route's implicit target: the request's own URL.
pub const ORIGIN_TARGET: &str = "origin";

pub(crate) fn all_events() -> Vec<EventPattern> {
    vec![EventPattern::parse("*").expect("literal pattern")]
}

/// A target's `backoff` table: any key it leaves out comes from `[delivery]`.
#[derive(Debug, Clone, Copy, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffOverride {
    #[serde(with = "humantime_serde")]
    pub initial: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub max: Option<Duration>,
    pub multiplier: Option<f64>,
    pub jitter: Option<f64>,
}

impl TargetConfig {
    /// The rules of one target, the same for the file and the admin API;
    /// errors are (key under `at`, reason).
    pub fn validate(
        &self,
        at: &str,
        guard: &Policy,
        https_only: bool,
        defaults: &DeliveryConfig,
    ) -> Result<(), (String, String)> {
        let bad = |k: &str, r: String| Err((key(at, k), r));
        if let Some(id) = &self.id {
            if !valid_id(id) {
                return bad(
                    "id",
                    "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'".into(),
                );
            }
        }
        if let Err(r) = valid_display_name(&self.name) {
            return bad("name", r);
        }
        if self.description.chars().count() > 1000 {
            return bad("description", "must be at most 1000 characters".into());
        }
        for (i, e) in self.events.iter().enumerate() {
            if let Err(r) = valid_event_name(&e.to_string()) {
                return bad(&format!("events[{i}]"), r);
            }
        }
        for (k, v) in &self.metadata {
            if k.is_empty() || k.len() > 64 || v.chars().count() > 500 {
                return bad(
                    "metadata",
                    "keys are 1-64 bytes and values at most 500 characters".into(),
                );
            }
            if k.chars().chain(v.chars()).any(char::is_control) {
                return bad("metadata", "may not contain control characters".into());
            }
        }
        if self.metadata.len() > 50 {
            return bad("metadata", "at most 50 entries".into());
        }
        if https_only && !self.url.is_https() {
            return bad(
                "url",
                "egress.https_only is set and this URL is http".into(),
            );
        }
        if let Some(host) = self.url.uri().host() {
            if let Some(reason) = guard.refuses_literal(host) {
                return bad("url", reason);
            }
        }
        self.policy(defaults).validate(at)
    }

    /// This target's delivery policy: `defaults` with its overrides applied.
    pub fn policy(&self, defaults: &DeliveryConfig) -> DeliveryConfig {
        let b = &self.backoff;
        DeliveryConfig {
            timeout: self.timeout.unwrap_or(defaults.timeout),
            connect_timeout: self.connect_timeout.unwrap_or(defaults.connect_timeout),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff: Backoff {
                initial: b.initial.unwrap_or(defaults.backoff.initial),
                max: b.max.unwrap_or(defaults.backoff.max),
                multiplier: b.multiplier.unwrap_or(defaults.backoff.multiplier),
                jitter: b.jitter.unwrap_or(defaults.backoff.jitter),
            },
            success: self
                .success
                .clone()
                .unwrap_or_else(|| defaults.success.clone()),
            concurrency: self.concurrency.unwrap_or(defaults.concurrency),
            rate: self.rate.unwrap_or(defaults.rate),
            circuit: self.circuit.unwrap_or(defaults.circuit),
            shutdown_grace: defaults.shutdown_grace,
        }
    }
}

/// Headers a target's `headers` may not set: hookrelay sets them, or they
/// belong to the connection.
fn reserved_header(name: &http::HeaderName) -> bool {
    const NAMES: &[&str] = &[
        "content-type",
        "content-length",
        "host",
        "user-agent",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    ];
    NAMES.contains(&name.as_str()) || name.as_str().starts_with("webhook-")
}

/// A target's shape and extra headers; errors are (key, reason).
pub(crate) fn outbound(
    t: &TargetConfig,
    at: &str,
    base: &Path,
    env: &dyn Environment,
) -> Result<Outbound, (String, String)> {
    let bad = |k: &str, r: String| (key(at, k), r);
    let content_type = t
        .content_type
        .as_deref()
        .map(|ct| {
            let essence = ct.split(';').next().unwrap_or_default().trim();
            let media_type = essence.split_once('/').is_some_and(|(a, b)| {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
                };
                token(a) && token(b)
            });
            match http::HeaderValue::from_str(ct) {
                Ok(v) if media_type => Ok(v),
                _ => Err(bad(
                    "content_type",
                    format!("`{ct}` is not a media type like application/json"),
                )),
            }
        })
        .transpose()?;
    let source = match (&t.template, &t.template_file) {
        (Some(_), Some(_)) => {
            return Err(bad(
                "template_file",
                "set template or template_file, not both".into(),
            ))
        }
        (Some(s), None) => Some(("template", s.clone())),
        (None, Some(file)) => {
            let full = base.join(file);
            let text = std::fs::read_to_string(&full).map_err(|e| {
                bad(
                    "template_file",
                    format!("cannot read {}: {e}", full.display()),
                )
            })?;
            Some(("template_file", text))
        }
        (None, None) => None,
    };
    let format = t.format.unwrap_or(match source {
        Some(_) => Format::Template,
        None => Format::Original,
    });
    if t.xml_root.is_some() && format != Format::Xml {
        return Err(bad("xml_root", "only applies with format = \"xml\"".into()));
    }
    let body = match (source, format) {
        // `json` with a template is how older files asked for one.
        (Some((key, text)), Format::Template | Format::Json) => Body::Template(
            BodyTemplate::parse(&text, content_type.as_ref()).map_err(|e| bad(key, e))?,
        ),
        (Some((key, _)), other) => {
            return Err(bad(
                key,
                format!(
                    "a template makes the whole body; it cannot be combined with format = \"{}\"",
                    other.as_str()
                ),
            ))
        }
        (None, Format::Template) => {
            return Err(bad(
                "format",
                "format = \"template\" needs template (or template_file)".into(),
            ))
        }
        (None, Format::Xml) => Body::Xml(t.xml_root.clone().unwrap_or_default()),
        (None, Format::Json) => Body::Json,
        (None, Format::Original) => Body::Original,
    };

    let mut headers: Vec<(http::HeaderName, http::HeaderValue)> = Vec::new();
    if let Some(auth) = &t.basic_auth {
        if auth.username.contains(':') {
            return Err(bad("basic_auth.username", "may not contain ':'".into()));
        }
        let password =
            resolve_value(&auth.password, base, env).map_err(|r| bad("basic_auth.password", r))?;
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", auth.username));
        let value = sensitive(&format!("Basic {token}"))
            .ok_or_else(|| bad("basic_auth", "not usable in a header".into()))?;
        headers.push((http::header::AUTHORIZATION, value));
    }
    for (name, source) in &t.headers {
        let key = format!("headers.{name}");
        let header = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(&key, format!("`{name}` is not a header name")))?;
        if reserved_header(&header) {
            return Err(bad(
                &key,
                format!(
                    "`{header}` cannot be set: hookrelay sets it, or it belongs to the connection \
                     (webhook-*, content-type, content-length, host, user-agent and hop-by-hop \
                     headers are reserved; use content_type for the content type)"
                ),
            ));
        }
        if headers.iter().any(|(n, _)| *n == header) {
            let why = if header == http::header::AUTHORIZATION && t.basic_auth.is_some() {
                "basic_auth already sets authorization".to_string()
            } else {
                format!("`{header}` is set twice (header names ignore case)")
            };
            return Err(bad(&key, why));
        }
        let text = resolve_value(source, base, env).map_err(|r| bad(&key, r))?;
        let value = sensitive(&text).ok_or_else(|| {
            bad(
                &key,
                "the value is not a valid header value (control characters or non-ASCII)".into(),
            )
        })?;
        headers.push((header, value));
    }
    Ok(Outbound {
        shape: Shape { body, content_type },
        headers,
    })
}

/// Whether `id` may be a configured target's `id` (or a route's or a
/// target's name where the config file needs a key).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, ConfigError};

    /// A config with one target at `url`, after the `top` lines.
    fn load(top: &str, url: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "{top}\n[[routes]]\nname = \"r\"\npath = \"/a\"\n\
             [[routes.targets]]\nname = \"t\"\nurl = \"{url}\"\n"
        );
        Config::parse(&text, Path::new("t.toml"))
    }

    const OPEN: &str = "egress.allow_private = true\negress.allow = [\"0.0.0.0/0\", \"::/0\"]";

    #[test]
    fn other_spellings_of_an_ipv4_address_are_refused_at_load() {
        for (url, canonical) in [
            ("http://2130706433/hook", "127.0.0.1"),
            ("http://0x7f000001/hook", "127.0.0.1"),
            ("http://0x7f.1:8080/hook", "127.0.0.1"),
            ("http://127.1/hook", "127.0.0.1"),
            ("http://0177.0.0.1/hook", "127.0.0.1"),
            ("http://127.0.0.1./hook", "127.0.0.1"),
            ("https://0xa9fea9fe/latest/meta-data", "169.254.169.254"),
            ("https://8.8.010.8/", "8.8.8.8"),
        ] {
            // Even a policy that lets every address through.
            let e = load(OPEN, url).unwrap_err();
            assert_eq!(e.key, "routes[0].targets[0].url", "{url}");
            assert!(
                e.reason
                    .contains(&format!("not a canonical IPv4 address; write {canonical}")),
                "{url}: {e}"
            );
        }
        let e = load(OPEN, "http://1.2.3.4.5/").unwrap_err();
        assert!(e.reason.contains("not an IPv4 address"), "{e}");
        let e = load(OPEN, "http://[fe80::1%25eth0]/").unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].url");
        // The canonical spellings load.
        load(OPEN, "http://127.0.0.1:8080/hook").unwrap();
        load(OPEN, "http://[::ffff:127.0.0.1]/hook").unwrap();
        load("", "https://hooks.example.com./in").unwrap();
    }

    #[test]
    fn proxy_hosts_and_connect_allow_take_only_canonical_addresses() {
        let text =
            format!("{OPEN}\ningest.proxy = true\ningest.connect_allow = [\"0x7f.1:443\"]\n");
        let e = Config::parse(&text, Path::new("t.toml")).unwrap_err();
        assert_eq!(e.key, "ingest.connect_allow[0]", "{e}");
        assert!(e.reason.contains("write 127.0.0.1"), "{e}");
    }
}
