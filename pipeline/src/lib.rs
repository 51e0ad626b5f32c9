//! Jetline: projections from NATS JetStream event streams, driven by a YAML file.
//!
//! Code map, in the order an event travels:
//! - `config`: the YAML file -> a checked [`Config`] (every error with its key path).
//! - `schema`: the `.proto` directory -> [`schema::SchemaRegistry`].
//! - `schema_diff`: two registries and the chains -> what a schema change
//!   breaks for stored events (`jetline schema diff`).
//! - `source`: one durable pull consumer per (source, sink) -> [`source::Delivery`].
//! - `envelope`: delivery bytes -> validated [`envelope::Envelope`]
//!   (`strict_json` for JSON from outside).
//! - `wire_check`: a payload's bytes validated against its schema without
//!   building it, for sinks that pass the source's bytes on.
//! - `upcast`: an envelope -> the same event at its sink's target version.
//! - `route`: which sinks want an event.
//! - `lanes`: per-aggregate order, aggregates in parallel.
//! - `sink`: the [`sink::Sink`] trait and one module per kind.
//! - `outcome`: [`outcome::Outcome`] -> ack / nak / dead letter: the only place that acks.
//! - `dead_letter`: dead-letter reasons, headers and publishing.
//! - `generation`: the generations of a KV projection, which `rebuild`
//!   builds beside the live one and `run` follows.
//! - `pipeline`: one consumer's loop, tying the above together; it becomes
//!   active when the server delivers to this replica, and first recovers
//!   what a previous owner left unacked.
//! - `telemetry`: metric names, the lag poller, `/metrics`, `/healthz`,
//!   `/readyz`; the spans per event exported over OTLP (`telemetry::traces`).
//! - `template`: subject and key templates, checked to render what NATS takes.
//! - `text`: outside text cut to a bounded length for errors and logs.
//! - `cli`: the operator commands.
//!
//! [`run`] starts it all and returns after `shutdown` once in-flight events settled.

pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod envelope;
pub mod generation;
pub mod lanes;
pub mod membership;
pub mod nats;
pub mod outcome;
pub mod pipeline;
pub mod route;
pub mod schema;
pub mod schema_diff;
pub mod sink;
pub mod source;
pub mod strict_json;
pub mod telemetry;
pub mod template;
pub mod text;
pub mod upcast;
pub mod wire_check;

use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::{
    config::{ConfigError, ConfigErrors, SinkKind},
    dead_letter::{DeadLetterError, DeadLetters},
    envelope::Decoder,
    membership::{Replicas, Replication},
    pipeline::Pipeline,
    route::Router,
    schema::{SchemaError, SchemaRegistry},
    sink::{
        Sink, SinkError, custom::CustomSinks, http::HttpSink, jetstream::JetStreamSink, kv::KvSink,
        postgres::PostgresSink,
    },
    source::SourceError,
    telemetry::{ConsumerMetrics, Readiness, traces::Traces},
    upcast::{CodeSteps, Upcasters},
};

/// Why Jetline stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] nats::ConnectError),
    #[error(transparent)]
    Publish(#[from] cli::publish::PublishError),
    #[error(transparent)]
    DeadLetter(#[from] DeadLetterError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    #[error(transparent)]
    Generation(#[from] generation::GenerationError),
    #[error("sink {sink}: {source}")]
    Sink {
        sink: String,
        #[source]
        source: SinkError,
    },
    #[error("metrics endpoint: {0}")]
    Metrics(String),
    #[error(transparent)]
    Traces(#[from] telemetry::traces::TracesError),
    /// A rebuild that cannot go on (the consumer is held, the bucket
    /// cannot be purged).
    #[error("{0}")]
    Replay(String),
    #[error("{0}")]
    Usage(String),
}

impl RunError {
    /// 2 for configuration problems (the file or the schemas), 3 for a
    /// publish refused by an expectation (a concurrent append), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Publish(error) => error.exit_code(),
            RunError::Config(_) | RunError::Schema(_) | RunError::Usage(_) => 2,
            RunError::Sink { source, .. } if source.is_setup() => 2,
            RunError::Connect(error) if error.is_configuration() => 2,
            RunError::Connect(_)
            | RunError::DeadLetter(_)
            | RunError::Source(_)
            | RunError::Membership(_)
            | RunError::Generation(_)
            | RunError::Sink { .. }
            | RunError::Metrics(_)
            | RunError::Traces(_)
            | RunError::Replay(_) => 1,
        }
    }
}

/// A configuration checked against its schemas: what `check` reports on and
/// `run` starts from. No IO beyond reading the schema files.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub config: Config,
    pub decoder: Arc<Decoder>,
    /// The checked upcaster chains, with the warnings `check` prints.
    pub upcasters: Arc<Upcasters>,
}

/// Compiles the schemas and checks the configuration against them.
pub fn prepare(config: Config) -> Result<Prepared, RunError> {
    prepare_with(config, &CodeSteps::default())
}

/// As [`prepare`], with the code upcaster steps a program registers (YAML
/// refers to them as `- code: NAME`).
pub fn prepare_with(config: Config, code_steps: &CodeSteps) -> Result<Prepared, RunError> {
    let registry = SchemaRegistry::load(&config.schemas)?;
    let mut errors = route::check_against_schemas(&config, &registry);
    errors.extend(sink::check_against_schemas(&config, &registry));
    let upcasters = upcast::check::build(&config, &registry, code_steps)
        .map_err(|mut upcast_errors| errors.append(&mut upcast_errors))
        .ok();
    let (true, Some(upcasters)) = (errors.is_empty(), upcasters) else {
        let located = errors.into_iter().map(|e| config.locator.locate(e));
        return Err(RunError::Config(ConfigErrors(located.collect())));
    };
    let decoder = Decoder::new(registry, config.schemas.unknown_fields)
        .with_max_message_bytes(config.limits.max_message_bytes);
    Ok(Prepared {
        config,
        decoder: Arc::new(decoder),
        upcasters: Arc::new(upcasters),
    })
}

/// Runs every consumer of `config` until `shutdown` is cancelled, then lets
/// in-flight events settle and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    run_with(config, shutdown, CustomSinks::default()).await
}

/// As [`run`], with the sinks of `type: custom` supplied by the caller.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    custom_sinks: CustomSinks,
) -> Result<(), RunError> {
    run_prepared(prepare(config)?, shutdown, custom_sinks).await
}

/// The sinks of `type: custom` that `custom_sinks` does not supply: a
/// configuration error (the `jetline` binary supplies none).
pub fn unregistered_sinks(config: &Config, custom_sinks: &CustomSinks) -> Vec<ConfigError> {
    config
        .sinks
        .iter()
        .filter(|(name, sink)| {
            matches!(sink.kind, SinkKind::Custom) && custom_sinks.get(name).is_none()
        })
        .map(|(name, _)| {
            config.locator.locate(ConfigError::new(
                format!("sinks.{name}.type"),
                "custom sinks exist only in programs that register them; this one does not",
            ))
        })
        .collect()
}

/// As [`run_with`], from a configuration already prepared (e.g. by
/// [`prepare_with`], which registers code upcasters).
pub async fn run_prepared(
    prepared: Prepared,
    shutdown: CancellationToken,
    custom_sinks: CustomSinks,
) -> Result<(), RunError> {
    run_following(prepared, shutdown, custom_sinks, None).await
}

/// Reads the configuration again, for a rebuilt generation that went live
/// while running (its rules are in the file by then).
pub type Reload = Arc<dyn Fn() -> Result<Prepared, RunError> + Send + Sync>;

/// As [`run_prepared`], reading the configuration again with `reload`
/// each time a rebuilt generation goes live.
pub async fn run_reloading(
    prepared: Prepared,
    shutdown: CancellationToken,
    custom_sinks: CustomSinks,
    reload: Reload,
) -> Result<(), RunError> {
    run_following(prepared, shutdown, custom_sinks, Some(reload)).await
}

async fn run_following(
    prepared: Prepared,
    shutdown: CancellationToken,
    custom_sinks: CustomSinks,
    reload: Option<Reload>,
) -> Result<(), RunError> {
    let follow = Generations::Follow(reload);
    run_inner(
        prepared,
        shutdown,
        custom_sinks,
        Replication::Shared,
        follow,
    )
    .await
}

/// How a run treats the sinks' generations (`generation.rs`).
pub(crate) enum Generations {
    /// Each sink's live generation, followed when a rebuild switches it:
    /// the consumers stop, settle and start again on the new one.
    Follow(Option<Reload>),
    /// The configuration as given: `replay` and `rebuild` point it at the
    /// generation they apply.
    Fixed,
}

pub(crate) async fn run_inner(
    prepared: Prepared,
    shutdown: CancellationToken,
    custom_sinks: CustomSinks,
    replication: Replication,
    generations: Generations,
) -> Result<(), RunError> {
    // Nothing durable happens before what can be known is checked.
    let mut missing = unregistered_sinks(&prepared.config, &custom_sinks);
    missing.extend(sink::unset_environment(&prepared.config, |variable| {
        std::env::var_os(variable).is_some()
    }));
    if !missing.is_empty() {
        return Err(RunError::Config(ConfigErrors(missing)));
    }
    let config = &prepared.config;
    for warning in prepared.upcasters.warnings() {
        tracing::warn!(path = %warning.path, warning = %warning.message, "Upcaster chain warning");
    }
    let readiness = Arc::new(Readiness::default());
    let handle = telemetry::install_recorder().map_err(RunError::Metrics)?;
    // Exported as 0 from the start, so "never connected" shows on `/metrics`.
    readiness.set_connected(false);
    telemetry::register_sinks(config.sinks.keys());
    let upkeep = tokio::spawn(telemetry::upkeep(handle.clone(), shutdown.clone()));
    let address = telemetry::serve(
        config.metrics.listen,
        handle,
        Arc::clone(&readiness),
        shutdown.clone(),
    )
    .await
    .map_err(|err| {
        RunError::Metrics(format!("cannot listen on {}: {err}", config.metrics.listen))
    })?;
    tracing::info!(address = %address, "Metrics endpoint listening");
    // Built on the runtime: its batch exporter is a task.
    let traces = config.tracing.as_ref().map(Traces::start).transpose()?;
    if let Some(tracing) = &config.tracing {
        tracing::info!(endpoint = %tracing.traces_url, "Exporting traces over OTLP");
    }

    let result = async {
        let client = nats::connect(&config.nats, Arc::clone(&readiness)).await?;
        let run = RunContext {
            client: &client,
            custom_sinks: &custom_sinks,
            replication,
            readiness: &readiness,
            traces: traces.as_ref(),
        };
        let result = match generations {
            Generations::Fixed => run.consumers(&prepared, &shutdown).await,
            Generations::Follow(reload) => run.following(prepared.clone(), reload, &shutdown).await,
        };
        // Pending acks and nak's are flushed before the connection goes.
        let _ = client.flush().await;
        result
    }
    .await;
    // It holds nothing to settle.
    upkeep.abort();
    // The spans of the events settled last are exported before returning,
    // also when a consumer could not start.
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    result
}

/// What every start of the consumers shares.
struct RunContext<'a> {
    client: &'a async_nats::Client,
    custom_sinks: &'a CustomSinks,
    replication: Replication,
    readiness: &'a Arc<Readiness>,
    traces: Option<&'a Traces>,
}

impl RunContext<'_> {
    /// Runs each sink at its live generation until `shutdown`; when a
    /// rebuild makes another generation live, the consumers stop and
    /// settle, the configuration is read again, and they start on it.
    async fn following(
        &self,
        mut prepared: Prepared,
        reload: Option<Reload>,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        let jetstream = async_nats::jetstream::new(self.client.clone());
        let store = generation::open(&jetstream, &prepared.config.dead_letter.stream).await?;
        loop {
            let live = generation::read_all(&store, &prepared.config).await?;
            generation::warn_on_other_rules(&prepared.config, &live);
            let applied = generation::numbers(&prepared.config, &live);
            let mut current = prepared.clone();
            generation::apply(&mut current.config, &live);
            let switched = shutdown.child_token();
            let watcher = tokio::spawn(generation::watch(store.clone(), applied, switched.clone()));
            let result = self.consumers(&current, &switched).await;
            switched.cancel();
            let _ = watcher.await;
            if result.is_err() || shutdown.is_cancelled() {
                return result;
            }
            if let Some(reload) = &reload {
                match reload() {
                    Ok(reloaded) => prepared = reloaded,
                    Err(error) => tracing::error!(error = %error,
                        "Cannot read the configuration again; going on with the one running"),
                }
            }
        }
    }

    /// Starts one loop per consumer and waits for them all.
    async fn consumers(
        &self,
        prepared: &Prepared,
        shutdown: &CancellationToken,
    ) -> Result<(), RunError> {
        let (custom_sinks, replication, readiness, traces) = (
            self.custom_sinks,
            self.replication,
            self.readiness,
            self.traces,
        );
        let config = &prepared.config;
        readiness.expect_consumers(config.pipelines.len());
        let client = self.client;
        let jetstream = async_nats::jetstream::new(client.clone());
        let dead_letters = DeadLetters::new(
            jetstream.clone(),
            &config.dead_letter.stream,
            &config.dead_letter.subject_prefix,
        );
        dead_letters.ensure_stream().await?;
        let replicas = Replicas::start(config, &jetstream, shutdown, replication).await?;

        let mut consumers = JoinSet::new();
        for (sink_name, sink) in &config.sinks {
            let spawn = SpawnContext {
                prepared,
                jetstream: &jetstream,
                dead_letters: &dead_letters,
                readiness,
                shutdown,
                replicas: &replicas,
                traces,
            };
            let sink_error = |source| RunError::Sink {
                sink: sink_name.clone(),
                source,
            };
            match &sink.kind {
                SinkKind::JetStream(settings) => {
                    let built =
                        JetStreamSink::new(jetstream.clone(), settings).map_err(|source| {
                            RunError::Sink {
                                sink: sink_name.clone(),
                                source,
                            }
                        })?;
                    spawn.consumers_of(sink_name, Arc::new(built), &mut consumers);
                }
                SinkKind::Custom => {
                    if let Some(custom) = custom_sinks.get(sink_name) {
                        spawn.consumers_of(sink_name, Arc::new(custom), &mut consumers);
                    }
                }
                SinkKind::Kv(settings) => {
                    let built = KvSink::open(jetstream.clone(), sink_name, settings)
                        .await
                        .map_err(sink_error)?;
                    spawn.consumers_of(sink_name, Arc::new(built), &mut consumers);
                }
                SinkKind::Postgres(settings) => {
                    let feeders = config
                        .pipelines
                        .iter()
                        .filter(|pipeline| pipeline.sink == *sink_name)
                        .count()
                        * sink.consumer.concurrency;
                    let built = PostgresSink::start(
                        sink_name,
                        settings,
                        prepared.decoder.registry(),
                        sink.schema_version,
                        feeders,
                    )
                    .map_err(sink_error)?;
                    spawn.consumers_of(sink_name, Arc::new(built), &mut consumers);
                }
                SinkKind::Http(settings) => {
                    let built = HttpSink::new(sink_name, settings).map_err(sink_error)?;
                    spawn.consumers_of(sink_name, Arc::new(built), &mut consumers);
                }
            }
        }
        tracing::info!(consumers = config.pipelines.len(), "Jetline running");
        let poller = tokio::spawn(telemetry::lag::poll(
            jetstream.clone(),
            config.pipelines.clone(),
            config.metrics.lag_poll_interval,
            Arc::clone(readiness),
            shutdown.clone(),
        ));

        let mut first_error = None;
        while let Some(joined) = consumers.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(error = %error, "Consumer failed");
                    // One consumer that cannot start stops the process: better a
                    // clear exit than a projection silently not running.
                    shutdown.cancel();
                    first_error.get_or_insert(error);
                }
                Err(join_error) => tracing::error!(error = %join_error, "Consumer task panicked"),
            }
        }
        // It holds nothing to settle.
        poller.abort();
        // The lease goes last: the consumers have handed back their partitions.
        replicas.stop().await;
        match first_error {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }
}

struct SpawnContext<'a> {
    prepared: &'a Prepared,
    jetstream: &'a async_nats::jetstream::Context,
    dead_letters: &'a DeadLetters,
    readiness: &'a Arc<Readiness>,
    shutdown: &'a CancellationToken,
    replicas: &'a Replicas,
    traces: Option<&'a Traces>,
}

impl SpawnContext<'_> {
    /// Spawns one consumer loop per source that routes feed into `sink_name`.
    fn consumers_of<S: Sink>(
        &self,
        sink_name: &str,
        sink: Arc<S>,
        consumers: &mut JoinSet<Result<(), SourceError>>,
    ) {
        let config = &self.prepared.config;
        let schema_version = config.sinks[sink_name].schema_version;
        let event_types = self.prepared.decoder.registry().event_types();
        // Per event type, the versions this sink's events are upcast from,
        // and the one they go to.
        let upcasts: Vec<(&str, Vec<u32>, u32)> = event_types
            .iter()
            .filter_map(|(event_type, versions)| {
                let target = self
                    .prepared
                    .upcasters
                    .target_version(event_type, schema_version)
                    .ok()?;
                let from = versions.iter().copied().filter(|v| *v < target).collect();
                Some((*event_type, from, target))
            })
            .collect();
        for spec in config.pipelines.iter().filter(|p| p.sink == sink_name) {
            let metrics = ConsumerMetrics::new(
                &spec.source,
                sink_name,
                &spec.durable_name,
                event_types.keys().copied(),
                upcasts.iter().cloned(),
            );
            let pipeline = Arc::new(Pipeline {
                metrics,
                client: self.jetstream.client(),
                spec: spec.clone(),
                settings: config.sinks[sink_name].consumer.clone(),
                router: Router::new(spec.routes.iter().map(|&index| &config.routes[index])),
                decoder: Arc::clone(&self.prepared.decoder),
                upcasters: Arc::clone(&self.prepared.upcasters),
                schema_version,
                sink: Arc::clone(&sink),
                dead_letters: self.dead_letters.clone(),
                readiness: Arc::clone(self.readiness),
                limits: config.limits.clone(),
                parked: std::sync::OnceLock::new(),
                owned: self.replicas.owned.get(&spec.durable_name).cloned(),
                active_set: self.replicas.active.clone(),
                partition_mismatch: Default::default(),
                tracer: self
                    .traces
                    .map(|traces| traces.consumer(&spec.source, sink_name)),
            });
            consumers.spawn(pipeline.run(self.jetstream.clone(), self.shutdown.clone()));
        }
    }
}
