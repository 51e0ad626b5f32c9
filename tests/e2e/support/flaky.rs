//! A sink for tests only: applies events to memory, failing the ones its plan
//! names (transiently a number of times, or for good). Registered as a
//! `type: custom` sink through `jetline::run_with`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use jetline::sink::{Applied, Event, Sink, SinkError};

/// What the sink does with one event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Fails transiently on the first `n` attempts, then applies.
    FailTimes(u32),
    /// Fails transiently on every attempt.
    FailAlways,
    /// Rejects the event (a permanent error).
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEvent {
    pub aggregate_id: String,
    pub event_id: String,
    pub stream_seq: u64,
    pub attempt: u32,
}

#[derive(Default)]
struct State {
    plan: HashMap<String, Plan>,
    attempts: HashMap<String, u32>,
    applied: Vec<AppliedEvent>,
}

#[derive(Clone, Default)]
pub struct FlakySink {
    state: Arc<Mutex<State>>,
}

impl FlakySink {
    pub fn with_plan(plan: impl IntoIterator<Item = (String, Plan)>) -> Self {
        let sink = Self::default();
        sink.lock().plan.extend(plan);
        sink
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn applied(&self) -> Vec<AppliedEvent> {
        self.lock().applied.clone()
    }

    pub fn applied_count(&self) -> usize {
        self.lock().applied.len()
    }

    pub fn attempts(&self, event_id: &str) -> u32 {
        self.lock().attempts.get(event_id).copied().unwrap_or(0)
    }
}

impl Sink for FlakySink {
    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        let mut state = self.lock();
        let id = event.envelope.event_id.clone();
        let attempts = {
            let count = state.attempts.entry(id.clone()).or_insert(0);
            *count += 1;
            *count
        };
        match state.plan.get(&id).copied() {
            Some(Plan::FailTimes(n)) if attempts <= n => {
                tracing::debug!(id, attempts, "planned failure");
                return Err(SinkError::Unavailable(format!(
                    "planned failure {attempts} of {n}"
                )));
            }
            Some(Plan::FailAlways) => return Err(SinkError::Unavailable("planned outage".into())),
            Some(Plan::Reject) => return Err(SinkError::Rejected("planned rejection".into())),
            Some(Plan::FailTimes(_)) | None => {}
        }
        state.applied.push(AppliedEvent {
            aggregate_id: event.envelope.aggregate_id.clone(),
            event_id: id,
            stream_seq: event.delivery.stream_seq,
            attempt: event.delivery.attempt,
        });
        Ok(Applied::Written)
    }
}
