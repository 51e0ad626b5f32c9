//! The four throughput modes, one round at a time: each round writes to
//! outputs of its own (stream, bucket, table, path and consumer named after
//! the round), times the raw program or Jetline draining the whole preloaded
//! stream, checks that every effect is there exactly once, and deletes what
//! it made, so that rounds are independent and the server's store stays
//! small.

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use crate::{
    Bench, SOURCE_PREFIX, SOURCE_STREAM,
    jetline::{self, DLQ_STREAM, Jetline, Spec},
    raw::{self, Job, Write},
    support::{create_stream, stream_count},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    JetStream,
    Kv,
    Postgres,
    Http,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::JetStream, Mode::Kv, Mode::Postgres, Mode::Http];

    pub fn name(self) -> &'static str {
        match self {
            Mode::JetStream => "jetstream",
            Mode::Kv => "kv",
            Mode::Postgres => "postgres",
            Mode::Http => "http",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.name() == text)
    }

    fn short(self) -> &'static str {
        match self {
            Mode::JetStream => "js",
            Mode::Kv => "kv",
            Mode::Postgres => "pg",
            Mode::Http => "http",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Raw,
    Jetline,
}

/// One timed drain.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub per_s: f64,
    /// Jetline only: spawn to `/readyz` 200, included in `per_s`.
    pub startup: Option<Duration>,
}

/// Runs one round of `mode` on `side`; `index` names its outputs.
pub async fn round(bench: &Bench, mode: Mode, side: Side, index: usize) -> Round {
    let name = format!(
        "{}_{}_{index}",
        mode.short(),
        match side {
            Side::Raw => "raw",
            Side::Jetline => "jet",
        }
    );
    prepare(bench, mode, &name).await;
    let events = bench.rows.len();
    let result = match side {
        Side::Raw => {
            let elapsed = raw::run_isolated(raw_job(bench, mode, &name)).await;
            Round {
                per_s: events as f64 / elapsed.as_secs_f64(),
                startup: None,
            }
        }
        Side::Jetline => jetline_round(bench, mode, &name).await,
    };
    verify(bench, mode, side, &name).await;
    cleanup(bench, mode, side, &name).await;
    result
}

/// Outputs that must exist before either side starts: Jetline creates its
/// KV bucket and checkpoint table, not a stream or a user table.
async fn prepare(bench: &Bench, mode: Mode, name: &str) {
    match mode {
        Mode::JetStream => {
            create_stream(&bench.js, name, &[&format!("{name}.>")]).await;
        }
        Mode::Postgres => bench
            .pg()
            .batch_execute(&format!(
                "CREATE TABLE {name} (event_id text PRIMARY KEY, aggregate_id text NOT NULL, \
                 event_type text NOT NULL, amount_cents bigint, detail text NOT NULL)"
            ))
            .await
            .expect("round table"),
        Mode::Kv | Mode::Http => {}
    }
}

fn raw_job(bench: &Bench, mode: Mode, name: &str) -> Job {
    let write = match mode {
        Mode::JetStream => Write::JetStream {
            prefix: name.to_owned(),
        },
        Mode::Kv => Write::Kv {
            bucket: name.to_owned(),
        },
        Mode::Postgres => Write::Postgres {
            url: bench.postgres_url(),
            table: name.to_owned(),
        },
        Mode::Http => Write::Http {
            url: bench.receiver.url(name),
        },
    };
    Job {
        nats_url: bench.server.url(),
        stream: SOURCE_STREAM.to_owned(),
        durable: name.to_owned(),
        events: bench.rows.len(),
        rows: Arc::clone(&bench.rows),
        write,
    }
}

/// The sink `out` of a round, at the sink's defaults.
fn sink_block(bench: &Bench, mode: Mode, name: &str) -> String {
    match mode {
        Mode::JetStream => format!("    type: jetstream\n    subject: \"{name}.{{aggregate_id}}\""),
        // `increment` counts the events applied per key: their sum is the
        // check that every event was applied once.
        Mode::Kv => format!(
            "    type: kv
    bucket: {name}
    key: \"{{aggregate_id}}\"
    on:
      orders.OrderCreated: {{ set: {{ status: created, customer_id: payload.customer_id, total_cents: payload.total_amount_cents }}, increment: {{ events: 1 }} }}
      orders.OrderShipped: {{ set: {{ status: shipped, tracking_number: payload.tracking_number }}, increment: {{ events: 1 }} }}"
        ),
        // The same rows as the raw COPY writes, one statement per batch
        // and event type as the COPY is one per batch.
        Mode::Postgres => format!(
            "    type: postgres
    url_env: BENCH_DATABASE_URL
    checkpoint_table: {name}_cp
    on:
      orders.OrderCreated:
        sql: \"INSERT INTO {name} (event_id, aggregate_id, event_type, amount_cents, detail) SELECT id, aggregate, 'created', amount, detail FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS e (id, aggregate, amount, detail)\"
        params: [event_id, aggregate_id, payload.total_amount_cents, payload.customer_id]
        per: batch
      orders.OrderShipped:
        sql: \"INSERT INTO {name} (event_id, aggregate_id, event_type, amount_cents, detail) SELECT id, aggregate, 'shipped', NULL, detail FROM unnest($1::text[], $2::text[], $3::text[]) AS e (id, aggregate, detail)\"
        params: [event_id, aggregate_id, payload.tracking_number]
        per: batch"
        ),
        Mode::Http => format!("    type: http\n    url: \"{}\"", bench.receiver.url(name)),
    }
}

/// Jetline from its spawn until the sink holds every effect.
async fn jetline_round(bench: &Bench, mode: Mode, name: &str) -> Round {
    let url = bench.server.url();
    let block = sink_block(bench, mode, name);
    let spec = Spec {
        nats_url: &url,
        stream: SOURCE_STREAM,
        prefix: SOURCE_PREFIX,
        durable_prefix: name,
        sink_block: &block,
        upcasters: &bench.upcasters,
    };
    let database_url = bench.postgres_url();
    let mut jetline = Jetline::start(&spec, &[("BENCH_DATABASE_URL", &database_url)]);
    let startup = jetline.ready().await;
    let events = bench.rows.len() as u64;
    let timeout = bench.drain_timeout();
    // Each check is one request, every 10 ms: cheap next to the drain, and
    // at most 10 ms late.
    let every = Duration::from_millis(10);
    let elapsed = match mode {
        Mode::JetStream => {
            jetline
                .until("every event republished", timeout, every, || async {
                    stream_count(&bench.js, name).await >= events
                })
                .await
        }
        // A KV bucket is a stream: each applied event is one write.
        Mode::Kv => {
            jetline
                .until("every event in the bucket", timeout, every, || async {
                    last_sequence(&bench.js, &format!("KV_{name}")).await >= events
                })
                .await
        }
        // The checkpoints commit with the rows: their sum reaches the last
        // sequence of every aggregate exactly when every row is in. Cheaper
        // to poll than counting a growing table.
        Mode::Postgres => {
            let query = format!("SELECT coalesce(sum(last_seq), 0)::int8 FROM {name}_cp");
            jetline
                .until("every row committed", timeout, every, || async {
                    bench
                        .pg()
                        .query_one(&query, &[])
                        .await
                        .is_ok_and(|row| row.get::<_, i64>(0) >= bench.checkpoint_target)
                })
                .await
        }
        Mode::Http => {
            jetline
                .until("every event received", timeout, every, || async {
                    bench.receiver.count(name) >= events
                })
                .await
        }
    };
    Round {
        per_s: events as f64 / elapsed.as_secs_f64(),
        startup: Some(startup),
    }
}

/// The last sequence of `stream` (0 when it does not exist).
pub async fn last_sequence(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut handle) => handle
            .info()
            .await
            .map(|info| info.state.last_sequence)
            .unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every effect there exactly once, and nothing dead-lettered: a fast but
/// wrong run must fail, not report a figure.
async fn verify(bench: &Bench, mode: Mode, side: Side, name: &str) {
    let events = bench.rows.len() as u64;
    match mode {
        Mode::JetStream => {
            assert_eq!(
                stream_count(&bench.js, name).await,
                events,
                "{name}: republished"
            );
        }
        Mode::Kv => {
            let store = bench.js.get_key_value(name).await.expect("bucket");
            assert_eq!(
                last_sequence(&bench.js, &format!("KV_{name}")).await,
                events,
                "{name}: one write per event"
            );
            if side == Side::Jetline {
                let applied = applied_in_bucket(&store).await;
                assert_eq!(applied, events, "{name}: sum of the per-key event counts");
            }
        }
        Mode::Postgres => {
            let row = bench
                .pg()
                .query_one(
                    &format!("SELECT count(*), coalesce(sum(amount_cents), 0)::int8 FROM {name}"),
                    &[],
                )
                .await
                .expect("count rows");
            let (rows, cents): (i64, i64) = (row.get(0), row.get(1));
            assert_eq!(rows as u64, events, "{name}: rows");
            // Proves the upcasts: v1 and v2 carry decimal amounts.
            assert_eq!(cents, bench.expected_cents, "{name}: sum of amount_cents");
        }
        Mode::Http => {
            assert_eq!(
                bench.receiver.count(name),
                events,
                "{name}: requests received"
            );
        }
    }
    if side == Side::Jetline {
        assert_eq!(
            stream_count(&bench.js, DLQ_STREAM).await,
            0,
            "{name}: nothing dead-lettered"
        );
    }
}

async fn applied_in_bucket(store: &kv::Store) -> u64 {
    let mut keys = store.keys().await.expect("keys");
    let mut applied = 0;
    while let Some(key) = keys.next().await {
        let key = key.expect("key");
        let value = store.get(&key).await.expect("get").expect("a document");
        let document: serde_json::Value = serde_json::from_slice(&value).expect("json");
        applied += document["events"].as_u64().expect("an `events` counter");
    }
    applied
}

async fn cleanup(bench: &Bench, mode: Mode, side: Side, name: &str) {
    let durable = match side {
        Side::Raw => name.to_owned(),
        Side::Jetline => jetline::durable(name),
    };
    let _ = bench
        .js
        .delete_consumer_from_stream(&durable, SOURCE_STREAM)
        .await;
    match mode {
        Mode::JetStream => {
            let _ = bench.js.delete_stream(name).await;
        }
        Mode::Kv => {
            let _ = bench.js.delete_key_value(name).await;
        }
        Mode::Postgres => {
            let _ = bench
                .pg()
                .batch_execute(&format!(
                    "DROP TABLE {name}; DROP TABLE IF EXISTS {name}_cp"
                ))
                .await;
        }
        Mode::Http => {}
    }
}
