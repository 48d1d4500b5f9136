//! `CONNECT` tunnels in proxy mode.
//!
//! A tunnel carries opaque TLS from the LMS to a receiver, so nothing in it
//! can be stored or retried: it is not an event, only a guarded pipe.
//!
//! Invariants: a tunnel opens only to a `host:port` listed in
//! `ingest.connect_allow`, and only through the egress policy's connect (the
//! same address checks, DNS-rebinding protection and source address as
//! deliveries). At most `ingest.max_connections` tunnels are open at once;
//! each copies through fixed-size buffers and ends when either side closes or
//! the client side has been idle for `ingest.idle_timeout`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;

use serde::Deserialize;

use crate::deliver::egress::{EgressError, Policy};
use crate::ingest::route::ProxyHost;

/// An `ingest.connect_allow` entry: a host name or IP, and a port (443 when
/// left out). Host names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    pub host: String,
    pub port: u16,
}

impl ConnectTarget {
    pub fn parse(s: &str) -> Result<ConnectTarget, String> {
        let ProxyHost { host, port } = ProxyHost::parse(s)?;
        Ok(ConnectTarget {
            host,
            port: port.unwrap_or(443),
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

/// Why a tunnel was not opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("CONNECT needs host:port, got `{0}`")]
    BadTarget(String),
    #[error("CONNECT to {0} is not in ingest.connect_allow")]
    NotAllowed(String),
    #[error("too many tunnels open")]
    Busy,
    #[error("{0}")]
    Egress(#[from] EgressError),
}

/// The tunnels of one ingest service.
pub struct Tunnels {
    allow: Vec<ConnectTarget>,
    policy: Arc<Policy>,
    connect_timeout: Duration,
    slots: Arc<Semaphore>,
}

impl Tunnels {
    /// Tunnels to `allow` through `policy`, at most `max_open` at once.
    pub fn new(
        allow: Vec<ConnectTarget>,
        policy: Policy,
        connect_timeout: Duration,
        max_open: usize,
    ) -> Tunnels {
        Tunnels {
            allow,
            policy: Arc::new(policy),
            connect_timeout,
            slots: Arc::new(Semaphore::new(max_open)),
        }
    }

    /// Connects to the request's target and, once the client has its 200,
    /// pipes bytes both ways until either side is done.
    pub async fn open(&self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, TunnelError> {
        let target = req.uri().to_string();
        let authority = req
            .uri()
            .authority()
            .filter(|a| a.port_u16().is_some() && !a.host().is_empty())
            .ok_or_else(|| TunnelError::BadTarget(target.clone()))?;
        let (host, port) = (
            authority.host().to_string(),
            authority.port_u16().unwrap_or(443),
        );
        if !self.allow.iter().any(|a| a.matches(&host, port)) {
            return Err(TunnelError::NotAllowed(format!("{host}:{port}")));
        }
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| TunnelError::Busy)?;
        let mut upstream = self
            .policy
            .connect(&host, port, self.connect_timeout)
            .await?;
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let mut client = TokioIo::new(upgraded);
                    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        Ok((up, down)) => {
                            tracing::debug!(%host, port, up, down, "tunnel closed")
                        }
                        Err(e) => tracing::debug!(%host, port, error = %e, "tunnel ended"),
                    }
                }
                Err(e) => tracing::debug!(%host, port, error = %e, "CONNECT upgrade failed"),
            }
            drop(permit);
        });
        Ok(Response::new(Full::new(Bytes::new())))
    }
}
