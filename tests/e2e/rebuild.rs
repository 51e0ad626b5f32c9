//! `jetline rebuild`: the next generation of a KV projection is built beside
//! the live one while events keep coming and a running Jetline keeps
//! applying them; readers resolving the generation key always find every
//! document complete; the running Jetline follows the switch with the
//! rules the file now holds; the old consumer goes, its bucket stays until
//! `--drop-old`; a later `run` starts on the live generation.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, kv};
use serde_json::Value;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);
const AGGREGATES: usize = 30;
/// Events per aggregate before the rebuild, and again during it.
const ROUND: usize = 8;

/// The configuration with the `counts` rule `rule`.
fn rebuild_yaml(url: &str, rule: &str) -> String {
    config_yaml(
        url,
        &format!(
            "
sources:
  s: {{ stream: RB, subjects: ['rb.>'] }}
sinks:
  counts:
    type: kv
    bucket: RB_COUNTS
    key: '{{aggregate_id}}'
    on:
      orders.OrderCreated: {rule}
  copy: {{ type: jetstream, subject: 'rbout.{{aggregate_id}}' }}
routes:
  - {{ name: all, from: s, to: [counts, copy] }}
consumers: {{ ack_wait: 5s, takeover_after: 3s }}
dead_letter: {{ stream: DLQ_RB, subject_prefix: dlq_rb }}
"
        ),
    )
}

const OLD_RULE: &str = "{ increment: { events: 1 } }";
/// The rebuilt rule also counts in `twice`, so a document written by the
/// old rules after the switch shows (`twice` != 2 x `events`).
const NEW_RULE: &str = "{ increment: { events: 1, twice: 2 } }";

/// `jetline <args> --config <file>`: exit code, stdout, stderr.
fn command(file: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let path = file.to_str().expect("a UTF-8 path");
    jetline_cli(&[args, &["--config", path]].concat(), "")
}

fn events(round: usize) -> Vec<Outgoing> {
    (0..AGGREGATES)
        .map(|a| {
            let n = (round * AGGREGATES + a) as i64;
            Outgoing::binary(
                "rb.created",
                &created_v3(&format!("e-{round}-{a}"), &format!("agg-{a}"), n),
            )
        })
        .collect()
}

/// The generation entry of `counts`, when one was written.
async fn live_generation(js: &jetstream::Context) -> Option<Value> {
    let store = js.get_key_value("DLQ_RB_GENERATIONS").await.ok()?;
    let bytes = store.get("counts").await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// What a reader does: the bucket the generation key names (the
/// configured one when there is none), then the document.
async fn resolve(js: &jetstream::Context) -> (String, kv::Store) {
    let bucket = match live_generation(js).await {
        Some(generation) => generation["target"].as_str().expect("target").to_owned(),
        None => "RB_COUNTS".to_owned(),
    };
    let store = js.get_key_value(&bucket).await.expect("the live bucket");
    (bucket, store)
}

async fn document(store: &kv::Store, key: &str) -> Option<Value> {
    let bytes = store.get(key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Every document of `store` has `events` == `expected` (and `twice`
/// twice that, when `twice` is counted).
async fn all_at(store: &kv::Store, expected: usize, twice: bool) -> bool {
    for a in 0..AGGREGATES {
        let Some(doc) = document(store, &format!("agg-{a}")).await else {
            return false;
        };
        if doc["events"] != expected || (twice && doc["twice"] != 2 * expected) {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn rebuild_under_load_switches_readers_to_a_complete_generation_that_run_follows() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "RB", &["rb.>"]).await;
    create_stream(&js, "RB_OUT", &["rbout.>"]).await;
    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(file.path(), rebuild_yaml(&server.url(), OLD_RULE)).expect("written");

    // Only a read model can have generations.
    let (code, _, stderr) = command(file.path(), &["rebuild", "--sink", "copy"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("a jetstream sink cannot be rebuilt beside the live one"),
        "{stderr}"
    );
    let (code, _, stderr) = command(file.path(), &["rebuild", "--sink", "nosuch"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no sink named \"nosuch\""), "{stderr}");

    for round in 0..ROUND {
        publish_all(&js, events(round)).await;
    }
    let live = Process::start_file(file.path(), &[], "info");
    eventually(TIMEOUT, "the first rounds applied", || async {
        let store = js.get_key_value("RB_COUNTS").await.ok()?;
        all_at(&store, ROUND, false).await.then_some(())
    })
    .await;

    // New rules in the file the running Jetline reads; the rebuild uses them.
    std::fs::write(file.path(), rebuild_yaml(&server.url(), NEW_RULE)).expect("rewritten");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn({
        let (js, stop, reads) = (js.clone(), Arc::clone(&stop), Arc::clone(&reads));
        async move {
            let mut seen = BTreeMap::<String, usize>::new();
            while !stop.load(Ordering::Relaxed) {
                let (bucket, store) = resolve(&js).await;
                for a in 0..AGGREGATES {
                    let key = format!("agg-{a}");
                    let doc = document(&store, &key)
                        .await
                        .unwrap_or_else(|| panic!("{key} missing from {bucket}"));
                    let events = doc["events"].as_u64().expect("events") as usize;
                    // Complete: at least everything applied before the rebuild.
                    assert!(events >= ROUND, "{key} in {bucket}: {doc}");
                    if bucket != "RB_COUNTS" {
                        assert_eq!(doc["twice"], 2 * events, "{key} in {bucket}: {doc}");
                    }
                    *seen.entry(bucket.clone()).or_default() += 1;
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }
    });
    let publisher = tokio::spawn({
        let js = js.clone();
        async move {
            for round in ROUND..2 * ROUND {
                publish_all(&js, events(round)).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        }
    });
    let (code, stdout, stderr) = {
        let path = file.path().to_owned();
        tokio::task::spawn_blocking(move || command(&path, &["rebuild", "--sink", "counts"]))
            .await
            .expect("rebuild ran")
    };
    assert_eq!(code, 0, "{stderr}\n{}", live.logs());
    assert!(
        stdout.contains("rebuilt sink counts: generation 2 live in bucket RB_COUNTS_g2"),
        "{stdout}"
    );
    assert!(
        stdout.contains("consumer(s) jetline-s-counts removed"),
        "{stdout}"
    );
    assert!(stdout.contains("bucket RB_COUNTS kept"), "{stdout}");
    assert!(
        stderr.contains("building generation 2 in bucket RB_COUNTS_g2"),
        "{stderr}"
    );
    publisher.await.expect("published");

    // Every event once in the new generation: the rebuild's and then the
    // running Jetline's, with the rules of the file.
    let new = js.get_key_value("RB_COUNTS_g2").await.expect("new bucket");
    eventually(TIMEOUT, "every event in generation 2", || async {
        all_at(&new, 2 * ROUND, true).await.then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let seen = reader.await.expect("no reader saw an incomplete document");
    assert!(reads.load(Ordering::Relaxed) > 2, "{seen:?}");
    assert!(seen.contains_key("RB_COUNTS_g2"), "{seen:?}");

    let generation = live_generation(&js).await.expect("generation key");
    assert_eq!(generation["generation"], 2, "{generation}");
    assert_eq!(generation["previous"], "RB_COUNTS", "{generation}");
    let stream = js.get_stream("RB").await.expect("stream");
    assert!(stream.consumer_info("jetline-s-counts").await.is_err());
    assert!(consumer_settled(&js, "RB", "jetline-s-counts-g2").await);
    // The copy was not touched: each event sent once.
    assert_eq!(
        stream_count(&js, "RB_OUT").await,
        (2 * ROUND * AGGREGATES) as u64
    );
    assert!(
        live.logs()
            .contains("A rebuilt generation went live; following it"),
        "{}",
        live.logs()
    );
    assert_eq!(live.terminate(), Some(0));

    // With no Jetline running: generation 3, the old consumer goes at once
    // and --drop-old deletes generation 2's bucket.
    let (code, stdout, stderr) =
        command(file.path(), &["rebuild", "--sink", "counts", "--drop-old"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("generation 3 live in bucket RB_COUNTS_g3"),
        "{stdout}"
    );
    assert!(stdout.contains("bucket RB_COUNTS_g2 deleted"), "{stdout}");
    assert!(js.get_key_value("RB_COUNTS_g2").await.is_err());
    assert!(js.get_key_value("RB_COUNTS").await.is_ok());
    let (code, stdout, stderr) = command(file.path(), &["status"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("jetline-s-counts-g3"), "{stdout}");

    // A later run starts on the live generation.
    let running = Running::start(&rebuild_yaml(&server.url(), NEW_RULE));
    publish_all(&js, events(2 * ROUND)).await;
    let third = js
        .get_key_value("RB_COUNTS_g3")
        .await
        .expect("generation 3");
    eventually(TIMEOUT, "the next events in generation 3", || async {
        all_at(&third, 2 * ROUND + 1, true).await.then_some(())
    })
    .await;
    running.stop().await;
}
