//! Scenario 7: a custom sink (a fifth sink beside the four) panics on one
//! event, on every attempt. The panic is contained: that event is retried
//! and then dead-lettered (`max_attempts`) like any failure, its
//! aggregate's later events are applied, and the process keeps running.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use jetline::sink::{Applied, Event, Sink, SinkError, custom::CustomSinks};

use super::{
    accounting::{Report, SinkView},
    model::PoisonMix,
    world::{DATABASE_URL_ENV, SINKS, World},
};
use crate::support::Running;

const PANICKY: &str = "panicky";
const MAX_ATTEMPTS: u32 = 3;

/// Applies to memory; panics on one event id.
#[derive(Clone)]
struct PanickingSink {
    panics_on: String,
    attempts: Arc<AtomicU32>,
    applied: Arc<Mutex<Vec<String>>>,
}

impl Sink for PanickingSink {
    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        if event.envelope.event_id == self.panics_on {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            panic!("planned panic on {}", self.panics_on);
        }
        self.applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event.envelope.event_id.clone());
        Ok(Applied::Written)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by scripts/chaos"]
async fn chaos_panicking_sink_is_contained() {
    let mut world = World::with_stream("", PoisonMix::None).await;
    // The third event of the second aggregate, so that later ones follow it.
    let panics_on = "ev-0001-00002".to_owned();
    let aggregate_count = world.size.aggregates;
    if aggregate_count > 1 {
        world
            .model
            .expect_dead_letter(PANICKY, &panics_on, "max_attempts");
    }
    let sink = PanickingSink {
        panics_on: panics_on.clone(),
        attempts: Arc::default(),
        applied: Arc::default(),
    };
    // SAFETY: the chaos tests run one at a time (`--test-threads=1`) and
    // nothing else reads the environment while this is set; Jetline runs in
    // this process and reads its PostgreSQL URL from there.
    unsafe { std::env::set_var(DATABASE_URL_ENV, world.postgres.url()) };
    let block = format!(
        "{{ type: custom, retry: {{ max_attempts: {MAX_ATTEMPTS}, backoff: [100ms], jitter: 0.0 }} }}"
    );
    let yaml = world.yaml("", &[(PANICKY, &block)]);
    let started = Instant::now();
    let jetline = Running::start_with(&yaml, CustomSinks::new().register(PANICKY, sink.clone()));
    let mut sinks = SINKS.to_vec();
    sinks.push(PANICKY);
    let settled = world.until_settled(&sinks).await;
    let elapsed = started.elapsed();
    let running = jetline.is_running();
    let ready = world.until_ready(Duration::from_secs(5)).await;
    let attempts = sink.attempts.load(Ordering::Relaxed);

    let mut report = Report::new("chaos_panicking_sink", &world);
    report.check(settled, "the sinks did not settle every message".into());
    report.check(running, "jetline::run returned after the panic".into());
    report.check(ready, "/readyz not 200 after the panic".into());
    report.check(
        attempts == MAX_ATTEMPTS,
        format!("the panicking event was tried {attempts} times, not {MAX_ATTEMPTS}"),
    );
    report.note(format!(
        "{PANICKY} panicked on {panics_on} in {attempts} attempts; process running: {running}; all settled {:.1} s after the start",
        elapsed.as_secs_f64()
    ));
    let view = SinkView {
        sink: PANICKY.to_owned(),
        applied: sink
            .applied
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone(),
        model_mismatches: 0,
    };
    report.account(&world, vec![view]).await;
    report.finish();
    jetline.stop().await;
}
