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

use crate::config::{Config, DeliveryConfig, Outbound, TargetUrl};
use crate::egress::{Connector, EgressClient, EgressError, Reply};
use crate::route::target_key;
use crate::shape::Shaped;
use crate::sign::{signature_header, Secret};
use crate::store::{
    now_ms, Attempt, Delivery, DeliveryId, EventMeta, Next, State, Store, StoreError,
};

/// How many `due` entries one scheduler pass looks at.
const SCAN_LIMIT: usize = 512;
/// A lane holds at most this many deliveries per unit of concurrency claimed
/// at once (in flight or waiting on its rate limit).
const CLAIMED_PER_SLOT: usize = 2;

/// One target's delivery lane.
struct Lane {
    key: String,
    url: TargetUrl,
    secrets: Vec<Secret>,
    outbound: Outbound,
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
        let mut lanes = HashMap::new();
        for route in &config.routes {
            for target in &route.targets {
                let policy = config.delivery.with(target);
                let connector = Connector::new(tls.clone(), policy.connect_timeout);
                let lane = Lane {
                    key: target_key(&route.name, &target.name),
                    url: target.url.clone(),
                    secrets: target.secret.0.clone(),
                    outbound: target.outbound.clone(),
                    client: EgressClient::new(connector, policy.concurrency),
                    slots: Semaphore::new(policy.concurrency),
                    limiter: RateLimiter::direct(policy.rate.quota()),
                    claimed: AtomicUsize::new(0),
                    policy,
                };
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
        let shaped = match lane.outbound.shape.apply(&event) {
            Ok(shaped) => shaped,
            Err(e) => {
                // Shaping is deterministic: another attempt would fail the same way.
                let next = if e.is_retryable() && n < lane.policy.max_attempts {
                    Next::RetryAt(now_ms() + lane.policy.backoff.delay(n).as_millis() as u64)
                } else {
                    Next::Dead
                };
                let attempt = failed_attempt(e.to_string());
                self.store.finish(self.id, &attempt, next)?;
                tracing::warn!(
                    event = %event_id,
                    delivery = %self.id,
                    target = %lane.key,
                    attempt = n,
                    error = %e,
                    "delivery cannot be shaped"
                );
                return Ok(());
            }
        };
        let started = now_ms();
        let timestamp = (started / 1000) as i64;
        let request = build_request(lane, &event_id, timestamp, &event.meta, shaped);
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

/// The outbound request: the shaped body, the kept headers, the target's
/// own headers, and the Standard Webhooks headers, signed over the bytes sent.
fn build_request(
    lane: &Lane,
    event_id: &str,
    timestamp: i64,
    meta: &EventMeta,
    shaped: Shaped,
) -> http::Request<Full<Bytes>> {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &meta.headers {
        // Stored names and values were valid headers when they arrived.
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    if let Some(ct) = shaped.content_type {
        headers.insert(http::header::CONTENT_TYPE, ct);
    }
    // The target's headers replace forwarded ones of the same name; config
    // load refused any that hookrelay sets below.
    for (name, value) in &lane.outbound.headers {
        headers.insert(name.clone(), value.clone());
    }
    let text = |s: &str| http::HeaderValue::from_str(s);
    if let Ok(v) = text(event_id) {
        headers.insert("webhook-id", v);
    }
    headers.insert("webhook-timestamp", http::HeaderValue::from(timestamp));
    if let Ok(v) = text(&meta.event_type) {
        headers.insert("webhook-event-type", v);
    }
    headers.insert(
        http::header::USER_AGENT,
        http::HeaderValue::from_static(crate::USER_AGENT),
    );
    if let Some(sig) = signature_header(&lane.secrets, event_id, timestamp, &shaped.body) {
        if let Ok(v) = text(&sig) {
            headers.insert("webhook-signature", v);
        }
    }
    let mut request = http::Request::new(Full::new(shaped.body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = lane.url.uri().clone();
    *request.headers_mut() = headers;
    request
}
