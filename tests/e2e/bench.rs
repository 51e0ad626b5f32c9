//! Sink throughput (ignored; run by `scripts/bench-sinks`): the same events
//! through each sink in turn, in one run on one machine, reported in
//! events/s and as a ratio to the JetStream sink. Each sink runs in the
//! built binary with the same consumer settings, timed from start to the
//! last event settled. Measures, asserts nothing about speed.

use std::time::Instant;

use crate::support::*;

/// Events per run (`JETLINE_BENCH_EVENTS` overrides).
const DEFAULT_EVENTS: usize = 20_000;
const AGGREGATES: usize = 1_000;
const CONSUMER: &str = "concurrency: 256\n    max_ack_pending: 2000";

#[tokio::test]
#[ignore = "a benchmark: scripts/bench-sinks runs it"]
async fn sink_throughput() {
    let events: usize = std::env::var("JETLINE_BENCH_EVENTS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "BENCH", &["BENCH.>"]).await;
    create_stream(&js, "BENCH_OUT", &["bench_out.>"]).await;
    for chunk in (0..events).collect::<Vec<_>>().chunks(5_000) {
        let batch = chunk
            .iter()
            .map(|n| {
                let aggregate = format!("order-{}", n % AGGREGATES);
                let event = created_v3(&format!("bench-{n}"), &aggregate, *n as i64);
                Outgoing::binary("BENCH.created", &event)
            })
            .collect();
        publish_all(&js, batch).await;
    }
    let database = Postgres::start();
    database
        .client()
        .await
        .batch_execute(
            "CREATE TABLE bench_orders (id text PRIMARY KEY, customer_id text, total_cents bigint, events int)",
        )
        .await
        .expect("bench table");
    let hook = Webhook::start(|_| Answer::status(200)).await;

    let sinks = [
        (
            "jetstream",
            format!(
                "    type: jetstream\n    subject: 'bench_out.{{aggregate_id}}'\n    {CONSUMER}"
            ),
        ),
        (
            "kv",
            format!(
                "    type: kv\n    bucket: BENCH_SUMMARY\n    {CONSUMER}\n    on:\n      orders.OrderCreated: \
                 {{ set: {{ status: created, customer_id: payload.customer_id, total_cents: payload.total_amount_cents }}, \
                 increment: {{ events: 1 }} }}"
            ),
        ),
        (
            "postgres",
            format!(
                "    type: postgres\n    url_env: BENCH_DATABASE_URL\n    {CONSUMER}\n    batch: {{ max_events: 500, max_wait: 20ms }}\n    on:\n      orders.OrderCreated:\n        \
                 sql: \"INSERT INTO bench_orders (id, customer_id, total_cents, events) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (id) DO UPDATE SET total_cents = EXCLUDED.total_cents, events = bench_orders.events + 1\"\n        \
                 params: [aggregate_id, payload.customer_id, payload.total_amount_cents]"
            ),
        ),
        (
            "http",
            format!("    type: http\n    url: '{}'\n    {CONSUMER}", hook.url),
        ),
    ];
    let mut rates = Vec::new();
    for (kind, block) in &sinks {
        let yaml = single_sink_yaml(&server.url(), "BENCH", kind, block);
        let started = Instant::now();
        let jetline = Process::start_with_env(&yaml, &[("BENCH_DATABASE_URL", database.url())]);
        until_settled(&js, "BENCH", kind).await;
        let seconds = started.elapsed().as_secs_f64();
        drop(jetline);
        rates.push((*kind, seconds, events as f64 / seconds));
    }
    assert_eq!(
        stream_count(&js, "DLQ_BENCH").await,
        0,
        "nothing dead-lettered"
    );

    let baseline = rates[0].2;
    println!("\n{events} events over {AGGREGATES} aggregates, {CONSUMER:?}");
    println!(
        "{:<10} {:>9} {:>10} {:>8}",
        "sink", "seconds", "events/s", "ratio"
    );
    for (kind, seconds, rate) in rates {
        println!(
            "{kind:<10} {seconds:>9.2} {rate:>10.0} {:>8.2}",
            rate / baseline
        );
    }
}
