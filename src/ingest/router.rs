//! The routes of a configuration, ready to match requests: by path, or in
//! proxy mode by host and path.

use crate::config::Config;
use crate::ingest::route::{PathPattern, ProxyHost, Template};

/// The routes of a configuration, ready to match requests.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

/// One route: its path, templates and kept headers.
#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Proxy routes only: the host they take requests for.
    pub host: Option<ProxyHost>,
    pub upgrade_https: bool,
    pub path: PathPattern,
    pub event: Template,
    pub dedup: Option<Template>,
    pub forward_headers: Vec<http::HeaderName>,
}

impl Route {
    /// Whether the route's own templates need the body parsed as JSON
    /// (endpoints' filters may need it too: `Catalog::needs`).
    pub fn needs_json(&self) -> bool {
        self.event.needs_json() || self.dedup.as_ref().is_some_and(Template::needs_json)
    }
}

impl Router {
    pub fn new(config: &Config) -> Router {
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.clone(),
                host: r.host.clone(),
                upgrade_https: r.upgrade_https,
                path: r.path.clone(),
                event: r.event.clone().unwrap_or_else(|| {
                    if r.path.captures("event") {
                        Template::parse("{path.event}").expect("literal template")
                    } else {
                        Template::literal(&r.name)
                    }
                }),
                dedup: r.dedup.clone(),
                forward_headers: r.forward_headers.iter().map(|h| h.0.clone()).collect(),
            })
            .collect();
        Router { routes }
    }

    /// The first route without a host whose path matches, with its captures.
    pub fn find(&self, path: &str) -> Option<(&Route, Vec<(String, String)>)> {
        self.routes
            .iter()
            .filter(|r| r.host.is_none())
            .find_map(|r| r.path.matches(path).map(|c| (r, c)))
    }

    /// Proxy mode: the first route for `host` (and `port`, if the route
    /// names one) whose path matches.
    pub fn find_proxy(
        &self,
        host: &str,
        port: u16,
        path: &str,
    ) -> Option<(&Route, Vec<(String, String)>)> {
        self.routes
            .iter()
            .filter(|r| r.host.as_ref().is_some_and(|h| h.matches(host, port)))
            .find_map(|r| r.path.matches(path).map(|c| (r, c)))
    }
}
