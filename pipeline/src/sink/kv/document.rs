//! The JSON document of one key and the operations an event applies to it
//! (`set`, `increment`, `append`, `unset`, in that order), plus the record of
//! the last applied source sequence kept inside the document; the key an
//! event goes to, and what it makes of the document stored there
//! ([`Rules`], [`Change`]), which the sink and `jetline project` share.
//!
//! Pure: no IO. **Invariant:** a document records, per sink and source
//! stream, the sequence of the last event applied to it, so an event at or
//! below it is recognised as already applied.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
};

use serde_json::{Map, Value};

use super::config::{KvRuleConfig, KvSinkConfig};
use crate::{
    envelope::Envelope,
    sink::{
        Event, SinkError,
        value::{Position, ValueError, ValueSpec},
    },
    template::Template,
};

/// The document field holding `{ "<sink>": { "<stream>": <sequence> } }`
/// (per sink, so that two sinks may write one bucket).
pub const RECORD_FIELD: &str = "_jetline";

/// A document field: `status`, or `shipping.carrier` inside an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(text: &str) -> Option<Self> {
        let parts: Vec<String> = text.split('.').map(str::to_owned).collect();
        parts
            .iter()
            .all(|part| !part.is_empty())
            .then_some(FieldPath(parts))
    }

    pub fn first(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// Whether one path is the other or lies inside it.
    pub fn overlaps(&self, other: &FieldPath) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .all(|(mine, theirs)| mine == theirs)
    }

    /// Removes the field, if it is there.
    fn remove(&self, document: &mut Map<String, Value>) {
        let Some((last, parents)) = self.0.split_last() else {
            return;
        };
        let mut object = document;
        for part in parents {
            match object.get_mut(part).and_then(Value::as_object_mut) {
                Some(inner) => object = inner,
                None => return,
            }
        }
        object.remove(last);
    }

    /// The object holding the last part, created on the way when missing.
    fn parent_mut<'a>(
        &self,
        document: &'a mut Map<String, Value>,
    ) -> Result<(&'a mut Map<String, Value>, &str), DocumentError> {
        let (last, parents) = self
            .0
            .split_last()
            .ok_or_else(|| DocumentError("empty field name".into()))?;
        let mut object = document;
        for part in parents {
            let slot = object
                .entry(part.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if slot.is_null() {
                *slot = Value::Object(Map::new());
            }
            object = slot
                .as_object_mut()
                .ok_or_else(|| DocumentError(format!("{self}: {part} is not an object")))?;
        }
        Ok((object, last))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// A document that does not allow an operation (a list where a number was
/// expected, text that is not a JSON object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DocumentError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Value(#[from] ValueError),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    Set(FieldPath, ValueSpec),
    Increment(FieldPath, ValueSpec),
    Append {
        field: FieldPath,
        value: ValueSpec,
        max_len: Option<usize>,
    },
    Unset(FieldPath),
}

/// What one event type does to its document.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Update(Vec<Operation>),
    Delete,
}

impl Rule {
    /// From a checked rule (field names that do not parse are left out; the
    /// configuration check reports them).
    pub fn from_config(config: &KvRuleConfig) -> Self {
        if config.delete {
            return Rule::Delete;
        }
        let field = |name: &String| FieldPath::parse(name);
        let operations =
            config
                .set
                .iter()
                .filter_map(|(name, spec)| Some(Operation::Set(field(name)?, spec.clone())))
                .chain(config.increment.iter().filter_map(|(name, spec)| {
                    Some(Operation::Increment(field(name)?, spec.clone()))
                }))
                .chain(config.append.iter().filter_map(|(name, spec)| {
                    Some(Operation::Append {
                        field: field(name)?,
                        value: spec.value.clone(),
                        max_len: spec.max_len,
                    })
                }))
                .chain(
                    config
                        .unset
                        .iter()
                        .filter_map(|name| Some(Operation::Unset(field(name)?))),
                )
                .collect();
        Rule::Update(operations)
    }
}

/// A KV sink's key template and the rule of each event type, parsed once.
#[derive(Debug, Clone)]
pub struct Rules {
    key: Template,
    by_type: HashMap<String, Rule>,
}

impl Rules {
    pub fn new(config: &KvSinkConfig) -> Result<Self, SinkError> {
        let key = Template::parse_subject(&config.key).map_err(|source| SinkError::Render {
            what: "key",
            source,
        })?;
        let by_type = config
            .on
            .iter()
            .map(|(event_type, rule)| (event_type.clone(), Rule::from_config(rule)))
            .collect();
        Ok(Self { key, by_type })
    }

    /// The top-level payload fields the rules read.
    pub fn payload_fields(&self) -> BTreeSet<String> {
        let operations = self.by_type.values().flat_map(|rule| match rule {
            Rule::Update(operations) => operations.as_slice(),
            Rule::Delete => &[],
        });
        operations
            .filter_map(|operation| match operation {
                Operation::Set(_, value)
                | Operation::Increment(_, value)
                | Operation::Append { value, .. } => value.payload_field(),
                Operation::Unset(_) => None,
            })
            .map(str::to_owned)
            .collect()
    }

    /// The rule for the event's type and the key it applies to; `None` when
    /// the sink has no rule for that type (the event is skipped).
    pub fn target(&self, event: &Event) -> Result<Option<(&Rule, String)>, SinkError> {
        let Some(rule) = self.by_type.get(&event.envelope.event_type) else {
            return Ok(None);
        };
        let key = self
            .key
            .render_subject(&event.envelope, &event.delivery.subject)
            .map_err(|source| SinkError::Render {
                what: "key",
                source,
            })?;
        if !is_valid_key(&key) {
            return Err(invalid_key(&key));
        }
        Ok(Some((rule, key)))
    }
}

/// A key the KV store takes: letters, digits, `-`, `_`, `/`, `=` and `.`,
/// neither starting nor ending with `.` (the client's own check, made
/// before anything is read, so that `jetline project` refuses the same keys).
fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key.bytes().all(|byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'/' | b'_' | b'=' | b'.')
        })
}

pub(super) fn invalid_key(key: &str) -> SinkError {
    SinkError::Document {
        key: key.to_owned(),
        message: "not a valid KV key (letters, digits, '-', '_', '/', '=', '.')".into(),
    }
}

/// What one event makes of the document stored at its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The document records this event (or a later one) as applied: left as it is.
    AlreadyApplied(Map<String, Value>),
    /// The document to write.
    Put(Map<String, Value>),
    /// The key is deleted; the delete marker's body keeps this record.
    Delete(Map<String, Value>),
}

impl Rule {
    /// Applies the rule for one event to `document` (as stored at `key`),
    /// recording the event's position as `sink`'s last applied one.
    pub fn change(
        &self,
        mut document: Map<String, Value>,
        sink: &str,
        key: &str,
        envelope: &Envelope,
        position: Position<'_>,
    ) -> Result<Change, SinkError> {
        if last_applied(&document, sink, position.stream).is_some_and(|last| last >= position.seq) {
            return Ok(Change::AlreadyApplied(document));
        }
        match self {
            Rule::Delete => {
                let mut record = tombstone(&document);
                record_applied(&mut record, sink, position.stream, position.seq);
                Ok(Change::Delete(record))
            }
            Rule::Update(operations) => {
                apply(operations, &mut document, envelope, position).map_err(|err| match err {
                    ApplyError::Value(err) => SinkError::Value(err),
                    ApplyError::Document(err) => SinkError::Document {
                        key: key.to_owned(),
                        message: err.to_string(),
                    },
                })?;
                record_applied(&mut document, sink, position.stream, position.seq);
                Ok(Change::Put(document))
            }
        }
    }
}

/// Applies `operations` to `document` for one event.
pub fn apply(
    operations: &[Operation],
    document: &mut Map<String, Value>,
    envelope: &Envelope,
    position: Position<'_>,
) -> Result<(), ApplyError> {
    for operation in operations {
        match operation {
            Operation::Set(field, spec) => {
                let value = spec.to_json(envelope, position)?;
                let (object, last) = field.parent_mut(document)?;
                object.insert(last.to_owned(), value);
            }
            Operation::Increment(field, spec) => {
                let by = spec.to_json(envelope, position)?;
                let (object, last) = field.parent_mut(document)?;
                let current = object.get(last).cloned().unwrap_or(Value::Null);
                let sum = add(&current, &by).ok_or_else(|| {
                    DocumentError(format!("{field}: cannot add {by} to {current}"))
                })?;
                object.insert(last.to_owned(), sum);
            }
            Operation::Append {
                field,
                value,
                max_len,
            } => {
                let item = value.to_json(envelope, position)?;
                let (object, last) = field.parent_mut(document)?;
                let slot = object
                    .entry(last.to_owned())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if slot.is_null() {
                    *slot = Value::Array(Vec::new());
                }
                let list = slot
                    .as_array_mut()
                    .ok_or_else(|| DocumentError(format!("{field} is not a list")))?;
                list.push(item);
                if let Some(max_len) = max_len
                    && list.len() > *max_len
                {
                    let excess = list.len() - max_len;
                    list.drain(..excess);
                }
            }
            Operation::Unset(field) => field.remove(document),
        }
    }
    Ok(())
}

/// `current + by`: integers stay integers while they fit; null counts as 0.
fn add(current: &Value, by: &Value) -> Option<Value> {
    let zero = Value::from(0);
    let current = if current.is_null() { &zero } else { current };
    let by = if by.is_null() { &zero } else { by };
    if let (Some(a), Some(b)) = (current.as_i64(), by.as_i64())
        && let Some(sum) = a.checked_add(b)
    {
        return Some(Value::from(sum));
    }
    let sum = current.as_f64()? + by.as_f64()?;
    serde_json::Number::from_f64(sum).map(Value::Number)
}

/// The sequence of `stream` that `sink` last applied to `document`.
pub fn last_applied(document: &Map<String, Value>, sink: &str, stream: &str) -> Option<u64> {
    document.get(RECORD_FIELD)?.get(sink)?.get(stream)?.as_u64()
}

/// Records `seq` of `stream` as applied to `document` by `sink`.
pub fn record_applied(document: &mut Map<String, Value>, sink: &str, stream: &str, seq: u64) {
    if let Some(sequences) =
        object_entry(document, RECORD_FIELD).and_then(|record| object_entry(record, sink))
    {
        sequences.insert(stream.to_owned(), Value::from(seq));
    }
}

/// The object under `name`, made one when missing or of another kind.
fn object_entry<'a>(
    object: &'a mut Map<String, Value>,
    name: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = object
        .entry(name)
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// A stored value as a document: empty for an absent or empty value.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, DocumentError> {
    if bytes.is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(document)) => Ok(document),
        Ok(_) => Err(DocumentError(
            "the stored value is not a JSON object".into(),
        )),
        Err(err) => Err(DocumentError(format!(
            "the stored value is not JSON: {err}"
        ))),
    }
}

/// Only the record of applied sequences: the body of a delete marker.
pub fn tombstone(document: &Map<String, Value>) -> Map<String, Value> {
    document
        .get(RECORD_FIELD)
        .map(|record| Map::from_iter([(RECORD_FIELD.to_owned(), record.clone())]))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::sink::value::tests::example_event;

    fn rule(yaml: serde_json::Value) -> Vec<Operation> {
        let config: KvRuleConfig = serde_json::from_value(yaml).expect("a rule");
        match Rule::from_config(&config) {
            Rule::Update(operations) => operations,
            Rule::Delete => panic!("not an update"),
        }
    }

    #[test]
    fn operations_apply_in_their_stated_order() {
        let envelope = example_event(
            "orders.OrderCreated",
            3,
            json!({ "customerId": "c-9", "totalAmountCents": "1250" }),
        );
        let position = Position {
            stream: "ORDERS",
            seq: 7,
        };
        let operations = rule(json!({
            "set": { "status": "created", "customer.id": "payload.customer_id", "count": 10 },
            "increment": { "count": "payload.total_amount_cents", "fresh": 2 },
            "append": { "ids": "aggregate_id", "seqs": { "value": "source_seq", "max_len": 2 } },
            "unset": ["obsolete", "missing.deep"],
        }));
        let mut document = parse(br#"{"obsolete": 1, "seqs": [1, 2], "ids": null}"#).expect("doc");
        apply(&operations, &mut document, &envelope, position).expect("applies");
        assert_eq!(
            Value::Object(document),
            json!({
                "status": "created",
                "customer": { "id": "c-9" },
                "count": 1260,
                "fresh": 2,
                "ids": ["o-1"],
                "seqs": [2, 7],
            })
        );
    }

    #[test]
    fn a_document_of_the_wrong_shape_is_an_error() {
        let envelope = example_event("orders.OrderShipped", 1, json!({}));
        let position = Position {
            stream: "S",
            seq: 1,
        };
        let cases = [
            (json!({ "increment": { "n": 1 } }), json!({ "n": "text" })),
            (json!({ "append": { "l": 1 } }), json!({ "l": {} })),
            (json!({ "set": { "a.b": 1 } }), json!({ "a": 3 })),
        ];
        for (config, stored) in cases {
            let operations = rule(config.clone());
            let Value::Object(mut document) = stored else {
                panic!("an object");
            };
            let result = apply(&operations, &mut document, &envelope, position);
            assert!(
                matches!(result, Err(ApplyError::Document(_))),
                "{config}: {result:?}"
            );
        }
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn the_record_keeps_one_sequence_per_sink_and_stream_and_survives_deletes() {
        let mut document = Map::new();
        assert_eq!(last_applied(&document, "s", "A"), None);
        record_applied(&mut document, "s", "A", 5);
        record_applied(&mut document, "s", "B", 2);
        record_applied(&mut document, "t", "A", 1);
        record_applied(&mut document, "s", "A", 9);
        document.insert("status".into(), "x".into());
        assert_eq!(last_applied(&document, "s", "A"), Some(9));
        assert_eq!(last_applied(&document, "s", "B"), Some(2));
        assert_eq!(last_applied(&document, "t", "A"), Some(1));
        let marker = tombstone(&document);
        assert!(!marker.contains_key("status"));
        assert_eq!(last_applied(&marker, "s", "A"), Some(9));
    }

    #[test]
    fn a_change_records_the_event_and_leaves_what_is_recorded_as_it_is() {
        let envelope = example_event("orders.OrderShipped", 1, json!({}));
        let at = |seq| Position { stream: "S", seq };
        let update = Rule::Update(rule(json!({ "set": { "status": "shipped" } })));
        let Ok(Change::Put(document)) = update.change(Map::new(), "s", "k", &envelope, at(5))
        else {
            panic!("an update puts the document");
        };
        assert_eq!(document["status"], "shipped");
        assert_eq!(last_applied(&document, "s", "S"), Some(5));
        let again = update.change(document.clone(), "s", "k", &envelope, at(5));
        assert_eq!(again.ok(), Some(Change::AlreadyApplied(document.clone())));
        let Ok(Change::Delete(record)) = Rule::Delete.change(document, "s", "k", &envelope, at(6))
        else {
            panic!("a delete deletes");
        };
        assert_eq!(
            Value::Object(record),
            json!({ "_jetline": { "s": { "S": 6 } } })
        );
    }

    #[test]
    fn keys_are_what_the_kv_store_takes() {
        let cases = [
            ("o-1", true),
            ("a/b=c_d.e", true),
            ("", false),
            (".o", false),
            ("o.", false),
            ("o:1", false),
            ("o 1", false),
            ("ö", false),
        ];
        for (key, valid) in cases {
            assert_eq!(is_valid_key(key), valid, "{key:?}");
        }
    }

    #[test]
    fn overlapping_fields_are_found() {
        let path = |text| FieldPath::parse(text).expect("a field");
        assert!(path("a").overlaps(&path("a.b")));
        assert!(path("a.b").overlaps(&path("a")));
        assert!(!path("a.b").overlaps(&path("a.c")));
        assert!(FieldPath::parse("a..b").is_none());
    }
}
