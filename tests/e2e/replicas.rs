//! Several replicas started with the same file: one consumes each consumer,
//! the others stand by (the server's priority-group pin is the fence), and a
//! standby takes over from a killed one with per-aggregate order and
//! exactly-once effect intact.

use std::{collections::BTreeMap, time::Duration};

use serde_json::Value;

use crate::support::*;

const AGGREGATES: usize = 5;
const PER_AGGREGATE: usize = 400;

fn replicated_yaml(url: &str) -> String {
    config_yaml(
        url,
        "
sources:
  orders: { stream: REPL, subjects: ['repl.>'] }
sinks:
  copy: { type: jetstream, subject: 'replout.{aggregate_id}' }
  counts:
    type: kv
    bucket: REPL_COUNTS
    key: 'order.{aggregate_id}'
    on:
      orders.OrderCreated:
        set: { last_event: event_id }
        increment: { events: 1 }
routes:
  - { name: all, from: orders, to: [copy, counts] }
consumers: { ack_wait: 5s, takeover_after: 3s, retry: { backoff: [200ms] } }
dead_letter: { stream: DLQ_REPL, subject_prefix: dlq_repl }
",
    )
}

/// The event number `n` of an aggregate, as its id says.
fn number(event_id: &str) -> usize {
    event_id
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// How many consumers the replica whose metrics listen on `port` holds.
async fn active_consumers(port: u16) -> Option<f64> {
    let (status, page) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await?;
    (status == 200).then_some(())?;
    metric_value(&page, "jetline_consumer_active", &[])
}

#[tokio::test]
async fn two_replicas_apply_each_event_once_and_a_standby_takes_over_from_a_killed_one() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "REPL", &["repl.>"]).await;
    create_stream(&js, "REPL_OUT", &["replout.>"]).await;
    let yaml = replicated_yaml(&server.url());
    let ports = [free_port(), free_port()];
    let start = |port: u16| {
        let listen = format!("127.0.0.1:{port}");
        Process::start_with_env(&yaml, &[("JETLINE__METRICS__LISTEN", &listen)])
    };
    let mut replicas = [Some(start(ports[0])), Some(start(ports[1]))];

    let ids: Vec<(String, String)> = (0..PER_AGGREGATE)
        .flat_map(|n| {
            (0..AGGREGATES).map(move |a| (format!("order-{a}"), format!("order-{a}-{n}")))
        })
        .collect();
    let outgoing = ids
        .iter()
        .enumerate()
        .map(|(n, (aggregate, id))| {
            Outgoing::binary("repl.created", &created_v3(id, aggregate, n as i64))
        })
        .collect();
    publish_all(&js, outgoing).await;

    // Each of the two consumers has exactly one active replica (not
    // necessarily the same one).
    let held = eventually(
        Duration::from_secs(20),
        "one owner per consumer",
        || async {
            let held = [
                active_consumers(ports[0]).await?,
                active_consumers(ports[1]).await?,
            ];
            (held[0] + held[1] == 2.0).then_some(held)
        },
    )
    .await;
    let active = if held[0] > 0.0 { 0 } else { 1 };
    eventually(
        Duration::from_secs(30),
        "part of the events applied",
        || async { (stream_count(&js, "REPL_OUT").await >= (ids.len() / 4) as u64).then_some(()) },
    )
    .await;
    replicas[active].take().expect("an active replica").kill();

    let standby = 1 - active;
    eventually(
        Duration::from_secs(30),
        "the standby takes over",
        || async { (active_consumers(ports[standby]).await? == 2.0).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(60), "every event copied", || async {
        (stream_count(&js, "REPL_OUT").await >= ids.len() as u64).then_some(())
    })
    .await;

    // JetStream sink: one message per event, each aggregate's in order.
    let copied = stream_messages(&js, "REPL_OUT").await;
    assert_eq!(copied.len(), ids.len());
    let mut by_aggregate: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for message in &copied {
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|value| value.as_str().to_owned())
            .expect("an event id");
        let aggregate = message.subject.trim_start_matches("replout.").to_owned();
        by_aggregate.entry(aggregate).or_default().push(number(&id));
    }
    for (aggregate, numbers) in &by_aggregate {
        let expected: Vec<usize> = (0..PER_AGGREGATE).collect();
        assert_eq!(numbers, &expected, "order of {aggregate}");
    }

    // KV sink: every event counted once, the last one last.
    let store = js.get_key_value("REPL_COUNTS").await.expect("bucket");
    let counts = eventually(Duration::from_secs(30), "every event counted", || async {
        let mut counts = BTreeMap::new();
        for aggregate in 0..AGGREGATES {
            let bytes = store.get(format!("order.order-{aggregate}")).await.ok()??;
            let document: Value = serde_json::from_slice(&bytes).ok()?;
            counts.insert(aggregate, document);
        }
        counts
            .values()
            .all(|document| document["events"].as_i64() >= Some(PER_AGGREGATE as i64))
            .then_some(counts)
    })
    .await;
    for (aggregate, document) in counts {
        assert_eq!(
            document["events"].as_i64(),
            Some(PER_AGGREGATE as i64),
            "{document}"
        );
        assert_eq!(
            document["last_event"].as_str(),
            Some(format!("order-{aggregate}-{}", PER_AGGREGATE - 1).as_str())
        );
    }
    let dead = stream_count(&js, "DLQ_REPL").await;
    assert_eq!(dead, 0, "nothing dead-lettered");
}
