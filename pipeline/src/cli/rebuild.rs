//! `jetline rebuild`: rebuilds one sink's projection with zero downtime.
//! The next generation (`generation.rs`) is built beside the live one, from
//! the first event of the stream, by its own consumers, while the live one
//! keeps serving and updating; once it has caught up it is made live for
//! readers in one compare-and-set, a running Jetline follows it, and the
//! old generation's consumers are removed. Its data stays until
//! `--drop-old`.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, consumer::DeliverPolicy};

use super::replay::{apply_until_caught_up, holder, named_sink, specs_of};
use crate::{
    Prepared, RunError,
    config::{PipelineSpec, SinkKind},
    generation::{self, Generation},
    nats, source,
    telemetry::Readiness,
};

#[derive(Debug, clap::Args)]
pub struct RebuildArgs {
    /// The sink whose projection is rebuilt beside the live one (a kv sink).
    #[arg(long)]
    pub sink: String,
    /// Once the new generation is live, delete the previous one's bucket.
    #[arg(long)]
    pub drop_old: bool,
}

/// How often the old consumers are looked at while a running Jetline
/// lets go of them.
const LOOK: Duration = Duration::from_millis(250);

/// Builds the next generation, makes it live and retires the previous
/// one, telling `progress` each step; returns the closing report.
pub async fn rebuild(
    prepared: Prepared,
    args: RebuildArgs,
    progress: &mut dyn FnMut(&str),
) -> Result<String, RunError> {
    let sink = named_sink(&prepared, &args.sink)?;
    // Only a KV projection has generations: readers find its bucket by key.
    let SinkKind::Kv(kv) = &sink.kind else {
        return Err(RunError::Usage(format!(
            "a {} sink cannot be rebuilt beside the live one: it has no generations to switch \
             readers between (jetline replay rebuilds it in place)",
            sink.kind.type_name()
        )));
    };
    let fingerprint = generation::fingerprint(sink);
    let takeover_after = sink.consumer.takeover_after;
    let config = &prepared.config;
    let client = nats::connect(&config.nats, Arc::new(Readiness::default())).await?;
    let js = jetstream::new(client);
    let store = generation::open(&js, &config.dead_letter.stream).await?;
    let (live, revision) = generation::read(&store, &args.sink).await?;
    let from = live
        .as_ref()
        .map_or(generation::FIRST, |live| live.generation);
    let next = from + 1;
    let mut old = prepared.clone();
    generation::apply_one(&mut old.config, &args.sink, from);
    let mut new = prepared.clone();
    generation::apply_one(&mut new.config, &args.sink, next);
    let (old_target, new_target) = (
        generation::kv_bucket(&kv.bucket, from),
        generation::kv_bucket(&kv.bucket, next),
    );
    let old_specs = specs_of(&old.config, &args.sink);
    let new_specs = specs_of(&new.config, &args.sink);

    for spec in &new_specs {
        if let Some(holder) = holder(&js, spec).await {
            return Err(RunError::Replay(format!(
                "generation {next} of sink {} is being built by another rebuild \
                 (consumer {} pinned to client {holder})",
                args.sink, spec.durable_name
            )));
        }
    }
    // What a rebuild that did not finish left is started over.
    for spec in &new_specs {
        if let Ok(stream) = js.get_stream(&spec.stream).await {
            let _ = stream.delete_consumer(&spec.durable_name).await;
        }
    }
    let _ = js.delete_key_value(&new_target).await;
    progress(&format!(
        "rebuild {}: building generation {next} in bucket {new_target} beside generation {from} \
         (bucket {old_target}), which keeps serving",
        args.sink
    ));
    let settings = &new.config.sinks[&args.sink].consumer;
    for spec in &new_specs {
        source::bind_from(&js, spec, settings, Some(DeliverPolicy::All)).await?;
    }
    let label = format!("rebuild {}", args.sink);
    // The new generation goes on applying through the switch, until the
    // live one has stopped writing: readers switched to it find it as far
    // along as the one they left, give or take the events in flight.
    let (applied, runner) =
        apply_until_caught_up(&new, &args.sink, &js, &new_specs, &label, progress).await?;

    let generation = Generation {
        sink: args.sink.clone(),
        generation: next,
        target: new_target.clone(),
        previous: Some(old_target.clone()),
        fingerprint,
        switched_at: now(),
    };
    if !generation::switch(&store, &generation, revision).await? {
        runner.stop().await?;
        return Err(RunError::Replay(format!(
            "another rebuild of sink {} went live first; this one's bucket {new_target} \
             was not made live (rebuild again to start over)",
            args.sink
        )));
    }
    progress(&format!(
        "switch: generation {next} of sink {} is live: key {} of bucket {} names bucket {new_target}",
        args.sink,
        args.sink,
        generation::bucket_name(&config.dead_letter.stream)
    ));

    let kept = retire(
        &js,
        &old_specs,
        takeover_after * 2 + Duration::from_secs(10),
    )
    .await;
    // A running Jetline now waits on the new consumers' pin, which this
    // hands over as it stops.
    runner.stop().await?;
    let consumers = match kept.as_slice() {
        [] => format!(
            "generation {from}'s consumer(s) {} removed",
            names(&old_specs)
        ),
        held => format!(
            "generation {from}'s consumer(s) {} still held by a Jetline that has not followed: \
             kept (stop it, then delete them)",
            held.join(", ")
        ),
    };
    let data = if args.drop_old {
        js.delete_key_value(&old_target)
            .await
            .map_err(|err| RunError::Replay(format!("delete bucket {old_target}: {err}")))?;
        format!("bucket {old_target} deleted")
    } else {
        format!("bucket {old_target} kept (--drop-old deletes it)")
    };
    Ok(format!(
        "rebuilt sink {}: generation {next} live in bucket {new_target}, {} deliveries applied \
         in {:.1}s; {consumers}; {data}\n",
        args.sink,
        applied.total,
        applied.elapsed.as_secs_f64()
    ))
}

fn names(specs: &[PipelineSpec]) -> String {
    let names: Vec<&str> = specs.iter().map(|s| s.durable_name.as_str()).collect();
    names.join(", ")
}

/// Deletes each old consumer once no replica holds it (a running Jetline
/// lets go when it follows the switch), waiting at most `patience`; the
/// names of those still held then, which are kept.
async fn retire(
    js: &jetstream::Context,
    specs: &[PipelineSpec],
    patience: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut left: Vec<&PipelineSpec> = specs.iter().collect();
    loop {
        let mut held = Vec::new();
        for spec in left {
            if holder(js, spec).await.is_some() {
                held.push(spec);
            } else if let Ok(stream) = js.get_stream(&spec.stream).await {
                let _ = stream.delete_consumer(&spec.durable_name).await;
            }
        }
        if held.is_empty() || tokio::time::Instant::now() >= deadline {
            return held.iter().map(|spec| spec.durable_name.clone()).collect();
        }
        left = held;
        tokio::time::sleep(LOOK).await;
    }
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
