//! Statement parameters and errors: the SQL type of each schema type, the
//! statements of a sink and each event's parameters ([`Plans`], which the
//! sink and `jetline project` share), a found value converted to its type,
//! and the retry class of a PostgreSQL error by its SQLSTATE.

use std::{
    collections::{BTreeSet, HashMap},
    error::Error,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::BytesMut;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::config::{Per, PostgresSinkConfig};
use crate::{
    schema::SchemaRegistry,
    sink::{
        Event, SinkError, schema_for,
        value::{Found, Position, ValueError, ValuePath, ValueType},
    },
};

/// A statement with the types of its parameters.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    /// The type of each parameter's value for one event.
    pub types: Vec<Type>,
    /// The types it is prepared with: `types`, or their arrays for a
    /// statement run per batch.
    pub prepared_types: Vec<Type>,
    pub per: Per,
}

/// How one event type's parameters are taken.
#[derive(Debug, Clone)]
struct Plan {
    statement: usize,
    params: Vec<(ValuePath, ValueType)>,
}

/// A sink's statements, and for each event type its statement and the
/// value paths bound to it, typed from the schemas once.
#[derive(Debug, Clone)]
pub struct Plans {
    statements: Vec<Statement>,
    by_type: HashMap<String, Plan>,
}

impl Plans {
    /// Sink `name`'s statements, typed from the schema of each event type
    /// (the newest version, or `pin`).
    pub fn new(
        name: &str,
        config: &PostgresSinkConfig,
        registry: &SchemaRegistry,
        pin: Option<u32>,
    ) -> Result<Self, SinkError> {
        let mut statements = Vec::new();
        let mut by_type = HashMap::new();
        for (event_type, statement) in &config.on {
            let setup = |message: String| {
                SinkError::Setup(format!("sinks.{name}.on.{event_type}: {message}"))
            };
            let schema = schema_for(registry, event_type, pin).map_err(setup)?;
            let params = statement
                .params
                .iter()
                .map(|path| {
                    path.resolve(schema)
                        .map(|value_type| (path.clone(), value_type))
                        .map_err(setup)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let (types, arrays): (Vec<Type>, Vec<Type>) = params
                .iter()
                .map(|(_, value_type)| sql_types(*value_type))
                .unzip();
            let prepared_types = match statement.per {
                Per::Event => types.clone(),
                Per::Batch => arrays,
            };
            statements.push(Statement {
                sql: statement.sql.clone(),
                types,
                prepared_types,
                per: statement.per,
            });
            by_type.insert(
                event_type.clone(),
                Plan {
                    statement: statements.len() - 1,
                    params,
                },
            );
        }
        Ok(Self {
            statements,
            by_type,
        })
    }

    pub fn statements(&self) -> &[Statement] {
        &self.statements
    }

    /// The top-level payload fields the statements' parameters read.
    pub fn payload_fields(&self) -> BTreeSet<String> {
        self.by_type
            .values()
            .flat_map(|plan| &plan.params)
            .filter_map(|(path, _)| path.payload_field())
            .map(str::to_owned)
            .collect()
    }

    /// The index of the event's statement and its parameters; `None` when
    /// the sink has no statement for the event's type (it is skipped).
    pub fn bind(&self, event: &Event) -> Result<Option<(usize, Vec<SqlValue>)>, SinkError> {
        let Some(plan) = self.by_type.get(&event.envelope.event_type) else {
            return Ok(None);
        };
        let position = Position::of(event);
        let params = plan
            .params
            .iter()
            .map(|(path, value_type)| {
                let found = path.lookup(&event.envelope, position)?;
                SqlValue::convert(&found, *value_type).map_err(|problem| ValueError {
                    path: path.to_string(),
                    problem,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((plan.statement, params)))
    }
}

/// The parameter type a statement is prepared with for a schema type, and
/// its array type for a statement run per batch.
pub fn sql_types(value_type: ValueType) -> (Type, Type) {
    match value_type {
        ValueType::Bool => (Type::BOOL, Type::BOOL_ARRAY),
        ValueType::Int32 => (Type::INT4, Type::INT4_ARRAY),
        // PostgreSQL has no unsigned integers: both go to int8 (a uint64
        // above i64::MAX is a data error for that event).
        ValueType::Int64 | ValueType::UInt32 | ValueType::UInt64 => (Type::INT8, Type::INT8_ARRAY),
        ValueType::Float => (Type::FLOAT4, Type::FLOAT4_ARRAY),
        ValueType::Double => (Type::FLOAT8, Type::FLOAT8_ARRAY),
        ValueType::Text | ValueType::Enum => (Type::TEXT, Type::TEXT_ARRAY),
        ValueType::Bytes => (Type::BYTEA, Type::BYTEA_ARRAY),
        ValueType::Timestamp => (Type::TIMESTAMPTZ, Type::TIMESTAMPTZ_ARRAY),
        ValueType::Json => (Type::JSONB, Type::JSONB_ARRAY),
    }
}

/// One bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int4(i32),
    Int8(i64),
    Float4(f32),
    Float8(f64),
    Text(String),
    Bytes(Vec<u8>),
    Timestamp(SystemTime),
    Json(serde_json::Value),
}

impl SqlValue {
    /// `found` as a parameter of the type `target` was prepared with, or why
    /// it cannot be one (the event's version differs from the one checked).
    pub fn convert(found: &Found<'_>, target: ValueType) -> Result<Self, String> {
        use prost_reflect::Value;
        if matches!(found, Found::Absent) {
            return Ok(SqlValue::Null);
        }
        let field = match found {
            Found::Field(value, _) => Some(value.as_ref()),
            Found::Absent | Found::Text(_) | Found::Int(_) | Found::Timestamp(_) => None,
        };
        let converted = match (target, field) {
            (ValueType::Bool, Some(Value::Bool(v))) => Some(SqlValue::Bool(*v)),
            (ValueType::Int32, Some(Value::I32(v))) => Some(SqlValue::Int4(*v)),
            (ValueType::Int64 | ValueType::UInt32 | ValueType::UInt64, _) => {
                let wide = match (found, field) {
                    (Found::Int(v), _) => Some(*v),
                    (_, Some(Value::I64(v))) => Some(*v),
                    (_, Some(Value::I32(v))) => Some(i64::from(*v)),
                    (_, Some(Value::U32(v))) => Some(i64::from(*v)),
                    (_, Some(Value::U64(v))) => {
                        Some(i64::try_from(*v).map_err(|_| format!("{v} does not fit int8"))?)
                    }
                    _ => None,
                };
                wide.map(SqlValue::Int8)
            }
            (ValueType::Float, Some(Value::F32(v))) => Some(SqlValue::Float4(*v)),
            (ValueType::Double, Some(Value::F64(v))) => Some(SqlValue::Float8(*v)),
            (ValueType::Double, Some(Value::F32(v))) => Some(SqlValue::Float8(f64::from(*v))),
            (ValueType::Text, Some(Value::String(v))) => Some(SqlValue::Text(v.clone())),
            (ValueType::Text, None) => match found {
                Found::Text(text) => Some(SqlValue::Text(text.to_string())),
                _ => None,
            },
            (ValueType::Bytes, Some(Value::Bytes(v))) => Some(SqlValue::Bytes(v.to_vec())),
            (ValueType::Enum, Some(Value::EnumNumber(_))) => {
                match found.to_json().map_err(|error| error.0)? {
                    serde_json::Value::String(name) => Some(SqlValue::Text(name)),
                    number => Some(SqlValue::Text(number.to_string())),
                }
            }
            (ValueType::Timestamp, _) => match found.timestamp() {
                Some(timestamp) => Some(SqlValue::Timestamp(system_time(&timestamp)?)),
                None => None,
            },
            (ValueType::Json, Some(_)) => {
                Some(SqlValue::Json(found.to_json().map_err(|error| error.0)?))
            }
            _ => None,
        };
        converted.ok_or_else(|| {
            let found = found.to_json().unwrap_or(serde_json::Value::Null);
            format!("expected {target:?}, found {found}")
        })
    }
}

fn system_time(timestamp: &prost_types::Timestamp) -> Result<SystemTime, String> {
    let out_of_range = || format!("timestamp {timestamp} is out of range");
    let nanos = u64::try_from(timestamp.nanos).map_err(|_| out_of_range())?;
    let seconds = Duration::from_secs(timestamp.seconds.unsigned_abs());
    let whole = if timestamp.seconds >= 0 {
        UNIX_EPOCH.checked_add(seconds)
    } else {
        UNIX_EPOCH.checked_sub(seconds)
    };
    whole
        .and_then(|time| time.checked_add(Duration::from_nanos(nanos)))
        .ok_or_else(out_of_range)
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(v) => v.to_sql(ty, out),
            SqlValue::Int4(v) => v.to_sql(ty, out),
            SqlValue::Int8(v) => v.to_sql(ty, out),
            SqlValue::Float4(v) => v.to_sql(ty, out),
            SqlValue::Float8(v) => v.to_sql(ty, out),
            SqlValue::Text(v) => v.to_sql(ty, out),
            SqlValue::Bytes(v) => v.to_sql(ty, out),
            SqlValue::Timestamp(v) => v.to_sql(ty, out),
            SqlValue::Json(v) => v.to_sql(ty, out),
        }
    }

    // Statements are prepared with the types of `sql_types`, and `convert`
    // produced the matching variant.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Whether a statement error may pass if the batch is tried again:
/// connection loss, serialization failure, deadlock, lock timeout, resource
/// exhaustion, server shutdown. Everything else (constraint, data, syntax,
/// undefined object, permissions) rejects the event.
pub fn is_transient(code: &str) -> bool {
    let class = code.get(..2).unwrap_or_default();
    matches!(class, "08" | "40" | "53" | "57" | "58" | "XX")
        || matches!(code, "55P03" | "55006" | "25P02")
}

/// A PostgreSQL error as a [`SinkError`]: errors without a SQLSTATE are the
/// connection's.
pub fn sink_error(error: &tokio_postgres::Error) -> SinkError {
    let message = match error.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => error.to_string(),
    };
    match error.code() {
        None => SinkError::Connection(message),
        Some(state) if is_transient(state.code()) => SinkError::Database {
            code: state.code().to_owned(),
            message,
        },
        Some(state) => SinkError::StatementRejected {
            code: state.code().to_owned(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    #[test]
    fn sqlstates_classify() {
        let cases = [
            ("23505", false), // unique violation
            ("23514", false), // check violation
            ("22P02", false), // invalid text representation
            ("42P01", false), // undefined table
            ("42601", false), // syntax error
            ("40001", true),  // serialization failure
            ("40P01", true),  // deadlock
            ("08006", true),  // connection failure
            ("57P01", true),  // admin shutdown
            ("53300", true),  // too many connections
            ("55P03", true),  // lock not available
        ];
        for (code, transient) in cases {
            assert_eq!(is_transient(code), transient, "{code}");
        }
    }

    #[test]
    fn found_values_convert_to_their_prepared_type() {
        use prost_reflect::Value;
        let registry = crate::envelope::tests::example_decoder().registry().clone();
        let created = registry.resolve("orders.OrderCreated", 3).expect("v3");
        let field = |name: &str| created.get_field_by_name(name).expect("field");
        let cents = Found::Field(Cow::Owned(Value::I64(1250)), field("total_amount_cents"));
        let text = Found::Text(Cow::Borrowed("o-1"));
        let cases: Vec<(Found<'_>, ValueType, Option<SqlValue>)> = vec![
            (cents.clone(), ValueType::Int64, Some(SqlValue::Int8(1250))),
            (cents, ValueType::Text, None),
            (
                text.clone(),
                ValueType::Text,
                Some(SqlValue::Text("o-1".into())),
            ),
            (text, ValueType::Int64, None),
            (Found::Int(7), ValueType::Int64, Some(SqlValue::Int8(7))),
            (Found::Absent, ValueType::Timestamp, Some(SqlValue::Null)),
            (
                Found::Timestamp(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 5,
                }),
                ValueType::Timestamp,
                Some(SqlValue::Timestamp(UNIX_EPOCH + Duration::new(1, 5))),
            ),
            (
                Found::Field(
                    Cow::Owned(Value::U64(u64::MAX)),
                    field("total_amount_cents"),
                ),
                ValueType::UInt64,
                None,
            ),
        ];
        for (found, target, expected) in cases {
            assert_eq!(
                SqlValue::convert(&found, target).ok(),
                expected,
                "{found:?} as {target:?}"
            );
        }
    }
}
