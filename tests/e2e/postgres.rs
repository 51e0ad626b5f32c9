//! The PostgreSQL sink against a real server: exactly-once effect with
//! Jetline killed mid-batch and restarted, PostgreSQL restarted mid-stream,
//! and a constraint violation dead-lettering its event while the rest of its
//! batch is applied; statements run per event and per batch (`per: batch`,
//! arrays read with `unnest`).
//!
//! The statements count every application (`events = events + 1`), so an
//! event applied twice or lost shows in the table.

use std::{collections::BTreeMap, time::Duration};

use jetline::dead_letter::header as dlq;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(90);

/// How often a test's statements run: `per: event` or `per: batch`.
#[derive(Debug, Clone, Copy)]
enum Per {
    Event,
    Batch,
}

/// A sink counting each order's applied events, their total and the stream
/// sequences in the order applied. `settings` go into the sink's block.
fn counting_config(url: &str, stream: &str, table: &str, per: Per, settings: &str) -> String {
    let (rows, per) = match per {
        Per::Event => ("VALUES ($1, 1, $2, ARRAY[$3])", "event"),
        Per::Batch => (
            "SELECT id, 1, total, ARRAY[seq] FROM unnest($1::text[], $2::int8[], $3::int8[]) AS e (id, total, seq)",
            "batch",
        ),
    };
    let block = format!(
        "    type: postgres
    url_env: {stream}_DATABASE_URL
    checkpoint_table: {table}_checkpoints
    {settings}
    on:
      orders.OrderCreated:
        sql: >-
          INSERT INTO {table} (id, events, total, seen) {rows}
          ON CONFLICT (id) DO UPDATE SET events = {table}.events + 1,
          total = {table}.total + EXCLUDED.total, seen = {table}.seen || EXCLUDED.seen
        params: [aggregate_id, payload.total_amount_cents, source_seq]
        per: {per}"
    );
    single_sink_yaml(url, stream, "counts", &block)
}

async fn create_counts_table(client: &tokio_postgres::Client, table: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text PRIMARY KEY, events int NOT NULL, total bigint NOT NULL, seen bigint[] NOT NULL)"
        ))
        .await
        .expect("table created");
}

/// `aggregates` orders with `per_aggregate` created events each, interleaved;
/// event n of order k carries the amount n.
async fn publish_counted(
    js: &async_nats::jetstream::Context,
    stream: &str,
    aggregates: usize,
    per_aggregate: usize,
) {
    let events = (0..per_aggregate)
        .flat_map(|n| (0..aggregates).map(move |k| (n, k)))
        .map(|(n, k)| {
            let document = created_v3(
                &format!("{stream}-{k}-{n}"),
                &format!("order-{k}"),
                n as i64,
            );
            Outgoing::binary(&format!("{stream}.created"), &document)
        })
        .collect();
    publish_all(js, events).await;
}

async fn applied_events(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT coalesce(sum(events), 0)::int8 FROM {table}"),
            &[],
        )
        .await
        .map(|row| row.get(0))
        .unwrap_or(-1)
}

/// Every order applied each of its events once, in stream order, and its
/// checkpoint is its last sequence.
async fn assert_counted_once_in_order(
    client: &tokio_postgres::Client,
    table: &str,
    aggregates: usize,
    per_aggregate: usize,
) {
    let rows = client
        .query(&format!("SELECT id, events, total, seen FROM {table}"), &[])
        .await
        .expect("counts read");
    assert_eq!(rows.len(), aggregates);
    let checkpoints: BTreeMap<String, i64> = client
        .query(
            &format!("SELECT aggregate_id, last_seq FROM {table}_checkpoints"),
            &[],
        )
        .await
        .expect("checkpoints read")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected_total = (0..per_aggregate as i64).sum::<i64>();
    for row in rows {
        let id: String = row.get(0);
        let events: i32 = row.get(1);
        let total: i64 = row.get(2);
        let seen: Vec<i64> = row.get(3);
        assert_eq!(events as usize, per_aggregate, "{id}: events applied");
        assert_eq!(total, expected_total, "{id}: total");
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "{id}: applied out of order {seen:?}"
        );
        assert_eq!(checkpoints.get(&id), seen.last(), "{id}: checkpoint");
    }
}

#[tokio::test]
async fn exactly_once_with_jetline_killed_mid_batch_and_restarted() {
    killed_mid_batch("PGKILL", "pg_kill_counts", Per::Event).await;
}

#[tokio::test]
async fn exactly_once_per_batch_with_jetline_killed_mid_batch_and_restarted() {
    killed_mid_batch("PGKILLSET", "pg_kill_set_counts", Per::Batch).await;
}

async fn killed_mid_batch(stream: &str, table: &str, per: Per) {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    let database = Postgres::start();
    let client = database.client().await;
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    create_counts_table(&client, table).await;
    let (aggregates, per_aggregate) = (50, 60);
    publish_counted(&js, stream, aggregates, per_aggregate).await;
    let total = (aggregates * per_aggregate) as i64;

    let yaml = counting_config(
        &server.url(),
        stream,
        table,
        per,
        // A short ack_wait: the events left unacked by the killed process
        // come back within seconds.
        "concurrency: 64\n    ack_wait: 4s\n    retry: { backoff: [200ms, 1s] }\n    batch: { max_events: 64, max_wait: 20ms }",
    );
    let variable = format!("{stream}_DATABASE_URL");
    let env = [(variable.as_str(), database.url())];
    let first = Process::start_with_env(&yaml, &env);
    let before_kill = eventually(TIMEOUT, "some batches committed", || async {
        let applied = applied_events(&client, table).await;
        (applied > 0).then_some(applied)
    })
    .await;
    first.kill();
    let after_kill = applied_events(&client, table).await;
    assert!(
        after_kill < total,
        "killed before the end ({before_kill} then {after_kill} of {total})"
    );

    let second = Process::start_with_env(&yaml, &env);
    until_settled(&js, stream, "counts").await;
    drop(second);

    assert_eq!(applied_events(&client, table).await, total);
    assert_counted_once_in_order(&client, table, aggregates, per_aggregate).await;
    assert_eq!(stream_count(&js, &format!("DLQ_{stream}")).await, 0);
}

#[tokio::test]
async fn a_postgres_restart_mid_stream_loses_and_repeats_nothing() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    let mut database = Postgres::start_own();
    let (stream, table) = ("PGRESTART", "pg_restart_counts");
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    create_counts_table(&database.client().await, table).await;
    let (aggregates, per_aggregate) = (20, 100);
    publish_counted(&js, stream, aggregates, per_aggregate).await;

    let yaml = counting_config(
        &server.url(),
        stream,
        table,
        Per::Event,
        "retry: { backoff: [100ms, 300ms], max_attempts: 1000, jitter: 0.0 }\n    batch: { max_events: 20, max_wait: 10ms }",
    );
    let jetline = Process::start_with_env(&yaml, &[("PGRESTART_DATABASE_URL", database.url())]);
    {
        let client = database.client().await;
        eventually(TIMEOUT, "some batches committed", || async {
            (applied_events(&client, table).await > 0).then_some(())
        })
        .await;
    }
    database.restart();
    until_settled(&js, stream, "counts").await;
    drop(jetline);

    let client = database.client().await;
    assert_counted_once_in_order(&client, table, aggregates, per_aggregate).await;
    assert_eq!(stream_count(&js, &format!("DLQ_{stream}")).await, 0);
}

#[tokio::test]
async fn a_constraint_violation_dead_letters_its_event_and_the_batch_is_applied() {
    constraint_violation("PGCHECK", Per::Event).await;
}

/// A statement run once for a batch fails as a whole: the batch is written
/// again with that statement run per event, so only the refused event is
/// dead-lettered.
#[tokio::test]
async fn a_constraint_violation_per_batch_dead_letters_only_its_event() {
    constraint_violation("PGCHECKSET", Per::Batch).await;
}

async fn constraint_violation(stream: &str, per: Per) {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    let database = Postgres::start();
    let client = database.client().await;
    let table = format!("{}_orders", stream.to_lowercase());
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text PRIMARY KEY, customer_id text NOT NULL, \
             total_cents bigint NOT NULL CHECK (total_cents >= 0), status text NOT NULL, \
             tracking_number text, created_at timestamptz NOT NULL)",
        ))
        .await
        .expect("table created");

    // Every tenth order has a negative total: the check constraint refuses it.
    let orders = 120usize;
    let rejected = |k: usize| k % 10 == 3;
    let mut events = Vec::new();
    for k in 0..orders {
        let cents = if rejected(k) { -1 } else { k as i64 * 10 };
        events.push(Outgoing::binary(
            &format!("{stream}.created"),
            &created_v3(&format!("c-{k}"), &format!("order-{k}"), cents),
        ));
    }
    for k in (0..orders).step_by(2) {
        events.push(Outgoing::binary(
            &format!("{stream}.shipped"),
            &shipped_v1(&format!("s-{k}"), &format!("order-{k}"), &format!("T{k}")),
        ));
    }
    let published = events.len() as u64;
    publish_all(&js, events).await;

    let statements = match per {
        Per::Event => format!(
            "      orders.OrderCreated:
        sql: \"INSERT INTO {table} (id, customer_id, total_cents, status, created_at) VALUES ($1, $2, $3, 'created', $4) ON CONFLICT (id) DO NOTHING\"
        params: [aggregate_id, payload.customer_id, payload.total_amount_cents, occurred_at]
      orders.OrderShipped:
        sql: \"UPDATE {table} SET status = 'shipped', tracking_number = $2 WHERE id = $1\"
        params: [aggregate_id, payload.tracking_number]"
        ),
        Per::Batch => format!(
            "      orders.OrderCreated:
        sql: \"INSERT INTO {table} (id, customer_id, total_cents, status, created_at) SELECT id, customer, total, 'created', at FROM unnest($1::text[], $2::text[], $3::int8[], $4::timestamptz[]) AS e (id, customer, total, at) ON CONFLICT (id) DO NOTHING\"
        params: [aggregate_id, payload.customer_id, payload.total_amount_cents, occurred_at]
        per: batch
      orders.OrderShipped:
        sql: \"UPDATE {table} AS o SET status = 'shipped', tracking_number = e.tracking FROM unnest($1::text[], $2::text[]) AS e (id, tracking) WHERE o.id = e.id\"
        params: [aggregate_id, payload.tracking_number]
        per: batch"
        ),
    };
    let yaml = single_sink_yaml(
        &server.url(),
        stream,
        "orders_table",
        &format!(
            "    type: postgres
    url_env: {stream}_DATABASE_URL
    checkpoint_table: {table}_checkpoints
    concurrency: 200
    batch: {{ max_events: 200, max_wait: 200ms }}
    on:
{statements}"
        ),
    );
    let variable = format!("{stream}_DATABASE_URL");
    let jetline = Process::start_with_env(&yaml, &[(variable.as_str(), database.url())]);
    until_settled(&js, stream, "orders_table").await;
    drop(jetline);

    let letters = stream_messages(&js, &format!("DLQ_{stream}")).await;
    let rejected_ids: Vec<String> = (0..orders)
        .filter(|k| rejected(*k))
        .map(|k| format!("c-{k}"))
        .collect();
    let mut lettered: Vec<String> = letters
        .iter()
        .map(|letter| {
            assert_eq!(
                letter.headers.get(dlq::REASON).map(|v| v.as_str()),
                Some("sink_rejected")
            );
            DECODER
                .decode(None, &letter.payload)
                .expect("the original event")
                .event_id
        })
        .collect();
    lettered.sort();
    let mut expected_letters = rejected_ids.clone();
    expected_letters.sort();
    assert_eq!(
        lettered, expected_letters,
        "exactly the refused events are dead-lettered"
    );

    let rows = client
        .query(
            &format!("SELECT id, total_cents, status, tracking_number FROM {table}"),
            &[],
        )
        .await
        .expect("orders read");
    let stored: BTreeMap<String, (i64, String, Option<String>)> = rows
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2), row.get(3))))
        .collect();
    for k in 0..orders {
        let id = format!("order-{k}");
        if rejected(k) {
            assert!(!stored.contains_key(&id), "{id} was refused");
            continue;
        }
        let shipped = k.is_multiple_of(2);
        let expected = (
            k as i64 * 10,
            if shipped { "shipped" } else { "created" }.to_owned(),
            shipped.then(|| format!("T{k}")),
        );
        assert_eq!(stored.get(&id), Some(&expected), "{id}");
    }
    // Published = applied + dead-lettered: the created rows, the
    // shipments (all of orders that were accepted) and the refused events.
    let shipments = stored
        .values()
        .filter(|(_, status, _)| status == "shipped")
        .count();
    assert_eq!((stored.len() + shipments + letters.len()) as u64, published);
    let checkpoints: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}_checkpoints"), &[])
        .await
        .expect("checkpoints")
        .get(0);
    assert_eq!(checkpoints as usize, stored.len());
}

#[tokio::test]
async fn a_missing_connection_string_stops_jetline_with_exit_2_naming_the_key() {
    use std::io::Write;
    let server = NatsServer::start();
    let yaml = counting_config(
        &server.url(),
        "PGMISSING",
        "pg_missing_counts",
        Per::Event,
        "",
    );
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    file.write_all(yaml.as_bytes()).expect("written");
    let output = tokio::process::Command::new(jetline_bin())
        .args(["run", "--config"])
        .arg(file.path())
        .env_remove("PGMISSING_DATABASE_URL")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("jetline exits")
        .expect("jetline runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("PGMISSING_DATABASE_URL"), "{stderr}");
    assert!(stderr.contains("sinks.counts.url_env"), "{stderr}");
}

/// `jetline replay --reset` on a PostgreSQL sink: its `reset_sql` and its
/// checkpoints cleared in one transaction, then every event applied again
/// once, in order, over a table damaged by hand.
#[tokio::test]
async fn replay_with_reset_rebuilds_the_table_exactly_once() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    let database = Postgres::start();
    let client = database.client().await;
    let (stream, table) = ("PGREPLAY", "pg_replay_counts");
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    create_counts_table(&client, table).await;
    let (aggregates, per_aggregate) = (5, 20);
    publish_counted(&js, stream, aggregates, per_aggregate).await;
    let yaml = counting_config(
        &server.url(),
        stream,
        table,
        Per::Batch,
        &format!("reset_sql: \"TRUNCATE {table}\""),
    );
    let env = [("PGREPLAY_DATABASE_URL", database.url())];
    let running = Process::start_with_env(&yaml, &env);
    until_settled(&js, stream, "counts").await;
    assert_eq!(running.terminate(), Some(0));
    client
        .batch_execute(&format!(
            "UPDATE {table} SET events = 999 WHERE id = 'order-0'"
        ))
        .await
        .expect("damaged");

    let file = tempfile::NamedTempFile::new().expect("config file");
    std::fs::write(file.path(), &yaml).expect("config written");
    let output = std::process::Command::new(jetline_bin())
        .args(["replay", "--config"])
        .arg(file.path())
        .args(["--sink", "counts", "--from-start", "--reset"])
        .envs(env)
        .output()
        .expect("jetline replay runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reset: reset_sql run"), "{stderr}");
    assert_counted_once_in_order(&client, table, aggregates, per_aggregate).await;
}
