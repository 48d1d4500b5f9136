//! Configuration: the TOML file, parsed once into types that carry the rules.
//!
//! Every key has a serde default, so an empty file is a valid (loopback-only)
//! configuration. Values are parsed into their domain types while the file is
//! read (`Cidr`, `TargetUrl`, `Secret`, durations, success ranges), so past
//! `Config::load` nothing re-checks strings. Cross-field rules live in one
//! `validate()` step. Every error names the file, the key and the reason.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::route::{EventPattern, PathPattern, Template};
use crate::sign::Secret;

/// A configuration that could not be loaded: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.display().to_string(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration, as loaded from one file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ingest: IngestConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub egress: EgressConfig,
    pub log: LogConfig,
    pub routes: Vec<RouteConfig>,
}

/// `[ingest]`: the listener the LMS posts to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Source networks that may post; everyone else gets 403.
    pub allow: Vec<ipnet::IpNet>,
    /// Largest accepted request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// Per source address; over it: 429 with `Retry-After`.
    pub rate: Rate,
    /// Proxy mode: accept absolute-form requests (`POST http://host/path`)
    /// for routes that name a `host`, and `CONNECT` to `connect_allow`.
    pub proxy: bool,
    /// `host:port` pairs a `CONNECT` may open a tunnel to (proxy mode only).
    pub connect_allow: Vec<ConnectTarget>,
    /// TLS on the listener; with `client_ca`, client certificates are required.
    pub tls: Option<TlsFiles>,
    /// Most header fields in one request; more get 431.
    pub max_headers: usize,
    /// Most bytes of request line plus headers; more get 431.
    pub max_header_bytes: usize,
    /// A connection on which nothing is received for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// How long a client may take to send its request headers.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a client may take to send its request body.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: vec!["127.0.0.1:8080".parse().expect("literal address")],
            allow: loopback_nets(),
            max_body_bytes: 1024 * 1024,
            rate: Rate {
                per_second: nz(500),
                burst: nz(1000),
            },
            proxy: false,
            connect_allow: Vec::new(),
            tls: None,
            max_headers: 100,
            max_header_bytes: 16 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// `[store]`: the sled database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The sled directory; relative paths are taken from the working directory.
    pub path: PathBuf,
    /// How long finished events are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// When the store's files reach this size, ingest answers 503 instead of
    /// accepting events it might not be able to keep. 0 means no limit.
    pub max_disk_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: PathBuf::from("data"),
            retention: Duration::from_secs(7 * 24 * 3600),
            cache_bytes: 16 * 1024 * 1024,
            max_disk_bytes: 0,
        }
    }
}

/// `[delivery]`: the defaults every target starts from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub success: SuccessRanges,
    pub concurrency: usize,
    pub rate: Rate,
    /// On shutdown, how long attempts already under way may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_attempts: 10,
            backoff: Backoff::default(),
            success: SuccessRanges(vec![(200, 299)]),
            concurrency: 16,
            rate: Rate {
                per_second: nz(50),
                burst: nz(100),
            },
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// `[egress]`: how outbound connections are made, and where they may go.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Extra trust roots (PEM) beside the built-in ones.
    pub ca_file: Option<PathBuf>,
    /// Refuse `http://` targets at load.
    pub https_only: bool,
    /// Let loopback, private (RFC 1918, fc00::/7) and CGNAT addresses through.
    pub allow_private: bool,
    /// Networks allowed even when a denied range holds them.
    pub allow: Vec<ipnet::IpNet>,
    /// Networks always refused, whatever else allows them.
    pub deny: Vec<ipnet::IpNet>,
    /// Source address of every outbound connection; `""` lets the OS choose.
    pub bind: BindAddr,
}

/// `egress.bind`: an IP address, or `""` for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindAddr(pub Option<IpAddr>);

impl<'de> Deserialize<'de> for BindAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(BindAddr(None));
        }
        s.parse::<IpAddr>()
            .map(|ip| BindAddr(Some(ip)))
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an IP address")))
    }
}

/// `ingest.tls`: PEM files of the listener's certificate chain and key, and
/// optionally of the CA that client certificates must chain to.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// An `ingest.connect_allow` entry: a host name or IP, and a port (443 when
/// left out). Host names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    pub host: String,
    pub port: u16,
}

impl ConnectTarget {
    pub fn parse(s: &str) -> Result<ConnectTarget, String> {
        let authority: http::uri::Authority = s
            .parse()
            .map_err(|_| format!("`{s}` is not host or host:port"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(format!("`{s}` is not host or host:port"));
        }
        Ok(ConnectTarget {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(443),
        })
    }

    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.port == port && self.host.eq_ignore_ascii_case(host)
    }
}

impl<'de> Deserialize<'de> for ConnectTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ConnectTarget::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// `[log]`: what the process prints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter, as in `RUST_LOG` (which wins when set).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

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
    pub forward_headers: Vec<HeaderName>,
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
}

/// `[[routes.targets]]`: a receiver, with any delivery setting overridden.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub name: String,
    pub url: TargetUrl,
    #[serde(default = "all_events")]
    pub events: Vec<EventPattern>,
    /// One Standard Webhooks secret, or a list while rotating.
    #[serde(default)]
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
}

/// A proxy route's `host`: a lower-case host name or IP literal, with an
/// optional port. Without a port, any port matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHost {
    pub host: String,
    pub port: Option<u16>,
}

impl ProxyHost {
    pub fn parse(s: &str) -> Result<ProxyHost, String> {
        let authority: http::uri::Authority = s
            .parse()
            .map_err(|_| format!("`{s}` is not a host or host:port"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(format!("`{s}` is not a host or host:port"));
        }
        Ok(ProxyHost {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }

    /// Whether a request for `host` on `port` is for this route's host.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        self.host.eq_ignore_ascii_case(host) && self.port.is_none_or(|p| p == port)
    }
}

impl<'de> Deserialize<'de> for ProxyHost {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProxyHost::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The name of a proxy route's implicit target: the request's own URL.
pub const ORIGIN_TARGET: &str = "origin";

fn all_events() -> Vec<EventPattern> {
    vec![EventPattern::parse("*").expect("literal pattern")]
}

// === impl Config ===

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let reason = match inner.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("{} (line {line})", inner.message().trim())
                }
                None => inner.message().trim().to_string(),
            };
            // The root, or a key with an empty name (`['']`), has no path.
            let key = if key == "." || key.is_empty() {
                "(top level)".into()
            } else {
                key
            };
            ConfigError::new(path, key, reason)
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Rules that involve more than one key.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let err = |key: &str, reason: &str| Err(ConfigError::new(path, key, reason));
        if self.ingest.listen.is_empty() {
            return err("ingest.listen", "at least one address is needed");
        }
        if self.ingest.max_body_bytes == 0 {
            return err("ingest.max_body_bytes", "must be above 0");
        }
        if self.ingest.max_connections == 0 || self.ingest.max_connections > MAX_CONNECTIONS {
            return err(
                "ingest.max_connections",
                &format!("must be between 1 and {MAX_CONNECTIONS}"),
            );
        }
        if self.ingest.max_headers == 0 {
            return err("ingest.max_headers", "must be above 0");
        }
        if self.ingest.max_header_bytes < MIN_HEADER_BYTES {
            return err(
                "ingest.max_header_bytes",
                &format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
        for (name, d) in [
            ("header_read_timeout", self.ingest.header_read_timeout),
            ("body_read_timeout", self.ingest.body_read_timeout),
            ("idle_timeout", self.ingest.idle_timeout),
        ] {
            if d.is_zero() {
                return err(&format!("ingest.{name}"), "must be above 0");
            }
        }
        if !self.ingest.connect_allow.is_empty() && !self.ingest.proxy {
            return err(
                "ingest.connect_allow",
                "CONNECT is served only in proxy mode (ingest.proxy = true)",
            );
        }
        if let Some(tls) = &self.ingest.tls {
            if let Err(e) = crate::tls::server_config(tls) {
                return err("ingest.tls", &e.to_string());
            }
        }
        let e = &self.egress;
        let policy = crate::egress::Policy::new(e);
        for (i, c) in self.ingest.connect_allow.iter().enumerate() {
            if let Some(reason) = policy.refuses_literal(&c.host) {
                return err(&format!("ingest.connect_allow[{i}]"), &reason);
            }
        }
        if let Some(ca) = &e.ca_file {
            if let Err(err) = crate::egress::load_ca_file(ca) {
                return Err(ConfigError::new(path, "egress.ca_file", err.to_string()));
            }
        }
        self.delivery
            .check("delivery")
            .map_err(|(k, r)| ConfigError::new(path, k, r))?;

        let mut route_names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !valid_name(&route.name) {
                return err(
                    &format!("{at}.name"),
                    "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                );
            }
            if !route_names.insert(route.name.as_str()) {
                return err(&format!("{at}.name"), "another route has this name");
            }
            match &route.host {
                Some(_) if !self.ingest.proxy => {
                    return err(
                        &format!("{at}.host"),
                        "a route with a host takes proxy requests; set ingest.proxy = true",
                    );
                }
                Some(host) => {
                    if let Some(reason) = policy.refuses_literal(&host.host) {
                        return err(&format!("{at}.host"), &reason);
                    }
                    if e.https_only && !route.upgrade_https {
                        return err(
                            &format!("{at}.upgrade_https"),
                            "egress.https_only is set: a proxy route must upgrade to https",
                        );
                    }
                }
                None if route.upgrade_https => {
                    return err(
                        &format!("{at}.upgrade_https"),
                        "only a route with a host (proxy mode) is upgraded",
                    );
                }
                None => {}
            }
            for (field, template) in [("event", &route.event), ("dedup", &route.dedup)] {
                if let Some(t) = template {
                    if let Some(name) = t.path_captures().find(|c| !route.path.captures(c)) {
                        return err(
                            &format!("{at}.{field}"),
                            &format!("{{path.{name}}} is not captured by the route's path"),
                        );
                    }
                }
            }
            let mut target_names = HashSet::new();
            for (j, target) in route.targets.iter().enumerate() {
                let at = format!("{at}.targets[{j}]");
                if !valid_name(&target.name) {
                    return err(
                        &format!("{at}.name"),
                        "must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    );
                }
                if route.host.is_some() && target.name == ORIGIN_TARGET {
                    return err(
                        &format!("{at}.name"),
                        "`origin` is the implicit target of a proxy route",
                    );
                }
                if !target_names.insert(target.name.as_str()) {
                    return err(
                        &format!("{at}.name"),
                        "another target of this route has this name",
                    );
                }
                if e.https_only && !target.url.is_https() {
                    return err(
                        &format!("{at}.url"),
                        "egress.https_only is set and this URL is http",
                    );
                }
                if let Some(host) = target.url.uri().host() {
                    if let Some(reason) = policy.refuses_literal(host) {
                        return err(&format!("{at}.url"), &reason);
                    }
                }
                self.delivery
                    .with(target)
                    .check(&at)
                    .map_err(|(k, r)| ConfigError::new(path, k, r))?;
            }
        }
        Ok(())
    }
}

/// The largest `ingest.max_connections`.
pub const MAX_CONNECTIONS: usize = 1 << 20;

/// The smallest `ingest.max_header_bytes`: HTTP/1 parsing needs one 8 KiB
/// buffer at least.
pub const MIN_HEADER_BYTES: usize = 8192;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

// === impl DeliveryConfig ===

impl DeliveryConfig {
    /// The delivery policy of `target`: these defaults with its overrides applied.
    pub fn with(&self, target: &TargetConfig) -> DeliveryConfig {
        let b = &target.backoff;
        DeliveryConfig {
            timeout: target.timeout.unwrap_or(self.timeout),
            connect_timeout: target.connect_timeout.unwrap_or(self.connect_timeout),
            max_attempts: target.max_attempts.unwrap_or(self.max_attempts),
            backoff: Backoff {
                initial: b.initial.unwrap_or(self.backoff.initial),
                max: b.max.unwrap_or(self.backoff.max),
                multiplier: b.multiplier.unwrap_or(self.backoff.multiplier),
                jitter: b.jitter.unwrap_or(self.backoff.jitter),
            },
            success: target
                .success
                .clone()
                .unwrap_or_else(|| self.success.clone()),
            concurrency: target.concurrency.unwrap_or(self.concurrency),
            rate: target.rate.unwrap_or(self.rate),
            shutdown_grace: self.shutdown_grace,
        }
    }

    fn check(&self, at: &str) -> Result<(), (String, String)> {
        let bad = |k: &str, r: &str| Err((format!("{at}.{k}"), r.to_string()));
        if self.timeout.is_zero() {
            return bad("timeout", "must be above 0");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be above 0");
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1");
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return bad("concurrency", "must be between 1 and 1024");
        }
        let b = &self.backoff;
        if b.initial.is_zero() {
            return bad("backoff.initial", "must be above 0");
        }
        if b.max < b.initial {
            return bad("backoff.max", "must not be below backoff.initial");
        }
        if !(b.multiplier.is_finite() && (1.0..=100.0).contains(&b.multiplier)) {
            return bad("backoff.multiplier", "must be between 1.0 and 100.0");
        }
        if !(b.jitter.is_finite() && (0.0..=1.0).contains(&b.jitter)) {
            return bad("backoff.jitter", "must be between 0.0 and 1.0");
        }
        Ok(())
    }
}

/// Exponential backoff between attempts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    pub multiplier: f64,
    /// Each delay is spread uniformly over ±jitter of itself.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(20),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1-based), before
    /// jitter: `min(max, initial * multiplier^(attempt-1))`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(1000) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// `delay` spread by jitter; `unit` is a uniform sample from [0, 1).
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.delay(attempt).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base * factor).max(0.0))
    }
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

/// A token-bucket rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Rate {
    pub fn quota(&self) -> governor::Quota {
        governor::Quota::per_second(self.per_second).allow_burst(self.burst)
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero literal")
}

fn loopback_nets() -> Vec<ipnet::IpNet> {
    vec![
        "127.0.0.1/32".parse().expect("literal network"),
        "::1/128".parse().expect("literal network"),
    ]
}

// === domain types parsed at load ===

/// Status codes that count as delivered, e.g. `["200-299"]` or `["200-308", "410"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuccessRanges(pub Vec<(u16, u16)>);

impl SuccessRanges {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    fn parse_one(s: &str) -> Result<(u16, u16), String> {
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!(
                    "`{s}` is not a status code (100-599) or a range like 200-299"
                )),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (code(a)?, code(b)?),
            None => (code(s)?, code(s)?),
        };
        if lo > hi {
            return Err(format!("`{s}`: range is backwards"));
        }
        Ok((lo, hi))
    }
}

impl<'de> Deserialize<'de> for SuccessRanges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(d)?;
        if items.is_empty() {
            return Err(serde::de::Error::custom(
                "at least one status range is needed",
            ));
        }
        items
            .iter()
            .map(|s| SuccessRanges::parse_one(s))
            .collect::<Result<Vec<_>, _>>()
            .map(SuccessRanges)
            .map_err(serde::de::Error::custom)
    }
}

/// An absolute http or https URL with a host, checked at load.
#[derive(Clone, PartialEq, Eq)]
pub struct TargetUrl(http::Uri);

impl TargetUrl {
    pub fn parse(s: &str) -> Result<TargetUrl, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("`{s}`: the scheme must be http or https")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{s}`: the URL has no host"));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(format!(
                "`{s}`: credentials in the URL are not allowed (they would leak into logs)"
            ));
        }
        Ok(TargetUrl(uri))
    }

    pub fn uri(&self) -> &http::Uri {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.scheme_str() == Some("https")
    }
}

impl fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for TargetUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for TargetUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TargetUrl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A lower-case HTTP header name, checked at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderName(pub http::HeaderName);

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let name = http::HeaderName::from_bytes(s.as_bytes())
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a header name")))?;
        if crate::ingest::never_forwarded(&name) {
            return Err(serde::de::Error::custom(format!(
                "`{s}` is never forwarded (hop-by-hop, credentials or set by hookrelay)"
            )));
        }
        Ok(HeaderName(name))
    }
}

/// A target's signing secrets: none, one, or several while rotating.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub Vec<Secret>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.iter()
            .map(|s| Secret::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map(Secrets)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.ingest.listen, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(c.delivery.max_attempts, 10);
        assert!(c.delivery.success.contains(204));
        assert!(!c.delivery.success.contains(302));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let e = parse("[delivery]\ntimeout = \"soon\"\n").unwrap_err();
        assert_eq!(e.file, "test.toml");
        assert_eq!(e.key, "delivery.timeout");
        assert!(!e.reason.is_empty());

        let e = parse("[ingest]\nallow = [\"10.0.0.300/8\"]\n").unwrap_err();
        assert_eq!(e.key, "ingest.allow[0]");

        // Found by fuzzing: an empty table name left the key empty.
        let e = parse("['']").unwrap_err();
        assert_eq!(e.key, "(top level)");

        let e = parse("[store]\npaht = \"x\"\n").unwrap_err();
        assert!(e.reason.contains("unknown field"), "{e}");

        let e = parse(
            "[[routes]]\nname = \"r\"\npath = \"/a\"\n[[routes.targets]]\nname = \"t\"\nurl = \"ftp://x\"\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].url");
        assert!(e.reason.contains("http or https"), "{e}");
    }

    #[test]
    fn cross_field_rules() {
        let e = parse("[[routes]]\nname = \"r\"\npath = \"/a\"\nevent = \"{path.event}\"\n")
            .unwrap_err();
        assert_eq!(e.key, "routes[0].event");

        let e = parse("[delivery]\nbackoff = { initial = \"2s\", max = \"1s\" }\n").unwrap_err();
        assert_eq!(e.key, "delivery.backoff.max");

        let e = parse(
            "[[routes]]\nname = \"r\"\npath = \"/a\"\n[[routes.targets]]\nname = \"t\"\nurl = \"http://x\"\nsuccess = [\"299-200\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].success");
    }

    #[test]
    fn success_ranges() {
        let r = SuccessRanges(vec![
            SuccessRanges::parse_one("200-308").unwrap(),
            SuccessRanges::parse_one("410").unwrap(),
        ]);
        assert!(r.contains(200) && r.contains(308) && r.contains(410));
        assert!(!r.contains(309) && !r.contains(199));
        assert!(SuccessRanges::parse_one("2xx").is_err());
        assert!(SuccessRanges::parse_one("99").is_err());
    }

    #[test]
    fn backoff_grows_to_max() {
        let b = Backoff {
            initial: Duration::from_secs(20),
            max: Duration::from_secs(3600),
            multiplier: 2.0,
            jitter: 0.2,
        };
        assert_eq!(b.delay(1), Duration::from_secs(20));
        assert_eq!(b.delay(2), Duration::from_secs(40));
        assert_eq!(b.delay(8), Duration::from_secs(2560));
        assert_eq!(b.delay(9), Duration::from_secs(3600));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(3600));
        assert_eq!(b.jittered(2, 0.0), Duration::from_secs(32));
        assert_eq!(b.jittered(2, 0.5), Duration::from_secs(40));
    }

    #[test]
    fn shipped_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.routes.is_empty());
    }
}
