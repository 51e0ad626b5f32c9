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

/// Publishes `per_aggregate` events of each of `aggregates` aggregates,
/// interleaved, on `subject`; their (aggregate id, event id) pairs.
async fn publish_interleaved(
    js: &async_nats::jetstream::Context,
    subject: &str,
    aggregates: usize,
    per_aggregate: usize,
) -> Vec<(String, String)> {
    let ids: Vec<(String, String)> = (0..per_aggregate)
        .flat_map(|n| {
            (0..aggregates).map(move |a| (format!("order-{a}"), format!("order-{a}-{n}")))
        })
        .collect();
    let outgoing = ids
        .iter()
        .enumerate()
        .map(|(n, (aggregate, id))| Outgoing::binary(subject, &created_v3(id, aggregate, n as i64)))
        .collect();
    publish_all(js, outgoing).await;
    ids
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

    let ids = publish_interleaved(&js, "repl.created", AGGREGATES, PER_AGGREGATE).await;

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

/// A NATS restart longer than `takeover_after` with two replicas and a
/// slow webhook: the server forgets the pin, and either replica may be
/// pinned afterwards. The one that was active still holds events it had
/// received and not started, more than it could apply before the other's
/// recovery ends; it must find the pin gone and hand them back rather than
/// apply them beside the newly pinned one.
#[tokio::test]
async fn after_a_nats_restart_either_replica_may_go_on_and_order_holds() {
    const AGGREGATES: usize = 4;
    const PER_AGGREGATE: usize = 250;
    let mut server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "REPR", &["repr.>"]).await;
    let hook = Webhook::start(|_| Answer::status(200).after(Duration::from_millis(30))).await;
    let yaml = config_yaml(
        &server.url(),
        &format!(
            "
sources:
  orders: {{ stream: REPR, subjects: ['repr.>'] }}
sinks:
  hook: {{ type: http, url: '{}', timeout: 5s }}
routes:
  - {{ name: all, from: orders, to: [hook] }}
consumers: {{ ack_wait: 5s, takeover_after: 3s, retry: {{ backoff: [200ms] }} }}
dead_letter: {{ stream: DLQ_REPR, subject_prefix: dlq_repr }}
",
            hook.url
        ),
    );
    let ports = [free_port(), free_port()];
    let _replicas = ports.map(|port| {
        let listen = format!("127.0.0.1:{port}");
        Process::start_with_env(&yaml, &[("JETLINE__METRICS__LISTEN", &listen)])
    });
    eventually(Duration::from_secs(20), "both replicas bound", || async {
        for port in ports {
            active_consumers(port).await?;
        }
        Some(())
    })
    .await;
    let ids = publish_interleaved(&js, "repr.created", AGGREGATES, PER_AGGREGATE).await;
    eventually(Duration::from_secs(30), "some events applied", || async {
        (hook.requests().len() >= 2 * AGGREGATES).then_some(())
    })
    .await;

    server.stop_gracefully();
    tokio::time::sleep(Duration::from_secs(5)).await;
    server.start_again();
    let js = server.jetstream().await;

    let keys = ids.len();
    let hook = &hook;
    eventually(Duration::from_secs(120), "every event posted", || async {
        (hook.by_key().len() >= keys).then_some(())
    })
    .await;
    // Each aggregate's events reach the webhook in order the first time
    // each is posted (a repeat of an event already posted is answered from
    // the receiver's idempotency record, not applied again).
    let mut seen = std::collections::HashSet::new();
    let mut next = vec![0usize; AGGREGATES];
    for request in hook.requests() {
        let event_id = request.body["eventId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !seen.insert(event_id.clone()) {
            continue;
        }
        let aggregate: usize = event_id
            .split('-')
            .nth(1)
            .and_then(|a| a.parse().ok())
            .expect("an order-<a>-<n> id");
        let number = accounting::event_number(&event_id);
        assert_eq!(
            number, next[aggregate],
            "order-{aggregate}: event {number} posted before {}",
            next[aggregate]
        );
        next[aggregate] += 1;
    }
    assert_eq!(next, vec![PER_AGGREGATE; AGGREGATES], "every event posted");
    assert_eq!(
        stream_count(&js, "DLQ_REPR").await,
        0,
        "nothing dead-lettered"
    );
}
