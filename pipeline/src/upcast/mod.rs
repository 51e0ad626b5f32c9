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
mod scalar;
pub mod steps;
mod wire;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
};

use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage as _};

pub use record::{Field, FitError, Record, Segment, field_type_name, kind_name};
use wire::WirePlan;

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
    #[error("no schema for event type {event_type:?}")]
    UnknownType { event_type: String },
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
    /// A payload validated on the wire that does not decode: a defect of
    /// the validation, dead-lettered rather than applied.
    #[error("the payload does not decode: {0}")]
    Undecodable(String),
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
    /// The top-level payload fields the step may touch (`None`: any, as a
    /// code step may).
    pub touches: Option<Vec<Arc<str>>>,
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
    /// Whether the result must be checked against `target` when another hop
    /// follows: not when the start-up checks proved it fits (only YAML
    /// steps, no warning); the last hop's result is always checked.
    check_between: bool,
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
    /// By event type: an event's upcast looks its type up once.
    types: HashMap<String, EventType>,
    warnings: Vec<Warning>,
}

/// What upcasting needs to know about one event type.
#[derive(Debug, Clone, Default)]
struct EventType {
    /// Its schema versions, ascending.
    versions: Vec<u32>,
    /// Its hops, by the version they start from.
    hops: BTreeMap<u32, Hop>,
    /// How binary payloads go from one version to a later one on the wire,
    /// by (from, target).
    plans: BTreeMap<(u32, u32), WirePlan>,
}

impl EventType {
    fn target_version(&self, pin: Option<u32>) -> Option<u32> {
        match pin {
            None => self.versions.last(),
            Some(pin) => self.versions.iter().rev().find(|version| **version <= pin),
        }
        .copied()
    }
}

impl Upcasters {
    /// The upcasters of `chains` and the versions of every event type, with
    /// the wire plans of the chains when `wire` (see [`wire_plans`]).
    pub(crate) fn new(
        versions: BTreeMap<&str, Vec<u32>>,
        mut chains: HashMap<String, BTreeMap<u32, Hop>>,
        registry: &crate::schema::SchemaRegistry,
        wire: bool,
        warnings: Vec<Warning>,
    ) -> Self {
        let types = versions
            .into_iter()
            .map(|(name, versions)| {
                let hops = chains.remove(name).unwrap_or_default();
                let plans = if wire {
                    wire_plans(name, &hops, registry)
                } else {
                    BTreeMap::new()
                };
                let of_type = EventType {
                    versions,
                    hops,
                    plans,
                };
                (name.to_owned(), of_type)
            })
            .collect();
        Self { types, warnings }
    }

    /// The version an event of `event_type` is delivered at: the newest, or
    /// with a pin the newest at or below it.
    pub fn target_version(&self, event_type: &str, pin: Option<u32>) -> Result<u32, UpcastError> {
        self.resolve(event_type, pin).map(|(_, target)| target)
    }

    /// The event type's entry and its target version, in one lookup.
    fn resolve(
        &self,
        event_type: &str,
        pin: Option<u32>,
    ) -> Result<(&EventType, u32), UpcastError> {
        self.types
            .get(event_type)
            .and_then(|of_type| Some((of_type, of_type.target_version(pin)?)))
            .ok_or_else(|| UpcastError::NoVersionAtPin {
                event_type: event_type.to_owned(),
                pin: pin.unwrap_or_default(),
            })
    }

    /// Whether an event of `event_type` at `version` reaches its target
    /// version without its binary payload being decoded.
    #[cfg(test)]
    fn needs_no_decoding(&self, event_type: &str, version: u32, pin: Option<u32>) -> bool {
        self.on_wire(event_type, version, pin).is_some()
    }

    /// How an event of `event_type` at `version` reaches its target version
    /// without its binary payload being decoded: `Some(false)` it is there
    /// already, `Some(true)` a wire plan takes it there; `None` where the
    /// payload must be decoded.
    pub fn on_wire(&self, event_type: &str, version: u32, pin: Option<u32>) -> Option<bool> {
        let of_type = self.types.get(event_type)?;
        let target = of_type.target_version(pin)?;
        if target == version {
            return Some(false);
        }
        of_type.plans.get(&(version, target)).map(|_| true)
    }

    #[cfg(test)]
    fn plan(&self, event_type: &str, from: u32, target: u32) -> Option<&WirePlan> {
        self.types.get(event_type)?.plans.get(&(from, target))
    }

    /// Brings `envelope` to its target version and rewrites its
    /// `schema_version`. Returns the versions it went from and to, or `None`
    /// when it was there already. A payload the envelope holds only encoded
    /// is upcast on the wire where a plan allows, and stays encoded. On
    /// error the payload is left empty: the caller dead-letters the
    /// original message.
    pub fn upcast(
        &self,
        envelope: &mut Envelope,
        pin: Option<u32>,
    ) -> Result<Option<(u32, u32)>, UpcastError> {
        let event_type = envelope.event_type.as_str();
        let (of_type, target) = self.resolve(event_type, pin)?;
        let from = envelope.schema_version;
        if from == target {
            return Ok(None);
        }
        let chain = Chain {
            event_type,
            of_type,
        };
        let placeholder = DynamicMessage::new(envelope.payload.descriptor());
        let payload = std::mem::replace(&mut envelope.payload, placeholder);
        match envelope.encoded_payload.take() {
            Some(encoded) => {
                if let Some((bytes, descriptor)) = chain.on_wire(from, target, &encoded) {
                    envelope.encoded_payload = Some(bytes.into());
                    envelope.payload = DynamicMessage::new(descriptor);
                } else {
                    // Validated on the wire, so it decodes.
                    let decoded = DynamicMessage::decode(payload.descriptor(), encoded.as_ref())
                        .map_err(|error| UpcastError::Undecodable(error.to_string()))?;
                    envelope.payload = chain.upcast_payload(from, target, decoded)?;
                }
            }
            None => envelope.payload = chain.upcast_payload(from, target, payload)?,
        }
        envelope.schema_version = target;
        Ok(Some((from, target)))
    }

    /// A binary payload (valid, with no unknown field) brought from
    /// `version` to `target` by its wire plan: the bytes and the target's
    /// descriptor, or `None` where the plan does not take it.
    #[cfg(test)]
    fn upcast_on_wire(
        &self,
        event_type: &str,
        version: u32,
        target: u32,
        payload: &[u8],
    ) -> Option<(Vec<u8>, MessageDescriptor)> {
        self.chain(event_type).on_wire(version, target, payload)
    }

    /// Brings a payload of `event_type` at `version` to `target`, hop by hop.
    pub fn upcast_payload(
        &self,
        event_type: &str,
        version: u32,
        target: u32,
        payload: DynamicMessage,
    ) -> Result<DynamicMessage, UpcastError> {
        self.chain(event_type)
            .upcast_payload(version, target, payload)
    }

    fn chain<'a>(&'a self, event_type: &'a str) -> Chain<'a> {
        Chain {
            event_type,
            of_type: self.types.get(event_type).unwrap_or(&EMPTY),
        }
    }

    /// The chains, by event type, each with its hops in order.
    pub fn chains(&self) -> BTreeMap<&str, Vec<&Hop>> {
        self.types
            .iter()
            .filter(|(_, of_type)| !of_type.hops.is_empty())
            .map(|(event_type, of_type)| (event_type.as_str(), of_type.hops.values().collect()))
            .collect()
    }

    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

/// An event type with no version and no hop.
static EMPTY: EventType = EventType {
    versions: Vec::new(),
    hops: BTreeMap::new(),
    plans: BTreeMap::new(),
};

/// One event type's upcasting, looked up.
struct Chain<'a> {
    event_type: &'a str,
    of_type: &'a EventType,
}

impl Chain<'_> {
    fn on_wire(
        &self,
        version: u32,
        target: u32,
        payload: &[u8],
    ) -> Option<(Vec<u8>, MessageDescriptor)> {
        let plan = self.of_type.plans.get(&(version, target))?;
        let split = plan.split(payload)?;
        let (record, _) = self.run_hops(version, target, split.stepped).ok()?;
        let mut bytes = Vec::with_capacity(payload.len() + 16);
        record.encode_into(&plan.target, &mut bytes).ok()?;
        bytes.extend_from_slice(&split.carried);
        Some((bytes, plan.target.clone()))
    }

    fn upcast_payload(
        &self,
        version: u32,
        target: u32,
        payload: DynamicMessage,
    ) -> Result<DynamicMessage, UpcastError> {
        if version > target {
            return Err(UpcastError::AboveTarget {
                event_type: self.event_type.to_owned(),
                version,
                target,
            });
        }
        if version == target {
            return Ok(payload);
        }
        let (record, last) = self.run_hops(version, target, Record::from_message(payload))?;
        record
            .into_message(&last.target)
            .map_err(|error| fit_failure(self.event_type, last, error))
    }

    /// One record through every hop from `version` to `target`: between
    /// hops it is only checked against the version reached. Returns it with
    /// the last hop, whose target it is to be fitted into.
    fn run_hops(
        &self,
        version: u32,
        target: u32,
        mut record: Record,
    ) -> Result<(Record, &Hop), UpcastError> {
        let event_type = self.event_type;
        let no_hop = |version| UpcastError::NoHop {
            event_type: event_type.to_owned(),
            version,
            target,
        };
        let mut version = version;
        let mut last = None;
        while version < target {
            let hop = self
                .of_type
                .hops
                .get(&version)
                .filter(|hop| hop.to <= target)
                .ok_or_else(|| no_hop(version))?;
            apply_steps(event_type, hop, &mut record)?;
            if hop.to < target && hop.check_between {
                record
                    .check_fits(&hop.target)
                    .map_err(|error| fit_failure(event_type, hop, error))?;
            }
            version = hop.to;
            last = Some(hop);
        }
        // Already at the target (callers return before this).
        last.map(|hop| (record, hop)).ok_or_else(|| no_hop(version))
    }
}

/// The wire plans of one chain: from each version a hop starts from, to
/// each version the chain reaches from there.
fn wire_plans(
    event_type: &str,
    hops: &BTreeMap<u32, Hop>,
    registry: &crate::schema::SchemaRegistry,
) -> BTreeMap<(u32, u32), WirePlan> {
    let mut plans = BTreeMap::new();
    for &from in hops.keys() {
        let Some(source) = registry.resolve(event_type, from) else {
            continue;
        };
        let mut path = Vec::new();
        let mut version = from;
        while let Some(hop) = hops.get(&version) {
            path.push(hop);
            version = hop.to;
            if let Some(plan) = WirePlan::new(source, &path) {
                plans.insert((from, version), plan);
            }
        }
    }
    plans
}

fn apply_steps(event_type: &str, hop: &Hop, record: &mut Record) -> Result<(), UpcastError> {
    for (index, step) in hop.steps.iter().enumerate() {
        step.upcaster.apply(record).map_err(|error| {
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
    Ok(())
}

fn fit_failure(event_type: &str, hop: &Hop, error: FitError) -> UpcastError {
    UpcastError::Invalid(Box::new(FitFailure {
        event_type: event_type.to_owned(),
        from: hop.from,
        to: hop.to,
        message: hop.target.full_name().to_owned(),
        field: error.field,
        problem: error.problem,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use prost::Message as _;
    use serde_json::json;

    use super::*;
    use crate::{Prepared, envelope::CONTENT_TYPE_JSON};

    /// The shipped example configuration, prepared: its chain is the one tested.
    static EXAMPLE: LazyLock<Prepared> = LazyLock::new(|| {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/jetline.yaml"
        ));
        let config = crate::config::load(path).expect("the example config loads");
        crate::prepare(config).expect("the example config prepares")
    });

    fn created(version: u32, payload: serde_json::Value) -> Envelope {
        let document = json!({
            "eventId": "e-1", "eventType": "orders.OrderCreated", "schemaVersion": version,
            "aggregateId": "o-1", "occurredAt": "2026-01-02T03:04:05Z", "payload": payload
        });
        EXAMPLE
            .decoder
            .decode(
                Some(CONTENT_TYPE_JSON),
                &serde_json::to_vec(&document).expect("json"),
            )
            .expect("a valid example event")
    }

    fn payload_json(envelope: &Envelope) -> serde_json::Value {
        serde_json::to_value(&envelope.payload).expect("json")
    }

    #[test]
    fn the_example_chain_brings_every_version_to_v3_with_the_same_content() {
        let items = json!([{ "sku": "a", "quantity": 2, "unitPrice": 1.25 }]);
        let expected = json!({
            "orderId": "o-1", "customerId": "c-1", "totalAmountCents": "1235",
            "currency": "USD", "items": items
        });
        let events = [
            created(
                1,
                json!({ "orderId": "o-1", "customerId": "c-1", "total": 12.345, "items": items }),
            ),
            created(
                2,
                json!({ "orderId": "o-1", "customerId": "c-1", "totalAmount": 12.345, "currency": "USD", "items": items }),
            ),
            created(3, expected.clone()),
        ];
        for (index, mut envelope) in events.into_iter().enumerate() {
            let from = envelope.schema_version;
            let upcast = EXAMPLE
                .upcasters
                .upcast(&mut envelope, None)
                .expect("upcasts");
            assert_eq!(upcast, (from < 3).then_some((from, 3)), "event {index}");
            assert_eq!(envelope.schema_version, 3);
            assert_eq!(payload_json(&envelope), expected, "event {index}");
        }
        let mut euro = created(2, json!({ "totalAmount": 1.5, "currency": "EUR" }));
        EXAMPLE.upcasters.upcast(&mut euro, None).expect("upcasts");
        assert_eq!(
            payload_json(&euro),
            json!({ "totalAmountCents": "150", "currency": "EUR" })
        );
    }

    #[test]
    fn a_pin_delivers_each_type_at_its_newest_version_not_above_it() {
        let upcasters = &EXAMPLE.upcasters;
        let mut v1 = created(1, json!({ "total": 2.5 }));
        assert_eq!(upcasters.upcast(&mut v1, Some(2)), Ok(Some((1, 2))));
        assert_eq!(
            payload_json(&v1),
            json!({ "totalAmount": 2.5, "currency": "USD" })
        );
        let mut v3 = created(3, json!({ "totalAmountCents": "250" }));
        assert!(matches!(
            upcasters.upcast(&mut v3, Some(2)),
            Err(UpcastError::AboveTarget {
                version: 3,
                target: 2,
                ..
            })
        ));
        // A type with no version 2 is delivered at the newest below the pin.
        assert_eq!(
            upcasters.target_version("orders.OrderShipped", Some(2)),
            Ok(1)
        );
        assert_eq!(
            upcasters.target_version("orders.OrderCreated", Some(9)),
            Ok(3)
        );
    }

    /// A code step that writes a number where v2 has a string.
    struct NumericCurrency;

    impl Upcaster for NumericCurrency {
        fn apply(&self, payload: &mut Record) -> Result<(), StepError> {
            payload.set("currency", prost_reflect::Value::I64(978));
            Ok(())
        }

        fn describe(&self) -> String {
            "sets currency to an ISO number".into()
        }

        fn effects(&self) -> Vec<Effect> {
            vec![Effect::Writes("currency".into())]
        }
    }

    #[test]
    fn a_hop_whose_result_does_not_fit_its_version_fails_at_that_hop() {
        let mut steps = CodeSteps::default();
        steps.register("numeric_currency", NumericCurrency);
        let mut config = EXAMPLE.config.clone();
        let chain = config
            .upcasters
            .get_mut("orders.OrderCreated")
            .expect("the example chain");
        chain[0]["steps"][1] = json!({ "code": "numeric_currency" });
        let prepared = crate::prepare_with(config, &steps).expect("structurally valid");
        let mut v1 = created(1, json!({ "total": 2.5 }));
        let error = prepared
            .upcasters
            .upcast(&mut v1, None)
            .expect_err("978 is no string");
        let UpcastError::Invalid(failure) = &error else {
            panic!("a fit failure, got {error}");
        };
        assert_eq!(
            (failure.from, failure.to, failure.field.as_str()),
            (1, 2, "currency"),
            "{error}"
        );
        assert!(
            matches!(failure.problem, Problem::TypeMismatch { .. }),
            "{error}"
        );
    }

    fn v1_payload() -> impl Strategy<Value = DynamicMessage> {
        let item = ("[a-z0-9]{0,8}", any::<u32>(), any::<f64>());
        (
            ".{0,12}",
            ".{0,12}",
            prop_oneof![any::<f64>(), -1e6..1e6f64, Just(0.0), Just(1.005)],
            proptest::collection::vec(item, 0..4),
        )
            .prop_map(|(order_id, customer_id, total, items)| {
                let descriptor = EXAMPLE
                    .decoder
                    .registry()
                    .resolve("orders.OrderCreated", 1)
                    .expect("v1")
                    .clone();
                let item_descriptor = descriptor
                    .get_field_by_name("items")
                    .and_then(|field| field.kind().as_message().cloned())
                    .expect("line items");
                let mut message = DynamicMessage::new(descriptor);
                message.set_field_by_name("order_id", prost_reflect::Value::String(order_id));
                message.set_field_by_name("customer_id", prost_reflect::Value::String(customer_id));
                message.set_field_by_name("total", prost_reflect::Value::F64(total));
                let items = items
                    .into_iter()
                    .map(|(sku, quantity, unit_price)| {
                        let mut item = DynamicMessage::new(item_descriptor.clone());
                        item.set_field_by_name("sku", prost_reflect::Value::String(sku));
                        item.set_field_by_name("quantity", prost_reflect::Value::U32(quantity));
                        item.set_field_by_name("unit_price", prost_reflect::Value::F64(unit_price));
                        prost_reflect::Value::Message(item)
                    })
                    .collect();
                message.set_field_by_name("items", prost_reflect::Value::List(items));
                message
            })
    }

    proptest! {
        #[test]
        fn a_valid_v1_event_becomes_a_valid_v3_event_or_a_clear_error(payload in v1_payload()) {
            let total = payload.get_field_by_name("total").and_then(|v| v.as_f64()).unwrap_or_default();
            let v3 = EXAMPLE.decoder.registry().resolve("orders.OrderCreated", 3).expect("v3").clone();
            match EXAMPLE.upcasters.upcast_payload("orders.OrderCreated", 1, 3, payload) {
                Ok(message) => {
                    prop_assert_eq!(message.descriptor(), v3.clone());
                    let bytes = message.encode_to_vec();
                    let decoded = DynamicMessage::decode(v3, bytes.as_slice()).expect("valid v3 bytes");
                    prop_assert_eq!(decoded.encode_to_vec(), bytes);
                    let cents = message.get_field_by_name("total_amount_cents").and_then(|v| v.as_i64()).unwrap_or_default();
                    prop_assert!((cents as f64 - total * 100.0).abs() <= 0.5 + total.abs() * 1e-12, "{} -> {}", total, cents);
                    let currency = message.get_field_by_name("currency").map(|v| v.as_str().unwrap_or_default().to_owned());
                    prop_assert_eq!(currency.as_deref(), Some("USD"));
                }
                Err(UpcastError::Step(failure)) => {
                    // Only a total that has no int64 cents fails, at the convert.
                    prop_assert_eq!((failure.from, failure.to, failure.step, failure.field.as_str()), (2, 3, 0, "total_amount"));
                    prop_assert!(!total.is_finite() || (total * 100.0).abs() >= 9.2e18, "{}", total);
                }
                Err(other) => prop_assert!(false, "unexpected {}", other),
            }
        }

        #[test]
        fn arbitrary_v1_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let v1 = EXAMPLE.decoder.registry().resolve("orders.OrderCreated", 1).expect("v1").clone();
            if let Ok(payload) = DynamicMessage::decode(v1, body.as_slice()) {
                let _ = EXAMPLE.upcasters.upcast_payload("orders.OrderCreated", 1, 3, payload);
            }
        }
    }
}
