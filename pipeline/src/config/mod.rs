//! Configuration: the YAML file the user edits, as serde types (`raw`), and the
//! checked [`Config`] the pipeline runs from.
//!
//! Loading (file + `JETLINE__*` environment) lives in `load.rs`; turning the raw
//! types into a [`Config`] lives in `validate.rs`, which is pure and reports
//! every problem at once, each named by its key path.

mod load;
pub mod raw;
mod validate;

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, time::Duration};

pub use load::{Locator, load, load_str};
pub use raw::{OnDeadLetter, Ordering, UnknownFields};
pub(crate) use validate::parse_at;
pub use validate::validate;

/// A configuration problem, named by the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}: {message}", location(*line, variable.as_deref()))]
pub struct ConfigError {
    /// Dotted key path, e.g. `sinks.orders_out.subject`.
    pub path: String,
    /// Line in the YAML file where the key stands, when it could be found.
    pub line: Option<usize>,
    /// The `JETLINE__*` environment variable the value came from, if any.
    pub variable: Option<String>,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            line: None,
            variable: None,
            message: message.into(),
        }
    }
}

/// ` (from VARIABLE)` or ` (line N)`: where the value was given.
fn location(line: Option<usize>, variable: Option<&str>) -> String {
    match (variable, line) {
        (Some(variable), _) => format!(" (from {variable})"),
        (None, Some(line)) => format!(" (line {line})"),
        (None, None) => String::new(),
    }
}

/// Every problem found in one configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats: raw::NatsConfig,
    pub schemas: raw::SchemasConfig,
    pub sources: BTreeMap<String, raw::SourceConfig>,
    pub sinks: BTreeMap<String, SinkSpec>,
    pub routes: Vec<RouteSpec>,
    pub dead_letter: raw::DeadLetterConfig,
    pub metrics: MetricsSettings,
    pub limits: raw::LimitsConfig,
    /// Traces over OTLP; `None`: off, and the pipeline pays nothing for them.
    pub tracing: Option<TracingSettings>,
    /// Upcaster chains per event type, as written under `upcasters:`.
    pub upcasters: BTreeMap<String, serde_json::Value>,
    /// One entry per (source, sink) pair that some route connects.
    pub pipelines: Vec<PipelineSpec>,
    /// Where each key was written, for errors found after loading.
    pub locator: Locator,
}

/// A sink with its effective consumer settings (defaults merged with overrides).
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub kind: SinkKind,
    pub consumer: ConsumerSettings,
    /// Upcast events to this version instead of the newest one.
    pub schema_version: Option<u32>,
}

/// What a sink writes to, with its own settings.
#[derive(Debug, Clone)]
pub enum SinkKind {
    JetStream(raw::JetStreamSinkConfig),
    /// Registered in code by a program embedding the library.
    Custom,
    Kv(crate::sink::kv::KvSinkConfig),
    Postgres(crate::sink::postgres::PostgresSinkConfig),
    Http(crate::sink::http::HttpSinkConfig),
}

impl SinkKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::JetStream(_) => "jetstream",
            SinkKind::Custom => "custom",
            SinkKind::Kv(_) => "kv",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Http(_) => "http",
        }
    }

    /// The events in flight this kind works best with when the file names
    /// none: a PostgreSQL sink writes up to `pool_size` transactions of up
    /// to `batch.max_events` at once, which only fill with that many in
    /// flight.
    pub fn default_concurrency(&self) -> Option<usize> {
        match self {
            SinkKind::Postgres(config) => {
                Some(config.batch.max_events.saturating_mul(config.pool_size))
            }
            SinkKind::JetStream(_) | SinkKind::Kv(_) | SinkKind::Http(_) | SinkKind::Custom => None,
        }
    }

    /// Read models skip what they already applied by comparing sequences
    /// per aggregate, which holds only with `ordering: per_key`.
    pub fn needs_per_key_order(&self) -> bool {
        match self {
            SinkKind::Kv(_) | SinkKind::Postgres(_) => true,
            SinkKind::JetStream(_) | SinkKind::Http(_) | SinkKind::Custom => false,
        }
    }
}

/// Effective settings of one sink's durable consumer and of its processing.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSettings {
    pub durable_prefix: String,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
    pub ordering: Ordering,
    pub concurrency: usize,
    pub retry: RetryPolicy,
    pub on_dead_letter: OnDeadLetter,
    /// The priority group's pin timeout: how long the active replica may go
    /// without pulling before a standby takes the consumer over.
    pub takeover_after: Duration,
    /// Consumers per (source, sink), split by aggregate id.
    pub partitions: u32,
}

impl ConsumerSettings {
    /// How long one pull request waits on the server: well inside
    /// `takeover_after`, so an idle active replica keeps its pin.
    pub fn pull_expiry(&self) -> Duration {
        (self.takeover_after / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// How long after start-up every delivery left unacked by a previous
    /// process has come back: its ack timer, or its nak delay, has expired.
    pub fn recovery_window(&self) -> Duration {
        let longest = self.retry.backoff.iter().max().copied().unwrap_or_default();
        let jitter = longest.mul_f64(self.retry.jitter);
        self.ack_wait.max(longest + jitter) + Duration::from_secs(2)
    }
}

/// Retry of transient sink errors.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Deliveries of one event before it is dead-lettered (`max_attempts`).
    pub max_attempts: u32,
    /// Delay before attempt n+1 is `backoff[n-1]`, the last value repeating.
    pub backoff: Vec<Duration>,
    /// Fraction of the delay added or removed at random (0.0 to 1.0).
    pub jitter: f64,
}

impl RetryPolicy {
    /// The delay after the failed attempt `attempt` (1-based), without jitter.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.backoff.len().saturating_sub(1));
        self.backoff.get(index).copied().unwrap_or_default()
    }
}

/// Checked `tracing:` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans are POSTed: `<otlp_endpoint>/v1/traces`.
    pub traces_url: reqwest::Url,
    pub service_name: String,
    pub sample_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub listen: SocketAddr,
    pub lag_poll_interval: Duration,
}

/// A checked route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub from: String,
    pub event_types: Vec<String>,
    pub subjects: Vec<String>,
    pub to: Vec<String>,
}

/// One durable consumer: the events of `source` that routes send to `sink`.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub source: String,
    pub stream: String,
    pub sink: String,
    /// `<durable_prefix>-<source>-<sink>`: the pair's name, shared by its
    /// partitions.
    pub consumer: String,
    /// The durable consumer's name: [`PipelineSpec::consumer`], with
    /// `-p<index>` when the pair is partitioned.
    pub durable_name: String,
    /// Which share of the pair's aggregates this consumer applies.
    pub partition: Partitioning,
    /// Subjects the consumer is filtered to (empty: the whole stream).
    pub filter_subjects: Vec<String>,
    /// Indexes into [`Config::routes`] of the routes that feed this pair.
    pub routes: Vec<usize>,
}

/// The durable consumer's name of partition `partition` of the pair named
/// `consumer`: the pair's name, with `-p<index>` when it is partitioned.
pub fn durable_name(consumer: &str, partition: Partitioning) -> String {
    match partition.count {
        0 | 1 => consumer.to_owned(),
        _ => format!("{consumer}-p{}", partition.index),
    }
}

/// Partition `index` of `count` (0 of 1: not partitioned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioning {
    pub index: u32,
    pub count: u32,
    /// The server filters the consumer to its partition (the source's
    /// `partition_token`): every event it delivers is this partition's.
    pub by_subject: bool,
}

impl PipelineSpec {
    pub fn is_partitioned(&self) -> bool {
        self.partition.count > 1
    }
}

/// Where the configuration came from, for error locations.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub file: Option<PathBuf>,
    pub text: String,
}
