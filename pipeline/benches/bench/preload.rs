//! The benchmark's events: the example domain (`schemas/orders`), ~300 B
//! binary envelopes over 1,000 aggregates, 50% of them published at an old
//! schema version so that Jetline upcasts them. Each event is also kept as a
//! row (the fields the sinks write), so that the raw programs can write the
//! same effects without decoding: the row of stream sequence `s` is
//! `events[s - 1]`.

use async_nats::jetstream;
use serde_json::{Value, json};

use crate::support::{Outgoing, publish_all, to_binary};

pub const AGGREGATES: usize = 1_000;

/// Events generated and published at once: bounds the memory of a
/// 1,000,000-event backlog.
const CHUNK: usize = 10_000;

/// What an event is, by its position: 30% `OrderCreated` v1, 20% v2 (both
/// upcast to v3), 30% v3, 20% `OrderShipped` v1 (its newest version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Created { version: u32 },
    Shipped,
}

impl Kind {
    fn of(n: usize) -> Self {
        match n % 10 {
            0..=2 => Kind::Created { version: 1 },
            3 | 4 => Kind::Created { version: 2 },
            5..=7 => Kind::Created { version: 3 },
            _ => Kind::Shipped,
        }
    }

    pub fn event_type(self) -> &'static str {
        match self {
            Kind::Created { .. } => "orders.OrderCreated",
            Kind::Shipped => "orders.OrderShipped",
        }
    }

    /// Whether Jetline upcasts it before any sink sees it.
    pub fn needs_upcast(self) -> bool {
        matches!(self, Kind::Created { version } if version < 3)
    }
}

/// One event's row: what every sink writes for it.
#[derive(Debug, Clone)]
pub struct Event {
    pub event_id: String,
    pub aggregate_id: String,
    pub kind: Kind,
    /// The order total in cents (`OrderCreated`); v1 and v2 carry it as a
    /// decimal amount, which the upcaster turns back into these cents.
    pub amount_cents: Option<i64>,
    /// The customer (`OrderCreated`) or the tracking number (`OrderShipped`).
    pub detail: String,
}

impl Event {
    /// The `n`th event of a set whose ids start with `tag`.
    pub fn new(tag: &str, n: usize) -> Self {
        let kind = Kind::of(n);
        let aggregate = n % AGGREGATES;
        let (amount_cents, detail) = match kind {
            // Cents with both digits after the point set, so the decimal
            // amounts of v1 and v2 (12.34) exercise the exact conversion.
            Kind::Created { .. } => (
                Some(((n as i64 * 7_919) % 99_999) + 101),
                format!("cust-{:05}", aggregate * 7 % 5_000),
            ),
            Kind::Shipped => (None, format!("1Z{n:014}")),
        };
        Self {
            event_id: format!("{tag}-{n:07}"),
            aggregate_id: format!("order-{aggregate:04}"),
            kind,
            amount_cents,
            detail,
        }
    }

    /// The source subject: the aggregate is its last token, as event stores
    /// name them, so the raw JetStream program can route without decoding.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}", self.aggregate_id)
    }

    /// The envelope in the proto3 JSON mapping, payload at the event's own
    /// schema version: what the producer means, before encoding.
    pub fn document(&self) -> Value {
        let cents = self.amount_cents.unwrap_or_default();
        let decimal = cents as f64 / 100.0;
        let items = json!([
            { "sku": "SKU-10442", "quantity": 2, "unitPrice": 4.5 },
            { "sku": "SKU-20917", "quantity": 1, "unitPrice": 19.99 },
            { "sku": "SKU-31008", "quantity": 3, "unitPrice": 2.25 },
            { "sku": "SKU-40023", "quantity": 1, "unitPrice": 7.8 },
        ]);
        let (version, payload) = match self.kind {
            Kind::Created { version: 1 } => (
                1,
                json!({ "orderId": self.aggregate_id, "customerId": self.detail, "total": decimal, "items": items }),
            ),
            Kind::Created { version: 2 } => (
                2,
                json!({ "orderId": self.aggregate_id, "customerId": self.detail, "totalAmount": decimal, "currency": "EUR", "items": items }),
            ),
            Kind::Created { version } => (
                version,
                json!({ "orderId": self.aggregate_id, "customerId": self.detail, "totalAmountCents": cents.to_string(), "currency": "EUR", "items": items }),
            ),
            Kind::Shipped => (
                1,
                json!({ "orderId": self.aggregate_id, "carrier": "ups", "trackingNumber": self.detail, "shippedAt": "2026-11-23T10:05:00Z" }),
            ),
        };
        json!({
            "eventId": self.event_id,
            "eventType": self.kind.event_type(),
            "schemaVersion": version,
            "aggregateType": "Order",
            "aggregateId": self.aggregate_id,
            "occurredAt": "2026-11-23T10:00:00Z",
            "correlationId": format!("corr-{}", self.event_id),
            "causationId": format!("cause-{}", self.event_id),
            "source": "bench",
            "metadata": { "tenant": "acme-retail", "channel": "web-checkout", "region": "eu-west-1" },
            "payload": payload,
        })
    }

    /// The binary envelope a producer publishes, with `Nats-Msg-Id` (the
    /// raw JetStream program copies it, as Jetline sets it, downstream).
    pub fn outgoing(&self, prefix: &str) -> Outgoing {
        let mut message = Outgoing::binary(&self.subject(prefix), &self.document());
        message
            .headers
            .insert("Nats-Msg-Id", self.event_id.as_str());
        message
    }
}

/// The events `0..count` of `tag`.
pub fn events(tag: &str, count: usize) -> Vec<Event> {
    (0..count).map(|n| Event::new(tag, n)).collect()
}

/// Publishes `events` to subjects under `prefix`, acks awaited in windows.
pub async fn publish(js: &jetstream::Context, prefix: &str, events: &[Event]) {
    for chunk in events.chunks(CHUNK) {
        publish_all(
            js,
            chunk.iter().map(|event| event.outgoing(prefix)).collect(),
        )
        .await;
    }
}

/// Generates and publishes `count` events of `tag` without keeping them:
/// for the backlogs of the memory measurement.
pub async fn publish_generated(js: &jetstream::Context, prefix: &str, tag: &str, count: usize) {
    for start in (0..count).step_by(CHUNK) {
        let end = (start + CHUNK).min(count);
        let batch = (start..end)
            .map(|n| Event::new(tag, n).outgoing(prefix))
            .collect();
        publish_all(js, batch).await;
    }
}

/// Mean size of a published envelope, in bytes (for the report).
pub fn mean_size(events: &[Event]) -> usize {
    let sample = &events[..events.len().min(1_000)];
    let total: usize = sample
        .iter()
        .map(|event| to_binary(&event.document()).len())
        .sum();
    total / sample.len().max(1)
}

/// The part of `events` that needs an upcast, in percent.
pub fn upcast_share(events: &[Event]) -> f64 {
    let upcast = events
        .iter()
        .filter(|event| event.kind.needs_upcast())
        .count();
    100.0 * upcast as f64 / events.len().max(1) as f64
}
