//! The raw counterparts: the simplest correct program for each sink, with
//! the same client library (async-nats, tokio-postgres, reqwest) and the
//! same in-flight window as Jetline at its defaults: a durable pull consumer
//! with `max_ack_pending` 1000 fetched 500 at a time, at most 32 writes in
//! flight (`concurrency`), each source message acked only after its write
//! was confirmed. What they leave out is what Jetline adds: decoding,
//! validation, upcasting, routing, per-key order, the idempotency records.
//! They read the row of an event by its stream sequence (what the benchmark
//! generated) instead of decoding it.
//!
//! Each runs on its own thread with its own runtime, as Jetline runs in its
//! own process, so that neither shares a scheduler with the benchmark's
//! pollers and HTTP receiver.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, AckKind, Message,
        consumer::{AckPolicy, PullConsumer, pull},
        kv,
    },
};
use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use serde_json::json;
use tokio_postgres::{binary_copy::BinaryCopyInWriter, types::Type};

use crate::preload::{Event, Kind};

/// Jetline's default `concurrency`: events being written at once.
pub const WINDOW: usize = 32;
/// Jetline's default `max_ack_pending`.
pub const MAX_ACK_PENDING: i64 = 1_000;
/// Jetline fetches `max_ack_pending` clamped to 500 per pull.
const FETCH_BATCH: usize = 500;
/// Jetline's PostgreSQL batch at its defaults: `batch.max_events` (500),
/// with as many in flight (a postgres sink's default `concurrency`), written
/// after `batch.max_wait` (50 ms) at the latest.
pub const PG_BATCH: usize = 500;
const PG_MAX_WAIT: Duration = Duration::from_millis(50);

/// What a raw program writes each event to.
#[derive(Debug, Clone)]
pub enum Write {
    /// Republish to `<prefix>.<aggregate>` with `Nats-Msg-Id`.
    JetStream { prefix: String },
    /// `kv.put(<aggregate>, document)` into a bucket it creates.
    Kv { bucket: String },
    /// Binary `COPY` into `table`, `PG_BATCH` rows per transaction.
    Postgres { url: String, table: String },
    /// A POST of the event as JSON.
    Http { url: String },
}

/// One raw run: read `events` messages of `stream` through the durable
/// consumer `durable` and write each.
#[derive(Debug, Clone)]
pub struct Job {
    pub nats_url: String,
    pub stream: String,
    pub durable: String,
    pub events: usize,
    pub rows: Arc<Vec<Event>>,
    pub write: Write,
}

/// Runs `job` on a thread of its own; the time from connecting to the
/// last write confirmed.
pub async fn run_isolated(job: Job) -> Duration {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("raw runtime");
        let _ = done.send(runtime.block_on(run(job)));
    });
    result.await.expect("the raw program finished")
}

async fn run(job: Job) -> Duration {
    let started = Instant::now();
    let client = async_nats::connect(&job.nats_url)
        .await
        .expect("raw program connects");
    let js = jetstream::new(client);
    let consumer = bind(&js, &job.stream, &job.durable).await;
    let rows = Arc::clone(&job.rows);
    match &job.write {
        Write::JetStream { prefix } => {
            consume_each(&consumer, job.events, |message| {
                republish(&js, prefix, message)
            })
            .await
        }
        Write::Kv { bucket } => {
            let store = js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .expect("raw bucket");
            consume_each(&consumer, job.events, |message| put(&store, &rows, message)).await
        }
        Write::Http { url } => {
            let http = reqwest::Client::new();
            consume_each(&consumer, job.events, |message| {
                post(&http, url, &rows, message)
            })
            .await
        }
        Write::Postgres { url, table } => {
            copy_batches(&consumer, job.events, &rows, url, table).await
        }
    }
    started.elapsed()
}

/// The durable consumer, created as Jetline creates its own (an existing
/// one with the same settings is returned as it is).
pub async fn bind(js: &jetstream::Context, stream: &str, durable: &str) -> PullConsumer {
    js.get_stream(stream)
        .await
        .expect("source stream")
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: MAX_ACK_PENDING,
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .expect("raw consumer")
}

async fn messages(consumer: &PullConsumer) -> pull::Stream {
    consumer
        .stream()
        .max_messages_per_batch(FETCH_BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .expect("raw message stream")
}

/// Applies `write` to `events` messages, at most `WINDOW` at once.
async fn consume_each<F, Fut>(consumer: &PullConsumer, events: usize, write: F)
where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut messages = messages(consumer).await;
    let mut in_flight = FuturesUnordered::new();
    let mut done = 0;
    while done < events {
        tokio::select! {
            Some(message) = messages.next(), if in_flight.len() < WINDOW => {
                in_flight.push(write(message.expect("raw delivery")));
            }
            Some(()) = in_flight.next() => done += 1,
        }
    }
}

fn row<'a>(rows: &'a [Event], message: &Message) -> &'a Event {
    let seq = message.info().expect("a JetStream message").stream_sequence;
    &rows[seq as usize - 1]
}

async fn ack(message: &Message) {
    message.ack_with(AckKind::Ack).await.expect("raw ack");
}

/// Republishes the bytes as they are, with `Nats-Msg-Id`; acks the source
/// once the stream acked.
async fn republish(js: &jetstream::Context, prefix: &str, message: Message) {
    let aggregate = message.subject.rsplit('.').next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Some(id) = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")) {
        headers.insert("Nats-Msg-Id", id.as_str());
    }
    let published = js
        .publish_with_headers(
            format!("{prefix}.{aggregate}"),
            headers,
            message.payload.clone(),
        )
        .await
        .expect("raw republish sent");
    published.await.expect("raw republish acked");
    ack(&message).await;
}

/// Puts the event's fields as the key's document (last writer wins: no
/// read, no compare-and-set, no record of what was applied).
async fn put(store: &kv::Store, rows: &[Event], message: Message) {
    let event = row(rows, &message);
    let document = match event.kind {
        Kind::Created { .. } => json!({
            "status": "created",
            "customer_id": event.detail,
            "total_cents": event.amount_cents,
        }),
        Kind::Shipped => json!({ "status": "shipped", "tracking_number": event.detail }),
    };
    let value = serde_json::to_vec(&document).expect("json");
    store
        .put(&event.aggregate_id, Bytes::from(value))
        .await
        .expect("raw kv put");
    ack(&message).await;
}

/// POSTs the event as JSON with its `Idempotency-Key`; acks on 2xx.
async fn post(http: &reqwest::Client, url: &str, rows: &[Event], message: Message) {
    let event = row(rows, &message);
    let body = serde_json::to_vec(&event.document()).expect("json");
    let response = http
        .post(url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", &event.event_id)
        .body(body)
        .send()
        .await
        .expect("raw post");
    assert!(
        response.status().is_success(),
        "receiver answered {}",
        response.status()
    );
    ack(&message).await;
}

/// Gathers up to `PG_BATCH` messages (waiting `PG_MAX_WAIT` at most after
/// the first, as Jetline's batch writer does), writes their rows with one
/// binary `COPY` in one transaction, commits, then acks them.
async fn copy_batches(
    consumer: &PullConsumer,
    events: usize,
    rows: &[Event],
    url: &str,
    table: &str,
) {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("raw program connects to PostgreSQL");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let copy = format!(
        "COPY {table} (event_id, aggregate_id, event_type, amount_cents, detail) FROM STDIN BINARY"
    );
    let types = [Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::TEXT];
    let mut messages = messages(consumer).await;
    let mut done = 0;
    while done < events {
        let first = messages
            .next()
            .await
            .expect("stream open")
            .expect("raw delivery");
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + PG_MAX_WAIT;
        while batch.len() < PG_BATCH && done + batch.len() < events {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(message)) => batch.push(message.expect("raw delivery")),
                _ => break,
            }
        }
        let transaction = client.transaction().await.expect("begin");
        let sink = transaction.copy_in(&copy).await.expect("copy in");
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        for message in &batch {
            let event = row(rows, message);
            let event_type = match event.kind {
                Kind::Created { .. } => "created",
                Kind::Shipped => "shipped",
            };
            writer
                .as_mut()
                .write(&[
                    &event.event_id,
                    &event.aggregate_id,
                    &event_type,
                    &event.amount_cents,
                    &event.detail,
                ])
                .await
                .expect("copy row");
        }
        writer.finish().await.expect("copy finished");
        transaction.commit().await.expect("commit");
        for message in &batch {
            ack(message).await;
        }
        done += batch.len();
    }
}
