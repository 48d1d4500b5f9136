//! A minimal HTTP/1.1 server: the plain ceiling (a) in its own process, and
//! the receivers hookrelay delivers to (one port or several, answering 200
//! or, switchably, 503).

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::load::{seq_of, stamp};
use crate::{CHILD_LIFETIME, MAX_ACCEPTS, PACED, RECEIVER_MAX_ACCEPTS};

/// Called with each request's body; returns the status to answer with.
type OnRequest = Arc<dyn Fn(&[u8]) -> StatusCode + Send + Sync>;

/// Connections a listener holds open now, and accepts that failed (an
/// out-of-file-descriptors error on this side, say).
#[derive(Default)]
struct Conns {
    open: AtomicU64,
    accept_errors: AtomicU64,
}

/// Accepts up to `max_accepts` times and answers every request with the
/// status `on` returns and `reply`, after reading the whole body and passing
/// it to `on`. Connections are kept alive and never closed for being idle
/// (no header-read timer is set). A failed accept is counted and retried
/// after a pause, so a receiver out of file descriptors recovers.
async fn serve(
    listener: TcpListener,
    reply: Bytes,
    on: OnRequest,
    max_accepts: usize,
    conns: Arc<Conns>,
) {
    for _ in 0..max_accepts {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                conns.accept_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (reply, on) = (reply.clone(), on.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (reply, on) = (reply.clone(), on.clone());
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let status = on(&body.unwrap_or_default());
                let mut resp = Response::new(Full::new(reply));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        conns.open.fetch_add(1, Ordering::Relaxed);
        let conns = conns.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            conns.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// The ceiling's process: serves until the parent closes our stdin (or the
/// lifetime cap), printing the bound port first.
pub(crate) fn plain_server_main() -> ! {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("bound").port());
        std::io::stdout().flush().expect("stdout");
        // Same shape and size as hookrelay's 202 body.
        let reply =
            Bytes::from_static(br#"{"id":"evt_01JD0000000000000000000000","deliveries":1}"#);
        tokio::spawn(serve(
            listener,
            reply,
            Arc::new(|_| StatusCode::ACCEPTED),
            MAX_ACCEPTS,
            Arc::default(),
        ));
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        });
        let _ = tokio::time::timeout(CHILD_LIFETIME, stdin_closed).await;
    });
    std::process::exit(0)
}

/// What every port of one receiver shares.
struct Shared {
    /// The status answered now (200, or 503 while "down").
    status: AtomicU16,
    /// Requests answered 2xx, and others.
    total: Arc<AtomicU64>,
    refused_total: AtomicU64,
    duplicates: Arc<AtomicU64>,
    /// Per sequence number: first 2xx arrival (a stamp), 0 if none yet.
    arrived: Arc<Vec<AtomicU64>>,
    /// Per sequence number: 1 once a request for it was answered non-2xx.
    refused: Vec<AtomicU64>,
    /// Over all its ports.
    conns: Arc<Conns>,
}

/// A receiver hookrelay delivers to: answers its current status (200 unless
/// set otherwise), counts every request, and stamps the first 2xx arrival of
/// each sequence number below `slots` (a later one is a duplicate).
pub(crate) struct Receiver {
    /// The first port's address; `addrs` has them all.
    pub(crate) addr: SocketAddr,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) duplicates: Arc<AtomicU64>,
    pub(crate) arrived: Arc<Vec<AtomicU64>>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// One port, 200, stamps for (b) and the 1000/s run of (c).
    pub(crate) async fn start() -> Receiver {
        Receiver::start_on(1, PACED.events(), StatusCode::OK).await
    }

    /// `ports` loopback ports sharing one set of counters, stamps for
    /// sequence numbers below `slots`, answering `status` until changed.
    pub(crate) async fn start_on(ports: usize, slots: usize, status: StatusCode) -> Receiver {
        let mut listeners = Vec::new();
        for _ in 0..ports {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("bound"))
            .collect();
        let slots_of = |n| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        let shared = Arc::new(Shared {
            status: AtomicU16::new(status.as_u16()),
            total: Arc::new(AtomicU64::new(0)),
            refused_total: AtomicU64::new(0),
            duplicates: Arc::new(AtomicU64::new(0)),
            arrived: Arc::new(slots_of(slots)),
            refused: slots_of(slots),
            conns: Arc::default(),
        });
        let s = shared.clone();
        let on: OnRequest = Arc::new(move |body| {
            let now = stamp(Instant::now());
            let status =
                StatusCode::from_u16(s.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
            let seq = seq_of(body);
            if !status.is_success() {
                s.refused_total.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = seq.and_then(|n| s.refused.get(n)) {
                    slot.store(1, Ordering::Relaxed);
                }
                return status;
            }
            s.total.fetch_add(1, Ordering::Relaxed);
            if let Some(slot) = seq.and_then(|n| s.arrived.get(n)) {
                if slot
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    s.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            status
        });
        let tasks = listeners
            .into_iter()
            .map(|l| {
                tokio::spawn(serve(
                    l,
                    Bytes::new(),
                    on.clone(),
                    RECEIVER_MAX_ACCEPTS,
                    shared.conns.clone(),
                ))
            })
            .collect();
        Receiver {
            addr: addrs[0],
            addrs,
            duplicates: shared.duplicates.clone(),
            arrived: shared.arrived.clone(),
            shared,
            tasks,
        }
    }

    /// Requests answered 2xx (deliveries), duplicates included.
    pub(crate) fn total(&self) -> u64 {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// The counter behind `total`, for a sampler to read.
    pub(crate) fn total_counter(&self) -> Arc<AtomicU64> {
        self.shared.total.clone()
    }

    /// Requests answered with a status other than 2xx.
    pub(crate) fn refused_total(&self) -> u64 {
        self.shared.refused_total.load(Ordering::Relaxed)
    }

    /// Answer `status` from now on.
    pub(crate) fn set_status(&self, status: StatusCode) {
        self.shared.status.store(status.as_u16(), Ordering::Relaxed);
    }

    /// Distinct sequence numbers that arrived (2xx).
    pub(crate) fn unique_arrivals(&self) -> usize {
        self.shared
            .arrived
            .iter()
            .filter(|a| a.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// Distinct sequence numbers answered non-2xx that never arrived.
    pub(crate) fn refused_only(&self) -> usize {
        self.shared
            .refused
            .iter()
            .zip(self.shared.arrived.iter())
            .filter(|(r, a)| r.load(Ordering::Relaxed) > 0 && a.load(Ordering::Relaxed) == 0)
            .count()
    }

    /// Connections open to this receiver now, over all its ports.
    pub(crate) fn open_connections(&self) -> u64 {
        self.shared.conns.open.load(Ordering::Relaxed)
    }

    /// Accepts that failed on this side (e.g. out of file descriptors).
    pub(crate) fn accept_errors(&self) -> u64 {
        self.shared.conns.accept_errors.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
