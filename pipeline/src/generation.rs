//! Generations of a read model, for `jetline rebuild`. A sink's projection
//! is built under a generation number: generation 1 is the configuration
//! as written (its bucket, its consumers); generation `n` > 1 writes to
//! `<bucket>_g<n>` through consumers named `<consumer>-g<n>`. The live
//! generation of each sink is one key, the sink's name, in a KV bucket of
//! Jetline's own, `<dead_letter.stream>_GENERATIONS`: absent means 1.
//! Readers resolve it to the bucket they read; `run` applies it at start
//! and restarts its consumers in place when it changes.
//!
//! **Invariant:** a generation is made live only by a compare-and-set on
//! the key at the revision its rebuild started from, after it caught up:
//! two rebuilds cannot both switch, and readers never see one half-built.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkKind, SinkSpec, durable_name};

/// The bucket holding each sink's live generation.
pub fn bucket_name(dead_letter_stream: &str) -> String {
    format!("{dead_letter_stream}_GENERATIONS")
}

/// The generation every sink has until it is first rebuilt.
pub const FIRST: u32 = 1;

/// A sink's live generation, as stored under its name (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    pub sink: String,
    pub generation: u32,
    /// What readers read: the KV bucket holding this generation.
    pub target: String,
    /// What the generation before it wrote to, kept until `--drop-old`.
    pub previous: Option<String>,
    /// The sink's configuration it was built from, as [`fingerprint`].
    pub fingerprint: String,
    /// When it was made live (RFC 3339).
    pub switched_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("generations bucket {bucket}: {message}")]
    Bucket { bucket: String, message: String },
    #[error("generation of sink {sink}: {message}")]
    Entry { sink: String, message: String },
}

/// The bucket of generation `number` of a KV sink configured with `bucket`.
pub fn kv_bucket(bucket: &str, number: u32) -> String {
    match number {
        FIRST => bucket.to_owned(),
        n => format!("{bucket}_g{n}"),
    }
}

/// The consumer (the pair's name) of generation `number`.
pub fn consumer_name(consumer: &str, number: u32) -> String {
    match number {
        FIRST => consumer.to_owned(),
        n => format!("{consumer}-g{n}"),
    }
}

/// A short digest of what a sink writes (its kind's block as written),
/// telling a generation built from other rules from this configuration's.
pub fn fingerprint(sink: &SinkSpec) -> String {
    // FNV-1a 64: stable across processes, unlike the std hasher.
    let text = format!("{:?}", sink.kind);
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// Points `config` at generation `number` of `sink`: its bucket and every
/// consumer of its pairs. Generation 1 leaves it as written.
pub fn apply_one(config: &mut Config, sink: &str, number: u32) {
    let Some(spec) = config.sinks.get_mut(sink) else {
        return;
    };
    if let SinkKind::Kv(kv) = &mut spec.kind {
        kv.bucket = kv_bucket(&kv.bucket, number);
    }
    for pipeline in config.pipelines.iter_mut().filter(|p| p.sink == sink) {
        pipeline.consumer = consumer_name(&pipeline.consumer, number);
        pipeline.durable_name = durable_name(&pipeline.consumer, pipeline.partition);
    }
}

/// Points `config` at each sink's live generation.
pub fn apply(config: &mut Config, live: &BTreeMap<String, Generation>) {
    for (sink, generation) in live {
        apply_one(config, sink, generation.generation);
    }
}

/// The generation number each sink of `config` runs at, for [`watch`].
pub fn numbers(config: &Config, live: &BTreeMap<String, Generation>) -> BTreeMap<String, u32> {
    config
        .sinks
        .keys()
        .map(|sink| {
            let number = live.get(sink).map_or(FIRST, |g| g.generation);
            (sink.clone(), number)
        })
        .collect()
}

/// Says, for each sink whose live generation was built from other rules
/// than `config` holds, that those rules apply only from now on.
pub fn warn_on_other_rules(config: &Config, live: &BTreeMap<String, Generation>) {
    for (sink, built) in live {
        let Some(spec) = config.sinks.get(sink) else {
            continue;
        };
        let written = fingerprint(spec);
        if built.fingerprint != written {
            tracing::warn!(sink = %sink, generation = built.generation, built_from = %built.fingerprint, configured = %written,
                "The live generation was built from other rules than this configuration's; rebuild it to apply these to past events");
        }
    }
}

/// Opens the bucket, creating it when missing.
pub async fn open(
    jetstream: &jetstream::Context,
    dead_letter_stream: &str,
) -> Result<kv::Store, GenerationError> {
    let bucket = bucket_name(dead_letter_stream);
    let config = kv::Config {
        bucket: bucket.clone(),
        description: "jetline: the live generation of each rebuilt projection".into(),
        history: 8,
        ..Default::default()
    };
    crate::nats::key_value(jetstream, config)
        .await
        .map_err(|message| GenerationError::Bucket { bucket, message })
}

/// The live generation of `sink` (`None`: generation 1) and the key's
/// revision (0 when it was never written), for the compare-and-set.
pub async fn read(
    store: &kv::Store,
    sink: &str,
) -> Result<(Option<Generation>, u64), GenerationError> {
    let failed = |message: String| GenerationError::Entry {
        sink: sink.to_owned(),
        message,
    };
    let Some(entry) = store
        .entry(sink)
        .await
        .map_err(|err| failed(err.to_string()))?
    else {
        return Ok((None, 0));
    };
    match entry.operation {
        kv::Operation::Put => serde_json::from_slice(&entry.value)
            .map(|generation| (Some(generation), entry.revision))
            .map_err(|err| failed(format!("unreadable entry: {err}"))),
        kv::Operation::Delete | kv::Operation::Purge => Ok((None, entry.revision)),
    }
}

/// The live generation of every sink of `config` that has been rebuilt.
pub async fn read_all(
    store: &kv::Store,
    config: &Config,
) -> Result<BTreeMap<String, Generation>, GenerationError> {
    let mut live = BTreeMap::new();
    for sink in config.sinks.keys() {
        if let (Some(generation), _) = read(store, sink).await? {
            live.insert(sink.clone(), generation);
        }
    }
    Ok(live)
}

/// As [`read_all`] for a command that changes nothing: no bucket yet means
/// no sink was rebuilt.
pub async fn live(
    jetstream: &jetstream::Context,
    config: &Config,
) -> Result<BTreeMap<String, Generation>, GenerationError> {
    match jetstream
        .get_key_value(bucket_name(&config.dead_letter.stream))
        .await
    {
        Ok(store) => read_all(&store, config).await,
        Err(_) => Ok(BTreeMap::new()),
    }
}

/// Makes `generation` live if the key is still at `revision`; `false` when
/// another rebuild switched first.
pub async fn switch(
    store: &kv::Store,
    generation: &Generation,
    revision: u64,
) -> Result<bool, GenerationError> {
    let body = serde_json::to_vec(generation).unwrap_or_default();
    match store.update(&generation.sink, body.into(), revision).await {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(err) => Err(GenerationError::Entry {
            sink: generation.sink.clone(),
            message: err.to_string(),
        }),
    }
}

/// Cancels `changed` once some sink's live generation is no longer the
/// one in `applied` (sink -> generation number), or at `shutdown`.
pub async fn watch(store: kv::Store, applied: BTreeMap<String, u32>, changed: CancellationToken) {
    loop {
        let mut updates = match store.watch_with_history(">").await {
            Ok(updates) => updates,
            Err(error) => {
                tracing::warn!(error = %error, "Cannot watch the generations; retrying");
                tokio::select! {
                    _ = changed.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                _ = changed.cancelled() => return,
                entry = updates.next() => entry,
            };
            let Some(Ok(entry)) = entry else {
                break;
            };
            let Some(current) = applied.get(&entry.key) else {
                continue;
            };
            let number = match entry.operation {
                kv::Operation::Put => serde_json::from_slice::<Generation>(&entry.value)
                    .map(|generation| generation.generation)
                    .unwrap_or(*current),
                kv::Operation::Delete | kv::Operation::Purge => FIRST,
            };
            if number != *current {
                tracing::info!(sink = %entry.key, from = current, to = number, "A rebuilt generation went live; following it");
                changed.cancel();
                return;
            }
        }
    }
}
