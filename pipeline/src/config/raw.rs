//! The configuration file's shape, as serde types. Each field's doc comment is
//! its user documentation (the README's reference says the same).
//!
//! Every struct denies unknown keys, so a typo is an error, not a silent default.

use std::{collections::BTreeMap, fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// An enum of the file's words (`per_key`, `json`, `continue`): each word is
/// written once, here, for serde to read and for `as_str`/`Display` to print
/// (`check` shows the words the file uses, not Rust's variant names).
macro_rules! keywords {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$variant_meta:meta])* $variant:ident = $word:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
        pub enum $name {
            $($(#[$variant_meta])* #[serde(rename = $word)] $variant,)+
        }

        impl $name {
            /// The word the configuration file uses.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub nats: NatsConfig,
    #[serde(default)]
    pub schemas: SchemasConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    /// Parsed per `type` in `validate.rs`, so each key error names its full path.
    pub sinks: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub consumers: ConsumerDefaults,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Traces exported over OTLP: off when the block is absent.
    #[serde(default)]
    pub tracing: Option<TracingConfig>,
    /// Upcaster chains per event type (checked against the schemas at start-up).
    #[serde(default)]
    pub upcasters: BTreeMap<String, serde_json::Value>,
}

/// Connection to NATS. Secrets (`password`, `token`) are accepted only from the
/// environment (`JETLINE__NATS__PASSWORD`) or from files (`*_file`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// Connection name shown by the server.
    #[serde(default = "default_connection_name")]
    pub name: String,
    /// User name, with the password from `JETLINE__NATS__PASSWORD` or
    /// `password_file`. One way to authenticate at most: user, token,
    /// `nkey_seed_file` or `creds_file`.
    pub user: Option<String>,
    /// Only from the environment (`JETLINE__NATS__PASSWORD`).
    pub password: Option<Secret>,
    /// File holding the password (its trailing line break dropped).
    pub password_file: Option<PathBuf>,
    /// Only from the environment (`JETLINE__NATS__TOKEN`).
    pub token: Option<Secret>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// `.creds` file (user JWT and nkey seed) for operator mode.
    pub creds_file: Option<PathBuf>,
    /// File holding a user nkey seed (`SU...`).
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS: required when present.
    pub tls: Option<TlsConfig>,
    /// Time allowed for the first connection.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}

fn default_connection_name() -> String {
    "jetline".to_owned()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("token", &self.token)
            .field("creds_file", &self.creds_file)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) to verify the server with (default: the
    /// system's roots).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM), with `cert`.
    pub key: Option<PathBuf>,
}

/// A secret value: never printed.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemasConfig {
    /// Directory whose `.proto` files are compiled at start-up, relative to the
    /// config file.
    #[serde(default = "default_schema_dir")]
    pub dir: PathBuf,
    /// Unknown payload fields: `reject` (the event is dead-lettered) or `allow`.
    #[serde(default)]
    pub unknown_fields: UnknownFields,
    /// Explicit message per event type and version, overriding the convention
    /// that `orders.OrderCreated` at version 2 is `orders.v2.OrderCreated`.
    #[serde(default)]
    pub types: BTreeMap<String, BTreeMap<String, String>>,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        Self {
            dir: default_schema_dir(),
            unknown_fields: UnknownFields::default(),
            types: BTreeMap::new(),
        }
    }
}

fn default_schema_dir() -> PathBuf {
    PathBuf::from("schemas")
}

keywords! {
    pub enum UnknownFields {
        #[default]
        Reject = "reject",
        Allow = "allow",
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The JetStream stream to read (it must exist).
    pub stream: String,
    /// Subjects of the stream this source reads; routes without `subjects` get these.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// The stream's subjects carry each event's partition at this token
    /// (1-based), as nats-server's `partition()` subject transform writes
    /// it: a partitioned sink's consumers are then filtered by the server
    /// to their partition instead of each reading the whole stream.
    #[serde(default)]
    pub partition_token: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// The source whose events this route sends.
    pub from: String,
    #[serde(default, rename = "match")]
    pub matches: MatchConfig,
    /// The sinks that receive the matching events.
    pub to: Vec<String>,
}

/// Both lists are optional; an empty list matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub event_types: Vec<String>,
    /// NATS subject patterns (`*`, `>`), also used as the consumer's filter.
    #[serde(default)]
    pub subjects: Vec<String>,
}

/// Defaults for every sink's consumer (`consumers:`): `durable_prefix`
/// (durable consumer names are `<durable_prefix>-<source>-<sink>`, default
/// `jetline`) and any key of [`ConsumerOverrides`], each of which a sink's
/// block may override. Parsed in `validate.rs`, so each error names its key.
pub type ConsumerDefaults = serde_json::Map<String, serde_json::Value>;

/// The per-sink consumer settings; absent values come from `consumers:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerOverrides {
    /// How long JetStream waits for an ack before redelivering (default 30s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ack_wait: Option<Duration>,
    /// Messages delivered but not yet acked, per consumer (default 1000).
    pub max_ack_pending: Option<i64>,
    /// `per_key` (default: an aggregate's events in order) or `none`.
    pub ordering: Option<Ordering>,
    /// Events applied in parallel (default 32).
    pub concurrency: Option<usize>,
    pub retry: Option<RetryConfig>,
    /// After an event is dead-lettered: `continue` (default) or `park_key`.
    pub on_dead_letter: Option<OnDeadLetter>,
    /// How long a replica holding a consumer may go without pulling before
    /// a standby replica takes it over (default 15s).
    #[serde(default, deserialize_with = "optional_duration")]
    pub takeover_after: Option<Duration>,
    /// Partitions each (source, sink) consumer is split into by a hash of
    /// the aggregate id, shared among the live replicas (default 1: one
    /// replica active, the others standing by).
    pub partitions: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Deliveries before dead-lettering (default 8).
    pub max_attempts: Option<u32>,
    /// Delays between attempts, the last repeating (default 200ms, 1s, 5s, 30s).
    #[serde(default, deserialize_with = "optional_durations")]
    pub backoff: Option<Vec<Duration>>,
    /// Random spread of each delay, 0.0 to 1.0 (default 0.2).
    pub jitter: Option<f64>,
}

keywords! {
    pub enum Ordering {
        #[default]
        PerKey = "per_key",
        None = "none",
    }
}

keywords! {
    pub enum OnDeadLetter {
        #[default]
        Continue = "continue",
        ParkKey = "park_key",
    }
}

/// The kinds a sink block's `type` names; `validate.rs` parses each.
pub const SINK_TYPES: &[&str] = &["jetstream", "kv", "postgres", "http", "custom"];

/// Keys a sink block may carry whatever its `type`.
pub const SINK_COMMON_KEYS: &[&str] = &[
    "ack_wait",
    "max_ack_pending",
    "ordering",
    "concurrency",
    "retry",
    "on_dead_letter",
    "takeover_after",
    "partitions",
];

/// Publishes each event to a JetStream subject.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSinkConfig {
    /// Subject template: `{aggregate_id}`, `{aggregate_type}`, `{event_type}`,
    /// `{event_id}`, `{source_subject}`.
    pub subject: String,
    /// Envelope encoding written: `protobuf` (default) or `json`.
    #[serde(default)]
    pub format: Format,
    /// Headers written beside `Nats-Msg-Id`, `Content-Type` and the trace
    /// context: `minimal` (default) adds none; `full` adds the
    /// `Jetline-*` envelope and source headers, for readers that route on
    /// them without decoding the envelope.
    #[serde(default)]
    pub headers: HeaderSet,
}

keywords! {
    pub enum HeaderSet {
        #[default]
        Minimal = "minimal",
        Full = "full",
    }
}

keywords! {
    pub enum Format {
        #[default]
        Protobuf = "protobuf",
        Json = "json",
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Stream holding dead letters; created if missing.
    #[serde(default = "default_dlq_stream")]
    pub stream: String,
    /// Dead letters are published to `<subject_prefix>.<sink>.<reason>`.
    #[serde(default = "default_dlq_prefix")]
    pub subject_prefix: String,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            stream: default_dlq_stream(),
            subject_prefix: default_dlq_prefix(),
        }
    }
}

fn default_dlq_stream() -> String {
    "DLQ".to_owned()
}

fn default_dlq_prefix() -> String {
    "dlq".to_owned()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
    /// How often consumer lag is read from the server: one consumer-info
    /// request per consumer each time, plus one message read per filter
    /// subject while the consumer is behind.
    #[serde(default = "default_lag_poll_interval", deserialize_with = "duration")]
    pub lag_poll_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
            lag_poll_interval: default_lag_poll_interval(),
        }
    }
}

fn default_metrics_listen() -> String {
    "0.0.0.0:9464".to_owned()
}

fn default_lag_poll_interval() -> Duration {
    Duration::from_secs(5)
}

/// Traces (`tracing:`): a span per event and sink, with its decode,
/// upcast and sink write as children, sent to an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`):
    /// spans are POSTed as protobuf to `<otlp_endpoint>/v1/traces`.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of events without a `traceparent` that start a sampled
    /// trace, 0.0 to 1.0; an event with one follows its sampled flag.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "jetline".to_owned()
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// Bounds that keep one message, or a backlog of large ones, from making
/// Jetline allocate without limit (`limits:`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// A larger message is dead-lettered as `too_large` without being
    /// decoded (default 1048576, 1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Bytes of messages each consumer holds received but not yet settled
    /// (default 67108864, 64 MiB): past it, the consumer stops pulling until
    /// events settle.
    #[serde(default = "default_max_bytes_in_flight")]
    pub max_bytes_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message_bytes(),
            max_bytes_in_flight: default_max_bytes_in_flight(),
        }
    }
}

fn default_max_message_bytes() -> usize {
    1 << 20
}

fn default_max_bytes_in_flight() -> usize {
    64 << 20
}

/// `nats.url`: one URL or a comma-separated seed list of a cluster.
pub fn server_list(urls: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|err| format!("{url:?}: {err}"))
        })
        .collect()
}

/// A humantime duration (`30s`, `200ms`, `1m 30s`).
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text)
        .map_err(|err| serde::de::Error::custom(format!("invalid duration {text:?}: {err}")))
}

/// An optional humantime duration.
pub fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

fn optional_durations<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<Duration>>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            humantime::parse_duration(text).map_err(|err| {
                serde::de::Error::custom(format!("invalid duration {text:?}: {err}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_list_gives_every_server() {
        let servers = server_list("nats://127.0.0.1:4222, nats://127.0.0.1:4223").expect("a list");
        let ports: Vec<u16> = servers.iter().map(|server| server.port()).collect();
        assert_eq!(ports, [4222, 4223]);
        assert!(server_list("nats://127.0.0.1:notaport").is_err());
    }

    /// A keyword reads as its variant and prints as the same word.
    #[test]
    fn keywords_print_as_the_file_writes_them() {
        let read: ConsumerOverrides = serde_json::from_value(serde_json::json!({
            "ordering": "per_key",
            "on_dead_letter": "park_key",
        }))
        .expect("keywords read");
        assert_eq!(read.ordering, Some(Ordering::PerKey));
        assert_eq!(read.on_dead_letter, Some(OnDeadLetter::ParkKey));
        assert_eq!(Ordering::PerKey.to_string(), "per_key");
        assert_eq!(OnDeadLetter::ParkKey.to_string(), "park_key");
        assert_eq!(Format::Json.as_str(), "json");
        let unknown = serde_json::from_value::<ConsumerOverrides>(
            serde_json::json!({ "ordering": "PerKey" }),
        );
        assert!(unknown.is_err(), "the Rust name is not a word of the file");
    }
}
