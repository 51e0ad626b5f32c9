//! Traces against a real OTLP/HTTP receiver: an event's span continues the
//! trace of the source message's `traceparent` (or starts one), with its
//! decode, upcast and sink write as children, and the JetStream and HTTP
//! sinks send on a `traceparent` naming the sink write. Without `tracing`
//! nothing is exported and the source's headers are copied as they came.
//! A `tracing` block that cannot be used is a configuration error.

use std::{collections::BTreeMap, time::Duration};

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;

use crate::support::*;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The trace context the producer of the traced event sent.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "vendor=test";

fn source_traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
}

/// The `upcasters:` block of the shipped example configuration, as JSON.
fn example_upcasters() -> String {
    let config =
        jetline::config::load(&root().join("config/jetline.yaml")).expect("example config loads");
    serde_json::to_string(&config.upcasters).expect("json")
}

/// Source `s` on `stream` into a JetStream sink `out` (on `<prefix>out.`)
/// and an HTTP sink `hook`, with the example upcasters and `extra`.
fn config(url: &str, stream: &str, prefix: &str, hook: &str, extra: &str) -> String {
    custom_config(
        url,
        stream,
        prefix,
        &format!(
            "  out: {{ type: jetstream, subject: '{prefix}out.{{aggregate_id}}' }}\n  hook: {{ type: http, url: '{hook}', timeout: 5s }}"
        ),
        &format!("upcasters: {}\n{extra}", example_upcasters()),
    )
}

/// A v1 `orders.OrderCreated` (upcast to v3 for both sinks) with the
/// producer's trace context, and a v3 one without any.
fn publish_events(prefix: &str) -> Vec<Outgoing> {
    let v1 = order_created(
        "traced",
        "order-traced",
        1,
        json!({ "orderId": "order-traced", "customerId": "c-1", "total": 12.5 }),
    );
    let v3 = created_v3("untraced", "order-untraced", 700);
    vec![
        Outgoing::binary(&format!("{prefix}.created"), &v1)
            .header("traceparent", &source_traceparent())
            .header("tracestate", TRACESTATE),
        Outgoing::binary(&format!("{prefix}.created"), &v3),
    ]
}

/// Waits until both sinks settled the whole stream, then stops Jetline
/// with SIGTERM (which exports the spans still queued).
async fn run_until_settled(js: &async_nats::jetstream::Context, stream: &str, jetline: Process) {
    for sink in ["out", "hook"] {
        let durable = format!("jetline-s-{sink}");
        eventually(TIMEOUT, "every event settled", || async {
            consumer_settled(js, stream, &durable).await.then_some(())
        })
        .await;
    }
    // Blocking while the receiver, on this runtime, takes the last spans.
    let code = tokio::task::spawn_blocking(move || jetline.terminate())
        .await
        .expect("joined");
    assert_eq!(code, Some(0), "jetline exits cleanly on SIGTERM");
}

/// The JetStream sink's output messages, by their `Nats-Msg-Id` (event id).
async fn outputs(js: &async_nats::jetstream::Context, stream: &str) -> BTreeMap<String, Header> {
    stream_messages(js, stream)
        .await
        .into_iter()
        .map(|message| {
            let value = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
            let id = value("Nats-Msg-Id").expect("an event id");
            (
                id,
                Header {
                    traceparent: value("traceparent"),
                    tracestate: value("tracestate"),
                },
            )
        })
        .collect()
}

/// The trace-context headers one output carried.
#[derive(Debug, Clone, PartialEq)]
struct Header {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// The webhook's requests, by idempotency key (event id).
fn requests(hook: &Webhook) -> BTreeMap<String, Header> {
    hook.requests()
        .into_iter()
        .map(|request| {
            let value = |name: &str| request.header(name).map(str::to_owned);
            (
                request.idempotency_key().to_owned(),
                Header {
                    traceparent: value("traceparent"),
                    tracestate: value("tracestate"),
                },
            )
        })
        .collect()
}

/// One event span on one sink, with its children.
struct EventSpans {
    event: ReceivedSpan,
    children: Vec<ReceivedSpan>,
}

impl EventSpans {
    fn child(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.children.iter().filter(|s| s.name() == name).collect()
    }

    /// The one child named `name`.
    fn only(&self, name: &str) -> &ReceivedSpan {
        let found = self.child(name);
        assert_eq!(found.len(), 1, "one {name} under {:?}", self.event.span);
        found[0]
    }

    /// The `traceparent` a sink sends on: the sink-write span, sampled.
    fn carried(&self) -> String {
        let write = self.only("jetline.sink.write");
        format!("00-{}-{}-01", write.trace_id(), write.span_id())
    }
}

/// The event spans received, by (event id, sink), each with its children;
/// fails on a second event span of the same pair.
fn by_event(spans: &[ReceivedSpan]) -> BTreeMap<(String, String), EventSpans> {
    let mut events = BTreeMap::new();
    for span in spans.iter().filter(|span| span.name() == "jetline.event") {
        let key = (
            span.attribute("jetline.event_id").expect("an event id"),
            span.attribute("jetline.sink").expect("a sink"),
        );
        let children = spans
            .iter()
            .filter(|child| {
                child.parent_span_id() == span.span_id() && child.trace_id() == span.trace_id()
            })
            .cloned()
            .collect();
        let previous = events.insert(
            key.clone(),
            EventSpans {
                event: span.clone(),
                children,
            },
        );
        assert!(previous.is_none(), "one event span for {key:?}");
    }
    events
}

#[tokio::test]
async fn an_event_span_continues_the_source_trace_and_the_sinks_carry_the_write_span() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "TRC", &["trc.>"]).await;
    create_stream(&js, "TRC_OUT", &["trcout.>"]).await;
    let receiver = OtlpReceiver::start().await;
    let hook = Webhook::start(|_| Answer::status(204)).await;
    publish_all(&js, publish_events("trc")).await;

    let yaml = config(
        &server.url(),
        "TRC",
        "trc",
        &hook.url,
        &format!(
            "tracing: {{ otlp_endpoint: '{}', service_name: jetline-test }}",
            receiver.endpoint
        ),
    );
    run_until_settled(&js, "TRC", Process::start(&yaml)).await;

    let spans = receiver.spans();
    assert!(
        spans.iter().all(|span| span.service_name == "jetline-test"),
        "service.name from tracing.service_name"
    );
    let events = by_event(&spans);
    let pairs: Vec<(&str, &str)> = events
        .keys()
        .map(|(id, sink)| (id.as_str(), sink.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("traced", "hook"),
            ("traced", "out"),
            ("untraced", "hook"),
            ("untraced", "out")
        ],
        "one event span per event per sink"
    );
    let total = |name: &str| spans.iter().filter(|span| span.name() == name).count();
    assert_eq!(total("jetline.decode"), 4);
    assert_eq!(total("jetline.upcast"), 2, "only the v1 event is upcast");
    assert_eq!(total("jetline.sink.write"), 4);
    assert_eq!(spans.len(), 4 + 4 + 2 + 4, "no other span");

    let outputs = outputs(&js, "TRC_OUT").await;
    let requests = requests(&hook);
    for ((event_id, sink), traced) in &events {
        let event = &traced.event;
        let what = format!("{event_id} on {sink}");
        assert_eq!(event.span.kind, SpanKind::Consumer as i32, "{what}");
        assert_eq!(
            event.attribute("jetline.event_type").as_deref(),
            Some("orders.OrderCreated"),
            "{what}"
        );
        assert_eq!(
            event.attribute("jetline.aggregate_id"),
            Some(format!("order-{event_id}")),
            "{what}"
        );
        assert_eq!(
            event.attribute("jetline.outcome").as_deref(),
            Some("applied"),
            "{what}"
        );
        assert!(event.attribute("jetline.stream_seq").is_some(), "{what}");
        // Decode, (upcast,) sink write: children of the event span, in its trace.
        assert_eq!(traced.child("jetline.decode").len(), 1, "{what}");
        let write = traced.only("jetline.sink.write");
        assert_eq!(write.span.kind, SpanKind::Client as i32, "{what}");
        assert_eq!(
            write.attribute("jetline.write.result").as_deref(),
            Some("written"),
            "{what}"
        );
        assert!(
            event.span.start_time_unix_nano
                <= traced.only("jetline.decode").span.start_time_unix_nano
                && write.span.end_time_unix_nano <= event.span.end_time_unix_nano,
            "{what}: the children lie within the event span"
        );

        let carried = match sink.as_str() {
            "out" => &outputs[event_id],
            _ => &requests[event_id],
        };
        assert_eq!(
            carried.traceparent.as_deref(),
            Some(traced.carried().as_str()),
            "{what}: the output names the sink-write span"
        );
        if event_id == "traced" {
            assert_eq!(event.trace_id(), TRACE_ID, "{what}: the producer's trace");
            assert_eq!(event.parent_span_id(), PARENT_SPAN_ID, "{what}");
            assert_eq!(
                event.attribute("jetline.schema_version").as_deref(),
                Some("1")
            );
            let upcast = traced.only("jetline.upcast");
            assert_eq!(
                (
                    upcast.attribute("jetline.upcast.from_version").as_deref(),
                    upcast.attribute("jetline.upcast.to_version").as_deref()
                ),
                (Some("1"), Some("3")),
                "{what}"
            );
            assert_eq!(
                carried.tracestate.as_deref(),
                Some(TRACESTATE),
                "{what}: the trace state goes on"
            );
        } else {
            assert_eq!(event.parent_span_id(), "", "{what}: a root span");
            assert_ne!(event.trace_id(), TRACE_ID, "{what}: a trace of its own");
            assert_ne!(event.trace_id(), "0".repeat(32), "{what}");
            assert!(
                traced.child("jetline.upcast").is_empty(),
                "{what}: no upcast"
            );
            assert_eq!(carried.tracestate, None, "{what}");
        }
    }
}

#[tokio::test]
async fn without_tracing_nothing_is_exported_and_the_source_context_is_copied() {
    let server = NatsServer::start();
    let js = server.jetstream().await;
    create_stream(&js, "NTR", &["ntr.>"]).await;
    create_stream(&js, "NTR_OUT", &["ntrout.>"]).await;
    let receiver = OtlpReceiver::start().await;
    let hook = Webhook::start(|_| Answer::status(204)).await;
    publish_all(&js, publish_events("ntr")).await;

    // Not even the OpenTelemetry variables turn traces on: only `tracing:`.
    let yaml = config(&server.url(), "NTR", "ntr", &hook.url, "");
    let jetline = Process::start_with_env(
        &yaml,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str())],
    );
    run_until_settled(&js, "NTR", jetline).await;

    assert_eq!(receiver.requests(), 0, "no export request");
    let copied = Header {
        traceparent: Some(source_traceparent()),
        tracestate: Some(TRACESTATE.to_owned()),
    };
    let none = Header {
        traceparent: None,
        tracestate: None,
    };
    let expected = BTreeMap::from([("traced".to_owned(), copied), ("untraced".to_owned(), none)]);
    assert_eq!(outputs(&js, "NTR_OUT").await, expected, "JetStream sink");
    assert_eq!(requests(&hook), expected, "HTTP sink");
}

#[test]
fn a_tracing_endpoint_that_is_no_url_is_a_configuration_error() {
    let yaml = config(
        "nats://127.0.0.1:1",
        "BAD",
        "bad",
        "http://127.0.0.1:1/hook",
        "tracing: { otlp_endpoint: 'collector:4318 ', sample_ratio: 2 }",
    );
    let mut file = tempfile::NamedTempFile::new().expect("config file");
    std::io::Write::write_all(&mut file, yaml.as_bytes()).expect("written");
    let path = file.path().to_str().expect("a UTF-8 path");
    for command in ["check", "run"] {
        let (code, _, stderr) = jetline_cli(&[command, "--config", path], "");
        assert_eq!(code, 2, "{command}: {stderr}");
        for key in ["tracing.otlp_endpoint", "tracing.sample_ratio"] {
            assert!(stderr.contains(key), "{command} names {key}: {stderr}");
        }
    }
    let good = yaml.replace(
        "otlp_endpoint: 'collector:4318 ', sample_ratio: 2",
        "otlp_endpoint: 'http://collector:4318'",
    );
    std::fs::write(file.path(), good).expect("rewritten");
    let (code, stdout, stderr) = jetline_cli(&["check", "--config", path], "");
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout
            .contains("traces: OTLP to http://collector:4318/v1/traces as jetline, sample_ratio 1"),
        "{stdout}"
    );
}
