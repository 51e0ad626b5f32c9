//! `jetline check`: exit 0 and a summary on a good file, exit 2 and the key
//! path on each kind of bad one. Also loads every file shipped in `config/`.

use std::{io::Write, process::Command};

use crate::support::*;

fn check(yaml: &str) -> (i32, String, String) {
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    file.write_all(yaml.as_bytes()).expect("written");
    check_file(file.path())
}

/// `jetline check` of a file: exit code, stdout, stderr.
fn check_file(path: &std::path::Path) -> (i32, String, String) {
    let output = Command::new(jetline_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .expect("jetline check runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const GOOD_BODY: &str = "
sources:
  orders: { stream: ORDERS, subjects: ['orders.>'] }
sinks:
  out: { type: jetstream, subject: 'projections.{aggregate_id}' }
routes:
  - { name: all, from: orders, match: { event_types: [orders.OrderCreated] }, to: [out] }
";

#[test]
fn a_good_configuration_passes_with_a_summary() {
    let (code, stdout, stderr) = check(&config_yaml("nats://127.0.0.1:1", GOOD_BODY));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("jetline-orders-out"), "{stdout}");
    assert!(
        stdout.contains("orders.OrderCreated: versions [1, 2, 3]"),
        "{stdout}"
    );
}

#[test]
fn every_kind_of_bad_configuration_exits_2_naming_the_key() {
    let cases = [
        (
            "unknown key",
            GOOD_BODY.replace("subject: 'projections", "subjekt: 'projections"),
            "sinks.out.subjekt",
        ),
        (
            "missing source",
            GOOD_BODY.replace("from: orders", "from: nowhere"),
            "routes[0].from",
        ),
        (
            "missing sink",
            GOOD_BODY.replace("to: [out]", "to: [elsewhere]"),
            "routes[0].to[0]",
        ),
        (
            "unknown event type",
            GOOD_BODY.replace("orders.OrderCreated", "orders.Nope"),
            "routes[0].match.event_types[0]",
        ),
        (
            "bad template",
            GOOD_BODY.replace("{aggregate_id}", "{aggregate}"),
            "sinks.out.subject",
        ),
        (
            "bad subject",
            GOOD_BODY.replace("'orders.>'", "'orders.>.x'"),
            "sources.orders.subjects[0]",
        ),
        (
            "bad duration",
            format!("{GOOD_BODY}consumers: {{ ack_wait: soon }}\n"),
            "consumers",
        ),
        (
            "unknown sink type",
            GOOD_BODY.replace("type: jetstream", "type: kafka"),
            "sinks.out.type",
        ),
    ];
    for (name, body, key) in cases {
        let (code, _, stderr) = check(&config_yaml("nats://127.0.0.1:1", &body));
        assert_eq!(code, 2, "{name}: {stderr}");
        assert!(stderr.contains(key), "{name}: expected {key} in {stderr}");
    }
}

#[test]
fn a_password_in_the_file_is_refused_without_echoing_it() {
    let yaml = config_yaml("nats://127.0.0.1:1", GOOD_BODY)
        .replace("nats: {", "nats: { user: app, password: s3cret-value,");
    let (code, _, stderr) = check(&yaml);
    assert_eq!(code, 2);
    assert!(stderr.contains("nats.password"), "{stderr}");
    assert!(!stderr.contains("s3cret-value"));
}

#[test]
fn every_shipped_configuration_checks() {
    let dir = root().join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let (code, _, stderr) = check_file(&path);
            assert_eq!(code, 0, "{}: {stderr}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

/// A reader that goes away (`jetline check | head -0`) ends nothing badly:
/// the command's own outcome stands, and it never panics.
#[test]
fn a_closed_output_pipe_is_not_a_panic() {
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    file.write_all(config_yaml("nats://127.0.0.1:1", GOOD_BODY).as_bytes())
        .expect("written");
    let mut child = Command::new(jetline_bin())
        .args(["check", "--config"])
        .arg(file.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("jetline check runs");
    // Closed before the schemas are compiled, so the summary meets no reader.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("jetline check ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The summary names settings with the words the file uses (`per_key`,
/// `json`), never Rust's variant names.
#[test]
fn the_summary_prints_settings_as_the_file_writes_them() {
    let body = "
sources:
  orders: { stream: ORDERS, subjects: ['orders.>'] }
sinks:
  out: { type: jetstream, subject: 'projections.{aggregate_id}' }
  copy: { type: jetstream, subject: 'copy.{aggregate_id}', format: json, headers: full, ordering: none, on_dead_letter: park_key }
routes:
  - { name: all, from: orders, to: [out, copy] }
";
    let (code, stdout, stderr) = check(&config_yaml("nats://127.0.0.1:1", body));
    assert_eq!(code, 0, "{stderr}");
    for words in [
        "copy: jetstream subject copy.{aggregate_id} format json headers full",
        "ordering none, concurrency 32, on_dead_letter park_key",
        "out: jetstream subject projections.{aggregate_id} format protobuf headers minimal",
        "ordering per_key, concurrency 32, on_dead_letter continue",
    ] {
        assert!(stdout.contains(words), "{words}: {stdout}");
    }
    for debug_name in [
        "PerKey", "ParkKey", "Continue", "Json", "Protobuf", "Minimal",
    ] {
        assert!(!stdout.contains(debug_name), "{debug_name}: {stdout}");
    }
}

/// What `run` would refuse, `check` says: a custom sink this binary cannot
/// supply is an error; a sink's variable unset here is a warning (check may
/// run where the secrets are not), and `run` refuses it, exit 2, before it
/// creates any consumer.
#[tokio::test]
async fn check_says_what_run_would_refuse_and_run_refuses_before_anything_durable() {
    let custom = GOOD_BODY.replace(
        "out: { type: jetstream, subject: 'projections.{aggregate_id}' }",
        "out: { type: custom }",
    );
    let (code, _, stderr) = check(&config_yaml("nats://127.0.0.1:1", &custom));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("sinks.out.type"), "{stderr}");

    let variable = "JETLINE_TEST_UNSET_HOOK_URL";
    // A second sink, earlier in name order, whose consumer would be
    // created first if the check came late.
    let hook = GOOD_BODY
        .replace(
            "out: { type: jetstream, subject: 'projections.{aggregate_id}' }",
            &format!(
                "out: {{ type: http, url_env: {variable} }}\n  copy: {{ type: jetstream, subject: 'projections.{{aggregate_id}}' }}"
            ),
        )
        .replace("to: [out]", "to: [out, copy]");
    let (code, _, stderr) = check(&config_yaml("nats://127.0.0.1:1", &hook));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: sinks.out.url_env: environment variable {variable} is not set"
        )),
        "{stderr}"
    );

    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "ORDERS", &["orders.>"]).await;
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    file.write_all(config_yaml(&server.url(), &hook).as_bytes())
        .expect("written");
    let output = Command::new(jetline_bin())
        .args(["run", "--config"])
        .arg(file.path())
        .output()
        .expect("jetline run runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sinks.out.url_env"), "{stderr}");
    let mut stream = js.get_stream("ORDERS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.consumer_count, 0);
}
