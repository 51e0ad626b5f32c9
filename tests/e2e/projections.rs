//! The shipped example `config/projections.yaml` runs as written: its KV
//! document, its PostgreSQL statements (against the table of
//! `config/postgres/orders.sql`, which its comment names) and its webhook,
//! with only the addresses swapped for the test servers'.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn the_example_projections_apply_to_all_three_sinks() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "ORDERS", &["orders.>"]).await;
    let database = Postgres::start_own();
    let client = database.client().await;
    let hook = Webhook::start(|_| Answer::status(200)).await;

    let example =
        std::fs::read_to_string(root().join("config/projections.yaml")).expect("the example");
    // The table the example's comment names.
    assert!(example.contains("config/postgres/orders.sql"));
    let ddl =
        std::fs::read_to_string(root().join("config/postgres/orders.sql")).expect("the table");
    client
        .batch_execute(&ddl)
        .await
        .expect("the example's table");
    let yaml = example
        .replace(
            "dir: ../schemas",
            &format!("dir: {}", schemas_dir().display()),
        )
        .replace("https://example.internal/hooks/orders", &hook.url)
        .replace("0.0.0.0:9464", "127.0.0.1:0");

    publish_all(
        &js,
        vec![
            Outgoing::binary("orders.created", &created_v3("e-1", "order-1", 1250)),
            Outgoing::binary("orders.created", &created_v3("e-2", "order-2", 990)),
            Outgoing::binary("orders.shipped", &shipped_v1("e-3", "order-1", "TRACK-1")),
            Outgoing::binary("orders.cancelled", &cancelled_v1("e-4", "order-2")),
        ],
    )
    .await;
    let nats_url = server.url();
    let jetline = Process::start_with_env(
        &yaml,
        &[
            ("JETLINE__NATS__URL", nats_url.as_str()),
            ("DATABASE_URL", database.url()),
            ("NOTIFY_TOKEN", "Bearer example"),
        ],
    );
    for sink in ["order_summary", "orders_table", "notify"] {
        until_settled(&js, "ORDERS", sink).await;
    }
    drop(jetline);

    let store = js.get_key_value("ORDER_SUMMARY").await.expect("the bucket");
    let shipped = store.get("order-1").await.expect("read").expect("order-1");
    let shipped: serde_json::Value = serde_json::from_slice(&shipped).expect("json");
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(shipped["total_cents"], 1250);
    assert_eq!(shipped["shipments"], 1);
    assert_eq!(shipped["carriers"], json!(["ups"]));
    assert_eq!(
        store.get("order-2").await.expect("read"),
        None,
        "cancelled: deleted"
    );

    let rows = client
        .query(
            "SELECT id, status, tracking_number, shipments FROM orders ORDER BY id",
            &[],
        )
        .await
        .expect("orders");
    let rows: Vec<(String, String, Option<String>, i32)> = rows
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert_eq!(
        rows,
        [
            (
                "order-1".into(),
                "shipped".into(),
                Some("TRACK-1".into()),
                1
            ),
            ("order-2".into(), "cancelled".into(), None, 0),
        ]
    );

    let requests = hook.requests();
    assert_eq!(
        requests.len(),
        1,
        "only shipments are routed to the webhook"
    );
    assert_eq!(requests[0].idempotency_key(), "e-3");
    assert_eq!(requests[0].header("authorization"), Some("Bearer example"));
    assert_eq!(stream_count(&js, "DLQ").await, 0);
}
