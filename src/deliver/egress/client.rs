//! The egress client: a hyper client over hookrelay's own connector, which
//! resolves and connects through the [`Policy`] (with a connect timeout),
//! then speaks TLS with rustls for https. Redirects are never followed (a
//! 3xx is just a status). A reply's excerpt never repeats a credential the
//! request carried ([`Redactor`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::deliver::egress::guard::Policy;
use crate::deliver::egress::pool::{origin_of, Budget, Budgeted, ConnHandle, RequestSlot};
use crate::deliver::egress::redact::Redactor;
use crate::deliver::egress::{EgressError, EXCERPT_BYTES, MAX_RESPONSE_BYTES};

/// Resolves and connects within the [`Budget`]; adds TLS for https.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    policy: Arc<Policy>,
    budget: Arc<Budget>,
    connect_timeout: Duration,
}

impl Connector {
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        policy: Arc<Policy>,
        budget: Arc<Budget>,
        connect_timeout: Duration,
    ) -> Connector {
        Connector {
            tls: TlsConnector::from(tls),
            policy,
            budget,
            connect_timeout,
        }
    }

    async fn connect(self, uri: http::Uri) -> Result<TokioIo<EgressStream>, EgressError> {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        // The permit first: no socket is opened past the budget.
        let (permit, conn) = self.budget.connection().await?;
        let tcp = self
            .policy
            .connect(&host, port, self.connect_timeout)
            .await?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(TokioIo::new(Budgeted::new(Io::Plain(tcp), permit, conn)));
        }
        let name = ServerName::try_from(bare.clone()).map_err(|e| EgressError::Tls {
            host: host.clone(),
            reason: e.to_string(),
        })?;
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| EgressError::Tls {
                host: host.clone(),
                reason: format!("no handshake within {:?}", self.connect_timeout),
            })?
            .map_err(|e| EgressError::Tls {
                host: host.clone(),
                reason: e.to_string(),
            })?;
        Ok(TokioIo::new(Budgeted::new(
            Io::Tls(Box::new(tls)),
            permit,
            conn,
        )))
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<EgressStream>;
    type Error = EgressError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// A connection to a receiver, plain or TLS, with its place in the budget.
pub type EgressStream = Budgeted<Io>;

/// The socket under a connection.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for EgressStream {
    fn connected(&self) -> Connected {
        // The handle reaches each response, which marks the connection
        // idle once it has been read.
        Connected::new().extra(self.handle())
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

// === impl EgressClient ===

/// A `Retry-After` value (RFC 9110 §10.2.3): a number of seconds, or an
/// HTTP date, which is taken as the time from `now` until then (zero if it
/// has passed). Anything else is no `Retry-After`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What a receiver answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `Retry-After`, in seconds or as a date (then: the time until it).
    pub retry_after: Option<Duration>,
    /// The start of the body, with the request's credentials as `***`.
    pub excerpt: String,
    pub duration: Duration,
}

/// A client over the shared pool of one connect timeout. Cloning is cheap.
#[derive(Clone)]
pub struct EgressClient {
    client: Client<Connector, Full<Bytes>>,
    budget: Arc<Budget>,
}

impl EgressClient {
    /// A client whose idle connections close after `idle_timeout`, keeping
    /// at most the budget's per-origin share idle to one origin.
    pub fn new(connector: Connector, budget: Arc<Budget>) -> EgressClient {
        let settings = budget.settings();
        let client = Client::builder(TokioExecutor::new())
            // Without a timer the pool never closes idle connections.
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(settings.idle_timeout)
            .pool_max_idle_per_host(settings.max_connections_per_origin)
            .build(connector);
        EgressClient { client, budget }
    }

    /// Waits for a request slot to `uri`'s origin (and one overall).
    pub async fn slot(&self, uri: &http::Uri) -> Result<RequestSlot, EgressError> {
        self.budget.request_slot(&origin_of(uri)).await
    }

    /// Sends `req` in `slot` (or one waited for now, if none was taken for
    /// its origin) and reads the reply, all within `timeout`, which starts
    /// once the slot is taken: a full pool delays an attempt, it does not
    /// fail it.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        slot: Option<RequestSlot>,
    ) -> Result<Reply, EgressError> {
        let _slot = match slot {
            Some(s) => s,
            None => self.slot(req.uri()).await?,
        };
        let started = Instant::now();
        let redactor = Redactor::of(req.headers());
        // Read past the excerpt by the longest credential, so one that
        // starts inside it is seen whole and replaced.
        let keep = EXCERPT_BYTES + redactor.margin();
        let work = async {
            let resp = self.client.request(req).await.map_err(describe)?;
            let conn = resp.extensions().get::<ConnHandle>().cloned();
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let mut body = resp.into_body();
            let mut kept = Vec::new();
            let mut read = 0usize;
            while read <= MAX_RESPONSE_BYTES {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            read += data.len();
                            let room = keep.saturating_sub(kept.len());
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    // A receiver that dies half way through its answer has
                    // not answered: the attempt failed, whatever the status.
                    Some(Err(e)) => {
                        return Err(EgressError::Http(format!(
                            "the response was cut short after {read} bytes of body: {e}"
                        )))
                    }
                    None => {
                        // Read to the end: the connection may carry another.
                        if let Some(conn) = &conn {
                            conn.0.idle(self.budget.tick());
                        }
                        break;
                    }
                }
            }
            Ok(Reply {
                status,
                retry_after,
                excerpt: redactor.excerpt(&kept, EXCERPT_BYTES),
                duration: started.elapsed(),
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| EgressError::Timeout(timeout))?
    }
}

/// The most specific message in a client error's chain.
fn describe(e: hyper_util::client::legacy::Error) -> EgressError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(egress) = s.downcast_ref::<EgressError>() {
            return egress.clone();
        }
        source = s.source();
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    EgressError::Http(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 16:00:00 GMT").unwrap();
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 16:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        // A date already past: retry now.
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 15:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
