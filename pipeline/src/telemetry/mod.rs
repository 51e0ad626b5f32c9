//! Every metric name in one place, with its help text and the helpers that
//! record it; the lag poller (`lag.rs`), the HTTP endpoints (`http.rs`) and
//! the traces exported over OTLP (`traces.rs`).
//!
//! Labels are bounded (source, sink, consumer, event_type, reason, outcome):
//! never a subject, key or event id.

pub mod http;
pub mod lag;
pub mod traces;

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Duration,
};

use std::collections::HashMap;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetterReason;

pub use http::serve;
pub use lag::ConsumerLag;

pub const EVENTS_TOTAL: &str = "jetline_events_total";
pub const DEAD_LETTERS_TOTAL: &str = "jetline_dead_letters_total";
pub const VALIDATION_FAILURES_TOTAL: &str = "jetline_validation_failures_total";
pub const UPCASTS_TOTAL: &str = "jetline_upcasts_total";
pub const SINK_DURATION_SECONDS: &str = "jetline_sink_duration_seconds";
pub const END_TO_END_SECONDS: &str = "jetline_end_to_end_seconds";
pub const CONSUMER_PENDING_MESSAGES: &str = "jetline_consumer_pending_messages";
pub const CONSUMER_ACK_PENDING_MESSAGES: &str = "jetline_consumer_ack_pending_messages";
pub const CONSUMER_REDELIVERED_MESSAGES: &str = "jetline_consumer_redelivered_messages";
pub const CONSUMER_LAG_SECONDS: &str = "jetline_consumer_lag_seconds";
pub const NATS_CONNECTED: &str = "jetline_nats_connected";
pub const BUILD_INFO: &str = "jetline_build_info";
pub const SINK_BATCH_EVENTS: &str = "jetline_sink_batch_events";
pub const SINK_CONFLICTS_TOTAL: &str = "jetline_sink_conflicts_total";
pub const CONSUMER_ACTIVE: &str = "jetline_consumer_active";

/// Histogram buckets of batch sizes, 1 to 10 000 events.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Buckets of `jetline_sink_duration_seconds`: 0.1 ms to 10 s.
const SINK_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Buckets of `jetline_end_to_end_seconds`: 1 ms to 10 min, since an event
/// waiting in a backlog is minutes old when it is applied.
const END_TO_END_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// Help text of every metric, shown as `# HELP` on `/metrics`.
fn describe() {
    describe_counter!(
        EVENTS_TOTAL,
        "Deliveries settled per consumer, by event type and outcome (applied, skipped, retried, dead_lettered)"
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        "Events stored in the dead-letter stream, by sink and reason"
    );
    describe_counter!(
        VALIDATION_FAILURES_TOTAL,
        "Deliveries whose envelope or payload failed validation, counted by each consumer that read them"
    );
    describe_counter!(
        UPCASTS_TOTAL,
        "Events upcast from one schema version to another"
    );
    describe_histogram!(
        SINK_DURATION_SECONDS,
        "Time a sink took to confirm (or refuse) one write"
    );
    describe_histogram!(
        END_TO_END_SECONDS,
        "Time from an event's publication in its source stream to its sink's confirmation"
    );
    describe_gauge!(
        CONSUMER_PENDING_MESSAGES,
        "Messages in the stream not yet delivered to the consumer"
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING_MESSAGES,
        "Messages delivered to the consumer and not yet acknowledged"
    );
    describe_gauge!(
        CONSUMER_REDELIVERED_MESSAGES,
        "Messages delivered more than once and not yet acknowledged"
    );
    describe_gauge!(
        CONSUMER_LAG_SECONDS,
        "Age of the oldest event the consumer's sink has not applied (0 when caught up)"
    );
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS, 0 otherwise");
    describe_gauge!(
        CONSUMER_ACTIVE,
        "1 while this replica holds the consumer (the server delivers to it), 0 on standby"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label");
    describe_histogram!(
        SINK_BATCH_EVENTS,
        "Events written per PostgreSQL transaction"
    );
    describe_counter!(
        SINK_CONFLICTS_TOTAL,
        "KV compare-and-set attempts that lost to another writer and were retried"
    );
}

/// The outcomes counted in `jetline_events_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Applied,
    Skipped,
    Retried,
    DeadLettered,
}

impl Settled {
    const ALL: [Settled; 4] = [
        Settled::Applied,
        Settled::Skipped,
        Settled::Retried,
        Settled::DeadLettered,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Applied => "applied",
            Settled::Skipped => "skipped",
            Settled::Retried => "retried",
            Settled::DeadLettered => "dead_lettered",
        }
    }
}

/// One consumer's metric handles, registered once at start-up: recording an
/// event is an atomic add, with no label strings built and no registry
/// lookup (the event type is found in a small map by `&str`).
#[derive(Debug)]
pub struct ConsumerMetrics {
    /// Outcome counters per known event type; `"unknown"` for the rest.
    events: HashMap<String, [Counter; 4]>,
    unknown_events: [Counter; 4],
    /// Upcast counters per (event type, from version); every upcast of a
    /// consumer goes to one target version per type.
    upcasts: HashMap<String, Vec<(u32, Counter)>>,
    dead_letters: Vec<(DeadLetterReason, Counter)>,
    validation_failures: Vec<(DeadLetterReason, Counter)>,
    sink_duration: Histogram,
    end_to_end: Histogram,
    active: metrics::Gauge,
}

impl ConsumerMetrics {
    /// `upcasts` lists, per event type, the versions it can be upcast from
    /// and the version it goes to for this consumer's sink.
    pub fn new<'a>(
        source: &str,
        sink: &str,
        consumer: &str,
        event_types: impl IntoIterator<Item = &'a str>,
        upcasts: impl IntoIterator<Item = (&'a str, Vec<u32>, u32)>,
    ) -> Self {
        let outcomes = |event_type: &str| {
            Settled::ALL.map(|outcome| {
                counter!(EVENTS_TOTAL, "source" => source.to_owned(), "sink" => sink.to_owned(),
                    "event_type" => event_type.to_owned(), "outcome" => outcome.as_str())
            })
        };
        Self {
            events: event_types
                .into_iter()
                .map(|event_type| (event_type.to_owned(), outcomes(event_type)))
                .collect(),
            unknown_events: outcomes("unknown"),
            upcasts: upcasts
                .into_iter()
                .map(|(event_type, from_versions, to)| {
                    let counters = from_versions
                        .into_iter()
                        .map(|from| {
                            let counter = counter!(UPCASTS_TOTAL,
                                "event_type" => event_type.to_owned(),
                                "from_version" => from.to_string(), "to_version" => to.to_string());
                            (from, counter)
                        })
                        .collect();
                    (event_type.to_owned(), counters)
                })
                .collect(),
            dead_letters: DeadLetterReason::ALL
                .iter()
                .map(|reason| {
                    let counter = counter!(DEAD_LETTERS_TOTAL, "sink" => sink.to_owned(),
                        "reason" => reason.as_str());
                    (*reason, counter)
                })
                .collect(),
            validation_failures: DeadLetterReason::ALL
                .iter()
                .map(|reason| {
                    let counter = counter!(VALIDATION_FAILURES_TOTAL,
                        "source" => source.to_owned(), "reason" => reason.as_str());
                    (*reason, counter)
                })
                .collect(),
            sink_duration: histogram!(SINK_DURATION_SECONDS, "sink" => sink.to_owned()),
            end_to_end: histogram!(END_TO_END_SECONDS, "sink" => sink.to_owned()),
            active: gauge!(CONSUMER_ACTIVE, "source" => source.to_owned(), "sink" => sink.to_owned(), "consumer" => consumer.to_owned()),
        }
    }

    /// Counts a settled delivery; a type the schemas do not know is
    /// labelled `unknown`, so a producer's typo cannot grow the label set.
    pub fn event(&self, event_type: &str, outcome: Settled) {
        let counters = self.events.get(event_type).unwrap_or(&self.unknown_events);
        counters[outcome as usize].increment(1);
    }

    pub fn dead_lettered(&self, reason: DeadLetterReason) {
        if let Some((_, counter)) = self.dead_letters.iter().find(|(r, _)| *r == reason) {
            counter.increment(1);
        }
    }

    pub fn validation_failure(&self, reason: DeadLetterReason) {
        if let Some((_, counter)) = self.validation_failures.iter().find(|(r, _)| *r == reason) {
            counter.increment(1);
        }
    }

    pub fn upcast(&self, event_type: &str, from_version: u32) {
        let counter = self
            .upcasts
            .get(event_type)
            .and_then(|counters| counters.iter().find(|(from, _)| *from == from_version));
        if let Some((_, counter)) = counter {
            counter.increment(1);
        }
    }

    pub fn sink_duration(&self, elapsed: Duration) {
        self.sink_duration.record(elapsed.as_secs_f64());
    }

    /// Whether this replica is the consumer's active one.
    pub fn active(&self, active: bool) {
        self.active.set(if active { 1.0 } else { 0.0 });
    }

    pub fn end_to_end(&self, seconds: f64) {
        self.end_to_end.record(seconds.max(0.0));
    }
}

/// Exports each sink's dead-letter counters (every reason) and histograms
/// from start-up, at 0: `rate()` and `increase()` see the first event of a
/// series only when the series existed before it.
pub fn register_sinks<'a>(sinks: impl IntoIterator<Item = &'a String>) {
    for sink in sinks {
        for reason in DeadLetterReason::ALL {
            counter!(DEAD_LETTERS_TOTAL, "sink" => sink.clone(), "reason" => reason.as_str())
                .increment(0);
        }
        let _ = histogram!(SINK_DURATION_SECONDS, "sink" => sink.clone());
        let _ = histogram!(END_TO_END_SECONDS, "sink" => sink.clone());
    }
}

/// Events in one batch written by a batching sink (PostgreSQL).
pub fn sink_batch(sink: &str, events: usize) {
    histogram!(SINK_BATCH_EVENTS, "sink" => sink.to_owned()).record(events as f64);
}

/// A compare-and-set lost to another writer, tried again (KV).
pub fn sink_conflict(sink: &str) {
    counter!(SINK_CONFLICTS_TOTAL, "sink" => sink.to_owned()).increment(1);
}

pub fn nats_connected(connected: bool) {
    gauge!(NATS_CONNECTED).set(if connected { 1.0 } else { 0.0 });
}

pub fn consumer_lag(source: &str, sink: &str, consumer: &str, lag: ConsumerLag) {
    let labels = [
        ("source", source.to_owned()),
        ("sink", sink.to_owned()),
        ("consumer", consumer.to_owned()),
    ];
    gauge!(CONSUMER_PENDING_MESSAGES, &labels).set(lag.pending as f64);
    gauge!(CONSUMER_ACK_PENDING_MESSAGES, &labels).set(lag.ack_pending as f64);
    gauge!(CONSUMER_REDELIVERED_MESSAGES, &labels).set(lag.redelivered as f64);
    gauge!(CONSUMER_LAG_SECONDS, &labels).set(lag.lag_seconds);
}

/// What `/readyz` reports: connected to NATS, every consumer bound, and
/// dead letters being stored.
#[derive(Debug, Default)]
pub struct Readiness {
    connected: AtomicBool,
    bound: AtomicUsize,
    expected: AtomicUsize,
    /// Why the last dead letter could not be stored, until one is.
    dead_letter_failure: std::sync::Mutex<Option<String>>,
}

impl Readiness {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
        nats_connected(connected);
    }

    /// Each start of the consumers (again after a generation switch)
    /// counts them bound anew.
    pub fn expect_consumers(&self, count: usize) {
        self.bound.store(0, Ordering::Relaxed);
        self.expected.store(count, Ordering::Relaxed);
    }

    pub fn consumer_bound(&self) {
        self.bound.fetch_add(1, Ordering::Relaxed);
    }

    /// A dead letter could not be stored: events that need one wait.
    pub fn dead_letter_failed(&self, error: &str) {
        if let Ok(mut failure) = self.dead_letter_failure.lock() {
            *failure = Some(error.to_owned());
        }
    }

    pub fn dead_letter_stored(&self) {
        if let Ok(mut failure) = self.dead_letter_failure.lock()
            && failure.is_some()
        {
            *failure = None;
        }
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), String> {
        if !self.connected.load(Ordering::Relaxed) {
            return Err("not connected to NATS".into());
        }
        let (bound, expected) = (
            self.bound.load(Ordering::Relaxed),
            self.expected.load(Ordering::Relaxed),
        );
        if bound < expected {
            return Err(format!("{bound} of {expected} consumers bound"));
        }
        if let Ok(failure) = self.dead_letter_failure.lock()
            && let Some(error) = failure.as_ref()
        {
            return Err(format!("dead letters cannot be stored: {error}"));
        }
        Ok(())
    }
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(SINK_DURATION_SECONDS.into()), SINK_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(
                Matcher::Full(END_TO_END_SECONDS.into()),
                END_TO_END_BUCKETS,
            )
        })
        .map_err(|err| err.to_string())?
        .set_buckets_for_metric(Matcher::Full(SINK_BATCH_EVENTS.into()), BATCH_BUCKETS)
        .map_err(|err| err.to_string())?
        .install_recorder()
        .map_err(|err| err.to_string())?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Drains recorded histogram samples into their buckets every few seconds
/// until `shutdown`: without it, samples pile up in memory between scrapes,
/// and forever when nothing scrapes.
pub async fn upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}
