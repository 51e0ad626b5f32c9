//! Protobuf bytes checked against a [`MessageDescriptor`] without building a
//! [`DynamicMessage`], so the hot path can validate a payload and pass its
//! original bytes on.
//!
//! **Invariant:** [`validate`] returns `Ok` exactly when
//! `DynamicMessage::decode(descriptor, bytes)` succeeds and, under
//! [`UnknownFields::Reject`], the decoded message holds no unknown field at
//! any depth ([`unknown_field_path`] finds none). Each rule below follows the
//! prost 0.14 / prost-reflect 0.16 code it names; the differential tests at
//! the end hold the two to the same answers.
//!
//! No heap allocation on the `Ok` path: a field path is built only for an
//! error. One case goes through prost-reflect after all: under `Reject`, once
//! the walk has met an unknown field, the payload is decoded to name it.
//! Decoding alone knows which unknown fields survive (a later member of the
//! same oneof, or a later map entry with the same key, discards what was read
//! before; a message field given twice merges both) and which one
//! `unknown_field_path` reports first. Such a payload is almost always
//! rejected, so this costs only on the error path.

use std::fmt;

use prost::encoding::WireType;
use prost_reflect::{
    Cardinality, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    Value,
};
use prost_types::{
    DescriptorProto, FieldDescriptorProto,
    field_descriptor_proto::{Label, Type},
};

use crate::config::UnknownFields;

/// prost's `RECURSION_LIMIT` (prost 0.14 `src/lib.rs`; the `no-recursion-limit`
/// feature is off): how many messages or groups may nest below the payload.
const RECURSION_LIMIT: u32 = 100;

/// Why a payload does not decode against its schema. The path names the field
/// (`items[2].sku`; `#7` for an unknown field number, `items[2]#7` inside one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("payload ends inside {}", Place(.path))]
    Truncated { path: String },
    #[error("invalid varint in {}", Place(.path))]
    InvalidVarint { path: String },
    #[error("invalid field key in {}: {problem}", Place(.path))]
    InvalidKey { path: String, problem: &'static str },
    #[error(
        "{} has wire type {}, expected {}",
        Place(.path),
        wire_type_name(.actual),
        wire_type_name(.expected)
    )]
    InvalidWireType {
        path: String,
        expected: WireType,
        actual: WireType,
    },
    #[error("{} is not valid utf-8", Place(.path))]
    InvalidUtf8 { path: String },
    #[error("unexpected end-group tag in {}", Place(.path))]
    UnexpectedEndGroup { path: String },
    #[error("{} nests deeper than {RECURSION_LIMIT} messages", Place(.path))]
    RecursionLimit { path: String },
    /// The path is the one `unknown_field_path` gives: `{path}#{number}`.
    #[error("unknown field at {path}")]
    UnknownField { path: String },
    /// prost-reflect rejected a payload this walk accepted. The rules above
    /// should make this impossible; it exists so that a disagreement still
    /// rejects, as decoding does, instead of passing.
    #[error("{detail}")]
    Decode { detail: String },
}

impl WireError {
    /// The field the error concerns; empty for the message itself.
    pub fn path(&self) -> &str {
        match self {
            WireError::Truncated { path }
            | WireError::InvalidVarint { path }
            | WireError::InvalidKey { path, .. }
            | WireError::InvalidWireType { path, .. }
            | WireError::InvalidUtf8 { path }
            | WireError::UnexpectedEndGroup { path }
            | WireError::RecursionLimit { path }
            | WireError::UnknownField { path } => path,
            WireError::Decode { .. } => "",
        }
    }

    /// The same error, one field further out: `segment` is the field holding
    /// the path so far.
    fn within(mut self, segment: &str) -> Self {
        let path = match &mut self {
            WireError::Truncated { path }
            | WireError::InvalidVarint { path }
            | WireError::InvalidKey { path, .. }
            | WireError::InvalidWireType { path, .. }
            | WireError::InvalidUtf8 { path }
            | WireError::UnexpectedEndGroup { path }
            | WireError::RecursionLimit { path }
            | WireError::UnknownField { path } => path,
            WireError::Decode { .. } => return self,
        };
        if path.is_empty() {
            segment.clone_into(path);
        } else if path.starts_with('#') {
            path.insert_str(0, segment);
        } else {
            path.insert(0, '.');
            path.insert_str(0, segment);
        }
        self
    }
}

/// A path as a reader sees it in an error message.
struct Place<'a>(&'a String);

impl fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_str() {
            "" => f.write_str("the message"),
            unknown if unknown.starts_with('#') => write!(f, "field {unknown}"),
            path => f.write_str(path),
        }
    }
}

fn wire_type_name(wire_type: &WireType) -> &'static str {
    match wire_type {
        WireType::Varint => "varint",
        WireType::SixtyFourBit => "64-bit",
        WireType::LengthDelimited => "length-delimited",
        WireType::StartGroup => "start-group",
        WireType::EndGroup => "end-group",
        WireType::ThirtyTwoBit => "32-bit",
    }
}

/// One field record of a message on the wire, as it stands.
#[derive(Debug, Clone, Copy)]
pub struct FieldRecord<'a> {
    pub number: u32,
    pub wire_type: WireType,
    /// The whole record, key included.
    pub whole: &'a [u8],
    /// The record after its key (a length-delimited one's length included).
    pub value: &'a [u8],
    /// What the record holds: a length-delimited one's bytes, else `value`.
    pub content: &'a [u8],
}

/// The top-level field records of `bytes` in order, nested ones unread;
/// `None` where the bytes stop parsing, and nothing after it.
pub fn records(mut rest: &[u8]) -> impl Iterator<Item = Option<FieldRecord<'_>>> {
    use prost::encoding::{DecodeContext, decode_key, decode_varint, skip_field};
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || rest.is_empty() {
            return None;
        }
        let mut next = || {
            let start = rest;
            let (number, wire_type) = decode_key(&mut rest).ok()?;
            let value = rest;
            let content = if wire_type == WireType::LengthDelimited {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                let content = rest.get(..len)?;
                rest = &rest[len..];
                content
            } else {
                skip_field(wire_type, number, &mut rest, DecodeContext::default()).ok()?;
                &value[..value.len() - rest.len()]
            };
            Some(FieldRecord {
                number,
                wire_type,
                whole: &start[..start.len() - rest.len()],
                value: &value[..value.len() - rest.len()],
                content,
            })
        };
        let record = next();
        failed = record.is_none();
        Some(record)
    })
}

/// Checks `bytes` against `descriptor` as `DynamicMessage::decode` would read
/// them, and under `Reject` refuses unknown fields at any depth.
pub fn validate(
    descriptor: &MessageDescriptor,
    bytes: &[u8],
    unknown_fields: UnknownFields,
) -> Result<(), WireError> {
    let mut walk = Walk {
        unknown_fields,
        saw_unknown: false,
    };
    let mut cursor = bytes;
    walk.fields(descriptor, &mut cursor, End::Buffer, RECURSION_LIMIT)?;
    if walk.saw_unknown {
        return name_unknown_field(descriptor, bytes);
    }
    Ok(())
}

/// The path of the first field the schema does not know, depth first: the
/// message's own unknown fields (lowest number), then its fields by number,
/// list items in order, map values. The same walk as the decoder's, so the
/// dead-letter reason names the same field. The path is built only once a
/// field is found: the walk over a valid message allocates nothing.
pub fn unknown_field_path(message: &DynamicMessage) -> Option<String> {
    let (segments, number) = unknown_field_in(message)?;
    let mut found = String::new();
    for segment in segments.iter().rev() {
        match segment {
            Segment::Field(name) => {
                if !found.is_empty() {
                    found.push('.');
                }
                found.push_str(name);
            }
            Segment::Index(index) => found.push_str(&format!("[{index}]")),
        }
    }
    found.push_str(&format!("#{number}"));
    Some(found)
}

/// One step of the path to an unknown field.
enum Segment {
    Field(String),
    Index(usize),
}

/// The steps (innermost first) and number of the first unknown field.
fn unknown_field_in(message: &DynamicMessage) -> Option<(Vec<Segment>, u32)> {
    if let Some(field) = message.unknown_fields().next() {
        return Some((Vec::new(), field.number()));
    }
    for (field, value) in message.fields() {
        let found = match value {
            Value::Message(inner) => unknown_field_in(inner),
            Value::List(items) => items.iter().enumerate().find_map(|(index, item)| {
                let Value::Message(inner) = item else {
                    return None;
                };
                let (mut segments, number) = unknown_field_in(inner)?;
                segments.push(Segment::Index(index));
                Some((segments, number))
            }),
            Value::Map(entries) => entries.values().find_map(|item| match item {
                Value::Message(inner) => unknown_field_in(inner),
                _ => None,
            }),
            _ => None,
        };
        let Some((mut segments, number)) = found else {
            continue;
        };
        segments.push(Segment::Field(field.name().to_owned()));
        return Some((segments, number));
    }
    None
}

/// The walk met an unknown field and found nothing else wrong: decoding
/// decides whether one survives, and names it.
#[cold]
fn name_unknown_field(descriptor: &MessageDescriptor, bytes: &[u8]) -> Result<(), WireError> {
    match DynamicMessage::decode(descriptor.clone(), bytes) {
        Ok(message) => match unknown_field_path(&message) {
            Some(path) => Err(WireError::UnknownField { path }),
            None => Ok(()),
        },
        Err(error) => Err(WireError::Decode {
            detail: error.to_string(),
        }),
    }
}

/// Where a run of fields stops: at the end of its bytes (the payload, or a
/// length-delimited message), or at the end-group tag of its group.
#[derive(Clone, Copy)]
enum End {
    Buffer,
    Group(u32),
}

struct Walk {
    /// `Allow` inside extensions too: `unknown_field_path` does not look there.
    unknown_fields: UnknownFields,
    saw_unknown: bool,
}

/// What the walk needs of a field or an extension.
trait FieldLike {
    fn kind(&self) -> Kind;
    fn cardinality(&self) -> Cardinality;
    fn is_group(&self) -> bool;
    fn number(&self) -> u32;
}

impl FieldLike for FieldDescriptor {
    fn kind(&self) -> Kind {
        FieldDescriptor::kind(self)
    }
    fn cardinality(&self) -> Cardinality {
        FieldDescriptor::cardinality(self)
    }
    fn is_group(&self) -> bool {
        FieldDescriptor::is_group(self)
    }
    fn number(&self) -> u32 {
        FieldDescriptor::number(self)
    }
}

impl FieldLike for ExtensionDescriptor {
    fn kind(&self) -> Kind {
        ExtensionDescriptor::kind(self)
    }
    fn cardinality(&self) -> Cardinality {
        ExtensionDescriptor::cardinality(self)
    }
    fn is_group(&self) -> bool {
        ExtensionDescriptor::is_group(self)
    }
    fn number(&self) -> u32 {
        ExtensionDescriptor::number(self)
    }
}

impl Walk {
    /// The fields of one message. `depth` is prost's `DecodeContext`
    /// recursion budget for them: 100 at the top, one less per message or
    /// group below.
    fn fields(
        &mut self,
        message: &MessageDescriptor,
        cursor: &mut &[u8],
        end: End,
        depth: u32,
    ) -> Result<(), WireError> {
        let content = *cursor;
        let raw = message.descriptor_proto();
        loop {
            if cursor.is_empty() {
                return match end {
                    End::Buffer => Ok(()),
                    End::Group(_) => Err(WireError::Truncated {
                        path: String::new(),
                    }),
                };
            }
            let before = &content[..content.len() - cursor.len()];
            let (number, wire_type) = read_key(cursor)?;
            // prost `encoding::group::merge`: inside a group any end-group
            // tag ends it, and must carry the group's number. Elsewhere an
            // end-group tag goes to the field, as in `Message::merge`.
            if let End::Group(group) = end
                && wire_type == WireType::EndGroup
            {
                return if number == group {
                    Ok(())
                } else {
                    Err(WireError::UnexpectedEndGroup {
                        path: String::new(),
                    })
                };
            }
            self.field(message, raw, number, wire_type, cursor, depth, before)?;
        }
    }

    /// One field, dispatched as `<DynamicMessage as Message>::merge_field`
    /// does (prost-reflect `dynamic/message.rs`): a field, else an
    /// extension, else an unknown field. `raw` is `message`'s descriptor
    /// proto; `before` is the message's bytes ahead of this field, read again
    /// only to number a list item in an error.
    #[allow(clippy::too_many_arguments)]
    fn field(
        &mut self,
        message: &MessageDescriptor,
        raw: &DescriptorProto,
        number: u32,
        wire_type: WireType,
        cursor: &mut &[u8],
        depth: u32,
        before: &[u8],
    ) -> Result<(), WireError> {
        // A scalar field is read from the descriptor proto, by reference:
        // `get_field` and `kind` clone the pool's `Arc` and were most of the
        // cost. Messages, groups and maps still go through the descriptor.
        if let Some((field, scalar)) = scalar_field(raw, number) {
            let repeated = field.label() == Label::Repeated;
            return scalar_value(scalar, repeated, wire_type, cursor).map_err(|error| {
                let segment = if repeated && !scalar.is_packable() {
                    let index = count_before(message, before, number, depth);
                    format!("{}[{index}]", field.name())
                } else {
                    field.name().to_owned()
                };
                error.within(&segment)
            });
        }
        if let Some(field) = message.get_field(number) {
            return self
                .value(&field, wire_type, cursor, depth)
                .map_err(|error| {
                    let segment = if field.is_list() && Scalar::of(&field.kind()).is_none() {
                        let index = count_before(message, before, number, depth);
                        format!("{}[{index}]", field.name())
                    } else {
                        field.name().to_owned()
                    };
                    error.within(&segment)
                });
        }
        if let Some(extension) = message.get_extension(number) {
            let policy = std::mem::replace(&mut self.unknown_fields, UnknownFields::Allow);
            let result = self.value(&extension, wire_type, cursor, depth);
            self.unknown_fields = policy;
            return result.map_err(|error| error.within(&format!("[{}]", extension.full_name())));
        }
        if self.unknown_fields == UnknownFields::Reject {
            self.saw_unknown = true;
        }
        unknown_value(number, wire_type, cursor, depth)
            .map_err(|error| error.within(&format!("#{number}")))
    }

    /// A field's value, as prost-reflect's `Value::merge_field` reads it.
    fn value(
        &mut self,
        field: &impl FieldLike,
        wire_type: WireType,
        cursor: &mut &[u8],
        depth: u32,
    ) -> Result<(), WireError> {
        let repeated = field.cardinality() == Cardinality::Repeated;
        match field.kind() {
            Kind::Message(entry) if repeated && entry.is_map_entry() => {
                self.map_entry(&entry, cursor, depth)
            }
            Kind::Message(message) => self.message_value(
                &message,
                field.is_group(),
                field.number(),
                wire_type,
                cursor,
                depth,
            ),
            // `Scalar::of` is `None` only for messages, matched above.
            kind => match Scalar::of(&kind) {
                Some(scalar) => scalar_value(scalar, repeated, wire_type, cursor),
                None => Ok(()),
            },
        }
    }

    /// One message: a singular field, a list item or a map value.
    fn message_value(
        &mut self,
        message: &MessageDescriptor,
        is_group: bool,
        number: u32,
        wire_type: WireType,
        cursor: &mut &[u8],
        depth: u32,
    ) -> Result<(), WireError> {
        if is_group {
            // prost `encoding::group::merge`: wire type, then the limit.
            expect(WireType::StartGroup, wire_type)?;
            if depth == 0 {
                return Err(recursion_limit());
            }
            self.fields(message, cursor, End::Group(number), depth - 1)
        } else {
            // prost `encoding::message::merge`: wire type, limit, length.
            expect(WireType::LengthDelimited, wire_type)?;
            if depth == 0 {
                return Err(recursion_limit());
            }
            let length = read_varint(cursor)?;
            let mut inner = take(cursor, length)?;
            self.fields(message, &mut inner, End::Buffer, depth - 1)
        }
    }

    /// One map entry. prost-reflect reads it with `merge_loop` without
    /// checking the wire type, at the map field's own depth; a field other
    /// than key (1) or value (2) is skipped with `skip_field`, never kept as
    /// unknown. A missing key or value is the default.
    fn map_entry(
        &mut self,
        entry: &MessageDescriptor,
        cursor: &mut &[u8],
        depth: u32,
    ) -> Result<(), WireError> {
        let length = read_varint(cursor)?;
        let mut inner = take(cursor, length)?;
        let key = entry.get_field(1);
        let value = entry.get_field(2);
        while !inner.is_empty() {
            let (number, wire_type) = read_key(&mut inner)?;
            match (number, &key, &value) {
                (1, Some(key), _) => self
                    .value(key, wire_type, &mut inner, depth)
                    .map_err(|error| error.within("key"))?,
                (2, _, Some(value)) => self
                    .value(value, wire_type, &mut inner, depth)
                    .map_err(|error| error.within("value"))?,
                _ => skip_field(wire_type, number, &mut inner, depth)
                    .map_err(|error| error.within(&format!("#{number}")))?,
            }
        }
        Ok(())
    }
}

/// How a scalar kind is read: prost's `varint!`, `fixed_width!`, `string`
/// and `bytes` modules.
#[derive(Clone, Copy)]
enum Scalar {
    /// Any varint of at most 10 bytes: int32, uint32 and enums (open: any
    /// number) truncate, bool is `!= 0`.
    Varint,
    Fixed32,
    Fixed64,
    /// Length-delimited, valid UTF-8.
    Text,
    Bytes,
}

impl Scalar {
    fn of(kind: &Kind) -> Option<Scalar> {
        Some(match kind {
            Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Bool
            | Kind::Enum(_) => Scalar::Varint,
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Scalar::Fixed64,
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Scalar::Fixed32,
            Kind::String => Scalar::Text,
            Kind::Bytes => Scalar::Bytes,
            Kind::Message(_) => return None,
        })
    }

    /// The same, from a field's descriptor proto; `None` for messages and
    /// groups, and for a proto whose type is left unset.
    fn of_type(field_type: Type) -> Option<Scalar> {
        Some(match field_type {
            Type::Int32
            | Type::Int64
            | Type::Uint32
            | Type::Uint64
            | Type::Sint32
            | Type::Sint64
            | Type::Bool
            | Type::Enum => Scalar::Varint,
            Type::Fixed64 | Type::Sfixed64 | Type::Double => Scalar::Fixed64,
            Type::Fixed32 | Type::Sfixed32 | Type::Float => Scalar::Fixed32,
            Type::String => Scalar::Text,
            Type::Bytes => Scalar::Bytes,
            Type::Message | Type::Group => return None,
        })
    }

    /// prost-reflect `KindIndex::is_packable` (`descriptor/mod.rs`).
    fn is_packable(self) -> bool {
        !matches!(self, Scalar::Text | Scalar::Bytes)
    }

    fn wire_type(self) -> WireType {
        match self {
            Scalar::Varint => WireType::Varint,
            Scalar::Fixed32 => WireType::ThirtyTwoBit,
            Scalar::Fixed64 => WireType::SixtyFourBit,
            Scalar::Text | Scalar::Bytes => WireType::LengthDelimited,
        }
    }
}

/// The scalar field `number` of a message, from its descriptor proto.
#[inline]
fn scalar_field(raw: &DescriptorProto, number: u32) -> Option<(&FieldDescriptorProto, Scalar)> {
    let number = i32::try_from(number).ok()?;
    let field = raw
        .field
        .iter()
        .find(|field| field.number == Some(number))?;
    let field_type = Type::try_from(field.r#type?).ok()?;
    Some((field, Scalar::of_type(field_type)?))
}

/// A scalar field's value. A packable list takes a packed run whatever its
/// `packed` option (prost-reflect's list arm, `merge_loop` over items of the
/// kind's own wire type); any other wire type is one item, checked as
/// prost's `check_wire_type` does: a known field read with another wire type
/// is an error, not an unknown field.
#[inline]
fn scalar_value(
    scalar: Scalar,
    repeated: bool,
    wire_type: WireType,
    cursor: &mut &[u8],
) -> Result<(), WireError> {
    if repeated && wire_type == WireType::LengthDelimited && scalar.is_packable() {
        return packed(scalar, cursor);
    }
    expect(scalar.wire_type(), wire_type)?;
    match scalar {
        Scalar::Varint => read_varint(cursor).map(drop),
        Scalar::Fixed32 => take(cursor, 4).map(drop),
        Scalar::Fixed64 => take(cursor, 8).map(drop),
        Scalar::Text => {
            let length = read_varint(cursor)?;
            let text = take(cursor, length)?;
            std::str::from_utf8(text)
                .map(drop)
                .map_err(|_| WireError::InvalidUtf8 {
                    path: String::new(),
                })
        }
        Scalar::Bytes => {
            let length = read_varint(cursor)?;
            take(cursor, length).map(drop)
        }
    }
}

/// A packed run of a packable scalar.
fn packed(scalar: Scalar, cursor: &mut &[u8]) -> Result<(), WireError> {
    let length = read_varint(cursor)?;
    let mut items = take(cursor, length)?;
    let width = match scalar {
        Scalar::Fixed64 => 8,
        Scalar::Fixed32 => 4,
        Scalar::Varint | Scalar::Text | Scalar::Bytes => {
            while !items.is_empty() {
                read_varint(&mut items)?;
            }
            return Ok(());
        }
    };
    if items.len() % width == 0 {
        Ok(())
    } else {
        Err(truncated())
    }
}

/// An unknown field's value, as prost-reflect's `UnknownField::decode_value`
/// (`dynamic/unknown.rs`) reads it: only a group checks the recursion limit.
fn unknown_value(
    number: u32,
    wire_type: WireType,
    cursor: &mut &[u8],
    depth: u32,
) -> Result<(), WireError> {
    match wire_type {
        WireType::Varint => read_varint(cursor).map(drop),
        WireType::SixtyFourBit => take(cursor, 8).map(drop),
        WireType::ThirtyTwoBit => take(cursor, 4).map(drop),
        WireType::LengthDelimited => {
            let length = read_varint(cursor)?;
            take(cursor, length).map(drop)
        }
        WireType::StartGroup => {
            if depth == 0 {
                return Err(recursion_limit());
            }
            loop {
                let (inner, inner_wire_type) = read_key(cursor)?;
                if inner_wire_type == WireType::EndGroup {
                    return if inner == number {
                        Ok(())
                    } else {
                        Err(end_group())
                    };
                }
                unknown_value(inner, inner_wire_type, cursor, depth - 1)?;
            }
        }
        WireType::EndGroup => Err(end_group()),
    }
}

/// prost `encoding::skip_field`: what a map entry does with a field that is
/// neither key nor value. Unlike `decode_value` it checks the limit first,
/// whatever the wire type.
fn skip_field(
    wire_type: WireType,
    number: u32,
    cursor: &mut &[u8],
    depth: u32,
) -> Result<(), WireError> {
    if depth == 0 {
        return Err(recursion_limit());
    }
    match wire_type {
        WireType::Varint => read_varint(cursor).map(drop),
        WireType::SixtyFourBit => take(cursor, 8).map(drop),
        WireType::ThirtyTwoBit => take(cursor, 4).map(drop),
        WireType::LengthDelimited => {
            let length = read_varint(cursor)?;
            take(cursor, length).map(drop)
        }
        WireType::StartGroup => loop {
            let (inner, inner_wire_type) = read_key(cursor)?;
            if inner_wire_type == WireType::EndGroup {
                return if inner == number {
                    Ok(())
                } else {
                    Err(end_group())
                };
            }
            skip_field(inner_wire_type, inner, cursor, depth - 1)?;
        },
        WireType::EndGroup => Err(end_group()),
    }
}

/// How many times field `number` occurs in `before`, a run of fields that
/// was already read without error: the index of the list item that follows.
#[cold]
fn count_before(message: &MessageDescriptor, before: &[u8], number: u32, depth: u32) -> usize {
    let mut walk = Walk {
        unknown_fields: UnknownFields::Allow,
        saw_unknown: false,
    };
    let raw = message.descriptor_proto();
    let mut cursor = before;
    let mut count = 0;
    while !cursor.is_empty() {
        let Ok((found, wire_type)) = read_key(&mut cursor) else {
            break;
        };
        if found == number {
            count += 1;
        }
        if walk
            .field(message, raw, found, wire_type, &mut cursor, depth, &[])
            .is_err()
        {
            break;
        }
    }
    count
}

/// prost `encoding::decode_key`: a varint of at most 32 bits, wire type 0-5,
/// field number at least 1.
#[inline]
fn read_key(cursor: &mut &[u8]) -> Result<(u32, WireType), WireError> {
    let key = read_varint(cursor)?;
    let invalid = |problem| WireError::InvalidKey {
        path: String::new(),
        problem,
    };
    let key = u32::try_from(key).map_err(|_| invalid("key wider than 32 bits"))?;
    let wire_type = match key & 0x07 {
        0 => WireType::Varint,
        1 => WireType::SixtyFourBit,
        2 => WireType::LengthDelimited,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        5 => WireType::ThirtyTwoBit,
        _ => return Err(invalid("wire type 6 or 7")),
    };
    let number = key >> 3;
    if number == 0 {
        return Err(invalid("field number 0"));
    }
    Ok((number, wire_type))
}

/// prost `encoding::varint::decode_varint`: at most 10 bytes, and the tenth
/// may only be 0 or 1 (more would overflow 64 bits).
#[inline]
fn read_varint(cursor: &mut &[u8]) -> Result<u64, WireError> {
    let bytes = *cursor;
    if let Some(&first) = bytes.first()
        && first < 0x80
    {
        *cursor = &bytes[1..];
        return Ok(u64::from(first));
    }
    let mut value = 0u64;
    for (index, &byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (index * 7);
        if byte < 0x80 {
            if index == 9 && byte > 0x01 {
                break;
            }
            *cursor = &bytes[index + 1..];
            return Ok(value);
        }
    }
    if bytes.len() < 10 {
        Err(truncated())
    } else {
        Err(WireError::InvalidVarint {
            path: String::new(),
        })
    }
}

/// The next `length` bytes. A length past the end of the enclosing message
/// is an error here at once; prost reads on and fails at the message's end
/// (`merge_loop`'s "delimited length exceeded"), the same verdict.
#[inline]
fn take<'a>(cursor: &mut &'a [u8], length: u64) -> Result<&'a [u8], WireError> {
    let bytes = *cursor;
    match usize::try_from(length) {
        Ok(length) if length <= bytes.len() => {
            let (taken, rest) = bytes.split_at(length);
            *cursor = rest;
            Ok(taken)
        }
        _ => Err(truncated()),
    }
}

#[inline]
fn expect(expected: WireType, actual: WireType) -> Result<(), WireError> {
    if expected == actual {
        Ok(())
    } else {
        Err(WireError::InvalidWireType {
            path: String::new(),
            expected,
            actual,
        })
    }
}

fn truncated() -> WireError {
    WireError::Truncated {
        path: String::new(),
    }
}

fn end_group() -> WireError {
    WireError::UnexpectedEndGroup {
        path: String::new(),
    }
}

fn recursion_limit() -> WireError {
    WireError::RecursionLimit {
        path: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::PathBuf, sync::LazyLock};

    use proptest::prelude::*;
    use prost::{Message as _, encoding::encode_varint};
    use protox::file::{ChainFileResolver, File, FileResolver, GoogleFileResolver};

    use super::*;
    use crate::{
        config::raw::SchemasConfig,
        envelope::{DecodeError, Decoder, wire},
        schema::SchemaRegistry,
    };

    /// A map, lists packed and unpacked, a oneof, a map of messages, an
    /// open enum, a well-known type, and a message that holds itself.
    const RICH_PROTO: &str = r#"
        syntax = "proto3";
        package wiretest;
        import "google/protobuf/timestamp.proto";

        enum Colour { COLOUR_UNSPECIFIED = 0; RED = 1; }
        message Leaf { string name = 1; sint64 delta = 2; bytes blob = 3; }
        message Rich {
          string id = 1;
          repeated int32 counts = 2;
          repeated fixed64 stamps = 3 [packed = false];
          repeated string tags = 4;
          repeated Leaf leaves = 5;
          map<string, Leaf> by_name = 6;
          map<int32, string> labels = 7;
          Leaf single = 8;
          oneof choice { Leaf left = 9; string right = 10; int64 middle = 11; }
          Colour colour = 12;
          repeated Colour colours = 13;
          google.protobuf.Timestamp at = 14;
          optional bool flag = 15;
          double ratio = 16;
          float share = 17;
          sfixed32 small = 18;
          uint64 big = 19;
          repeated double ratios = 20;
        }
        message Node { Node child = 1; int32 depth = 2; map<int32, Node> kids = 3; }
    "#;

    /// Groups and extensions, which only proto2 has.
    const LEGACY_PROTO: &str = r#"
        syntax = "proto2";
        package wiretest.legacy;

        message Old {
          optional string name = 1;
          repeated group Part = 2 { optional int32 size = 3; optional string label = 4; }
          optional group Meta = 5 { optional string note = 6; }
          extensions 100 to 199;
        }
        extend Old {
          optional Old.Part extra = 100;
          optional int32 code = 101;
        }
    "#;

    struct Sources;

    impl FileResolver for Sources {
        fn open_file(&self, name: &str) -> Result<File, protox::Error> {
            match name {
                "wiretest/rich.proto" => File::from_source(name, RICH_PROTO),
                "wiretest/legacy.proto" => File::from_source(name, LEGACY_PROTO),
                _ => Err(protox::Error::file_not_found(name)),
            }
        }
    }

    static EXAMPLES: LazyLock<SchemaRegistry> = LazyLock::new(load_examples);
    static TESTS: LazyLock<SchemaRegistry> = LazyLock::new(load_tests);

    fn example_registry() -> SchemaRegistry {
        EXAMPLES.clone()
    }

    fn test_registry() -> SchemaRegistry {
        TESTS.clone()
    }

    fn load_examples() -> SchemaRegistry {
        let config = SchemasConfig {
            dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas")),
            ..SchemasConfig::default()
        };
        SchemaRegistry::load(&config).expect("example schemas compile")
    }

    /// The test messages, each as event type `NAME` at version 1.
    fn load_tests() -> SchemaRegistry {
        let mut resolver = ChainFileResolver::new();
        resolver.add(Sources);
        resolver.add(GoogleFileResolver::new());
        let mut compiler = protox::Compiler::with_file_resolver(resolver);
        compiler.include_imports(true);
        compiler
            .open_files(["wiretest/rich.proto", "wiretest/legacy.proto"])
            .expect("test schemas compile");
        let explicit = ["wiretest.Rich", "wiretest.Node", "wiretest.legacy.Old"]
            .into_iter()
            .map(|name| {
                (
                    name.to_owned(),
                    BTreeMap::from([("1".to_owned(), name.to_owned())]),
                )
            })
            .collect();
        SchemaRegistry::from_pool(compiler.descriptor_pool(), &explicit)
            .expect("test schemas index")
    }

    /// One message type and the decoder's verdict on its payloads.
    struct Subject {
        registry: SchemaRegistry,
        event_type: &'static str,
        version: u32,
    }

    #[derive(Debug, PartialEq)]
    enum Verdict {
        Valid,
        Invalid,
        Unknown(String),
    }

    impl Subject {
        fn new(registry: &SchemaRegistry, event_type: &'static str, version: u32) -> Self {
            Self {
                registry: registry.clone(),
                event_type,
                version,
            }
        }

        fn descriptor(&self) -> &MessageDescriptor {
            self.registry
                .resolve(self.event_type, self.version)
                .expect("subject is registered")
        }

        /// What `envelope::Decoder` (decode, then `first_unknown_field`)
        /// says of `payload`: the reference this module must agree with.
        fn decoder_verdict(&self, payload: &[u8], policy: UnknownFields) -> Verdict {
            let envelope = wire::Envelope {
                event_id: "e-1".into(),
                event_type: self.event_type.into(),
                schema_version: self.version,
                aggregate_id: "a-1".into(),
                occurred_at: Some(prost_types::Timestamp::default()),
                payload: bytes::Bytes::copy_from_slice(payload),
                ..wire::Envelope::default()
            };
            let decoder = Decoder::new(self.registry.clone(), policy);
            match decoder.decode(None, &envelope.encode_to_vec()) {
                Ok(_) => Verdict::Valid,
                Err(DecodeError::UnknownField { path, .. }) => Verdict::Unknown(path),
                Err(DecodeError::InvalidPayload { .. }) => Verdict::Invalid,
                Err(other) => panic!("the test envelope itself was refused: {other}"),
            }
        }

        fn verdict(&self, payload: &[u8], policy: UnknownFields) -> Verdict {
            match validate(self.descriptor(), payload, policy) {
                Ok(()) => Verdict::Valid,
                Err(WireError::UnknownField { path }) => Verdict::Unknown(path),
                Err(_) => Verdict::Invalid,
            }
        }

        /// Both policies agree with the decoder. Paths are compared where
        /// they are deterministic: with two map values holding unknown
        /// fields, which one the decoder names depends on `HashMap` order.
        fn assert_agrees(&self, payload: &[u8]) -> Result<(), TestCaseError> {
            for policy in [UnknownFields::Reject, UnknownFields::Allow] {
                let ours = self.verdict(payload, policy);
                let theirs = self.decoder_verdict(payload, policy);
                match (&ours, &theirs) {
                    (Verdict::Unknown(_), Verdict::Unknown(_)) if self.has_maps() => {}
                    _ => prop_assert_eq!(
                        &ours,
                        &theirs,
                        "{} {:?} on {:02x?}",
                        self.event_type,
                        policy,
                        payload
                    ),
                }
            }
            Ok(())
        }

        fn has_maps(&self) -> bool {
            matches!(self.event_type, "wiretest.Rich" | "wiretest.Node")
        }

        fn encode_json(&self, json: serde_json::Value) -> Vec<u8> {
            DynamicMessage::deserialize(self.descriptor().clone(), json)
                .expect("test payload matches its schema")
                .encode_to_vec()
        }
    }

    /// Hand-written wire bytes, for what an encoder would never produce.
    #[derive(Default, Clone)]
    struct Bytes(Vec<u8>);

    impl Bytes {
        fn key(mut self, number: u32, wire_type: u8) -> Self {
            encode_varint(u64::from(number) << 3 | u64::from(wire_type), &mut self.0);
            self
        }
        fn varint(self, number: u32, value: u64) -> Self {
            let mut this = self.key(number, 0);
            encode_varint(value, &mut this.0);
            this
        }
        fn fixed32(self, number: u32) -> Self {
            self.key(number, 5).raw(&[1, 2, 3, 4])
        }
        fn fixed64(self, number: u32) -> Self {
            self.key(number, 1).raw(&[1, 2, 3, 4, 5, 6, 7, 8])
        }
        fn delimited(self, number: u32, body: &[u8]) -> Self {
            let mut this = self.key(number, 2);
            encode_varint(body.len() as u64, &mut this.0);
            this.raw(body)
        }
        fn message(self, number: u32, body: Bytes) -> Self {
            self.delimited(number, &body.0)
        }
        fn group(self, number: u32, body: Bytes) -> Self {
            self.key(number, 3).raw(&body.0).key(number, 4)
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
    }

    fn bytes() -> Bytes {
        Bytes::default()
    }

    fn nested_nodes(levels: usize) -> Vec<u8> {
        let mut payload = bytes().varint(2, 7);
        for _ in 0..levels {
            payload = bytes().message(1, payload);
        }
        payload.0
    }

    fn created_v3_json() -> serde_json::Value {
        let items: Vec<_> = (0..5)
            .map(|index| {
                serde_json::json!({
                    "sku": format!("SKU-{index:04}-BLUE-XL"),
                    "quantity": index + 1,
                    "unitPrice": 19.99 + f64::from(index),
                })
            })
            .collect();
        serde_json::json!({
            "orderId": "ord-2026-000123",
            "customerId": "cus-000987",
            "totalAmountCents": 123456,
            "currency": "EUR",
            "items": items,
        })
    }

    fn rich_json() -> serde_json::Value {
        serde_json::json!({
            "id": "r-1",
            "counts": [1, -2, 300],
            "stamps": ["5", "6"],
            "tags": ["a", "ünï"],
            "leaves": [{ "name": "x", "delta": "-4" }, { "blob": "AAE=" }],
            "byName": { "k1": { "name": "v1" }, "k2": {} },
            "labels": { "1": "one", "-3": "minus three" },
            "single": { "name": "s" },
            "left": { "name": "l" },
            "colour": "RED",
            "colours": ["RED", 7],
            "at": "2026-01-02T03:04:05Z",
            "flag": false,
            "ratio": 0.5,
            "share": 1.5,
            "small": -9,
            "big": "18446744073709551615",
            "ratios": [1.0, 2.0],
        })
    }

    /// Valid payloads of every test message, to mutate.
    fn corpus(examples: &SchemaRegistry, tests: &SchemaRegistry) -> Vec<(Subject, Vec<u8>)> {
        let v3 = Subject::new(examples, "orders.OrderCreated", 3);
        let v3_payload = v3.encode_json(created_v3_json());
        let v1 = Subject::new(examples, "orders.OrderCreated", 1);
        let v1_payload = v1.encode_json(serde_json::json!({
            "orderId": "o-1", "total": 3.5, "items": [{ "sku": "s", "quantity": 2 }]
        }));
        let rich = Subject::new(tests, "wiretest.Rich", 1);
        let rich_payload = rich.encode_json(rich_json());
        let node = Subject::new(tests, "wiretest.Node", 1);
        let node_payload = nested_nodes(4);
        let old = Subject::new(tests, "wiretest.legacy.Old", 1);
        let part = bytes().varint(3, 1).delimited(4, b"p");
        let old_payload = bytes()
            .delimited(1, b"old")
            .group(2, part.clone())
            .group(2, bytes().varint(3, 2))
            .group(5, bytes().delimited(6, b"n"))
            .message(100, part)
            .varint(101, 9)
            .0;
        vec![
            (v3, v3_payload),
            (v1, v1_payload),
            (rich, rich_payload),
            (node, node_payload),
            (old, old_payload),
        ]
    }

    #[test]
    fn valid_payloads_pass_under_both_policies() {
        let examples = example_registry();
        let tests = test_registry();
        let mut cases = corpus(&examples, &tests);
        let v2 = Subject::new(&examples, "orders.OrderCreated", 2);
        let v2_payload = v2.encode_json(serde_json::json!({
            "orderId": "o-1", "customerId": "c-9", "totalAmount": 12.5, "currency": "EUR"
        }));
        cases.push((v2, v2_payload));
        let shipped = Subject::new(&examples, "orders.OrderShipped", 1);
        let shipped_payload = shipped.encode_json(serde_json::json!({
            "orderId": "o-1", "carrier": "dhl", "shippedAt": "2026-01-02T03:04:05.5Z"
        }));
        cases.push((shipped, shipped_payload));
        let cancelled = Subject::new(&examples, "orders.OrderCancelled", 1);
        // An enum number the schema does not name: enums are open.
        let cancelled_payload = bytes().delimited(1, b"o-1").varint(2, 99).0;
        cases.push((cancelled, cancelled_payload));
        let rich = Subject::new(&tests, "wiretest.Rich", 1);
        cases.push((Subject::new(&tests, "wiretest.Rich", 1), Vec::new()));
        // Packed and unpacked items of one list; a map entry without key, one
        // without value, one with both twice.
        let mixed = bytes()
            .varint(2, 1)
            .delimited(2, &[2, 3])
            .varint(2, u64::MAX)
            .fixed64(3)
            .delimited(3, &[0; 16])
            .delimited(13, &[1, 0x7f])
            .message(6, bytes().message(2, bytes().delimited(1, b"no key")))
            .message(7, bytes().varint(1, 5))
            .message(
                7,
                bytes()
                    .delimited(2, b"a")
                    .varint(1, 1)
                    .delimited(2, b"b")
                    .varint(1, 2),
            )
            // A map entry keeps no unknown field: it is skipped, even under
            // `Reject`.
            .message(7, bytes().varint(9, 1).group(8, bytes().varint(1, 1)))
            .0;
        cases.push((rich, mixed));
        for (subject, payload) in &cases {
            for policy in [UnknownFields::Reject, UnknownFields::Allow] {
                assert_eq!(
                    validate(subject.descriptor(), payload, policy),
                    Ok(()),
                    "{} {policy:?}",
                    subject.event_type
                );
                assert_eq!(subject.decoder_verdict(payload, policy), Verdict::Valid);
            }
        }
    }

    #[test]
    fn each_malformed_payload_fails_as_decoding_fails() {
        let examples = example_registry();
        let tests = test_registry();
        let v3 = Subject::new(&examples, "orders.OrderCreated", 3);
        let rich = Subject::new(&tests, "wiretest.Rich", 1);
        let node = Subject::new(&tests, "wiretest.Node", 1);
        let old = Subject::new(&tests, "wiretest.legacy.Old", 1);
        let item = |sku: &[u8]| bytes().delimited(1, sku).varint(2, 1);
        let items = |bad: Bytes| {
            bytes()
                .message(4, item(b"ok"))
                .message(4, item(b"ok"))
                .message(4, bad)
        };
        type Kind = fn(&WireError) -> bool;
        let cases: Vec<(&str, &Subject, Vec<u8>, Kind, &str)> = vec![
            (
                "varint cut short",
                &v3,
                vec![0x30, 0x80],
                |e| matches!(e, WireError::Truncated { .. }),
                "total_amount_cents",
            ),
            (
                "varint of 11 bytes",
                &v3,
                [&[0x30][..], &[0xff; 10], &[0x01]].concat(),
                |e| matches!(e, WireError::InvalidVarint { .. }),
                "total_amount_cents",
            ),
            (
                "varint overflowing 64 bits",
                &v3,
                [&[0x30][..], &[0xff; 9], &[0x02]].concat(),
                |e| matches!(e, WireError::InvalidVarint { .. }),
                "total_amount_cents",
            ),
            (
                "field number 0",
                &v3,
                vec![0x00, 0x01],
                |e| matches!(e, WireError::InvalidKey { .. }),
                "",
            ),
            (
                "wire type 6",
                &v3,
                vec![0x0e],
                |e| matches!(e, WireError::InvalidKey { .. }),
                "",
            ),
            (
                "wire type 7",
                &v3,
                vec![0x0f],
                |e| matches!(e, WireError::InvalidKey { .. }),
                "",
            ),
            (
                "key over 32 bits",
                &v3,
                vec![0x80, 0x80, 0x80, 0x80, 0x10],
                |e| matches!(e, WireError::InvalidKey { .. }),
                "",
            ),
            (
                "length past the end",
                &v3,
                vec![0x0a, 0x05, b'a'],
                |e| matches!(e, WireError::Truncated { .. }),
                "order_id",
            ),
            (
                "length past its message",
                &v3,
                items(bytes().key(1, 2).raw(&[0x09, b'a']))
                    .raw(b"abcdefgh")
                    .0,
                |e| matches!(e, WireError::Truncated { .. }),
                "items[2].sku",
            ),
            (
                "invalid utf-8",
                &v3,
                bytes().delimited(1, &[0xc3, 0x28]).0,
                |e| matches!(e, WireError::InvalidUtf8 { .. }),
                "order_id",
            ),
            (
                "invalid utf-8 in the third item",
                &v3,
                items(item(&[0xff])).0,
                |e| matches!(e, WireError::InvalidUtf8 { .. }),
                "items[2].sku",
            ),
            (
                "string as varint",
                &v3,
                bytes().varint(1, 1).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "order_id",
            ),
            (
                "int64 as 32-bit",
                &v3,
                bytes().fixed32(6).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "total_amount_cents",
            ),
            (
                "message as varint",
                &v3,
                bytes().varint(4, 1).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "items[0]",
            ),
            (
                "message as a group",
                &v3,
                bytes().group(4, bytes()).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "items[0]",
            ),
            (
                "double cut short",
                &v3,
                items(bytes().key(3, 1).raw(&[0; 4])).0,
                |e| matches!(e, WireError::Truncated { .. }),
                "items[2].unit_price",
            ),
            (
                "lone end-group",
                &v3,
                bytes().key(9, 4).0,
                |e| matches!(e, WireError::UnexpectedEndGroup { .. }),
                "#9",
            ),
            (
                "known field as end-group",
                &v3,
                bytes().key(1, 4).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "order_id",
            ),
            (
                "unknown group never closed",
                &v3,
                bytes().key(9, 3).varint(1, 1).0,
                |e| matches!(e, WireError::Truncated { .. }),
                "#9",
            ),
            (
                "unknown group closed by another number",
                &v3,
                bytes().key(9, 3).key(8, 4).0,
                |e| matches!(e, WireError::UnexpectedEndGroup { .. }),
                "#9",
            ),
            (
                "unknown 32-bit cut short",
                &v3,
                bytes().key(9, 5).raw(&[1, 2]).0,
                |e| matches!(e, WireError::Truncated { .. }),
                "#9",
            ),
            (
                "packed run of doubles cut short",
                &rich,
                bytes().delimited(20, &[0; 12]).0,
                |e| matches!(e, WireError::Truncated { .. }),
                "ratios",
            ),
            (
                "packed run of varints cut short",
                &rich,
                bytes().delimited(2, &[1, 0x80]).0,
                |e| matches!(e, WireError::Truncated { .. }),
                "counts",
            ),
            (
                "string list as packed varints",
                &rich,
                bytes().delimited(4, &[0xff]).0,
                |e| matches!(e, WireError::InvalidUtf8 { .. }),
                "tags[0]",
            ),
            (
                "map key of the wrong type",
                &rich,
                bytes().message(7, bytes().delimited(1, b"x")).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "labels.key",
            ),
            (
                "map value with invalid utf-8",
                &rich,
                bytes()
                    .message(6, bytes().message(2, bytes().delimited(1, &[0xff])))
                    .0,
                |e| matches!(e, WireError::InvalidUtf8 { .. }),
                "by_name.value.name",
            ),
            (
                "map entry cut short",
                &rich,
                bytes().key(7, 2).raw(&[0x04, 0x08]).0,
                |e| matches!(e, WireError::Truncated { .. }),
                "labels",
            ),
            (
                "end-group in a map entry",
                &rich,
                bytes().message(7, bytes().key(5, 4)).0,
                |e| matches!(e, WireError::UnexpectedEndGroup { .. }),
                "labels#5",
            ),
            (
                "timestamp with invalid nanos wire type",
                &rich,
                bytes().message(14, bytes().fixed32(2)).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "at.nanos",
            ),
            (
                "101 nested messages",
                &node,
                nested_nodes(101),
                |e| matches!(e, WireError::RecursionLimit { .. }),
                "",
            ),
            (
                "group field as length-delimited",
                &old,
                bytes().delimited(5, b"").0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "meta",
            ),
            (
                "group closed by another number",
                &old,
                bytes().key(2, 3).key(5, 4).0,
                |e| matches!(e, WireError::UnexpectedEndGroup { .. }),
                "part[0]",
            ),
            (
                "invalid utf-8 in the second group",
                &old,
                bytes()
                    .group(2, bytes())
                    .group(2, bytes().delimited(4, &[0xff]))
                    .0,
                |e| matches!(e, WireError::InvalidUtf8 { .. }),
                "part[1].label",
            ),
            (
                "extension of the wrong wire type",
                &old,
                bytes().fixed32(101).0,
                |e| matches!(e, WireError::InvalidWireType { .. }),
                "[wiretest.legacy.code]",
            ),
        ];
        for (name, subject, payload, is_kind, path) in cases {
            for policy in [UnknownFields::Reject, UnknownFields::Allow] {
                let error = validate(subject.descriptor(), &payload, policy).expect_err(name);
                assert!(is_kind(&error), "{name}: {error:?}");
                assert!(
                    error.path().ends_with(path),
                    "{name}: {error:?} (path {path})"
                );
                assert_eq!(
                    subject.decoder_verdict(&payload, policy),
                    Verdict::Invalid,
                    "{name}"
                );
                assert!(!error.to_string().ends_with('.'), "{name}: {error}");
            }
        }
    }

    #[test]
    fn unknown_fields_are_named_as_the_decoder_names_them() {
        let examples = example_registry();
        let tests = test_registry();
        let v3 = Subject::new(&examples, "orders.OrderCreated", 3);
        let rich = Subject::new(&tests, "wiretest.Rich", 1);
        let old = Subject::new(&tests, "wiretest.legacy.Old", 1);
        let item = bytes().delimited(1, b"s");
        let cases: Vec<(&str, &Subject, Vec<u8>, Option<&str>)> = vec![
            (
                "top level",
                &v3,
                bytes().delimited(1, b"o").varint(101, 1).0,
                Some("#101"),
            ),
            (
                "an unknown group",
                &v3,
                bytes().group(9, bytes().varint(1, 1).group(2, bytes())).0,
                Some("#9"),
            ),
            (
                "in the second item",
                &v3,
                bytes()
                    .message(4, item.clone())
                    .message(4, item.clone().fixed64(7))
                    .0,
                Some("items[1]#7"),
            ),
            (
                "lowest number first",
                &v3,
                bytes()
                    .varint(30, 1)
                    .varint(20, 1)
                    .message(4, item.clone().varint(9, 1))
                    .0,
                Some("#20"),
            ),
            (
                "own before nested",
                &v3,
                bytes()
                    .message(4, item.clone().varint(9, 1))
                    .varint(30, 1)
                    .0,
                Some("#30"),
            ),
            (
                "merged into one message",
                &rich,
                bytes()
                    .message(8, bytes().message(1, bytes()))
                    .message(8, bytes().varint(9, 1))
                    .0,
                Some("single#9"),
            ),
            (
                "in a map value",
                &rich,
                bytes()
                    .message(
                        6,
                        bytes().delimited(1, b"k").message(2, bytes().varint(9, 1)),
                    )
                    .0,
                Some("by_name#9"),
            ),
            (
                "in a timestamp",
                &rich,
                bytes().message(14, bytes().varint(5, 1)).0,
                Some("at#5"),
            ),
            (
                "in a group",
                &old,
                bytes().group(5, bytes().varint(9, 1)).0,
                Some("meta#9"),
            ),
            // Discarded by decoding: a later member of the oneof replaces
            // the one holding the unknown field, a later entry of the same
            // key replaces the map value.
            (
                "replaced oneof member",
                &rich,
                bytes().message(9, bytes().varint(9, 1)).varint(11, 5).0,
                None,
            ),
            (
                "oneof member given again",
                &rich,
                bytes()
                    .message(9, bytes().varint(9, 1))
                    .message(9, bytes())
                    .0,
                Some("left#9"),
            ),
            (
                "replaced map value",
                &rich,
                bytes()
                    .message(
                        6,
                        bytes().delimited(1, b"k").message(2, bytes().varint(9, 1)),
                    )
                    .message(6, bytes().delimited(1, b"k"))
                    .0,
                None,
            ),
            // `first_unknown_field` does not look inside extensions.
            (
                "inside an extension",
                &old,
                bytes().message(100, bytes().varint(9, 1)).0,
                None,
            ),
        ];
        for (name, subject, payload, expected) in cases {
            let verdict = subject.verdict(&payload, UnknownFields::Reject);
            let wanted = match expected {
                Some(path) => Verdict::Unknown(path.to_owned()),
                None => Verdict::Valid,
            };
            assert_eq!(verdict, wanted, "{name}");
            assert_eq!(
                subject.decoder_verdict(&payload, UnknownFields::Reject),
                wanted,
                "{name}"
            );
            assert_eq!(
                validate(subject.descriptor(), &payload, UnknownFields::Allow),
                Ok(()),
                "{name}"
            );
        }
    }

    #[test]
    fn recursion_limit_is_prosts() {
        let tests = test_registry();
        let node = Subject::new(&tests, "wiretest.Node", 1);
        let nest = |levels: usize, bottom: Bytes| {
            (0..levels)
                .fold(bottom, |inner, _| bytes().message(1, inner))
                .0
        };
        let unknown_groups = |levels: usize| {
            (0..levels)
                .fold(bytes(), |inner, _| bytes().group(9, inner))
                .0
        };
        for levels in [98, 99, 100, 101] {
            let payload = nested_nodes(levels);
            node.assert_agrees(&payload).expect("nested messages agree");
            assert_eq!(
                validate(node.descriptor(), &payload, UnknownFields::Allow).is_ok(),
                levels <= 100
            );
            node.assert_agrees(&unknown_groups(levels))
                .expect("nested unknown groups agree");
            // A map entry costs no level, its value does, and a field that
            // is neither key nor value is checked against the limit even
            // as a varint.
            for entry in [
                bytes().varint(9, 1),
                bytes().message(2, bytes()),
                bytes().varint(1, 1),
                bytes().group(9, bytes()),
            ] {
                node.assert_agrees(&nest(levels, bytes().message(3, entry)))
                    .expect("maps at the limit agree");
            }
            node.assert_agrees(&nest(levels, bytes().varint(9, 1)))
                .expect("an unknown varint at the limit agrees");
            node.assert_agrees(&nest(levels, bytes().group(9, bytes())))
                .expect("an unknown group at the limit agrees");
        }
    }

    /// Near-valid wire data: keys of small numbers, nested messages and
    /// groups, the odd stray byte.
    #[derive(Debug, Clone)]
    enum Token {
        Varint(u32, u64),
        Fixed32(u32),
        Fixed64(u32),
        Delimited(u32, Vec<u8>),
        Nested(u32, Vec<Token>),
        Group(u32, Vec<Token>),
        Raw(Vec<u8>),
    }

    fn number() -> impl Strategy<Value = u32> {
        prop_oneof![8 => 1u32..22, 1 => 22u32..200, 1 => 100u32..102]
    }

    fn token() -> impl Strategy<Value = Token> {
        let text = prop_oneof![
            "[a-zé]{0,6}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..6),
        ];
        let varint = prop_oneof![0u64..300, any::<u64>()];
        let leaf = prop_oneof![
            4 => (number(), varint).prop_map(|(n, v)| Token::Varint(n, v)),
            1 => number().prop_map(Token::Fixed32),
            1 => number().prop_map(Token::Fixed64),
            3 => (number(), text).prop_map(|(n, t)| Token::Delimited(n, t)),
            1 => proptest::collection::vec(any::<u8>(), 1..3).prop_map(Token::Raw),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                3 => (number(), proptest::collection::vec(inner.clone(), 0..5))
                    .prop_map(|(n, t)| Token::Nested(n, t)),
                1 => (number(), proptest::collection::vec(inner, 0..4))
                    .prop_map(|(n, t)| Token::Group(n, t)),
            ]
        })
    }

    fn encode_tokens(tokens: &[Token]) -> Vec<u8> {
        tokens
            .iter()
            .fold(bytes(), |out, token| match token {
                Token::Varint(n, v) => out.varint(*n, *v),
                Token::Fixed32(n) => out.fixed32(*n),
                Token::Fixed64(n) => out.fixed64(*n),
                Token::Delimited(n, body) => out.delimited(*n, body),
                Token::Nested(n, inner) => out.delimited(*n, &encode_tokens(inner)),
                Token::Group(n, inner) => out.key(*n, 3).raw(&encode_tokens(inner)).key(*n, 4),
                Token::Raw(raw) => out.raw(raw),
            })
            .0
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, u8),
        Remove(usize),
        AppendUnknown(u32, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip(at, byte)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert(at, byte)),
            any::<usize>().prop_map(Mutation::Remove),
            (1u32..300, 0u8..6).prop_map(|(n, w)| Mutation::AppendUnknown(n, w)),
        ]
    }

    fn mutate(payload: &mut Vec<u8>, mutation: &Mutation) {
        let at = |index: usize, len: usize| index % len.max(1);
        match *mutation {
            Mutation::Flip(index, byte) if !payload.is_empty() => {
                let index = at(index, payload.len());
                payload[index] ^= byte;
            }
            Mutation::Truncate(index) => payload.truncate(at(index, payload.len())),
            Mutation::Insert(index, byte) => {
                payload.insert(at(index, payload.len() + 1), byte);
            }
            Mutation::Remove(index) if !payload.is_empty() => {
                payload.remove(at(index, payload.len()));
            }
            Mutation::AppendUnknown(number, wire_type) => {
                let field = match wire_type {
                    0 => bytes().varint(number, 1),
                    1 => bytes().fixed64(number),
                    2 => bytes().delimited(number, b"x"),
                    3 => bytes().group(number, bytes().varint(1, 1)),
                    _ => bytes().fixed32(number),
                };
                payload.extend_from_slice(&field.0);
            }
            Mutation::Flip(..) | Mutation::Remove(_) => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_get_the_decoders_verdict(
            payload in proptest::collection::vec(any::<u8>(), 0..96),
            tokens in proptest::collection::vec(token(), 0..8),
        ) {
            let examples = example_registry();
            let tests = test_registry();
            let structured = encode_tokens(&tokens);
            let subjects = [
                Subject::new(&examples, "orders.OrderCreated", 1),
                Subject::new(&examples, "orders.OrderCreated", 2),
                Subject::new(&examples, "orders.OrderCreated", 3),
                Subject::new(&tests, "wiretest.Rich", 1),
                Subject::new(&tests, "wiretest.legacy.Old", 1),
            ];
            for subject in &subjects {
                subject.assert_agrees(&payload)?;
                subject.assert_agrees(&structured)?;
            }
        }

        #[test]
        fn mutated_valid_payloads_get_the_decoders_verdict(
            pick in any::<prop::sample::Index>(),
            mutations in proptest::collection::vec(mutation(), 1..4),
        ) {
            let examples = example_registry();
            let tests = test_registry();
            let cases = corpus(&examples, &tests);
            let (subject, payload) = &cases[pick.index(cases.len())];
            let mut payload = payload.clone();
            for mutation in &mutations {
                mutate(&mut payload, mutation);
                subject.assert_agrees(&payload)?;
            }
        }
    }
}
