//! Upcasting: an event at schema version N -> the same event at its target
//! version (the newest, or the sink's pin), hop by hop (N -> N+1 -> ...), each
//! hop a list of steps applied to the decoded payload and the result fitted
//! strictly into the next version's message.
//!
//! - [`Upcaster`]: one step. The YAML step kinds (`steps.rs`) and code steps
//!   that a program embedding Jetline registers ([`CodeSteps`]) implement it.
//! - [`Upcasters`]: the chains per event type, built and checked at start-up
//!   (`check.rs`), and [`Upcasters::upcast`], run per event.
//!
//! **Invariant:** an upcast either returns a payload that is valid for its
//! target version, with `schema_version` rewritten, or an [`UpcastError`]
//! naming the event type, hop, step and field; it never panics on input and
//! never guesses (no silent drop, no coercion that the chain did not ask for).

pub mod check;
mod record;
pub mod steps;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage as _};

pub use record::{Field, FitError, Record, Segment, field_type_name, kind_name};

use crate::envelope::Envelope;

/// What is wrong with one field, in a step or in the fit to the next version.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    #[error("is not a message")]
    NotAMessage,
    #[error("already holds a value")]
    Occupied,
    #[error("is not a field of {message}")]
    NotInSchema { message: String },
    #[error("expected {expected}, found {found}")]
    TypeMismatch { expected: String, found: String },
    #[error("{value} is not a value of {enum_type}")]
    NoSuchEnumValue { value: String, enum_type: String },
    #[error("{value:?} is not a number")]
    NotANumber { value: String },
    #[error("{value} is out of range for {to}")]
    OutOfRange { value: String, to: String },
    #[error("{value} is not a whole number and the rounding is exact")]
    Inexact { value: String },
    #[error("{value:?} has no mapping")]
    Unmapped { value: String },
    /// A code step's own account of what went wrong.
    #[error("{0}")]
    Other(String),
}

/// A step's failure: which field, and what about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field}: {problem}")]
pub struct StepError {
    /// Dotted path of the field, as the step names it.
    pub field: String,
    pub problem: Problem,
}

impl StepError {
    pub fn new(field: impl Into<String>, problem: Problem) -> Self {
        Self {
            field: field.into(),
            problem,
        }
    }
}

/// Why an event could not be brought to its target version. Every such event
/// is dead-lettered with the reason `upcast_failed`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UpcastError {
    #[error(
        "{event_type} v{version} is newer than the target v{target}: events are never downcast"
    )]
    AboveTarget {
        event_type: String,
        version: u32,
        target: u32,
    },
    #[error("{event_type} has no version at or below the pinned v{pin}")]
    NoVersionAtPin { event_type: String, pin: u32 },
    #[error("{event_type} has no version {version}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("{event_type} v{version}: no upcaster leads from here to v{target}")]
    NoHop {
        event_type: String,
        version: u32,
        target: u32,
    },
    #[error(transparent)]
    Step(Box<StepFailure>),
    #[error(transparent)]
    Invalid(Box<FitFailure>),
}

/// A step of a hop failed on this event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{event_type} v{from} -> v{to}, steps[{step}] ({kind}): field {field}: {problem}")]
pub struct StepFailure {
    pub event_type: String,
    pub from: u32,
    pub to: u32,
    /// Index of the step in the hop's `steps`.
    pub step: usize,
    pub kind: &'static str,
    pub field: String,
    pub problem: Problem,
}

/// The result of a hop does not fit the target version's schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{event_type} v{from} -> v{to}: the result does not fit {message}: field {field}: {problem}"
)]
pub struct FitFailure {
    pub event_type: String,
    pub from: u32,
    pub to: u32,
    pub message: String,
    pub field: String,
    pub problem: Problem,
}

/// One step of a hop from version N to N+1, applied to the payload in place.
///
/// The YAML step kinds implement it; a program embedding Jetline implements it
/// for what YAML cannot express, registers it in [`CodeSteps`] under a name,
/// and refers to it from YAML as `- code: NAME`.
pub trait Upcaster: Send + Sync {
    /// Applies the step. An error names the field and what is wrong with it;
    /// the chain adds the event type, hop and step.
    fn apply(&self, payload: &mut Record) -> Result<(), StepError>;

    /// One line for `jetline check`, e.g. `rename total -> total_amount`.
    fn describe(&self) -> String;

    /// The fields (dotted paths) the step reads, writes and removes, so that
    /// the start-up checks can follow the payload's shape through it. A
    /// written field must exist in the hop's target schema.
    fn effects(&self) -> Vec<Effect> {
        Vec::new()
    }
}

/// What a code step does to one field, as declared by [`Upcaster::effects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Reads(String),
    Writes(String),
    Removes(String),
}

/// Code steps by the name YAML refers to them with (`- code: NAME`).
#[derive(Clone, Default)]
pub struct CodeSteps {
    steps: BTreeMap<String, Arc<dyn Upcaster>>,
}

impl CodeSteps {
    pub fn register(
        &mut self,
        name: impl Into<String>,
        step: impl Upcaster + 'static,
    ) -> &mut Self {
        self.steps.insert(name.into(), Arc::new(step));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Upcaster>> {
        self.steps.get(name)
    }
}

impl fmt::Debug for CodeSteps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.steps.keys()).finish()
    }
}

/// A start-up finding that does not stop Jetline, printed by `check` and
/// logged by `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Key path in the configuration, e.g. `upcasters.orders.OrderCreated[0]`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// One step in a hop, with the YAML kind that made it (`code` for code steps).
#[derive(Clone)]
pub(crate) struct Step {
    pub kind: &'static str,
    pub upcaster: Arc<dyn Upcaster>,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.upcaster.describe())
    }
}

/// The steps from one version to the next, between two message descriptors.
#[derive(Debug, Clone)]
pub struct Hop {
    pub from: u32,
    pub to: u32,
    target: MessageDescriptor,
    steps: Vec<Step>,
}

impl Hop {
    /// Each step's description, in order.
    pub fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|step| step.upcaster.describe())
            .collect()
    }
}

/// Every upcaster chain, and the versions of every event type.
#[derive(Debug, Clone, Default)]
pub struct Upcasters {
    /// Per event type, its hops by the version they start from.
    chains: HashMap<String, BTreeMap<u32, Hop>>,
    /// Per event type, its schema versions, ascending.
    versions: HashMap<String, Vec<u32>>,
    warnings: Vec<Warning>,
}

impl Upcasters {
    /// The version an event of `event_type` is delivered at: the newest, or
    /// with a pin the newest at or below it.
    pub fn target_version(&self, event_type: &str, pin: Option<u32>) -> Result<u32, UpcastError> {
        let versions = self
            .versions
            .get(event_type)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let target = match pin {
            None => versions.last(),
            Some(pin) => versions.iter().rev().find(|version| **version <= pin),
        };
        target.copied().ok_or_else(|| match pin {
            Some(pin) => UpcastError::NoVersionAtPin {
                event_type: event_type.to_owned(),
                pin,
            },
            None => UpcastError::UnknownVersion {
                event_type: event_type.to_owned(),
                version: 1,
            },
        })
    }

    /// Brings `envelope` to its target version and rewrites its
    /// `schema_version`. Returns the versions it went from and to, or `None`
    /// when it was there already. On error the payload is left empty: the
    /// caller dead-letters the original message.
    pub fn upcast(
        &self,
        envelope: &mut Envelope,
        pin: Option<u32>,
    ) -> Result<Option<(u32, u32)>, UpcastError> {
        let target = self.target_version(&envelope.event_type, pin)?;
        let from = envelope.schema_version;
        if from == target {
            return Ok(None);
        }
        let placeholder = DynamicMessage::new(envelope.payload.descriptor());
        let payload = std::mem::replace(&mut envelope.payload, placeholder);
        envelope.payload = self.upcast_payload(&envelope.event_type, from, target, payload)?;
        envelope.schema_version = target;
        Ok(Some((from, target)))
    }

    /// Brings a payload of `event_type` at `version` to `target`, hop by hop.
    pub fn upcast_payload(
        &self,
        event_type: &str,
        version: u32,
        target: u32,
        payload: DynamicMessage,
    ) -> Result<DynamicMessage, UpcastError> {
        if version > target {
            return Err(UpcastError::AboveTarget {
                event_type: event_type.to_owned(),
                version,
                target,
            });
        }
        let no_hop = |version| UpcastError::NoHop {
            event_type: event_type.to_owned(),
            version,
            target,
        };
        let hops = self.chains.get(event_type).ok_or_else(|| no_hop(version))?;
        let (mut version, mut payload) = (version, payload);
        while version < target {
            let hop = hops
                .get(&version)
                .filter(|hop| hop.to <= target)
                .ok_or_else(|| no_hop(version))?;
            payload = apply_hop(event_type, hop, payload)?;
            version = hop.to;
        }
        Ok(payload)
    }

    /// The chains, by event type, each with its hops in order.
    pub fn chains(&self) -> BTreeMap<&str, Vec<&Hop>> {
        self.chains
            .iter()
            .map(|(event_type, hops)| (event_type.as_str(), hops.values().collect()))
            .collect()
    }

    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

fn apply_hop(
    event_type: &str,
    hop: &Hop,
    payload: DynamicMessage,
) -> Result<DynamicMessage, UpcastError> {
    let mut record = Record::from_message(payload);
    for (index, step) in hop.steps.iter().enumerate() {
        step.upcaster.apply(&mut record).map_err(|error| {
            UpcastError::Step(Box::new(StepFailure {
                event_type: event_type.to_owned(),
                from: hop.from,
                to: hop.to,
                step: index,
                kind: step.kind,
                field: error.field,
                problem: error.problem,
            }))
        })?;
    }
    record.into_message(&hop.target).map_err(|error| {
        UpcastError::Invalid(Box::new(FitFailure {
            event_type: event_type.to_owned(),
            from: hop.from,
            to: hop.to,
            message: hop.target.full_name().to_owned(),
            field: error.field,
            problem: error.problem,
        }))
    })
}
