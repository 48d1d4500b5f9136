//! An endpoint as the admin API takes it: the same receiver a
//! `[[routes.targets]]` entry describes, in JSON, made into the same
//! [`TargetConfig`] and checked by the same code at the same strictness
//! (`TargetConfig::validate`, `outbound`).
//!
//! Invariant: nothing an API caller writes is read from the environment or
//! the disk. Values are literal: there is no `env:`/`file:` and no
//! `template_file`, so a token holder cannot make hookrelay send a file's
//! contents or a variable of its environment to a receiver.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::config::event_types::EventType;
use crate::config::targets::{
    all_events, outbound, BackoffOverride, BasicAuthConfig, Format, TargetConfig,
};
use crate::config::values::{Secrets, ValueSource};
use crate::deliver::egress::{Policy, TargetUrl};
use crate::deliver::policy::{DeliveryConfig, SuccessRanges};
use crate::deliver::shape::XmlName;
use crate::deliver::sign::Secret;
use crate::ingest::filter::Filter;
use crate::ingest::route::EventPattern;
use crate::rate::Rate;

/// The definition of an API endpoint, as the admin API takes it and the
/// store keeps it (without its secrets, which the record holds).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDef {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub url: TargetUrl,
    #[serde(default = "default_events")]
    pub events: Vec<EventPattern>,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub xml_root: Option<XmlName>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub filter: Option<Filter>,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub rate: Option<Rate>,
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `basic_auth`: the password is write-only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

/// `retry`: the delivery policy keys a config target has at its top level.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub success: Option<SuccessRanges>,
    #[serde(default)]
    pub backoff: BackoffOverride,
}

fn default_events() -> Vec<EventPattern> {
    all_events()
}

fn yes() -> bool {
    true
}

/// The routes of the running configuration, in file order, each with its
/// event catalog.
pub type RouteCatalogs = Vec<(String, Vec<EventType>)>;

/// Where a request body is checked: the rules of the file, and what the
/// running configuration says about egress and routes.
pub struct Rules<'a> {
    pub guard: &'a Policy,
    pub https_only: bool,
    pub defaults: &'a DeliveryConfig,
    pub routes: &'a [(String, Vec<EventType>)],
}

impl Rules<'_> {
    /// The catalogs an endpoint's exact event names must be in: its
    /// route's, or, without a route, every route's when each has one.
    /// `None`: any name goes.
    fn known_events(&self, route: Option<&str>) -> Option<Vec<&EventType>> {
        match route {
            Some(r) => self
                .routes
                .iter()
                .find(|(name, c)| name == r && !c.is_empty())
                .map(|(_, c)| c.iter().collect()),
            None => {
                let all_have =
                    !self.routes.is_empty() && self.routes.iter().all(|(_, c)| !c.is_empty());
                all_have.then(|| self.routes.iter().flat_map(|(_, c)| c).collect())
            }
        }
    }
}

/// Why a body is not an endpoint: the field (as the API names it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

impl EndpointDef {
    /// Parses a body (POST, or a stored definition with a merge patch
    /// applied); errors name the field.
    pub fn from_json(v: serde_json::Value) -> Result<EndpointDef, Invalid> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." || path.is_empty() {
                "body".to_string()
            } else {
                path
            };
            Invalid {
                field,
                reason: e.into_inner().to_string(),
            }
        })
    }

    /// The target this definition describes, signed with `secrets`,
    /// checked as a config target is, with its shape and headers built.
    pub fn compile(&self, secrets: Vec<Secret>, rules: &Rules) -> Result<TargetConfig, Invalid> {
        if let Some(route) = &self.route {
            if !rules.routes.iter().any(|(r, _)| r == route) {
                return Err(Invalid {
                    field: "route".into(),
                    reason: format!("no route is named `{route}`"),
                });
            }
        }
        let mut target = TargetConfig {
            id: None,
            name: self.name.clone(),
            description: self.description.clone(),
            enabled: self.enabled,
            metadata: self.metadata.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            secret_sources: Default::default(),
            secret: Secrets(secrets),
            timeout: self.retry.timeout,
            connect_timeout: None,
            max_attempts: self.retry.max_attempts,
            backoff: self.retry.backoff,
            success: self.retry.success.clone(),
            concurrency: self.concurrency,
            rate: self.rate,
            circuit: None,
            filter: self.filter.clone(),
            format: self.format,
            xml_root: self.xml_root.clone(),
            template: self.template.clone(),
            template_file: None,
            content_type: self.content_type.clone(),
            basic_auth: self.basic_auth.as_ref().map(|a| BasicAuthConfig {
                username: a.username.clone(),
                password: ValueSource::Literal(a.password.clone()),
            }),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), ValueSource::Literal(v.clone())))
                .collect(),
            outbound: Default::default(),
        };
        let api = |(k, reason): (String, String)| Invalid {
            field: api_field(&k),
            reason,
        };
        target
            .validate("", rules.guard, rules.https_only, rules.defaults)
            .map_err(api)?;
        // Literal values only: neither the environment nor the disk is read.
        target.outbound = outbound(
            &target,
            "",
            Path::new(""),
            &HashMap::<String, String>::new(),
        )
        .map_err(api)?;
        Ok(target)
    }

    /// Refuses exact event names no catalog of the endpoint's route
    /// declares (patterns go through: they may match types to come). Asked
    /// of a new or changed definition only: a stored endpoint keeps working
    /// when its route's catalog later drops a type.
    pub fn check_catalog(&self, rules: &Rules) -> Result<(), Invalid> {
        let Some(known) = rules.known_events(self.route.as_deref()) else {
            return Ok(());
        };
        for (i, e) in self.events.iter().enumerate() {
            let EventPattern::Exact(name) = e else {
                continue;
            };
            if !known.iter().any(|k| &k.name == name) {
                let mut names: Vec<&str> = known.iter().map(|k| k.name.as_str()).collect();
                names.dedup();
                let whose = self
                    .route
                    .as_ref()
                    .map_or("any route".to_string(), |r| format!("route `{r}`"));
                return Err(Invalid {
                    field: format!("events[{i}]"),
                    reason: format!(
                        "`{name}` is not an event type of {whose}; known: {}",
                        names.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }
}

/// The API's name for a key the shared checks report: the policy keys sit
/// under `retry` in a body.
fn api_field(key: &str) -> String {
    let key = key.trim_start_matches('.');
    for k in ["timeout", "max_attempts", "success", "backoff"] {
        if key == k || key.starts_with(&format!("{k}.")) {
            return format!("retry.{key}");
        }
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::egress::EgressConfig;
    use serde_json::json;

    fn rules_with<T>(f: impl FnOnce(&Rules) -> T) -> T {
        let guard = Policy::new(&EgressConfig::default());
        let defaults = DeliveryConfig::default();
        let routes = vec![("heights".to_string(), Vec::new())];
        f(&Rules {
            guard: &guard,
            https_only: false,
            defaults: &defaults,
            routes: &routes,
        })
    }

    fn compile(v: serde_json::Value) -> Result<TargetConfig, Invalid> {
        let def = EndpointDef::from_json(v)?;
        rules_with(|r| def.compile(Vec::new(), r))
    }

    #[test]
    fn a_full_body_compiles_to_the_target_a_config_would_give() {
        let t = compile(json!({
            "name": "Nouvelle vente → CRM",
            "url": "https://crm.example.com/hook",
            "events": ["purchase.completed"],
            "format": "xml",
            "xml_root": "sale",
            "basic_auth": {"username": "lms", "password": "pw"},
            "headers": {"x-api-key": "k"},
            "retry": {"max_attempts": 3, "timeout": "5s", "backoff": {"initial": "1s"}},
            "rate": {"per_second": 5, "burst": 10},
            "concurrency": 2,
            "metadata": {"team": "sales"}
        }))
        .unwrap();
        assert_eq!(t.name, "Nouvelle vente → CRM");
        assert_eq!(t.outbound.headers.len(), 2);
        let p = t.policy(&DeliveryConfig::default());
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.timeout, Duration::from_secs(5));
        assert_eq!(p.concurrency, 2);
    }

    #[test]
    fn errors_name_the_field_as_the_api_does() {
        let field = |v| compile(v).unwrap_err().field;
        let base = |extra: serde_json::Value| {
            let mut v = json!({"name": "n", "url": "https://x.example/"});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            v
        };
        assert_eq!(field(base(json!({"name": "a\u{7}b"}))), "name");
        assert_eq!(field(base(json!({"name": ""}))), "name");
        assert_eq!(
            field(base(json!({"events": ["new\u{1b}[31m"]}))),
            "events[0]"
        );
        assert_eq!(
            field(base(json!({"url": "http://169.254.169.254/latest"}))),
            "url"
        );
        assert_eq!(
            field(base(json!({"retry": {"max_attempts": 0}}))),
            "retry.max_attempts"
        );
        assert_eq!(field(base(json!({"route": "nope"}))), "route");
        assert_eq!(field(base(json!({"colour": "red"}))), "colour");
        assert_eq!(field(base(json!({"format": "template"}))), "format");
    }

    #[test]
    fn values_are_never_read_from_the_environment_or_disk() {
        let t = compile(json!({
            "name": "n", "url": "https://x.example/",
            "headers": {"x-leak": "file:/etc/hostname"}
        }))
        .unwrap();
        assert_eq!(t.outbound.headers[0].1.as_bytes(), b"file:/etc/hostname");
    }
}
