//! Builders for example-domain events, in JSON and binary envelopes.

use std::sync::LazyLock;

use async_nats::{HeaderMap, jetstream};
use jetline::{
    config::{UnknownFields, raw::SchemasConfig},
    envelope::{Decoder, Envelope},
    schema::SchemaRegistry,
};
use serde_json::{Value, json};

use super::schemas_dir;

pub static DECODER: LazyLock<Decoder> = LazyLock::new(|| {
    let config = SchemasConfig {
        dir: schemas_dir(),
        ..SchemasConfig::default()
    };
    Decoder::new(
        SchemaRegistry::load(&config).expect("example schemas compile"),
        UnknownFields::Reject,
    )
});

/// A JSON envelope of the example domain.
pub fn envelope_json(
    event_id: &str,
    event_type: &str,
    version: u32,
    aggregate_id: &str,
    payload: Value,
) -> Value {
    json!({
        "eventId": event_id,
        "eventType": event_type,
        "schemaVersion": version,
        "aggregateType": "Order",
        "aggregateId": aggregate_id,
        "occurredAt": "2026-11-23T10:00:00Z",
        "correlationId": format!("corr-{event_id}"),
        "causationId": format!("cause-{event_id}"),
        "source": "tests",
        "payload": payload,
    })
}

/// `orders.OrderCreated` at `version` with `payload` (in that version's words).
pub fn order_created(event_id: &str, aggregate_id: &str, version: u32, payload: Value) -> Value {
    envelope_json(
        event_id,
        "orders.OrderCreated",
        version,
        aggregate_id,
        payload,
    )
}

/// `orders.OrderCreated` at v3 for `aggregate_id`, numbered by `n`.
pub fn created_v3(event_id: &str, aggregate_id: &str, n: i64) -> Value {
    envelope_json(
        event_id,
        "orders.OrderCreated",
        3,
        aggregate_id,
        json!({ "orderId": aggregate_id, "customerId": "c-1", "totalAmountCents": n.to_string(), "currency": "EUR" }),
    )
}

/// `orders.OrderShipped` v1.
pub fn shipped_v1(event_id: &str, aggregate_id: &str, tracking: &str) -> Value {
    envelope_json(
        event_id,
        "orders.OrderShipped",
        1,
        aggregate_id,
        json!({ "orderId": aggregate_id, "carrier": "ups", "trackingNumber": tracking }),
    )
}

/// The validated envelope of a JSON document.
pub fn decode_json(document: &Value) -> Envelope {
    DECODER
        .decode(
            Some("application/json"),
            &serde_json::to_vec(document).expect("json"),
        )
        .unwrap_or_else(|err| panic!("test event is valid: {err}"))
}

/// The binary protobuf envelope of a JSON document.
pub fn to_binary(document: &Value) -> Vec<u8> {
    decode_json(document).encode_protobuf()
}

/// A message to publish: body and headers.
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Outgoing {
    pub fn json(subject: &str, document: &Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        Self {
            subject: subject.to_owned(),
            headers,
            body: serde_json::to_vec(document).expect("json"),
        }
    }

    pub fn binary(subject: &str, document: &Value) -> Self {
        Self {
            subject: subject.to_owned(),
            headers: HeaderMap::new(),
            body: to_binary(document),
        }
    }

    pub fn raw(subject: &str, content_type: Option<&str>, body: &[u8]) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(content_type) = content_type {
            headers.insert("Content-Type", content_type);
        }
        Self {
            subject: subject.to_owned(),
            headers,
            body: body.to_vec(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }
}

/// Publishes all, pipelined in windows (async-nats allows 5,000 acks in
/// flight), and waits for every ack; returns the stream sequences, in order.
pub async fn publish_all(js: &jetstream::Context, messages: Vec<Outgoing>) -> Vec<u64> {
    let mut sequences = Vec::with_capacity(messages.len());
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut acks = Vec::with_capacity(1_000);
        for message in messages.by_ref().take(1_000) {
            acks.push(
                js.publish_with_headers(message.subject, message.headers, message.body.into())
                    .await
                    .expect("publish sent"),
            );
        }
        for ack in acks {
            sequences.push(ack.await.expect("publish acked").sequence);
        }
    }
    sequences
}

/// `orders.OrderCancelled` v1.
pub fn cancelled_v1(event_id: &str, aggregate_id: &str) -> Value {
    envelope_json(
        event_id,
        "orders.OrderCancelled",
        1,
        aggregate_id,
        json!({ "orderId": aggregate_id, "reason": "CANCEL_REASON_CUSTOMER_REQUEST" }),
    )
}
