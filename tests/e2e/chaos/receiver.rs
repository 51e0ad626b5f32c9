//! The webhook the chaos runs post to: a real HTTP server on loopback that
//! applies each `Idempotency-Key` once, as a receiver honouring the key
//! does (a repeat is answered 200 and counted, not applied again), and that
//! a scenario can switch to failing answers or slow down for one aggregate.
//! It keeps a few fields per request, not the bodies: 200,000 requests fit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};

use crate::support::serve_on_loopback;

/// How the receiver answers right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answering {
    Normally,
    /// 503 to every request.
    Unavailable,
    /// 429 with `Retry-After: <seconds>`.
    Throttled {
        retry_after_secs: u64,
    },
}

/// One applied request.
#[derive(Debug, Clone)]
pub struct AppliedRequest {
    pub event_id: String,
    pub aggregate_id: String,
    pub at: Instant,
}

#[derive(Default)]
struct Log {
    applied: Vec<AppliedRequest>,
    /// Per key: requests received, the time of the last one, whether that
    /// one was answered 429.
    keys: HashMap<String, KeyLog>,
    repeats: usize,
    refused: usize,
    /// The shortest time between a 429 and the next request of its key.
    shortest_wait_after_429: Option<Duration>,
}

#[derive(Default)]
struct KeyLog {
    requests: usize,
    last: Option<(Instant, bool)>,
    applied: bool,
}

struct Behaviour {
    answering: Answering,
    slow: Option<Slow>,
}

/// The next `remaining` requests of `aggregate_id` take `delay` each.
struct Slow {
    aggregate_id: String,
    delay: Duration,
    remaining: usize,
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    log: Arc<Mutex<Log>>,
}

/// The server, serving until the test's runtime ends.
pub struct Receiver {
    pub url: String,
    shared: Shared,
}

impl Receiver {
    pub async fn start() -> Self {
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(Behaviour {
                answering: Answering::Normally,
                slow: None,
            })),
            log: Arc::default(),
        };
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(shared.clone());
        let address = serve_on_loopback(app).await;
        Self {
            url: format!("http://{address}/hook"),
            shared,
        }
    }

    pub fn answer(&self, answering: Answering) {
        lock(&self.shared.behaviour).answering = answering;
    }

    /// Makes the next `requests` requests of `aggregate_id` take `delay` each.
    pub fn slow_down(&self, aggregate_id: &str, delay: Duration, requests: usize) {
        lock(&self.shared.behaviour).slow = Some(Slow {
            aggregate_id: aggregate_id.to_owned(),
            delay,
            remaining: requests,
        });
    }

    /// The applied requests, in the order they were applied.
    pub fn applied(&self) -> Vec<AppliedRequest> {
        lock(&self.shared.log).applied.clone()
    }

    /// Requests whose key was applied already (answered 200, not applied).
    pub fn repeats(&self) -> usize {
        lock(&self.shared.log).repeats
    }

    /// Requests answered 503 or 429.
    pub fn refused(&self) -> usize {
        lock(&self.shared.log).refused
    }

    /// Requests received with `event_id` as their key.
    pub fn requests_of(&self, event_id: &str) -> usize {
        lock(&self.shared.log)
            .keys
            .get(event_id)
            .map_or(0, |key| key.requests)
    }

    pub fn shortest_wait_after_429(&self) -> Option<Duration> {
        lock(&self.shared.log).shortest_wait_after_429
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

async fn hook(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let event_id = header(&headers, "idempotency-key").to_owned();
    let aggregate_id = header(&headers, "jetline-aggregate-id").to_owned();
    let (answering, delay) = {
        let mut behaviour = lock(&shared.behaviour);
        let answering = behaviour.answering;
        let delay = behaviour
            .slow
            .as_mut()
            .filter(|slow| {
                answering == Answering::Normally
                    && slow.aggregate_id == aggregate_id
                    && slow.remaining > 0
            })
            .map(|slow| {
                slow.remaining -= 1;
                slow.delay
            });
        (answering, delay)
    };
    let now = Instant::now();
    let throttled = matches!(answering, Answering::Throttled { .. });
    {
        let mut log = lock(&shared.log);
        let key = log.keys.entry(event_id.clone()).or_default();
        key.requests += 1;
        let wait_after_429 = match key.last {
            Some((last, true)) => Some(now - last),
            _ => None,
        };
        key.last = Some((now, throttled));
        if let Some(wait) = wait_after_429 {
            log.shortest_wait_after_429 = Some(
                log.shortest_wait_after_429
                    .map_or(wait, |shortest| shortest.min(wait)),
            );
        }
        if answering != Answering::Normally {
            log.refused += 1;
        }
    }
    match answering {
        Answering::Unavailable => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Answering::Throttled { retry_after_secs } => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
            )
                .into_response();
        }
        Answering::Normally => {}
    }
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let mut log = lock(&shared.log);
    let key = log.keys.entry(event_id.clone()).or_default();
    if key.applied {
        log.repeats += 1;
    } else {
        key.applied = true;
        log.applied.push(AppliedRequest {
            event_id,
            aggregate_id,
            at: Instant::now(),
        });
    }
    StatusCode::OK.into_response()
}
