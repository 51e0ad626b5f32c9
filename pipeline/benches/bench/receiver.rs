//! The HTTP receiver both the raw program and Jetline's webhook sink post
//! to: answers 200 at once and counts requests per path, so each round
//! (its own path) knows when all of its events have arrived. It records
//! nothing else: the benchmark measures the sender, not the receiver.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};

use crate::support::serve_on_loopback;

type Counts = Arc<Mutex<HashMap<String, u64>>>;

pub struct Receiver {
    /// `http://127.0.0.1:PORT/hook`; a round posts to `<base>/<round>`.
    pub base: String,
    counts: Counts,
}

impl Receiver {
    /// Serves `POST /hook/{round}` on a free loopback port, in the
    /// benchmark's own runtime (the raw programs run in another).
    pub async fn start() -> Self {
        let counts = Counts::default();
        let app = Router::new()
            .route("/hook/{round}", post(count))
            .with_state(Arc::clone(&counts));
        let address = serve_on_loopback(app).await;
        Self {
            base: format!("http://{address}/hook"),
            counts,
        }
    }

    pub fn url(&self, round: &str) -> String {
        format!("{}/{round}", self.base)
    }

    /// Requests received on the path of `round`.
    pub fn count(&self, round: &str) -> u64 {
        let counts = self.counts.lock().expect("not poisoned");
        counts.get(round).copied().unwrap_or(0)
    }
}

async fn count(State(counts): State<Counts>, Path(round): Path<String>) -> StatusCode {
    *counts
        .lock()
        .expect("not poisoned")
        .entry(round)
        .or_default() += 1;
    StatusCode::OK
}
