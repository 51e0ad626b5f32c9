//! Upcasting end to end: v1, v2 and v3 events, binary and JSON, reach a
//! JetStream sink as v3 (and a pinned sink as v2) with the same content; an
//! event whose upcast fails is dead-lettered as `upcast_failed` without
//! holding up the others. Also `jetline upcast` and `jetline check` on chains.

use std::{io::Write as _, time::Duration};

use jetline::dead_letter::header as dlq;
use serde_json::{Value, json};

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(30);

/// The `upcasters:` block of the shipped example configuration, as JSON.
fn example_upcasters() -> String {
    let config =
        jetline::config::load(&root().join("config/jetline.yaml")).expect("example config loads");
    serde_json::to_string(&config.upcasters).expect("json")
}

fn items() -> Value {
    json!([{ "sku": "sku-1", "quantity": 2, "unitPrice": 1.25 }])
}

/// One order at each version, the same order in the words of each.
fn order_at(version: u32) -> Value {
    let common = json!({ "orderId": "order", "customerId": "c-7", "items": items() });
    let mut payload = common.clone();
    match version {
        1 => payload["total"] = json!(12.345),
        2 => {
            payload["totalAmount"] = json!(12.345);
            payload["currency"] = json!("USD");
        }
        _ => {
            payload["totalAmountCents"] = json!("1235");
            payload["currency"] = json!("USD");
        }
    }
    payload
}

#[tokio::test]
async fn every_version_and_encoding_reaches_the_sink_at_its_target_version() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "UPC", &["upc.>"]).await;
    create_stream(&js, "UPC_OUT", &["upcout.>"]).await;
    create_stream(&js, "UPC_PIN", &["upcpin.>"]).await;

    let mut batch = Vec::new();
    for version in 1..=3 {
        for (encoding, outgoing) in [
            ("bin", Outgoing::binary as fn(&str, &Value) -> Outgoing),
            ("json", Outgoing::json),
        ] {
            let document = order_created(
                &format!("v{version}-{encoding}"),
                &format!("o-{version}-{encoding}"),
                version,
                order_at(version),
            );
            batch.push(outgoing("upc.created", &document));
        }
    }
    // No int64 holds 1e300 x 100: the v2 -> v3 convert refuses it. The next
    // event of the same order must still go through.
    let mut unconvertible = order_at(1);
    unconvertible["total"] = json!(1e300);
    batch.push(Outgoing::binary(
        "upc.bad",
        &order_created("bad", "o-bad", 1, unconvertible),
    ));
    batch.push(Outgoing::json(
        "upc.created",
        &order_created("after-bad", "o-bad", 1, order_at(1)),
    ));
    batch.push(Outgoing::json(
        "upc.shipped",
        &shipped_v1("shipped", "o-1-bin", "T-1"),
    ));
    let published = batch.len() as u64;
    publish_all(&js, batch).await;

    let yaml = config_yaml(
        &server.url(),
        &format!(
            "
sources:
  orders: {{ stream: UPC, subjects: ['upc.>'] }}
sinks:
  newest: {{ type: jetstream, subject: 'upcout.{{aggregate_id}}', headers: full }}
  pinned: {{ type: jetstream, subject: 'upcpin.{{aggregate_id}}', schema_version: 2 }}
routes:
  - {{ name: all, from: orders, to: [newest, pinned] }}
dead_letter: {{ stream: DLQ_UPC, subject_prefix: dlq_upc }}
upcasters: {}
",
            example_upcasters()
        ),
    );
    let jetline = Running::start(&yaml);
    eventually(
        TIMEOUT,
        "every event applied or dead-lettered, per sink",
        || async {
            let settled = stream_count(&js, "UPC_OUT").await
                + stream_count(&js, "UPC_PIN").await
                + stream_count(&js, "DLQ_UPC").await;
            (settled == 2 * published).then_some(())
        },
    )
    .await;
    // Give a wrongly repeated write the time to show up before stopping.
    tokio::time::sleep(Duration::from_millis(500)).await;
    jetline.stop().await;

    let letters = stream_messages(&js, "DLQ_UPC").await;
    let header = |message: &async_nats::jetstream::message::StreamMessage, name: &str| {
        message
            .headers
            .get(name)
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default()
    };
    let dead_for = |sink: &str| {
        letters
            .iter()
            .filter(|letter| header(letter, dlq::SINK) == sink)
            .collect::<Vec<_>>()
    };
    for letter in &letters {
        assert_eq!(header(letter, dlq::REASON), "upcast_failed");
        assert!(!header(letter, dlq::ERROR).is_empty());
    }

    // Newest: everything at v3, the one unconvertible event dead-lettered.
    let newest = stream_messages(&js, "UPC_OUT").await;
    let newest_dead = dead_for("newest");
    assert_eq!(newest.len() as u64 + newest_dead.len() as u64, published);
    assert_eq!(newest_dead.len(), 1);
    assert_eq!(header(newest_dead[0], dlq::SOURCE_SUBJECT), "upc.bad");
    let expected_v3 = decode_json(&order_created("x", "x", 3, order_at(3))).payload;
    let mut created_seen = Vec::new();
    for message in &newest {
        let envelope = DECODER
            .decode(None, &message.payload)
            .expect("the sink wrote a valid envelope");
        if envelope.event_type == "orders.OrderShipped" {
            assert_eq!(envelope.schema_version, 1);
            continue;
        }
        assert_eq!(envelope.schema_version, 3, "{}", envelope.event_id);
        assert_eq!(header(message, "Jetline-Schema-Version"), "3");
        assert_eq!(envelope.payload, expected_v3, "{}", envelope.event_id);
        // The rest of the envelope is the producer's.
        assert_eq!(
            envelope.correlation_id,
            format!("corr-{}", envelope.event_id)
        );
        assert_eq!(
            message.subject.as_str(),
            format!("upcout.{}", envelope.aggregate_id)
        );
        created_seen.push(envelope.event_id);
    }
    created_seen.sort();
    assert_eq!(
        created_seen,
        [
            "after-bad",
            "v1-bin",
            "v1-json",
            "v2-bin",
            "v2-json",
            "v3-bin",
            "v3-json"
        ]
    );

    // Pinned at 2: v1 and v2 at v2; v3 is never downcast, so dead-lettered.
    let pinned = stream_messages(&js, "UPC_PIN").await;
    // The default header set: the id and the content type, nothing of Jetline's.
    for message in &pinned {
        let names: Vec<&str> = message
            .headers
            .iter()
            .map(|(name, _)| name.as_ref())
            .collect();
        assert!(
            names.iter().all(|name| !name.starts_with("Jetline-")),
            "{names:?}"
        );
        assert_eq!(header(message, "Content-Type"), "application/protobuf");
    }
    let pinned_dead = dead_for("pinned");
    assert_eq!(pinned.len() as u64 + pinned_dead.len() as u64, published);
    let mut dead_events: Vec<String> = pinned_dead
        .iter()
        .map(|letter| {
            let content_type = letter
                .headers
                .get("Content-Type")
                .map(|value| value.as_str().to_owned());
            let original = DECODER
                .decode(content_type.as_deref(), &letter.payload)
                .expect("the original event");
            original.event_id
        })
        .collect();
    dead_events.sort();
    assert_eq!(dead_events, ["v3-bin", "v3-json"]);
    let expected_v2 = decode_json(&order_created("x", "x", 2, order_at(2))).payload;
    for message in &pinned {
        let envelope = DECODER
            .decode(None, &message.payload)
            .expect("valid envelope");
        if envelope.event_type == "orders.OrderShipped" {
            continue;
        }
        assert_eq!(envelope.schema_version, 2, "{}", envelope.event_id);
        if envelope.event_id != "bad" {
            assert_eq!(envelope.payload, expected_v2, "{}", envelope.event_id);
        }
    }
}

#[test]
fn jetline_upcast_prints_a_payload_or_an_envelope_at_the_newest_version() {
    let config = root().join("config/jetline.yaml");
    let config = config.to_str().expect("utf-8 path");
    let payload_at = |version| {
        vec![
            "upcast",
            "--config",
            config,
            "--type",
            "orders.OrderCreated",
            "--from-version",
            version,
        ]
    };
    let payload = order_at(1).to_string();
    let (code, stdout, stderr) = jetline_cli(&payload_at("1"), &payload);
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("JSON out");
    assert_eq!(
        printed,
        serde_json::to_value(decode_json(&order_created("x", "x", 3, order_at(3))).payload)
            .expect("json")
    );

    let envelope = order_created("e-1", "o-1", 2, order_at(2)).to_string();
    let (code, stdout, stderr) = jetline_cli(&["upcast", "--config", config], &envelope);
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("JSON out");
    assert_eq!(printed["schemaVersion"], 3);
    assert_eq!(printed["eventId"], "e-1");
    assert_eq!(printed["payload"]["totalAmountCents"], "1235");

    let (code, stdout, stderr) = jetline_cli(
        &["upcast", "--config", config, "--to-version", "2"],
        &envelope,
    );
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(&stdout).expect("JSON out");
    assert_eq!(printed["schemaVersion"], 2);

    let mut unconvertible = order_at(1);
    unconvertible["total"] = json!(1e300);
    let failures = [
        (payload_at("1"), unconvertible.to_string()),
        (vec!["upcast", "--config", config], payload.clone()),
        (payload_at("7"), payload),
        (vec!["upcast", "--config", config], "not json".to_owned()),
    ];
    for (args, input) in failures {
        let (code, stdout, stderr) = jetline_cli(&args, &input);
        assert_eq!(code, 1, "{args:?}: {stdout}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

#[test]
fn jetline_check_prints_the_chains_and_names_the_key_of_a_broken_step() {
    let body = |upcasters: &str| {
        config_yaml(
            "nats://127.0.0.1:1",
            &format!(
                "
sources:
  orders: {{ stream: ORDERS, subjects: ['orders.>'] }}
sinks:
  out: {{ type: jetstream, subject: 'projections.{{aggregate_id}}' }}
routes:
  - {{ name: all, from: orders, to: [out] }}
upcasters: {upcasters}
"
            ),
        )
    };
    let check = |yaml: &str| {
        let mut file = tempfile::NamedTempFile::new().expect("config file");
        file.write_all(yaml.as_bytes()).expect("written");
        let path = file.path().to_str().expect("utf-8 path").to_owned();
        jetline_cli(&["check", "--config", &path], "")
    };
    let example = example_upcasters();
    let (code, stdout, stderr) = check(&body(&example));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("orders.OrderCreated: v1 -> v2 -> v3"),
        "{stdout}"
    );
    assert!(stdout.contains("rename total -> total_amount"), "{stdout}");
    assert!(!stdout.contains("warnings:"), "{stdout}");

    let without_default = example
        .replace(r#"{"set_default":{"field":"currency","value":"USD"}}"#, "")
        .replace(",]", "]");
    assert_ne!(
        without_default, example,
        "the example's set_default step was found"
    );
    let (code, stdout, stderr) = check(&body(&without_default));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("warnings:") && stdout.contains("currency"),
        "{stdout}"
    );

    let broken = example.replace(r#""from":"total""#, r#""from":"totl""#);
    let (code, _, stderr) = check(&body(&broken));
    assert_eq!(code, 2, "{stderr}");
    // Found only against the schemas, and still given its line.
    assert!(
        stderr.contains("upcasters.orders.OrderCreated[0].steps[0].rename.from (line "),
        "{stderr}"
    );
}
