//! Raw configuration -> [`Config`]: merges consumer defaults into each sink,
//! checks names, subjects, templates and references, and derives one
//! [`PipelineSpec`] per (source, sink) pair. Pure: no IO, every problem
//! collected and named by its key path.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::de::DeserializeOwned;

use super::{
    Config, ConfigError, ConfigErrors, ConsumerSettings, MetricsSettings, Ordering, Partitioning,
    PipelineSpec, RetryPolicy, RouteSpec, SinkKind, SinkSpec, TracingSettings, durable_name,
    raw::{
        self, ConsumerOverrides, LimitsConfig, RawConfig, SINK_COMMON_KEYS, SINK_TYPES,
        TracingConfig,
    },
};
use crate::template::{Template, is_valid_subject, is_valid_subject_pattern};

const DEFAULT_DURABLE_PREFIX: &str = "jetline";
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_ACK_PENDING: i64 = 1000;
const DEFAULT_CONCURRENCY: usize = 32;
const DEFAULT_MAX_ATTEMPTS: u32 = 8;
const DEFAULT_JITTER: f64 = 0.2;
const DEFAULT_TAKEOVER_AFTER: Duration = Duration::from_secs(15);
/// Most partitions per (source, sink): each is a consumer, reading the
/// whole of the pair's subjects on a plain stream.
const MAX_PARTITIONS: u32 = 64;

fn default_backoff() -> Vec<Duration> {
    [200, 1_000, 5_000, 30_000]
        .into_iter()
        .map(Duration::from_millis)
        .collect()
}

/// One way to authenticate, each secret from one place, a client
/// certificate with its key: async-nats would otherwise pick one silently.
fn check_nats_auth(nats: &raw::NatsConfig, errors: &mut Vec<ConfigError>) {
    let has_password = nats.password.is_some() || nats.password_file.is_some();
    if has_password && nats.user.is_none() {
        errors.push(ConfigError::new("nats.user", "a password needs a user"));
    }
    let ways: Vec<&str> = [
        ("user", nats.user.is_some()),
        ("token", nats.token.is_some() || nats.token_file.is_some()),
        ("nkey_seed_file", nats.nkey_seed_file.is_some()),
        ("creds_file", nats.creds_file.is_some()),
    ]
    .into_iter()
    .filter_map(|(way, set)| set.then_some(way))
    .collect();
    if ways.len() > 1 {
        errors.push(ConfigError::new(
            "nats",
            format!("set one way to authenticate, not {}", ways.join(" and ")),
        ));
    }
    if nats.password.is_some() && nats.password_file.is_some() {
        errors.push(ConfigError::new(
            "nats.password_file",
            "the password comes from the environment or from password_file, not both",
        ));
    }
    if nats.token.is_some() && nats.token_file.is_some() {
        errors.push(ConfigError::new(
            "nats.token_file",
            "the token comes from the environment or from token_file, not both",
        ));
    }
    if let Some(tls) = &nats.tls {
        match (&tls.cert, &tls.key) {
            (Some(_), None) => errors.push(ConfigError::new(
                "nats.tls.key",
                "a client certificate needs its key",
            )),
            (None, Some(_)) => errors.push(ConfigError::new(
                "nats.tls.cert",
                "a key needs its client certificate",
            )),
            (Some(_), Some(_)) | (None, None) => {}
        }
    }
}

/// Checks a parsed configuration and builds the [`Config`] the pipeline runs from.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();

    if raw.nats.url.trim().is_empty() {
        errors.push(ConfigError::new("nats.url", "must not be empty"));
    } else if let Err(message) = raw::server_list(&raw.nats.url) {
        errors.push(ConfigError::new("nats.url", message));
    }
    check_nats_auth(&raw.nats, &mut errors);

    for (name, source) in &raw.sources {
        check_name(&mut errors, &format!("sources.{name}"), name);
        if !is_valid_name(&source.stream) {
            errors.push(ConfigError::new(
                format!("sources.{name}.stream"),
                format!("invalid stream name {:?}", source.stream),
            ));
        }
        for (index, subject) in source.subjects.iter().enumerate() {
            if !is_valid_subject_pattern(subject) {
                errors.push(ConfigError::new(
                    format!("sources.{name}.subjects[{index}]"),
                    format!("invalid subject {subject:?}"),
                ));
            }
        }
    }
    for (name, source) in &raw.sources {
        let routed = raw
            .routes
            .iter()
            .filter(|route| route.from == *name)
            .flat_map(|route| &route.matches.subjects);
        check_partition_token(&mut errors, name, source, routed);
    }
    if raw.sources.is_empty() {
        errors.push(ConfigError::new("sources", "at least one source is needed"));
    }

    let mut consumers = raw.consumers.clone();
    let durable_prefix = match consumers.remove("durable_prefix") {
        None => DEFAULT_DURABLE_PREFIX.to_owned(),
        Some(serde_json::Value::String(prefix)) => prefix,
        Some(other) => {
            errors.push(ConfigError::new(
                "consumers.durable_prefix",
                format!("expected a string, found {other}"),
            ));
            DEFAULT_DURABLE_PREFIX.to_owned()
        }
    };
    check_name(&mut errors, "consumers.durable_prefix", &durable_prefix);
    let defaults: ConsumerOverrides =
        parse_each(&mut errors, "consumers", consumers).unwrap_or_default();
    let defaults = &defaults;
    check_overrides(&mut errors, "consumers", defaults);

    let mut sinks = BTreeMap::new();
    for (name, value) in &raw.sinks {
        check_name(&mut errors, &format!("sinks.{name}"), name);
        if let Some(sink) = parse_sink(&mut errors, name, value, defaults, &durable_prefix) {
            sinks.insert(name.clone(), sink);
        }
    }

    let routes = check_routes(&mut errors, &raw);

    if !is_valid_name(&raw.dead_letter.stream) {
        errors.push(ConfigError::new(
            "dead_letter.stream",
            format!("invalid stream name {:?}", raw.dead_letter.stream),
        ));
    }
    if !is_valid_subject(&raw.dead_letter.subject_prefix) {
        errors.push(ConfigError::new(
            "dead_letter.subject_prefix",
            format!("invalid subject {:?}", raw.dead_letter.subject_prefix),
        ));
    }
    for (name, source) in &raw.sources {
        if source.stream == raw.dead_letter.stream {
            errors.push(ConfigError::new(
                format!("sources.{name}.stream"),
                "a source cannot read the dead-letter stream",
            ));
        }
    }

    let listen = raw.metrics.listen.parse::<SocketAddr>().map_err(|err| {
        ConfigError::new(
            "metrics.listen",
            format!("expected host:port, {:?}: {err}", raw.metrics.listen),
        )
    });
    let listen = listen.map_err(|err| errors.push(err)).ok();
    if raw.metrics.lag_poll_interval.is_zero() {
        errors.push(ConfigError::new(
            "metrics.lag_poll_interval",
            "must be above 0",
        ));
    }

    check_limits(&mut errors, &raw.limits);
    let tracing = raw
        .tracing
        .as_ref()
        .and_then(|tracing| check_tracing(&mut errors, tracing));

    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let pipelines = derive_pipelines(&raw, &routes, &sinks);
    Ok(Config {
        nats: raw.nats,
        schemas: raw.schemas,
        sources: raw.sources,
        sinks,
        routes,
        dead_letter: raw.dead_letter,
        metrics: MetricsSettings {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 9464))),
            lag_poll_interval: raw.metrics.lag_poll_interval,
        },
        limits: raw.limits,
        tracing,
        upcasters: raw.upcasters,
        pipelines,
        locator: Default::default(),
    })
}

/// The smallest message limit accepted: an envelope's fixed fields alone
/// take a few hundred bytes.
const MIN_MESSAGE_BYTES: usize = 1024;

fn check_limits(errors: &mut Vec<ConfigError>, limits: &LimitsConfig) {
    if limits.max_message_bytes < MIN_MESSAGE_BYTES {
        errors.push(ConfigError::new(
            "limits.max_message_bytes",
            format!("must be at least {MIN_MESSAGE_BYTES}"),
        ));
    }
    // One message of the largest size must fit, or a consumer would stall.
    if limits.max_bytes_in_flight < limits.max_message_bytes {
        errors.push(ConfigError::new(
            "limits.max_bytes_in_flight",
            format!(
                "must be at least limits.max_message_bytes ({})",
                limits.max_message_bytes
            ),
        ));
    }
}

/// The OTLP path of traces, appended to `tracing.otlp_endpoint` as the
/// OpenTelemetry exporters do with `OTEL_EXPORTER_OTLP_ENDPOINT`.
const OTLP_TRACES_PATH: &str = "v1/traces";

fn check_tracing(
    errors: &mut Vec<ConfigError>,
    tracing: &TracingConfig,
) -> Option<TracingSettings> {
    let before = errors.len();
    let traces_url = match reqwest::Url::parse(&tracing.otlp_endpoint) {
        Err(error) => {
            errors.push(ConfigError::new(
                "tracing.otlp_endpoint",
                format!("invalid URL {:?}: {error}", tracing.otlp_endpoint),
            ));
            None
        }
        Ok(url) if !matches!(url.scheme(), "http" | "https") || !url.has_host() => {
            errors.push(ConfigError::new(
                "tracing.otlp_endpoint",
                format!(
                    "expected an http or https URL with a host, {:?}",
                    tracing.otlp_endpoint
                ),
            ));
            None
        }
        Ok(url) if url.password().is_some() => {
            errors.push(ConfigError::new(
                "tracing.otlp_endpoint",
                "must not hold a password",
            ));
            None
        }
        Ok(url) if url.query().is_some() || url.fragment().is_some() => {
            errors.push(ConfigError::new(
                "tracing.otlp_endpoint",
                "a base URL takes no query or fragment (spans go to <otlp_endpoint>/v1/traces)",
            ));
            None
        }
        Ok(mut url) => {
            let path = format!("{}/{OTLP_TRACES_PATH}", url.path().trim_end_matches('/'));
            url.set_path(&path);
            Some(url)
        }
    };
    if tracing.service_name.trim().is_empty() {
        errors.push(ConfigError::new(
            "tracing.service_name",
            "must not be empty",
        ));
    }
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        errors.push(ConfigError::new(
            "tracing.sample_ratio",
            format!("must be between 0.0 and 1.0, not {}", tracing.sample_ratio),
        ));
    }
    (errors.len() == before).then_some(TracingSettings {
        traces_url: traces_url?,
        service_name: tracing.service_name.clone(),
        sample_ratio: tracing.sample_ratio,
    })
}

/// A block that takes no keys of its own.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoKeys {}

/// Splits a sink block into its common keys and its type's keys, and parses
/// each with its full key path.
fn parse_sink(
    errors: &mut Vec<ConfigError>,
    name: &str,
    value: &serde_json::Value,
    defaults: &ConsumerOverrides,
    durable_prefix: &str,
) -> Option<SinkSpec> {
    let path = format!("sinks.{name}");
    let Some(block) = value.as_object() else {
        errors.push(ConfigError::new(path, "expected a mapping"));
        return None;
    };
    let mut common = serde_json::Map::new();
    let mut specific = serde_json::Map::new();
    let mut kind = None;
    let mut schema_version = None;
    for (key, value) in block {
        match key.as_str() {
            "type" => kind = Some(value.clone()),
            "schema_version" => schema_version = Some(value.clone()),
            key if SINK_COMMON_KEYS.contains(&key) => {
                common.insert(key.to_owned(), value.clone());
            }
            _ => {
                specific.insert(key.clone(), value.clone());
            }
        }
    }
    let overrides: Option<ConsumerOverrides> = parse_each(errors, &path, common);
    let schema_version = schema_version.and_then(|version| {
        match version.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(version) if version >= 1 => Some(version),
            _ => {
                errors.push(ConfigError::new(
                    format!("{path}.schema_version"),
                    format!("expected a version number >= 1, found {version}"),
                ));
                None
            }
        }
    });
    let kind = match kind.as_ref().and_then(|kind| kind.as_str()) {
        Some("jetstream") => {
            let config: Option<raw::JetStreamSinkConfig> =
                parse_at(errors, &path, serde_json::Value::Object(specific));
            config.and_then(|config| {
                Template::parse_subject(&config.subject)
                    .map_err(|err| {
                        errors.push(ConfigError::new(format!("{path}.subject"), err.to_string()))
                    })
                    .ok()?;
                Some(SinkKind::JetStream(config))
            })
        }
        Some("custom") => {
            let _: Option<NoKeys> = parse_at(errors, &path, serde_json::Value::Object(specific));
            Some(SinkKind::Custom)
        }
        Some("kv") => parse_at(errors, &path, serde_json::Value::Object(specific)).map(
            |config: crate::sink::kv::KvSinkConfig| {
                config.check(&path, errors);
                SinkKind::Kv(config)
            },
        ),
        Some("postgres") => parse_at(errors, &path, serde_json::Value::Object(specific)).map(
            |config: crate::sink::postgres::PostgresSinkConfig| {
                config.check(&path, errors);
                SinkKind::Postgres(config)
            },
        ),
        Some("http") => parse_at(errors, &path, serde_json::Value::Object(specific)).map(
            |config: crate::sink::http::HttpSinkConfig| {
                config.check(&path, errors);
                SinkKind::Http(config)
            },
        ),
        Some(other) => {
            errors.push(ConfigError::new(
                format!("{path}.type"),
                format!(
                    "unknown sink type {other:?} (known: {})",
                    SINK_TYPES.join(", ")
                ),
            ));
            None
        }
        None => {
            errors.push(ConfigError::new(
                format!("{path}.type"),
                format!("missing sink type (known: {})", SINK_TYPES.join(", ")),
            ));
            None
        }
    };
    let overrides = overrides?;
    check_overrides(errors, &path, &overrides);
    let kind_concurrency = kind.as_ref().and_then(SinkKind::default_concurrency);
    let consumer = merge(durable_prefix, defaults, &overrides, kind_concurrency);
    if let Some(kind) = &kind
        && kind.needs_per_key_order()
        && consumer.ordering != Ordering::PerKey
    {
        errors.push(ConfigError::new(
            format!("{path}.ordering"),
            format!(
                "a {} sink needs ordering per_key: it skips events by their sequence per aggregate",
                kind.type_name()
            ),
        ));
    }
    Some(SinkSpec {
        name: name.to_owned(),
        kind: kind?,
        consumer,
        schema_version,
    })
}

/// Deserializes `value`, naming errors by `prefix` plus the path inside it.
pub(crate) fn parse_at<T: DeserializeOwned>(
    errors: &mut Vec<ConfigError>,
    prefix: &str,
    value: serde_json::Value,
) -> Option<T> {
    serde_path_to_error::deserialize(value)
        .map_err(|err| {
            let inner = err.path().to_string();
            let path = if inner == "." {
                prefix.to_owned()
            } else if inner.starts_with('[') {
                format!("{prefix}{inner}")
            } else {
                format!("{prefix}.{inner}")
            };
            errors.push(ConfigError::new(path, err.into_inner().to_string()));
        })
        .ok()
}

/// As [`parse_at`], each key on its own first, so one bad value does not
/// hide the problems of the others; the keys that parse are kept, so the
/// checks after parsing still see them.
fn parse_each<T: DeserializeOwned>(
    errors: &mut Vec<ConfigError>,
    prefix: &str,
    block: serde_json::Map<String, serde_json::Value>,
) -> Option<T> {
    let mut good = serde_json::Map::new();
    for (key, value) in block {
        let single =
            serde_json::Value::Object([(key.clone(), value.clone())].into_iter().collect());
        if parse_at::<T>(errors, prefix, single).is_some() {
            good.insert(key, value);
        }
    }
    parse_at(errors, prefix, serde_json::Value::Object(good))
}

fn check_overrides(errors: &mut Vec<ConfigError>, path: &str, overrides: &ConsumerOverrides) {
    if overrides
        .ack_wait
        .is_some_and(|wait| wait < Duration::from_secs(1))
    {
        errors.push(ConfigError::new(
            format!("{path}.ack_wait"),
            "must be at least 1s",
        ));
    }
    if overrides
        .takeover_after
        .is_some_and(|after| after < Duration::from_secs(3))
    {
        // Pulls are renewed every third of it; below 3s a busy replica
        // could lose its consumer between two pulls.
        errors.push(ConfigError::new(
            format!("{path}.takeover_after"),
            "must be at least 3s",
        ));
    }
    if overrides
        .partitions
        .is_some_and(|count| !(1..=MAX_PARTITIONS).contains(&count))
    {
        errors.push(ConfigError::new(
            format!("{path}.partitions"),
            format!("must be between 1 and {MAX_PARTITIONS}"),
        ));
    }
    if overrides.max_ack_pending.is_some_and(|max| max < 1) {
        errors.push(ConfigError::new(
            format!("{path}.max_ack_pending"),
            "must be at least 1",
        ));
    }
    if overrides.concurrency.is_some_and(|count| count < 1) {
        errors.push(ConfigError::new(
            format!("{path}.concurrency"),
            "must be at least 1",
        ));
    }
    if let Some(retry) = &overrides.retry {
        if retry.max_attempts.is_some_and(|max| max < 1) {
            errors.push(ConfigError::new(
                format!("{path}.retry.max_attempts"),
                "must be at least 1",
            ));
        }
        if retry.backoff.as_ref().is_some_and(Vec::is_empty) {
            errors.push(ConfigError::new(
                format!("{path}.retry.backoff"),
                "needs at least one delay",
            ));
        }
        if retry
            .jitter
            .is_some_and(|jitter| !(0.0..=1.0).contains(&jitter))
        {
            errors.push(ConfigError::new(
                format!("{path}.retry.jitter"),
                "must be between 0.0 and 1.0",
            ));
        }
    }
}

fn merge(
    durable_prefix: &str,
    defaults: &ConsumerOverrides,
    sink: &ConsumerOverrides,
    kind_concurrency: Option<usize>,
) -> ConsumerSettings {
    let retries = [sink.retry.as_ref(), defaults.retry.as_ref()];
    let max_ack_pending = sink
        .max_ack_pending
        .or(defaults.max_ack_pending)
        .unwrap_or(DEFAULT_MAX_ACK_PENDING);
    // More in flight than the server lets out (`max_ack_pending`) only
    // waits; an explicit setting is kept as written.
    let kind_concurrency = kind_concurrency
        .map(|wanted| wanted.min(usize::try_from(max_ack_pending).unwrap_or(usize::MAX)));
    ConsumerSettings {
        durable_prefix: durable_prefix.to_owned(),
        ack_wait: sink
            .ack_wait
            .or(defaults.ack_wait)
            .unwrap_or(DEFAULT_ACK_WAIT),
        max_ack_pending,
        ordering: sink.ordering.or(defaults.ordering).unwrap_or_default(),
        concurrency: sink
            .concurrency
            .or(defaults.concurrency)
            .or(kind_concurrency)
            .unwrap_or(DEFAULT_CONCURRENCY),
        retry: RetryPolicy {
            max_attempts: retries
                .into_iter()
                .flatten()
                .find_map(|retry| retry.max_attempts)
                .unwrap_or(DEFAULT_MAX_ATTEMPTS),
            backoff: retries
                .into_iter()
                .flatten()
                .find_map(|retry| retry.backoff.clone())
                .unwrap_or_else(default_backoff),
            jitter: retries
                .into_iter()
                .flatten()
                .find_map(|retry| retry.jitter)
                .unwrap_or(DEFAULT_JITTER),
        },
        on_dead_letter: sink
            .on_dead_letter
            .or(defaults.on_dead_letter)
            .unwrap_or_default(),
        takeover_after: sink
            .takeover_after
            .or(defaults.takeover_after)
            .unwrap_or(DEFAULT_TAKEOVER_AFTER),
        partitions: sink.partitions.or(defaults.partitions).unwrap_or(1),
    }
}

fn check_routes(errors: &mut Vec<ConfigError>, raw: &RawConfig) -> Vec<RouteSpec> {
    let mut routes = Vec::new();
    for (index, route) in raw.routes.iter().enumerate() {
        let path = format!("routes[{index}]");
        if raw.routes[..index]
            .iter()
            .any(|other| other.name == route.name)
        {
            errors.push(ConfigError::new(
                format!("{path}.name"),
                format!("duplicate route name {:?}", route.name),
            ));
        }
        let source = raw.sources.get(&route.from);
        if source.is_none() {
            errors.push(ConfigError::new(
                format!("{path}.from"),
                format!("no source named {:?}", route.from),
            ));
        }
        if route.to.is_empty() {
            errors.push(ConfigError::new(format!("{path}.to"), "names no sink"));
        }
        for (position, sink) in route.to.iter().enumerate() {
            if !raw.sinks.contains_key(sink) {
                errors.push(ConfigError::new(
                    format!("{path}.to[{position}]"),
                    format!("no sink named {sink:?}"),
                ));
            }
        }
        for (position, event_type) in route.matches.event_types.iter().enumerate() {
            if event_type.trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("{path}.match.event_types[{position}]"),
                    "must not be empty",
                ));
            }
        }
        for (position, subject) in route.matches.subjects.iter().enumerate() {
            let key = format!("{path}.match.subjects[{position}]");
            if !is_valid_subject_pattern(subject) {
                errors.push(ConfigError::new(
                    key,
                    format!("invalid subject {subject:?}"),
                ));
            } else if let Some(source) = source
                && !source.subjects.is_empty()
                && !source.subjects.iter().any(|s| pattern_within(subject, s))
            {
                errors.push(ConfigError::new(
                    key,
                    format!(
                        "{subject:?} is outside the subjects of source {:?}",
                        route.from
                    ),
                ));
            }
        }
        routes.push(RouteSpec {
            name: route.name.clone(),
            from: route.from.clone(),
            event_types: route.matches.event_types.clone(),
            subjects: route.matches.subjects.clone(),
            to: route.to.clone(),
        });
    }
    routes
}

/// Whether every subject matching `inner` also matches `outer`.
fn pattern_within(inner: &str, outer: &str) -> bool {
    let outer_tokens: Vec<&str> = outer.split('.').collect();
    let inner_tokens: Vec<&str> = inner.split('.').collect();
    for (index, token) in outer_tokens.iter().enumerate() {
        match (*token, inner_tokens.get(index)) {
            (">", Some(_)) => return true,
            ("*", Some(t)) if *t != ">" => {}
            (literal, Some(t)) if literal == *t => {}
            _ => return false,
        }
    }
    inner_tokens.len() == outer_tokens.len()
}

fn derive_pipelines(
    raw: &RawConfig,
    routes: &[RouteSpec],
    sinks: &BTreeMap<String, SinkSpec>,
) -> Vec<PipelineSpec> {
    let mut pipelines: Vec<PipelineSpec> = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let Some(source) = raw.sources.get(&route.from) else {
            continue;
        };
        for sink_name in &route.to {
            let Some(sink) = sinks.get(sink_name) else {
                continue;
            };
            let position = pipelines
                .iter()
                .position(|p| p.source == route.from && p.sink == *sink_name);
            let pipeline = match position {
                Some(position) => &mut pipelines[position],
                None => {
                    let consumer = format!(
                        "{}-{}-{}",
                        sink.consumer.durable_prefix, route.from, sink_name
                    );
                    pipelines.push(PipelineSpec {
                        source: route.from.clone(),
                        stream: source.stream.clone(),
                        sink: sink_name.clone(),
                        durable_name: consumer.clone(),
                        consumer,
                        partition: Partitioning {
                            index: 0,
                            count: 1,
                            by_subject: false,
                        },
                        filter_subjects: Vec::new(),
                        routes: Vec::new(),
                    });
                    pipelines.last_mut().expect("just pushed")
                }
            };
            pipeline.routes.push(index);
        }
    }
    for pipeline in &mut pipelines {
        let source = &raw.sources[&pipeline.source];
        let wanted: Vec<&str> = if pipeline
            .routes
            .iter()
            .any(|&index| routes[index].subjects.is_empty())
        {
            source.subjects.iter().map(String::as_str).collect()
        } else {
            pipeline
                .routes
                .iter()
                .flat_map(|&index| routes[index].subjects.iter().map(String::as_str))
                .collect()
        };
        pipeline.filter_subjects = minimal_cover(&wanted);
    }
    // A partitioned pair is one consumer per partition, each reading the
    // pair's subjects and applying its share of the aggregates; where the
    // subjects carry the partition, each reads only its own.
    pipelines
        .into_iter()
        .flat_map(|pipeline| {
            let count = sinks[&pipeline.sink].consumer.partitions.max(1);
            let token = raw.sources[&pipeline.source].partition_token;
            (0..count).map(move |index| match count {
                1 => pipeline.clone(),
                _ => {
                    let partition = Partitioning {
                        index,
                        count,
                        by_subject: token.is_some(),
                    };
                    PipelineSpec {
                        durable_name: durable_name(&pipeline.consumer, partition),
                        partition,
                        filter_subjects: match token {
                            Some(token) => pipeline
                                .filter_subjects
                                .iter()
                                .flat_map(|pattern| partition_filter(pattern, token, index))
                                .collect(),
                            None => pipeline.filter_subjects.clone(),
                        },
                        ..pipeline.clone()
                    }
                }
            })
        })
        .collect()
}

/// `pattern` narrowed to partition `index` at `token` (1-based): the token
/// set to the index; a `>` at or before it becomes `*`s up to it, followed
/// by nothing or by `>`. Empty when the pattern has a literal there, or
/// too few tokens ([`check_partition_token`] refuses that).
fn partition_filter(pattern: &str, token: usize, index: u32) -> Vec<String> {
    let Some(at) = token.checked_sub(1) else {
        return Vec::new();
    };
    let index = index.to_string();
    let mut tokens: Vec<&str> = pattern.split('.').collect();
    match tokens.iter().position(|t| *t == ">") {
        Some(tail) if tail <= at => {
            tokens.truncate(tail);
            tokens.resize(at, "*");
            tokens.push(&index);
            let exact = tokens.join(".");
            vec![format!("{exact}.>"), exact]
        }
        _ if tokens.get(at) == Some(&"*") => {
            tokens[at] = &index;
            vec![tokens.join(".")]
        }
        _ => Vec::new(),
    }
}

/// A source's `partition_token` must be a wildcard token of every subject
/// its consumers may read (the source's and its routes'), or a partition's
/// filter could not be written.
fn check_partition_token<'a>(
    errors: &mut Vec<ConfigError>,
    name: &str,
    source: &'a raw::SourceConfig,
    routed: impl Iterator<Item = &'a String>,
) {
    let Some(token) = source.partition_token else {
        return;
    };
    let key = format!("sources.{name}.partition_token");
    if token == 0 {
        errors.push(ConfigError::new(
            key,
            "must be at least 1 (tokens count from 1)",
        ));
        return;
    }
    if source.subjects.is_empty() {
        errors.push(ConfigError::new(
            key,
            "needs the source's `subjects`, whose token it names",
        ));
        return;
    }
    for subject in source.subjects.iter().chain(routed) {
        if partition_filter(subject, token, 0).is_empty() {
            errors.push(ConfigError::new(
                key.clone(),
                format!("token {token} of {subject:?} is not a wildcard"),
            ));
        }
    }
}

/// Drops patterns already covered by another, since JetStream refuses
/// overlapping filters.
fn minimal_cover(patterns: &[&str]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for (index, pattern) in patterns.iter().enumerate() {
        let covered = patterns.iter().enumerate().any(|(other_index, other)| {
            other_index != index
                && pattern_within(pattern, other)
                && (!pattern_within(other, pattern) || other_index < index)
        });
        if !covered {
            kept.push((*pattern).to_owned());
        }
    }
    kept
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn check_name(errors: &mut Vec<ConfigError>, path: &str, name: &str) {
    if !is_valid_name(name) {
        errors.push(ConfigError::new(
            path,
            format!(
                "{name:?} may hold only letters, digits, '_' and '-' (it names a durable consumer)"
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    const GOOD: &str = "
nats: { url: nats://127.0.0.1:4222 }
sources:
  orders: { stream: ORDERS, subjects: ['orders.>'] }
sinks:
  out_a: { type: jetstream, subject: 'projections.a.{aggregate_id}', concurrency: 4 }
  out_b: { type: jetstream, subject: 'projections.b.{event_type}', retry: { max_attempts: 3 } }
routes:
  - name: all
    from: orders
    to: [out_a, out_b]
  - name: created
    from: orders
    match: { subjects: ['orders.created.>'] }
    to: [out_b]
consumers:
  durable_prefix: jl
  max_ack_pending: 50
";

    #[test]
    fn merges_defaults_and_derives_one_consumer_per_pair() {
        let config = load_str(GOOD).expect("valid");
        let a = &config.sinks["out_a"].consumer;
        assert_eq!((a.concurrency, a.max_ack_pending), (4, 50));
        assert_eq!(a.retry.max_attempts, DEFAULT_MAX_ATTEMPTS);
        let b = &config.sinks["out_b"].consumer;
        assert_eq!(
            (b.concurrency, b.retry.max_attempts),
            (DEFAULT_CONCURRENCY, 3)
        );
        let names: Vec<_> = config
            .pipelines
            .iter()
            .map(|p| p.durable_name.as_str())
            .collect();
        assert_eq!(names, ["jl-orders-out_a", "jl-orders-out_b"]);
        assert_eq!(config.pipelines[1].routes, [0, 1]);
        assert_eq!(config.pipelines[1].filter_subjects, ["orders.>"]);
    }

    #[test]
    fn a_postgres_sink_keeps_its_batches_in_flight_unless_told_otherwise() {
        let config = |consumers: &str, batch: &str| {
            load_str(&format!(
                "
nats: {{ url: nats://127.0.0.1:4222 }}
sources:
  orders: {{ stream: ORDERS, subjects: ['orders.>'] }}
sinks:
  table:
    type: postgres
    batch: {{ {batch} }}
    on: {{ orders.OrderCreated: {{ sql: 'SELECT 1' }} }}
  out: {{ type: jetstream, subject: 'out.{{aggregate_id}}' }}
routes:
  - {{ name: all, from: orders, to: [table, out] }}
consumers: {{ {consumers} }}
"
            ))
            .expect("valid")
        };
        let concurrency = |config: &Config, sink: &str| config.sinks[sink].consumer.concurrency;
        assert_eq!(concurrency(&config("", ""), "out"), DEFAULT_CONCURRENCY);
        let cases = [
            (
                "",
                "",
                1000,
                "batch.max_events x pool_size, capped by the default max_ack_pending",
            ),
            (
                "max_ack_pending: 5000",
                "max_events: 300",
                1200,
                "batch.max_events x pool_size",
            ),
            (
                "max_ack_pending: 100",
                "max_events: 2000",
                100,
                "capped by max_ack_pending",
            ),
            (
                "concurrency: 8",
                "max_events: 2000",
                8,
                "the file's setting wins",
            ),
        ];
        for (consumers, batch, expected, why) in cases {
            assert_eq!(
                concurrency(&config(consumers, batch), "table"),
                expected,
                "{why}"
            );
        }
    }

    #[test]
    fn every_error_names_its_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "sinks:",
                "sinks:\n  out_a: { type: jetstream, subjet: x }\n",
                "sinks.out_a.subjet",
            ),
            (
                "routes:",
                "routes:\n  - { name: r, from: nope, to: [out_a] }\n",
                "routes[0].from",
            ),
            (
                "routes:",
                "routes:\n  - { name: r, from: orders, to: [nope] }\n",
                "routes[0].to[0]",
            ),
            (
                "sinks:",
                "sinks:\n  out_a: { type: jetstream, subject: 'a.{bad}' }\n",
                "sinks.out_a.subject",
            ),
            (
                "sinks:",
                "sinks:\n  out_a: { type: kafka }\n",
                "sinks.out_a.type",
            ),
            (
                "sinks:",
                "sinks:\n  out_a: { type: postgres, on: { orders.OrderCreated: { sql: 'SELECT 1', per: row } } }\n",
                "sinks.out_a.on.orders.OrderCreated.per",
            ),
            (
                "sinks:",
                "sinks:\n  out_a: { type: jetstream, subject: a, ack_wait: forever }\n",
                "sinks.out_a.ack_wait",
            ),
            (
                "consumers:",
                "consumers:\n  max_ack_pending: 0\n",
                "consumers.max_ack_pending",
            ),
            (
                "metrics:",
                "metrics:\n  listen: nowhere\n",
                "metrics.listen",
            ),
            ("nats:", "nats:\n  url: x\n  colour: blue\n", "nats.colour"),
            (
                "nats:",
                "nats:\n  url: 'nats://127.0.0.1:4222,nats://127.0.0.1:port'\n",
                "nats.url",
            ),
            (
                "limits:",
                "limits:\n  max_message_bytes: 10\n",
                "limits.max_message_bytes",
            ),
            (
                "limits:",
                "limits:\n  max_message_bytes: 4096\n  max_bytes_in_flight: 1024\n",
                "limits.max_bytes_in_flight",
            ),
            (
                "nats:",
                "nats:\n  url: x\n  password_file: /p\n",
                "nats.user",
            ),
            (
                "nats:",
                "nats:\n  url: x\n  nkey_seed_file: /n\n  creds_file: /c\n",
                "nats",
            ),
            (
                "nats:",
                "nats:\n  url: x\n  tls: { key: /k }\n",
                "nats.tls.cert",
            ),
        ];
        for (section, replacement, expected_path) in cases {
            let text = replace_section(GOOD, section, replacement);
            let errors = load_str(&text).expect_err(expected_path);
            assert!(
                errors.0.iter().any(|e| e.path == *expected_path),
                "{expected_path}: got {errors}"
            );
        }
    }

    fn replace_section(text: &str, section: &str, replacement: &str) -> String {
        let mut out = String::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with(section) {
                out.push_str(replacement);
                skipping = true;
                continue;
            }
            if skipping && (line.starts_with(' ') || line.is_empty()) {
                continue;
            }
            skipping = false;
            out.push_str(line);
            out.push('\n');
        }
        if !skipping && !out.contains(replacement) {
            out.push_str(replacement);
        }
        out
    }

    #[test]
    fn tracing_is_off_unless_configured_and_checked_when_it_is() {
        assert_eq!(load_str(GOOD).expect("valid").tracing, None);
        let on = load_str(&format!(
            "{GOOD}tracing: {{ otlp_endpoint: 'http://127.0.0.1:4318/' }}\n"
        ))
        .expect("valid");
        let tracing = on.tracing.expect("on");
        assert_eq!(
            tracing.traces_url.as_str(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            (tracing.service_name.as_str(), tracing.sample_ratio),
            ("jetline", 1.0)
        );
        let prefixed = load_str(&format!(
            "{GOOD}tracing: {{ otlp_endpoint: 'https://collector/otel', service_name: orders, sample_ratio: 0.25 }}\n"
        ))
        .expect("valid")
        .tracing
        .expect("on");
        assert_eq!(
            prefixed.traces_url.as_str(),
            "https://collector/otel/v1/traces"
        );
        assert_eq!(
            (prefixed.service_name.as_str(), prefixed.sample_ratio),
            ("orders", 0.25)
        );

        let cases = [
            ("{ otlp_endpoint: 'not a url' }", "tracing.otlp_endpoint"),
            (
                "{ otlp_endpoint: 'grpc://collector:4317' }",
                "tracing.otlp_endpoint",
            ),
            (
                "{ otlp_endpoint: 'http://u:p@collector:4318' }",
                "tracing.otlp_endpoint",
            ),
            (
                "{ otlp_endpoint: 'http://collector:4318?x=1' }",
                "tracing.otlp_endpoint",
            ),
            // The missing key is named in the message of its block's error.
            ("{ service_name: jetline }", "tracing"),
            (
                "{ otlp_endpoint: 'http://c:4318', service_name: ' ' }",
                "tracing.service_name",
            ),
            (
                "{ otlp_endpoint: 'http://c:4318', sample_ratio: 1.5 }",
                "tracing.sample_ratio",
            ),
            (
                "{ otlp_endpoint: 'http://c:4318', sample_ratio: -0.1 }",
                "tracing.sample_ratio",
            ),
            (
                "{ otlp_endpoint: 'http://c:4318', colour: blue }",
                "tracing.colour",
            ),
        ];
        for (block, expected_path) in cases {
            let errors = load_str(&format!("{GOOD}tracing: {block}\n")).expect_err(block);
            assert!(
                errors.0.iter().any(|e| e.path == expected_path),
                "{block}: got {errors}"
            );
        }
    }

    #[test]
    fn overlapping_filters_are_reduced() {
        assert_eq!(
            minimal_cover(&["orders.>", "orders.a", "x.*"]),
            ["orders.>", "x.*"]
        );
        assert_eq!(minimal_cover(&["a.*", "a.*"]), ["a.*"]);
    }

    #[test]
    fn a_partition_token_narrows_each_partitions_filter() {
        assert_eq!(partition_filter("orders.*.*", 2, 3), ["orders.3.*"]);
        // A `>` reaching the token: the partition's subjects end there or go on.
        assert_eq!(
            partition_filter("orders.>", 2, 0),
            ["orders.0.>", "orders.0"]
        );
        assert_eq!(partition_filter(">", 3, 5), ["*.*.5.>", "*.*.5"]);
        assert_eq!(partition_filter("orders.*.>", 2, 1), ["orders.1.>"]);
        // No wildcard at the token, or no token there at all.
        assert!(partition_filter("orders.eu.*", 2, 0).is_empty());
        assert!(partition_filter("orders.*", 3, 0).is_empty());
        assert!(partition_filter("orders.*", 0, 0).is_empty());

        let yaml = GOOD
            .replace(
                "orders: { stream: ORDERS, subjects: ['orders.>'] }",
                "orders: { stream: ORDERS, subjects: ['orders.*.>'], partition_token: 2 }",
            )
            .replace("['orders.created.>']", "['orders.*.created']")
            + "  partitions: 2\n";
        let config = load_str(&yaml).expect("valid");
        let filters: Vec<(&str, &[String])> = config
            .pipelines
            .iter()
            .map(|p| (p.durable_name.as_str(), p.filter_subjects.as_slice()))
            .collect();
        assert_eq!(
            filters[0],
            ("jl-orders-out_a-p0", &["orders.0.>".to_owned()][..])
        );
        assert_eq!(
            filters[1],
            ("jl-orders-out_a-p1", &["orders.1.>".to_owned()][..])
        );
        assert!(config.pipelines.iter().all(|p| p.partition.by_subject));

        // The route's `orders.created.>` has a literal at token 2.
        let yaml = GOOD.replace(
            "orders: { stream: ORDERS, subjects: ['orders.>'] }",
            "orders: { stream: ORDERS, subjects: ['orders.>'], partition_token: 2 }",
        );
        let errors = load_str(&yaml).expect_err("refused").to_string();
        assert!(
            errors.contains("sources.orders.partition_token")
                && errors.contains("token 2 of \"orders.created.>\" is not a wildcard"),
            "{errors}"
        );
    }
}
