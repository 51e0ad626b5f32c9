//! The bodies of the fuzz targets, one function per target, each calling the
//! public functions `jetline run` uses on the example configuration and
//! schemas, and asserting what must hold for any input. `fuzz_targets/*.rs`
//! call them under libFuzzer; `pipeline/tests/fuzz_corpus.rs` compiles this
//! same file to replay the committed corpora on stable Rust.
//!
//! Every target returns quietly on an error (errors are data); a panic or a
//! failed assertion is a finding.

use std::{collections::HashMap, path::Path, sync::LazyLock};

use jetline::{
    Prepared,
    config::UnknownFields,
    envelope::{CONTENT_TYPE_JSON, DecodeError, Encoding, Envelope, PayloadNeed, peek, wire},
    template::{Template, is_valid_subject, is_valid_subject_pattern, subject_matches},
    wire_check,
};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage as _};

/// The repository root: this file is compiled by crates one level below it.
const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `config/jetline.yaml` prepared against `schemas/`, as `jetline run` does.
static EXAMPLE: LazyLock<Example> = LazyLock::new(|| {
    let path = Path::new(ROOT).join("config/jetline.yaml");
    // The example files are part of the checkout, not fuzz input.
    let config = jetline::config::load(&path).expect("config/jetline.yaml loads");
    let prepared = jetline::prepare(config).expect("config/jetline.yaml prepares");
    let registry = prepared.decoder.registry();
    let subjects = registry
        .event_types()
        .into_iter()
        .flat_map(|(event_type, versions)| {
            versions.into_iter().map(move |version| {
                let descriptor = registry
                    .resolve(event_type, version)
                    .cloned()
                    .expect("a listed version resolves");
                (event_type.to_owned(), version, descriptor)
            })
        })
        .collect();
    Example { prepared, subjects }
});

struct Example {
    prepared: Prepared,
    /// Every (event type, version) of the example schemas, sorted.
    subjects: Vec<(String, u32, MessageDescriptor)>,
}

impl Example {
    /// The subject a selector byte picks.
    fn subject(&self, selector: u8) -> &(String, u32, MessageDescriptor) {
        &self.subjects[usize::from(selector) % self.subjects.len()]
    }
}

/// A binary envelope, as a source message body, through the decoder.
pub fn envelope_binary(data: &[u8]) {
    let decoder = &EXAMPLE.prepared.decoder;
    let decoded = decoder.decode(None, data);
    // The pass-through path validates on the wire instead of decoding: the
    // verdict must be the same.
    let validated = decoder.decode_for(
        Encoding::Protobuf,
        &bytes::Bytes::copy_from_slice(data),
        |_, _| PayloadNeed::Valid,
    );
    assert_same_verdict(&decoded, &validated);
    let peeked = peek(None, data);
    if let Ok(envelope) = decoded {
        let peeked = peeked.expect("a decodable envelope can be peeked");
        assert_eq!(peeked.event_id, envelope.event_id);
        assert_eq!(peeked.event_type, envelope.event_type);
        assert_eq!(peeked.schema_version, envelope.schema_version);
        assert_eq!(peeked.aggregate_id, envelope.aggregate_id);
        assert_round_trips(&envelope);
    }
}

/// A JSON envelope, as a source message body, through the decoder.
pub fn envelope_json(data: &[u8]) {
    let decoded = EXAMPLE
        .prepared
        .decoder
        .decode(Some(CONTENT_TYPE_JSON), data);
    let peeked = peek(Some(CONTENT_TYPE_JSON), data);
    if let Ok(envelope) = decoded {
        assert!(peeked.is_some(), "a decodable envelope can be peeked");
        assert_round_trips(&envelope);
    }
}

/// A payload against one of the example schemas: the wire check agrees with
/// prost-reflect's decoding (the first byte picks schema and policy).
pub fn payload_validate(data: &[u8]) {
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let (_, _, descriptor) = EXAMPLE.subject(selector & 0x7f);
    let policy = match selector & 0x80 {
        0 => UnknownFields::Reject,
        _ => UnknownFields::Allow,
    };
    let checked = wire_check::validate(descriptor, payload, policy);
    let unknown_path = |message: &DynamicMessage| match policy {
        UnknownFields::Reject => wire_check::unknown_field_path(message),
        UnknownFields::Allow => None,
    };
    match (DynamicMessage::decode(descriptor.clone(), payload), checked) {
        (Ok(message), Ok(())) => assert_eq!(unknown_path(&message), None),
        (Ok(message), Err(wire_check::WireError::UnknownField { path })) => {
            assert_eq!(unknown_path(&message), Some(path));
        }
        (Ok(_), Err(error)) => panic!("decodes, but the wire check says {error}"),
        (Err(error), Ok(())) => panic!("the wire check accepts what decoding refuses: {error}"),
        (Err(_), Err(_)) => {}
    }
}

/// A payload of one example (event type, version), decoded as the pipeline
/// does, then upcast to a sink's target version (the first byte picks type and
/// version, the second the sink's pin): the result is valid at its target.
pub fn upcast_chain(data: &[u8]) {
    let [selector, pin, payload @ ..] = data else {
        return;
    };
    let (event_type, version, _) = EXAMPLE.subject(*selector);
    let pin = match pin % 5 {
        0 => None,
        pinned => Some(u32::from(pinned)),
    };
    let body = wire::Envelope {
        event_id: "fuzz-1".into(),
        event_type: event_type.clone(),
        schema_version: *version,
        aggregate_id: "fuzz".into(),
        occurred_at: Some(prost_types::Timestamp::default()),
        payload: bytes::Bytes::copy_from_slice(payload),
        ..wire::Envelope::default()
    }
    .encode_to_vec();
    let decoder = &EXAMPLE.prepared.decoder;
    let Ok(mut envelope) = decoder.decode(None, &body) else {
        return;
    };
    match EXAMPLE.prepared.upcasters.upcast(&mut envelope, pin) {
        Ok(None) => assert_eq!(envelope.schema_version, *version),
        Ok(Some((from, to))) => {
            assert_eq!((from, to), (*version, envelope.schema_version));
            let target = decoder
                .registry()
                .resolve(event_type, to)
                .expect("the target version has a schema");
            assert_eq!(
                envelope.payload.descriptor().full_name(),
                target.full_name()
            );
            if let Err(error) = decoder.decode(None, &envelope.encode_protobuf()) {
                panic!("the upcast {from} -> {to} gives an invalid event: {error}");
            }
        }
        Err(_) => {}
    }
}

/// A template and the envelope fields it renders, one per line: template,
/// aggregate_id, aggregate_type, event_type, event_id, source subject.
pub fn template(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or_default();
    let (template_text, aggregate_id, aggregate_type) = (next(), next(), next());
    let (event_type, event_id, source_subject) = (next(), next(), next());
    // `jetline publish` parses without the subject check.
    if let Ok(parsed) = Template::parse(template_text) {
        assert_eq!(parsed.to_string(), template_text);
    }
    let _ = is_valid_subject_pattern(template_text);
    let _ = subject_matches(template_text, source_subject);
    let Ok(template) = Template::parse_subject(template_text) else {
        return;
    };
    let (_, _, descriptor) = EXAMPLE.subject(0);
    let envelope = Envelope {
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: aggregate_id.to_owned(),
        occurred_at: prost_types::Timestamp::default(),
        correlation_id: String::new(),
        causation_id: String::new(),
        source: String::new(),
        metadata: HashMap::new(),
        payload: DynamicMessage::new(descriptor.clone()),
        encoded_payload: None,
    };
    if let Ok(subject) = template.render_subject(&envelope, source_subject) {
        assert!(is_valid_subject(&subject), "rendered {subject:?}");
        assert!(is_valid_subject_pattern(&subject));
        assert!(subject_matches(&subject, &subject));
        assert!(subject_matches(">", &subject));
    }
}

/// A configuration file's text through load and validation, then, with the
/// example schemas, the start-up checks against them.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match jetline::config::load_str(text) {
        Ok(mut config) => {
            config.schemas.dir = Path::new(ROOT).join("schemas");
            let _ = jetline::prepare(config);
        }
        Err(errors) => assert!(!errors.0.is_empty(), "an error names its problems"),
    }
}

/// Two decodes of the same body fail the same way, or both succeed.
fn assert_same_verdict(
    decoded: &Result<Envelope, DecodeError>,
    validated: &Result<Envelope, DecodeError>,
) {
    match (decoded, validated) {
        (Ok(_), Ok(_)) => {}
        (Err(DecodeError::UnknownField { path, .. }), Err(other)) => {
            assert!(
                matches!(other, DecodeError::UnknownField { path: other_path, .. } if other_path == path),
                "decode names the unknown field {path}, the wire check says {other}"
            );
        }
        (Err(decode_error), Err(check_error)) => assert_eq!(
            std::mem::discriminant(decode_error),
            std::mem::discriminant(check_error),
            "decode: {decode_error}; wire check: {check_error}"
        ),
        (Ok(_), Err(error)) => panic!("decodes, but the wire check refuses: {error}"),
        (Err(error), Ok(_)) => panic!("the wire check accepts what decoding refuses: {error}"),
    }
}

/// A decoded envelope, encoded in either encoding as the sinks publish it,
/// decodes again to the same event. A binary payload may hold a value the
/// JSON mapping cannot express (a timestamp past year 9999): then the JSON
/// encoding is refused, never written as `null`, and protobuf still round
/// trips.
fn assert_round_trips(envelope: &Envelope) {
    let json = envelope.to_json();
    if let Ok(json) = &json {
        assert!(
            json.get("payload")
                .is_some_and(serde_json::Value::is_object),
            "the envelope's JSON form has its payload: {json}"
        );
    }
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        let body = match envelope.encode(encoding) {
            Ok(body) => body,
            Err(error) => {
                assert_eq!(encoding, Encoding::Json, "{error}");
                assert!(json.is_err(), "JSON encoding refused, to_json accepted");
                continue;
            }
        };
        match EXAMPLE
            .prepared
            .decoder
            .decode(Some(encoding.content_type()), &body)
        {
            Ok(again) => assert_eq!(again.to_json(), json, "{encoding:?} round trip"),
            Err(error) => panic!("{encoding:?} round trip fails: {error}"),
        }
    }
}
