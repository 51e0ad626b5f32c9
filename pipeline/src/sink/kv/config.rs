//! The `type: kv` sink block: the bucket, the key template, and what each
//! event type does to its JSON document. Each field's doc comment is its user
//! documentation.
//!
//! [`KvSinkConfig::check`] is pure and names every problem by its key path;
//! [`KvSinkConfig::check_schemas`] checks the value paths against the schemas.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Deserializer};

use super::document::{FieldPath, RECORD_FIELD};
use crate::{
    config::{ConfigError, raw::optional_duration},
    schema::SchemaRegistry,
    sink::{rules_with_schemas, value::ValueSpec},
    template::Template,
};

/// Writes one JSON document per key into a NATS KV bucket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvSinkConfig {
    /// The bucket; created when missing, with `history` and `ttl`.
    pub bucket: String,
    /// Key template: `{aggregate_id}` (default), `{aggregate_type}`,
    /// `{event_type}`, `{event_id}`, `{source_subject}` and literal text.
    #[serde(default = "default_key")]
    pub key: String,
    /// Revisions kept per key, 1 to 64 (default 1), when the bucket is created.
    #[serde(default = "default_history")]
    pub history: i64,
    /// Age after which an entry expires, when the bucket is created (default: never).
    #[serde(default, deserialize_with = "optional_duration")]
    pub ttl: Option<Duration>,
    /// What each event type does to its document; other event types are
    /// acked and counted as skipped.
    pub on: BTreeMap<String, KvRuleConfig>,
}

fn default_key() -> String {
    "{aggregate_id}".to_owned()
}

fn default_history() -> i64 {
    1
}

/// The operations of one event type, applied in this order: `set`,
/// `increment`, `append`, `unset`. `delete` stands alone.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvRuleConfig {
    /// Fields set to a value: a literal, an envelope field or a payload path.
    #[serde(default)]
    pub set: BTreeMap<String, ValueSpec>,
    /// Numeric fields increased by a number (a missing field counts as 0).
    #[serde(default)]
    pub increment: BTreeMap<String, ValueSpec>,
    /// Lists a value is appended to (a missing list starts empty); with
    /// `{ value: ..., max_len: N }` only the last N items are kept.
    #[serde(default)]
    pub append: BTreeMap<String, AppendSpec>,
    /// Fields removed.
    #[serde(default)]
    pub unset: Vec<String>,
    /// Deletes the document (a KV delete marker).
    #[serde(default)]
    pub delete: bool,
}

/// An `append:` entry: a value, or `{ value: <value>, max_len: <n> }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendSpec {
    pub value: ValueSpec,
    pub max_len: Option<usize>,
}

impl<'de> Deserialize<'de> for AppendSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bounded {
            value: ValueSpec,
            max_len: Option<usize>,
        }
        let raw = serde_json::Value::deserialize(deserializer)?;
        if raw.get("value").is_some() {
            let bounded: Bounded = serde_json::from_value(raw).map_err(serde::de::Error::custom)?;
            return Ok(Self {
                value: bounded.value,
                max_len: bounded.max_len,
            });
        }
        let value = serde_json::from_value(raw).map_err(serde::de::Error::custom)?;
        Ok(Self {
            value,
            max_len: None,
        })
    }
}

impl KvSinkConfig {
    /// Checks names, the key template and each rule's shape.
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let valid_bucket = !self.bucket.is_empty()
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_bucket {
            errors.push(ConfigError::new(
                format!("{path}.bucket"),
                format!(
                    "invalid bucket name {:?} (letters, digits, '_' and '-')",
                    self.bucket
                ),
            ));
        }
        if let Err(err) = Template::parse_subject(&self.key) {
            errors.push(ConfigError::new(format!("{path}.key"), err.to_string()));
        }
        if !(1..=64).contains(&self.history) {
            errors.push(ConfigError::new(
                format!("{path}.history"),
                "must be between 1 and 64",
            ));
        }
        if self.ttl.is_some_and(|ttl| ttl.is_zero()) {
            errors.push(ConfigError::new(format!("{path}.ttl"), "must be above 0"));
        }
        if self.on.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.on"),
                "names no event type",
            ));
        }
        for (event_type, rule) in &self.on {
            rule.check(&format!("{path}.on.{event_type}"), errors);
        }
    }

    /// Checks every value path against the schema of its event type (the
    /// newest version, or `pin`).
    pub fn check_schemas(
        &self,
        path: &str,
        registry: &SchemaRegistry,
        pin: Option<u32>,
        errors: &mut Vec<ConfigError>,
    ) {
        for (rule_path, rule, schema) in rules_with_schemas(&self.on, path, registry, pin, errors) {
            let values = rule
                .set
                .iter()
                .map(|(field, spec)| ("set", field, spec))
                .chain(
                    rule.increment
                        .iter()
                        .map(|(f, spec)| ("increment", f, spec)),
                )
                .chain(
                    rule.append
                        .iter()
                        .map(|(f, spec)| ("append", f, &spec.value)),
                );
            for (operation, field, spec) in values {
                let ValueSpec::Path(value_path) = spec else {
                    continue;
                };
                let key = format!("{rule_path}.{operation}.{field}");
                match value_path.resolve(schema) {
                    Ok(found) if operation == "increment" && !found.is_numeric() => {
                        errors.push(ConfigError::new(
                            key,
                            format!("{value_path} is not a number ({found:?})"),
                        ));
                    }
                    Ok(_) => {}
                    Err(message) => errors.push(ConfigError::new(key, message)),
                }
            }
        }
    }
}

impl KvRuleConfig {
    fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        let has_updates = !self.set.is_empty()
            || !self.increment.is_empty()
            || !self.append.is_empty()
            || !self.unset.is_empty();
        if self.delete && has_updates {
            errors.push(ConfigError::new(
                format!("{path}.delete"),
                "delete cannot be combined with other operations",
            ));
        }
        if !self.delete && !has_updates {
            errors.push(ConfigError::new(
                path,
                "needs at least one of set, increment, append, unset, delete",
            ));
        }
        let mut fields: Vec<(String, FieldPath)> = Vec::new();
        let named = self
            .set
            .keys()
            .map(|field| (format!("{path}.set.{field}"), field))
            .chain(
                self.increment
                    .keys()
                    .map(|field| (format!("{path}.increment.{field}"), field)),
            )
            .chain(
                self.append
                    .keys()
                    .map(|field| (format!("{path}.append.{field}"), field)),
            )
            .chain(
                self.unset
                    .iter()
                    .enumerate()
                    .map(|(index, field)| (format!("{path}.unset[{index}]"), field)),
            );
        for (key, field) in named {
            match FieldPath::parse(field) {
                Some(parsed) if parsed.first() == RECORD_FIELD => errors.push(ConfigError::new(
                    key,
                    format!("{RECORD_FIELD} is where Jetline records applied sequences"),
                )),
                Some(parsed) => {
                    if let Some((_, other)) =
                        fields.iter().find(|(_, other)| other.overlaps(&parsed))
                    {
                        errors.push(ConfigError::new(
                            key.clone(),
                            format!("{field:?} overlaps {other} in the same rule"),
                        ));
                    }
                    fields.push((key, parsed));
                }
                None => errors.push(ConfigError::new(
                    key,
                    format!("invalid field name {field:?} (dot-separated, no empty parts)"),
                )),
            }
        }
        for (field, spec) in &self.increment {
            if let ValueSpec::Literal(literal) = spec
                && !literal.is_number()
            {
                errors.push(ConfigError::new(
                    format!("{path}.increment.{field}"),
                    format!("{literal} is not a number"),
                ));
            }
        }
        for (field, spec) in &self.append {
            if spec.max_len == Some(0) {
                errors.push(ConfigError::new(
                    format!("{path}.append.{field}.max_len"),
                    "must be at least 1",
                ));
            }
        }
    }
}
