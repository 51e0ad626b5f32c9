//! End-to-end latency of the JetStream path at a fixed rate: a producer
//! publishes at `rate` events/s for a while to an empty source stream that
//! the raw program or a started, ready Jetline drains into an output
//! stream; a core NATS subscriber on the output subjects notes when each
//! event arrives there. Latency is that arrival minus the instant of the
//! publish, both on this process's monotonic clock; events are matched by
//! their `Nats-Msg-Id` (the event id, `lat-<n>`), which both write.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::{
    Bench,
    jetline::Jetline,
    modes::Side,
    preload::Event,
    raw::{self, Job, Write},
    support::{Outgoing, create_stream},
};

#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// One side at `rate` events/s for `seconds`.
pub async fn measure(bench: &Bench, side: Side, rate: f64, seconds: f64) -> Latency {
    let side_name = match side {
        Side::Raw => "raw",
        Side::Jetline => "jet",
    };
    let source = format!("lat_{side_name}_in");
    let output = format!("lat_{side_name}_out");
    let count = ((rate * seconds).ceil() as usize).max(1);
    // Encoded before the clock starts: the producer only sends.
    let outgoing: Vec<Outgoing> = (0..count)
        .map(|n| Event::new("lat", n).outgoing(&source))
        .collect();
    create_stream(&bench.js, &source, &[&format!("{source}.>")]).await;
    create_stream(&bench.js, &output, &[&format!("{output}.>")]).await;

    let arrivals = collect_arrivals(bench, &output, count).await;
    let url = bench.server.url();
    let mut jetline = None;
    let mut raw_program = None;
    match side {
        Side::Raw => {
            // Bound before the producer starts, as Jetline is once ready.
            raw::bind(&bench.js, &source, &source).await;
            raw_program = Some(tokio::spawn(raw::run_isolated(Job {
                nats_url: url.clone(),
                stream: source.clone(),
                durable: source.clone(),
                events: count,
                rows: Arc::default(),
                write: Write::JetStream {
                    prefix: output.clone(),
                },
            })));
        }
        Side::Jetline => {
            let mut started = Jetline::start_copy(&url, &source, &output, &bench.upcasters);
            started.ready().await;
            jetline = Some(started);
        }
    }

    let sent = produce(bench, outgoing, rate).await;
    // A side that cannot keep up drains its queue after the producer
    // stops: allow for that at 1,000 events/s.
    let drain = Duration::from_secs(60) + Duration::from_millis(count as u64);
    let arrived = tokio::time::timeout(drain, arrivals)
        .await
        .unwrap_or_else(|_| panic!("{output}: not every event arrived within {drain:?}"))
        .expect("collector");
    if let Some(program) = raw_program {
        program.await.expect("raw program");
    }
    drop(jetline);
    let _ = bench.js.delete_stream(&source).await;
    let _ = bench.js.delete_stream(&output).await;

    let mut latencies: Vec<Duration> = sent
        .iter()
        .zip(&arrived)
        .map(|(sent, arrived)| arrived.saturating_duration_since(*sent))
        .collect();
    latencies.sort();
    let at = |quantile: f64| {
        let index = ((quantile * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[index - 1]
    };
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// Subscribes to the output subjects; resolves with the arrival of each
/// event, by its number in the event id, once all `count` have arrived.
async fn collect_arrivals(
    bench: &Bench,
    output: &str,
    count: usize,
) -> tokio::task::JoinHandle<Vec<Instant>> {
    // A connection of its own: arrivals are not queued behind the producer.
    let client = bench.server.client().await;
    let mut subscription = client
        .subscribe(format!("{output}.>"))
        .await
        .expect("subscribe to the output");
    client.flush().await.expect("subscription registered");
    tokio::spawn(async move {
        let _client = client;
        let mut arrived: Vec<Option<Instant>> = vec![None; count];
        let mut missing = count;
        while missing > 0 {
            let message = subscription.next().await.expect("subscription open");
            let now = Instant::now();
            let number: usize = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get("Nats-Msg-Id"))
                .and_then(|id| id.as_str().rsplit('-').next()?.parse().ok())
                .expect("Nats-Msg-Id lat-<n> on every output message");
            let slot = &mut arrived[number];
            if slot.is_none() {
                *slot = Some(now);
                missing -= 1;
            }
        }
        arrived.into_iter().map(|at| at.expect("arrived")).collect()
    })
}

/// Publishes `outgoing` at `rate` events/s from one connection (so the
/// source sequences follow the order of sending); the instant each was
/// sent. Acks are awaited by another task: sending never waits for them.
async fn produce(bench: &Bench, outgoing: Vec<Outgoing>, rate: f64) -> Vec<Instant> {
    let js = jetstream::new(bench.server.client().await);
    let (acks, mut pending) = mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let acked = tokio::spawn(async move {
        while let Some(ack) = pending.recv().await {
            ack.await.expect("latency publish acked");
        }
    });
    let mut sent = Vec::with_capacity(outgoing.len());
    let start = tokio::time::Instant::now();
    for (n, message) in outgoing.into_iter().enumerate() {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        sent.push(Instant::now());
        let ack = js
            .publish_with_headers(message.subject, message.headers, message.body.into())
            .await
            .expect("latency publish sent");
        acks.send(ack).expect("ack task alive");
    }
    drop(acks);
    acked.await.expect("acks awaited");
    sent
}
