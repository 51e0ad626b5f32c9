//! Throughput of the core path, JetStream -> Jetline -> JetStream, against a
//! plain async-nats program doing the same consume + republish + ack with no
//! decoding, in the same run on the same server. Prints events/s and ratios.
//!
//! `cargo bench --bench throughput -- [EVENTS]` (default 100,000); `scripts/bench`.

#[path = "../../tests/e2e/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, pull},
};
use futures::StreamExt;
use support::*;

const AGGREGATES: usize = 1_000;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and
    // gets a smoke run.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse().ok())
        .unwrap_or(if measuring { 100_000 } else { 500 });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(events));
}

async fn run(events: usize) {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "BENCH", &["bench.>"]).await;
    println!("publishing {events} events over {AGGREGATES} aggregates");
    let mut batch = Vec::with_capacity(10_000);
    for n in 0..events {
        let document = created_v3(
            &format!("bench-{n}"),
            &format!("order-{}", n % AGGREGATES),
            n as i64,
        );
        batch.push(Outgoing::binary("bench.created", &document));
        if batch.len() == 10_000 || n + 1 == events {
            publish_all(&js, std::mem::take(&mut batch)).await;
        }
    }

    let baseline = baseline(&js, events).await;
    report(
        "baseline: async-nats consume + republish + ack",
        events,
        baseline,
        baseline,
    );
    for (name, consumers) in [
        ("jetline: default settings (per_key, concurrency 32)", ""),
        (
            "jetline: concurrency 256, max_ack_pending 5000",
            "consumers: { concurrency: 256, max_ack_pending: 5000 }",
        ),
        (
            "jetline: ordering none, concurrency 256, max_ack_pending 5000",
            "consumers: { ordering: none, concurrency: 256, max_ack_pending: 5000 }",
        ),
    ] {
        let elapsed = jetline_run(&server, &js, events, name, consumers).await;
        report(name, events, elapsed, baseline);
    }
}

fn report(name: &str, events: usize, elapsed: Duration, baseline: Duration) {
    let rate = events as f64 / elapsed.as_secs_f64();
    let ratio = baseline.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "{name:<66} {:>8.2} s {rate:>10.0} events/s  {ratio:>5.2} x baseline",
        elapsed.as_secs_f64()
    );
}

/// Consume, republish with the same id (no decoding), ack once the
/// republish is acked; up to 4,096 republishes in flight.
async fn baseline(js: &jetstream::Context, events: usize) -> Duration {
    create_stream(js, "BASE_OUT", &["baseout.>"]).await;
    let stream = js.get_stream("BENCH").await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("baseline".into()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: 5_000,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .messages()
        .await
        .expect("messages");
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut done = 0;
    while done < events {
        tokio::select! {
            Some(message) = messages.next(), if in_flight.len() < 4_096 => {
                let message = message.expect("message");
                let mut headers = async_nats::HeaderMap::new();
                if let Some(id) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
                    headers.insert("Nats-Msg-Id", id.as_str());
                }
                let ack = js
                    .publish_with_headers("baseout.x", headers, message.payload.clone())
                    .await
                    .expect("republish");
                in_flight.push(async move {
                    ack.await.expect("republish acked");
                    message.ack().await.expect("source acked");
                });
            }
            Some(()) = in_flight.next() => done += 1,
        }
    }
    started.elapsed()
}

async fn jetline_run(
    server: &NatsServer,
    js: &jetstream::Context,
    events: usize,
    name: &str,
    consumers: &str,
) -> Duration {
    let output = format!("OUT{}", name.len());
    let prefix = format!("out{}", name.len());
    create_stream(js, &output, &[&format!("{prefix}.>")]).await;
    let yaml = config_yaml(
        &server.url(),
        &format!(
            "
sources:
  bench: {{ stream: BENCH, subjects: ['bench.>'] }}
sinks:
  {prefix}: {{ type: jetstream, subject: '{prefix}.{{aggregate_id}}' }}
routes:
  - {{ name: all, from: bench, to: [{prefix}] }}
{consumers}
"
        ),
    );
    let started = Instant::now();
    let jetline = Running::start(&yaml);
    loop {
        if stream_count(js, &output).await >= events as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    jetline.stop().await;
    elapsed
}
