//! The `type: postgres` sink block: where the connection string comes from,
//! how events are batched, and one statement with its parameters per event
//! type. Each field's doc comment is its user documentation.
//!
//! [`PostgresSinkConfig::check`] is pure and names every problem by its key
//! path; [`PostgresSinkConfig::check_schemas`] checks each parameter path
//! against the schema of its event type.

use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use crate::{
    config::{ConfigError, raw::duration},
    schema::SchemaRegistry,
    sink::{http::config::is_variable_name, rules_with_schemas, value::ValuePath},
};

/// Applies events to PostgreSQL tables, in batches, each batch one
/// transaction with the checkpoints of its events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// Environment variable holding the connection string
    /// (`postgres://user:password@host:5432/db`); never written in the file.
    #[serde(default = "default_url_env")]
    pub url_env: String,
    #[serde(default)]
    pub batch: BatchConfig,
    /// Connections kept open (default 4).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Table of applied sequences per aggregate, created when missing
    /// (default `jetline_checkpoints`; may be schema-qualified).
    #[serde(default = "default_checkpoint_table")]
    pub checkpoint_table: String,
    /// The statement of each event type; other event types are acked and
    /// counted as skipped.
    pub on: BTreeMap<String, StatementConfig>,
    /// SQL that empties the projection (e.g. `TRUNCATE orders`), run by
    /// `jetline replay --reset` with this sink's checkpoints cleared in the
    /// same transaction.
    pub reset_sql: Option<String>,
}

fn default_url_env() -> String {
    "DATABASE_URL".to_owned()
}

fn default_pool_size() -> usize {
    4
}

fn default_checkpoint_table() -> String {
    "jetline_checkpoints".to_owned()
}

/// When a batch is written: at `max_events`, or `max_wait` after its first
/// event, whichever comes first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Events per transaction, at most (default 500).
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// How long the first event of a batch waits for others (default 50ms).
    #[serde(default = "default_max_wait", deserialize_with = "duration")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            max_wait: default_max_wait(),
        }
    }
}

fn default_max_events() -> usize {
    500
}

fn default_max_wait() -> Duration {
    Duration::from_millis(50)
}

/// One event type's statement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementConfig {
    /// SQL with `$1`, `$2`, ... for the parameters.
    pub sql: String,
    /// Value paths bound to `$1`, `$2`, ...; each parameter's SQL type comes
    /// from the schema (text, int8, float8, bool, bytea, timestamptz, jsonb).
    #[serde(default)]
    pub params: Vec<ValuePath>,
    /// How often the statement runs in a transaction (default `event`).
    #[serde(default)]
    pub per: Per,
}

/// How often a statement runs in a batch's transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// Once per event; each `$n` is one value.
    #[default]
    Event,
    /// Once per batch, for the batch's events of this type; each `$n` is the
    /// array of that parameter over them, in batch order (`text[]`,
    /// `int8[]`, ...), read with `unnest($1::text[], $2::int8[])`. One
    /// statement instead of one per event is what makes a batch cheap.
    Batch,
}

/// The most events one transaction may hold.
const MAX_BATCH_EVENTS: usize = 10_000;

impl PostgresSinkConfig {
    /// Checks names, limits and that each statement uses exactly its params.
    pub fn check(&self, path: &str, errors: &mut Vec<ConfigError>) {
        if !is_variable_name(&self.url_env) {
            errors.push(ConfigError::new(
                format!("{path}.url_env"),
                format!("{:?} is not an environment variable name", self.url_env),
            ));
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&self.batch.max_events) {
            errors.push(ConfigError::new(
                format!("{path}.batch.max_events"),
                format!("must be between 1 and {MAX_BATCH_EVENTS}"),
            ));
        }
        if self.pool_size < 1 {
            errors.push(ConfigError::new(
                format!("{path}.pool_size"),
                "must be at least 1",
            ));
        }
        if !is_table_name(&self.checkpoint_table) {
            errors.push(ConfigError::new(
                format!("{path}.checkpoint_table"),
                format!(
                    "{:?} is not a plain table name ([schema.]name of letters, digits, '_')",
                    self.checkpoint_table
                ),
            ));
        }
        if self.on.is_empty() {
            errors.push(ConfigError::new(
                format!("{path}.on"),
                "names no event type",
            ));
        }
        for (event_type, statement) in &self.on {
            let statement_path = format!("{path}.on.{event_type}");
            if statement.sql.trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("{statement_path}.sql"),
                    "must not be empty",
                ));
                continue;
            }
            let highest = highest_placeholder(&statement.sql);
            let count = statement.params.len();
            if highest > count {
                errors.push(ConfigError::new(
                    format!("{statement_path}.params"),
                    format!("the statement uses ${highest} but params has {count} entries"),
                ));
            } else if highest < count {
                errors.push(ConfigError::new(
                    format!("{statement_path}.params[{highest}]"),
                    format!("the statement does not use ${}", highest + 1),
                ));
            }
        }
    }

    /// Checks every parameter path against the schema of its event type (the
    /// newest version, or `pin`).
    pub fn check_schemas(
        &self,
        path: &str,
        registry: &SchemaRegistry,
        pin: Option<u32>,
        errors: &mut Vec<ConfigError>,
    ) {
        for (statement_path, statement, schema) in
            rules_with_schemas(&self.on, path, registry, pin, errors)
        {
            for (index, param) in statement.params.iter().enumerate() {
                if let Err(message) = param.resolve(schema) {
                    errors.push(ConfigError::new(
                        format!("{statement_path}.params[{index}]"),
                        message,
                    ));
                }
            }
        }
    }
}

/// `name` or `schema.name`, each an unquoted SQL identifier.
fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// The highest `$n` in `sql`, skipping quoted text and comments.
fn highest_placeholder(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut highest = 0;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            quote @ (b'\'' | b'"') => {
                index += 1;
                while index < bytes.len() && bytes[index] != quote {
                    index += 1;
                }
            }
            b'-' if bytes.get(index + 1) == Some(&b'-') => {
                while index < bytes.len() && bytes[index] != b'\n' {
                    index += 1;
                }
            }
            b'$' => {
                let digits: String = sql[index + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(number) = digits.parse::<usize>() {
                    highest = highest.max(number);
                }
                index += digits.len();
            }
            _ => {}
        }
        index += 1;
    }
    highest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted_outside_quotes_and_comments() {
        let cases = [
            ("INSERT INTO t VALUES ($1, $2)", 2),
            ("UPDATE t SET a = $2 WHERE id = $1", 2),
            ("SELECT '$9', \"$8\" -- $7\n , $3", 3),
            ("SELECT 1", 0),
            ("SELECT $10", 10),
        ];
        for (sql, expected) in cases {
            assert_eq!(highest_placeholder(sql), expected, "{sql}");
        }
    }

    #[test]
    fn table_names() {
        assert!(is_table_name("jetline_checkpoints"));
        assert!(is_table_name("projections.checkpoints"));
        assert!(!is_table_name("a.b.c"));
        assert!(!is_table_name("drop table x"));
        assert!(!is_table_name("1abc"));
    }
}
