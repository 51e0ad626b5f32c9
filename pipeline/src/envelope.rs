//! Message bytes -> [`Envelope`]: the `jetline.v1.Envelope` in binary protobuf
//! or in JSON (chosen by `Content-Type`), strictly validated, with its payload
//! decoded once against its schema.
//!
//! Never panics on input: every problem is a [`DecodeError`], whose kind picks
//! the dead-letter reason.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
    sync::LazyLock,
};

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor};

use crate::{
    config::UnknownFields, dead_letter::DeadLetterReason, schema::SchemaRegistry, wire_check,
};

/// The generated wire type of `schemas/jetline/v1/envelope.proto`.
pub mod wire {
    include!(concat!(env!("OUT_DIR"), "/jetline.v1.rs"));
}

pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";
pub const CONTENT_TYPE_JSON: &str = "application/json";

static ENVELOPE_DESCRIPTOR: LazyLock<MessageDescriptor> = LazyLock::new(|| {
    let bytes = include_bytes!(concat!(env!("OUT_DIR"), "/envelope_descriptor.bin"));
    // Built into the binary by build.rs: a failure here is a build defect.
    DescriptorPool::decode(bytes.as_slice())
        .expect("embedded envelope descriptor decodes")
        .get_message_by_name("jetline.v1.Envelope")
        .expect("embedded descriptor holds jetline.v1.Envelope")
});

/// The envelope's field numbers, as its schema declares them.
struct EnvelopeTags {
    event_id: u32,
    event_type: u32,
    schema_version: u32,
    aggregate_type: u32,
    aggregate_id: u32,
    occurred_at: u32,
    correlation_id: u32,
    causation_id: u32,
    source: u32,
    payload: u32,
    metadata: u32,
}

static ENVELOPE_TAGS: LazyLock<EnvelopeTags> = LazyLock::new(|| {
    let tag = |name: &str| {
        ENVELOPE_DESCRIPTOR
            .get_field_by_name(name)
            .unwrap_or_else(|| panic!("embedded envelope descriptor has field {name}"))
            .number()
    };
    EnvelopeTags {
        event_id: tag("event_id"),
        event_type: tag("event_type"),
        schema_version: tag("schema_version"),
        aggregate_type: tag("aggregate_type"),
        aggregate_id: tag("aggregate_id"),
        occurred_at: tag("occurred_at"),
        correlation_id: tag("correlation_id"),
        causation_id: tag("causation_id"),
        source: tag("source"),
        payload: tag("payload"),
        metadata: tag("metadata"),
    }
});

/// A validated event: the envelope's fields and its decoded payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub occurred_at: prost_types::Timestamp,
    pub correlation_id: String,
    pub causation_id: String,
    pub source: String,
    pub metadata: HashMap<String, String>,
    /// The event, decoded against its schema at `schema_version`; an empty
    /// message of that schema while the payload is held only encoded.
    pub payload: DynamicMessage,
    /// The payload's bytes at `schema_version`, valid and holding no
    /// unknown field the schemas reject, when it was not decoded: validated
    /// on the wire for a sink that writes bytes ([`PayloadNeed::Valid`]),
    /// and upcast on the wire.
    pub encoded_payload: Option<Bytes>,
}

/// What a consumer needs of an event's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadNeed {
    /// Its fields: for upcasting, value paths, or encoding it anew.
    Message,
    /// Only that it is valid: the sink writes the source's bytes as they are.
    Valid,
}

/// The two encodings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// From the `Content-Type` header; absent means protobuf.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, DecodeError> {
        let Some(content_type) = content_type else {
            return Ok(Encoding::Protobuf);
        };
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
            CONTENT_TYPE_PROTOBUF
            | "application/x-protobuf"
            | "application/vnd.google.protobuf" => Ok(Encoding::Protobuf),
            CONTENT_TYPE_JSON => Ok(Encoding::Json),
            _ => Err(DecodeError::ContentType(content_type.to_owned())),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => CONTENT_TYPE_PROTOBUF,
            Encoding::Json => CONTENT_TYPE_JSON,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes is larger than limits.max_message_bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported content type {0:?}")]
    ContentType(String),
    #[error("envelope is not valid protobuf: {0}")]
    Protobuf(String),
    #[error("envelope is not valid JSON: {0}")]
    Json(String),
    #[error("missing required envelope field {0}")]
    MissingField(&'static str),
    #[error("schema_version must be at least 1")]
    ZeroVersion,
    #[error("occurred_at is outside 0001-01-01 to 9999-12-31 or has invalid nanos")]
    OccurredAtRange,
    #[error("unknown event type {event_type:?}")]
    UnknownType { event_type: String },
    #[error("unknown version {version} of event type {event_type:?}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("payload does not match {message}: {detail}")]
    InvalidPayload {
        event_type: String,
        message: String,
        detail: String,
    },
    #[error("payload of {message} has an unknown field at {path}")]
    UnknownField {
        event_type: String,
        message: String,
        path: String,
    },
}

impl DecodeError {
    /// The event type, when the envelope could be read that far.
    pub fn event_type(&self) -> Option<&str> {
        match self {
            DecodeError::UnknownType { event_type }
            | DecodeError::UnknownVersion { event_type, .. }
            | DecodeError::InvalidPayload { event_type, .. }
            | DecodeError::UnknownField { event_type, .. } => Some(event_type),
            DecodeError::TooLarge { .. }
            | DecodeError::ContentType(_)
            | DecodeError::Protobuf(_)
            | DecodeError::Json(_)
            | DecodeError::MissingField(_)
            | DecodeError::ZeroVersion
            | DecodeError::OccurredAtRange => None,
        }
    }

    /// The dead-letter reason this error files the event under.
    pub fn reason(&self) -> DeadLetterReason {
        match self {
            DecodeError::TooLarge { .. } => DeadLetterReason::TooLarge,
            DecodeError::ContentType(_)
            | DecodeError::Protobuf(_)
            | DecodeError::Json(_)
            | DecodeError::MissingField(_)
            | DecodeError::ZeroVersion
            | DecodeError::OccurredAtRange => DeadLetterReason::InvalidEnvelope,
            DecodeError::UnknownType { .. } | DecodeError::UnknownVersion { .. } => {
                DeadLetterReason::UnknownType
            }
            DecodeError::InvalidPayload { .. } | DecodeError::UnknownField { .. } => {
                DeadLetterReason::InvalidPayload
            }
        }
    }
}

/// Decodes and validates one message body.
#[derive(Debug, Clone)]
pub struct Decoder {
    registry: SchemaRegistry,
    unknown_fields: UnknownFields,
    max_message_bytes: usize,
}

impl Decoder {
    /// A decoder with the default `limits.max_message_bytes`.
    pub fn new(registry: SchemaRegistry, unknown_fields: UnknownFields) -> Self {
        Self {
            registry,
            unknown_fields,
            max_message_bytes: crate::config::raw::LimitsConfig::default().max_message_bytes,
        }
    }

    /// Refuses, unread, a body longer than `max` bytes.
    pub fn with_max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    pub fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    /// `Content-Type` and body -> a validated [`Envelope`].
    pub fn decode(&self, content_type: Option<&str>, body: &[u8]) -> Result<Envelope, DecodeError> {
        self.check_size(body)?;
        match Encoding::from_content_type(content_type)? {
            Encoding::Protobuf => self.decode_protobuf(&Bytes::copy_from_slice(body)),
            Encoding::Json => self.decode_json(body),
        }
    }

    /// As [`Decoder::decode`], for an encoding already read from the
    /// content type, building the payload only when `need`, asked with the
    /// event's type and version, says so. A binary payload that is only
    /// checked is validated on the wire, which accepts exactly what decoding
    /// would (`wire_check`), without building a message.
    /// The envelope's payload is read as a slice of `body`, not copied.
    pub fn decode_for(
        &self,
        encoding: Encoding,
        body: &Bytes,
        need: impl Fn(&str, u32) -> PayloadNeed,
    ) -> Result<Envelope, DecodeError> {
        self.check_size(body)?;
        match encoding {
            Encoding::Protobuf => self.decode_protobuf_for(body, need),
            Encoding::Json => self.decode_json(body),
        }
    }

    fn check_size(&self, body: &[u8]) -> Result<(), DecodeError> {
        if body.len() > self.max_message_bytes {
            return Err(DecodeError::TooLarge {
                size: body.len(),
                max: self.max_message_bytes,
            });
        }
        Ok(())
    }

    fn decode_protobuf(&self, body: &Bytes) -> Result<Envelope, DecodeError> {
        self.decode_protobuf_for(body, |_, _| PayloadNeed::Message)
    }

    fn decode_protobuf_for(
        &self,
        body: &Bytes,
        need: impl Fn(&str, u32) -> PayloadNeed,
    ) -> Result<Envelope, DecodeError> {
        let wire = wire::Envelope::decode(body.clone())
            .map_err(|err| DecodeError::Protobuf(err.to_string()))?;
        // prost keeps the low 32 bits of a larger varint: refuse it instead
        // of applying the event at a version nobody published.
        if !schema_version_fits(body) {
            return Err(DecodeError::Protobuf(
                "schema_version does not fit in 32 bits".into(),
            ));
        }
        let descriptor = self.payload_descriptor(&wire)?;
        if need(&wire.event_type, wire.schema_version) == PayloadNeed::Valid {
            let invalid = |error: wire_check::WireError| match error {
                wire_check::WireError::UnknownField { path } => DecodeError::UnknownField {
                    event_type: wire.event_type.clone(),
                    message: descriptor.full_name().to_owned(),
                    path,
                },
                other => DecodeError::InvalidPayload {
                    event_type: wire.event_type.clone(),
                    message: descriptor.full_name().to_owned(),
                    detail: other.to_string(),
                },
            };
            wire_check::validate(descriptor, &wire.payload, self.unknown_fields)
                .map_err(invalid)?;
            let empty = DynamicMessage::new(descriptor.clone());
            let encoded = wire.payload.clone();
            let mut envelope = Envelope::from_wire(wire, empty);
            envelope.encoded_payload = Some(encoded);
            return Ok(envelope);
        }
        let payload =
            DynamicMessage::decode(descriptor.clone(), wire.payload.as_ref()).map_err(|err| {
                DecodeError::InvalidPayload {
                    event_type: wire.event_type.clone(),
                    message: descriptor.full_name().to_owned(),
                    detail: err.to_string(),
                }
            })?;
        if self.unknown_fields == UnknownFields::Reject
            && let Some(path) = crate::wire_check::unknown_field_path(&payload)
        {
            return Err(DecodeError::UnknownField {
                event_type: wire.event_type.clone(),
                message: descriptor.full_name().to_owned(),
                path,
            });
        }
        Ok(Envelope::from_wire(wire, payload))
    }

    fn decode_json(&self, body: &[u8]) -> Result<Envelope, DecodeError> {
        let document = crate::strict_json::parse(body).map_err(DecodeError::Json)?;
        let serde_json::Value::Object(mut fields) = document else {
            return Err(DecodeError::Json(
                "the envelope must be a JSON object".into(),
            ));
        };
        let payload_json = fields.remove("payload");
        let header = DynamicMessage::deserialize(
            ENVELOPE_DESCRIPTOR.clone(),
            serde_json::Value::Object(fields),
        )
        .map_err(|err| DecodeError::Json(err.to_string()))?;
        let wire: wire::Envelope = header
            .transcode_to()
            .map_err(|err| DecodeError::Json(err.to_string()))?;
        let descriptor = self.payload_descriptor(&wire)?;
        let payload_json = match payload_json {
            None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
            Some(object @ serde_json::Value::Object(_)) => object,
            Some(_) => {
                return Err(DecodeError::InvalidPayload {
                    event_type: wire.event_type.clone(),
                    message: descriptor.full_name().to_owned(),
                    detail: "payload must be a JSON object".into(),
                });
            }
        };
        let options = DeserializeOptions::new()
            .deny_unknown_fields(self.unknown_fields == UnknownFields::Reject);
        let payload =
            DynamicMessage::deserialize_with_options(descriptor.clone(), payload_json, &options)
                .map_err(|err| DecodeError::InvalidPayload {
                    event_type: wire.event_type.clone(),
                    message: descriptor.full_name().to_owned(),
                    detail: err.to_string(),
                })?;
        Ok(Envelope::from_wire(wire, payload))
    }

    /// Checks the required fields and finds the payload's schema.
    fn payload_descriptor(&self, wire: &wire::Envelope) -> Result<&MessageDescriptor, DecodeError> {
        let required = [
            ("event_id", wire.event_id.is_empty()),
            ("event_type", wire.event_type.is_empty()),
            ("aggregate_id", wire.aggregate_id.is_empty()),
            ("occurred_at", wire.occurred_at.is_none()),
        ];
        if let Some((field, _)) = required.iter().find(|(_, missing)| *missing) {
            return Err(DecodeError::MissingField(field));
        }
        if wire.schema_version == 0 {
            return Err(DecodeError::ZeroVersion);
        }
        // The JSON decoder refuses these already; a binary one would be an
        // event no JSON sink can write.
        if !wire.occurred_at.is_some_and(is_rfc3339_range) {
            return Err(DecodeError::OccurredAtRange);
        }
        if !self.registry.contains(&wire.event_type) {
            return Err(DecodeError::UnknownType {
                event_type: wire.event_type.clone(),
            });
        }
        self.registry
            .resolve(&wire.event_type, wire.schema_version)
            .ok_or_else(|| DecodeError::UnknownVersion {
                event_type: wire.event_type.clone(),
                version: wire.schema_version,
            })
    }
}

/// Whether every `schema_version` varint in a (decodable) envelope fits in
/// a `uint32`.
fn schema_version_fits(body: &[u8]) -> bool {
    use prost::encoding::{WireType, decode_varint};
    let tag = ENVELOPE_TAGS.schema_version;
    wire_check::records(body).all(|record| match record {
        Some(mut record) if record.number == tag && record.wire_type == WireType::Varint => {
            decode_varint(&mut record.content).is_ok_and(|version| version <= u64::from(u32::MAX))
        }
        _ => true,
    })
}

/// The timestamps the proto3 JSON mapping can write: RFC 3339 years 1 to
/// 9999, nanos below one second.
fn is_rfc3339_range(timestamp: prost_types::Timestamp) -> bool {
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    (MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds)
        && (0..1_000_000_000).contains(&timestamp.nanos)
}

/// The identifying fields of an envelope, read without any schema: for
/// listings of entries that may not be valid events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peek {
    pub event_id: String,
    pub event_type: String,
    pub schema_version: u32,
    pub aggregate_id: String,
}

/// Reads what it can of an envelope; `None` when even that fails.
pub fn peek(content_type: Option<&str>, body: &[u8]) -> Option<Peek> {
    match Encoding::from_content_type(content_type).ok()? {
        Encoding::Protobuf => {
            let wire = wire::Envelope::decode(body).ok()?;
            Some(Peek {
                event_id: wire.event_id,
                event_type: wire.event_type,
                schema_version: wire.schema_version,
                aggregate_id: wire.aggregate_id,
            })
        }
        Encoding::Json => {
            let document: serde_json::Value = serde_json::from_slice(body).ok()?;
            let text = |camel: &str, snake: &str| {
                document
                    .get(camel)
                    .or_else(|| document.get(snake))
                    .and_then(|value| value.as_str())
                    .unwrap_or_default()
                    .to_owned()
            };
            let version = document
                .get("schemaVersion")
                .or_else(|| document.get("schema_version"))
                .and_then(|value| value.as_u64().or_else(|| value.as_str()?.parse().ok()))
                .and_then(|value| u32::try_from(value).ok())
                .unwrap_or_default();
            Some(Peek {
                event_id: text("eventId", "event_id"),
                event_type: text("eventType", "event_type"),
                schema_version: version,
                aggregate_id: text("aggregateId", "aggregate_id"),
            })
        }
    }
}

/// The aggregate id alone, read without decoding the rest of the envelope:
/// what partitioning needs of every delivery, other partitions' included.
/// Agrees with [`peek`] on every envelope whose id is text; `None` where it cannot
/// be read.
pub fn aggregate_id<'a>(content_type: Option<&str>, body: &'a [u8]) -> Option<Cow<'a, str>> {
    match Encoding::from_content_type(content_type).ok()? {
        Encoding::Protobuf => binary_aggregate_id(body).map(Cow::Borrowed),
        Encoding::Json => {
            #[derive(serde::Deserialize)]
            struct Ids<'a> {
                #[serde(rename = "aggregateId", borrow, default)]
                camel: Option<Cow<'a, str>>,
                #[serde(rename = "aggregate_id", borrow, default)]
                snake: Option<Cow<'a, str>>,
            }
            let ids: Ids<'a> = serde_json::from_slice(body).ok()?;
            Some(ids.camel.or(ids.snake).unwrap_or_default())
        }
    }
}

/// The last top-level `aggregate_id` (the one decoding keeps); `None`
/// when the envelope does not parse that far.
fn binary_aggregate_id(body: &[u8]) -> Option<&str> {
    let tag = ENVELOPE_TAGS.aggregate_id;
    let mut found = "";
    for record in wire_check::records(body) {
        let record = record?;
        if record.number == tag && record.wire_type == prost::encoding::WireType::LengthDelimited {
            found = std::str::from_utf8(record.content).ok()?;
        }
    }
    Some(found)
}

impl Envelope {
    fn from_wire(wire: wire::Envelope, payload: DynamicMessage) -> Self {
        Self {
            event_id: wire.event_id,
            event_type: wire.event_type,
            schema_version: wire.schema_version,
            aggregate_type: wire.aggregate_type,
            aggregate_id: wire.aggregate_id,
            occurred_at: wire.occurred_at.unwrap_or_default(),
            correlation_id: wire.correlation_id,
            causation_id: wire.causation_id,
            source: wire.source,
            metadata: wire.metadata,
            payload,
            encoded_payload: None,
        }
    }

    fn to_wire(&self, payload: Bytes) -> wire::Envelope {
        wire::Envelope {
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            schema_version: self.schema_version,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            occurred_at: Some(self.occurred_at),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            source: self.source.clone(),
            payload,
            metadata: self.metadata.clone(),
        }
    }

    /// The envelope in binary protobuf, payload encoded with its schema:
    /// written field by field from the envelope as it is, into one buffer of
    /// the exact size, so no field is copied twice.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, key_len};
        let tags = &*ENVELOPE_TAGS;
        // In field-number order.
        let strings = [
            (tags.event_id, &self.event_id),
            (tags.event_type, &self.event_type),
            (tags.aggregate_type, &self.aggregate_type),
            (tags.aggregate_id, &self.aggregate_id),
            (tags.correlation_id, &self.correlation_id),
            (tags.causation_id, &self.causation_id),
            (tags.source, &self.source),
        ];
        // proto3 leaves fields at their defaults out, as prost's own
        // encoding does; `occurred_at` is always present.
        let payload_len = match &self.encoded_payload {
            Some(encoded) => encoded.len(),
            None => self.payload.encoded_len(),
        };
        let mut len = strings
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(tag, value)| encoding::string::encoded_len(*tag, value))
            .sum::<usize>();
        if self.schema_version != 0 {
            len += encoding::uint32::encoded_len(tags.schema_version, &self.schema_version);
        }
        len += encoding::message::encoded_len(tags.occurred_at, &self.occurred_at);
        if payload_len != 0 {
            len += key_len(tags.payload) + encoded_len_varint(payload_len as u64) + payload_len;
        }
        len += encoding::hash_map::encoded_len(
            encoding::string::encoded_len,
            encoding::string::encoded_len,
            tags.metadata,
            &self.metadata,
        );
        let mut buf = Vec::with_capacity(len);
        let put_strings = |buf: &mut Vec<u8>, fields: &[(u32, &String)]| {
            for (tag, value) in fields.iter().filter(|(_, value)| !value.is_empty()) {
                encoding::string::encode(*tag, value, buf);
            }
        };
        // In field-number order, as prost writes them: the strings come
        // around `schema_version` (3) and `occurred_at` (6).
        put_strings(&mut buf, &strings[..2]);
        if self.schema_version != 0 {
            encoding::uint32::encode(tags.schema_version, &self.schema_version, &mut buf);
        }
        put_strings(&mut buf, &strings[2..4]);
        encoding::message::encode(tags.occurred_at, &self.occurred_at, &mut buf);
        put_strings(&mut buf, &strings[4..]);
        if payload_len != 0 {
            encode_key(tags.payload, encoding::WireType::LengthDelimited, &mut buf);
            encode_varint(payload_len as u64, &mut buf);
            match &self.encoded_payload {
                Some(encoded) => buf.extend_from_slice(encoded),
                // The length is known: `encode` would work it out once more.
                None => self.payload.encode_raw(&mut buf),
            }
        }
        encoding::hash_map::encode(
            encoding::string::encode,
            encoding::string::encoded_len,
            encoding::string::encode,
            encoding::string::encoded_len,
            tags.metadata,
            &self.metadata,
            &mut buf,
        );
        buf
    }

    /// The payload as a message, decoded here when it is held only encoded.
    pub fn payload_message(&self) -> Result<Cow<'_, DynamicMessage>, prost::DecodeError> {
        match &self.encoded_payload {
            Some(encoded) => {
                let descriptor = prost_reflect::ReflectMessage::descriptor(&self.payload);
                DynamicMessage::decode(descriptor, encoded.as_ref()).map(Cow::Owned)
            }
            None => Ok(Cow::Borrowed(&self.payload)),
        }
    }

    /// As [`Envelope::decode_payload`], decoding only the top-level fields
    /// named, and the other members of their oneofs (which decide which one
    /// is set): each of them reads as decoding the whole payload reads it;
    /// the others read as absent.
    pub fn decode_payload_fields(
        &mut self,
        names: &BTreeSet<String>,
    ) -> Result<(), prost::DecodeError> {
        let Some(encoded) = self.encoded_payload.take() else {
            return Ok(());
        };
        let descriptor = prost_reflect::ReflectMessage::descriptor(&self.payload);
        let mut numbers = Vec::with_capacity(names.len());
        for field in names
            .iter()
            .filter_map(|name| descriptor.get_field_by_name(name))
        {
            match field.containing_oneof() {
                Some(oneof) => numbers.extend(oneof.fields().map(|member| member.number())),
                None => numbers.push(field.number()),
            }
        }
        let mut kept = Vec::with_capacity(encoded.len());
        for record in crate::wire_check::records(&encoded) {
            // Validated on the wire, it parses; were it not, decoding the
            // whole of it says why.
            let Some(record) = record else {
                self.payload = DynamicMessage::decode(descriptor, encoded.as_ref())?;
                return Ok(());
            };
            if numbers.contains(&record.number) {
                kept.extend_from_slice(record.whole);
            }
        }
        self.payload = DynamicMessage::decode(descriptor, kept.as_slice())?;
        Ok(())
    }

    /// Decodes a payload held only encoded into `payload`.
    pub fn decode_payload(&mut self) -> Result<(), prost::DecodeError> {
        if self.encoded_payload.is_some() {
            self.payload = self.payload_message()?.into_owned();
            self.encoded_payload = None;
        }
        Ok(())
    }

    /// The envelope in the proto3 JSON mapping, with the payload as an object.
    /// A payload holding a value that mapping cannot express (a
    /// `google.protobuf.Timestamp` past year 9999, say) is valid protobuf but
    /// has no JSON form: an error, never a silent `null`.
    pub fn to_json(&self) -> Result<serde_json::Value, NoJsonForm> {
        let mut header = DynamicMessage::new(ENVELOPE_DESCRIPTOR.clone());
        // Transcoding between two views of the same descriptor cannot fail.
        let _ = header.transcode_from(&self.to_wire(Bytes::new()));
        let mut json = serde_json::to_value(&header).map_err(NoJsonForm::of)?;
        let payload = self
            .payload_message()
            .map_err(|error| NoJsonForm(error.to_string()))?;
        let payload = serde_json::to_value(payload.as_ref()).map_err(NoJsonForm::of)?;
        if let serde_json::Value::Object(fields) = &mut json {
            fields.insert("payload".to_owned(), payload);
        }
        Ok(json)
    }

    /// The envelope in the given encoding.
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, NoJsonForm> {
        match encoding {
            Encoding::Protobuf => Ok(self.encode_protobuf()),
            // Serializing a `serde_json::Value` to bytes cannot fail.
            Encoding::Json => Ok(serde_json::to_vec(&self.to_json()?).unwrap_or_default()),
        }
    }
}

/// An event whose payload the proto3 JSON mapping cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event has no JSON form: {0}")]
pub struct NoJsonForm(pub String);

impl NoJsonForm {
    fn of(error: serde_json::Error) -> Self {
        NoJsonForm(error.to_string())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;
    use prost_reflect::Value;

    use super::*;
    use crate::config::raw::SchemasConfig;

    pub(crate) fn example_decoder() -> Decoder {
        let config = SchemasConfig {
            dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas")),
            ..SchemasConfig::default()
        };
        Decoder::new(
            SchemaRegistry::load(&config).expect("example schemas compile"),
            UnknownFields::Reject,
        )
    }

    fn created_v2_json() -> serde_json::Value {
        serde_json::json!({
            "eventId": "e-1",
            "eventType": "orders.OrderCreated",
            "schemaVersion": 2,
            "aggregateType": "Order",
            "aggregateId": "o-1",
            "occurredAt": "2026-01-02T03:04:05Z",
            "correlationId": "c-1",
            "metadata": { "tenant": "t1" },
            "payload": { "orderId": "o-1", "customer_id": "c-9", "totalAmount": 12.5, "currency": "EUR" }
        })
    }

    #[test]
    fn json_and_binary_decode_to_the_same_envelope() {
        let decoder = example_decoder();
        let mut json = created_v2_json();
        json["event_type"] = json["eventType"].take();
        json.as_object_mut().map(|o| o.remove("eventType"));
        let json = serde_json::to_vec(&json).expect("json");
        let from_json = decoder
            .decode(Some("application/json"), &json)
            .expect("valid json");
        assert_eq!(from_json.aggregate_id, "o-1");
        assert_eq!(from_json.metadata["tenant"], "t1");
        let binary = from_json.encode_protobuf();
        let from_binary = decoder.decode(None, &binary).expect("valid binary");
        assert_eq!(from_binary, from_json);
        let again = decoder
            .decode(
                Some("application/json"),
                &from_json.encode(Encoding::Json).expect("json form"),
            )
            .expect("own json output decodes");
        assert_eq!(again, from_json);
    }

    /// Found by the `envelope_binary` fuzz target: without serde_json's
    /// `float_roundtrip`, a double written in its shortest form read back one
    /// unit in the last place off.
    #[test]
    fn a_double_reads_back_exactly_from_json() {
        let decoder = example_decoder();
        let total = 19.989999959236446_f64;
        let mut json = created_v2_json();
        json["schemaVersion"] = 1.into();
        json["payload"] = serde_json::json!({ "orderId": "o-1", "total": total });
        let body = serde_json::to_vec(&json).expect("json");
        let from_json = decoder
            .decode(Some("application/json"), &body)
            .expect("valid json");
        let read = |envelope: &Envelope| {
            envelope
                .payload
                .get_field_by_name("total")
                .and_then(|value| value.as_f64())
        };
        assert_eq!(read(&from_json), Some(total));
        let again = decoder
            .decode(
                Some("application/json"),
                &from_json.encode(Encoding::Json).expect("json form"),
            )
            .expect("own json output decodes");
        assert_eq!(read(&again), Some(total));
    }

    /// Found with the `envelope_binary` fuzz target's round trip: a binary
    /// `occurred_at` past year 9999 decoded, and its JSON form was `null`.
    #[test]
    fn occurred_at_must_have_a_json_form() {
        let decoder = example_decoder();
        let json = serde_json::to_vec(&created_v2_json()).expect("json");
        let mut envelope = decoder
            .decode(Some("application/json"), &json)
            .expect("valid");
        let cases = [
            (253_402_300_799, 999_999_999, true),
            (-62_135_596_800, 0, true),
            (253_402_300_800, 0, false),
            (-62_135_596_801, 0, false),
            (1, -1, false),
            (1, 1_000_000_000, false),
        ];
        for (seconds, nanos, valid) in cases {
            envelope.occurred_at = prost_types::Timestamp { seconds, nanos };
            let decoded = decoder.decode(None, &envelope.encode_protobuf());
            match decoded {
                Ok(decoded) => {
                    assert!(valid, "{seconds}s {nanos}ns decoded");
                    assert!(decoded.to_json().expect("json form")["occurredAt"].is_string());
                }
                Err(error) => {
                    assert!(!valid, "{seconds}s {nanos}ns: {error}");
                    assert_eq!(error, DecodeError::OccurredAtRange);
                    assert_eq!(error.reason(), DeadLetterReason::InvalidEnvelope);
                }
            }
        }
    }

    #[test]
    fn each_invalid_case_has_its_reason() {
        let decoder = example_decoder();
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut json = created_v2_json();
            edit(&mut json);
            decoder
                .decode(
                    Some("application/json"),
                    &serde_json::to_vec(&json).expect("json"),
                )
                .expect_err("invalid")
        };
        let cases: Vec<(DecodeError, DeadLetterReason)> = vec![
            (
                with(&|j| j["eventId"] = "".into()),
                DeadLetterReason::InvalidEnvelope,
            ),
            (
                with(&|j| {
                    j.as_object_mut().map(|o| o.remove("occurredAt"));
                }),
                DeadLetterReason::InvalidEnvelope,
            ),
            (
                with(&|j| j["schemaVersion"] = 0.into()),
                DeadLetterReason::InvalidEnvelope,
            ),
            (
                with(&|j| j["bogus"] = 1.into()),
                DeadLetterReason::InvalidEnvelope,
            ),
            (
                with(&|j| j["eventType"] = "orders.Nope".into()),
                DeadLetterReason::UnknownType,
            ),
            (
                with(&|j| j["schemaVersion"] = 9.into()),
                DeadLetterReason::UnknownType,
            ),
            (
                with(&|j| j["payload"]["colour"] = "red".into()),
                DeadLetterReason::InvalidPayload,
            ),
            (
                with(&|j| j["payload"]["totalAmount"] = "lots".into()),
                DeadLetterReason::InvalidPayload,
            ),
            (
                with(&|j| j["payload"] = "text".into()),
                DeadLetterReason::InvalidPayload,
            ),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason, "{error}");
        }
        let garbage = decoder.decode(None, b"\xff\xff\xff").expect_err("garbage");
        assert_eq!(garbage.reason(), DeadLetterReason::InvalidEnvelope);
        let unsupported = decoder
            .decode(Some("text/plain"), b"{}")
            .expect_err("content type");
        assert_eq!(unsupported.reason(), DeadLetterReason::InvalidEnvelope);
    }

    #[test]
    fn lax_input_is_refused() {
        let decoder = example_decoder();
        let json = serde_json::to_string(&created_v2_json()).expect("json");
        // The same key twice: serde_json alone would keep the last.
        let duplicated = json.replacen(
            "\"aggregateId\":\"o-1\"",
            "\"aggregateId\":\"o-1\",\"aggregateId\":\"o-2\"",
            1,
        );
        assert_ne!(duplicated, json);
        let error = decoder
            .decode(Some(CONTENT_TYPE_JSON), duplicated.as_bytes())
            .expect_err("duplicate key");
        assert_eq!(error.reason(), DeadLetterReason::InvalidEnvelope, "{error}");
        let in_payload = json.replacen(
            "\"currency\":\"EUR\"",
            "\"currency\":\"EUR\",\"currency\":\"USD\"",
            1,
        );
        assert_ne!(in_payload, json);
        assert!(
            decoder
                .decode(Some(CONTENT_TYPE_JSON), in_payload.as_bytes())
                .is_err()
        );

        // A binary schema_version of 2^32 + 2 would be read as 2.
        let envelope = decoder
            .decode(Some(CONTENT_TYPE_JSON), json.as_bytes())
            .expect("valid");
        let mut bytes = envelope.encode_protobuf();
        assert!(decoder.decode(None, &bytes).is_ok());
        prost::encoding::encode_key(3, prost::encoding::WireType::Varint, &mut bytes);
        prost::encoding::encode_varint((1u64 << 32) + 2, &mut bytes);
        let error = decoder.decode(None, &bytes).expect_err("version too large");
        assert_eq!(error.reason(), DeadLetterReason::InvalidEnvelope, "{error}");
        let passing = decoder
            .decode_for(Encoding::Protobuf, &bytes.into(), |_, _| PayloadNeed::Valid)
            .expect_err("also when only validated");
        assert_eq!(passing.reason(), DeadLetterReason::InvalidEnvelope);
    }

    #[test]
    fn unknown_binary_payload_fields_follow_the_policy() {
        let decoder = example_decoder();
        let json = serde_json::to_vec(&created_v2_json()).expect("json");
        let envelope = decoder
            .decode(Some("application/json"), &json)
            .expect("valid");
        let mut payload = envelope.payload.encode_to_vec();
        payload.extend_from_slice(&[0xa8, 0x06, 0x01]); // field 101, varint 1
        let mut wire = envelope.to_wire(payload.into());
        wire.schema_version = 2;
        let bytes = wire.encode_to_vec();
        let error = decoder
            .decode(None, &bytes)
            .expect_err("unknown field rejected");
        assert!(matches!(error, DecodeError::UnknownField { .. }), "{error}");
        let lenient = Decoder::new(decoder.registry().clone(), UnknownFields::Allow);
        assert!(lenient.decode(None, &bytes).is_ok());
    }

    #[test]
    fn decoding_for_a_pass_through_accepts_and_refuses_what_a_full_decode_does() {
        let decoder = example_decoder();
        let valid = |_: &str, _: u32| PayloadNeed::Valid;
        let json = serde_json::to_vec(&created_v2_json()).expect("json");
        let envelope = decoder
            .decode(Some("application/json"), &json)
            .expect("valid");
        let good = envelope.encode_protobuf();
        let checked = decoder
            .decode_for(Encoding::Protobuf, &good.into(), valid)
            .expect("valid on the wire");
        assert_eq!(checked.event_id, envelope.event_id);
        assert_eq!(checked.aggregate_id, envelope.aggregate_id);
        assert_eq!(checked.schema_version, 2);
        let mut unknown = envelope.payload.encode_to_vec();
        unknown.extend_from_slice(&[0xa8, 0x06, 0x01]); // field 101, varint 1
        let mut truncated = envelope.payload.encode_to_vec();
        truncated.truncate(truncated.len() - 1);
        for payload in [unknown, truncated, vec![0xff, 0xff]] {
            let bytes = Bytes::from(envelope.to_wire(payload.into()).encode_to_vec());
            let full = decoder.decode(None, &bytes).expect_err("invalid");
            let wire = decoder
                .decode_for(Encoding::Protobuf, &bytes, valid)
                .expect_err("invalid");
            assert_eq!(
                std::mem::discriminant(&full),
                std::mem::discriminant(&wire),
                "{full} / {wire}"
            );
            assert_eq!(full.reason(), wire.reason());
        }
    }

    #[test]
    fn an_unknown_field_is_found_after_known_nested_messages() {
        let decoder = example_decoder();
        let descriptor = decoder
            .registry()
            .resolve("orders.OrderShipped", 1)
            .expect("schema")
            .clone();
        // A message field without unknown fields, then one unknown field.
        let mut message = DynamicMessage::new(descriptor.clone());
        for field in descriptor.fields() {
            if let prost_reflect::Kind::Message(inner) = field.kind() {
                message.set_field(&field, Value::Message(DynamicMessage::new(inner)));
            }
        }
        let mut bytes = message.encode_to_vec();
        bytes.extend_from_slice(&[0xa8, 0x06, 0x01]); // field 101, varint 1
        let decoded = DynamicMessage::decode(descriptor, bytes.as_slice()).expect("decodes");
        assert_eq!(
            crate::wire_check::unknown_field_path(&decoded),
            Some("#101".to_owned())
        );
    }

    proptest! {
        /// The direct encoding writes what prost's generated encoding of the
        /// same envelope writes, defaults left out included.
        #[test]
        fn direct_encoding_matches_the_generated_one(
            texts in proptest::collection::vec("[a-z0-9.-]{0,12}", 7),
            schema_version in prop_oneof![Just(0u32), any::<u32>()],
            seconds in any::<i64>(),
            metadata in proptest::collection::hash_map("[a-z]{1,6}", "[a-z]{0,6}", 0..4),
            with_payload in any::<bool>(),
        ) {
            let decoder = example_decoder();
            let mut envelope = decoder
                .decode(Some(CONTENT_TYPE_JSON), &serde_json::to_vec(&created_v2_json()).expect("json"))
                .expect("valid");
            if !with_payload {
                envelope.payload = DynamicMessage::new(prost_reflect::ReflectMessage::descriptor(&envelope.payload));
            }
            let [event_id, event_type, aggregate_type, aggregate_id, correlation_id, causation_id, source] =
                <[String; 7]>::try_from(texts).expect("seven texts");
            envelope = Envelope {
                event_id, event_type, schema_version, aggregate_type, aggregate_id,
                occurred_at: prost_types::Timestamp { seconds, nanos: 0 },
                correlation_id, causation_id, source, metadata,
                ..envelope
            };
            let direct = envelope.encode_protobuf();
            let generated = envelope.to_wire(envelope.payload.encode_to_vec().into());
            prop_assert_eq!(wire::Envelope::decode(direct.as_slice()).expect("decodes"), generated.clone());
            if envelope.metadata.len() <= 1 {
                prop_assert_eq!(direct, generated.encode_to_vec());
            }
        }

        /// Partitioning reads the aggregate id alone: it finds what a full
        /// read of the envelope finds, in both encodings.
        #[test]
        fn the_aggregate_id_alone_reads_as_the_peek_does(
            id in "[a-zA-Z0-9:-]{0,40}",
            snake in any::<bool>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let decoder = example_decoder();
            let mut json = created_v2_json();
            json["aggregateId"] = id.clone().into();
            if snake {
                json["aggregate_id"] = json["aggregateId"].take();
                json.as_object_mut().map(|o| o.remove("aggregateId"));
            }
            let json = serde_json::to_vec(&json).expect("json");
            let envelope = decoder.decode(Some(CONTENT_TYPE_JSON), &json).ok();
            let binary = envelope.map(|envelope| envelope.encode_protobuf()).unwrap_or_default();
            for (content_type, body) in [
                (Some(CONTENT_TYPE_JSON), json.as_slice()),
                (None, binary.as_slice()),
                (None, body.as_slice()),
            ] {
                if let Some(peek) = peek(content_type, body) {
                    let alone = aggregate_id(content_type, body);
                    prop_assert_eq!(alone.as_deref(), Some(peek.aggregate_id.as_str()));
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let decoder = example_decoder();
            let _ = decoder.decode(None, &body);
            let _ = decoder.decode(Some("application/json"), &body);
        }
    }
}
