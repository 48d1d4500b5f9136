//! The ingest request path: raw bytes from a client, through the real HTTP
//! server settings of the listener (limits, timeouts, HTTP/1 and h2c) and
//! the real ingest service with a real store. Whatever arrives, the relay
//! answers or closes; it never panics and never hangs.
#![no_main]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hookrelay::catalog::Catalog;
use hookrelay::config::Config;
use hookrelay::ingest::Ingest;
use hookrelay::server::serve::{http_builder, serve_connection, Limits};
use hookrelay::telemetry::Metrics;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct World {
    rt: tokio::runtime::Runtime,
    ingest: Arc<Ingest>,
    limits: Limits,
    _dir: tempfile::TempDir,
}

const CONFIG: &str = r#"
ingest.max_body_bytes = 4096
ingest.header_read_timeout = "200ms"
ingest.body_read_timeout = "200ms"
ingest.idle_timeout = "200ms"
ingest.proxy = true
ingest.rate = { per_second = 1000000, burst = 1000000 }

[[routes]]
name = "heights"
path = "/heights/{event}"
dedup = "{header.idempotency-key}"

[[routes]]
name = "braincert"
path = "/braincert"
event = "{json./resource}.{json./action}"

[[routes]]
name = "crm"
host = "crm.example.com"
path = "/hook/{event}"
"#;

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = format!(
            "store.path = {:?}\n{CONFIG}",
            dir.path().join("store").display().to_string()
        );
        let config = Config::parse(&text, Path::new("fuzz.toml")).expect("fuzz config");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (store, catalog) = rt.block_on(async {
            let store = hookrelay::store::open(&config.store).expect("store");
            let catalog = Catalog::new(&config, store.clone()).await.expect("catalog");
            (store, catalog)
        });
        let limits = Limits {
            max_connections: 1,
            ..config.ingest.limits(Duration::from_millis(100))
        };
        let metrics = Metrics::new(&*store);
        let ingest = Arc::new(Ingest::new(&config, catalog, store, metrics));
        World {
            rt,
            ingest,
            limits,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    w.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let ingest = w.ingest.clone();
        let handler = move |req, peer| ingest.clone().handle(req, peer);
        let builder = http_builder(&w.limits);
        let peer: SocketAddr = "127.0.0.1:4000".parse().expect("literal");
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let conn =
            tokio::spawn(
                async move { serve_connection(server, peer, handler, &builder, stop).await },
            );
        let io = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let out = tokio::time::timeout(Duration::from_secs(5), io)
            .await
            .expect("the relay answered or closed in time");
        if out.starts_with(b"HTTP/1.1 5") && !out.starts_with(b"HTTP/1.1 503") {
            panic!("server error: {:?}", String::from_utf8_lossy(&out));
        }
        tokio::time::timeout(Duration::from_secs(5), conn)
            .await
            .expect("the connection task ended")
            .expect("the connection task did not panic");
    });
});
