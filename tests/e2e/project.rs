//! `jetline project` as the built binary, on the shipped example
//! configurations and no server: a KV sink's documents across schema
//! versions (and from `--state`), a PostgreSQL sink's statements with typed
//! parameters, a webhook's requests with the secret header masked, a
//! JetStream sink's subjects and messages, and the exit codes of a line
//! that would be dead-lettered and of a sink that does not exist.

use jetline::config::SinkKind;
use serde_json::{Value, json};

use crate::support::*;

const BY_AGGREGATE: &str = "orders.{aggregate_id}";

fn example(file: &str) -> String {
    root()
        .join("config")
        .join(file)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// One JSON envelope per line.
fn lines(events: &[Value]) -> String {
    events.iter().map(|event| format!("{event}\n")).collect()
}

/// `jetline project` on `sink` of the example `file`, printing JSON; the
/// exit code, the output as JSON (null when there is none) and stderr.
fn project(file: &str, sink: &str, extra: &[&str], input: &str) -> (i32, Value, String) {
    project_with_env(file, sink, extra, &[], input)
}

fn project_with_env(
    file: &str,
    sink: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    input: &str,
) -> (i32, Value, String) {
    let config = example(file);
    let mut args = vec![
        "project",
        "--config",
        &config,
        "--sink",
        sink,
        "--subject",
        BY_AGGREGATE,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = jetline_cli_with_env(&args, env, input);
    let output = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("JSON out ({err}): {stdout}"))
    };
    (code, output, stderr)
}

fn created_at(version: u32, event_id: &str, aggregate_id: &str, cents: i64) -> Value {
    let amount = cents as f64 / 100.0;
    let payload = match version {
        1 => json!({ "orderId": aggregate_id, "customerId": "c-1", "total": amount }),
        2 => {
            json!({ "orderId": aggregate_id, "customerId": "c-2", "totalAmount": amount, "currency": "EUR" })
        }
        _ => {
            json!({ "orderId": aggregate_id, "customerId": "c-3", "totalAmountCents": cents.to_string(), "currency": "EUR" })
        }
    };
    order_created(event_id, aggregate_id, version, payload)
}

/// The example's `order_summary` rules, as the test reads them.
fn summary_after(events: &[Value]) -> Value {
    let mut documents = serde_json::Map::new();
    for event in events {
        let key = event["aggregateId"].as_str().expect("an id").to_owned();
        let payload = &event["payload"];
        match event["eventType"].as_str() {
            Some("orders.OrderCreated") => {
                let cents = match event["schemaVersion"].as_u64() {
                    Some(1) => (payload["total"].as_f64().expect("total") * 100.0).round() as i64,
                    Some(2) => {
                        (payload["totalAmount"].as_f64().expect("amount") * 100.0).round() as i64
                    }
                    _ => payload["totalAmountCents"]
                        .as_str()
                        .and_then(|cents| cents.parse().ok())
                        .expect("cents"),
                };
                let document = documents.entry(key).or_insert_with(|| json!({}));
                document["status"] = json!("created");
                document["customer_id"] = payload["customerId"].clone();
                document["total_cents"] = json!(cents);
                document["created_at"] = event["occurredAt"].clone();
            }
            Some("orders.OrderShipped") => {
                let document = documents.entry(key).or_insert_with(|| json!({}));
                document["status"] = json!("shipped");
                document["tracking_number"] = payload["trackingNumber"].clone();
            }
            Some("orders.OrderCancelled") => {
                documents.insert(key, Value::Null);
            }
            other => panic!("no rule for {other:?}"),
        }
    }
    Value::Object(documents)
}

#[test]
fn a_kv_sink_applies_events_of_every_version_to_the_documents_the_rules_give() {
    let events = [
        created_at(1, "e-1", "o-1", 1250),
        shipped_v1("e-2", "o-1", "T-1"),
        created_at(2, "e-3", "o-2", 1999),
        shipped_v1("e-4", "o-2", "T-2"),
        created_at(3, "e-5", "o-3", 4200),
        cancelled_v1("e-6", "o-3"),
    ];
    let (code, output, stderr) = project("jetline.yaml", "order_summary", &[], &lines(&events));
    assert_eq!(code, 0, "{stderr}");
    let expected = summary_after(&events);
    assert_eq!(expected["o-1"]["total_cents"], 1250, "the model upcasts v1");
    assert_eq!(expected["o-2"]["total_cents"], 1999, "the model upcasts v2");
    assert_eq!(
        output,
        json!({ "documents": expected, "skipped": [] }),
        "{stderr}"
    );

    // The text output shows the same documents.
    let config = example("jetline.yaml");
    let (code, text, stderr) = jetline_cli(
        &[
            "project",
            "--config",
            &config,
            "--sink",
            "order_summary",
            "--subject",
            BY_AGGREGATE,
        ],
        &lines(&events),
    );
    assert_eq!(code, 0, "{stderr}");
    let shown = |key: &str| {
        text.lines()
            .find_map(|line| line.trim().strip_prefix(&format!("{key} ")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{key} in {text}"))
    };
    let document: Value = serde_json::from_str(&shown("o-2")).expect("a JSON document");
    assert_eq!(document, expected["o-2"]);
    assert_eq!(shown("o-3"), "deleted");
}

#[test]
fn state_is_the_starting_point_of_a_kv_sink() {
    let before = json!({
        "o-1": { "status": "created", "customer_id": "c-9", "total_cents": 500, "note": "kept" },
        "o-7": { "status": "created" },
    });
    let mut state = tempfile::NamedTempFile::new().expect("a state file");
    std::io::Write::write_all(&mut state, before.to_string().as_bytes()).expect("written");
    let state_path = state.path().to_str().expect("utf-8 path").to_owned();
    let input = lines(&[shipped_v1("e-1", "o-1", "T-1")]);

    let (code, output, stderr) = project(
        "jetline.yaml",
        "order_summary",
        &["--state", &state_path],
        &input,
    );
    assert_eq!(code, 0, "{stderr}");
    let mut expected = before.clone();
    expected["o-1"]["status"] = json!("shipped");
    expected["o-1"]["tracking_number"] = json!("T-1");
    assert_eq!(output["documents"], expected);

    // Without it the document starts empty.
    let (code, output, stderr) = project("jetline.yaml", "order_summary", &[], &input);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        output["documents"],
        json!({ "o-1": { "status": "shipped", "tracking_number": "T-1" } })
    );

    // Only a KV sink has documents to start from.
    let (code, output, stderr) = project(
        "jetline.yaml",
        "orders_out",
        &["--state", &state_path],
        &input,
    );
    assert_eq!((code, output), (2, Value::Null), "{stderr}");
    assert!(stderr.contains("--state"), "{stderr}");
}

#[test]
fn a_postgres_sink_prints_each_statement_with_its_typed_parameters() {
    let events = [
        created_at(3, "e-1", "o-1", 1250),
        shipped_v1("e-2", "o-1", "T-1"),
        cancelled_v1("e-3", "o-1"),
    ];
    let (code, output, stderr) = project("projections.yaml", "orders_table", &[], &lines(&events));
    assert_eq!(code, 0, "{stderr}");
    let config = jetline::config::load(std::path::Path::new(&example("projections.yaml")))
        .expect("the example loads");
    let SinkKind::Postgres(postgres) = &config.sinks["orders_table"].kind else {
        panic!("orders_table is a PostgreSQL sink");
    };
    let sql = |event_type: &str| postgres.on[event_type].sql.clone();
    let param = |sql_type: &str, value: Value| json!({ "type": sql_type, "value": value });
    assert_eq!(
        output["statements"],
        json!([
            {
                "line": 1,
                "statement": sql("orders.OrderCreated"),
                "params": [
                    param("text", json!("o-1")),
                    param("text", json!("c-3")),
                    param("int8", json!(1250)),
                    param("timestamptz", json!("2026-11-23T10:00:00Z")),
                ],
            },
            {
                "line": 2,
                "statement": sql("orders.OrderShipped"),
                "params": [param("text", json!("o-1")), param("text", json!("T-1"))],
            },
            {
                "line": 3,
                "statement": sql("orders.OrderCancelled"),
                "params": [param("text", json!("o-1"))],
            },
        ])
    );
    assert_eq!(output["skipped"], json!([]));
}

#[test]
fn an_http_sink_shows_its_request_with_the_secret_header_masked() {
    let secret = "Bearer s3cret-token";
    let events = [
        created_at(3, "e-1", "o-1", 1250),
        shipped_v1("e-2", "o-1", "T-1"),
    ];
    let (code, output, stderr) = project_with_env(
        "projections.yaml",
        "notify",
        &[],
        &[("NOTIFY_TOKEN", secret)],
        &lines(&events),
    );
    assert_eq!(code, 0, "{stderr}");
    // Its route takes shipments only.
    assert_eq!(
        output["skipped"],
        json!([{ "line": 1, "event_type": "orders.OrderCreated", "reason": "not_routed" }])
    );
    let requests = output["requests"].as_array().expect("requests");
    assert_eq!(requests.len(), 1, "{output}");
    let request = &requests[0];
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "https://example.internal/hooks/orders");
    assert_eq!(request["headers"]["authorization"], "***");
    assert_eq!(request["headers"]["idempotency-key"], "e-2");
    assert_eq!(request["headers"]["content-type"], "application/json");
    assert_eq!(
        request["headers"]["jetline-event-type"],
        "orders.OrderShipped"
    );
    assert_eq!(request["body"]["eventId"], "e-2");
    assert_eq!(request["body"]["payload"]["trackingNumber"], "T-1");
    assert!(!output.to_string().contains("s3cret"), "{output}");

    // Nor in the text, and the variable need not be set at all.
    let config = example("projections.yaml");
    let args = [
        "project",
        "--config",
        &config,
        "--sink",
        "notify",
        "--subject",
        BY_AGGREGATE,
    ];
    let (code, text, stderr) =
        jetline_cli_with_env(&args, &[("NOTIFY_TOKEN", secret)], &lines(&events));
    assert_eq!(code, 0, "{stderr}");
    assert!(text.contains("authorization: ***"), "{text}");
    assert!(
        !text.contains("s3cret") && !stderr.contains("s3cret"),
        "{text}{stderr}"
    );
    let (code, _, stderr) = jetline_cli(&args, &lines(&events));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn a_jetstream_sink_gives_each_subject_and_message_at_its_version() {
    let events = [
        created_at(1, "e-1", "o-1", 1250),
        shipped_v1("e-2", "o-2", "T-2"),
    ];
    let (code, output, stderr) = project("jetline.yaml", "orders_out", &[], &lines(&events));
    assert_eq!(code, 0, "{stderr}");
    let messages = output["messages"].as_array().expect("messages");
    let subjects: Vec<&str> = messages
        .iter()
        .map(|message| message["subject"].as_str().expect("a subject"))
        .collect();
    assert_eq!(
        subjects,
        ["projections.orders.o-1", "projections.orders.o-2"]
    );
    assert_eq!(messages[0]["headers"]["Nats-Msg-Id"], "e-1");
    assert_eq!(
        messages[0]["headers"]["Content-Type"],
        "application/protobuf"
    );
    // Upcast to v3 on the way, as `run` sends it.
    assert_eq!(messages[0]["message"]["schemaVersion"], 3);
    assert_eq!(
        messages[0]["message"]["payload"]["totalAmountCents"],
        "1250"
    );

    let (code, output, stderr) = project("jetline.yaml", "order_audit", &[], &lines(&events));
    assert_eq!(code, 0, "{stderr}");
    let audit = &output["messages"][1];
    assert_eq!(audit["subject"], "audit.orders.o-2");
    assert_eq!(audit["headers"]["Content-Type"], "application/json");
    assert_eq!(audit["message"], events[1]);
}

#[test]
fn a_line_that_would_be_dead_lettered_exits_1_naming_its_line_and_reason() {
    let good = created_at(3, "e-1", "o-1", 1250);
    let mut unknown_field = shipped_v1("e-2", "o-1", "T-1");
    unknown_field["payload"]["nope"] = json!(1);
    let mut unconvertible = created_at(1, "e-3", "o-3", 100);
    unconvertible["payload"]["total"] = json!(1e300);
    let cases = [
        (unknown_field.to_string(), "invalid_payload"),
        (unconvertible.to_string(), "upcast_failed"),
        ("not json".to_owned(), "invalid_envelope"),
        // A subject token, but not a KV key.
        (
            created_at(3, "e-4", "o:4", 100).to_string(),
            "sink_rejected",
        ),
    ];
    for (bad, reason) in cases {
        // Line 2 is blank: lines are counted as in the file.
        let input = format!("{good}\n\n{bad}\n{good}\n");
        let (code, output, stderr) = project("jetline.yaml", "order_summary", &[], &input);
        assert_eq!((code, &output), (1, &Value::Null), "{bad}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: line 3: {reason}: ")),
            "{bad}: {stderr}"
        );
    }

    let config = example("jetline.yaml");
    let (code, _, stderr) = jetline_cli(
        &["project", "--config", &config, "--sink", "order_sumary"],
        &format!("{good}\n"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("order_sumary") && stderr.contains("order_summary"),
        "{stderr}"
    );
    // The example's source reads `orders.>`: which subject is not to be guessed.
    let (code, _, stderr) = jetline_cli(
        &["project", "--config", &config, "--sink", "order_summary"],
        &format!("{good}\n"),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--subject"), "{stderr}");
}
