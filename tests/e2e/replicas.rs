//! Several replicas started with the same file: one consumes each consumer,
//! the others stand by (the server's priority-group pin is the fence), and a
//! standby takes over from a killed one with per-aggregate order and
//! exactly-once effect intact.

use std::time::Duration;

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

    // JetStream sink: one message per event, each aggregate's in order;
    // KV sink: every event counted once, the last one last.
    accounting::assert_copied_once_in_order(&js, "REPL_OUT", "replout.", AGGREGATES, PER_AGGREGATE)
        .await;
    accounting::assert_counted_once(
        &js,
        "REPL_COUNTS",
        AGGREGATES,
        PER_AGGREGATE,
        Duration::from_secs(30),
    )
    .await;
    let dead = stream_count(&js, "DLQ_REPL").await;
    assert_eq!(dead, 0, "nothing dead-lettered");
}
