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
//!
//! The file's layout: [`sections`] (`[ingest]`, `[admin]`), [`targets`]
//! (`[[routes]]` and their targets), [`values`] (`env:`/`file:` values and
//! secrets). The other sections are settings types of the modules they
//! configure: `store::StoreConfig`, `deliver::policy::DeliveryConfig`,
//! `deliver::egress::EgressConfig`, `telemetry::log::LogConfig`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::deliver::egress::{EgressConfig, Policy};
use crate::deliver::policy::DeliveryConfig;
use crate::server::serve::MIN_HEADER_BYTES;
use crate::store::{Backend, StoreConfig};
use crate::telemetry::log::LogConfig;

pub mod endpoint;
pub mod event_types;
pub mod sections;
pub mod targets;
#[cfg(test)]
mod tests;
pub mod values;

pub use sections::{AdminConfig, IngestConfig};
pub use targets::{BasicAuthConfig, Format, RouteConfig, TargetConfig, ORIGIN_TARGET};
pub use values::{Environment, ProcessEnv, Secrets, ValueSource};

/// How much longer than the longest delivery timeout a PostgreSQL claim's
/// lease must be.
const LEASE_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

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
            // toml's own Display quotes the source line, which may hold a
            // secret: its message and the position are enough.
            let reason = match inner.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let written = text.get(span.clone()).unwrap_or_default();
                    let (line, column) = position(text, start);
                    format!(
                        "{} (line {line}, column {column})",
                        without_value(inner.message().trim(), written, last_key(&key))
                    )
                }
                None => without_value(inner.message().trim(), "", ""),
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
        if self.store.backend == Backend::Postgres {
            let key = "store.postgres.url";
            let pg = &mut self.store.postgres;
            let source = ValueSource::parse(&pg.url).map_err(|r| ConfigError::new(path, key, r))?;
            pg.url = values::resolve_value(&source, &base, env)
                .map_err(|r| ConfigError::new(path, key, r))?;
            if let Err(e) = pg.url.parse::<tokio_postgres::Config>() {
                // Its text may hold a password: say what is wrong, not what it is.
                return Err(ConfigError::new(
                    path,
                    key,
                    format!("not a PostgreSQL connection URL or key=value string: {e}"),
                ));
            }
        }
        for (i, route) in self.routes.iter_mut().enumerate() {
            let at = format!("routes[{i}]");
            route.catalog = match &route.event_types_file {
                Some(file) => {
                    event_types::load_file(&base.join(file), &format!("{at}.event_types_file"))
                }
                None => event_types::resolve(&route.event_types, &format!("{at}.event_types")),
            }
            .map_err(|(k, r)| ConfigError::new(path, k, r))?;
            for (j, target) in route.targets.iter_mut().enumerate() {
                let at = format!("routes[{i}].targets[{j}]");
                target.outbound = targets::outbound(target, &at, &base, env)
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
                if let Err(e) = crate::server::tls::server_config(tls) {
                    return err(key, &e.to_string());
                }
            }
        }
        let e = &self.egress;
        let pool = e.pool();
        if pool.max_connections == 0 || pool.max_connections > MAX_EGRESS_CONNECTIONS {
            return err(
                "egress.max_connections",
                &format!("must be between 1 and {MAX_EGRESS_CONNECTIONS}"),
            );
        }
        if pool.max_connections_per_origin == 0 {
            return err("egress.max_connections_per_origin", "must be above 0");
        }
        if pool.idle_timeout.is_zero() {
            return err("egress.idle_timeout", "must be above 0");
        }
        let policy = Policy::new(e);
        for (i, c) in self.ingest.connect_allow.iter().enumerate() {
            if let Some(reason) = policy.refuses_literal(&c.host) {
                return err(&format!("ingest.connect_allow[{i}]"), &reason);
            }
        }
        if let Some(ca) = &e.ca_file {
            if let Err(err) = crate::deliver::egress::load_ca_file(ca) {
                return Err(ConfigError::new(path, "egress.ca_file", err.to_string()));
            }
        }
        self.delivery
            .validate("delivery")
            .map_err(|(k, r)| ConfigError::new(path, k, r))?;
        if self.store.backend == Backend::Postgres {
            let pg = &self.store.postgres;
            pg.check()
                .map_err(|(k, r)| ConfigError::new(path, format!("store.postgres.{k}"), r))?;
            if let Some(ca) = &pg.ca_file {
                crate::roots::load_ca_file(ca)
                    .map_err(|r| ConfigError::new(path, "store.postgres.ca_file", r))?;
            }
            // A lease must outlast an attempt (renewals keep it while the
            // database answers; this is the margin when it does not).
            let longest = self
                .routes
                .iter()
                .flat_map(|r| &r.targets)
                .map(|t| t.policy(&self.delivery).timeout)
                .chain([self.delivery.timeout])
                .max()
                .unwrap_or_default();
            if pg.lease <= longest + LEASE_MARGIN {
                return err(
                    "store.postgres.lease",
                    &format!(
                        "must be longer than the longest delivery timeout ({}) plus {}",
                        humantime::format_duration(longest),
                        humantime::format_duration(LEASE_MARGIN)
                    ),
                );
            }
        }

        let mut route_names = HashSet::new();
        let mut target_ids = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !targets::valid_id(&route.name) {
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
                target
                    .validate(&at, &policy, e.https_only, &self.delivery)
                    .map_err(|(k, r)| ConfigError::new(path, k, r))?;
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
                if let Some(id) = &target.id {
                    if !target_ids.insert(id.as_str()) {
                        return err(&format!("{at}.id"), "another target has this id");
                    }
                }
            }
            if !route.event_types.is_empty() && route.event_types_file.is_some() {
                return err(
                    &format!("{at}.event_types_file"),
                    "declare event types inline (event_types) or in a file, not both",
                );
            }
        }
        Ok(())
    }
}

/// The 1-based line and column (in characters) of byte `at` of `text`.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A parse error's message with the value it was about left out, so no
/// error prints what a key holds (it may be a secret). serde words type
/// errors `invalid type: integer `5`, expected a string`: the kind stays
/// (`integer`), the value goes. Any other quoted text (in `` ` `` or `"`)
/// that is part of what was `written` at the error's place is replaced
/// by `(the value)`, unless it is the `key`'s own name (`unknown field`).
fn without_value(message: &str, written: &str, key: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some(cut) = rest.rfind(", expected ") {
                let (found, expected) = rest.split_at(cut);
                let kind = found.split([' ', '`', '"']).next().unwrap_or("");
                return format!("{prefix}{kind}{expected}");
            }
        }
    }
    let mut out = String::new();
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..open + 1];
        let Some(len) = rest[open + 1..].find(quote) else {
            break;
        };
        let quoted = &rest[open + 1..open + 1 + len];
        out.push_str(&rest[..open]);
        if !quoted.is_empty() && quoted != key && written.contains(quoted) {
            out.push_str("(the value)");
        } else {
            out.push_str(&rest[open..open + 2 + len]);
        }
        rest = &rest[open + 2 + len..];
    }
    out.push_str(rest);
    out
}

/// The last name of a key path (`store.paht` → `paht`).
fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The signing secret every example in config/ and packaging/ ships with:
/// anyone can read it, so a relay that signs with it proves nothing.
pub const EXAMPLE_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The text the examples write where a real credential belongs.
pub const PLACEHOLDER: &str = "change-me";

impl Config {
    /// Values still left as the examples have them: the shipped example
    /// secret, or a header or password that reads `change-me`. Each is
    /// `key: what is wrong`, naming the key, never the value.
    pub fn warnings(&self) -> Vec<String> {
        let example = crate::deliver::sign::Secret::parse(EXAMPLE_SECRET)
            .expect("the example secret is a valid one");
        let placeholder =
            |v: &ValueSource| matches!(v, ValueSource::Literal(t) if t.contains(PLACEHOLDER));
        let mut out = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            for (j, t) in route.targets.iter().enumerate() {
                let at = format!("routes[{i}].targets[{j}]");
                if t.secret.0.contains(&example) {
                    out.push(format!(
                        "{at}.secret: the example secret shipped with hookrelay; \
                         make one with `openssl rand -base64 32` (prefix it with whsec_)"
                    ));
                }
                for (name, value) in &t.headers {
                    if placeholder(value) {
                        out.push(format!(
                            "{at}.headers.{name}: still the placeholder `{PLACEHOLDER}`"
                        ));
                    }
                }
                if let Some(auth) = &t.basic_auth {
                    if placeholder(&auth.password) {
                        out.push(format!(
                            "{at}.basic_auth.password: still the placeholder `{PLACEHOLDER}`"
                        ));
                    }
                }
            }
        }
        out
    }
}

/// The largest `egress.max_connections`.
const MAX_EGRESS_CONNECTIONS: usize = 1 << 20;
/// The largest `ingest.max_connections`.
pub const MAX_CONNECTIONS: usize = 1 << 20;
