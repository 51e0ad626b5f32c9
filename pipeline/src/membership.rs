//! Which replica consumes which partition. Every replica keeps a lease in
//! a KV bucket of Jetline's own, `<dead_letter.stream>_REPLICAS`: its key
//! (the instance name), written again every third of the lease and gone
//! once the bucket's `max_age` (the lease) passes without a write, or at
//! once when the replica stops. Every replica reads the same live set and
//! computes the same assignment from it ([`owner`]); no replica decides
//! for another.
//!
//! **Invariant:** the assignment only says which replica *pulls* a
//! partition's consumer; the fence is the consumer's pinned priority
//! group. A replica whose view is stale pulls in vain: the server delivers
//! to the pinned client only, until the previous owner has handed the
//! partition back (unpinned) or stopped pulling for `takeover_after`.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::PipelineSpec;

/// The bucket holding every replica's lease.
pub fn bucket_name(dead_letter_stream: &str) -> String {
    format!("{dead_letter_stream}_REPLICAS")
}

/// This process's name among the replicas: `JETLINE_INSTANCE`, else the
/// host name (a pod's name in Kubernetes) with the process id and a random
/// suffix, so two processes on one host, or a restart, never share it.
pub fn instance_name() -> String {
    if let Ok(name) = std::env::var("JETLINE_INSTANCE")
        && !name.is_empty()
    {
        return name;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|host| host.trim().to_owned())
        })
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "jetline".to_owned());
    let suffix: u16 = rand::random();
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

/// The partition an aggregate belongs to, of `count`: FNV-1a (32 bits) of
/// its id modulo `count`, the hash nats-server's `partition()` subject
/// transform uses, so a stream partitioned by the server on an id token
/// agrees. An event whose aggregate id cannot be read belongs to partition 0,
/// which dead-letters it once.
pub fn partition_of(aggregate_id: &[u8], count: u32) -> u32 {
    fnv1a_32(aggregate_id) % count.max(1)
}

fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash: u32, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// The live replica that pulls partition `index` of `consumer` (the
/// durable name without its partition suffix): the partitions of each
/// consumer go round the replicas in name order, each consumer starting at
/// a different replica so that small consumers do not all land on the
/// first.
pub fn owner<'a>(members: &'a [String], consumer: &str, index: u32) -> Option<&'a str> {
    if members.is_empty() {
        return None;
    }
    let start = fnv1a_32(consumer.as_bytes()) as usize;
    let at = (start + index as usize) % members.len();
    Some(members[at].as_str())
}

/// What a replica writes in its lease: its name and the consumers it is
/// active on, for `jetline status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lease {
    pub instance: String,
    pub active: Vec<String>,
}

/// The consumers this replica is active on (pinned and applying), shared
/// by the consumer loops and written into the lease.
#[derive(Debug, Clone, Default)]
pub struct ActiveSet(Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>);

impl ActiveSet {
    pub fn set(&self, consumer: &str, active: bool) {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if active {
            set.insert(consumer.to_owned());
        } else {
            set.remove(consumer);
        }
    }

    fn list(&self) -> Vec<String> {
        let set = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        set.iter().cloned().collect()
    }
}

/// A partition consumer's ownership, as its loop sees it.
pub type Owned = watch::Receiver<bool>;

#[derive(Debug, thiserror::Error)]
#[error("replica leases in {bucket}: {message}")]
pub struct MembershipError {
    pub bucket: String,
    pub message: String,
}

/// The lease bucket, created when missing with `max_age` = `lease`
/// (updated when the configuration changed it), replicated three times
/// where the cluster has three servers.
pub async fn open(
    jetstream: &jetstream::Context,
    dead_letter_stream: &str,
    lease: Duration,
) -> Result<kv::Store, MembershipError> {
    let bucket = bucket_name(dead_letter_stream);
    let failed = |message: String| MembershipError {
        bucket: bucket.clone(),
        message,
    };
    let config = |num_replicas| kv::Config {
        bucket: bucket.clone(),
        description: "jetline: replica leases".into(),
        history: 1,
        max_age: lease,
        num_replicas,
        ..Default::default()
    };
    if let Ok(store) = jetstream.get_key_value(&bucket).await {
        let mut stream = jetstream
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|err| failed(err.to_string()))?;
        let info = stream.info().await.map_err(|err| failed(err.to_string()))?;
        if info.config.max_age != lease {
            let mut changed = info.config.clone();
            changed.max_age = lease;
            changed.duplicate_window = changed.duplicate_window.min(lease);
            jetstream
                .update_stream(changed)
                .await
                .map_err(|err| failed(err.to_string()))?;
        }
        return Ok(store);
    }
    match jetstream.create_key_value(config(3)).await {
        Ok(store) => Ok(store),
        // A single server, or a cluster of fewer than three.
        Err(_) => jetstream
            .create_key_value(config(1))
            .await
            .map_err(|err| failed(err.to_string())),
    }
}

/// The live leases, by instance name.
pub async fn leases(store: &kv::Store) -> Result<BTreeMap<String, Lease>, MembershipError> {
    let failed = |message: String| MembershipError {
        bucket: store.name.clone(),
        message,
    };
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(|err| failed(err.to_string()))?
        .try_collect()
        .await
        .map_err(|err| failed(err.to_string()))?;
    let mut leases = BTreeMap::new();
    for key in keys {
        if let Ok(Some(value)) = store.get(&key).await {
            let lease = serde_json::from_slice(&value).unwrap_or_else(|_| Lease {
                instance: key.clone(),
                active: Vec::new(),
            });
            leases.insert(key, lease);
        }
    }
    Ok(leases)
}

/// One partition consumer whose ownership this replica follows.
pub struct Partition {
    /// The consumer's durable name without the partition suffix.
    pub consumer: String,
    pub index: u32,
    pub owned: watch::Sender<bool>,
}

impl Partition {
    /// A partition of `spec`, and the receiver its loop watches.
    pub fn of(spec: &PipelineSpec) -> (Self, Owned) {
        let (owned, receiver) = watch::channel(false);
        let partition = Partition {
            consumer: spec.consumer.clone(),
            index: spec.partition.index,
            owned,
        };
        (partition, receiver)
    }
}

/// Keeps this replica's lease and each partition's ownership up to date
/// until `shutdown`; then removes the lease, so the others take over at
/// once rather than when it expires.
pub async fn keep(
    store: kv::Store,
    instance: String,
    lease: Duration,
    active: ActiveSet,
    partitions: Vec<Partition>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Replicas started together see each other once every one has written
    // its lease: claiming at the first write would take every partition and
    // hand most of them back a moment later.
    let mut announced = false;
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let written = Lease {
            instance: instance.clone(),
            active: active.list(),
        };
        let body = serde_json::to_vec(&written).unwrap_or_default();
        if let Err(error) = store.put(&instance, body.into()).await {
            tracing::warn!(instance = %instance, error = %error, "Cannot renew this replica's lease");
            // Once the lease has run out, the others count this replica
            // gone and take its partitions: it stops pulling them too.
            if renewed.elapsed() >= lease {
                release_all(&partitions);
            }
            continue;
        }
        renewed = tokio::time::Instant::now();
        if !announced {
            announced = true;
            continue;
        }
        let members: Vec<String> = match leases(&store).await {
            Ok(leases) => leases.into_keys().collect(),
            Err(error) => {
                tracing::warn!(error = %error, "Cannot read the replica leases");
                continue;
            }
        };
        for partition in &partitions {
            let mine = owner(&members, &partition.consumer, partition.index) == Some(&instance);
            partition.owned.send_if_modified(|owned| {
                let changed = *owned != mine;
                *owned = mine;
                changed
            });
        }
    }
    release_all(&partitions);
    let _ = store.purge(&instance).await;
}

/// This replica owns none of the partitions (each loop hands its back).
fn release_all(partitions: &[Partition]) {
    for partition in partitions {
        partition
            .owned
            .send_if_modified(|owned| std::mem::replace(owned, false));
    }
}

/// Whether this process shares partitions with other replicas (`run`) or
/// applies every partition itself (`replay`, which has checked that no
/// replica holds them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    Shared,
    Sole,
}

/// This replica among the others: its lease and the ownership of each
/// partition, kept only when some (source, sink) is partitioned.
pub struct Replicas {
    /// The consumers this replica is active on, for its lease.
    pub active: ActiveSet,
    /// Per partition's durable consumer: whether this replica owns it.
    pub owned: BTreeMap<String, Owned>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Replicas {
    pub async fn start(
        config: &crate::config::Config,
        jetstream: &async_nats::jetstream::Context,
        shutdown: &CancellationToken,
        replication: Replication,
    ) -> Result<Self, MembershipError> {
        let active = ActiveSet::default();
        let stop = shutdown.child_token();
        let partitioned: Vec<&PipelineSpec> = config
            .pipelines
            .iter()
            .filter(|spec| spec.is_partitioned() && replication == Replication::Shared)
            .collect();
        // The lease is the shortest takeover among the partitioned sinks: a
        // dead replica's partitions move about as fast as a pin expires.
        let Some(lease) = partitioned
            .iter()
            .map(|spec| config.sinks[&spec.sink].consumer.takeover_after)
            .min()
        else {
            return Ok(Self {
                active,
                owned: BTreeMap::new(),
                keeper: None,
                stop,
            });
        };
        let store = open(jetstream, &config.dead_letter.stream, lease).await?;
        let instance = instance_name();
        let mut owned = BTreeMap::new();
        let mut partitions = Vec::new();
        for spec in partitioned {
            let (partition, receiver) = Partition::of(spec);
            partitions.push(partition);
            owned.insert(spec.durable_name.clone(), receiver);
        }
        tracing::info!(instance = %instance, partitions = partitions.len(), lease = ?lease, "Sharing partitions with the other replicas");
        let keeper = tokio::spawn(keep(
            store,
            instance,
            lease,
            active.clone(),
            partitions,
            stop.clone(),
        ));
        Ok(Self {
            active,
            owned,
            keeper: Some(keeper),
            stop,
        })
    }

    /// Stops renewing the lease, and purges it.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Some(keeper) = self.keeper {
            let _ = keeper.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_natss_fnv1a() {
        // FNV-1a 32 of "" and of "a", as published with the algorithm.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(partition_of(b"a", 10), 0xe40c_292c % 10);
        assert_eq!(partition_of(b"anything", 1), 0);
        let counts = (0..8_000)
            .map(|n| partition_of(format!("order-{n}").as_bytes(), 8))
            .fold([0u32; 8], |mut counts, p| {
                counts[p as usize] += 1;
                counts
            });
        assert!(
            counts.iter().all(|&c| (800..1_200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn every_partition_has_one_owner_and_the_owners_are_spread() {
        let members: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut load = BTreeMap::<&str, u32>::new();
        for consumer in ["jetline-s-kv", "jetline-s-copy"] {
            for index in 0..8 {
                let owner = owner(&members, consumer, index).expect("an owner");
                *load.entry(owner).or_default() += 1;
            }
        }
        assert_eq!(load.values().sum::<u32>(), 16);
        assert!(load.values().all(|&n| (5..=6).contains(&n)), "{load:?}");
        assert_eq!(owner(&[], "c", 0), None);
        // Each replica computes the same owner from the same set.
        assert_eq!(owner(&members, "x", 5), owner(&members.clone(), "x", 5));
    }
}
