//! `jetline replay`: rebuilds one sink's projection in place. Refuses while
//! a running Jetline holds the sink's consumers (unless `--force`); with
//! `--reset` empties the projection first (KV: purge the bucket;
//! PostgreSQL: the sink's `reset_sql` and its checkpoints); recreates each
//! consumer at the chosen position; applies events, as `run` would, until
//! the consumers are caught up; then exits 0.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use tokio_util::sync::CancellationToken;

use crate::{
    Generations, Prepared, RunError,
    config::{PipelineSpec, SinkKind, SinkSpec},
    generation,
    membership::Replication,
    nats,
    sink::{self, custom::CustomSinks},
    source,
    telemetry::Readiness,
};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The sink whose projection is rebuilt.
    #[arg(long)]
    pub sink: String,
    /// From the first event of the stream.
    #[arg(long, conflicts_with_all = ["from_seq", "from_time"], required_unless_present_any = ["from_seq", "from_time"])]
    pub from_start: bool,
    /// From this stream sequence.
    #[arg(long)]
    pub from_seq: Option<u64>,
    /// From this time (RFC 3339, e.g. 2026-01-02T03:04:05Z).
    #[arg(long, conflicts_with = "from_seq")]
    pub from_time: Option<String>,
    /// Empty the projection first.
    #[arg(long)]
    pub reset: bool,
    /// Replay even while a running Jetline holds the consumers.
    #[arg(long)]
    pub force: bool,
}

/// How often progress is reported and the consumers are read.
const TICK: Duration = Duration::from_secs(1);

/// Rebuilds the projection, telling `progress` how it goes (a line per
/// step, and one every second while applying); returns the closing report.
pub async fn replay(
    prepared: Prepared,
    args: ReplayArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<String, RunError> {
    let sink = named_sink(&prepared, &args.sink)?;
    let start = start_policy(&args)?;
    if args.reset {
        match &sink.kind {
            SinkKind::Kv(_) => {}
            SinkKind::Postgres(postgres) if postgres.reset_sql.is_some() => {}
            SinkKind::Postgres(_) => {
                return Err(RunError::Usage(format!(
                    "sinks.{}.reset_sql is not set: --reset needs the SQL that empties the projection",
                    args.sink
                )));
            }
            kind => {
                return Err(RunError::Usage(format!(
                    "a {} sink cannot be reset: what it sent is not Jetline's to take back \
                     (purge or delete its target yourself, or replay without --reset)",
                    kind.type_name()
                )));
            }
        }
    }
    let client = nats::connect(&prepared.config.nats, Arc::new(Readiness::default())).await?;
    let js = jetstream::new(client);
    // The live generation is the one replayed.
    let mut prepared = prepared;
    let live = generation::live(&js, &prepared.config).await?;
    generation::apply(&mut prepared.config, &live);
    let config = &prepared.config;
    let sink = &config.sinks[&args.sink];
    let specs = specs_of(config, &args.sink);
    for spec in &specs {
        if let Some(holder) = holder(&js, spec).await
            && !args.force
        {
            return Err(RunError::Replay(format!(
                "consumer {} is held by a running Jetline (pinned client {holder}): stop it, \
                 or wait takeover_after after it was killed, or pass --force",
                spec.durable_name
            )));
        }
    }

    if args.reset {
        match &sink.kind {
            SinkKind::Kv(kv) => {
                let stream = js
                    .get_stream(format!("KV_{}", kv.bucket))
                    .await
                    .map_err(|err| RunError::Replay(format!("bucket {}: {err}", kv.bucket)))?;
                stream
                    .purge()
                    .await
                    .map_err(|err| RunError::Replay(format!("purge {}: {err}", kv.bucket)))?;
                progress(&format!("reset: bucket {} purged", kv.bucket));
            }
            SinkKind::Postgres(postgres) => {
                sink::postgres::sink::reset(&args.sink, postgres)
                    .await
                    .map_err(|source| RunError::Sink {
                        sink: args.sink.clone(),
                        source,
                    })?;
                progress("reset: reset_sql run and the sink's checkpoints cleared");
            }
            SinkKind::JetStream(_) | SinkKind::Http(_) | SinkKind::Custom => {}
        }
    }

    // Recreated at the position: the server's pending count is then what
    // is left to apply.
    for spec in &specs {
        if let Ok(stream) = js.get_stream(&spec.stream).await {
            let _ = stream.delete_consumer(&spec.durable_name).await;
        }
        source::bind_from(&js, spec, &sink.consumer, Some(start)).await?;
    }
    let label = format!("replay {}", args.sink);
    let (applied, runner) =
        apply_until_caught_up(&prepared, &args.sink, &js, &specs, &label, progress).await?;
    runner.stop().await?;
    let pending = outstanding(&js, &specs).await.unwrap_or(0);
    Ok(format!(
        "replayed sink {}: {} deliveries applied in {:.1}s, pending {pending}",
        args.sink,
        applied.total,
        applied.elapsed.as_secs_f64()
    ))
}

/// The sink named on the command line, or a usage error listing the sinks.
pub(crate) fn named_sink<'a>(prepared: &'a Prepared, name: &str) -> Result<&'a SinkSpec, RunError> {
    let config = &prepared.config;
    config.sinks.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.sinks.keys().map(String::as_str).collect();
        RunError::Usage(format!(
            "no sink named {name:?} (sinks: {})",
            known.join(", ")
        ))
    })
}

/// The consumers of `sink`'s pairs.
pub(crate) fn specs_of(config: &crate::Config, sink: &str) -> Vec<PipelineSpec> {
    config
        .pipelines
        .iter()
        .filter(|spec| spec.sink == sink)
        .cloned()
        .collect()
}

/// What [`apply_until_caught_up`] applied, and how long it took.
pub(crate) struct Applied {
    pub total: u64,
    pub elapsed: Duration,
}

/// The one sink applying, as [`apply_until_caught_up`] left it running.
pub(crate) struct Runner {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
    label: String,
}

impl Runner {
    /// Lets what is in flight settle, hands the consumers back and stops.
    pub(crate) async fn stop(self) -> Result<(), RunError> {
        self.shutdown.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(RunError::Replay(format!("{} stopped: {join}", self.label))),
        }
    }
}

/// Runs `sink` alone from `prepared`, as the sole replica of `specs` (the
/// consumers, already positioned), until nothing is pending, telling
/// `progress` how it goes under `label` once a second; it goes on applying
/// until the [`Runner`] is stopped.
pub(crate) async fn apply_until_caught_up(
    prepared: &Prepared,
    sink: &str,
    js: &jetstream::Context,
    specs: &[PipelineSpec],
    label: &str,
    progress: &mut dyn FnMut(&str),
) -> Result<(Applied, Runner), RunError> {
    let total = outstanding(js, specs).await.unwrap_or(0);
    progress(&format!(
        "{label}: {} consumer(s) positioned, {total} deliveries to apply",
        specs.len()
    ));
    let mut only = prepared.clone();
    only.config.sinks.retain(|name, _| name == sink);
    only.config.pipelines.retain(|spec| spec.sink == sink);
    // Beside a running Jetline's endpoint, never on it.
    only.config.metrics.listen = ([127, 0, 0, 1], 0).into();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(crate::run_inner(
        only,
        shutdown.clone(),
        CustomSinks::default(),
        Replication::Sole,
        Generations::Fixed,
    ));
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        if running.is_finished() {
            break;
        }
        let Some(left) = outstanding(js, specs).await else {
            continue;
        };
        let done = total.saturating_sub(left);
        let elapsed = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / elapsed;
        let eta = if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "-".to_owned()
        };
        progress(&format!(
            "{label}: {done}/{total} ({:.0}%), {rate:.0}/s, ETA {eta}",
            if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            }
        ));
        if left == 0 {
            break;
        }
    }
    let applied = Applied {
        total,
        elapsed: started.elapsed(),
    };
    let runner = Runner {
        shutdown,
        task: running,
        label: label.to_owned(),
    };
    if runner.task.is_finished() {
        // It stopped on its own: a consumer could not start.
        runner.stop().await?;
        return Err(RunError::Replay(format!(
            "{label} stopped before catching up"
        )));
    }
    Ok((applied, runner))
}

/// Where the recreated consumers start.
fn start_policy(args: &ReplayArgs) -> Result<DeliverPolicy, RunError> {
    match (&args.from_seq, &args.from_time) {
        (Some(seq), _) => Ok(DeliverPolicy::ByStartSequence {
            start_sequence: (*seq).max(1),
        }),
        (None, Some(text)) => {
            let start_time =
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map_err(|err| RunError::Usage(format!("--from-time {text:?}: {err}")))?;
            Ok(DeliverPolicy::ByStartTime { start_time })
        }
        (None, None) => Ok(DeliverPolicy::All),
    }
}

/// The pinned client of the consumer's priority group, when a replica
/// holds it.
pub(crate) async fn holder(js: &jetstream::Context, spec: &PipelineSpec) -> Option<String> {
    let stream = js.get_stream(&spec.stream).await.ok()?;
    let info = stream.consumer_info(&spec.durable_name).await.ok()?;
    info.priority_groups
        .iter()
        .find_map(|group| group.pinned_client_id.clone())
}

/// Deliveries not yet applied: pending plus unacknowledged, over the
/// consumers (`None` when one cannot be read).
pub(crate) async fn outstanding(js: &jetstream::Context, specs: &[PipelineSpec]) -> Option<u64> {
    let mut left = 0;
    for spec in specs {
        let stream = js.get_stream(&spec.stream).await.ok()?;
        let info = stream.consumer_info(&spec.durable_name).await.ok()?;
        left += info.num_pending + info.num_ack_pending as u64;
    }
    Some(left)
}
