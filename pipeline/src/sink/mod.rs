//! The [`Sink`] trait, the [`Event`] a sink receives, and [`SinkError`] with
//! its retry [`ErrorClass`]. One module per sink kind; `value` holds the
//! value paths the read-model sinks (KV, PostgreSQL) share.
//!
//! A sink returns only once its write is durable (the stream acked it, the
//! transaction committed, the webhook answered 2xx): the caller acks the
//! source message after that, never before.

pub mod custom;
pub mod http;
pub mod jetstream;
pub mod kv;
pub mod postgres;
pub mod value;

use std::{collections::BTreeMap, future::Future, time::Duration};

use prost_reflect::MessageDescriptor;

use crate::{
    config::{Config, ConfigError, SinkKind},
    envelope::{Encoding, Envelope, NoJsonForm},
    schema::SchemaRegistry,
    source::Delivery,
    telemetry::traces::{EventTrace, TRACEPARENT, TRACESTATE},
    template::TemplateError,
};

/// A validated event on its way to a sink, with the delivery it came from
/// (whose ack handle travels with it).
#[derive(Debug)]
pub struct Event {
    pub envelope: Envelope,
    pub delivery: Delivery,
    /// The encoding of `delivery.body` while the envelope is still exactly
    /// what that body holds (not upcast): a sink writing that encoding can
    /// pass the original bytes through instead of encoding again.
    pub original: Option<Encoding>,
    /// The event's spans, with `tracing` on; `None` (nothing allocated)
    /// with it off.
    pub trace: Option<Box<EventTrace>>,
}

/// The W3C trace-context headers: carried from the source message to the
/// sinks that send headers on (JetStream, HTTP).
pub const CARRIED_HEADERS: [&str; 3] = [TRACEPARENT, TRACESTATE, BAGGAGE];

const BAGGAGE: &str = "baggage";

impl Event {
    /// The source bytes, when they are this event in `encoding` as it is now.
    pub fn original_body(&self, encoding: Encoding) -> Option<&bytes::Bytes> {
        (self.original == Some(encoding)).then_some(&self.delivery.body)
    }

    /// The trace-context headers a sink sends on, by name: with tracing on,
    /// the `traceparent` (and `tracestate`) of the sink write's span, in the
    /// source's trace; with it off, the source message's own headers as
    /// they came. `baggage` is the source's either way.
    pub fn trace_headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let source = |name: &'static str| {
            let value = self
                .delivery
                .headers
                .as_ref()?
                .get(async_nats::HeaderName::from_static(name))?;
            Some((name, value.as_str()))
        };
        let headers = match self.trace.as_deref().and_then(EventTrace::carried) {
            Some(carried) => [
                Some((TRACEPARENT, carried.traceparent.as_str())),
                Some((TRACESTATE, carried.tracestate.as_str())).filter(|(_, v)| !v.is_empty()),
                source(BAGGAGE),
            ],
            None => CARRIED_HEADERS.map(source),
        };
        headers.into_iter().flatten()
    }
}

/// A successful write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The sink holds the event's effect.
    Written,
    /// Nothing to do for this event (already applied, or no rule for its type).
    Skipped,
}

/// Writes events to one destination.
pub trait Sink: Send + Sync + 'static {
    /// Applies one event; returns once the effect is durable.
    fn apply(&self, event: &Event) -> impl Future<Output = Result<Applied, SinkError>> + Send;

    /// Whether this sink writes an event that was not upcast as the
    /// source's own bytes in `encoding` (see [`Event::original_body`]), and
    /// so needs its payload validated but not decoded.
    fn passes_through(&self, _encoding: Encoding) -> bool {
        false
    }

    /// The top-level payload fields the sink reads, when it names them all:
    /// only those are decoded. `None`: it may read the whole payload.
    fn payload_fields(&self) -> Option<&PayloadFields> {
        None
    }
}

/// Top-level payload fields, by name.
pub type PayloadFields = std::collections::BTreeSet<String>;

/// Whether a failed write may succeed if tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Permanent,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("cannot render {what}: {source}")]
    Render {
        what: &'static str,
        #[source]
        source: TemplateError,
    },
    #[error("no stream stores subject {subject}")]
    NoStream { subject: String },
    #[error("timed out waiting for {0}")]
    Timeout(String),
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("publish to {subject} failed: {message}")]
    Publish { subject: String, message: String },
    #[error("message too large for {subject}: {message}")]
    TooLarge { subject: String, message: String },
    /// The sink refuses this event for good (a custom sink's verdict).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The sink cannot apply it now (a custom sink's verdict).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("cannot take value {0}")]
    Value(#[from] value::ValueError),
    #[error(transparent)]
    NoJsonForm(#[from] NoJsonForm),
    #[error("document {key}: {message}")]
    Document { key: String, message: String },
    #[error("key-value store: {0}")]
    KeyValue(String),
    #[error("document {key} kept changing under concurrent writers")]
    Conflict { key: String },
    #[error("statement rejected ({code}): {message}")]
    StatementRejected { code: String, message: String },
    #[error("database error ({code}): {message}")]
    Database { code: String, message: String },
    #[error("no database connection available: {0}")]
    Pool(String),
    #[error("webhook answered {status}: {body}")]
    HttpRejected { status: u16, body: String },
    #[error("webhook answered {status}")]
    HttpUnavailable {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("environment variable {variable} (from {key}) is not set or not valid")]
    Environment { variable: String, key: String },
    /// The connection settings cannot be used (a TLS mode without its
    /// root certificate, an unreadable certificate file).
    #[error("{key}: {message}")]
    ConnectionSettings { key: String, message: String },
    #[error("{0}")]
    Setup(String),
    /// The sink's code panicked: a bug, but one event's, so that event is
    /// retried and then dead-lettered while the process goes on.
    #[error("the sink panicked: {0}")]
    Panicked(String),
}

impl SinkError {
    /// Transient errors are retried with backoff; permanent ones are
    /// dead-lettered at once.
    pub fn class(&self) -> ErrorClass {
        match self {
            SinkError::Render { .. } => ErrorClass::Permanent,
            SinkError::NoStream { .. } => ErrorClass::Transient,
            SinkError::Timeout(_) => ErrorClass::Transient,
            SinkError::Connection(_) => ErrorClass::Transient,
            SinkError::Publish { .. } => ErrorClass::Transient,
            SinkError::TooLarge { .. } => ErrorClass::Permanent,
            SinkError::Rejected(_) => ErrorClass::Permanent,
            SinkError::Unavailable(_) => ErrorClass::Transient,
            SinkError::Value(_) => ErrorClass::Permanent,
            SinkError::NoJsonForm(_) => ErrorClass::Permanent,
            SinkError::Document { .. } => ErrorClass::Permanent,
            SinkError::KeyValue(_) => ErrorClass::Transient,
            SinkError::Conflict { .. } => ErrorClass::Transient,
            SinkError::StatementRejected { .. } => ErrorClass::Permanent,
            SinkError::Database { .. } => ErrorClass::Transient,
            SinkError::Pool(_) => ErrorClass::Transient,
            SinkError::HttpRejected { .. } => ErrorClass::Permanent,
            SinkError::HttpUnavailable { .. } => ErrorClass::Transient,
            SinkError::Environment { .. } => ErrorClass::Permanent,
            SinkError::ConnectionSettings { .. } => ErrorClass::Permanent,
            SinkError::Setup(_) => ErrorClass::Permanent,
            SinkError::Panicked(_) => ErrorClass::Transient,
        }
    }

    /// The least delay the destination asked for before the next attempt
    /// (an HTTP `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SinkError::HttpUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the error comes from the environment Jetline was started in
    /// (a missing variable, unusable connection settings): a configuration
    /// problem.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            SinkError::Environment { .. } | SinkError::ConnectionSettings { .. }
        )
    }
}

/// An error's message followed by its causes, each once: clients such as
/// reqwest and tokio-postgres keep the cause (a refused certificate, say)
/// out of their own message.
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The payload schema a sink's rule for `event_type` is checked against:
/// the sink's pinned `schema_version`, else the newest version.
pub fn schema_for<'r>(
    registry: &'r SchemaRegistry,
    event_type: &str,
    pin: Option<u32>,
) -> Result<&'r MessageDescriptor, String> {
    let version = match pin {
        Some(version) => version,
        None => registry
            .newest(event_type)
            .ok_or_else(|| format!("no schema for event type {event_type:?}"))?,
    };
    registry
        .resolve(event_type, version)
        .ok_or_else(|| format!("no schema for event type {event_type:?} at version {version}"))
}

/// Each rule of an `on:` map with its key path and the schema it is checked
/// against; event types without one are reported.
pub fn rules_with_schemas<'c, 'r, R>(
    on: &'c BTreeMap<String, R>,
    path: &str,
    registry: &'r SchemaRegistry,
    pin: Option<u32>,
    errors: &mut Vec<ConfigError>,
) -> Vec<(String, &'c R, &'r MessageDescriptor)> {
    let mut found = Vec::new();
    for (event_type, rule) in on {
        let rule_path = format!("{path}.on.{event_type}");
        match schema_for(registry, event_type, pin) {
            Ok(schema) => found.push((rule_path, rule, schema)),
            Err(message) => errors.push(ConfigError::new(rule_path, message)),
        }
    }
    found
}

/// Checks the read-model sinks against the schemas (every value path of
/// every rule) and against the sources feeding them.
pub fn check_against_schemas(config: &Config, registry: &SchemaRegistry) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, sink) in &config.sinks {
        let path = format!("sinks.{name}");
        match &sink.kind {
            SinkKind::Kv(kv) => kv.check_schemas(&path, registry, sink.schema_version, &mut errors),
            SinkKind::Postgres(postgres) => {
                postgres.check_schemas(&path, registry, sink.schema_version, &mut errors)
            }
            SinkKind::JetStream(_) | SinkKind::Http(_) | SinkKind::Custom => continue,
        }
        // Checkpoints are kept per (stream, aggregate): two sources of one
        // stream would each see only part of an aggregate's events. (The
        // partitions of one source split by aggregate, so they may.)
        let feeding: Vec<_> = config
            .pipelines
            .iter()
            .filter(|pipeline| pipeline.sink == *name && pipeline.partition.index == 0)
            .collect();
        for (index, pipeline) in feeding.iter().enumerate() {
            if let Some(other) = feeding[..index]
                .iter()
                .find(|other| other.stream == pipeline.stream)
            {
                errors.push(ConfigError::new(
                    path.clone(),
                    format!(
                        "sources {:?} and {:?} both read stream {}: a {} sink takes one source per stream \
                         (list both subjects in one source)",
                        other.source,
                        pipeline.source,
                        pipeline.stream,
                        sink.kind.type_name()
                    ),
                ));
            }
        }
    }
    errors
}

/// The environment variables the sinks read when they start (`url_env`,
/// `headers_env`), each named by its key, that `is_set` says are missing:
/// `run` refuses to start without them, before anything durable; `check`
/// warns, since it may run where the secrets are not.
pub fn unset_environment(config: &Config, is_set: impl Fn(&str) -> bool) -> Vec<ConfigError> {
    let mut unset = Vec::new();
    for (name, sink) in &config.sinks {
        let mut needed: Vec<(String, &str)> = Vec::new();
        match &sink.kind {
            SinkKind::Http(http) => {
                if let (None, Some(variable)) = (&http.url, &http.url_env) {
                    needed.push((format!("sinks.{name}.url_env"), variable));
                }
                for (header, variable) in &http.headers_env {
                    needed.push((format!("sinks.{name}.headers_env.{header}"), variable));
                }
            }
            SinkKind::Postgres(postgres) => {
                needed.push((format!("sinks.{name}.url_env"), &postgres.url_env));
            }
            SinkKind::JetStream(_) | SinkKind::Kv(_) | SinkKind::Custom => {}
        }
        for (key, variable) in needed {
            if !is_set(variable) {
                unset.push(ConfigError::new(
                    key,
                    format!("environment variable {variable} is not set"),
                ));
            }
        }
    }
    unset
}

#[cfg(test)]
mod tests {
    use crate::{RunError, config::load_str, prepare};

    /// The key paths of every problem with a configuration holding `sinks`.
    fn problems(sinks: &str, sources: &str, routes: &str) -> Vec<String> {
        let yaml = format!(
            "nats: {{ url: 'nats://127.0.0.1:4222' }}\n\
             schemas: {{ dir: '{}/../schemas' }}\n\
             sources:\n  orders: {{ stream: ORDERS, subjects: ['orders.>'] }}\n{sources}\
             routes:\n  - {{ name: all, from: orders, to: [s] }}\n{routes}\
             sinks:\n  s: {sinks}\n",
            env!("CARGO_MANIFEST_DIR")
        );
        let errors = match load_str(&yaml).map(prepare) {
            Err(errors) => errors,
            Ok(Err(RunError::Config(errors))) => errors,
            Ok(Err(other)) => panic!("{other}"),
            Ok(Ok(_)) => return Vec::new(),
        };
        errors.0.into_iter().map(|error| error.path).collect()
    }

    #[test]
    fn good_read_model_sinks_pass() {
        let sinks = [
            "{ type: kv, bucket: B, on: { orders.OrderCreated: { set: { s: created, c: payload.customer_id, t: occurred_at }, \
             increment: { n: payload.total_amount_cents }, append: { l: { value: aggregate_id, max_len: 3 } } }, \
             orders.OrderCancelled: { delete: true } } }",
            "{ type: postgres, on: { orders.OrderCreated: { sql: 'INSERT INTO t VALUES ($1, $2)', \
             params: [aggregate_id, payload.total_amount_cents] } } }",
            "{ type: postgres, schema_version: 1, on: { orders.OrderCreated: { sql: 'SELECT $1', params: [payload.total] } } }",
            "{ type: http, url: 'https://example.internal/hook', headers_env: { Authorization: TOKEN }, timeout: 2s }",
            "{ type: http, url_env: HOOK_URL }",
        ];
        for sink in sinks {
            assert_eq!(problems(sink, "", ""), Vec::<String>::new(), "{sink}");
        }
    }

    #[test]
    fn every_read_model_problem_names_its_key() {
        let created = "orders.OrderCreated";
        let cases = [
            (
                format!(
                    "{{ type: kv, bucket: B, on: {{ {created}: {{ set: {{ t: payload.total }} }} }} }}"
                ),
                format!("sinks.s.on.{created}.set.t"),
            ),
            (
                format!(
                    "{{ type: kv, bucket: B, bukket: C, on: {{ {created}: {{ delete: true }} }} }}"
                ),
                "sinks.s.bukket".to_owned(),
            ),
            (
                format!(
                    "{{ type: kv, bucket: B, on: {{ {created}: {{ increment: {{ n: payload.customer_id }} }} }} }}"
                ),
                format!("sinks.s.on.{created}.increment.n"),
            ),
            (
                format!(
                    "{{ type: kv, bucket: B, on: {{ {created}: {{ delete: true, unset: [a] }} }} }}"
                ),
                format!("sinks.s.on.{created}.delete"),
            ),
            (
                format!(
                    "{{ type: kv, bucket: B, on: {{ {created}: {{ set: {{ _jetline: 1 }} }} }} }}"
                ),
                format!("sinks.s.on.{created}.set._jetline"),
            ),
            (
                format!(
                    "{{ type: kv, bucket: B, on: {{ {created}: {{ set: {{ a: 1 }}, unset: [a.b] }} }} }}"
                ),
                format!("sinks.s.on.{created}.unset[0]"),
            ),
            (
                format!(
                    "{{ type: kv, bucket: B, ordering: none, on: {{ {created}: {{ delete: true }} }} }}"
                ),
                "sinks.s.ordering".to_owned(),
            ),
            (
                "{ type: kv, bucket: B, on: { orders.Nope: { delete: true } } }".to_owned(),
                "sinks.s.on.orders.Nope".to_owned(),
            ),
            (
                format!(
                    "{{ type: postgres, on: {{ {created}: {{ sql: 'SELECT $1, $2', params: [aggregate_id, payload.nope] }} }} }}"
                ),
                format!("sinks.s.on.{created}.params[1]"),
            ),
            (
                format!(
                    "{{ type: postgres, on: {{ {created}: {{ sql: 'SELECT $1, $2', params: [aggregate_id] }} }} }}"
                ),
                format!("sinks.s.on.{created}.params"),
            ),
            (
                format!(
                    "{{ type: postgres, on: {{ {created}: {{ sql: 'SELECT $1', params: [created] }} }} }}"
                ),
                format!("sinks.s.on.{created}.params[0]"),
            ),
            (
                format!(
                    "{{ type: postgres, schema_version: 1, on: {{ {created}: {{ sql: 'SELECT $1', params: [payload.total_amount_cents] }} }} }}"
                ),
                format!("sinks.s.on.{created}.params[0]"),
            ),
            (
                format!(
                    "{{ type: postgres, batch: {{ max_events: 0 }}, on: {{ {created}: {{ sql: 'SELECT 1' }} }} }}"
                ),
                "sinks.s.batch.max_events".to_owned(),
            ),
            (
                format!(
                    "{{ type: postgres, url: 'postgres://x', on: {{ {created}: {{ sql: 'SELECT 1' }} }} }}"
                ),
                "sinks.s.url".to_owned(),
            ),
            (
                "{ type: http, url: 'ftp://example.internal' }".to_owned(),
                "sinks.s.url".to_owned(),
            ),
            (
                "{ type: http, url: 'http://h', headers_env: { Content-Type: X } }".to_owned(),
                "sinks.s.headers_env.Content-Type".to_owned(),
            ),
            (
                "{ type: http, url: 'http://h', timeout: soon }".to_owned(),
                "sinks.s.timeout".to_owned(),
            ),
            (
                "{ type: http, url: 'http://h', headers: { Authorization: 'Bearer x' } }"
                    .to_owned(),
                "sinks.s.headers.Authorization".to_owned(),
            ),
            (
                "{ type: http, url: 'http://h', url_env: HOOK_URL }".to_owned(),
                "sinks.s.url_env".to_owned(),
            ),
            (
                "{ type: http, timeout: 1s }".to_owned(),
                "sinks.s.url".to_owned(),
            ),
            (
                "{ type: http, url: 'https://u:pw@h/' }".to_owned(),
                "sinks.s.url".to_owned(),
            ),
        ];
        for (sink, expected) in cases {
            let found = problems(&sink, "", "");
            assert!(
                found.contains(&expected),
                "{sink}: expected {expected}, got {found:?}"
            );
        }
    }

    #[test]
    fn a_read_model_takes_one_source_per_stream() {
        let sink = "{ type: kv, bucket: B, on: { orders.OrderCancelled: { delete: true } } }";
        let second_source = "  more: { stream: ORDERS, subjects: ['orders.x'] }\n";
        let second_route = "  - { name: more, from: more, to: [s] }\n";
        assert!(problems(sink, second_source, "").is_empty());
        assert_eq!(problems(sink, second_source, second_route), ["sinks.s"]);
    }
}
