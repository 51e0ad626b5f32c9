//! The PostgreSQL sink over TLS, against a cluster that refuses
//! connections without it (so a row written proves the connection was
//! encrypted): rows applied with `sslmode=require`, `verify-ca` and
//! `verify-full` against the right CA; `verify-full` against another CA
//! applies nothing and dead-letters each event with the certificate error;
//! `verify-full` without `sslrootcert` stops `run` with exit 2.

use std::time::Duration;

use jetline::dead_letter::header as dlq;

use super::*;

const EVENTS: usize = 3;

/// One insert per created order into `table`, the connection string from
/// `<stream>_URL`; two attempts, so a connection that cannot be made
/// dead-letters quickly.
fn insert_yaml(nats_url: &str, stream: &str, table: &str) -> String {
    let block = format!(
        "    type: postgres
    url_env: {stream}_URL
    checkpoint_table: {table}_checkpoints
    retry: {{ max_attempts: 2, backoff: [100ms], jitter: 0.0 }}
    on:
      orders.OrderCreated:
        sql: INSERT INTO {table} (id, total) VALUES ($1, $2)
        params: [aggregate_id, payload.total_amount_cents]"
    );
    single_sink_yaml(nats_url, stream, "rows", &block)
}

/// A CA and a cluster taking only TLS with a certificate it signed for
/// 127.0.0.1; `password` as for [`PgTls`].
pub fn tls_cluster(dir: &std::path::Path, password: Option<&str>) -> (Ca, Postgres) {
    let ca = Ca::new(dir, "ca");
    let cert = ca.issue(dir, "pg", Usage::Server, Validity::Current);
    let pg = Postgres::start_tls(PgTls {
        server: &cert,
        password,
    });
    (ca, pg)
}

/// Runs Jetline with `url` until the source is settled; the rows written.
async fn apply(server: &NatsServer, pg: &Postgres, stream: &str, url: &str) -> i64 {
    let table = stream.to_lowercase();
    let client = pg.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id text PRIMARY KEY, total bigint NOT NULL)"
        ))
        .await
        .expect("table created");
    let js = server.jetstream().await;
    create_stream(&js, stream, &[&format!("{stream}.>")]).await;
    let events = (0..EVENTS)
        .map(|n| {
            let document = created_v3(&format!("{stream}-{n}"), &format!("order-{n}"), n as i64);
            Outgoing::binary(&format!("{stream}.created"), &document)
        })
        .collect();
    publish_all(&js, events).await;
    let variable = format!("{stream}_URL");
    let mut jetline = Process::start_logged(
        &insert_yaml(&server.url(), stream, &table),
        &[(&variable, url)],
        "warn",
    );
    settled_while_running(&mut jetline, &js, stream, "rows").await;
    assert_eq!(jetline.terminate(), Some(0));
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .expect("rows counted")
        .get(0)
}

#[tokio::test]
async fn rows_are_applied_with_require_verify_ca_and_verify_full() {
    let dir = tempfile::tempdir().expect("a directory");
    let (ca, pg) = tls_cluster(dir.path(), None);
    let server = NatsServer::start();
    let root = ca.cert.display();
    for (stream, query) in [
        ("PG_REQUIRE", "sslmode=require".to_owned()),
        (
            "PG_VERIFY_CA",
            format!("sslmode=verify-ca&sslrootcert={root}"),
        ),
        (
            "PG_VERIFY_FULL",
            format!("sslmode=verify-full&sslrootcert={root}"),
        ),
    ] {
        let url = format!("{}?{query}", pg.url());
        let rows = apply(&server, &pg, stream, &url).await;
        assert_eq!(rows, EVENTS as i64, "{stream}: every event applied");
        let js = server.jetstream().await;
        assert_eq!(
            stream_count(&js, &format!("DLQ_{stream}")).await,
            0,
            "{stream}"
        );
    }
}

#[tokio::test]
async fn verify_full_against_another_ca_dead_letters_with_the_certificate_error() {
    let dir = tempfile::tempdir().expect("a directory");
    let (_, pg) = tls_cluster(dir.path(), None);
    let other = Ca::new(dir.path(), "other-ca");
    let server = NatsServer::start();
    let stream = "PG_WRONG_CA";
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        other.cert.display()
    );
    let rows = apply(&server, &pg, stream, &url).await;
    assert_eq!(rows, 0, "nothing written past a certificate that fails");
    let js = server.jetstream().await;
    let letters = stream_messages(&js, &format!("DLQ_{stream}")).await;
    assert_eq!(letters.len(), EVENTS, "each event dead-lettered");
    for letter in letters {
        let header = |name: &str| {
            letter
                .headers
                .get(name)
                .map(|value| value.to_string())
                .unwrap_or_default()
        };
        assert_eq!(header(dlq::REASON), "max_attempts");
        let error = header(dlq::ERROR);
        assert!(
            error.contains("certificate") && error.contains("UnknownIssuer"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn verify_full_without_a_root_certificate_is_a_configuration_error() {
    let server = NatsServer::start();
    let stream = "PG_NO_ROOT";
    let yaml = insert_yaml(&server.url(), stream, "pg_no_root");
    let url = "postgres://postgres@127.0.0.1:1/postgres?sslmode=verify-full";
    let ended = jetline_command(
        &["run"],
        &yaml,
        &[(&format!("{stream}_URL"), url)],
        Duration::from_secs(20),
    );
    assert_eq!(ended.code, Some(2), "{}", ended.stderr);
    assert!(ended.stderr.contains("sinks.rows"), "{}", ended.stderr);
    assert!(ended.stderr.contains("sslrootcert"), "{}", ended.stderr);
}
