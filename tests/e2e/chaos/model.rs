//! What a chaos scenario publishes, and what each sink must end up with:
//! the model the accounting compares the sinks against, computed from the
//! published messages alone, never from anything Jetline reports.
//!
//! Aggregate `k` gets events `0, 1, 2, ...` in stream order (ids
//! `ev-<k>-<n>`), interleaved across aggregates; a quarter each are JSON v3,
//! binary v3, binary v1 and JSON v1 (the v1 ones upcast to v3 on the way).
//! Poison, where a scenario asks for it, takes the place of 1% of the
//! messages, each kind with the dead-letter reason it must get.

use std::collections::{BTreeMap, HashMap};

use async_nats::jetstream;
use serde_json::{Value, json};

use crate::support::{Outgoing, envelope_json, publish_all, to_binary};

/// The source subjects are `chaos.<aggregate_id>`.
pub const SUBJECT_PREFIX: &str = "chaos";

/// The size of a run: `JETLINE_CHAOS_EVENTS` (default 200,000) events over
/// one aggregate per 100 events, at most 2,000.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    pub events: usize,
    pub aggregates: usize,
}

impl Size {
    pub fn from_env() -> Self {
        let events = std::env::var("JETLINE_CHAOS_EVENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(200_000);
        Self {
            events,
            aggregates: (events / 100).clamp(1, 2_000),
        }
    }
}

/// Malformed input, each kind with the reason it is dead-lettered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    /// Bytes that are no protobuf at all.
    Garbage,
    /// A binary envelope cut short inside its payload.
    Truncated,
    /// A JSON envelope whose payload has a field of the wrong type.
    WrongSchema,
    /// An event type the schemas do not have.
    UnknownType,
    /// A valid event of 10 MB: above `limits.max_message_bytes` (1 MiB).
    TooLarge,
    /// A JSON envelope nested 100,000 levels deep.
    DeepJson,
}

impl Poison {
    /// The kinds that repeat; `TooLarge` is published once.
    const CYCLE: [Poison; 5] = [
        Poison::Garbage,
        Poison::Truncated,
        Poison::WrongSchema,
        Poison::UnknownType,
        Poison::DeepJson,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Poison::Garbage | Poison::Truncated | Poison::DeepJson => "invalid_envelope",
            Poison::WrongSchema => "invalid_payload",
            Poison::UnknownType => "unknown_type",
            Poison::TooLarge => "too_large",
        }
    }

    /// The message, and the event id a sink would apply it under.
    fn message(self, index: usize, aggregate_id: &str) -> (Outgoing, Option<String>) {
        let event_id = format!("poison-{index}");
        let subject = format!("{SUBJECT_PREFIX}.{aggregate_id}");
        let created = |payload: Value| {
            envelope_json(&event_id, "orders.OrderCreated", 3, aggregate_id, payload)
        };
        match self {
            Poison::Garbage => {
                // Wire type 7 does not exist: no decoder can take this.
                let mut body = vec![0x0f];
                body.extend(format!("garbage {index} \u{1}\u{7f}").bytes());
                (Outgoing::raw(&subject, None, &body), None)
            }
            Poison::Truncated => {
                let mut body = to_binary(&created(cents_payload(aggregate_id, 100)));
                body.truncate(body.len() - 3);
                (Outgoing::raw(&subject, None, &body), Some(event_id))
            }
            Poison::WrongSchema => {
                let payload = json!({ "orderId": aggregate_id, "customerId": "c-1", "totalAmountCents": "twelve", "currency": "EUR" });
                (Outgoing::json(&subject, &created(payload)), Some(event_id))
            }
            Poison::UnknownType => {
                let document = envelope_json(
                    &event_id,
                    "orders.OrderTeleported",
                    1,
                    aggregate_id,
                    json!({ "orderId": aggregate_id }),
                );
                (Outgoing::json(&subject, &document), Some(event_id))
            }
            Poison::TooLarge => {
                let mut payload = cents_payload(aggregate_id, 100);
                payload["customerId"] = Value::String("x".repeat(10 * 1024 * 1024));
                (Outgoing::json(&subject, &created(payload)), Some(event_id))
            }
            Poison::DeepJson => {
                let depth = 100_000;
                let document =
                    serde_json::to_vec(&created(cents_payload(aggregate_id, 100))).expect("json");
                // `"metadata": [[[...]]]` just before the closing brace.
                let mut body = document[..document.len() - 1].to_vec();
                body.extend(b",\"metadata\":");
                body.extend(std::iter::repeat_n(b'[', depth));
                body.extend(std::iter::repeat_n(b']', depth));
                body.push(b'}');
                (
                    Outgoing::raw(&subject, Some("application/json"), &body),
                    Some(event_id),
                )
            }
        }
    }
}

/// Which poison a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonMix {
    None,
    /// 1%: every kind in turn, and one `TooLarge`.
    Every,
    /// 1% garbage only (cheap dead letters).
    GarbageOnly,
}

/// A good event: what every sink applies.
#[derive(Debug, Clone)]
pub struct Good {
    pub event_id: String,
    pub aggregate_id: String,
    /// Its place among its aggregate's events.
    pub n: usize,
    pub amount_cents: i64,
}

#[derive(Debug, Clone)]
pub enum Content {
    Good(Good),
    Poison {
        kind: Poison,
        event_id: Option<String>,
    },
}

/// One published message and its stream sequence.
#[derive(Debug, Clone)]
pub struct Published {
    pub seq: u64,
    pub content: Content,
}

impl Published {
    pub fn event_id(&self) -> Option<&str> {
        match &self.content {
            Content::Good(good) => Some(&good.event_id),
            Content::Poison { event_id, .. } => event_id.as_deref(),
        }
    }
}

/// What a sink must do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Applied,
    DeadLetter(&'static str),
}

/// A generated part of the stream, not yet published.
pub struct Batch {
    messages: Vec<(Outgoing, Content)>,
}

/// Everything published so far, with the expected outcome per sink.
#[derive(Default)]
pub struct Model {
    pub published: Vec<Published>,
    by_event_id: HashMap<String, usize>,
    /// Good events a sink must dead-letter (a scenario's planned failure).
    dead_letters: HashMap<(String, String), &'static str>,
    /// Events generated so far per aggregate, and messages in all.
    next_n: BTreeMap<usize, usize>,
    generated: usize,
}

impl Model {
    /// The next `count` messages of the stream over `size.aggregates`.
    pub fn generate(&mut self, size: Size, count: usize, poison: PoisonMix) -> Batch {
        let mut messages = Vec::with_capacity(count);
        for _ in 0..count {
            let index = self.generated;
            self.generated += 1;
            let aggregate = index % size.aggregates;
            let aggregate_id = format!("order-{aggregate:04}");
            let poison_kind = match poison {
                PoisonMix::None => None,
                _ if index % 100 != 50 => None,
                PoisonMix::GarbageOnly => Some(Poison::Garbage),
                PoisonMix::Every if index == 50 => Some(Poison::TooLarge),
                PoisonMix::Every => Some(Poison::CYCLE[index / 100 % Poison::CYCLE.len()]),
            };
            if let Some(kind) = poison_kind {
                let (outgoing, event_id) = kind.message(index, &aggregate_id);
                messages.push((outgoing, Content::Poison { kind, event_id }));
                continue;
            }
            let slot = self.next_n.entry(aggregate).or_default();
            let n = *slot;
            *slot += 1;
            let good = Good {
                event_id: format!("ev-{aggregate:04}-{n:05}"),
                aggregate_id,
                n,
                amount_cents: ((aggregate as i64 * 7_919 + n as i64 * 104_729) % 99_999) + 101,
            };
            messages.push((good_message(&good, index), Content::Good(good)));
        }
        Batch { messages }
    }

    /// Publishes `batch` and records each message with its sequence.
    pub async fn publish(&mut self, js: &jetstream::Context, batch: Batch) {
        let (outgoing, contents): (Vec<_>, Vec<_>) = batch.messages.into_iter().unzip();
        let sequences = publish_all(js, outgoing).await;
        for (seq, content) in sequences.into_iter().zip(contents) {
            let published = Published { seq, content };
            if let Some(id) = published.event_id() {
                self.by_event_id.insert(id.to_owned(), self.published.len());
            }
            self.published.push(published);
        }
    }

    /// Plans that `sink` dead-letters the good event `event_id` for `reason`.
    pub fn expect_dead_letter(&mut self, sink: &str, event_id: &str, reason: &'static str) {
        self.dead_letters
            .insert((sink.to_owned(), event_id.to_owned()), reason);
    }

    pub fn expected(&self, sink: &str, message: &Published) -> Expected {
        match &message.content {
            Content::Poison { kind, .. } => Expected::DeadLetter(kind.reason()),
            Content::Good(good) => self
                .dead_letters
                .get(&(sink.to_owned(), good.event_id.clone()))
                .map_or(Expected::Applied, |reason| Expected::DeadLetter(reason)),
        }
    }

    pub fn by_event_id(&self, event_id: &str) -> Option<&Published> {
        self.by_event_id
            .get(event_id)
            .map(|&index| &self.published[index])
    }

    pub fn poison_count(&self) -> usize {
        self.published
            .iter()
            .filter(|message| matches!(message.content, Content::Poison { .. }))
            .count()
    }

    /// The last stream sequence published.
    pub fn last_seq(&self) -> u64 {
        self.published.last().map_or(0, |message| message.seq)
    }

    /// Per aggregate, the events and the sum of cents `sink` must hold.
    pub fn totals(&self, sink: &str) -> BTreeMap<String, (i64, i64)> {
        let mut totals: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for message in &self.published {
            if let Content::Good(good) = &message.content
                && self.expected(sink, message) == Expected::Applied
            {
                let entry = totals.entry(good.aggregate_id.clone()).or_default();
                entry.0 += 1;
                entry.1 += good.amount_cents;
            }
        }
        totals
    }

    /// The aggregate ids that have at least one message.
    pub fn aggregate_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .published
            .iter()
            .filter_map(|message| match &message.content {
                Content::Good(good) => Some(good.aggregate_id.clone()),
                Content::Poison { .. } => None,
            })
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

fn cents_payload(aggregate_id: &str, cents: i64) -> Value {
    json!({ "orderId": aggregate_id, "customerId": "c-1", "totalAmountCents": cents.to_string(), "currency": "EUR" })
}

/// A good event in one of four shapes, by its position in the stream.
fn good_message(good: &Good, index: usize) -> Outgoing {
    let subject = format!("{SUBJECT_PREFIX}.{}", good.aggregate_id);
    let (version, payload) = if index % 4 < 2 {
        (3, cents_payload(&good.aggregate_id, good.amount_cents))
    } else {
        // v1 carries a decimal amount; the upcaster turns it back into cents.
        let total = good.amount_cents as f64 / 100.0;
        (
            1,
            json!({ "orderId": good.aggregate_id, "customerId": "c-1", "total": total }),
        )
    };
    let document = envelope_json(
        &good.event_id,
        "orders.OrderCreated",
        version,
        &good.aggregate_id,
        payload,
    );
    if index.is_multiple_of(2) {
        Outgoing::json(&subject, &document)
    } else {
        Outgoing::binary(&subject, &document)
    }
}
