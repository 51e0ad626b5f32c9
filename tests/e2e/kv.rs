//! The KV sink: the read model equals one computed here from the same
//! events; redelivered and duplicate events change nothing; concurrent
//! writers of one document lose no update.

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv};
use serde_json::{Value, json};

use crate::support::*;

/// One aggregate's events in order: created, shipped 0 to 2 times, every
/// fourth cancelled, every eighth created again after that.
fn aggregate_events(index: usize) -> Vec<Value> {
    let id = format!("order-{index}");
    let event = |kind: &str, n: usize| format!("{id}-{kind}-{n}");
    let mut events = vec![created_v3(&event("created", 0), &id, index as i64 * 100)];
    for shipment in 0..index % 3 {
        events.push(shipped_v1(
            &event("shipped", shipment),
            &id,
            &format!("T-{index}-{shipment}"),
        ));
    }
    if index.is_multiple_of(4) {
        events.push(cancelled_v1(&event("cancelled", 0), &id));
    }
    if index.is_multiple_of(8) {
        events.push(created_v3(
            &event("created", 1),
            &id,
            index as i64 * 100 + 1,
        ));
    }
    events
}

/// What the sink below must make of `events`, per aggregate (`None`: deleted).
fn model(events: &[Value]) -> BTreeMap<String, Option<Value>> {
    let mut documents: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for event in events {
        let id = event["aggregateId"].as_str().expect("an id").to_owned();
        let payload = &event["payload"];
        let slot = documents.entry(id).or_default();
        let increment = |document: &mut Value| {
            document["events"] = json!(document["events"].as_i64().unwrap_or(0) + 1);
        };
        match event["eventType"].as_str() {
            Some("orders.OrderCreated") => {
                let document = slot.get_or_insert_with(|| json!({}));
                document["status"] = json!("created");
                document["customer_id"] = payload["customerId"].clone();
                document["total_cents"] = json!(
                    payload["totalAmountCents"]
                        .as_str()
                        .and_then(|t| t.parse::<i64>().ok())
                );
                document["created_at"] = event["occurredAt"].clone();
                increment(document);
            }
            Some("orders.OrderShipped") => {
                let document = slot.get_or_insert_with(|| json!({}));
                document["status"] = json!("shipped");
                document["tracking_number"] = payload["trackingNumber"].clone();
                increment(document);
                let mut history = document["history"].as_array().cloned().unwrap_or_default();
                history.push(event["eventId"].clone());
                if history.len() > 2 {
                    history.remove(0);
                }
                document["history"] = json!(history);
            }
            Some("orders.OrderCancelled") => *slot = None,
            other => panic!("unexpected event type {other:?}"),
        }
    }
    documents
}

fn summary_config(url: &str, stream: &str, bucket: &str) -> String {
    let block = format!(
        "    type: kv
    bucket: {bucket}
    key: 'order.{{aggregate_id}}'
    on:
      orders.OrderCreated:
        set: {{ status: created, customer_id: payload.customer_id, total_cents: payload.total_amount_cents, created_at: occurred_at }}
        increment: {{ events: 1 }}
      orders.OrderShipped:
        set: {{ status: shipped, tracking_number: payload.tracking_number }}
        increment: {{ events: 1 }}
        append: {{ history: {{ value: event_id, max_len: 2 }} }}
      orders.OrderCancelled: {{ delete: true }}"
    );
    single_sink_yaml(url, stream, "summary", &block)
}

/// Every document of `bucket` by aggregate, without Jetline's record.
async fn read_model(
    store: &kv::Store,
    ids: impl Iterator<Item = &String>,
) -> BTreeMap<String, Option<Value>> {
    let mut documents = BTreeMap::new();
    for id in ids {
        let value = store.get(format!("order.{id}")).await.expect("kv read");
        let document = value.map(|bytes| {
            let mut document: Value = serde_json::from_slice(&bytes).expect("a JSON document");
            document
                .as_object_mut()
                .map(|object| object.remove("_jetline"));
            document
        });
        documents.insert(id.clone(), document);
    }
    documents
}

async fn last_revision(js: &jetstream::Context, bucket: &str) -> u64 {
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("the bucket's stream");
    stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence
}

#[tokio::test]
async fn the_summary_equals_the_model_and_redeliveries_change_nothing() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "KVS", &["KVS.>"]).await;

    // Aggregates interleaved, each one's events in order.
    let per_aggregate: Vec<Vec<Value>> = (0..40).map(aggregate_events).collect();
    let longest = per_aggregate.iter().map(Vec::len).max().unwrap_or(0);
    let events: Vec<Value> = (0..longest)
        .flat_map(|position| {
            per_aggregate
                .iter()
                .filter_map(move |events| events.get(position).cloned())
        })
        .collect();
    let outgoing = |events: &[Value]| {
        events
            .iter()
            .map(|event| {
                let id = event["eventId"].as_str().expect("an id");
                Outgoing::binary("KVS.orders", event).header("Nats-Msg-Id", id)
            })
            .collect::<Vec<_>>()
    };
    publish_all(&js, outgoing(&events)).await;
    let published = stream_count(&js, "KVS").await;
    assert_eq!(published, events.len() as u64);

    let yaml = summary_config(&server.url(), "KVS", "SUMMARY_KVS");
    let jetline = Running::start(&yaml);
    until_settled(&js, "KVS", "summary").await;
    jetline.stop().await;

    let expected = model(&events);
    let store = js
        .get_key_value("SUMMARY_KVS")
        .await
        .expect("the bucket was created");
    assert_eq!(read_model(&store, expected.keys()).await, expected);
    assert!(
        expected.values().any(Option::is_none),
        "some documents are deleted"
    );
    assert!(expected.values().any(|doc| {
        doc.as_ref()
            .is_some_and(|d| d["events"] == json!(1) && d["history"].is_null())
    }));
    assert_eq!(stream_count(&js, "DLQ_KVS").await, 0);

    // Duplicates (same Nats-Msg-Id) are stored once; then every event is
    // delivered again to a fresh consumer: nothing is written.
    publish_all(&js, outgoing(&events[..20])).await;
    assert_eq!(stream_count(&js, "KVS").await, published);
    let revision = last_revision(&js, "SUMMARY_KVS").await;
    js.get_stream("KVS")
        .await
        .expect("stream")
        .delete_consumer("jetline-orders-summary")
        .await
        .expect("consumer deleted");
    let jetline = Running::start(&yaml);
    until_settled(&js, "KVS", "summary").await;
    jetline.stop().await;
    assert_eq!(
        last_revision(&js, "SUMMARY_KVS").await,
        revision,
        "a redelivery wrote to the bucket"
    );
    assert_eq!(read_model(&store, expected.keys()).await, expected);
    assert_eq!(stream_count(&js, "DLQ_KVS").await, 0);
}

#[tokio::test]
async fn two_sinks_writing_one_document_lose_no_update() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "KVC", &["KVC.>"]).await;
    let per_key = 100;
    let keys = ["k0", "k1", "k2"];
    let events = (0..per_key)
        .flat_map(|n| keys.map(|key| created_v3(&format!("{key}-{n}"), key, 1)))
        .map(|event| Outgoing::binary("KVC.orders", &event))
        .collect();
    publish_all(&js, events).await;

    let sink = |name: &str| {
        format!(
            "  {name}: {{ type: kv, bucket: COUNTS_KVC, on: {{ orders.OrderCreated: {{ increment: {{ n: 1, {name}: payload.total_amount_cents }} }} }} }}\n"
        )
    };
    let yaml = config_yaml(
        &server.url(),
        &format!(
            "
sources:
  orders: {{ stream: KVC, subjects: ['KVC.>'] }}
sinks:
{}{}routes:
  - {{ name: all, from: orders, to: [a, b] }}
dead_letter: {{ stream: DLQ_KVC, subject_prefix: dlq_kvc }}
",
            sink("a"),
            sink("b")
        ),
    );
    let jetline = Running::start(&yaml);
    until_settled(&js, "KVC", "a").await;
    until_settled(&js, "KVC", "b").await;
    jetline.stop().await;

    let store = js.get_key_value("COUNTS_KVC").await.expect("bucket");
    for key in keys {
        let bytes = store.get(key).await.expect("read").expect("a document");
        let document: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(document["n"], json!(2 * per_key), "{key}: {document}");
        assert_eq!(document["a"], json!(per_key), "{key}: {document}");
        assert_eq!(document["b"], json!(per_key), "{key}: {document}");
    }
    assert_eq!(stream_count(&js, "DLQ_KVC").await, 0);
}
