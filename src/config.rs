//! Configuration: the TOML file, parsed once into types that carry the rules.
//!
//! Every key has a serde default, so an empty file is a valid (loopback-only)
//! configuration. Values are parsed into their domain types while the file is
//! read (`Cidr`, `TargetUrl`, `Secret`, durations, success ranges), so past
//! `Config::load` nothing re-checks strings. Cross-field rules live in one
//! `validate()` step; then `resolve()` reads what lives outside the file
//! (`env:` and `file:` values, template files) and compiles each target's
//! shape, so a missing secret or a broken template stops the load. Every
//! error names the file, the key and the reason, and never a secret's value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::route::{EventPattern, Filter, PathPattern, Template};
use crate::shape::{Body, BodyTemplate, Shape, XmlName};
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
    pub admin: AdminConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub egress: EgressConfig,
    pub log: LogConfig,
    pub routes: Vec<RouteConfig>,
    /// The directory of the config file: relative `admin.tokens_file` paths
    /// are taken from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
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

/// `[admin]`: the management listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Addresses of the admin API; empty: no admin listener.
    pub listen: Vec<SocketAddr>,
    /// Source networks that may use it; others get 403.
    pub allow: Vec<ipnet::IpNet>,
    /// Bearer tokens, one a line. A relative path is looked up in
    /// `$CREDENTIALS_DIRECTORY` (systemd credentials) first, then beside the
    /// config file.
    pub tokens_file: PathBuf,
    /// TLS on the admin listener; with `client_ca`, client certificates are required.
    pub tls: Option<TlsFiles>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:8081".parse().expect("literal address")],
            allow: loopback_nets(),
            tokens_file: PathBuf::from("admin.tokens"),
            tls: None,
        }
    }
}

impl AdminConfig {
    /// Where the tokens file is, given the config file's directory.
    pub fn tokens_path(&self, base_dir: &Path) -> PathBuf {
        if self.tokens_file.is_absolute() {
            return self.tokens_file.clone();
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(&self.tokens_file);
            if p.exists() {
                return p;
            }
        }
        base_dir.join(&self.tokens_file)
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
            cache_bytes: 4 * 1024 * 1024,
            max_disk_bytes: 0,
        }
    }
}

/// `[delivery]`: the defaults every target starts from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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
    /// After this many failed attempts in a row a target's deliveries wait.
    pub circuit: CircuitConfig,
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
            circuit: CircuitConfig::default(),
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
    pub format: LogFormat,
}

/// `log.format`: `"text"` (journald-style under systemd) or `"json"` lines.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
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
    /// `json`: the original bytes; `xml`: the JSON body as XML.
    #[serde(default)]
    pub format: Format,
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

impl TargetConfig {
    pub fn renders_template(&self) -> bool {
        matches!(self.outbound.shape.body, Body::Template(_))
    }
}

/// A target's body format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Xml,
}

/// `basic_auth = { username, password }`; the password may be `env:` or `file:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    pub password: ValueSource,
}

/// A value written in the file, or read at load from the environment
/// (`env:NAME`) or a file (`file:/path`, trailing whitespace trimmed).
/// `Debug` never shows a literal value.
#[derive(Clone, PartialEq, Eq)]
pub enum ValueSource {
    Literal(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Literal(_) => f.write_str("***"),
            ValueSource::Env(name) => write!(f, "env:{name}"),
            ValueSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for ValueSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(name) = s.strip_prefix("env:") {
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(serde::de::Error::custom(format!(
                    "`env:{name}`: an environment variable name is letters, digits and '_'"
                )));
            }
            Ok(ValueSource::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err(serde::de::Error::custom("`file:` needs a path"));
            }
            Ok(ValueSource::File(PathBuf::from(path)))
        } else {
            Ok(ValueSource::Literal(s))
        }
    }
}

/// Where `env:NAME` values come from: the process environment, or in tests
/// a map, so tests never touch the real environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// What a target adds to each request, resolved at load.
#[derive(Clone, Default)]
pub struct Outbound {
    pub shape: Shape,
    /// `basic_auth` and `headers`, values marked sensitive.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Outbound")
            .field("shape", &self.shape)
            .field("headers", &names)
            .finish()
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
        Config::load_with(path, &ProcessEnv)
    }

    /// `load`, with `env:` values taken from `env`.
    pub fn load_with(path: &Path, env: &dyn Environment) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
        Config::parse_with(&text, path, env)
    }

    /// Parses and validates `text`; `path` names the file in errors, and its
    /// directory is where relative `file:` and `template_file` paths start.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, &ProcessEnv)
    }

    /// `parse`, with `env:` values taken from `env`.
    pub fn parse_with(
        text: &str,
        path: &Path,
        env: &dyn Environment,
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
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
        config.resolve(path, env)?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(config)
    }

    /// Reads `env:` and `file:` values and template files, and builds each
    /// target's outbound shape and headers.
    fn resolve(&mut self, path: &Path, env: &dyn Environment) -> Result<(), ConfigError> {
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        for (i, route) in self.routes.iter_mut().enumerate() {
            for (j, target) in route.targets.iter_mut().enumerate() {
                let at = format!("routes[{i}].targets[{j}]");
                target.outbound = outbound(target, &at, &base, env)
                    .map_err(|(k, r)| ConfigError::new(path, k, r))?;
                target.secret = target
                    .secret_sources
                    .resolve(&base, env)
                    .map_err(|r| ConfigError::new(path, format!("{at}.secret"), r))?;
            }
        }
        Ok(())
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
        for (key, tls) in [
            ("ingest.tls", &self.ingest.tls),
            ("admin.tls", &self.admin.tls),
        ] {
            if let Some(tls) = tls {
                if let Err(e) = crate::tls::server_config(tls) {
                    return err(key, &e.to_string());
                }
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

/// A target's shape and extra headers; errors are (key, reason).
fn outbound(
    t: &TargetConfig,
    at: &str,
    base: &Path,
    env: &dyn Environment,
) -> Result<Outbound, (String, String)> {
    let bad = |k: &str, r: String| (format!("{at}.{k}"), r);
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
    if t.xml_root.is_some() && t.format != Format::Xml {
        return Err(bad("xml_root", "only applies with format = \"xml\"".into()));
    }
    let body = match (source, t.format) {
        (Some((key, _)), Format::Xml) => {
            return Err(bad(
                key,
                "a template makes the whole body; it cannot be combined with format = \"xml\""
                    .into(),
            ))
        }
        (Some((key, text)), Format::Json) => {
            Body::Template(BodyTemplate::parse(&text).map_err(|e| bad(key, e))?)
        }
        (None, Format::Xml) => Body::Xml(t.xml_root.clone().unwrap_or_default()),
        (None, Format::Json) => Body::Original,
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

/// The text of a value; errors name the source, never the value.
fn resolve_value(
    source: &ValueSource,
    base: &Path,
    env: &dyn Environment,
) -> Result<String, String> {
    match source {
        ValueSource::Literal(s) => Ok(s.clone()),
        ValueSource::Env(name) => env
            .var(name)
            .ok_or_else(|| format!("environment variable {name} is not set (or not UTF-8)")),
        ValueSource::File(file) => {
            let full = base.join(file);
            std::fs::read_to_string(&full)
                .map(|s| s.trim_end().to_string())
                .map_err(|e| format!("cannot read {}: {e}", full.display()))
        }
    }
}

/// A header value marked sensitive (HTTP/2 never indexes it; `Debug` hides it).
fn sensitive(text: &str) -> Option<http::HeaderValue> {
    let mut v = http::HeaderValue::from_str(text).ok()?;
    v.set_sensitive(true);
    Some(v)
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
            circuit: target.circuit.unwrap_or(self.circuit),
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

/// The circuit breaker: after `failures` failed attempts in a row (0: never)
/// the target's deliveries wait for `cooldown`, then one probe at a time
/// decides whether to close.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitConfig {
    pub failures: u32,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        CircuitConfig {
            failures: 10,
            cooldown: Duration::from_secs(30),
        }
    }
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

/// The `secret` key as written. Literal secrets are checked as they are
/// read; `env:` and `file:` ones when they are resolved.
#[derive(Debug, Clone, Default)]
pub struct SecretSources(Vec<ValueSource>);

impl SecretSources {
    fn resolve(&self, base: &Path, env: &dyn Environment) -> Result<Secrets, String> {
        self.0
            .iter()
            .map(|source| {
                let text = resolve_value(source, base, env)?;
                Secret::parse(&text).map_err(|e| match source {
                    // Never echo a secret; say where it came from.
                    ValueSource::Literal(_) => e,
                    other => format!("{other:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Secrets)
    }
}

impl<'de> Deserialize<'de> for SecretSources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(ValueSource),
            Many(Vec<ValueSource>),
        }
        let list = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        for source in &list {
            if let ValueSource::Literal(s) = source {
                Secret::parse(s).map_err(serde::de::Error::custom)?;
            }
        }
        Ok(SecretSources(list))
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

    fn target(extra: &str) -> String {
        format!("[[routes]]\nname = \"r\"\npath = \"/a\"\n[[routes.targets]]\nname = \"t\"\nurl = \"http://x\"\n{extra}\n")
    }

    fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::parse_with(text, Path::new("test.toml"), &env)
    }

    #[test]
    fn target_headers_and_basic_auth_resolve_and_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("key");
        std::fs::write(&file, "file-secret\n").unwrap();
        let text = target(&format!(
            "basic_auth = {{ username = \"relay\", password = \"env:PW\" }}\n\
             headers = {{ X-Api-Key = \"env:API_KEY\", x-from-file = \"file:{}\", x-plain = \"plain-value\" }}",
            file.display()
        ));
        let c = parse_env(&text, &[("PW", "pw-secret"), ("API_KEY", "key-secret")]).unwrap();
        let t = &c.routes[0].targets[0];
        let h: Vec<(&str, &[u8])> = t
            .outbound
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("authorization", &b"Basic cmVsYXk6cHctc2VjcmV0"[..]),
                ("x-api-key", b"key-secret"),
                ("x-from-file", b"file-secret"),
                ("x-plain", b"plain-value"),
            ]
        );
        let debug = format!("{c:?}");
        for secret in [
            "pw-secret",
            "key-secret",
            "file-secret",
            "plain-value",
            "cmVsYXk6cHctc2VjcmV0",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("env:API_KEY"), "{debug}");

        let e = parse_env(&text, &[("PW", "pw-secret")]).unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].headers.X-Api-Key");
        assert!(e.reason.contains("API_KEY is not set"), "{e}");
        let e = parse_env(
            &text.replace("/key", "/nope"),
            &[("PW", "p"), ("API_KEY", "k")],
        )
        .unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].headers.x-from-file");
        let e = parse_env(&text, &[("PW", "p"), ("API_KEY", "line\nbreak")]).unwrap_err();
        assert!(!e.to_string().contains("break"), "{e}");
    }

    #[test]
    fn reserved_and_conflicting_headers_are_refused() {
        for name in [
            "webhook-id",
            "Webhook-Signature",
            "content-length",
            "host",
            "content-type",
            "user-agent",
            "transfer-encoding",
        ] {
            let e = parse(&target(&format!("headers = {{ {name} = \"x\" }}"))).unwrap_err();
            assert_eq!(e.key, format!("routes[0].targets[0].headers.{name}"));
            assert!(e.reason.contains("cannot be set"), "{e}");
        }
        let e = parse(&target(
            "basic_auth = { username = \"u\", password = \"p\" }\nheaders = { authorization = \"Bearer x\" }",
        ))
        .unwrap_err();
        assert!(
            e.reason.contains("basic_auth already sets authorization"),
            "{e}"
        );
        assert!(parse(&target("headers = { authorization = \"Bearer x\" }")).is_ok());
        let e = parse(&target("headers = { x-a = \"env:\" }")).unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].headers.x-a");
    }

    #[test]
    fn shaping_keys_are_checked_at_load() {
        let c = parse(&target("format = \"xml\"\nxml_root = \"order\"")).unwrap();
        assert!(
            matches!(&c.routes[0].targets[0].outbound.shape.body, Body::Xml(r) if r.as_str() == "order")
        );
        let bad = [
            ("format = \"yaml\"", "format"),
            ("xml_root = \"order\"", "xml_root"),
            ("format = \"xml\"\nxml_root = \"1x\"", "xml_root"),
            ("format = \"xml\"\ntemplate = \"{}\"", "template"),
            ("template = \"{{ payload.x \"", "template"),
            ("template = \"{{ paylaod.x }}\"", "template"),
            (
                "template = \"x\"\ntemplate_file = \"t.j2\"",
                "template_file",
            ),
            ("template_file = \"/nonexistent/t.j2\"", "template_file"),
            ("content_type = \"json\"", "content_type"),
            ("filter = { json = \"/a\" }", "filter"),
        ];
        for (extra, key) in bad {
            let e = parse(&target(extra)).unwrap_err();
            assert_eq!(e.key, format!("routes[0].targets[0].{key}"), "{extra}: {e}");
        }
        let c = parse(&target(
            "template = \"{{ payload | tojson }}\"\ncontent_type = \"application/vnd.x+json\"",
        ))
        .unwrap();
        assert!(c.routes[0].targets[0].renders_template());
    }

    #[test]
    fn secrets_come_from_the_file_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("key");
        std::fs::write(&key_file, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n").unwrap();
        let text = format!(
            "[[routes]]\nname = \"r\"\npath = \"/r\"\n[[routes.targets]]\nname = \"t\"\n\
             url = \"https://crm.example.com/\"\n\
             secret = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"env:HOOK_KEY\", \"file:{}\"]\n",
            key_file.display()
        );
        let env: HashMap<String, String> = [(
            "HOOK_KEY".to_string(),
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string(),
        )]
        .into();
        let c = Config::parse_with(&text, Path::new("test.toml"), &env).unwrap();
        let secrets = &c.routes[0].targets[0].secret.0;
        assert_eq!(secrets.len(), 3);
        assert_eq!(secrets[0], secrets[1]);
        assert_eq!(
            secrets[2],
            Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap()
        );

        let e = Config::parse_with(&text, Path::new("test.toml"), &HashMap::new()).unwrap_err();
        assert_eq!(e.key, "routes[0].targets[0].secret");
        assert!(e.reason.contains("HOOK_KEY"), "{e}");
        let bad: HashMap<String, String> = [("HOOK_KEY".to_string(), "hunter2".to_string())].into();
        let e = Config::parse_with(&text, Path::new("test.toml"), &bad).unwrap_err();
        assert!(
            e.reason.contains("env:HOOK_KEY") && !e.reason.contains("hunter2"),
            "{e}"
        );
    }

    #[test]
    fn shipped_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/hookrelay.toml");
        let c = Config::load(&path).unwrap();
        assert!(!c.routes.is_empty());
    }
}
