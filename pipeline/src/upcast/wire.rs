//! Upcasting on the wire: a binary payload at one version -> its bytes at the
//! target version, decoding only the fields a step names.
//!
//! A [`WirePlan`] is made at start-up for each (event type, from, target)
//! whose chain has only YAML steps (a code step may look at any field). It
//! sorts the source version's fields into those a step names, decoded into
//! a small [`super::Record`] and run through the chain's steps as usual, and
//! those carried as they are: a field that keeps its name and its wire form
//! in every version of the chain, copied as bytes under its number in the
//! target. Anything else in a payload sends that payload down the decoding
//! path.
//!
//! **Invariant:** where the plan gives bytes, they decode to the message the
//! decoding path (`Upcasters::upcast_payload`) builds from the same payload.
//! The steps see exactly the fields they would see there, and a carried
//! field would have been fitted unchanged: same name, number inside nested
//! messages, type, presence and oneof in every version, enum values by name
//! at the same numbers. A step or fit that fails, or a field the plan cannot
//! carry, gives `None`: the caller decodes, which also names the error.

use std::collections::HashSet;

use prost::encoding::{WireType, encode_key};
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};

use super::{Hop, Record, scalar};

/// What becomes of one field of the source version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Copied as it is: the target has it under the same number.
    Keep,
    /// Copied under the target's number for its name.
    Renumber(u32),
    /// A step names this scalar: read into the steps' record.
    Read(FieldDescriptor),
    /// A step names it: decoded with the message and handed to the steps.
    Step,
    /// Neither: a payload holding it is decoded whole.
    Decode,
}

/// How payloads of one version are brought to one target on the wire.
#[derive(Debug, Clone)]
pub(super) struct WirePlan {
    pub(super) source: MessageDescriptor,
    pub(super) target: MessageDescriptor,
    /// By source field number, ascending.
    actions: Vec<(u32, Action)>,
}

/// A payload split by a plan.
pub(super) struct Split {
    /// The fields the steps need.
    pub(super) stepped: Record,
    /// The carried fields, already under their target numbers.
    pub(super) carried: Vec<u8>,
}

impl WirePlan {
    /// The plan for payloads of `source` taken through `hops`, in order;
    /// `None` when a step may touch any field.
    pub(super) fn new(source: &MessageDescriptor, hops: &[&Hop]) -> Option<Self> {
        let mut touched: HashSet<&str> = HashSet::new();
        for hop in hops {
            for step in &hop.steps {
                touched.extend(step.touches.as_ref()?.iter().map(|name| &**name));
            }
        }
        let versions: Vec<&MessageDescriptor> = hops.iter().map(|hop| &hop.target).collect();
        let target = (*versions.last()?).clone();
        let mut actions: Vec<(u32, Action)> = source
            .fields()
            .map(|field| {
                let action = if touched.contains(field.name()) {
                    if scalar::stands_alone(&field) {
                        Action::Read(field.clone())
                    } else {
                        Action::Step
                    }
                } else {
                    match carried_number(&field, &versions, &touched) {
                        Some(number) if number == field.number() => Action::Keep,
                        Some(number) => Action::Renumber(number),
                        None => Action::Decode,
                    }
                };
                (field.number(), action)
            })
            .collect();
        actions.sort_unstable_by_key(|(number, _)| *number);
        Some(Self {
            source: source.clone(),
            target,
            actions,
        })
    }

    /// Splits a payload that is valid for the source version and holds no
    /// unknown field; `None` when it holds a field the plan cannot carry.
    pub(super) fn split(&self, payload: &[u8]) -> Option<Split> {
        let mut split = Split {
            stepped: Record::default(),
            carried: Vec::with_capacity(payload.len() + 8),
        };
        let mut stepped = Vec::new();
        for record in crate::wire_check::records(payload) {
            let record = record?;
            // Groups (proto2) are left to the decoding path.
            if matches!(record.wire_type, WireType::StartGroup | WireType::EndGroup) {
                return None;
            }
            match self.action(record.number)? {
                Action::Keep => split.carried.extend_from_slice(record.whole),
                Action::Renumber(target) => {
                    encode_key(*target, record.wire_type, &mut split.carried);
                    split.carried.extend_from_slice(record.value);
                }
                Action::Read(field) => {
                    let value = scalar::decode(field, record.wire_type, record.value)?;
                    split.stepped.push_read(field, value);
                }
                Action::Step => stepped.extend_from_slice(record.whole),
                Action::Decode => return None,
            }
        }
        if !stepped.is_empty() {
            let message = DynamicMessage::decode(self.source.clone(), stepped.as_slice()).ok()?;
            split.stepped.extend_from_message(message);
        }
        Some(split)
    }

    fn action(&self, number: u32) -> Option<&Action> {
        self.actions
            .binary_search_by_key(&number, |(number, _)| *number)
            .ok()
            .map(|index| &self.actions[index].1)
    }
}

/// The target number of a field no step names, when every version of the
/// chain has a field of its name with its wire form, outside any oneof a
/// step writes into.
fn carried_number(
    field: &FieldDescriptor,
    versions: &[&MessageDescriptor],
    touched: &HashSet<&str>,
) -> Option<u32> {
    let steps_into = |field: &FieldDescriptor| {
        oneof_members(field)
            .is_some_and(|members| members.iter().any(|name| touched.contains(name.as_str())))
    };
    if steps_into(field) {
        return None;
    }
    let mut number = None;
    for version in versions {
        let there = version.get_field_by_name(field.name())?;
        if steps_into(&there) || !same_wire_form(field, &there, &mut HashSet::new()) {
            return None;
        }
        number = Some(there.number());
    }
    number
}

/// Whether a value of `source` on the wire reads as the same value of
/// `target`, as fitting it by name would make it.
fn same_wire_form(
    source: &FieldDescriptor,
    target: &FieldDescriptor,
    seen: &mut HashSet<(String, String)>,
) -> bool {
    if source.is_list() != target.is_list()
        || source.is_map() != target.is_map()
        || source.is_group() != target.is_group()
        || source.supports_presence() != target.supports_presence()
        || oneof_members(source) != oneof_members(target)
    {
        return false;
    }
    match (source.kind(), target.kind()) {
        (Kind::Message(source), Kind::Message(target)) => same_message(&source, &target, seen),
        // Enum numbers cross versions by name: the same numbers under the
        // same names read alike.
        (Kind::Enum(source), Kind::Enum(target)) => {
            source == target
                || source.values().all(|value| {
                    target
                        .get_value_by_name(value.name())
                        .is_some_and(|there| there.number() == value.number())
                })
        }
        (source, target) => source == target,
    }
}

/// Whether every field of `source` is in `target` under its number and in
/// its wire form, so a nested message's bytes read alike.
fn same_message(
    source: &MessageDescriptor,
    target: &MessageDescriptor,
    seen: &mut HashSet<(String, String)>,
) -> bool {
    if source == target {
        return true;
    }
    // A recursive type: a pair met again holds if the rest does.
    if !seen.insert((source.full_name().to_owned(), target.full_name().to_owned())) {
        return true;
    }
    source.fields().all(|field| {
        target.get_field_by_name(field.name()).is_some_and(|there| {
            there.number() == field.number() && same_wire_form(&field, &there, seen)
        })
    })
}

/// The names in the field's oneof (proto3 `optional` included), sorted.
fn oneof_members(field: &FieldDescriptor) -> Option<Vec<String>> {
    field.containing_oneof().map(|oneof| {
        let mut names: Vec<String> = oneof.fields().map(|f| f.name().to_owned()).collect();
        names.sort_unstable();
        names
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DynamicMessage, ReflectMessage as _};
    use serde_json::json;

    use super::super::{
        CodeSteps, UpcastError, Upcasters,
        check::{
            build,
            tests::{config, registry, shop_chain, shop_schemas},
        },
    };

    /// The two paths from one payload, each result as the bytes of its
    /// message decoded again (so explicitly set defaults read alike): the
    /// wire plan's (`None` where it does not take the payload) and the
    /// decoding path's.
    fn both_paths(
        upcasters: &Upcasters,
        event_type: &str,
        (from, to): (u32, u32),
        payload: &DynamicMessage,
    ) -> (Option<DynamicMessage>, Result<DynamicMessage, UpcastError>) {
        let wire = upcasters
            .upcast_on_wire(event_type, from, to, &payload.encode_to_vec())
            .map(|(bytes, target)| {
                DynamicMessage::decode(target, bytes.as_slice()).expect("the wire result decodes")
            });
        let decoded = upcasters
            .upcast_payload(event_type, from, to, payload.clone())
            .map(|message| {
                let bytes = message.encode_to_vec();
                DynamicMessage::decode(message.descriptor(), bytes.as_slice())
                    .expect("the decoding path's result decodes")
            });
        (wire, decoded)
    }

    fn example() -> (Upcasters, crate::schema::SchemaRegistry) {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/jetline.yaml"
        ));
        let prepared = crate::prepare(crate::config::load(path).expect("the example loads"))
            .expect("the example prepares");
        (
            prepared.upcasters.as_ref().clone(),
            prepared.decoder.registry().clone(),
        )
    }

    fn message(
        registry: &crate::schema::SchemaRegistry,
        event_type: &str,
        version: u32,
        json: serde_json::Value,
    ) -> DynamicMessage {
        let descriptor = registry
            .resolve(event_type, version)
            .expect("the version")
            .clone();
        DynamicMessage::deserialize(descriptor, json).expect("a valid payload")
    }

    proptest! {
        #[test]
        fn the_example_chain_on_the_wire_builds_what_decoding_builds(
            version in 1u32..3,
            order_id in ".{0,12}",
            total in prop_oneof![any::<f64>(), -1e6..1e6f64, Just(0.0), Just(1.005)],
            currency in prop_oneof![Just(String::new()), "[A-Z]{3}"],
            items in proptest::collection::vec(("[a-z0-9]{0,8}", any::<u32>(), any::<f64>()), 0..4),
        ) {
            let (upcasters, registry) = example();
            prop_assert!(upcasters.needs_no_decoding("orders.OrderCreated", version, None));
            let items: Vec<_> = items.iter().filter(|(_, _, price)| price.is_finite()).map(|(sku, quantity, price)| {
                json!({ "sku": sku, "quantity": quantity, "unitPrice": price })
            }).collect();
            let total_json = if total.is_finite() { json!(total) } else { json!(total.to_string()) };
            let payload = match version {
                1 => json!({ "orderId": order_id, "total": total_json, "items": items }),
                _ => json!({ "orderId": order_id, "totalAmount": total_json, "currency": currency, "items": items }),
            };
            let payload = message(&registry, "orders.OrderCreated", version, payload);
            match both_paths(&upcasters, "orders.OrderCreated", (version, 3), &payload) {
                (Some(wire), Ok(decoded)) => prop_assert_eq!(wire, decoded),
                (None, Err(_)) => {}
                (wire, decoded) => prop_assert!(false, "the paths disagree: wire {:?}, decoding {:?}", wire, decoded),
            }
        }
    }

    #[test]
    fn the_shop_chain_on_the_wire_builds_what_decoding_builds_and_leaves_failures_to_it() {
        let schemas = shop_schemas();
        let config = config(schemas.path(), &json!({ "shop.Order": shop_chain() }), None);
        let registry = registry(schemas.path());
        let upcasters = build(&config, &registry, &CodeSteps::default()).expect("valid");
        let rich = json!({
            "id": "o1", "total": 12.345, "amountText": "7.5", "status": "STATUS_PAID",
            "state": "paid", "address": { "street": "Main 1", "town": "Oslo" },
            "items": [{ "sku": "a", "price": 1.005, "count": 2 }, { "sku": "b", "price": 2 }],
            "labels": { "k": "v", "l": "w" }, "big": "42", "prices": [1.5, 2], "flag": true, "note": "x"
        });
        let (wire, decoded) = both_paths(
            &upcasters,
            "shop.Order",
            (1, 2),
            &message(&registry, "shop.Order", 1, rich),
        );
        assert_eq!(wire.expect("the plan takes it"), decoded.expect("upcasts"));
        for failing in [
            json!({ "state": "refunded" }),
            json!({ "amountText": "lots" }),
            json!({ "big": "9000000000" }),
        ] {
            let (wire, decoded) = both_paths(
                &upcasters,
                "shop.Order",
                (1, 2),
                &message(&registry, "shop.Order", 1, failing.clone()),
            );
            assert!(wire.is_none(), "{failing}");
            assert!(
                matches!(decoded, Err(UpcastError::Step(_))),
                "{failing}: {decoded:?}"
            );
        }
    }

    const KIT_V1: &str = r#"
syntax = "proto3";
package kit.v1;
message Part { string name = 1; int32 size = 2; }
message Box {
  string id = 1;
  int32 count = 2;
  Part part = 3;
  string label = 4;
  oneof choice { string a = 5; string b = 6; }
  string note = 7;
}
"#;

    /// Renumbered, retyped and reshaped fields beside carried ones.
    const KIT_V2: &str = r#"
syntax = "proto3";
package kit.v2;
message Part { string name = 2; int32 size = 1; }
message Box {
  string id = 9;
  int64 count = 2;
  Part part = 3;
  string title = 4;
  oneof choice { string a = 5; string b = 6; }
  string note = 7;
}
"#;

    fn kit(
        chain: serde_json::Value,
        code: &CodeSteps,
    ) -> (tempfile::TempDir, Upcasters, crate::schema::SchemaRegistry) {
        let dir = tempfile::tempdir().expect("schema dir");
        for (version, text) in [("v1", KIT_V1), ("v2", KIT_V2)] {
            let folder = dir.path().join("kit").join(version);
            std::fs::create_dir_all(&folder).expect("folder");
            std::fs::write(folder.join("kit.proto"), text).expect("schema");
        }
        let config = config(dir.path(), &json!({ "kit.Box": chain }), None);
        let registry = registry(dir.path());
        let upcasters = build(&config, &registry, code).expect("valid chain");
        (dir, upcasters, registry)
    }

    #[test]
    fn a_field_is_carried_under_its_new_number_and_one_that_reads_otherwise_is_decoded() {
        let chain = json!([{ "from": 1, "to": 2, "steps": [{ "rename": { "from": "label", "to": "title" } }] }]);
        let (_dir, upcasters, registry) = kit(chain, &CodeSteps::default());
        let plan = upcasters.plan("kit.Box", 1, 2).expect("a plan");
        let label = plan.source.get_field(4).expect("label");
        use super::Action::*;
        assert_eq!(
            plan.actions,
            vec![
                (1, Renumber(9)),
                (2, Decode),
                (3, Decode),
                (4, Read(label)),
                (5, Keep),
                (6, Keep),
                (7, Keep)
            ]
        );
        let carried = json!({ "id": "b-1", "label": "big", "b": "bee", "note": "n" });
        let (wire, decoded) = both_paths(
            &upcasters,
            "kit.Box",
            (1, 2),
            &message(&registry, "kit.Box", 1, carried),
        );
        let wire = wire.expect("the plan takes it");
        assert_eq!(wire, decoded.expect("upcasts"));
        assert_eq!(
            serde_json::to_value(&wire).expect("json"),
            json!({ "id": "b-1", "title": "big", "b": "bee", "note": "n" })
        );
        // Field numbers swapped in the nested message: its bytes would
        // read otherwise, so decoding carries it by name.
        let nested = message(
            &registry,
            "kit.Box",
            1,
            json!({ "id": "b-2", "part": { "name": "p", "size": 3 } }),
        );
        let (wire, decoded) = both_paths(&upcasters, "kit.Box", (1, 2), &nested);
        assert!(wire.is_none());
        assert_eq!(
            serde_json::to_value(decoded.expect("upcasts")).expect("json"),
            json!({ "id": "b-2", "part": { "name": "p", "size": 3 } })
        );
        // A type changed with no step: decoding names the misfit.
        let retyped = message(&registry, "kit.Box", 1, json!({ "count": 3 }));
        let (wire, decoded) = both_paths(&upcasters, "kit.Box", (1, 2), &retyped);
        assert!(wire.is_none());
        assert!(
            matches!(decoded, Err(UpcastError::Invalid(_))),
            "{decoded:?}"
        );
    }

    #[test]
    fn a_sink_that_names_its_fields_reads_them_as_decoding_the_whole_payload_does() {
        let (_dir, _upcasters, registry) = kit(
            json!([{ "from": 1, "to": 2, "steps": [{ "rename": { "from": "label", "to": "title" } }] }]),
            &CodeSteps::default(),
        );
        let decoder =
            crate::envelope::Decoder::new(registry.clone(), crate::config::UnknownFields::Reject);
        let document = json!({
            "eventId": "e-1", "eventType": "kit.Box", "schemaVersion": 2,
            "aggregateId": "b-1", "occurredAt": "2026-01-02T03:04:05Z", "payload": {}
        });
        let mut envelope = decoder
            .decode(
                Some(crate::envelope::CONTENT_TYPE_JSON),
                &serde_json::to_vec(&document).expect("json"),
            )
            .expect("valid");
        // id, then both members of the oneof (the last one given wins), then
        // a nested part.
        let mut payload = vec![0x4a, 2, b'b', b'1', 0x2a, 1, b'x', 0x32, 1, b'y'];
        payload.extend([0x1a, 3, 0x12, 1, b'p']);
        let whole = DynamicMessage::decode(envelope.payload.descriptor(), payload.as_slice())
            .expect("valid v2");
        envelope.encoded_payload = Some(payload.into());
        let names = ["a", "part", "absent"]
            .map(str::to_owned)
            .into_iter()
            .collect();
        envelope.decode_payload_fields(&names).expect("decodes");
        assert!(envelope.encoded_payload.is_none());
        let read = |message: &DynamicMessage, name: &str| {
            message
                .get_field_by_name(name)
                .map(|value| value.into_owned())
                .filter(|_| message.has_field_by_name(name))
        };
        for name in ["a", "b", "part"] {
            assert_eq!(read(&envelope.payload, name), read(&whole, name), "{name}");
        }
        assert_eq!(
            read(&envelope.payload, "a"),
            None,
            "b, given last, is the member set"
        );
        assert_eq!(
            read(&envelope.payload, "id"),
            None,
            "not named: not decoded"
        );
        assert!(read(&whole, "id").is_some());
    }

    /// A code step that reads every field.
    struct Shout;

    impl super::super::Upcaster for Shout {
        fn apply(&self, payload: &mut super::super::Record) -> Result<(), super::super::StepError> {
            payload.set(
                "title",
                prost_reflect::Value::String(payload.names().collect::<Vec<_>>().join(",")),
            );
            Ok(())
        }

        fn describe(&self) -> String {
            "names the fields in title".into()
        }
    }

    #[test]
    fn a_chain_with_a_code_step_is_decoded() {
        let mut code = CodeSteps::default();
        code.register("shout", Shout);
        let chain = json!([{ "from": 1, "to": 2, "steps": [{ "remove": { "field": "label" } }, { "code": "shout" }] }]);
        let (_dir, upcasters, registry) = kit(chain, &code);
        assert!(upcasters.plan("kit.Box", 1, 2).is_none());
        assert!(!upcasters.needs_no_decoding("kit.Box", 1, None));
        assert!(upcasters.needs_no_decoding("kit.Box", 2, None));
        let (wire, decoded) = both_paths(
            &upcasters,
            "kit.Box",
            (1, 2),
            &message(&registry, "kit.Box", 1, json!({ "id": "x", "note": "n" })),
        );
        assert!(wire.is_none());
        assert_eq!(
            serde_json::to_value(decoded.expect("upcasts")).expect("json"),
            json!({ "id": "x", "note": "n", "title": "id,note" })
        );
    }
}

#[cfg(test)]
mod envelope_tests {
    use std::path::Path;

    use bytes::Bytes;
    use serde_json::json;

    use crate::envelope::{CONTENT_TYPE_JSON, Encoding, PayloadNeed};

    #[test]
    fn an_envelope_held_encoded_is_upcast_on_the_wire_and_encodes_as_if_decoded() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../config/jetline.yaml"
        ));
        let prepared = crate::prepare(crate::config::load(path).expect("the example loads"))
            .expect("the example prepares");
        let document = json!({
            "eventId": "e-1", "eventType": "orders.OrderCreated", "schemaVersion": 1,
            "aggregateId": "o-1", "occurredAt": "2026-01-02T03:04:05Z",
            "payload": { "orderId": "o-1", "total": 2.5, "items": [{ "sku": "a", "quantity": 1 }] }
        });
        let decoded = prepared
            .decoder
            .decode(
                Some(CONTENT_TYPE_JSON),
                &serde_json::to_vec(&document).expect("json"),
            )
            .expect("valid");
        let body = Bytes::from(decoded.encode_protobuf());
        let mut held = prepared
            .decoder
            .decode_for(Encoding::Protobuf, &body, |_, _| PayloadNeed::Valid)
            .expect("valid");
        assert!(held.encoded_payload.is_some());
        let mut slow = decoded;
        assert_eq!(prepared.upcasters.upcast(&mut held, None), Ok(Some((1, 3))));
        assert_eq!(prepared.upcasters.upcast(&mut slow, None), Ok(Some((1, 3))));
        assert!(held.encoded_payload.is_some(), "stays encoded");
        assert_eq!(held.schema_version, 3);
        assert_eq!(held.to_json(), slow.to_json());
        let again = prepared
            .decoder
            .decode(Some("application/protobuf"), &held.encode_protobuf())
            .expect("the upcast envelope is valid v3");
        assert_eq!(again.to_json(), slow.to_json());
        assert_eq!(
            again.to_json().expect("json")["payload"],
            json!({ "orderId": "o-1", "totalAmountCents": "250", "currency": "USD", "items": [{ "sku": "a", "quantity": 1 }] })
        );
    }
}
