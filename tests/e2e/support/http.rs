//! A real local HTTP server (axum) with scripted answers, recording every
//! request it gets: the webhook the HTTP sink posts to.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use tokio::sync::oneshot;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: serde_json::Value,
    pub at: Instant,
    /// 1 for the first request with this `Idempotency-Key`, 2 for the next...
    pub attempt: usize,
    /// The status it was answered with.
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn idempotency_key(&self) -> &str {
        self.header("idempotency-key").unwrap_or_default()
    }
}

/// What the script answers: a status and headers.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    /// How long the answer takes: a slow downstream.
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }
}

type Script = dyn Fn(&Recorded) -> Answer + Send + Sync;

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    attempts: HashMap<Option<HeaderValue>, usize>,
}

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    log: Arc<Mutex<Log>>,
}

/// The server, stopped on drop.
pub struct Webhook {
    pub url: String,
    log: Arc<Mutex<Log>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Webhook {
    /// Serves `POST /hook` on a free loopback port, answering each request
    /// as `script` says (it sees the request, its attempt number included).
    pub async fn start(script: impl Fn(&Recorded) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("bound");
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Shared {
            script: Arc::new(script),
            log: Arc::clone(&log),
        };
        let app = Router::new().route("/hook", post(hook)).with_state(shared);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            url: format!("http://{address}/hook"),
            log,
            stop: Some(stop),
        }
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("not poisoned").requests.clone()
    }

    /// The requests of each idempotency key, in arrival order.
    pub fn by_key(&self) -> BTreeMap<String, Vec<Recorded>> {
        let mut keyed: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
        for request in self.requests() {
            keyed
                .entry(request.idempotency_key().to_owned())
                .or_default()
                .push(request);
        }
        keyed
    }
}

/// Serves `app` on a free loopback port until the runtime ends; returns
/// its address.
pub async fn serve_on_loopback(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    address
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn hook(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let (answer, status) = {
        let mut log = shared.log.lock().expect("not poisoned");
        let attempts = log
            .attempts
            .entry(headers.get("idempotency-key").cloned())
            .or_default();
        *attempts += 1;
        let mut recorded = Recorded {
            headers,
            body,
            at: Instant::now(),
            attempt: *attempts,
            status: 0,
        };
        let answer = (shared.script)(&recorded);
        recorded.status = answer.status;
        log.requests.push(recorded);
        let status = StatusCode::from_u16(answer.status).expect("a valid status");
        (answer, status)
    };
    tokio::time::sleep(answer.delay).await;
    let mut response = status.into_response();
    for (name, value) in answer.headers {
        response
            .headers_mut()
            .insert(name, value.parse().expect("a valid header value"));
    }
    response
}
