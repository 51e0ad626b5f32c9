//! Two [`SchemaRegistry`]s (an older copy of the schemas and the current one)
//! and the upcaster chains -> the [`Finding`]s of `jetline schema diff`
//! (`cli/schema.rs` reads the files, this module only compares).
//!
//! Stored events are the reason for every rule: an event written at
//! `(event_type, version)` stays in its stream, in binary or JSON, and must
//! still be read and brought to the newest version. So
//!
//! - within a version that both copies have, the message must read the same
//!   bytes and the same JSON as before (buf's WIRE and WIRE_JSON rules, by
//!   field number, into nested messages and enums by structure);
//! - a version or event type that disappears leaves its stored events
//!   unreadable;
//! - a new version must be reached by the chain from every older version, and
//!   a field it renames (same number, new name) needs a step that moves it,
//!   since upcasting goes by names.
//!
//! Each [`Rule`] names the buf rule it corresponds to; the README lists where
//! Jetline's differ.
//!
//! **Invariant:** pure: descriptors and the chains' configuration in,
//! findings out; no IO, and the same inputs give the same findings in the
//! same order.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt,
};

use prost_reflect::{Cardinality, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use crate::{
    config::{ConfigErrors, UnknownFields, parse_at},
    schema::SchemaRegistry,
    upcast::{
        kind_name,
        steps::{HopConfig, StepConfig},
    },
};

/// Whether a finding makes the change unsafe (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// What changed, for the reader: a new version, a new event type.
    Info,
    /// Stored events stay readable, but something of them may be lost or
    /// read differently.
    Warning,
    /// Stored events can no longer be read, or no longer reach the newest
    /// version.
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What a finding breaks, after buf's categories (WIRE is the stricter
/// subset: what breaks binary events breaks their JSON too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// Stored binary events (and so JSON ones too).
    Wire,
    /// Stored JSON events, or what names mean.
    WireJson,
    /// The chain from older versions to the newest (Jetline's own).
    Upcast,
}

impl Category {
    pub fn name(self) -> &'static str {
        match self {
            Category::Wire => "WIRE",
            Category::WireJson => "WIRE_JSON",
            Category::Upcast => "UPCAST",
        }
    }
}

/// Every check the diff makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    EventTypeNoDelete,
    EventVersionNoDelete,
    EventTypeAdded,
    EventVersionAdded,
    UpcastReachesNewest,
    UpcastStepForRename,
    FieldSameNumber,
    FieldNoDelete,
    FieldNoDeleteUnlessNumberReserved,
    FieldNoDeleteUnlessNameReserved,
    FieldSameName,
    FieldSameJsonName,
    FieldSameType,
    FieldWireCompatibleType,
    FieldWireJsonCompatibleType,
    FieldWireCompatibleCardinality,
    FieldWireJsonCompatibleCardinality,
    FieldSameOneof,
    EnumValueNoDelete,
    EnumValueNoDeleteUnlessNumberReserved,
    EnumValueNoDeleteUnlessNameReserved,
    EnumValueSameName,
    ReservedMessageNoDelete,
    ReservedEnumNoDelete,
}

impl Rule {
    /// The rule's name in output, buf's where the rule is buf's.
    pub fn id(self) -> &'static str {
        match self {
            Rule::EventTypeNoDelete => "EVENT_TYPE_NO_DELETE",
            Rule::EventVersionNoDelete => "EVENT_VERSION_NO_DELETE",
            Rule::EventTypeAdded => "EVENT_TYPE_ADDED",
            Rule::EventVersionAdded => "EVENT_VERSION_ADDED",
            Rule::UpcastReachesNewest => "UPCAST_REACHES_NEWEST",
            Rule::UpcastStepForRename => "UPCAST_STEP_FOR_RENAME",
            Rule::FieldSameNumber => "FIELD_SAME_NUMBER",
            Rule::FieldNoDelete => "FIELD_NO_DELETE",
            Rule::FieldNoDeleteUnlessNumberReserved => "FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED",
            Rule::FieldNoDeleteUnlessNameReserved => "FIELD_NO_DELETE_UNLESS_NAME_RESERVED",
            Rule::FieldSameName => "FIELD_SAME_NAME",
            Rule::FieldSameJsonName => "FIELD_SAME_JSON_NAME",
            Rule::FieldSameType => "FIELD_SAME_TYPE",
            Rule::FieldWireCompatibleType => "FIELD_WIRE_COMPATIBLE_TYPE",
            Rule::FieldWireJsonCompatibleType => "FIELD_WIRE_JSON_COMPATIBLE_TYPE",
            Rule::FieldWireCompatibleCardinality => "FIELD_WIRE_COMPATIBLE_CARDINALITY",
            Rule::FieldWireJsonCompatibleCardinality => "FIELD_WIRE_JSON_COMPATIBLE_CARDINALITY",
            Rule::FieldSameOneof => "FIELD_SAME_ONEOF",
            Rule::EnumValueNoDelete => "ENUM_VALUE_NO_DELETE",
            Rule::EnumValueNoDeleteUnlessNumberReserved => {
                "ENUM_VALUE_NO_DELETE_UNLESS_NUMBER_RESERVED"
            }
            Rule::EnumValueNoDeleteUnlessNameReserved => {
                "ENUM_VALUE_NO_DELETE_UNLESS_NAME_RESERVED"
            }
            Rule::EnumValueSameName => "ENUM_VALUE_SAME_NAME",
            Rule::ReservedMessageNoDelete => "RESERVED_MESSAGE_NO_DELETE",
            Rule::ReservedEnumNoDelete => "RESERVED_ENUM_NO_DELETE",
        }
    }

    /// The buf breaking rule that checks the same thing, where there is one
    /// (for Jetline's own rules, the nearest: buf compares messages by full
    /// name, Jetline `(event type, version)` pairs).
    pub fn buf_rule(self) -> Option<&'static str> {
        match self {
            Rule::EventTypeNoDelete | Rule::EventVersionNoDelete => Some("MESSAGE_NO_DELETE"),
            Rule::FieldSameNumber => Some("FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED"),
            Rule::UpcastStepForRename => Some("FIELD_SAME_NAME"),
            Rule::EventTypeAdded | Rule::EventVersionAdded | Rule::UpcastReachesNewest => None,
            Rule::FieldNoDelete
            | Rule::FieldNoDeleteUnlessNumberReserved
            | Rule::FieldNoDeleteUnlessNameReserved
            | Rule::FieldSameName
            | Rule::FieldSameJsonName
            | Rule::FieldSameType
            | Rule::FieldWireCompatibleType
            | Rule::FieldWireJsonCompatibleType
            | Rule::FieldWireCompatibleCardinality
            | Rule::FieldWireJsonCompatibleCardinality
            | Rule::FieldSameOneof
            | Rule::EnumValueNoDelete
            | Rule::EnumValueNoDeleteUnlessNumberReserved
            | Rule::EnumValueNoDeleteUnlessNameReserved
            | Rule::EnumValueSameName
            | Rule::ReservedMessageNoDelete
            | Rule::ReservedEnumNoDelete => Some(self.id()),
        }
    }

    pub fn category(self) -> Category {
        match self {
            Rule::EventTypeNoDelete
            | Rule::EventVersionNoDelete
            | Rule::FieldSameNumber
            | Rule::FieldNoDelete
            | Rule::FieldNoDeleteUnlessNumberReserved
            | Rule::FieldWireCompatibleType
            | Rule::FieldWireCompatibleCardinality
            | Rule::FieldSameOneof
            | Rule::EnumValueNoDeleteUnlessNumberReserved
            | Rule::ReservedMessageNoDelete
            | Rule::ReservedEnumNoDelete => Category::Wire,
            Rule::FieldNoDeleteUnlessNameReserved
            | Rule::FieldSameName
            | Rule::FieldSameJsonName
            | Rule::FieldSameType
            | Rule::FieldWireJsonCompatibleType
            | Rule::FieldWireJsonCompatibleCardinality
            | Rule::EnumValueNoDelete
            | Rule::EnumValueNoDeleteUnlessNameReserved
            | Rule::EnumValueSameName => Category::WireJson,
            Rule::EventTypeAdded
            | Rule::EventVersionAdded
            | Rule::UpcastReachesNewest
            | Rule::UpcastStepForRename => Category::Upcast,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Where a finding is; the event type is the key it is listed under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub version: Option<u32>,
    /// Full name of the message (or enum) concerned, in the current schemas
    /// (the old ones' where it is gone).
    pub message: Option<String>,
    /// Dotted path of the field from the payload's root, e.g. `items.sku`.
    pub field: Option<String>,
    /// Key path in the configuration, e.g. `upcasters.orders.OrderCreated[1]`.
    pub config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub rule: Rule,
    pub severity: Severity,
    pub location: Location,
    pub message: String,
}

/// The findings per event type: every type of either copy, sorted, each with
/// its findings (none when it did not change).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub event_types: BTreeMap<String, Vec<Finding>>,
}

impl Report {
    pub fn count(&self, severity: Severity) -> usize {
        self.event_types
            .values()
            .flatten()
            .filter(|finding| finding.severity == severity)
            .count()
    }

    /// Whether some stored event would no longer be read or upcast.
    pub fn is_breaking(&self) -> bool {
        self.count(Severity::Error) > 0
    }
}

/// What the diff needs of one hop of a configured chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopSummary {
    pub to: u32,
    /// `upcasters.<event type>[<index>]`.
    pub path: String,
    /// The fields its steps move away (`rename`, `copy`, `convert` with
    /// `rename_to`), as (from, to) dotted paths.
    pub moves: Vec<(String, String)>,
    /// Whether a code step may move fields the diff cannot see.
    pub has_code_steps: bool,
}

/// The configured chains, per event type and the version each hop starts
/// from. Only their shape: the steps themselves are checked by `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chains {
    hops: BTreeMap<String, BTreeMap<u32, HopSummary>>,
}

impl Chains {
    /// Reads `upcasters:` as the configuration holds it. A second hop from
    /// one version is `check`'s error; the first is kept, as there.
    pub fn from_config(
        upcasters: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut hops: BTreeMap<String, BTreeMap<u32, HopSummary>> = BTreeMap::new();
        for (event_type, value) in upcasters {
            let path = format!("upcasters.{event_type}");
            let Some(configs) = parse_at::<Vec<HopConfig>>(&mut errors, &path, value.clone())
            else {
                continue;
            };
            let chain = hops.entry(event_type.clone()).or_default();
            for (index, hop) in configs.iter().enumerate() {
                chain.entry(hop.from).or_insert_with(|| HopSummary {
                    to: hop.to,
                    path: format!("{path}[{index}]"),
                    moves: hop.steps.iter().filter_map(moved_field).collect(),
                    has_code_steps: hop
                        .steps
                        .iter()
                        .any(|step| matches!(step, StepConfig::Code(_))),
                });
            }
        }
        if errors.is_empty() {
            Ok(Self { hops })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn of(&self, event_type: &str) -> Option<&BTreeMap<u32, HopSummary>> {
        self.hops.get(event_type)
    }
}

/// The (from, to) of a step that moves a field away from where it was.
fn moved_field(step: &StepConfig) -> Option<(String, String)> {
    match step {
        StepConfig::Rename(moved) | StepConfig::Copy(moved) => {
            Some((moved.from.clone(), moved.to.clone()))
        }
        StepConfig::Convert(convert) => convert.rename_to.as_ref().map(|rename_to| {
            let to = match convert.field.rsplit_once('.') {
                Some((parents, _)) => format!("{parents}.{rename_to}"),
                None => rename_to.clone(),
            };
            (convert.field.clone(), to)
        }),
        StepConfig::Set(_)
        | StepConfig::SetDefault(_)
        | StepConfig::Remove(_)
        | StepConfig::MapValues(_)
        | StepConfig::Code(_) => None,
    }
}

/// Compares the `old` schemas with the `new` ones. `unknown_fields` is the
/// current configuration's: with `reject`, a field that stored events hold
/// and the schema no longer declares makes them invalid.
pub fn diff(
    old: &SchemaRegistry,
    new: &SchemaRegistry,
    chains: &Chains,
    unknown_fields: UnknownFields,
) -> Report {
    let old_types = old.event_types();
    let new_types = new.event_types();
    let names: BTreeSet<&str> = old_types.keys().chain(new_types.keys()).copied().collect();
    let mut report = Report::default();
    for event_type in names {
        let mut findings = Vec::new();
        let old_versions = old_types.get(event_type).map(Vec::as_slice);
        let new_versions = new_types.get(event_type).map(Vec::as_slice);
        match (old_versions, new_versions) {
            (Some(versions), None) => findings.push(Finding {
                rule: Rule::EventTypeNoDelete,
                severity: Severity::Error,
                location: Location::default(),
                message: format!(
                    "the event type is gone: its stored events ({}) can no longer be read",
                    listed(versions)
                ),
            }),
            (None, Some(versions)) => {
                findings.push(Finding {
                    rule: Rule::EventTypeAdded,
                    severity: Severity::Info,
                    location: Location::default(),
                    message: format!("a new event type ({})", listed(versions)),
                });
                let chain = ChainCheck {
                    event_type,
                    versions,
                    added: versions,
                    hops: chains.of(event_type),
                };
                chain.check(new, &mut findings);
            }
            (Some(old_versions), Some(new_versions)) => {
                for &version in old_versions {
                    let (Some(before), Some(after)) = (
                        old.resolve(event_type, version),
                        new.resolve(event_type, version),
                    ) else {
                        findings.push(Finding {
                            rule: Rule::EventVersionNoDelete,
                            severity: Severity::Error,
                            location: Location {
                                version: Some(version),
                                ..Location::default()
                            },
                            message: format!(
                                "v{version} is gone: its stored events can no longer be read"
                            ),
                        });
                        continue;
                    };
                    let mut within = WithinVersion {
                        version,
                        unknown_fields,
                        findings: &mut findings,
                        compared: HashSet::new(),
                    };
                    within.messages(before, after, "");
                }
                let added: Vec<u32> = new_versions
                    .iter()
                    .copied()
                    .filter(|version| !old_versions.contains(version))
                    .collect();
                if !added.is_empty() {
                    let chain = ChainCheck {
                        event_type,
                        versions: new_versions,
                        added: &added,
                        hops: chains.of(event_type),
                    };
                    chain.check(new, &mut findings);
                }
            }
            (None, None) => {}
        }
        report.event_types.insert(event_type.to_owned(), findings);
    }
    report
}

/// `v1, v2`.
fn listed(versions: &[u32]) -> String {
    versions
        .iter()
        .map(|version| format!("v{version}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `items` + `sku` -> `items.sku`.
fn joined(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// The chain of an event type with new versions.
struct ChainCheck<'a> {
    event_type: &'a str,
    /// Every version in the current schemas, ascending.
    versions: &'a [u32],
    /// The versions the old copy did not have.
    added: &'a [u32],
    hops: Option<&'a BTreeMap<u32, HopSummary>>,
}

impl ChainCheck<'_> {
    fn check(&self, new: &SchemaRegistry, findings: &mut Vec<Finding>) {
        let Some(&newest) = self.versions.last() else {
            return;
        };
        let chain_path = format!("upcasters.{}", self.event_type);
        let mut reaching = Vec::new();
        for &version in self.versions.iter().filter(|version| **version < newest) {
            match self.walk(version, newest) {
                Ok(()) => reaching.push(version),
                Err(problem) => findings.push(Finding {
                    rule: Rule::UpcastReachesNewest,
                    severity: Severity::Error,
                    location: Location {
                        version: Some(version),
                        config: Some(chain_path.clone()),
                        ..Location::default()
                    },
                    message: format!(
                        "v{version} cannot be upcast to the newest, v{newest}: {problem}"
                    ),
                }),
            }
        }
        for &version in self.added {
            let message = if version < newest {
                format!("v{version} is new (the newest is v{newest})")
            } else if self.versions.len() == 1 {
                format!("v{version} is new, the only version")
            } else if reaching.is_empty() {
                format!("v{version} is new; no older version reaches it")
            } else {
                format!(
                    "v{version} is new; {} reach it through {chain_path}",
                    listed(&reaching)
                )
            };
            findings.push(Finding {
                rule: Rule::EventVersionAdded,
                severity: Severity::Info,
                location: Location {
                    version: Some(version),
                    message: new
                        .resolve(self.event_type, version)
                        .map(|message| message.full_name().to_owned()),
                    ..Location::default()
                },
                message,
            });
        }
        for (from, hop) in self.hops.into_iter().flatten() {
            if !self.added.contains(&hop.to) {
                continue;
            }
            if let (Some(source), Some(target)) = (
                new.resolve(self.event_type, *from),
                new.resolve(self.event_type, hop.to),
            ) {
                renames_without_step(*from, hop, source, target, findings);
            }
        }
    }

    /// Follows the hops from `version`: `Err` says where the chain stops.
    fn walk(&self, version: u32, newest: u32) -> Result<(), String> {
        let Some(hops) = self.hops else {
            return Err(format!("upcasters has no chain for {}", self.event_type));
        };
        let mut current = version;
        while current < newest {
            let Some(hop) = hops.get(&current) else {
                return Err(format!("no hop starts from v{current}"));
            };
            if hop.to <= current || !self.versions.contains(&hop.to) || hop.to > newest {
                return Err(format!(
                    "{} leads from v{current} to v{}, which is not a newer version of the type",
                    hop.path, hop.to
                ));
            }
            current = hop.to;
        }
        Ok(())
    }
}

/// A field that keeps its number but changes its name from `source` to
/// `target`: upcasting goes by names, so without a step moving it its values
/// would be left behind (and the chain refused at start-up).
fn renames_without_step(
    from: u32,
    hop: &HopSummary,
    source: &MessageDescriptor,
    target: &MessageDescriptor,
    findings: &mut Vec<Finding>,
) {
    let mut renames = Vec::new();
    collect_renames(source, target, "", &mut Vec::new(), &mut renames);
    for (old_path, new_path, number, message) in renames {
        if hop.moves.iter().any(|(moved, _)| *moved == old_path) {
            continue;
        }
        let (severity, consequence) = if hop.has_code_steps {
            (
                Severity::Warning,
                "unless one of its code steps moves it (Jetline cannot see into code steps)",
            )
        } else {
            (
                Severity::Error,
                "so its values would not reach the new version",
            )
        };
        findings.push(Finding {
            rule: Rule::UpcastStepForRename,
            severity,
            location: Location {
                version: Some(hop.to),
                message: Some(message),
                field: Some(new_path.clone()),
                config: Some(hop.path.clone()),
            },
            message: format!(
                "field {number} is {old_path} in v{from} and {new_path} in v{}, and {} has no step moving {old_path} ({consequence}): add `rename: {{ from: {old_path}, to: {new_path} }}`",
                hop.to, hop.path
            ),
        });
    }
}

/// (old path, new path, number, message) of each renamed field, looking
/// into nested messages that keep their name. `ancestors` are the message
/// pairs being walked: a recursive type is entered once per path.
fn collect_renames(
    source: &MessageDescriptor,
    target: &MessageDescriptor,
    prefix: &str,
    ancestors: &mut Vec<(String, String)>,
    renames: &mut Vec<(String, String, u32, String)>,
) {
    let pair = (source.full_name().to_owned(), target.full_name().to_owned());
    if ancestors.contains(&pair) {
        return;
    }
    ancestors.push(pair);
    for field in source.fields() {
        if let Some(same_name) = target.get_field_by_name(field.name()) {
            if let (Kind::Message(inner_source), Kind::Message(inner_target), false) =
                (field.kind(), same_name.kind(), field.is_map())
            {
                let path = joined(prefix, field.name());
                collect_renames(&inner_source, &inner_target, &path, ancestors, renames);
            }
            continue;
        }
        if let Some(renamed) = target.get_field(field.number())
            && source.get_field_by_name(renamed.name()).is_none()
        {
            renames.push((
                joined(prefix, field.name()),
                joined(prefix, renamed.name()),
                field.number(),
                target.full_name().to_owned(),
            ));
        }
    }
    ancestors.pop();
}

/// One version that both copies have: its old and new messages must read
/// the same stored events.
struct WithinVersion<'a> {
    version: u32,
    unknown_fields: UnknownFields,
    findings: &'a mut Vec<Finding>,
    /// Message and enum pairs (old, new full name) already compared.
    compared: HashSet<(String, String)>,
}

impl WithinVersion<'_> {
    fn push(&mut self, rule: Rule, severity: Severity, at: (&str, &str), message: String) {
        let (message_name, field) = at;
        self.findings.push(Finding {
            rule,
            severity,
            location: Location {
                version: Some(self.version),
                message: Some(message_name.to_owned()),
                field: (!field.is_empty()).then(|| field.to_owned()),
                config: None,
            },
            message,
        });
    }

    fn first_time(&mut self, old: &str, new: &str) -> bool {
        self.compared.insert((old.to_owned(), new.to_owned()))
    }

    /// Compares two messages field by field, by number; `path` is where
    /// they sit in the payload.
    fn messages(&mut self, old: &MessageDescriptor, new: &MessageDescriptor, path: &str) {
        // Each pair once: recursive types end here.
        if !self.first_time(old.full_name(), new.full_name()) {
            return;
        }
        let new_ranges: Vec<(u64, u64)> = new
            .reserved_ranges()
            .map(|range| (u64::from(range.start), u64::from(range.end)))
            .collect();
        for range in old.reserved_ranges() {
            let (start, end) = (u64::from(range.start), u64::from(range.end));
            if !covered((start, end), &new_ranges) {
                self.push(
                    Rule::ReservedMessageNoDelete,
                    Severity::Error,
                    (new.full_name(), path),
                    format!(
                        "{} no longer reserves {}: a field given one of them would misread stored events",
                        new.full_name(),
                        shown_range(start, end)
                    ),
                );
            }
        }
        for name in old.reserved_names() {
            if !new.reserved_names().any(|reserved| reserved == name) {
                self.push(
                    Rule::ReservedMessageNoDelete,
                    Severity::Error,
                    (new.full_name(), path),
                    format!(
                        "{} no longer reserves the name {name}: a field given it would take the values of stored JSON events",
                        new.full_name()
                    ),
                );
            }
        }
        for old_field in old.fields() {
            match new.get_field(old_field.number()) {
                Some(new_field) => self.fields(&old_field, &new_field, new, path),
                None => self.removed_field(&old_field, new, path),
            }
        }
    }

    fn removed_field(&mut self, old_field: &FieldDescriptor, new: &MessageDescriptor, path: &str) {
        let (name, number) = (old_field.name(), old_field.number());
        let field_path = joined(path, name);
        let at = (new.full_name(), field_path.as_str());
        if let Some(moved) = new.get_field_by_name(name) {
            self.push(
                Rule::FieldSameNumber,
                Severity::Error,
                at,
                format!(
                    "{name} changed its number from {number} to {}: stored binary events hold it as {number}",
                    moved.number()
                ),
            );
            return;
        }
        let removal = Removal {
            element: Element::Field,
            name,
            number: i64::from(number),
            number_reserved: new.reserved_ranges().any(|range| range.contains(&number)),
            name_reserved: new.reserved_names().any(|reserved| reserved == name),
        };
        let (rule, severity, message) = removal.judge(self.unknown_fields);
        self.push(rule, severity, at, message);
    }

    /// Two fields with the same number.
    fn fields(
        &mut self,
        old_field: &FieldDescriptor,
        new_field: &FieldDescriptor,
        new: &MessageDescriptor,
        path: &str,
    ) {
        let field_path = joined(path, new_field.name());
        let at = (new.full_name(), field_path.as_str());
        let number = new_field.number();
        if old_field.name() != new_field.name() {
            self.push(
                Rule::FieldSameName,
                Severity::Error,
                at,
                format!(
                    "field {number} was renamed from {} to {} within v{}: stored JSON events name it {}; rename a field in a new version, with a rename step",
                    old_field.name(),
                    new_field.name(),
                    self.version,
                    old_field.json_name()
                ),
            );
        } else if old_field.json_name() != new_field.json_name() {
            self.push(
                Rule::FieldSameJsonName,
                Severity::Error,
                at,
                format!(
                    "{}'s JSON name changed from {} to {}: stored JSON events use {}",
                    new_field.name(),
                    old_field.json_name(),
                    new_field.json_name(),
                    old_field.json_name()
                ),
            );
        }
        let (old_cardinality, new_cardinality) = (cardinality(old_field), cardinality(new_field));
        if old_cardinality.wire_group() != new_cardinality.wire_group() {
            self.push(
                Rule::FieldWireCompatibleCardinality,
                Severity::Error,
                at,
                format!(
                    "{} changed from {} to {}",
                    new_field.name(),
                    old_cardinality.name(),
                    new_cardinality.name()
                ),
            );
            return;
        }
        if old_cardinality != new_cardinality
            && old_cardinality.json_group() != new_cardinality.json_group()
        {
            self.push(
                Rule::FieldWireJsonCompatibleCardinality,
                Severity::Error,
                at,
                format!(
                    "{} changed from {} to {}: their JSON differs",
                    new_field.name(),
                    old_cardinality.name(),
                    new_cardinality.name()
                ),
            );
            return;
        }
        let oneof_name = |field: &FieldDescriptor| {
            field
                .containing_oneof()
                .filter(|oneof| !oneof.is_synthetic())
                .map(|oneof| oneof.name().to_owned())
        };
        let (old_oneof, new_oneof) = (oneof_name(old_field), oneof_name(new_field));
        if old_oneof != new_oneof {
            let shown = |oneof: &Option<String>| match oneof {
                Some(name) => format!("oneof {name}"),
                None => "no oneof".to_owned(),
            };
            self.push(
                Rule::FieldSameOneof,
                Severity::Error,
                at,
                format!(
                    "{} moved from {} to {}: stored events may hold more than one of its members",
                    new_field.name(),
                    shown(&old_oneof),
                    shown(&new_oneof)
                ),
            );
        }
        self.kinds(old_field, new_field, at);
    }

    fn kinds(
        &mut self,
        old_field: &FieldDescriptor,
        new_field: &FieldDescriptor,
        at: (&str, &str),
    ) {
        let (old_kind, new_kind) = (old_field.kind(), new_field.kind());
        let name = new_field.name();
        match (&old_kind, &new_kind) {
            (Kind::Message(old_message), Kind::Message(new_message)) => {
                if old_field.is_group() != new_field.is_group() {
                    self.push(
                        Rule::FieldWireCompatibleType,
                        Severity::Error,
                        at,
                        format!(
                            "{name} changed between a group and a message: their encodings differ"
                        ),
                    );
                } else if (is_well_known(old_message) || is_well_known(new_message))
                    && old_message.full_name() != new_message.full_name()
                {
                    self.push(
                        Rule::FieldWireJsonCompatibleType,
                        Severity::Error,
                        at,
                        format!(
                            "{name} changed from {} to {}: a well-known type has a JSON form of its own",
                            old_message.full_name(),
                            new_message.full_name()
                        ),
                    );
                } else {
                    // By structure: a message's name is in neither encoding.
                    self.messages(old_message, new_message, at.1);
                }
            }
            (Kind::Enum(old_enum), Kind::Enum(new_enum)) => {
                self.enums(old_enum, new_enum, at.1);
            }
            _ => {
                let (old_group, new_group) = (wire_group(&old_kind), wire_group(&new_kind));
                // buf lets string become bytes on the wire, not the reverse.
                let string_to_bytes = matches!((&old_kind, &new_kind), (Kind::String, Kind::Bytes));
                let change = format!(
                    "{name} changed from {} to {}",
                    kind_name(&old_kind),
                    kind_name(&new_kind)
                );
                if old_group != new_group && !string_to_bytes {
                    self.push(
                        Rule::FieldWireCompatibleType,
                        Severity::Error,
                        at,
                        format!("{change}: stored binary events no longer decode the same"),
                    );
                } else if json_group(&old_kind) != json_group(&new_kind) {
                    self.push(
                        Rule::FieldWireJsonCompatibleType,
                        Severity::Error,
                        at,
                        format!("{change}: stored JSON events no longer parse the same"),
                    );
                } else if old_kind != new_kind {
                    self.push(
                        Rule::FieldSameType,
                        Severity::Warning,
                        at,
                        format!(
                            "{change}: compatible on the wire and in JSON, but a stored value outside the new type's range reads differently"
                        ),
                    );
                }
            }
        }
    }

    fn enums(&mut self, old: &EnumDescriptor, new: &EnumDescriptor, path: &str) {
        if !self.first_time(old.full_name(), new.full_name()) {
            return;
        }
        let at = (new.full_name(), path);
        let new_ranges: Vec<(i64, i64)> = new
            .reserved_ranges()
            .map(|range| (i64::from(*range.start()), i64::from(*range.end())))
            .collect();
        for range in old.reserved_ranges() {
            let (start, end) = (i64::from(*range.start()), i64::from(*range.end()));
            if !covered_inclusive((start, end), &new_ranges) {
                self.push(
                    Rule::ReservedEnumNoDelete,
                    Severity::Error,
                    at,
                    format!(
                        "{} no longer reserves {}",
                        new.full_name(),
                        if start == end {
                            start.to_string()
                        } else {
                            format!("{start} to {end}")
                        }
                    ),
                );
            }
        }
        for name in old.reserved_names() {
            if !new.reserved_names().any(|reserved| reserved == name) {
                self.push(
                    Rule::ReservedEnumNoDelete,
                    Severity::Error,
                    at,
                    format!("{} no longer reserves the name {name}", new.full_name()),
                );
            }
        }
        for value in old.values() {
            let (name, number) = (value.name(), value.number());
            // Aliases share a number: the value survives under any of them.
            let names: Vec<String> = new
                .values()
                .filter(|candidate| candidate.number() == number)
                .map(|candidate| candidate.name().to_owned())
                .collect();
            if names.iter().any(|candidate| candidate == name) {
                continue;
            }
            if let Some(renamed) = names.first() {
                self.push(
                    Rule::EnumValueSameName,
                    Severity::Error,
                    at,
                    format!(
                        "value {number} of {} was renamed from {name} to {renamed}: stored JSON events spell it {name}",
                        new.full_name()
                    ),
                );
                continue;
            }
            let removal = Removal {
                element: Element::EnumValue,
                name,
                number: i64::from(number),
                number_reserved: new.reserved_ranges().any(|range| range.contains(&number)),
                name_reserved: new.reserved_names().any(|reserved| reserved == name),
            };
            let (rule, severity, message) = removal.judge(self.unknown_fields);
            self.push(rule, severity, at, message);
        }
    }
}

/// What was removed from a version both copies have.
#[derive(Debug, Clone, Copy)]
enum Element {
    Field,
    EnumValue,
}

/// A field or enum value gone from an existing version, and what of it the
/// new schema reserves.
struct Removal<'a> {
    element: Element,
    name: &'a str,
    number: i64,
    number_reserved: bool,
    name_reserved: bool,
}

impl Removal<'_> {
    /// buf's ladder: the number unreserved breaks the wire, the name
    /// unreserved breaks JSON; both reserved is still a break for stored
    /// events while unknown fields are rejected.
    fn judge(&self, unknown_fields: UnknownFields) -> (Rule, Severity, String) {
        let Removal { name, number, .. } = *self;
        let (element, [unless_number, unless_name, no_delete], stored, when_allowed) =
            match self.element {
                Element::Field => (
                    "field",
                    [
                        Rule::FieldNoDeleteUnlessNumberReserved,
                        Rule::FieldNoDeleteUnlessNameReserved,
                        Rule::FieldNoDelete,
                    ],
                    "stored events that hold it no longer validate",
                    "its values in stored events are dropped when they are read",
                ),
                Element::EnumValue => (
                    "value",
                    [
                        Rule::EnumValueNoDeleteUnlessNumberReserved,
                        Rule::EnumValueNoDeleteUnlessNameReserved,
                        Rule::EnumValueNoDelete,
                    ],
                    "stored JSON events that name it no longer parse",
                    "stored JSON events that name it read as the default value",
                ),
            };
        let removed = format!("{name} ({number}) was removed");
        match (self.number_reserved, self.name_reserved, unknown_fields) {
            (false, _, _) => (
                unless_number,
                Severity::Error,
                format!(
                    "{removed} without reserving its number: a later {element} given {number} would misread stored events"
                ),
            ),
            (true, false, _) => (
                unless_name,
                Severity::Error,
                format!(
                    "{removed} with its number reserved but not its name: a later {element} named {name} would take over stored JSON events"
                ),
            ),
            (true, true, UnknownFields::Reject) => (
                no_delete,
                Severity::Error,
                format!(
                    "{removed} (number and name reserved): with schemas.unknown_fields: reject, {stored}; retire it in a new version instead"
                ),
            ),
            (true, true, UnknownFields::Allow) => (
                no_delete,
                Severity::Warning,
                format!("{removed} (number and name reserved): {when_allowed}"),
            ),
        }
    }
}

/// Whether the union of `ranges` (start inclusive, end exclusive) covers
/// `range`.
fn covered(range: (u64, u64), ranges: &[(u64, u64)]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    let mut next = range.0;
    for (start, end) in sorted {
        if start <= next && end > next {
            next = end;
        }
    }
    next >= range.1
}

/// As [`covered`], with both ends inclusive (enum ranges).
fn covered_inclusive(range: (i64, i64), ranges: &[(i64, i64)]) -> bool {
    let exclusive = |(start, end): (i64, i64)| (start, end.saturating_add(1));
    let shifted: Vec<(u64, u64)> = ranges
        .iter()
        .map(|range| exclusive(*range))
        .map(|(start, end)| (offset(start), offset(end)))
        .collect();
    let (start, end) = exclusive(range);
    covered((offset(start), offset(end)), &shifted)
}

/// An `i64` moved onto `u64`, keeping its order.
fn offset(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

/// `5` or `5 to 9` (an exclusive end, as descriptors hold it).
fn shown_range(start: u64, end: u64) -> String {
    if end == start + 1 {
        start.to_string()
    } else {
        format!("{start} to {}", end - 1)
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

/// A field's cardinality as buf groups them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldCardinality {
    Singular,
    Required,
    Repeated,
    Map,
}

impl FieldCardinality {
    fn name(self) -> &'static str {
        match self {
            FieldCardinality::Singular => "a singular field",
            FieldCardinality::Required => "a required field",
            FieldCardinality::Repeated => "a repeated field",
            FieldCardinality::Map => "a map",
        }
    }

    /// Maps are repeated entries on the wire.
    fn wire_group(self) -> u8 {
        match self {
            FieldCardinality::Singular => 1,
            FieldCardinality::Required => 2,
            FieldCardinality::Repeated | FieldCardinality::Map => 3,
        }
    }

    /// A map is an object in JSON, a repeated field an array.
    fn json_group(self) -> u8 {
        match self {
            FieldCardinality::Singular => 1,
            FieldCardinality::Required => 2,
            FieldCardinality::Repeated => 3,
            FieldCardinality::Map => 4,
        }
    }
}

fn cardinality(field: &FieldDescriptor) -> FieldCardinality {
    if field.is_map() {
        return FieldCardinality::Map;
    }
    match field.cardinality() {
        Cardinality::Optional => FieldCardinality::Singular,
        Cardinality::Required => FieldCardinality::Required,
        Cardinality::Repeated => FieldCardinality::Repeated,
    }
}

/// buf's wire compatibility groups (protobuf's "updating a message type"
/// rules): kinds in one group read each other's bytes.
fn wire_group(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32 | Kind::Int64 | Kind::Uint32 | Kind::Uint64 | Kind::Bool => 1,
        Kind::Sint32 | Kind::Sint64 => 2,
        Kind::String => 3,
        Kind::Bytes => 4,
        Kind::Fixed32 | Kind::Sfixed32 => 5,
        Kind::Fixed64 | Kind::Sfixed64 => 6,
        Kind::Double => 7,
        Kind::Float => 8,
        Kind::Message(_) => 10,
        Kind::Enum(_) => 11,
    }
}

/// buf's wire-and-JSON groups: kinds in one group also read each other's
/// JSON (64-bit integers are strings in JSON, 32-bit ones numbers).
fn json_group(kind: &Kind) -> u8 {
    match kind {
        Kind::Int32 | Kind::Uint32 => 1,
        Kind::Int64 | Kind::Uint64 => 2,
        Kind::Fixed32 | Kind::Sfixed32 => 3,
        Kind::Fixed64 | Kind::Sfixed64 => 4,
        Kind::Bool => 5,
        Kind::Sint32 => 6,
        Kind::Sint64 => 7,
        Kind::String => 8,
        Kind::Bytes => 9,
        Kind::Double => 10,
        Kind::Float => 11,
        Kind::Message(_) => 13,
        Kind::Enum(_) => 14,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A registry of one `.proto` file per `(package, body)`, compiled as
    /// `jetline` compiles them.
    fn registry(files: &[(&str, &str)]) -> SchemaRegistry {
        let dir = tempfile::tempdir().expect("temporary directory");
        for (package, body) in files {
            let path = dir
                .path()
                .join(format!("{}.proto", package.replace('.', "/")));
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("directories");
            let text = format!(
                "syntax = \"proto3\";\npackage {package};\nimport \"google/protobuf/timestamp.proto\";\n{body}\n"
            );
            std::fs::write(&path, text).expect("written");
        }
        let pool = crate::schema::compile(dir.path()).expect("the test schemas compile");
        SchemaRegistry::from_pool(pool, &BTreeMap::new()).expect("indexed")
    }

    fn chains(upcasters: serde_json::Value) -> Chains {
        let upcasters: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(upcasters).expect("an object");
        Chains::from_config(&upcasters).expect("valid chains")
    }

    /// `(rule, severity)` of every finding, sorted.
    fn rules(report: &Report) -> Vec<(Rule, Severity)> {
        let mut rules: Vec<_> = report
            .event_types
            .values()
            .flatten()
            .map(|finding| (finding.rule, finding.severity))
            .collect();
        rules.sort();
        rules
    }

    const THING: &str =
        "message Thing { string id = 1; int32 count = 2; repeated Part parts = 3; Kind kind = 4; }
        message Part { string sku = 1; uint32 quantity = 2; }
        enum Kind { KIND_UNSPECIFIED = 0; KIND_BIG = 1; KIND_SMALL = 2; }";

    #[test]
    fn each_rule_within_a_version_fires_on_its_change_and_only_there() {
        use Rule::*;
        use Severity::{Error, Warning};
        /// The name, the old and new schema of `t.Thing` v1, the policy, and
        /// what the diff must find.
        type Case = (
            &'static str,
            (String, String),
            UnknownFields,
            Vec<(Rule, Severity)>,
        );
        let changed = |from: &str, to: &str| {
            assert!(THING.contains(from), "{from}");
            (THING.to_owned(), THING.replace(from, to))
        };
        let reject = UnknownFields::Reject;
        let cases: Vec<Case> = vec![
            ("unchanged", changed("", ""), reject, vec![]),
            (
                "a field added, a message and an enum renamed",
                (
                    THING.to_owned(),
                    THING
                        .replace("Kind kind = 4; }", "Kind kind = 4; string note = 5; }")
                        .replace("Part", "Piece")
                        .replace("Kind", "Sort"),
                ),
                reject,
                vec![],
            ),
            (
                "string to int64",
                changed("string id = 1", "int64 id = 1"),
                reject,
                vec![(FieldWireCompatibleType, Error)],
            ),
            (
                "int32 to int64: the same varint, a string in JSON",
                changed("int32 count", "int64 count"),
                reject,
                vec![(FieldWireJsonCompatibleType, Error)],
            ),
            (
                "string to bytes",
                changed("string id = 1", "bytes id = 1"),
                reject,
                vec![(FieldWireJsonCompatibleType, Error)],
            ),
            (
                "bytes to string",
                (
                    THING.replace("string id = 1", "bytes id = 1"),
                    THING.to_owned(),
                ),
                reject,
                vec![(FieldWireCompatibleType, Error)],
            ),
            (
                "int32 to uint32",
                changed("int32 count", "uint32 count"),
                reject,
                vec![(FieldSameType, Warning)],
            ),
            (
                "a new number",
                changed("int32 count = 2", "int32 count = 7"),
                reject,
                vec![(FieldSameNumber, Error)],
            ),
            (
                "renamed",
                changed("int32 count = 2", "int32 amount = 2"),
                reject,
                vec![(FieldSameName, Error)],
            ),
            (
                "a new JSON name",
                changed("int32 count = 2", "int32 count = 2 [json_name = \"total\"]"),
                reject,
                vec![(FieldSameJsonName, Error)],
            ),
            (
                "removed",
                changed("int32 count = 2;", ""),
                reject,
                vec![(FieldNoDeleteUnlessNumberReserved, Error)],
            ),
            (
                "removed, the number reserved",
                changed("int32 count = 2;", "reserved 2;"),
                reject,
                vec![(FieldNoDeleteUnlessNameReserved, Error)],
            ),
            (
                "removed, number and name reserved, unknown fields rejected",
                changed("int32 count = 2;", "reserved 2; reserved \"count\";"),
                reject,
                vec![(FieldNoDelete, Error)],
            ),
            (
                "removed, number and name reserved, unknown fields allowed",
                changed("int32 count = 2;", "reserved 2; reserved \"count\";"),
                UnknownFields::Allow,
                vec![(FieldNoDelete, Warning)],
            ),
            (
                "singular to repeated",
                changed("string id = 1", "repeated string id = 1"),
                reject,
                vec![(FieldWireCompatibleCardinality, Error)],
            ),
            (
                "repeated entries to a map",
                changed("repeated Part parts = 3", "map<string, Part> parts = 3"),
                reject,
                vec![(FieldWireJsonCompatibleCardinality, Error)],
            ),
            (
                "into a oneof",
                changed("string id = 1;", "oneof key { string id = 1; }"),
                reject,
                vec![(FieldSameOneof, Error)],
            ),
            (
                "proto3 optional is not a oneof",
                changed("string id = 1", "optional string id = 1"),
                reject,
                vec![],
            ),
            (
                "a nested message's field",
                changed("uint32 quantity = 2", "string quantity = 2"),
                reject,
                vec![(FieldWireCompatibleType, Error)],
            ),
            (
                "a message to a well-known type of the same shape",
                (
                    THING.replace(
                        "repeated Part parts = 3;",
                        "Stamp at = 3; message Stamp { int64 seconds = 1; int32 nanos = 2; }",
                    ),
                    THING.replace(
                        "repeated Part parts = 3;",
                        "google.protobuf.Timestamp at = 3;",
                    ),
                ),
                reject,
                vec![(FieldWireJsonCompatibleType, Error)],
            ),
            (
                "an enum value removed",
                changed("KIND_SMALL = 2;", ""),
                reject,
                vec![(EnumValueNoDeleteUnlessNumberReserved, Error)],
            ),
            (
                "an enum value removed, its number reserved",
                changed("KIND_SMALL = 2;", "reserved 2;"),
                reject,
                vec![(EnumValueNoDeleteUnlessNameReserved, Error)],
            ),
            (
                "an enum value removed, number and name reserved",
                changed("KIND_SMALL = 2;", "reserved 2; reserved \"KIND_SMALL\";"),
                reject,
                vec![(EnumValueNoDelete, Error)],
            ),
            (
                "an enum value removed, reserved, unknown fields allowed",
                changed("KIND_SMALL = 2;", "reserved 2; reserved \"KIND_SMALL\";"),
                UnknownFields::Allow,
                vec![(EnumValueNoDelete, Warning)],
            ),
            (
                "an enum value renamed",
                changed("KIND_SMALL = 2", "KIND_TINY = 2"),
                reject,
                vec![(EnumValueSameName, Error)],
            ),
            (
                "an enum field to int32",
                changed("Kind kind = 4", "int32 kind = 4"),
                reject,
                vec![(FieldWireCompatibleType, Error)],
            ),
        ];
        for (name, (old_body, new_body), unknown_fields, expected) in cases {
            let old = registry(&[("t.v1", &old_body)]);
            let new = registry(&[("t.v1", &new_body)]);
            let report = diff(&old, &new, &Chains::default(), unknown_fields);
            assert_eq!(rules(&report), expected, "{name}: {report:#?}");
        }
    }

    #[test]
    fn reserved_numbers_and_names_stay_reserved() {
        let old = registry(&[(
            "t.v1",
            "message Thing { reserved 5 to 9, 20; reserved \"old\"; string id = 1; }",
        )]);
        let kept = registry(&[(
            "t.v1",
            "message Thing { reserved 5 to 7; reserved 8 to 9; reserved 20; reserved \"old\"; string id = 1; }",
        )]);
        assert_eq!(
            rules(&diff(
                &old,
                &kept,
                &Chains::default(),
                UnknownFields::Reject
            )),
            []
        );
        let released = registry(&[(
            "t.v1",
            "message Thing { reserved 5 to 8; string id = 1; int32 reused = 9; }",
        )]);
        let report = diff(&old, &released, &Chains::default(), UnknownFields::Reject);
        let messages: Vec<&str> = report.event_types["t.Thing"]
            .iter()
            .map(|finding| finding.message.as_str())
            .collect();
        // 9 (of 5 to 9), 20 and the name "old".
        assert_eq!(
            rules(&report),
            [(Rule::ReservedMessageNoDelete, Severity::Error); 3],
            "{messages:?}"
        );
        let enum_old = registry(&[(
            "t.v1",
            "message Thing { Kind kind = 1; } enum Kind { KIND_UNSPECIFIED = 0; reserved 3 to 4; reserved \"KIND_OLD\"; }",
        )]);
        let enum_new = registry(&[(
            "t.v1",
            "message Thing { Kind kind = 1; } enum Kind { KIND_UNSPECIFIED = 0; reserved 3; }",
        )]);
        assert_eq!(
            rules(&diff(
                &enum_old,
                &enum_new,
                &Chains::default(),
                UnknownFields::Reject
            )),
            [
                (Rule::ReservedEnumNoDelete, Severity::Error),
                (Rule::ReservedEnumNoDelete, Severity::Error),
            ]
        );
    }

    #[test]
    fn a_finding_names_its_version_message_and_field_path() {
        let old = registry(&[("t.v1", THING)]);
        let new = registry(&[("t.v1", &THING.replace("uint32 quantity", "string quantity"))]);
        let report = diff(&old, &new, &Chains::default(), UnknownFields::Reject);
        let findings = &report.event_types["t.Thing"];
        assert_eq!(findings.len(), 1, "{findings:#?}");
        assert_eq!(
            findings[0].location,
            Location {
                version: Some(1),
                message: Some("t.v1.Part".into()),
                field: Some("parts.quantity".into()),
                config: None,
            }
        );
        assert_eq!(findings[0].rule.category(), Category::Wire);
        assert_eq!(
            findings[0].rule.buf_rule(),
            Some("FIELD_WIRE_COMPATIBLE_TYPE")
        );
        assert!(report.is_breaking());
    }

    const V1: &str = "message Thing { string id = 1; double total = 2; }";
    const V2: &str =
        "message Thing { string id = 1; double total_amount = 2; string currency = 3; }";

    #[test]
    fn versions_and_types_that_disappear_break_stored_events() {
        let old = registry(&[("t.v1", V1), ("t.v2", V2), ("u.v1", V1)]);
        let new = registry(&[("t.v1", V1)]);
        let report = diff(&old, &new, &Chains::default(), UnknownFields::Reject);
        assert_eq!(
            rules(&report),
            [
                (Rule::EventTypeNoDelete, Severity::Error),
                (Rule::EventVersionNoDelete, Severity::Error),
            ]
        );
        assert_eq!(report.event_types["t.Thing"][0].location.version, Some(2));
        assert_eq!(Rule::EventVersionNoDelete.category(), Category::Wire);
    }

    #[test]
    fn a_new_version_must_be_reached_by_the_chain_and_its_renames_moved() {
        use Rule::*;
        use Severity::{Error, Info, Warning};
        let old = registry(&[("t.v1", V1)]);
        let new = registry(&[("t.v1", V1), ("t.v2", V2)]);
        let hop = |steps: serde_json::Value| {
            chains(json!({ "t.Thing": [{ "from": 1, "to": 2, "steps": steps }] }))
        };
        let cases = [
            (
                "no chain",
                Chains::default(),
                vec![(EventVersionAdded, Info), (UpcastReachesNewest, Error)],
            ),
            (
                "a hop that does not rename",
                hop(json!([{ "set_default": { "field": "currency", "value": "USD" } }])),
                vec![(EventVersionAdded, Info), (UpcastStepForRename, Error)],
            ),
            (
                "a hop that renames",
                hop(json!([{ "rename": { "from": "total", "to": "total_amount" } }])),
                vec![(EventVersionAdded, Info)],
            ),
            (
                "a convert that renames",
                hop(
                    json!([{ "convert": { "field": "total", "to": "double", "rename_to": "total_amount" } }]),
                ),
                vec![(EventVersionAdded, Info)],
            ),
            (
                "a code step may rename",
                hop(json!([{ "code": "mine" }])),
                vec![(EventVersionAdded, Info), (UpcastStepForRename, Warning)],
            ),
            (
                "a hop to a version that does not exist",
                chains(json!({ "t.Thing": [{ "from": 1, "to": 3 }] })),
                vec![(EventVersionAdded, Info), (UpcastReachesNewest, Error)],
            ),
        ];
        for (name, chains, expected) in cases {
            let report = diff(&old, &new, &chains, UnknownFields::Reject);
            assert_eq!(rules(&report), expected, "{name}: {report:#?}");
        }
        let report = diff(
            &old,
            &new,
            &hop(json!([{ "rename": { "from": "id", "to": "key" } }])),
            UnknownFields::Reject,
        );
        let rename = report.event_types["t.Thing"]
            .iter()
            .find(|finding| finding.rule == UpcastStepForRename)
            .expect("the rename of total is not covered");
        assert_eq!(rename.location.field.as_deref(), Some("total_amount"));
        assert_eq!(
            rename.location.config.as_deref(),
            Some("upcasters.t.Thing[0]")
        );
    }

    #[test]
    fn renames_inside_nested_messages_need_their_dotted_step() {
        let v1 = "message Thing { repeated Part parts = 1; } message Part { string sku = 1; }";
        let v2 = "message Thing { repeated Part parts = 1; } message Part { string code = 1; }";
        let old = registry(&[("t.v1", v1)]);
        let new = registry(&[("t.v1", v1), ("t.v2", v2)]);
        let with = |from: &str, to: &str| {
            chains(
                json!({ "t.Thing": [{ "from": 1, "to": 2, "steps": [{ "rename": { "from": from, "to": to } }] }] }),
            )
        };
        let covered = diff(
            &old,
            &new,
            &with("parts.sku", "parts.code"),
            UnknownFields::Reject,
        );
        assert!(!covered.is_breaking(), "{covered:#?}");
        let elsewhere = diff(&old, &new, &with("sku", "code"), UnknownFields::Reject);
        assert_eq!(
            elsewhere.event_types["t.Thing"]
                .iter()
                .filter(|finding| finding.rule == Rule::UpcastStepForRename)
                .filter_map(|finding| finding.location.field.as_deref())
                .collect::<Vec<_>>(),
            ["parts.code"]
        );
    }

    #[test]
    fn recursive_messages_end_at_the_pair_already_walked() {
        let doc = |label: &str, kind: &str| {
            format!(
                "message Doc {{ Tree root = 1; }} message Tree {{ {kind} {label} = 1; Tree left = 2; Tree right = 3; }}"
            )
        };
        let old = registry(&[("t.v1", &doc("label", "string"))]);
        let new = registry(&[
            ("t.v1", &doc("label", "int64")),
            ("t.v2", &doc("name", "int64")),
        ]);
        let hop = chains(json!({ "t.Doc": [{ "from": 1, "to": 2 }] }));
        let report = diff(&old, &new, &hop, UnknownFields::Reject);
        let found: Vec<(Rule, Option<&str>)> = report.event_types["t.Doc"]
            .iter()
            .filter(|finding| finding.severity == Severity::Error)
            .map(|finding| (finding.rule, finding.location.field.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                (Rule::FieldWireCompatibleType, Some("root.label")),
                (Rule::UpcastStepForRename, Some("root.name")),
            ]
        );
    }

    #[test]
    fn every_older_version_must_reach_the_newest() {
        let v3 = "message Thing { string id = 1; double total_amount = 2; string currency = 3; string note = 4; }";
        let old = registry(&[("t.v1", V1), ("t.v2", V2)]);
        let new = registry(&[("t.v1", V1), ("t.v2", V2), ("t.v3", v3)]);
        // Only v2 has a hop to the new v3: v1 has none at all.
        let only_v2 = chains(json!({ "t.Thing": [{ "from": 2, "to": 3 }] }));
        let report = diff(&old, &new, &only_v2, UnknownFields::Reject);
        let unreached: Vec<Option<u32>> = report.event_types["t.Thing"]
            .iter()
            .filter(|finding| finding.rule == Rule::UpcastReachesNewest)
            .map(|finding| finding.location.version)
            .collect();
        assert_eq!(unreached, [Some(1)]);
        let both = chains(json!({ "t.Thing": [
            { "from": 1, "to": 2, "steps": [{ "rename": { "from": "total", "to": "total_amount" } }] },
            { "from": 2, "to": 3 }
        ] }));
        let report = diff(&old, &new, &both, UnknownFields::Reject);
        assert!(!report.is_breaking(), "{report:#?}");
        let added = &report.event_types["t.Thing"][0];
        assert_eq!(added.rule, Rule::EventVersionAdded);
        assert!(
            added.message.contains("v1, v2 reach it"),
            "{}",
            added.message
        );
    }

    #[test]
    fn a_new_event_type_is_news_and_its_chain_is_checked() {
        let old = registry(&[("t.v1", V1)]);
        let new = registry(&[("t.v1", V1), ("u.v1", V1), ("u.v2", V1)]);
        let report = diff(&old, &new, &Chains::default(), UnknownFields::Reject);
        assert_eq!(report.event_types["t.Thing"], []);
        assert_eq!(
            report.event_types["u.Thing"]
                .iter()
                .map(|finding| (finding.rule, finding.severity))
                .collect::<Vec<_>>(),
            [
                (Rule::EventTypeAdded, Severity::Info),
                (Rule::UpcastReachesNewest, Severity::Error),
                (Rule::EventVersionAdded, Severity::Info),
                (Rule::EventVersionAdded, Severity::Info),
            ]
        );
    }

    #[test]
    fn the_example_schemas_against_themselves_are_safe() {
        let config = crate::config::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/jetline.yaml"
        )))
        .expect("the example config loads");
        let registry = SchemaRegistry::load(&config.schemas).expect("the example schemas");
        let chains = Chains::from_config(&config.upcasters).expect("the example chains");
        let report = diff(&registry, &registry, &chains, config.schemas.unknown_fields);
        assert!(
            report.event_types.values().all(Vec::is_empty),
            "{report:#?}"
        );
        assert!(report.event_types.contains_key("orders.OrderCreated"));
    }

    #[test]
    fn malformed_chains_are_configuration_errors_with_their_path() {
        let upcasters: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(json!({ "t.Thing": [{ "from": 1, "too": 2 }] })).expect("json");
        let errors = Chains::from_config(&upcasters).expect_err("an unknown key");
        assert!(
            errors
                .0
                .iter()
                .any(|error| error.path.starts_with("upcasters.t.Thing[0]")),
            "{errors}"
        );
    }
}
