//! Values taken from an event for the read-model sinks: the paths a
//! configuration names (`aggregate_id`, `occurred_at`, `metadata.tenant`,
//! `payload.customer_id`), what they yield according to the schema, and the
//! lookup on a decoded event.
//!
//! A path is checked against the schema of its event type at start-up
//! ([`ValuePath::resolve`]); at run time the lookup goes by field name on the
//! payload as decoded, so a field that a later version dropped is a
//! [`ValueError`] for that event, never a panic.

use std::{borrow::Cow, fmt};

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
};
use serde::{Deserialize, Deserializer};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::envelope::{Envelope, NoJsonForm};

const TIMESTAMP_MESSAGE: &str = "google.protobuf.Timestamp";

/// A field of the envelope (or of the delivery) a path may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeField {
    EventId,
    EventType,
    SchemaVersion,
    AggregateType,
    AggregateId,
    OccurredAt,
    CorrelationId,
    CausationId,
    Source,
    /// The stream the event was read from.
    SourceStream,
    /// The event's sequence in that stream.
    SourceSeq,
}

impl EnvelopeField {
    const ALL: [(&'static str, EnvelopeField); 11] = [
        ("event_id", EnvelopeField::EventId),
        ("event_type", EnvelopeField::EventType),
        ("schema_version", EnvelopeField::SchemaVersion),
        ("aggregate_type", EnvelopeField::AggregateType),
        ("aggregate_id", EnvelopeField::AggregateId),
        ("occurred_at", EnvelopeField::OccurredAt),
        ("correlation_id", EnvelopeField::CorrelationId),
        ("causation_id", EnvelopeField::CausationId),
        ("source", EnvelopeField::Source),
        ("source_stream", EnvelopeField::SourceStream),
        ("source_seq", EnvelopeField::SourceSeq),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, field)| *field == self)
            .map_or("?", |(name, _)| name)
    }

    fn value_type(self) -> ValueType {
        match self {
            EnvelopeField::SchemaVersion | EnvelopeField::SourceSeq => ValueType::Int64,
            EnvelopeField::OccurredAt => ValueType::Timestamp,
            EnvelopeField::EventId
            | EnvelopeField::EventType
            | EnvelopeField::AggregateType
            | EnvelopeField::AggregateId
            | EnvelopeField::CorrelationId
            | EnvelopeField::CausationId
            | EnvelopeField::Source
            | EnvelopeField::SourceStream => ValueType::Text,
        }
    }
}

/// An event's place in its source stream, for `source_stream` and `source_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position<'a> {
    pub stream: &'a str,
    pub seq: u64,
}

impl<'a> Position<'a> {
    pub fn of(event: &'a super::Event) -> Self {
        Self {
            stream: &event.delivery.stream,
            seq: event.delivery.stream_seq,
        }
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValuePath {
    Envelope(EnvelopeField),
    /// `metadata.<key>`: an entry of the envelope's metadata map (text).
    Metadata(String),
    /// `payload.<field>[.<field>...]`: a field of the payload, through
    /// singular message fields.
    Payload(Vec<String>),
}

/// The paths a user may write, for error messages.
pub const PATH_HELP: &str = "event_id, event_type, schema_version, aggregate_type, aggregate_id, \
     occurred_at, correlation_id, causation_id, source, source_stream, source_seq, \
     metadata.<key>, payload.<field>";

impl ValuePath {
    /// `None` when `text` is not written as a path.
    pub fn parse(text: &str) -> Option<Self> {
        if let Some((_, field)) = EnvelopeField::ALL.iter().find(|(name, _)| *name == text) {
            return Some(ValuePath::Envelope(*field));
        }
        if let Some(key) = text.strip_prefix("metadata.") {
            return (!key.is_empty()).then(|| ValuePath::Metadata(key.to_owned()));
        }
        let fields = text.strip_prefix("payload.")?;
        let names: Vec<String> = fields.split('.').map(str::to_owned).collect();
        let is_identifier = |name: &String| {
            name.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        names
            .iter()
            .all(is_identifier)
            .then_some(ValuePath::Payload(names))
    }

    /// What this path yields for events of the schema `payload`, or why it
    /// cannot be read from them.
    pub fn resolve(&self, payload: &MessageDescriptor) -> Result<ValueType, String> {
        let names = match self {
            ValuePath::Envelope(field) => return Ok(field.value_type()),
            ValuePath::Metadata(_) => return Ok(ValueType::Text),
            ValuePath::Payload(names) => names,
        };
        let mut message = payload.clone();
        let mut walked = String::from("payload");
        for (index, name) in names.iter().enumerate() {
            let field = message
                .get_field_by_name(name)
                .ok_or_else(|| format!("{} has no field {name:?}", message.full_name()))?;
            walked.push('.');
            walked.push_str(name);
            if index + 1 == names.len() {
                return Ok(ValueType::of_field(&field));
            }
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => message = inner,
                _ => {
                    return Err(format!(
                        "{walked} is not a single message: a path cannot go further"
                    ));
                }
            }
        }
        Err("a payload path needs a field name".to_owned())
    }

    /// The top-level payload field the path reads, if it reads the payload.
    pub fn payload_field(&self) -> Option<&str> {
        match self {
            ValuePath::Payload(names) => names.first().map(String::as_str),
            ValuePath::Envelope(_) | ValuePath::Metadata(_) => None,
        }
    }

    /// Finds the value in an event.
    pub fn lookup<'a>(
        &self,
        envelope: &'a Envelope,
        position: Position<'a>,
    ) -> Result<Found<'a>, ValueError> {
        let found = match self {
            ValuePath::Envelope(field) => match field {
                EnvelopeField::EventId => Found::Text(Cow::Borrowed(&envelope.event_id)),
                EnvelopeField::EventType => Found::Text(Cow::Borrowed(&envelope.event_type)),
                EnvelopeField::SchemaVersion => Found::Int(i64::from(envelope.schema_version)),
                EnvelopeField::AggregateType => {
                    Found::Text(Cow::Borrowed(&envelope.aggregate_type))
                }
                EnvelopeField::AggregateId => Found::Text(Cow::Borrowed(&envelope.aggregate_id)),
                EnvelopeField::OccurredAt => Found::Timestamp(envelope.occurred_at),
                EnvelopeField::CorrelationId => {
                    Found::Text(Cow::Borrowed(&envelope.correlation_id))
                }
                EnvelopeField::CausationId => Found::Text(Cow::Borrowed(&envelope.causation_id)),
                EnvelopeField::Source => Found::Text(Cow::Borrowed(&envelope.source)),
                EnvelopeField::SourceStream => Found::Text(Cow::Borrowed(position.stream)),
                EnvelopeField::SourceSeq => {
                    Found::Int(i64::try_from(position.seq).map_err(|_| self.error("too large"))?)
                }
            },
            ValuePath::Metadata(key) => envelope
                .metadata
                .get(key)
                .map_or(Found::Absent, |value| Found::Text(Cow::Borrowed(value))),
            ValuePath::Payload(names) => self.lookup_payload(&envelope.payload, names)?,
        };
        Ok(found)
    }

    fn lookup_payload<'a>(
        &self,
        payload: &'a DynamicMessage,
        names: &[String],
    ) -> Result<Found<'a>, ValueError> {
        let mut message = payload;
        for (index, name) in names.iter().enumerate() {
            let field = message
                .descriptor()
                .get_field_by_name(name)
                .ok_or_else(|| {
                    self.error(format!(
                        "{} has no field {name:?}",
                        message.descriptor().full_name()
                    ))
                })?;
            let last = index + 1 == names.len();
            if (!last || field.supports_presence()) && !message.has_field(&field) {
                return Ok(Found::Absent);
            }
            let value = message.get_field(&field);
            if last {
                return Ok(Found::Field(value, field));
            }
            match value {
                Cow::Borrowed(prost_reflect::Value::Message(inner)) => message = inner,
                _ => return Err(self.error("is not a single message")),
            }
        }
        Err(self.error("a payload path needs a field name"))
    }

    fn error(&self, problem: impl Into<String>) -> ValueError {
        ValueError {
            path: self.to_string(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ValuePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValuePath::Envelope(field) => f.write_str(field.name()),
            ValuePath::Metadata(key) => write!(f, "metadata.{key}"),
            ValuePath::Payload(names) => write!(f, "payload.{}", names.join(".")),
        }
    }
}

/// A path as a configuration value: a string that must be a path.
impl<'de> Deserialize<'de> for ValuePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ValuePath::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a value path (known: {PATH_HELP})"))
        })
    }
}

/// A value in a configuration: a path, or a literal.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueSpec {
    Path(ValuePath),
    Literal(serde_json::Value),
}

impl ValueSpec {
    /// The top-level payload field the value reads, if it reads the payload.
    pub fn payload_field(&self) -> Option<&str> {
        match self {
            ValueSpec::Path(path) => path.payload_field(),
            ValueSpec::Literal(_) => None,
        }
    }
}

/// A string that reads as a path is a path; any other string, number, bool
/// or null is a literal; `{ literal: <value> }` is a literal whatever it
/// holds (for the string `"occurred_at"`, say).
impl<'de> Deserialize<'de> for ValueSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(match ValuePath::parse(&text) {
                Some(path) => ValueSpec::Path(path),
                None => ValueSpec::Literal(serde_json::Value::String(text)),
            }),
            serde_json::Value::Object(mut map) => match (map.remove("literal"), map.is_empty()) {
                (Some(literal), true) => Ok(ValueSpec::Literal(literal)),
                _ => Err(serde::de::Error::custom(
                    "expected a path, a literal, or { literal: <value> }",
                )),
            },
            serde_json::Value::Array(_) => Err(serde::de::Error::custom(
                "a list is written { literal: [...] }",
            )),
            literal => Ok(ValueSpec::Literal(literal)),
        }
    }
}

impl ValueSpec {
    /// The value for an event, as JSON.
    pub fn to_json(
        &self,
        envelope: &Envelope,
        position: Position<'_>,
    ) -> Result<serde_json::Value, ValueError> {
        match self {
            ValueSpec::Literal(value) => Ok(value.clone()),
            ValueSpec::Path(path) => {
                let found = path.lookup(envelope, position)?;
                found.to_json().map_err(|error| path.error(error.0))
            }
        }
    }
}

/// What a path yields, as the schema says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Bool,
    Int32,
    Int64,
    UInt32,
    UInt64,
    Float,
    Double,
    Text,
    Bytes,
    /// An enum, taken by its value name.
    Enum,
    Timestamp,
    /// A message, list or map: taken as JSON.
    Json,
}

impl ValueType {
    fn of_field(field: &FieldDescriptor) -> Self {
        if field.is_list() || field.is_map() {
            return ValueType::Json;
        }
        match field.kind() {
            Kind::Bool => ValueType::Bool,
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => ValueType::Int32,
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => ValueType::Int64,
            Kind::Uint32 | Kind::Fixed32 => ValueType::UInt32,
            Kind::Uint64 | Kind::Fixed64 => ValueType::UInt64,
            Kind::Float => ValueType::Float,
            Kind::Double => ValueType::Double,
            Kind::String => ValueType::Text,
            Kind::Bytes => ValueType::Bytes,
            Kind::Enum(_) => ValueType::Enum,
            Kind::Message(message) if message.full_name() == TIMESTAMP_MESSAGE => {
                ValueType::Timestamp
            }
            Kind::Message(_) => ValueType::Json,
        }
    }

    pub fn is_numeric(self) -> bool {
        match self {
            ValueType::Int32
            | ValueType::Int64
            | ValueType::UInt32
            | ValueType::UInt64
            | ValueType::Float
            | ValueType::Double => true,
            ValueType::Bool
            | ValueType::Text
            | ValueType::Bytes
            | ValueType::Enum
            | ValueType::Timestamp
            | ValueType::Json => false,
        }
    }
}

/// A value found in an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<'a> {
    /// Not set (a message or optional field the event left out, a missing
    /// metadata key): JSON null, SQL NULL.
    Absent,
    Text(Cow<'a, str>),
    Int(i64),
    Timestamp(prost_types::Timestamp),
    Field(Cow<'a, prost_reflect::Value>, FieldDescriptor),
}

impl Found<'_> {
    /// JSON: 64-bit integers as numbers, enums by name, timestamps in
    /// RFC 3339, bytes in base64, messages in the proto3 JSON mapping with
    /// the schema's field names and every field present.
    /// The value in the proto3 JSON mapping; a timestamp outside years
    /// 1 to 9999 (or a message holding one) has none.
    pub fn to_json(&self) -> Result<serde_json::Value, NoJsonForm> {
        match self {
            Found::Absent => Ok(serde_json::Value::Null),
            Found::Text(text) => Ok(serde_json::Value::String(text.to_string())),
            Found::Int(number) => Ok(serde_json::Value::from(*number)),
            Found::Timestamp(timestamp) => timestamp_json(timestamp),
            Found::Field(value, field) => field_json(value, &field.kind()),
        }
    }

    /// A timestamp, from the envelope or a `google.protobuf.Timestamp` field.
    pub fn timestamp(&self) -> Option<prost_types::Timestamp> {
        match self {
            Found::Timestamp(timestamp) => Some(*timestamp),
            Found::Field(Cow::Borrowed(prost_reflect::Value::Message(message)), _)
            | Found::Field(Cow::Owned(prost_reflect::Value::Message(message)), _)
                if message.descriptor().full_name() == TIMESTAMP_MESSAGE =>
            {
                message.transcode_to::<prost_types::Timestamp>().ok()
            }
            Found::Absent | Found::Text(_) | Found::Int(_) | Found::Field(..) => None,
        }
    }
}

fn timestamp_json(timestamp: &prost_types::Timestamp) -> Result<serde_json::Value, NoJsonForm> {
    match timestamp_rfc3339(timestamp) {
        Some(text) => Ok(serde_json::Value::String(text)),
        None => Err(NoJsonForm(format!(
            "timestamp {}s {}ns is out of range (years 1 to 9999)",
            timestamp.seconds, timestamp.nanos
        ))),
    }
}

/// RFC 3339, or `None` outside the representable range.
pub fn timestamp_rfc3339(timestamp: &prost_types::Timestamp) -> Option<String> {
    let nanos = i128::from(timestamp.seconds) * 1_000_000_000 + i128::from(timestamp.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

fn field_json(value: &prost_reflect::Value, kind: &Kind) -> Result<serde_json::Value, NoJsonForm> {
    use base64::Engine as _;
    use prost_reflect::Value;
    Ok(match value {
        Value::Bool(v) => serde_json::Value::Bool(*v),
        Value::I32(v) => (*v).into(),
        Value::I64(v) => (*v).into(),
        Value::U32(v) => (*v).into(),
        Value::U64(v) => (*v).into(),
        Value::F32(v) => {
            serde_json::Number::from_f64(f64::from(*v)).map_or(serde_json::Value::Null, Into::into)
        }
        Value::F64(v) => {
            serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into)
        }
        Value::String(v) => serde_json::Value::String(v.clone()),
        Value::Bytes(v) => {
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(v))
        }
        Value::EnumNumber(number) => match kind {
            Kind::Enum(descriptor) => match descriptor.get_value(*number) {
                Some(named) => serde_json::Value::String(named.name().to_owned()),
                None => (*number).into(),
            },
            _ => (*number).into(),
        },
        Value::Message(message) => message_json(message)?,
        Value::List(items) => items
            .iter()
            .map(|item| field_json(item, kind))
            .collect::<Result<_, _>>()?,
        Value::Map(entries) => {
            let value_kind = match kind {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other.clone(),
            };
            let object: serde_json::Map<String, serde_json::Value> = entries
                .iter()
                .map(|(key, item)| Ok((map_key_text(key), field_json(item, &value_kind)?)))
                .collect::<Result<_, NoJsonForm>>()?;
            serde_json::Value::Object(object)
        }
    })
}

fn message_json(message: &DynamicMessage) -> Result<serde_json::Value, NoJsonForm> {
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(false)
        .use_proto_field_name(true)
        .skip_default_fields(false);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|error| NoJsonForm(error.to_string()))
}

fn map_key_text(key: &prost_reflect::MapKey) -> String {
    use prost_reflect::MapKey;
    match key {
        MapKey::Bool(v) => v.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(v) => v.clone(),
    }
}

/// A value that could not be taken from an event: the event is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ValueError {
    pub path: String,
    pub problem: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{envelope::tests::example_decoder, schema::SchemaRegistry};

    fn registry() -> SchemaRegistry {
        example_decoder().registry().clone()
    }

    #[test]
    fn parses_paths_and_leaves_other_text_alone() {
        let cases: &[(&str, Option<ValuePath>)] = &[
            (
                "aggregate_id",
                Some(ValuePath::Envelope(EnvelopeField::AggregateId)),
            ),
            (
                "payload.customer_id",
                Some(ValuePath::Payload(vec!["customer_id".into()])),
            ),
            (
                "payload.a.b_2",
                Some(ValuePath::Payload(vec!["a".into(), "b_2".into()])),
            ),
            (
                "metadata.tenant",
                Some(ValuePath::Metadata("tenant".into())),
            ),
            ("metadata.", None),
            ("payload.", None),
            ("payload.a..b", None),
            ("payload.9x", None),
            ("created", None),
            ("Aggregate_id", None),
        ];
        for (text, expected) in cases {
            assert_eq!(&ValuePath::parse(text), expected, "{text}");
            if let Some(path) = expected {
                assert_eq!(&path.to_string(), text);
            }
        }
    }

    #[test]
    fn resolves_against_the_schema() {
        let registry = registry();
        let created_v3 = registry.resolve("orders.OrderCreated", 3).expect("v3");
        let shipped = registry.resolve("orders.OrderShipped", 1).expect("v1");
        let cancelled = registry.resolve("orders.OrderCancelled", 1).expect("v1");
        let cases: &[(&MessageDescriptor, &str, Result<ValueType, ()>)] = &[
            (
                created_v3,
                "payload.total_amount_cents",
                Ok(ValueType::Int64),
            ),
            (created_v3, "payload.customer_id", Ok(ValueType::Text)),
            (created_v3, "payload.items", Ok(ValueType::Json)),
            (created_v3, "payload.total_amount", Err(())),
            (created_v3, "payload.items.sku", Err(())),
            (created_v3, "occurred_at", Ok(ValueType::Timestamp)),
            (shipped, "payload.shipped_at", Ok(ValueType::Timestamp)),
            (shipped, "payload.shipped_at.seconds", Ok(ValueType::Int64)),
            (cancelled, "payload.reason", Ok(ValueType::Enum)),
        ];
        for (schema, text, expected) in cases {
            let path = ValuePath::parse(text).expect("a path");
            assert_eq!(
                path.resolve(schema).map_err(|_| ()),
                *expected,
                "{text} on {}",
                schema.full_name()
            );
        }
    }

    #[test]
    fn literals_and_paths_deserialize() {
        let cases: &[(serde_json::Value, Result<ValueSpec, ()>)] = &[
            (
                serde_json::json!("created"),
                Ok(ValueSpec::Literal("created".into())),
            ),
            (
                serde_json::json!("occurred_at"),
                Ok(ValueSpec::Path(ValuePath::Envelope(
                    EnvelopeField::OccurredAt,
                ))),
            ),
            (
                serde_json::json!({ "literal": "occurred_at" }),
                Ok(ValueSpec::Literal("occurred_at".into())),
            ),
            (serde_json::json!(3), Ok(ValueSpec::Literal(3.into()))),
            (serde_json::json!({ "literal": 1, "x": 2 }), Err(())),
            (serde_json::json!([1]), Err(())),
        ];
        for (input, expected) in cases {
            let parsed: Result<ValueSpec, ()> =
                serde_json::from_value(input.clone()).map_err(|_| ());
            assert_eq!(&parsed, expected, "{input}");
        }
    }

    pub(crate) fn example_event(
        event_type: &str,
        version: u32,
        payload: serde_json::Value,
    ) -> Envelope {
        let document = serde_json::json!({
            "eventId": "e-1",
            "eventType": event_type,
            "schemaVersion": version,
            "aggregateType": "Order",
            "aggregateId": "o-1",
            "occurredAt": "2026-01-02T03:04:05Z",
            "metadata": { "tenant": "t1" },
            "payload": payload,
        });
        let body = serde_json::to_vec(&document).expect("json");
        example_decoder()
            .decode(Some("application/json"), &body)
            .expect("a valid example event")
    }

    #[test]
    fn looks_values_up_in_an_event() {
        let created = example_event(
            "orders.OrderCreated",
            3,
            serde_json::json!({ "customerId": "c-9", "totalAmountCents": "1250",
                "items": [{ "sku": "s-1", "quantity": 2 }] }),
        );
        let cancelled = example_event(
            "orders.OrderCancelled",
            1,
            serde_json::json!({ "reason": "CANCEL_REASON_OUT_OF_STOCK" }),
        );
        let shipped = example_event("orders.OrderShipped", 1, serde_json::json!({}));
        let position = Position {
            stream: "ORDERS",
            seq: 42,
        };
        let cases: &[(&Envelope, &str, serde_json::Value)] = &[
            (&created, "aggregate_id", "o-1".into()),
            (&created, "occurred_at", "2026-01-02T03:04:05Z".into()),
            (&created, "source_seq", 42.into()),
            (&created, "source_stream", "ORDERS".into()),
            (&created, "schema_version", 3.into()),
            (&created, "metadata.tenant", "t1".into()),
            (&created, "metadata.absent", serde_json::Value::Null),
            (&created, "payload.customer_id", "c-9".into()),
            (&created, "payload.total_amount_cents", 1250.into()),
            (&created, "payload.currency", "".into()),
            (
                &created,
                "payload.items",
                serde_json::json!([{ "sku": "s-1", "quantity": 2, "unit_price": 0.0 }]),
            ),
            (
                &cancelled,
                "payload.reason",
                "CANCEL_REASON_OUT_OF_STOCK".into(),
            ),
            (&shipped, "payload.shipped_at", serde_json::Value::Null),
            (
                &shipped,
                "payload.shipped_at.seconds",
                serde_json::Value::Null,
            ),
        ];
        for (envelope, text, expected) in cases {
            let path = ValuePath::parse(text).expect("a path");
            let found = path.lookup(envelope, position).expect("found");
            assert_eq!(&found.to_json().expect("json form"), expected, "{text}");
        }
        // A field the event's version does not have.
        let path = ValuePath::parse("payload.tracking_number").expect("a path");
        assert!(path.lookup(&created, position).is_err());
    }

    /// A binary payload may hold a timestamp past year 9999: valid protobuf
    /// with no JSON form. Writing it must fail, not write `null`.
    #[test]
    fn a_timestamp_without_json_form_is_an_error_not_null() {
        let mut shipped = example_event("orders.OrderShipped", 1, serde_json::json!({}));
        let field = shipped
            .payload
            .descriptor()
            .get_field_by_name("shipped_at")
            .expect("shipped_at");
        let prost_reflect::Kind::Message(timestamp) = field.kind() else {
            panic!("shipped_at is a message");
        };
        let mut value = DynamicMessage::new(timestamp);
        value.set_field_by_name("seconds", prost_reflect::Value::I64(253_402_300_800));
        shipped
            .payload
            .set_field(&field, prost_reflect::Value::Message(value));
        let position = Position {
            stream: "ORDERS",
            seq: 1,
        };
        let spec = ValueSpec::Path(ValuePath::parse("payload.shipped_at").expect("a path"));
        let error = spec.to_json(&shipped, position).expect_err("no JSON form");
        assert_eq!(error.path, "payload.shipped_at");
        assert!(error.problem.contains("out of range"), "{error}");
        let error = shipped.to_json().expect_err("no JSON form");
        assert!(error.to_string().contains("no JSON form"), "{error}");
        assert!(shipped.encode(crate::envelope::Encoding::Json).is_err());
        assert!(shipped.encode(crate::envelope::Encoding::Protobuf).is_ok());
    }
}
