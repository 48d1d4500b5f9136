//! The sections of the file for the listeners (`[ingest]`, `[admin]`):
//! their services sit above this module, so their settings are kept here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::tunnel::ConnectTarget;
use crate::rate::Rate;
use crate::server::serve::Limits;
use crate::server::tls::TlsFiles;

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
            rate: Rate::of(500, 1000),
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
    /// Most endpoints the API may make (config targets not counted); over
    /// it, creating one is a 409.
    pub max_endpoints: usize,
    /// Most endpoints one subscriber token may make.
    pub max_endpoints_per_token: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec!["127.0.0.1:8081".parse().expect("literal address")],
            allow: loopback_nets(),
            tokens_file: PathBuf::from("admin.tokens"),
            tls: None,
            max_endpoints: 10_000,
            max_endpoints_per_token: 100,
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

impl IngestConfig {
    /// The connection limits of the listeners (the admin listener shares
    /// ingest's), with `grace` for connections open at shutdown.
    pub fn limits(&self, grace: Duration) -> Limits {
        Limits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            idle_timeout: self.idle_timeout,
            shutdown_grace: grace,
        }
    }
}

fn loopback_nets() -> Vec<ipnet::IpNet> {
    vec![
        "127.0.0.1/32".parse().expect("literal network"),
        "::1/128".parse().expect("literal network"),
    ]
}
