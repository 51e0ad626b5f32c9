//! The YAML step kinds: their configuration (serde types, every struct denying
//! unknown keys) and their run-time form, each an [`Upcaster`].
//!
//! Paths and values are resolved against the schemas once, at start-up
//! (`check.rs`); at run time a step only walks the [`Record`].
//!
//! **Invariant:** a step changes only the field it names, and fails with the
//! field and the offending value rather than guess: a rename never overwrites,
//! a conversion never wraps, truncates or leaves a non-finite number.

use std::{collections::BTreeMap, collections::HashMap, fmt, str::FromStr as _, sync::Arc};

use prost_reflect::{EnumDescriptor, Value};
use rust_decimal::{
    Decimal, RoundingStrategy,
    prelude::{FromPrimitive as _, ToPrimitive as _},
};
use serde::Deserialize;

use super::{Field, Problem, Record, Segment, StepError, Upcaster, record::value_type_name};

/// One hop of a chain: `upcasters.<event type>[i]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HopConfig {
    /// The version the hop starts from.
    pub from: u32,
    /// The version it produces (newer than `from`).
    pub to: u32,
    /// Applied in order to the payload; then the result must fit version `to`.
    #[serde(default)]
    pub steps: Vec<StepConfig>,
}

/// One step, written as a one-key mapping: `- rename: { from: a, to: b }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepConfig {
    /// Moves a field (dotted paths reach into nested messages).
    Rename(MoveConfig),
    /// Copies a field, keeping the original.
    Copy(MoveConfig),
    /// Sets a field whatever it held.
    Set(SetConfig),
    /// Sets a field only when it is absent.
    SetDefault(SetConfig),
    /// Removes a field.
    Remove(RemoveConfig),
    /// Converts between numeric types and strings, optionally scaled.
    Convert(ConvertConfig),
    /// Maps enum or string values to others.
    MapValues(MapValuesConfig),
    /// A step written in Rust and registered by name by the program.
    Code(String),
}

impl StepConfig {
    /// The step's kind, as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            StepConfig::Rename(_) => "rename",
            StepConfig::Copy(_) => "copy",
            StepConfig::Set(_) => "set",
            StepConfig::SetDefault(_) => "set_default",
            StepConfig::Remove(_) => "remove",
            StepConfig::Convert(_) => "convert",
            StepConfig::MapValues(_) => "map_values",
            StepConfig::Code(_) => "code",
        }
    }

    /// The top-level payload fields the step may read, write or remove (the
    /// first name of each path it names); `None` for a code step, which may
    /// look at any field.
    pub fn top_level_fields(&self) -> Option<Vec<&str>> {
        let paths: Vec<&str> = match self {
            StepConfig::Rename(step) | StepConfig::Copy(step) => vec![&step.from, &step.to],
            StepConfig::Set(step) | StepConfig::SetDefault(step) => vec![&step.field],
            StepConfig::Remove(step) => vec![&step.field],
            // `rename_to` names a field beside `field`, in the same message.
            StepConfig::Convert(step) if !step.field.contains('.') => {
                let mut paths = vec![step.field.as_str()];
                paths.extend(step.rename_to.as_deref());
                paths
            }
            StepConfig::Convert(step) => vec![&step.field],
            StepConfig::MapValues(step) => vec![&step.field],
            StepConfig::Code(_) => return None,
        };
        Some(
            paths
                .into_iter()
                .map(|path| path.split('.').next().unwrap_or(path))
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveConfig {
    /// Dotted path of the field to read, in the payload as it stands.
    pub from: String,
    /// Dotted path to write, a field of the source or target schema; it must
    /// not hold a value already.
    pub to: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Dotted path of the field, in the target (or source) schema.
    pub field: String,
    /// The value, as in the proto3 JSON mapping (enum values by name).
    pub value: serde_json::Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveConfig {
    pub field: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertConfig {
    /// Dotted path of a number or string field (repeated: each element).
    pub field: String,
    /// The type produced.
    pub to: ScalarType,
    /// Scale factor, applied in decimal arithmetic (`100`, `0.01`).
    pub multiply: Option<serde_json::Number>,
    /// How a fractional result becomes an integer (integer targets only;
    /// default `half_away_from_zero`).
    pub round: Option<Rounding>,
    /// Name of the field that receives the result, in the same message (the
    /// original is removed).
    pub rename_to: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapValuesConfig {
    /// Dotted path of an enum or string field (repeated: each element).
    pub field: String,
    /// Old value -> new value (enum values by name).
    pub values: BTreeMap<String, String>,
    /// A value not in `values`: `keep` it (default) or `fail`.
    #[serde(default)]
    pub unmapped: Unmapped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScalarType {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    String,
}

impl ScalarType {
    pub fn name(self) -> &'static str {
        match self {
            ScalarType::Double => "double",
            ScalarType::Float => "float",
            ScalarType::Int32 => "int32",
            ScalarType::Int64 => "int64",
            ScalarType::Uint32 => "uint32",
            ScalarType::Uint64 => "uint64",
            ScalarType::String => "string",
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            ScalarType::Int32 | ScalarType::Int64 | ScalarType::Uint32 | ScalarType::Uint64
        )
    }
}

/// How `convert` turns a fractional value into an integer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// To the nearest integer, halves away from zero: 2.5 -> 3, -2.5 -> -3.
    #[default]
    HalfAwayFromZero,
    /// To the nearest integer, halves to the even one: 2.5 -> 2, 3.5 -> 4.
    HalfEven,
    /// Drops the fraction: 2.7 -> 2, -2.7 -> -2.
    TowardZero,
    /// Down: 2.7 -> 2, -2.2 -> -3.
    Floor,
    /// Up: 2.2 -> 3, -2.7 -> -2.
    Ceiling,
    /// No rounding: a fractional value fails the step.
    Exact,
}

impl Rounding {
    pub fn name(self) -> &'static str {
        match self {
            Rounding::HalfAwayFromZero => "half_away_from_zero",
            Rounding::HalfEven => "half_even",
            Rounding::TowardZero => "toward_zero",
            Rounding::Floor => "floor",
            Rounding::Ceiling => "ceiling",
            Rounding::Exact => "exact",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    #[default]
    Keep,
    Fail,
}

/// Splits a resolved path into its parents and the field's own name (paths
/// are never empty: the start-up checks build them).
fn split(path: &[Segment]) -> (&[Segment], &Arc<str>) {
    static NONE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    match path.split_last() {
        Some((last, parents)) => (parents, &last.name),
        None => (&[], &NONE),
    }
}

/// `rename` and `copy`: `common` is the prefix both paths share (it may cross
/// repeated fields: the move happens inside each element); `from` and `to`
/// are relative to it and singular.
pub struct Move {
    pub keep_source: bool,
    pub common: Vec<Segment>,
    pub from: Vec<Segment>,
    pub to: Vec<Segment>,
    pub from_text: String,
    pub to_text: String,
}

impl Upcaster for Move {
    fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
        let (from_parents, from_name) = split(&self.from);
        let (to_parents, to_name) = split(&self.to);
        let mut writing = false;
        let result = payload.for_each_at(&self.common, false, &mut |record| {
            writing = false;
            let mut moved = None;
            record.for_each_at(from_parents, false, &mut |parent| {
                moved = if self.keep_source {
                    parent.field(from_name).cloned()
                } else {
                    parent.take(from_name)
                };
                Ok(())
            })?;
            // An absent field (or a proto3 zero value) moves nothing.
            let Some(field) = moved else {
                return Ok(());
            };
            writing = true;
            let mut field = Some(field);
            record.for_each_at(to_parents, true, &mut |parent| {
                if parent.contains(to_name) {
                    return Err(Problem::Occupied);
                }
                if let Some(field) = field.take() {
                    parent.insert_named(to_name, field);
                }
                Ok(())
            })
        });
        result.map_err(|problem| {
            let field = if writing {
                &self.to_text
            } else {
                &self.from_text
            };
            StepError::new(field.clone(), problem)
        })
    }

    fn describe(&self) -> String {
        let verb = if self.keep_source { "copy" } else { "rename" };
        format!("{verb} {} -> {}", self.from_text, self.to_text)
    }
}

/// `set` (always) and `set_default` (only when absent).
pub struct Set {
    pub only_when_absent: bool,
    pub path: Vec<Segment>,
    pub value: Field,
    pub text: String,
    /// The value as written, for `check`.
    pub shown: String,
}

impl Upcaster for Set {
    fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
        let (parents, name) = split(&self.path);
        payload
            .for_each_at(parents, true, &mut |record| {
                if !(self.only_when_absent && record.contains(name)) {
                    record.insert_named(name, self.value.clone());
                }
                Ok(())
            })
            .map_err(|problem| StepError::new(self.text.clone(), problem))
    }

    fn describe(&self) -> String {
        if self.only_when_absent {
            format!("set_default {} = {} (when absent)", self.text, self.shown)
        } else {
            format!("set {} = {}", self.text, self.shown)
        }
    }
}

pub struct Remove {
    pub path: Vec<Segment>,
    pub text: String,
}

impl Upcaster for Remove {
    fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
        let (parents, name) = split(&self.path);
        payload
            .for_each_at(parents, false, &mut |record| {
                record.take(name);
                Ok(())
            })
            .map_err(|problem| StepError::new(self.text.clone(), problem))
    }

    fn describe(&self) -> String {
        format!("remove {}", self.text)
    }
}

/// The arithmetic of one `convert`, apart from where it applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    pub to: ScalarType,
    pub multiply: Option<Decimal>,
    pub round: Rounding,
}

pub struct Convert {
    pub path: Vec<Segment>,
    pub rename_to: Option<Arc<str>>,
    pub conversion: Conversion,
    pub text: String,
}

impl Upcaster for Convert {
    fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
        let (parents, name) = split(&self.path);
        let mut writing = false;
        payload
            .for_each_at(parents, false, &mut |record| {
                writing = false;
                let Some(field) = record.field(name) else {
                    return Ok(());
                };
                let converted = match field.value() {
                    Some(Value::List(items)) => Value::List(
                        items
                            .iter()
                            .map(|item| self.conversion.apply(item))
                            .collect::<Result<_, _>>()?,
                    ),
                    Some(value) => self.conversion.apply(value)?,
                    None => {
                        return Err(Problem::TypeMismatch {
                            expected: "a number or a string".into(),
                            found: "message".into(),
                        });
                    }
                };
                writing = true;
                let destination = match &self.rename_to {
                    Some(rename_to) => {
                        if record.contains(rename_to) {
                            return Err(Problem::Occupied);
                        }
                        record.take(name);
                        rename_to
                    }
                    None => name,
                };
                record.insert_named(destination, Field::new(converted));
                Ok(())
            })
            .map_err(|problem| {
                let field = match (&self.rename_to, writing) {
                    (Some(rename_to), true) => {
                        let (parents, _) = self.text.rsplit_once('.').unwrap_or_default();
                        if parents.is_empty() {
                            rename_to.to_string()
                        } else {
                            format!("{parents}.{rename_to}")
                        }
                    }
                    _ => self.text.clone(),
                };
                StepError::new(field, problem)
            })
    }

    fn describe(&self) -> String {
        let conversion = &self.conversion;
        let mut details = Vec::new();
        if let Some(factor) = conversion.multiply {
            details.push(format!("x{factor}"));
        }
        if conversion.to.is_integer() {
            details.push(format!("round {}", conversion.round.name()));
        }
        let mut line = format!("convert {} to {}", self.text, conversion.to.name());
        if !details.is_empty() {
            line.push_str(&format!(" ({})", details.join(", ")));
        }
        if let Some(rename_to) = &self.rename_to {
            line.push_str(&format!(" as {rename_to}"));
        }
        line
    }
}

/// A number as read from a field, before it is converted.
enum Number<'a> {
    Integer(i128),
    Double(f64),
    Text(&'a str),
}

impl Conversion {
    /// Converts one value. Integers and doubles convert directly where no
    /// scale or rounding is involved; otherwise the value is read as a decimal
    /// (a double by its shortest representation: 1.005 is 1.005, not
    /// 1.00499...), multiplied exactly, then rounded.
    pub fn apply(&self, value: &Value) -> Result<Value, Problem> {
        let number = match value {
            Value::I32(v) => Number::Integer(i128::from(*v)),
            Value::I64(v) => Number::Integer(i128::from(*v)),
            Value::U32(v) => Number::Integer(i128::from(*v)),
            Value::U64(v) => Number::Integer(i128::from(*v)),
            Value::F32(v) => Number::Double(f64::from(*v)),
            Value::F64(v) => Number::Double(*v),
            Value::String(text) => Number::Text(text),
            other => {
                return Err(Problem::TypeMismatch {
                    expected: "a number or a string".into(),
                    found: value_type_name(other).into(),
                });
            }
        };
        if self.multiply.is_none() {
            match (&number, self.to) {
                (Number::Integer(integer), to) if to.is_integer() => {
                    return integer_value(*integer, to);
                }
                (Number::Integer(integer), ScalarType::String) => {
                    return Ok(Value::String(integer.to_string()));
                }
                (Number::Integer(integer), ScalarType::Double | ScalarType::Float) => {
                    return exact_float(*integer, self.to);
                }
                (Number::Double(double), ScalarType::Double | ScalarType::Float) => {
                    return float_value(*double, self.to);
                }
                (Number::Double(double), ScalarType::String) if double.is_finite() => {
                    return Ok(Value::String(double.to_string()));
                }
                (Number::Text(text), ScalarType::String) => {
                    return Ok(Value::String((*text).to_owned()));
                }
                (Number::Text(text), ScalarType::Double | ScalarType::Float) => {
                    let double = text
                        .parse::<f64>()
                        .ok()
                        .filter(|double| double.is_finite())
                        .ok_or_else(|| Problem::NotANumber {
                            value: (*text).to_owned(),
                        })?;
                    return float_value(double, self.to);
                }
                _ => {}
            }
        }
        let mut decimal = match number {
            Number::Integer(integer) => Decimal::try_from_i128_with_scale(integer, 0)
                .map_err(|_| out_of_range(&integer.to_string(), "decimal"))?,
            Number::Double(double) => decimal_of_double(double)?,
            Number::Text(text) => parse_decimal(text).ok_or_else(|| Problem::NotANumber {
                value: text.to_owned(),
            })?,
        };
        if let Some(factor) = self.multiply {
            decimal = decimal
                .checked_mul(factor)
                .ok_or_else(|| out_of_range(&format!("{decimal} x {factor}"), "decimal"))?;
        }
        match self.to {
            ScalarType::String => Ok(Value::String(decimal.normalize().to_string())),
            ScalarType::Double => decimal
                .to_f64()
                .map(Value::F64)
                .ok_or_else(|| out_of_range(&decimal.to_string(), "double")),
            ScalarType::Float => decimal
                .to_f32()
                .filter(|float| float.is_finite())
                .map(Value::F32)
                .ok_or_else(|| out_of_range(&decimal.to_string(), "float")),
            to => {
                let rounded = round(decimal, self.round)?;
                let integer = rounded
                    .to_i128()
                    .ok_or_else(|| out_of_range(&rounded.to_string(), to.name()))?;
                integer_value(integer, to)
            }
        }
    }
}

fn out_of_range(value: &str, to: &str) -> Problem {
    Problem::OutOfRange {
        value: value.to_owned(),
        to: to.to_owned(),
    }
}

fn round(decimal: Decimal, rounding: Rounding) -> Result<Decimal, Problem> {
    let strategy = match rounding {
        Rounding::HalfAwayFromZero => RoundingStrategy::MidpointAwayFromZero,
        Rounding::HalfEven => RoundingStrategy::MidpointNearestEven,
        Rounding::TowardZero => RoundingStrategy::ToZero,
        Rounding::Floor => RoundingStrategy::ToNegativeInfinity,
        Rounding::Ceiling => RoundingStrategy::ToPositiveInfinity,
        Rounding::Exact => {
            return if decimal.fract().is_zero() {
                Ok(decimal)
            } else {
                Err(Problem::Inexact {
                    value: decimal.normalize().to_string(),
                })
            };
        }
    };
    Ok(decimal.round_dp_with_strategy(0, strategy))
}

fn integer_value(integer: i128, to: ScalarType) -> Result<Value, Problem> {
    let out = || out_of_range(&integer.to_string(), to.name());
    match to {
        ScalarType::Int32 => i32::try_from(integer).map(Value::I32).map_err(|_| out()),
        ScalarType::Int64 => i64::try_from(integer).map(Value::I64).map_err(|_| out()),
        ScalarType::Uint32 => u32::try_from(integer).map(Value::U32).map_err(|_| out()),
        ScalarType::Uint64 => u64::try_from(integer).map(Value::U64).map_err(|_| out()),
        ScalarType::Double | ScalarType::Float | ScalarType::String => Err(out()),
    }
}

/// An integer as a float, only when the float holds it exactly.
fn exact_float(integer: i128, to: ScalarType) -> Result<Value, Problem> {
    let out = || out_of_range(&integer.to_string(), to.name());
    match to {
        ScalarType::Double => {
            let double = integer as f64;
            (double as i128 == integer)
                .then_some(Value::F64(double))
                .ok_or_else(out)
        }
        _ => {
            let float = integer as f32;
            (float as i128 == integer)
                .then_some(Value::F32(float))
                .ok_or_else(out)
        }
    }
}

fn float_value(double: f64, to: ScalarType) -> Result<Value, Problem> {
    if !double.is_finite() {
        return Err(Problem::NotANumber {
            value: double.to_string(),
        });
    }
    match to {
        ScalarType::Float => {
            let float = double as f32;
            float
                .is_finite()
                .then_some(Value::F32(float))
                .ok_or_else(|| out_of_range(&double.to_string(), "float"))
        }
        _ => Ok(Value::F64(double)),
    }
}

/// A finite double as the decimal of its shortest representation (at most 28
/// decimal places).
fn decimal_of_double(double: f64) -> Result<Decimal, Problem> {
    if !double.is_finite() {
        return Err(Problem::NotANumber {
            value: double.to_string(),
        });
    }
    // The shortest digits that read back as the same double, as `{:e}`
    // prints them, written without the formatting machinery; normalized to
    // the scale those digits have (`1.5e1` is 15, not 15.0).
    let mut buffer = ryu::Buffer::new();
    let text = buffer.format_finite(double);
    parse_decimal(text)
        .map(|decimal| decimal.normalize())
        // More than 28 decimal places (below about 1e-13): rounded to 28.
        .or_else(|| {
            (double.abs() < 1.0)
                .then(|| Decimal::from_f64(double))
                .flatten()
        })
        .ok_or_else(|| out_of_range(text, "decimal"))
}

/// A decimal from text: `12.50`, `-3`, `1.5e3`. No spaces, no `inf`/`NaN`.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str_exact(text)
            .or_else(|_| Decimal::from_str(text))
            .ok()
    }
}

pub struct MapValues {
    pub path: Vec<Segment>,
    pub table: HashMap<String, Value>,
    /// The enum of the field's values after the step (`None`: strings).
    pub target_enum: Option<EnumDescriptor>,
    pub unmapped: Unmapped,
    pub text: String,
}

impl MapValues {
    fn map(&self, value: &Value, source_enum: Option<&EnumDescriptor>) -> Result<Value, Problem> {
        // A string is its own name; an enum number goes by its source name.
        let name = match value {
            Value::String(text) => Some(text.clone()),
            Value::EnumNumber(number) => source_enum
                .and_then(|enum_type| enum_type.get_value(*number))
                .map(|named| named.name().to_owned()),
            other => {
                return Err(Problem::TypeMismatch {
                    expected: "an enum or a string".into(),
                    found: value_type_name(other).into(),
                });
            }
        };
        if let Some(mapped) = name.as_deref().and_then(|name| self.table.get(name)) {
            return Ok(mapped.clone());
        }
        let shown = match (&name, value) {
            (Some(name), _) => name.clone(),
            (None, Value::EnumNumber(number)) => number.to_string(),
            (None, _) => String::new(),
        };
        if self.unmapped == Unmapped::Fail {
            return Err(Problem::Unmapped { value: shown });
        }
        // Kept as it is, in the field's type after the step.
        let by_name = |target: &EnumDescriptor, name: &str| {
            target
                .get_value_by_name(name)
                .map(|value| Value::EnumNumber(value.number()))
                .ok_or_else(|| Problem::NoSuchEnumValue {
                    value: name.to_owned(),
                    enum_type: target.full_name().to_owned(),
                })
        };
        match (value, &self.target_enum, name) {
            (Value::EnumNumber(_), Some(target), Some(name)) => by_name(target, &name),
            // An open enum's unnamed number stays what it is.
            (Value::EnumNumber(number), Some(_), None) => Ok(Value::EnumNumber(*number)),
            (Value::EnumNumber(_), None, Some(name)) => Ok(Value::String(name)),
            (Value::EnumNumber(_), None, None) => Err(Problem::Unmapped { value: shown }),
            (Value::String(text), Some(target), _) => by_name(target, text),
            (value, _, _) => Ok(value.clone()),
        }
    }
}

impl Upcaster for MapValues {
    fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
        let (parents, name) = split(&self.path);
        payload
            .for_each_at(parents, false, &mut |record| {
                let Some(field) = record.field_mut(name) else {
                    return Ok(());
                };
                let source_enum = field.enum_type().cloned();
                let mapped = match field.value() {
                    Some(Value::List(items)) => Value::List(
                        items
                            .iter()
                            .map(|item| self.map(item, source_enum.as_ref()))
                            .collect::<Result<_, _>>()?,
                    ),
                    Some(value) => self.map(value, source_enum.as_ref())?,
                    None => {
                        return Err(Problem::TypeMismatch {
                            expected: "an enum or a string".into(),
                            found: "message".into(),
                        });
                    }
                };
                *field = Field::with_enum(mapped, self.target_enum.clone());
                Ok(())
            })
            .map_err(|problem| StepError::new(self.text.clone(), problem))
    }

    fn describe(&self) -> String {
        let mut pairs: Vec<String> = self
            .table
            .iter()
            .map(|(from, to)| match to {
                Value::EnumNumber(number) => {
                    let name = self
                        .target_enum
                        .as_ref()
                        .and_then(|enum_type| enum_type.get_value(*number))
                        .map(|value| value.name().to_owned())
                        .unwrap_or_else(|| number.to_string());
                    format!("{from} -> {name}")
                }
                Value::String(text) => format!("{from} -> {text}"),
                other => format!("{from} -> {other:?}"),
            })
            .collect();
        pairs.sort();
        let unmapped = match self.unmapped {
            Unmapped::Keep => "others kept",
            Unmapped::Fail => "others fail",
        };
        format!(
            "map_values {} ({}; {unmapped})",
            self.text,
            pairs.join(", ")
        )
    }
}

/// A code step, under the name the configuration gives it.
pub struct Code {
    pub name: String,
    pub step: std::sync::Arc<dyn Upcaster>,
}

impl Upcaster for Code {
    fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
        self.step.apply(payload)
    }

    fn describe(&self) -> String {
        format!("code {}: {}", self.name, self.step.describe())
    }

    fn effects(&self) -> Vec<super::Effect> {
        self.step.effects()
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use proptest::strategy::Strategy as _;
    use prost_reflect::{DynamicMessage, ReflectMessage as _};
    use serde_json::json;

    use super::*;
    use crate::upcast::Segment;

    proptest::proptest! {
        /// The decimal of a double is the one its `{:e}` digits spell, to
        /// the scale and sign.
        #[test]
        fn a_double_reads_as_the_decimal_of_its_shortest_digits(
            double in proptest::prop_oneof![
                proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO,
                -1e6..1e6f64,
                proptest::strategy::Just(-0.0),
                (-1_000_000i64..1_000_000).prop_map(|cents| cents as f64 / 100.0),
            ],
        ) {
            let spelled = format!("{double:e}");
            let expected = Decimal::from_scientific(&spelled).ok().or_else(|| {
                (double.abs() < 1.0).then(|| Decimal::from_f64(double)).flatten()
            });
            let read = decimal_of_double(double).ok();
            proptest::prop_assert_eq!(read.map(|d| d.serialize()), expected.map(|d| d.serialize()), "{}", spelled);
        }
    }

    fn conversion(to: ScalarType, multiply: Option<&str>, round: Rounding) -> Conversion {
        Conversion {
            to,
            multiply: multiply.and_then(parse_decimal),
            round,
        }
    }

    #[test]
    fn conversions_scale_in_decimal_and_round_as_stated() {
        use Rounding::*;
        use ScalarType::*;
        let ok = |value: Value| -> Result<Value, &'static str> { Ok(value) };
        type Case = (
            Value,
            ScalarType,
            Option<&'static str>,
            Rounding,
            Result<Value, &'static str>,
        );
        let cases: Vec<Case> = vec![
            // 1.005 is 1.00499999999999989... in binary; read as its shortest form.
            (
                Value::F64(1.005),
                Int64,
                Some("100"),
                HalfAwayFromZero,
                ok(Value::I64(101)),
            ),
            (
                Value::F64(19.99),
                Int64,
                Some("100"),
                Exact,
                ok(Value::I64(1999)),
            ),
            (
                Value::F64(0.125),
                Int64,
                Some("100"),
                HalfAwayFromZero,
                ok(Value::I64(13)),
            ),
            (
                Value::F64(0.125),
                Int64,
                Some("100"),
                HalfEven,
                ok(Value::I64(12)),
            ),
            (
                Value::F64(-2.5),
                Int32,
                None,
                HalfAwayFromZero,
                ok(Value::I32(-3)),
            ),
            (Value::F64(-2.5), Int32, None, HalfEven, ok(Value::I32(-2))),
            (
                Value::F64(-2.7),
                Int32,
                None,
                TowardZero,
                ok(Value::I32(-2)),
            ),
            (Value::F64(-2.2), Int32, None, Floor, ok(Value::I32(-3))),
            (Value::F64(2.2), Int32, None, Ceiling, ok(Value::I32(3))),
            (Value::F64(2.5), Int32, None, Exact, Err("inexact")),
            (
                Value::F64(1234.0),
                Double,
                Some("0.01"),
                HalfAwayFromZero,
                ok(Value::F64(12.34)),
            ),
            (
                Value::String("12.50".into()),
                Int64,
                Some("100"),
                Exact,
                ok(Value::I64(1250)),
            ),
            (
                Value::String("1.5e3".into()),
                Uint32,
                None,
                Exact,
                ok(Value::U32(1500)),
            ),
            (
                Value::String("12.5".into()),
                Double,
                None,
                Exact,
                ok(Value::F64(12.5)),
            ),
            (
                Value::String(" 12".into()),
                Int64,
                None,
                Exact,
                Err("not a number"),
            ),
            (
                Value::String("lots".into()),
                Int64,
                None,
                Exact,
                Err("not a number"),
            ),
            (
                Value::String("NaN".into()),
                Double,
                None,
                Exact,
                Err("not a number"),
            ),
            (
                Value::F64(f64::NAN),
                Int64,
                None,
                Exact,
                Err("not a number"),
            ),
            (
                Value::F64(f64::INFINITY),
                Double,
                Some("2"),
                Exact,
                Err("not a number"),
            ),
            (
                Value::F64(1e300),
                Int64,
                Some("100"),
                Exact,
                Err("out of range"),
            ),
            (Value::F64(1e300), Float, None, Exact, Err("out of range")),
            (
                Value::F64(-1.527e-24),
                Int64,
                Some("100"),
                HalfAwayFromZero,
                ok(Value::I64(0)),
            ),
            (
                Value::I64(i64::from(i32::MAX) + 1),
                Int32,
                None,
                Exact,
                Err("out of range"),
            ),
            (Value::I64(-1), Uint64, None, Exact, Err("out of range")),
            (
                Value::U64(u64::MAX),
                Double,
                None,
                Exact,
                Err("out of range"),
            ),
            (
                Value::I64(1 << 40),
                Double,
                None,
                Exact,
                ok(Value::F64((1u64 << 40) as f64)),
            ),
            (
                Value::I64(i64::MAX),
                Int64,
                Some("100"),
                Exact,
                Err("out of range"),
            ),
            (
                Value::I32(42),
                String,
                None,
                Exact,
                ok(Value::String("42".into())),
            ),
            (
                Value::I32(42),
                String,
                Some("0.5"),
                Exact,
                ok(Value::String("21".into())),
            ),
            (
                Value::F64(12.5),
                String,
                None,
                Exact,
                ok(Value::String("12.5".into())),
            ),
            (Value::F32(0.5), Double, None, Exact, ok(Value::F64(0.5))),
            (Value::Bool(true), Int32, None, Exact, Err("type")),
        ];
        for (input, to, multiply, round, expected) in cases {
            let described = format!("{input:?} to {} x{multiply:?} {}", to.name(), round.name());
            let result = conversion(to, multiply, round).apply(&input);
            match (result, expected) {
                (Ok(value), Ok(wanted)) => assert_eq!(value, wanted, "{described}"),
                (Err(problem), Err(kind)) => {
                    let matches_kind = match kind {
                        "inexact" => matches!(problem, Problem::Inexact { .. }),
                        "not a number" => matches!(problem, Problem::NotANumber { .. }),
                        "out of range" => matches!(problem, Problem::OutOfRange { .. }),
                        _ => matches!(problem, Problem::TypeMismatch { .. }),
                    };
                    assert!(matches_kind, "{described}: expected {kind}, got {problem}");
                }
                (got, wanted) => panic!("{described}: expected {wanted:?}, got {got:?}"),
            }
        }
    }

    fn path(text: &str, repeated: &[&str]) -> Vec<Segment> {
        text.split('.')
            .map(|name| Segment {
                name: name.into(),
                repeated: repeated.contains(&name),
            })
            .collect()
    }

    /// A v1 `orders.OrderCreated` with two line items, as a record.
    fn order() -> Record {
        let decoder = crate::envelope::tests::example_decoder();
        let descriptor = decoder
            .registry()
            .resolve("orders.OrderCreated", 1)
            .expect("v1")
            .clone();
        Record::from_message(
            DynamicMessage::deserialize(
                descriptor,
                json!({ "orderId": "o-1", "total": 12.5, "items": [
                    { "sku": "a", "quantity": 2, "unitPrice": 1.25 },
                    { "sku": "b", "quantity": 1 }
                ] }),
            )
            .expect("valid v1"),
        )
    }

    /// A `rename` (or `copy`) inside `common`, from and to relative to it.
    fn moving(keep_source: bool, common: &str, from: &str, to: &str) -> Box<dyn Upcaster> {
        let within = |path: &str| match common {
            "" => path.to_owned(),
            common => format!("{common}.{path}"),
        };
        Box::new(Move {
            keep_source,
            common: if common.is_empty() {
                vec![]
            } else {
                self::path(common, &["items"])
            },
            from: self::path(from, &[]),
            to: self::path(to, &[]),
            from_text: within(from),
            to_text: within(to),
        })
    }

    fn text(value: &str) -> Field {
        Field::new(Value::String(value.into()))
    }

    fn skus(record: &mut Record, field: &str) -> Vec<Option<Value>> {
        let mut seen = Vec::new();
        record
            .for_each_at(&path("items", &["items"]), false, &mut |item| {
                seen.push(item.get(field).cloned());
                Ok(())
            })
            .expect("items walk");
        seen
    }

    #[test]
    fn each_step_kind_changes_only_its_field_or_names_the_problem() {
        type Check = fn(&mut Record);
        type Case = (
            &'static str,
            Box<dyn Upcaster>,
            Result<Check, (&'static str, Problem)>,
        );
        let cases: Vec<Case> = vec![
            (
                "rename top level",
                moving(false, "", "total", "total_amount"),
                Ok(|record| {
                    assert!(!record.contains("total"));
                    assert_eq!(record.get("total_amount"), Some(&Value::F64(12.5)));
                }),
            ),
            (
                "rename inside each element",
                moving(false, "items", "sku", "code"),
                Ok(|record| {
                    assert_eq!(skus(record, "sku"), [None, None]);
                    assert_eq!(
                        skus(record, "code"),
                        [
                            Some(Value::String("a".into())),
                            Some(Value::String("b".into()))
                        ]
                    );
                }),
            ),
            (
                "rename into a nested message",
                moving(false, "", "customer_id", "customer.id"),
                Ok(|record| {
                    // An absent source (proto3 zero) moves nothing, creates nothing.
                    assert!(!record.contains("customer"));
                }),
            ),
            (
                "rename onto a value",
                moving(false, "", "total", "order_id"),
                Err(("order_id", Problem::Occupied)),
            ),
            (
                "copy out of a nested message",
                moving(true, "", "order_id", "meta.order_id"),
                Ok(|record| {
                    assert!(record.contains("order_id"));
                    let meta = record
                        .message_mut("meta")
                        .expect("a message")
                        .expect("created");
                    assert_eq!(meta.get("order_id"), Some(&Value::String("o-1".into())));
                }),
            ),
            (
                "path through a scalar",
                moving(false, "", "order_id.x", "y"),
                Err(("order_id.x", Problem::NotAMessage)),
            ),
            (
                "set_default on an absent field",
                Box::new(Set {
                    only_when_absent: true,
                    path: path("currency", &[]),
                    value: text("USD"),
                    text: "currency".into(),
                    shown: "\"USD\"".into(),
                }),
                Ok(|record| assert_eq!(record.get("currency"), Some(&Value::String("USD".into())))),
            ),
            (
                "set_default on a present field",
                Box::new(Set {
                    only_when_absent: true,
                    path: path("order_id", &[]),
                    value: text("other"),
                    text: "order_id".into(),
                    shown: "\"other\"".into(),
                }),
                Ok(|record| assert_eq!(record.get("order_id"), Some(&Value::String("o-1".into())))),
            ),
            (
                "set in each element",
                Box::new(Set {
                    only_when_absent: false,
                    path: path("items.sku", &["items"]),
                    value: text("x"),
                    text: "items.sku".into(),
                    shown: "\"x\"".into(),
                }),
                Ok(|record| {
                    let x = Some(Value::String("x".into()));
                    assert_eq!(skus(record, "sku"), [x.clone(), x]);
                }),
            ),
            (
                "remove in each element",
                Box::new(Remove {
                    path: path("items.unit_price", &["items"]),
                    text: "items.unit_price".into(),
                }),
                Ok(|record| assert_eq!(skus(record, "unit_price"), [None, None])),
            ),
            (
                "convert in each element",
                Box::new(Convert {
                    path: path("items.unit_price", &["items"]),
                    rename_to: Some("unit_cents".into()),
                    conversion: conversion(ScalarType::Int64, Some("100"), Rounding::Exact),
                    text: "items.unit_price".into(),
                }),
                // The second item has no price: nothing to convert there.
                Ok(|record| assert_eq!(skus(record, "unit_cents"), [Some(Value::I64(125)), None])),
            ),
            (
                "convert a string field that is not a number",
                Box::new(Convert {
                    path: path("order_id", &[]),
                    rename_to: None,
                    conversion: conversion(ScalarType::Int64, None, Rounding::Exact),
                    text: "order_id".into(),
                }),
                Err((
                    "order_id",
                    Problem::NotANumber {
                        value: "o-1".into(),
                    },
                )),
            ),
            (
                "convert onto a value",
                Box::new(Convert {
                    path: path("total", &[]),
                    rename_to: Some("order_id".into()),
                    conversion: conversion(ScalarType::Int64, None, Rounding::HalfEven),
                    text: "total".into(),
                }),
                Err(("order_id", Problem::Occupied)),
            ),
            (
                "convert a fraction exactly",
                Box::new(Convert {
                    path: path("total", &[]),
                    rename_to: Some("total_cents".into()),
                    conversion: conversion(ScalarType::Int64, None, Rounding::Exact),
                    text: "total".into(),
                }),
                Err((
                    "total",
                    Problem::Inexact {
                        value: "12.5".into(),
                    },
                )),
            ),
            (
                "map a string",
                Box::new(MapValues {
                    path: path("items.sku", &["items"]),
                    table: HashMap::from([("a".to_owned(), Value::String("A".into()))]),
                    target_enum: None,
                    unmapped: Unmapped::Keep,
                    text: "items.sku".into(),
                }),
                Ok(|record| {
                    assert_eq!(
                        skus(record, "sku"),
                        [
                            Some(Value::String("A".into())),
                            Some(Value::String("b".into()))
                        ]
                    );
                }),
            ),
            (
                "an unmapped value that must fail",
                Box::new(MapValues {
                    path: path("items.sku", &["items"]),
                    table: HashMap::from([("a".to_owned(), Value::String("A".into()))]),
                    target_enum: None,
                    unmapped: Unmapped::Fail,
                    text: "items.sku".into(),
                }),
                Err(("items.sku", Problem::Unmapped { value: "b".into() })),
            ),
            (
                "map a number",
                Box::new(MapValues {
                    path: path("total", &[]),
                    table: HashMap::new(),
                    target_enum: None,
                    unmapped: Unmapped::Keep,
                    text: "total".into(),
                }),
                Err((
                    "total",
                    Problem::TypeMismatch {
                        expected: "an enum or a string".into(),
                        found: "double".into(),
                    },
                )),
            ),
        ];
        for (name, step, expected) in cases {
            let mut record = order();
            match (step.apply(&mut record), expected) {
                (Ok(()), Ok(check)) => check(&mut record),
                (Err(error), Err((field, problem))) => {
                    assert_eq!(
                        (error.field.as_str(), &error.problem),
                        (field, &problem),
                        "{name}"
                    );
                }
                (got, _) => panic!("{name}: unexpected {got:?}"),
            }
            assert!(!step.describe().is_empty());
        }
    }

    #[test]
    fn enum_values_map_by_name_and_keep_crosses_versions_by_name() {
        let decoder = crate::envelope::tests::example_decoder();
        let cancelled = decoder
            .registry()
            .resolve("orders.OrderCancelled", 1)
            .expect("v1")
            .clone();
        let reason = cancelled
            .get_field_by_name("reason")
            .and_then(|field| field.kind().as_enum().cloned())
            .expect("an enum");
        let step = MapValues {
            path: path("reason", &[]),
            table: HashMap::from([(
                "CANCEL_REASON_OUT_OF_STOCK".to_owned(),
                Value::String("stock".into()),
            )]),
            target_enum: None,
            unmapped: Unmapped::Keep,
            text: "reason".into(),
        };
        let with_reason = |name: &str| {
            let message = DynamicMessage::deserialize(cancelled.clone(), json!({ "reason": name }))
                .expect("valid");
            assert_eq!(message.descriptor(), cancelled);
            Record::from_message(message)
        };
        let mut record = with_reason("CANCEL_REASON_OUT_OF_STOCK");
        step.apply(&mut record).expect("mapped");
        assert_eq!(record.get("reason"), Some(&Value::String("stock".into())));
        // Kept, an enum value becomes its name when the field turns into a string.
        let mut record = with_reason("CANCEL_REASON_PAYMENT_FAILED");
        step.apply(&mut record).expect("kept");
        assert_eq!(
            record.get("reason"),
            Some(&Value::String("CANCEL_REASON_PAYMENT_FAILED".into()))
        );
        let to_enum = MapValues {
            table: HashMap::new(),
            target_enum: Some(reason),
            ..step
        };
        let mut record = with_reason("CANCEL_REASON_PAYMENT_FAILED");
        to_enum.apply(&mut record).expect("kept by name");
        assert_eq!(record.get("reason"), Some(&Value::EnumNumber(3)));
    }
}
