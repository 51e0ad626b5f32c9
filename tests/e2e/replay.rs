//! `jetline replay`: rebuilds a projection in place. Refused while a running
//! Jetline holds the sink's consumer, refused with `--reset` for a sink that
//! cannot be emptied; with `--reset` on a KV sink, a damaged projection comes
//! back equal to the events; `run` afterwards goes on from where it ended.

use std::{process::Command, time::Duration};

use serde_json::Value;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

fn replay_yaml(url: &str) -> String {
    config_yaml(
        url,
        "
sources:
  s: { stream: RP, subjects: ['rp.>'] }
sinks:
  counts:
    type: kv
    bucket: RP_COUNTS
    key: '{aggregate_id}'
    on:
      orders.OrderCreated: { increment: { events: 1 }, set: { last: event_id } }
  copy: { type: jetstream, subject: 'rpout.{aggregate_id}' }
routes:
  - { name: all, from: s, to: [counts, copy] }
consumers: { ack_wait: 5s, takeover_after: 3s }
dead_letter: { stream: DLQ_RP, subject_prefix: dlq_rp }
",
    )
}

/// `jetline replay <args>`: exit code, stdout, stderr.
fn replay(file: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(jetline_bin())
        .args(["replay", "--config"])
        .arg(file)
        .args(args)
        .output()
        .expect("jetline replay runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn count(store: &async_nats::jetstream::kv::Store, key: &str) -> Option<Value> {
    let bytes = store.get(key).await.ok()??;
    serde_json::from_slice(&bytes).ok()
}

#[tokio::test]
async fn replay_rebuilds_a_damaged_projection_and_run_goes_on_after_it() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "RP", &["rp.>"]).await;
    create_stream(&js, "RP_OUT", &["rpout.>"]).await;
    let events: Vec<Outgoing> = (0..20)
        .flat_map(|n| {
            ["a", "b", "c"].map(|aggregate| {
                Outgoing::binary(
                    "rp.created",
                    &created_v3(&format!("{aggregate}-{n}"), aggregate, n),
                )
            })
        })
        .collect();
    publish_all(&js, events).await;
    let yaml = replay_yaml(&server.url());
    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(file.path(), &yaml).expect("config written");

    // Applied once by a running Jetline, which holds the consumers.
    let running = Process::start(&yaml);
    eventually(TIMEOUT, "every event applied", || async {
        consumer_settled(&js, "RP", "jetline-s-counts")
            .await
            .then_some(())
    })
    .await;
    let (code, _, stderr) = replay(file.path(), &["--sink", "counts", "--from-start"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("held by a running Jetline"), "{stderr}");
    assert_eq!(running.terminate(), Some(0));

    // The projection damaged by hand; a JetStream sink cannot be reset.
    let store = js.get_key_value("RP_COUNTS").await.expect("bucket");
    store
        .put("a", "{\"events\": 999}".into())
        .await
        .expect("damaged");
    store.delete("b").await.expect("deleted");
    let (code, _, stderr) = replay(file.path(), &["--sink", "copy", "--from-start", "--reset"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("a jetstream sink cannot be reset"),
        "{stderr}"
    );

    let (code, stdout, stderr) = replay(
        file.path(),
        &["--sink", "counts", "--from-start", "--reset"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("replayed sink counts: 60 deliveries"),
        "{stdout}"
    );
    assert!(
        stderr.contains("reset: bucket RP_COUNTS purged"),
        "{stderr}"
    );
    for aggregate in ["a", "b", "c"] {
        let document = count(&store, aggregate).await.expect("rebuilt");
        assert_eq!(document["events"], 20, "{aggregate}: {document}");
        assert_eq!(document["last"], format!("{aggregate}-19"), "{document}");
    }
    // The copy was not replayed: one message per event still.
    assert_eq!(stream_count(&js, "RP_OUT").await, 60);

    // `run` binds the replayed consumer as it is and goes on.
    let running = Running::start(&yaml);
    publish_all(
        &js,
        vec![Outgoing::binary("rp.created", &created_v3("a-20", "a", 20))],
    )
    .await;
    eventually(TIMEOUT, "the next event applied", || async {
        let document = count(&store, "a").await?;
        (document["events"] == 21).then_some(())
    })
    .await;
    running.stop().await;
}
