//! The dispatcher: takes due deliveries from the store and attempts them.
//!
//! The scheduler reads the `due` index in time order. It sleeps until the
//! earliest due time or until woken (new durable work, a lane slot freed),
//! never spinning. Each target has a lane: a concurrency cap (semaphore), a
//! rate limit that deliveries wait on (never dropped), and a bound on how many
//! deliveries it holds claimed at once, so a slow target cannot pull the whole
//! queue into memory.
//!
//! Invariants: a delivery is attempted only after `Store::claim` moved it to
//! `in_flight`; every attempt is recorded by `Store::finish` with what follows
//! (succeeded, retry at a time, dead). A crash between the two leaves it in
//! flight, and the store puts it back to pending at the next start, so
//! delivery is at least once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, RateLimiter};
use http_body_util::Full;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Config, DeliveryConfig, TargetUrl, ORIGIN_TARGET};
use crate::egress::{Connector, EgressClient, EgressError, Policy, Reply};
use crate::route::target_key;
use crate::sign::{signature_header, Secret};
use crate::store::{now_ms, Attempt, Delivery, DeliveryId, Next, State, Store, StoreError};

/// How many `due` entries one scheduler pass looks at.
const SCAN_LIMIT: usize = 512;
/// A lane holds at most this many deliveries per unit of concurrency claimed
/// at once (in flight or waiting on its rate limit).
const CLAIMED_PER_SLOT: usize = 2;

/// One target's delivery lane.
struct Lane {
    key: String,
    url: TargetUrl,
    /// A proxy route's `origin` lane: each event carries its own URL.
    origin: bool,
    secrets: Vec<Secret>,
    policy: DeliveryConfig,
    client: EgressClient,
    slots: Semaphore,
    limiter: DefaultDirectRateLimiter,
    claimed: AtomicUsize,
}

impl Lane {
    fn has_room(&self) -> bool {
        self.claimed.load(Ordering::Relaxed) < self.policy.concurrency * CLAIMED_PER_SLOT
    }
}

/// Runs the scheduler until `shutdown` turns true, then gives attempts under
/// way up to `delivery.shutdown_grace` to finish.
pub struct Dispatcher {
    store: Arc<Store>,
    lanes: HashMap<String, Arc<Lane>>,
    wake: Arc<Notify>,
    grace: Duration,
}

impl Dispatcher {
    pub fn new(config: &Config, store: Arc<Store>) -> Result<Dispatcher, String> {
        let tls = crate::egress::tls_config(config.egress.ca_file.as_deref())?;
        let guard = Arc::new(Policy::new(&config.egress));
        guard.check_bind()?;
        let mut lanes = HashMap::new();
        let lane = |key: String, url: TargetUrl, origin, secrets, policy: DeliveryConfig| {
            let connector = Connector::new(tls.clone(), guard.clone(), policy.connect_timeout);
            Lane {
                key,
                url,
                origin,
                secrets,
                client: EgressClient::new(connector, policy.concurrency),
                slots: Semaphore::new(policy.concurrency),
                limiter: RateLimiter::direct(policy.rate.quota()),
                claimed: AtomicUsize::new(0),
                policy,
            }
        };
        for route in &config.routes {
            if let Some(host) = &route.host {
                let scheme = if route.upgrade_https { "https" } else { "http" };
                let port = host.port.map(|p| format!(":{p}")).unwrap_or_default();
                let url = TargetUrl::parse(&format!("{scheme}://{}{port}/", host.host))?;
                let lane = lane(
                    target_key(&route.name, ORIGIN_TARGET),
                    url,
                    true,
                    Vec::new(),
                    config.delivery.clone(),
                );
                lanes.insert(lane.key.clone(), Arc::new(lane));
            }
            for target in &route.targets {
                let lane = lane(
                    target_key(&route.name, &target.name),
                    target.url.clone(),
                    false,
                    target.secret.0.clone(),
                    config.delivery.with(target),
                );
                lanes.insert(lane.key.clone(), Arc::new(lane));
            }
        }
        Ok(Dispatcher {
            wake: store.new_work.clone(),
            store,
            lanes,
            grace: config.delivery.shutdown_grace,
        })
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        let wake = self.wake.clone();
        loop {
            while tasks.try_join_next().is_some() {}
            let next = match self.pass(&mut tasks, &shutdown) {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher cannot read the store; retrying in 1s");
                    Some(now_ms() + 1000)
                }
            };
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = sleep => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let n = tasks.len();
        if n > 0 {
            tracing::info!(attempts = n, grace = ?self.grace, "waiting for attempts under way");
        }
        if tokio::time::timeout(self.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                attempts = tasks.len(),
                "attempts still under way at the end of the grace period; they will be retried at the next start"
            );
            tasks.abort_all();
        }
    }

    /// Claims what is due and has room in its lane; returns when to look again
    /// (`None`: only when woken).
    fn pass(
        &self,
        tasks: &mut JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Option<u64>, StoreError> {
        let now = now_ms();
        let due = self.store.due(SCAN_LIMIT)?;
        let full_scan = due.len() == SCAN_LIMIT;
        let mut progressed = false;
        for (at, id) in due {
            if at > now {
                return Ok(Some(at));
            }
            let Some(delivery) = self.store.delivery(id)? else {
                // A due entry without its delivery: drop the stale index entry.
                self.store.claim(id, at)?;
                continue;
            };
            let Some(lane) = self.lanes.get(&delivery.target) else {
                if self.store.claim(id, at)?.is_some() {
                    let attempt = failed_attempt(format!(
                        "target {} is not in the configuration",
                        delivery.target
                    ));
                    self.store.finish(id, &attempt, Next::Dead)?;
                    tracing::warn!(delivery = %id, target = %delivery.target, "dead: target no longer configured");
                    progressed = true;
                }
                continue;
            };
            if !lane.has_room() {
                continue;
            }
            let Some(delivery) = self.store.claim(id, at)? else {
                continue;
            };
            lane.claimed.fetch_add(1, Ordering::Relaxed);
            progressed = true;
            let job = Job {
                lane: lane.clone(),
                store: self.store.clone(),
                wake: self.wake.clone(),
                id,
                at,
                delivery,
            };
            tasks.spawn(job.run(shutdown.clone()));
        }
        // More may be due past this scan; look again at once if this one moved.
        Ok((full_scan && progressed).then_some(now))
    }
}

fn failed_attempt(error: String) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        duration_ms: 0,
        status: None,
        error: Some(error),
        excerpt: String::new(),
    }
}

/// One claimed delivery on its way through a lane.
struct Job {
    lane: Arc<Lane>,
    store: Arc<Store>,
    wake: Arc<Notify>,
    id: DeliveryId,
    at: u64,
    delivery: Delivery,
}

impl Job {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // Wait for a slot and the rate limit; on shutdown, give the delivery
        // back untouched instead of starting it.
        let ready = async {
            let permit = self.lane.slots.acquire().await;
            self.lane.limiter.until_ready().await;
            permit
        };
        let permit = tokio::select! {
            p = ready => p,
            _ = crate::stopped(&mut shutdown) => {
                if let Err(e) = self.store.release(self.id, self.at) {
                    tracing::error!(delivery = %self.id, error = %e, "cannot release delivery; it is retried at the next start");
                }
                self.done();
                return;
            }
        };
        if let Err(e) = self.attempt().await {
            tracing::error!(delivery = %self.id, error = %e, "cannot record attempt; it is retried at the next start");
        }
        drop(permit);
        self.done();
    }

    fn done(&self) {
        self.lane.claimed.fetch_sub(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    async fn attempt(&self) -> Result<(), StoreError> {
        let lane = &*self.lane;
        let n = self.delivery.attempts + 1;
        let Some(event) = self.store.event(self.delivery.event)? else {
            let attempt = failed_attempt("the event is no longer stored".into());
            self.store.finish(self.id, &attempt, Next::Dead)?;
            return Ok(());
        };
        let event_id = event.id.to_string();
        let started = now_ms();
        let timestamp = (started / 1000) as i64;
        let uri = if lane.origin {
            match event.meta.url.as_deref().map(str::parse::<http::Uri>) {
                Some(Ok(uri)) => uri,
                _ => {
                    let attempt = failed_attempt("the event has no URL to relay to".into());
                    self.store.finish(self.id, &attempt, Next::Dead)?;
                    return Ok(());
                }
            }
        } else {
            lane.url.uri().clone()
        };
        let request = build_request(
            lane,
            uri,
            &event_id,
            timestamp,
            &event.meta.headers,
            event.body,
        );
        let result = lane.client.send(request, lane.policy.timeout).await;
        let (attempt, next) = self.outcome(n, started, result);
        let d = self.store.finish(self.id, &attempt, next)?;
        let outcome = match d.state {
            State::Succeeded => "succeeded",
            State::Dead => "dead",
            _ => "retry",
        };
        tracing::info!(
            event = %event_id,
            delivery = %self.id,
            target = %lane.key,
            attempt = n,
            status = attempt.status,
            error = attempt.error.as_deref(),
            duration_ms = attempt.duration_ms,
            outcome,
            "delivery attempt"
        );
        Ok(())
    }

    /// What an attempt's result means for this delivery.
    fn outcome(&self, n: u32, started: u64, result: Result<Reply, EgressError>) -> (Attempt, Next) {
        let policy = &self.lane.policy;
        let (attempt, retry_after) = match result {
            Ok(reply) => {
                let honoured = matches!(reply.status, 429 | 503)
                    .then_some(reply.retry_after)
                    .flatten();
                (
                    Attempt {
                        at_ms: started,
                        duration_ms: reply.duration.as_millis() as u64,
                        status: Some(reply.status),
                        error: None,
                        excerpt: reply.excerpt,
                    },
                    honoured,
                )
            }
            Err(e) => (
                Attempt {
                    at_ms: started,
                    duration_ms: now_ms().saturating_sub(started),
                    status: None,
                    error: Some(e.to_string()),
                    excerpt: String::new(),
                },
                None,
            ),
        };
        let next = if attempt.status.is_some_and(|s| policy.success.contains(s)) {
            Next::Succeeded
        } else if n >= policy.max_attempts {
            Next::Dead
        } else {
            let delay = match retry_after {
                Some(d) => d.min(policy.backoff.max),
                None => policy.backoff.jittered(n, rand::random::<f64>()),
            };
            Next::RetryAt(now_ms() + delay.as_millis() as u64)
        };
        (attempt, next)
    }
}

/// The outbound request: the original body, the kept headers, and the
/// Standard Webhooks headers.
fn build_request(
    lane: &Lane,
    uri: http::Uri,
    event_id: &str,
    timestamp: i64,
    kept: &[(String, String)],
    body: Bytes,
) -> http::Request<Full<Bytes>> {
    let mut builder = http::Request::post(uri);
    for (name, value) in kept {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder = builder
        .header("webhook-id", event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(http::header::USER_AGENT, crate::USER_AGENT);
    if let Some(sig) = signature_header(&lane.secrets, event_id, timestamp, &body) {
        builder = builder.header("webhook-signature", sig);
    }
    // Every part was validated when it was stored or loaded: the URI at
    // config load or parsed above, header names and values at ingest.
    builder.body(Full::new(body)).expect("valid request parts")
}
