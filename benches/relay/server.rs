//! A minimal HTTP/1.1 server: the plain ceiling (a) in its own process, and
//! the receiver hookrelay delivers to.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::load::{seq_of, stamp};
use crate::{CHILD_LIFETIME, MAX_ACCEPTS, PACED_EVENTS};

type OnRequest = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Accepts up to `MAX_ACCEPTS` connections and answers every request with
/// `status` and `reply` after reading the whole body and passing it to `on`.
async fn serve(listener: TcpListener, status: StatusCode, reply: Bytes, on: OnRequest) {
    for _ in 0..MAX_ACCEPTS {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let (reply, on) = (reply.clone(), on.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (reply, on) = (reply.clone(), on.clone());
            async move {
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                on(&body.unwrap_or_default());
                let mut resp = Response::new(Full::new(reply));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
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
            StatusCode::ACCEPTED,
            reply,
            Arc::new(|_| {}),
        ));
        let stdin_closed = tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        });
        let _ = tokio::time::timeout(CHILD_LIFETIME, stdin_closed).await;
    });
    std::process::exit(0)
}

/// The receiver hookrelay delivers to: answers 200, counts every delivery,
/// and stamps the first arrival of each sequence number below `PACED_EVENTS`.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    total: Arc<AtomicU64>,
    pub(crate) duplicates: Arc<AtomicU64>,
    pub(crate) arrived: Arc<Vec<AtomicU64>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let total = Arc::new(AtomicU64::new(0));
        let duplicates = Arc::new(AtomicU64::new(0));
        let arrived: Arc<Vec<AtomicU64>> =
            Arc::new((0..PACED_EVENTS).map(|_| AtomicU64::new(0)).collect());
        let (t, d, a) = (total.clone(), duplicates.clone(), arrived.clone());
        let on: OnRequest = Arc::new(move |body| {
            let now = stamp(Instant::now());
            t.fetch_add(1, Ordering::Relaxed);
            if let Some(slot) = seq_of(body).and_then(|s| a.get(s)) {
                if slot
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let task = tokio::spawn(serve(listener, StatusCode::OK, Bytes::new(), on));
        Receiver {
            addr,
            total,
            duplicates,
            arrived,
            task,
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
