//! Input an attacker would send, end to end: values NATS cannot take as a
//! subject or key, lax or oversized envelopes, a sink that panics, and dead
//! letters that must be stored once. Each is refused or dead-lettered with
//! its reason while the good events around it are applied.

use std::{collections::BTreeMap, process::Command, time::Duration};

use jetline::{
    dead_letter::{DeadLetter, DeadLetterReason, DeadLetters, header as dlq},
    sink::{Applied, Event, Sink, SinkError, custom::CustomSinks},
};
use prost::Message as _;
use prost_reflect::ReflectMessage as _;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Source `s` on `stream` (subjects `<stream lowercased>.>`) into one custom
/// sink `main`, with `sink_keys` added to its block and `extra` at the end.
fn custom_sink_yaml(url: &str, stream: &str, sink_keys: &str, extra: &str) -> String {
    let sink_keys = if sink_keys.is_empty() {
        String::new()
    } else {
        format!(", {sink_keys}")
    };
    let sinks = format!("  main: {{ type: custom{sink_keys} }}");
    custom_config(url, stream, &stream.to_lowercase(), &sinks, extra)
}

/// Reason per dead letter, keyed by `<sink> <event id>` (the id read from the
/// stored original, or its source sequence when it is not an envelope).
async fn dead_letters(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for entry in stream_messages(js, stream).await {
        let header = |name: &str| {
            entry
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default()
        };
        let content_type = entry.headers.get("Content-Type").map(|v| v.as_str());
        let id = jetline::envelope::peek(content_type, &entry.payload)
            .map(|peek| peek.event_id)
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("seq-{}", header(dlq::SOURCE_SEQ)));
        let previous = found.insert(format!("{} {id}", header(dlq::SINK)), header(dlq::REASON));
        assert!(previous.is_none(), "one entry per event and sink: {id}");
    }
    found
}

#[tokio::test]
async fn values_nats_cannot_take_are_rejected_before_anything_is_sent() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "HS", &["hs.>"]).await;
    create_stream(&js, "HS_OUT", &["hsout.>"]).await;
    let yaml = config_yaml(
        &server.url(),
        "
sources:
  s: { stream: HS, subjects: ['hs.>'] }
sinks:
  copy: { type: jetstream, subject: 'hsout.{aggregate_id}' }
  doc:
    type: kv
    bucket: HS_DOCS
    key: '{aggregate_id}'
    on:
      orders.OrderCreated: { increment: { events: 1 } }
routes:
  - { name: all, from: s, to: [copy, doc] }
dead_letter: { stream: DLQ_HS, subject_prefix: dlq_hs }
",
    );
    let hostile = [
        "a".repeat(5_000),
        "has.dot".to_owned(),
        "has space".to_owned(),
        "nul\u{0}byte".to_owned(),
        "wild*".to_owned(),
    ];
    let mut messages = vec![Outgoing::binary(
        "hs.created",
        &created_v3("good-1", "order-1", 1),
    )];
    for (n, id) in hostile.iter().enumerate() {
        let event = created_v3(&format!("bad-{n}"), id, 1);
        messages.push(Outgoing::binary("hs.created", &event));
    }
    messages.push(Outgoing::binary(
        "hs.created",
        &created_v3("good-2", "order-2", 2),
    ));
    publish_all(&js, messages).await;

    let running = Running::start(&yaml);
    for sink in ["copy", "doc"] {
        eventually(TIMEOUT, "every event settled", || async {
            consumer_settled(&js, "HS", &format!("jetline-s-{sink}"))
                .await
                .then_some(())
        })
        .await;
    }
    running.stop().await;

    let copied: Vec<String> = stream_messages(&js, "HS_OUT")
        .await
        .iter()
        .map(|message| message.subject.to_string())
        .collect();
    assert_eq!(copied, ["hsout.order-1", "hsout.order-2"]);
    let store = js.get_key_value("HS_DOCS").await.expect("bucket");
    for key in ["order-1", "order-2"] {
        assert!(
            store.get(key).await.expect("read").is_some(),
            "{key} applied"
        );
    }
    let letters = dead_letters(&js, "DLQ_HS").await;
    assert_eq!(letters.len(), 2 * hostile.len(), "{letters:?}");
    for (n, _) in hostile.iter().enumerate() {
        for sink in ["copy", "doc"] {
            assert_eq!(
                letters.get(&format!("{sink} bad-{n}")).map(String::as_str),
                Some("sink_rejected"),
                "{letters:?}"
            );
        }
    }
    // Refused before sending, so every attempt was the first.
    for entry in stream_messages(&js, "DLQ_HS").await {
        let attempts = entry
            .headers
            .get(dlq::ATTEMPTS)
            .map(|v| v.as_str().to_owned());
        assert_eq!(attempts.as_deref(), Some("1"));
        let error = entry.headers.get(dlq::ERROR).map(|v| v.as_str().len());
        assert!(
            error.unwrap_or_default() < 300,
            "errors quote a bounded part of the value"
        );
    }
}

#[tokio::test]
async fn lax_and_oversized_envelopes_are_dead_lettered_with_their_reason() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "LX", &["lx.>"]).await;
    let yaml = custom_sink_yaml(
        &server.url(),
        "LX",
        "",
        "limits: { max_message_bytes: 4096 }",
    );
    let good = |id: &str| created_v3(id, "order-1", 1);
    let duplicated = serde_json::to_string(&good("dup-key"))
        .expect("json")
        .replacen('{', "{\"aggregateId\":\"order-other\",", 1);
    let mut wide_version = to_binary(&good("wide-version"));
    prost::encoding::encode_key(3, prost::encoding::WireType::Varint, &mut wide_version);
    prost::encoding::encode_varint((1u64 << 32) + 3, &mut wide_version);
    assert_eq!(
        jetline::envelope::wire::Envelope::decode(wide_version.as_slice())
            .expect("prost reads it")
            .schema_version,
        3,
        "prost alone would apply it at version 3"
    );
    let mut large = good("too-large");
    large["metadata"] = serde_json::json!({ "padding": "x".repeat(5_000) });
    let mut deep = good("too-deep");
    let mut nested = serde_json::json!({});
    for _ in 0..100 {
        nested = serde_json::json!({ "n": nested });
    }
    deep["metadata"] = nested;
    let deep_text = serde_json::to_string(&deep).expect("json");
    let json = Some("application/json");
    publish_all(
        &js,
        vec![
            Outgoing::json("lx.created", &good("good-1")),
            Outgoing::raw("lx.created", json, duplicated.as_bytes()),
            Outgoing::raw("lx.created", None, &wide_version),
            Outgoing::json("lx.created", &large),
            Outgoing::raw("lx.created", json, deep_text.as_bytes()),
            Outgoing::json("lx.created", &good("good-2")),
        ],
    )
    .await;

    let sink = FlakySink::default();
    let running = Running::start_with(&yaml, CustomSinks::new().register("main", sink.clone()));
    eventually(TIMEOUT, "every event settled", || async {
        consumer_settled(&js, "LX", "jetline-s-main")
            .await
            .then_some(())
    })
    .await;
    running.stop().await;

    let applied: Vec<String> = sink.applied().into_iter().map(|e| e.event_id).collect();
    assert_eq!(applied, ["good-1", "good-2"]);
    let letters = dead_letters(&js, "DLQ_LX").await;
    let expected: BTreeMap<String, String> = [
        ("main dup-key", "invalid_envelope"),
        ("main wide-version", "invalid_envelope"),
        ("main too-large", "too_large"),
        ("main too-deep", "invalid_envelope"),
    ]
    .into_iter()
    .map(|(key, reason)| (key.to_owned(), reason.to_owned()))
    .collect();
    assert_eq!(letters, expected);
    // The dead letter keeps the original bytes, whatever was wrong with them.
    let stored: Vec<_> = stream_messages(&js, "DLQ_LX").await;
    assert!(
        stored
            .iter()
            .any(|entry| entry.payload.as_ref() == wide_version.as_slice())
    );
    assert!(
        stored
            .iter()
            .any(|entry| entry.payload.as_ref() == duplicated.as_bytes())
    );
}

/// Panics on the events its set names, applies the rest in memory.
#[derive(Clone, Default)]
struct PanickingSink {
    inner: FlakySink,
    panics_on: &'static [&'static str],
}

impl Sink for PanickingSink {
    async fn apply(&self, event: &Event) -> Result<Applied, SinkError> {
        if self.panics_on.contains(&event.envelope.event_id.as_str()) {
            panic!("a bug in a custom sink, on {}", event.envelope.event_id);
        }
        self.inner.apply(event).await
    }
}

#[tokio::test]
async fn a_sink_that_panics_fails_that_event_only() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "PN", &["pn.>"]).await;
    let yaml = custom_sink_yaml(
        &server.url(),
        "PN",
        "retry: { max_attempts: 3, backoff: [50ms], jitter: 0.0 }",
        "",
    );
    publish_all(
        &js,
        ["a-1", "boom", "a-3"]
            .iter()
            .map(|id| Outgoing::binary("pn.created", &created_v3(id, "order-a", 1)))
            .chain([Outgoing::binary(
                "pn.created",
                &created_v3("b-1", "order-b", 1),
            )])
            .collect(),
    )
    .await;
    let sink = PanickingSink {
        inner: FlakySink::default(),
        panics_on: &["boom"],
    };
    let running = Running::start_with(&yaml, CustomSinks::new().register("main", sink.clone()));
    eventually(TIMEOUT, "every event settled", || async {
        consumer_settled(&js, "PN", "jetline-s-main")
            .await
            .then_some(())
    })
    .await;

    let applied: Vec<String> = sink
        .inner
        .applied()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    let of_a: Vec<&String> = applied.iter().filter(|id| id.starts_with("a-")).collect();
    assert_eq!(
        of_a,
        ["a-1", "a-3"],
        "the aggregate moved on past the panic"
    );
    assert!(applied.contains(&"b-1".to_owned()));
    let letters = dead_letters(&js, "DLQ_PN").await;
    assert_eq!(
        letters.get("main boom").map(String::as_str),
        Some("max_attempts"),
        "{letters:?}"
    );
    assert_eq!(letters.len(), 1);
    // The process is still running and stops cleanly.
    running.stop().await;
}

#[tokio::test]
async fn a_dead_letter_stored_again_on_a_later_attempt_is_one_entry() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    let letters = DeadLetters::new(js.clone(), "DLQ_ONCE", "dlq_once");
    letters.ensure_stream().await.expect("stream");
    for attempts in [1, 2, 3] {
        let letter = DeadLetter {
            sink: "main",
            reason: DeadLetterReason::MaxAttempts,
            error: "timed out",
            source_stream: "ORDERS",
            source_subject: "orders.created",
            source_seq: 42,
            attempts,
            headers: None,
            body: bytes::Bytes::from_static(b"original"),
        };
        letters.publish(&letter).await.expect("stored");
    }
    assert_eq!(stream_count(&js, "DLQ_ONCE").await, 1);
}

#[tokio::test]
async fn the_dead_letter_stream_gone_or_full_holds_events_and_shows_in_readyz() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "DG", &["dg.>"]).await;
    let port = free_port();
    let yaml = custom_sink_yaml(&server.url(), "DG", "", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let running = Running::start_with(
        &yaml,
        CustomSinks::new().register("main", FlakySink::default()),
    );
    let ready = format!("http://127.0.0.1:{port}/readyz");
    eventually(TIMEOUT, "ready", || async {
        (http_get(&ready).await?.0 == 200).then_some(())
    })
    .await;

    // Full, refusing new entries: the poison event waits, unterminated.
    let mut dlq_stream = js.get_stream("DLQ_DG").await.expect("created at start");
    let mut config = dlq_stream.info().await.expect("info").config.clone();
    config.max_bytes = 1;
    config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    js.update_stream(&config).await.expect("limited");
    publish_all(
        &js,
        vec![Outgoing::raw("dg.created", None, b"\xff\xff garbage")],
    )
    .await;
    let reason = eventually(TIMEOUT, "/readyz saying why", || async {
        let (status, body) = http_get(&ready).await?;
        (status == 503 && body.contains("dead letters")).then_some(body)
    })
    .await;
    assert!(reason.contains("dead letters cannot be stored"), "{reason}");
    let consumer_info = || async {
        js.get_stream("DG")
            .await
            .expect("stream")
            .consumer_info("jetline-s-main")
            .await
            .expect("consumer")
    };
    assert_eq!(consumer_info().await.num_ack_pending, 1, "not terminated");
    assert_eq!(stream_count(&js, "DLQ_DG").await, 0);

    // Deleted: created again, the entry stored, ready again.
    js.delete_stream("DLQ_DG").await.expect("deleted");
    eventually(TIMEOUT, "the entry stored", || async {
        (stream_count(&js, "DLQ_DG").await == 1).then_some(())
    })
    .await;
    eventually(TIMEOUT, "ready again", || async {
        (http_get(&ready).await?.0 == 200).then_some(())
    })
    .await;
    eventually(TIMEOUT, "terminated", || async {
        consumer_settled(&js, "DG", "jetline-s-main")
            .await
            .then_some(())
    })
    .await;
    running.stop().await;
}

#[test]
fn publish_refuses_subjects_a_stream_cannot_store() {
    let mut config = tempfile::NamedTempFile::new().expect("file");
    std::io::Write::write_all(
        &mut config,
        config_yaml(
            "nats://127.0.0.1:1",
            "
sources:
  s: { stream: P, subjects: ['billing.>'] }
sinks:
  out: { type: jetstream, subject: 'x.{aggregate_id}' }
routes:
  - { name: all, from: s, to: [out] }
",
        )
        .as_bytes(),
    )
    .expect("written");
    for args in [
        vec!["--subject", "billing.*"],
        vec!["--subject", "billing.>"],
        vec!["--raw", "--subject", "billing.{aggregate_id}"],
    ] {
        let output = Command::new(jetline_bin())
            .args(["publish", "--config"])
            .arg(config.path())
            .args(&args)
            .arg("/dev/null")
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--subject"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_backlog_of_large_messages_is_applied_within_the_byte_budget() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "BG", &["bg.>"]).await;
    let yaml = custom_sink_yaml(
        &server.url(),
        "BG",
        "",
        "limits: { max_message_bytes: 300000, max_bytes_in_flight: 1000000 }",
    );
    let messages = (0..60)
        .map(|n| {
            let mut event = created_v3(&format!("big-{n}"), &format!("order-{}", n % 7), n);
            event["metadata"] = serde_json::json!({ "padding": "x".repeat(200_000) });
            Outgoing::json("bg.created", &event)
        })
        .collect();
    publish_all(&js, messages).await;
    let sink = FlakySink::default();
    let running = Running::start_with(&yaml, CustomSinks::new().register("main", sink.clone()));
    eventually(TIMEOUT, "every event settled", || async {
        consumer_settled(&js, "BG", "jetline-s-main")
            .await
            .then_some(())
    })
    .await;
    running.stop().await;
    assert_eq!(sink.applied_count(), 60);
    assert_eq!(stream_count(&js, "DLQ_BG").await, 0);
}

#[tokio::test]
async fn unknown_event_types_and_versions_do_not_grow_the_label_sets() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "LB", &["lb.>"]).await;
    let port = free_port();
    let yaml = custom_sink_yaml(&server.url(), "LB", "", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let mut messages = Vec::new();
    for n in 0..40 {
        let mut event = created_v3(&format!("lb-{n}"), "order-1", n);
        event["eventType"] = format!("bogus.Type{n}").into();
        messages.push(Outgoing::json("lb.created", &event));
        let mut version = created_v3(&format!("lbv-{n}"), "order-2", n);
        version["schemaVersion"] = (1000 + n).into();
        messages.push(Outgoing::json("lb.created", &version));
    }
    publish_all(&js, messages).await;
    let running = Running::start_with(
        &yaml,
        CustomSinks::new().register("main", FlakySink::default()),
    );
    eventually(TIMEOUT, "every event settled", || async {
        consumer_settled(&js, "LB", "jetline-s-main")
            .await
            .then_some(())
    })
    .await;
    let page = http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("/metrics")
        .1;
    running.stop().await;
    assert_eq!(stream_count(&js, "DLQ_LB").await, 80);
    assert!(page.contains("jetline_events_total"), "{page}");
    assert!(!page.contains("bogus"), "an input's type became a label");
    assert!(!page.contains("\"1000\"") && !page.contains("=\"1039\""));
}

/// A binary payload may hold a timestamp past year 9999: valid protobuf, but
/// the proto3 JSON mapping has no form for it. A sink that writes JSON
/// refuses that event (dead letter `sink_rejected`) instead of writing
/// `null`; a sink that passes the protobuf through applies it.
#[tokio::test]
async fn a_payload_value_without_json_form_is_rejected_by_json_sinks_only() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "HT", &["ht.>"]).await;
    // One output stream each: both publish with `Nats-Msg-Id` = event id.
    create_stream(&js, "HT_JSON", &["htjson.>"]).await;
    create_stream(&js, "HT_PB", &["htpb.>"]).await;
    let yaml = config_yaml(
        &server.url(),
        "
sources:
  s: { stream: HT, subjects: ['ht.>'] }
sinks:
  as_json: { type: jetstream, subject: 'htjson.{aggregate_id}', format: json }
  as_protobuf: { type: jetstream, subject: 'htpb.{aggregate_id}' }
  doc:
    type: kv
    bucket: HT_DOCS
    key: '{aggregate_id}'
    on:
      orders.OrderShipped: { set: { shipped_at: payload.shipped_at } }
routes:
  - { name: all, from: s, to: [as_json, as_protobuf, doc] }
dead_letter: { stream: DLQ_HT, subject_prefix: dlq_ht }
",
    );
    let shipped_at = |aggregate: &str, seconds: i64| {
        let mut envelope = decode_json(&shipped_v1(&format!("{aggregate}-1"), aggregate, "t"));
        let field = envelope
            .payload
            .descriptor()
            .get_field_by_name("shipped_at")
            .expect("shipped_at");
        let prost_reflect::Kind::Message(timestamp) = field.kind() else {
            panic!("shipped_at is a message");
        };
        let mut value = prost_reflect::DynamicMessage::new(timestamp);
        value.set_field_by_name("seconds", prost_reflect::Value::I64(seconds));
        envelope
            .payload
            .set_field(&field, prost_reflect::Value::Message(value));
        Outgoing::raw(
            "ht.shipped",
            Some("application/protobuf"),
            &envelope.encode_protobuf(),
        )
    };
    publish_all(
        &js,
        vec![
            shipped_at("far", 253_402_300_800),
            shipped_at("near", 1_800_000_000),
        ],
    )
    .await;

    let running = Running::start(&yaml);
    for sink in ["as_json", "as_protobuf", "doc"] {
        eventually(TIMEOUT, "every event settled", || async {
            consumer_settled(&js, "HT", &format!("jetline-s-{sink}"))
                .await
                .then_some(())
        })
        .await;
    }
    running.stop().await;

    for (stream, expected) in [
        ("HT_JSON", &["htjson.near"][..]),
        ("HT_PB", &["htpb.far", "htpb.near"][..]),
    ] {
        let mut copied: Vec<String> = stream_messages(&js, stream)
            .await
            .iter()
            .map(|message| message.subject.to_string())
            .collect();
        copied.sort();
        assert_eq!(copied, expected, "{stream}");
    }
    let store = js.get_key_value("HT_DOCS").await.expect("bucket");
    assert!(store.get("far").await.expect("read").is_none());
    let near = store
        .get("near")
        .await
        .expect("read")
        .expect("near applied");
    let near: serde_json::Value = serde_json::from_slice(&near).expect("document");
    assert_eq!(near["shipped_at"], "2027-01-15T08:00:00Z", "{near}");
    let letters = dead_letters(&js, "DLQ_HT").await;
    let expected: BTreeMap<String, String> = [
        ("as_json far-1", "sink_rejected"),
        ("doc far-1", "sink_rejected"),
    ]
    .into_iter()
    .map(|(key, reason)| (key.to_owned(), reason.to_owned()))
    .collect();
    assert_eq!(letters, expected);
}
