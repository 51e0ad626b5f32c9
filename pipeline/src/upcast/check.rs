//! `upcasters:` + the schemas -> checked [`Upcasters`], at start-up and by
//! `jetline check`.
//!
//! Each hop is followed step by step over a [`Shape`] (the fields the payload
//! may hold at that point), so that every step's paths and values are
//! resolved once, here, and the end of the hop is compared with the target
//! schema. Errors (a `ConfigError` each, named by key path: exit 2): unknown
//! versions, backward hops (which would make cycles), two hops from one
//! version, gaps (a version below the newest with no hop), fields a step
//! names that are in neither schema, a field left over that the target
//! lacks, a conversion to the wrong type, a pin that a hop jumps over.
//! Warnings: a field whose type changes with no step converting it, a new
//! field that needs a value and gets none, enum values the target lacks, a
//! type with versions but no chain, a pinned sink a type cannot reach.
//!
//! **Invariant:** a chain that passes these checks fails at run time only on
//! values (a string that is not a number, an overflow, an unmapped value),
//! never on its own structure.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use prost_reflect::{Cardinality, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};

use super::{
    CodeSteps, Effect, Field, Hop, Segment, Step, Upcaster, Upcasters, Warning, field_type_name,
    record::enum_of,
    steps::{
        Code, Conversion, Convert, HopConfig, MapValues, MapValuesConfig, Move, MoveConfig, Remove,
        ScalarType, Set, SetConfig, StepConfig, parse_decimal,
    },
};
use crate::{
    config::{Config, ConfigError, UnknownFields, parse_at},
    schema::SchemaRegistry,
};

/// Builds every chain of `config.upcasters` and checks it against `registry`.
pub fn build(
    config: &Config,
    registry: &SchemaRegistry,
    code: &CodeSteps,
) -> Result<Upcasters, Vec<ConfigError>> {
    let mut report = Report::default();
    let versions = registry.event_types();
    let mut chains = HashMap::new();
    for (event_type, value) in &config.upcasters {
        let path = format!("upcasters.{event_type}");
        let Some(type_versions) = versions.get(event_type.as_str()) else {
            report.error(&path, format!("no schema for event type {event_type:?}"));
            continue;
        };
        let Some(hops) = parse_at::<Vec<HopConfig>>(&mut report.errors, &path, value.clone())
        else {
            continue;
        };
        let chain = Chain {
            path: &path,
            event_type,
            versions: type_versions,
        };
        let hops = chain.build(&mut report, &hops, registry, code);
        chains.insert(event_type.clone(), hops);
    }
    for (event_type, type_versions) in &versions {
        if let (true, Some(newest)) = (type_versions.len() > 1, type_versions.last())
            && !config.upcasters.contains_key(*event_type)
        {
            report.warn(
                "upcasters",
                format!(
                    "{event_type} has versions {type_versions:?} and no upcasters: its events below v{newest} are dead-lettered (upcast_failed)"
                ),
            );
        }
    }
    check_pins(&mut report, config, &versions, &chains);
    if !report.errors.is_empty() {
        return Err(report.errors);
    }
    // Allowed unknown fields are carried in nested messages by bytes but
    // dropped by decoding: the wire would keep what decoding drops.
    let wire = config.schemas.unknown_fields == UnknownFields::Reject;
    Ok(Upcasters::new(
        versions,
        chains,
        registry,
        wire,
        report.warnings,
    ))
}

#[derive(Default)]
struct Report {
    errors: Vec<ConfigError>,
    warnings: Vec<Warning>,
}

impl Report {
    fn error(&mut self, path: &str, message: String) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn warn(&mut self, path: &str, message: String) {
        self.warnings.push(Warning {
            path: path.to_owned(),
            message,
        });
    }
}

/// One event type's chain being built.
struct Chain<'a> {
    path: &'a str,
    event_type: &'a str,
    versions: &'a [u32],
}

impl Chain<'_> {
    fn build(
        &self,
        report: &mut Report,
        hops: &[HopConfig],
        registry: &SchemaRegistry,
        code: &CodeSteps,
    ) -> BTreeMap<u32, Hop> {
        let listed = self
            .versions
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut built = BTreeMap::new();
        let mut first_from: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, hop) in hops.iter().enumerate() {
            let hop_path = format!("{}[{index}]", self.path);
            let errors_before = report.errors.len();
            for (key, version) in [("from", hop.from), ("to", hop.to)] {
                if !self.versions.contains(&version) {
                    report.error(
                        &format!("{hop_path}.{key}"),
                        format!(
                            "{} has no version {version} (it has {listed})",
                            self.event_type
                        ),
                    );
                }
            }
            if hop.to <= hop.from {
                report.error(
                    &format!("{hop_path}.to"),
                    format!(
                        "must be newer than from (v{}): hops only go forward, so that no chain loops",
                        hop.from
                    ),
                );
            }
            match first_from.get(&hop.from) {
                Some(first) => report.error(
                    &format!("{hop_path}.from"),
                    format!(
                        "a second hop from v{} (the first is {}[{first}])",
                        hop.from, self.path
                    ),
                ),
                None => {
                    first_from.insert(hop.from, index);
                }
            }
            if report.errors.len() > errors_before {
                continue;
            }
            let (Some(source), Some(target)) = (
                registry.resolve(self.event_type, hop.from),
                registry.resolve(self.event_type, hop.to),
            ) else {
                continue;
            };
            let at = HopAt {
                path: &hop_path,
                from: hop.from,
                to: hop.to,
                target,
            };
            if let Some((steps, check_between)) = at.build(report, source, &hop.steps, code) {
                built.insert(
                    hop.from,
                    Hop {
                        from: hop.from,
                        to: hop.to,
                        target: target.clone(),
                        steps,
                        check_between,
                    },
                );
            }
        }
        if let Some(newest) = self.versions.last() {
            for version in self.versions.iter().filter(|version| *version < newest) {
                if !first_from.contains_key(version) {
                    report.error(
                        self.path,
                        format!(
                            "no hop from v{version}: every version below the newest (v{newest}) needs one, so that its events reach v{newest}"
                        ),
                    );
                }
            }
        }
        built
    }
}

/// The fields a payload may hold at one point of a hop.
#[derive(Debug, Clone, Default)]
struct Shape {
    fields: Vec<(String, Shaped)>,
}

#[derive(Debug, Clone)]
enum Shaped {
    /// As a schema declares the field; a message's own fields are listed in
    /// `inner` once a step looks inside.
    Declared {
        field: FieldDescriptor,
        inner: Option<Shape>,
    },
    /// The result of the `convert` at `step`.
    Converted {
        to: ScalarType,
        list: bool,
        step: usize,
    },
}

impl Shape {
    fn of(message: &MessageDescriptor) -> Self {
        Self {
            fields: message
                .fields()
                .map(|field| {
                    (
                        field.name().to_owned(),
                        Shaped::Declared { field, inner: None },
                    )
                })
                .collect(),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|(field, _)| field == name)
    }

    fn get(&self, name: &str) -> Option<&Shaped> {
        self.position(name).map(|index| &self.fields[index].1)
    }

    fn remove(&mut self, name: &str) -> Option<Shaped> {
        self.position(name).map(|index| self.fields.remove(index).1)
    }

    fn put(&mut self, name: &str, shaped: Shaped) {
        match self.position(name) {
            Some(index) => self.fields[index].1 = shaped,
            None => self.fields.push((name.to_owned(), shaped)),
        }
    }

    fn listed(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|(name, _)| name.as_str()).collect();
        if names.is_empty() {
            "no fields".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// The message one level down, for reading: `name` must be a message
    /// field the payload may hold.
    fn enter(&mut self, name: &str, trail: &mut Vec<Segment>) -> Result<&mut Shape, String> {
        let Some(index) = self.position(name) else {
            return Err(format!("no field {name} here (there is {})", self.listed()));
        };
        match &mut self.fields[index].1 {
            Shaped::Declared { field, inner } if !field.is_map() => {
                let Some(message) = field.kind().as_message().cloned() else {
                    return Err(format!(
                        "{name} is {}, not a message",
                        field_type_name(field)
                    ));
                };
                trail.push(Segment {
                    name: name.into(),
                    repeated: field.is_list(),
                });
                Ok(inner.get_or_insert_with(|| Shape::of(&message)))
            }
            Shaped::Declared { field, .. } => Err(format!(
                "{name} is {}: paths cannot enter maps",
                field_type_name(field)
            )),
            Shaped::Converted { to, .. } => Err(format!(
                "{name} is {} after a convert, not a message",
                to.name()
            )),
        }
    }

    /// The message one level down, for writing: a message field the payload
    /// may hold, or else one of the target schema (then absent so far).
    fn enter_for_write(
        &mut self,
        name: &str,
        target: Option<&MessageDescriptor>,
        trail: &mut Vec<Segment>,
    ) -> Result<&mut Shape, String> {
        if self.position(name).is_none() {
            let Some(field) = target.and_then(|target| target.get_field_by_name(name)) else {
                return Err(format!(
                    "no field {name} here (there is {}) nor in the target schema",
                    self.listed()
                ));
            };
            if field.is_map() || field.kind().as_message().is_none() {
                return Err(format!(
                    "{name} is {}, not a message",
                    field_type_name(&field)
                ));
            }
            self.fields.push((
                name.to_owned(),
                Shaped::Declared {
                    field,
                    inner: Some(Shape::default()),
                },
            ));
        }
        self.enter(name, trail)
    }
}

/// `a.b.c` -> its names, each a protobuf identifier.
fn parse_path(text: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = text.split('.').map(str::to_owned).collect();
    let valid = |name: &String| {
        name.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if names.iter().all(valid) {
        Ok(names)
    } else {
        Err(format!(
            "{text:?} is not a field path (names of letters, digits and '_', joined by '.')"
        ))
    }
}

/// The message at `parents` in `message`, following field names.
fn message_at(message: &MessageDescriptor, parents: &[String]) -> Option<MessageDescriptor> {
    let mut current = message.clone();
    for name in parents {
        let field = current.get_field_by_name(name)?;
        if field.is_map() {
            return None;
        }
        current = field.kind().as_message()?.clone();
    }
    Some(current)
}

/// A step that cannot be built: the key of the step it concerns (`from`,
/// `value`; empty for the step itself) and why.
struct Refusal {
    key: String,
    message: String,
}

fn refuse(key: &str) -> impl FnOnce(String) -> Refusal + '_ {
    move |message| Refusal {
        key: key.to_owned(),
        message,
    }
}

/// Where a hop is, for its steps' and its own findings.
struct HopAt<'a> {
    path: &'a str,
    from: u32,
    to: u32,
    target: &'a MessageDescriptor,
}

impl HopAt<'_> {
    /// Resolves each step over the payload's shape, then compares the end
    /// shape with the target. `None` when anything was refused.
    fn build(
        &self,
        report: &mut Report,
        source: &MessageDescriptor,
        configs: &[StepConfig],
        code: &CodeSteps,
    ) -> Option<(Vec<Step>, bool)> {
        let mut shape = Shape::of(source);
        let mut steps = Vec::new();
        let mut refused = false;
        for (index, config) in configs.iter().enumerate() {
            let step_path = format!("{}.steps[{index}].{}", self.path, config.kind());
            match self.step(&mut shape, index, config, code) {
                Ok(upcaster) => steps.push(Step {
                    kind: config.kind(),
                    upcaster,
                    touches: config
                        .top_level_fields()
                        .map(|names| names.into_iter().map(Arc::from).collect()),
                }),
                Err(refusal) => {
                    let path = if refusal.key.is_empty() {
                        step_path
                    } else {
                        format!("{step_path}.{}", refusal.key)
                    };
                    report.error(&path, refusal.message);
                    refused = true;
                }
            }
        }
        if refused {
            // The shape past a refused step is a guess: compare nothing.
            return None;
        }
        let (errors_before, warnings_before) = (report.errors.len(), report.warnings.len());
        self.compare(report, &shape, self.target, "", &mut HashSet::new());
        // What YAML steps do is known here; a warning or a code step leaves
        // something to check per event.
        let check_between = report.warnings.len() > warnings_before
            || configs
                .iter()
                .any(|config| matches!(config, StepConfig::Code(_)));
        (report.errors.len() == errors_before).then_some((steps, check_between))
    }

    fn step(
        &self,
        shape: &mut Shape,
        index: usize,
        config: &StepConfig,
        code: &CodeSteps,
    ) -> Result<Arc<dyn Upcaster>, Refusal> {
        Ok(match config {
            StepConfig::Rename(moved) => Arc::new(self.moving(shape, moved, false)?),
            StepConfig::Copy(moved) => Arc::new(self.moving(shape, moved, true)?),
            StepConfig::Set(set) => Arc::new(self.setting(shape, set, false)?),
            StepConfig::SetDefault(set) => Arc::new(self.setting(shape, set, true)?),
            StepConfig::Remove(remove) => {
                let path = parse_path(&remove.field).map_err(refuse("field"))?;
                let (parents, name) = split(&path);
                let mut trail = Vec::new();
                let parent = descend(shape, parents, &mut trail).map_err(refuse("field"))?;
                if parent.remove(name).is_none() {
                    return Err(refuse("field")(format!(
                        "no field {name} here (there is {})",
                        parent.listed()
                    )));
                }
                Arc::new(Remove {
                    path: with_last(trail, name),
                    text: remove.field.clone(),
                })
            }
            StepConfig::Convert(convert) => Arc::new(self.converting(shape, index, convert)?),
            StepConfig::MapValues(map) => Arc::new(self.mapping(shape, map)?),
            StepConfig::Code(name) => {
                let Some(step) = code.get(name) else {
                    return Err(refuse("")(format!(
                        "no code step named {name:?} is registered (the jetline binary has none: a program embedding the library registers its own)"
                    )));
                };
                for effect in step.effects() {
                    self.follow(shape, &effect).map_err(refuse(""))?;
                }
                Arc::new(Code {
                    name: name.clone(),
                    step: Arc::clone(step),
                })
            }
        })
    }

    fn moving(
        &self,
        shape: &mut Shape,
        config: &MoveConfig,
        keep_source: bool,
    ) -> Result<Move, Refusal> {
        let from = parse_path(&config.from).map_err(refuse("from"))?;
        let to = parse_path(&config.to).map_err(refuse("to"))?;
        let (from_parents, from_name) = split(&from);
        let (to_parents, to_name) = split(&to);
        let mut from_trail = Vec::new();
        let parent = descend(shape, from_parents, &mut from_trail).map_err(refuse("from"))?;
        let moved = if keep_source {
            parent.get(from_name).cloned()
        } else {
            parent.remove(from_name)
        };
        let Some(moved) = moved else {
            return Err(refuse("from")(format!(
                "no field {from_name} here (there is {})",
                parent.listed()
            )));
        };
        let mut to_trail = Vec::new();
        let target_parent = message_at(self.target, to_parents);
        let parent = descend_for_write(shape, to_parents, self.target, &mut to_trail)
            .map_err(refuse("to"))?;
        if parent.get(to_name).is_some() {
            return Err(refuse("to")(format!(
                "{to_name} is already a field of the payload here: remove it first"
            )));
        }
        if target_parent
            .and_then(|message| message.get_field_by_name(to_name))
            .is_none()
        {
            return Err(refuse("to")(format!(
                "v{} has no field {}",
                self.to, config.to
            )));
        }
        parent.put(to_name, moved);
        // Within a repeated element a field moves inside that element only.
        let common = from_parents
            .iter()
            .zip(to_parents)
            .take_while(|(a, b)| a == b)
            .count();
        if let Some(segment) = from_trail[common..]
            .iter()
            .chain(&to_trail[common..])
            .find(|segment| segment.repeated)
        {
            return Err(refuse("to")(format!(
                "{} is repeated: from and to must sit in the same element of it",
                segment.name
            )));
        }
        let relative = |trail: &[Segment], name: &str| with_last(trail[common..].to_vec(), name);
        Ok(Move {
            keep_source,
            common: from_trail[..common].to_vec(),
            from: relative(&from_trail, from_name),
            to: relative(&to_trail, to_name),
            from_text: config.from.clone(),
            to_text: config.to.clone(),
        })
    }

    fn setting(
        &self,
        shape: &mut Shape,
        config: &SetConfig,
        only_when_absent: bool,
    ) -> Result<Set, Refusal> {
        let path = parse_path(&config.field).map_err(refuse("field"))?;
        let (parents, name) = split(&path);
        let target_parent = message_at(self.target, parents);
        let mut trail = Vec::new();
        let parent =
            descend_for_write(shape, parents, self.target, &mut trail).map_err(refuse("field"))?;
        let destination = target_parent
            .and_then(|message| message.get_field_by_name(name))
            .or_else(|| match parent.get(name) {
                Some(Shaped::Declared { field, .. }) => Some(field.clone()),
                _ => None,
            })
            .ok_or_else(|| {
                refuse("field")(format!(
                    "no field {} in v{} or in the payload here",
                    config.field, self.to
                ))
            })?;
        let value = field_value(&destination, &config.value).map_err(refuse("value"))?;
        if !(only_when_absent && parent.get(name).is_some()) {
            parent.put(
                name,
                Shaped::Declared {
                    field: destination,
                    inner: None,
                },
            );
        }
        Ok(Set {
            only_when_absent,
            path: with_last(trail, name),
            value,
            text: config.field.clone(),
            shown: config.value.to_string(),
        })
    }

    fn converting(
        &self,
        shape: &mut Shape,
        index: usize,
        config: &super::steps::ConvertConfig,
    ) -> Result<Convert, Refusal> {
        let path = parse_path(&config.field).map_err(refuse("field"))?;
        let (parents, name) = split(&path);
        let mut trail = Vec::new();
        let parent = descend(shape, parents, &mut trail).map_err(refuse("field"))?;
        let list = match parent.get(name) {
            None => {
                return Err(refuse("field")(format!(
                    "no field {name} here (there is {})",
                    parent.listed()
                )));
            }
            Some(Shaped::Converted { list, .. }) => *list,
            Some(Shaped::Declared { field, .. }) => {
                let convertible = matches!(
                    scalar_class(&field.kind()),
                    Some(class) if class != Class::Bool && class != Class::Bytes
                );
                if field.is_map() || !convertible {
                    return Err(refuse("field")(format!(
                        "{name} is {}: convert takes numbers and strings",
                        field_type_name(field)
                    )));
                }
                field.is_list()
            }
        };
        if let Some(rename_to) = &config.rename_to {
            if parse_path(rename_to).map(|names| names.len()) != Ok(1) {
                return Err(refuse("rename_to")(format!(
                    "{rename_to:?} is not a field name of this message (rename moves fields elsewhere)"
                )));
            }
            if rename_to != name && parent.get(rename_to).is_some() {
                return Err(refuse("rename_to")(format!(
                    "{rename_to} is already a field of the payload here: remove it first"
                )));
            }
        }
        let multiply =
            match &config.multiply {
                None => None,
                Some(number) => Some(parse_decimal(&number.to_string()).ok_or_else(|| {
                    refuse("multiply")(format!("{number} is not a decimal number"))
                })?),
            };
        if config.round.is_some() && !config.to.is_integer() {
            return Err(refuse("round")(format!(
                "rounding applies to integer results, not to {}",
                config.to.name()
            )));
        }
        parent.remove(name);
        let destination = config.rename_to.as_deref().unwrap_or(name);
        parent.put(
            destination,
            Shaped::Converted {
                to: config.to,
                list,
                step: index,
            },
        );
        Ok(Convert {
            path: with_last(trail, name),
            rename_to: config
                .rename_to
                .as_deref()
                .filter(|rename_to| *rename_to != name)
                .map(std::sync::Arc::from),
            conversion: Conversion {
                to: config.to,
                multiply,
                round: config.round.unwrap_or_default(),
            },
            text: config.field.clone(),
        })
    }

    fn mapping(&self, shape: &mut Shape, config: &MapValuesConfig) -> Result<MapValues, Refusal> {
        let path = parse_path(&config.field).map_err(refuse("field"))?;
        let (parents, name) = split(&path);
        let target_parent = message_at(self.target, parents);
        let mut trail = Vec::new();
        let parent = descend(shape, parents, &mut trail).map_err(refuse("field"))?;
        let source = match parent.get(name) {
            Some(Shaped::Declared { field, .. })
                if !field.is_map() && matches!(field.kind(), Kind::Enum(_) | Kind::String) =>
            {
                field.clone()
            }
            Some(Shaped::Declared { field, .. }) => {
                return Err(refuse("field")(format!(
                    "{name} is {}: map_values takes enums and strings",
                    field_type_name(field)
                )));
            }
            Some(Shaped::Converted { to, .. }) => {
                return Err(refuse("field")(format!(
                    "{name} is {} after a convert: map_values takes enums and strings",
                    to.name()
                )));
            }
            None => {
                return Err(refuse("field")(format!(
                    "no field {name} here (there is {})",
                    parent.listed()
                )));
            }
        };
        // The values after the step have the type the target gives the field.
        let destination = match target_parent.and_then(|message| message.get_field_by_name(name)) {
            Some(field)
                if !field.is_map() && matches!(field.kind(), Kind::Enum(_) | Kind::String) =>
            {
                field
            }
            Some(field) => {
                return Err(refuse("field")(format!(
                    "v{} has {name} as {}: map_values yields enums and strings",
                    self.to,
                    field_type_name(&field)
                )));
            }
            None => source.clone(),
        };
        let source_enum = source.kind().as_enum().cloned();
        let target_enum = destination.kind().as_enum().cloned();
        let mut table = HashMap::new();
        for (from, to) in &config.values {
            let key = format!("values.{from}");
            if let Some(enum_type) = &source_enum
                && enum_type.get_value_by_name(from).is_none()
            {
                return Err(refuse(&key)(format!(
                    "{from} is not a value of {}",
                    enum_type.full_name()
                )));
            }
            let value = match &target_enum {
                Some(enum_type) => enum_type
                    .get_value_by_name(to)
                    .map(|value| prost_reflect::Value::EnumNumber(value.number()))
                    .ok_or_else(|| {
                        refuse(&key)(format!("{to} is not a value of {}", enum_type.full_name()))
                    })?,
                None => prost_reflect::Value::String(to.clone()),
            };
            table.insert(from.clone(), value);
        }
        parent.put(
            name,
            Shaped::Declared {
                field: destination,
                inner: None,
            },
        );
        Ok(MapValues {
            path: with_last(trail, name),
            table,
            target_enum,
            unmapped: config.unmapped,
            text: config.field.clone(),
        })
    }

    /// A code step's declared effect on the shape.
    fn follow(&self, shape: &mut Shape, effect: &Effect) -> Result<(), String> {
        match effect {
            Effect::Reads(text) | Effect::Removes(text) => {
                let path = parse_path(text)?;
                let (parents, name) = split(&path);
                let parent = descend(shape, parents, &mut Vec::new())?;
                let present = if matches!(effect, Effect::Removes(_)) {
                    parent.remove(name).is_some()
                } else {
                    parent.get(name).is_some()
                };
                if present {
                    Ok(())
                } else {
                    Err(format!(
                        "no field {text} here (there is {})",
                        parent.listed()
                    ))
                }
            }
            Effect::Writes(text) => {
                let path = parse_path(text)?;
                let (parents, name) = split(&path);
                let field = message_at(self.target, parents)
                    .and_then(|message| message.get_field_by_name(name))
                    .ok_or_else(|| format!("v{} has no field {text}", self.to))?;
                let parent = descend_for_write(shape, parents, self.target, &mut Vec::new())?;
                parent.put(name, Shaped::Declared { field, inner: None });
                Ok(())
            }
        }
    }

    /// The shape at the end of the hop against the target schema.
    fn compare(
        &self,
        report: &mut Report,
        shape: &Shape,
        target: &MessageDescriptor,
        prefix: &str,
        seen: &mut HashSet<(String, String)>,
    ) {
        for (name, shaped) in &shape.fields {
            let here = join(prefix, name);
            let target_field = target.get_field_by_name(name);
            match (shaped, target_field) {
                (Shaped::Converted { step, .. }, None) => report.error(
                    &format!("{}.steps[{step}].convert", self.path),
                    format!("its result {here} is not a field of v{}", self.to),
                ),
                (Shaped::Declared { .. }, None) => report.error(
                    self.path,
                    format!(
                        "field {here} is not in v{}: add a step that renames or removes it",
                        self.to
                    ),
                ),
                (Shaped::Converted { to, list, step }, Some(target_field)) => {
                    if scalar_class(&target_field.kind()) != Some(to.class())
                        || *list != target_field.is_list()
                        || target_field.is_map()
                    {
                        let repeated = if *list { "repeated " } else { "" };
                        report.error(
                            &format!("{}.steps[{step}].convert.to", self.path),
                            format!(
                                "yields {repeated}{}, but {here} is {} in v{}",
                                to.name(),
                                field_type_name(&target_field),
                                self.to
                            ),
                        );
                    }
                }
                (Shaped::Declared { field, inner }, Some(target_field)) => {
                    self.compare_field(report, field, inner.as_ref(), &target_field, &here, seen);
                }
            }
        }
        for target_field in target.fields() {
            if shape.get(target_field.name()).is_none() && needs_value(&target_field) {
                report.warn(
                    self.path,
                    format!(
                        "field {} is new in v{} and no step sets it: events from v{} arrive with its zero value",
                        join(prefix, target_field.name()),
                        self.to,
                        self.from
                    ),
                );
            }
        }
    }

    fn compare_field(
        &self,
        report: &mut Report,
        source: &FieldDescriptor,
        inner: Option<&Shape>,
        target: &FieldDescriptor,
        here: &str,
        seen: &mut HashSet<(String, String)>,
    ) {
        let changed = |report: &mut Report| {
            report.warn(
                self.path,
                format!(
                    "field {here} is {} here but {} in v{}, and no step converts it: events that carry a value are dead-lettered",
                    field_type_name(source),
                    field_type_name(target),
                    self.to
                ),
            );
        };
        if source.is_list() != target.is_list() || source.is_map() != target.is_map() {
            return changed(report);
        }
        let (source_kind, target_kind) = match (source.kind(), target.kind()) {
            (Kind::Message(source_entry), Kind::Message(target_entry)) if source.is_map() => {
                if scalar_class(&source_entry.map_entry_key_field().kind())
                    != scalar_class(&target_entry.map_entry_key_field().kind())
                {
                    return changed(report);
                }
                (
                    source_entry.map_entry_value_field().kind(),
                    target_entry.map_entry_value_field().kind(),
                )
            }
            kinds => kinds,
        };
        match (&source_kind, &target_kind) {
            (Kind::Message(source_message), Kind::Message(target_message)) => match inner {
                Some(shape) => self.compare(report, shape, target_message, here, seen),
                None if source_message == target_message => {}
                None => {
                    let pair = (
                        source_message.full_name().to_owned(),
                        target_message.full_name().to_owned(),
                    );
                    // Recursive messages are compared once.
                    if seen.insert(pair) {
                        self.compare(
                            report,
                            &Shape::of(source_message),
                            target_message,
                            here,
                            seen,
                        );
                    }
                }
            },
            (Kind::Enum(source_enum), Kind::Enum(target_enum)) => {
                if source_enum == target_enum {
                    return;
                }
                let missing: Vec<String> = source_enum
                    .values()
                    .filter(|value| target_enum.get_value_by_name(value.name()).is_none())
                    .map(|value| value.name().to_owned())
                    .collect();
                if !missing.is_empty() {
                    report.warn(
                        self.path,
                        format!(
                            "{here}: {} has no value named {}: events with those values are dead-lettered",
                            target_enum.full_name(),
                            missing.join(", ")
                        ),
                    );
                }
            }
            (source_kind, target_kind) => {
                let class = scalar_class(source_kind);
                if class.is_none() || class != scalar_class(target_kind) {
                    changed(report);
                }
            }
        }
    }
}

/// A field whose absence reads as a value: proto2 `required`, or a proto3
/// singular scalar or enum without `optional` (absent means zero).
fn needs_value(field: &FieldDescriptor) -> bool {
    field.cardinality() == Cardinality::Required
        || (!field.is_list() && !field.is_map() && !field.supports_presence())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

fn split(path: &[String]) -> (&[String], &str) {
    match path.split_last() {
        Some((last, parents)) => (parents, last.as_str()),
        None => (&[], ""),
    }
}

fn with_last(mut trail: Vec<Segment>, name: &str) -> Vec<Segment> {
    trail.push(Segment {
        name: name.into(),
        repeated: false,
    });
    trail
}

fn descend<'s>(
    shape: &'s mut Shape,
    parents: &[String],
    trail: &mut Vec<Segment>,
) -> Result<&'s mut Shape, String> {
    let mut current = shape;
    for name in parents {
        current = current.enter(name, trail)?;
    }
    Ok(current)
}

fn descend_for_write<'s>(
    shape: &'s mut Shape,
    parents: &[String],
    target: &MessageDescriptor,
    trail: &mut Vec<Segment>,
) -> Result<&'s mut Shape, String> {
    let mut current = shape;
    for (depth, name) in parents.iter().enumerate() {
        let target_parent = message_at(target, &parents[..depth]);
        current = current.enter_for_write(name, target_parent.as_ref(), trail)?;
    }
    Ok(current)
}

/// A YAML value for `field`, read with the proto3 JSON mapping.
fn field_value(field: &FieldDescriptor, value: &serde_json::Value) -> Result<Field, String> {
    if value.is_null() {
        return Err("a value is needed (null sets nothing)".to_owned());
    }
    let mut object = serde_json::Map::new();
    object.insert(field.name().to_owned(), value.clone());
    let message = DynamicMessage::deserialize(
        field.parent_message().clone(),
        serde_json::Value::Object(object),
    )
    .map_err(|err| format!("not a valid {}: {err}", field_type_name(field)))?;
    Ok(Field::with_enum(
        message.get_field(field).into_owned(),
        enum_of(field),
    ))
}

/// Protobuf scalar types that share a run-time representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    I32,
    I64,
    U32,
    U64,
    F32,
    F64,
    Bool,
    String,
    Bytes,
}

fn scalar_class(kind: &Kind) -> Option<Class> {
    Some(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Class::I32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Class::I64,
        Kind::Uint32 | Kind::Fixed32 => Class::U32,
        Kind::Uint64 | Kind::Fixed64 => Class::U64,
        Kind::Float => Class::F32,
        Kind::Double => Class::F64,
        Kind::Bool => Class::Bool,
        Kind::String => Class::String,
        Kind::Bytes => Class::Bytes,
        Kind::Message(_) | Kind::Enum(_) => return None,
    })
}

impl ScalarType {
    fn class(self) -> Class {
        match self {
            ScalarType::Double => Class::F64,
            ScalarType::Float => Class::F32,
            ScalarType::Int32 => Class::I32,
            ScalarType::Int64 => Class::I64,
            ScalarType::Uint32 => Class::U32,
            ScalarType::Uint64 => Class::U64,
            ScalarType::String => Class::String,
        }
    }
}

/// A pin is a ceiling: each type goes to its newest version at or below it.
/// A hop that jumps over that version makes the pin unreachable (an error); a
/// type with no version at or below the pin cannot be delivered (a warning).
fn check_pins(
    report: &mut Report,
    config: &Config,
    versions: &BTreeMap<&str, Vec<u32>>,
    chains: &HashMap<String, BTreeMap<u32, Hop>>,
) {
    for (sink_name, sink) in &config.sinks {
        let Some(pin) = sink.schema_version else {
            continue;
        };
        let path = format!("sinks.{sink_name}.schema_version");
        for (event_type, type_versions) in versions {
            let receives = config.routes.iter().any(|route| {
                route.to.contains(sink_name)
                    && (route.event_types.is_empty()
                        || route.event_types.iter().any(|name| name == event_type))
            });
            if !receives {
                continue;
            }
            match type_versions.iter().rev().find(|version| **version <= pin) {
                None => report.warn(
                    &path,
                    format!(
                        "{event_type} has no version at or below {pin}: this sink dead-letters its events"
                    ),
                ),
                Some(&target) => {
                    for hop in chains.get(*event_type).into_iter().flat_map(BTreeMap::values) {
                        if hop.from < target && hop.to > target {
                            report.error(
                                &path,
                                format!(
                                    "{event_type}: the hop from v{} goes to v{}, past the pinned v{target}",
                                    hop.from, hop.to
                                ),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{path::Path, sync::Arc};

    use prost_reflect::Value;
    use serde_json::json;

    use super::*;
    use crate::{
        config::{load_str, raw::SchemasConfig},
        upcast::{Problem, Record, StepError, UpcastError},
    };

    const SHOP_V1: &str = r#"
syntax = "proto3";
package shop.v1;
enum Status { STATUS_UNSPECIFIED = 0; STATUS_OPEN = 1; STATUS_PAID = 2; STATUS_VOID = 3; }
message Address { string street = 1; string town = 2; }
message Item { string sku = 1; double price = 2; int32 count = 3; }
message Order {
  string id = 1;
  double total = 2;
  string amount_text = 3;
  Status status = 4;
  string state = 5;
  Address address = 6;
  repeated Item items = 7;
  map<string, string> labels = 8;
  int64 big = 9;
  repeated double prices = 10;
  bool flag = 11;
  string note = 12;
}
"#;

    const SHOP_V2: &str = r#"
syntax = "proto3";
package shop.v2;
enum Status { STATUS_UNSPECIFIED = 0; STATUS_OPEN = 1; STATUS_SETTLED = 2; STATUS_VOID = 3; }
message Address { string street = 1; string city = 2; string country = 3; }
message Item { string sku = 1; int64 price_cents = 2; int32 count = 3; }
message Order {
  string id = 1;
  int64 total_cents = 2;
  double amount = 3;
  Status status = 4;
  Status state = 5;
  Address shipping = 6;
  repeated Item items = 7;
  map<string, string> labels = 8;
  int32 big = 9;
  repeated string prices = 10;
  bool flag = 11;
  string currency = 13;
  optional string comment = 14;
}
"#;

    /// A schema directory with `shop.Order` v1 and v2, which between them
    /// need every step kind: nested, repeated, enum, map and scalar changes.
    pub(crate) fn shop_schemas() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temporary schema dir");
        for (version, text) in [("v1", SHOP_V1), ("v2", SHOP_V2)] {
            let folder = dir.path().join("shop").join(version);
            std::fs::create_dir_all(&folder).expect("schema folder");
            std::fs::write(folder.join("shop.proto"), text).expect("schema written");
        }
        dir
    }

    pub(crate) fn shop_chain() -> serde_json::Value {
        json!([{
            "from": 1, "to": 2, "steps": [
                { "convert": { "field": "total", "to": "int64", "multiply": 100, "rename_to": "total_cents" } },
                { "convert": { "field": "amount_text", "to": "double", "rename_to": "amount" } },
                { "map_values": { "field": "status", "values": { "STATUS_PAID": "STATUS_SETTLED" } } },
                { "map_values": { "field": "state", "values": { "open": "STATUS_OPEN", "paid": "STATUS_SETTLED" }, "unmapped": "fail" } },
                { "rename": { "from": "address", "to": "shipping" } },
                { "rename": { "from": "shipping.town", "to": "shipping.city" } },
                { "set_default": { "field": "shipping.country", "value": "NO" } },
                { "convert": { "field": "items.price", "to": "int64", "multiply": 100, "rename_to": "price_cents" } },
                { "convert": { "field": "big", "to": "int32" } },
                { "convert": { "field": "prices", "to": "string" } },
                { "set": { "field": "currency", "value": "EUR" } },
                { "remove": { "field": "note" } }
            ]
        }])
    }

    pub(crate) fn config(
        schemas: &Path,
        upcasters: &serde_json::Value,
        pin: Option<u32>,
    ) -> Config {
        let pin = pin
            .map(|pin| format!(", schema_version: {pin}"))
            .unwrap_or_default();
        let yaml = format!(
            "nats: {{ url: x }}\nschemas: {{ dir: \"{}\" }}\nsources: {{ s: {{ stream: S }} }}\n\
             sinks: {{ out: {{ type: jetstream, subject: out{pin} }} }}\n\
             routes: [ {{ name: r, from: s, to: [out] }} ]\nupcasters: {upcasters}\n",
            schemas.display()
        );
        load_str(&yaml).unwrap_or_else(|errors| panic!("valid config: {errors}"))
    }

    pub(crate) fn registry(schemas: &Path) -> SchemaRegistry {
        SchemaRegistry::load(&SchemasConfig {
            dir: schemas.to_path_buf(),
            ..SchemasConfig::default()
        })
        .expect("test schemas compile")
    }

    fn build_shop(
        chain: serde_json::Value,
        code: &CodeSteps,
    ) -> Result<Upcasters, Vec<ConfigError>> {
        let schemas = shop_schemas();
        let config = config(schemas.path(), &json!({ "shop.Order": chain }), None);
        build(&config, &registry(schemas.path()), code)
    }

    fn shop_v1(schemas: &Path, payload: serde_json::Value) -> DynamicMessage {
        let descriptor = registry(schemas)
            .resolve("shop.Order", 1)
            .expect("v1")
            .clone();
        DynamicMessage::deserialize(descriptor, payload).expect("valid v1 payload")
    }

    #[test]
    fn every_step_kind_brings_a_rich_event_to_the_next_version() {
        let schemas = shop_schemas();
        let config = config(schemas.path(), &json!({ "shop.Order": shop_chain() }), None);
        let upcasters = build(&config, &registry(schemas.path()), &CodeSteps::default())
            .unwrap_or_else(|errors| panic!("the shop chain is valid: {errors:?}"));
        assert_eq!(upcasters.warnings(), &[]);
        let v1 = shop_v1(
            schemas.path(),
            json!({
                "id": "o1", "total": 12.345, "amountText": "7.5", "status": "STATUS_PAID",
                "state": "paid", "address": { "street": "Main 1", "town": "Oslo" },
                "items": [{ "sku": "a", "price": 1.005, "count": 2 }, { "sku": "b", "price": 2 }],
                "labels": { "k": "v" }, "big": "42", "prices": [1.5, 2], "flag": true, "note": "x"
            }),
        );
        let v2 = upcasters
            .upcast_payload("shop.Order", 1, 2, v1)
            .expect("upcasts");
        assert_eq!(
            serde_json::to_value(&v2).expect("json"),
            json!({
                "id": "o1", "totalCents": "1235", "amount": 7.5, "status": "STATUS_SETTLED",
                "state": "STATUS_SETTLED",
                "shipping": { "street": "Main 1", "city": "Oslo", "country": "NO" },
                "items": [{ "sku": "a", "priceCents": "101", "count": 2 }, { "sku": "b", "priceCents": "200" }],
                "labels": { "k": "v" }, "big": 42, "prices": ["1.5", "2"], "flag": true,
                "currency": "EUR"
            })
        );
    }

    #[test]
    fn a_value_a_step_cannot_take_names_type_hop_step_and_field() {
        let schemas = shop_schemas();
        let config = config(schemas.path(), &json!({ "shop.Order": shop_chain() }), None);
        let upcasters =
            build(&config, &registry(schemas.path()), &CodeSteps::default()).expect("valid");
        let cases = [
            (json!({ "state": "refunded" }), 3, "state", "unmapped"),
            (
                json!({ "amountText": "lots" }),
                1,
                "amount_text",
                "not a number",
            ),
            (json!({ "big": "9000000000" }), 8, "big", "out of range"),
            (json!({ "total": 1e300 }), 0, "total", "out of range"),
        ];
        for (payload, step, field, kind) in cases {
            let error = upcasters
                .upcast_payload("shop.Order", 1, 2, shop_v1(schemas.path(), payload))
                .expect_err(kind);
            let UpcastError::Step(failure) = &error else {
                panic!("{kind}: a step error, got {error}");
            };
            assert_eq!(
                (
                    failure.event_type.as_str(),
                    failure.from,
                    failure.to,
                    failure.step
                ),
                ("shop.Order", 1, 2, step),
                "{error}"
            );
            assert_eq!(failure.field, field, "{error}");
            let matches_kind = match kind {
                "unmapped" => matches!(failure.problem, Problem::Unmapped { .. }),
                "not a number" => matches!(failure.problem, Problem::NotANumber { .. }),
                _ => matches!(failure.problem, Problem::OutOfRange { .. }),
            };
            assert!(matches_kind, "{kind}: {error}");
        }
    }

    /// Replaces step `index` of the shop chain (or removes it with `Null`).
    fn shop_with(index: usize, step: serde_json::Value) -> serde_json::Value {
        let mut chain = shop_chain();
        let steps = chain[0]["steps"].as_array_mut().expect("steps");
        if step.is_null() {
            steps.remove(index);
        } else {
            steps[index] = step;
        }
        chain
    }

    #[test]
    fn every_structural_mistake_is_an_error_at_its_key() {
        let hop = |from: u32, to: u32| json!({ "from": from, "to": to, "steps": shop_chain()[0]["steps"].clone() });
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "unknown version",
                json!([hop(1, 3)]),
                "upcasters.shop.Order[0].to",
            ),
            (
                "backward hop",
                json!([hop(1, 2), { "from": 2, "to": 1 }]),
                "upcasters.shop.Order[1].to",
            ),
            (
                "second hop from a version",
                json!([hop(1, 2), hop(1, 2)]),
                "upcasters.shop.Order[1].from",
            ),
            ("gap", json!([]), "upcasters.shop.Order"),
            (
                "unknown step kind",
                shop_with(0, json!({ "renam": { "from": "a", "to": "b" } })),
                "upcasters.shop.Order[0].steps[0]",
            ),
            (
                "unknown key",
                shop_with(
                    4,
                    json!({ "rename": { "from": "address", "to": "shipping", "too": 1 } }),
                ),
                "upcasters.shop.Order[0].steps[4].rename.too",
            ),
            (
                "missing field",
                shop_with(
                    4,
                    json!({ "rename": { "from": "adress", "to": "shipping" } }),
                ),
                "upcasters.shop.Order[0].steps[4].rename.from",
            ),
            (
                "bad path",
                shop_with(
                    4,
                    json!({ "rename": { "from": "address..x", "to": "shipping" } }),
                ),
                "upcasters.shop.Order[0].steps[4].rename.from",
            ),
            (
                "path into a scalar",
                shop_with(11, json!({ "remove": { "field": "note.x" } })),
                "upcasters.shop.Order[0].steps[11].remove.field",
            ),
            (
                "path into a map",
                shop_with(11, json!({ "remove": { "field": "labels.k" } })),
                "upcasters.shop.Order[0].steps[11].remove.field",
            ),
            (
                "destination not in target",
                shop_with(
                    4,
                    json!({ "rename": { "from": "address", "to": "delivery" } }),
                ),
                "upcasters.shop.Order[0].steps[4].rename.to",
            ),
            (
                "destination occupied",
                shop_with(11, json!({ "rename": { "from": "note", "to": "id" } })),
                "upcasters.shop.Order[0].steps[11].rename.to",
            ),
            (
                "move across elements",
                shop_with(11, json!({ "copy": { "from": "items.sku", "to": "note" } })),
                "upcasters.shop.Order[0].steps[11].copy.to",
            ),
            (
                "convert a bool",
                shop_with(8, json!({ "convert": { "field": "flag", "to": "int32" } })),
                "upcasters.shop.Order[0].steps[8].convert.field",
            ),
            (
                "convert to the wrong type",
                shop_with(8, json!({ "convert": { "field": "big", "to": "string" } })),
                "upcasters.shop.Order[0].steps[8].convert.to",
            ),
            (
                "rounding a double",
                shop_with(
                    1,
                    json!({ "convert": { "field": "amount_text", "to": "double", "round": "floor", "rename_to": "amount" } }),
                ),
                "upcasters.shop.Order[0].steps[1].convert.round",
            ),
            (
                "rename_to elsewhere",
                shop_with(
                    1,
                    json!({ "convert": { "field": "amount_text", "to": "double", "rename_to": "x.amount" } }),
                ),
                "upcasters.shop.Order[0].steps[1].convert.rename_to",
            ),
            (
                "unknown rounding",
                shop_with(
                    0,
                    json!({ "convert": { "field": "total", "to": "int64", "round": "up" } }),
                ),
                "upcasters.shop.Order[0].steps[0].convert.round",
            ),
            (
                "enum value not in source",
                shop_with(
                    2,
                    json!({ "map_values": { "field": "status", "values": { "STATUS_GONE": "STATUS_VOID" } } }),
                ),
                "upcasters.shop.Order[0].steps[2].map_values.values.STATUS_GONE",
            ),
            (
                "enum value not in target",
                shop_with(
                    2,
                    json!({ "map_values": { "field": "status", "values": { "STATUS_PAID": "STATUS_GONE" } } }),
                ),
                "upcasters.shop.Order[0].steps[2].map_values.values.STATUS_PAID",
            ),
            (
                "map_values on a number",
                shop_with(
                    8,
                    json!({ "map_values": { "field": "big", "values": { "1": "2" } } }),
                ),
                "upcasters.shop.Order[0].steps[8].map_values.field",
            ),
            (
                "value of the wrong type",
                shop_with(10, json!({ "set": { "field": "currency", "value": [1] } })),
                "upcasters.shop.Order[0].steps[10].set.value",
            ),
            (
                "null value",
                shop_with(
                    10,
                    json!({ "set_default": { "field": "currency", "value": null } }),
                ),
                "upcasters.shop.Order[0].steps[10].set_default.value",
            ),
            (
                "field in neither schema",
                shop_with(10, json!({ "set": { "field": "curency", "value": "EUR" } })),
                "upcasters.shop.Order[0].steps[10].set.field",
            ),
            (
                "leftover field",
                shop_with(11, serde_json::Value::Null),
                "upcasters.shop.Order[0]",
            ),
            (
                "unregistered code step",
                shop_with(11, json!({ "code": "drop_note" })),
                "upcasters.shop.Order[0].steps[11].code",
            ),
        ];
        for (name, chain, path) in cases {
            let errors = build_shop(chain, &CodeSteps::default())
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert!(
                errors.iter().any(|error| error.path == path),
                "{name}: expected {path}, got {errors:?}"
            );
        }
        let schemas = shop_schemas();
        let unknown = config(schemas.path(), &json!({ "shop.Nope": [] }), None);
        let errors = build(&unknown, &registry(schemas.path()), &CodeSteps::default())
            .expect_err("unknown event type");
        assert_eq!(errors[0].path, "upcasters.shop.Nope");
    }

    #[test]
    fn changes_no_step_covers_are_warnings() {
        let warned = |chain: serde_json::Value, needle: &str| {
            let upcasters = build_shop(chain, &CodeSteps::default())
                .unwrap_or_else(|errors| panic!("{needle}: still valid, got {errors:?}"));
            assert!(
                upcasters
                    .warnings()
                    .iter()
                    .any(|warning| warning.path == "upcasters.shop.Order[0]"
                        && warning.message.contains(needle)),
                "{needle}: {:?}",
                upcasters.warnings()
            );
        };
        warned(
            shop_with(8, serde_json::Value::Null),
            "field big is int64 here but int32",
        );
        warned(
            shop_with(10, serde_json::Value::Null),
            "field currency is new in v2",
        );
        warned(shop_with(2, serde_json::Value::Null), "STATUS_PAID");
        warned(
            shop_with(6, serde_json::Value::Null),
            "field shipping.country is new in v2",
        );

        let schemas = crate::envelope::tests::example_decoder().registry().clone();
        let mut config = config(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas")),
            &json!({}),
            None,
        );
        config.upcasters.clear();
        let upcasters =
            build(&config, &schemas, &CodeSteps::default()).expect("no chains is valid");
        assert!(
            upcasters
                .warnings()
                .iter()
                .any(|warning| warning.path == "upcasters"
                    && warning.message.contains("orders.OrderCreated"))
        );
    }

    struct UppercaseId;

    impl Upcaster for UppercaseId {
        fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
            let Some(id) = payload.get("id").and_then(|id| id.as_str()) else {
                return Ok(());
            };
            if id.is_empty() || !id.is_ascii() {
                return Err(StepError::new(
                    "id",
                    Problem::Other("not an ascii id".into()),
                ));
            }
            let upper = id.to_ascii_uppercase();
            payload.set("id", Value::String(upper));
            Ok(())
        }

        fn describe(&self) -> String {
            "upper-cases id".into()
        }

        fn effects(&self) -> Vec<Effect> {
            vec![Effect::Reads("id".into()), Effect::Writes("id".into())]
        }
    }

    #[test]
    fn code_steps_run_through_the_same_trait() {
        let mut code = CodeSteps::default();
        code.register("uppercase_id", UppercaseId);
        let mut chain = shop_chain();
        chain[0]["steps"]
            .as_array_mut()
            .expect("steps")
            .push(json!({ "code": "uppercase_id" }));
        let schemas = shop_schemas();
        let config = config(schemas.path(), &json!({ "shop.Order": chain }), None);
        let upcasters = build(&config, &registry(schemas.path()), &code).expect("valid");
        let hops = upcasters.chains();
        assert_eq!(
            hops["shop.Order"][0].describe().last().map(String::as_str),
            Some("code uppercase_id: upper-cases id")
        );
        let v2 = upcasters
            .upcast_payload(
                "shop.Order",
                1,
                2,
                shop_v1(schemas.path(), json!({ "id": "ab-1" })),
            )
            .expect("upcasts");
        assert_eq!(serde_json::to_value(&v2).expect("json")["id"], "AB-1");
        let error = upcasters
            .upcast_payload(
                "shop.Order",
                1,
                2,
                shop_v1(schemas.path(), json!({ "id": "å" })),
            )
            .expect_err("the code step refuses");
        assert!(
            matches!(&error, UpcastError::Step(failure) if failure.kind == "code" && failure.step == 12),
            "{error}"
        );
        let _: Arc<dyn Upcaster> = Arc::new(UppercaseId);
    }

    #[test]
    fn a_pin_is_a_ceiling_that_no_hop_may_jump() {
        let schemas = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas"));
        let registry = registry(schemas);
        let skipping = json!({ "orders.OrderCreated": [
            { "from": 1, "to": 3, "steps": [
                { "rename": { "from": "total", "to": "total_amount_cents" } }
            ] },
            { "from": 2, "to": 3, "steps": [
                { "convert": { "field": "total_amount", "to": "int64", "multiply": 100, "rename_to": "total_amount_cents" } }
            ] }
        ] });
        let errors = build(
            &config(schemas, &skipping, Some(2)),
            &registry,
            &CodeSteps::default(),
        )
        .expect_err("a hop from v1 to v3 jumps the pin");
        assert!(
            errors
                .iter()
                .any(|error| error.path == "sinks.out.schema_version"),
            "{errors:?}"
        );
    }
}
