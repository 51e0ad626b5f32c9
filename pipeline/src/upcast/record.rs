//! [`Record`]: a payload between two schema versions. Steps rename, move and
//! convert its fields by name; [`Record::into_message`] then fits it into the
//! next version's message descriptor, strictly.
//!
//! **Invariant:** a record never holds a value that it did not get from the
//! decoded payload or from a step, and [`Record::into_message`] accepts a
//! field only when the target schema has a field of that name and a
//! compatible type: nothing is dropped or coerced silently. Enum values cross
//! versions by name; nested messages of another version are carried field by
//! field, by name, under the same rules.

use prost_reflect::{
    DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage as _,
    Value,
};

use std::sync::Arc;

use super::Problem;

/// A payload's fields by name, in the order they were read or written.
#[derive(Debug, Clone, Default)]
pub struct Record {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// [`name_key`] of the name: most lookups are settled without reading
    /// the name through its descriptor.
    key: u64,
    name: Name,
    field: Field,
}

impl Entry {
    fn new(name: Name, field: Field) -> Self {
        Self {
            key: name_key(name.as_str()),
            name,
            field,
        }
    }
}

/// A name's length and first seven bytes: equal for equal names, and
/// different for nearly all others.
fn name_key(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut key = [0u8; 8];
    key[0] = bytes.len().min(255) as u8;
    let prefix = bytes.len().min(7);
    key[1..=prefix].copy_from_slice(&bytes[..prefix]);
    u64::from_le_bytes(key)
}

/// A field keeps its schema's descriptor as its name until a step renames
/// it, which spares an allocation per field on the hot path.
#[derive(Debug, Clone)]
enum Name {
    Declared(FieldDescriptor),
    /// Shared with the step that wrote it: no allocation per event.
    Given(Arc<str>),
}

impl Name {
    fn as_str(&self) -> &str {
        match self {
            Name::Declared(field) => field.name(),
            Name::Given(name) => name,
        }
    }
}

/// One field's value, with the enum its numbers belong to (when it holds enum
/// numbers), so that they can cross to another version's enum by name.
#[derive(Debug, Clone)]
pub struct Field {
    slot: Slot,
    enum_type: Option<EnumDescriptor>,
}

/// A message field is opened into a [`Record`] only when a step looks inside.
#[derive(Debug, Clone)]
enum Slot {
    Value(Value),
    Message(Record),
    Messages(Vec<Record>),
}

/// One segment of a dotted field path, resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: Arc<str>,
    /// A repeated message field: the rest of the path applies to each element.
    pub repeated: bool,
}

/// Why a record does not fit a message descriptor, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct FitError {
    /// Dotted path of the field, e.g. `items.sku`.
    pub field: String,
    pub problem: Problem,
}

impl FitError {
    fn new(field: &str, problem: Problem) -> Self {
        Self {
            field: field.to_owned(),
            problem,
        }
    }

    /// The same error seen from the message holding `parent`.
    fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

impl Field {
    /// A value set by a code step; enum numbers are taken as numbers of the
    /// target schema's enum.
    pub fn new(value: Value) -> Self {
        Self {
            slot: Slot::Value(value),
            enum_type: None,
        }
    }

    /// A value whose enum numbers belong to `enum_type`.
    pub fn with_enum(value: Value, enum_type: Option<EnumDescriptor>) -> Self {
        Self {
            slot: Slot::Value(value),
            enum_type,
        }
    }

    /// The value, unless the field is a message a step has opened.
    pub fn value(&self) -> Option<&Value> {
        match &self.slot {
            Slot::Value(value) => Some(value),
            Slot::Message(_) | Slot::Messages(_) => None,
        }
    }

    pub fn value_mut(&mut self) -> Option<&mut Value> {
        match &mut self.slot {
            Slot::Value(value) => Some(value),
            Slot::Message(_) | Slot::Messages(_) => None,
        }
    }

    /// The enum whose numbers this field holds, if any.
    pub fn enum_type(&self) -> Option<&EnumDescriptor> {
        self.enum_type.as_ref()
    }

    /// A value read from a field of a schema; only enum numbers (alone, in a
    /// list or in a map) need to know their enum.
    fn declared(value: Value, field: &FieldDescriptor) -> Self {
        let enum_type = match value {
            Value::EnumNumber(_) | Value::List(_) | Value::Map(_) => enum_of(field),
            _ => None,
        };
        Self::with_enum(value, enum_type)
    }

    fn message(record: Record) -> Self {
        Self {
            slot: Slot::Message(record),
            enum_type: None,
        }
    }
}

impl From<Value> for Field {
    fn from(value: Value) -> Self {
        Field::new(value)
    }
}

/// The enum whose numbers a field of this descriptor holds (its own kind, or
/// a map's values).
pub(crate) fn enum_of(field: &FieldDescriptor) -> Option<EnumDescriptor> {
    match field.kind() {
        Kind::Enum(enum_type) => Some(enum_type),
        Kind::Message(entry) if field.is_map() => {
            entry.map_entry_value_field().kind().as_enum().cloned()
        }
        _ => None,
    }
}

impl Record {
    /// Takes the fields the message holds (unknown fields are not carried:
    /// their numbers mean nothing in another version).
    pub fn from_message(mut message: DynamicMessage) -> Self {
        let mut entries = Vec::with_capacity(message.descriptor().fields().len());
        entries.extend(message.take_fields().map(|(descriptor, value)| {
            let field = Field::declared(value, &descriptor);
            Entry::new(Name::Declared(descriptor), field)
        }));
        Self { entries }
    }

    /// Adds one scalar field read from the wire, as decoding the message
    /// would hold it: a later record of the field replaces an earlier one,
    /// and a default value without presence is no field.
    pub(super) fn push_read(&mut self, descriptor: &FieldDescriptor, value: Value) {
        let present = descriptor.supports_presence() || !value.is_default_for_field(descriptor);
        match (self.position(descriptor.name()), present) {
            (Some(index), true) => self.entries[index].field = Field::declared(value, descriptor),
            (Some(index), false) => {
                self.entries.remove(index);
            }
            (None, true) => {
                let field = Field::declared(value, descriptor);
                self.entries
                    .push(Entry::new(Name::Declared(descriptor.clone()), field));
            }
            (None, false) => {}
        }
    }

    /// Appends the fields a message holds (none of them already here).
    pub(super) fn extend_from_message(&mut self, message: DynamicMessage) {
        self.entries.extend(Record::from_message(message).entries);
    }

    /// The names of the fields present, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.name.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The value of a field present, unless it is a message a step opened.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.position(name)
            .and_then(|index| self.entries[index].field.value())
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.position(name).map(|index| &self.entries[index].field)
    }

    pub fn field_mut(&mut self, name: &str) -> Option<&mut Field> {
        self.position(name)
            .map(|index| &mut self.entries[index].field)
    }

    /// Sets a field, replacing what it held.
    pub fn set(&mut self, name: &str, value: Value) {
        self.insert(name, Field::new(value));
    }

    /// Puts a field under `name`, replacing what it held.
    pub fn insert(&mut self, name: &str, field: Field) {
        match self.position(name) {
            Some(index) => self.entries[index].field = field,
            None => self
                .entries
                .push(Entry::new(Name::Given(Arc::from(name)), field)),
        }
    }

    /// As [`Record::insert`], with a name the caller keeps.
    pub(crate) fn insert_named(&mut self, name: &Arc<str>, field: Field) {
        match self.position(name) {
            Some(index) => self.entries[index].field = field,
            None => self
                .entries
                .push(Entry::new(Name::Given(Arc::clone(name)), field)),
        }
    }

    /// Removes a field and returns it.
    pub fn take(&mut self, name: &str) -> Option<Field> {
        let index = self.position(name)?;
        Some(self.entries.remove(index).field)
    }

    /// The nested message in field `name`, opened for editing; `None` when
    /// the field is absent.
    pub fn message_mut(&mut self, name: &str) -> Result<Option<&mut Record>, Problem> {
        let Some(index) = self.position(name) else {
            return Ok(None);
        };
        match self.open(index)? {
            Slot::Message(record) => Ok(Some(record)),
            Slot::Messages(_) | Slot::Value(_) => Err(Problem::NotAMessage),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        let key = name_key(name);
        self.entries
            .iter()
            .position(|entry| entry.key == key && entry.name.as_str() == name)
    }

    /// Opens a message (or repeated message) field into records.
    fn open(&mut self, index: usize) -> Result<&mut Slot, Problem> {
        let slot = &mut self.entries[index].field.slot;
        if let Slot::Value(value) = slot {
            let opened = match std::mem::replace(value, Value::Bool(false)) {
                Value::Message(message) => Slot::Message(Record::from_message(message)),
                Value::List(items) if items.iter().all(|item| item.as_message().is_some()) => {
                    Slot::Messages(
                        items
                            .into_iter()
                            .filter_map(|item| match item {
                                Value::Message(message) => Some(Record::from_message(message)),
                                _ => None,
                            })
                            .collect(),
                    )
                }
                other => {
                    *value = other;
                    return Err(Problem::NotAMessage);
                }
            };
            *slot = opened;
        }
        Ok(slot)
    }

    /// Calls `apply` on the record at `parents` (each element where a segment
    /// is a repeated field). A missing singular message is created when
    /// `create`, else nothing is done; a missing repeated one has no elements.
    pub fn for_each_at(
        &mut self,
        parents: &[Segment],
        create: bool,
        apply: &mut dyn FnMut(&mut Record) -> Result<(), Problem>,
    ) -> Result<(), Problem> {
        let Some((first, rest)) = parents.split_first() else {
            return apply(self);
        };
        let index = match self.position(&first.name) {
            Some(index) => index,
            None if create && !first.repeated => {
                self.entries.push(Entry::new(
                    Name::Given(Arc::clone(&first.name)),
                    Field::message(Record::default()),
                ));
                self.entries.len() - 1
            }
            None => return Ok(()),
        };
        match self.open(index)? {
            Slot::Message(record) => record.for_each_at(rest, create, apply),
            Slot::Messages(records) => records
                .iter_mut()
                .try_for_each(|record| record.for_each_at(rest, create, apply)),
            Slot::Value(_) => Err(Problem::NotAMessage),
        }
    }

    /// Builds the message of `descriptor` from this record: every field must
    /// exist there with a compatible type.
    pub fn into_message(self, descriptor: &MessageDescriptor) -> Result<DynamicMessage, FitError> {
        let mut message = DynamicMessage::new(descriptor.clone());
        for entry in self.entries {
            put(&mut message, descriptor, entry.name.as_str(), entry.field)?;
        }
        Ok(message)
    }

    /// Writes the message [`Record::into_message`] builds, as its
    /// `encode_raw` would, without building it where every field is a
    /// scalar outside a shared oneof (which keeps only the last set).
    pub fn encode_into(
        self,
        descriptor: &MessageDescriptor,
        buf: &mut Vec<u8>,
    ) -> Result<(), FitError> {
        let mut targets = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let target = field_named(descriptor, entry.name.as_str())?;
            let direct =
                matches!(entry.field.slot, Slot::Value(_)) && super::scalar::stands_alone(&target);
            if !direct {
                prost::Message::encode_raw(&self.into_message(descriptor)?, buf);
                return Ok(());
            }
            targets.push(target);
        }
        let mut fields: Vec<(FieldDescriptor, Entry)> =
            targets.into_iter().zip(self.entries).collect();
        // In number order, as the message writes them.
        fields.sort_unstable_by_key(|(target, _)| target.number());
        for (target, entry) in fields {
            let name = entry.name.as_str();
            let found = slot_type_name(&entry.field.slot);
            let value = fit_field(entry.field, &target).map_err(|error| error.within(name))?;
            if !super::scalar::encode(&target, &value, buf) {
                return Err(FitError::new(name, mismatch(&target, found)));
            }
        }
        Ok(())
    }

    /// Checks, building nothing, that the fields present fit `descriptor` by
    /// name and type: the check between two hops. A nested message no step
    /// opened is only checked to be a message here (the start-up checks
    /// compared its schemas; [`Record::into_message`] carries it at the end).
    pub fn check_fits(&self, descriptor: &MessageDescriptor) -> Result<(), FitError> {
        for entry in &self.entries {
            let name = entry.name.as_str();
            let target = field_named(descriptor, name)?;
            let kind = target.kind();
            let fits = match &entry.field.slot {
                Slot::Message(record) => match kind.as_message() {
                    Some(message) if !target.is_list() && !target.is_map() => {
                        record
                            .check_fits(message)
                            .map_err(|error| error.within(name))?;
                        true
                    }
                    _ => false,
                },
                Slot::Messages(records) => match kind.as_message() {
                    Some(message) if target.is_list() => {
                        for (index, record) in records.iter().enumerate() {
                            record
                                .check_fits(message)
                                .map_err(|error| error.within(&format!("{name}[{index}]")))?;
                        }
                        true
                    }
                    _ => false,
                },
                Slot::Value(value) => {
                    let enum_type = entry.field.enum_type.as_ref();
                    let single = |value: &Value, kind: &Kind| {
                        single_fits(value, enum_type, kind)
                            .map_err(|problem| FitError::new(name, problem))
                    };
                    match value {
                        Value::List(items) if target.is_list() => {
                            items.iter().try_for_each(|item| single(item, &kind))?;
                            true
                        }
                        Value::Map(entries) if target.is_map() => match kind.as_message() {
                            Some(entry) => {
                                let key_kind = entry.map_entry_key_field().kind();
                                let value_kind = entry.map_entry_value_field().kind();
                                for (key, value) in entries {
                                    if !key.is_valid(&key_kind) {
                                        return Err(FitError::new(name, mismatch(&target, "map")));
                                    }
                                    single(value, &value_kind)?;
                                }
                                true
                            }
                            None => false,
                        },
                        Value::List(_) | Value::Map(_) => false,
                        _ if target.is_list() || target.is_map() => false,
                        value => {
                            single(value, &kind)?;
                            true
                        }
                    }
                }
            };
            if !fits {
                let found = slot_type_name(&entry.field.slot);
                return Err(FitError::new(name, mismatch(&target, found)));
            }
        }
        Ok(())
    }
}

/// The field of `descriptor` named `name`, or the error naming it.
fn field_named(descriptor: &MessageDescriptor, name: &str) -> Result<FieldDescriptor, FitError> {
    descriptor.get_field_by_name(name).ok_or_else(|| {
        FitError::new(
            name,
            Problem::NotInSchema {
                message: descriptor.full_name().to_owned(),
            },
        )
    })
}

/// Fits `field` into the field `name` of `message`.
fn put(
    message: &mut DynamicMessage,
    descriptor: &MessageDescriptor,
    name: &str,
    field: Field,
) -> Result<(), FitError> {
    let target = field_named(descriptor, name)?;
    let value = fit_field(field, &target).map_err(|error| error.within(name))?;
    message.try_set_field(&target, value).map_err(|error| {
        let found = match &error {
            prost_reflect::SetFieldError::InvalidType { value, .. } => value_type_name(value),
            prost_reflect::SetFieldError::NotFound => "another type",
        };
        FitError::new(name, mismatch(&target, found))
    })
}

/// A message of another version, carried field by field into `descriptor`.
fn carry(
    mut message: DynamicMessage,
    descriptor: &MessageDescriptor,
) -> Result<DynamicMessage, FitError> {
    let mut carried = DynamicMessage::new(descriptor.clone());
    for (field, value) in message.take_fields() {
        let enum_type = enum_of(&field);
        put(
            &mut carried,
            descriptor,
            field.name(),
            Field::with_enum(value, enum_type),
        )?;
    }
    Ok(carried)
}

/// Whether one value fits a field of `kind` (a message of another version
/// counts: it is carried by name at the end).
fn single_fits(
    value: &Value,
    enum_type: Option<&EnumDescriptor>,
    kind: &Kind,
) -> Result<(), Problem> {
    match (value, kind) {
        (Value::Message(_), Kind::Message(_)) => Ok(()),
        (Value::EnumNumber(number), Kind::Enum(target)) => match enum_type {
            Some(source) if source != target => match source.get_value(*number) {
                Some(named) if target.get_value_by_name(named.name()).is_none() => {
                    Err(Problem::NoSuchEnumValue {
                        value: named.name().to_owned(),
                        enum_type: target.full_name().to_owned(),
                    })
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        },
        (value, kind) if value.is_valid(kind) => Ok(()),
        (value, kind) => Err(Problem::TypeMismatch {
            expected: kind_name(kind),
            found: value_type_name(value).to_owned(),
        }),
    }
}

fn fit_field(field: Field, target: &FieldDescriptor) -> Result<Value, FitError> {
    // Errors are relative to the field; the caller names it with `within`.
    let here = |problem| FitError::new("", problem);
    let kind = target.kind();
    let found = slot_type_name(&field.slot);
    match field.slot {
        Slot::Message(record) => match kind.as_message() {
            Some(descriptor) if !target.is_list() && !target.is_map() => {
                record.into_message(descriptor).map(Value::Message)
            }
            _ => Err(here(mismatch(target, found))),
        },
        Slot::Messages(records) if records.is_empty() && target.is_list() => {
            Ok(Value::List(Vec::new()))
        }
        Slot::Messages(records) => match kind.as_message() {
            Some(descriptor) if target.is_list() => records
                .into_iter()
                .enumerate()
                .map(|(index, record)| {
                    record
                        .into_message(descriptor)
                        .map(Value::Message)
                        .map_err(|error| error.within(&format!("[{index}]")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List),
            _ => Err(here(mismatch(target, found))),
        },
        Slot::Value(Value::List(items)) if target.is_list() => items
            .into_iter()
            .map(|item| fit_single(item, field.enum_type.as_ref(), &kind))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::List),
        Slot::Value(Value::Map(entries)) if target.is_map() => {
            let Some(entry) = kind.as_message() else {
                return Err(here(mismatch(target, found)));
            };
            let key_kind = entry.map_entry_key_field().kind();
            let value_kind = entry.map_entry_value_field().kind();
            entries
                .into_iter()
                .map(|(key, value)| {
                    if !key.is_valid(&key_kind) {
                        return Err(here(mismatch(target, found)));
                    }
                    Ok((
                        key,
                        fit_single(value, field.enum_type.as_ref(), &value_kind)?,
                    ))
                })
                .collect::<Result<_, _>>()
                .map(Value::Map)
        }
        Slot::Value(Value::List(_) | Value::Map(_)) => Err(here(mismatch(target, found))),
        Slot::Value(_) if target.is_list() || target.is_map() => Err(here(mismatch(target, found))),
        Slot::Value(value) => fit_single(value, field.enum_type.as_ref(), &kind),
    }
}

/// One value of a field of `kind`: messages of another version carried by
/// field name, enum numbers carried by value name.
fn fit_single(
    value: Value,
    enum_type: Option<&EnumDescriptor>,
    kind: &Kind,
) -> Result<Value, FitError> {
    let here = |problem| FitError::new("", problem);
    match (value, kind) {
        (Value::Message(message), Kind::Message(descriptor)) => {
            if message.descriptor() == *descriptor {
                Ok(Value::Message(message))
            } else {
                carry(message, descriptor).map(Value::Message)
            }
        }
        (Value::EnumNumber(number), Kind::Enum(target)) => match enum_type {
            Some(source) if source != target => match source.get_value(number) {
                Some(named) => target
                    .get_value_by_name(named.name())
                    .map(|value| Value::EnumNumber(value.number()))
                    .ok_or_else(|| {
                        here(Problem::NoSuchEnumValue {
                            value: named.name().to_owned(),
                            enum_type: target.full_name().to_owned(),
                        })
                    }),
                // An open enum's unnamed number stays what it is.
                None => Ok(Value::EnumNumber(number)),
            },
            _ => Ok(Value::EnumNumber(number)),
        },
        (value, kind) if value.is_valid(kind) => Ok(value),
        (value, kind) => Err(here(Problem::TypeMismatch {
            expected: kind_name(kind),
            found: value_type_name(&value).to_owned(),
        })),
    }
}

fn mismatch(target: &FieldDescriptor, found: &str) -> Problem {
    Problem::TypeMismatch {
        expected: field_type_name(target),
        found: found.to_owned(),
    }
}

fn slot_type_name(slot: &Slot) -> &'static str {
    match slot {
        Slot::Value(value) => value_type_name(value),
        Slot::Message(_) => "message",
        Slot::Messages(_) => "list",
    }
}

/// `repeated int64`, `map<string, string>`, `orders.v3.LineItem`.
pub fn field_type_name(field: &FieldDescriptor) -> String {
    let kind = field.kind();
    if field.is_map()
        && let Some(entry) = kind.as_message()
    {
        return format!(
            "map<{}, {}>",
            kind_name(&entry.map_entry_key_field().kind()),
            kind_name(&entry.map_entry_value_field().kind())
        );
    }
    if field.is_list() {
        format!("repeated {}", kind_name(&kind))
    } else {
        kind_name(&kind)
    }
}

pub fn kind_name(kind: &Kind) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(message) => message.full_name().to_owned(),
        Kind::Enum(enum_type) => enum_type.full_name().to_owned(),
    }
}

pub fn value_type_name(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "bool",
        Value::I32(_) => "int32",
        Value::I64(_) => "int64",
        Value::U32(_) => "uint32",
        Value::U64(_) => "uint64",
        Value::F32(_) => "float",
        Value::F64(_) => "double",
        Value::String(_) => "string",
        Value::Bytes(_) => "bytes",
        Value::EnumNumber(_) => "enum",
        Value::Message(_) => "message",
        Value::List(_) => "list",
        Value::Map(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::SchemaRegistry;

    fn registry() -> SchemaRegistry {
        crate::envelope::tests::example_decoder().registry().clone()
    }

    fn created(registry: &SchemaRegistry, version: u32, json: serde_json::Value) -> DynamicMessage {
        let descriptor = registry
            .resolve("orders.OrderCreated", version)
            .expect("example version");
        DynamicMessage::deserialize(descriptor.clone(), json).expect("valid payload")
    }

    #[test]
    fn nested_messages_cross_versions_by_name() {
        let registry = registry();
        let v1 = created(
            &registry,
            1,
            serde_json::json!({ "orderId": "o-1", "items": [{ "sku": "a", "quantity": 2, "unitPrice": 1.5 }] }),
        );
        let v2 = registry.resolve("orders.OrderCreated", 2).expect("v2");
        let message = Record::from_message(v1).into_message(v2).expect("fits");
        let json = serde_json::to_value(&message).expect("json");
        assert_eq!(json["items"][0]["sku"], "a");
        assert_eq!(json["items"][0]["unitPrice"], 1.5);
    }

    #[test]
    fn a_field_the_target_lacks_or_types_differently_is_refused() {
        let registry = registry();
        let v2 = registry.resolve("orders.OrderCreated", 2).expect("v2");
        let v1 = created(&registry, 1, serde_json::json!({ "total": 2.5 }));
        let error = Record::from_message(v1)
            .into_message(v2)
            .expect_err("total is not in v2");
        assert_eq!(error.field, "total");
        assert!(matches!(error.problem, Problem::NotInSchema { .. }));

        let mut record = Record::default();
        record.set("total_amount", Value::String("2.5".into()));
        let error = record
            .into_message(v2)
            .expect_err("a string is not a double");
        assert_eq!(error.field, "total_amount");
        assert!(matches!(error.problem, Problem::TypeMismatch { .. }));

        let mut record = Record::default();
        let mut item = Record::default();
        item.set("sku", Value::I64(7));
        record.insert(
            "items",
            Field {
                slot: Slot::Messages(vec![Record::default(), item]),
                enum_type: None,
            },
        );
        let error = record.into_message(v2).expect_err("a number is not a sku");
        assert_eq!(error.field, "items[1].sku");
    }

    #[test]
    fn paths_fan_out_over_repeated_messages_and_create_singular_ones() {
        let registry = registry();
        let v1 = created(
            &registry,
            1,
            serde_json::json!({ "items": [{ "sku": "a" }, { "sku": "b" }] }),
        );
        let mut record = Record::from_message(v1);
        let items = [Segment {
            name: "items".into(),
            repeated: true,
        }];
        let mut seen = Vec::new();
        record
            .for_each_at(&items, false, &mut |item| {
                seen.push(
                    item.get("sku")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned(),
                );
                Ok(())
            })
            .expect("walks");
        assert_eq!(seen, ["a", "b"]);

        let nested = [Segment {
            name: "shipping".into(),
            repeated: false,
        }];
        record
            .for_each_at(&nested, true, &mut |inner| {
                inner.set("city", Value::String("Oslo".into()));
                Ok(())
            })
            .expect("created");
        assert!(record.message_mut("shipping").expect("a message").is_some());

        let into_scalar = [
            Segment {
                name: "items".into(),
                repeated: true,
            },
            Segment {
                name: "sku".into(),
                repeated: false,
            },
        ];
        let error = record
            .for_each_at(&into_scalar, false, &mut |_| Ok(()))
            .expect_err("sku is a string");
        assert_eq!(error, Problem::NotAMessage);
    }
}
